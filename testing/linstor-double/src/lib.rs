//! A LINSTOR controller test double: an HTTP server that follows LINSTOR's
//! REST API v1 as the real controller answers it (paths, bodies, status
//! codes, arrays of `ApiCallRc` with their masked `ret_code`s, "already
//! exists" as 500, deleting something missing as 200 with a warning), and
//! backs its objects with real things on this machine:
//!
//! - a volume is a sparse file `<root>/volumes/<rsc>.img`;
//! - a resource made available on a node is a loop device over that file,
//!   linked at `<root>/nodes/<node>/dev/drbd/by-res/<rsc>/0` (an agent whose
//!   volume root is `<root>/nodes/<node>` finds it where a real machine finds
//!   DRBD's device);
//! - a snapshot is a copy of the file; a rollback copies it back;
//! - "in use" is a mount of the loop device.
//!
//! Needs root (loop devices) and util-linux' `losetup`. The coordinator's
//! tests use it as a library; `scripts/demo.sh` runs its binary.

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};

use axum::extract::{Path as UrlPath, RawQuery, State};
use axum::http::StatusCode;
use axum::routing::{get, post, put};
use axum::{Json, Router};
use serde_json::{json, Value};

const MASK_ERROR: u64 = 0xC000_0000_0000_0000;
const MASK_WARN: u64 = 0x8000_0000_0000_0000;
const MASK_RSC_DFN: u64 = 0x0000_0000_0044_0000;
const CREATED: u64 = 1;
const DELETED: u64 = 2;
const MODIFIED: u64 = 3;
const FAIL_INVLD_RSC_NAME: u64 = 202;
const FAIL_INVLD_VLM_SIZE: u64 = 206;
const FAIL_NOT_FOUND_NODE: u64 = 300;
const FAIL_NOT_FOUND_RSC_DFN: u64 = 301;
const FAIL_NOT_FOUND_VLM_DFN: u64 = 303;
const FAIL_NOT_FOUND_STOR_POOL: u64 = 310;
const FAIL_NOT_FOUND_SNAPSHOT: u64 = 315;
const FAIL_NOT_FOUND_RSC_GRP: u64 = 317;
const FAIL_EXISTS_RSC_DFN: u64 = 501;
const FAIL_EXISTS_VLM_DFN: u64 = 503;
const FAIL_EXISTS_SNAPSHOT_DFN: u64 = 514;
const FAIL_EXISTS_SNAPSHOT: u64 = 516;
const FAIL_NOT_ENOUGH_NODES: u64 = 1003;
const FAIL_IN_USE: u64 = 1005;
const WARN_NOT_FOUND: u64 = 3;

type Answer = (StatusCode, Json<Value>);

fn rc(code: u64, message: impl Into<String>) -> Value {
    json!({"ret_code": code as i64, "message": message.into(), "obj_refs": {}})
}

fn ok(status: StatusCode, code: u64, message: impl Into<String>) -> Answer {
    (status, Json(json!([rc(code | MASK_RSC_DFN, message)])))
}

fn fail(status: StatusCode, code: u64, message: impl Into<String>, correction: Option<&str>) -> Answer {
    let mut entry = rc(MASK_ERROR | MASK_RSC_DFN | code, message);
    if let Some(c) = correction {
        entry["correction"] = json!(c);
        entry["cause"] = json!("the request names something the controller cannot use");
    }
    (status, Json(json!([entry])))
}

fn missing_rd(name: &str) -> Answer {
    fail(StatusCode::NOT_FOUND, FAIL_NOT_FOUND_RSC_DFN, format!("Resource definition '{name}' not found."), None)
}

#[derive(Default)]
struct Resource {
    diskless: bool,
    loop_device: Option<PathBuf>,
}

#[derive(Default)]
struct Rd {
    /// The name as it was created (LINSTOR keeps it, and compares names
    /// without regard to case).
    name: String,
    props: BTreeMap<String, String>,
    size_kib: Option<u64>,
    resources: BTreeMap<String, Resource>,
    snapshots: Vec<String>,
}

/// The key of a resource name: LINSTOR compares names without case.
fn key(name: &str) -> String {
    name.to_ascii_uppercase()
}

/// LINSTOR's resource name rules (linstor-server's `ResourceName`): 2 to
/// 48 bytes with at least one letter; the first a letter or '_', the rest
/// letters, digits, '_' or '-'; not `all` or `proxy`.
fn check_resource_name(name: &str) -> Result<(), String> {
    if name.eq_ignore_ascii_case("all") || name.eq_ignore_ascii_case("proxy") {
        return Err(format!("The specified name '{name}' cannot be used because it matches a keyword reserved for DRBD."));
    }
    if name.len() < 2 {
        return Err(format!("Invalid name: Name length {} is less than minimum length 2", name.len()));
    }
    if name.len() > 48 {
        return Err(format!("Invalid name: Name length {} is greater than maximum length 48", name.len()));
    }
    if !name.bytes().any(|b| b.is_ascii_alphabetic()) {
        return Err("Invalid name: Name must contain at least one character that matches [a-zA-Z]".into());
    }
    let first = name.as_bytes()[0];
    if !(first.is_ascii_alphabetic() || first == b'_') {
        return Err(format!("Invalid name: Cannot begin with character '{}'", first as char));
    }
    if let Some(c) = name.bytes().skip(1).find(|b| !(b.is_ascii_alphanumeric() || *b == b'_' || *b == b'-')) {
        return Err(format!("Invalid name: Cannot contain character '{}'", c as char));
    }
    Ok(())
}

