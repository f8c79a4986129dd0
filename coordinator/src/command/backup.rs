//! `drover backup FILE` and `drover restore FILE --state-dir DIR`.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;

use anyhow::{bail, Context, Result};
use indicatif::{ProgressBar, ProgressStyle};

use crate::backup::seal::{BackupKey, Sealer};
use crate::backup::Opening;
use crate::cli::{BackupArgs, RestoreArgs};
use crate::output::{self, OutputFormat};

use super::{connect, print_json, refused};

/// Takes a backup from the coordinator, sealed with the backup key as it
/// arrives, into `FILE.partial` (mode 0600), checks its size and SHA-256,
/// syncs it and renames it to FILE; an existing FILE is never replaced.
pub async fn backup(args: BackupArgs) -> Result<()> {
    let file = &args.file;
    if file.exists() {
        bail!("{} exists; name a new file (a backup is never written over another file)", file.display());
    }
    let key = if args.new_key {
        let key = BackupKey::create(&args.key)?;
        eprintln!("a new backup key was written to {} (id {}): keep it apart from the backups; restore needs it", args.key.display(), key.id_hex());
        key
    } else {
        BackupKey::load(&args.key)?
    };
    let partial = file.with_file_name(format!("{}.partial", file.file_name().context("FILE needs a file name")?.to_string_lossy()));
    let out = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&partial)
        .with_context(|| format!("creating {} (remove it if a backup was cut off)", partial.display()))?;
    let mut sealer = Sealer::new(std::io::BufWriter::new(out), &key, args.encrypt)?;
    let bar = ProgressBar::new_spinner();
    if args.admin.output == OutputFormat::Json {
        bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    bar.set_style(ProgressStyle::with_template("{spinner} backup: {msg}").expect("static template"));
    let taken = async {
        let client = connect(&args.admin).await?;
        let result = client.backup(&mut sealer, |n| bar.set_message(output::bytes(n))).await;
        client.close().await;
        result
    }
    .await
    .and_then(|done| {
        let out = sealer.finish()?.into_inner().map_err(|e| e.into_error()).context("writing the backup")?;
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
        OutputFormat::Json => print_json(&serde_json::json!({
            "file": file, "bytes": bytes, "sha256": sha256, "key_id": key.id_hex(), "encrypted": args.encrypt,
            "file_bytes": std::fs::metadata(file).map(|m| m.len()).ok(),
        }))?,
        OutputFormat::Table => {
            crate::out!(
                "backup written to {} ({}, sha256 {sha256}), sealed with key {}{}",
                file.display(),
                output::bytes(bytes),
                key.id_hex(),
                if args.encrypt { " and encrypted" } else { "" }
            );
            if !args.encrypt {
                eprintln!("it holds the fleet CA's key and every secret in clear: keep it where only admins can read it (or take it with --encrypt)");
            }
        }
    }
    let _ = std::io::stdout().flush();
    Ok(())
}

pub fn restore(args: RestoreArgs) -> Result<()> {
    let key = args.key.as_deref().map(BackupKey::load).transpose()?;
    let how = Opening { key: key.as_ref(), unauthenticated: args.unauthenticated };
    let summary = if args.check { crate::backup::inspect(&args.file, &how)? } else { crate::backup::restore(&args.file, &args.state_dir, &how)? };
    match args.output {
        OutputFormat::Json => print_json(&serde_json::json!({
            "file": args.file,
            "state_dir": if args.check { None } else { Some(&args.state_dir) },
            "created_at": summary.created_at,
            "software": summary.software,
            "records": summary.records.iter().cloned().collect::<std::collections::BTreeMap<_, _>>(),
            "sealed": summary.sealed,
        }))?,
        OutputFormat::Table => {
            let records: usize = summary.records.iter().map(|(_, n)| n).sum();
            let what = format!(
                "backup of {} by {} ({records} records: {})",
                output::timestamp(summary.created_at),
                summary.software,
                summary.records.iter().filter(|(_, n)| *n > 0).map(|(t, n)| format!("{n} {t}")).collect::<Vec<_>>().join(", ")
            );
            let sealed = match &summary.sealed {
                Some(seal) => format!("sealed with key {}{}, checked", seal.key_id, if seal.encrypted { " and encrypted" } else { "" }),
                None => "NOT sealed: nothing shows it is unchanged".to_string(),
            };
            let what = format!("{what}; {sealed}");
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
