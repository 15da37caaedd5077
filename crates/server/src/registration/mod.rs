//! The registration service: the one flow every device endpoint (HTTPS now, MQTT and TPM later) runs.
//!
//! ```text
//! RegistrationRequest -> limits -> authenticate (enrollment lookup + SAS) -> allocate -> reassign
//!                     -> one transaction (state + operation + audit) -> operation
//! ```
//! The endpoints only translate their protocol into a [`RegistrationRequest`] and the answers back.

pub mod allocation;
pub mod connection;
pub mod limits;
pub mod tpm;
pub mod webhook;
pub mod x509;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine;
use sha2::{Digest, Sha256};

use serde::Deserialize;
use serde_json::{Value, json};
use zerotouch_attest::sas;
use zerotouch_store::{EnrollmentRecord, OperationRecord, RegistrationOutcome, RegistrationRecord, Store, StoreError};
use zerotouch_wire::RegistrationId;
use zerotouch_wire::device::{
    DeviceRegistration, DeviceRegistrationResult, RegistrationOperationStatus, SymmetricKeyRegistrationResult,
};
use zerotouch_wire::enrollment::{
    AllocationPolicy, CertificatePolicy, CustomAllocationDefinition, EnrollmentKind, ReprovisionPolicy,
};
use zerotouch_wire::registration::{RegistrationStatus, X509RegistrationResult};
use zerotouch_wire::{ErrorCode, SymmetricKey};

use crate::error::ApiError;
use crate::hubs::Hubs;
use crate::pki::Pki;
use limits::{DeviceLimits, RetryAfter};

/// Settings of the registration service.
#[derive(Debug, Clone)]
pub struct RegistrationSettings {
    /// The id scope devices must use.
    pub id_scope: String,
    /// How far in the past a SAS token's `se` may be.
    pub sas_clock_skew: Duration,
    /// How long operations can be polled.
    pub operation_ttl: Duration,
    /// How long the key of a TPM activation blob authenticates its device (§3.1).
    pub tpm_challenge_ttl: Duration,
}

/// How a device proves who it is.
#[derive(Debug, Clone)]
pub enum Evidence {
    /// An `Authorization: SharedAccessSignature ...` value (or MQTT password).
    Sas(String),
    /// The certificate chain the device presented in the TLS handshake (DER, its own certificate first), which
    /// proved it holds the first one's key.
    Certificates(Vec<Vec<u8>>),
    /// Nothing.
    None,
}

/// One request of a device, whatever the protocol.
#[derive(Debug, Clone)]
pub struct DeviceRequest {
    /// The id scope in the URL (or MQTT username).
    pub id_scope: String,
    /// The registration id in the URL (or MQTT username).
    pub registration_id: RegistrationId,
    /// What the device proved itself with.
    pub evidence: Evidence,
}

/// A register call.
#[derive(Debug, Clone)]
pub struct RegistrationRequest {
    /// Who asks.
    pub device: DeviceRequest,
    /// The body.
    pub body: DeviceRegistration,
}

/// The enrollment a device matched.
struct Matched {
    kind: EnrollmentKind,
    enrollment: EnrollmentRecord,
    /// For a device that presented a certificate: what its registration result says about it.
    x509: Option<X509RegistrationResult>,
    /// The device presented an operational certificate of ours (it renews).
    operational: bool,
    /// A TPM device's register: the blob of its hub key, for the result (§3.1 step 4).
    tpm: Option<tpm::TpmOutcome>,
}

/// What an EST request's certificate told before authentication (see [`RegistrationService::est_device`]): the
/// operational certificate of ours it is, if any, and that certificate's registration, if it still exists.
#[derive(Debug)]
struct KnownCertificate {
    issued: Option<zerotouch_store::CertificateRecord>,
    registration: Option<RegistrationRecord>,
}

/// The allocation settings of a stored enrollment document.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Policy {
    #[serde(default)]
    device_id: Option<String>,
    #[serde(default)]
    allocation_policy: Option<AllocationPolicy>,
    #[serde(default)]
    iot_hubs: Option<Vec<String>>,
    #[serde(default)]
    iot_hub_host_name: Option<String>,
    #[serde(default)]
    reprovision_policy: Option<ReprovisionPolicy>,
    #[serde(default)]
    initial_twin: Option<Value>,
    #[serde(default)]
    custom_allocation_definition: Option<CustomAllocationDefinition>,
    #[serde(default)]
    certificate_policy: Option<CertificatePolicy>,
}

/// What allocation decided, before it is written.
struct Decision {
    status: RegistrationStatus,
    hub: Option<String>,
    device_id: Option<String>,
    substatus: Option<String>,
    error: Option<(ErrorCode, String)>,
    payload: Option<Value>,
    initial_twin: Option<Value>,
    detail: String,
}

/// Hubs and symmetric-key groups, read together and kept briefly: every registration needs them, and they change
/// rarely. A change made through this process invalidates them at once; one made on another replica is seen
/// within [`REFERENCE_TTL`] and the time of one read.
#[derive(Debug, Clone)]
struct Reference {
    read_at: Instant,
    generation: u64,
    hubs: Arc<Vec<zerotouch_store::HubRecord>>,
    groups: Arc<Vec<EnrollmentRecord>>,
    x509_groups: Arc<Vec<x509::X509Group>>,
}

/// How long hubs and groups read from the database are reused.
pub const REFERENCE_TTL: Duration = Duration::from_secs(2);

/// How long this replica answers polls of a finished operation it wrote from memory, and how many it keeps.
const FINISHED_TTL: Duration = Duration::from_secs(30);
const FINISHED_MAX: usize = 100_000;

/// A finished operation this replica wrote: whose it is, when it was written, and the answer.
#[derive(Debug, Clone)]
struct Finished {
    registration_key: String,
    written: Instant,
    answer: RegistrationOperationStatus,
}

/// How long a verified token spares a poll the enrollment lookup (never beyond the token's own expiry).
const VERIFIED_TTL: Duration = Duration::from_secs(60);
const VERIFIED_MAX: usize = 100_000;

/// The registration service.
#[derive(Debug)]
pub struct RegistrationService {
    store: Store,
    pki: Arc<Pki>,
    hubs: Arc<Hubs>,
    settings: RegistrationSettings,
    limits: DeviceLimits,
    http: reqwest::Client,
    reference: Mutex<Option<Reference>>,
    /// Held by the one request reading the reference again (see [`RegistrationService::reference`]).
    reading_reference: tokio::sync::Mutex<()>,
    /// SHA-256 of (id scope, registration key, Authorization value) of tokens verified recently, and until when. A poll
    /// with the same token then needs no enrollment lookup; it can only read the device's own operations.
    verified: Mutex<HashMap<[u8; 32], Instant>>,
    /// Operations this replica wrote in a terminal state, by id, so that a device's first poll (which normally
    /// follows its register within milliseconds) needs no database read. A terminal operation never changes, so
    /// this cannot disagree with the database, except that a registration deleted in the last
    /// [`FINISHED_TTL`] still answers its operation. Other replicas read the database.
    ///
    /// Boxed: an answer is large, and growing a table of tens of thousands of them inline, under this lock, held up
    /// every request for tens of milliseconds (the benchmark's slowest devices came in clusters at the table's
    /// doublings).
    finished: Mutex<HashMap<String, Box<Finished>>>,
}

