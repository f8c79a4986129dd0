//! Deployments: checking a request, making its buckets ready, and recording
//! each target's next generation — assignment, deployment record and desired
//! generation in one transaction — then waking the targets' agents.

use drover_protocol::v1::{AdminResponse, DeploySpec, DeployedTarget, DeploymentInfo, Labels, PlannedTarget, SystemSpec, MAX_DEPLOYMENTS_PER_REQUEST};
use drover_protocol::{ErrorCode, WireError};

use crate::deploy;
use crate::model::{parse_deployment_id, MachineRecord, RolloutRecord};
use crate::registry;
use crate::store::Tx;
use crate::tenancy::Directory;

use super::errors::{conflict, invalid, not_found, revoked};
use super::generations::{self, directory, record_one, Recorded};
use super::{now_ms, s3, volumes, Coordinator};

/// The machines a request targets: one by id, or all matching the
/// selector (revoked ones never).
pub fn targets(state: &Coordinator, machine: Option<&str>, selector: &Labels) -> Result<Vec<MachineRecord>, WireError> {
    let targets: Vec<MachineRecord> = match machine {
        Some(id) => {
            let m = super::machines::machine(state, id)?;
            if m.revoked_at.is_some() {
                return Err(revoked(id));
            }
            vec![m]
        }
        None => state.store.machines()?.into_iter().filter(|m| m.revoked_at.is_none() && registry::matches(&m.labels, selector)).collect(),
    };
    if targets.is_empty() {
        return Err(not_found("no machine matches the selector; see `drover machines list`"));
    }
    Ok(targets)
}

/// The rollouts that hold one of `ids`.
fn holding(rollouts: Vec<RolloutRecord>, ids: &[String]) -> Vec<RolloutRecord> {
    rollouts.into_iter().filter(|r| ids.iter().any(|id| r.state.holds(id))).collect()
}

/// Inside the transaction that deploys to `ids`: the rollouts (of those
/// read before, `held`) that still hold one of them. Refused unless the
/// deployment overrides them.
fn check_holds(tx: &Tx, held: &[RolloutRecord], ids: &[String], override_rollout: bool) -> Result<Vec<RolloutRecord>, WireError> {
    let mut rollouts = Vec::new();
    for r in held {
        rollouts.extend(tx.get::<RolloutRecord>(r.id.as_bytes())?);
    }
    let rollouts = holding(rollouts, ids);
    match rollouts.first() {
        Some(r) if !override_rollout => Err(refuse_held(r, ids)),
        _ => Ok(rollouts),
    }
}

/// A deployment's checks before anything is made: the request itself, its
/// targets, and what their tenants allow. Returns the targets and the
/// directory their assignments are built with.
fn checked(state: &Coordinator, spec: &DeploySpec) -> Result<(Vec<MachineRecord>, Directory), WireError> {
    deploy::validate(spec).and_then(|()| s3::provision::check(&spec.buckets)).and_then(|()| volumes::check_claims(&spec.volumes)).map_err(invalid)?;
    let targets = targets(state, spec.machine.as_deref(), &spec.selector)?;
    let directory = directory(state)?;
    directory.check_spec(spec, &targets).map_err(invalid)?;
    Ok((targets, directory))
}

/// Refuses a manual deployment to machines an active rollout holds, naming
/// the rollout and the ways out.
fn refuse_held(rollout: &RolloutRecord, ids: &[String]) -> WireError {
    let machine = ids.iter().find(|id| rollout.state.holds(id)).cloned().unwrap_or_default();
    conflict(format!(
        "machine {machine} is held by rollout {id}, which would overwrite this deployment; wait for it, stop it (`drover rollout abort {id}`), or pass --override-rollout to deploy anyway (the rollout then leaves the machine alone)",
        id = rollout.id
    ))
}

