//! Mosquitto 2 with the dynamic-security plugin: device identities as dynsec clients and roles, managed over one
//! MQTT admin connection (see the crate docs for what each device may do).
//!
//! Each operation is one message on `$CONTROL/dynamic-security/v1` holding its commands (the plugin runs them in
//! order, in the broker's main loop, so no client message is handled half-way through); an upsert is two when the
//! identity exists already (create, then modify to bring it in line). Each command is tagged
//! with `correlationData` = `<request uuid>:<index>`; the plugin answers with one message on
//! `$CONTROL/dynamic-security/v1/response` whose `responses` carry the same tags. Every response's `error` is
//! checked; the errors that only say the state is already what the operation wants ("Role already exists",
//! "Client not found" on delete, ...) count as success, which makes every operation idempotent.
//!
//! Commands are published at QoS 0 on a clean session: a request lost with a dropped connection is not replayed
//! by the client library on the next connection (a stale replay could undo a newer operation); the caller sees
//! `Unavailable` (no response in time) and retries.
//!
//! rumqttc is the MQTT client (maintained, tokio-native, rustls with an injected configuration). Its password is
//! held as a plain `String` inside its options for the life of the connection (it re-sends it on every
//! reconnect); that copy is not zeroized.

mod command;
mod link;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde::Deserialize;
use serde_json::json;

use crate::adapter::HubAdapter;
use crate::device::{Credential, DeviceId, DeviceIdentity};
use crate::error::{HubError, Operation, SettingsError};
use crate::secret::Secret;
use command::{Command, Tolerate};
use link::Link;

/// Default time to wait for the broker's answer (and for the admin connection to come up).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);

/// The settings of a `mosquitto` hub (JSON, camelCase).
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MosquittoSettings {
    /// The broker's host name or address, for the admin connection.
    pub host: String,
    /// The port of the broker's listener that serves the admin connection.
    pub port: u16,
    /// TLS for the admin connection; plain MQTT when absent (only sensible on loopback or a private network).
    #[serde(default)]
    pub tls: Option<MosquittoTls>,
    /// The dynsec admin user.
    pub username: String,
    /// The dynsec admin password.
    pub password: Secret,
    /// How long to wait for an answer, in milliseconds (default 5000).
    #[serde(default)]
    pub timeout_ms: Option<u64>,
}

/// TLS settings of the admin connection.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MosquittoTls {
    /// PEM CA certificate(s) to verify the broker with; the platform's roots when absent.
    #[serde(default)]
    pub ca: Option<String>,
}

/// A Mosquitto broker with dynamic security (hub kind `mosquitto`).
pub struct MosquittoAdapter {
    hub: String,
    link: Arc<Link>,
    timeout: Duration,
}

impl std::fmt::Debug for MosquittoAdapter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MosquittoAdapter").field("hub", &self.hub).finish_non_exhaustive()
    }
}

/// The role that holds a device's ACLs.
pub fn role_name(device_id: &DeviceId) -> String {
    format!("zt-device-{device_id}")
}

/// The ACLs of a device's role: its own topics allowed, everything else denied (at a lower priority, so the
/// broker's default ACL access does not matter).
pub fn role_acls(device_id: &DeviceId) -> serde_json::Value {
    let own = format!("devices/{device_id}/#");
    let commands = format!("devices/{device_id}/commands/#");
    json!([
        {"acltype": "publishClientSend", "topic": own, "priority": 10, "allow": true},
        {"acltype": "subscribePattern", "topic": commands, "priority": 10, "allow": true},
        {"acltype": "publishClientReceive", "topic": commands, "priority": 10, "allow": true},
        {"acltype": "publishClientSend", "topic": "#", "priority": 0, "allow": false},
        {"acltype": "subscribePattern", "topic": "#", "priority": 0, "allow": false},
        {"acltype": "publishClientReceive", "topic": "#", "priority": 0, "allow": false},
    ])
}

impl MosquittoAdapter {
    /// An adapter for the broker named `hub`. Starts the admin connection in the background (inside the current
    /// Tokio runtime); it reconnects whenever it drops, until the adapter is dropped.
    pub fn new(hub: &str, settings: MosquittoSettings) -> Result<Self, SettingsError> {
        if settings.host.trim().is_empty() {
            return Err(SettingsError::Invalid { setting: "host", reason: "is empty".into() });
        }
        if settings.port == 0 {
            return Err(SettingsError::Invalid { setting: "port", reason: "must be 1-65535".into() });
        }
        let timeout = match settings.timeout_ms {
            Some(0) => return Err(SettingsError::Invalid { setting: "timeoutMs", reason: "must be positive".into() }),
            Some(ms) => Duration::from_millis(ms),
            None => DEFAULT_TIMEOUT,
        };
        let link = Link::start(hub, &settings, timeout)?;
        Ok(Self { hub: hub.to_owned(), link: Arc::new(link), timeout })
    }

