//! The `serve`, `migrate`, `rotate-master-key` and `admin-token` commands: start-up, listeners, and graceful shutdown.

use std::net::TcpListener;
use std::sync::Arc;

use anyhow::Context;
use tokio_util::sync::CancellationToken;
use zeroize::Zeroizing;
use zerotouch_store::Store;

use crate::auth::Verifier;
use crate::config::{
    AdminTokenArgs, CommonConfig, Config, MasterKeySource, RotateConfig, RotateMasterKeyArgs, ServeArgs, SettingArgs,
    TokenIssuer, redact_url,
};
use crate::data_dir::{self, files};
use crate::http::{AdminState, admin_server, device_server};
use crate::hubs::{HubSettings, Hubs};
use crate::metrics::Metrics;
use crate::pki::Pki;
use crate::registration::limits::DeviceLimits;
use crate::registration::{RegistrationService, RegistrationSettings};

async fn connect(database_url: &str) -> anyhow::Result<Store> {
    let store = Store::connect(database_url)
        .await
        .with_context(|| format!("--database-url: cannot open {}", redact_url(database_url)))?;
    // The SQLite file holds enrollment keys: only the service's user may read it (SQLite gives its -wal and -shm
    // files the database file's mode).
    if let Some(path) = sqlite_path(database_url) {
        for suffix in ["", "-wal", "-shm"] {
            let file = std::path::PathBuf::from(format!("{}{suffix}", path.display()));
            if file.exists() {
                std::fs::set_permissions(&file, std::os::unix::fs::PermissionsExt::from_mode(0o600))
                    .with_context(|| format!("cannot restrict {}", file.display()))?;
            }
        }
    }
    Ok(store)
}

/// Cancels `shutdown` on SIGTERM or SIGINT.
async fn cancel_on_signal(shutdown: CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    let signals = (signal(SignalKind::terminate()), signal(SignalKind::interrupt()));
    let (mut term, mut int) = match signals {
        (Ok(term), Ok(int)) => (term, int),
        (Err(e), _) | (_, Err(e)) => {
            tracing::error!("cannot listen for signals: {e}");
            return;
        }
    };
    let signal = tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
        () = shutdown.cancelled() => return,
    };
    tracing::info!("{signal}: finishing in-flight requests, then stopping");
    shutdown.cancel();
}

/// The service's listeners, bound before it starts (tests bind port 0 and read the addresses back).
#[derive(Debug)]
pub struct Listeners {
    /// The admin API.
    pub admin: TcpListener,
    /// The HTTPS device API (and EST).
    pub device: TcpListener,
    /// The MQTT device endpoint.
    pub mqtt: TcpListener,
}

impl Listeners {
    /// Binds the addresses of `config`.
    pub fn bind(config: &Config) -> anyhow::Result<Self> {
        let bind = |address: std::net::SocketAddr, flag: &str| {
            TcpListener::bind(address).with_context(|| format!("{flag}: cannot listen on {address}"))
        };
        Ok(Self {
            admin: bind(config.service_listen, "--service-listen")?,
            device: bind(config.device_listen, "--device-listen")?,
            mqtt: bind(config.mqtt_listen, "--mqtt-listen")?,
        })
    }
}

/// `zerotouch serve`: runs the service on the configured addresses until SIGTERM or SIGINT.
pub async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let config = Config::resolve(&args)?;
    let listeners = Listeners::bind(&config)?;
    let shutdown = CancellationToken::new();
    tokio::spawn(cancel_on_signal(shutdown.clone()));
    run(&config, listeners, shutdown).await
}

