//! Certificate serial numbers: 128 random bits, positive, never zero (CA/B Forum BR §7.1 asks for 64 or more).

use rand::RngCore;

/// A certificate serial number (big-endian unsigned bytes, no leading zero byte).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Serial(Vec<u8>);

/// Why a serial number text was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SerialError {
    /// Not hex digits, or an odd number of them.
    #[error("a serial number must be an even number of hex digits (got \"{0}\")")]
    NotHex(String),
    /// Empty, zero, or longer than 20 bytes (RFC 5280 §4.1.2.2).
    #[error("a serial number must be 1-20 bytes and not zero")]
    OutOfRange,
}

/// A fresh random serial: 16 random bytes with the top bit cleared (positive in DER without a sign byte) and the
/// next bit set (so it is never zero and always 16 bytes long): 126 random bits.
pub(crate) fn random() -> Serial {
    let mut bytes = vec![0u8; 16];
    rand::rng().fill_bytes(&mut bytes);
    if let Some(first) = bytes.first_mut() {
        *first = (*first & 0x7f) | 0x40;
    }
    Serial(bytes)
}

impl Serial {
    /// Parses lower- or upper-case hex (as [`Serial::to_hex`] writes), ignoring leading zero bytes.
    pub fn from_hex(text: &str) -> Result<Self, SerialError> {
        let bytes = hex::decode(text).map_err(|_| SerialError::NotHex(text.chars().take(64).collect()))?;
        let first_nonzero = bytes.iter().position(|b| *b != 0).ok_or(SerialError::OutOfRange)?;
        let bytes = bytes[first_nonzero..].to_vec();
        if bytes.len() > 20 {
            return Err(SerialError::OutOfRange);
        }
        Ok(Self(bytes))
    }

    /// Lower-case hex of the unsigned value.
    pub fn to_hex(&self) -> String {
        hex::encode(&self.0)
    }

    /// The unsigned big-endian bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    pub(crate) fn to_rcgen(&self) -> rcgen::SerialNumber {
        rcgen::SerialNumber::from_slice(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_serials_are_positive_16_bytes_and_distinct() {
        let a = random();
        let b = random();
        assert_ne!(a, b);
        for serial in [a, b] {
            assert_eq!(serial.as_bytes().len(), 16);
            assert_eq!(serial.as_bytes()[0] & 0xc0, 0x40);
            assert_eq!(Serial::from_hex(&serial.to_hex()).unwrap(), serial);
        }
    }

    #[test]
    fn hex_is_validated() {
        assert_eq!(Serial::from_hex("00ff").unwrap().to_hex(), "ff");
        assert_eq!(Serial::from_hex("ABcd").unwrap().to_hex(), "abcd");
        assert!(matches!(Serial::from_hex("abc"), Err(SerialError::NotHex(_))));
        assert!(matches!(Serial::from_hex("zz"), Err(SerialError::NotHex(_))));
        assert_eq!(Serial::from_hex("0000").unwrap_err(), SerialError::OutOfRange);
        assert_eq!(Serial::from_hex("").unwrap_err(), SerialError::OutOfRange);
        assert_eq!(Serial::from_hex(&"01".repeat(21)).unwrap_err(), SerialError::OutOfRange);
    }
}
