//! Issuing device (operational) certificates from checked CSRs, under the device profile of issue #4 §2.
//!
//! Profile: subject CN = device id (nothing else in the subject), extendedKeyUsage clientAuth, keyUsage
//! digitalSignature (critical), basicConstraints CA:false (critical), a random positive 16-byte serial, AKI = the
//! issuing CA's SKI, SKI of the device key (truncated SHA-256, RFC 7093 method 1), one CRL distribution point,
//! validity from `now - 5 min` to `now +` the profile's lifetime (never past the issuing CA), signed with the CA key's
//! algorithm (P-256: ecdsa-with-SHA256, P-384: ecdsa-with-SHA384, RSA-3072: sha256WithRSAEncryption).

use rcgen::{
    CertificateParams, CrlDistributionPoint, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, KeyUsagePurpose,
};
use time::{Duration, OffsetDateTime};

use crate::ca::{BACKDATE, IssuingCa, whole_seconds};
use crate::certificate::{MAX_COMMON_NAME_CHARS, thumbprint_sha256_hex};
use crate::csr::CheckedCsr;
use crate::serial;

/// Shortest validity a profile may set, in days.
pub const MIN_VALIDITY_DAYS: u32 = 1;
/// Longest validity a profile may set, in days (the CA/Browser Forum's former TLS maximum).
pub const MAX_VALIDITY_DAYS: u32 = 397;
/// Validity when an enrollment sets none (issue #4 §2).
pub const DEFAULT_VALIDITY_DAYS: u32 = 30;
/// Shortest lifetime a profile may set in seconds (issue #20: devices that renew every few minutes, and the tests
/// of the agent's renewal). A minute leaves a renewing device at two thirds of it some 20 s to get the next one;
/// anything shorter is lost to clock skew and retries.
pub const MIN_VALIDITY_SECONDS: u32 = 60;
/// Longest lifetime in seconds: [`MAX_VALIDITY_DAYS`].
pub const MAX_VALIDITY_SECONDS: u32 = MAX_VALIDITY_DAYS * 86_400;
/// Longest CRL distribution point URL accepted.
const MAX_URL_LEN: usize = 2048;

/// Why a profile or an issuance was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IssueError {
    /// `validity_days` is outside 1-397.
    #[error("validityDays must be between {MIN_VALIDITY_DAYS} and {MAX_VALIDITY_DAYS} (got {0})")]
    InvalidValidity(u32),
    /// A lifetime in seconds outside 60 s to 397 days.
    #[error("validitySeconds must be between {MIN_VALIDITY_SECONDS} and {MAX_VALIDITY_SECONDS} (got {0})")]
    InvalidValiditySeconds(u32),
    /// The CRL URL is not an absolute http(s) URL of printable ASCII.
    #[error("the CRL distribution point must be an http:// or https:// URL of printable ASCII (got \"{0}\")")]
    InvalidCrlUrl(String),
    /// The device id cannot be a subject CN.
    #[error("the device id must have 1-{MAX_COMMON_NAME_CHARS} characters to be a certificate subject (got {0})")]
    InvalidDeviceId(usize),
    /// The issuing CA is not valid at `now`.
    #[error("{ca} is not valid at {now} (valid {not_before} to {not_after})")]
    CaNotValid {
        /// The issuing CA.
        ca: String,
        /// The time of issuance.
        now: String,
        /// Start of the CA's validity.
        not_before: String,
        /// End of the CA's validity.
        not_after: String,
    },
    /// Certificate generation failed.
    #[error("certificate generation failed: {0}")]
    Generation(String),
}

/// The device certificate profile: where the CRL is, and how long certificates live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Profile {
    crl_url: String,
    validity_seconds: u32,
}

impl Profile {
    /// A profile; `validity_days` must be 1-397 and `crl_url` an http(s) URL.
    pub fn new(crl_url: impl Into<String>, validity_days: u32) -> Result<Self, IssueError> {
        if !(MIN_VALIDITY_DAYS..=MAX_VALIDITY_DAYS).contains(&validity_days) {
            return Err(IssueError::InvalidValidity(validity_days));
        }
        Self::with_validity_seconds(crl_url, validity_days * 86_400)
    }

