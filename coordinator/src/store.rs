//! Persistent state. [`Store`] is the interface the coordinator uses;
//! [`SledStore`] keeps it in sled under the state directory. This is the only
//! module that imports sled.
//!
//! Each value is JSON inside an envelope `{"v": N, "record": ...}`. Reading
//! an older `v` runs it through [`migrate`] first; a newer `v` than this build
//! knows is an error (the store was written by a newer coordinator). The
//! `meta` tree holds the schema version of the whole store.
//!
//! Durability: every write that records a decision (tokens, enrollments,
//! admins, revocations and labels, generations, deployment outcomes,
//! rollout steps, S3 nodes) is flushed to disk before the call returns, so
//! nothing a peer was told can be lost by a crash. Only health reports
//! (`record_health`) are left to sled's periodic flush.

use std::path::Path;

use serde::{de::DeserializeOwned, Deserialize, Serialize};
use sled::transaction::{ConflictableTransactionError, TransactionError, Transactional};

use crate::model::{
    deployment_id, AdminRecord, AssignmentRecord, DeploymentRecord, MachineRecord, RolloutRecord,
    S3NodeRecord, TenantRecord, TokenRecord, UnixMillis,
};
use crate::rollout::plan::{Actions, Slot};
use drover_protocol::v1::{DeployedTarget, DeploymentState};
use crate::tokens::{self, TokenRefusal};

