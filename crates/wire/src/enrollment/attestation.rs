//! How a device proves its identity: the attestation of an enrollment, and the checks `normalize` applies to it.
//!
//! Its own module because attestation is the largest and most security-relevant part of a document: each type
//! (symmetric key, TPM, X.509) has its own shape and its own rules for individual enrollments and groups.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::EnrollmentKind;
use crate::field::FieldError;
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
    /// Enrollment groups only (our extension): which registration ids a TPM of the group may claim. Filled with
    /// [`TpmRegistrationIdPolicy::DerivedFromEndorsementKey`] when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub registration_id_policy: Option<TpmRegistrationIdPolicy>,
    /// With [`TpmRegistrationIdPolicy::EndorsementKeyAllowList`] only: the SHA-256 (hex) of the `TPM2B_PUBLIC` of
    /// each endorsement key the group admits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allowed_endorsement_key_hashes: Option<Vec<String>>,
}

/// Which registration ids a TPM of an enrollment group may claim (our extension). Whatever the policy, an id stays
/// with the first TPM that registered it, and with the enrollment that created its registration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum TpmRegistrationIdPolicy {
    /// Only the id derived from the device's endorsement key, as the Azure device SDKs derive it when none is
    /// configured ([`zerotouch_tpm::Public::derived_registration_id`]): one id per TPM, and never another device's.
    DerivedFromEndorsementKey,
    /// Any id, for the TPMs whose endorsement key is listed in `allowedEndorsementKeyHashes`.
    EndorsementKeyAllowList,
    /// Any id no other TPM holds yet, for any TPM of the manufacturers: a TPM of the same make can claim an id before
    /// its device does. Only where the ids are not known in advance and the manufacturers' TPMs are trusted.
    FirstToClaim,
}

/// At most this many endorsement key hashes in a group's allow-list (about half the 96 KiB document limit). Larger
/// fleets of known TPMs are enrolled individually (bulk import) or use derived registration ids.
pub const MAX_ALLOWED_ENDORSEMENT_KEYS: usize = 1_000;

impl TpmAttestation {
    /// Whether a TPM group admits the TPM with endorsement key `ek` under `registration_id`; `Err` says why not.
    /// The policy of a document without one is [`TpmRegistrationIdPolicy::DerivedFromEndorsementKey`].
    pub fn admits(&self, registration_id: &str, ek: &zerotouch_tpm::Public) -> Result<(), String> {
        match self.registration_id_policy.unwrap_or(TpmRegistrationIdPolicy::DerivedFromEndorsementKey) {
            TpmRegistrationIdPolicy::DerivedFromEndorsementKey => {
                let derived = ek.derived_registration_id();
                if registration_id.eq_ignore_ascii_case(&derived) {
                    Ok(())
                } else {
                    Err(format!(
                        "the group admits a TPM only under the registration id derived from its endorsement key \
                         ({derived})"
                    ))
                }
            }
            TpmRegistrationIdPolicy::EndorsementKeyAllowList => {
                let hash = hex_lower(&ek.sha256());
                let listed = self.allowed_endorsement_key_hashes.as_deref().unwrap_or_default();
                if listed.iter().any(|allowed| allowed.eq_ignore_ascii_case(&hash)) {
                    Ok(())
                } else {
                    Err(format!("the endorsement key (SHA-256 {hash}) is not in the group's allow-list"))
                }
            }
            TpmRegistrationIdPolicy::FirstToClaim => Ok(()),
        }
    }
}

fn hex_lower(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
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
    /// The primary key (`""` or `null`: generate one, as Azure does).
    #[serde(default, deserialize_with = "crate::secret::optional_key", skip_serializing_if = "Option::is_none")]
    pub primary_key: Option<SymmetricKey>,
    /// The secondary key (`""` or `null`: generate one).
    #[serde(default, deserialize_with = "crate::secret::optional_key", skip_serializing_if = "Option::is_none")]
    pub secondary_key: Option<SymmetricKey>,
}
/// The two keys of an attestation, and which of them were generated.
pub(super) type Keys = (Option<SymmetricKey>, Option<SymmetricKey>, (bool, bool));

/// Checks the attestation against its type; takes the symmetric keys out of the document (generating missing ones).
pub(super) fn check_attestation(
    kind: EnrollmentKind,
    attestation: &mut AttestationMechanism,
) -> Result<Keys, FieldError> {
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
                .as_mut()
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
fn check_tpm(kind: EnrollmentKind, tpm: &mut TpmAttestation) -> Result<(), FieldError> {
    let key = |text: Option<&str>, field: &str, role: &str, required: bool| -> Result<(), FieldError> {
        check_base64(text, field, required)?;
        let Some(text) = text else { return Ok(()) };
        let public = zerotouch_tpm::Public::from_base64(text).map_err(|e| FieldError::new(field, e.to_string()))?;
        public.check_activation_key(role).map_err(|e| FieldError::new(field, e.to_string()))
    };
    match kind {
        EnrollmentKind::Individual => {
            for (field, present) in [
                ("manufacturerCertificates", tpm.manufacturer_certificates.is_some()),
                ("registrationIdPolicy", tpm.registration_id_policy.is_some()),
                ("allowedEndorsementKeyHashes", tpm.allowed_endorsement_key_hashes.is_some()),
            ] {
                if present {
                    return Err(FieldError::new(
                        format!("attestation.tpm.{field}"),
                        "only enrollment groups take it; an individual enrollment names its endorsementKey",
                    ));
                }
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
            check_registration_id_policy(tpm)
        }
    }
}

/// A TPM group's registration id policy (filled in when absent) and its allow-list, which only
/// `endorsementKeyAllowList` takes and requires: 1 to [`MAX_ALLOWED_ENDORSEMENT_KEYS`] SHA-256 hashes in hex, kept
/// in lower case.
fn check_registration_id_policy(tpm: &mut TpmAttestation) -> Result<(), FieldError> {
    let field = "attestation.tpm.allowedEndorsementKeyHashes";
    let policy = *tpm.registration_id_policy.get_or_insert(TpmRegistrationIdPolicy::DerivedFromEndorsementKey);
    match (policy, tpm.allowed_endorsement_key_hashes.as_mut()) {
        (TpmRegistrationIdPolicy::EndorsementKeyAllowList, None) => {
            Err(FieldError::new(field, "required when registrationIdPolicy is \"endorsementKeyAllowList\""))
        }
        (TpmRegistrationIdPolicy::EndorsementKeyAllowList, Some(hashes)) => {
            if hashes.is_empty() || hashes.len() > MAX_ALLOWED_ENDORSEMENT_KEYS {
                return Err(FieldError::new(
                    field,
                    format!("must list 1 to {MAX_ALLOWED_ENDORSEMENT_KEYS} hashes; enroll more TPMs individually"),
                ));
            }
            for (i, hash) in hashes.iter_mut().enumerate() {
                if hash.len() != 64 || !hash.bytes().all(|b| b.is_ascii_hexdigit()) {
                    return Err(FieldError::new(
                        format!("{field}[{i}]"),
                        "is not a SHA-256 in hex (64 digits) of an endorsement key's TPM2B_PUBLIC",
                    ));
                }
                hash.make_ascii_lowercase();
            }
            Ok(())
        }
        (_, Some(_)) => {
            Err(FieldError::new(field, "only taken when registrationIdPolicy is \"endorsementKeyAllowList\""))
        }
        (_, None) => Ok(()),
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
