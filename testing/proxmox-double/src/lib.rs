//! A Proxmox VE API double for tests, following the documented interface
//! (`pve-docs` `apidata.js`) and what the real server does where the
//! documents are silent:
//!
//! - HTTPS on 127.0.0.1 with its own CA (the client pins it), every path
//!   under `/api2/json`, `Authorization: PVEAPIToken=USER@REALM!ID=SECRET`
//!   (missing: 401 "No ticket"; wrong: 401 "Authentication failed!");
//! - form-urlencoded bodies (query strings for GET and DELETE), answers
//!   `{"data": ...}`, errors with the message in the reason phrase and a
//!   body `{"data": null, "errors": {...}}` (400 for parameters, 500 for a
//!   failed handler, e.g. "VM is locked (clone)");
//! - `GET /cluster/nextid` answers the id as a string — only a suggestion:
//!   two clients asking at once get the same one, and the second clone to
//!   it fails with 500 "unable to create VM N: config file already exists"
//!   (tests make the next answers repeat one id to reproduce it);
//! - a clone takes `name` and `description` in its request and writes them
//!   into the new VM's configuration at once, with `lock: clone`;
//! - `smbios1` is refused above 512 characters, as its schema says;
//! - clones, configuration (`POST`), start, stop and delete answer a UPID;
//!   the task runs for a while (`status: running`), then `stopped` with an
//!   `exitstatus`; a clone holds `lock: clone` until its task ends;
//! - a linked clone with `storage` is refused as the real server does.
//!
//! `start` runs a hook the test gives (e.g. boot the clone as a real QEMU
//! VM with the SMBIOS serial it was configured with); `stop` and delete
//! run the stop hook. Tests can make the next task of a kind fail, or the
//! next configuration calls answer "VM is locked".

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Form, Json, Router};
use serde_json::{json, Value};

/// The template VM every double starts with.
pub const TEMPLATE_ID: u32 = 9000;
/// How long a task runs before it stops (unless a test sets another).
pub const TASK_TIME: Duration = Duration::from_millis(300);
/// The schema's limit on `smbios1`.
pub const SMBIOS1_MAX: usize = 512;

/// What a start hook is told about the VM.
#[derive(Debug, Clone)]
pub struct BootRequest {
    pub vmid: u32,
    pub name: String,
    pub cores: u32,
    pub memory_mib: u64,
    /// The SMBIOS type 1 serial, base64-decoded as Proxmox hands it to QEMU.
    pub smbios_serial: Option<String>,
    /// Data disks: (size in bytes, serial).
    pub disks: Vec<(u64, String)>,
    /// The boot disk's size in bytes.
    pub boot_disk_bytes: u64,
}

pub type Hook = Arc<dyn Fn(BootRequest) -> Pin<Box<dyn Future<Output = Result<(), String>> + Send>> + Send + Sync>;

#[derive(Debug, Clone)]
struct Vm {
    name: String,
    template: bool,
    config: BTreeMap<String, String>,
    running: bool,
    lock: Option<String>,
}

/// What a task does when it ends well.
type Finish = Box<dyn FnOnce(&mut Inner) + Send>;

struct Task {
    vmid: u32,
    done_at: Instant,
    exitstatus: String,
    log: Vec<String>,
    /// Runs once when the task is first seen finished.
    finish: Option<Finish>,
}

struct Inner {
    token: String,
    vms: BTreeMap<u32, Vm>,
    tasks: HashMap<String, Task>,
    task_order: Vec<String>,
    log: Vec<String>,
    fail_next: HashMap<String, String>,
    locked_answers: u32,
    next_task: u64,
    on_start: Option<Hook>,
    on_stop: Option<Hook>,
    task_time: Duration,
    /// The next nextid answers repeat this id (as if other clients asked
    /// at the same time), this many times.
    stale_nextid: Option<(u32, u32)>,
}

type Shared = Arc<Mutex<Inner>>;

