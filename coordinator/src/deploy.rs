//! Deployment rules, without I/O: checking what an admin asks to deploy,
//! building each machine's assignment, and folding an agent's progress
//! reports into the deployment record.

use std::collections::BTreeMap;
use std::time::Duration;

use drover_protocol::v1::{Access, Assignment, DeploySpec, DeployStep, DeploymentReport, DeploymentState, HealthCheck, SystemSpec};

use drover_protocol::text::tail;

use crate::model::{deployment_id, AssignmentRecord, DeploymentRecord, MachineRecord, StepRecord, UnixMillis};
use crate::registry;
use crate::tenancy::Extras;

/// Largest secret accepted.
pub const MAX_SECRET_LEN: usize = 1 << 20;
/// Longest output tail kept per deployment.
pub const MAX_OUTPUT_TAIL: usize = 16 << 10;
/// Longest step message kept.
pub const MAX_MESSAGE: usize = 4 << 10;
/// Step messages kept per deployment, in bytes; past it each new message
/// keeps only its last [`SHORT_MESSAGE`] bytes.
pub const STEP_BYTES: usize = 64 << 10;
/// What is kept of a step's message once [`STEP_BYTES`] are used.
pub const SHORT_MESSAGE: usize = 256;
/// The health deadline when none is given.
pub const DEFAULT_HEALTH_DEADLINE: Duration = Duration::from_secs(60);

/// A secret name: 1-128 of letters, digits, `.`, `_`, `-`, not starting with `.`.
pub fn check_secret_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty() && name.len() <= 128 && !name.starts_with('.') && name.chars().all(|c| c.is_ascii_alphanumeric() || "._-".contains(c));
    if ok {
        Ok(())
    } else {
        Err(format!("secret name {name:?} is invalid: use 1-128 letters, digits, '.', '_' or '-', not starting with '.'"))
    }
}

fn check_system(system: &SystemSpec) -> Result<(), String> {
    match system {
        SystemSpec::Flake { uri, attribute } => {
            if uri.is_empty() || attribute.is_empty() {
                return Err("--flake needs URI#ATTRIBUTE, e.g. github:acme/fleet#web".into());
            }
            if uri.chars().chain(attribute.chars()).any(|c| c.is_whitespace() || c.is_control()) {
                return Err("the flake reference must not contain spaces".into());
            }
        }
        SystemSpec::Closure { store_path, substituters, trusted_public_keys } => {
            let name = store_path.strip_prefix("/nix/store/").unwrap_or("");
            if name.is_empty() || name.contains('/') || name.len() < 33 {
                return Err(format!("{store_path:?} is not a store path; --closure takes /nix/store/<hash>-<name>"));
            }
            if substituters.is_empty() {
                return Err("--closure needs at least one --substituter (the binary cache to fetch it from)".into());
            }
            if trusted_public_keys.is_empty() {
                return Err("--closure needs --trusted-key: the public key that signed the closure".into());
            }
        }
    }
    Ok(())
}

fn check_check(check: &HealthCheck) -> Result<(), String> {
    match check {
        HealthCheck::Unit { name } if name.is_empty() || name.contains('/') => Err(format!("unit check {name:?} needs a unit name, e.g. unit:nginx.service")),
        HealthCheck::Http { url } if !(url.starts_with("http://") || url.starts_with("https://")) => {
            Err(format!("http check {url:?} needs an http:// or https:// URL"))
        }
        HealthCheck::Tcp { host, port } if host.is_empty() || *port == 0 => Err("tcp check needs tcp:HOST:PORT".into()),
        HealthCheck::S3 { bucket } => crate::s3::check_bucket_name(bucket).map_err(|e| format!("s3 check: {e}")),
        HealthCheck::File { path, .. } if !path.starts_with('/') || path.len() > 4096 => Err(format!("file check {path:?}: the path must be absolute")),
        HealthCheck::File { sha256: Some(d), .. } if d.len() != 64 || !d.bytes().all(|b| b.is_ascii_hexdigit()) => {
            Err(format!("file check: {d:?} is not a SHA-256 (64 hex digits)"))
        }
        _ => Ok(()),
    }
}