/// The values of a query parameter, repeated as JAX-RS lists take them
/// (`?resources=a&resources=b`).
fn params(query: &Option<String>, name: &str) -> Vec<String> {
    let Some(q) = query else { return Vec::new() };
    form_urlencoded::parse(q.as_bytes()).filter(|(k, _)| k == name).map(|(_, v)| v.into_owned()).collect()
}

/// Whether `props` matches every `KEY=VALUE` (or `KEY`: present) filter.
fn matches(props: &BTreeMap<String, String>, filters: &[String]) -> bool {
    filters.iter().all(|f| match f.split_once('=') {
        Some((k, v)) => props.get(k).is_some_and(|have| have == v),
        None => props.contains_key(f.as_str()),
    })
}

fn props_of(value: &Value) -> BTreeMap<String, String> {
    value.as_object().map(|o| o.iter().filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string()))).collect()).unwrap_or_default()
}

struct Inner {
    root: PathBuf,
    /// Satellites with a storage pool: diskful replicas go there.
    storage_nodes: Vec<String>,
    /// Every node the controller knows (storage nodes and machines' nodes).
    nodes: Vec<String>,
    pools: Vec<String>,
    groups: BTreeMap<String, u8>,
    /// Resource definitions by [`key`].
    rds: BTreeMap<String, Rd>,
    /// Every request, as "METHOD PATH".
    log: Vec<String>,
    /// Answer every mutating request with this error (a fault).
    fail_with: Option<String>,
    /// Answer the next autoplace with "not enough nodes" (a fault).
    fail_placement: bool,
}

impl Inner {
    fn image(&self, name: &str) -> PathBuf {
        self.root.join("volumes").join(format!("{name}.img"))
    }

    fn link(&self, node: &str, name: &str) -> PathBuf {
        self.root.join("nodes").join(node).join("dev/drbd/by-res").join(name).join("0")
    }

    fn rd(&self, name: &str) -> Option<&Rd> {
        self.rds.get(&key(name))
    }

    fn rd_mut(&mut self, name: &str) -> Option<&mut Rd> {
        self.rds.get_mut(&key(name))
    }

    fn attach_loop(&self, name: &str, node: &str) -> Result<PathBuf, String> {
        let out = Command::new("losetup").args(["-f", "--show"]).arg(self.image(name)).output().map_err(|e| format!("losetup: {e}"))?;
        if !out.status.success() {
            return Err(format!("losetup failed: {}", String::from_utf8_lossy(&out.stderr)));
        }
        let device = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        let link = self.link(node, name);
        std::fs::create_dir_all(link.parent().expect("parent")).map_err(|e| e.to_string())?;
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(&device, &link).map_err(|e| e.to_string())?;
        Ok(device)
    }

    fn detach_loop(&self, name: &str, node: &str, device: &Path) {
        let _ = Command::new("losetup").arg("-d").arg(device).status();
        let _ = std::fs::remove_file(self.link(node, name));
    }

    fn in_use(&self, rd: &Rd) -> Option<String> {
        rd.resources.iter().find(|(_, r)| r.loop_device.as_deref().is_some_and(mounted)).map(|(n, _)| n.clone())
    }

    fn rd_json(rd: &Rd, with_volumes: bool) -> Value {
        let mut v = json!({"name": rd.name, "props": rd.props, "flags": []});
        if with_volumes {
            v["volume_definitions"] =
                json!(rd.size_kib.map(|k| vec![json!({"volume_number": 0, "size_kib": k, "props": {}, "flags": []})]).unwrap_or_default());
        }
        v
    }

    fn resources_json(&self, rd: &Rd) -> Vec<Value> {
        rd.resources
            .iter()
            .map(|(node, r)| {
                let flags: Vec<&str> = if r.diskless { vec!["DRBD_DISKLESS", "DISKLESS"] } else { vec![] };
                json!({
                    "name": rd.name,
                    "node_name": node,
                    "flags": flags,
                    "props": {},
                    "state": {"in_use": r.loop_device.as_deref().is_some_and(mounted)},
                    "volumes": [{
                        "volume_number": 0,
                        "storage_pool_name": if r.diskless { "DfltDisklessStorPool" } else { "pool1" },
                        "device_path": "/dev/drbd1000",
                        "allocated_size_kib": rd.size_kib.unwrap_or(0),
                        "state": {"disk_state": if r.diskless { "Diskless" } else { "UpToDate" }},
                    }],
                })
            })
            .collect()
    }

