//! `bench-scale`: the service's resident memory and its registration rate as the database grows to a million
//! enrollments and a million registrations (issue #21, targets 3 and 5), measured from outside on one fresh service
//! per database.
//!
//! Phases, each on the same service:
//! 1. `storm`: `--storm` devices (half individual enrollments, half one group), each on a new TLS connection,
//!    register and poll to `assigned`: the rate among few enrollments, the reference for the last phase.
//! 2. `import`: `--enrollments` individual enrollments with their keys, `--batch` per `POST /enrollments`, one
//!    call in flight (as an admin's import script sends them).
//! 3. `storm-among`: devices among those enrollments, half of them imported individual enrollments and half members
//!    of one more group, as many as bring the registrations to `--enrollments` once the last phase ran.
//! 4. `storm-last`: `--storm` more devices like those of phase 3: the rate among a million enrollments and a million
//!    registrations, against phase 1's in the same run.
//! 5. `query`: admin query pages deep into the group's registrations and into the enrollments (continuing from a
//!    key in the middle), each on a kept-alive connection, median and slowest of `--query-samples`.
//!
//! Memory comes from `/proc/PID/status` (`crate::memory`): the peak (`VmHWM`, set back to the current size as each
//! phase starts) and the steady state (`VmRSS` once the phase has settled for `--settle` seconds).

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use serde_json::{Value, json};
use zerotouch_tests::{Backend, Options, Server};

use crate::devices::{self, Device, Failures, Report, Target};
use crate::memory::{self, mb};

/// What a run does.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    /// The databases, one fresh service each.
    pub(crate) backends: Vec<Backend>,
    /// Individual enrollments imported in phase 2; also the registrations there are at the end.
    pub(crate) enrollments: usize,
    /// Devices of phases 1 and 4.
    pub(crate) storm: usize,
    /// Enrollments per bulk call.
    pub(crate) batch: usize,
    /// Devices in flight.
    pub(crate) concurrency: usize,
    /// How long each phase settles before its steady state is read.
    pub(crate) settle: Duration,
    /// Requests per deep query.
    pub(crate) query_samples: usize,
}

/// Memory of one phase, in bytes.
#[derive(Debug, Clone, Copy)]
struct PhaseMemory {
    peak: u64,
    steady: u64,
}

const GROUP: &str = "scale-group";

/// The imported individual enrollment `i`: its id and its key.
fn imported(i: usize) -> Device {
    let mut key = vec![0u8; 32];
    key[..8].copy_from_slice(&(i as u64).to_be_bytes());
    key[8..16].copy_from_slice(b"scale!!!");
    Device::new(format!("scale-{i:07}"), key)
}

/// Device `j` of phases 3 and 4: even ones the imported enrollment `j / 2`, odd ones member `j / 2` of [`GROUP`].
fn among(j: usize) -> Device {
    if j.is_multiple_of(2) {
        return imported(j / 2);
    }
    let id = format!("scale-g-{:07}", j / 2);
    let key = zerotouch_attest::sas::derive_device_key(&devices::group_key(), &id).to_vec();
    Device::new(id, key)
}

/// The body of one bulk call: imported enrollments `range`, each with both keys.
fn import_body(range: std::ops::Range<usize>) -> Value {
    let items: Vec<Value> = range
        .map(|i| {
            let device = imported(i);
            let key = STANDARD.encode(device.key());
            json!({
                "registrationId": device.registration_id(),
                "attestation": {"type": "symmetricKey", "symmetricKey": {"primaryKey": key, "secondaryKey": key}},
            })
        })
        .collect();
    json!({"mode": "create", "enrollments": items})
}

