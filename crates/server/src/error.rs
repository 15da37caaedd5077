//! The one place where errors become HTTP answers: status, Azure `errorCode`, message, `x-ms-error-code`.
//!
//! Client errors name the field, header or resource at fault. Authentication failures all read the same to the
//! client; the reason goes to the log. Internal errors answer a bare "internal error" with a tracking id, and
//! the log line carries the same id with the whole cause.

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};
use zerotouch_store::StoreError;
use zerotouch_wire::enrollment::FieldError;
use zerotouch_wire::{ErrorBody, ErrorCode};

use crate::auth::{Role, TokenError};

/// Everything an admin request can fail with.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The body is not JSON of the expected shape.
    #[error("{0}")]
    MalformedBody(String),
    /// A field has an unacceptable value.
    #[error("{0}")]
    InvalidField(#[from] FieldError),
    /// An id in the path is invalid.
    #[error("{0}")]
    InvalidId(String),
    /// The query is not understood.
    #[error("{0}")]
    InvalidQuery(String),
    /// A header or query parameter is invalid.
    #[error("{0}")]
    InvalidHeader(String),
    /// The bearer token is missing or invalid.
    #[error("unauthenticated: {0}")]
    Unauthenticated(TokenError),
    /// The caller's role is not enough.
    #[error("role {role} may not {what}")]
    Forbidden {
        /// The caller's role.
        role: &'static str,
        /// The role needed.
        needs: Role,
        /// What was attempted.
        what: &'static str,
    },
    /// No route has this path.
    #[error("no route")]
    RouteNotFound,
    /// The resource does not exist.
    #[error("{0} not found")]
    NotFound(String),
    /// The route does not take this method; the ones it takes, for the `Allow` header.
    #[error("method not allowed")]
    MethodNotAllowed(&'static [&'static str]),
    /// A conflicting write.
    #[error("{0}")]
    Conflict(String),
    /// Device API: the CSR cannot be used; why.
    #[error("the CSR is refused: {0}")]
    CsrRefused(String),
    /// No issuing CA is active.
    #[error("no issuing CA is active")]
    NoIssuingCa,
    /// Device API: the device's certificate or chain is refused, with the code that says why.
    #[error("{message}")]
    DeviceCertificate {
        /// One of the 4010xx certificate codes.
        code: ErrorCode,
        /// What is wrong, naming the certificate.
        message: String,
    },
    /// `If-Match` failed.
    #[error("{0}")]
    PreconditionFailed(String),
    /// The body is too large.
    #[error("the body is larger than {0} bytes")]
    PayloadTooLarge(usize),
    /// The body is not JSON.
    #[error("unsupported content type {0:?}")]
    UnsupportedMediaType(String),
    /// The service is not ready.
    #[error("not ready: {0}")]
    NotReady(String),
    /// Something broke inside.
    #[error("internal: {0}")]
    Internal(String),
    /// Device API: the credentials were refused (the reason is logged and audited, never sent).
    #[error("device unauthorized")]
    DeviceUnauthorized,
    /// Device API: no such registration or operation for this device.
    #[error("{0} not found")]
    RegistrationNotFound(String),
    /// Device API over MQTT: a register asked for TPM attestation, which MQTT does not offer.
    #[error("TPM attestation over MQTT")]
    TpmOverMqtt,
    /// Device API, TPM first leg (`azure-dps-wire.md` §3.1): 401 with the activation blob, not an error body.
    #[error("TPM challenge")]
    TpmChallenge {
        /// Base64 of the activation blob.
        authentication_key: String,
    },
    /// Device API, TPM: the endorsement or storage root key in the body cannot be used; why.
    #[error("{0}")]
    TpmKey(String),
    /// Too many requests; retry after this many seconds.
    #[error("throttled")]
    Throttled {
        /// Seconds to wait.
        retry_after: u64,
    },
}

impl ApiError {
    /// An internal error with its cause (logged, not sent).
    pub fn internal(cause: impl std::fmt::Display) -> Self {
        Self::Internal(cause.to_string())
    }

    /// Maps a store error about `resource` (e.g. `enrollment "dev-1"`).
    pub fn from_store(err: StoreError, resource: &str) -> Self {
        match err {
            StoreError::NotFound => Self::NotFound(resource.to_owned()),
            StoreError::PreconditionFailed => {
                Self::PreconditionFailed(format!("If-Match does not match the current etag of {resource}"))
            }
            StoreError::Conflict(why) => Self::Conflict(format!("{resource}: {why}")),
            StoreError::UnsupportedUrl
            | StoreError::Corrupt(_)
            | StoreError::Unavailable(_)
            | StoreError::Database(_) => Self::internal(err),
        }
    }

