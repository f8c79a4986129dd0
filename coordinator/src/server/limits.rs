//! What clients can make the coordinator hold: handshakes in progress (in
//! total and per source address, with QUIC Retry above a threshold, counted
//! before any connection state is kept), established connections (with a
//! reserve only admins may take), connections without a certificate (in
//! total and per source address), requests per second of each identity,
//! the bytes of request frames in flight on all connections, and the
//! warnings refusals and bad streams write.

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
        Budgets { anonymous: FrameBudget::new(total / 8), admins: FrameBudget::new(total / 4), machines: FrameBudget::new(total - total / 8 - total / 4) }
    }
}

pub(super) struct Limits {
    /// Every request frame being read reserves its bytes from its share.
    pub budgets: Budgets,
    /// Streams granted to an admin's connection, and to a machine's.
    pub streams_per_connection: u32,
    pub streams_per_machine: u32,
    anonymous: Mutex<Anonymous>,
    max_anonymous: usize,
    max_anonymous_per_address: usize,
    handshakes: Mutex<Anonymous>,
    max_handshakes: usize,
    max_handshakes_per_address: usize,
    retry_above: usize,
    pub handshake_timeout: Duration,
    /// Established connections, and the most there may be for each kind.
    established: std::sync::atomic::AtomicUsize,
    max_connections: usize,
    admin_reserve: usize,
    pub connections_per_machine: usize,
    pub connections_per_admin: usize,
    rates: Mutex<HashMap<String, Bucket>>,
    machine_rate: u32,
    admin_rate: u32,
    pub warnings: PeerWarnings,
}

