#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! `/metrics` cannot be grown by clients (issue 16, point 2): every label value comes from a fixed set, so requests
//! with made-up HTTP methods, paths and MQTT topics, which anyone on the internet can send without credentials,
//! add no series beyond those sets, on the device listener, the admin listener and the MQTT endpoint.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use rumqttc::{AsyncClient, Event, EventLoop, MqttOptions, Packet, QoS, Transport};
use serde_json::{Value, json};
use zerotouch_attest::sas;
use zerotouch_tests::device::{now, sas_register};
use zerotouch_tests::{Api, Backend, Options, Server};
use zerotouch_wire::mqtt::{RESPONSE_FILTER, format_username};

const HUB: &str = "hub-metrics.example.com";
/// Made-up requests per listener and round.
const ROUND: usize = 300;
/// The method labels there may be: the methods counted by name, `other`, and MQTT's `PUBLISH`.
const METHOD_LABELS: [&str; 11] =
    ["GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "CONNECT", "TRACE", "other", "PUBLISH"];

/// The series of the exposition: each metric name with its labels, and its value.
fn series(exposition: &str) -> BTreeMap<String, f64> {
    exposition
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| {
            let (key, value) = l.rsplit_once(' ').unwrap();
            (key.to_owned(), value.parse().unwrap())
        })
        .collect()
}

/// The value of label `name` in a series key (`metric{a="x",b="y"}`).
fn label<'a>(key: &'a str, name: &str) -> Option<&'a str> {
    let start = key.find(&format!("{name}=\""))? + name.len() + 2;
    key[start..].split('"').next()
}

