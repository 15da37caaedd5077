//! CA private keys: generated in-process, kept only in aws-lc (which wipes them) and in zeroized buffers, stored
//! only as encrypted PKCS#8.
//!
//! The clear key never leaves this crate: callers get an encrypted PEM ([`CaKey::to_encrypted_pem`]), the public
//! key, and signatures made through rcgen's [`rcgen::SigningKey`] (implemented here, so rcgen never holds a copy).

use aws_lc_rs::cipher::{
    AES_256, DecryptionContext, EncryptionContext, PaddedBlockDecryptingKey, PaddedBlockEncryptingKey, UnboundCipherKey,
};
use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::rsa::KeySize;
use aws_lc_rs::signature::{
    ECDSA_P256_SHA256_ASN1_SIGNING, ECDSA_P384_SHA384_ASN1_SIGNING, EcdsaKeyPair, KeyPair, RSA_PKCS1_SHA256, RsaKeyPair,
};
use pkcs8::der::Decode;
use pkcs8::pkcs5::pbes2;
use pkcs8::{EncryptedPrivateKeyInfo, LineEnding, PrivateKeyInfo};
use rand::RngCore;
use zeroize::Zeroizing;

/// PBKDF2-HMAC-SHA256 iterations for keys we encrypt (OWASP's 2023 figure for PBKDF2-HMAC-SHA256).
pub const PBKDF2_ITERATIONS: u32 = 600_000;

/// The PEM label of an encrypted PKCS#8 private key (RFC 7468 §11).
const ENCRYPTED_LABEL: &str = "ENCRYPTED PRIVATE KEY";
/// The PEM label of a clear PKCS#8 private key (RFC 7468 §10).
const CLEAR_LABEL: &str = "PRIVATE KEY";

/// OID of `id-ecPublicKey` (RFC 5480).
const OID_EC_PUBLIC_KEY: &str = "1.2.840.10045.2.1";
/// OID of the P-256 curve (`prime256v1`, RFC 5480).
const OID_P256: &str = "1.2.840.10045.3.1.7";
/// OID of the P-384 curve (`secp384r1`, RFC 5480).
const OID_P384: &str = "1.3.132.0.34";
/// OID of `rsaEncryption` (RFC 8017).
const OID_RSA: &str = "1.2.840.113549.1.1.1";

/// The key types a CA key may have.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KeyAlgorithm {
    /// ECDSA on P-256; signs with ecdsa-with-SHA256.
    EcdsaP256,
    /// ECDSA on P-384; signs with ecdsa-with-SHA384.
    EcdsaP384,
    /// RSA with a 3072-bit modulus; signs with sha256WithRSAEncryption (PKCS#1 v1.5).
    Rsa3072,
}

impl KeyAlgorithm {
    /// Every algorithm, in the order the API lists them.
    pub const ALL: [KeyAlgorithm; 3] = [Self::EcdsaP256, Self::EcdsaP384, Self::Rsa3072];

    /// The name used in the API and the database (`ecdsaP256`, `ecdsaP384`, `rsa3072`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::EcdsaP256 => "ecdsaP256",
            Self::EcdsaP384 => "ecdsaP384",
            Self::Rsa3072 => "rsa3072",
        }
    }

    /// Parses [`KeyAlgorithm::as_str`].
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|a| a.as_str() == name)
    }

    /// The rcgen signature algorithm a key of this type signs with.
    pub(crate) fn signature_algorithm(self) -> &'static rcgen::SignatureAlgorithm {
        match self {
            Self::EcdsaP256 => &rcgen::PKCS_ECDSA_P256_SHA256,
            Self::EcdsaP384 => &rcgen::PKCS_ECDSA_P384_SHA384,
            Self::Rsa3072 => &rcgen::PKCS_RSA_SHA256,
        }
    }
}

impl std::fmt::Display for KeyAlgorithm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::EcdsaP256 => "ECDSA P-256",
            Self::EcdsaP384 => "ECDSA P-384",
            Self::Rsa3072 => "RSA-3072",
        })
    }
}

