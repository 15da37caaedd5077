//! `TPM2B_PUBLIC` (TPM 2.0 Part 2 §12.2): the public area of a TPM object as devices send their EK and SRK
//! (`docs/protocol/device-api.md` §3.2: base64 of the marshalled `TPM2B_PUBLIC`), and its TPM name.
//!
//! Parsing accepts RSA, ECC, keyed-hash and symmetric objects and refuses anything malformed, with trailing bytes,
//! or with an algorithm it does not know. What the activation blob needs of an EK and an SRK (RSA-2048 restricted
//! decryption keys, SHA-256 names, AES-128-CFB) is checked separately by [`Public::check_activation_key`], so an
//! ECC EK can still be parsed, named and compared with an enrollment.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use sha2::Digest;

use crate::marshal::{Reader, Truncated};

/// `TPM_ALG_RSA`.
pub const ALG_RSA: u16 = 0x0001;
/// `TPM_ALG_SHA1`.
pub const ALG_SHA1: u16 = 0x0004;
/// `TPM_ALG_HMAC`.
pub const ALG_HMAC: u16 = 0x0005;
/// `TPM_ALG_AES`.
pub const ALG_AES: u16 = 0x0006;
/// `TPM_ALG_KEYEDHASH`.
pub const ALG_KEYEDHASH: u16 = 0x0008;
/// `TPM_ALG_XOR`.
pub const ALG_XOR: u16 = 0x000A;
/// `TPM_ALG_SHA256`.
pub const ALG_SHA256: u16 = 0x000B;
/// `TPM_ALG_SHA384`.
pub const ALG_SHA384: u16 = 0x000C;
/// `TPM_ALG_SHA512`.
pub const ALG_SHA512: u16 = 0x000D;
/// `TPM_ALG_NULL`.
pub const ALG_NULL: u16 = 0x0010;
/// `TPM_ALG_ECDAA`.
pub const ALG_ECDAA: u16 = 0x001A;
/// `TPM_ALG_ECC`.
pub const ALG_ECC: u16 = 0x0023;
/// `TPM_ALG_SYMCIPHER`.
pub const ALG_SYMCIPHER: u16 = 0x0025;
/// `TPM_ALG_CFB`.
pub const ALG_CFB: u16 = 0x0043;

/// `TPMA_OBJECT` bits (Part 2 §8.3).
pub mod attributes {
    /// fixedTPM.
    pub const FIXED_TPM: u32 = 1 << 1;
    /// fixedParent.
    pub const FIXED_PARENT: u32 = 1 << 4;
    /// sensitiveDataOrigin.
    pub const SENSITIVE_DATA_ORIGIN: u32 = 1 << 5;
    /// userWithAuth.
    pub const USER_WITH_AUTH: u32 = 1 << 6;
    /// adminWithPolicy.
    pub const ADMIN_WITH_POLICY: u32 = 1 << 7;
    /// noDA.
    pub const NO_DA: u32 = 1 << 10;
    /// restricted.
    pub const RESTRICTED: u32 = 1 << 16;
    /// decrypt.
    pub const DECRYPT: u32 = 1 << 17;
    /// sign (signEncrypt).
    pub const SIGN: u32 = 1 << 18;
}

/// Why a public area was refused. The message says what is wrong, for the device's error answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// Not base64.
    #[error("is not base64")]
    NotBase64,
    /// The structure ends early or a size is wrong.
    #[error("is not a TPM2B_PUBLIC: {0}")]
    Malformed(String),
    /// An algorithm or combination we do not know or cannot use.
    #[error("is not supported: {0}")]
    Unsupported(String),
}

impl From<Truncated> for KeyError {
    fn from(_: Truncated) -> Self {
        Self::Malformed("it ends early".into())
    }
}

/// The key material of a public area (its `unique` field, with the parameters that belong to it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PublicKey {
    /// An RSA key.
    Rsa {
        /// The modulus, big-endian, as the TPM gives it.
        modulus: Vec<u8>,
        /// The public exponent (the TPM's 0 already replaced by 65537).
        exponent: u32,
        /// The declared key size.
        key_bits: u16,
    },
    /// An elliptic-curve key.
    Ecc {
        /// `TPM_ECC_CURVE` (0x0003 = NIST P-256, 0x0004 = NIST P-384).
        curve: u16,
        /// The point's x coordinate.
        x: Vec<u8>,
        /// The point's y coordinate.
        y: Vec<u8>,
    },
    /// A keyed-hash object (HMAC key or sealed data): `unique` is a digest.
    KeyedHash {
        /// `unique`.
        unique: Vec<u8>,
    },
    /// A symmetric cipher object: `unique` is a digest.
    SymCipher {
        /// `unique`.
        unique: Vec<u8>,
    },
}

