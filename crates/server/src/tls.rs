//! TLS for the listeners: rustls with TLS 1.2 and 1.3, the server certificate from the data dir or the operator.

use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use rustls::ServerConfig;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use zeroize::Zeroizing;

/// The certificate chain a device presented in its TLS handshake (DER, its own certificate first), as the HTTPS
/// listener keeps it for the requests of the connection. The handshake proved the device holds that certificate's
/// key; the chain itself is judged by the registration service.
#[derive(Debug, Clone)]
pub struct PeerCertificates(pub Vec<Vec<u8>>);

/// Installs the process-wide crypto provider (aws-lc-rs). Two providers are compiled in (sqlx brings ring), so
/// rustls cannot pick one by itself; every binary and test harness calls this first.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}

/// Reads a PEM certificate chain and its private key into a server configuration (no client certificates).
pub fn server_config(cert_path: &Path, key_path: &Path) -> anyhow::Result<Arc<ServerConfig>> {
    let (chain, key) = read_identity(cert_path, key_path)?;
    build(builder()?.with_no_client_auth(), chain, key)
}

/// The device listener's configuration: client certificates requested, not required, their chain left to the
/// application (see [`client_auth::ChainJudgedByApplication`]).
pub fn device_server_config(cert_path: &Path, key_path: &Path) -> anyhow::Result<Arc<ServerConfig>> {
    let (chain, key) = read_identity(cert_path, key_path)?;
    let verifier = Arc::new(client_auth::ChainJudgedByApplication::new());
    build(builder()?.with_client_cert_verifier(verifier), chain, key)
}

const PROTOCOLS: &[&rustls::SupportedProtocolVersion] = &[&rustls::version::TLS13, &rustls::version::TLS12];

/// aws-lc-rs's default suites, AES-128-GCM first in each TLS version (see `ignore_client_order` in [`build`]).
fn builder() -> anyhow::Result<rustls::ConfigBuilder<ServerConfig, rustls::WantsVerifier>> {
    use rustls::crypto::aws_lc_rs::{cipher_suite as suite, default_provider};
    let preferred = [
        suite::TLS13_AES_128_GCM_SHA256,
        suite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
        suite::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
    ];
    let mut provider = default_provider();
    provider.cipher_suites.sort_by_key(|s| !preferred.contains(s));
    Ok(ServerConfig::builder_with_provider(Arc::new(provider)).with_protocol_versions(PROTOCOLS)?)
}

fn build(
    builder: rustls::ConfigBuilder<ServerConfig, rustls::server::WantsServerCert>,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> anyhow::Result<Arc<ServerConfig>> {
    let mut config = builder.with_single_cert(chain, key).context("the server certificate and key do not match")?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    // Our order, not the client's: most clients (OpenSSL, rustls) offer AES-256/SHA-384 first, whose handshake
    // hashing costs several times AES-128/SHA-256's on CPUs with SHA extensions, for no security that matters here.
    config.ignore_client_order = true;
    Ok(Arc::new(config))
}

fn read_identity(
    cert_path: &Path,
    key_path: &Path,
) -> anyhow::Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)> {
    let cert_pem = std::fs::read(cert_path).with_context(|| format!("cannot read {}", cert_path.display()))?;
    let chain: Vec<CertificateDer<'static>> = rustls_pemfile::certs(&mut cert_pem.as_slice())
        .collect::<Result<_, _>>()
        .with_context(|| format!("{} is not a PEM certificate chain", cert_path.display()))?;
    if chain.is_empty() {
        anyhow::bail!("{} holds no certificate", cert_path.display());
    }
    let key_pem =
        Zeroizing::new(std::fs::read(key_path).with_context(|| format!("cannot read {}", key_path.display()))?);
    let key: PrivateKeyDer<'static> = rustls_pemfile::private_key(&mut key_pem.as_slice())
        .with_context(|| format!("{} is not a PEM private key", key_path.display()))?
        .with_context(|| format!("{} holds no private key", key_path.display()))?;
    Ok((chain, key))
}

