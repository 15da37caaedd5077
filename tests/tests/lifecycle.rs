//! The service's life cycle: first start, restart with the same data dir, refusal of readable keys, shutdown.

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
    let mut server = Server::start(Backend::Sqlite).await.unwrap();
    server.stop().unwrap();
    let key = server.data_dir.join("token-signing.key");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let options = Options {
        data_dir: Some(server.data_dir.clone()),
        database_url: Some(server.database_url.clone()),
        ..Default::default()
    };
    let err = Server::start_with(Backend::Sqlite, options).await.unwrap_err().to_string();
    assert!(err.contains("token-signing.key") && err.contains("0644"), "{err}");
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
