//! The `serve`, `migrate` and `admin-token` commands: start-up, listeners, and graceful shutdown.

use std::net::TcpListener;
use std::sync::Arc;
use std::time::Duration;

use actix_web::dev::Server;
use actix_web::middleware::from_fn;
use actix_web::{App, HttpServer, web};
use anyhow::Context;
use zeroize::Zeroizing;
use zerotouch_pki::Passphrase;
use zerotouch_store::Store;

use crate::auth::Verifier;
use crate::config::{
    AdminTokenArgs, CA_PASSPHRASE_ENV, CommonConfig, Config, PassphraseSource, ServeArgs, SettingArgs, TokenIssuer,
    redact_url,
};
use crate::data_dir::{self, files};
use crate::hubs::{HubSettings, Hubs};
use crate::metrics::{Listener, Metrics};
use crate::pki::Pki;
use crate::registration::limits::DeviceLimits;
use crate::registration::{RegistrationService, RegistrationSettings};

/// What every admin request handler may use.
#[derive(Clone)]
pub struct AdminState {
    /// The database.
    pub store: Store,
    /// The admin-token verifier.
    pub verifier: Arc<Verifier>,
    /// The metrics registry.
    pub metrics: Metrics,
    /// The managed CA.
    pub pki: Arc<Pki>,
    /// The hubs' adapters and the outbox.
    pub hubs: Arc<Hubs>,
}

/// Builds the admin API server on an already-bound listener (tests bind port 0).
pub fn admin_server(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    state: AdminState,
    shutdown_timeout: Duration,
) -> anyhow::Result<Server> {
    // Handlers reach the store only through their `Caller` (which opens the `AdminStore`), and `/readyz` only
    // through `Readiness`: no handler takes the `Store` itself.
    let readiness = web::Data::new(state.store.readiness());
    let store = web::Data::new(crate::auth::AdminStore::new(state.store));
    let verifier = web::Data::from(state.verifier);
    let metrics = web::Data::new(state.metrics);
    let pki = web::Data::from(state.pki);
    let hubs = web::Data::from(state.hubs);
    let server = HttpServer::new(move || {
        App::new()
            .app_data(store.clone())
            .app_data(readiness.clone())
            .app_data(pki.clone())
            .app_data(hubs.clone())
            .app_data(verifier.clone())
            .app_data(metrics.clone())
            .app_data(web::Data::new(Listener("service")))
            .app_data(path_errors())
            .wrap(from_fn(crate::metrics::observe))
            .configure(crate::admin::configure)
    })
    .on_connect(no_delay)
    .disable_signals()
    .shutdown_timeout(shutdown_timeout.as_secs())
    .listen_rustls_0_23(listener, (*tls).clone())?
    .run();
    Ok(server)
}

/// The certificate chain a device presented in its TLS handshake (DER, its own certificate first). The
/// handshake proved the device holds that certificate's key; the chain itself is judged by the registration
/// service.
#[derive(Debug, Clone)]
pub struct PeerCertificates(pub Vec<Vec<u8>>);

/// Every device connection: no Nagle, and the client's certificates kept for the requests on it.
fn device_connection(connection: &dyn std::any::Any, data: &mut actix_web::dev::Extensions) {
    no_delay(connection, data);
    type Tls = actix_tls::accept::rustls_0_23::TlsStream<actix_web::rt::net::TcpStream>;
    if let Some(tls) = connection.downcast_ref::<Tls>()
        && let Some(chain) = tls.get_ref().1.peer_certificates()
        && !chain.is_empty()
    {
        data.insert(PeerCertificates(chain.iter().map(|c| c.to_vec()).collect()));
    }
}

/// Turns Nagle's algorithm off on every accepted connection. Without this, a response written after a small
/// TLS record (rustls sends session tickets right after the handshake) waits for the client's delayed ACK: 40 ms
/// added to a request that takes two.
fn no_delay(connection: &dyn std::any::Any, _: &mut actix_web::dev::Extensions) {
    type Tls = actix_tls::accept::rustls_0_23::TlsStream<actix_web::rt::net::TcpStream>;
    if let Some(tls) = connection.downcast_ref::<Tls>()
        && let Err(e) = tls.get_ref().0.set_nodelay(true)
    {
        tracing::debug!("cannot set TCP_NODELAY: {e}");
    }
}

