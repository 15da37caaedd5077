//! What the agent does next, and when: pure functions of what it knows and the time, with no I/O and no clock
//! (the daemon, `daemon.rs`, passes both in). Times are Unix seconds; randomness comes in as a sample in [0, 1).
//!
//! The rules (`docs/agent.md`, "Renewal and recovery"):
//! - no identity, or one the service refused, or one expired past the renewal grace: provision with the onboarding
//!   credential;
//! - past the renewal time (a fraction of the lifetime counted from when the certificate was obtained, pulled
//!   earlier by jitter): renew by EST with the current certificate;
//! - past the check time: register again with the operational certificate, which follows a move or notices a
//!   revocation;
//! - after a failure, nothing before the backoff has passed: exponential from `backoff_initial` to `backoff_max`,
//!   half of it random, so that a fleet does not retry in step and no device loops hot.
//!   A certificate the service refuses (revoked, superseded, expired) is dropped at once, and the next attempt is
//!   a provisioning.

use std::time::Duration;

/// The knobs of the schedule (`[renewal]` in the configuration).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Policy {
    /// The fraction of a certificate's lifetime after which it is renewed, in (0, 1).
    pub renew_fraction: f64,
    /// How much earlier than that, at most, as a fraction of the lifetime, in [0, renew_fraction).
    pub jitter: f64,
    /// The first wait after a failure.
    pub backoff_initial: Duration,
    /// The longest wait after failures.
    pub backoff_max: Duration,
    /// How often the agent registers again with its operational certificate.
    pub check_interval: Duration,
    /// How long after its expiry the service still renews a certificate by EST (the server's `--renewal-grace`).
    pub renewal_grace: Duration,
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            renew_fraction: 2.0 / 3.0,
            jitter: 0.05,
            backoff_initial: Duration::from_secs(5),
            backoff_max: Duration::from_secs(3600),
            check_interval: Duration::from_secs(3600),
            renewal_grace: Duration::ZERO,
        }
    }
}

/// Why a policy is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    /// `renew_fraction` is not in (0, 1).
    #[error("renewal.fraction must be above 0 and below 1")]
    Fraction,
    /// `jitter` is not in [0, renew_fraction).
    #[error("renewal.jitter must be at least 0 and below renewal.fraction")]
    Jitter,
    /// A backoff or interval is zero, or the maximum is below the initial backoff.
    #[error(
        "renewal.backoff_initial and renewal.check_interval must be positive, backoff_max at least backoff_initial"
    )]
    Durations,
}

impl Policy {
    /// The policy if its values make sense.
    pub fn checked(self) -> Result<Self, PolicyError> {
        if !(self.renew_fraction > 0.0 && self.renew_fraction < 1.0) {
            return Err(PolicyError::Fraction);
        }
        if !(self.jitter >= 0.0 && self.jitter < self.renew_fraction) {
            return Err(PolicyError::Jitter);
        }
        if self.backoff_initial.is_zero() || self.check_interval.is_zero() || self.backoff_max < self.backoff_initial {
            return Err(PolicyError::Durations);
        }
        Ok(self)
    }
}

/// The certificate the agent holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Held {
    /// When the agent obtained it.
    pub obtained_at: i64,
    /// Its notAfter.
    pub not_after: i64,
}

/// When to renew `held`: `renew_fraction` of the lifetime counted from when it was obtained (the service backdates
/// notBefore by minutes for clock skew, which would make a short-lived certificate look half spent), pulled earlier
/// by up to `jitter` of the lifetime (`sample` in [0, 1)). Never before it was obtained, never after it expires.
pub fn renewal_time(policy: &Policy, held: Held, sample: f64) -> i64 {
    let start = held.obtained_at.min(held.not_after);
    let lifetime = (held.not_after - start) as f64;
    let offset = lifetime * (policy.renew_fraction - policy.jitter * sample.clamp(0.0, 1.0));
    (start + offset.max(0.0).round() as i64).clamp(start, held.not_after)
}

