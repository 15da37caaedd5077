//! Reading certificates: strict DER parsing shared by every check in this crate, fingerprints, the subject CN.
//!
//! "Strict" means: no trailing bytes, no duplicate extensions, no known extension whose content fails to parse.
//! Everything else in the crate parses through [`parse`], so a malformed certificate is refused in one place.

use sha1::Digest as _;
use time::OffsetDateTime;
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::ParsedExtension;
use x509_parser::prelude::FromDer;
use x509_parser::x509::X509Name;

/// The longest subject CN accepted (X.520 `ub-common-name`; also Azure's limit for X.509 registration ids, §4).
pub const MAX_COMMON_NAME_CHARS: usize = 64;

/// Why a certificate's subject CN could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CertificateError {
    /// The bytes are not one DER X.509 certificate.
    #[error("not a valid DER X.509 certificate: {0}")]
    Malformed(String),
    /// The subject has no CN.
    #[error("the certificate's subject has no common name (CN)")]
    NoCommonName,
    /// The subject has more than one CN.
    #[error("the certificate's subject has {0} common names (CN); exactly one is required")]
    SeveralCommonNames(usize),
    /// The CN is not a text string type.
    #[error("the certificate's subject common name (CN) is not a text string")]
    CommonNameNotText,
    /// The CN is longer than [`MAX_COMMON_NAME_CHARS`].
    #[error("the certificate's subject common name (CN) has {0} characters; at most 64 are allowed")]
    CommonNameTooLong(usize),
}

/// Parses one DER certificate strictly; the error text says what is wrong.
pub(crate) fn parse(der: &[u8]) -> Result<X509Certificate<'_>, String> {
    let (rest, cert) = X509Certificate::from_der(der).map_err(|e| e.to_string())?;
    if !rest.is_empty() {
        return Err(format!("{} bytes follow the certificate", rest.len()));
    }
    cert.extensions_map().map_err(|_| "an extension appears twice".to_owned())?;
    for ext in cert.extensions() {
        if let ParsedExtension::ParseError { error } = ext.parsed_extension() {
            return Err(format!("its {} extension is malformed: {error}", extension_name(&ext.oid)));
        }
    }
    Ok(cert)
}

/// A readable name for an extension OID (`basicConstraints`, or the dotted OID when unknown).
pub(crate) fn extension_name(oid: &x509_parser::der_parser::oid::Oid<'_>) -> String {
    x509_parser::objects::oid2sn(oid, x509_parser::objects::oid_registry())
        .map(str::to_owned)
        .unwrap_or_else(|_| oid.to_id_string())
}

/// The subject's single CN, as text.
pub(crate) fn common_name(name: &X509Name<'_>) -> Result<String, CertificateError> {
    let names: Vec<_> = name.iter_common_name().collect();
    match names.as_slice() {
        [] => Err(CertificateError::NoCommonName),
        [one] => one.as_str().map(str::to_owned).map_err(|_| CertificateError::CommonNameNotText),
        several => Err(CertificateError::SeveralCommonNames(several.len())),
    }
}

/// The certificate's subject, as `CN=..., O=...` for messages.
pub(crate) fn subject_text(cert: &X509Certificate<'_>) -> String {
    cert.subject().to_string()
}

/// A point in time from a certificate, as an `OffsetDateTime`.
pub(crate) fn time_of(time: x509_parser::time::ASN1Time) -> OffsetDateTime {
    time.to_datetime()
}

/// RFC 3339 text of a time, for messages.
pub(crate) fn rfc3339(time: &OffsetDateTime) -> String {
    time.format(&time::format_description::well_known::Rfc3339).unwrap_or_else(|_| time.to_string())
}

/// The subject CN of a DER certificate: exactly one, a text string, at most 64 characters (§4: the registration
/// id of an X.509 device).
pub fn subject_cn(der: &[u8]) -> Result<String, CertificateError> {
    cn_of(&parse(der).map_err(CertificateError::Malformed)?)
}

/// [`subject_cn`] of a parsed certificate.
fn cn_of(cert: &X509Certificate<'_>) -> Result<String, CertificateError> {
    let cn = common_name(cert.subject())?;
    let chars = cn.chars().count();
    if chars > MAX_COMMON_NAME_CHARS {
        return Err(CertificateError::CommonNameTooLong(chars));
    }
    Ok(cn)
}

/// What the service reads of a certificate a device presents before it knows whose it is, from one parse: the
/// serial that finds it among the managed CA's, and the subject CN that names its registration otherwise.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PresentedCertificate {
    /// The serial number, lower-case hex of the DER integer's bytes, as the store keeps the managed CA's.
    pub serial_hex: String,
    /// The subject CN as [`subject_cn`] reads it, or why it has no usable one.
    pub subject_cn: Result<String, CertificateError>,
}

