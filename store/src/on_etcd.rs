//! The trees in an etcd cluster (v3 API), for several coordinators over one
//! replicated store. Each tree is a key prefix, `{prefix}{tree}/`; a value
//! is acknowledged once a quorum of members has it on disk, so a flush has
//! nothing left to do.
//!
//! Transactions are optimistic, as etcd's own software transactional
//! memory: the body reads at one revision of the cluster (each key it reads
//! remembered with the revision that last changed it) and buffers its
//! writes; the commit is one etcd `Txn` that compares every key read
//! against the revision seen and, only if none changed, applies the
//! writes. A conflict runs the body again. etcd bounds a `Txn` (128
//! operations by default), so a body touches at most
//! [`EtcdOptions::max_txn_ops`] keys.
//!
//! The [`Backend`] calls are synchronous, like sled's: each one is run on
//! the backend's own runtime thread and waited for, so a call never needs
//! the caller's runtime.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use etcd_client::{Client, Compare, CompareOp, ConnectOptions, EventType, GetOptions, SortOrder, SortTarget, Txn, TxnOp, WatchOptions};

use crate::backend::{Backend, BackendTx, BoxFuture, Pairs, Tree, TxBody, Watched};
use crate::Error;

/// A value and the revision that last changed it.
type Versioned = (Vec<u8>, i64);

/// A value, the revision that last changed it and the one that created it.
type Stored = (Vec<u8>, i64, i64);

/// How to reach the cluster.
#[derive(Debug, Clone)]
pub struct EtcdOptions {
    /// Client URLs of the members (`http://127.0.0.1:2379`, `https://…`).
    pub endpoints: Vec<String>,
    /// Every key of this store starts with it: several fleets can share a
    /// cluster, each under its own prefix.
    pub prefix: String,
    /// Mutual TLS: the CA that signed the members' certificates and this
    /// client's certificate and key (PEM).
    pub tls: Option<EtcdTls>,
    /// How long one call may take before the cluster counts as unavailable
    /// (no quorum answers within it).
    pub timeout: Duration,
    /// The cluster's `--max-txn-ops` (etcd's default is 128).
    pub max_txn_ops: usize,
    /// The cluster's `--max-request-bytes` (etcd's default, 1.5 MiB): a
    /// transaction whose keys and values add up to more is refused before
    /// it is sent.
    pub max_request_bytes: usize,
}

/// etcd's default `--max-request-bytes`.
pub const DEFAULT_MAX_REQUEST_BYTES: usize = 1536 * 1024;

impl EtcdOptions {
    pub fn new(endpoints: Vec<String>, prefix: impl Into<String>) -> Self {
        EtcdOptions {
            endpoints,
            prefix: prefix.into(),
            tls: None,
            timeout: Duration::from_secs(5),
            max_txn_ops: 128,
            max_request_bytes: DEFAULT_MAX_REQUEST_BYTES,
        }
    }
}

/// Client certificates for an etcd cluster that requires them.
#[derive(Clone)]
pub struct EtcdTls {
    pub ca_pem: Vec<u8>,
    pub cert_pem: Vec<u8>,
    pub key_pem: Vec<u8>,
}

impl std::fmt::Debug for EtcdTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("EtcdTls { .. }")
    }
}

/// Which failed calls are made again.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Retry {
    Always,
    NeverSent,
}

/// Whether a call failed before any member took it: no connection, or a
/// member without a leader (etcd's own client retries mutations on those
/// alone; "leader changed" may come after the change was applied).
fn never_sent(e: &etcd_client::Error) -> bool {
    match e {
        etcd_client::Error::GRpcStatus(status) => {
            let message = status.message();
            status.code() == tonic::Code::Unavailable
                && (message.contains("connect") || message.contains("no leader") || message.contains("no address available"))
        }
        etcd_client::Error::TransportError(_) => true,
        _ => false,
    }
}

/// How often a conflicting transaction is run again before it fails.
const MAX_ATTEMPTS: usize = 100;

pub struct EtcdBackend {
    client: Client,
    runtime: tokio::runtime::Handle,
    /// Dropped with the backend: ends the runtime's thread.
    _stop: tokio::sync::oneshot::Sender<()>,
    options: EtcdOptions,
    /// This process's membership among the fleet's coordinators, once it
    /// joined ([`EtcdBackend::join`]): every transaction is fenced by it.
    member: std::sync::Mutex<Option<Member>>,
    /// True once this process lost what it held (its leadership, or its
    /// name, to another process): nothing it writes is accepted any more.
    lost: tokio::sync::watch::Sender<bool>,
}

/// Where each coordinator announces itself, under the fleet's prefix.
pub const PRESENCE_PREFIX: &str = "presence/";

