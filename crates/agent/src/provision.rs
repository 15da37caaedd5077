//! TPM provisioning over HTTPS (`docs/protocol/device-api.md` §3.1): the first leg without a token answers 401 with an
//! activation blob; the TPM imports its key and signs the SAS token of the second leg; the operation is polled to
//! its end; an `assigned` answer's hub-key blob is imported the same way.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
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

async fn answer(response: reqwest::Response) -> anyhow::Result<(u16, Value)> {
    let status = response.status().as_u16();
    let text = response.text().await?;
    let body = if text.trim().is_empty() { Value::Null } else { serde_json::from_str(&text)? };
    Ok((status, body))
}

/// Runs the whole TPM registration and returns the final operation (`RegistrationOperationStatus`).
pub async fn provision(
    client: &reqwest::Client,
    tpm: &mut dyn DeviceTpm,
    target: &Target,
    request: &Request,
) -> anyhow::Result<Value> {
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
    let base =
        format!("{}/{}/registrations/{}", target.url.trim_end_matches('/'), target.id_scope, target.registration_id);
    let register = format!("{base}/register?api-version={}", target.api_version);

    // First leg: no token; the answer is the challenge.
    let (status, challenge) = answer(client.put(&register).json(&body).send().await?).await?;
    let Some(blob) = challenge.get("authenticationKey").and_then(Value::as_str).filter(|_| status == 401) else {
        bail!("the first leg answered {status} without a TPM challenge: {challenge}");
    };
    tpm.import_key(&STANDARD.decode(blob).context("authenticationKey is not base64")?)?;

    // Second leg: the same register, with the token the TPM signed.
    let token = sas_token(tpm, target)?;
    let (status, accepted) =
        answer(client.put(&register).header("Authorization", &token).json(&body).send().await?).await?;
    if status != 202 && status != 200 {
        bail!("the register answered {status}: {accepted}");
    }
    let operation = accepted["operationId"].as_str().context("no operationId")?.to_owned();
    let poll = format!("{base}/operations/{operation}?api-version={}", target.api_version);
    let deadline = Instant::now() + target.deadline;
    let done = loop {
        let response = client.get(&poll).header("Authorization", &token).send().await?;
        let wait = response
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
            .unwrap_or(1)
            .clamp(1, 300);
        let (status, body) = answer(response).await?;
        match status {
            200 => break body,
            202 => {}
            other => bail!("the operation poll answered {other}: {body}"),
        }
        if Instant::now() > deadline {
            bail!("the registration did not finish within {:?}", target.deadline);
        }
        tokio::time::sleep(Duration::from_secs(wait)).await;
    };

    // The hub key replaces the DPS key in the TPM (§3.1 step 4).
    if done["status"] == "assigned"
        && let Some(blob) = done["registrationState"]["tpm"]["authenticationKey"].as_str()
    {
        tpm.import_key(&STANDARD.decode(blob).context("registrationState.tpm.authenticationKey is not base64")?)?;
    }
    Ok(done)
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
