//! TPM attestation (`azure-dps-wire.md` §3), in two legs:
//!
//! 1. **First leg**: `register` without `Authorization`, with `tpm.endorsementKey` and `tpm.storageRootKey`. For an
//!    EK that an individual enrollment names (matched by its parsed public key, §3.2), or whose EK certificate
//!    chains to a TPM enrollment group's manufacturer CA (our extension), the answer is 401 with
//!    `{message, authenticationKey, keyName: "registration"}`: an activation blob carrying a fresh 32-byte key that
//!    only that TPM can load. The key is stored in the database (`tpm_challenges`) with an expiry, so any replica
//!    can check the second leg; a new first leg replaces it. Any other EK gets the plain 401 of every refusal.
//! 2. **Second leg**: the same `register` with a SAS token signed by the TPM with that key. It authenticates one
//!    register (then the polls that follow, until it expires); the `assigned` answer carries
//!    `registrationState.tpm.authenticationKey`, a second blob with the device's hub key (§3.1 step 4).
//!
//! A TPM group admits any TPM whose EK certificate chains to its manufacturer CAs, under the registration id the
//! device chooses; the first TPM to register an id keeps it (`tpm_bindings`), so that another TPM of the same
//! manufacturer cannot take over a device's registration.
//!
//! The blob itself is built by the pure `zerotouch-tpm` crate; here are only the lookups and the bookkeeping.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use zerotouch_attest::sas;
use zerotouch_store::{EnrollmentRecord, StoreError, TpmChallengeRecord};
use zerotouch_tpm::Public;
use zerotouch_wire::enrollment::{EnrollmentKind, TpmAttestation};
use zerotouch_wire::registration::TpmRegistrationResult;
use zerotouch_wire::{ErrorCode, SymmetricKey};

use super::{DeviceRequest, Evidence, Matched, RegistrationRequest, RegistrationService, x509};
use crate::error::ApiError;

/// The `message` of the 401 challenge.
pub const CHALLENGE_MESSAGE: &str =
    "TPM challenge: activate authenticationKey in the TPM and sign the registration SAS with the imported key";

/// Size of the keys the blobs carry (the DPS key and the hub key).
pub const KEY_BYTES: usize = 32;

/// The action name first legs are audited and logged under.
const FIRST_LEG: &str = "tpmChallenge";

/// The request-window bucket of a device's first legs (apart from its authenticated requests, which an
/// unauthenticated flood of first legs must not use up).
fn first_leg_bucket(key: &str) -> String {
    format!("tpm-first-leg\0{key}")
}

/// A `TPM2B_PUBLIC` of the register body, parsed and checked for the activation.
fn body_key(text: Option<&str>, field: &str, role: &str) -> Result<Public, ApiError> {
    let text = text.filter(|t| !t.trim().is_empty()).ok_or_else(|| ApiError::TpmKey(format!("{field} is required")))?;
    let public = Public::from_base64(text).map_err(|e| ApiError::TpmKey(format!("{field} {e}")))?;
    public.check_activation_key(role).map_err(|e| ApiError::TpmKey(format!("{field} {e}")))?;
    Ok(public)
}

/// The TPM attestation of a stored enrollment document.
fn attestation(enrollment: &EnrollmentRecord) -> Option<TpmAttestation> {
    serde_json::from_value(enrollment.document.get("attestation")?.get("tpm")?.clone()).ok()
}

/// The EK an individual enrollment names, parsed.
fn enrolled_key(enrollment: &EnrollmentRecord, srk: bool) -> Option<Public> {
    let tpm = attestation(enrollment)?;
    let text = if srk { tpm.storage_root_key? } else { tpm.endorsement_key? };
    Public::from_base64(&text).ok()
}

fn mismatch(message: String) -> ApiError {
    ApiError::DeviceCertificate { code: ErrorCode::EndorsementKeyCertificateMismatch, message }
}

