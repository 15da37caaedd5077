//! The HTTPS device API (`docs/protocol/device-api.md` §1): register, operation status, registration status lookup.
//!
//! Thin: each handler turns the request into a [`DeviceRequest`] and calls the [`RegistrationService`], which the
//! MQTT endpoint shares. Accepted on purpose (§1.8, §11): any `api-version` (or none), unknown query parameters,
//! `Content-Encoding: utf-8` (no decoding layer runs here), the `UserAgent` header, an empty body, a body without
//! `registrationId`, and `"payload": null`.

use actix_web::http::header;
use actix_web::{HttpRequest, HttpResponse, web};
use zerotouch_wire::RegistrationId;
use zerotouch_wire::registration::RegistrationStatus;

use super::error::{self, ApiError};
use super::request::{BODY_LIMIT, MaybeJson};
use crate::registration::request::{RETRY_AFTER_SECS, registration_body};
use crate::registration::{DeviceRequest, Evidence, RegistrationRequest, RegistrationService};
use crate::tls::PeerCertificates;

/// Every route of the device API: path template and methods.
pub const ROUTES: &[(&str, &[&str])] = &[
    ("/{idScope}/registrations/{registrationId}/register", &["PUT"]),
    ("/{idScope}/registrations/{registrationId}/operations/{operationId}", &["GET"]),
    ("/{idScope}/registrations/{registrationId}", &["POST"]),
    ("/healthz", &["GET"]),
];

/// Registers the device routes (404 for other paths, 405 for other methods).
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::resource("/{idScope}/registrations/{registrationId}/register")
            .route(web::put().to(register))
            .default_service(web::to(|| error::method_not_allowed(&["PUT"]))),
    )
    .service(
        web::resource("/{idScope}/registrations/{registrationId}/operations/{operationId}")
            .route(web::get().to(operation))
            .default_service(web::to(|| error::method_not_allowed(&["GET"]))),
    )
    .service(
        web::resource("/{idScope}/registrations/{registrationId}")
            .route(web::post().to(status))
            .default_service(web::to(|| error::method_not_allowed(&["POST"]))),
    )
    // Liveness on the device port too, for load balancers that probe the port they forward.
    .service(
        web::resource("/healthz")
            .route(web::get().to(alive))
            .default_service(web::to(|| error::method_not_allowed(&["GET"]))),
    )
    .default_service(web::to(error::route_not_found));
}

async fn alive() -> HttpResponse {
    HttpResponse::Ok().json(serde_json::json!({"status": "ok"}))
}

fn device_request(req: &HttpRequest, id_scope: String, registration_id: &str) -> Result<DeviceRequest, ApiError> {
    let registration_id = RegistrationId::try_from(registration_id)
        .map_err(|e| ApiError::InvalidId(format!("registrationId in the path: {e}")))?;
    let certificates = || req.conn_data::<PeerCertificates>().map(|c| Evidence::Certificates(c.0.clone()));
    let evidence = match req.headers().get(header::AUTHORIZATION).map(|v| v.to_str()) {
        Some(Ok(value)) => Evidence::Sas(value.to_owned()),
        // A header that is not text is no credential at all.
        Some(Err(_)) | None => certificates().unwrap_or(Evidence::None),
    };
    Ok(DeviceRequest { id_scope, registration_id, evidence })
}

/// `PUT /{idScope}/registrations/{registrationId}/register`: 202 `assigning` with `Retry-After` and `Location`.
async fn register(
    req: HttpRequest,
    path: web::Path<(String, String)>,
    service: web::Data<RegistrationService>,
    body: MaybeJson<BODY_LIMIT>,
) -> Result<HttpResponse, ApiError> {
    let (id_scope, registration_id) = path.into_inner();
    let device = device_request(&req, id_scope, &registration_id)?;
    let body = registration_body(body.0).map_err(ApiError::InvalidField)?;
    let location = format!("/{}/registrations/{}/operations/", device.id_scope, device.registration_id.as_str());
    let operation = service.register(RegistrationRequest { device, body }).await?;
    Ok(HttpResponse::Accepted()
        .insert_header((header::RETRY_AFTER, RETRY_AFTER_SECS.to_string()))
        .insert_header((header::LOCATION, format!("{location}{}", operation.operation_id)))
        .json(operation))
}

/// `GET /{idScope}/registrations/{registrationId}/operations/{operationId}`: 202 while assigning, else 200.
async fn operation(
    req: HttpRequest,
    path: web::Path<(String, String, String)>,
    service: web::Data<RegistrationService>,
) -> Result<HttpResponse, ApiError> {
    let (id_scope, registration_id, operation_id) = path.into_inner();
    let device = device_request(&req, id_scope, &registration_id)?;
    let answer = service.operation(device, &operation_id).await?;
    let mut response = if answer.status == RegistrationStatus::Assigning {
        let mut response = HttpResponse::Accepted();
        response.insert_header((header::RETRY_AFTER, RETRY_AFTER_SECS.to_string()));
        response
    } else {
        HttpResponse::Ok()
    };
    Ok(response.insert_header(header::ContentType::json()).body(web::Bytes::from_owner(answer.json)))
}

/// `POST /{idScope}/registrations/{registrationId}`: the device's registration, not wrapped in an operation.
async fn status(
    req: HttpRequest,
    path: web::Path<(String, String)>,
    service: web::Data<RegistrationService>,
    body: MaybeJson<BODY_LIMIT>,
) -> Result<HttpResponse, ApiError> {
    let (id_scope, registration_id) = path.into_inner();
    let device = device_request(&req, id_scope, &registration_id)?;
    let body = registration_body(body.0).map_err(ApiError::InvalidField)?;
    if body.csr.is_some() {
        // §1.1: a CSR belongs to register, not to the status lookup.
        let problem = "is not accepted by the status lookup; send it with register";
        return Err(ApiError::InvalidField(zerotouch_wire::field::FieldError::new("csr", problem)));
    }
    Ok(HttpResponse::Ok().json(service.status(device).await?))
}
