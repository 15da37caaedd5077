//! `Authorization: SharedAccessSignature ...` (and the MQTT CONNECT password): `sas::parse` and `sas::verify`.
//!
//! Beyond "no panic": a parsed token written out again parses to the same fields; `verify` of any parsed token
//! against a fixed key never panics, for a device's audience and for the service's (shared access policies); and a
//! token `sign` makes for the parsed resource and expiry verifies with its key and with no other, for both.
#![no_main]

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use libfuzzer_sys::fuzz_target;
use percent_encoding::{NON_ALPHANUMERIC, percent_decode_str, utf8_percent_encode};
use zerotouch_attest::sas::{self, Audience, Expectation};

const KEY: &[u8] = b"0123456789abcdef0123456789abcdef";
const OTHER_KEY: &[u8] = b"fedcba9876543210fedcba9876543210";

fuzz_target!(|data: &[u8]| {
    let Ok(header) = std::str::from_utf8(data) else { return };
    let Ok(token) = sas::parse(header) else { return };

    // Written out again (sr and se verbatim, sig and skn encoded), it parses to the same fields.
    let sig: String = utf8_percent_encode(&STANDARD.encode(&token.signature), NON_ALPHANUMERIC).collect();
    let mut again = format!("SharedAccessSignature sr={}&sig={sig}&se={}", token.raw_resource, token.raw_expiry);
    if let Some(name) = &token.key_name {
        again.push_str("&skn=");
        again.extend(utf8_percent_encode(name, NON_ALPHANUMERIC));
    }
    let reparsed = sas::parse(&again).expect("a written-out token parses");
    assert_eq!(reparsed, token, "{again}");

    // Verifying the fuzzed token never panics, whatever it holds.
    let resource = percent_decode_str(token.raw_resource).decode_utf8_lossy().into_owned();
    let expected =
        Expectation { audience: Audience::Device(&resource), now: token.expiry, skew: 300, max_lifetime: 90_000 };
    let _ = sas::verify(&token, &expected, &[KEY, OTHER_KEY]);
    let hosts = [resource.clone(), "dps.example.com".to_owned()];
    let policy = token.key_name.clone().unwrap_or_default();
    let service = Expectation { audience: Audience::Service { host_names: &hosts, policy: &policy }, ..expected };
    let _ = sas::verify(&token, &service, &[KEY, OTHER_KEY]);

    // A token signed for this resource and expiry verifies with its key, and only with it.
    let Ok(decoded) = percent_decode_str(token.raw_resource).decode_utf8() else { return };
    let signed = sas::sign(token.raw_resource, token.expiry, KEY, Some("registration"));
    let signed = sas::parse(&signed).expect("a signed token parses");
    let fresh = Expectation {
        audience: Audience::Device(&decoded),
        now: token.expiry.saturating_sub(1),
        skew: 1,
        max_lifetime: 60,
    };
    assert_eq!(sas::verify(&signed, &fresh, &[OTHER_KEY, KEY]), Ok(1));
    assert_eq!(sas::verify(&signed, &fresh, &[OTHER_KEY]), Err(sas::SasError::BadSignature));

    // Signed by a policy for a host name (no port, no trailing slash): verifies as the service's, with its key only.
    if !decoded.contains(':') && !decoded.ends_with('/') {
        let signed = sas::sign(token.raw_resource, token.expiry, KEY, Some("automation"));
        let signed = sas::parse(&signed).expect("a signed token parses");
        let hosts = [decoded.clone().into_owned()];
        let service = Expectation { audience: Audience::Service { host_names: &hosts, policy: "Automation" }, ..fresh };
        assert_eq!(sas::verify(&signed, &service, &[OTHER_KEY, KEY]), Ok(1));
        assert_eq!(sas::verify(&signed, &service, &[OTHER_KEY]), Err(sas::SasError::BadSignature));
    }
});
