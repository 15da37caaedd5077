//! Fresh, throwaway databases for tests: an SQLite file in a temporary directory, or a new PostgreSQL database.
//!
//! PostgreSQL is found at `ZEROTOUCH_TEST_POSTGRES_URL` (default `postgres://postgres@127.0.0.1:5432/postgres`,
//! the server the test script makes sure is running). Each test gets a database of its own, so tests run in
//! parallel; it is dropped when the [`TestDatabase`] is.

use sea_orm::{ConnectionTrait, Database};

use crate::{Backend, Store, StoreError};

/// The admin URL of the test PostgreSQL server.
pub fn postgres_admin_url() -> String {
    std::env::var("ZEROTOUCH_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
}

/// A database created for one test.
#[derive(Debug)]
pub struct TestDatabase {
    /// The URL to connect to.
    pub url: String,
    backend: Backend,
    name: String,
    _dir: Option<TempDirGuard>,
}

#[derive(Debug)]
struct TempDirGuard(std::path::PathBuf);

impl Drop for TempDirGuard {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl TestDatabase {
    /// Creates an empty database on `backend`.
    pub async fn create(backend: Backend) -> Result<Self, StoreError> {
        let name = format!("zt_test_{}", uuid::Uuid::new_v4().simple());
        match backend {
            Backend::Sqlite => {
                let dir = std::env::temp_dir().join(&name);
                std::fs::create_dir_all(&dir).map_err(|e| StoreError::Corrupt(e.to_string()))?;
                let url = format!("sqlite://{}?mode=rwc", dir.join("zerotouch.db").display());
                Ok(Self { url, backend, name, _dir: Some(TempDirGuard(dir)) })
            }
            Backend::Postgres => {
                let admin_url = postgres_admin_url();
                let admin = Database::connect(admin_url.as_str()).await?;
                admin.execute_unprepared(&format!("CREATE DATABASE {name}")).await?;
                admin.close().await?;
                // The same server and options (`?sslmode=...`), another database.
                let (location, options) =
                    admin_url.split_once('?').map_or((admin_url.as_str(), None), |(l, o)| (l, Some(o)));
                let base = location.rsplit_once('/').map_or(location, |(base, _)| base);
                let url = match options {
                    Some(options) => format!("{base}/{name}?{options}"),
                    None => format!("{base}/{name}"),
                };
                Ok(Self { url, backend, name, _dir: None })
            }
        }
    }

    /// Creates a database on `backend`, connects, migrates it and unlocks its secrets with [`test_master_key`].
    pub async fn store(backend: Backend) -> Result<(Self, Store), StoreError> {
        let db = Self::create(backend).await?;
        let store = Store::connect(&db.url).await?;
        store.migrate().await?;
        unlock(&store).await?;
        Ok((db, store))
    }
}

/// The master key of every test database: fixed, so that a second store on the same database can unlock it too.
pub fn test_master_key() -> Result<zerotouch_envelope::AesKey, StoreError> {
    // 32 bytes of 0x2a, base64.
    zerotouch_envelope::MasterKey::parse("KioqKioqKioqKioqKioqKioqKioqKioqKioqKioqKio=")
        .map_err(|e| StoreError::Unavailable(e.to_string()))
}

/// Unlocks `store` with [`test_master_key`] (a second store on a test database needs it before it reads secrets).
pub async fn unlock(store: &Store) -> Result<(), StoreError> {
    store.unlock(&test_master_key()?).await.map(|_| ()).map_err(|e| match e {
        crate::UnlockError::Store(e) => e,
        other => StoreError::Unavailable(other.to_string()),
    })
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        if self.backend != Backend::Postgres {
            return;
        }
        let name = self.name.clone();
        // Drop the database from a thread of its own: Drop cannot await, and may run inside a runtime.
        let _ = std::thread::spawn(move || {
            let Ok(runtime) = tokio::runtime::Builder::new_current_thread().enable_all().build() else { return };
            runtime.block_on(async move {
                if let Ok(admin) = Database::connect(postgres_admin_url().as_str()).await {
                    let _ = admin.execute_unprepared(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")).await;
                    let _ = admin.close().await;
                }
            });
        })
        .join();
    }
}

/// Writes a registration attempt as [`crate::Registrations::commit`] does, after making sure the enrollment it is
/// written through exists, enabled (the writer refuses attempts whose enrollment is gone or disabled): for tests
/// of the writer that are not about enrollments.
pub async fn commit_enrolled(
    store: &Store,
    outcome: crate::RegistrationOutcome,
    snapshot: crate::Snapshot,
) -> Result<crate::Committed, StoreError> {
    use sea_orm::{ActiveValue::Set, EntityTrait};
    let record = &outcome.record;
    let now = crate::now();
    macro_rules! enroll {
        ($entity:ident, $key:expr) => {{
            use crate::entity::$entity::{ActiveModel, Entity};
            let model = ActiveModel {
                key: Set($key.to_owned()),
                id: Set($key.to_owned()),
                attestation_type: Set("symmetricKey".into()),
                provisioning_status: Set("enabled".into()),
                document: Set(serde_json::json!({})),
                primary_symmetric_key: Set(None),
                secondary_symmetric_key: Set(None),
                etag: Set(crate::new_etag()),
                created_at: Set(now),
                updated_at: Set(now),
            };
            Entity::insert(model).on_conflict_do_nothing().exec_without_returning(&store.db).await?;
        }};
    }
    match &record.enrollment_group_key {
        Some(group) => enroll!(enrollment_group, group),
        None => enroll!(individual_enrollment, record.key),
    }
    store.registrations().commit(outcome, snapshot).await
}

/// A registration state as a device's first registration leaves it: `assigned` to `hub` as `device_id`, through
/// `group` (else its individual enrollment), keyed by the lower-cased id; tests change what they need.
pub fn assigned_registration(
    registration_id: &str,
    group: Option<&str>,
    device_id: &str,
    hub: &str,
) -> crate::RegistrationRecord {
    let now = crate::now();
    crate::RegistrationRecord {
        key: registration_id.to_ascii_lowercase(),
        registration_id: registration_id.to_owned(),
        enrollment_group_key: group.map(str::to_ascii_lowercase),
        device_id: Some(device_id.to_owned()),
        assigned_hub: Some(hub.to_owned()),
        status: "assigned".into(),
        substatus: Some("initialAssignment".into()),
        error_code: None,
        error_message: None,
        payload: None,
        initial_twin: None,
        hub_key_slot: None,
        etag: String::new(),
        created_at: now,
        updated_at: now,
    }
}

/// Applies `items` as one bulk call in parts of `part` items, as the admin API applies a call
/// ([`crate::BulkCall`]), and commits it; returns every part's failures, in order.
pub async fn bulk_in_parts(
    store: &Store,
    kind: zerotouch_wire::enrollment::EnrollmentKind,
    mode: zerotouch_wire::bulk::BulkMode,
    items: Vec<crate::BulkItem>,
    part: usize,
    actor: &crate::Actor,
) -> Result<Vec<(usize, crate::BulkFailure)>, StoreError> {
    let mut call = store.enrollments().begin_bulk(kind, mode, actor).await?;
    let mut failures = Vec::new();
    let mut items = items.into_iter().peekable();
    while items.peek().is_some() {
        let part_failures;
        (call, part_failures) = call.apply(items.by_ref().take(part.max(1)).collect()).await?;
        failures.extend(part_failures);
    }
    call.commit().await?;
    Ok(failures)
}
