//! The TPM challenge and binding repositories against real databases (SQLite and PostgreSQL).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use chrono::{Duration, Utc};
use zerotouch_store::test_support::TestDatabase;
use zerotouch_store::{Backend, Store, StoreError, TpmChallengeRecord};
use zerotouch_wire::SymmetricKey;
use zerotouch_wire::enrollment::EnrollmentKind;

fn challenge(id: &str, expires_in: Duration) -> TpmChallengeRecord {
    TpmChallengeRecord {
        registration_key: "dev-1".into(),
        id: id.into(),
        enrollment_kind: EnrollmentKind::Group,
        enrollment_key: "factory".into(),
        hmac_key: SymmetricKey::generate_len(32),
        endorsement_key: "EK".into(),
        storage_root_key: "SRK".into(),
        expires_at: Utc::now() + expires_in,
        used_at: None,
        created_at: Utc::now(),
        blob: Some("BLOB".into()),
    }
}

/// A challenge round-trips; a new one replaces it (the old id can no longer be used); of many concurrent registers
/// exactly one uses it; an expired one cannot be used and is removed by the next put; a binding keeps its first EK.
async fn challenges_and_bindings(store: Arc<Store>) {
    assert!(matches!(store.tpm().challenge("dev-1").await, Err(StoreError::NotFound)));
    let first = challenge("first", Duration::minutes(10));
    store.tpm().put_challenge(&first).await.unwrap();
    let read = store.tpm().challenge("dev-1").await.unwrap();
    assert_eq!(
        (read.id.as_str(), read.enrollment_kind, read.hmac_key.clone()),
        ("first", EnrollmentKind::Group, first.hmac_key.clone())
    );

    store.tpm().put_challenge(&challenge("second", Duration::minutes(10))).await.unwrap();
    assert!(!store.tpm().use_challenge("dev-1", "first").await.unwrap(), "a replaced challenge");
    let tries: Vec<_> = (0..8)
        .map(|_| {
            let store = Arc::clone(&store);
            tokio::spawn(async move { store.tpm().use_challenge("dev-1", "second").await.unwrap() })
        })
        .collect();
    let mut used = 0;
    for task in tries {
        used += usize::from(task.await.unwrap());
    }
    assert_eq!(used, 1, "exactly one register uses a challenge");
    assert!(store.tpm().challenge("dev-1").await.unwrap().used_at.is_some());

    store.tpm().put_challenge(&challenge("late", -Duration::seconds(1))).await.unwrap();
    assert!(!store.tpm().use_challenge("dev-1", "late").await.unwrap(), "an expired challenge");
    let mut other = challenge("other", Duration::minutes(10));
    other.registration_key = "dev-2".into();
    store.tpm().put_challenge(&other).await.unwrap();
    assert!(matches!(store.tpm().challenge("dev-1").await, Err(StoreError::NotFound)), "expired ones are removed");

    assert_eq!(store.tpm().binding("dev-1").await.unwrap(), None);
    assert_eq!(store.tpm().bind("dev-1", "EK-A").await.unwrap(), "EK-A");
    assert_eq!(store.tpm().bind("dev-1", "EK-B").await.unwrap(), "EK-A", "the first TPM keeps the id");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn challenges_and_bindings_sqlite() {
    let (_db, store) = TestDatabase::store(Backend::Sqlite).await.unwrap();
    challenges_and_bindings(Arc::new(store)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn challenges_and_bindings_postgres() {
    let (_db, store) = TestDatabase::store(Backend::Postgres).await.unwrap();
    challenges_and_bindings(Arc::new(store)).await;
}
