//! The managed CA inside the service: the issuing CAs of the database with their keys decrypted once, issuance
//! from device CSRs, CRLs and the trust bundle.
//!
//! The certificate logic itself is in the pure crate `zerotouch-pki`; this module only adds the database. Keys are
//! stored as PKCS#8 sealed under the data key (`crates/store/src/secrets.rs`), and opened in this process only, when a
//! CA's etag changes.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine;
use time::OffsetDateTime;
use zerotouch_pki::{CaKey, CheckedCsr, IssuedCertificate, IssuingCa, KeyAlgorithm, KeyPolicy, Profile};
use zerotouch_store::{Actor, CaPrivateKey, IssuingCaRecord, IssuingCaStatus, NewIssuingCa, Store, StoreError};
use zerotouch_wire::enrollment::CertificatePolicy;

use zerotouch_wire::field::FieldError;

use crate::internal::InternalError;

/// Everything the managed CA's operations can fail with. The admin API and the registration service each map it
/// to their own error.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    /// No issuing CA is active.
    #[error("no issuing CA is active")]
    NoIssuingCa,
    /// A device's CSR cannot be used; why.
    #[error("the CSR is refused: {0}")]
    CsrRefused(String),
    /// An issuing CA name is not valid; why.
    #[error("{0}")]
    InvalidName(String),
    /// A field of an admin request (common name, certificate chain) cannot be used.
    #[error("{0}")]
    InvalidField(#[from] FieldError),
    /// The named thing does not exist.
    #[error("{0} not found")]
    NotFound(String),
    /// A concurrent change got there first.
    #[error("{0}")]
    Conflict(String),
    /// `If-Match` does not match the current etag.
    #[error("{0}")]
    PreconditionFailed(String),
    /// Something broke inside.
    #[error(transparent)]
    Internal(#[from] InternalError),
}

impl PkiError {
    fn internal(doing: impl Into<String>, cause: impl Into<crate::internal::Cause>) -> Self {
        Self::Internal(InternalError::new(doing, cause))
    }

    /// Maps a store error about `resource` (e.g. `issuing CA "ca-1"`).
    pub fn from_store(err: StoreError, resource: &str) -> Self {
        match err {
            StoreError::NotFound => Self::NotFound(resource.to_owned()),
            StoreError::PreconditionFailed => {
                Self::PreconditionFailed(format!("If-Match does not match the current etag of {resource}"))
            }
            StoreError::Conflict(why) => Self::Conflict(format!("{resource}: {why}")),
            e @ (StoreError::UnsupportedUrl
            | StoreError::DeviceIdTaken
            | StoreError::NoLongerAuthorized(_)
            | StoreError::Corrupt(_)
            | StoreError::Unavailable(_)
            | StoreError::Database(_)) => Self::internal(format!("reading or writing {resource}"), e),
        }
    }
}

/// How long the list of issuing CAs read from the database is reused (a change made through this process is
/// seen at once; one made on another replica within this time).
const CA_LIST_TTL: Duration = Duration::from_secs(2);

/// CRLs are reissued at least this often, and say that the next one comes within [`CRL_VALIDITY`].
const CRL_REISSUE_AFTER: Duration = Duration::from_secs(24 * 3600);
const CRL_VALIDITY: Duration = Duration::from_secs(7 * 24 * 3600);

/// The name of the issuing CA a development install creates under its development root.
pub const DEVELOPMENT_CA: &str = "development";

/// An issuing CA with a certificate chain, ready to issue (when active) or to verify.
#[derive(Debug)]
pub struct LoadedCa {
    /// Its name.
    pub name: String,
    /// Whether it is the one that issues.
    pub active: bool,
    etag: String,
    /// The CA with its decrypted key.
    pub ca: IssuingCa,
    /// Its chain (issuing CA first, root last) as `issuedCertificateChain` carries it after the device's
    /// certificate: base64 DER.
    pub chain_base64: Vec<String>,
}

#[derive(Debug, Default)]
struct Loaded {
    read_at: Option<Instant>,
    generation: u64,
    cas: Arc<Vec<Arc<LoadedCa>>>,
}

/// The managed CA of a running service.
#[derive(Debug)]
pub struct Pki {
    store: Store,
    crl_url: String,
    renewal_grace: Duration,
    loaded: Mutex<Loaded>,
    /// Serializes reloads, so that concurrent requests do not decrypt the same keys twice.
    reload: tokio::sync::Mutex<()>,
}

fn now() -> OffsetDateTime {
    OffsetDateTime::now_utc()
}

/// A stored time as a certificate time.
pub fn to_time(at: chrono::DateTime<chrono::Utc>) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp(at.timestamp()).unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

/// A certificate time as the store keeps it.
pub fn to_chrono(at: OffsetDateTime) -> chrono::DateTime<chrono::Utc> {
    chrono::DateTime::from_timestamp(at.unix_timestamp(), 0).unwrap_or_default()
}

/// Checks an issuing CA name: 1-64 of lower-case letters, digits and `-`.
pub fn check_ca_name(name: &str) -> Result<(), PkiError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !name.starts_with('-');
    if ok {
        Ok(())
    } else {
        Err(PkiError::InvalidName(format!(
            "issuing CA name {name:?}: use 1-64 of a-z, 0-9 and '-', not starting with '-'"
        )))
    }
}

