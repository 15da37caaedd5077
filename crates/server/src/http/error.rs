//! The one place where errors become HTTP answers: status, Azure `errorCode`, message, `x-ms-error-code`.
//!
//! Client errors name the field, header or resource at fault. Authentication failures all read the same to the
//! client; the reason goes to the log. Internal errors answer a bare "internal error" with a tracking id, and
//! the log line carries the same id with the whole cause chain.
//!
//! [`ApiError`] is the HTTP error of both listeners: the admin API's own failures, the request-shape failures
//! both share, the managed CA's ([`PkiError`], mapped by `From`), and the registration service's
//! ([`RegistrationError`], mapped by [`device_response`] in one exhaustive match).

use actix_web::http::StatusCode;
use actix_web::http::header::{self, HeaderValue};
use actix_web::{HttpResponse, ResponseError};
use zerotouch_store::StoreError;
use zerotouch_wire::enrollment::FieldError;
use zerotouch_wire::{ErrorBody, ErrorCode};

use zerotouch_wire::policy::AccessRights;

use crate::auth::service_sas::ServiceSasError;
use crate::auth::{AuthError, Role, TokenError};
use crate::internal::InternalError;
use crate::pki::PkiError;
use crate::registration::RegistrationError;

/// Everything an HTTP request can fail with.
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
    /// The shared access signature does not verify (the reason is logged, never sent).
    #[error("unauthenticated: {0}")]
    BadSignature(ServiceSasError),
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
    /// The caller's shared access policy has no right that grants the permission.
    #[error("shared access policy {policy} may not {what}")]
    PolicyForbidden {
        /// The policy.
        policy: String,
        /// Its rights.
        rights: AccessRights,
        /// The rights that would do.
        needs: AccessRights,
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
    /// A hub's settings would reserve a device id a registration holds; what and whose.
    #[error("{0}")]
    ReservedDeviceIdInUse(String),
    /// A hub update moves the hub without sending a stored secret again.
    #[error("{0}")]
    SecretNotResent(#[from] zerotouch_hub::SecretNotResent),
    /// No issuing CA is active.
    #[error("no issuing CA is active")]
    NoIssuingCa,
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
    #[error("internal: {}", .0.chain())]
    Internal(InternalError),
    /// The device API: the registration service refused or failed.
    #[error(transparent)]
    Device(#[from] RegistrationError),
}

impl ApiError {
    /// An internal error with its cause (logged, not sent).
    pub fn internal(cause: impl std::fmt::Display) -> Self {
        Self::Internal(InternalError::bare(cause.to_string()))
    }

    /// Maps a store error about `resource` (e.g. `enrollment "dev-1"`).
    pub fn from_store(err: StoreError, resource: &str) -> Self {
        match err {
            StoreError::NotFound => Self::NotFound(resource.to_owned()),
            StoreError::PreconditionFailed => {
                Self::PreconditionFailed(format!("If-Match does not match the current etag of {resource}"))
            }
            StoreError::Conflict(why) => Self::Conflict(format!("{resource}: {why}")),
            StoreError::DeviceIdTaken | StoreError::NoLongerAuthorized(_) => {
                Self::Conflict(format!("{resource}: {err}"))
            }
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
            Self::Unauthenticated(_) | Self::BadSignature(_) => (
                ErrorCode::Unauthenticated,
                "a valid bearer token (Authorization: Bearer <JWT>) or shared access signature \
                 (Authorization: SharedAccessSignature sr=...&sig=...&se=...&skn=...) is required"
                    .into(),
            ),
            Self::Forbidden { role, needs, what } => (
                ErrorCode::Forbidden,
                format!("role {role:?} may not {what}; role {:?} or higher is needed", needs.as_str()),
            ),
            Self::PolicyForbidden { policy, rights, needs, what } => (
                ErrorCode::Forbidden,
                if needs.is_empty() {
                    format!("shared access policy {policy:?} may not {what}; only an owner's bearer token may")
                } else {
                    format!(
                        "shared access policy {policy:?} (rights {:?}) may not {what}; it needs the right {}",
                        rights.to_string(),
                        needs.iter().map(|r| r.as_str()).collect::<Vec<_>>().join(" or ")
                    )
                },
            ),
            Self::RouteNotFound => (ErrorCode::RouteNotFound, "no such route".into()),
            Self::NotFound(what) => (ErrorCode::NotFound, format!("{what} does not exist")),
            Self::MethodNotAllowed(allow) => (
                ErrorCode::MethodNotAllowed,
                format!("the route does not take this method; it takes {}", allow.join(", ")),
            ),
            Self::Conflict(m) => (ErrorCode::Conflict, m.clone()),
            Self::ReservedDeviceIdInUse(m) => (ErrorCode::ReservedDeviceIdInUse, m.clone()),
            Self::SecretNotResent(e) => (ErrorCode::SecretNotResent, e.to_string()),
            Self::NoIssuingCa => (
                ErrorCode::NoIssuingCa,
                "no issuing CA is active: an administrator must activate one (POST /pki/issuingCAs/{name}/activate)"
                    .into(),
            ),
            Self::PreconditionFailed(m) => (ErrorCode::PreconditionFailed, m.clone()),
            Self::PayloadTooLarge(limit) => {
                (ErrorCode::PayloadTooLarge, format!("the body is larger than the {limit} bytes this route takes"))
            }
            Self::UnsupportedMediaType(t) => {
                (ErrorCode::UnsupportedMediaType, format!("Content-Type {t:?} is not supported; send application/json"))
            }
            Self::NotReady(m) => (ErrorCode::NotReady, format!("not ready: {m}")),
            Self::Internal(_) => (ErrorCode::Internal, "internal error; quote the trackingId to the operator".into()),
            Self::Device(e) => e.code_and_message(),
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

/// The Azure error body for `code` and `message`, logged under a fresh tracking id (with `cause`, the whole chain,
/// if internal). Every protocol's answer is built from it (HTTPS here, MQTT in `mqtt::reply`).
pub fn error_body(code: ErrorCode, message: String, cause: Option<&InternalError>) -> ErrorBody {
    let tracking_id = uuid::Uuid::new_v4().to_string();
    match cause {
        Some(cause) => tracing::error!(tracking_id, error_code = code.number(), "{}", cause.chain()),
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
pub fn error_response(code: ErrorCode, message: String, cause: Option<&InternalError>) -> HttpResponse {
    let body = error_body(code, message, cause);
    let status = StatusCode::from_u16(code.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut builder = HttpResponse::build(status);
    builder.insert_header(("x-ms-error-code", code.number().to_string()));
    if code == ErrorCode::Unauthenticated {
        builder.insert_header(("WWW-Authenticate", "Bearer"));
    }
    builder.json(body)
}

/// `response` with the header `name: value`.
fn with_header(mut response: HttpResponse, name: header::HeaderName, value: &str) -> HttpResponse {
    if let Ok(value) = HeaderValue::from_str(value) {
        response.headers_mut().insert(name, value);
    }
    response
}

/// The HTTPS answer to a registration service error: every variant decided here, with no wildcard, as
/// `mqtt::reply` decides it for MQTT.
pub fn device_response(error: &RegistrationError) -> HttpResponse {
    let (code, message) = error.code_and_message();
    match error {
        // The first leg of a TPM registration: 401 with the activation blob, not an error body (§3.1).
        RegistrationError::TpmChallenge { authentication_key } => {
            HttpResponse::Unauthorized().json(zerotouch_wire::device::TpmChallenge {
                message,
                authentication_key: authentication_key.clone(),
                key_name: "registration".into(),
            })
        }
        RegistrationError::Throttled { retry_after } => {
            with_header(error_response(code, message, None), header::RETRY_AFTER, &retry_after.to_string())
        }
        RegistrationError::Internal(cause) => error_response(code, message, Some(cause)),
        RegistrationError::InvalidField(_)
        | RegistrationError::Unauthorized
        | RegistrationError::Certificate { .. }
        | RegistrationError::CsrRefused(_)
        | RegistrationError::NoIssuingCa
        | RegistrationError::TpmKey(_)
        | RegistrationError::NotFound(_)
        | RegistrationError::Conflict(_) => error_response(code, message, None),
    }
}

impl From<AuthError> for ApiError {
    fn from(error: AuthError) -> Self {
        match error {
            AuthError::Unauthenticated(why) => Self::Unauthenticated(why),
            AuthError::BadSignature(why) => Self::BadSignature(why),
            AuthError::Forbidden { role, needs, what } => Self::Forbidden { role, needs, what },
            AuthError::PolicyForbidden { policy, rights, needs, what } => {
                Self::PolicyForbidden { policy, rights, needs, what }
            }
            AuthError::Store(e) => Self::internal(e),
        }
    }
}

impl From<PkiError> for ApiError {
    fn from(error: PkiError) -> Self {
        match error {
            PkiError::NoIssuingCa => Self::NoIssuingCa,
            PkiError::InvalidName(why) => Self::InvalidId(why),
            PkiError::InvalidField(field) => Self::InvalidField(field),
            PkiError::NotFound(what) => Self::NotFound(what),
            PkiError::Conflict(why) => Self::Conflict(why),
            PkiError::PreconditionFailed(why) => Self::PreconditionFailed(why),
            PkiError::Internal(cause) => Self::Internal(cause),
            // The admin API's CA operations check no device CSR.
            e @ PkiError::CsrRefused(_) => Self::Internal(InternalError::new("an admin request of the managed CA", e)),
        }
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        StatusCode::from_u16(self.code_and_message().0.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    }

    fn error_response(&self) -> HttpResponse {
        let (code, message) = self.code_and_message();
        match self {
            Self::MethodNotAllowed(allow) => {
                with_header(error_response(code, message, None), header::ALLOW, &allow.join(", "))
            }
            Self::Internal(cause) => error_response(code, message, Some(cause)),
            Self::Device(error) => device_response(error),
            Self::Unauthenticated(why) => {
                tracing::info!("admin request refused: {why}");
                error_response(code, message, None)
            }
            Self::BadSignature(why) => {
                tracing::info!("admin request refused: shared access signature: {why}");
                error_response(code, message, None)
            }
            _ => error_response(code, message, None),
        }
    }
}
