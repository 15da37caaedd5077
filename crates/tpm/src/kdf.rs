//! KDFa (TPM 2.0 Part 1 §11.4.10.2), SP 800-108 counter mode with HMAC-SHA-256, as the TPM uses it to derive the
//! symmetric and HMAC keys that protect credentials and duplicated objects.

use hmac::{Hmac, Mac};
use sha2::Sha256;
use zeroize::Zeroizing;

type HmacSha256 = Hmac<Sha256>;

/// `KDFa(SHA-256, key, label, context_u, context_v, bits)`: the concatenation of
/// `HMAC-SHA256(key, counter(u32, from 1) || label || 0x00 || context_u || context_v || bits(u32))`, cut to
/// `bits / 8` bytes. `label` is given without its terminating zero, which is added here (the TPM's "STORAGE" and
/// "INTEGRITY" labels are followed by one 0x00 in the input; `docs/protocol/tpm-activation.md`, point 2).
///
/// `bits` must be a multiple of 8 (the TPM only asks for whole bytes); the output has `bits / 8` bytes.
pub fn kdfa(key: &[u8], label: &str, context_u: &[u8], context_v: &[u8], bits: u32) -> Zeroizing<Vec<u8>> {
    let bytes = usize::try_from(bits / 8).unwrap_or(0);
    let mut out = Zeroizing::new(Vec::with_capacity(bytes + 32));
    let mut counter: u32 = 0;
    while out.len() < bytes {
        counter = counter.wrapping_add(1);
        // HMAC accepts keys of any length, so `new_from_slice` cannot fail here.
        let Ok(mut mac) = HmacSha256::new_from_slice(key) else { break };
        mac.update(&counter.to_be_bytes());
        mac.update(label.as_bytes());
        mac.update(&[0]);
        mac.update(context_u);
        mac.update(context_v);
        mac.update(&bits.to_be_bytes());
        out.extend_from_slice(&mac.finalize().into_bytes());
    }
    out.truncate(bytes);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use sha2::Digest;

    fn h(s: &str) -> Vec<u8> {
        hex::decode(s).unwrap()
    }

    /// Known answers from `docs/protocol/tpm-activation.md` (measured against swtpm 0.7.1): the credential's symmetric and
    /// HMAC keys derived from `credential_seed = SHA-256("kat-credential-seed")` and Name(SRK) of that vector.
    #[test]
    fn matches_the_activation_vector() {
        let seed = Sha256::digest(b"kat-credential-seed");
        let name_srk = h("000bda9e1d1058e1a85dbaac057a48e1ef773101097c04b4b57aff63d29b508c7762");
        assert_eq!(*kdfa(&seed, "STORAGE", &name_srk, &[], 128), h("d61e7ce2d0404caf7424350ba346152d"));
        assert_eq!(
            *kdfa(&seed, "INTEGRITY", &[], &[], 256),
            h("8bd71054701eecb1cec8901d35fa6f3e118ff53f46d4484f66e0d3dd85bad9b5")
        );
    }

    /// Longer outputs continue the counter; the first block is a prefix of them.
    #[test]
    fn longer_outputs_extend_the_counter() {
        let long = kdfa(b"k", "L", b"u", b"v", 512);
        assert_eq!(long.len(), 64);
        let short = kdfa(b"k", "L", b"u", b"v", 256);
        // The requested size is part of the input, so outputs of different sizes differ.
        assert_ne!(&long[..32], &short[..]);
    }
}
