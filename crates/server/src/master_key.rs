//! The master key (issue #17): from a file, the environment, a PKCS#11 token or the data dir; and what the service
//! does with it at start: unlock the database's data key (`zerotouch_store::Store::unlock`), which seals every
//! secret, and seal the issuing CA keys that 0.1 stored encrypted with the CA key passphrase.
//!
//! The envelope format and the data key are in the pure crate `zerotouch-envelope` (`crates/envelope/src/lib.rs`);
//! this module only finds the key and reports what failed, naming the setting.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use zeroize::Zeroizing;
use zerotouch_envelope::{Cipher, MasterKey};
use zerotouch_store::{CaPrivateKey, Store, UnlockError};

use crate::config::{MASTER_KEY_ENV, MasterKeySource, PassphraseSource};
use crate::data_dir::files;

/// A loaded master key and where it came from (for messages: a setting's name and a path, never the key).
pub struct LoadedMasterKey {
    /// The key.
    pub cipher: Box<dyn Cipher>,
    /// Where it came from (`--master-key-file /etc/zerotouch/master-key`).
    pub origin: String,
}

impl std::fmt::Debug for LoadedMasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "LoadedMasterKey({}, {})", self.cipher.key_id(), self.origin)
    }
}

/// Loads the master key `source` names; `data_dir` holds `master-key` when it comes from there.
pub fn load(source: &MasterKeySource, data_dir: &Path) -> anyhow::Result<LoadedMasterKey> {
    let from_text = |text: &str, origin: String| -> anyhow::Result<LoadedMasterKey> {
        let key = MasterKey::parse(text).map_err(|e| anyhow::anyhow!("{origin}: {e}"))?;
        Ok(LoadedMasterKey { cipher: Box::new(key), origin })
    };
    match source {
        MasterKeySource::File(path) => {
            let text =
                read_secret_file(path).with_context(|| format!("--master-key-file: cannot read {}", path.display()))?;
            from_text(&text, format!("--master-key-file {}", path.display()))
        }
        MasterKeySource::Environment(text) => from_text(&text.0, MASTER_KEY_ENV.to_owned()),
        MasterKeySource::DataDir => {
            let path = data_dir.join(files::MASTER_KEY);
            let text = read_secret_file(&path).with_context(|| format!("cannot read {}", path.display()))?;
            from_text(&text, path.display().to_string())
        }
        MasterKeySource::Pkcs11(settings) => {
            let key = crate::pkcs11::TokenKey::open(settings)?;
            let origin = format!(
                "the PKCS#11 key {:?} in token {:?} ({})",
                settings.label,
                settings.token,
                settings.module.display()
            );
            Ok(LoadedMasterKey { cipher: Box::new(key), origin })
        }
    }
}

fn read_secret_file(path: &Path) -> std::io::Result<Zeroizing<String>> {
    std::fs::read_to_string(path).map(Zeroizing::new)
}

/// The file a master key or passphrase comes from, if it is in `data_dir` (a production install should keep it
/// elsewhere: whoever copies the data dir, or its backup, then has both the database and its key).
pub fn files_in_data_dir(master_key: &MasterKeySource, passphrase: &PassphraseSource, data_dir: &Path) -> Vec<PathBuf> {
    let dir = std::fs::canonicalize(data_dir).unwrap_or_else(|_| data_dir.to_owned());
    let inside = |path: &Path| {
        let path = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_owned());
        path.starts_with(&dir)
    };
    let mut found = Vec::new();
    match master_key {
        MasterKeySource::File(path) if inside(path) => found.push(path.clone()),
        MasterKeySource::DataDir => found.push(data_dir.join(files::MASTER_KEY)),
        _ => {}
    }
    let passphrase_file = match passphrase {
        PassphraseSource::File(path) => Some(path.clone()),
        PassphraseSource::DataDir => Some(data_dir.join(files::CA_PASSPHRASE)),
        PassphraseSource::Environment => None,
    };
    if let Some(path) = passphrase_file.filter(|p| p.exists() && inside(p)) {
        found.push(path);
    }
    found
}

/// Unlocks the store's secrets with `master`, saying clearly what is wrong when it cannot (another master key, an
/// altered wrapped key).
pub async fn unlock(store: &Store, master: &LoadedMasterKey) -> anyhow::Result<zerotouch_store::Unlocked> {
    store.unlock(master.cipher.as_ref()).await.map_err(|e| match e {
        UnlockError::WrongMasterKey { needed, given } => anyhow::anyhow!(
            "wrong master key: {} (key id {given}) is not the master key this database's secrets are sealed with \
             (key id {needed}); start with that master key, or rotate to a new one with `zerotouch rotate-master-key`",
            master.origin
        ),
        UnlockError::Tampered(id) => anyhow::anyhow!(
            "wrong master key or altered database: the data key in table data_keys names master key {id} ({}) but \
             does not open with it",
            master.origin
        ),
        UnlockError::MasterKey(e) => anyhow::anyhow!("{}: {e}", master.origin),
        UnlockError::Store(e) => anyhow::Error::new(e).context("reading the data key"),
    })
}

