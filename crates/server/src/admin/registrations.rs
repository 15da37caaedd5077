//! `/registrations`: device registration states (read and delete; devices write them by registering).

use actix_web::{HttpRequest, HttpResponse, web};
use serde_json::Value;
use zerotouch_store::{RegistrationRecord, Store};
use zerotouch_wire::enrollment::EnrollmentKind;
use zerotouch_wire::{EnrollmentGroupId, RegistrationId};

use crate::auth::{Caller, EnrollmentWrite, Read};
use crate::error::ApiError;
use crate::request::{self, BODY_LIMIT, MaybeJson};

fn render(record: &RegistrationRecord) -> Result<Value, ApiError> {
    let state = crate::registration::state_of(record)
        .ok_or_else(|| ApiError::internal(format!("stored registration status {:?} is unknown", record.status)))?;
    serde_json::to_value(state).map_err(ApiError::internal)
}

fn parse_id(id: &str) -> Result<RegistrationId, ApiError> {
    RegistrationId::try_from(id).map_err(|e| ApiError::InvalidId(format!("registrationId in the path: {e}")))
}

/// `GET /registrations/{registrationId}`.
pub(super) async fn get(
    _caller: Caller<Read>,
    store: web::Data<Store>,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let key = parse_id(&id)?.key();
    let record = store
        .registration(&key)
        .await
        .map_err(|e| ApiError::from_store(e, &format!("registration {:?}", id.as_str())))?;
    Ok(request::with_etag(HttpResponse::Ok(), &record.etag).json(render(&record)?))
}

/// `DELETE /registrations/{registrationId}`, under `If-Match`; the device may register again afterwards.
pub(super) async fn delete(
    caller: Caller<EnrollmentWrite>,
    req: HttpRequest,
    store: web::Data<Store>,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let key = parse_id(&id)?.key();
    let precondition = request::precondition(&req)?;
    store
        .delete_registration(&key, &precondition, &caller.actor())
        .await
        .map_err(|e| ApiError::from_store(e, &format!("registration {:?}", id.as_str())))?;
    Ok(HttpResponse::NoContent().finish())
}

/// `POST /registrations/{enrollmentGroupId}/query`: the registrations of a group, paged.
pub(super) async fn query(
    _caller: Caller<Read>,
    req: HttpRequest,
    store: web::Data<Store>,
    id: web::Path<String>,
    _body: MaybeJson<BODY_LIMIT>,
) -> Result<HttpResponse, ApiError> {
    let group = EnrollmentGroupId::try_from(id.as_str())
        .map_err(|e| ApiError::InvalidId(format!("enrollmentGroupId in the path: {e}")))?;
    store
        .enrollment(EnrollmentKind::Group, &group.key())
        .await
        .map_err(|e| ApiError::from_store(e, &format!("enrollment group {:?}", id.as_str())))?;
    let paging = request::paging(&req)?;
    let page = store
        .list_group_registrations(&group.key(), paging.after.as_deref(), paging.max_items)
        .await
        .map_err(ApiError::internal)?;
    let items = page.items.iter().map(render).collect::<Result<Vec<_>, _>>()?;
    Ok(request::page_response(items, page.next, "deviceRegistration", &paging))
}
