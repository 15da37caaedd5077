//! Authentication: which enrollment a device is, proved by what it brings (`docs/protocol/device-api.md` §2-§4).
//!
//! - a SAS token ([`sas`]): its individual enrollment's key, else a symmetric-key group's derived key, else the
//!   key of its pending TPM challenge;
//! - a TLS client certificate chain ([`x509`]): an operational certificate of ours (renewal), else its
//!   individual enrollment's device certificate, else the group whose CA sits nearest the leaf;
//! - nothing, with TPM keys in a register's body ([`tpm`]): the first leg of a TPM registration, answered with
//!   a challenge.
//!
//! Every refusal answers the device the same vague 401 (or the certificate code that names the problem with its
//! own certificate), and audits why; see [`RegistrationService::refuse`].

pub mod sas;
pub mod tpm;
pub mod x509;

use std::borrow::Cow;
use std::sync::Arc;

use zerotouch_store::{RegistrationRecord, StoreError};
use zerotouch_wire::enrollment::EnrollmentKind;
use zerotouch_wire::registration::X509RegistrationResult;

use super::RegistrationService;
use super::enrollment::Enrollment;
use super::error::RegistrationError;
use super::request::{Action, DeviceRequest, Evidence};

/// Who a device proved to be.
#[derive(Debug, Clone)]
pub struct Authenticated {
    /// The enrollment it matched.
    pub enrollment: Arc<Enrollment>,
    /// For a device that presented a certificate: what its registration result says about it.
    pub x509: Option<X509RegistrationResult>,
    /// The serial of the operational certificate of ours the device presented, if it did (it renews).
    pub operational: Option<String>,
    /// A TPM device's register: the blob of its new hub key, for the result (§3.1 step 4).
    pub tpm: Option<tpm::TpmOutcome>,
    /// A device that proved itself with a symmetric key: which of its enrollment's keys (its hub identity gets
    /// that one where the hub holds one password per identity).
    pub key_slot: Option<zerotouch_wire::KeySlot>,
}

impl Authenticated {
    fn by(enrollment: Arc<Enrollment>) -> Self {
        Self { enrollment, x509: None, operational: None, tpm: None, key_slot: None }
    }

    /// The name of the device's request budget (`--device-rate-limit`): its registration id and the enrollment
    /// it proved itself with, so that a device of another enrollment that can authenticate under the same id (a
    /// group admits any id its key covers) cannot use up the legitimate device's requests.
    pub fn budget(&self, device: &DeviceRequest) -> String {
        format!("{}\0{}\0{}", device.registration_id.key(), self.enrollment.noun(), self.enrollment.key())
    }

    /// Why this device may not act on the registration `current`, if it may not: a registration belongs to the
    /// enrollment that created it, so a device authenticated by another group (which admits any id its key or CA
    /// covers) cannot take over, or read, a registration made through a different enrollment. An individual
    /// enrollment, which an administrator creates for exactly this id, takes precedence (as in Azure DPS).
    pub fn refusal_for(&self, current: &RegistrationRecord) -> Option<String> {
        let group = self.enrollment.group_id()?;
        match &current.enrollment_group_key {
            Some(owner) if owner == self.enrollment.key() => None,
            Some(owner) => Some(format!(
                "the registration belongs to enrollment group {owner:?}; a device of group {group:?} cannot take it"
            )),
            None => Some(format!(
                "the registration belongs to an individual enrollment; a device of group {group:?} cannot take it"
            )),
        }
    }
}

impl RegistrationService {
    /// Authenticates a device by its evidence.
    pub(super) async fn authenticate(
        &self,
        device: &DeviceRequest,
        action: Action,
    ) -> Result<Authenticated, RegistrationError> {
        if !device.id_scope.eq_ignore_ascii_case(&self.settings.id_scope) {
            return Err(self.refuse(device, action, "the id scope is not this service's").await);
        }
        match &device.evidence {
            Evidence::Sas(header) => self.authenticate_sas(device, action, header).await,
            // Boxed: a certificate's path search is most of this future's size (see `refuse_as`).
            Evidence::Certificates(chain) => Box::pin(self.authenticate_x509(device, action, chain, None)).await,
            Evidence::None => Err(self.refuse(device, action, "no credentials").await),
        }
    }

