//! `bench-replicas`: registrations per second through HAProxy (TCP mode) with 1, 2, 3, ... replicas on one
//! PostgreSQL (`zerotouch_tests::cluster`, configured as the Helm chart configures pods), each device on a new TLS
//! connection, and what one registration costs in CPU: in the replicas, in PostgreSQL, in HAProxy and in the load
//! generator, read from `/proc` around each run (`crate::cpu`); the service's cost is its replicas' and PostgreSQL's,
//! and the whole machine's busy time is printed too, which shows how much else ran meanwhile. The configurations alternate within each run so
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
    /// Transactions PostgreSQL committed in the service's database per registration: how well the replicas'
    /// writers batch (group commit) and how many reads a registration makes.
    commits: f64,
}

impl Run {
    /// What the service costs: its replicas and its database.
    fn service_ms(&self) -> f64 {
        self.replicas_ms + self.postgres_ms
    }

    /// PostgreSQL's part of the service's cost.
    fn postgres_share(&self) -> f64 {
        self.postgres_ms / self.service_ms().max(f64::EPSILON)
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
    let database = sea_orm::Database::connect(first.database_url.as_str()).await?;
    let commits_before = commits(&database).await?;
    let before = Sample::now(&pids)?;
    let report = devices::run(&target, &enrolled, concurrency).await?;
    let spent = Sample::now(&pids)?.since(&before);
    // PostgreSQL publishes a backend's counters when it goes idle, within a second.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let committed = commits(&database).await?.saturating_sub(commits_before);
    database.close().await?;
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
        commits: committed as f64 / report.assigned.max(1) as f64,
    };
    println!(
        "  {replicas} replica(s): {}; CPU ms per registration: service {:.2} (replicas {:.2}, PostgreSQL {:.2}: \
         {:.0}%), HAProxy {:.2}, load generator {:.2}; the whole machine {:.2}; PostgreSQL commits per \
         registration {:.3}",
        report.summary(),
        run.service_ms(),
        run.replicas_ms,
        run.postgres_ms,
        run.postgres_share() * 100.0,
        run.haproxy_ms,
        run.client_ms,
        run.machine_ms,
        run.commits,
    );
    Ok(run)
}

/// Transactions committed so far in the database `db` is connected to (`pg_stat_database`).
async fn commits(db: &sea_orm::DatabaseConnection) -> anyhow::Result<u64> {
    use sea_orm::{ConnectionTrait, Statement};
    let sql = "SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()";
    let row = db
        .query_one_raw(Statement::from_string(db.get_database_backend(), sql))
        .await?
        .ok_or_else(|| anyhow::anyhow!("pg_stat_database has no row for this database"))?;
    Ok(u64::try_from(row.try_get::<i64>("", "xact_commit")?)?)
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
             median_cpu_ms_per_registration: service={:.2} replicas={:.2} postgres={:.2} haproxy={:.2} \
             loadgen={:.2} machine={:.2} postgres_share_of_service={:.2} commits_per_registration={:.3}",
            med(|r| r.rate),
            med(Run::service_ms),
            med(|r| r.replicas_ms),
            med(|r| r.postgres_ms),
            med(|r| r.haproxy_ms),
            med(|r| r.client_ms),
            med(|r| r.machine_ms),
            med(Run::postgres_share),
            med(|r| r.commits),
        );
    }
    failures.check()
}
