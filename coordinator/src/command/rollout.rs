//! `drover rollout start|status|list|pause|resume|abort|revert|promote`.

use std::time::Duration;

use anyhow::{bail, Result};
use indicatif::{ProgressBar, ProgressStyle};

use drover_protocol::v1::{AdminRequest, RolloutAction, RolloutInfo, RolloutMachineState, RolloutPhase, RolloutSpec, RolloutStrategy};

use crate::cli::{RolloutCommand, RolloutStartArgs};
use crate::client::AdminClient;
use crate::output::{self, OutputFormat};

use super::deployments::system_text;
use super::{call, connect, print_json, refused};

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

async fn status(client: &AdminClient, id: &str) -> Result<RolloutInfo> {
    Ok(client.call(AdminRequest::RolloutStatus { id: id.to_string() }).await.map_err(|e| refused(e, &format!("reading rollout {id}")))?.rollout()?)
}

fn moving(r: &RolloutInfo) -> bool {
    matches!(r.phase, RolloutPhase::Canary | RolloutPhase::Rolling | RolloutPhase::Reverting)
}

fn count(r: &RolloutInfo, state: RolloutMachineState) -> usize {
    r.machines.iter().filter(|m| m.state == state).count()
}

fn summary(r: &RolloutInfo) -> String {
    format!(
        "{}{}: {} done, {} updating, {} healthy, {} failed, {} waiting, {} skipped, {} reverted",
        r.phase,
        if r.paused { " (paused)" } else { "" },
        count(r, RolloutMachineState::Done),
        count(r, RolloutMachineState::Updating),
        count(r, RolloutMachineState::Healthy),
        count(r, RolloutMachineState::Failed),
        count(r, RolloutMachineState::Waiting),
        count(r, RolloutMachineState::Skipped),
        count(r, RolloutMachineState::Reverted),
    )
}

fn print(r: &RolloutInfo) {
    crate::out!("rollout      {}", r.id);
    crate::out!("system       {}", system_text(&r.system));
    crate::out!("selector     {}", output::labels(&r.selector));
    crate::out!("state        {}", summary(r));
    if let Some(reason) = &r.reason {
        crate::out!("reason       {reason}");
    }
    let s = &r.strategy;
    crate::out!(
        "strategy     canary {}, max-parallel {}, max-unavailable {}, max-failures {}, auto-revert {}, auto-promote {}",
        s.canary,
        s.max_parallel,
        s.max_unavailable,
        s.max_failures,
        s.auto_revert,
        s.auto_promote
    );
    crate::out!("phases       {}", r.phases.iter().map(|(p, t)| format!("{p} at {}", output::timestamp(*t))).collect::<Vec<_>>().join(", "));
    let mut t = output::table(&["MACHINE", "HOSTNAME", "STATE", "CANARY", "GEN", "STARTED", "NOTE"]);
    for m in &r.machines {
        t.add_row(vec![
            m.machine_id.clone(),
            m.hostname.clone(),
            m.state.to_string(),
            if m.canary { "yes".into() } else { String::new() },
            m.generation.map(|g| g.to_string()).unwrap_or_default(),
            m.started_at.map(output::timestamp).unwrap_or_default(),
            m.reason.clone().unwrap_or_default(),
        ]);
    }
    crate::out!("{t}");
}

