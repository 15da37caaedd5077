//! Integration tests of the managed-CA repositories (issue #4) against real databases: issuing CAs, customer CAs,
//! issued certificates, issuance inside registration attempts, and the changes that revoke.
//!
//! Every scenario is written once, as `async fn name(store: &Store)`, and `both!(name)` runs it on a fresh SQLite
//! file and on a fresh PostgreSQL database (`name::sqlite`, `name::postgres`).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use chrono::{DateTime, Duration, DurationRound, Utc};
use serde_json::json;
use zerotouch_store::test_support::{self, TestDatabase};
use zerotouch_store::{
    Actor, AuditFilter, AuditRecord, Backend, BulkItem, CaPrivateKey, CertificateAuthorityInput, CertificateFilter,
    CertificateGuard, CertificateRecord, CertificateStatus, IssuingCaStatus, NewIssuingCa, OperationRecord,
    Precondition, RegistrationOutcome, RegistrationRecord, Snapshot, Store, StoreError,
};
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

const KEY_PEM: &str = "-----BEGIN ENCRYPTED PRIVATE KEY-----\nTEST-KEY-MATERIAL\n-----END ENCRYPTED PRIVATE KEY-----\n";

fn actor() -> Actor {
    Actor { subject: "alice".into(), role: "owner".into() }
}

fn if_match(etag: &str) -> Precondition {
    Precondition::IfMatch(vec![etag.to_owned()])
}

/// Every audit event, in order.
async fn all_audit(store: &Store) -> Vec<AuditRecord> {
    let mut out = Vec::new();
    let mut after = None;
    loop {
        let page = store.audit().list(&AuditFilter::default(), after.as_deref(), 1000).await.unwrap();
        out.extend(page.items);
        match page.next {
            Some(next) => after = Some(next),
            None => return out,
        }
    }
}

async fn audit_of(store: &Store, resource_type: &str) -> Vec<AuditRecord> {
    all_audit(store).await.into_iter().filter(|e| e.resource_type == resource_type).collect()
}

fn new_ca(name: &str) -> NewIssuingCa {
    NewIssuingCa {
        name: name.to_owned(),
        key_algorithm: "P-256".to_owned(),
        private_key: CaPrivateKey::new(KEY_PEM.replace("TEST", name).into_bytes().into()),
        csr_pem: format!("-----BEGIN CERTIFICATE REQUEST-----\n{name}\n-----END CERTIFICATE REQUEST-----\n"),
    }
}

/// An issuing CA with its chain uploaded (`ready`).
async fn ready_ca(store: &Store, name: &str) {
    store.issuing_cas().create(new_ca(name), &actor()).await.unwrap();
    let chain = format!("-----BEGIN CERTIFICATE-----\n{name}\n-----END CERTIFICATE-----\n");
    let not_after = Utc::now() + Duration::days(365);
    let ca = store.issuing_cas().upload_chain(name, chain, not_after, &Precondition::None, &actor()).await.unwrap();
    assert_eq!(ca.status, IssuingCaStatus::Ready);
}

fn registration(id: &str, group: Option<&str>) -> RegistrationRecord {
    test_support::assigned_registration(id, group, id, "hub-a.example.com")
}

/// A certificate of `registration` issued by `ca`, valid for `days` (negative: expired), with a serial and
/// thumbprint derived from `tag`.
fn certificate(registration: &str, ca: &str, tag: &str, days: i64) -> CertificateRecord {
    let now = Utc::now();
    CertificateRecord {
        serial: format!("{:0>32x}", fxhash(tag)),
        registration_key: registration.to_ascii_lowercase(),
        device_id: registration.to_owned(),
        issuing_ca: ca.to_owned(),
        not_before: now - Duration::days(1),
        not_after: now + Duration::days(days),
        status: CertificateStatus::Active,
        thumbprint_sha256: format!("{:0>64x}", fxhash(&format!("thumb-{tag}"))),
        revoked_at: None,
        revocation_reason: None,
        created_at: now,
    }
}

/// A stable 64-bit hash of a tag (FNV-1a), so that every tag has its own serial and thumbprint.
fn fxhash(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3))
}

fn attempt(
    record: RegistrationRecord,
    expected_etag: Option<&str>,
    operation_id: &str,
    certificate: Option<CertificateRecord>,
) -> RegistrationOutcome {
    RegistrationOutcome {
        operation: OperationRecord {
            id: operation_id.to_owned(),
            registration_key: record.key.clone(),
            status: "assigned".into(),
            error_code: None,
            error_message: None,
            result: None,
            created_at: Utc::now(),
            updated_at: Utc::now(),
        },
        detail: format!("assigned {}", record.registration_id),
        record,
        expected_etag: expected_etag.map(str::to_owned),
        certificate,
        hub_job: None,
        renewing: None,
    }
}

fn snapshot() -> Snapshot {
    Box::new(|r: &RegistrationRecord| {
        serde_json::from_value(json!({"registrationId": r.registration_id, "status": r.status})).unwrap()
    })
}

/// Registers `id` (new, or again on its current state) with `certificate`; returns the state written.
async fn register(store: &Store, id: &str, group: Option<&str>, cert: Option<CertificateRecord>) -> RegistrationRecord {
    let current = store.registrations().get(&id.to_ascii_lowercase()).await.ok();
    let mut record = registration(id, group);
    if let Some(current) = &current {
        record.created_at = current.created_at;
    }
    let op = format!("op-{}", uuid::Uuid::new_v4().simple());
    let outcome = attempt(record, current.as_ref().map(|c| c.etag.as_str()), &op, cert);
    test_support::commit_enrolled(store, outcome, snapshot()).await.unwrap().0
}

/// What an EST enrollment of registration `key` relies on: its current etag.
async fn guard(store: &Store, key: &str) -> CertificateGuard {
    CertificateGuard { expected_etag: store.registrations().get(key).await.unwrap().etag, renewing: None }
}

fn statuses(certs: &[CertificateRecord]) -> HashMap<String, CertificateStatus> {
    certs.iter().map(|c| (c.serial.clone(), c.status)).collect()
}

fn enrollment(kind: EnrollmentKind, id: &str, disabled: bool) -> NormalizedEnrollment {
    let status = if disabled { "disabled" } else { "enabled" };
    let doc = match kind {
        EnrollmentKind::Individual => {
            json!({"registrationId": id, "attestation": {"type": "symmetricKey"}, "provisioningStatus": status})
        }
        EnrollmentKind::Group => {
            json!({"enrollmentGroupId": id, "attestation": {"type": "symmetricKey"}, "provisioningStatus": status})
        }
    };
    normalize(kind, doc, None).expect("a valid enrollment")
}

/// Creates or replaces an enrollment of `kind`, enabled or disabled, as the test's admin.
async fn put_enrollment(store: &Store, kind: EnrollmentKind, id: &str, disabled: bool) {
    store.enrollments().put(kind, enrollment(kind, id, disabled), &Precondition::None, &actor()).await.unwrap();
}

