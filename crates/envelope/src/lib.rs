//! Secrets at rest for zerotouch: AES-256-GCM envelopes bound to the row and column they are stored in, under a
//! random data key that a master key wraps (pure: no I/O; the master key may live in a token behind [`Cipher`]).
//!
//! The scheme (issue #17, `docs/security.md` "Secrets at rest"):
//! - Every secret the database holds (enrollment keys, hub passwords and webhook secrets, TPM challenge keys, TPM
//!   hub keys in hub jobs, issuing CA keys) is sealed under one **data key**: [`DataKey::seal`].
//! - The data key is random, and stored **wrapped** by the **master key** ([`DataKey::wrap`]), in the database, so
//!   every replica reads the same data key once it has the master key. Rotating the master key re-wraps this one
//!   value; running replicas hold the data key and never notice.
//! - The master key is a [`Cipher`]: an AES-256 key in this process ([`AesKey`], from a file or the environment)
//!   or one in a PKCS#11 token that never leaves it (implemented by the server).
//!
//! An envelope is text (it lives in text and JSON columns): [`PREFIX`] then base64url (no padding) of
//! `version (1 byte) | key id (8 bytes) | nonce (12 bytes) | ciphertext and tag (16 bytes)`. The associated data
//! is the version, the key id and the [`Binding`] (table, column, record key, each length-prefixed), so a
//! ciphertext copied to another row or column, or a header edited, fails to open ([`EnvelopeError::Forged`]), and
//! an envelope of another key says so by its key id ([`EnvelopeError::WrongKey`]) before anything is tried.
//! Nonces are random: AES-GCM's bound of 2^32 messages per key under random nonces is far above the number of
//! secrets one install writes.
#![forbid(unsafe_code, unused_must_use)]
#![deny(missing_docs, unreachable_pub)]

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use aws_lc_rs::digest;
use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use zeroize::Zeroizing;

/// The first characters of every sealed value: tells an envelope from a secret stored in clear by older versions.
pub const PREFIX: &str = "zt-sealed:";
/// The envelope format this crate writes (and the only one it reads).
pub const VERSION: u8 = 1;
/// Length of an AES-256 key.
pub const KEY_LEN: usize = 32;
/// Length of a key id.
pub const KEY_ID_LEN: usize = 8;
const TAG_LEN: usize = 16;
const HEADER_LEN: usize = 1 + KEY_ID_LEN + NONCE_LEN;

/// Why a value cannot be sealed or opened.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnvelopeError {
    /// The value does not start with [`PREFIX`]: it is not an envelope (a secret stored in clear).
    #[error("the value is not sealed")]
    NotSealed,
    /// The value starts like an envelope but is not one (bad base64, too short).
    #[error("the sealed value is malformed")]
    Malformed,
    /// The envelope is of a format this version does not know.
    #[error("the sealed value has format version {0}, this version reads {VERSION}")]
    UnknownVersion(u8),
    /// The envelope was sealed under another key.
    #[error("the value was sealed under key {found}, not under key {expected}")]
    WrongKey {
        /// The id of the key tried.
        expected: KeyId,
        /// The id the envelope names.
        found: KeyId,
    },
    /// Authentication failed: the envelope was moved to another row or column, or altered, or the key is wrong.
    #[error("the sealed value does not belong here or was altered (authentication failed)")]
    Forged,
    /// A key is not 32 bytes, or is not base64 of 32 bytes; what.
    #[error("{0}")]
    BadKey(String),
    /// The cryptographic library or the token failed; what.
    #[error("sealing failed: {0}")]
    Crypto(String),
}

/// Which key sealed an envelope: 8 bytes, shown as hex.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct KeyId(pub [u8; KEY_ID_LEN]);

impl KeyId {
    /// A fresh random id.
    pub fn random() -> Result<Self, EnvelopeError> {
        let mut id = [0u8; KEY_ID_LEN];
        SystemRandom::new().fill(&mut id).map_err(|_| EnvelopeError::Crypto("no randomness".into()))?;
        Ok(Self(id))
    }

    /// The id of a key in this process: the first 8 bytes of SHA-256 over a label and the key (it names the key
    /// without revealing it).
    pub fn of_key(key: &[u8]) -> Self {
        let mut context = digest::Context::new(&digest::SHA256);
        context.update(b"zerotouch key id\0");
        context.update(key);
        let hash = context.finish();
        let mut id = [0u8; KEY_ID_LEN];
        id.copy_from_slice(&hash.as_ref()[..KEY_ID_LEN]);
        Self(id)
    }