/// Follows a rollout with a progress bar until it stops moving.
async fn follow(client: &AdminClient, id: &str, show: bool) -> Result<RolloutInfo> {
    let bar = ProgressBar::new(0);
    if !show {
        bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    bar.set_style(ProgressStyle::with_template("{bar:30} {pos}/{len} {wide_msg}").expect("static template"));
    loop {
        let poll = std::time::Instant::now();
        let r = status(client, id).await?;
        bar.set_length(r.machines.len() as u64);
        bar.set_position(r.machines.iter().filter(|m| matches!(m.state.as_str(), "done" | "failed" | "skipped" | "reverted" | "not_reverted")).count() as u64);
        bar.set_message(summary(&r));
        if !moving(&r) || r.paused {
            bar.finish_with_message(summary(&r));
            return Ok(r);
        }
        super::pause_between_polls(poll.elapsed(), Duration::from_millis(300)).await;
    }
}

/// The strategy of a declared rollout (a fleet file's service, a NixOps4
/// deployment): canaries first, `max_parallel` at a time, none may fail.
pub fn declared_strategy(canary: u32, max_parallel: &str, auto_revert: bool) -> Result<drover_protocol::v1::RolloutStrategy> {
    use drover_protocol::v1::{Amount, RolloutStrategy};
    Ok(RolloutStrategy {
        canary,
        max_parallel: crate::cli::parse_amount(max_parallel).map_err(|e| anyhow::anyhow!("max_parallel {max_parallel:?}: {e}"))?,
        max_unavailable: Amount::Count(1),
        max_failures: Amount::Count(0),
        healthy_deadline_ms: 300_000,
        min_healthy_time_ms: 0,
        progress_deadline_ms: 600_000,
        auto_revert,
        auto_promote: true,
    })
}

/// Waits until rollout `id` succeeds; fails naming how it ended, or that it
/// was still going at `deadline`.
pub async fn until_succeeded(client: &AdminClient, id: &str, deadline: tokio::time::Instant, what: &str) -> Result<()> {
    use drover_protocol::v1::RolloutPhase;
    loop {
        let now = status(client, id).await?;
        match now.phase {
            RolloutPhase::Succeeded => return Ok(()),
            RolloutPhase::Failed | RolloutPhase::Aborted | RolloutPhase::Reverted => {
                anyhow::bail!("{what}: rollout {id} ended {}{}", now.phase.as_str(), now.reason.map(|w| format!(": {w}")).unwrap_or_default())
            }
            _ if tokio::time::Instant::now() >= deadline => anyhow::bail!("{what}: rollout {id} still {} at the deadline", now.phase.as_str()),
            _ => tokio::time::sleep(Duration::from_millis(500)).await,
        }
    }
}

pub async fn run(cmd: RolloutCommand) -> Result<()> {
    match cmd {
        RolloutCommand::Start(args) => start(*args).await,
        RolloutCommand::Status { id, watch, admin } => {
            let client = connect(&admin).await?;
            let r = if watch { follow(&client, &id, admin.output == OutputFormat::Table).await? } else { status(&client, &id).await? };
            client.close().await;
            match admin.output {
                OutputFormat::Json => print_json(&r),
                OutputFormat::Table => {
                    print(&r);
                    Ok(())
                }
            }
        }
        RolloutCommand::List { admin } => {
            let answer = call(&admin, AdminRequest::RolloutList, "listing rollouts").await?;
            let list = answer.rollouts()?;
            match admin.output {
                OutputFormat::Json => print_json(&list)?,
                OutputFormat::Table => {
                    let mut t = output::table(&["ID", "STATE", "MACHINES", "SYSTEM", "CREATED"]);
                    for r in &list {
                        t.add_row(vec![r.id.clone(), summary(r), r.machines.len().to_string(), system_text(&r.system), output::timestamp(r.created_at)]);
                    }
                    crate::out!("{t}");
                }
            }
            Ok(())
        }
        RolloutCommand::Pause { id, admin } => control(id, RolloutAction::Pause, admin).await,
        RolloutCommand::Resume { id, admin } => control(id, RolloutAction::Resume, admin).await,
        RolloutCommand::Abort { id, admin } => control(id, RolloutAction::Abort, admin).await,
        RolloutCommand::Revert { id, admin } => control(id, RolloutAction::Revert, admin).await,
        RolloutCommand::Promote { id, admin } => control(id, RolloutAction::Promote, admin).await,
    }
}

async fn control(id: String, action: RolloutAction, admin: crate::cli::AdminArgs) -> Result<()> {
    let what = format!("{action:?} rollout {id}").to_lowercase();
    let answer = call(&admin, AdminRequest::RolloutControl { id: id.clone(), action }, &what).await?;
    let r = answer.rollout()?;
    match admin.output {
        OutputFormat::Json => print_json(&r),
        OutputFormat::Table => {
            crate::out!("rollout {}: {}", r.id, summary(&r));
            Ok(())
        }
    }
}

async fn start(args: RolloutStartArgs) -> Result<()> {
    let deploy = super::deploy::spec(&args.what, None, args.selector.clone())?;
    if args.what.dry_run {
        let mut deploy = deploy;
        deploy.buckets = args.buckets.clone();
        return super::deploy::dry_run(&args.admin, deploy).await;
    }
    let strategy = RolloutStrategy {
        canary: args.canary,
        max_parallel: args.max_parallel,
        max_unavailable: args.max_unavailable,
        max_failures: args.max_failures,
        healthy_deadline_ms: ms(args.healthy_deadline),
        min_healthy_time_ms: ms(args.min_healthy_time),
        progress_deadline_ms: ms(args.progress_deadline),
        auto_revert: args.auto_revert,
        auto_promote: args.auto_promote,
    };
    let client = connect(&args.admin).await?;
    let mut spec = RolloutSpec { deploy, strategy, snapshot_volumes: args.snapshot_volumes };
    spec.deploy.buckets = args.buckets.clone();
    spec.deploy.volumes = args.volumes.clone();
    let request = AdminRequest::RolloutStart(spec);
    let answer = client.call(request).await.map_err(|e| refused(e, "starting the rollout"))?;
    let r = answer.rollout()?;
    if !args.wait {
        client.close().await;
        return match args.admin.output {
            OutputFormat::Json => print_json(&r),
            OutputFormat::Table => {
                crate::out!("rollout {} started over {} machine(s); follow it with `drover rollout status {} --watch`", r.id, r.machines.len(), r.id);
                Ok(())
            }
        };
    }
    let r = follow(&client, &r.id, args.admin.output == OutputFormat::Table).await?;
    client.close().await;
    match args.admin.output {
        OutputFormat::Json => print_json(&r)?,
        OutputFormat::Table => print(&r),
    }
    if r.phase != RolloutPhase::Succeeded {
        bail!("rollout {} ended {}{}", r.id, r.phase, r.reason.map(|x| format!(": {x}")).unwrap_or_default());
    }
    Ok(())
}
