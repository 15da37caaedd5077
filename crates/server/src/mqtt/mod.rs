//! The MQTT device endpoint (`docs/protocol/device-api.md` §5): MQTT 3.1.1 over TLS with Azure DPS's topics, on the same
//! [`RegistrationService`] as the HTTPS device API.
//!
//! Thin, like `http::device`: CONNECT becomes a [`DeviceRequest`] (id scope and registration id from the username,
//! evidence from the password, a SAS token, or else the TLS client chain) that the service authenticates before
//! the CONNACK; each PUBLISH becomes a register or operation call; the answer, or the Azure error body, is
//! published back on `$dps/registrations/res/{status}/?$rid={rid}`. Nothing here decides who may register.
//!
//! The protocol comes from ntex-mqtt (a maintained MQTT server library that serves the Python SDK here, see
//! `docs/dependencies.md`), which runs its own runtime: the endpoint lives on its own thread with ntex worker threads,
//! and calls the registration service from there as actix workers do from theirs.
//!
//! Limits: `--mqtt-max-connections` connections at once (beyond: CONNACK "server unavailable"), of which one
//! device holds at most `--mqtt-max-connections-per-device` (a newer one replaces its oldest), each closed when
//! the credential it was opened with expires ([`connections`]); the TLS handshake and the CONNECT each within
//! [`CONNECT_TIMEOUT`], packets of at most [`MAX_PACKET_SIZE`] (the DPS message limit, §10), keep-alive as MQTT
//! says (1.5 times the client's; 30 s when it asks for none), QoS 0 and 1 (a QoS 2 publish closes the connection,
//! as DPS offers none). A malformed or oversized packet closes its own connection and nothing else. How errors
//! become answers and CONNACKs is decided in [`reply`].

pub mod connections;
pub mod reply;

use std::cell::Cell;
use std::net::TcpListener;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context;
use futures_util::future::Either;
use ntex::service::cfg::SharedCfg;
use ntex::service::{chain_factory, fn_factory_with_config, fn_service};
use ntex::time::{Millis, Seconds};
use ntex::util::{ByteString, Bytes};
use ntex_mqtt::{Control, MqttError, MqttServiceConfig, QoS, v3};
use ntex_tls::rustls::{PeerCertChain, TlsAcceptor};
use tokio::sync::oneshot;
use zerotouch_wire::mqtt::{RESPONSE_FILTER, Request, TopicError, Username, response_topic, rid_of};
use zerotouch_wire::registration::RegistrationStatus;

use crate::main_runtime::OnMainRuntime;
use crate::metrics::Metrics;
use crate::registration::request::{RETRY_AFTER_SECS, parse_json, registration_body};
use crate::registration::{DeviceRequest, Evidence, RegistrationError, RegistrationRequest, RegistrationService};
use connections::{DeviceConnections, Lease, credential_expiry};
use reply::{ConnectRefusal, Reply, RequestError};

/// Largest packet a device may send: the DPS message limit (`docs/protocol/device-api.md` §10: 96 KB).
pub const MAX_PACKET_SIZE: u32 = 96 * 1024;
/// How long the TLS handshake, and then the CONNECT packet, may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Requests of one connection being answered at once; more are answered 429 at once.
const MAX_PENDING_PER_CONNECTION: usize = 8;

/// How the endpoint runs.
#[derive(Debug, Clone)]
pub struct MqttSettings {
    /// Connections at once, over all workers.
    pub max_connections: usize,
    /// Connections one device (registration id) holds at once, over all workers; a newer one replaces its oldest.
    pub max_connections_per_device: usize,
    /// How long after its `se` a SAS token still authenticates (`--sas-clock-skew`): its connection ends then.
    pub sas_clock_skew: Duration,
    /// How long after its notAfter an operational certificate still authenticates (`--renewal-grace`).
    pub renewal_grace: Duration,
    /// Worker threads.
    pub workers: usize,
    /// How long open connections may finish their requests at shutdown.
    pub shutdown_timeout: Duration,
    /// The runtime in whose context requests run ([`crate::main_runtime`]).
    pub runtime: tokio::runtime::Handle,
}

