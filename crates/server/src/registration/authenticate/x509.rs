//! X.509 attestation (`docs/protocol/device-api.md` §4): which enrollment a device's certificate chain matches.
//!
//! The chain comes unjudged from the TLS handshake (which did prove that the device holds the leaf's key). Order:
//! an operational certificate we issued (renewal), then the individual enrollment of the leaf's CN (matched by
//! thumbprint), then the enrollment group whose CA sits closest to the leaf in the device's chain ("the first
//! intermediate, and so on down to the root"). The group is found by one path search over every group's anchors
//! (`zerotouch_pki::choose_anchor`, which bounds the signatures a chain may cost), run on the blocking pool with at
//! most [`chain_searches_at_once`] searches at a time, so a flood of hostile chains neither stalls the async
//! workers nor takes more than that many CPUs. A chain that verified is remembered for a while against the same
//! anchors (`RegistrationService::match_group`); a refused one is searched again every time.

use std::ops::Deref;
use std::sync::{Arc, LazyLock};

use sha2::{Digest, Sha256};
use time::OffsetDateTime;
use tokio::sync::Semaphore;
use zerotouch_pki::{CertificateError, ChainError, PresentedCertificate, Purpose, Refusal, TrustAnchors};
use zerotouch_store::{CertificateRecord, CertificateStatus, RegistrationRecord, StoreError};
use zerotouch_wire::ErrorCode;
use zerotouch_wire::enrollment::{EnrollmentKind, X509Attestation, X509CertificateWithInfo, X509Certificates};
use zerotouch_wire::registration::{X509CertificateInfo, X509RegistrationResult};

use super::super::RegistrationService;
use super::super::enrollment::{Attestation, Enrollment};
use super::super::error::{RegistrationError, internal};
use super::super::request::{Action, DeviceRequest};
use super::Authenticated;

/// A CA a device chain may end at: a group's signing certificate, or an uploaded CA it references.
#[derive(Debug, Clone)]
pub struct Anchor {
    /// The CA certificate, DER.
    pub der: Vec<u8>,
    /// Whether it may be used: signing certificates are, uploaded CAs once their proof of possession is done.
    pub verified: bool,
}

/// An enrollment group with the CAs its devices' chains may end at.
#[derive(Debug, Clone)]
pub struct X509Group {
    /// The group.
    pub group: Arc<Enrollment>,
    /// Its CAs, primary first.
    pub anchors: Vec<Anchor>,
}

/// What was already read about a presented certificate and its device, all of it in one batch of the store's
/// devices' reader (EST reads it to find the registration id): the certificate's serial and CN, from one parse;
/// the operational certificate of ours it is, if any; the device's registration, if it exists; and the individual
/// enrollment of the device's registration id.
#[derive(Debug)]
pub struct KnownCertificate {
    /// The certificate's serial and subject CN, or why it does not parse.
    pub presented: Result<PresentedCertificate, CertificateError>,
    /// Our record of the certificate.
    pub issued: Option<CertificateRecord>,
    /// The registration it authenticates for (of an operational certificate: the one it was issued to).
    pub registration: Option<RegistrationRecord>,
    /// The individual enrollment of the device's registration id, if it was read (`Some(None)`: there is none).
    pub individual: Option<Option<Enrollment>>,
}

/// A certificate's `X509CertificateInfo` (§1.4), as Azure shows it (`zerotouch_pki::certificate_info`).
pub fn info(der: &[u8]) -> Option<X509CertificateInfo> {
    zerotouch_pki::certificate_info(der).ok()
}

/// [`info`], when the answer to `action` shows it ([`Action::shows_attestation`]).
fn shown_info(action: Action, der: &[u8]) -> Option<X509CertificateInfo> {
    if action.shows_attestation() { info(der) } else { None }
}

fn certificates(pair: Option<&X509Certificates>) -> Vec<Vec<u8>> {
    let Some(pair) = pair else { return Vec::new() };
    [&pair.primary, &pair.secondary]
        .into_iter()
        .flatten()
        .filter_map(|c: &X509CertificateWithInfo| zerotouch_pki::certificate_from_text(c.certificate.as_deref()?).ok())
        .collect()
}

/// Whether `leaf` is one of the device certificates of an individual X.509 enrollment (by SHA-256 thumbprint).
pub fn individual_matches(attestation: &X509Attestation, leaf: &[u8]) -> bool {
    let leaf = zerotouch_pki::sha256(leaf);
    certificates(attestation.client_certificates.as_ref()).iter().any(|c| zerotouch_pki::sha256(c) == leaf)
}

