//! The shape of the code, checked: the modules of each crate form no
//! circle, every dependency points one way (command → server → app →
//! cores and store), the store decides nothing, and the pure cores touch
//! no I/O. Read from the sources, so a new `use` that breaks a rule fails
//! here with the offending file named.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Every `.rs` file under `dir`, tests excluded.
fn sources(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).expect("read src") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") && path.file_name().is_some_and(|n| n != "tests.rs") {
                out.push(path);
            }
        }
    }
    out.sort();
    out
}

/// The module path of a file: `src/app/s3/cluster.rs` → `[app, s3, cluster]`.
fn module_path(src: &Path, file: &Path) -> Vec<String> {
    let rel = file.strip_prefix(src).expect("under src");
    let mut parts: Vec<String> = rel.iter().map(|p| p.to_string_lossy().trim_end_matches(".rs").to_string()).collect();
    if parts.last().is_some_and(|p| p == "mod" || p == "lib" || p == "main") {
        parts.pop();
    }
    parts
}

/// The code of a file without comments and without its inline test module.
fn code(file: &Path) -> String {
    let text = std::fs::read_to_string(file).expect("read");
    let mut out = String::new();
    for line in text.lines() {
        let trimmed = line.trim_start();
        if trimmed.starts_with("mod tests {") {
            break;
        }
        if trimmed.starts_with("//") {
            continue;
        }
        out.push_str(line.split(" //").next().unwrap_or(""));
        out.push('\n');
    }
    out
}

fn ident_at(s: &str) -> String {
    s.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect()
}

/// The first path segments a `use` names after `crate::` or `super::`:
/// one, or each of a `{...}` group.
fn named(rest: &str) -> Vec<String> {
    match rest.strip_prefix('{') {
        Some(group) => {
            let end = group.find('}').unwrap_or(group.len());
            group[..end].split(',').map(|item| ident_at(item.trim())).collect()
        }
        None => vec![ident_at(rest)],
    }
}

/// The top-level modules of its crate that `file` refers to.
fn references(src: &Path, file: &Path, top: &BTreeSet<String>) -> BTreeSet<String> {
    let path = module_path(src, file);
    let code = code(file);
    let mut out = BTreeSet::new();
    let mut add = |name: String| {
        if top.contains(&name) {
            out.insert(name);
        }
    };
    for (i, _) in code.match_indices("crate::") {
        named(&code[i + "crate::".len()..]).into_iter().for_each(&mut add);
    }
    for (i, _) in code.match_indices("super::") {
        // Count the run of `super::` this one starts (skip inner ones).
        if code[..i].ends_with("super::") {
            continue;
        }
        let mut rest = &code[i..];
        let mut up = 0;
        while let Some(r) = rest.strip_prefix("super::") {
            up += 1;
            rest = r;
        }
        if path.len() > up {
            continue; // still inside the same top-level module
        }
        named(rest).into_iter().for_each(&mut add);
    }
    out
}

struct Crate {
    /// module → the modules it refers to
    graph: BTreeMap<String, BTreeSet<String>>,
    /// module → its files' code
    files: BTreeMap<String, Vec<(PathBuf, String)>>,
}

fn read_crate(name: &str) -> Crate {
    let src = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..").join(name).join("src");
    let files = sources(&src);
    let top: BTreeSet<String> = files.iter().filter_map(|f| module_path(&src, f).first().cloned()).collect();
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut by_module: BTreeMap<String, Vec<(PathBuf, String)>> = BTreeMap::new();
    for f in &files {
        let Some(module) = module_path(&src, f).first().cloned() else { continue };
        let mut refs = references(&src, f, &top);
        refs.remove(&module);
        graph.entry(module.clone()).or_default().extend(refs);
        by_module.entry(module).or_default().push((f.clone(), code(f)));
    }
    Crate { graph, files: by_module }
}

