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
use crate::store::{StoreError, Tx};
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
        let (mut record, deployment) = deploy::rebuild(&previous.assignment, m, g, now, &access);
        adjust(&mut record);
        (record, deployment)
    };
    match record_one(tx, id, &make)? {
        Ok(recorded) => Ok(recorded),
        Err(NotDeployable::Revoked) => Err(revoked(id)),
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