    /// The enrollment of `kind` and `key`, typed; `None` if there is none.
    pub(super) async fn enrollment(
        &self,
        kind: EnrollmentKind,
        key: &str,
    ) -> Result<Option<Enrollment>, RegistrationError> {
        match self.store.enrollments().get(kind, key).await {
            Ok(record) => Ok(Some(Enrollment::parse(kind, record)?)),
            Err(StoreError::NotFound) => Ok(None),
            Err(e) => Err(RegistrationError::internal(format!("reading {} {key:?}", kind.noun()), e)),
        }
    }

    /// Refuses the request (401002 to the device) and audits why.
    ///
    /// Refusals of one registration id are audited as often as its requests are allowed (`--device-rate-limit`),
    /// and refusals of all ids at most [`super::limits::REFUSAL_AUDITS_PER_SECOND`]; beyond that they are only
    /// logged, so that a flood of bad credentials (with fresh ids or not) cannot fill the audit log or hold the
    /// database writer.
    pub(super) async fn refuse(&self, device: &DeviceRequest, action: Action, reason: &str) -> RegistrationError {
        self.refuse_as(device, action, reason, RegistrationError::Unauthorized).await
    }

    /// Refuses the request with `error` and audits `reason` (at most at the device's request rate, as above).
    pub(super) async fn refuse_as(
        &self,
        device: &DeviceRequest,
        action: Action,
        reason: &str,
        error: RegistrationError,
    ) -> RegistrationError {
        let action = action.as_str();
        let reason = printable(reason);
        tracing::info!(registration_id = device.registration_id.as_str(), action, "device refused: {reason}");
        // Audited at most at the device's request rate per id, and at most REFUSAL_AUDITS_PER_SECOND over all ids.
        let bucket = format!("refused\0{}", device.registration_id.key());
        // The audit's write is boxed, as are the other rare branches of the device path (a certificate's path
        // search, a TPM's challenge, a hub's inline delivery, a poll that misses the cache): a future holds room
        // for the largest future it may await, and every layer above it (the handler, actix's services) moves it.
        // Inline, they made a register's future 18 KB and a poll's 16 KB, copied several times per request.
        if self.limits.admit(&bucket).is_ok()
            && self.limits.audit_refusal()
            && let Err(e) = Box::pin(self.store.registrations().audit_refused_device(
                device.registration_id.as_str(),
                action,
                &reason,
            ))
            .await
        {
            tracing::error!("cannot audit a refused device request: {e}");
        }
        error
    }

    /// Refuses with a certificate error, whose message is also the audited reason (prefixed with `what`).
    pub(super) async fn refuse_certificate(
        &self,
        device: &DeviceRequest,
        action: Action,
        what: &str,
        error: RegistrationError,
    ) -> RegistrationError {
        let reason = format!("{what}: {error}");
        self.refuse_as(device, action, &reason, error).await
    }
}

/// `text` with its control characters escaped (`\n`, `\u{1b}`, ...): a refusal's reason quotes what the device
/// sent (certificate subjects, token parts), which must not start a line of its own, or a terminal sequence, in
/// the log or the audit log.
pub fn printable(text: &str) -> Cow<'_, str> {
    if !text.chars().any(char::is_control) {
        return Cow::Borrowed(text);
    }
    Cow::Owned(
        text.chars().map(|c| if c.is_control() { c.escape_debug().to_string() } else { c.to_string() }).collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::printable;

    #[test]
    fn control_characters_are_escaped_and_other_text_kept() {
        assert_eq!(
            printable("the device certificate \"CN=dev-1, O=caf\u{e9}\""),
            "the device certificate \"CN=dev-1, O=caf\u{e9}\""
        );
        assert_eq!(printable("O=evil\nFAKE\r\u{1b}[31m"), "O=evil\\nFAKE\\r\\u{1b}[31m");
        assert!(!printable("a\u{0}b\u{7f}c").chars().any(char::is_control));
    }
}
