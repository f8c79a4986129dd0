//! `drover admins add|list|add-key|remove-key|keys|remove` and `drover whoami`.

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
            crate::app::machines::check_admin_name(&name).map_err(anyhow::Error::msg)?;
            let out = out.unwrap_or_else(|| format!("{name}.bundle").into());
            if out.exists() {
                bail!("{} already exists; choose another --out", out.display());
            }
            let key = identity::generate_key()?;
            let csr = identity::csr_der(&key, &name)?;
            let answer = call(&admin, AdminRequest::AdminsAdd { name: name.clone(), role, csr_der: csr }, &format!("adding admin {name}")).await?;
            let issued = answer.admin_created()?;
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
                OutputFormat::Table => crate::out!("admin {name} ({}) added; bundle written to {}", role.as_str(), out.display()),
            }
        }
        AdminsCommand::List { admin } => {
            let answer = call(&admin, AdminRequest::AdminsList, "listing admins").await?;
            let admins = answer.admins()?;
            match admin.output {
                OutputFormat::Json => print_json(&admins)?,
                OutputFormat::Table => {
                    let mut t = output::table(&["NAME", "ROLE", "CREATED"]);
                    for a in &admins {
                        t.add_row(vec![a.name.clone(), a.role.as_str().to_string(), output::timestamp(a.created_at)]);
                    }
                    crate::out!("{t}");
                }
            }
        }
        AdminsCommand::AddKey { name, keyfile, login, admin } => {
            let key = read_key_file(&keyfile)?;
            let request = AdminRequest::AdminsAddKey { name: name.clone(), login, key };
            let keys = keys_answer(call(&admin, request, &format!("adding an SSH key for {name}")).await?)?;
            print_keys(&admin, &keys, "The key reaches the machines this admin manages with their next generation.")?;
        }
        AdminsCommand::RemoveKey { name, key, admin } => {
            let fingerprint = if key.starts_with("SHA256:") {
                key
            } else {
                let text = read_key_file(std::path::Path::new(&key))?;
                crate::tenancy::parse_ssh_key(&text).map_err(anyhow::Error::msg)?.fingerprint
            };
            let request = AdminRequest::AdminsRemoveKey { name: name.clone(), fingerprint };
            let keys = keys_answer(call(&admin, request, &format!("removing an SSH key of {name}")).await?)?;
            print_keys(&admin, &keys, "The key leaves every machine with its next generation.")?;
        }
        AdminsCommand::Keys { name, admin } => {
            let keys = keys_answer(call(&admin, AdminRequest::AdminsKeys { name }, "listing SSH keys").await?)?;
            print_keys(&admin, &keys, "")?;
        }
        AdminsCommand::Remove { name, admin } => {
            call(&admin, AdminRequest::AdminsRemove { name: name.clone() }, &format!("removing admin {name}")).await?;
            match admin.output {
                OutputFormat::Json => print_json(&serde_json::json!({ "removed": name }))?,
                OutputFormat::Table => {
                    crate::out!("admin {name} removed; their certificate no longer works, their SSH keys leave every machine with its next generation")
                }
            }
        }
    }
    Ok(())
}

/// A public key file's text (`-`: standard input), at most 16 KiB.
fn read_key_file(path: &std::path::Path) -> Result<String> {
    use std::io::Read;
    let mut text = String::new();
    let limit = 16 << 10;
    if path.as_os_str() == "-" {
        std::io::stdin().take(limit + 1).read_to_string(&mut text).context("reading the key from standard input")?;
    } else {
        std::fs::File::open(path)
            .with_context(|| format!("cannot open the key file {}", path.display()))?
            .take(limit + 1)
            .read_to_string(&mut text)
            .with_context(|| format!("reading {}", path.display()))?;
    }
    if text.len() as u64 > limit {
        bail!("{} is larger than 16 KiB; give a public key file (.pub)", path.display());
    }
    Ok(text)
}

fn keys_answer(answer: AdminResponse) -> Result<Vec<drover_protocol::v1::SshKeyInfo>> {
    Ok(answer.ssh_keys()?)
}

fn print_keys(admin: &AdminArgs, keys: &[drover_protocol::v1::SshKeyInfo], note: &str) -> Result<()> {
    match admin.output {
        OutputFormat::Json => print_json(&keys)?,
        OutputFormat::Table => {
            let mut t = output::table(&["ADMIN", "LOGIN", "FINGERPRINT", "TYPE", "COMMENT", "ADDED"]);
            for k in keys {
                t.add_row(vec![k.admin.clone(), k.login.clone(), k.fingerprint.clone(), k.algorithm.clone(), k.comment.clone(), output::timestamp(k.added_at)]);
            }
            crate::out!("{t}");
            if !note.is_empty() {
                crate::out!("{note}");
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
    let me = answer.identity()?;
    match args.output {
        OutputFormat::Json => print_json(&me)?,
        OutputFormat::Table => crate::out!("{} ({})", me.name, me.role.as_str()),
    }
    Ok(())
}
