//! Admin authentication: bearer JWTs, verified against pinned keys, mapped to a role; `SharedAccessSignature`
//! tokens of shared access policies ([`service_sas`]); and authorization as a capability ([`caller`]).
//!
//! Every key is pinned to one algorithm (from the JWK's `alg`, else from its key type): a token whose header names
//! another algorithm is refused, so there is no `none`, and no HS256 token "signed" with a public RSA key.
//! `exp`, `iss` and `aud` are required, with at most 60 s of clock skew.

use std::collections::HashSet;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use anyhow::Context;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, JwkSet, KeyAlgorithm, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde_json::Value;

use crate::config::{AuthConfig, DEV_ISSUER, JwksSource, TokenIssuer};

pub mod caller;
pub mod service_sas;

pub use caller::{
    AdminStore, AuthError, Caller, CertificateAuthorityWriter, EnrollmentWrite, EnrollmentWriter, HubWrite, HubWriter,
    IssuingCaWriter, Permission, PkiWrite, PolicyWrite, PolicyWriter, Read, ReadEnrollments, ReadRegistrations,
    RegistrationWrite, RegistrationWriter,
};
pub use service_sas::ServiceSas;

/// Clock skew allowed on `exp` and `nbf`.
pub const LEEWAY_SECS: u64 = 60;

/// What a caller may do; each role includes the ones before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    /// GET and query.
    Reader,
    /// Also: change enrollments, groups and registrations; read enrollment keys.
    Operator,
    /// Everything, hubs too.
    Owner,
}

impl Role {
    /// The role's name in tokens and the audit log.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Reader => "reader",
            Self::Operator => "operator",
            Self::Owner => "owner",
        }
    }

    fn parse(text: &str) -> Option<Self> {
        match text {
            "reader" => Some(Self::Reader),
            "operator" => Some(Self::Operator),
            "owner" => Some(Self::Owner),
            _ => None,
        }
    }
}

/// Why a token was refused (logged, never sent: the client sees one "unauthorized").
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// No `Authorization: Bearer` header.
    #[error("no bearer token")]
    Missing,
    /// No key is pinned to the token's kid and algorithm.
    #[error("no key for kid {kid:?} and alg {alg:?}")]
    NoKey {
        /// The token's kid.
        kid: Option<String>,
        /// The token's algorithm.
        alg: Algorithm,
    },
    /// Signature, expiry, issuer, audience or format.
    #[error("invalid token: {0}")]
    Invalid(#[from] jsonwebtoken::errors::Error),
    /// The token has no `sub`.
    #[error("the token has no sub claim")]
    NoSubject,
}

struct PinnedKey {
    kid: Option<String>,
    algorithm: Algorithm,
    key: DecodingKey,
}

/// Verifies admin tokens.
pub struct Verifier {
    keys: RwLock<Arc<Vec<PinnedKey>>>,
    issuer: String,
    audience: String,
    role_claim: Vec<String>,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier").field("issuer", &self.issuer).field("audience", &self.audience).finish()
    }
}

/// The algorithm a JWK is pinned to, or why it is not usable for verification.
fn pinned_algorithm(jwk: &Jwk) -> Result<Algorithm, String> {
    if matches!(jwk.common.public_key_use, Some(PublicKeyUse::Encryption)) {
        return Err("an encryption key".into());
    }
    let from_type = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => Algorithm::RS256,
        AlgorithmParameters::EllipticCurve(p) => match p.curve {
            EllipticCurve::P256 => Algorithm::ES256,
            EllipticCurve::P384 => Algorithm::ES384,
            _ => return Err("an unsupported curve".into()),
        },
        AlgorithmParameters::OctetKeyPair(p) if p.curve == EllipticCurve::Ed25519 => Algorithm::EdDSA,
        AlgorithmParameters::OctetKey(_) => return Err("a symmetric key (HS* is not accepted)".into()),
        _ => return Err("an unsupported key type".into()),
    };
    let Some(declared) = jwk.common.key_algorithm else { return Ok(from_type) };
    let declared = match declared {
        KeyAlgorithm::RS256 => Algorithm::RS256,
        KeyAlgorithm::RS384 => Algorithm::RS384,
        KeyAlgorithm::RS512 => Algorithm::RS512,
        KeyAlgorithm::PS256 => Algorithm::PS256,
        KeyAlgorithm::PS384 => Algorithm::PS384,
        KeyAlgorithm::PS512 => Algorithm::PS512,
        KeyAlgorithm::ES256 => Algorithm::ES256,
        KeyAlgorithm::ES384 => Algorithm::ES384,
        KeyAlgorithm::EdDSA => Algorithm::EdDSA,
        other => return Err(format!("alg {other:?}, which is not accepted")),
    };
    let family_matches = matches!(
        (declared, from_type),
        (
            Algorithm::RS256
                | Algorithm::RS384
                | Algorithm::RS512
                | Algorithm::PS256
                | Algorithm::PS384
                | Algorithm::PS512,
            Algorithm::RS256
        ) | (Algorithm::ES256, Algorithm::ES256)
            | (Algorithm::ES384, Algorithm::ES384)
            | (Algorithm::EdDSA, Algorithm::EdDSA)
    );
    if family_matches { Ok(declared) } else { Err(format!("alg {declared:?} that does not fit its key type")) }
}