/// Checks a deployment, makes its buckets ready, records a generation for
/// every target in one transaction, and announces them. Nothing is recorded
/// when any step fails.
pub async fn deploy(state: &Coordinator, by: &str, mut spec: DeploySpec) -> Result<AdminResponse, WireError> {
    // Targets, tenancy and rollouts first: nothing is made for a deployment
    // that would be refused.
    let started = std::time::Instant::now();
    let (targets, directory) = checked(state, &spec)?;
    let checked_in = started.elapsed();
    let ids: Vec<String> = targets.iter().map(|m| m.id.clone()).collect();
    let held = holding(state.store.rollouts()?, &ids);
    if let (false, Some(r)) = (spec.override_rollout, held.first()) {
        return Err(refuse_held(r, &ids));
    }
    if let Err(e) = s3::provision::provision(state, &mut spec).await {
        tracing::info!(code = ?e.code, reason = %e.message, "deployment refused: its buckets are not ready");
        return Err(WireError::new(e.code, format!("deployment refused, nothing recorded: {}", e.message)));
    }
    let mounts = if spec.volumes.is_empty() {
        Vec::new()
    } else {
        let [target] = targets.as_slice() else {
            return Err(invalid(format!("--volume gives a volume to one machine, and {} machines match; name one with --machine", targets.len())));
        };
        match volumes::prepare(state, &spec.volumes, target).await {
            Ok(mounts) => mounts,
            Err(e) => {
                tracing::info!(code = ?e.code, reason = %e.message, "deployment refused: its volumes are not ready");
                return Err(WireError::new(e.code, format!("deployment refused, nothing recorded: {}", e.message)));
            }
        }
    };
    let node = targets.first().map(volumes::node_of).unwrap_or_default();
    let now = now_ms();
    let make = |m: &MachineRecord, g| deploy::build(&spec, m, g, now, &directory.extras(m));
    // What holds a machine is decided in the same transaction that deploys
    // to it (or, in batches, at their commit point).
    let overriding = |tx: &Tx, deployed: &[Recorded]| {
        for mut rollout in check_holds(tx, &held, &ids, spec.override_rollout)? {
            for Recorded { target: t, .. } in deployed {
                if rollout.state.holds(&t.machine_id) {
                    rollout.state.overridden(&t.machine_id, t.deployment_id.clone(), now);
                }
            }
            tx.put(rollout.id.as_bytes(), &rollout)?;
        }
        Ok::<_, WireError>(())
    };
    let extra = 2 * held.len() + 4 * mounts.len();
    let fits = generations::machines_per_transaction(&state.store, generations::KEYS_PER_MACHINE, extra).is_none_or(|n| ids.len() <= n);
    let deployed = if fits {
        let _shared = state.generations.read().await;
        state
            .store
            .commit(|tx| {
                if let Some(id) = ids.first() {
                    volumes::record_attachments(tx, id, &node, &mounts, now)?;
                }
                tx.prefetch(ids.iter().map(|id| (crate::store::Tree::Machines, id.as_bytes())))?;
                let deployed = ids
                    .iter()
                    .map(|id| record_one(tx, id, &make)?.map_err(|refusal| generations::refused(id, refusal)))
                    .collect::<Result<Vec<_>, WireError>>()?;
                overriding(tx, &deployed)?;
                Ok::<_, WireError>(deployed)
            })
            .await?
    } else {
        generations::record_in_batches(state, &ids, &|_, m, g| Ok(make(m, g)), &overriding).await?
    };
    let recorded_in = started.elapsed();
    for recorded in &deployed {
        recorded.announce(&state.live);
    }
    if spec.override_rollout && !held.is_empty() {
        let ids: Vec<&str> = held.iter().map(|r| r.id.as_str()).collect();
        tracing::info!(rollouts = ?ids, by, "a manual deployment overrode rollouts on the machines they held");
    }
    tracing::info!(
        machines = deployed.len(),
        by,
        checked_ms = checked_in.as_millis() as u64,
        recorded_ms = recorded_in.as_millis() as u64,
        announced_ms = started.elapsed().as_millis() as u64,
        "deployment recorded"
    );
    Ok(AdminResponse::Deployed(deployed.into_iter().map(|r| r.target).collect()))
}

