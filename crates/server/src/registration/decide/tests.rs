//! Every branch of [`decide`], without a database, TLS or an async runtime.
#![allow(clippy::unwrap_used)]

use serde_json::{Value, json};
use zerotouch_store::{HubInput, HubRecord, RegistrationRecord};
use zerotouch_wire::enrollment::EnrollmentKind;
use zerotouch_wire::registration::RegistrationStatus;
use zerotouch_wire::{ErrorCode, RegistrationId};

use super::super::allocation::substatus;
use super::super::enrollment::Enrollment;
use super::super::webhook::Answer;
use super::*;

fn enrollment(kind: EnrollmentKind, document: Value) -> Enrollment {
    super::super::enrollment::for_tests(kind, document)
}

fn hub(host_name: &str, weight: u32, apply_allocation_policy: bool) -> HubRecord {
    HubRecord {
        hub: HubInput {
            host_name: host_name.into(),
            kind: "none".into(),
            allocation_weight: weight,
            apply_allocation_policy,
            settings: json!({}),
        },
        etag: "e".into(),
        created_at: chrono::Utc::now(),
        updated_at: chrono::Utc::now(),
    }
}

fn current(status: RegistrationStatus, hub: &str, twin: Option<Value>) -> RegistrationRecord {
    RegistrationRecord {
        key: "dev-1".into(),
        registration_id: "dev-1".into(),
        enrollment_group_key: None,
        device_id: Some("dev-1".into()),
        assigned_hub: Some(hub.into()),
        status: status.as_str().into(),
        substatus: Some(substatus::INITIAL.into()),
        error_code: None,
        error_message: None,
        payload: None,
        initial_twin: twin,
        hub_key_slot: None,
        etag: "e".into(),
        created_at: chrono::Utc::now(),
        updated_at: chrono::Utc::now(),
    }
}

fn id() -> RegistrationId {
    RegistrationId::try_from("dev-1").unwrap()
}

/// Decides for `dev-1` with the given state, without a webhook answer.
fn run(e: &Enrollment, now: Option<&RegistrationRecord>, hubs: &[HubRecord]) -> Result<Decision, WebhookCall> {
    let registration_id = id();
    decide(Facts { registration_id: &registration_id, enrollment: e, current: now, hubs, webhook: None })
}

fn run_with(
    e: &Enrollment,
    now: Option<&RegistrationRecord>,
    hubs: &[HubRecord],
    answer: Result<Answer, String>,
) -> Decision {
    let registration_id = id();
    decide(Facts { registration_id: &registration_id, enrollment: e, current: now, hubs, webhook: Some(&answer) })
        .unwrap()
}

fn assigned(decision: Result<Decision, WebhookCall>) -> Assignment {
    match decision {
        Ok(Decision::Assigned(a)) => a,
        other => panic!("not assigned: {other:?}"),
    }
}

fn failed(decision: Decision) -> (ErrorCode, String) {
    match decision {
        Decision::Failed { code, message } => (code, message),
        other => panic!("not failed: {other:?}"),
    }
}

fn answer(hub: &str) -> Answer {
    Answer { iot_hub_host_name: hub.into(), initial_twin: Some(json!({"tags": {"from": "webhook"}})), payload: None }
}

#[test]
fn a_disabled_enrollment_disables_the_device_whatever_the_hubs() {
    let e = enrollment(EnrollmentKind::Individual, json!({"provisioningStatus": "disabled"}));
    let decision = run(&e, None, &[hub("a", 1, true)]).unwrap();
    assert_eq!(decision, Decision::Disabled);
    assert_eq!(decision.status(), RegistrationStatus::Disabled);
    assert!(!decision.issues_certificate());
    assert_eq!(decision.detail("enrollment group"), "disabled: the enrollment group is disabled");
}

#[test]
fn a_new_device_without_a_linked_hub_fails() {
    let e = enrollment(EnrollmentKind::Individual, json!({}));
    let (code, message) = failed(run(&e, None, &[hub("a", 1, false)]).unwrap());
    assert_eq!(code, ErrorCode::NoHubAvailable);
    assert_eq!(message, "no linked hub is available for this enrollment");
    let named_elsewhere = enrollment(EnrollmentKind::Individual, json!({"iotHubs": ["b"]}));
    assert_eq!(failed(run(&named_elsewhere, None, &[hub("a", 1, true)]).unwrap()).0, ErrorCode::NoHubAvailable);
}

