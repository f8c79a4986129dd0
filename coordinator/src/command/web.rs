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
            eprintln!("Open this link in a browser within {} (it works once).", output::until(link.expires_at, crate::app::now_ms()).trim_start_matches("in "));
        }
    }
    Ok(())
}
