//! The fleet file, without I/O: what the whole fleet should be — tenants,
//! machines (provisioned or adopted), buckets, volumes and services — read
//! from TOML (or the same structure as JSON, e.g. `nix eval --json
//! .#droverFleet`), checked (every reference defined, no cycle in `after`,
//! a machine in at most one service), and resolved against what the
//! coordinator knows (`${machines.NAME.address}`, `${buckets.NAME.name}`).
//! [`plan`] compares it with the fleet as observed and says what to
//! create, update and delete, in dependency order.

pub mod plan;

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

/// A fleet as its file describes it.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FleetFile {
    /// Operators, by domain.
    #[serde(default)]
    pub tenants: BTreeMap<String, TenantDecl>,
    #[serde(default)]
    pub machines: BTreeMap<String, MachineDecl>,
    #[serde(default)]
    pub buckets: BTreeMap<String, BucketDecl>,
    #[serde(default)]
    pub volumes: BTreeMap<String, VolumeDecl>,
    #[serde(default)]
    pub services: BTreeMap<String, ServiceDecl>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantDecl {
    pub admin_email: String,
    #[serde(default = "default_admin_user")]
    pub admin_user: String,
}

fn default_admin_user() -> String {
    "admin".into()
}

/// A machine: provisioned on a provider (its name is the provision's), or
/// an existing machine adopted by its hostname.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MachineDecl {
    #[serde(default)]
    pub provider: Option<String>,
    #[serde(default)]
    pub template: Option<String>,
    #[serde(default)]
    pub cores: Option<u32>,
    /// e.g. "2GiB".
    #[serde(default)]
    pub memory: Option<String>,
    #[serde(default)]
    pub disk: Option<String>,
    /// The hostname of an enrolled machine to take under the file.
    #[serde(default)]
    pub adopt: Option<String>,
    /// Its tenant's domain (the label `tenant`).
    #[serde(default)]
    pub tenant: Option<String>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BucketDecl {
    #[serde(default)]
    pub public: bool,
    /// Largest size, e.g. "10GiB".
    #[serde(default)]
    pub quota: Option<String>,
    /// Machines that get credentials for it (every machine of their
    /// services).
    #[serde(default)]
    pub machines: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VolumeDecl {
    /// e.g. "10GiB".
    pub size: String,
    /// Diskful replicas (LINSTOR), for an adopted machine's volume.
    #[serde(default)]
    pub replicas: Option<u8>,
    pub machine: String,
    pub mount: String,
    #[serde(default = "default_filesystem")]
    pub filesystem: String,
}

fn default_filesystem() -> String {
    "ext4".into()
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceDecl {
    pub machines: Vec<String>,
    /// `URI#ATTRIBUTE`, built on the machines by nixos-rebuild.
    #[serde(default)]
    pub flake: Option<String>,
    /// A pre-built closure, from `substituters`.
    #[serde(default)]
    pub closure: Option<String>,
    #[serde(default)]
    pub substituters: Vec<String>,
    #[serde(default)]
    pub trusted_public_keys: Vec<String>,
    /// Secret name → file (relative to the fleet file).
    #[serde(default)]
    pub secrets: BTreeMap<String, String>,
    /// Facts; values may name `${machines.NAME.address}`,
    /// `${machines.NAME.id}`, `${machines.NAME.hostname}` or
    /// `${buckets.NAME.name}`.
    #[serde(default)]
    pub facts: BTreeMap<String, String>,
    #[serde(default)]
    pub checks: Vec<String>,
    #[serde(default = "default_health_deadline")]
    pub health_deadline: String,
    /// A rollout instead of one deployment.
    #[serde(default)]
    pub strategy: Option<StrategyDecl>,
    /// Services that must be healthy before this one is deployed.
    #[serde(default)]
    pub after: Vec<String>,
}

fn default_health_deadline() -> String {
    "60s".into()
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StrategyDecl {
    #[serde(default)]
    pub canary: u32,
    /// Machines switched at once after the canaries ("1", "25%").
    #[serde(default = "default_parallel")]
    pub max_parallel: String,
    #[serde(default = "default_true")]
    pub auto_revert: bool,
}

fn default_parallel() -> String {
    "1".into()
}
fn default_true() -> bool {
    true
}

/// Where a fleet came from, for errors: a file (with its text, to find
/// lines) or a flake reference.
#[derive(Debug, Clone)]
pub struct Source {
    pub name: String,
    pub text: String,
}

/// A refused fleet: the message names the source, the line (when found)
/// and the key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct FleetError(pub String);

impl Source {
    /// The 1-based line of a key path (`services.web.after`) in a TOML
    /// text: the table header, then the key below it (or a `key =` in a
    /// dotted form).
    pub fn line_of(&self, path: &[&str]) -> Option<usize> {
        let lines: Vec<&str> = self.text.lines().collect();
        let quoted = |s: &str| [s.to_string(), format!("\"{s}\"")];
        for depth in (1..=path.len()).rev() {
            let (table, keys) = path.split_at(depth);
            let header_matches = |l: &str| {
                let l = l.trim();
                let Some(inner) = l.strip_prefix('[').and_then(|l| l.strip_suffix(']')) else { return false };
                let parts: Vec<&str> = inner.split('.').map(str::trim).collect();
                parts.len() == table.len() && parts.iter().zip(table).all(|(p, t)| quoted(t).contains(&p.to_string()))
            };
            if let Some(start) = lines.iter().position(|l| header_matches(l)) {
                let Some(key) = keys.first() else { return Some(start + 1) };
                for (i, l) in lines.iter().enumerate().skip(start + 1) {
                    let t = l.trim_start();
                    if t.starts_with('[') {
                        break;
                    }
                    if quoted(key).iter().any(|k| t.starts_with(&format!("{k} ")) || t.starts_with(&format!("{k}="))) {
                        return Some(i + 1);
                    }
                }
                return Some(start + 1);
            }
        }
        None
    }

    /// An error at a key path.
    pub fn error(&self, path: &[&str], message: impl std::fmt::Display) -> FleetError {
        let at = match self.line_of(path) {
            Some(line) => format!("{}:{line}", self.name),
            None => self.name.clone(),
        };
        FleetError(format!("{at}: {}: {message}", path.join(".")))
    }
}

/// Reads a fleet file: TOML, or JSON when it starts with `{`. A key given
/// twice is refused in both (TOML's parser refuses it; JSON's would keep
/// the last silently, so it is checked first).
pub fn parse(source: &Source) -> Result<FleetFile, FleetError> {
    if source.text.trim_start().starts_with('{') {
        serde_json::from_str::<NoDuplicateKeys>(&source.text).map_err(|e| FleetError(format!("{}:{}: {e}", source.name, e.line())))?;
        return serde_json::from_str(&source.text).map_err(|e| FleetError(format!("{}:{}: {e}", source.name, e.line())));
    }
    toml::from_str(&source.text).map_err(|e| {
        let line = e.span().map(|s| source.text.as_bytes()[..s.start.min(source.text.len())].iter().filter(|b| **b == b'\n').count() + 1);
        let at = line.map(|l| format!("{}:{l}", source.name)).unwrap_or_else(|| source.name.clone());
        FleetError(format!("{at}: {}", e.message()))
    })
}

/// Any JSON value, refusing an object that names a key twice.
struct NoDuplicateKeys;

impl<'de> Deserialize<'de> for NoDuplicateKeys {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = NoDuplicateKeys;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON value")
            }
            fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
                Ok(NoDuplicateKeys)
            }
            fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
                Ok(NoDuplicateKeys)
            }
            fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
                Ok(NoDuplicateKeys)
            }
            fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
                Ok(NoDuplicateKeys)
            }
            fn visit_str<E>(self, _: &str) -> Result<Self::Value, E> {
                Ok(NoDuplicateKeys)
            }
            fn visit_unit<E>(self) -> Result<Self::Value, E> {
                Ok(NoDuplicateKeys)
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                while seq.next_element::<NoDuplicateKeys>()?.is_some() {}
                Ok(NoDuplicateKeys)
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut seen = BTreeSet::new();
                while let Some(key) = map.next_key::<String>()? {
                    if !seen.insert(key.clone()) {
                        return Err(serde::de::Error::custom(format!("the key {key:?} is given twice")));
                    }
                    map.next_value::<NoDuplicateKeys>()?;
                }
                Ok(NoDuplicateKeys)
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

/// A reference inside a fact's value.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Reference {
    Machine { name: String, field: String },
    Bucket { name: String },
}

