//! Device request limits: a per-device request rate (Azure: 5 polls per 10 s) and a global cap on registrations
//! in flight. Both answer 429 with `Retry-After` instead of letting load pile up.
//!
//! The per-device window is kept in this replica's memory: it protects the replica from a device that polls too
//! fast, and a device spread over several replicas gets at most that many times the rate, which is harmless.
//! Nothing here decides correctness, which lives in the database.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::error::RegistrationError;

/// The limits of one replica.
#[derive(Debug)]
pub struct DeviceLimits {
    max_requests: u32,
    window: Duration,
    windows: Mutex<Windows>,
    in_flight: Arc<Semaphore>,
    /// Tokens for TPM first legs, which strangers can send (see [`FIRST_LEGS_PER_SECOND`]), and when counted.
    first_legs: Mutex<(f64, Instant)>,
    /// Tokens for audit records of refused requests (see [`REFUSAL_AUDITS_PER_SECOND`]), and when counted.
    refusal_audits: Mutex<(f64, Instant)>,
}

/// Refused device requests this replica writes to the audit log per second, over all registration ids (as many at
/// once); beyond, refusals are only logged. Each refused request with a fresh registration id would otherwise write
/// an audit row, so a stranger could fill the database at the rate it can send requests.
pub const REFUSAL_AUDITS_PER_SECOND: f64 = 100.0;

/// Takes a token from a bucket refilled at `rate` per second (holding at most `rate`); `false` when it is empty.
fn take(bucket: &Mutex<(f64, Instant)>, rate: f64) -> bool {
    let Ok(mut bucket) = bucket.lock() else { return true };
    let (tokens, at) = &mut *bucket;
    let now = Instant::now();
    *tokens = (*tokens + now.duration_since(*at).as_secs_f64() * rate).min(rate);
    *at = now;
    if *tokens < 1.0 {
        return false;
    }
    *tokens -= 1.0;
    true
}

/// TPM first legs this replica answers per second, over all devices (as many at once): each costs an activation
/// blob (RSA-OAEP and key derivations, about a fifth of a millisecond) and database reads before anything is
/// authenticated, so their rate is bounded whoever sends them. A legitimate fleet sends one per device.
pub const FIRST_LEGS_PER_SECOND: f64 = 1000.0;

/// How long a throttled device should wait.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryAfter(pub Duration);

impl RetryAfter {
    /// The wait when every in-flight slot is taken.
    pub const BUSY: Self = Self(Duration::from_secs(1));

    /// The refusal that tells the device to wait (whole seconds, at least one).
    pub fn refusal(self) -> RegistrationError {
        RegistrationError::Throttled { retry_after: self.0.as_secs().max(1) }
    }
}

/// Devices whose windows one generation of [`Windows`] tracks; a device beyond them is admitted untracked (the
/// per-device rate protects this replica; it decides nothing else, and refusal audits have their own global bound).
pub const MAX_TRACKED: usize = 100_000;

/// The request windows of devices, in two generations, each as long as a window: a device asking again carries its
/// window over from the previous generation; when the generations turn, the previous one is dropped whole, and
/// every window in it has ended by then. No entry is ever swept one by one under the lock (which held up every
/// request once a stranger's fresh ids had filled the table), and the memory is bounded by the ids seen within
/// two windows, at most [`MAX_TRACKED`] per generation.
#[derive(Debug)]
struct Windows {
    turned: Instant,
    current: HashMap<String, (Instant, u32)>,
    previous: HashMap<String, (Instant, u32)>,
}

impl DeviceLimits {
    /// `max_requests` per `window` per device, `max_in_flight` registrations at once.
    pub fn new(max_requests: u32, window: Duration, max_in_flight: usize) -> Self {
        Self {
            max_requests,
            window,
            windows: Mutex::new(Windows { turned: Instant::now(), current: HashMap::new(), previous: HashMap::new() }),
            in_flight: Arc::new(Semaphore::new(max_in_flight.max(1))),
            first_legs: Mutex::new((FIRST_LEGS_PER_SECOND, Instant::now())),
            refusal_audits: Mutex::new((REFUSAL_AUDITS_PER_SECOND, Instant::now())),
        }
    }

    /// Whether a refused request may be written to the audit log now (see [`REFUSAL_AUDITS_PER_SECOND`]).
    pub fn audit_refusal(&self) -> bool {
        take(&self.refusal_audits, REFUSAL_AUDITS_PER_SECOND)
    }

    /// Takes a token for one TPM first leg, or says how long to wait (see [`FIRST_LEGS_PER_SECOND`]).
    pub fn first_leg(&self) -> Result<(), RetryAfter> {
        if take(&self.first_legs, FIRST_LEGS_PER_SECOND) { Ok(()) } else { Err(RetryAfter(Duration::from_secs(1))) }
    }