/// The schema version this build writes.
pub const SCHEMA_VERSION: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store i/o failed: {0}")]
    Sled(#[from] sled::Error),
    #[error("stored record {key:?} in {tree} is unreadable: {reason}")]
    Corrupt {
        tree: &'static str,
        key: String,
        reason: String,
    },
    #[error("{what} {id:?} not found")]
    NotFound { what: &'static str, id: String },
    #[error("{0}")]
    Conflict(String),
    #[error(transparent)]
    Token(#[from] TokenRefusal),
    #[error("machine {0} was revoked")]
    Revoked(String),
    #[error("the store at {path} has schema version {found}, newer than this coordinator's {SCHEMA_VERSION}; upgrade drover")]
    TooNew { path: String, found: u32 },
}

/// The coordinator's view of its persistent state.
pub trait Store: Send + Sync + 'static {
    fn machine(&self, id: &str) -> Result<Option<MachineRecord>, StoreError>;
    fn machines(&self) -> Result<Vec<MachineRecord>, StoreError>;
    /// Records a health report (not flushed at once: losing the newest
    /// report in a crash is harmless, and reports are frequent).
    fn record_health(
        &self,
        id: &str,
        change: &dyn Fn(&mut MachineRecord) -> Result<(), StoreError>,
    ) -> Result<MachineRecord, StoreError>;

    /// Changes one machine atomically and durably; `change` may run more
    /// than once.
    fn update_machine(
        &self,
        id: &str,
        change: &dyn Fn(&mut MachineRecord) -> Result<(), StoreError>,
    ) -> Result<MachineRecord, StoreError>;

    fn insert_token(&self, token: &TokenRecord) -> Result<(), StoreError>;
    fn token_by_hash(&self, hash: &str) -> Result<Option<TokenRecord>, StoreError>;
    fn tokens(&self) -> Result<Vec<TokenRecord>, StoreError>;
    fn revoke_token(&self, id: &str) -> Result<TokenRecord, StoreError>;

    /// Spends one use of the token with `token_hash` and records `machine`
    /// (whose labels are replaced by the token's), in one transaction.
    fn enroll(
        &self,
        token_hash: &str,
        now: UnixMillis,
        machine: &MachineRecord,
    ) -> Result<MachineRecord, StoreError>;

    fn admin(&self, name: &str) -> Result<Option<AdminRecord>, StoreError>;
    fn admins(&self) -> Result<Vec<AdminRecord>, StoreError>;
    /// Inserts a new admin; refuses a name already taken.
    fn insert_admin(&self, admin: &AdminRecord) -> Result<(), StoreError>;
    /// Changes one admin atomically and durably.
    fn update_admin(
        &self,
        name: &str,
        change: &dyn Fn(&mut AdminRecord) -> Result<(), StoreError>,
    ) -> Result<AdminRecord, StoreError>;
    /// Removes an admin and takes it off every tenant it managed, together.
    fn remove_admin(&self, name: &str) -> Result<AdminRecord, StoreError>;

    fn tenant(&self, domain: &str) -> Result<Option<TenantRecord>, StoreError>;
    fn tenants(&self) -> Result<Vec<TenantRecord>, StoreError>;
    /// Inserts a new tenant; refuses a domain already recorded.
    fn insert_tenant(&self, tenant: &TenantRecord) -> Result<(), StoreError>;
    fn update_tenant(
        &self,
        domain: &str,
        change: &dyn Fn(&mut TenantRecord) -> Result<(), StoreError>,
    ) -> Result<TenantRecord, StoreError>;
    fn remove_tenant(&self, domain: &str) -> Result<TenantRecord, StoreError>;

    /// Records the next generation for each of `machines` in one
    /// transaction: its assignment, its deployment record, and the machine's
    /// desired generation. A still pending deployment of the previous
    /// generation becomes superseded. `make` builds the assignment and record
    /// for a machine and generation; it may run more than once.
    fn record_generation(
        &self,
        machines: &[String],
        make: &dyn Fn(&MachineRecord, u64) -> (AssignmentRecord, DeploymentRecord),
    ) -> Result<Vec<DeployedTarget>, StoreError>;

    fn assignment(&self, machine: &str, generation: u64) -> Result<Option<AssignmentRecord>, StoreError>;
    fn deployment(&self, machine: &str, generation: u64) -> Result<Option<DeploymentRecord>, StoreError>;
    /// Deployments, oldest first; of one machine, or of all.
    fn deployments(&self, machine: Option<&str>) -> Result<Vec<DeploymentRecord>, StoreError>;
    /// Changes a deployment and its machine together.
    fn update_deployment(
        &self,
        machine: &str,
        generation: u64,
        change: &dyn Fn(&mut DeploymentRecord, &mut MachineRecord) -> Result<(), StoreError>,
    ) -> Result<DeploymentRecord, StoreError>;

    /// The Garage nodes recorded for the S3 cluster, by admin endpoint.
    fn s3_nodes(&self) -> Result<Vec<S3NodeRecord>, StoreError>;
    /// Records (or replaces) a Garage node.
    fn put_s3_node(&self, node: &S3NodeRecord) -> Result<(), StoreError>;

    fn insert_rollout(&self, rollout: &RolloutRecord) -> Result<(), StoreError>;
    fn rollout(&self, id: &str) -> Result<Option<RolloutRecord>, StoreError>;
    fn rollouts(&self) -> Result<Vec<RolloutRecord>, StoreError>;
    /// Runs `step` on the rollout and records the generations it starts
    /// (built by `make`) or reverts (the previous generation's assignment
    /// again), all in one transaction. Returns the rollout and the new
    /// generations.
    fn rollout_step(
        &self,
        id: &str,
        step: &dyn Fn(&mut RolloutRecord) -> Actions,
        make: &dyn Fn(&RolloutRecord, &MachineRecord, u64) -> (AssignmentRecord, DeploymentRecord),
        remake: &dyn Fn(&AssignmentRecord, &MachineRecord, u64) -> (AssignmentRecord, DeploymentRecord),
    ) -> Result<(RolloutRecord, Vec<DeployedTarget>), StoreError>;

    /// Writes everything to disk.
    fn flush(&self) -> Result<(), StoreError>;
}

type TxTree = sled::transaction::TransactionalTree;

/// Reads, changes and writes back one record of `tree` in a transaction.
fn change_one<T: Serialize + DeserializeOwned>(
    tree: &sled::Tree,
    name: &'static str,
    what: &'static str,
    key: &str,
    change: &dyn Fn(&mut T) -> Result<(), StoreError>,
) -> Result<T, StoreError> {
    unwrap_tx(tree.transaction(|tx| {
        let Some(bytes) = tx.get(key)? else {
            return abort(StoreError::NotFound { what, id: key.to_string() });
        };
        let mut record: T = tx_decode(name, key.as_bytes(), &bytes)?;
        if let Err(e) = change(&mut record) {
            return abort(e);
        }
        tx.insert(key.as_bytes(), encode(&record))?;
        Ok(record)
    }))
}
type TxResult<T> = Result<T, ConflictableTransactionError<StoreError>>;

/// Decodes a value read inside a transaction; a bad value aborts it.
fn tx_decode<T: DeserializeOwned>(tree: &'static str, key: &[u8], bytes: &[u8]) -> TxResult<T> {
    decode(tree, key, bytes).map_err(ConflictableTransactionError::Abort)
}

/// Records the next generation of one machine inside a transaction.
fn record_in_tx(
    machines_tx: &TxTree,
    assignments_tx: &TxTree,
    deployments_tx: &TxTree,
    id: &str,
    make: &dyn Fn(&MachineRecord, u64) -> (AssignmentRecord, DeploymentRecord),
) -> TxResult<DeployedTarget> {
    let Some(bytes) = machines_tx.get(id.as_bytes())? else {
        return abort(StoreError::NotFound { what: "machine", id: id.to_string() });
    };
    let mut machine: MachineRecord = tx_decode(MACHINES, id.as_bytes(), &bytes)?;
    if machine.revoked_at.is_some() {
        return abort(StoreError::Revoked(id.to_string()));
    }
    let previous = machine.desired_generation;
    let generation = previous + 1;
    let (assignment, deployment) = make(&machine, generation);
    if previous > 0 {
        let key = generation_key(id, previous);
        if let Some(bytes) = deployments_tx.get(&key)? {
            let mut old: DeploymentRecord = tx_decode(DEPLOYMENTS, &key, &bytes)?;
            if old.state == DeploymentState::Pending {
                old.state = DeploymentState::Superseded;
                deployments_tx.insert(key, encode(&old))?;
            }
        }
    }
    let key = generation_key(id, generation);
    assignments_tx.insert(key.clone(), encode(&assignment))?;
    deployments_tx.insert(key, encode(&deployment))?;
    machine.desired_generation = generation;
    machines_tx.insert(id.as_bytes(), encode(&machine))?;
    Ok(DeployedTarget {
        machine_id: id.to_string(),
        hostname: machine.hostname.clone(),
        generation,
        deployment_id: deployment_id(id, generation),
    })
}


#[derive(Serialize, Deserialize)]
struct Envelope<T> {
    v: u32,
    record: T,
}

#[derive(Deserialize)]
struct VersionOnly {
    v: u32,
}

/// Brings a record written by an older schema up to [`SCHEMA_VERSION`]. There
/// is one version so far; each later version adds a step here.
fn migrate(tree: &'static str, v: u32, record: serde_json::Value) -> Result<serde_json::Value, String> {
    match v {
        SCHEMA_VERSION => Ok(record),
        other => Err(format!("no migration from version {other} for {tree}")),
    }
}

fn encode<T: Serialize>(record: &T) -> Vec<u8> {
    serde_json::to_vec(&Envelope {
        v: SCHEMA_VERSION,
        record,
    })
    .expect("records serialise to JSON")
}

fn decode<T: DeserializeOwned>(tree: &'static str, key: &[u8], bytes: &[u8]) -> Result<T, StoreError> {
    let corrupt = |reason: String| StoreError::Corrupt {
        tree,
        key: String::from_utf8_lossy(key).to_string(),
        reason,
    };
    let VersionOnly { v } = serde_json::from_slice(bytes).map_err(|e| corrupt(e.to_string()))?;
    if v == SCHEMA_VERSION {
        let envelope: Envelope<T> = serde_json::from_slice(bytes).map_err(|e| corrupt(e.to_string()))?;
        return Ok(envelope.record);
    }
    let envelope: Envelope<serde_json::Value> =
        serde_json::from_slice(bytes).map_err(|e| corrupt(e.to_string()))?;
    let record = migrate(tree, v, envelope.record).map_err(corrupt)?;
    serde_json::from_value(record).map_err(|e| corrupt(e.to_string()))
}

/// The sled-backed store.
pub struct SledStore {
    db: sled::Db,
    machines: sled::Tree,
    tokens: sled::Tree,
    admins: sled::Tree,
    /// Key: machine id, `/`, generation (big-endian u64).
    assignments: sled::Tree,
    /// Same keys as `assignments`.
    deployments: sled::Tree,
    rollouts: sled::Tree,
    s3_nodes: sled::Tree,
    tenants: sled::Tree,
}

fn generation_key(machine: &str, generation: u64) -> Vec<u8> {
    let mut key = machine.as_bytes().to_vec();
    key.push(b'/');
    key.extend_from_slice(&generation.to_be_bytes());
    key
}

const MACHINES: &str = "machines";
const TOKENS: &str = "tokens";
const ADMINS: &str = "admins";
const ASSIGNMENTS: &str = "assignments";
const DEPLOYMENTS: &str = "deployments";
const ROLLOUTS: &str = "rollouts";
const S3_NODES: &str = "s3_nodes";
const TENANTS: &str = "tenants";

fn abort<T>(e: StoreError) -> Result<T, ConflictableTransactionError<StoreError>> {
    Err(ConflictableTransactionError::Abort(e))
}

fn unwrap_tx<T>(r: Result<T, TransactionError<StoreError>>) -> Result<T, StoreError> {
    r.map_err(|e| match e {
        TransactionError::Abort(e) => e,
        TransactionError::Storage(e) => StoreError::Sled(e),
    })
}

impl SledStore {
    /// Opens (or creates) the store in `dir`.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        let db = sled::Config::new().path(dir).open()?;
        let meta = db.open_tree("meta")?;
        match meta.get("schema_version")? {
            Some(v) => {
                let found: u32 = std::str::from_utf8(&v)
                    .ok()
                    .and_then(|s| s.parse().ok())
                    .ok_or_else(|| StoreError::Corrupt {
                        tree: "meta",
                        key: "schema_version".into(),
                        reason: "not a number".into(),
                    })?;
                if found > SCHEMA_VERSION {
                    return Err(StoreError::TooNew {
                        path: dir.display().to_string(),
                        found,
                    });
                }
            }
            None => {
                meta.insert("schema_version", SCHEMA_VERSION.to_string().as_bytes())?;
            }
        }
        Ok(SledStore {
            machines: db.open_tree(MACHINES)?,
            tokens: db.open_tree(TOKENS)?,
            admins: db.open_tree(ADMINS)?,
            assignments: db.open_tree(ASSIGNMENTS)?,
            deployments: db.open_tree(DEPLOYMENTS)?,
            rollouts: db.open_tree(ROLLOUTS)?,
            s3_nodes: db.open_tree(S3_NODES)?,
            tenants: db.open_tree(TENANTS)?,
            db,
        })
    }

    /// Flushes after a successful write, so that it survives a crash.
    fn durable<T>(&self, result: Result<T, StoreError>) -> Result<T, StoreError> {
        let value = result?;
        self.db.flush()?;
        Ok(value)
    }

    fn change_machine(
        &self,
        id: &str,
        change: &dyn Fn(&mut MachineRecord) -> Result<(), StoreError>,
    ) -> Result<MachineRecord, StoreError> {
        change_one(&self.machines, MACHINES, "machine", id, change)
    }

    /// Inserts `record` under `key`, durably, unless the key is taken
    /// (a conflict saying `taken`).
    fn insert_new<T: Serialize>(&self, tree: &sled::Tree, key: &str, record: &T, taken: String) -> Result<(), StoreError> {
        let previous = tree.compare_and_swap(key, None as Option<&[u8]>, Some(encode(record)))?;
        self.durable(previous.map_err(|_| StoreError::Conflict(taken)))
    }

    /// One record by key, if present.
    fn one<T: DeserializeOwned>(tree: &sled::Tree, name: &'static str, key: &[u8]) -> Result<Option<T>, StoreError> {
        tree.get(key)?.map(|v| decode(name, key, &v)).transpose()
    }

    fn all<T: DeserializeOwned>(tree: &sled::Tree, name: &'static str) -> Result<Vec<T>, StoreError> {
        tree.iter()
            .map(|item| {
                let (k, v) = item?;
                decode(name, &k, &v)
            })
            .collect()
    }
}