fn path_errors() -> web::PathConfig {
    web::PathConfig::default().error_handler(|e, _| crate::error::ApiError::InvalidId(format!("path: {e}")).into())
}

/// Builds the HTTPS device API server on an already-bound listener.
pub fn device_server(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    service: Arc<RegistrationService>,
    pki: Arc<Pki>,
    metrics: Metrics,
    shutdown_timeout: Duration,
) -> anyhow::Result<Server> {
    let service = web::Data::from(service);
    let pki = web::Data::from(pki);
    let metrics = web::Data::new(metrics);
    let server = HttpServer::new(move || {
        App::new()
            .app_data(service.clone())
            .app_data(pki.clone())
            .app_data(metrics.clone())
            .app_data(web::Data::new(Listener("device")))
            .app_data(path_errors())
            .wrap(from_fn(crate::metrics::observe))
            .configure(crate::est::configure_est)
            .configure(crate::est::configure_public)
            .configure(crate::device::configure)
    })
    .on_connect(device_connection)
    .disable_signals()
    .backlog(4096)
    .max_connection_rate(1024)
    .shutdown_timeout(shutdown_timeout.as_secs())
    .listen_rustls_0_23(listener, (*tls).clone())?
    .run();
    Ok(server)
}

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

/// Waits for SIGTERM or SIGINT.
async fn shutdown_signal() -> anyhow::Result<&'static str> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    Ok(tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    })
}