fn pin_jwks(set: &JwkSet) -> Vec<PinnedKey> {
    let mut keys = Vec::new();
    for jwk in &set.keys {
        let kid = jwk.common.key_id.clone();
        match pinned_algorithm(jwk)
            .and_then(|algorithm| DecodingKey::from_jwk(jwk).map(|key| (algorithm, key)).map_err(|e| e.to_string()))
        {
            Ok((algorithm, key)) => keys.push(PinnedKey { kid, algorithm, key }),
            Err(why) => tracing::warn!(?kid, "JWKS key skipped: {why}"),
        }
    }
    keys
}

/// The development key pair's `kid`.
const DEV_KID: &str = "zerotouch-dev";

impl Verifier {
    /// A verifier for `config`; reads the development public key from `data_dir` or the issuer's JWKS.
    /// The JWKS is fetched under `outbound` (https, no redirects, checked addresses, a capped body).
    pub async fn new(
        config: &AuthConfig,
        data_dir: &std::path::Path,
        outbound: &zerotouch_outbound::OutboundPolicy,
    ) -> anyhow::Result<Arc<Self>> {
        let (issuer, keys) = match &config.issuer {
            TokenIssuer::Development => {
                let path = data_dir.join(crate::data_dir::files::TOKEN_PUBLIC_KEY);
                let pem = std::fs::read(&path).with_context(|| format!("cannot read {}", path.display()))?;
                let key = DecodingKey::from_ec_pem(&pem).context("the development token key is not valid")?;
                (DEV_ISSUER.to_owned(), vec![PinnedKey { kid: Some(DEV_KID.into()), algorithm: Algorithm::ES256, key }])
            }
            TokenIssuer::External { issuer, keys: JwksSource::File(path) } => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("--jwks-file: cannot read {}", path.display()))?;
                let set: JwkSet = serde_json::from_str(&text)
                    .with_context(|| format!("--jwks-file: {} is not a JWKS", path.display()))?;
                let keys = pin_jwks(&set);
                if keys.is_empty() {
                    anyhow::bail!("--jwks-file: {} holds no usable verification key", path.display());
                }
                (issuer.clone(), keys)
            }
            TokenIssuer::External { issuer, keys: JwksSource::Url(url) } => {
                let keys = match fetch_jwks(outbound, url).await {
                    Ok(keys) => keys,
                    Err(e) => {
                        tracing::error!("--jwks-url: {e:#}; admin requests are refused until it loads");
                        Vec::new()
                    }
                };
                (issuer.clone(), keys)
            }
        };
        let verifier = Arc::new(Self {
            keys: RwLock::new(Arc::new(keys)),
            issuer,
            audience: config.audience.clone(),
            role_claim: config.role_claim.split('.').map(str::to_owned).collect(),
        });
        if let TokenIssuer::External { keys: JwksSource::Url(url), .. } = &config.issuer {
            tokio::spawn(refresh_jwks(Arc::downgrade(&verifier), outbound.clone(), url.clone()));
        }
        Ok(verifier)
    }

    fn replace_keys(&self, keys: Vec<PinnedKey>) {
        if let Ok(mut guard) = self.keys.write() {
            *guard = Arc::new(keys);
        }
    }

    /// Verifies `token` and returns whom it speaks for, and the role it carries (if any).
    pub fn verify(&self, token: &str) -> Result<(String, Option<Role>), TokenError> {
        let header = jsonwebtoken::decode_header(token)?;
        let keys = self.keys.read().map(|k| Arc::clone(&k)).unwrap_or_default();
        let candidates =
            keys.iter().filter(|k| k.algorithm == header.alg).filter(|k| header.kid.is_none() || k.kid == header.kid);
        let mut last_error = None;
        for key in candidates {
            let mut validation = Validation::new(key.algorithm);
            validation.leeway = LEEWAY_SECS;
            validation.validate_nbf = true;
            validation.set_issuer(&[&self.issuer]);
            validation.set_audience(&[&self.audience]);
            validation.required_spec_claims = HashSet::from(["exp".into(), "iss".into(), "aud".into()]);
            match jsonwebtoken::decode::<Value>(token, &key.key, &validation) {
                Ok(data) => {
                    let subject = data.claims.get("sub").and_then(Value::as_str).ok_or(TokenError::NoSubject)?;
                    return Ok((subject.to_owned(), self.role_of(&data.claims)));
                }
                Err(e) => last_error = Some(e),
            }
        }
        Err(match last_error {
            Some(e) => TokenError::Invalid(e),
            None => TokenError::NoKey { kid: header.kid, alg: header.alg },
        })
    }

    /// The highest known role named by the role claim (a string or an array of strings).
    fn role_of(&self, claims: &Value) -> Option<Role> {
        let mut value = claims;
        for part in &self.role_claim {
            value = value.get(part)?;
        }
        match value {
            Value::String(s) => Role::parse(s),
            Value::Array(items) => items.iter().filter_map(Value::as_str).filter_map(Role::parse).max(),
            _ => None,
        }
    }
}

