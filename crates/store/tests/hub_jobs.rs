//! The hub outbox against real databases: jobs written with registrations, settled in one transaction, run in
//! order per device and hub, claimed by one replica at a time.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashSet;
use std::time::Duration;

use chrono::Utc;
use serde_json::json;
use zerotouch_store::test_support::{self, TestDatabase};
use zerotouch_store::{
    Actor, Backend, HubAction, HubInput, HubJobOutcome, HubJobRecord, NewHubJob, OperationRecord, Precondition,
    RegistrationOutcome, RegistrationRecord, Store,
};

fn actor() -> Actor {
    Actor { subject: "alice".into(), role: "admin".into() }
}

async fn hub(store: &Store, host: &str, kind: &str) {
    let input = HubInput {
        host_name: host.into(),
        kind: kind.into(),
        allocation_weight: 100,
        apply_allocation_policy: true,
        settings: json!({}),
    };
    store.hubs().put(input, &Precondition::None, &actor()).await.unwrap();
}

/// A registration attempt of `id` assigning it to `hub` (state `assigning`), with its upsert job; `previous` is
/// where it leaves; `lease` how long the attempt keeps the job for inline delivery.
fn attempt(
    id: &str,
    hub: &str,
    expected_etag: Option<&str>,
    previous: Option<&str>,
    lease: Duration,
) -> RegistrationOutcome {
    let now = Utc::now();
    let record =
        RegistrationRecord { status: "assigning".into(), ..test_support::assigned_registration(id, None, id, hub) };
    RegistrationOutcome {
        operation: OperationRecord {
            id: format!("op-{id}-{}", uuid::Uuid::new_v4().simple()),
            registration_key: id.to_owned(),
            status: "assigning".into(),
            error_code: None,
            error_message: None,
            result: None,
            created_at: now,
            updated_at: now,
        },
        record,
        expected_etag: expected_etag.map(str::to_owned),
        detail: format!("assigning {id} to {hub}"),
        certificate: None,
        renewing: None,
        hub_job: Some(NewHubJob {
            id: uuid::Uuid::new_v4().simple().to_string(),
            hub: hub.to_owned(),
            device_id: id.to_owned(),
            document: json!({"credential": {"type": "symmetricKey"}}),
            deadline_at: now + chrono::Duration::minutes(10),
            inline_lease: lease,
            previous: previous.map(|p| (p.to_owned(), id.to_owned())),
        }),
    }
}

fn snapshot() -> zerotouch_store::Snapshot {
    Box::new(|r: &RegistrationRecord| {
        let shown = json!({"registrationId": r.registration_id, "status": r.status, "assignedHub": r.assigned_hub});
        serde_json::from_value(shown).unwrap()
    })
}

async fn commit(store: &Store, outcome: RegistrationOutcome) -> (RegistrationRecord, OperationRecord, HubJobRecord) {
    let (record, operation, job) = test_support::commit_enrolled(store, outcome, snapshot()).await.unwrap();
    (record, operation, job.expect("the attempt wrote its hub job"))
}

/// Claims until nothing is due (waiting out leases of zero).
async fn claim(store: &Store) -> Vec<HubJobRecord> {
    tokio::time::sleep(Duration::from_millis(5)).await;
    store.hub_jobs().claim(100, Duration::from_secs(60)).await.unwrap()
}

async fn both<F, Fut>(scenario: F)
where
    F: Fn(Store) -> Fut,
    Fut: Future<Output = ()>,
{
    for backend in [Backend::Sqlite, Backend::Postgres] {
        let (_db, store) = TestDatabase::store(backend).await.unwrap();
        scenario(store).await;
    }
}

