//! Benchmarks and load generator for zerotouch: drives the real binary over its real APIs and prints figures.
//!
//! - `bulk-import`: imports N enrollments through `POST /enrollments` in calls of `--batch` items, on a fresh
//!   service per run, and again in calls of 10 (the Azure DPS bulk limit) for comparison in the same run.
//! - `devices`: against a running server, creates N enrollments (half individual, half one symmetric-key group)
//!   and runs N devices at concurrency C, each on its own new TLS connection: register, poll until assigned.
//!   Reports devices/s, latency to assigned (p50/p90/p99/max) and every error by code.
//!   With `--transport mqtt` the devices provision over the MQTT endpoint instead (`mqtt.rs`).
//! - `bench-devices`: starts a fresh service per backend and runs the TLS-handshake ceiling and `devices`, over
//!   HTTPS and over MQTT in the same run (other devices, same server), side by side.
//! - `bench-issuance`: CSR-to-certificate issuance over HTTPS, ours (EST `simpleenroll`, persisted) against cfssl's
//!   `/api/v1/cfssl/sign` on the same CSRs in the same run; and registration with a CSR per device next to
//!   registration without one.
//! - `bench-replicas`: 1, 2, 3 replicas on one PostgreSQL behind HAProxy in TCP mode, fresh per run, each device on
//!   a new TLS connection; devices/s and the CPU of one registration in the replicas, PostgreSQL, HAProxy and the
//!   load generator (`replicas.rs`, `cpu.rs`).
//! - `bench-scale`: the service's peak and steady resident memory through a device storm, an import of a million
//!   enrollments and a storm among them, the registration rate among a million enrollments and registrations
//!   against the rate among few, and admin query pages deep into them (`scale.rs`, `memory.rs`).

mod bulk;
mod cpu;
mod devices;
mod hubs;
mod issuance;
mod memory;
mod mqtt;
mod replicas;
mod scale;

use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use zerotouch_tests::{Backend, Options, Server};

use crate::cpu::{PerOperation, Phase, slice_ranges};

#[derive(Debug, Parser)]
#[command(name = "zerotouch-loadgen", about = "Benchmarks and load generator for zerotouch")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum BackendArg {
    Sqlite,
    Postgres,
}

impl From<BackendArg> for Backend {
    fn from(arg: BackendArg) -> Self {
        match arg {
            BackendArg::Sqlite => Backend::Sqlite,
            BackendArg::Postgres => Backend::Postgres,
        }
    }
}

