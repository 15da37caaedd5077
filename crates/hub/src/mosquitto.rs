//! Mosquitto 2 with the dynamic-security plugin: device identities as dynsec clients and roles, managed over one
//! MQTT admin connection (see the crate docs for what each device may do).
//!
//! Each operation is one message on `$CONTROL/dynamic-security/v1` holding its commands (the plugin runs them in
//! order, in the broker's main loop, so no client message is handled half-way through); an upsert is two when the
//! identity exists already (read and create, then modify to bring it in line), a disable or delete is two (read,
//! then change).
//!
//! **Only identities zerotouch made are touched.** Every client zerotouch creates carries a mark in its
//! `textdescription`: [`MARK_PREFIX`] followed by the registration that owns it ([`crate::Owner`]). Before changing
//! or removing a client that exists, the adapter reads it (`getClient`, in the same message as the creates) and
//! goes on only when the mark names the same registration; an unmarked client (an account of the operator's, the
//! admin user), or one marked for another registration, is left as it is and the operation answers
//! [`HubError::NotManaged`]. Clients that zerotouch 0.1.0 created carry no mark; one is still recognised as ours
//! when its only role is its `zt-device-{deviceId}` role (which only zerotouch hands out) and it is in no group, and
//! the next upsert marks it. The adapter also refuses its own admin user as a device id outright, whatever the
//! broker says. The read and the change are two messages, so an operator who changes the same client in between
//! wins or loses that race; zerotouch itself never runs two operations on one device at once. Each command is tagged
//! with `correlationData` = `<request uuid>:<index>`; the plugin answers with one message on
//! `$CONTROL/dynamic-security/v1/response` whose `responses` carry the same tags. Every response's `error` is
//! checked; the errors that only say the state is already what the operation wants ("Role already exists",
//! "Client not found" on delete, ...) count as success, which makes every operation idempotent.
//!
//! **Each change is applied once.** The mark also records the last change applied ([`ChangeId`], after
//! `"; change "`). A delivery whose read finds its own change in the mark (the outbox retried after a timeout, or a
//! replica took over a job another had delivered before it stopped) changes nothing more, so the broker sees one
//! create or modify per change, not one per delivery.
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
use crate::device::{ChangeId, Credential, DeviceId, DeviceIdentity, Owner};
use crate::error::{HubError, Operation, SettingsError};
use crate::secret::Secret;
use command::{Command, Response, Tolerate};
use link::Link;

/// The start of the `textdescription` mark of every client (and role) zerotouch creates; the owning registration's
/// canonical id follows.
pub const MARK_PREFIX: &str = "zerotouch device of registration ";

/// What follows the owner in a mark: the last change applied to the identity ([`ChangeId`]).
const CHANGE_SEPARATOR: &str = "; change ";

