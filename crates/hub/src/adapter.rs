//! The adapter trait every hub kind implements, and the choice of adapter by hub kind.

use async_trait::async_trait;

use crate::device::{DeviceId, DeviceIdentity, Owner};
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
    ///
    /// An identity by that name that is not `identity.owner`'s (see [`Owner`]) is left alone:
    /// [`HubError::NotManaged`].
    async fn upsert_device(&self, identity: &DeviceIdentity) -> Result<(), HubError>;

    /// Cuts the device off, keeping its identity. Succeeds when the device does not exist; an identity that is
    /// not `owner`'s is left alone ([`HubError::NotManaged`]).
    async fn disable_device(&self, device_id: &DeviceId, owner: &Owner) -> Result<(), HubError>;

    /// Removes the device's identity. Succeeds when the device does not exist; an identity that is not `owner`'s
    /// is left alone ([`HubError::NotManaged`]).
    async fn delete_device(&self, device_id: &DeviceId, owner: &Owner) -> Result<(), HubError>;

    /// Checks that the hub is reachable and accepts the adapter's credentials.
    async fn health(&self) -> Result<(), HubError>;
}

/// The settings that hold secrets (of any kind): write-only in the admin API, never logged.
pub const SECRET_SETTINGS: &[&str] = &["password", "secret"];

/// The device ids a hub of `kind` with `settings` keeps for itself, which no device may have on any hub: a
/// Mosquitto hub's admin user and its `reservedDeviceIds` (the broker's other accounts). Reserved on every hub,
/// not only their own, because every broker that trusts the service's CA maps a certificate's CN to the account of
/// that name (`use_identity_as_username`): a device of another hub with an operational certificate named after
/// the admin would be the admin there. Compare case-insensitively. Reads the settings leniently (unknown shapes
/// reserve nothing; the admin API refuses them anyway).
pub fn reserved_device_ids<'a>(kind: &str, settings: &'a serde_json::Value) -> Vec<&'a str> {
    match kind {
        "mosquitto" => {
            let admin = settings.get("username").and_then(serde_json::Value::as_str);
            let listed = settings
                .get("reservedDeviceIds")
                .and_then(serde_json::Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(serde_json::Value::as_str);
            admin.into_iter().chain(listed).map(str::trim).filter(|id| !id.is_empty()).collect()
        }
        _ => Vec::new(),
    }
}

/// The adapter for a hub of `kind` (`mosquitto`, `webhook`) named `hub`, from its settings JSON; a webhook calls
/// out under `outbound`.
///
/// Must be called inside a Tokio runtime (the Mosquitto adapter starts its connection task).
pub fn adapter_for(
    kind: &str,
    hub: &str,
    settings: &serde_json::Value,
    outbound: &zerotouch_outbound::OutboundPolicy,
) -> Result<Box<dyn HubAdapter>, SettingsError> {
    fn parse<T: serde::de::DeserializeOwned>(settings: &serde_json::Value) -> Result<T, SettingsError> {
        T::deserialize(settings).map_err(|e| SettingsError::Shape(e.to_string()))
    }
    match kind {
        "mosquitto" => Ok(Box::new(MosquittoAdapter::new(hub, parse::<MosquittoSettings>(settings)?)?)),
        "webhook" => Ok(Box::new(WebhookAdapter::new(hub, parse::<WebhookSettings>(settings)?, outbound)?)),
        other => Err(SettingsError::UnknownKind(other.to_owned())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A Mosquitto hub reserves its admin user and the listed accounts; a webhook hub reserves nothing.
    #[test]
    fn reserved_ids_of_each_kind() {
        let settings = serde_json::json!({"username": "zt-admin", "reservedDeviceIds": ["ops", " ", 7]});
        assert_eq!(reserved_device_ids("mosquitto", &settings), ["zt-admin", "ops"]);
        assert!(reserved_device_ids("mosquitto", &serde_json::json!({})).is_empty());
        assert!(reserved_device_ids("webhook", &serde_json::json!({"username": "x"})).is_empty());
    }
}
