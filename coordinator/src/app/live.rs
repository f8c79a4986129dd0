//! What is connected now: each machine's open connections (so that a
//! revocation can close them at once), each machine's desired generation
//! (watched by its agent's watch stream), and the health reports not yet
//! written to the store (see [`Live::saw`]). The server registers
//! connections as closers; this layer never sees the transport.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use drover_protocol::v1::{Access, Assignment};
use drover_protocol::ErrorCode;

use crate::model::{HealthRecord, MachineRecord, UnixMillis};

/// Closes one connection with a code and a reason.
pub type Closer = Arc<dyn Fn(ErrorCode, &str) + Send + Sync>;

/// A new generation's assignment and SSH access, as recorded.
pub type Assigned = Arc<(Assignment, Access)>;

/// A machine's desired generation, with the assignment recorded for it
/// while it waits to be sent to the machine's connected agent.
#[derive(Debug, Clone, Default)]
pub struct Desired {
    pub generation: u64,
    pub assigned: Option<Assigned>,
}

#[derive(Default)]
pub struct Live {
    /// Each machine's open connections, oldest first.
    machines: Mutex<HashMap<String, Vec<(usize, Closer)>>>,
    /// Each admin's open connections, oldest first.
    admins: Mutex<HashMap<String, Vec<(usize, Closer)>>>,
    desired: Mutex<HashMap<String, tokio::sync::watch::Sender<Desired>>>,
    /// Each machine's newest health report since the last time they were
    /// written to the store: at most one per machine.
    seen: Mutex<HashMap<String, (UnixMillis, HealthRecord)>>,
}

/// The maps stay consistent whatever a panicking holder did: every change
/// is one insert or remove.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

type Connections = Mutex<HashMap<String, Vec<(usize, Closer)>>>;

fn register(map: &Connections, who: &str, id: usize, closer: Closer, cap: usize, kind: &str) {
    let evicted: Vec<Closer> = {
        let mut map = lock(map);
        let conns = map.entry(who.to_string()).or_default();
        conns.push((id, closer));
        let excess = conns.len().saturating_sub(cap.max(1));
        conns.drain(..excess).map(|(_, c)| c).collect()
    };
    if !evicted.is_empty() {
        tracing::info!(kind, who, closed = evicted.len(), "a newer connection replaced the oldest of this identity");
    }
    for close in evicted {
        close(ErrorCode::Unavailable, "replaced by a newer connection with the same certificate");
    }
}

fn unregister(map: &Connections, who: &str, id: usize) {
    let mut map = lock(map);
    if let Some(conns) = map.get_mut(who) {
        conns.retain(|(c, _)| *c != id);
        if conns.is_empty() {
            map.remove(who);
        }
    }
}

fn close_all(map: &Connections, who: &str, code: ErrorCode, reason: &str) -> usize {
    let closers: Vec<Closer> = lock(map).get(who).map(|c| c.iter().map(|(_, c)| c.clone()).collect()).unwrap_or_default();
    for close in &closers {
        close(code, reason);
    }
    closers.len()
}

impl Live {
    /// Watches `machine`'s desired generation (starting from `current` if
    /// nothing was announced yet).
    pub fn subscribe(&self, machine: &str, current: u64) -> tokio::sync::watch::Receiver<Desired> {
        lock(&self.desired)
            .entry(machine.to_string())
            .or_insert_with(|| tokio::sync::watch::channel(Desired { generation: current, assigned: None }).0)
            .subscribe()
    }

    /// Announces a new desired generation to `machine`'s agent, at once,
    /// with its assignment, which the watch stream then sends without
    /// reading it again. Only a connected machine's assignment is kept, and
    /// only until it is sent ([`Live::sent`]).
    pub fn announce(&self, machine: &str, generation: u64, assigned: Assigned) {
        let mut map = lock(&self.desired);
        match map.get(machine) {
            Some(tx) => {
                let watched = tx.receiver_count() > 0;
                tx.send_if_modified(|d| {
                    let newer = generation > d.generation;
                    if newer {
                        *d = Desired { generation, assigned: watched.then_some(assigned) };
                    }
                    newer
                });
            }
            None => {
                map.insert(machine.to_string(), tokio::sync::watch::channel(Desired { generation, assigned: None }).0);
            }
        }
    }

    /// Announces a desired generation recorded elsewhere (by another
    /// coordinator of a shared store) to `machine`'s agent, if it watches
    /// here: its watch stream reads the assignment from the store.
    pub fn announce_generation(&self, machine: &str, generation: u64) {
        if let Some(tx) = lock(&self.desired).get(machine) {
            tx.send_if_modified(|d| {
                let newer = generation > d.generation;
                if newer {
                    *d = Desired { generation, assigned: None };
                }
                newer
            });
        }
    }

    /// Whether an agent of `machine` watches its desired generation here.
    pub fn watching(&self, machine: &str) -> bool {
        lock(&self.desired).get(machine).is_some_and(|tx| tx.receiver_count() > 0)
    }

    /// The machines whose agents watch here.
    pub fn watched_machines(&self) -> Vec<String> {
        lock(&self.desired).iter().filter(|(_, tx)| tx.receiver_count() > 0).map(|(id, _)| id.clone()).collect()
    }

    /// The watch stream announced `generation`: its assignment is no longer
    /// kept (the watchers are not woken).
    pub fn sent(&self, machine: &str, generation: u64) {
        if let Some(tx) = lock(&self.desired).get(machine) {
            tx.send_if_modified(|d| {
                if d.generation == generation {
                    d.assigned = None;
                }
                false
            });
        }
    }

