//! `drover deploy`: records a new generation for the targets and, with
//! `--wait`, follows them to the end.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};

use drover_protocol::v1::{
    AdminRequest, DeploySpec, DeployStep, DeployedTarget, DeploymentInfo, DeploymentState, HealthCheck, SecretBytes, SecretFile, SystemSpec,
    MAX_DEPLOYMENTS_PER_REQUEST,
};

use crate::cli::{DeployArgs, WhatArgs};
use crate::client::AdminClient;
use crate::output::{self, OutputFormat};

use super::{call, connect, labels, print_json, refused, AdminArgs};

/// Parses `NAME=@FILE[,mode=0400][,owner=U][,group=G]`, reading the file.
pub fn parse_secret(arg: &str) -> Result<SecretFile> {
    let (name, rest) = arg.split_once("=@").with_context(|| format!("--secret {arg:?}: expected NAME=@FILE"))?;
    let mut parts = rest.split(',');
    let path = parts.next().unwrap_or_default();
    let mut secret = SecretFile { name: name.to_string(), value: SecretBytes::new(Vec::new()), owner: None, group: None, mode: 0o400 };
    for part in parts {
        match part.split_once('=') {
            Some(("mode", m)) => secret.mode = u32::from_str_radix(m, 8).with_context(|| format!("--secret {name}: mode {m:?} is not octal"))?,
            Some(("owner", o)) => secret.owner = Some(o.to_string()),
            Some(("group", g)) => secret.group = Some(g.to_string()),
            _ => bail!("--secret {name}: unknown attribute {part:?} (use mode=, owner=, group=)"),
        }
    }
    let value = std::fs::read(path).with_context(|| format!("--secret {name}: cannot read {path}"))?;
    secret.value = SecretBytes::new(value);
    Ok(secret)
}

/// Parses a `--check` (see [`crate::deploy::parse_check`]).
pub fn parse_check(arg: &str) -> Result<HealthCheck> {
    crate::deploy::parse_check(arg).map_err(anyhow::Error::msg)
}

fn system(args: &WhatArgs) -> Result<SystemSpec> {
    if let Some(flake) = &args.flake {
        let (uri, attribute) = flake.split_once('#').with_context(|| format!("--flake {flake:?}: expected URI#ATTRIBUTE"))?;
        return Ok(SystemSpec::Flake { uri: uri.to_string(), attribute: attribute.to_string() });
    }
    let store_path = args.closure.clone().context("--flake or --closure is required")?;
    Ok(SystemSpec::Closure { store_path, substituters: args.substituters.clone(), trusted_public_keys: args.trusted_keys.clone() })
}

/// The deployment described by the command line (secret files are read here).
pub fn spec(what: &WhatArgs, machine: Option<String>, selector: Vec<(String, String)>) -> Result<DeploySpec> {
    Ok(DeploySpec {
        machine,
        selector: labels(selector),
        system: system(what)?,
        secrets: what.secrets.iter().map(|s| parse_secret(s)).collect::<Result<_>>()?,
        facts: what.facts.iter().cloned().collect(),
        checks: what.checks.iter().map(|c| parse_check(c)).collect::<Result<_>>()?,
        health_deadline_ms: u64::try_from(what.health_deadline.as_millis()).unwrap_or(u64::MAX),
        buckets: Vec::new(),
        volumes: Vec::new(),
        goal: what.goal,
        force_switch: what.force_switch,
        override_rollout: false,
        reboot: what.reboot,
    })
}

/// Asks for a dry run of `spec` and prints it.
pub async fn dry_run(admin: &AdminArgs, spec: DeploySpec) -> Result<()> {
    let answer = call(admin, AdminRequest::DeployDryRun(spec), "planning the deployment").await?;
    let plan = answer.deploy_plan()?;
    match admin.output {
        OutputFormat::Json => print_json(&plan)?,
        OutputFormat::Table => {
            for p in &plan {
                crate::out!("{} ({})", p.machine_id, p.hostname);
                if let Some(why) = &p.refused {
                    crate::out!("  refused: {why}");
                    continue;
                }
                crate::out!("  would get generation {} (has {}), goal {}", p.generation, p.current_generation, p.goal);
                if p.changes.is_empty() {
                    crate::out!("  no change but the generation number");
                }
                for c in &p.changes {
                    crate::out!("  {c}");
                }
                if let Some(diff) = &p.closure_diff {
                    crate::out!("  closure diff:");
                    for line in diff.lines() {
                        crate::out!("    {line}");
                    }
                }
            }
            crate::out!("dry run: {} machine(s), nothing was recorded or sent", plan.len());
        }
    }
    Ok(())
}

