//! Delivery of the hub outbox: the adapter of each hub (rebuilt when the hub's settings change), the delivery of
//! one job (inline, right after the registration that wrote it, or by the worker), backoff, the deadline, and the
//! hub metrics.
//!
//! Every replica runs one worker ([`Hubs::run_worker`]). It claims due jobs from the database (other replicas'
//! claims are skipped), delivers them side by side, and records each outcome; a job whose delivery fails is
//! retried with exponential backoff and jitter, and an upsert a registration waits for fails that registration
//! (400209) when the hub refuses it or its deadline passes, or (400215) when the hub has an identity by that name
//! that is not the registration's. A disable or delete that meets such an identity leaves it alone and is done.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine;
use serde_json::{Value, json};
use zerotouch_hub::{ChangeId, Credential, DeviceId, DeviceIdentity, HubAdapter, HubError, Owner, SymmetricKeys};
use zerotouch_store::{CredentialRef, HubAction, HubJobOutcome, HubJobRecord, OperationRecord, Store, StoreError};
use zerotouch_wire::enrollment::EnrollmentKind;
use zerotouch_wire::{ErrorCode, KeySlot, SymmetricKey};

use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;

/// Settings of hub delivery.
#[derive(Debug, Clone)]
pub struct HubSettings {
    /// How long a registration waits for its hub before answering `assigning` (the worker carries on).
    pub inline_timeout: Duration,
    /// How long a registration may wait for its hub before it fails with 400209.
    pub deadline: Duration,
}

/// Longest wait between two attempts of one job.
const MAX_BACKOFF: Duration = Duration::from_secs(300);
/// First wait after a failed attempt.
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
/// How long a worker holds the jobs it claimed (well beyond an adapter's timeout).
const LEASE: Duration = Duration::from_secs(60);
/// Jobs claimed at once.
const CLAIM_BATCH: u64 = 256;
/// How long an adapter built from a hub's settings is used before the settings are read again.
const ADAPTER_TTL: Duration = Duration::from_secs(2);
/// How often the worker looks for due jobs when nothing wakes it.
const POLL: Duration = Duration::from_secs(1);
/// Deliveries to one hub at once, per replica. A broker works through its admin requests one at a time: more in
/// flight only queue there, past the adapter's timeout, and come back as retries of work the broker still does.
const PER_HUB_CONCURRENCY: usize = 4;

struct CachedAdapter {
    etag: String,
    checked: Instant,
    adapter: Arc<dyn HubAdapter>,
}

/// The hubs' adapters and the outbox delivery.
pub struct Hubs {
    store: Store,
    settings: HubSettings,
    metrics: Metrics,
    adapters: tokio::sync::Mutex<HashMap<String, CachedAdapter>>,
    /// Deliveries in flight, per hub.
    in_flight: Mutex<HashMap<String, Arc<tokio::sync::Semaphore>>>,
    wake: tokio::sync::Notify,
    /// The backlog as last read by the worker, for the metrics.
    last_backlog: Mutex<Vec<String>>,
    /// Whom webhook hubs may call.
    outbound: zerotouch_outbound::OutboundPolicy,
}

impl std::fmt::Debug for Hubs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hubs").field("settings", &self.settings).finish_non_exhaustive()
    }
}

/// Why a job cannot be delivered.
enum Undeliverable {
    /// Try again later.
    Retry(String),
    /// Trying again will not help.
    Refused(String),
    /// The hub has an identity by that name that is not this registration's (an account of the hub's operator, its
    /// admin user, another registration's device): the adapter left it alone.
    NotManaged(String),
    /// Nothing to do (the hub is gone, so there is no identity to disable or delete).
    Moot,
}

impl From<HubError> for Undeliverable {
    fn from(e: HubError) -> Self {
        match e {
            HubError::NotManaged { .. } => Self::NotManaged(e.to_string()),
            HubError::Unavailable { .. } => Self::Retry(e.to_string()),
            HubError::Rejected { .. } => Self::Refused(e.to_string()),
        }
    }
}