pub struct ProxmoxDouble {
    pub addr: SocketAddr,
    /// The CA of the double's HTTPS certificate (PEM), for the client's
    /// `ca_file`.
    pub ca_pem: String,
    pub node: String,
    state: Shared,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for ProxmoxDouble {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn lock(state: &Shared) -> std::sync::MutexGuard<'_, Inner> {
    state.lock().unwrap_or_else(|e| e.into_inner())
}

impl ProxmoxDouble {
    /// Starts the double on a free loopback port; `token` is the one
    /// accepted (`USER@REALM!ID=SECRET`).
    pub async fn start(token: &str) -> Self {
        let node = "pve1".to_string();
        let mut vms = BTreeMap::new();
        let mut config = BTreeMap::new();
        config.insert("virtio0".into(), format!("local-lvm:base-{TEMPLATE_ID}-disk-0,size=1G"));
        config.insert("cores".into(), "1".into());
        config.insert("memory".into(), "512".into());
        config.insert("template".into(), "1".into());
        vms.insert(TEMPLATE_ID, Vm { name: "drover-template".into(), template: true, config, running: false, lock: None });
        let state: Shared = Arc::new(Mutex::new(Inner {
            token: token.to_string(),
            vms,
            tasks: HashMap::new(),
            task_order: Vec::new(),
            log: Vec::new(),
            fail_next: HashMap::new(),
            locked_answers: 0,
            next_task: 1,
            on_start: None,
            on_stop: None,
            task_time: TASK_TIME,
            stale_nextid: None,
        }));
        let (ca_pem, tls) = tls_config();
        let router = Router::new()
            .route("/api2/json/cluster/nextid", get(nextid))
            .route("/api2/json/nodes/{node}/qemu", get(list_vms))
            .route("/api2/json/nodes/{node}/qemu/{vmid}", axum::routing::delete(delete_vm))
            .route("/api2/json/nodes/{node}/qemu/{vmid}/clone", post(clone_vm))
            .route("/api2/json/nodes/{node}/qemu/{vmid}/config", get(get_config).post(set_config).put(set_config))
            .route("/api2/json/nodes/{node}/qemu/{vmid}/resize", axum::routing::put(resize))
            .route("/api2/json/nodes/{node}/qemu/{vmid}/status/current", get(status_current))
            .route("/api2/json/nodes/{node}/qemu/{vmid}/status/{action}", post(power))
            .route("/api2/json/nodes/{node}/tasks", get(list_tasks))
            .route("/api2/json/nodes/{node}/tasks/{upid}/status", get(task_status))
            .route("/api2/json/nodes/{node}/tasks/{upid}/log", get(task_log))
            .layer(axum::middleware::from_fn_with_state(state.clone(), auth))
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind the Proxmox double");
        let addr = listener.local_addr().expect("address");
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else { continue };
                let acceptor = acceptor.clone();
                let router = router.clone();
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else { return };
                    let service = hyper_util::service::TowerToHyperService::new(router);
                    let _ = hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new())
                        .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                        .await;
                });
            }
        });
        ProxmoxDouble { addr, ca_pem, node, state, task }
    }

    /// `https://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        format!("https://127.0.0.1:{}", self.addr.port())
    }

    pub fn on_start(&self, hook: Hook) {
        lock(&self.state).on_start = Some(hook);
    }

    pub fn on_stop(&self, hook: Hook) {
        lock(&self.state).on_stop = Some(hook);
    }

    /// The next task of `kind` (`qmclone`, `qmstart`, `qmstop`,
    /// `qmdestroy`, `qmconfig`) ends with `exitstatus` instead of OK.
    pub fn fail_next(&self, kind: &str, exitstatus: &str) {
        lock(&self.state).fail_next.insert(kind.into(), exitstatus.into());
    }

    /// The next `n` configuration calls answer "VM is locked".
    pub fn lock_next_config(&self, n: u32) {
        lock(&self.state).locked_answers = n;
    }

    /// The next `n` answers of `/cluster/nextid` are all the id the first
    /// of them gives: `n` clients asking at the same time.
    pub fn repeat_next_ids(&self, n: u32) {
        lock(&self.state).stale_nextid = Some((0, n));
    }

    /// How long tasks take from now on.
    pub fn set_task_time(&self, time: Duration) {
        lock(&self.state).task_time = time;
    }

    /// The lock a VM holds (`clone`, `config`), if any.
    pub fn lock_of(&self, vmid: u32) -> Option<String> {
        let mut inner = lock(&self.state);
        settle(&mut inner);
        inner.vms.get(&vmid).and_then(|v| v.lock.clone())
    }

    /// A VM made by hand (another tool, another tenant): a full clone of
    /// the template with the given name and description.
    pub fn make_vm(&self, vmid: u32, name: &str, description: &str) {
        let mut inner = lock(&self.state);
        let mut config = inner.vms[&TEMPLATE_ID].config.clone();
        config.remove("template");
        config.insert("description".into(), description.into());
        inner.vms.insert(vmid, Vm { name: name.into(), template: false, config, running: true, lock: None });
    }

    /// Every request: `METHOD PATH key=value&...` (the token never shows).
    pub fn log(&self) -> Vec<String> {
        lock(&self.state).log.clone()
    }

    /// The VMs (not templates): id, name, running, configuration.
    pub fn vms(&self) -> Vec<(u32, String, bool, BTreeMap<String, String>)> {
        let mut inner = lock(&self.state);
        settle(&mut inner);
        inner.vms.iter().filter(|(_, v)| !v.template).map(|(id, v)| (*id, v.name.clone(), v.running, v.config.clone())).collect()
    }
}