/// Reads a presented DER certificate once for its serial and its subject CN ([`PresentedCertificate`]).
pub fn presented(der: &[u8]) -> Result<PresentedCertificate, CertificateError> {
    let cert = parse(der).map_err(CertificateError::Malformed)?;
    Ok(PresentedCertificate { serial_hex: serial_of(&cert), subject_cn: cn_of(&cert) })
}

/// An RSA public key: modulus and exponent, big-endian, without leading zeros.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RsaPublicKey {
    /// The modulus.
    pub modulus: Vec<u8>,
    /// The public exponent.
    pub exponent: Vec<u8>,
}

/// The RSA public key of a DER certificate; `None` for other key types. A TPM's EK certificate carries the EK
/// this way (TCG EK Credential Profile).
pub fn rsa_public_key(der: &[u8]) -> Result<Option<RsaPublicKey>, CertificateError> {
    let cert = parse(der).map_err(CertificateError::Malformed)?;
    let strip = |bytes: &[u8]| bytes[bytes.iter().position(|b| *b != 0).unwrap_or(bytes.len())..].to_vec();
    Ok(match cert.public_key().parsed() {
        Ok(x509_parser::public_key::PublicKey::RSA(rsa)) => {
            Some(RsaPublicKey { modulus: strip(rsa.modulus), exponent: strip(rsa.exponent) })
        }
        _ => None,
    })
}

/// The serial number of a certificate as the store keeps the managed CA's: lower-case hex of the DER integer's
/// bytes (`crate::serial::Serial::to_hex` writes the same for the serials it draws).
fn serial_of(cert: &X509Certificate<'_>) -> String {
    hex::encode(cert.raw_serial())
}

/// SHA-256 of the bytes (of a DER certificate: its SHA-256 thumbprint).
pub fn sha256(der: &[u8]) -> [u8; 32] {
    sha2::Sha256::digest(der).into()
}

/// SHA-256 thumbprint of a DER certificate, lower-case hex.
pub fn thumbprint_sha256_hex(der: &[u8]) -> String {
    hex::encode(sha256(der))
}

/// SHA-1 thumbprint of a DER certificate, lower-case hex. Azure shows thumbprints in upper case; compare them
/// without regard to case (§4: individual X.509 enrollments match device certificates by thumbprint).
pub fn thumbprint_sha1_hex(der: &[u8]) -> String {
    hex::encode(sha1::Sha1::digest(der))
}

/// What a registration result shows of a certificate (Azure's `X509CertificateInfo`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertificateDetails {
    /// The subject's distinguished name (`CN=..., O=...`).
    pub subject: String,
    /// The issuer's distinguished name.
    pub issuer: String,
    /// Start of validity.
    pub not_before: OffsetDateTime,
    /// End of validity.
    pub not_after: OffsetDateTime,
    /// The serial number, lower-case hex.
    pub serial_hex: String,
    /// The X.509 version (3 for v3).
    pub version: u32,
    /// SHA-1 thumbprint, lower-case hex.
    pub sha1_hex: String,
    /// SHA-256 thumbprint, lower-case hex.
    pub sha256_hex: String,
}

/// Reads the details of a DER certificate.
pub fn details(der: &[u8]) -> Result<CertificateDetails, CertificateError> {
    let cert = parse(der).map_err(CertificateError::Malformed)?;
    Ok(details_of(&cert, der))
}

/// The details of `cert`, parsed from `der`.
pub(crate) fn details_of(cert: &X509Certificate<'_>, der: &[u8]) -> CertificateDetails {
    CertificateDetails {
        subject: subject_text(cert),
        issuer: cert.issuer().to_string(),
        not_before: time_of(cert.validity().not_before),
        not_after: time_of(cert.validity().not_after),
        serial_hex: serial_of(cert),
        version: cert.version().0 + 1,
        sha1_hex: thumbprint_sha1_hex(der),
        sha256_hex: thumbprint_sha256_hex(der),
    }
}

