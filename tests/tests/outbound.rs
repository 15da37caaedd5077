//! Issue #17, point 4: the service's outbound calls (custom allocation webhooks, webhook hubs, the JWKS) against
//! real HTTP servers written here, listening on loopback aliases (127.0.0.2, 127.0.0.3: all of 127/8 is loopback
//! on Linux) and on a private address added to `lo` for the test (10.77.0.x; needs root, as the suite does).
//!
//! What an operator would check: a redirect is not followed (the target never hears of the device), an endless
//! answer is cut off long before the webhook's timeout, the device is told a fixed message and never the
//! webhook's status or words, a URL's query never reaches the log, and addresses in refused ranges (private,
//! loopback, cloud metadata) are called only when `--outbound-allow` names them, after name resolution too.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix_web::{App, HttpRequest, HttpResponse, HttpServer, web};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde_json::{Value, json};
use zerotouch_tests::device::sas_register;
use zerotouch_tests::{Api, Backend, Options, Server};

const HUB: &str = "hub-a.example.com";

/// What a webhook was asked: (path, registration id), in order.
type Seen = Arc<Mutex<Vec<(String, String)>>>;

/// A custom allocation webhook: what it was asked (path, registration id), and how it answers by path:
/// `/hub/{hub}` chooses the hub, `/redirect/{hub}` sends a 307 to `/hub/{hub}`, `/endless` answers 200 with a body
/// that never ends, `/status/{code}` answers that status with words the device must never see.
struct Webhook {
    base: String,
    seen: Seen,
    handle: actix_web::dev::ServerHandle,
}

const UPSTREAM_WORDS: &str = "upstream-internal-detail";

async fn answer(request: HttpRequest, body: web::Bytes, seen: web::Data<Seen>) -> HttpResponse {
    let asked: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let id = asked["deviceRuntimeContext"]["registrationId"].as_str().unwrap_or_default().to_owned();
    let path = request.path().to_owned();
    seen.lock().unwrap().push((path.clone(), id));
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    match parts.as_slice() {
        ["hub", hub] => HttpResponse::Ok().json(json!({"iotHubHostName": hub})),
        ["redirect", hub] => {
            HttpResponse::TemporaryRedirect().insert_header(("Location", format!("/hub/{hub}"))).finish()
        }
        ["endless"] => {
            let chunk = web::Bytes::from(vec![b' '; 64 * 1024]);
            let stream = futures_util::stream::repeat_with(move || Ok::<_, actix_web::Error>(chunk.clone()));
            HttpResponse::Ok().content_type("application/json").streaming(stream)
        }
        ["status", code] => {
            let status = code.parse().ok().and_then(|c| actix_web::http::StatusCode::from_u16(c).ok());
            HttpResponse::build(status.unwrap_or(actix_web::http::StatusCode::INTERNAL_SERVER_ERROR))
                .body(UPSTREAM_WORDS)
        }
        _ => HttpResponse::NotFound().finish(),
    }
}

impl Webhook {
    fn start(ip: &str) -> Self {
        let seen: Seen = Arc::default();
        let data = web::Data::new(Arc::clone(&seen));
        let server = HttpServer::new(move || App::new().app_data(data.clone()).default_service(web::post().to(answer)))
            .workers(1)
            .disable_signals()
            .bind((ip, 0))
            .unwrap();
        let address = server.addrs()[0];
        let running = server.run();
        let handle = running.handle();
        tokio::spawn(running);
        Self { base: format!("http://{address}"), seen, handle }
    }

    /// The paths the webhook was asked about device `id`.
    fn asked_about(&self, id: &str) -> Vec<String> {
        self.seen.lock().unwrap().iter().filter(|(_, who)| who == id).map(|(path, _)| path.clone()).collect()
    }
}