/// The job a registration writes is held for its inline delivery; its success makes the registration and the
/// operation `assigned` (the operation's result too), and a move to another hub then queues the old identity's
/// deletion; a failure makes them `failed` with the code and no assignment.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn jobs_settle_registrations() {
    both(|store| async move {
        hub(&store, "a.example.com", "mosquitto").await;
        hub(&store, "b.example.com", "webhook").await;
        let (record, operation, job) =
            commit(&store, attempt("dev-1", "a.example.com", None, None, Duration::from_secs(30))).await;
        assert_eq!((record.status.as_str(), operation.status.as_str()), ("assigning", "assigning"));
        assert!(job.claimed_until.is_some(), "held for the inline delivery");
        assert!(claim(&store).await.is_empty(), "nobody else takes a job being delivered inline");

        let settled =
            store.hub_jobs().finish(&job, &HubJobOutcome::Done).await.unwrap().expect("the operation settles");
        assert_eq!(settled.status, "assigned");
        let result = serde_json::to_value(settled.result.unwrap()).unwrap();
        assert_eq!(
            (result["status"].as_str(), result["assignedHub"].as_str()),
            (Some("assigned"), Some("a.example.com"))
        );
        let now = store.registrations().get("dev-1").await.unwrap();
        assert_eq!(now.status, "assigned");
        assert_eq!(result["etag"], now.etag.as_str());
        assert_eq!(store.registrations().operation("dev-1", &operation.id).await.unwrap().status, "assigned");
        assert!(store.hub_jobs().of_registration("dev-1").await.unwrap().is_empty());

        // Moved to B: created there first; A's deletion is queued only when B has it.
        let (_, _, job) =
            commit(&store, attempt("dev-1", "b.example.com", Some(&now.etag), Some("a.example.com"), Duration::ZERO))
                .await;
        assert_eq!(store.hub_jobs().of_registration("dev-1").await.unwrap().len(), 1);
        let claimed = claim(&store).await;
        assert_eq!(claimed.iter().map(|j| j.id.as_str()).collect::<Vec<_>>(), [job.id.as_str()]);
        store.hub_jobs().finish(&claimed[0], &HubJobOutcome::Done).await.unwrap();
        let next = claim(&store).await;
        assert_eq!(next.len(), 1);
        assert_eq!(
            (next[0].hub.as_str(), next[0].action, next[0].device_id.as_str()),
            ("a.example.com", HubAction::Delete, "dev-1")
        );
        assert_eq!(store.registrations().get("dev-1").await.unwrap().assigned_hub.as_deref(), Some("b.example.com"));

        // Refused: failed, with the code, and no hub.
        let (_, operation, job) =
            commit(&store, attempt("dev-2", "a.example.com", None, None, Duration::from_secs(30))).await;
        let failure =
            HubJobOutcome::Fail { error_code: 400209, message: "hub a.example.com did not take the device: no".into() };
        let settled = store.hub_jobs().finish(&job, &failure).await.unwrap().unwrap();
        assert_eq!(settled.status, "failed");
        assert_eq!(settled.error_code, Some(400209));
        let result = serde_json::to_value(settled.result.unwrap()).unwrap();
        assert_eq!(result["errorCode"], 400209);
        assert!(result.get("assignedHub").is_none(), "{result}");
        let failed = store.registrations().get("dev-2").await.unwrap();
        assert_eq!((failed.status.as_str(), failed.assigned_hub.as_deref()), ("failed", None));
        assert_eq!(store.registrations().operation("dev-2", &operation.id).await.unwrap().status, "failed");
    })
    .await;
}

/// One device's jobs on one hub run one at a time, oldest first: a delete queued behind a retried upsert waits
/// for it; an upsert whose registration changed meanwhile does not settle the newer state.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_device_runs_in_order() {
    both(|store| async move {
        hub(&store, "a.example.com", "mosquitto").await;
        let (_, _, upsert) =
            commit(&store, attempt("dev-3", "a.example.com", None, None, Duration::from_secs(30))).await;
        let state = store.registrations().get("dev-3").await.unwrap();
        store.registrations().delete("dev-3", &Precondition::IfMatch(vec![state.etag]), &actor()).await.unwrap();
        assert!(claim(&store).await.is_empty(), "the delete waits for the upsert being delivered");

        let retry = HubJobOutcome::Retry { error: "broker down".into(), next_attempt_at: Utc::now() };
        store.hub_jobs().finish(&upsert, &retry).await.unwrap();
        let claimed = claim(&store).await;
        assert_eq!(claimed.len(), 1, "{claimed:?}");
        assert_eq!(
            (claimed[0].action, claimed[0].attempts, claimed[0].last_error.as_deref()),
            (HubAction::Upsert, 1, Some("broker down"))
        );
        let backlog = store.hub_jobs().backlogs().await.unwrap();
        assert_eq!((backlog["a.example.com"].depth, backlog["a.example.com"].retrying), (2, 1));

        assert!(
            store.hub_jobs().finish(&claimed[0], &HubJobOutcome::Done).await.unwrap().is_none(),
            "the registration is gone"
        );
        let claimed = claim(&store).await;
        assert_eq!(claimed.iter().map(|j| j.action).collect::<Vec<_>>(), [HubAction::Delete]);
        store.hub_jobs().finish(&claimed[0], &HubJobOutcome::Done).await.unwrap();
        assert!(store.hub_jobs().backlogs().await.unwrap().is_empty());
    })
    .await;
}

