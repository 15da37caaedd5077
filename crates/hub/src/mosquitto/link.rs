//! The admin connection: one MQTT session per adapter, kept up by a background task that reconnects with
//! backoff, subscribes to the response topic after every connect, and routes each answer to the request that
//! waits for it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use rumqttc::{AsyncClient, ConnectionError, Event, EventLoop, MqttOptions, Packet, QoS, SubscribeReasonCode};
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;

use super::MosquittoSettings;
use super::command::{self, Command, Response, Responses};
use crate::error::SettingsError;

/// Where the plugin takes commands.
pub(crate) const CONTROL_TOPIC: &str = "$CONTROL/dynamic-security/v1";
/// Where the plugin answers.
pub(crate) const RESPONSE_TOPIC: &str = "$CONTROL/dynamic-security/v1/response";

const MAX_BACKOFF: Duration = Duration::from_secs(5);
const MAX_PACKET: usize = 1024 * 1024;

/// The state of the admin connection.
#[derive(Debug, Clone, PartialEq, Eq)]
enum State {
    /// Connecting for the first time, or subscribing after a connect.
    Connecting,
    /// Connected and subscribed to the response topic.
    Ready,
    /// The last attempt failed; the task retries after a backoff.
    Down(String),
}

type Pending = Arc<Mutex<HashMap<String, oneshot::Sender<Vec<Response>>>>>;

/// The admin connection of one adapter. Dropping it stops the connection task.
pub(crate) struct Link {
    client: AsyncClient,
    state: watch::Receiver<State>,
    pending: Pending,
    task: JoinHandle<()>,
}

impl Drop for Link {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Link {
    /// Starts the connection task in the current Tokio runtime.
    pub(crate) fn start(hub: &str, settings: &MosquittoSettings, timeout: Duration) -> Result<Self, SettingsError> {
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| SettingsError::NoRuntime)?;
        let client_id = format!("zerotouch-{}", uuid::Uuid::new_v4().simple());
        let mut options = MqttOptions::new(client_id, settings.host.trim(), settings.port);
        options
            .set_credentials(settings.username.clone(), settings.password.expose())
            .set_keep_alive(Duration::from_secs(30))
            .set_clean_session(true)
            .set_max_packet_size(MAX_PACKET, MAX_PACKET);
        if let Some(tls) = &settings.tls {
            let config = crate::tls::client_config("tls.ca", tls.ca.as_deref())?;
            options.set_transport(rumqttc::Transport::tls_with_config(rumqttc::TlsConfiguration::Rustls(config)));
        }
        let (client, mut eventloop) = AsyncClient::new(options, 64);
        eventloop.network_options.set_connection_timeout(timeout.as_secs().max(1));
        // rumqttc leaves Nagle's algorithm on: a command published while the previous segment waits for the broker's
        // delayed ACK would wait up to 40 ms with it.
        eventloop.network_options.set_tcp_nodelay(true);
        let (state_tx, state) = watch::channel(State::Connecting);
        let pending: Pending = Arc::default();
        let task = runtime.spawn(drive(hub.to_owned(), client.clone(), eventloop, state_tx, Arc::clone(&pending)));
        Ok(Self { client, state, pending, task })
    }

    /// Sends `commands` as one message and waits for the answer; `Err` is why the broker is unavailable.
    pub(crate) async fn execute(&self, commands: &[Command], timeout: Duration) -> Result<Vec<Response>, String> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut state = self.state.clone();
        let ready = tokio::time::timeout_at(deadline, async {
            state.wait_for(|s| *s != State::Connecting).await.map(|current| current.clone())
        })
        .await;
        match ready {
            Err(_) => return Err(format!("the admin connection did not come up within {timeout:?}")),
            Ok(Err(_)) => return Err("the admin connection task has stopped".into()),
            Ok(Ok(State::Down(reason))) => return Err(reason),
            Ok(Ok(_)) => {}
        }
        let request = uuid::Uuid::new_v4().simple().to_string();
        let (tx, rx) = oneshot::channel();
        self.pending.lock().unwrap_or_else(PoisonError::into_inner).insert(request.clone(), tx);
        let payload = command::payload(&request, commands);
        let sent = self.client.try_publish(CONTROL_TOPIC, QoS::AtMostOnce, false, payload.as_bytes().to_vec());
        let answer = match sent {
            Err(e) => Err(format!("could not queue the request: {e}")),
            Ok(()) => match tokio::time::timeout_at(deadline, rx).await {
                Ok(Ok(responses)) => Ok(responses),
                Ok(Err(_)) => Err("the admin connection dropped before the broker answered".into()),
                Err(_) => Err(format!("no answer from the dynamic-security plugin within {timeout:?}")),
            },
        };
        self.pending.lock().unwrap_or_else(PoisonError::into_inner).remove(&request);
        answer
    }
}

/// Runs the event loop until the link is dropped.
async fn drive(
    hub: String,
    client: AsyncClient,
    mut eventloop: EventLoop,
    state: watch::Sender<State>,
    pending: Pending,
) {
    let mut backoff = Duration::from_millis(250);
    loop {
        match eventloop.poll().await {
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                backoff = Duration::from_millis(250);
                tracing::debug!(hub = %hub, "mosquitto admin connection up");
                if let Err(e) = client.try_subscribe(RESPONSE_TOPIC, QoS::AtLeastOnce) {
                    state.send_replace(State::Down(format!("could not subscribe to {RESPONSE_TOPIC}: {e}")));
                } else {
                    state.send_replace(State::Connecting);
                }
            }
            Ok(Event::Incoming(Packet::SubAck(ack))) => {
                if ack.return_codes.iter().any(|code| matches!(code, SubscribeReasonCode::Failure)) {
                    state.send_replace(State::Down(format!(
                        "the broker refused the admin user's subscription to {RESPONSE_TOPIC} (check its dynsec role)"
                    )));
                } else {
                    state.send_replace(State::Ready);
                }
            }
            Ok(Event::Incoming(Packet::Publish(publish))) if publish.topic == RESPONSE_TOPIC => {
                route(&pending, &publish.payload);
            }
            Ok(_) => {}
            Err(e) => {
                let reason = describe(&e);
                tracing::warn!(hub = %hub, reason = %reason, "mosquitto admin connection down");
                state.send_replace(State::Down(reason));
                // Requests in flight will get no answer on this session.
                pending.lock().unwrap_or_else(PoisonError::into_inner).clear();
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
}

/// Hands an answer to the request it belongs to; answers to other admins' requests are ignored.
fn route(pending: &Pending, payload: &[u8]) {
    let Ok(answer) = serde_json::from_slice::<Responses>(payload) else {
        tracing::debug!("ignoring an unparsable dynamic-security response");
        return;
    };
    let Some(request) = answer.request() else { return };
    let waiter = pending.lock().unwrap_or_else(PoisonError::into_inner).remove(request);
    if let Some(waiter) = waiter {
        let _ = waiter.send(answer.responses);
    }
}

/// Why the connection failed, in words an operator can act on (never the password).
fn describe(error: &ConnectionError) -> String {
    match error {
        ConnectionError::ConnectionRefused(code) => {
            format!("the broker refused the admin login ({code:?}): check the hub's username and password")
        }
        ConnectionError::Io(e) => format!("cannot reach the broker: {e}"),
        ConnectionError::NetworkTimeout => "cannot reach the broker: connection timed out".into(),
        other => format!("admin connection failed: {other}"),
    }
}
