//! The admin API, route by route, as an operator's scripts use it, on SQLite and on PostgreSQL.
//!
//! Every scenario is written once as `async fn scenario(backend)` and run by two `#[tokio::test]` wrappers. Each
//! starts its own server (fresh data dir and database), so the scenarios run in parallel without sharing state.
//! Together they cover: enrollments and enrollment groups (PUT/GET/DELETE, keys, etags and `If-Match`, ids that
//! differ only in case), paging with continuation tokens, bulk calls in every mode with per-item errors, hubs,
//! registration states, the audit log, and the probes and metrics; `every_route_round_trips` checks, from the
//! service's own request counters, that each route of `zerotouch_server::http::admin::ROUTES` answered a 2xx.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::{BTreeMap, HashMap};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use chrono::{DateTime, SecondsFormat, Utc};
use reqwest::header::HeaderMap;
use reqwest::{Method, Response};
use serde_json::{Value, json};
use zerotouch_store::{RegistrationRecord, Store};
use zerotouch_tests::{Api, Backend, Server};

// ---------------------------------------------------------------------------------------------------------------
// Helpers

/// The two enrollment kinds, by the names the API uses for them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Individual,
    Group,
}

impl Kind {
    fn collection(self) -> &'static str {
        match self {
            Self::Individual => "enrollments",
            Self::Group => "enrollmentGroups",
        }
    }

    fn id_field(self) -> &'static str {
        match self {
            Self::Individual => "registrationId",
            Self::Group => "enrollmentGroupId",
        }
    }

    fn item_type(self) -> &'static str {
        match self {
            Self::Individual => "enrollment",
            Self::Group => "enrollmentGroup",
        }
    }

    /// A minimal symmetric-key document with id `id`.
    fn doc(self, id: &str) -> Value {
        json!({ self.id_field(): id, "attestation": {"type": "symmetricKey"} })
    }

    fn path(self, id: &str) -> String {
        format!("/{}/{id}", self.collection())
    }

    fn query_body(self) -> Value {
        json!({"query": format!("SELECT * FROM {}", self.collection())})
    }
}

/// The `ETag` header without its quotes.
fn etag_header(headers: &HeaderMap) -> String {
    let raw = headers.get("etag").expect("an ETag header").to_str().unwrap();
    raw.strip_prefix('"').and_then(|t| t.strip_suffix('"')).expect("a quoted ETag").to_owned()
}

/// Asserts the status and returns the headers and the JSON body.
async fn expect_json(response: Response, status: u16) -> (HeaderMap, Value) {
    let actual = response.status().as_u16();
    let headers = response.headers().clone();
    let text = response.text().await.unwrap();
    assert_eq!(actual, status, "unexpected status; body: {text}");
    let body = serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"));
    (headers, body)
}

/// Asserts a 200 with a JSON body whose `etag` equals the `ETag` header; returns the body and the etag.
async fn expect_resource(response: Response) -> (Value, String) {
    let (headers, body) = expect_json(response, 200).await;
    let etag = etag_header(&headers);
    assert_eq!(body["etag"], etag.as_str(), "the body's etag is the ETag header: {body}");
    (body, etag)
}

/// Asserts an Azure error answer (`ProvisioningServiceErrorDetails` and `x-ms-error-code`); returns its body.
async fn expect_error(response: Response, status: u16, code: u64) -> Value {
    let (headers, body) = expect_json(response, status).await;
    assert_eq!(body["errorCode"], code, "{body}");
    assert_eq!(headers.get("x-ms-error-code").and_then(|v| v.to_str().ok()), Some(code.to_string().as_str()));
    assert!(body["trackingId"].as_str().is_some_and(|t| !t.is_empty()), "trackingId: {body}");
    assert!(body["message"].as_str().is_some_and(|m| !m.is_empty()), "message: {body}");
    let at = body["timestampUtc"].as_str().expect("timestampUtc");
    DateTime::parse_from_rfc3339(at).unwrap_or_else(|e| panic!("timestampUtc {at:?}: {e}"));
    body
}

/// The enrollment and paging calls these scenarios make, on top of the kit's [`Api`].
trait Calls {
    async fn bulk(&self, kind: Kind, mode: &str, items: Vec<Value>) -> Value;
    async fn keys(&self, kind: Kind, id: &str) -> (String, String);
    async fn pages(&self, path: &str, body: Option<&Value>, page_size: u64, item_type: &str) -> Vec<Vec<Value>>;
    async fn all(&self, path: &str, body: Option<&Value>, item_type: &str) -> Vec<Value>;
    async fn all_ids(&self, kind: Kind) -> Vec<String>;
}

impl Calls for Api<'_> {
    /// A bulk call; asserts the 200 and returns the body.
    async fn bulk(&self, kind: Kind, mode: &str, items: Vec<Value>) -> Value {
        let body = json!({ "mode": mode, kind.collection(): items });
        expect_json(self.post(&format!("/{}", kind.collection()), Some(&body)).await, 200).await.1
    }

    /// The keys from `POST .../attestationmechanism`.
    async fn keys(&self, kind: Kind, id: &str) -> (String, String) {
        let path = format!("{}/attestationmechanism", kind.path(id));
        let (_, body) = expect_json(self.post(&path, None).await, 200).await;
        assert_eq!(body["type"], "symmetricKey", "{body}");
        let key =
            |name: &str| body["symmetricKey"][name].as_str().unwrap_or_else(|| panic!("{name}: {body}")).to_owned();
        (key("primaryKey"), key("secondaryKey"))
    }

    /// Follows `x-ms-continuation` from the first page to the last; checks the paging headers of every page and
    /// returns the pages. Queries (`POST .../query`) page, and so do `GET /audit`, `GET /pki/certificates` and
    /// `GET /certificateAuthorities`.
    async fn pages(&self, path: &str, body: Option<&Value>, page_size: u64, item_type: &str) -> Vec<Vec<Value>> {
        let method = if path.ends_with("/query") { Method::POST } else { Method::GET };
        let mut pages = Vec::new();
        let mut continuation: Option<String> = None;
        loop {
            let mut request = self.request(method.clone(), path).header("x-ms-max-item-count", page_size.to_string());
            if let Some(token) = &continuation {
                request = request.header("x-ms-continuation", token);
            }
            if let Some(body) = body {
                request = request.json(body);
            }
            let (headers, items) = expect_json(request.send().await.unwrap(), 200).await;
            let header = |name: &str| headers.get(name).map(|v| v.to_str().unwrap().to_owned());
            assert_eq!(header("x-ms-item-type").as_deref(), Some(item_type), "page {}", pages.len());
            let items = items.as_array().expect("a page is an array").clone();
            assert!(items.len() as u64 <= page_size, "page {} holds {} items", pages.len(), items.len());
            pages.push(items);
            continuation = header("x-ms-continuation");
            if continuation.is_none() {
                return pages;
            }
            assert!(pages.len() < 10_000, "paging does not end");
        }
    }

    /// Every item of a query, all pages.
    async fn all(&self, path: &str, body: Option<&Value>, item_type: &str) -> Vec<Value> {
        self.pages(path, body, 1000, item_type).await.into_iter().flatten().collect()
    }

    /// Every id of `kind`, via the query route.
    async fn all_ids(&self, kind: Kind) -> Vec<String> {
        let path = format!("/{}/query", kind.collection());
        let items = self.all(&path, Some(&kind.query_body()), kind.item_type()).await;
        items.iter().map(|i| i[kind.id_field()].as_str().unwrap().to_owned()).collect()
    }
}

