//! What an MQTT device is answered: the one place where errors become MQTT answers, as `http::error` is for
//! HTTPS. A request's failure ([`RequestError`]: its topic, its payload, or the registration service) becomes the
//! Azure error body on `$dps/registrations/res/{status}/?$rid=...` (`docs/protocol/device-api.md` §5, §1.7); a
//! refused CONNECT becomes a CONNACK return code ([`connect_refusal`]). Both match every variant of
//! [`RegistrationError`] with no wildcard.

use zerotouch_wire::ErrorCode;
use zerotouch_wire::field::FieldError;
use zerotouch_wire::mqtt::TopicError;

use crate::http::error::error_body;
use crate::internal::InternalError;
use crate::registration::RegistrationError;
use crate::registration::request::NotJson;

/// Why an MQTT request failed.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    /// The topic is none of the DPS request topics, or lacks its `$rid` or operation id.
    #[error("topic: {0}")]
    Topic(#[from] TopicError),
    /// The payload is not JSON.
    #[error(transparent)]
    NotJson(#[from] NotJson),
    /// A field of the payload is invalid.
    #[error(transparent)]
    InvalidField(#[from] FieldError),
    /// A register asked for TPM attestation, which MQTT does not offer (as with Azure DPS).
    #[error("TPM attestation over MQTT")]
    TpmOverMqtt,
    /// The registration service refused or failed.
    #[error(transparent)]
    Registration(#[from] RegistrationError),
}

/// What a request is answered with: the HTTP status the topic carries, the body, `retry-after`.
#[derive(Debug)]
pub struct Reply {
    /// The status in the response topic.
    pub status: u16,
    /// The JSON body.
    pub body: Vec<u8>,
    /// Seconds the device should wait, for the topic's `retry-after`.
    pub retry_after: Option<u64>,
}

impl Reply {
    /// A JSON answer.
    pub fn json(status: u16, body: &impl serde::Serialize, retry_after: Option<u64>) -> Result<Self, RequestError> {
        let body = serde_json::to_vec(body).map_err(|e| RegistrationError::internal("encoding an MQTT answer", e))?;
        Ok(Self { status, body, retry_after })
    }

    /// The Azure error body (§1.7) with the status of its code, as the HTTPS API answers it.
    pub fn error(error: &RequestError) -> Self {
        let (code, message, cause, retry_after) = match error {
            RequestError::Topic(TopicError::Unknown) => (ErrorCode::RouteNotFound, "no such route".into(), None, None),
            RequestError::Topic(e @ (TopicError::MissingRid | TopicError::MissingOperationId)) => {
                (ErrorCode::InvalidHeader, format!("topic: {e}"), None, None)
            }
            RequestError::NotJson(e) => (ErrorCode::MalformedBody, e.to_string(), None, None),
            RequestError::InvalidField(e) => (ErrorCode::InvalidField, e.to_string(), None, None),
            RequestError::TpmOverMqtt => (
                ErrorCode::TpmNotSupportedOverMqtt,
                "TPM attestation is not available over MQTT (as with Azure DPS); register over HTTPS".into(),
                None,
                None,
            ),
            RequestError::Registration(e) => {
                let (code, message) = e.code_and_message();
                let (cause, retry_after) = registration_details(e);
                (code, message, cause, retry_after)
            }
        };
        let body = error_body(code, message, cause);
        Self { status: code.http_status(), body: serde_json::to_vec(&body).unwrap_or_default(), retry_after }
    }
}

/// For an answer to a registration service error: the internal cause to log, and the `retry-after` to send.
fn registration_details(error: &RegistrationError) -> (Option<&InternalError>, Option<u64>) {
    match error {
        RegistrationError::Internal(cause) => (Some(cause), None),
        RegistrationError::Throttled { retry_after } => (None, Some(*retry_after)),
        // Not reachable over MQTT (a TPM register is refused before the service sees it); answered as the 401 it
        // is, with the error body, since MQTT has no challenge answer.
        RegistrationError::TpmChallenge { .. }
        | RegistrationError::InvalidField(_)
        | RegistrationError::Unauthorized
        | RegistrationError::Certificate { .. }
        | RegistrationError::CsrRefused(_)
        | RegistrationError::NoIssuingCa
        | RegistrationError::TpmKey(_)
        | RegistrationError::NotFound(_)
        | RegistrationError::Conflict(_) => (None, None),
    }
}

/// How a refused CONNECT is answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectRefusal {
    /// CONNACK 3: the service cannot take the device now (it may retry).
    ServiceUnavailable,
    /// CONNACK 4: the token (password) was refused.
    BadUsernameOrPassword,
    /// CONNACK 5: the certificate, or no credential, was refused.
    NotAuthorized,
}

/// The CONNACK for a CONNECT the service refused; `by_token`: the device sent a password (SAS token).
pub fn connect_refusal(error: &RegistrationError, by_token: bool) -> ConnectRefusal {
    let credentials = if by_token { ConnectRefusal::BadUsernameOrPassword } else { ConnectRefusal::NotAuthorized };
    match error {
        RegistrationError::Internal(cause) => {
            tracing::error!("MQTT CONNECT: {}", cause.chain());
            ConnectRefusal::ServiceUnavailable
        }
        RegistrationError::Throttled { .. } => ConnectRefusal::ServiceUnavailable,
        RegistrationError::Unauthorized | RegistrationError::Certificate { .. } => credentials,
        // Authentication answers none of these; were it to, the device is not let in either.
        RegistrationError::InvalidField(_)
        | RegistrationError::CsrRefused(_)
        | RegistrationError::NoIssuingCa
        | RegistrationError::TpmChallenge { .. }
        | RegistrationError::TpmKey(_)
        | RegistrationError::NotFound(_)
        | RegistrationError::Conflict(_) => credentials,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refused_token_and_a_refused_certificate_get_their_own_return_codes() {
        let refused = RegistrationError::Unauthorized;
        assert_eq!(connect_refusal(&refused, true), ConnectRefusal::BadUsernameOrPassword);
        assert_eq!(connect_refusal(&refused, false), ConnectRefusal::NotAuthorized);
        let busy = RegistrationError::Throttled { retry_after: 1 };
        assert_eq!(connect_refusal(&busy, true), ConnectRefusal::ServiceUnavailable);
        let broken = RegistrationError::internal("reading", std::io::Error::other("down"));
        assert_eq!(connect_refusal(&broken, false), ConnectRefusal::ServiceUnavailable);
    }

    #[test]
    fn a_throttled_request_is_answered_429_with_retry_after() {
        let reply = Reply::error(&RequestError::Registration(RegistrationError::Throttled { retry_after: 3 }));
        assert_eq!((reply.status, reply.retry_after), (429, Some(3)));
        let body: serde_json::Value = serde_json::from_slice(&reply.body).unwrap_or_default();
        assert_eq!(body["errorCode"], 429001);
    }

    #[test]
    fn topic_and_payload_errors_name_the_problem() {
        assert_eq!(Reply::error(&RequestError::Topic(TopicError::Unknown)).status, 404);
        assert_eq!(Reply::error(&RequestError::Topic(TopicError::MissingRid)).status, 400);
        assert_eq!(Reply::error(&RequestError::TpmOverMqtt).status, 400);
    }
}