/// How simulated devices reach the service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum TransportArg {
    /// The HTTPS device API.
    Https,
    /// The MQTT device endpoint.
    Mqtt,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Bulk import of enrollments through the admin API.
    BulkImport {
        /// Which databases to measure.
        #[arg(long, value_enum, num_args = 1.., default_values = ["sqlite", "postgres"])]
        backend: Vec<BackendArg>,
        /// Enrollments per run.
        #[arg(long, default_value_t = 100_000)]
        enrollments: usize,
        /// Items per bulk call.
        #[arg(long, default_value_t = 1_000)]
        batch: usize,
        /// Bulk calls in flight.
        #[arg(long, default_value_t = 4)]
        concurrency: usize,
        /// Runs per configuration (the median is reported).
        #[arg(long, default_value_t = 3)]
        runs: usize,
        /// Enrollments imported in the Azure-limit comparison (calls of 10 items); 0 leaves it out.
        #[arg(long, default_value_t = 20_000)]
        azure_limit_enrollments: usize,
        /// Each enrollment carries its symmetric keys (as an import from a factory's records does) instead of
        /// leaving them to the service to generate.
        #[arg(long)]
        client_keys: bool,
    },
    /// Simulated devices against a running server.
    Devices {
        /// The device API, e.g. https://127.0.0.1:8443.
        #[arg(long)]
        device_url: String,
        /// The admin API, e.g. https://127.0.0.1:8444.
        #[arg(long)]
        admin_url: String,
        /// An owner token (`zerotouch admin-token`): it links hubs when there are none, and creates enrollments.
        #[arg(long, env = "ZEROTOUCH_TOKEN")]
        token: String,
        /// The trust bundle (PEM).
        #[arg(long)]
        trust_bundle: std::path::PathBuf,
        /// The id scope.
        #[arg(long)]
        id_scope: String,
        /// How many devices.
        #[arg(long, default_value_t = 10_000)]
        devices: usize,
        /// Devices in flight.
        #[arg(long, default_value_t = 64)]
        concurrency: usize,
        /// Registration id prefix (new enrollments are created under it).
        #[arg(long, default_value = "loadgen")]
        prefix: String,
        /// HTTPS (the device API at --device-url) or MQTT (the endpoint at --mqtt-addr).
        #[arg(long, value_enum, default_value = "https")]
        transport: TransportArg,
        /// The MQTT endpoint, e.g. 127.0.0.1:8883 (for --transport mqtt).
        #[arg(long)]
        mqtt_addr: Option<std::net::SocketAddr>,
        /// Instead of devices, `--devices` new TLS connections with this many `GET /healthz` each (the phases
        /// `bench-devices` compares registrations with: 1 is the TLS-handshake ceiling), to profile one alone.
        /// Over HTTPS only: the connections are those of the device API at --device-url.
        #[arg(long, conflicts_with_all = ["transport", "mqtt_addr"])]
        healthz: Option<std::num::NonZeroUsize>,
    },
    /// Fresh service per backend: TLS-handshake ceiling, then simulated devices.
    BenchDevices {
        /// Which databases to measure.
        #[arg(long, value_enum, num_args = 1.., default_values = ["sqlite", "postgres"])]
        backend: Vec<BackendArg>,
        /// Devices per run.
        #[arg(long, default_value_t = 20_000)]
        devices: usize,
        /// Devices (and handshakes) in flight.
        #[arg(long, default_value_t = 64)]
        concurrency: usize,
        /// Runs per backend (the median is reported).
        #[arg(long, default_value_t = 3)]
        runs: usize,
        /// Transports measured in each run, on the same server with their own devices.
        #[arg(long, value_enum, num_args = 1.., default_values = ["https", "mqtt"])]
        transport: Vec<TransportArg>,
        /// Slices per run: the ceiling, the two-request connections and each transport take turns, a slice of each
        /// at a time, so that the machine's drift during the run falls on all of them alike (1: one after another).
        #[arg(long, default_value_t = 5)]
        slices: usize,
    },
    /// Fresh services per run: devices with CSRs registered onto a real Mosquitto broker (dynsec identity before
    /// `assigned`) against the same devices on a hub of kind `none`.
    BenchHubs {
        /// Which databases to measure.
        #[arg(long, value_enum, num_args = 1.., default_values = ["sqlite", "postgres"])]
        backend: Vec<BackendArg>,
        /// Devices per run.
        #[arg(long, default_value_t = 10_000)]
        devices: usize,
        /// Devices in flight.
        #[arg(long, default_value_t = 64)]
        concurrency: usize,
        /// Runs per backend (the median is reported).
        #[arg(long, default_value_t = 3)]
        runs: usize,
    },
    /// Fresh replicas per run on one PostgreSQL behind HAProxy (TCP): devices, each on a new TLS connection,
    /// through 1, 2, 3 replicas in one run, and the CPU each registration costs (replicas, PostgreSQL, HAProxy).
    BenchReplicas {
        /// Replica counts measured in each run.
        #[arg(long, num_args = 1.., default_values_t = [1, 2, 3])]
        replicas: Vec<usize>,
        /// Devices per configuration and run.
        #[arg(long, default_value_t = 10_000)]
        devices: usize,
        /// Devices in flight.
        #[arg(long, default_value_t = 64)]
        concurrency: usize,
        /// Runs (the median is reported).
        #[arg(long, default_value_t = 3)]
        runs: usize,
    },
    /// A fresh service per backend: resident memory (peak and steady) through a storm, an import of
    /// `--enrollments` and storms among them; registration rate among them against the first storm's; deep query
    /// pages.
    BenchScale {
        /// Which databases to measure.
        #[arg(long, value_enum, num_args = 1.., default_values = ["sqlite", "postgres"])]
        backend: Vec<BackendArg>,
        /// Individual enrollments imported (and registrations there are at the end).
        #[arg(long, default_value_t = 1_000_000)]
        enrollments: usize,
        /// Devices of the first and the last storm.
        #[arg(long, default_value_t = 20_000)]
        storm: usize,
        /// Enrollments per bulk call (one call in flight).
        #[arg(long, default_value_t = 10_000)]
        batch: usize,
        /// Devices in flight.
        #[arg(long, default_value_t = 64)]
        concurrency: usize,
        /// Seconds each phase settles before its steady resident size is read.
        #[arg(long, default_value_t = 5)]
        settle: u64,
        /// Requests per deep query page.
        #[arg(long, default_value_t = 20)]
        query_samples: usize,
    },
    /// Fresh services per run: certificates from CSRs, ours (EST) against cfssl (`cfssl` on PATH, or `CFSSL_BIN`),
    /// taking turns in slices; then registrations with and without a CSR, taking turns on one service.
    BenchIssuance {
        /// Which databases ours runs on.
        #[arg(long, value_enum, num_args = 1.., default_values = ["sqlite", "postgres"])]
        backend: Vec<BackendArg>,
        /// CSRs (P-256) each issuer signs per run.
        #[arg(long, default_value_t = 20_000)]
        csrs: usize,
        /// Devices per registration run, with and without CSR (0 skips them).
        #[arg(long, default_value_t = 20_000)]
        devices: usize,
        /// Connections (issuance) and devices in flight (registration).
        #[arg(long, default_value_t = 64)]
        concurrency: usize,
        /// Runs (the median is reported).
        #[arg(long, default_value_t = 3)]
        runs: usize,
        /// cfssl configurations: nothing kept (its default), or each certificate in its SQLite certdb.
        #[arg(long, value_enum, num_args = 1.., default_values = ["memory", "sqlite"])]
        cfssl: Vec<issuance::CfsslStore>,
        /// Slices per run: the issuers take turns, a slice of the CSRs each at a time, and so do registrations
        /// without and with a CSR, so that the machine's drift falls on both sides of a ratio (1: one after another).
        #[arg(long, default_value_t = 5)]
        slices: usize,
    },
}