/// Whether a certificate the service has just issued, ending at `not_after`, is already over by the device's clock
/// (`now`): the clock runs ahead of the service's by more than the lifetime. Such a certificate is not installed
/// (the failure is the device's, retried after the backoff and shown in `status`): held, it would make
/// [`next_action`] provision again at once, and again, a hot loop.
pub fn expired_on_arrival(now: i64, not_after: i64) -> bool {
    now >= not_after
}

/// The wait after `failures` consecutive failures (0: none): `backoff_initial` doubled per failure up to
/// `backoff_max`, of which the upper half is random (`sample` in [0, 1)).
pub fn backoff(policy: &Policy, failures: u32, sample: f64) -> Duration {
    if failures == 0 {
        return Duration::ZERO;
    }
    let doublings = failures.saturating_sub(1).min(32);
    let base = policy.backoff_initial.saturating_mul(1u32 << doublings.min(31)).min(policy.backoff_max);
    base / 2 + base.mul_f64(sample.clamp(0.0, 1.0) / 2.0)
}

/// What the agent knows when it decides.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Facts {
    /// Now.
    pub now: i64,
    /// Its certificate, if it has one it may use.
    pub held: Option<Held>,
    /// When to renew it.
    pub renew_at: i64,
    /// When to register again with it.
    pub check_at: i64,
    /// Not before this, after a failure.
    pub retry_at: i64,
    /// Someone asked for a provisioning (`zerotouch-agent reprovision`).
    pub reprovision_requested: bool,
}

/// What the agent does next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Register with the onboarding credential, with a new key.
    Provision,
    /// Renew by EST with the current certificate, with a new key.
    Renew,
    /// Register again with the current certificate (no new key).
    Check,
    /// Nothing until then (Unix seconds).
    WaitUntil(i64),
}

/// The next action (see the module comment).
pub fn next_action(policy: &Policy, facts: &Facts) -> Action {
    if facts.now < facts.retry_at {
        return Action::WaitUntil(facts.retry_at);
    }
    let Some(held) = facts.held else { return Action::Provision };
    if facts.reprovision_requested {
        return Action::Provision;
    }
    let grace = i64::try_from(policy.renewal_grace.as_secs()).unwrap_or(i64::MAX);
    if facts.now >= held.not_after.saturating_add(grace) {
        return Action::Provision;
    }
    if facts.now >= facts.renew_at || facts.now >= held.not_after {
        return Action::Renew;
    }
    if facts.now >= facts.check_at {
        return Action::Check;
    }
    Action::WaitUntil(facts.renew_at.min(facts.check_at).min(held.not_after))
}

/// How an attempt failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// The service could not be reached, timed out, or answered 429 or 5xx: try again later.
    Unreachable,
    /// The service refused the credential the attempt used (401, 403, 404): a revoked, superseded or expired
    /// certificate, an unknown or disabled device.
    Refused,
    /// The registration ended `disabled` or `failed`.
    NotAssigned,
    /// Something on the device failed (a file, the TPM, the hook, an answer it cannot read).
    Local,
}

/// What to do after a failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Recovery {
    /// Stop using the current certificate (the service refused it, or the device is no longer assigned): the next
    /// attempt is a provisioning.
    pub drop_identity: bool,
    /// Wait this long before the next attempt.
    pub wait: Duration,
}