fn customer_ca(name: &str, tag: &str) -> CertificateAuthorityInput {
    CertificateAuthorityInput {
        key: name.to_ascii_lowercase(),
        name: name.to_owned(),
        certificate_der: tag.as_bytes().to_vec(),
        subject: format!("CN={tag}"),
        thumbprint_sha256: format!("{:0>64x}", fxhash(tag)),
        not_after: Utc::now() + Duration::days(3650),
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Issuing CAs
// ---------------------------------------------------------------------------------------------------------------

/// Activates every CA of `names` at once; returns how many activations returned Ok (the others must be
/// Conflict), after checking that exactly one issuing CA is active.
async fn race_activations(store: &Store, names: &[String]) -> usize {
    let barrier = Arc::new(tokio::sync::Barrier::new(names.len()));
    let tasks: Vec<_> = names
        .iter()
        .map(|name| {
            let (store, barrier, name) = (store.clone(), barrier.clone(), name.clone());
            tokio::spawn(async move {
                barrier.wait().await;
                store.issuing_cas().activate(&name, &Precondition::None, &actor()).await
            })
        })
        .collect();
    let mut won = 0;
    for task in tasks {
        match task.await.unwrap() {
            Ok(record) => {
                assert_eq!(record.status, IssuingCaStatus::Active);
                won += 1;
            }
            Err(err) => assert!(matches!(err, StoreError::Conflict(_)), "{err:?}"),
        }
    }
    assert!(won >= 1, "some activation succeeds");
    let all = store.issuing_cas().list().await.unwrap();
    let active: Vec<&str> =
        all.iter().filter(|c| c.status == IssuingCaStatus::Active).map(|c| c.name.as_str()).collect();
    assert_eq!(active.len(), 1, "exactly one active issuing CA: {active:?}");
    assert_eq!(store.issuing_cas().active().await.unwrap().unwrap().name, active[0]);
    won
}

/// Many activations racing: from no active CA (on fresh databases, the case no row lock can serialize: only the
/// unique index can), and round after round with one active: every round ends with exactly one active issuing
/// CA, the losers get Conflict, and the audit log holds one `deactivate` for every `activate` but the first.
async fn at_most_one_issuing_ca_is_active_under_concurrent_activations(store: &Store) {
    const CAS: usize = 6;
    let names: Vec<String> = (0..CAS).map(|i| format!("ica-{i}")).collect();
    for _fresh in 0..3 {
        let (_db, fresh) = TestDatabase::store(store.backend()).await.unwrap();
        for name in &names {
            ready_ca(&fresh, name).await;
        }
        race_activations(&fresh, &names).await;
        fresh.close().await.unwrap();
    }
    for name in &names {
        ready_ca(store, name).await;
    }
    let mut activations = 0;
    for _round in 0..4 {
        activations += race_activations(store, &names).await;
    }
    // Activating the CA that is already active changes nothing and is not audited, so the events count the
    // activations that changed something; each of those but the first demoted its predecessor.
    let events = audit_of(store, "issuingCA").await;
    let activated = events.iter().filter(|e| e.action == "activate").count();
    let deactivated = events.iter().filter(|e| e.action == "deactivate").count();
    assert!(activated <= activations);
    assert_eq!(deactivated, activated - 1, "every activation after the first demoted the previous one");
}
both!(at_most_one_issuing_ca_is_active_under_concurrent_activations);

/// The unique partial index itself refuses a second active issuing CA, whatever code writes the row.
async fn the_database_refuses_a_second_active_issuing_ca(backend: Backend) {
    use sea_orm::{ConnectionTrait, Database};
    let (db, store) = TestDatabase::store(backend).await.unwrap();
    ready_ca(&store, "one").await;
    ready_ca(&store, "two").await;
    store.issuing_cas().activate("one", &Precondition::None, &actor()).await.unwrap();
    let raw = Database::connect(db.url.as_str()).await.unwrap();
    let err = raw
        .execute_unprepared("UPDATE issuing_cas SET status = 'active' WHERE name = 'two'")
        .await
        .expect_err("a second active row violates the index");
    assert!(matches!(err.sql_err(), Some(sea_orm::SqlErr::UniqueConstraintViolation(_))), "{err:?}");
    // Any number of non-active rows may share a status.
    raw.execute_unprepared("UPDATE issuing_cas SET status = 'ready' WHERE name = 'one'").await.unwrap();
    raw.close().await.unwrap();
    store.close().await.unwrap();
}

mod the_database_refuses_a_second_active_issuing_ca {
    use zerotouch_store::Backend;

    /// On an SQLite file.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn sqlite() {
        super::the_database_refuses_a_second_active_issuing_ca(Backend::Sqlite).await;
    }

    /// On PostgreSQL.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn postgres() {
        super::the_database_refuses_a_second_active_issuing_ca(Backend::Postgres).await;
    }
}

/// The life of an issuing CA: a pending CA cannot be activated (Conflict that says why), the chain makes it
/// ready, activation demotes the previous active one, the active one cannot be deleted, the key comes only from
/// `issuing_ca_key` and never reaches the audit log; names are unique and preconditions hold.
async fn issuing_ca_lifecycle(store: &Store) {
    let created = store.issuing_cas().create(new_ca("first"), &actor()).await.unwrap();
    assert_eq!(created.status, IssuingCaStatus::Pending);
    assert_eq!(created.chain_pem, None);
    assert!(!format!("{created:?}").contains("KEY-MATERIAL"), "the record does not carry the key");
    assert!(!format!("{:?}", new_ca("x").private_key).contains("KEY-MATERIAL"), "Debug of the key is redacted");
    assert_eq!(store.issuing_cas().get("first").await.unwrap(), created);
    assert!(matches!(store.issuing_cas().create(new_ca("first"), &actor()).await, Err(StoreError::Conflict(_))));
    assert_eq!(store.issuing_cas().key("first").await.unwrap().as_bytes(), KEY_PEM.replace("TEST", "first").as_bytes());
    assert!(matches!(store.issuing_cas().key("nope").await, Err(StoreError::NotFound)));

    match store.issuing_cas().activate("first", &Precondition::None, &actor()).await {
        Err(StoreError::Conflict(message)) => assert!(message.contains("pending"), "{message}"),
        other => panic!("activating a pending CA: {other:?}"),
    }
    assert_eq!(store.issuing_cas().get("first").await.unwrap().status, IssuingCaStatus::Pending, "nothing changed");
    assert_eq!(store.issuing_cas().active().await.unwrap(), None);

    let stale = if_match("not-the-etag");
    let not_after = Utc::now() + Duration::days(30);
    assert!(matches!(
        store.issuing_cas().upload_chain("first", "chain".into(), not_after, &stale, &actor()).await,
        Err(StoreError::PreconditionFailed)
    ));
    let ready = store
        .issuing_cas()
        .upload_chain("first", "chain-1".into(), not_after, &if_match(&created.etag), &actor())
        .await
        .unwrap();
    assert_eq!(ready.status, IssuingCaStatus::Ready);
    assert_eq!(ready.chain_pem.as_deref(), Some("chain-1"));
    assert!(ready.crl.stale, "a CA with a chain needs a CRL");
    assert_eq!(store.issuing_cas().get("first").await.unwrap(), ready, "what was returned is what is stored");

    let active = store.issuing_cas().activate("first", &if_match(&ready.etag), &actor()).await.unwrap();
    assert_eq!(active.status, IssuingCaStatus::Active);
    let again = store.issuing_cas().activate("first", &Precondition::None, &actor()).await.unwrap();
    assert_eq!(again, active, "activating the active CA changes nothing");
    // A new chain for the active CA keeps it active.
    let rechained = store
        .issuing_cas()
        .upload_chain("first", "chain-2".into(), not_after, &Precondition::None, &actor())
        .await
        .unwrap();
    assert_eq!(rechained.status, IssuingCaStatus::Active);

    ready_ca(store, "second").await;
    store.issuing_cas().activate("second", &Precondition::None, &actor()).await.unwrap();
    assert_eq!(
        store.issuing_cas().get("first").await.unwrap().status,
        IssuingCaStatus::Ready,
        "demoted, still trusted"
    );
    assert_eq!(store.issuing_cas().active().await.unwrap().unwrap().name, "second");
    let names: Vec<String> = store.issuing_cas().list().await.unwrap().into_iter().map(|c| c.name).collect();
    assert_eq!(names, ["first", "second"]);

    match store.issuing_cas().delete("second", &Precondition::None, &actor()).await {
        Err(StoreError::Conflict(message)) => assert!(message.contains("active"), "{message}"),
        other => panic!("deleting the active CA: {other:?}"),
    }
    store.issuing_cas().delete("first", &Precondition::None, &actor()).await.unwrap();
    assert!(matches!(store.issuing_cas().get("first").await, Err(StoreError::NotFound)));

    let events = audit_of(store, "issuingCA").await;
    let actions: Vec<(&str, &str)> = events.iter().map(|e| (e.resource_id.as_str(), e.action.as_str())).collect();
    assert_eq!(
        actions,
        [
            ("first", "create"),
            ("first", "uploadChain"),
            ("first", "activate"),
            ("first", "uploadChain"),
            ("second", "create"),
            ("second", "uploadChain"),
            ("first", "deactivate"),
            ("second", "activate"),
            ("first", "delete"),
        ]
    );
    for event in &events {
        assert!(!format!("{event:?}").contains("KEY-MATERIAL"), "no key in the audit log: {event:?}");
    }
}
both!(issuing_ca_lifecycle);

