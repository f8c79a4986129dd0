//! Proxmox VE over its REST API (`/api2/json`), with an API token
//! (`Authorization: PVEAPIToken=USER@REALM!TOKENID=SECRET`, read from a
//! mode-0600 file). The server's certificate is checked against the pinned
//! CA (`ca_file`) or the system's roots; never turned off.
//!
//! A VM is a full clone of the template whose clone request itself names
//! it and writes its identity into its description (`drover-fleet`,
//! `drover-provider`, `drover-provision`), so that the VM carries it from
//! the moment it exists — a coordinator killed during the clone finds it
//! again. Then it is configured (cores, memory, data disks
//! `virtioN=STORAGE:GiB,serial=vol-NAME`, the seed in the SMBIOS serial,
//! tags `drover`, the fleet and the provision), its boot disk grown, and
//! started. Every start, stop and delete reads the VM's configuration back
//! first and acts only on the provision's own VM: VM ids are reused.
//!
//! `/cluster/nextid` is a suggestion: two clients asking at once get the
//! same id, and the second clone fails with "config file already exists";
//! the clone is then retried with a fresh id. Long operations answer a
//! UPID; the client polls the task until `status=stopped` and treats any
//! `exitstatus` but `OK` as failure, with the task log's tail. "VM is
//! locked" answers — of a request, or of a task that could not take the
//! VM's lock — are retried with backoff.

use std::path::Path;
use std::time::Duration;

use base64::Engine;
use reqwest::{Method, StatusCode};
use serde_json::Value;

use drover_protocol::seed::Seed;

use super::{tail_text, HypervisorError, Owner, Removed, VmIdentity, VmInfo, VmSpec};
use crate::config::ProxmoxProviderConfig;

/// The tag every VM Drover makes carries (besides its fleet and provision).
pub const DROVER_TAG: &str = "drover";
/// Proxmox's limit on the `smbios1` option.
pub const SMBIOS1_MAX: usize = 512;
/// Clones retried with a fresh id after "already exists".
const CLONE_ATTEMPTS: usize = 5;
/// How many VMs' configurations one listing reads at once.
const READ_AHEAD: usize = 8;
/// Data disks start at `virtio1` (`virtio0` is the template's boot disk).
const FIRST_DATA_DISK: usize = 1;
/// How long "VM is locked" answers are retried.
const LOCK_RETRY: Duration = Duration::from_secs(60);

pub struct Proxmox {
    config: ProxmoxProviderConfig,
    owner: Owner,
    base: String,
    http: reqwest::Client,
}

/// Reads `USER@REALM!TOKENID=SECRET` from a file only its owner can read.
fn read_token(path: &Path) -> Result<String, HypervisorError> {
    use std::os::unix::fs::PermissionsExt;
    let config = |m: String| HypervisorError::Auth(m);
    let meta = std::fs::metadata(path).map_err(|e| config(format!("cannot read the Proxmox token_file {}: {e}", path.display())))?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(config(format!("the Proxmox token_file {} is readable by others (mode {mode:o}); run `chmod 600 {}`", path.display(), path.display())));
    }
    let text = std::fs::read_to_string(path).map_err(|e| config(format!("cannot read the Proxmox token_file {}: {e}", path.display())))?;
    let token = text.trim().to_string();
    let well_formed = token
        .split_once('!')
        .is_some_and(|(user, rest)| user.contains('@') && rest.split_once('=').is_some_and(|(id, secret)| !id.is_empty() && !secret.is_empty()));
    if !well_formed || token.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(config(format!("the Proxmox token_file {} must hold one line USER@REALM!TOKENID=SECRET (from `pveum user token add`)", path.display())));
    }
    Ok(token)
}

/// The seed as Proxmox's `smbios1` option carries it: base64, decoded by
/// Proxmox before QEMU gets it.
pub fn smbios1(seed: &Seed) -> String {
    let text = seed.encode(';');
    format!("serial={},base64=1", base64::engine::general_purpose::STANDARD.encode(text))
}