/// `n` random bytes as base64 (a key a client brings).
fn random_key(n: usize) -> String {
    let bytes: Vec<u8> = (0..n).map(|_| rand::random::<u8>()).collect();
    STANDARD.encode(bytes)
}

/// Counts each string, to check "every id exactly once".
fn counts(ids: impl IntoIterator<Item = String>) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for id in ids {
        *counts.entry(id).or_default() += 1;
    }
    counts
}

// ---------------------------------------------------------------------------------------------------------------
// Enrollments and enrollment groups: one resource at a time

async fn single_resource_round_trips(backend: Backend, kind: Kind) {
    let server = Server::start(backend).await.unwrap();
    let api = Api::new(&server, "operator");
    let id_field = kind.id_field();

    // Create with generated keys: PUT answers the document, with the etag in the body and the header, no keys.
    let (created, etag) = expect_resource(api.put(&kind.path("Device-Alpha"), &kind.doc("Device-Alpha")).await).await;
    assert_eq!(created[id_field], "Device-Alpha");
    assert_eq!(created["attestation"], json!({"type": "symmetricKey"}), "no keys in the PUT answer");
    assert_eq!(created["provisioningStatus"], "enabled");
    assert!(created["createdDateTimeUtc"].is_string() && created["lastUpdatedDateTimeUtc"].is_string());

    // GET by another spelling of the id finds it, spelled as created.
    let (read, read_etag) = expect_resource(api.get(&kind.path("device-ALPHA")).await).await;
    assert_eq!(read_etag, etag);
    assert_eq!(read[id_field], "Device-Alpha");
    assert_eq!(read["attestation"], json!({"type": "symmetricKey"}), "no keys in GET");

    // The keys were generated (64 random bytes each), and only attestationmechanism shows them.
    let (primary, secondary) = api.keys(kind, "DEVICE-alpha").await;
    assert_eq!(STANDARD.decode(&primary).unwrap().len(), 64);
    assert_eq!(STANDARD.decode(&secondary).unwrap().len(), 64);
    assert_ne!(primary, secondary);
    let get_text = api.get(&kind.path("Device-Alpha")).await.text().await.unwrap();
    let query_path = format!("/{}/query", kind.collection());
    let query_text = api.post(&query_path, Some(&kind.query_body())).await.text().await.unwrap();
    for text in [&get_text, &query_text] {
        assert!(text.contains("Device-Alpha"), "{text}");
        assert!(!text.contains(&primary) && !text.contains(&secondary), "a key leaked: {text}");
        assert!(!text.contains("symmetricKey\":{") && !text.contains("primaryKey"), "{text}");
    }

    // Sending the GET body back (it has no keys) under If-Match, with the other case in the URL, updates the same
    // resource and keeps the keys.
    let mut changed = read.clone();
    changed["provisioningStatus"] = json!("disabled");
    let (updated, updated_etag) =
        expect_resource(api.put_if_match(&kind.path("DEVICE-ALPHA"), &changed, &etag).await).await;
    assert_ne!(updated_etag, etag, "an update changes the etag");
    assert_eq!(updated["provisioningStatus"], "disabled");
    assert_eq!(updated[id_field], "Device-Alpha");
    assert_eq!(updated["createdDateTimeUtc"], created["createdDateTimeUtc"]);
    assert_eq!(api.keys(kind, "Device-Alpha").await, (primary.clone(), secondary.clone()));
    assert_eq!(api.all_ids(kind).await, vec!["Device-Alpha".to_owned()], "one resource, whatever the case");

    // A stale If-Match: 412, and the resource is unchanged.
    let mut stale_change = updated.clone();
    stale_change["provisioningStatus"] = json!("enabled");
    let error =
        expect_error(api.put_if_match(&kind.path("Device-Alpha"), &stale_change, &etag).await, 412, 412001).await;
    assert!(error["message"].as_str().unwrap().contains("If-Match"), "{error}");
    expect_error(api.delete(&kind.path("Device-Alpha"), Some(&etag)).await, 412, 412001).await;
    let (after, after_etag) = expect_resource(api.get(&kind.path("Device-Alpha")).await).await;
    assert_eq!(after_etag, updated_etag);
    assert_eq!(after, updated, "a refused write changes nothing");

    // If-Match: * on a missing id is refused and creates nothing.
    expect_error(api.put_if_match(&kind.path("Never-Made"), &kind.doc("Never-Made"), "*").await, 412, 412001).await;
    expect_error(api.get(&kind.path("Never-Made")).await, 404, 404202).await;
    // ... while on an existing id it matches.
    let (_, star_etag) = expect_resource(api.put_if_match(&kind.path("Device-Alpha"), &updated, "*").await).await;

    // Keys the client gives are kept as given.
    let (given_primary, given_secondary) = (random_key(32), random_key(48));
    let mut with_keys = kind.doc("Given-Keys");
    with_keys["attestation"]["symmetricKey"] = json!({"primaryKey": given_primary, "secondaryKey": given_secondary});
    let (given, _) = expect_resource(api.put(&kind.path("Given-Keys"), &with_keys).await).await;
    assert_eq!(given["attestation"], json!({"type": "symmetricKey"}), "given keys are not echoed: {given}");
    assert_eq!(api.keys(kind, "given-keys").await, (given_primary, given_secondary));

    // DELETE answers 204, and then the id is gone with an Azure 404.
    let deleted = api.delete(&kind.path("device-alpha"), Some(&star_etag)).await;
    assert_eq!(deleted.status(), 204);
    assert!(deleted.text().await.unwrap().is_empty(), "204 has no body");
    let error = expect_error(api.get(&kind.path("Device-Alpha")).await, 404, 404202).await;
    assert!(error["message"].as_str().unwrap().to_ascii_lowercase().contains("device-alpha"), "{error}");
    expect_error(api.delete(&kind.path("Device-Alpha"), None).await, 404, 404202).await;
    let path = format!("{}/attestationmechanism", kind.path("Device-Alpha"));
    expect_error(api.post(&path, None).await, 404, 404202).await;
    assert_eq!(api.all_ids(kind).await, vec!["Given-Keys".to_owned()]);
}

