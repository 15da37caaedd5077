//! A real Mosquitto 2 broker set up exactly as `docs/hubs/mosquitto.md` says: its commands, configuration and hub
//! document are read from the page and used word for word, with only paths, ports and host names replaced by the
//! test's own; the real `mosquitto_pub`/`mosquitto_sub` are the devices and the subscriber.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::Server;
use crate::openssl::{make_ca, make_certificate};

/// The page the broker is set up from.
pub const GUIDE: &str = include_str!("../../docs/hubs/mosquitto.md");

/// The fenced code blocks of `GUIDE` with the language `lang`, in order.
pub fn guide_blocks(lang: &str) -> Vec<String> {
    fenced_blocks(GUIDE, lang)
}

/// The fenced code blocks of the Markdown `text` with the language `lang`, in order.
pub fn fenced_blocks(text: &str, lang: &str) -> Vec<String> {
    let mut blocks = Vec::new();
    let mut current: Option<String> = None;
    for line in text.lines() {
        match (&mut current, line.strip_prefix("```")) {
            (None, Some(info)) if info.trim() == lang => current = Some(String::new()),
            (Some(_), Some("")) => blocks.extend(current.take()),
            (Some(block), _) => {
                block.push_str(line);
                block.push('\n');
            }
            (None, _) => {}
        }
    }
    blocks
}

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A Mosquitto program (`mosquitto`, `mosquitto_pub`, ...), failing the test with an install hint.
pub fn program(name: &str) -> PathBuf {
    for dir in ["/usr/sbin", "/usr/bin", "/usr/local/sbin", "/usr/local/bin", "/sbin"] {
        let path = Path::new(dir).join(name);
        if path.is_file() {
            return path;
        }
    }
    panic!("`{name}` is not installed: apt-get install mosquitto mosquitto-clients (scripts/test does)")
}

/// A running `mosquitto -c CONF` whose files live in `dir`; killed on drop.
pub struct BrokerProcess {
    /// The broker's files (its dynsec file, certificates, log).
    pub dir: tempfile::TempDir,
    conf: PathBuf,
    ports: Vec<u16>,
    child: Option<Child>,
}

impl BrokerProcess {
    /// A directory the broker can use: it drops to user `mosquitto` when started as root, so it must read its files
    /// and write dynsec's there.
    pub fn directory() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
        dir
    }

    /// Starts the broker with `conf` (a file in `dir`) and waits until it listens on every one of `ports`.
    pub fn start(dir: tempfile::TempDir, conf: PathBuf, ports: Vec<u16>) -> Self {
        let mut broker = Self { dir, conf, ports, child: None };
        broker.spawn();
        broker
    }

    fn spawn(&mut self) {
        let log = std::fs::File::create(self.dir.path().join("mosquitto.log")).unwrap();
        let child = Command::new(program("mosquitto"))
            .arg("-c")
            .arg(&self.conf)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        for &port in &self.ports {
            while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
                if let Some(Ok(Some(status))) = self.child.as_mut().map(Child::try_wait) {
                    panic!("mosquitto exited ({status}):\n{}", self.log());
                }
                assert!(Instant::now() < deadline, "mosquitto did not listen on {port}:\n{}", self.log());
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }

    /// Stops the broker (its files stay).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the stopped broker again with the same files and ports.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    /// The broker's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("mosquitto.log")).unwrap_or_default()
    }
}

