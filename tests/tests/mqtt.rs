#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! The MQTT device endpoint (`docs/protocol/device-api.md` §5) as a device sees it, with rumqttc as the MQTT client and
//! raw TLS sockets for what no client library sends (malformed and oversized packets).
//!
//! Each test starts its own server on free ports (the endpoint on `127.0.0.1:0`); the Python SDK, which
//! hard-codes port 8883, is in `python_sdk.rs`.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use rumqttc::{AsyncClient, ConnectReturnCode, ConnectionError, Event, EventLoop, MqttOptions, Packet, QoS, Transport};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use zerotouch_attest::sas;
use zerotouch_tests::{Api, BACKENDS, Backend, Options, Server};
use zerotouch_wire::mqtt::{
    OPERATION_STATUS_TOPIC, REGISTER_TOPIC, RESPONSE_FILTER, format_username, parse_response_topic,
};

const HUB: &str = "mqtt-hub.example.com";
const WAIT: Duration = Duration::from_secs(20);

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

/// A hub and an individual symmetric-key enrollment for `id`; returns its key.
async fn enroll(server: &Server, id: &str) -> [u8; 32] {
    let api = Api::new(server, "owner");
    let hub = json!({"hostName": HUB, "kind": "none"});
    assert_eq!(api.put(&format!("/hubs/{HUB}"), &hub).await.status(), 200);
    let key: [u8; 32] = rand::random();
    let enrollment = json!({
        "registrationId": id,
        "attestation": {"type": "symmetricKey", "symmetricKey": {"primaryKey": STANDARD.encode(key)}},
        "iotHubs": [HUB],
    });
    let response = api.put(&format!("/enrollments/{id}"), &enrollment).await;
    assert_eq!(response.status(), 200, "{}", response.text().await.unwrap());
    key
}

/// The SAS token a device signs (Python style: `sr` URL-encoded, no `skn`).
fn token(server: &Server, id: &str, key: &[u8]) -> String {
    sas::sign(&format!("{}%2Fregistrations%2F{id}", server.id_scope), now() + 3600, key, None)
}

/// A connected device: its client and event loop.
struct Device {
    client: AsyncClient,
    events: EventLoop,
}

/// A response on `$dps/registrations/res/...`.
#[derive(Debug)]
struct Response {
    status: u16,
    rid: String,
    retry_after: Option<u64>,
    body: Value,
}

/// Connects as `client_id` with `username` and `password`; the CONNACK's refusal, if any.
async fn connect(
    server: &Server,
    client_id: &str,
    username: &str,
    password: &str,
) -> Result<Device, ConnectReturnCode> {
    let mut options = MqttOptions::new(client_id, "127.0.0.1", server.mqtt_addr.port());
    options.set_credentials(username, password);
    options.set_keep_alive(Duration::from_secs(30));
    options.set_max_packet_size(256 * 1024, 256 * 1024);
    options.set_transport(Transport::tls_with_config(rumqttc::TlsConfiguration::Rustls(Arc::new(
        server.tls_config().unwrap(),
    ))));
    let (client, mut events) = AsyncClient::new(options, 16);
    loop {
        match tokio::time::timeout(WAIT, events.poll()).await.expect("no CONNACK") {
            Ok(Event::Incoming(Packet::ConnAck(_))) => return Ok(Device { client, events }),
            Ok(_) => {}
            Err(ConnectionError::ConnectionRefused(code)) => return Err(code),
            Err(e) => panic!("connecting failed: {e:?}"),
        }
    }
}

/// Connects as a device with its SAS token and subscribes to the responses.
async fn connect_device(server: &Server, id: &str, key: &[u8]) -> Device {
    let username = format_username(&server.id_scope, id, "2019-03-31", Some("rust-test/1.0 (mqtt)"));
    let mut device = connect(server, id, &username, &token(server, id, key)).await.unwrap();
    device.subscribe(QoS::AtLeastOnce).await;
    device
}