/// An address on `lo` for the length of a test (removed on drop). Needs root (or CAP_NET_ADMIN).
struct LoAddress(&'static str);

impl LoAddress {
    fn add(ip: &'static str) -> Self {
        let cidr = format!("{ip}/32");
        let _ = std::process::Command::new("ip").args(["addr", "del", &cidr, "dev", "lo"]).output();
        let output = std::process::Command::new("ip").args(["addr", "add", &cidr, "dev", "lo"]).output().unwrap();
        assert!(
            output.status.success(),
            "ip addr add {cidr} dev lo (this test needs root): {}",
            String::from_utf8_lossy(&output.stderr)
        );
        Self(ip)
    }
}

impl Drop for LoAddress {
    fn drop(&mut self) {
        let cidr = format!("{}/32", self.0);
        let _ = std::process::Command::new("ip").args(["addr", "del", &cidr, "dev", "lo"]).output();
    }
}

async fn start(args: &[&str]) -> Server {
    let args = args.iter().map(|a| (*a).to_owned()).collect();
    let server = Server::start_with(Backend::Sqlite, Options { args, ..Default::default() }).await.unwrap();
    let api = Api::new(&server, "owner");
    let response = api.put(&format!("/hubs/{HUB}"), &json!({"hostName": HUB, "kind": "none"})).await;
    assert_eq!(response.status(), 200, "{}", response.text().await.unwrap());
    server
}

/// Enrolls `id` (a symmetric-key device) with custom allocation through `url`: the answer's status and body, and the
/// device's key.
async fn enroll(server: &Server, id: &str, url: &str) -> (u16, Value, [u8; 32]) {
    let key = rand::random::<[u8; 32]>();
    let enrollment = json!({
        "registrationId": id,
        "attestation": {"type": "symmetricKey", "symmetricKey": {"primaryKey": STANDARD.encode(key),
                                                                  "secondaryKey": STANDARD.encode(rand::random::<[u8; 32]>())}},
        "allocationPolicy": "custom",
        "iotHubs": [HUB],
        "customAllocationDefinition": {"webhookUrl": url, "apiVersion": "2021-10-01"},
    });
    let response = Api::new(server, "owner").put(&format!("/enrollments/{id}"), &enrollment).await;
    let status = response.status().as_u16();
    (status, response.json().await.unwrap(), key)
}

/// Enrolls `id` with custom allocation through `url`, registers it, and returns the device's final answer.
async fn register_through(server: &Server, id: &str, url: &str) -> Value {
    let (status, body, key) = enroll(server, id, url).await;
    assert_eq!(status, 200, "{body}");
    let (status, done) = sas_register(server, id, &key, json!({})).await;
    assert_eq!(status, 200, "{done}");
    done
}

/// The enrollment is refused (400002) naming the webhook URL, and `reason`.
async fn assert_enrollment_refused(server: &Server, id: &str, url: &str, reason: &str) {
    let (status, body, _) = enroll(server, id, url).await;
    assert_eq!((status, &body["errorCode"]), (400, &json!(400002)), "{body}");
    let message = body["message"].as_str().unwrap();
    assert!(message.contains("customAllocationDefinition.webhookUrl") && message.contains(reason), "{message}");
}

fn assert_assigned(done: &Value) {
    assert_eq!(done["status"], "assigned", "{done}");
    assert_eq!(done["registrationState"]["assignedHub"], HUB, "{done}");
}

/// Failed with 400207 and exactly the fixed message: no status, no words of the webhook.
fn assert_refused(done: &Value) {
    assert_eq!(done["status"], "failed", "{done}");
    assert_eq!(done["registrationState"]["errorCode"], 400207, "{done}");
    assert_eq!(done["registrationState"]["errorMessage"], "Custom allocation failed", "{done}");
}

/// A redirect is not followed, an endless answer is cut off at the cap (long before the 5 s timeout), the device
/// never sees the webhook's status or words, and the URL's query (an Azure Functions key) stays out of the log.
#[tokio::test]
async fn allocation_webhooks_follow_no_redirect_and_read_a_bounded_answer() {
    let server = start(&["--allow-insecure-outbound"]).await;
    let webhook = Webhook::start("127.0.0.2");

    assert_assigned(&register_through(&server, "plain", &format!("{}/hub/{HUB}", webhook.base)).await);

    let done = register_through(&server, "redirected", &format!("{}/redirect/{HUB}", webhook.base)).await;
    assert_refused(&done);
    assert_eq!(webhook.asked_about("redirected"), [format!("/redirect/{HUB}")], "the redirect was followed");

    let started = Instant::now();
    let done = register_through(&server, "endless", &format!("{}/endless", webhook.base)).await;
    assert_refused(&done);
    assert!(started.elapsed() < Duration::from_secs(4), "the endless answer was read until the timeout");
    assert!(server.logs().contains("larger than 98304 bytes"), "the log does not say why");

    let done =
        register_through(&server, "refused", &format!("{}/status/503?code=FUNCTION-KEY-1234", webhook.base)).await;
    assert_refused(&done);
    assert!(!done.to_string().contains(UPSTREAM_WORDS), "{done}");
    assert_eq!(webhook.asked_about("refused"), ["/status/503"]);
    let logs = server.logs();
    assert!(logs.contains("/status/503"), "the log does not name the webhook");
    assert!(!logs.contains("FUNCTION-KEY-1234"), "the URL's query reached the log");
    webhook.handle.stop(true).await;
}

/// A webhook on a private address (10.77.0.1 on `lo`) is not called, for allocation nor as a webhook hub, until
/// `--outbound-allow` names it (an address written as the URL's host is refused when the enrollment or hub is
/// written); `--allow-insecure-outbound` does not open private ranges.
#[tokio::test]
async fn private_addresses_are_called_only_when_the_allow_list_names_them() {
    let _address = LoAddress::add("10.77.0.1");
    let webhook = Webhook::start("10.77.0.1");
    let url = format!("{}/hub/{HUB}", webhook.base);

    let server = start(&["--allow-insecure-outbound"]).await;
    assert_enrollment_refused(&server, "private-1", &url, "10.77.0.1 is a private address").await;
    assert!(webhook.asked_about("private-1").is_empty(), "a private address was called");
    // A webhook hub's URL on that address is refused when it is set, naming the setting.
    let api = Api::new(&server, "owner");
    let hub = json!({"hostName": "hooks.example.com", "kind": "webhook",
                     "settings": {"url": format!("https://10.77.0.1:{}/hook", 443), "secret": "0123456789abcdef0123"}});
    let response = api.put("/hubs/hooks.example.com", &hub).await;
    assert_eq!(response.status(), 400);
    let body: Value = response.json().await.unwrap();
    let message = body["message"].as_str().unwrap();
    assert!(message.contains("url") && message.contains("private address"), "{body}");
    drop(server);

    let opened = start(&["--allow-insecure-outbound", "--outbound-allow", "10.77.0.1/32"]).await;
    assert_assigned(&register_through(&opened, "private-2", &url).await);
    assert_eq!(webhook.asked_about("private-2"), [format!("/hub/{HUB}")]);
    webhook.handle.stop(true).await;
}

/// Without `--allow-insecure-outbound`, plain http goes to loopback only, and loopback only to the addresses the
/// allow-list names (refused when the enrollment is written, for an address); a host name is checked after it
/// resolves, when the webhook is called (`localhost` is 127.0.0.1 or ::1, not listed).
#[tokio::test]
async fn loopback_needs_the_allow_list_and_names_are_checked_once_resolved() {
    let listed = Webhook::start("127.0.0.2");
    let unlisted = Webhook::start("127.0.0.3");
    let by_name = Webhook::start("127.0.0.1");
    let server = start(&["--outbound-allow", "127.0.0.2"]).await;

    assert_assigned(&register_through(&server, "listed", &format!("{}/hub/{HUB}", listed.base)).await);
    let url = format!("{}/hub/{HUB}", unlisted.base);
    assert_enrollment_refused(&server, "unlisted", &url, "127.0.0.3 is a loopback address").await;
    assert!(unlisted.asked_about("unlisted").is_empty());
    assert_enrollment_refused(&server, "plain", &format!("http://hooks.example.com/hub/{HUB}"), "must be https").await;
    // The same in a bulk call: the item is reported, the others are written.
    let item = |id: &str, url: &str| {
        json!({"registrationId": id, "attestation": {"type": "symmetricKey"}, "allocationPolicy": "custom",
               "iotHubs": [HUB], "customAllocationDefinition": {"webhookUrl": url, "apiVersion": "2021-10-01"}})
    };
    let body = json!({"mode": "create", "enrollments": [item("bulk-ok", &format!("{}/hub/{HUB}", listed.base)),
                                                        item("bulk-unlisted", &url)]});
    let response = Api::new(&server, "owner").post("/enrollments", Some(&body)).await;
    assert_eq!(response.status(), 200);
    let answer: Value = response.json().await.unwrap();
    let errors = answer["errors"].as_array().unwrap();
    assert_eq!(errors.len(), 1, "{answer}");
    assert_eq!((&errors[0]["index"], &errors[0]["errorCode"]), (&json!(1), &json!(400002)), "{answer}");
    let port = by_name.base.rsplit(':').next().unwrap();
    assert_refused(&register_through(&server, "by-name", &format!("http://localhost:{port}/hub/{HUB}")).await);
    assert!(by_name.asked_about("by-name").is_empty(), "a name resolving to loopback was called");
    assert!(server.logs().contains("localhost resolves to"), "the log does not say why");
    for webhook in [listed, unlisted, by_name] {
        webhook.handle.stop(true).await;
    }
}

/// A JWKS URL on a cloud metadata address is not fetched: the service starts, says why, and refuses admin tokens.
#[tokio::test]
async fn a_jwks_url_in_a_refused_range_is_not_fetched() {
    let server = Server::start_with(
        Backend::Sqlite,
        Options {
            args: [
                "--jwt-issuer",
                "https://idp.example.com",
                "--jwks-url",
                "https://169.254.169.254/jwks.json?key=IDP-KEY-99",
            ]
            .map(String::from)
            .to_vec(),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let logs = server.logs();
    assert!(!logs.contains("IDP-KEY-99"), "the URL's query reached the log");
    assert!(logs.contains("169.254.169.254 is a cloud metadata service address"), "{logs}");
}
