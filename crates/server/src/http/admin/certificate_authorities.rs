//! `/certificateAuthorities` (issue #4 §3; Azure's "certificates" of DPS, `docs/protocol/device-api.md` §4): customer CAs
//! that X.509 enrollment groups name in `caReferences`, usable only after proof of possession of their key.
//!
//! Proof of possession: `POST .../verificationCode` answers a random code (valid [`CODE_VALIDITY`]; a new one
//! replaces the old), the admin makes a certificate whose subject CN is that code, signed by the CA's key, and
//! `POST .../verify` checks it. Replacing the certificate resets the verification (the store guarantees it).

use actix_web::{HttpRequest, HttpResponse, web};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use time::OffsetDateTime;
use zerotouch_pki::ProofError;
use zerotouch_store::{CertificateAuthorityInput, CertificateAuthorityRecord, StoreError};
use zerotouch_wire::enrollment::FieldError;

use super::timestamp;
use crate::auth::{Caller, PkiWrite, Read};
use crate::http::error::ApiError;
use crate::http::request::{self, BODY_LIMIT, Json, MaybeJson};

/// How long a verification code is accepted.
const CODE_VALIDITY: chrono::TimeDelta = chrono::TimeDelta::hours(1);

/// The longest certificate authority name.
const MAX_NAME_CHARS: usize = 128;

/// A certificate authority as the API shows it.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct Resource<'a> {
    name: &'a str,
    certificate: String,
    subject: &'a str,
    sha256_thumbprint: &'a str,
    not_after_utc: String,
    is_verified: bool,
    created_date_time_utc: String,
    last_updated_date_time_utc: String,
    etag: &'a str,
}

fn render(record: &CertificateAuthorityRecord) -> Result<Value, ApiError> {
    let resource = Resource {
        name: &record.name,
        certificate: zerotouch_pki::certificate_pem(&record.certificate_der),
        subject: &record.subject,
        sha256_thumbprint: &record.thumbprint_sha256,
        not_after_utc: timestamp(record.not_after),
        is_verified: record.verified,
        created_date_time_utc: timestamp(record.created_at),
        last_updated_date_time_utc: timestamp(record.updated_at),
        etag: &record.etag,
    };
    serde_json::to_value(resource).map_err(ApiError::internal)
}

/// Checks a name from the path (1-128 of letters, digits, `-`, `.`, `_`; case-insensitive) and returns its
/// canonical (lower-case) key.
fn parse_name(name: &str) -> Result<String, ApiError> {
    let ok = !name.is_empty()
        && name.chars().count() <= MAX_NAME_CHARS
        && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'));
    if ok {
        Ok(name.to_ascii_lowercase())
    } else {
        Err(ApiError::InvalidId(format!(
            "certificate authority name {name:?}: use 1-{MAX_NAME_CHARS} of A-Z, a-z, 0-9, '-', '.' and '_'"
        )))
    }
}

fn describe(name: &str) -> String {
    format!("certificate authority {name:?}")
}

/// The one certificate of a body field (PEM or base64 DER).
fn certificate_der(text: &str, field: &str) -> Result<Vec<u8>, FieldError> {
    zerotouch_pki::certificate_from_text(text).map_err(|e| FieldError::new(field, e))
}

/// What the store keeps of a CA certificate, after checking that it is a CA certificate allowed to sign
/// certificates and valid now (`zerotouch_pki::check_ca_certificate`: strict parsing, no unknown critical
/// extension, `basicConstraints` CA:true, `keyCertSign` when `keyUsage` is present, validity). Chain verification
/// at registration checks the anchor again, so this check is the admin's early, precise refusal of a certificate
/// that could never verify a device.
fn ca_input(key: String, name: &str, der: Vec<u8>, now: OffsetDateTime) -> Result<CertificateAuthorityInput, ApiError> {
    let details =
        zerotouch_pki::check_ca_certificate(&der, now).map_err(|e| FieldError::new("certificate", e.to_string()))?;
    Ok(CertificateAuthorityInput {
        key,
        name: name.to_owned(),
        subject: details.subject,
        thumbprint_sha256: details.sha256_hex,
        not_after: crate::pki::to_chrono(details.not_after),
        certificate_der: der,
    })
}

/// The body of `PUT /certificateAuthorities/{name}`. The read-only fields of the resource are accepted and
/// ignored, so that a document read with GET can be sent back.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct CertificateBody {
    certificate: String,
    #[serde(default, rename = "name")]
    _name: Option<Value>,
    #[serde(default, rename = "subject")]
    _subject: Option<Value>,
    #[serde(default, rename = "sha256Thumbprint")]
    _thumbprint: Option<Value>,
    #[serde(default, rename = "notAfterUtc")]
    _not_after: Option<Value>,
    #[serde(default, rename = "isVerified")]
    _verified: Option<Value>,
    #[serde(default, rename = "createdDateTimeUtc")]
    _created: Option<Value>,
    #[serde(default, rename = "lastUpdatedDateTimeUtc")]
    _last_updated: Option<Value>,
    #[serde(default, rename = "etag")]
    _etag: Option<Value>,
}

