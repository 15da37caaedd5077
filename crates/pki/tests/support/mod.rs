//! The openssl CLI as the independent side: a scratch directory, a minimal config (so the system's openssl.cnf
//! adds nothing), and helpers that run openssl and return what it wrote.

use std::path::PathBuf;
use std::process::{Command, Output};

use time::OffsetDateTime;

/// A scratch directory with a minimal openssl config and an extensions file.
pub(crate) struct Scratch {
    pub(crate) dir: tempfile::TempDir,
}

/// Extensions sections used with `-extfile ext.cnf -extensions NAME`.
const EXTENSIONS: &str = "\
[ca]
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid:always
[ca_pathlen0]
basicConstraints = critical, CA:TRUE, pathlen:0
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
[ca_no_crlsign]
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign
subjectKeyIdentifier = hash
[ca_no_certsign]
basicConstraints = critical, CA:TRUE
keyUsage = critical, digitalSignature, cRLSign
subjectKeyIdentifier = hash
[not_ca]
basicConstraints = critical, CA:FALSE
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
[device]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = clientAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
[server_only]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = serverAuth
[plain]
subjectKeyIdentifier = hash
";

impl Scratch {
    pub(crate) fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("openssl.cnf"), "[req]\ndistinguished_name = dn\n[dn]\n").unwrap();
        std::fs::write(dir.path().join("ext.cnf"), EXTENSIONS).unwrap();
        Self { dir }
    }

    pub(crate) fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub(crate) fn p(&self, name: &str) -> String {
        self.path(name).to_string_lossy().into_owned()
    }

    pub(crate) fn write(&self, name: &str, bytes: impl AsRef<[u8]>) -> String {
        std::fs::write(self.path(name), bytes).unwrap();
        self.p(name)
    }

    pub(crate) fn read(&self, name: &str) -> Vec<u8> {
        std::fs::read(self.path(name)).unwrap()
    }

    /// Runs openssl in the scratch directory with the minimal config.
    pub(crate) fn run(&self, args: &[&str]) -> Output {
        Command::new("openssl")
            .args(args)
            .current_dir(self.dir.path())
            .env("OPENSSL_CONF", self.path("openssl.cnf"))
            .output()
            .unwrap()
    }

    /// Runs openssl and insists on success; returns stdout.
    pub(crate) fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "openssl {args:?} failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// A DER CSR made by `openssl req -new` with a new key (`newkey`: `ec:P-256`, `ec:P-384`, `rsa:1024`, ...).
    pub(crate) fn csr(&self, name: &str, newkey: &str, subject: &str, addext: &[&str]) -> Vec<u8> {
        let key = format!("{name}.key");
        let out = format!("{name}.csr");
        let mut args =
            vec!["req", "-new", "-nodes", "-keyout", &key, "-subj", subject, "-outform", "DER", "-out", &out];
        let curve;
        match newkey.split_once(':') {
            Some(("ec", c)) => {
                curve = format!("ec_paramgen_curve:{c}");
                args.extend(["-newkey", "ec", "-pkeyopt", &curve]);
            }
            _ => args.extend(["-newkey", newkey]),
        }
        for ext in addext {
            args.extend(["-addext", ext]);
        }
        self.ok(&args);
        self.read(&out)
    }

    /// A self-signed root made by openssl (`name.pem`, `name.key`), P-256, with the given extensions section.
    pub(crate) fn root(&self, name: &str, subject: &str, days: u32, section: &str) {
        let (key, pem, days) = (format!("{name}.key"), format!("{name}.pem"), days.to_string());
        self.ok(&["ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", &key]);
        self.ok(&[
            "req",
            "-new",
            "-x509",
            "-key",
            &key,
            "-subj",
            subject,
            "-days",
            &days,
            "-sha256",
            "-extensions",
            section,
            "-config",
            &self.p("ext.cnf"),
            "-out",
            &pem,
        ]);
    }

    /// A certificate for a new P-256 key (`name.pem`, `name.key`) signed by `issuer` (`issuer.pem`/`issuer.key`).
    pub(crate) fn signed(&self, name: &str, subject: &str, issuer: &str, days: u32, section: &str) {
        let key = format!("{name}.key");
        self.ok(&["ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", &key]);
        self.ok(&["req", "-new", "-key", &key, "-subj", subject, "-out", &format!("{name}.csr")]);
        self.sign_csr(&format!("{name}.csr"), name, issuer, days, section);
    }

    /// Signs a PEM CSR file with `issuer` into `name.pem`.
    pub(crate) fn sign_csr(&self, csr: &str, name: &str, issuer: &str, days: u32, section: &str) {
        self.ok(&[
            "x509",
            "-req",
            "-in",
            csr,
            "-CA",
            &format!("{issuer}.pem"),
            "-CAkey",
            &format!("{issuer}.key"),
            "-CAcreateserial",
            "-days",
            &days.to_string(),
            "-sha256",
            "-extfile",
            &self.p("ext.cnf"),
            "-extensions",
            section,
            "-out",
            &format!("{name}.pem"),
        ]);
    }

    /// The DER of a PEM certificate file.
    pub(crate) fn der(&self, name: &str) -> Vec<u8> {
        let pem = String::from_utf8(self.read(&format!("{name}.pem"))).unwrap();
        zerotouch_pki::certificates_from_pem(&pem).unwrap().remove(0)
    }

    /// `openssl x509 -text -noout` of a DER certificate.
    pub(crate) fn text(&self, der: &[u8]) -> String {
        let file = self.write("text.der", der);
        self.ok(&["x509", "-inform", "DER", "-in", &file, "-text", "-noout"])
    }
}

pub(crate) fn now() -> OffsetDateTime {
    OffsetDateTime::now_utc()
}

pub(crate) fn days(n: i64) -> time::Duration {
    time::Duration::days(n)
}