/// The references in a value (`${...}`), or why one is malformed.
pub fn references(value: &str) -> Result<Vec<Reference>, String> {
    let mut out = Vec::new();
    let mut rest = value;
    while let Some(start) = rest.find("${") {
        let after = &rest[start + 2..];
        let end = after.find('}').ok_or_else(|| format!("an unclosed reference in {value:?}"))?;
        let inner = &after[..end];
        let parts: Vec<&str> = inner.split('.').collect();
        let r = match parts.as_slice() {
            ["machines", name, field] if ["address", "id", "hostname"].contains(field) => {
                Reference::Machine { name: name.to_string(), field: field.to_string() }
            }
            ["buckets", name, "name"] => Reference::Bucket { name: name.to_string() },
            _ => return Err(format!("unknown reference ${{{inner}}}; use ${{machines.NAME.address|id|hostname}} or ${{buckets.NAME.name}}")),
        };
        out.push(r);
        rest = &after[end + 1..];
    }
    Ok(out)
}

/// Replaces the references in `value` with `lookup`'s answers; `None`
/// from the lookup leaves the value unresolved.
pub fn substitute(value: &str, lookup: &dyn Fn(&Reference) -> Option<String>) -> Option<String> {
    let mut out = String::new();
    let mut rest = value;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after.find('}')?;
        let refs = references(&rest[start..start + 2 + end + 1]).ok()?;
        out.push_str(&lookup(refs.first()?)?);
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Some(out)
}

