//! Rollouts, keyed by id; each holds the planner's state.

use crate::model::RolloutRecord;

use super::{Record, Store, StoreError, Tree};

impl Record for RolloutRecord {
    const TREE: Tree = Tree::Rollouts;
    const WHAT: &'static str = "rollout";
}

impl Store {
    pub fn rollout(&self, id: &str) -> Result<Option<RolloutRecord>, StoreError> {
        self.get(id.as_bytes())
    }

    /// Every rollout, oldest first.
    pub fn rollouts(&self) -> Result<Vec<RolloutRecord>, StoreError> {
        let mut all: Vec<RolloutRecord> = self.list(b"")?;
        all.sort_by(|a, b| a.created_at.cmp(&b.created_at).then(a.id.cmp(&b.id)));
        Ok(all)
    }
}
