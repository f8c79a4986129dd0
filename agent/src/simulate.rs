//! The load generator: enrolls and connects many simulated agents from one
//! process (groups of them sharing a UDP socket) against a running
//! coordinator, and measures enrollments per second, the time until every
//! agent is online, and the coordinator's resident memory, and when each
//! agent received and finished each generation. A benchmark, not a test.
//!
//! Each simulated agent is a real agent (session, scheduler, applier,
//! health gate, reports) whose switch is [`Simulated::Succeed`] by default:
//! in process, no program run. Thousands of `nixos-rebuild` stand-ins
//! spawned by one process kept its async workers waiting in `clone`, and
//! the load generator, not the coordinator, set the pace.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde::Serialize;

use drover_protocol::v1::{DiskUsage, HealthReport, SwitchGoal, SystemSpec};

use crate::config::AgentConfig;
use crate::switched::{BootState, Switched};
use crate::system::health::FixedHealth;
use crate::system::switch::{SwitchError, SystemSwitcher};

pub struct SimulateOptions {
    pub base: AgentConfig,
    pub count: usize,
    pub work_dir: PathBuf,
    pub coordinator_pid: Option<u32>,
    /// Agent i uses the (i mod n)-th of the n coordinators configured
    /// first, the others after it in turn.
    pub spread: bool,
    pub timeout: Duration,
    pub hold: Duration,
    /// While holding, stop one agent at random this often and start it
    /// again on its own state (it reconnects without enrolling): churn for
    /// soak runs.
    pub churn: Option<Duration>,
    /// How many simulated agents share one UDP socket (at least 1).
    pub agents_per_socket: usize,
    /// How the simulated machines switch systems.
    pub switch: Simulated,
    /// Where to write the report so far once every agent is online (or the
    /// timeout passed), while the agents keep running: a benchmark waits
    /// for this file, then deploys.
    pub ready_file: Option<PathBuf>,
    /// Ends the hold early when it fires (or its sender is dropped); the
    /// command fires it on SIGTERM or Ctrl-C.
    pub stop: Option<tokio::sync::oneshot::Receiver<()>>,
}

/// When the agents received and finished one generation, in Unix
/// milliseconds, sorted.
#[derive(Debug, Default, Clone, Serialize)]
pub struct GenerationTimes {
    pub generation: u64,
    /// The coordinator's announcement of the generation arrived.
    pub received_unix_ms: Vec<u64>,
    /// The agent finished applying it (any outcome).
    pub applied_unix_ms: Vec<u64>,
}

type Times = Arc<Mutex<BTreeMap<u64, GenerationTimes>>>;

/// Records, for one agent, when each new generation arrives and is applied.
fn watch_generations(mut status: tokio::sync::watch::Receiver<crate::AgentStatus>, times: Times) {
    tokio::spawn(async move {
        let (mut desired, mut applied) = {
            let s = status.borrow();
            (s.desired_generation, s.applied_generation)
        };
        while status.changed().await.is_ok() {
            let (d, a) = {
                let s = status.borrow_and_update();
                (s.desired_generation, s.applied_generation)
            };
            let now = drover_net::clock::now_ms();
            let mut times = times.lock().unwrap_or_else(|p| p.into_inner());
            if d > desired {
                desired = d;
                let entry = times.entry(d).or_insert_with(|| GenerationTimes { generation: d, ..Default::default() });
                entry.received_unix_ms.push(now);
            }
            if a > applied {
                applied = a;
                let entry = times.entry(a).or_insert_with(|| GenerationTimes { generation: a, ..Default::default() });
                entry.applied_unix_ms.push(now);
            }
        }
    });
}

#[derive(Debug, Serialize)]
pub struct SimulateReport {
    pub agents: usize,
    pub enrolled: usize,
    pub online: usize,
    pub enroll_seconds: f64,
    pub enrollments_per_second: f64,
    pub seconds_until_all_online: f64,
    pub coordinator_rss_bytes: Option<u64>,
    pub coordinator_rss_before_bytes: Option<u64>,
    /// Agents stopped and started again while holding (`churn`).
    pub restarts: u64,
    /// Connections the agents made (welcomes received), all of them: more
    /// than `online` means agents reconnected.
    pub connects: u64,
    /// Each generation announced while the agents ran.
    pub generations: Vec<GenerationTimes>,
}

/// Resident memory of a process, from `/proc/PID/status`.
pub fn rss_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

