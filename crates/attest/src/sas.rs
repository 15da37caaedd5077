//! Shared access signature tokens: the DPS device API's (`docs/protocol/device-api.md` §2.1, §2.2) and the service
//! API's, signed with a shared access policy's key (`docs/protocol/service-api.md` §1).
//!
//! `SharedAccessSignature sr={resource}&sig={signature}&se={expiry}[&skn={key name}]`, fields in any order. A device
//! token's `skn` is absent or `registration`, and its `sr` names the device's registration; a service token's `skn`
//! names the policy, and its `sr` names the service's host name (with or without a port). Both are checked by one
//! [`verify`], which differs only in the [`Audience`] it compares `sr` and `skn` with.
//! Real clients disagree on how they encode `sr` (Python `%2F`, C `%2f`, Node unencoded, IoT Edge lower-cased with
//! `/` unencoded), but each signs exactly the `sr` it sends. So the MAC is computed over the **raw** `sr` as sent,
//! and the resource is compared separately, case-insensitively, after URL-decoding (§2.1 recommendation).
//!
//! Every refusal is a [`SasError`] for the log; the device only ever learns "unauthorized".

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac};
use percent_encoding::percent_decode_str;
use sha2::Sha256;
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

type HmacSha256 = Hmac<Sha256>;

/// Why a token was refused. Logged and audited, never sent to the device.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SasError {
    /// The header is not `SharedAccessSignature k=v&...`.
    #[error("not a SharedAccessSignature token")]
    NotSas,
    /// A field is missing, repeated or unparseable.
    #[error("malformed field {0}")]
    Malformed(&'static str),
    /// `skn` is not the one expected: present and not `registration` on a device token, absent or another
    /// policy's on a service token.
    #[error("skn is not the expected key name")]
    WrongKeyName,
    /// The resource is not this device's.
    #[error("the token is for another resource")]
    WrongResource,
    /// `se` has passed (beyond the allowed clock skew).
    #[error("the token expired")]
    Expired,
    /// `se` is further ahead than the longest lifetime allowed (beyond the allowed clock skew): a token that would
    /// stay usable for too long if it leaked.
    #[error("the token expires further ahead than the maximum lifetime allows")]
    LifetimeTooLong,
    /// The signature does not verify with any of the keys.
    #[error("the signature does not verify")]
    BadSignature,
}

/// A parsed token, borrowing the raw `sr` that was signed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SasToken<'a> {
    /// `sr` exactly as sent (what the signature covers).
    pub raw_resource: &'a str,
    /// `se` as sent (what the signature covers).
    pub raw_expiry: &'a str,
    /// `se`, seconds since the epoch.
    pub expiry: u64,
    /// The decoded signature bytes.
    pub signature: Vec<u8>,
    /// `skn`, decoded, if present.
    pub key_name: Option<String>,
}

/// Parses `SharedAccessSignature sr=..&sig=..&se=..[&skn=..]` (fields in any order, each at most once).
pub fn parse(header: &str) -> Result<SasToken<'_>, SasError> {
    let rest = header.trim().strip_prefix("SharedAccessSignature").ok_or(SasError::NotSas)?;
    let rest = rest.strip_prefix(' ').ok_or(SasError::NotSas)?.trim_start();
    let (mut sr, mut sig, mut se, mut skn) = (None, None, None, None);
    for pair in rest.split('&') {
        let (key, value) = pair.split_once('=').ok_or(SasError::Malformed("pair"))?;
        let slot = match key {
            "sr" => &mut sr,
            "sig" => &mut sig,
            "se" => &mut se,
            "skn" => &mut skn,
            // Unknown fields are not signed and not trusted; ignore them as Azure does.
            _ => continue,
        };
        if slot.replace(value).is_some() {
            return Err(SasError::Malformed("repeated field"));
        }
    }
    let raw_resource = sr.filter(|v| !v.is_empty()).ok_or(SasError::Malformed("sr"))?;
    let raw_expiry = se.ok_or(SasError::Malformed("se"))?;
    let expiry = raw_expiry.parse::<u64>().map_err(|_| SasError::Malformed("se"))?;
    let sig = percent_decode_str(sig.ok_or(SasError::Malformed("sig"))?)
        .decode_utf8()
        .map_err(|_| SasError::Malformed("sig"))?;
    let signature = STANDARD.decode(sig.as_bytes()).map_err(|_| SasError::Malformed("sig"))?;
    let key_name = skn
        .map(|v| percent_decode_str(v).decode_utf8().map(|s| s.into_owned()))
        .transpose()
        .map_err(|_| SasError::Malformed("skn"))?;
    Ok(SasToken { raw_resource, raw_expiry, expiry, signature, key_name })
}

