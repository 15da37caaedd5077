//! Issuing CAs and roots: the CSR an offline root signs, the checks on the chain an admin uploads, and the
//! development hierarchy (a root and an issuing intermediate made in-process).
//!
//! An [`IssuingCa`] exists only for a chain that passed every check at the time given: its first certificate
//! carries the key's public key, each certificate is signed by the next, the last is a self-signed root, each is a
//! CA allowed to sign certificates (and the issuing CA also CRLs), and all are valid.

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, Issuer, KeyUsagePurpose, SerialNumber,
};
use time::{Duration, OffsetDateTime};
use x509_parser::certificate::X509Certificate;

use crate::certificate::{self, time_of};
use crate::chain::{self, ChainError, Role, check_ca, check_critical_extensions, check_signed_by, check_validity};
use crate::csr::{self, CsrError};
use crate::key::{CaKey, KeyAlgorithm, KeyError};
use crate::pem::certificates_from_pem;
use crate::serial;

/// How far back a new certificate's validity starts, to tolerate clocks that lag behind ours.
pub(crate) const BACKDATE: Duration = Duration::minutes(5);
/// Validity of the development root.
pub const DEVELOPMENT_ROOT_DAYS: u32 = 3650;
/// Validity of the development issuing CA.
pub const DEVELOPMENT_ISSUING_CA_DAYS: u32 = 1825;

/// Why an issuing CA (or a root) could not be set up.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CaError {
    /// No certificate was given.
    #[error("the certificate chain is empty")]
    EmptyChain,
    /// The PEM text holds no certificate, or a block that is not one.
    #[error("the certificate chain is not PEM certificates: {0}")]
    NotPem(String),
    /// The first certificate does not carry the CA key's public key.
    #[error("the first certificate of the chain ({certificate}) is not for this CA key")]
    KeyMismatch {
        /// The first certificate.
        certificate: String,
    },
    /// A certificate is followed by one that is not its issuer.
    #[error("{certificate} was not issued by the next certificate in the chain, {next}; order the chain leaf first")]
    OutOfOrder {
        /// The certificate.
        certificate: String,
        /// The one that follows it.
        next: String,
    },
    /// The chain does not end in a self-signed root.
    #[error("the chain must end with a self-signed root certificate; {certificate} is not self-signed")]
    NoRoot {
        /// The last certificate.
        certificate: String,
    },
    /// The issuing CA certificate may not sign CRLs.
    #[error("{certificate} may not sign CRLs (its keyUsage lacks cRLSign)")]
    NoCrlSign {
        /// The issuing CA certificate.
        certificate: String,
    },
    /// The subject name cannot be written back exactly (multi-valued RDNs, repeated or unusual attributes), so
    /// issued certificates would not chain to it.
    #[error("the subject name of {certificate} cannot be reproduced exactly in issued certificates")]
    NameNotReproducible {
        /// The certificate.
        certificate: String,
    },
    /// A chain check failed (validity, CA flags, signatures, malformed certificates).
    #[error(transparent)]
    Chain(#[from] ChainError),
    /// A CSR to be signed by a root was refused.
    #[error(transparent)]
    Csr(#[from] CsrError),
    /// A key problem.
    #[error(transparent)]
    Key(#[from] KeyError),
    /// The validity requested is not positive.
    #[error("validity must be at least one day (got {0})")]
    InvalidValidity(u32),
    /// The common name is empty or longer than 64 characters.
    #[error("a CA common name must have 1-64 characters (got {0})")]
    InvalidCommonName(usize),
    /// Certificate generation failed.
    #[error("certificate generation failed: {0}")]
    Generation(String),
}

fn generation(e: rcgen::Error) -> CaError {
    CaError::Generation(e.to_string())
}

fn ca_name(common_name: &str) -> Result<DistinguishedName, CaError> {
    let chars = common_name.chars().count();
    if !(1..=certificate::MAX_COMMON_NAME_CHARS).contains(&chars) {
        return Err(CaError::InvalidCommonName(chars));
    }
    let mut name = DistinguishedName::new();
    name.push(DnType::CommonName, common_name);
    Ok(name)
}

/// The parameters of a CA certificate: `pathLen` as given, may sign certificates and CRLs.
fn ca_params(name: DistinguishedName, path_len: Option<u8>) -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name = name;
    params.is_ca = IsCa::Ca(path_len.map_or(BasicConstraints::Unconstrained, BasicConstraints::Constrained));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    params
}

/// A CSR (PEM PKCS#10) for an issuing CA key, for an offline root to sign. It requests `basicConstraints` CA:true
/// with `pathLen` 0 and key usage `keyCertSign`, `cRLSign`, `digitalSignature`.
pub fn ca_csr(key: &CaKey, common_name: &str) -> Result<String, CaError> {
    let params = ca_params(ca_name(common_name)?, Some(0));
    params.serialize_request(key).and_then(|csr| csr.pem()).map_err(generation)
}

/// Rebuilds an rcgen issuer from a CA certificate, and checks that it writes the certificate's subject name back
/// byte for byte (rcgen re-encodes names; a name it cannot reproduce would break every issued chain).
fn issuer_for(
    cert_der: &[u8],
    cert: &X509Certificate<'_>,
    name: &str,
    key: CaKey,
) -> Result<Issuer<'static, CaKey>, CaError> {
    let not_reproducible = || CaError::NameNotReproducible { certificate: name.to_owned() };
    if cert.subject().iter().any(|rdn| rdn.iter().count() != 1) {
        return Err(not_reproducible());
    }
    let issuer = Issuer::from_ca_cert_der(&cert_der.into(), key).map_err(|_| not_reproducible())?;
    let mut probe = CertificateParams::default();
    probe.serial_number = Some(SerialNumber::from_slice(&[1]));
    let probe = probe.signed_by(issuer.key(), &issuer).map_err(generation)?;
    let probe = certificate::parse(probe.der()).map_err(CaError::Generation)?;
    if probe.issuer().as_raw() != cert.subject().as_raw() {
        return Err(not_reproducible());
    }
    Ok(issuer)
}

