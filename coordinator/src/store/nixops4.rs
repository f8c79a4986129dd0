//! NixOps4 state documents, by name, and their events, by name and index.

use crate::model::{NixopsEventRecord, NixopsStateRecord};

use super::{Record, Store, StoreError, Tree};

impl Record for NixopsStateRecord {
    const TREE: Tree = Tree::NixopsStates;
    const WHAT: &'static str = "NixOps4 state";
}

impl Record for NixopsEventRecord {
    const TREE: Tree = Tree::NixopsEvents;
    const WHAT: &'static str = "NixOps4 state event";
}

/// The key of a state's event: its name, `/` and the index in 20 digits,
/// so that a state's events are kept in order.
pub fn event_key(name: &str, index: u64) -> Vec<u8> {
    format!("{name}/{index:020}").into_bytes()
}

impl Store {
    pub fn nixops_state(&self, name: &str) -> Result<Option<NixopsStateRecord>, StoreError> {
        self.get(name.as_bytes())
    }

    pub fn nixops_event(&self, name: &str, index: u64) -> Result<Option<NixopsEventRecord>, StoreError> {
        self.get(&event_key(name, index))
    }
}
