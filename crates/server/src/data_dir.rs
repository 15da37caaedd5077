//! The data dir of a development install: root CA, server certificate, trust bundle, id scope, token key.
//!
//! On first start everything is generated; later starts reuse it (the server certificate is re-issued by the same
//! root when the configured host names change). Private keys are written mode 0600, and the service refuses to
//! start when one is readable by group or others, so that a careless copy does not silently leak a key.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use zeroize::Zeroizing;

/// File names inside the data dir.
pub mod files {
    /// Development root CA certificate (PEM).
    pub const ROOT_CERT: &str = "root-ca.pem";
    /// Development root CA private key (PKCS#8 PEM, 0600).
    pub const ROOT_KEY: &str = "root-ca.key";
    /// Server TLS certificate chain (PEM: leaf, then root).
    pub const SERVER_CERT: &str = "server.pem";
    /// Server TLS private key (0600).
    pub const SERVER_KEY: &str = "server.key";
    /// The certificates a device or an admin client must trust.
    pub const TRUST_BUNDLE: &str = "trust-bundle.pem";
    /// The id scope (text).
    pub const ID_SCOPE: &str = "id-scope";
    /// Development admin-token signing key (ES256, PKCS#8 PEM, 0600).
    pub const TOKEN_KEY: &str = "token-signing.key";
    /// Its public key (PEM).
    pub const TOKEN_PUBLIC_KEY: &str = "token-signing.pub.pem";
    /// The names the server certificate was issued for (one per line).
    pub const SERVER_NAMES: &str = "server-names";
    /// The passphrase that encrypted the issuing CAs' keys in 0.1 (0600); read once to seal them under the master
    /// key, never created any more.
    pub const CA_PASSPHRASE: &str = "ca-passphrase";
    /// The master key of a development install (0600): base64 of 32 random bytes, which wraps the data key sealing
    /// every secret in the database. A production install gives its own (`--master-key-file`, ...).
    pub const MASTER_KEY: &str = "master-key";
}

/// Private key files: created 0600, refused when group- or world-readable.
const PRIVATE_FILES: [&str; 5] =
    [files::ROOT_KEY, files::SERVER_KEY, files::TOKEN_KEY, files::CA_PASSPHRASE, files::MASTER_KEY];

/// What the data dir holds, as the service uses it.
#[derive(Debug)]
pub struct DataDir {
    /// The directory.
    pub path: PathBuf,
    /// The id scope.
    pub id_scope: String,
    /// What was created on this start (empty when everything was reused).
    pub created: Vec<&'static str>,
}

impl DataDir {
    /// Path of a file in the data dir.
    pub fn file(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }
}

/// Refuses key files that group or others may read (or write).
pub fn check_key_permissions(dir: &Path) -> anyhow::Result<()> {
    for name in PRIVATE_FILES {
        let path = dir.join(name);
        match fs::metadata(&path) {
            Ok(meta) => {
                let mode = meta.permissions().mode() & 0o777;
                if mode & 0o077 != 0 {
                    bail!(
                        "{} has mode {mode:04o}: a private key must not be accessible to group or others \
                         (fix with: chmod 600 {})",
                        path.display(),
                        path.display()
                    );
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("cannot inspect {}", path.display())),
        }
    }
    Ok(())
}

fn write_private(path: &Path, contents: &[u8]) -> anyhow::Result<()> {
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    file.write_all(contents).with_context(|| format!("cannot write {}", path.display()))?;
    file.sync_all()?;
    Ok(())
}

fn write_public(path: &Path, contents: &[u8]) -> anyhow::Result<()> {
    let tmp = path.with_extension("tmp");
    fs::write(&tmp, contents).with_context(|| format!("cannot write {}", tmp.display()))?;
    fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))
}

fn read(path: &Path) -> anyhow::Result<String> {
    fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))
}

fn days_from_now(days: i64) -> time::OffsetDateTime {
    time::OffsetDateTime::now_utc() + time::Duration::days(days)
}

/// A new development root CA: its key and its certificate (PEM), written to the data dir (the key only if
/// `keep_key`).
fn generate_root(dir: &Path, keep_key: bool) -> anyhow::Result<(KeyPair, String)> {
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    let mut name = DistinguishedName::new();
    name.push(DnType::CommonName, "zerotouch development root CA");
    name.push(DnType::OrganizationName, "zerotouch");
    params.distinguished_name = name;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    params.not_before = days_from_now(-1);
    params.not_after = days_from_now(3650);
    let cert = params.self_signed(&key)?;
    if keep_key {
        write_private(&dir.join(files::ROOT_KEY), Zeroizing::new(key.serialize_pem()).as_bytes())?;
    }
    write_public(&dir.join(files::ROOT_CERT), cert.pem().as_bytes())?;
    Ok((key, cert.pem()))
}

