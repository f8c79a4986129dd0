//! Machines, enrollment tokens, enrollments and admins: keyed by machine id,
//! token hash (the token text is never stored), the enrolled public key's
//! SHA-256, and admin name.

use crate::model::{AdminRecord, EnrollmentRecord, MachineRecord, TokenRecord};

use super::{Record, Store, StoreError, Tree};

impl Record for MachineRecord {
    const TREE: Tree = Tree::Machines;
    const WHAT: &'static str = "machine";
}

impl Record for TokenRecord {
    const TREE: Tree = Tree::Tokens;
    const WHAT: &'static str = "token";
}

impl Record for AdminRecord {
    const TREE: Tree = Tree::Admins;
    const WHAT: &'static str = "admin";
}

impl Record for EnrollmentRecord {
    const TREE: Tree = Tree::Enrollments;
    const WHAT: &'static str = "enrollment";
}

impl Store {
    pub fn machine(&self, id: &str) -> Result<Option<MachineRecord>, StoreError> {
        self.get(id.as_bytes())
    }

    pub fn machines(&self) -> Result<Vec<MachineRecord>, StoreError> {
        self.list(b"")
    }

    pub fn token_by_hash(&self, hash: &str) -> Result<Option<TokenRecord>, StoreError> {
        self.get(hash.as_bytes())
    }

    pub fn tokens(&self) -> Result<Vec<TokenRecord>, StoreError> {
        self.list(b"")
    }

    pub fn admin(&self, name: &str) -> Result<Option<AdminRecord>, StoreError> {
        self.get(name.as_bytes())
    }

    pub fn admins(&self) -> Result<Vec<AdminRecord>, StoreError> {
        self.list(b"")
    }
}