async fn scrape(server: &Server) -> BTreeMap<String, f64> {
    let response = server.client.get(server.url("/metrics")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    series(&response.text().await.unwrap())
}

/// A hub and an individual symmetric-key enrollment for `id`; returns its key.
async fn enroll(server: &Server, id: &str) -> Vec<u8> {
    let api = Api::new(server, "owner");
    let response = api.put(&format!("/hubs/{HUB}"), &json!({"hostName": HUB, "kind": "none"})).await;
    assert_eq!(response.status(), 200, "{}", response.text().await.unwrap());
    let key = rand::random::<[u8; 32]>().to_vec();
    let attestation = json!({"type": "symmetricKey", "symmetricKey": {"primaryKey": STANDARD.encode(&key)}});
    let response =
        api.put(&format!("/enrollments/{id}"), &json!({"registrationId": id, "attestation": attestation})).await;
    assert_eq!(response.status(), 200, "{}", response.text().await.unwrap());
    key
}

/// `ROUND` requests with made-up methods and paths to `base` (a listener's URL): made-up methods on made-up
/// paths and on real routes, and real methods on made-up paths. Each method and path is new to this round.
async fn attack_http(server: &Server, base: &str, round: usize) {
    let scope = &server.id_scope;
    let real = [
        "/healthz".to_owned(),
        format!("/{scope}/registrations/someone/register"),
        "/enrollments".to_owned(),
        "/pki/trustBundle".to_owned(),
    ];
    for i in 0..ROUND {
        let method = reqwest::Method::from_bytes(format!("ZT{round}X{i}").as_bytes()).unwrap();
        let made_up_path = format!("/zt-{round}-{i}/{}", uuid::Uuid::new_v4());
        let (method, path) = match i % 3 {
            0 => (method, made_up_path),
            1 => (method, real[i % real.len()].clone()),
            _ => (reqwest::Method::GET, made_up_path),
        };
        let response = server.client.request(method.clone(), format!("{base}{path}")).send().await.unwrap();
        assert!(response.status().is_client_error(), "{method} {path}: {}", response.status());
    }
}

/// Connects to the MQTT endpoint as the enrolled device `id` and subscribes to its responses.
async fn connect_mqtt(server: &Server, id: &str, key: &[u8]) -> (AsyncClient, EventLoop) {
    let mut options = MqttOptions::new(id, "127.0.0.1", server.mqtt_addr.port());
    let password = sas::sign(&format!("{}%2Fregistrations%2F{id}", server.id_scope), now() + 3600, key, None);
    options.set_credentials(format_username(&server.id_scope, id, "2019-03-31", None), password);
    options.set_transport(Transport::tls_with_config(rumqttc::TlsConfiguration::Rustls(Arc::new(
        server.tls_config().unwrap(),
    ))));
    let (client, mut events) = AsyncClient::new(options, 16);
    client.subscribe(RESPONSE_FILTER, QoS::AtLeastOnce).await.unwrap();
    loop {
        if let Event::Incoming(Packet::SubAck(_)) = next(&mut events).await {
            return (client, events);
        }
    }
}

async fn next(events: &mut EventLoop) -> Event {
    tokio::time::timeout(Duration::from_secs(20), events.poll()).await.expect("no MQTT event").expect("MQTT failed")
}

/// `ROUND` publishes to made-up topics, each answered before the next is sent.
async fn attack_mqtt(client: &AsyncClient, events: &mut EventLoop, round: usize) {
    for i in 0..ROUND {
        let topic = format!("$dps/registrations/ZT{round}X{i}/{}/?$rid={i}", uuid::Uuid::new_v4());
        client.publish(topic, QoS::AtMostOnce, false, b"{}".to_vec()).await.unwrap();
        loop {
            if let Event::Incoming(Packet::Publish(_)) = next(events).await {
                break;
            }
        }
    }
}

/// Checks that every label of every series comes from a fixed set: no made-up method, path or topic in it.
fn assert_fixed_labels(series: &BTreeMap<String, f64>) {
    for key in series.keys() {
        assert!(!key.contains("ZT") && !key.contains("zt-"), "a client-chosen label value: {key}");
        if let Some(method) = label(key, "method") {
            assert!(METHOD_LABELS.contains(&method), "method label {method:?}: {key}");
        }
        if let Some(listener) = label(key, "listener") {
            assert!(["service", "device", "mqtt"].contains(&listener), "listener label {listener:?}: {key}");
        }
        if let Some(route) = label(key, "route") {
            let fixed = ["(unmatched)", "register", "operationStatus"].contains(&route) || route.starts_with('/');
            assert!(fixed, "route {route:?}: {key}");
        }
        if let Some(status) = label(key, "status") {
            assert!(status.parse::<u16>().is_ok_and(|s| (100..600).contains(&s)), "status {status:?}: {key}");
        }
    }
}

async fn made_up_requests_add_no_series(backend: Backend) {
    let args = vec!["--device-rate-limit".into(), "100/10s".into()];
    let server = Server::start_with(backend, Options { args, ..Default::default() }).await.unwrap();
    let key = enroll(&server, "metrics-dev").await;
    let (status, done) = sas_register(&server, "metrics-dev", &key, json!({"registrationId": "metrics-dev"})).await;
    assert_eq!((status, &done["status"]), (200, &Value::from("assigned")), "{done}");
    let (mqtt, mut events) = connect_mqtt(&server, "metrics-dev", &key).await;

    // Round 1 brings in the fixed sets' values these requests use (`other`, `(unmatched)`, 404, 405, ...).
    let before = scrape(&server).await;
    attack_http(&server, &server.device_url, 1).await;
    attack_http(&server, &server.admin_url, 1).await;
    attack_mqtt(&mqtt, &mut events, 1).await;
    let after_one = scrape(&server).await;
    assert_fixed_labels(&after_one);
    // The whole attack added the few combinations of `other`, `(unmatched)`, the real routes and 404/405 (each
    // a counter and a histogram's lines), fewer than one series per request of one listener.
    let added = after_one.len() - before.len();
    assert!(added < ROUND, "{added} series added by {} requests", 3 * ROUND);

    // Round 2, all new methods, paths and topics: not one series more.
    attack_http(&server, &server.device_url, 2).await;
    attack_http(&server, &server.admin_url, 2).await;
    attack_mqtt(&mqtt, &mut events, 2).await;
    let after_two = scrape(&server).await;
    assert_fixed_labels(&after_two);
    let new: Vec<&String> = after_two.keys().filter(|k| !after_one.contains_key(*k)).collect();
    assert!(new.is_empty(), "round 2 added series: {new:?}");
    // Yet every request was counted, under `other` / `(unmatched)`.
    let other = |series: &BTreeMap<String, f64>, listener: &str| -> f64 {
        series
            .iter()
            .filter(|(k, _)| k.starts_with("zerotouch_http_requests_total{"))
            .filter(|(k, _)| label(k, "listener") == Some(listener) && label(k, "method") == Some("other"))
            .map(|(_, v)| v)
            .sum()
    };
    for listener in ["device", "service"] {
        let counted = other(&after_two, listener) - other(&after_one, listener);
        assert_eq!(counted, (ROUND - ROUND / 3) as f64, "{listener}: requests with made-up methods counted");
    }

    // Nothing lost for the legitimate device: it registers again, and is counted under its route.
    let register = |s: &BTreeMap<String, f64>| {
        s.iter()
            .find(|(k, _)| {
                k.starts_with("zerotouch_http_requests_total{")
                    && label(k, "listener") == Some("device")
                    && label(k, "route") == Some("/{idScope}/registrations/{registrationId}/register")
                    && label(k, "method") == Some("PUT")
                    && label(k, "status") == Some("202")
            })
            .map_or(0.0, |(_, v)| *v)
    };
    let (status, done) = sas_register(&server, "metrics-dev", &key, json!({"registrationId": "metrics-dev"})).await;
    assert_eq!((status, &done["status"]), (200, &Value::from("assigned")), "{done}");
    let last = scrape(&server).await;
    assert_eq!(register(&last), register(&after_two) + 1.0);
}

/// Hundreds of requests with made-up methods, paths and MQTT topics on the device, admin and MQTT listeners add
/// series only from the fixed label sets: a second round of all-new ones adds none, every request is still
/// counted, and a legitimate device registers and is counted as before.
#[tokio::test]
async fn made_up_requests_add_no_series_sqlite() {
    made_up_requests_add_no_series(Backend::Sqlite).await;
}

/// The same on PostgreSQL.
#[tokio::test]
async fn made_up_requests_add_no_series_postgres() {
    made_up_requests_add_no_series(Backend::Postgres).await;
}
