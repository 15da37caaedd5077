//! How many MQTT connections one device holds, and for how long: so that one credential cannot hold every slot
//! of `--mqtt-max-connections`, and no connection outlives the credential it was opened with.
//!
//! - **Per device**: [`DeviceConnections`] counts the authenticated connections of each registration id over all
//!   the endpoint's workers. A device that opens one more than `--mqtt-max-connections-per-device` keeps the new
//!   connection and its oldest is closed, as MQTT 3.1.1 §3.1.4 (MQTT-3.1.4-2) has a server disconnect the existing
//!   client when a client id connects again, and as IoT Hub does. Refusing the new one instead would lock out the
//!   device that needs the limit least: one that rebooted or lost its network, whose old connections the server
//!   holds until their keep-alive runs out (1.5 times the client's, a minute and more with the Azure SDKs). A
//!   stolen credential gains nothing either way: it can already register as the device, and it can never hold
//!   more than the limit.
//! - **Memory**: an entry exists only for a connection that authenticated, and each such connection holds one of
//!   the `--mqtt-max-connections` slots, so the map holds at most that many connections whatever strangers send.
//!   An entry is removed when its connection ends, or when a newer connection of its device replaces it.
//! - **Lifetime**: [`credential_expiry`] says when the credential stops authenticating: a SAS token at its `se` plus
//!   `--sas-clock-skew` (the moment the service would refuse it, `zerotouch_attest::sas::verify`); a certificate at
//!   the leaf's notAfter (plus `--renewal-grace` for an operational certificate that connected within its grace).
//!   The endpoint closes the connection then and runs none of its requests after it.
//!
//! The decisions here are pure or behind one short lock, and unit-tested without a network.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::oneshot;

use crate::registration::Evidence;

/// The authenticated MQTT connections of each device, over all the endpoint's workers.
#[derive(Debug)]
pub struct DeviceConnections {
    /// Connections one device may hold; a newer one replaces its oldest.
    limit: usize,
    /// Per registration id (its canonical key), its open connections, oldest first.
    open: Mutex<HashMap<String, VecDeque<Held>>>,
    /// Numbers the connections, to find one again when it ends.
    serial: AtomicU64,
}

/// One connection in [`DeviceConnections`].
#[derive(Debug)]
struct Held {
    serial: u64,
    /// Told when a newer connection of the device replaces this one; dropped when it ends.
    replaced: oneshot::Sender<()>,
}

/// A connection's place in [`DeviceConnections`], given back when the connection ends (dropped).
#[derive(Debug)]
pub struct Lease {
    connections: Arc<DeviceConnections>,
    key: String,
    serial: u64,
}

impl DeviceConnections {
    /// At most `limit` connections per device (at least 1 is kept).
    pub fn new(limit: usize) -> Arc<Self> {
        Arc::new(Self { limit: limit.max(1), open: Mutex::new(HashMap::new()), serial: AtomicU64::new(0) })
    }

    /// Records an authenticated connection of the device `key` (its registration id's canonical key). Call it only
    /// after the device authenticated: a stranger must not replace a device's connections.
    ///
    /// Returns the connection's lease and what tells it a newer connection replaced it (the receiver yields `()`
    /// then, and an error when the lease is dropped first). If the device now holds more than the limit, its oldest
    /// connections are told so at once.
    pub fn open(self: &Arc<Self>, key: String) -> (Lease, oneshot::Receiver<()>) {
        let serial = self.serial.fetch_add(1, Ordering::Relaxed);
        let (replaced, notice) = oneshot::channel();
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        let held = open.entry(key.clone()).or_default();
        held.push_back(Held { serial, replaced });
        while held.len() > self.limit {
            if let Some(oldest) = held.pop_front() {
                // The oldest may have ended meanwhile; then nobody listens, which is fine.
                let _ = oldest.replaced.send(());
            }
        }
        drop(open);
        (Lease { connections: Arc::clone(self), key, serial }, notice)
    }

    /// Connections held by `key` now.
    #[cfg(test)]
    fn held_by(&self, key: &str) -> usize {
        self.open.lock().unwrap_or_else(PoisonError::into_inner).get(key).map_or(0, VecDeque::len)
    }

    /// Devices with a connection now (the map's size).
    #[cfg(test)]
    fn devices(&self) -> usize {
        self.open.lock().unwrap_or_else(PoisonError::into_inner).len()
    }

