//! Connecting to a coordinator: QUIC connect, then Hello on the first stream,
//! then one request per bi-stream.

use std::net::SocketAddr;
use std::time::Duration;

use drover_protocol::frame::MAX_FRAME_LEN;
use drover_protocol::v1::{Hello, Request, Response};
use drover_protocol::{ErrorCode, WireError, SUPPORTED};

use crate::address::HostPort;
use crate::stream::{read_frame_for, write_frame_for, StreamError};

/// Why talking to the coordinator failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot open a local UDP socket: {0}")]
    Bind(std::io::Error),
    #[error("cannot start connecting to {addr}: {source}")]
    Connect {
        addr: SocketAddr,
        #[source]
        source: quinn::ConnectError,
    },
    #[error("connection to {addr} failed: {source}{}", hint(source))]
    Connection {
        addr: SocketAddr,
        #[source]
        source: quinn::ConnectionError,
    },
    #[error("cannot find the coordinator {address}: {error}")]
    Resolve { address: String, error: std::io::Error },
    #[error("timed out connecting to {0}")]
    Timeout(SocketAddr),
    /// An answer that took too long, on a connection that stays open.
    #[error("request timed out: the coordinator at {addr} did not answer within {after:?}; the connection stays open")]
    RequestTimeout { addr: SocketAddr, after: Duration },
    #[error("stream failed: {0}")]
    Stream(#[from] StreamError),
    #[error("the coordinator refused: {0}")]
    Refused(WireError),
    #[error("unexpected answer from the coordinator: {0}")]
    Unexpected(String),
}

impl ClientError {
    /// The wire error code, where the coordinator gave one (as an answer or
    /// as the code it closed the connection with).
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            ClientError::Refused(e) => Some(e.code),
            ClientError::Connection { source, .. } => connection_code(source),
            ClientError::Stream(StreamError::Read(quinn::ReadExactError::ReadError(quinn::ReadError::ConnectionLost(e)))) => connection_code(e),
            ClientError::Stream(StreamError::Write(quinn::WriteError::ConnectionLost(e))) => connection_code(e),
            _ => None,
        }
    }
}

/// What to do about a handshake the coordinator's certificate failed: the
/// words rustls uses say what is wrong, not which setting to change.
fn hint(e: &quinn::ConnectionError) -> &'static str {
    let text = e.to_string();
    if text.contains("BadSignature") || text.contains("UnknownIssuer") {
        "; the coordinator's certificate is not signed by the CA this side trusts: \
         is ca_file (--ca-file) this fleet's ca.pem, from the coordinator's state directory?"
    } else if text.contains("NotValidForName") || text.contains("not valid for name") {
        "; the coordinator's certificate does not carry the name dialled: set server_name \
         (--server-name) to one of the names given to `drover init --server-name`"
    } else if text.contains("Expired") {
        "; a certificate has expired: check both machines' clocks"
    } else {
        ""
    }
}

/// An error and its causes on one line, each cause only where the text so
/// far does not already say it (many errors quote their source).
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(e) = cause {
        let part = e.to_string();
        if !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        cause = e.source();
    }
    text
}

/// The wire error code a connection was closed with, if any.
pub fn connection_code(e: &quinn::ConnectionError) -> Option<ErrorCode> {
    match e {
        quinn::ConnectionError::ApplicationClosed(close) => ErrorCode::from_u32(u32::try_from(close.error_code.into_inner()).ok()?),
        _ => None,
    }
}

/// A client endpoint bound to an ephemeral port of the address family of
/// `target`.
pub fn client_endpoint(target: SocketAddr) -> Result<quinn::Endpoint, ClientError> {
    let bind: SocketAddr =
        if target.is_ipv6() { "[::]:0".parse().expect("literal socket address") } else { "0.0.0.0:0".parse().expect("literal socket address") };
    crate::socket::endpoint(bind, None).map_err(ClientError::Bind)
}

/// A client endpoint for dialling `address` (IPv6 only for an IPv6 literal).
pub fn client_endpoint_for(address: &HostPort) -> Result<quinn::Endpoint, ClientError> {
    let family: SocketAddr = if address.is_ipv6() { "[::1]:1" } else { "127.0.0.1:1" }.parse().expect("literal socket address");
    client_endpoint(family)
}

/// A connection to the coordinator on which Hello has been exchanged.
#[derive(Clone, Debug)]
pub struct CoordinatorConnection {
    pub connection: quinn::Connection,
    pub version: u16,
}