impl Device {
    async fn subscribe(&mut self, qos: QoS) {
        self.client.subscribe(RESPONSE_FILTER, qos).await.unwrap();
        loop {
            if let Event::Incoming(Packet::SubAck(ack)) = self.next().await {
                assert_eq!(ack.return_codes.len(), 1);
                return;
            }
        }
    }

    async fn next(&mut self) -> Event {
        tokio::time::timeout(WAIT, self.events.poll()).await.expect("no MQTT event").expect("connection failed")
    }

    /// Publishes `payload` to `topic` and waits for the response.
    async fn request(&mut self, topic: &str, qos: QoS, payload: Vec<u8>) -> Response {
        self.client.publish(topic, qos, false, payload).await.unwrap();
        loop {
            if let Event::Incoming(Packet::Publish(publish)) = self.next().await {
                let (status, rid, retry_after) = parse_response_topic(&publish.topic).expect("a response topic");
                let body = serde_json::from_slice(&publish.payload).unwrap_or(Value::Null);
                return Response { status, rid: rid.to_owned(), retry_after, body };
            }
        }
    }

    /// Registers with `payload` and polls until the operation ends; returns the last response.
    async fn register(&mut self, payload: Vec<u8>) -> Response {
        let response = self.request(&format!("{REGISTER_TOPIC}?$rid=1"), QoS::AtLeastOnce, payload).await;
        if response.status != 202 {
            return response;
        }
        let operation = response.body["operationId"].as_str().unwrap().to_owned();
        for rid in 2.. {
            let topic = format!("{OPERATION_STATUS_TOPIC}?$rid={rid}&operationId={operation}");
            let response = self.request(&topic, QoS::AtLeastOnce, b" ".to_vec()).await;
            if response.status != 202 {
                return response;
            }
            assert!(rid < 50, "the operation did not end");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        unreachable!()
    }
}

/// Usernames as every SDK writes them connect, and the device registers: ClientVersion percent-encoded (Python,
/// C#), not encoded with `/` and spaces in it (C), absent (Embedded C); the client id may differ in case.
#[tokio::test]
async fn username_variants_connect_and_register() {
    for backend in BACKENDS {
        let server = Server::start(backend).await.unwrap();
        let scope = &server.id_scope;
        for (n, variant) in ["encoded", "plain", "none", "nothing-after-id"].into_iter().enumerate() {
            let id = format!("mqtt-user-{n}");
            let key = enroll(&server, &id).await;
            let username = match variant {
                "encoded" => format_username(scope, &id, "2019-03-31", Some("azure-iot-device/2.14.0 (native; Linux)")),
                "plain" => format!(
                    "{scope}/registrations/{id}/api-version=2021-06-01&ClientVersion=prov_device_client/1.15.0 (x; y)"
                ),
                "none" => format!("{scope}/registrations/{id}/api-version=2019-03-31"),
                _ => format!("{scope}/registrations/{id}"),
            };
            let mut device = connect(&server, &id.to_uppercase(), &username, &token(&server, &id, &key))
                .await
                .unwrap_or_else(|code| panic!("{backend:?} {variant}: refused with {code:?}"));
            device.subscribe(QoS::AtLeastOnce).await;
            let response =
                device.register(r#"{"registrationId": "ID", "payload": null}"#.replace("ID", &id).into_bytes()).await;
            assert_eq!(response.status, 200, "{backend:?} {variant}: {response:?}");
            assert_eq!(response.body["status"], "assigned", "{backend:?} {variant}: {response:?}");
            assert_eq!(response.body["registrationState"]["assignedHub"], HUB);
            assert_eq!(response.body["registrationState"]["registrationId"], id.as_str());
        }
    }
}

/// `$rid` comes back verbatim and first, with `retry-after` after it; a QoS 0 register with an empty payload is
/// answered; the QoS 0 subscription gets its answers at QoS 0; the poll's payload is ignored; requests that are
/// not DPS's get the Azure error body; the metrics count every request.
#[tokio::test]
async fn rid_is_echoed_and_qos0_empty_payloads_are_answered() {
    let server = Server::start(Backend::Sqlite).await.unwrap();
    let id = "mqtt-rid-1";
    let key = enroll(&server, id).await;
    let mut device = connect_device(&server, id, &key).await;
    let rid = "0f8fad5b-d9cb-469f-a165-70867728950e";
    let response = device.request(&format!("{REGISTER_TOPIC}?$rid={rid}"), QoS::AtMostOnce, Vec::new()).await;
    assert_eq!((response.status, response.rid.as_str(), response.retry_after), (202, rid, Some(1)), "{response:?}");
    assert_eq!(response.body["status"], "assigning");
    let operation = response.body["operationId"].as_str().unwrap().to_owned();
    // An escaped operation id (Python, C#) and the registration JSON as the payload (C).
    let escaped = operation.replace('.', "%2E");
    let topic = format!("{OPERATION_STATUS_TOPIC}?$rid=%2Fodd%20rid&operationId={escaped}");
    let response = device.request(&topic, QoS::AtMostOnce, br#"{"registrationId":"mqtt-rid-1"}"#.to_vec()).await;
    assert_eq!((response.status, response.rid.as_str(), response.retry_after), (200, "%2Fodd%20rid", None));
    assert_eq!(response.body["operationId"], operation.as_str());
    assert_eq!(response.body["status"], "assigned");

    // At QoS 0 the answers come at QoS 0.
    let mut device =
        connect(&server, id, &format_username(&server.id_scope, id, "2019-03-31", None), &token(&server, id, &key))
            .await
            .unwrap();
    device.subscribe(QoS::AtMostOnce).await;
    device.client.publish(format!("{REGISTER_TOPIC}?$rid=q0"), QoS::AtMostOnce, false, Vec::new()).await.unwrap();
    loop {
        if let Event::Incoming(Packet::Publish(publish)) = device.next().await {
            assert_eq!(publish.qos, QoS::AtMostOnce);
            assert!(publish.topic.starts_with("$dps/registrations/res/202/?$rid=q0&retry-after="), "{}", publish.topic);
            break;
        }
    }

    // Requests that are not DPS's are answered with the Azure error body, rid echoed.
    let response = device.request("$dps/registrations/PUT/iotdps-other/?$rid=x1", QoS::AtLeastOnce, Vec::new()).await;
    assert_eq!((response.status, response.rid.as_str()), (404, "x1"));
    assert_eq!(response.body["errorCode"], 404001);
    let response = device.request(&format!("{OPERATION_STATUS_TOPIC}?$rid=x2"), QoS::AtLeastOnce, Vec::new()).await;
    assert_eq!((response.status, response.body["errorCode"].as_u64()), (400, Some(400005)), "{response:?}");
    let response = device.request(&format!("{REGISTER_TOPIC}?$rid=x3"), QoS::AtLeastOnce, b"{not json".to_vec()).await;
    assert_eq!((response.status, response.body["errorCode"].as_u64()), (400, Some(400001)), "{response:?}");

    // The requests are counted in the service's metrics, by kind and status.
    let metrics = server.client.get(server.url("/metrics")).send().await.unwrap().text().await.unwrap();
    for (route, status) in
        [("register", "202"), ("operationStatus", "200"), ("(unmatched)", "404"), ("register", "400")]
    {
        let series = format!("listener=\"mqtt\",method=\"PUBLISH\",route=\"{route}\",status=\"{status}\"");
        assert!(metrics.contains(&series), "no {series} in the metrics:\n{metrics}");
    }
}

/// A wrong key is refused at CONNACK ("bad username or password") and audited like an HTTPS refusal; no
/// credentials at all is "not authorized"; a client id other than the registration id is "identifier rejected";
/// a username that is not a device's is "bad username or password". A refused device has no registration.
#[tokio::test]
async fn refused_credentials_are_refused_at_connack_and_audited() {
    let server = Server::start(Backend::Sqlite).await.unwrap();
    let id = "mqtt-refused-1";
    let key = enroll(&server, id).await;
    let username = format_username(&server.id_scope, id, "2019-03-31", None);
    let wrong: [u8; 32] = rand::random();
    let (bad_token, good_token) = (token(&server, id, &wrong), token(&server, id, &key));
    let refused = connect(&server, id, &username, &bad_token).await.err();
    assert_eq!(refused, Some(ConnectReturnCode::BadUserNamePassword));
    let refused = connect(&server, id, &username, "").await.err();
    assert_eq!(refused, Some(ConnectReturnCode::NotAuthorized));
    let refused = connect(&server, "someone-else", &username, &token(&server, id, &key)).await.err();
    assert_eq!(refused, Some(ConnectReturnCode::BadClientId));
    let refused =
        connect(&server, id, &format!("{}/devices/{id}", server.id_scope), &token(&server, id, &key)).await.err();
    assert_eq!(refused, Some(ConnectReturnCode::BadUserNamePassword));
    let other_scope = format_username("0ne00000000", id, "2019-03-31", None);
    let refused = connect(&server, id, &other_scope, &token(&server, id, &key)).await.err();
    assert_eq!(refused, Some(ConnectReturnCode::BadUserNamePassword));

    let api = Api::new(&server, "owner");
    assert_eq!(api.get(&format!("/registrations/{id}")).await.status(), 404);
    let audit: Vec<Value> = api.get("/audit").await.json().await.unwrap();
    let refusals: Vec<&Value> =
        audit.iter().filter(|e| e["resourceId"] == id && e["role"] == "device" && e["action"] == "connect").collect();
    assert!(
        refusals
            .iter()
            .any(|e| e["actor"] == format!("device:{id}") && e["detail"].as_str().is_some_and(|d| d.contains("sas"))),
        "the bad token is not audited: {refusals:?}"
    );
    assert!(
        refusals.iter().any(|e| e["detail"].as_str().is_some_and(|d| d.contains("no credentials"))),
        "the missing credentials are not audited: {refusals:?}"
    );
    // The right key still connects.
    let mut device = connect(&server, id, &username, &good_token).await.unwrap();
    device.subscribe(QoS::AtLeastOnce).await;
    assert_eq!(device.register(Vec::new()).await.body["status"], "assigned");
    // Neither token reached the log (the kit logs at debug level).
    let logs = server.logs();
    for token in [&bad_token, &good_token] {
        let signature = token.split("sig=").nth(1).and_then(|s| s.split('&').next()).unwrap();
        assert!(!logs.contains(signature), "a SAS signature is in the log");
    }
}

/// A CSR in the register payload issues a certificate (leaf first, then the issuing CA and the root); a `tpm`
/// body is refused with 400212, since MQTT offers no TPM attestation.
#[tokio::test]
async fn csr_issues_a_certificate_and_tpm_is_refused() {
    let server = Server::start(Backend::Sqlite).await.unwrap();
    let id = "mqtt-csr-1";
    let key = enroll(&server, id).await;
    let mut device = connect_device(&server, id, &key).await;
    let device_key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.distinguished_name.push(rcgen::DnType::CommonName, id);
    let csr = STANDARD.encode(params.serialize_request(&device_key).unwrap().der());
    let response = device.register(serde_json::to_vec(&json!({"registrationId": id, "csr": csr})).unwrap()).await;
    assert_eq!((response.status, &response.body["status"]), (200, &json!("assigned")), "{response:?}");
    let chain = response.body["registrationState"]["issuedCertificateChain"].as_array().unwrap();
    assert!(chain.len() >= 2, "{chain:?}");
    let leaf = STANDARD.decode(chain[0].as_str().unwrap()).unwrap();
    let certificates: Vec<Value> = Api::new(&server, "owner").get("/pki/certificates").await.json().await.unwrap();
    assert!(certificates.iter().any(|c| c["deviceId"] == id), "{certificates:?}");
    assert!(!leaf.is_empty());

    let tpm = json!({"registrationId": id, "tpm": {"endorsementKey": "AAAA", "storageRootKey": "AAAA"}});
    let response =
        device.request(&format!("{REGISTER_TOPIC}?$rid=t"), QoS::AtLeastOnce, serde_json::to_vec(&tpm).unwrap()).await;
    assert_eq!((response.status, response.body["errorCode"].as_u64()), (400, Some(400212)), "{response:?}");
    assert!(response.body["message"].as_str().unwrap().contains("HTTPS"), "{response:?}");
}

/// Opens a raw TLS connection to the endpoint.
async fn raw_tls(server: &Server) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    server.raw_tls(server.mqtt_addr).await.unwrap()
}

/// Encodes an MQTT 3.1.1 CONNECT packet (client id, username, password; keep-alive 60 s).
fn connect_packet(client_id: &str, username: &str, password: &str) -> Vec<u8> {
    connect_packet_with_keep_alive(client_id, username, password, 60)
}

/// Encodes an MQTT 3.1.1 CONNECT packet with a keep-alive of `keep_alive` seconds.
fn connect_packet_with_keep_alive(client_id: &str, username: &str, password: &str, keep_alive: u8) -> Vec<u8> {
    let field = |text: &str| {
        let mut out = u16::try_from(text.len()).unwrap().to_be_bytes().to_vec();
        out.extend_from_slice(text.as_bytes());
        out
    };
    let mut body = field("MQTT");
    body.extend_from_slice(&[4, 0b1100_0010, 0, keep_alive]);
    body.extend(field(client_id));
    body.extend(field(username));
    body.extend(field(password));
    let mut packet = vec![0x10];
    packet.extend(remaining_length(body.len()));
    packet.extend(body);
    packet
}

fn remaining_length(mut n: usize) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let mut byte = u8::try_from(n % 128).unwrap();
        n /= 128;
        if n > 0 {
            byte |= 0x80;
        }
        out.push(byte);
        if n == 0 {
            return out;
        }
    }
}

