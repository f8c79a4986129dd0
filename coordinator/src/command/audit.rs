//! `drover audit`.

use anyhow::{bail, Result};

use drover_protocol::v1::{AdminRequest, AdminResponse};

use crate::cli::{AuditArgs, Since};
use crate::output::{self, OutputFormat};

use super::{call, print_json};

fn since_ms(since: Since) -> u64 {
    let at = match since {
        Since::Ago(d) => std::time::SystemTime::now().checked_sub(d).unwrap_or(std::time::UNIX_EPOCH),
        Since::At(t) => t,
    };
    at.duration_since(std::time::UNIX_EPOCH).map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)).unwrap_or(0)
}

pub async fn run(args: AuditArgs) -> Result<()> {
    let request = AdminRequest::Audit { since: args.since.map(since_ms), admin: args.by_admin.clone(), limit: args.limit };
    let AdminResponse::Audit(entries) = call(&args.admin, request, "reading the audit log").await? else {
        bail!("unexpected answer from the coordinator");
    };
    match args.admin.output {
        OutputFormat::Json => print_json(&entries)?,
        OutputFormat::Table => {
            let mut t = output::table(&["TIME", "ADMIN", "ACTION", "TARGET", "OUTCOME"]);
            for e in &entries {
                t.add_row(vec![output::timestamp(e.at), e.admin.clone(), e.action.clone(), e.target.clone(), e.outcome.clone()]);
            }
            crate::out!("{t}");
        }
    }
    Ok(())
}
