//! The adapter trait every hub kind implements, and the choice of adapter by hub kind.

use async_trait::async_trait;

use crate::device::{DeviceId, DeviceIdentity};
use crate::error::{HubError, SettingsError};
use crate::mosquitto::{MosquittoAdapter, MosquittoSettings};
use crate::webhook::{WebhookAdapter, WebhookSettings};

/// One downstream hub. Every operation is idempotent, so a caller (the outbox) may retry any of them after any
/// failure, including a timeout after which the hub may or may not have applied the request. Callers must not run
/// two operations on the same device at once: the last one to reach the hub wins.
#[async_trait]
pub trait HubAdapter: Send + Sync {
    /// The hub's name, as in error messages.
    fn hub(&self) -> &str;

    /// Creates the device's identity, or updates it to exactly `identity` (credential, enabled flag).
    async fn upsert_device(&self, identity: &DeviceIdentity) -> Result<(), HubError>;

    /// Cuts the device off, keeping its identity. Succeeds when the device does not exist.
    async fn disable_device(&self, device_id: &DeviceId) -> Result<(), HubError>;

    /// Removes the device's identity. Succeeds when the device does not exist.
    async fn delete_device(&self, device_id: &DeviceId) -> Result<(), HubError>;

    /// Checks that the hub is reachable and accepts the adapter's credentials.
    async fn health(&self) -> Result<(), HubError>;
}

/// The settings that hold secrets (of any kind): write-only in the admin API, never logged.
pub const SECRET_SETTINGS: &[&str] = &["password", "secret"];

/// The adapter for a hub of `kind` (`mosquitto`, `webhook`) named `hub`, from its settings JSON.
///
/// Must be called inside a Tokio runtime (the Mosquitto adapter starts its connection task).
pub fn adapter_for(kind: &str, hub: &str, settings: &serde_json::Value) -> Result<Box<dyn HubAdapter>, SettingsError> {
    fn parse<T: serde::de::DeserializeOwned>(settings: &serde_json::Value) -> Result<T, SettingsError> {
        T::deserialize(settings).map_err(|e| SettingsError::Shape(e.to_string()))
    }
    match kind {
        "mosquitto" => Ok(Box::new(MosquittoAdapter::new(hub, parse::<MosquittoSettings>(settings)?)?)),
        "webhook" => Ok(Box::new(WebhookAdapter::new(hub, parse::<WebhookSettings>(settings)?)?)),
        other => Err(SettingsError::UnknownKind(other.to_owned())),
    }
}