    fn close(&self, key: &str, serial: u64) {
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(held) = open.get_mut(key) {
            held.retain(|h| h.serial != serial);
            if held.is_empty() {
                open.remove(key);
            }
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.connections.close(&self.key, self.serial);
    }
}

/// When the credential a device connected with stops authenticating it, so its connection must end: a SAS token
/// at `se` plus `sas_clock_skew`; a certificate chain at its leaf's notAfter, or, when that had already passed at
/// `now` (an operational certificate renewing within its grace), at notAfter plus `renewal_grace`.
///
/// `None` if the evidence carries no time to read (no credential, or one that does not parse: authentication
/// refuses those first). Only the leaf bounds a certificate connection: the intermediates a device sends are not
/// all used (an operational certificate is checked against our CA alone), so their dates say nothing.
pub fn credential_expiry(
    evidence: &Evidence,
    now: SystemTime,
    sas_clock_skew: Duration,
    renewal_grace: Duration,
) -> Option<SystemTime> {
    match evidence {
        Evidence::Sas(header) => {
            let token = zerotouch_attest::sas::parse(header).ok()?;
            UNIX_EPOCH.checked_add(Duration::from_secs(token.expiry))?.checked_add(sas_clock_skew)
        }
        Evidence::Certificates(chain) => {
            let not_after = SystemTime::from(zerotouch_pki::details(chain.first()?).ok()?.not_after);
            if not_after > now { Some(not_after) } else { not_after.checked_add(renewal_grace) }
        }
        Evidence::None => None,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    use tokio::sync::oneshot::error::TryRecvError;

    #[test]
    fn a_device_beyond_its_limit_keeps_the_new_connection_and_loses_its_oldest() {
        let connections = DeviceConnections::new(2);
        let (first, mut first_notice) = connections.open("dev-1".into());
        let (_second, mut second_notice) = connections.open("dev-1".into());
        let (_other, mut other_notice) = connections.open("dev-2".into());
        assert_eq!(first_notice.try_recv(), Err(TryRecvError::Empty));
        assert_eq!(connections.held_by("dev-1"), 2);

        let (_third, mut third_notice) = connections.open("dev-1".into());
        assert_eq!(first_notice.try_recv(), Ok(()), "the oldest is told to close");
        assert_eq!(second_notice.try_recv(), Err(TryRecvError::Empty));
        assert_eq!(third_notice.try_recv(), Err(TryRecvError::Empty));
        assert_eq!(other_notice.try_recv(), Err(TryRecvError::Empty), "another device is untouched");
        assert_eq!(connections.held_by("dev-1"), 2);
        // The replaced connection ending later changes nothing for the others.
        drop(first);
        assert_eq!(connections.held_by("dev-1"), 2);
    }

    #[test]
    fn entries_go_when_their_connections_end() {
        let connections = DeviceConnections::new(1);
        let (lease, mut notice) = connections.open("dev-1".into());
        let (other, _) = connections.open("dev-2".into());
        assert_eq!(connections.devices(), 2);
        drop(lease);
        assert_eq!(notice.try_recv(), Err(TryRecvError::Closed), "an ended connection is not told to close");
        drop(other);
        assert_eq!(connections.devices(), 0);
        // Many connections of one device never hold more than the limit.
        let leases: Vec<_> = (0..100).map(|_| connections.open("dev-3".into())).collect();
        assert_eq!(connections.held_by("dev-3"), 1);
        drop(leases);
        assert_eq!(connections.devices(), 0);
    }

    #[test]
    fn a_limit_of_zero_still_keeps_the_newest_connection() {
        let connections = DeviceConnections::new(0);
        let (_lease, mut notice) = connections.open("dev-1".into());
        assert_eq!(notice.try_recv(), Err(TryRecvError::Empty));
        assert_eq!(connections.held_by("dev-1"), 1);
    }

    #[test]
    fn a_token_connection_ends_when_the_service_would_refuse_the_token() {
        let token = zerotouch_attest::sas::sign("0ne00000001%2Fregistrations%2Fdev-1", 1_000, b"key", None);
        let now = UNIX_EPOCH + Duration::from_secs(900);
        let expiry = credential_expiry(&Evidence::Sas(token), now, Duration::from_secs(300), Duration::ZERO);
        assert_eq!(expiry, Some(UNIX_EPOCH + Duration::from_secs(1_300)));
        let garbage = Evidence::Sas("SharedAccessSignature se=soon".into());
        assert_eq!(credential_expiry(&garbage, now, Duration::ZERO, Duration::ZERO), None);
        assert_eq!(credential_expiry(&Evidence::None, now, Duration::ZERO, Duration::ZERO), None);
    }

    #[test]
    fn a_certificate_connection_ends_at_the_leaf_s_not_after_or_its_renewal_grace() {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(vec!["dev-1".to_owned()]).unwrap();
        params.not_before = time::OffsetDateTime::from_unix_timestamp(1_000).unwrap();
        params.not_after = time::OffsetDateTime::from_unix_timestamp(2_000).unwrap();
        let leaf = params.self_signed(&key).unwrap().der().to_vec();
        let chain = Evidence::Certificates(vec![leaf, b"not a certificate".to_vec()]);
        let grace = Duration::from_secs(600);
        let at = |secs| UNIX_EPOCH + Duration::from_secs(secs);
        assert_eq!(credential_expiry(&chain, at(1_500), Duration::ZERO, grace), Some(at(2_000)));
        assert_eq!(credential_expiry(&chain, at(2_100), Duration::ZERO, grace), Some(at(2_600)));
        let broken = Evidence::Certificates(vec![b"not a certificate".to_vec()]);
        assert_eq!(credential_expiry(&broken, at(1_500), Duration::ZERO, grace), None);
        assert_eq!(credential_expiry(&Evidence::Certificates(Vec::new()), at(1_500), Duration::ZERO, grace), None);
    }
}
