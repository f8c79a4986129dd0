//! Shared test fixtures: a coordinator in a temporary state directory on a
//! free loopback port, admin clients, tokens, and in-process agents.
#![allow(dead_code)]

pub mod flake;
pub mod garage;
pub mod vm;
#[allow(unused_imports)]
pub use linstor_double as linstor;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use drover_agent::system::health::SystemHealth;
use drover_agent::{AgentConfig, AgentHandle};
use drover_coordinator::bundle::AdminBundle;
use drover_coordinator::client::AdminClient;
use drover_coordinator::config::Config;
use drover_coordinator::init::{init, InitOptions};
use drover_coordinator::server::{self, ServerHandle};
use drover_protocol::v1::{AdminRequest, AdminResponse, MachineInfo, TokenSpec};

/// Ports this test process has handed out: a port is handed out once, so
/// two tests running side by side never get the same one (the kernel may
/// give a released port out again at once).
static HANDED_OUT: std::sync::Mutex<std::collections::BTreeSet<(bool, u16)>> = std::sync::Mutex::new(std::collections::BTreeSet::new());

/// A port the kernel says is free, that this process has not handed out.
fn fresh_port(tcp: bool, probe: impl Fn() -> u16) -> u16 {
    loop {
        let port = probe();
        if HANDED_OUT.lock().unwrap_or_else(std::sync::PoisonError::into_inner).insert((tcp, port)) {
            return port;
        }
    }
}

/// A free UDP port on 127.0.0.1, never handed out twice in this process.
pub fn free_udp_port() -> u16 {
    fresh_port(false, || std::net::UdpSocket::bind("127.0.0.1:0").expect("bind a probe socket").local_addr().expect("local addr").port())
}

/// A free TCP port on 127.0.0.1, never handed out twice in this process.
pub fn free_tcp_port() -> u16 {
    fresh_port(true, || std::net::TcpListener::bind("127.0.0.1:0").expect("bind a probe socket").local_addr().expect("local addr").port())
}

pub struct TestCoordinator {
    pub dir: tempfile::TempDir,
    pub state_dir: PathBuf,
    pub config: Config,
    pub addr: SocketAddr,
    pub bundle_path: PathBuf,
    pub handle: Option<ServerHandle>,
    /// How many times an admin connection is tried before a call fails: 1
    /// on loopback; more where a test makes the admin's own path lossy (a
    /// handshake can then outlast the client's timeout, and an admin would
    /// run the command again).
    pub connect_attempts: u32,
}

pub struct Options {
    pub health_interval: Duration,
    pub machine_cert_lifetime: Option<Duration>,
    /// Initialise only; don't start the in-process server.
    pub no_server: bool,
    /// The state directory (default: `state` in the test's temporary
    /// directory), e.g. on a filesystem the test made.
    pub state_dir: Option<PathBuf>,
    /// Keep the records in etcd (`drover init --store URL`).
    pub etcd: Option<String>,
}

impl Default for Options {
    fn default() -> Self {
        Options { health_interval: Duration::from_millis(300), machine_cert_lifetime: None, no_server: false, state_dir: None, etcd: None }
    }
}

impl TestCoordinator {
    pub async fn start() -> Self {
        Self::start_with(Options::default()).await
    }

    pub async fn start_with(opts: Options) -> Self {
        drover_net::tls::install_default_provider();
        let dir = tempfile::tempdir().expect("tempdir");
        let state_dir = opts.state_dir.unwrap_or_else(|| dir.path().join("state"));
        let addr: SocketAddr = format!("127.0.0.1:{}", free_udp_port()).parse().expect("addr");
        let outcome = init(InitOptions {
            state_dir: state_dir.clone(),
            listen: addr,
            advertise: None,
            server_names: vec![],
            admin_name: "root".into(),
            health_interval: Some(opts.health_interval),
            machine_cert_lifetime: opts.machine_cert_lifetime,
            store: opts.etcd.map(|url| drover_coordinator::init::EtcdStoreArgs { url, ca_file: None, cert_file: None, key_file: None }),
            join: None,
        })
        .expect("drover init");
        let mut this =
            TestCoordinator { dir, state_dir, config: outcome.config.clone(), addr, bundle_path: outcome.bundle_path, handle: None, connect_attempts: 1 };
        if !opts.no_server {
            this.serve().await;
        }
        this
    }