async fn enrollments_round_trip(backend: Backend) {
    single_resource_round_trips(backend, Kind::Individual).await;
}

/// PUT/GET/DELETE of an enrollment: etags, generated and given keys, If-Match, case-insensitive ids, 404 after delete.
#[tokio::test]
async fn enrollments_round_trip_sqlite() {
    enrollments_round_trip(Backend::Sqlite).await;
}

/// PUT/GET/DELETE of an enrollment, on PostgreSQL.
#[tokio::test]
async fn enrollments_round_trip_postgres() {
    enrollments_round_trip(Backend::Postgres).await;
}

async fn enrollment_groups_round_trip(backend: Backend) {
    single_resource_round_trips(backend, Kind::Group).await;
}

/// PUT/GET/DELETE of an enrollment group, with the same guarantees as enrollments.
#[tokio::test]
async fn enrollment_groups_round_trip_sqlite() {
    enrollment_groups_round_trip(Backend::Sqlite).await;
}

/// PUT/GET/DELETE of an enrollment group, on PostgreSQL.
#[tokio::test]
async fn enrollment_groups_round_trip_postgres() {
    enrollment_groups_round_trip(Backend::Postgres).await;
}

// ---------------------------------------------------------------------------------------------------------------
// Paging

async fn paging_lists_every_item_once_for(backend: Backend, kind: Kind) {
    let server = Server::start(backend).await.unwrap();
    let api = Api::new(&server, "operator");
    let ids: Vec<String> = (0..2500).map(|i| format!("Paged-{i:05}")).collect();
    for chunk in ids.chunks(1000) {
        let items = chunk.iter().map(|id| kind.doc(id)).collect();
        let result = api.bulk(kind, "create", items).await;
        assert_eq!(result, json!({"isSuccessful": true, "errors": []}));
    }

    let path = format!("/{}/query", kind.collection());
    let pages = api.pages(&path, Some(&kind.query_body()), 1000, kind.item_type()).await;
    let sizes: Vec<usize> = pages.iter().map(Vec::len).collect();
    assert_eq!(sizes, [1000, 1000, 500], "full pages, then the rest; the last one has no continuation");
    let seen = counts(pages.iter().flatten().map(|i| i[kind.id_field()].as_str().unwrap().to_owned()));
    assert_eq!(seen.len(), 2500);
    assert!(seen.values().all(|&n| n == 1), "an id was listed twice");
    assert!(ids.iter().all(|id| seen.contains_key(id)), "an id is missing");
    for item in pages.iter().flatten() {
        assert!(item["etag"].is_string(), "{item}");
        assert!(item["attestation"].get("symmetricKey").is_none(), "no keys in query results: {item}");
    }

    // A page size the service does not take, and a continuation token it did not issue, are 400s.
    let request = api.request(Method::POST, &path).json(&kind.query_body());
    expect_error(request.header("x-ms-max-item-count", "1001").send().await.unwrap(), 400, 400005).await;
    let request = api.request(Method::POST, &path).json(&kind.query_body());
    expect_error(request.header("x-ms-continuation", "%%%").send().await.unwrap(), 400, 400005).await;
}

async fn paging_enrollments(backend: Backend) {
    paging_lists_every_item_once_for(backend, Kind::Individual).await;
}

/// 2,500 enrollments created in bulk calls of 1,000 page out 1,000 at a time, each id exactly once.
#[tokio::test]
async fn paging_enrollments_sqlite() {
    paging_enrollments(Backend::Sqlite).await;
}

/// Paging 2,500 enrollments, on PostgreSQL.
#[tokio::test]
async fn paging_enrollments_postgres() {
    paging_enrollments(Backend::Postgres).await;
}

async fn paging_enrollment_groups(backend: Backend) {
    paging_lists_every_item_once_for(backend, Kind::Group).await;
}

/// 2,500 enrollment groups page out the same way, with `x-ms-item-type: enrollmentGroup`.
#[tokio::test]
async fn paging_enrollment_groups_sqlite() {
    paging_enrollment_groups(Backend::Sqlite).await;
}

/// Paging 2,500 enrollment groups, on PostgreSQL.
#[tokio::test]
async fn paging_enrollment_groups_postgres() {
    paging_enrollment_groups(Backend::Postgres).await;
}

// ---------------------------------------------------------------------------------------------------------------
// Bulk calls

/// Asserts that a bulk answer failed exactly at `expected` (index, id, errorCode).
fn assert_bulk_errors(kind: Kind, result: &Value, expected: &[(usize, &str, u64)]) {
    assert_eq!(result["isSuccessful"], false, "{result}");
    let errors = result["errors"].as_array().expect("errors");
    let actual: Vec<(usize, &str, u64)> = errors
        .iter()
        .map(|e| {
            let status = e["errorStatus"].as_str().unwrap_or_default();
            assert!(!status.is_empty(), "errorStatus says why: {e}");
            (
                usize::try_from(e["index"].as_u64().expect("index")).unwrap(),
                e[kind.id_field()].as_str().unwrap_or_else(|| panic!("{} in {e}", kind.id_field())),
                e["errorCode"].as_u64().expect("errorCode"),
            )
        })
        .collect();
    assert_eq!(actual, expected, "{result}");
}

