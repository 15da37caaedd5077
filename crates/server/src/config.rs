//! Configuration: one typed [`Config`], assembled from flags, `ZEROTOUCH_*` variables, a TOML file and defaults
//! (in that order of precedence), validated once at start-up with errors that name the setting.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand};
use serde::Deserialize;

/// The zerotouch command line.
#[derive(Debug, Parser)]
#[command(name = "zerotouch", version, about = "Self-hosted device provisioning service (Azure DPS-compatible)")]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the service.
    Serve(Box<ServeArgs>),
    /// Apply database migrations and exit.
    Migrate(SettingArgs),
    /// Print an admin JWT signed with the development key of the data dir.
    AdminToken(AdminTokenArgs),
    /// Re-wrap the data key (which seals every secret in the database) under a new master key, and exit. Running
    /// replicas keep working (they hold the data key); replicas started afterwards need the new master key.
    RotateMasterKey(RotateMasterKeyArgs),
    /// Manage shared access policies (the keys of admin API SharedAccessSignature tokens) in the database, and
    /// print a policy's connection string.
    SharedAccessPolicy(SharedAccessPolicyArgs),
    /// Create the enrollments and enrollment groups of an Azure DPS export in a zerotouch deployment, through its
    /// admin API, and report per document what did not carry over; exits non-zero when any was not imported.
    ImportAzure(ImportAzureArgs),
}

/// `zerotouch shared-access-policy`.
#[derive(Debug, Clone, Args)]
pub struct SharedAccessPolicyArgs {
    /// Settings (the data dir and database).
    #[command(flatten)]
    pub settings: SettingArgs,
    /// The master key (which opens the policies' keys).
    #[command(flatten)]
    pub master_key: MasterKeyArgs,
    /// What to do.
    #[command(subcommand)]
    pub action: PolicyAction,
}

/// What `zerotouch shared-access-policy` does.
#[derive(Debug, Clone, Subcommand)]
pub enum PolicyAction {
    /// List the policies and their rights.
    List,
    /// Create a policy (keys generated) or change its rights (keys kept).
    Put {
        /// The policy's name (1-64 ASCII letters, digits and -._).
        name: String,
        /// Its rights, comma-separated: ServiceConfig, EnrollmentRead, EnrollmentWrite, RegistrationStatusRead,
        /// RegistrationStatusWrite.
        #[arg(long)]
        rights: String,
    },
    /// Delete a policy: tokens signed with its keys stop working at once.
    Delete {
        /// The policy's name.
        name: String,
    },
    /// Print the policy's connection string (HostName=...;SharedAccessKeyName=...;SharedAccessKey=...), which
    /// holds its key.
    ConnectionString {
        /// The policy's name.
        name: String,
        /// The service's host name the clients reach (one of its --hostname, with :port unless 443) [default: the
        /// first name of the data dir's server certificate].
        #[arg(long, value_name = "HOST")]
        host_name: Option<String>,
        /// Use the secondary key instead of the primary.
        #[arg(long)]
        secondary: bool,
    },
}

/// The resolved settings of `shared-access-policy`.
#[derive(Debug, Clone)]
pub struct PolicyConfig {
    /// Data dir, database.
    pub common: CommonConfig,
    /// The master key.
    pub master_key: MasterKeySource,
}

impl PolicyConfig {
    /// Resolves the settings of `shared-access-policy`.
    pub fn resolve(args: &SharedAccessPolicyArgs) -> anyhow::Result<Self> {
        let file = read_file_settings(args.settings.config.as_deref())?;
        Ok(Self {
            common: common(&args.settings, &file)?,
            master_key: MasterKeySource::resolve(&args.master_key, &file)?,
        })
    }
}

/// Where the master key comes from: the master key wraps the data key that seals every secret in the database
/// (enrollment keys, hub passwords and webhook secrets, TPM challenge and hub keys, issuing CA keys).
#[derive(Debug, Clone, Default, Args)]
pub struct MasterKeyArgs {
    /// File holding the master key: base64 of 32 random bytes (`openssl rand -base64 32`) [default: the
    /// ZEROTOUCH_MASTER_KEY environment variable (removed from the environment once read), else the PKCS#11 token of
    /// --master-key-pkcs11-module, else DATA_DIR/master-key, generated on first start: for development only].
    #[arg(long, env = "ZEROTOUCH_MASTER_KEY_FILE", value_name = "FILE")]
    pub master_key_file: Option<PathBuf>,
    /// PKCS#11 module (shared library) of the token holding the master key, a non-extractable AES-256 key that
    /// wraps the data key inside the token.
    #[arg(long, env = "ZEROTOUCH_MASTER_KEY_PKCS11_MODULE", value_name = "FILE")]
    pub master_key_pkcs11_module: Option<PathBuf>,
    /// Label of the PKCS#11 token holding the master key.
    #[arg(long, env = "ZEROTOUCH_MASTER_KEY_PKCS11_TOKEN", value_name = "LABEL")]
    pub master_key_pkcs11_token: Option<String>,
    /// File holding the PIN of the PKCS#11 token's user.
    #[arg(long, env = "ZEROTOUCH_MASTER_KEY_PKCS11_PIN_FILE", value_name = "FILE")]
    pub master_key_pkcs11_pin_file: Option<PathBuf>,
    /// Label of the master key (an AES-256 secret key object) in the token [default: zerotouch-master-key].
    #[arg(long, env = "ZEROTOUCH_MASTER_KEY_PKCS11_LABEL", value_name = "LABEL")]
    pub master_key_pkcs11_label: Option<String>,
    /// The text of `ZEROTOUCH_MASTER_KEY`, which `main` takes out of the environment before anything else runs.
    #[arg(skip)]
    pub master_key_from_env: Option<MasterKeyText>,
}

/// A master key's text as given in the environment: redacted in `Debug`, wiped on drop.
#[derive(Clone)]
pub struct MasterKeyText(pub std::sync::Arc<zeroize::Zeroizing<String>>);

impl std::fmt::Debug for MasterKeyText {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MasterKeyText(..)")
    }
}

impl PartialEq for MasterKeyText {
    fn eq(&self, other: &Self) -> bool {
        std::sync::Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Eq for MasterKeyText {}

/// The environment variable that may hold the master key itself.
pub const MASTER_KEY_ENV: &str = "ZEROTOUCH_MASTER_KEY";

/// The default label of the master key in a PKCS#11 token.
pub const DEFAULT_PKCS11_LABEL: &str = "zerotouch-master-key";

/// A master key in a PKCS#11 token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pkcs11Settings {
    /// The module (shared library).
    pub module: PathBuf,
    /// The token's label.
    pub token: String,
    /// The file with the user PIN.
    pub pin_file: PathBuf,
    /// The key's label.
    pub label: String,
}

/// Where the master key comes from, resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MasterKeySource {
    /// A file named by the operator.
    File(PathBuf),
    /// `ZEROTOUCH_MASTER_KEY` (already taken out of the environment).
    Environment(MasterKeyText),
    /// A PKCS#11 token.
    Pkcs11(Pkcs11Settings),
    /// `master-key` in the data dir, generated on first start (development installs).
    DataDir,
}

