//! The registration service's three caches, each bounded, each short-lived, none deciding anything the database
//! would decide differently for long:
//!
//! - **Reference** ([`Reference`]): the hubs and the symmetric-key, X.509 and TPM enrollment groups (parsed,
//!   with their CA anchors parsed and indexed by subject for path searches), which every registration needs and
//!   which change rarely. Reused for at most
//!   [`REFERENCE_TTL`]; a change made through this process ([`Store::reference_changes`]) invalidates it at once,
//!   one made on another replica is seen within the TTL. One entry.
//! - **Verified tokens**: the SHA-256 of (id scope, registration id, `Authorization` value) of SAS tokens that
//!   verified, so that a device's polls skip the enrollment lookup for up to [`VERIFIED_TTL`] (never past the
//!   token's expiry). A poll can only read the device's own operations. At most [`VERIFIED_MAX`] entries.
//! - **Verified chains**: the SHA-256 of (the groups' anchors, a certificate chain) of device chains whose path
//!   search found an anchor, with that anchor and the window in which every certificate of the path is valid, so
//!   that a device's next requests with the same chain (its polls; EST calls on one connection) skip the search for
//!   up to [`CHAINS_TTL`]. The TLS handshake still proves, on every connection, that the device holds the leaf's
//!   key; only the chain's judgement is remembered, and only while the anchors it was judged against are the same
//!   (any change to a group's id or anchors changes the key). At most [`CHAINS_MAX`] entries.
//! - **Finished operations**: operations this replica wrote in a terminal state, so that a device's first poll,
//!   which follows its register after the SDK's wait (1 to 5 s), needs no database read. A terminal operation
//!   never changes, so this cannot disagree with the database, except that a registration deleted in the last
//!   [`FINISHED_TTL`] still answers its operation. At most [`FINISHED_MAX`] entries and [`FINISHED_MAX_BYTES`].
//!
//! The device tables are [`Expiring`]: entries leave in the order they came, as they expire and whenever the table
//! is over a bound, so a table holds what the last TTL brought (a storm of 3,000 devices a second keeps 30,000
//! finished operations, not the maximum) and the bounds hold whatever a stranger sends; the worst case is a
//! database read the cache would have saved.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use time::OffsetDateTime;
use zerotouch_store::{EnrollmentRecord, HubRecord, Store};
use zerotouch_wire::enrollment::EnrollmentKind;
use zerotouch_wire::registration::RegistrationStatus;

use super::authenticate::tpm;
use super::authenticate::x509::{self, Anchor, GroupAnchors, X509Group};
use super::enrollment::{Attestation, Enrollment};
use super::error::{RegistrationError, internal};
use super::request::{DeviceRequest, Evidence};
use super::result::PollAnswer;

/// How long hubs and groups read from the database are reused.
pub const REFERENCE_TTL: Duration = Duration::from_secs(2);
/// How long a verified token spares a poll the enrollment lookup (never beyond the token's own expiry): the polls
/// that follow a register, which every SDK sends within 5 s of each other.
pub const VERIFIED_TTL: Duration = Duration::from_secs(15);
/// Most verified tokens kept.
pub const VERIFIED_MAX: usize = 50_000;
/// How long this replica answers polls of a finished operation it wrote from memory: past the first poll of every
/// SDK (C: the register's `Retry-After`, 1 s; Python and C#: 2 s; iot-identity-service: 5 s).
pub const FINISHED_TTL: Duration = Duration::from_secs(10);
/// Most finished operations kept.
pub const FINISHED_MAX: usize = 50_000;
/// Most bytes of finished answers kept (an answer carries a certificate chain and up to 96 KB of webhook
/// payload, so a count alone bounds nothing).
pub const FINISHED_MAX_BYTES: usize = 16 * 1024 * 1024;
/// How long a chain that verified spares its device the path search (never past its path's validity): the polls
/// that follow a register, and a kept-alive EST client's calls.
pub const CHAINS_TTL: Duration = Duration::from_secs(15);
/// Most verified chains kept.
pub const CHAINS_MAX: usize = 50_000;
/// What one verified chain's entry holds, about (digest, entry, window, the table's own words).
const CHAIN_BYTES: usize = 128;
/// What one verified token's entry holds, about (digest, deadline, the budget's name, the table's own words).
const VERIFIED_BYTES: usize = 128;

