//! Flake-mode machines for tests: each has its own `nixos-rebuild`
//! stand-in state (profiles, current-system link, activation log) and runtime
//! directory.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use drover_agent::system::health::SystemHealth;
use drover_agent::AgentHandle;
use drover_protocol::v1::SystemSpec;

use super::TestCoordinator;

/// A machine's world: the stand-in's state and the agent's runtime dir.
pub struct Vm {
    pub name: String,
    pub root: PathBuf,
}

impl Vm {
    pub fn activations(&self) -> Vec<String> {
        std::fs::read_to_string(self.root.join("activations")).unwrap_or_default().lines().map(str::to_string).collect()
    }
    pub fn runtime(&self) -> PathBuf {
        self.root.join("run")
    }
}

/// The "flake": systems that record their activation.
pub fn flake(dir: &Path) -> PathBuf {
    let flake = dir.join("flake");
    for (name, body) in [
        ("good", "exit 0"),
        ("good2", "exit 0"),
        ("broken", "echo 'error: activation script failed' >&2; exit 1"),
        ("slow", "sleep 30"),
        ("unitsfail", "exit 4"),
        ("cutoff", "sleep 1"),
        // A one-way step: writes a marker into the directory named in
        // $root/volume-mount (a volume's mount point), like a migration.
        ("migrate", "m=$(cat \"$(dirname \"$STANDIN_CURRENT\")/volume-mount\" 2>/dev/null) && echo migrated > \"$m/migrated\" && echo \"marker written in $m\"; exit 0"),
        // Fails on the machines listed in $root/../fail-on (one name a line).
        ("flaky", "if grep -qx \"$(basename \"$(dirname \"$STANDIN_CURRENT\")\")\" \"$(dirname \"$(dirname \"$STANDIN_CURRENT\")\")/fail-on\" 2>/dev/null; then echo 'flaky: failing here' >&2; exit 1; fi"),
    ] {
        let bin = flake.join(name).join("bin");
        std::fs::create_dir_all(&bin).expect("mkdir");
        let script = format!(
            "#!/bin/sh\n# records which system is activated, in the machine's own root\nself=$(cd \"$(dirname \"$0\")/..\" && pwd)\nln -sfn \"$self\" \"$STANDIN_CURRENT\"\necho \"{name}\" >> \"$(dirname \"$STANDIN_CURRENT\")/activations\"\necho \"activating {name}\"\n{body}\n"
        );
        let path = bin.join("switch-to-configuration");
        std::fs::write(&path, script).expect("write");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    }
    flake
}

pub fn spawn_vm(fleet: &TestCoordinator, name: &str, token: Option<&Path>) -> (Vm, AgentHandle) {
    spawn_vm_with(fleet, name, token, |_| {})
}

/// As [`spawn_vm`], with a last say on the agent's configuration.
pub fn spawn_vm_with(fleet: &TestCoordinator, name: &str, token: Option<&Path>, adjust: impl FnOnce(&mut drover_agent::AgentConfig)) -> (Vm, AgentHandle) {
    let root = fleet.dir.path().join("vms").join(name);
    std::fs::create_dir_all(&root).expect("mkdir");
    let wrapper = root.join("nixos-rebuild");
    let standin = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/nixos-rebuild");
    std::fs::write(&wrapper, format!("#!/bin/sh\nSTANDIN_ROOT='{}' exec '{}' \"$@\"\n", root.display(), standin.display())).expect("wrapper");
    std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    // `systemctl is-active UNIT`: every unit is active, except on the
    // machines listed in vms/fail-on, where it is failed.
    let systemctl = root.join("systemctl");
    std::fs::write(
        &systemctl,
        format!(
            "#!/bin/sh\n[ \"$1\" = is-active ] || exit 2\nif grep -qx '{name}' '{}' 2>/dev/null; then echo failed; exit 3; fi\necho active\n",
            root.parent().expect("vms dir").join("fail-on").display()
        ),
    )
    .expect("systemctl stand-in");
    std::fs::set_permissions(&systemctl, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let mut config = fleet.agent_config(name, token);
    config.systemctl = systemctl;
    config.nixos_rebuild = wrapper;
    config.current_system = root.join("current-system");
    config.runtime_dir = root.join("run");
    config.switch_timeout = Duration::from_secs(60);
    // Long enough for a coordinator restart under load.
    config.confirm_deadline = Duration::from_secs(30);
    adjust(&mut config);
    let health = SystemHealth::for_agent(&config);
    let handle = drover_agent::spawn(config, health, None).expect("agent");
    (Vm { name: name.into(), root }, handle)
}

pub fn flake_spec(flake: &Path, attr: &str) -> SystemSpec {
    SystemSpec::Flake { uri: format!("path:{}", flake.display()), attribute: attr.into() }
}
