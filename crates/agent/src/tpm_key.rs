//! An operational key that lives in the TPM (`identity.key_type = "tpm"`): ECDSA P-256, created under the SRK by
//! the TPM itself and kept at one of two persistent handles, so that the previous key stays until the new
//! certificate has worked. The CSR and the TLS handshakes (EST renewal, checks) are signed by the TPM.
//!
//! The TPM has one owner, a thread ([`TpmThread`]): swtpm and a TPM without resource manager take one client at a
//! time, and rustls signs from wherever the handshake runs. Everything else reaches the TPM by sending it a job.

use std::sync::Arc;
use std::sync::mpsc;

use anyhow::{Context, anyhow};

use crate::DeviceTpm;
use crate::signer::P256Signer;

/// The two persistent handles operational keys alternate between (next to the C SDK's 0x81000100).
pub const KEY_HANDLES: [u32; 2] = [0x8100_0101, 0x8100_0102];

type Job = Box<dyn FnOnce(&mut dyn DeviceTpm) + Send>;

/// What the TPM thread is asked.
enum Message {
    /// Run this job.
    Job(Job),
    /// Close the TPM and end, then say so.
    Close(mpsc::Sender<()>),
}

/// The thread that owns the TPM; cloning shares it.
#[derive(Debug, Clone)]
pub struct TpmThread {
    jobs: mpsc::Sender<Message>,
}

impl TpmThread {
    /// Starts the thread and opens the TPM there with `open`.
    pub fn spawn(open: impl FnOnce() -> anyhow::Result<Box<dyn DeviceTpm>> + Send + 'static) -> anyhow::Result<Self> {
        let (jobs, queue) = mpsc::channel::<Message>();
        let (ready, opened) = mpsc::channel::<anyhow::Result<()>>();
        std::thread::Builder::new().name("tpm".into()).spawn(move || {
            let mut tpm = match open() {
                Ok(tpm) => {
                    let _ = ready.send(Ok(()));
                    tpm
                }
                Err(e) => {
                    let _ = ready.send(Err(e));
                    return;
                }
            };
            let mut closed = None;
            while let Ok(message) = queue.recv() {
                match message {
                    Message::Job(job) => job(tpm.as_mut()),
                    Message::Close(done) => {
                        closed = Some(done);
                        break;
                    }
                }
            }
            drop(tpm);
            if let Some(done) = closed {
                let _ = done.send(());
            }
        })?;
        opened.recv().map_err(|_| anyhow!("the TPM thread ended"))??;
        Ok(Self { jobs })
    }

    /// Runs `job` on the TPM and waits for its result.
    pub fn call<R: Send + 'static>(
        &self,
        job: impl FnOnce(&mut dyn DeviceTpm) -> anyhow::Result<R> + Send + 'static,
    ) -> anyhow::Result<R> {
        let (reply, result) = mpsc::channel();
        self.jobs
            .send(Message::Job(Box::new(move |tpm| {
                let _ = reply.send(job(tpm));
            })))
            .map_err(|_| anyhow!("the TPM thread ended"))?;
        result.recv().map_err(|_| anyhow!("the TPM thread ended"))?
    }

    /// Closes the TPM (its context is finalized on its own thread) and waits until it is, so that the process does
    /// not exit while the TPM libraries are still finalizing: a context dropped on the TPM thread while `main`
    /// returned now and then ended the agent in "double free or corruption" (SIGABRT) on SIGTERM. Calls after this
    /// fail with "the TPM thread ended".
    pub fn close(&self) {
        let (done, closed) = mpsc::channel();
        if self.jobs.send(Message::Close(done)).is_ok() {
            let _ = closed.recv();
        }
    }
}

impl DeviceTpm for TpmThread {
    fn keys(&mut self) -> anyhow::Result<(Vec<u8>, Vec<u8>)> {
        self.call(|tpm| tpm.keys())
    }

    fn ek_certificate(&mut self) -> anyhow::Result<Option<Vec<u8>>> {
        self.call(|tpm| tpm.ek_certificate())
    }

    fn import_key(&mut self, blob: &[u8]) -> anyhow::Result<()> {
        let blob = blob.to_vec();
        self.call(move |tpm| tpm.import_key(&blob))
    }

    fn sign(&mut self, message: &[u8]) -> anyhow::Result<Vec<u8>> {
        let message = message.to_vec();
        self.call(move |tpm| tpm.sign(&message))
    }

    fn create_signing_key(&mut self, handle: u32) -> anyhow::Result<Vec<u8>> {
        self.call(move |tpm| tpm.create_signing_key(handle))
    }

    fn sign_digest(&mut self, handle: u32, digest: &[u8]) -> anyhow::Result<Vec<u8>> {
        let digest = digest.to_vec();
        self.call(move |tpm| tpm.sign_digest(handle, &digest))
    }
}

/// A key in the TPM at `handle`.
#[derive(Debug, Clone)]
pub struct TpmKey {
    thread: TpmThread,
    handle: u32,
    point: Vec<u8>,
}

impl TpmKey {
    /// Creates a new key at `handle` (replacing the one there).
    pub fn create(thread: &TpmThread, handle: u32) -> anyhow::Result<Self> {
        let point = thread.call(move |tpm| tpm.create_signing_key(handle))?;
        Ok(Self { thread: thread.clone(), handle, point })
    }

    /// The key already at `handle` (its public point is not needed to sign).
    pub fn existing(thread: &TpmThread, handle: u32) -> Self {
        Self { thread: thread.clone(), handle, point: Vec::new() }
    }

    /// The persistent handle.
    pub fn handle(&self) -> u32 {
        self.handle
    }

    /// ECDSA over SHA-256 of `message`, DER.
    fn sign_message(&self, message: &[u8]) -> anyhow::Result<Vec<u8>> {
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, message).as_ref().to_vec();
        let handle = self.handle;
        self.thread.call(move |tpm| tpm.sign_digest(handle, &digest))
    }

    /// The CSR for `registration_id` (CN), signed in the TPM.
    pub fn csr(&self, registration_id: &str) -> anyhow::Result<Vec<u8>> {
        let mut params = rcgen::CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params.distinguished_name.push(rcgen::DnType::CommonName, registration_id);
        Ok(params.serialize_request(self).context("cannot build the CSR in the TPM")?.der().to_vec())
    }

    /// The key as a TLS client key (the TPM signs the handshakes).
    pub fn tls_key(&self) -> Arc<dyn rustls::sign::SigningKey> {
        let key = self.clone();
        Arc::new(P256Signer::new(move |message| key.sign_message(message)))
    }
}

impl rcgen::PublicKeyData for TpmKey {
    fn der_bytes(&self) -> &[u8] {
        &self.point
    }

    fn algorithm(&self) -> &'static rcgen::SignatureAlgorithm {
        &rcgen::PKCS_ECDSA_P256_SHA256
    }
}

impl rcgen::SigningKey for TpmKey {
    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, rcgen::Error> {
        self.sign_message(message).map_err(|_| rcgen::Error::RemoteKeyError)
    }
}