    /// Parses the hex form.
    pub fn from_hex(text: &str) -> Option<Self> {
        let bytes = text.as_bytes();
        if bytes.len() != KEY_ID_LEN * 2 {
            return None;
        }
        let mut id = [0u8; KEY_ID_LEN];
        for (i, pair) in bytes.chunks(2).enumerate() {
            let hex = std::str::from_utf8(pair).ok()?;
            id[i] = u8::from_str_radix(hex, 16).ok()?;
        }
        Some(Self(id))
    }
}

impl std::fmt::Display for KeyId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

impl std::fmt::Debug for KeyId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "KeyId({self})")
    }
}

/// Where a sealed value is stored: it opens only there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Binding<'a> {
    /// The table (`individual_enrollments`).
    pub table: &'a str,
    /// The column, or the column and the path of a JSON field in it (`settings.password`).
    pub column: &'a str,
    /// The row's key (the lower-cased registration id, the hub's host name, the job id).
    pub record: &'a str,
}

impl<'a> Binding<'a> {
    /// The binding of `table`/`column`/`record`.
    pub fn new(table: &'a str, column: &'a str, record: &'a str) -> Self {
        Self { table, column, record }
    }

    /// The associated data of an envelope with this header: the version, the key id, then each part of the binding
    /// as a 4-byte big-endian length and its bytes (so that no two bindings give the same bytes).
    fn associated_data(&self, key_id: KeyId) -> Vec<u8> {
        let mut aad = Vec::with_capacity(HEADER_LEN + self.table.len() + self.column.len() + self.record.len() + 12);
        aad.push(VERSION);
        aad.extend_from_slice(&key_id.0);
        for part in [self.table, self.column, self.record] {
            aad.extend_from_slice(&u32::try_from(part.len()).unwrap_or(u32::MAX).to_be_bytes());
            aad.extend_from_slice(part.as_bytes());
        }
        aad
    }
}

/// An AES-256-GCM key that seals and opens: in this process ([`AesKey`]) or in a token (the server's PKCS#11
/// master key).
pub trait Cipher: Send + Sync {
    /// The id written in the envelopes it seals.
    fn key_id(&self) -> KeyId;
    /// Encrypts `plaintext` under `nonce` and `aad`: the ciphertext followed by the 16-byte tag.
    fn encrypt(&self, nonce: &[u8; NONCE_LEN], aad: &[u8], plaintext: &[u8]) -> Result<Vec<u8>, EnvelopeError>;
    /// Decrypts and authenticates what [`Cipher::encrypt`] made; [`EnvelopeError::Forged`] when it does not
    /// authenticate.
    fn decrypt(
        &self,
        nonce: &[u8; NONCE_LEN],
        aad: &[u8],
        ciphertext: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, EnvelopeError>;
}

/// An AES-256 key held in this process. `Debug` is redacted; aws-lc wipes its key schedule when dropped.
pub struct AesKey {
    id: KeyId,
    key: LessSafeKey,
}

impl std::fmt::Debug for AesKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "AesKey({}, ..)", self.id)
    }
}

impl AesKey {
    /// The key of `bytes` (32), named `id`.
    pub fn new(id: KeyId, bytes: &[u8]) -> Result<Self, EnvelopeError> {
        if bytes.len() != KEY_LEN {
            return Err(EnvelopeError::BadKey(format!("a key must be {KEY_LEN} bytes (got {})", bytes.len())));
        }
        let key = UnboundKey::new(&AES_256_GCM, bytes).map_err(|_| EnvelopeError::Crypto("AES-256-GCM key".into()))?;
        Ok(Self { id, key: LessSafeKey::new(key) })
    }
}

impl Cipher for AesKey {
    fn key_id(&self) -> KeyId {
        self.id
    }

    fn encrypt(&self, nonce: &[u8; NONCE_LEN], aad: &[u8], plaintext: &[u8]) -> Result<Vec<u8>, EnvelopeError> {
        let mut buffer = plaintext.to_vec();
        self.key
            .seal_in_place_append_tag(Nonce::assume_unique_for_key(*nonce), Aad::from(aad), &mut buffer)
            .map_err(|_| EnvelopeError::Crypto("AES-256-GCM seal".into()))?;
        Ok(buffer)
    }