/// CRLs are saved by compare-and-swap: of concurrent saves against one state exactly one wins (number + 1, stale
/// cleared); a save against a state read before a revocation loses, so the revocation cannot be left out.
async fn crl_saves_compare_and_swap(store: &Store) {
    ready_ca(store, "ca").await;
    let state = store.issuing_cas().get("ca").await.unwrap().crl;
    assert_eq!((state.number, state.der.clone(), state.stale), (0, None, true));

    const WRITERS: usize = 8;
    let barrier = Arc::new(tokio::sync::Barrier::new(WRITERS));
    let tasks: Vec<_> = (0..WRITERS)
        .map(|n| {
            let (store, barrier, state) = (store.clone(), barrier.clone(), state.clone());
            tokio::spawn(async move {
                barrier.wait().await;
                let now = Utc::now();
                (n, store.issuing_cas().save_crl("ca", &state, vec![n as u8; 4], now, now + Duration::days(1)).await)
            })
        })
        .collect();
    let mut winners = Vec::new();
    for task in tasks {
        match task.await.unwrap() {
            (n, Ok(saved)) => winners.push((n, saved)),
            (_, Err(err)) => assert!(matches!(err, StoreError::Conflict(_)), "{err:?}"),
        }
    }
    assert_eq!(winners.len(), 1, "one CRL save wins");
    let (n, saved) = &winners[0];
    let stored = store.issuing_cas().get("ca").await.unwrap();
    assert_eq!(&stored.crl, saved);
    assert_eq!(stored.crl.number, 1);
    assert_eq!(stored.crl.der, Some(vec![*n as u8; 4]));
    assert!(!stored.crl.stale);

    // A revocation committed after the state was read: the CRL built on that state is refused.
    let before = stored.crl.clone();
    register(store, "Dev", None, Some(certificate("Dev", "ca", "dev-1", 30))).await;
    let before_revocation = store.registrations().get("dev").await.unwrap().etag;
    let (revoked, etag) = store.certificates().revoke_of_registration("dev", "keyCompromise", &actor()).await.unwrap();
    assert_eq!(revoked.len(), 1);
    assert_ne!(etag, before_revocation, "revoking gives the registration a new etag");
    assert_eq!(store.registrations().get("dev").await.unwrap().etag, etag);
    let now = Utc::now();
    assert!(matches!(
        store.issuing_cas().save_crl("ca", &before, vec![9], now, now + Duration::days(1)).await,
        Err(StoreError::Conflict(_))
    ));
    let fresh = store.issuing_cas().get("ca").await.unwrap().crl;
    assert!(fresh.stale);
    assert_eq!(fresh.number, 1, "the number moves only with a saved CRL");
    let listed = store.certificates().revoked("ca").await.unwrap();
    assert_eq!(listed.len(), 1);
    let etag = store.issuing_cas().get("ca").await.unwrap().etag;
    let saved = store.issuing_cas().save_crl("ca", &fresh, vec![10], now, now + Duration::days(1)).await.unwrap();
    assert_eq!((saved.number, saved.stale), (2, false));
    assert_eq!(store.issuing_cas().get("ca").await.unwrap().crl, saved);
    assert!(matches!(store.issuing_cas().save_crl("nope", &fresh, vec![], now, now).await, Err(StoreError::NotFound)));
    // The CRL is not part of the admin resource: saving it leaves the etag alone (an If-Match stays valid).
    assert_eq!(store.issuing_cas().get("ca").await.unwrap().etag, etag);
}
both!(crl_saves_compare_and_swap);

// ---------------------------------------------------------------------------------------------------------------
// Customer CAs
// ---------------------------------------------------------------------------------------------------------------

/// A put of another certificate resets verification and drops the outstanding code; a put of the same certificate
/// keeps them; only verified CAs are offered for matching; names are case-insensitive; everything is audited.
async fn replacing_a_customer_ca_resets_verification(store: &Store) {
    let (created, new) =
        store.certificate_authorities().put(customer_ca("Acme", "one"), &Precondition::None, &actor()).await.unwrap();
    assert!(new);
    assert!(!created.verified);
    assert_eq!(store.certificate_authorities().get("acme").await.unwrap(), created);
    let expires = Utc::now() + Duration::hours(1);
    let coded = store
        .certificate_authorities()
        .set_verification_code("acme", "code-1", expires, &if_match(&created.etag), &actor())
        .await
        .unwrap();
    let verified = store.certificate_authorities().mark_verified("acme", "code-1", &actor()).await.unwrap();
    assert!(verified.verified);
    assert_eq!(verified.verification_code, None, "the code is used up");
    assert_ne!(verified.etag, coded.etag);
    assert_eq!(store.certificate_authorities().get("acme").await.unwrap(), verified);
    let offered: Vec<String> =
        store.certificate_authorities().verified().await.unwrap().into_iter().map(|c| c.key).collect();
    assert_eq!(offered, ["acme"]);

    // The same certificate again (another spelling of the name): still verified.
    let (same, new) = store
        .certificate_authorities()
        .put(customer_ca("ACME", "one"), &if_match(&verified.etag), &actor())
        .await
        .unwrap();
    assert!(!new);
    assert!(same.verified);
    assert_eq!(same.name, "ACME");
    assert_eq!(same.created_at, created.created_at);

    // An outstanding code, then another certificate: verification and code are gone.
    store
        .certificate_authorities()
        .set_verification_code("acme", "code-2", expires, &Precondition::None, &actor())
        .await
        .unwrap();
    let (replaced, _) =
        store.certificate_authorities().put(customer_ca("Acme", "two"), &Precondition::None, &actor()).await.unwrap();
    assert!(!replaced.verified);
    assert_eq!((replaced.verification_code, replaced.verification_code_expires_at), (None, None));
    assert!(store.certificate_authorities().verified().await.unwrap().is_empty());
    assert!(matches!(
        store.certificate_authorities().mark_verified("acme", "code-2", &actor()).await,
        Err(StoreError::Conflict(_))
    ));
    assert_eq!(store.certificate_authorities().all().await.unwrap().len(), 1);

    assert!(matches!(
        store.certificate_authorities().put(customer_ca("Acme", "three"), &if_match("old"), &actor()).await,
        Err(StoreError::PreconditionFailed)
    ));
    for i in 0..5 {
        store
            .certificate_authorities()
            .put(customer_ca(&format!("Ca-{i}"), &format!("ca-{i}")), &Precondition::None, &actor())
            .await
            .unwrap();
    }
    let mut keys = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let page = store.certificate_authorities().list(after.as_deref(), 2).await.unwrap();
        keys.extend(page.items.into_iter().map(|c| c.key));
        match page.next {
            Some(next) => after = Some(next),
            None => break,
        }
    }
    assert_eq!(keys, ["acme", "ca-0", "ca-1", "ca-2", "ca-3", "ca-4"]);
    store.certificate_authorities().delete("ca-0", &Precondition::None, &actor()).await.unwrap();
    assert!(matches!(store.certificate_authorities().get("ca-0").await, Err(StoreError::NotFound)));
    assert!(matches!(
        store.certificate_authorities().delete("ca-0", &Precondition::None, &actor()).await,
        Err(StoreError::NotFound)
    ));

    let events = audit_of(store, "certificateAuthority").await;
    let acme: Vec<(&str, Option<&str>)> = events
        .iter()
        .filter(|e| e.resource_id.eq_ignore_ascii_case("acme"))
        .map(|e| (e.action.as_str(), e.detail.as_deref()))
        .collect();
    assert_eq!(
        acme,
        [
            ("create", None),
            ("generateVerificationCode", None),
            ("verify", None),
            ("update", None),
            ("generateVerificationCode", None),
            ("update", Some("certificate replaced: verification reset")),
        ]
    );
    assert!(events.iter().all(|e| !format!("{e:?}").contains("code-")), "codes are not audited");
}
both!(replacing_a_customer_ca_resets_verification);

