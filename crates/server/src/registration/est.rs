//! EST's domain half (RFC 7030; the routes are in `http::est`): a device authenticated by its TLS certificate
//! alone gets an operational certificate and keeps its registration (device id, hub).
//!
//! An EST client names no registration id: it is the one an operational certificate of ours was issued to, else
//! the certificate's subject CN. EST issues only to `assigned` registrations, so that every certificate belongs to
//! a registration that revocation finds.

use zerotouch_store::{Actor, CertificateGuard, StoreError};
use zerotouch_wire::RegistrationId;
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
    async fn est_device(&self, chain: Vec<Vec<u8>>) -> Result<(DeviceRequest, KnownCertificate), RegistrationError> {
        let leaf = chain.first().ok_or(RegistrationError::Unauthorized)?;
        let issued = self.issued_certificate(leaf).await?;
        let (registration_id, registration) = match &issued {
            // The id as the device spells it (CSRs name it exactly); the key if the registration is gone.
            Some(issued) => match self.store.registrations().get(&issued.registration_key).await {
                Ok(registration) => (registration.registration_id.clone(), Some(registration)),
                Err(StoreError::NotFound) => (issued.registration_key.clone(), None),
                Err(e) => return Err(internal("reading the registration of a certificate")(e)),
            },
            None => (zerotouch_pki::subject_cn(leaf).map_err(|_| RegistrationError::Unauthorized)?, None),
        };
        let registration_id =
            RegistrationId::try_from(registration_id.as_str()).map_err(|_| RegistrationError::Unauthorized)?;
        let device = DeviceRequest {
            id_scope: self.settings.id_scope.clone(),
            registration_id,
            evidence: Evidence::Certificates(chain),
        };
        Ok((device, KnownCertificate { issued, registration }))
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
        let registration = match registration {
            Some(registration) => Ok(registration),
            None => self.store.registrations().get(&key).await,
        };
        if let Ok(registration) = &registration
            && let Some(reason) = authenticated.refusal_for(registration)
        {
            return Err(self.refuse(&device, action, &reason).await);
        }
        let (device_id, expected_etag) = match registration {
            Ok(registration) if registration.status == RegistrationStatus::Assigned.as_str() => {
                (registration.device_id, registration.etag)
            }
            Ok(_) | Err(StoreError::NotFound) => {
                let reason = "EST issues to assigned devices only: the device must register first";
                return Err(self.refuse(&device, action, reason).await);
            }
            Err(e) => return Err(internal("reading the device's registration")(e)),
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
