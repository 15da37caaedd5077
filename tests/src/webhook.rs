//! A real HTTPS receiver for webhook hubs (actix-web, rustls), written from the documented format rather than from
//! the adapter's code: it checks `X-Zerotouch-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>`
//! in constant time, rejects a `t` more than 5 minutes away, checks that the body's `deviceId` and `operation`
//! match the path and method, and records every request it accepts.
//!
//! Some device ids make it misbehave, for tests of failure handling: `fail-500` (503), `bad-400` (400),
//! `moved` (302), `slow` (answers after 3 s), `gone` (404 to a DELETE).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use actix_web::{App, HttpRequest, HttpResponse, HttpServer, web};
use hmac::{Hmac, Mac};
use serde_json::Value;

/// One request the receiver accepted: method, device id from the path, body.
pub type Seen = Arc<Mutex<Vec<(String, String, Value)>>>;

/// A running receiver; stop it with [`Receiver::stop`].
pub struct Receiver {
    /// The base URL to configure (`https://localhost:PORT/hook`).
    pub url: String,
    /// What it accepted, in order.
    pub seen: Seen,
    handle: actix_web::dev::ServerHandle,
}

struct Secret(Vec<u8>);

fn verify(secret: &[u8], request: &HttpRequest, body: &[u8]) -> Result<(), &'static str> {
    let header =
        request.headers().get("X-Zerotouch-Signature").ok_or("no signature")?.to_str().map_err(|_| "bad header")?;
    let (t, v1) = header.split_once(",v1=").ok_or("bad header")?;
    let t: u64 = t.strip_prefix("t=").ok_or("bad header")?.parse().map_err(|_| "bad t")?;
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs();
    if now.abs_diff(t) > 300 {
        return Err("stale");
    }
    let given = hex::decode(v1).map_err(|_| "bad hex")?;
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(secret).map_err(|_| "bad key")?;
    mac.update(format!("{t}.").as_bytes());
    mac.update(body);
    // verify_slice compares in constant time.
    mac.verify_slice(&given).map_err(|_| "bad signature")
}

async fn device(
    request: HttpRequest,
    path: web::Path<String>,
    body: web::Bytes,
    seen: web::Data<Seen>,
    secret: web::Data<Secret>,
) -> HttpResponse {
    if let Err(why) = verify(&secret.0, &request, &body) {
        return HttpResponse::Unauthorized().body(why);
    }
    let id = path.into_inner();
    let Ok(document) = serde_json::from_slice::<Value>(&body) else {
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

impl Receiver {
    /// Starts a receiver on a free loopback port with the TLS certificate and key (PEM) given, checking signatures
    /// with `secret`. Must run inside an actix or Tokio runtime.
    pub fn start(cert_pem: &str, key_pem: &str, secret: &str) -> Self {
        let certs = rustls_pemfile::certs(&mut cert_pem.as_bytes()).collect::<Result<Vec<_>, _>>().unwrap();
        let key = rustls_pemfile::private_key(&mut key_pem.as_bytes()).unwrap().unwrap();
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .unwrap();
        let seen: Seen = Arc::default();
        let data = web::Data::new(Arc::clone(&seen));
        let secret = web::Data::new(Secret(secret.as_bytes().to_vec()));
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = HttpServer::new(move || {
            App::new()
                .app_data(data.clone())
                .app_data(secret.clone())
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
        tokio::spawn(server);
        Self { url: format!("https://localhost:{port}/hook"), seen, handle }
    }

    /// (method, device id) of every accepted request, in order.
    pub fn summary(&self) -> Vec<(String, String)> {
        self.seen.lock().unwrap().iter().map(|(m, i, _)| (m.clone(), i.clone())).collect()
    }

    /// Stops it.
    pub async fn stop(self) {
        self.handle.stop(true).await;
    }
}

/// A custom allocation webhook (an Azure Function's stand-in) on plain HTTP on loopback (the server needs
/// `--allow-insecure-outbound`): it records every `AllocationRequest` and answers what `answer` makes of the
/// request's path and body: `Ok(body)` with 200, `Err(status)` with that status. Stop it with [`Allocator::stop`].
pub struct Allocator {
    /// Its base URL (`http://127.0.0.1:PORT`): any path under it is the webhook.
    pub url: String,
    requests: Arc<Mutex<Vec<Value>>>,
    handle: actix_web::dev::ServerHandle,
}

/// How an [`Allocator`] answers a request (its path, its body).
type Answer = Box<dyn Fn(&str, &Value) -> Result<Value, u16> + Send + Sync>;

/// An answer that chooses the hub `choose` picks, or answers 400 when it picks none.
pub fn choosing(choose: fn(&Value) -> Option<String>) -> impl Fn(&str, &Value) -> Result<Value, u16> {
    move |_, request| choose(request).map(|hub| serde_json::json!({"iotHubHostName": hub})).ok_or(400)
}

impl Allocator {
    /// Starts one on a free loopback port. Must run inside an actix or Tokio runtime.
    pub fn start(answer: impl Fn(&str, &Value) -> Result<Value, u16> + Send + Sync + 'static) -> Self {
        let requests: Arc<Mutex<Vec<Value>>> = Arc::default();
        let seen = web::Data::new(Arc::clone(&requests));
        let answer: web::Data<Answer> = web::Data::new(Box::new(answer));
        let server = HttpServer::new(move || {
            App::new().app_data(seen.clone()).app_data(answer.clone()).default_service(web::post().to(
                |request: HttpRequest,
                 body: web::Bytes,
                 seen: web::Data<Arc<Mutex<Vec<Value>>>>,
                 answer: web::Data<Answer>| async move {
                    let asked: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                    let answered = (answer.get_ref())(request.path(), &asked);
                    seen.lock().unwrap().push(asked);
                    match answered {
                        Ok(body) => HttpResponse::Ok().json(body),
                        Err(status) => {
                            let status = actix_web::http::StatusCode::from_u16(status)
                                .unwrap_or(actix_web::http::StatusCode::INTERNAL_SERVER_ERROR);
                            HttpResponse::build(status).json(serde_json::json!({"error": "refused"}))
                        }
                    }
                },
            ))
        })
        .workers(1)
        .disable_signals()
        .bind(("127.0.0.1", 0))
        .unwrap();
        let address = server.addrs()[0];
        let running = server.run();
        let handle = running.handle();
        tokio::spawn(running);
        Self { url: format!("http://{address}"), requests, handle }
    }

    /// The one request it received about registration id `id`.
    pub fn request_about(&self, id: &str) -> Value {
        let requests = self.requests.lock().unwrap();
        let about: Vec<&Value> =
            requests.iter().filter(|r| r["deviceRuntimeContext"]["registrationId"] == id).collect();
        assert_eq!(about.len(), 1, "requests about {id}: {about:?}");
        about[0].clone()
    }

    /// Stops it.
    pub async fn stop(self) {
        self.handle.stop(true).await;
    }
}
