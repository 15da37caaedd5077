//! `/pki` (our extension, issue #4 §1 and §4): the issuing CAs of the managed CA and the fleet view of the
//! certificates they issued.
//!
//! The production flow: `POST /pki/issuingCAs` makes a key (kept encrypted in the database, never shown) and
//! answers its CSR; an offline root signs it; `PUT /pki/issuingCAs/{name}` uploads the chain (checked against the
//! key, leaf first, up to a self-signed root); `POST .../activate` makes it the one CA that issues. The others keep
//! verifying (renewals, CRLs) until they expire or are deleted. The public documents (`/pki/crl/{issuingCA}`,
//! `/pki/trustBundle`) are served by `crate::est`.

use std::collections::HashMap;

use actix_web::http::header;
use actix_web::{HttpRequest, HttpResponse, web};
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use zerotouch_pki::KeyAlgorithm;
use zerotouch_store::{CertificateFilter, CertificateRecord, CertificateStatus, IssuingCaRecord, StoreError};
use zerotouch_wire::enrollment::FieldError;

use super::timestamp;
use crate::auth::{Caller, PkiWrite, Read};
use crate::http::error::ApiError;
use crate::http::request::{self, BODY_LIMIT, Json};
use crate::pki::{Pki, PkiError};

/// The media type of a PEM certificate chain sent as the raw body of `PUT /pki/issuingCAs/{name}`.
const PEM_FILE: &str = "application/x-pem-file";

/// An issuing CA as the API shows it (never its key).
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct IssuingCaResource<'a> {
    name: &'a str,
    key_algorithm: &'a str,
    status: &'static str,
    csr: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    certificate_chain: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    not_after_utc: Option<String>,
    created_date_time_utc: String,
    last_updated_date_time_utc: String,
    etag: &'a str,
}

fn render(record: &IssuingCaRecord) -> Result<Value, ApiError> {
    let resource = IssuingCaResource {
        name: &record.name,
        key_algorithm: &record.key_algorithm,
        status: record.status.as_str(),
        csr: &record.csr_pem,
        certificate_chain: record.chain_pem.as_deref(),
        not_after_utc: record.not_after.map(timestamp),
        created_date_time_utc: timestamp(record.created_at),
        last_updated_date_time_utc: timestamp(record.updated_at),
        etag: &record.etag,
    };
    serde_json::to_value(resource).map_err(ApiError::internal)
}

fn describe(name: &str) -> String {
    format!("issuing CA {name:?}")
}

/// Store errors of issuing CA writes: the store's conflict messages already name the CA and say what to do.
fn from_store(err: StoreError, name: &str) -> ApiError {
    match err {
        StoreError::Conflict(why) => ApiError::Conflict(why),
        other => ApiError::from_store(other, &describe(name)),
    }
}

/// The body of `POST /pki/issuingCAs`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct NewIssuingCaBody {
    name: String,
    key_algorithm: Option<String>,
    common_name: Option<String>,
}

fn key_algorithm(name: Option<&str>) -> Result<KeyAlgorithm, FieldError> {
    let Some(name) = name else { return Ok(KeyAlgorithm::EcdsaP256) };
    KeyAlgorithm::parse(name).ok_or_else(|| {
        let known: Vec<&str> = KeyAlgorithm::ALL.iter().map(|a| a.as_str()).collect();
        FieldError::new("keyAlgorithm", format!("{name:?} is not one of {}", known.join(", ")))
    })
}

/// `GET /pki/issuingCAs`: every issuing CA, by name.
pub(super) async fn list(caller: Caller<Read>) -> Result<HttpResponse, ApiError> {
    let cas = caller.issuing_cas().list().await.map_err(ApiError::internal)?;
    let items = cas.iter().map(render).collect::<Result<Vec<_>, _>>()?;
    Ok(HttpResponse::Ok().json(items))
}

