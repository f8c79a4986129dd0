//! What a fleet file would change, given the fleet as observed: tenants,
//! machines (to provision, or their labels), buckets and volumes to
//! create — and to delete with `--prune`, only those the last applied
//! fleet made — then each service in `after` order, from the coordinator's
//! own dry run of its deployment.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use drover_protocol::v1::{Labels, MachineInfo, MachineStatus, PlannedTarget, ProvisionInfo, ProvisionState};

use super::{FleetFile, Reference};

/// The label that says which service of the fleet a machine runs.
pub const SERVICE_LABEL: &str = "fleet.service";

/// The kind of resource a change is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Tenant,
    Machine,
    Bucket,
    Volume,
    Service,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Tenant => "tenant",
            Kind::Machine => "machine",
            Kind::Bucket => "bucket",
            Kind::Volume => "volume",
            Kind::Service => "service",
        }
    }
}

/// What the plan does to a resource.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Create,
    Update,
    Delete,
}

/// One change: a resource, what happens to it, and why (the fields that
/// change).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Change {
    pub kind: Kind,
    pub name: String,
    pub action: Action,
    pub details: Vec<String>,
}

/// The format of a saved plan ([`Plan`]).
pub const PLAN_FORMAT: u32 = 1;

/// A plan as `drover plan --out FILE` saves it and `drover apply --plan
/// FILE` carries it out: the changes, the digest of the fleet file they
/// were made from, and the digest of the fleet's state they were made
/// against ([`fleet_state`]); an apply refuses a plan either no longer
/// matches.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    pub format: u32,
    /// SHA-256 of the fleet file's text (or of the flake output's JSON).
    pub file_sha256: String,
    pub fleet_state: String,
    pub prune: bool,
    pub changes: Vec<Change>,
}

/// A digest of what a plan depends on in the fleet as observed: tenants,
/// live provisions (name, state, machine), machines (id, hostname,
/// labels), buckets, volumes and the last applied fleet. Liveness and
/// health are left out: a machine going offline and back does not make a
/// plan stale.
pub fn fleet_state(observed: &Observed) -> String {
    use sha2::{Digest, Sha256};
    let provisions: Vec<(&str, String, Option<&str>)> =
        observed.provisions.values().map(|p| (p.name.as_str(), format!("{:?}", p.state), p.machine_id.as_deref())).collect();
    let mut machines: Vec<(&str, &str, &Labels)> = observed.machines.iter().map(|m| (m.id.as_str(), m.hostname.as_str(), &m.labels)).collect();
    machines.sort();
    let state = serde_json::json!({
        "tenants": observed.tenants,
        "provisions": provisions,
        "machines": machines,
        "buckets": observed.buckets,
        "volumes": observed.volumes,
        "applied": observed.applied,
    });
    let mut hex = String::with_capacity(64);
    for b in Sha256::digest(state.to_string().as_bytes()) {
        hex.push_str(&format!("{b:02x}"));
    }
    hex
}

/// Why a saved plan cannot be applied to the fleet as it is now, if it
/// cannot: `file_sha256` and `state` are the digests now, `changes` the
/// plan made now.
pub fn stale(saved: &Plan, file_sha256: &str, prune: bool, state: &str, changes: &[Change]) -> Option<String> {
    if saved.format != PLAN_FORMAT {
        return Some(format!("it is in plan format {}, and this drover reads format {PLAN_FORMAT}", saved.format));
    }
    if saved.file_sha256 != file_sha256 {
        return Some("the fleet file changed since it was made".into());
    }
    if saved.prune != prune {
        return Some(format!("it was made {} --prune", if saved.prune { "with" } else { "without" }));
    }
    if saved.fleet_state != state || saved.changes != changes {
        let was: BTreeSet<(Kind, &str)> = saved.changes.iter().map(|c| (c.kind, c.name.as_str())).collect();
        let now: BTreeSet<(Kind, &str)> = changes.iter().map(|c| (c.kind, c.name.as_str())).collect();
        let differ: Vec<String> = was.symmetric_difference(&now).map(|(k, n)| format!("{} {n}", k.as_str())).collect();
        let detail = if differ.is_empty() { String::new() } else { format!(" (the plan now differs in: {})", differ.join(", ")) };
        return Some(format!("the fleet changed since it was made{detail}"));
    }
    None
}

