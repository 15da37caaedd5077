#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! Shared access policies and the admin API's `SharedAccessSignature` tokens (issue #19), against the real binary:
//! owners manage policies (keys shown only by `.../keys`), a policy's token is accepted beside JWTs with either key,
//! every refused token gets the Azure error body (401001, or 403001 for a policy without the right), the audit log
//! names the policy, the CLI prints a connection string whose key works, and `--no-shared-access-policies` turns
//! the tokens off.

use std::process::Command;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde_json::{Value, json};
use zerotouch_attest::sas;
use zerotouch_tests::{Api, Backend, Options, Server, binary};

fn now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

async fn ok(response: reqwest::Response) -> Value {
    let status = response.status();
    let text = response.text().await.unwrap();
    assert!(status.is_success(), "{status}: {text}");
    if text.is_empty() { Value::Null } else { serde_json::from_str(&text).unwrap() }
}

/// Sends `method path` with `Authorization: token`.
async fn call(
    server: &Server,
    method: reqwest::Method,
    path: &str,
    token: &str,
    body: Option<&Value>,
) -> reqwest::Response {
    let mut request = server.client.request(method, server.url(path)).header("Authorization", token);
    if let Some(body) = body {
        request = request.json(body);
    }
    request.send().await.unwrap()
}

/// Asserts the Azure error body and header of a refusal: `status`, `code`, a message, a tracking id.
async fn assert_refused(response: reqwest::Response, status: u16, code: u64, case: &str) -> Value {
    assert_eq!(response.status().as_u16(), status, "{case}");
    let header = response.headers().get("x-ms-error-code").map(|v| v.to_str().unwrap().to_owned());
    assert_eq!(header.as_deref(), Some(code.to_string().as_str()), "{case}: x-ms-error-code");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["errorCode"], code, "{case}: {body}");
    assert!(body["trackingId"].as_str().is_some_and(|t| !t.is_empty()), "{case}: {body}");
    assert!(body["timestampUtc"].as_str().is_some(), "{case}: {body}");
    assert!(body["message"].as_str().is_some_and(|m| !m.is_empty()), "{case}: {body}");
    body
}

/// The two keys of a policy, as `.../keys` shows them.
async fn keys(api: &Api<'_>, name: &str) -> (Vec<u8>, Vec<u8>) {
    let shown = ok(api.post(&format!("/sharedAccessPolicies/{name}/keys"), None).await).await;
    let decode = |field: &str| STANDARD.decode(shown[field].as_str().unwrap()).unwrap();
    (decode("primaryKey"), decode("secondaryKey"))
}

