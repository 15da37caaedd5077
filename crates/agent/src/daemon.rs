//! `zerotouch-agent run`: the loop that provisions the device and keeps its identity. Every decision is
//! `crate::schedule`'s; this module only does what it says (requests, files, the hook) and records the outcome in
//! the state file.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use chrono::{DateTime, Utc};
use serde_json::json;
use zeroize::Zeroizing;

use crate::DeviceTpm;
use crate::config::Transport;
use crate::config::{Attestation, Config};
use crate::key::KeyType;
use crate::pkcs11_key::TokenKey;
use crate::provision::{self, Assigned, ServiceError, Target};
use crate::schedule::{self, Action, Facts, Held, Policy};
use crate::signer::{ClientKey, https_client, tls_config};
use crate::state::{Change, Dropped, HeldCertificate, IdentityDir, KEY_TPM, LastError, State};
use crate::tpm_key::{KEY_HANDLES, TpmKey, TpmThread};

/// The onboarding credential, read once at start-up.
enum Onboarding {
    /// The device's symmetric key (derived from the group's already).
    Key(Zeroizing<Vec<u8>>),
    /// The factory certificate chain and key, PEM, as a TLS identity.
    X509(Zeroizing<Vec<u8>>),
    /// The factory certificate chain (DER) and its key in a PKCS#11 token.
    X509Token(Vec<Vec<u8>>, Arc<TokenKey>),
    /// The TPM.
    Tpm(TpmThread),
}

/// A new operational key and its CSR.
enum Fresh {
    /// In a file.
    File(crate::key::NewKey),
    /// In the TPM, with its CSR.
    Tpm(TpmKey, Vec<u8>),
}

impl Fresh {
    fn csr(&self) -> &[u8] {
        match self {
            Self::File(key) => &key.csr_der,
            Self::Tpm(_, csr) => csr,
        }
    }
}

/// The agent: its configuration, its state, and the credential it starts over with.
pub struct Agent {
    config: Config,
    policy: Policy,
    state: State,
    identity: IdentityDir,
    trust_bundle: Vec<u8>,
    onboarding: Onboarding,
    registration_id: String,
}

impl std::fmt::Debug for Agent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Agent").field("registration_id", &self.registration_id).finish_non_exhaustive()
    }
}

fn unix(at: DateTime<Utc>) -> i64 {
    at.timestamp()
}

fn at(unix: i64) -> DateTime<Utc> {
    DateTime::from_timestamp(unix, 0).unwrap_or_default()
}

fn to_chrono(t: time::OffsetDateTime) -> DateTime<Utc> {
    at(t.unix_timestamp())
}

/// Reads a file that holds a secret.
fn read_secret(path: &PathBuf) -> anyhow::Result<Zeroizing<Vec<u8>>> {
    Ok(Zeroizing::new(std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?))
}

