//! The activation blob of TPM attestation (`docs/protocol/device-api.md` §3.3, every loose point pinned down in
//! `docs/protocol/tpm-activation.md`), built in software: the server needs no TPM.
//!
//! The blob carries an HMAC key that only the TPM holding the device's EK and SRK can load:
//! ```text
//! credentialBlob TPM2B_ID_OBJECT         MakeCredential to the EK, object name Name(SRK), credential = innerKey
//! secret         TPM2B_ENCRYPTED_SECRET  RSA-OAEP(EK, "IDENTITY\0", seed)
//! duplicate      TPM2B_PRIVATE           the HMAC key's sensitive area, inner wrapper AES-128-CFB(innerKey),
//!                                        outer wrapper to the SRK (KDFa from seed2 and Name(idKey))
//! encryptedSeed  TPM2B_ENCRYPTED_SECRET  RSA-OAEP(SRK, "DUPLICATE\0", seed2)
//! idKeyPublic    TPM2B_PUBLIC            KEYEDHASH, SHA-256, sign|userWithAuth|noDA, HMAC(SHA-256), empty policy
//! encUriData     TPM2B_DATA              empty, but its size is always written (the C# SDK reads it)
//! ```
//! The device runs ActivateCredential (gets innerKey), Import + Load (gets the HMAC key in its TPM) and signs its
//! SAS token with TPM2_HMAC; the server verifies that token with the key it put in the blob.

use aws_lc_rs::cipher::{AES_128, EncryptingKey, EncryptionContext, UnboundCipherKey};
use aws_lc_rs::iv::FixedLength;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use crate::kdf::kdfa;
use crate::marshal::{Reader, put_sized, sized};
use crate::public::{ALG_HMAC, ALG_KEYEDHASH, ALG_SHA256, KeyError, Public, PublicKey, attributes};

/// Size of the inner wrapper key (the credential): AES-128, which every device SDK hard-codes.
pub const INNER_KEY_BYTES: usize = 16;
/// Size of the seeds and of the HMAC key's `seedValue` (the SHA-256 digest size, which the TPM enforces).
pub const SEED_BYTES: usize = 32;
/// The HMAC key sizes a TPM accepts (measured on swtpm: 16 to 64 bytes).
pub const HMAC_KEY_BYTES: std::ops::RangeInclusive<usize> = 16..=64;
/// The attributes of the imported HMAC key: sign | userWithAuth | noDA.
pub const ID_KEY_ATTRIBUTES: u32 = attributes::SIGN | attributes::USER_WITH_AUTH | attributes::NO_DA;

type HmacSha256 = Hmac<Sha256>;

/// Why no blob could be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ActivationError {
    /// The endorsement key cannot receive a credential.
    #[error("the endorsement key {0}")]
    EndorsementKey(KeyError),
    /// The storage root key cannot receive a duplicated object.
    #[error("the storage root key {0}")]
    StorageRootKey(KeyError),
    /// The HMAC key has a size the TPM refuses.
    #[error("the HMAC key has {0} bytes; a TPM takes 16 to 64")]
    HmacKeySize(usize),
    /// RSA encryption or the random source failed (a key aws-lc-rs refuses, e.g. a modulus that is no RSA key).
    #[error("{0} failed")]
    Crypto(&'static str),
}

/// Every random input of one blob. Zeroized on drop, never printed.
pub struct ActivationSecrets {
    inner_key: Zeroizing<[u8; INNER_KEY_BYTES]>,
    seed_value: Zeroizing<[u8; SEED_BYTES]>,
    credential_seed: Zeroizing<[u8; SEED_BYTES]>,
    duplicate_seed: Zeroizing<[u8; SEED_BYTES]>,
}

impl std::fmt::Debug for ActivationSecrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ActivationSecrets(..)")
    }
}