/// Whether the EK certificate `der` certifies `ek` (same RSA modulus and exponent); the error says why not.
fn check_certificate_key(der: &[u8], ek: &Public) -> Result<(), ApiError> {
    let zerotouch_pki::RsaPublicKey { modulus, exponent } = match zerotouch_pki::rsa_public_key(der) {
        Ok(Some(key)) => key,
        Ok(None) => return Err(mismatch("tpm.endorsementKeyCertificate does not certify an RSA key".into())),
        Err(e) => return Err(mismatch(format!("tpm.endorsementKeyCertificate is {e}"))),
    };
    let zerotouch_tpm::PublicKey::Rsa { modulus: ek_modulus, exponent: ek_exponent, .. } = ek.key() else {
        return Err(mismatch("the endorsement key is not an RSA key".into()));
    };
    let ek_exponent = ek_exponent.to_be_bytes();
    let strip = |b: &[u8]| b[b.iter().position(|x| *x != 0).unwrap_or(b.len())..].to_vec();
    if strip(ek_modulus) != modulus || strip(&ek_exponent) != exponent {
        return Err(mismatch(
            "the public key of tpm.endorsementKeyCertificate is not tpm.endorsementKey: the certificate is another \
             TPM's"
                .into(),
        ));
    }
    Ok(())
}

impl RegistrationService {
    /// The first leg of a TPM registration: a register without credentials whose body carries `tpm`. Does nothing
    /// (`Ok`) for every other request; otherwise always answers an error: the 401 challenge with its blob, a
    /// refusal, or 400211 for keys that cannot be used.
    pub(super) async fn tpm_first_leg(&self, request: &RegistrationRequest) -> Result<(), ApiError> {
        let device = &request.device;
        let (Evidence::None, Some(tpm)) = (&device.evidence, &request.body.tpm) else { return Ok(()) };
        if !device.id_scope.eq_ignore_ascii_case(&self.settings.id_scope) {
            return Err(self.refuse(device, FIRST_LEG, "the id scope is not this service's").await);
        }
        let key = device.registration_id.key();
        self.limits.admit(&first_leg_bucket(&key)).map_err(Self::throttled)?;
        let ek = body_key(tpm.endorsement_key.as_deref(), "tpm.endorsementKey", "endorsement key")?;
        let srk = body_key(tpm.storage_root_key.as_deref(), "tpm.storageRootKey", "storage root key")?;

        let (kind, enrollment) = match self.store.enrollments().get(EnrollmentKind::Individual, &key).await {
            Ok(enrollment) => {
                if enrollment.attestation_type != "tpm" {
                    let reason = format!("tpm: the enrollment attests by {}", enrollment.attestation_type);
                    return Err(self.refuse(device, FIRST_LEG, &reason).await);
                }
                if !enrolled_key(&enrollment, false).is_some_and(|enrolled| enrolled.same_key(&ek)) {
                    let reason = "tpm: the endorsement key is not the enrolled one";
                    return Err(self.refuse(device, FIRST_LEG, reason).await);
                }
                if let Some(enrolled) = enrolled_key(&enrollment, true)
                    && !enrolled.same_key(&srk)
                {
                    return Err(ApiError::TpmKey(
                        "tpm.storageRootKey is not the storage root key the enrollment names".into(),
                    ));
                }
                (EnrollmentKind::Individual, enrollment)
            }
            Err(StoreError::NotFound) => {
                let group = self.tpm_group(device, &ek, tpm.endorsement_key_certificate.as_deref()).await?;
                if let Some(bound) = self.store.tpm().binding(&key).await.map_err(ApiError::internal)?
                    && !Public::from_base64(&bound).is_ok_and(|bound| bound.same_key(&ek))
                {
                    let reason = "tpm: the registration id belongs to another TPM of the group";
                    return Err(self.refuse(device, FIRST_LEG, reason).await);
                }
                (EnrollmentKind::Group, group)
            }
            Err(e) => return Err(ApiError::internal(e)),
        };

        let hmac_key = SymmetricKey::generate_len(KEY_BYTES);
        let blob = zerotouch_tpm::build_activation_blob(&ek, &srk, hmac_key.expose_bytes())
            .map_err(|e| ApiError::TpmKey(e.to_string()))?;
        let now = chrono::Utc::now();
        let ttl = chrono::Duration::from_std(self.settings.tpm_challenge_ttl).unwrap_or(chrono::Duration::minutes(10));
        let challenge = TpmChallengeRecord {
            registration_key: key,
            id: uuid::Uuid::new_v4().to_string(),
            enrollment_kind: kind,
            enrollment_key: enrollment.key.clone(),
            hmac_key,
            endorsement_key: STANDARD.encode(ek.tpm2b_bytes()),
            storage_root_key: STANDARD.encode(srk.tpm2b_bytes()),
            expires_at: now + ttl,
            used_at: None,
            created_at: now,
        };
        self.store.tpm().put_challenge(&challenge).await.map_err(ApiError::internal)?;
        tracing::info!(
            registration_id = device.registration_id.as_str(),
            enrollment = enrollment.id,
            "TPM challenge issued"
        );
        Err(ApiError::TpmChallenge { authentication_key: blob.to_base64() })
    }