/// Checks what parsing cannot: names, references, one service a machine,
/// `after` without cycles, sizes and systems that make sense.
pub fn validate(fleet: &FleetFile, source: &Source) -> Result<(), FleetError> {
    let name_ok = |n: &str| drover_protocol::seed::valid_machine_name(n);
    for (name, m) in &fleet.machines {
        let at = |key: &str, msg: String| source.error(&["machines", name, key], msg);
        if !name_ok(name) {
            return Err(source.error(&["machines", name], "a machine's name is 1-63 lowercase letters, digits and dashes"));
        }
        match (&m.provider, &m.adopt) {
            (Some(_), Some(_)) => return Err(at("adopt", "a machine is either provisioned (provider) or adopted (adopt), not both".into())),
            (None, None) => {
                return Err(source.error(&["machines", name], "say where it comes from: provider = \"...\" to provision it, or adopt = \"HOSTNAME\""))
            }
            _ => {}
        }
        if let Some(t) = &m.tenant {
            if !fleet.tenants.contains_key(t) {
                return Err(at("tenant", format!("no tenant {t:?} in [tenants]")));
            }
        }
        let memory = m.memory.as_deref().map(size_bytes).transpose().map_err(|e| at("memory", e))?;
        let disk = m.disk.as_deref().map(size_bytes).transpose().map_err(|e| at("disk", e))?;
        crate::hypervisor::check_shape(m.cores, memory, disk).map_err(|(key, e)| at(key, e))?;
        crate::registry::check_labels(&m.labels).map_err(|e| at("labels", e))?;
    }
    for (name, b) in &fleet.buckets {
        crate::s3::check_bucket_name(name).map_err(|e| source.error(&["buckets", name], e))?;
        for machine in &b.machines {
            if !fleet.machines.contains_key(machine) {
                return Err(source.error(&["buckets", name, "machines"], format!("no machine {machine:?} in [machines]")));
            }
        }
        if let Some(q) = &b.quota {
            size_bytes(q).map_err(|e| source.error(&["buckets", name, "quota"], e))?;
        }
    }
    for (i, (name, v)) in fleet.volumes.iter().enumerate() {
        let at = |key: &str, msg: String| source.error(&["volumes", name, key], msg);
        crate::volume_rules::check_name(name).map_err(|e| source.error(&["volumes", name], e))?;
        crate::volume_rules::check_unique(name, fleet.volumes.keys().take(i).map(String::as_str)).map_err(|e| source.error(&["volumes", name], e))?;
        let Some(machine) = fleet.machines.get(&v.machine) else {
            return Err(at("machine", format!("no machine {:?} in [machines]", v.machine)));
        };
        let size = size_bytes(&v.size).map_err(|e| at("size", e))?;
        let filesystem = v.filesystem.parse::<drover_protocol::v1::Filesystem>().map_err(|e| at("filesystem", e))?;
        crate::volume_rules::size_kib(size, Some(filesystem)).map_err(|e| at("size", e))?;
        crate::volume_rules::check_mount_point(&v.mount).map_err(|e| at("mount", e))?;
        if machine.provider.is_some() && name.len() > 16 {
            return Err(source.error(&["volumes", name], "a provisioned machine's volume is a disk with serial vol-NAME: at most 16 characters"));
        }
    }
    let mut owner: BTreeMap<&str, &str> = BTreeMap::new();
    for (name, s) in &fleet.services {
        let at = |key: &str, msg: String| source.error(&["services", name, key], msg);
        if s.machines.is_empty() {
            return Err(at("machines", "a service runs on at least one machine".into()));
        }
        for machine in &s.machines {
            if !fleet.machines.contains_key(machine) {
                return Err(at("machines", format!("no machine {machine:?} in [machines]")));
            }
            if let Some(other) = owner.insert(machine, name) {
                return Err(at("machines", format!("machine {machine} already runs service {other}; a machine runs one system")));
            }
        }
        match (&s.flake, &s.closure) {
            (Some(f), None) if f.split_once('#').is_some_and(|(u, a)| !u.is_empty() && !a.is_empty()) => {}
            (None, Some(c)) if c.starts_with("/nix/store/") => {}
            _ => return Err(source.error(&["services", name], "give the system as flake = \"URI#ATTRIBUTE\" or closure = \"/nix/store/...\"")),
        }
        for dep in &s.after {
            if !fleet.services.contains_key(dep) {
                return Err(at("after", format!("no service {dep:?} in [services]")));
            }
        }
        for (fact, value) in &s.facts {
            for r in references(value).map_err(|e| at("facts", format!("{fact}: {e}")))? {
                match r {
                    Reference::Machine { name: m, .. } if !fleet.machines.contains_key(&m) => {
                        return Err(at("facts", format!("{fact} names machine {m:?}, which [machines] does not define")));
                    }
                    Reference::Bucket { name: b } if !fleet.buckets.contains_key(&b) => {
                        return Err(at("facts", format!("{fact} names bucket {b:?}, which [buckets] does not define")));
                    }
                    _ => {}
                }
            }
        }
        for check in &s.checks {
            crate::deploy::parse_check(check).map_err(|e| at("checks", e))?;
        }
        drover_net::clock::parse_duration(&s.health_deadline).map_err(|e| at("health_deadline", e.to_string()))?;
    }
    for (name, v) in &fleet.volumes {
        if let Some(service) = owner.get(v.machine.as_str()) {
            let machines = &fleet.services[*service].machines;
            if fleet.machines[&v.machine].adopt.is_some() && machines.len() > 1 {
                return Err(source.error(
                    &["volumes", name, "machine"],
                    format!("an adopted machine's volume needs a service of its own machine; {service} runs on {}", machines.join(", ")),
                ));
            }
        }
    }
    for (name, b) in &fleet.buckets {
        for machine in &b.machines {
            let Some(service) = owner.get(machine.as_str()) else {
                return Err(source.error(&["buckets", name, "machines"], format!("machine {machine} runs no service to give the credentials to")));
            };
            let missing: Vec<&String> = fleet.services[*service].machines.iter().filter(|m| !b.machines.contains(m)).collect();
            if !missing.is_empty() {
                return Err(
                    source.error(&["buckets", name, "machines"], format!("service {service} also runs on {missing:?}: list every machine of a service"))
                );
            }
        }
    }
    service_order(fleet).map_err(|cycle| source.error(&["services", &cycle[0], "after"], format!("a cycle: {}", cycle.join(" -> "))))?;
    Ok(())
}