impl ActivationSecrets {
    /// Fresh random secrets from the system's CSPRNG.
    pub fn random() -> Result<Self, ActivationError> {
        let mut secrets = Self::from_parts([0; INNER_KEY_BYTES], [0; SEED_BYTES], [0; SEED_BYTES], [0; SEED_BYTES]);
        for buffer in [
            &mut secrets.inner_key[..],
            &mut secrets.seed_value[..],
            &mut secrets.credential_seed[..],
            &mut secrets.duplicate_seed[..],
        ] {
            aws_lc_rs::rand::fill(buffer).map_err(|_| ActivationError::Crypto("the random source"))?;
        }
        Ok(secrets)
    }

    /// Given secrets: only for known-answer tests. A blob's secrets must be fresh and random
    /// ([`ActivationSecrets::random`]), or its key can be recovered.
    pub fn from_parts(
        inner_key: [u8; INNER_KEY_BYTES],
        seed_value: [u8; SEED_BYTES],
        credential_seed: [u8; SEED_BYTES],
        duplicate_seed: [u8; SEED_BYTES],
    ) -> Self {
        Self {
            inner_key: Zeroizing::new(inner_key),
            seed_value: Zeroizing::new(seed_value),
            credential_seed: Zeroizing::new(credential_seed),
            duplicate_seed: Zeroizing::new(duplicate_seed),
        }
    }
}

/// A marshalled activation blob (the base64 of which is `authenticationKey`).
#[derive(Clone, PartialEq, Eq)]
pub struct ActivationBlob(Vec<u8>);

impl std::fmt::Debug for ActivationBlob {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ActivationBlob({} bytes)", self.0.len())
    }
}

impl ActivationBlob {
    /// The bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// Standard base64, as `authenticationKey` carries it.
    pub fn to_base64(&self) -> String {
        STANDARD.encode(&self.0)
    }
}

/// The six fields of a blob, each a whole `TPM2B` (its u16 size included), as a device hands them to its TPM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ActivationParts<'a> {
    /// `TPM2B_ID_OBJECT` (ActivateCredential's credentialBlob).
    pub credential_blob: &'a [u8],
    /// `TPM2B_ENCRYPTED_SECRET` (ActivateCredential's secret).
    pub secret: &'a [u8],
    /// `TPM2B_PRIVATE` (Import's duplicate).
    pub duplicate: &'a [u8],
    /// `TPM2B_ENCRYPTED_SECRET` (Import's inSymSeed).
    pub encrypted_seed: &'a [u8],
    /// `TPM2B_PUBLIC` (Import's objectPublic).
    pub id_key_public: &'a [u8],
    /// `TPM2B_DATA`; absent in blobs that end after `idKeyPublic` (iot-identity-service tolerates that too).
    pub enc_uri_data: Option<&'a [u8]>,
}

impl<'a> ActivationParts<'a> {
    /// Splits a blob into its fields; `None` if it is not six (or five) well-formed `TPM2B`s.
    pub fn split(blob: &'a [u8]) -> Option<Self> {
        let mut r = Reader::new(blob);
        let mut next = || -> Option<&'a [u8]> {
            let before = r.rest();
            let content = r.sized().ok()?;
            Some(&before[..content.len() + 2])
        };
        let parts = Self {
            credential_blob: next()?,
            secret: next()?,
            duplicate: next()?,
            encrypted_seed: next()?,
            id_key_public: next()?,
            enc_uri_data: next(),
        };
        r.is_empty().then_some(parts)
    }
}

/// The content of a whole `TPM2B` (without its size).
pub fn content(tpm2b: &[u8]) -> &[u8] {
    tpm2b.get(2..).unwrap_or_default()
}

fn aes128_cfb(key: &[u8], data: &[u8]) -> Result<Vec<u8>, ActivationError> {
    let failed = |_| ActivationError::Crypto("AES-128-CFB");
    let key = UnboundCipherKey::new(&AES_128, key).map_err(failed)?;
    let key = EncryptingKey::cfb128(key).map_err(failed)?;
    let mut out = data.to_vec();
    // The TPM's CFB for these structures starts from an all-zero IV (Part 1 §22.4, §23.3.2).
    key.less_safe_encrypt(&mut out, EncryptionContext::Iv128(FixedLength::from([0u8; 16]))).map_err(failed)?;
    Ok(out)
}

