//! The apply core, event by event with simulated time, at every point an
//! apply can be interrupted; and the driver with a fake switcher.

use std::sync::{Arc, Mutex};

use drover_protocol::v1::{Access, Assignment, DeployStep, HealthCheck, SwitchGoal, SystemSpec};

use crate::switched::{BootState, Switched};

use super::core::{Action, Applied, Apply, Event, Failure, Journal, JournalStep};
use crate::system::switch::{SwitchError, SystemSwitcher};

const CONFIRM_MS: u64 = 120_000;

fn journal(step: JournalStep) -> Journal {
    Journal {
        generation: 7,
        step,
        previous_system: Some("/nix/store/old".into()),
        system: SystemSpec::Closure { store_path: "/nix/store/new".into(), substituters: vec![], trusted_public_keys: vec![] },
        checks: vec![HealthCheck::Tcp { host: "127.0.0.1".into(), port: 1 }],
        health_deadline_ms: 5_000,
        goal: SwitchGoal::Switch,
        force_switch: false,
        reboot: false,
        boot_before: None,
        expected_boot: None,
    }
}

fn steps(actions: &[Action]) -> Vec<DeployStep> {
    actions.iter().filter_map(|a| if let Action::Report(r) = a { Some(r.step) } else { None }).collect()
}

fn finished(actions: &[Action]) -> Option<Applied> {
    actions.iter().find_map(|a| if let Action::Finish(x) = a { Some(x.clone()) } else { None })
}

fn saved(actions: &[Action]) -> Vec<JournalStep> {
    actions.iter().filter_map(|a| if let Action::SaveJournal(j) = a { Some(j.step) } else { None }).collect()
}

fn fail(message: &str) -> Failure {
    Failure { message: message.into(), tail: format!("{message} output") }
}

/// A core walked up to just after a successful switch at `t = 1_000`.
fn switched() -> Apply {
    let mut core = Apply::new(CONFIRM_MS);
    core.handle(Event::Begin { journal: journal(JournalStep::Started) });
    core.handle(Event::FilesWritten(Ok("written".into())));
    core.handle(Event::VolumesAttached(Ok(String::new())));
    core.handle(Event::Prepared(Ok(())));
    core.handle(Event::Switched { result: Ok(Switched::Activated { tail: "switch output".into() }), now: 1_000, current: Some("/nix/store/new".into()) });
    core
}

#[test]
fn a_whole_apply_journals_each_step_before_taking_it() {
    let mut core = Apply::new(CONFIRM_MS);
    let a = core.handle(Event::Begin { journal: journal(JournalStep::Started) });
    assert_eq!(steps(&a), vec![DeployStep::Received]);
    assert_eq!(saved(&a), vec![JournalStep::Started]);
    assert_eq!(a.last(), Some(&Action::WriteFiles), "files come after the journal");
    let a = core.handle(Event::FilesWritten(Ok("2 secret(s)".into())));
    assert_eq!(
        a,
        vec![
            super::core::Action::Report(drover_protocol::v1::DeploymentReport {
                generation: 7,
                step: DeployStep::SecretsWritten,
                message: "2 secret(s)".into(),
                output_tail: String::new(),
                system_path: None,
                volumes: vec![]
            }),
            Action::AttachVolumes
        ]
    );
    let a = core.handle(Event::VolumesAttached(Ok("1 volume(s) mounted".into())));
    assert_eq!(steps(&a), vec![DeployStep::VolumesAttached]);
    assert_eq!(a.last(), Some(&Action::Prepare), "volumes are mounted before the closure is fetched");
    let a = core.handle(Event::Prepared(Ok(())));
    assert_eq!(saved(&a), vec![JournalStep::Switching]);
    assert_eq!(a.last(), Some(&Action::Switch), "the journal says switching before the switch starts");
    let a = core.handle(Event::Switched { result: Ok(Switched::Activated { tail: "out".into() }), now: 1_000, current: Some("/nix/store/new".into()) });
    assert_eq!(saved(&a), vec![JournalStep::Switched]);
    assert_eq!(steps(&a), vec![DeployStep::Switched, DeployStep::HealthChecking]);
    assert_eq!(a.last(), Some(&Action::RunGate { deadline_ms: 5_000 }));
    let a = core.handle(Event::Gate(Ok(())));
    assert_eq!(a, vec![Action::AwaitContact { since: 1_000, until: 1_000 + CONFIRM_MS }]);
    let a = core.handle(Event::Contact { at: 1_500, current: Some("/nix/store/new".into()) });
    let done = finished(&a).expect("finished");
    assert_eq!(done.step, DeployStep::Succeeded);
    assert_eq!(done.system_path.as_deref(), Some("/nix/store/new"));
    assert_eq!(done.output_tail, "out");
    assert!(core.done());
}

