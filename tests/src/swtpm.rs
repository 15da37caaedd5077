//! A real TPM for tests: a `swtpm` process on free loopback ports, optionally manufactured by `swtpm_setup` with an
//! EK certificate from a local CA of its own, and the device side of TPM attestation done with tpm2-tools (an
//! implementation independent of ours).
//!
//! swtpm has no resource manager: every tpm2-tools call here flushes the transient objects and sessions it made.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;

/// The persistent handle of the EK (TCG and every DPS SDK).
pub const EK_HANDLE: &str = "0x81010001";
/// The persistent handle of the SRK.
pub const SRK_HANDLE: &str = "0x81000001";
/// The NV index of the RSA EK certificate.
pub const EK_CERTIFICATE_INDEX: &str = "0x1c00002";

/// A running swtpm, stopped (and its state removed) on drop.
#[derive(Debug)]
pub struct Swtpm {
    child: Child,
    /// The TPM command port.
    pub port: u16,
    /// The directory of its state, its local CA (if manufactured) and the files of tpm2-tools calls.
    pub dir: PathBuf,
    _temp: tempfile::TempDir,
}

/// Two free consecutive loopback ports: swtpm's command port and, one above it, its control port (where the
/// `swtpm:` TCTI looks for it).
fn free_ports() -> anyhow::Result<(u16, u16)> {
    for _ in 0..100 {
        let a = TcpListener::bind("127.0.0.1:0")?;
        let port = a.local_addr()?.port();
        if let Some(next) = port.checked_add(1)
            && TcpListener::bind(("127.0.0.1", next)).is_ok()
        {
            return Ok((port, next));
        }
    }
    bail!("no two consecutive free ports on 127.0.0.1")
}

