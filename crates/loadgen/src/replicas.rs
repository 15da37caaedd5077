//! `bench-replicas`: registrations per second through HAProxy (TCP mode) with 1, 2, 3, ... replicas on one
//! PostgreSQL (`zerotouch_tests::cluster`, configured as the Helm chart configures pods), each device on a new TLS
//! connection, and what one registration costs in CPU: in the replicas, in PostgreSQL, in HAProxy and in the load
//! generator, read from `/proc` around each run (`crate::cpu`). The configurations alternate within each run so
//! that drift of the machine spreads over all of them; medians are reported.

use std::time::Duration;

use zerotouch_tests::Options;
use zerotouch_tests::cluster::Cluster;

use crate::bulk::median;
use crate::cpu::Sample;
use crate::devices::{self, Failures};

/// One configuration's run.
struct Run {
    rate: f64,
    /// CPU per registration, in milliseconds.
    replicas_ms: f64,
    postgres_ms: f64,
    haproxy_ms: f64,
    client_ms: f64,
    machine_ms: f64,
}

impl Run {
    fn postgres_share(&self) -> f64 {
        self.postgres_ms / self.machine_ms.max(f64::EPSILON)
    }
}

async fn run_once(replicas: usize, count: usize, concurrency: usize, failures: &mut Failures) -> anyhow::Result<Run> {
    let options = Options {
        env: vec![("ZEROTOUCH_LOG".into(), "warn".into())],
        args: vec!["--device-max-in-flight".into(), "4096".into()],
        ..Default::default()
    };
    let cluster = Cluster::start_with(replicas, options).await?;
    let first = cluster.first();
    let target =
        devices::Target { device_url: cluster.device_url.clone(), ..devices::target_of(first, first.token("owner")?)? };
    let enrolled = devices::enroll(&target, "replicas", count).await?;
    let mut pids: Vec<u32> = cluster.replicas.iter().filter_map(zerotouch_tests::Server::pid).collect();
    pids.push(cluster.haproxy_pid());
    // Let the enrollment's writes settle before the counters start.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = Sample::now(&pids)?;
    let report = devices::run(&target, &enrolled, concurrency).await?;
    let spent = Sample::now(&pids)?.since(&before);
    failures.note(format!("{replicas} replica(s)"), &report);
    let per = |d: Duration| d.as_secs_f64() * 1000.0 / report.assigned.max(1) as f64;
    let (replica_times, haproxy) = spent.processes.split_at(spent.processes.len() - 1);
    let run = Run {
        rate: report.rate(),
        replicas_ms: per(replica_times.iter().sum()),
        postgres_ms: per(spent.postgres),
        haproxy_ms: per(haproxy.iter().sum()),
        client_ms: per(spent.client),
        machine_ms: per(spent.machine),
    };
    println!(
        "  {replicas} replica(s): {}; CPU ms per registration: replicas {:.2}, PostgreSQL {:.2} ({:.0}% of the \
         machine), HAProxy {:.2}, load generator {:.2}, machine {:.2}",
        report.summary(),
        run.replicas_ms,
        run.postgres_ms,
        run.postgres_share() * 100.0,
        run.haproxy_ms,
        run.client_ms,
        run.machine_ms,
    );
    Ok(run)
}

/// Runs every configuration of `replica_counts` `runs` times with `count` devices, `concurrency` in flight.
pub(crate) async fn bench(
    replica_counts: &[usize],
    count: usize,
    concurrency: usize,
    runs: usize,
) -> anyhow::Result<()> {
    let mut failures = Failures::default();
    let mut results: Vec<Vec<Run>> = replica_counts.iter().map(|_| Vec::new()).collect();
    for run in 1..=runs {
        println!("run {run}:");
        for (i, replicas) in replica_counts.iter().enumerate() {
            results[i].push(run_once(*replicas, count, concurrency, &mut failures).await?);
        }
    }
    for (replicas, runs) in replica_counts.iter().zip(&results) {
        let med = |f: fn(&Run) -> f64| median(runs.iter().map(f).collect());
        println!(
            "RESULT replicas={replicas} devices={count} concurrency={concurrency} median_devices_per_s={:.0} \
             median_cpu_ms_per_registration: replicas={:.2} postgres={:.2} haproxy={:.2} loadgen={:.2} \
             machine={:.2} postgres_share={:.2}",
            med(|r| r.rate),
            med(|r| r.replicas_ms),
            med(|r| r.postgres_ms),
            med(|r| r.haproxy_ms),
            med(|r| r.client_ms),
            med(|r| r.machine_ms),
            med(Run::postgres_share),
        );
    }
    failures.check()
}
