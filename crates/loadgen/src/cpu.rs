//! CPU time spent by processes, read from `/proc` (Linux): what a benchmark's work cost each part of the machine.
//!
//! `/proc/PID/stat` counts a process's user and system time (fields 14 and 15) and, in fields 16 and 17, the
//! time of its children that exited and were waited for. PostgreSQL runs a process per connection (and workers
//! that come and go), all children of the postmaster: their time is the time of the live `postgres` processes
//! plus what the postmaster's exited children used, so a backend that ends during a measurement still counts.
//! SQLite runs inside the service: sqlx gives each SQLite connection a thread of its own (`sqlx-sqlite-worker-N`,
//! `comm` cut to 15 bytes), whose time is in `/proc/PID/task/TID/stat`.

use std::ops::Range;
use std::time::Duration;

use anyhow::{Context, bail};

/// The clock ticks per second of `/proc`'s counters (`getconf CLK_TCK`; 100 on Linux builds for x86 and ARM).
fn ticks_per_second() -> u64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|out| String::from_utf8(out.stdout).ok())
        .and_then(|text| text.trim().parse().ok())
        .filter(|ticks| *ticks > 0)
        .unwrap_or(100)
}

/// One process's line of `/proc/PID/stat`: its command name, parent, and CPU counters in ticks.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Stat {
    command: String,
    parent: u32,
    /// User + system time of the process.
    own: u64,
    /// User + system time of its exited, waited-for children.
    children: u64,
}

/// Parses a `/proc/PID/stat` line. The command name is in parentheses and may hold spaces and parentheses, so
/// the fields are counted from the last `)`.
fn parse_stat(line: &str) -> anyhow::Result<Stat> {
    let open = line.find('(').context("no command name")?;
    let close = line.rfind(')').context("no end of command name")?;
    let command = line.get(open + 1..close).context("command name")?.to_owned();
    let fields: Vec<&str> = line.get(close + 1..).context("no fields")?.split_whitespace().collect();
    // fields[0] is field 3 (state) of proc(5).
    let field = |n: usize| -> anyhow::Result<u64> {
        fields.get(n - 3).with_context(|| format!("no field {n}"))?.parse().with_context(|| format!("field {n}"))
    };
    Ok(Stat {
        command,
        parent: u32::try_from(field(4)?).context("parent pid")?,
        own: field(14)? + field(15)?,
        children: field(16)? + field(17)?,
    })
}

fn stat_of(pid: u32) -> anyhow::Result<Stat> {
    let line = std::fs::read_to_string(format!("/proc/{pid}/stat")).with_context(|| format!("process {pid}"))?;
    parse_stat(&line)
}

/// Ticks to a duration.
fn duration(ticks: u64, per_second: u64) -> Duration {
    Duration::from_secs_f64(ticks as f64 / per_second as f64)
}

/// The CPU counters of the parts of a benchmark at one moment.
#[derive(Debug, Clone, Default)]
pub(crate) struct Sample {
    /// The processes asked for, in order.
    pub(crate) processes: Vec<Duration>,
    /// Every `postgres` process, and the exited children of the postmaster.
    pub(crate) postgres: Duration,
    /// The SQLite connection threads of the processes asked for (those alive when sampled).
    pub(crate) sqlite: Duration,
    /// This process (the load generator).
    pub(crate) client: Duration,
    /// The whole machine, every CPU, busy (not idle, not waiting for I/O).
    pub(crate) machine: Duration,
}

impl Sample {
    /// Reads the counters of `pids`, PostgreSQL, this process and the machine.
    pub(crate) fn now(pids: &[u32]) -> anyhow::Result<Self> {
        let per_second = ticks_per_second();
        let processes =
            pids.iter().map(|pid| Ok(duration(stat_of(*pid)?.own, per_second))).collect::<anyhow::Result<Vec<_>>>()?;
        Ok(Self {
            processes,
            postgres: duration(postgres_ticks()?, per_second),
            sqlite: duration(pids.iter().map(|pid| sqlite_ticks(*pid)).sum(), per_second),
            client: duration(stat_of(std::process::id())?.own, per_second),
            machine: duration(machine_busy_ticks()?, per_second),
        })
    }

