//! Issue #19, point 3: `zerotouch import-azure` moves an Azure DPS export (`tests/fixtures/azure-export/`, written
//! from Azure's documented shapes) into a running zerotouch through its admin API, as an operator would run it
//! against a remote deployment: the real binary as a separate process, a URL, a token file and the CA to trust.
//! What carries over is then checked through the admin API, and a device registers with the key it had in Azure.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::PathBuf;
use std::process::Command;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde_json::{Value, json};
use zerotouch_tests::device::sas_register;
use zerotouch_tests::{Api, Backend, Options, Server, binary};

const EAST: &str = "east.hubs.example.com";
const WEST: &str = "west.hubs.example.com";
const NORTH: &str = "north.hubs.example.com";

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures/azure-export").join(name)
}

/// Runs `zerotouch import-azure` against `server` with `role`'s token and `extra` arguments: (success, stdout).
fn import(server: &Server, role: &str, extra: &[&str]) -> (bool, String) {
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, server.token(role).unwrap()).unwrap();
    let output = Command::new(binary().unwrap())
        .arg("import-azure")
        .arg(fixture("enrollments.json"))
        .arg(fixture("enrollment-groups.json"))
        .args(if extra.contains(&"--url") { vec![] } else { vec!["--url".to_owned(), server.url("")] })
        .arg("--token-file")
        .arg(&token_file)
        .arg("--ca-file")
        .arg(server.data_dir.join("trust-bundle.pem"))
        .args(["--hub-map", "contoso-east.azure-devices.net=east.hubs.example.com"])
        .args(["--hub-map", "Contoso-West.azure-devices.net=west.hubs.example.com"])
        .args(extra)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!stdout.contains(&server.token(role).unwrap()[..40]), "the token reached the report");
    (output.status.success(), format!("{stdout}\n--- stderr\n{stderr}"))
}

/// The report's block about one document: its first line and its notes.
fn block<'a>(report: &'a str, head: &str) -> Vec<&'a str> {
    let mut lines = report.lines().skip_while(|l| !l.starts_with(head));
    let first = lines.next().unwrap_or_else(|| panic!("no {head:?} in:\n{report}"));
    std::iter::once(first).chain(lines.take_while(|l| l.starts_with("  "))).collect()
}

async fn ok(response: reqwest::Response) -> Value {
    let status = response.status().as_u16();
    let body: Value = response.json().await.unwrap_or(Value::Null);
    assert_eq!(status, 200, "{body}");
    body
}