/// The body of `POST /certificateAuthorities/{name}/verify`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct VerifyBody {
    certificate: String,
}

/// `GET /certificateAuthorities`: paged, by canonical name.
pub(super) async fn list(caller: Caller<Read>, req: HttpRequest) -> Result<HttpResponse, ApiError> {
    let paging = request::paging(&req)?;
    let page = caller
        .certificate_authorities()
        .list(paging.after.as_deref(), paging.max_items)
        .await
        .map_err(ApiError::internal)?;
    let items = page.items.iter().map(render).collect::<Result<Vec<_>, _>>()?;
    Ok(request::page_response(items, page.next, "certificateAuthority", &paging))
}

/// `GET /certificateAuthorities/{name}`.
pub(super) async fn get(caller: Caller<Read>, name: web::Path<String>) -> Result<HttpResponse, ApiError> {
    let key = parse_name(&name)?;
    let record =
        caller.certificate_authorities().get(&key).await.map_err(|e| ApiError::from_store(e, &describe(&name)))?;
    Ok(request::with_etag(HttpResponse::Ok(), &record.etag).json(render(&record)?))
}

/// `PUT /certificateAuthorities/{name}`: create (201) or replace (200) under `If-Match` (owners only). Another
/// certificate than the stored one resets the verification.
pub(super) async fn put(
    caller: Caller<PkiWrite>,
    req: HttpRequest,
    name: web::Path<String>,
    body: Json<BODY_LIMIT>,
) -> Result<HttpResponse, ApiError> {
    let key = parse_name(&name)?;
    let precondition = request::precondition(&req)?;
    let body: CertificateBody = zerotouch_wire::field::decode(body.0)?;
    let der = certificate_der(&body.certificate, "certificate")?;
    let input = ca_input(key, &name, der, OffsetDateTime::now_utc())?;
    let (record, created) = caller
        .certificate_authority_writer()
        .put(input, &precondition)
        .await
        .map_err(|e| ApiError::from_store(e, &describe(&name)))?;
    let status = if created { HttpResponse::Created() } else { HttpResponse::Ok() };
    Ok(request::with_etag(status, &record.etag).json(render(&record)?))
}

/// `DELETE /certificateAuthorities/{name}` under `If-Match` (owners only).
pub(super) async fn delete(
    caller: Caller<PkiWrite>,
    req: HttpRequest,
    name: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let key = parse_name(&name)?;
    let precondition = request::precondition(&req)?;
    caller
        .certificate_authority_writer()
        .delete(&key, &precondition)
        .await
        .map_err(|e| ApiError::from_store(e, &describe(&name)))?;
    Ok(HttpResponse::NoContent().finish())
}

/// The answer of `POST .../verificationCode`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct VerificationCode<'a> {
    name: &'a str,
    verification_code: &'a str,
    expires_date_time_utc: String,
    etag: &'a str,
}

/// `POST /certificateAuthorities/{name}/verificationCode`: a fresh code, valid one hour, replacing any outstanding
/// one; under an optional `If-Match` (owners only).
pub(super) async fn verification_code(
    caller: Caller<PkiWrite>,
    req: HttpRequest,
    name: web::Path<String>,
    _body: MaybeJson<BODY_LIMIT>,
) -> Result<HttpResponse, ApiError> {
    let key = parse_name(&name)?;
    let precondition = request::precondition(&req)?;
    let code = zerotouch_pki::verification_code();
    let expires = chrono::Utc::now() + CODE_VALIDITY;
    let record = caller
        .certificate_authority_writer()
        .set_verification_code(&key, &code, expires, &precondition)
        .await
        .map_err(|e| ApiError::from_store(e, &describe(&name)))?;
    let answer = VerificationCode {
        name: &record.name,
        verification_code: &code,
        expires_date_time_utc: timestamp(record.verification_code_expires_at.unwrap_or(expires)),
        etag: &record.etag,
    };
    Ok(request::with_etag(HttpResponse::Ok(), &record.etag).json(answer))
}

