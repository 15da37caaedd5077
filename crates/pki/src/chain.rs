//! Chain verification for X.509 attestation: the server takes the client chain from the TLS handshake unverified
//! and judges it here, against one candidate trust anchor at a time (an enrolled CA, tried in the order of
//! `docs/protocol/device-api.md` §4).
//!
//! The checks follow RFC 5280 §6.1 for what devices and CAs use: signatures along the path (with accepted
//! algorithms only), validity at `now` of every certificate including the anchor, `basicConstraints` CA:true on
//! every CA, `keyCertSign` wherever a CA carries `keyUsage` (§6.1.4 (n): absent means unrestricted), path length
//! constraints, no critical extension we do not understand, and a device certificate that is not a CA and, if it
//! restricts its extended key usage, allows TLS client authentication. Names chain by exact DER equality of
//! issuer and subject (as webpki does).
//!
//! [`check_ca_certificate`] applies the same checks to one CA certificate on its own, for an admin who uploads a
//! trust anchor: refused at upload for the reason a chain would be refused later.
//!
//! The path itself is built by [`crate::path`], once for every anchor of every group; [`crate::verify_chain`] is
//! that search with a single anchor, so both judge a chain alike.

use time::OffsetDateTime;
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::ParsedExtension;
use x509_parser::oid_registry::{
    OID_PKCS1_RSASSAPSS, OID_PKCS1_SHA256WITHRSA, OID_PKCS1_SHA384WITHRSA, OID_PKCS1_SHA512WITHRSA,
    OID_SIG_ECDSA_WITH_SHA256, OID_SIG_ECDSA_WITH_SHA384, OID_SIG_ED25519,
};

use crate::certificate::{self, CertificateDetails, details_of, extension_name, rfc3339, subject_text, time_of};

/// The most certificates a path may have, device certificate and anchor included.
pub const MAX_CHAIN_LENGTH: usize = 8;

/// The most signatures one chain may cost to judge ([`crate::path`]), across every anchor. A path needs one check
/// per link (at most [`MAX_CHAIN_LENGTH`] - 1), plus one per further anchor of the same name and key identifier;
/// the rest is room for presented certificates of one name without key identifiers (a CA renewed under its old
/// name). A chain built to make the walk try every same-named certificate at every level (7 + 6 + ... + 1 = 28
/// checks) is refused at the 17th.
pub const MAX_SIGNATURE_CHECKS: usize = 16;

/// The largest RSA key a presented certificate may carry. RSA-4096 is the largest size CAs issue devices under;
/// verifying under an RSA-8192 key costs about four times as much, for an attacker's certificate.
pub const MAX_RSA_BITS: usize = 4096;