impl MasterKeySource {
    /// Resolves the master key settings (flag > environment > file); giving two sources is an error naming them.
    fn resolve(args: &MasterKeyArgs, file: &FileSettings) -> anyhow::Result<Self> {
        let key_file = args.master_key_file.clone().or_else(|| file.master_key_file.clone());
        let module = args.master_key_pkcs11_module.clone().or_else(|| file.master_key_pkcs11_module.clone());
        let token = args.master_key_pkcs11_token.clone().or_else(|| file.master_key_pkcs11_token.clone());
        let pin_file = args.master_key_pkcs11_pin_file.clone().or_else(|| file.master_key_pkcs11_pin_file.clone());
        let label = args.master_key_pkcs11_label.clone().or_else(|| file.master_key_pkcs11_label.clone());
        let given = [key_file.is_some(), args.master_key_from_env.is_some(), module.is_some()];
        if given.iter().filter(|g| **g).count() > 1 {
            bail!(
                "--master-key-file, {MASTER_KEY_ENV} and --master-key-pkcs11-module: give one source of the master \
                 key, not several"
            );
        }
        if module.is_none() && (token.is_some() || pin_file.is_some() || label.is_some()) {
            bail!("--master-key-pkcs11-token/-pin-file/-label: need --master-key-pkcs11-module as well");
        }
        Ok(match (key_file, &args.master_key_from_env, module) {
            (Some(path), _, _) => Self::File(path),
            (None, Some(text), _) => Self::Environment(text.clone()),
            (None, None, Some(module)) => Self::Pkcs11(Pkcs11Settings {
                module,
                token: token
                    .ok_or_else(|| anyhow::anyhow!("--master-key-pkcs11-module: needs --master-key-pkcs11-token"))?,
                pin_file: pin_file
                    .ok_or_else(|| anyhow::anyhow!("--master-key-pkcs11-module: needs --master-key-pkcs11-pin-file"))?,
                label: label.unwrap_or_else(|| DEFAULT_PKCS11_LABEL.to_owned()),
            }),
            (None, None, None) => Self::DataDir,
        })
    }
}

/// `zerotouch rotate-master-key`.
#[derive(Debug, Clone, Args)]
pub struct RotateMasterKeyArgs {
    /// Settings (the data dir and database).
    #[command(flatten)]
    pub settings: SettingArgs,
    /// The current master key (the one that wraps the data key now).
    #[command(flatten)]
    pub master_key: MasterKeyArgs,
    /// File holding the new master key (base64 of 32 random bytes, `openssl rand -base64 32`).
    #[arg(long, value_name = "FILE", required_unless_present = "new_master_key_pkcs11_label")]
    pub new_master_key_file: Option<PathBuf>,
    /// Label of the new master key in the same PKCS#11 token as the current one (--master-key-pkcs11-*).
    #[arg(long, value_name = "LABEL", conflicts_with = "new_master_key_file")]
    pub new_master_key_pkcs11_label: Option<String>,
}

/// The resolved settings of `rotate-master-key`.
#[derive(Debug, Clone)]
pub struct RotateConfig {
    /// Data dir, database.
    pub common: CommonConfig,
    /// The current master key.
    pub current: MasterKeySource,
    /// The new master key.
    pub new: MasterKeySource,
}

impl RotateConfig {
    /// Resolves the settings of `rotate-master-key`.
    pub fn resolve(args: &RotateMasterKeyArgs) -> anyhow::Result<Self> {
        let file = read_file_settings(args.settings.config.as_deref())?;
        let common = common(&args.settings, &file)?;
        let current = MasterKeySource::resolve(&args.master_key, &file)?;
        let new = match (&args.new_master_key_file, &args.new_master_key_pkcs11_label, &current) {
            (Some(path), _, _) => MasterKeySource::File(path.clone()),
            (None, Some(label), MasterKeySource::Pkcs11(settings)) => {
                MasterKeySource::Pkcs11(Pkcs11Settings { label: label.clone(), ..settings.clone() })
            }
            (None, Some(_), _) => {
                bail!("--new-master-key-pkcs11-label: the current master key must be in a PKCS#11 token")
            }
            (None, None, _) => bail!("--new-master-key-file: give the new master key"),
        };
        if new == current {
            bail!("--new-master-key-file: the new master key is the current one");
        }
        Ok(Self { common, current, new })
    }
}

/// Settings shared by every subcommand. Each is a flag, a `ZEROTOUCH_<NAME>` variable, or a key of the file.
#[derive(Debug, Clone, Default, Args)]
pub struct SettingArgs {
    /// A TOML file with settings (keys as the flags, with `_` or `-`).
    #[arg(long, env = "ZEROTOUCH_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Where trust material, the id scope and the SQLite file live [default: ./zerotouch-data].
    #[arg(long, env = "ZEROTOUCH_DATA_DIR", value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// `sqlite://FILE` or `postgres://...` (also `DATABASE_URL`) [default: SQLite file in the data dir].
    #[arg(long, env = "ZEROTOUCH_DATABASE_URL", value_name = "URL")]
    pub database_url: Option<String>,
    /// External JWT issuer (`iss`); configuring one disables the development token key.
    #[arg(long, env = "ZEROTOUCH_JWT_ISSUER")]
    pub jwt_issuer: Option<String>,
    /// Required `aud` of admin tokens [default: zerotouch].
    #[arg(long, env = "ZEROTOUCH_JWT_AUDIENCE")]
    pub jwt_audience: Option<String>,
    /// JWKS file with the issuer's verification keys.
    #[arg(long, env = "ZEROTOUCH_JWKS_FILE", value_name = "FILE")]
    pub jwks_file: Option<PathBuf>,
    /// JWKS URL with the issuer's verification keys (fetched at start and every 5 minutes).
    #[arg(long, env = "ZEROTOUCH_JWKS_URL", value_name = "URL")]
    pub jwks_url: Option<String>,
    /// Claim holding the caller's role(s), dotted for nested claims (`realm_access.roles`) [default: role].
    #[arg(long, env = "ZEROTOUCH_JWT_ROLE_CLAIM")]
    pub jwt_role_claim: Option<String>,
}

