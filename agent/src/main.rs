//! The `drover-agent` binary: parses the command line, starts logging, runs.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};

use drover_agent::config::AgentConfig;
use drover_agent::simulate::{self, SimulateOptions};
use drover_agent::system::health::SystemHealth;
use drover_agent::AgentError;
use drover_net::logging::LogFormat;

/// Exit code when the coordinator revoked this machine (systemd's
/// `RestartPreventExitStatus` keeps a revoked agent from restarting).
const EXIT_REVOKED: u8 = 3;

#[derive(Parser)]
#[command(name = "drover-agent", version, about = "Drover agent: enrolls this machine and keeps it in touch with its coordinator")]
struct Cli {
    /// Log line format (logs go to standard error).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Plain)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the agent (enroll on first start, then stay connected). When
    /// `--config` names a file that does not exist, the agent writes it from
    /// the VM's seed (QEMU fw_cfg `opt/io.drover/seed`, a cloud-init NoCloud
    /// file, the SMBIOS serial) over the `--seed-defaults` settings.
    Run {
        #[command(flatten)]
        config: ConfigArgs,
        /// Settings a seeded configuration starts from (the image's).
        #[arg(long, requires = "config")]
        seed_defaults: Option<PathBuf>,
    },
    /// Validate the configuration and exit.
    CheckConfig(ConfigArgs),
    /// Mount the volumes of the last applied assignment again and exit (at
    /// boot, before the services that use them; never formats a device
    /// that holds data).
    MountVolumes(ConfigArgs),
    /// Load generator: enroll and connect many simulated agents.
    Simulate {
        #[command(flatten)]
        config: ConfigArgs,
        /// Number of simulated agents.
        #[arg(long, default_value_t = 1000)]
        count: usize,
        /// Directory for the simulated agents' state (default: a temporary one).
        #[arg(long)]
        work_dir: Option<PathBuf>,
        /// PID of the coordinator, to report its resident memory.
        #[arg(long)]
        coordinator_pid: Option<u32>,
        /// Spread the agents over the configuration's coordinators
        /// (`coordinator` and `other_coordinators`): agent i uses the
        /// (i mod n)-th first and the others after it, as machines given
        /// different first addresses would.
        #[arg(long)]
        spread: bool,
        /// Give up waiting after this long.
        #[arg(long, default_value = "5m", value_parser = drover_net::clock::parse_duration)]
        timeout: Duration,
        /// Keep the agents connected this long after all are online
        /// (SIGTERM or Ctrl-C ends it early, and the report is printed).
        #[arg(long, default_value = "0s", value_parser = drover_net::clock::parse_duration)]
        hold: Duration,
        /// Once all are online (or the timeout passed), write the report so
        /// far here as JSON while the agents keep running; SIGUSR1 then
        /// writes the report so far to the same name with `.snapshot` added.
        #[arg(long)]
        ready_file: Option<PathBuf>,
        /// While holding, stop one agent at random this often and start it
        /// again (churn for soak runs; e.g. 200ms).
        #[arg(long, value_parser = drover_net::clock::parse_duration)]
        churn: Option<Duration>,
        /// Simulated agents sharing one UDP socket (a real agent has one
        /// of its own; ten thousand on one socket overflowed its buffer).
        #[arg(long, default_value_t = simulate::DEFAULT_AGENTS_PER_SOCKET, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
        agents_per_socket: usize,
        /// How the simulated machines switch: `succeed` at once in process
        /// (no program run per switch: thousands spawned by one process
        /// measure that process), or `nix`, the agent's own switch with the
        /// configuration's `nixos_rebuild`.
        #[arg(long, value_enum, default_value_t = simulate::Simulated::Succeed)]
        switch: simulate::Simulated,
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Args)]
struct ConfigArgs {
    /// Agent configuration file (TOML); flags override its keys.
    #[arg(long, short = 'c', env = "DROVER_AGENT_CONFIG")]
    config: Option<PathBuf>,
    /// The coordinator's address (host:port).
    #[arg(long)]
    coordinator: Option<drover_net::HostPort>,
    /// Name to verify in the coordinator's certificate.
    #[arg(long)]
    server_name: Option<String>,
    /// The fleet CA certificate (PEM).
    #[arg(long)]
    ca_file: Option<PathBuf>,
    /// File holding the enrollment token (first start only).
    #[arg(long)]
    token_file: Option<PathBuf>,
    /// The agent's state directory.
    #[arg(long)]
    state_dir: Option<PathBuf>,
    /// Longest pause between reconnects.
    #[arg(long, value_parser = drover_net::clock::parse_duration)]
    backoff_max: Option<Duration>,
    /// Hostname to report.
    #[arg(long)]
    hostname: Option<String>,
}

