//! CSR-to-certificate issuance over HTTPS, ours (EST `simpleenroll`, every certificate persisted with its audit
//! event) side by side with cfssl's `/api/v1/cfssl/sign` on the same CSRs, with a CA key of the same type
//! (ECDSA P-256); and registration with a CSR per device next to registration without one (issue #4).
//!
//! Both issuers get the same client: C workers, each on its own keep-alive HTTPS connection, sending its share
//! of the N requests one after the other. For EST each connection authenticates with its own device certificate
//! of one X.509 enrollment group, and the CSRs it sends carry that device's CN (RFC 7030 §3.3.2: the client
//! certificate identifies the requester). CSRs, keys and certificates are all made before the clock starts. A
//! sample of the answers is checked after the clock stops: a certificate with the CSR's key and CN, the clientAuth
//! EKU, signed by the issuer's CA.
//!
//! Within a run the issuers (cfssl and ours on each database) are all started and made ready first, then take
//! turns, a slice of the CSRs each at a time; registrations without and with a CSR take turns the same way on one
//! service. The machines this runs on drift by a fifth within a minute: slices put the drift on both sides of each
//! ratio.
//!
//! Each registration run also reports CPU time per device (`crate::cpu::PerOperation`), and the benchmark ends
//! with what a CSR added to the whole machine's time per device, against the budget a ratio of 0.9 leaves and the
//! floor no code can save: the service's own CSR check and issuance, timed alone on one thread.
//!
//! The submodules: `credentials` (the CSRs, CAs and device certificates, all made before the clock starts),
//! `run` (the client both issuers share, and the check of a sample of the answers), `est` (ours) and `cfssl`
//! (the baseline). This module holds the benchmark itself: its settings, the runs and the `RESULT` lines.

mod cfssl;
mod credentials;
mod est;
mod run;

use std::collections::BTreeMap;
use std::ops::Range;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use zerotouch_tests::{Backend, Options, Server};

use crate::bulk::median;
use crate::cpu::{PerOperation, Phase, slice_ranges};
use crate::devices::{self, Report};

pub(crate) use cfssl::CfsslStore;
pub(crate) use credentials::{Csr, EstFleet, est_device_id, generate_csrs};

use cfssl::Cfssl;
use est::Est;
use run::{Run, Sample};

/// What `bench-issuance` measures.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    /// The databases ours runs on.
    pub(crate) backends: Vec<Backend>,
    /// CSRs signed per issuer and run.
    pub(crate) csrs: usize,
    /// Devices per registration run (0: no registration runs).
    pub(crate) devices: usize,
    /// Connections (EST, cfssl) and devices in flight (registration).
    pub(crate) concurrency: usize,
    /// Runs (medians reported).
    pub(crate) runs: usize,
    /// Slices per run: the issuers take turns, and so do registrations without and with a CSR.
    pub(crate) slices: usize,
    /// cfssl configurations to compare with.
    pub(crate) cfssl: Vec<CfsslStore>,
}

/// A fresh service for a benchmark run: quiet logs, no per-device or in-flight limit that could throttle the load.
pub(crate) fn server_options() -> Options {
    Options {
        env: vec![("ZEROTOUCH_LOG".into(), "warn".into())],
        args: vec![
            "--device-max-in-flight".into(),
            "4096".into(),
            // One device certificate per connection sends N / C requests: no per-device limit may throttle it.
            "--device-rate-limit".into(),
            "1000000000/1s".into(),
        ],
        ..Default::default()
    }
}

fn line(report: &Report, noun: &str) -> String {
    format!(
        "{noun}={} per_s={:.0} p50_ms={:.1} p99_ms={:.1} max_ms={:.1} errors=[{}]",
        report.assigned,
        report.rate(),
        report.quantile_ms(0.5),
        report.quantile_ms(0.99),
        report.quantile_ms(1.0),
        report.errors_text(),
    )
}

/// Medians of the runs of one configuration, with the CPU time per certificate or device of each.
#[derive(Debug, Default)]
struct Series {
    rates: Vec<f64>,
    p50s: Vec<f64>,
    p99s: Vec<f64>,
    errors: usize,
    cpu: Vec<PerOperation>,
}

