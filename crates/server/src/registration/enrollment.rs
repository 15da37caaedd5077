//! The enrollment a device matched, parsed once from its stored record into the types the service decides on.
//!
//! The store keeps an enrollment as its service-API document (JSON) plus a few columns; every request used to
//! pick fields out of that document again, in several shapes, and compare strings. [`Enrollment::parse`] reads
//! it once: enums for the attestation, the provisioning status, the allocation and the reprovision policy, the
//! linked hubs lower-cased. A record that cannot be read is the service's fault (the admin API normalizes every
//! document before storing it), reported as an internal error naming the enrollment.

use serde::Deserialize;
use serde_json::Value;
use zerotouch_store::EnrollmentRecord;
use zerotouch_wire::SymmetricKey;
use zerotouch_wire::enrollment::{
    AllocationPolicy, AttestationType, CertificatePolicy, CustomAllocationDefinition, EnrollmentKind,
    ProvisioningStatus, ReprovisionPolicy, TpmAttestation, X509Attestation,
};

use crate::internal::InternalError;

/// How the enrollment's devices prove who they are, with what they prove it against.
#[derive(Debug, Clone)]
pub enum Attestation {
    /// SAS tokens signed with one of these keys (a group's keys derive each device's own).
    SymmetricKey(Vec<SymmetricKey>),
    /// X.509: device certificates (individual), signing certificates or CA references (group).
    X509(X509Attestation),
    /// TPM: the endorsement key (individual), or the manufacturer CAs (group).
    Tpm(TpmAttestation),
}

impl Attestation {
    /// The name used on the wire and in the audit log.
    pub fn name(&self) -> &'static str {
        match self {
            Self::SymmetricKey(_) => AttestationType::SymmetricKey.as_str(),
            Self::X509(_) => AttestationType::X509.as_str(),
            Self::Tpm(_) => AttestationType::Tpm.as_str(),
        }
    }
}

/// How a hub is chosen for the enrollment's devices (`docs/protocol/device-api.md` §6, §7).
#[derive(Debug, Clone, PartialEq)]
pub enum Allocation {
    /// Weighted, stable hashing over the linked hubs (also what `geoLatency` does here).
    Hashed,
    /// The first linked hub.
    Static,
    /// A webhook decides; `None` when the enrollment names none (every device then fails with 400207).
    Custom(Option<CustomAllocationDefinition>),
}

/// An enrollment or enrollment group, typed.
#[derive(Debug, Clone)]
pub struct Enrollment {
    /// Individual enrollment or group.
    pub kind: EnrollmentKind,
    /// The record it was read from (the webhook's request shows it as the service API does).
    pub record: EnrollmentRecord,
    /// Whether its devices may provision.
    pub status: ProvisioningStatus,
    /// How its devices attest.
    pub attestation: Attestation,
    /// The device id on the hub (individual enrollments only; else the registration id).
    pub device_id: Option<String>,
    /// How a hub is chosen.
    pub allocation: Allocation,
    /// The hubs it names, lower-cased; empty: every hub that applies the allocation policy.
    pub hubs: Vec<String>,
    /// What a known device's new registration does to its assignment.
    pub reprovision: ReprovisionPolicy,
    /// The twin a device starts with on its hub.
    pub initial_twin: Option<Value>,
    /// How its devices' operational certificates are issued.
    pub certificate_policy: CertificatePolicy,
}

/// The parts of a stored document the service acts on (other fields are the admin API's business).
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Document {
    #[serde(default)]
    device_id: Option<String>,
    #[serde(default)]
    attestation: Option<DocumentAttestation>,
    #[serde(default)]
    allocation_policy: Option<AllocationPolicy>,
    #[serde(default)]
    iot_hubs: Option<Vec<String>>,
    #[serde(default)]
    iot_hub_host_name: Option<String>,
    #[serde(default)]
    reprovision_policy: Option<ReprovisionPolicy>,
    #[serde(default)]
    initial_twin: Option<Value>,
    #[serde(default)]
    custom_allocation_definition: Option<CustomAllocationDefinition>,
    #[serde(default)]
    certificate_policy: Option<CertificatePolicy>,
}