impl Agent {
    /// Reads the state, the trust bundle and the onboarding credential (`open_tpm` opens a TPM by its TCTI, on the
    /// thread that owns it).
    pub fn open(config: Config, open_tpm: fn(&str) -> anyhow::Result<Box<dyn DeviceTpm>>) -> anyhow::Result<Self> {
        let policy = config.policy()?;
        crate::state::private_dir(&config.state_dir)?;
        let mut state = State::load(&config.state_file())?;
        let trust_bundle = std::fs::read(&config.service.trust_bundle)
            .with_context(|| format!("cannot read service.trust_bundle {}", config.service.trust_bundle.display()))?;
        let (onboarding, registration_id) = match &config.attestation {
            Attestation::SymmetricKey { key_file, group } => {
                let id = config.service.registration_id.clone().context("service.registration_id is required")?;
                let text = read_secret(key_file)?;
                let key = Zeroizing::new(
                    STANDARD
                        .decode(String::from_utf8_lossy(&text).trim())
                        .with_context(|| format!("{} does not hold a base64 key", key_file.display()))?,
                );
                let key = if *group {
                    Zeroizing::new(zerotouch_attest::sas::derive_device_key(&key, &id).to_vec())
                } else {
                    key
                };
                (Onboarding::Key(key), id)
            }
            Attestation::X509 { cert_file, key_file, pkcs11 } => {
                let id = config.service.registration_id.clone().context("service.registration_id is required")?;
                match (key_file, pkcs11) {
                    (Some(key_file), _) => {
                        let mut pem = read_secret(cert_file)?;
                        pem.push(b'\n');
                        pem.extend_from_slice(&read_secret(key_file)?);
                        (Onboarding::X509(pem), id)
                    }
                    (None, Some(token)) => {
                        let text = std::fs::read_to_string(cert_file)
                            .with_context(|| format!("cannot read {}", cert_file.display()))?;
                        let chain = zerotouch_pki::certificates_from_pem(&text).map_err(anyhow::Error::msg)?;
                        (Onboarding::X509Token(chain, TokenKey::open(token)?), id)
                    }
                    (None, None) => anyhow::bail!("attestation: an x509 attestation needs key_file or pkcs11"),
                }
            }
            Attestation::Tpm { tcti } => {
                let tcti = tcti.clone();
                let mut tpm = TpmThread::spawn(move || open_tpm(&tcti))?;
                let id = match &config.service.registration_id {
                    Some(id) => id.clone(),
                    None => {
                        let (ek, _) = tpm.keys()?;
                        zerotouch_tpm::Public::parse(&ek)
                            .context("the TPM's endorsement key")?
                            .derived_registration_id()
                    }
                };
                (Onboarding::Tpm(tpm), id)
            }
        };
        let identity = IdentityDir::new(config.identity_dir());
        // A stop (SIGKILL, power cut) between a swap and the state's write leaves a pair the state does not name.
        let held = state.certificate.as_ref().map(|c| c.serial.as_str());
        if let Err(e) = identity.reconcile(held, state.previous.as_deref()) {
            tracing::warn!("{e:#}");
        }
        // The key is `key.pem`, or `key.tpm` naming a key in the TPM: the state says which.
        let pair_present = |held: &HeldCertificate| identity.cert_file().is_file() && held.key_file.is_file();
        if state.certificate.as_ref().is_some_and(|held| !pair_present(held)) {
            // The files are gone (restored from an old backup, wiped by hand): start over.
            tracing::warn!("the state names a certificate whose files are missing: provisioning again");
            state.certificate = None;
            state.previous = None;
            if let Err(e) = identity.clear_all() {
                tracing::warn!("{e:#}");
            }
        }
        Ok(Self { config, policy, state, identity, trust_bundle, onboarding, registration_id })
    }

    fn target(&self) -> Target {
        Target {
            url: self.config.service.url.clone(),
            id_scope: self.config.service.id_scope.clone(),
            registration_id: self.registration_id.clone(),
            api_version: self.config.service.api_version.clone(),
            deadline: self.config.service.timeout,
        }
    }

    /// Writes the state file. A failure (a full disk, a read-only `/var/lib`) is logged, not fatal: while the agent
    /// runs, the state in memory is the truth and the next save writes it whole. An agent that exited instead would
    /// stop renewing, and systemd would restart it into the same failure.
    fn save(&mut self) {
        if let Err(e) = self.state.save(&self.config.state_file()) {
            tracing::error!("cannot write the state file: {e:#}");
        }
    }

    fn facts(&self, now: i64) -> Facts {
        let held = self
            .state
            .certificate
            .as_ref()
            .map(|c| Held { obtained_at: unix(c.obtained_at), not_after: unix(c.not_after) });
        Facts {
            now,
            held,
            renew_at: self.state.next_renewal.map_or(0, unix),
            check_at: self.state.next_check.map_or(0, unix),
            retry_at: self.state.retry_at.map_or(0, unix),
            reprovision_requested: self.config.reprovision_request().exists(),
        }
    }

