//! Assignments and deployment records, both keyed by machine id, `/` and
//! the generation as a big-endian u64 (so one machine's are in order).

use crate::model::{AssignmentRecord, DeploymentRecord};

use super::specs::Sharing;
use super::{Record, Store, StoreError, Tree};

impl Record for AssignmentRecord {
    const TREE: Tree = Tree::Assignments;
    const WHAT: &'static str = "assignment";
    const SHARING: Sharing = Sharing::Assignment;
}

impl Record for DeploymentRecord {
    const TREE: Tree = Tree::Deployments;
    const WHAT: &'static str = "deployment";
    const SHARING: Sharing = Sharing::Deployment;
}

/// The key of `machine`'s assignment and deployment at `generation`.
pub fn generation_key(machine: &str, generation: u64) -> Vec<u8> {
    let mut key = machine.as_bytes().to_vec();
    key.push(b'/');
    key.extend_from_slice(&generation.to_be_bytes());
    key
}

impl Store {
    pub fn assignment(&self, machine: &str, generation: u64) -> Result<Option<AssignmentRecord>, StoreError> {
        self.get(&generation_key(machine, generation))
    }

    pub fn deployment(&self, machine: &str, generation: u64) -> Result<Option<DeploymentRecord>, StoreError> {
        self.get(&generation_key(machine, generation))
    }

    /// Deployments, oldest first; of one machine, or of all.
    pub fn deployments(&self, machine: Option<&str>) -> Result<Vec<DeploymentRecord>, StoreError> {
        let mut out: Vec<DeploymentRecord> = match machine {
            Some(id) => {
                let mut prefix = id.as_bytes().to_vec();
                prefix.push(b'/');
                self.list(&prefix)?
            }
            None => self.list(b"")?,
        };
        out.sort_by(|a, b| a.created_at.cmp(&b.created_at).then(a.id.cmp(&b.id)));
        Ok(out)
    }
}
