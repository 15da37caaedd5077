//! `bench-hubs`: devices registered end to end onto a real Mosquitto broker (registration, certificate from a CSR,
//! dynsec identity on the broker before `assigned`), against the same devices with a hub of kind `none`, in the
//! same run.

use std::sync::Arc;

use anyhow::{Context, bail};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use zerotouch_tests::mosquitto::Broker;
use zerotouch_tests::{Backend, Server};

use crate::devices::{self, Report};
use crate::issuance::generate_csrs;

/// One run: a fresh server (and, with `mosquitto`, a fresh broker linked as its only hub), `devices` enrolled
/// and registered at `concurrency`. Checks that the broker holds exactly one identity per device.
async fn once(
    backend: Backend,
    devices: &[devices::Device],
    prefix: &str,
    concurrency: usize,
    mosquitto: bool,
) -> anyhow::Result<Report> {
    let server = Server::start_with(backend, crate::issuance::server_options()).await?;
    let token = server.token("owner")?;
    let target = devices::target_of(&server, token)?;
    let broker = if mosquitto {
        let broker = Broker::start(&server, "bench-mqtt.example.com");
        let response = server
            .client
            .put(server.url("/hubs/bench-mqtt.example.com"))
            .bearer_auth(&target.token)
            .json(&broker.hub_document())
            .send()
            .await?;
        if !response.status().is_success() {
            bail!("cannot link the broker: {} {}", response.status(), response.text().await?);
        }
        Some(broker)
    } else {
        None
    };
    let enrolled = devices::enroll(&target, prefix, devices.len()).await?;
    if enrolled.iter().zip(devices).any(|(a, b)| a.registration_id() != b.registration_id()) {
        bail!("prepared devices do not match the enrollments");
    }
    let report = devices::run(&target, devices, concurrency).await?;
    if let Some(broker) = &broker {
        // The plugin's own file (rewritten after every change): `mosquitto_ctrl listClients` times out on a broker
        // this size.
        let file = broker.process.dir.path().join("dynamic-security.json");
        let config: serde_json::Value = serde_json::from_slice(&std::fs::read(&file)?)?;
        let names: Vec<&str> = config["clients"]
            .as_array()
            .map(|clients| clients.iter().filter_map(|c| c["username"].as_str()).collect())
            .unwrap_or_default();
        let ours = names.iter().filter(|name| name.starts_with(prefix)).count();
        let distinct = names.iter().filter(|name| name.starts_with(prefix)).collect::<std::collections::HashSet<_>>();
        if ours != report.assigned || distinct.len() != ours {
            bail!(
                "{} devices assigned but {ours} identities ({} distinct) on the broker",
                report.assigned,
                distinct.len()
            );
        }
    }
    Ok(report)
}

/// Runs `runs` rounds of (no hub, Mosquitto) per backend and prints medians.
pub(crate) async fn bench(backends: &[Backend], count: usize, concurrency: usize, runs: usize) -> anyhow::Result<()> {
    let prefix = "hubbench";
    let csrs = generate_csrs(count, |i| devices::prepared_id(prefix, i)).context("CSRs")?;
    let prepared: Arc<Vec<devices::Device>> = Arc::new(
        devices::prepared(prefix, count)
            .into_iter()
            .zip(&csrs)
            .map(|(device, csr)| device.with_csr(STANDARD.encode(&csr.der)))
            .collect(),
    );
    let mut failures = devices::Failures::default();
    for &backend in backends {
        let (mut none, mut mqtt) = (Vec::new(), Vec::new());
        for run in 1..=runs {
            let without = once(backend, &prepared, prefix, concurrency, false).await?;
            println!("  {backend:?}: run {run}: hub none: {}", without.summary());
            let with = once(backend, &prepared, prefix, concurrency, true).await?;
            println!("  {backend:?}: run {run}: hub mosquitto: {}", with.summary());
            failures.note(format!("{backend:?} run {run} with hub none"), &without);
            failures.note(format!("{backend:?} run {run} with Mosquitto"), &with);
            none.push(without);
            mqtt.push(with);
        }
        let median =
            |reports: &[Report], f: &dyn Fn(&Report) -> f64| crate::bulk::median(reports.iter().map(f).collect());
        let rate = |r: &Report| r.rate();
        let p99 = |r: &Report| r.quantile_ms(0.99);
        let errors = |reports: &[Report]| reports.iter().map(|r| r.errors.values().sum::<usize>()).sum::<usize>();
        println!(
            "RESULT hubs backend={backend:?} devices={count} concurrency={concurrency} with_csr \
             mosquitto: median_per_s={:.0} median_p99_ms={:.1} errors={} | none: median_per_s={:.0} \
             median_p99_ms={:.1} errors={} | ratio={:.2}",
            median(&mqtt, &rate),
            median(&mqtt, &p99),
            errors(&mqtt),
            median(&none, &rate),
            median(&none, &p99),
            errors(&none),
            median(&mqtt, &rate) / median(&none, &rate).max(f64::EPSILON),
        );
    }
    failures.check()
}
