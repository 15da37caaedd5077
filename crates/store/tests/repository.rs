//! Integration tests of the repositories against real databases.
//!
//! Every scenario is written once, as `async fn name(store: &Store)`, and `both!(name)` runs it on a fresh SQLite
//! file and on a fresh PostgreSQL database (`name::sqlite`, `name::postgres`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::{Value, json};
use zerotouch_store::test_support::{self, TestDatabase};
use zerotouch_store::{
    Actor, AuditFilter, AuditRecord, BulkFailure, BulkItem, EnrollmentRecord, HubInput, Precondition,
    RegistrationRecord, Store, StoreError,
};
use zerotouch_wire::SymmetricKey;
use zerotouch_wire::bulk::BulkMode;
use zerotouch_wire::enrollment::{EnrollmentKind, NormalizedEnrollment, normalize};

/// Runs a scenario on both backends, each on a database of its own.
macro_rules! both {
    ($name:ident) => {
        mod $name {
            use zerotouch_store::Backend;
            use zerotouch_store::test_support::TestDatabase;

            /// The scenario on an SQLite file.
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn sqlite() {
                let (_db, store) = TestDatabase::store(Backend::Sqlite).await.expect("an SQLite test database");
                super::$name(&store).await;
            }

            /// The scenario on a PostgreSQL database.
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn postgres() {
                let (_db, store) = TestDatabase::store(Backend::Postgres).await.expect("a PostgreSQL test database");
                super::$name(&store).await;
            }
        }
    };
}

// ---------------------------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------------------------

const KINDS: [EnrollmentKind; 2] = [EnrollmentKind::Individual, EnrollmentKind::Group];

fn actor() -> Actor {
    Actor { subject: "alice".into(), role: "admin".into() }
}

fn key(id: &str) -> String {
    id.to_ascii_lowercase()
}

fn if_match(etag: &str) -> Precondition {
    Precondition::IfMatch(vec![etag.to_owned()])
}

fn resource_type(kind: EnrollmentKind) -> &'static str {
    match kind {
        EnrollmentKind::Individual => "enrollment",
        EnrollmentKind::Group => "enrollmentGroup",
    }
}

/// A symmetric-key enrollment of `kind` named `id`, with `extra` top-level fields merged in.
fn enrollment_with(kind: EnrollmentKind, id: &str, extra: Value) -> NormalizedEnrollment {
    let mut doc = match kind {
        EnrollmentKind::Individual => json!({"registrationId": id, "attestation": {"type": "symmetricKey"}}),
        EnrollmentKind::Group => json!({"enrollmentGroupId": id, "attestation": {"type": "symmetricKey"}}),
    };
    let map = doc.as_object_mut().unwrap();
    for (field, value) in extra.as_object().unwrap() {
        map.insert(field.clone(), value.clone());
    }
    normalize(kind, doc, None).expect("a valid enrollment")
}

fn enrollment(kind: EnrollmentKind, id: &str) -> NormalizedEnrollment {
    enrollment_with(kind, id, json!({}))
}

fn individual(id: &str) -> NormalizedEnrollment {
    enrollment(EnrollmentKind::Individual, id)
}

/// Applies `items` as one bulk call in parts of 300, as the admin API does with parts of 1,000.
async fn bulk(store: &Store, kind: EnrollmentKind, mode: BulkMode, items: Vec<BulkItem>) -> Vec<(usize, BulkFailure)> {
    test_support::bulk_in_parts(store, kind, mode, items, 300, &actor()).await.unwrap()
}

async fn put_new(store: &Store, kind: EnrollmentKind, id: &str) -> EnrollmentRecord {
    let (record, created) =
        store.enrollments().put(kind, enrollment(kind, id), &Precondition::None, &actor()).await.unwrap();
    assert!(created, "{id} should be new");
    record
}

/// Every audit event, in order, read page by page.
async fn all_audit(store: &Store, filter: &AuditFilter) -> Vec<AuditRecord> {
    let mut out = Vec::new();
    let mut after = None;
    loop {
        let page = store.audit().list(filter, after.as_deref(), 1000).await.unwrap();
        out.extend(page.items);
        match page.next {
            Some(next) => after = Some(next),
            None => return out,
        }
    }
}

/// The audit events of one resource (ids compare case-insensitively), in order.
async fn audit_of(store: &Store, resource_type: &str, id: &str) -> Vec<AuditRecord> {
    all_audit(store, &AuditFilter::default())
        .await
        .into_iter()
        .filter(|e| e.resource_type == resource_type && e.resource_id.eq_ignore_ascii_case(id))
        .collect()
}

/// Every enrollment of `kind`, read page by page with `limit`; also returns the page sizes.
async fn all_enrollments(store: &Store, kind: EnrollmentKind, limit: u64) -> (Vec<EnrollmentRecord>, Vec<usize>) {
    let mut out = Vec::new();
    let mut sizes = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let page = store.enrollments().list(kind, after.as_deref(), limit).await.unwrap();
        sizes.push(page.items.len());
        if let Some(next) = &page.next {
            assert_eq!(Some(next), page.items.last().map(|r| &r.key), "next is the last key of the page");
        }
        out.extend(page.items);
        match page.next {
            Some(next) => after = Some(next),
            None => return (out, sizes),
        }
    }
}

async fn enrollment_count(store: &Store, kind: EnrollmentKind) -> usize {
    all_enrollments(store, kind, 1000).await.0.len()
}

/// The base64 text of a record's primary key.
fn generated_text(record: &EnrollmentRecord) -> String {
    record.primary_key.as_ref().map(|k| k.to_base64().to_string()).unwrap_or_default()
}

async fn pause() {
    tokio::time::sleep(Duration::from_millis(20)).await;
}

fn hub_input(host_name: &str, weight: u32) -> HubInput {
    HubInput {
        host_name: host_name.to_owned(),
        kind: "azure".to_owned(),
        allocation_weight: weight,
        apply_allocation_policy: true,
        settings: json!({"connectionString": format!("HostName={host_name};SharedAccessKeyName=x")}),
    }
}

