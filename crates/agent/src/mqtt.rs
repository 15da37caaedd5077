//! Registration over the MQTT device API (`docs/protocol/device-api.md` §5), for `service.transport = "mqtt"`:
//! CONNECT as the registration id (the SAS token as password, or the TLS client certificate), subscribe to the
//! answers, publish register, then poll the operation until it ends. The answer is the same
//! `RegistrationOperationStatus` as over HTTPS, so the daemon treats both alike. (TPM attestation is HTTPS only,
//! as with Azure, §0; EST renewal is HTTPS.)

use std::sync::Arc;
use std::time::Duration;

use rumqttc::{AsyncClient, ConnectionError, Event, EventLoop, MqttOptions, Packet, QoS, Transport};
use serde_json::Value;
use zerotouch_wire::mqtt::{
    OPERATION_STATUS_TOPIC, REGISTER_TOPIC, RESPONSE_FILTER, format_username, parse_response_topic,
};

use crate::provision::{ServiceError, Target};

/// One connection to the MQTT endpoint.
struct Connection {
    client: AsyncClient,
    events: EventLoop,
    rid: u32,
}

impl Connection {
    /// The next packet from the service.
    async fn incoming(&mut self) -> Result<Packet, ServiceError> {
        loop {
            match self.events.poll().await {
                Ok(Event::Incoming(packet)) => return Ok(packet),
                Ok(Event::Outgoing(_)) => {}
                // A refused CONNECT: bad token (4) or not authorized (5), as HTTPS answers 401.
                Err(ConnectionError::ConnectionRefused(code)) => {
                    return Err(ServiceError::Answered { status: 401, body: format!("CONNACK {code:?}") });
                }
                Err(e) => return Err(ServiceError::Unreachable(format!("MQTT: {e}"))),
            }
        }
    }

    /// Publishes to `topic` (with the next `$rid` and `query`) and waits for the answer: status, body, retry-after.
    async fn request(&mut self, topic: &str, query: &str, payload: Vec<u8>) -> Result<(u16, Value, u64), ServiceError> {
        self.rid += 1;
        let rid = self.rid.to_string();
        let topic = format!("{topic}?$rid={rid}{query}");
        self.client
            .publish(topic, QoS::AtLeastOnce, false, payload)
            .await
            .map_err(|e| ServiceError::Unreachable(format!("MQTT publish: {e}")))?;
        loop {
            if let Packet::Publish(publish) = self.incoming().await?
                && let Some((status, answer_rid, retry_after)) = parse_response_topic(&publish.topic)
                && answer_rid == rid
            {
                let body = serde_json::from_slice(&publish.payload).unwrap_or(Value::Null);
                return Ok((status, body, retry_after.unwrap_or(1).clamp(1, 300)));
            }
        }
    }
}

/// Registers over MQTT at `address` (`host:port`) with `body`; `password` is the SAS token (none: the TLS client
/// certificate of `tls` authenticates). Returns the final operation, whatever its status.
pub async fn register(
    address: &str,
    tls: rustls::ClientConfig,
    target: &Target,
    body: &Value,
    password: Option<&str>,
) -> Result<Value, ServiceError> {
    let (host, port) = address
        .rsplit_once(':')
        .and_then(|(host, port)| Some((host, port.parse::<u16>().ok()?)))
        .ok_or_else(|| ServiceError::Local(anyhow::anyhow!("service.mqtt_address {address:?} is not host:port")))?;
    let mut options = MqttOptions::new(&target.registration_id, host, port);
    let username =
        format_username(&target.id_scope, &target.registration_id, &target.api_version, Some("zerotouch-agent"));
    options.set_credentials(username, password.unwrap_or_default());
    options.set_keep_alive(Duration::from_secs(30));
    options.set_transport(Transport::tls_with_config(rumqttc::TlsConfiguration::Rustls(Arc::new(tls))));
    let (client, events) = AsyncClient::new(options, 8);
    let mut connection = Connection { client, events, rid: 0 };
    let result = tokio::time::timeout(target.deadline, run(&mut connection, body)).await;
    let _ = connection.client.try_disconnect();
    result.map_err(|_| {
        ServiceError::Unreachable(format!("the registration did not finish within {:?}", target.deadline))
    })?
}

async fn run(connection: &mut Connection, body: &Value) -> Result<Value, ServiceError> {
    while !matches!(connection.incoming().await?, Packet::ConnAck(_)) {}
    connection
        .client
        .subscribe(RESPONSE_FILTER, QoS::AtLeastOnce)
        .await
        .map_err(|e| ServiceError::Unreachable(format!("MQTT subscribe: {e}")))?;
    while !matches!(connection.incoming().await?, Packet::SubAck(_)) {}
    let (status, accepted, _) = connection.request(REGISTER_TOPIC, "", body.to_string().into_bytes()).await?;
    if status != 202 && status != 200 {
        return Err(ServiceError::Answered { status, body: accepted.to_string() });
    }
    let operation = accepted["operationId"]
        .as_str()
        .ok_or_else(|| ServiceError::Local(anyhow::anyhow!("the register answer has no operationId")))?
        .to_owned();
    let query = format!("&operationId={operation}");
    loop {
        let (status, answer, retry_after) = connection.request(OPERATION_STATUS_TOPIC, &query, Vec::new()).await?;
        match status {
            200 => return Ok(answer),
            202 => tokio::time::sleep(Duration::from_secs(retry_after)).await,
            other => return Err(ServiceError::Answered { status: other, body: answer.to_string() }),
        }
    }
}
