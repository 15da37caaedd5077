//! TPM 2.0 structures for the server side of TPM attestation (pure, no I/O): parsing the endorsement key (EK) and
//! storage root key (SRK) a device sends (`TPM2B_PUBLIC`), their TPM names, and the activation blob of
//! `docs/protocol/device-api.md` §3.3 built in software (MakeCredential to the EK, Duplicate with an inner wrapper to the SRK),
//! which only the TPM holding that EK and SRK can turn into a loaded HMAC key.
//!
//! Everything here is total: any input gives a value or an error, never a panic. Secrets (the HMAC key, seeds, the
//! inner wrapper key) live in zeroizing buffers and are never printed.
#![forbid(unsafe_code, unused_must_use)]
#![deny(missing_docs)]

pub mod activation;
pub mod kdf;
pub mod marshal;
pub mod public;
mod rsa;

pub use activation::{ActivationBlob, ActivationError, ActivationSecrets, build_activation_blob};
pub use public::{KeyError, Public, PublicKey};