/// Runs `phase`: resets the service's peak, runs it, settles, and reads peak and steady state.
async fn measured<T>(
    pid: u32,
    settle: Duration,
    phase: impl Future<Output = anyhow::Result<T>>,
) -> anyhow::Result<(T, PhaseMemory)> {
    memory::reset_peak(pid)?;
    let result = phase.await?;
    let peak_during = memory::resident(pid)?.peak;
    tokio::time::sleep(settle).await;
    let after = memory::resident(pid)?;
    Ok((result, PhaseMemory { peak: peak_during.max(after.peak), steady: after.now }))
}

/// Imports `total` enrollments in calls of `batch`, one in flight; returns enrollments per second.
async fn import(server: &Server, token: &str, total: usize, batch: usize) -> anyhow::Result<f64> {
    let started = Instant::now();
    let mut next = 0;
    while next < total {
        let end = (next + batch.max(1)).min(total);
        let response = server
            .client
            .post(server.url("/enrollments"))
            .bearer_auth(token)
            .json(&import_body(next..end))
            .send()
            .await?;
        let status = response.status();
        let result: Value = response.json().await?;
        if !status.is_success() || result["isSuccessful"] != json!(true) {
            bail!(
                "bulk call {next}..{end} failed: {status} {}",
                result.to_string().chars().take(500).collect::<String>()
            );
        }
        next = end;
    }
    Ok(total as f64 / started.elapsed().as_secs_f64().max(f64::EPSILON))
}

/// Latencies of a query page, in milliseconds, sorted.
async fn query_page(
    server: &Server,
    token: &str,
    path: &str,
    body: &Value,
    after: &str,
    samples: usize,
) -> anyhow::Result<Vec<f64>> {
    let mut times = Vec::new();
    for _ in 0..samples.max(1) {
        let started = Instant::now();
        let response = server
            .client
            .post(server.url(path))
            .bearer_auth(token)
            .header("x-ms-continuation", URL_SAFE_NO_PAD.encode(after))
            .header("x-ms-max-item-count", "100")
            .json(body)
            .send()
            .await?;
        let status = response.status();
        let items: Value = response.json().await?;
        times.push(started.elapsed().as_secs_f64() * 1000.0);
        let count = items.as_array().map_or(0, Vec::len);
        if !status.is_success() || count != 100 {
            bail!("{path} after {after:?}: {status}, {count} items");
        }
    }
    times.sort_by(f64::total_cmp);
    Ok(times)
}

fn storm_line(report: &Report) -> String {
    format!("devices_per_s={:.0} p99_ms={:.1}", report.rate(), report.quantile_ms(0.99))
}