/// The services in an order where each comes after what it names in
/// `after`; or the cycle that prevents one.
pub fn service_order(fleet: &FleetFile) -> Result<Vec<String>, Vec<String>> {
    let mut done: Vec<String> = Vec::new();
    let mut visiting: Vec<String> = Vec::new();
    fn visit(fleet: &FleetFile, name: &str, done: &mut Vec<String>, visiting: &mut Vec<String>) -> Result<(), Vec<String>> {
        if done.iter().any(|d| d == name) {
            return Ok(());
        }
        if let Some(at) = visiting.iter().position(|v| v == name) {
            let mut cycle = visiting[at..].to_vec();
            cycle.push(name.to_string());
            return Err(cycle);
        }
        visiting.push(name.to_string());
        for dep in fleet.services.get(name).map(|s| s.after.clone()).unwrap_or_default() {
            visit(fleet, &dep, done, visiting)?;
        }
        visiting.pop();
        done.push(name.to_string());
        Ok(())
    }
    for name in fleet.services.keys() {
        visit(fleet, name, &mut done, &mut visiting)?;
    }
    Ok(done)
}

/// Parses a size such as `10GiB`.
pub fn size_bytes(text: &str) -> Result<u64, String> {
    text.parse::<bytesize::ByteSize>().map(|b| b.as_u64()).map_err(|e| format!("{text:?} is not a size (e.g. 10GiB): {e}"))
}