/// Every refusal the issue names, each with the Azure error shape; the accepted forms; the audit; the management.
#[tokio::test]
async fn refused_service_sas_each_get_the_azure_error_shape() {
    let server = Server::start(Backend::Sqlite).await.unwrap();
    let owner = Api::new(&server, "owner");
    let port: u16 = server.admin_url.rsplit(':').next().unwrap().parse().unwrap();

    // Owners manage policies; a PUT answers without keys, `.../keys` shows them.
    let reader = ok(owner
        .put(
            "/sharedAccessPolicies/Reader",
            &json!({"keyName": "Reader", "rights": "EnrollmentRead",
        "primaryKey": "", "secondaryKey": null}),
        )
        .await)
    .await;
    assert_eq!(reader["rights"], "EnrollmentRead");
    assert!(reader.get("primaryKey").is_none(), "{reader}");
    let writer_primary = STANDARD.encode([7u8; 32]);
    ok(owner
        .put(
            "/sharedAccessPolicies/writer",
            &json!({"rights": ["EnrollmentRead", "EnrollmentWrite"], "primaryKey": writer_primary}),
        )
        .await)
    .await;
    let listed = ok(owner.get("/sharedAccessPolicies").await).await;
    let names: Vec<&str> = listed.as_array().unwrap().iter().map(|p| p["keyName"].as_str().unwrap()).collect();
    assert_eq!(names, ["Reader", "writer"]);
    assert!(listed.as_array().unwrap().iter().all(|p| p.get("primaryKey").is_none()), "{listed}");
    let (primary, secondary) = keys(&owner, "reader").await;
    assert_eq!(primary.len(), 64, "a generated key");
    let (writer_key, _) = keys(&owner, "writer").await;
    assert_eq!(writer_key, [7u8; 32]);
    // A rights change keeps the keys.
    ok(owner.put("/sharedAccessPolicies/writer", &json!({"rights": "EnrollmentRead, EnrollmentWrite"})).await).await;
    assert_eq!(keys(&owner, "writer").await.0, [7u8; 32]);
    // An operator may not manage policies; a bad document names its field.
    let operator = Api::new(&server, "operator");
    assert_refused(operator.get("/sharedAccessPolicies").await, 403, 403001, "operator lists policies").await;
    let body = assert_refused(
        owner.put("/sharedAccessPolicies/x", &json!({"rights": "Everything"})).await,
        400,
        400002,
        "unknown right",
    )
    .await;
    assert!(body["message"].as_str().unwrap().contains("rights"), "{body}");

    ok(owner
        .put(
            "/enrollments/sas-target",
            &json!({"registrationId": "sas-target",
        "attestation": {"type": "symmetricKey"}}),
        )
        .await)
    .await;
    let path = "/enrollments/sas-target";
    let later = now() + 3600;

    // Accepted: the Node form (sr = host), the Python form (host:port, URL-encoded), either key, any case of skn.
    for (sr, key, skn) in [
        ("localhost".to_owned(), &primary, "Reader"),
        (format!("localhost%3A{port}"), &primary, "reader"),
        ("LOCALHOST".to_owned(), &secondary, "READER"),
        (format!("localhost:{port}/"), &secondary, "Reader"),
    ] {
        let token = sas::sign(&sr, later, key, Some(skn));
        let read = ok(call(&server, reqwest::Method::GET, path, &token, None).await).await;
        assert_eq!(read["registrationId"], "sas-target", "sr {sr}");
    }

    // Refused with 401 and the Azure body, each.
    let refusals: Vec<(&str, String)> = vec![
        ("wrong key", sas::sign("localhost", later, &[9u8; 32], Some("Reader"))),
        ("expired", sas::sign("localhost", now() - 3600, &primary, Some("Reader"))),
        ("lifetime beyond the maximum", sas::sign("localhost", now() + 30 * 3600, &primary, Some("Reader"))),
        ("wrong host", sas::sign("dps.elsewhere.example", later, &primary, Some("Reader"))),
        // The certificate's address, but not one of the service's --hostname.
        ("an address, not a host name", sas::sign("127.0.0.1", later, &primary, Some("Reader"))),
        ("device resource", sas::sign("0ne0000001%2Fregistrations%2Fsas-target", later, &primary, Some("Reader"))),
        ("unknown policy", sas::sign("localhost", later, &primary, Some("nobody"))),
        ("no policy named", sas::sign("localhost", later, &primary, None)),
        ("another policy's name", sas::sign("localhost", later, &primary, Some("writer"))),
        ("malformed", "SharedAccessSignature sr=localhost&sig=%%%&se=1".to_owned()),
    ];
    for (case, token) in &refusals {
        let response = call(&server, reqwest::Method::GET, path, token, None).await;
        let body = assert_refused(response, 401, 401001, case).await;
        assert!(body["message"].as_str().unwrap().contains("SharedAccessSignature"), "{case}: {body}");
    }

    // A policy without the right: 403 naming the policy and the right it lacks.
    let token = sas::sign("localhost", later, &primary, Some("Reader"));
    let body = json!({"registrationId": "sas-target", "attestation": {"type": "symmetricKey"}});
    let refused = call(&server, reqwest::Method::PUT, path, &token, Some(&body)).await;
    let refused = assert_refused(refused, 403, 403001, "policy without EnrollmentWrite").await;
    let message = refused["message"].as_str().unwrap();
    assert!(message.contains("Reader") && message.contains("EnrollmentWrite"), "{message}");
    for (method, route) in [
        (reqwest::Method::GET, "/registrations/sas-target"),
        (reqwest::Method::GET, "/hubs"),
        (reqwest::Method::GET, "/audit"),
        (reqwest::Method::GET, "/sharedAccessPolicies"),
    ] {
        assert_refused(call(&server, method, route, &token, None).await, 403, 403001, route).await;
    }

    // A policy with the right writes, and the audit log names it.
    let token = sas::sign("localhost", later, &writer_key, Some("writer"));
    ok(call(&server, reqwest::Method::PUT, path, &token, Some(&body)).await).await;
    let audit = ok(owner.get("/audit").await).await;
    let by_policy = audit
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["resourceId"] == "sas-target" && e["action"] == "update")
        .unwrap_or_else(|| panic!("no audit event of the update: {audit}"));
    assert_eq!(by_policy["actor"], "sharedAccessPolicy:writer", "{by_policy}");
    // Every use is audited with the policy's name, reads included.
    let uses: Vec<&Value> = audit.as_array().unwrap().iter().filter(|e| e["action"] == "use").collect();
    let read = format!("GET {path}");
    assert!(
        uses.iter().any(|e| e["actor"] == "sharedAccessPolicy:Reader"
            && e["resourceType"] == "sharedAccessPolicy"
            && e["resourceId"] == "Reader"
            && e["detail"] == read.as_str()),
        "no audit event of the policy's read: {uses:?}"
    );
    assert!(uses.iter().any(|e| e["actor"] == "sharedAccessPolicy:writer" && e["detail"] == format!("PUT {path}")));
    // Even a ServiceConfig policy may not manage policies.
    ok(owner.put("/sharedAccessPolicies/config", &json!({"rights": "ServiceConfig"})).await).await;
    let (config_key, _) = keys(&owner, "config").await;
    let config_token = sas::sign("localhost", later, &config_key, Some("config"));
    ok(call(&server, reqwest::Method::GET, "/hubs", &config_token, None).await).await;
    let policy_body = json!({"rights": "ServiceConfig"});
    let response = call(&server, reqwest::Method::PUT, "/sharedAccessPolicies/more", &config_token, Some(&policy_body));
    assert_refused(response.await, 403, 403001, "a policy managing policies").await;

    // Deleting a policy stops its tokens at once.
    let etag = ok(owner.get("/sharedAccessPolicies/writer").await).await["etag"].as_str().unwrap().to_owned();
    assert_eq!(owner.delete("/sharedAccessPolicies/writer", Some(&etag)).await.status(), 204);
    assert_refused(call(&server, reqwest::Method::GET, path, &token, None).await, 401, 401001, "deleted").await;
    let logs = server.logs();
    for (_, token) in &refusals {
        let sig = token.split("sig=").nth(1).and_then(|s| s.split('&').next()).unwrap();
        assert!(!logs.contains(sig), "a signature reached the log");
    }
    assert!(!logs.contains(&STANDARD.encode(&primary)), "a policy key reached the log");
}