impl Store for SledStore {
    fn machine(&self, id: &str) -> Result<Option<MachineRecord>, StoreError> {
        Self::one(&self.machines, MACHINES, id.as_bytes())
    }

    fn machines(&self) -> Result<Vec<MachineRecord>, StoreError> {
        Self::all(&self.machines, MACHINES)
    }

    fn record_health(
        &self,
        id: &str,
        change: &dyn Fn(&mut MachineRecord) -> Result<(), StoreError>,
    ) -> Result<MachineRecord, StoreError> {
        self.change_machine(id, change)
    }

    fn update_machine(
        &self,
        id: &str,
        change: &dyn Fn(&mut MachineRecord) -> Result<(), StoreError>,
    ) -> Result<MachineRecord, StoreError> {
        self.durable(self.change_machine(id, change))
    }

    fn insert_token(&self, token: &TokenRecord) -> Result<(), StoreError> {
        self.insert_new(&self.tokens, &token.hash, token, "token already exists".into())
    }

    fn token_by_hash(&self, hash: &str) -> Result<Option<TokenRecord>, StoreError> {
        self.tokens
            .get(hash)?
            .map(|v| decode(TOKENS, b"<hash>", &v))
            .transpose()
    }

    fn tokens(&self) -> Result<Vec<TokenRecord>, StoreError> {
        Self::all(&self.tokens, TOKENS)
    }

