//! A shared access policy document from the admin API (`PUT /sharedAccessPolicies/{name}`) and its name:
//! `policy::normalize`, and `AccessRights::parse` of the rights text.
//!
//! Beyond "no panic": an accepted document, rendered with its keys and normalized again, gives the same name,
//! rights and keys; rights written out parse back to the same set.
#![no_main]

use libfuzzer_sys::fuzz_target;
use zerotouch_wire::SymmetricKey;
use zerotouch_wire::policy::{self, AccessRights};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    // The first line is the name in the path, the rest the document.
    let (name, document) = text.split_once('\n').unwrap_or(("policy", text));
    if let Ok(rights) = AccessRights::parse(document) {
        assert_eq!(AccessRights::parse(&rights.to_string()), Ok(rights));
    }
    let Ok(value) = serde_json::from_str::<serde_json::Value>(document) else { return };
    let Ok(normalized) = policy::normalize(name, value) else { return };
    assert!(!normalized.rights.is_empty());
    let primary = normalized.primary_key.clone().unwrap_or_else(SymmetricKey::generate);
    let secondary = normalized.secondary_key.clone().unwrap_or_else(SymmetricKey::generate);
    let shown =
        policy::render(normalized.name.as_str(), normalized.rights, "etag", "c", "u", Some((&primary, &secondary)));
    let again = policy::normalize(name, shown).expect("a rendered policy normalizes");
    assert_eq!(again.name, normalized.name);
    assert_eq!(again.rights, normalized.rights);
    assert!(again.primary_key.is_some_and(|k| k.same_as(&primary)));
    assert!(again.secondary_key.is_some_and(|k| k.same_as(&secondary)));
});
