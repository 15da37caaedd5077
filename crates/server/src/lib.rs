//! The zerotouch service: configuration, trust material, TLS, the registration service and the managed CA, the
//! hub outbox, and their transports (HTTPS admin and device APIs, the MQTT device endpoint), metrics.
//!
//! Module map (see `docs/architecture.md`): [`registration`] is the domain (a pipeline of small stages, one
//! error); [`http`] and [`mqtt`] only translate protocols into its calls and its errors back; [`pki`] and
//! [`hubs`] are the managed CA and the outbox; [`master_key`] (and [`pkcs11`]) unlock the database's sealed
//! secrets; [`service`] starts and stops everything, and every request runs in the main runtime's context
//! ([`main_runtime`]).
#![forbid(unsafe_code, unused_must_use)]

pub mod auth;
pub mod azure_import;
pub mod config;
pub mod data_dir;
pub mod http;
pub mod hubs;
pub mod internal;
pub mod main_runtime;
pub mod master_key;
pub mod metrics;
pub mod mqtt;
pub mod pkcs11;
pub mod pki;
pub mod registration;
pub mod service;
pub mod shared_access_policy;
pub mod tls;