impl Hubs {
    /// Delivery over `store`; webhook hubs call out under `outbound`.
    pub fn new(
        store: Store,
        settings: HubSettings,
        metrics: Metrics,
        outbound: zerotouch_outbound::OutboundPolicy,
    ) -> Self {
        Self {
            outbound,
            store,
            settings,
            metrics,
            adapters: Default::default(),
            in_flight: Default::default(),
            wake: Default::default(),
            last_backlog: Default::default(),
        }
    }

    /// The settings.
    pub fn settings(&self) -> &HubSettings {
        &self.settings
    }

    /// Whom webhook hubs may call (the admin API checks new settings against it).
    pub fn outbound(&self) -> &zerotouch_outbound::OutboundPolicy {
        &self.outbound
    }

    /// The adapter of `hub` (`None`: the hub is gone or has no adapter).
    async fn adapter(&self, hub: &str) -> Result<Option<Arc<dyn HubAdapter>>, Undeliverable> {
        let mut adapters = self.adapters.lock().await;
        if let Some(cached) = adapters.get(hub).filter(|c| c.checked.elapsed() < ADAPTER_TTL) {
            return Ok(Some(cached.adapter.clone()));
        }
        let record = match self.store.hubs().get(hub).await {
            Ok(record) => record,
            Err(StoreError::NotFound) => {
                adapters.remove(hub);
                return Ok(None);
            }
            Err(e) => return Err(Undeliverable::Retry(format!("reading hub {hub}: {e}"))),
        };
        if record.hub.kind == zerotouch_store::NO_ADAPTER {
            adapters.remove(hub);
            return Ok(None);
        }
        if let Some(cached) = adapters.get_mut(hub).filter(|c| c.etag == record.etag) {
            cached.checked = Instant::now();
            return Ok(Some(cached.adapter.clone()));
        }
        let adapter: Arc<dyn HubAdapter> =
            zerotouch_hub::adapter_for(&record.hub.kind, hub, &record.hub.settings, &self.outbound)
                .map_err(|e| Undeliverable::Refused(format!("hub {hub}: {e}")))?
                .into();
        adapters.insert(
            hub.to_owned(),
            CachedAdapter { etag: record.etag.clone(), checked: Instant::now(), adapter: adapter.clone() },
        );
        Ok(Some(adapter))
    }

    /// The symmetric keys of the device of `registration_key`, as they are now: its individual enrollment's keys,
    /// or the keys derived from its group's; `used` is the one it authenticated with.
    async fn device_keys(&self, registration_key: &str, used: KeySlot) -> Result<SymmetricKeys, Undeliverable> {
        let retry = |e: StoreError| Undeliverable::Retry(format!("reading the device's enrollment: {e}"));
        let registration = self.store.registrations().get(registration_key).await.map_err(retry)?;
        let gone = || {
            Undeliverable::Refused(
                "the device has no credential the hub can take: no certificate, and its enrollment has no symmetric \
                 key (a TPM device needs a CSR to get an operational certificate for its hub)"
                    .into(),
            )
        };
        let (record, derive) = match &registration.enrollment_group_key {
            Some(group) => (self.store.enrollments().get(EnrollmentKind::Group, group).await.map_err(retry)?, true),
            None => (
                self.store.enrollments().get(EnrollmentKind::Individual, registration_key).await.map_err(retry)?,
                false,
            ),
        };
        let device_key = |key: SymmetricKey| -> Result<SymmetricKey, Undeliverable> {
            if !derive {
                return Ok(key);
            }
            let derived = zerotouch_attest::sas::derive_device_key(key.expose_bytes(), &registration.registration_id);
            SymmetricKey::from_base64(&base64::engine::general_purpose::STANDARD.encode(derived.as_slice()))
                .map_err(|e| Undeliverable::Refused(format!("derived key: {e}")))
        };
        let primary = device_key(record.primary_key.ok_or_else(gone)?)?;
        let secondary = record.secondary_key.map(device_key).transpose()?;
        Ok(SymmetricKeys { primary, secondary, used })
    }

