//! The credentials of a run: P-256 CSRs, the CAs, and the EST devices' certificates.
//!
//! Its own module because all of it is made before the clock starts (on every core for the CSRs), apart from the
//! code that is timed.

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose, PKCS_ECDSA_P256_SHA256, PublicKeyData,
};
use rustls::pki_types::CertificateDer;

/// A P-256 CSR, in the encodings both issuers take.
#[derive(Debug, Clone)]
pub(crate) struct Csr {
    pub(super) cn: String,
    pub(crate) der: Vec<u8>,
    pub(super) pem: String,
    pub(super) spki: Vec<u8>,
}

/// `count` CSRs with fresh P-256 keys, the i-th with CN `cn_of(i)`, made on every core.
pub(crate) fn generate_csrs(count: usize, cn_of: impl Fn(usize) -> String + Sync) -> anyhow::Result<Vec<Csr>> {
    let threads = std::thread::available_parallelism().map_or(1, usize::from);
    let chunk = count.div_ceil(threads).max(1);
    let cn_of = &cn_of;
    let parts: Vec<anyhow::Result<Vec<Csr>>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..count)
            .step_by(chunk)
            .map(|start| scope.spawn(move || (start..(start + chunk).min(count)).map(|i| csr(&cn_of(i))).collect()))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap_or_else(|_| Err(anyhow::anyhow!("CSR thread panicked")))).collect()
    });
    let mut csrs = Vec::with_capacity(count);
    for part in parts {
        csrs.extend(part?);
    }
    Ok(csrs)
}

fn csr(cn: &str) -> anyhow::Result<Csr> {
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.distinguished_name.push(DnType::CommonName, cn);
    let request = params.serialize_request(&key)?;
    Ok(Csr { cn: cn.to_owned(), der: request.der().to_vec(), pem: request.pem()?, spki: key.subject_public_key_info() })
}

/// A P-256 CA certificate (valid 2025-2035) and its issuer.
pub(super) fn p256_ca(cn: &str) -> anyhow::Result<CertifiedIssuer<'static, KeyPair>> {
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.distinguished_name.push(DnType::CommonName, cn);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    params.not_before = rcgen::date_time_ymd(2025, 1, 1);
    params.not_after = rcgen::date_time_ymd(2035, 1, 1);
    Ok(CertifiedIssuer::self_signed(params, key)?)
}

/// A TLS client identity: certificate chain and PKCS#8 key.
pub(super) struct Identity {
    pub(super) chain: Vec<CertificateDer<'static>>,
    pub(super) key: Vec<u8>,
}

/// The EST devices: one X.509 enrollment group's CA and a device certificate per connection.
pub(crate) struct EstFleet {
    pub(super) ca_pem: String,
    pub(super) identities: Vec<Identity>,
}

impl EstFleet {
    /// A group CA and `count` device certificates (v3, clientAuth EKU, CN = registration id).
    pub(crate) fn generate(count: usize) -> anyhow::Result<Self> {
        let ca = p256_ca("loadgen EST group CA")?;
        let mut identities = Vec::with_capacity(count);
        for w in 0..count {
            let id = est_device_id(w);
            let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
            let mut params = CertificateParams::new(Vec::<String>::new())?;
            params.distinguished_name.push(DnType::CommonName, &id);
            params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
            params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
            params.not_before = rcgen::date_time_ymd(2025, 1, 1);
            params.not_after = rcgen::date_time_ymd(2035, 1, 1);
            let cert = params.signed_by(&key, &ca)?;
            identities.push(Identity { chain: vec![cert.der().clone()], key: key.serialize_der() });
        }
        Ok(Self { ca_pem: ca.pem(), identities })
    }
}

/// The registration id of the EST device on connection `w`.
pub(crate) fn est_device_id(w: usize) -> String {
    format!("est-device-{w:04}")
}
