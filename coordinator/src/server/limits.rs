//! What clients can make the coordinator hold, beside the connection cap in
//! the accept loop: connections without a certificate (in total and per
//! source address), the bytes of request frames in flight on all
//! connections, and the warnings bad streams write.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use drover_net::stream::{FrameBudget, StreamError};
use drover_protocol::{ErrorCode, WireError};

use crate::config;

/// The bytes of request frames one connection may hold in flight, by who
/// is there: enough for two of its largest frames.
pub(super) const ANONYMOUS_CONNECTION_BYTES: usize = 2 * drover_protocol::frame::MAX_UNAUTHENTICATED_FRAME_LEN;
pub(super) const MACHINE_CONNECTION_BYTES: usize = 2 * MAX_MACHINE_REQUEST_LEN;
pub(super) const ADMIN_CONNECTION_BYTES: usize = 2 * drover_protocol::frame::MAX_FRAME_LEN;

/// The largest request a machine sends (a health report is a few KiB);
/// answers to it and admin requests may reach the 8 MiB frame maximum.
pub(super) const MAX_MACHINE_REQUEST_LEN: usize = 1 << 20;

/// The request frames in flight, in three shares of `frames_in_flight_mib`
/// so that one kind of peer cannot starve another (like Kubernetes'
/// priority levels): connections without a certificate an eighth, admins a
/// quarter, machines the rest.
pub(super) struct Budgets {
    pub anonymous: FrameBudget,
    pub machines: FrameBudget,
    pub admins: FrameBudget,
}

impl Budgets {
    fn new(total: usize) -> Self {
        Budgets {
            anonymous: FrameBudget::new(total / 8),
            admins: FrameBudget::new(total / 4),
            machines: FrameBudget::new(total - total / 8 - total / 4),
        }
    }
}

pub(super) struct Limits {
    /// Every request frame being read reserves its bytes from its share.
    pub budgets: Budgets,
    /// Streams and unread bytes granted to an agent or admin connection.
    pub streams_per_connection: u32,
    anonymous: Mutex<Anonymous>,
    max_anonymous: usize,
    max_anonymous_per_address: usize,
    pub warnings: PeerWarnings,
}

#[derive(Default)]
struct Anonymous {
    total: usize,
    by_address: HashMap<IpAddr, usize>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Limits {
    pub fn new(limits: &config::Limits) -> Arc<Self> {
        let budget = usize::try_from(limits.frames_in_flight_mib.saturating_mul(1 << 20)).unwrap_or(usize::MAX);
        Arc::new(Limits {
            budgets: Budgets::new(budget),
            streams_per_connection: limits.streams_per_connection,
            anonymous: Mutex::default(),
            max_anonymous: limits.anonymous_connections,
            max_anonymous_per_address: limits.anonymous_per_address,
            warnings: PeerWarnings::new(limits.warning_summary_interval),
        })
    }

    /// Takes a place for a connection without a certificate from `ip`, or
    /// says which cap is reached.
    pub fn admit_anonymous(self: &Arc<Self>, ip: IpAddr) -> Result<AnonymousSlot, WireError> {
        let mut anonymous = lock(&self.anonymous);
        let from_ip = anonymous.by_address.get(&ip).copied().unwrap_or(0);
        if anonymous.total >= self.max_anonymous {
            return Err(WireError::new(
                ErrorCode::Unavailable,
                format!("the coordinator holds its maximum of {} connections without a certificate; try again shortly", self.max_anonymous),
            ));
        }
        if from_ip >= self.max_anonymous_per_address {
            return Err(WireError::new(
                ErrorCode::Unavailable,
                format!("{ip} holds the maximum of {} connections without a certificate; try again shortly", self.max_anonymous_per_address),
            ));
        }
        anonymous.total += 1;
        anonymous.by_address.insert(ip, from_ip + 1);
        Ok(AnonymousSlot { limits: self.clone(), ip })
    }

    /// A request refused because the frame budget is used up: a warning at
    /// most once a second, for the whole coordinator.
    pub fn budget_exhausted(&self, ip: IpAddr) {
        static LAST: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let second = crate::app::now_ms() / 1000;
        if LAST.swap(second, std::sync::atomic::Ordering::Relaxed) != second {
            tracing::warn!(peer = %ip, "a request was refused: the memory for requests in flight is used up (limits.frames_in_flight_mib)");
        } else {
            tracing::debug!(peer = %ip, "a request was refused: the memory for requests in flight is used up");
        }
    }

    /// Connections without a certificate held now.
    #[cfg(test)]
    fn anonymous(&self) -> usize {
        lock(&self.anonymous).total
    }
}

/// A connection without a certificate; its place is given back on drop.
pub(super) struct AnonymousSlot {
    limits: Arc<Limits>,
    ip: IpAddr,
}

impl Drop for AnonymousSlot {
    fn drop(&mut self) {
        let mut anonymous = lock(&self.limits.anonymous);
        anonymous.total = anonymous.total.saturating_sub(1);
        if let Some(n) = anonymous.by_address.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                anonymous.by_address.remove(&self.ip);
            }
        }
    }
}

