//! Every admin route round-trips through the real binary, on SQLite and on PostgreSQL.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeSet;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use zerotouch_store::{RegistrationRecord, Store};
use zerotouch_tests::{Backend, Server};

struct Admin<'a> {
    server: &'a Server,
    token: String,
}

impl Admin<'_> {
    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
        headers: &[(&str, &str)],
    ) -> (StatusCode, reqwest::header::HeaderMap, Value) {
        let mut request = self.server.client.request(method, self.server.url(path)).bearer_auth(&self.token);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.unwrap();
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = response.bytes().await.unwrap();
        let body = if bytes.is_empty() { Value::Null } else { serde_json::from_slice(&bytes).unwrap() };
        (status, headers, body)
    }
}

fn etag_header(headers: &reqwest::header::HeaderMap) -> String {
    headers["etag"].to_str().unwrap().trim_matches('"').to_owned()
}

fn assert_error(status: StatusCode, body: &Value, expected_status: u16, code: u64) {
    assert_eq!(status.as_u16(), expected_status, "{body}");
    assert_eq!(body["errorCode"], code, "{body}");
    assert!(body["trackingId"].is_string() && body["timestampUtc"].is_string(), "{body}");
}

fn enrollment(id: &str) -> Value {
    json!({"registrationId": id, "attestation": {"type": "symmetricKey"}})
}

/// Hubs: create, read, list, conditional update, validation, delete.
async fn hubs_round_trip(backend: Backend) {
    let server = Server::start(backend).await.unwrap();
    let admin = Admin { server: &server, token: server.token("owner").unwrap() };
    let hub = json!({"hostName": "Hub-1.example.com", "kind": "none", "allocationWeight": 250});
    let (status, headers, created) = admin.call(Method::PUT, "/hubs/hub-1.example.com", Some(hub.clone()), &[]).await;
    assert_eq!(status, 200, "{created}");
    assert_eq!(created["hostName"], "hub-1.example.com");
    assert_eq!(created["allocationWeight"], 250);
    assert_eq!(created["applyAllocationPolicy"], true);
    assert_eq!(etag_header(&headers), created["etag"].as_str().unwrap());

    let (_, _, read) = admin.call(Method::GET, "/hubs/HUB-1.example.com", None, &[]).await;
    assert_eq!(read, created);
    let (_, _, list) = admin.call(Method::GET, "/hubs", None, &[]).await;
    assert_eq!(list, json!([created]));

    let stale = [("If-Match", "\"not-the-etag\"")];
    let (status, _, body) = admin.call(Method::PUT, "/hubs/hub-1.example.com", Some(hub.clone()), &stale).await;
    assert_error(status, &body, 412, 412001);
    let current = format!("\"{}\"", created["etag"].as_str().unwrap());
    let changed = json!({"hostName": "hub-1.example.com", "kind": "none", "allocationWeight": 10});
    let (status, _, updated) =
        admin.call(Method::PUT, "/hubs/hub-1.example.com", Some(changed), &[("If-Match", &current)]).await;
    assert_eq!(status, 200);
    assert_eq!(updated["allocationWeight"], 10);
    assert_eq!(updated["createdDateTimeUtc"], created["createdDateTimeUtc"]);
    assert_ne!(updated["etag"], created["etag"]);

    let heavy = json!({"hostName": "hub-1.example.com", "kind": "none", "allocationWeight": 1001});
    let (status, _, body) = admin.call(Method::PUT, "/hubs/hub-1.example.com", Some(heavy), &[]).await;
    assert_error(status, &body, 400, 400002);
    assert!(body["message"].as_str().unwrap().contains("allocationWeight"), "{body}");

    let (status, _, _) = admin.call(Method::DELETE, "/hubs/hub-1.example.com", None, &[("If-Match", "*")]).await;
    assert_eq!(status, 204);
    let (status, _, body) = admin.call(Method::GET, "/hubs/hub-1.example.com", None, &[]).await;
    assert_error(status, &body, 404, 404202);
}