/// `POST /certificateAuthorities/{name}/verify`: checks the proof of possession (a certificate whose subject CN is
/// the outstanding code, signed by the CA's key) and marks the CA verified (owners only). The code is used up.
pub(super) async fn verify(
    caller: Caller<PkiWrite>,
    name: web::Path<String>,
    body: Json<BODY_LIMIT>,
) -> Result<HttpResponse, ApiError> {
    let key = parse_name(&name)?;
    let body: VerifyBody = zerotouch_wire::field::decode(body.0)?;
    let proof = certificate_der(&body.certificate, "certificate")?;
    let record =
        caller.certificate_authorities().get(&key).await.map_err(|e| ApiError::from_store(e, &describe(&name)))?;
    let code = match (&record.verification_code, record.verification_code_expires_at) {
        (None, _) => {
            return Err(FieldError::new(
                "certificate",
                format!(
                    "no verification code is outstanding: POST /certificateAuthorities/{name}/verificationCode first"
                ),
            )
            .into());
        }
        (Some(_), Some(expires)) if expires <= chrono::Utc::now() => {
            return Err(FieldError::new(
                "certificate",
                format!("the verification code expired at {}; get a new one", timestamp(expires)),
            )
            .into());
        }
        (Some(code), _) => code.clone(),
    };
    zerotouch_pki::verify_proof_of_possession(&record.certificate_der, &proof, &code).map_err(|e| match e {
        ProofError::MalformedCa(_) => ApiError::internal(format!("{}: stored certificate: {e}", describe(&name))),
        ProofError::WrongCode(_) | ProofError::MalformedProof(_) | ProofError::NotSignedByCa => {
            FieldError::new("certificate", e.to_string()).into()
        }
    })?;
    let record = caller.certificate_authority_writer().mark_verified(&key, &code).await.map_err(|e| match e {
        // The code was replaced, used or expired between the read above and this write.
        StoreError::Conflict(why) => FieldError::new("certificate", why).into(),
        other => ApiError::from_store(other, &describe(&name)),
    })?;
    Ok(request::with_etag(HttpResponse::Ok(), &record.etag).json(render(&record)?))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};

    fn certificate(ca: bool, days: (i64, i64)) -> Vec<u8> {
        certificate_with(ca, days, Vec::new())
    }

    fn certificate_with(ca: bool, days: (i64, i64), key_usages: Vec<KeyUsagePurpose>) -> Vec<u8> {
        let mut params = CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, "Acme factory CA");
        if ca {
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        }
        params.key_usages = key_usages;
        params.not_before = OffsetDateTime::now_utc() + time::Duration::days(days.0);
        params.not_after = OffsetDateTime::now_utc() + time::Duration::days(days.1);
        params.self_signed(&KeyPair::generate().unwrap()).unwrap().der().to_vec()
    }

    fn problem(result: Result<CertificateAuthorityInput, ApiError>) -> String {
        match result {
            Err(ApiError::InvalidField(e)) => {
                assert_eq!(e.field, "certificate");
                e.problem
            }
            other => panic!("expected a field error, got {other:?}"),
        }
    }

    #[test]
    fn names_are_case_insensitive_and_checked() {
        assert_eq!(parse_name("Factory-CA_1.a").unwrap(), "factory-ca_1.a");
        for bad in ["", "a/b", "a b", "ä", &"x".repeat(129)] {
            assert!(matches!(parse_name(bad), Err(ApiError::InvalidId(_))), "{bad:?}");
        }
    }

    #[test]
    fn a_valid_ca_certificate_is_accepted_with_its_details() {
        let der = certificate(true, (-1, 30));
        let input = ca_input("acme".into(), "Acme", der.clone(), OffsetDateTime::now_utc()).unwrap();
        assert_eq!(input.subject, "CN=Acme factory CA");
        assert_eq!(input.thumbprint_sha256, zerotouch_pki::thumbprint_sha256_hex(&der));
        assert_eq!((input.key.as_str(), input.name.as_str()), ("acme", "Acme"));
    }

    #[test]
    fn non_ca_expired_future_and_non_signing_certificates_are_refused() {
        let now = OffsetDateTime::now_utc();
        let refused = |der: Vec<u8>| problem(ca_input("a".into(), "a", der, now));
        assert!(refused(certificate(false, (-1, 30))).contains("not a CA"));
        assert!(refused(certificate(true, (-30, -1))).contains("expired at"));
        assert!(refused(certificate(true, (1, 30))).contains("not valid before"));
        assert!(refused(vec![0x30, 0x03, 1, 2, 3]).contains("not a valid DER X.509 certificate"));
        let no_key_cert_sign =
            certificate_with(true, (-1, 30), vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::CrlSign]);
        let message = refused(no_key_cert_sign);
        assert!(message.contains("\"CN=Acme factory CA\" may not sign certificates"), "{message}");
        assert!(message.contains("keyCertSign"), "{message}");
        let signing = certificate_with(true, (-1, 30), vec![KeyUsagePurpose::KeyCertSign]);
        ca_input("a".into(), "a", signing, now).unwrap();
    }

    #[test]
    fn certificates_come_as_pem_or_base64_der() {
        let der = certificate(true, (-1, 30));
        let pem = zerotouch_pki::certificate_pem(&der);
        assert_eq!(certificate_der(&pem, "certificate").unwrap(), der);
        let b64 = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, &der);
        assert_eq!(certificate_der(&format!(" {b64}\n"), "certificate").unwrap(), der);
        assert!(certificate_der(&format!("{pem}{pem}"), "certificate").unwrap_err().problem.contains("exactly one"));
        assert!(certificate_der("not base64!", "certificate").is_err());
    }
}
