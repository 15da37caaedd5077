//! The MQTT device API's CONNECT username and topics (`docs/protocol/device-api.md` §5), parsed and formatted.
//!
//! Pure: the server's MQTT endpoint uses these to translate MQTT into registration requests, and the load
//! generator and tests use them to speak as devices do. What the SDKs send, and what they parse back, is pinned
//! down in §5; each rule below cites the SDK behaviour it follows.

use crate::id::{IdError, RegistrationId};

/// The one subscription a device makes (§5: "DPS does not allow the usage of the `#` or `?` wildcards for
/// filtering of subtopics", so no other filter is granted).
pub const RESPONSE_FILTER: &str = "$dps/registrations/res/#";

/// Register: `$dps/registrations/PUT/iotdps-register/?$rid={rid}`.
pub const REGISTER_TOPIC: &str = "$dps/registrations/PUT/iotdps-register/";

/// Operation status: `$dps/registrations/GET/iotdps-get-operationstatus/?$rid={rid}&operationId={id}`.
pub const OPERATION_STATUS_TOPIC: &str = "$dps/registrations/GET/iotdps-get-operationstatus/";

/// Where responses go: `$dps/registrations/res/{status}/?$rid={rid}[&retry-after={n}]`.
pub const RESPONSE_PREFIX: &str = "$dps/registrations/res/";

/// The CONNECT username: `{idScope}/registrations/{registrationId}/api-version={v}[&ClientVersion={ua}]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Username {
    /// The id scope.
    pub id_scope: String,
    /// The registration id.
    pub registration_id: RegistrationId,
    /// The `api-version` the device named, if any.
    pub api_version: Option<String>,
    /// The `ClientVersion` (user agent) the device named, percent-decoded, if any.
    pub client_version: Option<String>,
}

/// Why a CONNECT username is not one of a device.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UsernameError {
    /// Not `{idScope}/registrations/{registrationId}/...`.
    #[error("the username is not {{idScope}}/registrations/{{registrationId}}/api-version=...")]
    Shape,
    /// The id scope is empty.
    #[error("the username names no id scope")]
    EmptyIdScope,
    /// The registration id is invalid.
    #[error("the username's registration id: {0}")]
    RegistrationId(IdError),
}

impl Username {
    /// Parses a username as the SDKs send it (§5): `splitn(4, '/')` into scope, `registrations`, registration id
    /// and the rest; the rest is a query string whose `ClientVersion` may be percent-encoded (Python, C#) or not
    /// (C, whose value may then hold `/` or `&`), or absent (Embedded C). Unknown parameters are ignored.
    pub fn parse(text: &str) -> Result<Self, UsernameError> {
        let mut parts = text.splitn(4, '/');
        let (Some(id_scope), Some(literal), Some(registration_id)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(UsernameError::Shape);
        };
        if !literal.eq_ignore_ascii_case("registrations") {
            return Err(UsernameError::Shape);
        }
        if id_scope.is_empty() {
            return Err(UsernameError::EmptyIdScope);
        }
        let registration_id = RegistrationId::try_from(registration_id).map_err(UsernameError::RegistrationId)?;
        let rest = parts.next().unwrap_or_default();
        // Everything after `ClientVersion=` is the client version, whatever characters it holds.
        let (query, client_version) = match find_parameter(rest, "ClientVersion=") {
            Some(at) => (&rest[..at], Some(percent_decode(&rest[at + "ClientVersion=".len()..]))),
            None => (rest, None),
        };
        let api_version = query
            .split('&')
            .find_map(|pair| pair.strip_prefix("api-version="))
            .map(percent_decode)
            .filter(|v| !v.is_empty());
        Ok(Self { id_scope: id_scope.to_owned(), registration_id, api_version, client_version })
    }
}

/// Where parameter `name` (with its `=`) starts in a query string: at its start or after a `&`.
fn find_parameter(query: &str, name: &str) -> Option<usize> {
    if query.starts_with(name) {
        return Some(0);
    }
    query.match_indices('&').map(|(i, _)| i + 1).find(|&i| query[i..].starts_with(name))
}

/// Percent-decodes leniently: a `%` not followed by two hex digits stays as it is; invalid UTF-8 is replaced.
fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| char::from(b).to_digit(16);
        match (bytes[i], bytes.get(i + 1).copied().and_then(hex), bytes.get(i + 2).copied().and_then(hex)) {
            (b'%', Some(high), Some(low)) => {
                // Two hex digits make at most 0xff.
                out.push(u8::try_from(high * 16 + low).unwrap_or(b'?'));
                i += 3;
            }
            (byte, _, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A request a device publishes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// Register, answered with the operation.
    Register {
        /// The request id, verbatim.
        rid: String,
    },
    /// Poll an operation.
    OperationStatus {
        /// The request id, verbatim.
        rid: String,
        /// The operation id, percent-decoded (Python and C# escape it, C does not: §1.4).
        operation_id: String,
    },
}

/// Why a published topic is not a request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TopicError {
    /// Neither the register nor the operation-status topic.
    #[error("the topic is neither {REGISTER_TOPIC}?$rid=... nor {OPERATION_STATUS_TOPIC}?$rid=...&operationId=...")]
    Unknown,
    /// No `$rid` parameter.
    #[error("the topic has no $rid parameter")]
    MissingRid,
    /// An operation-status topic without `operationId`.
    #[error("the topic has no operationId parameter")]
    MissingOperationId,
}