    pub async fn serve(&mut self) {
        // After an in-process stop the store's lock is released when the
        // last connection task ends; retry briefly.
        let mut last = None;
        for _ in 0..50 {
            let opened = drover_coordinator::wiring::coordinator(self.config.clone()).map(std::sync::Arc::new);
            match async { server::start(opened?).await }.await {
                Ok(handle) => {
                    self.handle = Some(handle);
                    return;
                }
                Err(e) => last = Some(e),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("coordinator does not start: {last:?}");
    }

    pub async fn stop(&mut self) {
        if let Some(h) = self.handle.take() {
            h.shutdown().await;
        }
    }

    pub fn bundle(&self) -> AdminBundle {
        AdminBundle::load(&self.bundle_path).expect("admin bundle")
    }

    pub async fn admin(&self) -> AdminClient {
        let mut attempt = 1;
        loop {
            match AdminClient::connect(&self.bundle()).await {
                Ok(client) => return client,
                Err(e) if attempt < self.connect_attempts => eprintln!("admin connection attempt {attempt} failed, trying again: {e:#}"),
                Err(e) => panic!("admin connects: {e:?}"),
            }
            attempt += 1;
        }
    }

    pub async fn call(&self, request: AdminRequest) -> AdminResponse {
        let client = self.admin().await;
        let answer = client.call(request).await.expect("admin request");
        client.close().await;
        answer
    }

    /// [`Self::call`] to a coordinator that may not be up yet.
    pub async fn try_call(&self, request: AdminRequest) -> Result<AdminResponse, String> {
        let client = AdminClient::connect(&self.bundle()).await.map_err(|e| e.to_string())?;
        let answer = client.call(request).await.map_err(|e| e.to_string());
        client.close().await;
        answer
    }

    /// Creates a token and writes it to a file; returns (text, file).
    pub async fn token(&self, uses: u32, labels: &[(&str, &str)]) -> (String, PathBuf) {
        let spec = TokenSpec { labels: labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(), ttl_ms: 3_600_000, uses };
        let created = self.call(AdminRequest::TokensCreate(spec)).await.token_created().expect("expected a token");
        let text = created.token.expose().to_string();
        let path = self.dir.path().join(format!("token-{}", created.info.id));
        std::fs::write(&path, &text).expect("write token file");
        (text, path)
    }

    pub fn agent_config(&self, name: &str, token_file: Option<&Path>) -> AgentConfig {
        let mut config = AgentConfig::new(self.addr, self.state_dir.join("ca.pem"), self.dir.path().join("agents").join(name));
        config.enrollment_token_file = token_file.map(Path::to_path_buf);
        config.hostname = Some(name.to_string());
        config.backoff_initial = Duration::from_millis(100);
        config.backoff_max = Duration::from_millis(500);
        config.connect_timeout = Duration::from_secs(3);
        config
    }

    pub fn spawn_agent(&self, name: &str, token_file: Option<&Path>) -> AgentHandle {
        let config = self.agent_config(name, token_file);
        let health = SystemHealth::for_agent(&config);
        drover_agent::spawn(config, health, None).expect("agent starts")
    }

    pub async fn machines(&self) -> Vec<MachineInfo> {
        let m = self.call(AdminRequest::MachinesList { selector: Default::default() }).await.machines().expect("expected machines");
        m
    }

    pub async fn machine(&self, id: &str) -> MachineInfo {
        let m = self.call(AdminRequest::MachinesShow { id: id.into() }).await.machine().expect("expected a machine");
        m
    }
}

/// Waits until the agent has reported health at least `n` times.
pub async fn until_reported(agent: &mut AgentHandle, n: u64) -> drover_agent::AgentStatus {
    agent.wait_for(Duration::from_secs(15), |s| s.reports >= n).await.unwrap_or_else(|s| panic!("agent did not report {n} time(s): {s:?}"))
}

/// Polls `f` until it returns true or `timeout` passes.
pub async fn eventually<F, Fut>(timeout: Duration, mut f: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if f().await {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A connection with an optional client identity (certificate DER, key DER),
/// Hello done.
pub async fn raw_connect(fleet: &TestCoordinator, identity: Option<(&[u8], &[u8])>) -> Result<drover_net::CoordinatorConnection, drover_net::ClientError> {
    let ca = drover_net::identity::read_cert_pem(&fleet.state_dir.join("ca.pem")).expect("ca");
    raw_connect_with_ca(fleet, &ca, identity).await
}

pub async fn raw_connect_with_ca(
    fleet: &TestCoordinator,
    ca_der: &[u8],
    identity: Option<(&[u8], &[u8])>,
) -> Result<drover_net::CoordinatorConnection, drover_net::ClientError> {
    let config = drover_net::tls::client_config(ca_der, identity, Duration::from_secs(10)).expect("tls");
    let endpoint = drover_net::client::client_endpoint(fleet.addr).expect("endpoint");
    drover_net::CoordinatorConnection::connect(&endpoint, config, fleet.addr, &fleet.addr.ip().to_string(), "test-client", Duration::from_secs(5)).await
}

/// Enrolls a machine directly; returns its certificate and key (DER).
pub async fn enroll_raw(fleet: &TestCoordinator, token: &str, hostname: &str) -> (drover_protocol::v1::IssuedCertificate, Vec<u8>) {
    let key = drover_net::identity::generate_key().expect("key");
    let ca = drover_net::identity::read_cert_pem(&fleet.state_dir.join("ca.pem")).expect("ca");
    let endpoint = drover_net::client::client_endpoint(fleet.addr).expect("endpoint");
    let config = fleet.agent_config(hostname, None);
    let issued =
        drover_agent::session::enroll_once(&endpoint, &config, &ca, &key, drover_protocol::v1::Secret::new(token), hostname).await.expect("enrollment");
    (issued, key.serialize_der())
}

/// Runs the `drover` CLI with the fleet's admin bundle and `--output json`:
/// (success, the JSON it printed or null, standard error).
pub fn drover_json(fleet: &TestCoordinator, args: &[&str]) -> (bool, serde_json::Value, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_drover"))
        .args(args)
        .args(["--output", "json"])
        .env("DROVER_ADMIN_BUNDLE", &fleet.bundle_path)
        .output()
        .expect("run drover");
    let json = serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null);
    (out.status.success(), json, String::from_utf8_lossy(&out.stderr).to_string())
}

/// A deployment of `system` to the machines labelled `role=ROLE`, with no
/// secrets, facts, checks, buckets or volumes and a 5 s health deadline;
/// tests change what they need with `..`.
pub fn deploy_to_role(role: &str, system: drover_protocol::v1::SystemSpec) -> drover_protocol::v1::DeploySpec {
    drover_protocol::v1::DeploySpec {
        machine: None,
        selector: [("role".to_string(), role.to_string())].into(),
        system,
        secrets: vec![],
        facts: Default::default(),
        checks: vec![],
        health_deadline_ms: 5_000,
        buckets: vec![],
        volumes: vec![],
        goal: Default::default(),
        force_switch: false,
        override_rollout: false,
        reboot: false,
    }
}

/// A coordinator process, killed when the test ends, passed or failed.
pub struct Serving(pub std::process::Child);

impl Drop for Serving {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `drover serve` as its own process on a state directory (so a
/// test can SIGKILL it).
pub fn spawn_coordinator(state_dir: &Path) -> std::process::Child {
    std::process::Command::new(env!("CARGO_BIN_EXE_drover"))
        .args(["serve", "--state-dir"])
        .arg(state_dir)
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start drover serve")
}

/// Log output kept in memory, for a `tracing_subscriber` writer.
#[derive(Clone, Default)]
pub struct LogCapture(pub std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for LogCapture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("log capture").extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Held by a test that loads the whole machine (QEMU guests, a workspace
/// build, a lossy link, three Garage nodes): no two such tests run at once
/// in one test binary, while lighter tests run beside them.
pub async fn heavy() -> tokio::sync::MutexGuard<'static, ()> {
    HEAVY.lock().await
}

/// [`heavy`] for tests outside a runtime.
pub fn heavy_blocking() -> tokio::sync::MutexGuard<'static, ()> {
    HEAVY.blocking_lock()
}

static HEAVY: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A rollout one machine at a time, no canary, no failure tolerated,
/// 300 ms of health before the next; tests change what they need with `..`.
pub fn one_at_a_time() -> drover_protocol::v1::RolloutStrategy {
    use drover_protocol::v1::{Amount, RolloutStrategy};
    RolloutStrategy {
        canary: 0,
        max_parallel: Amount::Count(1),
        max_unavailable: Amount::Percent(100),
        max_failures: Amount::Count(0),
        healthy_deadline_ms: 30_000,
        min_healthy_time_ms: 300,
        progress_deadline_ms: 600_000,
        auto_revert: false,
        auto_promote: true,
    }
}