fn registration(id: &str, group: Option<&str>) -> RegistrationRecord {
    RegistrationRecord {
        payload: Some(json!({"room": 7})),
        initial_twin: Some(json!({"tags": {"floor": 3}})),
        ..test_support::assigned_registration(id, group, id, "hub-a.example.com")
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Schema
// ---------------------------------------------------------------------------------------------------------------

/// A migrated database is ready, migrating again changes nothing, and an unmigrated one is not ready until migrated.
async fn readiness_follows_migrations(store: &Store) {
    assert!(store.is_ready().await.unwrap());
    store.migrate().await.unwrap();
    assert!(store.is_ready().await.unwrap());

    let db = TestDatabase::create(store.backend()).await.unwrap();
    let fresh = Store::connect(&db.url).await.unwrap();
    assert!(!fresh.is_ready().await.unwrap(), "nothing is migrated yet");
    fresh.migrate().await.unwrap();
    assert!(fresh.is_ready().await.unwrap());
    fresh.close().await.unwrap();

    // A newer version migrated further (a rolling upgrade): this one stays ready; migrating again changes nothing.
    use sea_orm::ConnectionTrait;
    let newer = sea_orm::Database::connect(db.url.as_str()).await.unwrap();
    newer
        .execute_unprepared("INSERT INTO seaql_migrations (version, applied_at) VALUES ('m29991231_000000_future', 0)")
        .await
        .unwrap();
    newer.close().await.unwrap();
    let older = Store::connect(&db.url).await.unwrap();
    assert!(older.is_ready().await.unwrap(), "a migration it does not know leaves it ready");
    older.close().await.unwrap();
}
both!(readiness_follows_migrations);

/// Several processes migrating one fresh database at once (replicas, or Helm hook Jobs retried): every run
/// succeeds, each migration is applied once, and the database is ready. On PostgreSQL the runs take turns under an
/// advisory lock; SQLite has one writer.
async fn concurrent_migrations_are_safe(store: &Store) {
    let db = TestDatabase::create(store.backend()).await.unwrap();
    let mut runs = Vec::new();
    for _ in 0..4 {
        let url = db.url.clone();
        runs.push(tokio::spawn(async move {
            let store = Store::connect(&url).await?;
            let result = store.migrate().await;
            store.close().await?;
            result
        }));
    }
    for run in runs {
        run.await.unwrap().unwrap();
    }
    let fresh = Store::connect(&db.url).await.unwrap();
    assert!(fresh.is_ready().await.unwrap());
    fresh.close().await.unwrap();
}
both!(concurrent_migrations_are_safe);

// ---------------------------------------------------------------------------------------------------------------
// Enrollments: single writes
// ---------------------------------------------------------------------------------------------------------------

/// A first put creates (new etag, created_at == updated_at); a second put updates (new etag, created_at kept,
/// updated_at moves, new content stored), for both enrollment kinds.
async fn put_creates_then_updates(store: &Store) {
    for kind in KINDS {
        let (created, was_created) =
            store.enrollments().put(kind, enrollment(kind, "Dev-1"), &Precondition::None, &actor()).await.unwrap();
        assert!(was_created);
        assert_eq!(created.key, "dev-1");
        assert_eq!(created.id, "Dev-1");
        assert_eq!(created.provisioning_status, "enabled");
        assert_eq!(created.attestation_type, "symmetricKey");
        assert!(!created.etag.is_empty());
        assert_eq!(created.created_at, created.updated_at);
        assert_eq!(
            store.enrollments().get(kind, "dev-1").await.unwrap(),
            created,
            "what put returns is what is stored"
        );

        pause().await;
        let changed = enrollment_with(kind, "Dev-1", json!({"provisioningStatus": "disabled"}));
        let (updated, was_created) =
            store.enrollments().put(kind, changed, &Precondition::None, &actor()).await.unwrap();
        assert!(!was_created);
        assert_ne!(updated.etag, created.etag);
        assert_eq!(updated.created_at, created.created_at);
        assert!(updated.updated_at > created.updated_at);
        assert_eq!(updated.provisioning_status, "disabled");
        assert_eq!(updated.document["provisioningStatus"], "disabled");
        assert_eq!(store.enrollments().get(kind, "dev-1").await.unwrap(), updated);

        pause().await;
        let (again, was_created) =
            store.enrollments().put(kind, enrollment(kind, "Dev-1"), &if_match(&updated.etag), &actor()).await.unwrap();
        assert!(!was_created);
        assert_ne!(again.etag, updated.etag);
        assert_eq!(again.provisioning_status, "enabled");
        assert_eq!(again.created_at, created.created_at);
        assert!(again.updated_at > updated.updated_at);
    }
    // The two kinds live in separate tables.
    assert_eq!(enrollment_count(store, EnrollmentKind::Individual).await, 1);
    assert_eq!(enrollment_count(store, EnrollmentKind::Group).await, 1);
    store.enrollments().delete(EnrollmentKind::Group, "dev-1", &Precondition::None, &actor()).await.unwrap();
    assert!(store.enrollments().get(EnrollmentKind::Individual, "dev-1").await.is_ok());
}
both!(put_creates_then_updates);

/// Reading a missing enrollment is NotFound.
async fn missing_enrollment_is_not_found(store: &Store) {
    for kind in KINDS {
        let err = store.enrollments().get(kind, "nobody").await.unwrap_err();
        assert!(matches!(err, StoreError::NotFound), "{err:?}");
    }
}
both!(missing_enrollment_is_not_found);

/// A put whose If-Match does not match is refused with PreconditionFailed and changes nothing (record, audit log);
/// `*` and a list containing the current etag match.
async fn put_if_match_mismatch_changes_nothing(store: &Store) {
    let kind = EnrollmentKind::Individual;
    let original = put_new(store, kind, "Dev-1").await;
    let events_before = all_audit(store, &AuditFilter::default()).await;

    let changed = enrollment_with(kind, "Dev-1", json!({"provisioningStatus": "disabled"}));
    let err = store.enrollments().put(kind, changed.clone(), &if_match("stale"), &actor()).await.unwrap_err();
    assert!(matches!(err, StoreError::PreconditionFailed), "{err:?}");
    assert_eq!(store.enrollments().get(kind, "dev-1").await.unwrap(), original);
    assert_eq!(all_audit(store, &AuditFilter::default()).await, events_before, "a refused write is not audited");

    let several = Precondition::IfMatch(vec!["stale".into(), original.etag.clone()]);
    let (updated, created) = store.enrollments().put(kind, changed.clone(), &several, &actor()).await.unwrap();
    assert!(!created);
    let (_, created) =
        store.enrollments().put(kind, changed, &Precondition::IfMatch(vec!["*".into()]), &actor()).await.unwrap();
    assert!(!created);
    let err = store.enrollments().put(kind, individual("Dev-1"), &if_match(&updated.etag), &actor()).await.unwrap_err();
    assert!(matches!(err, StoreError::PreconditionFailed), "an etag that was current once no longer is: {err:?}");
}
both!(put_if_match_mismatch_changes_nothing);

/// If-Match `*` (or any etag) on a missing enrollment is PreconditionFailed and creates nothing.
async fn put_if_match_on_missing_is_precondition_failed(store: &Store) {
    for kind in KINDS {
        for precondition in [Precondition::IfMatch(vec!["*".into()]), if_match("whatever")] {
            let err =
                store.enrollments().put(kind, enrollment(kind, "Ghost"), &precondition, &actor()).await.unwrap_err();
            assert!(matches!(err, StoreError::PreconditionFailed), "{err:?}");
            assert!(matches!(store.enrollments().get(kind, "ghost").await, Err(StoreError::NotFound)));
        }
    }
    assert!(all_audit(store, &AuditFilter::default()).await.is_empty());
}
both!(put_if_match_on_missing_is_precondition_failed);

/// Delete with a wrong etag is refused and keeps the record; with the right etag it removes it; a missing
/// enrollment is NotFound, whatever the precondition.
async fn delete_honours_preconditions(store: &Store) {
    for kind in KINDS {
        let record = put_new(store, kind, "Dev-1").await;

        let err = store.enrollments().delete(kind, "dev-1", &if_match("wrong"), &actor()).await.unwrap_err();
        assert!(matches!(err, StoreError::PreconditionFailed), "{err:?}");
        assert_eq!(store.enrollments().get(kind, "dev-1").await.unwrap(), record);

        store.enrollments().delete(kind, "dev-1", &if_match(&record.etag), &actor()).await.unwrap();
        assert!(matches!(store.enrollments().get(kind, "dev-1").await, Err(StoreError::NotFound)));

        for precondition in [Precondition::None, if_match(&record.etag), Precondition::IfMatch(vec!["*".into()])] {
            let err = store.enrollments().delete(kind, "dev-1", &precondition, &actor()).await.unwrap_err();
            assert!(matches!(err, StoreError::NotFound), "{err:?}");
        }

        // Unconditional delete and `*` both work on an existing record.
        put_new(store, kind, "Dev-2").await;
        store.enrollments().delete(kind, "dev-2", &Precondition::None, &actor()).await.unwrap();
        put_new(store, kind, "Dev-3").await;
        store.enrollments().delete(kind, "dev-3", &Precondition::IfMatch(vec!["*".into()]), &actor()).await.unwrap();
        assert_eq!(enrollment_count(store, kind).await, 0);

        let deletes = audit_of(store, resource_type(kind), "dev-1").await;
        let actions: Vec<&str> = deletes.iter().map(|e| e.action.as_str()).collect();
        assert_eq!(actions, ["create", "delete"], "the refused delete is not audited");
    }
}
both!(delete_honours_preconditions);

/// Symmetric keys given by the client round-trip through the database exactly, are never part of the stored
/// document, and are replaced by an update; generated keys are stored too; TPM enrollments have no keys.
async fn symmetric_keys_round_trip_outside_the_document(store: &Store) {
    for kind in KINDS {
        let primary = SymmetricKey::generate();
        let secondary = SymmetricKey::from_base64("AAECAwQFBgcICQoLDA0ODw==").unwrap();
        let primary_text = primary.to_base64().to_string();
        let secondary_text = secondary.to_base64().to_string();
        let keys = json!({"attestation": {"type": "symmetricKey", "symmetricKey": {
            "primaryKey": primary_text, "secondaryKey": secondary_text}}});
        let (_, created) = store
            .enrollments()
            .put(kind, enrollment_with(kind, "Keyed", keys), &Precondition::None, &actor())
            .await
            .unwrap();
        assert!(created);

        let stored = store.enrollments().get(kind, "keyed").await.unwrap();
        assert_eq!(stored.primary_key.as_ref(), Some(&primary));
        assert_eq!(stored.secondary_key.as_ref(), Some(&secondary));
        assert_eq!(stored.document["attestation"], json!({"type": "symmetricKey"}));
        let text = stored.document.to_string();
        assert!(!text.contains(&primary_text) && !text.contains(&secondary_text), "keys leaked into {text}");
        let listed = store.enrollments().list(kind, None, 10).await.unwrap();
        assert_eq!(listed.items[0].primary_key.as_ref(), Some(&primary));

        // An update that carries no keys (a document read with GET, which never shows them) keeps them.
        let (updated, created) =
            store.enrollments().put(kind, enrollment(kind, "Keyed"), &Precondition::None, &actor()).await.unwrap();
        assert!(!created);
        assert_eq!(updated.primary_key.as_ref(), Some(&primary));
        let stored = store.enrollments().get(kind, "keyed").await.unwrap();
        assert_eq!((stored.primary_key.as_ref(), stored.secondary_key.as_ref()), (Some(&primary), Some(&secondary)));

        // Generated keys (none given, new enrollment) are stored and read back as well.
        let (fresh, _) =
            store.enrollments().put(kind, enrollment(kind, "Fresh"), &Precondition::None, &actor()).await.unwrap();
        let generated = fresh.primary_key.clone().expect("a generated primary key");
        assert_ne!(generated, primary);
        let stored = store.enrollments().get(kind, "fresh").await.unwrap();
        assert_eq!(stored.primary_key, Some(generated));
        assert_eq!(stored.secondary_key, fresh.secondary_key);
        assert!(!stored.document.to_string().contains(generated_text(&stored).as_str()));
    }

    let tpm = normalize(
        EnrollmentKind::Individual,
        json!({"registrationId": "Tpm-1", "attestation": {"type": "tpm", "tpm": {"endorsementKey": EK}}}),
        None,
    )
    .unwrap();
    store.enrollments().put(EnrollmentKind::Individual, tpm, &Precondition::None, &actor()).await.unwrap();
    let stored = store.enrollments().get(EnrollmentKind::Individual, "tpm-1").await.unwrap();
    assert_eq!(stored.attestation_type, "tpm");
    assert_eq!((stored.primary_key, stored.secondary_key), (None, None));
    assert_eq!(stored.document["attestation"]["tpm"]["endorsementKey"], EK);
}
both!(symmetric_keys_round_trip_outside_the_document);

/// An EK (base64 TPM2B_PUBLIC) of a swtpm instance, from `docs/protocol/tpm-activation.md`.
const EK: &str = "AToAAQALAAMAsgAgg3GXZ0SEs/gakMyNRqXXJP1S124GUgtk8qHaGzMUaaoABgCAAEMAEAgAAAAAAAEAvQUIS0ZIopBRgZp/xQbv3g1IEjMcvcJKcl6A02DRuO9N2xTwADMmdHSBtiZYuf+gFX+j51goWbgy866DAC5JTMAITowMbFUdPByW5+eZse+40pAnurf/ORl9R2g9u3WzfvNCFMWX55Sr2of4A+QInfgB7ccbF+bXskBclQmacvH14KVqNaxzet4VM5DHVdncqbapSsSzbZvDCGeQHIaGQZB/QphQkeBoHiNUyGDwwKSO+qAqZXtcgWUTa4RZc4K0hU798OAw71jAbngEN02GY+8pr6Y6WHpWzgMXUHFJz3JI6x1Ly31Y8ZIbZByafa0YiV0voScY1JztVH64MA01fw==";

/// Ids differing only in case ("Dev-A", "dev-a") are one record: the second put updates it, lists show one row,
/// and the latest spelling is kept as the id.
async fn ids_are_case_insensitive(store: &Store) {
    for kind in KINDS {
        let first = put_new(store, kind, "Dev-A").await;
        assert_eq!(first.key, "dev-a");

        let (second, created) =
            store.enrollments().put(kind, enrollment(kind, "dev-a"), &if_match(&first.etag), &actor()).await.unwrap();
        assert!(!created, "same id in another case is the same record");
        assert_eq!(second.key, "dev-a");
        assert_eq!(second.id, "dev-a");
        assert_eq!(second.created_at, first.created_at);

        let (third, created) =
            store.enrollments().put(kind, enrollment(kind, "DEV-A"), &Precondition::None, &actor()).await.unwrap();
        assert!(!created);
        assert_eq!(third.id, "DEV-A");

        let page = store.enrollments().list(kind, None, 10).await.unwrap();
        assert_eq!(page.items.len(), 1);
        assert_eq!(page.items[0], third);

        let events = audit_of(store, resource_type(kind), "dev-a").await;
        let actions: Vec<&str> = events.iter().map(|e| e.action.as_str()).collect();
        assert_eq!(actions, ["create", "update", "update"]);

        store.enrollments().delete(kind, "dev-a", &if_match(&third.etag), &actor()).await.unwrap();
        assert_eq!(enrollment_count(store, kind).await, 0);
    }
}
both!(ids_are_case_insensitive);

/// Devices looking up their individual enrollments all at once (the lookups are read together, in batches): each
/// gets its own enrollment exactly as stored, keys included; an id with no individual enrollment (an unknown one, or
/// a group's) is not found. Duplicates in one batch (a device registering twice at once) each get the answer.
async fn concurrent_device_lookups_each_find_their_own_enrollment(store: &Store) {
    const ENROLLED: usize = 40;
    let mut expected = HashMap::new();
    for i in 0..ENROLLED {
        let record = put_new(store, EnrollmentKind::Individual, &format!("Lookup-{i}")).await;
        assert!(record.primary_key.is_some(), "a symmetric-key enrollment gets keys");
        expected.insert(record.key.clone(), record);
    }
    put_new(store, EnrollmentKind::Group, "Lookup-group").await;
    let mut keys: Vec<String> = expected.keys().cloned().collect();
    keys.extend(expected.keys().cloned());
    keys.extend((0..ENROLLED).map(|i| format!("lookup-unknown-{i}")));
    keys.push("lookup-group".into());
    let barrier = Arc::new(tokio::sync::Barrier::new(keys.len()));
    let tasks: Vec<_> = keys
        .into_iter()
        .map(|key| {
            let (store, barrier) = (store.clone(), barrier.clone());
            tokio::spawn(async move {
                barrier.wait().await;
                let found = store.enrollments().get(EnrollmentKind::Individual, &key).await;
                (key, found)
            })
        })
        .collect();
    let mut found_count = 0;
    for task in tasks {
        let (key, found) = task.await.unwrap();
        match expected.get(&key) {
            Some(record) => {
                assert_eq!(&found.unwrap(), record, "{key}");
                found_count += 1;
            }
            None => assert!(matches!(found, Err(StoreError::NotFound)), "{key}: {found:?}"),
        }
    }
    assert_eq!(found_count, 2 * ENROLLED);
}
both!(concurrent_device_lookups_each_find_their_own_enrollment);

/// Closing the store returns promptly although its device lookups and its registration writer keep connections
/// (closing a pool waits for every connection taken from it); afterwards both refuse work instead of hanging.
async fn close_returns_although_connections_are_kept(store: &Store) {
    let record = put_new(store, EnrollmentKind::Individual, "Kept").await;
    assert_eq!(store.enrollments().get(EnrollmentKind::Individual, "kept").await.unwrap(), record);
    test_support::commit_enrolled(store, attempt("Kept", None, "op-kept"), snapshot()).await.unwrap();
    let closing = tokio::time::timeout(Duration::from_secs(10), store.clone().close()).await;
    closing.expect("close returns").expect("close succeeds");
    let lookup =
        tokio::time::timeout(Duration::from_secs(10), store.enrollments().get(EnrollmentKind::Individual, "kept"))
            .await;
    assert!(lookup.expect("a lookup after close returns").is_err());
    let write = tokio::time::timeout(
        Duration::from_secs(10),
        test_support::commit_enrolled(store, attempt("Late", None, "op-late"), snapshot()),
    )
    .await;
    assert!(write.expect("a write after close returns").is_err());
}
both!(close_returns_although_connections_are_kept);

/// PostgreSQL's server processes terminated under the store (as by a restarted or failed-over server): the next
/// device lookup and the next registration write, which run on connections the store keeps, still succeed, and so
/// does the next read through the pool (whose connections are checked before use once idle for a second).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kept_connections_recover_from_terminated_server_processes() {
    use sea_orm::ConnectionTrait;
    let (db, store) = TestDatabase::store(zerotouch_store::Backend::Postgres).await.unwrap();
    let record = put_new(&store, EnrollmentKind::Individual, "Survivor").await;
    assert_eq!(store.enrollments().get(EnrollmentKind::Individual, "survivor").await.unwrap(), record);
    test_support::commit_enrolled(&store, attempt("Before", None, "op-before"), snapshot()).await.unwrap();

    let admin = sea_orm::Database::connect(db.url.as_str()).await.unwrap();
    let terminated = admin
        .query_one_raw(sea_orm::Statement::from_string(
            sea_orm::DbBackend::Postgres,
            "SELECT count(pg_terminate_backend(pid)) AS n FROM pg_stat_activity \
             WHERE datname = current_database() AND pid <> pg_backend_pid()",
        ))
        .await
        .unwrap()
        .unwrap()
        .try_get::<i64>("", "n")
        .unwrap();
    assert!(terminated >= 2, "the lookup's and the writer's connections were terminated ({terminated})");
    admin.close().await.unwrap();

    assert_eq!(store.enrollments().get(EnrollmentKind::Individual, "survivor").await.unwrap(), record);
    let (written, _, _) =
        test_support::commit_enrolled(&store, attempt("After", None, "op-after"), snapshot()).await.unwrap();
    // Pooled connections are checked once idle for a while (as they are after a restart that takes that long).
    tokio::time::sleep(zerotouch_store::POOLED_CHECK_AFTER_IDLE + Duration::from_millis(200)).await;
    assert_eq!(store.registrations().get("after").await.unwrap(), written);
}

// ---------------------------------------------------------------------------------------------------------------
// Enrollments: listing and bulk
// ---------------------------------------------------------------------------------------------------------------

/// 2,500 enrollments created in one bulk call (in scrambled order) are listed 1,000 at a time in key order, each
/// exactly once, with `next` None on the last page; limits are clamped to 1..=1000.
async fn paging_returns_every_key_once_in_order(store: &Store) {
    const N: usize = 2500;
    let kind = EnrollmentKind::Individual;
    assert_eq!(
        store.enrollments().list(kind, None, 1000).await.unwrap(),
        zerotouch_store::Page { items: vec![], next: None }
    );

    // 7919 is prime to 2500, so `i * 7919 % N` visits every number once, out of order.
    let items: Vec<BulkItem> = (0..N)
        .map(|index| {
            let id = format!("Dev-{:05}", index * 7919 % N);
            BulkItem { index, key: key(&id), enrollment: Some(individual(&id)), etag: None }
        })
        .collect();
    let failures = bulk(store, kind, BulkMode::Create, items).await;
    assert_eq!(failures, []);

    let (records, sizes) = all_enrollments(store, kind, 1000).await;
    assert_eq!(sizes, [1000, 1000, 500]);
    let keys: Vec<String> = records.iter().map(|r| r.key.clone()).collect();
    let expected: Vec<String> = (0..N).map(|i| format!("dev-{i:05}")).collect();
    assert_eq!(keys, expected, "every key exactly once, in key order");
    assert_eq!(records.iter().map(|r| r.id.clone()).collect::<HashSet<_>>().len(), N);
    assert!(records.iter().all(|r| r.id.starts_with("Dev-")));

    // A listing that ends exactly on a page boundary still says there is no next page.
    let last = store.enrollments().list(kind, Some("dev-01499"), 1000).await.unwrap();
    assert_eq!(last.items.len(), 1000);
    assert_eq!(last.next, None);

    // Limits are clamped: 0 reads one row, anything above 1000 reads 1000.
    let one = store.enrollments().list(kind, None, 0).await.unwrap();
    assert_eq!(one.items.len(), 1);
    assert_eq!(one.next.as_deref(), Some("dev-00000"));
    let capped = store.enrollments().list(kind, None, 5000).await.unwrap();
    assert_eq!(capped.items.len(), 1000);
    assert_eq!(capped.next.as_deref(), Some("dev-00999"));
    // A token after the last key gives an empty last page.
    let empty = store.enrollments().list(kind, Some("dev-02499"), 1000).await.unwrap();
    assert_eq!((empty.items.len(), empty.next), (0, None));
    assert_eq!(enrollment_count(store, EnrollmentKind::Group).await, 0);
}
both!(paging_returns_every_key_once_in_order);

/// Bulk calls of 1,000 items report exactly the failing indexes (duplicate id in the call, existing id in create
/// mode, wrong etag in updateIfMatchETag mode, missing id in delete mode) and apply every other item, with audit.
async fn bulk_reports_exactly_the_failures_and_applies_the_rest(store: &Store) {
    let kind = EnrollmentKind::Individual;
    let id = |i: usize| format!("Bulk-{i:04}");

    // Three ids exist before the create call.
    let mut preexisting = Vec::new();
    for i in [10, 500, 990] {
        preexisting.push(put_new(store, kind, &id(i)).await);
    }
    let audit_start = all_audit(store, &AuditFilter::default()).await.len();

    // --- create: 1,000 items; 250 repeats 249 (another case), 750 repeats 3; 10, 500, 990 already exist.
    let create_items: Vec<BulkItem> = (0..1000)
        .map(|index| {
            let item_id = match index {
                250 => id(249).to_uppercase(),
                750 => id(3),
                _ => id(index),
            };
            BulkItem { index, key: key(&item_id), enrollment: Some(individual(&item_id)), etag: None }
        })
        .collect();
    let failures = bulk(store, kind, BulkMode::Create, create_items).await;
    let indexes: Vec<usize> = failures.iter().map(|(i, _)| *i).collect();
    assert_eq!(indexes, [10, 250, 500, 750, 990]);
    assert!(failures.iter().all(|(_, f)| matches!(f, BulkFailure::Conflict(_))), "{failures:?}");

    // 998 distinct ids: the three that existed are untouched, the 995 others are new.
    let (records, _) = all_enrollments(store, kind, 1000).await;
    assert_eq!(records.len(), 998);
    for old in &preexisting {
        assert_eq!(
            &store.enrollments().get(kind, &old.key).await.unwrap(),
            old,
            "create mode leaves existing ids alone"
        );
    }
    assert!(matches!(store.enrollments().get(kind, &key(&id(250))).await, Err(StoreError::NotFound)));
    assert!(matches!(store.enrollments().get(kind, &key(&id(750))).await, Err(StoreError::NotFound)));
    assert_eq!(store.enrollments().get(kind, &key(&id(249))).await.unwrap().id, id(249), "the first occurrence wins");
    let etags: HashMap<String, String> = records.iter().map(|r| (r.id.clone(), r.etag.clone())).collect();
    let events = all_audit(store, &AuditFilter::default()).await.split_off(audit_start);
    assert_eq!(events.len(), 995);
    for event in &events {
        assert_eq!((event.action.as_str(), event.resource_type.as_str()), ("create", "enrollment"));
        assert_eq!(event.actor, actor());
        assert_eq!(event.etag_before, None);
        assert_eq!(event.etag_after.as_ref(), etags.get(&event.resource_id), "{}", event.resource_id);
    }
    assert_eq!(events.iter().map(|e| &e.resource_id).collect::<HashSet<_>>().len(), 995);
    let audit_start = audit_start + events.len();

    // --- updateIfMatchETag: the 998 records, then two missing ids (998, 999); 1, 400 and 997 carry a wrong etag.
    let mut update_items: Vec<BulkItem> = records
        .iter()
        .enumerate()
        .map(|(index, r)| BulkItem {
            index,
            key: r.key.clone(),
            enrollment: Some(enrollment_with(kind, &r.id, json!({"provisioningStatus": "disabled"}))),
            etag: Some(if [1, 400, 997].contains(&index) { "wrong".to_owned() } else { r.etag.clone() }),
        })
        .collect();
    for (index, missing) in [(998, "Missing-1"), (999, "Missing-2")] {
        update_items.push(BulkItem {
            index,
            key: key(missing),
            enrollment: Some(individual(missing)),
            etag: Some("anything".into()),
        });
    }
    assert_eq!(update_items.len(), 1000);
    let failures = bulk(store, kind, BulkMode::UpdateIfMatchETag, update_items).await;
    assert_eq!(failures, [1, 400, 997, 998, 999].map(|i| (i, BulkFailure::PreconditionFailed)));

    let (updated, _) = all_enrollments(store, kind, 1000).await;
    assert_eq!(updated.len(), 998, "missing ids are not created by updateIfMatchETag");
    for (index, (before, after)) in records.iter().zip(&updated).enumerate() {
        assert_eq!(before.key, after.key);
        if [1, 400, 997].contains(&index) {
            assert_eq!(before, after, "a refused item is left alone");
        } else {
            assert_ne!(before.etag, after.etag);
            assert_eq!(after.provisioning_status, "disabled");
            assert_eq!(after.created_at, before.created_at);
            assert!(after.updated_at >= before.updated_at);
        }
    }
    let events = all_audit(store, &AuditFilter::default()).await.split_off(audit_start);
    assert_eq!(events.len(), 995);
    let before: HashMap<&str, &str> = records.iter().map(|r| (r.id.as_str(), r.etag.as_str())).collect();
    let after: HashMap<&str, &str> = updated.iter().map(|r| (r.id.as_str(), r.etag.as_str())).collect();
    for event in &events {
        assert_eq!(event.action, "update");
        assert_eq!(event.etag_before.as_deref(), before.get(event.resource_id.as_str()).copied());
        assert_eq!(event.etag_after.as_deref(), after.get(event.resource_id.as_str()).copied());
    }
    let audit_start = audit_start + events.len();

    // --- delete: the 998 records with two missing ids at 100 and 900; 400 carries a wrong etag. Items give the
    // right etag or none.
    let mut targets: Vec<(String, Option<String>)> =
        updated.iter().enumerate().map(|(i, r)| (r.key.clone(), (i % 2 == 0).then(|| r.etag.clone()))).collect();
    targets.insert(100, ("missing-1".into(), None));
    targets.insert(900, ("missing-2".into(), Some("x".into())));
    targets[400].1 = Some("wrong".into());
    let survivor = targets[400].0.clone();
    let delete_items: Vec<BulkItem> = targets
        .into_iter()
        .enumerate()
        .map(|(index, (key, etag))| BulkItem { index, key, enrollment: None, etag })
        .collect();
    assert_eq!(delete_items.len(), 1000);
    let failures = bulk(store, kind, BulkMode::Delete, delete_items).await;
    assert_eq!(
        failures,
        [(100, BulkFailure::NotFound), (400, BulkFailure::PreconditionFailed), (900, BulkFailure::NotFound)]
    );
    let (left, _) = all_enrollments(store, kind, 1000).await;
    assert_eq!(left.iter().map(|r| r.key.as_str()).collect::<Vec<_>>(), [survivor.as_str()]);
    let events = all_audit(store, &AuditFilter::default()).await.split_off(audit_start);
    assert_eq!(events.len(), 997);
    for event in &events {
        assert_eq!(event.action, "delete");
        assert_eq!(event.etag_before.as_deref(), after.get(event.resource_id.as_str()).copied());
        assert_eq!(event.etag_after, None);
    }
}
both!(bulk_reports_exactly_the_failures_and_applies_the_rest);

/// Bulk `update` mode creates missing ids and replaces existing ones (keeping created_at), for enrollment groups;
/// an item without a document is NotFound; a call where every item fails changes nothing.
async fn bulk_update_mode_creates_or_replaces(store: &Store) {
    let kind = EnrollmentKind::Group;
    let mut existing = Vec::new();
    for i in 0..5 {
        existing.push(put_new(store, kind, &format!("Group-{i}")).await);
    }
    pause().await;
    let mut items: Vec<BulkItem> = (0..10)
        .map(|index| {
            let id = format!("Group-{index}");
            BulkItem { index, key: key(&id), enrollment: Some(enrollment(kind, &id)), etag: None }
        })
        .collect();
    items.push(BulkItem { index: 10, key: "group-x".into(), enrollment: None, etag: None });
    let failures = bulk(store, kind, BulkMode::Update, items).await;
    assert_eq!(failures, [(10, BulkFailure::NotFound)]);

    let (records, _) = all_enrollments(store, kind, 1000).await;
    assert_eq!(records.len(), 10);
    for (old, new) in existing.iter().zip(&records) {
        assert_eq!(old.key, new.key);
        assert_ne!(old.etag, new.etag);
        assert_eq!(old.created_at, new.created_at);
        assert!(new.updated_at > old.updated_at);
    }
    let mut actions: Vec<(String, String)> = all_audit(store, &AuditFilter::default())
        .await
        .into_iter()
        .filter(|e| e.resource_type == "enrollmentGroup")
        .map(|e| (e.resource_id, e.action))
        .collect();
    actions.sort();
    let mut expected: Vec<(String, String)> = (0..5)
        .flat_map(|i| [(format!("Group-{i}"), "create".to_owned()), (format!("Group-{i}"), "update".to_owned())])
        .chain((5..10).map(|i| (format!("Group-{i}"), "create".to_owned())))
        .collect();
    expected.sort();
    assert_eq!(actions, expected);

    let events = all_audit(store, &AuditFilter::default()).await;
    let items = vec![BulkItem { index: 0, key: "nope".into(), enrollment: None, etag: None }];
    let failures = bulk(store, kind, BulkMode::Delete, items).await;
    assert_eq!(failures, [(0, BulkFailure::NotFound)]);
    assert_eq!(all_audit(store, &AuditFilter::default()).await, events);
    assert_eq!(all_enrollments(store, kind, 1000).await.0, records);
    assert_eq!(enrollment_count(store, EnrollmentKind::Individual).await, 0);
}
both!(bulk_update_mode_creates_or_replaces);

/// A bulk call is one transaction across its parts: parts applied and then dropped without a commit leave no
/// enrollment and no audit event, and an id from a dropped call is free for the next call.
async fn a_bulk_call_not_committed_applies_none_of_its_parts(store: &Store) {
    let kind = EnrollmentKind::Individual;
    let items = |range: std::ops::Range<usize>| -> Vec<BulkItem> {
        range
            .map(|index| {
                let id = format!("Part-{index:04}");
                BulkItem { index, key: key(&id), enrollment: Some(individual(&id)), etag: None }
            })
            .collect()
    };
    let actor = actor();
    let call = store.enrollments().begin_bulk(kind, BulkMode::Create, &actor).await.unwrap();
    let (call, failures) = call.apply(items(0..600)).await.unwrap();
    assert_eq!(failures, []);
    let (call, failures) = call.apply(items(600..1200)).await.unwrap();
    assert_eq!(failures, []);
    drop(call);
    assert_eq!(enrollment_count(store, kind).await, 0);
    assert_eq!(all_audit(store, &AuditFilter::default()).await.len(), 0);

    assert_eq!(bulk(store, kind, BulkMode::Create, items(0..1200)).await, []);
    assert_eq!(enrollment_count(store, kind).await, 1200);
    assert_eq!(all_audit(store, &AuditFilter::default()).await.len(), 1200);
}
both!(a_bulk_call_not_committed_applies_none_of_its_parts);

// ---------------------------------------------------------------------------------------------------------------
// Audit log
// ---------------------------------------------------------------------------------------------------------------

/// Create, update, delete and key reads each write one audit event with the actor, the resource and the etags
/// before and after, in order.
async fn every_change_is_audited(store: &Store) {
    let kind = EnrollmentKind::Individual;
    let bob = Actor { subject: "bob".into(), role: "operator".into() };
    let (created, _) = store.enrollments().put(kind, individual("Dev-1"), &Precondition::None, &actor()).await.unwrap();
    let (updated, _) =
        store.enrollments().put(kind, individual("Dev-1"), &if_match(&created.etag), &bob).await.unwrap();
    store.enrollments().audit_key_read(kind, &updated, &bob).await.unwrap();
    store.enrollments().delete(kind, "dev-1", &if_match(&updated.etag), &actor()).await.unwrap();
    let (group, _) = store
        .enrollments()
        .put(EnrollmentKind::Group, enrollment(EnrollmentKind::Group, "G-1"), &Precondition::None, &bob)
        .await
        .unwrap();

    let events = all_audit(store, &AuditFilter::default()).await;
    let summary: Vec<_> = events
        .iter()
        .map(|e| {
            (
                e.action.as_str(),
                e.resource_type.as_str(),
                e.resource_id.as_str(),
                e.etag_before.as_deref(),
                e.etag_after.as_deref(),
                e.actor.subject.as_str(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            ("create", "enrollment", "Dev-1", None, Some(created.etag.as_str()), "alice"),
            ("update", "enrollment", "Dev-1", Some(created.etag.as_str()), Some(updated.etag.as_str()), "bob"),
            (
                "readAttestationMechanism",
                "enrollment",
                "Dev-1",
                Some(updated.etag.as_str()),
                Some(updated.etag.as_str()),
                "bob"
            ),
            ("delete", "enrollment", "Dev-1", Some(updated.etag.as_str()), None, "alice"),
            ("create", "enrollmentGroup", "G-1", None, Some(group.etag.as_str()), "bob"),
        ]
    );
    assert_eq!(events[1].actor.role, "operator");
    assert_eq!(events[0].actor.role, "admin");
    assert!(events.windows(2).all(|w| w[0].id < w[1].id && w[0].at <= w[1].at), "ids and times increase");
    assert!(events[0].at >= created.created_at, "an event is stamped when its change is made");
}
both!(every_change_is_audited);

/// The audit log pages by continuation token (each event once, in order, `next` None at the end) and filters by
/// time: `from` is inclusive, `to` exclusive; a malformed token is refused.
async fn audit_log_pages_and_filters_by_time(store: &Store) {
    let kind = EnrollmentKind::Individual;
    let write_batch = |prefix: &'static str| async move {
        for i in 0..5 {
            put_new(store, kind, &format!("{prefix}-{i}")).await;
        }
    };
    write_batch("Early").await;
    pause().await;
    let t1: DateTime<Utc> = Utc::now();
    pause().await;
    write_batch("Middle").await;
    pause().await;
    let t2: DateTime<Utc> = Utc::now();
    pause().await;
    write_batch("Late").await;

    // Paging: 15 events, 4 at a time.
    let mut pages = Vec::new();
    let mut after = None;
    loop {
        let page = store.audit().list(&AuditFilter::default(), after.as_deref(), 4).await.unwrap();
        pages.push(page.items.len());
        after = page.next.clone();
        if let Some(next) = &page.next {
            assert_eq!(next, &page.items.last().unwrap().id.to_string());
        }
        if after.is_none() {
            break;
        }
    }
    assert_eq!(pages, [4, 4, 4, 3]);
    let all = all_audit(store, &AuditFilter::default()).await;
    assert_eq!(all.len(), 15);
    assert!(all.windows(2).all(|w| w[0].id < w[1].id));
    let exactly = store.audit().list(&AuditFilter::default(), None, 15).await.unwrap();
    assert_eq!((exactly.items.len(), exactly.next), (15, None));
    let tail = store.audit().list(&AuditFilter::default(), Some(&all[12].id.to_string()), 10).await.unwrap();
    assert_eq!(tail.items, all[13..]);

    let ids = |events: &[AuditRecord]| events.iter().map(|e| e.resource_id.clone()).collect::<Vec<_>>();
    let names = |prefix: &str| (0..5).map(|i| format!("{prefix}-{i}")).collect::<Vec<_>>();
    let between = all_audit(store, &AuditFilter { from: Some(t1), to: Some(t2) }).await;
    assert_eq!(ids(&between), names("Middle"));
    assert!(between.iter().all(|e| e.at >= t1 && e.at < t2));
    let since = all_audit(store, &AuditFilter { from: Some(t1), to: None }).await;
    assert_eq!(ids(&since), [names("Middle"), names("Late")].concat());
    let until = all_audit(store, &AuditFilter { from: None, to: Some(t1) }).await;
    assert_eq!(ids(&until), names("Early"));
    let none = all_audit(store, &AuditFilter { from: Some(t2), to: Some(t1) }).await;
    assert!(none.is_empty());

    // Bounds hit exactly: `from` an event's time includes it, `to` its time excludes it.
    let pivot = &all[7];
    let from_pivot = all_audit(store, &AuditFilter { from: Some(pivot.at), to: None }).await;
    assert!(from_pivot.iter().any(|e| e.id == pivot.id));
    let to_pivot = all_audit(store, &AuditFilter { from: None, to: Some(pivot.at) }).await;
    assert!(to_pivot.iter().all(|e| e.at < pivot.at));
    assert!(!to_pivot.iter().any(|e| e.id == pivot.id));

    // Paging and a filter together.
    let first = store.audit().list(&AuditFilter { from: Some(t1), to: None }, None, 6).await.unwrap();
    assert_eq!(first.items.len(), 6);
    let second = store.audit().list(&AuditFilter { from: Some(t1), to: None }, first.next.as_deref(), 6).await.unwrap();
    assert_eq!((second.items.len(), second.next), (4, None));

    let err = store.audit().list(&AuditFilter::default(), Some("not-a-number"), 10).await.unwrap_err();
    assert!(matches!(err, StoreError::Corrupt(_)), "{err:?}");
}
both!(audit_log_pages_and_filters_by_time);

// ---------------------------------------------------------------------------------------------------------------
// Hubs
// ---------------------------------------------------------------------------------------------------------------

/// Hubs are created, read, listed by host name, replaced and deleted under If-Match preconditions, with audit.
async fn hubs_crud_with_preconditions(store: &Store) {
    assert!(store.hubs().list().await.unwrap().is_empty());
    assert!(matches!(store.hubs().get("hub-a.example.com").await, Err(StoreError::NotFound)));
    let err = store
        .hubs()
        .put(hub_input("hub-a.example.com", 1), &Precondition::IfMatch(vec!["*".into()]), &actor())
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::PreconditionFailed), "{err:?}");

    let (b, created) =
        store.hubs().put(hub_input("hub-b.example.com", 10), &Precondition::None, &actor()).await.unwrap();
    assert!(created);
    let (a, created) =
        store.hubs().put(hub_input("hub-a.example.com", 1000), &Precondition::None, &actor()).await.unwrap();
    assert!(created);
    assert_eq!(a.created_at, a.updated_at);
    assert_eq!(store.hubs().get("hub-a.example.com").await.unwrap(), a);
    assert_eq!(store.hubs().get("hub-b.example.com").await.unwrap(), b);
    let listed: Vec<String> = store.hubs().list().await.unwrap().into_iter().map(|h| h.hub.host_name).collect();
    assert_eq!(listed, ["hub-a.example.com", "hub-b.example.com"]);

    // Replace under the right etag; a wrong one is refused and changes nothing.
    pause().await;
    let mut changed = hub_input("hub-a.example.com", 7);
    changed.apply_allocation_policy = false;
    changed.settings = json!({"connectionString": "rotated"});
    let err = store.hubs().put(changed.clone(), &if_match("stale"), &actor()).await.unwrap_err();
    assert!(matches!(err, StoreError::PreconditionFailed), "{err:?}");
    assert_eq!(store.hubs().get("hub-a.example.com").await.unwrap(), a);
    let (a2, created) = store.hubs().put(changed.clone(), &if_match(&a.etag), &actor()).await.unwrap();
    assert!(!created);
    assert_ne!(a2.etag, a.etag);
    assert_eq!(a2.created_at, a.created_at);
    assert!(a2.updated_at > a.updated_at);
    assert_eq!(a2.hub, changed);
    assert_eq!(store.hubs().get("hub-a.example.com").await.unwrap(), a2);

    // Delete: wrong etag refused, right etag works, then NotFound.
    let err = store.hubs().delete("hub-a.example.com", &if_match(&a.etag), &actor()).await.unwrap_err();
    assert!(matches!(err, StoreError::PreconditionFailed), "{err:?}");
    store.hubs().delete("hub-a.example.com", &if_match(&a2.etag), &actor()).await.unwrap();
    assert!(matches!(store.hubs().get("hub-a.example.com").await, Err(StoreError::NotFound)));
    let err = store.hubs().delete("hub-a.example.com", &Precondition::None, &actor()).await.unwrap_err();
    assert!(matches!(err, StoreError::NotFound), "{err:?}");
    store.hubs().delete("hub-b.example.com", &Precondition::IfMatch(vec!["*".into()]), &actor()).await.unwrap();
    assert!(store.hubs().list().await.unwrap().is_empty());

    let events = audit_of(store, "hub", "hub-a.example.com").await;
    let summary: Vec<(&str, Option<&str>, Option<&str>)> =
        events.iter().map(|e| (e.action.as_str(), e.etag_before.as_deref(), e.etag_after.as_deref())).collect();
    assert_eq!(
        summary,
        [
            ("create", None, Some(a.etag.as_str())),
            ("update", Some(a.etag.as_str()), Some(a2.etag.as_str())),
            ("delete", Some(a2.etag.as_str()), None),
        ]
    );
    assert_eq!(audit_of(store, "hub", "hub-b.example.com").await.len(), 2);
}
both!(hubs_crud_with_preconditions);