/// Hubs and groups, read together.
#[derive(Debug, Clone)]
pub struct Reference {
    read_at: Instant,
    generation: u64,
    /// Every hub.
    pub hubs: Arc<Vec<HubRecord>>,
    /// The symmetric-key enrollment groups.
    pub symmetric_key_groups: Arc<Vec<Arc<Enrollment>>>,
    /// The X.509 enrollment groups with their anchors, parsed and indexed for path searches.
    pub x509_groups: Arc<GroupAnchors>,
    /// The TPM enrollment groups with their manufacturer CAs, which may also complete each other's paths.
    pub tpm_groups: Arc<GroupAnchors>,
}

/// A token that verified: until when it spares the enrollment lookup, and the request budget of the enrollment it
/// verified with (`Authenticated::budget`).
type Verified = (Instant, Arc<str>);

/// A chain whose path search found an anchor: the anchor's entry, and when every certificate of the path is valid.
type VerifiedPath = (usize, (OffsetDateTime, OffsetDateTime));

/// A finished operation this replica wrote: whose it is, and the answer as the polls are sent it (shared with
/// them without a copy).
#[derive(Debug)]
struct Finished {
    registration_key: String,
    answer: PollAnswer,
}

/// Entries that expire `ttl` after they were put, at most `max` of them and `max_bytes` in all. They leave in the
/// order they were put: the expired ones at every put, and the oldest live ones while the table is over a bound.
#[derive(Debug)]
struct Expiring<K, V> {
    entries: HashMap<K, Entry<V>>,
    /// Keys in the order they were put, with when; a key put again leaves its earlier place stale (skipped).
    order: VecDeque<(Instant, K)>,
    bytes: usize,
    ttl: Duration,
    max: usize,
    max_bytes: usize,
}

#[derive(Debug)]
struct Entry<V> {
    put: Instant,
    bytes: usize,
    /// Every value kept here is small: a finished answer is large, and held behind an `Arc` ([`PollAnswer`]), since
    /// growing a table of tens of thousands of answers inline, under its lock, held up every request for tens of
    /// milliseconds (the benchmark's slowest devices came in clusters at the table's doublings).
    value: V,
}

impl<K: std::hash::Hash + Eq + Clone, V> Expiring<K, V> {
    fn new(ttl: Duration, max: usize, max_bytes: usize) -> Self {
        Self { entries: HashMap::new(), order: VecDeque::new(), bytes: 0, ttl, max, max_bytes }
    }

    /// Puts `value` (about `bytes` large) under `key`, replacing what was there, and lets out what has expired or
    /// no longer fits.
    fn put(&mut self, key: K, value: V, bytes: usize) {
        let now = Instant::now();
        if let Some(replaced) = self.entries.insert(key.clone(), Entry { put: now, bytes, value }) {
            self.bytes = self.bytes.saturating_sub(replaced.bytes);
        }
        self.bytes += bytes;
        self.order.push_back((now, key));
        self.let_out(now);
    }

    /// Lets out the entries that have expired by `now`, and the oldest live ones while the table is over a bound.
    fn let_out(&mut self, now: Instant) {
        while let Some((put, _)) = self.order.front() {
            let over = self.entries.len() > self.max || self.bytes > self.max_bytes || self.order.len() > 2 * self.max;
            if !over && now.duration_since(*put) < self.ttl {
                break;
            }
            let Some((put, key)) = self.order.pop_front() else { break };
            if self.entries.get(&key).is_some_and(|entry| entry.put == put)
                && let Some(entry) = self.entries.remove(&key)
            {
                self.bytes = self.bytes.saturating_sub(entry.bytes);
            }
        }
    }

    /// The value under `key` and its age, while it is younger than the table's TTL.
    fn get<Q: std::hash::Hash + Eq + ?Sized>(&self, key: &Q) -> Option<(&V, Duration)>
    where
        K: std::borrow::Borrow<Q>,
    {
        let entry = self.entries.get(key)?;
        let age = entry.put.elapsed();
        (age < self.ttl).then_some((&entry.value, age))
    }
}

/// The caches of one registration service.
#[derive(Debug)]
pub struct Caches {
    reference: Mutex<Option<Reference>>,
    /// Held by the one request reading the reference again (see [`Caches::reference`]).
    reading_reference: tokio::sync::Mutex<()>,
    verified: Mutex<Expiring<[u8; 32], Verified>>,
    chains: Mutex<Expiring<[u8; 32], VerifiedPath>>,
    finished: Mutex<Expiring<String, Finished>>,
}

