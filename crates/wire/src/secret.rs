//! Symmetric keys: validated base64, never printed, wiped on drop.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use rand::RngCore;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use zeroize::Zeroizing;

/// Shortest key accepted from a client, in bytes.
pub const MIN_KEY_BYTES: usize = 16;
/// Longest key accepted from a client, in bytes.
pub const MAX_KEY_BYTES: usize = 64;
/// Length of a key the service generates, in bytes.
pub const GENERATED_KEY_BYTES: usize = 64;

/// A symmetric key of an enrollment or enrollment group (16-64 bytes, base64 on the wire).
///
/// `Debug` is redacted and the bytes are zeroized on drop. Serialization writes the base64 text, so it must only
/// happen where keys are meant to be returned (`attestationmechanism`) or stored.
#[derive(Clone, PartialEq, Eq)]
pub struct SymmetricKey(Zeroizing<Vec<u8>>);

/// Why a symmetric key was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// The text is not standard base64.
    #[error("is not valid base64")]
    NotBase64,
    /// The decoded key has a length outside 16-64 bytes.
    #[error("must decode to {MIN_KEY_BYTES}-{MAX_KEY_BYTES} bytes (got {0})")]
    BadLength(usize),
}

impl SymmetricKey {
    /// A fresh random key of [`GENERATED_KEY_BYTES`] bytes.
    pub fn generate() -> Self {
        let mut bytes = Zeroizing::new(vec![0u8; GENERATED_KEY_BYTES]);
        rand::rng().fill_bytes(&mut bytes);
        Self(bytes)
    }

    /// A fresh random key of `len` bytes (16-64), e.g. the 32-byte key of a TPM challenge (`docs/protocol/device-api.md`
    /// §3.3); other lengths are clamped into that range.
    pub fn generate_len(len: usize) -> Self {
        let mut bytes = Zeroizing::new(vec![0u8; len.clamp(MIN_KEY_BYTES, MAX_KEY_BYTES)]);
        rand::rng().fill_bytes(&mut bytes);
        Self(bytes)
    }

    /// Parses the base64 text of a key and checks its length.
    pub fn from_base64(text: &str) -> Result<Self, KeyError> {
        let bytes = Zeroizing::new(STANDARD.decode(text.trim()).map_err(|_| KeyError::NotBase64)?);
        if !(MIN_KEY_BYTES..=MAX_KEY_BYTES).contains(&bytes.len()) {
            return Err(KeyError::BadLength(bytes.len()));
        }
        Ok(Self(bytes))
    }

    /// A key of raw bytes (16-64), e.g. one opened from its sealed form in the database.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, KeyError> {
        if !(MIN_KEY_BYTES..=MAX_KEY_BYTES).contains(&bytes.len()) {
            return Err(KeyError::BadLength(bytes.len()));
        }
        Ok(Self(Zeroizing::new(bytes.to_vec())))
    }

    /// The key's base64 text. Handle with care: this is the secret.
    pub fn to_base64(&self) -> Zeroizing<String> {
        Zeroizing::new(STANDARD.encode(self.0.as_slice()))
    }

    /// The raw key bytes, for MAC computation.
    pub fn expose_bytes(&self) -> &[u8] {
        &self.0
    }

    /// Whether `other` is the same key, compared in constant time (for equal lengths).
    pub fn same_as(&self, other: &SymmetricKey) -> bool {
        subtle::ConstantTimeEq::ct_eq(self.0.as_slice(), other.0.as_slice()).into()
    }
}

/// Which of an enrollment's two symmetric keys a device authenticated with: the one its hub identity gets where
/// the hub holds one password per identity (Mosquitto). Stored lower-case (`primary`, `secondary`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KeySlot {
    /// The primary key (also what jobs written before the slot was recorded mean).
    #[default]
    Primary,
    /// The secondary key.
    Secondary,
}

impl KeySlot {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Primary => "primary",
            Self::Secondary => "secondary",
        }
    }

    /// Parses a stored name.
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "primary" => Some(Self::Primary),
            "secondary" => Some(Self::Secondary),
            _ => None,
        }
    }

    /// The slot of key `index` of an enrollment's keys as listed for verification (`[primary, secondary]`, absent
    /// ones left out): index 0 is the primary key when there is one.
    pub fn of_index(index: usize, has_primary: bool) -> Self {
        if index == 0 && has_primary { Self::Primary } else { Self::Secondary }
    }
}

impl std::fmt::Debug for SymmetricKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SymmetricKey(..)")
    }
}

impl Serialize for SymmetricKey {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.to_base64())
    }
}

impl<'de> Deserialize<'de> for SymmetricKey {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = Zeroizing::new(String::deserialize(deserializer)?);
        Self::from_base64(&text).map_err(serde::de::Error::custom)
    }
}

/// Deserializes an optional key where an empty (or blank) string means "none": Azure generates a key for `""`, and
/// documents exported from Azure or written by its tools carry `"primaryKey": ""` for "generate one".
pub fn optional_key<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<SymmetricKey>, D::Error> {
    let text: Option<Zeroizing<String>> = Option::<String>::deserialize(deserializer)?.map(Zeroizing::new);
    match text {
        Some(text) if !text.trim().is_empty() => {
            SymmetricKey::from_base64(&text).map(Some).map_err(serde::de::Error::custom)
        }
        _ => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_are_64_random_bytes() {
        let a = SymmetricKey::generate();
        let b = SymmetricKey::generate();
        assert_eq!(a.expose_bytes().len(), 64);
        assert_ne!(a, b);
        assert_eq!(SymmetricKey::from_base64(&a.to_base64()).unwrap(), a);
    }

    #[test]
    fn given_keys_are_validated() {
        assert_eq!(SymmetricKey::from_base64("not base64!").unwrap_err(), KeyError::NotBase64);
        assert_eq!(SymmetricKey::from_base64(&STANDARD.encode([1u8; 15])).unwrap_err(), KeyError::BadLength(15));
        assert_eq!(SymmetricKey::from_base64(&STANDARD.encode([1u8; 65])).unwrap_err(), KeyError::BadLength(65));
        assert!(SymmetricKey::from_base64(&STANDARD.encode([1u8; 16])).is_ok());
        assert!(SymmetricKey::from_base64(&STANDARD.encode([1u8; 64])).is_ok());
    }

    #[test]
    fn debug_never_shows_the_key() {
        let key = SymmetricKey::from_base64(&STANDARD.encode([0x41u8; 32])).unwrap();
        let shown = format!("{key:?}");
        assert_eq!(shown, "SymmetricKey(..)");
        assert!(!shown.contains(&*key.to_base64()));
    }

    /// Slots round-trip through their names; the verification index maps to the slot it came from.
    #[test]
    fn key_slots() {
        for slot in [KeySlot::Primary, KeySlot::Secondary] {
            assert_eq!(KeySlot::parse(slot.as_str()), Some(slot));
            assert_eq!(serde_json::to_value(slot).unwrap(), slot.as_str());
        }
        assert_eq!(KeySlot::parse("tertiary"), None);
        assert_eq!(KeySlot::of_index(0, true), KeySlot::Primary);
        assert_eq!(KeySlot::of_index(1, true), KeySlot::Secondary);
        assert_eq!(KeySlot::of_index(0, false), KeySlot::Secondary);
        let key = SymmetricKey::generate();
        assert!(key.same_as(&key.clone()));
        assert!(!key.same_as(&SymmetricKey::generate()));
    }
}
