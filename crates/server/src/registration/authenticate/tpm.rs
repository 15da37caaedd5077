//! TPM attestation (`docs/protocol/device-api.md` §3), in two legs:
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
//! A TPM group admits a TPM whose EK certificate chains to its manufacturer CAs, under the registration ids its
//! policy allows: by default only the id derived from the EK (as the Azure SDKs derive it), or any id for an
//! allow-listed EK, or (opted into) any id. The first TPM to register an id keeps it (`tpm_bindings`), so that
//! another TPM of the same manufacturer cannot take over a device's registration.
//!
//! The blob itself is built by the pure `zerotouch-tpm` crate; here are only the lookups and the bookkeeping.

use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use zerotouch_attest::sas;
use zerotouch_store::{StoreError, TpmChallengeRecord};
use zerotouch_tpm::Public;
use zerotouch_wire::device::DeviceTpm;
use zerotouch_wire::enrollment::{EnrollmentKind, TpmAttestation};
use zerotouch_wire::registration::TpmRegistrationResult;
use zerotouch_wire::{ErrorCode, SymmetricKey};

use super::super::RegistrationService;
use super::super::enrollment::{Attestation, Enrollment};
use super::super::error::{RegistrationError, internal};
use super::super::limits::RetryAfter;
use super::super::request::{Action, DeviceRequest, Evidence, RegistrationRequest};
use super::{Authenticated, x509};

/// Size of the keys the blobs carry (the DPS key and the hub key).
pub const KEY_BYTES: usize = 32;

/// The action first legs are audited and logged under.
const FIRST_LEG: Action = Action::TpmChallenge;

/// The request-window bucket of a device's first legs (apart from its authenticated requests, which an
/// unauthenticated flood of first legs must not use up).
fn first_leg_bucket(key: &str) -> String {
    format!("tpm-first-leg\0{key}")
}

/// A `TPM2B_PUBLIC` of the register body, parsed and checked for the activation.
fn body_key(text: Option<&str>, field: &str, role: &str) -> Result<Public, RegistrationError> {
    let text = text
        .filter(|t| !t.trim().is_empty())
        .ok_or_else(|| RegistrationError::TpmKey(format!("{field} is required")))?;
    let public = Public::from_base64(text).map_err(|e| RegistrationError::TpmKey(format!("{field} {e}")))?;
    public.check_activation_key(role).map_err(|e| RegistrationError::TpmKey(format!("{field} {e}")))?;
    Ok(public)
}

/// The TPM attestation of an enrollment, if it attests by TPM.
fn attestation(enrollment: &Enrollment) -> Option<&TpmAttestation> {
    match &enrollment.attestation {
        Attestation::Tpm(tpm) => Some(tpm),
        Attestation::SymmetricKey(_) | Attestation::X509(_) => None,
    }
}

/// The EK (or, with `srk`, the SRK) an individual enrollment names, parsed.
fn enrolled_key(enrollment: &Enrollment, srk: bool) -> Option<Public> {
    let tpm = attestation(enrollment)?;
    let text = if srk { tpm.storage_root_key.as_deref()? } else { tpm.endorsement_key.as_deref()? };
    Public::from_base64(text).ok()
}

fn mismatch(message: String) -> RegistrationError {
    RegistrationError::Certificate { code: ErrorCode::EndorsementKeyCertificateMismatch, message }
}

