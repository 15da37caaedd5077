//! Authorization as a capability that hands out the part of the store it allows (lldap's `get_admin_handler`): a
//! handler that changes enrollments takes a [`Caller<EnrollmentWrite>`], which only [`Caller::authorize`] creates
//! (called by the admin API's extractor), after the credential verified and the role or the policy's rights
//! sufficed, and which alone gives the [`EnrollmentWriter`] (the writes, audited as the caller). Every caller gives
//! read-only views ([`Caller::enrollments`], ...). The admin App registers the store only as an [`AdminStore`],
//! which nothing but a `Caller` can open, so a handler without a `Caller` cannot reach the store at all, and one
//! with a `Caller<Read>` cannot write.
//!
//! Two credentials make a caller: a JWT (the default and recommended one), whose role must include the
//! permission's [`Permission::NEEDS`]; and a `SharedAccessSignature` signed with a shared access policy's key
//! ([`super::service_sas`]), whose rights must include one of the permission's [`Permission::GRANTED_BY`]. The
//! mapping of Azure's rights onto permissions is the table in `docs/architecture.md` ("Shared access policies").

use std::marker::PhantomData;

use actix_web::web;
use zerotouch_store::{
    Actor, AuditLog, BulkCall, CertificateAuthorityInput, CertificateAuthorityReader, CertificateAuthorityRecord,
    CertificateReader, CertificateRecord, EnrollmentReader, EnrollmentRecord, HubInput, HubReader, HubRecord,
    IssuingCaReader, IssuingCaRecord, Precondition, RegistrationReader, SharedAccessPolicyReader,
    SharedAccessPolicyRecord, Store, StoreError, TpmBindingReader,
};
use zerotouch_wire::bulk::BulkMode;
use zerotouch_wire::enrollment::{EnrollmentKind, NormalizedEnrollment};
use zerotouch_wire::policy::{AccessRight, AccessRights, NormalizedPolicy};

use super::service_sas::{ServiceSas, ServiceSasError};
use super::{Role, TokenError, Verifier};

/// A permission a route needs; see the implementors.
pub trait Permission {
    /// The least role that has it.
    const NEEDS: Role;
    /// The rights of a shared access policy that grant it (any one of them); [`AccessRights::NONE`]: no policy
    /// does, only a JWT.
    const GRANTED_BY: AccessRights;
    /// What it allows, for the 403 message.
    const WHAT: &'static str;
}

/// Read hubs, the managed CA, certificate authorities and the audit log (and everything else a reader reads).
#[derive(Debug)]
pub struct Read;
impl Permission for Read {
    const NEEDS: Role = Role::Reader;
    const GRANTED_BY: AccessRights = AccessRights::of(&[AccessRight::ServiceConfig]);
    const WHAT: &'static str = "read the service's configuration";
}

/// Read enrollments and enrollment groups.
#[derive(Debug)]
pub struct ReadEnrollments;
impl Permission for ReadEnrollments {
    const NEEDS: Role = Role::Reader;
    const GRANTED_BY: AccessRights = AccessRights::of(&[AccessRight::EnrollmentRead]);
    const WHAT: &'static str = "read enrollments and enrollment groups";
}

/// Read device registration states (and TPM bindings).
#[derive(Debug)]
pub struct ReadRegistrations;
impl Permission for ReadRegistrations {
    const NEEDS: Role = Role::Reader;
    const GRANTED_BY: AccessRights = AccessRights::of(&[AccessRight::RegistrationStatusRead]);
    const WHAT: &'static str = "read registration states";
}

/// Change enrollments and enrollment groups, and read enrollment keys.
#[derive(Debug)]
pub struct EnrollmentWrite;
impl Permission for EnrollmentWrite {
    const NEEDS: Role = Role::Operator;
    const GRANTED_BY: AccessRights = AccessRights::of(&[AccessRight::EnrollmentWrite]);
    const WHAT: &'static str = "change enrollments and enrollment groups";
}