/// Bits of a big-endian unsigned modulus, leading zeros ignored.
pub(crate) fn modulus_bits(modulus: &[u8]) -> usize {
    match modulus.iter().position(|b| *b != 0) {
        Some(i) => (modulus.len() - i) * 8 - modulus[i].leading_zeros() as usize,
        None => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{CertificateParams, DnType, KeyPair};

    fn cert_with_subject(entries: &[(DnType, &str)]) -> Vec<u8> {
        let mut params = CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        for (ty, value) in entries {
            params.distinguished_name.push(ty.clone(), *value);
        }
        params.self_signed(&KeyPair::generate().unwrap()).unwrap().der().to_vec()
    }

    #[test]
    fn subject_cn_reads_exactly_one_cn_of_at_most_64_characters() {
        assert_eq!(subject_cn(&cert_with_subject(&[(DnType::CommonName, "device-1")])).unwrap(), "device-1");
        let long = "x".repeat(65);
        assert_eq!(
            subject_cn(&cert_with_subject(&[(DnType::CommonName, &long)])).unwrap_err(),
            CertificateError::CommonNameTooLong(65)
        );
        let just = "é".repeat(64);
        assert_eq!(subject_cn(&cert_with_subject(&[(DnType::CommonName, &just)])).unwrap(), just);
        assert_eq!(
            subject_cn(&cert_with_subject(&[(DnType::OrganizationName, "org")])).unwrap_err(),
            CertificateError::NoCommonName
        );
    }

    #[test]
    fn details_read_subject_issuer_serial_validity_and_thumbprints() {
        let mut params = CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, "device-9");
        params.distinguished_name.push(DnType::OrganizationName, "Acme");
        params.serial_number = Some(rcgen::SerialNumber::from_slice(&[0x01, 0xab, 0xcd]));
        params.not_before = OffsetDateTime::from_unix_timestamp(1_767_323_045).unwrap();
        params.not_after = OffsetDateTime::from_unix_timestamp(1_798_859_045).unwrap();
        let der = params.self_signed(&KeyPair::generate().unwrap()).unwrap().der().to_vec();
        let d = details(&der).unwrap();
        assert_eq!(d.subject, "CN=device-9, O=Acme");
        assert_eq!(d.issuer, d.subject, "self-signed");
        assert_eq!(d.serial_hex, "01abcd");
        let read = presented(&der).unwrap();
        assert_eq!(read.serial_hex, d.serial_hex);
        assert_eq!(read.subject_cn, Ok("device-9".to_owned()));
        assert!(matches!(presented(&der[..der.len() - 1]), Err(CertificateError::Malformed(_))));
        assert_eq!(d.version, 3);
        assert_eq!(d.not_before.unix_timestamp(), 1_767_323_045);
        assert_eq!(d.not_after.unix_timestamp(), 1_798_859_045);
        assert_eq!(d.sha256_hex, thumbprint_sha256_hex(&der));
        assert_eq!(d.sha1_hex, thumbprint_sha1_hex(&der));
        assert!(details(&der[..der.len() - 1]).is_err());
    }

    /// A presented certificate reads as `subject_cn` reads it, CN errors included, beside its serial.
    #[test]
    fn a_presented_certificate_has_a_serial_whatever_its_cn() {
        let subjects: [&[(DnType, &str)]; 3] = [
            &[(DnType::CommonName, "device-1")],
            &[(DnType::OrganizationName, "org")],
            &[(DnType::CommonName, "a"), (DnType::CommonName, "b")],
        ];
        for subject in subjects {
            let der = cert_with_subject(subject);
            let read = presented(&der).unwrap();
            assert_eq!(read.subject_cn, subject_cn(&der), "{subject:?}");
            let (_, cert) = X509Certificate::from_der(&der).unwrap();
            assert_eq!(read.serial_hex, hex::encode(cert.raw_serial()), "{subject:?}");
        }
    }

    #[test]
    fn malformed_input_is_an_error_never_a_panic() {
        let good = cert_with_subject(&[(DnType::CommonName, "device-1")]);
        assert!(matches!(subject_cn(b""), Err(CertificateError::Malformed(_))));
        assert!(matches!(subject_cn(&good[..good.len() - 1]), Err(CertificateError::Malformed(_))));
        let mut trailing = good;
        trailing.push(0);
        assert!(subject_cn(&trailing).unwrap_err().to_string().contains("1 bytes follow"));
    }

    #[test]
    fn thumbprints_are_hashes_of_the_der() {
        // Known answers: SHA-1 and SHA-256 of "abc" (FIPS 180-2, appendix A / B).
        assert_eq!(thumbprint_sha1_hex(b"abc"), "a9993e364706816aba3e25717850c26c9cd0d89d");
        assert_eq!(thumbprint_sha256_hex(b"abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
        assert_eq!(hex::encode(sha256(b"abc")), thumbprint_sha256_hex(b"abc"));
    }

    proptest::proptest! {
        #[test]
        fn parsing_arbitrary_bytes_never_panics(
            bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..512)
        ) {
            let _ = subject_cn(&bytes);
            let _ = presented(&bytes);
        }
    }
}