/// This process among the fleet's coordinators: its presence key under a
/// lease of its own that a task renews. Every transaction compares that
/// the key is still on that lease, so a process whose lease ran out (it
/// died, was paused past it or cut off) writes nothing more until it has
/// joined again; the leader key, while it leads, hangs on the same lease,
/// so nobody else can lead before this process's writes are fenced.
struct Member {
    /// `presence/NAME`, under the fleet's prefix.
    key: Vec<u8>,
    name: String,
    /// Who it is, as the leader key says.
    holder: String,
    ttl: Duration,
    lease: i64,
    keeper: tokio::task::JoinHandle<()>,
    /// Until when the lease surely lives (Unix ms): a renewal sent at `t`
    /// whose answer gave `ttl` keeps it at least until `t + ttl`.
    holds_until: Arc<AtomicU64>,
    /// What it announced last (announced again when it joins again).
    value: Vec<u8>,
    /// Whether it holds the leader key (on `lease`).
    leading: bool,
}

/// The key the leading coordinator holds, naming itself, under its lease.
pub const CLAIM_KEY: &str = "claims/serving";

/// Keys a page of a range read holds: records are a few KiB at most, so a
/// page stays far under etcd's client's 4 MiB message limit.
const PAGE: usize = 128;

/// The first key after every key that starts with `prefix` (etcd's range
/// end for a prefix).
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    // Every byte 0xff: to the end of the keyspace.
    vec![0]
}

/// Now, in milliseconds since the Unix epoch.
fn unix_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// A request of `bytes` that the cluster (taking `limit`) refuses.
fn too_large_request(bytes: usize, limit: usize) -> Error {
    Error::TooLarge(format!(
        "one transaction would send {} KiB; etcd takes at most {} KiB a request (--max-request-bytes, store.max_request_bytes)",
        bytes.div_ceil(1024),
        limit / 1024
    ))
}

/// `e` from [`EtcdBackend::retrying`], saying what failed.
fn context(what: &str, e: Error) -> Error {
    match e {
        Error::Unavailable(why) => Error::Unavailable(format!("{what}: {why}")),
        other => other,
    }
}

fn unavailable(what: &str, e: impl std::fmt::Display) -> Error {
    Error::Unavailable(format!("{what}: {e}"))
}