pub mod client_auth {
    //! A client-certificate verifier that asks for a certificate, accepts its absence, and leaves the chain to
    //! the application.
    //!
    //! Devices with a symmetric key or a TPM connect without a certificate; X.509 devices present chains that end
    //! at customer CAs enrolled at run time, which a fixed root list in the TLS layer cannot know
    //! (`docs/protocol/device-api.md` §4). So the chain is **not** judged here: the registration service judges it
    //! against the enrollments. What this verifier still does is check the handshake signature, which proves the
    //! client holds the certificate's private key; without that check any client could replay any certificate.

    use rustls::DistinguishedName;
    use rustls::client::danger::HandshakeSignatureValid;
    use rustls::crypto::{WebPkiSupportedAlgorithms, verify_tls12_signature, verify_tls13_signature};
    use rustls::pki_types::{CertificateDer, UnixTime};
    use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
    use rustls::{DigitallySignedStruct, SignatureScheme};

    /// See the module documentation.
    #[derive(Debug)]
    pub struct ChainJudgedByApplication {
        algorithms: WebPkiSupportedAlgorithms,
    }

    impl ChainJudgedByApplication {
        /// A verifier over the installed crypto provider's signature algorithms.
        pub fn new() -> Self {
            Self { algorithms: rustls::crypto::aws_lc_rs::default_provider().signature_verification_algorithms }
        }
    }

    impl Default for ChainJudgedByApplication {
        fn default() -> Self {
            Self::new()
        }
    }

    impl ClientCertVerifier for ChainJudgedByApplication {
        fn offer_client_auth(&self) -> bool {
            true
        }

        fn client_auth_mandatory(&self) -> bool {
            false
        }

        fn root_hint_subjects(&self) -> &[DistinguishedName] {
            &[]
        }

        fn verify_client_cert(
            &self,
            _end_entity: &CertificateDer<'_>,
            _intermediates: &[CertificateDer<'_>],
            _now: UnixTime,
        ) -> Result<ClientCertVerified, rustls::Error> {
            // Deliberately deferred: the registration service judges the chain against the enrollments.
            Ok(ClientCertVerified::assertion())
        }

        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            verify_tls12_signature(message, cert, dss, &self.algorithms)
        }

        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            verify_tls13_signature(message, cert, dss, &self.algorithms)
        }

        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            self.algorithms.supported_schemes()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A client that offers AES-256/SHA-384 first (as rustls and OpenSSL clients do) gets AES-128/SHA-256 in TLS
    /// 1.3 and in TLS 1.2.
    #[test]
    fn the_server_chooses_aes_128_whatever_the_client_prefers() {
        install_crypto_provider();
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let cert = rcgen::CertificateParams::new(vec!["localhost".into()]).unwrap().self_signed(&key).unwrap();
        let server_key = PrivateKeyDer::try_from(key.serialize_der()).unwrap();
        let server = build(builder().unwrap().with_no_client_auth(), vec![cert.der().clone()], server_key).unwrap();
        for (version, expected) in [
            (&rustls::version::TLS13, rustls::CipherSuite::TLS13_AES_128_GCM_SHA256),
            (&rustls::version::TLS12, rustls::CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256),
        ] {
            let mut roots = rustls::RootCertStore::empty();
            roots.add(cert.der().clone()).unwrap();
            let client_config = rustls::ClientConfig::builder_with_protocol_versions(&[version])
                .with_root_certificates(roots)
                .with_no_client_auth();
            assert_eq!(
                client_config.crypto_provider().cipher_suites[0].suite(),
                rustls::CipherSuite::TLS13_AES_256_GCM_SHA384,
                "the client offers AES-256 first"
            );
            let mut client =
                rustls::ClientConnection::new(Arc::new(client_config), "localhost".try_into().unwrap()).unwrap();
            let mut server = rustls::ServerConnection::new(Arc::clone(&server)).unwrap();
            while client.is_handshaking() || server.is_handshaking() {
                let mut buffer = Vec::new();
                client.write_tls(&mut buffer).unwrap();
                server.read_tls(&mut buffer.as_slice()).unwrap();
                server.process_new_packets().unwrap();
                buffer.clear();
                server.write_tls(&mut buffer).unwrap();
                client.read_tls(&mut buffer.as_slice()).unwrap();
                client.process_new_packets().unwrap();
            }
            assert_eq!(server.negotiated_cipher_suite().map(|s| s.suite()), Some(expected));
        }
    }
}
