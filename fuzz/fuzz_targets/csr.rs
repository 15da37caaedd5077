//! A device's CSR (DER PKCS#10, from a register body's `csr` or an EST request): `check_csr`.
//!
//! Beyond "no panic": a CSR that passes has the registration id as its CN and a key the policy allows, and a CSR
//! that passes without RSA allowed passes the same way with it.
#![no_main]

use libfuzzer_sys::fuzz_target;
use zerotouch_pki::csr::MIN_RSA_BITS;
use zerotouch_pki::{DeviceKeyType, KeyPolicy, check_csr};

/// The CN of the seed CSRs that carry a valid signature.
const REGISTRATION_ID: &str = "device-1";

fuzz_target!(|data: &[u8]| {
    let strict = check_csr(data, REGISTRATION_ID, &KeyPolicy { allow_rsa: false });
    let lenient = check_csr(data, REGISTRATION_ID, &KeyPolicy { allow_rsa: true });
    if let Ok(checked) = &strict {
        assert!(!matches!(checked.key_type(), DeviceKeyType::Rsa { .. }));
        assert_eq!(lenient.as_ref(), Ok(checked));
    }
    if let Ok(checked) = &lenient {
        assert_eq!(checked.common_name(), REGISTRATION_ID);
        assert!(!checked.public_key_der().is_empty());
        if let DeviceKeyType::Rsa { bits } = checked.key_type() {
            assert!(bits >= MIN_RSA_BITS, "{bits}-bit RSA accepted");
        }
    }
});