async fn bulk_calls_report_each_failed_item_for(backend: Backend, kind: Kind) {
    let server = Server::start(backend).await.unwrap();
    let api = Api::new(&server, "operator");
    let (_, existing_etag) =
        expect_resource(api.put(&kind.path("Existing-One"), &kind.doc("Existing-One")).await).await;

    // A call is applied a part at a time in one transaction: an item that cannot be read, in its last part, refuses
    // the whole call, and the parts before it are not applied.
    let undone: Vec<String> = (0..2500).map(|i| kind.doc(&format!("undone-{i:04}")).to_string()).collect();
    let mut text = format!("{{\"mode\": \"create\", \"{}\": [{}]}}", kind.collection(), undone.join(","));
    text = text.replacen("\"undone-2400\"", "\"undone-2400\", \"x\": 1e400", 1);
    let request = api.request(Method::POST, &format!("/{}", kind.collection()));
    let response = request.header("content-type", "application/json").body(text).send().await.unwrap();
    let error = expect_error(response, 400, 400001).await;
    assert!(error["message"].as_str().unwrap().contains("number out of range"), "{error}");
    assert_eq!(api.all_ids(kind).await, ["Existing-One"], "nothing of the refused call was applied");

    // 2,500 items, in three parts, five of them bad: a duplicate in a later part than the first occurrence, a hub
    // that is not linked, an id that exists in the last part.
    let mut items: Vec<Value> = (0..2500).map(|i| kind.doc(&format!("bulk-{i:04}"))).collect();
    items[17] = kind.doc("bad id!");
    items[256]["attestation"]["symmetricKey"] = json!({"primaryKey": "this is not base64!"});
    items[1512] = kind.doc("bulk-0100");
    items[1800]["iotHubs"] = json!(["nowhere.example.com"]);
    items[2499] = kind.doc("existing-one");
    let result = api.bulk(kind, "create", items).await;
    assert_bulk_errors(
        kind,
        &result,
        &[
            (17, "bad id!", 400002),
            (256, "bulk-0256", 400002),
            (1512, "bulk-0100", 409001),
            (1800, "bulk-1800", 400002),
            (2499, "existing-one", 409001),
        ],
    );
    let errors = result["errors"].as_array().unwrap();
    assert!(errors[0]["errorStatus"].as_str().unwrap().contains(kind.id_field()), "{}", errors[0]);
    assert!(errors[1]["errorStatus"].as_str().unwrap().contains("primaryKey"), "{}", errors[1]);
    assert!(errors[3]["errorStatus"].as_str().unwrap().contains("nowhere.example.com"), "{}", errors[3]);

    // The 2,495 good items exist, the bad ones do not, and the existing one is untouched.
    let good: Vec<String> =
        (0..2499).filter(|i| ![17, 256, 1512, 1800].contains(i)).map(|i| format!("bulk-{i:04}")).collect();
    assert_eq!(good.len(), 2495);
    let listed = counts(api.all_ids(kind).await);
    assert_eq!(listed.len(), 2496, "2,495 created and the one that existed");
    assert!(good.iter().all(|id| listed.get(id) == Some(&1)), "every good item was created once");
    assert!(listed.contains_key("Existing-One"));
    let (_, etag) = expect_resource(api.get(&kind.path("Existing-One")).await).await;
    assert_eq!(etag, existing_etag, "create mode leaves an existing resource alone");
    expect_error(api.get(&kind.path("bulk-0256")).await, 404, 404202).await;
    expect_error(api.get(&kind.path("bulk-1800")).await, 404, 404202).await;

    // updateIfMatchETag: items whose etag matches are replaced (keys kept); a stale etag and a missing id are 412s.
    let keys_before = api.keys(kind, "bulk-0000").await;
    let mut etags = Vec::new();
    for i in 0..5 {
        etags.push(expect_resource(api.get(&kind.path(&format!("bulk-{i:04}"))).await).await.1);
    }
    let mut updates: Vec<Value> = (0..5)
        .map(|i| {
            let mut doc = kind.doc(&format!("bulk-{i:04}"));
            doc["provisioningStatus"] = json!("disabled");
            doc["etag"] = json!(etags[i]);
            doc
        })
        .collect();
    updates[3]["etag"] = json!(existing_etag);
    let mut missing = kind.doc("bulk-missing");
    missing["etag"] = json!(etags[0]);
    updates.push(missing);
    let result = api.bulk(kind, "updateIfMatchETag", updates).await;
    assert_bulk_errors(kind, &result, &[(3, "bulk-0003", 412001), (5, "bulk-missing", 412001)]);
    for (i, old_etag) in etags.iter().enumerate() {
        let (doc, etag) = expect_resource(api.get(&kind.path(&format!("bulk-{i:04}"))).await).await;
        if i == 3 {
            assert_eq!((doc["provisioningStatus"].as_str(), &etag), (Some("enabled"), old_etag));
        } else {
            assert_eq!(doc["provisioningStatus"], "disabled", "{doc}");
            assert_ne!(&etag, old_etag, "a replaced item has a new etag");
        }
    }
    expect_error(api.get(&kind.path("bulk-missing")).await, 404, 404202).await;
    assert_eq!(api.keys(kind, "bulk-0000").await, keys_before, "an update without keys keeps them");

    // update: replaces what exists (keeping its keys) and creates what does not.
    let keys_5 = api.keys(kind, "bulk-0005").await;
    let mut replace = kind.doc("BULK-0005");
    replace["provisioningStatus"] = json!("disabled");
    let result = api.bulk(kind, "update", vec![replace, kind.doc("bulk-new")]).await;
    assert_eq!(result, json!({"isSuccessful": true, "errors": []}));
    let (doc, _) = expect_resource(api.get(&kind.path("bulk-0005")).await).await;
    assert_eq!(doc["provisioningStatus"], "disabled");
    assert_eq!(api.keys(kind, "bulk-0005").await, keys_5);
    expect_resource(api.get(&kind.path("bulk-new")).await).await;

    // delete: by id, with an etag that must match, and a missing id.
    let (_, etag_2) = expect_resource(api.get(&kind.path("bulk-0002")).await).await;
    let deletes = vec![
        json!({ kind.id_field(): "BULK-0000" }),
        json!({ kind.id_field(): "bulk-0001", "etag": existing_etag }),
        json!({ kind.id_field(): "no-such-item" }),
        json!({ kind.id_field(): "bulk-0002", "etag": etag_2 }),
    ];
    let result = api.bulk(kind, "delete", deletes).await;
    assert_bulk_errors(kind, &result, &[(1, "bulk-0001", 412001), (2, "no-such-item", 404202)]);
    expect_error(api.get(&kind.path("bulk-0000")).await, 404, 404202).await;
    expect_resource(api.get(&kind.path("bulk-0001")).await).await;
    expect_error(api.get(&kind.path("bulk-0002")).await, 404, 404202).await;
    assert_eq!(api.all_ids(kind).await.len(), 2495, "2,496, one more by update, two deleted");

    // A call without failures says so.
    let result = api.bulk(kind, "delete", vec![json!({ kind.id_field(): "bulk-0004" })]).await;
    assert_eq!(result, json!({"isSuccessful": true, "errors": []}));
}