/// unknown_hubs names exactly the host names that are not linked, in the order asked.
async fn unknown_hubs_lists_the_unlinked(store: &Store) {
    assert_eq!(store.hubs().unknown(&[]).await.unwrap(), Vec::<String>::new());
    let asked: Vec<String> =
        ["nope-1.example.com", "hub-a.example.com", "nope-2.example.com", "hub-b.example.com"].map(String::from).into();
    assert_eq!(store.hubs().unknown(&asked).await.unwrap(), asked);

    for host in ["hub-a.example.com", "hub-b.example.com", "hub-c.example.com"] {
        store.hubs().put(hub_input(host, 1), &Precondition::None, &actor()).await.unwrap();
    }
    assert_eq!(store.hubs().unknown(&asked).await.unwrap(), ["nope-1.example.com", "nope-2.example.com"]);
    assert!(store.hubs().unknown(&asked[1..2]).await.unwrap().is_empty());
    store.hubs().delete("hub-b.example.com", &Precondition::None, &actor()).await.unwrap();
    assert_eq!(
        store.hubs().unknown(&asked).await.unwrap(),
        ["nope-1.example.com", "nope-2.example.com", "hub-b.example.com"]
    );
}
both!(unknown_hubs_lists_the_unlinked);

// ---------------------------------------------------------------------------------------------------------------
// Registrations
// ---------------------------------------------------------------------------------------------------------------