fn hmac_sha256(key: &[u8], parts: &[&[u8]]) -> Result<Vec<u8>, ActivationError> {
    let mut mac = HmacSha256::new_from_slice(key).map_err(|_| ActivationError::Crypto("HMAC-SHA256"))?;
    for part in parts {
        mac.update(part);
    }
    Ok(mac.finalize().into_bytes().to_vec())
}

fn oaep(to: &Public, label: &[u8], seed: &[u8]) -> Result<Vec<u8>, ActivationError> {
    let PublicKey::Rsa { modulus, exponent, .. } = to.key() else {
        return Err(ActivationError::Crypto("RSA-OAEP (not an RSA key)"));
    };
    crate::rsa::oaep_encrypt(modulus, *exponent, label, seed).ok_or(ActivationError::Crypto("RSA-OAEP"))
}

fn too_large(_: crate::marshal::TooLarge) -> ActivationError {
    ActivationError::Crypto("marshalling")
}

/// The `TPMT_PUBLIC` of the HMAC key: KEYEDHASH, SHA-256, sign|userWithAuth|noDA, empty authPolicy,
/// HMAC(SHA-256), unique = SHA-256(seedValue || key) (which Import checks against the sensitive area).
pub fn id_key_public(seed_value: &[u8], hmac_key: &[u8]) -> Vec<u8> {
    let mut public = Vec::with_capacity(48);
    public.extend_from_slice(&ALG_KEYEDHASH.to_be_bytes());
    public.extend_from_slice(&ALG_SHA256.to_be_bytes());
    public.extend_from_slice(&ID_KEY_ATTRIBUTES.to_be_bytes());
    public.extend_from_slice(&0u16.to_be_bytes()); // authPolicy: empty
    public.extend_from_slice(&ALG_HMAC.to_be_bytes());
    public.extend_from_slice(&ALG_SHA256.to_be_bytes());
    let unique = Sha256::new().chain_update(seed_value).chain_update(hmac_key).finalize();
    public.extend_from_slice(&32u16.to_be_bytes());
    public.extend_from_slice(&unique);
    public
}

/// Builds a blob that delivers `hmac_key` to the TPM holding `ek` and `srk`, with fresh random secrets.
pub fn build_activation_blob(ek: &Public, srk: &Public, hmac_key: &[u8]) -> Result<ActivationBlob, ActivationError> {
    build_activation_blob_with(ek, srk, hmac_key, &ActivationSecrets::random()?)
}