    /// A profile whose certificates live `validity_seconds` (60 s to 397 days); `crl_url` an http(s) URL.
    pub fn with_validity_seconds(crl_url: impl Into<String>, validity_seconds: u32) -> Result<Self, IssueError> {
        let crl_url = crl_url.into();
        if !(MIN_VALIDITY_SECONDS..=MAX_VALIDITY_SECONDS).contains(&validity_seconds) {
            return Err(IssueError::InvalidValiditySeconds(validity_seconds));
        }
        let scheme_ok = ["http://", "https://"].iter().any(|scheme| {
            crl_url.get(..scheme.len()).is_some_and(|s| s.eq_ignore_ascii_case(scheme)) && crl_url.len() > scheme.len()
        });
        if !scheme_ok || crl_url.len() > MAX_URL_LEN || !crl_url.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(IssueError::InvalidCrlUrl(crl_url.chars().take(200).collect()));
        }
        Ok(Self { crl_url, validity_seconds })
    }

    /// The CRL distribution point URL.
    pub fn crl_url(&self) -> &str {
        &self.crl_url
    }

    /// The lifetime of a certificate, in seconds.
    pub fn validity_seconds(&self) -> u32 {
        self.validity_seconds
    }
}

/// A certificate just issued.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssuedCertificate {
    /// The device certificate, DER.
    pub der: Vec<u8>,
    /// The chain for `issuedCertificateChain` (§8): the device certificate, the issuing CA, ..., the root.
    pub chain_der: Vec<Vec<u8>>,
    /// The serial number, lower-case hex.
    pub serial_hex: String,
    /// Start of validity (as in the certificate).
    pub not_before: OffsetDateTime,
    /// End of validity (as in the certificate).
    pub not_after: OffsetDateTime,
    /// SHA-256 of the DER, lower-case hex.
    pub sha256_thumbprint: String,
}

