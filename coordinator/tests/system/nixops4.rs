//! `drover nixops4` driven as NixOps4 drives a resource provider: started
//! as a process, requests written as JSON lines, every response line
//! checked against the resource schema — against a real coordinator with
//! a real Garage, the LINSTOR double, a local QEMU provider (a real VM) and
//! a process agent.

use crate::common;

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::Duration;

use common::garage::GarageNode;
use common::linstor::LinstorDouble;
use common::{vm, TestCoordinator};
use drover_coordinator::config::LinstorConfig;
use drover_protocol::v1::{AdminRequest, MachineStatus, ProvisionState, S3Request, StateRequest, VolumeRequest};
use serde_json::{json, Value};

/// The provider as NixOps4 runs it: one process, a request a line.
struct Provider {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    stderr: PathBuf,
    requests: jsonschema::Validator,
    responses: jsonschema::Validator,
    /// Every response line it wrote.
    lines: Vec<String>,
    /// Requests and responses, in order.
    exchange: Vec<String>,
}

impl Provider {
    fn start(fleet: &TestCoordinator, cwd: &Path) -> Provider {
        let n = std::fs::read_dir(cwd).map(|d| d.count()).unwrap_or(0);
        let stderr = cwd.join(format!("provider-{n}.log"));
        let mut child = Command::new(env!("CARGO_BIN_EXE_drover"))
            .arg("nixops4")
            .current_dir(cwd)
            .env("DROVER_ADMIN_BUNDLE", &fleet.bundle_path)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&stderr).expect("log file"))
            .spawn()
            .expect("start drover nixops4");
        Provider {
            stdin: child.stdin.take().expect("stdin"),
            stdout: BufReader::new(child.stdout.take().expect("stdout")),
            child,
            stderr,
            requests: validator("Request"),
            responses: validator("Response"),
            lines: Vec::new(),
            exchange: Vec::new(),
        }
    }

    /// Writes one request line; reads its one response line, checked
    /// against the schema.
    fn send(&mut self, request: Value) -> Value {
        self.send_line(&request.to_string())
    }

    fn send_line(&mut self, line: &str) -> Value {
        writeln!(self.stdin, "{line}").expect("write a request");
        self.stdin.flush().expect("flush");
        let mut answer = String::new();
        self.stdout.read_line(&mut answer).expect("read a response");
        assert!(answer.ends_with('\n'), "one line a response, got {answer:?}; log: {}", self.log());
        let value: Value = serde_json::from_str(&answer).unwrap_or_else(|e| panic!("a response line that is not JSON ({e}): {answer}"));
        let errors: Vec<String> = self.responses.iter_errors(&value).map(|e| e.to_string()).collect();
        assert!(errors.is_empty(), "a response line outside the schema: {answer}: {errors:?}");
        self.lines.push(answer.trim_end().to_string());
        self.exchange.push(line.to_string());
        self.exchange.push(answer.trim_end().to_string());
        value
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// The outputs of a create, update or read, or a panic with the error.
    /// The request itself must be one of the schema's.
    fn ok(&mut self, request: Value) -> Value {
        let errors: Vec<String> = self.requests.iter_errors(&request).map(|e| e.to_string()).collect();
        assert!(errors.is_empty(), "the test sent a request outside the schema: {request}: {errors:?}");
        let answer = self.send(request.clone());
        for kind in ["createResourceResponse", "updateResourceResponse", "readResourceResponse"] {
            if let Some(r) = answer.get(kind) {
                return r["outputProperties"].clone();
            }
        }
        for kind in ["destroyResourceResponse", "stateResourceEventResponse", "stateResourceReadResponse"] {
            if let Some(r) = answer.get(kind) {
                return r.clone();
            }
        }
        panic!("{request} was refused: {answer}\nlog: {}", self.log())
    }

    /// The error message of a request that must fail.
    fn refused(&mut self, request: Value) -> String {
        let answer = self.send(request.clone());
        answer["errorResponse"]["message"].as_str().unwrap_or_else(|| panic!("{request} must be refused: {answer}")).to_string()
    }

    /// Closes its input; it must exit with success. Its response lines and
    /// log; the exchange is written beside the test's other output.
    fn finish(mut self) -> (Vec<String>, String) {
        let transcript = Path::new(env!("CARGO_TARGET_TMPDIR")).join("nixops4-exchange.jsonl");
        let mut file = std::fs::OpenOptions::new().create(true).append(true).open(&transcript).expect("the transcript");
        writeln!(file, "{}", self.exchange.join("\n")).expect("write the transcript");
        drop(self.stdin);
        let status = self.child.wait().expect("wait");
        assert!(status.success(), "the provider exits 0 at the end of its input: {status}");
        let log = std::fs::read_to_string(&self.stderr).unwrap_or_default();
        (std::mem::take(&mut self.lines), log)
    }
}

