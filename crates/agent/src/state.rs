//! What the agent keeps on disk: the state file (`state.json`, what `zerotouch-agent status` prints) and the
//! identity directory, both under the state directory (`/var/lib/zerotouch-agent`).
//!
//! The identity is a pair of files in a directory of its own, `identity/<serial>/{cert,key}.pem`, and
//! `identity/current` is a symbolic link to the pair in use. Installing a pair writes it (key 0600, each file
//! fsynced), then swaps the link with one `rename`: a reader of `identity/current/cert.pem` and `key.pem` sees the
//! old pair or the new one, never a certificate with the other's key. The previous pair stays until the new one has
//! worked (the hook took it). Every file is written to a temporary name, fsynced and renamed, and the directory
//! fsynced, so that a power cut leaves the old file or the new one.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::Context;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// The state file's content.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct State {
    /// `unprovisioned`, `assigned`, `refused` (the service refused the device's credential), or `disabled` (the
    /// registration ended disabled or failed).
    pub status: String,
    /// The registration id.
    pub registration_id: Option<String>,
    /// The device id on the hub.
    pub device_id: Option<String>,
    /// The hub's host name.
    pub hub: Option<String>,
    /// The certificate in use.
    pub certificate: Option<HeldCertificate>,
    /// The directory name (under `identity/`) of the pair kept until the current one has worked.
    pub previous: Option<String>,
    /// When the agent renews.
    pub next_renewal: Option<DateTime<Utc>>,
    /// When the agent registers again with its certificate.
    pub next_check: Option<DateTime<Utc>>,
    /// Nothing before this, after a failure.
    pub retry_at: Option<DateTime<Utc>>,
    /// Consecutive failures.
    pub failures: u32,
    /// The last failure.
    pub last_error: Option<LastError>,
    /// The last change of identity or hub.
    pub last_change: Option<Change>,
    /// The last certificate the agent stopped using because the service no longer accepted it (revoked,
    /// superseded, disabled): kept after the device is provisioned again, so that an operator can see it happened.
    #[serde(default)]
    pub last_dropped: Option<Dropped>,
    /// The event the hook has not taken yet (it failed, or the agent stopped before it ran).
    pub hook_pending: Option<String>,
    /// Requests sent to the service since the state file was created.
    pub requests: u64,
    /// When this was written.
    pub updated_at: Option<DateTime<Utc>>,
}

/// The certificate in use.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HeldCertificate {
    /// Serial number, lower-case hex (the directory name of the pair).
    pub serial: String,
    /// SHA-256 thumbprint, lower-case hex.
    pub sha256: String,
    /// notBefore.
    pub not_before: DateTime<Utc>,
    /// notAfter.
    pub not_after: DateTime<Utc>,
    /// When the agent got it.
    pub obtained_at: DateTime<Utc>,
    /// `identity/current/cert.pem`.
    pub cert_file: PathBuf,
    /// `identity/current/key.pem`, or `key.tpm` for a key in the TPM.
    pub key_file: PathBuf,
    /// The persistent handle of a key in the TPM (`0x81000101`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_handle: Option<String>,
}

/// A failure.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LastError {
    /// When.
    pub at: DateTime<Utc>,
    /// `provision`, `renew`, `check` or `hook`.
    pub action: String,
    /// What went wrong.
    pub message: String,
}

/// A certificate the agent stopped using.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Dropped {
    /// When.
    pub at: DateTime<Utc>,
    /// Its serial number.
    pub serial: String,
    /// Its SHA-256 thumbprint.
    pub sha256: String,
    /// What the service refused: `check` or `renew`.
    pub action: String,
    /// Why, as the service answered.
    pub reason: String,
}

/// A change of identity or hub.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Change {
    /// When.
    pub at: DateTime<Utc>,
    /// `provisioned`, `renewed`, `moved` or `dropped` (the hook's `ZEROTOUCH_EVENT`).
    pub event: String,
}

