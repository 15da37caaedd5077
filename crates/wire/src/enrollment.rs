//! Individual enrollments and enrollment groups in the DPS service-API shape (`azure-dps-wire.md` §6).
//!
//! A document arrives as [`IndividualEnrollment`] / [`EnrollmentGroup`] (unknown fields refused, so a typo is an
//! error rather than a silently ignored setting), is checked and completed by `normalize`, and is stored without
//! its read-only fields and without its symmetric keys, which live apart (see [`SymmetricKeyAttestation`]).

use serde::{Deserialize, Serialize};
use serde_json::Value;

pub use crate::field::FieldError;
use crate::field::decode;
use crate::id::{EnrollmentGroupId, HubHostName, IdError, RegistrationId};
use crate::registration::DeviceRegistrationState;
use crate::secret::SymmetricKey;

/// How a device proves its identity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum AttestationType {
    /// No attestation; refused, since it cannot authenticate a device.
    None,
    /// TPM endorsement key.
    Tpm,
    /// X.509 certificate.
    X509,
    /// Symmetric key (SAS token).
    SymmetricKey,
}

impl AttestationType {
    /// The name used on the wire and in the database.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Tpm => "tpm",
            Self::X509 => "x509",
            Self::SymmetricKey => "symmetricKey",
        }
    }
}

/// The attestation of an enrollment (`AttestationMechanism`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AttestationMechanism {
    /// Which attestation applies.
    #[serde(rename = "type")]
    pub kind: AttestationType,
    /// TPM endorsement and storage root keys.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tpm: Option<TpmAttestation>,
    /// X.509 certificates or CA references.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub x509: Option<X509Attestation>,
    /// Symmetric keys; only ever serialized by the `attestationmechanism` call.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub symmetric_key: Option<SymmetricKeyAttestation>,
}

/// TPM attestation: base64 of the marshaled `TPM2B_PUBLIC` of the EK (and SRK) of an individual enrollment; or,
/// for an enrollment group (our extension), the TPM manufacturer CAs its devices' EK certificates chain to.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TpmAttestation {
    /// The endorsement key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endorsement_key: Option<String>,
    /// The storage root key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_root_key: Option<String>,
    /// Enrollment groups only (our extension): the TPM manufacturer CA certificates (PEM or base64 DER, roots or
    /// intermediates) that a device's EK certificate must chain to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub manufacturer_certificates: Option<Vec<String>>,
}

/// X.509 attestation: device certificates (individual) or signing certificates / CA references (groups).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct X509Attestation {
    /// Device certificates of an individual enrollment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_certificates: Option<X509Certificates>,
    /// CA certificates of an enrollment group.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signing_certificates: Option<X509Certificates>,
    /// Names of uploaded certificate authorities (groups).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_references: Option<X509CaReferences>,
}

/// A primary and optional secondary certificate.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct X509Certificates {
    /// The primary certificate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub primary: Option<X509CertificateWithInfo>,
    /// The secondary certificate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secondary: Option<X509CertificateWithInfo>,
}

/// A certificate (PEM or base64 DER) and the service-computed `info`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct X509CertificateWithInfo {
    /// The certificate text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificate: Option<String>,
    /// Read-only details filled by the service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub info: Option<Value>,
}

/// Names of uploaded certificate authorities.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct X509CaReferences {
    /// The primary CA.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub primary: Option<String>,
    /// The secondary CA.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secondary: Option<String>,
}

/// Symmetric keys: base64 of 16-64 bytes each; generated when absent.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SymmetricKeyAttestation {
    /// The primary key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub primary_key: Option<SymmetricKey>,
    /// The secondary key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secondary_key: Option<SymmetricKey>,
}

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

/// The custom allocation webhook (`azure-dps-wire.md` §7).
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
    /// Whether RSA keys (2048 bits or more) are accepted besides ECDSA P-256 and P-384.
    #[serde(default)]
    pub allow_rsa: bool,
}

impl CertificatePolicy {
    /// Validity when the enrollment sets none.
    pub const DEFAULT_VALIDITY_DAYS: u32 = 30;
    /// Longest validity (the CA/Browser Forum's limit, which device fleets tend to follow too).
    pub const MAX_VALIDITY_DAYS: u32 = 397;

