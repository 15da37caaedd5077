//! Registration over HTTPS (`docs/protocol/device-api.md` §1): [`register`] sends the register and polls the
//! operation to its end, authenticated by a SAS token (symmetric key, §2) or by the client's TLS certificate (X.509,
//! §4; also the operational certificate of a device that registers again).
//!
//! TPM provisioning (§3.1): the first leg without a token answers 401 with an activation blob; the TPM imports its
//! key and signs the SAS token of the second leg; an `assigned` answer's hub-key blob is imported the same way.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use serde_json::{Value, json};

use crate::DeviceTpm;

/// The api-version sent (the one of the C SDK and IoT Edge).
pub const API_VERSION: &str = "2021-06-01";

/// Where and as whom to provision.
#[derive(Debug, Clone)]
pub struct Target {
    /// `https://host[:port]` of the device API.
    pub url: String,
    /// The id scope.
    pub id_scope: String,
    /// The registration id.
    pub registration_id: String,
    /// The api-version query parameter.
    pub api_version: String,
    /// How long to poll at most.
    pub deadline: Duration,
}

/// What the device asks for besides its registration.
#[derive(Debug, Clone, Default)]
pub struct Request {
    /// A CSR (DER PKCS#10) for an operational certificate.
    pub csr: Option<Vec<u8>>,
    /// Send the TPM's EK certificate (for TPM enrollment groups, our extension).
    pub send_ek_certificate: bool,
    /// A custom payload.
    pub payload: Option<Value>,
}

/// What `urllib.parse.quote(s, safe="")` leaves alone: letters, digits and `-._~`.
const URL_ENCODE: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'.').remove(b'_').remove(b'~');

/// `{sr}` of the SAS token: the resource, URL-encoded with upper-case hex, as the Python SDK does (§2.1).
fn resource(target: &Target) -> String {
    let resource = format!("{}/registrations/{}", target.id_scope, target.registration_id);
    utf8_percent_encode(&resource, URL_ENCODE).to_string()
}

/// The SAS token of §2.1, signed in the TPM, valid for an hour.
pub fn sas_token(tpm: &mut dyn DeviceTpm, target: &Target) -> anyhow::Result<String> {
    let sr = resource(target);
    let se = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs() + 3600;
    let signature = STANDARD.encode(tpm.sign(format!("{sr}\n{se}").as_bytes())?);
    let sig = utf8_percent_encode(&signature, URL_ENCODE);
    Ok(format!("SharedAccessSignature sr={sr}&sig={sig}&se={se}&skn=registration"))
}

/// The DER certificate at the start of `bytes` (NV indexes may be larger than the certificate they hold).
fn leading_der(bytes: &[u8]) -> Option<&[u8]> {
    let len = match bytes {
        [0x30, 0x82, hi, lo, ..] => 4 + (usize::from(*hi) << 8 | usize::from(*lo)),
        [0x30, 0x81, n, ..] => 3 + usize::from(*n),
        [0x30, n, ..] if *n < 0x80 => 2 + usize::from(*n),
        _ => return None,
    };
    bytes.get(..len)
}

/// Why a request to the service did not get the device what it asked for.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// No answer: connection, TLS or timeout.
    #[error("cannot reach the service: {0}")]
    Unreachable(String),
    /// An HTTP error status, with the service's error body.
    #[error("the service answered {status}: {body}")]
    Answered {
        /// The HTTP status.
        status: u16,
        /// The body (the error body of `docs/protocol/device-api.md` §1.7).
        body: String,
    },
    /// The registration ended `disabled` or `failed`.
    #[error("the registration ended {status}: {detail}")]
    NotAssigned {
        /// `disabled` or `failed`.
        status: String,
        /// The registration state's error, if any.
        detail: String,
    },
    /// Something on the device, or an answer it cannot read.
    #[error("{0:#}")]
    Local(anyhow::Error),
}

