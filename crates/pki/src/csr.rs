//! CSR checks for device issuance (issue #4 §2; `docs/protocol/device-api.md` §8: base64 DER PKCS#10, CN equal to the
//! registration id).
//!
//! [`check_csr`] is the gate: a [`CheckedCsr`] exists only for a request whose structure parses, whose key type the
//! policy allows, whose self-signature verifies, whose subject CN is exactly the registration id, and which asks for
//! nothing beyond the device profile. Checks run in that order, so the first refusal is the one reported.

use x509_parser::certification_request::X509CertificationRequest;
use x509_parser::cri_attributes::ParsedCriAttribute;
use x509_parser::extensions::{ParsedExtension, X509Extension};
use x509_parser::oid_registry::{OID_EC_P256, OID_KEY_TYPE_EC_PUBLIC_KEY, OID_NIST_EC_P384, OID_PKCS1_RSAENCRYPTION};
use x509_parser::prelude::FromDer;
use x509_parser::public_key::PublicKey;

use crate::certificate::{self, CertificateError, extension_name, modulus_bits};
use crate::chain::accepted_signature_algorithm;
use crate::pem;

/// The smallest RSA modulus accepted when the policy allows RSA.
pub const MIN_RSA_BITS: usize = 2048;

/// Which device key types may be certified.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct KeyPolicy {
    /// RSA keys of at least [`MIN_RSA_BITS`] bits are accepted (besides P-256 and P-384, always accepted).
    pub allow_rsa: bool,
}

/// The key type of a checked CSR.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceKeyType {
    /// ECDSA P-256.
    EcdsaP256,
    /// ECDSA P-384.
    EcdsaP384,
    /// RSA with a modulus of this many bits.
    Rsa {
        /// Modulus size.
        bits: usize,
    },
}

/// Why a CSR was refused. The messages are meant for the device's operator.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CsrError {
    /// Not a DER PKCS#10 request.
    #[error("the CSR is not a valid DER PKCS#10 certification request: {0}")]
    Malformed(String),
    /// The self-signature does not verify under the request's public key.
    #[error("the CSR's signature does not verify under its own public key")]
    BadSignature,
    /// Signed with an algorithm we do not accept (SHA-1, MD5, unknown).
    #[error("the CSR is signed with an algorithm that is not accepted ({0}); use ECDSA or RSA with SHA-256 or better")]
    UnsupportedSignatureAlgorithm(String),
    /// The subject CN is not the registration id.
    #[error("the CSR's subject common name {found} is not the registration id \"{registration_id}\"")]
    CommonNameMismatch {
        /// What the CSR has (quoted), or a description when it has no single CN.
        found: String,
        /// The registration id it must equal.
        registration_id: String,
    },
    /// The key type is not allowed.
    #[error("the CSR's key type is not allowed: {refused} (allowed: {allowed})")]
    KeyTypeRefused {
        /// The key type found.
        refused: String,
        /// What the policy allows.
        allowed: &'static str,
    },
    /// An extension beyond the device certificate profile is requested.
    #[error("the CSR requests {extension}, which the device certificate profile does not allow")]
    ExtensionRefused {
        /// The extension (and value) refused.
        extension: String,
    },
}

/// A CSR that passed [`check_csr`]: the device's public key and the CN it asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckedCsr {
    spki_der: Vec<u8>,
    key_type: DeviceKeyType,
    common_name: String,
}

impl CheckedCsr {
    /// The device's public key, DER SubjectPublicKeyInfo.
    pub fn public_key_der(&self) -> &[u8] {
        &self.spki_der
    }

    /// The device's key type.
    pub fn key_type(&self) -> DeviceKeyType {
        self.key_type
    }

    /// The subject CN (equal to the registration id it was checked against).
    pub fn common_name(&self) -> &str {
        &self.common_name
    }
}

fn parse_request(der: &[u8]) -> Result<X509CertificationRequest<'_>, CsrError> {
    let (rest, csr) = X509CertificationRequest::from_der(der).map_err(|e| CsrError::Malformed(e.to_string()))?;
    if !rest.is_empty() {
        return Err(CsrError::Malformed(format!("{} bytes follow the request", rest.len())));
    }
    Ok(csr)
}

