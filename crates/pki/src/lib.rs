//! Certificate logic of the managed CA (issue #4): CA keys, issuing CAs, device CSR checks, issuance, CRLs,
//! X.509 chain verification, proof of possession, EST bodies (pure, no I/O: time is always passed in).
//!
//! Every function is total: malformed DER, PEM or text gives an error naming the problem, never a panic. Private
//! keys and passphrases live in types whose `Debug` is redacted and which wipe themselves on drop; a key leaves
//! the crate only as encrypted PKCS#8.
#![forbid(unsafe_code, unused_must_use)]
#![deny(missing_docs)]

pub mod ca;
pub mod certificate;
pub mod chain;
pub mod crl;
pub mod csr;
pub mod est;
pub mod info;
pub mod issue;
pub mod key;
pub mod path;
pub mod pem;
pub mod pop;
pub mod serial;
#[cfg(test)]
mod test_certificates;

pub use ca::{CaError, IssuingCa, RootCa, ca_csr, development_hierarchy, issuing_ca_under};
pub use certificate::{
    CertificateDetails, CertificateError, PresentedCertificate, RsaPublicKey, details, presented, rsa_public_key,
    sha256, subject_cn, thumbprint_sha1_hex, thumbprint_sha256_hex,
};
pub use chain::{
    ChainError, MAX_RSA_BITS, MAX_SIGNATURE_CHECKS, Purpose, VerifiedChain, check_ca_certificate,
    check_certificate_validity,
};
pub use crl::{CrlError, RevocationReason, Revoked, crl};
pub use csr::{CheckedCsr, CsrError, DeviceKeyType, KeyPolicy, check_csr};
pub use est::{Pkcs7Error, certificates_of_pkcs7, certs_only_pkcs7};
pub use info::{certificate_info, distinguished_name, fill_certificate_infos};
pub use issue::{IssueError, IssuedCertificate, Profile, issue};
pub use key::{CaKey, KeyAlgorithm, KeyError, Passphrase};
pub use path::{Choice, Judgement, Refusal, TrustAnchors, choose_anchor, verify_chain, verify_endorsement_chain};
pub use pem::{
    certificate_from_text, certificate_pem, certificates_from_pem, crl_pem, decode_est_base64, est_base64,
    trust_bundle_pem,
};
pub use pop::{ProofError, verification_code, verify_proof_of_possession};
pub use serial::{Serial, SerialError};