    fn revoke_token(&self, id: &str) -> Result<TokenRecord, StoreError> {
        let token = self
            .tokens()?
            .into_iter()
            .find(|t| t.id == id)
            .ok_or_else(|| StoreError::NotFound {
                what: "token",
                id: id.to_string(),
            })?;
        self.durable(unwrap_tx(self.tokens.transaction(|tx| {
            let Some(bytes) = tx.get(&token.hash)? else {
                return abort(StoreError::NotFound {
                    what: "token",
                    id: id.to_string(),
                });
            };
            let mut record: TokenRecord = tx_decode(TOKENS, b"<hash>", &bytes)?;
            record.revoked = true;
            tx.insert(token.hash.as_bytes(), encode(&record))?;
            Ok(record)
        })))
    }

    fn enroll(
        &self,
        token_hash: &str,
        now: UnixMillis,
        machine: &MachineRecord,
    ) -> Result<MachineRecord, StoreError> {
        self.durable(unwrap_tx((&self.tokens, &self.machines).transaction(|(tokens_tx, machines_tx)| {
            let token: Option<TokenRecord> = match tokens_tx.get(token_hash)? {
                Some(bytes) => Some(tx_decode(TOKENS, b"<hash>", &bytes)?),
                None => None,
            };
            if let Err(refusal) = tokens::check(token.as_ref(), now) {
                return abort(refusal.into());
            }
            let mut token = token.expect("checked above");
            if machines_tx.get(&machine.id)?.is_some() {
                return abort(StoreError::Conflict(format!("machine id {} is taken", machine.id)));
            }
            token.uses_left -= 1;
            let mut machine = machine.clone();
            machine.labels = token.labels.clone();
            machine.token_id = token.id.clone();
            tokens_tx.insert(token_hash.as_bytes(), encode(&token))?;
            machines_tx.insert(machine.id.as_bytes(), encode(&machine))?;
            Ok(machine)
        })))
    }

