//! Azure's `X509CertificateInfo` of a certificate, and the `info` blocks of an enrollment's X.509 attestation
//! (`docs/protocol/device-api.md` §1.4 and §6).
//!
//! Its own module because both APIs show certificates this way (a device's registration result, an enrollment's
//! `clientCertificates` / `signingCertificates`, the custom allocation webhook's `deviceRuntimeContext.x509`), and
//! Azure computes the block from the certificate alone, so this is one pure function of the DER bytes.
//!
//! Names are written as Azure (.NET's `X500DistinguishedName`) writes them: the most specific RDN first
//! (`CN=device-1, OU=Line 2, O=Acme, C=DE` for a certificate made with `-subj /C=DE/O=Acme/OU=Line 2/CN=device-1`),
//! RDNs joined by `, `, the attributes of a multi-valued RDN by ` + `, and a value holding a character with a
//! meaning in the notation (`,+="<>#;` or a line break) in double quotes, its own quotes doubled. Hex (thumbprints,
//! serial number) is upper-case; times are UTC, in whole seconds without a fraction (`2026-01-02T03:04:05Z`).

use serde_json::Value;
use x509_parser::certificate::X509Certificate;
use x509_parser::x509::X509Name;
use zerotouch_wire::registration::X509CertificateInfo;

use crate::certificate::{CertificateError, parse, thumbprint_sha1_hex, thumbprint_sha256_hex, time_of};

/// The `X509CertificateInfo` of a DER certificate.
pub fn certificate_info(der: &[u8]) -> Result<X509CertificateInfo, CertificateError> {
    let cert = parse(der).map_err(CertificateError::Malformed)?;
    Ok(info_of(&cert, der))
}

/// The `X509CertificateInfo` of `cert`, parsed from `der`.
fn info_of(cert: &X509Certificate<'_>, der: &[u8]) -> X509CertificateInfo {
    // Whole seconds (all a certificate holds), written as .NET's JSON writes such a time: no fraction.
    let at = |t: x509_parser::time::ASN1Time| {
        chrono::DateTime::from_timestamp(time_of(t).unix_timestamp(), 0)
            .unwrap_or_default()
            .to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true)
    };
    X509CertificateInfo {
        subject_name: distinguished_name(cert.subject()),
        sha1_thumbprint: thumbprint_sha1_hex(der).to_ascii_uppercase(),
        sha256_thumbprint: thumbprint_sha256_hex(der).to_ascii_uppercase(),
        issuer_name: distinguished_name(cert.issuer()),
        not_before_utc: at(cert.validity().not_before),
        not_after_utc: at(cert.validity().not_after),
        serial_number: hex::encode_upper(cert.raw_serial()),
        version: cert.version().0 + 1,
    }
}

/// A distinguished name as Azure writes it (see the module comment).
pub fn distinguished_name(name: &X509Name<'_>) -> String {
    let rdns: Vec<String> = name
        .iter()
        .map(|rdn| {
            rdn.iter()
                .map(|attribute| {
                    let key = attribute_key(&attribute.attr_type().to_id_string());
                    let value = match attribute.as_str() {
                        Ok(text) => quoted(text),
                        // Not a string type: the DER of the value in hex, as RFC 4514 §2.4 writes it.
                        Err(_) => format!("#{}", hex::encode_upper(attribute.attr_value().data)),
                    };
                    format!("{key}={value}")
                })
                .collect::<Vec<_>>()
                .join(" + ")
        })
        .collect();
    rdns.into_iter().rev().collect::<Vec<_>>().join(", ")
}