    /// Runs until `shutdown` completes. Shutdown also interrupts a request or a hook under way: every step that
    /// changes files saves the state before its next wait, a swap is one rename, and a hook that was interrupted
    /// is still pending in the state file, so the next start carries on where this one stopped.
    pub async fn run(mut self, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
        tokio::pin!(shutdown);
        self.state.registration_id = Some(self.registration_id.clone());
        self.save();
        tracing::info!(registration_id = %self.registration_id, "zerotouch-agent started");
        loop {
            let now = Utc::now().timestamp();
            let facts = self.facts(now);
            // A hook that failed is run again (after its backoff) before anything else.
            if self.state.hook_pending.is_some() && now >= facts.retry_at {
                let delivered = tokio::select! {
                    delivered = self.deliver_hook() => Some(delivered),
                    () = &mut shutdown => None,
                };
                match delivered {
                    None => {
                        self.stop();
                        return Ok(());
                    }
                    // After `dropped` the device still has no identity: the provisioning backoff stays.
                    Some(Ok(())) if self.state.certificate.is_some() => self.succeeded(),
                    Some(Ok(())) => {}
                    Some(Err(e)) => {
                        self.failed(Action::WaitUntil(now), schedule::Failure::Local, "hook", &e);
                    }
                }
                self.save();
                continue;
            }
            let action = schedule::next_action(&self.policy, &facts);
            if let Action::WaitUntil(until) = action {
                // Wake at least every second: `zerotouch-agent reprovision` leaves a file.
                let wait = if until - now > 1 { Duration::from_secs(1) } else { Duration::from_millis(250) };
                tokio::select! {
                    () = tokio::time::sleep(wait) => {}
                    () = &mut shutdown => {
                        self.stop();
                        return Ok(());
                    }
                }
                continue;
            }
            let outcome = tokio::select! {
                outcome = self.act(action) => Some(outcome),
                () = &mut shutdown => None,
            };
            let Some(outcome) = outcome else {
                self.stop();
                return Ok(());
            };
            self.state.requests += 1;
            match outcome {
                Ok(()) => self.succeeded(),
                Err(e) => {
                    let name = match action {
                        Action::Provision => "provision",
                        Action::Renew => "renew",
                        Action::Check | Action::WaitUntil(_) => "check",
                    };
                    let failure = e.failure();
                    let error = anyhow::Error::from(e);
                    if self.failed(action, failure, name, &error) {
                        let reason = match failure {
                            schedule::Failure::NotAssigned => format!("the registration is not assigned: {error:#}"),
                            _ => format!("the service refused the certificate: {error:#}"),
                        };
                        self.drop_identity(name, reason).await;
                    }
                }
            }
            self.save();
        }
    }

    /// Carries out `action` (not a wait).
    async fn act(&mut self, action: Action) -> Result<(), ServiceError> {
        match action {
            Action::Provision => {
                let _ = std::fs::remove_file(self.config.reprovision_request());
                self.provision().await
            }
            Action::Renew => self.renew().await,
            Action::Check => self.check().await,
            Action::WaitUntil(_) => Ok(()),
        }
    }

    /// Saves the state on the way out.
    fn stop(&mut self) {
        tracing::info!("zerotouch-agent stopping");
        self.save();
        if let Onboarding::Tpm(tpm) = &self.onboarding {
            tpm.close();
        }
    }

    fn succeeded(&mut self) {
        self.state.failures = 0;
        self.state.retry_at = None;
        self.state.status = "assigned".into();
    }

    /// Records a failure and what the schedule makes of it; true when the identity must be dropped.
    fn failed(&mut self, action: Action, failure: schedule::Failure, name: &str, error: &anyhow::Error) -> bool {
        self.state.failures = self.state.failures.saturating_add(1);
        let recovery =
            schedule::after_failure(&self.policy, action, failure, self.state.failures, rand::random::<f64>());
        tracing::warn!(action = name, failures = self.state.failures, retry_in = ?recovery.wait, "{error:#}");
        let now = Utc::now();
        self.state.last_error = Some(LastError { at: now, action: name.into(), message: format!("{error:#}") });
        self.state.retry_at = Some(now + chrono::Duration::from_std(recovery.wait).unwrap_or_default());
        if recovery.drop_identity {
            self.state.status = match failure {
                schedule::Failure::NotAssigned => "disabled".into(),
                _ => "refused".into(),
            };
        }
        recovery.drop_identity && self.state.certificate.is_some()
    }

