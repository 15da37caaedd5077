//! The settings an individual enrollment and an enrollment group share, and the check of their allocation.
//!
//! Its own module because both document kinds carry these settings unchanged (flattened into each), so they are
//! defined, defaulted and checked once.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::AttestationMechanism;
use crate::field::FieldError;
use crate::id::HubHostName;

/// Whether devices of the enrollment may provision.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub enum ProvisioningStatus {
    /// Devices may provision (the default).
    #[default]
    Enabled,
    /// Devices are refused with status `disabled`.
    Disabled,
}

impl ProvisioningStatus {
    /// The name used on the wire and in the database.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Enabled => "enabled",
            Self::Disabled => "disabled",
        }
    }
}

/// How a hub is chosen for a device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub enum AllocationPolicy {
    /// Weighted, stable hashing over the linked hubs (the default).
    #[default]
    Hashed,
    /// Accepted for compatibility; allocates as `hashed`.
    GeoLatency,
    /// The single hub named by the enrollment.
    Static,
    /// A webhook decides.
    Custom,
}

/// What happens when a provisioned device registers again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ReprovisionPolicy {
    /// Whether the device may move to another hub.
    #[serde(default = "yes")]
    pub update_hub_assignment: bool,
    /// Whether its data moves with it.
    #[serde(default = "yes")]
    pub migrate_device_data: bool,
}

fn yes() -> bool {
    true
}

impl Default for ReprovisionPolicy {
    fn default() -> Self {
        Self { update_hub_assignment: true, migrate_device_data: true }
    }
}

/// Device capabilities.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DeviceCapabilities {
    /// Whether the device is an IoT Edge device.
    #[serde(default)]
    pub iot_edge: bool,
}

/// The custom allocation webhook (`docs/protocol/device-api.md` §7).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CustomAllocationDefinition {
    /// The URL the service POSTs the allocation request to.
    pub webhook_url: String,
    /// The api-version of the request.
    pub api_version: String,
}

/// The settings an individual enrollment and an enrollment group share.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EnrollmentSettings {
    /// How devices attest.
    pub attestation: AttestationMechanism,
    /// Device capabilities.
    #[serde(default)]
    pub capabilities: Option<DeviceCapabilities>,
    /// Deprecated single hub name; kept for compatibility.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iot_hub_host_name: Option<String>,
    /// The initial twin.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initial_twin: Option<Value>,
    /// Read-only; the service's etag.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub etag: Option<String>,
    /// Enabled or disabled.
    #[serde(default)]
    pub provisioning_status: Option<ProvisioningStatus>,
    /// The reprovisioning policy.
    #[serde(default)]
    pub reprovision_policy: Option<ReprovisionPolicy>,
    /// Read-only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_date_time_utc: Option<String>,
    /// Read-only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_updated_date_time_utc: Option<String>,
    /// The allocation policy.
    #[serde(default)]
    pub allocation_policy: Option<AllocationPolicy>,
    /// The hubs allocation chooses from; all hubs that apply the allocation policy when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iot_hubs: Option<Vec<String>>,
    /// The webhook of the `custom` policy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub custom_allocation_definition: Option<CustomAllocationDefinition>,
    /// Azure's credential policy name (2025-07-01-preview); kept as given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential_policy_name: Option<String>,
    /// Our extension: how operational certificates are issued to the enrollment's devices.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificate_policy: Option<CertificatePolicy>,
}

/// Our extension of enrollments and groups: the operational certificates their devices get from a CSR.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CertificatePolicy {
    /// Days an issued certificate is valid (1-397; 30 when absent).
    #[serde(default = "CertificatePolicy::default_validity_days")]
    pub validity_days: u32,
    /// Seconds an issued certificate is valid (60 s to 397 days); when set, it replaces `validity_days`. For devices
    /// that renew every few minutes (issue #20).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub validity_seconds: Option<u32>,
    /// Whether RSA keys (2048 bits or more) are accepted besides ECDSA P-256 and P-384.
    #[serde(default)]
    pub allow_rsa: bool,
}

impl CertificatePolicy {
    /// Validity when the enrollment sets none.
    pub const DEFAULT_VALIDITY_DAYS: u32 = 30;
    /// Longest validity (the CA/Browser Forum's limit, which device fleets tend to follow too).
    pub const MAX_VALIDITY_DAYS: u32 = 397;

    /// Shortest `validity_seconds`.
    pub const MIN_VALIDITY_SECONDS: u32 = 60;
    /// Longest `validity_seconds` (`MAX_VALIDITY_DAYS`).
    pub const MAX_VALIDITY_SECONDS: u32 = Self::MAX_VALIDITY_DAYS * 86_400;

    fn default_validity_days() -> u32 {
        Self::DEFAULT_VALIDITY_DAYS
    }

    /// The lifetime of an issued certificate in seconds: `validity_seconds`, else `validity_days` in seconds.
    pub fn lifetime_seconds(&self) -> u32 {
        self.validity_seconds.unwrap_or_else(|| self.validity_days.saturating_mul(86_400))
    }
}

impl Default for CertificatePolicy {
    fn default() -> Self {
        Self { validity_days: Self::DEFAULT_VALIDITY_DAYS, validity_seconds: None, allow_rsa: false }
    }
}
/// Checks allocation settings and returns the canonical names of the hubs the document names.
pub(super) fn check_allocation(settings: &EnrollmentSettings) -> Result<Vec<String>, FieldError> {
    let mut named = Vec::new();
    if let Some(hubs) = &settings.iot_hubs {
        for (i, hub) in hubs.iter().enumerate() {
            let name = HubHostName::try_from(hub.as_str())
                .map_err(|e| FieldError::new(format!("iotHubs[{i}]"), e.to_string()))?;
            if named.contains(&name.as_str().to_owned()) {
                return Err(FieldError::new(format!("iotHubs[{i}]"), format!("{hub:?} is listed twice")));
            }
            named.push(name.as_str().to_owned());
        }
    }
    if let Some(hub) = &settings.iot_hub_host_name {
        let name = HubHostName::try_from(hub.as_str()).map_err(|e| FieldError::new("iotHubHostName", e.to_string()))?;
        if !named.contains(&name.as_str().to_owned()) {
            named.push(name.as_str().to_owned());
        }
    }
    match settings.allocation_policy.unwrap_or_default() {
        AllocationPolicy::Static if named.len() != 1 => {
            return Err(FieldError::new(
                "iotHubs",
                format!("the static allocation policy needs exactly one hub (got {})", named.len()),
            ));
        }
        AllocationPolicy::Custom => {
            let definition = settings.custom_allocation_definition.as_ref().ok_or_else(|| {
                FieldError::new("customAllocationDefinition", "required when allocationPolicy is \"custom\"")
            })?;
            let url = definition.webhook_url.as_str();
            let rest = url
                .strip_prefix("https://")
                .or_else(|| url.strip_prefix("http://"))
                .ok_or_else(|| FieldError::new("customAllocationDefinition.webhookUrl", "must be an http(s) URL"))?;
            if rest.is_empty() || rest.starts_with('/') || url.chars().any(|c| c.is_whitespace() || c.is_control()) {
                return Err(FieldError::new(
                    "customAllocationDefinition.webhookUrl",
                    "must be an http(s) URL with a host",
                ));
            }
            if definition.api_version.trim().is_empty() {
                return Err(FieldError::new("customAllocationDefinition.apiVersion", "must not be empty"));
            }
        }
        _ => {}
    }
    Ok(named)
}
