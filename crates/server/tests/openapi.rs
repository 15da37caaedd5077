//! `openapi.yaml` describes exactly the routes the server serves, and every error code it can answer.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeSet;

use serde_json::Value;
use zerotouch_server::http::admin::ROUTES;
use zerotouch_wire::ErrorCode;

/// The operations a path item can hold (OpenAPI 3.1 §4.8.9).
const METHODS: [&str; 8] = ["get", "put", "post", "delete", "options", "head", "patch", "trace"];

/// The routes that need no token: the health routes and the public PKI documents.
const UNAUTHENTICATED: [&str; 5] = ["/healthz", "/readyz", "/metrics", "/pki/crl/{issuingCA}", "/pki/trustBundle"];

fn spec() -> Value {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../openapi.yaml");
    let text = std::fs::read_to_string(path).expect("openapi.yaml at the repository root");
    serde_norway::from_str(&text).expect("openapi.yaml is YAML")
}

/// Follows a local `$ref` (`#/components/...`).
fn resolve<'a>(spec: &'a Value, value: &'a Value) -> &'a Value {
    match value.get("$ref").and_then(Value::as_str) {
        Some(reference) => {
            let pointer = reference.strip_prefix('#').expect("local $ref");
            spec.pointer(pointer).unwrap_or_else(|| panic!("dangling $ref {reference}"))
        }
        None => value,
    }
}

/// Every operation of the spec: (path, method, operation).
fn operations(spec: &Value) -> Vec<(&str, &'static str, &Value)> {
    let paths = spec["paths"].as_object().expect("paths");
    paths
        .iter()
        .flat_map(|(path, item)| METHODS.iter().filter_map(move |m| item.get(*m).map(|op| (path.as_str(), *m, op))))
        .collect()
}

/// Every (METHOD, path) the spec describes equals every route the server registers.
#[test]
fn the_spec_and_the_server_have_the_same_routes() {
    let spec = spec();
    let described: BTreeSet<(String, String)> =
        operations(&spec).into_iter().map(|(path, method, _)| (method.to_uppercase(), path.to_owned())).collect();
    let served: BTreeSet<(String, String)> = ROUTES
        .iter()
        .flat_map(|(path, methods)| methods.iter().map(move |m| (m.to_uppercase(), path.to_string())))
        .collect();
    let undocumented: Vec<_> = served.difference(&described).collect();
    let unserved: Vec<_> = described.difference(&served).collect();
    assert!(
        undocumented.is_empty() && unserved.is_empty(),
        "served but not in openapi.yaml: {undocumented:?}; in openapi.yaml but not served: {unserved:?}"
    );
}

/// Every operation has an id and a summary, declares its path parameters, and (but for the health routes) its
/// errors, each in the Azure error body with `x-ms-error-code`.
#[test]
fn every_operation_is_fully_described() {
    let spec = spec();
    let mut ids = BTreeSet::new();
    for (path, method, operation) in operations(&spec) {
        let item = &spec["paths"][path];
        let in_path: BTreeSet<&str> =
            path.split('/').filter_map(|s| s.strip_prefix('{').and_then(|s| s.strip_suffix('}'))).collect();
        let id = operation["operationId"].as_str().unwrap_or_else(|| panic!("{method} {path}: no operationId"));
        assert!(ids.insert(id.to_owned()), "operationId {id} is used twice");
        assert!(operation["summary"].as_str().is_some_and(|s| !s.trim().is_empty()), "{method} {path}: no summary");
        let declared: BTreeSet<&str> = item
            .get("parameters")
            .into_iter()
            .chain(operation.get("parameters"))
            .flat_map(|list| list.as_array().unwrap())
            .map(|p| resolve(&spec, p))
            .filter(|p| p["in"] == "path")
            .map(|p| {
                assert_eq!(p["required"], true, "{method} {path}: path parameter {} is not required", p["name"]);
                p["name"].as_str().unwrap()
            })
            .collect();
        assert_eq!(declared, in_path, "{method} {path}: path parameters");
        let responses = operation["responses"].as_object().unwrap();
        assert!(responses.keys().any(|c| c.starts_with('2')), "{method} {path}: no success response");
        let health = UNAUTHENTICATED.contains(&path);
        assert!(health || responses.keys().any(|c| c.starts_with('4')), "{method} {path}: no error response described");
        for (code, response) in responses {
            let response = resolve(&spec, response);
            if code.starts_with('4') || code.starts_with('5') {
                let schema = &response["content"]["application/json"]["schema"]["$ref"];
                assert_eq!(schema, "#/components/schemas/ErrorBody", "{method} {path} {code}: not the Azure body");
                assert!(
                    response["headers"].get("x-ms-error-code").is_some(),
                    "{method} {path} {code}: no x-ms-error-code header"
                );
            }
        }
        if method == "delete" {
            assert!(responses.contains_key("204"), "{method} {path}: DELETE answers 204");
        }
    }
}

