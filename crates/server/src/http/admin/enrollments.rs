//! `/enrollments` and `/enrollmentGroups`: the same operations over the two enrollment kinds.

use actix_web::{HttpRequest, HttpResponse, web};
use serde_json::{Value, json};
use zerotouch_store::{BulkFailure, BulkItem, EnrollmentRecord, HubReader};
use zerotouch_wire::ErrorCode;
use zerotouch_wire::bulk::{BulkMode, MAX_BULK_ITEMS};
use zerotouch_wire::enrollment::{self, EnrollmentKind, FieldError, NormalizedEnrollment};

use super::timestamp;
use crate::auth::{Caller, EnrollmentWrite, ReadEnrollments};
use crate::http::error::ApiError;
use crate::http::request::{self, BODY_LIMIT, BULK_BODY_LIMIT, Json, MaybeJson, RawMembers};

/// Which enrollment kind a route serves.
pub(super) trait Kind: 'static {
    /// The kind.
    const KIND: EnrollmentKind;
    /// The collection name (in queries and bulk bodies).
    const COLLECTION: &'static str;
}

/// `/enrollments`.
#[derive(Debug)]
pub(super) struct Individual;
impl Kind for Individual {
    const KIND: EnrollmentKind = EnrollmentKind::Individual;
    const COLLECTION: &'static str = "enrollments";
}

/// `/enrollmentGroups`.
#[derive(Debug)]
pub(super) struct Group;
impl Kind for Group {
    const KIND: EnrollmentKind = EnrollmentKind::Group;
    const COLLECTION: &'static str = "enrollmentGroups";
}

fn describe<K: Kind>(id: &str) -> String {
    format!("{} {id:?}", K::KIND.noun())
}

fn parse_id<K: Kind>(id: &str) -> Result<String, ApiError> {
    K::KIND.parse_id(id).map_err(|e| ApiError::InvalidId(format!("{} in the path: {e}", K::KIND.id_field())))
}

/// The document a client sees: the stored one, its read-only fields (X.509 certificates' `info` among them), and the
/// keys only if `with_keys`.
fn render(record: &EnrollmentRecord, with_keys: bool) -> Value {
    let keys = match (&record.primary_key, &record.secondary_key) {
        (Some(p), Some(s)) if with_keys => Some((p, s)),
        _ => None,
    };
    let mut shown = enrollment::render(
        &record.document,
        &record.etag,
        &timestamp(record.created_at),
        &timestamp(record.updated_at),
        keys,
    );
    zerotouch_pki::fill_certificate_infos(&mut shown);
    shown
}

/// Documents as GET and query show them: individual enrollments with the read-only `registrationState` of their
/// device (`docs/protocol/device-api.md` §6), read for all of them in one query.
async fn render_with_states<P>(
    caller: &Caller<P>,
    kind: EnrollmentKind,
    records: &[EnrollmentRecord],
) -> Result<Vec<Value>, ApiError> {
    let mut shown: Vec<Value> = records.iter().map(|r| render(r, false)).collect();
    if kind != EnrollmentKind::Individual {
        return Ok(shown);
    }
    let keys: Vec<&str> = records.iter().map(|r| r.key.as_str()).collect();
    let states = caller.registrations().of_individual_enrollments(&keys).await.map_err(ApiError::internal)?;
    for (record, document) in records.iter().zip(shown.iter_mut()) {
        let Some(state) = states.get(&record.key).and_then(crate::registration::result::state_of) else { continue };
        if let Some(map) = document.as_object_mut() {
            map.insert("registrationState".into(), serde_json::to_value(state).map_err(ApiError::internal)?);
        }
    }
    Ok(shown)
}

/// Refuses documents that name hubs that are not linked.
async fn check_hubs(hubs: HubReader<'_>, named: &[String]) -> Result<(), ApiError> {
    let unknown = hubs.unknown(named).await.map_err(ApiError::internal)?;
    match unknown.first() {
        None => Ok(()),
        Some(hub) => Err(ApiError::InvalidField(FieldError::new(
            "iotHubs",
            format!("hub {hub:?} is not linked (PUT /hubs/{hub} first)"),
        ))),
    }
}

/// Refuses a custom allocation webhook URL that the outbound policy refuses on its face: a scheme other than https
/// (plain http only to a loopback host, or with `--allow-insecure-outbound`), or an address in a refused range
/// written as its host. A host name is checked only when the webhook is called, after it resolves.
fn check_webhook(
    outbound: &zerotouch_outbound::OutboundPolicy,
    normalized: &NormalizedEnrollment,
) -> Result<(), FieldError> {
    let url = normalized.document.pointer("/customAllocationDefinition/webhookUrl").and_then(Value::as_str);
    match url.map(|url| outbound.parse_url(url)) {
        None | Some(Ok(_)) => Ok(()),
        Some(Err(e)) => Err(FieldError::new("customAllocationDefinition.webhookUrl", e.to_string())),
    }
}