/// A circle in the graph, if there is one.
fn circle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(node: &str, graph: &BTreeMap<String, BTreeSet<String>>, stack: &mut Vec<String>, done: &mut BTreeSet<String>) -> Option<Vec<String>> {
        if let Some(pos) = stack.iter().position(|n| n == node) {
            let mut c = stack[pos..].to_vec();
            c.push(node.to_string());
            return Some(c);
        }
        if done.contains(node) {
            return None;
        }
        stack.push(node.to_string());
        for next in graph.get(node).into_iter().flatten() {
            if let Some(c) = visit(next, graph, stack, done) {
                return Some(c);
            }
        }
        stack.pop();
        done.insert(node.to_string());
        None
    }
    let mut done = BTreeSet::new();
    for node in graph.keys() {
        if let Some(c) = visit(node, graph, &mut Vec::new(), &mut done) {
            return Some(c);
        }
    }
    None
}

#[test]
fn no_crate_has_an_import_circle() {
    for name in ["protocol", "net", "store", "coordinator", "agent"] {
        let krate = read_crate(name);
        assert!(circle(&krate.graph).is_none(), "{name}: modules import each other in a circle: {:?}", circle(&krate.graph));
    }
}

#[test]
fn coordinator_dependencies_point_one_way() {
    let krate = read_crate("coordinator");
    let g = &krate.graph;
    for (module, refs) in g {
        if refs.contains("server") {
            assert_eq!(module, "command", "only the `serve` command may import the server; {module} does");
        }
    }
    assert!(g["server"].contains("app"), "the server hands requests to the application layer");
    for core in ["tokens", "registry", "authz", "deploy", "tenancy", "rollout", "model", "store", "s3", "volumes", "pki"] {
        for upper in ["app", "server", "command", "cli", "client"] {
            assert!(!g[core].contains(upper), "{core} must not import {upper} (it sits below it)");
        }
    }
    for core in ["tokens", "registry", "authz", "deploy", "tenancy", "rollout", "volume_rules", "fleet"] {
        assert!(!g[core].contains("store"), "the core {core} must not touch the store");
    }
    let decided = ["tokens", "registry", "authz", "deploy", "tenancy", "rollout", "app"];
    for c in decided {
        assert!(!g["store"].contains(c), "the store decides nothing: it must not import {c}");
    }
}

#[test]
fn only_the_store_imports_sled_and_cores_do_no_io() {
    let krate = read_crate("coordinator");
    for (module, files) in &krate.files {
        for (file, code) in files {
            if module != "store" {
                assert!(!code.contains("sled::"), "{} uses sled; only the store may", file.display());
            }
        }
    }
    for core in ["tokens", "registry", "authz", "deploy", "tenancy", "rollout", "volume_rules", "fleet"] {
        for (file, code) in &krate.files[core] {
            for io in ["tokio::", "sled::", "quinn::", "reqwest::", "std::fs", "std::net::UdpSocket", "SystemTime::now", "Instant::now"] {
                assert!(!code.contains(io), "{} is a core and must do no I/O, yet uses {io}", file.display());
            }
        }
    }
    let agent = read_crate("agent");
    for (file, code) in &agent.files["apply"] {
        if file.ends_with("core.rs") {
            for io in ["tokio::", "std::fs", "std::process", "Instant::now", "SystemTime", "crate::system"] {
                assert!(!code.contains(io), "the apply core must do no I/O, yet {} uses {io}", file.display());
            }
        }
    }
    for (module, files) in &agent.files {
        if module == "system" {
            continue;
        }
        for (file, code) in files {
            for process in ["std::process::Command", "tokio::process"] {
                assert!(!code.contains(process), "only the system layer runs processes; {} does", file.display());
            }
            // Firmware, DMI data and devices are the machine's: the system
            // layer reads them.
            for machine in ["\"/sys/", "\"/dev/"] {
                assert!(!code.contains(machine), "only the system layer reads the machine's firmware and devices; {} names {machine}", file.display());
            }
        }
    }
}

