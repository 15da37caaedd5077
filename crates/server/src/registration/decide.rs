//! The decision a registration makes about a device, as a pure function: [`decide`].
//!
//! Given the enrollment the device matched, its current registration, the hubs, and (for custom allocation) the
//! webhook's answer, it says whether the device is disabled, failed (and why), or assigned (to which hub, under
//! which device id, with which substatus, twin and payload), and whether it gets a certificate. No I/O, no clock,
//! no async: every branch is unit-tested below. Custom allocation needs the webhook first; `decide` then answers
//! [`WebhookCall`] and is asked again with the answer (`docs/protocol/device-api.md` §7).

use serde_json::Value;
use zerotouch_store::{HubRecord, RegistrationRecord};
use zerotouch_wire::enrollment::CustomAllocationDefinition;
use zerotouch_wire::registration::RegistrationStatus;
use zerotouch_wire::{ErrorCode, RegistrationId};

use super::allocation::{self, Candidate};
use super::enrollment::{Allocation, Enrollment};
use super::webhook;

/// What [`decide`] knows.
#[derive(Debug, Clone, Copy)]
pub struct Facts<'a> {
    /// The device.
    pub registration_id: &'a RegistrationId,
    /// The enrollment it matched.
    pub enrollment: &'a Enrollment,
    /// Its registration before this one, if it has one.
    pub current: Option<&'a RegistrationRecord>,
    /// Every hub of the service.
    pub hubs: &'a [HubRecord],
    /// The custom allocation webhook's answer, once it was asked (the message of a failed call otherwise).
    pub webhook: Option<&'a Result<webhook::Answer, String>>,
}

/// Where a device goes.
#[derive(Debug, Clone, PartialEq)]
pub struct Assignment {
    /// The hub.
    pub hub: String,
    /// The device's id there.
    pub device_id: String,
    /// `initialAssignment`, `deviceDataMigrated` or `deviceDataReset`.
    pub substatus: String,
    /// The webhook's payload for the device (always returned, §7).
    pub payload: Option<Value>,
    /// The twin the device starts with.
    pub initial_twin: Option<Value>,
}

/// What a registration does to the device.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// The enrollment is disabled: the registration is `disabled`.
    Disabled,
    /// The registration fails with this code and message.
    Failed {
        /// 4002xx.
        code: ErrorCode,
        /// What the device and the audit log are told.
        message: String,
    },
    /// The device is assigned.
    Assigned(Assignment),
}

/// The webhook must be asked first: by the enrollment's definition, offering these hubs.
#[derive(Debug, Clone, PartialEq)]
pub struct WebhookCall {
    /// The webhook.
    pub definition: CustomAllocationDefinition,
    /// The hubs it may choose from (`linkedHubs`).
    pub offered: Vec<String>,
}

impl Decision {
    fn failed(code: ErrorCode, message: impl Into<String>) -> Self {
        Self::Failed { code, message: message.into() }
    }

    /// The registration status it writes.
    pub fn status(&self) -> RegistrationStatus {
        match self {
            Self::Disabled => RegistrationStatus::Disabled,
            Self::Failed { .. } => RegistrationStatus::Failed,
            Self::Assigned(_) => RegistrationStatus::Assigned,
        }
    }

    /// The assignment, if the device is assigned.
    pub fn assignment(&self) -> Option<&Assignment> {
        match self {
            Self::Assigned(assignment) => Some(assignment),
            Self::Disabled | Self::Failed { .. } => None,
        }
    }

    /// Whether a device that sent a CSR gets a certificate: only an assigned one (a failed or disabled
    /// registration gets none).
    pub fn issues_certificate(&self) -> bool {
        self.assignment().is_some()
    }

    /// What the audit event says; `noun` names the enrollment's kind.
    pub fn detail(&self, noun: &str) -> String {
        match self {
            Self::Disabled => format!("disabled: the {noun} is disabled"),
            Self::Failed { message, .. } => format!("failed: {message}"),
            Self::Assigned(a) => format!("assigned to {} ({})", a.hub, a.substatus),
        }
    }
}