impl Series {
    fn push(&mut self, report: &Report, cpu: PerOperation) {
        self.rates.push(report.rate());
        self.p50s.push(report.quantile_ms(0.5));
        self.p99s.push(report.quantile_ms(0.99));
        self.errors += report.errors.values().sum::<usize>();
        self.cpu.push(cpu);
    }

    fn rate(&self) -> f64 {
        median(self.rates.clone())
    }

    fn cpu(&self) -> PerOperation {
        PerOperation::median(&self.cpu)
    }

    fn text(&self) -> String {
        let runs = self.rates.iter().map(|r| format!("{r:.0}")).collect::<Vec<_>>().join(", ");
        format!(
            "median_per_s={:.0} median_p50_ms={:.1} median_p99_ms={:.1} errors={} runs=[{runs}] {}",
            self.rate(),
            median(self.p50s.clone()),
            median(self.p99s.clone()),
            self.errors,
            self.cpu().text()
        )
    }
}

/// Registration without and with a CSR on one fresh service, each device on a new TLS connection, the two
/// taking turns in `slices`: returns each one's report and CPU time per device.
async fn registrations_once(
    backend: Backend,
    (plain, plain_prefix): (&[devices::Device], &str),
    (with_csr, csr_prefix): (&[devices::Device], &str),
    concurrency: usize,
    slices: usize,
) -> anyhow::Result<[(Report, PerOperation); 2]> {
    let server = Server::start_with(backend, server_options()).await?;
    let target = devices::target_of(&server, server.token("owner")?)?;
    for (prepared, prefix) in [(plain, plain_prefix), (with_csr, csr_prefix)] {
        let enrolled = devices::enroll(&target, prefix, prepared.len()).await?;
        // `enroll` derives the same ids and keys for the same prefix: the prepared devices (with CSRs) match.
        if enrolled.iter().zip(prepared).any(|(a, b)| a.registration_id() != b.registration_id()) {
            bail!("prepared devices do not match the enrollments");
        }
    }
    let pids = [server.pid().context("the service is not running")?];
    let (mut without, mut with) = (Phase::default(), Phase::default());
    let count = plain.len().min(with_csr.len());
    for range in slice_ranges(count, slices) {
        without.slice(&pids, devices::run(&target, &plain[range.clone()], concurrency)).await?;
        with.slice(&pids, devices::run(&target, &with_csr[range], concurrency)).await?;
    }
    let (without_cpu, with_cpu) = (without.cost(), with.cost());
    Ok([(without.report, without_cpu), (with.report, with_cpu)])
}

/// An issuer measured in one run, a slice at a time: its name in the output, what it did and cost, and the sample
/// of its answers.
struct IssuerRun {
    name: String,
    issuer: Issuer,
    phase: Phase,
    samples: Vec<Sample>,
}

/// Ours on a started service, or cfssl.
enum Issuer {
    Est(Server, Est, Backend),
    Cfssl(Cfssl, &'static str),
}

impl Issuer {
    fn pid(&self) -> anyhow::Result<u32> {
        match self {
            Issuer::Est(server, ..) => server.pid().context("the service is not running"),
            Issuer::Cfssl(cfssl, _) => cfssl.pid().context("cfssl is not running"),
        }
    }

    async fn run(&self, csrs: &Arc<Vec<Csr>>, range: Range<usize>) -> anyhow::Result<Run> {
        match self {
            Issuer::Est(_, est, _) => est.run(csrs, range).await,
            Issuer::Cfssl(cfssl, _) => cfssl.run(csrs, range).await,
        }
    }