impl State {
    /// The state at `path`; a fresh one when there is no file.
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        match std::fs::read(path) {
            Ok(bytes) => {
                serde_json::from_slice(&bytes).with_context(|| format!("{} is not a state file", path.display()))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                Ok(Self { status: "unprovisioned".into(), ..Self::default() })
            }
            Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
        }
    }

    /// Writes the state to `path` atomically.
    pub fn save(&mut self, path: &Path) -> anyhow::Result<()> {
        self.updated_at = Some(Utc::now());
        let mut text = serde_json::to_vec_pretty(self)?;
        text.push(b'\n');
        write_atomically(path, &text, 0o644)
    }
}

/// Writes `bytes` to `path` through a temporary file in the same directory (created with `mode`), fsynced, renamed
/// over `path`, and the directory fsynced.
pub fn write_atomically(path: &Path, bytes: &[u8], mode: u32) -> anyhow::Result<()> {
    let dir = path.parent().context("a file path has a directory")?;
    let name = path.file_name().context("a file path has a name")?.to_string_lossy();
    let temporary = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let _ = std::fs::remove_file(&temporary);
    let written = (|| {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&temporary)
            .with_context(|| format!("cannot create {}", temporary.display()))?;
        file.write_all(bytes).with_context(|| format!("cannot write {}", temporary.display()))?;
        file.sync_all().with_context(|| format!("cannot write {}", temporary.display()))?;
        drop(file);
        std::fs::rename(&temporary, path)
            .with_context(|| format!("cannot rename {} to {}", temporary.display(), path.display()))
    })();
    if written.is_err() {
        // A full disk must not fill up further with half-written copies.
        let _ = std::fs::remove_file(&temporary);
    }
    written?;
    sync_dir(dir)
}

fn sync_dir(dir: &Path) -> anyhow::Result<()> {
    std::fs::File::open(dir)?.sync_all().with_context(|| format!("cannot sync {}", dir.display()))
}

/// Creates `dir` (and its parents) if missing, mode 0700.
pub fn private_dir(dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
        .with_context(|| format!("cannot restrict {}", dir.display()))
}

/// The key file of a key kept in a file.
pub const KEY_PEM: &str = "key.pem";
/// The file that names a key kept in the TPM (`handle:0x81000101`, as the tpm2-openssl provider takes it).
pub const KEY_TPM: &str = "key.tpm";

/// The identity directory (see the module comment).
#[derive(Debug, Clone)]
pub struct IdentityDir {
    root: PathBuf,
}

impl IdentityDir {
    /// The directory `root` (created on the first install).
    pub fn new(root: PathBuf) -> Self {
        Self { root }
    }

    /// `current/cert.pem`: the path applications use.
    pub fn cert_file(&self) -> PathBuf {
        self.root.join("current").join("cert.pem")
    }

    /// `current/key.pem`.
    pub fn key_file(&self) -> PathBuf {
        self.current(KEY_PEM)
    }

    /// `current/<file>`.
    pub fn current(&self, file: &str) -> PathBuf {
        self.root.join("current").join(file)
    }

    /// Writes the pair `name` (the certificate's serial) and makes it current. The key goes to `key.pem`.
    pub fn install(&self, name: &str, cert_pem: &str, key_pem: &str) -> anyhow::Result<()> {
        self.install_with(name, cert_pem, KEY_PEM, key_pem)
    }

    /// [`IdentityDir::install`] with the key (or what names it) in `key_file`.
    pub fn install_with(&self, name: &str, cert_pem: &str, key_file: &str, key: &str) -> anyhow::Result<()> {
        if name.is_empty() || !name.bytes().all(|b| b.is_ascii_hexdigit()) {
            anyhow::bail!("{name:?} is not a serial number");
        }
        private_dir(&self.root)?;
        let pair = self.root.join(name);
        if pair.exists() {
            std::fs::remove_dir_all(&pair)?;
        }
        let written = private_dir(&pair)
            .and_then(|()| write_atomically(&pair.join(key_file), key.as_bytes(), 0o600))
            .and_then(|()| write_atomically(&pair.join("cert.pem"), cert_pem.as_bytes(), 0o644));
        if written.is_err() {
            // Not current: nothing uses it, and a full disk needs the space.
            let _ = std::fs::remove_dir_all(&pair);
        }
        written?;
        self.point_current_at(name)
    }