    /// Records an open connection of `machine` (`id` is unique per
    /// connection); when the machine holds more than `cap`, the oldest are
    /// closed (an agent that reconnects from a new network gets in; one
    /// certificate cannot hold many connections).
    pub fn register(&self, machine: &str, id: usize, closer: Closer, cap: usize) {
        register(&self.machines, machine, id, closer, cap, "machine");
    }

    /// [`Live::register`] for an admin's connection.
    pub fn register_admin(&self, admin: &str, id: usize, closer: Closer, cap: usize) {
        register(&self.admins, admin, id, closer, cap, "admin");
    }

    /// How many machines have an open connection.
    pub fn connected_machines(&self) -> usize {
        lock(&self.machines).values().filter(|c| !c.is_empty()).count()
    }

    pub fn unregister(&self, machine: &str, id: usize) {
        unregister(&self.machines, machine, id);
    }

    pub fn unregister_admin(&self, admin: &str, id: usize) {
        unregister(&self.admins, admin, id);
    }

    /// Closes every live connection of `machine` with `code`.
    pub fn close_machine(&self, machine: &str, code: ErrorCode, reason: &str) -> usize {
        close_all(&self.machines, machine, code, reason)
    }

    /// Closes every live connection of `admin` with `code`.
    pub fn close_admin(&self, admin: &str, code: ErrorCode, reason: &str) -> usize {
        close_all(&self.admins, admin, code, reason)
    }

    /// Keeps `machine`'s newest health report, received at `at`, until
    /// [`Live::unwritten`] hands it to the store. Health reports come from
    /// every machine every few seconds; writing each to the store one by
    /// one cost a 10,000-machine fleet most of the coordinator's idle CPU.
    pub fn saw(&self, machine: &str, at: UnixMillis, health: HealthRecord) {
        let mut seen = lock(&self.seen);
        match seen.get_mut(machine) {
            Some(entry) => *entry = (at, health),
            None => {
                seen.insert(machine.to_string(), (at, health));
            }
        }
    }

    /// Whether a report of `machine` waits to be written.
    pub fn has_unwritten(&self, machine: &str) -> bool {
        lock(&self.seen).contains_key(machine)
    }

    /// The reports waiting to be written (they stay until
    /// [`Live::written`], so that readers see them meanwhile).
    pub fn unwritten(&self) -> Vec<(String, UnixMillis, HealthRecord)> {
        lock(&self.seen).iter().map(|(id, (at, health))| (id.clone(), *at, health.clone())).collect()
    }

    /// Forgets the reports written to the store, unless a newer one came.
    pub fn written(&self, reports: &[(String, UnixMillis, HealthRecord)]) {
        let mut seen = lock(&self.seen);
        for (id, at, _) in reports {
            if seen.get(id).is_some_and(|(newest, _)| newest <= at) {
                seen.remove(id);
            }
        }
    }

    /// A stored machine record with its newest health report, if a newer
    /// one waits to be written (then carried by this coordinator, which is
    /// present): what every reader of liveness looks at.
    pub fn newest(&self, mut machine: MachineRecord) -> MachineRecord {
        if let Some((at, health)) = lock(&self.seen).get(&machine.id) {
            if machine.last_seen.is_none_or(|seen| seen < *at) {
                machine.last_seen = Some(*at);
                machine.health = Some(health.clone());
                machine.reported_via = None;
            }
        }
        machine
    }

    /// Forgets every connection (at shutdown).
    /// Closes every machine's and admin's connection with `code` and
    /// `reason`.
    pub fn close_all(&self, code: drover_protocol::ErrorCode, reason: &str) {
        let closers: Vec<Closer> =
            lock(&self.machines).values().chain(lock(&self.admins).values()).flat_map(|conns| conns.iter().map(|(_, c)| c.clone())).collect();
        for close in closers {
            close(code, reason);
        }
    }

    pub fn clear(&self) {
        lock(&self.machines).clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assigned(generation: u64) -> Assigned {
        let assignment = Assignment {
            generation,
            system: drover_protocol::v1::SystemSpec::Flake { uri: "path:/x".into(), attribute: "a".into() },
            secrets: vec![],
            facts_json: "{}".into(),
            checks: vec![],
            health_deadline_ms: 1_000,
            volumes: vec![],
            goal: Default::default(),
            force_switch: false,
            reboot: false,
        };
        Arc::new((assignment, Access::default()))
    }

    /// The assignment waits in memory only for a watching agent, and only
    /// until the watch stream sent it; dropping it wakes nobody.
    #[test]
    fn an_announced_assignment_is_kept_only_for_a_watcher_until_sent() {
        let live = Live::default();
        let mut watcher = live.subscribe("m-1", 1);
        live.announce("m-1", 2, assigned(2));
        assert!(watcher.has_changed().expect("open"));
        let seen = watcher.borrow_and_update().clone();
        assert_eq!((seen.generation, seen.assigned.map(|a| a.0.generation)), (2, Some(2)));

        // An older generation changes nothing.
        live.announce("m-1", 1, assigned(1));
        assert!(!watcher.has_changed().expect("open"));

        live.sent("m-1", 2);
        assert!(!watcher.has_changed().expect("open"), "dropping the sent assignment wakes nobody");
        assert!(watcher.borrow().assigned.is_none(), "not kept once sent");
        assert_eq!(watcher.borrow().generation, 2);

        // Nobody watches m-2: the generation is kept, its assignment not.
        live.subscribe("m-2", 0);
        live.announce("m-2", 3, assigned(3));
        let later = live.subscribe("m-2", 0);
        assert_eq!(later.borrow().generation, 3);
        assert!(later.borrow().assigned.is_none(), "an unwatched machine's assignment is not held");
    }
}
