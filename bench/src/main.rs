//! The benchmark's baseline: a bare quinn mTLS server and a crowd of
//! clients with Drover's TLS configuration, transport settings and socket
//! buffers, but no application protocol — what N connections, their
//! keep-alives and one broadcast cost at the least. `scripts/bench.sh` runs
//! it beside the coordinator and `drover-agent simulate` and prints the
//! ratios.
//!
//! `bare-server` accepts connections that present a certificate of its CA
//! and holds them; on SIGUSR1 it sends every connection the current time on
//! a new stream (the broadcast). `bare-clients` signs one certificate per
//! client before measuring, connects them all at once (retrying with
//! jittered backoff, like agents), writes a report once all are connected,
//! records when each broadcast arrived, and prints the full report on
//! SIGTERM.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use drover_coordinator::pki::{Ca, CA_CERT_FILE, CA_KEY_FILE};
use drover_net::clock::now_ms;
use drover_net::identity::{self, Subject};
use serde::Serialize;
use tokio::signal::unix::{signal, SignalKind};

#[derive(Parser)]
#[command(version, about = "Drover's benchmark baseline: bare quinn mTLS with Drover's settings")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Hold client connections; broadcast the time to all of them on SIGUSR1.
    BareServer {
        /// Address to listen on.
        #[arg(long)]
        listen: SocketAddr,
        /// Directory for the CA (made here; `bare-clients` signs with it).
        #[arg(long)]
        dir: PathBuf,
        /// Idle timeout (keep-alives every third of it), as the coordinator's.
        #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
        idle_timeout: Duration,
    },
    /// Connect many clients, each with its own certificate, all at once.
    BareClients {
        /// The bare server.
        #[arg(long)]
        connect: SocketAddr,
        /// The server's directory (its CA signs the clients' certificates).
        #[arg(long)]
        dir: PathBuf,
        #[arg(long, default_value_t = 1000)]
        count: usize,
        /// Once all are connected (or the timeout passed), write the report
        /// so far here; `FILE.broadcast` once every client got a broadcast.
        #[arg(long)]
        ready_file: PathBuf,
        #[arg(long, default_value = "5m", value_parser = humantime::parse_duration)]
        timeout: Duration,
        #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
        idle_timeout: Duration,
        /// Clients sharing one UDP socket, as `drover-agent simulate
        /// --agents-per-socket`.
        #[arg(long, default_value_t = 100, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
        clients_per_socket: usize,
    },
}

#[tokio::main]
async fn main() -> Result<()> {
    drover_net::tls::install_default_provider();
    match Cli::parse().command {
        Command::BareServer { listen, dir, idle_timeout } => server(listen, &dir, idle_timeout).await,
        Command::BareClients { connect, dir, count, ready_file, timeout, idle_timeout, clients_per_socket } => {
            clients(connect, &dir, count, &ready_file, timeout, idle_timeout, clients_per_socket).await
        }
    }
}