/// `TPMT_SYM_DEF_OBJECT` of a storage key: the algorithm that protects its children and credentials.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SymmetricDefinition {
    /// `TPM_ALG_AES`, ...
    pub algorithm: u16,
    /// Key size in bits.
    pub key_bits: u16,
    /// `TPM_ALG_CFB`, ...
    pub mode: u16,
}

/// A parsed `TPMT_PUBLIC`, with the bytes it was parsed from (which its name is computed over).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Public {
    marshalled: Vec<u8>,
    object_type: u16,
    name_alg: u16,
    attributes: u32,
    symmetric: Option<SymmetricDefinition>,
    key: PublicKey,
}

fn hash_size(alg: u16) -> Option<usize> {
    match alg {
        ALG_SHA1 => Some(20),
        ALG_SHA256 => Some(32),
        ALG_SHA384 => Some(48),
        ALG_SHA512 => Some(64),
        _ => None,
    }
}

fn unsupported(what: impl Into<String>) -> KeyError {
    KeyError::Unsupported(what.into())
}

/// `TPMT_SYM_DEF_OBJECT`: `None` for `TPM_ALG_NULL`.
fn symmetric(r: &mut Reader<'_>) -> Result<Option<SymmetricDefinition>, KeyError> {
    let algorithm = r.u16()?;
    if algorithm == ALG_NULL {
        return Ok(None);
    }
    let key_bits = r.u16()?;
    let mode = r.u16()?;
    Ok(Some(SymmetricDefinition { algorithm, key_bits, mode }))
}

/// A scheme (`TPMT_RSA_SCHEME`, `TPMT_ECC_SCHEME`, `TPMT_KDF_SCHEME`): the algorithm, and its hash unless NULL.
fn scheme(r: &mut Reader<'_>) -> Result<(), KeyError> {
    let scheme = r.u16()?;
    if scheme != ALG_NULL {
        r.u16()?; // hashAlg
        if scheme == ALG_ECDAA {
            r.u16()?; // count
        }
    }
    Ok(())
}

impl Public {
    /// Parses a marshalled `TPM2B_PUBLIC` (u16 size, then the `TPMT_PUBLIC`), which must fill `bytes` exactly.
    pub fn parse(bytes: &[u8]) -> Result<Self, KeyError> {
        let mut outer = Reader::new(bytes);
        let inner = outer.sized()?;
        if !outer.is_empty() {
            return Err(KeyError::Malformed(format!(
                "{} bytes follow the structure its size announces",
                outer.rest().len()
            )));
        }
        Self::parse_tpmt(inner)
    }

    /// Parses the base64 text of a `TPM2B_PUBLIC`, as the device API carries it.
    pub fn from_base64(text: &str) -> Result<Self, KeyError> {
        let bytes = STANDARD.decode(text.trim()).map_err(|_| KeyError::NotBase64)?;
        Self::parse(&bytes)
    }

