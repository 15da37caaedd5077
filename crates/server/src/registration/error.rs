//! The registration service's one error: every way a device's request can fail.
//!
//! What the device is told ([`RegistrationError::code_and_message`]) is decided here, once. How it travels is
//! decided by each transport in one exhaustive `match` with no wildcard (`http::device` for HTTPS answers,
//! `mqtt::reply` for MQTT responses and CONNACKs), so a new variant does not compile until both transports
//! have decided what to do with it. Refusals are deliberately vague (one "Unauthorized" for every credential
//! failure); their reasons go to the audit log. Internal failures keep their cause chain for the log.

use zerotouch_wire::ErrorCode;
use zerotouch_wire::field::FieldError;

use crate::internal::{Cause, InternalError};
use crate::pki::PkiError;

/// The `message` of the 401 challenge of a TPM registration's first leg.
pub const CHALLENGE_MESSAGE: &str =
    "TPM challenge: activate authenticationKey in the TPM and sign the registration SAS with the imported key";

/// Everything a device request can fail with.
#[derive(Debug, thiserror::Error)]
pub enum RegistrationError {
    /// A field of the request has an unacceptable value (the body's `registrationId` differs from the path's).
    #[error("{0}")]
    InvalidField(#[from] FieldError),
    /// The device's credentials were refused; the reason was audited and is never sent.
    #[error("device unauthorized")]
    Unauthorized,
    /// The device's certificate or chain is refused, with the code that says why.
    #[error("{message}")]
    Certificate {
        /// One of the 4010xx certificate codes.
        code: ErrorCode,
        /// What is wrong, naming the certificate.
        message: String,
    },
    /// The CSR cannot be used; why.
    #[error("the CSR is refused: {0}")]
    CsrRefused(String),
    /// No issuing CA is active, so no certificate can be issued.
    #[error("no issuing CA is active")]
    NoIssuingCa,
    /// The first leg of a TPM registration (`docs/protocol/device-api.md` §3.1): not a failure but the 401
    /// challenge, carrying the activation blob.
    #[error("TPM challenge")]
    TpmChallenge {
        /// Base64 of the activation blob.
        authentication_key: String,
    },
    /// The endorsement or storage root key of a TPM register cannot be used; why.
    #[error("{0}")]
    TpmKey(String),
    /// No such registration or operation for this device.
    #[error("{0} not found")]
    NotFound(String),
    /// The device's registration kept changing under concurrent writes.
    #[error("{0}")]
    Conflict(String),
    /// Too many requests; retry after this many seconds.
    #[error("throttled; retry after {retry_after} s")]
    Throttled {
        /// Seconds to wait.
        retry_after: u64,
    },
    /// Something broke inside the service.
    #[error(transparent)]
    Internal(#[from] InternalError),
}

impl RegistrationError {
    /// An internal failure of `doing`, caused by `cause`.
    pub fn internal(doing: impl Into<String>, cause: impl Into<Cause>) -> Self {
        Self::Internal(InternalError::new(doing, cause))
    }

    /// The code and message the device is told, whatever the transport.
    pub fn code_and_message(&self) -> (ErrorCode, String) {
        match self {
            Self::InvalidField(e) => (ErrorCode::InvalidField, e.to_string()),
            Self::Unauthorized => (ErrorCode::DeviceUnauthorized, "Unauthorized".into()),
            Self::Certificate { code, message } => (*code, message.clone()),
            Self::CsrRefused(m) => (ErrorCode::CsrRefused, format!("the CSR is refused: {m}")),
            Self::NoIssuingCa => (
                ErrorCode::NoIssuingCa,
                "no issuing CA is active: an administrator must activate one (POST /pki/issuingCAs/{name}/activate)"
                    .into(),
            ),
            Self::TpmChallenge { .. } => (ErrorCode::DeviceUnauthorized, CHALLENGE_MESSAGE.into()),
            Self::TpmKey(m) => (ErrorCode::TpmKeyRefused, m.clone()),
            Self::NotFound(what) => (ErrorCode::RegistrationNotFound, format!("{what} does not exist")),
            Self::Conflict(m) => (ErrorCode::Conflict, m.clone()),
            Self::Throttled { retry_after } => (
                ErrorCode::Throttled,
                format!("Operations are being throttled for this device; retry after {retry_after} s"),
            ),
            Self::Internal(_) => (ErrorCode::Internal, "internal error; quote the trackingId to the operator".into()),
        }
    }
}

/// `map_err` for a failure of `doing`: `.map_err(internal("reading the registration"))`.
pub(super) fn internal<E: Into<Cause>>(doing: &'static str) -> impl FnOnce(E) -> RegistrationError {
    move |cause| RegistrationError::internal(doing, cause)
}

impl From<PkiError> for RegistrationError {
    fn from(error: PkiError) -> Self {
        match error {
            PkiError::NoIssuingCa => Self::NoIssuingCa,
            PkiError::CsrRefused(why) => Self::CsrRefused(why),
            PkiError::Internal(e) => Self::Internal(e),
            // Not reachable from what registration asks of the CA (issue, look up a CA by name); if it were, it
            // is the service's fault, not the device's.
            e @ (PkiError::InvalidName(_)
            | PkiError::InvalidField(_)
            | PkiError::NotFound(_)
            | PkiError::Conflict(_)
            | PkiError::PreconditionFailed(_)) => Self::Internal(InternalError::new("the managed CA", e)),
        }
    }
}
