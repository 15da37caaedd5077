//! The zerotouch service: configuration, trust material, TLS, the admin API and its authentication, the device
//! API and the registration service behind it, metrics.
#![forbid(unsafe_code, unused_must_use)]

pub mod admin;
pub mod auth;
pub mod config;
pub mod data_dir;
pub mod device;
pub mod error;
pub mod est;
pub mod hubs;
pub mod metrics;
pub mod mqtt;
pub mod pki;
pub mod registration;
pub mod request;
pub mod service;
pub mod tls;