impl Request {
    /// Parses the topic of a device's PUBLISH.
    pub fn parse(topic: &str) -> Result<Self, TopicError> {
        let (path, query) = topic.split_once('?').ok_or(TopicError::Unknown)?;
        let parameter = |name: &str| query.split('&').find_map(|pair| pair.strip_prefix(name));
        if path == REGISTER_TOPIC {
            let rid = parameter("$rid=").ok_or(TopicError::MissingRid)?;
            Ok(Self::Register { rid: rid.to_owned() })
        } else if path == OPERATION_STATUS_TOPIC {
            let rid = parameter("$rid=").ok_or(TopicError::MissingRid)?;
            let operation_id = parameter("operationId=").ok_or(TopicError::MissingOperationId)?;
            Ok(Self::OperationStatus { rid: rid.to_owned(), operation_id: percent_decode(operation_id) })
        } else {
            Err(TopicError::Unknown)
        }
    }

    /// The request id, to echo.
    pub fn rid(&self) -> &str {
        match self {
            Self::Register { rid } | Self::OperationStatus { rid, .. } => rid,
        }
    }
}

/// The `$rid` of any topic that carries one (to answer a request whose topic is otherwise wrong), else `""`.
pub fn rid_of(topic: &str) -> &str {
    topic
        .split_once('?')
        .and_then(|(_, query)| query.split('&').find_map(|pair| pair.strip_prefix("$rid=")))
        .unwrap_or_default()
}

/// The topic of a response: `$dps/registrations/res/{status}/?$rid={rid}[&retry-after={n}]`, `$rid` first and
/// echoed verbatim (§5: Python reads the parameters after the second `$`, C# matches `\?\$rid=(.*?)$`).
pub fn response_topic(status: u16, rid: &str, retry_after: Option<u64>) -> String {
    match retry_after {
        Some(seconds) => format!("{RESPONSE_PREFIX}{status}/?$rid={rid}&retry-after={seconds}"),
        None => format!("{RESPONSE_PREFIX}{status}/?$rid={rid}"),
    }
}

/// A response topic taken apart (for clients: the load generator and tests): status, `$rid`, `retry-after`.
pub fn parse_response_topic(topic: &str) -> Option<(u16, &str, Option<u64>)> {
    let rest = topic.strip_prefix(RESPONSE_PREFIX)?;
    let (status, query) = rest.split_once("/?")?;
    let status = status.parse().ok()?;
    let mut rid = None;
    let mut retry_after = None;
    for pair in query.split('&') {
        if let Some(value) = pair.strip_prefix("$rid=") {
            rid = Some(value);
        } else if let Some(value) = pair.strip_prefix("retry-after=") {
            retry_after = value.parse().ok();
        }
    }
    Some((status, rid?, retry_after))
}