/// The key's SubjectPublicKeyInfo matches the certificate's.
fn key_matches(key: &CaKey, cert: &X509Certificate<'_>) -> bool {
    key.public_key_der() == cert.public_key().raw
}

/// An issuing CA ready to issue: its key and its checked chain (issuing CA first, root last).
pub struct IssuingCa {
    issuer: Issuer<'static, CaKey>,
    chain_der: Vec<Vec<u8>>,
    subject: String,
    subject_der: Vec<u8>,
    key_identifier: Vec<u8>,
    not_before: OffsetDateTime,
    not_after: OffsetDateTime,
}

impl std::fmt::Debug for IssuingCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IssuingCa")
            .field("subject", &self.subject)
            .field("key", self.issuer.key())
            .field("chain_len", &self.chain_der.len())
            .field("not_after", &self.not_after)
            .finish()
    }
}

impl IssuingCa {
    /// Checks a chain for a key and makes the issuing CA (see the module comment for the checks). `chain` is DER,
    /// the issuing CA's certificate first, the self-signed root last.
    pub fn new(key: CaKey, chain: &[Vec<u8>], now: OffsetDateTime) -> Result<Self, CaError> {
        if chain.is_empty() {
            return Err(CaError::EmptyChain);
        }
        let certs = chain
            .iter()
            .enumerate()
            .map(|(i, der)| chain::parse_as(der, format!("certificate {} of the chain", i + 1)))
            .collect::<Result<Vec<_>, _>>()?;
        let names: Vec<String> = certs
            .iter()
            .enumerate()
            .map(|(i, cert)| chain::describe(if i == 0 { Role::IssuingCa } else { Role::Superior }, cert))
            .collect();
        let (first, first_name) = (&certs[0], &names[0]);
        if !key_matches(&key, first) {
            return Err(CaError::KeyMismatch { certificate: first_name.clone() });
        }
        for (i, cert) in certs.iter().enumerate() {
            check_critical_extensions(cert, &names[i])?;
            check_ca(cert, &names[i], i)?;
            check_validity(cert, &names[i], now)?;
            let (parent, parent_name) = match certs.get(i + 1) {
                Some(parent) => (parent, &names[i + 1]),
                None if chain::names_issuer(cert, cert) => (cert, &names[i]),
                None => return Err(CaError::NoRoot { certificate: names[i].clone() }),
            };
            if !chain::names_issuer(cert, parent) {
                return Err(CaError::OutOfOrder { certificate: names[i].clone(), next: parent_name.clone() });
            }
            check_signed_by(cert, &names[i], parent, parent_name)?;
        }
        if first.key_usage().ok().flatten().is_some_and(|usage| !usage.value.crl_sign()) {
            return Err(CaError::NoCrlSign { certificate: first_name.clone() });
        }
        let issuer = issuer_for(&chain[0], first, first_name, key)?;
        let key_identifier =
            match first.get_extension_unique(&x509_parser::oid_registry::OID_X509_EXT_SUBJECT_KEY_IDENTIFIER) {
                Ok(Some(ext)) => match ext.parsed_extension() {
                    x509_parser::extensions::ParsedExtension::SubjectKeyIdentifier(id) => id.0.to_vec(),
                    _ => Vec::new(),
                },
                _ => Vec::new(),
            };
        let key_identifier = if key_identifier.is_empty() {
            CertificateParams::default().key_identifier(issuer.key())
        } else {
            key_identifier
        };
        Ok(Self {
            subject: first_name.clone(),
            subject_der: first.subject().as_raw().to_vec(),
            key_identifier,
            not_before: time_of(first.validity().not_before),
            not_after: time_of(first.validity().not_after),
            chain_der: chain.to_vec(),
            issuer,
        })
    }