pub async fn run(args: DeployArgs) -> Result<()> {
    let mut spec = spec(&args.what, args.machine.clone(), args.selector.clone())?;
    spec.buckets = args.buckets.clone();
    spec.volumes = args.volumes.clone();
    spec.override_rollout = args.override_rollout;
    if args.what.dry_run {
        return dry_run(&args.admin, spec).await;
    }
    let client = connect(&args.admin).await?;
    let request = AdminRequest::Deploy(spec);
    let answer = client.call(request).await.map_err(|e| refused(e, "deploying"))?;
    let targets = answer.deployed()?;
    follow(client, targets, args.wait.then_some(args.wait_timeout), args.admin.output).await
}

/// Prints the generations recorded, or with `wait` follows them until each
/// is finished and fails naming the machines that did not succeed.
pub async fn follow(client: AdminClient, targets: Vec<DeployedTarget>, wait_for: Option<Duration>, output: OutputFormat) -> Result<()> {
    let Some(wait_timeout) = wait_for else {
        client.close().await;
        match output {
            OutputFormat::Json => print_json(&targets)?,
            OutputFormat::Table => {
                for t in &targets {
                    crate::out!("{} ({}) generation {} — deployment {}", t.machine_id, t.hostname, t.generation, t.deployment_id);
                }
            }
        }
        return Ok(());
    };
    let finished = wait(&client, &targets, wait_timeout, output == OutputFormat::Table).await;
    client.close().await;
    let finished = finished?;
    if output == OutputFormat::Json {
        print_json(&finished)?;
    }
    let failed: Vec<_> = finished
        .iter()
        .filter(|d| d.state != DeploymentState::Succeeded)
        .map(|d| format!("{} ({}): {}{}", d.machine_id, d.hostname, state_word(d), last_message(d)))
        .collect();
    if !failed.is_empty() {
        bail!("{} of {} machine(s) did not succeed:\n  {}", failed.len(), finished.len(), failed.join("\n  "));
    }
    if output == OutputFormat::Table {
        crate::out!("all {} machine(s) succeeded", finished.len());
    }
    Ok(())
}

pub fn state_word(d: &DeploymentInfo) -> &'static str {
    match (d.state, d.rolled_back) {
        (DeploymentState::Succeeded, _) => "succeeded",
        (DeploymentState::Failed, true) => "failed, rolled back",
        (DeploymentState::Failed, false) => "failed",
        (DeploymentState::Superseded, _) => "superseded",
        (DeploymentState::Pending, _) => "pending",
        (DeploymentState::Applying, _) => "applying",
    }
}

pub fn last_message(d: &DeploymentInfo) -> String {
    d.steps.iter().rev().find(|s| matches!(s.step, DeployStep::Failed)).or(d.steps.last()).map(|s| format!(" — {}", s.message)).unwrap_or_default()
}

/// Whether the agent is done with it: succeeded, failed (after any
/// rollback), or superseded by a newer generation.
pub fn finished(d: &DeploymentInfo) -> bool {
    matches!(d.state, DeploymentState::Succeeded | DeploymentState::Failed | DeploymentState::Superseded)
}

/// Up to this many targets, `--wait` shows a line per machine.
const LINES_PER_MACHINE_UP_TO: usize = 20;