/// The running endpoint: its own thread and ntex runtime.
pub struct MqttEndpoint {
    stopper: MqttStopper,
    thread: std::thread::JoinHandle<std::io::Result<()>>,
    shutdown_timeout: Duration,
}

/// Stops the endpoint, once: ntex's server takes one stop command, and a second one would wait forever.
#[derive(Clone)]
pub struct MqttStopper(Arc<std::sync::Mutex<Option<ntex::server::Server>>>);

impl MqttStopper {
    /// Stops accepting and lets open connections finish (up to the shutdown timeout); returns when that is done,
    /// or at once if the endpoint is already stopping.
    pub async fn stop(&self) {
        let server = self.0.lock().ok().and_then(|mut server| server.take());
        if let Some(server) = server {
            server.stop(true).await;
        }
    }
}

impl std::fmt::Debug for MqttEndpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MqttEndpoint(..)")
    }
}

impl MqttEndpoint {
    /// Starts the endpoint on an already-bound listener (tests bind port 0), with the device listener's TLS
    /// configuration (its server certificate, client certificates requested and judged by the application).
    pub fn start(
        listener: TcpListener,
        tls: &rustls::ServerConfig,
        service: Arc<RegistrationService>,
        metrics: Metrics,
        settings: MqttSettings,
    ) -> anyhow::Result<Self> {
        listener.set_nonblocking(true).context("--mqtt-listen: cannot make the socket non-blocking")?;
        let shutdown_timeout = settings.shutdown_timeout;
        let mut tls = tls.clone();
        // The device listener offers h2 and http/1.1; an MQTT client that offers its own ALPN must not fail on it.
        tls.alpn_protocols.clear();
        let tls = Arc::new(tls);
        let (started, server) = std::sync::mpsc::channel();
        let thread = std::thread::Builder::new().name("mqtt".into()).spawn(move || {
            ntex::rt::System::build().name("mqtt").disable_signals().build(ntex::rt::DefaultRuntime).block_on(
                async move {
                    let server = match build(listener, tls, service, metrics, &settings) {
                        Ok(server) => server,
                        Err(e) => {
                            let _ = started.send(Err(e));
                            return Ok(());
                        }
                    };
                    let _ = started.send(Ok(server.clone()));
                    server.await
                },
            )
        })?;
        let server = server.recv().context("the MQTT endpoint did not start")?.context("--mqtt-listen")?;
        Ok(Self { stopper: MqttStopper(Arc::new(std::sync::Mutex::new(Some(server)))), thread, shutdown_timeout })
    }

    /// What stops the endpoint (gracefully), from any thread.
    pub fn stopper(&self) -> MqttStopper {
        self.stopper.clone()
    }

    /// Stops the endpoint (unless a stopper did already) and waits for its thread: at most the shutdown timeout
    /// and 5 s more, after which the process exits without it (a stuck ntex timer was once seen to hold it).
    pub async fn stop(self) -> anyhow::Result<()> {
        let Self { stopper, thread, shutdown_timeout } = self;
        let stopped = async move {
            stopper.stop().await;
            tokio::task::spawn_blocking(move || thread.join()).await
        };
        match tokio::time::timeout(shutdown_timeout + Duration::from_secs(5), stopped).await {
            Ok(Ok(Ok(result))) => result.context("MQTT endpoint"),
            Ok(Ok(Err(_))) => anyhow::bail!("the MQTT endpoint's thread panicked"),
            Ok(Err(e)) => anyhow::bail!("cannot wait for the MQTT endpoint: {e}"),
            Err(_) => {
                tracing::warn!("the MQTT endpoint did not stop within the shutdown timeout; leaving it behind");
                Ok(())
            }
        }
    }
}