fn verify_self_signature(csr: &X509CertificationRequest<'_>) -> Result<(), CsrError> {
    if !accepted_signature_algorithm(&csr.signature_algorithm.algorithm) {
        return Err(CsrError::UnsupportedSignatureAlgorithm(csr.signature_algorithm.algorithm.to_id_string()));
    }
    csr.verify_signature().map_err(|_| CsrError::BadSignature)
}

fn key_type(csr: &X509CertificationRequest<'_>, policy: &KeyPolicy) -> Result<DeviceKeyType, CsrError> {
    let allowed =
        if policy.allow_rsa { "ECDSA P-256, ECDSA P-384, RSA 2048 bits or more" } else { "ECDSA P-256, ECDSA P-384" };
    let refused = |refused: String| CsrError::KeyTypeRefused { refused, allowed };
    let spki = &csr.certification_request_info.subject_pki;
    let algorithm = &spki.algorithm.algorithm;
    if *algorithm == OID_KEY_TYPE_EC_PUBLIC_KEY {
        let curve = spki.algorithm.parameters.as_ref().and_then(|p| p.as_oid().ok());
        return match curve {
            Some(curve) if curve == OID_EC_P256 => Ok(DeviceKeyType::EcdsaP256),
            Some(curve) if curve == OID_NIST_EC_P384 => Ok(DeviceKeyType::EcdsaP384),
            Some(curve) => Err(refused(format!("EC key on curve {}", certificate_oid_name(&curve)))),
            None => Err(CsrError::Malformed("the EC key names no curve".to_owned())),
        };
    }
    if *algorithm == OID_PKCS1_RSAENCRYPTION {
        let Ok(PublicKey::RSA(rsa)) = spki.parsed() else {
            return Err(CsrError::Malformed("the RSA public key does not parse".to_owned()));
        };
        let bits = modulus_bits(rsa.modulus);
        if !policy.allow_rsa || bits < MIN_RSA_BITS {
            return Err(refused(format!("RSA-{bits}")));
        }
        return Ok(DeviceKeyType::Rsa { bits });
    }
    Err(refused(format!("key algorithm {}", certificate_oid_name(algorithm))))
}

fn certificate_oid_name(oid: &x509_parser::der_parser::oid::Oid<'_>) -> String {
    x509_parser::objects::oid2sn(oid, x509_parser::objects::oid_registry())
        .map(|name| format!("{name} ({})", oid.to_id_string()))
        .unwrap_or_else(|_| oid.to_id_string())
}

fn check_common_name(csr: &X509CertificationRequest<'_>, registration_id: &str) -> Result<String, CsrError> {
    let mismatch = |found: String| CsrError::CommonNameMismatch { found, registration_id: registration_id.to_owned() };
    match certificate::common_name(&csr.certification_request_info.subject) {
        Ok(cn) if cn == registration_id => Ok(cn),
        Ok(cn) => Err(mismatch(format!("\"{cn}\""))),
        Err(CertificateError::NoCommonName) => Err(mismatch("(none)".to_owned())),
        Err(CertificateError::SeveralCommonNames(n)) => Err(mismatch(format!("({n} CNs)"))),
        Err(other) => Err(CsrError::Malformed(other.to_string())),
    }
}

/// The requested extensions (from the one `extensionRequest` attribute, if any).
fn requested_extensions<'a>(csr: &'a X509CertificationRequest<'a>) -> Result<&'a [X509Extension<'a>], CsrError> {
    let mut requests =
        csr.certification_request_info.iter_attributes().filter_map(|attr| match attr.parsed_attribute() {
            ParsedCriAttribute::ExtensionRequest(request) => Some(request.extensions.as_slice()),
            _ => None,
        });
    let first = requests.next().unwrap_or(&[]);
    if requests.next().is_some() {
        return Err(CsrError::Malformed("more than one extensionRequest attribute".to_owned()));
    }
    Ok(first)
}

