//! The webhook adapter against a real local HTTPS receiver (actix-web, rustls) that verifies every signature
//! and records what it was sent.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use actix_web::{App, HttpRequest, HttpResponse, HttpServer, web};
use subtle::ConstantTimeEq;
use zerotouch_hub::webhook::{SIGNATURE_HEADER, mac};
use zerotouch_hub::{Credential, DeviceId, DeviceIdentity, HubAdapter, HubError, adapter_for};
use zerotouch_wire::SymmetricKey;

const SECRET: &str = "a-webhook-secret-of-32-bytes-xyz";

/// One request the receiver accepted: method, device id from the path, body.
type Seen = Arc<Mutex<Vec<(String, String, serde_json::Value)>>>;

/// Checks the signature header the way the crate docs tell a receiver to: MAC over "<t>.<body>", constant time,
/// `t` within 5 minutes.
fn verify(request: &HttpRequest, body: &[u8]) -> Result<(), &'static str> {
    let header = request.headers().get(SIGNATURE_HEADER).ok_or("no signature")?.to_str().map_err(|_| "bad header")?;
    let (t, v1) = header.split_once(",v1=").ok_or("bad header")?;
    let t: u64 = t.strip_prefix("t=").ok_or("bad header")?.parse().map_err(|_| "bad t")?;
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs();
    if now.abs_diff(t) > 300 {
        return Err("stale");
    }
    let given = hex::decode(v1).map_err(|_| "bad hex")?;
    let expected = mac(SECRET.as_bytes(), t, body);
    if bool::from(expected.as_slice().ct_eq(&given)) { Ok(()) } else { Err("bad signature") }
}

async fn device(
    request: HttpRequest,
    path: web::Path<String>,
    body: web::Bytes,
    seen: web::Data<Seen>,
) -> HttpResponse {
    if let Err(why) = verify(&request, &body) {
        return HttpResponse::Unauthorized().body(why);
    }
    let id = path.into_inner();
    let Ok(document) = serde_json::from_slice::<serde_json::Value>(&body) else {
        return HttpResponse::BadRequest().body("not json");
    };
    let method = request.method().as_str().to_owned();
    let operation = match method.as_str() {
        "POST" => "upsert",
        "PUT" => "disable",
        _ => "delete",
    };
    if document["deviceId"] != id.as_str() || document["operation"] != operation {
        return HttpResponse::BadRequest().body("body does not match the request");
    }
    match id.as_str() {
        "fail-500" => return HttpResponse::ServiceUnavailable().finish(),
        "bad-400" => return HttpResponse::BadRequest().body("no such device model"),
        "moved" => return HttpResponse::Found().insert_header(("Location", "/elsewhere")).finish(),
        "slow" => tokio::time::sleep(Duration::from_secs(3)).await,
        "gone" if method == "DELETE" => return HttpResponse::NotFound().finish(),
        _ => {}
    }
    seen.lock().unwrap().push((method, id, document));
    HttpResponse::NoContent().finish()
}

/// Starts the HTTPS receiver on a free port: its base URL, CA PEM, what it saw, the server handle.
fn receiver() -> (String, String, Seen, actix_web::dev::ServerHandle) {
    let ca = support::TestCa::new("webhook test CA");
    let (cert, key) = ca.server();
    let certs = rustls_pemfile::certs(&mut cert.as_bytes()).collect::<Result<Vec<_>, _>>().unwrap();
    let key = rustls_pemfile::private_key(&mut key.as_bytes()).unwrap().unwrap();
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
    let seen: Seen = Arc::default();
    let data = web::Data::new(Arc::clone(&seen));
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = HttpServer::new(move || {
        App::new()
            .app_data(data.clone())
            .route("/hook/devices/{id}", web::post().to(device))
            .route("/hook/devices/{id}", web::put().to(device))
            .route("/hook/devices/{id}", web::delete().to(device))
            .route("/hook/health", web::get().to(HttpResponse::Ok))
    })
    .workers(1)
    .listen_rustls_0_23(listener, config)
    .unwrap()
    .run();
    let handle = server.handle();
    actix_web::rt::spawn(server);
    (format!("https://localhost:{port}/hook"), ca.pem, seen, handle)
}

fn adapter(url: &str, ca: &str, secret: &str) -> Box<dyn HubAdapter> {
    let settings = serde_json::json!({"url": url, "secret": secret, "ca": ca, "timeoutMs": 1000});
    adapter_for("webhook", "hook-1", &settings).unwrap()
}

fn id(text: &str) -> DeviceId {
    DeviceId::try_from(text).unwrap()
}

