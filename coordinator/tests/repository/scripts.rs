//! The project's shell scripts: no command is kept in a string and run as
//! `$CMD args` (word splitting breaks it as soon as a path holds a space:
//! the demo once ran `$GARAGE server` with GARAGE="garage -c $WORK/...").
//! Arrays ("${CMD[@]}") or functions do this right. shellcheck, run by
//! scripts/test.sh, checks the rest.

use std::path::{Path, PathBuf};

fn scripts() -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut out: Vec<PathBuf> = std::fs::read_dir(root.join("scripts"))
        .expect("scripts/")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "sh") || p.file_name().is_some_and(|n| n == "nixos-rebuild-standin"))
        .collect();
    out.push(root.join(".ci/run"));
    out.sort();
    out
}

/// Lines of `text` that run a command kept in a string variable.
fn commands_in_strings(text: &str) -> Vec<String> {
    // Variables assigned a string with a space in it: `NAME="a b"`.
    let mut names = Vec::new();
    for line in text.lines() {
        let line = line.trim_start().trim_start_matches("local ").trim_start_matches("export ");
        if let Some((name, value)) = line.split_once("=\"") {
            let simple = !name.is_empty() && name.chars().all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_');
            let value = value.split('"').next().unwrap_or("");
            if simple && value.contains(' ') && !value.starts_with("$(") {
                names.push(name.to_string());
            }
        }
    }
    let mut found = Vec::new();
    for line in text.lines() {
        let code = line.trim_start();
        if code.starts_with('#') {
            continue;
        }
        for name in &names {
            for form in [format!("${name} "), format!("${{{name}}} ")] {
                let at_start = code.starts_with(&form);
                let after = ["$(", "; ", "&& ", "|| ", "| ", "do ", "then "].iter().any(|p| code.contains(&format!("{p}{form}")));
                if at_start || after {
                    found.push(line.to_string());
                }
            }
        }
    }
    found
}

#[test]
fn no_script_runs_a_command_kept_in_a_string() {
    let mut found = Vec::new();
    for script in scripts() {
        let text = std::fs::read_to_string(&script).expect("script");
        found.extend(commands_in_strings(&text).into_iter().map(|l| format!("{}: {}", script.display(), l.trim())));
    }
    assert!(found.is_empty(), "commands kept in strings (use an array: CMD=(prog -c \"$FILE\"); \"${{CMD[@]}}\" args):\n{}", found.join("\n"));
    // The check sees the form the demo had.
    let old = "GARAGE=\"garage -c $WORK/garage/garage.toml\"\n$GARAGE server >log 2>&1 &\nNODE=\"$($GARAGE node id -q)\"\n";
    assert_eq!(commands_in_strings(old).len(), 2);
    assert!(commands_in_strings("GARAGE=(garage -c \"$WORK/g.toml\")\n\"${GARAGE[@]}\" server\n").is_empty());
}