/// Verification is a compare-and-swap on the outstanding code: a replaced code, an expired code, a used code and
/// a code for a CA without one all fail with Conflict and change nothing; of concurrent verifications with the
/// right code, one succeeds.
async fn a_stale_verification_code_cannot_verify(store: &Store) {
    store.certificate_authorities().put(customer_ca("Ca", "ca"), &Precondition::None, &actor()).await.unwrap();
    let conflict = |result: Result<_, StoreError>, what: &str| match result {
        Err(StoreError::Conflict(message)) => assert!(message.contains(what), "{message}"),
        other => panic!("expected a conflict about {what}: {other:?}"),
    };
    conflict(store.certificate_authorities().mark_verified("ca", "any", &actor()).await, "no verification code");
    let later = Utc::now() + Duration::hours(1);
    store
        .certificate_authorities()
        .set_verification_code("ca", "first", later, &Precondition::None, &actor())
        .await
        .unwrap();
    store
        .certificate_authorities()
        .set_verification_code("ca", "second", later, &Precondition::None, &actor())
        .await
        .unwrap();
    conflict(store.certificate_authorities().mark_verified("ca", "first", &actor()).await, "not the current one");
    assert!(!store.certificate_authorities().get("ca").await.unwrap().verified);

    store
        .certificate_authorities()
        .set_verification_code("ca", "old", Utc::now() - Duration::seconds(1), &Precondition::None, &actor())
        .await
        .unwrap();
    conflict(store.certificate_authorities().mark_verified("ca", "old", &actor()).await, "expired");
    assert!(!store.certificate_authorities().get("ca").await.unwrap().verified);

    store
        .certificate_authorities()
        .set_verification_code("ca", "right", later, &Precondition::None, &actor())
        .await
        .unwrap();
    let barrier = Arc::new(tokio::sync::Barrier::new(4));
    let tasks: Vec<_> = (0..4)
        .map(|_| {
            let (store, barrier) = (store.clone(), barrier.clone());
            tokio::spawn(async move {
                barrier.wait().await;
                store.certificate_authorities().mark_verified("ca", "right", &actor()).await
            })
        })
        .collect();
    let mut ok = 0;
    for task in tasks {
        match task.await.unwrap() {
            Ok(record) => {
                assert!(record.verified);
                ok += 1;
            }
            Err(err) => assert!(matches!(err, StoreError::Conflict(_)), "{err:?}"),
        }
    }
    assert_eq!(ok, 1, "a code verifies once");
    assert!(store.certificate_authorities().get("ca").await.unwrap().verified);
    let verifies = audit_of(store, "certificateAuthority").await.into_iter().filter(|e| e.action == "verify").count();
    assert_eq!(verifies, 1);
    assert!(matches!(
        store.certificate_authorities().mark_verified("missing", "right", &actor()).await,
        Err(StoreError::NotFound)
    ));
}
both!(a_stale_verification_code_cannot_verify);

// ---------------------------------------------------------------------------------------------------------------
// Issuance inside registration attempts
// ---------------------------------------------------------------------------------------------------------------

/// A registration attempt with a certificate stores it active and supersedes the registration's previous one in
/// the same transaction; of racing attempts each with its own certificate, only the winner's certificate exists;
/// an attempt without a certificate leaves the registration's certificates alone; other devices' are untouched.
async fn an_issued_certificate_supersedes_the_previous_one(store: &Store) {
    ready_ca(store, "ca").await;
    register(store, "Other", None, Some(certificate("Other", "ca", "other", 30))).await;
    let issued = certificate("Dev", "ca", "first", 30);
    let first = register(store, "Dev", None, Some(issued.clone())).await;
    let stored = store.certificates().of_registration("dev").await.unwrap();
    assert_eq!(stored.len(), 1);
    // A first registration's certificate (written in the batch of first registrations) as issued, at the
    // precision both databases keep, created when the registration was written.
    let precise = |at: DateTime<Utc>| at.duration_trunc(Duration::microseconds(1)).unwrap();
    let expected = CertificateRecord {
        not_before: precise(issued.not_before),
        not_after: precise(issued.not_after),
        created_at: first.updated_at,
        ..issued
    };
    assert_eq!(stored[0], expected);
    let (serial, thumbprint) = (&stored[0].serial, &stored[0].thumbprint_sha256);
    assert_eq!(store.certificates().presented(serial, thumbprint).await.unwrap(), stored[0]);
    assert_eq!(
        store.certificates().presented(&serial.to_ascii_uppercase(), &thumbprint.to_ascii_uppercase()).await.unwrap(),
        stored[0]
    );
    // Another issuer's certificate with the same serial is not ours.
    let foreign = format!("{:0>64x}", fxhash("foreign"));
    assert!(matches!(store.certificates().presented(serial, &foreign).await, Err(StoreError::NotFound)));

    // Racing re-registrations on the same state, each with a certificate of its own.
    const RACERS: usize = 6;
    let barrier = Arc::new(tokio::sync::Barrier::new(RACERS));
    let tasks: Vec<_> = (0..RACERS)
        .map(|n| {
            let (store, barrier) = (store.clone(), barrier.clone());
            let mut record = registration("Dev", None);
            record.created_at = first.created_at;
            let outcome = attempt(
                record,
                Some(&first.etag),
                &format!("op-race-{n}"),
                Some(certificate("Dev", "ca", &format!("race-{n}"), 30)),
            );
            tokio::spawn(async move {
                barrier.wait().await;
                (n, test_support::commit_enrolled(&store, outcome, snapshot()).await)
            })
        })
        .collect();
    let mut winners = Vec::new();
    for task in tasks {
        match task.await.unwrap() {
            (n, Ok(_)) => winners.push(n),
            (_, Err(err)) => assert!(matches!(err, StoreError::Conflict(_)), "{err:?}"),
        }
    }
    assert_eq!(winners.len(), 1, "one re-registration wins");
    let winner = winners[0];
    for n in 0..RACERS {
        let racer = certificate("Dev", "ca", &format!("race-{n}"), 30);
        let found = store.certificates().presented(&racer.serial, &racer.thumbprint_sha256).await;
        if n == winner {
            assert_eq!(found.unwrap().status, CertificateStatus::Active);
        } else {
            assert!(matches!(found, Err(StoreError::NotFound)), "a losing attempt wrote no certificate");
        }
    }
    let dev = store.certificates().of_registration("dev").await.unwrap();
    assert_eq!(dev.len(), 2);
    let by_serial = statuses(&dev);
    assert_eq!(by_serial[&certificate("Dev", "ca", "first", 30).serial], CertificateStatus::Superseded);
    assert_eq!(dev.iter().filter(|c| c.status == CertificateStatus::Active).count(), 1);

    // Registering again without a certificate keeps the active one.
    register(store, "Dev", None, None).await;
    assert_eq!(statuses(&store.certificates().of_registration("dev").await.unwrap()), by_serial);
    assert_eq!(store.certificates().of_registration("other").await.unwrap()[0].status, CertificateStatus::Active);

    // EST re-enrollment outside a registration attempt supersedes the same way, and is audited.
    let est = store
        .registrations()
        .record_certificate(certificate("Dev", "ca", "est", 30), guard(store, "dev").await, "simplereenroll", &actor())
        .await
        .unwrap();
    let dev = store.certificates().of_registration("dev").await.unwrap();
    assert_eq!(
        dev.iter().filter(|c| c.status == CertificateStatus::Active).map(|c| &c.serial).collect::<Vec<_>>(),
        [&est.serial]
    );
    let events = audit_of(store, "certificate").await;
    assert_eq!(events.len(), 1);
    assert_eq!((events[0].action.as_str(), events[0].resource_id.as_str()), ("simplereenroll", est.serial.as_str()));
}
both!(an_issued_certificate_supersedes_the_previous_one);

