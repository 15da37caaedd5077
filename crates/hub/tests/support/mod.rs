//! Test support: a real Mosquitto 2 broker with dynamic security on free loopback ports, test certificates, and
//! the real `mosquitto_pub`/`mosquitto_sub` clients.
#![allow(dead_code, unreachable_pub)]

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
};

/// The dynsec admin password the tests use.
pub const ADMIN_PASSWORD: &str = "admin-password-for-tests";

const PLUGIN_CANDIDATES: &[&str] = &[
    "/usr/lib/x86_64-linux-gnu/mosquitto_dynamic_security.so",
    "/usr/lib/aarch64-linux-gnu/mosquitto_dynamic_security.so",
    "/usr/lib/mosquitto/mosquitto_dynamic_security.so",
    "/usr/lib/mosquitto_dynamic_security.so",
    "/usr/local/lib/mosquitto_dynamic_security.so",
];

/// Finds a program on PATH (or /usr/sbin, where Debian puts `mosquitto`), failing the test with an install hint.
pub fn require_program(name: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let mut dirs: Vec<PathBuf> = std::env::split_paths(&path).collect();
    dirs.extend(["/usr/sbin", "/usr/local/sbin", "/sbin"].map(PathBuf::from));
    for dir in dirs {
        let candidate = dir.join(name);
        if candidate.is_file() {
            return candidate;
        }
    }
    panic!(
        "`{name}` is not installed; these tests need a real Mosquitto 2: apt-get install mosquitto mosquitto-clients"
    )
}

/// Finds the dynamic-security plugin shipped with the `mosquitto` package.
pub fn require_plugin() -> PathBuf {
    PLUGIN_CANDIDATES.iter().map(PathBuf::from).find(|p| p.is_file()).unwrap_or_else(|| {
        panic!(
            "the Mosquitto dynamic-security plugin is not installed (looked in {PLUGIN_CANDIDATES:?}); \
             apt-get install mosquitto"
        )
    })
}

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A test CA and the certificates it signs.
pub struct TestCa {
    issuer: Issuer<'static, KeyPair>,
    pub pem: String,
}

impl TestCa {
    pub fn new(name: &str) -> Self {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages =
            vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
        let cert = params.self_signed(&key).unwrap();
        Self { issuer: Issuer::new(params, key), pem: cert.pem() }
    }

    /// A server certificate for 127.0.0.1 and localhost: (cert PEM, key PEM).
    pub fn server(&self) -> (String, String) {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()]).unwrap();
        params.distinguished_name.push(DnType::CommonName, "localhost");
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    /// A client certificate with subject CN `cn`: (cert PEM, key PEM, hex SHA-256 thumbprint).
    pub fn client(&self, cn: &str) -> (String, String, String) {
        use sha2::Digest;
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, cn);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        let thumbprint = hex::encode(sha2::Sha256::digest(cert.der()));
        (cert.pem(), key.serialize_pem(), thumbprint)
    }
}

/// Writes `text` to `dir/name`, readable by the broker (which drops to user `mosquitto` when started as root).
pub fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    let mut file = std::fs::File::create(&path).unwrap();
    file.write_all(text.as_bytes()).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    path
}

/// A running broker: admin listener (plain, loopback), password listener (TLS), certificate listener (TLS with
/// client certificates, identity as username). Killed on drop.
pub struct Broker {
    pub dir: tempfile::TempDir,
    pub ca: TestCa,
    pub admin_port: u16,
    pub password_port: u16,
    pub cert_port: u16,
    pub config: String,
    child: Option<Child>,
}

impl Broker {
    /// Initialises dynsec with an admin user and starts a broker on free ports.
    pub fn start() -> Self {
        Self::start_on(free_port())
    }

    /// Like [`Broker::start`], with the admin listener on `admin_port`.
    pub fn start_on(admin_port: u16) -> Self {
        let mosquitto_ctrl = require_program("mosquitto_ctrl");
        require_program("mosquitto");
        require_program("mosquitto_pub");
        require_program("mosquitto_sub");
        let plugin = require_plugin();
        let dir = tempfile::tempdir().unwrap();
        // The broker drops to user `mosquitto` when started as root: it must read its files and write dynsec's.
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
        let ca = TestCa::new("zerotouch test CA");
        let (server_cert, server_key) = ca.server();
        write(dir.path(), "ca.pem", &ca.pem);
        write(dir.path(), "server.pem", &server_cert);
        write(dir.path(), "server.key", &server_key);
        let dynsec = dir.path().join("dynamic-security.json");
        let init = Command::new(&mosquitto_ctrl)
            .args(["dynsec", "init"])
            .arg(&dynsec)
            .args(["admin", ADMIN_PASSWORD])
            .output()
            .unwrap();
        assert!(init.status.success(), "mosquitto_ctrl dynsec init failed: {}", String::from_utf8_lossy(&init.stderr));
        std::fs::set_permissions(&dynsec, std::fs::Permissions::from_mode(0o666)).unwrap();
        let (password_port, cert_port) = (free_port(), free_port());
        let d = dir.path().display();
        let config = format!(
            "\
per_listener_settings false
allow_anonymous false
persistence false
log_dest stderr
log_type error
log_type warning
log_type notice
log_type information
plugin {plugin}
plugin_opt_config_file {d}/dynamic-security.json

# zerotouch's admin connection: plain MQTT, loopback only
listener {admin_port} 127.0.0.1

# symmetric-key devices: TLS, username = device id, password = device key
listener {password_port} 127.0.0.1
cafile {d}/ca.pem
certfile {d}/server.pem
keyfile {d}/server.key

# certificate devices: TLS with a client certificate; the username is the certificate's CN
listener {cert_port} 127.0.0.1
cafile {d}/ca.pem
certfile {d}/server.pem
keyfile {d}/server.key
require_certificate true
use_identity_as_username true
",
            plugin = plugin.display()
        );
        let config_path = write(dir.path(), "mosquitto.conf", &config);
        let mut broker = Self { dir, ca, admin_port, password_port, cert_port, config, child: None };
        broker.spawn(&config_path);
        broker
    }

