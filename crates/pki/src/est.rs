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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn certs_only_refuses_nothing_and_garbage_and_holds_each_certificate() {
        assert_eq!(certs_only_pkcs7(&[]).unwrap_err(), Pkcs7Error::Empty);
        assert!(matches!(certs_only_pkcs7(&[vec![1, 2, 3]]), Err(Pkcs7Error::Malformed { index: 1, .. })));
        let cert = rcgen::CertificateParams::default().self_signed(&rcgen::KeyPair::generate().unwrap()).unwrap();
        let der = certs_only_pkcs7(&[cert.der().to_vec()]).unwrap();
        // ContentInfo with contentType signedData (1.2.840.113549.1.7.2), and the certificate inside.
        let signed_data_oid = [0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x07, 0x02];
        assert!(der.windows(signed_data_oid.len()).any(|w| w == signed_data_oid));
        assert!(der.windows(cert.der().len()).any(|w| w == cert.der().as_ref()));
    }
}