/// Why a certificate chain was refused. `certificate` fields name the certificate by role and subject.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChainError {
    /// A certificate is not valid DER.
    #[error("{certificate} is not a valid DER X.509 certificate: {reason}")]
    Malformed {
        /// Which certificate.
        certificate: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A certificate's validity ended before `now`.
    #[error("{certificate} expired at {}", rfc3339(not_after))]
    Expired {
        /// Which certificate.
        certificate: String,
        /// The end of its validity.
        not_after: OffsetDateTime,
    },
    /// A certificate's validity starts after `now`.
    #[error("{certificate} is not valid before {}", rfc3339(not_before))]
    NotYetValid {
        /// Which certificate.
        certificate: String,
        /// The start of its validity.
        not_before: OffsetDateTime,
    },
    /// The path does not lead to the trust anchor: a certificate's issuer is neither the anchor nor presented.
    #[error(
        "the chain does not lead to this certificate authority: the issuer \"{issuer}\" of {certificate} is neither \
         the trusted CA nor among the presented certificates"
    )]
    UnknownCa {
        /// The certificate whose issuer was not found.
        certificate: String,
        /// That issuer's name.
        issuer: String,
    },
    /// A certificate names an issuer whose key did not make its signature: the signature does not verify, or (not
    /// checked then) the certificate's authority key identifier names another key than the issuer's subject key
    /// identifier.
    #[error("{}", bad_signature(.certificate, .issuer, .by_key_id))]
    BadSignature {
        /// The certificate whose signature failed.
        certificate: String,
        /// The certificate whose key was tried.
        issuer: String,
        /// Refused by the key identifiers, without checking the signature.
        by_key_id: bool,
    },
    /// A presented certificate carries an RSA key larger than [`MAX_RSA_BITS`]: checking signatures
    /// under it costs too much to do for an unauthenticated client.
    #[error("{certificate} has an RSA-{bits} key; keys of more than {MAX_RSA_BITS} bits are refused")]
    KeyTooLarge {
        /// Which certificate.
        certificate: String,
        /// Its modulus size.
        bits: usize,
    },
    /// Building the path would take more than [`MAX_SIGNATURE_CHECKS`] signature checks.
    #[error(
        "the chain needs more than {MAX_SIGNATURE_CHECKS} signature checks to reach a certificate authority of an \
         enrollment; it is refused (send only the device certificate and the CA certificates of its path)"
    )]
    TooManySignatureChecks,
    /// A signature algorithm we do not accept (SHA-1, MD5, unknown).
    #[error("{certificate} is signed with an algorithm that is not accepted ({algorithm})")]
    UnsupportedSignatureAlgorithm {
        /// Which certificate.
        certificate: String,
        /// The algorithm's OID.
        algorithm: String,
    },
    /// A certificate that signs others lacks `basicConstraints` CA:true.
    #[error("{certificate} is not a CA certificate (basicConstraints CA:true is missing)")]
    NotACa {
        /// Which certificate.
        certificate: String,
    },
    /// A CA certificate's key usage does not include `keyCertSign`.
    #[error("{certificate} may not sign certificates (its keyUsage lacks keyCertSign)")]
    NoKeyCertSign {
        /// Which certificate.
        certificate: String,
    },
    /// A CA certificate's `pathLenConstraint` is smaller than the number of CAs below it.
    #[error("{certificate} allows {path_len} intermediate CA certificate(s) below it; the chain has {below}")]
    PathLenExceeded {
        /// Which certificate.
        certificate: String,
        /// Its `pathLenConstraint`.
        path_len: u32,
        /// The intermediate CAs below it in the path.
        below: usize,
    },
    /// The device certificate is a CA certificate.
    #[error("{certificate} is a CA certificate (basicConstraints CA:true), not a device certificate")]
    LeafIsCa {
        /// Which certificate.
        certificate: String,
    },
    /// The device certificate restricts its use and TLS client authentication is not among its uses.
    #[error("{certificate} is not for TLS client authentication (its extendedKeyUsage lacks clientAuth)")]
    NotForClientAuth {
        /// Which certificate.
        certificate: String,
    },
    /// The EK certificate restricts its use and the TCG EK certificate purpose (2.23.133.8.1) is not among them.
    #[error("{certificate} is not an EK certificate (its extendedKeyUsage lacks tcg-kp-EKCertificate)")]
    NotForEndorsement {
        /// Which certificate.
        certificate: String,
    },
    /// A critical extension this verifier does not process (e.g. name constraints).
    #[error("{certificate} has a critical {extension} extension, which is not supported")]
    UnsupportedCriticalExtension {
        /// Which certificate.
        certificate: String,
        /// The extension's name or OID.
        extension: String,
    },
    /// The path is longer than [`MAX_CHAIN_LENGTH`].
    #[error("the chain has more than {MAX_CHAIN_LENGTH} certificates")]
    TooLong,
}

fn bad_signature(certificate: &str, issuer: &str, by_key_id: &bool) -> String {
    if *by_key_id {
        format!(
            "the signature of {certificate} cannot be from {issuer}: its authority key identifier names another key"
        )
    } else {
        format!("the signature of {certificate} does not verify under the key of {issuer}")
    }
}