impl CoordinatorConnection {
    /// Resolves `address` (a name is looked up again at every call), then
    /// connects to its first address of the endpoint's family and says Hello.
    pub async fn dial(
        endpoint: &quinn::Endpoint,
        config: quinn::ClientConfig,
        address: &HostPort,
        server_name: &str,
        software: &str,
        timeout: Duration,
    ) -> Result<Self, ClientError> {
        let ipv6 = endpoint.local_addr().map(|a| a.is_ipv6()).unwrap_or(false);
        let resolve_error = |error| ClientError::Resolve { address: address.to_string(), error };
        let found = tokio::time::timeout(timeout, address.resolve(ipv6))
            .await
            .map_err(|_| resolve_error(std::io::Error::new(std::io::ErrorKind::TimedOut, "the name lookup timed out")))?
            .map_err(resolve_error)?;
        let addr = found.into_iter().find(|a| a.is_ipv6() == ipv6).ok_or_else(|| {
            let family = if ipv6 { "IPv6" } else { "IPv4" };
            resolve_error(std::io::Error::new(std::io::ErrorKind::NotFound, format!("the name has no {family} address")))
        })?;
        Self::connect(endpoint, config, addr, server_name, software, timeout).await
    }

    /// Connects and says Hello.
    pub async fn connect(
        endpoint: &quinn::Endpoint,
        config: quinn::ClientConfig,
        addr: SocketAddr,
        server_name: &str,
        software: &str,
        timeout: Duration,
    ) -> Result<Self, ClientError> {
        let connecting = endpoint.connect_with(config, addr, server_name).map_err(|source| ClientError::Connect { addr, source })?;
        let connection = tokio::time::timeout(timeout, connecting)
            .await
            .map_err(|_| ClientError::Timeout(addr))?
            .map_err(|source| ClientError::Connection { addr, source })?;
        let mut this = CoordinatorConnection { connection, version: 0 };
        let answer = tokio::time::timeout(timeout, this.request(&Request::Hello(Hello { versions: SUPPORTED, software: software.to_string() })))
            .await
            .map_err(|_| ClientError::Timeout(addr))??;
        match answer {
            Response::Hello(ack) => this.version = ack.version,
            other => return Err(ClientError::Unexpected(format!("{other:?}"))),
        }
        Ok(this)
    }

    /// Sends one request on a new bi-stream and reads its one answer. An
    /// error answer becomes [`ClientError::Refused`].
    pub async fn request(&self, request: &Request) -> Result<Response, ClientError> {
        let (mut send, mut recv) = self.open(request).await?;
        let _ = send.finish();
        let response = read_frame_for::<Response>(&mut recv, MAX_FRAME_LEN, &[], self.version).await.map_err(|e| self.closed_reason(e))?;
        match response {
            Response::Error(e) => Err(ClientError::Refused(e)),
            other => Ok(other),
        }
    }

    /// Opens a bi-stream and sends `request` on it, leaving both halves open
    /// (for the watch stream).
    pub async fn open(&self, request: &Request) -> Result<(quinn::SendStream, quinn::RecvStream), ClientError> {
        let (mut send, recv) = self.connection.open_bi().await.map_err(|e| ClientError::Stream(StreamError::Write(quinn::WriteError::ConnectionLost(e))))?;
        write_frame_for(&mut send, request, self.version).await.map_err(|e| self.closed_reason(e))?;
        Ok((send, recv))
    }

    /// Prefers the connection's close reason (which carries the wire error
    /// code) over the stream error that it caused.
    fn closed_reason(&self, e: StreamError) -> ClientError {
        match self.connection.close_reason() {
            Some(source) => ClientError::Connection { addr: self.connection.remote_address(), source },
            None => ClientError::Stream(e),
        }
    }
}

/// The fleet CA, fetched from the coordinator at `address` and accepted
/// only when its SHA-256 is `pin` and the coordinator's certificate
/// verifies against it for `server_name` (a seeded VM's first start).
pub async fn fetch_pinned_ca(address: &HostPort, server_name: &str, pin: &[u8; 32]) -> Result<Vec<u8>, ClientError> {
    let captured = crate::tls::CapturedCa::default();
    let config = crate::tls::pinned_client_config(*pin, captured.clone(), Duration::from_secs(30)).map_err(|e| ClientError::Unexpected(e.to_string()))?;
    let endpoint = client_endpoint_for(address)?;
    let connection = CoordinatorConnection::dial(&endpoint, config, address, server_name, "drover-agent", Duration::from_secs(20)).await?;
    connection.connection.close(0u32.into(), b"");
    endpoint.wait_idle().await;
    let ca = captured.lock().unwrap_or_else(|p| p.into_inner()).take();
    ca.ok_or_else(|| ClientError::Unexpected("the handshake finished without the pinned CA".into()))
}
