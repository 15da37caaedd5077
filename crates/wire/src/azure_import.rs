//! Documents exported from Azure DPS, made fit for zerotouch's admin API (`zerotouch import-azure`), with a note
//! for everything that does not carry over.
//!
//! An export is what Azure's service API returns for enrollments and groups (the SDKs' queries, `az iot dps
//! enrollment list`): `IndividualEnrollment` and `EnrollmentGroup` documents (`docs/protocol/device-api.md` §6)
//! with their read-only fields (`etag`, timestamps, `registrationState`, certificates' `info`), `null` for fields
//! left unset, and fields that zerotouch does not support. [`translate`] is pure: it takes one document and the
//! operator's hub renames, and returns the document zerotouch takes (or why it cannot take it) with the notes to
//! show; the command sends the documents through the bulk routes, so that the server's own checks still apply.

use std::collections::BTreeMap;

use serde_json::{Map, Value};

use crate::enrollment::EnrollmentKind;

/// How much a note matters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    /// Something of the Azure document is dropped or behaves differently; the enrollment is imported.
    Changed,
    /// The enrollment cannot be imported as it is.
    Refused,
}

/// One thing that does not carry over as it was.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Note {
    /// Whether the enrollment is imported despite it.
    pub severity: Severity,
    /// The field concerned (`attestation.type`, `iotHubs[1]`, ...).
    pub field: String,
    /// What happens, in words.
    pub text: String,
}

/// One document of an export, made fit for zerotouch.
#[derive(Debug, Clone, PartialEq)]
pub struct Translated {
    /// Which kind it is (by its id field).
    pub kind: EnrollmentKind,
    /// Its id, as spelled in the export (empty when it has none).
    pub id: String,
    /// The document to send: read-only and unsupported fields removed, hub names renamed.
    pub document: Value,
    /// What does not carry over; a [`Severity::Refused`] note means the document must not be sent.
    pub notes: Vec<Note>,
}

impl Translated {
    /// Whether the document may be sent.
    pub fn importable(&self) -> bool {
        self.notes.iter().all(|n| n.severity != Severity::Refused)
    }
}

/// What the command knows when it translates: the operator's hub renames (Azure host name, lower-case, to a hub of
/// zerotouch) and the hubs zerotouch has (lower-case), and whether missing symmetric keys may be generated.
#[derive(Debug, Clone, Default)]
pub struct Context {
    /// `--hub-map AZURE=OURS`, keyed by the Azure name in lower case.
    pub hub_map: BTreeMap<String, String>,
    /// The host names of zerotouch's hubs, lower-case.
    pub known_hubs: Vec<String>,
    /// `--generate-missing-keys`: import symmetric-key enrollments whose export carries no keys, with new keys.
    pub generate_missing_keys: bool,
    /// `--certificates`: certificates (PEM) by their SHA-256 and SHA-1 thumbprints (upper-case hex), for X.509
    /// attestations whose export carries a certificate's `info` but not the certificate.
    pub certificates: BTreeMap<String, String>,
}

const SHARED_FIELDS: [&str; 14] = [
    "attestation",
    "capabilities",
    "iotHubHostName",
    "initialTwin",
    "etag",
    "provisioningStatus",
    "reprovisionPolicy",
    "createdDateTimeUtc",
    "lastUpdatedDateTimeUtc",
    "allocationPolicy",
    "iotHubs",
    "customAllocationDefinition",
    "credentialPolicyName",
    "certificatePolicy",
];
const INDIVIDUAL_FIELDS: [&str; 4] = ["registrationId", "deviceId", "registrationState", "optionalDeviceInformation"];
const READ_ONLY: [&str; 4] = ["etag", "createdDateTimeUtc", "lastUpdatedDateTimeUtc", "registrationState"];