/// A registration state is inserted, then replaced with a fresh etag while its created_at is kept, and reads back
/// exactly as save_registration returned it.
async fn registrations_save_and_get(store: &Store) {
    assert!(matches!(store.registrations().get("dev-1").await, Err(StoreError::NotFound)));
    let saved = store.registrations().save(registration("Dev-1", Some("Group-1"))).await.unwrap();
    assert!(!saved.etag.is_empty());
    assert_eq!(saved.key, "dev-1");
    assert_eq!(store.registrations().get("dev-1").await.unwrap(), saved, "what save returns is what is stored");

    pause().await;
    let mut failed = registration("Dev-1", Some("Group-1"));
    failed.status = "failed".into();
    failed.substatus = None;
    failed.assigned_hub = None;
    failed.device_id = None;
    failed.error_code = Some(400_209);
    failed.error_message = Some("the webhook refused the device".into());
    failed.payload = None;
    let resaved = store.registrations().save(failed).await.unwrap();
    assert_ne!(resaved.etag, saved.etag);
    assert_eq!(resaved.created_at, saved.created_at, "created_at is kept on replace");
    assert!(resaved.updated_at > saved.updated_at);
    assert_eq!(store.registrations().get("dev-1").await.unwrap(), resaved);
    assert_eq!(resaved.status, "failed");
    assert_eq!(resaved.error_code, Some(400_209));
    assert_eq!((resaved.assigned_hub, resaved.payload), (None, None));
}
both!(registrations_save_and_get);