/// What to do with a new QUIC connection attempt.
pub(super) enum Admission {
    /// Let its handshake proceed; its place is held until the handshake ends.
    Handshake(HandshakeSlot),
    /// Ask it to prove its address first (QUIC Retry), keeping no state.
    Retry,
    /// Drop it, keeping no state: a cap on handshakes is reached (no
    /// answer: a flood gets nothing back).
    Drop(&'static str),
    /// Refuse it at once (the client learns it): the coordinator holds its
    /// maximum of connections.
    Refuse(&'static str),
}

/// A token bucket: `level` requests may be made now; it refills at the
/// identity's rate per second up to ten times that.
struct Bucket {
    level: f64,
    at: std::time::Instant,
}

/// Identities whose request rates are tracked at once; beyond it the
/// longest idle ones are forgotten (a full bucket is the same as none).
const TRACKED_RATES: usize = 100_000;

#[derive(Default)]
struct Anonymous {
    total: usize,
    by_address: HashMap<IpAddr, usize>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Limits {
    pub fn new(limits: &config::Limits, max_connections: usize) -> Arc<Self> {
        let budget = usize::try_from(limits.frames_in_flight_mib.saturating_mul(1 << 20)).unwrap_or(usize::MAX);
        Arc::new(Limits {
            budgets: Budgets::new(budget),
            streams_per_connection: limits.streams_per_connection,
            streams_per_machine: limits.streams_per_machine,
            anonymous: Mutex::default(),
            max_anonymous: limits.anonymous_connections,
            max_anonymous_per_address: limits.anonymous_per_address,
            handshakes: Mutex::default(),
            max_handshakes: limits.handshakes,
            max_handshakes_per_address: limits.handshakes_per_address,
            retry_above: limits.retry_above,
            handshake_timeout: limits.handshake_timeout,
            established: std::sync::atomic::AtomicUsize::new(0),
            max_connections,
            // At most a quarter of the connections are kept for admins.
            admin_reserve: limits.admin_reserve.min(max_connections / 4),
            connections_per_machine: limits.connections_per_machine,
            connections_per_admin: limits.connections_per_admin,
            rates: Mutex::default(),
            machine_rate: limits.machine_requests_per_second,
            admin_rate: limits.admin_requests_per_second,
            warnings: PeerWarnings::new(limits.warning_summary_interval),
        })
    }

    /// Decides on a connection attempt from `ip` before any state is kept
    /// for it: over the caps it is dropped; above `retry_above` handshakes
    /// in progress a client that has not proved its address is asked to.
    pub fn admit_handshake(self: &Arc<Self>, ip: IpAddr, validated: bool, may_retry: bool) -> Admission {
        if self.established.load(std::sync::atomic::Ordering::Relaxed) >= self.max_connections {
            return Admission::Refuse("the coordinator holds its maximum of connections (max_connections)");
        }
        let mut handshakes = lock(&self.handshakes);
        if handshakes.total >= self.retry_above && !validated && may_retry {
            return Admission::Retry;
        }
        if handshakes.total >= self.max_handshakes {
            return Admission::Drop("handshakes in progress are at their maximum (limits.handshakes)");
        }
        let from_ip = handshakes.by_address.get(&ip).copied().unwrap_or(0);
        if from_ip >= self.max_handshakes_per_address {
            return Admission::Drop("handshakes in progress from one address are at their maximum (limits.handshakes_per_address)");
        }
        handshakes.total += 1;
        handshakes.by_address.insert(ip, from_ip + 1);
        Admission::Handshake(HandshakeSlot { limits: self.clone(), ip })
    }

    /// Takes a place among the established connections for a peer that is
    /// (or is not) an admin; the last `admin_reserve` places are admins'.
    pub fn admit_connection(self: &Arc<Self>, admin: bool) -> Result<ConnectionSlot, WireError> {
        use std::sync::atomic::Ordering;
        let cap = if admin { self.max_connections } else { self.max_connections - self.admin_reserve };
        let taken = self.established.fetch_add(1, Ordering::Relaxed);
        if taken >= cap {
            self.established.fetch_sub(1, Ordering::Relaxed);
            return Err(WireError::new(
                ErrorCode::Unavailable,
                format!("the coordinator holds its maximum of {cap} connections{}; try again shortly", if admin { "" } else { " for machines" }),
            ));
        }
        Ok(ConnectionSlot { limits: self.clone() })
    }

    /// Whether `identity` (a machine or an admin) may make one more request
    /// now; else how long until it may.
    pub fn request(&self, identity: &str, admin: bool) -> Result<(), Duration> {
        let rate = f64::from(if admin { self.admin_rate } else { self.machine_rate });
        let burst = rate * 10.0;
        let now = std::time::Instant::now();
        let mut rates = lock(&self.rates);
        if rates.len() >= TRACKED_RATES && !rates.contains_key(identity) {
            // Forget the buckets that are full again.
            rates.retain(|_, b| b.level + now.duration_since(b.at).as_secs_f64() * rate < burst);
        }
        let bucket = rates.entry(identity.to_string()).or_insert(Bucket { level: burst, at: now });
        bucket.level = (bucket.level + now.duration_since(bucket.at).as_secs_f64() * rate).min(burst);
        bucket.at = now;
        if bucket.level >= 1.0 {
            bucket.level -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - bucket.level) / rate))
        }
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

/// A handshake in progress; its place is given back on drop.
pub(super) struct HandshakeSlot {
    limits: Arc<Limits>,
    ip: IpAddr,
}

impl Drop for HandshakeSlot {
    fn drop(&mut self) {
        let mut handshakes = lock(&self.limits.handshakes);
        handshakes.total = handshakes.total.saturating_sub(1);
        if let Some(n) = handshakes.by_address.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                handshakes.by_address.remove(&self.ip);
            }
        }
    }
}

/// An established connection; its place is given back on drop.
pub(super) struct ConnectionSlot {
    limits: Arc<Limits>,
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        self.limits.established.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
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

/// Refusals and bad streams per peer: the first of a kind from a peer is a
/// warning at once (within a process-wide budget per second), the rest are
/// debug lines and one summary per peer and kind per interval. What a peer
/// said is never written as it came ([`drover_protocol::text::printable`]).
pub(super) struct PeerWarnings {
    interval: Duration,
    state: Mutex<Counts>,
}

#[derive(Default)]
struct Counts {
    peers: HashMap<(IpAddr, &'static str), PeerCount>,
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
        self.note(ip, "bad streams", &error.to_string());
    }