fn run(command: &mut Command) -> anyhow::Result<Vec<u8>> {
    let output = command.stdin(Stdio::null()).output().with_context(|| format!("cannot run {command:?}"))?;
    if !output.status.success() {
        bail!(
            "{command:?} failed ({}): {}{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(output.stdout)
}

impl Swtpm {
    /// A fresh, empty TPM (no EK or SRK yet).
    pub fn start() -> anyhow::Result<Self> {
        let temp = tempfile::tempdir()?;
        let dir = temp.path().to_owned();
        std::fs::create_dir_all(dir.join("state"))?;
        Self::spawn(temp, dir)
    }

    /// A TPM manufactured by `swtpm_setup --create-ek-cert`: an RSA EK persisted at [`EK_HANDLE`] with its
    /// certificate in NV, signed by a local CA created for this TPM alone (`ca/issuercert.pem`, under
    /// `ca/swtpm-localca-rootca-cert.pem`). `ca_dir` shares a CA between TPMs (a "manufacturer"); `None` makes one.
    pub fn manufactured(ca_dir: Option<&Path>) -> anyhow::Result<Self> {
        let temp = tempfile::tempdir()?;
        let dir = temp.path().to_owned();
        let ca = ca_dir.map(Path::to_owned).unwrap_or_else(|| dir.join("ca"));
        std::fs::create_dir_all(&ca)?;
        std::fs::create_dir_all(dir.join("state"))?;
        std::fs::write(
            dir.join("swtpm-localca.conf"),
            format!(
                "statedir = {ca}\nsigningkey = {ca}/signkey.pem\nissuercert = {ca}/issuercert.pem\ncertserial = {ca}/certserial\n",
                ca = ca.display()
            ),
        )?;
        std::fs::write(dir.join("swtpm-localca.options"), "--platform-manufacturer zerotouch\n")?;
        std::fs::write(
            dir.join("swtpm_setup.conf"),
            format!(
                "create_certs_tool = /usr/bin/swtpm_localca\ncreate_certs_tool_config = {d}/swtpm-localca.conf\n\
                 create_certs_tool_options = {d}/swtpm-localca.options\nactive_pcr_banks = sha256\n",
                d = dir.display()
            ),
        )?;
        run(Command::new("swtpm_setup")
            .args(["--tpm2", "--create-ek-cert", "--overwrite", "--config"])
            .arg(dir.join("swtpm_setup.conf"))
            .arg("--tpmstate")
            .arg(dir.join("state")))?;
        Self::spawn(temp, dir)
    }

    fn spawn(temp: tempfile::TempDir, dir: PathBuf) -> anyhow::Result<Self> {
        // Ports are picked free and released just before swtpm binds them; a lost race shows as a failed start,
        // which is retried with new ports.
        for _ in 0..5 {
            let (port, ctrl) = free_ports()?;
            let child = Command::new("swtpm")
                .args(["socket", "--tpm2", "--flags", "not-need-init,startup-clear", "--tpmstate"])
                .arg(format!("dir={}", dir.join("state").display()))
                .arg("--server")
                .arg(format!("type=tcp,port={port},bindaddr=127.0.0.1"))
                .arg("--ctrl")
                .arg(format!("type=tcp,port={ctrl},bindaddr=127.0.0.1"))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(dir.join("swtpm.log"))?)
                .spawn()
                .context("cannot start swtpm (apt-get install swtpm swtpm-tools tpm2-tools)")?;
            let mut tpm = Self { child, port, dir: dir.clone(), _temp: tempfile::tempdir()? };
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                if tpm.child.try_wait()?.is_some() {
                    break;
                }
                if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                    tpm._temp = temp;
                    return Ok(tpm);
                }
                if Instant::now() > deadline {
                    bail!("swtpm did not listen on {port} within 10 s");
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        bail!("swtpm did not start: {}", std::fs::read_to_string(dir.join("swtpm.log")).unwrap_or_default())
    }

    /// The TCTI string of this TPM (tpm2-tools, tss-esapi).
    pub fn tcti(&self) -> String {
        format!("swtpm:host=127.0.0.1,port={}", self.port)
    }

    /// A path in this TPM's directory.
    pub fn file(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// Runs a tpm2-tools command against this TPM.
    pub fn tool(&self, name: &str, args: &[&str]) -> anyhow::Result<Vec<u8>> {
        run(Command::new(name).args(args).env("TPM2TOOLS_TCTI", self.tcti()).current_dir(&self.dir))
    }

    /// Whether a persistent handle is in use.
    pub fn has_persistent(&self, handle: &str) -> anyhow::Result<bool> {
        let listing = String::from_utf8(self.tool("tpm2_getcap", &["handles-persistent"])?)?;
        Ok(listing.to_ascii_lowercase().contains(&handle.to_ascii_lowercase()))
    }

    /// Creates the EK (standard RSA template, as `tpm2_createek`) and the SRK (RSA-2048 storage primary) if missing,
    /// persists them at [`EK_HANDLE`] and [`SRK_HANDLE`], and returns their `TPM2B_PUBLIC`s in base64.
    pub fn provision_keys(&self) -> anyhow::Result<(String, String)> {
        if !self.has_persistent(EK_HANDLE)? {
            self.tool("tpm2_createek", &["-c", EK_HANDLE, "-G", "rsa", "-u", "ek.created.pub"])?;
        }
        if !self.has_persistent(SRK_HANDLE)? {
            self.tool(
                "tpm2_createprimary",
                &[
                    "-C",
                    "o",
                    "-g",
                    "sha256",
                    "-G",
                    "rsa2048:null:aes128cfb",
                    "-a",
                    "restricted|decrypt|fixedtpm|fixedparent|sensitivedataorigin|userwithauth|noda",
                    "-c",
                    "srk.ctx",
                ],
            )?;
            self.tool("tpm2_evictcontrol", &["-C", "o", "-c", "srk.ctx", SRK_HANDLE])?;
            self.tool("tpm2_flushcontext", &["-t"])?;
        }
        Ok((self.public_base64(EK_HANDLE)?, self.public_base64(SRK_HANDLE)?))
    }

    /// The `TPM2B_PUBLIC` of a loaded object, base64.
    pub fn public_base64(&self, handle: &str) -> anyhow::Result<String> {
        let file = format!("public-{handle}.bin");
        self.tool("tpm2_readpublic", &["-c", handle, "-o", &file])?;
        Ok(STANDARD.encode(std::fs::read(self.file(&file))?))
    }

    /// The EK certificate from NV (DER), as `swtpm_setup --create-ek-cert` wrote it.
    pub fn ek_certificate(&self) -> anyhow::Result<Vec<u8>> {
        self.tool("tpm2_nvread", &[EK_CERTIFICATE_INDEX, "-o", "ek-cert.der"])?;
        // The NV index may be larger than the certificate: keep the DER SEQUENCE only.
        let bytes = std::fs::read(self.file("ek-cert.der"))?;
        let len = match bytes.get(..4) {
            Some([0x30, 0x82, hi, lo]) => 4 + (usize::from(*hi) << 8 | usize::from(*lo)),
            _ => bail!("the EK certificate in NV is not a DER SEQUENCE"),
        };
        Ok(bytes.get(..len).context("the EK certificate in NV is cut short")?.to_vec())
    }

    /// The device side of an activation blob (`docs/protocol/device-api.md` §3.3), with tpm2-tools only:
    /// ActivateCredential (EK under a PolicySecret(endorsement) session), Import and Load under the SRK. Returns
    /// the context file of the loaded HMAC key (a transient object: [`Swtpm::hmac`] flushes it).
    pub fn activate(&self, blob: &[u8]) -> anyhow::Result<String> {
        let mut fields = Vec::new();
        let mut rest = blob;
        while rest.len() >= 2 {
            let len = 2 + (usize::from(rest[0]) << 8 | usize::from(rest[1]));
            let (field, tail) = rest.split_at(len.min(rest.len()));
            fields.push(field.to_vec());
            rest = tail;
        }
        if fields.len() < 5 {
            bail!("the blob has {} fields; an activation blob has 6", fields.len());
        }
        let mut credential = vec![0xBA, 0xDC, 0xC0, 0xDE, 0, 0, 0, 1];
        credential.extend_from_slice(&fields[0]);
        credential.extend_from_slice(&fields[1]);
        std::fs::write(self.file("credential.bin"), credential)?;
        std::fs::write(self.file("duplicate.bin"), &fields[2])?;
        std::fs::write(self.file("seed.bin"), &fields[3])?;
        std::fs::write(self.file("idkey.pub"), &fields[4])?;
        self.tool("tpm2_startauthsession", &["--policy-session", "-S", "session.ctx"])?;
        let activated = self.tool("tpm2_policysecret", &["-S", "session.ctx", "-c", "e"]).and_then(|_| {
            self.tool(
                "tpm2_activatecredential",
                &[
                    "-c",
                    SRK_HANDLE,
                    "-C",
                    EK_HANDLE,
                    "-i",
                    "credential.bin",
                    "-o",
                    "inner.key",
                    "-P",
                    "session:session.ctx",
                ],
            )
        });
        self.tool("tpm2_flushcontext", &["session.ctx"])?;
        activated?;
        self.tool(
            "tpm2_import",
            &[
                "-C",
                SRK_HANDLE,
                "-u",
                "idkey.pub",
                "-i",
                "duplicate.bin",
                "-s",
                "seed.bin",
                "-k",
                "inner.key",
                "-r",
                "idkey.priv",
            ],
        )?;
        self.tool("tpm2_load", &["-C", SRK_HANDLE, "-u", "idkey.pub", "-r", "idkey.priv", "-c", "idkey.ctx"])?;
        Ok("idkey.ctx".into())
    }

    /// TPM2_HMAC(SHA-256) of `message` with a loaded key, then flushes every transient object.
    pub fn hmac(&self, key_context: &str, message: &[u8]) -> anyhow::Result<Vec<u8>> {
        std::fs::write(self.file("message.bin"), message)?;
        let mac = self.tool("tpm2_hmac", &["-c", key_context, "-g", "sha256", "-o", "mac.bin", "message.bin"]);
        self.tool("tpm2_flushcontext", &["-t"])?;
        mac?;
        Ok(std::fs::read(self.file("mac.bin"))?)
    }
}

impl Drop for Swtpm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
