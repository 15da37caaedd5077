//! Adapter errors: unavailable (retry later) or rejected (retrying will not help), each naming the hub and the
//! operation; and settings errors, naming the setting.

use crate::device::DeviceId;

/// The operation that failed, for error messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Operation {
    /// `upsert_device`.
    Upsert(DeviceId),
    /// `disable_device`.
    Disable(DeviceId),
    /// `delete_device`.
    Delete(DeviceId),
    /// `health`.
    Health,
}

impl std::fmt::Display for Operation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Upsert(id) => write!(f, "create or update of device {id}"),
            Self::Disable(id) => write!(f, "disable of device {id}"),
            Self::Delete(id) => write!(f, "delete of device {id}"),
            Self::Health => f.write_str("health check"),
        }
    }
}

/// Why a hub operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HubError {
    /// The hub could not be reached or did not answer in time (connection refused, timeout, broker down, 5xx):
    /// retry later.
    #[error("hub {hub}: {operation} failed, hub unavailable (retry later): {reason}")]
    Unavailable {
        /// The hub's name.
        hub: String,
        /// What was attempted.
        operation: Operation,
        /// What happened (never a secret).
        reason: String,
    },
    /// The hub refused the request for a reason that retrying will not fix.
    #[error("hub {hub}: {operation} rejected: {reason}")]
    Rejected {
        /// The hub's name.
        hub: String,
        /// What was attempted.
        operation: Operation,
        /// Why (never a secret).
        reason: String,
    },
    /// The hub has an identity by that name that is not the owner's: one zerotouch did not create (an account of
    /// the hub's operator, the hub's own admin user), or one another registration owns. The adapter left it
    /// untouched; retrying will not help.
    #[error("hub {hub}: {operation} refused: {reason}")]
    NotManaged {
        /// The hub's name.
        hub: String,
        /// What was attempted.
        operation: Operation,
        /// Whose identity it is, as far as the adapter can tell.
        reason: String,
    },
}

impl HubError {
    /// Whether retrying later may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(self, Self::Unavailable { .. })
    }
}

/// Why a hub's settings were refused.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    /// The hub kind has no adapter.
    #[error("hub kind {0:?} has no adapter")]
    UnknownKind(String),
    /// The settings JSON does not have the expected shape.
    #[error("hub settings: {0}")]
    Shape(String),
    /// One setting has an invalid value.
    #[error("hub setting {setting}: {reason}")]
    Invalid {
        /// The setting's name.
        setting: &'static str,
        /// Why.
        reason: String,
    },
    /// The adapter was built outside a Tokio runtime.
    #[error("a hub adapter must be created inside a Tokio runtime")]
    NoRuntime,
}
