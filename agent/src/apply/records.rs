//! The apply's two records in the state directory, written atomically:
//! `apply.json` (the journal of the apply under way) and `applied.json`
//! (the last finished generation and whether the coordinator heard it).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::core::{Applied, Journal};

pub const JOURNAL_FILE: &str = "apply.json";
pub const APPLIED_FILE: &str = "applied.json";

fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Option<T> {
    let text = std::fs::read_to_string(path).ok()?;
    match serde_json::from_str(&text) {
        Ok(v) => Some(v),
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "unreadable record ignored");
            None
        }
    }
}

/// Writes `value` atomically: the old file stays whole when this fails (a
/// full disk), and the error says which file.
fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<(), String> {
    let text = serde_json::to_vec_pretty(value).map_err(|e| format!("cannot encode {}: {e}", path.display()))?;
    drover_net::fsutil::write_atomic(path, &text, 0o600).map_err(|e| {
        tracing::error!(path = %path.display(), error = %e, "cannot record the apply state");
        format!("cannot write {}: {e}", path.display())
    })
}

/// Reads and writes the apply records in the state directory.
#[derive(Clone)]
pub struct Records {
    dir: PathBuf,
}

impl Records {
    pub fn new(dir: &Path) -> Self {
        Records { dir: dir.to_path_buf() }
    }

    /// The journal of an apply under way. A damaged one (cut short by a
    /// crash of the disk, or garbled) is moved aside to `apply.json.damaged`
    /// with an error naming it: the agent then applies its newest
    /// assignment again, which converges.
    pub fn journal(&self) -> Option<Journal> {
        let path = self.dir.join(JOURNAL_FILE);
        let text = std::fs::read_to_string(&path).ok()?;
        match serde_json::from_str(&text) {
            Ok(journal) => Some(journal),
            Err(e) => {
                let aside = self.dir.join(format!("{JOURNAL_FILE}.damaged"));
                let moved = std::fs::rename(&path, &aside);
                tracing::error!(
                    path = %path.display(),
                    error = %e,
                    moved_to = %aside.display(),
                    moved = moved.is_ok(),
                    "the journal of the apply under way is damaged; it was moved aside and the newest assignment is applied again (check the running system with `nixos-rebuild list-generations`)"
                );
                None
            }
        }
    }

    /// Writes the journal; an error means the apply must not go on.
    pub fn save_journal(&self, journal: &Journal) -> Result<(), String> {
        write_json(&self.dir.join(JOURNAL_FILE), journal)
    }

    pub fn drop_journal(&self) {
        let _ = std::fs::remove_file(self.dir.join(JOURNAL_FILE));
    }

    pub fn applied(&self) -> Option<Applied> {
        read_json(&self.dir.join(APPLIED_FILE))
    }

    /// The last finished generation (0 when none).
    pub fn last_generation(&self) -> u64 {
        self.applied().map(|a| a.generation).unwrap_or(0)
    }

    pub fn mark_reported(&self, generation: u64) {
        if let Some(mut a) = self.applied() {
            if a.generation == generation && !a.reported {
                a.reported = true;
                let _ = write_json(&self.dir.join(APPLIED_FILE), &a);
            }
        }
    }

    /// Records the outcome, then drops the journal.
    pub fn finish(&self, applied: &Applied) {
        // Not recorded (a full disk): the generation is applied again after
        // a restart, which converges.
        let _ = write_json(&self.dir.join(APPLIED_FILE), applied);
        self.drop_journal();
    }
}