/// Checks a deployment request before anything is recorded.
pub fn validate(spec: &DeploySpec) -> Result<(), String> {
    match (&spec.machine, spec.selector.is_empty()) {
        (Some(_), false) => return Err("give --machine or --selector, not both".into()),
        (None, true) => return Err("name the targets: --machine ID or --selector k=v".into()),
        _ => {}
    }
    registry::check_labels(&spec.selector)?;
    check_system(&spec.system)?;
    let mut names = std::collections::BTreeSet::new();
    for secret in &spec.secrets {
        check_secret_name(&secret.name)?;
        if !names.insert(&secret.name) {
            return Err(format!("secret {:?} is given twice", secret.name));
        }
        if secret.value.expose().len() > MAX_SECRET_LEN {
            return Err(format!("secret {:?} is larger than 1 MiB", secret.name));
        }
        if secret.mode > 0o7777 {
            return Err(format!("secret {:?} has an invalid mode {:o}", secret.name, secret.mode));
        }
    }
    for (k, v) in &spec.facts {
        if k.is_empty() || k.len() > 128 || v.len() > 64 << 10 {
            return Err(format!("fact {k:?} is invalid: keys of 1-128 characters, values up to 64 KiB"));
        }
    }
    spec.checks.iter().try_for_each(check_check)?;
    if spec.reboot && spec.goal == drover_protocol::v1::SwitchGoal::DryActivate {
        return Err("--reboot goes with a goal that changes the system; dry-activate changes nothing".into());
    }
    if spec.health_deadline_ms == 0 || spec.health_deadline_ms > 3_600_000 {
        return Err("--health-deadline must be between 1ms and 1h".into());
    }
    Ok(())
}

/// Why a machine cannot take a new generation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum NotDeployable {
    #[error("the machine was revoked")]
    Revoked,
    /// Its next generation is staged by a change recorded in batches that
    /// is not yet pointed to (on another coordinator, possibly).
    #[error("the machine is part of a deployment still being recorded")]
    BeingRecorded,
}

/// The number of `machine`'s next generation, or why it gets none.
pub fn next_generation(machine: &MachineRecord) -> Result<u64, NotDeployable> {
    if machine.revoked_at.is_some() {
        return Err(NotDeployable::Revoked);
    }
    Ok(machine.desired_generation + 1)
}

/// A deployment that a newer generation replaces before it was applied
/// becomes superseded; returns whether it changed.
pub fn supersede(previous: &mut DeploymentRecord) -> bool {
    if previous.state == DeploymentState::Pending {
        previous.state = DeploymentState::Superseded;
        return true;
    }
    false
}

/// The facts of one machine: the admin's facts and the machine's identity.
pub fn facts_json(facts: &BTreeMap<String, String>, machine: &MachineRecord, generation: u64) -> String {
    let mut object = serde_json::Map::new();
    for (k, v) in facts {
        object.insert(k.clone(), serde_json::Value::String(v.clone()));
    }
    object.insert("machine_id".into(), machine.id.clone().into());
    object.insert("hostname".into(), machine.hostname.clone().into());
    object.insert("generation".into(), generation.into());
    serde_json::Value::Object(object).to_string()
}

/// A system as the CLI names it: the closure's store path, or `URI#ATTR`.
pub fn system_text(system: &SystemSpec) -> String {
    match system {
        SystemSpec::Closure { store_path, .. } => store_path.clone(),
        SystemSpec::Flake { uri, attribute } => format!("{uri}#{attribute}"),
    }
}