/// `zerotouch serve`.
#[derive(Debug, Clone, Default, Args)]
pub struct ServeArgs {
    /// Settings shared with the other subcommands.
    #[command(flatten)]
    pub settings: SettingArgs,
    /// HTTPS device API address [default: 0.0.0.0:8443].
    #[arg(long, env = "ZEROTOUCH_DEVICE_LISTEN", value_name = "ADDR")]
    pub device_listen: Option<SocketAddr>,
    /// MQTT device endpoint address [default: 0.0.0.0:8883].
    #[arg(long, env = "ZEROTOUCH_MQTT_LISTEN", value_name = "ADDR")]
    pub mqtt_listen: Option<SocketAddr>,
    /// MQTT connections open at once; a CONNECT beyond them is answered "server unavailable" [default: 10000].
    #[arg(long, env = "ZEROTOUCH_MQTT_MAX_CONNECTIONS", value_name = "N")]
    pub mqtt_max_connections: Option<usize>,
    /// MQTT connections one device (registration id) may hold at once; a newer one closes its oldest
    /// [default: 2].
    #[arg(long, env = "ZEROTOUCH_MQTT_MAX_CONNECTIONS_PER_DEVICE", value_name = "N")]
    pub mqtt_max_connections_per_device: Option<usize>,
    /// HTTPS admin API address [default: 127.0.0.1:8444].
    #[arg(long, env = "ZEROTOUCH_SERVICE_LISTEN", value_name = "ADDR")]
    pub service_listen: Option<SocketAddr>,
    /// Names put in the generated server certificate besides 127.0.0.1 and ::1 [default: localhost].
    #[arg(long = "hostname", env = "ZEROTOUCH_HOSTNAME", value_delimiter = ',', value_name = "NAME")]
    pub hostnames: Vec<String>,
    /// The id scope devices use [default: generated once as 0ne + 8 hex digits, then kept].
    #[arg(long, env = "ZEROTOUCH_ID_SCOPE")]
    pub id_scope: Option<String>,
    /// Server certificate chain (PEM) to use instead of the generated one; needs --tls-key.
    #[arg(long, env = "ZEROTOUCH_TLS_CERT", value_name = "FILE")]
    pub tls_cert: Option<PathBuf>,
    /// Private key (PEM) of --tls-cert.
    #[arg(long, env = "ZEROTOUCH_TLS_KEY", value_name = "FILE")]
    pub tls_key: Option<PathBuf>,
    /// Do not apply migrations at start (run `zerotouch migrate` first).
    #[arg(long, env = "ZEROTOUCH_NO_MIGRATE")]
    pub no_migrate: bool,
    /// How long in-flight requests may take to finish after SIGTERM/SIGINT [default: 10s].
    #[arg(long, env = "ZEROTOUCH_SHUTDOWN_TIMEOUT", value_parser = humantime::parse_duration)]
    pub shutdown_timeout: Option<Duration>,
    /// How far in the past a device's SAS token may have expired (clock skew) [default: 300s].
    #[arg(long, env = "ZEROTOUCH_SAS_CLOCK_SKEW", value_parser = humantime::parse_duration)]
    pub sas_clock_skew: Option<Duration>,
    /// How far ahead a device's SAS token may expire (its longest lifetime, plus the clock skew) [default: 25h].
    #[arg(long, env = "ZEROTOUCH_SAS_MAX_LIFETIME", value_parser = humantime::parse_duration)]
    pub sas_max_lifetime: Option<Duration>,
    /// Refuse `SharedAccessSignature` tokens on the admin API: only JWTs authenticate (shared access policies can
    /// still be managed, but sign nothing that is accepted) [default: off: policies' tokens are accepted].
    #[arg(long, env = "ZEROTOUCH_NO_SHARED_ACCESS_POLICIES")]
    pub no_shared_access_policies: bool,
    /// How far ahead an admin API SharedAccessSignature token may expire (its longest lifetime, plus the clock
    /// skew) [default: 25h].
    #[arg(long, env = "ZEROTOUCH_SERVICE_SAS_MAX_LIFETIME", value_parser = humantime::parse_duration)]
    pub service_sas_max_lifetime: Option<Duration>,
    /// How long a registration operation can be polled before it expires [default: 24h].
    #[arg(long, env = "ZEROTOUCH_OPERATION_TTL", value_parser = humantime::parse_duration)]
    pub operation_ttl: Option<Duration>,
    /// How long audit events are kept; older ones are deleted at start and every hour [default: 90days].
    #[arg(long, env = "ZEROTOUCH_AUDIT_RETENTION", value_parser = humantime::parse_duration)]
    pub audit_retention: Option<Duration>,
    /// How long the key of a TPM activation blob authenticates its device's second leg [default: 10m].
    #[arg(long, env = "ZEROTOUCH_TPM_CHALLENGE_TTL", value_parser = humantime::parse_duration)]
    pub tpm_challenge_ttl: Option<Duration>,
    /// Requests one device may make per window, as N/DURATION [default: 5/10s, as Azure].
    #[arg(long, env = "ZEROTOUCH_DEVICE_RATE_LIMIT", value_parser = parse_rate)]
    pub device_rate_limit: Option<(u32, Duration)>,
    /// Registrations in flight at once before devices get 429 [default: 1024].
    #[arg(long, env = "ZEROTOUCH_DEVICE_MAX_IN_FLIGHT")]
    pub device_max_in_flight: Option<usize>,
    /// File holding the passphrase that encrypted the issuing CAs' private keys in 0.1 (they are sealed under
    /// the master key's data key on the first start with this version, then it is no longer needed) [default: the
    /// ZEROTOUCH_CA_PASSPHRASE environment variable, else DATA_DIR/ca-passphrase].
    #[arg(long, env = "ZEROTOUCH_CA_PASSPHRASE_FILE", value_name = "FILE")]
    pub ca_passphrase_file: Option<PathBuf>,
    /// Base URL of the CRLs named in issued certificates; a CRL is at BASE/{issuingCA}
    /// [default: https://FIRST-HOSTNAME:DEVICE-PORT/pki/crl].
    #[arg(long, env = "ZEROTOUCH_CRL_URL", value_name = "URL")]
    pub crl_url: Option<String>,
    /// How long after its expiry an operational certificate may still renew itself [default: 0s, off].
    #[arg(long, env = "ZEROTOUCH_RENEWAL_GRACE", value_parser = humantime::parse_duration)]
    pub renewal_grace: Option<Duration>,
    /// How long a registration waits for its hub before answering (the outbox worker carries on) [default: 2s].
    #[arg(long, env = "ZEROTOUCH_HUB_INLINE_TIMEOUT", value_parser = humantime::parse_duration)]
    pub hub_inline_timeout: Option<Duration>,
    /// How long a registration may wait for its hub before it fails with 400209 [default: 10m].
    #[arg(long, env = "ZEROTOUCH_HUB_DEADLINE", value_parser = humantime::parse_duration)]
    pub hub_deadline: Option<Duration>,
    /// Where the master key comes from.
    #[command(flatten)]
    pub master_key: MasterKeyArgs,
    /// Let outbound calls (allocation webhooks, webhook hubs, the JWKS) use plain http to any host and reach
    /// loopback addresses. For tests and development only [default: off: https only, plain http only to a loopback
    /// host, loopback only when --outbound-allow names it].
    #[arg(long, env = "ZEROTOUCH_ALLOW_INSECURE_OUTBOUND")]
    pub allow_insecure_outbound: bool,
    /// Address ranges (CIDR, or single addresses) outbound calls may reach although they are loopback, private,
    /// link-local, CGNAT or cloud metadata addresses, e.g. `10.20.0.0/16,fd00:1::/64` [default: none].
    #[arg(long, env = "ZEROTOUCH_OUTBOUND_ALLOW", value_delimiter = ',', value_name = "CIDR", value_parser = parse_cidr)]
    pub outbound_allow: Vec<ipnet::IpNet>,
}