fn build(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    service: Arc<RegistrationService>,
    metrics: Metrics,
    settings: &MqttSettings,
) -> std::io::Result<ntex::server::Server> {
    let workers = settings.workers.max(1);
    let runtime = settings.runtime.clone();
    let slots = Arc::new(Slots { open: AtomicUsize::new(0), max: settings.max_connections });
    let admission = Arc::new(Admission {
        slots,
        devices: DeviceConnections::new(settings.max_connections_per_device),
        sas_clock_skew: settings.sas_clock_skew,
        renewal_grace: settings.renewal_grace,
    });
    let config = SharedCfg::new("MQTT")
        .add(
            MqttServiceConfig::new()
                .set_max_size(MAX_PACKET_SIZE)
                .set_max_receive_size(4 * MAX_PACKET_SIZE as usize)
                .set_max_qos(QoS::AtLeastOnce)
                .set_connect_timeout(Seconds(CONNECT_TIMEOUT.as_secs() as u16))
                .protocol_version_timeout(Seconds(CONNECT_TIMEOUT.as_secs() as u16)),
        )
        .add(ntex_tls::TlsConfig::new().set_handshake_timeout(Seconds(CONNECT_TIMEOUT.as_secs() as u16)));
    Ok(ntex::server::build()
        .workers(workers)
        .backlog(4096)
        .disable_signals()
        .shutdown_timeout(Millis(u32::try_from(settings.shutdown_timeout.as_millis()).unwrap_or(u32::MAX)))
        .listen("mqtt", listener, async move |_| {
            let (on_connect, on_publish, metrics, admission) =
                (service.clone(), service.clone(), metrics.clone(), admission.clone());
            let (connect_runtime, publish_runtime) = (runtime.clone(), runtime.clone());
            let server = v3::MqttServer::new(fn_service(move |handshake| {
                connect(handshake, on_connect.clone(), admission.clone(), connect_runtime.clone())
            }))
            .control(fn_factory_with_config(async |_: v3::Session<Device>| {
                Ok::<_, ConnectionError>(fn_service(async |control: Control<ConnectionError>| {
                    if let Control::Stop(reason) = &control {
                        tracing::debug!("MQTT connection ends: {reason:?}");
                    }
                    Ok::<_, ConnectionError>(None)
                }))
            }))
            .protocol(fn_factory_with_config(async |session: v3::Session<Device>| {
                Ok::<_, ConnectionError>(fn_service(move |message| control(session.clone(), message)))
            }))
            .publish(fn_factory_with_config(move |session: v3::Session<Device>| {
                let (service, metrics, runtime) = (on_publish.clone(), metrics.clone(), publish_runtime.clone());
                async move {
                    Ok::<_, ConnectionError>(fn_service(move |publish| {
                        request(session.clone(), service.clone(), metrics.clone(), runtime.clone(), publish)
                    }))
                }
            }));
            chain_factory(TlsAcceptor::new(tls.clone()))
                .map_err(|e| MqttError::Service(ConnectionError(format!("TLS: {e}"))))
                .and_then(ntex_mqtt::MqttServer::new().v3(server))
        })?
        .config("mqtt", config)
        .run())
}

/// Why a connection ended abnormally (logged at debug level: devices that hang up are not news).
#[derive(Debug)]
struct ConnectionError(String);

impl std::fmt::Display for ConnectionError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<()> for ConnectionError {
    fn from((): ()) -> Self {
        Self("the connection failed".into())
    }
}

/// The connections open at once (`--mqtt-max-connections`), counted from their CONNECT.
///
/// Counted here rather than by ntex's per-worker `maxconn`, which was seen not to resume accepting after a
/// connection at the limit closed; a device beyond the limit gets CONNACK "server unavailable" at once and
/// retries, instead of waiting unanswered in the listen backlog.
struct Slots {
    open: AtomicUsize,
    max: usize,
}

/// One open connection's place in [`Slots`], given back when the connection ends.
struct Slot(Arc<Slots>);

impl Slots {
    fn take(self: &Arc<Self>) -> Option<Slot> {
        let taken =
            self.open.fetch_update(Ordering::AcqRel, Ordering::Acquire, |open| (open < self.max).then_some(open + 1));
        taken.is_ok().then(|| Slot(Arc::clone(self)))
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::AcqRel);
    }
}

/// What decides whether a CONNECT becomes a connection, and for how long: shared by all workers.
struct Admission {
    /// The connections open at once.
    slots: Arc<Slots>,
    /// The connections of each device.
    devices: Arc<DeviceConnections>,
    /// `--sas-clock-skew`, for when a token connection ends.
    sas_clock_skew: Duration,
    /// `--renewal-grace`, for when a renewing certificate connection ends.
    renewal_grace: Duration,
}

