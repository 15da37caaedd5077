//! `zerotouch-agent`: provisions this device with a zerotouch (or Azure DPS) service and keeps its identity
//! (`docs/agent.md`).
//!
//! ```text
//! zerotouch-agent run [--config /etc/zerotouch/agent.toml] [--log-format plain|json]
//! zerotouch-agent status [--config ...]        # the state file as JSON
//! zerotouch-agent reprovision [--config ...]   # the hub refused the device: register again
//! zerotouch-agent provision --tpm swtpm:host=127.0.0.1,port=2321 --url https://dps.example.com:8443 \
//!     --id-scope 0ne0000AAAA [--registration-id my-device] --trust-bundle trust-bundle.pem [--csr device.csr]
//! zerotouch-agent keys --tpm ...
//! ```
//! `provision` is a one-shot TPM registration: it prints the final operation (`RegistrationOperationStatus`) as
//! JSON and exits 0 when the device is assigned.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use base64::Engine;
use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "zerotouch-agent", version, about = "Provisions this device with a zerotouch service")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Runs the agent: provisions the device when it has no identity, then renews and follows it.
    Run {
        #[command(flatten)]
        config: ConfigArg,
        /// Log lines as plain text or as JSON objects (one per line).
        #[arg(long, value_enum, default_value_t = LogFormat::Plain, env = "ZEROTOUCH_AGENT_LOG_FORMAT")]
        log_format: LogFormat,
    },
    /// Prints the agent's state (identity, hub, expiry, next renewal, last error) as JSON.
    Status {
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Asks the running agent to register again with the onboarding credential (for an application whose hub
    /// refused the device).
    Reprovision {
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Registers the device (TPM attestation) and prints the final operation as JSON.
    Provision(ProvisionArgs),
    /// Prints the TPM's EK and SRK (base64 TPM2B_PUBLIC, creating and persisting them when missing) as JSON: what
    /// an individual enrollment names.
    Keys {
        /// The TPM's TCTI.
        #[arg(long, env = "ZEROTOUCH_AGENT_TPM")]
        tpm: String,
    },
}

#[derive(Debug, clap::Args)]
struct ConfigArg {
    /// The configuration file.
    #[arg(long = "config", default_value = zerotouch_agent::config::DEFAULT_PATH, env = "ZEROTOUCH_AGENT_CONFIG")]
    path: PathBuf,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    Plain,
    Json,
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("ZEROTOUCH_AGENT_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match format {
        LogFormat::Plain => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}

/// Completes on SIGTERM or SIGINT.
async fn shutdown_signal() {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = terminate => {}
    }
}

#[derive(Debug, clap::Args)]
struct ProvisionArgs {
    /// The TPM's TCTI, e.g. `swtpm:host=127.0.0.1,port=2321` or `device:/dev/tpmrm0`.
    #[arg(long, env = "ZEROTOUCH_AGENT_TPM")]
    tpm: String,
    /// The device API, `https://host[:port]`.
    #[arg(long, env = "ZEROTOUCH_AGENT_URL")]
    url: String,
    /// The service's id scope.
    #[arg(long, env = "ZEROTOUCH_AGENT_ID_SCOPE")]
    id_scope: String,
    /// The registration id. Without it, the id derived from the TPM's endorsement key, as the Azure device SDKs
    /// derive it (what a TPM enrollment group admits by default).
    #[arg(long, env = "ZEROTOUCH_AGENT_REGISTRATION_ID")]
    registration_id: Option<String>,
    /// PEM bundle of the CAs that may sign the service's certificate.
    #[arg(long, env = "ZEROTOUCH_AGENT_TRUST_BUNDLE")]
    trust_bundle: PathBuf,
    /// A CSR (PEM or DER PKCS#10) for an operational certificate; its CN must be the registration id.
    #[arg(long)]
    csr: Option<PathBuf>,
    /// Send the TPM's EK certificate (NV 0x1c00002), for TPM enrollment groups.
    #[arg(long)]
    ek_certificate: bool,
    /// The api-version to send.
    #[arg(long, default_value = zerotouch_agent::provision::API_VERSION)]
    api_version: String,
    /// How long to wait for the registration to finish.
    #[arg(long, default_value = "60s", value_parser = humantime_seconds)]
    timeout: Duration,
}

fn humantime_seconds(text: &str) -> Result<Duration, String> {
    let seconds = text.strip_suffix('s').unwrap_or(text);
    seconds.parse::<u64>().map(Duration::from_secs).map_err(|_| format!("{text:?} is not a number of seconds"))
}

/// A CSR file as DER: PEM is unwrapped.
fn read_csr(path: &PathBuf) -> anyhow::Result<Vec<u8>> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let Ok(text) = std::str::from_utf8(&bytes) else { return Ok(bytes) };
    if !text.contains("-----BEGIN") {
        return Ok(bytes);
    }
    let body: String = text.lines().filter(|l| !l.starts_with("-----")).collect();
    base64::engine::general_purpose::STANDARD.decode(body.trim()).context("the PEM CSR is not base64")
}

fn client(trust_bundle: &PathBuf) -> anyhow::Result<reqwest::Client> {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let pem = std::fs::read(trust_bundle).with_context(|| format!("cannot read {}", trust_bundle.display()))?;
    let mut builder = reqwest::Client::builder().tls_built_in_root_certs(false).timeout(Duration::from_secs(30));
    for certificate in reqwest::Certificate::from_pem_bundle(&pem)? {
        builder = builder.add_root_certificate(certificate);
    }
    Ok(builder.build()?)
}

#[cfg(feature = "tpm")]
fn open_tpm(tcti: &str) -> anyhow::Result<Box<dyn zerotouch_agent::DeviceTpm>> {
    Ok(Box::new(zerotouch_agent::tpm::Tpm::open(tcti)?))
}

#[cfg(not(feature = "tpm"))]
fn open_tpm(_tcti: &str) -> anyhow::Result<Box<dyn zerotouch_agent::DeviceTpm>> {
    bail!("this zerotouch-agent was built without the `tpm` feature")
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let args = match Cli::parse().command {
        Command::Run { config, log_format } => {
            init_logging(log_format);
            let config = zerotouch_agent::config::Config::load(&config.path)?;
            let agent = zerotouch_agent::daemon::Agent::open(config, open_tpm)?;
            return agent.run(shutdown_signal()).await;
        }
        Command::Status { config } => {
            let config = zerotouch_agent::config::Config::load(&config.path)?;
            let state = zerotouch_agent::state::State::load(&config.state_file())?;
            println!("{}", serde_json::to_string_pretty(&state)?);
            return Ok(());
        }
        Command::Reprovision { config } => {
            let config = zerotouch_agent::config::Config::load(&config.path)?;
            let request = config.reprovision_request();
            std::fs::write(&request, b"").with_context(|| format!("cannot write {}", request.display()))?;
            println!("the agent registers again within a second (or after its current backoff)");
            return Ok(());
        }
        Command::Provision(args) => args,
        Command::Keys { tpm } => {
            let (ek, srk) = open_tpm(&tpm)?.keys()?;
            let encode = |bytes: &[u8]| base64::engine::general_purpose::STANDARD.encode(bytes);
            let keys = serde_json::json!({"endorsementKey": encode(&ek), "storageRootKey": encode(&srk)});
            println!("{}", serde_json::to_string_pretty(&keys)?);
            return Ok(());
        }
    };
    let client = client(&args.trust_bundle)?;
    let mut tpm = open_tpm(&args.tpm)?;
    let registration_id = match args.registration_id {
        Some(id) => id,
        None => {
            let (ek, _) = tpm.keys()?;
            zerotouch_tpm::Public::parse(&ek).context("the TPM's endorsement key")?.derived_registration_id()
        }
    };
    let target = zerotouch_agent::provision::Target {
        url: args.url,
        id_scope: args.id_scope,
        registration_id,
        api_version: args.api_version,
        deadline: args.timeout,
    };
    let request = zerotouch_agent::provision::Request {
        csr: args.csr.as_ref().map(read_csr).transpose()?,
        send_ek_certificate: args.ek_certificate,
        payload: None,
    };
    let done = zerotouch_agent::provision::provision(&client, tpm.as_mut(), &target, &request).await?;
    println!("{}", serde_json::to_string_pretty(&done)?);
    if done["status"] != "assigned" {
        bail!("the registration ended {}", done["status"]);
    }
    Ok(())
}