    /// The name of the pair `current` points at.
    pub fn current_name(&self) -> Option<String> {
        let target = std::fs::read_link(self.root.join("current")).ok()?;
        Some(target.to_str()?.to_owned())
    }

    /// Makes `identity/` what the state says, after a stop at any point of a swap: `current` points at `held` (the
    /// pair the state describes, if its directory is there; no link without one), and every other pair but
    /// `previous` is removed (a pair written but not recorded, an install cut short).
    pub fn reconcile(&self, held: Option<&str>, previous: Option<&str>) -> anyhow::Result<()> {
        if !self.root.is_dir() {
            return Ok(());
        }
        match held.filter(|name| self.root.join(name).is_dir()) {
            Some(name) if self.current_name().as_deref() != Some(name) => {
                tracing::warn!(pair = name, "identity/current did not name the state's certificate: pointing it back");
                self.point_current_at(name)?;
            }
            Some(_) => {}
            None => self.clear_current()?,
        }
        for entry in std::fs::read_dir(&self.root).with_context(|| format!("cannot read {}", self.root.display()))? {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if entry.file_type()?.is_dir() && Some(name.as_str()) != held && Some(name.as_str()) != previous {
                tracing::warn!(pair = %name, "removing a pair the state does not name");
                self.remove(&name)?;
            }
        }
        Ok(())
    }

    /// Makes the pair `name` current (one rename of the link).
    pub fn point_current_at(&self, name: &str) -> anyhow::Result<()> {
        let link = self.root.join(".current.tmp");
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(name, &link).with_context(|| format!("cannot link {}", link.display()))?;
        std::fs::rename(&link, self.root.join("current")).context("cannot swap identity/current")?;
        sync_dir(&self.root)
    }

    /// Removes the pair `name`.
    pub fn remove(&self, name: &str) -> anyhow::Result<()> {
        let pair = self.root.join(name);
        if name.is_empty() || name.contains('/') || name.starts_with('.') || !pair.exists() {
            return Ok(());
        }
        std::fs::remove_dir_all(&pair).with_context(|| format!("cannot remove {}", pair.display()))
    }

