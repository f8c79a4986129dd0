//! `drover machines list|show|label|revoke`.

use anyhow::{bail, Result};

use drover_protocol::v1::{AdminRequest, MachineInfo, ProvisionInfo, ProvisionRequest, ProvisionState};

use crate::cli::MachinesCommand;
use crate::output::{self, OutputFormat};
use drover_net::clock::now_ms;

use super::{call, labels, print_json};

pub async fn run(cmd: MachinesCommand) -> Result<()> {
    match cmd {
        MachinesCommand::List { selector, admin } => {
            let filtered = !selector.is_empty();
            let client = super::connect(&admin).await?;
            let machines = client.machines(labels(selector)).await.map_err(|e| super::refused(e, "listing machines"));
            client.close().await;
            let machines = machines?;
            match admin.output {
                OutputFormat::Json => print_json(&machines)?,
                OutputFormat::Table => {
                    let provisions = provisions(&admin).await?;
                    print_table(&machines, &provisions, filtered)
                }
            }
        }
        MachinesCommand::Provision { name, provider, template, cores, memory, disk, labels: label_pairs, volumes, wait, admin } => {
            let client = super::connect(&admin).await?;
            let request = ProvisionRequest {
                name: name.clone(),
                provider,
                template,
                cores,
                memory_bytes: memory,
                disk_bytes: disk,
                labels: labels(label_pairs),
                disks: volumes,
            };
            let answer = client.call(AdminRequest::MachinesProvision(request)).await.map_err(|e| super::refused(e, &format!("provisioning {name}")))?;
            let p = answer.provision()?;
            let p = if wait { follow_provision(&client, p, admin.output == OutputFormat::Table).await? } else { p };
            match admin.output {
                OutputFormat::Json => print_json(&p)?,
                OutputFormat::Table => print_provision(&p),
            }
            if p.state == ProvisionState::Failed {
                bail!("provision {} failed: {}", p.name, p.error.as_deref().unwrap_or("no reason recorded"));
            }
        }
        MachinesCommand::Destroy { id, keep_volumes, admin } => {
            let before = call(&admin, AdminRequest::ProvisionShow { name: id.clone() }, &format!("looking up {id}")).await?.provision().ok();
            let answer = call(&admin, AdminRequest::MachinesDestroy { name: id.clone(), keep_volumes }, &format!("destroying {id}")).await?;
            let p = answer.provision()?;
            let already = before.as_ref().is_some_and(|b| b.state == drover_protocol::v1::ProvisionState::Destroyed && b == &p);
            match admin.output {
                OutputFormat::Json => {
                    if already {
                        eprintln!("machine {} was already destroyed; nothing was done", p.name);
                    }
                    print_json(&p)?
                }
                OutputFormat::Table if already => {
                    crate::out!("machine {} was already destroyed (its VM {} is gone); nothing was done", p.name, p.vm_id.as_deref().unwrap_or("-"))
                }
                OutputFormat::Table => crate::out!(
                    "machine {} ({}) revoked; VM {} on {} deleted{}",
                    p.name,
                    p.machine_id.as_deref().unwrap_or("never enrolled"),
                    p.vm_id.as_deref().unwrap_or("-"),
                    p.provider,
                    if keep_volumes { ", its data disks kept" } else { "" }
                ),
            }
        }
        MachinesCommand::Provisions { admin } => {
            let all = provisions(&admin).await?;
            match admin.output {
                OutputFormat::Json => print_json(&all)?,
                OutputFormat::Table => {
                    let mut t = output::table(&["NAME", "PROVIDER", "VM", "STATE", "MACHINE", "CREATED", "ERROR"]);
                    for p in &all {
                        t.add_row(vec![
                            p.name.clone(),
                            p.provider.clone(),
                            p.vm_id.clone().unwrap_or_else(|| "-".into()),
                            p.state.as_str().to_string(),
                            p.machine_id.clone().unwrap_or_else(|| "-".into()),
                            output::timestamp(p.created_at),
                            p.error.as_deref().and_then(|e| e.lines().next()).unwrap_or("").to_string(),
                        ]);
                    }
                    crate::out!("{t}");
                    crate::out!("{} provision(s)", all.len());
                }
            }
        }
        MachinesCommand::Show { id, admin } => {
            let answer = call(&admin, AdminRequest::MachinesDetail { id: id.clone() }, &format!("showing machine {id}")).await?;
            let detail = answer.machine_detail()?;
            match admin.output {
                OutputFormat::Json => print_json(&detail)?,
                OutputFormat::Table => {
                    print_machine(&detail.machine);
                    if let Some(p) = provisions(&admin).await?.into_iter().find(|p| p.machine_id.as_deref() == Some(detail.machine.id.as_str())) {
                        crate::out!("provision    {} on {}, VM {} ({})", p.name, p.provider, p.vm_id.as_deref().unwrap_or("-"), p.state.as_str());
                    }
                    crate::out!(
                        "generation   desired {}, current {}",
                        detail.desired_generation,
                        detail.current_generation.map(|g| g.to_string()).unwrap_or_else(|| "none".into())
                    );
                    crate::out!("running      {}", detail.current_system.as_deref().unwrap_or("-"));
                }
            }
        }
        MachinesCommand::Label { id, changes, admin } => {
            let mut set = Vec::new();
            let mut remove = Vec::new();
            for change in changes {
                if let Some(key) = change.strip_suffix('-').filter(|_| !change.contains('=')) {
                    remove.push(key.to_string());
                } else {
                    set.push(crate::cli::parse_label(&change).map_err(anyhow::Error::msg)?);
                }
            }
            let answer = call(&admin, AdminRequest::MachinesLabel { id: id.clone(), set: labels(set), remove }, &format!("labelling machine {id}")).await?;
            let machine = answer.machine()?;
            match admin.output {
                OutputFormat::Json => print_json(&machine)?,
                OutputFormat::Table => crate::out!("{} labels: {}", machine.id, output::labels(&machine.labels)),
            }
        }
        MachinesCommand::Revoke { id, admin } => {
            let answer = call(&admin, AdminRequest::MachinesRevoke { id: id.clone() }, &format!("revoking machine {id}")).await?;
            let machine = answer.machine()?;
            match admin.output {
                OutputFormat::Json => print_json(&machine)?,
                OutputFormat::Table => crate::out!("machine {} ({}) revoked", machine.id, machine.hostname),
            }
        }
        MachinesCommand::Reboot { id, selector, wait, wait_timeout, admin } => {
            let client = super::connect(&admin).await?;
            let request = AdminRequest::MachinesReboot { machine: id, selector: super::labels(selector) };
            let answer = client.call(request).await.map_err(|e| super::refused(e, "rebooting"))?;
            let targets = answer.deployed()?;
            super::deploy::follow(client, targets, wait.then_some(wait_timeout), admin.output).await?;
        }
    }
    Ok(())
}

