//! A master key in a PKCS#11 token (issue #17): a non-extractable AES-256 key that never leaves the token, which
//! wraps and unwraps the data key there (CKM_AES_GCM), as the envelope format of `crates/envelope/src/lib.rs` says.
//!
//! The key is found by its label (CKA_LABEL) among the secret keys of the token with the given label, after a login
//! as the token's user. When the token has no key of that label it is generated there (CKM_AES_KEY_GEN, 32 bytes,
//! CKA_TOKEN, CKA_SENSITIVE, not CKA_EXTRACTABLE) with a random CKA_ID, which names it in the key id of the
//! envelopes it seals: another key of the same label has another id, so a start with it fails as the wrong key.
//! Tested with SoftHSM2 (`tests/tests/secrets.rs`).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use anyhow::{Context, bail};
use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::mechanism::Mechanism;
use cryptoki::mechanism::aead::GcmParams;
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, UserType};
use cryptoki::types::{AuthPin, Ulong};
use zeroize::Zeroizing;
use zerotouch_envelope::{Cipher, EnvelopeError, KeyId};

use crate::config::Pkcs11Settings;

/// An AES-256 key in a token, used through one logged-in session.
pub struct TokenKey {
    id: KeyId,
    key: ObjectHandle,
    /// A PKCS#11 session is not to be used by two threads at once.
    session: Mutex<Session>,
    /// Kept for as long as the session (finalized when dropped, after it).
    _context: Pkcs11,
}

impl std::fmt::Debug for TokenKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TokenKey({})", self.id)
    }
}

impl TokenKey {
    /// Opens the token of `settings`, logs in with the PIN of its file, and finds (or generates) the key.
    pub fn open(settings: &Pkcs11Settings) -> anyhow::Result<Self> {
        let module = settings.module.display();
        let context = context(&settings.module)?;
        let mut found = None;
        for slot in context.get_slots_with_token().context("listing the PKCS#11 slots")? {
            let info = context.get_token_info(slot).context("reading a PKCS#11 token's information")?;
            if info.label().trim_end() == settings.token {
                found = Some(slot);
                break;
            }
        }
        let Some(slot) = found else {
            bail!("--master-key-pkcs11-token: no token labelled {:?} in {module}", settings.token);
        };
        let pin =
            Zeroizing::new(std::fs::read_to_string(&settings.pin_file).with_context(|| {
                format!("--master-key-pkcs11-pin-file: cannot read {}", settings.pin_file.display())
            })?);
        let session = context.open_rw_session(slot).context("opening a PKCS#11 session")?;
        // A login holds for every session of the application on the token (a second key of it: already logged in).
        match session.login(UserType::User, Some(&AuthPin::from(pin.trim_end_matches(['\r', '\n']).to_owned()))) {
            Ok(()) | Err(cryptoki::error::Error::Pkcs11(cryptoki::error::RvError::UserAlreadyLoggedIn, _)) => {}
            Err(e) => {
                return Err(anyhow::Error::new(e).context(format!(
                    "--master-key-pkcs11-pin-file: the PIN of token {:?} is refused",
                    settings.token
                )));
            }
        }
        let template =
            [Attribute::Class(ObjectClass::SECRET_KEY), Attribute::Label(settings.label.as_bytes().to_vec())];
        let keys = session.find_objects(&template).context("searching the token for the master key")?;
        let key = match keys.as_slice() {
            [key] => *key,
            [] => generate(&session, &settings.label)?,
            _ => bail!(
                "--master-key-pkcs11-label: token {:?} has {} secret keys labelled {:?}; keep one",
                settings.token,
                keys.len(),
                settings.label
            ),
        };
        let object_id = session
            .get_attributes(key, &[AttributeType::Id])
            .context("reading the master key's CKA_ID")?
            .into_iter()
            .find_map(|a| match a {
                Attribute::Id(id) => Some(id),
                _ => None,
            })
            .unwrap_or_default();
        let mut name = format!("pkcs11\0{}\0{}\0", settings.token, settings.label).into_bytes();
        name.extend_from_slice(&object_id);
        Ok(Self { id: KeyId::of_key(&name), key, session: Mutex::new(session), _context: context })
    }