/// Issue #17: what a registration or EST decision relied on is read again in the transaction that writes it. An
/// attempt that assigns a device is refused (`NoLongerAuthorized`, nothing written) once its enrollment is disabled
/// or deleted, in the one-round-trip batch of first registrations as in the general one; a state that grants
/// nothing (`disabled`) is still written. A renewal is refused once the certificate it authenticated with is
/// revoked or superseded; an EST certificate needs the registration's etag it was decided on.
async fn decisions_are_checked_again_where_they_are_written(store: &Store) {
    ready_ca(store, "ca").await;
    fn refused<T>(result: Result<T, StoreError>) -> bool {
        matches!(result, Err(StoreError::NoLongerAuthorized(_)))
    }
    let commit = |record: RegistrationRecord, etag: Option<String>, renewing: Option<String>, cert| {
        let mut outcome = attempt(record, etag.as_deref(), &format!("op-{}", uuid::Uuid::new_v4().simple()), cert);
        outcome.renewing = renewing;
        store.registrations().commit(outcome, snapshot())
    };

    // First registrations: through a disabled group, through a deleted group, under a disabled individual
    // enrollment, and (granting nothing) a `disabled` state.
    put_enrollment(store, EnrollmentKind::Group, "Off", true).await;
    put_enrollment(store, EnrollmentKind::Individual, "Ind-Off", true).await;
    assert!(refused(commit(registration("G-1", Some("Off")), None, None, None).await));
    assert!(refused(commit(registration("G-2", Some("Gone")), None, None, None).await));
    assert!(refused(commit(registration("Ind-Off", None), None, None, None).await));
    let mut disabled = registration("Ind-Off", None);
    disabled.status = "disabled".into();
    commit(disabled, None, None, None).await.unwrap();
    for key in ["g-1", "g-2"] {
        assert!(matches!(store.registrations().get(key).await, Err(StoreError::NotFound)), "{key} not written");
    }

    // A device with a certificate (the general path), then its enrollment disabled.
    put_enrollment(store, EnrollmentKind::Individual, "Dev", false).await;
    let first = certificate("Dev", "ca", "guard-1", 30);
    let (state, _, _) = commit(registration("Dev", None), None, None, Some(first.clone())).await.unwrap();
    // Renewing with the active certificate works; with it superseded (or revoked), it does not.
    let second = certificate("Dev", "ca", "guard-2", 30);
    let (state, _, _) =
        commit(registration("Dev", None), Some(state.etag), Some(first.serial.clone()), Some(second.clone()))
            .await
            .unwrap();
    let third = certificate("Dev", "ca", "guard-3", 30);
    let stale = commit(registration("Dev", None), Some(state.etag.clone()), Some(first.serial.clone()), Some(third));
    assert!(refused(stale.await), "renewing with a superseded certificate");
    // EST: the etag it was decided on, and the certificate it authenticated with.
    let admin = actor();
    let est = |tag: &str, expected_etag: &str, renewing: &str| {
        let guard = CertificateGuard { expected_etag: expected_etag.to_owned(), renewing: Some(renewing.to_owned()) };
        store.registrations().record_certificate(certificate("Dev", "ca", tag, 30), guard, "simplereenroll", &admin)
    };
    assert!(matches!(est("guard-est-1", "old-etag", &second.serial).await, Err(StoreError::Conflict(_))));
    assert!(refused(est("guard-est-2", &state.etag, &first.serial).await));
    let (_, etag) = store.certificates().revoke_of_registration("dev", "keyCompromise", &actor()).await.unwrap();
    assert!(refused(est("guard-est-3", &etag, &second.serial).await), "renewing with a revoked certificate");
    put_enrollment(store, EnrollmentKind::Individual, "Dev", true).await;
    let state = store.registrations().get("dev").await.unwrap();
    assert!(refused(commit(registration("Dev", None), Some(state.etag), None, None).await), "enrollment disabled");
    let serials: Vec<String> =
        store.certificates().of_registration("dev").await.unwrap().into_iter().map(|c| c.serial).collect();
    assert_eq!(serials.len(), 2, "only the two certificates written before: {serials:?}");
}
both!(decisions_are_checked_again_where_they_are_written);

/// Many devices registering at once with certificates, in batches: each winner's certificate is stored, every
/// registration ends with exactly one active certificate, and a batch with one attempt that cannot be written
/// (its serial is taken) still stores the others' certificates and nothing of the failing one.
async fn batched_issuance_writes_each_winner_once(store: &Store) {
    ready_ca(store, "ca").await;
    register(store, "Taken", None, Some(certificate("Taken", "ca", "taken", 30))).await;
    const DEVICES: usize = 60;
    let barrier = Arc::new(tokio::sync::Barrier::new(DEVICES + 1));
    let mut tasks = Vec::new();
    for i in 0..DEVICES {
        let (store, barrier) = (store.clone(), barrier.clone());
        let id = format!("Batch-{i}");
        let outcome =
            attempt(registration(&id, None), None, &format!("op-batch-{i}"), Some(certificate(&id, "ca", &id, 30)));
        tasks.push(tokio::spawn(async move {
            barrier.wait().await;
            test_support::commit_enrolled(&store, outcome, snapshot()).await
        }));
    }
    // Same serial and thumbprint as Taken's certificate: this attempt must fail alone.
    let clash = attempt(registration("Clash", None), None, "op-clash", Some(certificate("Clash", "ca", "taken", 30)));
    let clash_task = {
        let (store, barrier) = (store.clone(), barrier.clone());
        tokio::spawn(async move {
            barrier.wait().await;
            test_support::commit_enrolled(&store, clash, snapshot()).await
        })
    };
    for task in tasks {
        task.await.unwrap().unwrap();
    }
    assert!(clash_task.await.unwrap().is_err());
    assert!(matches!(store.registrations().get("clash").await, Err(StoreError::NotFound)), "no half-written attempt");
    assert!(store.certificates().of_registration("clash").await.unwrap().is_empty());
    for i in 0..DEVICES {
        let certs = store.certificates().of_registration(&format!("batch-{i}")).await.unwrap();
        assert_eq!(certs.len(), 1);
        assert_eq!(certs[0].status, CertificateStatus::Active);
    }
    assert_eq!(store.certificates().of_registration("taken").await.unwrap()[0].registration_key, "taken");
}
both!(batched_issuance_writes_each_winner_once);

