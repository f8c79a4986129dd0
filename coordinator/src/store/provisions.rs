//! Provisions, keyed by name; the last applied fleet.

use crate::model::{FleetRecord, ProvisionRecord};

use super::{Record, Store, StoreError, Tree};

impl Record for ProvisionRecord {
    const TREE: Tree = Tree::Provisions;
    const WHAT: &'static str = "provision";
}

impl Record for FleetRecord {
    const TREE: Tree = Tree::Fleet;
    const WHAT: &'static str = "fleet";
}

/// The one key of the fleet tree.
pub const FLEET_KEY: &[u8] = b"applied";

impl Store {
    pub fn fleet(&self) -> Result<Option<FleetRecord>, StoreError> {
        self.get(FLEET_KEY)
    }

    pub fn provision(&self, name: &str) -> Result<Option<ProvisionRecord>, StoreError> {
        self.get(name.as_bytes())
    }

    pub fn provisions(&self) -> Result<Vec<ProvisionRecord>, StoreError> {
        self.list(b"")
    }
}
