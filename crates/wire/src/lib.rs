//! Azure DPS-compatible wire types: identifiers, service-API documents, error bodies and codes (pure, no I/O).
//!
//! Everything a client sends or receives is typed here, once, so that the server, the agent, the load generator
//! and the tests agree on the JSON byte for byte. Shapes follow `docs/protocol/device-api.md` §1.7 and §6.
#![forbid(unsafe_code, unused_must_use)]
#![deny(missing_docs)]

pub mod audit;
pub mod azure_import;
pub mod bulk;
pub mod device;
pub mod enrollment;
pub mod error;
pub mod field;
pub mod hub;
pub mod id;
pub mod mqtt;
pub mod policy;
pub mod query;
pub mod registration;
pub mod secret;

pub use error::{ErrorBody, ErrorCode};
pub use id::{EnrollmentGroupId, HubHostName, IdError, RegistrationId};
pub use secret::{KeySlot, SymmetricKey};

/// Formats a timestamp the way Azure DPS does (`2022-08-31T22:02:50.5163352Z`: RFC 3339, UTC, `Z`).
pub fn format_timestamp(at: chrono::DateTime<chrono::Utc>) -> String {
    at.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}