    fn place(&mut self, name: &str, count: u8, pool: Option<&str>) -> Answer {
        if let Some(pool) = pool {
            if !self.pools.iter().any(|p| p == pool) {
                return fail(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    FAIL_NOT_FOUND_STOR_POOL,
                    format!("Storage pool '{pool}' not found."),
                    Some(&format!("Create a storage pool '{pool}' on the satellites first.")),
                );
            }
        }
        if usize::from(count) > self.storage_nodes.len() || std::mem::take(&mut self.fail_placement) {
            return fail(
                StatusCode::INTERNAL_SERVER_ERROR,
                FAIL_NOT_ENOUGH_NODES,
                format!("Not enough available nodes: {count} asked, {} have storage.", self.storage_nodes.len()),
                Some("Add satellites with storage, or lower the place count."),
            );
        }
        let nodes: Vec<String> = self.storage_nodes.iter().take(usize::from(count)).cloned().collect();
        let Some(rd) = self.rd_mut(name) else { return missing_rd(name) };
        for node in nodes {
            rd.resources.entry(node).or_default();
        }
        ok(StatusCode::CREATED, CREATED, format!("Resource '{name}' successfully autoplaced on {count} nodes"))
    }

    fn new_rd(&mut self, name: &str, props: BTreeMap<String, String>) -> Result<(), Answer> {
        if let Err(e) = check_resource_name(name) {
            return Err(fail(StatusCode::INTERNAL_SERVER_ERROR, FAIL_INVLD_RSC_NAME, e, None));
        }
        if let Some(existing) = self.rd(name) {
            return Err(fail(
                StatusCode::INTERNAL_SERVER_ERROR,
                FAIL_EXISTS_RSC_DFN,
                format!("A resource definition with the name '{}' already exists.", existing.name),
                None,
            ));
        }
        self.rds.insert(key(name), Rd { name: name.to_string(), props, ..Default::default() });
        Ok(())
    }
}

/// Whether a block device is mounted anywhere.
fn mounted(device: &Path) -> bool {
    let Ok(meta) = std::fs::metadata(device) else { return false };
    let rdev = meta.rdev();
    let wanted = format!("{}:{}", nix::sys::stat::major(rdev), nix::sys::stat::minor(rdev));
    std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default().lines().any(|l| l.split(' ').nth(2) == Some(wanted.as_str()))
}

type Shared = Arc<Mutex<Inner>>;

fn lock(s: &Shared) -> std::sync::MutexGuard<'_, Inner> {
    s.lock().unwrap_or_else(|e| e.into_inner())
}

/// A fault injected by the test, answered before anything changes.
fn fault(inner: &mut Inner, method: &str, path: &str) -> Option<Answer> {
    inner.log.push(format!("{method} {path}"));
    if method == "GET" {
        return None;
    }
    inner.fail_with.clone().map(|m| fail(StatusCode::INTERNAL_SERVER_ERROR, 999, m, Some("Retry once the controller is healthy.")))
}

/// `GET /v1/resource-definitions`: filtered by `resource_definitions`
/// (names) and `props` (`KEY=VALUE`), with volume definitions when asked.
async fn rd_list(State(s): State<Shared>, RawQuery(query): RawQuery) -> Answer {
    let mut inner = lock(&s);
    inner.log.push(format!("GET /v1/resource-definitions?{}", query.clone().unwrap_or_default()));
    let names: Vec<String> = params(&query, "resource_definitions").iter().map(|n| key(n)).collect();
    let filters = params(&query, "props");
    let with_volumes = params(&query, "with_volume_definitions").iter().any(|v| v == "true");
    let list: Vec<Value> = inner
        .rds
        .iter()
        .filter(|(k, rd)| (names.is_empty() || names.contains(k)) && matches(&rd.props, &filters))
        .map(|(_, rd)| Inner::rd_json(rd, with_volumes))
        .collect();
    (StatusCode::OK, Json(json!(list)))
}

async fn rd_create(State(s): State<Shared>, Json(body): Json<Value>) -> Answer {
    let mut inner = lock(&s);
    if let Some(a) = fault(&mut inner, "POST", "/v1/resource-definitions") {
        return a;
    }
    let Some(name) = body["resource_definition"]["name"].as_str().map(str::to_string) else {
        return fail(StatusCode::BAD_REQUEST, 0, "API_CALL_PARSE_ERROR: resource_definition.name is missing", None);
    };
    let props = props_of(&body["resource_definition"]["props"]);
    if let Err(a) = inner.new_rd(&name, props) {
        return a;
    }
    ok(StatusCode::CREATED, CREATED, format!("New resource definition '{name}' created."))
}

