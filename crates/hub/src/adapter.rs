//! The adapter trait every hub kind implements, and the choice of adapter by hub kind.

use async_trait::async_trait;

use crate::device::{ChangeId, DeviceId, DeviceIdentity, Owner};
use crate::error::{HubError, SettingsError};
use crate::mosquitto::{MosquittoAdapter, MosquittoSettings};
use crate::webhook::{WebhookAdapter, WebhookSettings};

/// One downstream hub. Every operation is idempotent, so a caller (the outbox) may retry any of them after any
/// failure, including a timeout after which the hub may or may not have applied the request. Every operation
/// carries the [`ChangeId`] of the change it delivers, the same on every retry: an adapter that can tell the
/// change was applied already (Mosquitto, by the identity's mark) does nothing the second time, and a webhook
/// receiver gets it to do the same. Callers must not run two operations on the same device at once: the last one to
/// reach the hub wins.
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
    async fn disable_device(&self, device_id: &DeviceId, owner: &Owner, change: &ChangeId) -> Result<(), HubError>;

    /// Removes the device's identity. Succeeds when the device does not exist; an identity that is not `owner`'s
    /// is left alone ([`HubError::NotManaged`]).
    async fn delete_device(&self, device_id: &DeviceId, owner: &Owner, change: &ChangeId) -> Result<(), HubError>;

    /// Checks that the hub is reachable and accepts the adapter's credentials.
    async fn health(&self) -> Result<(), HubError>;
}

/// The settings that hold secrets (of any kind): write-only in the admin API, never logged, sealed in the database.
pub use zerotouch_wire::hub::SECRET_SETTINGS;

/// The settings that say where an adapter sends its secrets (of any kind).
pub const ADDRESS_SETTINGS: &[&str] = &["host", "port", "url"];

/// A secret setting left out of an update that changes where the secret would be sent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "settings.{secret} must be sent again because settings.{address} changes: a stored secret is never sent to a \
     new address"
)]
pub struct SecretNotResent {
    /// The secret setting to send again.
    pub secret: &'static str,
    /// The address setting that changes.
    pub address: &'static str,
}

/// Completes `new`, the settings an update sends for a hub of unchanged kind, with the secrets of `stored` it leaves
/// out (secrets are write-only, so an update that does not change them cannot send them back).
///
/// A stored secret is kept only while the hub's address stays: when `host`, `port` or `url` differ from the stored
/// settings, every stored secret must be sent again, or a holder of the admin API (owner role) could redirect the
/// broker password or the webhook's HMAC secret to an address of their choosing and read it there.
pub fn carry_over_secrets(
    stored: &serde_json::Map<String, serde_json::Value>,
    new: &mut serde_json::Map<String, serde_json::Value>,
) -> Result<(), SecretNotResent> {
    let moved = ADDRESS_SETTINGS.iter().find(|name| stored.get(**name) != new.get(**name));
    for secret in SECRET_SETTINGS {
        let Some(value) = stored.get(*secret) else { continue };
        if new.contains_key(*secret) {
            continue;
        }
        if let Some(address) = moved {
            return Err(SecretNotResent { secret, address });
        }
        new.insert((*secret).to_owned(), value.clone());
    }
    Ok(())
}

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
    use serde_json::{Map, Value, json};

    fn object(value: Value) -> Map<String, Value> {
        match value {
            Value::Object(map) => map,
            _ => unreachable!("an object"),
        }
    }

    /// Secrets left out are kept while the address stays, and must be sent again when any address setting changes
    /// (or appears, or goes); a secret sent is taken whatever the address does.
    #[test]
    fn secrets_follow_the_address_only_when_sent_again() {
        let broker = object(json!({"host": "broker", "port": 8883, "username": "zt", "password": "pw"}));
        let mut same = object(json!({"host": "broker", "port": 8883, "username": "zt2"}));
        assert_eq!(carry_over_secrets(&broker, &mut same), Ok(()));
        assert_eq!(same["password"], "pw");
        for (changed, address) in [
            (json!({"host": "evil.example", "port": 8883, "username": "zt"}), "host"),
            (json!({"host": "broker", "port": 1883, "username": "zt"}), "port"),
            (json!({"port": 8883, "username": "zt"}), "host"),
        ] {
            let mut changed = object(changed);
            let refused = carry_over_secrets(&broker, &mut changed);
            assert_eq!(refused, Err(SecretNotResent { secret: "password", address }));
            assert!(refused.unwrap_err().to_string().contains("settings.password"), "names the field");
            assert!(!changed.contains_key("password"));
        }
        let mut resent = object(json!({"host": "elsewhere", "port": 8883, "username": "zt", "password": "new"}));
        assert_eq!(carry_over_secrets(&broker, &mut resent), Ok(()));
        assert_eq!(resent["password"], "new");

        let hook = object(json!({"url": "https://a.example/hook", "secret": "0123456789abcdef"}));
        let mut moved = object(json!({"url": "https://b.example/hook"}));
        assert_eq!(carry_over_secrets(&hook, &mut moved), Err(SecretNotResent { secret: "secret", address: "url" }));
        let mut timeout = object(json!({"url": "https://a.example/hook", "timeoutMs": 100}));
        assert_eq!(carry_over_secrets(&hook, &mut timeout), Ok(()));
        assert_eq!(timeout["secret"], "0123456789abcdef");
        // Nothing stored, nothing to carry (a new hub, or one whose secret was never set).
        let mut fresh = object(json!({"url": "https://c.example"}));
        assert_eq!(carry_over_secrets(&Map::new(), &mut fresh), Ok(()));
        assert!(!fresh.contains_key("secret"));
    }

    /// A Mosquitto hub reserves its admin user and the listed accounts; a webhook hub reserves nothing.
    #[test]
    fn reserved_ids_of_each_kind() {
        let settings = serde_json::json!({"username": "zt-admin", "reservedDeviceIds": ["ops", " ", 7]});
        assert_eq!(reserved_device_ids("mosquitto", &settings), ["zt-admin", "ops"]);
        assert!(reserved_device_ids("mosquitto", &serde_json::json!({})).is_empty());
        assert!(reserved_device_ids("webhook", &serde_json::json!({"username": "x"})).is_empty());
    }
}
