//! Allocation: which linked hub a device goes to, and what a known device's new registration does to its
//! assignment (reprovisioning, `docs/protocol/device-api.md` §6 and §7). Pure: the caller brings the hubs and the
//! state.

use sha2::{Digest, Sha256};
use zerotouch_wire::enrollment::ReprovisionPolicy;

/// A hub allocation may choose.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Candidate<'a> {
    /// Its host name.
    pub host_name: &'a str,
    /// Its allocation weight (1-1000).
    pub weight: u32,
}

/// Weighted rendezvous hashing: every (device, hub) pair gets a score from a hash, scaled by the hub's weight,
/// and the best score wins.
///
/// Stable: a device keeps its hub while the hub set is unchanged (and when other hubs come or go, only the
/// devices that the new hub wins, or that the removed hub held, move). Fair: a hub's share of devices converges
/// to its share of the total weight.
pub fn hashed<'a>(registration_key: &str, hubs: &[Candidate<'a>]) -> Option<&'a str> {
    hubs.iter()
        .map(|hub| {
            let digest = Sha256::new()
                .chain_update(hub.host_name.as_bytes())
                .chain_update([0u8])
                .chain_update(registration_key.as_bytes())
                .finalize();
            let mut first = [0u8; 8];
            first.copy_from_slice(&digest[..8]);
            // A uniform number in (0, 1); -ln(u) / weight is exponential with rate `weight`: the smallest wins.
            let u = (u64::from_be_bytes(first) as f64 + 1.0) / (u64::MAX as f64 + 2.0);
            (hub.host_name, -u.ln() / f64::from(hub.weight.max(1)))
        })
        .min_by(|a, b| a.1.total_cmp(&b.1).then_with(|| a.0.cmp(b.0)))
        .map(|(host, _)| host)
}

/// `substatus` values (§1.4).
pub mod substatus {
    /// First assignment (or an assignment after a failed or disabled one).
    pub const INITIAL: &str = "initialAssignment";
    /// Moved to another hub with its data.
    pub const MIGRATED: &str = "deviceDataMigrated";
    /// Moved to another hub and reset to the initial configuration.
    pub const RESET: &str = "deviceDataReset";
}

/// What a registration does to the device's assignment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assignment {
    /// The hub the device is assigned to afterwards.
    pub hub: String,
    /// The substatus to report.
    pub substatus: String,
    /// Whether the enrollment's (or webhook's) initial twin applies (initial assignment or reset).
    pub apply_initial_twin: bool,
}

/// Decides the assignment of a device that allocation sent to `chosen`, given the hub it is assigned to now
/// (`None`: never assigned, or its last registration failed or was disabled) and its reprovision policy.
pub fn reassign(current: Option<(&str, &str)>, chosen: &str, policy: ReprovisionPolicy) -> Assignment {
    match current {
        None => Assignment { hub: chosen.to_owned(), substatus: substatus::INITIAL.into(), apply_initial_twin: true },
        // Never re-provision, or allocation chose the hub it is on: it stays, as it was.
        Some((hub, status)) if !policy.update_hub_assignment || hub.eq_ignore_ascii_case(chosen) => {
            Assignment { hub: hub.to_owned(), substatus: status.to_owned(), apply_initial_twin: false }
        }
        Some(_) if policy.migrate_device_data => {
            Assignment { hub: chosen.to_owned(), substatus: substatus::MIGRATED.into(), apply_initial_twin: false }
        }
        Some(_) => Assignment { hub: chosen.to_owned(), substatus: substatus::RESET.into(), apply_initial_twin: true },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn hubs(weights: &[(&'static str, u32)]) -> Vec<Candidate<'static>> {
        weights.iter().map(|&(host_name, weight)| Candidate { host_name, weight }).collect()
    }

    #[test]
    fn shares_over_10000_devices_follow_the_weights_within_5_points() {
        for weights in [
            vec![("a.example", 100), ("b.example", 100)],
            vec![("a.example", 100), ("b.example", 300)],
            vec![("a.example", 1), ("b.example", 2), ("c.example", 7)],
            vec![("a.example", 500), ("b.example", 250), ("c.example", 125), ("d.example", 125)],
        ] {
            let candidates = hubs(&weights);
            let total: u32 = weights.iter().map(|(_, w)| w).sum();
            let mut counts: HashMap<&str, usize> = HashMap::new();
            for i in 0..10_000 {
                let hub = hashed(&format!("device-{i}"), &candidates).unwrap();
                *counts.entry(hub).or_default() += 1;
            }
            for (host, weight) in &weights {
                let share = counts.get(host).copied().unwrap_or(0) as f64 / 10_000.0;
                let expected = f64::from(*weight) / f64::from(total);
                assert!((share - expected).abs() < 0.05, "{host}: share {share:.3}, weight share {expected:.3}");
            }
        }
    }

    #[test]
    fn a_device_keeps_its_hub_while_the_set_is_unchanged_whatever_the_order() {
        let forward = hubs(&[("a.example", 100), ("b.example", 200), ("c.example", 300)]);
        let mut backward = forward.clone();
        backward.reverse();
        for i in 0..1000 {
            let id = format!("device-{i}");
            assert_eq!(hashed(&id, &forward), hashed(&id, &backward));
            assert_eq!(hashed(&id, &forward), hashed(&id, &forward));
        }
    }

    #[test]
    fn adding_a_hub_only_moves_devices_to_the_new_hub() {
        let before = hubs(&[("a.example", 100), ("b.example", 100)]);
        let after = hubs(&[("a.example", 100), ("b.example", 100), ("c.example", 100)]);
        let mut moved = 0;
        for i in 0..3000 {
            let id = format!("device-{i}");
            let (old, new) = (hashed(&id, &before).unwrap(), hashed(&id, &after).unwrap());
            if old != new {
                assert_eq!(new, "c.example", "a device moved between old hubs");
                moved += 1;
            }
        }
        assert!((800..1200).contains(&moved), "about a third should move, {moved} did");
    }

    #[test]
    fn no_hub_no_allocation() {
        assert_eq!(hashed("d", &[]), None);
    }

    #[test]
    fn reprovisioning_follows_the_policy() {
        let migrate = ReprovisionPolicy { update_hub_assignment: true, migrate_device_data: true };
        let reset = ReprovisionPolicy { update_hub_assignment: true, migrate_device_data: false };
        let never = ReprovisionPolicy { update_hub_assignment: false, migrate_device_data: true };
        let first = reassign(None, "b", migrate);
        assert_eq!(
            (first.hub.as_str(), first.substatus.as_str(), first.apply_initial_twin),
            ("b", substatus::INITIAL, true)
        );
        let current = Some(("a", substatus::INITIAL));
        let moved = reassign(current, "b", migrate);
        assert_eq!(
            (moved.hub.as_str(), moved.substatus.as_str(), moved.apply_initial_twin),
            ("b", substatus::MIGRATED, false)
        );
        let reset_to = reassign(current, "b", reset);
        assert_eq!(
            (reset_to.hub.as_str(), reset_to.substatus.as_str(), reset_to.apply_initial_twin),
            ("b", substatus::RESET, true)
        );
        let stays = reassign(current, "b", never);
        assert_eq!(
            (stays.hub.as_str(), stays.substatus.as_str(), stays.apply_initial_twin),
            ("a", substatus::INITIAL, false)
        );
        let same = reassign(Some(("a", substatus::MIGRATED)), "A", reset);
        assert_eq!((same.hub.as_str(), same.substatus.as_str()), ("a", substatus::MIGRATED));
    }
}