/// The fleet as the coordinator knows it.
#[derive(Debug, Clone, Default)]
pub struct Observed {
    pub tenants: BTreeSet<String>,
    /// Live provisions (not failed or destroyed), by name.
    pub provisions: BTreeMap<String, ProvisionInfo>,
    /// Machines that are not revoked.
    pub machines: Vec<MachineInfo>,
    pub buckets: BTreeSet<String>,
    pub volumes: BTreeSet<String>,
    /// The last applied fleet's file, for `--prune`.
    pub applied: Option<FleetFile>,
}

impl Observed {
    /// The machine a fleet machine is now: its provision's, or the adopted
    /// hostname's.
    pub fn machine(&self, fleet: &FleetFile, name: &str) -> Option<&MachineInfo> {
        let decl = fleet.machines.get(name)?;
        match &decl.adopt {
            Some(hostname) => self.machines.iter().find(|m| &m.hostname == hostname),
            None => {
                let id = self.provisions.get(name)?.machine_id.as_ref()?;
                self.machines.iter().find(|m| &m.id == id)
            }
        }
    }

    /// What a reference resolves to now, if it can.
    pub fn resolve(&self, fleet: &FleetFile, r: &Reference) -> Option<String> {
        match r {
            Reference::Bucket { name } => Some(name.clone()),
            Reference::Machine { name, field } => {
                let m = self.machine(fleet, name)?;
                match field.as_str() {
                    "id" => Some(m.id.clone()),
                    "hostname" => Some(m.hostname.clone()),
                    _ => m.health.as_ref()?.addresses.first().cloned(),
                }
            }
        }
    }
}

/// The labels a fleet machine must carry.
pub fn labels_of(fleet: &FleetFile, name: &str) -> Labels {
    let mut labels = Labels::new();
    let Some(decl) = fleet.machines.get(name) else { return labels };
    labels.extend(decl.labels.clone());
    if let Some(t) = &decl.tenant {
        labels.insert("tenant".into(), t.clone());
    }
    if let Some((service, _)) = fleet.services.iter().find(|(_, s)| s.machines.iter().any(|m| m == name)) {
        labels.insert(SERVICE_LABEL.into(), service.clone());
    }
    labels
}

/// A service's facts with their references resolved, or the references
/// that cannot be yet.
pub fn facts_of(fleet: &FleetFile, observed: &Observed, service: &str) -> Result<Labels, Vec<String>> {
    let mut out = Labels::new();
    let mut open = Vec::new();
    for (k, v) in &fleet.services[service].facts {
        match super::substitute(v, &|r| observed.resolve(fleet, r)) {
            Some(value) => {
                out.insert(k.clone(), value);
            }
            None => open.push(format!("{k} = {v}")),
        }
    }
    if open.is_empty() {
        Ok(out)
    } else {
        Err(open)
    }
}

