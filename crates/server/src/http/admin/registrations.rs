//! `/registrations`: device registration states (read and delete; devices write them by registering), and the
//! revocation of a device's certificates (issue #4 §5).

use actix_web::{HttpRequest, HttpResponse, web};
use serde::Deserialize;
use serde_json::{Value, json};
use zerotouch_pki::RevocationReason;
use zerotouch_store::RegistrationRecord;
use zerotouch_wire::enrollment::{EnrollmentKind, FieldError};
use zerotouch_wire::{EnrollmentGroupId, RegistrationId};

use crate::auth::{Caller, ReadRegistrations, RegistrationWrite};
use crate::http::error::ApiError;
use crate::http::request::{self, BODY_LIMIT, MaybeJson, with_etag};

fn render(record: &RegistrationRecord) -> Result<Value, ApiError> {
    let state = crate::registration::result::state_of(record)
        .ok_or_else(|| ApiError::internal(format!("stored registration status {:?} is unknown", record.status)))?;
    serde_json::to_value(state).map_err(ApiError::internal)
}

fn parse_id(id: &str) -> Result<RegistrationId, ApiError> {
    RegistrationId::try_from(id).map_err(|e| ApiError::InvalidId(format!("registrationId in the path: {e}")))
}

/// `GET /registrations/{registrationId}`.
pub(super) async fn get(caller: Caller<ReadRegistrations>, id: web::Path<String>) -> Result<HttpResponse, ApiError> {
    let key = parse_id(&id)?.key().into_owned();
    let record = caller
        .registrations()
        .get(&key)
        .await
        .map_err(|e| ApiError::from_store(e, &format!("registration {:?}", id.as_str())))?;
    Ok(with_etag(HttpResponse::Ok(), &record.etag).json(render(&record)?))
}

/// `DELETE /registrations/{registrationId}`, under `If-Match`; the device may register again afterwards.
pub(super) async fn delete(
    caller: Caller<RegistrationWrite>,
    req: HttpRequest,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let key = parse_id(&id)?.key().into_owned();
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
    caller: Caller<ReadRegistrations>,
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

/// `POST /registrations/{registrationId}/revoke`: revokes every certificate of the device not revoked yet, expired
/// ones included (its issuing CAs' CRLs list the unexpired ones from the next fetch on), and gives the registration
/// a new etag; answers the serial numbers and the etag (also in `ETag`).
pub(super) async fn revoke(
    caller: Caller<RegistrationWrite>,
    id: web::Path<String>,
    body: MaybeJson<BODY_LIMIT>,
) -> Result<HttpResponse, ApiError> {
    let key = parse_id(&id)?.key().into_owned();
    let body: RevokeBody = body.0.map(zerotouch_wire::field::decode).transpose()?.unwrap_or_default();
    let reason = revocation_reason(body.reason.as_deref())?;
    let (revoked, etag) = caller
        .registration_writer()
        .revoke_certificates(&key, reason.as_str())
        .await
        .map_err(|e| ApiError::from_store(e, &format!("registration {:?}", id.as_str())))?;
    let serials: Vec<&str> = revoked.iter().map(|c| c.serial.as_str()).collect();
    Ok(with_etag(HttpResponse::Ok(), &etag).json(json!({ "revoked": serials, "etag": etag })))
}

/// `GET /tpmBindings`: the registration ids of TPM enrollment groups and the TPM (EK) that holds each, paged
/// (our extension).
pub(super) async fn tpm_bindings(
    caller: Caller<ReadRegistrations>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let paging = request::paging(&req)?;
    let page =
        caller.tpm_bindings().list(paging.after.as_deref(), paging.max_items).await.map_err(ApiError::internal)?;
    let items = page
        .items
        .into_iter()
        .map(|b| {
            json!({
                "registrationId": b.registration_key,
                "endorsementKey": b.endorsement_key,
                "createdDateTimeUtc": super::timestamp(b.created_at),
            })
        })
        .collect();
    Ok(request::page_response(items, page.next, "tpmBinding", &paging))
}

/// `DELETE /tpmBindings/{registrationId}`: releases the id, which the next TPM of its group to register then
/// holds (our extension). A registration made with the id stays; deleting the registration releases it as well.
pub(super) async fn release_tpm_binding(
    caller: Caller<RegistrationWrite>,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let key = parse_id(&id)?.key().into_owned();
    caller
        .registration_writer()
        .release_tpm_binding(&key)
        .await
        .map_err(|e| ApiError::from_store(e, &format!("TPM binding {:?}", id.as_str())))?;
    Ok(HttpResponse::NoContent().finish())
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
