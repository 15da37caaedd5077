//! The Azure error body (`docs/protocol/device-api.md` §1.7) and the stable numeric codes the service answers.
//!
//! The convention is Azure's: HTTP status = errorCode / 1000. Every code is listed in `docs/error-codes.md`.

use serde::{Deserialize, Serialize};

/// Every error code the service can answer. The numbers are stable: clients may match on them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    /// The request body is not valid JSON, or a value has the wrong type.
    MalformedBody,
    /// A field has a value the service does not accept.
    InvalidField,
    /// An id in the path is not a valid registration id, group id or hub name.
    InvalidId,
    /// The query is not one the service understands.
    InvalidQuery,
    /// A header (If-Match, paging headers, query parameters) has an invalid value.
    InvalidHeader,
    /// No bearer token, or one that fails verification.
    Unauthenticated,
    /// The caller's role does not allow the operation.
    Forbidden,
    /// No route matches the path.
    RouteNotFound,
    /// The named resource does not exist.
    NotFound,
    /// The route exists but not with this method.
    MethodNotAllowed,
    /// The resource already exists, or another write got there first.
    Conflict,
    /// `If-Match` does not match the current etag.
    PreconditionFailed,
    /// The body is larger than the route accepts.
    PayloadTooLarge,
    /// The body is not `application/json`.
    UnsupportedMediaType,
    /// Something failed inside the service; the log line carries the same tracking id.
    Internal,
    /// The service is not ready (database unreachable or migrations pending).
    NotReady,
    /// Device API: the device's credentials were refused (any reason; the reason is audited, not sent).
    DeviceUnauthorized,
    /// Device API: no such registration or operation for this device.
    RegistrationNotFound,
    /// Device API: too many requests (per-device polling limit or global in-flight limit).
    Throttled,
    /// Registration outcome: the custom allocation webhook failed or answered badly.
    CustomAllocationFailed,
    /// Registration outcome: no linked hub to assign.
    NoHubAvailable,
    /// Registration outcome: the assigned hub did not take the device (refused it, or stayed unreachable past the
    /// deadline).
    HubRegistrationFailed,
    /// Device API: the CSR cannot be used (malformed, bad signature, CN other than the registration id, a key
    /// type the enrollment does not allow, or extensions beyond the profile).
    CsrRefused,
    /// No issuing CA is active, so no certificate can be issued.
    NoIssuingCa,
    /// Device API: the device's certificate (or one in its chain) has expired.
    CertificateExpired,
    /// Device API: the device's certificate (or one in its chain) is not valid yet.
    CertificateNotYetValid,
    /// Device API: the device's chain leads to no CA of an enrollment (nor to an issuing CA of ours).
    UnknownCertificateAuthority,
    /// Device API: the chain leads to an uploaded CA whose proof of possession is not done.
    CertificateAuthorityNotVerified,
    /// Device API: the chain is invalid (a signature, a CA without CA rights or keyCertSign, a path too long, a
    /// leaf not for client authentication).
    InvalidCertificateChain,
    /// Device API: the operational certificate was revoked.
    CertificateRevoked,
    /// Device API: the operational certificate was superseded and has expired, or expired beyond the renewal
    /// grace period.
    CertificateNotRenewable,
    /// Device API: TPM attestation was asked for over MQTT, which offers none (as with Azure DPS).
    TpmNotSupportedOverMqtt,
    /// Device API, TPM: the register body's endorsement or storage root key is missing, malformed, not a key the
    /// activation can use, or (the SRK) not the one enrolled.
    TpmKeyRefused,
    /// Device API, TPM groups: the EK certificate is not DER, or its public key is not the endorsement key sent.
    EndorsementKeyCertificateMismatch,
    /// Registration outcome: the device id is reserved by a hub (a Mosquitto hub's admin user or one of its
    /// `reservedDeviceIds`), which no device may have on any hub.
    DeviceIdReserved,
    /// Registration outcome: another registration holds this device id on the assigned hub.
    DeviceIdTaken,
    /// Registration outcome: the assigned hub has an identity by that name that zerotouch did not create, or that
    /// another registration owns; it was left untouched.
    HubIdentityNotManaged,
    /// Admin API: a hub's settings would reserve a device id (its admin user, `reservedDeviceIds`) that a
    /// registration holds.
    ReservedDeviceIdInUse,
    /// Admin API: a hub update changes where the hub is (`host`, `port`, `url`) without sending its write-only
    /// secret (`password`, `secret`) again.
    SecretNotResent,
}