/// `zerotouch serve`.
pub async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let config = Config::resolve(&args)?;
    let data = data_dir::prepare(
        &config.data_dir,
        &data_dir::Needs {
            hostnames: &config.hostnames,
            id_scope: config.id_scope.as_deref(),
            own_tls: config.tls_files.is_some(),
            development_tokens: config.auth.issuer == TokenIssuer::Development,
            ca_passphrase: config.ca_passphrase == PassphraseSource::DataDir,
        },
    )?;
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
    let verifier = Verifier::new(&config.auth, &data.path).await?;
    let (cert, key) = match &config.tls_files {
        Some((cert, key)) => (cert.clone(), key.clone()),
        None => (data.file(files::SERVER_CERT), data.file(files::SERVER_KEY)),
    };
    let tls = crate::tls::server_config(&cert, &key)?;
    let device_tls = crate::tls::device_server_config(&cert, &key)?;
    let listener = TcpListener::bind(config.service_listen)
        .with_context(|| format!("--service-listen: cannot listen on {}", config.service_listen))?;
    let service_addr = listener.local_addr()?;
    let device_listener = TcpListener::bind(config.device_listen)
        .with_context(|| format!("--device-listen: cannot listen on {}", config.device_listen))?;
    let device_addr = device_listener.local_addr()?;
    let mqtt_listener = TcpListener::bind(config.mqtt_listen)
        .with_context(|| format!("--mqtt-listen: cannot listen on {}", config.mqtt_listen))?;
    let mqtt_addr = mqtt_listener.local_addr()?;

    let dir = data.path.display();
    if !data.created.is_empty() {
        println!("zerotouch: created in {dir}: {}", data.created.join(", "));
    }
    println!("zerotouch: data dir      {dir}");
    println!("zerotouch: database      {}", redact_url(&config.database_url));
    println!("zerotouch: id scope      {}", data.id_scope);
    println!("zerotouch: trust bundle  {}", data.file(files::TRUST_BUNDLE).display());
    println!("zerotouch: root CA       {}", data.file(files::ROOT_CERT).display());
    println!("zerotouch: server cert   {}", cert.display());
    match &config.auth.issuer {
        TokenIssuer::Development => println!(
            "zerotouch: token key     {} (zerotouch admin-token --data-dir {dir})",
            data.file(files::TOKEN_KEY).display()
        ),
        TokenIssuer::External { issuer, .. } => println!("zerotouch: token issuer  {issuer}"),
    }
    println!("zerotouch: admin API     https://{service_addr}");
    println!("zerotouch: device API    https://{device_addr}");
    println!("zerotouch: MQTT device   mqtts://{mqtt_addr}");

    let crl_url = config.crl_url.clone().unwrap_or_else(|| {
        let host = config.hostnames.first().map_or("localhost", String::as_str);
        format!("https://{host}:{}/pki/crl", device_addr.port())
    });
    let pki = Arc::new(Pki::new(
        store.clone(),
        read_passphrase(&config.ca_passphrase, &data)?,
        crl_url,
        config.renewal_grace,
    ));
    // A development install (admin tokens from the development key) issues under its development root at once;
    // a production one waits for an issuing CA signed offline (POST /pki/issuingCAs).
    let development = config.auth.issuer == TokenIssuer::Development;
    if development && (!config.no_migrate || store.is_ready().await.unwrap_or(false)) {
        let root_key = Zeroizing::new(std::fs::read_to_string(data.file(files::ROOT_KEY))?);
        let root_cert = std::fs::read_to_string(data.file(files::ROOT_CERT))?;
        if pki.ensure_development_ca(&root_cert, &root_key).await.context("creating the development issuing CA")? {
            println!("zerotouch: created the development issuing CA under the development root");
        }
    }

    let metrics = Metrics::new()?;
    let hubs = Arc::new(Hubs::new(
        store.clone(),
        HubSettings { inline_timeout: config.hub_inline_timeout, deadline: config.hub_deadline },
        metrics.clone(),
    ));
    let (count, window) = config.device_rate_limit;
    let registrations = Arc::new(RegistrationService::new(
        store.clone(),
        pki.clone(),
        hubs.clone(),
        RegistrationSettings {
            id_scope: data.id_scope.clone(),
            sas_clock_skew: config.sas_clock_skew,
            operation_ttl: config.operation_ttl,
            tpm_challenge_ttl: config.tpm_challenge_ttl,
        },
        DeviceLimits::new(count, window, config.device_max_in_flight),
    )?);
    let expiry = tokio::spawn(Arc::clone(&registrations).expire_operations());
    let crls = tokio::spawn(Arc::clone(&pki).refresh_crls());
    let outbox = tokio::spawn(Arc::clone(&hubs).run_worker());
    let state = AdminState { store: store.clone(), verifier, metrics: metrics.clone(), pki: pki.clone(), hubs };
    let admin = admin_server(listener, tls, state, config.shutdown_timeout)?;
    let mqtt = crate::mqtt::MqttEndpoint::start(
        mqtt_listener,
        &device_tls,
        registrations.clone(),
        metrics.clone(),
        crate::mqtt::MqttSettings {
            max_connections: config.mqtt_max_connections,
            workers: std::thread::available_parallelism().map_or(2, usize::from),
            shutdown_timeout: config.shutdown_timeout,
        },
    )?;
    let device =
        device_server(device_listener, device_tls, registrations, pki.clone(), metrics, config.shutdown_timeout)?;
    let handles = [admin.handle(), device.handle()];
    let mqtt_stopper = mqtt.stopper();
    tokio::spawn(async move {
        match shutdown_signal().await {
            Ok(signal) => tracing::info!("{signal}: finishing in-flight requests, then stopping"),
            Err(e) => tracing::error!("cannot listen for signals: {e}"),
        }
        let [admin, device] = handles;
        tokio::join!(admin.stop(true), device.stop(true), mqtt_stopper.stop());
    });
    let (admin, device) = tokio::join!(admin, device);
    mqtt.stop().await?;
    admin.context("admin API server")?;
    device.context("device API server")?;
    expiry.abort();
    outbox.abort();
    crls.abort();
    store.close().await?;
    tracing::info!("stopped");
    Ok(())
}

/// The passphrase encrypting the CA keys, from where the configuration says.
fn read_passphrase(source: &PassphraseSource, data: &data_dir::DataDir) -> anyhow::Result<Passphrase> {
    let (text, origin) = match source {
        PassphraseSource::File(path) => (
            Zeroizing::new(
                std::fs::read_to_string(path)
                    .with_context(|| format!("--ca-passphrase-file: cannot read {}", path.display()))?,
            ),
            "--ca-passphrase-file",
        ),
        PassphraseSource::Environment => (
            Zeroizing::new(
                std::env::var(CA_PASSPHRASE_ENV).with_context(|| format!("{CA_PASSPHRASE_ENV} is not text"))?,
            ),
            CA_PASSPHRASE_ENV,
        ),
        PassphraseSource::DataDir => {
            let path = data.file(files::CA_PASSPHRASE);
            (
                Zeroizing::new(
                    std::fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?,
                ),
                files::CA_PASSPHRASE,
            )
        }
    };
    // A trailing newline is how editors and `echo` end a file; it is not part of the passphrase.
    Passphrase::new(text.trim_end_matches(['\r', '\n'])).map_err(|e| anyhow::anyhow!("{origin}: {e}"))
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
