//! The policy itself: the URL check, the resolver that checks and pins addresses, and the client they make.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use ipnet::IpNet;
use reqwest::Url;
use reqwest::dns::{Addrs, Name, Resolve, Resolving};

use crate::address::{Range, classify};

/// What the service may call: the ranges the allow-list opens, and whether plain http and loopback are allowed
/// everywhere (`--allow-insecure-outbound`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OutboundPolicy {
    allow: Vec<IpNet>,
    insecure: bool,
}

/// Why an outbound call is not made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OutboundError {
    /// The URL cannot be parsed or has no host.
    #[error("the URL {url} is not valid: {reason}")]
    InvalidUrl {
        /// The URL, without its query.
        url: String,
        /// Why.
        reason: String,
    },
    /// A scheme other than https (or plain http where it is not allowed).
    #[error(
        "the URL {url} must be https (plain http only to a loopback host, or anywhere with --allow-insecure-outbound)"
    )]
    Insecure {
        /// The URL, without its query.
        url: String,
    },
    /// The host is, or resolves to, an address in a refused range.
    #[error("{}: not called unless --outbound-allow names it", refusal(host, address, *range))]
    Refused {
        /// The host as the URL names it.
        host: String,
        /// The address refused.
        address: IpAddr,
        /// Its range.
        range: Range,
    },
    /// The host name does not resolve.
    #[error("{host} does not resolve: {reason}")]
    Unresolved {
        /// The host name.
        host: String,
        /// Why.
        reason: String,
    },
}

/// `10.0.0.7 is a private address (...)`, or `hooks.internal resolves to 10.0.0.7, a private address (...)`.
fn refusal(host: &str, address: &IpAddr, range: Range) -> String {
    if host == address.to_string() {
        format!("{address} is {}", range.describe())
    } else {
        format!("{host} resolves to {address}, {}", range.describe())
    }
}

impl OutboundPolicy {
    /// A policy that opens the ranges of `allow` and, when `insecure`, allows plain http and loopback everywhere.
    pub fn new(allow: Vec<IpNet>, insecure: bool) -> Self {
        Self { allow, insecure }
    }

    /// Whether plain http and loopback are allowed everywhere.
    pub fn is_insecure(&self) -> bool {
        self.insecure
    }

    /// Refuses `ip` when it is in a refused range that neither the allow-list nor (for loopback)
    /// `--allow-insecure-outbound` opens; `host` is the name the caller asked for, for the message.
    pub fn check_address(&self, host: &str, ip: IpAddr) -> Result<(), OutboundError> {
        let Some(range) = classify(ip) else { return Ok(()) };
        if self.allow.iter().any(|net| net.contains(&ip)) || (range == Range::Loopback && self.insecure) {
            return Ok(());
        }
        Err(OutboundError::Refused { host: host.to_owned(), address: ip, range })
    }

    /// Checks what can be checked of `url` before a call: its scheme, and its host when that is an address (names
    /// are checked after resolution, by the client's resolver).
    pub fn check_url(&self, url: &Url) -> Result<(), OutboundError> {
        let shown = redacted(url);
        let host =
            url.host().ok_or_else(|| OutboundError::InvalidUrl { url: shown.clone(), reason: "no host".into() })?;
        let loopback_host = match &host {
            url::Host::Domain(name) => name.eq_ignore_ascii_case("localhost"),
            url::Host::Ipv4(ip) => ip.is_loopback(),
            url::Host::Ipv6(ip) => ip.is_loopback(),
        };
        match url.scheme() {
            "https" => {}
            "http" if loopback_host || self.insecure => {}
            _ => return Err(OutboundError::Insecure { url: shown }),
        }
        match host {
            url::Host::Ipv4(ip) => self.check_address(&ip.to_string(), IpAddr::V4(ip)),
            url::Host::Ipv6(ip) => self.check_address(&ip.to_string(), IpAddr::V6(ip)),
            url::Host::Domain(_) => Ok(()),
        }
    }

    /// Parses `url` and checks it ([`Self::check_url`]).
    pub fn parse_url(&self, url: &str) -> Result<Url, OutboundError> {
        let parsed = Url::parse(url.trim())
            .map_err(|e| OutboundError::InvalidUrl { url: redacted_text(url), reason: e.to_string() })?;
        self.check_url(&parsed)?;
        Ok(parsed)
    }

    /// A client builder under this policy: no redirects, no proxy, and a resolver that checks every address a name
    /// resolves to and pins the connection to them. Callers add timeouts and TLS settings, and must still call
    /// [`Self::check_url`] on each URL (addresses written as the host never reach the resolver).
    pub fn client(&self) -> reqwest::ClientBuilder {
        reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .dns_resolver(Arc::new(CheckedResolver(self.clone())))
    }
}

/// Resolves with the system resolver, then refuses the name when any of its addresses is refused; the connector
/// gets exactly the addresses checked here.
struct CheckedResolver(OutboundPolicy);

impl Resolve for CheckedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let policy = self.0.clone();
        Box::pin(async move {
            let host = name.as_str().to_owned();
            let addresses: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0))
                .await
                .map_err(|e| OutboundError::Unresolved { host: host.clone(), reason: e.to_string() })?
                .collect();
            if addresses.is_empty() {
                return Err(OutboundError::Unresolved { host, reason: "no address".into() }.into());
            }
            for address in &addresses {
                policy.check_address(&host, address.ip())?;
            }
            let addresses: Addrs = Box::new(addresses.into_iter());
            Ok(addresses)
        })
    }
}

