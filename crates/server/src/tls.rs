//! TLS for the listeners: rustls with TLS 1.2 and 1.3, the server certificate from the data dir or the operator.

use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use rustls::ServerConfig;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use zeroize::Zeroizing;

/// Installs the process-wide crypto provider (aws-lc-rs). Two providers are compiled in (sqlx brings ring), so
/// rustls cannot pick one by itself; every binary and test harness calls this first.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}

/// Reads a PEM certificate chain and its private key into a server configuration (no client certificates).
pub fn server_config(cert_path: &Path, key_path: &Path) -> anyhow::Result<Arc<ServerConfig>> {
    let (chain, key) = read_identity(cert_path, key_path)?;
    build(ServerConfig::builder_with_protocol_versions(PROTOCOLS).with_no_client_auth(), chain, key)
}

/// The device listener's configuration: client certificates requested, not required, their chain left to the
/// application (see [`client_auth::ChainJudgedByApplication`]).
pub fn device_server_config(cert_path: &Path, key_path: &Path) -> anyhow::Result<Arc<ServerConfig>> {
    let (chain, key) = read_identity(cert_path, key_path)?;
    let verifier = Arc::new(client_auth::ChainJudgedByApplication::new());
    build(ServerConfig::builder_with_protocol_versions(PROTOCOLS).with_client_cert_verifier(verifier), chain, key)
}

const PROTOCOLS: &[&rustls::SupportedProtocolVersion] = &[&rustls::version::TLS13, &rustls::version::TLS12];

fn build(
    builder: rustls::ConfigBuilder<ServerConfig, rustls::server::WantsServerCert>,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> anyhow::Result<Arc<ServerConfig>> {
    let mut config = builder.with_single_cert(chain, key).context("the server certificate and key do not match")?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
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
    //! (`azure-dps-wire.md` §4). So the chain is **not** judged here: the registration service judges it
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
