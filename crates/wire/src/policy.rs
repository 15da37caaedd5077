//! Shared access policies of the service API (`docs/protocol/service-api.md` §1): a name, the rights Azure DPS
//! defines, and two keys that sign `SharedAccessSignature` tokens for the admin API.
//!
//! The document follows Azure's `SharedAccessSignatureAuthorizationRule`
//! (`{"keyName", "primaryKey", "secondaryKey", "rights": "EnrollmentRead, EnrollmentWrite"}`); `rights` is also
//! taken as an array of names. Keys absent, `null` or `""` are generated.

use serde::Deserialize;
use serde_json::{Value, json};

use crate::field::FieldError;
use crate::id::IdError;
use crate::secret::SymmetricKey;

/// A right Azure DPS gives a shared access policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AccessRight {
    /// The service's configuration: hubs, the CA, certificate authorities, the audit log.
    ServiceConfig,
    /// Read enrollments and enrollment groups.
    EnrollmentRead,
    /// Create, change and delete enrollments and enrollment groups, and read their keys.
    EnrollmentWrite,
    /// Read device registration states.
    RegistrationStatusRead,
    /// Delete device registration states (and revoke their certificates).
    RegistrationStatusWrite,
    /// Azure's right for devices to connect with the policy's key; kept when given (Azure's default
    /// `provisioningserviceowner` policy has it), but it grants nothing here: devices authenticate with their
    /// enrollment's credentials.
    DeviceConnect,
}

impl AccessRight {
    /// Every right, in the order Azure lists them.
    pub const ALL: [Self; 6] = [
        Self::ServiceConfig,
        Self::DeviceConnect,
        Self::EnrollmentRead,
        Self::EnrollmentWrite,
        Self::RegistrationStatusRead,
        Self::RegistrationStatusWrite,
    ];

    /// Azure's name of the right.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ServiceConfig => "ServiceConfig",
            Self::EnrollmentRead => "EnrollmentRead",
            Self::EnrollmentWrite => "EnrollmentWrite",
            Self::RegistrationStatusRead => "RegistrationStatusRead",
            Self::RegistrationStatusWrite => "RegistrationStatusWrite",
            Self::DeviceConnect => "DeviceConnect",
        }
    }

    /// The right named `name` (case-insensitive).
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|r| r.as_str().eq_ignore_ascii_case(name.trim()))
    }

    fn bit(self) -> u8 {
        match self {
            Self::ServiceConfig => 1,
            Self::EnrollmentRead => 2,
            Self::EnrollmentWrite => 4,
            Self::RegistrationStatusRead => 8,
            Self::RegistrationStatusWrite => 16,
            Self::DeviceConnect => 32,
        }
    }
}

/// A set of rights.
#[derive(Clone, Copy, PartialEq, Eq, Default)]
pub struct AccessRights(u8);

impl AccessRights {
    /// No right.
    pub const NONE: Self = Self(0);

    /// The set of `rights`.
    pub const fn of(rights: &[AccessRight]) -> Self {
        let mut bits = 0;
        let mut i = 0;
        while i < rights.len() {
            bits |= match rights[i] {
                AccessRight::ServiceConfig => 1,
                AccessRight::EnrollmentRead => 2,
                AccessRight::EnrollmentWrite => 4,
                AccessRight::RegistrationStatusRead => 8,
                AccessRight::RegistrationStatusWrite => 16,
                AccessRight::DeviceConnect => 32,
            };
            i += 1;
        }
        Self(bits)
    }

    /// Whether the set holds `right`.
    pub fn contains(self, right: AccessRight) -> bool {
        self.0 & right.bit() != 0
    }

    /// Whether the set shares a right with `other`.
    pub fn intersects(self, other: Self) -> bool {
        self.0 & other.0 != 0
    }

    /// Whether the set is empty.
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// The rights in the set, in Azure's order.
    pub fn iter(self) -> impl Iterator<Item = AccessRight> {
        AccessRight::ALL.into_iter().filter(move |r| self.contains(*r))
    }

    /// Parses Azure's text, names separated by commas (`"EnrollmentRead, EnrollmentWrite"`); an unknown name is an
    /// error naming it.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut set = Self::NONE;
        for name in text.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            let right = AccessRight::parse(name).ok_or_else(|| {
                let known: Vec<&str> = AccessRight::ALL.iter().map(|r| r.as_str()).collect();
                format!("{name:?} is not one of {}", known.join(", "))
            })?;
            set.0 |= right.bit();
        }
        Ok(set)
    }
}

