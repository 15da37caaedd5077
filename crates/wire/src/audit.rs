//! Audit events as `GET /audit` shows them: who changed what, when, and the etags either side; for device
//! registration attempts, the outcome or the reason of a refusal. Never a secret.

use serde::{Deserialize, Serialize};

/// One audited change.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AuditEvent {
    /// Increasing id.
    pub id: i64,
    /// When it happened.
    pub timestamp_utc: String,
    /// The subject of the caller's token.
    pub actor: String,
    /// The caller's role.
    pub role: String,
    /// What was done (`create`, `update`, `delete`, `readKeys`, ...).
    pub action: String,
    /// The kind of resource (`enrollment`, `enrollmentGroup`, `hub`, `registration`).
    pub resource_type: String,
    /// The resource's id.
    pub resource_id: String,
    /// The etag before the change.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub etag_before: Option<String>,
    /// The etag after the change.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub etag_after: Option<String>,
    /// For device attempts: the outcome, or why the attempt was refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}