    /// Stops using the identity: removes every pair, records which and why (`lastDropped` in `status`) and tells
    /// the hook (`ZEROTOUCH_EVENT=dropped`, no files).
    async fn drop_identity(&mut self, action: &str, reason: String) {
        tracing::warn!(action, "dropping the operational certificate: {reason}");
        if let Some(held) = self.state.certificate.take() {
            self.state.last_dropped = Some(Dropped {
                at: Utc::now(),
                serial: held.serial,
                sha256: held.sha256,
                action: action.into(),
                reason,
            });
        }
        self.state.next_renewal = None;
        self.state.next_check = None;
        self.state.previous = None;
        self.state.hub = None;
        self.state.device_id = None;
        if let Err(e) = self.identity.clear_all() {
            tracing::warn!("{e:#}");
        }
        self.state.last_change = Some(Change { at: Utc::now(), event: "dropped".into() });
        self.state.hook_pending = Some("dropped".into());
        if let Err(e) = self.deliver_hook().await {
            tracing::warn!("the hook failed on dropped: {e:#}");
        }
    }

    /// A new operational key where `identity.key_type` says, and its CSR. A TPM key takes the handle the current
    /// key does not use, so that the current pair keeps working until the new one has.
    fn fresh_key(&self) -> anyhow::Result<Fresh> {
        match (self.config.identity.key_type, &self.onboarding) {
            (KeyType::Tpm, Onboarding::Tpm(tpm)) => {
                let current = self.state.certificate.as_ref().and_then(|c| c.key_handle.as_deref());
                let handle = KEY_HANDLES
                    .into_iter()
                    .find(|h| Some(format!("0x{h:08x}").as_str()) != current)
                    .unwrap_or(KEY_HANDLES[0]);
                let key = TpmKey::create(tpm, handle)?;
                let csr = key.csr(&self.registration_id)?;
                Ok(Fresh::Tpm(key, csr))
            }
            (KeyType::Tpm, _) => anyhow::bail!("identity.key_type \"tpm\" needs attestation.method \"tpm\""),
            (key_type, _) => Ok(Fresh::File(crate::key::generate(key_type, &self.registration_id)?)),
        }
    }

    /// Registers with the onboarding credential and a new key.
    async fn provision(&mut self) -> Result<(), ServiceError> {
        let key = self.fresh_key()?;
        let target = self.target();
        tracing::info!(registration_id = %self.registration_id, "provisioning with the onboarding credential");
        let body = json!({"registrationId": self.registration_id, "csr": STANDARD.encode(key.csr())});
        let done = match &self.onboarding {
            Onboarding::Key(device_key) => {
                let token = provision::symmetric_key_token(device_key, &target)?;
                self.register(&ClientKey::None, &body, Some(&token)).await?
            }
            Onboarding::X509(pem) => self.register(&ClientKey::Pem(pem.clone()), &body, None).await?,
            Onboarding::X509Token(chain, key) => {
                self.register(&ClientKey::Remote(chain.clone(), key.tls_key()), &body, None).await?
            }
            Onboarding::Tpm(tpm) => {
                let request = provision::Request { csr: Some(key.csr().to_vec()), ..provision::Request::default() };
                let mut tpm = tpm.clone();
                let client = https_client(&self.trust_bundle, &ClientKey::None)?;
                provision::provision(&client, &mut tpm, &target, &request).await?
            }
        };
        let assigned = provision::assigned(&done)?;
        let leaf = assigned.chain.first().cloned().context("the registration issued no certificate")?;
        self.install(&leaf, &key, Some(&assigned), "provisioned").await
    }

    /// Registers with `body` over the configured transport, presenting `key` in the TLS handshake and `token`
    /// (a SAS token) when given.
    async fn register(
        &self,
        key: &ClientKey,
        body: &serde_json::Value,
        token: Option<&str>,
    ) -> Result<serde_json::Value, ServiceError> {
        let target = self.target();
        match (&self.config.service.transport, &self.config.service.mqtt_address) {
            (Transport::Mqtt, Some(address)) => {
                crate::mqtt::register(address, tls_config(&self.trust_bundle, key)?, &target, body, token).await
            }
            _ => provision::register(&https_client(&self.trust_bundle, key)?, &target, body, token).await,
        }
    }

