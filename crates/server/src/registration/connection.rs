//! Authentication of a device's connection, for protocols that authenticate once per connection (MQTT CONNECT).

use super::{DeviceRequest, RegistrationService};
use crate::error::ApiError;

impl RegistrationService {
    /// Authenticates a device before any request on its connection (`azure-dps-wire.md` §5: the CONNECT carries
    /// the SAS token, or the TLS handshake the certificate): the same checks as a register's, a refusal audited
    /// the same way (action `connect`). Writes nothing when the device passes; every later request on the
    /// connection is authenticated again by the call it makes.
    pub async fn authenticate_connection(&self, device: &DeviceRequest) -> Result<(), ApiError> {
        self.authenticate(device, "connect").await.map(|_| ())
    }
}