impl Pki {
    /// The managed CA over `store`; CRLs are named `{crl_url}/{issuingCA}` in issued certificates.
    pub fn new(store: Store, crl_url: String, renewal_grace: Duration) -> Self {
        Self {
            store,
            crl_url,
            renewal_grace,
            loaded: Mutex::new(Loaded::default()),
            reload: tokio::sync::Mutex::new(()),
        }
    }

    /// How long after expiry an operational certificate may still renew.
    pub fn renewal_grace(&self) -> Duration {
        self.renewal_grace
    }

    fn cached(&self) -> Option<Arc<Vec<Arc<LoadedCa>>>> {
        let generation = self.store.reference_changes();
        let loaded = self.loaded.lock().ok()?;
        let fresh = loaded.read_at.is_some_and(|at| at.elapsed() < CA_LIST_TTL) && loaded.generation == generation;
        fresh.then(|| loaded.cas.clone())
    }

    /// The issuing CAs that have a chain (active first), from the cache when it is fresh.
    pub async fn cas(&self) -> Result<Arc<Vec<Arc<LoadedCa>>>, PkiError> {
        if let Some(cas) = self.cached() {
            return Ok(cas);
        }
        let _reloading = self.reload.lock().await;
        if let Some(cas) = self.cached() {
            return Ok(cas);
        }
        let generation = self.store.reference_changes();
        let previous = self.loaded.lock().map(|l| l.cas.clone()).unwrap_or_default();
        let records =
            self.store.issuing_cas().list().await.map_err(|e| PkiError::internal("listing the issuing CAs", e))?;
        let mut cas = Vec::new();
        for record in records.into_iter().filter(|r| r.chain_pem.is_some() && r.status != IssuingCaStatus::Pending) {
            let active = record.status == IssuingCaStatus::Active;
            if let Some(same) = previous.iter().find(|c| c.name == record.name && c.etag == record.etag) {
                cas.push(same.clone());
                continue;
            }
            match self.load(&record).await {
                Ok(ca) => {
                    let chain_base64 = ca
                        .chain_der()
                        .iter()
                        .map(|der| base64::engine::general_purpose::STANDARD.encode(der))
                        .collect();
                    cas.push(Arc::new(LoadedCa { name: record.name, active, etag: record.etag, ca, chain_base64 }));
                }
                // One broken CA must not stop the others from verifying; the log says which and why.
                Err(e) => tracing::error!("issuing CA {:?} cannot be loaded: {e}", record.name),
            }
        }
        cas.sort_by_key(|c| !c.active);
        let cas = Arc::new(cas);
        if let Ok(mut loaded) = self.loaded.lock() {
            *loaded = Loaded { read_at: Some(Instant::now()), generation, cas: cas.clone() };
        }
        Ok(cas)
    }

