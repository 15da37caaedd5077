//! Device-side helpers: `openssl` for keys and CSRs, and a symmetric-key device that registers over HTTPS the way
//! the Azure SDKs do (SAS token, register, poll until the operation ends).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde_json::Value;
use zerotouch_attest::sas;

use crate::Server;
use crate::openssl::openssl;

/// The api-version the helpers send.
pub const API: &str = "api-version=2025-07-01-preview";

/// Seconds since the epoch.
pub fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or_default()
}

/// An EC key (`curve`: prime256v1 or secp384r1) and a CSR for `cn`, made by openssl; returns (key file, base64
/// DER CSR as §8 wants it).
pub fn key_and_csr(dir: &Path, name: &str, cn: &str, curve: &str) -> (PathBuf, String) {
    let key = format!("{name}.key");
    openssl(dir, &["ecparam", "-name", curve, "-genkey", "-noout", "-out", &key]);
    let csr = format!("{name}.csr.der");
    openssl(dir, &["req", "-new", "-key", &key, "-subj", &format!("/CN={cn}"), "-outform", "DER", "-out", &csr]);
    (dir.join(key), STANDARD.encode(std::fs::read(dir.join(csr)).unwrap()))
}

/// A device's SAS token for `id` under `key`, valid for an hour (Python SDK style: `%2F`, no `skn`).
pub fn sas_token(server: &Server, id: &str, key: &[u8]) -> String {
    let sr = format!("{}%2Fregistrations%2F{id}", server.id_scope);
    sas::sign(&sr, now() + 3600, key, None)
}

/// Sends a register with SAS and `body`: the operation id of a 202, or (status, body) of any other answer.
pub async fn sas_register_start(server: &Server, id: &str, key: &[u8], body: &Value) -> Result<String, (u16, Value)> {
    let url = server.device(&format!("/{}/registrations/{id}/register?{API}", server.id_scope));
    let token = sas_token(server, id, key);
    let response = server.client.put(url).header("Authorization", &token).json(body).send().await.unwrap();
    let status = response.status().as_u16();
    let reply: Value = response.json().await.unwrap();
    match (status, reply["operationId"].as_str()) {
        (202, Some(operation)) => Ok(operation.to_owned()),
        _ => Err((status, reply)),
    }
}

/// Polls an operation once: (status, body).
pub async fn sas_poll(server: &Server, id: &str, key: &[u8], operation: &str) -> (u16, Value) {
    let url = server.device(&format!("/{}/registrations/{id}/operations/{operation}?{API}", server.id_scope));
    let response = server.client.get(url).header("Authorization", sas_token(server, id, key)).send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap())
}

/// Registers a symmetric-key device with SAS and `body`, polls to the end; (status of the final answer, body).
pub async fn sas_register(server: &Server, id: &str, key: &[u8], body: Value) -> (u16, Value) {
    let operation = match sas_register_start(server, id, key, &body).await {
        Ok(operation) => operation,
        Err(answer) => return answer,
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (status, reply) = sas_poll(server, id, key, &operation).await;
        if status != 202 {
            return (status, reply);
        }
        assert!(Instant::now() < deadline, "the operation did not finish");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `curl` as a device with a client certificate (`cert` may hold the chain after the leaf): status and body.
pub fn curl(
    server: &Server,
    method: &str,
    path: &str,
    cert: &Path,
    key: &Path,
    body: &str,
    content_type: &str,
) -> (u16, String) {
    let output = Command::new("curl")
        .args(["-sS", "--cacert"])
        .arg(server.data_dir.join("trust-bundle.pem"))
        .arg("--cert")
        .arg(cert)
        .arg("--key")
        .arg(key)
        .args(["-X", method, "-H", &format!("Content-Type: {content_type}"), "--data-binary", body])
        .args(["-w", "\n%{http_code}", &server.device(path)])
        .output()
        .expect("curl runs");
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(output.status.success(), "curl {path}: {}{text}", String::from_utf8_lossy(&output.stderr));
    let (body, status) = text.rsplit_once('\n').unwrap();
    (status.trim().parse().unwrap(), body.to_owned())
}

/// Registers with curl and a client certificate, then polls until done; returns the final operation.
pub fn curl_register(server: &Server, id: &str, cert: &Path, key: &Path, body: Value) -> (u16, Value) {
    let path = format!("/{}/registrations/{id}/register?{API}", server.id_scope);
    let (status, text) = curl(server, "PUT", &path, cert, key, &body.to_string(), "application/json");
    let reply: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
    if status != 202 {
        return (status, reply);
    }
    let operation = reply["operationId"].as_str().unwrap().to_owned();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let path = format!("/{}/registrations/{id}/operations/{operation}?{API}", server.id_scope);
        let (status, text) = curl(server, "GET", &path, cert, key, "", "application/json");
        let reply: Value = serde_json::from_str(&text).unwrap();
        if status != 202 {
            return (status, reply);
        }
        assert!(Instant::now() < deadline, "the operation did not finish");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// An individual symmetric-key enrollment with `key` as its primary key, statically on `hub`, `status` `enabled`
/// or `disabled`.
pub fn symmetric_key_enrollment(id: &str, key: &[u8], hub: &str, status: &str) -> Value {
    serde_json::json!({
        "registrationId": id,
        "attestation": {"type": "symmetricKey", "symmetricKey": {"primaryKey": STANDARD.encode(key), "secondaryKey": STANDARD.encode([9u8; 32])}},
        "iotHubs": [hub],
        "allocationPolicy": "static",
        "provisioningStatus": status,
    })
}
