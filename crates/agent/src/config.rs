//! The agent's configuration: one TOML file (`/etc/zerotouch/agent.toml` by default), read and checked once at
//! start-up, with errors that name the setting. Every key is documented in `docs/agent.md`; the examples there are
//! checked by the agent binary in `tests/tests/agent.rs`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use serde::Deserialize;

use crate::key::KeyType;
use crate::schedule::Policy;

/// Where the configuration is read from unless `--config` says otherwise.
pub const DEFAULT_PATH: &str = "/etc/zerotouch/agent.toml";
/// Where the agent keeps its state and identity unless `state_dir` says otherwise.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/zerotouch-agent";

/// The whole file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The service.
    pub service: Service,
    /// How the device proves who it is on its first registration (and when it must start over).
    pub attestation: Attestation,
    /// The operational identity.
    #[serde(default)]
    pub identity: Identity,
    /// When to renew and how to retry.
    #[serde(default)]
    pub renewal: Renewal,
    /// What to run after each change.
    #[serde(default)]
    pub hook: Hook,
    /// The state file and the identity live here.
    #[serde(default = "default_state_dir")]
    pub state_dir: PathBuf,
}

fn default_state_dir() -> PathBuf {
    PathBuf::from(DEFAULT_STATE_DIR)
}

/// `[service]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Service {
    /// `https://host[:port]` of the device API.
    pub url: String,
    /// The id scope.
    pub id_scope: String,
    /// The registration id; for a TPM, the one derived from its endorsement key when absent.
    #[serde(default)]
    pub registration_id: Option<String>,
    /// PEM bundle of the CAs the service's TLS certificate may chain to.
    pub trust_bundle: PathBuf,
    /// The api-version sent.
    #[serde(default = "default_api_version")]
    pub api_version: String,
    /// How long one registration may take, polls included.
    #[serde(default = "default_timeout", with = "duration")]
    pub timeout: Duration,
    /// How the agent registers: `https` (default) or `mqtt` (`docs/protocol/device-api.md` §5; not for a TPM).
    #[serde(default)]
    pub transport: Transport,
    /// `host:port` of the MQTT device endpoint, for `transport = "mqtt"`.
    #[serde(default)]
    pub mqtt_address: Option<String>,
}

/// How the agent registers (renewal is always EST over HTTPS).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    /// The HTTPS device API.
    #[default]
    Https,
    /// The MQTT device API.
    Mqtt,
}

fn default_api_version() -> String {
    crate::provision::API_VERSION.to_owned()
}

fn default_timeout() -> Duration {
    Duration::from_secs(60)
}

/// `[attestation]`: the onboarding credential.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "method", rename_all = "snake_case", deny_unknown_fields)]
pub enum Attestation {
    /// A symmetric key (base64 in a file): the device's own, or its group's when `group` is set, from which the
    /// device key is derived on the device (`docs/protocol/device-api.md` §2.2).
    SymmetricKey {
        /// The file holding the base64 key.
        key_file: PathBuf,
        /// The file holds the enrollment group's key.
        #[serde(default)]
        group: bool,
    },
    /// A factory certificate (PEM, with its chain up to the enrolled CA) and its key: a PEM file, or a key in a
    /// PKCS#11 token.
    X509 {
        /// The certificate chain, leaf first.
        cert_file: PathBuf,
        /// The private key's file.
        #[serde(default)]
        key_file: Option<PathBuf>,
        /// The private key in a token.
        #[serde(default)]
        pkcs11: Option<crate::pkcs11_key::TokenSettings>,
    },
    /// A TPM 2.0 through a TCTI (`device:/dev/tpmrm0`, `swtpm:host=127.0.0.1,port=2321`).
    Tpm {
        /// The TCTI.
        tcti: String,
    },
}

/// `[identity]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Identity {
    /// The operational key's type: `p256` (default), `p384`, `rsa3072` (files), or `tpm` (in the TPM).
    #[serde(default)]
    pub key_type: KeyType,
}

impl Default for Identity {
    fn default() -> Self {
        Self { key_type: KeyType::P256 }
    }
}

/// `[renewal]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Renewal {
    /// Fraction of the lifetime after which the certificate is renewed.
    #[serde(default = "default_fraction")]
    pub fraction: f64,
    /// Up to this fraction of the lifetime earlier, at random.
    #[serde(default = "default_jitter")]
    pub jitter: f64,
    /// First wait after a failure.
    #[serde(default = "default_backoff_initial", with = "duration")]
    pub backoff_initial: Duration,
    /// Longest wait after failures.
    #[serde(default = "default_backoff_max", with = "duration")]
    pub backoff_max: Duration,
    /// How often the agent registers again with its certificate (follows moves, notices revocation).
    #[serde(default = "default_check_interval", with = "duration")]
    pub check_interval: Duration,
    /// The server's `--renewal-grace`: an expired certificate is still renewed by EST within it.
    #[serde(default, with = "duration")]
    pub grace: Duration,
}

fn default_fraction() -> f64 {
    Policy::default().renew_fraction
}
fn default_jitter() -> f64 {
    Policy::default().jitter
}
fn default_backoff_initial() -> Duration {
    Policy::default().backoff_initial
}
fn default_backoff_max() -> Duration {
    Policy::default().backoff_max
}
fn default_check_interval() -> Duration {
    Policy::default().check_interval
}