/// Many EST certificates at once, written in batches: each gets its own answer. The devices renewing with their
/// active certificate get the new one, which supersedes it, with one audit event each; a device on a hub with an
/// adapter also gets the job that tells its hub. Refused, with nothing written: a device whose enrollment was
/// disabled, one whose registration changed after the decision, one renewing with a superseded certificate, one
/// whose registration was deleted, one whose new certificate has a serial already taken (that failure is its
/// answer alone).
async fn batched_est_certificates_each_get_their_answer(store: &Store) {
    ready_ca(store, "ca").await;
    let input = zerotouch_store::HubInput {
        host_name: "told.example.com".into(),
        kind: "mosquitto".into(),
        allocation_weight: 100,
        apply_allocation_policy: true,
        settings: json!({}),
    };
    store.hubs().put(input, &Precondition::None, &actor()).await.unwrap();
    const DEVICES: usize = 40;
    let ids: Vec<String> = (0..DEVICES).map(|i| format!("Est-{i}")).collect();
    let mut firsts = Vec::new();
    for id in &ids {
        let first = certificate(id, "ca", &format!("first-{id}"), 30);
        register(store, id, None, Some(first.clone())).await;
        firsts.push(first);
    }
    let told = test_support::assigned_registration("Told", None, "Told", "told.example.com");
    let told_first = certificate("Told", "ca", "first-told", 30);
    let outcome = attempt(told, None, "op-told", Some(told_first.clone()));
    test_support::commit_enrolled(store, outcome, snapshot()).await.unwrap();

    let mut guards = Vec::new();
    for (id, first) in ids.iter().zip(&firsts) {
        let mut guard = guard(store, &id.to_ascii_lowercase()).await;
        guard.renewing = Some(first.serial.clone());
        guards.push(guard);
    }
    let mut told_guard = guard(store, "told").await;
    told_guard.renewing = Some(told_first.serial.clone());
    // Est-0: enrollment disabled. Est-1: registered again after the decision. Est-2: decided on the current state,
    // but renewing with the certificate a later registration superseded. Est-3: registration deleted.
    put_enrollment(store, EnrollmentKind::Individual, "Est-0", true).await;
    register(store, "Est-1", None, None).await;
    register(store, "Est-2", None, Some(certificate("Est-2", "ca", "second-Est-2", 30))).await;
    guards[2].expected_etag = store.registrations().get("est-2").await.unwrap().etag;
    store.registrations().delete("est-3", &Precondition::None, &actor()).await.unwrap();

    // In one wave, every device but Est-4 (one batch or a few, each in one round trip).
    let wave = |requests: Vec<(String, CertificateGuard, CertificateRecord)>| async move {
        let barrier = Arc::new(tokio::sync::Barrier::new(requests.len()));
        let mut tasks = Vec::new();
        for (_, guard, new) in requests {
            let (store, barrier) = (store.clone(), barrier.clone());
            tasks.push(tokio::spawn(async move {
                barrier.wait().await;
                store.registrations().record_certificate(new, guard, "simplereenroll", &actor()).await
            }));
        }
        let mut answers = Vec::new();
        for task in tasks {
            answers.push(task.await.unwrap());
        }
        answers
    };
    let all: Vec<(String, CertificateGuard)> =
        ids.iter().cloned().chain(["Told".to_owned()]).zip(guards.into_iter().chain([told_guard])).collect();
    let first_wave: Vec<_> = all
        .iter()
        .filter(|(id, _)| id != "Est-4")
        .map(|(id, guard)| (id.clone(), guard.clone(), certificate(id, "ca", &format!("est-{id}"), 30)))
        .collect();
    let ids_in_wave: Vec<String> = first_wave.iter().map(|(id, ..)| id.clone()).collect();
    let mut answers: HashMap<String, Result<CertificateRecord, StoreError>> =
        ids_in_wave.into_iter().zip(wave(first_wave).await).collect();
    assert!(matches!(answers["Est-0"], Err(StoreError::NoLongerAuthorized(_))), "disabled: {:?}", answers["Est-0"]);
    assert!(matches!(answers["Est-1"], Err(StoreError::Conflict(_))), "changed: {:?}", answers["Est-1"]);
    assert!(matches!(answers["Est-2"], Err(StoreError::NoLongerAuthorized(_))), "superseded: {:?}", answers["Est-2"]);
    assert!(matches!(answers["Est-3"], Err(StoreError::NoLongerAuthorized(_))), "deleted: {:?}", answers["Est-3"]);

    // Then Est-4, whose new certificate takes Est-5's first serial, beside Est-5 renewing with its new certificate:
    // Est-4 fails alone.
    let est_5 = answers["Est-5"].as_ref().unwrap();
    let mut guard_5 = guard(store, "est-5").await;
    guard_5.renewing = Some(est_5.serial.clone());
    let est_4 = all.iter().find(|(id, _)| id == "Est-4").unwrap().1.clone();
    let again = wave(vec![
        ("Est-4".into(), est_4, certificate("Est-4", "ca", "first-Est-5", 30)),
        ("Est-5".into(), guard_5, certificate("Est-5", "ca", "again-Est-5", 30)),
    ])
    .await;
    assert!(matches!(again[0], Err(StoreError::Conflict(_))), "serial taken: {:?}", again[0]);
    let est_5_again = again[1].as_ref().unwrap().clone();
    assert_eq!(est_5_again.serial, certificate("Est-5", "ca", "again-Est-5", 30).serial);
    // Alone in its batch (the one-round-trip statement fails, and its error is the answer), the same.
    let mut guard_6 = guard(store, "est-6").await;
    guard_6.renewing = Some(answers["Est-6"].as_ref().unwrap().serial.clone());
    let taken = certificate("Est-6", "ca", "first-Est-7", 30);
    let lone = store.registrations().record_certificate(taken, guard_6, "simplereenroll", &actor()).await;
    assert!(matches!(lone, Err(StoreError::Conflict(_))), "serial taken, alone: {lone:?}");

    for (i, id) in ids.iter().map(|id| id.as_str()).chain(["Told"]).enumerate() {
        let stored = store.certificates().of_registration(&id.to_ascii_lowercase()).await.unwrap();
        let active: Vec<&str> =
            stored.iter().filter(|c| c.status == CertificateStatus::Active).map(|c| c.serial.as_str()).collect();
        match i {
            0..=4 => assert_eq!(stored.len(), if i == 2 { 2 } else { 1 }, "{id}: nothing written"),
            5 => assert_eq!((active, stored.len()), (vec![est_5_again.serial.as_str()], 3), "{id}"),
            _ => {
                let written = answers[id].as_ref().unwrap();
                assert_eq!(written.serial, certificate(id, "ca", &format!("est-{id}"), 30).serial);
                assert_eq!(active, [written.serial.as_str()], "{id}");
                assert_eq!(stored.len(), 2, "{id}: the first, superseded, and the new one");
                let read_back = stored.iter().find(|c| c.serial == written.serial).unwrap();
                assert_eq!(read_back, written, "{id}: stored as answered (validity, device, CA, time)");
            }
        }
    }
    let events = audit_of(store, "certificate").await;
    let mut audited: Vec<&str> =
        events.iter().filter(|e| e.action == "simplereenroll").map(|e| e.resource_id.as_str()).collect();
    answers.insert("Est-5 again".into(), Ok(est_5_again));
    let mut written: Vec<&str> = answers.values().filter_map(|a| a.as_ref().ok()).map(|c| c.serial.as_str()).collect();
    audited.sort_unstable();
    written.sort_unstable();
    assert_eq!(written.len(), DEVICES - 5 + 2);
    assert_eq!(audited, written, "one event per certificate written");
    let told_new = answers["Told"].as_ref().unwrap();
    let jobs = store.hub_jobs().of_registration("told").await.unwrap();
    assert!(
        jobs.iter()
            .any(|job| job.document.as_ref().is_some_and(|d| d.to_string().contains(&told_new.thumbprint_sha256))),
        "the hub is told of the new certificate: {jobs:?}"
    );
    assert!(store.hub_jobs().of_registration("est-5").await.unwrap().is_empty(), "a hub without adapter is not");
}
both!(batched_est_certificates_each_get_their_answer);

// ---------------------------------------------------------------------------------------------------------------
// Revocation
// ---------------------------------------------------------------------------------------------------------------

/// Per device: the serials of its unexpired active and superseded certificates, and of an expired one.
struct Device {
    key: String,
    live: Vec<String>,
    expired: String,
}

/// Registers `id` (through `group`) three times: an expired certificate, one that gets superseded, the active one.
async fn device_with_certificates(store: &Store, id: &str, group: Option<&str>, ca: &str) -> Device {
    let tag = id.to_ascii_lowercase();
    let expired = certificate(id, ca, &format!("{tag}-expired"), -1);
    register(store, id, group, Some(expired.clone())).await;
    let old = certificate(id, ca, &format!("{tag}-old"), 30);
    register(store, id, group, Some(old.clone())).await;
    let new = certificate(id, ca, &format!("{tag}-new"), 30);
    register(store, id, group, Some(new.clone())).await;
    Device { key: id.to_ascii_lowercase(), live: vec![old.serial, new.serial], expired: expired.serial }
}

/// The serials revoked so far, over every device.
async fn revoked_serials(store: &Store, devices: &[&Device]) -> HashSet<String> {
    let mut out = HashSet::new();
    for device in devices {
        for c in store.certificates().of_registration(&device.key).await.unwrap() {
            if c.status == CertificateStatus::Revoked {
                assert!(c.revoked_at.is_some());
                assert!(c.revocation_reason.is_some());
                out.insert(c.serial);
            }
        }
    }
    out
}

/// Saves a CRL so that the next check of `stale` sees only what comes after.
async fn refresh_crl(store: &Store, ca: &str) {
    let state = store.issuing_cas().get(ca).await.unwrap().crl;
    let now = Utc::now();
    store.issuing_cas().save_crl(ca, &state, vec![1], now, now + Duration::days(1)).await.unwrap();
    assert!(!store.issuing_cas().get(ca).await.unwrap().crl.stale);
}

