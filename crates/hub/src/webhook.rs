//! A webhook hub: signed JSON device documents sent by HTTPS to a platform without an adapter of its own (the
//! format and the signature are in the crate docs).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use hmac::{Hmac, Mac};
use reqwest::{Method, StatusCode, Url};
use serde::Deserialize;
use serde_json::json;
use sha2::Sha256;
use zeroize::Zeroizing;

use crate::adapter::HubAdapter;
use crate::device::{ChangeId, Credential, DeviceId, DeviceIdentity, Owner};
use crate::error::{HubError, Operation, SettingsError};
use crate::secret::Secret;
use zerotouch_outbound::OutboundPolicy;

/// The header that carries the signature.
pub const SIGNATURE_HEADER: &str = "X-Zerotouch-Signature";
/// Default time a request may take.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);
/// Shortest shared secret accepted, in bytes.
pub const MIN_SECRET_LEN: usize = 16;
/// The most of a refusal's body read for its explanation.
const DETAIL_LIMIT: usize = 4096;

/// The settings of a `webhook` hub (JSON, camelCase).
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WebhookSettings {
    /// Base URL; requests go to `{url}/devices/{deviceId}`. `https`, or `http` to a loopback address only.
    pub url: String,
    /// The shared HMAC secret (at least 16 bytes).
    pub secret: Secret,
    /// PEM CA certificate(s) to verify the receiver with; the platform's roots when absent.
    #[serde(default)]
    pub ca: Option<String>,
    /// How long a request may take, in milliseconds (default 5000).
    #[serde(default)]
    pub timeout_ms: Option<u64>,
}

/// A webhook receiver (hub kind `webhook`).
pub struct WebhookAdapter {
    hub: String,
    base: Url,
    secret: Secret,
    client: reqwest::Client,
    outbound: OutboundPolicy,
}

impl std::fmt::Debug for WebhookAdapter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookAdapter")
            .field("hub", &self.hub)
            .field("url", &self.base.as_str())
            .finish_non_exhaustive()
    }
}

/// The value of [`SIGNATURE_HEADER`] for `body` sent at `timestamp` (unix seconds).
pub fn signature(secret: &[u8], timestamp: u64, body: &[u8]) -> String {
    format!("t={timestamp},v1={}", hex::encode(mac(secret, timestamp, body)))
}

/// HMAC-SHA256(secret, "<timestamp>.<body>").
pub fn mac(secret: &[u8], timestamp: u64, body: &[u8]) -> [u8; 32] {
    // HMAC takes keys of any length: this cannot fail.
    let Ok(mut mac) = <Hmac<Sha256> as Mac>::new_from_slice(secret) else { return [0; 32] };
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    mac.finalize().into_bytes().into()
}

impl WebhookAdapter {
    /// An adapter for the receiver named `hub`, calling it under `outbound` (`zerotouch_outbound`: https only, no
    /// redirects, addresses checked after resolution and pinned).
    pub fn new(hub: &str, settings: WebhookSettings, outbound: &OutboundPolicy) -> Result<Self, SettingsError> {
        let invalid_url = |reason: &str| SettingsError::Invalid { setting: "url", reason: reason.into() };
        let mut base = outbound.parse_url(&settings.url).map_err(|e| invalid_url(&e.to_string()))?;
        if base.query().is_some() || base.fragment().is_some() || !base.username().is_empty() {
            return Err(invalid_url("must have no query, fragment or credentials"));
        }
        if !base.path().ends_with('/') {
            let path = format!("{}/", base.path());
            base.set_path(&path);
        }
        if settings.secret.expose().len() < MIN_SECRET_LEN {
            return Err(SettingsError::Invalid {
                setting: "secret",
                reason: format!("must have at least {MIN_SECRET_LEN} bytes"),
            });
        }
        let timeout = match settings.timeout_ms {
            Some(0) => return Err(SettingsError::Invalid { setting: "timeoutMs", reason: "must be positive".into() }),
            Some(ms) => Duration::from_millis(ms),
            None => DEFAULT_TIMEOUT,
        };
        let tls = crate::tls::client_config("ca", settings.ca.as_deref())?;
        let client = outbound
            .client()
            .use_preconfigured_tls((*tls).clone())
            .timeout(timeout)
            .connect_timeout(timeout)
            .build()
            .map_err(|e| SettingsError::Invalid { setting: "url", reason: format!("HTTP client: {e}") })?;
        Ok(Self { hub: hub.to_owned(), base, secret: settings.secret, client, outbound: outbound.clone() })
    }

