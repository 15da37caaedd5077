//! Identifiers that validate on construction, so an invalid id cannot travel past the edge.
//!
//! Registration ids and enrollment group ids follow `docs/protocol/device-api.md` §1.3: at most 128 characters of ASCII
//! letters, digits and `-._:`, compared case-insensitively. Hub host names are DNS names with an optional port.

use std::borrow::Cow;
use std::fmt;

/// `text` in ASCII lower case: `text` itself when it has no upper-case letter (as most ids have), without a copy.
pub fn lower_case(text: &str) -> Cow<'_, str> {
    if text.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(text.to_ascii_lowercase())
    } else {
        Cow::Borrowed(text)
    }
}

/// Why an identifier was refused; the message names the rule that failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    /// The identifier is empty.
    #[error("must not be empty")]
    Empty,
    /// The identifier is longer than allowed.
    #[error("must be at most {max} characters (got {len})")]
    TooLong {
        /// The limit.
        max: usize,
        /// The length received.
        len: usize,
    },
    /// The identifier holds a character outside the allowed set.
    #[error("contains {found:?}; allowed are {allowed}")]
    BadCharacter {
        /// The first offending character.
        found: char,
        /// A description of the allowed set.
        allowed: &'static str,
    },
}

const DPS_ID_MAX: usize = 128;
const DPS_ID_ALLOWED: &str = "ASCII letters, digits and -._:";

fn check_dps_id(value: &str) -> Result<(), IdError> {
    if value.is_empty() {
        return Err(IdError::Empty);
    }
    let len = value.chars().count();
    if len > DPS_ID_MAX {
        return Err(IdError::TooLong { max: DPS_ID_MAX, len });
    }
    match value.chars().find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_' | ':'))) {
        Some(found) => Err(IdError::BadCharacter { found, allowed: DPS_ID_ALLOWED }),
        None => Ok(()),
    }
}

/// The special characters IoT Hub allows in a device id besides ASCII letters and digits (its identity registry's
/// rule: case-sensitive, at most 128 characters).
const DEVICE_ID_SPECIALS: &str = "-:.+%_#*?!(),=@;$'";
const DEVICE_ID_ALLOWED: &str = "ASCII letters, digits and -:.+%_#*?!(),=@;$'";

/// Checks a device id (an enrollment's `deviceId`) against IoT Hub's rule: 1-128 ASCII letters, digits and
/// `- : . + % _ # * ? ! ( ) , = @ ; $ '`. A hub may refuse some of these when the device is delivered to it (a
/// Mosquitto hub refuses the MQTT wildcards, which would widen the device's ACLs: `crates/hub/src/device.rs`).
pub fn check_device_id(value: &str) -> Result<(), IdError> {
    if value.is_empty() {
        return Err(IdError::Empty);
    }
    let len = value.chars().count();
    if len > DPS_ID_MAX {
        return Err(IdError::TooLong { max: DPS_ID_MAX, len });
    }
    match value.chars().find(|c| !(c.is_ascii_alphanumeric() || DEVICE_ID_SPECIALS.contains(*c))) {
        Some(found) => Err(IdError::BadCharacter { found, allowed: DEVICE_ID_ALLOWED }),
        None => Ok(()),
    }
}

macro_rules! dps_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, Hash)]
        pub struct $name(String);

        impl $name {
            /// The id as the client spelled it.
            pub fn as_str(&self) -> &str {
                &self.0
            }

            /// The canonical (lower-case) form under which the id is stored and compared ([`lower_case`]).
            pub fn key(&self) -> Cow<'_, str> {
                lower_case(&self.0)
            }
        }

        impl TryFrom<&str> for $name {
            type Error = IdError;
            fn try_from(value: &str) -> Result<Self, IdError> {
                check_dps_id(value)?;
                Ok(Self(value.to_owned()))
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({:?})", stringify!($name), self.0)
            }
        }
    };
}

dps_id!(
    /// A device's registration id (also the id of its individual enrollment).
    RegistrationId
);
dps_id!(
    /// The id of an enrollment group.
    EnrollmentGroupId
);

/// The host name (and optional port) of a downstream hub, as devices will connect to it.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct HubHostName(String);

const HOST_ALLOWED: &str = "DNS labels of ASCII letters, digits and '-', separated by '.', with an optional :port";