/// Refuses every requested extension the profile would not give anyway. Accepted: `basicConstraints` CA:false,
/// `keyUsage` digitalSignature only, `extendedKeyUsage` clientAuth only (the profile sets all three regardless).
fn check_extensions(csr: &X509CertificationRequest<'_>) -> Result<(), CsrError> {
    let extensions = requested_extensions(csr)?;
    for (i, ext) in extensions.iter().enumerate() {
        if extensions[..i].iter().any(|earlier| earlier.oid == ext.oid) {
            return Err(CsrError::Malformed(format!("the {} extension is requested twice", extension_name(&ext.oid))));
        }
        let refused = |extension: String| Err(CsrError::ExtensionRefused { extension });
        match ext.parsed_extension() {
            ParsedExtension::BasicConstraints(bc) if bc.ca => return refused("basicConstraints CA:true".to_owned()),
            ParsedExtension::BasicConstraints(_) => {}
            ParsedExtension::KeyUsage(usage) if usage.flags & !1 != 0 => {
                return refused(format!("keyUsage {usage} (only Digital Signature is given)"));
            }
            ParsedExtension::KeyUsage(_) => {}
            ParsedExtension::ExtendedKeyUsage(eku) => {
                let others = [
                    (eku.any, "anyExtendedKeyUsage"),
                    (eku.server_auth, "serverAuth"),
                    (eku.code_signing, "codeSigning"),
                    (eku.email_protection, "emailProtection"),
                    (eku.time_stamping, "timeStamping"),
                    (eku.ocsp_signing, "OCSPSigning"),
                ];
                let mut names: Vec<String> =
                    others.iter().filter(|(set, _)| *set).map(|(_, name)| (*name).to_owned()).collect();
                names.extend(eku.other.iter().map(|oid| oid.to_id_string()));
                if !names.is_empty() {
                    return refused(format!("extendedKeyUsage {} (only clientAuth is given)", names.join(", ")));
                }
            }
            ParsedExtension::ParseError { error } => {
                return Err(CsrError::Malformed(format!(
                    "the requested {} extension is malformed: {error}",
                    extension_name(&ext.oid)
                )));
            }
            _ => return refused(format!("the {} extension", extension_name(&ext.oid))),
        }
    }
    Ok(())
}

/// Checks a device's CSR (DER PKCS#10) for issuance under the given registration id and key policy.
pub fn check_csr(der: &[u8], registration_id: &str, policy: &KeyPolicy) -> Result<CheckedCsr, CsrError> {
    let csr = parse_request(der)?;
    let key_type = key_type(&csr, policy)?;
    verify_self_signature(&csr)?;
    let common_name = check_common_name(&csr, registration_id)?;
    check_extensions(&csr)?;
    Ok(CheckedCsr { spki_der: csr.certification_request_info.subject_pki.raw.to_vec(), key_type, common_name })
}

/// What a root needs from a CA CSR: its key and its CN.
pub(crate) struct CaRequest {
    pub(crate) spki_der: Vec<u8>,
    pub(crate) common_name: String,
}

