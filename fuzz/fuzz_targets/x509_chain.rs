//! A device's certificate chain judged against one enrolled CA: `verify_chain` (X.509 attestation) and
//! `verify_endorsement_chain` (TPM EK certificates).
//!
//! The input is DER certificates one after another, as a TLS Certificate message carries them without its length
//! prefixes: the first is the device's, the last the trust anchor, those between the presented intermediates.
//! `now` is the device certificate's `notBefore`, so that real chains get past the validity checks.
//!
//! Beyond "no panic": a verified path runs from the device certificate to the anchor, is at most
//! `MAX_CHAIN_LENGTH` long, holds only certificates that parse strictly, ends at an anchor that is an acceptable
//! CA, and reports the device certificate's `notAfter`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use time::OffsetDateTime;
use zerotouch_pki::chain::MAX_CHAIN_LENGTH;
use zerotouch_pki::{VerifiedChain, check_ca_certificate, details, verify_chain, verify_endorsement_chain};

/// At most this many certificates are read from one input (more than a path may hold).
const MAX_CERTIFICATES: usize = MAX_CHAIN_LENGTH + 3;

/// Splits concatenated DER at the outer TLV boundaries; what does not frame as a TLV ends the last piece.
fn split_der(mut data: &[u8]) -> Vec<&[u8]> {
    let mut pieces = Vec::new();
    while !data.is_empty() && pieces.len() + 1 < MAX_CERTIFICATES {
        let Some(len) = tlv_length(data).filter(|len| *len <= data.len()) else { break };
        let (piece, rest) = data.split_at(len);
        pieces.push(piece);
        data = rest;
    }
    if !data.is_empty() {
        pieces.push(data);
    }
    pieces
}

/// The whole length (header included) of the DER TLV at the start of `data`.
fn tlv_length(data: &[u8]) -> Option<usize> {
    let first = *data.get(1)?;
    if first < 0x80 {
        return Some(2 + usize::from(first));
    }
    let count = usize::from(first & 0x7f);
    if count == 0 || count > 4 {
        return None;
    }
    let bytes = data.get(2..2 + count)?;
    let len = bytes.iter().fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
    Some(2 + count + len)
}

fn check(verified: &VerifiedChain, leaf: &[u8], anchor: &[u8], now: OffsetDateTime) {
    assert!(verified.path.len() >= 2 && verified.path.len() <= MAX_CHAIN_LENGTH);
    assert_eq!(verified.path.first().map(Vec::as_slice), Some(leaf));
    assert_eq!(verified.path.last().map(Vec::as_slice), Some(anchor));
    for der in &verified.path {
        assert!(details(der).is_ok());
    }
    assert!(check_ca_certificate(anchor, now).is_ok());
    assert_eq!(details(leaf).map(|d| d.not_after).ok(), Some(verified.leaf_not_after));
}

fuzz_target!(|data: &[u8]| {
    let pieces = split_der(data);
    let [leaf, middle @ .., anchor] = pieces.as_slice() else { return };
    let intermediates: Vec<Vec<u8>> = middle.iter().map(|piece| piece.to_vec()).collect();
    let now = details(leaf).map(|d| d.not_before).unwrap_or(OffsetDateTime::UNIX_EPOCH);
    if let Ok(verified) = verify_chain(leaf, &intermediates, anchor, now) {
        check(&verified, leaf, anchor, now);
    }
    if let Ok(verified) = verify_endorsement_chain(leaf, &intermediates, anchor, now) {
        check(&verified, leaf, anchor, now);
    }
});