fn token_digest(device: &DeviceRequest) -> Option<[u8; 32]> {
    // A certificate is proved anew by every TLS handshake; only tokens are remembered.
    let Evidence::Sas(header) = &device.evidence else { return None };
    let digest = Sha256::new()
        .chain_update(device.id_scope.to_ascii_lowercase().as_bytes())
        .chain_update([0u8])
        .chain_update(device.registration_id.key().as_bytes())
        .chain_update([0u8])
        .chain_update(header.as_bytes())
        .finalize();
    Some(digest.into())
}

fn now_secs() -> u64 {
    u64::try_from(chrono::Utc::now().timestamp()).unwrap_or(0)
}

fn timestamp(at: chrono::DateTime<chrono::Utc>) -> String {
    zerotouch_wire::format_timestamp(at)
}

/// Operation ids look like Azure's (`4.{16 hex}.{uuid}`, only `[A-Za-z0-9.-]`, §1.4).
fn new_operation_id() -> String {
    format!("4.{:016x}.{}", rand::random::<u64>(), uuid::Uuid::new_v4())
}

impl RegistrationService {
    /// A service over `store`.
    pub fn new(
        store: Store,
        pki: Arc<Pki>,
        hubs: Arc<Hubs>,
        settings: RegistrationSettings,
        limits: DeviceLimits,
    ) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder().timeout(webhook::TIMEOUT).build()?;
        Ok(Self {
            store,
            pki,
            hubs,
            settings,
            limits,
            http,
            reference: Mutex::new(None),
            reading_reference: tokio::sync::Mutex::new(()),
            verified: Mutex::new(HashMap::new()),
            finished: Mutex::new(HashMap::new()),
        })
    }

    /// The cached reference, if any.
    fn cached_reference(&self) -> Option<Reference> {
        self.reference.lock().ok().and_then(|cached| cached.clone())
    }

    /// The linked hubs and the symmetric-key groups, from the cache when it is fresh.
    ///
    /// One request at a time reads them again (every registration needs them; under load, dozens would otherwise
    /// read them at once whenever the cache expires, and stall the database). While it does, requests keep the
    /// reading that has only aged; after a change made through this process, they wait for the new reading.
    async fn reference(&self) -> Result<Reference, ApiError> {
        let generation = self.store.reference_changes();
        let cached = self.cached_reference().filter(|r| r.generation == generation);
        if let Some(reference) = &cached
            && reference.read_at.elapsed() < REFERENCE_TTL
        {
            return Ok(reference.clone());
        }
        let _reading = match (self.reading_reference.try_lock(), cached) {
            (Ok(reading), _) => reading,
            (Err(_), Some(aged)) => return Ok(aged),
            (Err(_), None) => self.reading_reference.lock().await,
        };
        // Another request may have read them while this one waited.
        let generation = self.store.reference_changes();
        if let Some(reference) = self.cached_reference()
            && reference.generation == generation
            && reference.read_at.elapsed() < REFERENCE_TTL
        {
            return Ok(reference);
        }
        let hubs = self.store.hubs().list().await.map_err(ApiError::internal)?;
        let groups =
            self.store.enrollments().groups_by_attestation("symmetricKey").await.map_err(ApiError::internal)?;
        let x509_groups = self.store.enrollments().groups_by_attestation("x509").await.map_err(ApiError::internal)?;
        let authorities = self.store.certificate_authorities().all().await.map_err(ApiError::internal)?;
        let x509_groups = x509_groups
            .into_iter()
            .map(|group| {
                let anchors = x509::group_anchors(&group, |name| {
                    let key = name.to_ascii_lowercase();
                    authorities
                        .iter()
                        .find(|ca| ca.key == key)
                        .map(|ca| x509::Anchor { der: ca.certificate_der.clone(), verified: ca.verified })
                });
                x509::X509Group { group, anchors }
            })
            .collect();
        let reference = Reference {
            read_at: Instant::now(),
            generation,
            hubs: Arc::new(hubs),
            groups: Arc::new(groups),
            x509_groups: Arc::new(x509_groups),
        };
        if let Ok(mut cached) = self.reference.lock() {
            *cached = Some(reference.clone());
        }
        Ok(reference)
    }

    fn remember_verified(&self, device: &DeviceRequest, token_expiry: u64) {
        let Some(digest) = token_digest(device) else { return };
        let left = Duration::from_secs(token_expiry.saturating_sub(now_secs()));
        let Ok(mut verified) = self.verified.lock() else { return };
        if verified.len() >= VERIFIED_MAX {
            let now = Instant::now();
            verified.retain(|_, until| *until > now);
            if verified.len() >= VERIFIED_MAX {
                verified.clear();
            }
        }
        verified.insert(digest, Instant::now() + left.min(VERIFIED_TTL));
    }

    fn recently_verified(&self, device: &DeviceRequest) -> bool {
        let Some(digest) = token_digest(device) else { return false };
        self.verified.lock().is_ok_and(|v| v.get(&digest).is_some_and(|until| *until > Instant::now()))
    }

    fn remember_finished(&self, operation: &OperationRecord) {
        let Some(status) = RegistrationStatus::parse(&operation.status).filter(|s| *s != RegistrationStatus::Assigning)
        else {
            return;
        };
        let registration_state = operation.result.clone().and_then(|r| serde_json::from_value(r).ok());
        let answer = RegistrationOperationStatus { operation_id: operation.id.clone(), status, registration_state };
        let Ok(mut finished) = self.finished.lock() else { return };
        if finished.len() >= FINISHED_MAX {
            finished.retain(|_, f| f.written.elapsed() < FINISHED_TTL);
            if finished.len() >= FINISHED_MAX {
                finished.clear();
            }
        }
        let entry = Finished { registration_key: operation.registration_key.clone(), written: Instant::now(), answer };
        finished.insert(operation.id.clone(), Box::new(entry));
    }

    /// A finished operation of `registration_key` from memory, while it is young enough (see `finished`).
    fn recently_finished(&self, registration_key: &str, operation_id: &str) -> Option<RegistrationOperationStatus> {
        let finished = self.finished.lock().ok()?;
        let entry = finished.get(operation_id)?;
        let young = entry.written.elapsed() < FINISHED_TTL.min(self.settings.operation_ttl);
        (young && entry.registration_key == registration_key).then(|| entry.answer.clone())
    }

    fn throttled(RetryAfter(wait): RetryAfter) -> ApiError {
        ApiError::Throttled { retry_after: wait.as_secs().max(1) }
    }

    /// Refuses the request (401002 to the device) and audits why.
    ///
    /// Refusals of one registration id are audited as often as its requests are allowed (`--device-rate-limit`);
    /// beyond that they are only logged, so that a flood of bad credentials cannot fill the audit log or hold the
    /// database writer.
    async fn refuse(&self, device: &DeviceRequest, action: &str, reason: &str) -> ApiError {
        self.refuse_as(device, action, reason, ApiError::DeviceUnauthorized).await
    }

    /// Refuses the request with `error` and audits `reason` (at most at the device's request rate, as above).
    async fn refuse_as(&self, device: &DeviceRequest, action: &str, reason: &str, error: ApiError) -> ApiError {
        tracing::info!(registration_id = device.registration_id.as_str(), action, "device refused: {reason}");
        let bucket = format!("refused\0{}", device.registration_id.key());
        if self.limits.admit(&bucket).is_ok()
            && let Err(e) =
                self.store.registrations().audit_refused_device(device.registration_id.as_str(), action, reason).await
        {
            tracing::error!("cannot audit a refused device request: {e}");
        }
        error
    }

    /// Refuses with a certificate error, whose message is also the audited reason.
    async fn refuse_certificate(&self, device: &DeviceRequest, action: &str, error: ApiError) -> ApiError {
        let reason = format!("x509: {error}");
        self.refuse_as(device, action, &reason, error).await
    }

    /// X.509 attestation (§4): an operational certificate of ours (the device renews), else the individual
    /// enrollment whose device certificate it is, else the group whose CA sits closest to the device certificate
    /// in its chain.
    ///
    /// `known`: what the caller already read about the leaf (EST), else it is read here.
    async fn authenticate_x509(
        &self,
        device: &DeviceRequest,
        action: &str,
        chain: &[Vec<u8>],
        known: Option<KnownCertificate>,
    ) -> Result<Matched, ApiError> {
        let Some((leaf, intermediates)) = chain.split_first() else {
            return Err(self.refuse(device, action, "no certificate").await);
        };
        if chain.len() > zerotouch_pki::chain::MAX_CHAIN_LENGTH {
            let error = ApiError::DeviceCertificate {
                code: ErrorCode::InvalidCertificateChain,
                message: format!(
                    "the device sent {} certificates; a chain has at most {}",
                    chain.len(),
                    zerotouch_pki::chain::MAX_CHAIN_LENGTH
                ),
            };
            return Err(self.refuse_certificate(device, action, error).await);
        }
        let key = device.registration_id.key();
        let now = time::OffsetDateTime::now_utc();
        // An operational certificate of ours names its device id, which may differ from the registration id; it is
        // bound to its registration by the certificate record instead.
        let known = match known {
            Some(known) => known,
            None => KnownCertificate { issued: self.issued_certificate(leaf).await?, registration: None },
        };
        if let Some(issued) = known.issued {
            return self.authenticate_operational(device, action, leaf, issued, known.registration, now).await;
        }
        let cn = match zerotouch_pki::subject_cn(leaf) {
            Ok(cn) => cn,
            Err(e) => return Err(self.refuse(device, action, &format!("x509: {e}")).await),
        };
        if !cn.eq_ignore_ascii_case(device.registration_id.as_str()) {
            let reason = format!("x509: the certificate's CN {cn:?} is not the registration id");
            return Err(self.refuse(device, action, &reason).await);
        }
        let certificate_info = x509::info(leaf);
        match self.store.enrollments().get(EnrollmentKind::Individual, &key).await {
            Ok(enrollment) => {
                if enrollment.attestation_type != "x509" {
                    let reason = format!("x509: the enrollment attests by {}", enrollment.attestation_type);
                    return Err(self.refuse(device, action, &reason).await);
                }
                if !x509::individual_matches(&enrollment, leaf) {
                    let reason = "x509: the certificate is neither of the enrollment's device certificates";
                    return Err(self.refuse(device, action, reason).await);
                }
                if let Err(e) = x509::check_validity(leaf, now) {
                    return Err(self.refuse_certificate(device, action, e).await);
                }
                let x509 = X509RegistrationResult { certificate_info, ..Default::default() };
                return Ok(Matched {
                    kind: EnrollmentKind::Individual,
                    enrollment,
                    x509: Some(x509),
                    operational: false,
                    tpm: None,
                });
            }
            Err(StoreError::NotFound) => {}
            Err(e) => return Err(ApiError::internal(e)),
        }
        let reference = self.reference().await?;
        match x509::match_group(leaf, intermediates, &reference.x509_groups, now) {
            Ok((index, anchor)) => {
                let group = reference.x509_groups[index].group.clone();
                let x509 = X509RegistrationResult {
                    certificate_info,
                    enrollment_group_id: Some(group.id.clone()),
                    signing_certificate_info: x509::info(&anchor.der),
                };
                Ok(Matched {
                    kind: EnrollmentKind::Group,
                    enrollment: group,
                    x509: Some(x509),
                    operational: false,
                    tpm: None,
                })
            }
            Err(e) => Err(self.refuse_certificate(device, action, e).await),
        }
    }

    /// A device presenting an operational certificate we issued: it renews (or registers again) if the
    /// certificate is its own, not revoked, still valid (or expired within the renewal grace, unless superseded),
    /// and its issuing CA is still trusted. The enrollment is the one the device registered through.
    async fn authenticate_operational(
        &self,
        device: &DeviceRequest,
        action: &str,
        leaf: &[u8],
        issued: zerotouch_store::CertificateRecord,
        registration: Option<RegistrationRecord>,
        now: time::OffsetDateTime,
    ) -> Result<Matched, ApiError> {
        let key = device.registration_id.key();
        let refused = |code: ErrorCode, message: String| ApiError::DeviceCertificate { code, message };
        if issued.registration_key != key {
            return Err(self.refuse(device, action, "x509: an operational certificate of another device").await);
        }
        if issued.status == zerotouch_store::CertificateStatus::Revoked {
            let error = refused(
                ErrorCode::CertificateRevoked,
                format!("the operational certificate {} was revoked", issued.serial),
            );
            return Err(self.refuse_certificate(device, action, error).await);
        }
        let Some(ca) = self.pki.by_name(&issued.issuing_ca).await? else {
            let error = refused(
                ErrorCode::UnknownCertificateAuthority,
                format!("the issuing CA {:?} of this certificate is no longer trusted", issued.issuing_ca),
            );
            return Err(self.refuse_certificate(device, action, error).await);
        };
        let not_after = crate::pki::to_time(issued.not_after);
        let mut checked_at = now;
        if now > not_after {
            let grace = time::Duration::try_from(self.pki.renewal_grace()).unwrap_or(time::Duration::ZERO);
            let error = if issued.status == zerotouch_store::CertificateStatus::Superseded {
                Some(refused(
                    ErrorCode::CertificateNotRenewable,
                    format!("the operational certificate {} was superseded and has expired", issued.serial),
                ))
            } else if now - not_after > grace {
                Some(refused(
                    ErrorCode::CertificateExpired,
                    format!(
                        "the operational certificate {} expired at {not_after} (renewal grace: {} s)",
                        issued.serial,
                        grace.whole_seconds()
                    ),
                ))
            } else {
                None
            };
            if let Some(error) = error {
                return Err(self.refuse_certificate(device, action, error).await);
            }
            checked_at = not_after - time::Duration::SECOND;
        }
        if let Err(e) = zerotouch_pki::verify_chain(leaf, &[], ca.ca.certificate_der(), checked_at) {
            return Err(self.refuse_certificate(device, action, x509::refusal(&e)).await);
        }
        let registration = match registration {
            Some(registration) => registration,
            None => match self.store.registrations().get(&key).await {
                Ok(registration) => registration,
                Err(StoreError::NotFound) => {
                    return Err(self.refuse(device, action, "x509: the device's registration was deleted").await);
                }
                Err(e) => return Err(ApiError::internal(e)),
            },
        };
        let (kind, enrollment_key) = match &registration.enrollment_group_key {
            Some(group) => (EnrollmentKind::Group, group.clone()),
            None => (EnrollmentKind::Individual, key.clone()),
        };
        let enrollment = match self.store.enrollments().get(kind, &enrollment_key).await {
            Ok(enrollment) => enrollment,
            Err(StoreError::NotFound) => {
                return Err(self.refuse(device, action, "x509: the device's enrollment was deleted").await);
            }
            Err(e) => return Err(ApiError::internal(e)),
        };
        let x509 = X509RegistrationResult {
            certificate_info: x509::info(leaf),
            enrollment_group_id: (kind == EnrollmentKind::Group).then(|| enrollment.id.clone()),
            signing_certificate_info: x509::info(ca.ca.certificate_der()),
        };
        Ok(Matched { kind, enrollment, x509: Some(x509), operational: true, tpm: None })
    }

    /// Finds the enrollment whose key verifies the device's token: its individual enrollment if it has one,
    /// else the first symmetric-key group whose derived key does.
    async fn authenticate(&self, device: &DeviceRequest, action: &str) -> Result<Matched, ApiError> {
        if !device.id_scope.eq_ignore_ascii_case(&self.settings.id_scope) {
            return Err(self.refuse(device, action, "the id scope is not this service's").await);
        }
        let header = match &device.evidence {
            Evidence::Sas(header) => header,
            Evidence::Certificates(chain) => return self.authenticate_x509(device, action, chain, None).await,
            Evidence::None => return Err(self.refuse(device, action, "no credentials").await),
        };
        let token = match sas::parse(header) {
            Ok(token) => token,
            Err(e) => return Err(self.refuse(device, action, &format!("sas: {e}")).await),
        };
        let resource = format!("{}/registrations/{}", device.id_scope, device.registration_id.as_str());
        let expected =
            sas::Expectation { resource: &resource, now: now_secs(), skew: self.settings.sas_clock_skew.as_secs() };
        let key = device.registration_id.key();

        match self.store.enrollments().get(EnrollmentKind::Individual, &key).await {
            Ok(enrollment) => {
                if enrollment.attestation_type == "tpm" {
                    return self.authenticate_tpm_individual(device, action, &token, &expected).await;
                }
                let keys = enrollment_keys(&enrollment);
                if keys.is_empty() {
                    let reason = format!("the enrollment attests by {}", enrollment.attestation_type);
                    return Err(self.refuse(device, action, &reason).await);
                }
                let keys: Vec<&[u8]> = keys.iter().map(|k| k.expose_bytes()).collect();
                return match sas::verify(&token, &expected, &keys) {
                    Ok(_) => {
                        self.remember_verified(device, token.expiry);
                        Ok(Matched {
                            kind: EnrollmentKind::Individual,
                            enrollment,
                            x509: None,
                            operational: false,
                            tpm: None,
                        })
                    }
                    Err(e) => Err(self.refuse(device, action, &format!("sas: {e}")).await),
                };
            }
            Err(StoreError::NotFound) => {}
            Err(e) => return Err(ApiError::internal(e)),
        }

        let reference = self.reference().await?;
        let mut last_error = sas::SasError::BadSignature;
        for group in reference.groups.iter() {
            let derived: Vec<_> = enrollment_keys(group)
                .iter()
                .map(|k| sas::derive_device_key(k.expose_bytes(), device.registration_id.as_str()))
                .collect();
            let keys: Vec<&[u8]> = derived.iter().map(|k| k.as_slice()).collect();
            match sas::verify(&token, &expected, &keys) {
                Ok(_) => {
                    self.remember_verified(device, token.expiry);
                    return Ok(Matched {
                        kind: EnrollmentKind::Group,
                        enrollment: group.clone(),
                        x509: None,
                        operational: false,
                        tpm: None,
                    });
                }
                Err(e) => last_error = e,
            }
        }
        if let Some(matched) = self.authenticate_tpm(device, action, &token, &expected).await? {
            return Ok(matched);
        }
        Err(self.refuse(device, action, &format!("no enrollment verifies the token (sas: {last_error})")).await)
    }

    /// `register`: authenticates, allocates and records; returns the operation (status `assigning` on the wire).
    pub async fn register(&self, request: RegistrationRequest) -> Result<RegistrationOperationStatus, ApiError> {
        let device = &request.device;
        let key = device.registration_id.key();
        let _slot = self.limits.enter().ok_or(Self::throttled(RetryAfter(Duration::from_secs(1))))?;
        if let Some(body_id) = request.body.registration_id.as_deref().filter(|id| !id.is_empty())
            && !body_id.eq_ignore_ascii_case(device.registration_id.as_str())
        {
            return Err(ApiError::InvalidField(zerotouch_wire::field::FieldError::new(
                "registrationId",
                format!("{body_id:?} differs from the registration id in the URL"),
            )));
        }
        self.tpm_first_leg(&request).await?;
        let matched = self.authenticate(device, "register").await?;
        // Counted once the device proved who it is: requests with bad credentials must not use up its budget.
        self.limits.admit(&key).map_err(Self::throttled)?;
        let policy: Policy = serde_json::from_value(matched.enrollment.document.clone()).map_err(|e| {
            ApiError::internal(format!(
                "stored {} {:?} cannot be read: {e}",
                matched.kind.noun(),
                matched.enrollment.id
            ))
        })?;
        let certificate_policy = policy.certificate_policy.unwrap_or_default();
        let csr = match request.body.csr.as_deref().filter(|csr| !csr.trim().is_empty()) {
            Some(csr) => Some(Pki::check_csr(csr, device.registration_id.as_str(), &certificate_policy)?),
            None => None,
        };
        let hubs = self.reference().await?.hubs;

        // The first attempt supposes a device new to us and skips reading its state, unless a webhook is to see
        // the device's current hub or the device renews an operational certificate (its state must still exist): a device that has a state loses the insert to it and decides again on it, as
        // does one whose state a concurrent registration changed between our read and our write (allocation is
        // deterministic, so the outcome agrees).
        let mut webhook_answer = None;
        let mut read_state = policy.allocation_policy == Some(AllocationPolicy::Custom) || matched.operational;
        for _ in 0..16 {
            let current = if read_state {
                match self.store.registrations().get(&key).await {
                    Ok(record) => Some(record),
                    Err(StoreError::NotFound) => None,
                    Err(e) => return Err(ApiError::internal(e)),
                }
            } else {
                None
            };
            read_state = true;
            let decision = self.decide(&request, &matched, &policy, &hubs, current.as_ref(), &mut webhook_answer).await;
            let group_id = (matched.kind == EnrollmentKind::Group).then(|| matched.enrollment.id.clone());
            // A certificate only for a device that is assigned: a failed or disabled registration gets none.
            let issued = match (&csr, &decision.device_id, decision.status) {
                (Some(csr), Some(device_id), RegistrationStatus::Assigned) => {
                    Some(self.pki.issue(csr, device_id, &certificate_policy).await?)
                }
                _ => None,
            };
            // A hub with an adapter learns of the device through the outbox; until it has, the device is assigning.
            let hub_job = self.hub_job(&hubs, &decision, current.as_ref(), issued.as_ref(), device, &matched);
            let written_status = if hub_job.is_some() { RegistrationStatus::Assigning } else { decision.status };
            let record = RegistrationRecord {
                key: key.clone(),
                registration_id: device.registration_id.as_str().to_owned(),
                enrollment_group_key: (matched.kind == EnrollmentKind::Group).then(|| matched.enrollment.key.clone()),
                device_id: decision.device_id.clone(),
                assigned_hub: decision.hub.clone(),
                status: written_status.as_str().to_owned(),
                substatus: decision.substatus.clone(),
                error_code: decision.error.as_ref().and_then(|(c, _)| i32::try_from(c.number()).ok()),
                error_message: decision.error.as_ref().map(|(_, m)| m.clone()),
                payload: decision.payload.clone(),
                initial_twin: decision.initial_twin.clone(),
                etag: String::new(),
                created_at: current.as_ref().map_or_else(chrono::Utc::now, |c| c.created_at),
                updated_at: chrono::Utc::now(),
            };
            let operation = OperationRecord {
                id: new_operation_id(),
                registration_key: key.clone(),
                status: written_status.as_str().to_owned(),
                error_code: record.error_code,
                error_message: record.error_message.clone(),
                result: None,
                created_at: chrono::Utc::now(),
                updated_at: chrono::Utc::now(),
            };
            let certificate = issued.as_ref().map(|(ca, issued)| {
                certificate_record(&key, decision.device_id.clone().unwrap_or_default(), &ca.name, issued)
            });
            let detail = match &certificate {
                Some(c) => format!("{}; certificate {} issued by {}", decision.detail, c.serial, c.issuing_ca),
                None => decision.detail.clone(),
            };
            let outcome = RegistrationOutcome {
                record,
                expected_etag: current.as_ref().map(|c| c.etag.clone()),
                operation,
                detail,
                certificate,
                hub_job,
            };
            let x509 = matched.x509.clone();
            let tpm_result = matched.tpm.as_ref().map(|t| t.result.clone());
            let chain: Option<Vec<String>> = issued.as_ref().map(|(_, issued)| {
                issued.chain_der.iter().map(|der| base64::engine::general_purpose::STANDARD.encode(der)).collect()
            });
            let snapshot: zerotouch_store::Snapshot = Box::new(move |r: &RegistrationRecord| {
                let result = DeviceRegistrationResult {
                    issued_certificate_chain: chain.clone(),
                    ..tpm::with_tpm(result_of(r, group_id.as_deref(), x509.clone()), tpm_result.as_ref())
                };
                serde_json::to_value(result).unwrap_or(Value::Null)
            });
            match self.store.registrations().commit(outcome, snapshot).await {
                Ok((_, operation, hub_job)) => {
                    let settled = match &hub_job {
                        Some(job) => self.hubs.deliver_inline(job).await,
                        None => None,
                    };
                    self.remember_finished(settled.as_ref().unwrap_or(&operation));
                    return Ok(RegistrationOperationStatus {
                        operation_id: operation.id,
                        status: RegistrationStatus::Assigning,
                        registration_state: None,
                    });
                }
                Err(StoreError::Conflict(_)) => continue,
                Err(e) => return Err(ApiError::internal(e)),
            }
        }
        Err(ApiError::Conflict("the registration is changing concurrently; retry".into()))
    }

    /// The outbox job that puts an assigned device on its hub, if the hub has an adapter. The device's credential
    /// there is the certificate issued now, else the certificate it authenticated with, else its symmetric key (for a
    /// TPM device, the hub key its answer carries); the identity it leaves (another hub, or another device id) is
    /// deleted once the new one exists.
    fn hub_job(
        &self,
        hubs: &[zerotouch_store::HubRecord],
        decision: &Decision,
        current: Option<&RegistrationRecord>,
        issued: Option<&(Arc<crate::pki::LoadedCa>, zerotouch_pki::IssuedCertificate)>,
        device: &DeviceRequest,
        matched: &Matched,
    ) -> Option<zerotouch_store::NewHubJob> {
        if decision.status != RegistrationStatus::Assigned {
            return None;
        }
        let (hub, device_id) = (decision.hub.as_ref()?, decision.device_id.as_ref()?);
        let record = hubs.iter().find(|h| &h.hub.host_name == hub)?;
        if record.hub.kind == zerotouch_store::NO_ADAPTER {
            return None;
        }
        let presented = match &device.evidence {
            Evidence::Certificates(chain) => chain.first(),
            _ => None,
        };
        let credential = match (issued, presented) {
            (Some((_, issued)), _) => issued.chain_der.first().map(|leaf| zerotouch_store::CredentialRef::X509 {
                subject_name: device_id.clone(),
                thumbprint: zerotouch_pki::thumbprint_sha256_hex(leaf),
            }),
            // Authentication read this CN already (it is the registration id).
            (None, Some(leaf)) => Some(zerotouch_store::CredentialRef::X509 {
                subject_name: zerotouch_pki::subject_cn(leaf)
                    .unwrap_or_else(|_| device.registration_id.as_str().to_owned()),
                thumbprint: zerotouch_pki::thumbprint_sha256_hex(leaf),
            }),
            // A TPM device: the hub key the answer delivers into its TPM.
            (None, None) => Some(match &matched.tpm {
                Some(tpm) => zerotouch_store::CredentialRef::HubKey { key: tpm.hub_key.clone() },
                None => zerotouch_store::CredentialRef::SymmetricKey,
            }),
        }?;
        let previous = current
            .and_then(|c| c.assigned_hub.clone().zip(c.device_id.clone()))
            .filter(|(old_hub, old_device)| old_hub != hub || old_device != device_id);
        let settings = self.hubs.settings();
        Some(zerotouch_store::NewHubJob {
            id: uuid::Uuid::new_v4().simple().to_string(),
            hub: hub.clone(),
            device_id: device_id.clone(),
            document: credential.document(decision.initial_twin.as_ref()),
            deadline_at: chrono::Utc::now() + chrono::Duration::from_std(settings.deadline).unwrap_or_default(),
            inline_lease: settings.inline_timeout + Duration::from_secs(30),
            previous,
        })
    }

    /// Allocates the device and decides its new state.
    async fn decide(
        &self,
        request: &RegistrationRequest,
        matched: &Matched,
        policy: &Policy,
        hubs: &[zerotouch_store::HubRecord],
        current: Option<&RegistrationRecord>,
        webhook_answer: &mut Option<Result<webhook::Answer, String>>,
    ) -> Decision {
        let registration_id = request.device.registration_id.as_str();
        let device_id = policy.device_id.clone().filter(|_| matched.kind == EnrollmentKind::Individual);
        let device_id = device_id.unwrap_or_else(|| registration_id.to_owned());
        let failed = |code: ErrorCode, message: String| Decision {
            status: RegistrationStatus::Failed,
            hub: None,
            device_id: None,
            substatus: None,
            detail: format!("failed: {message}"),
            error: Some((code, message)),
            payload: None,
            initial_twin: None,
        };
        if matched.enrollment.provisioning_status == "disabled" {
            return Decision {
                status: RegistrationStatus::Disabled,
                hub: None,
                device_id: None,
                substatus: None,
                error: None,
                payload: None,
                initial_twin: None,
                detail: format!("disabled: the {} is disabled", matched.kind.noun()),
            };
        }
        let reprovision = policy.reprovision_policy.unwrap_or_default();
        let assigned_now = current
            .filter(|c| c.status == RegistrationStatus::Assigned.as_str())
            .and_then(|c| c.assigned_hub.as_deref().map(|hub| (hub, c.substatus.as_deref().unwrap_or_default())));

        // The hubs this enrollment may use: the ones it lists, else every hub that applies the policy.
        let named: Vec<String> = policy
            .iot_hubs
            .clone()
            .filter(|h| !h.is_empty())
            .or_else(|| policy.iot_hub_host_name.clone().map(|h| vec![h]))
            .unwrap_or_default()
            .into_iter()
            .map(|h| h.to_ascii_lowercase())
            .collect();
        let linked: Vec<&zerotouch_store::HubRecord> = if named.is_empty() {
            hubs.iter().filter(|h| h.hub.apply_allocation_policy).collect()
        } else {
            hubs.iter().filter(|h| named.contains(&h.hub.host_name)).collect()
        };
        if linked.is_empty() && assigned_now.is_none() {
            return failed(ErrorCode::NoHubAvailable, "no linked hub is available for this enrollment".into());
        }

        let mut payload = None;
        let mut webhook_twin = None;
        let chosen: String = match policy.allocation_policy.unwrap_or_default() {
            AllocationPolicy::Custom => {
                let Some(definition) = &policy.custom_allocation_definition else {
                    return failed(ErrorCode::CustomAllocationFailed, "Custom allocation failed: no webhook".into());
                };
                // Under "never re-provision" the webhook may only keep the device where it is (§7).
                let offered: Vec<String> = match assigned_now {
                    Some((hub, _)) if !reprovision.update_hub_assignment => vec![hub.to_owned()],
                    _ => linked.iter().map(|h| h.hub.host_name.clone()).collect(),
                };
                if webhook_answer.is_none() {
                    let body = self.allocation_request(request, matched, current, &offered);
                    *webhook_answer = Some(webhook::allocate(&self.http, &definition.webhook_url, &body).await);
                }
                match webhook_answer.clone() {
                    Some(Ok(answer)) => {
                        let host = answer.iot_hub_host_name.to_ascii_lowercase();
                        if !offered.contains(&host) {
                            return failed(
                                ErrorCode::CustomAllocationFailed,
                                format!(
                                    "Custom allocation failed: the webhook chose {:?}, which is not a linked hub",
                                    answer.iot_hub_host_name
                                ),
                            );
                        }
                        payload = answer.payload;
                        webhook_twin = answer.initial_twin;
                        host
                    }
                    Some(Err(message)) => return failed(ErrorCode::CustomAllocationFailed, message),
                    None => return failed(ErrorCode::CustomAllocationFailed, "Custom allocation failed".into()),
                }
            }
            AllocationPolicy::Static => match linked.first() {
                Some(hub) => hub.hub.host_name.clone(),
                None => return failed(ErrorCode::NoHubAvailable, "the enrollment's static hub is not linked".into()),
            },
            AllocationPolicy::Hashed | AllocationPolicy::GeoLatency => {
                let candidates: Vec<allocation::Candidate<'_>> = linked
                    .iter()
                    .map(|h| allocation::Candidate { host_name: &h.hub.host_name, weight: h.hub.allocation_weight })
                    .collect();
                match allocation::hashed(&request.device.registration_id.key(), &candidates) {
                    Some(hub) => hub.to_owned(),
                    // Only reachable when the device is assigned and no hub is linked any more: it stays.
                    None => assigned_now.map(|(hub, _)| hub.to_owned()).unwrap_or_default(),
                }
            }
        };

        let assignment = allocation::reassign(assigned_now, &chosen, reprovision);
        let initial_twin = if assignment.apply_initial_twin {
            webhook_twin.or_else(|| policy.initial_twin.clone())
        } else {
            current.and_then(|c| c.initial_twin.clone())
        };
        Decision {
            status: RegistrationStatus::Assigned,
            detail: format!("assigned to {} ({})", assignment.hub, assignment.substatus),
            hub: Some(assignment.hub),
            device_id: Some(device_id),
            substatus: Some(assignment.substatus),
            error: None,
            // The webhook's payload is always returned (§7).
            payload,
            initial_twin,
        }
    }

    /// The `AllocationRequest` of §7.
    fn allocation_request(
        &self,
        request: &RegistrationRequest,
        matched: &Matched,
        current: Option<&RegistrationRecord>,
        linked: &[String],
    ) -> Value {
        let record = &matched.enrollment;
        let enrollment = zerotouch_wire::enrollment::render(
            &record.document,
            &record.etag,
            &timestamp(record.created_at),
            &timestamp(record.updated_at),
            None,
        );
        let mut context = json!({
            "registrationId": request.device.registration_id.as_str(),
            "symmetricKey": {},
        });
        if let Some(current) = current.filter(|c| c.assigned_hub.is_some()) {
            context["currentIotHubHostName"] = json!(current.assigned_hub);
            context["currentDeviceId"] = json!(current.device_id);
        }
        if let Some(payload) = &request.body.payload {
            context["payload"] = payload.clone();
        }
        let enrollment_field = match matched.kind {
            EnrollmentKind::Individual => "individualEnrollment",
            EnrollmentKind::Group => "enrollmentGroup",
        };
        json!({ enrollment_field: enrollment, "deviceRuntimeContext": context, "linkedHubs": linked })
    }

    /// The operational certificate of ours `leaf` is, if it is one.
    async fn issued_certificate(&self, leaf: &[u8]) -> Result<Option<zerotouch_store::CertificateRecord>, ApiError> {
        match self.store.certificates().by_thumbprint(&zerotouch_pki::thumbprint_sha256_hex(leaf)).await {
            Ok(issued) => Ok(Some(issued)),
            Err(StoreError::NotFound) => Ok(None),
            Err(e) => Err(ApiError::internal(e)),
        }
    }

    /// Who an EST client is, from its TLS certificate chain (leaf first): the registration an operational
    /// certificate of ours was issued to (its CN is the device id, which may differ from the registration id),
    /// else the certificate's subject CN. Returns the device request and what was read on the way, which
    /// authentication then does not read again.
    async fn est_device(&self, chain: Vec<Vec<u8>>) -> Result<(DeviceRequest, KnownCertificate), ApiError> {
        let leaf = chain.first().ok_or(ApiError::DeviceUnauthorized)?;
        let issued = self.issued_certificate(leaf).await?;
        let (registration_id, registration) = match &issued {
            // The id as the device spells it (CSRs name it exactly); the key if the registration is gone.
            Some(issued) => match self.store.registrations().get(&issued.registration_key).await {
                Ok(registration) => (registration.registration_id.clone(), Some(registration)),
                Err(StoreError::NotFound) => (issued.registration_key.clone(), None),
                Err(e) => return Err(ApiError::internal(e)),
            },
            None => (zerotouch_pki::subject_cn(leaf).map_err(|_| ApiError::DeviceUnauthorized)?, None),
        };
        let registration_id =
            RegistrationId::try_from(registration_id.as_str()).map_err(|_| ApiError::DeviceUnauthorized)?;
        let device = DeviceRequest {
            id_scope: self.settings.id_scope.clone(),
            registration_id,
            evidence: Evidence::Certificates(chain),
        };
        Ok((device, KnownCertificate { issued, registration }))
    }

    /// EST enrollment (RFC 7030): a device authenticated by its TLS certificate `chain` (leaf first) gets an
    /// operational certificate from `body` (base64 DER PKCS#10, decoded only once the device is authenticated) and
    /// keeps its registration (device id, hub). `renewal` (simplereenroll) takes only an operational certificate of
    /// ours; simpleenroll takes that or a device certificate of an X.509 enrollment. Returns the chain, the new
    /// certificate first. The device must have an `assigned` registration.
    pub async fn enroll_certificate(
        &self,
        chain: Vec<Vec<u8>>,
        body: &[u8],
        renewal: bool,
    ) -> Result<Vec<Vec<u8>>, ApiError> {
        let action = if renewal { "simplereenroll" } else { "simpleenroll" };
        let _slot = self.limits.enter().ok_or(Self::throttled(RetryAfter(Duration::from_secs(1))))?;
        let (device, known) = self.est_device(chain).await?;
        let key = device.registration_id.key();
        let Evidence::Certificates(chain) = &device.evidence else {
            return Err(self.refuse(&device, action, "no certificate").await);
        };
        let registration = known.registration.clone();
        let matched = self.authenticate_x509(&device, action, chain, Some(known)).await?;
        self.limits.admit(&key).map_err(Self::throttled)?;
        if renewal && !matched.operational {
            let reason = "simplereenroll renews an operational certificate; this is another certificate";
            return Err(self.refuse(&device, action, reason).await);
        }
        if matched.enrollment.provisioning_status == "disabled" {
            let reason = format!("the {} is disabled", matched.kind.noun());
            return Err(self.refuse(&device, action, &reason).await);
        }
        let policy: Policy = serde_json::from_value(matched.enrollment.document.clone())
            .map_err(|e| ApiError::internal(format!("stored enrollment {:?}: {e}", matched.enrollment.id)))?;
        let certificate_policy = policy.certificate_policy.unwrap_or_default();
        let csr = zerotouch_pki::decode_est_base64(body)
            .map_err(|_| ApiError::CsrRefused("the body is not base64 DER PKCS#10 (RFC 7030 §4.2)".into()))?;
        let csr = zerotouch_pki::check_csr(
            &csr,
            device.registration_id.as_str(),
            &zerotouch_pki::KeyPolicy { allow_rsa: certificate_policy.allow_rsa },
        )
        .map_err(|e| ApiError::CsrRefused(e.to_string()))?;
        // A certificate belongs to a registration (which revocation finds it by): the device registers first.
        let registration = match registration {
            Some(registration) => Ok(registration),
            None => self.store.registrations().get(&key).await,
        };
        let device_id = match registration {
            Ok(registration) if registration.status == RegistrationStatus::Assigned.as_str() => registration.device_id,
            Ok(_) | Err(StoreError::NotFound) => {
                let reason = "EST issues to assigned devices only: the device must register first";
                return Err(self.refuse(&device, action, reason).await);
            }
            Err(e) => return Err(ApiError::internal(e)),
        };
        let device_id = device_id.unwrap_or_else(|| device.registration_id.as_str().to_owned());
        let (ca, issued) = self.pki.issue(&csr, &device_id, &certificate_policy).await?;
        let record = certificate_record(&key, device_id, &ca.name, &issued);
        let actor = zerotouch_store::Actor {
            subject: format!("device:{}", device.registration_id.as_str()),
            role: "device".into(),
        };
        self.store.registrations().record_certificate(record, action, &actor).await.map_err(ApiError::internal)?;
        Ok(issued.chain_der)
    }

    /// An operation poll: 200 with the result once terminal, or still assigning.
    pub async fn operation(
        &self,
        device: DeviceRequest,
        operation_id: &str,
    ) -> Result<RegistrationOperationStatus, ApiError> {
        let key = device.registration_id.key();
        if !self.recently_verified(&device) {
            self.authenticate(&device, "poll").await?;
        }
        self.limits.admit(&key).map_err(Self::throttled)?;
        if let Some(answer) = self.recently_finished(&key, operation_id) {
            return Ok(answer);
        }
        let not_found = || ApiError::RegistrationNotFound(format!("operation {operation_id:?}"));
        let operation = match self.store.registrations().operation(&key, operation_id).await {
            Ok(operation) => operation,
            Err(StoreError::NotFound) => return Err(not_found()),
            Err(e) => return Err(ApiError::internal(e)),
        };
        let age = chrono::Utc::now().signed_duration_since(operation.created_at);
        if age.to_std().unwrap_or_default() > self.settings.operation_ttl {
            return Err(not_found());
        }
        let status = RegistrationStatus::parse(&operation.status)
            .ok_or_else(|| ApiError::internal(format!("stored operation status {:?}", operation.status)))?;
        let registration_state = match status {
            RegistrationStatus::Assigning => None,
            _ => operation.result.clone().and_then(|r| serde_json::from_value(r).ok()),
        };
        Ok(RegistrationOperationStatus { operation_id: operation.id, status, registration_state })
    }

    /// A device registration status lookup: the device's current registration.
    pub async fn status(&self, device: DeviceRequest) -> Result<DeviceRegistrationResult, ApiError> {
        let key = device.registration_id.key();
        let matched = self.authenticate(&device, "statusLookup").await?;
        self.limits.admit(&key).map_err(Self::throttled)?;
        let record = match self.store.registrations().get(&key).await {
            Ok(record) => record,
            Err(StoreError::NotFound) => {
                return Err(ApiError::RegistrationNotFound(format!(
                    "registration {:?}",
                    device.registration_id.as_str()
                )));
            }
            Err(e) => return Err(ApiError::internal(e)),
        };
        let group = (matched.kind == EnrollmentKind::Group).then(|| matched.enrollment.id.clone());
        let result = result_of(&record, group.as_deref(), matched.x509);
        Ok(tpm::without_symmetric_key(result, &matched.enrollment))
    }

    /// Removes operations older than the TTL, every minute, for as long as the process runs.
    pub async fn expire_operations(self: std::sync::Arc<Self>) {
        let mut tick = tokio::time::interval(Duration::from_secs(60));
        loop {
            tick.tick().await;
            let Ok(ttl) = chrono::Duration::from_std(self.settings.operation_ttl) else { return };
            match self.store.registrations().delete_operations_before(chrono::Utc::now() - ttl).await {
                Ok(0) => {}
                Ok(n) => tracing::info!("expired {n} registration operations"),
                Err(e) => tracing::warn!("cannot expire registration operations: {e}"),
            }
        }
    }
}

