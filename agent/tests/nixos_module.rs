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

/// Every line of the profiles' shell that reads a fact or a secret inside
/// another command's arguments: there `set -e` does not stop the script, and
/// a missing value would be written as an empty setting.
fn unchecked_reads(text: &str) -> Vec<String> {
    text.lines()
        .filter(|l| {
            let l = l.trim_start();
            let reads = l.contains("$(fact ") || l.contains("$(secret ");
            // `name=$(fact KEY)` alone on its line is an assignment, which `set -e` stops at.
            let assignment = l.split_once("=$(").is_some_and(|(name, _)| !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'));
            reads && !assignment
        })
        .map(str::to_string)
        .collect()
}

#[test]
fn profiles_read_facts_and_secrets_only_in_assignments() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../nixos-module/services");
    let mut found = Vec::new();
    for entry in std::fs::read_dir(&dir).expect("services") {
        let path = entry.expect("entry").path();
        let text = std::fs::read_to_string(&path).expect("read");
        found.extend(unchecked_reads(&text).into_iter().filter(|l| !l.trim_start().starts_with('#')).map(|l| format!("{}: {l}", path.display())));
    }
    assert!(found.is_empty(), "read a fact or secret into a variable first (v=$(fact KEY)):\n{}", found.join("\n"));
    // The check sees the old form.
    assert_eq!(unchecked_reads(r#"env_line S3_BUCKET "$(fact s3_bucket.x)""#).len(), 1);
    assert_eq!(unchecked_reads(r#"--arg endpoint "$(fact s3_endpoint)" \"#).len(), 1);
    assert!(unchecked_reads(r#"bucket=$(fact s3_bucket.x)"#).is_empty());
}

#[test]
fn every_module_option_is_in_the_generated_options_page() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let page = std::fs::read_to_string(root.join("docs/nixos-options.md")).expect("docs/nixos-options.md");
    let documented: BTreeSet<String> = page
        .lines()
        .filter_map(|l| l.strip_prefix("### `"))
        .filter_map(|l| l.strip_suffix('`'))
        .filter_map(|name| name.rsplit('.').next().map(str::to_string))
        .collect();
    let mut missing = Vec::new();
    let mut files = vec![root.join("nixos-module/agent.nix"), root.join("nixos-module/coordinator.nix"), root.join("nixos-module/garage-node.nix")];
    files.extend(std::fs::read_dir(root.join("nixos-module/services")).expect("services").map(|e| e.expect("entry").path()));
    for file in files {
        let text = std::fs::read_to_string(&file).expect("module");
        for line in text.lines() {
            let Some((name, rest)) = line.trim_start().split_once(" = ") else { continue };
            let declares = ["mkOption", "lib.mkOption", "mkEnableOption", "lib.mkEnableOption"].iter().any(|f| rest.starts_with(f));
            // common.nix's helper, given to the profiles as `createAdmin`.
            if declares && name != "createAdminOption" && !documented.contains(name) {
                missing.push(format!("{}: {name}", file.display()));
            }
        }
    }
    assert!(missing.is_empty(), "options missing from docs/nixos-options.md (run scripts/eval-modules.sh PATH/TO/nixpkgs.lib):\n{}", missing.join("\n"));
    assert!(documented.contains("fromSeed") && documented.contains("dataVolumes") && documented.contains("rootDomain"));
}