/// The HMAC-SHA256 of `message` under `key`.
fn mac(key: &[u8], message: &[u8]) -> Zeroizing<[u8; 32]> {
    // HMAC accepts keys of any length, so `new_from_slice` cannot fail; an empty MAC would never verify.
    let mut out = Zeroizing::new([0u8; 32]);
    if let Ok(mut m) = HmacSha256::new_from_slice(key) {
        m.update(message);
        out.copy_from_slice(&m.finalize().into_bytes());
    }
    out
}

/// The device key of `registration_id` in a group: HMAC-SHA256 of the id under the group key (§2.2).
pub fn derive_device_key(group_key: &[u8], registration_id: &str) -> Zeroizing<[u8; 32]> {
    mac(group_key, registration_id.as_bytes())
}

/// Signs `resource` until `expiry` with `key`: the token a device would send (for clients and tests).
pub fn sign(resource_as_sent: &str, expiry: u64, key: &[u8], key_name: Option<&str>) -> String {
    let signature = mac(key, format!("{resource_as_sent}\n{expiry}").as_bytes());
    let sig: String = percent_encoding::utf8_percent_encode(
        &STANDARD.encode(signature.as_slice()),
        percent_encoding::NON_ALPHANUMERIC,
    )
    .collect();
    match key_name {
        Some(name) => format!("SharedAccessSignature sr={resource_as_sent}&sig={sig}&se={expiry}&skn={name}"),
        None => format!("SharedAccessSignature sr={resource_as_sent}&sig={sig}&se={expiry}"),
    }
}

/// Whom a token must be for: what its `sr` (URL-decoded, compared case-insensitively) and `skn` must say.
#[derive(Debug, Clone, Copy)]
pub enum Audience<'a> {
    /// A device: `sr` is `{idScope}/registrations/{registrationId}` as the URL (or MQTT username) names it, and
    /// `skn` is absent or `registration`.
    Device(&'a str),
    /// The service API under a shared access policy: `sr` is one of the service's `host_names`, alone or with a
    /// `:port` (the Node service SDK sends the connection string's `HostName`, which cannot carry a port; the Python
    /// one sends it as given, port included), and `skn` is the policy's name (compared case-insensitively, as
    /// policy names are).
    Service {
        /// The names this service answers to.
        host_names: &'a [String],
        /// The name of the policy whose keys are tried.
        policy: &'a str,
    },
}

impl Audience<'_> {
    /// Whether `resource` (URL-decoded) is this audience's.
    fn names(&self, resource: &str) -> bool {
        match self {
            Self::Device(expected) => resource.eq_ignore_ascii_case(expected),
            Self::Service { host_names, .. } => {
                let resource = resource.strip_suffix('/').unwrap_or(resource);
                let host = match resource.rsplit_once(':') {
                    Some((host, port)) if !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) => host,
                    _ => resource,
                };
                host_names.iter().any(|name| name.eq_ignore_ascii_case(host))
            }
        }
    }

    /// Whether `key_name` (decoded `skn`, if any) is this audience's.
    fn takes_key_name(&self, key_name: Option<&str>) -> bool {
        match self {
            Self::Device(_) => key_name.is_none_or(|n| n.eq_ignore_ascii_case("registration")),
            Self::Service { policy, .. } => key_name.is_some_and(|n| n.eq_ignore_ascii_case(policy)),
        }
    }
}

/// What a token must satisfy.
#[derive(Debug, Clone, Copy)]
pub struct Expectation<'a> {
    /// Whom the token must be for.
    pub audience: Audience<'a>,
    /// Now, in seconds since the epoch.
    pub now: u64,
    /// How far in the past `se` may be (clock skew allowance), in seconds. The same allowance is added to
    /// `max_lifetime`, for a device whose clock runs ahead.
    pub skew: u64,
    /// How far ahead of `now` `se` may be (the longest lifetime a token may have), in seconds.
    pub max_lifetime: u64,
}

