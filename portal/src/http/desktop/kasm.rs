//! The `kasm` profile's hop: HTTPS to the desktop, with the basic-auth header the portal adds.
//!
//! KasmVNC serves its own web client and websocket over HTTPS with a certificate it generates
//! itself, behind basic auth for `kasm_user`. The portal proxies both under
//! `/workspaces/{team}/{name}/kasm/` and adds `Authorization: Basic kasm_user:<password>` on the
//! way in; the browser never sees the password, and nothing the browser sends for the portal (its
//! cookies, its own Authorization header) reaches the desktop.
//!
//! **Certificate decision.** The desktop's certificate is self-signed and new with every pod, so
//! there is nothing to verify it against. This connector accepts any certificate, for this hop
//! only: the address comes from the backend (the workspace's pod or service, inside the team's
//! NetworkPolicy), which is what identifies the desktop. TLS still encrypts the hop and the
//! handshake signatures are still checked against the certificate presented. Nothing else in
//! the portal uses this connector.

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};

use base64::Engine;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tokio_rustls::rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use tokio_rustls::rustls::crypto::{self, CryptoProvider, WebPkiSupportedAlgorithms};
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use tokio_rustls::rustls::{self, ClientConfig, DigitallySignedStruct, SignatureScheme};

/// The user KasmVNC's basic auth expects.
pub const KASM_USER: &str = "kasm_user";

/// Accepts the desktop's self-signed certificate (see the module documentation) while still
/// checking the handshake's signatures.
#[derive(Debug)]
struct DesktopCertificate {
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for DesktopCertificate {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// The TLS connector for desktops, built once.
fn connector() -> &'static TlsConnector {
    static CONNECTOR: OnceLock<TlsConnector> = OnceLock::new();
    CONNECTOR.get_or_init(|| {
        let provider = Arc::new(crypto::ring::default_provider());
        let verifier = DesktopCertificate { algorithms: provider.signature_verification_algorithms };
        let config = ClientConfig::builder_with_provider(provider.clone() as Arc<CryptoProvider>)
            .with_safe_default_protocol_versions()
            .expect("ring supports the default TLS versions")
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(verifier))
            .with_no_client_auth();
        TlsConnector::from(Arc::new(config))
    })
}

/// Opens a TLS connection to a desktop.
pub async fn connect(address: SocketAddr) -> std::io::Result<TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(address).await?;
    tcp.set_nodelay(true)?;
    connector().connect(ServerName::IpAddress(address.ip().into()), tcp).await
}

/// The `Authorization` value the portal adds towards the desktop. Never logged, never sent to
/// the browser.
pub fn basic_auth(password: &str) -> String {
    let encoded = base64::engine::general_purpose::STANDARD.encode(format!("{KASM_USER}:{password}"));
    format!("Basic {encoded}")
}