    /// Adds what `other` spent (another slice of the same measurement).
    pub(crate) fn add(&mut self, other: &Sample) {
        if self.processes.len() < other.processes.len() {
            self.processes.resize(other.processes.len(), Duration::ZERO);
        }
        for (total, spent) in self.processes.iter_mut().zip(&other.processes) {
            *total += *spent;
        }
        self.postgres += other.postgres;
        self.sqlite += other.sqlite;
        self.client += other.client;
        self.machine += other.machine;
    }

    /// What was spent from `earlier` to this sample.
    pub(crate) fn since(&self, earlier: &Sample) -> Sample {
        Sample {
            processes: self.processes.iter().zip(&earlier.processes).map(|(a, b)| a.saturating_sub(*b)).collect(),
            postgres: self.postgres.saturating_sub(earlier.postgres),
            sqlite: self.sqlite.saturating_sub(earlier.sqlite),
            client: self.client.saturating_sub(earlier.client),
            machine: self.machine.saturating_sub(earlier.machine),
        }
    }
}

/// CPU time per operation of a run, µs: the service (the processes sampled, and PostgreSQL), of which the
/// database (PostgreSQL, or the service's SQLite threads), the load generator, and the whole machine (every CPU,
/// busy).
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct PerOperation {
    pub(crate) service: f64,
    pub(crate) database: f64,
    pub(crate) client: f64,
    pub(crate) machine: f64,
}

impl PerOperation {
    /// What `spent` comes to for each of `operations`.
    pub(crate) fn of(spent: &Sample, operations: usize) -> Self {
        let per = |time: Duration| time.as_secs_f64() * 1e6 / operations.max(1) as f64;
        let service = spent.processes.iter().map(|t| per(*t)).sum::<f64>() + per(spent.postgres);
        let database = per(spent.postgres) + per(spent.sqlite);
        Self { service, database, client: per(spent.client), machine: per(spent.machine) }
    }

    /// The median of each figure over `runs`.
    pub(crate) fn median(runs: &[Self]) -> Self {
        let of = |part: fn(&Self) -> f64| crate::bulk::median(runs.iter().map(part).collect());
        Self {
            service: of(|c| c.service),
            database: of(|c| c.database),
            client: of(|c| c.client),
            machine: of(|c| c.machine),
        }
    }

    pub(crate) fn text(&self) -> String {
        format!(
            "cpu_us_per_op service={:.0} database={:.0} client={:.0} machine={:.0}",
            self.service, self.database, self.client, self.machine
        )
    }
}

/// One measured phase of a benchmark whose phases take turns in slices, summed over its slices: what it did and
/// what it cost.
#[derive(Default)]
pub(crate) struct Phase {
    pub(crate) report: crate::devices::Report,
    spent: Sample,
}

impl Phase {
    /// Runs one slice of the phase, `work`, and adds its report and the CPU it cost (`pids`, the service or the peer).
    pub(crate) async fn slice(
        &mut self,
        pids: &[u32],
        work: impl Future<Output = anyhow::Result<crate::devices::Report>>,
    ) -> anyhow::Result<()> {
        let before = Sample::now(pids)?;
        let report = work.await?;
        self.spent.add(&Sample::now(pids)?.since(&before));
        self.report.absorb(report);
        Ok(())
    }

    /// The CPU the phase cost per operation.
    pub(crate) fn cost(&self) -> PerOperation {
        PerOperation::of(&self.spent, self.report.assigned)
    }
}

/// The ranges of `count` items cut into `slices` turns.
pub(crate) fn slice_ranges(count: usize, slices: usize) -> impl Iterator<Item = Range<usize>> {
    let slices = slices.clamp(1, count.max(1));
    (0..slices).map(move |slice| count * slice / slices..count * (slice + 1) / slices)
}

/// Ticks of every live `postgres` process, plus the exited children of the postmasters (the `postgres`
/// processes whose parent is not one).
fn postgres_ticks() -> anyhow::Result<u64> {
    let mut stats = Vec::new();
    for entry in std::fs::read_dir("/proc")? {
        let Some(pid) = entry?.file_name().to_str().and_then(|name| name.parse::<u32>().ok()) else { continue };
        // A process may exit between the listing and the read.
        if let Ok(stat) = stat_of(pid) {
            stats.push((pid, stat));
        }
    }
    Ok(postgres_total(&stats))
}