/// Runs the whole service on bound `listeners` until `shutdown` is cancelled (or a server stops by itself): the
/// data dir and the database are prepared, the servers and background tasks started, and what runs where is
/// printed. On shutdown the servers stop accepting and finish their requests (up to `--shutdown-timeout`), the
/// background tasks stop at their next step, and the database is closed.
pub async fn run(config: &Config, listeners: Listeners, shutdown: CancellationToken) -> anyhow::Result<()> {
    let data = data_dir::prepare(
        &config.data_dir,
        &data_dir::Needs {
            hostnames: &config.hostnames,
            id_scope: config.id_scope.as_deref(),
            own_tls: config.tls_files.is_some(),
            development_tokens: config.auth.issuer == TokenIssuer::Development,
            master_key: config.master_key == MasterKeySource::DataDir,
        },
    )?;
    let store = open(config).await?;
    unlock_secrets(config, &data, &store, shutdown.clone()).await?;
    let verifier = Verifier::new(&config.auth, &data.path, &config.outbound).await?;
    let (cert, key) = match &config.tls_files {
        Some((cert, key)) => (cert.clone(), key.clone()),
        None => (data.file(files::SERVER_CERT), data.file(files::SERVER_KEY)),
    };
    let tls = crate::tls::server_config(&cert, &key)?;
    let device_tls = crate::tls::device_server_config(&cert, &key)?;
    let device_addr = listeners.device.local_addr()?;
    announce(config, &data, &cert, &listeners)?;
    let pki = Arc::new(start_pki(config, &data, &store, device_addr.port()).await?);

    let metrics = Metrics::new()?;
    let hubs = Arc::new(Hubs::new(
        store.clone(),
        HubSettings { inline_timeout: config.hub_inline_timeout, deadline: config.hub_deadline },
        metrics.clone(),
        config.outbound.clone(),
    ));
    let (count, window) = config.device_rate_limit;
    let registrations = Arc::new(RegistrationService::new(
        store.clone(),
        pki.clone(),
        hubs.clone(),
        RegistrationSettings {
            id_scope: data.id_scope.clone(),
            sas_clock_skew: config.sas_clock_skew,
            sas_max_lifetime: config.sas_max_lifetime,
            operation_ttl: config.operation_ttl,
            tpm_challenge_ttl: config.tpm_challenge_ttl,
        },
        DeviceLimits::new(count, window, config.device_max_in_flight),
        config.outbound.clone(),
    )?);
    let tasks = [
        tokio::spawn(Arc::clone(&registrations).expire_operations(shutdown.clone())),
        tokio::spawn(Arc::clone(&registrations).sweep_caches(shutdown.clone())),
        tokio::spawn(Arc::clone(&pki).refresh_crls(shutdown.clone())),
        tokio::spawn(Arc::clone(&hubs).run_worker(shutdown.clone())),
        tokio::spawn(expire_audit(store.clone(), config.audit_retention, shutdown.clone())),
    ];
    let service_sas = crate::auth::ServiceSas {
        enabled: config.shared_access_policies,
        host_names: config.hostnames.clone(),
        clock_skew: config.sas_clock_skew,
        max_lifetime: config.service_sas_max_lifetime,
    };
    let state =
        AdminState { store: store.clone(), verifier, metrics: metrics.clone(), pki: pki.clone(), hubs, service_sas };
    // Requests run in this runtime's context, which outlives the servers' workers (`main_runtime.rs`).
    let runtime = tokio::runtime::Handle::current();
    let admin = admin_server(listeners.admin, tls, state, config.shutdown_timeout, runtime.clone())?;
    let mqtt = crate::mqtt::MqttEndpoint::start(
        listeners.mqtt,
        &device_tls,
        registrations.clone(),
        metrics.clone(),
        crate::mqtt::MqttSettings {
            max_connections: config.mqtt_max_connections,
            max_connections_per_device: config.mqtt_max_connections_per_device,
            sas_clock_skew: config.sas_clock_skew,
            renewal_grace: config.renewal_grace,
            workers: std::thread::available_parallelism().map_or(2, usize::from),
            shutdown_timeout: config.shutdown_timeout,
            runtime: runtime.clone(),
        },
    )?;
    let device =
        device_server(listeners.device, device_tls, registrations, pki, metrics, config.shutdown_timeout, runtime)?;
    let (admin_handle, device_handle, mqtt_stopper) = (admin.handle(), device.handle(), mqtt.stopper());
    let stopping = shutdown.clone();
    tokio::spawn(async move {
        stopping.cancelled().await;
        tokio::join!(admin_handle.stop(true), device_handle.stop(true), mqtt_stopper.stop());
    });
    let (admin, device) = tokio::join!(admin, device);
    // A server that stopped by itself stops everything else too.
    shutdown.cancel();
    mqtt.stop().await?;
    admin.context("admin API server")?;
    device.context("device API server")?;
    for task in tasks {
        match tokio::time::timeout(config.shutdown_timeout, task).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::error!("a background task failed: {e}"),
            Err(_) => tracing::warn!("a background task did not stop within the shutdown timeout; leaving it"),
        }
    }
    store.close().await?;
    tracing::info!("stopped");
    Ok(())
}

