//! `GET /audit`: the audit log, paged, optionally between two times.

use std::collections::HashMap;

use actix_web::{HttpRequest, HttpResponse, web};
use chrono::{DateTime, Utc};
use zerotouch_store::AuditFilter;
use zerotouch_wire::audit::AuditEvent;

use super::timestamp;
use crate::auth::{Caller, Read};
use crate::http::error::ApiError;
use crate::http::request;

fn time_parameter(query: &HashMap<String, String>, name: &str) -> Result<Option<DateTime<Utc>>, ApiError> {
    let Some(raw) = query.get(name) else { return Ok(None) };
    DateTime::parse_from_rfc3339(raw)
        .map(|t| Some(t.with_timezone(&Utc)))
        .map_err(|_| ApiError::InvalidHeader(format!("{name}: {raw:?} is not an RFC 3339 time (2026-11-28T12:00:00Z)")))
}

/// `GET /audit?from=...&to=...`: events at or after `from` and before `to`, oldest first.
pub(super) async fn list(caller: Caller<Read>, req: HttpRequest) -> Result<HttpResponse, ApiError> {
    let query = web::Query::<HashMap<String, String>>::from_query(req.query_string())
        .map_err(|e| ApiError::InvalidHeader(format!("query string: {e}")))?;
    let filter = AuditFilter { from: time_parameter(&query, "from")?, to: time_parameter(&query, "to")? };
    let paging = request::paging(&req)?;
    if paging.after.as_deref().is_some_and(|a| a.parse::<i64>().is_err()) {
        return Err(ApiError::InvalidHeader("x-ms-continuation: not a token this service issued".into()));
    }
    let page =
        caller.audit().list(&filter, paging.after.as_deref(), paging.max_items).await.map_err(ApiError::internal)?;
    let items = page
        .items
        .into_iter()
        .map(|r| AuditEvent {
            id: r.id,
            timestamp_utc: timestamp(r.at),
            actor: r.actor.subject,
            role: r.actor.role,
            action: r.action,
            resource_type: r.resource_type,
            resource_id: r.resource_id,
            etag_before: r.etag_before,
            etag_after: r.etag_after,
            detail: r.detail,
        })
        .map(serde_json::to_value)
        .collect::<Result<Vec<_>, _>>()
        .map_err(ApiError::internal)?;
    Ok(request::page_response(items, page.next, "auditEvent", &paging))
}