#[test]
fn no_request_path_has_an_unreachable_arm() {
    let krate = read_crate("coordinator");
    for files in krate.files.values() {
        for (file, code) in files {
            assert!(!code.contains("unreachable!"), "{} has an unreachable! arm", file.display());
        }
    }
}

/// `a::b::c` paths a `use` or an expression names after `prefix` (`crate::`
/// or a run of `super::`), each of a `{...}` group (one level) included.
fn paths_after(rest: &str) -> Vec<Vec<String>> {
    fn path_at(s: &str) -> (Vec<String>, &str) {
        let mut parts = Vec::new();
        let mut rest = s;
        loop {
            let id = ident_at(rest);
            if id.is_empty() {
                break;
            }
            rest = &rest[id.len()..];
            parts.push(id);
            match rest.strip_prefix("::") {
                Some(r) if !r.starts_with('{') => rest = r,
                Some(r) => {
                    rest = r;
                    break;
                }
                None => break,
            }
        }
        (parts, rest)
    }
    let (head, rest) = path_at(rest);
    match rest.strip_prefix('{') {
        Some(group) => {
            let end = group.find('}').unwrap_or(group.len());
            group[..end]
                .split(',')
                .map(|item| {
                    let mut p = head.clone();
                    p.extend(path_at(item.trim()).0);
                    p
                })
                .collect()
        }
        None if rest.starts_with('{') => vec![head],
        None => vec![head],
    }
}

/// The file-level graph of a crate: each file's module path → the module
/// paths (files) it names, its own ancestors left out (a parent module holds
/// what its children share, and dispatches to them).
fn file_graph(name: &str) -> BTreeMap<String, BTreeSet<String>> {
    let src = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..").join(name).join("src");
    let files = sources(&src);
    let modules: BTreeSet<Vec<String>> = files.iter().map(|f| module_path(&src, f)).collect();
    let resolve = |path: Vec<String>| -> Option<Vec<String>> { (1..=path.len()).rev().map(|n| path[..n].to_vec()).find(|p| modules.contains(p)) };
    let mut graph = BTreeMap::new();
    for f in &files {
        let me = module_path(&src, f);
        let code = code(f);
        let mut refs = BTreeSet::new();
        for (i, _) in code.match_indices("crate::") {
            for p in paths_after(&code[i + "crate::".len()..]) {
                refs.extend(resolve(p));
            }
        }
        for (i, _) in code.match_indices("super::") {
            if code[..i].ends_with("super::") {
                continue;
            }
            let mut rest = &code[i..];
            let mut up = 0;
            while let Some(r) = rest.strip_prefix("super::") {
                up += 1;
                rest = r;
            }
            let Some(base) = me.len().checked_sub(up) else { continue };
            for p in paths_after(rest) {
                let mut full = me[..base].to_vec();
                full.extend(p);
                refs.extend(resolve(full));
            }
        }
        // A module naming its own children (`pub use attach::…`, `attach::f()`).
        for child in modules.iter().filter(|m| m.len() == me.len() + 1 && m.starts_with(&me)) {
            let name = format!("{}::", child[me.len()]);
            for (i, _) in code.match_indices(&name) {
                let before = code[..i].chars().next_back();
                if before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':') {
                    continue;
                }
                for p in paths_after(&code[i..]) {
                    let mut full = me.clone();
                    full.extend(p);
                    refs.extend(resolve(full));
                }
            }
        }
        let refs: BTreeSet<String> = refs.into_iter().filter(|r| !me.starts_with(r)).map(|r| r.join("::")).collect();
        graph.insert(me.join("::"), refs);
    }
    graph
}

#[test]
fn no_file_is_in_an_import_circle() {
    for name in ["protocol", "net", "store", "coordinator", "agent"] {
        let graph = file_graph(name);
        assert!(circle(&graph).is_none(), "{name}: files import each other in a circle: {}", circle(&graph).unwrap_or_default().join(" → "));
    }
    // The check sees a circle between siblings.
    let mut g: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    g.insert("app::a".into(), ["app::b".to_string()].into());
    g.insert("app::b".into(), ["app::a".to_string()].into());
    assert!(circle(&g).is_some());
    assert!(file_graph("coordinator")["app::admin"].contains("app::deployments"), "the graph follows `use super::{{...}}`");
}

