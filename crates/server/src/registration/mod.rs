//! The registration service: the one flow every device endpoint (HTTPS, MQTT, EST) runs.
//!
//! ```text
//! transport -> RegistrationRequest (request)
//!   -> limits        per-device window, in-flight cap                          (limits)
//!   -> authenticate  SAS | X.509 | TPM -> the typed Enrollment                 (authenticate/, enrollment)
//!   -> csr           checked against the registration id and the policy       (issue)
//!   -> decide        pure: disabled | failed | assigned where, and the webhook (decide, allocation, webhook)
//!   -> issue         a certificate for an assigned device that sent a CSR      (issue)
//!   -> write         state + operation + certificate + audit + hub job        (outcome; the store's writer)
//!   -> deliver       the hub adapter, inline within --hub-inline-timeout       (crate::hubs)
//! ```
//! The transports only translate their protocol into a [`RegistrationRequest`] (or [`DeviceRequest`]) and map
//! [`RegistrationError`] back, each in one exhaustive match. The caches that spare the database on the hot path
//! are in [`cache`], with their bounds.

pub mod allocation;
pub mod authenticate;
pub mod cache;
pub mod decide;
pub mod enrollment;
pub mod error;
pub mod est;
pub mod issue;
pub mod limits;
pub mod outcome;
pub mod request;
pub mod result;
pub mod webhook;

use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use tokio_util::sync::CancellationToken;
use zerotouch_store::{HubJobRecord, HubRecord, OperationRecord, RegistrationRecord, Store, StoreError};
use zerotouch_wire::ErrorCode;
use zerotouch_wire::device::{DeviceRegistrationResult, RegistrationOperationStatus};
use zerotouch_wire::field::FieldError;
use zerotouch_wire::registration::RegistrationStatus;

use crate::hubs::Hubs;
use crate::pki::Pki;
use authenticate::Authenticated;
use cache::Caches;
use decide::{Decision, Facts};
use enrollment::Allocation;
pub use error::RegistrationError;
use error::internal;
use issue::Issued;
use limits::{DeviceLimits, RetryAfter};
pub use request::{Action, DeviceRequest, Evidence, RegistrationRequest};
pub use result::PollAnswer;

/// Settings of the registration service.
#[derive(Debug, Clone)]
pub struct RegistrationSettings {
    /// The id scope devices must use.
    pub id_scope: String,
    /// How far in the past a SAS token's `se` may be.
    pub sas_clock_skew: Duration,
    /// How far ahead of now a SAS token's `se` may be (besides the clock skew).
    pub sas_max_lifetime: Duration,
    /// How long operations can be polled.
    pub operation_ttl: Duration,
    /// How long the key of a TPM activation blob authenticates its device (§3.1).
    pub tpm_challenge_ttl: Duration,
}

/// How often a register is decided again when concurrent writes of the same device keep winning.
const MAX_ATTEMPTS: usize = 16;

/// The registration service.
#[derive(Debug)]
pub struct RegistrationService {
    store: Store,
    pki: Arc<Pki>,
    hubs: Arc<Hubs>,
    settings: RegistrationSettings,
    limits: DeviceLimits,
    http: reqwest::Client,
    outbound: zerotouch_outbound::OutboundPolicy,
    caches: Caches,
}

impl RegistrationService {
    /// A service over `store`.
    pub fn new(
        store: Store,
        pki: Arc<Pki>,
        hubs: Arc<Hubs>,
        settings: RegistrationSettings,
        limits: DeviceLimits,
        outbound: zerotouch_outbound::OutboundPolicy,
    ) -> anyhow::Result<Self> {
        let http = outbound.client().timeout(webhook::TIMEOUT).build()?;
        Ok(Self { store, pki, hubs, settings, limits, http, outbound, caches: Caches::default() })
    }

