//! Generations: the one place a machine's next generation is recorded —
//! assignment, deployment record and desired generation, inside the
//! caller's transaction, as the deploy core decides them — and announced.
//! A deployment records new ones ([`record_one`]); a change that repeats a
//! machine's newest assignment (a volume attached or detached, a reboot)
//! goes through [`repeat`] or [`regenerate`].

use std::sync::Arc;

use drover_protocol::v1::DeployedTarget;
use drover_protocol::WireError;

use crate::deploy::{self, NotDeployable};
use crate::model::{deployment_id, AssignmentRecord, DeploymentRecord, MachineRecord};
use crate::store::deployments::generation_key;
use crate::store::{StoreError, Tree, Tx};
use crate::tenancy::Directory;

use super::errors::{invalid, revoked};
use super::live::{Assigned, Live};
use super::{now_ms, Coordinator};

/// Builds a machine's assignment and deployment record for a generation.
pub type Make<'a> = &'a (dyn Fn(&MachineRecord, u64) -> (AssignmentRecord, DeploymentRecord) + Sync);

/// The tenants and admins, read once for a batch of new generations.
pub fn directory(state: &Coordinator) -> Result<Directory, WireError> {
    Ok(Directory::new(state.store.tenants()?, state.store.admins()?))
}

/// A generation recorded for one machine: what the admin is told, and the
/// assignment its agent is sent.
pub struct Recorded {
    pub target: DeployedTarget,
    pub assigned: Assigned,
}

impl Recorded {
    /// Tells the machine's agent, with the assignment.
    pub fn announce(&self, live: &Live) {
        live.announce(&self.target.machine_id, self.target.generation, self.assigned.clone());
    }
}

/// Records the next generation of machine `id` inside `tx`, as the deploy
/// core decides it: `Ok(Err(_))` when the machine cannot take one.
pub fn record_one(tx: &Tx, id: &str, make: Make) -> Result<Result<Recorded, NotDeployable>, StoreError> {
    let mut machine: MachineRecord = tx.require(id.as_bytes())?;
    let generation = match deploy::next_generation(&machine) {
        Ok(g) => g,
        Err(refusal) => return Ok(Err(refusal)),
    };
    // Staged by a change recorded in batches, not yet pointed to: that
    // change gives the machine this generation (or is removed).
    if tx.get::<AssignmentRecord>(&generation_key(id, generation))?.is_some() {
        return Ok(Err(NotDeployable::BeingRecorded));
    }
    let (mut assignment, deployment) = make(&machine, generation);
    deploy::with_volumes(&mut assignment.assignment, &machine.volumes);
    if generation > 1 {
        let key = generation_key(id, generation - 1);
        if let Some(mut previous) = tx.get::<DeploymentRecord>(&key)? {
            if deploy::supersede(&mut previous) {
                tx.put(&key, &previous)?;
            }
        }
    }
    let key = generation_key(id, generation);
    tx.put(&key, &assignment)?;
    tx.put(&key, &deployment)?;
    machine.desired_generation = generation;
    tx.put(id.as_bytes(), &machine)?;
    let target = DeployedTarget { machine_id: id.to_string(), hostname: machine.hostname.clone(), generation, deployment_id: deployment_id(id, generation) };
    Ok(Ok(Recorded { target, assigned: Arc::new((assignment.assignment, assignment.access)) }))
}

/// Inside `tx`: the next generation of machine `id`, repeating its newest
/// assignment as of `now` (with the access `directory` gives it), changed by
/// `adjust`. `missing` says what to do instead when it has none yet.
pub fn repeat(tx: &Tx, id: &str, directory: &Directory, now: u64, missing: &str, adjust: impl Fn(&mut AssignmentRecord) + Sync) -> Result<Recorded, WireError> {
    let machine: MachineRecord = tx.require(id.as_bytes())?;
    if machine.revoked_at.is_some() {
        return Err(revoked(id));
    }
    let previous: AssignmentRecord =
        tx.get(&generation_key(id, machine.desired_generation))?.ok_or_else(|| invalid(format!("machine {id} has no deployment yet; {missing}")))?;
    let access = directory.extras(&machine).access;
    let make = |m: &MachineRecord, g| {
        let (mut record, mut deployment) = deploy::rebuild(&previous.assignment, m, g, now, &access);
        adjust(&mut record);
        // What `adjust` changed is part of the spec the deployment names.
        deployment.spec = Some(crate::model::SpecRecord::of(&record.assignment).digest());
        (record, deployment)
    };
    record_one(tx, id, &make)?.map_err(|refusal| refused(id, refusal))
}