    /// Stops using any pair: removes the link, then every pair.
    pub fn clear_all(&self) -> anyhow::Result<()> {
        self.clear_current()?;
        for entry in std::fs::read_dir(&self.root).into_iter().flatten().flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if entry.path().is_dir() && !name.starts_with('.') {
                self.remove(&name)?;
            }
        }
        Ok(())
    }

    /// Stops using any pair: removes the link.
    pub fn clear_current(&self) -> anyhow::Result<()> {
        match std::fs::remove_file(self.root.join("current")) {
            Ok(()) => sync_dir(&self.root),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e).context("cannot remove identity/current"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairs_swap_whole_and_keys_stay_private() {
        let dir = tempfile::tempdir().unwrap();
        let identity = IdentityDir::new(dir.path().join("identity"));
        identity.install("0a", "cert-1", "key-1").unwrap();
        assert_eq!(std::fs::read_to_string(identity.cert_file()).unwrap(), "cert-1");
        assert_eq!(std::fs::read_to_string(identity.key_file()).unwrap(), "key-1");
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&identity.key_file()), 0o600);
        assert_eq!(mode(&dir.path().join("identity")), 0o700);

        identity.install("0b", "cert-2", "key-2").unwrap();
        assert_eq!(std::fs::read_to_string(identity.cert_file()).unwrap(), "cert-2");
        assert_eq!(std::fs::read_to_string(identity.key_file()).unwrap(), "key-2");
        // The previous pair is still there until removed.
        assert_eq!(std::fs::read_to_string(dir.path().join("identity/0a/key.pem")).unwrap(), "key-1");
        identity.point_current_at("0a").unwrap();
        assert_eq!(std::fs::read_to_string(identity.key_file()).unwrap(), "key-1");
        identity.point_current_at("0b").unwrap();
        identity.remove("0a").unwrap();
        assert!(!dir.path().join("identity/0a").exists());
        identity.remove("../..").unwrap();
        assert!(dir.path().exists());
        assert!(identity.install("../x", "c", "k").is_err());

        // No temporary file is left behind.
        let names: Vec<String> = std::fs::read_dir(dir.path().join("identity/0b"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names.len(), 2, "{names:?}");
        identity.clear_current().unwrap();
        assert!(!identity.cert_file().exists());
        identity.clear_current().unwrap();
        identity.install("0c", "cert-3", "key-3").unwrap();
        identity.clear_all().unwrap();
        assert_eq!(std::fs::read_dir(dir.path().join("identity")).unwrap().count(), 0);
    }

    #[test]
    fn a_failed_write_leaves_nothing_behind() {
        let dir = tempfile::tempdir().unwrap();
        // A directory where the file goes: the rename fails, as a full disk or a read-only file system fails a
        // write; the temporary copy must not stay.
        std::fs::create_dir(dir.path().join("state.json")).unwrap();
        std::fs::write(dir.path().join("state.json/x"), "x").unwrap();
        assert!(write_atomically(&dir.path().join("state.json"), b"{}", 0o644).is_err());
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
        // An install that cannot write its pair leaves no directory, and the current pair as it was.
        let identity = IdentityDir::new(dir.path().join("identity"));
        identity.install("0a", "cert-1", "key-1").unwrap();
        // The key's file cannot be made (its directory is missing), as on a full disk.
        assert!(identity.install_with("0c", "c", "missing/key.pem", "k").is_err());
        assert!(!dir.path().join("identity/0c").exists());
        assert_eq!(std::fs::read_to_string(identity.cert_file()).unwrap(), "cert-1");
    }

    #[test]
    fn reconcile_points_current_back_and_removes_unnamed_pairs() {
        let dir = tempfile::tempdir().unwrap();
        let identity = IdentityDir::new(dir.path().join("identity"));
        identity.reconcile(Some("0a"), None).unwrap();
        identity.install("0a", "cert-1", "key-1").unwrap();
        identity.install("0b", "cert-2", "key-2").unwrap();
        // Stopped after the swap to 0c, before the state said so.
        identity.install("0c", "cert-3", "key-3").unwrap();
        identity.reconcile(Some("0b"), Some("0a")).unwrap();
        assert_eq!(identity.current_name().as_deref(), Some("0b"));
        assert_eq!(std::fs::read_to_string(identity.key_file()).unwrap(), "key-2");
        assert!(dir.path().join("identity/0a").is_dir());
        assert!(!dir.path().join("identity/0c").exists());
        identity.reconcile(Some("0b"), None).unwrap();
        assert!(!dir.path().join("identity/0a").exists());
        // No certificate in the state: no link, no pair.
        identity.reconcile(None, None).unwrap();
        assert!(identity.current_name().is_none());
        assert_eq!(std::fs::read_dir(dir.path().join("identity")).unwrap().count(), 0);
    }

    #[test]
    fn the_state_file_round_trips_and_starts_unprovisioned() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        let mut state = State::load(&path).unwrap();
        assert_eq!(state.status, "unprovisioned");
        state.hub = Some("mqtt.example.com".into());
        state.failures = 3;
        state.save(&path).unwrap();
        let read = State::load(&path).unwrap();
        assert_eq!(read, state);
        let json: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        assert_eq!(json["hub"], "mqtt.example.com");
        std::fs::write(&path, "not json").unwrap();
        assert!(State::load(&path).is_err());
    }
}