#[test]
fn failures_before_the_switch_leave_the_system_alone() {
    let mut core = Apply::new(CONFIRM_MS);
    core.handle(Event::Begin { journal: journal(JournalStep::Started) });
    let a = core.handle(Event::FilesWritten(Err("no user named svc".into())));
    let done = finished(&a).expect("finished");
    assert_eq!(done.step, DeployStep::Failed);
    assert!(done.message.contains("no user named svc") && done.message.contains("not changed"), "{}", done.message);
    assert!(!a.iter().any(|x| matches!(x, Action::RollBack { .. } | Action::Switch)));

    let mut core = Apply::new(CONFIRM_MS);
    core.handle(Event::Begin { journal: journal(JournalStep::Started) });
    core.handle(Event::FilesWritten(Ok(String::new())));
    core.handle(Event::VolumesAttached(Ok(String::new())));
    let a = core.handle(Event::Prepared(Err(fail("not signed"))));
    let done = finished(&a).expect("finished");
    assert_eq!((done.step, done.output_tail.as_str()), (DeployStep::Failed, "not signed output"));
    assert_eq!(done.system_path.as_deref(), Some("/nix/store/old"), "the old system runs on");
}

#[test]
fn a_refused_volume_fails_the_apply_before_the_switch() {
    let mut core = Apply::new(CONFIRM_MS);
    core.handle(Event::Begin { journal: journal(JournalStep::Started) });
    core.handle(Event::FilesWritten(Ok(String::new())));
    let a = core.handle(Event::VolumesAttached(Err("volume data: its device holds a xfs filesystem, not ext4".into())));
    let done = finished(&a).expect("finished");
    assert_eq!(done.step, DeployStep::Failed);
    assert!(done.message.contains("volume data") && done.message.contains("not changed"), "{}", done.message);
    assert!(!a.iter().any(|x| matches!(x, Action::RollBack { .. } | Action::Switch | Action::Prepare)));
    assert_eq!(done.system_path.as_deref(), Some("/nix/store/old"), "the old system runs on");
}

#[test]
fn a_failed_switch_returns_to_the_exact_previous_system() {
    let mut core = Apply::new(CONFIRM_MS);
    core.handle(Event::Begin { journal: journal(JournalStep::Started) });
    core.handle(Event::FilesWritten(Ok(String::new())));
    core.handle(Event::VolumesAttached(Ok(String::new())));
    core.handle(Event::Prepared(Ok(())));
    let a = core.handle(Event::Switched { result: Err(fail("switch-to-configuration failed")), now: 10, current: None });
    assert_eq!(steps(&a), vec![DeployStep::RollingBack]);
    assert_eq!(a.last(), Some(&Action::RollBack { previous: Some("/nix/store/old".into()) }));
    let a = core.handle(Event::RolledBack { result: Ok("back".into()), current: Some("/nix/store/old".into()) });
    let done = finished(&a).expect("finished");
    assert_eq!(done.step, DeployStep::RolledBack);
    assert!(done.message.starts_with("rolled back: switch-to-configuration failed"), "{}", done.message);
    assert_eq!(done.output_tail, "switch-to-configuration failed outputback");
}