/// The states of a page of individual enrollments come in one call, by key: a registration made through a group
/// under an enrolled id is not the individual enrollment's, and ids without a registration are absent.
async fn registrations_of_individual_enrollments(store: &Store) {
    for id in ["Solo-1", "Solo-2"] {
        store.registrations().save(registration(id, None)).await.unwrap();
    }
    store.registrations().save(registration("Grouped-1", Some("Group-9"))).await.unwrap();
    let found =
        store.registrations().of_individual_enrollments(&["solo-1", "solo-2", "grouped-1", "never-1"]).await.unwrap();
    let mut keys: Vec<&str> = found.keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(keys, ["solo-1", "solo-2"]);
    assert_eq!(found["solo-2"].registration_id, "Solo-2");
    assert!(store.registrations().of_individual_enrollments(&[]).await.unwrap().is_empty());
}
both!(registrations_of_individual_enrollments);

/// The registrations of a group are listed in key order with paging, and only those of that group.
async fn registrations_list_by_group_with_paging(store: &Store) {
    for i in (0..7).rev() {
        store.registrations().save(registration(&format!("Member-{i}"), Some("Group-2"))).await.unwrap();
    }
    store.registrations().save(registration("Loner", None)).await.unwrap();
    store.registrations().save(registration("Other-1", Some("Group-3"))).await.unwrap();

    let mut keys = Vec::new();
    let mut sizes = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let page = store.registrations().list_of_group("group-2", after.as_deref(), 3).await.unwrap();
        sizes.push(page.items.len());
        assert!(page.items.iter().all(|r| r.enrollment_group_key.as_deref() == Some("group-2")));
        keys.extend(page.items.iter().map(|r| r.key.clone()));
        after = page.next;
        if after.is_none() {
            break;
        }
    }
    assert_eq!(sizes, [3, 3, 1]);
    assert_eq!(keys, (0..7).map(|i| format!("member-{i}")).collect::<Vec<_>>());

    let other = store.registrations().list_of_group("group-3", None, 1000).await.unwrap();
    assert_eq!(other.items.iter().map(|r| r.key.as_str()).collect::<Vec<_>>(), ["other-1"]);
    assert_eq!(other.next, None);
    let none = store.registrations().list_of_group("nobody", None, 1000).await.unwrap();
    assert_eq!((none.items.len(), none.next), (0, None));
}
both!(registrations_list_by_group_with_paging);