impl ServiceError {
    /// What the schedule makes of it (`crate::schedule::after_failure`): 429 and 5xx are worth a retry; other
    /// 4xx refuse the credential the request used.
    pub fn failure(&self) -> crate::schedule::Failure {
        use crate::schedule::Failure;
        match self {
            Self::Unreachable(_) => Failure::Unreachable,
            Self::Answered { status, .. } if *status == 429 || *status >= 500 => Failure::Unreachable,
            Self::Answered { .. } => Failure::Refused,
            Self::NotAssigned { .. } => Failure::NotAssigned,
            Self::Local(_) => Failure::Local,
        }
    }
}

impl From<reqwest::Error> for ServiceError {
    fn from(error: reqwest::Error) -> Self {
        Self::Unreachable(format!("{error:#}"))
    }
}

impl From<anyhow::Error> for ServiceError {
    fn from(error: anyhow::Error) -> Self {
        Self::Local(error)
    }
}

async fn answer(response: reqwest::Response) -> Result<(u16, Value), ServiceError> {
    let status = response.status().as_u16();
    let text = response.text().await?;
    let body = if text.trim().is_empty() {
        Value::Null
    } else {
        match serde_json::from_str(&text) {
            Ok(body) => body,
            Err(_) if status >= 400 => Value::String(text),
            Err(e) => return Err(ServiceError::Local(anyhow::anyhow!("the answer ({status}) is not JSON: {e}"))),
        }
    };
    Ok((status, body))
}

fn registration_base(target: &Target) -> String {
    format!("{}/{}/registrations/{}", target.url.trim_end_matches('/'), target.id_scope, target.registration_id)
}

/// Registers (`PUT .../register`, then polls the operation to its end) with `body`, sending `authorization` when
/// given (a SAS token; none for X.509, whose certificate is the client's TLS identity). Returns the final
/// operation (`RegistrationOperationStatus`), whatever its status.
pub async fn register(
    client: &reqwest::Client,
    target: &Target,
    body: &Value,
    authorization: Option<&str>,
) -> Result<Value, ServiceError> {
    let base = registration_base(target);
    let with_auth = |request: reqwest::RequestBuilder| match authorization {
        Some(token) => request.header("Authorization", token),
        None => request,
    };
    let register = format!("{base}/register?api-version={}", target.api_version);
    let (status, accepted) = answer(with_auth(client.put(&register)).json(body).send().await?).await?;
    if status != 202 && status != 200 {
        return Err(ServiceError::Answered { status, body: accepted.to_string() });
    }
    let operation = accepted["operationId"].as_str().context("the register answer has no operationId")?.to_owned();
    let poll = format!("{base}/operations/{operation}?api-version={}", target.api_version);
    let deadline = Instant::now() + target.deadline;
    loop {
        let response = with_auth(client.get(&poll)).send().await?;
        let wait = response
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
            .unwrap_or(1)
            .clamp(1, 300);
        let (status, body) = answer(response).await?;
        match status {
            200 => return Ok(body),
            202 => {}
            other => return Err(ServiceError::Answered { status: other, body: body.to_string() }),
        }
        if Instant::now() > deadline {
            return Err(ServiceError::Unreachable(format!(
                "the registration did not finish within {:?}",
                target.deadline
            )));
        }
        tokio::time::sleep(Duration::from_secs(wait)).await;
    }
}

/// An `assigned` registration: where the device goes and the certificate chain it was issued.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assigned {
    /// The hub's host name.
    pub hub: String,
    /// The device id there.
    pub device_id: String,
    /// `issuedCertificateChain`, DER, leaf first (empty without a CSR).
    pub chain: Vec<Vec<u8>>,
}