impl ErrorCode {
    /// Every code, for documentation and tests.
    pub const ALL: [ErrorCode; 39] = [
        Self::MalformedBody,
        Self::InvalidField,
        Self::InvalidId,
        Self::InvalidQuery,
        Self::InvalidHeader,
        Self::Unauthenticated,
        Self::Forbidden,
        Self::RouteNotFound,
        Self::NotFound,
        Self::MethodNotAllowed,
        Self::Conflict,
        Self::PreconditionFailed,
        Self::PayloadTooLarge,
        Self::UnsupportedMediaType,
        Self::Internal,
        Self::NotReady,
        Self::DeviceUnauthorized,
        Self::RegistrationNotFound,
        Self::Throttled,
        Self::CustomAllocationFailed,
        Self::NoHubAvailable,
        Self::HubRegistrationFailed,
        Self::CsrRefused,
        Self::NoIssuingCa,
        Self::CertificateExpired,
        Self::CertificateNotYetValid,
        Self::UnknownCertificateAuthority,
        Self::CertificateAuthorityNotVerified,
        Self::InvalidCertificateChain,
        Self::CertificateRevoked,
        Self::CertificateNotRenewable,
        Self::TpmNotSupportedOverMqtt,
        Self::TpmKeyRefused,
        Self::EndorsementKeyCertificateMismatch,
        Self::DeviceIdReserved,
        Self::DeviceIdTaken,
        Self::HubIdentityNotManaged,
        Self::ReservedDeviceIdInUse,
        Self::SecretNotResent,
    ];

    /// The numeric code sent as `errorCode` and `x-ms-error-code`.
    pub fn number(self) -> u32 {
        match self {
            Self::MalformedBody => 400001,
            Self::InvalidField => 400002,
            Self::InvalidId => 400003,
            Self::InvalidQuery => 400004,
            Self::InvalidHeader => 400005,
            Self::Unauthenticated => 401001,
            Self::Forbidden => 403001,
            Self::RouteNotFound => 404001,
            Self::NotFound => 404202,
            Self::MethodNotAllowed => 405001,
            Self::Conflict => 409001,
            Self::PreconditionFailed => 412001,
            Self::PayloadTooLarge => 413001,
            Self::UnsupportedMediaType => 415001,
            Self::Internal => 500001,
            Self::NotReady => 503001,
            Self::DeviceUnauthorized => 401002,
            Self::RegistrationNotFound => 404201,
            Self::Throttled => 429001,
            Self::CustomAllocationFailed => 400207,
            Self::NoHubAvailable => 400208,
            Self::HubRegistrationFailed => 400209,
            Self::CsrRefused => 400210,
            Self::NoIssuingCa => 503002,
            Self::CertificateExpired => 401010,
            Self::CertificateNotYetValid => 401011,
            Self::UnknownCertificateAuthority => 401012,
            Self::CertificateAuthorityNotVerified => 401013,
            Self::InvalidCertificateChain => 401014,
            Self::CertificateRevoked => 401015,
            Self::CertificateNotRenewable => 401016,
            Self::TpmNotSupportedOverMqtt => 400212,
            Self::TpmKeyRefused => 400211,
            Self::EndorsementKeyCertificateMismatch => 401017,
            Self::DeviceIdReserved => 400213,
            Self::DeviceIdTaken => 400214,
            Self::HubIdentityNotManaged => 400215,
            Self::ReservedDeviceIdInUse => 409002,
            Self::SecretNotResent => 400006,
        }
    }

    /// The HTTP status that carries this code (Azure's convention: code / 1000).
    pub fn http_status(self) -> u16 {
        // Every number above has six digits, so the quotient is a valid three-digit status.
        (self.number() / 1000) as u16
    }
}

/// `ProvisioningServiceErrorDetails`: the body of every 4xx and 5xx answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ErrorBody {
    /// The numeric code (see [`ErrorCode`]).
    pub error_code: u32,
    /// An id that also appears in the service's log line for this error.
    pub tracking_id: String,
    /// What went wrong, naming the field or resource.
    pub message: String,
    /// When the error was produced.
    pub timestamp_utc: String,
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn every_code_is_documented() {
        let doc = include_str!("../../../docs/error-codes.md");
        for code in ErrorCode::ALL {
            assert!(doc.contains(&format!("| {} |", code.number())), "{code:?} is missing from docs/error-codes.md");
        }
    }

    #[test]
    fn codes_are_unique_and_map_to_their_status() {
        let numbers: HashSet<u32> = ErrorCode::ALL.iter().map(|c| c.number()).collect();
        assert_eq!(numbers.len(), ErrorCode::ALL.len());
        for code in ErrorCode::ALL {
            assert!((400..600).contains(&code.http_status()), "{code:?}");
            assert_eq!(u32::from(code.http_status()), code.number() / 1000);
        }
    }
}