    fn admin(&self, name: &str) -> Result<Option<AdminRecord>, StoreError> {
        Self::one(&self.admins, ADMINS, name.as_bytes())
    }

    fn admins(&self) -> Result<Vec<AdminRecord>, StoreError> {
        Self::all(&self.admins, ADMINS)
    }

    fn insert_admin(&self, admin: &AdminRecord) -> Result<(), StoreError> {
        self.insert_new(&self.admins, &admin.name, admin, format!("admin {:?} already exists", admin.name))
    }

    fn update_admin(
        &self,
        name: &str,
        change: &dyn Fn(&mut AdminRecord) -> Result<(), StoreError>,
    ) -> Result<AdminRecord, StoreError> {
        self.durable(change_one(&self.admins, ADMINS, "admin", name, change))
    }

    fn remove_admin(&self, name: &str) -> Result<AdminRecord, StoreError> {
        let domains: Vec<String> = self.tenants()?.into_iter().map(|t| t.domain).collect();
        self.durable(unwrap_tx((&self.admins, &self.tenants).transaction(|(admins_tx, tenants_tx)| {
            let Some(bytes) = admins_tx.remove(name.as_bytes())? else {
                return abort(StoreError::NotFound { what: "admin", id: name.to_string() });
            };
            let admin: AdminRecord = tx_decode(ADMINS, name.as_bytes(), &bytes)?;
            for domain in &domains {
                if let Some(bytes) = tenants_tx.get(domain.as_bytes())? {
                    let mut tenant: TenantRecord = tx_decode(TENANTS, domain.as_bytes(), &bytes)?;
                    if tenant.managers.remove(name) {
                        tenants_tx.insert(domain.as_bytes(), encode(&tenant))?;
                    }
                }
            }
            Ok(admin)
        })))
    }

