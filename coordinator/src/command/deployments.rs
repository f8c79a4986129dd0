//! `drover deployments list|show`.

use anyhow::Result;

use drover_protocol::v1::{AdminRequest, DeploymentInfo, SystemSpec};

use crate::cli::DeploymentsCommand;
use crate::output::{self, OutputFormat};

use super::deploy::state_word;
use super::{call, print_json};

pub fn system_text(system: &SystemSpec) -> String {
    match system {
        SystemSpec::Flake { uri, attribute } => format!("{uri}#{attribute}"),
        SystemSpec::Closure { store_path, .. } => store_path.clone(),
    }
}

pub async fn run(cmd: DeploymentsCommand) -> Result<()> {
    match cmd {
        DeploymentsCommand::List { machine, rollout, admin } => {
            let request = match rollout {
                Some(id) => AdminRequest::DeploymentsOfRollout { id },
                None => AdminRequest::DeploymentsList { machine },
            };
            let answer = call(&admin, request, "listing deployments").await?;
            let list = answer.deployments()?;
            match admin.output {
                OutputFormat::Json => print_json(&list)?,
                OutputFormat::Table => {
                    let mut t = output::table(&["ID", "HOSTNAME", "GEN", "STATE", "SYSTEM", "CREATED"]);
                    for d in &list {
                        t.add_row(vec![
                            d.id.clone(),
                            d.hostname.clone(),
                            d.generation.to_string(),
                            state_word(d).to_string(),
                            system_text(&d.system),
                            output::timestamp(d.created_at),
                        ]);
                    }
                    crate::out!("{t}");
                }
            }
        }
        DeploymentsCommand::Show { id, admin } => {
            let answer = call(&admin, AdminRequest::DeploymentsShow { id: id.clone() }, &format!("showing deployment {id}")).await?;
            let d = answer.deployment()?;
            match admin.output {
                OutputFormat::Json => print_json(&d)?,
                OutputFormat::Table => print_deployment(&d),
            }
        }
    }
    Ok(())
}

fn print_deployment(d: &DeploymentInfo) {
    crate::out!("deployment   {}", d.id);
    crate::out!("machine      {} ({})", d.machine_id, d.hostname);
    crate::out!("generation   {}", d.generation);
    crate::out!("system       {}", system_text(&d.system));
    crate::out!("state        {}", state_word(d));
    crate::out!("created      {}", output::timestamp(d.created_at));
    if let Some(f) = d.finished_at {
        crate::out!("finished     {}", output::timestamp(f));
    }
    if let Some(p) = &d.system_path {
        crate::out!("system path  {p}");
    }
    if !d.secret_names.is_empty() {
        crate::out!("secrets      {}", d.secret_names.join(", "));
    }
    crate::out!("steps:");
    for s in &d.steps {
        crate::out!("  {}  {:<16} {}", output::timestamp(s.at), format!("{:?}", s.step), s.message);
    }
    if !d.output_tail.is_empty() {
        crate::out!("output (tail):");
        for line in d.output_tail.lines() {
            crate::out!("  | {line}");
        }
    }
}
