//! `zerotouch shared-access-policy`: shared access policies managed straight in the database (for the first policy
//! of an install, and for scripts that hold the master key), and the connection string of a policy, which Azure's
//! service SDKs take (`HostName=...;SharedAccessKeyName=...;SharedAccessKey=...`). The admin API's
//! `/sharedAccessPolicies` does the same for owners; changes made here are audited as `cli`.

use anyhow::Context;
use zerotouch_store::{Actor, Precondition, Store, StoreError};
use zerotouch_wire::policy::{self, AccessRights, NormalizedPolicy, PolicyName};

use crate::config::{PolicyAction, PolicyConfig, SharedAccessPolicyArgs};
use crate::data_dir::files;

/// Runs the command.
pub async fn run(args: SharedAccessPolicyArgs) -> anyhow::Result<()> {
    let config = PolicyConfig::resolve(&args)?;
    let store = Store::connect(&config.common.database_url).await.with_context(|| {
        format!("--database-url: cannot open {}", crate::config::redact_url(&config.common.database_url))
    })?;
    if !store.is_ready().await.unwrap_or(false) {
        anyhow::bail!("the database schema is not current: run `zerotouch migrate` (or start the service once) first");
    }
    let master = crate::master_key::load(&config.master_key, &config.common.data_dir)?;
    crate::master_key::unlock(&store, &master).await?;
    let result = act(&store, &config, args.action).await;
    store.close().await?;
    result
}

async fn act(store: &Store, config: &PolicyConfig, action: PolicyAction) -> anyhow::Result<()> {
    let policies = store.shared_access_policies();
    let actor = Actor { subject: "cli".into(), role: "owner".into() };
    let key_of = |name: &str| -> anyhow::Result<String> {
        Ok(PolicyName::try_from(name).map_err(|e| anyhow::anyhow!("policy name {name:?}: {e}"))?.key().into_owned())
    };
    let missing = |name: &str, e: StoreError| match e {
        StoreError::NotFound => anyhow::anyhow!("no shared access policy {name:?}"),
        e => anyhow::Error::new(e),
    };
    match action {
        PolicyAction::List => {
            for record in policies.list().await? {
                println!("{}\t{}", record.name, record.rights);
            }
        }
        PolicyAction::Put { name, rights } => {
            let name = PolicyName::try_from(name.as_str()).map_err(|e| anyhow::anyhow!("policy name {name:?}: {e}"))?;
            let rights = AccessRights::parse(&rights).map_err(|e| anyhow::anyhow!("--rights: {e}"))?;
            if rights.is_empty() {
                anyhow::bail!("--rights: give at least one right, e.g. EnrollmentRead");
            }
            let (record, created) = retry_busy(|| {
                let policy = NormalizedPolicy { name: name.clone(), rights, primary_key: None, secondary_key: None };
                policies.put(policy, &Precondition::None, &actor)
            })
            .await?;
            let verb = if created { "created" } else { "updated" };
            println!("zerotouch: {verb} shared access policy {:?} with rights {}", record.name, record.rights);
        }
        PolicyAction::Delete { name } => {
            let key = key_of(&name)?;
            retry_busy(|| policies.delete(&key, &Precondition::None, &actor)).await.map_err(|e| missing(&name, e))?;
            println!("zerotouch: deleted shared access policy {name:?}");
        }
        PolicyAction::ConnectionString { name, host_name, secondary } => {
            let record = policies.get(&key_of(&name)?).await.map_err(|e| missing(&name, e))?;
            let host = match host_name {
                Some(host) => host,
                None => first_server_name(config)?,
            };
            retry_busy(|| policies.audit_key_read(&record, &actor)).await?;
            let key = if secondary { &record.secondary_key } else { &record.primary_key };
            println!("{}", policy::connection_string(&host, &record.name, key).as_str());
        }
    }
    Ok(())
}

/// Runs a write again while SQLite answers "database is locked": a running `serve` on the same file may have
/// committed between this transaction's read and its write (SQLITE_BUSY_SNAPSHOT, which the busy timeout does not
/// wait out). Up to 50 tries, 100 ms apart; PostgreSQL never answers so.
async fn retry_busy<T, F, Fut>(mut write: F) -> Result<T, StoreError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, StoreError>>,
{
    let mut tries = 0;
    loop {
        match write().await {
            Err(StoreError::Database(e)) if tries < 50 && e.to_string().contains("database is locked") => {
                tries += 1;
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
            result => return result,
        }
    }
}

/// The first name of the data dir's generated server certificate (`--hostname` of the last start).
fn first_server_name(config: &PolicyConfig) -> anyhow::Result<String> {
    let path = config.common.data_dir.join(files::SERVER_NAMES);
    let names = std::fs::read_to_string(&path)
        .with_context(|| format!("--host-name: not given, and {} cannot be read", path.display()))?;
    names
        .lines()
        .map(str::trim)
        .find(|n| !n.is_empty())
        .map(str::to_owned)
        .with_context(|| format!("--host-name: not given, and {} names no host", path.display()))
}
