//! EST (RFC 7030) bodies: certificates travel as a degenerate CMS SignedData, "certs-only" (RFC 7030 §4.1.3,
//! §4.2.3; RFC 5652 §5), base64-encoded with [`crate::pem::est_base64`].

use cms::cert::x509::Certificate;
use cms::content_info::ContentInfo;
use der::{Decode, Encode};

/// Why a certs-only message could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Pkcs7Error {
    /// A certificate does not decode.
    #[error("certificate {index} is not a valid DER X.509 certificate: {reason}")]
    Malformed {
        /// Its position (1-based).
        index: usize,
        /// What is wrong.
        reason: String,
    },
    /// No certificates were given.
    #[error("a certs-only message needs at least one certificate")]
    Empty,
    /// Encoding failed.
    #[error("encoding the certs-only message failed: {0}")]
    Encoding(String),
}

/// A DER CMS ContentInfo holding a SignedData with the certificates, no content and no signers (what
/// `/cacerts`, `/simpleenroll` and `/simplereenroll` answer). The certificates form a SET, so DER orders them.
pub fn certs_only_pkcs7(certificates: &[Vec<u8>]) -> Result<Vec<u8>, Pkcs7Error> {
    if certificates.is_empty() {
        return Err(Pkcs7Error::Empty);
    }
    let parsed = certificates
        .iter()
        .enumerate()
        .map(|(i, der)| {
            Certificate::from_der(der).map_err(|e| Pkcs7Error::Malformed { index: i + 1, reason: e.to_string() })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let message = ContentInfo::try_from(parsed).map_err(|e| Pkcs7Error::Encoding(e.to_string()))?;
    message.to_der().map_err(|e| Pkcs7Error::Encoding(e.to_string()))
}