/// The key .NET writes for an attribute type (`X500DistinguishedName`), else `OID.` and the dotted OID.
fn attribute_key(oid: &str) -> String {
    let known = match oid {
        "2.5.4.3" => "CN",
        "2.5.4.4" => "SN",
        "2.5.4.5" => "SERIALNUMBER",
        "2.5.4.6" => "C",
        "2.5.4.7" => "L",
        "2.5.4.8" => "S",
        "2.5.4.9" => "STREET",
        "2.5.4.10" => "O",
        "2.5.4.11" => "OU",
        "2.5.4.12" => "T",
        "2.5.4.42" => "G",
        "1.2.840.113549.1.9.1" => "E",
        "0.9.2342.19200300.100.1.25" => "DC",
        other => return format!("OID.{other}"),
    };
    known.to_owned()
}

/// A value in double quotes when it holds a character with a meaning in the notation (its quotes doubled).
fn quoted(text: &str) -> String {
    let special = |c: char| matches!(c, ',' | '+' | '=' | '"' | '<' | '>' | '#' | ';' | '\n' | '\r');
    let padded = text.starts_with(' ') || text.ends_with(' ');
    if text.chars().any(special) || padded { format!("\"{}\"", text.replace('"', "\"\"")) } else { text.to_owned() }
}