    /// The TPM enrollment group whose manufacturer CA the EK certificate chains to (nearest to the certificate
    /// first, as for X.509 groups), after checking that the certificate is the EK's.
    async fn tpm_group(
        &self,
        device: &DeviceRequest,
        ek: &Public,
        certificate: Option<&str>,
    ) -> Result<EnrollmentRecord, ApiError> {
        let Some(certificate) = certificate.filter(|c| !c.trim().is_empty()) else {
            let reason = "tpm: no enrollment names this endorsement key, and the device sent no EK certificate";
            return Err(self.refuse(device, FIRST_LEG, reason).await);
        };
        let refuse_certificate = async |error: ApiError| {
            let reason = format!("tpm: {error}");
            self.refuse_as(device, FIRST_LEG, &reason, error).await
        };
        let Ok(der) = STANDARD.decode(certificate.trim()) else {
            return Err(refuse_certificate(mismatch("tpm.endorsementKeyCertificate is not base64".into())).await);
        };
        if let Err(error) = check_certificate_key(&der, ek) {
            return Err(refuse_certificate(error).await);
        }
        let groups = self.store.enrollments().groups_by_attestation("tpm").await.map_err(ApiError::internal)?;
        let groups: Vec<x509::X509Group> = groups
            .into_iter()
            .map(|group| {
                let anchors = attestation(&group)
                    .and_then(|tpm| tpm.manufacturer_certificates)
                    .unwrap_or_default()
                    .iter()
                    .filter_map(|text| zerotouch_pki::certificate_from_text(text).ok())
                    .map(|der| x509::Anchor { der, verified: true })
                    .collect();
                x509::X509Group { group, anchors }
            })
            .collect();
        // Every manufacturer certificate may complete a path (a group lists its root and intermediates alike);
        // trust still comes only from the anchor a group lists.
        let intermediates: Vec<Vec<u8>> = groups.iter().flat_map(|g| g.anchors.iter().map(|a| a.der.clone())).collect();
        let now = time::OffsetDateTime::now_utc();
        match x509::match_group_by(&der, &intermediates, &groups, now, zerotouch_pki::verify_endorsement_chain) {
            Ok((index, _)) => Ok(groups[index].group.clone()),
            Err(ApiError::DeviceCertificate { code, message }) => {
                let message = format!("the EK certificate: {message}");
                Err(refuse_certificate(ApiError::DeviceCertificate { code, message }).await)
            }
            Err(other) => Err(other),
        }
    }

    /// The second leg (and the polls after it): a SAS token signed with the key of the device's pending TPM
    /// challenge. `Ok(None)` when the device has none (the caller goes on or refuses). A register uses the challenge
    /// up (one register per blob) and gets the hub key's blob in [`Matched::tpm`].
    pub(super) async fn authenticate_tpm(
        &self,
        device: &DeviceRequest,
        action: &str,
        token: &sas::SasToken<'_>,
        expected: &sas::Expectation<'_>,
    ) -> Result<Option<Matched>, ApiError> {
        let key = device.registration_id.key();
        let challenge = match self.store.tpm().challenge(&key).await {
            Ok(challenge) => challenge,
            Err(StoreError::NotFound) => return Ok(None),
            Err(e) => return Err(ApiError::internal(e)),
        };
        if challenge.expires_at <= chrono::Utc::now() {
            let reason = "tpm: the key of the activation blob expired; the device must start again without a token";
            return Err(self.refuse(device, action, reason).await);
        }
        if let Err(e) = sas::verify(token, expected, &[challenge.hmac_key.expose_bytes()]) {
            let reason = format!("tpm: {e} with the key of the device's latest activation blob");
            return Err(self.refuse(device, action, &reason).await);
        }
        let enrollment = match self.store.enrollments().get(challenge.enrollment_kind, &challenge.enrollment_key).await
        {
            Ok(enrollment) if enrollment.attestation_type == "tpm" => enrollment,
            Ok(_) | Err(StoreError::NotFound) => {
                let reason = "tpm: the enrollment of the challenge was deleted or changed its attestation";
                return Err(self.refuse(device, action, reason).await);
            }
            Err(e) => return Err(ApiError::internal(e)),
        };
        // An individual enrollment may have been given another EK since the first leg.
        if challenge.enrollment_kind == EnrollmentKind::Individual {
            let challenged = Public::from_base64(&challenge.endorsement_key).ok();
            if !enrolled_key(&enrollment, false).is_some_and(|ek| challenged.is_some_and(|c| ek.same_key(&c))) {
                let reason = "tpm: the enrollment names another endorsement key since the first leg";
                return Err(self.refuse(device, action, reason).await);
            }
        }
        let tpm = if action == "register" {
            if !self.store.tpm().use_challenge(&key, &challenge.id).await.map_err(ApiError::internal)? {
                let reason = "tpm: this activation blob's key already served a register (or was just replaced); \
                              the device must start again without a token";
                return Err(self.refuse(device, action, reason).await);
            }
            // A group admits any TPM of its manufacturers: the first to register an id keeps it.
            if challenge.enrollment_kind == EnrollmentKind::Group {
                let bound =
                    self.store.tpm().bind(&key, &challenge.endorsement_key).await.map_err(ApiError::internal)?;
                let challenged = Public::from_base64(&challenge.endorsement_key).ok();
                if !Public::from_base64(&bound).is_ok_and(|bound| challenged.is_some_and(|ek| bound.same_key(&ek))) {
                    let reason = "tpm: the registration id belongs to another TPM of the group";
                    return Err(self.refuse(device, action, reason).await);
                }
            }
            Some(hub_key_result(&challenge)?)
        } else {
            None
        };
        self.remember_verified(device, token.expiry);
        Ok(Some(Matched { kind: challenge.enrollment_kind, enrollment, x509: None, operational: false, tpm }))
    }

