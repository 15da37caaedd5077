//! The custom allocation webhook (`docs/protocol/device-api.md` §7): the service POSTs an `AllocationRequest`,
//! the webhook answers with the hub (one of `linkedHubs`), and optionally an initial twin and a payload for the
//! device. [`super::decide`] says when to call it and judges the answer.

use std::time::Duration;

use serde::Deserialize;
use serde_json::{Value, json};
use zerotouch_store::RegistrationRecord;
use zerotouch_wire::enrollment::EnrollmentKind;
use zerotouch_wire::registration::X509CertificateInfo;

use super::enrollment::Enrollment;

/// How long the webhook may take.
pub const TIMEOUT: Duration = Duration::from_secs(5);
/// The largest answer read.
const ANSWER_LIMIT: usize = 96 * 1024;

/// The webhook's answer (`AllocationResponse`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Answer {
    /// The chosen hub.
    pub iot_hub_host_name: String,
    /// The twin the hub should apply.
    #[serde(default)]
    pub initial_twin: Option<Value>,
    /// Returned to the device in `registrationState.payload`.
    #[serde(default)]
    pub payload: Option<Value>,
}

/// What the device is told when the webhook fails, whatever the reason (the reason is logged): the webhook's status
/// and text never reach the device (issue #17).
pub const FAILED: &str = "Custom allocation failed";

/// Calls the webhook under `outbound` (`zerotouch_outbound`: https only, no redirects, the address checked after
/// resolution and pinned, the answer read up to 96 KB); the error is the message the device sees with code 400207,
/// always [`FAILED`]. The log line names the URL without its query (Azure Functions keep their key there).
pub async fn allocate(
    client: &reqwest::Client,
    outbound: &zerotouch_outbound::OutboundPolicy,
    url: &str,
    request: &Value,
) -> Result<Answer, String> {
    let shown = zerotouch_outbound::redacted_text(url);
    let failed = |why: String| {
        tracing::info!("custom allocation webhook {shown}: {why}");
        FAILED.to_owned()
    };
    let parsed = outbound.parse_url(url).map_err(|e| failed(e.to_string()))?;
    let response = client
        .post(parsed)
        .timeout(TIMEOUT)
        .json(request)
        .send()
        .await
        .map_err(|e| failed(zerotouch_outbound::describe(e)))?;
    let status = response.status();
    if !status.is_success() {
        return Err(failed(format!("answered {status} (redirects are not followed)")));
    }
    let body = zerotouch_outbound::read_capped(response, ANSWER_LIMIT).await.map_err(|e| failed(e.to_string()))?;
    serde_json::from_slice::<Answer>(&body)
        .map_err(|e| failed(format!("the answer is not an AllocationResponse with iotHubHostName: {e}")))
}

/// How the device proved itself, as the webhook is told in `deviceRuntimeContext` (§7).
#[derive(Debug, Clone, Copy)]
pub enum RuntimeAttestation<'a> {
    /// A SAS token: `"symmetricKey": {}` (Azure sends the empty object; never a key).
    SymmetricKey,
    /// A TLS client certificate chain, leaf first, and the CA of the device's enrollment group it chained to.
    X509 {
        /// The chain the device presented (DER, its own certificate first).
        chain: &'a [Vec<u8>],
        /// The group's CA certificate the chain ended at (`None` for an individual enrollment).
        signing: Option<&'a X509CertificateInfo>,
    },
    /// A TPM: the endorsement and storage root keys its activation was made for (base64 `TPM2B_PUBLIC`).
    Tpm {
        /// The endorsement key.
        endorsement_key: &'a str,
        /// The storage root key.
        storage_root_key: &'a str,
    },
}

/// The request shape of a `customAllocationDefinition.apiVersion` (`docs/protocol/device-api.md` §7.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum RequestShape {
    /// `2018-09-01-preview` and `2018-11-01`: before device payloads (the device API took none before
    /// `2019-03-31`), so `deviceRuntimeContext` carries no `payload`.
    V2018,
    /// `2019-03-31` up to `2021-10-01`: `deviceRuntimeContext.payload`, the enrollment without the fields newer
    /// api-versions added (`credentialPolicyName`).
    V2019,
    /// `2025-07-01-preview` and later: as [`RequestShape::V2019`], the enrollment with `credentialPolicyName`.
    V2025,
}