/// Why machine `id` takes no new generation, as the admin is told.
pub fn refused(id: &str, refusal: NotDeployable) -> WireError {
    match refusal {
        NotDeployable::Revoked => revoked(id),
        NotDeployable::BeingRecorded => super::errors::conflict(format!(
            "machine {id} is part of a deployment still being recorded (by this or another coordinator); try again in a moment"
        )),
    }
}

/// Changes machine `machine_id`'s record with `change` and records a
/// generation repeating its newest assignment, in one transaction; then
/// announces it. Returns the new generation.
pub async fn regenerate(
    state: &Coordinator,
    machine_id: &str,
    missing: &str,
    change: impl Fn(&Tx, &mut MachineRecord) -> Result<(), WireError> + Sync,
) -> Result<u64, WireError> {
    let directory = directory(state)?;
    let now = now_ms();
    let _shared = state.generations.read().await;
    let recorded = state
        .store
        .commit(|tx| {
            let mut machine: MachineRecord = tx.require(machine_id.as_bytes())?;
            if machine.revoked_at.is_some() {
                return Err(revoked(machine_id));
            }
            change(tx, &mut machine)?;
            tx.put(machine_id.as_bytes(), &machine)?;
            repeat(tx, machine_id, &directory, now, missing, |_| {})
        })
        .await?;
    recorded.announce(&state.live);
    Ok(recorded.target.generation)
}

/// Keys one machine's new generation reads and writes at most: the machine
/// and its previous deployment read; the assignment, the deployment, the
/// previous deployment (superseded) and the machine written.
pub const KEYS_PER_MACHINE: usize = 4;

/// How many machines' generations fit in one transaction beside `extra`
/// other keys, or `None` when any number does (sled, memory).
pub fn machines_per_transaction(store: &crate::store::Store, keys_per_machine: usize, extra: usize) -> Option<usize> {
    // One key more: the deployment's spec, read and written once.
    store.max_txn_ops().map(|ops| (ops.saturating_sub(extra + 2) / keys_per_machine).max(1))
}

/// Machines a batch of `total` takes: as many as one transaction holds
/// at `keys_per_machine`, all of them on a store without a limit.
fn batch_size(store: &crate::store::Store, keys_per_machine: usize, total: usize) -> usize {
    machines_per_transaction(store, keys_per_machine, 0).unwrap_or(total).max(1)
}

/// What a batch reads of machine `id`: the machine, its assignment at
/// `g` and its deployment at `deployment`.
fn generation_keys(id: &str, g: u64, deployment: u64) -> [(Tree, Vec<u8>); 3] {
    [(Tree::Machines, id.as_bytes().to_vec()), (Tree::Assignments, generation_key(id, g)), (Tree::Deployments, generation_key(id, deployment))]
}

/// Where a change recorded in batches keeps its plan: the meta tree, under
/// this prefix and the change's id.
pub const BATCH_PREFIX: &str = "batch/";

/// The plan of a change to more machines than one transaction takes,
/// written before its first batch. Until `committed` turns true (the
/// commit point, one transaction) its records are staged at generations no
/// machine points to, invisible; after it, the machines are pointed to
/// them batch by batch, and a coordinator that starts finishes what a
/// crashed one began ([`finish_batches`]).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Batch {
    pub committed: bool,
    pub created_at: u64,
    /// The coordinator recording it ([`super::coordinators::holder`]): while
    /// it is among the fleet's coordinators, nobody else finishes it.
    #[serde(default)]
    pub owner: Option<String>,
    /// Each machine and the generation it is given.
    pub targets: Vec<(String, u64)>,
}