/// What changes from `before` (a machine's newest assignment, if any) to
/// `after`, one line each; secrets by name only. The generation number in
/// the facts is left out: it changes every time.
pub fn changes(before: Option<&Assignment>, after: &Assignment) -> Vec<String> {
    let mut out = Vec::new();
    let system_after = system_text(&after.system);
    match before.map(|b| system_text(&b.system)) {
        Some(b) if b == system_after => {}
        Some(b) => out.push(format!("system: {b} -> {system_after}")),
        None => out.push(format!("system: (none) -> {system_after}")),
    }
    if before.is_none_or(|b| b.goal != after.goal) && after.goal != drover_protocol::v1::SwitchGoal::Switch {
        out.push(format!("goal: {}", after.goal));
    }
    let empty: Vec<drover_protocol::v1::SecretFile> = Vec::new();
    let old_secrets = before.map(|b| &b.secrets).unwrap_or(&empty);
    for s in &after.secrets {
        match old_secrets.iter().find(|o| o.name == s.name) {
            None => out.push(format!("secret added: {}", s.name)),
            Some(o) if o.value.expose() != s.value.expose() => out.push(format!("secret changed: {}", s.name)),
            Some(o) if (o.mode, &o.owner, &o.group) != (s.mode, &s.owner, &s.group) => out.push(format!("secret mode or owner changed: {}", s.name)),
            Some(_) => {}
        }
    }
    for o in old_secrets.iter().filter(|o| after.secrets.iter().all(|s| s.name != o.name)) {
        out.push(format!("secret removed: {}", o.name));
    }
    let facts = |json: &str| -> BTreeMap<String, serde_json::Value> {
        let mut map: BTreeMap<String, serde_json::Value> = serde_json::from_str(json).unwrap_or_default();
        map.remove("generation");
        map
    };
    let old_facts = before.map(|b| facts(&b.facts_json)).unwrap_or_default();
    let new_facts = facts(&after.facts_json);
    for (k, v) in &new_facts {
        match old_facts.get(k) {
            None => out.push(format!("fact added: {k} = {v}")),
            Some(o) if o != v => out.push(format!("fact changed: {k}: {o} -> {v}")),
            Some(_) => {}
        }
    }
    for k in old_facts.keys().filter(|k| !new_facts.contains_key(*k)) {
        out.push(format!("fact removed: {k}"));
    }
    if before.is_none_or(|b| b.checks != after.checks) && !(before.is_none() && after.checks.is_empty()) {
        out.push(format!("health checks: {} check(s)", after.checks.len()));
    }
    let old_volumes: Vec<&str> = before.map(|b| b.volumes.iter().map(|v| v.name.as_str()).collect()).unwrap_or_default();
    for v in &after.volumes {
        if !old_volumes.contains(&v.name.as_str()) {
            out.push(format!("volume attached: {} at {}", v.name, v.mount_point));
        }
    }
    for name in old_volumes.iter().filter(|n| after.volumes.iter().all(|v| v.name != **n)) {
        out.push(format!("volume detached: {name}"));
    }
    if after.reboot {
        out.push("reboot after the switch, verified".into());
    }
    out
}

/// A pending deployment record for `assignment` on `machine`.
fn pending_deployment(assignment: &Assignment, machine: &MachineRecord, now: UnixMillis) -> DeploymentRecord {
    DeploymentRecord {
        id: deployment_id(&machine.id, assignment.generation),
        machine_id: machine.id.clone(),
        hostname: machine.hostname.clone(),
        generation: assignment.generation,
        system: assignment.system.clone(),
        created_at: now,
        finished_at: None,
        state: DeploymentState::Pending,
        rolled_back: false,
        steps: Vec::new(),
        output_tail: String::new(),
        system_path: None,
        secret_names: assignment.secrets.iter().map(|s| s.name.clone()).collect(),
        steps_dropped: 0,
        // The system is kept once, in the assignment's spec.
        spec: Some(crate::model::SpecRecord::of(assignment).digest()),
    }
}