async fn server(listen: SocketAddr, dir: &Path, idle_timeout: Duration) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let (ca, ca_key_pem) = Ca::generate("bench")?;
    let (server_der, server_key_pem) = ca.server_certificate(&[listen.ip().to_string()])?;
    let server_key = rcgen::KeyPair::from_pem(&server_key_pem)?;
    let config = drover_net::tls::server_config(&ca.cert_der, vec![server_der], &server_key.serialize_der(), idle_timeout)?;
    // Where `Ca::load` (in `bare-clients`) finds them.
    std::fs::write(dir.join(CA_CERT_FILE), identity::cert_pem(&ca.cert_der))?;
    identity::write_atomic(&dir.join(CA_KEY_FILE), ca_key_pem.as_bytes(), 0o600)?;
    let endpoint = drover_net::socket::endpoint(listen, Some(config)).with_context(|| format!("listening on {listen}"))?;
    let connections: Arc<Mutex<Vec<quinn::Connection>>> = Arc::default();
    // Handshakes that failed on this side, by reason (printed at the end).
    let failures: Arc<Mutex<std::collections::BTreeMap<String, u64>>> = Arc::default();
    let mut usr1 = signal(SignalKind::user_defined1())?;
    let mut term = signal(SignalKind::terminate())?;
    std::fs::write(dir.join("ready"), b"")?;
    loop {
        tokio::select! {
            incoming = endpoint.accept() => {
                let Some(incoming) = incoming else { break };
                let connections = connections.clone();
                let failures = failures.clone();
                tokio::spawn(async move {
                    let conn = match incoming.await {
                        Ok(conn) => conn,
                        Err(e) => {
                            *failures.lock().unwrap_or_else(|p| p.into_inner()).entry(e.to_string()).or_insert(0) += 1;
                            return;
                        }
                    };
                    if conn.peer_identity().is_none() {
                        conn.close(1u32.into(), b"a client certificate is required");
                        return;
                    }
                    let mut held = connections.lock().unwrap_or_else(|p| p.into_inner());
                    held.retain(|c| c.close_reason().is_none());
                    held.push(conn);
                });
            }
            _ = usr1.recv() => {
                let sent = now_ms();
                let held: Vec<quinn::Connection> = connections.lock().unwrap_or_else(|p| p.into_inner()).clone();
                let open = held.iter().filter(|c| c.close_reason().is_none()).count();
                eprintln!("broadcast to {open} open connections ({} held)", held.len());
                for conn in held {
                    tokio::spawn(async move {
                        let Ok((mut send, _recv)) = conn.open_bi().await else { return };
                        let _ = send.write_all(&sent.to_be_bytes()).await;
                        let _ = send.finish();
                        let _ = send.stopped().await;
                    });
                }
            }
            _ = term.recv() => break,
        }
    }
    let held = connections.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let mut closed: std::collections::BTreeMap<String, u64> = Default::default();
    for reason in held.iter().filter_map(|c| c.close_reason()) {
        *closed.entry(reason.to_string()).or_insert(0) += 1;
    }
    eprintln!("handshakes failed: {:?}", failures.lock().unwrap_or_else(|p| p.into_inner()));
    eprintln!("connections closed before the end: {closed:?}");
    endpoint.close(0u32.into(), b"bye");
    Ok(())
}

#[derive(Debug, Serialize, Clone)]
struct Broadcast {
    sent_unix_ms: u64,
    received_unix_ms: Vec<u64>,
}

#[derive(Debug, Serialize)]
struct ClientsReport {
    clients: usize,
    connected: usize,
    seconds_until_all_connected: f64,
    handshakes_per_second: f64,
    /// Connection attempts that failed and were made again.
    retries: u64,
    /// Connections that closed after they were made (a bare client does
    /// not reconnect); a broadcast is complete once every connection
    /// still open got it, or once none more got it for
    /// [`BROADCAST_QUIET`] (a connection the server gave up on during its
    /// handshake can stay open on the client's side, unanswered).
    lost: usize,
    broadcasts: Vec<Broadcast>,
}

/// A broadcast that no more connections got for this long is complete.
const BROADCAST_QUIET: Duration = Duration::from_secs(10);

#[derive(Default)]
struct Shared {
    connected: usize,
    last_connected: Option<Duration>,
    retries: u64,
    lost: usize,
    broadcasts: Vec<Broadcast>,
}