    fn spawn(&mut self, config_path: &Path) {
        let log = std::fs::File::create(self.dir.path().join("mosquitto.log")).unwrap();
        let child = Command::new(require_program("mosquitto"))
            .arg("-c")
            .arg(config_path)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        for port in [self.admin_port, self.password_port, self.cert_port] {
            while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
                if let Some(Ok(Some(status))) = self.child.as_mut().map(Child::try_wait) {
                    panic!("mosquitto exited ({status}):\n{}", self.log());
                }
                assert!(Instant::now() < deadline, "mosquitto did not listen on {port}:\n{}", self.log());
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }

    /// Stops the broker (its dynsec file stays).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the stopped broker again on the same ports with the same dynsec file.
    pub fn restart(&mut self) {
        self.stop();
        let config_path = self.dir.path().join("mosquitto.conf");
        self.spawn(&config_path);
    }

    /// The broker's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("mosquitto.log")).unwrap_or_default()
    }

    /// The adapter settings for this broker's admin listener.
    pub fn settings(&self) -> serde_json::Value {
        serde_json::json!({
            "host": "127.0.0.1",
            "port": self.admin_port,
            "username": "admin",
            "password": ADMIN_PASSWORD,
            "timeoutMs": 3000,
        })
    }

    /// Writes a client certificate for `cn` into the broker's dir: (cert path, key path, thumbprint).
    pub fn client_cert(&self, cn: &str) -> (PathBuf, PathBuf, String) {
        let (cert, key, thumbprint) = self.ca.client(cn);
        let cert = write(self.dir.path(), &format!("{cn}.pem"), &cert);
        let key = write(self.dir.path(), &format!("{cn}.key"), &key);
        (cert, key, thumbprint)
    }

    /// `mosquitto_ctrl dynsec ARGS...` as the admin, its stdout.
    pub fn ctrl(&self, args: &[&str]) -> String {
        let out = Command::new(require_program("mosquitto_ctrl"))
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &self.admin_port.to_string(),
                "-u",
                "admin",
                "-P",
                ADMIN_PASSWORD,
                "dynsec",
            ])
            .args(args)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
    }

    /// Subscribes as the admin (whose role may subscribe to `#`) to `topic` with the real `mosquitto_sub`.
    pub fn subscribe(&self, topic: &str) -> Subscriber {
        let out_path = self.dir.path().join(format!("sub-{}.out", uuid::Uuid::new_v4().simple()));
        let out = std::fs::File::create(&out_path).unwrap();
        let child = Command::new(require_program("mosquitto_sub"))
            .args(["-h", "127.0.0.1", "-p", &self.admin_port.to_string(), "-u", "admin", "-P", ADMIN_PASSWORD])
            .args(["-t", topic, "-v", "-q", "1", "-d"])
            .stdout(out)
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let subscriber = Subscriber { child, out_path };
        subscriber.wait_for("SUBACK", Duration::from_secs(5));
        subscriber
    }

    /// Publishes with the real `mosquitto_pub` as a certificate device (QoS 1, MQTT 5).
    pub fn publish_with_cert(&self, cert: &Path, key: &Path, topic: &str, message: &str) -> Published {
        let out = Command::new(require_program("mosquitto_pub"))
            .args(["-h", "127.0.0.1", "-p", &self.cert_port.to_string()])
            .arg("--cafile")
            .arg(self.dir.path().join("ca.pem"))
            .arg("--cert")
            .arg(cert)
            .arg("--key")
            .arg(key)
            .args(["-t", topic, "-m", message, "-q", "1", "-V", "mqttv5", "-d"])
            .output()
            .unwrap();
        Published::from(out)
    }

    /// Publishes with the real `mosquitto_pub` as a key device (`-u id -P key`, TLS, QoS 1, MQTT 5).
    pub fn publish_with_password(&self, username: &str, password: &str, topic: &str, message: &str) -> Published {
        let out = Command::new(require_program("mosquitto_pub"))
            .args(["-h", "127.0.0.1", "-p", &self.password_port.to_string()])
            .arg("--cafile")
            .arg(self.dir.path().join("ca.pem"))
            .args(["-u", username, "-P", password])
            .args(["-t", topic, "-m", message, "-q", "1", "-V", "mqttv5", "-d"])
            .output()
            .unwrap();
        Published::from(out)
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.stop();
    }
}

/// What `mosquitto_pub` did.
#[derive(Debug)]
pub struct Published {
    pub success: bool,
    pub output: String,
}

impl From<std::process::Output> for Published {
    fn from(out: std::process::Output) -> Self {
        let output = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
        Self { success: out.status.success(), output }
    }
}

impl Published {
    /// The broker accepted the connection (CONNACK success).
    pub fn connected(&self) -> bool {
        self.output.contains("received CONNACK (0)")
    }
}

/// A running `mosquitto_sub`. Killed on drop.
pub struct Subscriber {
    child: Child,
    out_path: PathBuf,
}

impl Subscriber {
    pub fn output(&self) -> String {
        std::fs::read_to_string(&self.out_path).unwrap_or_default()
    }

    /// Waits until the output contains `needle`; whether it did.
    pub fn wait_for(&self, needle: &str, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self.output().contains(needle) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
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