/// Parses a CIDR range (`10.20.0.0/16`) or a single address (`10.20.0.7`, as a /32 or /128).
pub fn parse_cidr(text: &str) -> Result<ipnet::IpNet, String> {
    let text = text.trim();
    text.parse::<ipnet::IpNet>()
        .or_else(|_| text.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
        .map_err(|_| format!("{text:?} is not an address range (CIDR, e.g. 10.20.0.0/16) nor an address"))
}

/// `value` if it is more than zero.
fn positive(setting: &str, value: Duration) -> anyhow::Result<Duration> {
    if value.is_zero() {
        bail!("{setting} must be more than zero");
    }
    Ok(value)
}

/// Parses `N/DURATION` (`5/10s`).
pub fn parse_rate(text: &str) -> Result<(u32, Duration), String> {
    let (count, window) = text.split_once('/').ok_or_else(|| format!("{text:?} is not N/DURATION (e.g. 5/10s)"))?;
    let count: u32 = count.trim().parse().map_err(|_| format!("{count:?} is not a count"))?;
    let window = humantime::parse_duration(window.trim()).map_err(|e| format!("{window:?}: {e}"))?;
    if count == 0 || window.is_zero() {
        return Err(format!("{text:?}: the count and the window must be positive"));
    }
    Ok((count, window))
}

/// `zerotouch admin-token`.
#[derive(Debug, Clone, Args)]
pub struct AdminTokenArgs {
    /// Settings (the data dir and any external issuer).
    #[command(flatten)]
    pub settings: SettingArgs,
    /// The role the token carries.
    #[arg(long, default_value = "owner", value_parser = ["owner", "operator", "reader"])]
    pub role: String,
    /// How long the token is valid.
    #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
    pub ttl: Duration,
    /// The token's subject (who the audit log says acted).
    #[arg(long, default_value = "dev-admin")]
    pub subject: String,
}

/// `zerotouch import-azure`.
#[derive(Debug, Clone, Args)]
pub struct ImportAzureArgs {
    /// Export files: JSON arrays of IndividualEnrollment and EnrollmentGroup documents as Azure's service API
    /// returns them (an SDK query, `az iot dps enrollment list`), one such document, or an object with
    /// `enrollments` and `enrollmentGroups` arrays.
    #[arg(required = true, value_name = "FILE")]
    pub files: Vec<PathBuf>,
    /// The zerotouch admin API's base URL.
    #[arg(long, env = "ZEROTOUCH_IMPORT_URL", default_value = "https://127.0.0.1:8444")]
    pub url: String,
    /// File holding an admin token (operator or owner role).
    #[arg(long, env = "ZEROTOUCH_IMPORT_TOKEN_FILE", value_name = "FILE")]
    pub token_file: PathBuf,
    /// PEM file of the CA certificates to trust for the admin API [default: the system's roots].
    #[arg(long, value_name = "FILE")]
    pub ca_file: Option<PathBuf>,
    /// `create` (an id that exists is reported as not imported) or `update` (create or replace).
    #[arg(long, default_value = "create", value_parser = ["create", "update"])]
    pub mode: String,
    /// Names a hub of zerotouch for a hub the export names (`iotHubs`, `iotHubHostName`); repeatable.
    #[arg(long = "hub-map", value_name = "AZURE_HUB=HUB", value_parser = parse_hub_map)]
    pub hub_map: Vec<(String, String)>,
    /// Import symmetric-key enrollments whose export carries no keys (Azure's queries leave them out) with new
    /// keys; their devices then need the new keys.
    #[arg(long)]
    pub generate_missing_keys: bool,
    /// PEM files of certificates for X.509 enrollments whose export has a certificate's `info` but not the
    /// certificate (found by the info's thumbprint); repeatable.
    #[arg(long = "certificates", value_name = "FILE")]
    pub certificates: Vec<PathBuf>,
    /// Only translate and report; create nothing.
    #[arg(long)]
    pub dry_run: bool,
}

fn parse_hub_map(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((azure, ours)) if !azure.trim().is_empty() && !ours.trim().is_empty() => {
            Ok((azure.trim().to_ascii_lowercase(), ours.trim().to_owned()))
        }
        _ => Err(format!("{text:?} is not AZURE_HUB=HUB")),
    }
}

/// The optional TOML file: the same settings, by the same names.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileSettings {
    #[serde(alias = "data-dir")]
    data_dir: Option<PathBuf>,
    #[serde(alias = "database-url")]
    database_url: Option<String>,
    #[serde(alias = "device-listen")]
    device_listen: Option<SocketAddr>,
    #[serde(alias = "mqtt-listen")]
    mqtt_listen: Option<SocketAddr>,
    #[serde(alias = "mqtt-max-connections")]
    mqtt_max_connections: Option<usize>,
    #[serde(alias = "mqtt-max-connections-per-device")]
    mqtt_max_connections_per_device: Option<usize>,
    #[serde(alias = "service-listen")]
    service_listen: Option<SocketAddr>,
    #[serde(alias = "hostnames")]
    hostname: Option<Vec<String>>,
    #[serde(alias = "id-scope")]
    id_scope: Option<String>,
    #[serde(alias = "tls-cert")]
    tls_cert: Option<PathBuf>,
    #[serde(alias = "tls-key")]
    tls_key: Option<PathBuf>,
    #[serde(alias = "no-migrate")]
    no_migrate: Option<bool>,
    #[serde(alias = "shutdown-timeout", default, with = "humantime_serde_opt")]
    shutdown_timeout: Option<Duration>,
    #[serde(alias = "sas-clock-skew", default, with = "humantime_serde_opt")]
    sas_clock_skew: Option<Duration>,
    #[serde(alias = "sas-max-lifetime", default, with = "humantime_serde_opt")]
    sas_max_lifetime: Option<Duration>,
    #[serde(alias = "no-shared-access-policies")]
    no_shared_access_policies: Option<bool>,
    #[serde(alias = "service-sas-max-lifetime", default, with = "humantime_serde_opt")]
    service_sas_max_lifetime: Option<Duration>,
    #[serde(alias = "operation-ttl", default, with = "humantime_serde_opt")]
    operation_ttl: Option<Duration>,
    #[serde(alias = "audit-retention", default, with = "humantime_serde_opt")]
    audit_retention: Option<Duration>,
    #[serde(alias = "tpm-challenge-ttl", default, with = "humantime_serde_opt")]
    tpm_challenge_ttl: Option<Duration>,
    #[serde(alias = "device-rate-limit")]
    device_rate_limit: Option<String>,
    #[serde(alias = "device-max-in-flight")]
    device_max_in_flight: Option<usize>,
    #[serde(alias = "jwt-issuer")]
    jwt_issuer: Option<String>,
    #[serde(alias = "jwt-audience")]
    jwt_audience: Option<String>,
    #[serde(alias = "jwks-file")]
    jwks_file: Option<PathBuf>,
    #[serde(alias = "jwks-url")]
    jwks_url: Option<String>,
    #[serde(alias = "jwt-role-claim")]
    jwt_role_claim: Option<String>,
    #[serde(alias = "ca-passphrase-file")]
    ca_passphrase_file: Option<PathBuf>,
    #[serde(alias = "crl-url")]
    crl_url: Option<String>,
    #[serde(alias = "renewal-grace", default, with = "humantime_serde_opt")]
    renewal_grace: Option<Duration>,
    #[serde(alias = "hub-inline-timeout", default, with = "humantime_serde_opt")]
    hub_inline_timeout: Option<Duration>,
    #[serde(alias = "hub-deadline", default, with = "humantime_serde_opt")]
    hub_deadline: Option<Duration>,
    #[serde(alias = "master-key-file")]
    master_key_file: Option<PathBuf>,
    #[serde(alias = "master-key-pkcs11-module")]
    master_key_pkcs11_module: Option<PathBuf>,
    #[serde(alias = "master-key-pkcs11-token")]
    master_key_pkcs11_token: Option<String>,
    #[serde(alias = "master-key-pkcs11-pin-file")]
    master_key_pkcs11_pin_file: Option<PathBuf>,
    #[serde(alias = "master-key-pkcs11-label")]
    master_key_pkcs11_label: Option<String>,
    #[serde(alias = "allow-insecure-outbound")]
    allow_insecure_outbound: Option<bool>,
    #[serde(alias = "outbound-allow")]
    outbound_allow: Option<Vec<String>>,
}