/// The username a device sends (`api-version` and an optional, percent-encoded `ClientVersion`).
pub fn format_username(id_scope: &str, registration_id: &str, api_version: &str, client: Option<&str>) -> String {
    let mut username = format!("{id_scope}/registrations/{registration_id}/api-version={api_version}");
    if let Some(client) = client {
        username.push_str("&ClientVersion=");
        for byte in client.bytes() {
            if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
                username.push(char::from(byte));
            } else {
                username.push_str(&format!("%{byte:02X}"));
            }
        }
    }
    username
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn usernames_of_every_sdk_parse() {
        // Python: ClientVersion percent-encoded (urlencode with quote).
        let python = "0ne00000001/registrations/dev-1/api-version=2019-03-31&ClientVersion=azure-iot-device%2F2.14.0%20%28native%3B%20Linux%29";
        let parsed = Username::parse(python).unwrap();
        assert_eq!(parsed.id_scope, "0ne00000001");
        assert_eq!(parsed.registration_id.as_str(), "dev-1");
        assert_eq!(parsed.api_version.as_deref(), Some("2019-03-31"));
        assert_eq!(parsed.client_version.as_deref(), Some("azure-iot-device/2.14.0 (native; Linux)"));
        // C: not encoded, and it may hold `/`, `&` and spaces.
        let c = "0ne00000001/registrations/dev-1/api-version=2021-06-01&ClientVersion=prov/1.15.0 (a&b)";
        let parsed = Username::parse(c).unwrap();
        assert_eq!(parsed.api_version.as_deref(), Some("2021-06-01"));
        assert_eq!(parsed.client_version.as_deref(), Some("prov/1.15.0 (a&b)"));
        // Embedded C without ClientVersion; and no api-version at all.
        let parsed = Username::parse("0ne00000001/registrations/dev-1/api-version=2019-03-31").unwrap();
        assert_eq!((parsed.api_version.as_deref(), parsed.client_version), (Some("2019-03-31"), None));
        let parsed = Username::parse("0ne00000001/registrations/dev-1").unwrap();
        assert_eq!((parsed.api_version, parsed.client_version), (None, None));
        // ClientVersion first, unknown parameters ignored.
        let parsed = Username::parse("s/registrations/d/ClientVersion=x&api-version=1").unwrap();
        assert_eq!((parsed.api_version, parsed.client_version.as_deref()), (None, Some("x&api-version=1")));
        let parsed = Username::parse("s/registrations/d/foo=1&api-version=2025-07-01-preview").unwrap();
        assert_eq!(parsed.api_version.as_deref(), Some("2025-07-01-preview"));
    }

    #[test]
    fn bad_usernames_are_refused() {
        assert_eq!(Username::parse(""), Err(UsernameError::Shape));
        assert_eq!(Username::parse("scope/devices/dev-1/api-version=1"), Err(UsernameError::Shape));
        assert_eq!(Username::parse("scope/registrations"), Err(UsernameError::Shape));
        assert_eq!(Username::parse("/registrations/dev-1/"), Err(UsernameError::EmptyIdScope));
        assert!(matches!(Username::parse("s/registrations//x"), Err(UsernameError::RegistrationId(_))));
        assert!(matches!(Username::parse("s/registrations/a b/x"), Err(UsernameError::RegistrationId(_))));
    }

    #[test]
    fn request_topics_parse_and_rid_is_kept_verbatim() {
        let rid = "7d2d0c2b-1f6e-4bd3-9a35-7f6e3c1e2d4a";
        assert_eq!(Request::parse(&format!("{REGISTER_TOPIC}?$rid={rid}")), Ok(Request::Register { rid: rid.into() }));
        // The C SDK: an integer rid; operation ids unescaped (C) or escaped (Python, C#).
        assert_eq!(
            Request::parse(&format!("{OPERATION_STATUS_TOPIC}?$rid=12&operationId=4.abc.def-1")),
            Ok(Request::OperationStatus { rid: "12".into(), operation_id: "4.abc.def-1".into() })
        );
        assert_eq!(
            Request::parse(&format!("{OPERATION_STATUS_TOPIC}?operationId=4%2Eab&$rid=%41")),
            Ok(Request::OperationStatus { rid: "%41".into(), operation_id: "4.ab".into() })
        );
        assert_eq!(Request::parse(REGISTER_TOPIC), Err(TopicError::Unknown));
        assert_eq!(Request::parse(&format!("{REGISTER_TOPIC}?rid=1")), Err(TopicError::MissingRid));
        assert_eq!(Request::parse(&format!("{OPERATION_STATUS_TOPIC}?$rid=1")), Err(TopicError::MissingOperationId));
        assert_eq!(Request::parse("$dps/registrations/PUT/other/?$rid=1"), Err(TopicError::Unknown));
        assert_eq!(rid_of("$dps/registrations/PUT/other/?a=b&$rid=9"), "9");
        assert_eq!(rid_of("nothing"), "");
    }

    #[test]
    fn response_topics_put_rid_first() {
        assert_eq!(response_topic(202, "r-1", Some(3)), "$dps/registrations/res/202/?$rid=r-1&retry-after=3");
        assert_eq!(response_topic(401, "1", None), "$dps/registrations/res/401/?$rid=1");
        assert_eq!(
            parse_response_topic("$dps/registrations/res/202/?$rid=r-1&retry-after=3"),
            Some((202, "r-1", Some(3)))
        );
        assert_eq!(parse_response_topic("$dps/registrations/res/200/?$rid=x"), Some((200, "x", None)));
        assert_eq!(parse_response_topic("$dps/registrations/res/abc/?$rid=x"), None);
    }

    proptest! {
        #[test]
        fn formatted_usernames_parse_back(id in "[a-z0-9][a-z0-9.:_-]{0,40}", client in "\\PC{0,40}") {
            let text = format_username("0ne00000001", &id, "2019-03-31", Some(&client));
            let parsed = Username::parse(&text).unwrap();
            prop_assert_eq!(parsed.registration_id.as_str(), id.as_str());
            prop_assert_eq!(parsed.api_version.as_deref(), Some("2019-03-31"));
            prop_assert_eq!(parsed.client_version.as_deref(), Some(client.as_str()));
        }

        #[test]
        fn any_text_parses_or_is_refused_without_panicking(text in "\\PC{0,200}") {
            let _ = Username::parse(&text);
            let _ = Request::parse(&text);
            let _ = parse_response_topic(&text);
            let _ = rid_of(&text);
        }

        #[test]
        fn rid_round_trips_through_request_and_response(rid in "[A-Za-z0-9%.-]{0,36}") {
            let request = Request::parse(&format!("{REGISTER_TOPIC}?$rid={rid}")).unwrap();
            let topic = response_topic(200, request.rid(), Some(1));
            prop_assert_eq!(parse_response_topic(&topic), Some((200, rid.as_str(), Some(1))));
        }
    }
}
