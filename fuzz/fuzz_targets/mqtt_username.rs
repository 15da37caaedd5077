//! The MQTT CONNECT username (`{idScope}/registrations/{registrationId}/api-version=...`): `Username::parse`.
//!
//! Beyond "no panic": the registration id it yields is a valid one, and the username a device would send for the
//! parsed scope, id and client version parses back to the same.
#![no_main]

use libfuzzer_sys::fuzz_target;
use zerotouch_wire::RegistrationId;
use zerotouch_wire::mqtt::{Username, format_username};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let Ok(username) = Username::parse(text) else { return };

    let id = username.registration_id.as_str();
    assert_eq!(RegistrationId::try_from(id).as_ref(), Ok(&username.registration_id));
    assert!(!username.id_scope.is_empty() && !username.id_scope.contains('/'));

    let formatted = format_username(&username.id_scope, id, "2019-03-31", username.client_version.as_deref());
    let again = Username::parse(&formatted).expect("a formatted username parses");
    assert_eq!(again.id_scope, username.id_scope);
    assert_eq!(again.registration_id, username.registration_id);
    assert_eq!(again.api_version.as_deref(), Some("2019-03-31"));
    assert_eq!(again.client_version, username.client_version, "{formatted}");
});