/// Reads until the peer closes the connection (or `WAIT` passes); whether it closed.
async fn closed_by_peer(stream: &mut tokio_rustls::client::TlsStream<tokio::net::TcpStream>) -> bool {
    let mut buffer = [0u8; 1024];
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buffer)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => {}
            Err(_) => return false,
        }
    }
}

/// Malformed packets (a reserved packet type, a broken remaining length, a PUBLISH before CONNECT, a CONNECT
/// that never comes) and a packet over 96 KB each close their own connection, and only it: a device connected
/// beside them keeps registering.
#[tokio::test]
async fn malformed_and_oversized_packets_close_only_their_connection() {
    let options = Options { args: vec!["--device-rate-limit".into(), "1000/10s".into()], ..Default::default() };
    let server = Server::start_with(Backend::Sqlite, options).await.unwrap();
    let id = "mqtt-robust-1";
    let key = enroll(&server, id).await;
    let mut bystander = connect_device(&server, id, &key).await;
    let username = format_username(&server.id_scope, id, "2019-03-31", None);
    let connect = connect_packet(id, &username, &token(&server, id, &key));

    let mut garbage: Vec<(&str, Vec<u8>)> = vec![
        ("reserved packet type", vec![0xF0, 0x00]),
        ("remaining length over 4 bytes", vec![0x10, 0xFF, 0xFF, 0xFF, 0xFF, 0x7F]),
        ("publish before connect", vec![0x30, 0x05, 0x00, 0x01, b'a', b'x', b'y']),
        ("connect with a bad protocol name", vec![0x10, 0x0C, 0x00, 0x04, b'M', b'Q', b'X', b'X', 4, 2, 0, 60, 0, 0]),
    ];
    // After a good CONNECT: a SUBSCRIBE with QoS 3, then a PUBLISH of 100 KB.
    let mut bad_subscribe = connect.clone();
    bad_subscribe.extend([0x82, 0x08, 0x00, 0x01, 0x00, 0x03, b'a', b'/', b'b', 0x03]);
    garbage.push(("subscribe with QoS 3", bad_subscribe));
    let mut oversized = connect.clone();
    let topic = format!("{REGISTER_TOPIC}?$rid=big");
    let mut publish = u16::try_from(topic.len()).unwrap().to_be_bytes().to_vec();
    publish.extend_from_slice(topic.as_bytes());
    publish.extend(std::iter::repeat_n(b' ', 100 * 1024));
    oversized.push(0x30);
    oversized.extend(remaining_length(publish.len()));
    oversized.extend(publish);
    garbage.push(("publish of 100 KB", oversized));

    for (what, bytes) in garbage {
        let mut stream = raw_tls(&server).await;
        stream.write_all(&bytes).await.unwrap();
        stream.flush().await.unwrap();
        assert!(closed_by_peer(&mut stream).await, "{what}: the connection stays open");
        let response = bystander.register(Vec::new()).await;
        assert_eq!(response.body["status"], "assigned", "{what}: the bystander was disturbed: {response:?}");
    }
    // A connection that sends nothing is closed after the CONNECT timeout.
    let mut silent = raw_tls(&server).await;
    assert!(closed_by_peer(&mut silent).await, "a silent connection stays open");
    // A publish just under the limit is served (answered: its body is not JSON).
    let response =
        bystander.request(&format!("{REGISTER_TOPIC}?$rid=near"), QoS::AtLeastOnce, vec![b'x'; 90 * 1024]).await;
    assert_eq!((response.status, response.body["errorCode"].as_u64()), (400, Some(400001)));
    assert!(server.logs().contains("zerotouch: MQTT device"));
}

