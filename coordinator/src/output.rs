//! Output for people (tables) and for scripts (`--output json`).

use comfy_table::{presets::UTF8_BORDERS_ONLY, Table};
use serde::Serialize;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum OutputFormat {
    #[default]
    Table,
    Json,
}

/// Exit code when standard output was closed early (`drover ... | head`),
/// as a process killed by SIGPIPE reports it.
pub const EXIT_CLOSED_PIPE: i32 = 128 + 13;

/// Writes one line on standard output. A reader that went away (a closed
/// pipe) ends the process quietly, as it ends other Unix tools, instead of
/// a panic.
pub fn write_line(args: std::fmt::Arguments<'_>) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let written = out.write_fmt(args).and_then(|()| out.write_all(b"\n"));
    if let Err(e) = written {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(EXIT_CLOSED_PIPE);
        }
        eprintln!("error: cannot write to standard output: {e}");
        std::process::exit(1);
    }
}

/// `println!` for the CLI's standard output, through [`write_line`].
#[macro_export]
macro_rules! out {
    ($($arg:tt)*) => {
        $crate::output::write_line(format_args!($($arg)*))
    };
}

/// Prints `value` as pretty JSON on standard output.
pub fn json<T: Serialize>(value: &T) -> anyhow::Result<()> {
    crate::out!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

/// A table with a header row.
pub fn table(header: &[&str]) -> Table {
    let mut t = Table::new();
    t.load_preset(UTF8_BORDERS_ONLY);
    t.set_header(header.to_vec());
    t
}

/// "12s ago", "3h ago"; "never" for none.
pub fn ago(then: Option<u64>, now: u64) -> String {
    match then {
        None => "never".into(),
        Some(t) => {
            let secs = now.saturating_sub(t) / 1000;
            format!("{} ago", humantime::format_duration(std::time::Duration::from_secs(secs)))
        }
    }
}

/// "in 6days 23h", or "expired".
pub fn until(then: u64, now: u64) -> String {
    if then <= now {
        return "expired".into();
    }
    let secs = (then - now) / 1000;
    format!("in {}", humantime::format_duration(std::time::Duration::from_secs(secs)))
}

/// An RFC 3339 timestamp for milliseconds since the epoch.
pub fn timestamp(ms: u64) -> String {
    humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms)).to_string()
}

pub fn labels(labels: &std::collections::BTreeMap<String, String>) -> String {
    labels.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(",")
}

/// Bytes in binary units, one decimal (`1.5 GiB`).
pub fn bytes(n: u64) -> String {
    bytesize::ByteSize::b(n).display().iec().to_string()
}

/// A duration for people ("1m 30s").
pub fn duration(d: std::time::Duration) -> String {
    humantime::format_duration(std::time::Duration::from_secs(d.as_secs())).to_string()
}