/// One authenticated device connection.
struct Device {
    /// Its place among the open connections.
    _slot: Slot,
    /// Its place among its device's connections.
    _lease: Lease,
    /// When the credential it was opened with stops authenticating: the connection is closed then, and no
    /// request of it runs after.
    expires: Instant,
    /// Who the CONNECT proved the device to be; every request on the connection is made as it.
    request: DeviceRequest,
    /// The QoS granted to its `$dps/registrations/res/#` subscription, if it made one.
    subscription: Cell<Option<QoS>>,
    /// Requests being answered.
    pending: Cell<usize>,
}

impl Device {
    /// Whether the connection's credential has expired: nothing of it may run any more.
    fn expired(&self) -> bool {
        Instant::now() >= self.expires
    }
}

/// CONNECT (§5): client id = registration id; username `{idScope}/registrations/{registrationId}/...`; password a
/// SAS token, or none with a client certificate. The service authenticates the device as for a register and
/// audits a refusal; refused credentials answer "bad username or password" (a token) or "not authorized" (a
/// certificate, or nothing). An accepted connection takes the place of its device's oldest one beyond
/// `--mqtt-max-connections-per-device`, and is closed when its credential expires ([`connections`]). The
/// authentication runs in `runtime`'s context ([`crate::main_runtime`]).
async fn connect(
    handshake: v3::Handshake,
    service: Arc<RegistrationService>,
    admission: Arc<Admission>,
    runtime: tokio::runtime::Handle,
) -> Result<v3::HandshakeAck<Device>, ConnectionError> {
    let Some(slot) = admission.slots.take() else {
        tracing::info!(max = admission.slots.max, "MQTT connection refused: --mqtt-max-connections are open");
        return Ok(handshake.service_unavailable());
    };
    let packet = handshake.packet();
    let username = match packet.username.as_deref().map(Username::parse) {
        Some(Ok(username)) => username,
        Some(Err(e)) => {
            tracing::info!(client_id = &*packet.client_id, "MQTT connection refused: {e}");
            return Ok(handshake.bad_username_or_pwd());
        }
        None => {
            tracing::info!(client_id = &*packet.client_id, "MQTT connection refused: no username");
            return Ok(handshake.bad_username_or_pwd());
        }
    };
    if !packet.client_id.eq_ignore_ascii_case(username.registration_id.as_str()) {
        tracing::info!(
            client_id = &*packet.client_id,
            registration_id = username.registration_id.as_str(),
            "MQTT connection refused: the client id is not the username's registration id"
        );
        return Ok(handshake.identifier_rejected());
    }
    let evidence = match packet.password.as_ref().filter(|p| !p.is_empty()) {
        // A password that is not text is no token; the service refuses it (and audits that) as a bad one.
        Some(password) => Evidence::Sas(String::from_utf8_lossy(password).into_owned()),
        None => match handshake.io().query::<PeerCertChain<'static>>().as_ref() {
            Some(PeerCertChain(chain)) if !chain.is_empty() => {
                Evidence::Certificates(chain.iter().map(|c| c.to_vec()).collect())
            }
            _ => Evidence::None,
        },
    };
    let by_token = matches!(evidence, Evidence::Sas(_));
    let device = DeviceRequest { id_scope: username.id_scope, registration_id: username.registration_id, evidence };
    match OnMainRuntime::new(runtime, service.authenticate_connection(&device)).await {
        Ok(()) => {
            let registration_id = device.registration_id.as_str();
            let now = SystemTime::now();
            let expiry = credential_expiry(&device.evidence, now, admission.sas_clock_skew, admission.renewal_grace);
            let Some(lifetime) = expiry.and_then(|expiry| expiry.duration_since(now).ok()).filter(|t| !t.is_zero())
            else {
                // Authentication read the same credential, so this is a token expiring in this very moment.
                tracing::info!(registration_id, "MQTT connection refused: its credential expires now");
                return Ok(if by_token { handshake.bad_username_or_pwd() } else { handshake.not_authorized() });
            };
            let expires = Instant::now() + lifetime;
            let (lease, replaced) = admission.devices.open(device.registration_id.key().into_owned());
            ntex::rt::spawn(end_in_time(handshake.sink(), registration_id.to_owned(), expires, replaced));
            tracing::debug!(registration_id, lifetime_secs = lifetime.as_secs(), "MQTT device connected");
            let state = Device {
                _slot: slot,
                _lease: lease,
                expires,
                request: device,
                subscription: Cell::new(None),
                pending: Cell::new(0),
            };
            Ok(handshake.ack(state, false))
        }
        Err(error) => Ok(match reply::connect_refusal(&error, by_token) {
            ConnectRefusal::ServiceUnavailable => handshake.service_unavailable(),
            ConnectRefusal::BadUsernameOrPassword => handshake.bad_username_or_pwd(),
            ConnectRefusal::NotAuthorized => handshake.not_authorized(),
        }),
    }
}