/// Fills the read-only `info` of every certificate of an enrollment document's X.509 attestation
/// (`attestation.x509.clientCertificates` / `signingCertificates`, `primary` and `secondary`), as Azure's
/// `X509CertificateWithInfo` carries it. A certificate that does not parse (normalization checked only its
/// outline) gets no `info`; nothing else in the document changes.
pub fn fill_certificate_infos(document: &mut Value) {
    let Some(x509) = document.pointer_mut("/attestation/x509").and_then(Value::as_object_mut) else { return };
    for set in ["clientCertificates", "signingCertificates"] {
        let Some(pair) = x509.get_mut(set).and_then(Value::as_object_mut) else { continue };
        for slot in ["primary", "secondary"] {
            let Some(entry) = pair.get_mut(slot).and_then(Value::as_object_mut) else { continue };
            let info = entry
                .get("certificate")
                .and_then(Value::as_str)
                .and_then(|text| crate::certificate_from_text(text).ok())
                .and_then(|der| certificate_info(&der).ok())
                .and_then(|info| serde_json::to_value(info).ok());
            match info {
                Some(info) => entry.insert("info".into(), info),
                None => entry.remove("info"),
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{CertificateParams, DnType, KeyPair};
    use serde_json::json;
    use time::OffsetDateTime;

    fn certificate(subject: &[(DnType, &str)]) -> Vec<u8> {
        let mut params = CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        for (ty, value) in subject {
            params.distinguished_name.push(ty.clone(), *value);
        }
        params.serial_number = Some(rcgen::SerialNumber::from_slice(&[0x0a, 0xbc, 0xde]));
        params.not_before = OffsetDateTime::from_unix_timestamp(1_767_323_045).unwrap_or(OffsetDateTime::UNIX_EPOCH);
        params.not_after = OffsetDateTime::from_unix_timestamp(1_798_859_045).unwrap_or(OffsetDateTime::UNIX_EPOCH);
        params.self_signed(&KeyPair::generate().unwrap()).unwrap().der().to_vec()
    }

    /// Every field as Azure shows it; the thumbprints are those of the bytes (checked here with the crate's own
    /// digests, which `certificate.rs` tests against openssl's), the times 2026-01-02T03:04:05Z and
    /// 2027-01-02T03:04:05Z.
    #[test]
    fn info_shows_names_most_specific_first_upper_hex_and_utc_times() {
        let der = certificate(&[
            (DnType::CountryName, "DE"),
            (DnType::OrganizationName, "Acme"),
            (DnType::OrganizationalUnitName, "Line 2"),
            (DnType::CommonName, "device-1"),
        ]);
        let info = certificate_info(&der).unwrap();
        assert_eq!(info.subject_name, "CN=device-1, OU=Line 2, O=Acme, C=DE");
        assert_eq!(info.issuer_name, info.subject_name, "self-signed");
        assert_eq!(info.serial_number, "0ABCDE");
        assert_eq!(info.version, 3);
        assert_eq!(info.not_before_utc, "2026-01-02T03:04:05Z");
        assert_eq!(info.not_after_utc, "2027-01-02T03:04:05Z");
        assert_eq!(info.sha1_thumbprint, thumbprint_sha1_hex(&der).to_ascii_uppercase());
        assert_eq!(info.sha256_thumbprint.len(), 64);
        assert!(info.sha256_thumbprint.chars().all(|c| c.is_ascii_digit() || c.is_ascii_uppercase()));
        let json = serde_json::to_value(&info).unwrap();
        let mut names: Vec<&str> = json.as_object().unwrap().keys().map(String::as_str).collect();
        names.sort_unstable();
        assert_eq!(
            names,
            [
                "issuerName",
                "notAfterUtc",
                "notBeforeUtc",
                "serialNumber",
                "sha1Thumbprint",
                "sha256Thumbprint",
                "subjectName",
                "version"
            ]
        );
    }

    #[test]
    fn values_with_special_characters_are_quoted() {
        let der = certificate(&[(DnType::OrganizationName, "Acme, \"Inc\""), (DnType::CommonName, "a+b")]);
        assert_eq!(certificate_info(&der).unwrap().subject_name, "CN=\"a+b\", O=\"Acme, \"\"Inc\"\"\"");
        assert_eq!(quoted("plain text"), "plain text");
        assert_eq!(quoted(" padded"), "\" padded\"");
        assert_eq!(attribute_key("2.5.4.8"), "S");
        assert_eq!(attribute_key("1.2.840.113549.1.9.1"), "E");
        assert_eq!(attribute_key("1.2.3.4"), "OID.1.2.3.4");
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert!(certificate_info(b"").is_err());
        assert!(certificate_info(&[0x30, 0x03, 0x02, 0x01, 0x01]).is_err());
        let mut der = certificate(&[(DnType::CommonName, "x")]);
        der.push(0);
        assert!(certificate_info(&der).is_err(), "trailing bytes");
    }

    /// `info` is filled for each certificate of either kind, replaced when a client sent one, and removed when the
    /// certificate does not parse; caReferences and other attestations are left alone.
    #[test]
    fn enrollment_documents_get_an_info_per_certificate() {
        use base64::Engine;
        let der = certificate(&[(DnType::CommonName, "device-1")]);
        let b64 = base64::engine::general_purpose::STANDARD.encode(&der);
        let pem = crate::certificate_pem(&der);
        let mut individual = json!({"attestation": {"type": "x509", "x509": {"clientCertificates": {
            "primary": {"certificate": pem, "info": {"subjectName": "forged"}},
            "secondary": {"certificate": "MAA="}
        }}}});
        fill_certificate_infos(&mut individual);
        let primary = &individual["attestation"]["x509"]["clientCertificates"]["primary"];
        assert_eq!(primary["info"]["subjectName"], "CN=device-1");
        assert_eq!(primary["certificate"], json!(pem), "the certificate text is kept as stored");
        assert!(individual["attestation"]["x509"]["clientCertificates"]["secondary"].get("info").is_none());

        let mut group = json!({"attestation": {"type": "x509", "x509": {"signingCertificates": {
            "primary": {"certificate": b64}
        }}}});
        fill_certificate_infos(&mut group);
        assert_eq!(group["attestation"]["x509"]["signingCertificates"]["primary"]["info"]["version"], 3);

        for unchanged in [
            json!({"attestation": {"type": "x509", "x509": {"caReferences": {"primary": "factory"}}}}),
            json!({"attestation": {"type": "symmetricKey"}}),
            json!({"attestation": {"type": "x509", "x509": {"clientCertificates": {"primary": "text"}}}}),
            json!("not an object"),
        ] {
            let mut document = unchanged.clone();
            fill_certificate_infos(&mut document);
            assert_eq!(document, unchanged);
        }
    }
}