/// With `--mqtt-max-connections 1`, a second device is answered "server unavailable" while the first is
/// connected, and connects once the first has gone.
#[tokio::test]
async fn connections_beyond_the_limit_are_refused_until_one_closes() {
    let options = Options { args: vec!["--mqtt-max-connections".into(), "1".into()], ..Default::default() };
    let server = Server::start_with(Backend::Sqlite, options).await.unwrap();
    let (first, second) = ("mqtt-limit-1", "mqtt-limit-2");
    let (first_key, second_key) = (enroll(&server, first).await, enroll(&server, second).await);
    let mut holder = connect_device(&server, first, &first_key).await;
    let username = format_username(&server.id_scope, second, "2019-03-31", None);
    let refused = connect(&server, second, &username, &token(&server, second, &second_key)).await.err();
    assert_eq!(refused, Some(ConnectReturnCode::ServiceUnavailable));
    holder.client.disconnect().await.unwrap();
    while holder.events.poll().await.is_ok() {}
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        match connect(&server, second, &username, &token(&server, second, &second_key)).await {
            Ok(_) => break,
            Err(code) => assert!(tokio::time::Instant::now() < deadline, "still refused: {code:?}"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A client that asks for a keep-alive of 1 s and then sends nothing is disconnected after 1.5 times that (MQTT
/// 3.1.1 §3.1.2.10), well before the 10 s CONNECT timeout.
#[tokio::test]
async fn keep_alive_is_enforced() {
    let server = Server::start(Backend::Sqlite).await.unwrap();
    let id = "mqtt-keepalive-1";
    let key = enroll(&server, id).await;
    let username = format_username(&server.id_scope, id, "2019-03-31", None);
    let mut stream = raw_tls(&server).await;
    stream.write_all(&connect_packet_with_keep_alive(id, &username, &token(&server, id, &key), 1)).await.unwrap();
    let mut connack = [0u8; 4];
    stream.read_exact(&mut connack).await.unwrap();
    assert_eq!(connack, [0x20, 0x02, 0x00, 0x00], "CONNACK accepted");
    let started = std::time::Instant::now();
    assert!(closed_by_peer(&mut stream).await, "an idle connection stays open");
    assert!(started.elapsed() < Duration::from_secs(5), "closed only after {:?}", started.elapsed());
}

/// SIGTERM with a device connected: the service stops within its shutdown timeout and exits 0.
#[tokio::test]
async fn sigterm_with_a_device_connected_exits_zero() {
    let mut server = Server::start(Backend::Sqlite).await.unwrap();
    let id = "mqtt-shutdown-1";
    let key = enroll(&server, id).await;
    let mut device = connect_device(&server, id, &key).await;
    assert_eq!(device.register(Vec::new()).await.body["status"], "assigned");
    let started = std::time::Instant::now();
    let status = server.stop().unwrap();
    assert!(status.success(), "exit status {status}:\n{}", server.logs());
    assert!(started.elapsed() < Duration::from_secs(15), "stopping took {:?}", started.elapsed());
}

/// A SAS token for `id` that expires at `expiry` (Unix seconds).
fn token_until(server: &Server, id: &str, key: &[u8], expiry: u64) -> String {
    sas::sign(&format!("{}%2Fregistrations%2F{id}", server.id_scope), expiry, key, None)
}

/// Polls the device's event loop until its connection fails (or `WAIT` passes); whether it did. Each call sees
/// one connection end: rumqttc reconnects on the poll after.
async fn closed_by_server(device: &mut Device) -> bool {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        match tokio::time::timeout_at(deadline, device.events.poll()).await {
            Ok(Ok(_)) => {}
            Ok(Err(_)) => return true,
            Err(_) => return false,
        }
    }
}

/// The attack: one credential opens connection after connection to hold every slot of `--mqtt-max-connections`
/// (4 here), so that no other device gets in. Each connection beyond `--mqtt-max-connections-per-device` (2 by
/// default) takes the place of the credential's oldest, which the server closes: the credential never holds more
/// than 2, another device still connects and registers, and the credential's newest connection still works.
#[tokio::test]
async fn one_credential_cannot_hold_every_connection_slot() {
    let args = ["--mqtt-max-connections", "4", "--device-rate-limit", "1000/10s"];
    let options = Options { args: args.map(String::from).to_vec(), ..Default::default() };
    let server = Server::start_with(Backend::Sqlite, options).await.unwrap();
    let (hog, other) = ("mqtt-hog-1", "mqtt-hog-2");
    let (hog_key, other_key) = (enroll(&server, hog).await, enroll(&server, other).await);

    let mut open: Vec<Device> = Vec::new();
    for n in 0..8 {
        // Without the per-device limit the fifth CONNECT would be answered "server unavailable".
        open.push(connect_device(&server, hog, &hog_key).await);
        if open.len() > 2 {
            let mut oldest = open.remove(0);
            assert!(closed_by_server(&mut oldest).await, "connection {} of the credential stays open", n - 2);
        }
    }
    assert!(server.logs().contains("a newer connection of the device took its place"));

    let mut bystander = connect_device(&server, other, &other_key).await;
    let response = bystander.register(Vec::new()).await;
    assert_eq!(response.body["status"], "assigned", "the other device: {response:?}");
    let mut newest = open.pop().unwrap();
    let response = newest.register(Vec::new()).await;
    assert_eq!(response.body["status"], "assigned", "the credential's newest connection: {response:?}");
    // The other connection the credential kept is open too: it answers a poll.
    let operation = response.body["operationId"].as_str().unwrap().to_owned();
    let mut kept = open.pop().unwrap();
    let topic = format!("{OPERATION_STATUS_TOPIC}?$rid=kept&operationId={operation}");
    assert_eq!(kept.request(&topic, QoS::AtLeastOnce, Vec::new()).await.status, 200);
}

/// The attack: a connection opened with a token that expires in a few seconds stays open to keep registering.
/// The server closes it when the token stops authenticating (`se` plus `--sas-clock-skew`, 1 s here), not before;
/// the token no longer connects, and a register published after the expiry is not run. Until then the device
/// registers as usual.
#[tokio::test]
async fn a_connection_is_closed_when_its_token_expires() {
    let options = Options { args: vec!["--sas-clock-skew".into(), "1s".into()], ..Default::default() };
    let server = Server::start_with(Backend::Sqlite, options).await.unwrap();
    let (id, late) = ("mqtt-expiry-1", "mqtt-expiry-2");
    let (key, late_key) = (enroll(&server, id).await, enroll(&server, late).await);
    let skew = Duration::from_secs(1);

    // rumqttc: registers while the token is valid, then is closed by the server, and the token is refused after.
    let expiry = now() + 6;
    let username = format_username(&server.id_scope, id, "2019-03-31", None);
    let short = token_until(&server, id, &key, expiry);
    let mut device = connect(&server, id, &username, &short).await.unwrap();
    device.subscribe(QoS::AtLeastOnce).await;
    assert_eq!(device.register(Vec::new()).await.body["status"], "assigned");
    assert!(closed_by_server(&mut device).await, "the connection outlives its token");
    let ends = UNIX_EPOCH + Duration::from_secs(expiry) + skew;
    let closed = SystemTime::now();
    assert!(closed >= ends, "closed {:?} before the token expired", ends.duration_since(closed).unwrap());
    assert!(closed.duration_since(ends).unwrap() < Duration::from_secs(5), "closed late");
    assert!(server.logs().contains("the credential it was opened with expired"));
    assert_eq!(connect(&server, id, &username, &short).await.err(), Some(ConnectReturnCode::BadUserNamePassword));

    // A raw client: connects and subscribes with a short token, and publishes a register once it has expired.
    let expiry = now() + 4;
    let username = format_username(&server.id_scope, late, "2019-03-31", None);
    let mut stream = raw_tls(&server).await;
    stream.write_all(&connect_packet(late, &username, &token_until(&server, late, &late_key, expiry))).await.unwrap();
    let mut connack = [0u8; 4];
    stream.read_exact(&mut connack).await.unwrap();
    assert_eq!(connack, [0x20, 0x02, 0x00, 0x00], "CONNACK accepted");
    let mut subscribe = vec![0x82, 0x00, 0x00, 0x01];
    subscribe.extend(u16::try_from(RESPONSE_FILTER.len()).unwrap().to_be_bytes());
    subscribe.extend(RESPONSE_FILTER.as_bytes());
    subscribe.push(1);
    subscribe[1] = u8::try_from(subscribe.len() - 2).unwrap();
    stream.write_all(&subscribe).await.unwrap();
    let mut suback = [0u8; 5];
    stream.read_exact(&mut suback).await.unwrap();
    assert_eq!(suback, [0x90, 0x03, 0x00, 0x01, 0x01], "SUBACK at QoS 1");
    let ends = UNIX_EPOCH + Duration::from_secs(expiry) + skew;
    while SystemTime::now() < ends {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let topic = format!("{REGISTER_TOPIC}?$rid=late");
    let mut publish = vec![0x30];
    publish.extend(remaining_length(2 + topic.len()));
    publish.extend(u16::try_from(topic.len()).unwrap().to_be_bytes());
    publish.extend(topic.as_bytes());
    // The server may have closed the connection already; then the write fails, which is the point.
    let _ = stream.write_all(&publish).await;
    let _ = stream.flush().await;
    let mut received = Vec::new();
    // The end of the stream, with or without TLS close_notify.
    let _ = tokio::time::timeout(WAIT, stream.read_to_end(&mut received)).await.expect("the connection stays open");
    assert!(received.is_empty(), "the server answered after the token expired: {received:?}");
    let api = Api::new(&server, "owner");
    assert_eq!(api.get(&format!("/registrations/{late}")).await.status(), 404, "the late register ran");
}