    /// Parses a bare `TPMT_PUBLIC`, which must fill `bytes` exactly.
    pub fn parse_tpmt(bytes: &[u8]) -> Result<Self, KeyError> {
        let mut r = Reader::new(bytes);
        let object_type = r.u16()?;
        let name_alg = r.u16()?;
        if hash_size(name_alg).is_none() {
            return Err(unsupported(format!("nameAlg 0x{name_alg:04x}")));
        }
        let attributes = r.u32()?;
        let _auth_policy = r.sized()?;
        let (symmetric, key) = match object_type {
            ALG_RSA => {
                let symmetric = symmetric(&mut r)?;
                scheme(&mut r)?;
                let key_bits = r.u16()?;
                let exponent = match r.u32()? {
                    0 => 65537,
                    e => e,
                };
                let modulus = r.sized()?.to_vec();
                if modulus.len() * 8 != usize::from(key_bits) {
                    return Err(KeyError::Malformed(format!(
                        "the RSA modulus has {} bits, keyBits says {key_bits}",
                        modulus.len() * 8
                    )));
                }
                (symmetric, PublicKey::Rsa { modulus, exponent, key_bits })
            }
            ALG_ECC => {
                let symmetric = symmetric(&mut r)?;
                scheme(&mut r)?;
                let curve = r.u16()?;
                scheme(&mut r)?; // kdf
                let x = r.sized()?.to_vec();
                let y = r.sized()?.to_vec();
                (symmetric, PublicKey::Ecc { curve, x, y })
            }
            ALG_KEYEDHASH => {
                let scheme = r.u16()?;
                match scheme {
                    ALG_NULL => {}
                    ALG_HMAC => {
                        r.u16()?;
                    }
                    ALG_XOR => {
                        r.u16()?;
                        r.u16()?;
                    }
                    other => return Err(unsupported(format!("keyed-hash scheme 0x{other:04x}"))),
                }
                (None, PublicKey::KeyedHash { unique: r.sized()?.to_vec() })
            }
            ALG_SYMCIPHER => {
                let symmetric = symmetric(&mut r)?;
                (symmetric, PublicKey::SymCipher { unique: r.sized()?.to_vec() })
            }
            other => return Err(unsupported(format!("object type 0x{other:04x}"))),
        };
        if !r.is_empty() {
            return Err(KeyError::Malformed(format!("{} bytes follow the TPMT_PUBLIC", r.rest().len())));
        }
        Ok(Self { marshalled: bytes.to_vec(), object_type, name_alg, attributes, symmetric, key })
    }

    /// The marshalled `TPMT_PUBLIC` (without the size).
    pub fn tpmt_bytes(&self) -> &[u8] {
        &self.marshalled
    }

    /// The marshalled `TPM2B_PUBLIC` (with the size).
    pub fn tpm2b_bytes(&self) -> Vec<u8> {
        // A TPMT_PUBLIC parsed from a TPM2B always fits its size again.
        crate::marshal::sized(&self.marshalled).unwrap_or_default()
    }

    /// SHA-256 of the marshalled `TPM2B_PUBLIC`, exactly as the device sent it: what an allow-list of endorsement
    /// keys names (`sha256sum` of the file `tpm2_readpublic -o` writes).
    pub fn sha256(&self) -> [u8; 32] {
        sha2::Sha256::digest(self.tpm2b_bytes()).into()
    }

    /// The registration id the Azure device SDKs derive from an endorsement key when none is configured: the
    /// RFC 4648 base32 of [`Public::sha256`], lower case, without `=` padding (52 characters). A TPM group can
    /// require it (`docs/security.md`), so that a TPM can claim one id only, and no other device's.
    pub fn derived_registration_id(&self) -> String {
        base32_lower(&self.sha256())
    }

    /// `TPM_ALG_RSA`, `TPM_ALG_ECC`, ...
    pub fn object_type(&self) -> u16 {
        self.object_type
    }

    /// The name algorithm.
    pub fn name_alg(&self) -> u16 {
        self.name_alg
    }

    /// `TPMA_OBJECT`.
    pub fn attributes(&self) -> u32 {
        self.attributes
    }

    /// The symmetric algorithm protecting the object's children and credentials, if any.
    pub fn symmetric(&self) -> Option<SymmetricDefinition> {
        self.symmetric
    }

    /// The key material.
    pub fn key(&self) -> &PublicKey {
        &self.key
    }

    /// The TPM name: `nameAlg || H_nameAlg(TPMT_PUBLIC)` (Part 1 §16).
    pub fn name(&self) -> Vec<u8> {
        let digest = match self.name_alg {
            ALG_SHA256 => sha2::Sha256::digest(&self.marshalled).to_vec(),
            ALG_SHA384 => sha2::Sha384::digest(&self.marshalled).to_vec(),
            ALG_SHA512 => sha2::Sha512::digest(&self.marshalled).to_vec(),
            // SHA-1 names are not computed: a SHA-1 key cannot receive an activation blob here, and a name that is
            // never compared cannot be wrong. `parse` refuses every other algorithm.
            _ => Vec::new(),
        };
        let mut name = self.name_alg.to_be_bytes().to_vec();
        name.extend_from_slice(&digest);
        name
    }