async fn clients(addr: SocketAddr, dir: &Path, count: usize, ready_file: &Path, timeout: Duration, idle_timeout: Duration, per_socket: usize) -> Result<()> {
    if count == 0 {
        bail!("--count must be at least 1");
    }
    let ca = Ca::load(dir).context("loading the bare server's CA")?;
    let ca_der = ca.cert_der.clone();
    // Every client's certificate is made before the clock starts.
    let mut configs = Vec::with_capacity(count);
    for i in 0..count {
        let key = identity::generate_key()?;
        let csr = identity::csr_der(&key, &format!("client-{i}"))?;
        let issued = ca.sign_client(&csr, &Subject::Machine(format!("client-{i}")), Duration::from_secs(24 * 3600))?;
        configs.push(drover_net::tls::client_config(&ca_der, Some((&issued.certificate_der, &key.serialize_der())), idle_timeout)?);
    }
    let endpoints = (0..count.div_ceil(per_socket)).map(|_| drover_net::client::client_endpoint(addr)).collect::<Result<Vec<_>, _>>()?;
    let shared: Arc<Mutex<Shared>> = Arc::default();
    let start = Instant::now();
    for (i, config) in configs.into_iter().enumerate() {
        let endpoint = endpoints[i / per_socket].clone();
        let shared = shared.clone();
        tokio::spawn(async move {
            let conn = loop {
                let attempt = async { endpoint.connect_with(config.clone(), addr, &addr.ip().to_string())?.await.map_err(anyhow::Error::from) };
                match tokio::time::timeout(Duration::from_secs(10), attempt).await {
                    Ok(Ok(conn)) => break conn,
                    _ => {
                        shared.lock().unwrap_or_else(|p| p.into_inner()).retries += 1;
                        let wait = rand::random_range(500..2000);
                        tokio::time::sleep(Duration::from_millis(wait)).await;
                    }
                }
            };
            {
                let mut s = shared.lock().unwrap_or_else(|p| p.into_inner());
                s.connected += 1;
                s.last_connected = Some(start.elapsed());
            }
            while let Ok((_send, mut recv)) = conn.accept_bi().await {
                let mut sent = [0u8; 8];
                if recv.read_exact(&mut sent).await.is_err() {
                    continue;
                }
                let (sent, received) = (u64::from_be_bytes(sent), now_ms());
                let mut s = shared.lock().unwrap_or_else(|p| p.into_inner());
                match s.broadcasts.iter_mut().find(|b| b.sent_unix_ms == sent) {
                    Some(b) => b.received_unix_ms.push(received),
                    None => s.broadcasts.push(Broadcast { sent_unix_ms: sent, received_unix_ms: vec![received] }),
                }
            }
            let reason = conn.close_reason().map(|r| r.to_string()).unwrap_or_default();
            let mut s = shared.lock().unwrap_or_else(|p| p.into_inner());
            s.lost += 1;
            if s.lost <= 5 {
                eprintln!("a client connection closed {:.1} s after the start: {reason}", start.elapsed().as_secs_f64());
            }
        });
    }
    let report = |shared: &Shared| {
        let secs = shared.last_connected.unwrap_or(start.elapsed()).as_secs_f64();
        let mut broadcasts = shared.broadcasts.clone();
        for b in &mut broadcasts {
            b.received_unix_ms.sort_unstable();
        }
        ClientsReport {
            clients: count,
            connected: shared.connected,
            seconds_until_all_connected: if shared.connected == count { secs } else { f64::NAN },
            handshakes_per_second: shared.connected as f64 / secs.max(1e-9),
            retries: shared.retries,
            lost: shared.lost,
            broadcasts,
        }
    };
    let deadline = start + timeout;
    while shared.lock().unwrap_or_else(|p| p.into_inner()).connected < count && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let text = serde_json::to_vec_pretty(&report(&shared.lock().unwrap_or_else(|p| p.into_inner())))?;
    identity::write_atomic(ready_file, &text, 0o644)?;
    let mut term = signal(SignalKind::terminate())?;
    let mut announced = 0;
    // Each broadcast's receipts so far, and when that number last grew.
    let mut progress: Vec<(usize, Instant)> = Vec::new();
    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = tokio::time::sleep(Duration::from_millis(50)) => {
                let s = shared.lock().unwrap_or_else(|p| p.into_inner());
                let open = s.connected - s.lost;
                progress.resize(s.broadcasts.len(), (0, Instant::now()));
                let mut complete = 0;
                for (b, (seen, since)) in s.broadcasts.iter().zip(progress.iter_mut()) {
                    let got = b.received_unix_ms.len();
                    if got > *seen {
                        (*seen, *since) = (got, Instant::now());
                    }
                    if got >= open {
                        complete += 1;
                    } else if since.elapsed() >= BROADCAST_QUIET {
                        if complete + 1 > announced {
                            eprintln!("{} open connections did not get a broadcast within {} s of the last one that did", open - got, BROADCAST_QUIET.as_secs());
                        }
                        complete += 1;
                    }
                }
                if complete > announced {
                    announced = complete;
                    let mut path = ready_file.as_os_str().to_owned();
                    path.push(".broadcast");
                    std::fs::write(PathBuf::from(path), complete.to_string())?;
                }
            }
        }
    }
    let final_report = report(&shared.lock().unwrap_or_else(|p| p.into_inner()));
    println!("{}", serde_json::to_string_pretty(&final_report)?);
    for endpoint in &endpoints {
        endpoint.close(0u32.into(), b"bye");
    }
    Ok(())
}