/// The passphrase that encrypts CA keys at rest. `Debug` is redacted; wiped on drop.
#[derive(Clone)]
pub struct Passphrase(Zeroizing<String>);

impl Passphrase {
    /// Wraps a passphrase (as read from a file or the environment; surrounding white space is the caller's to
    /// trim). An empty passphrase is refused.
    pub fn new(text: impl Into<String>) -> Result<Self, KeyError> {
        let text = Zeroizing::new(text.into());
        if text.is_empty() {
            return Err(KeyError::EmptyPassphrase);
        }
        Ok(Self(text))
    }

    /// A fresh random passphrase (32 random bytes as 64 hex digits), for the development install.
    pub fn generate() -> Self {
        let mut bytes = Zeroizing::new([0u8; 32]);
        rand::rng().fill_bytes(bytes.as_mut());
        Self(Zeroizing::new(hex::encode(bytes.as_ref())))
    }

    /// The passphrase text. Handle with care: this is the secret.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Passphrase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Passphrase(..)")
    }
}

/// Why a CA key could not be generated, loaded or used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// The passphrase is empty.
    #[error("the key passphrase is empty")]
    EmptyPassphrase,
    /// The text is not a PEM block labelled `ENCRYPTED PRIVATE KEY` (or `PRIVATE KEY` where a clear key is read).
    #[error("the key is not a PEM \"{expected}\" block")]
    NotPem {
        /// The label that was expected.
        expected: &'static str,
    },
    /// The encrypted key structure could not be parsed.
    #[error("the encrypted key is malformed: {0}")]
    Malformed(String),
    /// Decryption failed: the passphrase is wrong (or the file was damaged).
    #[error("the key could not be decrypted: wrong passphrase, or the key file is damaged")]
    WrongPassphrase,
    /// The key is of a type a CA key may not have.
    #[error("unsupported CA key type: {0} (allowed: ECDSA P-256, ECDSA P-384, RSA-3072)")]
    Unsupported(String),
    /// The cryptographic library refused an operation (key generation, signing, encryption).
    #[error("cryptographic operation failed: {0}")]
    Crypto(&'static str),
}

/// The most PBKDF2 iterations a key file may ask for (bounds the work a damaged or hostile file can cause).
const MAX_PBKDF2_ITERATIONS: u32 = 10_000_000;

/// The AES-256 key PBKDF2-HMAC-SHA256 derives from the passphrase (aws-lc, fast even in debug builds).
fn pbkdf2_key(params: &pbes2::Parameters<'_>, passphrase: &Passphrase) -> Result<Zeroizing<[u8; 32]>, KeyError> {
    let unsupported =
        || KeyError::Unsupported("key encryption other than PBES2 PBKDF2-HMAC-SHA256 with AES-256-CBC".to_owned());
    let pbes2::Kdf::Pbkdf2(kdf) = &params.kdf else {
        return Err(unsupported());
    };
    if kdf.prf != pbes2::Pbkdf2Prf::HmacWithSha256 || kdf.key_length.is_some_and(|len| len != 32) {
        return Err(unsupported());
    }
    let iterations =
        std::num::NonZeroU32::new(kdf.iteration_count).filter(|n| n.get() <= MAX_PBKDF2_ITERATIONS).ok_or_else(
            || KeyError::Malformed(format!("PBKDF2 iteration count {} is out of range", kdf.iteration_count)),
        )?;
    let mut key = Zeroizing::new([0u8; 32]);
    aws_lc_rs::pbkdf2::derive(
        aws_lc_rs::pbkdf2::PBKDF2_HMAC_SHA256,
        iterations,
        kdf.salt,
        passphrase.expose().as_bytes(),
        key.as_mut(),
    );
    Ok(key)
}