    /// Opens the key of `record` and checks it against the chain (off the request threads: RSA key checks are
    /// slow).
    async fn load(&self, record: &IssuingCaRecord) -> anyhow::Result<IssuingCa> {
        let key = self.store.issuing_cas().key(&record.name).await?;
        let chain = record.chain_pem.clone().unwrap_or_default();
        tokio::task::spawn_blocking(move || -> anyhow::Result<IssuingCa> {
            let key = CaKey::from_pkcs8_der(zeroize::Zeroizing::new(key.as_bytes().to_vec()))?;
            // Validity is judged per use (an expired CA still verifies its certificates' renewals until then).
            let at = zerotouch_pki::certificates_from_pem(&chain)
                .ok()
                .and_then(|c| c.first().and_then(|der| zerotouch_pki::details(der).ok()))
                .map_or_else(now, |d| d.not_before + time::Duration::minutes(1));
            Ok(IssuingCa::from_pem_chain(key, &chain, at)?)
        })
        .await?
    }

    /// The active issuing CA.
    pub async fn active(&self) -> Result<Arc<LoadedCa>, PkiError> {
        self.cas().await?.iter().find(|c| c.active).cloned().ok_or(PkiError::NoIssuingCa)
    }

    /// The issuing CA called `name`, if it has a chain.
    pub async fn by_name(&self, name: &str) -> Result<Option<Arc<LoadedCa>>, PkiError> {
        Ok(self.cas().await?.iter().find(|c| c.name == name).cloned())
    }

    /// The loaded issuing CA that the certificate `der` names as its issuer (see
    /// [`IssuingCa::is_named_issuer_of`]), if any.
    pub async fn named_issuer_of(&self, der: &[u8]) -> Result<Option<Arc<LoadedCa>>, PkiError> {
        Ok(self.cas().await?.iter().find(|c| c.ca.is_named_issuer_of(der)).cloned())
    }

    /// Decodes and checks a device's CSR (base64 DER PKCS#10) against its registration id and the enrollment's
    /// policy.
    pub fn check_csr(csr: &str, registration_id: &str, policy: &CertificatePolicy) -> Result<CheckedCsr, PkiError> {
        let der = base64::engine::general_purpose::STANDARD.decode(csr.trim()).map_err(|_| {
            PkiError::CsrRefused("csr is not base64 (send base64 DER PKCS#10, without PEM headers)".into())
        })?;
        zerotouch_pki::check_csr(&der, registration_id, &KeyPolicy { allow_rsa: policy.allow_rsa })
            .map_err(|e| PkiError::CsrRefused(e.to_string()))
    }

    /// Issues a certificate for `device_id` from a checked CSR, under the active CA.
    pub async fn issue(
        &self,
        csr: &CheckedCsr,
        device_id: &str,
        policy: &CertificatePolicy,
    ) -> Result<(Arc<LoadedCa>, IssuedCertificate), PkiError> {
        let ca = self.active().await?;
        let profile =
            Profile::with_validity_seconds(format!("{}/{}", self.crl_url, ca.name), policy.lifetime_seconds())
                .map_err(|e| PkiError::internal("building the certificate profile", e))?;
        let issued = zerotouch_pki::issue(&ca.ca, csr, device_id, &profile, now()).map_err(|e| match e {
            // Registration and device ids take 128 characters; a certificate's CN only 64.
            zerotouch_pki::IssueError::InvalidDeviceId(chars) => PkiError::CsrRefused(format!(
                "the device id {device_id:?} has {chars} characters; a certificate's subject CN takes 1-64"
            )),
            e => PkiError::internal(format!("issuing under CA {:?}", ca.name), e),
        })?;
        Ok((ca, issued))
    }