    /// [`Self::authenticate_tpm`] for a device whose individual enrollment attests by TPM: no pending challenge is
    /// a refusal.
    pub(super) async fn authenticate_tpm_individual(
        &self,
        device: &DeviceRequest,
        action: &str,
        token: &sas::SasToken<'_>,
        expected: &sas::Expectation<'_>,
    ) -> Result<Matched, ApiError> {
        match self.authenticate_tpm(device, action, token, expected).await? {
            Some(matched) => Ok(matched),
            None => {
                let reason = "tpm: no pending TPM challenge; the device must start with a register without a token";
                Err(self.refuse(device, action, reason).await)
            }
        }
    }
}

/// What a TPM device's register carries past authentication: the blob of its new hub key for the answer, and the key
/// itself for the hub (a symmetric-key identity there, as Azure DPS registers TPM devices on IoT Hub).
#[derive(Debug, Clone)]
pub struct TpmOutcome {
    /// `registrationState.tpm`: the hub key's activation blob.
    pub result: TpmRegistrationResult,
    /// The hub key (redacted, zeroized).
    pub hub_key: SymmetricKey,
}

/// A new hub key for the TPM the challenge was made for, and its blob (§3.1 step 4).
fn hub_key_result(challenge: &TpmChallengeRecord) -> Result<TpmOutcome, ApiError> {
    let stored = |text: &str| Public::from_base64(text).map_err(|e| ApiError::internal(format!("stored TPM key {e}")));
    let (ek, srk) = (stored(&challenge.endorsement_key)?, stored(&challenge.storage_root_key)?);
    let hub_key = SymmetricKey::generate_len(KEY_BYTES);
    let blob = zerotouch_tpm::build_activation_blob(&ek, &srk, hub_key.expose_bytes()).map_err(ApiError::internal)?;
    Ok(TpmOutcome { result: TpmRegistrationResult { authentication_key: blob.to_base64() }, hub_key })
}

/// A device's registration result as a TPM device sees it: `tpm` instead of `symmetricKey`.
pub(super) fn with_tpm(
    result: zerotouch_wire::device::DeviceRegistrationResult,
    tpm: Option<&TpmRegistrationResult>,
) -> zerotouch_wire::device::DeviceRegistrationResult {
    match tpm {
        Some(tpm) if result.status != zerotouch_wire::registration::RegistrationStatus::Disabled => {
            zerotouch_wire::device::DeviceRegistrationResult { tpm: Some(tpm.clone()), symmetric_key: None, ..result }
        }
        _ => result,
    }
}

/// A TPM device's status lookup: no `symmetricKey` (it has none), and no new blob either.
pub(super) fn without_symmetric_key(
    result: zerotouch_wire::device::DeviceRegistrationResult,
    enrollment: &EnrollmentRecord,
) -> zerotouch_wire::device::DeviceRegistrationResult {
    if enrollment.attestation_type == "tpm" {
        zerotouch_wire::device::DeviceRegistrationResult { symmetric_key: None, ..result }
    } else {
        result
    }
}