/// Tenants, machines, buckets and volumes to change.
pub fn infrastructure(fleet: &FleetFile, observed: &Observed, prune: bool) -> Vec<Change> {
    let mut out = Vec::new();
    let change = |kind, name: &str, action, details: Vec<String>| Change { kind, name: name.to_string(), action, details };
    for (domain, t) in &fleet.tenants {
        if !observed.tenants.contains(domain) {
            out.push(change(Kind::Tenant, domain, Action::Create, vec![format!("admin {} <{}>", t.admin_user, t.admin_email)]));
        }
    }
    for (name, decl) in &fleet.machines {
        let labels = labels_of(fleet, name);
        match (&decl.provider, observed.machine(fleet, name)) {
            (Some(provider), None) if !observed.provisions.contains_key(name) => {
                let mut details = vec![format!("provision on {provider}")];
                details.extend(fleet.volumes.iter().filter(|(_, v)| &v.machine == name).map(|(v, d)| format!("data disk {v} ({}) at {}", d.size, d.mount)));
                out.push(change(Kind::Machine, name, Action::Create, details));
            }
            (Some(_), None) => out.push(change(Kind::Machine, name, Action::Update, vec!["wait until its VM is online".into()])),
            (None, None) => out.push(change(
                Kind::Machine,
                name,
                Action::Update,
                vec![format!("adopt {}: no enrolled machine has this hostname yet", decl.adopt.as_deref().unwrap_or_default())],
            )),
            (_, Some(m)) => {
                let differ: Vec<String> = labels
                    .iter()
                    .filter(|(k, v)| m.labels.get(*k) != Some(v))
                    .map(|(k, v)| format!("label {k}: {} -> {v}", m.labels.get(k).map(String::as_str).unwrap_or("(none)")))
                    .collect();
                if !differ.is_empty() {
                    out.push(change(Kind::Machine, name, Action::Update, differ));
                }
            }
        }
    }
    for (name, b) in &fleet.buckets {
        if !observed.buckets.contains(name) {
            let mut details = vec![if b.public { "public".to_string() } else { "private".to_string() }];
            details.extend(b.quota.iter().map(|q| format!("quota {q}")));
            out.push(change(Kind::Bucket, name, Action::Create, details));
        }
    }
    for (name, v) in &fleet.volumes {
        let adopted = fleet.machines.get(&v.machine).is_some_and(|m| m.adopt.is_some());
        if adopted && !observed.volumes.contains(name) {
            out.push(change(Kind::Volume, name, Action::Create, vec![format!("{} on {} at {} ({})", v.size, v.machine, v.mount, v.filesystem)]));
        }
    }
    if prune {
        if let Some(applied) = &observed.applied {
            for name in applied.machines.keys().filter(|n| !fleet.machines.contains_key(*n)) {
                if applied.machines[name].provider.is_some() && observed.provisions.contains_key(name) {
                    out.push(change(Kind::Machine, name, Action::Delete, vec!["destroy its VM (its data disks too)".into()]));
                }
            }
            for name in applied.buckets.keys().filter(|n| !fleet.buckets.contains_key(*n) && observed.buckets.contains(*n)) {
                out.push(change(Kind::Bucket, name, Action::Delete, vec!["only an empty bucket can be deleted".into()]));
            }
            for name in applied.volumes.keys().filter(|n| !fleet.volumes.contains_key(*n) && observed.volumes.contains(*n)) {
                out.push(change(
                    Kind::Volume,
                    name,
                    Action::Update,
                    vec!["detached from its machine; its data is kept (drover volumes delete --yes-delete-data deletes it)".into()],
                ));
            }
        }
    }
    out
}

/// A service's change from its deployment's dry run (`None`: its machines
/// are not all there yet, or a fact cannot be resolved yet).
pub fn service(name: &str, machines: usize, dry_run: Option<&[PlannedTarget]>, open_facts: &[String]) -> Option<Change> {
    let Some(targets) = dry_run else {
        let mut details = vec![format!("deploy to {machines} machine(s) once they are online")];
        details.extend(open_facts.iter().map(|f| format!("fact resolved then: {f}")));
        return Some(Change { kind: Kind::Service, name: name.to_string(), action: Action::Create, details });
    };
    if !open_facts.is_empty() {
        // Its machines run: a reference to a machine being made again.
        let mut details: Vec<String> = targets.iter().map(|t| format!("{}: generation {} once its facts resolve", t.hostname, t.generation)).collect();
        details.extend(open_facts.iter().map(|f| format!("fact changes: {f}")));
        return Some(Change { kind: Kind::Service, name: name.to_string(), action: Action::Update, details });
    }
    let mut details = Vec::new();
    for t in targets {
        if let Some(why) = &t.refused {
            details.push(format!("{}: refused: {why}", t.hostname));
        } else if !t.changes.is_empty() {
            details.push(format!("{}: generation {} ({})", t.hostname, t.generation, t.changes.join("; ")));
        }
    }
    if details.is_empty() {
        return None;
    }
    let action = if targets.iter().all(|t| t.system_before.is_none()) { Action::Create } else { Action::Update };
    Some(Change { kind: Kind::Service, name: name.to_string(), action, details })
}

