//! `drover coordinators list`: the fleet's coordinators, the leader first, with the agents each holds and how long its presence lasts.

use anyhow::Result;

use drover_protocol::v1::AdminRequest;

use crate::cli::AdminArgs;
use crate::output::{self, OutputFormat};

use super::{call, print_json};

pub async fn list(admin: AdminArgs) -> Result<()> {
    let coordinators = call(&admin, AdminRequest::CoordinatorsList, "listing the coordinators").await?.coordinators()?;
    match admin.output {
        OutputFormat::Json => print_json(&coordinators)?,
        OutputFormat::Table => {
            let now = crate::app::now_ms();
            let mut t = output::table(&["ADDRESS", "ROLE", "AGENTS", "PID", "SINCE", "SAID", "LEASE LEFT"]);
            for c in &coordinators {
                t.add_row(vec![
                    c.address.clone(),
                    if c.leading { "leader" } else { "serving" }.to_string(),
                    c.agents.to_string(),
                    c.pid.to_string(),
                    output::timestamp(c.since),
                    output::ago(Some(c.updated_at), now),
                    c.lease_left_s.map_or("-".into(), |s| format!("{s}s")),
                ]);
            }
            crate::out!("{t}");
        }
    }
    Ok(())
}