/// The machines of the file that are provisioned, and those adopted.
pub fn provisioned(fleet: &FleetFile) -> BTreeSet<&str> {
    fleet.machines.iter().filter(|(_, m)| m.provider.is_some()).map(|(n, _)| n.as_str()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[tenants."a.example"]
admin_email = "ops@a.example"

[machines.db]
provider = "local"
tenant = "a.example"

[machines.web]
adopt = "web-1"
tenant = "a.example"

[buckets.a-media]
public = true
machines = ["web"]

[services.db]
machines = ["db"]
flake = "path:/fleet#db"

[services.web]
machines = ["web"]
flake = "path:/fleet#web"
facts = { db_host = "${machines.db.address}", media = "${buckets.a-media.name}" }
after = ["db"]
"#;

    fn source(text: &str) -> Source {
        Source { name: "fleet.toml".into(), text: text.into() }
    }

    fn check(text: &str) -> Result<FleetFile, FleetError> {
        let s = source(text);
        let f = parse(&s)?;
        validate(&f, &s)?;
        Ok(f)
    }

    #[test]
    fn a_good_file_orders_services_by_after() {
        let f = check(GOOD).expect("valid");
        assert_eq!(service_order(&f).expect("order"), vec!["db".to_string(), "web".to_string()]);
    }

    #[test]
    fn errors_name_the_file_the_line_and_the_key() {
        let cases = [
            (GOOD.replace("public = true", "public = true\nversioning = true"), "fleet.toml:15", "versioning"),
            (GOOD.replace("${machines.db.address}", "${machines.dbx.address}"), "fleet.toml:24", "services.web.facts"),
            (GOOD.replace("${buckets.a-media.name}", "${buckets.b.name}"), "fleet.toml:24", "bucket \"b\""),
            (format!("{GOOD}\n[services.db2]\nmachines = []\nflake = \"x#y\"\n"), "services.db2.machines", "at least one"),
            (
                GOOD.replace("machines = [\"db\"]\nflake = \"path:/fleet#db\"", "machines = [\"db\"]\nflake = \"path:/fleet#db\"\nafter = [\"web\"]"),
                "services.",
                "a cycle",
            ),
            (GOOD.replace("adopt = \"web-1\"", ""), "fleet.toml:9", "say where it comes from"),
            (
                GOOD.replace("machines = [\"web\"]\nflake = \"path:/fleet#web\"", "machines = [\"web\", \"db\"]\nflake = \"path:/fleet#web\""),
                "services.web.machines",
                "already runs service db",
            ),
        ];
        for (text, at, what) in cases {
            let e = check(&text).expect_err("refused").to_string();
            assert!(e.contains(at) && e.contains(what), "want {at} and {what} in: {e}");
        }
    }

    #[test]
    fn json_reads_the_same_fleet() {
        let f = check(GOOD).expect("valid");
        let json = serde_json::to_string(&f).expect("json");
        assert_eq!(check(&json).expect("json valid"), f);
    }

    #[test]
    fn references_resolve_or_stay_open() {
        let lookup = |r: &Reference| match r {
            Reference::Machine { name, field } if name == "db" && field == "address" => Some("10.0.2.16".to_string()),
            _ => None,
        };
        assert_eq!(substitute("postgres://${machines.db.address}:5432", &lookup).as_deref(), Some("postgres://10.0.2.16:5432"));
        assert_eq!(substitute("${buckets.x.name}", &lookup), None);
        assert_eq!(substitute("plain", &lookup).as_deref(), Some("plain"));
        assert!(references("${nope}").is_err());
    }
}