impl Drop for BrokerProcess {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The dynsec admin account on a broker's plain loopback listener.
#[derive(Debug, Clone)]
pub struct BrokerAdmin {
    /// The listener's port.
    pub port: u16,
    /// The admin's username.
    pub username: String,
    /// The admin's password.
    pub password: String,
}

impl BrokerAdmin {
    /// `mosquitto_ctrl dynsec ARGS...` as the admin: its output.
    pub fn ctrl(&self, args: &[&str]) -> String {
        let out = Command::new(program("mosquitto_ctrl"))
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string(), "-u", &self.username, "-P", &self.password])
            .arg("dynsec")
            .args(args)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
    }

    /// The dynsec client names.
    pub fn clients(&self) -> Vec<String> {
        self.ctrl(&["listClients"]).lines().map(str::trim).filter(|l| !l.is_empty()).map(str::to_owned).collect()
    }

    /// Subscribes as the admin (whose role may subscribe to `#`) to `topic` with the real `mosquitto_sub`, writing
    /// its output into `dir`; returns once the broker granted the subscription.
    pub fn subscribe(&self, dir: &Path, topic: &str) -> Subscriber {
        let out_path = dir.join(format!("sub-{}.out", uuid::Uuid::new_v4().simple()));
        let out = std::fs::File::create(&out_path).unwrap();
        // Line-buffered: mosquitto_sub buffers a file's output until it exits.
        let child = Command::new("stdbuf")
            .arg("-oL")
            .arg(program("mosquitto_sub"))
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string(), "-u", &self.username, "-P", &self.password])
            .args(["-t", topic, "-v", "-q", "1", "-d"])
            .stdout(out)
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let subscriber = Subscriber { child, out_path };
        let granted = subscriber.wait_for("SUBACK", Duration::from_secs(5));
        assert!(granted, "the admin's subscription was not granted: {}", subscriber.output());
        subscriber
    }
}

/// How a device logs in to a broker.
#[derive(Debug, Clone, Copy)]
pub enum DeviceLogin<'a> {
    /// A client certificate and its key (PEM files).
    Certificate(&'a Path, &'a Path),
    /// A username and password.
    Password(&'a str, &'a str),
}

/// Publishes `message` to `topic` with the real `mosquitto_pub` (TLS verified with `server_ca`, QoS 1, MQTT 5).
pub fn publish(port: u16, server_ca: &Path, login: DeviceLogin<'_>, topic: &str, message: &str) -> Published {
    let mut command = Command::new(program("mosquitto_pub"));
    command.args(["-h", "127.0.0.1", "-p", &port.to_string()]).arg("--cafile").arg(server_ca);
    match login {
        DeviceLogin::Certificate(cert, key) => command.arg("--cert").arg(cert).arg("--key").arg(key),
        DeviceLogin::Password(username, password) => command.args(["-u", username, "-P", password]),
    };
    let out = command.args(["-t", topic, "-m", message, "-q", "1", "-V", "mqttv5", "-d"]).output().unwrap();
    Published::from(out)
}

/// A broker configured from the guide.
pub struct Broker {
    /// The running broker; its dir stands for both `/etc/mosquitto` and `/var/lib/mosquitto` of the guide.
    pub process: BrokerProcess,
    /// The hub's host name in zerotouch.
    pub host_name: String,
    /// zerotouch's admin account (the guide's step 2) on its listener (the guide's 1883).
    pub admin: BrokerAdmin,
    /// The certificate listener (the guide's 8883).
    pub cert_port: u16,
    /// The password listener (the guide's 8884).
    pub password_port: u16,
    /// The CA of the broker's own TLS certificate (devices verify the broker with it).
    pub server_ca: PathBuf,
}