fn identity(device: &str, credential: Credential) -> DeviceIdentity {
    DeviceIdentity {
        device_id: id(device),
        credential,
        enabled: true,
        initial_twin: Some(serde_json::json!({"tags": {"site": "plant-4"}})),
    }
}

/// Create (certificate and key devices), disable and delete arrive signed, with the documented bodies; a DELETE
/// answered 404 and a repeated delete succeed; health answers.
#[actix_web::test]
async fn receiver_sees_signed_create_disable_delete() {
    let (url, ca, seen, server) = receiver();
    let hub = adapter(&url, &ca, SECRET);
    hub.health().await.unwrap();
    let cert = Credential::Certificate { subject_cn: "dev-1".into(), thumbprint: "ab".repeat(32) };
    hub.upsert_device(&identity("dev-1", cert)).await.unwrap();
    let key = SymmetricKey::generate();
    hub.upsert_device(&identity("dev-2", Credential::SymmetricKey(key.clone()))).await.unwrap();
    hub.disable_device(&id("dev-1")).await.unwrap();
    hub.delete_device(&id("dev-1")).await.unwrap();
    hub.delete_device(&id("dev-1")).await.unwrap();
    hub.delete_device(&id("gone")).await.unwrap();

    let seen = seen.lock().unwrap().clone();
    let summary: Vec<(&str, &str)> = seen.iter().map(|(m, i, _)| (m.as_str(), i.as_str())).collect();
    assert_eq!(
        summary,
        [("POST", "dev-1"), ("POST", "dev-2"), ("PUT", "dev-1"), ("DELETE", "dev-1"), ("DELETE", "dev-1")]
    );
    let created = &seen[0].2;
    assert_eq!(created["enabled"], true);
    assert_eq!(
        created["credential"],
        serde_json::json!({"type": "x509", "subjectName": "dev-1", "thumbprint": "ab".repeat(32)})
    );
    assert_eq!(created["initialTwin"]["tags"]["site"], "plant-4");
    assert_eq!(seen[1].2["credential"]["type"], "symmetricKey");
    assert_eq!(seen[1].2["credential"]["key"], key.to_base64().as_str());
    assert_eq!(seen[2].2, serde_json::json!({"operation": "disable", "deviceId": "dev-1", "enabled": false}));
    server.stop(true).await;
}

/// 5xx and timeouts are `Unavailable`; 4xx, a redirect (not followed) and a bad signature are `Rejected`; a
/// receiver that is not listening is `Unavailable`; every message names the hub and the operation.
#[actix_web::test]
async fn failures_are_classified() {
    let (url, ca, seen, server) = receiver();
    let hub = adapter(&url, &ca, SECRET);
    let key = || Credential::SymmetricKey(SymmetricKey::generate());

    let error = hub.upsert_device(&identity("fail-500", key())).await.unwrap_err();
    assert!(matches!(error, HubError::Unavailable { .. }), "{error:?}");
    assert!(error.to_string().contains("hook-1") && error.to_string().contains("device fail-500"), "{error}");
    let error = hub.upsert_device(&identity("slow", key())).await.unwrap_err();
    assert!(matches!(error, HubError::Unavailable { .. }), "{error:?}");
    let error = hub.upsert_device(&identity("bad-400", key())).await.unwrap_err();
    assert!(matches!(error, HubError::Rejected { .. }), "{error:?}");
    assert!(error.to_string().contains("no such device model"), "{error}");
    let error = hub.disable_device(&id("moved")).await.unwrap_err();
    assert!(matches!(error, HubError::Rejected { .. }), "{error:?}");
    let error = hub.delete_device(&id("bad-400")).await.unwrap_err();
    assert!(matches!(error, HubError::Rejected { .. }), "{error:?}");

    let forged = adapter(&url, &ca, "some-other-secret-of-32-bytes-xy");
    let error = forged.upsert_device(&identity("dev-9", key())).await.unwrap_err();
    assert!(matches!(error, HubError::Rejected { .. }) && error.to_string().contains("bad signature"), "{error}");
    assert!(!format!("{error:?}").contains("some-other-secret"));
    assert!(seen.lock().unwrap().is_empty());

    server.stop(true).await;
    let down = adapter(&format!("https://127.0.0.1:{}/hook", support::free_port()), &ca, SECRET);
    let error = down.delete_device(&id("dev-9")).await.unwrap_err();
    assert!(matches!(error, HubError::Unavailable { .. }), "{error:?}");
    assert!(matches!(down.health().await, Err(HubError::Unavailable { .. })));
}