    /// Runs `job` against its hub.
    async fn run(&self, job: &HubJobRecord) -> Result<(), Undeliverable> {
        let Some(adapter) = self.adapter(&job.hub).await? else {
            return match job.action {
                HubAction::Upsert => {
                    Err(Undeliverable::Refused(format!("hub {} no longer exists or has kind none", job.hub)))
                }
                HubAction::Disable | HubAction::Delete => Err(Undeliverable::Moot),
            };
        };
        let device_id = DeviceId::try_from(job.device_id.as_str())
            .map_err(|e| Undeliverable::Refused(format!("device id {:?}: {e}", job.device_id)))?;
        let owner = Owner::registration(&job.registration_key);
        let change = ChangeId::new(&job.id);
        match job.action {
            HubAction::Upsert => {
                let document = job.document.clone().unwrap_or(Value::Null);
                let credential = CredentialRef::of_document(&document)
                    .map_err(|e| Undeliverable::Refused(format!("stored hub job {}: {e}", job.id)))?;
                let credential = match credential {
                    CredentialRef::X509 { subject_name, thumbprint } => {
                        Credential::Certificate { subject_cn: subject_name, thumbprint }
                    }
                    CredentialRef::SymmetricKey { slot } => {
                        Credential::SymmetricKey(self.device_keys(&job.registration_key, slot).await?)
                    }
                    CredentialRef::HubKey { key } => Credential::SymmetricKey(SymmetricKeys::single(key)),
                };
                let initial_twin = document.get("initialTwin").filter(|t| !t.is_null()).cloned();
                let identity = DeviceIdentity { device_id, owner, credential, enabled: true, initial_twin, change };
                adapter.upsert_device(&identity).await?;
            }
            HubAction::Disable => adapter.disable_device(&device_id, &owner, &change).await?,
            HubAction::Delete => adapter.delete_device(&device_id, &owner, &change).await?,
        }
        Ok(())
    }

    /// Delivers `job` once and records the outcome; returns the registration operation it settled, if any.
    async fn deliver(&self, job: &HubJobRecord, timeout: Duration) -> Option<OperationRecord> {
        let action = job.action.as_str();
        self.metrics.hub_attempt(&job.hub, action);
        let slots = match self.in_flight.lock() {
            Ok(mut in_flight) => in_flight
                .entry(job.hub.clone())
                .or_insert_with(|| Arc::new(tokio::sync::Semaphore::new(PER_HUB_CONCURRENCY)))
                .clone(),
            Err(_) => Arc::new(tokio::sync::Semaphore::new(PER_HUB_CONCURRENCY)),
        };
        let attempt = async {
            let _slot = slots.acquire().await;
            self.run(job).await
        };
        let result = match tokio::time::timeout(timeout, attempt).await {
            Ok(result) => result,
            Err(_) => {
                Err(Undeliverable::Retry(format!("hub {}: no answer within {} ms", job.hub, timeout.as_millis())))
            }
        };
        let outcome = match result {
            Ok(()) | Err(Undeliverable::Moot) => HubJobOutcome::Done,
            Err(Undeliverable::Refused(reason)) => {
                self.metrics.hub_failure(&job.hub, action);
                self.after_failure(job, reason, false, ErrorCode::HubRegistrationFailed)
            }
            Err(Undeliverable::Retry(reason)) => {
                self.metrics.hub_failure(&job.hub, action);
                self.after_failure(job, reason, true, ErrorCode::HubRegistrationFailed)
            }
            Err(Undeliverable::NotManaged(reason)) => {
                self.metrics.hub_failure(&job.hub, action);
                match job.action {
                    HubAction::Upsert => self.after_failure(job, reason, false, ErrorCode::HubIdentityNotManaged),
                    // Nothing of this registration's is there to retire; what is there is not ours to change.
                    HubAction::Disable | HubAction::Delete => {
                        tracing::warn!(hub = %job.hub, device = %job.device_id, "hub identity left alone: {reason}");
                        HubJobOutcome::Done
                    }
                }
            }
        };
        match self.store.hub_jobs().finish(job, &outcome).await {
            Ok(settled) => settled,
            Err(e) => {
                // The lease runs out and the worker delivers the job again (every hub operation is idempotent).
                tracing::warn!(hub = %job.hub, "cannot record the hub job's outcome: {e}");
                None
            }
        }
    }