fn synthetic_health(i: usize) -> HealthReport {
    HealthReport {
        hostname: format!("sim-{i:05}"),
        uptime_secs: 1000,
        load_average: [0.1, 0.1, 0.1],
        cpu_count: 2,
        cpu_usage_percent: 3.0,
        memory_total_bytes: 2 << 30,
        memory_used_bytes: 1 << 30,
        disks: vec![DiskUsage { mount_point: "/".into(), total_bytes: 20 << 30, available_bytes: 10 << 30 }],
        failed_units: Some(vec![]),
        volumes: vec![],
        agent_version: env!("CARGO_PKG_VERSION").into(),
        system_path: None,
        boot_id: None,
        booted_system: None,
        pending_system: None,
        nix_store: None,
        addresses: vec![],
    }
}

/// How a simulated machine switches its system.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Simulated {
    /// Every switch succeeds at once, in process: the simulated machine
    /// then runs the closure it was given (a flake leaves no trace, as on
    /// a machine without `/run/current-system`).
    #[default]
    Succeed,
    /// The agent's own switch: `nixos_rebuild` (and Nix for closures) from
    /// the configuration, a program run per switch (`/bin/false` makes
    /// every switch fail).
    Nix,
}

/// [`Simulated::Succeed`]: the system a simulated machine runs, in memory.
#[derive(Default)]
struct SimulatedSystem {
    running: Mutex<Option<String>>,
    boot_id: String,
}

impl SimulatedSystem {
    fn running(&self) -> Option<String> {
        self.running.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn set_running(&self, system: Option<String>) {
        *self.running.lock().unwrap_or_else(|p| p.into_inner()) = system;
    }
}

#[async_trait::async_trait]
impl SystemSwitcher for SimulatedSystem {
    fn current(&self, _: &SystemSpec) -> Option<String> {
        self.running()
    }

    async fn prepare(&self, _: &SystemSpec) -> Result<String, SwitchError> {
        Ok(String::new())
    }

    async fn switch(&self, spec: &SystemSpec, goal: SwitchGoal, _: bool) -> Result<Switched, SwitchError> {
        if let SystemSpec::Closure { store_path, .. } = spec {
            self.set_running(Some(store_path.clone()));
        }
        Ok(Switched::Activated { tail: format!("simulated {goal}") })
    }

    async fn rollback(&self, _: &SystemSpec, previous: Option<&str>, _: SwitchGoal) -> Result<String, SwitchError> {
        self.set_running(previous.map(String::from));
        Ok("simulated rollback".into())
    }

    async fn prune(&self, _: &SystemSpec, _: u32, _: &[String]) -> Result<usize, SwitchError> {
        Ok(0)
    }

    fn boot(&self) -> BootState {
        BootState { boot_id: Some(self.boot_id.clone()), booted: self.running() }
    }

    fn boot_default(&self) -> Option<String> {
        self.running()
    }

    async fn reboot(&self) -> Result<(), SwitchError> {
        Err(SwitchError::Spawn { what: "a reboot".into(), source: std::io::Error::new(std::io::ErrorKind::Unsupported, "a simulated machine does not reboot") })
    }
}

/// Where the simulated machines' applies run: two threads of their own at a
/// lower priority (nice 10). A real machine applies on its own cores; here
/// ten thousand applies starting at once would otherwise take the cores the
/// agents' sessions read their announcements on, and the coordinator's,
/// and the fan-out measured would be the simulator's own.
struct AppliesRuntime(Option<tokio::runtime::Runtime>);

impl AppliesRuntime {
    fn start() -> Result<Self> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("sim-apply")
            .on_thread_start(|| {
                // 22 of 0..99 is nice 10 (the test below holds it to that).
                let nice_10 = thread_priority::ThreadPriority::Crossplatform(22u8.try_into().expect("22 is a priority"));
                if let Err(e) = thread_priority::set_current_thread_priority(nice_10) {
                    tracing::warn!(error = ?e, "the simulated applies' threads keep their priority");
                }
            })
            .enable_all()
            .build()
            .context("starting the simulated applies' runtime")?;
        Ok(AppliesRuntime(Some(runtime)))
    }

    fn handle(&self) -> tokio::runtime::Handle {
        self.0.as_ref().expect("running until dropped").handle().clone()
    }
}

impl Drop for AppliesRuntime {
    fn drop(&mut self) {
        // Dropped inside the simulator's own runtime, which may not block.
        if let Some(runtime) = self.0.take() {
            runtime.shutdown_background();
        }
    }
}

/// The default of `--agents-per-socket`.
pub const DEFAULT_AGENTS_PER_SOCKET: usize = 100;