impl RequestShape {
    /// The shape of `api_version` (`YYYY-MM-DD` with an optional `-preview`); an unknown text gets the newest
    /// shape, which holds everything the older ones do.
    pub fn of(api_version: &str) -> Self {
        let date = api_version.get(..10).unwrap_or(api_version);
        if date < "2019-03-31" && date.starts_with("20") {
            Self::V2018
        } else if date < "2025-07-01" && date.starts_with("20") {
            Self::V2019
        } else {
            Self::V2025
        }
    }
}

/// The `AllocationRequest` (§7): the enrollment as the service API shows it, the device's runtime context (how it
/// attested, its current hub and device id when it is assigned, its payload) and the hubs the webhook may choose
/// from, shaped for the enrollment's `apiVersion` ([`RequestShape`]).
pub fn allocation_request(
    registration_id: &str,
    enrollment: &Enrollment,
    attestation: RuntimeAttestation<'_>,
    current: Option<&RegistrationRecord>,
    payload: Option<&Value>,
    offered: &[String],
    shape: RequestShape,
) -> Value {
    let record = &enrollment.record;
    let mut rendered = zerotouch_wire::enrollment::render(
        &record.document,
        &record.etag,
        &zerotouch_wire::format_timestamp(record.created_at),
        &zerotouch_wire::format_timestamp(record.updated_at),
        None,
    );
    zerotouch_pki::fill_certificate_infos(&mut rendered);
    if shape < RequestShape::V2025
        && let Some(map) = rendered.as_object_mut()
    {
        map.remove("credentialPolicyName");
    }
    let mut context = json!({ "registrationId": registration_id });
    if let Some(current) = current.filter(|c| c.assigned_hub.is_some()) {
        context["currentIotHubHostName"] = json!(current.assigned_hub);
        context["currentDeviceId"] = json!(current.device_id);
    }
    match attestation {
        RuntimeAttestation::SymmetricKey => context["symmetricKey"] = json!({}),
        RuntimeAttestation::X509 { chain, signing } => context["x509"] = x509_context(chain, signing),
        RuntimeAttestation::Tpm { endorsement_key, storage_root_key } => {
            context["tpm"] = json!({ "endorsementKey": endorsement_key, "storageRootKey": storage_root_key });
        }
    }
    if let Some(payload) = payload.filter(|_| shape >= RequestShape::V2019) {
        context["payload"] = payload.clone();
    }
    let enrollment_field = match enrollment.kind {
        EnrollmentKind::Individual => "individualEnrollment",
        EnrollmentKind::Group => "enrollmentGroup",
    };
    json!({ enrollment_field: rendered, "deviceRuntimeContext": context, "linkedHubs": offered })
}