fn tls_config() -> (String, rustls::ServerConfig) {
    let ca_key = rcgen::KeyPair::generate().expect("key");
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params.distinguished_name.push(rcgen::DnType::CommonName, "Proxmox double CA");
    let ca = ca_params.self_signed(&ca_key).expect("CA");
    let key = rcgen::KeyPair::generate().expect("key");
    let params = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()]).expect("params");
    let issuer = rcgen::Issuer::from_params(&ca_params, &ca_key);
    let cert = params.signed_by(&key, &issuer).expect("server certificate");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_no_client_auth()
        .with_single_cert(vec![cert.der().clone(), ca.der().clone()], rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()))
        .expect("TLS configuration");
    let mut config = config;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    (ca.pem(), config)
}

/// An error answer: the message in the reason phrase, `errors` in the body.
fn error(status: StatusCode, message: &str, errors: Option<Value>) -> Response {
    let mut body = json!({ "data": null });
    if let Some(e) = errors {
        body["errors"] = e;
    }
    let mut response = (status, Json(body)).into_response();
    if let Ok(reason) = hyper::ext::ReasonPhrase::try_from(message.as_bytes().to_vec()) {
        response.extensions_mut().insert(reason);
    }
    response
}

fn data(value: Value) -> Response {
    Json(json!({ "data": value })).into_response()
}

async fn auth(State(state): State<Shared>, headers: HeaderMap, request: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let given = headers.get("authorization").and_then(|v| v.to_str().ok()).map(str::to_string);
    let want = format!("PVEAPIToken={}", lock(&state).token);
    match given {
        None => error(StatusCode::UNAUTHORIZED, "No ticket", None),
        Some(g) if g != want => {
            // The real server waits ~3 s before refusing; shorter here.
            tokio::time::sleep(Duration::from_millis(300)).await;
            error(StatusCode::UNAUTHORIZED, "Authentication failed!", None)
        }
        Some(_) => {
            let line = format!("{} {}{}", request.method(), request.uri().path(), request.uri().query().map(|q| format!("?{q}")).unwrap_or_default());
            lock(&state).log.push(line);
            next.run(request).await
        }
    }
}

/// Finishes the tasks whose time has come.
fn settle(inner: &mut Inner) {
    let now = Instant::now();
    let due: Vec<String> = inner.tasks.iter().filter(|(_, t)| t.done_at <= now && t.finish.is_some()).map(|(k, _)| k.clone()).collect();
    for upid in due {
        let finish = inner.tasks.get_mut(&upid).and_then(|t| t.finish.take());
        if let Some(f) = finish {
            f(inner);
        }
    }
}

fn new_task(inner: &mut Inner, node: &str, kind: &str, vmid: u32, finish: Finish) -> String {
    let n = inner.next_task;
    inner.next_task += 1;
    let upid = format!("UPID:{node}:{n:08X}:{:08X}:{:08X}:{kind}:{vmid}:root@pam!drover:", std::process::id(), n * 7);
    let exitstatus = inner.fail_next.remove(kind).unwrap_or_else(|| "OK".into());
    let ok = exitstatus == "OK";
    let mut log = vec![format!("starting {kind} of VM {vmid}")];
    log.push(if ok { "TASK OK".into() } else { format!("TASK ERROR: {exitstatus}") });
    let finish: Finish = if ok {
        finish
    } else {
        Box::new(move |inner: &mut Inner| {
            if let Some(vm) = inner.vms.get_mut(&vmid) {
                vm.lock = None;
            }
        })
    };
    let done_at = Instant::now() + inner.task_time;
    inner.tasks.insert(upid.clone(), Task { vmid, done_at, exitstatus, log, finish: Some(finish) });
    inner.task_order.push(upid.clone());
    upid
}