/// A validator for the schema's `Request` or `Response`.
fn validator(message: &str) -> jsonschema::Validator {
    let mut schema: Value = serde_json::from_str(include_str!("nixops4-schema-v0.json")).expect("the schema");
    schema["$ref"] = json!(format!("#/definitions/{message}"));
    jsonschema::validator_for(&schema).expect("a valid schema")
}

fn create(type_: &str, inputs: Value) -> Value {
    json!({ "createResourceRequest": { "type": type_, "inputProperties": inputs, "isStateful": type_ != "state" } })
}

fn read(type_: &str, inputs: &Value, outputs: &Value) -> Value {
    json!({ "readResourceRequest": { "resource": { "type": type_, "inputProperties": inputs, "outputProperties": outputs } } })
}

fn update(type_: &str, before: &Value, outputs: &Value, after: &Value) -> Value {
    json!({ "updateResourceRequest": { "resource": { "type": type_, "inputProperties": before, "outputProperties": outputs }, "inputProperties": after } })
}

fn destroy(type_: &str, inputs: &Value, outputs: &Value) -> Value {
    json!({ "destroyResourceRequest": { "resource": { "type": type_, "inputProperties": inputs, "outputProperties": outputs } } })
}

fn state_resource() -> Value {
    json!({ "type": "state", "inputProperties": { "name": "social" }, "outputProperties": {} })
}

fn event(name: &str, patch: Value) -> Value {
    json!({ "stateResourceEvent": { "resource": state_resource(), "event": name, "nixopsVersion": "0.1.0", "patch": patch } })
}