    fn decrypt(
        &self,
        nonce: &[u8; NONCE_LEN],
        aad: &[u8],
        ciphertext: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, EnvelopeError> {
        let mut buffer = Zeroizing::new(ciphertext.to_vec());
        let len = self
            .key
            .open_in_place(Nonce::assume_unique_for_key(*nonce), Aad::from(aad), &mut buffer)
            .map_err(|_| EnvelopeError::Forged)?
            .len();
        buffer.truncate(len);
        Ok(buffer)
    }
}

fn random_bytes<const N: usize>() -> Result<Zeroizing<[u8; N]>, EnvelopeError> {
    let mut bytes = Zeroizing::new([0u8; N]);
    SystemRandom::new().fill(bytes.as_mut()).map_err(|_| EnvelopeError::Crypto("no randomness".into()))?;
    Ok(bytes)
}

/// Seals `plaintext` under `cipher` for the place `binding` names: the envelope text.
pub fn seal(cipher: &dyn Cipher, binding: &Binding<'_>, plaintext: &[u8]) -> Result<String, EnvelopeError> {
    let key_id = cipher.key_id();
    let nonce = random_bytes::<NONCE_LEN>()?;
    let ciphertext = cipher.encrypt(&nonce, &binding.associated_data(key_id), plaintext)?;
    let mut envelope = Vec::with_capacity(HEADER_LEN + ciphertext.len());
    envelope.push(VERSION);
    envelope.extend_from_slice(&key_id.0);
    envelope.extend_from_slice(nonce.as_ref());
    envelope.extend_from_slice(&ciphertext);
    Ok(format!("{PREFIX}{}", URL_SAFE_NO_PAD.encode(envelope)))
}

/// The header of an envelope: its version was checked, its key id and nonce are read.
struct Parsed {
    key_id: KeyId,
    nonce: [u8; NONCE_LEN],
    ciphertext: Vec<u8>,
}

fn parse(text: &str) -> Result<Parsed, EnvelopeError> {
    let body = text.strip_prefix(PREFIX).ok_or(EnvelopeError::NotSealed)?;
    let bytes = URL_SAFE_NO_PAD.decode(body).map_err(|_| EnvelopeError::Malformed)?;
    let (&version, rest) = bytes.split_first().ok_or(EnvelopeError::Malformed)?;
    if version != VERSION {
        return Err(EnvelopeError::UnknownVersion(version));
    }
    if rest.len() < KEY_ID_LEN + NONCE_LEN + TAG_LEN {
        return Err(EnvelopeError::Malformed);
    }
    let (id, rest) = rest.split_at(KEY_ID_LEN);
    let (nonce, ciphertext) = rest.split_at(NONCE_LEN);
    let mut key_id = [0u8; KEY_ID_LEN];
    key_id.copy_from_slice(id);
    let mut n = [0u8; NONCE_LEN];
    n.copy_from_slice(nonce);
    Ok(Parsed { key_id: KeyId(key_id), nonce: n, ciphertext: ciphertext.to_vec() })
}

/// The id of the key that sealed `text`.
pub fn key_id_of(text: &str) -> Result<KeyId, EnvelopeError> {
    parse(text).map(|p| p.key_id)
}

/// Whether `text` is an envelope (starts with [`PREFIX`]); says nothing of whether it opens.
pub fn is_sealed(text: &str) -> bool {
    text.starts_with(PREFIX)
}

/// Opens an envelope sealed by [`seal`] for the place `binding` names.
pub fn open(cipher: &dyn Cipher, binding: &Binding<'_>, text: &str) -> Result<Zeroizing<Vec<u8>>, EnvelopeError> {
    let parsed = parse(text)?;
    if parsed.key_id != cipher.key_id() {
        return Err(EnvelopeError::WrongKey { expected: cipher.key_id(), found: parsed.key_id });
    }
    cipher.decrypt(&parsed.nonce, &binding.associated_data(parsed.key_id), &parsed.ciphertext)
}

/// A master key held in this process: 32 bytes, written as base64 text in its file or environment variable. The
/// key is an [`AesKey`] named by [`KeyId::of_key`]; this type only makes and reads its text.
#[derive(Debug)]
pub struct MasterKey;

impl MasterKey {
    /// A fresh random master key and its text (what goes in the file).
    pub fn generate() -> Result<(AesKey, Zeroizing<String>), EnvelopeError> {
        let bytes = random_bytes::<KEY_LEN>()?;
        let text = Zeroizing::new(STANDARD.encode(bytes.as_ref()));
        Ok((AesKey::new(KeyId::of_key(bytes.as_ref()), bytes.as_ref())?, text))
    }