#[derive(Debug, Deserialize)]
struct DocumentAttestation {
    #[serde(default)]
    x509: Option<X509Attestation>,
    #[serde(default)]
    tpm: Option<TpmAttestation>,
}

impl Enrollment {
    /// Reads a stored enrollment of `kind`.
    pub fn parse(kind: EnrollmentKind, record: EnrollmentRecord) -> Result<Self, InternalError> {
        let unreadable = |why: String| InternalError::bare(format!("stored {} {:?}: {why}", kind.noun(), record.id));
        let document = Document::deserialize(&record.document).map_err(|e| unreadable(e.to_string()))?;
        let status = match record.provisioning_status.as_str() {
            "enabled" => ProvisioningStatus::Enabled,
            "disabled" => ProvisioningStatus::Disabled,
            other => return Err(unreadable(format!("provisioning status {other:?}"))),
        };
        let stored = document.attestation;
        let attestation = match record.attestation_type.as_str() {
            "symmetricKey" => Attestation::SymmetricKey(
                [&record.primary_key, &record.secondary_key].into_iter().flatten().cloned().collect(),
            ),
            "x509" => match stored.and_then(|a| a.x509) {
                Some(x509) => Attestation::X509(x509),
                None => return Err(unreadable("an x509 attestation without certificates".into())),
            },
            "tpm" => match stored.and_then(|a| a.tpm) {
                Some(tpm) => Attestation::Tpm(tpm),
                None => return Err(unreadable("a tpm attestation without keys".into())),
            },
            other => return Err(unreadable(format!("attestation type {other:?}"))),
        };
        let allocation = match document.allocation_policy.unwrap_or_default() {
            AllocationPolicy::Hashed | AllocationPolicy::GeoLatency => Allocation::Hashed,
            AllocationPolicy::Static => Allocation::Static,
            AllocationPolicy::Custom => Allocation::Custom(document.custom_allocation_definition),
        };
        let hubs = document
            .iot_hubs
            .filter(|hubs| !hubs.is_empty())
            .or_else(|| document.iot_hub_host_name.map(|hub| vec![hub]))
            .unwrap_or_default()
            .into_iter()
            .map(|hub| hub.to_ascii_lowercase())
            .collect();
        Ok(Self {
            kind,
            status,
            attestation,
            device_id: document.device_id.filter(|_| kind == EnrollmentKind::Individual),
            allocation,
            hubs,
            reprovision: document.reprovision_policy.unwrap_or_default(),
            initial_twin: document.initial_twin,
            certificate_policy: document.certificate_policy.unwrap_or_default(),
            record,
        })
    }

    /// Its id as the client spelled it.
    pub fn id(&self) -> &str {
        &self.record.id
    }

    /// Its canonical (lower-case) id.
    pub fn key(&self) -> &str {
        &self.record.key
    }

    /// The group's id, for a group (what registration results name).
    pub fn group_id(&self) -> Option<&str> {
        (self.kind == EnrollmentKind::Group).then(|| self.id())
    }

    /// Whether its devices are refused (status `disabled`).
    pub fn is_disabled(&self) -> bool {
        self.status == ProvisioningStatus::Disabled
    }

    /// What messages and the audit log call its kind: `enrollment` or `enrollment group`.
    pub fn noun(&self) -> &'static str {
        self.kind.noun()
    }
}

