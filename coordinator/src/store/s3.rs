//! The Garage nodes recorded for the S3 cluster, keyed by admin endpoint.

use crate::model::S3NodeRecord;

use super::{Record, Store, StoreError, Tree};

impl Record for S3NodeRecord {
    const TREE: Tree = Tree::S3Nodes;
    const WHAT: &'static str = "S3 node";
}

impl Store {
    pub fn s3_nodes(&self) -> Result<Vec<S3NodeRecord>, StoreError> {
        self.list(b"")
    }
}