/// `GET /{collection}/{id}`.
pub(super) async fn get<K: Kind>(
    caller: Caller<ReadEnrollments>,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let key = parse_id::<K>(&id)?;
    let record =
        caller.enrollments().get(K::KIND, &key).await.map_err(|e| ApiError::from_store(e, &describe::<K>(&id)))?;
    let shown = render_with_states(&caller, K::KIND, std::slice::from_ref(&record)).await?;
    Ok(request::with_etag(HttpResponse::Ok(), &record.etag).json(shown.into_iter().next().unwrap_or(Value::Null)))
}

/// `PUT /{collection}/{id}`: create or replace, under `If-Match`.
pub(super) async fn put<K: Kind>(
    caller: Caller<EnrollmentWrite>,
    hubs: web::Data<crate::hubs::Hubs>,
    req: HttpRequest,
    id: web::Path<String>,
    body: Json<BODY_LIMIT>,
) -> Result<HttpResponse, ApiError> {
    parse_id::<K>(&id)?;
    let precondition = request::precondition(&req)?;
    let normalized = enrollment::normalize(K::KIND, body.0, Some(&id))?;
    check_webhook(hubs.outbound(), &normalized)?;
    check_hubs(caller.hubs(), &normalized.named_hubs).await?;
    let (record, _created) = caller
        .enrollment_writer()
        .put(K::KIND, normalized, &precondition)
        .await
        .map_err(|e| ApiError::from_store(e, &describe::<K>(&id)))?;
    Ok(request::with_etag(HttpResponse::Ok(), &record.etag).json(render(&record, false)))
}

/// `DELETE /{collection}/{id}`, under `If-Match`.
pub(super) async fn delete<K: Kind>(
    caller: Caller<EnrollmentWrite>,
    req: HttpRequest,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let key = parse_id::<K>(&id)?;
    let precondition = request::precondition(&req)?;
    caller
        .enrollment_writer()
        .delete(K::KIND, &key, &precondition)
        .await
        .map_err(|e| ApiError::from_store(e, &describe::<K>(&id)))?;
    Ok(HttpResponse::NoContent().finish())
}

/// `POST /{collection}/{id}/attestationmechanism`: the attestation, keys included (audited).
pub(super) async fn attestation_mechanism<K: Kind>(
    caller: Caller<EnrollmentWrite>,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let key = parse_id::<K>(&id)?;
    let record =
        caller.enrollments().get(K::KIND, &key).await.map_err(|e| ApiError::from_store(e, &describe::<K>(&id)))?;
    caller.enrollment_writer().audit_key_read(K::KIND, &record).await.map_err(ApiError::internal)?;
    let attestation = render(&record, true).get("attestation").cloned().unwrap_or(Value::Null);
    Ok(HttpResponse::Ok().json(attestation))
}

/// `POST /{collection}/query`: `SELECT * FROM {collection}`, paged.
pub(super) async fn query<K: Kind>(
    caller: Caller<ReadEnrollments>,
    req: HttpRequest,
    body: MaybeJson<BODY_LIMIT>,
) -> Result<HttpResponse, ApiError> {
    if let Some(body) = body.0 {
        let query = body.get("query").and_then(Value::as_str).ok_or_else(|| {
            ApiError::InvalidQuery("query: a string such as \"SELECT * FROM enrollments\" is required".into())
        })?;
        zerotouch_wire::query::check_select_all(query, K::COLLECTION)
            .map_err(|e| ApiError::InvalidQuery(format!("query: {e}")))?;
    }
    let paging = request::paging(&req)?;
    let page = caller
        .enrollments()
        .list(K::KIND, paging.after.as_deref(), paging.max_items)
        .await
        .map_err(ApiError::internal)?;
    let items = render_with_states(&caller, K::KIND, &page.items).await?;
    Ok(request::page_response(items, page.next, K::KIND.item_type(), &paging))
}

/// How many of a bulk call's documents are parsed and applied at a time (the store's inserts take 1,000 rows at a
/// time too).
const BULK_PART: usize = 1000;

/// The JSON of one failed bulk item.
fn item_error(kind: EnrollmentKind, index: usize, id: &str, code: ErrorCode, status: String) -> Value {
    json!({ kind.id_field(): id, "index": index, "errorCode": code.number(), "errorStatus": status })
}