    fn device_url(&self, id: &DeviceId) -> Result<Url, String> {
        let mut url = self.base.clone();
        url.path_segments_mut()
            .map_err(|()| "the URL cannot take a path".to_owned())?
            .pop_if_empty()
            .extend(["devices", id.as_str()]);
        Ok(url)
    }

    fn unavailable(&self, operation: &Operation, reason: String) -> HubError {
        HubError::Unavailable { hub: self.hub.clone(), operation: operation.clone(), reason }
    }

    fn rejected(&self, operation: &Operation, reason: String) -> HubError {
        HubError::Rejected { hub: self.hub.clone(), operation: operation.clone(), reason }
    }

    async fn send(
        &self,
        operation: Operation,
        method: Method,
        id: &DeviceId,
        body: Zeroizing<Vec<u8>>,
    ) -> Result<(), HubError> {
        let url = self.device_url(id).map_err(|reason| self.rejected(&operation, reason))?;
        self.outbound.check_url(&url).map_err(|e| self.rejected(&operation, e.to_string()))?;
        let now = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or_default();
        let signature = signature(self.secret.expose().as_bytes(), now, &body);
        let is_delete = method == Method::DELETE;
        let response = self
            .client
            .request(method.clone(), url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header(SIGNATURE_HEADER, signature)
            .body(body.to_vec())
            .send()
            .await
            .map_err(|e| self.unavailable(&operation, zerotouch_outbound::describe(e)))?;
        let status = response.status();
        if status.is_success() || (is_delete && status == StatusCode::NOT_FOUND) {
            return Ok(());
        }
        // The receiver's explanation, for the log and the hub's status: at most DETAIL_LIMIT bytes are read.
        let detail = match zerotouch_outbound::read_capped(response, DETAIL_LIMIT).await {
            Ok(body) => String::from_utf8_lossy(&body).into_owned(),
            Err(e) => format!("({e})"),
        };
        let detail: String = detail.chars().filter(|c| !c.is_control()).take(200).collect();
        let reason = format!("{method} answered {status}{}{detail}", if detail.is_empty() { "" } else { ": " });
        if retryable(status) {
            Err(self.unavailable(&operation, reason))
        } else {
            Err(self.rejected(&operation, reason))
        }
    }
}

/// Statuses worth retrying: server errors, request timeout, too many requests.
fn retryable(status: StatusCode) -> bool {
    status.is_server_error() || status == StatusCode::REQUEST_TIMEOUT || status == StatusCode::TOO_MANY_REQUESTS
}

fn to_body(value: &serde_json::Value) -> Zeroizing<Vec<u8>> {
    Zeroizing::new(value.to_string().into_bytes())
}

#[async_trait]
impl HubAdapter for WebhookAdapter {
    fn hub(&self) -> &str {
        &self.hub
    }

    async fn upsert_device(&self, identity: &DeviceIdentity) -> Result<(), HubError> {
        let credential = match &identity.credential {
            Credential::Certificate { subject_cn, thumbprint } => {
                json!({"type": "x509", "subjectName": subject_cn, "thumbprint": thumbprint})
            }
            Credential::SymmetricKey(keys) => {
                let mut credential = json!({"type": "symmetricKey", "key": keys.used().to_base64().as_str()});
                if let (Some(secondary), Some(map)) = (&keys.secondary, credential.as_object_mut()) {
                    map.insert("primaryKey".into(), json!(keys.primary.to_base64().as_str()));
                    map.insert("secondaryKey".into(), json!(secondary.to_base64().as_str()));
                }
                credential
            }
        };
        let mut document = json!({
            "operation": "upsert",
            "changeId": identity.change.as_str(),
            "deviceId": identity.device_id.as_str(),
            "enabled": identity.enabled,
            "credential": credential,
        });
        if let (Some(twin), Some(map)) = (&identity.initial_twin, document.as_object_mut()) {
            map.insert("initialTwin".into(), twin.clone());
        }
        let body = to_body(&document);
        self.send(Operation::Upsert(identity.device_id.clone()), Method::POST, &identity.device_id, body).await
    }

