//! The custom allocation webhook (`docs/protocol/device-api.md` §7): the service POSTs an `AllocationRequest`,
//! the webhook answers with the hub (one of `linkedHubs`), and optionally an initial twin and a payload for the
//! device. [`super::decide`] says when to call it and judges the answer.

use std::time::Duration;

use serde::Deserialize;
use serde_json::{Value, json};
use zerotouch_store::RegistrationRecord;
use zerotouch_wire::enrollment::EnrollmentKind;

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

/// The `AllocationRequest` (§7): the enrollment as the service API shows it, the device's runtime context (its
/// current hub and device id when it is assigned, its payload) and the hubs the webhook may choose from.
pub fn allocation_request(
    registration_id: &str,
    enrollment: &Enrollment,
    current: Option<&RegistrationRecord>,
    payload: Option<&Value>,
    offered: &[String],
) -> Value {
    let record = &enrollment.record;
    let rendered = zerotouch_wire::enrollment::render(
        &record.document,
        &record.etag,
        &zerotouch_wire::format_timestamp(record.created_at),
        &zerotouch_wire::format_timestamp(record.updated_at),
        None,
    );
    let mut context = json!({ "registrationId": registration_id, "symmetricKey": {} });
    if let Some(current) = current.filter(|c| c.assigned_hub.is_some()) {
        context["currentIotHubHostName"] = json!(current.assigned_hub);
        context["currentDeviceId"] = json!(current.device_id);
    }
    if let Some(payload) = payload {
        context["payload"] = payload.clone();
    }
    let enrollment_field = match enrollment.kind {
        EnrollmentKind::Individual => "individualEnrollment",
        EnrollmentKind::Group => "enrollmentGroup",
    };
    json!({ enrollment_field: rendered, "deviceRuntimeContext": context, "linkedHubs": offered })
}
