//! The body of a register (HTTPS `PUT .../register`, MQTT `iotdps-register`), TPM first legs included: JSON into
//! `DeviceRegistration` through `field::decode`, then what the server parses out of it (`tpm.endorsementKey` and
//! `tpm.storageRootKey` as `TPM2B_PUBLIC`, `tpm.endorsementKeyCertificate`, `csr`).
//!
//! `parse_json` and `registration_body` below are copies of the server's
//! (`crates/server/src/registration/request.rs`): a blank-body check around `serde_json` and `field::decode`.
//! Depending on `zerotouch-server` for them would build actix, ntex, sea-orm and sqlx with sanitizers into every fuzz
//! run (minutes of CI time) to reach six lines; keep the copies equal to the originals.
//!
//! Beyond "no panic": an empty or blank body is no body; a decoded body serialized again decodes to the same.
#![no_main]

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use libfuzzer_sys::fuzz_target;
use zerotouch_pki::{KeyPolicy, certificate_from_text, check_csr, rsa_public_key};
use zerotouch_tpm::Public;
use zerotouch_wire::device::DeviceRegistration;
use zerotouch_wire::field::FieldError;

/// `zerotouch_server::registration::request::parse_json`.
fn parse_json(body: &[u8]) -> Result<Option<serde_json::Value>, serde_json::Error> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    Ok(Some(serde_json::from_slice(body)?))
}

/// `zerotouch_server::registration::request::registration_body`.
fn registration_body(body: Option<serde_json::Value>) -> Result<DeviceRegistration, FieldError> {
    match body {
        None | Some(serde_json::Value::Null) => Ok(DeviceRegistration::default()),
        Some(value) => zerotouch_wire::field::decode(value),
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(json) = parse_json(data) else { return };
    if data.iter().all(u8::is_ascii_whitespace) {
        assert!(json.is_none());
    }
    let Ok(body) = registration_body(json) else { return };
    let value = serde_json::to_value(&body).expect("a body serializes");
    assert_eq!(zerotouch_wire::field::decode::<DeviceRegistration>(value).as_ref(), Ok(&body));

    if let Some(tpm) = &body.tpm {
        for key in [&tpm.endorsement_key, &tpm.storage_root_key].into_iter().flatten() {
            if let Ok(public) = Public::from_base64(key) {
                let _ = public.check_activation_key("endorsement key");
            }
        }
        if let Some(der) = tpm.endorsement_key_certificate.as_deref().and_then(|t| certificate_from_text(t).ok()) {
            let _ = rsa_public_key(&der);
        }
    }
    if let Some(Ok(der)) = body.csr.as_deref().map(|csr| STANDARD.decode(csr.trim())) {
        let _ = check_csr(&der, "device-1", &KeyPolicy { allow_rsa: true });
    }
});
