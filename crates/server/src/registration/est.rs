//! EST's domain half (RFC 7030; the routes are in `http::est`): a device authenticated by its TLS certificate
//! alone gets an operational certificate and keeps its registration (device id, hub).
//!
//! An EST client names no registration id: it is the one an operational certificate of ours was issued to, else
//! the certificate's subject CN. EST issues only to `assigned` registrations, so that every certificate belongs to
//! a registration that revocation finds.

use zerotouch_store::{Actor, CertificateGuard, StoreError};
use zerotouch_wire::RegistrationId;
use zerotouch_wire::enrollment::EnrollmentKind;
use zerotouch_wire::registration::RegistrationStatus;

use super::RegistrationService;
use super::authenticate::x509::KnownCertificate;
use super::error::{RegistrationError, internal};
use super::issue;
use super::limits::RetryAfter;
use super::request::{Action, DeviceRequest, Evidence};

impl RegistrationService {
    /// Who an EST client is, from its TLS certificate chain (leaf first): the registration an operational
    /// certificate of ours was issued to (its CN is the device id, which may differ from the registration id),
    /// else the certificate's subject CN. Returns the device request and what was read on the way, which
    /// authentication then does not read again.
    ///
    /// The CN is the registration id of a device certificate, and usually of an operational one (whose device id
    /// is most often its registration id): the registration and individual enrollment of that id are read beside
    /// the certificate, in one batch of the store's devices' reader, and read again only when the certificate turns
    /// out to belong to another registration.
    async fn est_device(&self, chain: Vec<Vec<u8>>) -> Result<(DeviceRequest, KnownCertificate), RegistrationError> {
        let leaf = chain.first().ok_or(RegistrationError::Unauthorized)?;
        let presented = zerotouch_pki::presented(leaf);
        let cn = presented.as_ref().ok().and_then(|presented| presented.subject_cn.clone().ok());
        let cn_key = cn.as_deref().and_then(|cn| RegistrationId::try_from(cn).ok()).map(|id| id.key().into_owned());
        let (issued, by_cn, individual) = tokio::join!(
            self.issued_certificate(leaf, &presented),
            async {
                match &cn_key {
                    Some(key) => self.current_registration(key).await,
                    None => Ok(None),
                }
            },
            async {
                match &cn_key {
                    Some(key) => self.enrollment(EnrollmentKind::Individual, key).await,
                    None => Ok(None),
                }
            },
        );
        let (issued, by_cn, individual) = (issued?, by_cn?, individual?);
        let (registration_id, registration, individual) = match &issued {
            Some(issued) if cn_key.as_deref() == Some(issued.registration_key.as_str()) => (
                by_cn.as_ref().map_or(&issued.registration_key, |r| &r.registration_id).clone(),
                by_cn,
                Some(individual),
            ),
            // The id as the device spells it (CSRs name it exactly); the key if the registration is gone.
            Some(issued) => match self.current_registration(&issued.registration_key).await? {
                Some(registration) => (registration.registration_id.clone(), Some(registration), None),
                None => (issued.registration_key.clone(), None, None),
            },
            None => (cn.ok_or(RegistrationError::Unauthorized)?, by_cn, Some(individual)),
        };
        let registration_id =
            RegistrationId::try_from(registration_id.as_str()).map_err(|_| RegistrationError::Unauthorized)?;
        let device = DeviceRequest {
            id_scope: self.settings.id_scope.clone(),
            registration_id,
            evidence: Evidence::Certificates(chain),
        };
        Ok((device, KnownCertificate { presented, issued, registration, individual }))
    }

    /// EST enrollment: a device authenticated by its TLS certificate `chain` (leaf first) gets an operational
    /// certificate from `body` (base64 DER PKCS#10, decoded only once the device is authenticated).
    /// `renewal` (simplereenroll) takes only an operational certificate of ours; simpleenroll takes that or a
    /// device certificate of an X.509 enrollment. Returns the chain, the new certificate first.
    pub async fn enroll_certificate(
        &self,
        chain: Vec<Vec<u8>>,
        body: &[u8],
        renewal: bool,
    ) -> Result<Vec<Vec<u8>>, RegistrationError> {
        let action = if renewal { Action::SimpleReenroll } else { Action::SimpleEnroll };
        let _slot = self.limits.slot()?;
        let (device, known) = self.est_device(chain).await?;
        let key = device.registration_id.key();
        let Evidence::Certificates(chain) = &device.evidence else {
            return Err(self.refuse(&device, action, "no certificate").await);
        };
        let registration = known.registration.clone();
        let authenticated = self.authenticate_x509(&device, action, chain, Some(known)).await?;
        self.limits.admit(&authenticated.budget(&device)).map_err(RetryAfter::refusal)?;
        if renewal && authenticated.operational.is_none() {
            let reason = "simplereenroll renews an operational certificate; this is another certificate";
            return Err(self.refuse(&device, action, reason).await);
        }
        let enrollment = &authenticated.enrollment;
        if enrollment.is_disabled() {
            let reason = format!("the {} is disabled", enrollment.noun());
            return Err(self.refuse(&device, action, &reason).await);
        }
        let policy = &enrollment.certificate_policy;
        let csr = issue::checked_est_csr(body, device.registration_id.as_str(), policy)?;
        // A certificate belongs to a registration (which revocation finds it by): the device registers first.
        if let Some(reason) = registration.as_ref().and_then(|registration| authenticated.refusal_for(registration)) {
            return Err(self.refuse(&device, action, &reason).await);
        }
        let (device_id, expected_etag) = match registration {
            Some(registration) if registration.status == RegistrationStatus::Assigned.as_str() => {
                (registration.device_id, registration.etag)
            }
            Some(_) | None => {
                let reason = "EST issues to assigned devices only: the device must register first";
                return Err(self.refuse(&device, action, reason).await);
            }
        };
        let device_id = device_id.unwrap_or_else(|| device.registration_id.as_str().to_owned());
        let issued = self.pki.issue(&csr, &device_id, policy).await?;
        let record = issue::certificate_record(&key, device_id, &issued);
        let actor = Actor { subject: format!("device:{}", device.registration_id.as_str()), role: "device".into() };
        let guard = CertificateGuard { expected_etag, renewing: authenticated.operational.clone() };
        match self.store.registrations().record_certificate(record, guard, action.as_str(), &actor).await {
            Ok(_) => Ok(issued.1.chain_der),
            // Revoked, disabled or renewed between the checks above and the write: the device is refused, and the
            // certificate just signed is never handed out (nor stored, so nothing else can use it).
            Err(StoreError::NoLongerAuthorized(reason)) => Err(self.refuse(&device, action, &reason).await),
            Err(StoreError::Conflict(why)) => Err(RegistrationError::Conflict(format!("{why}; retry"))),
            Err(e) => Err(internal("recording a certificate")(e)),
        }
    }
}
