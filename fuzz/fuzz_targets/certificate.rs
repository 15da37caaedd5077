//! One DER certificate (a device's TLS certificate, an EK certificate, an uploaded CA): `details`, `subject_cn`,
//! `rsa_public_key`, `check_ca_certificate`, `check_certificate_validity`, `certificate_info`.
//!
//! Beyond "no panic": every reader agrees on whether the bytes are a certificate; the details and Azure's info carry
//! the thumbprints, serial and version of these bytes; a CN is at most 64 characters; a certificate is valid at its own `notBefore` when that is not
//! after its `notAfter`; an accepted CA has the same details.
#![no_main]

use libfuzzer_sys::fuzz_target;
use zerotouch_pki::certificate::MAX_COMMON_NAME_CHARS;
use zerotouch_pki::{
    CertificateError, certificate_info, check_ca_certificate, check_certificate_validity, details, rsa_public_key,
    subject_cn, thumbprint_sha1_hex, thumbprint_sha256_hex,
};

fuzz_target!(|data: &[u8]| {
    let parsed = details(data);
    let cn = subject_cn(data);
    assert_eq!(parsed.is_ok(), rsa_public_key(data).is_ok());
    assert_eq!(parsed.is_err(), matches!(cn, Err(CertificateError::Malformed(_))));
    if let Ok(cn) = &cn {
        assert!(cn.chars().count() <= MAX_COMMON_NAME_CHARS);
    }
    let info = certificate_info(data);
    assert_eq!(parsed.is_ok(), info.is_ok());
    let Ok(parsed) = parsed else { return };
    if let Ok(info) = info {
        assert_eq!(info.sha256_thumbprint, parsed.sha256_hex.to_ascii_uppercase());
        assert_eq!(info.sha1_thumbprint, parsed.sha1_hex.to_ascii_uppercase());
        assert_eq!(info.serial_number, parsed.serial_hex.to_ascii_uppercase());
        assert_eq!(info.version, parsed.version);
    }
    assert_eq!(parsed.sha256_hex, thumbprint_sha256_hex(data));
    assert_eq!(parsed.sha1_hex, thumbprint_sha1_hex(data));
    let now = parsed.not_before;
    let validity = check_certificate_validity(data, now);
    if parsed.not_before <= parsed.not_after {
        assert_eq!(validity, Ok(()));
    }
    if let Ok(ca) = check_ca_certificate(data, now) {
        assert_eq!(ca, parsed);
    }
});