    /// Whether `other` is the same key (same type and key material), whatever its attributes or policy: how an
    /// enrollment's EK is matched with the one a device sends (`docs/protocol/device-api.md` §3.2 recommendation).
    pub fn same_key(&self, other: &Public) -> bool {
        match (&self.key, &other.key) {
            (PublicKey::Rsa { modulus: a, exponent: ea, .. }, PublicKey::Rsa { modulus: b, exponent: eb, .. }) => {
                ea == eb && strip_zeros(a) == strip_zeros(b)
            }
            (PublicKey::Ecc { curve: ca, x: xa, y: ya }, PublicKey::Ecc { curve: cb, x: xb, y: yb }) => {
                ca == cb && strip_zeros(xa) == strip_zeros(xb) && strip_zeros(ya) == strip_zeros(yb)
            }
            _ => false,
        }
    }

    /// Checks that this key can protect an activation blob (`docs/protocol/device-api.md` §3.2, §3.3): an RSA-2048 restricted
    /// decryption key with a SHA-256 name and AES-128-CFB as its symmetric algorithm, as both the EK and the SRK of
    /// every Azure device SDK are. `role` ("endorsement key", "storage root key") names it in the error.
    ///
    /// ECC EKs parse, but cannot be used: MakeCredential to an ECC key needs an ECDH seed, which no DPS client
    /// implements (they all create RSA EKs and SRKs).
    pub fn check_activation_key(&self, role: &str) -> Result<(), KeyError> {
        let PublicKey::Rsa { key_bits, .. } = &self.key else {
            return Err(unsupported(format!(
                "the {role} is not an RSA key (type 0x{:04x}); TPM attestation needs RSA-2048 keys",
                self.object_type
            )));
        };
        if *key_bits != 2048 {
            return Err(unsupported(format!("the {role} has {key_bits} bits; TPM attestation needs RSA-2048")));
        }
        if self.name_alg != ALG_SHA256 {
            return Err(unsupported(format!("the {role}'s nameAlg is 0x{:04x}, not SHA-256", self.name_alg)));
        }
        let needed = attributes::RESTRICTED | attributes::DECRYPT;
        if self.attributes & needed != needed || self.attributes & attributes::SIGN != 0 {
            return Err(unsupported(format!(
                "the {role} is not a restricted decryption key (attributes 0x{:08x})",
                self.attributes
            )));
        }
        let aes128cfb = SymmetricDefinition { algorithm: ALG_AES, key_bits: 128, mode: ALG_CFB };
        if self.symmetric != Some(aes128cfb) {
            return Err(unsupported(format!("the {role}'s symmetric algorithm is not AES-128-CFB")));
        }
        Ok(())
    }
}

fn strip_zeros(bytes: &[u8]) -> &[u8] {
    let first = bytes.iter().position(|b| *b != 0).unwrap_or(bytes.len());
    &bytes[first..]
}