    /// Sends `commands` in one request; returns how many of them met a tolerated error.
    async fn run(&self, operation: Operation, commands: Vec<Command>) -> Result<usize, HubError> {
        let responses = self.link.execute(&commands, self.timeout).await.map_err(|reason| HubError::Unavailable {
            hub: self.hub.clone(),
            operation: operation.clone(),
            reason,
        })?;
        command::check(&commands, &responses).map_err(|reason| HubError::Rejected {
            hub: self.hub.clone(),
            operation,
            reason,
        })
    }
}

#[async_trait]
impl HubAdapter for MosquittoAdapter {
    fn hub(&self) -> &str {
        &self.hub
    }

    async fn upsert_device(&self, identity: &DeviceIdentity) -> Result<(), HubError> {
        let id = &identity.device_id;
        let operation = Operation::Upsert(id.clone());
        let password = match &identity.credential {
            Credential::Certificate { subject_cn, .. } => {
                if subject_cn != id.as_str() {
                    return Err(HubError::Rejected {
                        hub: self.hub.clone(),
                        operation,
                        reason: format!(
                            "the certificate's CN {subject_cn:?} is not the device id: the broker names a \
                             certificate client by its CN"
                        ),
                    });
                }
                // Nobody knows this password: the identity cannot log in on a password listener.
                Secret::new(uuid::Uuid::new_v4().simple().to_string() + &uuid::Uuid::new_v4().simple().to_string())
            }
            Credential::SymmetricKey(key) => Secret::new(key.to_base64().as_str()),
        };
        let role = role_name(id);
        let acls = role_acls(id);
        let roles = if identity.enabled { json!([{"rolename": role}]) } else { json!([]) };
        // The plugin rewrites its whole configuration file after every change, so a new device costs two changes
        // (role, client) rather than five; only an identity that exists already is brought in line by modify.
        let create = vec![
            Command::new(json!({"command": "createRole", "rolename": role, "acls": acls}), Tolerate::AlreadyExists),
            Command::secret(
                json!({"command": "createClient", "username": id.as_str(), "password": password.expose(),
                       "roles": roles}),
                Tolerate::AlreadyExists,
            ),
        ];
        let existed = self.run(operation.clone(), create).await?;
        if existed == 0 && identity.enabled {
            return Ok(());
        }
        let modify = vec![
            Command::new(json!({"command": "modifyRole", "rolename": role, "acls": acls}), Tolerate::Nothing),
            Command::secret(
                json!({"command": "modifyClient", "username": id.as_str(), "password": password.expose(),
                       "roles": roles}),
                Tolerate::Nothing,
            ),
            Command::new(
                json!({"command": if identity.enabled { "enableClient" } else { "disableClient" },
                       "username": id.as_str()}),
                Tolerate::Nothing,
            ),
        ];
        self.run(operation, modify).await.map(drop)
    }

    async fn disable_device(&self, device_id: &DeviceId) -> Result<(), HubError> {
        // disableClient refuses password logins; taking the role away cuts off certificate clients too, which
        // dynsec does not authenticate (see the crate docs).
        let commands = vec![
            Command::new(json!({"command": "disableClient", "username": device_id.as_str()}), Tolerate::NotFound),
            Command::new(
                json!({"command": "modifyClient", "username": device_id.as_str(), "roles": []}),
                Tolerate::NotFound,
            ),
        ];
        self.run(Operation::Disable(device_id.clone()), commands).await.map(drop)
    }

    async fn delete_device(&self, device_id: &DeviceId) -> Result<(), HubError> {
        let commands = vec![
            Command::new(json!({"command": "deleteClient", "username": device_id.as_str()}), Tolerate::NotFound),
            Command::new(json!({"command": "deleteRole", "rolename": role_name(device_id)}), Tolerate::NotFound),
        ];
        self.run(Operation::Delete(device_id.clone()), commands).await.map(drop)
    }

    async fn health(&self) -> Result<(), HubError> {
        let commands = vec![Command::new(json!({"command": "getDefaultACLAccess"}), Tolerate::Nothing)];
        self.run(Operation::Health, commands).await.map(drop)
    }
}