    /// What happens after a failed attempt: a retry after a backoff, or for an upsert a registration waits for,
    /// failure once the hub refused it or the deadline passed. Retirements (disable, delete) are retried until
    /// they succeed: a hub must not keep a retired device. `code` is what a failed registration says.
    fn after_failure(&self, job: &HubJobRecord, reason: String, retryable: bool, code: ErrorCode) -> HubJobOutcome {
        let now = chrono::Utc::now();
        let waits = job.action == HubAction::Upsert && job.operation_id.is_some();
        let past_deadline = job.deadline_at.is_some_and(|deadline| now >= deadline);
        if waits && (past_deadline || !retryable) {
            let number = i32::try_from(code.number()).unwrap_or_default();
            tracing::warn!(hub = %job.hub, device = %job.device_id, "hub registration failed: {reason}");
            return HubJobOutcome::Fail { error_code: number, message: failure_message(&job.hub, code, &reason) };
        }
        let mut delay = backoff(job.attempts);
        if let Some(deadline) = job.deadline_at.filter(|_| waits) {
            // One last attempt at the deadline.
            delay = delay.min((deadline - now).to_std().unwrap_or_default());
        }
        let next_attempt_at = now + chrono::Duration::from_std(delay).unwrap_or_default();
        HubJobOutcome::Retry { error: reason, next_attempt_at }
    }

    /// Delivers the job a registration just wrote, within the inline timeout, if the registration holds it
    /// (otherwise an older job of the device on that hub runs first, and the worker takes this one after it).
    /// Returns the settled operation when the hub answered either way.
    pub async fn deliver_inline(&self, job: &HubJobRecord) -> Option<OperationRecord> {
        if job.claimed_until.is_none() {
            self.wake.notify_one();
            return None;
        }
        let settled = self.deliver(job, self.settings.inline_timeout).await;
        if settled.is_none() {
            self.wake.notify_one();
        }
        settled
    }

    /// The worker: claims due jobs and delivers them, until `shutdown` is cancelled (deliveries under way finish
    /// first; a job not taken up again stays leased and is retried after its lease).
    pub async fn run_worker(self: Arc<Self>, shutdown: CancellationToken) {
        let mut backlog_read = Instant::now() - Duration::from_secs(60);
        while !shutdown.is_cancelled() {
            if backlog_read.elapsed() >= Duration::from_secs(5) {
                self.refresh_backlog_metrics().await;
                backlog_read = Instant::now();
            }
            let jobs = match self.store.hub_jobs().claim(CLAIM_BATCH, LEASE).await {
                Ok(jobs) => jobs,
                Err(e) => {
                    tracing::warn!("cannot claim hub jobs: {e}");
                    Vec::new()
                }
            };
            if jobs.is_empty() {
                tokio::select! {
                    _ = tokio::time::timeout(POLL, self.wake.notified()) => {}
                    () = shutdown.cancelled() => {}
                }
                continue;
            }
            let adapter_timeout = Duration::from_secs(30);
            let deliveries = jobs.iter().map(|job| self.deliver(job, adapter_timeout));
            futures_util::future::join_all(deliveries).await;
        }
    }

    /// Reads the backlog of every hub into the metrics.
    async fn refresh_backlog_metrics(&self) {
        let backlogs = match self.store.hub_jobs().backlogs().await {
            Ok(backlogs) => backlogs,
            Err(e) => {
                tracing::warn!("cannot read the hub backlog: {e}");
                return;
            }
        };
        let now = chrono::Utc::now();
        let Ok(mut seen) = self.last_backlog.lock() else { return };
        // Hubs whose backlog emptied read zero.
        for hub in seen.iter().filter(|h| !backlogs.contains_key(*h)) {
            self.metrics.hub_backlog(hub, 0, 0.0);
        }
        for (hub, backlog) in &backlogs {
            let age = backlog.oldest.map_or(0.0, |oldest| (now - oldest).num_milliseconds().max(0) as f64 / 1000.0);
            self.metrics.hub_backlog(hub, backlog.depth, age);
        }
        *seen = backlogs.into_keys().collect();
    }