    /// The CRL of issuing CA `name` (DER), reissued when a certificate was revoked since the last one, or when the
    /// last one is a day old.
    pub async fn crl(&self, name: &str) -> Result<Vec<u8>, PkiError> {
        for _ in 0..4 {
            let record = self
                .store
                .issuing_cas()
                .get(name)
                .await
                .map_err(|e| PkiError::from_store(e, &format!("issuing CA {name:?}")))?;
            let state = record.crl;
            let fresh = state
                .this_update
                .is_some_and(|at| (chrono::Utc::now() - at).to_std().unwrap_or_default() < CRL_REISSUE_AFTER);
            if let (Some(der), false, true) = (&state.der, state.stale, fresh) {
                return Ok(der.clone());
            }
            let ca = self
                .by_name(name)
                .await?
                .ok_or_else(|| PkiError::NotFound(format!("a certificate chain of issuing CA {name:?}")))?;
            let revoked = self
                .store
                .certificates()
                .revoked(name)
                .await
                .map_err(|e| PkiError::internal("reading revoked certificates", e))?;
            let entries = revoked
                .iter()
                .filter_map(|r| {
                    Some(zerotouch_pki::Revoked {
                        serial: zerotouch_pki::Serial::from_hex(&r.serial).ok()?,
                        revoked_at: to_time(r.revoked_at),
                        reason: zerotouch_pki::RevocationReason::parse(&r.reason)
                            .unwrap_or(zerotouch_pki::RevocationReason::Unspecified),
                    })
                })
                .collect::<Vec<_>>();
            let this_update = now();
            let next_update = this_update + CRL_VALIDITY;
            let number = u64::try_from(state.number).unwrap_or(0) + 1;
            let der = zerotouch_pki::crl(&ca.ca, &entries, number, this_update, next_update)
                .map_err(|e| PkiError::internal(format!("signing the CRL of {name:?}"), e))?;
            match self
                .store
                .issuing_cas()
                .save_crl(name, &state, der.clone(), to_chrono(this_update), to_chrono(next_update))
                .await
            {
                Ok(_) => return Ok(der),
                // Another request or replica reissued it first: serve theirs.
                Err(StoreError::Conflict(_)) => continue,
                Err(e) => return Err(PkiError::internal(format!("saving the CRL of {name:?}"), e)),
            }
        }
        Err(PkiError::Conflict(format!("the CRL of {name:?} is changing; retry")))
    }

