//! A hub document from the admin API (`PUT /hubs/{hostName}`): `field::decode` into `Hub`, and its `hostName` as a
//! `HubHostName`.
//!
//! Beyond "no panic": a decoded hub serialized again decodes to the same; a host name that is accepted is
//! lower-case and accepted again unchanged.
//!
//! The `settings` are checked by `zerotouch_hub::adapter_for`, which starts the adapter's connection task (I/O), so
//! they are not fuzzed here; they are plain serde shapes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use zerotouch_wire::HubHostName;
use zerotouch_wire::field::decode;
use zerotouch_wire::hub::Hub;

fuzz_target!(|data: &[u8]| {
    let Ok(value) = serde_json::from_slice::<serde_json::Value>(data) else { return };
    let Ok(hub) = decode::<Hub>(value) else { return };
    let again = serde_json::to_value(&hub).expect("a hub serializes");
    assert_eq!(decode::<Hub>(again).as_ref(), Ok(&hub));
    if let Ok(host) = HubHostName::try_from(hub.host_name.as_str()) {
        assert_eq!(host.as_str(), hub.host_name.to_ascii_lowercase());
        assert_eq!(HubHostName::try_from(host.as_str()).as_ref(), Ok(&host));
    }
});