#[test]
fn a_failed_rollback_is_reported_as_such() {
    let mut core = switched();
    core.handle(Event::Gate(Err("unit app.service is failed".into())));
    let a = core.handle(Event::RolledBack { result: Err(fail("nix-env failed")), current: Some("/nix/store/new".into()) });
    let done = finished(&a).expect("finished");
    assert_eq!(done.step, DeployStep::Failed);
    assert!(done.message.contains("unit app.service is failed; rollback failed: nix-env failed"), "{}", done.message);
}

#[test]
fn a_failed_gate_rolls_back() {
    let mut core = switched();
    let a = core.handle(Event::Gate(Err("tcp 127.0.0.1:1 refused".into())));
    assert_eq!(steps(&a), vec![DeployStep::RollingBack]);
    assert!(matches!(a.last(), Some(Action::RollBack { .. })));
}

#[test]
fn no_contact_within_the_confirmation_deadline_rolls_back() {
    let mut core = switched();
    core.handle(Event::Gate(Ok(())));
    let a = core.handle(Event::NoContact { now: 1_000 + CONFIRM_MS });
    assert!(matches!(a.last(), Some(Action::RollBack { .. })), "{a:?}");
    let reason = match &a[0] {
        Action::Report(r) => r.message.clone(),
        other => panic!("{other:?}"),
    };
    assert!(reason.contains("not reached within 2m"), "{reason}");
}

#[test]
fn contact_must_come_after_the_switch_and_before_the_deadline() {
    for (at, succeeds) in [(999, false), (1_000, true), (1_000 + CONFIRM_MS, true), (1_001 + CONFIRM_MS, false)] {
        let mut core = switched();
        core.handle(Event::Gate(Ok(())));
        let a = core.handle(Event::Contact { at, current: None });
        let ok = finished(&a).is_some_and(|d| d.step == DeployStep::Succeeded);
        assert_eq!(ok, succeeds, "contact at {at}: {a:?}");
    }
}

#[test]
fn restarted_before_the_switch_it_starts_again() {
    let mut core = Apply::new(CONFIRM_MS);
    let a = core.handle(Event::Resume { journal: journal(JournalStep::Started), current: Some("/nix/store/old".into()), now: 0 });
    assert_eq!(steps(&a), vec![DeployStep::Resumed]);
    assert_eq!(a.last(), Some(&Action::Restart));
    assert!(core.done());
    assert!(!a.iter().any(|x| matches!(x, Action::Switch | Action::RollBack { .. })), "nothing is switched");
}

#[test]
fn restarted_mid_switch_it_returns_to_the_previous_system() {
    let mut core = Apply::new(CONFIRM_MS);
    let a = core.handle(Event::Resume { journal: journal(JournalStep::Switching), current: Some("/nix/store/new".into()), now: 0 });
    assert_eq!(steps(&a), vec![DeployStep::Resumed, DeployStep::RollingBack]);
    assert_eq!(a.last(), Some(&Action::RollBack { previous: Some("/nix/store/old".into()) }));
    let a = core.handle(Event::RolledBack { result: Ok(String::new()), current: Some("/nix/store/old".into()) });
    assert_eq!(finished(&a).map(|d| d.step), Some(DeployStep::RolledBack));
}

#[test]
fn restarted_mid_switch_before_anything_changed_it_reports_failure_without_switching() {
    let mut core = Apply::new(CONFIRM_MS);
    let a = core.handle(Event::Resume { journal: journal(JournalStep::Switching), current: Some("/nix/store/old".into()), now: 0 });
    let done = finished(&a).expect("finished at once");
    assert_eq!(done.step, DeployStep::Failed);
    assert!(!a.iter().any(|x| matches!(x, Action::Switch | Action::RollBack { .. })));
}

#[test]
fn restarted_after_the_switch_or_during_the_gate_it_checks_health_again() {
    let mut core = Apply::new(CONFIRM_MS);
    let a = core.handle(Event::Resume { journal: journal(JournalStep::Switched), current: Some("/nix/store/new".into()), now: 50_000 });
    assert_eq!(steps(&a), vec![DeployStep::Resumed, DeployStep::HealthChecking]);
    assert_eq!(a.last(), Some(&Action::RunGate { deadline_ms: 5_000 }));
    let a = core.handle(Event::Gate(Ok(())));
    assert_eq!(a, vec![Action::AwaitContact { since: 50_000, until: 50_000 + CONFIRM_MS }], "the deadline counts from the restart");
    let a = core.handle(Event::Contact { at: 50_010, current: Some("/nix/store/new".into()) });
    assert_eq!(finished(&a).map(|d| d.step), Some(DeployStep::Succeeded));
}