    /// The current pair as a TLS identity (its key in a file, or in the TPM).
    fn current_key(&self) -> anyhow::Result<ClientKey> {
        let handle = self.state.certificate.as_ref().and_then(|c| c.key_handle.as_deref());
        match (handle, &self.onboarding) {
            (Some(handle), Onboarding::Tpm(tpm)) => {
                let handle = u32::from_str_radix(handle.trim_start_matches("0x"), 16).context("the key handle")?;
                let pem = std::fs::read_to_string(self.identity.cert_file()).context("the current certificate")?;
                let chain = zerotouch_pki::certificates_from_pem(&pem).map_err(anyhow::Error::msg)?;
                Ok(ClientKey::Remote(chain, TpmKey::existing(tpm, handle).tls_key()))
            }
            _ => {
                let mut pem = read_secret(&self.identity.cert_file())?;
                pem.push(b'\n');
                pem.extend_from_slice(&read_secret(&self.identity.key_file())?);
                Ok(ClientKey::Pem(pem))
            }
        }
    }

    /// Renews by EST with the current certificate and a new key.
    async fn renew(&mut self) -> Result<(), ServiceError> {
        let client = https_client(&self.trust_bundle, &self.current_key()?)?;
        let key = self.fresh_key()?;
        tracing::info!("renewing by EST");
        let leaf = crate::est::simplereenroll(&client, &self.config.service.url, key.csr()).await?;
        self.install(&leaf, &key, None, "renewed").await
    }

    /// Registers again with the current certificate: follows a move, notices a revocation.
    async fn check(&mut self) -> Result<(), ServiceError> {
        let body = json!({"registrationId": self.registration_id});
        let done = self.register(&self.current_key()?, &body, None).await?;
        let assigned = provision::assigned(&done)?;
        self.state.next_check =
            Some(Utc::now() + chrono::Duration::from_std(self.policy.check_interval).unwrap_or_default());
        if self.state.hub.as_deref() != Some(assigned.hub.as_str())
            || self.state.device_id.as_deref() != Some(assigned.device_id.as_str())
        {
            tracing::info!(hub = %assigned.hub, "the device was moved");
            self.state.hub = Some(assigned.hub);
            self.state.device_id = Some(assigned.device_id);
            self.state.last_change = Some(Change { at: Utc::now(), event: "moved".into() });
            self.state.hook_pending = Some("moved".into());
            self.save();
            self.deliver_hook().await?;
        }
        Ok(())
    }