#[test]
fn hubs_named_by_the_enrollment_are_the_only_candidates_whatever_their_case() {
    let e = enrollment(EnrollmentKind::Individual, json!({"iotHubs": ["B.Example"]}));
    let hubs = [hub("a.example", 1000, true), hub("b.example", 1, false)];
    let a = assigned(run(&e, None, &hubs));
    assert_eq!((a.hub.as_str(), a.substatus.as_str()), ("b.example", substatus::INITIAL));
}

#[test]
fn without_named_hubs_only_hubs_applying_the_policy_are_candidates() {
    let e = enrollment(EnrollmentKind::Individual, json!({}));
    let a = assigned(run(&e, None, &[hub("a", 1, false), hub("b", 1, true)]));
    assert_eq!(a.hub, "b");
}

#[test]
fn hashed_allocation_is_the_weighted_hash_of_the_registration_id() {
    let e = enrollment(EnrollmentKind::Group, json!({"allocationPolicy": "hashed"}));
    let hubs = [hub("a", 100, true), hub("b", 300, true)];
    let candidates = [Candidate { host_name: "a", weight: 100 }, Candidate { host_name: "b", weight: 300 }];
    let expected = allocation::hashed(&id().key(), &candidates).unwrap();
    let a = assigned(run(&e, None, &hubs));
    assert_eq!(a.hub, expected);
    // A group's device is known on its hub by its registration id.
    assert_eq!(a.device_id, "dev-1");
}

#[test]
fn an_individual_enrollment_names_the_device_id_and_a_group_cannot() {
    let e = enrollment(EnrollmentKind::Individual, json!({"deviceId": "device-one"}));
    assert_eq!(assigned(run(&e, None, &[hub("a", 1, true)])).device_id, "device-one");
    let g = enrollment(EnrollmentKind::Group, json!({"deviceId": "device-one"}));
    assert_eq!(assigned(run(&g, None, &[hub("a", 1, true)])).device_id, "dev-1");
}

#[test]
fn static_allocation_takes_the_first_linked_hub() {
    let e = enrollment(EnrollmentKind::Individual, json!({"allocationPolicy": "static", "iotHubs": ["b", "a"]}));
    let a = assigned(run(&e, None, &[hub("a", 1, true), hub("b", 1, true)]));
    assert_eq!(a.hub, "a", "the first of the service's hubs that the enrollment names");
}

#[test]
fn an_assigned_device_whose_static_hub_is_gone_fails() {
    let e = enrollment(EnrollmentKind::Individual, json!({"allocationPolicy": "static", "iotHubs": ["gone"]}));
    let now = current(RegistrationStatus::Assigned, "old", None);
    let (code, message) = failed(run(&e, Some(&now), &[hub("a", 1, true)]).unwrap());
    assert_eq!((code, message.as_str()), (ErrorCode::NoHubAvailable, "the enrollment's static hub is not linked"));
}

#[test]
fn an_assigned_device_stays_when_hashing_has_no_hub_left() {
    let e = enrollment(EnrollmentKind::Individual, json!({"iotHubs": ["gone"]}));
    let now = current(RegistrationStatus::Assigned, "old", Some(json!({"kept": true})));
    let a = assigned(run(&e, Some(&now), &[hub("a", 1, true)]));
    assert_eq!((a.hub.as_str(), a.substatus.as_str()), ("old", substatus::INITIAL));
    assert_eq!(a.initial_twin, Some(json!({"kept": true})));
}

#[test]
fn reprovisioning_migrates_resets_or_keeps_the_device() {
    let hubs = [hub("new", 1, true)];
    let now = current(RegistrationStatus::Assigned, "old", Some(json!({"old": true})));
    let twin = json!({"tags": {"from": "enrollment"}});
    let policy = |update: bool, migrate: bool| {
        enrollment(
            EnrollmentKind::Individual,
            json!({"initialTwin": twin, "reprovisionPolicy": {"updateHubAssignment": update, "migrateDeviceData": migrate}}),
        )
    };
    let migrated = assigned(run(&policy(true, true), Some(&now), &hubs));
    assert_eq!((migrated.hub.as_str(), migrated.substatus.as_str()), ("new", substatus::MIGRATED));
    assert_eq!(migrated.initial_twin, Some(json!({"old": true})), "migrated data keeps its twin");
    let reset = assigned(run(&policy(true, false), Some(&now), &hubs));
    assert_eq!((reset.hub.as_str(), reset.substatus.as_str()), ("new", substatus::RESET));
    assert_eq!(reset.initial_twin, Some(twin.clone()), "a reset starts from the enrollment's twin");
    let kept = assigned(run(&policy(false, true), Some(&now), &hubs));
    assert_eq!((kept.hub.as_str(), kept.substatus.as_str()), ("old", substatus::INITIAL));
}