async fn provisions(admin: &crate::cli::AdminArgs) -> Result<Vec<ProvisionInfo>> {
    let all = call(admin, AdminRequest::Provisions, "listing provisions").await?.provisions()?;
    Ok(all)
}

/// Shows a provision's state until it is online or failed.
async fn follow_provision(client: &crate::client::AdminClient, mut p: ProvisionInfo, show: bool) -> Result<ProvisionInfo> {
    let bar = indicatif::ProgressBar::new_spinner();
    if !show {
        bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    bar.set_style(indicatif::ProgressStyle::with_template("{spinner} {elapsed:>4} {wide_msg}").expect("static template"));
    bar.enable_steady_tick(std::time::Duration::from_millis(200));
    let mut last = None;
    loop {
        if last != Some(p.state) {
            let vm = p.vm_id.as_deref().map(|v| format!(", VM {v}")).unwrap_or_default();
            bar.set_message(format!("{} on {}: {}{vm}", p.name, p.provider, p.state.as_str()));
            last = Some(p.state);
        }
        if p.state.settled() {
            bar.finish_and_clear();
            return Ok(p);
        }
        // The coordinator enforces the deadline; this only stops a wait
        // on a coordinator that went away.
        if now_ms() > p.deadline_at + 60_000 {
            bar.finish_and_clear();
            bail!("provision {} is still {} after its deadline; see `drover machines provisions`", p.name, p.state.as_str());
        }
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        let answer = client.call(AdminRequest::ProvisionShow { name: p.name.clone() }).await.map_err(|e| super::refused(e, "following the provision"))?;
        let next = answer.provision()?;
        p = next;
    }
}

fn print_provision(p: &ProvisionInfo) {
    crate::out!("provision    {} on {}", p.name, p.provider);
    crate::out!("state        {}", p.state.as_str());
    crate::out!("vm           {}", p.vm_id.as_deref().unwrap_or("-"));
    crate::out!("machine      {}", p.machine_id.as_deref().unwrap_or("-"));
    crate::out!("labels       {}", output::labels(&p.labels));
    if let Some(e) = &p.error {
        crate::out!("error        {e}");
    }
}

fn print_table(machines: &[MachineInfo], provisions: &[ProvisionInfo], filtered: bool) {
    let now = now_ms();
    let mut t = output::table(&["ID", "HOSTNAME", "STATUS", "PROVIDER", "VM", "LABELS", "LAST SEEN", "LOAD", "MEMORY", "FAILED UNITS"]);
    let mut shown = 0;
    // Provisions whose machine has not enrolled yet come first.
    for p in provisions.iter().filter(|p| p.machine_id.is_none() && !filtered && matches!(p.state, ProvisionState::Provisioning | ProvisionState::Booting)) {
        shown += 1;
        t.add_row(vec![
            "-".into(),
            p.name.clone(),
            p.state.as_str().to_string(),
            p.provider.clone(),
            p.vm_id.clone().unwrap_or_else(|| "-".into()),
            output::labels(&p.labels),
            "-".into(),
            "-".into(),
            "-".into(),
            "-".into(),
        ]);
    }
    for m in machines {
        shown += 1;
        let provision = provisions.iter().find(|p| p.machine_id.as_deref() == Some(m.id.as_str()));
        let (load, memory, failed) = match &m.health {
            Some(h) => (
                format!("{:.2}", h.load_average[0]),
                format!("{}/{}", output::bytes(h.memory_used_bytes), output::bytes(h.memory_total_bytes)),
                h.failed_units.as_ref().map(|u| u.len().to_string()).unwrap_or_else(|| "-".into()),
            ),
            None => ("-".into(), "-".into(), "-".into()),
        };
        let status = match provision {
            Some(p) if p.state == ProvisionState::Enrolled => "enrolled".to_string(),
            _ => m.status.as_str().to_string(),
        };
        t.add_row(vec![
            m.id.clone(),
            m.hostname.clone(),
            status,
            provision.map(|p| p.provider.clone()).unwrap_or_else(|| "-".into()),
            provision.and_then(|p| p.vm_id.clone()).unwrap_or_else(|| "-".into()),
            output::labels(&m.labels),
            output::ago(m.last_seen, now),
            load,
            memory,
            failed,
        ]);
    }
    crate::out!("{t}");
    crate::out!("{shown} machine(s)");
}

fn print_machine(m: &MachineInfo) {
    let now = now_ms();
    crate::out!("machine      {}", m.id);
    crate::out!("hostname     {}", m.hostname);
    crate::out!("status       {}", m.status.as_str());
    crate::out!("labels       {}", output::labels(&m.labels));
    crate::out!("enrolled     {}", output::timestamp(m.enrolled_at));
    crate::out!("last seen    {}", output::ago(m.last_seen, now));
    crate::out!("certificate  serial {} expires {}", m.cert_serial, output::until(m.cert_not_after, now));
    if let Some(h) = &m.health {
        crate::out!("health:");
        crate::out!("  agent        {}", h.agent_version);
        crate::out!("  uptime       {}", humantime::format_duration(std::time::Duration::from_secs(h.uptime_secs)));
        crate::out!(
            "  load         {:.2} {:.2} {:.2} ({} cpus, {:.0}% busy)",
            h.load_average[0],
            h.load_average[1],
            h.load_average[2],
            h.cpu_count,
            h.cpu_usage_percent
        );
        crate::out!("  memory       {} of {}", output::bytes(h.memory_used_bytes), output::bytes(h.memory_total_bytes));
        for d in &h.disks {
            crate::out!("  disk         {} {} free of {}", d.mount_point, output::bytes(d.available_bytes), output::bytes(d.total_bytes));
        }
        match &h.failed_units {
            Some(units) if units.is_empty() => crate::out!("  failed units none"),
            Some(units) => crate::out!("  failed units {}", units.join(", ")),
            None => crate::out!("  failed units (no systemd)"),
        }
        crate::out!("  system       {}", h.system_path.as_deref().unwrap_or("-"));
        crate::out!("  booted       {}", h.booted_system.as_deref().unwrap_or("-"));
        match &h.pending_system {
            Some(p) => crate::out!("  pending      {p} (reboot required)"),
            None => crate::out!("  pending      none"),
        }
        if let Some(store) = &h.nix_store {
            crate::out!("  nix store    {} free of {}", output::bytes(store.available_bytes), output::bytes(store.total_bytes));
        }
    }
}