/// The development root CA of the data dir: its key and certificate.
fn read_root(dir: &Path) -> anyhow::Result<(KeyPair, String)> {
    let root_key = KeyPair::from_pem(&Zeroizing::new(read(&dir.join(files::ROOT_KEY))?))
        .context("the development root CA key cannot be read")?;
    Ok((root_key, read(&dir.join(files::ROOT_CERT))?))
}

fn issue_server_cert(dir: &Path, names: &[String], (root_key, root_pem): (KeyPair, String)) -> anyhow::Result<()> {
    let issuer = Issuer::from_ca_cert_pem(&root_pem, root_key).context("the development root CA cannot be read")?;

    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let mut params = CertificateParams::new(names.to_vec())?;
    params.subject_alt_names.push(SanType::IpAddress(std::net::Ipv4Addr::LOCALHOST.into()));
    params.subject_alt_names.push(SanType::IpAddress(std::net::Ipv6Addr::LOCALHOST.into()));
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, names.first().map_or("localhost", String::as_str));
    params.distinguished_name = dn;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.use_authority_key_identifier_extension = true;
    params.not_before = days_from_now(-1);
    params.not_after = days_from_now(397);
    let cert = params.signed_by(&key, &issuer)?;

    let key_path = dir.join(files::SERVER_KEY);
    if key_path.exists() {
        fs::remove_file(&key_path)?;
    }
    write_private(&key_path, Zeroizing::new(key.serialize_pem()).as_bytes())?;
    write_public(&dir.join(files::SERVER_CERT), format!("{}{}", cert.pem(), root_pem).as_bytes())?;
    write_public(&dir.join(files::SERVER_NAMES), names.join("\n").as_bytes())
}

fn generate_token_key(dir: &Path) -> anyhow::Result<()> {
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    write_private(&dir.join(files::TOKEN_KEY), Zeroizing::new(key.serialize_pem()).as_bytes())?;
    write_public(&dir.join(files::TOKEN_PUBLIC_KEY), key.public_key_pem().as_bytes())
}

fn generate_id_scope() -> String {
    let n: u32 = rand::random();
    format!("0ne{n:08X}")
}

/// What the data dir must provide.
#[derive(Debug, Clone, Copy)]
pub struct Needs<'a> {
    /// The names the server certificate must carry.
    pub hostnames: &'a [String],
    /// A configured id scope, which wins over the stored one.
    pub id_scope: Option<&'a str>,
    /// The operator provides the server certificate, so none is generated.
    pub own_tls: bool,
    /// Admin tokens are signed with the development key (no external issuer), so it must exist.
    pub development_tokens: bool,
    /// The master key is kept in the data dir (the operator gives none), so it must exist.
    pub master_key: bool,
}

