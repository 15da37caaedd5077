//! Linked hubs (our extension of the service API): where allocation may send devices.

use serde::{Deserialize, Serialize};

/// The kinds of hub the service can register devices on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum HubKind {
    /// Assignments are recorded; the hub itself is not called.
    None,
    /// A Mosquitto 2 broker with the dynamic-security plugin.
    Mosquitto,
    /// A receiver of signed HTTPS requests.
    Webhook,
}

impl HubKind {
    /// The name used on the wire and in the database.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Mosquitto => "mosquitto",
            Self::Webhook => "webhook",
        }
    }

    /// Parses the stored name.
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "none" => Some(Self::None),
            "mosquitto" => Some(Self::Mosquitto),
            "webhook" => Some(Self::Webhook),
            _ => None,
        }
    }
}

/// Smallest allocation weight.
pub const MIN_WEIGHT: u32 = 1;
/// The settings of a hub that hold secrets (of any kind, at the top level of `settings`): write-only in the admin
/// API, never logged, sealed in the database.
pub const SECRET_SETTINGS: &[&str] = &["password", "secret"];

/// Largest allocation weight.
pub const MAX_WEIGHT: u32 = 1000;
/// Weight of a hub created without one.
pub const DEFAULT_WEIGHT: u32 = 100;

/// A hub as the admin API reads and writes it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Hub {
    /// The host name devices connect to (the id of the hub).
    pub host_name: String,
    /// Which adapter registers devices on it.
    pub kind: HubKind,
    /// Relative share of devices under hashed allocation (1-1000, default 100).
    #[serde(default)]
    pub allocation_weight: Option<u32>,
    /// Whether allocation may pick this hub for enrollments that list no hubs (default true).
    #[serde(default)]
    pub apply_allocation_policy: Option<bool>,
    /// The adapter's settings (kind-specific; none for `none`). Secrets (`password`, `secret`) are write-only:
    /// never returned, and kept when a later write leaves them out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub settings: Option<serde_json::Value>,
    /// Read-only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub etag: Option<String>,
    /// Read-only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_date_time_utc: Option<String>,
    /// Read-only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_updated_date_time_utc: Option<String>,
}