/// Reboots machines: each target gets a generation repeating its newest
/// assignment, to reboot after and verify what it booted.
pub async fn reboot(state: &Coordinator, by: &str, machine: Option<String>, selector: Labels) -> Result<AdminResponse, WireError> {
    if machine.is_some() != selector.is_empty() {
        return Err(invalid("name the machines to reboot: ID or --selector k=v (one of them)"));
    }
    registry::check_labels(&selector).map_err(invalid)?;
    let ids: Vec<String> = targets(state, machine.as_deref(), &selector)?.into_iter().map(|m| m.id).collect();
    let held = holding(state.store.rollouts()?, &ids);
    if let Some(r) = held.first() {
        return Err(refuse_held(r, &ids));
    }
    let directory = directory(state)?;
    let now = now_ms();
    let missing = "it has no system to verify after a reboot (deploy one with --reboot)";
    let fits = generations::machines_per_transaction(&state.store, generations::KEYS_PER_MACHINE + 1, 2 * held.len()).is_none_or(|n| ids.len() <= n);
    let deployed = if fits {
        let _shared = state.generations.read().await;
        state
            .store
            .commit(|tx| {
                check_holds(tx, &held, &ids, false)?;
                let mut out = Vec::new();
                for id in &ids {
                    out.push(generations::repeat(tx, id, &directory, now, missing, |record| record.assignment.reboot = true)?);
                }
                Ok::<_, WireError>(out)
            })
            .await?
    } else {
        let again = |tx: &Tx, m: &MachineRecord, g| {
            let previous: crate::model::AssignmentRecord = tx
                .get(&crate::store::deployments::generation_key(&m.id, m.desired_generation))?
                .ok_or_else(|| invalid(format!("machine {} has no deployment yet; {missing}", m.id)))?;
            let (mut record, deployment) = deploy::rebuild(&previous.assignment, m, g, now, &directory.extras(m).access);
            record.assignment.reboot = true;
            Ok((record, deployment))
        };
        generations::record_in_batches(state, &ids, &again, &|tx, _| check_holds(tx, &held, &ids, false).map(|_| ())).await?
    };
    for recorded in &deployed {
        recorded.announce(&state.live);
    }
    let deployed: Vec<DeployedTarget> = deployed.into_iter().map(|r| r.target).collect();
    tracing::info!(machines = deployed.len(), by, "reboot recorded");
    Ok(AdminResponse::Deployed(deployed))
}

/// What [`deploy`] would do, per target, recording and announcing nothing:
/// the same checks, then each target's would-be assignment against its
/// newest one. Buckets and volumes are named, not made.
pub async fn dry_run(state: &Coordinator, spec: DeploySpec) -> Result<AdminResponse, WireError> {
    let (targets, directory) = checked(state, &spec)?;
    let ids: Vec<String> = targets.iter().map(|m| m.id.clone()).collect();
    let held = holding(state.store.rollouts()?, &ids);
    let now = now_ms();
    let mut planned = Vec::new();
    for m in &targets {
        let before = match m.desired_generation {
            0 => None,
            g => state.store.assignment(&m.id, g)?,
        };
        let mut plan = PlannedTarget {
            machine_id: m.id.clone(),
            hostname: m.hostname.clone(),
            generation: 0,
            current_generation: m.desired_generation,
            system_before: before.as_ref().map(|b| deploy::system_text(&b.assignment.system)),
            system_after: deploy::system_text(&spec.system),
            goal: spec.goal,
            changes: Vec::new(),
            closure_diff: None,
            refused: None,
        };
        match deploy::next_generation(m) {
            Err(e) => plan.refused = Some(e.to_string()),
            Ok(generation) => {
                plan.generation = generation;
                // A bucket the machine already has keeps its credentials
                // and facts (as a deployment would give them again); a new
                // one is said so.
                let mut target_spec = spec.clone();
                let mut new_buckets = Vec::new();
                for b in &spec.buckets {
                    let (id_name, secret_name) = super::s3::provision::secret_names(&b.name);
                    let old = before.as_ref().map(|r| r.assignment.secrets.as_slice()).unwrap_or_default();
                    let found = (old.iter().find(|s| s.name == id_name), old.iter().find(|s| s.name == secret_name));
                    match (found, &state.config.s3) {
                        ((Some(id), Some(secret)), Some(s3)) => {
                            target_spec.secrets.extend([id.clone(), secret.clone()]);
                            target_spec.facts.insert("s3_endpoint".into(), s3.s3_endpoint.clone());
                            target_spec.facts.insert("s3_region".into(), s3.region.clone());
                            target_spec.facts.insert(format!("s3_bucket.{}", b.name), b.name.clone());
                            if let (true, Some(url)) = (b.public, s3.public_url_of(&b.name)) {
                                target_spec.facts.insert(format!("s3_public_url.{}", b.name), url);
                            }
                        }
                        _ => new_buckets.push(b.name.clone()),
                    }
                }
                let (mut record, _) = deploy::build(&target_spec, m, generation, now, &directory.extras(m));
                deploy::with_volumes(&mut record.assignment, &m.volumes);
                plan.changes = deploy::changes(before.as_ref().map(|b| &b.assignment), &record.assignment);
                for b in new_buckets {
                    plan.changes.push(format!("bucket: {b} (made ready; its credentials and endpoint become secrets and facts)"));
                }
                for c in spec.volumes.iter().filter(|c| m.volumes.iter().all(|v| v.name != c.name)) {
                    plan.changes.push(format!("volume attached: {} at {} (created if missing)", c.name, c.mount_point));
                }
                if let (false, Some(r)) = (spec.override_rollout, held.iter().find(|r| r.state.holds(&m.id))) {
                    plan.refused = Some(format!("held by rollout {}; --override-rollout deploys anyway", r.id));
                }
                if let (Some(SystemSpec::Closure { store_path: a, .. }), SystemSpec::Closure { store_path: b, .. }) =
                    (before.as_ref().map(|r| &r.assignment.system), &spec.system)
                {
                    if a != b {
                        plan.closure_diff = state.nix.diff_closures(a, b).await;
                    }
                }
            }
        }
        planned.push(plan);
    }
    Ok(AdminResponse::DeployPlan(planned))
}