/// One run of `bench-devices`: the ceiling, the same with two exchanges per connection, and each transport with its
/// own devices, on one server. The phases take turns, a slice of each at a time (`slices` of them, `count / slices`
/// devices or connections each), so that the machine's drift, which moves its speed by a fifth or more within a
/// minute on the virtual machines this runs on, falls on all of them alike. Returns the ceiling's rate, the two
/// requests' rate, and the transports' reports in order, each with its CPU time per handshake or device.
async fn bench_devices_once(
    backend: Backend,
    count: usize,
    concurrency: usize,
    slices: usize,
    transports: &[TransportArg],
    failures: &mut devices::Failures,
) -> anyhow::Result<((f64, PerOperation), (f64, PerOperation), Vec<(devices::Report, PerOperation)>)> {
    let options = Options {
        env: vec![("ZEROTOUCH_LOG".into(), "warn".into())],
        args: vec!["--device-max-in-flight".into(), "4096".into()],
        ..Default::default()
    };
    let server = Server::start_with(backend, options).await?;
    let target = devices::target_of(&server, server.token("owner")?)?;
    let mut enrolled = Vec::new();
    for transport in transports {
        enrolled.push(devices::enroll(&target, &format!("bench-{transport:?}").to_lowercase(), count).await?);
    }
    let pids = [server.pid().context("the service is not running")?];
    let (mut ceiling, mut two) = (Phase::default(), Phase::default());
    let mut phases: Vec<Phase> = transports.iter().map(|_| Phase::default()).collect();
    for range in slice_ranges(count, slices) {
        ceiling.slice(&pids, devices::healthz_connections(&target, range.len(), concurrency, 1)).await?;
        // What a second exchange on the connection costs by itself: a device's register and poll are two.
        two.slice(&pids, devices::healthz_connections(&target, range.len(), concurrency, 2)).await?;
        for ((phase, transport), devices) in phases.iter_mut().zip(transports).zip(&enrolled) {
            phase.slice(&pids, run_devices(&target, &devices[range.clone()], concurrency, *transport)).await?;
        }
    }
    let (ceiling_cpu, two_cpu) = (ceiling.cost(), two.cost());
    println!("  {backend:?}: TLS handshake + GET /healthz: {} {}", ceiling.report.summary(), ceiling_cpu.text());
    failures.note(format!("{backend:?} TLS ceiling"), &ceiling.report);
    println!("  {backend:?}: TLS handshake + 2 x GET /healthz: {} {}", two.report.summary(), two_cpu.text());
    failures.note(format!("{backend:?} two requests per connection"), &two.report);
    let mut reports = Vec::new();
    for (phase, transport) in phases.into_iter().zip(transports) {
        let cpu = phase.cost();
        println!("  {backend:?}: devices over {transport:?}: {} {}", phase.report.summary(), cpu.text());
        reports.push((phase.report, cpu));
    }
    Ok(((ceiling.report.rate(), ceiling_cpu), (two.report.rate(), two_cpu), reports))
}

