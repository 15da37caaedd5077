//! Certificates as admins and enrollment documents give them, PEM or base64 DER: `certificate_from_text` and
//! `certificates_from_pem`.
//!
//! Beyond "no panic": the certificate read, written as PEM or as EST base64, reads back to the same bytes; a PEM
//! chain written as a trust bundle reads back to the same certificates, each once.
#![no_main]

use libfuzzer_sys::fuzz_target;
use zerotouch_pki::{certificate_from_text, certificate_pem, certificates_from_pem, est_base64, trust_bundle_pem};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(der) = certificate_from_text(text) {
        assert_eq!(certificate_from_text(&est_base64(&der)).as_ref(), Ok(&der));
        if !der.is_empty() {
            assert_eq!(certificate_from_text(&certificate_pem(&der)).as_ref(), Ok(&der));
        }
    }
    if let Ok(chain) = certificates_from_pem(text) {
        let mut once: Vec<Vec<u8>> = Vec::new();
        for der in &chain {
            if !once.contains(der) {
                once.push(der.clone());
            }
        }
        if once.iter().all(|der| !der.is_empty()) {
            assert_eq!(certificates_from_pem(&trust_bundle_pem(&chain)), Ok(once));
        }
    }
});