/// Verifies `token` against `expected` with any of `keys`; returns the index of the key that verified.
///
/// `se` must lie in `now - skew < se <= now + max_lifetime + skew`: a token that expired is refused, and so is
/// one signed to stay valid for longer than the service allows (a leaked token is then usable that long at most).
///
/// The checks are all made whatever fails first, and the MAC comparison is constant-time, so the time taken
/// does not reveal which check failed beyond what the error (which the device never sees) says.
pub fn verify(token: &SasToken<'_>, expected: &Expectation<'_>, keys: &[&[u8]]) -> Result<usize, SasError> {
    let resource_ok = percent_decode_str(token.raw_resource)
        .decode_utf8()
        .map(|decoded| expected.audience.names(&decoded))
        .unwrap_or(false);
    let key_name_ok = expected.audience.takes_key_name(token.key_name.as_deref());
    let fresh = token.expiry.saturating_add(expected.skew) > expected.now;
    let bounded = token.expiry <= expected.now.saturating_add(expected.max_lifetime).saturating_add(expected.skew);
    let message = format!("{}\n{}", token.raw_resource, token.raw_expiry);
    let mut verified = None;
    for (index, key) in keys.iter().enumerate() {
        let computed = mac(key, message.as_bytes());
        let equal: bool = computed.as_slice().ct_eq(token.signature.as_slice()).into();
        if equal && verified.is_none() {
            verified = Some(index);
        }
    }
    match (verified, resource_ok, key_name_ok, fresh, bounded) {
        (_, false, _, _, _) => Err(SasError::WrongResource),
        (_, _, false, _, _) => Err(SasError::WrongKeyName),
        (_, _, _, false, _) => Err(SasError::Expired),
        (_, _, _, _, false) => Err(SasError::LifetimeTooLong),
        (None, _, _, _, _) => Err(SasError::BadSignature),
        (Some(index), true, true, true, true) => Ok(index),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const SCOPE: &str = "0ne00111111";
    const KEY: &[u8] = b"0123456789abcdef0123456789abcdef";
    const NOW: u64 = 1_800_000_000;
    const DAY: u64 = 86_400;

    fn expect(resource: &str) -> Expectation<'_> {
        Expectation { audience: Audience::Device(resource), now: NOW, skew: 300, max_lifetime: DAY }
    }

    /// A token as a given client style builds it: `sr` encoded its way, `skn` or not.
    fn styled(sr: &str, skn: Option<&str>) -> String {
        sign(sr, NOW + 3600, KEY, skn)
    }

    #[test]
    fn every_real_client_style_verifies() {
        let resource = format!("{SCOPE}/registrations/my-Device");
        let styles = [
            // Python SDK: quote(uri, safe="") -> upper-case %2F, no skn.
            (format!("{SCOPE}%2Fregistrations%2Fmy-Device"), None),
            // C SDK: lower-case %2f, skn=registration.
            (format!("{SCOPE}%2fregistrations%2fmy-Device"), Some("registration")),
            // Node SDK: sr not encoded, skn=registration.
            (format!("{SCOPE}/registrations/my-Device"), Some("registration")),
            // IoT Edge: the whole audience lower-cased, `/` not encoded.
            (format!("{SCOPE}/registrations/my-device").to_lowercase(), Some("registration")),
        ];
        for (sr, skn) in styles {
            let header = styled(&sr, skn);
            let token = parse(&header).unwrap();
            assert_eq!(verify(&token, &expect(&resource), &[KEY]), Ok(0), "{header}");
        }
    }

    #[test]
    fn known_answer_matches_the_azure_documentation_recipe() {
        // HMAC-SHA256("{sr}\n{se}") with the base64-decoded key, base64 then URL-encoded (how-to-control-access.md).
        // Computed independently with: printf '0ne00111111%%2Fregistrations%%2Fmy-symkey-device\n1663952627' |
        //   openssl dgst -sha256 -mac HMAC -macopt key:0123456789abcdef0123456789abcdef -binary | base64
        let header = sign("0ne00111111%2Fregistrations%2Fmy-symkey-device", 1663952627, KEY, Some("registration"));
        assert_eq!(
            header,
            "SharedAccessSignature sr=0ne00111111%2Fregistrations%2Fmy-symkey-device&sig=wCqgIA9Sh69ywgxmZeNm2f1tFUtTWwiaHjGbUB5jL%2F8%3D&se=1663952627&skn=registration"
        );
    }

    #[test]
    fn group_keys_derive_per_device() {
        // Known answer: printf device-1 | openssl dgst -sha256 -mac HMAC -macopt key:0123456789abcdef0123456789abcdef
        //   -binary | base64
        let derived = derive_device_key(KEY, "device-1");
        assert_eq!(STANDARD.encode(derived.as_slice()), "RMt/vH6618dIqXOfPQmgeanMrOxw2/w49k23Foj+FWg=");
        assert_ne!(derive_device_key(KEY, "device-2").as_slice(), derived.as_slice());
    }

    #[test]
    fn either_key_verifies_and_the_index_says_which() {
        let other: &[u8] = b"another key of some length......";
        let resource = format!("{SCOPE}/registrations/d");
        let token_header = sign(&format!("{SCOPE}%2Fregistrations%2Fd"), NOW + 60, other, None);
        let token = parse(&token_header).unwrap();
        assert_eq!(verify(&token, &expect(&resource), &[KEY, other]), Ok(1));
        assert_eq!(verify(&token, &expect(&resource), &[KEY]), Err(SasError::BadSignature));
    }

    #[test]
    fn refusals() {
        let resource = format!("{SCOPE}/registrations/d");
        let sr = format!("{SCOPE}%2Fregistrations%2Fd");
        let check = |header: String| parse(&header).and_then(|t| verify(&t, &expect(&resource), &[KEY]));
        // Expired beyond the skew, and just within it.
        assert_eq!(check(sign(&sr, NOW - 301, KEY, None)), Err(SasError::Expired));
        assert_eq!(check(sign(&sr, NOW - 299, KEY, None)), Ok(0));
        // Another scope, another device.
        assert_eq!(check(sign("0ne99999999%2Fregistrations%2Fd", NOW + 60, KEY, None)), Err(SasError::WrongResource));
        assert_eq!(
            check(sign(&format!("{SCOPE}%2Fregistrations%2Fe"), NOW + 60, KEY, None)),
            Err(SasError::WrongResource)
        );
        // Wrong skn.
        assert_eq!(check(sign(&sr, NOW + 60, KEY, Some("iothubowner"))), Err(SasError::WrongKeyName));
        // Forged: signature over another expiry.
        let forged = sign(&sr, NOW + 60, KEY, None).replace(&format!("se={}", NOW + 60), &format!("se={}", NOW + 6000));
        assert_eq!(check(forged), Err(SasError::BadSignature));
        // Malformed.
        for bad in [
            "",
            "Bearer x",
            "SharedAccessSignature",
            "SharedAccessSignature sr=a&se=1",
            "SharedAccessSignature sr=a&sig=%%%&se=1",
            "SharedAccessSignature sr=a&sig=AAAA&se=soon",
            "SharedAccessSignature sr=a&sr=b&sig=AAAA&se=1",
            "SharedAccessSignature sr&sig=AAAA&se=1",
        ] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn lifetime_is_bounded_with_the_skew_for_clocks_running_ahead() {
        let resource = format!("{SCOPE}/registrations/d");
        let sr = format!("{SCOPE}%2Fregistrations%2Fd");
        let check = |expiry: u64, expected: &Expectation<'_>| {
            parse(&sign(&sr, expiry, KEY, None)).and_then(|t| verify(&t, expected, &[KEY]))
        };
        let expected = expect(&resource);
        // Up to the lifetime, and the skew beyond it (a device clock up to 300 s ahead): accepted.
        assert_eq!(check(NOW + DAY, &expected), Ok(0));
        assert_eq!(check(NOW + DAY + 300, &expected), Ok(0));
        // One second more, ten years, and the largest `se` there is: refused, however well signed.
        assert_eq!(check(NOW + DAY + 301, &expected), Err(SasError::LifetimeTooLong));
        assert_eq!(check(NOW + 10 * 365 * DAY, &expected), Err(SasError::LifetimeTooLong));
        assert_eq!(check(u64::MAX, &expected), Err(SasError::LifetimeTooLong));
        // The bound is the expectation's, and saturates rather than overflowing.
        let hour = Expectation { max_lifetime: 3600, ..expected };
        assert_eq!(check(NOW + 3600 + 300, &hour), Ok(0));
        assert_eq!(check(NOW + 3601 + 300, &hour), Err(SasError::LifetimeTooLong));
        let unbounded = Expectation { now: u64::MAX - 10, max_lifetime: u64::MAX, ..expected };
        assert_eq!(check(u64::MAX, &unbounded), Ok(0));
    }

    #[test]
    fn every_real_client_lifetime_fits_a_day() {
        // The lifetimes the SDKs sign for (`docs/protocol/device-api.md` §2.1): IoT Edge 30 s, C SDK 2400 s,
        // Python and Node 3600 s, C# one day (`ProvisioningSasBuilder`: `TimeSpan.FromDays(1)`).
        let resource = format!("{SCOPE}/registrations/d");
        let sr = format!("{SCOPE}%2Fregistrations%2Fd");
        for lifetime in [30, 2400, 3600, DAY] {
            // Signed by a device whose clock is right, and by one whose clock is 299 s ahead.
            for ahead in [0, 299] {
                let token = sign(&sr, NOW + ahead + lifetime, KEY, Some("registration"));
                let verified = parse(&token).and_then(|t| verify(&t, &expect(&resource), &[KEY]));
                assert_eq!(verified, Ok(0), "lifetime {lifetime} s, clock {ahead} s ahead");
            }
        }
    }

    #[test]
    fn lifetime_is_reported_before_the_signature() {
        // As for an expired token: the checks that need no key are reported first (the MAC is computed and
        // compared either way), so the audit says what a device holding the key would have to change.
        let resource = format!("{SCOPE}/registrations/d");
        let header = sign(&format!("{SCOPE}%2Fregistrations%2Fd"), NOW + 2 * DAY, b"some other key", None);
        let token = parse(&header).unwrap();
        assert_eq!(verify(&token, &expect(&resource), &[KEY]), Err(SasError::LifetimeTooLong));
    }

    const HOSTS: [&str; 2] = ["dps.example.com", "127.0.0.2"];

    fn service(policy: &str) -> (Vec<String>, String) {
        (HOSTS.iter().map(|h| (*h).to_owned()).collect(), policy.to_owned())
    }

    fn check_service(header: &str, policy: &str, keys: &[&[u8]]) -> Result<usize, SasError> {
        let (names, policy) = service(policy);
        let expected = Expectation {
            audience: Audience::Service { host_names: &names, policy: &policy },
            now: NOW,
            skew: 300,
            max_lifetime: DAY,
        };
        parse(header).and_then(|t| verify(&t, &expected, keys))
    }

    #[test]
    fn service_tokens_of_every_real_client_style_verify() {
        let styles = [
            // Node service SDK: encodeURIComponent(HostName), skn = the policy (`azure-iot-common`).
            "dps.example.com",
            "127.0.0.2",
            // Python service client: quote_plus(endpoint), port included when the connection string has one.
            "dps.example.com%3A8444",
            "127.0.0.2%3A443",
            // Not encoded at all, upper-cased, with a trailing slash: the same host.
            "DPS.example.com:8444",
            "dps.example.com/",
        ];
        for sr in styles {
            let header = sign(sr, NOW + 3600, KEY, Some("EnrollmentAdmin"));
            assert_eq!(check_service(&header, "enrollmentadmin", &[KEY]), Ok(0), "{header}");
        }
    }

    #[test]
    fn service_token_known_answer() {
        // printf 'dps.example.com\n1800003600' |
        //   openssl dgst -sha256 -mac HMAC -macopt key:0123456789abcdef0123456789abcdef -binary | base64
        let header = sign("dps.example.com", NOW + 3600, KEY, Some("provisioningserviceowner"));
        assert_eq!(
            header,
            "SharedAccessSignature sr=dps.example.com&sig=y7ekBFMz5TJ8mpWp9Q3bQ%2BewjNsxg377BFBh9ilqVTU%3D&se=1800003600&skn=provisioningserviceowner"
        );
    }

    #[test]
    fn service_token_refusals() {
        let other: &[u8] = b"another key of some length......";
        let good = |sr: &str| sign(sr, NOW + 3600, KEY, Some("p"));
        // Another service, a device resource, a host that merely starts like ours, a non-numeric port.
        for sr in ["other.example.com", "0ne001/registrations/d", "dps.example.com.evil", "dps.example.com%3Ahttps"] {
            assert_eq!(check_service(&good(sr), "p", &[KEY]), Err(SasError::WrongResource), "{sr}");
        }
        // Another policy's name, none at all, the device key name.
        assert_eq!(check_service(&good("dps.example.com"), "q", &[KEY]), Err(SasError::WrongKeyName));
        assert_eq!(
            check_service(&sign("dps.example.com", NOW + 60, KEY, None), "p", &[KEY]),
            Err(SasError::WrongKeyName)
        );
        let device_named = sign("dps.example.com", NOW + 60, KEY, Some("registration"));
        assert_eq!(check_service(&device_named, "p", &[KEY]), Err(SasError::WrongKeyName));
        // Expired, too long-lived, the wrong key; either of the policy's two keys.
        assert_eq!(
            check_service(&sign("dps.example.com", NOW - 301, KEY, Some("p")), "p", &[KEY]),
            Err(SasError::Expired)
        );
        let long = sign("dps.example.com", NOW + DAY + 301, KEY, Some("p"));
        assert_eq!(check_service(&long, "p", &[KEY]), Err(SasError::LifetimeTooLong));
        assert_eq!(check_service(&good("dps.example.com"), "p", &[other]), Err(SasError::BadSignature));
        assert_eq!(check_service(&good("dps.example.com"), "p", &[other, KEY]), Ok(1));
        // A device token is not a service token, nor the reverse.
        let device = sign("0ne00111111%2Fregistrations%2Fd", NOW + 60, KEY, None);
        assert_eq!(check_service(&device, "p", &[KEY]), Err(SasError::WrongResource));
        let token = parse(&good("dps.example.com")).map(|t| verify(&t, &expect("dps.example.com"), &[KEY]));
        assert_eq!(token, Ok(Err(SasError::WrongKeyName)));
    }

    proptest! {
        #[test]
        fn parse_and_verify_never_panic(header in "\\PC{0,300}") {
            if let Ok(token) = parse(&header) {
                let _ = verify(&token, &Expectation { audience: Audience::Device("s/registrations/d"), now: NOW, skew: 300, max_lifetime: DAY }, &[KEY]);
                let names = ["dps.example.com".to_owned()];
                let _ = verify(&token, &Expectation { audience: Audience::Service { host_names: &names, policy: "p" }, now: NOW, skew: 300, max_lifetime: DAY }, &[KEY]);
            }
        }

        #[test]
        fn signed_tokens_round_trip(id in "[A-Za-z0-9._:-]{1,128}", ttl in 1u64..=DAY) {
            let resource = format!("{SCOPE}/registrations/{id}");
            let encoded: String = percent_encoding::utf8_percent_encode(&resource, percent_encoding::NON_ALPHANUMERIC).collect();
            let header = sign(&encoded, NOW + ttl, KEY, None);
            let token = parse(&header).unwrap();
            prop_assert_eq!(verify(&token, &expect(&resource), &[KEY]), Ok(0));
        }

        #[test]
        fn no_token_outlives_the_bound(ahead in 0u64..u64::MAX, max_lifetime in 0u64..=10 * DAY, skew in 0u64..=3600) {
            let resource = format!("{SCOPE}/registrations/d");
            let expiry = NOW.saturating_add(ahead);
            let header = sign(&format!("{SCOPE}%2Fregistrations%2Fd"), expiry, KEY, None);
            let token = parse(&header).unwrap();
            let expected = Expectation { audience: Audience::Device(&resource), now: NOW, skew, max_lifetime };
            let verified = verify(&token, &expected, &[KEY]);
            prop_assert_eq!(verified.is_ok(), ahead <= max_lifetime + skew, "{:?}", verified);
        }
    }
}