/// Closes a connection when its credential expires, or when a newer connection of its device replaced it; returns
/// when the connection has ended otherwise. Holds the connection's sink, never its session, so the session (and
/// with it the lease that tells this task the connection ended) goes when the connection does.
async fn end_in_time(sink: v3::MqttSink, registration_id: String, expires: Instant, replaced: oneshot::Receiver<()>) {
    let expiry = std::pin::pin!(sleep_until(expires));
    let why = match futures_util::future::select(expiry, replaced).await {
        Either::Left(((), _)) => "the credential it was opened with expired",
        Either::Right((Ok(()), _)) => {
            "a newer connection of the device took its place (--mqtt-max-connections-per-device)"
        }
        // The lease was dropped: the connection has ended.
        Either::Right((Err(_), _)) => return,
    };
    if sink.is_open() {
        tracing::info!(registration_id, "MQTT connection closed: {why}");
        sink.close();
    }
}

/// Sleeps until `deadline`, on ntex's timer. That timer is a wheel whose slots grow coarser with the distance (a
/// one-hour sleep may end minutes late), so it sleeps three quarters of what remains at a time, and the last
/// second at once: a connection ends within some tens of milliseconds of its deadline, never before it.
async fn sleep_until(deadline: Instant) {
    /// ntex's timer takes at most 2^32 ms; a far deadline is reached in steps of a day.
    const LONGEST_STEP: Duration = Duration::from_secs(24 * 3600);
    loop {
        let remaining = deadline.saturating_duration_since(Instant::now());
        if remaining.is_zero() {
            return;
        }
        let step = if remaining > Duration::from_secs(1) { remaining - remaining / 4 } else { remaining };
        ntex::time::sleep(step.min(LONGEST_STEP)).await;
    }
}

/// Closes a connection whose credential has expired (its timer may not have fired yet), before any packet of it is
/// handled; whether it did.
fn closed_if_expired(session: &v3::Session<Device>) -> bool {
    if !session.expired() {
        return false;
    }
    tracing::info!(
        registration_id = session.request.registration_id.as_str(),
        "MQTT packet not handled, connection closed: the credential it was opened with expired"
    );
    session.sink().close();
    true
}

/// SUBSCRIBE, UNSUBSCRIBE, PING, DISCONNECT. Only `$dps/registrations/res/#` is granted, at QoS 1 at most (§5).
async fn control(
    session: v3::Session<Device>,
    message: v3::ProtocolMessage,
) -> Result<v3::ProtocolMessageAck, ConnectionError> {
    if closed_if_expired(&session) {
        return Ok(message.disconnect());
    }
    Ok(match message {
        v3::ProtocolMessage::Subscribe(mut subscribe) => {
            for mut subscription in subscribe.iter_mut() {
                if subscription.topic() == RESPONSE_FILTER {
                    let qos = match subscription.qos() {
                        QoS::AtMostOnce => QoS::AtMostOnce,
                        QoS::AtLeastOnce | QoS::ExactlyOnce => QoS::AtLeastOnce,
                    };
                    subscription.confirm(qos);
                    session.subscription.set(Some(qos));
                } else {
                    tracing::debug!(
                        registration_id = session.request.registration_id.as_str(),
                        filter = &**subscription.topic(),
                        "MQTT subscription refused: only {RESPONSE_FILTER} is served"
                    );
                    subscription.fail();
                }
            }
            subscribe.ack()
        }
        v3::ProtocolMessage::Unsubscribe(unsubscribe) => {
            if unsubscribe.iter().any(|filter| filter == RESPONSE_FILTER) {
                session.subscription.set(None);
            }
            unsubscribe.ack()
        }
        other => other.ack(),
    })
}