impl EtcdBackend {
    /// Connects to the cluster (and checks that it answers).
    pub fn connect(options: EtcdOptions) -> Result<Self, Error> {
        if options.endpoints.is_empty() {
            return Err(Error::Unavailable("no etcd endpoints given; name at least one member's client URL".into()));
        }
        let runtime =
            tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| unavailable("the etcd client's runtime could not start", e))?;
        let handle = runtime.handle().clone();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        std::thread::Builder::new()
            .name("drover-etcd".into())
            .spawn(move || {
                runtime.block_on(async {
                    let _ = stopped.await;
                });
            })
            .map_err(|e| unavailable("the etcd client's thread could not start", e))?;
        let mut connect = ConnectOptions::new().with_connect_timeout(options.timeout).with_timeout(options.timeout);
        if let Some(tls) = &options.tls {
            let identity = etcd_client::Identity::from_pem(&tls.cert_pem, &tls.key_pem);
            let ca = etcd_client::Certificate::from_pem(&tls.ca_pem);
            connect = connect.with_tls(etcd_client::TlsOptions::new().ca_certificate(ca).identity(identity));
        }
        let endpoints = options.endpoints.clone();
        let client = run(&handle, async move { Client::connect(endpoints, Some(connect)).await })
            .map_err(|e| unavailable(&format!("etcd at {} cannot be reached", options.endpoints.join(", ")), e))?;
        let backend =
            EtcdBackend { client, runtime: handle, _stop: stop, options, member: std::sync::Mutex::new(None), lost: tokio::sync::watch::Sender::new(false) };
        backend.get(Tree::Meta, b"-").map_err(|e| match e {
            Error::Unavailable(why) => Error::Unavailable(format!("etcd at {} does not answer: {why}", backend.options.endpoints.join(", "))),
            other => other,
        })?;
        Ok(backend)
    }

    /// Joins the fleet's coordinators as `name` (announcing `value` under
    /// `presence/NAME`), on a lease of `ttl` renewed while the backend
    /// lives; `holder` is what the leader key says while it leads. From
    /// then on every transaction is fenced by that lease. Joining again
    /// takes a new lease (and lets go of leading).
    pub fn join(&self, name: &str, holder: &str, value: &[u8], ttl: Duration) -> Result<(), Error> {
        let ttl_secs = i64::try_from(ttl.as_secs().max(2)).unwrap_or(i64::MAX);
        // A grant sent twice leaves one lease unused, which runs out.
        let lease = self.on_leases("an etcd lease could not be granted", move |mut leases| async move { leases.grant(ttl_secs, None).await })?.id();
        let key = format!("{}{PRESENCE_PREFIX}{name}", self.options.prefix).into_bytes();
        if let Err(e) = self.put_presence(key.clone(), lease, value) {
            self.revoke(lease);
            return Err(e);
        }
        let holds_until = Arc::new(AtomicU64::new(unix_ms() + 1000 * u64::try_from(ttl_secs).unwrap_or(0)));
        let keeper = self.keep_alive(lease, ttl_secs, "this coordinator's lease", holds_until.clone());
        let member = Member { key, name: name.to_string(), holder: holder.to_string(), ttl, lease, keeper, holds_until, value: value.to_vec(), leading: false };
        let old = self.member.lock().map_err(|_| Error::Aborted)?.replace(member);
        if let Some(old) = old {
            old.keeper.abort();
            self.revoke(old.lease);
        }
        Ok(())
    }

    /// Tries to lead: puts the leader key on this member's lease if nobody
    /// holds it. True while this process leads; it stops leading only when
    /// its lease ends (and then its writes are fenced).
    pub fn campaign(&self) -> Result<bool, Error> {
        let (lease, holder) = match self.member.lock().map_err(|_| Error::Aborted)?.as_ref() {
            Some(m) if m.leading => return Ok(true),
            Some(m) => (m.lease, m.holder.clone()),
            None => return Ok(false),
        };
        let key = format!("{}{CLAIM_KEY}", self.options.prefix).into_bytes();
        let kv = self.client.kv_client();
        let txn = Txn::new()
            .when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
            .and_then([TxnOp::put(key.clone(), holder.as_bytes().to_vec(), Some(etcd_client::PutOptions::new().with_lease(lease)))])
            .or_else([TxnOp::get(key, None)]);
        // Sent again after an answer was lost, it finds the key on this
        // lease (below): the same outcome.
        let response = self
            .retrying(Retry::Always, || {
                let (mut kv, txn) = (kv.clone(), txn.clone());
                async move { kv.txn(txn).await }
            })
            .map_err(|e| context("campaigning to lead failed", e))?;
        let leads = response.succeeded()
            || response.op_responses().into_iter().any(|r| match r {
                // Already on this lease (an answer lost on its way).
                etcd_client::TxnOpResponse::Get(get) => get.kvs().first().is_some_and(|kv| kv.lease() == lease),
                _ => false,
            });
        if leads {
            if let Some(m) = self.member.lock().map_err(|_| Error::Aborted)?.as_mut().filter(|m| m.lease == lease) {
                m.leading = true;
            }
        }
        Ok(leads)
    }

    /// Who leads now, as the leader key says (`None`: nobody).
    pub fn leader(&self) -> Result<Option<String>, Error> {
        let (found, _) = self.read_full(format!("{}{CLAIM_KEY}", self.options.prefix).as_bytes(), 0)?;
        Ok(found.map(|(value, _, _)| String::from_utf8_lossy(&value).to_string()))
    }

    /// Joins as `holder` (announcing nothing) and leads, or
    /// [`Error::Held`] naming who leads instead.
    pub fn claim(&self, holder: &str, ttl: Duration) -> Result<(), Error> {
        self.join(holder, holder, b"", ttl)?;
        if self.campaign()? {
            return Ok(());
        }
        Err(Error::Held(self.leader()?.unwrap_or_default()))
    }

    /// A task that renews `lease` (of `ttl_secs`) a few times a lease, until
    /// aborted or the lease ran out; `what` names it in the log.
    fn keep_alive(&self, lease: i64, ttl_secs: i64, what: &'static str, holds_until: Arc<AtomicU64>) -> tokio::task::JoinHandle<()> {
        let client = self.client.clone();
        let period = Duration::from_secs(u64::try_from(ttl_secs).unwrap_or(3) / 3).max(Duration::from_millis(500));
        self.runtime.spawn(async move {
            let mut leases = client.lease_client();
            loop {
                match leases.keep_alive(lease).await {
                    Ok((mut keeper, mut answers)) => loop {
                        let sent = unix_ms();
                        if keeper.keep_alive().await.is_err() {
                            break;
                        }
                        // A member that went away without closing the
                        // stream would hold it silent: no answer within a
                        // period renews on a new stream (another member).
                        match tokio::time::timeout(period, answers.message()).await {
                            Ok(Ok(Some(answer))) if answer.ttl() > 0 => {
                                holds_until.fetch_max(sent + 1000 * u64::try_from(answer.ttl()).unwrap_or(0), Ordering::SeqCst);
                            }
                            Ok(Ok(Some(_))) => {
                                tracing::error!("{what} expired (its lease ran out)");
                                return;
                            }
                            Ok(_) => break,
                            Err(_) => {
                                tracing::warn!("no answer to renewing {what} in {period:?}; renewing on a new stream");
                                break;
                            }
                        }
                        tokio::time::sleep(period).await;
                    },
                    Err(e) => tracing::warn!(error = %e, "renewing {what} failed; trying again"),
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        })
    }

    /// Writes this process's presence `value` under `key` on `lease`.
    fn put_presence(&self, key: Vec<u8>, lease: i64, value: &[u8]) -> Result<(), Error> {
        let kv = self.client.kv_client();
        // The same put again is the same outcome.
        self.retrying(Retry::Always, || {
            let (mut kv, key, value) = (kv.clone(), key.clone(), value.to_vec());
            async move { kv.put(key, value, Some(etcd_client::PutOptions::new().with_lease(lease))).await }
        })
        .map_err(|e| context("announcing this coordinator in etcd failed", e))?;
        Ok(())
    }

    /// Every coordinator announced now: name, value and the seconds its
    /// lease has left.
    pub fn presences(&self) -> Result<Vec<crate::Presence>, Error> {
        let from = format!("{}{PRESENCE_PREFIX}", self.options.prefix).into_bytes();
        let response = self.ranged(from.clone(), GetOptions::new().with_prefix())?;
        let leader = format!("{}{CLAIM_KEY}", self.options.prefix).into_bytes();
        let leader_lease = self.ranged(leader, GetOptions::new())?.kvs().first().map(|kv| kv.lease());
        let mut out = Vec::new();
        for kv in response.kvs() {
            let name = String::from_utf8_lossy(&kv.key()[from.len()..]).to_string();
            let mut leases = self.client.lease_client();
            let lease = kv.lease();
            let ttl_left_s = run(&self.runtime, async move { leases.time_to_live(lease, None).await }).map(|t| t.ttl()).unwrap_or(-1);
            out.push(crate::Presence { name, value: kv.value().to_vec(), ttl_left_s, leads: leader_lease == Some(lease) });
        }
        Ok(out)
    }

    /// After this member's lease ran out (paused, cut off, or etcd without
    /// quorum past it): joins again under its name, unless another process
    /// took the name; leads again if it led and nobody took the lead
    /// meanwhile. Otherwise [`Error::Fenced`], and [`Backend::lost`] turns
    /// true: whatever it decided meanwhile must not be written, so every
    /// transaction from then on is refused.
    fn reclaim(&self) -> Result<(), Error> {
        let (key, lease, name, holder, ttl, value, leading) = match self.member.lock() {
            Ok(held) => match held.as_ref() {
                Some(m) => (m.key.clone(), m.lease, m.name.clone(), m.holder.clone(), m.ttl, m.value.clone(), m.leading),
                None => return Ok(()),
            },
            Err(_) => return Err(Error::Fenced),
        };
        match self.lease_of(&key)? {
            // Its lease lives still (renewals got through, their answers
            // did not): it holds as long as etcd says.
            Some(now) if now == lease => return self.lease_lives(lease),
            Some(_) => {
                tracing::error!(name, "another process announced itself under this coordinator's name");
                self.lost.send_replace(true);
                return Err(Error::Fenced);
            }
            None => {}
        }
        if leading {
            let lead = format!("{}{CLAIM_KEY}", self.options.prefix).into_bytes();
            if self.lease_of(&lead)?.is_some_and(|now| now != lease) {
                // Another leads: what this one decided as leader must not
                // be written, under this lease or a new one.
                self.lost.send_replace(true);
                return Err(Error::Fenced);
            }
        }
        self.join(&name, &holder, &value, ttl)?;
        if leading {
            if !self.campaign()? {
                self.lost.send_replace(true);
                return Err(Error::Fenced);
            }
            tracing::warn!("this coordinator's lease had run out with nobody taking the lead; it leads again");
        } else {
            tracing::warn!("this coordinator's lease had run out; it joined again");
        }
        Ok(())
    }

    /// Takes from etcd how long this member's `lease` has left, so that
    /// [`Backend::claim_lapsed`] trusts it again.
    fn lease_lives(&self, lease: i64) -> Result<(), Error> {
        let asked = unix_ms();
        let left = self
            .on_leases("how long this coordinator's lease has left could not be read", move |mut leases| async move { leases.time_to_live(lease, None).await })?
            .ttl();
        if let (Ok(left), Ok(held)) = (u64::try_from(left), self.member.lock()) {
            if let Some(m) = held.as_ref().filter(|m| m.lease == lease) {
                m.holds_until.fetch_max(asked + 1000 * left, Ordering::SeqCst);
            }
        }
        Ok(())
    }

    /// A call of etcd's lease service, again past a member that is gone
    /// (each one here is idempotent); `what` says what failed.
    fn on_leases<T: Send + 'static, F>(&self, what: &str, call: impl Fn(etcd_client::LeaseClient) -> F) -> Result<T, Error>
    where
        F: Future<Output = Result<T, etcd_client::Error>> + Send + 'static,
    {
        let leases = self.client.lease_client();
        self.retrying(Retry::Always, || call(leases.clone())).map_err(|e| context(what, e))
    }

    /// The lease `full` is on (0: none), if it exists.
    fn lease_of(&self, full: &[u8]) -> Result<Option<i64>, Error> {
        let response = self.ranged(full.to_vec(), GetOptions::new())?;
        Ok(response.kvs().first().map(|kv| kv.lease()))
    }

    fn revoke(&self, lease: i64) {
        let mut leases = self.client.lease_client();
        self.runtime.spawn(async move {
            let _ = leases.revoke(lease).await;
        });
    }

    /// Every change to `tree` from now on, in the order etcd made them: a
    /// task on the backend's runtime follows an etcd watch, and watches
    /// again from the next revision when the stream breaks (a member lost,
    /// the network). When events may have been missed (the history it needs
    /// was compacted), [`Watched::Resync`] says to read again what matters.
    /// Ends when the receiver is dropped.
    pub fn watch(&self, tree: Tree) -> tokio::sync::mpsc::Receiver<Watched> {
        let (tx, rx) = tokio::sync::mpsc::channel(4096);
        let client = self.client.clone();
        let prefix = self.key(tree, b"");
        self.runtime.spawn(async move {
            // 0: from now.
            let mut from = 0i64;
            loop {
                let mut watcher = client.watch_client();
                let mut options = WatchOptions::new().with_prefix();
                if from > 0 {
                    options = options.with_start_revision(from);
                }
                match watcher.watch(prefix.clone(), Some(options)).await {
                    Ok(mut stream) => loop {
                        match stream.message().await {
                            Ok(Some(answer)) if answer.canceled() || answer.compact_revision() > 0 => {
                                tracing::warn!(compacted = answer.compact_revision(), "an etcd watch was cancelled; reading again");
                                from = 0;
                                if tx.send(Watched::Resync).await.is_err() {
                                    return;
                                }
                                break;
                            }
                            Ok(Some(answer)) => {
                                for event in answer.events() {
                                    let Some(kv) = event.kv() else { continue };
                                    from = kv.mod_revision() + 1;
                                    let key = kv.key().get(prefix.len()..).unwrap_or_default().to_vec();
                                    let change = match event.event_type() {
                                        EventType::Put => Watched::Put(key, kv.value().to_vec()),
                                        EventType::Delete => Watched::Deleted(key),
                                    };
                                    if tx.send(change).await.is_err() {
                                        return;
                                    }
                                }
                            }
                            Ok(None) => break,
                            Err(e) => {
                                tracing::warn!(error = %e, "an etcd watch broke; watching again");
                                break;
                            }
                        }
                    },
                    Err(e) => tracing::warn!(error = %e, "an etcd watch could not start; trying again"),
                }
                if tx.is_closed() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        });
        rx
    }

    /// This member's presence key and lease, once joined.
    fn fence(&self) -> Option<(Vec<u8>, i64)> {
        self.member.lock().ok()?.as_ref().map(|m| (m.key.clone(), m.lease))
    }

    /// A raw key's value, mod revision and create revision.
    fn read_full(&self, full: &[u8], revision: i64) -> Result<(Option<Stored>, i64), Error> {
        let kv = self.client.kv_client();
        let full = full.to_vec();
        let mut options = GetOptions::new();
        if revision > 0 {
            options = options.with_revision(revision);
        }
        let response = self.retrying(Retry::Always, || {
            let (mut kv, full, options) = (kv.clone(), full.clone(), options.clone());
            async move { kv.get(full, Some(options)).await }
        })?;
        let at = response.header().map_or(0, |h| h.revision());
        Ok((response.kvs().first().map(|kv| (kv.value().to_vec(), kv.mod_revision(), kv.create_revision())), at))
    }

    fn key(&self, tree: Tree, key: &[u8]) -> Vec<u8> {
        let mut full = Vec::with_capacity(self.options.prefix.len() + tree.name().len() + 1 + key.len());
        full.extend_from_slice(self.options.prefix.as_bytes());
        full.extend_from_slice(tree.name().as_bytes());
        full.push(b'/');
        full.extend_from_slice(key);
        full
    }

    fn strip(&self, tree: Tree, full: &[u8]) -> Vec<u8> {
        full[self.key(tree, b"").len()..].to_vec()
    }

    /// One value and the revision that last changed it (0: absent), read at
    /// `revision` (0: the newest); and the revision the cluster answered at.
    fn read(&self, tree: Tree, key: &[u8], revision: i64) -> Result<(Option<Versioned>, i64), Error> {
        let (found, at) = self.read_full(&self.key(tree, key), revision)?;
        Ok((found.map(|(value, modified, _)| (value, modified)), at))
    }

    /// At most `limit` pairs of `from..to` (full keys), in key order or from
    /// the end, read a page at a time (an answer of etcd's client stays
    /// under its 4 MiB message limit whatever the fleet's size), every page
    /// at the first one's revision: one consistent view.
    fn paged(&self, tree: Tree, from: Vec<u8>, to: Vec<u8>, limit: usize, newest_first: bool) -> Result<Pairs, Error> {
        let order = if newest_first { SortOrder::Descend } else { SortOrder::Ascend };
        let (mut low, mut high, mut revision) = (from, to, 0);
        let mut out = Vec::new();
        loop {
            let want = (limit - out.len()).min(PAGE);
            if want == 0 || low >= high {
                return Ok(out);
            }
            let mut options = GetOptions::new().with_range(high.clone()).with_limit(i64::try_from(want).unwrap_or(i64::MAX)).with_sort(SortTarget::Key, order);
            if revision > 0 {
                options = options.with_revision(revision);
            }
            let response = self.ranged(low.clone(), options)?;
            if revision == 0 {
                revision = response.header().map_or(0, |h| h.revision());
            }
            let kvs = response.kvs();
            out.extend(kvs.iter().map(|kv| (self.strip(tree, kv.key()), kv.value().to_vec())));
            match kvs.last() {
                Some(last) if response.more() && kvs.len() == want => {
                    if newest_first {
                        high = last.key().to_vec();
                    } else {
                        low = last.key().to_vec();
                        low.push(0);
                    }
                }
                _ => return Ok(out),
            }
        }
    }

    fn ranged(&self, from: Vec<u8>, options: GetOptions) -> Result<etcd_client::GetResponse, Error> {
        let kv = self.client.kv_client();
        self.retrying(Retry::Always, || {
            let (mut kv, from, options) = (kv.clone(), from.clone(), options.clone());
            async move { kv.get(from, Some(options)).await }
        })
    }

    /// Runs a call, again on failure while [`EtcdOptions::timeout`] lasts:
    /// a read whatever failed (the client may have picked a member that is
    /// gone), a transaction only when it never reached a member — one that
    /// timed out may have been applied, and running it again could apply
    /// it twice.
    fn retrying<T: Send + 'static, F>(&self, retry: Retry, call: impl Fn() -> F) -> Result<T, Error>
    where
        F: Future<Output = Result<T, etcd_client::Error>> + Send + 'static,
    {
        let deadline = std::time::Instant::now() + self.options.timeout;
        loop {
            // A call that may be repeated ends with the deadline: without
            // quorum a read fails within the store's timeout, not a
            // timeout per attempt (an admin's connection is identified by
            // such a read and must hear why before its own timeout).
            let outcome = if retry == Retry::Always {
                let left = deadline.saturating_duration_since(std::time::Instant::now()).max(Duration::from_millis(50));
                let attempt = call();
                run(&self.runtime, async move {
                    tokio::time::timeout(left, attempt).await.unwrap_or_else(|_| {
                        Err(etcd_client::Error::IoError(std::io::Error::new(std::io::ErrorKind::TimedOut, "no answer within the store's timeout")))
                    })
                })
            } else {
                run(&self.runtime, call())
            };
            match outcome {
                Ok(value) => return Ok(value),
                Err(e) if std::time::Instant::now() < deadline && (retry == Retry::Always || never_sent(&e)) => {
                    std::thread::sleep(Duration::from_millis(50));
                }
                Err(e) if retry == Retry::Always => return Err(unavailable("an etcd request failed", e)),
                // Refused whole by the cluster (its --max-request-bytes is
                // lower than store.max_request_bytes says): nothing landed.
                Err(e) if e.to_string().contains("request is too large") => {
                    return Err(Error::TooLarge(format!(
                        "etcd refused a request as too large ({e}); set store.max_request_bytes to the cluster's --max-request-bytes"
                    )))
                }
                // Sent, and not confirmed: it may still be applied.
                Err(e) if !never_sent(&e) => return Err(Error::Uncertain(e.to_string())),
                Err(e) => return Err(unavailable("an etcd transaction failed", e)),
            }
        }
    }
}

impl Drop for EtcdBackend {
    fn drop(&mut self) {
        if let Some(member) = self.member.lock().ok().and_then(|mut m| m.take()) {
            member.keeper.abort();
            // Let go at once, so that a successor need not wait for the lease.
            let mut leases = self.client.lease_client();
            let _ = run(&self.runtime, async move { leases.revoke(member.lease).await });
        }
    }
}

/// Runs `future` on the backend's runtime and waits for it on this thread
/// (whichever runtime, if any, this thread belongs to).
fn run<T: Send + 'static>(
    runtime: &tokio::runtime::Handle,
    future: impl Future<Output = Result<T, etcd_client::Error>> + Send + 'static,
) -> Result<T, etcd_client::Error> {
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    runtime.spawn(async move {
        let _ = tx.send(future.await);
    });
    rx.recv().unwrap_or_else(|_| Err(etcd_client::Error::InvalidArgs("the etcd client's runtime has stopped".into())))
}

/// A transaction's view: reads at one revision, its own writes on top.
struct EtcdTx<'a> {
    backend: &'a EtcdBackend,
    /// The revision every read of this attempt sees (0 until the first).
    revision: std::cell::Cell<i64>,
    /// Each key read, with the revision that last changed it (0: absent).
    reads: RefCell<BTreeMap<Vec<u8>, i64>>,
    /// A value, or `None` for a removal.
    writes: RefCell<BTreeMap<Vec<u8>, Option<Vec<u8>>>>,
    /// What was read (at `revision`, so it cannot change): a key read
    /// again, or fetched ahead ([`BackendTx::prefetch`]), costs no round trip.
    seen: RefCell<BTreeMap<Vec<u8>, Option<Vec<u8>>>>,
}