/// Two replicas (two connection pools on one database) claiming side by side never take the same job.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replicas_never_claim_the_same_job() {
    for backend in [Backend::Sqlite, Backend::Postgres] {
        let (db, first) = TestDatabase::store(backend).await.unwrap();
        let second = Store::connect(&db.url).await.unwrap();
        hub(&first, "a.example.com", "mosquitto").await;
        for n in 0..200 {
            commit(&first, attempt(&format!("dev-{n:03}"), "a.example.com", None, None, Duration::ZERO)).await;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
        let take = |store: Store| async move {
            let mut taken = Vec::new();
            loop {
                let jobs = store.hub_jobs().claim(16, Duration::from_secs(60)).await.unwrap();
                if jobs.is_empty() {
                    return taken;
                }
                taken.extend(jobs.into_iter().map(|j| j.id));
            }
        };
        let (a, b) = tokio::join!(tokio::spawn(take(first.clone())), tokio::spawn(take(second.clone())));
        let (a, b) = (a.unwrap(), b.unwrap());
        let all: HashSet<&String> = a.iter().chain(&b).collect();
        assert_eq!((a.len() + b.len(), all.len()), (200, 200), "{backend:?}: every job claimed exactly once");
    }
}

/// A device that registers again before its hub has it (an SDK retrying): each attempt's operation ends when its
/// own job does, and the registration follows the newest attempt only.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_waiting_operation_ends() {
    both(|store| async move {
        hub(&store, "a.example.com", "mosquitto").await;
        let (first, first_op, first_job) =
            commit(&store, attempt("dev-9", "a.example.com", None, None, Duration::ZERO)).await;
        let mut again = attempt("dev-9", "a.example.com", Some(&first.etag), None, Duration::ZERO);
        again.record.created_at = first.created_at;
        let (second, second_op, second_job) = commit(&store, again).await;

        let settled = store.hub_jobs().finish(&first_job, &HubJobOutcome::Done).await.unwrap().unwrap();
        assert_eq!((settled.id.as_str(), settled.status.as_str()), (first_op.id.as_str(), "assigned"));
        let state = store.registrations().get("dev-9").await.unwrap();
        assert_eq!(
            (state.status.as_str(), state.etag.as_str()),
            ("assigning", second.etag.as_str()),
            "the newer attempt governs"
        );

        store.hub_jobs().finish(&second_job, &HubJobOutcome::Done).await.unwrap();
        assert_eq!(store.registrations().operation("dev-9", &second_op.id).await.unwrap().status, "assigned");
        assert_eq!(store.registrations().get("dev-9").await.unwrap().status, "assigned");
    })
    .await;
}

/// `attempt` of registration `id` taking the device id `device_id` on `hub`, with or without its hub job (without,
/// a batch of first registrations takes the one-statement path).
fn taking(id: &str, device_id: &str, hub: &str, with_job: bool) -> RegistrationOutcome {
    let mut outcome = attempt(id, hub, None, None, Duration::ZERO);
    outcome.record.device_id = Some(device_id.to_owned());
    match (&mut outcome.hub_job, with_job) {
        (Some(job), true) => job.device_id = device_id.to_owned(),
        _ => outcome.hub_job = None,
    }
    outcome
}