impl Batch {
    fn encoded(&self) -> Result<String, StoreError> {
        serde_json::to_string(self).map_err(|e| StoreError::Encode(e.to_string()))
    }
}

/// What a change recorded in batches also writes at its commit point,
/// given what was recorded.
pub type AtCommitPoint<'a> = &'a (dyn Fn(&Tx, &[Recorded]) -> Result<(), WireError> + Sync);

/// Records a new generation (built by `make`) for every machine in `ids`,
/// in batches that each fit one transaction, with one commit point:
/// `at_commit` runs in the transaction that makes them all count, with
/// what was recorded. Either every machine gets its generation or none
/// does — after a crash, once a coordinator has started again. Holds
/// [`Coordinator::generations`] alone throughout.
pub async fn record_in_batches(state: &Coordinator, ids: &[String], make: Build<'_>, at_commit: AtCommitPoint<'_>) -> Result<Vec<Recorded>, WireError> {
    let _alone = state.generations.write().await;
    let store = &state.store;
    let key = format!("{BATCH_PREFIX}{}", hex::encode(rand::random::<[u8; 8]>()));
    let _recording = Recording::new(state, &key);
    let per = batch_size(store, KEYS_PER_MACHINE, ids.len());
    let mut targets = Vec::with_capacity(ids.len());
    let machines: std::collections::HashMap<String, MachineRecord> = store.machines()?.into_iter().map(|m| (m.id.clone(), m)).collect();
    for id in ids {
        let machine = machines.get(id).ok_or_else(|| StoreError::NotFound { what: "machine", id: id.clone() })?;
        match deploy::next_generation(machine) {
            Ok(g) => targets.push((id.clone(), g)),
            Err(refusal) => return Err(refused(id, refusal)),
        }
    }
    let owner = Some(super::coordinators::holder(&state.config.advertise.to_string()));
    let mut batch = Batch { committed: false, created_at: now_ms(), owner, targets };
    let plan = batch.encoded()?;
    store.write(|tx| tx.put_meta(&key, &plan)).await?;
    let mut recorded = Vec::with_capacity(ids.len());
    for chunk in batch.targets.chunks(per) {
        // Staged records are seen by nobody before the commit point, and
        // staging a machine again writes the same records: a batch that
        // met a passing outage, or whose answer was lost (it may have
        // landed), is staged again rather than failing the deployment.
        let mut again = STAGE_AGAIN;
        let staged = loop {
            let staged = store
                .write(|tx| {
                    tx.prefetch(chunk.iter().map(|(id, _)| (Tree::Machines, id.as_bytes())))?;
                    chunk.iter().map(|(id, g)| stage(tx, id, *g, make).map_err(AtCommit::Refused)).collect::<Result<Vec<_>, AtCommit>>()
                })
                .await;
            match staged {
                Err(AtCommit::Store(StoreError::Backend(drover_store::Error::Unavailable(e) | drover_store::Error::Uncertain(e)))) if again > 0 => {
                    tracing::warn!(batch = %key, error = %e, "a batch of a deployment was not staged for certain; staging it again");
                    again -= 1;
                    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                }
                other => break other,
            }
        };
        match staged {
            Ok(staged) => recorded.extend(staged),
            Err(e) => {
                discard(store, &key, &batch).await;
                return Err(match e {
                    AtCommit::Store(e) => e.into(),
                    AtCommit::Refused(e) => e,
                });
            }
        }
    }
    let staged_plan = plan;
    batch.committed = true;
    let plan = batch.encoded()?;
    let committed = store
        .commit(|tx| {
            // Still this coordinator's to commit: not removed by a leader
            // that took it for a dead coordinator's.
            if tx.meta(&key)?.as_deref() != Some(staged_plan.as_str()) {
                return Err(AtCommit::Refused(super::errors::conflict(
                    "this deployment's plan was removed while it was recorded (its coordinator was taken for gone); run it again",
                )));
            }
            at_commit(tx, &recorded).map_err(AtCommit::Refused)?;
            tx.put_meta(&key, &plan)?;
            Ok::<_, AtCommit>(())
        })
        .await;
    match committed {
        Ok(()) => {}
        // Sent and not confirmed: it may land, so the plan stays for the
        // next start to decide by what it finds.
        Err(AtCommit::Store(e @ StoreError::Backend(drover_store::Error::Uncertain(_)))) => return Err(e.into()),
        Err(e) => {
            discard(store, &key, &batch).await;
            return Err(match e {
                AtCommit::Store(e) => e.into(),
                AtCommit::Refused(e) => e,
            });
        }
    }
    if let Err(e) = point(store, &key, &batch).await {
        // Past the commit point: finished by whoever can (this coordinator
        // in a moment, or the next to start).
        let store = store.clone();
        let (key, batch) = (key.clone(), batch.clone());
        tokio::spawn(async move {
            let mut pause = std::time::Duration::from_millis(500);
            while let Err(e) = point(&store, &key, &batch).await {
                tracing::warn!(batch = %key, error = %e, "a recorded deployment is not yet pointed to on every machine; retrying");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(std::time::Duration::from_secs(10));
            }
        });
        return Err(WireError::new(
            drover_protocol::ErrorCode::Unavailable,
            format!("the deployment is recorded but not yet on every machine ({}); the coordinator finishes it when the store answers again", e.message),
        ));
    }
    Ok(recorded)
}