/// Each change that retires devices revokes exactly their certificates (active, superseded and expired, not other
/// devices'), with `cessationOfOperation`, in the same transaction; marks the issuing CA's CRL stale (which lists
/// the unexpired ones); audits one `revoke` per certificate with the admin as actor. Revocation is idempotent.
async fn revocation_hooks_revoke_exactly_the_devices_concerned(store: &Store) {
    ready_ca(store, "ca-a").await;
    ready_ca(store, "ca-b").await;
    let actor = actor();
    put_enrollment(store, EnrollmentKind::Group, "Group-G", false).await;
    put_enrollment(store, EnrollmentKind::Group, "Group-H", false).await;
    for id in ["Ind-I", "Ind-J", "Ind-K"] {
        put_enrollment(store, EnrollmentKind::Individual, id, false).await;
    }
    let g1 = device_with_certificates(store, "G1", Some("Group-G"), "ca-a").await;
    let g2 = device_with_certificates(store, "G2", Some("Group-G"), "ca-b").await;
    let h1 = device_with_certificates(store, "H1", Some("Group-H"), "ca-a").await;
    let i = device_with_certificates(store, "Ind-I", None, "ca-a").await;
    let j = device_with_certificates(store, "Ind-J", None, "ca-a").await;
    let k = device_with_certificates(store, "Ind-K", None, "ca-b").await;
    let all = [&g1, &g2, &h1, &i, &j, &k];
    let mut expected: HashSet<String> = HashSet::new();

    // Each step: what it should revoke, and on which CAs' CRLs.
    let check = async |step: &str, retired: &[&Device], cas: &[&str], expected: &mut HashSet<String>| {
        for device in retired {
            expected.extend(device.live.iter().cloned());
            expected.insert(device.expired.clone());
        }
        assert_eq!(&revoked_serials(store, &all).await, expected, "after {step}");
        for ca in ["ca-a", "ca-b"] {
            assert_eq!(store.issuing_cas().get(ca).await.unwrap().crl.stale, cas.contains(&ca), "{ca} after {step}");
            refresh_crl(store, ca).await;
        }
    };
    refresh_crl(store, "ca-a").await;
    refresh_crl(store, "ca-b").await;

    // Deleting G1's registration: only G1's, on ca-a.
    let g1_state = store.registrations().get("g1").await.unwrap();
    store.registrations().delete("g1", &if_match(&g1_state.etag), &actor).await.unwrap();
    check("deleting registration G1", &[&g1], &["ca-a"], &mut expected).await;

    // Disabling group G: G2 (G1's are revoked already), not H1.
    put_enrollment(store, EnrollmentKind::Group, "Group-G", true).await;
    check("disabling group G", &[&g2], &["ca-b"], &mut expected).await;
    // Writing it disabled again: nothing more to revoke, nothing stale.
    put_enrollment(store, EnrollmentKind::Group, "Group-G", true).await;
    check("writing group G disabled again", &[], &[], &mut expected).await;

    // Deleting individual enrollment I.
    store.enrollments().delete(EnrollmentKind::Individual, "ind-i", &Precondition::None, &actor).await.unwrap();
    check("deleting enrollment I", &[&i], &["ca-a"], &mut expected).await;

    // Deleting group H.
    store.enrollments().delete(EnrollmentKind::Group, "group-h", &Precondition::None, &actor).await.unwrap();
    check("deleting group H", &[&h1], &["ca-a"], &mut expected).await;

    // Bulk: J disabled by an update, K deleted.
    let items = vec![BulkItem {
        index: 0,
        key: "ind-j".into(),
        enrollment: Some(enrollment(EnrollmentKind::Individual, "Ind-J", true)),
        etag: None,
    }];
    let failures =
        test_support::bulk_in_parts(store, EnrollmentKind::Individual, BulkMode::Update, items, 1000, &actor)
            .await
            .unwrap();
    assert!(failures.is_empty());
    check("bulk-disabling J", &[&j], &["ca-a"], &mut expected).await;
    let items = vec![BulkItem { index: 0, key: "ind-k".into(), enrollment: None, etag: None }];
    let failures =
        test_support::bulk_in_parts(store, EnrollmentKind::Individual, BulkMode::Delete, items, 1000, &actor)
            .await
            .unwrap();
    assert!(failures.is_empty());
    check("bulk-deleting K", &[&k], &["ca-b"], &mut expected).await;

    // Every device is retired, its expired certificate too (a renewal grace would take it); the reasons are
    // cessationOfOperation.
    for device in all {
        let expired = store
            .certificates()
            .of_registration(&device.key)
            .await
            .unwrap()
            .into_iter()
            .find(|c| c.serial == device.expired)
            .unwrap();
        assert_eq!(expired.status, CertificateStatus::Revoked, "an expired certificate is revoked too");
        for c in store.certificates().of_registration(&device.key).await.unwrap() {
            if c.status == CertificateStatus::Revoked {
                assert_eq!(c.revocation_reason.as_deref(), Some("cessationOfOperation"));
            }
        }
    }
    let revokes: Vec<AuditRecord> =
        audit_of(store, "certificate").await.into_iter().filter(|e| e.action == "revoke").collect();
    assert_eq!(revokes.len(), expected.len(), "one audit event per revoked certificate");
    assert_eq!(revokes.iter().map(|e| e.resource_id.clone()).collect::<HashSet<_>>(), expected);
    assert!(
        revokes.iter().all(|e| e.actor == actor && e.detail.as_deref().unwrap().starts_with("cessationOfOperation"))
    );

    // The CRLs list exactly the revoked, unexpired certificates of their CA.
    for ca in ["ca-a", "ca-b"] {
        let listed: HashSet<String> =
            store.certificates().revoked(ca).await.unwrap().into_iter().map(|r| r.serial).collect();
        let mine: HashSet<String> = expected
            .iter()
            .filter(|s| {
                all.iter().any(|d| {
                    d.live.contains(s) && ((ca == "ca-a") == ["g1", "h1", "ind-i", "ind-j"].contains(&d.key.as_str()))
                })
            })
            .cloned()
            .collect();
        assert_eq!(listed, mine, "{ca}");
    }

    // Revoking what is revoked changes nothing.
    assert_eq!(store.certificates().revoke(&g1.live[1], "keyCompromise", &actor).await.unwrap(), None);
    assert!(matches!(
        store.certificates().revoke_of_registration("g1", "keyCompromise", &actor).await,
        Err(StoreError::NotFound)
    ));
    assert!(store.certificates().revoke_of_registration("g2", "keyCompromise", &actor).await.unwrap().0.is_empty());
    assert!(!store.issuing_cas().get("ca-a").await.unwrap().crl.stale);
    assert!(matches!(store.certificates().revoke("00ff", "keyCompromise", &actor).await, Err(StoreError::NotFound)));
}
both!(revocation_hooks_revoke_exactly_the_devices_concerned);

/// An explicit revocation of one certificate (any case of its serial): revoked once even when requested
/// concurrently, with the given reason, audited once; its CA's CRL is marked stale.
async fn revoking_one_certificate_is_idempotent(store: &Store) {
    ready_ca(store, "ca").await;
    let cert = certificate("Dev", "ca", "one", 30);
    register(store, "Dev", None, Some(cert.clone())).await;
    refresh_crl(store, "ca").await;
    let barrier = Arc::new(tokio::sync::Barrier::new(4));
    let tasks: Vec<_> = (0..4)
        .map(|_| {
            let (store, barrier, serial) = (store.clone(), barrier.clone(), cert.serial.to_ascii_uppercase());
            tokio::spawn(async move {
                barrier.wait().await;
                store.certificates().revoke(&serial, "keyCompromise", &actor()).await
            })
        })
        .collect();
    let mut revoked = Vec::new();
    for task in tasks {
        if let Some(record) = task.await.unwrap().unwrap() {
            revoked.push(record);
        }
    }
    assert_eq!(revoked.len(), 1, "revoked once");
    let stored = store.certificates().get(&cert.serial).await.unwrap();
    assert_eq!(stored, revoked[0]);
    assert_eq!(stored.revocation_reason.as_deref(), Some("keyCompromise"));
    assert!(store.issuing_cas().get("ca").await.unwrap().crl.stale);
    let events = audit_of(store, "certificate").await;
    assert_eq!(events.len(), 1);
    let listed = store.certificates().revoked("ca").await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!((listed[0].serial.as_str(), listed[0].reason.as_str()), (cert.serial.as_str(), "keyCompromise"));
    assert_eq!(Some(listed[0].revoked_at), stored.revoked_at);
}
both!(revoking_one_certificate_is_idempotent);