/// Whether the EK certificate `der` certifies `ek` (same RSA modulus and exponent); the error says why not.
fn check_certificate_key(der: &[u8], ek: &Public) -> Result<(), RegistrationError> {
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

/// Whether the TPM group admits the TPM with endorsement key `ek` under `registration_id` (its registration id
/// policy, `docs/security.md`); `Err` says why not.
fn group_admits(group: &Enrollment, registration_id: &str, ek: &Public) -> Result<(), String> {
    match attestation(group) {
        Some(tpm) => tpm.admits(registration_id, ek),
        None => Err(format!("the group attests by {}", group.attestation.name())),
    }
}

/// The anchors of a TPM group: its manufacturer certificates (the reference cache parses them once).
pub(in super::super) fn group_anchors(group: &Enrollment) -> Vec<x509::Anchor> {
    attestation(group)
        .and_then(|tpm| tpm.manufacturer_certificates.as_deref())
        .unwrap_or_default()
        .iter()
        .filter_map(|text| zerotouch_pki::certificate_from_text(text).ok())
        .map(|der| x509::Anchor { der, verified: true })
        .collect()
}

impl RegistrationService {
    /// The first leg of a TPM registration: a register without credentials whose body carries `tpm`. Does nothing
    /// (`Ok`) for every other request; otherwise always answers an error: the 401 challenge with its blob, a
    /// refusal, or 400211 for keys that cannot be used.
    pub(in super::super) async fn tpm_first_leg(&self, request: &RegistrationRequest) -> Result<(), RegistrationError> {
        let device = &request.device;
        let (Evidence::None, Some(tpm)) = (&device.evidence, &request.body.tpm) else { return Ok(()) };
        // Boxed, so that every other register's future need not hold room for it (`authenticate::refuse_as`).
        Box::pin(self.tpm_challenge(device, tpm)).await
    }

    /// [`Self::tpm_first_leg`] of a register that is one: always an error.
    async fn tpm_challenge(&self, device: &DeviceRequest, tpm: &DeviceTpm) -> Result<(), RegistrationError> {
        if !device.id_scope.eq_ignore_ascii_case(&self.settings.id_scope) {
            return Err(self.refuse(device, FIRST_LEG, "the id scope is not this service's").await);
        }
        // Before any work: a bound on what strangers can make every replica do.
        self.limits.first_leg().map_err(RetryAfter::refusal)?;
        let key = device.registration_id.key();
        let ek = body_key(tpm.endorsement_key.as_deref(), "tpm.endorsementKey", "endorsement key")?;
        let srk = body_key(tpm.storage_root_key.as_deref(), "tpm.storageRootKey", "storage root key")?;

        let enrollment = match self.enrollment(EnrollmentKind::Individual, &key).await? {
            Some(enrollment) => {
                if attestation(&enrollment).is_none() {
                    let reason = format!("tpm: the enrollment attests by {}", enrollment.attestation.name());
                    return Err(self.decoy(device, &reason, &ek, &srk).await);
                }
                if !enrolled_key(&enrollment, false).is_some_and(|enrolled| enrolled.same_key(&ek)) {
                    return Err(self
                        .decoy(device, "tpm: the endorsement key is not the enrolled one", &ek, &srk)
                        .await);
                }
                if let Some(enrolled) = enrolled_key(&enrollment, true)
                    && !enrolled.same_key(&srk)
                {
                    return Err(RegistrationError::TpmKey(
                        "tpm.storageRootKey is not the storage root key the enrollment names".into(),
                    ));
                }
                Arc::new(enrollment)
            }
            None => {
                let group = self.tpm_group(device, &ek, &srk, tpm.endorsement_key_certificate.as_deref()).await?;
                if let Err(why) = group_admits(&group, device.registration_id.as_str(), &ek) {
                    return Err(self.decoy(device, &format!("tpm: {why}"), &ek, &srk).await);
                }
                if let Some(bound) = self.store.tpm().binding(&key).await.map_err(internal("reading a TPM binding"))?
                    && !Public::from_base64(&bound).is_ok_and(|bound| bound.same_key(&ek))
                {
                    let reason = "tpm: the registration id belongs to another TPM of the group";
                    return Err(self.decoy(device, reason, &ek, &srk).await);
                }
                group
            }
        };

        let (endorsement_key, storage_root_key) =
            (STANDARD.encode(ek.tpm2b_bytes()), STANDARD.encode(srk.tpm2b_bytes()));
        // A pending challenge stays until it is used or expires: the same TPM asking again gets the same blob, and a
        // first leg from anyone else (an unauthenticated request) cannot replace it.
        let now = chrono::Utc::now();
        match self.store.tpm().challenge(&key).await {
            Ok(pending) if pending.used_at.is_none() && pending.expires_at > now => {
                let same = pending.endorsement_key == endorsement_key && pending.storage_root_key == storage_root_key;
                match pending.blob {
                    Some(blob) if same => return Err(RegistrationError::TpmChallenge { authentication_key: blob }),
                    _ if same => {}
                    _ => {
                        let reason = "tpm: another TPM's challenge for this registration id is pending";
                        return Err(self.decoy(device, reason, &ek, &srk).await);
                    }
                }
            }
            Ok(_) | Err(StoreError::NotFound) => {}
            Err(e) => return Err(internal("reading a TPM challenge")(e)),
        }
        // Charged only now, for a challenge this TPM may have: first legs others send cannot use up the device's.
        self.limits.admit(&first_leg_bucket(&key)).map_err(RetryAfter::refusal)?;

        let hmac_key = SymmetricKey::generate_len(KEY_BYTES);
        let blob = zerotouch_tpm::build_activation_blob(&ek, &srk, hmac_key.expose_bytes())
            .map_err(|e| RegistrationError::TpmKey(e.to_string()))?
            .to_base64();
        let ttl = chrono::Duration::from_std(self.settings.tpm_challenge_ttl).unwrap_or(chrono::Duration::minutes(10));
        let challenge = TpmChallengeRecord {
            registration_key: key.into_owned(),
            id: uuid::Uuid::new_v4().to_string(),
            enrollment_kind: enrollment.kind,
            enrollment_key: enrollment.key().to_owned(),
            hmac_key,
            endorsement_key,
            storage_root_key,
            expires_at: now + ttl,
            used_at: None,
            created_at: now,
            blob: Some(blob.clone()),
        };
        self.store.tpm().put_challenge(&challenge).await.map_err(internal("storing a TPM challenge"))?;
        tracing::info!(
            registration_id = device.registration_id.as_str(),
            enrollment = enrollment.id(),
            "TPM challenge issued"
        );
        Err(RegistrationError::TpmChallenge { authentication_key: blob })
    }

    /// Refuses a first leg with an answer shaped like a challenge: a blob for a fresh key that nothing keeps, made
    /// for the keys the device sent. An unenrolled id, a wrong EK and an id bound to another TPM then look the same
    /// as an enrolled one to whoever asks (the second leg fails alike), so first legs do not tell which ids exist.
    /// The reason is audited as every refusal's is.
    async fn decoy(&self, device: &DeviceRequest, reason: &str, ek: &Public, srk: &Public) -> RegistrationError {
        let key = SymmetricKey::generate_len(KEY_BYTES);
        let error = match zerotouch_tpm::build_activation_blob(ek, srk, key.expose_bytes()) {
            Ok(blob) => RegistrationError::TpmChallenge { authentication_key: blob.to_base64() },
            Err(e) => RegistrationError::TpmKey(e.to_string()),
        };
        self.refuse_as(device, FIRST_LEG, reason, error).await
    }

    /// The TPM enrollment group whose manufacturer CA the EK certificate chains to (nearest to the certificate
    /// first, as for X.509 groups), after checking that the certificate is the EK's.
    async fn tpm_group(
        &self,
        device: &DeviceRequest,
        ek: &Public,
        srk: &Public,
        certificate: Option<&str>,
    ) -> Result<Arc<Enrollment>, RegistrationError> {
        let Some(certificate) = certificate.filter(|c| !c.trim().is_empty()) else {
            let reason = "tpm: no enrollment names this endorsement key, and the device sent no EK certificate";
            return Err(self.decoy(device, reason, ek, srk).await);
        };
        let Ok(der) = STANDARD.decode(certificate.trim()) else {
            let error = mismatch("tpm.endorsementKeyCertificate is not base64".into());
            return Err(self.refuse_certificate(device, FIRST_LEG, "tpm", error).await);
        };
        if let Err(error) = check_certificate_key(&der, ek) {
            return Err(self.refuse_certificate(device, FIRST_LEG, "tpm", error).await);
        }
        let reference = self.caches.reference(&self.store).await?;
        let groups = &reference.tpm_groups;
        let now = time::OffsetDateTime::now_utc();
        match self.match_group(&der, &[], groups, now, zerotouch_pki::Purpose::Endorsement).await {
            Ok((index, _)) => Ok(Arc::clone(&groups[index].group)),
            Err(RegistrationError::Certificate { code, message }) => {
                let error = RegistrationError::Certificate { code, message: format!("the EK certificate: {message}") };
                Err(self.refuse_certificate(device, FIRST_LEG, "tpm", error).await)
            }
            Err(other) => Err(other),
        }
    }

    /// The second leg (and the polls after it): a SAS token signed with the key of the device's pending TPM
    /// challenge. `Ok(None)` when the device has none (the caller goes on or refuses). A register uses the challenge
    /// up (one register per blob) and gets the hub key's blob in [`Authenticated::tpm`].
    pub(super) async fn authenticate_tpm(
        &self,
        device: &DeviceRequest,
        action: Action,
        token: &sas::SasToken<'_>,
        expected: &sas::Expectation<'_>,
    ) -> Result<Option<Authenticated>, RegistrationError> {
        let key = device.registration_id.key();
        let challenge = match self.store.tpm().challenge(&key).await {
            Ok(challenge) => challenge,
            Err(StoreError::NotFound) => return Ok(None),
            Err(e) => return Err(internal("reading a TPM challenge")(e)),
        };
        if challenge.expires_at <= chrono::Utc::now() {
            let reason = "tpm: the key of the activation blob expired; the device must start again without a token";
            return Err(self.refuse(device, action, reason).await);
        }
        if let Err(e) = sas::verify(token, expected, &[challenge.hmac_key.expose_bytes()]) {
            let reason = format!("tpm: {e} with the key of the device's latest activation blob");
            return Err(self.refuse(device, action, &reason).await);
        }
        let enrollment = match self.enrollment(challenge.enrollment_kind, &challenge.enrollment_key).await? {
            Some(enrollment) if attestation(&enrollment).is_some() => enrollment,
            Some(_) | None => {
                let reason = "tpm: the enrollment of the challenge was deleted or changed its attestation";
                return Err(self.refuse(device, action, reason).await);
            }
        };
        // The enrollment may have changed since the first leg: an individual one may name another EK, a group
        // another registration id policy.
        let challenged =
            Public::from_base64(&challenge.endorsement_key).map_err(internal("reading a stored TPM key"))?;
        match challenge.enrollment_kind {
            EnrollmentKind::Individual => {
                if !enrolled_key(&enrollment, false).is_some_and(|ek| ek.same_key(&challenged)) {
                    let reason = "tpm: the enrollment names another endorsement key since the first leg";
                    return Err(self.refuse(device, action, reason).await);
                }
            }
            EnrollmentKind::Group => {
                if let Err(why) = group_admits(&enrollment, device.registration_id.as_str(), &challenged) {
                    return Err(self.refuse(device, action, &format!("tpm: {why}")).await);
                }
            }
        }
        let tpm = if action == Action::Register {
            let used = self.store.tpm().use_challenge(&key, &challenge.id).await;
            if !used.map_err(internal("using a TPM challenge"))? {
                let reason = "tpm: this activation blob's key already served a register (or was just replaced); \
                              the device must start again without a token";
                return Err(self.refuse(device, action, reason).await);
            }
            // A group admits any TPM of its manufacturers: the first to register an id keeps it.
            if challenge.enrollment_kind == EnrollmentKind::Group {
                let bound = self.store.tpm().bind(&key, &challenge.endorsement_key).await;
                let bound = bound.map_err(internal("binding a TPM to its registration id"))?;
                if !Public::from_base64(&bound).is_ok_and(|bound| bound.same_key(&challenged)) {
                    let reason = "tpm: the registration id belongs to another TPM of the group";
                    return Err(self.refuse(device, action, reason).await);
                }
            }
            Some(hub_key_result(&challenge)?)
        } else {
            None
        };
        let authenticated = Authenticated { tpm, ..Authenticated::by(Arc::new(enrollment)) };
        self.caches.remember_verified(device, token.expiry, &authenticated.budget(device));
        Ok(Some(authenticated))
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
    /// The endorsement key the challenge was made for (base64 `TPM2B_PUBLIC`), for the custom allocation webhook.
    pub endorsement_key: String,
    /// The storage root key the challenge was made for (base64 `TPM2B_PUBLIC`).
    pub storage_root_key: String,
}

/// A new hub key for the TPM the challenge was made for, and its blob (§3.1 step 4).
fn hub_key_result(challenge: &TpmChallengeRecord) -> Result<TpmOutcome, RegistrationError> {
    let stored = |text: &str| Public::from_base64(text).map_err(internal("reading a stored TPM key"));
    let (ek, srk) = (stored(&challenge.endorsement_key)?, stored(&challenge.storage_root_key)?);
    let hub_key = SymmetricKey::generate_len(KEY_BYTES);
    let blob = zerotouch_tpm::build_activation_blob(&ek, &srk, hub_key.expose_bytes())
        .map_err(internal("building the hub key's activation blob"))?;
    Ok(TpmOutcome {
        result: TpmRegistrationResult { authentication_key: blob.to_base64() },
        hub_key,
        endorsement_key: challenge.endorsement_key.clone(),
        storage_root_key: challenge.storage_root_key.clone(),
    })
}