async fn rd_get(State(s): State<Shared>, UrlPath(name): UrlPath<String>) -> Answer {
    let inner = lock(&s);
    match inner.rd(&name) {
        Some(rd) => (StatusCode::OK, Json(Inner::rd_json(rd, false))),
        None => missing_rd(&name),
    }
}

/// `PUT /v1/resource-definitions/{rsc}`: `override_props` and
/// `delete_props`.
async fn rd_modify(State(s): State<Shared>, UrlPath(name): UrlPath<String>, Json(body): Json<Value>) -> Answer {
    let mut inner = lock(&s);
    if let Some(a) = fault(&mut inner, "PUT", &format!("/v1/resource-definitions/{name}")) {
        return a;
    }
    let Some(rd) = inner.rd_mut(&name) else { return missing_rd(&name) };
    rd.props.extend(props_of(&body["override_props"]));
    for k in body["delete_props"].as_array().into_iter().flatten().filter_map(Value::as_str) {
        rd.props.remove(k);
    }
    ok(StatusCode::OK, MODIFIED, format!("Resource definition '{name}' modified."))
}

async fn rd_delete(State(s): State<Shared>, UrlPath(name): UrlPath<String>) -> Answer {
    let mut inner = lock(&s);
    if let Some(a) = fault(&mut inner, "DELETE", &format!("/v1/resource-definitions/{name}")) {
        return a;
    }
    let Some(rd) = inner.rd(&name) else {
        return ok(StatusCode::OK, MASK_WARN | WARN_NOT_FOUND, format!("Resource definition '{name}' not found."));
    };
    if let Some(node) = inner.in_use(rd) {
        return fail(StatusCode::INTERNAL_SERVER_ERROR, FAIL_IN_USE, format!("Resource '{name}' is in use on node '{node}'."), Some("Unmount it first."));
    }
    if !rd.snapshots.is_empty() {
        return fail(
            StatusCode::INTERNAL_SERVER_ERROR,
            FAIL_EXISTS_SNAPSHOT_DFN,
            format!("Cannot delete resource definition '{}' because it has snapshots.", rd.name),
            Some("Delete its snapshots first."),
        );
    }
    let rd = inner.rds.remove(&key(&name)).expect("present");
    for (node, r) in &rd.resources {
        if let Some(d) = &r.loop_device {
            inner.detach_loop(&rd.name, node, d);
        }
    }
    let _ = std::fs::remove_file(inner.image(&rd.name));
    let _ = std::fs::remove_dir_all(inner.root.join("snapshots").join(&rd.name));
    ok(StatusCode::OK, DELETED, format!("Resource definition '{name}' deleted."))
}

async fn vd_list(State(s): State<Shared>, UrlPath(name): UrlPath<String>) -> Answer {
    let inner = lock(&s);
    match inner.rd(&name) {
        Some(rd) => (StatusCode::OK, Inner::rd_json(rd, true)["volume_definitions"].clone().into()),
        None => missing_rd(&name),
    }
}

fn create_volume(inner: &mut Inner, name: &str, size_kib: u64) -> Answer {
    let Some(display) = inner.rd(name).map(|rd| rd.name.clone()) else { return missing_rd(name) };
    let image = inner.image(&display);
    let Some(rd) = inner.rd_mut(name) else { return missing_rd(name) };
    if rd.size_kib.is_some() {
        return fail(StatusCode::INTERNAL_SERVER_ERROR, FAIL_EXISTS_VLM_DFN, format!("Volume definition 0 of '{name}' already exists."), None);
    }
    let file = std::fs::File::create(&image).and_then(|f| f.set_len(size_kib * 1024));
    if let Err(e) = file {
        return fail(StatusCode::INTERNAL_SERVER_ERROR, 0, format!("cannot make the backing file: {e}"), None);
    }
    rd.size_kib = Some(size_kib);
    ok(StatusCode::CREATED, CREATED, format!("New volume definition with number '0' of resource definition '{name}' created."))
}

async fn vd_create(State(s): State<Shared>, UrlPath(name): UrlPath<String>, Json(body): Json<Value>) -> Answer {
    let mut inner = lock(&s);
    if let Some(a) = fault(&mut inner, "POST", &format!("/v1/resource-definitions/{name}/volume-definitions")) {
        return a;
    }
    let Some(size) = body["volume_definition"]["size_kib"].as_u64() else {
        return fail(StatusCode::BAD_REQUEST, 0, "API_CALL_PARSE_ERROR: volume_definition.size_kib is missing", None);
    };
    create_volume(&mut inner, &name, size)
}