async fn coordinator(node: &GarageNode) -> (TestCoordinator, LinstorDouble, PathBuf) {
    let mut fleet = common::garage::unserved_with_s3(&node.admin_url, &node.s3_url, &node.admin_token, None).await;
    let double = LinstorDouble::start(&fleet.dir.path().join("linstor"), &["web"]).await;
    let mut linstor = LinstorConfig::new(&double.url);
    linstor.ready_timeout = Duration::from_secs(10);
    linstor.request_timeout = Duration::from_secs(5);
    fleet.config.linstor = Some(linstor);
    let work = fleet.dir.path().join("qemu");
    fleet.config.providers.push(vm::qemu_provider("local", vm::image(), work.clone(), Duration::from_secs(180)));
    fleet.serve().await;
    (fleet, double, work)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nixops4_deployment_is_created_read_updated_and_destroyed_through_the_provider() {
    let _heavy = common::heavy().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let node = GarageNode::single(dir.path()).await;
    let (mut fleet, double, work) = coordinator(&node).await;
    let _vms = vm::KillVmsOnDrop(work.clone());
    let flake = common::flake::flake(fleet.dir.path());
    let (_, token) = fleet.token(1, &[]).await;
    let (web, _agent) = common::flake::spawn_vm_with(&fleet, "web", Some(&token), |c| {
        c.volume_root = double.node_root("web");
        c.device_wait = Duration::from_secs(10);
    });
    assert!(common::eventually(Duration::from_secs(20), || async { fleet.machines().await.iter().any(|m| m.status == MachineStatus::Online) }).await);
    // The deployment's directory: where NixOps4 runs the provider, with a
    // secret file beside the deployment.
    let cwd = fleet.dir.path().join("deployment");
    std::fs::create_dir_all(&cwd).expect("mkdir");
    let secret_value = format!("app-key-{}", hex::encode(rand::random::<[u8; 12]>()));
    std::fs::write(cwd.join("app-key.txt"), &secret_value).expect("secret file");
    let _ = std::fs::remove_file(Path::new(env!("CARGO_TARGET_TMPDIR")).join("nixops4-exchange.jsonl"));
    let mut p = Provider::start(&fleet, &cwd);
    let bad = json!({ "fooRequest": {} });
    assert!(!p.requests.is_valid(&bad), "the schema tells a request it does not have");

    // The state resource: events kept and applied in order; one that does
    // not apply is kept and reported.
    let state = p.ok(create("state", json!({ "name": "social" })));
    assert_eq!(state["events"], 0, "{state}");
    p.ok(event("create", json!([{ "op": "add", "path": "/resources/db", "value": { "type": "machine" } }])));
    let e = p.refused(event("destroy", json!([{ "op": "remove", "path": "/resources/nothing" }])));
    assert!(e.contains("event 1") && e.contains("kept") && e.contains("not applied"), "{e}");
    p.ok(event("update", json!([{ "op": "add", "path": "/resources/web", "value": { "type": "deployment" } }])));
    let document = p.ok(json!({ "stateResourceReadRequest": { "resource": state_resource() } }));
    assert_eq!(document["state"]["_type"], "nixopsState", "{document}");
    assert!(document["state"]["resources"]["db"].is_object() && document["state"]["resources"]["web"].is_object(), "{document}");

    // A line that is no request gets one error line; the provider goes on.
    let answer = p.send_line("this is not JSON");
    assert!(answer["errorResponse"]["message"].as_str().is_some_and(|m| m.contains("not a request of NixOps4's resource schema v0")), "{answer}");

    // Refused inputs change nothing.
    let buckets_before = fleet.call(AdminRequest::S3(S3Request::BucketsList)).await.s3().expect("s3").buckets().expect("buckets").len();
    let e = p.refused(create("bucket", json!({ "name": "media", "colour": "red" })));
    assert!(e.contains("bucket") && e.contains("unknown field `colour`"), "{e}");
    let e = p.refused(create("bucket", json!({ "public": true })));
    assert!(e.contains("bucket") && e.contains("missing field `name`"), "{e}");
    let e = p.refused(create("machine", json!({ "name": "db", "provider": "local", "cores": "two" })));
    assert!(e.contains("machine") && e.contains("cores"), "{e}");
    let e = p.refused(create("database", json!({})));
    assert!(e.contains("no resource type \"database\""), "{e}");
    let e = p.refused(json!({ "createResourceRequest": { "type": "bucket", "inputProperties": {}, "isStateful": true, "extra": 1 } }));
    assert!(e.contains("extra"), "{e}");
    let e = p.refused(json!({ "createResourceRequest": { "type": "bucket", "inputProperties": { "name": "media" }, "isStateful": false } }));
    assert!(e.contains("needs NixOps4 state"), "{e}");
    let e = p.refused(create("machine", json!({ "name": "db", "provider": "local", "adopt": "web" })));
    assert!(e.contains("not both"), "{e}");
    assert_eq!(fleet.call(AdminRequest::S3(S3Request::BucketsList)).await.s3().expect("s3").buckets().expect("buckets").len(), buckets_before);
    assert!(fleet.try_call(AdminRequest::ProvisionShow { name: "db".into() }).await.is_err(), "no provision was made");

    // The tenant, then the database VM. The first provider is killed while
    // the VM is being made; a new one, asked again, finds it.
    let tenant_in = json!({ "domain": "a.example", "admin_email": "ops@a.example" });
    let tenant = p.ok(create("tenant", tenant_in.clone()));
    assert_eq!(tenant["domain"], "a.example");
    let db_in = json!({ "name": "db", "provider": "local", "memory": "256MiB", "tenant": "a.example", "labels": { "role": "db" } });
    writeln!(p.stdin, "{}", create("machine", db_in.clone())).expect("write");
    p.stdin.flush().expect("flush");
    assert!(
        common::eventually(Duration::from_secs(60), || async { fleet.try_call(AdminRequest::ProvisionShow { name: "db".into() }).await.is_ok() }).await,
        "the provision was asked for"
    );
    p.child.kill().expect("SIGKILL the provider");
    p.child.wait().expect("reap");
    let mut lines = std::mem::take(&mut p.lines);
    let mut p = Provider::start(&fleet, &cwd);
    let db = p.ok(create("machine", db_in.clone()));
    assert_eq!(db["provisioned"], true, "{db}");
    assert_eq!(db["status"], "online", "{db}");
    let db_address = db["address"].as_str().expect("an address").to_string();
    assert!(!db_address.is_empty(), "the database machine's address: {db}");
    assert_eq!(vm::vm_dirs(&work).len(), 1, "one VM for the machine, though its create was asked twice");
    let provisions = fleet.call(AdminRequest::Provisions).await.provisions().expect("provisions");
    assert_eq!(provisions.iter().filter(|p| p.name == "db").count(), 1, "{provisions:?}");

    // A bucket and a volume asked for by a provider killed at once: asked
    // again, each is there once.
    for (type_, inputs, exists) in [
        ("bucket", json!({ "name": "scratch" }), AdminRequest::S3(S3Request::BucketShow { name: "scratch".into() })),
        (
            "volume",
            json!({ "name": "scratch", "size": "16MiB", "delete_data_on_destroy": true }),
            AdminRequest::Volumes(VolumeRequest::Show { name: "scratch".into() }),
        ),
    ] {
        writeln!(p.stdin, "{}", create(type_, inputs.clone())).expect("write");
        p.stdin.flush().expect("flush");
        p.child.kill().expect("SIGKILL the provider");
        p.child.wait().expect("reap");
        lines.extend(std::mem::take(&mut p.lines));
        p = Provider::start(&fleet, &cwd);
        let made = p.ok(create(type_, inputs.clone()));
        assert!(fleet.try_call(exists).await.is_ok(), "{type_} scratch: {made}");
        p.ok(destroy(type_, &inputs, &made));
    }
    let buckets = fleet.call(AdminRequest::S3(S3Request::BucketsList)).await.s3().expect("s3").buckets().expect("buckets");
    assert!(!buckets.iter().any(|b| b.aliases.iter().any(|a| a == "scratch")), "{buckets:?}");

    // The web machine is adopted; labels and tenant change in place, the
    // VM's size does not.
    let web_in = json!({ "name": "web", "adopt": "web", "tenant": "a.example", "labels": { "role": "web" } });
    let web_out = p.ok(create("machine", web_in.clone()));
    assert_eq!(web_out["provisioned"], false);
    assert_eq!(web_out["labels"]["tenant"], "a.example", "{web_out}");
    let web_in2 = json!({ "name": "web", "adopt": "web", "tenant": "a.example", "labels": { "role": "web", "tier": "front" } });
    let web_out = p.ok(update("machine", &web_in, &web_out, &web_in2));
    assert_eq!(web_out["labels"]["tier"], "front", "{web_out}");
    let e = p.refused(update(
        "machine",
        &db_in,
        &db,
        &json!({ "name": "db", "provider": "local", "memory": "512MiB", "tenant": "a.example", "labels": { "role": "db" } }),
    ));
    assert!(e.contains("memory cannot change in place") && e.contains("new machine"), "{e}");

    // A bucket (made once however often asked), a key on it, a volume.
    let bucket_in = json!({ "name": "media", "public": false });
    let bucket = p.ok(create("bucket", bucket_in.clone()));
    assert_eq!(p.ok(create("bucket", bucket_in.clone()))["id"], bucket["id"], "asked again, the same bucket");
    let key_in = json!({ "name": "web-media", "bucket": "media", "write": true });
    let key = p.ok(create("s3_key", key_in.clone()));
    assert!(key["id"].as_str().is_some_and(|id| !id.is_empty()), "{key}");
    let volume_in = json!({ "name": "pgdata", "size": "64MiB", "replicas": 1 });
    let volume = p.ok(create("volume", volume_in.clone()));
    assert_eq!(volume["size_bytes"], 64 << 20, "{volume}");

    // The deployments: the database's address feeds the web machine's facts.
    let db_id = db["id"].as_str().expect("id").to_string();
    let db_deploy_in = json!({ "machine": db_id, "flake": "path:/etc/fleet#db", "checks": ["file:/run/drover/facts.json"], "health_deadline": "60s" });
    let db_deploy = p.ok(create("deployment", db_deploy_in.clone()));
    assert_eq!(db_deploy["machines"][&db_id]["outcome"], "succeeded", "{db_deploy}");
    let secret_check = format!("file:{}/secrets/app-key", web.runtime().display());
    let web_deploy = |system: &str| {
        json!({
            "machine": "web",
            "flake": format!("path:{}#{system}", flake.display()),
            "facts": { "db_host": db_address, "media": "media" },
            "secret_files": { "app-key": "app-key.txt" },
            "buckets": ["media"],
            "checks": [secret_check],
            "volumes": { "pgdata": { "mount": "/srv/pg" } },
            "health_deadline": "20s",
        })
    };
    let web_deploy_in = web_deploy("good");
    let web_out_d = p.ok(create("deployment", web_deploy_in.clone()));
    let facts: Value = serde_json::from_slice(&std::fs::read(web.runtime().join("facts.json")).expect("facts.json")).expect("json");
    assert_eq!(facts["db_host"], db_address.as_str(), "the database's address reached the web machine: {facts}");
    assert_eq!(web.activations().last().map(String::as_str), Some("good"));
    let attached = p.ok(read("volume", &volume_in, &volume));
    assert_eq!((attached["machine"].as_str(), attached["formatted"].as_bool()), (Some("web"), Some(true)), "{attached}");
    // Asked again (a provider stopped after it deployed): followed, not
    // deployed again.
    let again = p.ok(create("deployment", web_deploy_in.clone()));
    assert_eq!(again["generation"], web_out_d["generation"], "no new generation: {again}");

    // Every resource reads back.
    assert_eq!(p.ok(read("tenant", &tenant_in, &tenant))["domain"], "a.example");
    assert_eq!(p.ok(read("machine", &db_in, &db))["id"], db["id"]);
    assert_eq!(p.ok(read("bucket", &bucket_in, &bucket))["id"], bucket["id"]);
    assert_eq!(p.ok(read("s3_key", &key_in, &key))["id"], key["id"]);
    assert_eq!(p.ok(read("volume", &volume_in, &volume))["name"], "pgdata");
    assert_eq!(p.ok(read("deployment", &web_deploy_in, &web_out_d))["generation"], web_out_d["generation"]);

    // An update to a new system switches the machine (here as a rollout);
    // a broken one fails, the machine goes back, its assignment too, and
    // what reads back is what runs.
    let e = p.refused(update("deployment", &web_deploy_in, &web_out_d, &json!({ "machine": "web", "flake": "path:/x#y", "strategy": {} })));
    assert!(e.contains("targets machines by selector"), "{e}");
    let mut good2_in = web_deploy("good2");
    good2_in.as_object_mut().expect("inputs").remove("machine");
    good2_in["selector"] = json!({ "role": "web" });
    good2_in["strategy"] = json!({ "max_parallel": "1" });
    let good2 = p.ok(update("deployment", &web_deploy_in, &web_out_d, &good2_in));
    assert_eq!(web.activations().last().map(String::as_str), Some("good2"));
    let e = p.refused(update("deployment", &good2_in, &good2, &web_deploy("broken")));
    assert!(e.contains("did not succeed") && e.contains("web") && e.contains("previous inputs' system again"), "{e}");
    assert_eq!(web.activations().last().map(String::as_str), Some("good2"), "rolled back: {:?}", web.activations());
    let now = p.ok(read("deployment", &good2_in, &good2));
    let web_id = web_out["id"].as_str().expect("id");
    assert_eq!(now["machines"][web_id]["system"], good2["machines"][web_id]["system"], "{now} vs {good2}");

    // A name now holding something else than the resource made (names are
    // reused) is left alone.
    let e = p.refused(destroy("bucket", &bucket_in, &json!({ "name": "media", "id": "0123456789abcdef" })));
    assert!(e.contains("not what this resource made"), "{e}");
    let e = p.refused(destroy("machine", &db_in, &json!({ "id": "m-0000000000", "provisioned": true })));
    assert!(e.contains("not what this resource made"), "{e}");
    assert_eq!(vm::vm_dirs(&work).len(), 1, "the VM is still there");
    assert!(fleet.try_call(AdminRequest::S3(S3Request::BucketShow { name: "media".into() })).await.is_ok(), "the bucket is still there");

    // A volume that may hold data is not deleted without consent.
    let e = p.refused(destroy("volume", &volume_in, &volume));
    assert!(e.contains("delete_data_on_destroy"), "{e}");
    assert!(fleet.try_call(AdminRequest::Volumes(VolumeRequest::Show { name: "pgdata".into() })).await.is_ok(), "the volume is still there");

    // Destroyed in reverse order.
    p.ok(destroy("deployment", &good2_in, &good2));
    p.ok(destroy("deployment", &db_deploy_in, &db_deploy));
    let consent = json!({ "name": "pgdata", "size": "64MiB", "replicas": 1, "delete_data_on_destroy": true });
    p.ok(destroy("volume", &consent, &volume));
    assert!(fleet.try_call(AdminRequest::Volumes(VolumeRequest::Show { name: "pgdata".into() })).await.is_err(), "the volume is gone");
    assert_eq!(web.activations().last().map(String::as_str), Some("good2"), "the detach gave the machine the system it ran, without the volume");
    p.ok(destroy("s3_key", &key_in, &key));
    p.ok(destroy("bucket", &bucket_in, &bucket));
    p.ok(destroy("machine", &web_in2, &web_out));
    let web_after = fleet.machine(web_id).await;
    assert_eq!(web_after.status, MachineStatus::Online, "an adopted machine is left running");
    assert!(!web_after.labels.contains_key("tenant") && !web_after.labels.contains_key("tier"), "without the labels it was given: {:?}", web_after.labels);
    p.ok(destroy("machine", &db_in, &db));
    let gone = fleet.call(AdminRequest::ProvisionShow { name: "db".into() }).await.provision().expect("provision");
    assert_eq!(gone.state, ProvisionState::Destroyed);
    assert!(vm::vm_dirs(&work).is_empty(), "the VM it made is gone");
    p.ok(destroy("tenant", &tenant_in, &tenant));
    // Destroying again finds nothing to do.
    p.ok(destroy("bucket", &bucket_in, &bucket));
    let (more, log) = p.finish();
    lines.extend(more);

    // The secret is in no response line, no log line and not in the state.
    let stored =
        fleet.call(AdminRequest::Nixops4State(StateRequest::Read { name: "social".into() })).await.nixops4_state().expect("state").document().expect("doc");
    for (what, text) in [("a response line", lines.join("\n")), ("the provider's log", log.clone()), ("NixOps4's state", stored.document.clone())] {
        assert!(!text.contains(&secret_value), "the secret showed in {what}");
    }
    assert!(log.contains("deploying"), "the provider logs on standard error: {log}");

    // The state keeps every event, in order, across a coordinator restart.
    fleet.stop().await;
    fleet.serve().await;
    let events = fleet
        .call(AdminRequest::Nixops4State(StateRequest::Events { name: "social".into(), from: 0, limit: 100 }))
        .await
        .nixops4_state()
        .expect("state")
        .events()
        .expect("events");
    let kept: Vec<(u64, &str, bool)> = events.iter().map(|e| (e.index, e.event.as_str(), e.applied)).collect();
    assert_eq!(kept, vec![(0, "create", true), (1, "destroy", false), (2, "update", true)]);
    let mut p = Provider::start(&fleet, &cwd);
    let document = p.ok(json!({ "stateResourceReadRequest": { "resource": state_resource() } }));
    assert!(document["state"]["resources"]["web"].is_object(), "{document}");
    let e = p.refused(destroy("state", &json!({ "name": "social" }), &json!({})));
    assert!(e.contains("kept"), "{e}");
    p.finish();
}
