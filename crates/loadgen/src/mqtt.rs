//! Simulated devices over the MQTT endpoint (`docs/protocol/device-api.md` §5), as the Azure device SDKs provision: each
//! opens its own new TLS connection (no session resumption), CONNECTs with its SAS token, subscribes to
//! `$dps/registrations/res/#`, publishes register, then polls the operation until it is terminal. Same devices,
//! same report as the HTTPS mode in `devices.rs`, so the two can be compared in one run.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rumqttc::{AsyncClient, ConnectionError, Event, EventLoop, MqttOptions, Packet, QoS, Transport};
use zerotouch_wire::mqtt::{
    OPERATION_STATUS_TOPIC, REGISTER_TOPIC, RESPONSE_FILTER, format_username, parse_response_topic,
};

use crate::devices::{Answer, Device, RegisterBody, Report, Target};

/// How long one device may take end to end.
const DEVICE_TIMEOUT: Duration = Duration::from_secs(30);

/// A device's MQTT session: its client and the event loop that drives the connection.
struct Session {
    client: AsyncClient,
    events: EventLoop,
}

impl Session {
    /// The next event; a connection error is the device's failure.
    async fn next(&mut self) -> Result<Event, String> {
        self.events.poll().await.map_err(|e| match e {
            ConnectionError::ConnectionRefused(code) => format!("connack {code:?}"),
            ConnectionError::Io(_) | ConnectionError::Tls(_) => "connection".to_owned(),
            other => format!("mqtt: {other}"),
        })
    }

    /// Publishes `payload` to `topic` and waits for the answer: status and body.
    async fn request(&mut self, topic: String, payload: Vec<u8>) -> Result<(u16, Answer), String> {
        self.client.publish(topic, QoS::AtLeastOnce, false, payload).await.map_err(|e| format!("publish: {e}"))?;
        loop {
            if let Event::Incoming(Packet::Publish(publish)) = self.next().await? {
                let (status, _, _) = parse_response_topic(&publish.topic).ok_or("not a response topic")?;
                let body = serde_json::from_slice(&publish.payload).unwrap_or_default();
                return Ok((status, body));
            }
        }
    }
}

/// One device's life over MQTT. Returns the time to `assigned`.
async fn provision(
    target: &Target,
    addr: SocketAddr,
    tls: &Arc<rustls::ClientConfig>,
    device: &Device,
) -> Result<Duration, String> {
    let started = Instant::now();
    let id = device.registration_id();
    let mut options = MqttOptions::new(id, addr.ip().to_string(), addr.port());
    let username = format_username(&target.id_scope, id, "2019-03-31", Some("zerotouch-loadgen"));
    options.set_credentials(username, crate::devices::sas_token(target, device));
    options.set_keep_alive(Duration::from_secs(60));
    options.set_transport(Transport::tls_with_config(rumqttc::TlsConfiguration::Rustls(Arc::clone(tls))));
    let (client, mut events) = AsyncClient::new(options, 8);
    // Nagle's algorithm off, as the HTTPS devices' client has it (rumqttc leaves it on): otherwise a publish written
    // while the previous segment waits for the server's delayed ACK waits up to 40 ms, a cost of the client.
    events.network_options.set_tcp_nodelay(true);
    let mut session = Session { client, events };
    loop {
        if let Event::Incoming(Packet::ConnAck(_)) = session.next().await? {
            break;
        }
    }
    session.client.subscribe(RESPONSE_FILTER, QoS::AtLeastOnce).await.map_err(|e| format!("subscribe: {e}"))?;
    loop {
        if let Event::Incoming(Packet::SubAck(_)) = session.next().await? {
            break;
        }
    }
    let body = serde_json::to_vec(&RegisterBody::of(device)).map_err(|e| format!("body: {e}"))?;
    let (status, answer) = session.request(format!("{REGISTER_TOPIC}?$rid=1"), body).await?;
    if status != 202 {
        return Err(answer.describe("mqtt", status));
    }
    let operation = answer.operation_id.ok_or("no operationId")?;
    for rid in 2..100 {
        let topic = format!("{OPERATION_STATUS_TOPIC}?$rid={rid}&operationId={operation}");
        let (status, answer) = session.request(topic, Vec::new()).await?;
        match (status, answer.status.as_deref()) {
            (200, Some("assigned")) => {
                if device.csr().is_some() && !answer.carries_issued_chain() {
                    return Err("assigned without issuedCertificateChain (certificate and CA)".into());
                }
                let elapsed = started.elapsed();
                let _ = session.client.try_disconnect();
                return Ok(elapsed);
            }
            (200, Some(other)) => return Err(format!("status {other} {}", answer.registration_error_code())),
            (202, _) => tokio::time::sleep(Duration::from_millis(20)).await,
            _ => return Err(answer.describe("mqtt", status)),
        }
    }
    Err("never assigned".into())
}

/// Runs `devices` over MQTT at `concurrency`, each on its own new TLS connection.
pub(crate) async fn run(target: &Target, devices: &[Device], concurrency: usize) -> anyhow::Result<Report> {
    let addr = target.mqtt_addr.ok_or_else(|| anyhow::anyhow!("no MQTT address (--mqtt-addr)"))?;
    let tls = Arc::new(crate::devices::tls_config(&target.trust_bundle)?);
    let target = Arc::new(target.clone());
    let (outcomes, elapsed) = crate::devices::each_as_task(devices.iter().cloned(), concurrency, |device| {
        let (target, tls) = (Arc::clone(&target), Arc::clone(&tls));
        async move {
            match tokio::time::timeout(DEVICE_TIMEOUT, provision(&target, addr, &tls, &device)).await {
                Ok(outcome) => outcome,
                Err(_) => Err("timeout".into()),
            }
        }
    })
    .await;
    Ok(Report::collect(outcomes, elapsed))
}