impl Broker {
    /// Sets a broker up for `server` as the guide says (steps 2 and 3) and starts it; `host_name` names it in
    /// zerotouch (step 4 is [`Broker::hub_document`]).
    pub fn start(server: &Server, host_name: &str) -> Self {
        let dir = BrokerProcess::directory();
        std::fs::create_dir_all(dir.path().join("certs")).unwrap();
        let (admin_port, cert_port, password_port) = (free_port(), free_port(), free_port());
        let server_ca = make_server_certificate(dir.path());
        let ports = Ports { admin: admin_port, cert: cert_port, password: password_port };
        let sh = guide_blocks("sh");
        assert!(sh.len() >= 3, "the guide has its install, dynsec and trust-bundle commands");
        assert!(sh[0].contains("mosquitto mosquitto-clients"), "{}", sh[0]);
        for block in &sh[1..3] {
            let script = localize(block, dir.path(), &ports, server);
            let output = Command::new("bash").args(["-euo", "pipefail", "-c", &script]).output().unwrap();
            assert!(
                output.status.success(),
                "the guide's commands failed:\n{script}\n{}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
        let conf = guide_blocks("conf");
        assert_eq!(conf.len(), 1, "the guide has one broker configuration");
        let conf_path = dir.path().join("zerotouch.conf");
        std::fs::write(&conf_path, localize(&conf[0], dir.path(), &ports, server)).unwrap();
        let process = BrokerProcess::start(dir, conf_path, vec![admin_port, cert_port, password_port]);
        let document = guide_hub_document();
        let settings = &document["settings"];
        let admin = BrokerAdmin {
            port: admin_port,
            username: settings["username"].as_str().unwrap().to_owned(),
            password: settings["password"].as_str().unwrap().to_owned(),
        };
        Self { process, host_name: host_name.to_owned(), admin, cert_port, password_port, server_ca }
    }

    /// The guide's hub document (step 4) for this broker.
    pub fn hub_document(&self) -> Value {
        let mut document = guide_hub_document();
        document["hostName"] = Value::from(self.host_name.clone());
        document["settings"]["port"] = Value::from(self.admin.port);
        document
    }

    /// The dynsec client names.
    pub fn clients(&self) -> Vec<String> {
        self.admin.clients()
    }

    /// Links the broker to zerotouch as the guide's step 4 says; checks that the password is not shown and waits
    /// until the hub is healthy.
    pub async fn link(&self, api: &crate::Api<'_>) {
        let host = &self.host_name;
        let stored = ok_json(api.put(&format!("/hubs/{host}"), &self.hub_document()).await).await;
        assert_eq!(stored["kind"], "mosquitto");
        assert_eq!(stored["settings"]["port"], self.admin.port);
        assert!(stored["settings"].get("password").is_none(), "the admin password is write-only: {stored}");
        let got = ok_json(api.get(&format!("/hubs/{host}")).await).await;
        assert!(!got.to_string().contains("CHANGE-ME"), "{got}");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let status = ok_json(api.get(&format!("/hubs/{host}/status")).await).await;
            if status["health"]["status"] == "healthy" {
                break;
            }
            assert!(Instant::now() < deadline, "{host} never became healthy: {status}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Subscribes as the admin to `topic`, until dropped.
    pub fn subscribe(&self, topic: &str) -> Subscriber {
        self.admin.subscribe(self.process.dir.path(), topic)
    }

    /// Publishes as a certificate device on the certificate listener.
    pub fn publish_with_cert(&self, cert: &Path, key: &Path, topic: &str, message: &str) -> Published {
        publish(self.cert_port, &self.server_ca, DeviceLogin::Certificate(cert, key), topic, message)
    }

    /// Publishes as a symmetric-key device on the password listener.
    pub fn publish_with_password(&self, username: &str, password: &str, topic: &str, message: &str) -> Published {
        publish(self.password_port, &self.server_ca, DeviceLogin::Password(username, password), topic, message)
    }

    /// The broker's log so far.
    pub fn log(&self) -> String {
        self.process.log()
    }
}

struct Ports {
    admin: u16,
    cert: u16,
    password: u16,
}

/// The JSON body of a successful answer (Null when empty); fails the test on an error status.
async fn ok_json(response: reqwest::Response) -> Value {
    let status = response.status();
    let text = response.text().await.unwrap();
    assert!(status.is_success(), "{status}: {text}");
    serde_json::from_str(&text).unwrap_or(Value::Null)
}

/// The guide's hub document as written.
fn guide_hub_document() -> Value {
    let json = guide_blocks("json");
    assert_eq!(json.len(), 1, "the guide has one hub document");
    serde_json::from_str(&json[0]).unwrap()
}

/// The guide's text with the test's paths, ports, plugin and zerotouch address.
fn localize(text: &str, dir: &Path, ports: &Ports, server: &Server) -> String {
    let dir = dir.display().to_string();
    let plugin = [
        "/usr/lib/x86_64-linux-gnu/mosquitto_dynamic_security.so",
        "/usr/lib/aarch64-linux-gnu/mosquitto_dynamic_security.so",
        "/usr/lib/mosquitto/mosquitto_dynamic_security.so",
    ]
    .into_iter()
    .find(|p| Path::new(p).is_file())
    .expect("the dynamic-security plugin is installed (apt-get install mosquitto)");
    text.replace("/usr/lib/x86_64-linux-gnu/mosquitto_dynamic_security.so", plugin)
        .replace("/var/lib/mosquitto", &dir)
        .replace("/etc/mosquitto", &dir)
        .replace("listener 1883 127.0.0.1", &format!("listener {} 127.0.0.1", ports.admin))
        .replace("listener 8883", &format!("listener {} 127.0.0.1", ports.cert))
        .replace("listener 8884", &format!("listener {} 127.0.0.1", ports.password))
        .replace("https://zerotouch.example.com:8443", &server.device_url)
        .replace("zerotouch-ca.pem", &server.data_dir.join("trust-bundle.pem").display().to_string())
        .replace("mqtt.example.com.", "broker.")
        .replace("mosquitto_ctrl ", &format!("{} ", program("mosquitto_ctrl").display()))
}

/// A TLS server certificate (`certs/broker.pem` and `.key` in `dir`, for 127.0.0.1 and localhost) from a CA made
/// here with openssl; returns the CA's file.
pub fn make_server_certificate(dir: &Path) -> PathBuf {
    std::fs::create_dir_all(dir.join("certs")).unwrap();
    make_ca(dir, "server-ca", None);
    let ext = "basicConstraints=critical,CA:false\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n\
               subjectAltName=IP:127.0.0.1,DNS:localhost\n";
    make_certificate(dir, "certs/broker", "localhost", Some("server-ca"), ext);
    for file in ["certs/broker.key", "certs/broker.pem"] {
        std::fs::set_permissions(dir.join(file), std::fs::Permissions::from_mode(0o644)).unwrap();
    }
    dir.join("server-ca.pem")
}

/// What `mosquitto_pub` did and printed.
#[derive(Debug)]
pub struct Published {
    /// Its exit status was 0.
    pub success: bool,
    /// stdout and stderr.
    pub output: String,
}

impl Published {
    /// The broker accepted the connection (CONNACK success).
    pub fn connected(&self) -> bool {
        self.output.contains("received CONNACK (0)")
    }

    /// The broker took the message: the client exited cleanly and got a PUBACK without an error reason.
    pub fn accepted(&self) -> bool {
        self.success && self.output.contains("PUBACK") && !self.output.contains("not authorized")
    }
}

impl From<std::process::Output> for Published {
    fn from(out: std::process::Output) -> Self {
        let output = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
        Self { success: out.status.success(), output }
    }
}

/// A running `mosquitto_sub`; killed on drop.
pub struct Subscriber {
    child: Child,
    out_path: PathBuf,
}

impl Subscriber {
    /// What it printed so far.
    pub fn output(&self) -> String {
        std::fs::read_to_string(&self.out_path).unwrap_or_default()
    }

    /// Waits up to `timeout` for `text` in its output.
    pub fn wait_for(&self, text: &str, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self.output().contains(text) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    }

    /// Whether a message `payload` on `topic` arrived within `timeout`.
    pub fn received(&self, topic: &str, payload: &str, timeout: Duration) -> bool {
        self.wait_for(&format!("{topic} {payload}"), timeout)
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