#[test]
fn events_out_of_order_change_nothing() {
    let mut core = Apply::new(CONFIRM_MS);
    assert!(core.handle(Event::Gate(Ok(()))).is_empty());
    assert!(core.handle(Event::Contact { at: 5, current: None }).is_empty());
    let mut core = switched();
    assert!(core.handle(Event::Prepared(Ok(()))).is_empty(), "a late event from an earlier stage is ignored");
}

/// A switcher that records what it was asked and switches a pretend system.
#[derive(Default)]
struct FakeSwitcher {
    current: Mutex<Option<String>>,
    calls: Mutex<Vec<String>>,
    fail_switch: bool,
    boot: Mutex<BootState>,
    /// What a reboot boots: `None` does not reboot at all.
    reboots_into: Option<String>,
}

#[async_trait::async_trait]
impl SystemSwitcher for FakeSwitcher {
    fn current(&self, _: &SystemSpec) -> Option<String> {
        self.current.lock().expect("lock").clone()
    }

    async fn prepare(&self, _: &SystemSpec) -> Result<String, SwitchError> {
        self.calls.lock().expect("lock").push("prepare".into());
        Ok(String::new())
    }

    async fn switch(&self, spec: &SystemSpec, goal: SwitchGoal, _: bool) -> Result<Switched, SwitchError> {
        self.calls.lock().expect("lock").push(format!("switch {goal}"));
        let SystemSpec::Closure { store_path, .. } = spec else { return Ok(Switched::Activated { tail: String::new() }) };
        *self.current.lock().expect("lock") = Some(store_path.clone());
        if self.fail_switch {
            return Ok(Switched::UnitsFailed { tail: "warning: the following units failed: app.service".into(), units: vec!["app.service".into()] });
        }
        Ok(Switched::Activated { tail: "switched".into() })
    }

    async fn rollback(&self, _: &SystemSpec, previous: Option<&str>, _: SwitchGoal) -> Result<String, SwitchError> {
        self.calls.lock().expect("lock").push(format!("rollback {}", previous.unwrap_or("-")));
        *self.current.lock().expect("lock") = previous.map(String::from);
        Ok("rolled back".into())
    }

    async fn prune(&self, _: &SystemSpec, keep: u32, _: &[String]) -> Result<usize, SwitchError> {
        self.calls.lock().expect("lock").push(format!("prune {keep}"));
        Ok(0)
    }

    fn boot(&self) -> BootState {
        self.boot.lock().expect("lock").clone()
    }

    fn boot_default(&self) -> Option<String> {
        self.current.lock().expect("lock").clone()
    }

    async fn reboot(&self) -> Result<(), SwitchError> {
        self.calls.lock().expect("lock").push("reboot".into());
        if let Some(into) = &self.reboots_into {
            let mut boot = self.boot.lock().expect("lock");
            boot.boot_id = Some(format!("{}-next", boot.boot_id.clone().unwrap_or_default()));
            boot.booted = Some(into.clone());
        }
        Ok(())
    }
}

fn config(dir: &std::path::Path) -> crate::config::AgentConfig {
    let text = format!(
        "coordinator = \"127.0.0.1:1\"\nca_file = \"{0}/ca.pem\"\nstate_dir = \"{0}/state\"\nruntime_dir = \"{0}/run\"\nconfirm_deadline = \"5s\"\n",
        dir.display()
    );
    let config: crate::config::AgentConfig = toml::from_str(&text).expect("config");
    std::fs::create_dir_all(&config.state_dir).expect("state dir");
    config
}