/// The index that finds a group's registrations holds only registrations made through a group: a device of an
/// individual enrollment writes no entry there (migration `m20261209_000001_index_only_group_registrations`).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_group_index_leaves_individual_registrations_out() {
    use sea_orm::{ConnectionTrait, Database};
    use zerotouch_store::Backend;
    for (backend, definition) in [
        (Backend::Sqlite, "SELECT sql AS definition FROM sqlite_master WHERE name = 'registrations_by_group'"),
        (Backend::Postgres, "SELECT indexdef AS definition FROM pg_indexes WHERE indexname = 'registrations_by_group'"),
    ] {
        let (db, _store) = TestDatabase::store(backend).await.unwrap();
        let raw = Database::connect(db.url.as_str()).await.unwrap();
        let rows =
            raw.query_all_raw(sea_orm::Statement::from_string(raw.get_database_backend(), definition)).await.unwrap();
        let definitions: Vec<String> = rows.iter().map(|r| r.try_get("", "definition").unwrap()).collect();
        assert_eq!(definitions.len(), 1, "{backend:?}: {definitions:?}");
        let partial = definitions[0].replace(['(', ')'], "");
        assert!(partial.ends_with("WHERE enrollment_group_key IS NOT NULL"), "{backend:?}: {}", definitions[0]);
        raw.close().await.unwrap();
    }
}