// ---------------------------------------------------------------------------------------------------------------
// Fleet view
// ---------------------------------------------------------------------------------------------------------------

/// Paging certificates by expiry returns each matching certificate exactly once, in (expiry, serial) order, even
/// with many certificates sharing one expiry and with revocations happening between pages; filters by status.
async fn certificates_page_by_expiry_once_each(store: &Store) {
    ready_ca(store, "ca").await;
    let base = DateTime::from_timestamp(Utc::now().timestamp() + 86_400, 0).unwrap();
    let mut expiry: HashMap<String, DateTime<Utc>> = HashMap::new();
    for i in 0..40 {
        let id = format!("Fleet-{i}");
        let mut cert = certificate(&id, "ca", &id, 0);
        // Ten distinct expiries, four certificates each; some with sub-second parts.
        cert.not_after = base + Duration::days(i64::from(i % 10)) + Duration::microseconds(i64::from(i % 3) * 250_000);
        expiry.insert(cert.serial.clone(), cert.not_after);
        register(store, &id, None, Some(cert)).await;
    }
    let cutoff = base + Duration::days(7);
    let expected: Vec<String> = {
        let mut v: Vec<(DateTime<Utc>, String)> =
            expiry.iter().filter(|(_, at)| **at < cutoff).map(|(s, at)| (*at, s.clone())).collect();
        v.sort();
        v.into_iter().map(|(_, s)| s).collect()
    };
    assert_eq!(expected.len(), 28);
    let filter = CertificateFilter { expiring_before: Some(cutoff), status: None };
    let mut seen = Vec::new();
    let mut after: Option<String> = None;
    let mut pages = 0;
    loop {
        let page = store.certificates().list(&filter, after.as_deref(), 3).await.unwrap();
        pages += 1;
        assert!(page.items.len() <= 3);
        // Revoking between pages changes statuses, not the order.
        if let Some(first) = page.items.first() {
            store.certificates().revoke(&first.serial, "unspecified", &actor()).await.unwrap();
        }
        seen.extend(page.items.into_iter().map(|c| c.serial));
        match page.next {
            Some(next) => after = Some(next),
            None => break,
        }
    }
    assert_eq!(seen, expected, "each certificate once, in order");
    assert_eq!(pages, 10);

    let active = CertificateFilter { expiring_before: Some(cutoff), status: Some(CertificateStatus::Active) };
    let page = store.certificates().list(&active, None, 1000).await.unwrap();
    assert_eq!(page.items.len(), 28 - 10);
    assert!(page.items.iter().all(|c| c.status == CertificateStatus::Active));
    assert!(matches!(store.certificates().list(&filter, Some("garbage"), 3).await, Err(StoreError::Corrupt(_))));
    let everything = store.certificates().list(&CertificateFilter::default(), None, 1000).await.unwrap();
    assert_eq!(everything.items.len(), 40);
    assert_eq!(everything.next, None);
}
both!(certificates_page_by_expiry_once_each);

/// The certificates' thumbprint is not indexed (migration `m20261210_000001_drop_certificate_thumbprint_index`):
/// applied to a database that holds certificates, the migration keeps every row and the three other indexes, and
/// taken back it makes the thumbprint unique again. On SQLite, which cannot drop a column's UNIQUE, that is a
/// rebuild of the table.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_thumbprint_index_goes_and_the_certificates_stay() {
    use sea_orm::{ConnectionTrait, Database, Statement};
    use zerotouch_migrations::{Migrator, MigratorTrait};
    const MIGRATION: &str = "m20261210_000001_drop_certificate_thumbprint_index";
    let before = Migrator::migrations().iter().position(|m| m.name() == MIGRATION).unwrap();
    let after = Migrator::migrations().len() - before;
    for (backend, indexes) in [
        (
            Backend::Sqlite,
            "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'certificates' ORDER BY name",
        ),
        (Backend::Postgres, "SELECT indexname AS name FROM pg_indexes WHERE tablename = 'certificates' ORDER BY 1"),
    ] {
        let db = TestDatabase::create(backend).await.unwrap();
        let raw = Database::connect(db.url.as_str()).await.unwrap();
        let query = |sql: &str| Statement::from_string(raw.get_database_backend(), sql);
        let names = |rows: Vec<sea_orm::QueryResult>| -> Vec<String> {
            rows.iter().map(|r| r.try_get::<String>("", "name").unwrap()).collect()
        };
        let rows = "SELECT serial, registration_key, device_id, issuing_ca, status, thumbprint_sha256, \
                    revocation_reason FROM certificates ORDER BY serial";
        let read = |rows: Vec<sea_orm::QueryResult>| -> Vec<Vec<Option<String>>> {
            let columns = ["serial", "registration_key", "device_id", "issuing_ca", "status", "thumbprint_sha256"];
            rows.iter()
                .map(|r| {
                    let mut row: Vec<Option<String>> =
                        columns.iter().map(|c| Some(r.try_get::<String>("", c).unwrap())).collect();
                    row.push(r.try_get::<Option<String>>("", "revocation_reason").unwrap());
                    row
                })
                .collect()
        };

        Migrator::up(&raw, Some(u32::try_from(before).unwrap())).await.unwrap();
        for (serial, status, reason) in [("0a", "active", "NULL"), ("0b", "revoked", "'keyCompromise'")] {
            raw.execute_unprepared(&format!(
                "INSERT INTO certificates (serial, registration_key, device_id, issuing_ca, not_before, not_after, \
                 status, thumbprint_sha256, revoked_at, revocation_reason, created_at) VALUES ('{serial}', 'dev', \
                 'Dev', 'ca', '2026-12-01 00:00:00+00:00', '2027-01-01 00:00:00+00:00', '{status}', 'thumb-{serial}', \
                 NULL, {reason}, '2026-12-01 00:00:00+00:00')"
            ))
            .await
            .unwrap();
        }
        let stored = read(raw.query_all_raw(query(rows)).await.unwrap());
        assert_eq!(stored.len(), 2);
        let unique = names(raw.query_all_raw(query(indexes)).await.unwrap());
        assert_eq!(unique.len(), 5, "{backend:?}: the thumbprint is indexed before: {unique:?}");

        Migrator::up(&raw, None).await.unwrap();
        assert_eq!(read(raw.query_all_raw(query(rows)).await.unwrap()), stored, "{backend:?}: every row kept");
        let kept = names(raw.query_all_raw(query(indexes)).await.unwrap());
        let expected: &[&str] = match backend {
            Backend::Sqlite => &[
                "certificates_by_expiry",
                "certificates_by_issuer",
                "certificates_by_registration",
                "sqlite_autoindex_certificates_1",
            ],
            Backend::Postgres => &[
                "certificates_by_expiry",
                "certificates_by_issuer",
                "certificates_by_registration",
                "certificates_pkey",
            ],
        };
        assert_eq!(kept, expected, "{backend:?}");

        Migrator::down(&raw, Some(u32::try_from(after).unwrap())).await.unwrap();
        assert_eq!(read(raw.query_all_raw(query(rows)).await.unwrap()), stored, "{backend:?}: kept going back");
        assert_eq!(names(raw.query_all_raw(query(indexes)).await.unwrap()), unique, "{backend:?}");
        let twin = "INSERT INTO certificates (serial, registration_key, device_id, issuing_ca, not_before, not_after, \
                    status, thumbprint_sha256, created_at) VALUES ('0c', 'dev', 'Dev', 'ca', '2026-12-01', \
                    '2027-01-01', 'active', 'thumb-0a', '2026-12-01')";
        assert!(raw.execute_unprepared(twin).await.is_err(), "{backend:?}: the thumbprint is unique again");
        raw.close().await.unwrap();
    }
}
