//! Test kit: starts the real `zerotouch` binary on a fresh data dir and database, and talks to it over HTTPS.
//!
//! Each [`Server`] binds port 0 (the kit reads the bound address from the service's start-up lines), so tests run
//! in parallel without racing for ports. Its stdout and stderr go to files that [`Server::logs`] reads back, so a
//! test can check what the service logged.
#![forbid(unsafe_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

pub mod cluster;
pub mod device;
pub mod mosquitto;
pub mod postgres;
pub mod webhook;
pub use zerotouch_store::Backend;
use zerotouch_store::test_support::TestDatabase;

pub mod openssl;
pub mod softhsm;
pub mod swtpm;

/// Both database backends, for tests that run on each.
pub const BACKENDS: [Backend; 2] = [Backend::Sqlite, Backend::Postgres];

/// Installs the rustls crypto provider (see docs/dependencies.md: two providers are compiled in).
pub fn init() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}

/// The `zerotouch` binary of this build (`ZEROTOUCH_BIN`, else beside the running executable or its parent dir).
pub fn binary() -> anyhow::Result<PathBuf> {
    built_binary("zerotouch", "ZEROTOUCH_BIN")
}

/// The `zerotouch-agent` binary of this build (`ZEROTOUCH_AGENT_BIN`, else as [`binary`]).
pub fn agent_binary() -> anyhow::Result<PathBuf> {
    built_binary("zerotouch-agent", "ZEROTOUCH_AGENT_BIN")
}

fn built_binary(name: &str, variable: &str) -> anyhow::Result<PathBuf> {
    if let Ok(path) = std::env::var(variable) {
        return Ok(PathBuf::from(path));
    }
    // Test executables live in target/<profile>/deps, other tools in target/<profile>.
    let exe = std::env::current_exe()?;
    let candidates: Vec<PathBuf> = exe.ancestors().skip(1).take(2).map(|dir| dir.join(name)).collect();
    candidates
        .iter()
        .find(|bin| bin.is_file())
        .cloned()
        .with_context(|| format!("no {name} binary at {candidates:?}; build it with `cargo build --bin {name}`"))
}

/// How to start a server.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Reuse this data dir (a restart) instead of a fresh one.
    pub data_dir: Option<PathBuf>,
    /// Use this database URL instead of a fresh database.
    pub database_url: Option<String>,
    /// Extra arguments after `serve`. A `--service-listen`, `--device-listen` or `--mqtt-listen` here replaces the
    /// kit's `127.0.0.1:0` for that listener.
    pub args: Vec<String>,
    /// Extra environment variables.
    pub env: Vec<(String, String)>,
    /// The CAs the kit's client trusts, when the server's TLS certificate is not of its own data dir (a replica
    /// given another's `--tls-cert`); default: the data dir's `trust-bundle.pem`.
    pub trust_bundle: Option<PathBuf>,
}

/// A running `zerotouch serve`.
#[derive(Debug)]
pub struct Server {
    child: Option<Child>,
    /// The data dir.
    pub data_dir: PathBuf,
    /// The database URL.
    pub database_url: String,
    /// `https://127.0.0.1:PORT` of the admin API.
    pub admin_url: String,
    /// `https://127.0.0.1:PORT` of the device API.
    pub device_url: String,
    /// `127.0.0.1:PORT` of the MQTT device endpoint (MQTT over TLS).
    pub mqtt_addr: std::net::SocketAddr,
    /// The id scope devices use.
    pub id_scope: String,
    /// A client that trusts the data dir's trust bundle.
    pub client: reqwest::Client,
    log_dir: PathBuf,
    /// The log directories of the processes this one replaced ([`Server::restart_with`]), oldest first.
    earlier_log_dirs: Vec<PathBuf>,
    _temp: Vec<tempfile::TempDir>,
    _database: Option<TestDatabase>,
    /// Tokens minted through [`Server::token`]: secrets that must never appear in the service's logs.
    minted: std::sync::Mutex<Vec<String>>,
}

fn read_lossy(path: &Path) -> String {
    std::fs::read(path).map(|b| String::from_utf8_lossy(&b).into_owned()).unwrap_or_default()
}

/// What a process printed into `log_dir` (stdout, then stderr).
fn logs_in(log_dir: &Path) -> String {
    format!("{}{}", read_lossy(&log_dir.join("stdout")), read_lossy(&log_dir.join("stderr")))
}

impl Server {
    /// Starts a server on a fresh data dir and a fresh database on `backend`.
    pub async fn start(backend: Backend) -> anyhow::Result<Self> {
        Self::start_with(backend, Options::default()).await
    }

