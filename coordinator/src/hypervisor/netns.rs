//! Confining a local VM's network. QEMU runs in a network namespace of its
//! own that holds only a loopback interface; its user networking takes the
//! guest's packets for 10.0.2.2 to that loopback, where a relay bound to the
//! coordinator's port forwards UDP to the coordinator on the host. The
//! guest reaches the coordinator and nothing else: no other port, no host
//! service, no outside address.
//!
//! The relay runs in the coordinator (one task a VM, at most
//! [`MAX_PEERS`] guest sockets each); after a coordinator restart it is set
//! up again inside the running QEMU's namespace (`/proc/PID/ns/net`).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use nix::sched::CloneFlags;

/// Guest sockets one VM may relay at once (an agent uses one or two).
pub const MAX_PEERS: usize = 16;

/// A VM's relay; stops when dropped.
pub struct Relay(tokio::task::JoinHandle<()>);

impl Drop for Relay {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Runs `work` on a thread of its own inside a network namespace: a new one
/// (its loopback brought up) when `enter` is `None`, else the namespace at
/// that path. Processes the work starts live in that namespace.
pub fn in_namespace<T: Send + 'static>(enter: Option<PathBuf>, work: impl FnOnce() -> std::io::Result<T> + Send + 'static) -> std::io::Result<T> {
    std::thread::spawn(move || {
        match enter {
            None => {
                nix::sched::unshare(CloneFlags::CLONE_NEWNET).map_err(std::io::Error::from)?;
                let up = std::process::Command::new("ip").args(["link", "set", "lo", "up"]).output()?;
                if !up.status.success() {
                    return Err(std::io::Error::other(format!("cannot bring up the VM namespace's loopback: {}", String::from_utf8_lossy(&up.stderr).trim())));
                }
            }
            Some(path) => {
                let ns = std::fs::File::open(&path)?;
                nix::sched::setns(ns, CloneFlags::CLONE_NEWNET).map_err(std::io::Error::from)?;
            }
        }
        work()
    })
    .join()
    .map_err(|_| std::io::Error::other("the namespace thread panicked"))?
}

/// The namespace-side socket of a relay: 127.0.0.1:`port` in the current
/// thread's namespace.
pub fn bind_guest_side(port: u16) -> std::io::Result<std::net::UdpSocket> {
    let socket = std::net::UdpSocket::bind(("127.0.0.1", port))?;
    socket.set_nonblocking(true)?;
    Ok(socket)
}

/// Forwards datagrams between the guest side (in the VM's namespace) and
/// `target` (the coordinator, on the host), one host socket per guest
/// socket.
pub fn relay(guest_side: std::net::UdpSocket, target: SocketAddr) -> std::io::Result<Relay> {
    let guest_side = Arc::new(tokio::net::UdpSocket::from_std(guest_side)?);
    let task = tokio::spawn(async move {
        let mut peers: HashMap<SocketAddr, Arc<tokio::net::UdpSocket>> = HashMap::new();
        let mut back = tokio::task::JoinSet::new();
        let mut buf = vec![0u8; 65_536];
        loop {
            let Ok((n, peer)) = guest_side.recv_from(&mut buf).await else { continue };
            let up = match peers.get(&peer) {
                Some(up) => up.clone(),
                None => {
                    if peers.len() >= MAX_PEERS {
                        continue;
                    }
                    let bind: SocketAddr = if target.is_ipv6() { "[::1]:0" } else { "127.0.0.1:0" }.parse().expect("literal address");
                    let Ok(up) = tokio::net::UdpSocket::bind(bind).await else { continue };
                    if up.connect(target).await.is_err() {
                        continue;
                    }
                    let up = Arc::new(up);
                    let (from, to) = (up.clone(), guest_side.clone());
                    back.spawn(async move {
                        let mut buf = vec![0u8; 65_536];
                        while let Ok(n) = from.recv(&mut buf).await {
                            let _ = to.send_to(&buf[..n], peer).await;
                        }
                    });
                    peers.insert(peer, up.clone());
                    up
                }
            };
            let _ = up.send(&buf[..n]).await;
        }
    });
    Ok(Relay(task))
}
