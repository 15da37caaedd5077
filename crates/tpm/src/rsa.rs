//! RSA-OAEP encryption to a TPM key (aws-lc-rs), whose modulus and exponent come from its `TPM2B_PUBLIC`.
//!
//! aws-lc-rs takes public keys as an X.509 `SubjectPublicKeyInfo`, so the modulus and exponent are wrapped in one
//! (RFC 8017 A.1.1 `RSAPublicKey` inside RFC 5280 §4.1.2.7); the DER here is the fixed shape of that structure.

use aws_lc_rs::rsa::{OAEP_SHA256_MGF1SHA256, OaepPublicEncryptingKey, PublicEncryptingKey};

/// DER length octets.
fn der_length(out: &mut Vec<u8>, len: usize) {
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes = len.to_be_bytes();
        let first = bytes.iter().position(|b| *b != 0).unwrap_or(bytes.len() - 1);
        out.push(0x80 | (bytes.len() - first) as u8);
        out.extend_from_slice(&bytes[first..]);
    }
}

fn der(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    der_length(&mut out, content.len());
    out.extend_from_slice(content);
    out
}

/// A DER INTEGER of the unsigned big-endian `value` (leading zeros removed, one added when the top bit is set).
fn der_unsigned(value: &[u8]) -> Vec<u8> {
    let first = value.iter().position(|b| *b != 0).unwrap_or(value.len());
    let value = &value[first..];
    let mut content = Vec::with_capacity(value.len() + 1);
    if value.first().is_none_or(|b| b & 0x80 != 0) {
        content.push(0);
    }
    content.extend_from_slice(value);
    der(0x02, &content)
}

/// The `SubjectPublicKeyInfo` of an RSA key.
pub(crate) fn subject_public_key_info(modulus: &[u8], exponent: u32) -> Vec<u8> {
    // AlgorithmIdentifier { rsaEncryption (1.2.840.113549.1.1.1), NULL }
    const ALGORITHM: [u8; 15] =
        [0x30, 0x0d, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01, 0x05, 0x00];
    let mut rsa_public_key = der_unsigned(modulus);
    rsa_public_key.extend_from_slice(&der_unsigned(&exponent.to_be_bytes()));
    let rsa_public_key = der(0x30, &rsa_public_key);
    let mut bit_string = vec![0u8];
    bit_string.extend_from_slice(&rsa_public_key);
    let mut spki = ALGORITHM.to_vec();
    spki.extend_from_slice(&der(0x03, &bit_string));
    der(0x30, &spki)
}

/// RSA-OAEP (SHA-256, MGF1-SHA-256) of `plaintext` to the key, with `label` (its terminating zero included).
pub(crate) fn oaep_encrypt(modulus: &[u8], exponent: u32, label: &[u8], plaintext: &[u8]) -> Option<Vec<u8>> {
    let key = PublicEncryptingKey::from_der(&subject_public_key_info(modulus, exponent)).ok()?;
    let key = OaepPublicEncryptingKey::new(key).ok()?;
    let mut out = vec![0u8; key.ciphertext_size()];
    let written = key.encrypt(&OAEP_SHA256_MGF1SHA256, plaintext, &mut out, Some(label)).ok()?.len();
    out.truncate(written);
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_lc_rs::encoding::AsDer;
    use aws_lc_rs::rsa::{KeySize, OaepPrivateDecryptingKey, PrivateDecryptingKey};

    /// A generated key's own SPKI (aws-lc-rs' encoder) equals ours for its modulus and exponent, and what we
    /// encrypt with our SPKI decrypts with the private key and the same label only.
    #[test]
    fn oaep_to_our_spki_decrypts_with_the_private_key() {
        let private = PrivateDecryptingKey::generate(KeySize::Rsa2048).unwrap();
        let spki = private.public_key().as_der().unwrap();
        let spki = spki.as_ref();
        // SPKI = 30 82 01 22 | algorithm (15) | 03 82 01 0f 00 | 30 82 01 0a 02 82 01 01 00 <256 modulus> 02 03 <e>
        let modulus = &spki[4 + 15 + 5 + 4 + 5..][..256];
        assert_eq!(subject_public_key_info(modulus, 65537), spki);

        let ciphertext = oaep_encrypt(modulus, 65537, b"IDENTITY\0", b"a seed").unwrap();
        let private = OaepPrivateDecryptingKey::new(private).unwrap();
        let mut out = vec![0u8; private.min_output_size()];
        let plain = private.decrypt(&OAEP_SHA256_MGF1SHA256, &ciphertext, &mut out, Some(b"IDENTITY\0")).unwrap();
        assert_eq!(plain, b"a seed");
        assert!(private.decrypt(&OAEP_SHA256_MGF1SHA256, &ciphertext, &mut out, Some(b"IDENTITY")).is_err());
    }

    #[test]
    fn integers_are_minimal_and_positive() {
        assert_eq!(der_unsigned(&[0, 0, 0x7f]), [0x02, 0x01, 0x7f]);
        assert_eq!(der_unsigned(&[0x80]), [0x02, 0x02, 0x00, 0x80]);
        assert_eq!(der_unsigned(&[]), [0x02, 0x01, 0x00]);
        let mut out = Vec::new();
        der_length(&mut out, 300);
        assert_eq!(out, [0x82, 0x01, 0x2c]);
    }

    /// A modulus that is not a usable RSA key is refused, not a panic.
    #[test]
    fn a_bad_modulus_is_refused() {
        assert!(oaep_encrypt(&[0; 256], 65537, b"IDENTITY\0", b"x").is_none());
        assert!(oaep_encrypt(&[], 65537, b"IDENTITY\0", b"x").is_none());
    }
}