/// How many warnings about a peer's first bad stream the whole coordinator
/// writes per second; the rest wait for the summary.
const WARNINGS_PER_SECOND: u64 = 5;

/// Peers named one by one in a summary; the rest share one line.
const SUMMARY_PEERS: usize = 20;

/// Peers counted one by one between summaries; bad streams from more
/// peers than this are counted together.
const COUNTED_PEERS: usize = 10_000;

/// Bad streams per peer: the first from a peer is a warning at once
/// (within a process-wide budget per second), the rest are debug lines and
/// one summary per peer per interval.
pub(super) struct PeerWarnings {
    interval: Duration,
    state: Mutex<Counts>,
}

#[derive(Default)]
struct Counts {
    peers: HashMap<IpAddr, PeerCount>,
    /// Bad streams from peers beyond `COUNTED_PEERS`.
    uncounted: u64,
    /// The second of the last immediate warning and how many were written
    /// in it.
    second: u64,
    written: u64,
}

struct PeerCount {
    streams: u64,
    /// Whether the first was written as a warning.
    warned: bool,
}

impl PeerWarnings {
    fn new(interval: Duration) -> Self {
        PeerWarnings { interval, state: Mutex::default() }
    }

    /// Counts a bad stream from `ip`; the first in an interval is a warning.
    pub fn bad_stream(&self, ip: IpAddr, error: &StreamError) {
        let mut counts = lock(&self.state);
        if let Some(peer) = counts.peers.get_mut(&ip) {
            peer.streams += 1;
            let streams = peer.streams;
            drop(counts);
            tracing::debug!(peer = %ip, error = %error, streams, "unreadable request; closing the stream");
            return;
        }
        if counts.peers.len() >= COUNTED_PEERS {
            counts.uncounted += 1;
            return;
        }
        let second = crate::app::now_ms() / 1000;
        if counts.second != second {
            counts.second = second;
            counts.written = 0;
        }
        let warned = counts.written < WARNINGS_PER_SECOND;
        counts.written += u64::from(warned);
        counts.peers.insert(ip, PeerCount { streams: 1, warned });
        drop(counts);
        if warned {
            tracing::warn!(peer = %ip, error = %error, "unreadable request; closing the stream (more from this peer are summarised every {})", humantime::format_duration(self.interval));
        }
    }

    /// Writes the summary of the interval that ended and starts the next.
    fn summarise(&self) {
        let counts = std::mem::take(&mut *lock(&self.state));
        let interval = humantime::format_duration(self.interval);
        let mut peers: Vec<(IpAddr, PeerCount)> = counts
            .peers
            .into_iter()
            .filter(|(_, p)| p.streams > 1 || !p.warned)
            .collect();
        peers.sort_by(|a, b| b.1.streams.cmp(&a.1.streams).then(a.0.cmp(&b.0)));
        for (ip, peer) in peers.iter().take(SUMMARY_PEERS) {
            tracing::warn!(peer = %ip, streams = peer.streams, "{} bad streams from {ip} in the last {interval}", peer.streams);
        }
        let rest = peers.len().saturating_sub(SUMMARY_PEERS);
        let rest_streams: u64 = peers.iter().skip(SUMMARY_PEERS).map(|(_, p)| p.streams).sum::<u64>() + counts.uncounted;
        if rest_streams > 0 {
            tracing::warn!(peers = rest, streams = rest_streams, "{rest_streams} bad streams from {rest} more peers in the last {interval}");
        }
    }

    /// Writes a summary every interval, forever.
    pub async fn run(&self) {
        let mut tick = tokio::time::interval(self.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tick.tick().await;
            self.summarise();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn anonymous_places_are_capped_in_total_and_per_address_and_given_back() {
        let limits = Limits::new(&config::Limits { anonymous_connections: 3, anonymous_per_address: 2, ..Default::default() });
        let a: IpAddr = "192.0.2.1".parse().expect("ip");
        let b: IpAddr = "192.0.2.2".parse().expect("ip");
        let a1 = limits.admit_anonymous(a).expect("first");
        let _a2 = limits.admit_anonymous(a).expect("second");
        let refused = limits.admit_anonymous(a).err().expect("a third from one address is refused");
        assert_eq!(refused.code, ErrorCode::Unavailable);
        assert!(refused.message.contains("192.0.2.1"), "{}", refused.message);
        let _b1 = limits.admit_anonymous(b).expect("another address");
        let full = limits.admit_anonymous(b).err().expect("the total is reached");
        assert!(full.message.contains("maximum of 3"), "{}", full.message);
        drop(a1);
        assert_eq!(limits.anonymous(), 2);
        limits.admit_anonymous(b).expect("a place given back is taken again");
    }
}