/// A chain that verified: the path from the device certificate to the anchor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedChain {
    /// DER certificates, the device certificate first, the trust anchor last.
    pub path: Vec<Vec<u8>>,
    /// The end of the device certificate's validity.
    pub leaf_not_after: OffsetDateTime,
}

impl VerifiedChain {
    /// When every certificate of the path is valid at once: the latest start and the earliest end of their
    /// validity periods (`None` if one does not parse, which a path that verified never has).
    pub fn validity(&self) -> Option<(OffsetDateTime, OffsetDateTime)> {
        let mut periods = self.path.iter().map(|der| {
            let cert = certificate::parse(der).ok()?;
            Some((time_of(cert.validity().not_before), time_of(cert.validity().not_after)))
        });
        let first = periods.next()??;
        periods.try_fold(first, |(from, until), period| {
            let (start, end) = period?;
            Some((from.max(start), until.min(end)))
        })
    }
}

/// The role of a certificate in a path, for messages.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Role {
    /// The device (end-entity) certificate.
    Device,
    /// An intermediate the device presented.
    Presented,
    /// The trust anchor (an enrolled CA).
    Anchor,
    /// The issuing CA certificate (first of an issuing CA chain).
    IssuingCa,
    /// A CA above the issuing CA in its chain.
    Superior,
    /// A CA certificate judged on its own ([`check_ca_certificate`]).
    Ca,
}

/// "`<role>` \"`<subject>`\"": how error messages name a certificate.
pub(crate) fn describe(role: Role, cert: &X509Certificate<'_>) -> String {
    let role = match role {
        Role::Device => "the device certificate",
        Role::Presented => "the presented intermediate certificate",
        Role::Anchor => "the trusted CA certificate",
        Role::IssuingCa => "the issuing CA certificate",
        Role::Superior | Role::Ca => "the CA certificate",
    };
    // The subject is the certificate maker's text: escaped, so that it cannot break a log line or the audit log.
    format!("{role} \"{}\"", subject_text(cert).escape_debug())
}

/// Parses a certificate of a path, naming it by role (and position) if it is malformed.
pub(crate) fn parse_as<'a>(der: &'a [u8], what: String) -> Result<X509Certificate<'a>, ChainError> {
    certificate::parse(der).map_err(|reason| ChainError::Malformed { certificate: what, reason })
}

/// `now` lies within the certificate's validity.
pub(crate) fn check_validity(cert: &X509Certificate<'_>, name: &str, now: OffsetDateTime) -> Result<(), ChainError> {
    let not_before = time_of(cert.validity().not_before);
    let not_after = time_of(cert.validity().not_after);
    if now < not_before {
        return Err(ChainError::NotYetValid { certificate: name.to_owned(), not_before });
    }
    if now > not_after {
        return Err(ChainError::Expired { certificate: name.to_owned(), not_after });
    }
    Ok(())
}

/// Parses a device certificate strictly and checks that `now` lies within its validity (for a certificate trusted
/// by thumbprint, whose chain is not walked).
pub fn check_certificate_validity(der: &[u8], now: OffsetDateTime) -> Result<(), ChainError> {
    let name = "the device certificate";
    let cert = parse_as(der, name.to_owned())?;
    check_validity(&cert, &format!("{name} ({})", subject_text(&cert)), now)
}

/// The certificate is a CA allowed to sign certificates, with `cas_below` intermediate CAs under it in the path.
pub(crate) fn check_ca(cert: &X509Certificate<'_>, name: &str, cas_below: usize) -> Result<(), ChainError> {
    let constraints = cert.basic_constraints().ok().flatten().map(|bc| bc.value.clone());
    let Some(constraints) = constraints.filter(|bc| bc.ca) else {
        return Err(ChainError::NotACa { certificate: name.to_owned() });
    };
    if let Some(usage) = cert.key_usage().ok().flatten()
        && !usage.value.key_cert_sign()
    {
        return Err(ChainError::NoKeyCertSign { certificate: name.to_owned() });
    }
    if let Some(path_len) = constraints.path_len_constraint
        && usize::try_from(path_len).is_ok_and(|allowed| cas_below > allowed)
    {
        return Err(ChainError::PathLenExceeded { certificate: name.to_owned(), path_len, below: cas_below });
    }
    Ok(())
}