fn assignment() -> Assignment {
    Assignment {
        generation: 3,
        system: SystemSpec::Closure { store_path: "/nix/store/abc-new".into(), substituters: vec![], trusted_public_keys: vec![] },
        secrets: vec![],
        facts_json: "{}".into(),
        checks: vec![],
        health_deadline_ms: 1_000,
        volumes: vec![],
        goal: Default::default(),
        force_switch: false,
        reboot: false,
    }
}

#[tokio::test]
async fn the_driver_carries_the_core_out_and_leaves_the_records() {
    let dir = tempfile::tempdir().expect("tempdir");
    let switcher = Arc::new(FakeSwitcher { current: Mutex::new(Some("/nix/store/abc-old".into())), ..Default::default() });
    let (reports, mut reported) = tokio::sync::mpsc::unbounded_channel();
    let (contact, contact_rx) = tokio::sync::watch::channel(None);
    let applier = Arc::new(super::Applier::with_switcher(config(dir.path()), switcher.clone(), reports, contact_rx));
    let running = applier.clone();
    let apply = tokio::spawn(async move { running.apply(assignment(), Access::default()).await });
    // The coordinator answers once the switch is done and the gate runs.
    let mut seen = Vec::new();
    while let Some(r) = reported.recv().await {
        seen.push(r.step);
        if r.step == DeployStep::HealthChecking {
            break;
        }
    }
    contact.send_replace(Some(tokio::time::Instant::now()));
    let done = apply.await.expect("join");
    assert_eq!(done.step, DeployStep::Succeeded, "{done:?}");
    assert_eq!(done.system_path.as_deref(), Some("/nix/store/abc-new"));
    assert_eq!(*switcher.calls.lock().expect("lock"), vec!["prepare", "switch switch", "prune 5"], "old generations go after a success");
    assert!(applier.records.journal().is_none(), "the journal is dropped at the end");
    assert_eq!(applier.records.applied().map(|a| a.generation), Some(3));
    assert_eq!(seen.first(), Some(&DeployStep::Received));
    assert!(seen.contains(&DeployStep::HealthChecking));
}

#[tokio::test]
async fn units_that_fail_after_the_switch_send_the_machine_back() {
    let dir = tempfile::tempdir().expect("tempdir");
    let switcher = Arc::new(FakeSwitcher { current: Mutex::new(Some("/nix/store/abc-old".into())), fail_switch: true, ..Default::default() });
    let (reports, _reported) = tokio::sync::mpsc::unbounded_channel();
    let (_contact, contact_rx) = tokio::sync::watch::channel(None);
    let applier = super::Applier::with_switcher(config(dir.path()), switcher.clone(), reports, contact_rx);
    let done = applier.apply(assignment(), Access::default()).await;
    assert_eq!(done.step, DeployStep::RolledBack, "{done:?}");
    assert!(done.message.contains("health gate failed") && done.message.contains("app.service"), "{}", done.message);
    assert_eq!(done.system_path.as_deref(), Some("/nix/store/abc-old"));
    assert_eq!(*switcher.calls.lock().expect("lock"), vec!["prepare", "switch switch", "rollback /nix/store/abc-old"]);
}

/// Up to the switch, for a journal with `goal`.
fn switching(goal: SwitchGoal) -> Apply {
    let mut core = Apply::new(CONFIRM_MS);
    core.handle(Event::Begin { journal: Journal { goal, ..journal(JournalStep::Started) } });
    core.handle(Event::FilesWritten(Ok("files".into())));
    core.handle(Event::VolumesAttached(Ok("none".into())));
    let a = core.handle(Event::Prepared(Ok(())));
    assert!(a.contains(&Action::Switch));
    core
}

#[test]
fn a_system_installed_for_the_next_boot_succeeds_at_once_saying_a_reboot_is_required() {
    for inhibited in [false, true] {
        let mut core = switching(SwitchGoal::Boot);
        let a = core.handle(Event::Switched {
            result: Ok(Switched::Installed { tail: "installing the boot loader".into(), inhibited }),
            now: 1_000,
            current: Some("/nix/store/old".into()),
        });
        let done = finished(&a).expect("finished");
        assert_eq!(done.step, DeployStep::Succeeded);
        assert!(done.message.contains("reboot required to run /nix/store/new"), "{}", done.message);
        assert_eq!(done.message.contains("pre-switch checks refused"), inhibited, "{}", done.message);
        assert_eq!(done.system_path.as_deref(), Some("/nix/store/old"), "the running system did not change");
        assert!(!a.iter().any(|x| matches!(x, Action::RunGate { .. } | Action::AwaitContact { .. } | Action::RollBack { .. })));
    }
}