impl ConfigArgs {
    fn resolve(self) -> Result<AgentConfig> {
        let mut config = match &self.config {
            Some(path) => AgentConfig::load(path)?,
            None => AgentConfig::new(
                self.coordinator.clone().context("--coordinator is required without --config")?,
                self.ca_file.clone().context("--ca-file is required without --config")?,
                drover_agent::config::default_state_dir(),
            ),
        };
        if let Some(c) = self.coordinator {
            config.coordinator = c;
        }
        if let Some(n) = self.server_name {
            config.server_name = Some(n);
        }
        if let Some(f) = self.ca_file {
            config.ca_file = f;
        }
        if let Some(t) = self.token_file {
            config.enrollment_token_file = Some(t);
        }
        if let Some(d) = self.state_dir {
            config.state_dir = d;
        }
        if let Some(b) = self.backoff_max {
            config.backoff_max = b;
            config.backoff_initial = config.backoff_initial.min(b);
        }
        if let Some(h) = self.hostname {
            config.hostname = Some(h);
        }
        config.check()?;
        Ok(config)
    }
}

async fn run(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Command::Run { config: args, seed_defaults } => {
            if let Some(path) = &args.config {
                drover_agent::seed::materialise(path, seed_defaults.as_deref(), &drover_agent::system::seed::SeedSources::default()).await?;
            }
            let config = args.resolve()?;
            let health = SystemHealth::for_agent(&config);
            let handle = drover_agent::spawn(config, health, None)?;
            let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
            let mut handle = Some(handle);
            let result = tokio::select! {
                _ = tokio::signal::ctrl_c() => None,
                _ = term.recv() => None,
                r = wait_end(&mut handle) => Some(r),
            };
            let result = match result {
                Some(r) => r,
                None => match handle.take() {
                    Some(h) => h.stop().await,
                    None => Ok(()),
                },
            };
            match result {
                Ok(()) => Ok(ExitCode::SUCCESS),
                Err(e @ AgentError::Revoked(_)) => {
                    eprintln!("error: {e}");
                    Ok(ExitCode::from(EXIT_REVOKED))
                }
                Err(e) => Err(e.into()),
            }
        }
        Command::MountVolumes(args) => {
            let config = args.resolve()?;
            let volumes = drover_agent::system::volumes::Volumes::new(config.volume_root.clone(), &config.state_dir, config.device_wait);
            match volumes.remount().await {
                Ok(summary) => {
                    println!("{summary}");
                    Ok(ExitCode::SUCCESS)
                }
                Err(e) => {
                    eprintln!("error: {e}");
                    Ok(ExitCode::FAILURE)
                }
            }
        }
        Command::CheckConfig(args) => {
            let config = args.resolve()?;
            println!("agent configuration is valid: coordinator {}", config.coordinator);
            Ok(ExitCode::SUCCESS)
        }
        Command::Simulate { config, count, work_dir, coordinator_pid, spread, timeout, hold, churn, agents_per_socket, switch, ready_file, json } => {
            let base = config.resolve()?;
            let tmp;
            let work_dir = match work_dir {
                Some(d) => d,
                None => {
                    tmp = tempfile::tempdir()?;
                    tmp.path().to_path_buf()
                }
            };
            // SIGTERM or Ctrl-C ends the hold; the report is still printed.
            let (stop, stopped) = tokio::sync::oneshot::channel();
            tokio::spawn(async move {
                use tokio::signal::unix::{signal, SignalKind};
                if let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) {
                    tokio::select! {
                        _ = term.recv() => {}
                        _ = int.recv() => {}
                    }
                    let _ = stop.send(());
                } else {
                    // Without handlers the hold runs its course.
                    std::future::pending::<()>().await;
                }
            });
            let report = simulate::run(SimulateOptions {
                base,
                count,
                work_dir,
                coordinator_pid,
                spread,
                timeout,
                hold,
                churn,
                agents_per_socket,
                switch,
                ready_file,
                stop: Some(stopped),
            })
            .await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                println!("agents                 {}", report.agents);
                println!("enrolled               {}", report.enrolled);
                println!("online                 {}", report.online);
                println!("enrollments per second {:.1}", report.enrollments_per_second);
                println!("seconds until online   {:.2}", report.seconds_until_all_online);
                if let (Some(before), Some(after)) = (report.coordinator_rss_before_bytes, report.coordinator_rss_bytes) {
                    println!(
                        "coordinator RSS        {:.1} MiB (before: {:.1} MiB, ratio {:.2})",
                        after as f64 / 1048576.0,
                        before as f64 / 1048576.0,
                        after as f64 / before as f64
                    );
                }
            }
            Ok(if report.online == report.agents { ExitCode::SUCCESS } else { ExitCode::FAILURE })
        }
    }
}

async fn wait_end(handle: &mut Option<drover_agent::AgentHandle>) -> Result<(), AgentError> {
    loop {
        if handle.as_ref().is_some_and(|h| h.is_finished()) {
            return match handle.take() {
                Some(h) => h.join().await,
                None => Ok(()),
            };
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    drover_net::logging::init(cli.log_format, "info");
    drover_net::tls::install_default_provider();
    match run(cli).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {}", drover_net::error_chain(&*e));
            ExitCode::FAILURE
        }
    }
}