/// Deleting a registration honours If-Match (wrong etag refused, right etag works, missing is NotFound) and is
/// audited.
async fn registrations_delete_with_preconditions(store: &Store) {
    let saved = store.registrations().save(registration("Dev-1", Some("Group-1"))).await.unwrap();
    let err = store.registrations().delete("dev-1", &if_match("wrong"), &actor()).await.unwrap_err();
    assert!(matches!(err, StoreError::PreconditionFailed), "{err:?}");
    assert_eq!(store.registrations().get("dev-1").await.unwrap(), saved);

    store.registrations().delete("dev-1", &if_match(&saved.etag), &actor()).await.unwrap();
    assert!(matches!(store.registrations().get("dev-1").await, Err(StoreError::NotFound)));
    let err = store.registrations().delete("dev-1", &Precondition::None, &actor()).await.unwrap_err();
    assert!(matches!(err, StoreError::NotFound), "{err:?}");
    assert!(store.registrations().list_of_group("group-1", None, 10).await.unwrap().items.is_empty());

    let deletes: Vec<AuditRecord> =
        audit_of(store, "registration", "Dev-1").await.into_iter().filter(|e| e.action == "delete").collect();
    assert_eq!(deletes.len(), 1);
    assert_eq!(deletes[0].resource_id, "Dev-1");
    assert_eq!(deletes[0].etag_before.as_deref(), Some(saved.etag.as_str()));
    assert_eq!(deletes[0].etag_after, None);

    let other = store.registrations().save(registration("Dev-2", None)).await.unwrap();
    store.registrations().delete("dev-2", &Precondition::None, &actor()).await.unwrap();
    assert!(matches!(store.registrations().get(&other.key).await, Err(StoreError::NotFound)));
}
both!(registrations_delete_with_preconditions);

// ---------------------------------------------------------------------------------------------------------------
// Concurrency
// ---------------------------------------------------------------------------------------------------------------

const WRITERS: usize = 8;

fn writer(n: usize) -> Actor {
    Actor { subject: format!("writer-{n}"), role: "admin".into() }
}

/// Several tasks putting the same new id at once: exactly one creates, the others update or get Conflict, and the
/// audit log holds exactly one event per successful write, chained etag to etag and ending at the stored state.
async fn concurrent_puts_of_a_new_id_stay_consistent(store: &Store) {
    let kind = EnrollmentKind::Individual;
    for round in 0..5 {
        let id = format!("Race-{round}");
        let barrier = Arc::new(tokio::sync::Barrier::new(WRITERS));
        let tasks: Vec<_> = (0..WRITERS)
            .map(|n| {
                let (store, barrier, id) = (store.clone(), barrier.clone(), id.clone());
                tokio::spawn(async move {
                    let doc = enrollment_with(kind, &id, json!({"optionalDeviceInformation": {"writer": n}}));
                    barrier.wait().await;
                    store.enrollments().put(kind, doc, &Precondition::None, &writer(n)).await
                })
            })
            .collect();
        let mut succeeded = Vec::new();
        let mut creates = 0;
        for task in tasks {
            match task.await.unwrap() {
                Ok((record, created)) => {
                    creates += usize::from(created);
                    succeeded.push(record);
                }
                Err(err) => assert!(matches!(err, StoreError::Conflict(_)), "{err:?}"),
            }
        }
        assert_eq!(creates, 1, "exactly one writer creates {id}");

        let stored = store.enrollments().get(kind, &key(&id)).await.unwrap();
        let events = audit_of(store, "enrollment", &id).await;
        assert_eq!(events.len(), succeeded.len(), "one audit event per successful write");
        assert_eq!(events[0].action, "create");
        assert_eq!(events[0].etag_before, None);
        assert!(events[1..].iter().all(|e| e.action == "update"));
        for pair in events.windows(2) {
            assert_eq!(pair[1].etag_before, pair[0].etag_after, "no write was lost between two audited ones");
        }
        let last = events.last().unwrap();
        assert_eq!(last.etag_after.as_deref(), Some(stored.etag.as_str()));
        assert_eq!(format!("writer-{}", stored.document["optionalDeviceInformation"]["writer"]), last.actor.subject);
        let audited: HashSet<&str> = events.iter().filter_map(|e| e.etag_after.as_deref()).collect();
        let returned: HashSet<&str> = succeeded.iter().map(|r| r.etag.as_str()).collect();
        assert_eq!(audited, returned);
    }
    assert_eq!(enrollment_count(store, kind).await, 5);
}
both!(concurrent_puts_of_a_new_id_stay_consistent);

/// Several tasks updating one record with the same If-Match etag at once: exactly one wins, the others get
/// PreconditionFailed or Conflict, and only the winner's write is stored and audited.
async fn concurrent_if_match_updates_have_one_winner(store: &Store) {
    let kind = EnrollmentKind::Individual;
    let original = put_new(store, kind, "Contended").await;
    let barrier = Arc::new(tokio::sync::Barrier::new(WRITERS));
    let tasks: Vec<_> = (0..WRITERS)
        .map(|n| {
            let (store, barrier, etag) = (store.clone(), barrier.clone(), original.etag.clone());
            tokio::spawn(async move {
                let doc = enrollment_with(kind, "Contended", json!({"optionalDeviceInformation": {"writer": n}}));
                barrier.wait().await;
                store.enrollments().put(kind, doc, &if_match(&etag), &writer(n)).await
            })
        })
        .collect();
    let mut winners = Vec::new();
    for task in tasks {
        match task.await.unwrap() {
            Ok((record, created)) => {
                assert!(!created);
                winners.push(record);
            }
            Err(err) => assert!(matches!(err, StoreError::PreconditionFailed | StoreError::Conflict(_)), "{err:?}"),
        }
    }
    assert_eq!(winners.len(), 1, "exactly one If-Match update wins");
    let stored = store.enrollments().get(kind, "contended").await.unwrap();
    assert_eq!(stored, winners[0]);
    let events = audit_of(store, "enrollment", "Contended").await;
    assert_eq!(events.len(), 2);
    assert_eq!(events[1].etag_before.as_deref(), Some(original.etag.as_str()));
    assert_eq!(events[1].etag_after.as_deref(), Some(stored.etag.as_str()));
}
both!(concurrent_if_match_updates_have_one_winner);

// ---------------------------------------------------------------------------------------------------------------
// Registration attempts (written in batches)
// ---------------------------------------------------------------------------------------------------------------

fn attempt(id: &str, expected_etag: Option<&str>, operation_id: &str) -> zerotouch_store::RegistrationOutcome {
    let record = registration(id, None);
    zerotouch_store::RegistrationOutcome {
        operation: zerotouch_store::OperationRecord {
            id: operation_id.to_owned(),
            registration_key: record.key.clone(),
            status: "assigned".into(),
            error_code: None,
            error_message: None,
            result: None,
            created_at: Utc::now(),
            updated_at: Utc::now(),
        },
        record,
        expected_etag: expected_etag.map(str::to_owned),
        detail: format!("assigned {id}"),
        certificate: None,
        hub_job: None,
        renewing: None,
    }
}

