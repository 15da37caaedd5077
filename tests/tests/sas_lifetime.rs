#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! SAS tokens have a maximum lifetime (issue 16, point 9; `--sas-max-lifetime`): a token signed with the device's
//! own key but valid for years (one that leaked would stay usable that long) is refused like any bad credential
//! (401002, the reason only in the audit log), for individual and group devices, on register and on poll, while
//! the lifetimes real SDKs sign for (up to the C# SDK's day) keep working.

use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde_json::{Value, json};
use zerotouch_attest::sas;
use zerotouch_tests::device::{API, now};
use zerotouch_tests::swtpm::Swtpm;
use zerotouch_tests::{Api, Backend, Options, Server};

const HUB: &str = "hub-lifetime.example.com";
const DAY: u64 = 86_400;
const TEN_YEARS: u64 = 10 * 365 * DAY;

/// Starts a server with a per-device rate that lets one device make many requests, and the environment `env`.
async fn start(backend: Backend, env: Vec<(String, String)>) -> Server {
    let args = vec!["--device-rate-limit".into(), "100/10s".into()];
    Server::start_with(backend, Options { args, env, ..Default::default() }).await.unwrap()
}

/// A hub, an individual symmetric-key enrollment `individual` and a symmetric-key group; returns the individual
/// device's key and the group key.
async fn enroll(server: &Server, individual: &str) -> (Vec<u8>, Vec<u8>) {
    let api = Api::new(server, "owner");
    let response = api.put(&format!("/hubs/{HUB}"), &json!({"hostName": HUB, "kind": "none"})).await;
    assert_eq!(response.status(), 200, "{}", response.text().await.unwrap());
    let key = rand::random::<[u8; 32]>().to_vec();
    let attestation = json!({"type": "symmetricKey", "symmetricKey": {"primaryKey": STANDARD.encode(&key)}});
    let enrollment = json!({"registrationId": individual, "attestation": attestation, "iotHubs": [HUB]});
    let response = api.put(&format!("/enrollments/{individual}"), &enrollment).await;
    assert_eq!(response.status(), 200, "{}", response.text().await.unwrap());
    let group_key = rand::random::<[u8; 32]>().to_vec();
    let attestation = json!({"type": "symmetricKey", "symmetricKey": {"primaryKey": STANDARD.encode(&group_key)}});
    let group = json!({"enrollmentGroupId": "lifetime-group", "attestation": attestation, "iotHubs": [HUB]});
    let response = api.put("/enrollmentGroups/lifetime-group", &group).await;
    assert_eq!(response.status(), 200, "{}", response.text().await.unwrap());
    (key, group_key)
}

/// A correctly signed token for `id` under `key`, valid until `expiry` (C SDK style: `%2f`, `skn=registration`).
fn token(server: &Server, id: &str, key: &[u8], expiry: u64) -> String {
    sas::sign(&format!("{}%2fregistrations%2f{id}", server.id_scope), expiry, key, Some("registration"))
}

/// Sends a device request (`register` with a body, or a poll): status and JSON body.
async fn send(server: &Server, method: reqwest::Method, path: &str, token: &str, body: Option<Value>) -> (u16, Value) {
    let url = server.device(&format!("/{}/registrations/{path}?{API}", server.id_scope));
    let mut request = server.client.request(method, url).header("Authorization", token);
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.unwrap();
    (response.status().as_u16(), response.json().await.unwrap_or(Value::Null))
}

