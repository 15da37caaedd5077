//! The zerotouch service: configuration, trust material, TLS, the admin API and its authentication, metrics.
#![forbid(unsafe_code, unused_must_use)]

pub mod admin;
pub mod auth;
pub mod config;
pub mod data_dir;
pub mod error;
pub mod metrics;
pub mod request;
pub mod service;
pub mod tls;