/// Decrypts the PKCS#8 inside a PBES2 (PBKDF2-HMAC-SHA256, AES-256-CBC) `EncryptedPrivateKeyInfo`.
fn pbes2_decrypt(info: &EncryptedPrivateKeyInfo<'_>, passphrase: &Passphrase) -> Result<Zeroizing<Vec<u8>>, KeyError> {
    let Some(params) = info.encryption_algorithm.pbes2() else {
        return Err(KeyError::Unsupported("key encryption other than PBES2".to_owned()));
    };
    let pbes2::EncryptionScheme::Aes256Cbc { iv } = params.encryption else {
        return Err(KeyError::Unsupported("key encryption other than AES-256-CBC".to_owned()));
    };
    let key = pbkdf2_key(params, passphrase)?;
    let cipher = UnboundCipherKey::new(&AES_256, key.as_ref())
        .and_then(PaddedBlockDecryptingKey::cbc_pkcs7)
        .map_err(|_| KeyError::Crypto("AES key setup failed"))?;
    let mut data = Zeroizing::new(info.encrypted_data.to_vec());
    let clear =
        cipher.decrypt(&mut data, DecryptionContext::Iv128((*iv).into())).map_err(|_| KeyError::WrongPassphrase)?;
    Ok(Zeroizing::new(clear.to_vec()))
}

/// The signing half of a CA key.
enum Signer {
    Ecdsa(EcdsaKeyPair),
    Rsa(RsaKeyPair),
}

/// A CA private key. `Debug` shows only the algorithm; the clear PKCS#8 is zeroized on drop (aws-lc wipes its own
/// copy).
pub struct CaKey {
    algorithm: KeyAlgorithm,
    signer: Signer,
    /// The clear PKCS#8 DER, kept only to encrypt it again for export.
    pkcs8: Zeroizing<Vec<u8>>,
}

impl std::fmt::Debug for CaKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CaKey({}, ..)", self.algorithm)
    }
}

impl CaKey {
    /// Generates a fresh key of the given type.
    pub fn generate(algorithm: KeyAlgorithm) -> Result<Self, KeyError> {
        let pkcs8 = match algorithm {
            KeyAlgorithm::EcdsaP256 | KeyAlgorithm::EcdsaP384 => {
                let signing = match algorithm {
                    KeyAlgorithm::EcdsaP384 => &ECDSA_P384_SHA384_ASN1_SIGNING,
                    _ => &ECDSA_P256_SHA256_ASN1_SIGNING,
                };
                let document = EcdsaKeyPair::generate_pkcs8(signing, &SystemRandom::new())
                    .map_err(|_| KeyError::Crypto("ECDSA key generation failed"))?;
                Zeroizing::new(document.as_ref().to_vec())
            }
            KeyAlgorithm::Rsa3072 => {
                let pair = RsaKeyPair::generate(KeySize::Rsa3072)
                    .map_err(|_| KeyError::Crypto("RSA key generation failed"))?;
                let der = pair.as_der().map_err(|_| KeyError::Crypto("RSA key serialization failed"))?;
                Zeroizing::new(der.as_ref().to_vec())
            }
        };
        Self::from_pkcs8_der(pkcs8)
    }

    /// Loads a key from encrypted PKCS#8 PEM (`ENCRYPTED PRIVATE KEY`; PBES2 with PBKDF2-HMAC-SHA256 and
    /// AES-256-CBC), as written by [`CaKey::to_encrypted_pem`] or `openssl pkcs8 -topk8 -v2 aes-256-cbc`.
    pub fn from_encrypted_pem(pem: &str, passphrase: &Passphrase) -> Result<Self, KeyError> {
        let (label, document) =
            pkcs8::Document::from_pem(pem.trim()).map_err(|_| KeyError::NotPem { expected: ENCRYPTED_LABEL })?;
        if label != ENCRYPTED_LABEL {
            return Err(KeyError::NotPem { expected: ENCRYPTED_LABEL });
        }
        let encrypted =
            EncryptedPrivateKeyInfo::from_der(document.as_bytes()).map_err(|e| KeyError::Malformed(e.to_string()))?;
        let clear = pbes2_decrypt(&encrypted, passphrase)?;
        // A wrong passphrase yields valid CBC padding about once in 256 tries; the structure check then fails.
        PrivateKeyInfo::from_der(&clear).map_err(|_| KeyError::WrongPassphrase)?;
        Self::from_pkcs8_der(clear)
    }

