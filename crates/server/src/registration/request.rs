//! What a device asks, whatever the transport: who it says it is, what it proves that with, and the body of a
//! register. Both transports (`http::device`, `mqtt`) build these and nothing else.

use zerotouch_wire::RegistrationId;
use zerotouch_wire::device::DeviceRegistration;
use zerotouch_wire::field::FieldError;

/// Seconds a device is told to wait before polling (`Retry-After`, or `retry-after` in an MQTT response topic).
/// Registrations complete before the 202 is sent, so the first poll normally finds the result.
pub const RETRY_AFTER_SECS: u64 = 1;

/// How a device proves who it is.
#[derive(Debug, Clone)]
pub enum Evidence {
    /// An `Authorization: SharedAccessSignature ...` value (or MQTT password).
    Sas(String),
    /// The certificate chain the device presented in the TLS handshake (DER, its own certificate first), which
    /// proved it holds the first one's key.
    Certificates(Vec<Vec<u8>>),
    /// Nothing.
    None,
}

/// One request of a device, whatever the protocol.
#[derive(Debug, Clone)]
pub struct DeviceRequest {
    /// The id scope in the URL (or MQTT username).
    pub id_scope: String,
    /// The registration id in the URL (or MQTT username).
    pub registration_id: RegistrationId,
    /// What the device proved itself with.
    pub evidence: Evidence,
}

/// A register call.
#[derive(Debug, Clone)]
pub struct RegistrationRequest {
    /// Who asks.
    pub device: DeviceRequest,
    /// The body.
    pub body: DeviceRegistration,
}

/// What a device request does; the name it is audited and logged under.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// `register` (both legs of a TPM registration's second half, too).
    Register,
    /// An operation status poll.
    Poll,
    /// A registration status lookup.
    StatusLookup,
    /// An MQTT CONNECT, authenticated before any request on the connection.
    Connect,
    /// The first leg of a TPM registration (no credentials yet; the answer is the challenge).
    TpmChallenge,
    /// EST `simpleenroll`.
    SimpleEnroll,
    /// EST `simplereenroll`.
    SimpleReenroll,
}

impl Action {
    /// Whether the answer shows what the device authenticated with (`registrationState.x509`'s certificate
    /// details): EST answers with the certificate alone, so its calls skip working them out.
    pub fn shows_attestation(self) -> bool {
        !matches!(self, Self::SimpleEnroll | Self::SimpleReenroll)
    }

    /// The name in the audit log.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Register => "register",
            Self::Poll => "poll",
            Self::StatusLookup => "statusLookup",
            Self::Connect => "connect",
            Self::TpmChallenge => "tpmChallenge",
            Self::SimpleEnroll => "simpleenroll",
            Self::SimpleReenroll => "simplereenroll",
        }
    }
}

/// A register (or status lookup) body: empty, `null` or a `DeviceRegistration` (`docs/protocol/device-api.md`
/// §1.3).
pub fn registration_body(body: Option<serde_json::Value>) -> Result<DeviceRegistration, FieldError> {
    match body {
        None | Some(serde_json::Value::Null) => Ok(DeviceRegistration::default()),
        Some(value) => zerotouch_wire::field::decode(value),
    }
}

/// A body that is not JSON.
#[derive(Debug, thiserror::Error)]
#[error("the body is not valid JSON: {0}")]
pub struct NotJson(#[from] serde_json::Error);

/// A body as JSON; `None` when it is empty or only whitespace (MQTT devices send `" "` or nothing, §5).
pub fn parse_json(body: &[u8]) -> Result<Option<serde_json::Value>, NotJson> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    Ok(Some(serde_json::from_slice(body)?))
}