async fn bulk_enrollments(backend: Backend) {
    bulk_calls_report_each_failed_item_for(backend, Kind::Individual).await;
}

/// A bulk create of 1,000 enrollments with four bad items reports exactly those and creates the other 996;
/// update, updateIfMatchETag and delete modes apply what they can and report stale etags and missing ids by index.
#[tokio::test]
async fn bulk_enrollments_sqlite() {
    bulk_enrollments(Backend::Sqlite).await;
}

/// Bulk enrollment calls in every mode, on PostgreSQL.
#[tokio::test]
async fn bulk_enrollments_postgres() {
    bulk_enrollments(Backend::Postgres).await;
}

async fn bulk_enrollment_groups(backend: Backend) {
    bulk_calls_report_each_failed_item_for(backend, Kind::Group).await;
}

/// The same bulk calls on enrollment groups, whose errors name `enrollmentGroupId`.
#[tokio::test]
async fn bulk_enrollment_groups_sqlite() {
    bulk_enrollment_groups(Backend::Sqlite).await;
}

/// Bulk enrollment group calls in every mode, on PostgreSQL.
#[tokio::test]
async fn bulk_enrollment_groups_postgres() {
    bulk_enrollment_groups(Backend::Postgres).await;
}

// ---------------------------------------------------------------------------------------------------------------
// Hubs

fn hub(host: &str, weight: Option<i64>) -> Value {
    let mut doc = json!({"hostName": host, "kind": "none"});
    if let Some(weight) = weight {
        doc["allocationWeight"] = json!(weight);
    }
    doc
}

async fn hubs_round_trip(backend: Backend) {
    let server = Server::start(backend).await.unwrap();
    let owner = Api::new(&server, "owner");

    let (created, etag_a) =
        expect_resource(owner.put("/hubs/hub-a.example.com", &hub("hub-a.example.com", Some(250))).await).await;
    assert_eq!(created["hostName"], "hub-a.example.com");
    assert_eq!(created["allocationWeight"], 250);
    assert_eq!(created["applyAllocationPolicy"], true);
    let (read, read_etag) = expect_resource(owner.get("/hubs/hub-a.example.com").await).await;
    assert_eq!((read, read_etag), (created, etag_a.clone()));
    let (hub_b, etag_b) =
        expect_resource(owner.put("/hubs/hub-b.example.com", &hub("hub-b.example.com", None)).await).await;
    assert_eq!(hub_b["allocationWeight"], 100, "the default weight");

    let (_, list) = expect_json(owner.get("/hubs").await, 200).await;
    let mut names: Vec<&str> = list.as_array().unwrap().iter().map(|h| h["hostName"].as_str().unwrap()).collect();
    names.sort_unstable();
    assert_eq!(names, ["hub-a.example.com", "hub-b.example.com"]);

    // Weights outside 1..=1000 are refused, naming the field; the bounds are accepted.
    for weight in [0, 1001, -1] {
        let error =
            expect_json(owner.put("/hubs/hub-c.example.com", &hub("hub-c.example.com", Some(weight))).await, 400)
                .await
                .1;
        assert!(error["message"].as_str().unwrap().contains("allocationWeight"), "weight {weight}: {error}");
    }
    expect_error(owner.get("/hubs/hub-c.example.com").await, 404, 404202).await;
    let (_, etag_a) = expect_resource(
        owner.put_if_match("/hubs/hub-a.example.com", &hub("hub-a.example.com", Some(1000)), &etag_a).await,
    )
    .await;
    let (updated, _) = expect_resource(
        owner.put_if_match("/hubs/hub-a.example.com", &hub("hub-a.example.com", Some(1)), &etag_a).await,
    )
    .await;
    assert_eq!(updated["allocationWeight"], 1);
    expect_error(
        owner.put_if_match("/hubs/hub-a.example.com", &hub("hub-a.example.com", Some(5)), &etag_a).await,
        412,
        412001,
    )
    .await;

    // An enrollment may name linked hubs only.
    let operator = Api::new(&server, "operator");
    let mut doc = Kind::Individual.doc("hubbed");
    doc["iotHubs"] = json!(["hub-z.example.com"]);
    let error = expect_error(operator.put("/enrollments/hubbed", &doc).await, 400, 400002).await;
    let message = error["message"].as_str().unwrap();
    assert!(message.contains("iotHubs") && message.contains("hub-z.example.com"), "{error}");
    expect_error(operator.get("/enrollments/hubbed").await, 404, 404202).await;
    doc["iotHubs"] = json!(["hub-a.example.com"]);
    let (enrolled, _) = expect_resource(operator.put("/enrollments/hubbed", &doc).await).await;
    assert_eq!(enrolled["iotHubs"], json!(["hub-a.example.com"]));

    // DELETE under If-Match.
    expect_error(owner.delete("/hubs/hub-b.example.com", Some(&etag_a)).await, 412, 412001).await;
    assert_eq!(owner.delete("/hubs/hub-b.example.com", Some(&etag_b)).await.status(), 204);
    expect_error(owner.get("/hubs/hub-b.example.com").await, 404, 404202).await;
    let (_, list) = expect_json(owner.get("/hubs").await, 200).await;
    let names: Vec<&str> = list.as_array().unwrap().iter().map(|h| h["hostName"].as_str().unwrap()).collect();
    assert_eq!(names, ["hub-a.example.com"]);
}

/// Hubs: PUT/GET/list/DELETE, weights checked, and enrollments may only name linked hubs.
#[tokio::test]
async fn hubs_round_trip_sqlite() {
    hubs_round_trip(Backend::Sqlite).await;
}

/// Hubs round-trip, on PostgreSQL.
#[tokio::test]
async fn hubs_round_trip_postgres() {
    hubs_round_trip(Backend::Postgres).await;
}

// ---------------------------------------------------------------------------------------------------------------
// Registrations

/// A registration state as a device's registration would leave it.
fn registration(id: &str, group_key: Option<&str>) -> RegistrationRecord {
    zerotouch_store::test_support::assigned_registration(id, group_key, id, "hub-a.example.com")
}