/// Deletes audit events older than `retention`, at start and every hour, until `shutdown` is cancelled.
async fn expire_audit(store: Store, retention: std::time::Duration, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(3600));
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = shutdown.cancelled() => return,
        }
        let Ok(retention) = chrono::Duration::from_std(retention) else { return };
        match store.audit().delete_before(chrono::Utc::now() - retention).await {
            Ok(0) => {}
            Ok(n) => tracing::info!("deleted {n} audit events older than --audit-retention"),
            Err(e) => tracing::warn!("cannot delete old audit events: {e}"),
        }
    }
}

/// Loads the master key and unlocks the database's secrets with it (sealing, on the first start after an upgrade,
/// what 0.1 stored in clear, and its CA keys encrypted with the passphrase). A wrong master key or CA passphrase stops
/// the start here, before anything listens, with a message that names it.
async fn unlock_secrets(
    config: &Config,
    data: &data_dir::DataDir,
    store: &Store,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let production = config.auth.issuer != TokenIssuer::Development || config.tls_files.is_some();
    if production {
        for path in crate::master_key::files_in_data_dir(&config.master_key, &config.ca_passphrase, &data.path) {
            tracing::warn!(
                "{} is in the data dir of a production install: whoever copies the data dir (or its backup) has the \
                 database's key with it; keep the master key elsewhere (--master-key-file, ZEROTOUCH_MASTER_KEY or a \
                 PKCS#11 token) and remove the CA key passphrase once the start has sealed the CA keys",
                path.display()
            );
        }
    }
    if config.no_migrate && !store.is_ready().await.unwrap_or(false) {
        // The data key's table may not exist yet: the secrets are unlocked once `zerotouch migrate` has run, and
        // /readyz answers 503 until then. A wrong key found then stops the service, as it would have stopped the start.
        tokio::spawn(unlock_when_migrated(config.clone(), data.path.clone(), store.clone(), shutdown));
        return Ok(());
    }
    unlock_now(config, &data.path, store).await
}

/// Waits for the schema (`--no-migrate` before `zerotouch migrate` ran), then unlocks the secrets; on failure says
/// why and stops the service.
async fn unlock_when_migrated(config: Config, data_dir: std::path::PathBuf, store: Store, shutdown: CancellationToken) {
    loop {
        tokio::select! {
            () = tokio::time::sleep(std::time::Duration::from_millis(100)) => {}
            () = shutdown.cancelled() => return,
        }
        if !store.is_ready().await.unwrap_or(false) {
            continue;
        }
        if let Err(e) = unlock_now(&config, &data_dir, &store).await {
            tracing::error!("stopping: {e:#}");
            shutdown.cancel();
        }
        return;
    }
}

/// Loads the master key, unlocks the store and seals 0.1's CA keys, printing what it sealed.
async fn unlock_now(config: &Config, data_dir: &std::path::Path, store: &Store) -> anyhow::Result<()> {
    let master = crate::master_key::load(&config.master_key, data_dir)?;
    let unlocked = crate::master_key::unlock(store, &master).await?;
    if unlocked.created {
        println!(
            "zerotouch: sealed the database's secrets under data key {} (master key {}: {}); {} stored in clear were \
             sealed in place",
            unlocked.data_key,
            master.cipher.key_id(),
            master.origin,
            unlocked.sealed_in_place
        );
    }
    let sealed = crate::master_key::seal_legacy_ca_keys(store, &config.ca_passphrase, data_dir).await?;
    if sealed > 0 {
        println!("zerotouch: sealed {sealed} issuing CA key(s) of 0.1 (CA key passphrase) under the master key");
    }
    Ok(())
}

/// Opens the database and migrates it (unless `--no-migrate`).
async fn open(config: &Config) -> anyhow::Result<Store> {
    let store = connect(&config.database_url).await?;
    if config.no_migrate {
        if !store.is_ready().await.unwrap_or(false) {
            tracing::warn!(
                "--no-migrate: the schema is not current; /readyz answers 503 until `zerotouch migrate` runs"
            );
        }
    } else {
        store.migrate().await.context("applying database migrations")?;
    }
    Ok(store)
}