/// Delete registration states, revoke their certificates, release TPM bindings.
#[derive(Debug)]
pub struct RegistrationWrite;
impl Permission for RegistrationWrite {
    const NEEDS: Role = Role::Operator;
    const GRANTED_BY: AccessRights = AccessRights::of(&[AccessRight::RegistrationStatusWrite]);
    const WHAT: &'static str = "delete registrations and revoke their certificates";
}

/// Change hubs.
#[derive(Debug)]
pub struct HubWrite;
impl Permission for HubWrite {
    const NEEDS: Role = Role::Owner;
    const GRANTED_BY: AccessRights = AccessRights::of(&[AccessRight::ServiceConfig]);
    const WHAT: &'static str = "change hubs";
}

/// Manage the PKI: issuing CAs (create, upload chains, activate, delete) and uploaded certificate authorities.
#[derive(Debug)]
pub struct PkiWrite;
impl Permission for PkiWrite {
    const NEEDS: Role = Role::Owner;
    const GRANTED_BY: AccessRights = AccessRights::of(&[AccessRight::ServiceConfig]);
    const WHAT: &'static str = "manage issuing CAs and certificate authorities";
}

/// Manage shared access policies and read their keys: owners with a JWT only, so that no signature made with a
/// policy's key can mint or widen another.
#[derive(Debug)]
pub struct PolicyWrite;
impl Permission for PolicyWrite {
    const NEEDS: Role = Role::Owner;
    const GRANTED_BY: AccessRights = AccessRights::NONE;
    const WHAT: &'static str = "manage shared access policies";
}

/// The store, registered for the admin App as this type so that only [`Caller`] can open it: it has no public
/// way in, so a handler that takes it gains nothing.
pub struct AdminStore(Store);

impl AdminStore {
    /// Wraps the store for the admin App.
    pub fn new(store: Store) -> Self {
        Self(store)
    }
}

impl std::fmt::Debug for AdminStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AdminStore(..)")
    }
}

/// A caller whose credential verified and whose role (or policy) includes `P`: the reads every role has, and the
/// writes `P` allows.
#[derive(Debug)]
pub struct Caller<P> {
    actor: Actor,
    store: web::Data<AdminStore>,
    _permission: PhantomData<P>,
}

impl<P> Caller<P> {
    fn store(&self) -> &Store {
        &self.store.0
    }

    /// Enrollments and enrollment groups, read-only.
    pub fn enrollments(&self) -> EnrollmentReader<'_> {
        self.store().enrollments().reader()
    }

    /// Registration states, read-only.
    pub fn registrations(&self) -> RegistrationReader<'_> {
        self.store().registrations().reader()
    }

    /// The linked hubs, read-only.
    pub fn hubs(&self) -> HubReader<'_> {
        self.store().hubs().reader()
    }

    /// The certificates issued, read-only.
    pub fn certificates(&self) -> CertificateReader<'_> {
        self.store().certificates().reader()
    }

    /// The issuing CAs, read-only and without their keys.
    pub fn issuing_cas(&self) -> IssuingCaReader<'_> {
        self.store().issuing_cas().reader()
    }

    /// Uploaded certificate authorities, read-only.
    pub fn certificate_authorities(&self) -> CertificateAuthorityReader<'_> {
        self.store().certificate_authorities().reader()
    }

    /// The TPM bindings of TPM enrollment groups, read-only.
    pub fn tpm_bindings(&self) -> TpmBindingReader<'_> {
        self.store().tpm_bindings().reader()
    }

    /// The audit log (which only reads).
    pub fn audit(&self) -> AuditLog<'_> {
        self.store().audit()
    }

    fn writer(&self) -> Writer<'_> {
        Writer { store: self.store(), actor: &self.actor }
    }
}

impl Caller<EnrollmentWrite> {
    /// Changes to enrollments and enrollment groups, audited as this caller.
    pub fn enrollment_writer(&self) -> EnrollmentWriter<'_> {
        EnrollmentWriter(self.writer())
    }
}

impl Caller<PolicyWrite> {
    /// Shared access policies, keys included.
    pub fn shared_access_policies(&self) -> SharedAccessPolicyReader<'_> {
        self.store().shared_access_policies().reader()
    }

    /// Changes to shared access policies, audited as this caller.
    pub fn policy_writer(&self) -> PolicyWriter<'_> {
        PolicyWriter(self.writer())
    }
}