/// Opens the data dir, creating whatever a development install lacks.
pub fn prepare(path: &Path, needs: &Needs<'_>) -> anyhow::Result<DataDir> {
    let Needs { hostnames, id_scope, own_tls, development_tokens, master_key } = *needs;
    fs::create_dir_all(path).with_context(|| format!("--data-dir: cannot create {}", path.display()))?;
    fs::set_permissions(path, fs::Permissions::from_mode(0o700))
        .with_context(|| format!("--data-dir: cannot restrict {}", path.display()))?;
    check_key_permissions(path)?;
    let mut created = Vec::new();

    // The development root's key is kept only on a development install (development admin tokens and the
    // generated server certificate): it signs the development issuing CA. A production install (an external token
    // issuer, or --tls-cert) never writes one; with an external issuer and a generated server certificate, a root
    // made for the occasion signs the server certificate, and its key is dropped at once.
    let development = development_tokens && !own_tls;
    let root_key_kept = path.join(files::ROOT_KEY).exists();
    if development && !root_key_kept {
        generate_root(path, true)?;
        created.push("development root CA");
    }
    if !own_tls {
        let wanted = hostnames.join("\n");
        let issued = fs::read_to_string(path.join(files::SERVER_NAMES)).ok();
        if !path.join(files::SERVER_KEY).exists() || issued.as_deref() != Some(wanted.as_str()) {
            let root = if path.join(files::ROOT_KEY).exists() {
                read_root(path)?
            } else {
                created.push("server TLS root (its key is not kept)");
                generate_root(path, false)?
            };
            issue_server_cert(path, hostnames, root)?;
            created.push("server TLS certificate");
        }
    }
    if let Ok(bundle) = fs::read_to_string(path.join(files::ROOT_CERT))
        && fs::read_to_string(path.join(files::TRUST_BUNDLE)).ok().as_deref() != Some(bundle.as_str())
    {
        write_public(&path.join(files::TRUST_BUNDLE), bundle.as_bytes())?;
        created.push("trust bundle");
    }
    if development_tokens && !path.join(files::TOKEN_KEY).exists() {
        generate_token_key(path)?;
        created.push("development token-signing key");
    }
    if master_key && !path.join(files::MASTER_KEY).exists() {
        let (_, text) =
            zerotouch_envelope::MasterKey::generate().map_err(|e| anyhow::anyhow!("the master key: {e}"))?;
        write_private(&path.join(files::MASTER_KEY), Zeroizing::new(format!("{}\n", text.as_str())).as_bytes())?;
        created.push("master key (development only: give --master-key-file or a PKCS#11 token in production)");
    }
    let id_scope = match (id_scope, fs::read_to_string(path.join(files::ID_SCOPE)).ok()) {
        (Some(configured), _) => configured.to_owned(),
        (None, Some(stored)) => stored.trim().to_owned(),
        (None, None) => {
            let scope = generate_id_scope();
            write_public(&path.join(files::ID_SCOPE), format!("{scope}\n").as_bytes())?;
            created.push("id scope");
            scope
        }
    };
    crate::config::check_id_scope(&id_scope).map_err(|e| anyhow::anyhow!("{}: {e}", files::ID_SCOPE))?;
    Ok(DataDir { path: path.to_owned(), id_scope, created })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn dev(names: &[String]) -> Needs<'_> {
        Needs { hostnames: names, id_scope: None, own_tls: false, development_tokens: true, master_key: true }
    }

    #[test]
    fn first_start_creates_everything_and_a_restart_reuses_it() {
        let dir = tempfile::tempdir().unwrap();
        let names = vec!["localhost".to_owned()];
        let first = prepare(dir.path(), &dev(&names)).unwrap();
        assert!(first.created.contains(&"development root CA"));
        assert!(first.id_scope.starts_with("0ne") && first.id_scope.len() == 11);
        for name in PRIVATE_FILES.into_iter().filter(|n| *n != files::CA_PASSPHRASE) {
            let mode = fs::metadata(dir.path().join(name)).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{name}");
        }
        let root = fs::read(dir.path().join(files::ROOT_CERT)).unwrap();
        let second = prepare(dir.path(), &dev(&names)).unwrap();
        assert!(second.created.is_empty(), "{:?}", second.created);
        assert_eq!(second.id_scope, first.id_scope);
        assert_eq!(fs::read(dir.path().join(files::ROOT_CERT)).unwrap(), root);
    }

    #[test]
    fn new_hostnames_reissue_the_server_certificate_under_the_same_root() {
        let dir = tempfile::tempdir().unwrap();
        prepare(dir.path(), &dev(&["localhost".to_owned()])).unwrap();
        let root = fs::read(dir.path().join(files::ROOT_CERT)).unwrap();
        let again = prepare(dir.path(), &dev(&["localhost".to_owned(), "dps.example".to_owned()])).unwrap();
        assert_eq!(again.created, vec!["server TLS certificate"]);
        assert_eq!(fs::read(dir.path().join(files::ROOT_CERT)).unwrap(), root);
    }

    #[test]
    fn no_development_token_key_with_an_external_issuer() {
        let dir = tempfile::tempdir().unwrap();
        let names = vec!["localhost".to_owned()];
        prepare(dir.path(), &Needs { development_tokens: false, ..dev(&names) }).unwrap();
        assert!(!dir.path().join(files::TOKEN_KEY).exists());
    }

    /// A production install (an external issuer, or its own TLS certificate) keeps no development root key; with an
    /// external issuer the generated server certificate still chains to the trust bundle.
    #[test]
    fn no_development_root_key_on_a_production_install() {
        let names = vec!["localhost".to_owned()];
        let external = tempfile::tempdir().unwrap();
        let first =
            prepare(external.path(), &Needs { development_tokens: false, master_key: false, ..dev(&names) }).unwrap();
        assert!(!external.path().join(files::ROOT_KEY).exists(), "{:?}", first.created);
        assert!(!external.path().join(files::MASTER_KEY).exists());
        assert!(external.path().join(files::SERVER_KEY).exists());
        let bundle = fs::read_to_string(external.path().join(files::TRUST_BUNDLE)).unwrap();
        let chain = fs::read_to_string(external.path().join(files::SERVER_CERT)).unwrap();
        assert!(chain.ends_with(&bundle), "the server chain ends with the trust bundle's root");
        let again =
            prepare(external.path(), &Needs { development_tokens: false, master_key: false, ..dev(&names) }).unwrap();
        assert!(again.created.is_empty(), "{:?}", again.created);

        let own = tempfile::tempdir().unwrap();
        prepare(own.path(), &Needs { own_tls: true, ..dev(&names) }).unwrap();
        assert!(!own.path().join(files::ROOT_KEY).exists());
        assert!(!own.path().join(files::SERVER_KEY).exists());
    }

    #[test]
    fn a_readable_key_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        prepare(dir.path(), &dev(&["localhost".to_owned()])).unwrap();
        fs::set_permissions(dir.path().join(files::TOKEN_KEY), fs::Permissions::from_mode(0o644)).unwrap();
        let err = prepare(dir.path(), &dev(&["localhost".to_owned()])).unwrap_err();
        assert!(err.to_string().contains("token-signing.key"), "{err}");
        assert!(err.to_string().contains("0644"), "{err}");
    }
}