    /// Parses the text of a master key: base64 of 32 bytes; surrounding white space (a file's newline) is ignored.
    pub fn parse(text: &str) -> Result<AesKey, EnvelopeError> {
        let bytes = Zeroizing::new(
            STANDARD
                .decode(text.trim())
                .map_err(|_| EnvelopeError::BadKey("a master key is base64 of 32 random bytes".into()))?,
        );
        if bytes.len() != KEY_LEN {
            return Err(EnvelopeError::BadKey(format!(
                "a master key is base64 of {KEY_LEN} random bytes (this is {} bytes)",
                bytes.len()
            )));
        }
        AesKey::new(KeyId::of_key(&bytes), &bytes)
    }
}

/// Where a wrapped data key is bound: the `data_keys` table, its `wrapped_key` column, the data key's id.
const DATA_KEY_TABLE: &str = "data_keys";
const DATA_KEY_COLUMN: &str = "wrapped_key";

/// The data key: random, sealing every secret of the database; stored only wrapped by the master key.
#[derive(Debug)]
pub struct DataKey(AesKey);

impl DataKey {
    /// Its id (the `data_keys` row, and every envelope it seals, name it).
    pub fn id(&self) -> KeyId {
        self.0.key_id()
    }

    /// The key `bytes` (the data key `id`) wrapped by `master`, bound to its id. A [`DataKey`] keeps only aws-lc's
    /// key schedule, so wrapping happens when the key is made ([`DataKey::generate_wrapped`]) or unwrapped
    /// ([`DataKey::rewrap`]).
    fn wrap_bytes(master: &dyn Cipher, id: KeyId, bytes: &[u8]) -> Result<String, EnvelopeError> {
        let record = id.to_string();
        seal(master, &Binding::new(DATA_KEY_TABLE, DATA_KEY_COLUMN, &record), bytes)
    }

    /// A fresh data key and its wrapping by `master`.
    pub fn generate_wrapped(master: &dyn Cipher) -> Result<(Self, String), EnvelopeError> {
        let bytes = random_bytes::<KEY_LEN>()?;
        let id = KeyId::random()?;
        let wrapped = Self::wrap_bytes(master, id, bytes.as_ref())?;
        Ok((Self(AesKey::new(id, bytes.as_ref())?), wrapped))
    }

    /// Unwraps the data key `id` with `master`. [`EnvelopeError::WrongKey`] names the master key that wrapped it
    /// when `master` is another; [`EnvelopeError::Forged`] when the wrapped key was altered or moved.
    pub fn unwrap(master: &dyn Cipher, id: KeyId, wrapped: &str) -> Result<Self, EnvelopeError> {
        let record = id.to_string();
        let bytes = open(master, &Binding::new(DATA_KEY_TABLE, DATA_KEY_COLUMN, &record), wrapped)?;
        Ok(Self(AesKey::new(id, &bytes)?))
    }

    /// Unwraps the data key `id` with `old` and wraps it again with `new` (master key rotation): the key itself
    /// never changes, so nothing it sealed is touched.
    pub fn rewrap(old: &dyn Cipher, new: &dyn Cipher, id: KeyId, wrapped: &str) -> Result<String, EnvelopeError> {
        let record = id.to_string();
        let bytes = open(old, &Binding::new(DATA_KEY_TABLE, DATA_KEY_COLUMN, &record), wrapped)?;
        Self::wrap_bytes(new, id, &bytes)
    }

    /// Seals `plaintext` for the place `binding` names.
    pub fn seal(&self, binding: &Binding<'_>, plaintext: &[u8]) -> Result<String, EnvelopeError> {
        seal(&self.0, binding, plaintext)
    }

    /// Opens an envelope this key sealed for the place `binding` names.
    pub fn open(&self, binding: &Binding<'_>, text: &str) -> Result<Zeroizing<Vec<u8>>, EnvelopeError> {
        open(&self.0, binding, text)
    }
}

#[cfg(test)]
mod tests;
