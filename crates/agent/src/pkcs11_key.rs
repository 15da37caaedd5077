//! A factory key in a PKCS#11 token (an HSM, a smart card, SoftHSM2): the onboarding certificate's private key
//! stays in the token, which signs the TLS handshake of the registration (ECDSA P-256, `CKM_ECDSA` over a SHA-256
//! digest). The key is the private key labelled `label` in the token labelled `token`, after a login with the PIN
//! of `pin_file`.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use anyhow::{Context, bail};
use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, UserType};
use cryptoki::types::AuthPin;
use serde::Deserialize;
use zeroize::Zeroizing;

use crate::signer::P256Signer;

/// `[attestation.pkcs11]`: where the factory key is.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenSettings {
    /// The PKCS#11 module (`/usr/lib/softhsm/libsofthsm2.so`).
    pub module: PathBuf,
    /// The token's label.
    pub token: String,
    /// The private key's label (CKA_LABEL).
    pub label: String,
    /// The file holding the user PIN.
    pub pin_file: PathBuf,
}

/// The key, used through one logged-in session.
pub struct TokenKey {
    key: ObjectHandle,
    /// A PKCS#11 session is not to be used by two threads at once.
    session: Mutex<Session>,
    /// Kept for as long as the session.
    _context: Pkcs11,
}

impl std::fmt::Debug for TokenKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenKey(..)")
    }
}

impl TokenKey {
    /// Opens the token, logs in and finds the key.
    pub fn open(settings: &TokenSettings) -> anyhow::Result<Arc<Self>> {
        let module = settings.module.display();
        let context = Pkcs11::new(&settings.module)
            .with_context(|| format!("attestation.pkcs11.module: cannot load {module}"))?;
        context
            .initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK))
            .with_context(|| format!("attestation.pkcs11.module: {module} does not initialize"))?;
        let mut found = None;
        for slot in context.get_slots_with_token().context("listing the PKCS#11 slots")? {
            if context.get_token_info(slot).context("reading a token's information")?.label().trim_end()
                == settings.token
            {
                found = Some(slot);
                break;
            }
        }
        let Some(slot) = found else {
            bail!("attestation.pkcs11.token: no token labelled {:?} in {module}", settings.token);
        };
        let pin =
            Zeroizing::new(std::fs::read_to_string(&settings.pin_file).with_context(|| {
                format!("attestation.pkcs11.pin_file: cannot read {}", settings.pin_file.display())
            })?);
        let session = context.open_ro_session(slot).context("opening a PKCS#11 session")?;
        session
            .login(UserType::User, Some(&AuthPin::from(pin.trim_end_matches(['\r', '\n']).to_owned())))
            .with_context(|| {
                format!("attestation.pkcs11.pin_file: the PIN of token {:?} is refused", settings.token)
            })?;
        let template =
            [Attribute::Class(ObjectClass::PRIVATE_KEY), Attribute::Label(settings.label.as_bytes().to_vec())];
        let keys = session.find_objects(&template).context("searching the token for the key")?;
        let [key] = keys.as_slice() else {
            bail!(
                "attestation.pkcs11.label: token {:?} has {} private keys labelled {:?}; it needs exactly one",
                settings.token,
                keys.len(),
                settings.label
            );
        };
        Ok(Arc::new(Self { key: *key, session: Mutex::new(session), _context: context }))
    }

    /// ECDSA over SHA-256 of `message`, DER.
    pub fn sign_message(&self, message: &[u8]) -> anyhow::Result<Vec<u8>> {
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, message);
        let session = self.session.lock().map_err(|_| anyhow::anyhow!("the PKCS#11 session is poisoned"))?;
        let raw = session.sign(&Mechanism::Ecdsa, self.key, digest.as_ref()).context("the token did not sign")?;
        if raw.len() != 64 {
            bail!("the token's key is not ECDSA P-256 (a {}-byte signature)", raw.len());
        }
        let (r, s) = raw.split_at(32);
        Ok(crate::ecdsa_der(r, s))
    }

    /// The key as a TLS client key.
    pub fn tls_key(self: &Arc<Self>) -> Arc<dyn rustls::sign::SigningKey> {
        let key = Arc::clone(self);
        Arc::new(P256Signer::new(move |message| key.sign_message(message)))
    }
}