impl EtcdTx<'_> {
    /// Keeps what a read found: its value, and its revision to compare.
    fn saw(&self, full: Vec<u8>, found: Option<Versioned>) -> Option<Vec<u8>> {
        self.reads.borrow_mut().entry(full.clone()).or_insert(found.as_ref().map_or(0, |(_, r)| *r));
        let value = found.map(|(v, _)| v);
        self.seen.borrow_mut().insert(full, value.clone());
        value
    }
}

impl BackendTx for EtcdTx<'_> {
    fn get(&self, tree: Tree, key: &[u8]) -> Result<Option<Vec<u8>>, Error> {
        let full = self.backend.key(tree, key);
        if let Some(written) = self.writes.borrow().get(&full) {
            return Ok(written.clone());
        }
        if let Some(seen) = self.seen.borrow().get(&full) {
            return Ok(seen.clone());
        }
        let (found, at) = self.backend.read(tree, key, self.revision.get())?;
        if self.revision.get() == 0 {
            self.revision.set(at);
        }
        Ok(self.saw(full, found))
    }

    fn prefetch(&self, keys: &[(Tree, &[u8])]) -> Result<(), Error> {
        let wanted: Vec<Vec<u8>> = keys
            .iter()
            .map(|(tree, key)| self.backend.key(*tree, key))
            .filter(|full| !self.writes.borrow().contains_key(full) && !self.seen.borrow().contains_key(full))
            .collect();
        // One request per batch of keys (a transaction of gets, at most
        // --max-txn-ops of them), all at this transaction's revision.
        for chunk in wanted.chunks(self.backend.options.max_txn_ops.max(1)) {
            let revision = self.revision.get();
            let options = (revision > 0).then(|| GetOptions::new().with_revision(revision));
            let ops: Vec<TxnOp> = chunk.iter().map(|full| TxnOp::get(full.clone(), options.clone())).collect();
            let kv = self.backend.client.kv_client();
            let response = self.backend.retrying(Retry::Always, || {
                let (mut kv, txn) = (kv.clone(), Txn::new().and_then(ops.clone()));
                async move { kv.txn(txn).await }
            })?;
            if revision == 0 {
                self.revision.set(response.header().map_or(0, |h| h.revision()));
            }
            for (full, answer) in chunk.iter().zip(response.op_responses()) {
                let found = match answer {
                    etcd_client::TxnOpResponse::Get(get) => get.kvs().first().map(|kv| (kv.value().to_vec(), kv.mod_revision())),
                    _ => None,
                };
                self.saw(full.clone(), found);
            }
        }
        Ok(())
    }

    fn insert(&self, tree: Tree, key: &[u8], value: Vec<u8>) -> Result<(), Error> {
        self.writes.borrow_mut().insert(self.backend.key(tree, key), Some(value));
        Ok(())
    }

    fn remove(&self, tree: Tree, key: &[u8]) -> Result<Option<Vec<u8>>, Error> {
        let before = self.get(tree, key)?;
        self.writes.borrow_mut().insert(self.backend.key(tree, key), None);
        Ok(before)
    }
}

