//! `drover audit`.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use anyhow::{bail, Context, Result};
use indicatif::{ProgressBar, ProgressStyle};

use drover_protocol::v1::AdminRequest;

use crate::cli::{AuditArgs, Since};
use crate::output::{self, OutputFormat};

use super::{connect, print_json, refused};

fn since_ms(since: Since) -> u64 {
    let at = match since {
        Since::Ago(d) => std::time::SystemTime::now().checked_sub(d).unwrap_or(std::time::UNIX_EPOCH),
        Since::At(t) => t,
    };
    at.duration_since(std::time::UNIX_EPOCH).map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)).unwrap_or(0)
}

pub async fn run(args: AuditArgs) -> Result<()> {
    if let Some(file) = &args.export {
        return export(&args, file).await;
    }
    let request = AdminRequest::Audit { since: args.since.map(since_ms), admin: args.by_admin.clone(), limit: args.limit };
    let entries = super::call(&args.admin, request, "reading the audit log").await?.audit()?;
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

/// Entries asked for per page.
const PAGE: u32 = 5_000;

/// `drover audit --export FILE`: every entry, oldest first, as JSON Lines
/// in `FILE.partial` (mode 0600), renamed to FILE when the last page is in.
async fn export(args: &AuditArgs, file: &Path) -> Result<()> {
    if file.exists() {
        bail!("{} exists; name a new file (an export is never written over another file)", file.display());
    }
    let partial = file.with_file_name(format!("{}.partial", file.file_name().context("--export needs a file name")?.to_string_lossy()));
    let mut out = std::io::BufWriter::new(
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&partial)
            .with_context(|| format!("creating {} (remove it if an export was cut off)", partial.display()))?,
    );
    let bar = ProgressBar::new_spinner();
    if args.admin.output == OutputFormat::Json {
        bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    bar.set_style(ProgressStyle::with_template("{spinner} audit export: {msg}").expect("static template"));
    let written = async {
        let client = connect(&args.admin).await?;
        let mut after = None;
        let mut n = 0u64;
        let result = loop {
            let request = AdminRequest::AuditExport { after: after.take(), limit: PAGE };
            let page = match client.call(request).await.map_err(|e| refused(e, "exporting the audit log")).and_then(|a| Ok(a.audit_page()?)) {
                Ok(page) => page,
                Err(e) => break Err(e),
            };
            for entry in &page.0 {
                serde_json::to_writer(&mut out, entry)?;
                out.write_all(b"\n")?;
            }
            n += page.0.len() as u64;
            bar.set_message(format!("{n} entries"));
            match page.1 {
                Some(next) => after = Some(next),
                None => break Ok(n),
            }
        };
        client.close().await;
        let n = result?;
        out.flush()?;
        out.get_ref().sync_all().context("syncing the export")?;
        std::fs::rename(&partial, file).with_context(|| format!("renaming {} to {}", partial.display(), file.display()))?;
        Ok::<_, anyhow::Error>(n)
    }
    .await;
    bar.finish_and_clear();
    let n = match written {
        Ok(n) => n,
        Err(e) => {
            let _ = std::fs::remove_file(&partial);
            return Err(e.context("the export failed; nothing was kept"));
        }
    };
    match args.admin.output {
        OutputFormat::Json => print_json(&serde_json::json!({ "file": file, "entries": n }))?,
        OutputFormat::Table => crate::out!("{n} audit entries written to {}", file.display()),
    }
    Ok(())
}