/// Makes one exported document fit for zerotouch (see the module comment).
pub fn translate(item: &Value, context: &Context) -> Translated {
    let mut notes = Vec::new();
    let refuse = |notes: &mut Vec<Note>, field: &str, text: String| {
        notes.push(Note { severity: Severity::Refused, field: field.to_owned(), text });
    };
    let change = |notes: &mut Vec<Note>, field: &str, text: String| {
        notes.push(Note { severity: Severity::Changed, field: field.to_owned(), text });
    };
    let Some(object) = item.as_object() else {
        let mut notes = Vec::new();
        refuse(&mut notes, "(document)", "is not a JSON object".to_owned());
        return Translated { kind: EnrollmentKind::Individual, id: String::new(), document: Value::Null, notes };
    };
    let (kind, id) = match (object.get("registrationId"), object.get("enrollmentGroupId")) {
        (Some(Value::String(id)), None) => (EnrollmentKind::Individual, id.clone()),
        (None, Some(Value::String(id))) => (EnrollmentKind::Group, id.clone()),
        _ => {
            refuse(
                &mut notes,
                "(document)",
                "has neither a registrationId nor an enrollmentGroupId (exactly one)".into(),
            );
            return Translated { kind: EnrollmentKind::Individual, id: String::new(), document: item.clone(), notes };
        }
    };

    let mut document = Map::new();
    for (field, value) in object {
        let known = SHARED_FIELDS.contains(&field.as_str())
            || field == kind.id_field()
            || (kind == EnrollmentKind::Individual && INDIVIDUAL_FIELDS.contains(&field.as_str()));
        if value.is_null() {
            continue;
        }
        if !known {
            change(&mut notes, field, "is not supported by zerotouch; dropped".into());
            continue;
        }
        if READ_ONLY.contains(&field.as_str()) {
            if field == "registrationState"
                && let Some(hub) = value.get("assignedHub").and_then(Value::as_str)
            {
                change(
                    &mut notes,
                    field,
                    format!("the device was assigned to {hub:?} by Azure; it is assigned again when it registers"),
                );
            }
            continue;
        }
        document.insert(field.clone(), value.clone());
    }

    attestation(&mut document, context, &mut notes);
    hubs(&mut document, context, &mut notes);
    if document.get("capabilities").and_then(|c| c.get("iotEdge")).and_then(Value::as_bool) == Some(true) {
        change(
            &mut notes,
            "capabilities.iotEdge",
            "kept, but zerotouch's hubs do not set up IoT Edge devices (no edge runtime or modules)".into(),
        );
    }
    if let Some(Value::Object(policy)) = document.get("reprovisionPolicy")
        && policy.get("migrateDeviceData").and_then(Value::as_bool) != Some(false)
        && policy.get("updateHubAssignment").and_then(Value::as_bool) != Some(false)
    {
        change(
            &mut notes,
            "reprovisionPolicy.migrateDeviceData",
            "zerotouch does not copy a device's data (its twin) from one hub to the other when the device moves".into(),
        );
    }
    if document.get("allocationPolicy").and_then(Value::as_str) == Some("geoLatency") {
        change(&mut notes, "allocationPolicy", "geoLatency allocates as hashed (zerotouch has no latency map)".into());
    }
    if document.contains_key("credentialPolicyName") {
        change(
            &mut notes,
            "credentialPolicyName",
            "kept, but has no effect: zerotouch issues certificates by certificatePolicy from its own CA".into(),
        );
    }
    if document.contains_key("customAllocationDefinition") {
        change(
            &mut notes,
            "customAllocationDefinition",
            "the webhook is called by zerotouch now: it must be reachable from it and answer with zerotouch's hub \
             names (those of linkedHubs)"
                .into(),
        );
    }
    Translated { kind, id, document: Value::Object(document), notes }
}