/// One run on `backend`.
async fn once(backend: Backend, settings: &Settings, failures: &mut Failures) -> anyhow::Result<()> {
    let Settings { enrollments, storm, batch, concurrency, settle, query_samples, .. } = *settings;
    let options = Options {
        env: vec![("ZEROTOUCH_LOG".into(), "warn".into())],
        args: vec!["--device-max-in-flight".into(), "4096".into()],
        ..Default::default()
    };
    let server = Server::start_with(backend, options).await?;
    let pid = server.pid().context("the service is not running")?;
    let token = server.token("owner")?;
    let target: Target = devices::target_of(&server, token.clone())?;
    tokio::time::sleep(settle).await;
    let start = memory::resident(pid)?;
    println!("  {backend:?}: started: steady_mb={:.1} peak_mb={:.1}", mb(start.now), mb(start.peak));
    let mut phases: Vec<(&str, PhaseMemory)> = Vec::new();

    // 1. A storm among few enrollments.
    let (small, memory) = measured(pid, settle, async {
        let enrolled = devices::enroll(&target, "small", storm).await?;
        devices::run(&target, &enrolled, concurrency).await
    })
    .await?;
    failures.note(format!("{backend:?} storm"), &small);
    println!("  {backend:?}: storm of {storm}: {}", small.summary());
    phases.push(("storm", memory));

    // 2. The import.
    let admin = reqwest::Client::builder().use_preconfigured_tls(devices::tls_config(&target.trust_bundle)?).build()?;
    devices::create_group(&admin, &target, GROUP).await?;
    let (import_rate, memory) = measured(pid, settle, import(&server, &token, enrollments, batch)).await?;
    println!("  {backend:?}: import of {enrollments} in calls of {batch}: {import_rate:.0}/s");
    phases.push(("import", memory));

    // 3. A storm among them, up to `enrollments` registrations in all after phase 4.
    let big = enrollments.saturating_sub(2 * storm);
    if (big + storm).div_ceil(2) > enrollments {
        bail!("--enrollments {enrollments} is too few for storms of {storm}");
    }
    let among_devices: Vec<Device> = (0..big).map(among).collect();
    let (large, memory) = measured(pid, settle, devices::run(&target, &among_devices, concurrency)).await?;
    drop(among_devices);
    failures.note(format!("{backend:?} storm among the import"), &large);
    println!("  {backend:?}: storm of {big} among {enrollments}: {}", large.summary());
    phases.push(("storm-among", memory));

    // 4. The last storm, among a million enrollments and registrations.
    let last_devices: Vec<Device> = (big..big + storm).map(among).collect();
    let (last, memory) = measured(pid, settle, devices::run(&target, &last_devices, concurrency)).await?;
    failures.note(format!("{backend:?} last storm"), &last);
    println!("  {backend:?}: last storm of {storm}: {}", last.summary());
    phases.push(("storm-last", memory));

    // 5. Deep query pages: from the middle of the group's registrations, and of the enrollments.
    let (group_times, memory) = measured(pid, Duration::ZERO, async {
        let middle = among(((big + storm) / 2) | 1);
        let registrations = query_page(
            &server,
            &token,
            &format!("/registrations/{GROUP}/query"),
            &json!({}),
            middle.registration_id(),
            query_samples,
        )
        .await?;
        let enrollment_middle = imported(enrollments / 2);
        let enrollment_pages = query_page(
            &server,
            &token,
            "/enrollments/query",
            &json!({"query": "SELECT * FROM enrollments"}),
            enrollment_middle.registration_id(),
            query_samples,
        )
        .await?;
        Ok((registrations, enrollment_pages))
    })
    .await?;
    phases.push(("query", memory));
    let (registration_pages, enrollment_pages) = group_times;
    let quantile = |times: &[f64], q: f64| {
        times.get(((times.len().saturating_sub(1)) as f64 * q).round() as usize).copied().unwrap_or_default()
    };

    for (phase, memory) in &phases {
        println!(
            "RESULT scale backend={backend:?} phase={phase} peak_mb={:.1} steady_mb={:.1}",
            mb(memory.peak),
            mb(memory.steady)
        );
    }
    let peak = phases.iter().map(|(_, m)| m.peak).max().unwrap_or_default();
    println!(
        "RESULT scale backend={backend:?} enrollments={enrollments} registrations={} storm={storm} \
         concurrency={concurrency} peak_mb={:.1} start_mb={:.1} import_per_s={import_rate:.0} \
         storm: {} | among: {} | last: {} | last_to_storm_ratio={:.2} \
         deep_registration_page_ms: median={:.1} max={:.1} deep_enrollment_page_ms: median={:.1} max={:.1}",
        small.assigned + large.assigned + last.assigned,
        mb(peak),
        mb(start.now),
        storm_line(&small),
        storm_line(&large),
        storm_line(&last),
        last.rate() / small.rate().max(f64::EPSILON),
        quantile(&registration_pages, 0.5),
        quantile(&registration_pages, 1.0),
        quantile(&enrollment_pages, 0.5),
        quantile(&enrollment_pages, 1.0),
    );
    Ok(())
}

/// Runs every backend of `settings` once.
pub(crate) async fn bench(settings: &Settings) -> anyhow::Result<()> {
    let mut failures = Failures::default();
    for &backend in &settings.backends {
        once(backend, settings, &mut failures).await.with_context(|| format!("{backend:?}"))?;
    }
    failures.check()
}