/// Every critical extension is one we process.
pub(crate) fn check_critical_extensions(cert: &X509Certificate<'_>, name: &str) -> Result<(), ChainError> {
    for ext in cert.extensions().iter().filter(|ext| ext.critical) {
        let understood = matches!(
            ext.parsed_extension(),
            ParsedExtension::BasicConstraints(_)
                | ParsedExtension::KeyUsage(_)
                | ParsedExtension::ExtendedKeyUsage(_)
                | ParsedExtension::SubjectAlternativeName(_)
                | ParsedExtension::SubjectKeyIdentifier(_)
                | ParsedExtension::AuthorityKeyIdentifier(_)
        );
        if !understood {
            return Err(ChainError::UnsupportedCriticalExtension {
                certificate: name.to_owned(),
                extension: extension_name(&ext.oid),
            });
        }
    }
    Ok(())
}

/// The signature algorithm is one we accept (no SHA-1, no MD5).
pub(crate) fn accepted_signature_algorithm(oid: &x509_parser::der_parser::oid::Oid<'_>) -> bool {
    [
        OID_SIG_ECDSA_WITH_SHA256,
        OID_SIG_ECDSA_WITH_SHA384,
        OID_PKCS1_SHA256WITHRSA,
        OID_PKCS1_SHA384WITHRSA,
        OID_PKCS1_SHA512WITHRSA,
        OID_PKCS1_RSASSAPSS,
        OID_SIG_ED25519,
    ]
    .contains(oid)
}

/// `child`'s signature verifies under `parent`'s key, with an accepted algorithm.
pub(crate) fn check_signed_by(
    child: &X509Certificate<'_>,
    child_name: &str,
    parent: &X509Certificate<'_>,
    parent_name: &str,
) -> Result<(), ChainError> {
    if !accepted_signature_algorithm(&child.signature_algorithm.algorithm) {
        return Err(ChainError::UnsupportedSignatureAlgorithm {
            certificate: child_name.to_owned(),
            algorithm: child.signature_algorithm.algorithm.to_id_string(),
        });
    }
    child.verify_signature(Some(parent.public_key())).map_err(|_| ChainError::BadSignature {
        certificate: child_name.to_owned(),
        issuer: parent_name.to_owned(),
        by_key_id: false,
    })
}

/// `issuer` of `child` is `parent`'s subject, byte for byte.
pub(crate) fn names_issuer(child: &X509Certificate<'_>, parent: &X509Certificate<'_>) -> bool {
    child.issuer().as_raw() == parent.subject().as_raw()
}

/// Checks a CA certificate on its own, as a trust anchor to be (an uploaded certificate authority), and returns its
/// details.
///
/// The certificate must parse strictly ([`ChainError::Malformed`]), carry no critical extension we do not process
/// ([`ChainError::UnsupportedCriticalExtension`]), have `basicConstraints` CA:true ([`ChainError::NotACa`]) and,
/// when it has `keyUsage`, `keyCertSign` ([`ChainError::NoKeyCertSign`]), and be valid at `now`
/// ([`ChainError::NotYetValid`], [`ChainError::Expired`]): exactly what [`crate::verify_chain`] requires of an anchor,
/// which it checks again at each use. Its signature is not checked (an intermediate CA's issuer is not given), nor
/// is `pathLenConstraint` (which limits the CAs below it, unknown until a chain is presented).
pub fn check_ca_certificate(der: &[u8], now: OffsetDateTime) -> Result<CertificateDetails, ChainError> {
    let cert = parse_as(der, "the CA certificate".to_owned())?;
    let name = describe(Role::Ca, &cert);
    check_critical_extensions(&cert, &name)?;
    check_ca(&cert, &name, 0)?;
    check_validity(&cert, &name, now)?;
    Ok(details_of(&cert, der))
}