/// The attestation: `none` refused; `null`s and certificates' `info` removed; symmetric keys required unless
/// `--generate-missing-keys`; `caReferences` named.
fn attestation(document: &mut Map<String, Value>, context: &Context, notes: &mut Vec<Note>) {
    let Some(Value::Object(attestation)) = document.get_mut("attestation") else {
        notes.push(Note { severity: Severity::Refused, field: "attestation".into(), text: "is missing".into() });
        return;
    };
    attestation.retain(|_, v| !v.is_null());
    let kind = attestation.get("type").and_then(Value::as_str).unwrap_or_default().to_owned();
    if let Some(Value::Object(x509)) = attestation.get_mut("x509") {
        x509.retain(|_, v| !v.is_null());
        for set in ["clientCertificates", "signingCertificates", "caReferences"] {
            if let Some(Value::Object(pair)) = x509.get_mut(set) {
                pair.retain(|_, v| !v.is_null());
                for (slot, entry) in pair.iter_mut() {
                    if let Value::Object(entry) = entry {
                        certificate_of(entry, &format!("attestation.x509.{set}.{slot}"), context, notes);
                    }
                }
            }
        }
        if x509.contains_key("caReferences") {
            notes.push(Note {
                severity: Severity::Changed,
                field: "attestation.x509.caReferences".into(),
                text: "names certificates uploaded to Azure DPS: upload and verify them in zerotouch under the same \
                       names (/certificateAuthorities) before devices register"
                    .into(),
            });
        }
    }
    if let Some(Value::Object(tpm)) = attestation.get_mut("tpm") {
        tpm.retain(|_, v| !v.is_null());
    }
    match kind.as_str() {
        "none" | "" => notes.push(Note {
            severity: Severity::Refused,
            field: "attestation.type".into(),
            text: format!("{kind:?} cannot authenticate a device in zerotouch; use symmetricKey, x509 or tpm"),
        }),
        "symmetricKey" => {
            let keys = attestation.get("symmetricKey").and_then(Value::as_object);
            let present =
                |name: &str| keys.and_then(|k| k.get(name)).and_then(Value::as_str).is_some_and(|key| !key.is_empty());
            if !(present("primaryKey") && present("secondaryKey")) {
                let (severity, text) = if context.generate_missing_keys {
                    (
                        Severity::Changed,
                        "the export carries no keys: new keys are generated, and devices holding Azure's keys cannot \
                         authenticate until they get the new ones",
                    )
                } else {
                    (
                        Severity::Refused,
                        "the export carries no keys (Azure's queries leave them out): export with them (GET \
                         .../attestationmechanism, `az iot dps enrollment show --show-keys`), or pass \
                         --generate-missing-keys to make new ones",
                    )
                };
                notes.push(Note { severity, field: "attestation.symmetricKey".into(), text: text.into() });
                attestation.remove("symmetricKey");
            }
        }
        _ => {}
    }
}

/// One `X509CertificateWithInfo`: its `info` dropped (zerotouch computes it), its certificate taken from
/// `--certificates` by the info's thumbprint when the export has only the info (Azure's reads may leave the
/// certificate out), else the document refused.
fn certificate_of(entry: &mut Map<String, Value>, field: &str, context: &Context, notes: &mut Vec<Note>) {
    let info = entry.remove("info");
    if entry.get("certificate").and_then(Value::as_str).is_some_and(|text| !text.trim().is_empty()) {
        return;
    }
    let thumbprint = |name: &str| info.as_ref().and_then(|i| i.get(name)).and_then(Value::as_str);
    let found = ["sha256Thumbprint", "sha1Thumbprint"]
        .into_iter()
        .filter_map(&thumbprint)
        .find_map(|t| context.certificates.get(&t.to_ascii_uppercase()));
    match found {
        Some(pem) => {
            entry.insert("certificate".into(), Value::String(pem.clone()));
        }
        None => {
            let subject = info.as_ref().and_then(|i| i.get("subjectName")).and_then(Value::as_str).unwrap_or("?");
            let sha1 = thumbprint("sha1Thumbprint").unwrap_or("?");
            notes.push(Note {
                severity: Severity::Refused,
                field: format!("{field}.certificate"),
                text: format!(
                    "the export has the certificate's info but not the certificate ({subject}, SHA-1 {sha1}): give \
                     it in a --certificates file"
                ),
            });
        }
    }
}