    fn tenant(&self, domain: &str) -> Result<Option<TenantRecord>, StoreError> {
        Self::one(&self.tenants, TENANTS, domain.as_bytes())
    }

    fn tenants(&self) -> Result<Vec<TenantRecord>, StoreError> {
        Self::all(&self.tenants, TENANTS)
    }

    fn insert_tenant(&self, tenant: &TenantRecord) -> Result<(), StoreError> {
        self.insert_new(&self.tenants, &tenant.domain, tenant, format!("tenant {} already exists", tenant.domain))
    }

    fn update_tenant(
        &self,
        domain: &str,
        change: &dyn Fn(&mut TenantRecord) -> Result<(), StoreError>,
    ) -> Result<TenantRecord, StoreError> {
        self.durable(change_one(&self.tenants, TENANTS, "tenant", domain, change))
    }

    fn remove_tenant(&self, domain: &str) -> Result<TenantRecord, StoreError> {
        let removed = self.tenants.remove(domain.as_bytes())?;
        let bytes = removed.ok_or_else(|| StoreError::NotFound { what: "tenant", id: domain.to_string() })?;
        self.durable(decode(TENANTS, domain.as_bytes(), &bytes))
    }

    fn record_generation(
        &self,
        machines: &[String],
        make: &dyn Fn(&MachineRecord, u64) -> (AssignmentRecord, DeploymentRecord),
    ) -> Result<Vec<DeployedTarget>, StoreError> {
        self.durable(unwrap_tx((&self.machines, &self.assignments, &self.deployments).transaction(
            |(machines_tx, assignments_tx, deployments_tx)| {
                machines
                    .iter()
                    .map(|id| record_in_tx(machines_tx, assignments_tx, deployments_tx, id, make))
                    .collect()
            },
        )))
    }

    fn assignment(&self, machine: &str, generation: u64) -> Result<Option<AssignmentRecord>, StoreError> {
        Self::one(&self.assignments, ASSIGNMENTS, &generation_key(machine, generation))
    }

    fn deployment(&self, machine: &str, generation: u64) -> Result<Option<DeploymentRecord>, StoreError> {
        Self::one(&self.deployments, DEPLOYMENTS, &generation_key(machine, generation))
    }

    fn deployments(&self, machine: Option<&str>) -> Result<Vec<DeploymentRecord>, StoreError> {
        let mut out: Vec<DeploymentRecord> = match machine {
            Some(id) => {
                let mut prefix = id.as_bytes().to_vec();
                prefix.push(b'/');
                self.deployments
                    .scan_prefix(prefix)
                    .map(|item| {
                        let (k, v) = item?;
                        decode(DEPLOYMENTS, &k, &v)
                    })
                    .collect::<Result<_, _>>()?
            }
            None => Self::all(&self.deployments, DEPLOYMENTS)?,
        };
        out.sort_by(|a, b| a.created_at.cmp(&b.created_at).then(a.id.cmp(&b.id)));
        Ok(out)
    }

    fn update_deployment(
        &self,
        machine: &str,
        generation: u64,
        change: &dyn Fn(&mut DeploymentRecord, &mut MachineRecord) -> Result<(), StoreError>,
    ) -> Result<DeploymentRecord, StoreError> {
        let key = generation_key(machine, generation);
        self.durable(unwrap_tx((&self.machines, &self.deployments).transaction(|(machines_tx, deployments_tx)| {
            let Some(bytes) = deployments_tx.get(&key)? else {
                return abort(StoreError::NotFound { what: "deployment", id: deployment_id(machine, generation) });
            };
            let mut deployment: DeploymentRecord = tx_decode(DEPLOYMENTS, &key, &bytes)?;
            let Some(bytes) = machines_tx.get(machine.as_bytes())? else {
                return abort(StoreError::NotFound { what: "machine", id: machine.to_string() });
            };
            let mut record: MachineRecord = tx_decode(MACHINES, machine.as_bytes(), &bytes)?;
            if let Err(e) = change(&mut deployment, &mut record) {
                return abort(e);
            }
            deployments_tx.insert(key.clone(), encode(&deployment))?;
            machines_tx.insert(machine.as_bytes(), encode(&record))?;
            Ok(deployment)
        })))
    }