async fn nextid(State(state): State<Shared>) -> Response {
    let mut inner = lock(&state);
    let mut id = 100;
    while inner.vms.contains_key(&id) {
        id += 1;
    }
    match inner.stale_nextid {
        Some((0, n)) if n > 0 => inner.stale_nextid = Some((id, n - 1)),
        Some((held, n)) if n > 0 => {
            id = held;
            inner.stale_nextid = Some((held, n - 1));
        }
        _ => inner.stale_nextid = None,
    }
    data(Value::String(id.to_string()))
}

async fn list_vms(State(state): State<Shared>) -> Response {
    let mut inner = lock(&state);
    settle(&mut inner);
    let list: Vec<Value> = inner
        .vms
        .iter()
        .map(|(id, vm)| {
            let mut v = json!({ "vmid": id, "name": vm.name, "status": if vm.running { "running" } else { "stopped" } });
            if let Some(tags) = vm.config.get("tags") {
                v["tags"] = Value::String(tags.clone());
            }
            if vm.template {
                v["template"] = json!(1);
            }
            if let Some(l) = &vm.lock {
                v["lock"] = Value::String(l.clone());
            }
            v
        })
        .collect();
    data(Value::Array(list))
}

#[allow(clippy::result_large_err)] // an answer, built once and sent
fn vm_id(raw: &str) -> Result<u32, Response> {
    raw.parse().map_err(|_| error(StatusCode::BAD_REQUEST, "Parameter verification failed.", Some(json!({ "vmid": "type check ('integer') failed" }))))
}

fn missing(vmid: u32, node: &str) -> Response {
    error(StatusCode::INTERNAL_SERVER_ERROR, &format!("Configuration file 'nodes/{node}/qemu-server/{vmid}.conf' does not exist"), None)
}

async fn clone_vm(State(state): State<Shared>, Path((node, vmid)): Path<(String, String)>, Form(form): Form<HashMap<String, String>>) -> Response {
    let src = match vm_id(&vmid) {
        Ok(v) => v,
        Err(e) => return e,
    };
    let mut inner = lock(&state);
    settle(&mut inner);
    let Some(template) = inner.vms.get(&src).cloned() else { return missing(src, &node) };
    let Some(newid) = form.get("newid").and_then(|n| n.parse::<u32>().ok()) else {
        return error(StatusCode::BAD_REQUEST, "Parameter verification failed.", Some(json!({ "newid": "property is missing in input" })));
    };
    let full = form.get("full").map(String::as_str) == Some("1");
    if !full && form.contains_key("storage") && template.template {
        return error(
            StatusCode::BAD_REQUEST,
            "Parameter verification failed.",
            Some(json!({ "storage": "parameter 'storage' not allowed for linked clones" })),
        );
    }
    if inner.vms.contains_key(&newid) {
        return error(StatusCode::INTERNAL_SERVER_ERROR, &format!("unable to create VM {newid}: config file already exists"), None);
    }
    let mut config: BTreeMap<String, String> = template.config.iter().filter(|(k, _)| k.as_str() != "template").map(|(k, v)| (k.clone(), v.clone())).collect();
    if let Some(disk) = config.get_mut("virtio0") {
        let storage = form.get("storage").cloned().unwrap_or_else(|| "local-lvm".into());
        let size = disk.split(',').find(|p| p.starts_with("size=")).unwrap_or("size=1G").to_string();
        *disk = format!("{storage}:vm-{newid}-disk-0,{size}");
    }
    let name = form.get("name").cloned().unwrap_or_else(|| format!("Copy-of-VM-{}", template.name));
    match form.get("description") {
        Some(d) => {
            config.insert("description".into(), d.clone());
        }
        None => {
            config.remove("description");
        }
    }
    inner.vms.insert(newid, Vm { name, template: false, config, running: false, lock: Some("clone".into()) });
    let upid = new_task(
        &mut inner,
        &node,
        "qmclone",
        newid,
        Box::new(move |inner: &mut Inner| {
            if let Some(vm) = inner.vms.get_mut(&newid) {
                vm.lock = None;
            }
        }),
    );
    // A failed clone leaves no VM behind, as the real server cleans up.
    if inner.tasks.get(&upid).is_some_and(|t| t.exitstatus != "OK") {
        inner.vms.remove(&newid);
    }
    data(Value::String(upid))
}