/// Enrollments and groups: create with generated keys, read without keys, keys only from attestationmechanism,
/// If-Match (stale and `*` on a missing id: 412), case-insensitive ids, delete.
async fn enrollments_round_trip(backend: Backend) {
    let server = Server::start(backend).await.unwrap();
    let admin = Admin { server: &server, token: server.token("operator").unwrap() };
    for (collection, id_field) in [("enrollments", "registrationId"), ("enrollmentGroups", "enrollmentGroupId")] {
        let document =
            json!({id_field: "Device-A", "attestation": {"type": "symmetricKey"}, "initialTwin": {"tags": {"x": 1}}});
        let path = format!("/{collection}/Device-A");
        let (status, headers, created) = admin.call(Method::PUT, &path, Some(document.clone()), &[]).await;
        assert_eq!(status, 200, "{created}");
        assert_eq!(created[id_field], "Device-A");
        assert_eq!(created["attestation"], json!({"type": "symmetricKey"}), "no keys in the answer");
        assert_eq!(created["provisioningStatus"], "enabled");
        assert_eq!(etag_header(&headers), created["etag"].as_str().unwrap());

        let (_, _, read) = admin.call(Method::GET, &format!("/{collection}/device-a"), None, &[]).await;
        assert_eq!(read, created, "ids are case-insensitive");
        let (status, _, attestation) =
            admin.call(Method::POST, &format!("{path}/attestationmechanism"), None, &[]).await;
        assert_eq!(status, 200);
        let primary = attestation["symmetricKey"]["primaryKey"].as_str().unwrap().to_owned();
        assert_eq!(base64_len(&primary), 64);

        let (status, _, body) =
            admin.call(Method::PUT, &path, Some(document.clone()), &[("If-Match", "\"old\"")]).await;
        assert_error(status, &body, 412, 412001);
        let (_, _, unchanged) = admin.call(Method::GET, &path, None, &[]).await;
        assert_eq!(unchanged["etag"], created["etag"]);
        let (status, _, body) = admin
            .call(
                Method::PUT,
                &format!("/{collection}/missing"),
                Some(json!({id_field: "missing", "attestation": {"type": "symmetricKey"}})),
                &[("If-Match", "*")],
            )
            .await;
        assert_error(status, &body, 412, 412001);

        // A document read with GET and sent back keeps its keys.
        let etag = format!("\"{}\"", created["etag"].as_str().unwrap());
        let (status, _, _) = admin.call(Method::PUT, &path, Some(read.clone()), &[("If-Match", &etag)]).await;
        assert_eq!(status, 200);
        let (_, _, again) = admin.call(Method::POST, &format!("{path}/attestationmechanism"), None, &[]).await;
        assert_eq!(again["symmetricKey"]["primaryKey"], primary.as_str());

        let (status, _, _) = admin.call(Method::DELETE, &path, None, &[]).await;
        assert_eq!(status, 204);
        let (status, _, body) = admin.call(Method::GET, &path, None, &[]).await;
        assert_error(status, &body, 404, 404202);
    }
}

fn base64_len(text: &str) -> usize {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.decode(text).unwrap().len()
}

