//! The two document kinds as the service shows them, which kind a document is, and `render`, which rebuilds what a
//! client sees from what is stored.
//!
//! Its own module because these are the shapes every caller (server, store, tests) reads and writes, apart from
//! how an incoming document is checked.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::EnrollmentSettings;
use crate::id::{EnrollmentGroupId, IdError, RegistrationId};
use crate::registration::DeviceRegistrationState;
use crate::secret::SymmetricKey;

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
            Self::Individual => RegistrationId::try_from(id).map(|id| id.key().into_owned()),
            Self::Group => EnrollmentGroupId::try_from(id).map(|id| id.key().into_owned()),
        }
    }
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
