//! TLS configuration for Drover's QUIC endpoints.
//!
//! Both sides pin the fleet CA: the agent and admin CLI trust no other root,
//! and the coordinator verifies client certificates against the same CA. A
//! client without a certificate is let through the handshake; the coordinator
//! then allows it only Hello and Enroll. The crypto provider (ring) is passed
//! explicitly to every builder rather than relying on a process default.

use std::sync::Arc;
use std::time::Duration;

use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::RootCertStore;

use drover_protocol::ALPN;

/// Why a TLS configuration could not be built.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("the fleet CA certificate is not usable as a trust anchor: {0}")]
    BadCa(String),
    #[error("tls configuration refused: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("client certificate verifier could not be built: {0}")]
    Verifier(String),
    #[error("quic crypto configuration refused: {0}")]
    Quic(String),
}

/// The crypto provider every Drover endpoint uses.
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Installs ring as the process-wide rustls provider (for libraries that
/// consult the default). Safe to call more than once.
pub fn install_default_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

fn roots(ca_der: &[u8]) -> Result<Arc<RootCertStore>, TlsError> {
    let mut roots = RootCertStore::empty();
    roots.add(CertificateDer::from(ca_der.to_vec())).map_err(|e| TlsError::BadCa(e.to_string()))?;
    Ok(Arc::new(roots))
}

/// Concurrent bi-directional streams a peer may open by default.
pub const DEFAULT_MAX_STREAMS: u32 = 64;

/// Unread bytes a peer may have in flight on one connection, all streams
/// together (quinn's default is unbounded): two of the largest frames.
pub const CONNECTION_RECEIVE_WINDOW: u32 = 16 << 20;

/// Unread bytes a peer may have in flight on one stream.
pub const STREAM_RECEIVE_WINDOW: u32 = 1 << 20;

/// What the coordinator grants every connection in its handshake, before it
/// knows who is there: streams and unread bytes enough for Hello and
/// Enroll. It raises both for a connection whose certificate it accepts
/// (`quinn::Connection::set_max_concurrent_bi_streams`,
/// `set_receive_window`); credit once granted cannot be taken back.
pub const UNAUTHENTICATED_MAX_STREAMS: u32 = 4;
pub const UNAUTHENTICATED_RECEIVE_WINDOW: u32 = 256 << 10;

/// Transport settings shared by both ends: keep-alives so that a dead peer is
/// noticed, and a cap on concurrent streams per connection.
pub fn transport(idle_timeout: Duration) -> Arc<quinn::TransportConfig> {
    Arc::new(transport_config(idle_timeout, DEFAULT_MAX_STREAMS, CONNECTION_RECEIVE_WINDOW))
}

fn transport_config(idle_timeout: Duration, max_streams: u32, receive_window: u32) -> quinn::TransportConfig {
    let mut t = quinn::TransportConfig::default();
    t.keep_alive_interval(Some(idle_timeout / 3));
    t.max_idle_timeout(quinn::IdleTimeout::try_from(idle_timeout).ok());
    t.max_concurrent_bidi_streams(max_streams.into());
    t.max_concurrent_uni_streams(0u32.into());
    t.receive_window(receive_window.into());
    t.stream_receive_window(STREAM_RECEIVE_WINDOW.into());
    t
}

/// Issues no stateless tickets (the default ticketer issues none either;
/// this says so where the configuration is made).
#[derive(Debug)]
struct NoTickets;

impl rustls::server::ProducesTickets for NoTickets {
    fn enabled(&self) -> bool {
        false
    }
    fn lifetime(&self) -> u32 {
        0
    }
    fn encrypt(&self, _plain: &[u8]) -> Option<Vec<u8>> {
        None
    }
    fn decrypt(&self, _cipher: &[u8]) -> Option<Vec<u8>> {
        None
    }
}

/// The coordinator's QUIC server configuration.
pub fn server_config(ca_der: &[u8], server_chain_der: Vec<Vec<u8>>, server_key_pkcs8: &[u8], idle_timeout: Duration) -> Result<quinn::ServerConfig, TlsError> {
    let provider = provider();
    let verifier = WebPkiClientVerifier::builder_with_provider(roots(ca_der)?, provider.clone())
        .allow_unauthenticated()
        .build()
        .map_err(|e| TlsError::Verifier(e.to_string()))?;
    let chain = server_chain_der.into_iter().map(CertificateDer::from).collect();
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(server_key_pkcs8.to_vec()));
    let mut tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)?;
    tls.alpn_protocols = vec![ALPN.to_vec()];
    // No 0-RTT: early data could be replayed.
    tls.max_early_data_size = 0;
    // No resumption: every connection is a full handshake that verifies
    // the client's certificate (its expiry included). A session ticket
    // would be a second credential beside the key, valid after the
    // certificate expired; a resumed session carries no certificate.
    tls.send_tls13_tickets = 0;
    tls.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    tls.ticketer = Arc::new(NoTickets);
    let quic = QuicServerConfig::try_from(tls).map_err(|e| TlsError::Quic(e.to_string()))?;
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(quic));
    // Segmentation offload stays on. quinn then reserves a send buffer of
    // ten datagrams (13 KiB) per connection once it sends two at once, but
    // little of it is ever written, so little is resident: turned off, it
    // saved one to two kilobytes per agent (docs/benchmarks.md).
    config.transport_config(Arc::new(transport_config(idle_timeout, UNAUTHENTICATED_MAX_STREAMS, UNAUTHENTICATED_RECEIVE_WINDOW)));
    Ok(config)
}

