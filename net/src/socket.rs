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
    let buffers = Buffers { receive: getsockopt(socket, sockopt::RcvBuf).unwrap_or(0), send: getsockopt(socket, sockopt::SndBuf).unwrap_or(0) };
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

/// `count` UDP sockets bound to the same address with `SO_REUSEPORT` (the
/// kernel keeps each peer address on one of them, and lets only this
/// user's sockets join), each with raised buffers. Port 0 takes a free
/// port. An address already taken is refused as `UdpSocket::bind` refuses
/// it — a group already there, too: the address is first taken alone, so
/// that a second server never silently shares the first one's peers.
pub fn bind_shared(addr: SocketAddr, count: usize) -> std::io::Result<Vec<UdpSocket>> {
    use nix::sys::socket::{bind, socket, AddressFamily, SockFlag, SockType, SockaddrIn, SockaddrIn6};
    use std::os::fd::AsRawFd;
    let at = UdpSocket::bind(addr)?.local_addr()?;
    let mut sockets: Vec<UdpSocket> = Vec::with_capacity(count);
    for _ in 0..count.max(1) {
        let family = if at.is_ipv6() { AddressFamily::Inet6 } else { AddressFamily::Inet };
        let fd = socket(family, SockType::Datagram, SockFlag::SOCK_CLOEXEC, None)?;
        setsockopt(&fd, sockopt::ReusePort, &true)?;
        match at {
            SocketAddr::V4(a) => bind(fd.as_raw_fd(), &SockaddrIn::from(a))?,
            SocketAddr::V6(a) => bind(fd.as_raw_fd(), &SockaddrIn6::from(a))?,
        }
        let socket = UdpSocket::from(fd);
        raise_buffers(&socket);
        sockets.push(socket);
    }
    Ok(sockets)
}

/// A QUIC endpoint on a socket with raised buffers: a server when
/// `server` is given, else a client.
pub fn endpoint(addr: SocketAddr, server: Option<quinn::ServerConfig>) -> std::io::Result<quinn::Endpoint> {
    let socket = bind(addr)?;
    quinn::Endpoint::new(quinn::EndpointConfig::default(), server, socket, Arc::new(quinn::TokioRuntime))
}

/// The least time between two stateless resets a server sends.
const RESET_INTERVAL: std::time::Duration = std::time::Duration::from_micros(200);

/// QUIC server endpoints on `count` sockets sharing `addr`
/// ([`bind_shared`]), one endpoint (and receiving task) each. Their
/// stateless-reset key is derived from `secret` (a value the server keeps
/// across restarts, e.g. its private key): a restarted server then answers
/// packets of connections it no longer knows with resets the peers
/// recognise, so they reconnect at once instead of waiting out the idle
/// timeout; and a packet that reaches another socket than its
/// connection's is reset the same way. The connection-ID key is derived
/// from the same secret.
pub fn server_endpoints(addr: SocketAddr, count: usize, server: quinn::ServerConfig, secret: &[u8]) -> std::io::Result<Vec<quinn::Endpoint>> {
    let sockets = bind_shared(addr, count)?;
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
    sockets.into_iter().map(|socket| quinn::Endpoint::new(config.clone(), Some(server.clone()), socket, Arc::new(quinn::TokioRuntime))).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sockets_share_one_address_and_a_taken_address_is_refused() {
        let group = bind_shared("127.0.0.1:0".parse().expect("addr"), 3).expect("bind");
        let addr = group[0].local_addr().expect("addr");
        assert_eq!(group.len(), 3);
        assert!(group.iter().all(|s| s.local_addr().ok() == Some(addr)), "one address for all");
        // A second server on the same address, shared or not, is refused.
        let again = bind_shared(addr, 2).expect_err("a second group on a taken address");
        assert_eq!(again.kind(), std::io::ErrorKind::AddrInUse, "{again}");
        assert!(UdpSocket::bind(addr).is_err(), "a plain socket cannot take it either");
        // Every socket receives: the kernel spreads peers over them.
        let mut got = std::collections::HashSet::new();
        for socket in &group {
            socket.set_nonblocking(true).expect("nonblocking");
        }
        for _ in 0..64 {
            let peer = UdpSocket::bind("127.0.0.1:0").expect("peer");
            peer.send_to(b"x", addr).expect("send");
        }
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        let mut received = 0;
        while received < 64 && std::time::Instant::now() < deadline {
            for (i, socket) in group.iter().enumerate() {
                if socket.recv_from(&mut [0u8; 8]).is_ok() {
                    got.insert(i);
                    received += 1;
                }
            }
        }
        assert_eq!(received, 64, "every datagram arrived at one of the sockets");
        assert!(got.len() > 1, "64 peers all landed on one socket: {got:?}");
    }

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