/// What a registration over HTTPS costs the machine beyond what no registration can leave out, its new TLS
/// connection and two exchanges on it (a register and a poll), against what a registration may cost at 0.8 of the
/// TLS ceiling (machine time per device up to the ceiling's over 0.8, when the machine's CPUs are the limit); and
/// the parts of that extra: the database's CPU per device (all of it is extra: a `GET /healthz` reads nothing), the
/// rest of the service's, and the load generator's. Last, the ratio to the ceiling as the product of its two
/// factors ([`RatioFactors`]): what the machine spends per handshake over what it spends per registration, and how
/// busy the registrations kept its CPUs over how busy the handshakes did.
fn registration_cost(
    backend: Backend,
    ceiling: &PerOperation,
    two: &PerOperation,
    https: &PerOperation,
    factors: RatioFactors,
) -> String {
    format!(
        "RESULT registration_cost backend={backend:?} extra_machine_us={:.0} budget_at_0.8_us={:.0} \
         database_us={:.0} other_service_us={:.0} client_us={:.0} cpu_factor={:.3} busy_factor={:.3}",
        https.machine - two.machine,
        ceiling.machine / 0.8 - two.machine,
        https.database,
        https.service - https.database - two.service,
        https.client - two.client,
        factors.cpu,
        factors.busy
    )
}

/// A ratio of two phases' rates, `devices` over `ceiling`, as the product of two factors. A phase's rate is how
/// many CPUs it kept busy over the machine time one of its operations costs, so the ratio is `cpu` (machine time
/// per ceiling operation over machine time per device) times `busy` (the CPUs the devices kept busy over those
/// the ceiling kept busy). A registration can fall short of 0.8 by costing too much CPU, or by leaving CPUs idle
/// while devices wait for their batches: `registration_cost` tells which.
#[derive(Debug, Clone, Copy, PartialEq)]
struct RatioFactors {
    cpu: f64,
    busy: f64,
}

impl RatioFactors {
    /// The factors of a run: each phase's rate (operations per second) and machine time per operation.
    fn of(ceiling_rate: f64, ceiling: &PerOperation, devices_rate: f64, devices: &PerOperation) -> Self {
        let busy_cpus = |rate: f64, cost: &PerOperation| rate * cost.machine / 1e6;
        Self {
            cpu: ceiling.machine / devices.machine.max(f64::MIN_POSITIVE),
            busy: busy_cpus(devices_rate, devices) / busy_cpus(ceiling_rate, ceiling).max(f64::MIN_POSITIVE),
        }
    }

    /// The median of each factor over `runs`.
    fn median(runs: &[Self]) -> Self {
        Self {
            cpu: bulk::median(runs.iter().map(|f| f.cpu).collect()),
            busy: bulk::median(runs.iter().map(|f| f.busy).collect()),
        }
    }
}

