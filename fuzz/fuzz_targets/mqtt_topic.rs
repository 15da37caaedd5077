//! The topic of a device's MQTT PUBLISH: `Request::parse`, `rid_of`, and (for clients) `parse_response_topic`.
//!
//! Beyond "no panic": the `$rid` a request yields is the one `rid_of` finds (the one a refusal echoes), and the
//! response topic built for it parses back to the same status, `$rid` and `retry-after`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use zerotouch_wire::mqtt::{Request, parse_response_topic, response_topic, rid_of};

fuzz_target!(|data: &[u8]| {
    let Ok(topic) = std::str::from_utf8(data) else { return };
    let rid = rid_of(topic);
    let _ = parse_response_topic(topic);
    let Ok(request) = Request::parse(topic) else { return };
    assert_eq!(request.rid(), rid);
    for (status, retry_after) in [(202, Some(3)), (401, None)] {
        let answer = response_topic(status, request.rid(), retry_after);
        assert_eq!(parse_response_topic(&answer), Some((status, request.rid(), retry_after)), "{answer}");
    }
});