impl std::fmt::Display for AccessRights {
    /// Azure's text: the names, comma and space separated.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> = self.iter().map(AccessRight::as_str).collect();
        f.write_str(&names.join(", "))
    }
}

impl std::fmt::Debug for AccessRights {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "AccessRights({self})")
    }
}

/// The most characters of a policy name (Azure allows 64).
pub const POLICY_NAME_MAX: usize = 64;
const POLICY_NAME_ALLOWED: &str = "ASCII letters, digits and -._";

/// A policy's name: 1-64 ASCII letters, digits and `-._`; compared case-insensitively (stored under
/// [`PolicyName::key`]).
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
pub struct PolicyName(String);

impl PolicyName {
    /// The name as spelled.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The canonical (lower-case) form under which the policy is stored and found ([`crate::id::lower_case`]).
    pub fn key(&self) -> std::borrow::Cow<'_, str> {
        crate::id::lower_case(&self.0)
    }
}

impl TryFrom<&str> for PolicyName {
    type Error = IdError;
    fn try_from(value: &str) -> Result<Self, IdError> {
        if value.is_empty() {
            return Err(IdError::Empty);
        }
        let len = value.chars().count();
        if len > POLICY_NAME_MAX {
            return Err(IdError::TooLong { max: POLICY_NAME_MAX, len });
        }
        match value.chars().find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'))) {
            Some(found) => Err(IdError::BadCharacter { found, allowed: POLICY_NAME_ALLOWED }),
            None => Ok(Self(value.to_owned())),
        }
    }
}

/// A policy document as a client sends it.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct PolicyDocument {
    #[serde(default)]
    key_name: Option<String>,
    #[serde(default)]
    rights: Option<Value>,
    #[serde(default, deserialize_with = "crate::secret::optional_key")]
    primary_key: Option<SymmetricKey>,
    #[serde(default, deserialize_with = "crate::secret::optional_key")]
    secondary_key: Option<SymmetricKey>,
    // What the service writes and clients send back; ignored as Azure ignores them.
    #[serde(default, rename = "etag")]
    _etag: Option<Value>,
    #[serde(default, rename = "createdDateTimeUtc")]
    _created: Option<Value>,
    #[serde(default, rename = "lastUpdatedDateTimeUtc")]
    _updated: Option<Value>,
}

/// A policy ready to store: its name, rights and keys (a key the document did not give is `None`: the store keeps
/// the existing policy's, or generates one).
#[derive(Debug)]
pub struct NormalizedPolicy {
    /// The name, from the path.
    pub name: PolicyName,
    /// Its rights (at least one).
    pub rights: AccessRights,
    /// The primary key, if the document gave one.
    pub primary_key: Option<SymmetricKey>,
    /// The secondary key, if the document gave one.
    pub secondary_key: Option<SymmetricKey>,
}

/// Checks a policy document PUT at `/sharedAccessPolicies/{path_name}`; errors name the field.
pub fn normalize(path_name: &str, body: Value) -> Result<NormalizedPolicy, FieldError> {
    let name = PolicyName::try_from(path_name).map_err(|e| FieldError::new("keyName", e.to_string()))?;
    let document: PolicyDocument = crate::field::decode(body)?;
    if let Some(key_name) = &document.key_name
        && key_name != name.as_str()
    {
        return Err(FieldError::new("keyName", format!("{key_name:?} is not the name in the path ({:?})", name.0)));
    }
    let rights = match document.rights {
        Some(Value::String(text)) => AccessRights::parse(&text).map_err(|e| FieldError::new("rights", e))?,
        Some(Value::Array(items)) => {
            let mut names = Vec::with_capacity(items.len());
            for (i, item) in items.iter().enumerate() {
                names.push(item.as_str().ok_or_else(|| FieldError::new(format!("rights[{i}]"), "must be a string"))?);
            }
            AccessRights::parse(&names.join(",")).map_err(|e| FieldError::new("rights", e))?
        }
        None | Some(Value::Null) => AccessRights::NONE,
        Some(_) => {
            return Err(FieldError::new("rights", "must be a string such as \"EnrollmentRead, EnrollmentWrite\""));
        }
    };
    if rights.is_empty() {
        return Err(FieldError::new("rights", "at least one right is required, e.g. \"EnrollmentRead\""));
    }
    Ok(NormalizedPolicy { name, rights, primary_key: document.primary_key, secondary_key: document.secondary_key })
}

