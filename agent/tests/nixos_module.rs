//! The NixOS module `services.drover-agent` and the agent's configuration
//! struct speak of the same keys: one source of truth. A key added on one
//! side only fails this test.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use drover_agent::AgentConfig;

fn module() -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../nixos-module/agent.nix");
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// `caFile` → `ca_file`.
fn snake(name: &str) -> String {
    let mut out = String::new();
    for c in name.chars() {
        if c.is_ascii_uppercase() {
            out.push('_');
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

/// Option names declared at `indent` spaces inside the block that starts
/// with the line `start` and ends at the first line `end`.
fn options_in(text: &str, start: &str, end: &str, indent: usize) -> BTreeSet<String> {
    let prefix = " ".repeat(indent);
    text.lines()
        .skip_while(|l| l.trim_end() != start)
        .skip(1)
        .take_while(|l| l.trim_end() != end)
        .filter_map(|l| {
            let rest = l.strip_prefix(&prefix)?;
            if rest.starts_with(' ') {
                return None;
            }
            let (name, value) = rest.split_once(" = ")?;
            (value.starts_with("mkOption") || value.starts_with("mkEnableOption")).then(|| name.to_string())
        })
        .collect()
}

fn module_keys(text: &str) -> BTreeSet<String> {
    let top = options_in(text, "  options.services.drover-agent = {", "  };", 4);
    assert!(top.contains("coordinator") && top.contains("settings"), "found {top:?}");
    let settings = options_in(text, "  settingsOptions = {", "  };", 4);
    assert!(!settings.is_empty(), "no settings options found");
    top.iter()
        // Options of the module itself, not keys of the agent's file.
        .filter(|n| !["enable", "package", "settings", "sshAccess", "fromSeed"].contains(&n.as_str()))
        .map(|n| snake(n))
        .chain(settings)
        .collect()
}

fn struct_keys() -> BTreeSet<String> {
    let config = AgentConfig::new("127.0.0.1:1".parse::<drover_net::HostPort>().expect("addr"), PathBuf::from("/ca.pem"), PathBuf::from("/s"));
    let value = serde_json::to_value(&config).expect("serialises");
    value.as_object().expect("object").keys().cloned().collect()
}

#[test]
fn the_module_options_are_the_config_fields() {
    let module = module_keys(&module());
    let fields = struct_keys();
    let only_module: Vec<_> = module.difference(&fields).collect();
    let only_struct: Vec<_> = fields.difference(&module).collect();
    assert!(
        only_module.is_empty() && only_struct.is_empty(),
        "nixos-module/agent.nix and AgentConfig disagree: only in the module {only_module:?}, only in the struct {only_struct:?}"
    );
}

#[test]
fn the_check_notices_a_key_on_one_side_only() {
    let text = module();
    let extra = text.replacen("  settingsOptions = {\n", "  settingsOptions = {\n    colour = mkOption { type = types.str; };\n", 1);
    assert!(module_keys(&extra).contains("colour"));
    assert_ne!(module_keys(&extra), struct_keys());
    let fewer = text.replacen("    confirm_deadline = mkOption {", "    confirm_deadline_gone = mkOption {", 1);
    assert_ne!(module_keys(&fewer), struct_keys());
}
