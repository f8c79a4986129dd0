//! `drover backup FILE` and `drover restore FILE --state-dir DIR`.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;

use anyhow::{bail, Context, Result};
use indicatif::{ProgressBar, ProgressStyle};

use crate::cli::{BackupArgs, RestoreArgs};
use crate::output::{self, OutputFormat};

use super::{connect, print_json, refused};

/// Takes a backup from the coordinator into `FILE.partial` (mode 0600),
/// checks its size and SHA-256, syncs it and renames it to FILE; an existing
/// FILE is never replaced.
pub async fn backup(args: BackupArgs) -> Result<()> {
    let file = &args.file;
    if file.exists() {
        bail!("{} exists; name a new file (a backup is never written over another file)", file.display());
    }
    let partial = file.with_file_name(format!(
        "{}.partial",
        file.file_name().context("FILE needs a file name")?.to_string_lossy()
    ));
    let mut out = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&partial)
        .with_context(|| format!("creating {} (remove it if a backup was cut off)", partial.display()))?;
    let bar = ProgressBar::new_spinner();
    if args.admin.output == OutputFormat::Json {
        bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    bar.set_style(ProgressStyle::with_template("{spinner} backup: {msg}").expect("static template"));
    let taken = async {
        let client = connect(&args.admin).await?;
        let result = client.backup(&mut out, |n| bar.set_message(output::bytes(n))).await;
        client.close().await;
        result
    }
    .await
    .and_then(|done| {
        out.sync_all().context("syncing the backup")?;
        std::fs::rename(&partial, file).with_context(|| format!("renaming {} to {}", partial.display(), file.display()))?;
        Ok(done)
    });
    bar.finish_and_clear();
    let (bytes, sha256) = match taken {
        Ok(done) => done,
        Err(e) => {
            let _ = std::fs::remove_file(&partial);
            return Err(match e.downcast::<drover_net::client::ClientError>() {
                Ok(client) => refused(client, "the backup"),
                Err(other) => other.context("the backup failed; nothing was kept"),
            });
        }
    };
    match args.admin.output {
        OutputFormat::Json => print_json(&serde_json::json!({ "file": file, "bytes": bytes, "sha256": sha256 }))?,
        OutputFormat::Table => {
            crate::out!("backup written to {} ({}, sha256 {sha256})", file.display(), output::bytes(bytes));
            eprintln!("it holds the fleet CA's key: keep it where only admins can read it");
        }
    }
    let _ = std::io::stdout().flush();
    Ok(())
}

pub fn restore(args: RestoreArgs) -> Result<()> {
    let summary = if args.check {
        crate::backup::inspect(&args.file)?
    } else {
        crate::backup::restore(&args.file, &args.state_dir)?
    };
    match args.output {
        OutputFormat::Json => print_json(&serde_json::json!({
            "file": args.file,
            "state_dir": if args.check { None } else { Some(&args.state_dir) },
            "created_at": summary.created_at,
            "software": summary.software,
            "records": summary.records.iter().cloned().collect::<std::collections::BTreeMap<_, _>>(),
        }))?,
        OutputFormat::Table => {
            let records: usize = summary.records.iter().map(|(_, n)| n).sum();
            let what = format!(
                "backup of {} by {} ({records} records: {})",
                output::timestamp(summary.created_at),
                summary.software,
                summary.records.iter().filter(|(_, n)| *n > 0).map(|(t, n)| format!("{n} {t}")).collect::<Vec<_>>().join(", ")
            );
            if args.check {
                crate::out!("{} is a good {what}", args.file.display());
            } else {
                crate::out!("restored the {what} into {}", args.state_dir.display());
                crate::out!("start it with: drover serve --state-dir {}", args.state_dir.display());
            }
        }
    }
    Ok(())
}