/// The largest JWKS read (a JWKS of a dozen RSA-4096 keys is about 12 KB).
const JWKS_LIMIT: usize = 256 * 1024;

/// Fetches the JWKS at `url` under `outbound`. Errors name the URL without its query.
async fn fetch_jwks(outbound: &zerotouch_outbound::OutboundPolicy, url: &str) -> anyhow::Result<Vec<PinnedKey>> {
    let parsed = outbound.parse_url(url)?;
    let shown = zerotouch_outbound::redacted(&parsed);
    let client = outbound.client().timeout(Duration::from_secs(10)).build()?;
    let response =
        client.get(parsed).send().await.map_err(|e| anyhow::anyhow!("{shown}: {}", zerotouch_outbound::describe(e)))?;
    let status = response.status();
    if !status.is_success() {
        anyhow::bail!("{shown} answered {status} (redirects are not followed)");
    }
    let body = zerotouch_outbound::read_capped(response, JWKS_LIMIT).await.with_context(|| shown.clone())?;
    let set: JwkSet = serde_json::from_slice(&body).with_context(|| format!("{shown} is not a JWKS"))?;
    let keys = pin_jwks(&set);
    if keys.is_empty() {
        anyhow::bail!("{shown} holds no usable verification key");
    }
    Ok(keys)
}

/// Re-reads the JWKS every 5 minutes (every 30 s while it has never loaded), while the verifier lives.
async fn refresh_jwks(verifier: std::sync::Weak<Verifier>, outbound: zerotouch_outbound::OutboundPolicy, url: String) {
    loop {
        let empty = verifier.upgrade().is_none_or(|v| v.keys.read().map(|k| k.is_empty()).unwrap_or(true));
        tokio::time::sleep(Duration::from_secs(if empty { 30 } else { 300 })).await;
        let Some(live) = verifier.upgrade() else { return };
        match fetch_jwks(&outbound, &url).await {
            Ok(keys) => live.replace_keys(keys),
            Err(e) => tracing::warn!("--jwks-url: refresh failed, keeping the previous keys: {e:#}"),
        }
    }
}

/// Signs a development admin token (`zerotouch admin-token`).
pub fn sign_development_token(
    data_dir: &std::path::Path,
    audience: &str,
    subject: &str,
    role: &str,
    ttl: Duration,
) -> anyhow::Result<String> {
    let path = data_dir.join(crate::data_dir::files::TOKEN_KEY);
    crate::data_dir::check_key_permissions(data_dir)?;
    let pem = zeroize::Zeroizing::new(
        std::fs::read(&path)
            .with_context(|| format!("cannot read {} (start `zerotouch serve` once to create it)", path.display()))?,
    );
    let key = EncodingKey::from_ec_pem(&pem).context("the development token key is not valid")?;
    let now = chrono::Utc::now().timestamp();
    let ttl = i64::try_from(ttl.as_secs()).context("--ttl is too long")?;
    let claims = serde_json::json!({
        "iss": DEV_ISSUER,
        "aud": audience,
        "sub": subject,
        "role": role,
        "iat": now,
        "nbf": now,
        "exp": now.saturating_add(ttl),
        "jti": uuid::Uuid::new_v4().to_string(),
    });
    let mut header = Header::new(Algorithm::ES256);
    header.kid = Some(DEV_KID.into());
    Ok(jsonwebtoken::encode(&header, &claims, &key)?)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn verifier_with(keys: Vec<PinnedKey>) -> Verifier {
        Verifier {
            keys: RwLock::new(Arc::new(keys)),
            issuer: "https://idp".into(),
            audience: "zerotouch".into(),
            role_claim: vec!["realm_access".into(), "roles".into()],
        }
    }

    #[test]
    fn roles_come_from_a_nested_claim_and_the_highest_wins() {
        let v = verifier_with(Vec::new());
        let claims = serde_json::json!({"realm_access": {"roles": ["offline", "reader", "operator"]}});
        assert_eq!(v.role_of(&claims), Some(Role::Operator));
        assert_eq!(v.role_of(&serde_json::json!({"realm_access": {"roles": "owner"}})), Some(Role::Owner));
        assert_eq!(v.role_of(&serde_json::json!({"role": "owner"})), None);
    }

    #[test]
    fn symmetric_and_mismatched_jwks_keys_are_not_pinned() {
        let oct: Jwk = serde_json::from_value(serde_json::json!({"kty": "oct", "k": "c2VjcmV0"})).unwrap();
        assert!(pinned_algorithm(&oct).is_err());
        let ec = serde_json::json!({"kty": "EC", "crv": "P-256", "alg": "RS256",
            "x": "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU", "y": "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"});
        let ec: Jwk = serde_json::from_value(ec).unwrap();
        assert!(pinned_algorithm(&ec).is_err());
    }
}
