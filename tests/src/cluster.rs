//! Several replicas of the service on one PostgreSQL database behind HAProxy (Debian's `haproxy`) in TCP mode,
//! configured as the Helm chart (`deploy/helm/zerotouch`) configures pods: `zerotouch migrate` runs first (the
//! chart's hook Job), then every replica starts with `--no-migrate`; the first makes the shared material, the
//! others start with the same id scope, server TLS certificate, master key and CA passphrase. The multi-replica
//! tests (`tests/tests/replicas.rs`) and the replica benchmark (`zerotouch-loadgen bench-replicas`) drive it from
//! outside, as devices would.

use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use zerotouch_store::test_support::TestDatabase;

use crate::{Backend, Options, Server, client_trusting};

/// Replicas on one database and HAProxy in front of their device listeners.
pub struct Cluster {
    /// The replicas, in HAProxy's order.
    pub replicas: Vec<Server>,
    /// How each replica was started (its device port pinned, so that a restarted one takes its place).
    options: Vec<Options>,
    haproxy: Child,
    /// `https://127.0.0.1:PORT` of HAProxy's device frontend.
    pub device_url: String,
    /// The database the cluster made (none when the caller named one); dropped with the cluster.
    _database: Option<TestDatabase>,
    /// A client trusting the shared server certificate, with a connection pool of its own.
    pub client: reqwest::Client,
    _dir: tempfile::TempDir,
}

/// A free TCP port on 127.0.0.1.
fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

impl Cluster {
    /// `count` replicas on a fresh database of the shared PostgreSQL.
    pub async fn start(count: usize) -> anyhow::Result<Self> {
        Self::start_with(count, Options::default()).await
    }

    /// `count` replicas started with `base` (its `database_url`, else a fresh database of the shared PostgreSQL;
    /// its arguments and environment for every replica).
    pub async fn start_with(count: usize, base: Options) -> anyhow::Result<Self> {
        // A replica listens where the system puts it, and a restarted one where it listened (so that HAProxy keeps
        // pointing at it): ports chosen ahead could be taken by then.
        let pinned = |mut options: Options, replica: &Server| {
            options
                .args
                .extend(["--device-listen".to_owned(), replica.device_url.trim_start_matches("https://").to_owned()]);
            options
        };
        // As the chart's hook Job does before the pods start: one `zerotouch migrate`, then every replica
        // `--no-migrate`.
        let (database, database_url) = match &base.database_url {
            Some(url) => (None, url.clone()),
            None => {
                let database = TestDatabase::create(Backend::Postgres).await?;
                let url = database.url.clone();
                (Some(database), url)
            }
        };
        let migrate_dir = tempfile::tempdir()?;
        let output = Command::new(crate::binary()?)
            .arg("migrate")
            .arg("--data-dir")
            .arg(migrate_dir.path())
            .args(["--database-url", &database_url])
            .env_remove("DATABASE_URL")
            .output()?;
        anyhow::ensure!(output.status.success(), "zerotouch migrate: {}", String::from_utf8_lossy(&output.stderr));
        let mut base = Options { database_url: Some(database_url), ..base };
        base.args.push("--no-migrate".into());
        let first = Server::start_with(Backend::Postgres, base.clone()).await?;
        let first_options = pinned(base.clone(), &first);
        let data_dir = first.data_dir.clone();
        let shared = |name: &str| data_dir.join(name).to_string_lossy().into_owned();
        let mut replicas = vec![first];
        let mut all_options = vec![first_options];
        for _ in 1..count {
            let first = &replicas[0];
            let mut options = first.replica_options();
            options.args.extend(base.args.iter().cloned());
            options.env.extend(base.env.iter().cloned());
            options.args.extend([
                "--id-scope".into(),
                first.id_scope.clone(),
                "--tls-cert".into(),
                shared("server.pem"),
                "--tls-key".into(),
                shared("server.key"),
                "--ca-passphrase-file".into(),
                shared("ca-passphrase"),
            ]);
            options.trust_bundle = Some(data_dir.join("trust-bundle.pem"));
            let replica = Server::start_with(Backend::Postgres, options.clone()).await?;
            all_options.push(pinned(options, &replica));
            replicas.push(replica);
        }
        let dir = tempfile::tempdir()?;
        let port = free_port()?;
        let haproxy = start_haproxy(dir.path(), port, &replicas)?;
        let client = client_trusting(&replicas[0].data_dir.join("trust-bundle.pem"))?;
        Ok(Self {
            replicas,
            options: all_options,
            haproxy,
            device_url: format!("https://127.0.0.1:{port}"),
            client,
            _database: database,
            _dir: dir,
        })
    }

    /// Stops replica `i` with SIGTERM (it drains) and starts it again in its place; the stopped process's status.
    pub async fn restart(&mut self, i: usize) -> anyhow::Result<ExitStatus> {
        let replica = self.replicas.remove(i);
        let (status, next) = replica.restart_with(Backend::Postgres, self.options[i].clone()).await?;
        self.replicas.insert(i, next);
        Ok(status)
    }

    /// The replica that migrated the database and made the shared material.
    pub fn first(&self) -> &Server {
        &self.replicas[0]
    }

    /// HAProxy's process id.
    pub fn haproxy_pid(&self) -> u32 {
        self.haproxy.id()
    }
}

/// HAProxy in TCP mode on 127.0.0.1:`port`, round robin over the device listeners of `replicas`, health-checking
/// them every 200 ms and sending a connection that found a replica gone to another (`option redispatch`); its
/// configuration is written to `dir`. Returns once it listens.
fn start_haproxy(dir: &Path, port: u16, replicas: &[Server]) -> anyhow::Result<Child> {
    let servers: String = replicas
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let address = r.device_url.trim_start_matches("https://");
            format!("    server replica{i} {address} check inter 200ms fall 2 rise 2\n")
        })
        .collect();
    let config = format!(
        "global\n    maxconn 4096\ndefaults\n    mode tcp\n    timeout connect 2s\n    timeout client 30s\n    \
         timeout server 30s\n    retries 2\n    option redispatch\nfrontend devices\n    bind 127.0.0.1:{port}\n    \
         default_backend replicas\nbackend replicas\n    balance roundrobin\n{servers}"
    );
    let config_path = dir.join("haproxy.cfg");
    std::fs::write(&config_path, config)?;
    let mut haproxy = Command::new("haproxy")
        .arg("-db")
        .arg("-f")
        .arg(&config_path)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting haproxy (Debian package haproxy; scripts/test installs it)")?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if let Some(status) = haproxy.try_wait()? {
            bail!("haproxy exited with {status}");
        }
        if Instant::now() > deadline {
            let _ = haproxy.kill();
            bail!("haproxy did not listen on 127.0.0.1:{port} within 10 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(haproxy)
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = self.haproxy.kill();
        let _ = self.haproxy.wait();
    }
}
