//! An Azure DPS export file for `zerotouch import-azure`: `azure_import::documents` and `translate` of each document.
//!
//! Beyond "no panic": a document that may be imported has no read-only field and no `null` left, its id is the
//! document's own, and translating it again refuses nothing and changes nothing (so a document the command sends
//! is one it would send again).
#![no_main]

use libfuzzer_sys::fuzz_target;
use zerotouch_wire::azure_import::{Context, documents, translate};

fuzz_target!(|data: &[u8]| {
    let Ok(value) = serde_json::from_slice::<serde_json::Value>(data) else { return };
    let Ok(items) = documents(value) else { return };
    let context = Context::default();
    for item in &items {
        let first = translate(item, &context);
        if !first.importable() {
            continue;
        }
        let document = first.document.as_object().expect("an importable document is an object");
        for read_only in ["etag", "createdDateTimeUtc", "lastUpdatedDateTimeUtc", "registrationState"] {
            assert!(!document.contains_key(read_only), "{read_only} left in {document:?}");
        }
        assert!(document.values().all(|v| !v.is_null()), "a null left in {document:?}");
        assert_eq!(document.get(first.kind.id_field()).and_then(|id| id.as_str()), Some(first.id.as_str()));
        let again = translate(&first.document, &context);
        assert!(again.importable(), "{:?}", again.notes);
        assert_eq!(again.document, first.document);
    }
});
