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
}
