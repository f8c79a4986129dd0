//! Connecting to a coordinator: QUIC connect, then Hello on the first stream,
//! then one request per bi-stream.

use std::net::SocketAddr;
use std::time::Duration;

use drover_protocol::frame::MAX_FRAME_LEN;
use drover_protocol::v1::{Hello, Request, Response};
use drover_protocol::{ErrorCode, WireError, SUPPORTED};

use crate::stream::{read_frame, write_frame, StreamError};

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
    #[error("connection to {addr} failed: {source}")]
    Connection {
        addr: SocketAddr,
        #[source]
        source: quinn::ConnectionError,
    },
    #[error("timed out connecting to {0}")]
    Timeout(SocketAddr),
    /// An answer that took too long, on a connection that stays open.
    #[error("the coordinator at {addr} did not answer within {after:?}; the request will be sent again")]
    RequestTimeout { addr: SocketAddr, after: Duration },
    /// Nothing at all came from the peer while waiting for an answer.
    #[error("the coordinator at {addr} sent nothing for {after:?}; reconnecting")]
    Silent { addr: SocketAddr, after: Duration },
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
            ClientError::Stream(StreamError::Read(quinn::ReadExactError::ReadError(
                quinn::ReadError::ConnectionLost(e),
            ))) => connection_code(e),
            ClientError::Stream(StreamError::Write(quinn::WriteError::ConnectionLost(e))) => {
                connection_code(e)
            }
            _ => None,
        }
    }
}

/// The wire error code a connection was closed with, if any.
pub fn connection_code(e: &quinn::ConnectionError) -> Option<ErrorCode> {
    match e {
        quinn::ConnectionError::ApplicationClosed(close) => {
            ErrorCode::from_u32(u32::try_from(close.error_code.into_inner()).ok()?)
        }
        _ => None,
    }
}

/// A client endpoint bound to an ephemeral port of the address family of
/// `target`.
pub fn client_endpoint(target: SocketAddr) -> Result<quinn::Endpoint, ClientError> {
    let bind: SocketAddr = if target.is_ipv6() {
        "[::]:0".parse().expect("literal socket address")
    } else {
        "0.0.0.0:0".parse().expect("literal socket address")
    };
    crate::socket::endpoint(bind, None).map_err(ClientError::Bind)
}

/// A connection to the coordinator on which Hello has been exchanged.
#[derive(Clone, Debug)]
pub struct CoordinatorConnection {
    pub connection: quinn::Connection,
    pub version: u16,
}

impl CoordinatorConnection {
    /// Connects and says Hello.
    pub async fn connect(
        endpoint: &quinn::Endpoint,
        config: quinn::ClientConfig,
        addr: SocketAddr,
        server_name: &str,
        software: &str,
        timeout: Duration,
    ) -> Result<Self, ClientError> {
        let connecting = endpoint
            .connect_with(config, addr, server_name)
            .map_err(|source| ClientError::Connect { addr, source })?;
        let connection = tokio::time::timeout(timeout, connecting)
            .await
            .map_err(|_| ClientError::Timeout(addr))?
            .map_err(|source| ClientError::Connection { addr, source })?;
        let mut this = CoordinatorConnection {
            connection,
            version: 0,
        };
        let answer = tokio::time::timeout(
            timeout,
            this.request(&Request::Hello(Hello {
                versions: SUPPORTED,
                software: software.to_string(),
            })),
        )
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
        let response = read_frame::<Response>(&mut recv, MAX_FRAME_LEN)
            .await
            .map_err(|e| self.closed_reason(e))?;
        match response {
            Response::Error(e) => Err(ClientError::Refused(e)),
            other => Ok(other),
        }
    }

    /// Opens a bi-stream and sends `request` on it, leaving both halves open
    /// (for the watch stream).
    pub async fn open(
        &self,
        request: &Request,
    ) -> Result<(quinn::SendStream, quinn::RecvStream), ClientError> {
        let (mut send, recv) = self.connection.open_bi().await.map_err(|e| {
            ClientError::Stream(StreamError::Write(quinn::WriteError::ConnectionLost(e)))
        })?;
        write_frame(&mut send, request)
            .await
            .map_err(|e| self.closed_reason(e))?;
        Ok((send, recv))
    }

    /// Prefers the connection's close reason (which carries the wire error
    /// code) over the stream error that it caused.
    fn closed_reason(&self, e: StreamError) -> ClientError {
        match self.connection.close_reason() {
            Some(source) => ClientError::Connection {
                addr: self.connection.remote_address(),
                source,
            },
            None => ClientError::Stream(e),
        }
    }
}
