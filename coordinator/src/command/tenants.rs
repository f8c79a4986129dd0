//! `drover tenants create|list|show|remove|managers`.

use anyhow::{bail, Result};

use drover_protocol::v1::{AdminRequest, TenantInfo, TenantSpec};

use crate::cli::{AdminArgs, TenantsCommand};
use crate::output::{self, OutputFormat};

use super::{call, print_json};

async fn one(admin: &AdminArgs, request: AdminRequest, what: &str) -> Result<TenantInfo> {
    Ok(call(admin, request, what).await?.tenant()?)
}

fn print_tenant(t: &TenantInfo) {
    crate::out!("tenant       {}", t.domain);
    crate::out!("admin user   {}", t.admin_user);
    crate::out!("admin email  {}", t.admin_email);
    let managers = if t.managers.is_empty() { "-".to_string() } else { t.managers.join(", ") };
    crate::out!("managers     {managers}");
    crate::out!("machines     {} (label tenant={})", t.machines, t.domain);
    crate::out!("created      {}", output::timestamp(t.created_at));
    if let Some(p) = &t.admin_password {
        crate::out!("password     {}", p.expose());
    }
}

pub async fn run(cmd: TenantsCommand) -> Result<()> {
    match cmd {
        TenantsCommand::Create { domain, admin_email, admin_user, managers, admin } => {
            let spec = TenantSpec { domain: domain.clone(), admin_email, admin_user, managers };
            let t = one(&admin, AdminRequest::TenantsCreate(spec), &format!("creating tenant {domain}")).await?;
            match admin.output {
                OutputFormat::Json => print_json(&t)?,
                OutputFormat::Table => {
                    print_tenant(&t);
                    crate::out!(
                        "\nMachines labelled tenant={domain} receive its facts and admin password with their next \
                         generation (`drover deploy --selector tenant={domain} ...`)."
                    );
                }
            }
        }
        TenantsCommand::List { admin } => {
            let tenants = call(&admin, AdminRequest::TenantsList, "listing tenants").await?.tenants()?;
            match admin.output {
                OutputFormat::Json => print_json(&tenants)?,
                OutputFormat::Table => {
                    let mut t = output::table(&["DOMAIN", "ADMIN USER", "ADMIN EMAIL", "MANAGERS", "MACHINES", "CREATED"]);
                    for x in &tenants {
                        t.add_row(vec![
                            x.domain.clone(),
                            x.admin_user.clone(),
                            x.admin_email.clone(),
                            x.managers.join(","),
                            x.machines.to_string(),
                            output::timestamp(x.created_at),
                        ]);
                    }
                    crate::out!("{t}");
                }
            }
        }
        TenantsCommand::Show { domain, show_password, admin } => {
            let t = one(&admin, AdminRequest::TenantsShow { domain: domain.clone(), show_password }, &format!("showing tenant {domain}")).await?;
            match admin.output {
                OutputFormat::Json => print_json(&t)?,
                OutputFormat::Table => print_tenant(&t),
            }
        }
        TenantsCommand::Remove { domain, admin } => {
            call(&admin, AdminRequest::TenantsRemove { domain: domain.clone() }, &format!("removing tenant {domain}")).await?;
            match admin.output {
                OutputFormat::Json => print_json(&serde_json::json!({ "removed": domain }))?,
                OutputFormat::Table => crate::out!("tenant {domain} removed"),
            }
        }
        TenantsCommand::Managers { domain, add, remove, admin } => {
            if add.is_empty() && remove.is_empty() {
                bail!("nothing to change: give --add NAME or --remove NAME");
            }
            let request = AdminRequest::TenantsManagers { domain: domain.clone(), add, remove };
            let t = one(&admin, request, &format!("changing the managers of {domain}")).await?;
            match admin.output {
                OutputFormat::Json => print_json(&t)?,
                OutputFormat::Table => {
                    print_tenant(&t);
                    crate::out!("\nThe change reaches the machines with their next generation.");
                }
            }
        }
    }
    Ok(())
}