    /// Loads a key from clear PKCS#8 PEM (`PRIVATE KEY`). Only for taking over a key that was stored in clear
    /// before (the development root of earlier versions); write it back with [`CaKey::to_encrypted_pem`].
    pub fn from_unencrypted_pem(pem: &str) -> Result<Self, KeyError> {
        let (label, document) =
            pkcs8::SecretDocument::from_pem(pem.trim()).map_err(|_| KeyError::NotPem { expected: CLEAR_LABEL })?;
        if label != CLEAR_LABEL {
            return Err(KeyError::NotPem { expected: CLEAR_LABEL });
        }
        Self::from_pkcs8_der(Zeroizing::new(document.as_bytes().to_vec()))
    }

    /// The key as encrypted PKCS#8 PEM: PBES2 with PBKDF2-HMAC-SHA256 ([`PBKDF2_ITERATIONS`], 16-byte random salt)
    /// and AES-256-CBC (random IV). Readable by `openssl pkey -passin`.
    pub fn to_encrypted_pem(&self, passphrase: &Passphrase) -> Result<String, KeyError> {
        self.to_encrypted_pem_with_iterations(passphrase, PBKDF2_ITERATIONS)
    }

    /// As [`CaKey::to_encrypted_pem`] with another iteration count (tests only want it fast).
    pub(crate) fn to_encrypted_pem_with_iterations(
        &self,
        passphrase: &Passphrase,
        iterations: u32,
    ) -> Result<String, KeyError> {
        let mut salt = [0u8; 16];
        let mut iv = [0u8; 16];
        rand::rng().fill_bytes(&mut salt);
        rand::rng().fill_bytes(&mut iv);
        let params = pbes2::Parameters::pbkdf2_sha256_aes256cbc(iterations, &salt, &iv)
            .map_err(|_| KeyError::Crypto("PBES2 parameters refused"))?;
        let key = pbkdf2_key(&params, passphrase)?;
        let cipher = UnboundCipherKey::new(&AES_256, key.as_ref())
            .and_then(PaddedBlockEncryptingKey::cbc_pkcs7)
            .map_err(|_| KeyError::Crypto("AES key setup failed"))?;
        let mut data = self.pkcs8.to_vec();
        cipher
            .less_safe_encrypt(&mut data, EncryptionContext::Iv128(iv.into()))
            .map_err(|_| KeyError::Crypto("key encryption failed"))?;
        let info = EncryptedPrivateKeyInfo { encryption_algorithm: params.into(), encrypted_data: &data };
        let document = pkcs8::Document::encode_msg(&info).map_err(|e| KeyError::Malformed(e.to_string()))?;
        document.to_pem(ENCRYPTED_LABEL, LineEnding::LF).map_err(|_| KeyError::Crypto("PEM encoding failed"))
    }

    /// The clear PKCS#8 DER of the key, for sealing it at rest. Handle with care: this is the private key.
    pub fn to_pkcs8_der(&self) -> Zeroizing<Vec<u8>> {
        self.pkcs8.clone()
    }

    /// The key's type.
    pub fn algorithm(&self) -> KeyAlgorithm {
        self.algorithm
    }

    /// The DER SubjectPublicKeyInfo of the key.
    pub fn public_key_der(&self) -> Vec<u8> {
        rcgen::PublicKeyData::subject_public_key_info(self)
    }