/// Seals the issuing CA keys that 0.1 stored encrypted with the CA key passphrase (PKCS#8 PBES2): each is
/// decrypted with the passphrase and sealed under the data key. A wrong passphrase stops the start, naming it.
/// Returns how many keys were sealed.
pub async fn seal_legacy_ca_keys(
    store: &Store,
    passphrase: &PassphraseSource,
    data_dir: &Path,
) -> anyhow::Result<usize> {
    let legacy = store.legacy_ca_keys().await.context("reading the issuing CA keys")?;
    if legacy.is_empty() {
        return Ok(0);
    }
    let (passphrase, origin) = read_passphrase(passphrase, data_dir).with_context(|| {
        format!(
            "{} issuing CA key(s) are still encrypted with the CA key passphrase of zerotouch 0.1, which is needed \
             once to seal them under the master key",
            legacy.len()
        )
    })?;
    let passphrase = std::sync::Arc::new(passphrase);
    let mut sealed = 0;
    for (name, pem) in legacy {
        let phrase = passphrase.clone();
        let encrypted = pem.clone();
        let der = tokio::task::spawn_blocking(move || {
            zerotouch_pki::CaKey::from_encrypted_pem(&encrypted, &phrase).map(|key| key.to_pkcs8_der())
        })
        .await
        .context("decrypting an issuing CA key")?
        .map_err(|e| match e {
            zerotouch_pki::KeyError::WrongPassphrase => {
                anyhow::anyhow!("wrong CA key passphrase: {origin} does not decrypt the key of issuing CA {name:?}")
            }
            e => anyhow::anyhow!("the key of issuing CA {name:?} cannot be read: {e}"),
        })?;
        if store.issuing_cas().seal_legacy_key(&name, &pem, &CaPrivateKey::new(der)).await? {
            sealed += 1;
        }
    }
    if sealed > 0 {
        store.purge_freed_rows().await.context("rewriting the database after sealing the CA keys")?;
    }
    Ok(sealed)
}

/// The passphrase of 0.1's CA keys, from where the configuration says, and the name of that place.
fn read_passphrase(source: &PassphraseSource, data: &Path) -> anyhow::Result<(zerotouch_pki::Passphrase, String)> {
    let (text, origin) = match source {
        PassphraseSource::File(path) => (
            read_secret_file(path).with_context(|| format!("--ca-passphrase-file: cannot read {}", path.display()))?,
            format!("--ca-passphrase-file {}", path.display()),
        ),
        PassphraseSource::Environment => (
            Zeroizing::new(
                std::env::var(crate::config::CA_PASSPHRASE_ENV)
                    .with_context(|| format!("{} is not text", crate::config::CA_PASSPHRASE_ENV))?,
            ),
            crate::config::CA_PASSPHRASE_ENV.to_owned(),
        ),
        PassphraseSource::DataDir => {
            let path = data.join(files::CA_PASSPHRASE);
            (
                read_secret_file(&path)
                    .with_context(|| format!("cannot read {} (or give --ca-passphrase-file)", path.display()))?,
                path.display().to_string(),
            )
        }
    };
    // A trailing newline is how editors and `echo` end a file; it is not part of the passphrase.
    let passphrase = zerotouch_pki::Passphrase::new(text.trim_end_matches(['\r', '\n']))
        .map_err(|e| anyhow::anyhow!("{origin}: {e}"))?;
    Ok((passphrase, origin))
}

/// `zerotouch rotate-master-key`: re-wraps the data key under the new master key. Refuses when the current master
/// key is not the one that wraps it.
pub async fn rotate(config: &crate::config::RotateConfig) -> anyhow::Result<()> {
    let data_dir = &config.common.data_dir;
    let current = load(&config.current, data_dir)?;
    let new = load(&config.new, data_dir)?;
    if current.cipher.key_id() == new.cipher.key_id() {
        bail!("the new master key ({}) is the current one ({})", new.origin, current.origin);
    }
    let store = Store::connect(&config.common.database_url).await.with_context(|| {
        format!("--database-url: cannot open {}", crate::config::redact_url(&config.common.database_url))
    })?;
    if !store.is_ready().await.unwrap_or(false) {
        bail!("the database schema is not current: run `zerotouch migrate` (or start the service once) first");
    }
    let rotated = store.rotate_master_key(current.cipher.as_ref(), new.cipher.as_ref()).await.map_err(|e| match e {
        UnlockError::WrongMasterKey { needed, given } => anyhow::anyhow!(
            "wrong master key: the current master key {} (key id {given}) is not the one that wraps the data key \
             (key id {needed}); nothing was changed",
            current.origin
        ),
        UnlockError::Store(zerotouch_store::StoreError::NotFound) => anyhow::anyhow!(
            "the database has no data key yet: start the service once with the current master key first"
        ),
        e => anyhow::anyhow!("rotating the master key: {e}"),
    })?;
    store.close().await?;
    println!(
        "zerotouch: data key {} rewrapped: master key {} ({}) -> {} ({})",
        rotated.data_key, rotated.from, current.origin, rotated.to, new.origin
    );
    println!("zerotouch: running replicas carry on; start new ones (and restart the others) with the new master key");
    Ok(())
}
