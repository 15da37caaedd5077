//! `normalize`: the input shape of a document (unknown fields refused) and its check and completion into a
//! [`NormalizedEnrollment`] ready to store.
//!
//! Its own module because it is where a client's document becomes a stored one: defaults filled, keys taken out,
//! read-only fields dropped, every inconsistency refused with the field it concerns.

use serde::Deserialize;
use serde_json::Value;

use super::attestation::check_attestation;
use super::settings::check_allocation;
use super::{
    AllocationPolicy, AttestationMechanism, AttestationType, CertificatePolicy, CustomAllocationDefinition,
    DeviceCapabilities, EnrollmentGroup, EnrollmentKind, EnrollmentSettings, IndividualEnrollment, ProvisioningStatus,
    ReprovisionPolicy,
};
use crate::field::{FieldError, decode};
use crate::secret::SymmetricKey;

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
        crate::id::check_device_id(device_id).map_err(|e| FieldError::new("deviceId", e.to_string()))?;
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
    if let Some(seconds) = settings.certificate_policy.as_ref().and_then(|p| p.validity_seconds)
        && !(CertificatePolicy::MIN_VALIDITY_SECONDS..=CertificatePolicy::MAX_VALIDITY_SECONDS).contains(&seconds)
    {
        return Err(FieldError::new(
            "certificatePolicy.validitySeconds",
            format!(
                "{seconds} is outside {}-{}",
                CertificatePolicy::MIN_VALIDITY_SECONDS,
                CertificatePolicy::MAX_VALIDITY_SECONDS
            ),
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
#[cfg(test)]
mod tests {
    use super::*;
    use crate::enrollment::render;
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

    /// Issue #20: a lifetime in seconds, 60 s at least, 397 days at most; the field is named when refused.
    #[test]
    fn certificate_lifetimes_in_seconds_are_bounded() {
        for (seconds, ok) in [(60, true), (300, true), (34_300_800, true), (59, false), (0, false), (34_300_801, false)]
        {
            let doc = individual(json!({"certificatePolicy": {"validitySeconds": seconds}}));
            match normalize(EnrollmentKind::Individual, doc, None) {
                Ok(n) => {
                    assert!(ok, "{seconds} was taken");
                    assert_eq!(n.document["certificatePolicy"]["validitySeconds"], seconds);
                }
                Err(e) => {
                    assert!(!ok, "{seconds} was refused: {e:?}");
                    assert_eq!(e.field, "certificatePolicy.validitySeconds");
                }
            }
        }
        let policy: CertificatePolicy = serde_json::from_value(json!({"validitySeconds": 120})).unwrap();
        assert_eq!(policy.lifetime_seconds(), 120);
        let policy: CertificatePolicy = serde_json::from_value(json!({"validityDays": 2})).unwrap();
        assert_eq!(policy.lifetime_seconds(), 172_800);
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

    /// The EK of the swtpm in `docs/protocol/tpm-activation.md` (base64 TPM2B_PUBLIC).
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
        let n = normalize(EnrollmentKind::Group, doc, None).unwrap();
        assert_eq!(n.document["attestation"]["tpm"]["registrationIdPolicy"], "derivedFromEndorsementKey");
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

    /// A TPM group's registration id policy: filled in, its allow-list required with `endorsementKeyAllowList`
    /// only, each entry a SHA-256 in hex (kept in lower case), and none of it in an individual enrollment.
    #[test]
    fn tpm_group_registration_id_policies_are_checked() {
        let group = |tpm: Value| {
            let mut tpm = tpm;
            tpm["manufacturerCertificates"] = json!(["MAE="]);
            normalize(
                EnrollmentKind::Group,
                json!({"enrollmentGroupId": "g", "attestation": {"type": "tpm", "tpm": tpm}}),
                None,
            )
        };
        let field = |result: Result<NormalizedEnrollment, FieldError>| result.unwrap_err().field;
        let hash = "CEC837B28CF706AFF3A29095E9BC1C96A583003283EDFA3CC981EE84C6C7DB7D";
        let n =
            group(json!({"registrationIdPolicy": "endorsementKeyAllowList", "allowedEndorsementKeyHashes": [hash]}))
                .unwrap();
        assert_eq!(n.document["attestation"]["tpm"]["allowedEndorsementKeyHashes"], json!([hash.to_ascii_lowercase()]));
        assert!(group(json!({"registrationIdPolicy": "firstToClaim"})).is_ok());
        let allow_list = "attestation.tpm.allowedEndorsementKeyHashes";
        assert_eq!(field(group(json!({"registrationIdPolicy": "endorsementKeyAllowList"}))), allow_list);
        let empty = json!({"registrationIdPolicy": "endorsementKeyAllowList", "allowedEndorsementKeyHashes": []});
        assert_eq!(field(group(empty)), allow_list);
        let many = vec![hash; crate::enrollment::MAX_ALLOWED_ENDORSEMENT_KEYS + 1];
        let many = json!({"registrationIdPolicy": "endorsementKeyAllowList", "allowedEndorsementKeyHashes": many});
        assert_eq!(field(group(many)), allow_list);
        for bad in ["", "abc", &hash[1..], &format!("{}g", &hash[1..])] {
            let doc =
                json!({"registrationIdPolicy": "endorsementKeyAllowList", "allowedEndorsementKeyHashes": [hash, bad]});
            assert_eq!(field(group(doc)), format!("{allow_list}[1]"), "{bad:?}");
        }
        assert_eq!(field(group(json!({"allowedEndorsementKeyHashes": [hash]}))), allow_list);
        assert!(group(json!({"registrationIdPolicy": "anyone"})).unwrap_err().problem.contains("anyone"));
        let doc = individual(
            json!({"attestation": {"type": "tpm", "tpm": {"endorsementKey": EK, "registrationIdPolicy": "firstToClaim"}}}),
        );
        assert_eq!(field(normalize(EnrollmentKind::Individual, doc, None)), "attestation.tpm.registrationIdPolicy");
    }

    /// What each policy admits, for the EK of `docs/protocol/tpm-activation.md`, whose derived id and hash were
    /// computed apart from this code (Python's hashlib and base64).
    #[test]
    fn tpm_group_policies_admit_what_they_say() {
        use crate::enrollment::{TpmAttestation, TpmRegistrationIdPolicy as Policy};
        let ek = zerotouch_tpm::Public::from_base64(EK).unwrap();
        let derived = "z3edpmum64dk745csck6tpa4s2sygabsqpw7upgjqhxijrwh3n6q";
        let hash = "cec837b28cf706aff3a29095e9bc1c96a583003283edfa3cc981ee84c6c7db7d";
        let with = |policy: Option<Policy>, hashes: Option<Vec<&str>>| TpmAttestation {
            endorsement_key: None,
            storage_root_key: None,
            manufacturer_certificates: Some(vec!["MAE=".into()]),
            registration_id_policy: policy,
            allowed_endorsement_key_hashes: hashes.map(|h| h.into_iter().map(String::from).collect()),
        };
        for policy in [None, Some(Policy::DerivedFromEndorsementKey)] {
            let tpm = with(policy, None);
            assert!(tpm.admits(derived, &ek).is_ok());
            assert!(tpm.admits(&derived.to_ascii_uppercase(), &ek).is_ok(), "ids compare without case");
            let refused = tpm.admits("some-other-device", &ek).unwrap_err();
            assert!(refused.contains(derived), "{refused}");
        }
        let listed = with(Some(Policy::EndorsementKeyAllowList), Some(vec!["00".repeat(32).as_str(), hash]));
        assert!(listed.admits("any-id", &ek).is_ok());
        let unlisted = with(Some(Policy::EndorsementKeyAllowList), Some(vec!["00".repeat(32).as_str()]));
        assert!(unlisted.admits("any-id", &ek).unwrap_err().contains(hash));
        assert!(with(Some(Policy::EndorsementKeyAllowList), None).admits(derived, &ek).is_err());
        assert!(with(Some(Policy::FirstToClaim), None).admits("any-id", &ek).is_ok());
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