/// RFC 4648 base32 (alphabet `a-z2-7`, lower case), without padding.
fn base32_lower(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 32] = b"abcdefghijklmnopqrstuvwxyz234567";
    let mut text = String::with_capacity(bytes.len().div_ceil(5) * 8);
    let (mut buffer, mut bits) = (0u16, 0u32);
    for byte in bytes {
        buffer = (buffer << 8) | u16::from(*byte);
        bits += 8;
        while bits >= 5 {
            bits -= 5;
            text.push(char::from(ALPHABET[usize::from((buffer >> bits) & 31)]));
        }
        buffer &= (1 << bits) - 1;
    }
    if bits > 0 {
        text.push(char::from(ALPHABET[usize::from((buffer << (5 - bits)) & 31)]));
    }
    text
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// The EK of the swtpm instance in `docs/protocol/tpm-activation.md` (TPM2B_PUBLIC, 316 bytes; the standard RSA-2048
    /// EK template, authPolicy = PolicySecret(TPM_RH_ENDORSEMENT)).
    pub(crate) const VECTOR_EK: &str = concat!(
        "013a0001000b000300b20020837197674484b3f81a90cc8d46a5d724fd52d76e06520b64f2a1da1b331469aa00060080004300100800000000000100bd05084b",
        "4648a29051819a7fc506efde0d4812331cbdc24a725e80d360d1b8ef4ddb14f0003326747481b62658b9ffa0157fa3e7582859b832f3ae83002e494cc0084e8c",
        "0c6c551d3c1c96e7e799b1efb8d29027bab7ff39197d47683dbb75b37ef34214c597e794abda87f803e4089df801edc71b17e6d7b2405c95099a72f1f5e0a56a",
        "35ac737ade153390c755d9dca9b6a94ac4b36d9bc30867901c868641907f42985091e0681e2354c860f0c0a48efaa02a657b5c8165136b84597382b4854efdf0",
        "e030ef58c06e7804374d8663ef29afa63a587a56ce0317507149cf7248eb1d4bcb7d58f1921b641c9a7dad18895d2fa12718d49ced547eb8300d357f",
    );
    /// The SRK of the same instance (TPM2B_PUBLIC, 284 bytes).
    pub(crate) const VECTOR_SRK: &str = concat!(
        "011a0001000b00030472000000060080004300100800000000000100bb9db4ee2e7eda3a05336be358b67f392b7ca197cb1c96c822c605b77b92f250162a0bfb",
        "5d286c0edbf313190941706be74812df59a1f48c1aff8e8869c47eec44e4711f4507c34f4095a9b8b879594ad8cf9ffd15d5a8b267314d0f424d73948e80a5b7",
        "958ba7fd428bd554e76cfcd3857b73dffff56735eb7097fe872f627adb76c6249fa3c48e0027345e29e18a981bbe82a94e1575f960534fe10636172088ed01e4",
        "ca0d7577d128b3c0971da118873eedd650ff713e5906c5fef8e06875f8da4f8f31c6c41bcdeaf9d556d3ddfec3ef8d4445605c7e612a12962ad4c29261071793",
        "0d632e21281826a0dae651f338d5fdfe28cdb62214d7851a2b2a891d",
    );

    pub(crate) fn ek() -> Public {
        Public::parse(&hex::decode(VECTOR_EK).unwrap()).unwrap()
    }

    pub(crate) fn srk() -> Public {
        Public::parse(&hex::decode(VECTOR_SRK).unwrap()).unwrap()
    }

    /// The names of `docs/protocol/tpm-activation.md` ("Intermediates"), which tpm2-tools computed for that swtpm.
    #[test]
    fn names_match_the_vector() {
        assert_eq!(hex::encode(srk().name()), "000bda9e1d1058e1a85dbaac057a48e1ef773101097c04b4b57aff63d29b508c7762");
        assert_eq!(hex::encode(ek().name()), "000bad4c697acf298542c1f9a139f966988e29c044bc524db216b2a65111c9c8ce43");
    }

    /// The standard EK and SRK templates parse into what the Azure SDKs create (§3.2) and qualify for activation.
    #[test]
    fn the_standard_ek_and_srk_parse() {
        let ek = ek();
        assert_eq!(ek.object_type(), ALG_RSA);
        assert_eq!(ek.attributes(), 0x000300b2);
        let PublicKey::Rsa { modulus, exponent, key_bits } = ek.key() else { panic!("not RSA") };
        assert_eq!((modulus.len(), *exponent, *key_bits), (256, 65537, 2048));
        assert_eq!(ek.tpm2b_bytes(), hex::decode(VECTOR_EK).unwrap());
        ek.check_activation_key("endorsement key").unwrap();
        srk().check_activation_key("storage root key").unwrap();
        assert!(ek.same_key(&ek.clone()));
        assert!(!ek.same_key(&srk()));
    }

    /// RFC 4648 §10's base32 vectors, lower case and without padding.
    #[test]
    fn base32_matches_rfc_4648() {
        for (input, expected) in [
            ("", ""),
            ("f", "my"),
            ("fo", "mzxq"),
            ("foo", "mzxw6"),
            ("foob", "mzxw6yq"),
            ("fooba", "mzxw6ytb"),
            ("foobar", "mzxw6ytboi"),
        ] {
            assert_eq!(base32_lower(input.as_bytes()), expected, "{input:?}");
        }
    }

    /// The derived id of the vector EK, computed apart from this code (Python's hashlib and base64.b32encode over
    /// the TPM2B_PUBLIC bytes), as the Azure SDKs derive it.
    #[test]
    fn derived_registration_id_matches_the_azure_sdks() {
        let ek = ek();
        assert_eq!(hex::encode(ek.sha256()), "cec837b28cf706aff3a29095e9bc1c96a583003283edfa3cc981ee84c6c7db7d");
        assert_eq!(ek.derived_registration_id(), "z3edpmum64dk745csck6tpa4s2sygabsqpw7upgjqhxijrwh3n6q");
        assert_ne!(srk().derived_registration_id(), ek.derived_registration_id());
    }

    /// An EK is matched by its key, not its text: other attributes or policy around the same modulus still match.
    #[test]
    fn same_key_ignores_attributes_and_policy() {
        let mut bytes = hex::decode(VECTOR_EK).unwrap();
        bytes[8] ^= 0x01; // an attribute bit
        bytes[12] ^= 0xff; // a byte of the authPolicy
        let other = Public::parse(&bytes).unwrap();
        assert!(ek().same_key(&other));
        assert_ne!(ek().name(), other.name());
    }

    /// Truncations, extensions and unknown algorithms are refused with a reason, at every length.
    #[test]
    fn malformed_keys_are_refused() {
        let bytes = hex::decode(VECTOR_EK).unwrap();
        for n in 0..bytes.len() {
            assert!(Public::parse(&bytes[..n]).is_err(), "a key cut at {n} bytes parsed");
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(matches!(Public::parse(&longer), Err(KeyError::Malformed(_))));
        let mut unknown = bytes;
        unknown[2..4].copy_from_slice(&0x0099u16.to_be_bytes());
        assert!(matches!(Public::parse(&unknown), Err(KeyError::Unsupported(_))));
        assert_eq!(Public::from_base64("not base64!"), Err(KeyError::NotBase64));
    }

    /// Keys the activation cannot use are refused with what is wrong: a signing key, another size or symmetric
    /// algorithm, an ECC key.
    #[test]
    fn unusable_activation_keys_say_why() {
        let mut sign = hex::decode(VECTOR_SRK).unwrap();
        sign[7] |= 0x04; // sign (bit 18 of the attributes at bytes 6..10)
        let err = Public::parse(&sign).unwrap().check_activation_key("storage root key").unwrap_err();
        assert!(err.to_string().contains("restricted decryption"), "{err}");
        let mut aes256 = hex::decode(VECTOR_SRK).unwrap();
        aes256[14..16].copy_from_slice(&256u16.to_be_bytes());
        let err = Public::parse(&aes256).unwrap().check_activation_key("storage root key").unwrap_err();
        assert!(err.to_string().contains("AES-128-CFB"), "{err}");
        // The ECC EK of the TCG low-range template L-2 (P-256), as swtpm_setup creates it (x and y shortened to
        // keep the test readable; parsing does not need a point on the curve).
        let mut ecc = Vec::new();
        ecc.extend_from_slice(&hex::decode("0023000b000300b20020").unwrap());
        ecc.extend_from_slice(&[0x11; 32]);
        ecc.extend_from_slice(&hex::decode("0006008000430010000300100002aa550002bb66").unwrap());
        let ecc = Public::parse(&crate::marshal::sized(&ecc).unwrap()).unwrap();
        assert_eq!(ecc.key(), &PublicKey::Ecc { curve: 3, x: vec![0xaa, 0x55], y: vec![0xbb, 0x66] });
        assert_eq!(ecc.name().len(), 34);
        let err = ecc.check_activation_key("endorsement key").unwrap_err();
        assert!(err.to_string().contains("not an RSA key"), "{err}");
    }

    proptest::proptest! {
        /// Any bytes give a key or an error, never a panic; a key that parses marshals back to the same bytes.
        #[test]
        fn parse_is_total(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..400)) {
            if let Ok(public) = Public::parse(&bytes) {
                proptest::prop_assert_eq!(public.tpm2b_bytes(), bytes);
            }
        }

        /// Flipping any byte of the EK gives an error or another key, never a panic.
        #[test]
        fn mutated_ek_is_total(at in 0usize..316, value in proptest::prelude::any::<u8>()) {
            let mut bytes = hex::decode(VECTOR_EK).unwrap();
            bytes[at] = value;
            let _ = Public::parse(&bytes).map(|p| p.name());
        }
    }
}