    /// Counts one `kind` of trouble from `ip` ("bad streams", "refused
    /// connections", "enrollments with an unknown token", "denied
    /// requests"); the first in an interval is a warning naming `detail`.
    pub fn note(&self, ip: IpAddr, kind: &'static str, detail: &str) {
        let mut counts = lock(&self.state);
        if let Some(peer) = counts.peers.get_mut(&(ip, kind)) {
            peer.streams += 1;
            let streams = peer.streams;
            drop(counts);
            tracing::debug!(peer = %ip, kind, detail = %drover_protocol::text::printable(detail, 200), count = streams, "repeated");
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
        counts.peers.insert((ip, kind), PeerCount { streams: 1, warned });
        drop(counts);
        if warned {
            tracing::warn!(
                peer = %ip,
                detail = %drover_protocol::text::printable(detail, 200),
                "{kind} from {ip} (more are summarised every {})",
                humantime::format_duration(self.interval)
            );
        }
    }

    /// Writes the summary of the interval that ended and starts the next.
    fn summarise(&self) {
        let counts = std::mem::take(&mut *lock(&self.state));
        let interval = humantime::format_duration(self.interval);
        let mut peers: Vec<((IpAddr, &'static str), PeerCount)> = counts.peers.into_iter().filter(|(_, p)| p.streams > 1 || !p.warned).collect();
        peers.sort_by(|a, b| b.1.streams.cmp(&a.1.streams).then(a.0.cmp(&b.0)));
        for ((ip, kind), peer) in peers.iter().take(SUMMARY_PEERS) {
            tracing::warn!(peer = %ip, count = peer.streams, "{} {kind} from {ip} in the last {interval}", peer.streams);
        }
        let rest = peers.len().saturating_sub(SUMMARY_PEERS);
        let rest_streams: u64 = peers.iter().skip(SUMMARY_PEERS).map(|(_, p)| p.streams).sum::<u64>() + counts.uncounted;
        if rest_streams > 0 {
            tracing::warn!(peers = rest, count = rest_streams, "{rest_streams} refusals and bad streams from {rest} more peers in the last {interval}");
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
        let limits = Limits::new(&config::Limits { anonymous_connections: 3, anonymous_per_address: 2, ..Default::default() }, 100);
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

    #[test]
    fn handshakes_are_capped_before_any_state_and_retried_above_the_threshold() {
        let limits = Limits::new(&config::Limits { handshakes: 4, handshakes_per_address: 2, retry_above: 3, ..Default::default() }, 100);
        let a: IpAddr = "192.0.2.1".parse().expect("ip");
        let b: IpAddr = "192.0.2.2".parse().expect("ip");
        let c: IpAddr = "192.0.2.3".parse().expect("ip");
        let go = |x: Admission| match x {
            Admission::Handshake(slot) => slot,
            _ => panic!("admitted"),
        };
        let a1 = go(limits.admit_handshake(a, false, true));
        let _a2 = go(limits.admit_handshake(a, false, true));
        assert!(matches!(limits.admit_handshake(a, true, true), Admission::Drop(why) if why.contains("one address")));
        let _b1 = go(limits.admit_handshake(b, false, true));
        assert!(matches!(limits.admit_handshake(c, false, true), Admission::Retry), "above retry_above, unproven addresses are asked to prove them");
        let _c1 = go(limits.admit_handshake(c, true, true));
        assert!(matches!(limits.admit_handshake(c, true, true), Admission::Drop(why) if why.contains("limits.handshakes")));
        drop(a1);
        go(limits.admit_handshake(a, true, true));
    }

    #[test]
    fn the_last_connections_are_kept_for_admins_and_rates_refill() {
        let limits = Limits::new(&config::Limits { admin_reserve: 1, machine_requests_per_second: 1, ..Default::default() }, 4);
        let held: Vec<_> = (0..3).map(|_| limits.admit_connection(false).expect("a machine's place")).collect();
        assert!(limits.admit_connection(false).is_err(), "the last place is an admin's");
        let admin = limits.admit_connection(true).expect("an admin gets the reserve");
        assert!(limits.admit_connection(true).is_err(), "then it is full for everyone");
        drop(admin);
        drop(held);
        for _ in 0..10 {
            limits.request("m-1", false).expect("a burst of ten");
        }
        let wait = limits.request("m-1", false).expect_err("then the rate");
        assert!(wait <= Duration::from_secs(1), "{wait:?}");
        limits.request("m-2", false).expect("another identity has its own bucket");
    }
}