/// How many times a batch is staged again after the store did not answer
/// for certain.
const STAGE_AGAIN: usize = 3;

/// How the commit point's (or a staging) transaction failed.
enum AtCommit {
    Store(StoreError),
    Refused(WireError),
}

impl From<StoreError> for AtCommit {
    fn from(e: StoreError) -> Self {
        AtCommit::Store(e)
    }
}

/// Builds a machine's assignment and deployment record for a generation,
/// reading what it needs through the transaction.
pub type Build<'a> = &'a (dyn Fn(&Tx, &MachineRecord, u64) -> Result<(AssignmentRecord, DeploymentRecord), WireError> + Sync);

/// Inside `tx`: machine `id`'s records for generation `g`, which no machine
/// points to yet.
fn stage(tx: &Tx, id: &str, g: u64, make: Build) -> Result<Recorded, WireError> {
    let machine: MachineRecord = tx.require(id.as_bytes())?;
    match deploy::next_generation(&machine) {
        Err(refusal) => return Err(refused(id, refusal)),
        Ok(next) if next != g => {
            return Err(super::errors::conflict(format!("machine {id} got another generation while this deployment was recorded; run it again")))
        }
        Ok(_) => {}
    }
    let (mut assignment, deployment) = make(tx, &machine, g)?;
    deploy::with_volumes(&mut assignment.assignment, &machine.volumes);
    let key = generation_key(id, g);
    tx.put(&key, &assignment)?;
    tx.put(&key, &deployment)?;
    let target = DeployedTarget { machine_id: id.to_string(), hostname: machine.hostname.clone(), generation: g, deployment_id: deployment_id(id, g) };
    Ok(Recorded { target, assigned: Arc::new((assignment.assignment, assignment.access)) })
}

/// Points every machine of a committed batch to its generation (those not
/// yet pointed to), batch by batch, then removes the plan.
async fn point(store: &crate::store::Store, key: &str, batch: &Batch) -> Result<(), WireError> {
    let per = batch_size(store, KEYS_PER_MACHINE, batch.targets.len());
    for chunk in batch.targets.chunks(per) {
        store
            .write(|tx| {
                tx.prefetch(chunk.iter().flat_map(|(id, g)| generation_keys(id, *g, g - 1)))?;
                for (id, g) in chunk {
                    let Some(mut machine) = tx.get::<MachineRecord>(id.as_bytes())? else { continue };
                    if machine.desired_generation >= *g || tx.get::<AssignmentRecord>(&generation_key(id, *g))?.is_none() {
                        continue;
                    }
                    let previous = generation_key(id, g - 1);
                    if let Some(mut earlier) = tx.get::<DeploymentRecord>(&previous)? {
                        if deploy::supersede(&mut earlier) {
                            tx.put(&previous, &earlier)?;
                        }
                    }
                    machine.desired_generation = *g;
                    tx.put(id.as_bytes(), &machine)?;
                }
                Ok::<_, WireError>(())
            })
            .await?;
    }
    store.commit(|tx| tx.remove_raw(Tree::Meta, key.as_bytes())).await?;
    Ok(())
}