/// 2,500 enrollments page by continuation token, each exactly once; a bulk call of 1,000 reports its bad items.
async fn bulk_and_paging(backend: Backend) {
    let server = Server::start(backend).await.unwrap();
    let admin = Admin { server: &server, token: server.token("operator").unwrap() };
    let ids: Vec<String> = (0..2500).map(|i| format!("page-{i:05}")).collect();
    for chunk in ids.chunks(1000) {
        let items: Vec<Value> = chunk.iter().map(|id| enrollment(id)).collect();
        let (status, _, result) =
            admin.call(Method::POST, "/enrollments", Some(json!({"mode": "create", "enrollments": items})), &[]).await;
        assert_eq!((status.as_u16(), &result["isSuccessful"]), (200, &json!(true)), "{result}");
    }
    let mut seen = Vec::new();
    let mut continuation: Option<String> = None;
    loop {
        let mut headers = vec![("x-ms-max-item-count", "1000")];
        if let Some(token) = &continuation {
            headers.push(("x-ms-continuation", token.as_str()));
        }
        let query = json!({"query": "SELECT * FROM enrollments"});
        let (status, response_headers, page) =
            admin.call(Method::POST, "/enrollments/query", Some(query), &headers).await;
        assert_eq!(status, 200);
        assert_eq!(response_headers["x-ms-item-type"], "enrollment");
        seen.extend(page.as_array().unwrap().iter().map(|e| e["registrationId"].as_str().unwrap().to_owned()));
        match response_headers.get("x-ms-continuation") {
            Some(token) => continuation = Some(token.to_str().unwrap().to_owned()),
            None => break,
        }
    }
    assert_eq!(seen, ids, "every enrollment once, in order");

    // A bulk call of 1,000 with four bad items: a bad id, a bad key, an id twice, an existing id.
    let mut items: Vec<Value> = (0..1000).map(|i| enrollment(&format!("bulk-{i:04}"))).collect();
    items[10] = enrollment("bad/id");
    items[20] = json!({"registrationId": "bulk-0020", "attestation": {"type": "symmetricKey", "symmetricKey": {"primaryKey": "short"}}});
    items[30] = enrollment("bulk-0031");
    items[40] = enrollment("page-00000");
    let (status, _, result) =
        admin.call(Method::POST, "/enrollments", Some(json!({"mode": "create", "enrollments": items})), &[]).await;
    assert_eq!(status, 200);
    assert_eq!(result["isSuccessful"], false);
    let errors = result["errors"].as_array().unwrap();
    let failed: BTreeSet<u64> = errors.iter().map(|e| e["index"].as_u64().unwrap()).collect();
    assert_eq!(failed, BTreeSet::from([10, 20, 31, 40]), "{result}");
    let by_index = |i: u64| errors.iter().find(|e| e["index"] == i).unwrap();
    assert_eq!(by_index(10)["errorCode"], 400002);
    assert_eq!(by_index(20)["errorCode"], 400002);
    assert!(by_index(20)["errorStatus"].as_str().unwrap().contains("primaryKey"));
    assert_eq!(
        (by_index(31)["errorCode"].as_u64(), by_index(31)["registrationId"].as_str()),
        (Some(409001), Some("bulk-0031"))
    );
    assert_eq!(by_index(40)["errorCode"], 409001);
    let (_, _, page) = admin
        .call(
            Method::POST,
            "/enrollments/query",
            Some(json!({"query": "SELECT * FROM enrollments"})),
            &[("x-ms-max-item-count", "1000")],
        )
        .await;
    let bulk_ids =
        page.as_array().unwrap().iter().filter(|e| e["registrationId"].as_str().unwrap().starts_with("bulk-")).count();
    assert_eq!(bulk_ids, 996, "the good items were applied");
}

