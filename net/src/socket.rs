//! UDP sockets for QUIC endpoints with large kernel buffers. One socket
//! carries every peer of an endpoint (thousands of agents on the
//! coordinator's; thousands of simulated agents on the load generator's),
//! and the default buffers (~208 KiB) overflow: the kernel then drops
//! datagrams (`UdpRcvbufErrors`) and QUIC retransmits. As root the buffers
//! are forced past `net.core.rmem_max`/`wmem_max`; otherwise they are
//! raised as far as those limits allow, and a smaller result is logged.

use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;

use nix::sys::socket::{getsockopt, setsockopt, sockopt};

/// The buffer size asked for, each way.
pub const UDP_BUFFER_BYTES: usize = 32 << 20;

/// The kernel buffer sizes a socket got (as the kernel reports them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Buffers {
    pub receive: usize,
    pub send: usize,
}

/// Raises a socket's buffers to [`UDP_BUFFER_BYTES`] where allowed.
pub fn raise_buffers(socket: &UdpSocket) -> Buffers {
    let size = UDP_BUFFER_BYTES;
    if setsockopt(socket, sockopt::RcvBufForce, &size).is_err() {
        let _ = setsockopt(socket, sockopt::RcvBuf, &size);
    }
    if setsockopt(socket, sockopt::SndBufForce, &size).is_err() {
        let _ = setsockopt(socket, sockopt::SndBuf, &size);
    }
    let buffers = Buffers {
        receive: getsockopt(socket, sockopt::RcvBuf).unwrap_or(0),
        send: getsockopt(socket, sockopt::SndBuf).unwrap_or(0),
    };
    if buffers.receive < size || buffers.send < size {
        tracing::warn!(
            receive = buffers.receive,
            send = buffers.send,
            asked = size,
            "UDP socket buffers are smaller than asked; with many peers raise net.core.rmem_max and net.core.wmem_max"
        );
    }
    buffers
}

/// A UDP socket bound to `addr` with raised buffers.
pub fn bind(addr: SocketAddr) -> std::io::Result<UdpSocket> {
    let socket = UdpSocket::bind(addr)?;
    raise_buffers(&socket);
    Ok(socket)
}

/// A QUIC endpoint on a socket with raised buffers: a server when
/// `server` is given, else a client.
pub fn endpoint(addr: SocketAddr, server: Option<quinn::ServerConfig>) -> std::io::Result<quinn::Endpoint> {
    let socket = bind(addr)?;
    quinn::Endpoint::new(quinn::EndpointConfig::default(), server, socket, Arc::new(quinn::TokioRuntime))
}

/// The least time between two stateless resets a server sends.
const RESET_INTERVAL: std::time::Duration = std::time::Duration::from_micros(200);

/// A QUIC server endpoint whose stateless-reset key is derived from
/// `secret` (a value the server keeps across restarts, e.g. its private
/// key). A restarted server then answers packets of connections it no
/// longer knows with resets the peers recognise: they reconnect at once
/// instead of waiting out the idle timeout. The connection-ID key is
/// derived from the same secret.
pub fn server_endpoint(addr: SocketAddr, server: quinn::ServerConfig, secret: &[u8]) -> std::io::Result<quinn::Endpoint> {
    use sha2::Digest;
    let mut derive = sha2::Sha256::new();
    derive.update(b"drover stateless reset key\0");
    derive.update(secret);
    let derived = derive.finalize();
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &derived);
    let mut config = quinn::EndpointConfig::new(Arc::new(key));
    // Connection IDs carry a keyed hash the endpoint checks before anything
    // else: with a key of each process's own, the restarted server dropped
    // the old connections' packets as invalid instead of resetting them.
    let cid_digest = sha2::Sha256::new().chain_update(b"drover connection id key\0").chain_update(secret).finalize();
    let cid_key = u64::from_le_bytes(cid_digest[..8].try_into().expect("a SHA-256 digest has 32 bytes"));
    config.cid_generator(move || Box::new(quinn_proto::HashedConnectionIdGenerator::from_key(cid_key)));
    // After a restart every peer's next packet asks for a reset; the
    // default (one per 20 ms) would take minutes for thousands of agents.
    // A reset is always smaller than the packet that caused it.
    config.min_reset_interval(RESET_INTERVAL);
    let socket = bind(addr)?;
    quinn::Endpoint::new(config, Some(server), socket, Arc::new(quinn::TokioRuntime))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_are_raised_above_the_default() {
        let socket = bind("127.0.0.1:0".parse().expect("addr")).expect("bind");
        let got = raise_buffers(&socket);
        let default = UdpSocket::bind("127.0.0.1:0").expect("bind");
        let before: usize = getsockopt(&default, sockopt::RcvBuf).expect("rcvbuf");
        assert!(got.receive >= before, "never below the default {before}: {got:?}");
        if nix::unistd::geteuid().is_root() {
            assert!(got.receive > before, "raised from the default {before}: {got:?}");
            assert!(got.receive >= UDP_BUFFER_BYTES && got.send >= UDP_BUFFER_BYTES, "forced as root: {got:?}");
        }
    }
}