    /// `register`: authenticates, decides and records; returns the operation (status `assigning` on the wire).
    pub async fn register(
        &self,
        request: RegistrationRequest,
    ) -> Result<RegistrationOperationStatus, RegistrationError> {
        let device = &request.device;
        let key = device.registration_id.key();
        let _slot = self.limits.slot()?;
        if let Some(body_id) = request.body.registration_id.as_deref().filter(|id| !id.is_empty())
            && !body_id.eq_ignore_ascii_case(device.registration_id.as_str())
        {
            let problem = format!("{body_id:?} differs from the registration id in the URL");
            return Err(FieldError::new("registrationId", problem).into());
        }
        self.tpm_first_leg(&request).await?;
        let authenticated = self.authenticate(device, Action::Register).await?;
        // Counted once the device proved who it is: requests with bad credentials must not use up its budget.
        self.limits.admit(&authenticated.budget(device)).map_err(RetryAfter::refusal)?;
        let enrollment = &authenticated.enrollment;
        let policy = &enrollment.certificate_policy;
        let csr = issue::checked_csr(request.body.csr.as_deref(), device.registration_id.as_str(), policy)?;
        let hubs = self.caches.reference(&self.store).await?.hubs;

        // The first attempt supposes a device new to us and skips reading its state, unless a webhook is to see the
        // device's current hub or the device renews an operational certificate (its state must still exist). A
        // device that has a state loses the insert to it and decides again on it, as does one whose state a
        // concurrent registration changed between our read and our write (the decision is deterministic but for
        // the webhook, whose first answer is kept, so the outcome agrees).
        let mut webhook_answer = None;
        let mut read_state =
            matches!(enrollment.allocation, Allocation::Custom(_)) || authenticated.operational.is_some();
        // Set when the store refused the assignment because another registration holds the device id on the hub:
        // the attempts after it write that failure instead (no certificate, no hub job).
        let mut taken: Option<Decision> = None;
        for _ in 0..MAX_ATTEMPTS {
            let current = if read_state { self.current_registration(&key).await? } else { None };
            read_state = true;
            if let Some(reason) = current.as_ref().and_then(|c| authenticated.refusal_for(c)) {
                return Err(self.refuse(device, Action::Register, &reason).await);
            }
            let decision = match &taken {
                Some(failed) => failed.clone(),
                None => self.decision(&request, &authenticated, current.as_ref(), &hubs, &mut webhook_answer).await,
            };
            let issued = match (&csr, decision.assignment()) {
                (Some(csr), Some(assigned)) => Some(self.pki.issue(csr, &assigned.device_id, policy).await?),
                _ => None,
            };
            let (outcome, snapshot) = outcome::outcome(outcome::Attempt {
                device,
                authenticated: &authenticated,
                current: current.as_ref(),
                decision: &decision,
                issued: issued.as_ref(),
                hubs: &hubs,
                hub_settings: self.hubs.settings(),
            });
            match self.store.registrations().commit(outcome, snapshot).await {
                Ok((_, operation, hub_job)) => return Ok(self.deliver(operation, hub_job, issued.as_ref()).await),
                Err(StoreError::Conflict(_)) => continue,
                // The enrollment was disabled or deleted, or the device's certificate revoked, after the decision.
                Err(StoreError::NoLongerAuthorized(reason)) => {
                    return Err(self.refuse(device, Action::Register, &reason).await);
                }
                Err(StoreError::DeviceIdTaken) => {
                    taken = decision.assignment().map(decide::device_id_taken);
                    if taken.is_none() {
                        return Err(internal("writing the registration")(StoreError::DeviceIdTaken));
                    }
                }
                Err(e) => return Err(internal("writing the registration")(e)),
            }
        }
        Err(RegistrationError::Conflict("the registration is changing concurrently; retry".into()))
    }

    /// The device's registration, if it has one.
    async fn current_registration(&self, key: &str) -> Result<Option<RegistrationRecord>, RegistrationError> {
        match self.store.registrations().get(key).await {
            Ok(record) => Ok(Some(record)),
            Err(StoreError::NotFound) => Ok(None),
            Err(e) => Err(internal("reading the device's registration")(e)),
        }
    }