/// Parses one bulk item for `mode`; the error is the item's error JSON.
fn parse_item(
    kind: EnrollmentKind,
    mode: BulkMode,
    outbound: &zerotouch_outbound::OutboundPolicy,
    index: usize,
    item: Value,
) -> Result<BulkItem, Value> {
    let id = item.get(kind.id_field()).and_then(Value::as_str).unwrap_or_default().to_owned();
    let invalid = |e: FieldError| item_error(kind, index, &id, ErrorCode::InvalidField, e.to_string());
    let etag = match item.get("etag") {
        None | Some(Value::Null) => None,
        Some(Value::String(etag)) => Some(etag.clone()),
        Some(_) => return Err(invalid(FieldError::new("etag", "must be a string"))),
    };
    let (key, enrollment) = match mode {
        BulkMode::Delete => {
            let key = kind.parse_id(&id).map_err(|e| invalid(FieldError::new(kind.id_field(), e.to_string())))?;
            (key, None)
        }
        _ => {
            let normalized: NormalizedEnrollment = enrollment::normalize(kind, item, None).map_err(invalid)?;
            check_webhook(outbound, &normalized).map_err(invalid)?;
            (normalized.key.clone(), Some(normalized))
        }
    };
    if mode == BulkMode::UpdateIfMatchETag && etag.is_none() {
        return Err(invalid(FieldError::new("etag", "required in updateIfMatchETag mode")));
    }
    Ok(BulkItem { index, key, enrollment, etag })
}

/// The items of `part` whose named hubs are all linked; each other item's error goes to `errors`.
async fn linked_hubs_only(
    hubs: HubReader<'_>,
    kind: EnrollmentKind,
    part: Vec<BulkItem>,
    errors: &mut Vec<(usize, Value)>,
) -> Result<Vec<BulkItem>, ApiError> {
    let mut named: Vec<String> =
        part.iter().filter_map(|i| i.enrollment.as_ref()).flat_map(|e| e.named_hubs.iter().cloned()).collect();
    named.sort();
    named.dedup();
    let unknown = hubs.unknown(&named).await.map_err(ApiError::internal)?;
    let mut linked = Vec::with_capacity(part.len());
    for item in part {
        match item.enrollment.as_ref().and_then(|e| Some((e, e.named_hubs.iter().find(|h| unknown.contains(h))?))) {
            Some((e, hub)) => errors.push((
                item.index,
                item_error(
                    kind,
                    item.index,
                    &e.id,
                    ErrorCode::InvalidField,
                    format!("iotHubs: hub {hub:?} is not linked"),
                ),
            )),
            None => linked.push(item),
        }
    }
    Ok(linked)
}

/// How a bulk call's documents become its items, a part at a time.
struct Parsing<'a> {
    kind: EnrollmentKind,
    mode: BulkMode,
    outbound: &'a zerotouch_outbound::OutboundPolicy,
    hubs: HubReader<'a>,
}

impl Parsing<'_> {
    /// The next part of at most [`BULK_PART`] items of `items`, each item that fails its checks reported in
    /// `errors` instead; `None` when no item is left. It yields to the runtime every [`PARSED_BETWEEN_YIELDS`]
    /// documents: the bulk handler runs it while the store applies the part before it (`tokio::join!`, one task), so
    /// that the transaction's next statement is sent as soon as the previous one is answered, and this thread parses
    /// while the database works. With one admin's calls of 10,000 in flight one at a time, parsing and applying one
    /// after the other left half of the two cores idle (`BENCHMARKS.md`, session 29).
    async fn next_part(
        &self,
        items: &mut std::iter::Peekable<impl Iterator<Item = (usize, Box<serde_json::value::RawValue>)>>,
        errors: &mut Vec<(usize, Value)>,
    ) -> Result<Option<Vec<BulkItem>>, ApiError> {
        if items.peek().is_none() {
            return Ok(None);
        }
        let mut part = Vec::with_capacity(BULK_PART);
        for (index, item) in items.by_ref().take(BULK_PART) {
            if index % PARSED_BETWEEN_YIELDS == 0 {
                tokio::task::yield_now().await;
            }
            match parse_item(self.kind, self.mode, self.outbound, index, BulkBody::parse(&item)?) {
                Ok(item) => part.push(item),
                Err(error) => errors.push((index, error)),
            }
        }
        linked_hubs_only(self.hubs, self.kind, part, errors).await.map(Some)
    }
}

