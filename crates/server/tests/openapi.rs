//! `openapi.yaml` describes exactly the routes the server serves, and every error code it can answer.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeSet;

use serde_json::Value;
use zerotouch_server::admin::ROUTES;
use zerotouch_wire::ErrorCode;

const METHODS: [&str; 5] = ["get", "put", "post", "delete", "patch"];

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

/// Every (METHOD, path) the spec describes equals every route the server registers.
#[test]
fn the_spec_and_the_server_have_the_same_routes() {
    let spec = spec();
    let described: BTreeSet<(String, String)> = spec["paths"]
        .as_object()
        .unwrap()
        .iter()
        .flat_map(|(path, item)| {
            METHODS.iter().filter(|m| item.get(**m).is_some()).map(move |m| (m.to_uppercase(), path.clone()))
        })
        .collect();
    let served: BTreeSet<(String, String)> = ROUTES
        .iter()
        .flat_map(|(path, methods)| methods.iter().map(move |m| (m.to_string(), path.to_string())))
        .collect();
    let undocumented: Vec<_> = served.difference(&described).collect();
    let unserved: Vec<_> = described.difference(&served).collect();
    assert!(
        undocumented.is_empty() && unserved.is_empty(),
        "served but not in openapi.yaml: {undocumented:?}; in openapi.yaml but not served: {unserved:?}"
    );
}

/// Every operation has an id, declares its path parameters, and (but for the health routes) its errors.
#[test]
fn every_operation_is_fully_described() {
    let spec = spec();
    let mut ids = BTreeSet::new();
    for (path, item) in spec["paths"].as_object().unwrap() {
        let in_path: BTreeSet<&str> =
            path.split('/').filter_map(|s| s.strip_prefix('{').and_then(|s| s.strip_suffix('}'))).collect();
        for method in METHODS {
            let Some(operation) = item.get(method) else { continue };
            let id = operation["operationId"].as_str().unwrap_or_else(|| panic!("{method} {path}: no operationId"));
            assert!(ids.insert(id.to_owned()), "operationId {id} is used twice");
            let declared: BTreeSet<&str> = item
                .get("parameters")
                .into_iter()
                .chain(operation.get("parameters"))
                .flat_map(|list| list.as_array().unwrap())
                .map(|p| resolve(&spec, p))
                .filter(|p| p["in"] == "path")
                .map(|p| p["name"].as_str().unwrap())
                .collect();
            assert_eq!(declared, in_path, "{method} {path}: path parameters");
            let responses = operation["responses"].as_object().unwrap();
            assert!(responses.keys().any(|c| c.starts_with('2')), "{method} {path}: no success response");
            let health = ["/healthz", "/readyz", "/metrics"].contains(&path.as_str());
            assert!(
                health || responses.keys().any(|c| c.starts_with('4')),
                "{method} {path}: no error response described"
            );
            for (code, response) in responses {
                let response = resolve(&spec, response);
                if code.starts_with('4') || code.starts_with('5') {
                    let schema = &response["content"]["application/json"]["schema"]["$ref"];
                    assert_eq!(schema, "#/components/schemas/ErrorBody", "{method} {path} {code}: not the Azure body");
                }
            }
        }
    }
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
    assert_eq!(listed, known);
}