mod humantime_serde_opt {
    use serde::{Deserialize, Deserializer};
    use std::time::Duration;

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        let text: Option<String> = Option::deserialize(d)?;
        text.map(|t| humantime::parse_duration(&t).map_err(serde::de::Error::custom)).transpose()
    }
}

/// Where admin tokens come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenIssuer {
    /// The development key in the data dir (`zerotouch admin-token`).
    Development,
    /// An external OIDC issuer.
    External {
        /// Required `iss`.
        issuer: String,
        /// Where its keys are.
        keys: JwksSource,
    },
}

/// Where an external issuer's verification keys are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JwksSource {
    /// A JWKS file.
    File(PathBuf),
    /// A JWKS URL.
    Url(String),
}

/// Admin authentication settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthConfig {
    /// Who issues tokens.
    pub issuer: TokenIssuer,
    /// Required `aud`.
    pub audience: String,
    /// Claim path holding the role(s).
    pub role_claim: String,
}

/// The validated configuration of `serve`.
#[derive(Debug, Clone)]
pub struct Config {
    /// The data dir.
    pub data_dir: PathBuf,
    /// The database URL.
    pub database_url: String,
    /// HTTPS device API address.
    pub device_listen: SocketAddr,
    /// MQTT device endpoint address.
    pub mqtt_listen: SocketAddr,
    /// MQTT connections open at once.
    pub mqtt_max_connections: usize,
    /// MQTT connections one device may hold at once.
    pub mqtt_max_connections_per_device: usize,
    /// HTTPS admin API address.
    pub service_listen: SocketAddr,
    /// Names of the generated server certificate.
    pub hostnames: Vec<String>,
    /// A configured id scope, if any.
    pub id_scope: Option<String>,
    /// An operator-provided server certificate and key.
    pub tls_files: Option<(PathBuf, PathBuf)>,
    /// Whether to skip migrations at start.
    pub no_migrate: bool,
    /// Grace period for in-flight requests at shutdown.
    pub shutdown_timeout: Duration,
    /// Admin authentication.
    pub auth: AuthConfig,
    /// How far in the past a SAS token may have expired.
    pub sas_clock_skew: Duration,
    /// How far ahead a SAS token may expire (besides the clock skew).
    pub sas_max_lifetime: Duration,
    /// Whether shared access policies' tokens authenticate admin requests.
    pub shared_access_policies: bool,
    /// How far ahead an admin API SAS token may expire (besides the clock skew).
    pub service_sas_max_lifetime: Duration,
    /// How long operations can be polled.
    pub operation_ttl: Duration,
    /// How long audit events are kept.
    pub audit_retention: Duration,
    /// How long a TPM challenge's key is valid.
    pub tpm_challenge_ttl: Duration,
    /// Requests per window per device.
    pub device_rate_limit: (u32, Duration),
    /// Registrations in flight at once.
    pub device_max_in_flight: usize,
    /// Where the CA key passphrase of earlier versions comes from (read only to seal their CA keys).
    pub ca_passphrase: PassphraseSource,
    /// Where the master key comes from.
    pub master_key: MasterKeySource,
    /// Base URL of the CRLs named in issued certificates (`None`: derived from the first host name and the
    /// device port).
    pub crl_url: Option<String>,
    /// How long after expiry an operational certificate may renew.
    pub renewal_grace: Duration,
    /// How long a registration waits for its hub before answering.
    pub hub_inline_timeout: Duration,
    /// How long a registration may wait for its hub before it fails.
    pub hub_deadline: Duration,
    /// Whom outbound calls (allocation webhooks, webhook hubs, the JWKS) may reach.
    pub outbound: zerotouch_outbound::OutboundPolicy,
}

/// Where the passphrase that encrypted the CA keys in 0.1 comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PassphraseSource {
    /// A file named by the operator.
    File(PathBuf),
    /// The `ZEROTOUCH_CA_PASSPHRASE` environment variable (read when the service starts).
    Environment,
    /// `ca-passphrase` in the data dir (generated by earlier versions).
    DataDir,
}

/// The environment variable that may hold the CA key passphrase itself.
pub const CA_PASSPHRASE_ENV: &str = "ZEROTOUCH_CA_PASSPHRASE";

/// The longest lifetime of a device's SAS token by default: the longest any Azure SDK signs for (the C# SDK, one
/// day; the others an hour or less, `docs/protocol/device-api.md` §2.1) and an hour of margin for device clocks
/// running ahead and tokens kept a while before they are sent.
pub const DEFAULT_SAS_MAX_LIFETIME: Duration = Duration::from_secs(25 * 3600);

/// Default development issuer name, in tokens from `zerotouch admin-token`.
pub const DEV_ISSUER: &str = "zerotouch-dev";
/// Default audience of admin tokens.
pub const DEFAULT_AUDIENCE: &str = "zerotouch";

fn read_file_settings(path: Option<&Path>) -> anyhow::Result<FileSettings> {
    let Some(path) = path else { return Ok(FileSettings::default()) };
    let text = std::fs::read_to_string(path).with_context(|| format!("--config: cannot read {}", path.display()))?;
    toml::from_str(&text).with_context(|| format!("--config: {} is not a valid settings file", path.display()))
}