#[test]
fn only_the_wiring_makes_real_clients_of_external_systems() {
    let krate = read_crate("coordinator");
    let makers = [("Garage::new", "s3"), ("Linstor::new", "volumes"), ("Proxmox::new", "hypervisor"), ("Qemu::new", "hypervisor"), ("NixCli", "nix")];
    for (module, files) in &krate.files {
        for (file, code) in files {
            for (maker, home) in makers {
                if module != "wiring" && module != home {
                    assert!(!code.contains(maker), "{} makes a real client ({maker}); only `wiring` does, and passes it in", file.display());
                }
            }
        }
    }
    for (file, code) in &krate.files["app"] {
        for client in ["s3::garage", "volumes::linstor", "hypervisor::proxmox", "hypervisor::qemu"] {
            assert!(!code.contains(client), "{} names a real client ({client}); the application layer sees traits only", file.display());
        }
    }
}

/// Every `.rs` file under `dir`, tests included.
fn all_rust(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else { continue };
        for entry in entries {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }
    out.sort();
    out
}

/// Admin answers are taken out through their typed accessors
/// (`drover_protocol::answer`): no caller in the workspace destructures
/// `AdminResponse` (or the S3 and volume answers in it) with `let … else`
/// or a match arm, where a catch-all would stand in for the request's own
/// answer type.
#[test]
fn no_caller_matches_an_admin_answer() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut offenders = Vec::new();
    for dir in ["coordinator/src", "coordinator/tests", "agent/src", "agent/tests", "bench/src", "testing"] {
        for file in all_rust(&root.join(dir)) {
            let text = std::fs::read_to_string(&file).expect("read");
            for (n, line) in text.lines().enumerate() {
                let trimmed = line.trim_start();
                for path in ["AdminResponse::", "S3Response::", "VolumeResponse::"] {
                    let Some(at) = line.find(path) else { continue };
                    let let_else = trimmed.starts_with("let ") && line[..at].trim_end().ends_with(['(', ' ']) && !line[..at].contains(" = ");
                    let head = trimmed.trim_start_matches("Ok(").trim_start_matches("Some(").trim_start_matches("Response::Admin(");
                    let arm = head.starts_with(path) && line[at..].contains("=>");
                    if let_else || arm {
                        offenders.push(format!("{}:{}: {}", file.strip_prefix(&root).unwrap_or(&file).display(), n + 1, trimmed));
                    }
                }
            }
        }
    }
    assert!(offenders.is_empty(), "take admin answers out with their accessors (answer.machines()?), not by matching:\n{}", offenders.join("\n"));
}

/// Cargo holds the layers apart: the store's seam and the wire types
/// depend on no crate above them, and the agent never on the coordinator.
#[test]
fn crates_depend_only_downwards() {
    let below: [(&str, &[&str]); 4] = [("store", &[]), ("protocol", &[]), ("net", &["drover-protocol"]), ("agent", &["drover-protocol", "drover-net"])];
    for (name, allowed) in below {
        let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..").join(name).join("Cargo.toml");
        let manifest: toml::Table = std::fs::read_to_string(&path).expect("manifest").parse().expect("toml");
        let deps = manifest.get("dependencies").and_then(|d| d.as_table()).cloned().unwrap_or_default();
        for dep in deps.keys().filter(|d| d.starts_with("drover-")) {
            assert!(allowed.contains(&dep.as_str()), "{name} depends on {dep}; it may depend only on {allowed:?}");
        }
    }
    let coordinator: toml::Table =
        std::fs::read_to_string(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml")).expect("manifest").parse().expect("toml");
    assert!(coordinator["dependencies"].get("drover-store").is_some(), "the coordinator's store sits on drover-store");
}
