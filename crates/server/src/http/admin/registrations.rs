//! `/registrations`: device registration states (read and delete; devices write them by registering), and the
//! revocation of a device's certificates (issue #4 §5).

use actix_web::{HttpRequest, HttpResponse, web};
use serde::Deserialize;
use serde_json::{Value, json};
use zerotouch_pki::RevocationReason;
use zerotouch_store::RegistrationRecord;
use zerotouch_wire::enrollment::{EnrollmentKind, FieldError};
use zerotouch_wire::{EnrollmentGroupId, RegistrationId};

use crate::auth::{Caller, EnrollmentWrite, Read};
use crate::http::error::ApiError;
use crate::http::request::{self, BODY_LIMIT, MaybeJson};

fn render(record: &RegistrationRecord) -> Result<Value, ApiError> {
    let state = crate::registration::result::state_of(record)
        .ok_or_else(|| ApiError::internal(format!("stored registration status {:?} is unknown", record.status)))?;
    serde_json::to_value(state).map_err(ApiError::internal)
}

fn parse_id(id: &str) -> Result<RegistrationId, ApiError> {
    RegistrationId::try_from(id).map_err(|e| ApiError::InvalidId(format!("registrationId in the path: {e}")))
}

/// `GET /registrations/{registrationId}`.
pub(super) async fn get(caller: Caller<Read>, id: web::Path<String>) -> Result<HttpResponse, ApiError> {
    let key = parse_id(&id)?.key();
    let record = caller
        .registrations()
        .get(&key)
        .await
        .map_err(|e| ApiError::from_store(e, &format!("registration {:?}", id.as_str())))?;
    Ok(request::with_etag(HttpResponse::Ok(), &record.etag).json(render(&record)?))
}

/// `DELETE /registrations/{registrationId}`, under `If-Match`; the device may register again afterwards.
pub(super) async fn delete(
    caller: Caller<EnrollmentWrite>,
    req: HttpRequest,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let key = parse_id(&id)?.key();
    let precondition = request::precondition(&req)?;
    caller
        .registration_writer()
        .delete(&key, &precondition)
        .await
        .map_err(|e| ApiError::from_store(e, &format!("registration {:?}", id.as_str())))?;
    Ok(HttpResponse::NoContent().finish())
}

/// `POST /registrations/{enrollmentGroupId}/query`: the registrations of a group, paged.
pub(super) async fn query(
    caller: Caller<Read>,
    req: HttpRequest,
    id: web::Path<String>,
    _body: MaybeJson<BODY_LIMIT>,
) -> Result<HttpResponse, ApiError> {
    let group = EnrollmentGroupId::try_from(id.as_str())
        .map_err(|e| ApiError::InvalidId(format!("enrollmentGroupId in the path: {e}")))?;
    caller
        .enrollments()
        .get(EnrollmentKind::Group, &group.key())
        .await
        .map_err(|e| ApiError::from_store(e, &format!("enrollment group {:?}", id.as_str())))?;
    let paging = request::paging(&req)?;
    let page = caller
        .registrations()
        .list_of_group(&group.key(), paging.after.as_deref(), paging.max_items)
        .await
        .map_err(ApiError::internal)?;
    let items = page.items.iter().map(render).collect::<Result<Vec<_>, _>>()?;
    Ok(request::page_response(items, page.next, "deviceRegistration", &paging))
}

/// The body of `POST /registrations/{registrationId}/revoke` (optional).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RevokeBody {
    reason: Option<String>,
}

fn revocation_reason(name: Option<&str>) -> Result<RevocationReason, FieldError> {
    let Some(name) = name else { return Ok(RevocationReason::Unspecified) };
    RevocationReason::parse(name).ok_or_else(|| {
        let known: Vec<&str> = RevocationReason::ALL.iter().map(|r| r.as_str()).collect();
        FieldError::new("reason", format!("{name:?} is not one of {}", known.join(", ")))
    })
}

/// `POST /registrations/{registrationId}/revoke`: revokes every certificate of the device that is neither revoked
/// nor expired (its issuing CAs' CRLs list them from the next fetch on); answers their serial numbers.
pub(super) async fn revoke(
    caller: Caller<EnrollmentWrite>,
    id: web::Path<String>,
    body: MaybeJson<BODY_LIMIT>,
) -> Result<HttpResponse, ApiError> {
    let key = parse_id(&id)?.key();
    let body: RevokeBody = body.0.map(zerotouch_wire::field::decode).transpose()?.unwrap_or_default();
    let reason = revocation_reason(body.reason.as_deref())?;
    caller
        .registrations()
        .get(&key)
        .await
        .map_err(|e| ApiError::from_store(e, &format!("registration {:?}", id.as_str())))?;
    let revoked =
        caller.registration_writer().revoke_certificates(&key, reason.as_str()).await.map_err(ApiError::internal)?;
    let serials: Vec<&str> = revoked.iter().map(|c| c.serial.as_str()).collect();
    Ok(HttpResponse::Ok().json(json!({ "revoked": serials })))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn revocation_reasons_default_to_unspecified_and_unknown_ones_are_named() {
        assert_eq!(revocation_reason(None).unwrap(), RevocationReason::Unspecified);
        assert_eq!(revocation_reason(Some("keyCompromise")).unwrap(), RevocationReason::KeyCompromise);
        let e = revocation_reason(Some("KeyCompromise")).unwrap_err();
        assert_eq!(e.field, "reason");
        assert!(e.problem.contains("keyCompromise") && e.problem.contains("privilegeWithdrawn"), "{e}");
    }
}
