//! Test support: a real Mosquitto 2 broker with dynamic security on free loopback ports, its own test CA, and
//! the real `mosquitto_pub`/`mosquitto_sub` clients (the process and client helpers are the end-to-end kit's,
//! `zerotouch_tests::mosquitto`).
#![allow(dead_code, unreachable_pub)]

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

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

/// Finds the dynamic-security plugin shipped with the `mosquitto` package.
pub fn require_plugin() -> PathBuf {
    PLUGIN_CANDIDATES.iter().map(PathBuf::from).find(|p| p.is_file()).unwrap_or_else(|| {
        panic!(
            "the Mosquitto dynamic-security plugin is not installed (looked in {PLUGIN_CANDIDATES:?}); \
             apt-get install mosquitto"
        )
    })
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

use zerotouch_tests::mosquitto::{BrokerAdmin, BrokerProcess, DeviceLogin, publish};
pub use zerotouch_tests::mosquitto::{Published, Subscriber, free_port, program as require_program};

/// A running broker: admin listener (plain, loopback), password listener (TLS), certificate listener (TLS with
/// client certificates, identity as username).
pub struct Broker {
    pub process: BrokerProcess,
    pub ca: TestCa,
    pub admin: BrokerAdmin,
    pub password_port: u16,
    pub cert_port: u16,
}

impl Broker {
    /// Initialises dynsec with an admin user and starts a broker on free ports.
    pub fn start() -> Self {
        Self::start_on(free_port())
    }

    /// Like [`Broker::start`], with the admin listener on `admin_port`.
    pub fn start_on(admin_port: u16) -> Self {
        let plugin = require_plugin();
        let dir = BrokerProcess::directory();
        let ca = TestCa::new("zerotouch test CA");
        let (server_cert, server_key) = ca.server();
        write(dir.path(), "ca.pem", &ca.pem);
        write(dir.path(), "server.pem", &server_cert);
        write(dir.path(), "server.key", &server_key);
        let dynsec = dir.path().join("dynamic-security.json");
        let init = Command::new(require_program("mosquitto_ctrl"))
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
        let process = BrokerProcess::start(dir, config_path, vec![admin_port, password_port, cert_port]);
        let admin = BrokerAdmin { port: admin_port, username: "admin".into(), password: ADMIN_PASSWORD.into() };
        Self { process, ca, admin, password_port, cert_port }
    }

    /// The broker's files.
    pub fn dir(&self) -> &Path {
        self.process.dir.path()
    }

    /// Stops the broker (its dynsec file stays).
    pub fn stop(&mut self) {
        self.process.stop();
    }

    /// Starts the stopped broker again on the same ports with the same dynsec file.
    pub fn restart(&mut self) {
        self.process.restart();
    }

    /// The adapter settings for this broker's admin listener.
    pub fn settings(&self) -> serde_json::Value {
        serde_json::json!({
            "host": "127.0.0.1",
            "port": self.admin.port,
            "username": "admin",
            "password": ADMIN_PASSWORD,
            "timeoutMs": 3000,
        })
    }

    /// Writes a client certificate for `cn` into the broker's dir: (cert path, key path, thumbprint).
    pub fn client_cert(&self, cn: &str) -> (PathBuf, PathBuf, String) {
        let (cert, key, thumbprint) = self.ca.client(cn);
        let cert = write(self.dir(), &format!("{cn}.pem"), &cert);
        let key = write(self.dir(), &format!("{cn}.key"), &key);
        (cert, key, thumbprint)
    }

    /// `mosquitto_ctrl dynsec ARGS...` as the admin, its output.
    pub fn ctrl(&self, args: &[&str]) -> String {
        self.admin.ctrl(args)
    }

    /// Subscribes as the admin to `topic` with the real `mosquitto_sub`.
    pub fn subscribe(&self, topic: &str) -> Subscriber {
        self.admin.subscribe(self.dir(), topic)
    }

    /// Publishes with the real `mosquitto_pub` as a certificate device (QoS 1, MQTT 5).
    pub fn publish_with_cert(&self, cert: &Path, key: &Path, topic: &str, message: &str) -> Published {
        publish(self.cert_port, &self.dir().join("ca.pem"), DeviceLogin::Certificate(cert, key), topic, message)
    }

    /// Publishes with the real `mosquitto_pub` as a key device (`-u id -P key`, TLS, QoS 1, MQTT 5).
    pub fn publish_with_password(&self, username: &str, password: &str, topic: &str, message: &str) -> Published {
        publish(
            self.password_port,
            &self.dir().join("ca.pem"),
            DeviceLogin::Password(username, password),
            topic,
            message,
        )
    }
}