impl Default for Caches {
    fn default() -> Self {
        Self {
            reference: Mutex::default(),
            reading_reference: tokio::sync::Mutex::default(),
            verified: Mutex::new(Expiring::new(VERIFIED_TTL, VERIFIED_MAX, VERIFIED_MAX * VERIFIED_BYTES)),
            chains: Mutex::new(Expiring::new(CHAINS_TTL, CHAINS_MAX, CHAINS_MAX * CHAIN_BYTES)),
            finished: Mutex::new(Expiring::new(FINISHED_TTL, FINISHED_MAX, FINISHED_MAX_BYTES)),
        }
    }
}

/// Parses the groups of one attestation, leaving out (and logging) one that cannot be read, so that one broken
/// record does not stop every other group's devices.
fn parse_groups(records: Vec<EnrollmentRecord>) -> Vec<Arc<Enrollment>> {
    records
        .into_iter()
        .filter_map(|record| match Enrollment::parse(EnrollmentKind::Group, record) {
            Ok(group) => Some(Arc::new(group)),
            Err(e) => {
                tracing::error!("enrollment group left out of authentication: {}", e.chain());
                None
            }
        })
        .collect()
}

impl Caches {
    /// Lets expired entries out of the device tables (see [`RegistrationService::sweep_caches`]).
    ///
    /// [`RegistrationService::sweep_caches`]: super::RegistrationService::sweep_caches
    pub fn sweep(&self) {
        let now = Instant::now();
        if let Ok(mut verified) = self.verified.lock() {
            verified.let_out(now);
        }
        if let Ok(mut chains) = self.chains.lock() {
            chains.let_out(now);
        }
        if let Ok(mut finished) = self.finished.lock() {
            finished.let_out(now);
        }
    }

    fn cached_reference(&self) -> Option<Reference> {
        self.reference.lock().ok().and_then(|cached| cached.clone())
    }

    /// The hubs and groups, from the cache when it is fresh.
    ///
    /// One request at a time reads them again (every registration needs them; under load, dozens would otherwise
    /// read them at once whenever the cache expires, and stall the database). While it does, requests keep the
    /// reading that has only aged; after a change made through this process, they wait for the new reading.
    pub async fn reference(&self, store: &Store) -> Result<Reference, RegistrationError> {
        let fresh = |r: &Reference, generation| r.generation == generation && r.read_at.elapsed() < REFERENCE_TTL;
        let generation = store.reference_changes();
        let cached = self.cached_reference().filter(|r| r.generation == generation);
        if let Some(reference) = cached.as_ref().filter(|r| fresh(r, generation)) {
            return Ok(reference.clone());
        }
        let _reading = match (self.reading_reference.try_lock(), cached) {
            (Ok(reading), _) => reading,
            (Err(_), Some(aged)) => return Ok(aged),
            (Err(_), None) => self.reading_reference.lock().await,
        };
        // Another request may have read them while this one waited.
        let generation = store.reference_changes();
        if let Some(reference) = self.cached_reference().filter(|r| fresh(r, generation)) {
            return Ok(reference);
        }
        let hubs = store.hubs().list().await.map_err(internal("reading the hubs"))?;
        let symmetric_key_groups = store
            .enrollments()
            .groups_by_attestation("symmetricKey")
            .await
            .map_err(internal("reading the symmetric-key groups"))?;
        let x509_groups =
            store.enrollments().groups_by_attestation("x509").await.map_err(internal("reading the X.509 groups"))?;
        let tpm_groups =
            store.enrollments().groups_by_attestation("tpm").await.map_err(internal("reading the TPM groups"))?;
        let authorities =
            store.certificate_authorities().all().await.map_err(internal("reading the certificate authorities"))?;
        let x509_groups = parse_groups(x509_groups)
            .into_iter()
            .map(|group| {
                let Attestation::X509(attestation) = &group.attestation else {
                    return X509Group { group, anchors: Vec::new() };
                };
                let anchors = x509::group_anchors(attestation, |name| {
                    let key = name.to_ascii_lowercase();
                    authorities
                        .iter()
                        .find(|ca| ca.key == key)
                        .map(|ca| Anchor { der: ca.certificate_der.clone(), verified: ca.verified })
                });
                X509Group { group, anchors }
            })
            .collect();
        let reference = Reference {
            read_at: Instant::now(),
            generation,
            hubs: Arc::new(hubs),
            symmetric_key_groups: Arc::new(parse_groups(symmetric_key_groups)),
            x509_groups: Arc::new(GroupAnchors::new(x509_groups)),
            tpm_groups: Arc::new(GroupAnchors::completing_paths(
                parse_groups(tpm_groups)
                    .into_iter()
                    .map(|group| X509Group { anchors: tpm::group_anchors(&group), group })
                    .collect(),
            )),
        };
        if let Ok(mut cached) = self.reference.lock() {
            *cached = Some(reference.clone());
        }
        Ok(reference)
    }

