//! PEM and the base64 of EST: writing certificates, CRLs and trust bundles, reading PEM chains.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;

/// Characters per base64 line (RFC 7468 §2 for PEM; within RFC 2045's 76 for EST).
const LINE: usize = 64;

/// base64 of `bytes`, in lines of 64 characters, each ended by `eol`.
fn wrapped_base64(bytes: &[u8], eol: &str) -> String {
    let text = STANDARD.encode(bytes);
    let mut out = String::with_capacity(text.len() + text.len() / LINE * eol.len() + eol.len());
    for chunk in text.as_bytes().chunks(LINE) {
        out.push_str(std::str::from_utf8(chunk).unwrap_or_default());
        out.push_str(eol);
    }
    out
}

/// One PEM block (RFC 7468) with the given label, LF line ends.
pub fn to_pem(label: &str, der: &[u8]) -> String {
    format!("-----BEGIN {label}-----\n{}-----END {label}-----\n", wrapped_base64(der, "\n"))
}

/// A DER certificate as PEM.
pub fn certificate_pem(der: &[u8]) -> String {
    to_pem("CERTIFICATE", der)
}

/// A DER CRL as PEM (`X509 CRL`, what `GET /pki/crl/{issuingCA}` answers on `Accept: application/x-pem-file`).
pub fn crl_pem(der: &[u8]) -> String {
    to_pem("X509 CRL", der)
}

/// The trust bundle devices and hubs are given: the PEM certificates, in the order given, each once.
pub fn trust_bundle_pem(certificates: &[Vec<u8>]) -> String {
    let mut seen: Vec<&[u8]> = Vec::new();
    let mut out = String::new();
    for der in certificates {
        if !seen.contains(&der.as_slice()) {
            seen.push(der);
            out.push_str(&certificate_pem(der));
        }
    }
    out
}

/// base64 as EST bodies carry it (RFC 7030 §4.1.3, §4.3.2: `Content-Transfer-Encoding: base64`, RFC 2045 lines,
/// CRLF-terminated).
pub fn est_base64(der: &[u8]) -> String {
    wrapped_base64(der, "\r\n")
}

/// Decodes an EST base64 body (RFC 7030 §4.2.1: a base64 PKCS#10), ignoring line breaks and other white space.
pub fn decode_est_base64(text: &[u8]) -> Result<Vec<u8>, String> {
    let compact: Vec<u8> = text.iter().copied().filter(|b| !b.is_ascii_whitespace()).collect();
    STANDARD.decode(compact).map_err(|e| format!("the body is not base64: {e}"))
}

/// The one certificate of a text that is either PEM (exactly one `CERTIFICATE` block) or base64 DER (whitespace
/// ignored), as admins and enrollment documents give certificates.
pub fn certificate_from_text(text: &str) -> Result<Vec<u8>, String> {
    if text.contains("-----BEGIN") {
        let mut certificates = certificates_from_pem(text)?;
        if certificates.len() != 1 {
            return Err(format!("holds {} certificates; give exactly one", certificates.len()));
        }
        return Ok(certificates.remove(0));
    }
    let compact: String = text.chars().filter(|c| !c.is_ascii_whitespace()).collect();
    STANDARD.decode(compact).map_err(|_| "is neither a PEM certificate nor base64 DER".to_owned())
}

/// The DER certificates of PEM text, in order. Anything but `CERTIFICATE` blocks is an error.
pub fn certificates_from_pem(text: &str) -> Result<Vec<Vec<u8>>, String> {
    let mut certificates = Vec::new();
    for block in x509_parser::pem::Pem::iter_from_buffer(text.as_bytes()) {
        let block = block.map_err(|e| format!("a PEM block does not decode: {e}"))?;
        if block.label != "CERTIFICATE" {
            return Err(format!("a PEM block is \"{}\", not \"CERTIFICATE\"", block.label));
        }
        certificates.push(block.contents);
    }
    if certificates.is_empty() {
        return Err("no PEM certificate found".to_owned());
    }
    Ok(certificates)
}

/// The DER of the single PEM block with `label`.
pub(crate) fn decode_one(text: &str, label: &str) -> Result<Vec<u8>, String> {
    let mut blocks = x509_parser::pem::Pem::iter_from_buffer(text.as_bytes());
    let block = blocks
        .next()
        .ok_or_else(|| format!("no PEM \"{label}\" block found"))?
        .map_err(|e| format!("the PEM block does not decode: {e}"))?;
    if block.label != label {
        return Err(format!("the PEM block is \"{}\", not \"{label}\"", block.label));
    }
    if blocks.next().is_some() {
        return Err(format!("more than one PEM block where one \"{label}\" was expected"));
    }
    Ok(block.contents)
}

#[cfg(test)]
mod tests {

    #[test]
    fn a_certificate_text_is_one_pem_block_or_base64_der() {
        let der = rcgen::CertificateParams::default()
            .self_signed(&rcgen::KeyPair::generate().unwrap())
            .unwrap()
            .der()
            .to_vec();
        let pem = certificate_pem(&der);
        assert_eq!(certificate_from_text(&pem).unwrap(), der);
        assert_eq!(certificate_from_text(&format!(" {}\n", STANDARD.encode(&der))).unwrap(), der);
        assert!(certificate_from_text(&format!("{pem}{pem}")).unwrap_err().contains("exactly one"));
        assert!(certificate_from_text("not base64!").unwrap_err().contains("neither"));
    }

    use super::*;

    #[test]
    fn pem_lines_are_64_characters_and_round_trip() {
        let der: Vec<u8> = (0..=255u8).collect();
        let pem = certificate_pem(&der);
        let lines: Vec<&str> = pem.lines().collect();
        assert_eq!(lines.first(), Some(&"-----BEGIN CERTIFICATE-----"));
        assert_eq!(lines.last(), Some(&"-----END CERTIFICATE-----"));
        assert!(lines[1..lines.len() - 1].iter().all(|line| line.len() <= 64));
        assert_eq!(lines[1].len(), 64);
        assert_eq!(certificates_from_pem(&pem).unwrap(), vec![der]);
    }

    #[test]
    fn trust_bundles_keep_order_and_drop_repeats() {
        let bundle = trust_bundle_pem(&[vec![1], vec![2], vec![1]]);
        assert_eq!(certificates_from_pem(&bundle).unwrap(), vec![vec![1], vec![2]]);
    }

    #[test]
    fn est_base64_uses_crlf_lines_and_decodes_with_any_white_space() {
        let der = vec![7u8; 100];
        let text = est_base64(&der);
        assert!(text.ends_with("\r\n"));
        assert!(text.split("\r\n").all(|line| line.len() <= 64));
        assert_eq!(decode_est_base64(text.as_bytes()).unwrap(), der);
        assert_eq!(decode_est_base64(text.replace("\r\n", " \n").as_bytes()).unwrap(), der);
        assert!(decode_est_base64(b"not base64!").is_err());
    }

    #[test]
    fn other_pem_blocks_are_named_in_the_refusal() {
        let key = to_pem("PRIVATE KEY", &[1, 2, 3]);
        assert!(certificates_from_pem(&key).unwrap_err().contains("PRIVATE KEY"));
        assert!(certificates_from_pem("nothing").is_err());
        assert!(decode_one(&format!("{key}{key}"), "PRIVATE KEY").unwrap_err().contains("more than one"));
    }
}