/// Parses a CA CSR (DER, or PEM `CERTIFICATE REQUEST`) and verifies its self-signature.
pub(crate) fn parse_ca_csr(bytes: &[u8]) -> Result<CaRequest, CsrError> {
    let der = match std::str::from_utf8(bytes) {
        Ok(text) if text.trim_start().starts_with("-----BEGIN") => {
            pem::decode_one(text, "CERTIFICATE REQUEST").map_err(CsrError::Malformed)?
        }
        _ => bytes.to_vec(),
    };
    let csr = parse_request(&der)?;
    verify_self_signature(&csr)?;
    let common_name = certificate::common_name(&csr.certification_request_info.subject)
        .map_err(|e| CsrError::Malformed(e.to_string()))?;
    Ok(CaRequest { spki_der: csr.certification_request_info.subject_pki.raw.to_vec(), common_name })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{CertificateParams, DistinguishedName, DnType, IsCa, KeyPair, SanType};

    fn csr_with(
        alg: &'static rcgen::SignatureAlgorithm,
        cns: &[&str],
        edit: impl FnOnce(&mut CertificateParams),
    ) -> Vec<u8> {
        let key = KeyPair::generate_for(alg).unwrap();
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        for cn in cns {
            params.distinguished_name.push(DnType::CommonName, *cn);
        }
        edit(&mut params);
        params.serialize_request(&key).unwrap().der().to_vec()
    }

    fn p256(cns: &[&str], edit: impl FnOnce(&mut CertificateParams)) -> Vec<u8> {
        csr_with(&rcgen::PKCS_ECDSA_P256_SHA256, cns, edit)
    }

    #[test]
    fn a_plain_request_is_accepted_with_its_key() {
        let der = p256(&["dev"], |_| {});
        let checked = check_csr(&der, "dev", &KeyPolicy::default()).unwrap();
        assert_eq!(checked.key_type(), DeviceKeyType::EcdsaP256);
        let csr = parse_request(&der).unwrap();
        assert_eq!(checked.public_key_der(), csr.certification_request_info.subject_pki.raw);
        let p384 = csr_with(&rcgen::PKCS_ECDSA_P384_SHA384, &["dev"], |_| {});
        assert_eq!(check_csr(&p384, "dev", &KeyPolicy::default()).unwrap().key_type(), DeviceKeyType::EcdsaP384);
    }

    #[test]
    fn other_key_types_are_refused_by_name() {
        let ed = csr_with(&rcgen::PKCS_ED25519, &["dev"], |_| {});
        let err = check_csr(&ed, "dev", &KeyPolicy { allow_rsa: true }).unwrap_err();
        assert!(matches!(&err, CsrError::KeyTypeRefused { refused, .. } if refused.contains("1.3.101.112")), "{err}");
        let p521 = csr_with(&rcgen::PKCS_ECDSA_P521_SHA512, &["dev"], |_| {});
        let err = check_csr(&p521, "dev", &KeyPolicy::default()).unwrap_err();
        assert!(matches!(&err, CsrError::KeyTypeRefused { refused, .. } if refused.contains("1.3.132.0.35")), "{err}");
    }

    #[test]
    fn the_cn_must_be_the_registration_id_exactly() {
        let policy = KeyPolicy::default();
        let err = check_csr(&p256(&["Dev"], |_| {}), "dev", &policy).unwrap_err();
        assert_eq!(
            err,
            CsrError::CommonNameMismatch { found: "\"Dev\"".to_owned(), registration_id: "dev".to_owned() }
        );
        let err = check_csr(&p256(&[], |_| {}), "dev", &policy).unwrap_err();
        assert!(err.to_string().contains("(none)"), "{err}");
    }

    #[test]
    fn extensions_beyond_the_profile_are_refused_by_name() {
        let policy = KeyPolicy::default();
        type Edit = Box<dyn FnOnce(&mut CertificateParams)>;
        let cases: Vec<(Edit, &str)> = vec![
            (Box::new(|p| p.is_ca = IsCa::Ca(rcgen::BasicConstraints::Unconstrained)), "basicConstraints CA:true"),
            (Box::new(|p| p.subject_alt_names = vec![SanType::DnsName("dev".try_into().unwrap())]), "subjectAltName"),
            (Box::new(|p| p.key_usages = vec![rcgen::KeyUsagePurpose::KeyEncipherment]), "Key Encipherment"),
            (Box::new(|p| p.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::CodeSigning]), "codeSigning"),
            (
                Box::new(|p| p.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::Other(vec![1, 2, 3, 4])]),
                "1.2.3.4",
            ),
        ];
        for (edit, named) in cases {
            let err = check_csr(&p256(&["dev"], edit), "dev", &policy).unwrap_err();
            assert!(
                matches!(err, CsrError::ExtensionRefused { .. }) && err.to_string().contains(named),
                "{named}: {err}"
            );
        }
        let exact = p256(&["dev"], |p| {
            p.is_ca = IsCa::ExplicitNoCa;
            p.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature];
            p.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        });
        assert!(check_csr(&exact, "dev", &policy).is_ok());
    }

    #[test]
    fn rsa_modulus_sizes_are_counted_in_bits() {
        assert_eq!(modulus_bits(&[0x00, 0x80, 0x00]), 16);
        assert_eq!(modulus_bits(&[0x01, 0x00]), 9);
        assert_eq!(modulus_bits(&[0x00]), 0);
        assert_eq!(modulus_bits(&[]), 0);
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..600)) {
            let _ = check_csr(&bytes, "dev", &KeyPolicy { allow_rsa: true });
            let _ = parse_ca_csr(&bytes);
        }

        #[test]
        fn corrupting_any_byte_of_a_good_csr_never_passes_with_another_key(index in 0usize..200, flip in 1u8..=255) {
            let der = p256(&["dev"], |_| {});
            let mut bad = der.clone();
            let i = index % bad.len();
            bad[i] ^= flip;
            if let Ok(checked) = check_csr(&bad, "dev", &KeyPolicy::default()) {
                // Only encodings that mean the same request may survive (e.g. a flipped unused bit).
                let original = check_csr(&der, "dev", &KeyPolicy::default()).unwrap();
                proptest::prop_assert_eq!(checked.public_key_der(), original.public_key_der());
            }
        }
    }
}
