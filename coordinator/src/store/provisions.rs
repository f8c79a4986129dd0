//! Provisions, keyed by name.

use crate::model::ProvisionRecord;

use super::{Record, Store, StoreError, Tree};

impl Record for ProvisionRecord {
    const TREE: Tree = Tree::Provisions;
    const WHAT: &'static str = "provision";
}

impl Store {
    pub fn provision(&self, name: &str) -> Result<Option<ProvisionRecord>, StoreError> {
        self.get(name.as_bytes())
    }

    pub fn provisions(&self) -> Result<Vec<ProvisionRecord>, StoreError> {
        self.list(b"")
    }
}