/// The most an answer of a list takes, well below the frame limit.
pub const ANSWER_BUDGET: usize = 6 << 20;

/// Deployments, of one machine or all: the newest that fit
/// [`ANSWER_BUDGET`], in the store's order, so that no history can make
/// the answer larger than a frame.
pub fn list(state: &Coordinator, machine: Option<&str>) -> Result<AdminResponse, WireError> {
    let mut all = state.store.deployments(machine)?;
    // A generation no machine points to yet is a deployment being
    // recorded in batches: not shown before its commit point.
    let desired: std::collections::HashMap<String, u64> = match machine {
        Some(id) => state.store.machine(id)?.map(|m| (m.id, m.desired_generation)).into_iter().collect(),
        None => state.store.machines()?.into_iter().map(|m| (m.id, m.desired_generation)).collect(),
    };
    all.retain(|d| desired.get(&d.machine_id).is_none_or(|&g| d.generation <= g));
    let mut newest: Vec<usize> = (0..all.len()).collect();
    newest.sort_by_key(|&i| std::cmp::Reverse((all[i].created_at, all[i].generation)));
    let mut keep = vec![false; all.len()];
    let mut used = 0;
    for i in newest {
        let size = drover_protocol::frame::encoded_len(&all[i].to_wire()).unwrap_or(usize::MAX);
        if used + size > ANSWER_BUDGET {
            tracing::warn!(total = all.len(), "the deployments listed are cut to the newest that fit one answer; name a machine for its history");
            break;
        }
        used += size;
        keep[i] = true;
    }
    Ok(AdminResponse::Deployments(all.iter().zip(keep).filter(|(_, k)| *k).map(|(d, _)| d.to_wire()).collect()))
}

pub fn show(state: &Coordinator, id: &str) -> Result<AdminResponse, WireError> {
    Ok(AdminResponse::Deployment(one(state, id)?))
}

fn one(state: &Coordinator, id: &str) -> Result<DeploymentInfo, WireError> {
    let missing = || WireError::new(ErrorCode::NotFound, format!("deployment {id:?} not found; see `drover deployments list`"));
    let (machine, generation) = parse_deployment_id(id).ok_or_else(missing)?;
    let d = state.store.deployment(&machine, generation)?.ok_or_else(missing)?;
    Ok(d.to_wire())
}

/// Deployments by id, in the order asked; an unknown id is refused by name.
pub fn show_many(state: &Coordinator, ids: &[String]) -> Result<AdminResponse, WireError> {
    if ids.len() > MAX_DEPLOYMENTS_PER_REQUEST {
        return Err(WireError::new(ErrorCode::BadRequest, format!("a request asks for at most {MAX_DEPLOYMENTS_PER_REQUEST} deployments, not {}", ids.len())));
    }
    let mut used = 0;
    let mut out = Vec::with_capacity(ids.len());
    for id in ids {
        let mut info = one(state, id)?;
        let size = drover_protocol::frame::encoded_len(&info).unwrap_or(usize::MAX);
        if used + size > ANSWER_BUDGET {
            trim(&mut info);
        }
        used += drover_protocol::frame::encoded_len(&info).unwrap_or(0);
        out.push(info);
    }
    Ok(AdminResponse::Deployments(out))
}

/// A deployment as an answer too full for its history shows it: its newest
/// step only, and where to read the rest.
fn trim(info: &mut DeploymentInfo) {
    let cut = info.steps.len().saturating_sub(1);
    info.steps.drain(..cut);
    info.output_tail = format!("(history cut from this answer; `drover deployments show {}` shows it)", info.id);
}
