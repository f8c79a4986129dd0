//! Tenants, keyed by domain.

use crate::model::TenantRecord;

use super::{Record, Store, StoreError, Tree};

impl Record for TenantRecord {
    const TREE: Tree = Tree::Tenants;
    const WHAT: &'static str = "tenant";
}

impl Store {
    pub fn tenant(&self, domain: &str) -> Result<Option<TenantRecord>, StoreError> {
        self.get(domain.as_bytes())
    }

    pub fn tenants(&self) -> Result<Vec<TenantRecord>, StoreError> {
        self.list(b"")
    }
}