/// Polls the deployments until all are finished, with a progress line each
/// (or one bar for many).
async fn wait(client: &AdminClient, targets: &[DeployedTarget], timeout: Duration, show: bool) -> Result<Vec<DeploymentInfo>> {
    let multi = MultiProgress::new();
    if !show {
        multi.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    // A line per machine for a few; one bar for many (every spinner with a
    // steady tick is a thread of its own).
    let per_machine = targets.len() <= LINES_PER_MACHINE_UP_TO;
    let style = ProgressStyle::with_template("{spinner} {prefix:<28} {wide_msg}").expect("static template");
    let bars: BTreeMap<String, ProgressBar> = if per_machine {
        targets
            .iter()
            .map(|t| {
                let bar = multi.add(ProgressBar::new_spinner());
                bar.set_style(style.clone());
                bar.set_prefix(format!("{} {}", t.hostname, t.machine_id));
                bar.set_message(format!("generation {} pending", t.generation));
                if show {
                    bar.enable_steady_tick(Duration::from_millis(120));
                }
                (t.deployment_id.clone(), bar)
            })
            .collect()
    } else {
        BTreeMap::new()
    };
    let overall = (!per_machine).then(|| {
        let bar = multi.add(ProgressBar::new(targets.len() as u64));
        bar.set_style(ProgressStyle::with_template("{bar:30} {pos}/{len} {wide_msg}").expect("static template"));
        if show {
            bar.enable_steady_tick(Duration::from_millis(250));
        }
        bar
    });
    let started = Instant::now();
    // The newest view of each deployment; finished ones are not asked again.
    let mut latest: BTreeMap<String, DeploymentInfo> = BTreeMap::new();
    loop {
        let poll = Instant::now();
        let unfinished: Vec<String> = targets.iter().filter(|t| !latest.get(&t.deployment_id).is_some_and(finished)).map(|t| t.deployment_id.clone()).collect();
        // Protocol 8 answers many deployments in one request; an older
        // coordinator one at a time.
        let mut seen = Vec::with_capacity(unfinished.len());
        if client.version() >= 8 {
            for ids in unfinished.chunks(MAX_DEPLOYMENTS_PER_REQUEST) {
                let answer = client.call(AdminRequest::DeploymentsShowMany { ids: ids.to_vec() }).await.map_err(|e| refused(e, "following the deployment"))?;
                let ds = answer.deployments()?;
                seen.extend(ds);
            }
        } else {
            for id in unfinished {
                let answer = client.call(AdminRequest::DeploymentsShow { id }).await.map_err(|e| refused(e, "following the deployment"))?;
                let d = answer.deployment()?;
                seen.push(d);
            }
        }
        for d in seen {
            if let Some(bar) = bars.get(&d.id) {
                let step = d.steps.last().map(|s| format!("{:?}: {}", s.step, s.message)).unwrap_or_else(|| "pending".into());
                if finished(&d) {
                    bar.finish_with_message(format!("{}{}", state_word(&d), last_message(&d)));
                } else {
                    bar.set_message(step);
                }
            }
            latest.insert(d.id.clone(), d);
        }
        if let Some(overall) = &overall {
            let done: Vec<&DeploymentInfo> = latest.values().filter(|d| finished(d)).collect();
            let failed = done.iter().filter(|d| d.state != DeploymentState::Succeeded).count();
            overall.set_position(done.len() as u64);
            overall.set_message(format!("{} succeeded, {failed} failed", done.len() - failed));
        }
        if latest.values().all(finished) {
            if let Some(overall) = &overall {
                overall.finish();
            }
            return Ok(targets.iter().filter_map(|t| latest.remove(&t.deployment_id)).collect());
        }
        if started.elapsed() > timeout {
            let waiting: Vec<_> = latest.values().filter(|d| !finished(d)).map(|d| d.machine_id.clone()).collect();
            bail!("gave up after {} waiting for {}; follow with `drover deployments list`", output::duration(timeout), waiting.join(", "));
        }
        super::pause_between_polls(poll.elapsed(), Duration::from_millis(250)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checks_parse_and_bad_ones_say_the_form() {
        assert_eq!(parse_check("unit:nginx.service").expect("unit"), HealthCheck::Unit { name: "nginx.service".into() });
        assert_eq!(parse_check("tcp:127.0.0.1:22").expect("tcp"), HealthCheck::Tcp { host: "127.0.0.1".into(), port: 22 });
        assert_eq!(parse_check("tcp:[::1]:22").expect("tcp6"), HealthCheck::Tcp { host: "::1".into(), port: 22 });
        assert!(matches!(parse_check("http://x:1/").expect("http"), HealthCheck::Http { .. }));
        assert_eq!(parse_check("s3:acme-media").expect("s3"), HealthCheck::S3 { bucket: "acme-media".into() });
        assert_eq!(parse_check("file:/run/x").expect("file"), HealthCheck::File { path: "/run/x".into(), sha256: None });
        assert_eq!(parse_check("file:/run/x#sha256=AB12").expect("file"), HealthCheck::File { path: "/run/x".into(), sha256: Some("ab12".into()) });
        assert!(parse_check("ping:x").expect_err("bad").to_string().contains("unit:NAME"));
    }

    #[test]
    fn secrets_read_their_file_with_attributes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("pw");
        std::fs::write(&path, "hunter2").expect("write");
        let s = parse_secret(&format!("db=@{},mode=0440,owner=mastodon", path.display())).expect("parse");
        assert_eq!(s.name, "db");
        assert_eq!(s.value.expose(), b"hunter2");
        assert_eq!(s.mode, 0o440);
        assert_eq!(s.owner.as_deref(), Some("mastodon"));
        assert!(parse_secret("db=nofile").is_err());
        assert!(parse_secret(&format!("db=@{},colour=red", path.display())).is_err());
    }
}
