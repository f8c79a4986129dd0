//! Volumes, keyed by name.

use crate::model::VolumeRecord;

use super::{Record, Store, StoreError, Tree};

impl Record for VolumeRecord {
    const TREE: Tree = Tree::Volumes;
    const WHAT: &'static str = "volume";
}

impl Store {
    pub fn volume(&self, name: &str) -> Result<Option<VolumeRecord>, StoreError> {
        self.get(name.as_bytes())
    }

    pub fn volumes(&self) -> Result<Vec<VolumeRecord>, StoreError> {
        self.list(b"")
    }
}
