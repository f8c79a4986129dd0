//! What a switch did, shared by the apply core (which decides what follows)
//! and the system layer (which finds it out).

/// How a switch ended, when it did not fail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Switched {
    /// The system runs now (goals `switch` and `test`).
    Activated { tail: String },
    /// The system is the boot default and runs after a reboot (goal `boot`,
    /// or a `switch` that NixOS' pre-switch checks refused: `inhibited`).
    Installed { tail: String, inhibited: bool },
    /// `dry-activate`: what would change, nothing changed.
    Reported { tail: String },
    /// Activated, but these units failed to start (exit code 4): a health
    /// failure, not a failed switch.
    UnitsFailed { tail: String, units: Vec<String> },
}

/// Which boot the machine is in: the kernel's boot id and the system it
/// booted (`/run/booted-system`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct BootState {
    pub boot_id: Option<String>,
    pub booted: Option<String>,
}

/// The units `switch-to-configuration` names after "the following units
/// failed:" (one line, comma- or space-separated).
pub fn failed_units(output: &str) -> Vec<String> {
    let mut units: Vec<String> = Vec::new();
    for line in output.lines() {
        if let Some((_, list)) = line.split_once("the following units failed:") {
            for unit in list.split([',', ' ']).map(str::trim).filter(|u| !u.is_empty()) {
                if !units.iter().any(|u| u == unit) {
                    units.push(unit.to_string());
                }
            }
        }
    }
    units
}

/// Whether NixOS' pre-switch checks (the switch inhibitors) refused.
pub fn refused_by_pre_switch_checks(output: &str) -> bool {
    output.contains("Pre-switch checks failed")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failed_units_are_read_from_the_switch_output() {
        let out = "activating the configuration...\nwarning: the following units failed: foo.service, bar.socket\n× foo.service - Foo\n";
        assert_eq!(failed_units(out), ["foo.service", "bar.socket"]);
        assert!(failed_units("all good").is_empty());
        assert!(refused_by_pre_switch_checks("Pre-switch check 'switchInhibitors' failed\nPre-switch checks failed\n"));
    }
}
