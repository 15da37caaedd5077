//! A throwaway SoftHSM2 token (Debian `softhsm2`) for tests of keys kept in PKCS#11: its own `SOFTHSM2_CONF` in a
//! temp dir, a token labelled `zerotouch`, the user PIN in the file `pin` (and a wrong one in `wrong-pin`).
#![allow(clippy::unwrap_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::process::Command;

/// The SoftHSM2 PKCS#11 module.
pub const MODULE: &str = "/usr/lib/softhsm/libsofthsm2.so";
/// The token's label.
pub const TOKEN: &str = "zerotouch";
/// The user PIN.
const PIN: &str = "4321-user";

/// A token, removed with its directory.
pub struct SoftHsm {
    dir: tempfile::TempDir,
}

impl SoftHsm {
    /// A fresh token.
    pub fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("tokens")).unwrap();
        let conf = format!(
            "directories.tokendir = {}/tokens\nobjectstore.backend = file\nlog.level = ERROR\n",
            dir.path().display()
        );
        std::fs::write(dir.path().join("softhsm2.conf"), conf).unwrap();
        std::fs::write(dir.path().join("pin"), format!("{PIN}\n")).unwrap();
        std::fs::write(dir.path().join("wrong-pin"), "0000-nope\n").unwrap();
        let hsm = Self { dir };
        hsm.util(&["--init-token", "--free", "--label", TOKEN, "--pin", PIN, "--so-pin", "8765-so"]);
        hsm
    }

    fn util(&self, args: &[&str]) {
        let out = Command::new("softhsm2-util").args(args).envs(self.env()).output().unwrap();
        assert!(out.status.success(), "softhsm2-util {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }

    /// The environment a process needs to find this token.
    pub fn env(&self) -> Vec<(String, String)> {
        vec![("SOFTHSM2_CONF".into(), self.dir.path().join("softhsm2.conf").display().to_string())]
    }

    /// The file `name` of the token's directory (`pin`, `wrong-pin`).
    pub fn file(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Imports the private key of the PEM file `key` (PKCS#8 or SEC1) into the token, labelled `label`.
    pub fn import_key(&self, key: &Path, label: &str) {
        let pkcs8 = self.dir.path().join(format!("{label}.p8.pem"));
        crate::openssl::openssl(
            self.dir.path(),
            &["pkcs8", "-topk8", "-nocrypt", "-in", &key.display().to_string(), "-out", &pkcs8.display().to_string()],
        );
        let path = pkcs8.display().to_string();
        self.util(&["--import", &path, "--token", TOKEN, "--label", label, "--id", "01", "--pin", PIN]);
        std::fs::remove_file(pkcs8).unwrap();
    }
}

impl Default for SoftHsm {
    fn default() -> Self {
        Self::new()
    }
}
