//! One module per CLI verb. [`run`] dispatches a parsed command line.

pub mod admins;
pub mod audit;
pub mod backup;
pub mod coordinators;
pub mod deploy;
pub mod deployments;
pub mod fleet;
pub mod init;
pub mod machines;
pub mod nixops4;
pub mod rollout;
pub mod s3;
pub mod serve;
pub mod store;
pub mod tenants;
pub mod tokens;
pub mod volumes;
pub mod web;

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::CommandFactory;

use drover_net::client::ClientError;

use crate::bundle::{AdminBundle, DEFAULT_BUNDLE_FILE};
use crate::cli::{AdminArgs, Cli, Command};
use crate::client::AdminClient;
use crate::config::{Config, CONFIG_FILE};

/// Where the state directory is when none is named.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/drover";

pub async fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Init(args) => init::run(args),
        Command::Serve(args) => serve::run(load_config(&args.serve.config, &args.serve.state_dir)?, args.flags.standby).await,
        Command::CheckConfig(args) => {
            let config = if args.without_files {
                let path = args
                    .serve
                    .config
                    .clone()
                    .unwrap_or_else(|| args.serve.state_dir.clone().unwrap_or_else(|| PathBuf::from(DEFAULT_STATE_DIR)).join(CONFIG_FILE));
                Config::load_checked(&path, false)?
            } else {
                load_config(&args.serve.config, &args.serve.state_dir)?
            };
            crate::out!("configuration is valid: listen {} advertise {}", config.listen, config.advertise);
            Ok(())
        }
        Command::Tokens(cmd) => tokens::run(cmd).await,
        Command::Machines(cmd) => machines::run(cmd).await,
        Command::Admins(cmd) => admins::run(cmd).await,
        Command::Tenants(cmd) => tenants::run(cmd).await,
        Command::Whoami(args) => admins::whoami(args).await,
        Command::Plan(args) => fleet::plan_command(args.source, args.prune, args.out, args.admin).await,
        Command::Apply(args) => fleet::apply_command(args.source, args.prune, args.yes, args.plan, args.timeout, args.admin).await,
        Command::Fleet(crate::cli::FleetCommand::Show { admin }) => fleet::show(admin).await,
        Command::Coordinators(crate::cli::CoordinatorsCommand::List { admin }) => coordinators::list(admin).await,
        Command::Web(crate::cli::WebCommand::Login { admin }) => web::login(admin).await,
        Command::Fleet(crate::cli::FleetCommand::Drift { admin }) => fleet::drift(admin).await,
        Command::Backup(args) => backup::backup(args).await,
        Command::Restore(args) => backup::restore(args),
        Command::Audit(args) => audit::run(args).await,
        Command::Store(command) => store::run(command),
        Command::Deploy(args) => deploy::run(args).await,
        Command::Deployments(cmd) => deployments::run(cmd).await,
        Command::Rollout(cmd) => rollout::run(cmd).await,
        Command::S3(cmd) => s3::run(cmd).await,
        Command::Volumes(cmd) => volumes::run(cmd).await,
        Command::Nixops4(admin) => nixops4::run(admin).await,
        Command::Completions { shell } => {
            clap_complete::generate(shell, &mut Cli::command(), "drover", &mut std::io::stdout());
            Ok(())
        }
    }
}

/// Reads the configuration from `--config`, or `STATE_DIR/drover.toml`.
pub fn load_config(config: &Option<PathBuf>, state_dir: &Option<PathBuf>) -> Result<Config> {
    let path = match (config, state_dir) {
        (Some(path), _) => path.clone(),
        (None, Some(dir)) => {
            crate::init::check_state_dir(dir)?;
            dir.join(CONFIG_FILE)
        }
        (None, None) => PathBuf::from(DEFAULT_STATE_DIR).join(CONFIG_FILE),
    };
    Config::load(&path)
}

/// Finds the admin bundle and connects with it.
pub async fn connect(args: &AdminArgs) -> Result<AdminClient> {
    let path = match (&args.admin_bundle, &args.state_dir) {
        (Some(path), _) => path.clone(),
        (None, Some(dir)) => dir.join(DEFAULT_BUNDLE_FILE),
        (None, None) => PathBuf::from(DEFAULT_STATE_DIR).join(DEFAULT_BUNDLE_FILE),
    };
    let mut bundle = AdminBundle::load(&path)?;
    if let Some(coordinator) = args.coordinator {
        bundle.coordinator = coordinator;
    }
    AdminClient::connect(&bundle).await
}

/// Connects, makes one admin request, closes; a refusal says `what` failed.
pub async fn call(admin: &AdminArgs, request: drover_protocol::v1::AdminRequest, what: &str) -> Result<drover_protocol::v1::AdminResponse> {
    let client = connect(admin).await?;
    let answer = client.call(request).await.map_err(|e| refused(e, what));
    client.close().await;
    answer
}

/// Adds a hint to a refusal from the coordinator.
pub fn refused(e: ClientError, what: &str) -> anyhow::Error {
    use drover_protocol::ErrorCode;
    let hint = match e.code() {
        Some(ErrorCode::PermissionDenied) => Some("ask an admin for a bundle with a higher role"),
        Some(ErrorCode::NotFound) => Some("list what exists with the matching `list` command"),
        Some(ErrorCode::Unauthenticated) => Some("the admin bundle is not accepted; get a new one with `drover admins add`"),
        _ => None,
    };
    match hint {
        Some(h) => anyhow::anyhow!("{what} failed: {e}\nhint: {h}"),
        None => anyhow::anyhow!("{what} failed: {e}"),
    }
}

/// The pause between two polls of a `--wait`: at least `least`, and at
/// least as long as the last poll took, so that following a large fleet
/// never takes more than half of the coordinator's time for itself.
pub async fn pause_between_polls(poll_took: std::time::Duration, least: std::time::Duration) {
    tokio::time::sleep(poll_took.max(least)).await;
}

/// Builds a label map from parsed `k=v` pairs.
pub fn labels(pairs: Vec<(String, String)>) -> std::collections::BTreeMap<String, String> {
    pairs.into_iter().collect()
}

/// Context for a result printed as JSON.
pub fn print_json<T: serde::Serialize>(value: &T) -> Result<()> {
    crate::output::json(value).context("writing JSON output")
}
