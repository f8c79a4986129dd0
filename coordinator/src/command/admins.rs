//! `drover admins add|list` and `drover whoami`.

use anyhow::{bail, Context, Result};

use drover_net::identity;
use drover_protocol::v1::{AdminRequest, AdminResponse};

use crate::bundle::AdminBundle;
use crate::cli::{AdminArgs, AdminsCommand};
use crate::output::{self, OutputFormat};

use super::{call, print_json};

pub async fn run(cmd: AdminsCommand) -> Result<()> {
    match cmd {
        AdminsCommand::Add { name, role, out, admin } => {
            crate::server::check_admin_name(&name).map_err(anyhow::Error::msg)?;
            let out = out.unwrap_or_else(|| format!("{name}.bundle").into());
            if out.exists() {
                bail!("{} already exists; choose another --out", out.display());
            }
            let key = identity::generate_key()?;
            let csr = identity::csr_der(&key, &name)?;
            let answer = call(&admin, AdminRequest::AdminsAdd { name: name.clone(), role, csr_der: csr }, &format!("adding admin {name}")).await?;
            let AdminResponse::AdminCreated(issued) = answer else {
                bail!("unexpected answer from the coordinator");
            };
            // The new bundle reaches the same coordinator as ours.
            let ours = super_bundle(&admin)?;
            AdminBundle {
                name: name.clone(),
                coordinator: ours.coordinator,
                server_name: ours.server_name,
                ca_pem: ours.ca_pem,
                cert_pem: identity::cert_pem(&issued.certificate_der),
                key_pem: key.serialize_pem(),
            }
            .write(&out)
            .with_context(|| format!("writing the bundle {}", out.display()))?;
            match admin.output {
                OutputFormat::Json => print_json(&serde_json::json!({
                    "name": name, "role": role.as_str(), "bundle": out,
                }))?,
                OutputFormat::Table => println!("admin {name} ({}) added; bundle written to {}", role.as_str(), out.display()),
            }
        }
        AdminsCommand::List { admin } => {
            let answer = call(&admin, AdminRequest::AdminsList, "listing admins").await?;
            let AdminResponse::Admins(admins) = answer else {
                bail!("unexpected answer from the coordinator");
            };
            match admin.output {
                OutputFormat::Json => print_json(&admins)?,
                OutputFormat::Table => {
                    let mut t = output::table(&["NAME", "ROLE", "CREATED"]);
                    for a in &admins {
                        t.add_row(vec![a.name.clone(), a.role.as_str().to_string(), output::timestamp(a.created_at)]);
                    }
                    println!("{t}");
                }
            }
        }
    }
    Ok(())
}

fn super_bundle(args: &AdminArgs) -> Result<AdminBundle> {
    let path = match (&args.admin_bundle, &args.state_dir) {
        (Some(p), _) => p.clone(),
        (None, Some(d)) => d.join(crate::bundle::DEFAULT_BUNDLE_FILE),
        (None, None) => std::path::PathBuf::from(super::DEFAULT_STATE_DIR).join(crate::bundle::DEFAULT_BUNDLE_FILE),
    };
    AdminBundle::load(&path)
}

pub async fn whoami(args: AdminArgs) -> Result<()> {
    let answer = call(&args, AdminRequest::WhoAmI, "whoami").await?;
    let AdminResponse::Identity(me) = answer else {
        bail!("unexpected answer from the coordinator");
    };
    match args.output {
        OutputFormat::Json => print_json(&me)?,
        OutputFormat::Table => println!("{} ({})", me.name, me.role.as_str()),
    }
    Ok(())
}