/// Bearer JWTs guard every route but the health routes and the public PKI documents, which say so with
/// `security: []`.
#[test]
fn the_health_routes_alone_need_no_token() {
    let spec = spec();
    let scheme = &spec["components"]["securitySchemes"]["bearerAuth"];
    assert_eq!(
        (&scheme["type"], &scheme["scheme"], &scheme["bearerFormat"]),
        (&"http".into(), &"bearer".into(), &"JWT".into())
    );
    let global: Vec<&Value> = spec["security"].as_array().expect("global security").iter().collect();
    assert!(global.iter().any(|r| r.get("bearerAuth").is_some()), "bearerAuth is not required globally");
    for (path, method, operation) in operations(&spec) {
        let open = operation.get("security").and_then(Value::as_array).is_some_and(Vec::is_empty);
        let expected = UNAUTHENTICATED.contains(&path);
        assert_eq!(open, expected, "{method} {path}: `security: []` iff the route needs no token");
        if !expected {
            let role = operation["x-required-role"].as_str();
            assert!(
                matches!(role, Some("reader" | "operator" | "owner")),
                "{method} {path}: x-required-role is {role:?}"
            );
        }
    }
}

/// No `$ref` anywhere in the document points at nothing.
#[test]
fn every_reference_resolves() {
    fn walk(spec: &Value, value: &Value, at: &str) {
        match value {
            Value::Object(map) => {
                if let Some(reference) = map.get("$ref").and_then(Value::as_str) {
                    let pointer = reference.strip_prefix('#').unwrap_or_else(|| panic!("{at}: non-local $ref"));
                    assert!(spec.pointer(pointer).is_some(), "{at}: dangling $ref {reference}");
                }
                for (key, child) in map {
                    walk(spec, child, &format!("{at}/{key}"));
                }
            }
            Value::Array(items) => items.iter().enumerate().for_each(|(i, c)| walk(spec, c, &format!("{at}/{i}"))),
            _ => {}
        }
    }
    let spec = spec();
    walk(&spec, &spec, "");
}

/// The error codes the spec lists are exactly the service's.
#[test]
fn the_spec_lists_every_error_code() {
    let spec = spec();
    let listed: BTreeSet<u64> = spec["components"]["schemas"]["ErrorBody"]["properties"]["errorCode"]["enum"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_u64().unwrap())
        .collect();
    let known: BTreeSet<u64> = ErrorCode::ALL.iter().map(|c| u64::from(c.number())).collect();
    let unlisted: Vec<_> = known.difference(&listed).collect();
    let unknown: Vec<_> = listed.difference(&known).collect();
    assert!(
        unlisted.is_empty() && unknown.is_empty(),
        "codes of the service missing from ErrorBody.errorCode: {unlisted:?}; listed but not the service's: {unknown:?}"
    );
    let items = spec["components"]["schemas"]["BulkEnrollmentOperationError"]["properties"]["errorCode"]["enum"]
        .as_array()
        .expect("bulk item error codes");
    for code in items {
        assert!(known.contains(&code.as_u64().unwrap()), "bulk item error code {code} is not the service's");
    }
}
