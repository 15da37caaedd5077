//! Downstream hub adapters: create, update, disable and delete device identities on the hubs devices are assigned
//! to (Mosquitto with dynamic security, a signed webhook), behind one object-safe trait.
//!
//! Every adapter operation is idempotent: creating an identity that exists updates it, disabling or deleting one
//! that does not exist succeeds. Failures are [`HubError::Unavailable`] (the hub could not be reached or did not
//! answer in time: retry later), [`HubError::Rejected`] (the hub refused the request: retrying the same request
//! will not help) or [`HubError::NotManaged`] (the identity by that name is not the registration's to change). Secrets (device keys, admin passwords, webhook secrets) are held in types that redact `Debug`
//! and zeroize on drop, and no adapter logs them.
//!
//! # Mosquitto (kind `mosquitto`)
//! [`MosquittoAdapter`] manages a Mosquitto 2 broker through its dynamic-security plugin, over one MQTT admin
//! connection (`$CONTROL/dynamic-security/v1`), reconnecting when it drops. Each device becomes a dynsec client
//! named by its device id, holding one role `zt-device-{deviceId}` whose ACLs allow exactly:
//! publishing under `devices/{deviceId}/#`, subscribing to (and receiving) `devices/{deviceId}/commands/#`. The
//! role also denies publishing, subscribing and receiving on `#` at a lower priority, so the device can do nothing
//! else whatever the broker's default ACL access says.
//! - **Certificate devices** connect to a TLS listener with `require_certificate true` and
//!   `use_identity_as_username true`, so their username is their certificate's CN, which must equal the device
//!   id. The dynsec client gets a random password nobody knows, so the identity cannot log in on a password
//!   listener (and a device key it had before stops working).
//!   Dynamic security does not authenticate certificate identities: a certificate the broker's CA signed connects
//!   whether or not a dynsec client exists, and `disableClient` does not stop it. Disabling a device therefore
//!   also takes its role away (it can still open a connection but publish and subscribe nothing), and deleting it
//!   deletes the client and the role. Keeping revoked certificates off the broker altogether needs the listener's
//!   `crlfile` (read at broker start only).
//! - **Symmetric-key devices** log in with username = device id and password = their device key (base64). This is
//!   the weaker option: the broker holds a (salted, hashed) copy of a long-lived secret, and the key travels to the
//!   broker on every connection (TLS protects it on the wire only if the listener uses TLS).
//!
//! - **Only zerotouch's identities are touched.** Each client zerotouch creates is marked (its `textdescription`
//!   names the owning registration, [`Owner`]); an existing client is changed, disabled or deleted only when it
//!   carries the same registration's mark (or looks exactly like a device of zerotouch 0.1.0), and never when it
//!   is the adapter's own admin user. Anything else answers [`HubError::NotManaged`] and is left as it is.
//! - **Reserved ids.** [`reserved_device_ids`] names the ids a hub keeps for itself (the admin user and the
//!   `reservedDeviceIds` setting): the service gives them to no device on any hub, as a certificate named after an
//!   account is that account on every `use_identity_as_username` listener that trusts the service's CA.
//!
//! # Webhook (kind `webhook`)
//! [`WebhookAdapter`] sends a JSON device document to `{url}/devices/{deviceId}`:
//!
//! | operation | method | body |
//! |---|---|---|
//! | create or update | `POST` | `{"operation": "upsert", "changeId", "deviceId", "enabled", "credential", "initialTwin"?}` |
//! | disable | `PUT` | `{"operation": "disable", "changeId", "deviceId", "enabled": false}` |
//! | delete | `DELETE` | `{"operation": "delete", "changeId", "deviceId"}` |
//!
//! `changeId` names the change the request delivers ([`ChangeId`]): the outbox retries a delivery whose outcome it
//! did not learn (a timeout, a replica that stopped), and every retry carries the same `changeId`, so a receiver
//! that remembers the ids it applied can apply each change exactly once.
//!
//! `credential` is `{"type": "x509", "subjectName": CN, "thumbprint": hex SHA-256}` or
//! `{"type": "symmetricKey", "key": base64, "primaryKey"?: base64, "secondaryKey"?: base64}`: `key` is the key
//! the device registered with, `primaryKey` and `secondaryKey` both keys of its enrollment (absent for a key made
//! for the hub alone, a TPM device's hub key), so that the receiver can let the device in with either. Every request carries
//!
//! ```text
//! X-Zerotouch-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>
//! ```
//!
//! where `<body>` is the exact request body. A receiver should recompute the MAC over the raw body, compare it in
//! constant time, reject a `t` more than 5 minutes away from its clock (replays), and check that `deviceId` and
//! `operation` in the body match the path and method (the signature does not cover the URL). A `2xx` answer is
//! success, and so is `404` to a `DELETE`; `5xx`, `408`, `429`, timeouts and connection failures are
//! [`HubError::Unavailable`]; any other answer (redirects are not followed) is [`HubError::Rejected`]. Calls go out
//! under the service's outbound policy (`zerotouch_outbound`): the URL must be `https` (plain `http` only to a
//! loopback host, or with `--allow-insecure-outbound`), and the receiver's addresses, checked after resolution and
//! pinned, may not be loopback, private, link-local or cloud metadata addresses unless `--outbound-allow` names
//! them.
#![forbid(unsafe_code, unused_must_use)]
#![deny(missing_docs)]

pub mod adapter;
pub mod device;
pub mod error;
pub mod mosquitto;
pub mod secret;
mod tls;
pub mod webhook;

pub use adapter::{
    ADDRESS_SETTINGS, HubAdapter, SECRET_SETTINGS, SecretNotResent, adapter_for, carry_over_secrets,
    reserved_device_ids,
};
pub use device::{ChangeId, Credential, DeviceId, DeviceIdError, DeviceIdentity, Owner, SymmetricKeys};
pub use error::{HubError, Operation, SettingsError};
pub use mosquitto::{MosquittoAdapter, MosquittoSettings};
pub use secret::Secret;
pub use webhook::{WebhookAdapter, WebhookSettings};
