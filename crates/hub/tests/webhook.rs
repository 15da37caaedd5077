//! The webhook adapter against a real local HTTPS receiver (the kit's, actix-web and rustls) that verifies every signature
//! and records what it was sent.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use zerotouch_hub::{
    ChangeId, Credential, DeviceId, DeviceIdentity, HubAdapter, HubError, Owner, SymmetricKeys, adapter_for,
};
use zerotouch_tests::webhook::Receiver;
use zerotouch_wire::{KeySlot, SymmetricKey};

const SECRET: &str = "a-webhook-secret-of-32-bytes-xyz";

/// Starts the kit's HTTPS receiver (which checks signatures as the crate docs tell a receiver to) with a
/// certificate of a CA made here: the receiver and the CA PEM.
fn receiver() -> (Receiver, String) {
    let ca = support::TestCa::new("webhook test CA");
    let (cert, key) = ca.server();
    (Receiver::start(&cert, &key, SECRET), ca.pem)
}

fn adapter(url: &str, ca: &str, secret: &str) -> Box<dyn HubAdapter> {
    let settings = serde_json::json!({"url": url, "secret": secret, "ca": ca, "timeoutMs": 1000});
    adapter_for("webhook", "hook-1", &settings, &loopback()).unwrap()
}

/// The outbound policy with loopback opened (the receiver listens there).
fn loopback() -> zerotouch_outbound::OutboundPolicy {
    zerotouch_outbound::OutboundPolicy::new(vec!["127.0.0.0/8".parse().unwrap(), "::1/128".parse().unwrap()], false)
}

fn id(text: &str) -> DeviceId {
    DeviceId::try_from(text).unwrap()
}

fn owner(registration: &str) -> Owner {
    Owner::registration(registration)
}

/// A new change, as the outbox names each job.
fn change() -> ChangeId {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    ChangeId::new(format!("change-{}", NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)))
}

fn identity(device: &str, credential: Credential) -> DeviceIdentity {
    DeviceIdentity {
        device_id: id(device),
        owner: owner(device),
        credential,
        enabled: true,
        initial_twin: Some(serde_json::json!({"tags": {"site": "plant-4"}})),
        change: change(),
    }
}

/// Create (certificate and key devices), disable and delete arrive signed, with the documented bodies; a DELETE
/// answered 404 and a repeated delete succeed; health answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receiver_sees_signed_create_disable_delete() {
    let (server, ca) = receiver();
    let hub = adapter(&server.url, &ca, SECRET);
    hub.health().await.unwrap();
    let cert = Credential::Certificate { subject_cn: "dev-1".into(), thumbprint: "ab".repeat(32) };
    hub.upsert_device(&identity("dev-1", cert)).await.unwrap();
    let (key, secondary) = (SymmetricKey::generate(), SymmetricKey::generate());
    let keys = SymmetricKeys { primary: key.clone(), secondary: Some(secondary.clone()), used: KeySlot::Secondary };
    hub.upsert_device(&identity("dev-2", Credential::SymmetricKey(keys))).await.unwrap();
    let disable = change();
    hub.disable_device(&id("dev-1"), &owner("dev-1"), &disable).await.unwrap();
    let delete = change();
    hub.delete_device(&id("dev-1"), &owner("dev-1"), &delete).await.unwrap();
    // A delivery repeated by the outbox carries the same change id.
    hub.delete_device(&id("dev-1"), &owner("dev-1"), &delete).await.unwrap();
    hub.delete_device(&id("gone"), &owner("gone"), &change()).await.unwrap();

    let seen = server.seen.lock().unwrap().clone();
    let summary: Vec<(&str, &str)> = seen.iter().map(|(m, i, _)| (m.as_str(), i.as_str())).collect();
    assert_eq!(
        summary,
        [("POST", "dev-1"), ("POST", "dev-2"), ("PUT", "dev-1"), ("DELETE", "dev-1"), ("DELETE", "dev-1")]
    );
    let created = &seen[0].2;
    assert_eq!(created["enabled"], true);
    assert_eq!(
        created["credential"],
        serde_json::json!({"type": "x509", "subjectName": "dev-1", "thumbprint": "ab".repeat(32)})
    );
    assert_eq!(created["initialTwin"]["tags"]["site"], "plant-4");
    assert_eq!(seen[1].2["credential"]["type"], "symmetricKey");
    // The key the device registered with, and both, so the receiver can take either.
    assert_eq!(seen[1].2["credential"]["key"], secondary.to_base64().as_str());
    assert_eq!(seen[1].2["credential"]["primaryKey"], key.to_base64().as_str());
    assert_eq!(seen[1].2["credential"]["secondaryKey"], secondary.to_base64().as_str());
    assert_eq!(
        seen[2].2,
        serde_json::json!({"operation": "disable", "changeId": disable.as_str(), "deviceId": "dev-1", "enabled": false})
    );
    // Each change has its id, so the receiver can apply each once.
    let changes: Vec<&str> = seen.iter().map(|(_, _, body)| body["changeId"].as_str().unwrap()).collect();
    assert_eq!(changes[3..], [delete.as_str(), delete.as_str()]);
    assert!(changes[..4].iter().collect::<std::collections::HashSet<_>>().len() == 4, "{changes:?}");
    server.stop().await;
}

/// 5xx and timeouts are `Unavailable`; 4xx, a redirect (not followed) and a bad signature are `Rejected`; a
/// receiver that is not listening is `Unavailable`; every message names the hub and the operation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_are_classified() {
    let (server, ca) = receiver();
    let url = server.url.clone();
    let hub = adapter(&url, &ca, SECRET);
    let key = || Credential::SymmetricKey(SymmetricKeys::single(SymmetricKey::generate()));

    let error = hub.upsert_device(&identity("fail-500", key())).await.unwrap_err();
    assert!(matches!(error, HubError::Unavailable { .. }), "{error:?}");
    assert!(error.to_string().contains("hook-1") && error.to_string().contains("device fail-500"), "{error}");
    let error = hub.upsert_device(&identity("slow", key())).await.unwrap_err();
    assert!(matches!(error, HubError::Unavailable { .. }), "{error:?}");
    let error = hub.upsert_device(&identity("bad-400", key())).await.unwrap_err();
    assert!(matches!(error, HubError::Rejected { .. }), "{error:?}");
    assert!(error.to_string().contains("no such device model"), "{error}");
    let error = hub.disable_device(&id("moved"), &owner("moved"), &change()).await.unwrap_err();
    assert!(matches!(error, HubError::Rejected { .. }), "{error:?}");
    let error = hub.delete_device(&id("bad-400"), &owner("bad-400"), &change()).await.unwrap_err();
    assert!(matches!(error, HubError::Rejected { .. }), "{error:?}");

    let forged = adapter(&url, &ca, "some-other-secret-of-32-bytes-xy");
    let error = forged.upsert_device(&identity("dev-9", key())).await.unwrap_err();
    assert!(matches!(error, HubError::Rejected { .. }) && error.to_string().contains("bad signature"), "{error}");
    assert!(!format!("{error:?}").contains("some-other-secret"));
    assert!(server.summary().is_empty());

    server.stop().await;
    let down = adapter(&format!("https://127.0.0.1:{}/hook", support::free_port()), &ca, SECRET);
    let error = down.delete_device(&id("dev-9"), &owner("dev-9"), &change()).await.unwrap_err();
    assert!(matches!(error, HubError::Unavailable { .. }), "{error:?}");
    assert!(matches!(down.health().await, Err(HubError::Unavailable { .. })));
}
