#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Device registration over HTTPS, as real devices do it (`docs/protocol/device-api.md` §1, §2, §6, §7, §11).
//!
//! Every device here is a plain reqwest client that builds its SAS token the way one of the real SDKs does, sends
//! `PUT {scope}/registrations/{id}/register`, then polls `GET .../operations/{operationId}` until it gets a 200,
//! and checks what a device (or the operator, through the admin API and the audit log) would check. The custom
//! allocation webhook is a real HTTP server started by the test.

use std::collections::{BTreeMap, BTreeSet};
use std::net::TcpListener;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use futures_util::StreamExt;
use reqwest::Method;
use reqwest::header::HeaderMap;
use serde_json::{Value, json};
use zerotouch_attest::sas;
use zerotouch_tests::webhook::Allocator;
use zerotouch_tests::{Backend, Options, Server, client_trusting};

/// The api-version the C SDK and IoT Edge send; the default of these tests.
const API: &str = "api-version=2021-06-01";
/// A per-device rate that lets one device make many requests (the default is Azure's 5/10s).
const MANY_REQUESTS: &str = "100/10s";
/// How long a test waits for an operation to finish.
const POLL_DEADLINE: Duration = Duration::from_secs(30);

// ---------------------------------------------------------------------------------------------------------------
// The service

/// Starts a server; `many_requests` lifts the per-device rate to [`MANY_REQUESTS`]. Outbound calls may use plain
/// http to loopback (the custom allocation webhooks here listen on 127.0.0.1).
async fn start(backend: Backend, many_requests: bool) -> Server {
    let mut args = vec!["--allow-insecure-outbound".to_owned()];
    if many_requests {
        args.extend(["--device-rate-limit".into(), MANY_REQUESTS.into()]);
    }
    Server::start_with(backend, Options { args, ..Default::default() }).await.unwrap()
}

/// An answer: status, headers and JSON body (`Null` when empty).
#[derive(Debug)]
struct Reply {
    status: u16,
    headers: HeaderMap,
    body: Value,
}

impl Reply {
    async fn read(response: reqwest::Response) -> Self {
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let text = response.text().await.unwrap();
        let body = if text.trim().is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).map_err(|e| format!("{status} answer is not JSON ({e}): {text}")).unwrap()
        };
        Self { status, headers, body }
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(|v| v.to_str().unwrap())
    }
}

/// Checks an Azure error answer: the status, `errorCode` (status = code / 1000), `x-ms-error-code`, and the
/// other fields of `ProvisioningServiceErrorDetails`.
fn assert_azure_error(reply: &Reply, status: u16, code: u64) {
    assert_eq!(reply.status, status, "{}", reply.body);
    assert_eq!(reply.body["errorCode"], code, "{}", reply.body);
    assert_eq!(reply.header("x-ms-error-code"), Some(code.to_string().as_str()), "{:?}", reply.headers);
    for field in ["trackingId", "message", "timestampUtc"] {
        assert!(reply.body[field].as_str().is_some_and(|v| !v.is_empty()), "{field} in {}", reply.body);
    }
}

/// The admin API, as an owner.
struct Admin<'a> {
    server: &'a Server,
    token: String,
}

impl<'a> Admin<'a> {
    fn new(server: &'a Server) -> Self {
        Self { server, token: server.token("owner").unwrap() }
    }

    async fn send(&self, method: Method, path: &str, body: Option<Value>) -> Reply {
        let mut request = self.server.client.request(method, self.server.url(path)).bearer_auth(&self.token);
        if let Some(body) = body {
            request = request.json(&body);
        }
        Reply::read(request.send().await.unwrap()).await
    }

    async fn ok(&self, method: Method, path: &str, body: Option<Value>) -> Value {
        let reply = self.send(method.clone(), path, body).await;
        assert_eq!(reply.status, 200, "{method} {path}: {}", reply.body);
        reply.body
    }

    /// Links a hub (`kind: none`) with an allocation weight.
    async fn hub(&self, host: &str, weight: u32, apply_allocation_policy: bool) {
        let body = json!({
            "hostName": host, "kind": "none", "allocationWeight": weight,
            "applyAllocationPolicy": apply_allocation_policy,
        });
        self.ok(Method::PUT, &format!("/hubs/{host}"), Some(body)).await;
    }

    /// Creates (or replaces) an individual enrollment from `document` (the id is added).
    async fn enrollment(&self, id: &str, mut document: Value) -> Value {
        document["registrationId"] = json!(id);
        self.ok(Method::PUT, &format!("/enrollments/{id}"), Some(document)).await
    }

    /// Creates (or replaces) an enrollment group from `document` (the id is added).
    async fn group(&self, id: &str, mut document: Value) -> Value {
        document["enrollmentGroupId"] = json!(id);
        self.ok(Method::PUT, &format!("/enrollmentGroups/{id}"), Some(document)).await
    }

    async fn registration(&self, id: &str) -> Value {
        self.ok(Method::GET, &format!("/registrations/{id}"), None).await
    }

    /// Every audit event, oldest first (all pages).
    async fn audit(&self) -> Vec<Value> {
        let mut events = Vec::new();
        let mut continuation: Option<String> = None;
        loop {
            let mut request = self
                .server
                .client
                .get(self.server.url("/audit"))
                .bearer_auth(&self.token)
                .header("x-ms-max-item-count", "1000");
            if let Some(token) = &continuation {
                request = request.header("x-ms-continuation", token);
            }
            let reply = Reply::read(request.send().await.unwrap()).await;
            assert_eq!(reply.status, 200, "{}", reply.body);
            events.extend(reply.body.as_array().unwrap().iter().cloned());
            match reply.header("x-ms-continuation").filter(|c| !c.is_empty()) {
                Some(next) => continuation = Some(next.to_owned()),
                None => return events,
            }
        }
    }

    /// The audit events about the registration `id` with action `action`.
    async fn device_events(&self, id: &str, action: &str) -> Vec<Value> {
        self.audit()
            .await
            .into_iter()
            .filter(|e| e["resourceType"] == "registration" && e["resourceId"] == id && e["action"] == action)
            .collect()
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Keys and tokens, as devices make them

/// A fresh random symmetric key (32 bytes).
fn new_key() -> Vec<u8> {
    rand::random::<[u8; 32]>().to_vec()
}

/// `attestation` of a symmetric-key enrollment with these keys.
fn symmetric(primary: &[u8], secondary: &[u8]) -> Value {
    json!({
        "type": "symmetricKey",
        "symmetricKey": {"primaryKey": STANDARD.encode(primary), "secondaryKey": STANDARD.encode(secondary)},
    })
}

/// The key of `registration_id` in a group with `group_key` (§2.2).
fn derived(group_key: &[u8], registration_id: &str) -> Vec<u8> {
    sas::derive_device_key(group_key, registration_id).to_vec()
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

/// How the SDKs build the token's `sr` (§2.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Style {
    /// Python SDK: `quote(resource, safe="")`, upper-case `%2F`, no `skn`.
    Python,
    /// Node SDK: `sr` not encoded, `skn=registration`.
    Node,
    /// C SDK: lower-case `%2f`, `skn=registration`.
    C,
    /// IoT Edge (iot-identity-service): the whole resource lower-cased, `/` not encoded, `skn=registration`.
    Edge,
}

const STYLES: [Style; 4] = [Style::Python, Style::Node, Style::C, Style::Edge];

/// Percent-encodes everything but unreserved characters, with upper- or lower-case hex digits.
fn percent_encode(text: &str, upper: bool) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => char::from(b).to_string(),
            _ if upper => format!("%{b:02X}"),
            _ => format!("%{b:02x}"),
        })
        .collect()
}