/// `POST /pki/issuingCAs`: a new key and the CSR an offline root is to sign (owners only).
pub(super) async fn create(
    caller: Caller<PkiWrite>,
    pki: web::Data<Pki>,
    body: Json<BODY_LIMIT>,
) -> Result<HttpResponse, ApiError> {
    let body: NewIssuingCaBody = zerotouch_wire::field::decode(body.0)?;
    crate::pki::check_ca_name(&body.name).map_err(|e| match e {
        PkiError::InvalidName(why) => ApiError::from(FieldError::new("name", why)),
        other => other.into(),
    })?;
    let algorithm = key_algorithm(body.key_algorithm.as_deref())?;
    let common_name = body.common_name.unwrap_or_else(|| format!("zerotouch issuing CA {}", body.name));
    if common_name.trim().is_empty() {
        return Err(FieldError::new("commonName", "must not be empty").into());
    }
    let record = pki.create_issuing_ca(&body.name, algorithm, &common_name, caller.actor()).await?;
    Ok(request::with_etag(HttpResponse::Created(), &record.etag)
        .insert_header((header::LOCATION, format!("/pki/issuingCAs/{}", record.name)))
        .json(render(&record)?))
}

/// `GET /pki/issuingCAs/{name}`.
pub(super) async fn get(caller: Caller<Read>, name: web::Path<String>) -> Result<HttpResponse, ApiError> {
    crate::pki::check_ca_name(&name)?;
    let record = caller.issuing_cas().get(&name).await.map_err(|e| from_store(e, &name))?;
    Ok(request::with_etag(HttpResponse::Ok(), &record.etag).json(render(&record)?))
}

/// The JSON body of `PUT /pki/issuingCAs/{name}`. The read-only fields of the resource are accepted and ignored,
/// so that a document read with GET can be sent back with its chain filled in.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct ChainBody {
    certificate_chain: String,
    #[serde(default, rename = "name")]
    _name: Option<Value>,
    #[serde(default, rename = "keyAlgorithm")]
    _key_algorithm: Option<Value>,
    #[serde(default, rename = "status")]
    _status: Option<Value>,
    #[serde(default, rename = "csr")]
    _csr: Option<Value>,
    #[serde(default, rename = "notAfterUtc")]
    _not_after_utc: Option<Value>,
    #[serde(default, rename = "createdDateTimeUtc")]
    _created: Option<Value>,
    #[serde(default, rename = "lastUpdatedDateTimeUtc")]
    _last_updated: Option<Value>,
    #[serde(default, rename = "etag")]
    _etag: Option<Value>,
}

/// Reads the chain of `PUT /pki/issuingCAs/{name}`: raw PEM under `Content-Type: application/x-pem-file`, else a
/// JSON document with `certificateChain`; at most [`BODY_LIMIT`] bytes.
async fn read_chain(req: &HttpRequest, mut payload: web::Payload) -> Result<String, ApiError> {
    let content_type = req
        .headers()
        .get(header::CONTENT_TYPE)
        .map(|v| v.to_str().map_err(|_| ApiError::UnsupportedMediaType("(not text)".into())))
        .transpose()?
        .unwrap_or_default();
    let essence = content_type.split(';').next().unwrap_or_default().trim().to_ascii_lowercase();
    let pem = match essence.as_str() {
        PEM_FILE | "application/pem-certificate-chain" => true,
        "" | "application/json" => false,
        json if json.ends_with("+json") => false,
        _ => return Err(ApiError::UnsupportedMediaType(content_type.to_owned())),
    };
    let mut body = Vec::new();
    while let Some(chunk) = payload.next().await {
        let chunk = chunk.map_err(|e| ApiError::MalformedBody(format!("the body could not be read: {e}")))?;
        if body.len() + chunk.len() > BODY_LIMIT {
            return Err(ApiError::PayloadTooLarge(BODY_LIMIT));
        }
        body.extend_from_slice(&chunk);
    }
    if pem {
        return String::from_utf8(body)
            .map_err(|_| FieldError::new("certificateChain", "the PEM body is not UTF-8 text").into());
    }
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::MalformedBody(format!(
            "the body is empty; send {{\"certificateChain\": \"<PEM>\"}}, or the PEM with Content-Type: {PEM_FILE}"
        )));
    }
    let value: Value = serde_json::from_slice(&body)
        .map_err(|e| ApiError::MalformedBody(format!("the body is not valid JSON: {e}")))?;
    let body: ChainBody = zerotouch_wire::field::decode(value)?;
    Ok(body.certificate_chain)
}