async fn registrations_round_trip(backend: Backend) {
    let server = Server::start(backend).await.unwrap();
    let api = Api::new(&server, "operator");
    expect_resource(api.put("/enrollmentGroups/Factory-Line", &Kind::Group.doc("Factory-Line")).await).await;
    expect_resource(api.put("/enrollmentGroups/Other-Line", &Kind::Group.doc("Other-Line")).await).await;

    let store = Store::connect(&server.database_url).await.unwrap();
    let mut etags = BTreeMap::new();
    for i in 0..5 {
        let saved =
            store.registrations().save(registration(&format!("Sensor-{i}"), Some("factory-line"))).await.unwrap();
        etags.insert(saved.registration_id, saved.etag);
    }
    store.registrations().save(registration("Stranger-1", Some("other-line"))).await.unwrap();
    store.registrations().save(registration("Loner-1", None)).await.unwrap();
    store.close().await.unwrap();

    let (state, etag) = expect_resource(api.get("/registrations/sensor-0").await).await;
    assert_eq!(etag, etags["Sensor-0"]);
    assert_eq!(state["registrationId"], "Sensor-0");
    assert_eq!(state["status"], "assigned");
    assert_eq!(state["assignedHub"], "hub-a.example.com");
    assert_eq!(state["deviceId"], "Sensor-0");
    assert!(state["createdDateTimeUtc"].is_string() && state["lastUpdatedDateTimeUtc"].is_string(), "{state}");

    // The group's registrations, two per page: only its own, each once.
    let pages = api.pages("/registrations/FACTORY-LINE/query", None, 2, "deviceRegistration").await;
    assert_eq!(pages.iter().map(Vec::len).collect::<Vec<_>>(), [2, 2, 1]);
    let seen = counts(pages.iter().flatten().map(|r| r["registrationId"].as_str().unwrap().to_owned()));
    assert_eq!(seen, etags.keys().map(|id| (id.clone(), 1)).collect::<HashMap<_, _>>());
    let others = api.all("/registrations/other-line/query", None, "deviceRegistration").await;
    assert_eq!(others.len(), 1);
    assert_eq!(others[0]["registrationId"], "Stranger-1");
    expect_error(api.post("/registrations/no-such-group/query", None).await, 404, 404202).await;

    // DELETE under If-Match.
    expect_error(api.delete("/registrations/Sensor-1", Some(&etags["Sensor-0"])).await, 412, 412001).await;
    expect_resource(api.get("/registrations/Sensor-1").await).await;
    assert_eq!(api.delete("/registrations/SENSOR-1", Some(&etags["Sensor-1"])).await.status(), 204);
    expect_error(api.get("/registrations/Sensor-1").await, 404, 404202).await;
    expect_error(api.delete("/registrations/Sensor-1", None).await, 404, 404202).await;
    let remaining = api.all("/registrations/factory-line/query", None, "deviceRegistration").await;
    assert_eq!(remaining.len(), 4);
    assert!(remaining.iter().all(|r| r["registrationId"] != "Sensor-1"));
}

/// Registration states: GET by id, the paged query of a group, DELETE under If-Match.
#[tokio::test]
async fn registrations_round_trip_sqlite() {
    registrations_round_trip(Backend::Sqlite).await;
}

/// Registration states, on PostgreSQL.
#[tokio::test]
async fn registrations_round_trip_postgres() {
    registrations_round_trip(Backend::Postgres).await;
}

// ---------------------------------------------------------------------------------------------------------------
// Audit

fn find_event<'e>(events: &'e [Value], action: &str, resource_type: &str, resource_id: &str) -> &'e Value {
    let matches: Vec<&Value> = events
        .iter()
        .filter(|e| e["action"] == action && e["resourceType"] == resource_type && e["resourceId"] == resource_id)
        .collect();
    assert_eq!(matches.len(), 1, "one {action} of {resource_type} {resource_id} in {events:#?}");
    matches[0]
}