/// The mark of an identity owned by `owner`, as `change` left it. A registration's canonical id has no `;`, so the
/// two parts read back unambiguously.
pub fn mark(owner: &Owner, change: &ChangeId) -> String {
    format!("{MARK_PREFIX}{owner}{CHANGE_SEPARATOR}{change}")
}

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
    /// The broker's other accounts (services, operators): no device may get these ids, on any hub, since a
    /// certificate named after an account is that account on a `use_identity_as_username` listener. The admin
    /// user is always reserved.
    #[serde(default)]
    pub reserved_device_ids: Vec<String>,
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
    /// The admin user: never a device.
    admin: String,
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
        if settings.username.trim().is_empty() {
            return Err(SettingsError::Invalid { setting: "username", reason: "is empty".into() });
        }
        if let Some(empty) = settings.reserved_device_ids.iter().position(|id| id.trim().is_empty()) {
            return Err(SettingsError::Invalid {
                setting: "reservedDeviceIds",
                reason: format!("entry {empty} is empty"),
            });
        }
        let link = Link::start(hub, &settings, timeout)?;
        let admin = settings.username.trim().to_owned();
        Ok(Self { hub: hub.to_owned(), link: Arc::new(link), timeout, admin })
    }

    /// Sends `commands` in one request; returns the broker's answers, one per command (only tolerated errors).
    async fn run(&self, operation: &Operation, commands: &[Command]) -> Result<Vec<Response>, HubError> {
        let responses = self.link.execute(commands, self.timeout).await.map_err(|reason| HubError::Unavailable {
            hub: self.hub.clone(),
            operation: operation.clone(),
            reason,
        })?;
        command::check(commands, &responses).map_err(|reason| HubError::Rejected {
            hub: self.hub.clone(),
            operation: operation.clone(),
            reason,
        })?;
        Ok(responses)
    }

    fn not_managed(&self, operation: &Operation, reason: String) -> HubError {
        HubError::NotManaged { hub: self.hub.clone(), operation: operation.clone(), reason }
    }

    /// Refuses the admin user as a device id (before anything is sent).
    fn refuse_admin(&self, device_id: &DeviceId, operation: &Operation) -> Result<(), HubError> {
        if device_id.as_str().eq_ignore_ascii_case(&self.admin) {
            return Err(self.not_managed(operation, "the device id is the hub's admin user".into()));
        }
        Ok(())
    }

    /// Reads `device_id`'s client and decides whether `owner` may change it: `Ok(true)` it may, `Ok(false)` there
    /// is no such client.
    /// Whether `owner` has a client named `device_id` that `change` has not been applied to yet (`false`: there is
    /// nothing to do); another's client is [`HubError::NotManaged`].
    async fn needs(
        &self,
        device_id: &DeviceId,
        owner: &Owner,
        change: &ChangeId,
        operation: &Operation,
    ) -> Result<bool, HubError> {
        let read = [get_client(device_id)];
        let answer = self.run(operation, &read).await?;
        match ownership(device_id, owner, answer.first()) {
            Ownership::Absent => Ok(false),
            Ownership::Owned { change: applied } => Ok(applied.as_deref() != Some(change.as_str())),
            Ownership::Foreign(reason) => Err(self.not_managed(operation, reason)),
        }
    }
}

/// `getClient` for `device_id`, a missing client tolerated.
fn get_client(device_id: &DeviceId) -> Command {
    Command::new(json!({"command": "getClient", "username": device_id.as_str()}), Tolerate::NotFound)
}

/// Whose a client is, by its `getClient` answer.
#[derive(Debug, PartialEq, Eq)]
enum Ownership {
    /// No such client.
    Absent,
    /// The owner's: marked for it, or made by zerotouch 0.1.0 (unmarked, holding only its device role).
    Owned {
        /// The last change applied to it, by its mark (none for a mark written before changes were recorded).
        change: Option<String>,
    },
    /// Not the owner's, and why.
    Foreign(String),
}

fn ownership(device_id: &DeviceId, owner: &Owner, answer: Option<&Response>) -> Ownership {
    let Some(answer) = answer else { return Ownership::Foreign("the broker did not answer getClient".into()) };
    if answer.error.is_some() {
        return Ownership::Absent;
    }
    let client = answer.data.as_ref().and_then(|d| d.get("client"));
    let Some(client) = client else { return Ownership::Foreign("the broker's getClient answer has no client".into()) };
    let description = client.get("textdescription").and_then(serde_json::Value::as_str).unwrap_or_default();
    if let Some(marked) = description.strip_prefix(MARK_PREFIX) {
        let (marked_for, change) = match marked.split_once(CHANGE_SEPARATOR) {
            Some((marked_for, change)) => (marked_for, Some(change.to_owned())),
            None => (marked, None),
        };
        return if marked_for == owner.as_str() {
            Ownership::Owned { change }
        } else {
            Ownership::Foreign(format!(
                "client {device_id} belongs to another registration, which holds this device id on the hub"
            ))
        };
    }
    let names = |field: &str, key: &str| -> Vec<String> {
        client
            .get(field)
            .and_then(serde_json::Value::as_array)
            .into_iter()
            .flatten()
            .map(|entry| entry.get(key).and_then(serde_json::Value::as_str).unwrap_or_default().to_owned())
            .collect()
    };
    let roles = names("roles", "rolename");
    let groups = names("groups", "groupname");
    if roles == [role_name(device_id)] && groups.is_empty() {
        return Ownership::Owned { change: None };
    }
    Ownership::Foreign(format!(
        "client {device_id} exists on the broker and zerotouch did not create it (it has no zerotouch mark): \
         choose another device id, or delete that client if it is a stale device"
    ))
}

