//! The configuration examples in the manual (README.md and docs/) are
//! real: every TOML block is
//! read as the program that takes it reads it (the coordinator's sections
//! on top of a generated `drover.toml`, the agent's file as is), once as
//! written and once with its commented-out optional keys switched on.

use std::path::Path;

use drover_agent::AgentConfig;
use drover_coordinator::config::Config;

fn toml_blocks(text: &str) -> Vec<String> {
    let mut blocks = Vec::new();
    let mut current: Option<String> = None;
    for line in text.lines() {
        match (&mut current, line.trim_start()) {
            (None, l) if l.starts_with("```toml") => current = Some(String::new()),
            (Some(block), l) if l.starts_with("```") => {
                blocks.push(std::mem::take(block));
                current = None;
            }
            (Some(block), _) => {
                block.push_str(line);
                block.push('\n');
            }
            _ => {}
        }
    }
    blocks
}

/// `# key = value  # why` becomes `key = value  # why`.
fn with_optional_keys(block: &str) -> String {
    block
        .lines()
        .map(|l| match l.strip_prefix("# ") {
            Some(rest) if rest.split_once(" = ").is_some_and(|(k, _)| !k.is_empty() && k.chars().all(|c| c.is_ascii_lowercase() || c == '_')) => {
                rest.to_string()
            }
            _ => l.to_string(),
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn check(dir: &Path, block: &str) -> Result<String, String> {
    let file = dir.join("example.toml");
    // A coordinator's sections, or top-level keys under `# drover.toml`.
    if block.trim_start().starts_with('[') || block.trim_start().starts_with("# drover.toml") {
        let base = Config::new(dir.join("state"), "127.0.0.1:7443".parse().expect("addr"), vec!["127.0.0.1".into()]);
        std::fs::write(&file, format!("{}\n{block}", base.to_toml())).expect("write");
        Config::load_checked(&file, false).map(|_| "coordinator".into()).map_err(|e| format!("{e:#}"))
    } else {
        std::fs::write(&file, block).expect("write");
        AgentConfig::load(&file).map(|_| "agent".into()).map_err(|e| e.to_string())
    }
}

#[test]
fn every_configuration_example_in_the_readme_is_read_by_its_program() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut pages = vec![root.join("README.md")];
    let mut docs: Vec<_> =
        std::fs::read_dir(root.join("docs")).expect("docs/").map(|e| e.expect("entry").path()).filter(|p| p.extension().is_some_and(|e| e == "md")).collect();
    docs.sort();
    pages.extend(docs);
    let blocks: Vec<String> = pages.iter().flat_map(|p| toml_blocks(&std::fs::read_to_string(p).expect("page"))).collect();
    let dir = tempfile::tempdir().expect("tempdir");
    let mut checked = Vec::new();
    for block in &blocks {
        for variant in [block.clone(), with_optional_keys(block)] {
            match check(dir.path(), &variant) {
                Ok(kind) => checked.push(kind),
                Err(e) => panic!("an example in the manual does not load: {e}\n---\n{variant}"),
            }
        }
    }
    for kind in ["coordinator", "agent"] {
        assert!(checked.iter().any(|k| k == kind), "the manual has a {kind} example: {checked:?}");
    }
    assert!(blocks.iter().any(|b| b.contains("[linstor]")) && blocks.iter().any(|b| b.contains("[s3]")), "S3 and LINSTOR sections are shown");
}

#[test]
fn a_wrong_key_in_an_example_would_be_caught() {
    let dir = tempfile::tempdir().expect("tempdir");
    assert!(check(dir.path(), "[linstor]\ncontroler = \"http://x:3370\"\n").is_err());
    assert!(check(dir.path(), "coordinator = \"127.0.0.1:1\"\nca_file = \"/x\"\nstate_dri = \"/y\"\n").is_err());
}