async fn get_config(State(state): State<Shared>, Path((node, vmid)): Path<(String, String)>) -> Response {
    let id = match vm_id(&vmid) {
        Ok(v) => v,
        Err(e) => return e,
    };
    let mut inner = lock(&state);
    settle(&mut inner);
    let Some(vm) = inner.vms.get(&id) else { return missing(id, &node) };
    let mut config: serde_json::Map<String, Value> = vm.config.iter().map(|(k, v)| (k.clone(), Value::String(v.clone()))).collect();
    config.insert("name".into(), Value::String(vm.name.clone()));
    if let Some(l) = &vm.lock {
        config.insert("lock".into(), Value::String(l.clone()));
    }
    data(Value::Object(config))
}

async fn set_config(
    State(state): State<Shared>,
    method: Method,
    Path((node, vmid)): Path<(String, String)>,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    let id = match vm_id(&vmid) {
        Ok(v) => v,
        Err(e) => return e,
    };
    let mut inner = lock(&state);
    settle(&mut inner);
    if inner.locked_answers > 0 {
        inner.locked_answers -= 1;
        return error(StatusCode::INTERNAL_SERVER_ERROR, "VM is locked (clone)", None);
    }
    let Some(vm) = inner.vms.get(&id) else { return missing(id, &node) };
    if let Some(l) = &vm.lock {
        return error(StatusCode::INTERNAL_SERVER_ERROR, &format!("VM is locked ({l})"), None);
    }
    let mut errors = serde_json::Map::new();
    let mut changes = BTreeMap::new();
    for (key, value) in &form {
        match key.as_str() {
            "cores" | "memory" if value.parse::<u64>().is_err() => {
                errors.insert(key.clone(), json!("type check ('integer') failed"));
            }
            "tags" | "cores" | "memory" | "description" | "name" => {
                changes.insert(key.clone(), value.clone());
            }
            "smbios1" if value.len() > SMBIOS1_MAX => {
                errors.insert(key.clone(), json!(format!("value may only be {SMBIOS1_MAX} characters long")));
            }
            "smbios1" => {
                if !value.split(',').all(|p| p.starts_with("serial=") || p.starts_with("uuid=") || p == "base64=1") {
                    errors.insert(key.clone(), json!("invalid format"));
                } else {
                    changes.insert(key.clone(), value.clone());
                }
            }
            k if k.starts_with("virtio") => {
                // STORAGE:SIZE_GIB[,serial=...] allocates a new disk.
                let (alloc, rest) = value.split_once(',').unwrap_or((value, ""));
                let Some((storage, size)) = alloc.split_once(':').filter(|(_, s)| s.parse::<u64>().is_ok()) else {
                    errors.insert(key.clone(), json!("invalid format - expected STORAGE:SIZE"));
                    continue;
                };
                if rest.split(',').any(|p| p.strip_prefix("serial=").is_some_and(|s| s.len() > 20)) {
                    errors.insert(key.clone(), json!("serial: value may only be 20 characters long"));
                    continue;
                }
                let n = k.trim_start_matches("virtio");
                let mut disk = format!("{storage}:vm-{id}-disk-{n},size={size}G");
                if !rest.is_empty() {
                    disk = format!("{disk},{rest}");
                }
                changes.insert(key.clone(), disk);
            }
            other => {
                errors.insert(other.to_string(), json!("property is not defined in schema and the schema does not allow additional properties"));
            }
        }
    }
    if !errors.is_empty() {
        return error(StatusCode::BAD_REQUEST, "Parameter verification failed.", Some(Value::Object(errors)));
    }
    let apply = move |inner: &mut Inner| {
        if let Some(vm) = inner.vms.get_mut(&id) {
            vm.lock = None;
            for (k, v) in changes {
                if k == "name" {
                    vm.name = v;
                } else {
                    vm.config.insert(k, v);
                }
            }
        }
    };
    if method == Method::PUT {
        apply(&mut inner);
        return data(Value::Null);
    }
    if let Some(vm) = inner.vms.get_mut(&id) {
        vm.lock = Some("config".into());
    }
    let upid = new_task(&mut inner, &node, "qmconfig", id, Box::new(apply));
    data(Value::String(upid))
}