/// The `Authorization` value a device of `style` sends for `{scope}/registrations/{id}`, valid until `expiry`.
fn token_as(style: Style, scope: &str, id: &str, key: &[u8], expiry: u64) -> String {
    let resource = format!("{scope}/registrations/{id}");
    let (sr, skn) = match style {
        Style::Python => (percent_encode(&resource, true), None),
        Style::Node => (resource, Some("registration")),
        Style::C => (percent_encode(&resource, false), Some("registration")),
        Style::Edge => (resource.to_lowercase(), Some("registration")),
    };
    sas::sign(&sr, expiry, key, skn)
}

/// A token in the Python style, valid for an hour.
fn token(server: &Server, id: &str, key: &[u8]) -> String {
    token_as(Style::Python, &server.id_scope, id, key, now() + 3600)
}

/// The signature of a token as sent (URL-encoded) and decoded (base64): neither may be logged.
fn signature_forms(token: &str) -> [String; 2] {
    let encoded = token.split(['&', ' ']).find_map(|p| p.strip_prefix("sig=")).unwrap().to_owned();
    let decoded = encoded.replace("%2B", "+").replace("%2F", "/").replace("%3D", "=");
    [encoded, decoded]
}

// ---------------------------------------------------------------------------------------------------------------
// The device side of the protocol

/// One device request: path under the id scope, query, extra headers and body.
struct Call<'a> {
    client: &'a reqwest::Client,
    method: Method,
    path: String,
    query: &'a str,
    auth: Option<&'a str>,
    headers: Vec<(&'a str, &'a str)>,
    body: Option<String>,
}

impl<'a> Call<'a> {
    fn new(server: &'a Server, method: Method, path: String, auth: Option<&'a str>) -> Self {
        Self { client: &server.client, method, path, query: API, auth, headers: Vec::new(), body: None }
    }

    /// `PUT {scope}/registrations/{id}/register` with `{"registrationId": id}`.
    fn register(server: &'a Server, id: &str, auth: Option<&'a str>) -> Self {
        let path = format!("/{}/registrations/{id}/register", server.id_scope);
        let mut call = Self::new(server, Method::PUT, path, auth);
        call.body = Some(json!({"registrationId": id}).to_string());
        call
    }

    /// `GET {scope}/registrations/{id}/operations/{operation}`.
    fn poll(server: &'a Server, id: &str, operation: &str, auth: Option<&'a str>) -> Self {
        Self::new(server, Method::GET, format!("/{}/registrations/{id}/operations/{operation}", server.id_scope), auth)
    }

    /// `POST {scope}/registrations/{id}` (status lookup) with `body`.
    fn lookup(server: &'a Server, id: &str, auth: Option<&'a str>, body: Value) -> Self {
        let mut call = Self::new(server, Method::POST, format!("/{}/registrations/{id}", server.id_scope), auth);
        call.body = Some(body.to_string());
        call
    }

    fn body(mut self, body: Value) -> Self {
        self.body = Some(body.to_string());
        self
    }

    async fn send(self, server: &Server) -> Reply {
        let query = if self.query.is_empty() { String::new() } else { format!("?{}", self.query) };
        let mut request = self.client.request(self.method, server.device(&format!("{}{query}", self.path)));
        if let Some(auth) = self.auth {
            request = request.header("Authorization", auth);
        }
        if let Some(body) = self.body {
            request = request.header("Content-Type", "application/json; charset=utf-8").body(body);
        }
        for (name, value) in self.headers {
            request = request.header(name, value);
        }
        Reply::read(request.send().await.unwrap()).await
    }
}