#[test]
fn a_device_whose_last_registration_failed_is_assigned_as_new() {
    let e = enrollment(EnrollmentKind::Individual, json!({"initialTwin": {"t": 1}}));
    let now = current(RegistrationStatus::Failed, "old", None);
    let a = assigned(run(&e, Some(&now), &[hub("a", 1, true)]));
    assert_eq!((a.hub.as_str(), a.substatus.as_str()), ("a", substatus::INITIAL));
    assert_eq!(a.initial_twin, Some(json!({"t": 1})));
}

#[test]
fn custom_allocation_without_a_webhook_fails() {
    let e = enrollment(EnrollmentKind::Individual, json!({"allocationPolicy": "custom"}));
    let (code, message) = failed(run(&e, None, &[hub("a", 1, true)]).unwrap());
    assert_eq!((code, message.as_str()), (ErrorCode::CustomAllocationFailed, "Custom allocation failed: no webhook"));
}

fn custom(reprovision: Value) -> Enrollment {
    enrollment(
        EnrollmentKind::Individual,
        json!({"allocationPolicy": "custom", "reprovisionPolicy": reprovision, "initialTwin": {"from": "enrollment"},
               "customAllocationDefinition": {"webhookUrl": "https://hook.example", "apiVersion": "2019-03-31"}}),
    )
}

#[test]
fn custom_allocation_asks_the_webhook_with_the_linked_hubs() {
    let e = custom(json!({}));
    let call = run(&e, None, &[hub("a", 1, true), hub("b", 1, true), hub("c", 1, false)]).unwrap_err();
    assert_eq!(call.definition.webhook_url, "https://hook.example");
    assert_eq!(call.offered, ["a", "b"]);
}

#[test]
fn under_never_reprovision_the_webhook_is_offered_only_the_current_hub() {
    let e = custom(json!({"updateHubAssignment": false}));
    let now = current(RegistrationStatus::Assigned, "old", None);
    let call = run(&e, Some(&now), &[hub("a", 1, true)]).unwrap_err();
    assert_eq!(call.offered, ["old"]);
}

#[test]
fn the_webhooks_choice_twin_and_payload_are_taken() {
    let e = custom(json!({}));
    let hubs = [hub("a", 1, true), hub("b", 1, true)];
    let mut choice = answer("B");
    choice.payload = Some(json!({"hello": "device"}));
    let Decision::Assigned(a) = run_with(&e, None, &hubs, Ok(choice)) else { panic!("not assigned") };
    assert_eq!(a.hub, "b");
    assert_eq!(a.payload, Some(json!({"hello": "device"})));
    assert_eq!(a.initial_twin, Some(json!({"tags": {"from": "webhook"}})), "the webhook's twin wins");
    let mut bare = answer("a");
    bare.initial_twin = None;
    let Decision::Assigned(a) = run_with(&e, None, &hubs, Ok(bare)) else { panic!("not assigned") };
    assert_eq!(a.initial_twin, Some(json!({"from": "enrollment"})));
}

#[test]
fn a_webhook_that_fails_or_chooses_an_unlinked_hub_fails_the_registration() {
    let e = custom(json!({}));
    let hubs = [hub("a", 1, true)];
    let (code, message) = failed(run_with(&e, None, &hubs, Err(webhook::FAILED.into())));
    assert_eq!((code, message.as_str()), (ErrorCode::CustomAllocationFailed, "Custom allocation failed"));
    let (code, message) = failed(run_with(&e, None, &hubs, Ok(answer("elsewhere"))));
    assert_eq!(code, ErrorCode::CustomAllocationFailed);
    assert!(!message.contains("elsewhere"), "the webhook's text reached the device: {message}");
}