async fn vd_modify(State(s): State<Shared>, UrlPath((name, number)): UrlPath<(String, u32)>, Json(body): Json<Value>) -> Answer {
    let mut inner = lock(&s);
    if let Some(a) = fault(&mut inner, "PUT", &format!("/v1/resource-definitions/{name}/volume-definitions/{number}")) {
        return a;
    }
    let Some(display) = inner.rd(&name).map(|rd| rd.name.clone()) else { return missing_rd(&name) };
    let image = inner.image(&display);
    let Some(rd) = inner.rd_mut(&name) else { return missing_rd(&name) };
    let (Some(current), 0) = (rd.size_kib, number) else {
        return fail(StatusCode::NOT_FOUND, FAIL_NOT_FOUND_VLM_DFN, format!("Volume definition {number} of '{name}' not found."), None);
    };
    let Some(size) = body["size_kib"].as_u64() else { return ok(StatusCode::OK, MODIFIED, "Volume definition modified.") };
    if size < current {
        return fail(StatusCode::INTERNAL_SERVER_ERROR, FAIL_INVLD_VLM_SIZE, "Shrinking of volume definitions is not supported.", None);
    }
    if let Err(e) = std::fs::OpenOptions::new().write(true).open(&image).and_then(|f| f.set_len(size * 1024)) {
        return fail(StatusCode::INTERNAL_SERVER_ERROR, 0, format!("cannot grow the backing file: {e}"), None);
    }
    rd.size_kib = Some(size);
    for r in rd.resources.values() {
        if let Some(d) = &r.loop_device {
            let _ = Command::new("losetup").arg("-c").arg(d).status();
        }
    }
    ok(StatusCode::OK, MODIFIED, format!("Volume definition 0 of '{name}' modified."))
}

async fn autoplace(State(s): State<Shared>, UrlPath(name): UrlPath<String>, Json(body): Json<Value>) -> Answer {
    let mut inner = lock(&s);
    if let Some(a) = fault(&mut inner, "POST", &format!("/v1/resource-definitions/{name}/autoplace")) {
        return a;
    }
    let count = body["select_filter"]["place_count"].as_u64().unwrap_or(2);
    let pool = body["select_filter"]["storage_pool"].as_str().map(str::to_string);
    inner.place(&name, u8::try_from(count).unwrap_or(u8::MAX), pool.as_deref())
}

async fn spawn(State(s): State<Shared>, UrlPath(group): UrlPath<String>, Json(body): Json<Value>) -> Answer {
    let mut inner = lock(&s);
    if let Some(a) = fault(&mut inner, "POST", &format!("/v1/resource-groups/{group}/spawn")) {
        return a;
    }
    let Some(&count) = inner.groups.get(&group) else {
        return fail(StatusCode::NOT_FOUND, FAIL_NOT_FOUND_RSC_GRP, format!("Resource group '{group}' not found."), None);
    };
    let (Some(name), Some(size)) = (body["resource_definition_name"].as_str(), body["volume_sizes"][0].as_u64()) else {
        return fail(StatusCode::BAD_REQUEST, 0, "API_CALL_PARSE_ERROR: resource_definition_name and volume_sizes are required", None);
    };
    if let Err(a) = inner.new_rd(name, props_of(&body["resource_definition_props"])) {
        return a;
    }
    let made = create_volume(&mut inner, name, size);
    if made.0 != StatusCode::CREATED {
        return made;
    }
    inner.place(name, count, None)
}

async fn make_available(State(s): State<Shared>, UrlPath((name, node)): UrlPath<(String, String)>) -> Answer {
    let mut inner = lock(&s);
    if let Some(a) = fault(&mut inner, "POST", &format!("/v1/resource-definitions/{name}/resources/{node}/make-available")) {
        return a;
    }
    if !inner.nodes.contains(&node) {
        return fail(StatusCode::NOT_FOUND, FAIL_NOT_FOUND_NODE, format!("Node '{node}' not found."), None);
    }
    let Some((display, has_volume, needs_loop)) =
        inner.rd(&name).map(|rd| (rd.name.clone(), rd.size_kib.is_some(), rd.resources.get(&node).is_none_or(|r| r.loop_device.is_none())))
    else {
        return missing_rd(&name);
    };
    if !has_volume {
        return fail(StatusCode::NOT_FOUND, FAIL_NOT_FOUND_VLM_DFN, format!("Resource definition '{name}' has no volume."), None);
    }
    if needs_loop {
        let device = match inner.attach_loop(&display, &node) {
            Ok(d) => d,
            Err(e) => return fail(StatusCode::INTERNAL_SERVER_ERROR, 0, e, None),
        };
        let rd = inner.rd_mut(&name).expect("present");
        let diskless = !rd.resources.contains_key(&node);
        let r = rd.resources.entry(node.clone()).or_insert(Resource { diskless, loop_device: None });
        r.loop_device = Some(device);
    }
    ok(StatusCode::OK, CREATED, format!("Resource '{name}' is available on node '{node}'."))
}