/// Registers `id` with `token` and polls with it until the operation ends; the final answer's body.
async fn register(server: &Server, id: &str, token: &str) -> Value {
    let (status, reply) =
        send(server, reqwest::Method::PUT, &format!("{id}/register"), token, Some(json!({"registrationId": id}))).await;
    assert_eq!(status, 202, "register of {id}: {reply}");
    let operation = reply["operationId"].as_str().unwrap().to_owned();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (status, reply) =
            send(server, reqwest::Method::GET, &format!("{id}/operations/{operation}"), token, None).await;
        match status {
            200 => return reply,
            202 => assert!(Instant::now() < deadline, "{id}: the operation did not finish"),
            other => panic!("{id}: poll answered {other}: {reply}"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Checks a refusal: 401 with errorCode 401002; returns the message (the same for every refusal).
fn refused(status: u16, reply: &Value) -> String {
    assert_eq!(status, 401, "{reply}");
    assert_eq!(reply["errorCode"], 401002, "{reply}");
    reply["message"].as_str().unwrap().to_owned()
}

/// The details of the audit events of action `action` about the registration `id`.
async fn audited(server: &Server, id: &str, action: &str) -> Vec<String> {
    let reply: Value = Api::new(server, "reader").get("/audit").await.json().await.unwrap();
    reply
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["resourceType"] == "registration" && e["resourceId"] == id && e["action"] == action)
        .map(|e| e["detail"].as_str().unwrap_or_default().to_owned())
        .collect()
}

async fn far_future_token_is_refused_and_audited(backend: Backend) {
    let server = start(backend, vec![]).await;
    let (key, group_key) = enroll(&server, "Long-Lived-Dev").await;
    let group_device = "Group-Long-Dev";
    let group_device_key = sas::derive_device_key(&group_key, group_device).to_vec();

    // A well-formed refusal to compare the message with: a forged signature.
    let forged = token(&server, "Long-Lived-Dev", b"not the device's key", now() + 3600);
    let register_path = |id: &str| format!("{id}/register");
    let (status, reply) = send(
        &server,
        reqwest::Method::PUT,
        &register_path("Long-Lived-Dev"),
        &forged,
        Some(json!({"registrationId": "Long-Lived-Dev"})),
    )
    .await;
    let message = refused(status, &reply);

    // The attack: tokens signed with the right keys, valid for ten years (individual, then group device).
    for (id, key) in [("Long-Lived-Dev", key.as_slice()), (group_device, group_device_key.as_slice())] {
        let long_lived = token(&server, id, key, now() + TEN_YEARS);
        let (status, reply) =
            send(&server, reqwest::Method::PUT, &register_path(id), &long_lived, Some(json!({"registrationId": id})))
                .await;
        assert_eq!(refused(status, &reply), message, "{id}: the refusal reads like any other");
        let details = audited(&server, id, "register").await;
        assert!(details.last().is_some_and(|d| d.contains("maximum lifetime")), "{id}: audit {details:?}");
        let registration = Api::new(&server, "reader").get(&format!("/registrations/{id}")).await;
        assert_eq!(registration.status(), 404, "{id}: nothing was registered");
    }

    // The legitimate devices: the individual one with the longest lifetime an SDK signs for (C#: one day), the
    // group device with an hour (Python, Node); both are assigned.
    let day = token(&server, "Long-Lived-Dev", &key, now() + DAY);
    let done = register(&server, "Long-Lived-Dev", &day).await;
    assert_eq!(done["status"], "assigned", "{done}");
    assert_eq!(done["registrationState"]["assignedHub"], HUB, "{done}");
    let hour = token(&server, group_device, &group_device_key, now() + 3600);
    let done = register(&server, group_device, &hour).await;
    assert_eq!(done["status"], "assigned", "{done}");

    // A poll of the device's real operation with a ten-year token is refused too.
    let operation = done["operationId"].as_str().unwrap();
    let long_lived = token(&server, group_device, &group_device_key, now() + TEN_YEARS);
    let path = format!("{group_device}/operations/{operation}");
    let (status, reply) = send(&server, reqwest::Method::GET, &path, &long_lived, None).await;
    assert_eq!(refused(status, &reply), message);
}

/// A token signed with the device's own key but valid for ten years is refused 401002 with the message of any
/// other refusal and audited as too long-lived, for an individual and a group device, on register and on poll;
/// tokens valid for a day (the C# SDK) and an hour (Python, Node) register.
#[tokio::test]
async fn far_future_token_is_refused_and_audited_sqlite() {
    far_future_token_is_refused_and_audited(Backend::Sqlite).await;
}

/// The same on PostgreSQL.
#[tokio::test]
async fn far_future_token_is_refused_and_audited_postgres() {
    far_future_token_is_refused_and_audited(Backend::Postgres).await;
}

/// `ZEROTOUCH_SAS_MAX_LIFETIME=10m` (plus the 300 s skew) refuses an hour-long token and accepts one for 10
/// minutes: the setting reaches the check.
#[tokio::test]
async fn max_lifetime_is_configurable() {
    let env = vec![("ZEROTOUCH_SAS_MAX_LIFETIME".to_owned(), "10m".to_owned())];
    let server = start(Backend::Sqlite, env).await;
    let (key, _) = enroll(&server, "Short-Dev").await;
    let hour = token(&server, "Short-Dev", &key, now() + 3600);
    let body = Some(json!({"registrationId": "Short-Dev"}));
    let (status, reply) = send(&server, reqwest::Method::PUT, "Short-Dev/register", &hour, body).await;
    refused(status, &reply);
    let details = audited(&server, "Short-Dev", "register").await;
    assert!(details.last().is_some_and(|d| d.contains("maximum lifetime")), "audit {details:?}");
    let ten_minutes = token(&server, "Short-Dev", &key, now() + 600);
    let done = register(&server, "Short-Dev", &ten_minutes).await;
    assert_eq!(done["status"], "assigned", "{done}");
}

/// `s` percent-encoded as the Python SDK and our agent encode `sr` (upper-case hex; `-._~` kept).
fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A TPM device's second leg with a token its TPM signed with the challenge's key but valid for ten years is
/// refused 401002 and audited as too long-lived, and leaves the challenge unused: the same device's one-hour
/// token then registers (tpm2-tools on swtpm as the device).
#[tokio::test]
async fn far_future_tpm_token_is_refused() {
    let tpm = Swtpm::start().unwrap();
    let (ek, srk) = tpm.provision_keys().unwrap();
    let server = start(Backend::Sqlite, vec![]).await;
    enroll(&server, "unused-sym-dev").await;
    let id = "Tpm-Long-Dev";
    let attestation = json!({"type": "tpm", "tpm": {"endorsementKey": ek}});
    let enrollment = json!({"registrationId": id, "attestation": attestation, "iotHubs": [HUB]});
    let response = Api::new(&server, "owner").put(&format!("/enrollments/{id}"), &enrollment).await;
    assert_eq!(response.status(), 200, "{}", response.text().await.unwrap());

    // First leg: no token, the activation blob; the TPM unwraps its key.
    let body = json!({"registrationId": id, "tpm": {"endorsementKey": ek, "storageRootKey": srk}});
    let url = server.device(&format!("/{}/registrations/{id}/register?{API}", server.id_scope));
    let reply: Value = server.client.put(&url).json(&body).send().await.unwrap().json().await.unwrap();
    let blob = STANDARD.decode(reply["authenticationKey"].as_str().expect("a challenge")).unwrap();
    let key = tpm.activate(&blob).unwrap();
    let sr = percent_encode(&format!("{}/registrations/{id}", server.id_scope));
    let signed = |se: u64| {
        let signature = STANDARD.encode(tpm.hmac(&key, format!("{sr}\n{se}").as_bytes()).unwrap());
        format!("SharedAccessSignature sr={sr}&sig={}&se={se}&skn=registration", percent_encode(&signature))
    };

    let (status, reply) =
        send(&server, reqwest::Method::PUT, &format!("{id}/register"), &signed(now() + TEN_YEARS), Some(body.clone()))
            .await;
    refused(status, &reply);
    let details = audited(&server, id, "register").await;
    assert!(details.last().is_some_and(|d| d.contains("maximum lifetime")), "audit {details:?}");

    let done = register(&server, id, &signed(now() + 3600)).await;
    assert_eq!(done["status"], "assigned", "{done}");
}