/// One device id per hub (issue 16): a second registration taking a device id another holds on the same hub (in
/// any case) is refused with `DeviceIdTaken`, on both write paths and when it arrives in one batch with innocent
/// attempts (which are written); the same id on another hub is fine; the holders are found by their device id.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_device_id_per_hub() {
    both(|store| async move {
        hub(&store, "a.example.com", "mosquitto").await;
        hub(&store, "b.example.com", "webhook").await;
        for with_job in [true, false] {
            let (first, second, device) = if with_job { ("ra-1", "ra-2", "shared") } else { ("rb-1", "rb-2", "fast") };
            test_support::commit_enrolled(&store, taking(first, device, "a.example.com", with_job), snapshot())
                .await
                .unwrap();
            let refused = test_support::commit_enrolled(
                &store,
                taking(second, &device.to_uppercase(), "a.example.com", with_job),
                snapshot(),
            )
            .await;
            assert!(matches!(refused, Err(zerotouch_store::StoreError::DeviceIdTaken)), "{with_job}: {refused:?}");
            assert!(matches!(store.registrations().get(second).await, Err(zerotouch_store::StoreError::NotFound)));
            test_support::commit_enrolled(&store, taking(second, device, "b.example.com", with_job), snapshot())
                .await
                .unwrap();
        }
        // In one batch with others: only the thief fails.
        let tasks: Vec<_> = (0..20)
            .map(|n| {
                let store = store.clone();
                let outcome = if n == 7 {
                    taking("thief", "fast", "a.example.com", false)
                } else {
                    taking(&format!("rc-{n}"), &format!("own-{n}"), "a.example.com", false)
                };
                tokio::spawn(async move { test_support::commit_enrolled(&store, outcome, snapshot()).await })
            })
            .collect();
        for (n, task) in tasks.into_iter().enumerate() {
            let result = task.await.unwrap();
            if n == 7 {
                assert!(matches!(result, Err(zerotouch_store::StoreError::DeviceIdTaken)), "{result:?}");
            } else {
                assert!(result.is_ok(), "{n}: {result:?}");
            }
        }
        let holders = store.registrations().holding_device_ids(&["SHARED", "nobody"], 10).await.unwrap();
        let keys: Vec<&str> = holders.iter().map(|r| r.key.as_str()).collect();
        assert_eq!(keys, ["ra-1", "ra-2"], "ra-1 on hub a, ra-2 on hub b");
    })
    .await;
}

/// A TPM device's hub key waits in its upsert job's document sealed (bound to the job), and comes back clear to the
/// worker that claims the job.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_hub_key_waits_sealed_in_its_job() {
    use sea_orm::{ConnectionTrait, Database};
    for backend in [Backend::Sqlite, Backend::Postgres] {
        let (db, store) = TestDatabase::store(backend).await.unwrap();
        hub(&store, "a.example.com", "webhook").await;
        let key = zerotouch_wire::SymmetricKey::generate_len(32);
        let mut outcome = attempt("tpm-dev", "a.example.com", None, None, Duration::ZERO);
        let credential = zerotouch_store::CredentialRef::HubKey { key: key.clone() };
        if let Some(job) = outcome.hub_job.as_mut() {
            job.document = credential.document(None);
        }
        let (_, _, written) = commit(&store, outcome).await;
        assert_eq!(
            zerotouch_store::CredentialRef::of_document(written.document.as_ref().unwrap()).unwrap(),
            credential
        );

        let raw = Database::connect(db.url.as_str()).await.unwrap();
        let rows = raw
            .query_all_raw(sea_orm::Statement::from_string(raw.get_database_backend(), "SELECT document FROM hub_jobs"))
            .await
            .unwrap();
        let stored: serde_json::Value = rows[0].try_get("", "document").unwrap();
        let sealed = stored["credential"]["key"].as_str().unwrap();
        assert!(sealed.starts_with("zt-sealed:"), "{stored}");
        assert!(!stored.to_string().contains(key.to_base64().as_str()));
        raw.close().await.unwrap();

        let claimed = claim(&store).await;
        assert_eq!(
            zerotouch_store::CredentialRef::of_document(claimed[0].document.as_ref().unwrap()).unwrap(),
            credential
        );
    }
}

/// An enabled symmetric-key enrollment of `kind` with these keys (base64 of the bytes given).
fn keyed(
    kind: zerotouch_wire::enrollment::EnrollmentKind,
    id: &str,
    keys: [u8; 2],
    disabled: bool,
) -> zerotouch_wire::enrollment::NormalizedEnrollment {
    use base64::Engine;
    let encode = |b: u8| base64::engine::general_purpose::STANDARD.encode([b; 32]);
    let attestation = json!({"type": "symmetricKey", "symmetricKey": {"primaryKey": encode(keys[0]), "secondaryKey": encode(keys[1])}});
    let status = if disabled { "disabled" } else { "enabled" };
    let doc = match kind {
        zerotouch_wire::enrollment::EnrollmentKind::Individual => {
            json!({"registrationId": id, "attestation": attestation, "provisioningStatus": status})
        }
        zerotouch_wire::enrollment::EnrollmentKind::Group => {
            json!({"enrollmentGroupId": id, "attestation": attestation, "provisioningStatus": status})
        }
    };
    zerotouch_wire::enrollment::normalize(kind, doc, None).unwrap()
}

