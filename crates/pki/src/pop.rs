//! Proof of possession for uploaded CAs (issue #4 §3, `docs/protocol/device-api.md` §4): the admin gets a random code and
//! proves control of the CA key with a certificate whose subject CN is that code, signed by the CA.

use rand::RngCore;

use crate::certificate::{self, CertificateError};
use crate::chain::accepted_signature_algorithm;

/// Why a proof of possession was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProofError {
    /// The CA certificate is not valid DER.
    #[error("the CA certificate is not a valid DER X.509 certificate: {0}")]
    MalformedCa(String),
    /// The proof certificate is not valid DER.
    #[error("the verification certificate is not a valid DER X.509 certificate: {0}")]
    MalformedProof(String),
    /// The proof's subject CN is not the code.
    #[error("the verification certificate's subject CN must be the verification code: {0}")]
    WrongCode(String),
    /// The proof was not signed by the CA's key.
    #[error("the verification certificate is not signed by the CA's key")]
    NotSignedByCa,
}

/// A fresh verification code: 16 random bytes as 32 upper-case hex digits (Azure's codes are upper-case hex).
pub fn verification_code() -> String {
    let mut bytes = [0u8; 16];
    rand::rng().fill_bytes(&mut bytes);
    hex::encode_upper(bytes)
}

/// Checks that `proof_der`'s subject CN equals `code` and that its signature verifies under `ca_der`'s key.
pub fn verify_proof_of_possession(ca_der: &[u8], proof_der: &[u8], code: &str) -> Result<(), ProofError> {
    let ca = certificate::parse(ca_der).map_err(ProofError::MalformedCa)?;
    let proof = certificate::parse(proof_der).map_err(ProofError::MalformedProof)?;
    match certificate::common_name(proof.subject()) {
        Ok(cn) if cn == code => {}
        Ok(cn) => return Err(ProofError::WrongCode(format!("it is \"{cn}\""))),
        Err(CertificateError::NoCommonName) => return Err(ProofError::WrongCode("it has none".to_owned())),
        Err(other) => return Err(ProofError::WrongCode(other.to_string())),
    }
    if !accepted_signature_algorithm(&proof.signature_algorithm.algorithm) {
        return Err(ProofError::NotSignedByCa);
    }
    proof.verify_signature(Some(ca.public_key())).map_err(|_| ProofError::NotSignedByCa)
}