    /// Installs a new pair, makes it current, runs the hook, and drops the previous pair once the hook took the
    /// new one.
    async fn install(
        &mut self,
        leaf: &[u8],
        key: &Fresh,
        assigned: Option<&Assigned>,
        event: &str,
    ) -> Result<(), ServiceError> {
        let details = zerotouch_pki::details(leaf).map_err(|e| anyhow::anyhow!("the issued certificate: {e}"))?;
        let now = Utc::now();
        let not_after = to_chrono(details.not_after);
        if schedule::expired_on_arrival(unix(now), unix(not_after)) {
            // Installing it would make the next decision a provisioning, at once and forever: a hot loop.
            return Err(ServiceError::Local(anyhow::anyhow!(
                "the new certificate ends at {not_after}, before this device's clock ({now}): the clock is wrong"
            )));
        }
        let serial = details.serial_hex.to_ascii_lowercase();
        let cert_pem = zerotouch_pki::certificate_pem(leaf);
        let (key_file, key_handle) = match key {
            Fresh::File(key) => {
                self.identity.install(&serial, &cert_pem, &key.pem)?;
                (self.identity.key_file(), None)
            }
            Fresh::Tpm(key, _) => {
                let handle = format!("0x{:08x}", key.handle());
                self.identity.install_with(&serial, &cert_pem, KEY_TPM, &format!("handle:{handle}\n"))?;
                (self.identity.current(KEY_TPM), Some(handle))
            }
        };
        let previous = self.state.certificate.take().map(|c| c.serial).filter(|s| *s != serial);
        if let Some(older) = self.state.previous.take().filter(|p| Some(p) != previous.as_ref()) {
            let _ = self.identity.remove(&older);
        }
        self.state.previous = previous;
        let held = HeldCertificate {
            serial,
            sha256: details.sha256_hex,
            not_before: to_chrono(details.not_before),
            not_after,
            obtained_at: now,
            cert_file: self.identity.cert_file(),
            key_file,
            key_handle,
        };
        let renew_at = schedule::renewal_time(
            &self.policy,
            Held { obtained_at: unix(now), not_after: unix(held.not_after) },
            rand::random::<f64>(),
        );
        tracing::info!(serial = %held.serial, not_after = %held.not_after, next_renewal = %at(renew_at), "{event}");
        self.state.next_renewal = Some(at(renew_at));
        self.state.next_check = Some(now + chrono::Duration::from_std(self.policy.check_interval).unwrap_or_default());
        self.state.certificate = Some(held);
        let mut event = event.to_owned();
        if let Some(assigned) = assigned {
            if self.state.hub.as_ref().is_some_and(|h| *h != assigned.hub) {
                event = "moved".into();
            }
            self.state.hub = Some(assigned.hub.clone());
            self.state.device_id = Some(assigned.device_id.clone());
        }
        self.state.status = "assigned".into();
        self.state.last_change = Some(Change { at: now, event: event.clone() });
        self.state.hook_pending = Some(event);
        self.save();
        self.deliver_hook().await?;
        Ok(())
    }

    /// Runs the hook for the pending event; once it succeeded, the previous pair is removed.
    async fn deliver_hook(&mut self) -> anyhow::Result<()> {
        let Some(event) = self.state.hook_pending.clone() else { return Ok(()) };
        if let Some((program, args)) = self.config.hook.command.split_first() {
            let mut command = tokio::process::Command::new(program);
            command.args(args).env("ZEROTOUCH_EVENT", &event).env("ZEROTOUCH_REGISTRATION_ID", &self.registration_id);
            command.env("ZEROTOUCH_TRUST_BUNDLE", &self.config.service.trust_bundle);
            if let Some(held) = &self.state.certificate {
                command.env("ZEROTOUCH_CERT_FILE", &held.cert_file).env("ZEROTOUCH_KEY_FILE", &held.key_file);
                command.env("ZEROTOUCH_CERT_SHA256", &held.sha256);
                if let Some(handle) = &held.key_handle {
                    command.env("ZEROTOUCH_KEY_HANDLE", handle);
                }
            }
            if let (Some(hub), Some(device_id)) = (&self.state.hub, &self.state.device_id) {
                command.env("ZEROTOUCH_HUB", hub).env("ZEROTOUCH_DEVICE_ID", device_id);
            }
            command.stdin(std::process::Stdio::null()).kill_on_drop(true).process_group(0);
            let mut child = command.spawn().with_context(|| format!("cannot run the hook {program}"))?;
            let mut group = HookGroup(child.id());
            let status = tokio::time::timeout(self.config.hook.timeout, child.wait())
                .await
                .with_context(|| format!("the hook did not finish within {:?}", self.config.hook.timeout))?
                .with_context(|| format!("cannot run the hook {program}"))?;
            // It ended by itself: what it left running in the background is the application's.
            group.0 = None;
            if !status.success() {
                anyhow::bail!("the hook {program} ({event}) exited with {status}");
            }
        }
        self.state.hook_pending = None;
        if let Some(previous) = self.state.previous.take() {
            self.identity.remove(&previous)?;
        }
        Ok(())
    }
}

/// The process group of a running hook (its leader's pid), killed whole when the hook outlasts its timeout or the
/// agent stops while it runs: `kill_on_drop` alone would leave what the hook started (a `sleep`, a stuck
/// `systemctl`) behind.
struct HookGroup(Option<u32>);

impl Drop for HookGroup {
    fn drop(&mut self) {
        if let Some(pid) = self.0.and_then(|pid| i32::try_from(pid).ok()) {
            let _ = nix::sys::signal::killpg(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
        }
    }
}