    /// Reissues every CA's CRL when it is stale or a day old, every hour, until `shutdown` is cancelled (so a CRL
    /// is reissued at least daily even when nobody fetches it, and never outlives its nextUpdate).
    pub async fn refresh_crls(self: Arc<Self>, shutdown: tokio_util::sync::CancellationToken) {
        let mut tick = tokio::time::interval(Duration::from_secs(3600));
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                () = shutdown.cancelled() => return,
            }
            let cas = match self.cas().await {
                Ok(cas) => cas,
                Err(e) => {
                    tracing::warn!("cannot list issuing CAs to refresh their CRLs: {e}");
                    continue;
                }
            };
            for ca in cas.iter() {
                if let Err(e) = self.crl(&ca.name).await {
                    tracing::warn!("cannot refresh the CRL of issuing CA {:?}: {e}", ca.name);
                }
            }
        }
    }

    /// What devices and hubs trust: every certificate of every issuing CA's chain (roots and intermediates), PEM.
    pub async fn trust_bundle(&self) -> Result<String, PkiError> {
        let mut seen = Vec::new();
        for ca in self.cas().await?.iter() {
            for der in ca.ca.chain_der() {
                if !seen.contains(der) {
                    seen.push(der.clone());
                }
            }
        }
        Ok(zerotouch_pki::trust_bundle_pem(&seen))
    }

    /// Makes a new issuing CA: its key (stored encrypted) and the CSR an offline root is to sign (PEM).
    pub async fn create_issuing_ca(
        &self,
        name: &str,
        algorithm: KeyAlgorithm,
        common_name: &str,
        actor: &Actor,
    ) -> Result<IssuingCaRecord, PkiError> {
        check_ca_name(name)?;
        let common_name = common_name.to_owned();
        let (private_key, csr) = tokio::task::spawn_blocking(move || -> Result<(CaPrivateKey, String), PkiError> {
            let key = CaKey::generate(algorithm).map_err(|e| PkiError::internal("generating the CA key", e))?;
            let csr =
                zerotouch_pki::ca_csr(&key, &common_name).map_err(|e| FieldError::new("commonName", e.to_string()))?;
            Ok((CaPrivateKey::new(key.to_pkcs8_der()), csr))
        })
        .await
        .map_err(|e| PkiError::internal("creating the CA key", e))??;
        let new = NewIssuingCa {
            name: name.to_owned(),
            key_algorithm: algorithm.as_str().to_owned(),
            private_key,
            csr_pem: csr,
        };
        self.store
            .issuing_cas()
            .create(new, actor)
            .await
            .map_err(|e| PkiError::from_store(e, &format!("issuing CA {name:?}")))
    }

    /// Checks an uploaded chain against the CA's key and stores it (the CA becomes `ready`).
    pub async fn upload_chain(
        &self,
        name: &str,
        chain_pem: &str,
        precondition: &zerotouch_store::Precondition,
        actor: &Actor,
    ) -> Result<IssuingCaRecord, PkiError> {
        let resource = format!("issuing CA {name:?}");
        let private_key = self.store.issuing_cas().key(name).await.map_err(|e| PkiError::from_store(e, &resource))?;
        let chain = chain_pem.to_owned();
        let ca = tokio::task::spawn_blocking(move || -> Result<IssuingCa, PkiError> {
            let key = CaKey::from_pkcs8_der(zeroize::Zeroizing::new(private_key.as_bytes().to_vec()))
                .map_err(|e| PkiError::internal("reading the CA key", e))?;
            Ok(IssuingCa::from_pem_chain(key, &chain, now())
                .map_err(|e| FieldError::new("(certificate chain)", e.to_string()))?)
        })
        .await
        .map_err(|e| PkiError::internal("checking the certificate chain", e))??;
        let normalized = zerotouch_pki::trust_bundle_pem(ca.chain_der());
        self.store
            .issuing_cas()
            .upload_chain(name, normalized, to_chrono(ca.not_after()), precondition, actor)
            .await
            .map_err(|e| PkiError::from_store(e, &resource))
    }

    /// On a development install (a development root in the data dir and no issuing CA yet): creates the
    /// `development` issuing CA under that root and activates it.
    pub async fn ensure_development_ca(&self, root_cert_pem: &str, root_key_pem: &str) -> anyhow::Result<bool> {
        if !self.store.issuing_cas().list().await?.is_empty() {
            return Ok(false);
        }
        let actor = Actor { subject: "zerotouch:development-install".into(), role: "owner".into() };
        let root_cert_pem = root_cert_pem.to_owned();
        let root_key = zeroize::Zeroizing::new(root_key_pem.to_owned());
        let (private_key, csr, chain) =
            tokio::task::spawn_blocking(move || -> anyhow::Result<(CaPrivateKey, String, String)> {
                let root_der = zerotouch_pki::certificates_from_pem(&root_cert_pem)
                    .map_err(|e| anyhow::anyhow!("the development root certificate: {e}"))?
                    .into_iter()
                    .next()
                    .ok_or_else(|| anyhow::anyhow!("the development root certificate is empty"))?;
                let root = zerotouch_pki::RootCa::from_parts(CaKey::from_unencrypted_pem(&root_key)?, root_der, now())?;
                let ca = zerotouch_pki::issuing_ca_under(
                    &root,
                    KeyAlgorithm::EcdsaP256,
                    "zerotouch development issuing CA",
                    now(),
                    5 * 365,
                )?;
                let csr = zerotouch_pki::ca_csr(ca.key(), "zerotouch development issuing CA")?;
                let private_key = CaPrivateKey::new(ca.key().to_pkcs8_der());
                Ok((private_key, csr, zerotouch_pki::trust_bundle_pem(ca.chain_der())))
            })
            .await??;
        let new = NewIssuingCa {
            name: DEVELOPMENT_CA.to_owned(),
            key_algorithm: KeyAlgorithm::EcdsaP256.as_str().to_owned(),
            private_key,
            csr_pem: csr,
        };
        match self.store.issuing_cas().create(new, &actor).await {
            Ok(_) => {}
            // Another replica made it at the same moment.
            Err(StoreError::Conflict(_)) => return Ok(false),
            Err(e) => return Err(e.into()),
        }
        let not_after = zerotouch_pki::certificates_from_pem(&chain)
            .map_err(|e| anyhow::anyhow!("the development issuing CA's chain: {e}"))?
            .first()
            .map(|der| zerotouch_pki::details(der).map(|d| to_chrono(d.not_after)))
            .transpose()?
            .unwrap_or_default();
        let none = zerotouch_store::Precondition::None;
        self.store.issuing_cas().upload_chain(DEVELOPMENT_CA, chain, not_after, &none, &actor).await?;
        self.store.issuing_cas().activate(DEVELOPMENT_CA, &none, &actor).await?;
        Ok(true)
    }
}