/// `iotHubs` and `iotHubHostName`: renamed by `--hub-map`; a hub zerotouch does not have refuses the document.
fn hubs(document: &mut Map<String, Value>, context: &Context, notes: &mut Vec<Note>) {
    let rename = |name: &str, field: String, notes: &mut Vec<Note>| -> String {
        let mapped = context.hub_map.get(&name.to_ascii_lowercase()).cloned().unwrap_or_else(|| name.to_owned());
        if !context.known_hubs.contains(&mapped.to_ascii_lowercase()) {
            notes.push(Note {
                severity: Severity::Refused,
                field,
                text: format!(
                    "names hub {mapped:?}, which zerotouch does not have: create it (PUT /hubs/{mapped}) or map it \
                     with --hub-map {name}=<a hub of zerotouch>"
                ),
            });
        }
        mapped
    };
    if let Some(Value::Array(list)) = document.get_mut("iotHubs") {
        for (i, hub) in list.iter_mut().enumerate() {
            if let Value::String(name) = hub {
                *name = rename(name, format!("iotHubs[{i}]"), notes);
            }
        }
        // Two Azure hubs mapped onto one of ours: listed once (zerotouch refuses a hub listed twice).
        let mut seen = Vec::new();
        list.retain(|hub| {
            let name = hub.as_str().map(str::to_ascii_lowercase);
            let first = !seen.contains(&name);
            seen.push(name);
            first
        });
    }
    if let Some(Value::String(name)) = document.get_mut("iotHubHostName") {
        *name = rename(name, "iotHubHostName".into(), notes);
    }
}

