//! Certificates for the unit tests of `chain` and `path`: CA ladders and device certificates made with rcgen.
#![allow(clippy::unwrap_used)]

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
use time::OffsetDateTime;

/// A moment given in Unix seconds.
pub(crate) fn at(unix: i64) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp(unix).unwrap()
}

/// The parameters of a CA certificate named `cn`.
pub(crate) fn ca_params(cn: &str) -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name.push(DnType::CommonName, cn);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params
}

/// A root and `depth` intermediates under it (the last one edited by `edit_last`); returns the DERs (root first)
/// and the last issuer.
pub(crate) fn ladder(
    depth: usize,
    edit_last: impl FnOnce(&mut CertificateParams),
) -> (Vec<Vec<u8>>, Issuer<'static, KeyPair>) {
    let key = KeyPair::generate().unwrap();
    let params = ca_params("root");
    let mut ders = vec![params.self_signed(&key).unwrap().der().to_vec()];
    let mut issuer = Issuer::new(params, key);
    let mut edit_last = Some(edit_last);
    for i in 0..depth {
        let key = KeyPair::generate().unwrap();
        let mut params = ca_params(&format!("int {i}"));
        if i + 1 == depth
            && let Some(edit) = edit_last.take()
        {
            edit(&mut params);
        }
        ders.push(params.signed_by(&key, &issuer).unwrap().der().to_vec());
        issuer = Issuer::new(params, key);
    }
    (ders, issuer)
}

/// A device certificate (CN `device`) under `issuer`.
pub(crate) fn leaf(issuer: &Issuer<'static, KeyPair>) -> Vec<u8> {
    let mut params = CertificateParams::default();
    params.distinguished_name.push(DnType::CommonName, "device");
    params.signed_by(&KeyPair::generate().unwrap(), issuer).unwrap().der().to_vec()
}