impl Proxmox {
    pub fn new(config: ProxmoxProviderConfig, owner: Owner) -> Result<Self, HypervisorError> {
        drover_net::tls::install_default_provider();
        let mut builder = reqwest::Client::builder().timeout(config.request_timeout).connect_timeout(Duration::from_secs(10).min(config.request_timeout));
        if let Some(ca) = &config.ca_file {
            let pem = std::fs::read(ca).map_err(|e| HypervisorError::Unavailable(format!("cannot read the Proxmox ca_file {}: {e}", ca.display())))?;
            let cert = reqwest::Certificate::from_pem(&pem)
                .map_err(|e| HypervisorError::Unavailable(format!("the Proxmox ca_file {} is not a PEM certificate: {e}", ca.display())))?;
            builder = builder.tls_built_in_root_certs(false).add_root_certificate(cert);
        }
        let http = builder.build().map_err(|e| HypervisorError::Unavailable(format!("cannot build the Proxmox client: {e}")))?;
        let base = format!("{}/api2/json", config.endpoint.trim_end_matches('/'));
        Ok(Proxmox { config, owner, base, http })
    }

    fn node_path(&self, rest: &str) -> String {
        format!("/nodes/{}{rest}", self.config.node)
    }

    /// One call; `data` of the answer. A "VM is locked" answer is retried
    /// with backoff; other failures carry Proxmox's message.
    async fn call(&self, method: Method, path: &str, form: &[(&str, String)]) -> Result<Value, HypervisorError> {
        let token = read_token(&self.config.token_file)?;
        let started = tokio::time::Instant::now();
        let mut pause = Duration::from_millis(200);
        loop {
            let url = format!("{}{path}", self.base);
            let mut request = self.http.request(method.clone(), &url).header("Authorization", format!("PVEAPIToken={token}"));
            if !form.is_empty() {
                request = if method == Method::GET || method == Method::DELETE { request.query(form) } else { request.form(form) };
            }
            let response = request.send().await.map_err(|e| {
                HypervisorError::Unavailable(format!("cannot reach Proxmox at {}: {}", self.config.endpoint, drover_net::client::error_chain(&e)))
            })?;
            let status = response.status();
            let reason = response
                .extensions()
                .get::<hyper::ext::ReasonPhrase>()
                .map(|r| String::from_utf8_lossy(r.as_bytes()).to_string())
                .unwrap_or_else(|| status.canonical_reason().unwrap_or("").to_string());
            let body: Value = response.json().await.unwrap_or(Value::Null);
            if status.is_success() {
                return Ok(body.get("data").cloned().unwrap_or(Value::Null));
            }
            let mut message = body.get("message").and_then(Value::as_str).map(str::trim).filter(|m| !m.is_empty()).unwrap_or(&reason).to_string();
            if let Some(errors) = body.get("errors").and_then(Value::as_object) {
                let detail: Vec<String> = errors.iter().map(|(k, v)| format!("{k}: {}", v.as_str().unwrap_or(&v.to_string()).trim())).collect();
                if !detail.is_empty() {
                    message = format!("{message} ({})", detail.join("; "));
                }
            }
            if message.contains("is locked") && started.elapsed() < LOCK_RETRY {
                tracing::info!(path, message = %message, "Proxmox VM is locked; retrying");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(5));
                continue;
            }
            return Err(match status {
                StatusCode::UNAUTHORIZED => HypervisorError::Auth(format!(
                    "Proxmox refused the API token ({status} {message}); check that token_file {} holds a valid USER@REALM!TOKENID=SECRET",
                    self.config.token_file.display()
                )),
                StatusCode::FORBIDDEN => HypervisorError::Auth(format!(
                    "Proxmox denied {method} {path} ({message}); give the token's user the VM.Allocate, VM.Clone, VM.Config.*, VM.PowerMgmt and Datastore.AllocateSpace privileges"
                )),
                _ if message.contains("does not exist") => HypervisorError::NotFound(format!("{path}: {message}")),
                _ => HypervisorError::Failed(format!("Proxmox {method} {path} failed ({status}): {message}")),
            });
        }
    }

    /// Waits for a task (by its UPID) to stop; anything but `OK` fails
    /// with the log's tail.
    async fn wait_task(&self, what: &str, upid: &Value) -> Result<(), HypervisorError> {
        let upid = upid.as_str().ok_or_else(|| HypervisorError::Unavailable(format!("Proxmox answered {what} without a task id: {upid}")))?;
        let path = self.node_path(&format!("/tasks/{}", urlencode(upid)));
        let deadline = tokio::time::Instant::now() + self.config.task_timeout;
        let mut pause = Duration::from_millis(100);
        loop {
            let status = self.call(Method::GET, &format!("{path}/status"), &[]).await?;
            if status.get("status").and_then(Value::as_str) == Some("stopped") {
                let exit = status.get("exitstatus").and_then(Value::as_str).unwrap_or("unknown");
                if exit == "OK" {
                    return Ok(());
                }
                let log = self.task_log(&path).await;
                return Err(HypervisorError::Failed(format!("Proxmox task {what} failed: {exit}\n{log}")));
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(HypervisorError::Failed(format!("Proxmox task {what} did not finish within {:?}", self.config.task_timeout)));
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_secs(2));
        }
    }

    async fn task_log(&self, task_path: &str) -> String {
        let Ok(lines) = self.call(Method::GET, &format!("{task_path}/log"), &[("limit", "1000".into())]).await else { return String::new() };
        let text: Vec<&str> = lines.as_array().into_iter().flatten().filter_map(|l| l.get("t").and_then(Value::as_str)).collect();
        tail_text(&text.join("\n"), 2000)
    }

    async fn vm_config(&self, vm_id: &str) -> Result<Value, HypervisorError> {
        self.call(Method::GET, &self.node_path(&format!("/qemu/{vm_id}/config")), &[]).await
    }

    /// The identity VM `vm_id` carries in its description; `None` when no
    /// VM has that id, `Some(None)` when it carries none.
    async fn identity(&self, vm_id: &str) -> Result<Option<Option<VmIdentity>>, HypervisorError> {
        check_vm_id(vm_id)?;
        match self.vm_config(vm_id).await {
            Ok(config) => Ok(Some(config.get("description").and_then(Value::as_str).and_then(VmIdentity::from_text))),
            Err(HypervisorError::NotFound(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Whether VM `vm_id` is `provision`'s ([`Owner::check`]).
    async fn checked(&self, vm_id: &str, provision: &str) -> Result<bool, HypervisorError> {
        let found = self.identity(vm_id).await?;
        self.owner.check(vm_id, provision, found)
    }

    /// Runs `op` (a request and its task) again while Proxmox answers that
    /// the VM is locked — by the request, or by a task that could not take
    /// the VM's lock ("can't lock file ... got timeout").
    async fn retry_locked<T, F, Fut>(&self, what: &str, op: F) -> Result<T, HypervisorError>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = Result<T, HypervisorError>>,
    {
        let started = tokio::time::Instant::now();
        let mut pause = Duration::from_millis(200);
        loop {
            match op().await {
                Err(HypervisorError::Failed(m)) if locked(&m) && started.elapsed() < LOCK_RETRY => {
                    tracing::info!(what, message = %m.lines().next().unwrap_or_default(), "Proxmox VM is locked; retrying");
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_secs(5));
                }
                other => return other,
            }
        }
    }

    /// The description a VM is cloned with: its name and its identity.
    fn description(&self, spec: &VmSpec) -> String {
        format!("Drover machine {}\n{}", spec.name, self.owner.identity(&spec.provision).to_text())
    }
}

/// A failure that says the VM was locked.
fn locked(message: &str) -> bool {
    message.contains("is locked") || message.contains("can't lock file")
}

fn urlencode(text: &str) -> String {
    form_urlencoded::byte_serialize(text.as_bytes()).collect()
}

fn check_vm_id(vm_id: &str) -> Result<(), HypervisorError> {
    if vm_id.is_empty() || !vm_id.bytes().all(|b| b.is_ascii_digit()) {
        return Err(HypervisorError::NotFound(vm_id.to_string()));
    }
    Ok(())
}

/// Whole GiB, rounded up (Proxmox sizes disks in GiB).
fn gib(bytes: u64) -> u64 {
    bytes.div_ceil(1 << 30).max(1)
}

#[async_trait::async_trait]
impl super::Hypervisor for Proxmox {
    fn kind(&self) -> &'static str {
        "proxmox"
    }

    fn owner(&self) -> &Owner {
        &self.owner
    }

    fn keeps_disks(&self) -> bool {
        false
    }

    fn check(&self, spec: &VmSpec, seed: &Seed) -> Result<(), HypervisorError> {
        let smbios = smbios1(seed);
        if smbios.len() > SMBIOS1_MAX {
            return Err(HypervisorError::Unsupported(format!(
                "machine {}: its seed takes {} characters in Proxmox's smbios1 option, whose limit is {SMBIOS1_MAX}; use a shorter server name, coordinator address or machine name",
                spec.name,
                smbios.len()
            )));
        }
        Ok(())
    }

    async fn create(&self, spec: &VmSpec, seed: &Seed) -> Result<String, HypervisorError> {
        self.check(spec, seed)?;
        let template = spec.template.clone().unwrap_or_else(|| self.config.template.clone());
        check_vm_id(&template)?;
        let mut attempt = 0;
        let (vm_id, clone) = loop {
            attempt += 1;
            let next = self.call(Method::GET, "/cluster/nextid", &[]).await?;
            // The id comes as a JSON string ("100"), sometimes a number.
            let vm_id = match &next {
                Value::String(s) => s.clone(),
                Value::Number(n) => n.to_string(),
                other => return Err(HypervisorError::Unavailable(format!("Proxmox answered nextid with {other}"))),
            };
            check_vm_id(&vm_id)?;
            let answer = self
                .call(
                    Method::POST,
                    &self.node_path(&format!("/qemu/{template}/clone")),
                    &[
                        ("newid", vm_id.clone()),
                        ("name", spec.name.clone()),
                        ("description", self.description(spec)),
                        ("full", "1".into()),
                        ("storage", self.config.storage.clone()),
                        ("target", self.config.node.clone()),
                    ],
                )
                .await;
            match answer {
                Ok(clone) => break (vm_id, clone),
                // Another client took the id nextid suggested.
                Err(HypervisorError::Failed(m)) if m.contains("already exists") && attempt < CLONE_ATTEMPTS => {
                    tracing::info!(vm = %vm_id, attempt, provision = %spec.provision, "Proxmox VM id taken meanwhile; cloning with a fresh id");
                }
                Err(e) => return Err(e),
            }
        };
        self.wait_task(&format!("clone of {template} to {vm_id}"), &clone).await?;
        // From here the VM exists, carrying its identity: a failure deletes it.
        let configured = async {
            let mut form: Vec<(&str, String)> = vec![
                ("cores", spec.cores.to_string()),
                ("memory", (spec.memory_bytes >> 20).to_string()),
                ("tags", format!("{DROVER_TAG};{};{}", self.owner.fleet, spec.provision)),
                ("smbios1", smbios1(seed)),
            ];
            let keys: Vec<String> = (0..spec.disks.len()).map(|i| format!("virtio{}", i + FIRST_DATA_DISK)).collect();
            for (key, disk) in keys.iter().zip(&spec.disks) {
                form.push((key.as_str(), format!("{}:{},serial={}", self.config.storage, gib(disk.size_bytes), disk.serial)));
            }
            // POST is the asynchronous form: it answers a task when disks
            // are allocated.
            self.retry_locked("configuration", || async {
                let answer = self.call(Method::POST, &self.node_path(&format!("/qemu/{vm_id}/config")), &form).await?;
                if !answer.is_null() {
                    self.wait_task(&format!("configuration of {vm_id}"), &answer).await?;
                }
                Ok(())
            })
            .await?;
            let current = self.vm_config(&vm_id).await?;
            let root = &self.config.root_disk;
            let have = current.get(root).and_then(Value::as_str).and_then(disk_size_bytes);
            if have.is_none_or(|have| have < spec.disk_bytes) {
                let answer = self
                    .call(
                        Method::PUT,
                        &self.node_path(&format!("/qemu/{vm_id}/resize")),
                        &[("disk", root.clone()), ("size", format!("{}G", gib(spec.disk_bytes)))],
                    )
                    .await?;
                if !answer.is_null() {
                    self.wait_task(&format!("resize of {vm_id}"), &answer).await?;
                }
            }
            Ok::<_, HypervisorError>(())
        }
        .await;
        if let Err(e) = configured {
            if let Err(d) = self.delete(&vm_id, &spec.provision, false).await {
                tracing::warn!(vm = %vm_id, error = %d, "the VM whose configuration failed could not be deleted");
            }
            return Err(e);
        }
        Ok(vm_id)
    }

    async fn start(&self, vm_id: &str, provision: &str) -> Result<(), HypervisorError> {
        if !self.checked(vm_id, provision).await? {
            return Err(HypervisorError::NotFound(vm_id.to_string()));
        }
        let status = self.call(Method::GET, &self.node_path(&format!("/qemu/{vm_id}/status/current")), &[]).await?;
        if status.get("status").and_then(Value::as_str) == Some("running") {
            return Ok(());
        }
        self.retry_locked("start", || async {
            let task = self.call(Method::POST, &self.node_path(&format!("/qemu/{vm_id}/status/start")), &[]).await?;
            self.wait_task(&format!("start of {vm_id}"), &task).await
        })
        .await
    }

    async fn stop(&self, vm_id: &str, provision: &str) -> Result<(), HypervisorError> {
        if !self.checked(vm_id, provision).await? {
            return Ok(());
        }
        let status = match self.call(Method::GET, &self.node_path(&format!("/qemu/{vm_id}/status/current")), &[]).await {
            Ok(s) => s,
            Err(HypervisorError::NotFound(_)) => return Ok(()),
            Err(e) => return Err(e),
        };
        if status.get("status").and_then(Value::as_str) != Some("running") {
            return Ok(());
        }
        self.retry_locked("stop", || async {
            let task = self.call(Method::POST, &self.node_path(&format!("/qemu/{vm_id}/status/stop")), &[]).await?;
            self.wait_task(&format!("stop of {vm_id}"), &task).await
        })
        .await
    }

    async fn delete(&self, vm_id: &str, provision: &str, keep_disks: bool) -> Result<Removed, HypervisorError> {
        if keep_disks {
            return Err(HypervisorError::Unsupported(
                "the Proxmox provider cannot keep a VM's disks when it deletes the VM (Proxmox deletes a VM's disks with it); move them to another VM with `qm disk move --target-vmid` first, or destroy without --keep-volumes".into(),
            ));
        }
        if !self.checked(vm_id, provision).await? {
            return Ok(Removed::Gone);
        }
        self.stop(vm_id, provision).await?;
        let removed = self
            .retry_locked("deletion", || async {
                let task = match self
                    .call(Method::DELETE, &self.node_path(&format!("/qemu/{vm_id}")), &[("purge", "1".into()), ("destroy-unreferenced-disks", "1".into())])
                    .await
                {
                    Ok(task) => task,
                    Err(HypervisorError::NotFound(_)) => return Ok(Removed::Gone),
                    Err(e) => return Err(e),
                };
                self.wait_task(&format!("deletion of {vm_id}"), &task).await.map(|()| Removed::Deleted)
            })
            .await?;
        Ok(removed)
    }

    async fn list(&self) -> Result<Vec<VmInfo>, HypervisorError> {
        use futures_util::StreamExt;
        let vms = self.call(Method::GET, &self.node_path("/qemu"), &[]).await?;
        let candidates: Vec<(String, bool)> = vms
            .as_array()
            .into_iter()
            .flatten()
            .filter(|vm| vm.get("template").and_then(Value::as_u64) != Some(1))
            .filter_map(|vm| {
                let vm_id = match vm.get("vmid") {
                    Some(Value::Number(n)) => n.to_string(),
                    Some(Value::String(s)) => s.clone(),
                    _ => return None,
                };
                Some((vm_id, vm.get("status").and_then(Value::as_str) == Some("running")))
            })
            .collect();
        // The identity is in each VM's description, which the list does not
        // carry: read it back (a clone cut short has no tags yet, but has it).
        let found: Vec<Result<Option<VmInfo>, HypervisorError>> = futures_util::stream::iter(candidates)
            .map(|(vm_id, running)| async move {
                Ok(match self.identity(&vm_id).await? {
                    Some(Some(identity)) if self.owner.owns(&identity) => Some(VmInfo { vm_id, provision: identity.provision, running }),
                    _ => None,
                })
            })
            .buffer_unordered(READ_AHEAD)
            .collect()
            .await;
        let mut out = Vec::new();
        for f in found {
            out.extend(f?);
        }
        out.sort_by_key(|v| v.vm_id.parse::<u64>().unwrap_or(0));
        Ok(out)
    }

    async fn migrate(&self, vm_id: &str, provision: &str) -> Result<bool, HypervisorError> {
        check_vm_id(vm_id)?;
        let config = match self.vm_config(vm_id).await {
            Ok(c) => c,
            Err(HypervisorError::NotFound(_)) => return Ok(false),
            Err(e) => return Err(e),
        };
        let description = config.get("description").and_then(Value::as_str).unwrap_or("");
        let tags: Vec<&str> = config.get("tags").and_then(Value::as_str).unwrap_or("").split([';', ',', ' ']).collect();
        let old_mark = description.starts_with(&format!("Drover provision {provision} ")) && tags.contains(&DROVER_TAG) && tags.contains(&provision);
        if VmIdentity::from_text(description).is_some() || !old_mark {
            return Ok(false);
        }
        let name = config.get("name").and_then(Value::as_str).unwrap_or("");
        let text = format!("Drover machine {name}\n{}", self.owner.identity(provision).to_text());
        self.retry_locked("identity", || async {
            self.call(Method::PUT, &self.node_path(&format!("/qemu/{vm_id}/config")), &[("description", text.clone())]).await.map(drop)
        })
        .await?;
        tracing::info!(vm = vm_id, provision, "a VM made before identities now carries this fleet's");
        Ok(true)
    }

    async fn console_tail(&self, vm_id: &str) -> String {
        // The API has no serial console log; the VM's newest task log is
        // what it can show.
        let Ok(tasks) = self.call(Method::GET, &self.node_path("/tasks"), &[("vmid", vm_id.to_string()), ("limit", "1".into())]).await else {
            return String::new();
        };
        let Some(upid) = tasks.as_array().and_then(|t| t.first()).and_then(|t| t.get("upid")).and_then(Value::as_str) else {
            return String::new();
        };
        let log = self.task_log(&self.node_path(&format!("/tasks/{}", urlencode(upid)))).await;
        format!("(Proxmox task {upid})\n{log}")
    }
}

/// The size in a disk option (`local-lvm:vm-100-disk-0,size=32G`).
fn disk_size_bytes(option: &str) -> Option<u64> {
    let size = option.split(',').find_map(|p| p.strip_prefix("size="))?;
    let (number, unit) = size.split_at(size.find(|c: char| !c.is_ascii_digit())?);
    let n: u64 = number.parse().ok()?;
    let shift = match unit {
        "K" => 10,
        "M" => 20,
        "G" => 30,
        "T" => 40,
        _ => return None,
    };
    Some(n << shift)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disk_sizes_and_gib_rounding() {
        assert_eq!(disk_size_bytes("local-lvm:vm-100-disk-0,size=32G"), Some(32 << 30));
        assert_eq!(disk_size_bytes("local-lvm:vm-100-disk-0,iothread=1,size=512M"), Some(512 << 20));
        assert_eq!(disk_size_bytes("local-lvm:vm-100-disk-0"), None);
        assert_eq!(gib(1), 1);
        assert_eq!(gib(1 << 30), 1);
        assert_eq!(gib((1 << 30) + 1), 2);
    }

    #[test]
    fn a_token_file_must_be_private_and_well_formed() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("ok");
        let path = dir.path().join("t");
        std::fs::write(&path, "root@pam!drover=1234-abcd\n").expect("ok");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("ok");
        assert!(read_token(&path).expect_err("an error").to_string().contains("chmod 600"));
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("ok");
        assert_eq!(read_token(&path).expect("ok"), "root@pam!drover=1234-abcd");
        std::fs::write(&path, "just-a-secret").expect("ok");
        assert!(read_token(&path).expect_err("an error").to_string().contains("USER@REALM!TOKENID=SECRET"));
    }
}