/// The data dir, database URL and authentication settings every subcommand needs.
#[derive(Debug, Clone)]
pub struct CommonConfig {
    /// The data dir.
    pub data_dir: PathBuf,
    /// The database URL.
    pub database_url: String,
    /// Admin authentication.
    pub auth: AuthConfig,
}

fn common(args: &SettingArgs, file: &FileSettings) -> anyhow::Result<CommonConfig> {
    let data_dir =
        args.data_dir.clone().or_else(|| file.data_dir.clone()).unwrap_or_else(|| PathBuf::from("./zerotouch-data"));
    let database_url = match args.database_url.clone().or_else(|| std::env::var("DATABASE_URL").ok()) {
        Some(url) => url,
        None => match &file.database_url {
            Some(url) => url.clone(),
            None => format!("sqlite://{}?mode=rwc", data_dir.join("zerotouch.db").display()),
        },
    };
    if zerotouch_store::Backend::of_url(&database_url).is_none() {
        bail!("--database-url: must start with sqlite:// or postgres:// (got {:?})", redact_url(&database_url));
    }
    let issuer = args.jwt_issuer.clone().or_else(|| file.jwt_issuer.clone());
    let jwks_file = args.jwks_file.clone().or_else(|| file.jwks_file.clone());
    let jwks_url = args.jwks_url.clone().or_else(|| file.jwks_url.clone());
    let issuer = match (issuer, jwks_file, jwks_url) {
        (None, None, None) => TokenIssuer::Development,
        (None, _, _) => bail!("--jwks-file/--jwks-url: need --jwt-issuer as well"),
        (Some(_), Some(_), Some(_)) => bail!("--jwks-file and --jwks-url: give one, not both"),
        (Some(_), None, None) => bail!("--jwt-issuer: needs --jwks-file or --jwks-url"),
        (Some(issuer), Some(file), None) => TokenIssuer::External { issuer, keys: JwksSource::File(file) },
        (Some(issuer), None, Some(url)) => {
            if !(url.starts_with("https://") || url.starts_with("http://")) {
                bail!("--jwks-url: must be an http(s) URL");
            }
            TokenIssuer::External { issuer, keys: JwksSource::Url(url) }
        }
    };
    let audience =
        args.jwt_audience.clone().or_else(|| file.jwt_audience.clone()).unwrap_or_else(|| DEFAULT_AUDIENCE.to_owned());
    let role_claim =
        args.jwt_role_claim.clone().or_else(|| file.jwt_role_claim.clone()).unwrap_or_else(|| "role".to_owned());
    if role_claim.split('.').any(str::is_empty) {
        bail!("--jwt-role-claim: {role_claim:?} is not a claim name or dotted path");
    }
    Ok(CommonConfig { data_dir, database_url, auth: AuthConfig { issuer, audience, role_claim } })
}