/// Issues a device certificate for a checked CSR (see the module comment for the profile). The CSR's subject is
/// not copied: the certificate's subject is `CN=<device_id>`.
pub fn issue(
    ca: &IssuingCa,
    csr: &CheckedCsr,
    device_id: &str,
    profile: &Profile,
    now: OffsetDateTime,
) -> Result<IssuedCertificate, IssueError> {
    let chars = device_id.chars().count();
    if !(1..=MAX_COMMON_NAME_CHARS).contains(&chars) {
        return Err(IssueError::InvalidDeviceId(chars));
    }
    let now = whole_seconds(now);
    if now < ca.not_before() || now >= ca.not_after() {
        return Err(IssueError::CaNotValid {
            ca: ca.describe().to_owned(),
            now: crate::certificate::rfc3339(&now),
            not_before: crate::certificate::rfc3339(&ca.not_before()),
            not_after: crate::certificate::rfc3339(&ca.not_after()),
        });
    }
    let public_key = rcgen::SubjectPublicKeyInfo::from_der(csr.public_key_der())
        .map_err(|e| IssueError::Generation(e.to_string()))?;

    let serial = serial::random();
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, device_id);
    params.serial_number = Some(serial.to_rcgen());
    params.not_before = now - BACKDATE;
    params.not_after = (now + Duration::seconds(i64::from(profile.validity_seconds))).min(ca.not_after());
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    params.crl_distribution_points = vec![CrlDistributionPoint { uris: vec![profile.crl_url.clone()] }];
    params.use_authority_key_identifier_extension = true;

    let certificate = params.signed_by(&public_key, ca.issuer()).map_err(|e| IssueError::Generation(e.to_string()))?;
    let der = certificate.der().to_vec();
    let mut chain_der = Vec::with_capacity(ca.chain_der().len() + 1);
    chain_der.push(der.clone());
    chain_der.extend(ca.chain_der().iter().cloned());
    Ok(IssuedCertificate {
        sha256_thumbprint: thumbprint_sha256_hex(&der),
        serial_hex: serial.to_hex(),
        not_before: params.not_before,
        not_after: params.not_after,
        chain_der,
        der,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ca::development_hierarchy;
    use crate::certificate::time_of;
    use crate::csr::{KeyPolicy, check_csr};
    use crate::key::KeyAlgorithm;
    use x509_parser::extensions::{DistributionPointName, GeneralName, ParsedExtension};
    use x509_parser::oid_registry::{
        OID_PKCS1_SHA256WITHRSA, OID_SIG_ECDSA_WITH_SHA256, OID_SIG_ECDSA_WITH_SHA384, OID_X509_EXT_KEY_USAGE,
    };

    fn at(unix: i64) -> OffsetDateTime {
        OffsetDateTime::from_unix_timestamp(unix).unwrap()
    }

    fn device_csr(cn: &str) -> CheckedCsr {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, cn);
        let csr = params.serialize_request(&key).unwrap();
        check_csr(csr.der(), cn, &KeyPolicy::default()).unwrap()
    }

    #[test]
    fn issued_certificates_carry_exactly_the_profile() {
        let now = at(1_750_000_000) + Duration::nanoseconds(123);
        for (algorithm, signature) in [
            (KeyAlgorithm::EcdsaP256, OID_SIG_ECDSA_WITH_SHA256),
            (KeyAlgorithm::EcdsaP384, OID_SIG_ECDSA_WITH_SHA384),
            (KeyAlgorithm::Rsa3072, OID_PKCS1_SHA256WITHRSA),
        ] {
            let (_, ca) = development_hierarchy(algorithm, now).unwrap();
            let csr = device_csr("reg-1");
            let profile = Profile::new("http://crl.example/ica.crl", 45).unwrap();
            let issued = issue(&ca, &csr, "device-1", &profile, now).unwrap();
            let cert = crate::certificate::parse(&issued.der).unwrap();

            assert_eq!(cert.signature_algorithm.algorithm, signature, "{algorithm}");
            assert_eq!(cert.subject().to_string(), "CN=device-1");
            assert_eq!(
                cert.issuer().as_raw(),
                crate::certificate::parse(ca.certificate_der()).unwrap().subject().as_raw()
            );
            assert_eq!(cert.public_key().raw, csr.public_key_der());
            let serial = cert.raw_serial();
            assert_eq!(serial.len(), 16);
            assert!(serial[0] & 0x80 == 0 && serial[0] != 0);
            assert_eq!(hex::encode(serial), issued.serial_hex);
            assert_eq!(
                crate::presented(&issued.der).unwrap().serial_hex,
                issued.serial_hex,
                "found again as presented"
            );
            assert_eq!(time_of(cert.validity().not_before), at(1_750_000_000) - Duration::minutes(5));
            assert_eq!(time_of(cert.validity().not_after), at(1_750_000_000) + Duration::days(45));
            assert_eq!(
                (issued.not_before, issued.not_after),
                (time_of(cert.validity().not_before), time_of(cert.validity().not_after))
            );
            assert_eq!(issued.sha256_thumbprint, thumbprint_sha256_hex(&issued.der));
            assert_eq!(issued.chain_der.len(), 3);
            assert_eq!(issued.chain_der[0], issued.der);
            assert_eq!(&issued.chain_der[1..], ca.chain_der());

            let mut seen = Vec::new();
            for ext in cert.extensions() {
                seen.push(crate::certificate::extension_name(&ext.oid));
                match ext.parsed_extension() {
                    ParsedExtension::KeyUsage(usage) => {
                        assert!(ext.critical);
                        assert_eq!(usage.flags, 1, "digitalSignature only");
                    }
                    ParsedExtension::ExtendedKeyUsage(eku) => {
                        assert!(eku.client_auth && !eku.server_auth && !eku.any && eku.other.is_empty());
                    }
                    ParsedExtension::BasicConstraints(bc) => assert!(ext.critical && !bc.ca),
                    ParsedExtension::AuthorityKeyIdentifier(aki) => {
                        assert_eq!(aki.key_identifier.as_ref().unwrap().0, ca.key_identifier());
                    }
                    ParsedExtension::SubjectKeyIdentifier(ski) => assert_ne!(ski.0, ca.key_identifier()),
                    ParsedExtension::CRLDistributionPoints(points) => {
                        let [point] = points.points.as_slice() else { panic!("one distribution point") };
                        let Some(DistributionPointName::FullName(names)) = &point.distribution_point else {
                            panic!("a full name")
                        };
                        assert_eq!(names.as_slice(), [GeneralName::URI("http://crl.example/ica.crl")]);
                    }
                    other => panic!("unexpected extension {other:?}"),
                }
            }
            seen.sort();
            assert_eq!(seen.len(), 6, "{seen:?}");
            assert!(cert.get_extension_unique(&OID_X509_EXT_KEY_USAGE).unwrap().is_some());
            crate::path::verify_chain(&issued.der, &issued.chain_der[1..2], ca.root_der(), now).unwrap();
        }
    }

    #[test]
    fn validity_never_outlives_the_issuing_ca() {
        let now = at(1_750_000_000);
        let (_, ca) = development_hierarchy(KeyAlgorithm::EcdsaP256, now).unwrap();
        let late = ca.not_after() - Duration::days(3);
        let issued = issue(&ca, &device_csr("d"), "d", &Profile::new("http://c/x", 30).unwrap(), late).unwrap();
        assert_eq!(issued.not_after, ca.not_after());
    }

    /// Issue #20: certificates that live minutes, for devices (and tests) that renew often; a minute at least.
    #[test]
    fn lifetimes_in_seconds_are_issued_to_the_second() {
        let now = at(1_750_000_000);
        let (_, ca) = development_hierarchy(KeyAlgorithm::EcdsaP256, now).unwrap();
        for seconds in [MIN_VALIDITY_SECONDS, 61, 300, 86_399, MAX_VALIDITY_SECONDS] {
            let profile = Profile::with_validity_seconds("http://c/x", seconds).unwrap();
            assert_eq!(profile.validity_seconds(), seconds);
            let issued = issue(&ca, &device_csr("d"), "d", &profile, now).unwrap();
            let cert = crate::certificate::parse(&issued.der).unwrap();
            assert_eq!(time_of(cert.validity().not_after), now + Duration::seconds(i64::from(seconds)));
            assert_eq!(time_of(cert.validity().not_before), now - Duration::minutes(5));
        }
        for seconds in [0, 1, 59, MAX_VALIDITY_SECONDS + 1, u32::MAX] {
            assert_eq!(
                Profile::with_validity_seconds("http://c/x", seconds).unwrap_err(),
                IssueError::InvalidValiditySeconds(seconds)
            );
        }
        assert!(matches!(Profile::with_validity_seconds("ftp://c/x", 60), Err(IssueError::InvalidCrlUrl(_))));
        // Days are the same lifetime in seconds.
        assert_eq!(
            Profile::new("http://c/x", 2).unwrap(),
            Profile::with_validity_seconds("http://c/x", 172_800).unwrap()
        );
    }

    #[test]
    fn issuance_refuses_bad_profiles_ids_and_an_invalid_ca() {
        assert_eq!(Profile::new("http://c/x", 0).unwrap_err(), IssueError::InvalidValidity(0));
        assert_eq!(Profile::new("http://c/x", 398).unwrap_err(), IssueError::InvalidValidity(398));
        assert!(Profile::new("http://c/x", 1).is_ok() && Profile::new("https://c/x", 397).is_ok());
        for url in ["ftp://c/x", "http://", "c/x", "http://c/a b", "http://c/é", ""] {
            assert!(matches!(Profile::new(url, 30), Err(IssueError::InvalidCrlUrl(_))), "{url}");
        }
        let now = at(1_750_000_000);
        let (_, ca) = development_hierarchy(KeyAlgorithm::EcdsaP256, now).unwrap();
        let profile = Profile::new("http://c/x", 30).unwrap();
        let csr = device_csr("d");
        assert_eq!(issue(&ca, &csr, "", &profile, now).unwrap_err(), IssueError::InvalidDeviceId(0));
        assert_eq!(issue(&ca, &csr, &"x".repeat(65), &profile, now).unwrap_err(), IssueError::InvalidDeviceId(65));
        let err = issue(&ca, &csr, "d", &profile, ca.not_after() + Duration::seconds(1)).unwrap_err();
        assert!(matches!(err, IssueError::CaNotValid { .. }), "{err}");
        assert!(err.to_string().contains("zerotouch development issuing CA"), "{err}");
        assert!(matches!(issue(&ca, &csr, "d", &profile, now - Duration::days(1)), Err(IssueError::CaNotValid { .. })));
    }

    #[test]
    fn an_issued_certificate_names_the_ca_that_issued_it_and_no_other() {
        let now = at(1_750_000_000);
        let (root, ca) = development_hierarchy(KeyAlgorithm::EcdsaP256, now).unwrap();
        // Same subject as `twin`, another key: only the key identifier tells them apart.
        let first = crate::ca::issuing_ca_under(&root, KeyAlgorithm::EcdsaP256, "twin", now, 30).unwrap();
        let second = crate::ca::issuing_ca_under(&root, KeyAlgorithm::EcdsaP384, "twin", now, 30).unwrap();
        let profile = Profile::new("http://c/x", 30).unwrap();
        let issued = issue(&first, &device_csr("d"), "d", &profile, now).unwrap();
        assert!(first.is_named_issuer_of(&issued.der));
        assert!(!second.is_named_issuer_of(&issued.der), "same name, another key");
        assert!(!ca.is_named_issuer_of(&issued.der), "another CA under the same root");
        // The CA's own certificate names the root, not the CA.
        assert!(!first.is_named_issuer_of(first.certificate_der()));
        for junk in [&b""[..], b"\x30\x03\x02\x01\x01", &issued.der[..issued.der.len() - 1]] {
            assert!(!first.is_named_issuer_of(junk));
        }
    }
}