/// `deviceRuntimeContext.x509` (§7.1): `clientCertificate`, the device's certificate as base64 DER (what Azure
/// sends), and our additions in Azure's own shapes: `clientCertificateInfo` (its `X509CertificateInfo`),
/// `caCertificates` (the rest of the chain it presented, each an `X509CertificateWithInfo`) and, for a group,
/// `signingCertificateInfo` (the group's CA the chain ended at).
fn x509_context(chain: &[Vec<u8>], signing: Option<&X509CertificateInfo>) -> Value {
    use base64::Engine;
    let encode = |der: &[u8]| base64::engine::general_purpose::STANDARD.encode(der);
    let info = |der: &[u8]| zerotouch_pki::certificate_info(der).ok();
    let mut x509 = serde_json::Map::new();
    if let Some((leaf, rest)) = chain.split_first() {
        x509.insert("clientCertificate".into(), json!(encode(leaf)));
        if let Some(info) = info(leaf) {
            x509.insert("clientCertificateInfo".into(), json!(info));
        }
        let cas: Vec<Value> = rest
            .iter()
            .map(|der| {
                let mut entry = json!({ "certificate": encode(der) });
                if let Some(info) = info(der) {
                    entry["info"] = json!(info);
                }
                entry
            })
            .collect();
        x509.insert("caCertificates".into(), Value::Array(cas));
    }
    if let Some(signing) = signing {
        x509.insert("signingCertificateInfo".into(), json!(signing));
    }
    Value::Object(x509)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use serde_json::json;

    use super::*;

    fn group(document: Value) -> Enrollment {
        super::super::enrollment::for_tests(EnrollmentKind::Group, document)
    }

    fn certificate(cn: &str, ou: &str) -> Vec<u8> {
        let mut params = rcgen::CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params.distinguished_name.push(rcgen::DnType::OrganizationalUnitName, ou);
        params.distinguished_name.push(rcgen::DnType::CommonName, cn);
        params.self_signed(&rcgen::KeyPair::generate().unwrap()).unwrap().der().to_vec()
    }

    fn document() -> Value {
        json!({
            "enrollmentGroupId": "Line-2",
            "attestation": {"type": "symmetricKey"},
            "allocationPolicy": "custom",
            "credentialPolicyName": "adr-policy",
            "customAllocationDefinition": {"webhookUrl": "https://alloc.example/api", "apiVersion": "2021-10-01"},
        })
    }

    #[test]
    fn api_versions_map_to_their_request_shapes() {
        assert_eq!(RequestShape::of("2018-09-01-preview"), RequestShape::V2018);
        assert_eq!(RequestShape::of("2018-11-01"), RequestShape::V2018);
        assert_eq!(RequestShape::of("2019-03-31"), RequestShape::V2019);
        assert_eq!(RequestShape::of("2021-10-01"), RequestShape::V2019);
        assert_eq!(RequestShape::of("2025-07-01-preview"), RequestShape::V2025);
        assert_eq!(RequestShape::of("2026-11-01"), RequestShape::V2025);
        assert_eq!(RequestShape::of("latest"), RequestShape::V2025, "unknown: the newest shape");
        assert_eq!(RequestShape::of(""), RequestShape::V2025);
        assert_eq!(RequestShape::of("é"), RequestShape::V2025, "no panic on a multi-byte text");
    }

    /// An X.509 device: its certificate as base64 DER (what Azure's functions read), its details, the rest of its
    /// chain and the group's CA, so that a function can allocate by a certificate property.
    #[test]
    fn x509_devices_are_described_by_their_chain() {
        use base64::Engine;
        let leaf = certificate("dev-7", "Line 2");
        let ca = certificate("Factory CA", "PKI");
        let signing = zerotouch_pki::certificate_info(&ca).unwrap();
        let chain = [leaf.clone(), ca.clone()];
        let request = allocation_request(
            "dev-7",
            &group(document()),
            RuntimeAttestation::X509 { chain: &chain, signing: Some(&signing) },
            None,
            Some(&json!({"model": "t-1000"})),
            &["hub-a.example".into(), "hub-b.example".into()],
            RequestShape::V2019,
        );
        let context = &request["deviceRuntimeContext"];
        assert_eq!(context["registrationId"], "dev-7");
        assert!(context.get("symmetricKey").is_none() && context.get("tpm").is_none(), "{context}");
        let x509 = &context["x509"];
        let b64 = |der: &[u8]| base64::engine::general_purpose::STANDARD.encode(der);
        assert_eq!(x509["clientCertificate"], b64(&leaf));
        assert_eq!(x509["clientCertificateInfo"]["subjectName"], "CN=dev-7, OU=Line 2");
        assert_eq!(x509["caCertificates"], json!([{"certificate": b64(&ca), "info": signing}]));
        assert_eq!(x509["signingCertificateInfo"]["subjectName"], "CN=Factory CA, OU=PKI");
        assert_eq!(context["payload"], json!({"model": "t-1000"}));
        assert!(context.get("currentIotHubHostName").is_none(), "a first assignment");
        assert_eq!(request["enrollmentGroup"]["enrollmentGroupId"], "Line-2");
        assert!(request["enrollmentGroup"].get("credentialPolicyName").is_none(), "not in 2021-10-01");
        assert_eq!(request["linkedHubs"], json!(["hub-a.example", "hub-b.example"]));
    }

    #[test]
    fn tpm_and_symmetric_key_devices_and_the_2018_shape() {
        let tpm = RuntimeAttestation::Tpm { endorsement_key: "RUs=", storage_root_key: "U1JL" };
        let payload = json!({"a": 1});
        let request =
            allocation_request("dev-8", &group(document()), tpm, None, Some(&payload), &[], RequestShape::V2018);
        let context = &request["deviceRuntimeContext"];
        assert_eq!(context["tpm"], json!({"endorsementKey": "RUs=", "storageRootKey": "U1JL"}));
        assert!(context.get("payload").is_none(), "2018-11-01 knew no device payloads: {context}");

        let request = allocation_request(
            "dev-9",
            &group(document()),
            RuntimeAttestation::SymmetricKey,
            None,
            Some(&payload),
            &[],
            RequestShape::V2025,
        );
        assert_eq!(request["deviceRuntimeContext"]["symmetricKey"], json!({}));
        assert_eq!(request["deviceRuntimeContext"]["payload"], payload);
        assert_eq!(request["enrollmentGroup"]["credentialPolicyName"], "adr-policy");
    }
}