/// An enrollment of `kind` with key `dev-1` parsed from `document` (its `provisioningStatus`, else enabled), for the
/// registration stages' unit tests.
#[cfg(test)]
#[allow(clippy::unwrap_used)]
pub(crate) fn for_tests(kind: EnrollmentKind, document: Value) -> Enrollment {
    let status = document.get("provisioningStatus").and_then(Value::as_str).unwrap_or("enabled").to_owned();
    let record = EnrollmentRecord {
        key: "dev-1".into(),
        id: "dev-1".into(),
        attestation_type: "symmetricKey".into(),
        provisioning_status: status,
        document,
        primary_key: None,
        secondary_key: None,
        etag: "e".into(),
        created_at: chrono::Utc::now(),
        updated_at: chrono::Utc::now(),
    };
    Enrollment::parse(kind, record).unwrap()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use serde_json::json;

    fn record(attestation_type: &str, status: &str, document: Value) -> EnrollmentRecord {
        EnrollmentRecord {
            key: "dev-1".into(),
            id: "Dev-1".into(),
            attestation_type: attestation_type.into(),
            provisioning_status: status.into(),
            document,
            primary_key: Some(SymmetricKey::generate_len(32)),
            secondary_key: None,
            etag: "e".into(),
            created_at: chrono::Utc::now(),
            updated_at: chrono::Utc::now(),
        }
    }

    #[test]
    fn a_symmetric_key_enrollment_reads_its_policies_once() {
        let document = json!({
            "registrationId": "Dev-1", "deviceId": "device-one",
            "attestation": {"type": "symmetricKey"},
            "allocationPolicy": "geoLatency", "iotHubs": ["Hub-A.example", "hub-b.example"],
            "reprovisionPolicy": {"updateHubAssignment": false, "migrateDeviceData": true},
            "certificatePolicy": {"validityDays": 7},
        });
        let e = Enrollment::parse(EnrollmentKind::Individual, record("symmetricKey", "enabled", document)).unwrap();
        assert!(matches!(&e.attestation, Attestation::SymmetricKey(keys) if keys.len() == 1));
        assert_eq!(e.allocation, Allocation::Hashed);
        assert_eq!(e.hubs, ["hub-a.example", "hub-b.example"]);
        assert_eq!(e.device_id.as_deref(), Some("device-one"));
        assert!(!e.reprovision.update_hub_assignment);
        assert_eq!(e.certificate_policy.validity_days, 7);
        assert!(!e.is_disabled());
        assert_eq!(e.group_id(), None);
    }

    #[test]
    fn a_group_has_no_device_id_and_the_deprecated_hub_name_still_links() {
        let document = json!({"deviceId": "ignored", "iotHubHostName": "Hub.example", "allocationPolicy": "static"});
        let e = Enrollment::parse(EnrollmentKind::Group, record("symmetricKey", "disabled", document)).unwrap();
        assert_eq!(e.device_id, None);
        assert_eq!(e.hubs, ["hub.example"]);
        assert_eq!(e.allocation, Allocation::Static);
        assert!(e.is_disabled());
        assert_eq!(e.group_id(), Some("Dev-1"));
    }

    #[test]
    fn custom_allocation_keeps_its_webhook_and_unknown_states_are_internal_errors() {
        let document = json!({"allocationPolicy": "custom",
            "customAllocationDefinition": {"webhookUrl": "https://hook", "apiVersion": "2019-03-31"}});
        let e = Enrollment::parse(EnrollmentKind::Group, record("symmetricKey", "enabled", document)).unwrap();
        assert!(matches!(&e.allocation, Allocation::Custom(Some(d)) if d.webhook_url == "https://hook"));
        for (kind, status, document) in [
            ("symmetricKey", "paused", json!({})),
            ("none", "enabled", json!({})),
            ("x509", "enabled", json!({"attestation": {"type": "x509"}})),
            ("symmetricKey", "enabled", json!({"allocationPolicy": "random"})),
        ] {
            let error = Enrollment::parse(EnrollmentKind::Individual, record(kind, status, document)).unwrap_err();
            assert!(error.chain().contains("\"Dev-1\""), "{}", error.chain());
        }
    }
}