/// Hides the password of a database URL, for messages.
pub fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            let credentials = &url[scheme_end + 3..at];
            match credentials.split_once(':') {
                Some((user, _)) => format!("{}://{user}:***@{}", &url[..scheme_end], &url[at + 1..]),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

impl CommonConfig {
    /// Resolves the settings of `migrate` and `admin-token`.
    pub fn resolve(args: &SettingArgs) -> anyhow::Result<Self> {
        let file = read_file_settings(args.config.as_deref())?;
        common(args, &file)
    }
}

impl Config {
    /// Resolves the settings of `serve`: flag > env > file > default.
    pub fn resolve(args: &ServeArgs) -> anyhow::Result<Self> {
        let file = read_file_settings(args.settings.config.as_deref())?;
        let CommonConfig { data_dir, database_url, auth } = common(&args.settings, &file)?;
        let default_addr = |s: &str| s.parse::<SocketAddr>().context("built-in default address");
        let hostnames = if !args.hostnames.is_empty() {
            args.hostnames.clone()
        } else {
            file.hostname.clone().unwrap_or_else(|| vec!["localhost".to_owned()])
        };
        for name in &hostnames {
            zerotouch_wire::HubHostName::try_from(name.as_str())
                .map_err(|e| anyhow::anyhow!("--hostname: {name:?} is not a DNS name: {e}"))?;
        }
        let id_scope = args.id_scope.clone().or_else(|| file.id_scope.clone());
        if let Some(scope) = &id_scope {
            check_id_scope(scope).map_err(|e| anyhow::anyhow!("--id-scope: {e}"))?;
        }
        let tls_files = match (
            args.tls_cert.clone().or_else(|| file.tls_cert.clone()),
            args.tls_key.clone().or_else(|| file.tls_key.clone()),
        ) {
            (Some(cert), Some(key)) => Some((cert, key)),
            (None, None) => None,
            _ => bail!("--tls-cert and --tls-key: give both or neither"),
        };
        Ok(Self {
            data_dir,
            database_url,
            device_listen: match args.device_listen.or(file.device_listen) {
                Some(a) => a,
                None => default_addr("0.0.0.0:8443")?,
            },
            mqtt_listen: match args.mqtt_listen.or(file.mqtt_listen) {
                Some(a) => a,
                None => default_addr("0.0.0.0:8883")?,
            },
            mqtt_max_connections: match args.mqtt_max_connections.or(file.mqtt_max_connections) {
                Some(0) => bail!("--mqtt-max-connections: must be at least 1"),
                Some(n) => n,
                None => 10_000,
            },
            // A device needs one connection, and a second while it reconnects before the old one is gone.
            mqtt_max_connections_per_device: match args
                .mqtt_max_connections_per_device
                .or(file.mqtt_max_connections_per_device)
            {
                Some(0) => bail!("--mqtt-max-connections-per-device: must be at least 1"),
                Some(n) => n,
                None => 2,
            },
            service_listen: match args.service_listen.or(file.service_listen) {
                Some(a) => a,
                None => default_addr("127.0.0.1:8444")?,
            },
            hostnames,
            id_scope,
            tls_files,
            no_migrate: args.no_migrate || file.no_migrate.unwrap_or(false),
            shutdown_timeout: args.shutdown_timeout.or(file.shutdown_timeout).unwrap_or(Duration::from_secs(10)),
            auth,
            sas_clock_skew: args.sas_clock_skew.or(file.sas_clock_skew).unwrap_or(Duration::from_secs(300)),
            sas_max_lifetime: positive(
                "--sas-max-lifetime",
                args.sas_max_lifetime.or(file.sas_max_lifetime).unwrap_or(DEFAULT_SAS_MAX_LIFETIME),
            )?,
            shared_access_policies: !(args.no_shared_access_policies
                || file.no_shared_access_policies.unwrap_or(false)),
            service_sas_max_lifetime: positive(
                "--service-sas-max-lifetime",
                args.service_sas_max_lifetime.or(file.service_sas_max_lifetime).unwrap_or(DEFAULT_SAS_MAX_LIFETIME),
            )?,
            operation_ttl: args.operation_ttl.or(file.operation_ttl).unwrap_or(Duration::from_secs(24 * 3600)),
            audit_retention: args
                .audit_retention
                .or(file.audit_retention)
                .unwrap_or(Duration::from_secs(90 * 24 * 3600)),
            tpm_challenge_ttl: args.tpm_challenge_ttl.or(file.tpm_challenge_ttl).unwrap_or(Duration::from_secs(600)),
            device_rate_limit: match (args.device_rate_limit, &file.device_rate_limit) {
                (Some(rate), _) => rate,
                (None, Some(text)) => parse_rate(text).map_err(|e| anyhow::anyhow!("device_rate_limit: {e}"))?,
                (None, None) => (5, Duration::from_secs(10)),
            },
            device_max_in_flight: match args.device_max_in_flight.or(file.device_max_in_flight) {
                Some(0) => bail!("--device-max-in-flight: must be at least 1"),
                Some(n) => n,
                None => 1024,
            },
            ca_passphrase: match args.ca_passphrase_file.clone().or_else(|| file.ca_passphrase_file.clone()) {
                Some(path) => PassphraseSource::File(path),
                None if std::env::var_os(CA_PASSPHRASE_ENV).is_some() => PassphraseSource::Environment,
                None => PassphraseSource::DataDir,
            },
            master_key: MasterKeySource::resolve(&args.master_key, &file)?,
            crl_url: match args.crl_url.clone().or_else(|| file.crl_url.clone()) {
                Some(url) if url.starts_with("https://") || url.starts_with("http://") => {
                    Some(url.trim_end_matches('/').to_owned())
                }
                Some(url) => bail!("--crl-url: {url:?} is not an http(s) URL"),
                None => None,
            },
            renewal_grace: args.renewal_grace.or(file.renewal_grace).unwrap_or(Duration::ZERO),
            hub_inline_timeout: positive(
                "--hub-inline-timeout",
                args.hub_inline_timeout.or(file.hub_inline_timeout).unwrap_or(Duration::from_secs(2)),
            )?,
            hub_deadline: positive(
                "--hub-deadline",
                args.hub_deadline.or(file.hub_deadline).unwrap_or(Duration::from_secs(600)),
            )?,
            outbound: zerotouch_outbound::OutboundPolicy::new(
                match (&args.outbound_allow[..], &file.outbound_allow) {
                    ([], Some(listed)) => listed
                        .iter()
                        .map(|text| parse_cidr(text).map_err(|e| anyhow::anyhow!("outbound_allow: {e}")))
                        .collect::<anyhow::Result<_>>()?,
                    (flags, _) => flags.to_vec(),
                },
                args.allow_insecure_outbound || file.allow_insecure_outbound.unwrap_or(false),
            ),
        })
    }
}

/// Checks an id scope: 1-64 ASCII letters and digits (`0ne` + 8 hex digits when generated).
pub fn check_id_scope(scope: &str) -> Result<(), String> {
    if scope.is_empty() || scope.len() > 64 || !scope.chars().all(|c| c.is_ascii_alphanumeric()) {
        return Err(format!("{scope:?} must be 1-64 ASCII letters and digits"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn serve(args: &[&str]) -> ServeArgs {
        let cli = Cli::try_parse_from(
            std::iter::once("zerotouch").chain(std::iter::once("serve")).chain(args.iter().copied()),
        )
        .unwrap();
        match cli.command {
            Command::Serve(a) => *a,
            _ => unreachable!(),
        }
    }

    #[test]
    fn defaults_apply_when_nothing_is_given() {
        let config = Config::resolve(&serve(&[])).unwrap();
        assert_eq!(config.data_dir, PathBuf::from("./zerotouch-data"));
        assert_eq!(config.service_listen.to_string(), "127.0.0.1:8444");
        assert_eq!(config.device_listen.to_string(), "0.0.0.0:8443");
        assert_eq!(config.mqtt_listen.to_string(), "0.0.0.0:8883");
        assert_eq!(config.hostnames, vec!["localhost"]);
        assert_eq!(config.auth.issuer, TokenIssuer::Development);
    }

    /// The outbound policy: strict by default; ranges and single addresses from the flag (comma-separated) or the
    /// file; a bad range names the value.
    #[test]
    fn outbound_settings() {
        let strict = Config::resolve(&serve(&[])).unwrap().outbound;
        assert_eq!(strict, zerotouch_outbound::OutboundPolicy::default());
        let config = Config::resolve(&serve(&[
            "--outbound-allow",
            "10.20.0.0/16, 10.30.0.7,fd00::/8",
            "--allow-insecure-outbound",
        ]))
        .unwrap();
        let expected = ["10.20.0.0/16", "10.30.0.7/32", "fd00::/8"].map(|n| n.parse::<ipnet::IpNet>().unwrap());
        assert_eq!(config.outbound, zerotouch_outbound::OutboundPolicy::new(expected.to_vec(), true));
        assert!(parse_cidr("10.0.0.0/33").unwrap_err().contains("10.0.0.0/33"));
        assert!(parse_cidr("hooks.internal").is_err());
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("zerotouch.toml");
        std::fs::write(&file, "outbound-allow = [\"10.40.0.0/24\"]\nallow_insecure_outbound = true\n").unwrap();
        let config = Config::resolve(&serve(&["--config", file.to_str().unwrap()])).unwrap();
        let expected = vec!["10.40.0.0/24".parse::<ipnet::IpNet>().unwrap()];
        assert_eq!(config.outbound, zerotouch_outbound::OutboundPolicy::new(expected, true));
        std::fs::write(&file, "outbound_allow = [\"ten\"]\n").unwrap();
        let error = Config::resolve(&serve(&["--config", file.to_str().unwrap()])).unwrap_err().to_string();
        assert!(error.contains("outbound_allow") && error.contains("ten"), "{error}");
    }

    #[test]
    fn flags_win_over_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("zerotouch.toml");
        std::fs::write(
            &file,
            "data-dir = \"/from/file\"\nservice_listen = \"127.0.0.1:9000\"\nhostname = [\"a.example\"]\n",
        )
        .unwrap();
        let config =
            Config::resolve(&serve(&["--config", file.to_str().unwrap(), "--data-dir", "/from/flag"])).unwrap();
        assert_eq!(config.data_dir, PathBuf::from("/from/flag"));
        assert_eq!(config.service_listen.to_string(), "127.0.0.1:9000");
        assert_eq!(config.hostnames, vec!["a.example"]);
        assert!(config.database_url.starts_with("sqlite:///from/flag/"));
    }

    #[test]
    fn unknown_file_keys_and_bad_values_name_the_setting() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("zerotouch.toml");
        std::fs::write(&file, "data_dri = \"x\"\n").unwrap();
        let err = Config::resolve(&serve(&["--config", file.to_str().unwrap()])).unwrap_err();
        assert!(format!("{err:#}").contains("data_dri"), "{err:#}");
        let err = Config::resolve(&serve(&["--database-url", "mysql://x"])).unwrap_err();
        assert!(err.to_string().contains("--database-url"), "{err}");
        let err = Config::resolve(&serve(&["--id-scope", "0ne/1"])).unwrap_err();
        assert!(err.to_string().contains("--id-scope"), "{err}");
        let err = Config::resolve(&serve(&["--jwt-issuer", "https://idp"])).unwrap_err();
        assert!(err.to_string().contains("--jwks"), "{err}");
    }

    #[test]
    fn device_limits_parse() {
        assert_eq!(parse_rate("5/10s"), Ok((5, Duration::from_secs(10))));
        assert!(parse_rate("0/10s").is_err());
        assert!(parse_rate("5").is_err());
        let config = Config::resolve(&serve(&["--device-rate-limit", "100/1s", "--operation-ttl", "1h"])).unwrap();
        assert_eq!(config.device_rate_limit, (100, Duration::from_secs(1)));
        assert_eq!(config.operation_ttl, Duration::from_secs(3600));
        assert_eq!(config.sas_clock_skew, Duration::from_secs(300));
    }

    #[test]
    fn mqtt_connections_per_device_default_to_two_and_name_the_setting_when_zero() {
        assert_eq!(Config::resolve(&serve(&[])).unwrap().mqtt_max_connections_per_device, 2);
        let config = Config::resolve(&serve(&["--mqtt-max-connections-per-device", "1"])).unwrap();
        assert_eq!(config.mqtt_max_connections_per_device, 1);
        let err = Config::resolve(&serve(&["--mqtt-max-connections-per-device", "0"])).unwrap_err();
        assert!(err.to_string().contains("--mqtt-max-connections-per-device"), "{err}");
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("zerotouch.toml");
        std::fs::write(&file, "mqtt-max-connections-per-device = 3\n").unwrap();
        let config = Config::resolve(&serve(&["--config", file.to_str().unwrap()])).unwrap();
        assert_eq!(config.mqtt_max_connections_per_device, 3);
    }

    #[test]
    fn sas_max_lifetime_comes_from_flag_file_or_default_and_must_be_positive() {
        assert_eq!(Config::resolve(&serve(&[])).unwrap().sas_max_lifetime, Duration::from_secs(25 * 3600));
        let config = Config::resolve(&serve(&["--sas-max-lifetime", "2h"])).unwrap();
        assert_eq!(config.sas_max_lifetime, Duration::from_secs(7200));
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("zerotouch.toml");
        std::fs::write(&file, "sas-max-lifetime = \"90m\"\n").unwrap();
        let config = Config::resolve(&serve(&["--config", file.to_str().unwrap()])).unwrap();
        assert_eq!(config.sas_max_lifetime, Duration::from_secs(5400));
        let err = Config::resolve(&serve(&["--sas-max-lifetime", "0s"])).unwrap_err();
        assert!(err.to_string().contains("--sas-max-lifetime"), "{err}");
        assert!(Cli::try_parse_from(["zerotouch", "serve", "--sas-max-lifetime", "forever"]).is_err());
    }

    #[test]
    fn shared_access_policies_are_on_by_default_and_turned_off_by_flag_or_file() {
        let config = Config::resolve(&serve(&[])).unwrap();
        assert!(config.shared_access_policies);
        assert_eq!(config.service_sas_max_lifetime, DEFAULT_SAS_MAX_LIFETIME);
        let config = Config::resolve(&serve(&["--no-shared-access-policies", "--service-sas-max-lifetime", "1h"]));
        let config = config.unwrap();
        assert!(!config.shared_access_policies);
        assert_eq!(config.service_sas_max_lifetime, Duration::from_secs(3600));
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("zerotouch.toml");
        std::fs::write(&file, "no-shared-access-policies = true\nservice_sas_max_lifetime = \"2h\"\n").unwrap();
        let config = Config::resolve(&serve(&["--config", file.to_str().unwrap()])).unwrap();
        assert!(!config.shared_access_policies);
        assert_eq!(config.service_sas_max_lifetime, Duration::from_secs(7200));
        let err = Config::resolve(&serve(&["--service-sas-max-lifetime", "0s"])).unwrap_err();
        assert!(err.to_string().contains("--service-sas-max-lifetime"), "{err}");
    }

    #[test]
    fn the_master_key_has_one_source_named_by_its_setting() {
        assert_eq!(Config::resolve(&serve(&[])).unwrap().master_key, MasterKeySource::DataDir);
        let config = Config::resolve(&serve(&["--master-key-file", "/etc/zt/key"])).unwrap();
        assert_eq!(config.master_key, MasterKeySource::File(PathBuf::from("/etc/zt/key")));
        let token = ["--master-key-pkcs11-module", "/lib/p11.so", "--master-key-pkcs11-token", "zt"];
        let err = Config::resolve(&serve(&token)).unwrap_err();
        assert!(err.to_string().contains("--master-key-pkcs11-pin-file"), "{err}");
        let config =
            Config::resolve(&serve(&[&token[..], &["--master-key-pkcs11-pin-file", "/pin"]].concat())).unwrap();
        let MasterKeySource::Pkcs11(settings) = config.master_key else { panic!("a token") };
        assert_eq!((settings.token.as_str(), settings.label.as_str()), ("zt", DEFAULT_PKCS11_LABEL));
        let both = [&token[..], &["--master-key-pkcs11-pin-file", "/pin", "--master-key-file", "/k"]].concat();
        let err = Config::resolve(&serve(&both)).unwrap_err();
        assert!(err.to_string().contains("give one source"), "{err}");
        let err = Config::resolve(&serve(&["--master-key-pkcs11-label", "x"])).unwrap_err();
        assert!(err.to_string().contains("--master-key-pkcs11-module"), "{err}");

        let mut args = serve(&[]);
        let text = MasterKeyText(std::sync::Arc::new(zeroize::Zeroizing::new("c2VjcmV0".to_owned())));
        args.master_key.master_key_from_env = Some(text.clone());
        assert_eq!(Config::resolve(&args).unwrap().master_key, MasterKeySource::Environment(text));
        assert_eq!(format!("{args:?}").matches("c2VjcmV0").count(), 0, "the key is redacted in Debug");
        args.master_key.master_key_file = Some(PathBuf::from("/k"));
        assert!(Config::resolve(&args).is_err(), "a file and the variable: two sources");

        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("zerotouch.toml");
        std::fs::write(&file, "master-key-file = \"/from/file\"\n").unwrap();
        let config = Config::resolve(&serve(&["--config", file.to_str().unwrap()])).unwrap();
        assert_eq!(config.master_key, MasterKeySource::File(PathBuf::from("/from/file")));
    }

    #[test]
    fn database_passwords_are_redacted_in_messages() {
        assert_eq!(redact_url("postgres://zt:s3cret@db:5432/zt"), "postgres://zt:***@db:5432/zt");
        assert_eq!(redact_url("postgres://db/zt"), "postgres://db/zt");
    }
}