fn postgres_total(stats: &[(u32, Stat)]) -> u64 {
    let postgres: std::collections::HashSet<u32> =
        stats.iter().filter(|(_, s)| s.command == "postgres").map(|(pid, _)| *pid).collect();
    stats
        .iter()
        .filter(|(pid, _)| postgres.contains(pid))
        .map(|(_, s)| if postgres.contains(&s.parent) { s.own } else { s.own + s.children })
        .sum()
}

/// Ticks of the SQLite connection threads of process `pid`; none if it has gone.
fn sqlite_ticks(pid: u32) -> u64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else { return 0 };
    tasks
        .filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("stat")).ok())
        .filter_map(|line| parse_stat(&line).ok())
        .filter(|stat| stat.command.starts_with(SQLITE_THREAD))
        .map(|stat| stat.own)
        .sum()
}

/// How sqlx names its SQLite connection threads, as far as `comm` keeps it.
const SQLITE_THREAD: &str = "sqlx-sqlite-wor";

/// Busy ticks of all CPUs together, from the first line of `/proc/stat` (user, nice, system, irq, softirq, steal).
fn machine_busy_ticks() -> anyhow::Result<u64> {
    let text = std::fs::read_to_string("/proc/stat")?;
    let line = text.lines().next().context("empty /proc/stat")?;
    let fields: Vec<u64> = line.split_whitespace().skip(1).map(str::parse).collect::<Result<_, _>>()?;
    if fields.len() < 8 {
        bail!("/proc/stat: {line:?}");
    }
    // user nice system idle iowait irq softirq steal
    Ok(fields[0] + fields[1] + fields[2] + fields[5] + fields[6] + fields[7])
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn stat_lines_are_read_from_the_last_parenthesis() {
        let line = "4242 (postgres: a (b) c) S 17 4242 4242 0 -1 4194560 2051 0 0 0 120 35 7 3 20 0 1 0 100";
        let stat = parse_stat(line).unwrap();
        assert_eq!(stat, Stat { command: "postgres: a (b) c".into(), parent: 17, own: 155, children: 10 });
        assert!(parse_stat("4242 postgres S 1").is_err());
        assert!(parse_stat("4242 (postgres) S 1 2").is_err());
    }

    /// 300 ms of one thread's CPU.
    fn spin() {
        let began = std::time::Instant::now();
        let mut x = 0u64;
        while began.elapsed() < Duration::from_millis(300) {
            x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(7));
        }
    }

    /// Threads named as sqlx names its SQLite connections' count towards the database, other threads do not.
    #[test]
    fn sqlite_time_is_the_time_of_sqlx_sqlite_threads() {
        let pid = std::process::id();
        let before = sqlite_ticks(pid);
        std::thread::Builder::new().name("other-worker".into()).spawn(spin).unwrap().join().unwrap();
        assert_eq!(sqlite_ticks(pid), before, "another thread's time is not the database's");
        let (spun, ready) = std::sync::mpsc::channel::<()>();
        let (finish, finished) = std::sync::mpsc::channel::<()>();
        let sqlite = std::thread::Builder::new()
            .name("sqlx-sqlite-worker-7".into())
            .spawn(move || {
                spin();
                spun.send(()).unwrap();
                // Alive while sampled, as a connection's thread is.
                finished.recv().unwrap();
            })
            .unwrap();
        ready.recv().unwrap();
        let busy = sqlite_ticks(pid);
        finish.send(()).unwrap();
        sqlite.join().unwrap();
        assert!(busy >= before + 10, "300 ms of a SQLite thread's CPU counts: {before} -> {busy} ticks");
    }

    /// The postmaster's exited children count, its live children once each, other processes not at all.
    #[test]
    fn postgres_time_includes_exited_backends_once() {
        let stat = |command: &str, parent, own, children| Stat { command: command.into(), parent, own, children };
        let stats = [
            (10, stat("postgres", 1, 5, 40)),
            (11, stat("postgres", 10, 7, 0)),
            (12, stat("postgres", 10, 3, 99)),
            (13, stat("zerotouch", 1, 500, 0)),
        ];
        assert_eq!(postgres_total(&stats), 5 + 40 + 7 + 3);
    }
}