/// A bulk call's body: its members as text, each read when its turn comes.
type BulkBody = RawMembers<BULK_BODY_LIMIT>;

/// How many documents a bulk call's parsing takes between yields to the store's work on the part before them: about
/// a third of a millisecond of parsing.
const PARSED_BETWEEN_YIELDS: usize = 64;

/// `POST /{collection}`: a bulk call of up to 10,000 items; each failure is reported with its index.
pub(super) async fn bulk<K: Kind>(
    caller: Caller<EnrollmentWrite>,
    hubs: web::Data<crate::hubs::Hubs>,
    body: BulkBody,
) -> Result<HttpResponse, ApiError> {
    let kind = K::KIND;
    let Some(mut body) = body.0 else {
        return Err(ApiError::MalformedBody(format!(
            "the body must be an object with \"mode\" and \"{}\"",
            K::COLLECTION
        )));
    };
    let documents = body.remove(K::COLLECTION);
    // Every other member is small: read whole first, so that what the parser refuses (a number out of range,
    // nesting too deep) is refused as malformed before anything else is judged.
    let mut others = std::collections::BTreeMap::new();
    for (name, raw) in body {
        others.insert(name, BulkBody::parse::<Value>(&raw)?);
    }
    let mode: BulkMode = zerotouch_wire::field::decode(others.remove("mode").unwrap_or(Value::Null)).map_err(|e| {
        FieldError::new("mode", format!("{}; expected create, update, updateIfMatchETag or delete", e.problem))
    })?;
    // The documents stay text until each is read, one at a time.
    let Some(documents) = documents else {
        return Err(FieldError::new(K::COLLECTION, "an array of documents is required").into());
    };
    let Ok(items) = serde_json::from_str::<Vec<Box<serde_json::value::RawValue>>>(documents.get()) else {
        // Not an array, or an array whose text is not JSON: the whole parser says which.
        return match BulkBody::parse::<Value>(&documents)? {
            Value::Array(_) => Err(ApiError::MalformedBody("the body is not valid JSON".into())),
            _ => Err(FieldError::new(K::COLLECTION, "an array of documents is required").into()),
        };
    };
    drop(documents);
    if let Some(unknown) = others.keys().next() {
        return Err(FieldError::new(unknown.as_str(), "unknown field").into());
    }
    if items.is_empty() || items.len() > MAX_BULK_ITEMS {
        return Err(FieldError::new(
            K::COLLECTION,
            format!("must hold 1 to {MAX_BULK_ITEMS} items (got {})", items.len()),
        )
        .into());
    }

    // One transaction, applied a part at a time: at most two parts' documents are held parsed, the one the database
    // applies and the next, parsed meanwhile (`next_part`).
    let store_error = |e| ApiError::from_store(e, &format!("the bulk call to {}", K::COLLECTION));
    let mut call = caller.enrollment_writer().begin_bulk(kind, mode).await.map_err(store_error)?;
    let mut errors: Vec<(usize, Value)> = Vec::new();
    let mut items = items.into_iter().enumerate().peekable();
    let parsing = Parsing { kind, mode, outbound: hubs.outbound(), hubs: caller.hubs() };
    let mut next = parsing.next_part(&mut items, &mut errors).await?;
    while let Some(part) = next {
        let ids: std::collections::HashMap<usize, String> = part
            .iter()
            .map(|i| (i.index, i.enrollment.as_ref().map_or_else(|| i.key.clone(), |e| e.id.clone())))
            .collect();
        let (applied, parsed) = tokio::join!(call.apply(part), parsing.next_part(&mut items, &mut errors));
        let failures;
        (call, failures) = applied.map_err(store_error)?;
        next = parsed?;
        for (index, failure) in failures {
            let id = ids.get(&index).map(String::as_str).unwrap_or_default();
            let (code, status) = match failure {
                BulkFailure::Conflict(why) => (ErrorCode::Conflict, why),
                BulkFailure::NotFound => (ErrorCode::NotFound, format!("the {} does not exist", kind.noun())),
                BulkFailure::PreconditionFailed => {
                    (ErrorCode::PreconditionFailed, "the etag does not match the current one".to_owned())
                }
            };
            errors.push((index, item_error(kind, index, id, code, status)));
        }
    }
    call.commit().await.map_err(store_error)?;
    errors.sort_by_key(|(index, _)| *index);
    let errors: Vec<Value> = errors.into_iter().map(|(_, e)| e).collect();
    Ok(HttpResponse::Ok().json(json!({ "isSuccessful": errors.is_empty(), "errors": errors })))
}
