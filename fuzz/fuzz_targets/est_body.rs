//! The body of an EST `simpleenroll`/`simplereenroll` (RFC 7030 §4.2: base64 DER PKCS#10): `decode_est_base64`, then
//! `check_csr` as the server does.
//!
//! Beyond "no panic": what decodes, encoded again as EST bodies are, decodes to the same bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use zerotouch_pki::{KeyPolicy, check_csr, decode_est_base64, est_base64};

fuzz_target!(|data: &[u8]| {
    let Ok(der) = decode_est_base64(data) else { return };
    assert_eq!(decode_est_base64(est_base64(&der).as_bytes()).as_ref(), Ok(&der));
    if let Ok(checked) = check_csr(&der, "device-1", &KeyPolicy { allow_rsa: true }) {
        assert_eq!(checked.common_name(), "device-1");
    }
});