    /// The code and client-facing message.
    pub fn code_and_message(&self) -> (ErrorCode, String) {
        match self {
            Self::MalformedBody(m) => (ErrorCode::MalformedBody, m.clone()),
            Self::InvalidField(e) => (ErrorCode::InvalidField, e.to_string()),
            Self::InvalidId(m) => (ErrorCode::InvalidId, m.clone()),
            Self::InvalidQuery(m) => (ErrorCode::InvalidQuery, m.clone()),
            Self::InvalidHeader(m) => (ErrorCode::InvalidHeader, m.clone()),
            Self::Unauthenticated(_) => {
                (ErrorCode::Unauthenticated, "a valid bearer token is required (Authorization: Bearer <JWT>)".into())
            }
            Self::Forbidden { role, needs, what } => (
                ErrorCode::Forbidden,
                format!("role {role:?} may not {what}; role {:?} or higher is needed", needs.as_str()),
            ),
            Self::RouteNotFound => (ErrorCode::RouteNotFound, "no such route".into()),
            Self::NotFound(what) => (ErrorCode::NotFound, format!("{what} does not exist")),
            Self::MethodNotAllowed(allow) => (
                ErrorCode::MethodNotAllowed,
                format!("the route does not take this method; it takes {}", allow.join(", ")),
            ),
            Self::Conflict(m) => (ErrorCode::Conflict, m.clone()),
            Self::CsrRefused(m) => (ErrorCode::CsrRefused, format!("the CSR is refused: {m}")),
            Self::NoIssuingCa => (
                ErrorCode::NoIssuingCa,
                "no issuing CA is active: an administrator must activate one (POST /pki/issuingCAs/{name}/activate)"
                    .into(),
            ),
            Self::DeviceCertificate { code, message } => (*code, message.clone()),
            Self::PreconditionFailed(m) => (ErrorCode::PreconditionFailed, m.clone()),
            Self::PayloadTooLarge(limit) => {
                (ErrorCode::PayloadTooLarge, format!("the body is larger than the {limit} bytes this route takes"))
            }
            Self::UnsupportedMediaType(t) => {
                (ErrorCode::UnsupportedMediaType, format!("Content-Type {t:?} is not supported; send application/json"))
            }
            Self::NotReady(m) => (ErrorCode::NotReady, format!("not ready: {m}")),
            Self::Internal(_) => (ErrorCode::Internal, "internal error; quote the trackingId to the operator".into()),
            Self::DeviceUnauthorized => (ErrorCode::DeviceUnauthorized, "Unauthorized".into()),
            Self::TpmChallenge { .. } => {
                (ErrorCode::DeviceUnauthorized, crate::registration::tpm::CHALLENGE_MESSAGE.into())
            }
            Self::TpmKey(m) => (ErrorCode::TpmKeyRefused, m.clone()),
            Self::RegistrationNotFound(what) => (ErrorCode::RegistrationNotFound, format!("{what} does not exist")),
            Self::TpmOverMqtt => (
                ErrorCode::TpmNotSupportedOverMqtt,
                "TPM attestation is not available over MQTT (as with Azure DPS); register over HTTPS".into(),
            ),
            Self::Throttled { retry_after } => (
                ErrorCode::Throttled,
                format!("Operations are being throttled for this device; retry after {retry_after} s"),
            ),
        }
    }
}

/// The answer of a route to a method it does not take: 405 with `Allow`.
pub async fn method_not_allowed(allow: &'static [&'static str]) -> Result<HttpResponse, ApiError> {
    Err(ApiError::MethodNotAllowed(allow))
}

/// The answer to a path no route has: 404.
pub async fn route_not_found() -> Result<HttpResponse, ApiError> {
    Err(ApiError::RouteNotFound)
}

/// The Azure error body for `code` and `message`, logged under a fresh tracking id (with `cause`, if internal).
/// Every protocol's answer is built from it (HTTPS here, MQTT in `mqtt`).
pub fn error_body(code: ErrorCode, message: String, cause: Option<&str>) -> ErrorBody {
    let tracking_id = uuid::Uuid::new_v4().to_string();
    match cause {
        Some(cause) => tracing::error!(tracking_id, error_code = code.number(), "{cause}"),
        None => tracing::debug!(tracking_id, error_code = code.number(), "{message}"),
    }
    ErrorBody {
        error_code: code.number(),
        tracking_id,
        message,
        timestamp_utc: zerotouch_wire::format_timestamp(chrono::Utc::now()),
    }
}

/// Builds the Azure error answer for `code` and `message`, logging it under a fresh tracking id.
pub fn error_response(code: ErrorCode, message: String, cause: Option<&str>) -> HttpResponse {
    let body = error_body(code, message, cause);
    let status = StatusCode::from_u16(code.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut builder = HttpResponse::build(status);
    builder.insert_header(("x-ms-error-code", code.number().to_string()));
    if code == ErrorCode::Unauthenticated {
        builder.insert_header(("WWW-Authenticate", "Bearer"));
    }
    builder.json(body)
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        StatusCode::from_u16(self.code_and_message().0.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    }

    fn error_response(&self) -> HttpResponse {
        let (code, message) = self.code_and_message();
        if let Self::MethodNotAllowed(allow) = self {
            let mut response = error_response(code, message, None);
            if let Ok(value) = actix_web::http::header::HeaderValue::from_str(&allow.join(", ")) {
                response.headers_mut().insert(actix_web::http::header::ALLOW, value);
            }
            return response;
        }
        if let Self::Throttled { retry_after } = self {
            let mut response = error_response(code, message, None);
            if let Ok(value) = actix_web::http::header::HeaderValue::from_str(&retry_after.to_string()) {
                response.headers_mut().insert(actix_web::http::header::RETRY_AFTER, value);
            }
            return response;
        }
        match self {
            Self::TpmChallenge { authentication_key } => {
                HttpResponse::Unauthorized().json(zerotouch_wire::device::TpmChallenge {
                    message,
                    authentication_key: authentication_key.clone(),
                    key_name: "registration".into(),
                })
            }
            Self::Internal(cause) => error_response(code, message, Some(cause)),
            Self::Unauthenticated(why) => {
                tracing::info!("admin request refused: {why}");
                error_response(code, message, None)
            }
            _ => error_response(code, message, None),
        }
    }
}