async fn audit_lists_changes(backend: Backend) {
    let server = Server::start(backend).await.unwrap();
    let token = |role: &str, subject: &str| {
        zerotouch_tests::admin_token(&server.data_dir, &["--role", role, "--subject", subject]).unwrap()
    };
    let alice = Api::with_token(&server, token("operator", "alice"));
    let olivia = Api::with_token(&server, token("owner", "olivia"));
    let enrollment = Kind::Individual;

    let (given_primary, given_secondary) = (random_key(32), random_key(32));
    let mut doc = enrollment.doc("Audited-1");
    doc["attestation"]["symmetricKey"] = json!({"primaryKey": given_primary, "secondaryKey": given_secondary});
    let (created, etag_1) = expect_resource(alice.put("/enrollments/Audited-1", &doc).await).await;
    let (_, etag_2) = expect_resource(alice.put_if_match("/enrollments/audited-1", &created, &etag_1).await).await;
    assert_eq!(alice.keys(enrollment, "Audited-1").await, (given_primary.clone(), given_secondary.clone()));
    let (_, hub_etag) =
        expect_resource(olivia.put("/hubs/hub-a.example.com", &hub("hub-a.example.com", None)).await).await;
    let result = alice.bulk(enrollment, "create", vec![enrollment.doc("Audited-2"), enrollment.doc("Audited-3")]).await;
    assert_eq!(result["isSuccessful"], true);
    let generated = alice.keys(enrollment, "Audited-2").await;
    let group_keys = {
        expect_resource(alice.put("/enrollmentGroups/Audited-Group", &Kind::Group.doc("Audited-Group")).await).await;
        alice.keys(Kind::Group, "Audited-Group").await
    };
    // Everything above happened before `middle`; the delete below after it.
    let middle = Utc::now().to_rfc3339_opts(SecondsFormat::Micros, true);
    assert_eq!(alice.delete("/enrollments/Audited-1", Some(&etag_2)).await.status(), 204);

    // Three to a page, to follow continuations too.
    let pages = alice.pages("/audit", None, 3, "auditEvent").await;
    assert!(pages.len() > 2, "{pages:?}");
    let events: Vec<Value> = pages.into_iter().flatten().collect();
    let create = find_event(&events, "create", "enrollment", "Audited-1");
    assert_eq!((&create["actor"], &create["role"]), (&json!("alice"), &json!("operator")));
    assert_eq!(create["etagAfter"], etag_1.as_str());
    assert!(create.get("etagBefore").is_none(), "{create}");
    let update = find_event(&events, "update", "enrollment", "Audited-1");
    assert_eq!((&update["etagBefore"], &update["etagAfter"]), (&json!(etag_1), &json!(etag_2)));
    let read_keys = find_event(&events, "readAttestationMechanism", "enrollment", "Audited-1");
    assert_eq!((&read_keys["actor"], &read_keys["role"]), (&json!("alice"), &json!("operator")));
    let delete = find_event(&events, "delete", "enrollment", "Audited-1");
    assert_eq!(delete["etagBefore"], etag_2.as_str());
    assert!(delete.get("etagAfter").is_none(), "{delete}");
    let hub_event = find_event(&events, "create", "hub", "hub-a.example.com");
    assert_eq!((&hub_event["actor"], &hub_event["role"]), (&json!("olivia"), &json!("owner")));
    assert_eq!(hub_event["etagAfter"], hub_etag.as_str());
    for id in ["Audited-2", "Audited-3"] {
        assert!(find_event(&events, "create", "enrollment", id)["etagAfter"].is_string());
    }
    find_event(&events, "create", "enrollmentGroup", "Audited-Group");
    let ids: Vec<i64> = events.iter().map(|e| e["id"].as_i64().unwrap()).collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "oldest first: {ids:?}");
    for event in &events {
        DateTime::parse_from_rfc3339(event["timestampUtc"].as_str().unwrap()).unwrap();
    }

    // No key, given or generated, and no token, anywhere in the log.
    let text = serde_json::to_string(&events).unwrap();
    for secret in [&given_primary, &given_secondary, &generated.0, &generated.1, &group_keys.0, &group_keys.1] {
        assert!(!text.contains(secret.as_str()), "a key is in the audit log");
    }
    assert!(!text.contains(alice.token()) && !text.contains(olivia.token()));

    // from/to split the log at `middle`: `from` is inclusive, `to` exclusive.
    let filtered = |query: Vec<(&'static str, String)>| {
        let request = alice.request(Method::GET, "/audit").query(&query).header("x-ms-max-item-count", "1000");
        async move { expect_json(request.send().await.unwrap(), 200).await.1.as_array().unwrap().clone() }
    };
    let after = filtered(vec![("from", middle.clone())]).await;
    assert_eq!(after.len(), 1, "{after:#?}");
    assert_eq!((&after[0]["action"], &after[0]["resourceId"]), (&json!("delete"), &json!("Audited-1")));
    let before = filtered(vec![("to", middle.clone())]).await;
    assert_eq!(before.len(), events.len() - 1);
    assert!(before.iter().all(|e| e["action"] != "delete"));
    let first = events[0]["timestampUtc"].as_str().unwrap().to_owned();
    let window = filtered(vec![("from", first.clone()), ("to", middle.clone())]).await;
    assert_eq!(window, before);
    assert!(filtered(vec![("to", first)]).await.is_empty());
    // An offset other than Z means the same instant.
    let offset = DateTime::parse_from_rfc3339(&middle)
        .unwrap()
        .with_timezone(&chrono::FixedOffset::east_opt(2 * 3600).unwrap())
        .to_rfc3339_opts(SecondsFormat::Micros, false);
    assert_eq!(filtered(vec![("from", offset)]).await, after);
    let request = alice.request(Method::GET, "/audit").query(&[("from", "yesterday")]);
    let error = expect_error(request.send().await.unwrap(), 400, 400005).await;
    assert!(error["message"].as_str().unwrap().contains("from"), "{error}");
}

/// The audit log records who changed what with the etags either side, holds no key, and filters by time.
#[tokio::test]
async fn audit_lists_changes_sqlite() {
    audit_lists_changes(Backend::Sqlite).await;
}

/// The audit log, on PostgreSQL.
#[tokio::test]
async fn audit_lists_changes_postgres() {
    audit_lists_changes(Backend::Postgres).await;
}

// ---------------------------------------------------------------------------------------------------------------
// Every route, and the probes

/// `(route, method)` -> statuses answered, from `zerotouch_http_requests_total` lines of a metrics exposition.
fn answered(metrics: &str) -> BTreeMap<(String, String), Vec<String>> {
    let mut out: BTreeMap<(String, String), Vec<String>> = BTreeMap::new();
    for line in metrics.lines() {
        let Some(rest) = line.strip_prefix("zerotouch_http_requests_total{") else { continue };
        // Label values here hold no quotes, so `key="value"` pairs split at quotes.
        let mut labels = HashMap::new();
        let mut rest = rest;
        while let Some((key, tail)) = rest.split_once("=\"") {
            let (value, tail) = tail.split_once('"').expect("a closed label value");
            labels.insert(key.trim_start_matches(',').to_owned(), value.to_owned());
            rest = tail;
            if rest.starts_with('}') {
                break;
            }
        }
        let label = |name: &str| labels.get(name).cloned().unwrap_or_else(|| panic!("no {name} in {line}"));
        out.entry((label("route"), label("method"))).or_default().push(label("status"));
    }
    out
}