/// Gives agent `i` the (i mod n)-th of `config`'s n coordinators first and
/// the others after it, in turn.
fn spread(config: &mut AgentConfig, i: usize) {
    let mut all = vec![config.coordinator.clone()];
    all.append(&mut config.other_coordinators);
    let first = i % all.len();
    all.rotate_left(first);
    config.coordinator = all.remove(0);
    config.other_coordinators = all;
}

pub async fn run(opts: SimulateOptions) -> Result<SimulateReport> {
    if opts.count == 0 {
        bail!("--count must be at least 1");
    }
    if opts.agents_per_socket == 0 {
        bail!("--agents-per-socket must be at least 1");
    }
    // A real agent has a socket of its own; thousands of simulated agents
    // on one socket overflowed its receive buffer while a deployment's
    // answers arrived, and the retransmissions were the simulator's, not
    // the coordinator's. A socket per group of agents is the middle way.
    let endpoints = (0..opts.count.div_ceil(opts.agents_per_socket))
        .map(|_| drover_net::client::client_endpoint_for(&opts.base.coordinator))
        .collect::<Result<Vec<_>, _>>()?;
    let endpoint_of = |i: usize| endpoints[i / opts.agents_per_socket].clone();
    let applies = AppliesRuntime::start()?;
    let rss_before = opts.coordinator_pid.and_then(rss_bytes);
    let start = Instant::now();
    let times: Times = Arc::default();
    let start_agent = |i: usize| {
        let mut config = opts.base.clone();
        config.state_dir = opts.work_dir.join(format!("agent-{i:05}"));
        // Each simulated machine writes its own secrets and facts: a shared
        // runtime directory made their writes race.
        config.runtime_dir = config.state_dir.join("run");
        config.volume_root = config.state_dir.join("root");
        config.hostname = Some(format!("sim-{i:05}"));
        if opts.spread {
            spread(&mut config, i);
        }
        let switcher: Option<Arc<dyn SystemSwitcher>> = match opts.switch {
            Simulated::Succeed => Some(Arc::new(SimulatedSystem { boot_id: format!("sim-boot-{i:05}"), ..Default::default() })),
            Simulated::Nix => None,
        };
        let handle = crate::spawn_with(config, FixedHealth(synthetic_health(i)), Some(endpoint_of(i)), switcher, Some(applies.handle()))
            .context("starting a simulated agent")?;
        watch_generations(handle.status.clone(), times.clone());
        Ok::<_, anyhow::Error>(handle)
    };
    let mut handles = Vec::with_capacity(opts.count);
    for i in 0..opts.count {
        handles.push(start_agent(i)?);
    }
    let deadline = start + opts.timeout;
    // When the last enrollment seen so far happened: the rate divides by
    // the time enrolling took, not by the whole run.
    let mut enrolled_at = None;
    let mut last_count = 0;
    let mut online_at = None;
    loop {
        let enrolled = handles.iter().filter(|h| h.status.borrow().machine_id.is_some()).count();
        let online = handles.iter().filter(|h| h.status.borrow().reports > 0).count();
        if enrolled > last_count {
            last_count = enrolled;
            enrolled_at = Some(start.elapsed());
        }
        if online == opts.count {
            online_at = Some(start.elapsed());
            break;
        }
        if Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let enrolled = handles.iter().filter(|h| h.status.borrow().machine_id.is_some()).count();
    let online = handles.iter().filter(|h| h.status.borrow().reports > 0).count();
    let rss = opts.coordinator_pid.and_then(rss_bytes);
    let enroll_secs = enrolled_at.unwrap_or(start.elapsed()).as_secs_f64();
    let report = |restarts: u64, connects: u64| SimulateReport {
        agents: opts.count,
        enrolled,
        online,
        enroll_seconds: enroll_secs,
        enrollments_per_second: enrolled as f64 / enroll_secs.max(1e-9),
        seconds_until_all_online: online_at.map(|d| d.as_secs_f64()).unwrap_or(f64::NAN),
        coordinator_rss_bytes: rss,
        coordinator_rss_before_bytes: rss_before,
        restarts,
        connects,
        generations: times.lock().unwrap_or_else(|p| p.into_inner()).values().cloned().map(GenerationTimes::sorted).collect(),
    };
    let connects_now = |handles: &[crate::AgentHandle]| handles.iter().map(|h| h.status.borrow().connects).sum::<u64>();
    if let Some(path) = &opts.ready_file {
        write_report(path, &report(0, connects_now(&handles)))?;
    }
    // SIGUSR1 writes the report so far next to the ready file (its name
    // with `.snapshot` added): a benchmark takes one after its deployment
    // to count the reconnects the deployment caused.
    let mut snapshot = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::user_defined1()).context("listening for SIGUSR1")?;
    let mut restarts = 0;
    let held = tokio::time::sleep(opts.hold);
    tokio::pin!(held);
    let churn = opts.churn.filter(|c| !c.is_zero());
    let mut churn_tick = tokio::time::interval(churn.unwrap_or(Duration::from_secs(3600)));
    churn_tick.reset();
    let mut stopped = std::pin::pin!(async move {
        match opts.stop {
            Some(rx) => {
                let _ = rx.await;
            }
            None => std::future::pending().await,
        }
    });
    loop {
        tokio::select! {
            _ = &mut held => break,
            _ = &mut stopped => break,
            _ = churn_tick.tick(), if churn.is_some() => {
                use rand::Rng;
                let i = rand::rng().random_range(0..handles.len());
                let _ = handles.remove(i).stop().await;
                handles.insert(i, start_agent(i)?);
                restarts += 1;
            }
            Some(()) = snapshot.recv() => {
                if let Some(path) = &opts.ready_file {
                    let mut name = path.clone().into_os_string();
                    name.push(".snapshot");
                    write_report(std::path::Path::new(&name), &report(restarts, connects_now(&handles)))?;
                }
            }
        }
    }
    // Restarted agents' earlier connections are not counted.
    let connects = connects_now(&handles);
    // Stopped together, not one after another.
    let mut stopping = tokio::task::JoinSet::new();
    for h in handles {
        stopping.spawn(async move {
            let _ = h.stop().await;
        });
    }
    while stopping.join_next().await.is_some() {}
    for endpoint in &endpoints {
        endpoint.wait_idle().await;
    }
    Ok(report(restarts, connects))
}

