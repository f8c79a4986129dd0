//! Machine registry rules, without I/O: status from the last report, label
//! selectors and label syntax, and the wire view of a machine.

use std::time::Duration;

use drover_protocol::v1::{MachineInfo, MachineStatus};

use crate::model::{Labels, MachineRecord, UnixMillis};

/// Reports a machine may miss before it counts as offline.
pub const MISSED_INTERVALS: u64 = 3;

/// A machine is online while its last report is at most three intervals old.
pub fn status(machine: &MachineRecord, now: UnixMillis, health_interval: Duration) -> MachineStatus {
    if machine.revoked_at.is_some() {
        return MachineStatus::Revoked;
    }
    let window = u64::try_from(health_interval.as_millis()).unwrap_or(u64::MAX) * MISSED_INTERVALS;
    match machine.last_seen {
        Some(seen) if now.saturating_sub(seen) <= window => MachineStatus::Online,
        _ => MachineStatus::Offline,
    }
}

/// How liveness is judged: now, the health interval and, on a store several
/// coordinators share, the coordinators present now (as
/// [`MachineRecord::reported_via`] names them): a report carried by a
/// coordinator no longer present does not count, so the machines of a
/// coordinator that died show offline once its lease is gone, not only
/// after three intervals.
#[derive(Debug, Clone)]
pub struct Liveness {
    pub now: UnixMillis,
    pub health_interval: Duration,
    pub present: Option<std::collections::HashSet<String>>,
}

impl Liveness {
    pub fn status(&self, machine: &MachineRecord) -> MachineStatus {
        let carried_by_the_gone = matches!((&self.present, &machine.reported_via), (Some(present), Some(via)) if !present.contains(via));
        match status(machine, self.now, self.health_interval) {
            MachineStatus::Online if carried_by_the_gone => MachineStatus::Offline,
            other => other,
        }
    }

    /// [`to_wire`], with the status judged so.
    pub fn to_wire(&self, machine: &MachineRecord) -> MachineInfo {
        MachineInfo { status: self.status(machine), ..to_wire(machine, self.now, self.health_interval) }
    }
}

/// Whether every `key=value` of the selector is among the labels.
pub fn matches(labels: &Labels, selector: &Labels) -> bool {
    selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

/// Checks a label key and value: keys are 1–63 characters of letters,
/// digits, `-`, `_`, `.` and `/`; values at most 253 printable characters.
pub fn check_label(key: &str, value: &str) -> Result<(), String> {
    let key_ok = !key.is_empty() && key.len() <= 63 && key.chars().all(|c| c.is_ascii_alphanumeric() || "-_./".contains(c));
    if !key_ok {
        return Err(format!("label key {key:?} is invalid: use 1-63 letters, digits, '-', '_', '.' or '/'"));
    }
    if value.len() > 253 || value.chars().any(|c| c.is_control()) {
        return Err(format!("label value for {key:?} is invalid: at most 253 printable characters"));
    }
    Ok(())
}

/// Parses `key=value`, checked as [`check_label`] does.
pub fn parse_label(s: &str) -> Result<(String, String), String> {
    let (k, v) = s.split_once('=').ok_or_else(|| format!("{s:?} is not key=value"))?;
    check_label(k, v)?;
    Ok((k.to_string(), v.to_string()))
}

pub fn check_labels(labels: &Labels) -> Result<(), String> {
    labels.iter().try_for_each(|(k, v)| check_label(k, v))
}

pub fn to_wire(machine: &MachineRecord, now: UnixMillis, health_interval: Duration) -> MachineInfo {
    MachineInfo {
        id: machine.id.clone(),
        hostname: machine.hostname.clone(),
        labels: machine.labels.clone(),
        status: status(machine, now, health_interval),
        enrolled_at: machine.enrolled_at,
        last_seen: machine.last_seen,
        cert_serial: machine.cert_serial.clone(),
        cert_not_after: machine.cert_not_after,
        health: machine.health.as_ref().map(|h| h.to_wire()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn machine(last_seen: Option<u64>, revoked: bool) -> MachineRecord {
        MachineRecord {
            id: "m".into(),
            hostname: "h".into(),
            labels: Labels::from([("role".into(), "web".into())]),
            token_id: "t".into(),
            enrolled_at: 0,
            revoked_at: revoked.then_some(1),
            cert_serial: "s".into(),
            cert_not_after: 0,
            previous_cert: None,
            last_seen,
            health: None,
            desired_generation: 0,
            current_generation: None,
            current_system: None,
            enrolled_key: None,
            volumes: vec![],
            reported_via: None,
        }
    }

    /// A report carried by a coordinator no longer present does not count;
    /// one carried by a present one, or on a store nobody shares, does.
    #[test]
    fn a_report_carried_by_a_coordinator_gone_does_not_make_a_machine_online() {
        let i = Duration::from_secs(10);
        let via = |c: &str| MachineRecord { reported_via: Some(c.into()), ..machine(Some(1000), false) };
        let shared = Liveness { now: 2000, health_interval: i, present: Some(["coordinator a".to_string()].into()) };
        assert_eq!(shared.status(&via("coordinator a")), MachineStatus::Online);
        assert_eq!(shared.status(&via("coordinator b")), MachineStatus::Offline);
        assert_eq!(shared.to_wire(&via("coordinator b")).status, MachineStatus::Offline);
        assert_eq!(shared.status(&machine(Some(1000), false)), MachineStatus::Online, "carried by nobody named");
        let revoked = MachineRecord { reported_via: Some("coordinator b".into()), ..machine(Some(1000), true) };
        assert_eq!(shared.status(&revoked), MachineStatus::Revoked);
        let alone = Liveness { present: None, ..shared };
        assert_eq!(alone.status(&via("coordinator b")), MachineStatus::Online, "sled: nobody else");
        assert_eq!(alone.status(&via("coordinator b")), status(&via("coordinator b"), 2000, i));
    }

    #[test]
    fn offline_after_three_missed_intervals() {
        let i = Duration::from_secs(10);
        assert_eq!(status(&machine(None, false), 0, i), MachineStatus::Offline);
        assert_eq!(status(&machine(Some(1000), false), 1000 + 30_000, i), MachineStatus::Online);
        assert_eq!(status(&machine(Some(1000), false), 1000 + 30_001, i), MachineStatus::Offline);
        assert_eq!(status(&machine(Some(1000), true), 1000, i), MachineStatus::Revoked);
    }

    #[test]
    fn selectors_need_every_pair() {
        let m = machine(None, false);
        assert!(matches(&m.labels, &Labels::new()));
        assert!(matches(&m.labels, &Labels::from([("role".into(), "web".into())])));
        assert!(!matches(&m.labels, &Labels::from([("role".into(), "db".into())])));
        assert!(!matches(&m.labels, &Labels::from([("x".into(), "web".into())])));
    }

    #[test]
    fn label_syntax() {
        assert!(check_label("tenant", "a.example").is_ok());
        assert!(check_label("", "x").is_err());
        assert!(check_label("a b", "x").is_err());
        assert!(check_label("k", "line\nbreak").is_err());
    }
}