/// The anchors of an X.509 group: its signing certificates, or the uploaded CAs its `caReferences` name (looked
/// up by `ca`, which answers the CA's certificate and whether it is verified).
pub fn group_anchors(attestation: &X509Attestation, ca: impl Fn(&str) -> Option<Anchor>) -> Vec<Anchor> {
    if let Some(refs) = &attestation.ca_references {
        return [&refs.primary, &refs.secondary].into_iter().flatten().filter_map(|name| ca(name)).collect();
    }
    certificates(attestation.signing_certificates.as_ref())
        .into_iter()
        .map(|der| Anchor { der, verified: true })
        .collect()
}

/// The refusal for a chain error, with its documented code.
pub fn refusal(error: &ChainError) -> RegistrationError {
    let code = match error {
        ChainError::Expired { .. } => ErrorCode::CertificateExpired,
        ChainError::NotYetValid { .. } => ErrorCode::CertificateNotYetValid,
        ChainError::UnknownCa { .. } => ErrorCode::UnknownCertificateAuthority,
        _ => ErrorCode::InvalidCertificateChain,
    };
    RegistrationError::Certificate { code, message: error.to_string() }
}

/// Groups with their anchors parsed and indexed once (per reading of the groups), for one path search per chain.
/// Dereferences to the groups.
#[derive(Debug, Default)]
pub struct GroupAnchors {
    groups: Vec<X509Group>,
    anchors: TrustAnchors,
    /// The (group, anchor) of each entry of `anchors`.
    owners: Vec<(usize, usize)>,
    /// A digest of all a path search depends on (whether anchors complete paths; each group's id and anchors, in
    /// order): two readings of the groups with the same fingerprint judge every chain alike.
    fingerprint: [u8; 32],
}

impl GroupAnchors {
    /// X.509 groups: a path ends at an anchor, through the certificates the device presents.
    pub fn new(groups: Vec<X509Group>) -> Self {
        Self::index(groups, false)
    }

    /// TPM groups: every manufacturer certificate any group lists may also complete a path (a group lists its root
    /// and intermediates alike, and the device sends only its EK certificate); trust still comes only from the
    /// anchor a group lists.
    pub fn completing_paths(groups: Vec<X509Group>) -> Self {
        Self::index(groups, true)
    }

    fn index(groups: Vec<X509Group>, completing_paths: bool) -> Self {
        let mut anchors = if completing_paths { TrustAnchors::new().completing_paths() } else { TrustAnchors::new() };
        let mut fingerprint = Sha256::new().chain_update([u8::from(completing_paths)]);
        let mut owners = Vec::new();
        for (g, group) in groups.iter().enumerate() {
            hash_prefixed(&mut fingerprint, group.group.id().as_bytes());
            fingerprint.update(group.anchors.len().to_be_bytes());
            for (a, anchor) in group.anchors.iter().enumerate() {
                anchors.push(&anchor.der, anchor.verified);
                owners.push((g, a));
                fingerprint.update([u8::from(anchor.verified)]);
                hash_prefixed(&mut fingerprint, &anchor.der);
            }
        }
        Self { groups, anchors, owners, fingerprint: fingerprint.finalize().into() }
    }

    /// What a search of `leaf` with `intermediates` for `purpose` among these anchors is remembered by.
    pub(crate) fn chain_key(&self, leaf: &[u8], intermediates: &[Vec<u8>], purpose: Purpose) -> [u8; 32] {
        let mut key =
            Sha256::new().chain_update(self.fingerprint).chain_update([u8::from(purpose == Purpose::Endorsement)]);
        for der in std::iter::once(leaf).chain(intermediates.iter().map(Vec::as_slice)) {
            hash_prefixed(&mut key, der);
        }
        key.finalize().into()
    }

    /// The group (index) and anchor of an entry of the anchors.
    fn owner(&self, entry: usize) -> Result<(usize, &Anchor), RegistrationError> {
        self.owners
            .get(entry)
            .and_then(|&(g, a)| Some((g, self.groups.get(g)?.anchors.get(a)?)))
            .ok_or_else(|| RegistrationError::internal("finding the anchor a chain chose", "no such entry"))
    }
}

/// Hashes `bytes` preceded by their length, so that concatenations hash unambiguously.
fn hash_prefixed(hash: &mut Sha256, bytes: &[u8]) {
    hash.update(bytes.len().to_be_bytes());
    hash.update(bytes);
}

impl Deref for GroupAnchors {
    type Target = [X509Group];

    fn deref(&self) -> &[X509Group] {
        &self.groups
    }
}