fn write_report(path: &std::path::Path, report: &SimulateReport) -> Result<()> {
    let text = serde_json::to_vec_pretty(report)?;
    drover_net::fsutil::write_atomic(path, &text, 0o644).with_context(|| format!("writing {}", path.display()))
}

impl GenerationTimes {
    fn sorted(mut self) -> Self {
        self.received_unix_ms.sort_unstable();
        self.applied_unix_ms.sort_unstable();
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Spread agents start at every coordinator in turn and keep the
    /// others, in order after it, to move to.
    #[test]
    fn spread_agents_start_at_each_coordinator_in_turn_and_know_the_others() {
        let addr = |port: u16| drover_net::HostPort::from(std::net::SocketAddr::from(([127, 0, 0, 1], port)));
        let mut base = AgentConfig::new(addr(1), "/ca.pem".into(), "/state".into());
        base.other_coordinators = vec![addr(2), addr(3)];
        let ports = |i: usize| {
            let mut c = base.clone();
            spread(&mut c, i);
            std::iter::once(&c.coordinator).chain(&c.other_coordinators).map(|a| a.to_string()).collect::<Vec<_>>()
        };
        assert_eq!(ports(0), ["127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3"]);
        assert_eq!(ports(1), ["127.0.0.1:2", "127.0.0.1:3", "127.0.0.1:1"]);
        assert_eq!(ports(2), ["127.0.0.1:3", "127.0.0.1:1", "127.0.0.1:2"]);
        assert_eq!(ports(3), ports(0));
        let mut alone = AgentConfig::new(addr(1), "/ca.pem".into(), "/state".into());
        spread(&mut alone, 7);
        assert_eq!(alone.coordinator.to_string(), "127.0.0.1:1", "one coordinator: nothing to spread");
    }

    /// The nice value of the thread running this, from
    /// `/proc/thread-self/stat` (its 19th field).
    fn own_nice() -> i32 {
        let stat = std::fs::read_to_string("/proc/thread-self/stat").expect("reading /proc/thread-self/stat");
        let after_name = &stat[stat.rfind(')').expect("a process name") + 2..];
        after_name.split(' ').nth(16).expect("a nice field").parse().expect("a number")
    }

    /// The simulated applies run at nice 10, the sessions as they were.
    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn simulated_applies_run_at_a_lower_priority_than_the_sessions() {
        let session_nice = own_nice();
        let applies = AppliesRuntime::start().expect("a runtime");
        let apply_nice = applies.handle().spawn(async { own_nice() }).await.expect("the task ran");
        assert_eq!(apply_nice, 10, "an apply thread's nice value");
        assert_ne!(session_nice, 10, "the test's own thread keeps its priority");
        assert_eq!(own_nice(), session_nice);
    }
}