async fn resize(State(state): State<Shared>, Path((node, vmid)): Path<(String, String)>, Form(form): Form<HashMap<String, String>>) -> Response {
    let id = match vm_id(&vmid) {
        Ok(v) => v,
        Err(e) => return e,
    };
    let mut inner = lock(&state);
    settle(&mut inner);
    let Some(vm) = inner.vms.get_mut(&id) else { return missing(id, &node) };
    let (Some(disk), Some(size)) = (form.get("disk"), form.get("size")) else {
        return error(StatusCode::BAD_REQUEST, "Parameter verification failed.", Some(json!({ "disk": "property is missing in input" })));
    };
    let Some(current) = vm.config.get(disk).cloned() else {
        return error(StatusCode::INTERNAL_SERVER_ERROR, &format!("disk '{disk}' does not exist"), None);
    };
    let gib: u64 = size.trim_start_matches('+').trim_end_matches('G').parse().unwrap_or(0);
    let old: u64 = current.split(',').find_map(|p| p.strip_prefix("size=")).and_then(|s| s.trim_end_matches('G').parse().ok()).unwrap_or(0);
    let new = if size.starts_with('+') { old + gib } else { gib };
    if new < old {
        return error(StatusCode::INTERNAL_SERVER_ERROR, "shrinking disks is not supported", None);
    }
    let rest: Vec<&str> = current.split(',').filter(|p| !p.starts_with("size=")).collect();
    vm.config.insert(disk.clone(), format!("{},size={new}G", rest.join(",")));
    data(Value::Null)
}

async fn status_current(State(state): State<Shared>, Path((node, vmid)): Path<(String, String)>) -> Response {
    let id = match vm_id(&vmid) {
        Ok(v) => v,
        Err(e) => return e,
    };
    let mut inner = lock(&state);
    settle(&mut inner);
    let Some(vm) = inner.vms.get(&id) else { return missing(id, &node) };
    let status = if vm.running { "running" } else { "stopped" };
    data(json!({ "vmid": id, "name": vm.name, "status": status, "qmpstatus": status }))
}

fn boot_request(id: u32, vm: &Vm) -> BootRequest {
    use base64::Engine;
    let serial = vm.config.get("smbios1").and_then(|s| {
        let base64 = s.split(',').any(|p| p == "base64=1");
        let raw = s.split(',').find_map(|p| p.strip_prefix("serial="))?;
        if base64 {
            base64::engine::general_purpose::STANDARD.decode(raw).ok().map(|b| String::from_utf8_lossy(&b).to_string())
        } else {
            Some(raw.to_string())
        }
    });
    let size =
        |v: &str| -> u64 { v.split(',').find_map(|p| p.strip_prefix("size=")).and_then(|s| s.trim_end_matches('G').parse::<u64>().ok()).unwrap_or(1) << 30 };
    let disks = vm
        .config
        .iter()
        .filter(|(k, _)| k.starts_with("virtio") && k.as_str() != "virtio0")
        .map(|(_, v)| (size(v), v.split(',').find_map(|p| p.strip_prefix("serial=")).unwrap_or("").to_string()))
        .collect();
    BootRequest {
        vmid: id,
        name: vm.name.clone(),
        cores: vm.config.get("cores").and_then(|c| c.parse().ok()).unwrap_or(1),
        memory_mib: vm.config.get("memory").and_then(|c| c.parse().ok()).unwrap_or(512),
        smbios_serial: serial,
        disks,
        boot_disk_bytes: vm.config.get("virtio0").map(|v| size(v)).unwrap_or(1 << 30),
    }
}