    fn s3_nodes(&self) -> Result<Vec<S3NodeRecord>, StoreError> {
        Self::all(&self.s3_nodes, S3_NODES)
    }

    fn put_s3_node(&self, node: &S3NodeRecord) -> Result<(), StoreError> {
        self.s3_nodes.insert(node.admin.as_bytes(), encode(node))?;
        self.db.flush()?;
        Ok(())
    }

    fn insert_rollout(&self, rollout: &RolloutRecord) -> Result<(), StoreError> {
        self.insert_new(&self.rollouts, &rollout.id, rollout, format!("rollout {} already exists", rollout.id))
    }

    fn rollout(&self, id: &str) -> Result<Option<RolloutRecord>, StoreError> {
        Self::one(&self.rollouts, ROLLOUTS, id.as_bytes())
    }

    fn rollouts(&self) -> Result<Vec<RolloutRecord>, StoreError> {
        let mut all: Vec<RolloutRecord> = Self::all(&self.rollouts, ROLLOUTS)?;
        all.sort_by(|a, b| a.created_at.cmp(&b.created_at).then(a.id.cmp(&b.id)));
        Ok(all)
    }

    fn rollout_step(
        &self,
        id: &str,
        step: &dyn Fn(&mut RolloutRecord) -> Actions,
        make: &dyn Fn(&RolloutRecord, &MachineRecord, u64) -> (AssignmentRecord, DeploymentRecord),
        remake: &dyn Fn(&AssignmentRecord, &MachineRecord, u64) -> (AssignmentRecord, DeploymentRecord),
    ) -> Result<(RolloutRecord, Vec<DeployedTarget>), StoreError> {
        unwrap_tx((&self.machines, &self.assignments, &self.deployments, &self.rollouts).transaction(
            |(machines_tx, assignments_tx, deployments_tx, rollouts_tx)| {
                let Some(bytes) = rollouts_tx.get(id.as_bytes())? else {
                    return abort(StoreError::NotFound { what: "rollout", id: id.to_string() });
                };
                let before: RolloutRecord = tx_decode(ROLLOUTS, id.as_bytes(), &bytes)?;
                let mut record = before.clone();
                let actions = step(&mut record);
                let mut targets = Vec::new();
                for machine in &actions.start {
                    let spec = record.clone();
                    match record_in_tx(machines_tx, assignments_tx, deployments_tx, machine, &|m, g| make(&spec, m, g)) {
                        Ok(t) => {
                            if let Some(e) = record.state.machines.get_mut(machine) {
                                e.generation = Some(t.generation);
                            }
                            targets.push(t);
                        }
                        Err(ConflictableTransactionError::Abort(StoreError::Revoked(_))) => {
                            if let Some(e) = record.state.machines.get_mut(machine) {
                                e.slot = Slot::Failed { reason: "the machine was revoked".into() };
                            }
                        }
                        Err(e) => return Err(e),
                    }
                }
                for machine in &actions.revert {
                    let Some(previous) = record.state.machines.get(machine).map(|e| e.previous_generation) else {
                        continue;
                    };
                    let key = generation_key(machine, previous);
                    let old: Option<AssignmentRecord> = match assignments_tx.get(&key)? {
                        Some(bytes) => Some(tx_decode(ASSIGNMENTS, &key, &bytes)?),
                        None => None,
                    };
                    let outcome = match &old {
                        Some(old) => record_in_tx(machines_tx, assignments_tx, deployments_tx, machine, &|m, g| remake(old, m, g)).map(Some),
                        None => Ok(None),
                    };
                    match outcome {
                        Ok(Some(t)) => {
                            if let Some(e) = record.state.machines.get_mut(machine) {
                                e.revert_generation = Some(t.generation);
                            }
                            targets.push(t);
                        }
                        Ok(None) | Err(ConflictableTransactionError::Abort(StoreError::Revoked(_))) => {
                            if let Some(e) = record.state.machines.get_mut(machine) {
                                e.slot = Slot::NotReverted;
                            }
                        }
                        Err(e) => return Err(e),
                    }
                }
                let changed = record != before;
                if changed {
                    rollouts_tx.insert(id.as_bytes(), encode(&record))?;
                }
                Ok((record, targets, changed))
            },
        ))
        .and_then(|(record, targets, changed)| {
            if changed {
                self.db.flush()?;
            }
            Ok((record, targets))
        })
    }