/// How many chain searches may run at once: one per CPU. Each is bounded (`zerotouch_pki::MAX_SIGNATURE_CHECKS`
/// signatures, RSA keys up to 4096 bits: a few milliseconds), so a device waits at most a few of them behind a
/// flood of hostile chains, and the requests waiting are bounded by the registration in-flight cap.
pub fn chain_searches_at_once() -> usize {
    std::thread::available_parallelism().map_or(2, usize::from)
}

/// The permits of the chain searches (the CPUs they use are the process's, so the bound is too).
static CHAIN_SEARCHES: LazyLock<Arc<Semaphore>> = LazyLock::new(|| Arc::new(Semaphore::new(chain_searches_at_once())));

/// The anchor entry whose CA sits closest to the leaf in a chain that verifies (`purpose`: device certificates, or
/// TPM EK certificates), with the window in which every certificate of its path is valid; else the most telling
/// refusal: a chain error met on the way to some anchor, an unverified CA, or an unknown CA. The search runs on the
/// blocking pool.
async fn search_anchor(
    leaf: &[u8],
    intermediates: &[Vec<u8>],
    groups: &Arc<GroupAnchors>,
    now: OffsetDateTime,
    purpose: Purpose,
) -> Result<(usize, Option<(OffsetDateTime, OffsetDateTime)>), RegistrationError> {
    let permit =
        Arc::clone(&CHAIN_SEARCHES).acquire_owned().await.map_err(internal("waiting for a chain search slot"))?;
    let (leaf, intermediates, shared) = (leaf.to_vec(), intermediates.to_vec(), Arc::clone(groups));
    let judgement = tokio::task::spawn_blocking(move || {
        let _permit = permit;
        let judgement = zerotouch_pki::choose_anchor(&leaf, &intermediates, &shared.anchors, now, purpose);
        let validity = judgement.outcome.as_ref().ok().and_then(|choice| choice.chain.validity());
        (judgement, validity)
    })
    .await
    .map_err(internal("searching a certificate path"));
    let (judgement, validity) = judgement?;
    tracing::debug!(signature_checks = judgement.signature_checks, "certificate path searched");
    match judgement.outcome {
        Ok(choice) => Ok((choice.entry, validity)),
        Err(Refusal::Chain(error)) => Err(refusal(&error)),
        Err(Refusal::NotVerified) => Err(RegistrationError::Certificate {
            code: ErrorCode::CertificateAuthorityNotVerified,
            message: "the device's chain leads to an uploaded certificate authority whose proof of possession is not \
                      done (POST /certificateAuthorities/{name}/verificationCode, then .../verify)"
                .into(),
        }),
        Err(Refusal::NoAnchor) => Err(RegistrationError::Certificate {
            code: ErrorCode::UnknownCertificateAuthority,
            message: "the device's certificate chain leads to no certificate authority of an enrollment".into(),
        }),
    }
}

