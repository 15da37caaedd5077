//! The policy of the service's outbound HTTP calls (custom allocation webhooks, webhook hubs, the JWKS of an
//! external token issuer): whom the service may call, over what, and how much it reads back.
//!
//! The URLs these calls go to come from the admin API (an operator's allocation webhook, an owner's webhook hub) or
//! the command line, so each call is a request an administrator chooses and the service makes from inside the
//! network: without a policy, a server-side request forgery into the cloud's metadata service, the database, or a
//! broker's admin port. Every call therefore goes through a client built by [`OutboundPolicy::client`]:
//!
//! - **https only.** Plain `http` only to a loopback host (`localhost`, `127.0.0.0/8`, `::1`), or anywhere with
//!   `--allow-insecure-outbound` (tests, development). [`OutboundPolicy::check_url`].
//! - **No redirects.** A `3xx` answer is returned to the caller as it is (and treated as a failure there): a
//!   redirect would lead the call to an address never checked.
//! - **Addresses are checked after name resolution and pinned.** The client's resolver resolves the host once,
//!   refuses the call when any address is in a range the policy does not allow ([`address::classify`]), and hands
//!   the connector exactly the addresses it checked, so a second resolution (DNS rebinding) cannot move the call.
//!   Host names that are addresses are checked by [`OutboundPolicy::check_url`], before the call. No proxy is used
//!   (a proxy would connect to the target on our behalf, unchecked).
//! - **Refused ranges**: loopback, private (RFC 1918, IPv6 unique local), link-local (`169.254.0.0/16`,
//!   `fe80::/10`), unspecified, CGNAT (`100.64.0.0/10`), cloud metadata addresses, and the other special-purpose
//!   ranges that are no place for a webhook (multicast, broadcast, reserved, benchmarking, documentation). An
//!   address in such a range is called only when `--outbound-allow CIDR,...` names it; loopback also with
//!   `--allow-insecure-outbound`.
//! - **Bodies are read with a cap** ([`read_capped`]): the read stops, and fails, past the caller's limit.
//! - **URLs are logged without their query** ([`redacted`]): Azure Functions, a common webhook host, carry their
//!   key there.
#![forbid(unsafe_code, unused_must_use)]
#![deny(missing_docs)]

pub mod address;
mod body;
mod policy;

pub use address::{Range, classify};
pub use body::{BodyError, read_capped};
pub use policy::{OutboundError, OutboundPolicy, describe, redacted, redacted_text};