impl Backend for EtcdBackend {
    fn get(&self, tree: Tree, key: &[u8]) -> Result<Option<Vec<u8>>, Error> {
        Ok(self.read(tree, key, 0)?.0.map(|(v, _)| v))
    }

    fn scan(&self, tree: Tree, prefix: &[u8]) -> Result<Pairs, Error> {
        let from = self.key(tree, prefix);
        let to = prefix_end(&from);
        self.paged(tree, from, to, usize::MAX, false)
    }

    fn range(&self, tree: Tree, from: &[u8], to: &[u8], limit: usize, newest_first: bool) -> Result<Pairs, Error> {
        if from >= to || limit == 0 {
            return Ok(Vec::new());
        }
        self.paged(tree, self.key(tree, from), self.key(tree, to), limit, newest_first)
    }

    fn count(&self, tree: Tree, from: &[u8], to: &[u8]) -> Result<usize, Error> {
        if from >= to {
            return Ok(0);
        }
        let options = GetOptions::new().with_range(self.key(tree, to)).with_count_only();
        let response = self.ranged(self.key(tree, from), options)?;
        Ok(usize::try_from(response.count()).unwrap_or(usize::MAX))
    }

    fn transaction(&self, body: TxBody<'_>) -> Result<(), Error> {
        for _ in 0..MAX_ATTEMPTS {
            // Fenced once: nothing it still had in hand is written, even
            // on the new lease it may have joined on meanwhile.
            if *self.lost.borrow() {
                return Err(Error::Fenced);
            }
            let tx = EtcdTx {
                backend: self,
                revision: std::cell::Cell::new(0),
                reads: RefCell::new(BTreeMap::new()),
                writes: RefCell::new(BTreeMap::new()),
                seen: RefCell::new(BTreeMap::new()),
            };
            match body(&tx) {
                Ok(()) => {}
                Err(Error::Retry) => continue,
                Err(e) => return Err(e),
            }
            let (reads, writes) = (tx.reads.into_inner(), tx.writes.into_inner());
            if writes.is_empty() {
                return Ok(());
            }
            if reads.is_empty() {
                // A blind write: one linearizable read first, so that a
                // cluster without quorum refuses it before it is sent
                // (a transaction sent and not confirmed may still land).
                self.read(Tree::Meta, b"-", 0)?;
            }
            // The fence is one more comparison.
            let fence = self.fence();
            let compared = reads.len() + usize::from(fence.is_some());
            if compared > self.options.max_txn_ops || writes.len() > self.options.max_txn_ops {
                return Err(Error::TooLarge(format!(
                    "one transaction would compare {compared} and write {} keys; etcd takes at most {} of each (--max-txn-ops)",
                    writes.len(),
                    self.options.max_txn_ops
                )));
            }
            // Keys and values, compared and written: a request larger than
            // the cluster takes is refused here, whole, instead of being
            // sent and refused there.
            let bytes: usize = reads.keys().map(Vec::len).sum::<usize>() + writes.iter().map(|(k, v)| k.len() + v.as_ref().map_or(0, Vec::len)).sum::<usize>();
            if bytes > self.options.max_request_bytes {
                return Err(too_large_request(bytes, self.options.max_request_bytes));
            }
            let mut compares: Vec<Compare> = reads.into_iter().map(|(key, revision)| Compare::mod_revision(key, CompareOp::Equal, revision)).collect();
            if let Some((key, lease)) = &fence {
                compares.push(Compare::lease(key.clone(), CompareOp::Equal, *lease));
            }
            let operations: Vec<TxnOp> = writes
                .into_iter()
                .map(|(key, value)| match value {
                    Some(value) => TxnOp::put(key, value, None),
                    None => TxnOp::delete(key, None),
                })
                .collect();
            let kv = self.client.kv_client();
            let txn = Txn::new().when(compares).and_then(operations);
            let response = self.retrying(Retry::NeverSent, || {
                let (mut kv, txn) = (kv.clone(), txn.clone());
                async move { kv.txn(txn).await }
            })?;
            if response.succeeded() {
                return Ok(());
            }
            if let Some((key, lease)) = fence {
                if self.lease_of(&key)? != Some(lease) {
                    // The lease ran out: joined again (then retried), or fenced.
                    self.reclaim()?;
                }
            }
        }
        Err(Error::Unavailable(format!("a transaction conflicted with others {MAX_ATTEMPTS} times in a row")))
    }