/// What the store keeps of a certificate issued to the registration `key` (the writer sets its status and time).
fn certificate_record(
    key: &str,
    device_id: String,
    issuing_ca: &str,
    issued: &zerotouch_pki::IssuedCertificate,
) -> zerotouch_store::CertificateRecord {
    zerotouch_store::CertificateRecord {
        serial: issued.serial_hex.clone(),
        registration_key: key.to_owned(),
        device_id,
        issuing_ca: issuing_ca.to_owned(),
        not_before: crate::pki::to_chrono(issued.not_before),
        not_after: crate::pki::to_chrono(issued.not_after),
        status: zerotouch_store::CertificateStatus::Active,
        thumbprint_sha256: issued.sha256_thumbprint.clone(),
        revoked_at: None,
        revocation_reason: None,
        created_at: chrono::Utc::now(),
    }
}

/// The keys of a symmetric-key enrollment (none for other attestations).
fn enrollment_keys(enrollment: &EnrollmentRecord) -> Vec<SymmetricKey> {
    [&enrollment.primary_key, &enrollment.secondary_key].into_iter().flatten().cloned().collect()
}

/// A registration record as both APIs show it (`DeviceRegistrationState`); `None` if its status is unknown.
pub fn state_of(record: &RegistrationRecord) -> Option<DeviceRegistrationResult> {
    Some(DeviceRegistrationResult {
        registration_id: record.registration_id.clone(),
        created_date_time_utc: Some(timestamp(record.created_at)),
        assigned_hub: record.assigned_hub.clone(),
        device_id: record.device_id.clone(),
        status: RegistrationStatus::parse(&record.status)?,
        substatus: record.substatus.clone(),
        error_code: record.error_code.and_then(|c| u32::try_from(c).ok()),
        error_message: record.error_message.clone(),
        last_updated_date_time_utc: Some(timestamp(record.updated_at)),
        etag: Some(record.etag.clone()),
        payload: record.payload.clone(),
        symmetric_key: None,
        x509: None,
        tpm: None,
        issued_certificate_chain: None,
    })
}

/// The device's view of its registration (`DeviceRegistrationResult`, §1.4): with `x509` for a device that
/// presented a certificate, else with `symmetricKey`.
fn result_of(
    record: &RegistrationRecord,
    group_id: Option<&str>,
    x509: Option<X509RegistrationResult>,
) -> DeviceRegistrationResult {
    match state_of(record) {
        // Azure answers a disabled registration with its id and status only.
        Some(state) if state.status != RegistrationStatus::Disabled => match x509 {
            Some(x509) => DeviceRegistrationResult { x509: Some(x509), ..state },
            None => DeviceRegistrationResult {
                symmetric_key: Some(SymmetricKeyRegistrationResult {
                    enrollment_group_id: group_id.map(str::to_owned),
                }),
                ..state
            },
        },
        state => DeviceRegistrationResult {
            registration_id: record.registration_id.clone(),
            created_date_time_utc: None,
            assigned_hub: None,
            device_id: None,
            status: state.map_or(RegistrationStatus::Failed, |s| s.status),
            substatus: None,
            error_code: None,
            error_message: None,
            last_updated_date_time_utc: None,
            etag: None,
            payload: None,
            symmetric_key: None,
            x509: None,
            tpm: None,
            issued_certificate_chain: None,
        },
    }
}