    /// As [`IssuingCa::new`], with the chain as PEM certificates (issuing CA first, root last).
    pub fn from_pem_chain(key: CaKey, pem: &str, now: OffsetDateTime) -> Result<Self, CaError> {
        let chain = certificates_from_pem(pem).map_err(CaError::NotPem)?;
        Self::new(key, &chain, now)
    }

    /// The chain, DER: the issuing CA's certificate first, the root last.
    pub fn chain_der(&self) -> &[Vec<u8>] {
        &self.chain_der
    }

    /// The issuing CA's own certificate, DER.
    pub fn certificate_der(&self) -> &[u8] {
        self.chain_der.first().map_or(&[], Vec::as_slice)
    }

    /// The root certificate (last of the chain), DER.
    pub fn root_der(&self) -> &[u8] {
        self.chain_der.last().map_or(&[], Vec::as_slice)
    }

    /// The CA key's type (and so the signature algorithm of what this CA signs).
    pub fn key_algorithm(&self) -> KeyAlgorithm {
        self.issuer.key().algorithm()
    }

    /// The CA key (to store it encrypted; it never shows the clear key).
    pub fn key(&self) -> &CaKey {
        self.issuer.key()
    }

    /// Start of the issuing CA certificate's validity.
    pub fn not_before(&self) -> OffsetDateTime {
        self.not_before
    }

    /// End of the issuing CA certificate's validity; no certificate it issues outlives it.
    pub fn not_after(&self) -> OffsetDateTime {
        self.not_after
    }

    /// The issuing CA's subject key identifier (what issued certificates and CRLs carry as AKI).
    pub fn key_identifier(&self) -> &[u8] {
        &self.key_identifier
    }

    /// Whether the certificate `der` names this CA as its issuer: its issuer is this CA's subject, byte for byte,
    /// and its authority key identifier, when it has one, is this CA's key identifier. A match of names, not a
    /// signature check: it finds which chain goes with a certificate issued here, it does not make one trusted.
    pub fn is_named_issuer_of(&self, der: &[u8]) -> bool {
        let Ok(cert) = certificate::parse(der) else { return false };
        cert.issuer().as_raw() == self.subject_der.as_slice()
            && crate::path::authority_key_id(&cert).is_none_or(|id| id == self.key_identifier.as_slice())
    }

    /// "the issuing CA certificate \"CN=...\"", for messages.
    pub(crate) fn describe(&self) -> &str {
        &self.subject
    }

    /// The rcgen issuer (name, key identifier, key).
    pub(crate) fn issuer(&self) -> &Issuer<'static, CaKey> {
        &self.issuer
    }
}

/// A root CA: its key and self-signed certificate. Signs issuing CA certificates (development install, tests).
pub struct RootCa {
    issuer: Issuer<'static, CaKey>,
    certificate_der: Vec<u8>,
    not_after: OffsetDateTime,
}

impl std::fmt::Debug for RootCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RootCa").field("key", self.issuer.key()).field("not_after", &self.not_after).finish()
    }
}

impl RootCa {
    /// Generates a root: a new key and a self-signed CA certificate valid from `now - 5 min` for `validity_days`.
    pub fn generate(
        algorithm: KeyAlgorithm,
        common_name: &str,
        now: OffsetDateTime,
        validity_days: u32,
    ) -> Result<Self, CaError> {
        if validity_days == 0 {
            return Err(CaError::InvalidValidity(validity_days));
        }
        let key = CaKey::generate(algorithm)?;
        let mut params = ca_params(ca_name(common_name)?, None);
        let now = whole_seconds(now);
        params.not_before = now - BACKDATE;
        params.not_after = now + Duration::days(i64::from(validity_days));
        params.serial_number = Some(serial::random().to_rcgen());
        let cert = params.self_signed(&key).map_err(generation)?;
        Self::from_parts(key, cert.der().to_vec(), now)
    }