    /// Loads a key from clear PKCS#8 DER, as [`CaKey::to_pkcs8_der`] gives it (the server seals it in the database
    /// under its data key, `crates/envelope`).
    pub fn from_pkcs8_der(pkcs8: Zeroizing<Vec<u8>>) -> Result<Self, KeyError> {
        let info = PrivateKeyInfo::from_der(&pkcs8).map_err(|e| KeyError::Malformed(e.to_string()))?;
        let oid = info.algorithm.oid.to_string();
        let curve = info.algorithm.parameters_oid().ok().map(|oid| oid.to_string());
        let (algorithm, signer) = match (oid.as_str(), curve.as_deref()) {
            (OID_EC_PUBLIC_KEY, Some(OID_P256)) => (
                KeyAlgorithm::EcdsaP256,
                Signer::Ecdsa(
                    EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &pkcs8)
                        .map_err(|e| KeyError::Malformed(e.to_string()))?,
                ),
            ),
            (OID_EC_PUBLIC_KEY, Some(OID_P384)) => (
                KeyAlgorithm::EcdsaP384,
                Signer::Ecdsa(
                    EcdsaKeyPair::from_pkcs8(&ECDSA_P384_SHA384_ASN1_SIGNING, &pkcs8)
                        .map_err(|e| KeyError::Malformed(e.to_string()))?,
                ),
            ),
            (OID_EC_PUBLIC_KEY, other) => {
                return Err(KeyError::Unsupported(format!("EC key on curve {}", other.unwrap_or("(none)"))));
            }
            (OID_RSA, _) => {
                let pair = RsaKeyPair::from_pkcs8(&pkcs8).map_err(|e| KeyError::Malformed(e.to_string()))?;
                let bits = pair.public_modulus_len() * 8;
                if bits != 3072 {
                    return Err(KeyError::Unsupported(format!("RSA-{bits}")));
                }
                (KeyAlgorithm::Rsa3072, Signer::Rsa(pair))
            }
            (other, _) => return Err(KeyError::Unsupported(format!("key algorithm {other}"))),
        };
        Ok(Self { algorithm, signer, pkcs8 })
    }
}

impl rcgen::PublicKeyData for CaKey {
    fn der_bytes(&self) -> &[u8] {
        match &self.signer {
            Signer::Ecdsa(pair) => pair.public_key().as_ref(),
            Signer::Rsa(pair) => pair.public_key().as_ref(),
        }
    }

    fn algorithm(&self) -> &'static rcgen::SignatureAlgorithm {
        self.algorithm.signature_algorithm()
    }
}

