//! `drover machines list|show|label|revoke`.

use anyhow::{bail, Result};

use drover_protocol::v1::{AdminRequest, AdminResponse, MachineInfo};

use crate::cli::MachinesCommand;
use crate::output::{self, OutputFormat};
use drover_net::clock::now_ms;

use super::{call, labels, print_json};

pub async fn run(cmd: MachinesCommand) -> Result<()> {
    match cmd {
        MachinesCommand::List { selector, admin } => {
            let answer = call(&admin, AdminRequest::MachinesList { selector: labels(selector) }, "listing machines").await?;
            let AdminResponse::Machines(machines) = answer else {
                bail!("unexpected answer from the coordinator");
            };
            match admin.output {
                OutputFormat::Json => print_json(&machines)?,
                OutputFormat::Table => print_table(&machines),
            }
        }
        MachinesCommand::Show { id, admin } => {
            let answer = call(&admin, AdminRequest::MachinesDetail { id: id.clone() }, &format!("showing machine {id}")).await?;
            let AdminResponse::MachineDetail(detail) = answer else {
                bail!("unexpected answer from the coordinator");
            };
            match admin.output {
                OutputFormat::Json => print_json(&detail)?,
                OutputFormat::Table => {
                    print_machine(&detail.machine);
                    crate::out!("generation   desired {}, current {}", detail.desired_generation, detail.current_generation.map(|g| g.to_string()).unwrap_or_else(|| "none".into()));
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
            let AdminResponse::Machine(machine) = answer else {
                bail!("unexpected answer from the coordinator");
            };
            match admin.output {
                OutputFormat::Json => print_json(&machine)?,
                OutputFormat::Table => crate::out!("{} labels: {}", machine.id, output::labels(&machine.labels)),
            }
        }
        MachinesCommand::Revoke { id, admin } => {
            let answer = call(&admin, AdminRequest::MachinesRevoke { id: id.clone() }, &format!("revoking machine {id}")).await?;
            let AdminResponse::Machine(machine) = answer else {
                bail!("unexpected answer from the coordinator");
            };
            match admin.output {
                OutputFormat::Json => print_json(&machine)?,
                OutputFormat::Table => crate::out!("machine {} ({}) revoked", machine.id, machine.hostname),
            }
        }
        MachinesCommand::Reboot { id, selector, wait, wait_timeout, admin } => {
            let client = super::connect(&admin).await?;
            let request = AdminRequest::MachinesReboot { machine: id, selector: super::labels(selector) };
            let answer = client.call(request).await.map_err(|e| super::refused(e, "rebooting"))?;
            let AdminResponse::Deployed(targets) = answer else {
                bail!("unexpected answer from the coordinator");
            };
            super::deploy::follow(client, targets, wait.then_some(wait_timeout), admin.output).await?;
        }
    }
    Ok(())
}

fn print_table(machines: &[MachineInfo]) {
    let now = now_ms();
    let mut t = output::table(&["ID", "HOSTNAME", "STATUS", "LABELS", "LAST SEEN", "LOAD", "MEMORY", "FAILED UNITS"]);
    for m in machines {
        let (load, memory, failed) = match &m.health {
            Some(h) => (
                format!("{:.2}", h.load_average[0]),
                format!("{}/{}", output::bytes(h.memory_used_bytes), output::bytes(h.memory_total_bytes)),
                h.failed_units.as_ref().map(|u| u.len().to_string()).unwrap_or_else(|| "-".into()),
            ),
            None => ("-".into(), "-".into(), "-".into()),
        };
        t.add_row(vec![
            m.id.clone(),
            m.hostname.clone(),
            m.status.as_str().to_string(),
            output::labels(&m.labels),
            output::ago(m.last_seen, now),
            load,
            memory,
            failed,
        ]);
    }
    crate::out!("{t}");
    crate::out!("{} machine(s)", machines.len());
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
        crate::out!("  load         {:.2} {:.2} {:.2} ({} cpus, {:.0}% busy)", h.load_average[0], h.load_average[1], h.load_average[2], h.cpu_count, h.cpu_usage_percent);
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