    /// A root from its key and certificate, checked: self-signed, the key's, a CA, valid at `now`.
    pub fn from_parts(key: CaKey, certificate_der: Vec<u8>, now: OffsetDateTime) -> Result<Self, CaError> {
        let cert = chain::parse_as(&certificate_der, "the root certificate".to_owned())?;
        let name = chain::describe(Role::Superior, &cert);
        if !key_matches(&key, &cert) {
            return Err(CaError::KeyMismatch { certificate: name });
        }
        if !chain::names_issuer(&cert, &cert) {
            return Err(CaError::NoRoot { certificate: name });
        }
        check_signed_by(&cert, &name, &cert, &name)?;
        check_ca(&cert, &name, 0)?;
        check_validity(&cert, &name, now)?;
        let issuer = issuer_for(&certificate_der, &cert, &name, key)?;
        let not_after = time_of(cert.validity().not_after);
        Ok(Self { issuer, certificate_der, not_after })
    }

    /// The root's self-signed certificate, DER.
    pub fn certificate_der(&self) -> &[u8] {
        &self.certificate_der
    }

    /// The root key (to store it encrypted).
    pub fn key(&self) -> &CaKey {
        self.issuer.key()
    }

    /// Signs an issuing CA certificate for a CA CSR (as made by [`ca_csr`]; DER or PEM): subject CN from the CSR,
    /// CA:true with `pathLen` 0, `keyCertSign`/`cRLSign`/`digitalSignature`, valid from `now - 5 min` for
    /// `validity_days` (never past the root). The CSR's signature must verify.
    pub fn sign_ca_csr(&self, csr: &[u8], now: OffsetDateTime, validity_days: u32) -> Result<Vec<u8>, CaError> {
        let request = csr::parse_ca_csr(csr)?;
        let public_key =
            rcgen::SubjectPublicKeyInfo::from_der(&request.spki_der).map_err(|e| CaError::Generation(e.to_string()))?;
        self.sign_ca(&public_key, &request.common_name, now, validity_days)
    }

    fn sign_ca(
        &self,
        public_key: &impl rcgen::PublicKeyData,
        common_name: &str,
        now: OffsetDateTime,
        validity_days: u32,
    ) -> Result<Vec<u8>, CaError> {
        if validity_days == 0 {
            return Err(CaError::InvalidValidity(validity_days));
        }
        let mut params = ca_params(ca_name(common_name)?, Some(0));
        let now = whole_seconds(now);
        params.not_before = now - BACKDATE;
        params.not_after = (now + Duration::days(i64::from(validity_days))).min(self.not_after);
        params.serial_number = Some(serial::random().to_rcgen());
        params.use_authority_key_identifier_extension = true;
        Ok(params.signed_by(public_key, &self.issuer).map_err(generation)?.der().to_vec())
    }
}

/// The development hierarchy: a new root (`DEVELOPMENT_ROOT_DAYS`) and a new issuing CA under it
/// (`DEVELOPMENT_ISSUING_CA_DAYS`), both with keys of `algorithm`. The root's key stays usable (to sign the next
/// issuing CA); store both keys encrypted.
pub fn development_hierarchy(algorithm: KeyAlgorithm, now: OffsetDateTime) -> Result<(RootCa, IssuingCa), CaError> {
    let root = RootCa::generate(algorithm, "zerotouch development root CA", now, DEVELOPMENT_ROOT_DAYS)?;
    let issuing =
        issuing_ca_under(&root, algorithm, "zerotouch development issuing CA", now, DEVELOPMENT_ISSUING_CA_DAYS)?;
    Ok((root, issuing))
}

/// A new issuing CA (new key of `algorithm`) signed by `root`.
pub fn issuing_ca_under(
    root: &RootCa,
    algorithm: KeyAlgorithm,
    common_name: &str,
    now: OffsetDateTime,
    validity_days: u32,
) -> Result<IssuingCa, CaError> {
    let key = CaKey::generate(algorithm)?;
    let cert = root.sign_ca(&key, common_name, now, validity_days)?;
    IssuingCa::new(key, &[cert, root.certificate_der.clone()], now)
}

