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

/// Calls the webhook; the error is the message the device sees with code 400207 (no internal detail).
pub async fn allocate(client: &reqwest::Client, url: &str, request: &Value) -> Result<Answer, String> {
    let response = client.post(url).timeout(TIMEOUT).json(request).send().await.map_err(|e| {
        tracing::info!("custom allocation webhook {url}: {e}");
        if e.is_timeout() {
            format!("Custom allocation failed: no answer within {} s", TIMEOUT.as_secs())
        } else {
            "Custom allocation failed: the webhook could not be reached".to_owned()
        }
    })?;
    let status = response.status();
    if !status.is_success() {
        return Err(format!("Custom allocation failed with status code: {}", status.as_u16()));
    }
    let body =
        response.bytes().await.map_err(|_| "Custom allocation failed: the answer could not be read".to_owned())?;
    if body.len() > ANSWER_LIMIT {
        return Err("Custom allocation failed: the answer is too large".to_owned());
    }
    serde_json::from_slice::<Answer>(&body)
        .map_err(|_| "Custom allocation failed: the answer is not an AllocationResponse with iotHubHostName".to_owned())
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