/// Registration states: read, query by group (paged), conditional delete; the audit log records the changes.
async fn registrations_and_audit(backend: Backend) {
    let server = Server::start(backend).await.unwrap();
    let admin = Admin { server: &server, token: server.token("operator").unwrap() };
    let group = json!({"enrollmentGroupId": "line-7", "attestation": {"type": "symmetricKey"}});
    let (status, _, _) = admin.call(Method::PUT, "/enrollmentGroups/line-7", Some(group), &[]).await;
    assert_eq!(status, 200);
    let store = Store::connect(&server.database_url).await.unwrap();
    for i in 0..5 {
        let now = chrono::Utc::now();
        store
            .save_registration(RegistrationRecord {
                key: format!("sensor-{i}"),
                registration_id: format!("Sensor-{i}"),
                enrollment_group_key: Some("line-7".into()),
                device_id: Some(format!("Sensor-{i}")),
                assigned_hub: Some("hub.example.com".into()),
                status: "assigned".into(),
                substatus: Some("initialAssignment".into()),
                error_code: None,
                error_message: None,
                payload: None,
                initial_twin: None,
                etag: String::new(),
                created_at: now,
                updated_at: now,
            })
            .await
            .unwrap();
    }
    let (status, headers, state) = admin.call(Method::GET, "/registrations/sensor-0", None, &[]).await;
    assert_eq!(status, 200);
    assert_eq!((state["registrationId"].as_str(), state["status"].as_str()), (Some("Sensor-0"), Some("assigned")));
    assert_eq!(etag_header(&headers), state["etag"].as_str().unwrap());

    let (_, headers, first) =
        admin.call(Method::POST, "/registrations/line-7/query", None, &[("x-ms-max-item-count", "3")]).await;
    assert_eq!(headers["x-ms-item-type"], "deviceRegistration");
    assert_eq!(first.as_array().unwrap().len(), 3);
    let token = headers["x-ms-continuation"].to_str().unwrap().to_owned();
    let (_, headers, rest) = admin
        .call(
            Method::POST,
            "/registrations/line-7/query",
            None,
            &[("x-ms-max-item-count", "3"), ("x-ms-continuation", &token)],
        )
        .await;
    assert_eq!(rest.as_array().unwrap().len(), 2);
    assert!(headers.get("x-ms-continuation").is_none());
    let (status, _, body) = admin.call(Method::POST, "/registrations/no-such-group/query", None, &[]).await;
    assert_error(status, &body, 404, 404202);

    let (status, _, body) =
        admin.call(Method::DELETE, "/registrations/sensor-0", None, &[("If-Match", "\"stale\"")]).await;
    assert_error(status, &body, 412, 412001);
    let current = format!("\"{}\"", state["etag"].as_str().unwrap());
    let (status, _, _) = admin.call(Method::DELETE, "/registrations/sensor-0", None, &[("If-Match", &current)]).await;
    assert_eq!(status, 204);
    let (status, _, body) = admin.call(Method::GET, "/registrations/sensor-0", None, &[]).await;
    assert_error(status, &body, 404, 404202);

    let (status, headers, events) = admin.call(Method::GET, "/audit", None, &[]).await;
    assert_eq!(status, 200);
    assert_eq!(headers["x-ms-item-type"], "auditEvent");
    let events = events.as_array().unwrap();
    let actions: Vec<(&str, &str)> =
        events.iter().map(|e| (e["action"].as_str().unwrap(), e["resourceType"].as_str().unwrap())).collect();
    assert_eq!(actions, [("create", "enrollmentGroup"), ("delete", "registration")]);
    assert!(events.iter().all(|e| e["actor"] == "dev-admin" && e["role"] == "operator"));
    let deleted = &events[1];
    assert_eq!(deleted["etagBefore"], state["etag"]);
    let (_, _, none) = admin.call(Method::GET, "/audit?to=2000-01-01T00:00:00Z", None, &[]).await;
    assert_eq!(none, json!([]));
    let since = events[1]["timestampUtc"].as_str().unwrap();
    let (_, _, later) = admin.call(Method::GET, &format!("/audit?from={}", since.replace('+', "%2B")), None, &[]).await;
    assert_eq!(later.as_array().unwrap().len(), 1);

    for path in ["/healthz", "/readyz"] {
        let response = server.client.get(server.url(path)).send().await.unwrap();
        assert_eq!(response.status(), 200, "{path} needs no token");
    }
    let metrics = server.client.get(server.url("/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(metrics.contains("zerotouch_http_requests_total"), "{metrics}");
}

macro_rules! on_both_backends {
    ($($scenario:ident),+ $(,)?) => {
        $(
            mod $scenario {
                use super::*;

                #[tokio::test]
                async fn sqlite() {
                    super::$scenario(Backend::Sqlite).await;
                }

                #[tokio::test]
                async fn postgres() {
                    super::$scenario(Backend::Postgres).await;
                }
            }
        )+
    };
}

on_both_backends!(hubs_round_trip, enrollments_round_trip, bulk_and_paging, registrations_and_audit);