    fn run<T>(&self, what: &str, f: impl FnOnce(&Session) -> cryptoki::error::Result<T>) -> Result<T, EnvelopeError> {
        let session = self.session.lock().map_err(|_| EnvelopeError::Crypto(format!("{what}: session poisoned")))?;
        f(&session).map_err(|e| EnvelopeError::Crypto(format!("{what} in the PKCS#11 token: {e}")))
    }
}

/// The one initialized context of `module` in this process (PKCS#11 allows one `C_Initialize` per library until its
/// `C_Finalize`; `rotate-master-key` opens two keys of one token).
fn context(module: &Path) -> anyhow::Result<Pkcs11> {
    static CONTEXTS: OnceLock<Mutex<HashMap<PathBuf, Pkcs11>>> = OnceLock::new();
    let mut contexts = CONTEXTS
        .get_or_init(Default::default)
        .lock()
        .map_err(|_| anyhow::anyhow!("the PKCS#11 contexts are poisoned"))?;
    if let Some(context) = contexts.get(module) {
        return Ok(context.clone());
    }
    let context =
        Pkcs11::new(module).with_context(|| format!("--master-key-pkcs11-module: cannot load {}", module.display()))?;
    context
        .initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK))
        .with_context(|| format!("--master-key-pkcs11-module: {} does not initialize", module.display()))?;
    contexts.insert(module.to_owned(), context.clone());
    Ok(context)
}

/// Generates a non-extractable AES-256 key labelled `label` in the token, with a random CKA_ID.
fn generate(session: &Session, label: &str) -> anyhow::Result<ObjectHandle> {
    let id = KeyId::random().map_err(|e| anyhow::anyhow!("{e}"))?;
    let template = [
        Attribute::Class(ObjectClass::SECRET_KEY),
        Attribute::KeyType(KeyType::AES),
        Attribute::ValueLen(Ulong::from(32)),
        Attribute::Token(true),
        Attribute::Private(true),
        Attribute::Sensitive(true),
        Attribute::Extractable(false),
        Attribute::Encrypt(true),
        Attribute::Decrypt(true),
        Attribute::Label(label.as_bytes().to_vec()),
        Attribute::Id(id.0.to_vec()),
    ];
    let key = session
        .generate_key(&Mechanism::AesKeyGen, &template)
        .with_context(|| format!("generating the master key {label:?} in the token"))?;
    tracing::info!("generated the master key {label:?} (non-extractable AES-256) in the PKCS#11 token");
    Ok(key)
}

impl Cipher for TokenKey {
    fn key_id(&self) -> KeyId {
        self.id
    }

    fn encrypt(&self, nonce: &[u8; 12], aad: &[u8], plaintext: &[u8]) -> Result<Vec<u8>, EnvelopeError> {
        let mut iv = *nonce;
        let params = GcmParams::new(&mut iv, aad, Ulong::from(128))
            .map_err(|e| EnvelopeError::Crypto(format!("GCM parameters: {e}")))?;
        self.run("encrypting", |session| session.encrypt(&Mechanism::AesGcm(params), self.key, plaintext))
    }

    fn decrypt(&self, nonce: &[u8; 12], aad: &[u8], ciphertext: &[u8]) -> Result<Zeroizing<Vec<u8>>, EnvelopeError> {
        let mut iv = *nonce;
        let params = GcmParams::new(&mut iv, aad, Ulong::from(128))
            .map_err(|e| EnvelopeError::Crypto(format!("GCM parameters: {e}")))?;
        let session = self.session.lock().map_err(|_| EnvelopeError::Crypto("decrypting: session poisoned".into()))?;
        // A tag that does not verify is CKR_ENCRYPTED_DATA_INVALID (or _LEN_RANGE): the envelope does not open.
        session.decrypt(&Mechanism::AesGcm(params), self.key, ciphertext).map(Zeroizing::new).map_err(|e| match e {
            cryptoki::error::Error::Pkcs11(
                cryptoki::error::RvError::EncryptedDataInvalid | cryptoki::error::RvError::EncryptedDataLenRange,
                _,
            ) => EnvelopeError::Forged,
            e => EnvelopeError::Crypto(format!("decrypting in the PKCS#11 token: {e}")),
        })
    }
}