impl rcgen::SigningKey for CaKey {
    fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, rcgen::Error> {
        let rng = SystemRandom::new();
        match &self.signer {
            Signer::Ecdsa(pair) => {
                pair.sign(&rng, msg).map(|sig| sig.as_ref().to_vec()).map_err(|_| rcgen::Error::RingUnspecified)
            }
            Signer::Rsa(pair) => {
                let mut signature = vec![0u8; pair.public_modulus_len()];
                pair.sign(&RSA_PKCS1_SHA256, &rng, msg, &mut signature).map_err(|_| rcgen::Error::RingUnspecified)?;
                Ok(signature)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::SigningKey;

    fn pass(text: &str) -> Passphrase {
        Passphrase::new(text).unwrap()
    }

    #[test]
    fn every_algorithm_round_trips_through_encrypted_pem() {
        for algorithm in [KeyAlgorithm::EcdsaP256, KeyAlgorithm::EcdsaP384, KeyAlgorithm::Rsa3072] {
            let key = CaKey::generate(algorithm).unwrap();
            let pem = key.to_encrypted_pem_with_iterations(&pass("correct horse"), 1000).unwrap();
            assert!(pem.starts_with("-----BEGIN ENCRYPTED PRIVATE KEY-----\n"), "{pem}");
            let back = CaKey::from_encrypted_pem(&pem, &pass("correct horse")).unwrap();
            assert_eq!(back.algorithm(), algorithm);
            assert_eq!(back.public_key_der(), key.public_key_der());
        }
    }

    #[test]
    fn the_default_export_uses_the_full_iteration_count_and_is_salted() {
        let key = CaKey::generate(KeyAlgorithm::EcdsaP256).unwrap();
        let a = key.to_encrypted_pem(&pass("p")).unwrap();
        let b = key.to_encrypted_pem_with_iterations(&pass("p"), PBKDF2_ITERATIONS).unwrap();
        assert_ne!(a, b, "salt and IV must be random");
        let (_, doc) = pkcs8::Document::from_pem(&a).unwrap();
        let info = EncryptedPrivateKeyInfo::from_der(doc.as_bytes()).unwrap();
        let params = info.encryption_algorithm.pbes2().unwrap();
        assert_eq!(params.kdf.pbkdf2().unwrap().iteration_count, PBKDF2_ITERATIONS);
        assert!(matches!(params.encryption, pbes2::EncryptionScheme::Aes256Cbc { .. }));
    }

    #[test]
    fn a_wrong_passphrase_is_named_as_such() {
        let key = CaKey::generate(KeyAlgorithm::EcdsaP256).unwrap();
        let pem = key.to_encrypted_pem_with_iterations(&pass("right"), 1000).unwrap();
        for _ in 0..20 {
            let err = CaKey::from_encrypted_pem(&pem, &pass("wrong")).unwrap_err();
            assert_eq!(err, KeyError::WrongPassphrase);
        }
        assert!(KeyError::WrongPassphrase.to_string().contains("wrong passphrase"));
    }

    #[test]
    fn garbage_and_clear_keys_are_refused_where_an_encrypted_key_is_expected() {
        let key = CaKey::generate(KeyAlgorithm::EcdsaP256).unwrap();
        let clear =
            pkcs8::SecretDocument::try_from(key.pkcs8.as_slice()).unwrap().to_pem(CLEAR_LABEL, LineEnding::LF).unwrap();
        assert_eq!(
            CaKey::from_encrypted_pem(&clear, &pass("x")).unwrap_err(),
            KeyError::NotPem { expected: ENCRYPTED_LABEL }
        );
        assert!(matches!(CaKey::from_encrypted_pem("hello", &pass("x")), Err(KeyError::NotPem { .. })));
        let bogus = "-----BEGIN ENCRYPTED PRIVATE KEY-----\nMAA=\n-----END ENCRYPTED PRIVATE KEY-----\n";
        assert!(matches!(CaKey::from_encrypted_pem(bogus, &pass("x")), Err(KeyError::Malformed(_))));
        // The clear form is accepted only by the explicit migration path.
        assert_eq!(CaKey::from_unencrypted_pem(&clear).unwrap().public_key_der(), key.public_key_der());
    }

    #[test]
    fn empty_passphrases_are_refused_and_none_is_ever_shown() {
        assert_eq!(Passphrase::new("").unwrap_err(), KeyError::EmptyPassphrase);
        let generated = Passphrase::generate();
        assert_eq!(generated.expose().len(), 64);
        assert_eq!(format!("{generated:?}"), "Passphrase(..)");
        let key = CaKey::generate(KeyAlgorithm::EcdsaP384).unwrap();
        assert_eq!(format!("{key:?}"), "CaKey(ECDSA P-384, ..)");
    }

    #[test]
    fn signatures_verify_under_the_public_key() {
        use aws_lc_rs::signature::{ECDSA_P256_SHA256_ASN1, RSA_PKCS1_2048_8192_SHA256, UnparsedPublicKey};
        let ec = CaKey::generate(KeyAlgorithm::EcdsaP256).unwrap();
        let sig = ec.sign(b"message").unwrap();
        let public = rcgen::PublicKeyData::der_bytes(&ec).to_vec();
        UnparsedPublicKey::new(&ECDSA_P256_SHA256_ASN1, &public).verify(b"message", &sig).unwrap();
        let rsa = CaKey::generate(KeyAlgorithm::Rsa3072).unwrap();
        let sig = rsa.sign(b"message").unwrap();
        assert_eq!(sig.len(), 384);
        let public = rcgen::PublicKeyData::der_bytes(&rsa).to_vec();
        UnparsedPublicKey::new(&RSA_PKCS1_2048_8192_SHA256, &public).verify(b"message", &sig).unwrap();
    }
}