    // A receiver cannot be asked who made an identity: the body is unchanged and the receiver keeps its own
    // records; zerotouch gives one device id on a hub to one registration (the registrations' unique index).
    async fn disable_device(&self, device_id: &DeviceId, _owner: &Owner, change: &ChangeId) -> Result<(), HubError> {
        let body =
            to_body(&json!({"operation": "disable", "changeId": change.as_str(), "deviceId": device_id.as_str(),
                                   "enabled": false}));
        self.send(Operation::Disable(device_id.clone()), Method::PUT, device_id, body).await
    }

    async fn delete_device(&self, device_id: &DeviceId, _owner: &Owner, change: &ChangeId) -> Result<(), HubError> {
        let body =
            to_body(&json!({"operation": "delete", "changeId": change.as_str(), "deviceId": device_id.as_str()}));
        self.send(Operation::Delete(device_id.clone()), Method::DELETE, device_id, body).await
    }

    /// `GET {url}/health`: any answer but a `5xx` (or `408`/`429`) means the receiver is reachable.
    async fn health(&self) -> Result<(), HubError> {
        let operation = Operation::Health;
        let url = self.base.join("health").map_err(|e| self.rejected(&operation, e.to_string()))?;
        self.outbound.check_url(&url).map_err(|e| self.rejected(&operation, e.to_string()))?;
        let response = self
            .client
            .get(url)
            .send()
            .await
            .map_err(|e| self.unavailable(&operation, zerotouch_outbound::describe(e)))?;
        let status = response.status();
        if retryable(status) {
            return Err(self.unavailable(&operation, format!("GET health answered {status}")));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(url: &str) -> WebhookSettings {
        WebhookSettings { url: url.into(), secret: Secret::new("0123456789abcdef"), ca: None, timeout_ms: None }
    }

    /// Known answer: HMAC-SHA256 over "<t>.<body>", computed independently with
    /// `printf '1700000000.{}' | openssl dgst -sha256 -hmac 0123456789abcdef`.
    #[test]
    fn signature_known_answer() {
        assert_eq!(
            signature(b"0123456789abcdef", 1_700_000_000, b"{}"),
            "t=1700000000,v1=e4f8e2ecae2295b2ddb2f0b5584c8275e226c0ebe9b3b819e70156bb67122e3e"
        );
    }

    /// Plain http only to loopback, which itself needs opening; https anywhere public; device URLs append
    /// `devices/{id}`.
    #[tokio::test]
    async fn url_rules() {
        let strict = OutboundPolicy::default();
        let loopback = OutboundPolicy::new(vec!["127.0.0.0/8".parse().unwrap(), "::1/128".parse().unwrap()], false);
        assert!(WebhookAdapter::new("h", settings("http://example.com/hook"), &loopback).is_err());
        assert!(WebhookAdapter::new("h", settings("ftp://127.0.0.1/"), &loopback).is_err());
        assert!(WebhookAdapter::new("h", settings("http://127.0.0.1:9/hook"), &strict).is_err());
        assert!(WebhookAdapter::new("h", settings("https://10.0.0.1/hook"), &strict).is_err());
        let adapter = WebhookAdapter::new("h", settings("http://127.0.0.1:9/hook"), &loopback).unwrap();
        let id = DeviceId::try_from("dev-1").unwrap();
        assert_eq!(adapter.device_url(&id).unwrap().as_str(), "http://127.0.0.1:9/hook/devices/dev-1");
        assert!(WebhookAdapter::new("h", settings("http://[::1]:9"), &loopback).is_ok());
        assert!(WebhookAdapter::new("h", settings("https://example.com"), &strict).is_ok());
        let mut short = settings("https://example.com");
        short.secret = Secret::new("short");
        assert!(WebhookAdapter::new("h", short, &strict).is_err());
    }
}