#[test]
fn a_dry_activation_reports_its_output_and_changes_nothing() {
    let mut core = switching(SwitchGoal::DryActivate);
    let a = core.handle(Event::Switched {
        result: Ok(Switched::Reported { tail: "would restart the following units: nginx.service".into() }),
        now: 1_000,
        current: Some("/nix/store/old".into()),
    });
    let done = finished(&a).expect("finished");
    assert_eq!(done.step, DeployStep::Succeeded);
    assert!(done.message.starts_with("dry-activate: nothing was changed"), "{}", done.message);
    assert!(done.output_tail.contains("would restart the following units: nginx.service"));
    assert_eq!(done.system_path.as_deref(), Some("/nix/store/old"));
}

#[test]
fn a_journal_that_cannot_be_saved_ends_the_apply_before_the_switch() {
    let mut core = Apply::new(60_000);
    core.handle(Event::Begin { journal: journal(JournalStep::Started) });
    let actions = core.handle(Event::JournalNotSaved("cannot write /s/apply.json: No space left on device".into()));
    let done = finished(&actions).expect("the apply ends");
    assert_eq!(done.step, DeployStep::Failed);
    assert!(done.message.contains("No space left") && done.message.contains("not changed"), "{}", done.message);
    assert!(!actions.iter().any(|a| matches!(a, Action::Switch | Action::WriteFiles)));

    // After the switch there is no going back on it: the apply goes on.
    let mut core = switched();
    assert!(core.handle(Event::JournalNotSaved("disk full".into())).is_empty());
    assert!(!core.done());
}

/// The state directory on a filesystem of its own, unmounted at the end.
#[cfg(feature = "system-tests")]
struct SmallFilesystem(std::path::PathBuf);

#[cfg(feature = "system-tests")]
impl SmallFilesystem {
    /// A 256 KiB tmpfs at `dir` (the tests run as root, as the agent does).
    fn mount(dir: &std::path::Path) -> Self {
        std::fs::create_dir_all(dir).expect("mkdir");
        let status = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=256k", "tmpfs"])
            .arg(dir)
            .status()
            .expect("run mount (util-linux; the tests run as root)");
        assert!(status.success(), "mounting a tmpfs needs root: run the tests as root");
        SmallFilesystem(dir.to_path_buf())
    }

    /// Fills it up to the last byte.
    fn fill(&self) {
        use std::io::Write;
        let mut f = std::fs::File::create(self.0.join("filler")).expect("filler");
        let block = vec![0u8; 4096];
        while f.write_all(&block).is_ok() {}
        let _ = f.write_all(&[0]);
    }
}

#[cfg(feature = "system-tests")]
impl Drop for SmallFilesystem {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
    }
}

