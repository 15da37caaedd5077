//! What a repository call can fail with.

/// A repository error; each variant is a distinct cause a caller acts on.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The resource does not exist.
    #[error("not found")]
    NotFound,
    /// `If-Match` did not match the current etag (or the resource does not exist).
    #[error("the etag does not match")]
    PreconditionFailed,
    /// A concurrent write won, or the resource already exists.
    #[error("conflict: {0}")]
    Conflict(String),
    /// Checked again in the transaction that would write it, the decision no longer holds: the enrollment was
    /// disabled or deleted, or the certificate the device authenticated with was revoked or superseded, after the
    /// decision was made. The device is refused.
    #[error("no longer authorized: {0}")]
    NoLongerAuthorized(String),
    /// The database URL selects no supported engine.
    #[error("the database URL must start with sqlite: or postgres://")]
    UnsupportedUrl,
    /// A stored value could not be read back.
    #[error("corrupt stored data: {0}")]
    Corrupt(String),
    /// A part of the store cannot take requests (it stopped with the runtime).
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// Another registration holds the device id on the hub (the registrations' unique index on hub and
    /// lower-cased device id refused the write).
    #[error("another registration holds this device id on the hub")]
    DeviceIdTaken,
    /// The database failed.
    #[error("database: {0}")]
    Database(#[from] sea_orm::DbErr),
}

/// The unique index that gives a device id on a hub to one registration (migration
/// `m20261205_011800_add_hub_device_id_index`); both engines name it in a violation's message.
pub(crate) const DEVICE_ID_INDEX: &str = "registrations_by_device_id";

impl StoreError {
    /// [`StoreError::DeviceIdTaken`] for a violation of the device-id index, other errors as they are.
    pub(crate) fn device_id_taken(self) -> Self {
        match &self {
            Self::Database(e) if e.to_string().contains(DEVICE_ID_INDEX) => Self::DeviceIdTaken,
            _ => self,
        }
    }

    /// Maps a unique-constraint violation to [`StoreError::Conflict`], other errors to themselves.
    pub(crate) fn from_insert(err: sea_orm::DbErr, what: &str) -> Self {
        match err.sql_err() {
            Some(sea_orm::SqlErr::UniqueConstraintViolation(_)) => {
                Self::Conflict(format!("{what} was created concurrently"))
            }
            _ => Self::Database(err),
        }
    }
}
