//! The device identity an adapter creates on a hub: id, owner, credential, enabled flag, initial twin.

use zerotouch_wire::{KeySlot, SymmetricKey};

/// Longest device id accepted (Azure IoT Hub's limit).
pub const MAX_DEVICE_ID_LEN: usize = 128;

/// A device id as hubs see it: 1-128 ASCII characters, letters, digits and `-._:@!()=,'*?$`.
///
/// Never contains `/`, `+`, `#` or `%`, so it can stand inside an MQTT topic and a dynamic-security ACL without
/// widening it (no topic level separator, no wildcard, no `%c`/`%u` substitution), and inside a URL path segment
/// (percent-encoded where needed by the caller).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct DeviceId(String);

/// Why a device id was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeviceIdError {
    /// Empty or longer than [`MAX_DEVICE_ID_LEN`].
    #[error("a device id must have 1-{MAX_DEVICE_ID_LEN} characters")]
    Length,
    /// Holds a character outside the allowed set.
    #[error("a device id may hold only ASCII letters, digits and -._:@!()=,'*?$")]
    Character,
}

impl DeviceId {
    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<&str> for DeviceId {
    type Error = DeviceIdError;

    fn try_from(text: &str) -> Result<Self, Self::Error> {
        if text.is_empty() || text.len() > MAX_DEVICE_ID_LEN {
            return Err(DeviceIdError::Length);
        }
        if !text.chars().all(|c| c.is_ascii_alphanumeric() || "-._:@!()=,'*?$".contains(c)) {
            return Err(DeviceIdError::Character);
        }
        Ok(Self(text.to_owned()))
    }
}

impl std::fmt::Display for DeviceId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Whose identity it is: the registration (its canonical id) that put the device on the hub. Adapters that can
/// label an identity (Mosquitto) write it into the identity's mark and change or remove only identities marked for
/// the same registration, so that one registration can never take over another's identity, nor an account the
/// hub's operator made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owner(String);

impl Owner {
    /// The owner named by a registration's canonical id.
    pub fn registration(key: &str) -> Self {
        Self(key.to_owned())
    }

    /// The registration's canonical id.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for Owner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Which change an operation carries: the outbox job that asked for it (`hub_jobs.id`). Every delivery of one
/// change carries the same id, and each change has its own, so a hub can tell a repeated delivery (a retry after a
/// timeout whose request the hub had applied, or a job taken over from a replica that stopped) from a new change:
/// Mosquitto identities record the last change applied in their mark, webhook receivers get it in the body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChangeId(String);

impl ChangeId {
    /// The change `id` names.
    pub fn new(id: impl Into<String>) -> Self {
        Self(id.into())
    }

    /// The id.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for ChangeId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// How the device authenticates to the hub.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Credential {
    /// An X.509 certificate (the operational certificate zerotouch issued).
    Certificate {
        /// The certificate's subject common name (on Mosquitto: the username, which must equal the device id).
        subject_cn: String,
        /// Hex SHA-256 of the certificate's DER.
        thumbprint: String,
    },
    /// Symmetric keys (redacted in `Debug`, zeroized on drop).
    SymmetricKey(SymmetricKeys),
}

/// A device's symmetric keys as a hub gets them: both of its enrollment's keys (derived from the group's, for a
/// group device) and which one it authenticated with. A hub with one password per identity (Mosquitto) takes
/// [`SymmetricKeys::used`]; a hub that can hold two (a webhook receiver) gets both, so the device can log in with
/// either, as with Azure IoT Hub's primary and secondary keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SymmetricKeys {
    /// The primary key (for a key made for the hub alone, that key).
    pub primary: SymmetricKey,
    /// The secondary key, if there is one.
    pub secondary: Option<SymmetricKey>,
    /// The key the device authenticated with when it registered.
    pub used: KeySlot,
}

impl SymmetricKeys {
    /// One key and no other (a TPM device's hub key).
    pub fn single(key: SymmetricKey) -> Self {
        Self { primary: key, secondary: None, used: KeySlot::Primary }
    }

    /// The key the device authenticated with (the primary when the secondary is missing).
    pub fn used(&self) -> &SymmetricKey {
        match (self.used, &self.secondary) {
            (KeySlot::Secondary, Some(secondary)) => secondary,
            _ => &self.primary,
        }
    }
}

/// A device identity to create or update on a hub.
#[derive(Debug, Clone, PartialEq)]
pub struct DeviceIdentity {
    /// The device id on the hub.
    pub device_id: DeviceId,
    /// The registration the identity belongs to.
    pub owner: Owner,
    /// How the device authenticates.
    pub credential: Credential,
    /// Whether the device may connect (a disabled identity is kept but cut off).
    pub enabled: bool,
    /// Initial twin or tags, for hubs that have such a thing (Mosquitto has none and ignores it).
    pub initial_twin: Option<serde_json::Value>,
    /// The change this identity is the result of.
    pub change: ChangeId,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Ids that could widen an MQTT topic or ACL are refused; ordinary ones pass.
    #[test]
    fn device_ids() {
        for good in ["dev-1", "a", "thermostat.1:x@y", &"x".repeat(128)] {
            assert!(DeviceId::try_from(good).is_ok(), "{good}");
        }
        for bad in ["", "a/b", "a+", "#", "%c", "a b", "é", &"x".repeat(129)] {
            assert!(DeviceId::try_from(bad).is_err(), "{bad}");
        }
    }

    /// A symmetric-key credential never shows its key in `Debug`.
    #[test]
    fn key_is_redacted() {
        let key = SymmetricKey::from_base64("AAECAwQFBgcICQoLDA0ODxAREhM=").unwrap();
        let identity = DeviceIdentity {
            device_id: DeviceId::try_from("d").unwrap(),
            owner: Owner::registration("d"),
            credential: Credential::SymmetricKey(SymmetricKeys::single(key)),
            enabled: true,
            initial_twin: None,
            change: ChangeId::new("job-1"),
        };
        let text = format!("{identity:?}");
        assert!(!text.contains("AAECAwQF"), "{text}");
    }
}
