//! X.509 attestation (`azure-dps-wire.md` §4): which enrollment a device's certificate chain matches.
//!
//! The chain comes unjudged from the TLS handshake (which did prove that the device holds the leaf's key). Order:
//! an operational certificate we issued (renewal), then the individual enrollment of the leaf's CN (matched by
//! thumbprint), then the enrollment group whose CA sits closest to the leaf in the device's chain ("the first
//! intermediate, and so on down to the root"). Every chain check is `zerotouch_pki::verify_chain`.

use time::OffsetDateTime;
use zerotouch_pki::{CertificateDetails, ChainError};
use zerotouch_store::EnrollmentRecord;
use zerotouch_wire::ErrorCode;
use zerotouch_wire::enrollment::{X509Attestation, X509CertificateWithInfo};
use zerotouch_wire::registration::X509CertificateInfo;

use crate::error::ApiError;

/// A CA a device chain may end at: a group's signing certificate, or an uploaded CA it references.
#[derive(Debug, Clone)]
pub struct Anchor {
    /// The CA certificate, DER.
    pub der: Vec<u8>,
    /// Whether it may be used: signing certificates are, uploaded CAs once their proof of possession is done.
    pub verified: bool,
}

/// An X.509 enrollment group with its anchors, parsed once per reference refresh.
#[derive(Debug, Clone)]
pub struct X509Group {
    /// The group.
    pub group: EnrollmentRecord,
    /// Its CAs, primary first.
    pub anchors: Vec<Anchor>,
}

/// A certificate's `X509CertificateInfo` (§1.4); upper-case hex as Azure shows it.
pub fn info(der: &[u8]) -> Option<X509CertificateInfo> {
    let d: CertificateDetails = zerotouch_pki::details(der).ok()?;
    let at = |t: OffsetDateTime| zerotouch_wire::format_timestamp(crate::pki::to_chrono(t));
    Some(X509CertificateInfo {
        subject_name: d.subject,
        sha1_thumbprint: d.sha1_hex.to_ascii_uppercase(),
        sha256_thumbprint: d.sha256_hex.to_ascii_uppercase(),
        issuer_name: d.issuer,
        not_before_utc: at(d.not_before),
        not_after_utc: at(d.not_after),
        serial_number: d.serial_hex.to_ascii_uppercase(),
        version: d.version,
    })
}

/// The X.509 attestation of a stored enrollment document.
pub fn attestation(enrollment: &EnrollmentRecord) -> Option<X509Attestation> {
    let x509 = enrollment.document.get("attestation")?.get("x509")?.clone();
    serde_json::from_value(x509).ok()
}

fn certificates(pair: Option<&zerotouch_wire::enrollment::X509Certificates>) -> Vec<Vec<u8>> {
    let Some(pair) = pair else { return Vec::new() };
    [&pair.primary, &pair.secondary]
        .into_iter()
        .flatten()
        .filter_map(|c: &X509CertificateWithInfo| zerotouch_pki::certificate_from_text(c.certificate.as_deref()?).ok())
        .collect()
}

/// Whether `leaf` is one of the device certificates of an individual X.509 enrollment (by SHA-256 thumbprint).
pub fn individual_matches(enrollment: &EnrollmentRecord, leaf: &[u8]) -> bool {
    let Some(x509) = attestation(enrollment) else { return false };
    let leaf = zerotouch_pki::sha256(leaf);
    certificates(x509.client_certificates.as_ref()).iter().any(|c| zerotouch_pki::sha256(c) == leaf)
}

/// The anchors of an X.509 group: its signing certificates, or the uploaded CAs its `caReferences` name (looked
/// up by `ca`, which answers the CA's certificate and whether it is verified).
pub fn group_anchors(group: &EnrollmentRecord, ca: impl Fn(&str) -> Option<Anchor>) -> Vec<Anchor> {
    let Some(x509) = attestation(group) else { return Vec::new() };
    if let Some(refs) = &x509.ca_references {
        return [&refs.primary, &refs.secondary].into_iter().flatten().filter_map(|name| ca(name)).collect();
    }
    certificates(x509.signing_certificates.as_ref()).into_iter().map(|der| Anchor { der, verified: true }).collect()
}

/// The refusal for a chain error, with its documented code.
pub fn refusal(error: &ChainError) -> ApiError {
    let code = match error {
        ChainError::Expired { .. } => ErrorCode::CertificateExpired,
        ChainError::NotYetValid { .. } => ErrorCode::CertificateNotYetValid,
        ChainError::UnknownCa { .. } => ErrorCode::UnknownCertificateAuthority,
        _ => ErrorCode::InvalidCertificateChain,
    };
    ApiError::DeviceCertificate { code, message: error.to_string() }
}

/// Checks the validity period of a device certificate matched by thumbprint (an individual enrollment's).
pub fn check_validity(leaf: &[u8], now: OffsetDateTime) -> Result<(), ApiError> {
    zerotouch_pki::check_certificate_validity(leaf, now).map_err(|e| refusal(&e))
}

/// The group (index into `groups`) and anchor whose CA sits closest to the leaf in a chain that verifies; else
/// the most telling refusal: a chain error met on the way to some anchor, an unverified CA, or an unknown CA.
pub fn match_group<'a>(
    leaf: &[u8],
    intermediates: &[Vec<u8>],
    groups: &'a [X509Group],
    now: OffsetDateTime,
) -> Result<(usize, &'a Anchor), ApiError> {
    match_group_by(leaf, intermediates, groups, now, zerotouch_pki::verify_chain)
}

/// A chain check: (leaf, intermediates, anchor, now), as `zerotouch_pki::verify_chain`.
pub type ChainCheck = fn(&[u8], &[Vec<u8>], &[u8], OffsetDateTime) -> Result<zerotouch_pki::VerifiedChain, ChainError>;

/// [`match_group`] with another chain check (TPM groups judge EK certificates with
/// `zerotouch_pki::verify_endorsement_chain`).
pub fn match_group_by<'a>(
    leaf: &[u8],
    intermediates: &[Vec<u8>],
    groups: &'a [X509Group],
    now: OffsetDateTime,
    verify: ChainCheck,
) -> Result<(usize, &'a Anchor), ApiError> {
    let mut best: Option<(usize, usize, &Anchor)> = None;
    let mut unverified = false;
    let mut first_error: Option<ChainError> = None;
    for (index, group) in groups.iter().enumerate() {
        for anchor in &group.anchors {
            match verify(leaf, intermediates, &anchor.der, now) {
                Ok(chain) if anchor.verified => {
                    let depth = chain.path.len();
                    if best.is_none_or(|(d, _, _)| depth < d) {
                        best = Some((depth, index, anchor));
                    }
                }
                Ok(_) => unverified = true,
                Err(ChainError::UnknownCa { .. }) => {}
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
    }
    if let Some((_, index, anchor)) = best {
        return Ok((index, anchor));
    }
    if let Some(error) = first_error {
        return Err(refusal(&error));
    }
    if unverified {
        return Err(ApiError::DeviceCertificate {
            code: ErrorCode::CertificateAuthorityNotVerified,
            message: "the device's chain leads to an uploaded certificate authority whose proof of possession is not \
                      done (POST /certificateAuthorities/{name}/verificationCode, then .../verify)"
                .into(),
        });
    }
    Err(ApiError::DeviceCertificate {
        code: ErrorCode::UnknownCertificateAuthority,
        message: "the device's certificate chain leads to no certificate authority of an enrollment".into(),
    })
}