    /// Starts a server as `options` say, on a fixed port that an SDK under test hard-codes: while another process
    /// (another test binary, a second checkout's run) holds the port, tries again every second for up to two
    /// minutes. `.config/nextest.toml` keeps this suite's own tests on one port apart.
    pub async fn start_on_fixed_port(backend: Backend, options: Options) -> anyhow::Result<Self> {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            match Self::start_with(backend, options.clone()).await {
                Err(e) if e.to_string().contains("Address already in use") && Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                result => return result,
            }
        }
    }

    /// Starts a server as `options` say.
    pub async fn start_with(backend: Backend, options: Options) -> anyhow::Result<Self> {
        init();
        let temp = tempfile::tempdir()?;
        let (database, database_url) = match &options.database_url {
            Some(url) => (None, url.clone()),
            None => {
                let db = TestDatabase::create(backend).await?;
                let url = db.url.clone();
                (Some(db), url)
            }
        };
        let data_dir = options.data_dir.clone().unwrap_or_else(|| temp.path().join("data"));
        let log_dir = temp.path().join(format!("logs-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&log_dir)?;
        let mut command = Command::new(binary()?);
        command.arg("serve").arg("--data-dir").arg(&data_dir).arg("--database-url").arg(&database_url);
        // Port 0 for every listener the caller does not place itself (a flag may be given only once).
        for flag in ["--service-listen", "--device-listen", "--mqtt-listen"] {
            if !options.args.iter().any(|a| a == flag || a.starts_with(&format!("{flag}="))) {
                command.args([flag, "127.0.0.1:0"]);
            }
        }
        command
            .args(&options.args)
            .env("ZEROTOUCH_LOG", "debug")
            .env_remove("DATABASE_URL")
            .envs(options.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(log_dir.join("stdout"))?)
            .stderr(std::fs::File::create(log_dir.join("stderr"))?);
        let child = command.spawn().context("cannot start zerotouch")?;
        let mut server = Self {
            child: Some(child),
            data_dir,
            database_url,
            admin_url: String::new(),
            device_url: String::new(),
            mqtt_addr: std::net::SocketAddr::from(([0, 0, 0, 0], 0)),
            id_scope: String::new(),
            client: reqwest::Client::new(),
            log_dir,
            earlier_log_dirs: Vec::new(),
            _temp: vec![temp],
            _database: database,
            minted: std::sync::Mutex::new(Vec::new()),
        };
        server.wait_until_serving(options.trust_bundle.as_deref()).await?;
        Ok(server)
    }

    async fn wait_until_serving(&mut self, trust_bundle: Option<&Path>) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = self.child.as_mut().map(Child::try_wait).transpose()?.flatten() {
                bail!("zerotouch exited with {status} before serving:\n{}", self.logs());
            }
            let stdout = read_lossy(&self.log_dir.join("stdout"));
            let line = |prefix: &str| stdout.lines().find_map(|l| l.strip_prefix(prefix)).map(|v| v.trim().to_owned());
            if let (Some(admin), Some(device), Some(mqtt), Some(scope)) = (
                line("zerotouch: admin API"),
                line("zerotouch: device API"),
                line("zerotouch: MQTT device"),
                line("zerotouch: id scope"),
            ) {
                self.admin_url = admin;
                self.device_url = device;
                self.mqtt_addr = mqtt
                    .trim_start_matches("mqtts://")
                    .parse()
                    .with_context(|| format!("the MQTT address {mqtt:?} is not an address"))?;
                self.id_scope = scope;
                break;
            }
            if Instant::now() > deadline {
                bail!("zerotouch did not start serving within 60 s:\n{}", self.logs());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.client =
            client_trusting(&trust_bundle.map_or_else(|| self.data_dir.join("trust-bundle.pem"), Path::to_path_buf))?;
        loop {
            if self.client.get(self.url("/healthz")).send().await.is_ok_and(|r| r.status().is_success()) {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("/healthz did not answer within 60 s:\n{}", self.logs());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Options for another replica of this server: the same database, and the master key of this server's data dir
    /// (its own data dir is fresh), so that it opens the same sealed secrets.
    pub fn replica_options(&self) -> Options {
        Options {
            database_url: Some(self.database_url.clone()),
            args: vec!["--master-key-file".into(), self.data_dir.join("master-key").display().to_string()],
            ..Default::default()
        }
    }

    /// A rustls client configuration trusting this server's trust bundle (for raw TLS and MQTT clients).
    pub fn tls_config(&self) -> anyhow::Result<rustls::ClientConfig> {
        init();
        let pem = std::fs::read(self.data_dir.join("trust-bundle.pem"))?;
        let mut roots = rustls::RootCertStore::empty();
        for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
            roots.add(cert?)?;
        }
        Ok(rustls::ClientConfig::builder().with_root_certificates(roots).with_no_client_auth())
    }

    /// A raw TLS connection to one of this server's listeners at `address` (no ALPN: HTTP/1.1 or MQTT), trusting
    /// its trust bundle, for tests that write their own bytes.
    pub async fn raw_tls(
        &self,
        address: impl tokio::net::ToSocketAddrs,
    ) -> anyhow::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
        let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(self.tls_config()?));
        let tcp = tokio::net::TcpStream::connect(address).await?;
        let name = rustls::pki_types::ServerName::try_from("127.0.0.1")?;
        Ok(connector.connect(name, tcp).await?)
    }

    /// The full URL of a device API path.
    pub fn device(&self, path: &str) -> String {
        format!("{}{path}", self.device_url)
    }

    /// The full URL of an admin API path.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.admin_url)
    }

    /// A development admin token for `role`, from `zerotouch admin-token`.
    pub fn token(&self, role: &str) -> anyhow::Result<String> {
        let token = admin_token(&self.data_dir, &["--role", role])?;
        if let Ok(mut minted) = self.minted.lock() {
            minted.push(token.clone());
        }
        Ok(token)
    }

    /// The secrets this server's logs must not contain: the base64 lines of its private key files and the
    /// tokens minted for it. Every test that starts a server checks them when the server is dropped.
    pub fn secrets(&self) -> Vec<String> {
        let mut secrets: Vec<String> =
            ["root-ca.key", "server.key", "token-signing.key", "ca-passphrase", "master-key"]
                .iter()
                .filter_map(|name| std::fs::read_to_string(self.data_dir.join(name)).ok())
                .flat_map(|pem| {
                    pem.lines()
                        .filter(|l| !l.starts_with("-----") && l.len() >= 16)
                        .map(str::to_owned)
                        .collect::<Vec<_>>()
                })
                .collect();
        if let Ok(minted) = self.minted.lock() {
            secrets.extend(minted.iter().cloned());
        }
        secrets
    }

    /// Panics if a secret of [`Server::secrets`] appears in the logs (naming which, not showing it).
    pub fn assert_no_secret_in_logs(&self) {
        let logs = self.all_logs();
        for (i, secret) in self.secrets().iter().enumerate() {
            assert!(
                !logs.contains(secret.as_str()),
                "secret #{i} ({} chars) appears in the service's logs",
                secret.len()
            );
        }
    }

    /// The running process's id (none once stopped).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Everything the running process printed so far (stdout, then stderr).
    pub fn logs(&self) -> String {
        logs_in(&self.log_dir)
    }

    /// Waits, up to `timeout`, until the running process has logged the arrival of `count` requests whose path
    /// contains `path` (its access log's "request received", at debug level: before the handler reads the body);
    /// returns how many it has logged.
    pub async fn requests_received(&self, path: &str, count: usize, timeout: Duration) -> usize {
        let received = || self.logs().lines().filter(|l| l.contains("request received") && l.contains(path)).count();
        let deadline = Instant::now() + timeout;
        while received() < count && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        received()
    }

    /// Everything every process on this data dir printed: the ones it replaced on restarts, then the running one.
    pub fn all_logs(&self) -> String {
        self.earlier_log_dirs.iter().chain([&self.log_dir]).map(|dir| logs_in(dir)).collect()
    }

    /// Sends SIGTERM and waits (at most 30 s) for the process to exit; returns its status.
    pub fn stop(&mut self) -> anyhow::Result<ExitStatus> {
        let mut child = self.child.take().context("already stopped")?;
        Command::new("kill").arg("-TERM").arg(child.id().to_string()).status()?;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = child.try_wait()? {
                return Ok(status);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                bail!("zerotouch did not stop within 30 s of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills the process with SIGKILL (a crash: nothing drains) and waits for it.
    pub fn kill(&mut self) -> anyhow::Result<ExitStatus> {
        let mut child = self.child.take().context("already stopped")?;
        child.kill()?;
        Ok(child.wait()?)
    }

    /// Stops the server (SIGTERM) and starts a new one on the same data dir and database.
    pub async fn restart(self, backend: Backend) -> anyhow::Result<(ExitStatus, Server)> {
        self.restart_with(backend, Options::default()).await
    }

    /// Stops the server (SIGTERM) and starts a new one on the same data dir and database, with `options` (whose
    /// data dir and database are replaced).
    pub async fn restart_with(mut self, backend: Backend, options: Options) -> anyhow::Result<(ExitStatus, Server)> {
        let status = self.stop()?;
        let options =
            Options { data_dir: Some(self.data_dir.clone()), database_url: Some(self.database_url.clone()), ..options };
        let mut next = Server::start_with(backend, options).await?;
        next._temp.append(&mut self._temp);
        next.earlier_log_dirs = std::mem::take(&mut self.earlier_log_dirs);
        next.earlier_log_dirs.push(self.log_dir.clone());
        next._database = self._database.take();
        if let (Ok(mut theirs), Ok(ours)) = (next.minted.lock(), self.minted.lock()) {
            theirs.extend(ours.iter().cloned());
        }
        Ok((status, next))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        // Every test that ran a server checks, on the way out, that no secret reached its logs.
        if !std::thread::panicking() {
            self.assert_no_secret_in_logs();
        }
    }
}

/// A caller of the admin API with one token: the requests end-to-end tests send, as an operator's scripts would.
///
/// A request that cannot be sent at all panics (the test fails there); the answer, whatever its status, is the
/// caller's to check.
#[derive(Debug)]
pub struct Api<'a> {
    server: &'a Server,
    token: String,
}

#[allow(clippy::unwrap_used, reason = "a test helper: a request that cannot be sent fails the test")]
impl<'a> Api<'a> {
    /// A caller with a development token for `role` (see [`Server::token`]).
    pub fn new(server: &'a Server, role: &str) -> Self {
        Self::with_token(server, server.token(role).unwrap())
    }

    /// A caller with `token`.
    pub fn with_token(server: &'a Server, token: String) -> Self {
        Self { server, token }
    }

    /// The caller's bearer token.
    pub fn token(&self) -> &str {
        &self.token
    }

    /// A request to an admin API path with the caller's token, to add headers or a body to.
    pub fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.server.client.request(method, self.server.url(path)).bearer_auth(&self.token)
    }

    /// Sends `method` to `path` with an optional JSON body and an optional `If-Match` (`*` as is, an etag quoted).
    pub async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&serde_json::Value>,
        if_match: Option<&str>,
    ) -> reqwest::Response {
        let mut request = self.request(method, path);
        if let Some(body) = body {
            request = request.json(body);
        }
        if let Some(etag) = if_match {
            let tag = if etag == "*" { etag.to_owned() } else { format!("\"{etag}\"") };
            request = request.header("If-Match", tag);
        }
        request.send().await.unwrap()
    }

    /// `GET path`.
    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.send(reqwest::Method::GET, path, None, None).await
    }

    /// `POST path`, with a JSON body or none.
    pub async fn post(&self, path: &str, body: Option<&serde_json::Value>) -> reqwest::Response {
        self.send(reqwest::Method::POST, path, body, None).await
    }

    /// `PUT path` with a JSON body and no `If-Match`.
    pub async fn put(&self, path: &str, body: &serde_json::Value) -> reqwest::Response {
        self.send(reqwest::Method::PUT, path, Some(body), None).await
    }

    /// `PUT path` with a JSON body under `If-Match: "etag"` (or `*`).
    pub async fn put_if_match(&self, path: &str, body: &serde_json::Value, etag: &str) -> reqwest::Response {
        self.send(reqwest::Method::PUT, path, Some(body), Some(etag)).await
    }

    /// `DELETE path`, under `If-Match` when an etag is given.
    pub async fn delete(&self, path: &str, if_match: Option<&str>) -> reqwest::Response {
        self.send(reqwest::Method::DELETE, path, None, if_match).await
    }
}

/// Runs `zerotouch admin-token --data-dir DIR ARGS...` and returns the token.
pub fn admin_token(data_dir: &Path, args: &[&str]) -> anyhow::Result<String> {
    let output = Command::new(binary()?).arg("admin-token").arg("--data-dir").arg(data_dir).args(args).output()?;
    if !output.status.success() {
        bail!("admin-token failed: {}", String::from_utf8_lossy(&output.stderr));
    }
    Ok(String::from_utf8(output.stdout)?.trim().to_owned())
}

/// A reqwest client that trusts exactly the PEM bundle at `path`.
pub fn client_trusting(path: &Path) -> anyhow::Result<reqwest::Client> {
    init();
    let pem = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    // Idle connections are not reused after 2 s: the service closes them after 5 s (actix's keep-alive), and a
    // request sent on one as it closes fails with IncompleteMessage (seen after a 7 s Python SDK run).
    let mut builder = reqwest::Client::builder()
        .tls_built_in_root_certs(false)
        .timeout(Duration::from_secs(60))
        .pool_idle_timeout(Duration::from_secs(2));
    for cert in reqwest::Certificate::from_pem_bundle(&pem)? {
        builder = builder.add_root_certificate(cert);
    }
    Ok(builder.build()?)
}
