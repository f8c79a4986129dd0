//! `drover web login`: a one-time link to the fleet page.

use anyhow::Result;

use drover_protocol::v1::AdminRequest;

use crate::cli::AdminArgs;
use crate::output::{self, OutputFormat};

use super::{call, print_json};

pub async fn login(admin: AdminArgs) -> Result<()> {
    let link = call(&admin, AdminRequest::WebLogin, "asking for a link to the fleet page").await?.web_login_link()?;
    match admin.output {
        OutputFormat::Json => print_json(&link)?,
        OutputFormat::Table => {
            crate::out!("{}", link.url);
            let left = std::time::Duration::from_millis(link.expires_at.saturating_sub(crate::app::now_ms()));
            eprintln!("Open this link in a browser within {} (it works once).", output::duration(left));
        }
    }
    Ok(())
}
