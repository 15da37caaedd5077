//! The HTTPS transports: the admin API ([`admin`]) and the device API ([`device`], EST in [`est`]) on actix-web,
//! each server built on an already-bound listener (tests bind port 0), and the one place errors become HTTP
//! answers ([`error`]).

pub mod admin;
pub mod device;
pub mod error;
pub mod est;
pub mod request;

use std::net::TcpListener;
use std::sync::Arc;
use std::time::Duration;

use actix_web::dev::{Server, Service};
use actix_web::middleware::from_fn;
use actix_web::{App, HttpServer, web};
use tokio::runtime::Handle;
use zerotouch_store::Store;

use crate::auth::Verifier;
use crate::hubs::Hubs;
use crate::main_runtime::OnMainRuntime;
use crate::metrics::{Listener, Metrics};
use crate::pki::Pki;
use crate::registration::RegistrationService;
use crate::tls::PeerCertificates;

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
    /// How `SharedAccessSignature` tokens of shared access policies are checked.
    pub service_sas: crate::auth::ServiceSas,
}

/// Builds the admin API server on an already-bound listener (tests bind port 0). Its requests run in `runtime`'s
/// context ([`crate::main_runtime`]), as the device server's do.
pub fn admin_server(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    state: AdminState,
    shutdown_timeout: Duration,
    runtime: Handle,
) -> anyhow::Result<Server> {
    // Handlers reach the store only through their `Caller` (which opens the `AdminStore`), and `/readyz` only
    // through `Readiness`: no handler takes the `Store` itself.
    let readiness = web::Data::new(state.store.readiness());
    let store = web::Data::new(crate::auth::AdminStore::new(state.store));
    let verifier = web::Data::from(state.verifier);
    let metrics = web::Data::new(state.metrics);
    let pki = web::Data::from(state.pki);
    let hubs = web::Data::from(state.hubs);
    let service_sas = web::Data::new(state.service_sas);
    let server = HttpServer::new(move || {
        let runtime = runtime.clone();
        App::new()
            .app_data(store.clone())
            .app_data(service_sas.clone())
            .app_data(readiness.clone())
            .app_data(pki.clone())
            .app_data(hubs.clone())
            .app_data(verifier.clone())
            .app_data(metrics.clone())
            .app_data(web::Data::new(Listener("service")))
            .app_data(path_errors())
            .wrap(from_fn(admin::canonical_case))
            .wrap(from_fn(crate::metrics::observe))
            .wrap_fn(move |request, app| OnMainRuntime::new(runtime.clone(), app.call(request)))
            .configure(admin::configure)
    })
    .on_connect(no_delay)
    .disable_signals()
    .shutdown_timeout(shutdown_timeout.as_secs())
    .listen_rustls_0_23(listener, (*tls).clone())?
    .run();
    Ok(server)
}

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
    web::PathConfig::default().error_handler(|e, _| error::ApiError::InvalidId(format!("path: {e}")).into())
}

/// Builds the HTTPS device API server on an already-bound listener; its requests run in `runtime`'s context
/// ([`crate::main_runtime`]).
pub fn device_server(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    service: Arc<RegistrationService>,
    pki: Arc<Pki>,
    metrics: Metrics,
    shutdown_timeout: Duration,
    runtime: Handle,
) -> anyhow::Result<Server> {
    let service = web::Data::from(service);
    let pki = web::Data::from(pki);
    let metrics = web::Data::new(metrics);
    let server = HttpServer::new(move || {
        let runtime = runtime.clone();
        App::new()
            .app_data(service.clone())
            .app_data(pki.clone())
            .app_data(metrics.clone())
            .app_data(web::Data::new(Listener("device")))
            .app_data(path_errors())
            .wrap(from_fn(crate::metrics::observe))
            .wrap_fn(move |request, app| OnMainRuntime::new(runtime.clone(), app.call(request)))
            // Devices' routes first: actix tries routes in order, and each route with a variable segment is a
            // regular expression run on the path; no path matches both a device route and an EST or PKI one.
            .configure(device::configure)
            .configure(est::configure_est)
            .configure(est::configure_public)
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
