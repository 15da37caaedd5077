//! EST (RFC 7030) bodies: certificates travel as a degenerate CMS SignedData, "certs-only" (RFC 7030 §4.1.3,
//! §4.2.3; RFC 5652 §5), base64-encoded with [`crate::pem::est_base64`].

use cms::cert::CertificateChoices;
use cms::content_info::ContentInfo;
use cms::signed_data::SignedData;
use der::{Decode, Encode, Tagged};

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
///
/// The message is written around the certificates' own bytes: each is checked to be one DER element, not decoded
/// and encoded again (which cost an EST call about a tenth of the service's CPU, BENCHMARKS.md, issue #21).
pub fn certs_only_pkcs7(certificates: &[Vec<u8>]) -> Result<Vec<u8>, Pkcs7Error> {
    if certificates.is_empty() {
        return Err(Pkcs7Error::Empty);
    }
    for (i, der) in certificates.iter().enumerate() {
        let malformed = |reason: String| Pkcs7Error::Malformed { index: i + 1, reason };
        let element = der::asn1::AnyRef::from_der(der).map_err(|e| malformed(e.to_string()))?;
        if element.tag() != der::Tag::Sequence {
            return Err(malformed(format!("it is a {}, not a SEQUENCE", element.tag())));
        }
    }
    // X.690 §11.6: a SET OF in DER is ordered by its elements' encodings. A whole DER element is never a prefix of
    // another (its header fixes its length), so the slices' byte order is that order.
    let mut sorted: Vec<&[u8]> = certificates.iter().map(Vec::as_slice).collect();
    sorted.sort_unstable();
    let set: Vec<u8> = sorted.concat();
    let mut signed_data = Vec::with_capacity(set.len() + 32);
    signed_data.extend_from_slice(&[0x02, 0x01, 0x01]); // version CMSVersion v1
    signed_data.extend_from_slice(&[0x31, 0x00]); // digestAlgorithms: none
    signed_data.extend(element(0x30, &ID_DATA)); // encapContentInfo: id-data, no content
    signed_data.extend(element(0xa0, &set)); // certificates [0] IMPLICIT SET OF
    signed_data.extend_from_slice(&[0xa1, 0x00]); // crls [1] IMPLICIT: none (present and empty, as cms writes it)
    signed_data.extend_from_slice(&[0x31, 0x00]); // signerInfos: none
    let mut content_info = SIGNED_DATA_OID.to_vec();
    content_info.extend(element(0xa0, &element(0x30, &signed_data))); // content [0] EXPLICIT SignedData
    Ok(element(0x30, &content_info))
}

/// The DER encoding of id-data (1.2.840.113549.1.7.1), RFC 5652 §4.
const ID_DATA: [u8; 11] = [0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x07, 0x01];

/// The DER encoding of id-signedData (1.2.840.113549.1.7.2), RFC 5652 §5.1.
const SIGNED_DATA_OID: [u8; 11] = [0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x07, 0x02];

/// One DER element: `tag`, the definite length of `content` (X.690 §8.1.3, shortest form) and `content`.
fn element(tag: u8, content: &[u8]) -> Vec<u8> {
    let len = content.len();
    let significant = usize::BITS / 8 - len.leading_zeros() / 8;
    let mut out = Vec::with_capacity(content.len() + 10);
    out.push(tag);
    if len < 0x80 {
        out.push(len as u8);
    } else {
        out.push(0x80 | significant as u8);
        out.extend_from_slice(&len.to_be_bytes()[(usize::BITS / 8 - significant) as usize..]);
    }
    out.extend_from_slice(content);
    out
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

    /// The message is byte for byte what the `cms` crate encodes from the decoded certificates (the SET in DER
    /// order), for one to three certificates of different sizes, in either order.
    #[test]
    fn certs_only_is_what_cms_encodes() {
        use cms::cert::x509::Certificate;
        let certificate = |names: usize| {
            let mut params = rcgen::CertificateParams::new(
                (0..names).map(|n| format!("device-{n}.example.com")).collect::<Vec<_>>(),
            )
            .unwrap();
            params.serial_number = Some(rcgen::SerialNumber::from_slice(&[0x40, u8::try_from(names).unwrap()]));
            params.self_signed(&rcgen::KeyPair::generate().unwrap()).unwrap().der().to_vec()
        };
        let (small, medium, large) = (certificate(0), certificate(3), certificate(200));
        assert!(
            small.len() < 0x200 && large.len() > 0x1000,
            "one- and two-byte lengths: {} {}",
            small.len(),
            large.len()
        );
        for chain in [
            vec![small.clone()],
            vec![large.clone()],
            vec![medium.clone(), small.clone()],
            vec![small.clone(), medium.clone(), large.clone()],
            vec![large, small, medium],
        ] {
            let decoded = chain.iter().map(|der| Certificate::from_der(der).unwrap()).collect::<Vec<_>>();
            let expected = ContentInfo::try_from(decoded).unwrap().to_der().unwrap();
            assert_eq!(certs_only_pkcs7(&chain).unwrap(), expected);
        }
        assert_eq!(SIGNED_DATA_OID.as_slice(), SIGNED_DATA.to_der().unwrap());
        let id_data = der::asn1::ObjectIdentifier::new_unwrap("1.2.840.113549.1.7.1");
        assert_eq!(ID_DATA.as_slice(), id_data.to_der().unwrap());
    }

    /// Definite lengths in their shortest form, as the `der` crate writes them.
    #[test]
    fn element_lengths_are_der() {
        for len in [0, 1, 0x7f, 0x80, 0xff, 0x100, 0xffff, 0x1_0000, 0xff_ffff, 0x100_0000] {
            let content = vec![0u8; len];
            let encoded = element(0x04, &content);
            let header = der::Header::new(der::Tag::OctetString, der::Length::try_from(len).unwrap()).unwrap();
            assert_eq!(encoded[..encoded.len() - len], header.to_der().unwrap(), "length {len}");
        }
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