/// Needs root (a tmpfs): with the `system-tests` feature.
#[cfg(feature = "system-tests")]
#[tokio::test]
async fn a_full_state_directory_fails_the_apply_cleanly_before_the_switch() {
    let dir = tempfile::tempdir().expect("tempdir");
    let state = SmallFilesystem::mount(&dir.path().join("state"));
    let mut config = config(dir.path());
    config.state_dir = state.0.clone();
    state.fill();
    let switcher = Arc::new(FakeSwitcher { current: Mutex::new(Some("/nix/store/abc-old".into())), ..Default::default() });
    let (reports, mut reported) = tokio::sync::mpsc::unbounded_channel();
    let (contact, contact_rx) = tokio::sync::watch::channel(None);
    let applier = Arc::new(super::Applier::with_switcher(config, switcher.clone(), reports, contact_rx));
    let done = applier.apply(assignment(), Access::default()).await;
    assert_eq!(done.step, DeployStep::Failed, "{done:?}");
    assert!(done.message.contains("No space left on device") && done.message.contains("apply.json"), "{}", done.message);
    assert!(switcher.calls.lock().expect("lock").is_empty(), "nothing was switched");
    assert!(!state.0.join("apply.json").exists(), "no journal, whole or half");
    let leftovers: Vec<_> = std::fs::read_dir(&state.0)
        .expect("ls")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().to_string())
        .filter(|n| n != "filler")
        .collect();
    assert!(leftovers.is_empty(), "no temporary file left behind: {leftovers:?}");

    // Space comes back: the same apply goes through.
    std::fs::remove_file(state.0.join("filler")).expect("free the space");
    while reported.try_recv().is_ok() {}
    let running = applier.clone();
    let again = tokio::spawn(async move { running.apply(assignment(), Access::default()).await });
    while let Some(r) = reported.recv().await {
        if r.step == DeployStep::HealthChecking {
            break;
        }
    }
    contact.send_replace(Some(tokio::time::Instant::now()));
    let done = again.await.expect("join");
    assert_eq!(done.step, DeployStep::Succeeded, "{done:?}");
    assert_eq!(applier.records.applied().map(|a| a.generation), Some(3));
}

#[test]
fn a_damaged_journal_is_moved_aside_and_named() {
    let dir = tempfile::tempdir().expect("tempdir");
    let records = super::records::Records::new(dir.path());
    records.save_journal(&journal(JournalStep::Switching)).expect("save");
    let path = dir.path().join("apply.json");
    let whole = std::fs::read(&path).expect("read");
    std::fs::write(&path, &whole[..whole.len() / 2]).expect("cut it short");
    assert!(records.journal().is_none(), "a damaged journal is not used");
    assert!(!path.exists());
    assert_eq!(std::fs::read(dir.path().join("apply.json.damaged")).expect("kept aside"), whole[..whole.len() / 2]);
}