/// What the first certificate of a chain must be for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    /// A device certificate: TLS client authentication.
    ClientAuth,
    /// A TPM endorsement key certificate (TCG EK Credential Profile §3.2.16: EKU tcg-kp-EKCertificate).
    Endorsement,
}

/// The OID of tcg-kp-EKCertificate.
const TCG_KP_EK_CERTIFICATE: &[u64] = &[2, 23, 133, 8, 1];

/// The device (or EK) certificate on its own: no critical extension we do not process, not a CA, for `purpose`
/// if it restricts its extended key usage, and valid at `now`.
pub(crate) fn check_leaf(
    leaf: &X509Certificate<'_>,
    name: &str,
    purpose: Purpose,
    now: OffsetDateTime,
) -> Result<(), ChainError> {
    check_critical_extensions(leaf, name)?;
    if leaf.basic_constraints().ok().flatten().is_some_and(|bc| bc.value.ca) {
        return Err(ChainError::LeafIsCa { certificate: name.to_owned() });
    }
    if let Some(eku) = leaf.extended_key_usage().ok().flatten() {
        match purpose {
            Purpose::ClientAuth if !(eku.value.client_auth || eku.value.any) => {
                return Err(ChainError::NotForClientAuth { certificate: name.to_owned() });
            }
            Purpose::Endorsement
                if !(eku.value.any
                    || eku
                        .value
                        .other
                        .iter()
                        .any(|oid| oid.iter().is_some_and(|arcs| arcs.eq(TCG_KP_EK_CERTIFICATE.iter().copied())))) =>
            {
                return Err(ChainError::NotForEndorsement { certificate: name.to_owned() });
            }
            _ => {}
        }
    }
    check_validity(leaf, name, now)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_certificates::{at, ca_params, ladder, leaf};
    use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};

    #[test]
    fn a_certificate_trusted_by_thumbprint_is_checked_for_validity_alone() {
        let (_, issuer) = ladder(0, |_| {});
        let der = leaf(&issuer);
        let cert = certificate::parse(&der).unwrap();
        let (not_before, not_after) = (time_of(cert.validity().not_before), time_of(cert.validity().not_after));
        assert_eq!(check_certificate_validity(&der, not_before + time::Duration::SECOND), Ok(()));
        let early = check_certificate_validity(&der, not_before - time::Duration::SECOND).unwrap_err();
        assert!(matches!(&early, ChainError::NotYetValid { certificate, .. } if certificate.contains("CN=device")));
        let late = check_certificate_validity(&der, not_after + time::Duration::SECOND).unwrap_err();
        assert!(matches!(&late, ChainError::Expired { certificate, .. } if certificate.contains("device certificate")));
        assert!(matches!(check_certificate_validity(&der[1..], not_before), Err(ChainError::Malformed { .. })));
    }

    /// A self-signed certificate `CN=factory` valid from 1,700,000,000 to 1,800,000,000 (Unix time), edited by
    /// `edit`.
    fn lone_ca(edit: impl FnOnce(&mut CertificateParams)) -> Vec<u8> {
        let mut params = ca_params("factory");
        params.not_before = at(1_700_000_000);
        params.not_after = at(1_800_000_000);
        edit(&mut params);
        params.self_signed(&KeyPair::generate().unwrap()).unwrap().der().to_vec()
    }

    const FACTORY: &str = "the CA certificate \"CN=factory\"";

    #[test]
    fn a_ca_certificate_passes_with_its_details() {
        use rcgen::KeyUsagePurpose::{CrlSign, DigitalSignature, KeyCertSign};
        let now = at(1_750_000_000);
        let der = lone_ca(|_| {});
        let details = check_ca_certificate(&der, now).unwrap();
        assert_eq!(details, certificate::details(&der).unwrap());
        assert_eq!(details.subject, "CN=factory");
        // keyUsage with keyCertSign, and a path length constraint, are fine; so are both ends of the validity.
        let der = lone_ca(|p| {
            p.key_usages = vec![KeyCertSign, CrlSign, DigitalSignature];
            p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        });
        check_ca_certificate(&der, now).unwrap();
        check_ca_certificate(&der, at(1_700_000_000)).unwrap();
        check_ca_certificate(&der, at(1_800_000_000)).unwrap();
    }

    #[test]
    fn a_certificate_that_is_no_ca_is_refused() {
        let now = at(1_750_000_000);
        let not_ca = ChainError::NotACa { certificate: FACTORY.to_owned() };
        // No basicConstraints at all, CA:false, and "no CA" stated explicitly.
        for is_ca in [IsCa::NoCa, IsCa::ExplicitNoCa] {
            let der = lone_ca(|p| p.is_ca = is_ca);
            assert_eq!(check_ca_certificate(&der, now).unwrap_err(), not_ca);
        }
    }

    #[test]
    fn a_ca_whose_key_usage_lacks_key_cert_sign_is_refused() {
        use rcgen::KeyUsagePurpose::{CrlSign, DigitalSignature};
        let now = at(1_750_000_000);
        let der = lone_ca(|p| p.key_usages = vec![DigitalSignature, CrlSign]);
        let err = check_ca_certificate(&der, now).unwrap_err();
        assert_eq!(err, ChainError::NoKeyCertSign { certificate: FACTORY.to_owned() });
        assert!(err.to_string().contains("keyCertSign"), "{err}");
    }

    #[test]
    fn a_ca_outside_its_validity_is_refused() {
        let der = lone_ca(|_| {});
        assert_eq!(
            check_ca_certificate(&der, at(1_800_000_001)).unwrap_err(),
            ChainError::Expired { certificate: FACTORY.to_owned(), not_after: at(1_800_000_000) }
        );
        assert_eq!(
            check_ca_certificate(&der, at(1_699_999_999)).unwrap_err(),
            ChainError::NotYetValid { certificate: FACTORY.to_owned(), not_before: at(1_700_000_000) }
        );
    }

    #[test]
    fn a_ca_with_an_unknown_critical_extension_is_refused() {
        let der = lone_ca(|p| {
            let mut ext = rcgen::CustomExtension::from_oid_content(&[1, 2, 3, 4, 5], vec![0x05, 0x00]);
            ext.set_criticality(true);
            p.custom_extensions.push(ext);
        });
        assert_eq!(
            check_ca_certificate(&der, at(1_750_000_000)).unwrap_err(),
            ChainError::UnsupportedCriticalExtension { certificate: FACTORY.to_owned(), extension: "1.2.3.4.5".into() }
        );
    }

    #[test]
    fn malformed_ca_certificates_are_refused_strictly() {
        let now = at(1_750_000_000);
        let der = lone_ca(|_| {});
        let malformed = |bytes: &[u8]| match check_ca_certificate(bytes, now) {
            Err(ChainError::Malformed { certificate, reason }) => {
                assert_eq!(certificate, "the CA certificate");
                reason
            }
            other => panic!("expected Malformed, got {other:?}"),
        };
        malformed(b"");
        malformed(&der[..der.len() - 1]);
        let mut trailing = der;
        trailing.push(0);
        assert!(malformed(&trailing).contains("1 bytes follow"));
    }

    proptest::proptest! {
        #[test]
        fn check_ca_certificate_never_panics(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..400)) {
            let _ = check_ca_certificate(&bytes, at(1_750_000_000));
        }
    }
}
