//! `/sharedAccessPolicies` (issue #19): the policies whose keys sign `SharedAccessSignature` tokens for this API,
//! managed by owners (with a JWT: no policy grants [`PolicyWrite`]). Keys are shown only by
//! `POST /sharedAccessPolicies/{name}/keys` (audited), as enrollment keys only by `attestationmechanism`.

use actix_web::{HttpRequest, HttpResponse, web};
use serde_json::Value;
use zerotouch_store::SharedAccessPolicyRecord;
use zerotouch_wire::policy::{self, PolicyName};

use super::timestamp;
use crate::auth::{Caller, PolicyWrite};
use crate::http::error::ApiError;
use crate::http::request::{self, BODY_LIMIT, Json};

fn render(record: &SharedAccessPolicyRecord, with_keys: bool) -> Value {
    policy::render(
        &record.name,
        record.rights,
        &record.etag,
        &timestamp(record.created_at),
        &timestamp(record.updated_at),
        with_keys.then_some((&record.primary_key, &record.secondary_key)),
    )
}

fn parse_name(name: &str) -> Result<PolicyName, ApiError> {
    PolicyName::try_from(name).map_err(|e| ApiError::InvalidId(format!("policy name in the path: {e}")))
}

fn describe(name: &str) -> String {
    format!("shared access policy {name:?}")
}

/// `GET /sharedAccessPolicies`: every policy, without keys.
pub(super) async fn list(caller: Caller<PolicyWrite>) -> Result<HttpResponse, ApiError> {
    let policies = caller.shared_access_policies().list().await.map_err(ApiError::internal)?;
    Ok(HttpResponse::Ok().json(policies.iter().map(|p| render(p, false)).collect::<Vec<_>>()))
}

/// `GET /sharedAccessPolicies/{name}`, without keys.
pub(super) async fn get(caller: Caller<PolicyWrite>, name: web::Path<String>) -> Result<HttpResponse, ApiError> {
    let key = parse_name(&name)?.key().into_owned();
    let record =
        caller.shared_access_policies().get(&key).await.map_err(|e| ApiError::from_store(e, &describe(&name)))?;
    Ok(request::with_etag(HttpResponse::Ok(), &record.etag).json(render(&record, false)))
}

/// `PUT /sharedAccessPolicies/{name}`: create or replace, under `If-Match`; keys absent or `""` are kept from the
/// existing policy, else generated.
pub(super) async fn put(
    caller: Caller<PolicyWrite>,
    req: HttpRequest,
    name: web::Path<String>,
    body: Json<BODY_LIMIT>,
) -> Result<HttpResponse, ApiError> {
    parse_name(&name)?;
    let precondition = request::precondition(&req)?;
    let normalized = policy::normalize(&name, body.0)?;
    let (record, _created) = caller
        .policy_writer()
        .put(normalized, &precondition)
        .await
        .map_err(|e| ApiError::from_store(e, &describe(&name)))?;
    Ok(request::with_etag(HttpResponse::Ok(), &record.etag).json(render(&record, false)))
}

/// `DELETE /sharedAccessPolicies/{name}`, under `If-Match`: tokens it signed stop working at once.
pub(super) async fn delete(
    caller: Caller<PolicyWrite>,
    req: HttpRequest,
    name: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let key = parse_name(&name)?.key().into_owned();
    let precondition = request::precondition(&req)?;
    caller.policy_writer().delete(&key, &precondition).await.map_err(|e| ApiError::from_store(e, &describe(&name)))?;
    Ok(HttpResponse::NoContent().finish())
}

/// `POST /sharedAccessPolicies/{name}/keys`: the policy with its keys (audited), as Azure's `listKeys`.
pub(super) async fn keys(caller: Caller<PolicyWrite>, name: web::Path<String>) -> Result<HttpResponse, ApiError> {
    let key = parse_name(&name)?.key().into_owned();
    let record =
        caller.shared_access_policies().get(&key).await.map_err(|e| ApiError::from_store(e, &describe(&name)))?;
    caller.policy_writer().audit_key_read(&record).await.map_err(ApiError::internal)?;
    Ok(HttpResponse::Ok().json(render(&record, true)))
}