/// Issue #17, point 3: a write that changes an enabled enrollment's or group's keys (single or bulk) queues, in its
/// transaction, an upsert for each assigned device whose hub login is its key, carrying the slot it registered
/// with; devices on a certificate, an unchanged write and a disabling write queue no upsert.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn key_changes_queue_hub_updates() {
    use zerotouch_store::{BulkItem, CredentialRef};
    use zerotouch_wire::KeySlot;
    use zerotouch_wire::bulk::BulkMode;
    use zerotouch_wire::enrollment::EnrollmentKind::{Group, Individual};
    both(|store| async move {
        hub(&store, "a.example.com", "mosquitto").await;
        let enrollments = store.enrollments();
        for id in ["k-1", "k-2", "k-3"] {
            enrollments
                .put(Individual, keyed(Individual, id, [1, 2], false), &Precondition::None, &actor())
                .await
                .unwrap();
        }
        enrollments.put(Group, keyed(Group, "g", [3, 4], false), &Precondition::None, &actor()).await.unwrap();
        // k-1 logs in with its secondary key, k-2 with a certificate, k-3 with its primary; g-1 through the group.
        for (id, slot, group) in [
            ("k-1", Some(KeySlot::Secondary), None),
            ("k-2", None, None),
            ("k-3", Some(KeySlot::Primary), None),
            ("g-1", Some(KeySlot::Primary), Some("g")),
        ] {
            let mut outcome = attempt(id, "a.example.com", None, None, Duration::from_secs(30));
            outcome.record.hub_key_slot = slot;
            outcome.record.enrollment_group_key = group.map(str::to_owned);
            let (_, _, job) = commit(&store, outcome).await;
            store.hub_jobs().finish(&job, &HubJobOutcome::Done).await.unwrap();
            assert_eq!(store.registrations().get(id).await.unwrap().hub_key_slot, slot);
        }
        let upserts = |id: &'static str| {
            let store = store.clone();
            async move {
                let jobs = store.hub_jobs().of_registration(id).await.unwrap();
                jobs.iter()
                    .map(|j| (j.action, j.document.as_ref().map(|d| CredentialRef::of_document(d).unwrap())))
                    .collect::<Vec<_>>()
            }
        };

        // The same keys again: nothing.
        enrollments
            .put(Individual, keyed(Individual, "k-1", [1, 2], false), &Precondition::None, &actor())
            .await
            .unwrap();
        assert!(upserts("k-1").await.is_empty());
        // Bulk: new keys for all three, k-3 disabled by the same write.
        let items = [("k-1", false), ("k-2", false), ("k-3", true)]
            .into_iter()
            .enumerate()
            .map(|(index, (id, disabled))| BulkItem {
                index,
                key: id.into(),
                enrollment: Some(keyed(Individual, id, [5, 6], disabled)),
                etag: None,
            })
            .collect();
        let applied = test_support::bulk_in_parts(&store, Individual, BulkMode::Update, items, 1000, &actor()).await;
        assert!(applied.unwrap().is_empty());
        let secondary = Some(CredentialRef::SymmetricKey { slot: KeySlot::Secondary });
        assert_eq!(upserts("k-1").await, [(HubAction::Upsert, secondary)]);
        assert!(upserts("k-2").await.is_empty(), "a certificate device got a key");
        assert_eq!(upserts("k-3").await, [(HubAction::Disable, None)]);
        // A group's new keys reach every device of the group.
        enrollments.put(Group, keyed(Group, "g", [7, 4], false), &Precondition::None, &actor()).await.unwrap();
        let primary = Some(CredentialRef::SymmetricKey { slot: KeySlot::Primary });
        assert_eq!(upserts("g-1").await, [(HubAction::Upsert, primary)]);
    })
    .await;
}