#[test]
fn only_an_assigned_device_gets_a_certificate_and_each_outcome_is_audited_by_name() {
    let e = enrollment(EnrollmentKind::Individual, json!({}));
    let decision = run(&e, None, &[hub("a", 1, true)]).unwrap();
    assert!(decision.issues_certificate());
    assert_eq!(decision.status(), RegistrationStatus::Assigned);
    assert_eq!(decision.detail("enrollment"), "assigned to a (initialAssignment)");
    let failed = Decision::Failed { code: ErrorCode::NoHubAvailable, message: "none".into() };
    assert!(!failed.issues_certificate());
    assert_eq!((failed.status(), failed.detail("enrollment")), (RegistrationStatus::Failed, "failed: none".into()));
}

mod hashed_allocation {
    use proptest::prelude::*;

    use super::super::super::allocation::{Candidate, hashed};

    fn names(count: usize) -> Vec<String> {
        (0..count).map(|i| format!("hub-{i}.example")).collect()
    }

    fn candidates<'a>(names: &'a [String], weights: &[u32]) -> Vec<Candidate<'a>> {
        names.iter().zip(weights).map(|(n, w)| Candidate { host_name: n, weight: *w }).collect()
    }

    proptest! {
        /// A device's hub depends only on the set of hubs and their weights: not on their order, and not on
        /// another hub coming or going.
        #[test]
        fn is_stable(device in "[a-z0-9-]{1,40}", weights in prop::collection::vec(1u32..=1000, 2..8), turn in 0usize..8) {
            let names = names(weights.len());
            let hubs = candidates(&names, &weights);
            let chosen = hashed(&device, &hubs).unwrap();
            let mut rotated = hubs.clone();
            rotated.rotate_left(turn % hubs.len());
            prop_assert_eq!(hashed(&device, &rotated), Some(chosen));
            let mut fewer = hubs.clone();
            if let Some(other) = fewer.iter().position(|h| h.host_name != chosen) {
                fewer.remove(other);
            }
            prop_assert_eq!(hashed(&device, &fewer), Some(chosen));
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]

        /// Over many devices, each hub's share follows its share of the total weight.
        #[test]
        fn respects_weights(weights in prop::collection::vec(1u32..=1000, 2..5)) {
            let names = names(weights.len());
            let hubs = candidates(&names, &weights);
            let devices = 4000u32;
            let mut won = vec![0u32; hubs.len()];
            for i in 0..devices {
                let chosen = hashed(&format!("device-{i}"), &hubs);
                if let Some(index) = hubs.iter().position(|h| Some(h.host_name) == chosen) {
                    won[index] += 1;
                }
            }
            let total: u32 = weights.iter().sum();
            for (hub, won) in hubs.iter().zip(won) {
                let share = f64::from(won) / f64::from(devices);
                let expected = f64::from(hub.weight) / f64::from(total);
                prop_assert!((share - expected).abs() < 0.04, "{}: share {share:.3}, weight share {expected:.3}", hub.host_name);
            }
        }
    }
}

/// A device id that any hub reserves (a Mosquitto hub's admin user, its reservedDeviceIds), in any case, fails
/// with 400213 whichever hub the device is assigned to; other ids are assigned as before.
#[test]
fn reserved_device_ids_are_refused_on_every_hub() {
    let mut broker = hub("mqtt.example.com", 100, false);
    broker.hub.kind = "mosquitto".into();
    broker.hub.settings = json!({"username": "zt-admin", "reservedDeviceIds": ["ops-console"]});
    let hubs = [hub("plain.example.com", 100, true), broker];
    for device_id in ["zt-admin", "ZT-Admin", "ops-console"] {
        let e = enrollment(EnrollmentKind::Individual, json!({"deviceId": device_id}));
        match run(&e, None, &hubs).unwrap() {
            Decision::Failed { code, message } => {
                assert_eq!(code, ErrorCode::DeviceIdReserved, "{device_id}");
                assert!(message.contains(device_id) && message.contains("reserved"), "{message}");
            }
            other => panic!("{device_id}: {other:?}"),
        }
    }
    let e = enrollment(EnrollmentKind::Individual, json!({"deviceId": "meter-1"}));
    assert!(matches!(run(&e, None, &hubs).unwrap(), Decision::Assigned(a) if a.device_id == "meter-1"));
    let taken = device_id_taken(&Assignment {
        hub: "plain.example.com".into(),
        device_id: "meter-1".into(),
        substatus: substatus::INITIAL.into(),
        payload: None,
        initial_twin: None,
    });
    assert!(matches!(taken, Decision::Failed { code: ErrorCode::DeviceIdTaken, ref message }
        if message.contains("meter-1") && message.contains("plain.example.com")));
}