/// Removes what an uncommitted batch staged (records no machine points
/// to), then its plan. Logged, not returned: what stays is invisible and
/// the next start removes it.
async fn discard(store: &crate::store::Store, key: &str, batch: &Batch) {
    let per = batch_size(store, 3, batch.targets.len());
    let result: Result<(), StoreError> = async {
        for chunk in batch.targets.chunks(per) {
            store
                .write(|tx| {
                    tx.prefetch(chunk.iter().flat_map(|(id, g)| generation_keys(id, *g, *g)))?;
                    for (id, g) in chunk {
                        let pointed = tx.get::<MachineRecord>(id.as_bytes())?.is_some_and(|m| m.desired_generation >= *g);
                        if !pointed {
                            tx.remove_raw(Tree::Assignments, &generation_key(id, *g))?;
                            tx.remove_raw(Tree::Deployments, &generation_key(id, *g))?;
                        }
                    }
                    Ok::<_, StoreError>(())
                })
                .await?;
        }
        store.commit(|tx| tx.remove_raw(Tree::Meta, key.as_bytes())).await
    }
    .await;
    if let Err(e) = result {
        tracing::warn!(batch = %key, error = %e, "a deployment not recorded left records no machine points to; the next start removes them");
    }
}

/// Finishes what a coordinator that stopped left in batches: a committed
/// change is pointed to on every machine, an uncommitted one removed.
/// Runs before a coordinator on its own store serves. Returns how many it
/// finished and how many it removed.
pub async fn finish_batches(store: &crate::store::Store) -> Result<(usize, usize), WireError> {
    finish_batches_where(store, |_, _| Ok(true)).await
}

/// [`finish_batches`] for the plans `orphaned` says nobody is recording.
async fn finish_batches_where(store: &crate::store::Store, orphaned: impl Fn(&str, &Batch) -> Result<bool, WireError>) -> Result<(usize, usize), WireError> {
    let (mut finished, mut removed) = (0, 0);
    for (key, plan) in store.metas(BATCH_PREFIX)? {
        let batch: Batch = serde_json::from_str(&plan).map_err(|e| StoreError::Corrupt { tree: "meta", key: key.clone(), reason: e.to_string() })?;
        if !orphaned(&key, &batch)? {
            continue;
        }
        if batch.committed {
            point(store, &key, &batch).await?;
            finished += 1;
        } else {
            discard(store, &key, &batch).await;
            removed += 1;
        }
    }
    Ok((finished, removed))
}

/// [`finish_batches`] on a running coordinator that leads: the plans no
/// coordinator is recording — neither this one nor another announced now.
pub async fn finish_orphaned_batches(state: &Coordinator) -> Result<(usize, usize), WireError> {
    let me = super::coordinators::holder(&state.config.advertise.to_string());
    let (finished, removed) = finish_batches_where(&state.store, |key, batch| match &batch.owner {
        None => Ok(true),
        Some(owner) if *owner == me => Ok(!lock(&state.recording).contains(key)),
        Some(owner) => Ok(!super::coordinators::present(&state.store, owner)?),
    })
    .await?;
    if finished + removed > 0 {
        tracing::info!(finished, removed, "deployments left between batches by a coordinator no longer there: committed ones finished, the others removed");
    }
    Ok((finished, removed))
}

fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A change this process records in batches, from its start to its end
/// (so that its own plan is not finished under it).
struct Recording<'a> {
    state: &'a Coordinator,
    key: String,
}

impl<'a> Recording<'a> {
    fn new(state: &'a Coordinator, key: &str) -> Self {
        lock(&state.recording).insert(key.to_string());
        Recording { state, key: key.to_string() }
    }
}

impl Drop for Recording<'_> {
    fn drop(&mut self) {
        lock(&self.state.recording).remove(&self.key);
    }
}