/// `zerotouch shared-access-policy` creates a policy in the database and prints a connection string whose key the
/// running service accepts; `--no-shared-access-policies` refuses the same token.
#[tokio::test]
async fn the_cli_prints_a_connection_string_and_policies_can_be_turned_off() {
    let server = Server::start(Backend::Sqlite).await.unwrap();
    let zerotouch = |args: &[&str]| {
        let output = Command::new(binary().unwrap())
            .arg("shared-access-policy")
            .arg("--data-dir")
            .arg(&server.data_dir)
            .args(["--database-url", &server.database_url])
            .args(args)
            .output()
            .unwrap();
        assert!(output.status.success(), "{args:?}: {}", String::from_utf8_lossy(&output.stderr));
        String::from_utf8(output.stdout).unwrap()
    };
    zerotouch(&["put", "scripts", "--rights", "EnrollmentRead,RegistrationStatusRead"]);
    assert_eq!(zerotouch(&["list"]).trim(), "scripts\tEnrollmentRead, RegistrationStatusRead");
    let text = zerotouch(&["connection-string", "scripts"]);
    let fields: std::collections::HashMap<&str, &str> =
        text.trim().split(';').filter_map(|f| f.split_once('=')).collect();
    assert_eq!(fields.get("HostName"), Some(&"localhost"), "{text}");
    assert_eq!(fields.get("SharedAccessKeyName"), Some(&"scripts"), "{text}");
    let key = STANDARD.decode(text.trim().split("SharedAccessKey=").nth(1).unwrap()).unwrap();
    let token = sas::sign("localhost", now() + 600, &key, Some("scripts"));
    ok(call(&server, reqwest::Method::POST, "/enrollments/query", &token, Some(&json!({"query": "*"}))).await).await;
    let audit = ok(Api::new(&server, "owner").get("/audit").await).await;
    assert!(audit.as_array().unwrap().iter().any(|e| e["actor"] == "cli" && e["resourceId"] == "scripts"), "{audit}");

    let options = Options { args: vec!["--no-shared-access-policies".into()], ..Default::default() };
    let (_, server) = server.restart_with(Backend::Sqlite, options).await.unwrap();
    let query = json!({"query": "*"});
    let refused = call(&server, reqwest::Method::POST, "/enrollments/query", &token, Some(&query)).await;
    assert_refused(refused, 401, 401001, "policies turned off").await;
    assert!(server.logs().contains("--no-shared-access-policies"), "the log says why");
}

/// Paths name routes as Azure matches them (`docs/protocol/service-api.md` §2): literal segments in any case, a
/// trailing slash ignored, ids left as sent; a path that names no route is still 404001.
#[tokio::test]
async fn paths_match_routes_as_azure_matches_them() {
    let server = Server::start(Backend::Sqlite).await.unwrap();
    let owner = Api::new(&server, "owner");
    let group = json!({"enrollmentGroupId": "Case-Group", "attestation": {"type": "symmetricKey"}});
    ok(owner.put("/enrollmentGroups/Case-Group", &group).await).await;
    let mechanism = ok(owner.post("/enrollmentgroups/case-group/ATTESTATIONMECHANISM", None).await).await;
    assert_eq!(mechanism["type"], "symmetricKey", "{mechanism}");
    let bulk = json!({"mode": "create", "enrollments": [{"registrationId": "slash-1",
        "attestation": {"type": "symmetricKey"}}]});
    assert_eq!(ok(owner.post("/enrollments/", Some(&bulk)).await).await["isSuccessful"], true);
    let read = ok(owner.get("/ENROLLMENTS/Slash-1/").await).await;
    assert_eq!(read["registrationId"], "slash-1", "{read}");
    ok(owner.get("/hubs/").await).await;
    let missing = assert_refused(owner.get("/Enrollments/absent").await, 404, 404202, "an absent enrollment").await;
    assert!(missing["message"].as_str().unwrap().contains("does not exist"), "{missing}");
    for path in
        ["/enrollment/x", "/enrollments/x/y", "/enrollments//attestationmechanism", "/pki/crl/", "/registrations/"]
    {
        assert_refused(owner.get(path).await, 404, 404001, path).await;
    }
}