/// The assignment and the fresh deployment record of one machine, with what
/// the coordinator adds for it (its tenant's facts and password, its SSH
/// access).
pub fn build(spec: &DeploySpec, machine: &MachineRecord, generation: u64, now: UnixMillis, extras: &Extras) -> (AssignmentRecord, DeploymentRecord) {
    let mut facts = spec.facts.clone();
    facts.extend(extras.facts.clone());
    let mut secrets = spec.secrets.clone();
    secrets.retain(|s| extras.secrets.iter().all(|e| e.name != s.name));
    secrets.extend(extras.secrets.iter().cloned());
    let assignment = Assignment {
        generation,
        system: spec.system.clone(),
        secrets,
        facts_json: facts_json(&facts, machine, generation),
        checks: spec.checks.clone(),
        health_deadline_ms: spec.health_deadline_ms,
        volumes: Vec::new(),
        goal: spec.goal,
        force_switch: spec.force_switch,
        reboot: spec.reboot,
    };
    let deployment = pending_deployment(&assignment, machine, now);
    (AssignmentRecord { machine_id: machine.id.clone(), created_at: now, assignment, access: extras.access.clone() }, deployment)
}

/// Puts the machine's volumes into an assignment, and their mount points
/// into its facts (`volume.NAME.mount`), replacing what an earlier
/// generation said about volumes.
pub fn with_volumes(assignment: &mut Assignment, volumes: &[drover_protocol::v1::VolumeMount]) {
    let mut facts: serde_json::Map<String, serde_json::Value> = serde_json::from_str(&assignment.facts_json).unwrap_or_default();
    facts.retain(|k, _| !k.starts_with("volume."));
    for v in volumes {
        facts.insert(format!("volume.{}.mount", v.name), v.mount_point.clone().into());
    }
    assignment.facts_json = serde_json::Value::Object(facts).to_string();
    assignment.volumes = volumes.to_vec();
}

/// A new generation that repeats an earlier assignment (a revert), with the
/// SSH access of today: a key removed since does not come back.
pub fn rebuild(previous: &Assignment, machine: &MachineRecord, generation: u64, now: UnixMillis, access: &Access) -> (AssignmentRecord, DeploymentRecord) {
    let mut facts: serde_json::Map<String, serde_json::Value> = serde_json::from_str(&previous.facts_json).unwrap_or_default();
    facts.insert("generation".into(), generation.into());
    let assignment = Assignment {
        generation,
        facts_json: serde_json::Value::Object(facts).to_string(),
        // A repeat never reboots by itself; `machines reboot` asks for it.
        reboot: false,
        ..previous.clone()
    };
    let deployment = pending_deployment(&assignment, machine, now);
    (AssignmentRecord { machine_id: machine.id.clone(), created_at: now, assignment, access: access.clone() }, deployment)
}

/// Whether a step ends a deployment on its machine (and changes the
/// machine's record: see [`apply_report`]).
pub fn is_outcome(step: DeployStep) -> bool {
    matches!(step, DeployStep::Succeeded | DeployStep::Failed | DeployStep::RolledBack)
}

/// Folds a progress report into the deployment and its machine.
pub fn apply_report(deployment: &mut DeploymentRecord, machine: &mut MachineRecord, report: &DeploymentReport, now: UnixMillis, max_steps: usize) {
    let used: usize = deployment.steps.iter().map(|s| s.message.len()).sum();
    let room = if used >= STEP_BYTES { SHORT_MESSAGE } else { MAX_MESSAGE };
    let step = StepRecord { step: report.step, at: now, message: tail(&report.message, room) };
    if deployment.steps.len() < max_steps.max(2) {
        deployment.steps.push(step);
    } else {
        // Bounded: the first steps and the newest one are kept, the ones
        // between counted.
        deployment.steps_dropped += 1;
        if let Some(last) = deployment.steps.last_mut() {
            *last = step;
        }
    }
    if !report.output_tail.is_empty() {
        deployment.output_tail = tail(&report.output_tail, MAX_OUTPUT_TAIL);
    }
    match report.step {
        DeployStep::Succeeded => {
            deployment.state = DeploymentState::Succeeded;
            deployment.finished_at = Some(now);
            deployment.system_path = report.system_path.clone();
            machine.current_generation = Some(deployment.generation);
            machine.current_system = report.system_path.clone();
        }
        DeployStep::Failed => {
            deployment.state = DeploymentState::Failed;
            deployment.finished_at = Some(now);
        }
        DeployStep::RolledBack => {
            deployment.state = DeploymentState::Failed;
            deployment.rolled_back = true;
            deployment.finished_at = Some(now);
            if report.system_path.is_some() {
                machine.current_system = report.system_path.clone();
            }
        }
        _ => {
            if deployment.state == DeploymentState::Pending {
                deployment.state = DeploymentState::Applying;
            }
        }
    }
}