/// The assignment of a final operation, or why there is none.
pub fn assigned(operation: &Value) -> Result<Assigned, ServiceError> {
    let state = &operation["registrationState"];
    let status = operation["status"].as_str().unwrap_or_default();
    if status != "assigned" {
        let detail = format!(
            "{} {}",
            state["errorCode"].as_u64().map(|c| c.to_string()).unwrap_or_default(),
            state["errorMessage"].as_str().unwrap_or_default()
        );
        return Err(ServiceError::NotAssigned { status: status.to_owned(), detail: detail.trim().to_owned() });
    }
    let text = |field: &str| {
        state[field].as_str().map(str::to_owned).with_context(|| format!("the assigned registration has no {field}"))
    };
    let chain = match state["issuedCertificateChain"].as_array() {
        Some(items) => items
            .iter()
            .map(|c| STANDARD.decode(c.as_str().unwrap_or_default()))
            .collect::<Result<Vec<_>, _>>()
            .context("issuedCertificateChain is not base64")?,
        None => Vec::new(),
    };
    Ok(Assigned { hub: text("assignedHub")?, device_id: text("deviceId")?, chain })
}

/// Runs the whole TPM registration and returns the final operation (`RegistrationOperationStatus`).
pub async fn provision(
    client: &reqwest::Client,
    tpm: &mut dyn DeviceTpm,
    target: &Target,
    request: &Request,
) -> Result<Value, ServiceError> {
    let (ek, srk) = tpm.keys()?;
    let mut tpm_body = json!({"endorsementKey": STANDARD.encode(&ek), "storageRootKey": STANDARD.encode(&srk)});
    if request.send_ek_certificate {
        let certificate = tpm.ek_certificate()?.context("the TPM holds no EK certificate (NV index 0x1c00002)")?;
        let der = leading_der(&certificate).context("the EK certificate in NV is not DER")?;
        tpm_body["endorsementKeyCertificate"] = json!(STANDARD.encode(der));
    }
    let mut body = json!({"registrationId": target.registration_id, "tpm": tpm_body});
    if let Some(csr) = &request.csr {
        body["csr"] = json!(STANDARD.encode(csr));
    }
    if let Some(payload) = &request.payload {
        body["payload"] = payload.clone();
    }
    let register_url = format!("{}/register?api-version={}", registration_base(target), target.api_version);

    // First leg: no token; the answer is the challenge.
    let (status, challenge) = answer(client.put(&register_url).json(&body).send().await?).await?;
    let Some(blob) = challenge.get("authenticationKey").and_then(Value::as_str).filter(|_| status == 401) else {
        return Err(ServiceError::Answered { status, body: challenge.to_string() });
    };
    tpm.import_key(&STANDARD.decode(blob).context("authenticationKey is not base64")?)?;

    // Second leg: the same register, with the token the TPM signed.
    let token = sas_token(tpm, target)?;
    let done = register(client, target, &body, Some(&token)).await?;

    // The hub key replaces the DPS key in the TPM (§3.1 step 4).
    if done["status"] == "assigned"
        && let Some(blob) = done["registrationState"]["tpm"]["authenticationKey"].as_str()
    {
        tpm.import_key(&STANDARD.decode(blob).context("registrationState.tpm.authenticationKey is not base64")?)?;
    }
    Ok(done)
}

/// The SAS token of §2.1 for a symmetric key (the device's own, or derived from its group's), valid for an hour.
pub fn symmetric_key_token(key: &[u8], target: &Target) -> anyhow::Result<String> {
    let se = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs() + 3600;
    Ok(zerotouch_attest::sas::sign(&resource(target), se, key, Some("registration")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn certificates_are_cut_from_padded_nv_contents() {
        let mut nv = vec![0x30, 0x03, 1, 2, 3];
        nv.extend_from_slice(&[0xff; 10]);
        assert_eq!(leading_der(&nv), Some(&[0x30, 0x03, 1, 2, 3][..]));
        assert_eq!(leading_der(&[0x30, 0x82, 0x01]), None);
        assert_eq!(leading_der(&[0x04, 0x01, 0x00]), None);
    }

    #[test]
    fn the_resource_is_encoded_as_the_python_sdk_does() {
        let target = Target {
            url: String::new(),
            id_scope: "0ne00000001".into(),
            registration_id: "kat-device".into(),
            api_version: API_VERSION.into(),
            deadline: Duration::from_secs(1),
        };
        // The message of the known-answer vector in docs/protocol/tpm-activation.md.
        assert_eq!(resource(&target), "0ne00000001%2Fregistrations%2Fkat-device");
    }
}