    /// Counts a request of `device` (canonical registration id); refuses it beyond the rate.
    pub fn admit(&self, device: &str) -> Result<(), RetryAfter> {
        let now = Instant::now();
        let Ok(mut guard) = self.windows.lock() else { return Ok(()) };
        let windows = &mut *guard;
        if now.duration_since(windows.turned) >= self.window {
            windows.previous = std::mem::take(&mut windows.current);
            windows.turned = now;
        }
        let (max_requests, window) = (self.max_requests, self.window);
        let charge = |(start, count): &mut (Instant, u32)| {
            if now.duration_since(*start) >= window {
                *start = now;
                *count = 0;
            }
            if *count >= max_requests {
                let wait = window.saturating_sub(now.duration_since(*start));
                return Err(RetryAfter(wait.max(Duration::from_secs(1))));
            }
            *count += 1;
            Ok(())
        };
        // A device seen in this window is found with one lookup; a new one is carried over from the previous window.
        if let Some(counted) = windows.current.get_mut(device) {
            return charge(counted);
        }
        if windows.current.len() >= MAX_TRACKED {
            return Ok(());
        }
        let mut counted = windows.previous.remove(device).unwrap_or((now, 0));
        let verdict = charge(&mut counted);
        windows.current.insert(device.to_owned(), counted);
        verdict
    }

    /// A slot for one registration in flight, or `None` when all are taken.
    pub fn enter(&self) -> Option<OwnedSemaphorePermit> {
        Arc::clone(&self.in_flight).try_acquire_owned().ok()
    }

    /// A slot for one device request in flight (register, poll, status lookup, CONNECT, EST), or the refusal that
    /// tells the device to come back when all are taken.
    pub fn slot(&self) -> Result<OwnedSemaphorePermit, RegistrationError> {
        self.enter().ok_or(RetryAfter::BUSY.refusal())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sixth_request_in_the_window_is_refused_and_others_are_not_affected() {
        let limits = DeviceLimits::new(5, Duration::from_secs(10), 8);
        for _ in 0..5 {
            assert!(limits.admit("a").is_ok());
        }
        let RetryAfter(wait) = limits.admit("a").unwrap_err();
        assert!(wait <= Duration::from_secs(10) && wait >= Duration::from_secs(1));
        assert!(limits.admit("b").is_ok());
    }

    #[test]
    fn the_window_resets() {
        let limits = DeviceLimits::new(1, Duration::from_millis(20), 8);
        assert!(limits.admit("a").is_ok());
        assert!(limits.admit("a").is_err());
        std::thread::sleep(Duration::from_millis(25));
        assert!(limits.admit("a").is_ok());
    }

    #[test]
    fn windows_outlive_a_turn_of_the_generations_and_old_ones_are_dropped_whole() {
        let limits = DeviceLimits::new(2, Duration::from_millis(600), 8);
        std::thread::sleep(Duration::from_millis(400));
        assert!(limits.admit("a").is_ok());
        assert!(limits.admit("a").is_ok());
        for i in 0..1000 {
            assert!(limits.admit(&format!("fresh-{i}")).is_ok());
        }
        // The generations turn at 600 ms; "a"'s window (400 to 1,000 ms) is carried over and still counts.
        std::thread::sleep(Duration::from_millis(300));
        assert!(limits.admit("a").is_err(), "a window begun in the previous generation still counts");
        std::thread::sleep(Duration::from_millis(1300));
        assert!(limits.admit("b").is_ok());
        let windows = limits.windows.lock().unwrap();
        assert!(windows.current.len() + windows.previous.len() <= 2, "the fresh ids were dropped whole");
    }

    #[test]
    fn first_legs_are_bounded_over_all_devices() {
        let limits = DeviceLimits::new(5, Duration::from_secs(10), 8);
        let admitted = (0..3 * FIRST_LEGS_PER_SECOND as usize).filter(|_| limits.first_leg().is_ok()).count();
        assert!(admitted >= FIRST_LEGS_PER_SECOND as usize, "a burst of one second's worth is admitted");
        assert!(admitted < 2 * FIRST_LEGS_PER_SECOND as usize, "the rest is refused: {admitted}");
    }

    #[test]
    fn in_flight_slots_are_bounded_and_released() {
        let limits = DeviceLimits::new(5, Duration::from_secs(10), 2);
        let first = limits.enter().unwrap();
        let _second = limits.enter().unwrap();
        assert!(limits.enter().is_none());
        drop(first);
        assert!(limits.enter().is_some());
    }
}