    fn flush(&self) -> Result<(), StoreError> {
        self.db.flush()?;
        Ok(())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::model::Labels;

    fn token(uses: u32) -> TokenRecord {
        TokenRecord {
            id: "t-1".into(),
            hash: "abc".into(),
            labels: Labels::from([("tenant".into(), "a".into())]),
            created_at: 0,
            expires_at: 1_000,
            uses_total: uses,
            uses_left: uses,
            revoked: false,
        }
    }

    pub(crate) fn machine(id: &str) -> MachineRecord {
        MachineRecord {
            id: id.into(),
            hostname: "h".into(),
            labels: Labels::new(),
            token_id: String::new(),
            enrolled_at: 0,
            revoked_at: None,
            cert_serial: "s".into(),
            cert_not_after: 0,
            previous_cert: None,
            last_seen: None,
            health: None,
            desired_generation: 0,
            current_generation: None,
            current_system: None,
        }
    }

    #[test]
    fn enrollment_spends_uses_atomically_and_copies_labels() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = SledStore::open(dir.path()).expect("open");
        store.insert_token(&token(2)).expect("insert");
        let m = store.enroll("abc", 10, &machine("m-1")).expect("first");
        assert_eq!(m.labels.get("tenant").map(String::as_str), Some("a"));
        assert_eq!(m.token_id, "t-1");
        store.enroll("abc", 10, &machine("m-2")).expect("second");
        let err = store.enroll("abc", 10, &machine("m-3")).expect_err("third");
        assert!(matches!(err, StoreError::Token(TokenRefusal::Exhausted)));
        assert!(store.machine("m-3").expect("get").is_none(), "nothing half-made");
        assert_eq!(store.machines().expect("list").len(), 2);
        let err = store.enroll("nope", 10, &machine("m-4")).expect_err("unknown");
        assert!(matches!(err, StoreError::Token(TokenRefusal::Unknown)));
    }

    #[test]
    fn records_survive_reopening_and_old_schema_is_refused_cleanly() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let store = SledStore::open(dir.path()).expect("open");
            store.insert_token(&token(1)).expect("insert");
            store.flush().expect("flush");
        }
        let store = SledStore::open(dir.path()).expect("reopen");
        assert_eq!(store.tokens().expect("tokens").len(), 1);
        let err = decode::<TokenRecord>(TOKENS, b"k", br#"{"v":0,"record":{}}"#).expect_err("v0");
        assert!(err.to_string().contains("no migration"), "{err}");
    }

    #[test]
    fn a_newer_store_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let db = sled::open(dir.path()).expect("open");
            db.open_tree("meta").expect("meta").insert("schema_version", "99").expect("insert");
            db.flush().expect("flush");
        }
        assert!(matches!(SledStore::open(dir.path()), Err(StoreError::TooNew { found: 99, .. })));
    }

    #[test]
    fn update_machine_is_atomic_and_reports_missing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = SledStore::open(dir.path()).expect("open");
        store.insert_token(&token(1)).expect("insert");
        store.enroll("abc", 1, &machine("m-1")).expect("enroll");
        let m = store
            .update_machine("m-1", &|m| {
                m.hostname = "renamed".into();
                Ok(())
            })
            .expect("update");
        assert_eq!(m.hostname, "renamed");
        assert!(matches!(
            store.update_machine("m-9", &|_| Ok(())),
            Err(StoreError::NotFound { .. })
        ));
        let err = store
            .update_machine("m-1", &|_| Err(StoreError::Conflict("no".into())))
            .expect_err("aborted");
        assert!(matches!(err, StoreError::Conflict(_)));
        assert_eq!(store.machine("m-1").expect("get").expect("some").hostname, "renamed");
    }
}
