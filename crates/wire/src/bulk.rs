//! Bulk enrollment operations (`docs/protocol/device-api.md` §6 `RunBulkOperation`), without Azure's 10-item limit.

use serde::{Deserialize, Serialize};

/// What a bulk call does with each item.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum BulkMode {
    /// Create; an existing id is an error for that item.
    Create,
    /// Create or replace.
    Update,
    /// Replace only if the item's `etag` matches.
    UpdateIfMatchETag,
    /// Delete; a missing id is an error for that item.
    Delete,
}

/// Most items a bulk call takes.
pub const MAX_BULK_ITEMS: usize = 10_000;