    fn default_validity_days() -> u32 {
        Self::DEFAULT_VALIDITY_DAYS
    }
}

impl Default for CertificatePolicy {
    fn default() -> Self {
        Self { validity_days: Self::DEFAULT_VALIDITY_DAYS, allow_rsa: false }
    }
}

/// An individual enrollment, as the service shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IndividualEnrollment {
    /// The device's registration id.
    pub registration_id: String,
    /// The device id on the hub; the registration id when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_id: Option<String>,
    /// Read-only: the device's registration state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub registration_state: Option<DeviceRegistrationState>,
    /// Free-form device information.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub optional_device_information: Option<Value>,
    /// Settings shared with groups.
    #[serde(flatten)]
    pub settings: EnrollmentSettings,
}

/// An enrollment group, as the service shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EnrollmentGroup {
    /// The group's id.
    pub enrollment_group_id: String,
    /// Settings shared with individual enrollments.
    #[serde(flatten)]
    pub settings: EnrollmentSettings,
}

/// Declares the input shape of a document kind: its own fields plus every shared setting, unknown fields refused.
///
/// (serde cannot refuse unknown fields through `#[serde(flatten)]`, so the shared fields are spelled out here.)
macro_rules! document_input {
    ($name:ident { $($(#[$meta:meta])* $field:ident : $ty:ty),* $(,)? }) => {
        #[derive(Deserialize)]
        #[serde(rename_all = "camelCase", deny_unknown_fields)]
        struct $name {
            $($(#[$meta])* $field: $ty,)*
            attestation: AttestationMechanism,
            #[serde(default)]
            capabilities: Option<DeviceCapabilities>,
            #[serde(default)]
            iot_hub_host_name: Option<String>,
            #[serde(default)]
            initial_twin: Option<Value>,
            #[serde(default)]
            etag: Option<String>,
            #[serde(default)]
            provisioning_status: Option<ProvisioningStatus>,
            #[serde(default)]
            reprovision_policy: Option<ReprovisionPolicy>,
            #[serde(default)]
            created_date_time_utc: Option<String>,
            #[serde(default)]
            last_updated_date_time_utc: Option<String>,
            #[serde(default)]
            allocation_policy: Option<AllocationPolicy>,
            #[serde(default)]
            iot_hubs: Option<Vec<String>>,
            #[serde(default)]
            custom_allocation_definition: Option<CustomAllocationDefinition>,
            #[serde(default)]
            credential_policy_name: Option<String>,
            #[serde(default)]
            certificate_policy: Option<CertificatePolicy>,
        }

        impl $name {
            #[allow(unused_parens)]
            fn split(self) -> (($($ty),*), EnrollmentSettings) {
                let Self {
                    $($field,)*
                    attestation,
                    capabilities,
                    iot_hub_host_name,
                    initial_twin,
                    etag,
                    provisioning_status,
                    reprovision_policy,
                    created_date_time_utc,
                    last_updated_date_time_utc,
                    allocation_policy,
                    iot_hubs,
                    custom_allocation_definition,
                    credential_policy_name,
                    certificate_policy,
                } = self;
                let settings = EnrollmentSettings {
                    attestation,
                    capabilities,
                    iot_hub_host_name,
                    initial_twin,
                    etag,
                    provisioning_status,
                    reprovision_policy,
                    created_date_time_utc,
                    last_updated_date_time_utc,
                    allocation_policy,
                    iot_hubs,
                    custom_allocation_definition,
                    credential_policy_name,
                    certificate_policy,
                };
                (($($field),*), settings)
            }
        }
    };
}

document_input!(IndividualEnrollmentInput {
    registration_id: String,
    #[serde(default)]
    device_id: Option<String>,
    // Read-only: accepted (a GET body can be sent back) and ignored.
    #[serde(default)]
    registration_state: Option<Value>,
    #[serde(default)]
    optional_device_information: Option<Value>,
});

document_input!(EnrollmentGroupInput { enrollment_group_id: String });

/// Which of the two enrollment kinds a document is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EnrollmentKind {
    /// An individual enrollment (`/enrollments`).
    Individual,
    /// An enrollment group (`/enrollmentGroups`).
    Group,
}

impl EnrollmentKind {
    /// The name of the id field in documents and bulk errors.
    pub fn id_field(self) -> &'static str {
        match self {
            Self::Individual => "registrationId",
            Self::Group => "enrollmentGroupId",
        }
    }

    /// The `x-ms-item-type` of query responses.
    pub fn item_type(self) -> &'static str {
        match self {
            Self::Individual => "enrollment",
            Self::Group => "enrollmentGroup",
        }
    }

    /// The noun used in messages.
    pub fn noun(self) -> &'static str {
        match self {
            Self::Individual => "enrollment",
            Self::Group => "enrollment group",
        }
    }

    /// Validates an id of this kind and returns its canonical key.
    pub fn parse_id(self, id: &str) -> Result<String, IdError> {
        match self {
            Self::Individual => RegistrationId::try_from(id).map(|id| id.key()),
            Self::Group => EnrollmentGroupId::try_from(id).map(|id| id.key()),
        }
    }
}

/// An enrollment of either kind, checked and completed, ready to store.
///
/// `document` is the service-API JSON without read-only fields and without keys; the keys are held apart.
#[derive(Debug, Clone, PartialEq)]
pub struct NormalizedEnrollment {
    /// The id as the client spelled it.
    pub id: String,
    /// The canonical key.
    pub key: String,
    /// The attestation type.
    pub attestation_type: AttestationType,
    /// Enabled or disabled.
    pub provisioning_status: ProvisioningStatus,
    /// The stored document (no secrets, no read-only fields).
    pub document: Value,
    /// The primary symmetric key, for `symmetricKey` attestation.
    pub primary_key: Option<SymmetricKey>,
    /// The secondary symmetric key, for `symmetricKey` attestation.
    pub secondary_key: Option<SymmetricKey>,
    /// Hubs the document names (`iotHubs`, `iotHubHostName`), canonical, for a caller to check they exist.
    pub named_hubs: Vec<String>,
    /// Which of the two keys were generated because the document gave none.
    pub generated_keys: (bool, bool),
}

impl NormalizedEnrollment {
    /// On an update, keeps the keys the enrollment already has where the document gave none.
    ///
    /// GET never shows keys, so a document read with GET and sent back must not silently replace them (which
    /// would lock the enrollment's devices out).
    pub fn keep_existing_keys(&mut self, primary: Option<&SymmetricKey>, secondary: Option<&SymmetricKey>) {
        if self.attestation_type != AttestationType::SymmetricKey {
            return;
        }
        if let (true, Some(existing)) = (self.generated_keys.0, primary) {
            self.primary_key = Some(existing.clone());
            self.generated_keys.0 = false;
        }
        if let (true, Some(existing)) = (self.generated_keys.1, secondary) {
            self.secondary_key = Some(existing.clone());
            self.generated_keys.1 = false;
        }
    }
}

/// Parses, checks and completes a document of `kind` whose id in the URL (if any) is `path_id`.
///
/// Fills defaults (provisioning status, reprovision policy, capabilities, allocation policy), generates missing
/// symmetric keys, drops read-only fields, and refuses anything inconsistent with a [`FieldError`] naming the field.
pub fn normalize(
    kind: EnrollmentKind,
    value: Value,
    path_id: Option<&str>,
) -> Result<NormalizedEnrollment, FieldError> {
    let (id, device_id, optional_info, mut settings) = match kind {
        EnrollmentKind::Individual => {
            let ((id, device_id, _registration_state, info), settings) =
                decode::<IndividualEnrollmentInput>(value)?.split();
            (id, device_id, info, settings)
        }
        EnrollmentKind::Group => {
            let (id, settings) = decode::<EnrollmentGroupInput>(value)?.split();
            (id, None, None, settings)
        }
    };
    let key = kind.parse_id(&id).map_err(|e| FieldError::new(kind.id_field(), e.to_string()))?;
    if let Some(path_id) = path_id
        && !path_id.eq_ignore_ascii_case(&id)
    {
        return Err(FieldError::new(kind.id_field(), format!("{id:?} differs from the id in the URL ({path_id:?})")));
    }
    if let Some(device_id) = &device_id {
        RegistrationId::try_from(device_id.as_str()).map_err(|e| FieldError::new("deviceId", e.to_string()))?;
    }

    let (primary_key, secondary_key, generated_keys) = check_attestation(kind, &mut settings.attestation)?;
    let named_hubs = check_allocation(&settings)?;
    if let Some(policy) = &settings.certificate_policy
        && !(1..=CertificatePolicy::MAX_VALIDITY_DAYS).contains(&policy.validity_days)
    {
        return Err(FieldError::new(
            "certificatePolicy.validityDays",
            format!("{} is outside 1-{}", policy.validity_days, CertificatePolicy::MAX_VALIDITY_DAYS),
        ));
    }

    settings.etag = None;
    settings.created_date_time_utc = None;
    settings.last_updated_date_time_utc = None;
    settings.capabilities.get_or_insert_with(DeviceCapabilities::default);
    let provisioning_status = *settings.provisioning_status.get_or_insert_with(ProvisioningStatus::default);
    settings.reprovision_policy.get_or_insert_with(ReprovisionPolicy::default);
    settings.allocation_policy.get_or_insert_with(AllocationPolicy::default);
    if let Some(twin) = &settings.initial_twin
        && !twin.is_object()
    {
        return Err(FieldError::new("initialTwin", "must be an object"));
    }
    let attestation_type = settings.attestation.kind;

    let document = match kind {
        EnrollmentKind::Individual => serde_json::to_value(IndividualEnrollment {
            registration_id: id.clone(),
            device_id,
            registration_state: None,
            optional_device_information: optional_info,
            settings,
        }),
        EnrollmentKind::Group => serde_json::to_value(EnrollmentGroup { enrollment_group_id: id.clone(), settings }),
    }
    .map_err(|e| FieldError::new("(document)", e.to_string()))?;

    Ok(NormalizedEnrollment {
        id,
        key,
        attestation_type,
        provisioning_status,
        document,
        primary_key,
        secondary_key,
        named_hubs,
        generated_keys,
    })
}

/// The two keys of an attestation, and which of them were generated.
type Keys = (Option<SymmetricKey>, Option<SymmetricKey>, (bool, bool));

/// Checks the attestation against its type; takes the symmetric keys out of the document (generating missing ones).
fn check_attestation(kind: EnrollmentKind, attestation: &mut AttestationMechanism) -> Result<Keys, FieldError> {
    let only = |present: bool, field: &str| -> Result<(), FieldError> {
        if present {
            Err(FieldError::new(
                format!("attestation.{field}"),
                format!("not allowed when attestation.type is {:?}", attestation.kind.as_str()),
            ))
        } else {
            Ok(())
        }
    };
    match attestation.kind {
        AttestationType::None => Err(FieldError::new(
            "attestation.type",
            "\"none\" cannot authenticate a device; use symmetricKey, x509 or tpm",
        )),
        AttestationType::SymmetricKey => {
            only(attestation.tpm.is_some(), "tpm")?;
            only(attestation.x509.is_some(), "x509")?;
            let keys = attestation.symmetric_key.take().unwrap_or_default();
            let generated = (keys.primary_key.is_none(), keys.secondary_key.is_none());
            let primary = keys.primary_key.unwrap_or_else(SymmetricKey::generate);
            let secondary = keys.secondary_key.unwrap_or_else(SymmetricKey::generate);
            Ok((Some(primary), Some(secondary), generated))
        }
        AttestationType::Tpm => {
            only(attestation.x509.is_some(), "x509")?;
            only(attestation.symmetric_key.is_some(), "symmetricKey")?;
            let tpm = attestation
                .tpm
                .as_ref()
                .ok_or_else(|| FieldError::new("attestation.tpm", "required when attestation.type is \"tpm\""))?;
            check_tpm(kind, tpm)?;
            Ok((None, None, (false, false)))
        }
        AttestationType::X509 => {
            only(attestation.tpm.is_some(), "tpm")?;
            only(attestation.symmetric_key.is_some(), "symmetricKey")?;
            let x509 = attestation
                .x509
                .as_mut()
                .ok_or_else(|| FieldError::new("attestation.x509", "required when attestation.type is \"x509\""))?;
            check_x509(kind, x509)?;
            Ok((None, None, (false, false)))
        }
    }
}

fn check_base64(value: Option<&str>, field: &str, required: bool) -> Result<(), FieldError> {
    use base64::Engine;
    match value {
        None if required => Err(FieldError::new(field, "required")),
        None => Ok(()),
        Some(text) => match base64::engine::general_purpose::STANDARD.decode(text) {
            Ok(bytes) if !bytes.is_empty() => Ok(()),
            Ok(_) => Err(FieldError::new(field, "must not be empty")),
            Err(_) => Err(FieldError::new(field, "is not valid base64")),
        },
    }
}

/// An individual TPM enrollment names its EK (and may name its SRK), each a `TPM2B_PUBLIC` the activation can use;
/// a TPM group names manufacturer CAs instead (its devices present EK certificates).
fn check_tpm(kind: EnrollmentKind, tpm: &TpmAttestation) -> Result<(), FieldError> {
    let key = |text: Option<&str>, field: &str, role: &str, required: bool| -> Result<(), FieldError> {
        check_base64(text, field, required)?;
        let Some(text) = text else { return Ok(()) };
        let public = zerotouch_tpm::Public::from_base64(text).map_err(|e| FieldError::new(field, e.to_string()))?;
        public.check_activation_key(role).map_err(|e| FieldError::new(field, e.to_string()))
    };
    match kind {
        EnrollmentKind::Individual => {
            if tpm.manufacturer_certificates.is_some() {
                return Err(FieldError::new(
                    "attestation.tpm.manufacturerCertificates",
                    "only enrollment groups take manufacturer CAs; an individual enrollment names its endorsementKey",
                ));
            }
            key(tpm.endorsement_key.as_deref(), "attestation.tpm.endorsementKey", "endorsement key", true)?;
            key(tpm.storage_root_key.as_deref(), "attestation.tpm.storageRootKey", "storage root key", false)
        }
        EnrollmentKind::Group => {
            for (field, present) in
                [("endorsementKey", tpm.endorsement_key.is_some()), ("storageRootKey", tpm.storage_root_key.is_some())]
            {
                if present {
                    return Err(FieldError::new(
                        format!("attestation.tpm.{field}"),
                        "an enrollment group takes manufacturerCertificates; its devices send their own keys",
                    ));
                }
            }
            let field = "attestation.tpm.manufacturerCertificates";
            let certificates = tpm.manufacturer_certificates.as_deref().unwrap_or_default();
            if certificates.is_empty() {
                return Err(FieldError::new(field, "required: at least one TPM manufacturer CA certificate"));
            }
            for (i, text) in certificates.iter().enumerate() {
                if !is_certificate_text(text) {
                    return Err(FieldError::new(format!("{field}[{i}]"), "is not a PEM or base64 DER certificate"));
                }
            }
            Ok(())
        }
    }
}

fn check_x509(kind: EnrollmentKind, x509: &mut X509Attestation) -> Result<(), FieldError> {
    let (field, certificates) = match kind {
        EnrollmentKind::Individual => {
            if x509.signing_certificates.is_some() || x509.ca_references.is_some() {
                return Err(FieldError::new(
                    "attestation.x509",
                    "an individual enrollment takes clientCertificates, not signingCertificates or caReferences",
                ));
            }
            ("attestation.x509.clientCertificates", x509.client_certificates.as_mut())
        }
        EnrollmentKind::Group => {
            if x509.client_certificates.is_some() {
                return Err(FieldError::new(
                    "attestation.x509.clientCertificates",
                    "an enrollment group takes signingCertificates or caReferences",
                ));
            }
            if let Some(refs) = &x509.ca_references {
                if x509.signing_certificates.is_some() {
                    return Err(FieldError::new(
                        "attestation.x509",
                        "give signingCertificates or caReferences, not both",
                    ));
                }
                let primary = refs
                    .primary
                    .as_deref()
                    .ok_or_else(|| FieldError::new("attestation.x509.caReferences.primary", "required"))?;
                if primary.trim().is_empty() {
                    return Err(FieldError::new("attestation.x509.caReferences.primary", "must not be empty"));
                }
                return Ok(());
            }
            ("attestation.x509.signingCertificates", x509.signing_certificates.as_mut())
        }
    };
    let certificates = certificates.ok_or_else(|| FieldError::new(field, "required"))?;
    let primary =
        certificates.primary.as_mut().ok_or_else(|| FieldError::new(format!("{field}.primary"), "required"))?;
    check_certificate_text(primary, &format!("{field}.primary"))?;
    if let Some(secondary) = certificates.secondary.as_mut() {
        check_certificate_text(secondary, &format!("{field}.secondary"))?;
    }
    Ok(())
}

/// Checks that the text is a PEM certificate or base64 DER; `info` is read-only and dropped.
fn check_certificate_text(cert: &mut X509CertificateWithInfo, field: &str) -> Result<(), FieldError> {
    cert.info = None;
    let text =
        cert.certificate.as_deref().ok_or_else(|| FieldError::new(format!("{field}.certificate"), "required"))?;
    if is_certificate_text(text) {
        Ok(())
    } else {
        Err(FieldError::new(format!("{field}.certificate"), "is not a PEM or base64 DER certificate"))
    }
}

/// Whether `text` is a PEM certificate or the base64 of a DER one (its outer SEQUENCE; the service parses it in
/// full where it is used).
fn is_certificate_text(text: &str) -> bool {
    use base64::Engine;
    let text = text.trim();
    let body: String = match text.strip_prefix("-----BEGIN CERTIFICATE-----") {
        Some(rest) => rest
            .split("-----END CERTIFICATE-----")
            .next()
            .unwrap_or_default()
            .chars()
            .filter(|c| !c.is_whitespace())
            .collect(),
        None => text.to_owned(),
    };
    // A DER certificate is a SEQUENCE.
    base64::engine::general_purpose::STANDARD.decode(body).is_ok_and(|der| der.first() == Some(&0x30))
}

/// Checks allocation settings and returns the canonical names of the hubs the document names.
fn check_allocation(settings: &EnrollmentSettings) -> Result<Vec<String>, FieldError> {
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

/// Rebuilds the document a client sees: the stored document plus the read-only fields; keys only if given.
pub fn render(
    document: &Value,
    etag: &str,
    created: &str,
    updated: &str,
    keys: Option<(&SymmetricKey, &SymmetricKey)>,
) -> Value {
    let mut out = document.clone();
    if let Some(map) = out.as_object_mut() {
        map.insert("etag".into(), Value::String(etag.to_owned()));
        map.insert("createdDateTimeUtc".into(), Value::String(created.to_owned()));
        map.insert("lastUpdatedDateTimeUtc".into(), Value::String(updated.to_owned()));
        if let Some((primary, secondary)) = keys
            && let Some(attestation) = map.get_mut("attestation").and_then(Value::as_object_mut)
        {
            attestation.insert(
                "symmetricKey".into(),
                serde_json::json!({
                    "primaryKey": primary.to_base64().as_str(),
                    "secondaryKey": secondary.to_base64().as_str(),
                }),
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn individual(extra: Value) -> Value {
        let mut doc = json!({"registrationId": "Dev-1", "attestation": {"type": "symmetricKey"}});
        if let (Some(map), Some(extra)) = (doc.as_object_mut(), extra.as_object()) {
            for (k, v) in extra {
                map.insert(k.clone(), v.clone());
            }
        }
        doc
    }

    #[test]
    fn defaults_are_filled_and_keys_generated_and_kept_out_of_the_document() {
        let n = normalize(EnrollmentKind::Individual, individual(json!({})), Some("dev-1")).unwrap();
        assert_eq!(n.key, "dev-1");
        assert_eq!(n.id, "Dev-1");
        assert_eq!(n.provisioning_status, ProvisioningStatus::Enabled);
        assert_eq!(n.primary_key.as_ref().map(|k| k.expose_bytes().len()), Some(64));
        assert_ne!(n.primary_key, n.secondary_key);
        assert_eq!(n.document["reprovisionPolicy"], json!({"updateHubAssignment": true, "migrateDeviceData": true}));
        assert_eq!(n.document["allocationPolicy"], "hashed");
        assert_eq!(n.document["capabilities"], json!({"iotEdge": false}));
        assert_eq!(n.document["attestation"], json!({"type": "symmetricKey"}));
    }

    #[test]
    fn given_keys_are_kept_and_bad_ones_name_the_field() {
        let key = "AAAAAAAAAAAAAAAAAAAAAA==";
        let doc = individual(json!({"attestation": {"type": "symmetricKey", "symmetricKey": {"primaryKey": key}}}));
        let n = normalize(EnrollmentKind::Individual, doc, None).unwrap();
        assert_eq!(n.primary_key.unwrap().to_base64().as_str(), key);

        let doc = individual(json!({"attestation": {"type": "symmetricKey", "symmetricKey": {"primaryKey": "abc"}}}));
        let err = normalize(EnrollmentKind::Individual, doc, None).unwrap_err();
        assert_eq!(err.field, "attestation.symmetricKey.primaryKey");
    }

    #[test]
    fn an_update_without_keys_keeps_the_existing_ones() {
        let existing = SymmetricKey::generate();
        let mut n = normalize(EnrollmentKind::Individual, individual(json!({})), None).unwrap();
        n.keep_existing_keys(Some(&existing), Some(&existing));
        assert_eq!(n.primary_key.as_ref(), Some(&existing));
        assert_eq!(n.secondary_key.as_ref(), Some(&existing));
        let given = "AAAAAAAAAAAAAAAAAAAAAA==";
        let doc = individual(json!({"attestation": {"type": "symmetricKey", "symmetricKey": {"primaryKey": given}}}));
        let mut n = normalize(EnrollmentKind::Individual, doc, None).unwrap();
        n.keep_existing_keys(Some(&existing), Some(&existing));
        assert_eq!(n.primary_key.unwrap().to_base64().as_str(), given, "a given key wins");
        assert_eq!(n.secondary_key.as_ref(), Some(&existing));
    }

    #[test]
    fn wrong_types_and_unknown_fields_name_the_field() {
        let err =
            normalize(EnrollmentKind::Individual, individual(json!({"provisioningStatus": 3})), None).unwrap_err();
        assert_eq!(err.field, "provisioningStatus");
        let err =
            normalize(EnrollmentKind::Individual, individual(json!({"provisioningStatu": "x"})), None).unwrap_err();
        assert!(err.problem.contains("provisioningStatu"), "{err}");
        let err = normalize(EnrollmentKind::Group, json!({"enrollmentGroupId": "g"}), None).unwrap_err();
        assert!(err.problem.contains("attestation"), "{err}");
    }

    #[test]
    fn ids_are_checked_and_must_match_the_url() {
        let err =
            normalize(EnrollmentKind::Individual, individual(json!({"registrationId": "a/b"})), None).unwrap_err();
        assert_eq!(err.field, "registrationId");
        let err = normalize(EnrollmentKind::Individual, individual(json!({})), Some("other")).unwrap_err();
        assert_eq!(err.field, "registrationId");
    }

    /// The EK of the swtpm in `tpm-activation-vector.md` (base64 TPM2B_PUBLIC).
    const EK: &str = "AToAAQALAAMAsgAgg3GXZ0SEs/gakMyNRqXXJP1S124GUgtk8qHaGzMUaaoABgCAAEMAEAgAAAAAAAEAvQUIS0ZIopBRgZp/xQbv3g1IEjMcvcJKcl6A02DRuO9N2xTwADMmdHSBtiZYuf+gFX+j51goWbgy866DAC5JTMAITowMbFUdPByW5+eZse+40pAnurf/ORl9R2g9u3WzfvNCFMWX55Sr2of4A+QInfgB7ccbF+bXskBclQmacvH14KVqNaxzet4VM5DHVdncqbapSsSzbZvDCGeQHIaGQZB/QphQkeBoHiNUyGDwwKSO+qAqZXtcgWUTa4RZc4K0hU798OAw71jAbngEN02GY+8pr6Y6WHpWzgMXUHFJz3JI6x1Ly31Y8ZIbZByafa0YiV0voScY1JztVH64MA01fw==";

    #[test]
    fn attestation_must_match_its_type() {
        let doc = individual(json!({"attestation": {"type": "tpm"}}));
        assert_eq!(normalize(EnrollmentKind::Individual, doc, None).unwrap_err().field, "attestation.tpm");
        let doc = individual(json!({"attestation": {"type": "tpm", "tpm": {"endorsementKey": "AQID"}}}));
        let err = normalize(EnrollmentKind::Individual, doc, None).unwrap_err();
        assert_eq!(err.field, "attestation.tpm.endorsementKey");
        assert!(err.to_string().contains("TPM2B_PUBLIC"), "{err}");
        let doc = individual(json!({"attestation": {"type": "tpm", "tpm": {"endorsementKey": EK}}}));
        assert!(normalize(EnrollmentKind::Individual, doc, None).is_ok());
        let doc = json!({"enrollmentGroupId": "g", "attestation": {"type": "tpm", "tpm": {"endorsementKey": EK}}});
        let err = normalize(EnrollmentKind::Group, doc, None).unwrap_err();
        assert_eq!(err.field, "attestation.tpm.endorsementKey");
        let doc = json!({"enrollmentGroupId": "g", "attestation": {"type": "tpm", "tpm": {}}});
        let err = normalize(EnrollmentKind::Group, doc, None).unwrap_err();
        assert_eq!(err.field, "attestation.tpm.manufacturerCertificates");
        let doc = json!({"enrollmentGroupId": "g", "attestation": {"type": "tpm", "tpm": {"manufacturerCertificates": ["MAE="]}}});
        assert!(normalize(EnrollmentKind::Group, doc, None).is_ok());
        let doc = individual(json!({"attestation": {"type": "symmetricKey", "x509": {}}}));
        assert_eq!(normalize(EnrollmentKind::Individual, doc, None).unwrap_err().field, "attestation.x509");
        let doc = individual(json!({"attestation": {"type": "none"}}));
        assert_eq!(normalize(EnrollmentKind::Individual, doc, None).unwrap_err().field, "attestation.type");
        let doc = individual(
            json!({"attestation": {"type": "x509", "x509": {"clientCertificates": {"primary": {"certificate": "nope"}}}}}),
        );
        assert_eq!(
            normalize(EnrollmentKind::Individual, doc, None).unwrap_err().field,
            "attestation.x509.clientCertificates.primary.certificate"
        );
        let group = json!({"enrollmentGroupId": "g", "attestation": {"type": "x509", "x509": {"caReferences": {"primary": "factory-ca"}}}});
        assert!(normalize(EnrollmentKind::Group, group, None).is_ok());
    }

    #[test]
    fn allocation_settings_are_checked() {
        let err =
            normalize(EnrollmentKind::Individual, individual(json!({"allocationPolicy": "static"})), None).unwrap_err();
        assert_eq!(err.field, "iotHubs");
        let doc = individual(json!({"allocationPolicy": "static", "iotHubs": ["Hub1.example.com"]}));
        assert_eq!(normalize(EnrollmentKind::Individual, doc, None).unwrap().named_hubs, vec!["hub1.example.com"]);
        let err =
            normalize(EnrollmentKind::Individual, individual(json!({"allocationPolicy": "custom"})), None).unwrap_err();
        assert_eq!(err.field, "customAllocationDefinition");
        let doc = individual(json!({"iotHubs": ["a..b"]}));
        assert_eq!(normalize(EnrollmentKind::Individual, doc, None).unwrap_err().field, "iotHubs[0]");
    }

    #[test]
    fn read_only_fields_are_dropped_and_rendered_from_the_record() {
        let doc = individual(
            json!({"etag": "x", "createdDateTimeUtc": "y", "registrationState": {"registrationId": "Dev-1", "status": "assigned"}}),
        );
        let n = normalize(EnrollmentKind::Individual, doc, None).unwrap();
        assert!(n.document.get("etag").is_none());
        assert!(n.document.get("registrationState").is_none());
        let shown = render(&n.document, "e1", "c", "u", None);
        assert_eq!(shown["etag"], "e1");
        assert_eq!(shown["attestation"], json!({"type": "symmetricKey"}));
    }
}
