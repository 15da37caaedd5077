//! EST (RFC 7030) on the device listener, and the public documents of the managed CA.
//!
//! - `GET /.well-known/est/cacerts`: the active issuing CA's chain, base64 PKCS#7 certs-only.
//! - `POST /.well-known/est/simpleenroll`: a device authenticated (TLS) by its certificate of an X.509 enrollment
//!   sends a base64 PKCS#10 and gets its operational certificate as base64 PKCS#7 certs-only.
//! - `POST /.well-known/est/simplereenroll`: the same, authenticated by the operational certificate it renews.
//! - `GET /pki/crl/{issuingCA}` and `GET /pki/trustBundle`: public (signed, or public keys only), so that hubs and
//!   relying parties can fetch them from the port devices reach; the admin API serves the same documents.
//!
//! EST clients identify themselves only by their TLS certificate: the registration id is the one an operational
//! certificate of ours was issued to, else the certificate's subject CN. EST issues to devices that have
//! registered (`assigned`), so that every certificate belongs to a registration revocation can find.

use actix_web::http::header;
use actix_web::{HttpRequest, HttpResponse, web};

use super::error::{self, ApiError};
use crate::pki::Pki;
use crate::registration::{RegistrationError, RegistrationService};
use crate::tls::PeerCertificates;

/// Largest CSR body accepted (base64 of a PKCS#10 with an RSA-4096 key stays well below this).
pub const CSR_BODY_LIMIT: usize = 16 * 1024;

const PKCS7_CERTS_ONLY: &str = "application/pkcs7-mime; smime-type=certs-only";

/// The routes of this module: path template and methods.
pub const ROUTES: &[(&str, &[&str])] = &[
    ("/.well-known/est/cacerts", &["GET"]),
    ("/.well-known/est/simpleenroll", &["POST"]),
    ("/.well-known/est/simplereenroll", &["POST"]),
    ("/pki/crl/{issuingCA}", &["GET"]),
    ("/pki/trustBundle", &["GET"]),
];

/// Registers the EST routes (device listener only).
pub fn configure_est(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::resource("/.well-known/est/cacerts")
            .route(web::get().to(cacerts))
            .default_service(web::to(|| error::method_not_allowed(&["GET"]))),
    )
    .service(
        web::resource("/.well-known/est/simpleenroll")
            .route(web::post().to(simpleenroll))
            .default_service(web::to(|| error::method_not_allowed(&["POST"]))),
    )
    .service(
        web::resource("/.well-known/est/simplereenroll")
            .route(web::post().to(simplereenroll))
            .default_service(web::to(|| error::method_not_allowed(&["POST"]))),
    );
}

/// Registers the public PKI documents (both listeners).
pub fn configure_public(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::resource("/pki/crl/{issuingCA}")
            .route(web::get().to(crl))
            .default_service(web::to(|| error::method_not_allowed(&["GET"]))),
    )
    .service(
        web::resource("/pki/trustBundle")
            .route(web::get().to(trust_bundle))
            .default_service(web::to(|| error::method_not_allowed(&["GET"]))),
    );
}

fn pkcs7_response(certificates: &[Vec<u8>]) -> Result<HttpResponse, ApiError> {
    let pkcs7 = zerotouch_pki::certs_only_pkcs7(certificates)
        .map_err(|e| ApiError::Internal(crate::internal::InternalError::new("encoding PKCS#7", e)))?;
    Ok(HttpResponse::Ok()
        .insert_header((header::CONTENT_TYPE, PKCS7_CERTS_ONLY))
        .insert_header(("Content-Transfer-Encoding", "base64"))
        .body(zerotouch_pki::est_base64(&pkcs7)))
}

/// `GET /.well-known/est/cacerts`.
async fn cacerts(pki: web::Data<Pki>) -> Result<HttpResponse, ApiError> {
    let active = pki.active().await?;
    pkcs7_response(active.ca.chain_der())
}

async fn simpleenroll(
    req: HttpRequest,
    service: web::Data<RegistrationService>,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    enroll(req, service, body, false).await
}

async fn simplereenroll(
    req: HttpRequest,
    service: web::Data<RegistrationService>,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    enroll(req, service, body, true).await
}

async fn enroll(
    req: HttpRequest,
    service: web::Data<RegistrationService>,
    body: web::Bytes,
    renewal: bool,
) -> Result<HttpResponse, ApiError> {
    let content_type = req.headers().get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or_default();
    if !content_type.to_ascii_lowercase().starts_with("application/pkcs10") {
        return Err(ApiError::UnsupportedMediaType(content_type.to_owned()));
    }
    if body.len() > CSR_BODY_LIMIT {
        return Err(ApiError::PayloadTooLarge(CSR_BODY_LIMIT));
    }
    // EST authenticates by the TLS client certificate alone (see `RegistrationService::enroll_certificate`).
    let Some(PeerCertificates(chain)) = req.conn_data::<PeerCertificates>().cloned() else {
        return Err(RegistrationError::Unauthorized.into());
    };
    let issued = service.enroll_certificate(chain, &body, renewal).await?;
    // RFC 7030 §4.2.3: the issued certificate (the client already has, or fetches, the CA certificates).
    pkcs7_response(&issued[..1])
}

/// `GET /pki/crl/{issuingCA}`: DER, or PEM on `Accept: application/x-pem-file`.
async fn crl(req: HttpRequest, pki: web::Data<Pki>, name: web::Path<String>) -> Result<HttpResponse, ApiError> {
    crate::pki::check_ca_name(&name)?;
    let der = pki.crl(&name).await?;
    let wants_pem = req
        .headers()
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|accept| accept.to_ascii_lowercase().contains("application/x-pem-file"));
    Ok(if wants_pem {
        HttpResponse::Ok()
            .insert_header((header::CONTENT_TYPE, "application/x-pem-file"))
            .body(zerotouch_pki::crl_pem(&der))
    } else {
        HttpResponse::Ok().insert_header((header::CONTENT_TYPE, "application/pkix-crl")).body(der)
    })
}

/// `GET /pki/trustBundle`: PEM of every certificate devices and hubs trust.
async fn trust_bundle(pki: web::Data<Pki>) -> Result<HttpResponse, ApiError> {
    Ok(HttpResponse::Ok()
        .insert_header((header::CONTENT_TYPE, "application/x-pem-file"))
        .body(pki.trust_bundle().await?))
}