async fn resource_delete(State(s): State<Shared>, UrlPath((name, node)): UrlPath<(String, String)>) -> Answer {
    let mut inner = lock(&s);
    if let Some(a) = fault(&mut inner, "DELETE", &format!("/v1/resource-definitions/{name}/resources/{node}")) {
        return a;
    }
    let Some(rd) = inner.rd(&name) else { return missing_rd(&name) };
    let display = rd.name.clone();
    let Some(r) = rd.resources.get(&node) else {
        return ok(StatusCode::OK, MASK_WARN | WARN_NOT_FOUND, format!("Resource '{name}' on node '{node}' not found."));
    };
    if r.loop_device.as_deref().is_some_and(mounted) {
        return fail(StatusCode::INTERNAL_SERVER_ERROR, FAIL_IN_USE, format!("Resource '{name}' is in use on node '{node}'."), Some("Unmount it first."));
    }
    let device = r.loop_device.clone();
    if let Some(d) = device {
        inner.detach_loop(&display, &node, &d);
    }
    inner.rd_mut(&name).expect("present").resources.remove(&node);
    ok(StatusCode::OK, DELETED, format!("Resource '{name}' on node '{node}' deleted."))
}

/// `GET /v1/view/resources`, filtered by `resources` (repeated).
async fn resources_view(State(s): State<Shared>, RawQuery(query): RawQuery) -> Answer {
    let mut inner = lock(&s);
    inner.log.push(format!("GET /v1/view/resources?{}", query.clone().unwrap_or_default()));
    let wanted: Vec<String> = params(&query, "resources").iter().map(|n| key(n)).collect();
    let mut out = Vec::new();
    for (k, rd) in &inner.rds {
        if wanted.is_empty() || wanted.contains(k) {
            out.extend(inner.resources_json(rd));
        }
    }
    (StatusCode::OK, Json(json!(out)))
}

async fn snapshots(State(s): State<Shared>, UrlPath(name): UrlPath<String>) -> Answer {
    let inner = lock(&s);
    match inner.rd(&name) {
        Some(rd) => (StatusCode::OK, Json(json!(rd.snapshots.iter().map(|n| json!({"name": n, "resource_name": rd.name})).collect::<Vec<_>>()))),
        None => missing_rd(&name),
    }
}

async fn snapshot_create(State(s): State<Shared>, UrlPath(name): UrlPath<String>, Json(body): Json<Value>) -> Answer {
    let mut inner = lock(&s);
    if let Some(a) = fault(&mut inner, "POST", &format!("/v1/resource-definitions/{name}/snapshots")) {
        return a;
    }
    let Some(snap) = body["name"].as_str().map(str::to_string) else {
        return fail(StatusCode::BAD_REQUEST, 0, "API_CALL_PARSE_ERROR: name is missing", None);
    };
    let Some(display) = inner.rd(&name).map(|rd| rd.name.clone()) else { return missing_rd(&name) };
    let image = inner.image(&display);
    let dir = inner.root.join("snapshots").join(&display);
    let Some(rd) = inner.rd_mut(&name) else { return missing_rd(&name) };
    if rd.snapshots.contains(&snap) {
        return fail(StatusCode::INTERNAL_SERVER_ERROR, FAIL_EXISTS_SNAPSHOT, format!("A snapshot with the name '{snap}' already exists."), None);
    }
    let copied = std::fs::create_dir_all(&dir).and_then(|()| copy_sparse(&image, &dir.join(format!("{snap}.img"))));
    if let Err(e) = copied {
        return fail(StatusCode::INTERNAL_SERVER_ERROR, 0, format!("cannot copy the volume: {e}"), None);
    }
    rd.snapshots.push(snap.clone());
    ok(StatusCode::CREATED, CREATED, format!("New snapshot '{snap}' of resource '{name}' registered."))
}

async fn snapshot_delete(State(s): State<Shared>, UrlPath((name, snap)): UrlPath<(String, String)>) -> Answer {
    let mut inner = lock(&s);
    if let Some(a) = fault(&mut inner, "DELETE", &format!("/v1/resource-definitions/{name}/snapshots/{snap}")) {
        return a;
    }
    let Some(display) = inner.rd(&name).map(|rd| rd.name.clone()) else { return missing_rd(&name) };
    let file = inner.root.join("snapshots").join(&display).join(format!("{snap}.img"));
    let Some(rd) = inner.rd_mut(&name) else { return missing_rd(&name) };
    if !rd.snapshots.contains(&snap) {
        return ok(StatusCode::OK, MASK_WARN | WARN_NOT_FOUND, format!("Snapshot '{snap}' of resource '{name}' not found."));
    }
    rd.snapshots.retain(|s| s != &snap);
    let _ = std::fs::remove_file(file);
    ok(StatusCode::OK, DELETED, format!("Snapshot '{snap}' of resource '{name}' deleted."))
}