/// `PUT /pki/issuingCAs/{name}`: upload the signed chain (this CA's certificate first, up to the root), under
/// `If-Match` (owners only). A pending CA becomes `ready`.
pub(super) async fn upload_chain(
    caller: Caller<PkiWrite>,
    req: HttpRequest,
    pki: web::Data<Pki>,
    name: web::Path<String>,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    crate::pki::check_ca_name(&name)?;
    let precondition = request::precondition(&req)?;
    let chain = read_chain(&req, payload).await?;
    let record = pki.upload_chain(&name, &chain, &precondition, caller.actor()).await.map_err(|e| match e {
        // The pki module names the field by what it holds; the API names it by the field the client sent.
        PkiError::InvalidField(e) => ApiError::from(FieldError::new("certificateChain", e.problem)),
        other => other.into(),
    })?;
    Ok(request::with_etag(HttpResponse::Ok(), &record.etag).json(render(&record)?))
}

/// `POST /pki/issuingCAs/{name}/activate`: make it the CA that issues, under an optional `If-Match` (owners
/// only). The one active before becomes `ready` and keeps verifying.
pub(super) async fn activate(
    caller: Caller<PkiWrite>,
    req: HttpRequest,
    name: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    crate::pki::check_ca_name(&name)?;
    let precondition = request::precondition(&req)?;
    let record = caller.issuing_ca_writer().activate(&name, &precondition).await.map_err(|e| from_store(e, &name))?;
    Ok(request::with_etag(HttpResponse::Ok(), &record.etag).json(render(&record)?))
}

/// `DELETE /pki/issuingCAs/{name}` under `If-Match` (owners only); not the active one.
pub(super) async fn delete(
    caller: Caller<PkiWrite>,
    req: HttpRequest,
    name: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    crate::pki::check_ca_name(&name)?;
    let precondition = request::precondition(&req)?;
    caller.issuing_ca_writer().delete(&name, &precondition).await.map_err(|e| from_store(e, &name))?;
    Ok(HttpResponse::NoContent().finish())
}

/// A certificate we issued, as the fleet view shows it.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct CertificateItem<'a> {
    serial_number: &'a str,
    registration_id: &'a str,
    device_id: &'a str,
    #[serde(rename = "issuingCA")]
    issuing_ca: &'a str,
    not_before_utc: String,
    not_after_utc: String,
    status: &'static str,
    sha256_thumbprint: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    revoked_date_time_utc: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    revocation_reason: Option<&'a str>,
}

fn render_certificate(record: &CertificateRecord) -> Result<Value, ApiError> {
    let item = CertificateItem {
        serial_number: &record.serial,
        registration_id: &record.registration_key,
        device_id: &record.device_id,
        issuing_ca: &record.issuing_ca,
        not_before_utc: timestamp(record.not_before),
        not_after_utc: timestamp(record.not_after),
        status: record.status.as_str(),
        sha256_thumbprint: &record.thumbprint_sha256,
        revoked_date_time_utc: record.revoked_at.map(timestamp),
        revocation_reason: record.revocation_reason.as_deref(),
    };
    serde_json::to_value(item).map_err(ApiError::internal)
}