    /// Decides the registration, asking the custom allocation webhook first when the decision needs it (its
    /// answer is kept in `webhook_answer` for the attempts after a conflict).
    async fn decision(
        &self,
        request: &RegistrationRequest,
        authenticated: &Authenticated,
        current: Option<&RegistrationRecord>,
        hubs: &[HubRecord],
        webhook_answer: &mut Option<Result<webhook::Answer, String>>,
    ) -> Decision {
        let facts = |webhook| Facts {
            registration_id: &request.device.registration_id,
            enrollment: &authenticated.enrollment,
            current,
            hubs,
            webhook,
        };
        let call = match decide::decide(facts(webhook_answer.as_ref())) {
            Ok(decision) => return decision,
            Err(call) => call,
        };
        let attestation = match (&request.device.evidence, &authenticated.x509, &authenticated.tpm) {
            (Evidence::Certificates(chain), Some(x509), _) => {
                webhook::RuntimeAttestation::X509 { chain, signing: x509.signing_certificate_info.as_ref() }
            }
            (_, _, Some(tpm)) => webhook::RuntimeAttestation::Tpm {
                endorsement_key: &tpm.endorsement_key,
                storage_root_key: &tpm.storage_root_key,
            },
            _ => webhook::RuntimeAttestation::SymmetricKey,
        };
        let body = webhook::allocation_request(
            request.device.registration_id.as_str(),
            &authenticated.enrollment,
            attestation,
            current,
            request.body.payload.as_ref(),
            &call.offered,
            webhook::RequestShape::of(&call.definition.api_version),
        );
        let answer = webhook::allocate(&self.http, &self.outbound, &call.definition.webhook_url, &body).await;
        // With the answer, `decide` never asks for the webhook again.
        let decision = decide::decide(facts(Some(&answer))).unwrap_or_else(|_| Decision::Failed {
            code: ErrorCode::CustomAllocationFailed,
            message: webhook::FAILED.into(),
        });
        *webhook_answer = Some(answer);
        decision
    }

    /// After the write: the hub adapter inline (its success settles the operation), and the operation remembered
    /// for the device's first poll, with the certificate `issued` now, if any. The device is told `assigning` either
    /// way; its poll reads the result.
    async fn deliver(
        &self,
        operation: OperationRecord,
        hub_job: Option<HubJobRecord>,
        issued: Option<&Issued>,
    ) -> RegistrationOperationStatus {
        let settled = match &hub_job {
            // Boxed: most registrations have no hub job (`authenticate::refuse_as`).
            Some(job) => Box::pin(self.hubs.deliver_inline(job)).await,
            None => None,
        };
        let operation_id = operation.id.clone();
        let finished = settled.unwrap_or(operation);
        let (registration_key, finished_id) = (finished.registration_key.clone(), finished.id.clone());
        // A poll that misses the cache reads the operation again, and reports itself why it cannot be answered.
        if let Ok(answer) = self.answer(finished, issued).await.and_then(|answer| PollAnswer::of(&answer)) {
            self.caches.remember_finished(registration_key, finished_id, answer);
        }
        RegistrationOperationStatus { operation_id, status: RegistrationStatus::Assigning, registration_state: None }
    }

    /// An operation poll: the result once terminal, or still assigning.
    pub async fn operation(&self, device: DeviceRequest, operation_id: &str) -> Result<PollAnswer, RegistrationError> {
        let key = device.registration_id.key();
        let _slot = self.limits.slot()?;
        // A poll soon after its register finds both caches filled; what runs without them is boxed, so that this
        // future stays small (`authenticate::refuse_as`).
        let budget = match self.caches.recently_verified(&device) {
            Some(budget) => budget,
            None => Arc::from(Box::pin(self.authenticate(&device, Action::Poll)).await?.budget(&device)),
        };
        self.limits.admit(&budget).map_err(RetryAfter::refusal)?;
        if let Some(answer) = self.caches.recently_finished(&key, operation_id, self.settings.operation_ttl) {
            return Ok(answer);
        }
        Box::pin(self.stored_operation(&key, operation_id)).await
    }

    /// An operation poll answered from the database.
    async fn stored_operation(&self, key: &str, operation_id: &str) -> Result<PollAnswer, RegistrationError> {
        let not_found = || RegistrationError::NotFound(format!("operation {operation_id:?}"));
        let operation = match self.store.registrations().operation(key, operation_id).await {
            Ok(operation) => operation,
            Err(StoreError::NotFound) => return Err(not_found()),
            Err(e) => return Err(internal("reading an operation")(e)),
        };
        let age = chrono::Utc::now().signed_duration_since(operation.created_at);
        if age.to_std().unwrap_or_default() > self.settings.operation_ttl {
            return Err(not_found());
        }
        PollAnswer::of(&self.answer(operation, None).await?)
    }

