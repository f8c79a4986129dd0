//! What an agent sends is checked or normalised before it is stored: a
//! health report full of NaN and infinities (which once made a machine's
//! record unreadable, so that `machines list` failed for every admin and the
//! machine was refused on every reconnect) is stored as finite numbers, over
//! the real connection, and every command keeps working.

use crate::common;

use std::time::Duration;

use common::{until_reported, TestCoordinator};
use drover_agent::system::health::HealthSource;
use drover_protocol::v1::{DiskUsage, HealthReport};

/// A broken or hostile agent's health: every float not a number, strings
/// too long and full of control characters.
struct HostileHealth;

impl HealthSource for HostileHealth {
    async fn collect(&mut self) -> HealthReport {
        HealthReport {
            hostname: format!("evil\n{}", "h".repeat(10_000)),
            uptime_secs: u64::MAX,
            load_average: [f64::NAN, -1e308, f64::NEG_INFINITY],
            cpu_count: 1,
            cpu_usage_percent: f32::NAN,
            memory_total_bytes: 1,
            memory_used_bytes: 2,
            disks: (0..10_000).map(|i| DiskUsage { mount_point: format!("/m{i}\u{7}"), total_bytes: 1, available_bytes: 1 }).collect(),
            failed_units: Some(vec!["x".repeat(100_000)]),
            agent_version: "\u{1b}[31mred".into(),
            system_path: Some("/nix/store/\u{0}".into()),
            boot_id: None,
            booted_system: None,
            pending_system: None,
            nix_store: None,
            addresses: vec![],
            // Volumes it does not hold, with hostile text (the whole report
            // stays under the 1 MiB limit of a machine's requests).
            volumes: (0..300)
                .map(|i| drover_protocol::v1::VolumeState {
                    name: format!("v{i}\n"),
                    mount_point: "/\u{0}".repeat(100),
                    mounted: true,
                    formatted: true,
                    filesystem: Some("x".repeat(200)),
                    device_bytes: u64::MAX,
                    total_bytes: u64::MAX,
                    used_bytes: u64::MAX,
                    grow_pending: None,
                    error: Some("\u{1b}[2J".repeat(100)),
                })
                .collect(),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_health_report_of_nan_and_infinities_is_normalised_and_every_command_keeps_working() {
    let fleet = TestCoordinator::start().await;
    let (_, token) = fleet.token(2, &[("role", "web")]).await;
    let mut good = fleet.spawn_agent("good", Some(&token));
    let config = fleet.agent_config("hostile", Some(&token));
    let mut hostile = drover_agent::spawn(config.clone(), HostileHealth, None).expect("agent starts");
    until_reported(&mut good, 1).await;
    let status = until_reported(&mut hostile, 2).await;
    let hostile_id = status.machine_id.expect("enrolled");

    let (ok, list, err) = common::drover_json(&fleet, &["machines", "list"]);
    assert!(ok, "machines list works: {err}");
    let machines = list.as_array().expect("array");
    assert_eq!(machines.len(), 2, "both machines are listed: {list}");
    let m = machines.iter().find(|m| m["id"] == hostile_id.as_str()).expect("the hostile machine is listed");
    assert_eq!(m["status"], "online");
    let health = &m["health"];
    assert_eq!(health["load_average"], serde_json::json!([0.0, 0.0, 0.0]), "non-finite and impossible (negative) loads are stored as 0");
    assert_eq!(health["cpu_usage_percent"], serde_json::json!(0.0));
    assert!(health["hostname"].as_str().expect("hostname").len() <= 253, "over-long text is cut");
    assert!(!health["hostname"].as_str().expect("hostname").contains('\n'), "control characters are dropped");
    assert!(health["disks"].as_array().expect("disks").len() <= 256, "lists are capped");
    assert!(!health["agent_version"].as_str().expect("version").contains('\u{1b}'));
    let volumes = health["volumes"].as_array().expect("volumes");
    assert!(volumes.len() <= 256, "volume states are capped");
    for v in volumes {
        for field in ["name", "mount_point", "filesystem", "error"] {
            let text = v[field].as_str().unwrap_or_default();
            assert!(text.len() <= 4096 && !text.chars().any(char::is_control), "{field} is cleaned and cut: {text:?}");
        }
    }
    let (ok, list, err) = common::drover_json(&fleet, &["volumes", "list"]);
    assert!(!ok && list.is_null() && err.contains("[linstor]"), "no volume appears from a report: {err}");

    let (ok, shown, err) = common::drover_json(&fleet, &["machines", "show", &hostile_id]);
    assert!(ok, "machines show works: {err}");
    assert_eq!(shown["machine"]["id"], hostile_id.as_str(), "{shown}");

    // The machine itself is not locked out: it reconnects with its record.
    let connects = hostile.status.borrow().connects;
    hostile.stop().await.expect("stop");
    let mut again = drover_agent::spawn(config, HostileHealth, None).expect("agent restarts");
    again
        .wait_for(Duration::from_secs(20), |s| s.connects >= connects.max(1) && s.reports >= 1)
        .await
        .expect("the machine reconnects after its reports were stored");
    assert_eq!(fleet.machines().await.len(), 2, "no second record");
    again.stop().await.expect("stop");
    good.stop().await.expect("stop");
}
