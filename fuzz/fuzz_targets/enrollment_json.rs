//! An individual enrollment or enrollment group document from the admin API (`PUT /enrollments/{id}`,
//! `/enrollmentGroups/{id}`, bulk items): `enrollment::normalize`, for both kinds.
//!
//! Beyond "no panic": a normalized document, rendered as the service shows it (keys included), normalizes again to
//! the same document, id, attestation, status, hubs and keys, with no key generated.
#![no_main]

use libfuzzer_sys::fuzz_target;
use zerotouch_wire::enrollment::{EnrollmentKind, normalize, render};

fuzz_target!(|data: &[u8]| {
    let Ok(value) = serde_json::from_slice::<serde_json::Value>(data) else { return };
    for kind in [EnrollmentKind::Individual, EnrollmentKind::Group] {
        let Ok(first) = normalize(kind, value.clone(), None) else { continue };
        assert_eq!(first.key, first.id.to_ascii_lowercase());
        let keys = first.primary_key.as_ref().zip(first.secondary_key.as_ref());
        let shown = render(&first.document, "\"etag\"", "created", "updated", keys);
        let again =
            normalize(kind, shown, Some(&first.id.to_ascii_uppercase())).expect("a rendered document normalizes");
        assert_eq!(again.document, first.document);
        assert_eq!((&again.id, &again.key), (&first.id, &first.key));
        assert_eq!(again.attestation_type, first.attestation_type);
        assert_eq!(again.provisioning_status, first.provisioning_status);
        assert_eq!(again.named_hubs, first.named_hubs);
        if keys.is_some() {
            assert_eq!((&again.primary_key, &again.secondary_key), (&first.primary_key, &first.secondary_key));
            assert_eq!(again.generated_keys, (false, false));
        }
    }
});