    /// `GET /hubs/{hostName}/status`: the hub's health (its adapter's health check, within 5 s) and backlog.
    pub async fn status(&self, hub: &str) -> Result<Value, StoreError> {
        let record = self.store.hubs().get(hub).await?;
        let backlog = self.store.hub_jobs().backlogs().await?.remove(hub).unwrap_or_default();
        let health = match self.adapter(hub).await {
            Ok(None) => json!({"status": "notApplicable", "detail": "hubs of kind none are not called"}),
            Err(Undeliverable::Refused(reason) | Undeliverable::Retry(reason) | Undeliverable::NotManaged(reason)) => {
                json!({"status": "unhealthy", "detail": reason})
            }
            Err(Undeliverable::Moot) => json!({"status": "unknown"}),
            Ok(Some(adapter)) => match tokio::time::timeout(Duration::from_secs(5), adapter.health()).await {
                Ok(Ok(())) => json!({"status": "healthy"}),
                Ok(Err(e)) => json!({"status": "unhealthy", "detail": e.to_string()}),
                Err(_) => json!({"status": "unhealthy", "detail": "no answer within 5 s"}),
            },
        };
        let now = chrono::Utc::now();
        Ok(json!({
            "hostName": record.hub.host_name,
            "kind": record.hub.kind,
            "health": health,
            "backlog": {
                "depth": backlog.depth,
                "retrying": backlog.retrying,
                "oldestJobAgeSeconds": backlog.oldest.map(|o| (now - o).num_seconds().max(0)),
                "lastError": backlog.last_error,
            },
        }))
    }
}

/// What a registration that failed on its hub says (the device and the admin API see it): for 400215 whose the
/// identity is (the adapter's own finding), otherwise a fixed text, as the reason may carry the hub's own words (a
/// webhook receiver's status and body), which never reach the device (issue #17); the log has the reason.
fn failure_message(hub: &str, code: ErrorCode, reason: &str) -> String {
    match code {
        ErrorCode::HubIdentityNotManaged => format!("hub {hub} did not take the device: {reason}"),
        _ => format!("hub {hub} did not take the device; the service's log has the reason"),
    }
}

/// The wait before attempt `attempts + 1`: 1 s doubling per attempt up to 5 minutes, then a random share of it
/// between a half and the whole (jitter, so that jobs failed together do not retry together).
fn backoff(attempts: u32) -> Duration {
    let full = FIRST_BACKOFF.saturating_mul(1u32 << attempts.min(16)).min(MAX_BACKOFF);
    full.mul_f64(0.5 + rand::random::<f64>() / 2.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A registration failed on its hub names the hub, never the hub's own words, except for the adapter's own
    /// finding of whose the identity is.
    #[test]
    fn failure_messages_keep_the_hub_words_out() {
        let reason = "hub h: upsert of device d: POST answered 400 Bad Request: internal detail";
        let message = failure_message("h", ErrorCode::HubRegistrationFailed, reason);
        assert!(message.contains("hub h") && !message.contains("internal detail") && !message.contains("400"));
        let message = failure_message("h", ErrorCode::HubIdentityNotManaged, "client d belongs to registration x");
        assert!(message.ends_with("client d belongs to registration x"), "{message}");
    }

    #[test]
    fn backoff_grows_with_jitter_and_is_capped() {
        for attempts in 0..40 {
            let full = FIRST_BACKOFF.saturating_mul(1u32 << attempts.min(16)).min(MAX_BACKOFF);
            let wait = backoff(attempts);
            assert!(wait >= full / 2 && wait <= full, "{attempts}: {wait:?} of {full:?}");
        }
        assert!(backoff(30) <= MAX_BACKOFF);
        assert!(backoff(0) <= FIRST_BACKOFF);
    }
}