/// Parses `unit:NAME`, `http(s)://...` or `tcp:HOST:PORT`.
pub fn parse_check(arg: &str) -> Result<HealthCheck, String> {
    if let Some(name) = arg.strip_prefix("unit:") {
        return Ok(HealthCheck::Unit { name: name.to_string() });
    }
    if let Some(bucket) = arg.strip_prefix("s3:") {
        return Ok(HealthCheck::S3 { bucket: bucket.to_string() });
    }
    if let Some(rest) = arg.strip_prefix("file:") {
        let (path, sha256) = match rest.split_once("#sha256=") {
            Some((path, digest)) => (path, Some(digest.to_ascii_lowercase())),
            None => (rest, None),
        };
        return Ok(HealthCheck::File { path: path.to_string(), sha256 });
    }
    if arg.starts_with("http://") || arg.starts_with("https://") {
        return Ok(HealthCheck::Http { url: arg.to_string() });
    }
    if let Some(rest) = arg.strip_prefix("tcp:") {
        let (host, port) = rest.rsplit_once(':').ok_or_else(|| format!("--check {arg:?}: expected tcp:HOST:PORT"))?;
        let port = port.parse().map_err(|_| format!("--check {arg:?}: bad port"))?;
        return Ok(HealthCheck::Tcp { host: host.trim_matches(['[', ']']).to_string(), port });
    }
    Err(format!("--check {arg:?}: expected unit:NAME, http://HOST:PORT/PATH, tcp:HOST:PORT, s3:BUCKET or file:PATH[#sha256=HEX]"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use drover_protocol::v1::{SecretBytes, SecretFile};

    fn test_machine() -> MachineRecord {
        MachineRecord {
            id: "m-1".into(),
            hostname: "h".into(),
            labels: Default::default(),
            token_id: "t".into(),
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
            enrolled_key: None,
            volumes: vec![],
            reported_via: None,
        }
    }

    #[test]
    fn revoked_machines_get_no_generation_and_pending_ones_are_superseded() {
        let m = MachineRecord { desired_generation: 4, ..test_machine() };
        assert_eq!(next_generation(&m), Ok(5));
        let gone = MachineRecord { revoked_at: Some(1), ..m };
        assert_eq!(next_generation(&gone), Err(NotDeployable::Revoked));
        let (_, mut d) = build(&spec(), &test_machine(), 1, 10, &Extras::default());
        assert!(supersede(&mut d));
        assert_eq!(d.state, DeploymentState::Superseded);
        d.state = DeploymentState::Succeeded;
        assert!(!supersede(&mut d), "a finished deployment stays as it was");
    }

    fn spec() -> DeploySpec {
        DeploySpec {
            machine: Some("m-1".into()),
            selector: Default::default(),
            system: SystemSpec::Flake { uri: "path:/fleet".into(), attribute: "web".into() },
            secrets: vec![SecretFile { name: "db".into(), value: SecretBytes::new(b"pw".to_vec()), owner: None, group: None, mode: 0o400 }],
            facts: [("tenant".to_string(), "a".to_string())].into(),
            checks: vec![HealthCheck::Tcp { host: "127.0.0.1".into(), port: 22 }],
            health_deadline_ms: 1000,
            buckets: Vec::new(),
            volumes: Vec::new(),
            goal: Default::default(),
            force_switch: false,
            override_rollout: false,
            reboot: false,
        }
    }

    #[test]
    fn validation_names_the_problem() {
        assert!(validate(&spec()).is_ok());
        type Change = Box<dyn Fn(&mut DeploySpec)>;
        let cases: Vec<(Change, &str)> = vec![
            (Box::new(|s| s.machine = None), "--machine ID or --selector"),
            (Box::new(|s| s.selector = [("a".to_string(), "b".to_string())].into()), "not both"),
            (Box::new(|s| s.secrets[0].name = "../etc/passwd".into()), "secret name"),
            (Box::new(|s| s.secrets.push(s.secrets[0].clone())), "twice"),
            (
                Box::new(|s| {
                    s.system = SystemSpec::Closure { store_path: "/tmp/x".into(), substituters: vec!["x".into()], trusted_public_keys: vec!["k".into()] }
                }),
                "not a store path",
            ),
            (Box::new(|s| s.checks = vec![HealthCheck::Http { url: "ftp://x".into() }]), "http://"),
            (Box::new(|s| s.health_deadline_ms = 0), "--health-deadline"),
        ];
        for (change, words) in cases {
            let mut s = spec();
            change(&mut s);
            let err = validate(&s).expect_err(words);
            assert!(err.contains(words), "{err:?} should mention {words:?}");
        }
    }

    #[test]
    fn what_the_coordinator_adds_joins_the_request() {
        let machine = test_machine();
        let extras = Extras {
            facts: [("domain".to_string(), "a.example".to_string())].into(),
            secrets: vec![SecretFile { name: "tenant-admin-password".into(), value: SecretBytes::new(b"x".to_vec()), owner: None, group: None, mode: 0o400 }],
            access: Access { authorized_keys: vec![drover_protocol::v1::LoginKeys { login: "root".into(), keys: vec!["ssh-ed25519 K".into()] }] },
        };
        let (a, d) = build(&spec(), &machine, 2, 10, &extras);
        let facts: serde_json::Value = serde_json::from_str(&a.assignment.facts_json).expect("json");
        assert_eq!(facts["domain"], "a.example");
        assert_eq!(facts["tenant"], "a");
        assert_eq!(d.secret_names, vec!["db", "tenant-admin-password"]);
        assert_eq!(a.access, extras.access);
        let (again, _) = rebuild(&a.assignment, &machine, 3, 11, &Access::default());
        assert!(again.access.authorized_keys.is_empty(), "a revert carries today's access");
        assert_eq!(again.assignment.secrets, a.assignment.secrets);
    }

    #[test]
    fn reports_move_the_deployment_and_the_machine() {
        let machine = MachineRecord { desired_generation: 1, ..test_machine() };
        let (a, mut d) = build(&spec(), &machine, 1, 10, &Extras::default());
        assert!(a.assignment.facts_json.contains("\"tenant\":\"a\""));
        assert_eq!(d.secret_names, vec!["db"]);
        let mut m = machine.clone();
        let report = |step, path: Option<&str>| DeploymentReport {
            generation: 1,
            step,
            message: "m".into(),
            output_tail: "x".repeat(MAX_OUTPUT_TAIL + 10),
            system_path: path.map(String::from),
            volumes: vec![],
        };
        apply_report(&mut d, &mut m, &report(DeployStep::Switching, None), 11, 100);
        assert_eq!(d.state, DeploymentState::Applying);
        assert_eq!(d.output_tail.len(), MAX_OUTPUT_TAIL);
        apply_report(&mut d, &mut m, &report(DeployStep::Succeeded, Some("/nix/store/x")), 12, 100);
        assert_eq!(d.state, DeploymentState::Succeeded);
        assert_eq!(m.current_generation, Some(1));
        let mut d2 = d.clone();
        apply_report(&mut d2, &mut m, &report(DeployStep::RolledBack, Some("/nix/store/old")), 13, 100);
        assert!(d2.rolled_back);
        assert_eq!(d2.state, DeploymentState::Failed);
    }
}