    fn flush(&self) -> BoxFuture<'_, Result<(), Error>> {
        // A committed transaction is already on a quorum's disks.
        Box::pin(async { Ok(()) })
    }

    fn flush_blocking(&self) -> Result<(), Error> {
        Ok(())
    }

    fn lost(&self) -> Option<tokio::sync::watch::Receiver<bool>> {
        Some(self.lost.subscribe())
    }
    fn max_txn_ops(&self) -> Option<usize> {
        Some(self.options.max_txn_ops)
    }
    fn max_request_bytes(&self) -> Option<usize> {
        Some(self.options.max_request_bytes)
    }
    fn reannounce(&self, value: &[u8]) -> Result<(), Error> {
        let joined = match self.member.lock().map_err(|_| Error::Aborted)?.as_mut() {
            Some(m) => {
                m.value = value.to_vec();
                Some((m.key.clone(), m.lease))
            }
            None => None,
        };
        match joined {
            Some((key, lease)) => self.put_presence(key, lease, value),
            // Never joined: nothing to say again.
            None => Ok(()),
        }
    }
    fn presences(&self) -> Result<Option<Vec<crate::Presence>>, Error> {
        EtcdBackend::presences(self).map(Some)
    }
    fn claim_lapsed(&self) -> bool {
        self.member.lock().ok().and_then(|m| m.as_ref().map(|m| m.holds_until.load(Ordering::SeqCst))).is_some_and(|until| unix_ms() >= until)
    }
    fn campaign(&self) -> Result<bool, Error> {
        EtcdBackend::campaign(self)
    }
    fn watch(&self, tree: Tree) -> Option<tokio::sync::mpsc::Receiver<Watched>> {
        Some(EtcdBackend::watch(self, tree))
    }
    fn reclaim(&self) -> Result<(), Error> {
        EtcdBackend::reclaim(self)
    }
}
