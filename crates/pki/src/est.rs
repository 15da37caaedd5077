//! EST (RFC 7030) bodies: certificates travel as a degenerate CMS SignedData, "certs-only" (RFC 7030 §4.1.3,
//! §4.2.3; RFC 5652 §5), base64-encoded with [`crate::pem::est_base64`].

use cms::cert::CertificateChoices;
use cms::cert::x509::Certificate;
use cms::content_info::ContentInfo;
use cms::signed_data::SignedData;
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

/// id-signedData (RFC 5652 §5.1).
const SIGNED_DATA: der::asn1::ObjectIdentifier = der::asn1::ObjectIdentifier::new_unwrap("1.2.840.113549.1.7.2");

/// The certificates (DER, in the message's order) of a certs-only message: what an EST client reads from
/// `/simplereenroll` (the agent, issue #20). Refuses anything that is not a SignedData.
pub fn certificates_of_pkcs7(der: &[u8]) -> Result<Vec<Vec<u8>>, Pkcs7Error> {
    let malformed = |reason: String| Pkcs7Error::Malformed { index: 0, reason };
    let message = ContentInfo::from_der(der).map_err(|e| malformed(e.to_string()))?;
    if message.content_type != SIGNED_DATA {
        return Err(malformed(format!("the content type is {}, not signedData", message.content_type)));
    }
    let signed: SignedData = message.content.decode_as().map_err(|e| malformed(e.to_string()))?;
    let mut certificates = Vec::new();
    for choice in signed.certificates.iter().flat_map(|set| set.0.iter()) {
        if let CertificateChoices::Certificate(certificate) = choice {
            certificates.push(certificate.to_der().map_err(|e| Pkcs7Error::Encoding(e.to_string()))?);
        }
    }
    if certificates.is_empty() {
        return Err(Pkcs7Error::Empty);
    }
    Ok(certificates)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn certificates_come_back_out_of_a_certs_only_message() {
        let certs: Vec<Vec<u8>> = (0..2)
            .map(|_| {
                let key = rcgen::KeyPair::generate().unwrap();
                rcgen::CertificateParams::default().self_signed(&key).unwrap().der().to_vec()
            })
            .collect();
        let mut read = certificates_of_pkcs7(&certs_only_pkcs7(&certs).unwrap()).unwrap();
        let mut expected = certs.clone();
        read.sort();
        expected.sort();
        assert_eq!(read, expected);
        assert!(matches!(certificates_of_pkcs7(&[0x30, 0x00]), Err(Pkcs7Error::Malformed { .. })));
        assert!(matches!(certificates_of_pkcs7(&certs[0]), Err(Pkcs7Error::Malformed { .. })));
    }

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