/// `now` without its sub-second part (X.509 times have whole seconds; what we report must equal what we sign).
pub(crate) fn whole_seconds(now: OffsetDateTime) -> OffsetDateTime {
    now.replace_nanosecond(0).unwrap_or(now)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(unix: i64) -> OffsetDateTime {
        OffsetDateTime::from_unix_timestamp(unix).unwrap()
    }

    #[test]
    fn the_development_hierarchy_is_a_root_and_a_pathlen_0_issuing_ca() {
        let now = at(1_750_000_000);
        let (root, ca) = development_hierarchy(KeyAlgorithm::EcdsaP256, now).unwrap();
        assert_eq!(ca.chain_der().len(), 2);
        assert_eq!(ca.root_der(), root.certificate_der());
        let ica = certificate::parse(ca.certificate_der()).unwrap();
        let bc = ica.basic_constraints().unwrap().unwrap();
        assert!(bc.critical && bc.value.ca && bc.value.path_len_constraint == Some(0));
        let usage = ica.key_usage().unwrap().unwrap().value;
        assert!(usage.key_cert_sign() && usage.crl_sign());
        assert_eq!(ca.not_after(), now + Duration::days(i64::from(DEVELOPMENT_ISSUING_CA_DAYS)));
        let root_cert = certificate::parse(root.certificate_der()).unwrap();
        assert_eq!(time_of(root_cert.validity().not_after), now + Duration::days(3650));
        // The root key still signs: a second issuing CA under the same root.
        let second = issuing_ca_under(&root, KeyAlgorithm::EcdsaP384, "second", now, 10).unwrap();
        assert_eq!(second.root_der(), root.certificate_der());
        assert_eq!(second.key_algorithm(), KeyAlgorithm::EcdsaP384);
    }

    #[test]
    fn a_ca_csr_signed_by_a_root_becomes_an_issuing_ca_and_mistakes_are_refused() {
        let now = at(1_750_000_000);
        let root = RootCa::generate(KeyAlgorithm::EcdsaP384, "root", now, 100).unwrap();
        let key = CaKey::generate(KeyAlgorithm::Rsa3072).unwrap();
        let csr = ca_csr(&key, "Issuing CA").unwrap();
        assert!(csr.starts_with("-----BEGIN CERTIFICATE REQUEST-----"));
        let cert = root.sign_ca_csr(csr.as_bytes(), now, 1000).unwrap();
        // Never past the root.
        let parsed = certificate::parse(&cert).unwrap();
        assert_eq!(time_of(parsed.validity().not_after), now + Duration::days(100));
        let chain = vec![cert.clone(), root.certificate_der().to_vec()];
        let ca = IssuingCa::new(key, &chain, now).unwrap();
        assert_eq!(ca.key_algorithm(), KeyAlgorithm::Rsa3072);
        assert!(format!("{ca:?}").contains("CaKey(RSA-3072, ..)"));

        let reversed = vec![root.certificate_der().to_vec(), cert.clone()];
        let other = CaKey::generate(KeyAlgorithm::EcdsaP384).unwrap();
        assert!(matches!(IssuingCa::new(other, &reversed, now), Err(CaError::KeyMismatch { .. })));
        assert!(matches!(ca_csr(ca.key(), ""), Err(CaError::InvalidCommonName(0))));
        assert!(matches!(root.sign_ca_csr(b"garbage", now, 10), Err(CaError::Csr(CsrError::Malformed(_)))));
        assert!(matches!(root.sign_ca_csr(csr.as_bytes(), now, 0), Err(CaError::InvalidValidity(0))));
        let err = IssuingCa::new(CaKey::generate(KeyAlgorithm::EcdsaP256).unwrap(), &[vec![1, 2]], now).unwrap_err();
        assert!(err.to_string().contains("certificate 1 of the chain"), "{err}");
    }

    #[test]
    fn a_root_is_checked_against_its_key() {
        let now = at(1_750_000_000);
        let root = RootCa::generate(KeyAlgorithm::EcdsaP256, "root", now, 10).unwrap();
        let other = CaKey::generate(KeyAlgorithm::EcdsaP256).unwrap();
        let err = RootCa::from_parts(other, root.certificate_der().to_vec(), now).unwrap_err();
        assert!(matches!(err, CaError::KeyMismatch { .. }));
        let err = RootCa::generate(KeyAlgorithm::EcdsaP256, "root", now, 0).unwrap_err();
        assert_eq!(err, CaError::InvalidValidity(0));
        let later = now + Duration::days(11);
        let pem = root.key().to_encrypted_pem_with_iterations(&crate::key::Passphrase::new("p").unwrap(), 1).unwrap();
        let key = CaKey::from_encrypted_pem(&pem, &crate::key::Passphrase::new("p").unwrap()).unwrap();
        let err = RootCa::from_parts(key, root.certificate_der().to_vec(), later).unwrap_err();
        assert!(matches!(err, CaError::Chain(ChainError::Expired { .. })), "{err}");
    }
}