/// An apply that reboots, with a fake system layer: `reboots_into` is what
/// the machine boots (`None`: it never reboots).
async fn apply_with_reboot(reboots_into: Option<&str>) -> (Applied, Vec<String>) {
    let dir = tempfile::tempdir().expect("tempdir");
    let switcher = Arc::new(FakeSwitcher {
        current: Mutex::new(Some("/nix/store/abc-old".into())),
        boot: Mutex::new(BootState { boot_id: Some("boot-1".into()), booted: Some("/nix/store/abc-old".into()) }),
        reboots_into: reboots_into.map(String::from),
        ..Default::default()
    });
    let (reports, _reported) = tokio::sync::mpsc::unbounded_channel();
    let (contact, contact_rx) = tokio::sync::watch::channel(None);
    let mut config = config(dir.path());
    config.reboot_deadline = std::time::Duration::from_millis(700);
    let applier = super::Applier::with_switcher(config, switcher.clone(), reports, contact_rx);
    let assignment = Assignment { reboot: true, checks: vec![], ..assignment() };
    // The coordinator keeps answering.
    let heard = tokio::spawn(async move {
        loop {
            contact.send_replace(Some(tokio::time::Instant::now()));
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    });
    let done = applier.apply(assignment, Access::default()).await;
    heard.abort();
    let calls = switcher.calls.lock().expect("lock").clone();
    (done, calls)
}

#[tokio::test]
async fn a_verified_reboot_succeeds_on_the_system_it_was_given() {
    let (done, calls) = apply_with_reboot(Some("/nix/store/abc-new")).await;
    assert_eq!(done.step, DeployStep::Succeeded, "{done:?}");
    assert!(done.message.contains("rebooted and verified: booted /nix/store/abc-new"), "{}", done.message);
    assert!(calls.contains(&"reboot".to_string()), "{calls:?}");
}

#[tokio::test]
async fn a_reboot_into_another_system_or_none_at_all_fails() {
    let (done, _) = apply_with_reboot(Some("/nix/store/abc-old")).await;
    assert_eq!(done.step, DeployStep::Failed);
    assert!(done.message.contains("came back on /nix/store/abc-old instead of /nix/store/abc-new"), "{}", done.message);
    let (done, _) = apply_with_reboot(None).await;
    assert_eq!(done.step, DeployStep::Failed);
    assert!(done.message.contains("did not reboot"), "{}", done.message);
}

#[test]
fn an_agent_restarted_by_the_reboot_verifies_the_new_boot() {
    let rebooting = Journal {
        step: JournalStep::Rebooting,
        reboot: true,
        boot_before: Some("boot-1".into()),
        expected_boot: Some("/nix/store/new".into()),
        ..journal(JournalStep::Rebooting)
    };
    let mut core = Apply::new(CONFIRM_MS);
    let a = core.handle(Event::Resume { journal: rebooting.clone(), current: Some("/nix/store/new".into()), now: 5 });
    assert_eq!(a.last(), Some(&Action::CheckBoot));
    let a = core.handle(Event::Booted(BootState { boot_id: Some("boot-2".into()), booted: Some("/nix/store/new".into()) }));
    assert_eq!(finished(&a).map(|d| d.step), Some(DeployStep::Succeeded));
    let mut core = Apply::new(CONFIRM_MS);
    core.handle(Event::Resume { journal: rebooting, current: Some("/nix/store/new".into()), now: 5 });
    let a = core.handle(Event::Booted(BootState { boot_id: Some("boot-2".into()), booted: Some("/nix/store/other".into()) }));
    let done = finished(&a).expect("finished");
    assert_eq!(done.step, DeployStep::Failed);
    assert!(done.message.contains("instead of /nix/store/new"), "{}", done.message);
}

/// The scheduler applies an assignment the coordinator pushed with its
/// announcement without fetching it, and sends a finished apply's last
/// reports and its outcome in one request when the request can carry
/// several (one by one to a protocol 6 coordinator); a generation only
/// named is fetched.
#[tokio::test]
async fn a_pushed_assignment_applies_without_a_fetch_and_its_outcome_goes_with_the_last_reports() {
    use crate::scheduler::{Answer, Outgoing, Scheduler};
    let dir = tempfile::tempdir().expect("tempdir");
    let switcher = Arc::new(FakeSwitcher { current: Mutex::new(Some("/nix/store/abc-old".into())), ..Default::default() });
    let mut scheduler = Scheduler::with_switcher(&config(dir.path()), switcher);
    scheduler.assigned(assignment(), Access::default());
    assert_eq!(scheduler.desired_generation(), 3);
    assert_eq!(scheduler.next_to_send(32), None, "the apply started; nothing to fetch");
    while scheduler.applied().map(|a| a.generation) != Some(3) {
        tokio::time::timeout(std::time::Duration::from_secs(10), scheduler.wait()).await.expect("the apply goes on");
        // The coordinator answers: the switch is confirmed.
        scheduler.heard_from_coordinator();
    }
    let one_by_one = scheduler.next_to_send(1);
    assert!(matches!(&one_by_one, Some(Outgoing::Progress(p)) if p.len() == 1 && p[0].step == DeployStep::Received), "{one_by_one:?}");
    let Some(Outgoing::Finished { progress, outcome }) = scheduler.next_to_send(32) else { panic!("the last reports and the outcome together") };
    let steps: Vec<DeployStep> = progress.iter().map(|r| r.step).collect();
    assert_eq!(steps.first(), Some(&DeployStep::Received), "{steps:?}");
    assert!(steps.contains(&DeployStep::Switched) && steps.contains(&DeployStep::HealthChecking), "{steps:?}");
    assert_eq!((outcome.generation, outcome.step), (3, DeployStep::Succeeded));
    scheduler.answered(Outgoing::Finished { progress, outcome }, Answer::Acknowledged);
    assert!(scheduler.applied().is_some_and(|a| a.reported), "the outcome counts as reported");
    assert_eq!(scheduler.next_to_send(32), None, "nothing left to send");

    scheduler.desired(4);
    assert_eq!(scheduler.next_to_send(32), Some(Outgoing::Fetch), "a generation only named is fetched");
}