/// Prints what runs where, for the operator.
fn announce(
    config: &Config,
    data: &data_dir::DataDir,
    cert: &std::path::Path,
    listeners: &Listeners,
) -> anyhow::Result<()> {
    let dir = data.path.display();
    if !data.created.is_empty() {
        println!("zerotouch: created in {dir}: {}", data.created.join(", "));
    }
    println!("zerotouch: data dir      {dir}");
    println!("zerotouch: database      {}", redact_url(&config.database_url));
    println!("zerotouch: id scope      {}", data.id_scope);
    println!("zerotouch: trust bundle  {}", data.file(files::TRUST_BUNDLE).display());
    if data.file(files::ROOT_CERT).exists() {
        println!("zerotouch: root CA       {}", data.file(files::ROOT_CERT).display());
    }
    println!("zerotouch: server cert   {}", cert.display());
    match &config.auth.issuer {
        TokenIssuer::Development => println!(
            "zerotouch: token key     {} (zerotouch admin-token --data-dir {dir})",
            data.file(files::TOKEN_KEY).display()
        ),
        TokenIssuer::External { issuer, .. } => println!("zerotouch: token issuer  {issuer}"),
    }
    println!("zerotouch: admin API     https://{}", listeners.admin.local_addr()?);
    println!("zerotouch: device API    https://{}", listeners.device.local_addr()?);
    println!("zerotouch: MQTT device   mqtts://{}", listeners.mqtt.local_addr()?);
    Ok(())
}

/// The managed CA. A development install (admin tokens from the development key) issues under its development
/// root at once; a production one waits for an issuing CA signed offline (POST /pki/issuingCAs).
async fn start_pki(config: &Config, data: &data_dir::DataDir, store: &Store, device_port: u16) -> anyhow::Result<Pki> {
    let crl_url = config.crl_url.clone().unwrap_or_else(|| {
        let host = config.hostnames.first().map_or("localhost", String::as_str);
        format!("https://{host}:{device_port}/pki/crl")
    });
    let pki = Pki::new(store.clone(), crl_url, config.renewal_grace);
    // A development install: development tokens and the development root's key (which a production install never
    // has, `data_dir.rs`).
    let development = config.auth.issuer == TokenIssuer::Development && data.file(files::ROOT_KEY).exists();
    if development && (!config.no_migrate || store.is_ready().await.unwrap_or(false)) {
        let root_key = Zeroizing::new(std::fs::read_to_string(data.file(files::ROOT_KEY))?);
        let root_cert = std::fs::read_to_string(data.file(files::ROOT_CERT))?;
        if pki.ensure_development_ca(&root_cert, &root_key).await.context("creating the development issuing CA")? {
            println!("zerotouch: created the development issuing CA under the development root");
        }
    }
    Ok(pki)
}

/// `zerotouch migrate`.
pub async fn migrate(args: SettingArgs) -> anyhow::Result<()> {
    let config = CommonConfig::resolve(&args)?;
    if let Some(parent) = sqlite_path(&config.database_url).as_deref().and_then(std::path::Path::parent)
        && !parent.as_os_str().is_empty()
    {
        std::fs::create_dir_all(parent).with_context(|| format!("cannot create {}", parent.display()))?;
    }
    let store = connect(&config.database_url).await?;
    store.migrate().await.context("applying database migrations")?;
    store.close().await?;
    println!("zerotouch: migrations applied to {}", redact_url(&config.database_url));
    Ok(())
}

/// The file of an SQLite URL (`sqlite://FILE?...` or `sqlite:FILE`).
fn sqlite_path(url: &str) -> Option<std::path::PathBuf> {
    let rest = url.strip_prefix("sqlite://").or_else(|| url.strip_prefix("sqlite:"))?;
    let path = rest.split('?').next().filter(|p| !p.is_empty() && *p != ":memory:")?;
    Some(std::path::PathBuf::from(path))
}

/// `zerotouch rotate-master-key`.
pub async fn rotate_master_key(args: RotateMasterKeyArgs) -> anyhow::Result<()> {
    crate::master_key::rotate(&RotateConfig::resolve(&args)?).await
}

/// `zerotouch admin-token`.
pub fn admin_token(args: AdminTokenArgs) -> anyhow::Result<()> {
    let config = CommonConfig::resolve(&args.settings)?;
    if let TokenIssuer::External { issuer, .. } = &config.auth.issuer {
        anyhow::bail!("refused: tokens come from the configured issuer {issuer:?}, not from the development key");
    }
    let token = crate::auth::sign_development_token(
        &config.data_dir,
        &config.auth.audience,
        &args.subject,
        &args.role,
        args.ttl,
    )?;
    println!("{token}");
    Ok(())
}