impl RegistrationService {
    /// The group (index into `groups`) and anchor whose CA sits closest to the leaf in a chain that verifies
    /// (`purpose`: device certificates, or TPM EK certificates); else why none does ([`search_anchor`]). A chain that
    /// verified is remembered for a while (`Caches::verified_chain`), so that a device's next requests with it (its
    /// polls, or EST calls on one connection) skip the search while its certificates stay valid and the groups'
    /// anchors stay the same.
    pub(in super::super) async fn match_group<'a>(
        &self,
        leaf: &[u8],
        intermediates: &[Vec<u8>],
        groups: &'a Arc<GroupAnchors>,
        now: OffsetDateTime,
        purpose: Purpose,
    ) -> Result<(usize, &'a Anchor), RegistrationError> {
        let key = groups.chain_key(leaf, intermediates, purpose);
        let entry = match self.caches.verified_chain(&key, now) {
            Some(entry) => entry,
            None => {
                let (entry, validity) = search_anchor(leaf, intermediates, groups, now, purpose).await?;
                if let Some(validity) = validity {
                    self.caches.remember_chain(key, entry, validity);
                }
                entry
            }
        };
        groups.owner(entry)
    }

    /// The operational certificate of ours `leaf` is, if it is one; `presented` is what `zerotouch_pki::presented`
    /// read of it.
    pub(in super::super) async fn issued_certificate(
        &self,
        leaf: &[u8],
        presented: &Result<PresentedCertificate, CertificateError>,
    ) -> Result<Option<CertificateRecord>, RegistrationError> {
        // A certificate that does not parse is none of ours (the managed CA's all do); the attestation refuses it.
        let Ok(presented) = presented else { return Ok(None) };
        let thumbprint = zerotouch_pki::thumbprint_sha256_hex(leaf);
        match self.store.certificates().presented(&presented.serial_hex, &thumbprint).await {
            Ok(issued) => Ok(Some(issued)),
            Err(StoreError::NotFound) => Ok(None),
            Err(e) => Err(RegistrationError::internal("looking up a presented certificate", e)),
        }
    }

    /// X.509 attestation: an operational certificate of ours (the device renews), else the individual enrollment
    /// whose device certificate it is, else the group whose CA sits closest to the device certificate in its
    /// chain.
    ///
    /// `known`: what the caller already read about the leaf (EST), else it is read here (the certificate and the
    /// individual enrollment together, in one batch of the devices' reader).
    pub(in super::super) async fn authenticate_x509(
        &self,
        device: &DeviceRequest,
        action: Action,
        chain: &[Vec<u8>],
        known: Option<KnownCertificate>,
    ) -> Result<Authenticated, RegistrationError> {
        let Some((leaf, intermediates)) = chain.split_first() else {
            return Err(self.refuse(device, action, "no certificate").await);
        };
        if chain.len() > zerotouch_pki::chain::MAX_CHAIN_LENGTH {
            let error = RegistrationError::Certificate {
                code: ErrorCode::InvalidCertificateChain,
                message: format!(
                    "the device sent {} certificates; a chain has at most {}",
                    chain.len(),
                    zerotouch_pki::chain::MAX_CHAIN_LENGTH
                ),
            };
            return Err(self.refuse_certificate(device, action, "x509", error).await);
        }
        let now = OffsetDateTime::now_utc();
        // An operational certificate of ours names its device id, which may differ from the registration id; it is
        // bound to its registration by the certificate record instead.
        let key = device.registration_id.key();
        let mut known = match known {
            Some(known) => known,
            None => {
                let presented = zerotouch_pki::presented(leaf);
                let (issued, individual) = tokio::join!(
                    self.issued_certificate(leaf, &presented),
                    self.enrollment(EnrollmentKind::Individual, &key)
                );
                KnownCertificate { presented, issued: issued?, registration: None, individual: Some(individual?) }
            }
        };
        if let Some(issued) = known.issued.take() {
            return self.authenticate_operational(device, action, leaf, issued, known, now).await;
        }
        let cn = match known.presented.and_then(|presented| presented.subject_cn) {
            Ok(cn) => cn,
            Err(e) => return Err(self.refuse(device, action, &format!("x509: {e}")).await),
        };
        if !cn.eq_ignore_ascii_case(device.registration_id.as_str()) {
            let reason = format!("x509: the certificate's CN {cn:?} is not the registration id");
            return Err(self.refuse(device, action, &reason).await);
        }
        let certificate_info = shown_info(action, leaf);
        let reference = self.caches.reference(&self.store).await?;
        let individual = match known.individual {
            Some(read) => read,
            None => self.enrollment(EnrollmentKind::Individual, &key).await?,
        };
        if let Some(enrollment) = individual {
            let reason = match &enrollment.attestation {
                Attestation::X509(attestation) if individual_matches(attestation, leaf) => None,
                Attestation::X509(_) => {
                    Some("x509: the certificate is neither of the enrollment's device certificates")
                }
                Attestation::SymmetricKey(_) => Some("x509: the enrollment attests by symmetricKey"),
                Attestation::Tpm(_) => Some("x509: the enrollment attests by tpm"),
            };
            if let Some(reason) = reason {
                // Answered as an unenrolled id with this chain would be (the same group matching, the same
                // answer), so that neither the code nor the time tells which registration ids are enrolled.
                let error =
                    match self.match_group(leaf, intermediates, &reference.x509_groups, now, Purpose::ClientAuth).await
                    {
                        Ok(_) => RegistrationError::Unauthorized,
                        Err(unmatched) => unmatched,
                    };
                return Err(self.refuse_as(device, action, reason, error).await);
            }
            if let Err(e) = zerotouch_pki::check_certificate_validity(leaf, now) {
                return Err(self.refuse_certificate(device, action, "x509", refusal(&e)).await);
            }
            let x509 = X509RegistrationResult { certificate_info, ..Default::default() };
            return Ok(Authenticated { x509: Some(x509), ..Authenticated::by(Arc::new(enrollment)) });
        }
        match self.match_group(leaf, intermediates, &reference.x509_groups, now, Purpose::ClientAuth).await {
            Ok((index, anchor)) => {
                let group = Arc::clone(&reference.x509_groups[index].group);
                let x509 = X509RegistrationResult {
                    certificate_info,
                    enrollment_group_id: Some(group.id().to_owned()),
                    signing_certificate_info: shown_info(action, &anchor.der),
                };
                Ok(Authenticated { x509: Some(x509), ..Authenticated::by(group) })
            }
            Err(e) => Err(self.refuse_certificate(device, action, "x509", e).await),
        }
    }

    /// A device presenting an operational certificate we issued: it renews (or registers again) if the
    /// certificate is its own, its newest (neither revoked nor superseded), still valid (or expired within the
    /// renewal grace), and its issuing CA is still trusted. The enrollment is the one the device registered through
    /// (`known`: what else the caller read: the registration, the individual enrollment).
    async fn authenticate_operational(
        &self,
        device: &DeviceRequest,
        action: Action,
        leaf: &[u8],
        issued: CertificateRecord,
        known: KnownCertificate,
        now: OffsetDateTime,
    ) -> Result<Authenticated, RegistrationError> {
        let key = device.registration_id.key();
        let refused = |code: ErrorCode, message: String| RegistrationError::Certificate { code, message };
        if issued.registration_key != key {
            return Err(self.refuse(device, action, "x509: an operational certificate of another device").await);
        }
        let no_longer = match issued.status {
            CertificateStatus::Active => None,
            CertificateStatus::Revoked => Some(refused(
                ErrorCode::CertificateRevoked,
                format!("the operational certificate {} was revoked", issued.serial),
            )),
            // Only the newest certificate of a registration authenticates: an older one (a copy left behind, or
            // stolen) cannot mint fresh certificates while it lasts. It may still poll (read-only): that is how a
            // device that renewed by registering collects the certificate that superseded it.
            CertificateStatus::Superseded if action == Action::Poll => None,
            CertificateStatus::Superseded => Some(refused(
                ErrorCode::CertificateNotRenewable,
                format!("the operational certificate {} was superseded by a newer one", issued.serial),
            )),
        };
        if let Some(error) = no_longer {
            return Err(self.refuse_certificate(device, action, "x509", error).await);
        }
        let Some(ca) = self.pki.by_name(&issued.issuing_ca).await? else {
            let message = format!("the issuing CA {:?} of this certificate is no longer trusted", issued.issuing_ca);
            let error = refused(ErrorCode::UnknownCertificateAuthority, message);
            return Err(self.refuse_certificate(device, action, "x509", error).await);
        };
        let not_after = crate::pki::to_time(issued.not_after);
        let mut checked_at = now;
        if now > not_after {
            let grace = time::Duration::try_from(self.pki.renewal_grace()).unwrap_or(time::Duration::ZERO);
            if now - not_after > grace {
                let error = refused(
                    ErrorCode::CertificateExpired,
                    format!(
                        "the operational certificate {} expired at {not_after} (renewal grace: {} s)",
                        issued.serial,
                        grace.whole_seconds()
                    ),
                );
                return Err(self.refuse_certificate(device, action, "x509", error).await);
            }
            checked_at = not_after - time::Duration::SECOND;
        }
        if let Err(e) = zerotouch_pki::verify_chain(leaf, &[], ca.ca.certificate_der(), checked_at) {
            return Err(self.refuse_certificate(device, action, "x509", refusal(&e)).await);
        }
        let registration = match known.registration {
            Some(registration) => registration,
            None => match self.store.registrations().get(&key).await {
                Ok(registration) => registration,
                Err(StoreError::NotFound) => {
                    return Err(self.refuse(device, action, "x509: the device's registration was deleted").await);
                }
                Err(e) => return Err(internal("reading the device's registration")(e)),
            },
        };
        let enrollment = match (&registration.enrollment_group_key, known.individual) {
            (Some(group), _) => self.enrollment(EnrollmentKind::Group, group).await?,
            (None, Some(read)) => read,
            (None, None) => self.enrollment(EnrollmentKind::Individual, &key).await?,
        };
        let Some(enrollment) = enrollment else {
            return Err(self.refuse(device, action, "x509: the device's enrollment was deleted").await);
        };
        let x509 = X509RegistrationResult {
            certificate_info: shown_info(action, leaf),
            enrollment_group_id: enrollment.group_id().map(str::to_owned),
            signing_certificate_info: shown_info(action, ca.ca.certificate_der()),
        };
        let operational = Some(issued.serial);
        Ok(Authenticated { x509: Some(x509), operational, ..Authenticated::by(Arc::new(enrollment)) })
    }
}