async fn run_devices(
    target: &devices::Target,
    enrolled: &[devices::Device],
    concurrency: usize,
    transport: TransportArg,
) -> anyhow::Result<devices::Report> {
    match transport {
        TransportArg::Https => devices::run(target, enrolled, concurrency).await,
        TransportArg::Mqtt => mqtt::run(target, enrolled, concurrency).await,
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    zerotouch_tests::init();
    match Cli::parse().command {
        Command::BulkImport {
            backend,
            enrollments,
            batch,
            concurrency,
            runs,
            azure_limit_enrollments,
            client_keys,
        } => {
            for backend in backend {
                let import = bulk::Import { total: enrollments, batch, concurrency, client_keys };
                bulk::measure(backend.into(), &import, runs).await?;
                if azure_limit_enrollments > 0 {
                    let azure_limit = bulk::Import { total: azure_limit_enrollments, batch: 10, ..import };
                    bulk::measure(backend.into(), &azure_limit, runs).await?;
                }
            }
        }
        Command::Devices {
            device_url,
            admin_url,
            token,
            trust_bundle,
            id_scope,
            devices: count,
            concurrency,
            prefix,
            transport,
            mqtt_addr,
            healthz,
        } => {
            let trust_bundle = std::fs::read(&trust_bundle)?;
            let target = devices::Target { device_url, admin_url, token, trust_bundle, id_scope, mqtt_addr };
            if let Some(requests) = healthz {
                let report = devices::healthz_connections(&target, count, concurrency, requests.get()).await?;
                println!(
                    "RESULT healthz={requests} connections={count} concurrency={concurrency} completed={} \
                     connections_per_s={:.0} p50_ms={:.1} p99_ms={:.1} errors=[{}]",
                    report.assigned,
                    report.rate(),
                    report.quantile_ms(0.5),
                    report.quantile_ms(0.99),
                    report.errors_text()
                );
                return Ok(());
            }
            let enrolled = devices::enroll(&target, &prefix, count).await?;
            eprintln!("enrolled {count} devices under {prefix}; registering");
            let report = run_devices(&target, &enrolled, concurrency, transport).await?;
            println!("RESULT transport={transport:?} devices={count} concurrency={concurrency} {}", report.summary());
        }
        Command::BenchDevices { backend, devices: count, concurrency, runs, transport, slices } => {
            let mut failures = devices::Failures::default();
            for backend in backend {
                let backend = Backend::from(backend);
                let (mut ceilings, mut ceiling_cpus) = (Vec::new(), Vec::new());
                let (mut twos, mut two_cpus) = (Vec::new(), Vec::new());
                let mut rates = vec![Vec::new(); transport.len()];
                let mut p99s = vec![Vec::new(); transport.len()];
                let mut cpus = vec![Vec::new(); transport.len()];
                for run in 1..=runs {
                    let ((ceiling, ceiling_cpu), (two, two_cpu), reports) =
                        bench_devices_once(backend, count, concurrency, slices, &transport, &mut failures).await?;
                    ceiling_cpus.push(ceiling_cpu);
                    println!(
                        "  {backend:?}: run {run}: two requests per connection, ratio to ceiling {:.2}",
                        two / ceiling.max(1.0)
                    );
                    twos.push(two);
                    two_cpus.push(two_cpu);
                    for (i, (report, cpu)) in reports.iter().enumerate() {
                        cpus[i].push(*cpu);
                        failures.note(format!("{backend:?} run {run} over {:?}", transport[i]), report);
                        println!(
                            "  {backend:?}: run {run}: {:?} ratio to ceiling {:.2}",
                            transport[i],
                            report.rate() / ceiling.max(1.0)
                        );
                        rates[i].push(report.rate());
                        p99s[i].push(report.quantile_ms(0.99));
                    }
                    ceilings.push(ceiling);
                }
                let ceiling = bulk::median(ceilings.clone());
                let ceiling_cpu = PerOperation::median(&ceiling_cpus);
                let two = bulk::median(twos);
                let mut line = format!(
                    "RESULT backend={backend:?} devices={count} concurrency={concurrency} median_handshakes_per_s={ceiling:.0} \
                     handshake_{} median_two_requests_per_s={two:.0} two_requests_ratio={:.2} two_requests_{}",
                    ceiling_cpu.text(),
                    two / ceiling.max(1.0),
                    PerOperation::median(&two_cpus).text()
                );
                for (i, transport) in transport.iter().enumerate() {
                    let name = format!("{transport:?}").to_lowercase();
                    let (rate, p99) = (bulk::median(rates[i].clone()), bulk::median(p99s[i].clone()));
                    line.push_str(&format!(
                        " {name}_median_devices_per_s={rate:.0} {name}_ratio={:.2} {name}_median_p99_ms={p99:.1} {name}_{}",
                        rate / ceiling.max(1.0),
                        PerOperation::median(&cpus[i]).text()
                    ));
                }
                println!("{line}");
                if let Some(i) = transport.iter().position(|t| matches!(t, TransportArg::Https)) {
                    let (https, two) = (PerOperation::median(&cpus[i]), PerOperation::median(&two_cpus));
                    // Each run's factors, from its own ceiling: the rates and CPU times already kept per run.
                    let runs: Vec<RatioFactors> = (ceilings.iter().zip(&ceiling_cpus))
                        .zip(rates[i].iter().zip(&cpus[i]))
                        .map(|((ceiling, ceiling_cpu), (rate, cpu))| {
                            RatioFactors::of(*ceiling, ceiling_cpu, *rate, cpu)
                        })
                        .collect();
                    let factors = RatioFactors::median(&runs);
                    println!("{}", registration_cost(backend, &ceiling_cpu, &two, &https, factors));
                }
            }
            failures.check()?;
        }
        Command::BenchHubs { backend, devices: count, concurrency, runs } => {
            let backends: Vec<Backend> = backend.into_iter().map(Backend::from).collect();
            hubs::bench(&backends, count, concurrency, runs).await?;
        }
        Command::BenchReplicas { replicas, devices: count, concurrency, runs } => {
            replicas::bench(&replicas, count, concurrency, runs).await?;
        }
        Command::BenchScale { backend, enrollments, storm, batch, concurrency, settle, query_samples } => {
            let settings = scale::Settings {
                backends: backend.into_iter().map(Backend::from).collect(),
                enrollments,
                storm,
                batch,
                concurrency,
                settle: Duration::from_secs(settle),
                query_samples,
            };
            scale::bench(&settings).await?;
        }
        Command::BenchIssuance { backend, csrs, devices: count, concurrency, runs, cfssl, slices } => {
            let settings = issuance::Settings {
                backends: backend.into_iter().map(Backend::from).collect(),
                csrs,
                devices: count,
                concurrency,
                runs,
                cfssl,
                slices,
            };
            issuance::bench(&settings).await?;
        }
    }
    tokio::time::sleep(Duration::from_millis(10)).await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The two factors multiply to the ratio of the rates: 3,000 devices/s at 640 µs of machine time each (1.92
    /// CPUs busy) against 4,000 handshakes/s at 500 µs (2.00 CPUs).
    #[test]
    fn ratio_factors_multiply_to_the_ratio_of_rates() {
        let cost = |machine: f64| PerOperation { machine, ..Default::default() };
        let factors = RatioFactors::of(4000.0, &cost(500.0), 3000.0, &cost(640.0));
        assert!((factors.cpu - 500.0 / 640.0).abs() < 1e-12, "{factors:?}");
        assert!((factors.busy - 1.92 / 2.0).abs() < 1e-12, "{factors:?}");
        assert!((factors.cpu * factors.busy - 0.75).abs() < 1e-12, "{factors:?}");
        let runs = [factors, RatioFactors { cpu: 0.7, busy: 1.0 }, RatioFactors { cpu: 0.9, busy: 0.9 }];
        assert_eq!(RatioFactors::median(&runs), RatioFactors { cpu: 500.0 / 640.0, busy: 0.96 });
    }
}