    /// Remembers that the device's token verified with the enrollment whose request budget is `budget`; it expires
    /// at `token_expiry` (Unix seconds) at the latest.
    pub fn remember_verified(&self, device: &DeviceRequest, token_expiry: u64, budget: &str) {
        let Some(digest) = token_digest(device) else { return };
        let now_secs = u64::try_from(chrono::Utc::now().timestamp()).unwrap_or(0);
        let left = Duration::from_secs(token_expiry.saturating_sub(now_secs));
        let Ok(mut verified) = self.verified.lock() else { return };
        verified.put(digest, (Instant::now() + left.min(VERIFIED_TTL), Arc::from(budget)), VERIFIED_BYTES);
    }

    /// The request budget of the enrollment the device's token verified with recently, if it did.
    pub fn recently_verified(&self, device: &DeviceRequest) -> Option<Arc<str>> {
        let digest = token_digest(device)?;
        let verified = self.verified.lock().ok()?;
        let ((until, budget), _) = verified.get(&digest)?;
        (*until > Instant::now()).then(|| Arc::clone(budget))
    }

    /// Remembers that the chain `key` (`GroupAnchors::chain_key`) led to anchor `entry`, its path valid within
    /// `validity`.
    pub fn remember_chain(&self, key: [u8; 32], entry: usize, validity: (OffsetDateTime, OffsetDateTime)) {
        let Ok(mut chains) = self.chains.lock() else { return };
        chains.put(key, (entry, validity), CHAIN_BYTES);
    }

    /// The anchor entry the chain `key` led to, if it verified recently and its path is valid at `now`.
    pub fn verified_chain(&self, key: &[u8; 32], now: OffsetDateTime) -> Option<usize> {
        let chains = self.chains.lock().ok()?;
        let ((entry, (from, until)), _) = chains.get(key)?;
        (*from <= now && now <= *until).then_some(*entry)
    }

    /// Remembers the answer to the operation `operation_id` of `registration_key` this replica wrote, if it is
    /// finished (not `assigning`).
    pub fn remember_finished(&self, registration_key: String, operation_id: String, answer: PollAnswer) {
        if answer.status == RegistrationStatus::Assigning {
            return;
        }
        // The answer's text, the key, and the entry's own fixed size.
        let bytes = answer.json.len().saturating_add(registration_key.len()).saturating_add(size_of::<Finished>());
        let Ok(mut finished) = self.finished.lock() else { return };
        finished.put(operation_id, Finished { registration_key, answer }, bytes);
    }

    /// A finished operation of `registration_key` from memory, while it is younger than [`FINISHED_TTL`] and
    /// `operation_ttl`.
    pub fn recently_finished(
        &self,
        registration_key: &str,
        operation_id: &str,
        operation_ttl: Duration,
    ) -> Option<PollAnswer> {
        let finished = self.finished.lock().ok()?;
        let (entry, age) = finished.get(operation_id)?;
        (age < operation_ttl && entry.registration_key == registration_key).then(|| entry.answer.clone())
    }
}