impl Caller<RegistrationWrite> {
    /// Changes to registrations (deletion, revocation), audited as this caller.
    pub fn registration_writer(&self) -> RegistrationWriter<'_> {
        RegistrationWriter(self.writer())
    }
}

impl Caller<HubWrite> {
    /// Changes to hubs, audited as this caller.
    pub fn hub_writer(&self) -> HubWriter<'_> {
        HubWriter(self.writer())
    }
}

impl Caller<PkiWrite> {
    /// Changes to issuing CAs made directly in the store, audited as this caller.
    pub fn issuing_ca_writer(&self) -> IssuingCaWriter<'_> {
        IssuingCaWriter(self.writer())
    }

    /// Changes to uploaded certificate authorities, audited as this caller.
    pub fn certificate_authority_writer(&self) -> CertificateAuthorityWriter<'_> {
        CertificateAuthorityWriter(self.writer())
    }

    /// Who acts, for the managed CA's writes ([`crate::pki::Pki`] takes it): only a caller allowed to manage the
    /// PKI has one to give.
    pub fn actor(&self) -> &Actor {
        &self.actor
    }
}

/// The store and the actor a write is audited as.
#[derive(Debug, Clone, Copy)]
struct Writer<'a> {
    store: &'a Store,
    actor: &'a Actor,
}

/// Changes to enrollments and enrollment groups (see [`zerotouch_store::Enrollments`]), as one caller.
#[derive(Debug, Clone, Copy)]
pub struct EnrollmentWriter<'a>(Writer<'a>);

impl<'a> EnrollmentWriter<'a> {
    /// Creates or replaces an enrollment under `precondition` ([`zerotouch_store::Enrollments::put`]).
    pub async fn put(
        self,
        kind: EnrollmentKind,
        enrollment: NormalizedEnrollment,
        precondition: &Precondition,
    ) -> Result<(EnrollmentRecord, bool), StoreError> {
        self.0.store.enrollments().put(kind, enrollment, precondition, self.0.actor).await
    }

    /// Deletes an enrollment under `precondition` ([`zerotouch_store::Enrollments::delete`]).
    pub async fn delete(self, kind: EnrollmentKind, key: &str, precondition: &Precondition) -> Result<(), StoreError> {
        self.0.store.enrollments().delete(kind, key, precondition, self.0.actor).await
    }

    /// Begins a bulk call ([`zerotouch_store::Enrollments::begin_bulk`]).
    pub async fn begin_bulk(self, kind: EnrollmentKind, mode: BulkMode) -> Result<BulkCall<'a>, StoreError> {
        self.0.store.enrollments().begin_bulk(kind, mode, self.0.actor).await
    }

    /// Records that the caller read an enrollment's keys ([`zerotouch_store::Enrollments::audit_key_read`]).
    pub async fn audit_key_read(self, kind: EnrollmentKind, record: &EnrollmentRecord) -> Result<(), StoreError> {
        self.0.store.enrollments().audit_key_read(kind, record, self.0.actor).await
    }
}

/// Changes to registrations, as one caller.
#[derive(Debug, Clone, Copy)]
pub struct RegistrationWriter<'a>(Writer<'a>);

impl RegistrationWriter<'_> {
    /// Deletes a registration under `precondition`, revoking its certificates
    /// ([`zerotouch_store::Registrations::delete`]).
    pub async fn delete(self, key: &str, precondition: &Precondition) -> Result<(), StoreError> {
        self.0.store.registrations().delete(key, precondition, self.0.actor).await
    }

    /// Revokes the registration's certificates and gives it a new etag, which it returns
    /// ([`zerotouch_store::Certificates::revoke_of_registration`]).
    pub async fn revoke_certificates(
        self,
        key: &str,
        reason: &str,
    ) -> Result<(Vec<CertificateRecord>, String), StoreError> {
        self.0.store.certificates().revoke_of_registration(key, reason, self.0.actor).await
    }

    /// Releases the TPM binding of a registration id ([`zerotouch_store::TpmBindings::release`]).
    pub async fn release_tpm_binding(self, key: &str) -> Result<(), StoreError> {
        self.0.store.tpm_bindings().release(key, self.0.actor).await
    }
}