fn snapshot() -> zerotouch_store::Snapshot {
    Box::new(|r: &RegistrationRecord| {
        serde_json::from_value(json!({"registrationId": r.registration_id, "status": r.status, "etag": r.etag}))
            .unwrap()
    })
}

/// Many devices registering at once, some of them racing themselves: every device ends with one state; exactly one
/// of the racing first registrations and one of the racing re-registrations (same expected etag) wins; winners have
/// their operation (with the snapshot of the state as written) and one audit event, losers neither.
async fn concurrent_registration_attempts_have_one_winner_each(store: &Store) {
    const DEVICES: usize = 120;
    const RACERS: usize = 8;
    let barrier = Arc::new(tokio::sync::Barrier::new(DEVICES + 2 * RACERS));
    let mut tasks = Vec::new();
    let spawn = |outcome: zerotouch_store::RegistrationOutcome, barrier: Arc<tokio::sync::Barrier>| {
        let store = store.clone();
        tokio::spawn(async move {
            barrier.wait().await;
            test_support::commit_enrolled(&store, outcome, snapshot()).await
        })
    };
    let existing = store.registrations().save(registration("Known", None)).await.unwrap();
    for i in 0..DEVICES {
        tasks.push(("single", spawn(attempt(&format!("Dev-{i}"), None, &format!("op-dev-{i}")), barrier.clone())));
    }
    for n in 0..RACERS {
        tasks.push(("new", spawn(attempt("Racer", None, &format!("op-racer-{n}")), barrier.clone())));
        let mut again = attempt("Known", Some(&existing.etag), &format!("op-known-{n}"));
        again.record.created_at = existing.created_at;
        tasks.push(("known", spawn(again, barrier.clone())));
    }
    let mut won: HashMap<&str, Vec<(RegistrationRecord, zerotouch_store::OperationRecord)>> = HashMap::new();
    for (group, task) in tasks {
        match task.await.unwrap() {
            Ok((record, operation, _)) => won.entry(group).or_default().push((record, operation)),
            Err(err) => {
                assert!(group != "single", "a device without a rival cannot lose: {err:?}");
                assert!(matches!(err, StoreError::Conflict(_)), "{err:?}");
            }
        }
    }
    assert_eq!(won["single"].len(), DEVICES);
    assert_eq!(won["new"].len(), 1, "one first registration of Racer wins");
    assert_eq!(won["known"].len(), 1, "one re-registration of Known wins");
    for (record, operation) in won.values().flatten() {
        assert_eq!(
            &store.registrations().get(&record.key).await.unwrap(),
            record,
            "what was returned is what is stored"
        );
        let stored = store.registrations().operation(&record.key, &operation.id).await.unwrap();
        assert_eq!(
            stored.result.map(|r| serde_json::to_value(r).unwrap()),
            Some(json!({"registrationId": record.registration_id, "status": record.status, "etag": record.etag}))
        );
        let registers: Vec<AuditRecord> = audit_of(store, "registration", &record.registration_id)
            .await
            .into_iter()
            .filter(|e| e.action == "register")
            .collect();
        assert_eq!(registers.len(), 1, "one audit event for {}", record.registration_id);
        assert_eq!(registers[0].etag_after.as_deref(), Some(record.etag.as_str()));
        assert_eq!(registers[0].actor.subject, format!("device:{}", record.registration_id));
        assert_eq!(registers[0].detail.as_deref(), Some(format!("assigned {}", record.registration_id).as_str()));
    }
    let known = &won["known"][0].0;
    assert_eq!(known.created_at, existing.created_at, "a re-registration keeps created_at");
    for n in 0..RACERS {
        for (key, id) in [("racer", format!("op-racer-{n}")), ("known", format!("op-known-{n}"))] {
            let found = store.registrations().operation(key, &id).await.is_ok();
            let winner = won.values().flatten().any(|(_, op)| op.id == id);
            assert_eq!(found, winner, "operation {id} exists exactly when its attempt won");
        }
    }
}
both!(concurrent_registration_attempts_have_one_winner_each);

/// An attempt that cannot be written (its operation id is taken) fails alone: the attempts written beside it are
/// stored, and nothing of it is (no state, no audit event).
async fn a_failing_attempt_fails_alone(store: &Store) {
    let barrier = Arc::new(tokio::sync::Barrier::new(3));
    let tasks: Vec<_> = [("First", "op-taken"), ("Second", "op-taken"), ("Third", "op-free")]
        .into_iter()
        .map(|(id, op)| {
            let (store, barrier) = (store.clone(), barrier.clone());
            tokio::spawn(async move {
                barrier.wait().await;
                (id, test_support::commit_enrolled(&store, attempt(id, None, op), snapshot()).await)
            })
        })
        .collect();
    let mut outcomes = HashMap::new();
    for task in tasks {
        let (id, result) = task.await.unwrap();
        outcomes.insert(id, result);
    }
    assert!(outcomes["Third"].is_ok(), "{:?}", outcomes["Third"]);
    let taken: Vec<&str> = ["First", "Second"].into_iter().filter(|id| outcomes[id].is_ok()).collect();
    assert_eq!(taken.len(), 1, "one of the two attempts sharing an operation id is written");
    let loser = if taken[0] == "First" { "Second" } else { "First" };
    assert!(matches!(outcomes[loser], Err(StoreError::Database(_))), "{:?}", outcomes[loser]);
    assert!(matches!(store.registrations().get(&key(loser)).await, Err(StoreError::NotFound)), "no half-written state");
    assert!(audit_of(store, "registration", loser).await.is_empty(), "no audit event for what was not written");
    assert!(store.registrations().get("third").await.is_ok());
}
both!(a_failing_attempt_fails_alone);

/// Secrets at rest (issue #17): enrollment keys are stored as envelopes, a key moved to another enrollment's row
/// does not open there (the read fails as corrupt instead of authenticating with the wrong key), and a store whose
/// data key is not loaded neither reads nor writes keys. Rows are read and swapped with a connection of the test's
/// own, as someone with access to the database would.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn enrollment_keys_are_sealed_in_their_rows() {
    use sea_orm::{ConnectionTrait, Database};
    use zerotouch_store::Backend;
    for backend in [Backend::Sqlite, Backend::Postgres] {
        let (db, store) = TestDatabase::store(backend).await.unwrap();
        let a = put_new(&store, EnrollmentKind::Individual, "sealed-a").await;
        put_new(&store, EnrollmentKind::Individual, "sealed-b").await;
        let raw = Database::connect(db.url.as_str()).await.unwrap();
        let rows = raw
            .query_all_raw(sea_orm::Statement::from_string(
                raw.get_database_backend(),
                "SELECT key, primary_symmetric_key FROM individual_enrollments ORDER BY key",
            ))
            .await
            .unwrap();
        let stored: Vec<String> = rows.iter().map(|r| r.try_get("", "primary_symmetric_key").unwrap()).collect();
        assert!(stored.iter().all(|v| v.starts_with("zt-sealed:")), "{stored:?}");
        let clear = a.primary_key.as_ref().unwrap().to_base64();
        assert!(!stored.iter().any(|v| v.contains(clear.as_str())));

        // Move a's sealed key into b's row: b no longer reads (nor does its key become a's).
        let swap =
            format!("UPDATE individual_enrollments SET primary_symmetric_key = '{}' WHERE key = 'sealed-b'", stored[0]);
        raw.execute_unprepared(&swap).await.unwrap();
        let err = store.enrollments().get(EnrollmentKind::Individual, "sealed-b").await.unwrap_err();
        assert!(matches!(&err, StoreError::Corrupt(why) if why.contains("sealed-b")), "{err:?}");
        assert_eq!(
            store.enrollments().get(EnrollmentKind::Individual, "sealed-a").await.unwrap().primary_key,
            a.primary_key
        );

        // A second store on the database, its data key not loaded: no key read, no key written.
        let locked = Store::connect(&db.url).await.unwrap();
        assert!(!locked.is_unlocked());
        let err = locked.enrollments().get(EnrollmentKind::Individual, "sealed-a").await.unwrap_err();
        assert!(matches!(err, StoreError::Unavailable(_)), "{err:?}");
        let who = actor();
        let put =
            locked.enrollments().put(EnrollmentKind::Individual, individual("sealed-c"), &Precondition::None, &who);
        assert!(matches!(put.await, Err(StoreError::Unavailable(_))));
        test_support::unlock(&locked).await.unwrap();
        assert_eq!(
            locked.enrollments().get(EnrollmentKind::Individual, "sealed-a").await.unwrap().primary_key,
            a.primary_key
        );
        // Another master key is refused and changes nothing.
        let other = zerotouch_envelope::MasterKey::generate().unwrap().0;
        let third = Store::connect(&db.url).await.unwrap();
        assert!(matches!(third.unlock(&other).await, Err(zerotouch_store::UnlockError::WrongMasterKey { .. })));
        assert!(!third.is_unlocked());
        raw.close().await.unwrap();
    }
}