impl Default for Renewal {
    fn default() -> Self {
        Self {
            fraction: default_fraction(),
            jitter: default_jitter(),
            backoff_initial: default_backoff_initial(),
            backoff_max: default_backoff_max(),
            check_interval: default_check_interval(),
            grace: Duration::ZERO,
        }
    }
}

/// `[hook]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Hook {
    /// The program and its arguments (no shell); none: no hook.
    #[serde(default)]
    pub command: Vec<String>,
    /// How long the hook may run.
    #[serde(default = "default_hook_timeout", with = "duration")]
    pub timeout: Duration,
}

fn default_hook_timeout() -> Duration {
    Duration::from_secs(60)
}

/// Durations as humantime text (`90s`, `5m`, `1h 30m`).
mod duration {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer};

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(deserializer)?;
        humantime::parse_duration(&text).map_err(|e| serde::de::Error::custom(format!("{text:?}: {e}")))
    }
}

impl Config {
    /// Reads and checks the file at `path`.
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
        Self::parse(&text).with_context(|| format!("in {}", path.display()))
    }

    /// Parses and checks configuration text.
    pub fn parse(text: &str) -> anyhow::Result<Self> {
        let config: Self = toml::from_str(text)?;
        config.policy()?;
        if !config.service.url.starts_with("https://") {
            bail!("service.url must be an https:// URL (got {:?})", config.service.url);
        }
        if config.service.id_scope.is_empty() {
            bail!("service.id_scope must not be empty");
        }
        if let Some(id) = &config.service.registration_id {
            zerotouch_wire::RegistrationId::try_from(id.as_str())
                .map_err(|e| anyhow::anyhow!("service.registration_id: {e}"))?;
        }
        if let Attestation::X509 { key_file, pkcs11, .. } = &config.attestation
            && key_file.is_some() == pkcs11.is_some()
        {
            bail!("attestation: an x509 attestation takes key_file or [attestation.pkcs11], one of them");
        }
        if config.service.transport == Transport::Mqtt {
            if config.service.mqtt_address.is_none() {
                bail!("service.mqtt_address is required with service.transport = \"mqtt\"");
            }
            if matches!(config.attestation, Attestation::Tpm { .. }) {
                bail!("service.transport = \"mqtt\" does not carry TPM attestation (as with Azure DPS): use https");
            }
        }
        if config.identity.key_type == KeyType::Tpm && !matches!(config.attestation, Attestation::Tpm { .. }) {
            bail!("identity.key_type \"tpm\" needs attestation.method \"tpm\"");
        }
        if !matches!(config.attestation, Attestation::Tpm { .. }) && config.service.registration_id.is_none() {
            bail!("service.registration_id is required unless attestation.method is \"tpm\"");
        }
        Ok(config)
    }

    /// The schedule's policy.
    pub fn policy(&self) -> anyhow::Result<Policy> {
        let r = &self.renewal;
        Ok(Policy {
            renew_fraction: r.fraction,
            jitter: r.jitter,
            backoff_initial: r.backoff_initial,
            backoff_max: r.backoff_max,
            check_interval: r.check_interval,
            renewal_grace: r.grace,
        }
        .checked()?)
    }

    /// The state file.
    pub fn state_file(&self) -> PathBuf {
        self.state_dir.join("state.json")
    }

    /// Where the identity lives: `identity/current/{cert,key}.pem`.
    pub fn identity_dir(&self) -> PathBuf {
        self.state_dir.join("identity")
    }

    /// The file `zerotouch-agent reprovision` leaves for the daemon.
    pub fn reprovision_request(&self) -> PathBuf {
        self.state_dir.join("reprovision.request")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_errors_name_the_setting() {
        let minimal = r#"
            [service]
            url = "https://dps.example.com"
            id_scope = "0ne00000001"
            registration_id = "dev-1"
            trust_bundle = "/etc/zerotouch/trust-bundle.pem"
            [attestation]
            method = "symmetric_key"
            key_file = "/etc/zerotouch/device.key"
        "#;
        let config = Config::parse(minimal).unwrap();
        assert_eq!(config.state_file(), Path::new("/var/lib/zerotouch-agent/state.json"));
        assert_eq!(config.policy().unwrap(), Policy::default());
        assert_eq!(config.identity.key_type, KeyType::P256);
        assert!(config.hook.command.is_empty());

        let cases = [
            (minimal.replace("https://dps", "http://dps"), "service.url"),
            (minimal.replace("registration_id = \"dev-1\"", ""), "service.registration_id"),
            (minimal.replace("registration_id = \"dev-1\"", "registration_id = \"a/b\""), "service.registration_id"),
            (format!("{minimal}\n[renewal]\nfraction = 1.5\n"), "renewal.fraction"),
            (format!("{minimal}\n[renewal]\nbackoff_max = \"soon\"\n"), "backoff_max"),
            (format!("{minimal}\n[identity]\nkey_type = \"p521\"\n"), "key_type"),
            (format!("{minimal}\n[identity]\nkey_type = \"tpm\"\n"), "identity.key_type"),
            (format!("{minimal}\nsurprise = 1\n"), "surprise"),
            (minimal.replace("symmetric_key", "password"), "password"),
            (minimal.replace("[attestation]", "transport = \"mqtt\"\n[attestation]"), "service.mqtt_address"),
        ];
        for (text, named) in cases {
            let error = format!("{:#}", Config::parse(&text).unwrap_err());
            assert!(error.contains(named), "{named}: {error}");
        }
    }
}