async fn snapshot_rollback(State(s): State<Shared>, UrlPath((name, snap)): UrlPath<(String, String)>) -> Answer {
    let mut inner = lock(&s);
    if let Some(a) = fault(&mut inner, "POST", &format!("/v1/resource-definitions/{name}/snapshot-rollback/{snap}")) {
        return a;
    }
    let Some(rd) = inner.rd(&name) else { return missing_rd(&name) };
    let display = rd.name.clone();
    if !rd.snapshots.contains(&snap) {
        return fail(StatusCode::NOT_FOUND, FAIL_NOT_FOUND_SNAPSHOT, format!("Snapshot '{snap}' of resource '{name}' not found."), None);
    }
    if let Some(node) = inner.in_use(rd) {
        return fail(StatusCode::INTERNAL_SERVER_ERROR, FAIL_IN_USE, format!("Resource '{name}' is in use on node '{node}'."), Some("Unmount it first."));
    }
    // The loop devices are re-made so that no stale block is cached.
    let nodes: Vec<(String, PathBuf)> = rd.resources.iter().filter_map(|(n, r)| r.loop_device.clone().map(|d| (n.clone(), d))).collect();
    for (node, d) in &nodes {
        inner.detach_loop(&display, node, d);
    }
    let copied = copy_sparse(&inner.root.join("snapshots").join(&display).join(format!("{snap}.img")), &inner.image(&display));
    for (node, _) in &nodes {
        let device = inner.attach_loop(&display, node).ok();
        if let Some(r) = inner.rd_mut(&name).and_then(|rd| rd.resources.get_mut(node)) {
            r.loop_device = device;
        }
    }
    match copied {
        Ok(()) => ok(StatusCode::OK, MODIFIED, format!("Resource '{name}' rolled back to snapshot '{snap}'.")),
        Err(e) => fail(StatusCode::INTERNAL_SERVER_ERROR, 0, format!("rollback failed: {e}"), None),
    }
}

fn copy_sparse(from: &Path, to: &Path) -> std::io::Result<()> {
    let status = Command::new("cp").args(["--sparse=always", "-f"]).arg(from).arg(to).status()?;
    if status.success() {
        Ok(())
    } else {
        Err(std::io::Error::other(format!("cp {} {} failed", from.display(), to.display())))
    }
}

/// The double, serving on a loopback port until dropped.
pub struct LinstorDouble {
    pub url: String,
    pub root: PathBuf,
    inner: Shared,
    task: Option<tokio::task::JoinHandle<()>>,
    addr: std::net::SocketAddr,
}