async fn power(State(state): State<Shared>, Path((node, vmid, action)): Path<(String, String, String)>) -> Response {
    let id = match vm_id(&vmid) {
        Ok(v) => v,
        Err(e) => return e,
    };
    let (hook, request, kind) = {
        let mut inner = lock(&state);
        settle(&mut inner);
        let Some(vm) = inner.vms.get(&id) else { return missing(id, &node) };
        if let Some(l) = &vm.lock {
            return error(StatusCode::INTERNAL_SERVER_ERROR, &format!("VM is locked ({l})"), None);
        }
        match action.as_str() {
            "start" if vm.running => return error(StatusCode::INTERNAL_SERVER_ERROR, &format!("VM {id} already running"), None),
            "start" => (inner.on_start.clone(), boot_request(id, vm), "qmstart"),
            "stop" | "shutdown" => (inner.on_stop.clone(), boot_request(id, vm), "qmstop"),
            _ => return error(StatusCode::NOT_IMPLEMENTED, &format!("Method 'POST /nodes/{node}/qemu/{id}/status/{action}' not implemented"), None),
        }
    };
    // A failure the test asked for: the hook does not run.
    let failing = lock(&state).fail_next.contains_key(kind);
    let outcome = match (&hook, failing) {
        (Some(hook), false) => hook(request).await,
        _ => Ok(()),
    };
    let mut inner = lock(&state);
    if let Err(e) = outcome {
        inner.fail_next.insert(kind.into(), format!("start failed: {e}"));
    }
    let running = kind == "qmstart";
    let upid = new_task(
        &mut inner,
        &node,
        kind,
        id,
        Box::new(move |inner: &mut Inner| {
            if let Some(vm) = inner.vms.get_mut(&id) {
                vm.running = running;
            }
        }),
    );
    data(Value::String(upid))
}

async fn delete_vm(State(state): State<Shared>, Path((node, vmid)): Path<(String, String)>, Query(query): Query<HashMap<String, String>>) -> Response {
    let id = match vm_id(&vmid) {
        Ok(v) => v,
        Err(e) => return e,
    };
    let mut inner = lock(&state);
    settle(&mut inner);
    let Some(vm) = inner.vms.get(&id) else { return missing(id, &node) };
    if let Some(l) = &vm.lock {
        return error(StatusCode::INTERNAL_SERVER_ERROR, &format!("VM is locked ({l})"), None);
    }
    if vm.running {
        return error(StatusCode::INTERNAL_SERVER_ERROR, &format!("VM {id} is running - destroy failed"), None);
    }
    if vm.template {
        return error(StatusCode::INTERNAL_SERVER_ERROR, "cannot delete a template in this double", None);
    }
    let _purge = query.get("purge").map(String::as_str) == Some("1");
    let upid = new_task(
        &mut inner,
        &node,
        "qmdestroy",
        id,
        Box::new(move |inner: &mut Inner| {
            inner.vms.remove(&id);
        }),
    );
    data(Value::String(upid))
}

async fn list_tasks(State(state): State<Shared>, Query(query): Query<HashMap<String, String>>) -> Response {
    let inner = lock(&state);
    let vmid: Option<u32> = query.get("vmid").and_then(|v| v.parse().ok());
    let limit: usize = query.get("limit").and_then(|v| v.parse().ok()).unwrap_or(50);
    let list: Vec<Value> = inner
        .task_order
        .iter()
        .rev()
        .filter(|u| vmid.is_none_or(|v| inner.tasks.get(*u).is_some_and(|t| t.vmid == v)))
        .take(limit)
        .map(|u| json!({ "upid": u }))
        .collect();
    data(Value::Array(list))
}

async fn task_status(State(state): State<Shared>, Path((_node, upid)): Path<(String, String)>) -> Response {
    let mut inner = lock(&state);
    settle(&mut inner);
    let Some(task) = inner.tasks.get(&upid) else {
        return error(StatusCode::INTERNAL_SERVER_ERROR, &format!("no such task '{upid}'"), None);
    };
    if task.done_at > Instant::now() {
        return data(json!({ "upid": upid, "status": "running" }));
    }
    data(json!({ "upid": upid, "status": "stopped", "exitstatus": task.exitstatus }))
}

async fn task_log(State(state): State<Shared>, Path((_node, upid)): Path<(String, String)>) -> Response {
    let inner = lock(&state);
    let Some(task) = inner.tasks.get(&upid) else {
        return error(StatusCode::INTERNAL_SERVER_ERROR, &format!("no such task '{upid}'"), None);
    };
    let lines: Vec<Value> = task.log.iter().enumerate().map(|(n, t)| json!({ "n": n + 1, "t": t })).collect();
    data(Value::Array(lines))
}
