//! The service's life cycle: first start, restart with the same data dir, refusal of readable keys, shutdown.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::os::unix::fs::PermissionsExt;

use serde_json::{Value, json};
use zerotouch_tests::{BACKENDS, Backend, Options, Server};

async fn put_enrollment(server: &Server, token: &str, id: &str) -> Value {
    let response = server
        .client
        .put(server.url(&format!("/enrollments/{id}")))
        .bearer_auth(token)
        .json(&json!({"registrationId": id, "attestation": {"type": "symmetricKey"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    response.json().await.unwrap()
}

async fn restart_keeps_data_and_trust_material(backend: Backend) {
    let server = Server::start(backend).await.unwrap();
    let token = server.token("owner").unwrap();
    let created = put_enrollment(&server, &token, "survivor").await;
    let bundle = std::fs::read(server.data_dir.join("trust-bundle.pem")).unwrap();
    let scope = std::fs::read_to_string(server.data_dir.join("id-scope")).unwrap();
    assert!(server.logs().contains("created in"), "first start says what it created");

    let (status, server) = server.restart(backend).await.unwrap();
    assert!(status.success(), "SIGTERM ends the service with exit 0, got {status}");
    assert!(!server.logs().contains("created in"), "a restart creates nothing:\n{}", server.logs());
    assert_eq!(std::fs::read(server.data_dir.join("trust-bundle.pem")).unwrap(), bundle);
    assert_eq!(std::fs::read_to_string(server.data_dir.join("id-scope")).unwrap(), scope);
    // The old token still verifies: the signing key was kept.
    let read: Value = server
        .client
        .get(server.url("/enrollments/survivor"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(read["etag"], created["etag"]);
}

/// A restart with the same data dir keeps enrollments, the trust bundle, the id scope and the token key.
#[tokio::test]
async fn restart_keeps_data_and_trust_material_sqlite() {
    restart_keeps_data_and_trust_material(Backend::Sqlite).await;
}

/// The same on PostgreSQL.
#[tokio::test]
async fn restart_keeps_data_and_trust_material_postgres() {
    restart_keeps_data_and_trust_material(Backend::Postgres).await;
}

/// A key file that group or others can read makes the service refuse to start, naming the file.
#[tokio::test]
async fn a_world_readable_key_file_is_refused() {
    for backend in BACKENDS {
        let mut server = Server::start(backend).await.unwrap();
        server.stop().unwrap();
        let key = server.data_dir.join("token-signing.key");
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
        let options = Options {
            data_dir: Some(server.data_dir.clone()),
            database_url: Some(server.database_url.clone()),
            ..Default::default()
        };
        let err = Server::start_with(backend, options).await.unwrap_err().to_string();
        assert!(err.contains("token-signing.key") && err.contains("0644"), "{err}");
    }
}

/// SIGTERM lets a request that is in flight finish (a 5,000-item bulk import), then the process exits 0.
#[tokio::test]
async fn sigterm_finishes_in_flight_requests_then_exits_zero() {
    for backend in BACKENDS {
        let mut server = Server::start(backend).await.unwrap();
        let token = server.token("operator").unwrap();
        let items: Vec<Value> = (0..5000)
            .map(|i| json!({"registrationId": format!("inflight-{i}"), "attestation": {"type": "symmetricKey"}}))
            .collect();
        let request = server
            .client
            .post(server.url("/enrollments"))
            .bearer_auth(&token)
            .json(&json!({"mode": "create", "enrollments": items}))
            .send();
        let in_flight = tokio::spawn(request);
        // Signal once the service has the request.
        server.requests_received("\"/enrollments\"", 1, std::time::Duration::from_secs(10)).await;
        let status = server.stop().unwrap();
        let response = in_flight.await.unwrap().expect("the in-flight request got an answer");
        assert_eq!(response.status(), 200);
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["isSuccessful"], true, "{body}");
        assert!(status.success(), "exit status {status}");
    }
}

/// Requests that finish while the service drains read and write the database like any other. The admin server runs
/// two workers (one per core), each on a Tokio runtime of its own, and a worker whose connections are all done
/// stops, its runtime with it, while the other still drains. A PostgreSQL connection that the stopped worker had
/// opened and put back in the shared pool used to die with it, and the next request to take it from the pool
/// failed with 500 (seen once during a rolling restart).
#[tokio::test]
async fn requests_finishing_during_a_graceful_stop_use_the_database() {
    for backend in BACKENDS {
        let mut server = Server::start(backend).await.unwrap();
        let token = server.token("operator").unwrap();
        // Enrollment writes, each in a transaction of its own. Many at once, each on its own connection, make both
        // workers open pooled connections.
        let wide = reqwest::Client::builder()
            .use_preconfigured_tls(server.tls_config().unwrap())
            .http1_only()
            .build()
            .unwrap();
        let burst = futures_util::future::join_all((0..64).map(|n| {
            let enrollment = json!({"registrationId": format!("before-{n}"), "attestation": {"type": "symmetricKey"}});
            wide.put(server.url(&format!("/enrollments/before-{n}"))).bearer_auth(&token).json(&enrollment).send()
        }))
        .await;
        for response in burst {
            assert_eq!(response.unwrap().status(), 200);
        }
        drop(wide);
        // 96 enrollment writes in flight, each on a connection of its own, which the server hands to its two workers
        // in turn: the headers and half of the body are sent, the rest waits.
        let mut writes = Vec::new();
        for n in 0..96 {
            writes.push(SlowPut::start(&server, &token, &format!("draining-{n}")).await);
        }
        // The stop must find every write begun: a connection whose request the server has not read yet is idle, and
        // a graceful stop closes idle connections (on a loaded machine the server can lag behind the sends).
        let begun =
            server.requests_received("/enrollments/draining-", writes.len(), std::time::Duration::from_secs(10));
        assert_eq!(begun.await, writes.len(), "the server began every write before the stop ({backend:?})");
        let pid = server.pid().unwrap().to_string();
        assert!(std::process::Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
        // The writes on one worker finish: it has no connection left and stops at its next check (once a second).
        let (first, second): (Vec<_>, Vec<_>) = writes.into_iter().enumerate().partition(|(n, _)| n % 2 == 0);
        for (n, write) in first {
            let answer = write.finish().await;
            assert!(answer.starts_with("HTTP/1.1 200"), "write {n} ({backend:?}): {answer}");
        }
        // The other worker's writes finish one after another over the next three seconds, across that stop. Each
        // takes pooled connections in turn, the stopped worker's too, soon enough after their last use that the
        // pool does not check them first (`POOLED_CHECK_AFTER_IDLE`, a second).
        for (n, write) in second {
            let answer = write.finish().await;
            assert!(answer.starts_with("HTTP/1.1 200"), "write {n} during the stop ({backend:?}): {answer}");
            tokio::time::sleep(std::time::Duration::from_millis(60)).await;
        }
        let status = server.stop().unwrap();
        assert!(status.success(), "exit status {status}");
        let logs = server.logs();
        assert!(!logs.contains("being shutdown"), "{logs}");
    }
}

/// An admin `PUT /enrollments/{id}` over a raw TLS connection, its body sent in two parts.
struct SlowPut {
    stream: tokio_rustls::client::TlsStream<tokio::net::TcpStream>,
    rest: Vec<u8>,
}

impl SlowPut {
    /// Connects and sends the headers and the first half of the body.
    async fn start(server: &Server, token: &str, id: &str) -> Self {
        use tokio::io::AsyncWriteExt;
        let address = server.admin_url.trim_start_matches("https://");
        let mut stream = server.raw_tls(address).await.unwrap();
        let body = json!({"registrationId": id, "attestation": {"type": "symmetricKey"}}).to_string().into_bytes();
        let head = format!(
            "PUT /enrollments/{id} HTTP/1.1\r\nHost: {address}\r\nAuthorization: Bearer {token}\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        );
        let (first, rest) = body.split_at(body.len() / 2);
        stream.write_all(head.as_bytes()).await.unwrap();
        stream.write_all(first).await.unwrap();
        stream.flush().await.unwrap();
        Self { stream, rest: rest.to_vec() }
    }

    /// Sends the rest of the body and returns the whole answer.
    async fn finish(mut self) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        self.stream.write_all(&self.rest).await.unwrap();
        self.stream.flush().await.unwrap();
        let mut answer = Vec::new();
        // The server closes the connection after its answer (`Connection: close`), without TLS's close_notify.
        let _ = self.stream.read_to_end(&mut answer).await;
        String::from_utf8_lossy(&answer).into_owned()
    }
}

/// `serve --no-migrate` on an empty database is alive but not ready; `zerotouch migrate` makes it ready (once the
/// service has unlocked its secrets in the new schema).
#[tokio::test]
async fn migrate_command_makes_a_no_migrate_service_ready() {
    for backend in BACKENDS {
        let server = Server::start_with(backend, Options { args: vec!["--no-migrate".into()], ..Default::default() })
            .await
            .unwrap();
        let ready = server.client.get(server.url("/readyz")).send().await.unwrap();
        assert_eq!(ready.status(), 503);
        let body: Value = ready.json().await.unwrap();
        assert_eq!(body["errorCode"], 503001);
        let output = std::process::Command::new(zerotouch_tests::binary().unwrap())
            .args(["migrate", "--data-dir"])
            .arg(&server.data_dir)
            .args(["--database-url", &server.database_url])
            .output()
            .unwrap();
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
        // Ready once the service has seen the schema and unlocked its secrets (it looks every 100 ms).
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while server.client.get(server.url("/readyz")).send().await.unwrap().status() != 200 {
            assert!(std::time::Instant::now() < deadline, "not ready after migrate:\n{}", server.logs());
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }
}

/// Private key files and the SQLite file are created mode 0600.
#[tokio::test]
async fn secrets_on_disk_are_private() {
    for backend in BACKENDS {
        let server = Server::start(backend).await.unwrap();
        for name in ["root-ca.key", "server.key", "token-signing.key"] {
            let mode = std::fs::metadata(server.data_dir.join(name)).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{name}");
        }
        if backend == Backend::Sqlite {
            let db = server.database_url.trim_start_matches("sqlite://").split('?').next().unwrap().to_owned();
            let mode = std::fs::metadata(&db).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{db}");
        }
    }
}