/// Changes to shared access policies, as one caller.
#[derive(Debug, Clone, Copy)]
pub struct PolicyWriter<'a>(Writer<'a>);

impl PolicyWriter<'_> {
    /// Creates or replaces a policy under `precondition` ([`zerotouch_store::SharedAccessPolicies::put`]).
    pub async fn put(
        self,
        policy: NormalizedPolicy,
        precondition: &Precondition,
    ) -> Result<(SharedAccessPolicyRecord, bool), StoreError> {
        self.0.store.shared_access_policies().put(policy, precondition, self.0.actor).await
    }

    /// Deletes a policy under `precondition` ([`zerotouch_store::SharedAccessPolicies::delete`]).
    pub async fn delete(self, key: &str, precondition: &Precondition) -> Result<(), StoreError> {
        self.0.store.shared_access_policies().delete(key, precondition, self.0.actor).await
    }

    /// Records that the caller read a policy's keys.
    pub async fn audit_key_read(self, record: &SharedAccessPolicyRecord) -> Result<(), StoreError> {
        self.0.store.shared_access_policies().audit_key_read(record, self.0.actor).await
    }
}

/// Changes to hubs, as one caller.
#[derive(Debug, Clone, Copy)]
pub struct HubWriter<'a>(Writer<'a>);

impl HubWriter<'_> {
    /// Creates or replaces a hub under `precondition` ([`zerotouch_store::Hubs::put`]).
    pub async fn put(self, input: HubInput, precondition: &Precondition) -> Result<(HubRecord, bool), StoreError> {
        self.0.store.hubs().put(input, precondition, self.0.actor).await
    }

    /// Deletes a hub under `precondition` ([`zerotouch_store::Hubs::delete`]).
    pub async fn delete(self, host_name: &str, precondition: &Precondition) -> Result<(), StoreError> {
        self.0.store.hubs().delete(host_name, precondition, self.0.actor).await
    }
}

/// Changes to issuing CAs that need no key (creating one and uploading its chain go through [`crate::pki::Pki`]),
/// as one caller.
#[derive(Debug, Clone, Copy)]
pub struct IssuingCaWriter<'a>(Writer<'a>);

impl IssuingCaWriter<'_> {
    /// Makes an issuing CA the active one ([`zerotouch_store::IssuingCas::activate`]).
    pub async fn activate(self, name: &str, precondition: &Precondition) -> Result<IssuingCaRecord, StoreError> {
        self.0.store.issuing_cas().activate(name, precondition, self.0.actor).await
    }

    /// Deletes an issuing CA that is not active ([`zerotouch_store::IssuingCas::delete`]).
    pub async fn delete(self, name: &str, precondition: &Precondition) -> Result<(), StoreError> {
        self.0.store.issuing_cas().delete(name, precondition, self.0.actor).await
    }
}

/// Changes to uploaded certificate authorities, as one caller.
#[derive(Debug, Clone, Copy)]
pub struct CertificateAuthorityWriter<'a>(Writer<'a>);

impl CertificateAuthorityWriter<'_> {
    /// Creates or replaces a customer CA ([`zerotouch_store::CertificateAuthorities::put`]).
    pub async fn put(
        self,
        input: CertificateAuthorityInput,
        precondition: &Precondition,
    ) -> Result<(CertificateAuthorityRecord, bool), StoreError> {
        self.0.store.certificate_authorities().put(input, precondition, self.0.actor).await
    }

    /// Deletes a customer CA ([`zerotouch_store::CertificateAuthorities::delete`]).
    pub async fn delete(self, key: &str, precondition: &Precondition) -> Result<(), StoreError> {
        self.0.store.certificate_authorities().delete(key, precondition, self.0.actor).await
    }

    /// Issues a verification code ([`zerotouch_store::CertificateAuthorities::set_verification_code`]).
    pub async fn set_verification_code(
        self,
        key: &str,
        code: &str,
        expires_at: chrono::DateTime<chrono::Utc>,
        precondition: &Precondition,
    ) -> Result<CertificateAuthorityRecord, StoreError> {
        self.0
            .store
            .certificate_authorities()
            .set_verification_code(key, code, expires_at, precondition, self.0.actor)
            .await
    }

    /// Marks a customer CA verified by `code` ([`zerotouch_store::CertificateAuthorities::mark_verified`]).
    pub async fn mark_verified(self, key: &str, code: &str) -> Result<CertificateAuthorityRecord, StoreError> {
        self.0.store.certificate_authorities().mark_verified(key, code, self.0.actor).await
    }
}