/// The documents of an export file: a JSON array of documents, one document, or an object whose `enrollments` /
/// `enrollmentGroups` arrays hold them (a bulk body, or the two query results side by side).
pub fn documents(export: Value) -> Result<Vec<Value>, String> {
    match export {
        Value::Array(items) => Ok(items),
        Value::Object(mut map) if map.contains_key("enrollments") || map.contains_key("enrollmentGroups") => {
            let mut items = Vec::new();
            for key in ["enrollments", "enrollmentGroups"] {
                match map.remove(key) {
                    None | Some(Value::Null) => {}
                    Some(Value::Array(list)) => items.extend(list),
                    Some(_) => return Err(format!("{key:?} is not an array")),
                }
            }
            Ok(items)
        }
        object @ Value::Object(_) => Ok(vec![object]),
        _ => Err("is neither a JSON array of enrollments nor an enrollment".to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn context() -> Context {
        Context {
            hub_map: [("contoso-east.azure-devices.net".to_owned(), "east.hubs.example".to_owned())].into(),
            known_hubs: vec!["east.hubs.example".into(), "west.hubs.example".into()],
            generate_missing_keys: false,
            certificates: BTreeMap::new(),
        }
    }

    fn fields(t: &Translated, severity: Severity) -> Vec<&str> {
        t.notes.iter().filter(|n| n.severity == severity).map(|n| n.field.as_str()).collect()
    }

    /// An enrollment as Azure's query returns it: read-only fields, nulls, an unknown field, a hub to rename.
    #[test]
    fn an_individual_enrollment_loses_read_only_and_unknown_fields_and_its_hubs_are_renamed() {
        let item = json!({
            "registrationId": "dev-1", "deviceId": null, "etag": "\"abc\"",
            "createdDateTimeUtc": "2024-01-01T00:00:00Z", "lastUpdatedDateTimeUtc": "2024-01-01T00:00:00Z",
            "registrationState": {"registrationId": "dev-1", "assignedHub": "contoso-east.azure-devices.net",
                                  "status": "assigned"},
            "attestation": {"type": "x509", "tpm": null, "symmetricKey": null, "x509": {
                "clientCertificates": {"primary": {"certificate": "MIIB", "info": {"subjectName": "CN=dev-1"}},
                                       "secondary": null},
                "signingCertificates": null, "caReferences": null}},
            "capabilities": {"iotEdge": false}, "provisioningStatus": "enabled",
            "allocationPolicy": "static", "iotHubs": ["Contoso-East.azure-devices.net"],
            "iotHubHostName": "west.hubs.example",
            "reprovisionPolicy": {"updateHubAssignment": true, "migrateDeviceData": false},
            "deviceTags": {"unknown": true},
        });
        let t = translate(&item, &context());
        assert!(t.importable(), "{:?}", t.notes);
        assert_eq!((t.kind, t.id.as_str()), (EnrollmentKind::Individual, "dev-1"));
        assert_eq!(
            t.document,
            json!({
                "registrationId": "dev-1",
                "attestation": {"type": "x509", "x509": {"clientCertificates": {"primary": {"certificate": "MIIB"}}}},
                "capabilities": {"iotEdge": false}, "provisioningStatus": "enabled",
                "allocationPolicy": "static", "iotHubs": ["east.hubs.example"], "iotHubHostName": "west.hubs.example",
                "reprovisionPolicy": {"updateHubAssignment": true, "migrateDeviceData": false},
            })
        );
        assert_eq!(fields(&t, Severity::Changed), ["deviceTags", "registrationState"]);
    }

    #[test]
    fn what_zerotouch_cannot_do_refuses_the_document() {
        let t = translate(&json!({"enrollmentGroupId": "g", "attestation": {"type": "none"}}), &context());
        assert!(!t.importable());
        assert_eq!(fields(&t, Severity::Refused), ["attestation.type"]);

        let group = json!({"enrollmentGroupId": "g", "attestation": {"type": "symmetricKey"},
                           "iotHubs": ["east.hubs.example", "contoso-north.azure-devices.net"]});
        let t = translate(&group, &context());
        assert_eq!(fields(&t, Severity::Refused), ["attestation.symmetricKey", "iotHubs[1]"]);
        assert!(t.notes[1].text.contains("--hub-map contoso-north.azure-devices.net="), "{:?}", t.notes);

        let mut merged = context();
        merged.hub_map.insert("contoso-east-2.azure-devices.net".into(), "east.hubs.example".into());
        let both = json!({"registrationId": "d", "attestation": {"type": "tpm", "tpm": {"endorsementKey": "AA=="}},
                          "iotHubs": ["contoso-east.azure-devices.net", "contoso-east-2.azure-devices.net"]});
        assert_eq!(translate(&both, &merged).document["iotHubs"], json!(["east.hubs.example"]));

        let info_only = json!({"enrollmentGroupId": "g", "attestation": {"type": "x509", "x509": {"signingCertificates":
            {"primary": {"info": {"subjectName": "CN=Root", "sha1Thumbprint": "ab12", "sha256Thumbprint": "cd34"}}}}}});
        let t = translate(&info_only, &context());
        assert_eq!(fields(&t, Severity::Refused), ["attestation.x509.signingCertificates.primary.certificate"]);
        assert!(t.notes[0].text.contains("CN=Root, SHA-1 ab12"), "{:?}", t.notes);
        let mut with_files = context();
        with_files.certificates.insert("CD34".into(), "-----BEGIN CERTIFICATE-----".into());
        let t = translate(&info_only, &with_files);
        assert!(t.importable(), "{:?}", t.notes);
        assert_eq!(
            t.document["attestation"]["x509"]["signingCertificates"]["primary"],
            json!({"certificate": "-----BEGIN CERTIFICATE-----"})
        );

        let generate = Context { generate_missing_keys: true, ..context() };
        let t = translate(&json!({"registrationId": "d", "attestation": {"type": "symmetricKey"}}), &generate);
        assert!(t.importable());
        assert_eq!(fields(&t, Severity::Changed), ["attestation.symmetricKey"]);

        for bad in [json!([]), json!({"attestation": {"type": "tpm"}}), json!({"registrationId": 7})] {
            assert!(!translate(&bad, &context()).importable(), "{bad}");
        }
        let t = translate(&json!({"registrationId": "d"}), &context());
        assert_eq!(fields(&t, Severity::Refused), ["attestation"]);
    }

    #[test]
    fn features_that_behave_differently_are_noted_and_kept() {
        let item = json!({"enrollmentGroupId": "edge", "attestation": {"type": "x509", "x509": {
                "caReferences": {"primary": "contoso-root", "secondary": null}}},
            "capabilities": {"iotEdge": true}, "allocationPolicy": "geoLatency", "credentialPolicyName": "p",
            "reprovisionPolicy": {"updateHubAssignment": true, "migrateDeviceData": true},
            "customAllocationDefinition": {"webhookUrl": "https://f.example/api", "apiVersion": "2021-10-01"},
            "registrationState": {"status": "assigned"}});
        let t = translate(&item, &context());
        assert!(t.importable(), "{:?}", t.notes);
        assert_eq!(
            fields(&t, Severity::Changed),
            [
                "registrationState",
                "attestation.x509.caReferences",
                "capabilities.iotEdge",
                "reprovisionPolicy.migrateDeviceData",
                "allocationPolicy",
                "credentialPolicyName",
                "customAllocationDefinition"
            ]
        );
        assert_eq!(t.document["attestation"]["x509"]["caReferences"], json!({"primary": "contoso-root"}));
        assert!(t.document.get("registrationState").is_none());
        assert_eq!(t.document["credentialPolicyName"], "p");
    }

    /// The export of the import test (`tests/fixtures/azure-export/`): every document translates, those that may be
    /// imported keep no read-only field or `null`, and translating them again refuses nothing and changes nothing
    /// (the property the `azure_export` fuzz target checks on any input).
    #[test]
    fn the_fixture_export_translates_and_translating_again_changes_nothing() {
        let mut context = context();
        for (azure, ours) in [("contoso-east", "east"), ("contoso-west", "west")] {
            context.hub_map.insert(format!("{azure}.azure-devices.net"), format!("{ours}.hubs.example"));
        }
        let files = [
            include_str!("../../../tests/fixtures/azure-export/enrollments.json"),
            include_str!("../../../tests/fixtures/azure-export/enrollment-groups.json"),
        ];
        let mut importable = 0;
        for text in files {
            for item in documents(serde_json::from_str(text).unwrap()).unwrap() {
                let first = translate(&item, &context);
                if !first.importable() {
                    continue;
                }
                importable += 1;
                let document = first.document.as_object().unwrap();
                assert!(READ_ONLY.iter().all(|field| !document.contains_key(*field)), "{document:?}");
                assert!(!first.document.to_string().contains("null"), "{document:?}");
                let again = translate(&first.document, &context);
                assert!(again.importable(), "{:?}", again.notes);
                assert_eq!(again.document, first.document);
            }
        }
        assert_eq!(importable, 6, "as the import test counts them");
    }

    #[test]
    fn export_files_come_in_three_shapes() {
        assert_eq!(documents(json!([{"a": 1}, {"b": 2}])).unwrap().len(), 2);
        assert_eq!(documents(json!({"registrationId": "x"})).unwrap().len(), 1);
        let both = json!({"enrollments": [{"registrationId": "x"}], "enrollmentGroups": [{"enrollmentGroupId": "g"}]});
        assert_eq!(documents(both).unwrap().len(), 2);
        assert!(documents(json!({"enrollments": 5})).is_err());
        assert!(documents(json!("text")).is_err());
    }
}