/// Checks a register answer (202, `{"operationId", "status": "assigning"}`, `Retry-After`, `Location`) and
/// returns the operation id.
fn accepted(reply: &Reply, id: &str) -> String {
    assert_eq!(reply.status, 202, "register of {id}: {}", reply.body);
    let operation = reply.body["operationId"].as_str().unwrap().to_owned();
    assert_eq!(reply.body, json!({"operationId": operation, "status": "assigning"}));
    assert!(operation.chars().all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-'), "{operation}");
    let retry_after: u64 = reply.header("retry-after").expect("Retry-After").parse().unwrap();
    assert!((1..=300).contains(&retry_after), "Retry-After {retry_after}");
    let location = reply.header("location").expect("Location");
    assert!(location.ends_with(&format!("/registrations/{id}/operations/{operation}")), "Location {location}");
    operation
}

/// Polls an operation until it is terminal (200) and returns the answer; 202 means still assigning.
async fn poll_until_done<'a>(call: impl Fn() -> Call<'a>, server: &Server) -> Value {
    let deadline = Instant::now() + POLL_DEADLINE;
    loop {
        let reply = call().send(server).await;
        if matches!(reply.status, 200 | 202) {
            assert_eq!(reply.header("content-type"), Some("application/json"), "{}", reply.body);
        }
        match reply.status {
            200 => return reply.body,
            202 => assert_eq!(reply.body["status"], "assigning", "{}", reply.body),
            other => assert_eq!(other, 200, "poll: {}", reply.body),
        }
        assert!(Instant::now() < deadline, "the operation did not finish within {POLL_DEADLINE:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Registers `id` with `auth` and polls the operation to its end; returns the final operation.
async fn provision(server: &Server, id: &str, auth: &str) -> Value {
    provision_with(server, id, auth, Call::register(server, id, Some(auth))).await
}

/// Sends `register` (a register call of `id`) and polls the operation with the same api-version to its end.
async fn provision_with(server: &Server, id: &str, auth: &str, register: Call<'_>) -> Value {
    let query = register.query;
    let reply = register.send(server).await;
    let operation = accepted(&reply, id);
    let done = poll_until_done(
        || {
            let mut call = Call::poll(server, id, &operation, Some(auth));
            call.query = query;
            call
        },
        server,
    )
    .await;
    assert_eq!(done["operationId"], operation.as_str(), "{done}");
    done
}

/// Checks an assigned operation: hub, device id, substatus and the record's times and etag.
fn assert_assigned(done: &Value, id: &str, hub: &str, device_id: &str, substatus: &str) {
    assert_eq!(done["status"], "assigned", "{done}");
    let state = &done["registrationState"];
    assert_eq!(state["registrationId"], id, "{done}");
    assert_eq!(state["status"], "assigned", "{done}");
    assert_eq!(state["assignedHub"], hub, "{done}");
    assert_eq!(state["deviceId"], device_id, "{done}");
    assert_eq!(state["substatus"], substatus, "{done}");
    for field in ["createdDateTimeUtc", "lastUpdatedDateTimeUtc", "etag"] {
        assert!(state[field].as_str().is_some_and(|v| !v.is_empty()), "{field} in {done}");
    }
    assert!(state.get("errorCode").is_none(), "{done}");
}

/// Checks a failed operation: the error code and message, no hub.
fn assert_failed(done: &Value, id: &str, code: u64, message: &str) {
    assert_eq!(done["status"], "failed", "{done}");
    let state = &done["registrationState"];
    assert_eq!(state["registrationId"], id, "{done}");
    assert_eq!(state["status"], "failed", "{done}");
    assert_eq!(state["errorCode"], code, "{done}");
    assert!(state["errorMessage"].as_str().unwrap().starts_with(message), "{done}");
    assert!(state.get("assignedHub").is_none(), "{done}");
}

/// The fields of a registration that the device and the admin API both show.
fn shared_fields(state: &Value) -> BTreeMap<&'static str, Value> {
    [
        "registrationId",
        "assignedHub",
        "deviceId",
        "status",
        "substatus",
        "createdDateTimeUtc",
        "lastUpdatedDateTimeUtc",
        "etag",
    ]
    .into_iter()
    .map(|f| (f, state[f].clone()))
    .collect()
}

// ---------------------------------------------------------------------------------------------------------------
// 1. Every SAS client style, every key kind, every accepted request shape

async fn every_client_style_registers(backend: Backend) {
    let server = start(backend, true).await;
    let admin = Admin::new(&server);
    let hub = "hub-styles.example.com";
    admin.hub(hub, 100, true).await;
    let (group_primary, group_secondary) = (new_key(), new_key());
    admin.group("style-group", json!({"attestation": symmetric(&group_primary, &group_secondary)})).await;
    let mut secrets: Vec<String> = [&group_primary, &group_secondary].iter().map(|k| STANDARD.encode(k)).collect();

    for style in STYLES {
        // Upper-case letters in every id, so that IoT Edge's lower-cased resource differs from the URL's.
        let name = format!("{style:?}");
        let individual = format!("Ind-{name}-Dev");
        let device_id = format!("hub-device-{}", name.to_lowercase());
        let (primary, secondary) = (new_key(), new_key());
        admin
            .enrollment(&individual, json!({"attestation": symmetric(&primary, &secondary), "deviceId": device_id}))
            .await;
        let bare = format!("Bare-{name}-Dev");
        let (bare_primary, bare_secondary) = (new_key(), new_key());
        admin.enrollment(&bare, json!({"attestation": symmetric(&bare_primary, &bare_secondary)})).await;
        let grouped = format!("Grp-{name}-Dev");
        let group_device_key = derived(&group_primary, &grouped);
        let group_device_secondary = derived(&group_secondary, &grouped);

        let cases: [(&str, &str, &[u8]); 5] = [
            (&individual, &device_id, &primary),
            (&individual, &device_id, &secondary),
            (&bare, &bare, &bare_primary),
            (&grouped, &grouped, &group_device_key),
            (&grouped, &grouped, &group_device_secondary),
        ];
        for (id, expected_device_id, key) in cases {
            let auth = token_as(style, &server.id_scope, id, key, now() + 3600);
            secrets.push(auth.clone());
            secrets.extend(signature_forms(&auth));
            secrets.push(STANDARD.encode(key));
            let done = provision(&server, id, &auth).await;
            assert_assigned(&done, id, hub, expected_device_id, "initialAssignment");
            let group = &done["registrationState"]["symmetricKey"]["enrollmentGroupId"];
            if id == grouped {
                assert_eq!(group, "style-group", "{done}");
            } else {
                assert!(group.is_null(), "{done}");
            }
            // The operator sees the same state, and a `register` event with what happened.
            let record = admin.registration(id).await;
            assert_eq!(shared_fields(&record), shared_fields(&done["registrationState"]), "{style:?} {id}");
            let events = admin.device_events(id, "register").await;
            let last = events.last().expect("a register event");
            assert!(last["detail"].as_str().is_some_and(|d| d.contains(hub)), "{last}");
            assert_eq!(last["etagAfter"], done["registrationState"]["etag"], "{last}");
        }
    }

    // Every request shape real clients send, on one device.
    let id = "Api-Shapes-Dev";
    let key = new_key();
    admin.enrollment(id, json!({"attestation": symmetric(&key, &new_key()), "deviceId": "shapes-device"})).await;
    let auth = token(&server, id, &key);
    let api_versions = ["api-version=2019-03-31", API, "api-version=2021-10-01", "api-version=2025-07-01-preview", ""];
    for query in api_versions {
        let mut call = Call::register(&server, id, Some(&auth));
        call.query = query;
        let done = provision_with(&server, id, &auth, call).await;
        assert_assigned(&done, id, hub, "shapes-device", "initialAssignment");
    }
    let mut variants: Vec<(&str, Call<'_>)> = Vec::new();
    let mut call = Call::register(&server, id, Some(&auth));
    call.query = "api-version=2019-03-31&forceRegistration=true";
    variants.push(("forceRegistration", call));
    let mut call = Call::register(&server, id, Some(&auth));
    call.headers.push(("Content-Encoding", "utf-8"));
    variants.push(("Content-Encoding: utf-8", call));
    let mut call = Call::register(&server, id, Some(&auth));
    call.headers.extend([("UserAgent", "prov_device_client/1.0"), ("Accept", "application/json")]);
    variants.push(("UserAgent", call));
    let mut call = Call::register(&server, id, Some(&auth));
    call.body = None;
    variants.push(("no body", call));
    let mut call = Call::register(&server, id, Some(&auth));
    call.body = Some(String::new());
    variants.push(("empty JSON body", call));
    variants.push((
        "Python body",
        Call::register(&server, id, Some(&auth)).body(json!({"payload": null, "registrationId": id})),
    ));
    variants
        .push(("no registrationId", Call::register(&server, id, Some(&auth)).body(json!({"payload": {"model": "x"}}))));
    for (what, call) in variants {
        let done = provision_with(&server, id, &auth, call).await;
        assert_eq!(done["status"], "assigned", "{what}: {done}");
        assert_assigned(&done, id, hub, "shapes-device", "initialAssignment");
    }
    // One record for the device however often it registered, and a register event for each time.
    assert_eq!(admin.registration(id).await["deviceId"], "shapes-device");
    assert_eq!(admin.device_events(id, "register").await.len(), api_versions.len() + 7);

    let audit = serde_json::to_string(&admin.audit().await).unwrap();
    let logs = server.logs();
    for secret in &secrets {
        assert!(!audit.contains(secret.as_str()), "the audit log holds a key or token: {secret}");
        assert!(!logs.contains(secret.as_str()), "the service log holds a key or token: {secret}");
    }
}

/// Tokens in the Python, Node, C and IoT Edge styles verify with an individual enrollment's primary and secondary
/// keys and with group-derived keys; every api-version and request shape real clients send registers the device.
#[tokio::test]
async fn every_client_style_registers_sqlite() {
    every_client_style_registers(Backend::Sqlite).await;
}

/// The same on PostgreSQL.
#[tokio::test]
async fn every_client_style_registers_postgres() {
    every_client_style_registers(Backend::Postgres).await;
}

// ---------------------------------------------------------------------------------------------------------------
// 2. Refusals

async fn refusals_are_uniform_and_audited(backend: Backend) {
    // The victim's id is tried a dozen times: lift the per-device rate.
    let server = start(backend, true).await;
    let admin = Admin::new(&server);
    admin.hub("hub-refusals.example.com", 100, true).await;
    let scope = server.id_scope.clone();
    let mut other_scope = scope.clone();
    let last = other_scope.pop().unwrap();
    other_scope.push(if last == '0' { '1' } else { '0' });

    let victim = "Victim-Dev";
    let victim_key = new_key();
    admin.enrollment(victim, json!({"attestation": symmetric(&victim_key, &new_key())})).await;
    let attacker = "Attacker-Dev";
    let attacker_key = new_key();
    admin.enrollment(attacker, json!({"attestation": symmetric(&attacker_key, &new_key())})).await;
    let cert = rcgen::generate_simple_self_signed(vec!["X509-Dev".to_owned()]).unwrap();
    let x509 = json!({"type": "x509", "x509": {"clientCertificates": {"primary": {"certificate": cert.cert.pem()}}}});
    admin.enrollment("X509-Dev", json!({"attestation": x509})).await;
    // A group, so that an unknown device's token is tried against a derived key too.
    admin.group("refusal-group", json!({"attestation": symmetric(&new_key(), &new_key())})).await;

    let soon = now() + 3600;
    let forged_key = new_key();
    let sign = |sr: &str, expiry: u64, key: &[u8], skn: Option<&str>| sas::sign(sr, expiry, key, skn);
    let victim_sr = format!("{scope}%2Fregistrations%2F{victim}");
    // (what, URL scope, URL registration id, Authorization, a word the audit detail must hold)
    let cases: Vec<(&str, String, &str, Option<String>, &str)> = vec![
        ("forged signature", scope.clone(), victim, Some(sign(&victim_sr, soon, &forged_key, None)), "signature"),
        (
            "expired beyond the skew",
            scope.clone(),
            victim,
            Some(sign(&victim_sr, now() - 400, &victim_key, None)),
            "expired",
        ),
        (
            "another id scope",
            other_scope.clone(),
            victim,
            Some(sign(&format!("{other_scope}%2Fregistrations%2F{victim}"), soon, &victim_key, None)),
            "scope",
        ),
        (
            "a token for another id scope",
            scope.clone(),
            victim,
            Some(sign(&format!("{other_scope}%2Fregistrations%2F{victim}"), soon, &victim_key, None)),
            "another resource",
        ),
        (
            "another device's token",
            scope.clone(),
            victim,
            Some(token(&server, attacker, &attacker_key)),
            "another resource",
        ),
        (
            "skn=iothubowner",
            scope.clone(),
            victim,
            Some(sign(&victim_sr, soon, &victim_key, Some("iothubowner"))),
            "skn",
        ),
        (
            "malformed header",
            scope.clone(),
            victim,
            Some(format!("SharedAccessSignature sr={victim_sr}&se={soon}")),
            "malformed",
        ),
        ("not a SAS header", scope.clone(), victim, Some("Bearer abc.def.ghi".to_owned()), "SharedAccessSignature"),
        ("no header", scope.clone(), victim, None, "no credentials"),
        (
            "unknown registration id",
            scope.clone(),
            "Nobody-Dev",
            Some(token(&server, "Nobody-Dev", &forged_key)),
            "no enrollment",
        ),
        (
            "an x509 device presenting SAS",
            scope.clone(),
            "X509-Dev",
            Some(token(&server, "X509-Dev", &victim_key)),
            "x509",
        ),
    ];

    let mut secrets: Vec<String> =
        [&victim_key, &attacker_key, &forged_key].iter().map(|k| STANDARD.encode(k)).collect();
    let mut messages = BTreeSet::new();
    for (what, url_scope, id, auth, reason) in &cases {
        if let Some(auth) = auth {
            secrets.push(auth.clone());
            if auth.contains("sig=") {
                secrets.extend(signature_forms(auth));
            }
        }
        let mut call = Call::register(&server, id, auth.as_deref());
        call.path = format!("/{url_scope}/registrations/{id}/register");
        let reply = call.send(&server).await;
        assert_azure_error(&reply, 401, 401002);
        messages.insert(reply.body["message"].as_str().unwrap().to_owned());
        // The reason is in the audit log, not in the answer.
        let events = admin.device_events(id, "register").await;
        assert!(!events.is_empty(), "{what}: no audit event");
        let event = events.last().unwrap();
        let detail = event["detail"].as_str().unwrap_or_default();
        assert!(detail.to_lowercase().contains(&reason.to_lowercase()), "{what}: detail {detail:?}");
        assert!(event.get("etagAfter").is_none(), "{what}: a refusal changes nothing: {event}");
    }
    assert_eq!(messages.len(), 1, "every refusal reads the same: {messages:?}");
    let message = messages.into_iter().next().unwrap();
    for hint in ["expire", "signature", "scope", "skn", "x509", "enrollment", "token", "resource", "key"] {
        assert!(!message.to_lowercase().contains(hint), "the message hints at the reason: {message:?}");
    }
    // Nothing was registered.
    for id in [victim, "Nobody-Dev", "X509-Dev"] {
        let reply = admin.send(Method::GET, &format!("/registrations/{id}"), None).await;
        assert_eq!(reply.status, 404, "{id}: {}", reply.body);
    }

    // A poll and a status lookup with a forged token are refused the same way.
    let forged = sign(&victim_sr, soon, &forged_key, None);
    let reply = Call::poll(&server, victim, "4.0000000000000000.made-up", Some(&forged)).send(&server).await;
    assert_azure_error(&reply, 401, 401002);
    assert_eq!(reply.body["message"], message.as_str());
    let reply = Call::lookup(&server, victim, Some(&forged), json!({"registrationId": victim})).send(&server).await;
    assert_azure_error(&reply, 401, 401002);
    assert_eq!(reply.body["message"], message.as_str());

    // Expired, but within the 300 s clock-skew allowance: accepted.
    let skewed = sign(&victim_sr, now() - 200, &victim_key, None);
    secrets.push(skewed.clone());
    let done = provision(&server, victim, &skewed).await;
    assert_assigned(&done, victim, "hub-refusals.example.com", victim, "initialAssignment");

    let audit = serde_json::to_string(&admin.audit().await).unwrap();
    let logs = server.logs();
    for secret in &secrets {
        assert!(!audit.contains(secret.as_str()), "the audit log holds a key or token: {secret}");
        assert!(!logs.contains(secret.as_str()), "the service log holds a key or token: {secret}");
    }
}

/// Forged, expired, other-scope, other-device, wrong-skn, malformed and missing tokens, unknown devices and an
/// x509 device presenting SAS all get the same 401 401002; each attempt is audited with its reason, no secret is
/// logged, and a token expired within the clock-skew allowance is accepted.
#[tokio::test]
async fn refusals_are_uniform_and_audited_sqlite() {
    refusals_are_uniform_and_audited(Backend::Sqlite).await;
}

/// The same on PostgreSQL.
#[tokio::test]
async fn refusals_are_uniform_and_audited_postgres() {
    refusals_are_uniform_and_audited(Backend::Postgres).await;
}

// ---------------------------------------------------------------------------------------------------------------
// 3. Allocation

/// `base` with the fields of `extra` added.
fn with(mut base: Value, extra: Value) -> Value {
    for (field, value) in extra.as_object().unwrap() {
        base[field] = value.clone();
    }
    base
}

async fn static_hashed_and_geo_latency_allocation(backend: Backend) {
    let server = start(backend, true).await;
    let admin = Admin::new(&server);
    let hubs = [("hub-w100.example.com", 100u32), ("hub-w200.example.com", 200), ("hub-w700.example.com", 700)];
    for (host, weight) in hubs {
        admin.hub(host, weight, true).await;
    }
    let all: Vec<&str> = hubs.iter().map(|(host, _)| *host).collect();

    // Static: the one hub named, whatever the weights.
    let key = new_key();
    let document = json!({"attestation": symmetric(&key, &new_key()), "allocationPolicy": "static"});
    admin.enrollment("Static-Dev", with(document, json!({"iotHubs": ["hub-w100.example.com"]}))).await;
    let done = provision(&server, "Static-Dev", &token(&server, "Static-Dev", &key)).await;
    assert_assigned(&done, "Static-Dev", "hub-w100.example.com", "Static-Dev", "initialAssignment");
    let static_key = new_key();
    let document = json!({"attestation": symmetric(&static_key, &new_key()), "allocationPolicy": "static"});
    admin.group("static-group", with(document, json!({"iotHubHostName": "hub-w200.example.com"}))).await;
    for i in 0..5 {
        let id = format!("static-group-dev-{i}");
        let done = provision(&server, &id, &token(&server, &id, &derived(&static_key, &id))).await;
        assert_assigned(&done, &id, "hub-w200.example.com", &id, "initialAssignment");
    }

    // Hashed: 300 devices of one group spread roughly as the weights say.
    let fleet_key = new_key();
    let document = json!({"attestation": symmetric(&fleet_key, &new_key()), "allocationPolicy": "hashed"});
    admin.group("hashed-fleet", with(document, json!({"iotHubs": all}))).await;
    let ids: Vec<String> = (0..300).map(|i| format!("Fleet-Dev-{i:03}")).collect();
    let server_ref = &server;
    let fleet_key_ref = &fleet_key;
    let assigned: Vec<String> = futures_util::stream::iter(ids.iter())
        .map(|id| async move {
            let auth = token(server_ref, id, &derived(fleet_key_ref, id));
            let done = provision(server_ref, id, &auth).await;
            assert_eq!(done["status"], "assigned", "{done}");
            assert_eq!(done["registrationState"]["symmetricKey"]["enrollmentGroupId"], "hashed-fleet", "{done}");
            done["registrationState"]["assignedHub"].as_str().unwrap().to_owned()
        })
        .buffered(16)
        .collect()
        .await;
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for hub in &assigned {
        *counts.entry(hub.as_str()).or_default() += 1;
    }
    let count = |host: &str| counts.get(host).copied().unwrap_or(0);
    assert!(counts.keys().all(|h| all.contains(h)), "{counts:?}");
    for (host, weight) in hubs {
        let share = count(host) as f64 / ids.len() as f64;
        let expected = f64::from(weight) / 1000.0;
        assert!(
            (share - expected).abs() < 0.1,
            "{host}: {share:.3} of the devices, weight share {expected}: {counts:?}"
        );
    }
    assert!(
        0 < count(all[0]) && count(all[0]) < count(all[1]) && count(all[1]) < count(all[2]),
        "shares do not follow the weights: {counts:?}"
    );
    // The group's registrations are the 300 devices.
    let page = admin
        .server
        .client
        .post(server.url("/registrations/hashed-fleet/query"))
        .bearer_auth(&admin.token)
        .header("x-ms-max-item-count", "1000")
        .send()
        .await
        .unwrap();
    let page = Reply::read(page).await;
    assert_eq!(page.body.as_array().map(Vec::len), Some(ids.len()), "{}", page.body);

    // A device keeps its hub when it registers again.
    for (id, hub) in ids.iter().zip(&assigned).take(30) {
        let done = provision(&server, id, &token(&server, id, &derived(&fleet_key, id))).await;
        assert_assigned(&done, id, hub, id, "initialAssignment");
    }

    // geoLatency falls back to hashed: over the same hubs, a device lands where hashed put it.
    let geo_key = new_key();
    let document = json!({"attestation": symmetric(&geo_key, &new_key()), "allocationPolicy": "geoLatency"});
    admin.group("geo-fleet", with(document, json!({"iotHubs": all}))).await;
    for (id, hub) in ids.iter().zip(&assigned).skip(30).take(40) {
        let reply = admin.send(Method::DELETE, &format!("/registrations/{id}"), None).await;
        assert_eq!(reply.status, 204, "{}", reply.body);
        let done = provision(&server, id, &token(&server, id, &derived(&geo_key, id))).await;
        assert_assigned(&done, id, hub, id, "initialAssignment");
        assert_eq!(done["registrationState"]["symmetricKey"]["enrollmentGroupId"], "geo-fleet", "{done}");
    }
}

/// Static allocation assigns the one hub named; hashed allocation spreads 300 group devices roughly by the hub
/// weights 100/200/700 and keeps a device on its hub when it registers again; geoLatency assigns as hashed does.
#[tokio::test]
async fn static_hashed_and_geo_latency_allocation_sqlite() {
    static_hashed_and_geo_latency_allocation(Backend::Sqlite).await;
}

/// The same on PostgreSQL.
#[tokio::test]
async fn static_hashed_and_geo_latency_allocation_postgres() {
    static_hashed_and_geo_latency_allocation(Backend::Postgres).await;
}

/// The payload the webhook returns for device `id`.
fn webhook_payload(id: &str) -> Value {
    json!({"greeting": "hello", "for": id, "settings": {"interval": 30}})
}

/// A custom allocation webhook (an Azure Function's stand-in): `POST /hub/{host}` answers that hub with a payload,
/// `POST /status/{code}` answers that status.
fn webhook_answer(path: &str, request: &Value) -> Result<Value, u16> {
    let id = request["deviceRuntimeContext"]["registrationId"].as_str().unwrap_or_default();
    match path.trim_start_matches('/').split_once('/') {
        Some(("hub", hub)) => Ok(json!({"iotHubHostName": hub, "payload": webhook_payload(id)})),
        Some(("status", code)) => Err(code.parse().unwrap_or(500)),
        _ => Err(404),
    }
}

async fn custom_allocation_webhook(backend: Backend) {
    let server = start(backend, true).await;
    let admin = Admin::new(&server);
    for host in ["hub-a.example.com", "hub-b.example.com", "hub-c.example.com"] {
        admin.hub(host, 100, true).await;
    }
    let webhook = Allocator::start(webhook_answer);
    let linked = json!(["hub-a.example.com", "hub-b.example.com"]);
    let custom = |url: String, key: &[u8]| {
        json!({
            "attestation": symmetric(key, &new_key()),
            "allocationPolicy": "custom",
            "iotHubs": linked,
            "customAllocationDefinition": {"webhookUrl": url, "apiVersion": "2021-10-01"},
        })
    };

    // A group device with a payload: the webhook sees the group, the device, its payload and the linked hubs,
    // and the device gets the webhook's hub and payload.
    let group_key = new_key();
    admin.group("custom-group", custom(format!("{}/hub/hub-b.example.com", webhook.url), &group_key)).await;
    let id = "Custom-Grp-Dev";
    let auth = token(&server, id, &derived(&group_key, id));
    let payload = json!({"model": "thermostat", "firmware": {"version": 3}});
    let register = Call::register(&server, id, Some(&auth)).body(json!({"registrationId": id, "payload": payload}));
    let done = provision_with(&server, id, &auth, register).await;
    assert_assigned(&done, id, "hub-b.example.com", id, "initialAssignment");
    assert_eq!(done["registrationState"]["payload"], webhook_payload(id), "{done}");
    let request = webhook.request_about(id);
    assert_eq!(request["enrollmentGroup"]["enrollmentGroupId"], "custom-group", "{request}");
    assert_eq!(request["enrollmentGroup"]["allocationPolicy"], "custom", "{request}");
    assert!(request.get("individualEnrollment").is_none(), "{request}");
    assert_eq!(request["deviceRuntimeContext"]["registrationId"], id, "{request}");
    assert_eq!(request["deviceRuntimeContext"]["payload"], payload, "{request}");
    let mut offered: Vec<&str> =
        request["linkedHubs"].as_array().unwrap().iter().map(|h| h.as_str().unwrap()).collect();
    offered.sort_unstable();
    assert_eq!(offered, ["hub-a.example.com", "hub-b.example.com"], "{request}");
    assert!(!request.to_string().contains(&STANDARD.encode(&group_key)), "the webhook got the group key: {request}");
    assert_eq!(admin.registration(id).await["payload"], webhook_payload(id));

    // An individual enrollment without a device payload.
    let key = new_key();
    let id = "Custom-Ind-Dev";
    admin.enrollment(id, custom(format!("{}/hub/hub-a.example.com", webhook.url), &key)).await;
    let done = provision(&server, id, &token(&server, id, &key)).await;
    assert_assigned(&done, id, "hub-a.example.com", id, "initialAssignment");
    assert_eq!(done["registrationState"]["payload"], webhook_payload(id), "{done}");
    let request = webhook.request_about(id);
    assert_eq!(request["individualEnrollment"]["registrationId"], id, "{request}");
    assert!(request.get("enrollmentGroup").is_none(), "{request}");
    assert!(request["deviceRuntimeContext"]["payload"].is_null(), "{request}");

    // The webhook answers 400: failed, 400207, with a fixed message (the webhook's status and text stay in the log).
    let key = new_key();
    let id = "Custom-Refused-Dev";
    admin.enrollment(id, custom(format!("{}/status/400", webhook.url), &key)).await;
    let done = provision(&server, id, &token(&server, id, &key)).await;
    assert_failed(&done, id, 400207, "Custom allocation failed");
    assert_eq!(done["registrationState"]["errorMessage"], "Custom allocation failed");
    webhook.request_about(id);
    let record = admin.registration(id).await;
    assert_eq!((&record["status"], &record["errorCode"]), (&json!("failed"), &json!(400207)), "{record}");

    // The webhook chooses a hub that is not linked, or one the enrollment does not list: failed, 400207.
    for (id, hub) in [("Custom-Rogue-Dev", "rogue.example.com"), ("Custom-Unlisted-Dev", "hub-c.example.com")] {
        let key = new_key();
        admin.enrollment(id, custom(format!("{}/hub/{hub}", webhook.url), &key)).await;
        let done = provision(&server, id, &token(&server, id, &key)).await;
        assert_failed(&done, id, 400207, "Custom allocation failed");
        webhook.request_about(id);
    }

    // The webhook cannot be reached: failed, 400207.
    let closed = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let key = new_key();
    let id = "Custom-Unreachable-Dev";
    admin.enrollment(id, custom(format!("http://127.0.0.1:{closed}/hub/hub-a.example.com"), &key)).await;
    let done = provision(&server, id, &token(&server, id, &key)).await;
    assert_failed(&done, id, 400207, "Custom allocation failed");

    // A failed device registers again once the webhook answers well.
    let id = "Custom-Refused-Dev";
    let key = admin.ok(Method::POST, &format!("/enrollments/{id}/attestationmechanism"), None).await;
    let key = STANDARD.decode(key["symmetricKey"]["primaryKey"].as_str().unwrap()).unwrap();
    let document = admin.ok(Method::GET, &format!("/enrollments/{id}"), None).await;
    let url = format!("{}/hub/hub-a.example.com", webhook.url);
    admin
        .enrollment(
            id,
            with(document, json!({"customAllocationDefinition": {"webhookUrl": url, "apiVersion": "2021-10-01"}})),
        )
        .await;
    let done = provision(&server, id, &token(&server, id, &key)).await;
    assert_assigned(&done, id, "hub-a.example.com", id, "initialAssignment");

    webhook.stop().await;
}

/// The custom allocation webhook (a real HTTP server) gets the §7 request and its hub and payload reach the
/// device; a 400 answer, an unlinked or unlisted hub, or an unreachable webhook fail the registration with 400207.
#[tokio::test]
async fn custom_allocation_webhook_sqlite() {
    custom_allocation_webhook(Backend::Sqlite).await;
}

/// The same on PostgreSQL.
#[tokio::test]
async fn custom_allocation_webhook_postgres() {
    custom_allocation_webhook(Backend::Postgres).await;
}

async fn no_linked_hub_fails(backend: Backend) {
    let server = start(backend, false).await;
    let admin = Admin::new(&server);
    let key = new_key();
    admin.enrollment("Hubless-Dev", json!({"attestation": symmetric(&key, &new_key())})).await;
    let done = provision(&server, "Hubless-Dev", &token(&server, "Hubless-Dev", &key)).await;
    assert_failed(&done, "Hubless-Dev", 400208, "");
    // A hub that does not take part in allocation does not count.
    admin.hub("hub-opted-out.example.com", 100, false).await;
    let group_key = new_key();
    admin.group("hubless-group", json!({"attestation": symmetric(&group_key, &new_key())})).await;
    let id = "Hubless-Grp-Dev";
    let done = provision(&server, id, &token(&server, id, &derived(&group_key, id))).await;
    assert_failed(&done, id, 400208, "");
    assert!(done["registrationState"]["errorMessage"].as_str().is_some_and(|m| !m.is_empty()), "{done}");
    assert_eq!(admin.registration(id).await["errorCode"], 400208);
}

/// With no hub linked to the enrollment (none at all, or only hubs that opted out of allocation), registration
/// fails with 400208.
#[tokio::test]
async fn no_linked_hub_fails_sqlite() {
    no_linked_hub_fails(Backend::Sqlite).await;
}

/// The same on PostgreSQL.
#[tokio::test]
async fn no_linked_hub_fails_postgres() {
    no_linked_hub_fails(Backend::Postgres).await;
}

// ---------------------------------------------------------------------------------------------------------------
// 4. Reprovisioning

async fn reprovisioning_follows_the_policy(backend: Backend) {
    let server = start(backend, false).await;
    let admin = Admin::new(&server);
    let (old, new) = ("hub-old.example.com", "hub-new.example.com");
    admin.hub(old, 100, true).await;
    admin.hub(new, 100, true).await;
    let cases = [
        ("Reprov-Default-Dev", None, new, "deviceDataMigrated"),
        (
            "Reprov-Reset-Dev",
            Some(json!({"updateHubAssignment": true, "migrateDeviceData": false})),
            new,
            "deviceDataReset",
        ),
        (
            "Reprov-Never-Dev",
            Some(json!({"updateHubAssignment": false, "migrateDeviceData": true})),
            old,
            "initialAssignment",
        ),
    ];
    for (id, policy, hub_after, substatus_after) in cases {
        let key = new_key();
        let mut document =
            json!({"attestation": symmetric(&key, &new_key()), "allocationPolicy": "static", "iotHubs": [old]});
        if let Some(policy) = policy {
            document["reprovisionPolicy"] = policy;
        }
        let created = admin.enrollment(id, document).await;
        if id == "Reprov-Default-Dev" {
            assert_eq!(created["reprovisionPolicy"], json!({"updateHubAssignment": true, "migrateDeviceData": true}));
        }
        let auth = token(&server, id, &key);
        let first = provision(&server, id, &auth).await;
        assert_assigned(&first, id, old, id, "initialAssignment");

        // The operator moves the enrollment to the new hub: GET, change iotHubs, PUT under If-Match.
        let mut document = admin.ok(Method::GET, &format!("/enrollments/{id}"), None).await;
        let etag = document["etag"].as_str().unwrap().to_owned();
        document["iotHubs"] = json!([new]);
        let reply = Reply::read(
            server
                .client
                .put(server.url(&format!("/enrollments/{id}")))
                .bearer_auth(&admin.token)
                .header("If-Match", format!("\"{etag}\""))
                .json(&document)
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(reply.status, 200, "{}", reply.body);

        let again = provision(&server, id, &auth).await;
        assert_assigned(&again, id, hub_after, id, substatus_after);
        let (before, after) = (&first["registrationState"], &again["registrationState"]);
        assert_eq!(after["createdDateTimeUtc"], before["createdDateTimeUtc"], "{id}: the same registration");
        assert_ne!(after["etag"], before["etag"], "{id}");
        assert_eq!(shared_fields(&admin.registration(id).await), shared_fields(after), "{id}");
    }
}

/// After an enrollment moves from hub A to hub B, a re-registering device migrates to B by default
/// (`deviceDataMigrated`), is reset onto B under `migrateDeviceData: false` (`deviceDataReset`), and stays on A
/// under `updateHubAssignment: false`.
#[tokio::test]
async fn reprovisioning_follows_the_policy_sqlite() {
    reprovisioning_follows_the_policy(Backend::Sqlite).await;
}

/// The same on PostgreSQL.
#[tokio::test]
async fn reprovisioning_follows_the_policy_postgres() {
    reprovisioning_follows_the_policy(Backend::Postgres).await;
}

// ---------------------------------------------------------------------------------------------------------------
// 5. Disabled enrollments

async fn disabled_enrollments(backend: Backend) {
    let server = start(backend, false).await;
    let admin = Admin::new(&server);
    admin.hub("hub-disabled.example.com", 100, true).await;
    let key = new_key();
    let id = "Disabled-Dev";
    admin.enrollment(id, json!({"attestation": symmetric(&key, &new_key()), "provisioningStatus": "disabled"})).await;
    let group_key = new_key();
    admin
        .group(
            "disabled-group",
            json!({"attestation": symmetric(&group_key, &new_key()), "provisioningStatus": "disabled"}),
        )
        .await;
    let grouped = "Disabled-Grp-Dev";
    for (id, auth) in
        [(id, token(&server, id, &key)), (grouped, token(&server, grouped, &derived(&group_key, grouped)))]
    {
        let done = provision(&server, id, &auth).await;
        let operation = done["operationId"].clone();
        assert_eq!(
            done,
            json!({"operationId": operation, "status": "disabled", "registrationState": {"registrationId": id, "status": "disabled"}})
        );
    }

    // Enabled again, the device is assigned.
    let document = admin.ok(Method::GET, &format!("/enrollments/{id}"), None).await;
    admin.enrollment(id, with(document, json!({"provisioningStatus": "enabled"}))).await;
    let done = provision(&server, id, &token(&server, id, &key)).await;
    assert_assigned(&done, id, "hub-disabled.example.com", id, "initialAssignment");
}

/// A device of a disabled individual enrollment or enrollment group polls to `status: disabled` with only its
/// registration id and status; once enabled it is assigned.
#[tokio::test]
async fn disabled_enrollments_sqlite() {
    disabled_enrollments(Backend::Sqlite).await;
}

/// The same on PostgreSQL.
#[tokio::test]
async fn disabled_enrollments_postgres() {
    disabled_enrollments(Backend::Postgres).await;
}

// ---------------------------------------------------------------------------------------------------------------
// 6. Concurrency

async fn simultaneous_registers_agree(backend: Backend) {
    const DEVICES: usize = 10;
    let server = start(backend, true).await;
    let admin = Admin::new(&server);
    for host in ["hub-x.example.com", "hub-y.example.com", "hub-z.example.com"] {
        admin.hub(host, 100, true).await;
    }
    let group_key = new_key();
    admin.group("swarm", json!({"attestation": symmetric(&group_key, &new_key()), "allocationPolicy": "hashed"})).await;
    let id = "Swarm-Dev";
    let auth = token(&server, id, &derived(&group_key, id));
    let bundle = server.data_dir.join("trust-bundle.pem");
    let url = server.device(&format!("/{}/registrations/{id}/register?{API}", server.id_scope));
    let health = server.device("/healthz");
    let start_line = Arc::new(tokio::sync::Barrier::new(DEVICES));
    let mut tasks = Vec::new();
    for _ in 0..DEVICES {
        // Each its own client and connection, connected before the start.
        let client = client_trusting(&bundle).unwrap();
        let (url, health, auth, start_line) = (url.clone(), health.clone(), auth.clone(), start_line.clone());
        tasks.push(tokio::spawn(async move {
            assert!(client.get(health).send().await.unwrap().status().is_success());
            start_line.wait().await;
            let response = client.put(url).header("Authorization", auth).json(&json!({"registrationId": id})).send();
            Reply::read(response.await.unwrap()).await
        }));
    }
    let mut operations = BTreeSet::new();
    for task in tasks {
        operations.insert(accepted(&task.await.unwrap(), id));
    }
    assert_eq!(operations.len(), DEVICES, "each register has its own operation");
    let mut hubs = BTreeSet::new();
    for operation in &operations {
        let done = poll_until_done(|| Call::poll(&server, id, operation, Some(&auth)), &server).await;
        assert_eq!(done["status"], "assigned", "{done}");
        assert_eq!(done["registrationState"]["substatus"], "initialAssignment", "{done}");
        hubs.insert(done["registrationState"]["assignedHub"].as_str().unwrap().to_owned());
    }
    assert_eq!(hubs.len(), 1, "one consistent assignment: {hubs:?}");

    // One registration record, and one audited register per request, each changing the state the previous left.
    let page = Reply::read(
        server.client.post(server.url("/registrations/swarm/query")).bearer_auth(&admin.token).send().await.unwrap(),
    )
    .await;
    assert_eq!(page.status, 200, "{}", page.body);
    let records = page.body.as_array().unwrap();
    assert_eq!(records.len(), 1, "{}", page.body);
    assert_eq!(records[0]["registrationId"], id);
    assert_eq!(records[0]["assignedHub"], hubs.first().unwrap().as_str());
    let events = admin.device_events(id, "register").await;
    assert_eq!(events.len(), DEVICES, "{events:#?}");
    assert!(events[0].get("etagBefore").is_none(), "{}", events[0]);
    for pair in events.windows(2) {
        assert_eq!(pair[1]["etagBefore"], pair[0]["etagAfter"], "{pair:#?}");
    }
    assert_eq!(events[DEVICES - 1]["etagAfter"], records[0]["etag"]);
}

/// Ten simultaneous registers of one device, each on its own connection, all get 202 and poll to the same hub;
/// the device has one registration record and ten audited register events, chained etag to etag.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn simultaneous_registers_agree_sqlite() {
    simultaneous_registers_agree(Backend::Sqlite).await;
}

/// The same on PostgreSQL.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn simultaneous_registers_agree_postgres() {
    simultaneous_registers_agree(Backend::Postgres).await;
}

// ---------------------------------------------------------------------------------------------------------------
// 7. Another device's operation

async fn another_devices_operation_is_not_found(backend: Backend) {
    let server = start(backend, false).await;
    let admin = Admin::new(&server);
    admin.hub("hub-ops.example.com", 100, true).await;
    let (owner_key, other_key) = (new_key(), new_key());
    admin.enrollment("Owner-Dev", json!({"attestation": symmetric(&owner_key, &new_key())})).await;
    admin.enrollment("Other-Dev", json!({"attestation": symmetric(&other_key, &new_key())})).await;
    let owner_auth = token(&server, "Owner-Dev", &owner_key);
    let other_auth = token(&server, "Other-Dev", &other_key);
    let owner_operation =
        accepted(&Call::register(&server, "Owner-Dev", Some(&owner_auth)).send(&server).await, "Owner-Dev");
    provision(&server, "Other-Dev", &other_auth).await;

    // The other device, with its own valid token, asks for the owner's operation.
    let reply = Call::poll(&server, "Other-Dev", &owner_operation, Some(&other_auth)).send(&server).await;
    assert_azure_error(&reply, 404, 404201);
    assert!(reply.body.get("registrationState").is_none(), "{}", reply.body);
    // A made-up operation id.
    let made_up = "4.0123456789abcdef.00000000-0000-4000-8000-000000000000";
    let reply = Call::poll(&server, "Owner-Dev", made_up, Some(&owner_auth)).send(&server).await;
    assert_azure_error(&reply, 404, 404201);
    // The owner still reads its own.
    let done = Call::poll(&server, "Owner-Dev", &owner_operation, Some(&owner_auth)).send(&server).await;
    assert_eq!(done.status, 200, "{}", done.body);
    assert_assigned(&done.body, "Owner-Dev", "hub-ops.example.com", "Owner-Dev", "initialAssignment");
}

/// A device polling another device's operation id (with its own valid token) gets 404 404201, as does a made-up
/// operation id; the owner still reads its operation.
#[tokio::test]
async fn another_devices_operation_is_not_found_sqlite() {
    another_devices_operation_is_not_found(Backend::Sqlite).await;
}

/// The same on PostgreSQL.
#[tokio::test]
async fn another_devices_operation_is_not_found_postgres() {
    another_devices_operation_is_not_found(Backend::Postgres).await;
}

// ---------------------------------------------------------------------------------------------------------------
// 8. Limits

async fn polling_limit_per_device(backend: Backend) {
    // The default limit: 5 requests per 10 s per device.
    let server = start(backend, false).await;
    let admin = Admin::new(&server);
    admin.hub("hub-limits.example.com", 100, true).await;
    let (busy_key, calm_key) = (new_key(), new_key());
    admin.enrollment("Busy-Dev", json!({"attestation": symmetric(&busy_key, &new_key())})).await;
    admin.enrollment("Calm-Dev", json!({"attestation": symmetric(&calm_key, &new_key())})).await;
    let busy = token(&server, "Busy-Dev", &busy_key);

    let started = Instant::now();
    let operation = accepted(&Call::register(&server, "Busy-Dev", Some(&busy)).send(&server).await, "Busy-Dev");
    for n in 2..=5 {
        let reply = Call::poll(&server, "Busy-Dev", &operation, Some(&busy)).send(&server).await;
        assert_eq!(reply.status, 200, "request {n}: {}", reply.body);
    }
    let sixth = Call::poll(&server, "Busy-Dev", &operation, Some(&busy)).send(&server).await;
    assert!(started.elapsed() < Duration::from_secs(10), "the six requests took {:?}", started.elapsed());
    assert_azure_error(&sixth, 429, 429001);
    let wait: u64 = sixth.header("retry-after").expect("Retry-After").parse().unwrap();
    assert!((1..=10).contains(&wait), "Retry-After {wait}");
    let register = Call::register(&server, "Busy-Dev", Some(&busy)).send(&server).await;
    assert_azure_error(&register, 429, 429001);

    // Another device is unaffected, even by a flood of requests with bad credentials under its id: those are
    // refused (401) without using up the device's own budget.
    let forged = token(&server, "Calm-Dev", &new_key());
    for _ in 0..8 {
        let reply = Call::register(&server, "Calm-Dev", Some(&forged)).send(&server).await;
        assert_azure_error(&reply, 401, 401002);
    }
    let done = provision(&server, "Calm-Dev", &token(&server, "Calm-Dev", &calm_key)).await;
    assert_assigned(&done, "Calm-Dev", "hub-limits.example.com", "Calm-Dev", "initialAssignment");
}

/// Under the default limit of 5 requests per 10 s, a device's sixth request gets 429 429001 with `Retry-After`;
/// another device registers normally, even after requests with bad credentials under its id.
#[tokio::test]
async fn polling_limit_per_device_sqlite() {
    polling_limit_per_device(Backend::Sqlite).await;
}

/// The same on PostgreSQL.
#[tokio::test]
async fn polling_limit_per_device_postgres() {
    polling_limit_per_device(Backend::Postgres).await;
}

// ---------------------------------------------------------------------------------------------------------------
// 9. Status lookup

async fn status_lookup(backend: Backend) {
    let server = start(backend, true).await;
    let admin = Admin::new(&server);
    admin.hub("hub-lookup.example.com", 100, true).await;
    let key = new_key();
    let id = "Lookup-Dev";
    admin.enrollment(id, json!({"attestation": symmetric(&key, &new_key()), "deviceId": "lookup-device"})).await;
    let auth = token(&server, id, &key);

    let before = Call::lookup(&server, id, Some(&auth), json!({"registrationId": id})).send(&server).await;
    assert_azure_error(&before, 404, 404201);

    let done = provision(&server, id, &auth).await;
    assert_assigned(&done, id, "hub-lookup.example.com", "lookup-device", "initialAssignment");
    for body in [json!({"registrationId": id}), json!({"payload": null, "registrationId": id})] {
        let reply = Call::lookup(&server, id, Some(&auth), body).send(&server).await;
        assert_eq!(reply.status, 200, "{}", reply.body);
        // The registration itself, not wrapped in an operation.
        assert!(reply.body.get("operationId").is_none() && reply.body.get("registrationState").is_none());
        assert_eq!(reply.body, done["registrationState"]);
    }
    let mut empty = Call::lookup(&server, id, Some(&auth), json!({}));
    empty.body = None;
    let reply = empty.send(&server).await;
    assert_eq!((reply.status, &reply.body["assignedHub"]), (200, &json!("hub-lookup.example.com")), "{}", reply.body);

    let with_csr = json!({"registrationId": id, "csr": "MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEA"});
    let reply = Call::lookup(&server, id, Some(&auth), with_csr).send(&server).await;
    assert_eq!(reply.status, 400, "{}", reply.body);
    assert_azure_error(&reply, 400, reply.body["errorCode"].as_u64().unwrap());
    assert!(reply.body["message"].as_str().unwrap().contains("csr"), "{}", reply.body);
}

/// The status lookup answers an assigned device's registration unwrapped, 404 404201 before it registered, and 400
/// when the body carries a CSR.
#[tokio::test]
async fn status_lookup_sqlite() {
    status_lookup(Backend::Sqlite).await;
}

/// The same on PostgreSQL.
#[tokio::test]
async fn status_lookup_postgres() {
    status_lookup(Backend::Postgres).await;
}

// ---------------------------------------------------------------------------------------------------------------
// 10. Bad input

async fn bad_device_input(backend: Backend) {
    let server = start(backend, true).await;
    let admin = Admin::new(&server);
    admin.hub("hub-input.example.com", 100, true).await;
    let key = new_key();
    let id = "Input-Dev";
    admin.enrollment(id, json!({"attestation": symmetric(&key, &new_key())})).await;
    let auth = token(&server, id, &key);
    let scope = server.id_scope.clone();
    let long = "x".repeat(129);

    // (what, method, path, body, status)
    let cases: Vec<(&str, Method, String, Option<String>, u16)> = vec![
        ("129-char id, register", Method::PUT, format!("/{scope}/registrations/{long}/register"), None, 400),
        ("129-char id, poll", Method::GET, format!("/{scope}/registrations/{long}/operations/op"), None, 400),
        ("129-char id, lookup", Method::POST, format!("/{scope}/registrations/{long}"), None, 400),
        ("id with a space", Method::PUT, format!("/{scope}/registrations/bad%20id/register"), None, 400),
        ("id with a slash", Method::PUT, format!("/{scope}/registrations/bad%2Fid/register"), None, 400),
        (
            "body registrationId differs",
            Method::PUT,
            format!("/{scope}/registrations/{id}/register"),
            Some(json!({"registrationId": "Someone-Else"}).to_string()),
            400,
        ),
        (
            "malformed JSON",
            Method::PUT,
            format!("/{scope}/registrations/{id}/register"),
            Some("{\"registrationId\": ".into()),
            400,
        ),
        ("JSON array", Method::PUT, format!("/{scope}/registrations/{id}/register"), Some("[1, 2]".into()), 400),
        (
            "registrationId a number",
            Method::PUT,
            format!("/{scope}/registrations/{id}/register"),
            Some("{\"registrationId\": 5}".into()),
            400,
        ),
        ("malformed lookup body", Method::POST, format!("/{scope}/registrations/{id}"), Some("{".into()), 400),
        ("unknown route", Method::GET, format!("/{scope}/devices/{id}"), None, 404),
        ("unknown action", Method::PUT, format!("/{scope}/registrations/{id}/deregister"), None, 404),
        ("root", Method::GET, "/".into(), None, 404),
        ("GET register", Method::GET, format!("/{scope}/registrations/{id}/register"), None, 405),
        ("DELETE register", Method::DELETE, format!("/{scope}/registrations/{id}/register"), None, 405),
        ("POST operation", Method::POST, format!("/{scope}/registrations/{id}/operations/op"), None, 405),
        ("PUT lookup", Method::PUT, format!("/{scope}/registrations/{id}"), None, 405),
        ("DELETE lookup", Method::DELETE, format!("/{scope}/registrations/{id}"), None, 405),
    ];
    for (what, method, path, body, status) in cases {
        let mut call = Call::new(&server, method, path, Some(&auth));
        call.body = body;
        let reply = call.send(&server).await;
        assert!(reply.status < 500, "{what}: {} {}", reply.status, reply.body);
        assert_eq!(reply.status, status, "{what}: {}", reply.body);
        assert_azure_error(&reply, status, reply.body["errorCode"].as_u64().unwrap_or_default());
        assert_eq!(reply.body["errorCode"].as_u64().unwrap() / 1000, u64::from(status), "{what}: {}", reply.body);
        if what.starts_with("129") {
            assert!(reply.body["message"].as_str().unwrap().contains("registrationId"), "{what}: {}", reply.body);
        }
        if status == 405 {
            let allow = reply.headers.get("allow").map(|v| v.to_str().unwrap().to_owned());
            assert!(allow.as_deref().is_some_and(|a| ["PUT", "GET", "POST"].contains(&a)), "{what}: Allow {allow:?}");
        }
        if what == "body registrationId differs" {
            assert!(reply.body["message"].as_str().unwrap().contains("registrationId"), "{what}: {}", reply.body);
        }
    }

    // None of it registered anything, and the device registers normally afterwards.
    assert_eq!(admin.send(Method::GET, &format!("/registrations/{id}"), None).await.status, 404);
    let done = provision(&server, id, &auth).await;
    assert_assigned(&done, id, "hub-input.example.com", id, "initialAssignment");
}

/// Invalid registration ids, a body id that differs from the URL's, malformed bodies, unknown routes and wrong
/// methods get 400, 404 and 405 with the Azure error body, never a 5xx, and leave the device able to register.
#[tokio::test]
async fn bad_device_input_sqlite() {
    bad_device_input(Backend::Sqlite).await;
}

/// The same on PostgreSQL.
#[tokio::test]
async fn bad_device_input_postgres() {
    bad_device_input(Backend::Postgres).await;
}