/// A service whose spec has not changed but whose machines did not all
/// finish their newest generation (an apply cut short, a deployment that
/// failed): the apply deploys it again. `machines` holds each target's
/// hostname, newest generation and the generation it runs.
pub fn unfinished(name: &str, machines: &[(String, u64, Option<u64>)]) -> Option<Change> {
    let details: Vec<String> = machines
        .iter()
        .filter(|(_, desired, current)| *desired > 0 && *current != Some(*desired))
        .map(|(host, desired, current)| {
            format!("{host}: generation {desired} not finished (runs {})", current.map(|g| format!("generation {g}")).unwrap_or_else(|| "none".into()))
        })
        .collect();
    (!details.is_empty()).then(|| Change { kind: Kind::Service, name: name.to_string(), action: Action::Update, details })
}

/// Whether every machine of a service is there, online, and labelled for
/// it (a selector finds exactly them).
pub fn service_ready(fleet: &FleetFile, observed: &Observed, service: &str) -> bool {
    fleet.services[service].machines.iter().all(|m| {
        observed
            .machine(fleet, m)
            .is_some_and(|info| info.status == MachineStatus::Online && info.labels.get(SERVICE_LABEL).map(String::as_str) == Some(service))
    })
}

/// Live provisions from the coordinator's list (failed and destroyed ones
/// do not hold their name).
pub fn live_provisions(all: Vec<ProvisionInfo>) -> BTreeMap<String, ProvisionInfo> {
    all.into_iter().filter(|p| !matches!(p.state, ProvisionState::Failed | ProvisionState::Destroyed)).map(|p| (p.name.clone(), p)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fleet::{parse, Source};

    fn fleet() -> FleetFile {
        let text = r#"
[tenants."a.example"]
admin_email = "ops@a.example"
[machines.db]
provider = "local"
[machines.web]
adopt = "web-1"
tenant = "a.example"
[buckets.media]
machines = ["web"]
[volumes.pg]
size = "1GiB"
machine = "web"
mount = "/srv/pg"
[services.web]
machines = ["web"]
flake = "path:/f#web"
facts = { db = "${machines.db.address}" }
"#;
        parse(&Source { name: "f".into(), text: text.into() }).expect("parses")
    }

    #[test]
    fn an_empty_fleet_plans_every_creation() {
        let f = fleet();
        let changes = infrastructure(&f, &Observed::default(), false);
        let kinds: Vec<(&str, &str, Action)> = changes.iter().map(|c| (c.kind.as_str(), c.name.as_str(), c.action)).collect();
        assert_eq!(
            kinds,
            vec![
                ("tenant", "a.example", Action::Create),
                ("machine", "db", Action::Create),
                ("machine", "web", Action::Update),
                ("bucket", "media", Action::Create),
                ("volume", "pg", Action::Create),
            ]
        );
        assert_eq!(facts_of(&f, &Observed::default(), "web"), Err(vec!["db = ${machines.db.address}".to_string()]));
        assert_eq!(labels_of(&f, "web").get(SERVICE_LABEL).map(String::as_str), Some("web"));
    }

    #[test]
    fn pruning_deletes_only_what_the_last_fleet_made() {
        let f = fleet();
        let mut smaller = f.clone();
        smaller.buckets.clear();
        let observed = Observed { buckets: ["media".to_string(), "by-hand".to_string()].into(), applied: Some(f.clone()), ..Default::default() };
        let without = infrastructure(&smaller, &observed, false);
        assert!(without.iter().all(|c| c.action != Action::Delete), "{without:?}");
        let with = infrastructure(&smaller, &observed, true);
        let deleted: Vec<&str> = with.iter().filter(|c| c.action == Action::Delete).map(|c| c.name.as_str()).collect();
        assert_eq!(deleted, vec!["media"], "a bucket made by hand is never pruned");
    }
}
