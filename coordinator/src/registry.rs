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
        }
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