    fn check(&self, run: &Run, csrs: &[Csr]) -> anyhow::Result<usize> {
        match self {
            Issuer::Est(_, est, _) => est.check(run, csrs),
            Issuer::Cfssl(cfssl, _) => cfssl.check(run, csrs),
        }
    }
}

/// What a registration with a CSR costs the service beyond one without, that no implementation can leave out:
/// the CSR's signature checked (with the CSR's parse) and the certificate signed, by the service's own code
/// (`zerotouch_pki::check_csr` and `issue`, P-256 under a P-256 CA), µs per device on one thread.
#[derive(Debug, Clone, Copy)]
struct Floor {
    check_csr: f64,
    issue: f64,
}

fn floor(csrs: &[Csr]) -> anyhow::Result<Floor> {
    let now = time::OffsetDateTime::now_utc();
    let (_, ca) = zerotouch_pki::development_hierarchy(zerotouch_pki::KeyAlgorithm::EcdsaP256, now)?;
    let profile = zerotouch_pki::Profile::new("http://localhost/crl/development", 30)?;
    let policy = zerotouch_pki::KeyPolicy::default();
    let began = Instant::now();
    let checked =
        csrs.iter().map(|csr| zerotouch_pki::check_csr(&csr.der, &csr.cn, &policy)).collect::<Result<Vec<_>, _>>()?;
    let check_csr = began.elapsed();
    let began = Instant::now();
    for (csr, checked) in csrs.iter().zip(&checked) {
        zerotouch_pki::issue(&ca, checked, &csr.cn, &profile, now)?;
    }
    let issue = began.elapsed();
    let per = |time: Duration| time.as_secs_f64() * 1e6 / csrs.len().max(1) as f64;
    Ok(Floor { check_csr: per(check_csr), issue: per(issue) })
}

/// Runs the whole benchmark and prints a `RESULT` line per configuration.
pub(crate) async fn bench(settings: &Settings) -> anyhow::Result<()> {
    let c = settings.concurrency.max(1);
    let began = Instant::now();
    let csrs = Arc::new(generate_csrs(settings.csrs, |i| est_device_id(i % c))?);
    let fleet = EstFleet::generate(c)?;
    // Registration: the same ids `devices::enroll` makes, each with a CSR for its own registration id.
    let plain_prefix = "bench";
    let csr_prefix = "bench-csr";
    let plain: Vec<devices::Device> = devices::prepared(plain_prefix, settings.devices);
    let reg_csrs = generate_csrs(settings.devices, |i| devices::prepared_id(csr_prefix, i))?;
    let with_csr: Vec<devices::Device> = devices::prepared(csr_prefix, settings.devices)
        .into_iter()
        .zip(&reg_csrs)
        .map(|(device, csr)| device.with_csr(STANDARD.encode(&csr.der)))
        .collect();
    println!(
        "  prepared {} P-256 CSRs, {c} EST device certificates and {} registration CSRs in {:.1} s (not timed)",
        settings.csrs,
        settings.devices,
        began.elapsed().as_secs_f64()
    );
    let mut cfssl: BTreeMap<&str, Series> = BTreeMap::new();
    let mut ours: BTreeMap<String, Series> = BTreeMap::new();
    let mut registrations: BTreeMap<String, (Series, Series)> = BTreeMap::new();
    let mut failures = devices::Failures::default();
    for run in 1..=settings.runs {
        // Every issuer of the run is started and made ready first; then they take turns, a slice of the CSRs each,
        // so that the machine's drift falls on all of them alike.
        let mut issuers = Vec::new();
        for &store in &settings.cfssl {
            let name = match store {
                CfsslStore::Memory => "memory",
                CfsslStore::Sqlite => "sqlite",
            };
            let cfssl = Cfssl::start(store, c).await.with_context(|| format!("cfssl ({name})"))?;
            issuers.push(IssuerRun {
                name: format!("cfssl ({name}, https)"),
                issuer: Issuer::Cfssl(cfssl, name),
                phase: Phase::default(),
                samples: Vec::new(),
            });
        }
        for &backend in &settings.backends {
            let server = Server::start_with(backend, server_options()).await?;
            let est = Est::prepare(&server, &fleet).await.with_context(|| format!("EST on {backend:?}"))?;
            issuers.push(IssuerRun {
                name: format!("zerotouch EST ({backend:?}, https)"),
                issuer: Issuer::Est(server, est, backend),
                phase: Phase::default(),
                samples: Vec::new(),
            });
        }
        for range in slice_ranges(csrs.len(), settings.slices) {
            for issuer in &mut issuers {
                let pids = [issuer.issuer.pid()?];
                let (issuer_ref, samples) = (&issuer.issuer, &mut issuer.samples);
                let work = async {
                    let slice = issuer_ref.run(&csrs, range.clone()).await?;
                    samples.extend(slice.samples);
                    Ok(slice.report)
                };
                issuer.phase.slice(&pids, work).await.with_context(|| format!("{}, run {run}", issuer.name))?;
            }
        }
        for issuer in issuers {
            let cpu = issuer.phase.cost();
            let answers = Run { report: issuer.phase.report, samples: issuer.samples };
            let checked =
                issuer.issuer.check(&answers, &csrs).with_context(|| format!("{}, run {run}", issuer.name))?;
            let report = answers.report;
            println!(
                "  {}: run {run}: {} (sample of {checked} checked) {}",
                issuer.name,
                line(&report, "certificates"),
                cpu.text()
            );
            failures.note(format!("{} run {run}", issuer.name), &report);
            match issuer.issuer {
                Issuer::Cfssl(_, name) => cfssl.entry(name).or_default().push(&report, cpu),
                Issuer::Est(_, _, backend) => ours.entry(format!("{backend:?}")).or_default().push(&report, cpu),
            }
        }
        if settings.devices == 0 {
            continue;
        }
        for &backend in &settings.backends {
            let [without, with] =
                registrations_once(backend, (&plain, plain_prefix), (&with_csr, csr_prefix), c, settings.slices)
                    .await?;
            println!(
                "  {backend:?}: run {run}: registration without CSR: {} {}",
                without.0.summary(),
                without.1.text()
            );
            println!("  {backend:?}: run {run}: registration with CSR: {} {}", with.0.summary(), with.1.text());
            failures.note(format!("registration without CSR on {backend:?} run {run}"), &without.0);
            failures.note(format!("registration with CSR on {backend:?} run {run}"), &with.0);
            let entry = registrations.entry(format!("{backend:?}")).or_default();
            entry.0.push(&without.0, without.1);
            entry.1.push(&with.0, with.1);
        }
    }
    let n = settings.csrs;
    for (name, series) in &cfssl {
        println!(
            "RESULT issuance issuer=cfssl store={name} transport=https csrs={n} concurrency={c} {}",
            series.text()
        );
    }
    for (backend, series) in &ours {
        let ratios: String = cfssl
            .iter()
            .map(|(name, baseline)| {
                format!(" ratio_vs_cfssl_{name}={:.2}", series.rate() / baseline.rate().max(f64::EPSILON))
            })
            .collect();
        println!(
            "RESULT issuance issuer=zerotouch backend={backend} transport=https-est csrs={n} concurrency={c} {}{ratios}",
            series.text()
        );
    }
    if registrations.is_empty() {
        return failures.check();
    }
    let floor = floor(&reg_csrs[..reg_csrs.len().min(2000)])?;
    for (backend, (without, with)) in &registrations {
        let (cpu_without, cpu_with) = (without.cpu(), with.cpu());
        println!(
            "RESULT registration backend={backend} devices={} concurrency={c} with_csr: {} | without_csr: {} | ratio={:.2}",
            settings.devices,
            with.text(),
            without.text(),
            with.rate() / without.rate().max(f64::EPSILON)
        );
        // At a ratio of 0.9, a device with a CSR may take 1/0.9 of the machine time of one without: that extra is
        // the budget for everything the CSR adds, and the floor alone is the part of it no code can save.
        println!(
            "RESULT registration_csr_cost backend={backend} extra_machine_us={:.0} budget_at_0.9_us={:.0} \
             extra_database_us={:.0} floor_check_csr_us={:.0} floor_issue_us={:.0}",
            cpu_with.machine - cpu_without.machine,
            (1.0 / 0.9 - 1.0) * cpu_without.machine,
            cpu_with.database - cpu_without.database,
            floor.check_csr,
            floor.issue
        );
    }
    failures.check()
}
