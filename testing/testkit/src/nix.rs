//! The coordinator's Nix calls, answered from a table.

use std::collections::BTreeMap;
use std::sync::Mutex;

use drover_coordinator::nix::Nix;

/// Answers `diff_closures` for the pairs it was given; `None` for others,
/// as the real one does for closures its store lacks.
#[derive(Default)]
pub struct FakeNix {
    diffs: Mutex<BTreeMap<(String, String), String>>,
}

impl FakeNix {
    pub fn set_diff(&self, before: &str, after: &str, diff: &str) {
        self.diffs.lock().unwrap_or_else(std::sync::PoisonError::into_inner).insert((before.into(), after.into()), diff.into());
    }
}

#[async_trait::async_trait]
impl Nix for FakeNix {
    async fn diff_closures(&self, before: &str, after: &str) -> Option<String> {
        self.diffs.lock().unwrap_or_else(std::sync::PoisonError::into_inner).get(&(before.to_string(), after.to_string())).cloned()
    }
}
