//! Service SAS: `Authorization: SharedAccessSignature sr=...&sig=...&se=...&skn=...` on the admin API, signed with
//! a shared access policy's key, verified as Azure DPS verifies it (`docs/protocol/service-api.md` §1).
//!
//! The token is parsed and checked by the one SAS mechanism of `crates/attest/src/sas.rs` (the devices' too): the
//! MAC over `sr` as sent and `se`, compared in constant time with both of the policy's keys; `sr` must name one of
//! this service's host names (`--hostname`), with or without a port, encoded or not; `se` must lie between now
//! (less the clock skew) and `--service-sas-max-lifetime` ahead; `skn` names the policy. Every refusal reads the
//! same to the client (401); the reason is logged.

use std::time::Duration;

use zerotouch_attest::sas;
use zerotouch_store::{Actor, SharedAccessPolicyReader, SharedAccessPolicyRecord, StoreError};
use zerotouch_wire::policy::{AccessRights, PolicyName};

/// How service SAS tokens are checked.
#[derive(Debug, Clone)]
pub struct ServiceSas {
    /// Whether policies authenticate at all (`--no-shared-access-policies` turns them off).
    pub enabled: bool,
    /// The names `sr` may carry: the service's `--hostname`s.
    pub host_names: Vec<String>,
    /// How far in the past `se` may be.
    pub clock_skew: Duration,
    /// How far ahead `se` may be (besides the clock skew).
    pub max_lifetime: Duration,
}

/// Why a service SAS was refused (logged; the client sees one "unauthorized").
#[derive(Debug, thiserror::Error)]
pub enum ServiceSasError {
    /// `--no-shared-access-policies`.
    #[error("shared access policies are turned off (--no-shared-access-policies)")]
    Disabled,
    /// `skn` is missing or is not a policy name.
    #[error("the token names no policy (skn)")]
    NoPolicy,
    /// No policy has the name.
    #[error("no shared access policy {0:?}")]
    UnknownPolicy(String),
    /// Parsing or verification failed.
    #[error("policy {policy:?}: {error}")]
    Refused {
        /// The policy named.
        policy: String,
        /// Why.
        error: sas::SasError,
    },
    /// The token does not parse.
    #[error("{0}")]
    Malformed(sas::SasError),
    /// The store failed while reading the policy (not the caller's fault: an internal error).
    #[error("reading the shared access policy: {0}")]
    Store(#[from] StoreError),
}

impl ServiceSas {
    /// Verifies the `Authorization` value `header` and returns the policy whose key signed it.
    pub async fn verify(
        &self,
        policies: SharedAccessPolicyReader<'_>,
        header: &str,
    ) -> Result<SharedAccessPolicyRecord, ServiceSasError> {
        if !self.enabled {
            return Err(ServiceSasError::Disabled);
        }
        let token = sas::parse(header).map_err(ServiceSasError::Malformed)?;
        let named = token.key_name.as_deref().ok_or(ServiceSasError::NoPolicy)?;
        let name = PolicyName::try_from(named).map_err(|_| ServiceSasError::NoPolicy)?;
        let policy = match policies.get(&name.key()).await {
            Ok(policy) => policy,
            Err(StoreError::NotFound) => return Err(ServiceSasError::UnknownPolicy(name.as_str().to_owned())),
            Err(e) => return Err(e.into()),
        };
        let expected = sas::Expectation {
            audience: sas::Audience::Service { host_names: &self.host_names, policy: &policy.name },
            now: chrono::Utc::now().timestamp().try_into().unwrap_or(0),
            skew: self.clock_skew.as_secs(),
            max_lifetime: self.max_lifetime.as_secs(),
        };
        let keys = [policy.primary_key.expose_bytes(), policy.secondary_key.expose_bytes()];
        match sas::verify(&token, &expected, &keys) {
            Ok(_) => Ok(policy),
            Err(error) => Err(ServiceSasError::Refused { policy: policy.name.clone(), error }),
        }
    }
}

/// The actor a policy's caller is audited as: the subject names the policy, the role lists its rights.
pub fn actor(policy: &str, rights: AccessRights) -> Actor {
    Actor { subject: format!("sharedAccessPolicy:{policy}"), role: rights.to_string() }
}