/// PUBLISH: acknowledged at once (QoS 1); the request is answered on its response topic when the service is
/// done. The service's work runs in `runtime`'s context ([`crate::main_runtime`]); the reply is published from the
/// worker's own.
async fn request(
    session: v3::Session<Device>,
    service: Arc<RegistrationService>,
    metrics: Metrics,
    runtime: tokio::runtime::Handle,
    publish: v3::Publish,
) -> Result<(), ConnectionError> {
    let started = Instant::now();
    if closed_if_expired(&session) {
        return Ok(());
    }
    let topic = publish.publish_topic().to_owned();
    let payload = publish.read_all().await.map_err(|e| ConnectionError(format!("payload: {e:?}")))?;
    let parsed = Request::parse(&topic);
    let route = match &parsed {
        Ok(Request::Register { .. }) => "register",
        Ok(Request::OperationStatus { .. }) => "operationStatus",
        Err(_) => "(unmatched)",
    };
    if session.pending.get() >= MAX_PENDING_PER_CONNECTION {
        let reply = Reply::error(&RegistrationError::Throttled { retry_after: 1 }.into());
        metrics.observe_mqtt(route, reply.status, started);
        ntex::rt::spawn(respond(session, rid_of(&topic).to_owned(), reply));
        return Ok(());
    }
    session.pending.set(session.pending.get() + 1);
    ntex::rt::spawn(async move {
        let rid = rid_of(&topic).to_owned();
        let reply = match OnMainRuntime::new(runtime, answer(&session, &service, parsed, &payload)).await {
            Ok(reply) => reply,
            Err(e) => Reply::error(&e),
        };
        session.pending.set(session.pending.get().saturating_sub(1));
        metrics.observe_mqtt(route, reply.status, started);
        respond(session, rid, reply).await;
    });
    Ok(())
}

/// Runs one request on the registration service.
async fn answer(
    session: &v3::Session<Device>,
    service: &RegistrationService,
    parsed: Result<Request, TopicError>,
    payload: &[u8],
) -> Result<Reply, RequestError> {
    match parsed? {
        Request::Register { .. } => {
            let body = registration_body(parse_json(payload)?)?;
            if body.tpm.is_some() {
                return Err(RequestError::TpmOverMqtt);
            }
            let operation = service.register(RegistrationRequest { device: session.request.clone(), body }).await?;
            Reply::json(202, &operation, Some(RETRY_AFTER_SECS))
        }
        // The payload of a poll is ignored (§5: Python sends " ", C the registration again).
        Request::OperationStatus { operation_id, .. } => {
            let answer = service.operation(session.request.clone(), &operation_id).await?;
            let body = answer.json.to_vec();
            Ok(if answer.status == RegistrationStatus::Assigning {
                Reply { status: 202, body, retry_after: Some(RETRY_AFTER_SECS) }
            } else {
                Reply { status: 200, body, retry_after: None }
            })
        }
    }
}

/// Publishes a reply on the device's response topic, at the QoS its subscription was granted; a device that did
/// not subscribe gets nothing (as from a broker).
async fn respond(session: v3::Session<Device>, rid: String, reply: Reply) {
    let topic = ByteString::from(response_topic(reply.status, &rid, reply.retry_after));
    let registration_id = session.request.registration_id.as_str();
    let sink = session.sink();
    let sent = match session.subscription.get() {
        None => {
            tracing::debug!(
                registration_id,
                "MQTT response dropped: the device has not subscribed to {RESPONSE_FILTER}"
            );
            return;
        }
        Some(QoS::AtMostOnce) => {
            sink.publish(topic).send_at_most_once(Bytes::from(reply.body)).map_err(|e| format!("{e:?}"))
        }
        Some(_) => sink.publish(topic).send_at_least_once(Bytes::from(reply.body)).await.map_err(|e| format!("{e:?}")),
    };
    if let Err(e) = sent {
        tracing::debug!(registration_id, "MQTT response not delivered: {e}");
    }
}