/// Builds a blob with the given secrets (see [`ActivationSecrets::from_parts`]: for known-answer tests).
pub fn build_activation_blob_with(
    ek: &Public,
    srk: &Public,
    hmac_key: &[u8],
    secrets: &ActivationSecrets,
) -> Result<ActivationBlob, ActivationError> {
    ek.check_activation_key("endorsement key").map_err(ActivationError::EndorsementKey)?;
    srk.check_activation_key("storage root key").map_err(ActivationError::StorageRootKey)?;
    if !HMAC_KEY_BYTES.contains(&hmac_key.len()) {
        return Err(ActivationError::HmacKeySize(hmac_key.len()));
    }

    // The HMAC key as a duplicated object: its public area and name, and its sensitive area.
    let id_public = id_key_public(&secrets.seed_value[..], hmac_key);
    let mut id_name = ALG_SHA256.to_be_bytes().to_vec();
    id_name.extend_from_slice(&Sha256::digest(&id_public));
    let mut tpmt_sensitive = Zeroizing::new(Vec::with_capacity(72 + hmac_key.len()));
    tpmt_sensitive.extend_from_slice(&ALG_KEYEDHASH.to_be_bytes());
    put_sized(&mut tpmt_sensitive, &[]).map_err(too_large)?; // authValue: empty
    put_sized(&mut tpmt_sensitive, &secrets.seed_value[..]).map_err(too_large)?;
    put_sized(&mut tpmt_sensitive, hmac_key).map_err(too_large)?;
    let sensitive = Zeroizing::new(sized(&tpmt_sensitive).map_err(too_large)?);

    // Inner wrapper (Part 1 §23.3.2.3): integrity over the TPM2B_SENSITIVE *with* its size, then AES with innerKey.
    let inner_integrity = Sha256::new().chain_update(&sensitive[..]).chain_update(&id_name).finalize();
    let mut inner_plain = Zeroizing::new(sized(&inner_integrity).map_err(too_large)?);
    inner_plain.extend_from_slice(&sensitive);
    let enc_sensitive = aes128_cfb(&secrets.inner_key[..], &inner_plain)?;

    // Outer wrapper to the SRK (Part 1 §23.3.2.2): keys from seed2 and Name(idKey).
    let dup_sym = kdfa(&secrets.duplicate_seed[..], "STORAGE", &id_name, &[], 128);
    let dup_sensitive = aes128_cfb(&dup_sym, &enc_sensitive)?;
    let dup_hmac = kdfa(&secrets.duplicate_seed[..], "INTEGRITY", &[], &[], 256);
    let outer_hmac = hmac_sha256(&dup_hmac, &[&dup_sensitive, &id_name])?;
    let mut duplicate = sized(&outer_hmac).map_err(too_large)?;
    duplicate.extend_from_slice(&dup_sensitive);
    let encrypted_seed = oaep(srk, b"DUPLICATE\0", &secrets.duplicate_seed[..])?;

    // MakeCredential to the EK (Part 1 §24): the credential is innerKey, the object is the SRK (the activateHandle).
    let srk_name = srk.name();
    let cred_sym = kdfa(&secrets.credential_seed[..], "STORAGE", &srk_name, &[], 128);
    let identity = Zeroizing::new(sized(&secrets.inner_key[..]).map_err(too_large)?);
    let enc_identity = aes128_cfb(&cred_sym, &identity)?;
    let cred_hmac = kdfa(&secrets.credential_seed[..], "INTEGRITY", &[], &[], 256);
    let integrity = hmac_sha256(&cred_hmac, &[&enc_identity, &srk_name])?;
    let mut id_object = sized(&integrity).map_err(too_large)?;
    id_object.extend_from_slice(&enc_identity);
    let secret = oaep(ek, b"IDENTITY\0", &secrets.credential_seed[..])?;

    let mut blob = Vec::with_capacity(800);
    for field in [&id_object, &secret, &duplicate, &encrypted_seed, &id_public] {
        put_sized(&mut blob, field).map_err(too_large)?;
    }
    put_sized(&mut blob, &[]).map_err(too_large)?; // encUriData: empty, size always written
    Ok(ActivationBlob(blob))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::public::tests::{ek, srk};

    fn h(s: &str) -> Vec<u8> {
        hex::decode(s).unwrap()
    }

    fn sha(s: &str) -> [u8; 32] {
        Sha256::digest(s.as_bytes()).into()
    }

    /// The known-answer vector of `docs/protocol/tpm-activation.md`: every random input fixed as SHA-256 of a string. The
    /// vector activated on swtpm 0.7.1 (ActivateCredential, Import, Load, then TPM2_HMAC equal to the software
    /// HMAC) and was re-derived independently with tpm2-pytss. OAEP is randomized here, so fields 2 and 4 are
    /// compared by size; the swtpm end-to-end tests prove they decrypt.
    #[test]
    fn matches_the_known_answer_vector() {
        let inner: [u8; 16] = sha("kat-inner-key")[..16].try_into().unwrap();
        let secrets = ActivationSecrets::from_parts(
            inner,
            sha("kat-seed-value"),
            sha("kat-credential-seed"),
            sha("kat-duplicate-seed"),
        );
        let blob = build_activation_blob_with(&ek(), &srk(), &sha("kat-key"), &secrets).unwrap();
        assert_eq!(blob.as_bytes().len(), 766);
        assert_eq!(blob.to_base64().len(), 1024);
        let parts = ActivationParts::split(blob.as_bytes()).unwrap();
        assert_eq!(
            parts.credential_blob,
            h(
                "00340020ea709a09e7baae67a44dbd016686e44dbce700bda6702e3673c2c95493994685d06b6d89b1f8fca866fd97c031ed427fcc99"
            )
        );
        assert_eq!(parts.secret.len(), 258);
        assert_eq!(
            parts.duplicate,
            h(concat!(
                "008e002090be49827ee958b53384a613b04c39843f7c8b5ba1ec4591148744eeda5d461e0ad42658971fff0e28d80cf8df5721f83d3fbdf56ad0cb98421c8a1a",
                "eec5e5073a6960daee8ea647f88d2784a79fe1fbc3c4e8978ca99285a20d77ac8851eebb173c093d7713d31445afe18e61a591bff72e30bd98a4bf24feb5a753",
                "05320d3b8998be3dc373dda59e0c8ac4"
            ))
        );
        assert_eq!(parts.encrypted_seed.len(), 258);
        assert_eq!(
            parts.id_key_public,
            h("00300008000b0004044000000005000b0020b81c3121aaa42614f6b6e354aa9691daf9f4e4897c8bd919954058edc723ad7f")
        );
        assert_eq!(parts.enc_uri_data, Some(&[0u8, 0][..]));
        // Name(idKey) of the vector.
        let name = Sha256::digest(content(parts.id_key_public));
        assert_eq!(hex::encode(name), "ce21b2bd1a1f7ffd6c1bcb54594843d712ff34c184e251afc141ff65dcbb2322");
    }

    /// Two blobs for the same key share nothing but the public area's shape: every secret is fresh.
    #[test]
    fn random_blobs_differ() {
        let a = build_activation_blob(&ek(), &srk(), &[7; 32]).unwrap();
        let b = build_activation_blob(&ek(), &srk(), &[7; 32]).unwrap();
        let (pa, pb) = (ActivationParts::split(a.as_bytes()).unwrap(), ActivationParts::split(b.as_bytes()).unwrap());
        assert_ne!(pa.credential_blob, pb.credential_blob);
        assert_ne!(pa.duplicate, pb.duplicate);
        assert_ne!(pa.id_key_public, pb.id_key_public); // unique covers the random seedValue
        assert_eq!(format!("{:?}", ActivationSecrets::random().unwrap()), "ActivationSecrets(..)");
    }

    /// Keys the TPM would refuse are refused here, each with its reason.
    #[test]
    fn unusable_inputs_are_refused() {
        assert_eq!(build_activation_blob(&ek(), &srk(), &[1; 15]), Err(ActivationError::HmacKeySize(15)));
        assert_eq!(build_activation_blob(&ek(), &srk(), &[1; 65]), Err(ActivationError::HmacKeySize(65)));
        let mut signing = srk().tpm2b_bytes();
        signing[7] |= 0x04;
        let signing = Public::parse(&signing).unwrap();
        assert!(matches!(
            build_activation_blob(&ek(), &signing, &[1; 32]),
            Err(ActivationError::StorageRootKey(KeyError::Unsupported(_)))
        ));
        assert!(matches!(
            build_activation_blob(&signing, &srk(), &[1; 32]),
            Err(ActivationError::EndorsementKey(KeyError::Unsupported(_)))
        ));
        // A modulus of zeros parses as a TPM structure but is no RSA key.
        let mut zeros = ek().tpm2b_bytes();
        let len = zeros.len();
        zeros[len - 256..].fill(0);
        let zeros = Public::parse(&zeros).unwrap();
        assert_eq!(build_activation_blob(&zeros, &srk(), &[1; 32]), Err(ActivationError::Crypto("RSA-OAEP")));
    }

    #[test]
    fn split_refuses_what_is_not_a_blob() {
        assert_eq!(ActivationParts::split(&[]), None);
        let blob = build_activation_blob(&ek(), &srk(), &[7; 32]).unwrap();
        let bytes = blob.as_bytes();
        assert_eq!(ActivationParts::split(&bytes[..bytes.len() - 1]), None);
        let without_data = ActivationParts::split(&bytes[..bytes.len() - 2]).unwrap();
        assert_eq!(without_data.enc_uri_data, None);
    }
}