async fn every_route_round_trips(backend: Backend) {
    let server = Server::start(backend).await.unwrap();
    let api = Api::new(&server, "owner");

    // The probes and the metrics need no token.
    for path in ["/healthz", "/readyz"] {
        let (_, body) = expect_json(server.client.get(server.url(path)).send().await.unwrap(), 200).await;
        assert!(body["status"].is_string(), "{path}: {body}");
    }
    let metrics = server.client.get(server.url("/metrics")).send().await.unwrap();
    assert_eq!(metrics.status(), 200);
    assert!(metrics.text().await.unwrap().contains("zerotouch_http_requests_total"));

    // One successful call of every route.
    let (_, hub_etag) = expect_resource(api.put("/hubs/tour.example.com", &hub("tour.example.com", None)).await).await;
    expect_resource(api.get("/hubs/tour.example.com").await).await;
    let (_, status) = expect_json(api.get("/hubs/tour.example.com/status").await, 200).await;
    assert_eq!(status["health"]["status"], "notApplicable", "{status}");
    assert_eq!(status["backlog"]["depth"], 0, "{status}");
    expect_json(api.get("/hubs").await, 200).await;
    for kind in [Kind::Individual, Kind::Group] {
        let (_, etag) = expect_resource(api.put(&kind.path("tour-1"), &kind.doc("tour-1")).await).await;
        expect_resource(api.get(&kind.path("tour-1")).await).await;
        api.keys(kind, "tour-1").await;
        api.all_ids(kind).await;
        assert_eq!(api.bulk(kind, "create", vec![kind.doc("tour-2")]).await["isSuccessful"], true);
        assert_eq!(api.delete(&kind.path("tour-1"), Some(&etag)).await.status(), 204);
    }
    let store = Store::connect(&server.database_url).await.unwrap();
    let saved = store.registrations().save(registration("tour-device", Some("tour-2"))).await.unwrap();
    store.tpm().bind("tour-tpm", "AToAAQ==").await.unwrap();
    store.close().await.unwrap();
    let bindings = api.all("/tpmBindings", None, "tpmBinding").await;
    assert_eq!(
        bindings,
        [
            json!({"registrationId": "tour-tpm", "endorsementKey": "AToAAQ==", "createdDateTimeUtc": bindings[0]["createdDateTimeUtc"]})
        ]
    );
    assert_eq!(api.delete("/tpmBindings/tour-tpm", None).await.status(), 204);
    expect_resource(api.get("/registrations/tour-device").await).await;
    assert_eq!(api.all("/registrations/tour-2/query", None, "deviceRegistration").await.len(), 1);
    let (_, revoked) = expect_json(api.post("/registrations/tour-device/revoke", Some(&json!({}))).await, 200).await;
    assert_eq!(revoked["revoked"], json!([]), "it was never issued a certificate: {revoked}");
    let etag = revoked["etag"].as_str().expect("the registration's new etag");
    assert_ne!(etag, saved.etag);
    assert_eq!(api.delete("/registrations/tour-device", Some(&saved.etag)).await.status(), 412, "revoked since");
    assert_eq!(api.delete("/registrations/tour-device", Some(etag)).await.status(), 204);
    pki_tour(&server, &api).await;
    let (_, policy_etag) =
        expect_resource(api.put("/sharedAccessPolicies/tour", &json!({"rights": "EnrollmentRead"})).await).await;
    expect_resource(api.get("/sharedAccessPolicies/tour").await).await;
    let (_, policies) = expect_json(api.get("/sharedAccessPolicies").await, 200).await;
    assert_eq!(policies[0]["keyName"], "tour", "{policies}");
    let (_, keys) = expect_json(api.post("/sharedAccessPolicies/tour/keys", None).await, 200).await;
    assert!(keys["primaryKey"].is_string() && keys["secondaryKey"].is_string(), "{keys}");
    assert_eq!(api.delete("/sharedAccessPolicies/tour", Some(&policy_etag)).await.status(), 204);
    assert!(!api.all("/audit", None, "auditEvent").await.is_empty());
    assert_eq!(api.delete("/hubs/tour.example.com", Some(&hub_etag)).await.status(), 204);

    // The service counted a 2xx for each method of each route it has.
    let metrics = server.client.get(server.url("/metrics")).send().await.unwrap().text().await.unwrap();
    let answered = answered(&metrics);
    let mut missing = Vec::new();
    for (route, methods) in zerotouch_server::http::admin::ROUTES {
        for method in *methods {
            let statuses = answered.get(&((*route).to_owned(), (*method).to_owned()));
            if !statuses.is_some_and(|s| s.iter().any(|status| status.starts_with('2'))) {
                missing.push(format!("{method} {route}: {statuses:?}"));
            }
        }
    }
    assert!(missing.is_empty(), "routes without a 2xx: {missing:#?}\n{metrics}");
}

/// The managed CA's routes, once each: an issuing CA signed by a root made here and activated (and a spare one
/// deleted), a customer CA proven and deleted, the fleet view, and the public trust bundle and CRL.
async fn pki_tour(server: &Server, api: &Api<'_>) {
    use rcgen::{
        BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName, DnType, IsCa, Issuer,
        KeyPair, KeyUsagePurpose,
    };
    fn ca_params(cn: &str) -> CertificateParams {
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, cn);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        params
    }

    let root_key = KeyPair::generate().unwrap();
    let root = ca_params("Tour Root").self_signed(&root_key).unwrap();
    let root_issuer = Issuer::new(ca_params("Tour Root"), &root_key);
    let (_, created) = expect_json(api.post("/pki/issuingCAs", Some(&json!({"name": "tour-ca"}))).await, 201).await;
    let mut csr = CertificateSigningRequestParams::from_pem(created["csr"].as_str().unwrap()).unwrap();
    csr.params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    csr.params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let chain = format!("{}{}", csr.signed_by(&root_issuer).unwrap().pem(), root.pem());
    expect_resource(api.put("/pki/issuingCAs/tour-ca", &json!({"certificateChain": chain})).await).await;
    expect_resource(api.get("/pki/issuingCAs/tour-ca").await).await;
    expect_json(api.get("/pki/issuingCAs").await, 200).await;
    expect_resource(api.post("/pki/issuingCAs/tour-ca/activate", None).await).await;
    let (_, spare) = expect_json(api.post("/pki/issuingCAs", Some(&json!({"name": "tour-spare"}))).await, 201).await;
    assert_eq!(api.delete("/pki/issuingCAs/tour-spare", spare["etag"].as_str()).await.status(), 204);
    api.all("/pki/certificates", None, "certificate").await;

    let ca_key = KeyPair::generate().unwrap();
    let ca = ca_params("Tour Factory CA").self_signed(&ca_key).unwrap();
    let ca_issuer = Issuer::new(ca_params("Tour Factory CA"), &ca_key);
    let path = "/certificateAuthorities/tour-factory";
    let (_, _) = expect_json(api.put(path, &json!({"certificate": ca.pem()})).await, 201).await;
    expect_resource(api.get(path).await).await;
    assert_eq!(api.all("/certificateAuthorities", None, "certificateAuthority").await.len(), 1);
    let (_, code) = expect_json(api.post(&format!("{path}/verificationCode"), None).await, 200).await;
    let mut proof = CertificateParams::default();
    proof.distinguished_name = DistinguishedName::new();
    proof.distinguished_name.push(DnType::CommonName, code["verificationCode"].as_str().unwrap());
    let proof = proof.signed_by(&KeyPair::generate().unwrap(), &ca_issuer).unwrap();
    let (verified, etag) =
        expect_resource(api.post(&format!("{path}/verify"), Some(&json!({"certificate": proof.pem()}))).await).await;
    assert_eq!(verified["isVerified"], true);
    assert_eq!(api.delete(path, Some(&etag)).await.status(), 204);

    for public in ["/pki/trustBundle", "/pki/crl/development"] {
        assert_eq!(server.client.get(server.url(public)).send().await.unwrap().status(), 200, "{public}");
    }
}

/// Each method of each admin route answers a 2xx in a short tour (checked against the route table through the
/// service's request counters); /healthz, /readyz and /metrics answer without a token.
#[tokio::test]
async fn every_route_round_trips_sqlite() {
    every_route_round_trips(Backend::Sqlite).await;
}

/// The route tour, on PostgreSQL.
#[tokio::test]
async fn every_route_round_trips_postgres() {
    every_route_round_trips(Backend::Postgres).await;
}