/// A client configuration that trusts only the fleet CA, with an optional
/// client identity (certificate DER, PKCS#8 key DER).
pub fn client_config(ca_der: &[u8], identity: Option<(&[u8], &[u8])>, idle_timeout: Duration) -> Result<quinn::ClientConfig, TlsError> {
    let builder =
        rustls::ClientConfig::builder_with_provider(provider()).with_protocol_versions(&[&rustls::version::TLS13])?.with_root_certificates(roots(ca_der)?);
    let tls = match identity {
        Some((cert, key)) => {
            builder.with_client_auth_cert(vec![CertificateDer::from(cert.to_vec())], PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.to_vec())))?
        }
        None => builder.with_no_client_auth(),
    };
    client(tls, idle_timeout)
}

/// Every client's rules on top of its TLS configuration: Drover's ALPN, no
/// early data, Drover's transport settings.
fn client(mut tls: rustls::ClientConfig, idle_timeout: Duration) -> Result<quinn::ClientConfig, TlsError> {
    tls.alpn_protocols = vec![ALPN.to_vec()];
    tls.enable_early_data = false;
    let quic = QuicClientConfig::try_from(tls).map_err(|e| TlsError::Quic(e.to_string()))?;
    let mut config = quinn::ClientConfig::new(Arc::new(quic));
    config.transport_config(transport(idle_timeout));
    Ok(config)
}

/// The fleet CA a pinned handshake accepted (see [`pinned_client_config`]).
pub type CapturedCa = Arc<std::sync::Mutex<Option<Vec<u8>>>>;

/// A client configuration for a VM whose seed holds only the SHA-256 of
/// the fleet CA: the coordinator's chain must hold a certificate with that
/// digest, and the server's certificate must verify against it as the only
/// root (name and dates included). The accepted CA is left in `captured`.
pub fn pinned_client_config(pin: [u8; 32], captured: CapturedCa, idle_timeout: Duration) -> Result<quinn::ClientConfig, TlsError> {
    let verifier = Arc::new(PinnedCa { pin, captured, provider: provider() });
    let tls = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    client(tls, idle_timeout)
}

#[derive(Debug)]
struct PinnedCa {
    pin: [u8; 32],
    captured: CapturedCa,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl rustls::client::danger::ServerCertVerifier for PinnedCa {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &rustls::pki_types::ServerName<'_>,
        ocsp_response: &[u8],
        now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        use sha2::{Digest, Sha256};
        let ca = intermediates
            .iter()
            .find(|c| Sha256::digest(c.as_ref()).as_slice() == self.pin)
            .ok_or_else(|| rustls::Error::General("the coordinator presented no CA with the digest the seed pins".into()))?;
        let roots = roots(ca.as_ref()).map_err(|e| rustls::Error::General(e.to_string()))?;
        let inner = rustls::client::WebPkiServerVerifier::builder_with_provider(roots, self.provider.clone())
            .build()
            .map_err(|e| rustls::Error::General(e.to_string()))?;
        let verified = inner.verify_server_cert(end_entity, &[], server_name, ocsp_response, now)?;
        *self.captured.lock().unwrap_or_else(|p| p.into_inner()) = Some(ca.as_ref().to_vec());
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::General("TLS 1.2 is not allowed".into()))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}