fn token_digest(device: &DeviceRequest) -> Option<[u8; 32]> {
    // A certificate is proved anew by every TLS handshake; only tokens are remembered.
    let Evidence::Sas(header) = &device.evidence else { return None };
    let digest = Sha256::new()
        .chain_update(zerotouch_wire::id::lower_case(&device.id_scope).as_bytes())
        .chain_update([0u8])
        .chain_update(device.registration_id.key().as_bytes())
        .chain_update([0u8])
        .chain_update(header.as_bytes())
        .finalize();
    Some(digest.into())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use zerotouch_wire::device::RegistrationOperationStatus;

    #[test]
    fn finished_answers_are_bounded_in_bytes_as_well_as_in_count() {
        let caches = Caches::default();
        let payload = "x".repeat(96 * 1024);
        for i in 0..2 * FINISHED_MAX_BYTES / payload.len() {
            let state =
                serde_json::json!({"registrationId": format!("dev-{i}"), "status": "assigned", "payload": payload});
            let answer = RegistrationOperationStatus {
                operation_id: format!("op-{i}"),
                status: RegistrationStatus::Assigned,
                registration_state: serde_json::from_value(state).unwrap(),
            };
            caches.remember_finished(format!("dev-{i}"), format!("op-{i}"), PollAnswer::of(&answer).unwrap());
            let table = caches.finished.lock().unwrap();
            assert!(table.bytes <= FINISHED_MAX_BYTES, "{} bytes after {i} answers", table.bytes);
            assert_eq!(table.bytes, table.entries.values().map(|e| e.bytes).sum::<usize>());
        }
        let last = 2 * FINISHED_MAX_BYTES / payload.len() - 1;
        assert!(caches.recently_finished(&format!("dev-{last}"), &format!("op-{last}"), FINISHED_TTL).is_some());
    }

    #[test]
    fn entries_leave_oldest_first_when_over_a_bound() {
        let mut table: Expiring<u32, &str> = Expiring::new(Duration::from_secs(60), 3, 100);
        for i in 0..5 {
            table.put(i, "x", 10);
        }
        assert_eq!(table.entries.len(), 3, "the count bound holds");
        assert!(table.get(&0).is_none() && table.get(&1).is_none(), "the oldest left first");
        assert!([2, 3, 4].iter().all(|i| table.get(i).is_some()));
        // Bytes: one large entry pushes the oldest out until it fits; one larger than the bound does not stay.
        table.put(5, "large", 80);
        assert_eq!(table.bytes, 100);
        assert!(table.get(&2).is_none() && table.get(&3).is_some() && table.get(&5).is_some());
        table.put(6, "huge", 101);
        assert!(table.get(&6).is_none());
        assert_eq!(table.bytes, table.entries.values().map(|e| e.bytes).sum::<usize>());
        assert!(table.bytes <= 100);
    }

    #[test]
    fn expired_entries_leave_at_the_next_put_and_a_key_put_again_stays() {
        let mut table: Expiring<u32, u32> = Expiring::new(Duration::from_millis(50), 1000, usize::MAX);
        table.put(1, 1, 1);
        table.put(2, 2, 1);
        std::thread::sleep(Duration::from_millis(60));
        assert!(table.get(&1).is_none(), "expired, though still held");
        table.put(2, 22, 1);
        // 1 left; 2's first place was stale and skipped, its new one stays.
        assert_eq!(table.entries.len(), 1);
        assert_eq!(table.get(&2).map(|(v, _)| *v), Some(22));
        assert_eq!(table.bytes, 1);
        // A key put again and again leaves stale places behind, which are bounded too.
        for i in 0..5000 {
            table.put(7, i, 1);
        }
        assert!(table.order.len() <= 2 * 1000 + 1, "{}", table.order.len());
        assert_eq!(table.get(&7).map(|(v, _)| *v), Some(4999));
        // Without further puts, a sweep lets the expired entries out.
        std::thread::sleep(Duration::from_millis(60));
        table.let_out(Instant::now());
        assert!(table.entries.is_empty() && table.order.is_empty() && table.bytes == 0);
    }

    #[test]
    fn a_verified_chain_is_remembered_only_within_its_paths_validity() {
        let caches = Caches::default();
        let (from, until) = (OffsetDateTime::now_utc(), OffsetDateTime::now_utc() + time::Duration::hours(1));
        caches.remember_chain([7; 32], 3, (from, until));
        assert_eq!(caches.verified_chain(&[7; 32], from), Some(3));
        assert_eq!(caches.verified_chain(&[7; 32], until), Some(3));
        assert_eq!(caches.verified_chain(&[7; 32], from - time::Duration::SECOND), None, "not yet valid");
        assert_eq!(caches.verified_chain(&[7; 32], until + time::Duration::SECOND), None, "expired");
        assert_eq!(caches.verified_chain(&[8; 32], from), None);
    }

    /// The key a chain is remembered by changes with anything the search depends on: any certificate of the chain,
    /// the purpose, a group's id, an anchor or whether it is verified; a new reading of the same groups keeps it.
    #[test]
    fn a_chain_is_remembered_per_chain_and_per_set_of_anchors() {
        use zerotouch_pki::Purpose;
        let group = |id: &str, anchors: &[(&[u8], bool)]| X509Group {
            group: Arc::new(
                Enrollment::parse(
                    EnrollmentKind::Group,
                    EnrollmentRecord {
                        key: id.into(),
                        id: id.into(),
                        attestation_type: "symmetricKey".into(),
                        provisioning_status: "enabled".into(),
                        document: serde_json::json!({"enrollmentGroupId": id, "attestation": {"type": "symmetricKey"}}),
                        primary_key: None,
                        secondary_key: None,
                        etag: "e".into(),
                        created_at: chrono::Utc::now(),
                        updated_at: chrono::Utc::now(),
                    },
                )
                .unwrap(),
            ),
            anchors: anchors.iter().map(|(der, verified)| Anchor { der: der.to_vec(), verified: *verified }).collect(),
        };
        let key = |groups: Vec<X509Group>, chain: &[&[u8]], purpose| {
            let intermediates: Vec<Vec<u8>> = chain[1..].iter().map(|c| c.to_vec()).collect();
            GroupAnchors::new(groups).chain_key(chain[0], &intermediates, purpose)
        };
        let base = || vec![group("a", &[(b"ca-1", true)]), group("b", &[(b"ca-2", false)])];
        let reference = key(base(), &[b"leaf", b"int"], Purpose::ClientAuth);
        assert_eq!(key(base(), &[b"leaf", b"int"], Purpose::ClientAuth), reference, "a new reading of the same");
        let others = [
            key(base(), &[b"leaf2", b"int"], Purpose::ClientAuth),
            key(base(), &[b"leaf", b"int2"], Purpose::ClientAuth),
            key(base(), &[b"leaf", b"int", b"extra"], Purpose::ClientAuth),
            key(base(), &[b"leafint"], Purpose::ClientAuth),
            key(base(), &[b"leaf", b"int"], Purpose::Endorsement),
            key(
                vec![group("a", &[(b"ca-1", true)]), group("c", &[(b"ca-2", false)])],
                &[b"leaf", b"int"],
                Purpose::ClientAuth,
            ),
            key(
                vec![group("a", &[(b"ca-1", true)]), group("b", &[(b"ca-2", true)])],
                &[b"leaf", b"int"],
                Purpose::ClientAuth,
            ),
            key(
                vec![group("a", &[(b"ca-1", true)]), group("b", &[(b"ca-3", false)])],
                &[b"leaf", b"int"],
                Purpose::ClientAuth,
            ),
            key(vec![group("a", &[(b"ca-1", true), (b"ca-2", false)])], &[b"leaf", b"int"], Purpose::ClientAuth),
            key(
                vec![group("b", &[(b"ca-2", false)]), group("a", &[(b"ca-1", true)])],
                &[b"leaf", b"int"],
                Purpose::ClientAuth,
            ),
        ];
        for (i, other) in others.iter().enumerate() {
            assert_ne!(*other, reference, "change {i}");
        }
        let completing =
            GroupAnchors::completing_paths(base()).chain_key(b"leaf", &[b"int".to_vec()], Purpose::ClientAuth);
        assert_ne!(completing, reference, "anchors that complete paths");
    }

    fn device(registration_id: &str, evidence: Evidence) -> DeviceRequest {
        DeviceRequest {
            id_scope: "0ne00000001".into(),
            registration_id: zerotouch_wire::RegistrationId::try_from(registration_id).unwrap(),
            evidence,
        }
    }

    #[test]
    fn a_verified_token_is_remembered_for_its_device_only_and_never_past_its_expiry() {
        let caches = Caches::default();
        let later = u64::try_from(chrono::Utc::now().timestamp()).unwrap() + 3600;
        let token = Evidence::Sas("SharedAccessSignature sr=x&sig=y&se=1".into());
        caches.remember_verified(&device("dev-1", token.clone()), later, "budget-1");
        assert_eq!(caches.recently_verified(&device("DEV-1", token.clone())).as_deref(), Some("budget-1"));
        assert!(caches.recently_verified(&device("dev-2", token.clone())).is_none());
        assert!(caches.recently_verified(&device("dev-1", Evidence::Sas("another".into()))).is_none());
        caches.remember_verified(&device("dev-3", token.clone()), 0, "budget-3");
        assert!(caches.recently_verified(&device("dev-3", token)).is_none(), "an expired token is not remembered");
        caches.remember_verified(&device("dev-4", Evidence::Certificates(vec![vec![1]])), later, "budget-4");
        assert!(caches.recently_verified(&device("dev-4", Evidence::Certificates(vec![vec![1]]))).is_none());
    }
}