/// An export imports what zerotouch can take (hubs renamed, read-only and unknown fields dropped, keys kept) and
/// names every document it cannot, exiting non-zero; a second run in create mode reports the server's conflicts;
/// with the missing pieces given (`--generate-missing-keys`, a map for the last hub, the certificate an export
/// left out, `update`) all but the
/// unattestable group go in. A reader's token is refused by the server, and nothing is created.
#[tokio::test]
async fn an_azure_export_is_imported_and_what_does_not_carry_over_is_reported() {
    let server = Server::start_with(Backend::Sqlite, Options::default()).await.unwrap();
    let api = Api::new(&server, "owner");
    for hub in [EAST, WEST, NORTH] {
        ok(api.put(&format!("/hubs/{hub}"), &json!({"hostName": hub, "kind": "none"})).await).await;
    }

    let (success, report) = import(&server, "operator", &["--url", "http://dps.example.com:8444"]);
    assert!(!success && report.contains("--url must be https"), "a token is not sent in the clear: {report}");

    let (success, report) = import(&server, "reader", &[]);
    assert!(!success, "{report}");
    assert!(report.contains("403"), "{report}");
    let page = ok(api.post("/enrollments/query", Some(&json!({"query": "SELECT * FROM enrollments"}))).await).await;
    assert_eq!(page, json!([]), "a refused import created nothing");

    let (dry, report) = import(&server, "operator", &["--dry-run"]);
    assert!(!dry, "{report}");
    assert!(report.contains("6 of 10 documents can be imported (dry run: nothing was created)"), "{report}");
    let page =
        ok(api.post("/enrollmentGroups/query", Some(&json!({"query": "SELECT * FROM enrollmentGroups"}))).await).await;
    assert_eq!(page, json!([]), "a dry run creates nothing");

    let (success, report) = import(&server, "operator", &[]);
    assert!(!success, "some documents cannot be imported: {report}");
    assert!(report.contains("6 of 10 documents imported"), "{report}");
    let sym = block(&report, "enrollment \"contoso-sym-dev-1\"");
    assert_eq!(sym[0], "enrollment \"contoso-sym-dev-1\": imported", "{report}");
    assert!(sym.iter().any(|l| l.contains("changed: registrationState: the device was assigned to \"contoso-east")));
    assert_eq!(block(&report, "enrollment \"contoso-x509-dev-1\""), ["enrollment \"contoso-x509-dev-1\": imported"]);
    assert_eq!(block(&report, "enrollment \"contoso-tpm-dev-1\""), ["enrollment \"contoso-tpm-dev-1\": imported"]);
    let no_keys = block(&report, "enrollment \"contoso-sym-nokeys-1\"");
    assert_eq!(no_keys[0], "enrollment \"contoso-sym-nokeys-1\": not imported", "{report}");
    assert!(no_keys[1].starts_with("  refused: attestation.symmetricKey: the export carries no keys"), "{report}");
    let edge = block(&report, "enrollment \"contoso-edge-gw-1\"").join("\n");
    assert!(
        edge.contains("not imported")
            && edge.contains("refused: iotHubs[0]: names hub \"contoso-north.azure-devices.net\""),
        "{edge}"
    );
    assert!(edge.contains("changed: capabilities.iotEdge"), "{edge}");
    let thermostats = block(&report, "enrollment group \"contoso-thermostats\"").join("\n");
    assert!(thermostats.contains(": imported"), "{thermostats}");
    assert!(thermostats.contains("changed: clientCertificateIssuancePolicy: is not supported by zerotouch; dropped"));
    assert!(thermostats.contains("changed: allocationPolicy: geoLatency allocates as hashed"), "{thermostats}");
    assert!(
        block(&report, "enrollment group \"contoso-sensors\"")
            .join("\n")
            .contains("changed: customAllocationDefinition")
    );
    assert!(
        block(&report, "enrollment group \"contoso-legacy\"")
            .join("\n")
            .contains("changed: attestation.x509.caReferences")
    );
    let read_back = block(&report, "enrollment group \"contoso-read-back\"").join("\n");
    assert!(read_back.contains("not imported"), "{read_back}");
    assert!(
        read_back.contains(
            "refused: attestation.x509.signingCertificates.primary.certificate: the export has the \
                            certificate's info but not the certificate (CN=Contoso Devices Root CA"
        ),
        "{read_back}"
    );
    let none = block(&report, "enrollment group \"contoso-unattested\"").join("\n");
    assert!(none.contains("not imported") && none.contains("refused: attestation.type"), "{none}");

    // What carried over, as the admin API shows it.
    let sym = ok(api.get("/enrollments/contoso-sym-dev-1").await).await;
    assert_eq!(sym["iotHubs"], json!([EAST, WEST]), "{sym}");
    assert_eq!(sym["iotHubHostName"], EAST, "{sym}");
    assert_eq!(sym["initialTwin"]["tags"]["building"], "43", "{sym}");
    assert_eq!(sym["optionalDeviceInformation"]["model"], "TH-200", "{sym}");
    assert!(sym.get("registrationState").is_none(), "Azure's state is not imported: {sym}");
    assert_ne!(sym["etag"], "\"2a00c2a4-0000-0300-0000-65439bc50000\"", "zerotouch's own etag");
    let exported: Value = serde_json::from_str(&std::fs::read_to_string(fixture("enrollments.json")).unwrap()).unwrap();
    let azure_keys = &exported[0]["attestation"]["symmetricKey"];
    let keys = ok(api.post("/enrollments/contoso-sym-dev-1/attestationmechanism", None).await).await;
    assert_eq!(&keys["symmetricKey"], azure_keys, "the device's keys carry over");
    let x509 = ok(api.get("/enrollments/contoso-x509-dev-1").await).await;
    let info = &x509["attestation"]["x509"]["clientCertificates"]["primary"]["info"];
    let azure_info = &exported[1]["attestation"]["x509"]["clientCertificates"]["primary"]["info"];
    assert_eq!(info, azure_info, "zerotouch reads the certificate as Azure showed it: {x509}");
    assert_eq!(x509["iotHubs"], json!([WEST]), "{x509}");
    let tpm = ok(api.get("/enrollments/contoso-tpm-dev-1").await).await;
    assert_eq!(tpm["provisioningStatus"], "disabled", "{tpm}");
    let thermostats = ok(api.get("/enrollmentGroups/contoso-thermostats").await).await;
    assert!(thermostats.get("clientCertificateIssuancePolicy").is_none(), "{thermostats}");
    assert_eq!(thermostats["allocationPolicy"], "geoLatency", "{thermostats}");
    let legacy = ok(api.get("/enrollmentGroups/contoso-legacy").await).await;
    assert_eq!(legacy["iotHubHostName"], WEST, "{legacy}");

    // The device registers with the key it had in Azure, on one of its (renamed) hubs.
    let key = STANDARD.decode(azure_keys["primaryKey"].as_str().unwrap()).unwrap();
    let (status, done) = sas_register(&server, "contoso-sym-dev-1", &key, json!({})).await;
    assert_eq!((status, &done["status"]), (200, &json!("assigned")), "{done}");
    assert!([EAST, WEST].contains(&done["registrationState"]["assignedHub"].as_str().unwrap()), "{done}");

    // Again in create mode: the server refuses what exists, and the report says so for each.
    let (success, report) = import(&server, "operator", &[]);
    assert!(!success, "{report}");
    assert!(report.contains("0 of 10 documents imported"), "{report}");
    let again = block(&report, "enrollment \"contoso-x509-dev-1\"");
    assert!(again[0].starts_with("enrollment \"contoso-x509-dev-1\": not imported: 409"), "{report}");

    // With the missing pieces: everything but the group without attestation.
    let (success, report) = import(
        &server,
        "operator",
        &[
            "--mode",
            "update",
            "--generate-missing-keys",
            "--hub-map",
            "contoso-north.azure-devices.net=north.hubs.example.com",
            "--certificates",
            fixture("certificates.pem").to_str().unwrap(),
        ],
    );
    assert!(!success, "{report}");
    assert!(report.contains("9 of 10 documents imported"), "{report}");
    let edge = ok(api.get("/enrollments/contoso-edge-gw-1").await).await;
    assert_eq!((&edge["iotHubs"], &edge["capabilities"]["iotEdge"]), (&json!([NORTH]), &json!(true)), "{edge}");
    let read_back = ok(api.get("/enrollmentGroups/contoso-read-back").await).await;
    let primary = &read_back["attestation"]["x509"]["signingCertificates"]["primary"];
    assert_eq!(primary["info"], thermostats["attestation"]["x509"]["signingCertificates"]["primary"]["info"]);
    assert!(primary["certificate"].as_str().unwrap().starts_with("-----BEGIN CERTIFICATE-----"), "{read_back}");
    let generated = ok(api.post("/enrollments/contoso-sym-nokeys-1/attestationmechanism", None).await).await;
    assert!(generated["symmetricKey"]["primaryKey"].as_str().is_some_and(|k| !k.is_empty()), "{generated}");
    server.assert_no_secret_in_logs();
}