/// Why a caller is refused (the HTTP transport maps it, `http::error`).
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// No credential, or a bearer token that fails verification.
    #[error("unauthenticated: {0}")]
    Unauthenticated(#[from] TokenError),
    /// A `SharedAccessSignature` that fails verification (unknown policy, wrong key, expired, another host,
    /// policies turned off, ...).
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
    /// The policy that signed the caller's token lacks every right that grants the permission.
    #[error("shared access policy {policy} may not {what}")]
    PolicyForbidden {
        /// The policy's name.
        policy: String,
        /// Its rights.
        rights: AccessRights,
        /// The rights that would do (any one of them; none: only a JWT).
        needs: AccessRights,
        /// What was attempted.
        what: &'static str,
    },
    /// The store failed while finding the policy.
    #[error("reading the shared access policy: {0}")]
    Store(#[from] StoreError),
}

/// The scheme of an `Authorization` header's credential.
enum Credential<'a> {
    Bearer(&'a str),
    SharedAccessSignature(&'a str),
}

fn credential(authorization: Option<&str>) -> Result<Credential<'_>, TokenError> {
    let value = authorization.map(str::trim).ok_or(TokenError::Missing)?;
    if let Some(token) = value.strip_prefix("Bearer ").or_else(|| value.strip_prefix("bearer ")) {
        return Ok(Credential::Bearer(token.trim()));
    }
    if value.starts_with("SharedAccessSignature ") {
        return Ok(Credential::SharedAccessSignature(value));
    }
    Err(TokenError::Missing)
}

impl<P: Permission> Caller<P> {
    /// The only way to a caller: the `Authorization` header's bearer token verifies and its role includes `P`, or
    /// its `SharedAccessSignature` verifies with the key of a policy one of whose rights grants `P`; each use of a
    /// policy is audited with `request` (method and path). The admin API's extractor (`http::admin`) calls it with
    /// the App's verifiers and store.
    pub async fn authorize(
        verifier: &Verifier,
        service_sas: &ServiceSas,
        store: &web::Data<AdminStore>,
        authorization: Option<&str>,
        request: &str,
    ) -> Result<Self, AuthError> {
        let actor = match credential(authorization)? {
            Credential::Bearer(token) => {
                let (subject, role) = verifier.verify(token)?;
                match role {
                    Some(role) if role >= P::NEEDS => Actor { subject, role: role.as_str().to_owned() },
                    role => {
                        return Err(AuthError::Forbidden {
                            role: role.map_or("none", Role::as_str),
                            needs: P::NEEDS,
                            what: P::WHAT,
                        });
                    }
                }
            }
            Credential::SharedAccessSignature(header) => {
                let policy = service_sas.verify(store.0.shared_access_policies().reader(), header).await.map_err(
                    |e| match e {
                        ServiceSasError::Store(e) => AuthError::Store(e),
                        refused => AuthError::BadSignature(refused),
                    },
                )?;
                if !policy.rights.intersects(P::GRANTED_BY) {
                    return Err(AuthError::PolicyForbidden {
                        policy: policy.name,
                        rights: policy.rights,
                        needs: P::GRANTED_BY,
                        what: P::WHAT,
                    });
                }
                let actor = super::service_sas::actor(&policy.name, policy.rights);
                store.0.audit().record_use(&actor, "sharedAccessPolicy", policy.name.as_str(), request).await?;
                actor
            }
        };
        Ok(Caller { actor, store: store.clone(), _permission: PhantomData })
    }
}