/// Reads `?expiringWithin=<humantime duration>&status=active|superseded|revoked` (other parameters are ignored,
/// as everywhere in the admin API).
fn certificate_filter(req: &HttpRequest) -> Result<CertificateFilter, ApiError> {
    let query = web::Query::<HashMap<String, String>>::from_query(req.query_string())
        .map_err(|e| ApiError::InvalidHeader(format!("query string: {e}")))?;
    let expiring_before = match query.get("expiringWithin") {
        None => None,
        Some(raw) => {
            let within = humantime::parse_duration(raw)
                .ok()
                .and_then(|d| chrono::Duration::from_std(d).ok())
                .and_then(|d| chrono::Utc::now().checked_add_signed(d))
                .ok_or_else(|| {
                    ApiError::InvalidHeader(format!("expiringWithin: {raw:?} is not a duration such as 7d, 12h or 30m"))
                })?;
            Some(within)
        }
    };
    let status = match query.get("status").map(String::as_str) {
        None => None,
        Some("active") => Some(CertificateStatus::Active),
        Some("superseded") => Some(CertificateStatus::Superseded),
        Some("revoked") => Some(CertificateStatus::Revoked),
        Some(other) => {
            return Err(ApiError::InvalidHeader(format!(
                "status: {other:?} is not one of active, superseded, revoked"
            )));
        }
    };
    Ok(CertificateFilter { expiring_before, status })
}

/// Whether `token` has the shape of the certificate listing's continuation tokens (`<micros>_<hex serial>`).
fn is_certificate_cursor(token: &str) -> bool {
    token.split_once('_').is_some_and(|(micros, serial)| {
        micros.parse::<i64>().is_ok() && !serial.is_empty() && serial.bytes().all(|b| b.is_ascii_hexdigit())
    })
}

/// `GET /pki/certificates`: the certificates we issued, soonest expiry first, paged.
pub(super) async fn certificates(caller: Caller<Read>, req: HttpRequest) -> Result<HttpResponse, ApiError> {
    let filter = certificate_filter(&req)?;
    let paging = request::paging(&req)?;
    if paging.after.as_deref().is_some_and(|a| !is_certificate_cursor(a)) {
        return Err(ApiError::InvalidHeader("x-ms-continuation: not a token this service issued".into()));
    }
    let page = caller
        .certificates()
        .list(&filter, paging.after.as_deref(), paging.max_items)
        .await
        .map_err(ApiError::internal)?;
    let items = page.items.iter().map(render_certificate).collect::<Result<Vec<_>, _>>()?;
    Ok(request::page_response(items, page.next, "certificate", &paging))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use actix_web::test::TestRequest;

    #[test]
    fn key_algorithms_default_to_p256_and_unknown_ones_are_named() {
        assert_eq!(key_algorithm(None).unwrap(), KeyAlgorithm::EcdsaP256);
        assert_eq!(key_algorithm(Some("ecdsaP384")).unwrap(), KeyAlgorithm::EcdsaP384);
        assert_eq!(key_algorithm(Some("rsa3072")).unwrap(), KeyAlgorithm::Rsa3072);
        let e = key_algorithm(Some("P-256")).unwrap_err();
        assert_eq!(e.field, "keyAlgorithm");
        assert!(e.problem.contains("ecdsaP256, ecdsaP384, rsa3072"), "{e}");
    }

    #[test]
    fn the_certificate_filter_reads_durations_and_statuses() {
        let req = TestRequest::default().uri("/pki/certificates?expiringWithin=7d&status=revoked").to_http_request();
        let filter = certificate_filter(&req).unwrap();
        let before = filter.expiring_before.unwrap();
        let expected = chrono::Utc::now() + chrono::Duration::days(7);
        assert!((expected - before).num_seconds().abs() < 5, "{before}");
        assert_eq!(filter.status, Some(CertificateStatus::Revoked));
        let req = TestRequest::default().uri("/pki/certificates?api-version=2021-10-01").to_http_request();
        assert_eq!(certificate_filter(&req).unwrap(), CertificateFilter::default());
        for bad in ["expiringWithin=soon", "expiringWithin=-1d", "status=expired"] {
            let req = TestRequest::default().uri(&format!("/pki/certificates?{bad}")).to_http_request();
            assert!(matches!(certificate_filter(&req), Err(ApiError::InvalidHeader(_))), "{bad}");
        }
    }

    #[test]
    fn continuation_tokens_are_checked_before_they_reach_the_store() {
        assert!(is_certificate_cursor("1767323045000000_01abcd"));
        assert!(!is_certificate_cursor("1767323045000000"));
        assert!(!is_certificate_cursor("x_01"));
        assert!(!is_certificate_cursor("1_"));
        assert!(!is_certificate_cursor("1_zz"));
    }
}
