//! The flake's packages are built from `nix/cargo-sources.nix` alone: the
//! files listed there are copied into an empty directory, and Cargo must
//! read the workspace and compile both binaries from them, offline (`cargo
//! check`: a file the list leaves out fails there as it would in a build,
//! without linking a second copy of the binaries). A member or a
//! dev-dependency left out of the list fails here, not in a user's `nix
//! build`. The same list is the flake's `src` (flake.nix imports it).
//!
//! Also here: every locked crate builds with the workspace's
//! `rust-version`, and the README says that version.

use std::path::{Path, PathBuf};
use std::process::Command;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").canonicalize().expect("repository root")
}

/// The paths `nix/cargo-sources.nix` lists, as Nix reads them.
fn cargo_sources() -> Vec<String> {
    let out = Command::new("nix-instantiate")
        .args(["--eval", "--strict", "--json"])
        .arg(repo().join("nix/cargo-sources.nix"))
        .output()
        .expect("nix-instantiate (install Debian's nix-bin)");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("a list of paths")
}

fn copy(from: &Path, to: &Path) {
    if from.is_dir() {
        std::fs::create_dir_all(to).expect("mkdir");
        for entry in std::fs::read_dir(from).expect("read_dir") {
            let entry = entry.expect("entry");
            if entry.file_name() == "target" {
                continue;
            }
            copy(&entry.path(), &to.join(entry.file_name()));
        }
    } else {
        std::fs::copy(from, to).unwrap_or_else(|e| panic!("{}: {e}", from.display()));
    }
}

#[test]
fn both_binaries_compile_from_exactly_the_flakes_source() {
    let _heavy = crate::common::heavy_blocking();
    let sources = cargo_sources();
    assert!(sources.contains(&"Cargo.lock".to_string()));
    let dir = tempfile::tempdir().expect("tempdir");
    for path in &sources {
        let target = dir.path().join(path);
        std::fs::create_dir_all(target.parent().expect("parent")).expect("mkdir");
        copy(&repo().join(path), &target);
    }
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let metadata = Command::new(&cargo)
        .args(["metadata", "--offline", "--locked", "--no-deps", "--format-version", "1"])
        .current_dir(dir.path())
        .output()
        .expect("cargo metadata");
    assert!(metadata.status.success(), "cargo reads the workspace from the flake's source: {}", String::from_utf8_lossy(&metadata.stderr));
    // In the workspace's own target directory: the registry's crates
    // checked for clippy are used again, the workspace's are checked from
    // the copy.
    let build = Command::new(&cargo)
        .args(["check", "--offline", "--locked", "--bin", "drover", "--bin", "drover-agent"])
        .current_dir(dir.path())
        .env("CARGO_TARGET_DIR", repo().join("target"))
        .output()
        .expect("cargo build");
    assert!(build.status.success(), "both binaries compile from the flake's source: {}", String::from_utf8_lossy(&build.stderr));
}

/// `major.minor[.patch]` as three numbers, for comparing (1.88 is 1.88.0).
fn version(text: &str) -> [u64; 3] {
    let mut v = [0; 3];
    for (slot, part) in v.iter_mut().zip(text.split('.')) {
        *slot = part.parse().unwrap_or(0);
    }
    v
}

#[test]
fn every_locked_crate_builds_with_the_workspaces_rust_version_and_the_readme_says_it() {
    let manifest: toml::Table = std::fs::read_to_string(repo().join("Cargo.toml")).expect("Cargo.toml").parse().expect("toml");
    let minimum = manifest["workspace"]["package"]["rust-version"].as_str().expect("rust-version").to_string();
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(&cargo).args(["metadata", "--offline", "--locked", "--format-version", "1"]).current_dir(repo()).output().expect("cargo metadata");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let metadata: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let newer: Vec<String> = metadata["packages"]
        .as_array()
        .expect("packages")
        .iter()
        .filter_map(|p| {
            let needs = p["rust_version"].as_str()?;
            (version(needs) > version(&minimum))
                .then(|| format!("{} {} needs Rust {needs}", p["name"].as_str().unwrap_or("?"), p["version"].as_str().unwrap_or("?")))
        })
        .collect();
    assert!(newer.is_empty(), "Cargo.lock holds crates newer than rust-version {minimum}:\n{}", newer.join("\n"));
    let readme = std::fs::read_to_string(repo().join("README.md")).expect("README");
    assert!(readme.contains(&format!("Rust {minimum} or newer")), "the README names the minimum, Rust {minimum}");
}