impl HubHostName {
    /// The host name in canonical (lower-case) form.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<&str> for HubHostName {
    type Error = IdError;
    fn try_from(value: &str) -> Result<Self, IdError> {
        if value.is_empty() {
            return Err(IdError::Empty);
        }
        if value.len() > 253 + 6 {
            return Err(IdError::TooLong { max: 259, len: value.len() });
        }
        let (host, port) = match value.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (value, None),
        };
        if let Some(port) = port {
            if let Some(found) = port.chars().find(|c| !c.is_ascii_digit()) {
                return Err(IdError::BadCharacter { found, allowed: HOST_ALLOWED });
            }
            if port.parse::<u16>().map_or(true, |p| p == 0) {
                return Err(IdError::BadCharacter { found: ':', allowed: HOST_ALLOWED });
            }
        }
        for label in host.split('.') {
            if label.is_empty() || label.len() > 63 || label.starts_with('-') || label.ends_with('-') {
                let found = label.chars().next().unwrap_or('.');
                return Err(IdError::BadCharacter { found, allowed: HOST_ALLOWED });
            }
            if let Some(found) = label.chars().find(|c| !(c.is_ascii_alphanumeric() || *c == '-')) {
                return Err(IdError::BadCharacter { found, allowed: HOST_ALLOWED });
            }
        }
        Ok(Self(value.to_ascii_lowercase()))
    }
}

impl fmt::Display for HubHostName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for HubHostName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "HubHostName({:?})", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn registration_ids_follow_the_dps_rules() {
        assert!(RegistrationId::try_from("my-device_01.a:b").is_ok());
        assert_eq!(RegistrationId::try_from(""), Err(IdError::Empty));
        assert_eq!(RegistrationId::try_from("a/b"), Err(IdError::BadCharacter { found: '/', allowed: DPS_ID_ALLOWED }));
        assert!(RegistrationId::try_from("x".repeat(128).as_str()).is_ok());
        assert_eq!(RegistrationId::try_from("x".repeat(129).as_str()), Err(IdError::TooLong { max: 128, len: 129 }));
        assert!(RegistrationId::try_from("dévice").is_err());
        assert!(RegistrationId::try_from("a b").is_err());
    }

    #[test]
    fn device_ids_take_every_character_iot_hub_allows() {
        assert!(check_device_id("dev-:.+%_#*?!(),=@;$'X9").is_ok());
        assert!(check_device_id(&"d".repeat(128)).is_ok());
        assert_eq!(check_device_id(""), Err(IdError::Empty));
        assert!(check_device_id(&"d".repeat(129)).is_err());
        for bad in ["a/b", "a b", "a\\b", "a\"b", "dévice", "a&b", "a<b"] {
            assert!(check_device_id(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn ids_compare_case_insensitively_by_key() {
        let a = RegistrationId::try_from("Device-A").unwrap();
        let b = RegistrationId::try_from("device-a").unwrap();
        assert_eq!(a.key(), b.key());
        assert_eq!(a.key(), "device-a");
        assert_eq!(a.as_str(), "Device-A");
        // An id already in lower case is its own key, not a copy.
        assert!(matches!(b.key(), Cow::Borrowed(key) if std::ptr::eq(key, b.as_str())));
        assert!(matches!(lower_case("Scope-1"), Cow::Owned(ref lower) if lower == "scope-1"));
    }

    #[test]
    fn hub_host_names_are_dns_names_with_optional_port() {
        assert_eq!(HubHostName::try_from("Hub1.Example.COM").unwrap().as_str(), "hub1.example.com");
        assert!(HubHostName::try_from("broker-1.local:8883").is_ok());
        assert!(HubHostName::try_from("localhost").is_ok());
        for bad in ["", "a..b", "-a.b", "a.b:", "a.b:0", "a.b:70000", "a_b.c", "a b", "a.b:x1"] {
            assert!(HubHostName::try_from(bad).is_err(), "{bad:?} should be refused");
        }
    }

    proptest! {
        #[test]
        fn id_validation_never_panics_and_accepts_only_the_allowed_set(s in "\\PC{0,200}") {
            let ok = RegistrationId::try_from(s.as_str()).is_ok();
            let expected = !s.is_empty() && s.chars().count() <= 128
                && s.chars().all(|c| c.is_ascii_alphanumeric() || "-._:".contains(c));
            prop_assert_eq!(ok, expected);
            let _ = HubHostName::try_from(s.as_str());
        }
    }
}