/// `url` for a log line or a message: without its query and fragment (webhook hosts such as Azure Functions carry
/// their key in the query) and without credentials.
pub fn redacted(url: &Url) -> String {
    let mut shown = url.clone();
    shown.set_query(None);
    shown.set_fragment(None);
    // Only URLs that cannot have credentials refuse these, and they have none to hide.
    let _ = shown.set_username("");
    let _ = shown.set_password(None);
    shown.to_string()
}

/// [`redacted`] for a text that may not parse: everything from the first `?` or `#` is cut.
pub fn redacted_text(url: &str) -> String {
    match Url::parse(url.trim()) {
        Ok(parsed) => redacted(&parsed),
        Err(_) => {
            url.split(['?', '#']).next().unwrap_or_default().split('@').next_back().unwrap_or_default().to_owned()
        }
    }
}

/// A failed call in words, with its causes (a refusal of the policy among them) and without the URL, which
/// reqwest would print with its query.
pub fn describe(error: reqwest::Error) -> String {
    let kind = if error.is_timeout() {
        "timed out"
    } else if error.is_connect() {
        "cannot connect"
    } else if error.is_body() || error.is_decode() {
        "cannot read the answer"
    } else {
        "request failed"
    };
    let error = error.without_url();
    let mut text = format!("{kind}: {error}");
    let mut source = std::error::Error::source(&error);
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(text: &str) -> Url {
        Url::parse(text).unwrap()
    }

    /// https anywhere public; http only to loopback hosts, or anywhere when insecure.
    #[test]
    fn schemes() {
        let strict = OutboundPolicy::default();
        assert!(strict.check_url(&url("https://hooks.example.com/a")).is_ok());
        assert!(matches!(strict.check_url(&url("http://hooks.example.com/a")), Err(OutboundError::Insecure { .. })));
        assert!(matches!(strict.check_url(&url("ftp://hooks.example.com/a")), Err(OutboundError::Insecure { .. })));
        // http to a loopback host passes the scheme check, but loopback itself still needs opening.
        assert!(strict.check_url(&url("http://localhost:8080/a")).is_ok(), "names are checked at resolution");
        assert!(matches!(strict.check_url(&url("http://127.0.0.1:8080/a")), Err(OutboundError::Refused { .. })));
        let insecure = OutboundPolicy::new(Vec::new(), true);
        assert!(insecure.check_url(&url("http://hooks.example.com/a")).is_ok());
        assert!(insecure.check_url(&url("http://127.0.0.1:8080/a")).is_ok());
        assert!(insecure.check_url(&url("http://[::1]:8080/a")).is_ok());
        assert!(matches!(insecure.check_url(&url("ftp://hooks.example.com/a")), Err(OutboundError::Insecure { .. })));
    }

    /// Refused ranges open only through the allow-list (loopback also through insecure), exactly as wide as named.
    #[test]
    fn allow_list() {
        let strict = OutboundPolicy::default();
        let private: IpAddr = "10.9.8.7".parse().unwrap();
        let metadata: IpAddr = "169.254.169.254".parse().unwrap();
        assert!(strict.check_address("h", "93.184.216.34".parse().unwrap()).is_ok());
        let refused = strict.check_address("hooks.internal", private).unwrap_err();
        assert_eq!(
            refused,
            OutboundError::Refused { host: "hooks.internal".into(), address: private, range: Range::Private }
        );
        assert!(refused.to_string().contains("--outbound-allow"), "{refused}");
        assert!(refused.to_string().starts_with("hooks.internal resolves to 10.9.8.7, a private address"), "{refused}");
        let literal = strict.check_address("10.9.8.7", private).unwrap_err().to_string();
        assert!(literal.starts_with("10.9.8.7 is a private address"), "{literal}");
        let open = OutboundPolicy::new(vec!["10.9.8.0/24".parse().unwrap()], false);
        assert!(open.check_address("h", private).is_ok());
        assert!(open.check_address("h", "10.9.9.1".parse().unwrap()).is_err());
        assert!(open.check_address("h", metadata).is_err());
        assert!(open.check_address("h", "127.0.0.1".parse().unwrap()).is_err());
        let insecure = OutboundPolicy::new(Vec::new(), true);
        assert!(insecure.check_address("h", "127.0.0.2".parse().unwrap()).is_ok());
        assert!(insecure.check_address("h", private).is_err(), "insecure opens loopback only");
        assert!(insecure.check_address("h", metadata).is_err());
        let named = OutboundPolicy::new(vec!["169.254.169.254/32".parse().unwrap()], false);
        assert!(named.check_address("h", metadata).is_ok());
    }

    /// Queries, fragments and credentials never reach a log line.
    #[test]
    fn urls_are_logged_without_their_query() {
        let shown = redacted(&url("https://user:pw@fn.azurewebsites.net/api/allocate?code=SECRET#frag"));
        assert_eq!(shown, "https://fn.azurewebsites.net/api/allocate");
        assert_eq!(redacted_text("not a url?code=SECRET"), "not a url");
        assert_eq!(redacted_text("https://x.example/a?code=SECRET"), "https://x.example/a");
    }

    /// The resolver refuses a name that resolves into a refused range, and hands back exactly what it checked.
    #[tokio::test]
    async fn resolver_checks_and_pins() {
        let strict = CheckedResolver(OutboundPolicy::default());
        let refused = strict.resolve("localhost".parse::<Name>().unwrap()).await;
        assert!(refused.is_err());
        let open = CheckedResolver(OutboundPolicy::new(
            vec!["127.0.0.0/8".parse().unwrap(), "::1/128".parse().unwrap()],
            false,
        ));
        let addresses: Vec<SocketAddr> = open.resolve("localhost".parse::<Name>().unwrap()).await.unwrap().collect();
        assert!(!addresses.is_empty());
        assert!(addresses.iter().all(|a| a.ip().is_loopback()), "{addresses:?}");
    }
}