#[async_trait]
impl HubAdapter for MosquittoAdapter {
    fn hub(&self) -> &str {
        &self.hub
    }

    async fn upsert_device(&self, identity: &DeviceIdentity) -> Result<(), HubError> {
        let id = &identity.device_id;
        let operation = Operation::Upsert(id.clone());
        self.refuse_admin(id, &operation)?;
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
            // One password per client: the key the device registered with (README, "Hubs").
            Credential::SymmetricKey(keys) => Secret::new(keys.used().to_base64().as_str()),
        };
        let role = role_name(id);
        let acls = role_acls(id);
        let mark = mark(&identity.owner, &identity.change);
        let roles = if identity.enabled { json!([{"rolename": role}]) } else { json!([]) };
        // The plugin rewrites its whole configuration file after every change, so a new device costs two changes
        // (role, client) rather than five; only an identity that exists already is brought in line by modify,
        // after the read in the same message showed that it is the owner's.
        let create = [
            get_client(id),
            Command::new(
                json!({"command": "createRole", "rolename": role, "textdescription": mark, "acls": acls}),
                Tolerate::AlreadyExists,
            ),
            Command::secret(
                json!({"command": "createClient", "username": id.as_str(), "password": password.expose(),
                       "textname": "zerotouch device", "textdescription": mark, "roles": roles}),
                Tolerate::AlreadyExists,
            ),
        ];
        let answers = self.run(&operation, &create).await?;
        let created = |index: usize| answers.get(index).is_some_and(|a| a.error.is_none());
        match ownership(id, &identity.owner, answers.first()) {
            Ownership::Absent if created(1) && created(2) && identity.enabled => return Ok(()),
            // This change was applied already (a repeated delivery): the client is as it wants it.
            Ownership::Owned { change: Some(applied) } if applied == identity.change.as_str() => return Ok(()),
            Ownership::Absent | Ownership::Owned { .. } => {}
            Ownership::Foreign(reason) => {
                if created(1) {
                    // The role this request made for nobody; best effort (an unused role grants nothing).
                    let cleanup =
                        [Command::new(json!({"command": "deleteRole", "rolename": role}), Tolerate::NotFound)];
                    let _ = self.run(&operation, &cleanup).await;
                }
                return Err(self.not_managed(&operation, reason));
            }
        }
        let modify = [
            Command::new(
                json!({"command": "modifyRole", "rolename": role, "textdescription": mark, "acls": acls}),
                Tolerate::Nothing,
            ),
            Command::secret(
                json!({"command": "modifyClient", "username": id.as_str(), "password": password.expose(),
                       "textdescription": mark, "roles": roles}),
                Tolerate::Nothing,
            ),
            Command::new(
                json!({"command": if identity.enabled { "enableClient" } else { "disableClient" },
                       "username": id.as_str()}),
                Tolerate::Nothing,
            ),
        ];
        self.run(&operation, &modify).await.map(drop)
    }

    async fn disable_device(&self, device_id: &DeviceId, owner: &Owner, change: &ChangeId) -> Result<(), HubError> {
        let operation = Operation::Disable(device_id.clone());
        self.refuse_admin(device_id, &operation)?;
        if !self.needs(device_id, owner, change, &operation).await? {
            return Ok(());
        }
        // disableClient refuses password logins; taking the role away cuts off certificate clients too, which
        // dynsec does not authenticate (see the crate docs). The mark records the change.
        let commands = [
            Command::new(json!({"command": "disableClient", "username": device_id.as_str()}), Tolerate::NotFound),
            Command::new(
                json!({"command": "modifyClient", "username": device_id.as_str(), "roles": [],
                       "textdescription": mark(owner, change)}),
                Tolerate::NotFound,
            ),
        ];
        self.run(&operation, &commands).await.map(drop)
    }

    async fn delete_device(&self, device_id: &DeviceId, owner: &Owner, change: &ChangeId) -> Result<(), HubError> {
        let operation = Operation::Delete(device_id.clone());
        self.refuse_admin(device_id, &operation)?;
        if !self.needs(device_id, owner, change, &operation).await? {
            return Ok(());
        }
        let commands = [
            Command::new(json!({"command": "deleteClient", "username": device_id.as_str()}), Tolerate::NotFound),
            Command::new(json!({"command": "deleteRole", "rolename": role_name(device_id)}), Tolerate::NotFound),
        ];
        self.run(&operation, &commands).await.map(drop)
    }

    async fn health(&self) -> Result<(), HubError> {
        let commands = [Command::new(json!({"command": "getDefaultACLAccess"}), Tolerate::Nothing)];
        self.run(&Operation::Health, &commands).await.map(drop)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(data: Option<serde_json::Value>, error: Option<&str>) -> Response {
        Response { command: "getClient".into(), error: error.map(Into::into), correlation_data: None, data }
    }

    /// A client is the owner's only when marked for it, or when it looks exactly like a device of 0.1.0; the
    /// admin user, an operator's account and another registration's device are not.
    #[test]
    fn ownership_by_mark() {
        let id = DeviceId::try_from("dev-1").unwrap();
        let owner = Owner::registration("dev-1");
        let client = |fields: serde_json::Value| answer(Some(json!({"client": fields})), None);
        assert_eq!(ownership(&id, &owner, Some(&answer(None, Some("Client not found")))), Ownership::Absent);
        let change = ChangeId::new("0193a7c2-job");
        let ours = client(json!({"username": "dev-1", "textdescription": mark(&owner, &change), "roles": []}));
        assert_eq!(ownership(&id, &owner, Some(&ours)), Ownership::Owned { change: Some(change.to_string()) });
        let unchanged = client(json!({"username": "dev-1", "textdescription": format!("{MARK_PREFIX}dev-1")}));
        assert_eq!(ownership(&id, &owner, Some(&unchanged)), Ownership::Owned { change: None });
        let legacy = client(json!({"username": "dev-1", "roles": [{"rolename": "zt-device-dev-1"}]}));
        assert_eq!(ownership(&id, &owner, Some(&legacy)), Ownership::Owned { change: None });
        let other = client(json!({"username": "dev-1", "textdescription": mark(&Owner::registration("x"), &change)}));
        assert!(matches!(ownership(&id, &owner, Some(&other)), Ownership::Foreign(_)));
        let longer = mark(&Owner::registration("dev-10"), &change);
        let longer = client(json!({"username": "dev-1", "textdescription": longer}));
        assert!(matches!(ownership(&id, &owner, Some(&longer)), Ownership::Foreign(_)));
        let admin = client(json!({"username": "dev-1", "roles": [{"rolename": "admin"}]}));
        assert!(matches!(ownership(&id, &owner, Some(&admin)), Ownership::Foreign(_)));
        let grouped = client(json!({"username": "dev-1", "roles": [{"rolename": "zt-device-dev-1"}],
                                    "groups": [{"groupname": "ops"}]}));
        assert!(matches!(ownership(&id, &owner, Some(&grouped)), Ownership::Foreign(_)));
        let bare = client(json!({"username": "dev-1"}));
        assert!(matches!(ownership(&id, &owner, Some(&bare)), Ownership::Foreign(_)));
        assert!(matches!(ownership(&id, &owner, None), Ownership::Foreign(_)));
    }
}
