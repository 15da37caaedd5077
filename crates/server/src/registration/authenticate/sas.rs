//! SAS attestation (`docs/protocol/device-api.md` §2): the token verifies with the device's individual
//! enrollment's key, else with the key a symmetric-key group derives for the device, else with the key of the
//! device's pending TPM challenge. The HMAC is over the raw `sr` as sent, compared in constant time, and `se` may
//! neither have passed nor lie further ahead than `--sas-max-lifetime`, each beyond the clock skew
//! (`zerotouch_attest::sas`).

use std::sync::Arc;

use zerotouch_attest::sas;
use zerotouch_wire::KeySlot;
use zerotouch_wire::enrollment::EnrollmentKind;

use super::super::RegistrationService;
use super::super::enrollment::Attestation;
use super::super::error::RegistrationError;
use super::super::request::{Action, DeviceRequest};
use super::Authenticated;

/// The Unix time now.
fn now_secs() -> u64 {
    u64::try_from(chrono::Utc::now().timestamp()).unwrap_or(0)
}

impl RegistrationService {
    /// Finds the enrollment whose key verifies the device's token (`header`, the `Authorization` value).
    pub(super) async fn authenticate_sas(
        &self,
        device: &DeviceRequest,
        action: Action,
        header: &str,
    ) -> Result<Authenticated, RegistrationError> {
        let token = match sas::parse(header) {
            Ok(token) => token,
            Err(e) => return Err(self.refuse(device, action, &format!("sas: {e}")).await),
        };
        let resource = format!("{}/registrations/{}", device.id_scope, device.registration_id.as_str());
        // One expectation for every key tried below, the TPM challenge's included.
        let expected = sas::Expectation {
            audience: sas::Audience::Device(&resource),
            now: now_secs(),
            skew: self.settings.sas_clock_skew.as_secs(),
            max_lifetime: self.settings.sas_max_lifetime.as_secs(),
        };

        if let Some(enrollment) = self.enrollment(EnrollmentKind::Individual, &device.registration_id.key()).await? {
            let keys = match &enrollment.attestation {
                Attestation::SymmetricKey(keys) if !keys.is_empty() => keys,
                Attestation::Tpm(_) => {
                    return match Box::pin(self.authenticate_tpm(device, action, &token, &expected)).await? {
                        Some(authenticated) => Ok(authenticated),
                        None => {
                            let reason =
                                "tpm: no pending TPM challenge; the device must start with a register without a token";
                            Err(self.refuse(device, action, reason).await)
                        }
                    };
                }
                other => {
                    let reason = format!("the enrollment attests by {}", other.name());
                    return Err(self.refuse(device, action, &reason).await);
                }
            };
            let keys: Vec<&[u8]> = keys.iter().map(|k| k.expose_bytes()).collect();
            return match sas::verify(&token, &expected, &keys) {
                Ok(index) => {
                    let slot = KeySlot::of_index(index, enrollment.record.primary_key.is_some());
                    let authenticated =
                        Authenticated { key_slot: Some(slot), ..Authenticated::by(Arc::new(enrollment)) };
                    self.caches.remember_verified(device, token.expiry, &authenticated.budget(device));
                    Ok(authenticated)
                }
                Err(e) => Err(self.refuse(device, action, &format!("sas: {e}")).await),
            };
        }

        let reference = self.caches.reference(&self.store).await?;
        let mut last_error = sas::SasError::BadSignature;
        for group in reference.symmetric_key_groups.iter() {
            let Attestation::SymmetricKey(keys) = &group.attestation else { continue };
            let derived: Vec<_> = keys
                .iter()
                .map(|k| sas::derive_device_key(k.expose_bytes(), device.registration_id.as_str()))
                .collect();
            let derived: Vec<&[u8]> = derived.iter().map(|k| k.as_slice()).collect();
            match sas::verify(&token, &expected, &derived) {
                Ok(index) => {
                    let slot = KeySlot::of_index(index, group.record.primary_key.is_some());
                    let authenticated = Authenticated { key_slot: Some(slot), ..Authenticated::by(Arc::clone(group)) };
                    self.caches.remember_verified(device, token.expiry, &authenticated.budget(device));
                    return Ok(authenticated);
                }
                Err(e) => last_error = e,
            }
        }
        if let Some(authenticated) = Box::pin(self.authenticate_tpm(device, action, &token, &expected)).await? {
            return Ok(authenticated);
        }
        Err(self.refuse(device, action, &format!("no enrollment verifies the token (sas: {last_error})")).await)
    }
}
