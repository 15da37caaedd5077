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
pub mod mqtt;
pub mod pkcs11_key;
pub mod provision;
pub mod schedule;
pub mod signer;
pub mod state;
#[cfg(feature = "tpm")]
pub mod tpm;
pub mod tpm_key;

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
    /// Creates an ECDSA P-256 signing key under the SRK, born in the TPM and never leaving it, and keeps it at the
    /// persistent `handle` (replacing the key there). Returns its public key, the uncompressed point (65 bytes).
    fn create_signing_key(&mut self, handle: u32) -> anyhow::Result<Vec<u8>>;
    /// ECDSA signature (DER `Ecdsa-Sig-Value`) of a SHA-256 `digest` by the key at `handle`.
    fn sign_digest(&mut self, handle: u32, digest: &[u8]) -> anyhow::Result<Vec<u8>>;
}

/// An ECDSA signature as DER (`SEQUENCE { INTEGER r, INTEGER s }`, RFC 3279 §2.2.3) from the big-endian `r` and
/// `s` a TPM returns.
pub fn ecdsa_der(r: &[u8], s: &[u8]) -> Vec<u8> {
    fn integer(value: &[u8]) -> Vec<u8> {
        let trimmed: Vec<u8> = value.iter().copied().skip_while(|b| *b == 0).collect();
        let mut content = if trimmed.first().is_none_or(|b| b & 0x80 != 0) { vec![0] } else { Vec::new() };
        content.extend_from_slice(&trimmed);
        let mut out = vec![0x02];
        out.extend(length(content.len()));
        out.extend(content);
        out
    }
    fn length(len: usize) -> Vec<u8> {
        match u8::try_from(len) {
            Ok(short) if short < 0x80 => vec![short],
            Ok(long) => vec![0x81, long],
            Err(_) => vec![0x82, (len >> 8) as u8, len as u8],
        }
    }
    let body = [integer(r), integer(s)].concat();
    let mut out = vec![0x30];
    out.extend(length(body.len()));
    out.extend(body);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Known answers: leading zeros dropped, a zero byte added before a high bit, zero as `02 01 00`.
    #[test]
    fn ecdsa_signatures_are_encoded_as_der() {
        assert_eq!(ecdsa_der(&[0x00, 0x01], &[0x7f]), [0x30, 0x06, 0x02, 0x01, 0x01, 0x02, 0x01, 0x7f]);
        assert_eq!(ecdsa_der(&[0x80], &[0, 0]), [0x30, 0x07, 0x02, 0x02, 0x00, 0x80, 0x02, 0x01, 0x00]);
        let r = [0xffu8; 32];
        let der = ecdsa_der(&r, &r);
        assert_eq!(der.len(), 2 + 2 * (2 + 33));
        assert_eq!(&der[..5], &[0x30, 70, 0x02, 33, 0x00]);
        let long = ecdsa_der(&[0x11; 100], &[0x22; 100]);
        assert_eq!(&long[..3], &[0x30, 0x81, 204]);
    }
}