/// Decides a registration; `Err` when the custom allocation webhook must be asked first (never when `facts`
/// carries its answer).
pub fn decide(facts: Facts<'_>) -> Result<Decision, WebhookCall> {
    let enrollment = facts.enrollment;
    if enrollment.is_disabled() {
        return Ok(Decision::Disabled);
    }
    let reprovision = enrollment.reprovision;
    // The hub the device is on, if its registration is `assigned`.
    let assigned_now = facts
        .current
        .filter(|c| c.status == RegistrationStatus::Assigned.as_str())
        .and_then(|c| c.assigned_hub.as_deref().map(|hub| (hub, c.substatus.as_deref().unwrap_or_default())));
    // The hubs this enrollment may use: the ones it names, else every hub that applies the allocation policy.
    let linked: Vec<&HubRecord> = if enrollment.hubs.is_empty() {
        facts.hubs.iter().filter(|h| h.hub.apply_allocation_policy).collect()
    } else {
        facts.hubs.iter().filter(|h| enrollment.hubs.contains(&h.hub.host_name)).collect()
    };
    if linked.is_empty() && assigned_now.is_none() {
        return Ok(Decision::failed(ErrorCode::NoHubAvailable, "no linked hub is available for this enrollment"));
    }

    let mut payload = None;
    let mut webhook_twin = None;
    let chosen = match &enrollment.allocation {
        Allocation::Custom(None) => {
            return Ok(Decision::failed(ErrorCode::CustomAllocationFailed, "Custom allocation failed: no webhook"));
        }
        Allocation::Custom(Some(definition)) => {
            // Under "never re-provision" the webhook may only keep the device where it is (§7).
            let offered: Vec<String> = match assigned_now {
                Some((hub, _)) if !reprovision.update_hub_assignment => vec![hub.to_owned()],
                _ => linked.iter().map(|h| h.hub.host_name.clone()).collect(),
            };
            match facts.webhook {
                None => return Err(WebhookCall { definition: definition.clone(), offered }),
                Some(Err(message)) => return Ok(Decision::failed(ErrorCode::CustomAllocationFailed, message.clone())),
                Some(Ok(answer)) => {
                    let host = answer.iot_hub_host_name.to_ascii_lowercase();
                    if !offered.contains(&host) {
                        // The webhook's text never reaches the device (issue #17): the chosen name is not echoed.
                        let message = "Custom allocation failed: the webhook chose a hub that is not linked";
                        return Ok(Decision::failed(ErrorCode::CustomAllocationFailed, message));
                    }
                    payload = answer.payload.clone();
                    webhook_twin = answer.initial_twin.clone();
                    host
                }
            }
        }
        Allocation::Static => match linked.first() {
            Some(hub) => hub.hub.host_name.clone(),
            None => {
                return Ok(Decision::failed(ErrorCode::NoHubAvailable, "the enrollment's static hub is not linked"));
            }
        },
        Allocation::Hashed => {
            let candidates: Vec<Candidate<'_>> = linked
                .iter()
                .map(|h| Candidate { host_name: &h.hub.host_name, weight: h.hub.allocation_weight })
                .collect();
            match (allocation::hashed(&facts.registration_id.key(), &candidates), assigned_now) {
                (Some(hub), _) => hub.to_owned(),
                // No hub is linked any more, and the device is assigned (checked above): it stays.
                (None, Some((hub, _))) => hub.to_owned(),
                (None, None) => {
                    return Ok(Decision::failed(ErrorCode::NoHubAvailable, "no linked hub is available"));
                }
            }
        }
    };

    let reassigned = allocation::reassign(assigned_now, &chosen, reprovision);
    let initial_twin = if reassigned.apply_initial_twin {
        webhook_twin.or_else(|| enrollment.initial_twin.clone())
    } else {
        facts.current.and_then(|c| c.initial_twin.clone())
    };
    let device_id = enrollment.device_id.clone().unwrap_or_else(|| facts.registration_id.as_str().to_owned());
    if is_reserved(facts.hubs, &device_id) {
        let message = format!(
            "the device id {device_id:?} is reserved: it names an account of a linked hub (its admin user or one of \
             its reservedDeviceIds), which no device may have on any hub"
        );
        return Ok(Decision::failed(ErrorCode::DeviceIdReserved, message));
    }
    Ok(Decision::Assigned(Assignment {
        hub: reassigned.hub,
        device_id,
        substatus: reassigned.substatus,
        payload,
        initial_twin,
    }))
}

/// Whether any hub reserves `device_id` (case-insensitively). Every hub's reserved ids count, not only the assigned
/// hub's: a certificate named after a broker's account is that account on every broker that trusts our CA.
fn is_reserved(hubs: &[HubRecord], device_id: &str) -> bool {
    hubs.iter().any(|h| {
        zerotouch_hub::reserved_device_ids(&h.hub.kind, &h.hub.settings)
            .iter()
            .any(|reserved| reserved.eq_ignore_ascii_case(device_id))
    })
}

/// The failed decision of an attempt whose write the store refused because another registration holds the
/// device id on the hub `assigned` names.
pub fn device_id_taken(assigned: &Assignment) -> Decision {
    Decision::failed(
        ErrorCode::DeviceIdTaken,
        format!(
            "the device id {:?} is already held on hub {} by another registration: one device id belongs to one \
             registration per hub",
            assigned.device_id, assigned.hub
        ),
    )
}

#[cfg(test)]
mod tests;
