//! The operational key, born on the device: generated here (never received), written only to the agent's 0600
//! key file, and the CSR for it built here with the registration id as its subject CN
//! (`docs/protocol/device-api.md` §8).

use anyhow::Context;
use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair};
use serde::Deserialize;
use zeroize::Zeroizing;

/// The key types the service issues to (`zerotouch_pki::check_csr`; RSA where the enrollment's policy allows it).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KeyType {
    /// ECDSA P-256 (the default).
    #[default]
    P256,
    /// ECDSA P-384.
    P384,
    /// RSA 3072 bits.
    Rsa3072,
    /// ECDSA P-256 inside the TPM (`attestation.method = "tpm"`), made by `crate::tpm_key`.
    Tpm,
}

/// A new operational key: its PKCS#8 PEM (secret: never logged, wiped on drop) and the CSR it signed.
pub struct NewKey {
    /// PKCS#8 PEM.
    pub pem: Zeroizing<String>,
    /// The CSR, DER PKCS#10, subject `CN=<registration id>`.
    pub csr_der: Vec<u8>,
}

impl std::fmt::Debug for NewKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("NewKey(..)")
    }
}

/// Generates a key of `key_type` and its CSR for `registration_id`.
pub fn generate(key_type: KeyType, registration_id: &str) -> anyhow::Result<NewKey> {
    let key = match key_type {
        KeyType::P256 => KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?,
        KeyType::P384 => KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384)?,
        KeyType::Tpm => anyhow::bail!("a TPM-resident key is made in the TPM (crate::tpm_key), not here"),
        KeyType::Rsa3072 => {
            use aws_lc_rs::encoding::AsDer;
            let rsa = aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa3072)
                .map_err(|_| anyhow::anyhow!("cannot generate an RSA-3072 key"))?;
            let pkcs8 = rsa.as_der().map_err(|_| anyhow::anyhow!("cannot encode the RSA key"))?;
            let der = rustls::pki_types::PrivatePkcs8KeyDer::from(pkcs8.as_ref().to_vec());
            KeyPair::from_pkcs8_der_and_sign_algo(&der, &rcgen::PKCS_RSA_SHA256)?
        }
    };
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, registration_id);
    let csr = params.serialize_request(&key).context("cannot build the CSR")?;
    Ok(NewKey { pem: Zeroizing::new(key.serialize_pem()), csr_der: csr.der().to_vec() })
}

#[cfg(test)]
mod tests {
    use super::*;
    use zerotouch_pki::{DeviceKeyType, KeyPolicy, check_csr};

    /// Every key type makes a CSR the service's own check takes, for the registration id as CN.
    #[test]
    fn every_key_type_makes_a_csr_the_service_accepts() {
        for (key_type, expected) in [
            (KeyType::P256, DeviceKeyType::EcdsaP256),
            (KeyType::P384, DeviceKeyType::EcdsaP384),
            (KeyType::Rsa3072, DeviceKeyType::Rsa { bits: 3072 }),
        ] {
            let key = generate(key_type, "dev-1").unwrap();
            assert!(key.pem.starts_with("-----BEGIN PRIVATE KEY-----"), "{key_type:?}");
            let checked = check_csr(&key.csr_der, "dev-1", &KeyPolicy { allow_rsa: true }).unwrap();
            assert_eq!(checked.key_type(), expected);
            assert!(check_csr(&key.csr_der, "dev-2", &KeyPolicy { allow_rsa: true }).is_err());
        }
        // Two keys are never the same.
        assert_ne!(generate(KeyType::P256, "d").unwrap().pem, generate(KeyType::P256, "d").unwrap().pem);
        assert_eq!(format!("{:?}", generate(KeyType::P256, "d").unwrap()), "NewKey(..)");
    }
}
