//! `zerotouch import-azure`: moves the enrollments and enrollment groups of an Azure DPS export into a zerotouch
//! deployment through its admin API (so it works against a remote one), and says per document what did not carry
//! over.
//!
//! Each document is made fit by `zerotouch_wire::azure_import::translate` (pure, tested there); those it does not
//! refuse go to the bulk routes (`POST /enrollments`, `POST /enrollmentGroups`, 1,000 at a time), where the
//! server's own checks apply and each refused item comes back with its reason. A client of the admin API like any
//! other: it holds no database or key of the service, and the token it is given decides what it may do.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::Context as _;
use serde_json::{Value, json};
use zerotouch_wire::azure_import::{self, Context, Severity, Translated};
use zerotouch_wire::enrollment::EnrollmentKind;

use crate::config::ImportAzureArgs;

/// Documents per bulk call: well under the server's 10,000, so one call's body stays small.
const CHUNK: usize = 1_000;

/// What became of one document.
struct Outcome {
    translated: Translated,
    /// Why the server refused it, if it did.
    refused_by_server: Option<String>,
}

impl Outcome {
    fn imported(&self) -> bool {
        self.translated.importable() && self.refused_by_server.is_none()
    }
}

/// Runs the command: prints one block per document and a summary to stdout; an error when any document was not
/// imported (the exit status is then non-zero).
pub async fn import_azure(args: ImportAzureArgs) -> anyhow::Result<()> {
    let token = zeroize::Zeroizing::new(
        std::fs::read_to_string(&args.token_file)
            .with_context(|| format!("reading the token file {}", args.token_file.display()))?
            .trim()
            .to_owned(),
    );
    let admin = Admin::new(&args, token)?;
    let mut items = Vec::new();
    for file in &args.files {
        items.extend(read_export(file)?);
    }
    let known_hubs = admin.hubs().await?;
    let context = Context {
        hub_map: args.hub_map.iter().cloned().collect(),
        known_hubs,
        generate_missing_keys: args.generate_missing_keys,
        certificates: certificates_by_thumbprint(&args.certificates)?,
    };
    let mut outcomes: Vec<Outcome> = items
        .iter()
        .map(|item| Outcome { translated: azure_import::translate(item, &context), refused_by_server: None })
        .collect();
    if !args.dry_run {
        for kind in [EnrollmentKind::Individual, EnrollmentKind::Group] {
            let chosen: Vec<usize> = (0..outcomes.len())
                .filter(|&i| outcomes[i].translated.kind == kind && outcomes[i].translated.importable())
                .collect();
            for chunk in chosen.chunks(CHUNK) {
                let documents: Vec<&Value> = chunk.iter().map(|&i| &outcomes[i].translated.document).collect();
                for (index, why) in admin.bulk(kind, &args.mode, &documents).await? {
                    if let Some(&i) = chunk.get(index) {
                        outcomes[i].refused_by_server = Some(why);
                    }
                }
            }
        }
    }
    let imported = outcomes.iter().filter(|o| o.imported()).count();
    print!("{}", report(&outcomes, args.dry_run));
    let failed = outcomes.len() - imported;
    if failed > 0 {
        anyhow::bail!("{failed} of {} documents were not imported", outcomes.len());
    }
    Ok(())
}

/// The documents of one export file.
fn read_export(file: &Path) -> anyhow::Result<Vec<Value>> {
    let text = std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    let export: Value = serde_json::from_str(&text).with_context(|| format!("{} is not JSON", file.display()))?;
    azure_import::documents(export).map_err(|why| anyhow::anyhow!("{}: {why}", file.display()))
}

/// The certificates of `files` (PEM) by their SHA-256 and SHA-1 thumbprints, upper-case hex.
fn certificates_by_thumbprint(
    files: &[std::path::PathBuf],
) -> anyhow::Result<std::collections::BTreeMap<String, String>> {
    let mut found = std::collections::BTreeMap::new();
    for file in files {
        let text = std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
        let certificates =
            zerotouch_pki::certificates_from_pem(&text).map_err(|why| anyhow::anyhow!("{}: {why}", file.display()))?;
        for der in certificates {
            let pem = zerotouch_pki::certificate_pem(&der);
            found.insert(zerotouch_pki::thumbprint_sha256_hex(&der).to_ascii_uppercase(), pem.clone());
            found.insert(zerotouch_pki::thumbprint_sha1_hex(&der).to_ascii_uppercase(), pem);
        }
    }
    Ok(found)
}

