//! The device side of zerotouch: provisions a device over the Azure DPS-compatible HTTPS API and keeps its
//! operational identity for years without anyone's help (`docs/agent.md`).
//!
//! - [`provision`]: registration over HTTPS with a symmetric key, an X.509 certificate or a TPM 2.0
//!   (`docs/protocol/device-api.md` §1-§4); [`est`]: renewal by EST `simplereenroll`.
//! - [`key`]: the operational key, generated on the device, and its CSR.
//! - [`schedule`]: every decision of the daemon (when to renew, check, retry, start over), pure and unit-tested;
//!   [`daemon`]: the loop that carries them out; [`state`]: the state file and the identity files, swapped
//!   atomically; [`config`]: the TOML configuration.
//!
//! TPM access goes through one narrow trait, [`DeviceTpm`]; the real TPM behind it (tss-esapi 7, feature `tpm`) is
//! [`tpm::Tpm`]. The DPS key and the hub key are imported into the TPM and used there.
#![forbid(unsafe_code, unused_must_use)]
#![deny(missing_docs)]

pub mod config;
pub mod daemon;
pub mod est;
pub mod key;
pub mod provision;
pub mod schedule;
pub mod state;
#[cfg(feature = "tpm")]
pub mod tpm;

/// What provisioning needs of a TPM.
pub trait DeviceTpm {
    /// The EK and SRK, each the marshalled `TPM2B_PUBLIC`, read from their persistent handles (created and
    /// persisted there first if the TPM has none).
    fn keys(&mut self) -> anyhow::Result<(Vec<u8>, Vec<u8>)>;
    /// The EK certificate (DER) from the TPM's NV, if the manufacturer put one there.
    fn ek_certificate(&mut self) -> anyhow::Result<Option<Vec<u8>>>;
    /// Imports the key an activation blob carries (ActivateCredential, Import, Load) and keeps it at the device's
    /// persistent key handle, replacing the key there.
    fn import_key(&mut self, blob: &[u8]) -> anyhow::Result<()>;
    /// HMAC-SHA256 of `message` with the imported key, computed inside the TPM.
    fn sign(&mut self, message: &[u8]) -> anyhow::Result<Vec<u8>>;
}