/// Fails with how to install what the double needs.
pub fn require_loop_devices() {
    assert!(nix::unistd::geteuid().is_root(), "volume tests need root (loop devices, mount); run the test suite as root");
    for tool in ["losetup", "blkid", "mkfs.ext4", "mkfs.xfs", "resize2fs", "xfs_growfs", "dumpe2fs", "xfs_db", "e2fsck"] {
        let found = std::env::var_os("PATH")
            .map(|p| std::env::split_paths(&p).chain([PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")]).any(|d| d.join(tool).exists()))
            .unwrap_or(false);
        assert!(found, "{tool} is missing; install it: apt-get install util-linux e2fsprogs xfsprogs");
    }
}

impl LinstorDouble {
    /// A controller with storage nodes `stor1` and `stor2` (pool `pool1`),
    /// the machine nodes given, and resource group `rg-db` (2 replicas).
    pub async fn start(root: &Path, machine_nodes: &[&str]) -> Self {
        Self::start_on(root, machine_nodes, "127.0.0.1:0".parse().expect("literal address")).await
    }

    /// As [`Self::start`], on a given address.
    pub async fn start_on(root: &Path, machine_nodes: &[&str], listen: std::net::SocketAddr) -> Self {
        require_loop_devices();
        std::fs::create_dir_all(root.join("volumes")).expect("mkdir");
        let storage_nodes = vec!["stor1".to_string(), "stor2".to_string()];
        let mut nodes = storage_nodes.clone();
        nodes.extend(machine_nodes.iter().map(|n| n.to_string()));
        let inner = Arc::new(Mutex::new(Inner {
            root: root.to_path_buf(),
            storage_nodes,
            nodes,
            pools: vec!["pool1".into()],
            groups: BTreeMap::from([("rg-db".to_string(), 2)]),
            rds: BTreeMap::new(),
            log: Vec::new(),
            fail_with: None,
            fail_placement: false,
        }));
        let listener = tokio::net::TcpListener::bind(listen).await.expect("bind the listen address");
        let addr = listener.local_addr().expect("addr");
        let mut this = LinstorDouble { url: format!("http://{addr}"), root: root.to_path_buf(), inner, task: None, addr };
        this.serve(listener);
        this
    }

    fn serve(&mut self, listener: tokio::net::TcpListener) {
        let app = Router::new()
            .route("/health", get(|| async { StatusCode::OK }))
            .route("/v1/controller/version", get(|| async { Json(json!({"version": "1.29.0", "rest_api_version": "1.22.0"})) }))
            .route("/v1/resource-definitions", get(rd_list).post(rd_create))
            .route("/v1/resource-definitions/{rsc}", get(rd_get).put(rd_modify).delete(rd_delete))
            .route("/v1/resource-definitions/{rsc}/volume-definitions", get(vd_list).post(vd_create))
            .route("/v1/resource-definitions/{rsc}/volume-definitions/{vnr}", put(vd_modify))
            .route("/v1/resource-definitions/{rsc}/autoplace", post(autoplace))
            .route("/v1/resource-groups/{rg}/spawn", post(spawn))
            .route("/v1/resource-definitions/{rsc}/resources/{node}/make-available", post(make_available))
            .route("/v1/resource-definitions/{rsc}/resources/{node}", axum::routing::delete(resource_delete))
            .route("/v1/view/resources", get(resources_view))
            .route("/v1/resource-definitions/{rsc}/snapshots", get(snapshots).post(snapshot_create))
            .route("/v1/resource-definitions/{rsc}/snapshots/{snap}", axum::routing::delete(snapshot_delete))
            .route("/v1/resource-definitions/{rsc}/snapshot-rollback/{snap}", post(snapshot_rollback))
            .with_state(self.inner.clone());
        self.task = Some(tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        }));
    }

    /// Stops listening: the controller is unreachable until [`Self::resume`].
    pub async fn stop(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
            let _ = t.await;
        }
    }

    pub async fn resume(&mut self) {
        let listener = tokio::net::TcpListener::bind(self.addr).await.expect("rebind");
        self.serve(listener);
    }

    /// Every mutating request is answered with this error until cleared.
    pub fn fail_with(&self, message: Option<&str>) {
        lock(&self.inner).fail_with = message.map(str::to_string);
    }

    /// The next autoplace fails with "not enough nodes" (after its
    /// resource definition was made).
    pub fn fail_next_placement(&self) {
        lock(&self.inner).fail_placement = true;
    }

    /// The requests received, as "METHOD PATH" (with the query of lists).
    pub fn log(&self) -> Vec<String> {
        lock(&self.inner).log.clone()
    }

    /// A resource made outside Drover, as `linstor resource-definition
    /// create` and friends make it: no Drover property, `size_kib` of
    /// storage placed on the storage nodes.
    pub fn make_foreign(&self, name: &str, size_kib: u64, props: &[(&str, &str)]) {
        let mut inner = lock(&self.inner);
        let props = props.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        assert!(inner.new_rd(name, props).is_ok(), "resource {name} made");
        assert_eq!(create_volume(&mut inner, name, size_kib).0, StatusCode::CREATED);
        assert_eq!(inner.place(name, 1, None).0, StatusCode::CREATED);
    }

    /// The properties of a resource definition.
    pub fn props(&self, name: &str) -> Option<BTreeMap<String, String>> {
        lock(&self.inner).rd(name).map(|rd| rd.props.clone())
    }

    /// The backing file of a volume (to damage it between attachments).
    pub fn image(&self, name: &str) -> Option<PathBuf> {
        let inner = lock(&self.inner);
        inner.rd(name).map(|rd| inner.image(&rd.name))
    }

    /// Where a machine on `node` finds the volume's device.
    pub fn node_root(&self, node: &str) -> PathBuf {
        self.root.join("nodes").join(node)
    }

    /// The loop device backing the volume on `node`.
    pub fn device(&self, name: &str, node: &str) -> Option<PathBuf> {
        lock(&self.inner).rd(name)?.resources.get(node)?.loop_device.clone()
    }

    /// Names of the volumes the controller holds, as they were created.
    pub fn volumes(&self) -> Vec<String> {
        lock(&self.inner).rds.values().map(|rd| rd.name.clone()).collect()
    }

    /// The nodes holding a resource of the volume.
    pub fn nodes_of(&self, name: &str) -> Vec<String> {
        lock(&self.inner).rd(name).map(|rd| rd.resources.keys().cloned().collect()).unwrap_or_default()
    }
}

impl Drop for LinstorDouble {
    fn drop(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
        }
        // Unmount whatever agents left mounted under the root, then free
        // the loop devices.
        let root = self.root.to_string_lossy().to_string();
        let mounts: Vec<String> = std::fs::read_to_string("/proc/self/mountinfo")
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.split(' ').nth(4).map(str::to_string))
            .filter(|m| m.starts_with(&root))
            .collect();
        for m in mounts.iter().rev() {
            let _ = nix::mount::umount2(m.as_str(), nix::mount::MntFlags::MNT_DETACH);
        }
        let inner = lock(&self.inner);
        for rd in inner.rds.values() {
            for (node, r) in &rd.resources {
                if let Some(d) = &r.loop_device {
                    inner.detach_loop(&rd.name, node, d);
                }
            }
        }
    }
}