/// The report: per document its outcome and notes, then a summary line.
fn report(outcomes: &[Outcome], dry_run: bool) -> String {
    let mut out = String::new();
    for outcome in outcomes {
        let t = &outcome.translated;
        let verdict = match (&outcome.refused_by_server, t.importable(), dry_run) {
            (Some(why), _, _) => format!("not imported: {why}"),
            (None, false, _) => "not imported".to_owned(),
            (None, true, true) => "importable (dry run)".to_owned(),
            (None, true, false) => "imported".to_owned(),
        };
        let _ = writeln!(out, "{} {:?}: {verdict}", t.kind.noun(), t.id);
        for note in &t.notes {
            let label = match note.severity {
                Severity::Refused => "refused",
                Severity::Changed => "changed",
            };
            let _ = writeln!(out, "  {label}: {}: {}", note.field, note.text);
        }
    }
    let imported = outcomes.iter().filter(|o| o.imported() && !dry_run).count();
    let importable = outcomes.iter().filter(|o| o.imported()).count();
    let _ = if dry_run {
        writeln!(out, "{importable} of {} documents can be imported (dry run: nothing was created)", outcomes.len())
    } else {
        writeln!(out, "{imported} of {} documents imported", outcomes.len())
    };
    out
}

/// The admin API of the deployment.
struct Admin {
    client: reqwest::Client,
    base: String,
    token: zeroize::Zeroizing<String>,
}

impl Admin {
    /// A client of the admin API at `args.url`: https, or plain http to a loopback address only (the token would
    /// cross the network in the clear).
    fn new(args: &ImportAzureArgs, token: zeroize::Zeroizing<String>) -> anyhow::Result<Self> {
        let url = reqwest::Url::parse(&args.url).with_context(|| format!("--url {:?} is not a URL", args.url))?;
        let host = url.host_str().unwrap_or_default().trim_start_matches('[').trim_end_matches(']');
        let loopback =
            host.eq_ignore_ascii_case("localhost") || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback());
        match url.scheme() {
            "https" => {}
            "http" if loopback => {}
            other => anyhow::bail!("--url must be https (plain http only to a loopback address), not {other}"),
        }
        let mut builder = reqwest::Client::builder().use_rustls_tls().timeout(std::time::Duration::from_secs(120));
        if let Some(ca_file) = &args.ca_file {
            let pem = std::fs::read(ca_file).with_context(|| format!("reading {}", ca_file.display()))?;
            for certificate in reqwest::Certificate::from_pem_bundle(&pem)
                .with_context(|| format!("{} holds no PEM certificate", ca_file.display()))?
            {
                builder = builder.add_root_certificate(certificate);
            }
        }
        Ok(Self {
            client: builder.build().context("building the HTTPS client")?,
            base: args.url.trim_end_matches('/').to_owned(),
            token,
        })
    }

    async fn send(&self, request: reqwest::RequestBuilder, what: &str) -> anyhow::Result<Value> {
        let response = request.bearer_auth(self.token.as_str()).send().await.with_context(|| what.to_owned())?;
        let status = response.status();
        let body: Value = response.json().await.unwrap_or(Value::Null);
        if !status.is_success() {
            let message = body.get("message").and_then(Value::as_str).unwrap_or_default();
            anyhow::bail!("{what}: the admin API answered {status} {message}");
        }
        Ok(body)
    }

    /// The host names of the deployment's hubs, lower-case.
    async fn hubs(&self) -> anyhow::Result<Vec<String>> {
        let body = self.send(self.client.get(format!("{}/hubs", self.base)), "listing the hubs").await?;
        Ok(body
            .as_array()
            .map(|hubs| hubs.iter().filter_map(|h| h["hostName"].as_str()).map(|h| h.to_ascii_lowercase()).collect())
            .unwrap_or_default())
    }

    /// One bulk call; the index (in `documents`) and reason of each document the server refused.
    async fn bulk(
        &self,
        kind: EnrollmentKind,
        mode: &str,
        documents: &[&Value],
    ) -> anyhow::Result<Vec<(usize, String)>> {
        let collection = match kind {
            EnrollmentKind::Individual => "enrollments",
            EnrollmentKind::Group => "enrollmentGroups",
        };
        let body = json!({ "mode": mode, collection: documents });
        let what = format!("creating {} {collection}", documents.len());
        let answer = self.send(self.client.post(format!("{}/{collection}", self.base)).json(&body), &what).await?;
        let errors = answer["errors"].as_array().cloned().unwrap_or_default();
        Ok(errors
            .iter()
            .filter_map(|e| {
                let index = usize::try_from(e["index"].as_u64()?).ok()?;
                let why = format!("{} {}", e["errorCode"], e["errorStatus"].as_str().unwrap_or_default());
                Some((index, why))
            })
            .collect())
    }
}