/// The JSON of a policy; with its keys only where keys are meant to be shown.
pub fn render(
    name: &str,
    rights: AccessRights,
    etag: &str,
    created: &str,
    updated: &str,
    keys: Option<(&SymmetricKey, &SymmetricKey)>,
) -> Value {
    let mut out = json!({
        "keyName": name,
        "rights": rights.to_string(),
        "etag": etag,
        "createdDateTimeUtc": created,
        "lastUpdatedDateTimeUtc": updated,
    });
    if let (Some((primary, secondary)), Some(map)) = (keys, out.as_object_mut()) {
        map.insert("primaryKey".into(), Value::String(primary.to_base64().to_string()));
        map.insert("secondaryKey".into(), Value::String(secondary.to_base64().to_string()));
    }
    out
}

/// The connection string of a policy, as Azure's portal shows it
/// (`HostName=...;SharedAccessKeyName=...;SharedAccessKey=...`). It holds the key: handle it as a secret.
pub fn connection_string(host_name: &str, name: &str, key: &SymmetricKey) -> zeroize::Zeroizing<String> {
    zeroize::Zeroizing::new(format!(
        "HostName={host_name};SharedAccessKeyName={name};SharedAccessKey={}",
        key.to_base64().as_str()
    ))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn rights_parse_as_azure_writes_them_and_render_back() {
        let rights = AccessRights::parse("EnrollmentRead, enrollmentwrite,RegistrationStatusRead").unwrap();
        assert!(rights.contains(AccessRight::EnrollmentWrite));
        assert!(!rights.contains(AccessRight::ServiceConfig));
        assert_eq!(rights.to_string(), "EnrollmentRead, EnrollmentWrite, RegistrationStatusRead");
        assert!(AccessRights::parse("EnrollmentRead, Owner").unwrap_err().contains("\"Owner\""));
        assert!(AccessRights::parse("").unwrap().is_empty());
        let all = AccessRights::of(&AccessRight::ALL);
        assert_eq!(AccessRights::parse(&all.to_string()).unwrap(), all);
    }

    #[test]
    fn documents_normalize_with_generated_keys_and_named_errors() {
        let policy =
            normalize("Admin", json!({"keyName": "Admin", "rights": "ServiceConfig", "primaryKey": ""})).unwrap();
        assert_eq!(policy.name.key(), "admin");
        assert!(policy.primary_key.is_none() && policy.secondary_key.is_none());
        let policy = normalize("a", json!({"rights": ["EnrollmentRead"], "etag": "x"})).unwrap();
        assert!(policy.rights.contains(AccessRight::EnrollmentRead));
        let key = SymmetricKey::generate();
        let policy = normalize("a", json!({"rights": "EnrollmentRead", "secondaryKey": key.to_base64().as_str()}));
        assert!(policy.unwrap().secondary_key.unwrap().same_as(&key));
        for (body, field) in [
            (json!({"rights": ""}), "rights"),
            (json!({}), "rights"),
            (json!({"rights": 3}), "rights"),
            (json!({"rights": "Everything"}), "rights"),
            (json!({"rights": "EnrollmentRead", "keyName": "b"}), "keyName"),
            (json!({"rights": "EnrollmentRead", "primaryKey": "c2hvcnQ="}), "primaryKey"),
            (json!({"rights": "EnrollmentRead", "owner": true}), "(body)"),
        ] {
            let error = normalize("a", body.clone()).unwrap_err();
            assert!(error.field.starts_with(field) || error.problem.contains("owner"), "{body}: {error}");
        }
        assert_eq!(normalize("a/b", json!({"rights": "EnrollmentRead"})).unwrap_err().field, "keyName");
        assert!(normalize(&"x".repeat(65), json!({"rights": "EnrollmentRead"})).is_err());
    }

    #[test]
    fn keys_are_rendered_only_when_asked_and_connection_strings_have_azure_shape() {
        let (p, s) = (SymmetricKey::generate(), SymmetricKey::generate());
        let rights = AccessRights::of(&[AccessRight::EnrollmentRead]);
        let shown = render("a", rights, "e", "c", "u", None);
        assert!(shown.get("primaryKey").is_none() && shown["rights"] == "EnrollmentRead");
        let with_keys = render("a", rights, "e", "c", "u", Some((&p, &s)));
        assert_eq!(with_keys["primaryKey"], p.to_base64().as_str());
        let text = connection_string("dps.example.com", "a", &p);
        assert_eq!(*text, format!("HostName=dps.example.com;SharedAccessKeyName=a;SharedAccessKey={}", *p.to_base64()));
    }
}
