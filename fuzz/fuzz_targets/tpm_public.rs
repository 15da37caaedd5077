//! A TPM's `TPM2B_PUBLIC` (the EK and SRK of a register body, an enrollment's `endorsementKey`): `Public::parse`,
//! `from_base64`, `name`, `same_key`, `check_activation_key`, and the activation blob built to the key.
//!
//! Beyond "no panic": a parsed key marshals back to exactly the input (its name is computed over those bytes), parses
//! the same from base64 and as a bare `TPMT_PUBLIC`, has a name of `nameAlg`'s size, is the same key as itself, and
//! a key that qualifies for activation gets a blob of six well-formed fields, or an error.
#![no_main]

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use libfuzzer_sys::fuzz_target;
use zerotouch_tpm::activation::ActivationParts;
use zerotouch_tpm::public::{ALG_SHA1, ALG_SHA256, ALG_SHA384, ALG_SHA512};
use zerotouch_tpm::{Public, PublicKey, build_activation_blob};

fuzz_target!(|data: &[u8]| {
    let Ok(public) = Public::parse(data) else { return };
    assert_eq!(public.tpm2b_bytes(), data);
    assert_eq!(Public::parse_tpmt(public.tpmt_bytes()).as_ref(), Ok(&public));
    assert_eq!(Public::from_base64(&STANDARD.encode(data)).as_ref(), Ok(&public));

    let digest = match public.name_alg() {
        ALG_SHA1 => 0, // not computed (see `Public::name`)
        ALG_SHA256 => 32,
        ALG_SHA384 => 48,
        ALG_SHA512 => 64,
        other => panic!("nameAlg 0x{other:04x} parsed"),
    };
    assert_eq!(public.name().len(), 2 + digest);
    if matches!(public.key(), PublicKey::Rsa { .. } | PublicKey::Ecc { .. }) {
        assert!(public.same_key(&public));
    }

    if public.check_activation_key("endorsement key").is_ok() {
        if let Ok(blob) = build_activation_blob(&public, &public, &[7; 32]) {
            let parts = ActivationParts::split(blob.as_bytes()).expect("a blob splits into its fields");
            assert_eq!(parts.enc_uri_data, Some(&[0u8, 0][..]));
        }
    }
});
