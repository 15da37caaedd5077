//! Attestation verifiers: SAS tokens over a symmetric key, and group-derived device keys (pure, no I/O).
//!
//! Everything here is total: any input gives a result, never a panic; MACs are compared in constant time.
#![forbid(unsafe_code, unused_must_use)]
#![deny(missing_docs)]

pub mod sas;