/// What to do after `action` failed with `failure`; `failures` counts the consecutive failures, this one included.
pub fn after_failure(policy: &Policy, action: Action, failure: Failure, failures: u32, sample: f64) -> Recovery {
    let wait = backoff(policy, failures, sample);
    match (action, failure) {
        // The certificate is no good any more: provision at once (the backoff still applies to what follows,
        // since `failures` keeps counting until something succeeds).
        (Action::Renew | Action::Check, Failure::Refused) if failures <= 1 => {
            Recovery { drop_identity: true, wait: Duration::ZERO }
        }
        (Action::Renew | Action::Check, Failure::Refused | Failure::NotAssigned) => {
            Recovery { drop_identity: true, wait }
        }
        // A disabled or failed registration leaves the device without a hub: nothing to keep.
        (Action::Provision, Failure::NotAssigned | Failure::Refused) => Recovery { drop_identity: true, wait },
        (_, Failure::Unreachable | Failure::Local) | (Action::WaitUntil(_), _) => {
            Recovery { drop_identity: false, wait }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> Policy {
        Policy { backoff_initial: Duration::from_secs(2), backoff_max: Duration::from_secs(60), ..Policy::default() }
    }

    fn facts(now: i64) -> Facts {
        Facts {
            now,
            held: Some(Held { obtained_at: 1000, not_after: 1300 }),
            renew_at: 1200,
            check_at: 1100,
            retry_at: 0,
            reprovision_requested: false,
        }
    }

    #[test]
    fn a_certificate_over_by_the_local_clock_is_refused_on_arrival() {
        assert!(!expired_on_arrival(1000, 1060));
        assert!(!expired_on_arrival(1059, 1060));
        assert!(expired_on_arrival(1060, 1060));
        assert!(expired_on_arrival(1180, 1060));
        // Held, such a certificate would be provisioned again at once: what the check prevents.
        let held = Held { obtained_at: 1180, not_after: 1060 };
        let facts = Facts { now: 1180, held: Some(held), renew_at: 1060, check_at: 4780, ..facts(1180) };
        assert_eq!(next_action(&policy(), &facts), Action::Provision);
    }

    #[test]
    fn renewal_comes_at_the_fraction_of_the_lifetime_since_it_was_obtained() {
        let p = policy();
        let held = Held { obtained_at: 1000, not_after: 1300 };
        assert_eq!(renewal_time(&p, held, 0.0), 1200);
        // Jitter only pulls it earlier, by at most 5 % of the lifetime.
        assert_eq!(renewal_time(&p, held, 0.999_999), 1185);
        for sample in [0.0, 0.25, 0.5, 0.75, 0.99] {
            let at = renewal_time(&p, held, sample);
            assert!((1185..=1200).contains(&at), "{sample}: {at}");
        }
        // A certificate obtained after its notAfter (clock skew) or already expired: renew now.
        assert_eq!(renewal_time(&p, Held { obtained_at: 2000, not_after: 1300 }, 0.5), 1300);
        // The fraction is the configured one.
        let half = Policy { renew_fraction: 0.5, jitter: 0.0, ..p };
        assert_eq!(renewal_time(&half, held, 0.7), 1150);
        // Out-of-range samples are clamped.
        assert_eq!(renewal_time(&p, held, -3.0), 1200);
        assert_eq!(renewal_time(&p, held, 7.0), 1185);
    }

    #[test]
    fn backoff_doubles_up_to_the_maximum_with_half_of_it_random() {
        let p = policy();
        assert_eq!(backoff(&p, 0, 0.5), Duration::ZERO);
        assert_eq!(backoff(&p, 1, 0.0), Duration::from_secs(1));
        assert_eq!(backoff(&p, 1, 0.999_999_999).as_secs_f64().round(), 2.0);
        assert_eq!(backoff(&p, 2, 0.0), Duration::from_secs(2));
        assert_eq!(backoff(&p, 3, 0.0), Duration::from_secs(4));
        assert_eq!(backoff(&p, 6, 0.0), Duration::from_secs(30));
        assert_eq!(backoff(&p, 7, 0.0), Duration::from_secs(30));
        assert_eq!(backoff(&p, u32::MAX, 0.0), Duration::from_secs(30));
        assert!(backoff(&p, u32::MAX, 0.999) <= p.backoff_max);
        for failures in 1..40 {
            assert!(backoff(&p, failures, 0.0) >= Duration::from_secs(1), "never hot: {failures}");
        }
    }

    #[test]
    fn each_action_comes_at_its_time() {
        let p = policy();
        assert_eq!(next_action(&p, &facts(1050)), Action::WaitUntil(1100));
        assert_eq!(next_action(&p, &facts(1100)), Action::Check);
        assert_eq!(next_action(&p, &Facts { check_at: 5000, ..facts(1150) }), Action::WaitUntil(1200));
        assert_eq!(next_action(&p, &facts(1200)), Action::Renew);
        // Renewal wins over a check that is also due.
        assert_eq!(next_action(&p, &facts(1250)), Action::Renew);
        // Expired, no grace: provision.
        assert_eq!(next_action(&p, &facts(1300)), Action::Provision);
        // Expired within the server's grace: renew by EST.
        let graceful = Policy { renewal_grace: Duration::from_secs(100), ..p };
        assert_eq!(next_action(&graceful, &facts(1399)), Action::Renew);
        assert_eq!(next_action(&graceful, &facts(1400)), Action::Provision);
        // No identity, or a reprovisioning asked for.
        assert_eq!(next_action(&p, &Facts { held: None, ..facts(1050) }), Action::Provision);
        assert_eq!(next_action(&p, &Facts { reprovision_requested: true, ..facts(1050) }), Action::Provision);
        // Nothing before the backoff has passed, whatever is due.
        for f in
            [Facts { held: None, ..facts(1250) }, facts(1250), Facts { reprovision_requested: true, ..facts(1250) }]
        {
            assert_eq!(next_action(&p, &Facts { retry_at: 1260, ..f }), Action::WaitUntil(1260));
        }
        // The wait never passes the expiry.
        assert_eq!(next_action(&p, &Facts { renew_at: 9000, check_at: 9000, ..facts(1050) }), Action::WaitUntil(1300));
    }

    #[test]
    fn a_refused_certificate_is_dropped_and_provisioning_follows_without_looping_hot() {
        let p = policy();
        for action in [Action::Renew, Action::Check] {
            let first = after_failure(&p, action, Failure::Refused, 1, 0.5);
            assert_eq!(first, Recovery { drop_identity: true, wait: Duration::ZERO });
            let again = after_failure(&p, action, Failure::Refused, 2, 0.5);
            assert!(again.drop_identity && again.wait >= Duration::from_secs(1));
            assert!(after_failure(&p, action, Failure::NotAssigned, 1, 0.0).drop_identity);
            for failure in [Failure::Unreachable, Failure::Local] {
                let kept = after_failure(&p, action, failure, 1, 0.0);
                assert_eq!(kept, Recovery { drop_identity: false, wait: Duration::from_secs(1) });
            }
        }
        // Provisioning refused or not assigned (disabled): no identity, and waits that grow.
        let mut previous = Duration::ZERO;
        for failures in 1..=6 {
            for failure in [Failure::Refused, Failure::NotAssigned] {
                let r = after_failure(&p, Action::Provision, failure, failures, 0.0);
                assert!(r.drop_identity);
                assert!(r.wait > previous || r.wait == Duration::from_secs(30), "{failures}: {r:?}");
            }
            previous = after_failure(&p, Action::Provision, Failure::Refused, failures, 0.0).wait;
        }
        let unreachable = after_failure(&p, Action::Provision, Failure::Unreachable, 3, 0.0);
        assert_eq!(unreachable, Recovery { drop_identity: false, wait: Duration::from_secs(4) });
    }

    #[test]
    fn policies_that_make_no_sense_are_refused() {
        assert!(Policy::default().checked().is_ok());
        assert_eq!(Policy { renew_fraction: 1.0, ..Policy::default() }.checked(), Err(PolicyError::Fraction));
        assert_eq!(Policy { renew_fraction: 0.0, ..Policy::default() }.checked(), Err(PolicyError::Fraction));
        assert_eq!(Policy { renew_fraction: f64::NAN, ..Policy::default() }.checked(), Err(PolicyError::Fraction));
        assert_eq!(Policy { jitter: 0.7, ..Policy::default() }.checked(), Err(PolicyError::Jitter));
        assert_eq!(Policy { jitter: -0.1, ..Policy::default() }.checked(), Err(PolicyError::Jitter));
        let zero = Policy { backoff_initial: Duration::ZERO, ..Policy::default() };
        assert_eq!(zero.checked(), Err(PolicyError::Durations));
        let inverted = Policy { backoff_max: Duration::from_secs(1), ..Policy::default() };
        assert_eq!(inverted.checked(), Err(PolicyError::Durations));
    }
}