    /// What a poll of `operation` is answered: its status and, once it is terminal, the registration state stored
    /// with it. An `issuedCertificateChain` is stored as the device's certificate alone (`outcome::snapshot`); the
    /// chain of the CA that issued it is added here. When that certificate is the one `issued_now` (the
    /// registration that wrote the operation issued it), its CA is known; otherwise it is found by the issuer the
    /// certificate names.
    async fn answer(
        &self,
        operation: OperationRecord,
        issued_now: Option<&Issued>,
    ) -> Result<RegistrationOperationStatus, RegistrationError> {
        let status = RegistrationStatus::parse(&operation.status).ok_or_else(|| {
            RegistrationError::Internal(crate::internal::InternalError::bare(format!(
                "stored operation status {:?}",
                operation.status
            )))
        })?;
        let mut registration_state = match status {
            RegistrationStatus::Assigning => None,
            _ => operation.result,
        };
        if let Some(chain) = registration_state.as_mut().and_then(|s| s.issued_certificate_chain.as_mut())
            && let [leaf] = chain.as_slice()
        {
            let der = base64::engine::general_purpose::STANDARD.decode(leaf).unwrap_or_default();
            let issuer = match issued_now.filter(|(_, issued)| issued.der == der) {
                Some((ca, _)) => Some(Arc::clone(ca)),
                None => self.pki.named_issuer_of(&der).await?,
            };
            match issuer {
                Some(ca) => chain.extend(ca.chain_base64.iter().cloned()),
                // Its CA was deleted since: the device still gets its certificate.
                None => tracing::warn!("operation {}: the CA that issued its certificate is gone", operation.id),
            }
        }
        Ok(RegistrationOperationStatus { operation_id: operation.id, status, registration_state })
    }

    /// A device registration status lookup: the device's current registration.
    pub async fn status(&self, device: DeviceRequest) -> Result<DeviceRegistrationResult, RegistrationError> {
        let key = device.registration_id.key();
        let _slot = self.limits.slot()?;
        let authenticated = self.authenticate(&device, Action::StatusLookup).await?;
        self.limits.admit(&authenticated.budget(&device)).map_err(RetryAfter::refusal)?;
        let Some(record) = self.current_registration(&key).await? else {
            return Err(RegistrationError::NotFound(format!("registration {:?}", device.registration_id.as_str())));
        };
        if let Some(reason) = authenticated.refusal_for(&record) {
            return Err(self.refuse(&device, Action::StatusLookup, &reason).await);
        }
        let enrollment = &authenticated.enrollment;
        let shown = result::result_of(&record, enrollment.group_id(), authenticated.x509.clone());
        Ok(result::for_status_lookup(shown, enrollment))
    }

    /// Authenticates a device before any request on its connection (`docs/protocol/device-api.md` §5: the MQTT
    /// CONNECT carries the SAS token, or the TLS handshake the certificate): the same checks as a register's, a
    /// refusal audited the same way (action `connect`). Writes nothing when the device passes; every later
    /// request on the connection is authenticated again by the call it makes.
    pub async fn authenticate_connection(&self, device: &DeviceRequest) -> Result<(), RegistrationError> {
        let _slot = self.limits.slot()?;
        self.authenticate(device, Action::Connect).await.map(|_| ())
    }

    /// Lets expired entries out of the device caches every second, until `shutdown` is cancelled: without it a
    /// storm's entries would stay until the next device came.
    pub async fn sweep_caches(self: Arc<Self>, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                _ = tick.tick() => self.caches.sweep(),
                () = shutdown.cancelled() => return,
            }
        }
    }

    /// Removes operations older than the TTL, every minute, until `shutdown` is cancelled.
    pub async fn expire_operations(self: Arc<Self>, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(Duration::from_secs(60));
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                () = shutdown.cancelled() => return,
            }
            let Ok(ttl) = chrono::Duration::from_std(self.settings.operation_ttl) else { return };
            match self.store.registrations().delete_operations_before(chrono::Utc::now() - ttl).await {
                Ok(0) => {}
                Ok(n) => tracing::info!("expired {n} registration operations"),
                Err(e) => tracing::warn!("cannot expire registration operations: {e}"),
            }
        }
    }
}
