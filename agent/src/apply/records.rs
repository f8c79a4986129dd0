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

fn write_json<T: Serialize>(path: &Path, value: &T) {
    let text = match serde_json::to_vec_pretty(value) {
        Ok(text) => text,
        Err(e) => {
            tracing::error!(path = %path.display(), error = %e, "cannot encode the apply state");
            return;
        }
    };
    if let Err(e) = drover_net::fsutil::write_atomic(path, &text, 0o600) {
        tracing::error!(path = %path.display(), error = %e, "cannot record the apply state");
    }
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

    pub fn journal(&self) -> Option<Journal> {
        read_json(&self.dir.join(JOURNAL_FILE))
    }

    pub fn save_journal(&self, journal: &Journal) {
        write_json(&self.dir.join(JOURNAL_FILE), journal);
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
                write_json(&self.dir.join(APPLIED_FILE), &a);
            }
        }
    }

    /// Records the outcome, then drops the journal.
    pub fn finish(&self, applied: &Applied) {
        write_json(&self.dir.join(APPLIED_FILE), applied);
        self.drop_journal();
    }
}
