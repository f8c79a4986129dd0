//! The fleet page in a real browser: headless Chromium driven through its
//! WebDriver (`chromedriver`, Debian's `chromium-driver`, installed by
//! `scripts/test.sh`), against a coordinator with agents. Screenshots of
//! the pages go to `target/tmp/web-screenshots/` (the docs show them).

use crate::common;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::flake::{flake, spawn_vm, spawn_vm_with};
use fantoccini::{Client, ClientBuilder};
use serde_json::json;

use super::web::{login_link, with_page};

/// A name for each machine that shows as markup if anything is not escaped.
const HOSTILE: &str = "<img/src=x/onerror=window.__pwned=1><script>window.__pwned=2</script>";

/// chromedriver on a free port, killed at the end.
struct Driver {
    child: Child,
    port: u16,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn chromedriver() -> Driver {
    let port = common::free_tcp_port();
    let child = Command::new("chromedriver").arg(format!("--port={port}")).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap_or_else(|e| {
        panic!(
            "chromedriver cannot start ({e}): install Debian's chromium and chromium-driver (`apt-get install chromium chromium-driver`; scripts/test.sh does)"
        )
    });
    Driver { child, port }
}

async fn browser(driver: &Driver) -> Client {
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        json!({ "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1500,1000"] }),
    );
    let url = format!("http://127.0.0.1:{}", driver.port);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        match ClientBuilder::rustls().expect("a WebDriver client").capabilities(caps.clone()).connect(&url).await {
            Ok(client) => return client,
            Err(e) if tokio::time::Instant::now() < deadline => {
                eprintln!("waiting for chromedriver: {e}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("chromedriver does not answer at {url}: {e}"),
        }
    }
}

fn screenshots() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("web-screenshots");
    std::fs::create_dir_all(&dir).expect("mkdir");
    dir
}

async fn screenshot(b: &Client, name: &str) {
    let png = b.screenshot().await.expect("screenshot");
    let path = screenshots().join(format!("{name}.png"));
    std::fs::write(&path, png).expect("write screenshot");
    eprintln!("screenshot: {}", path.display());
}

async fn js(b: &Client, script: &str) -> serde_json::Value {
    b.execute(script, vec![]).await.unwrap_or_else(|e| panic!("{script}: {e}"))
}

/// Waits until `script` (a JavaScript expression) is true on the open page.
async fn until(b: &Client, what: &str, script: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        if js(b, &format!("return !!({script});")).await == json!(true) {
            return;
        }
        if tokio::time::Instant::now() >= deadline {
            let text = js(b, "return document.body.innerText;").await;
            panic!("{what}: not seen within a minute; the page reads:\n{}", text.as_str().unwrap_or_default());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Runs the `drover` CLI against the fleet; panics with its error.
fn drover(fleet: &common::TestCoordinator, args: &[&str]) {
    let (ok, _, stderr) = common::drover_json(fleet, args);
    assert!(ok, "drover {}: {stderr}", args.join(" "));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fleet_page_in_chromium_is_live_escapes_everything_and_needs_a_session() {
    let (fleet, addr) = with_page(false).await;
    let base = format!("http://{addr}");
    let flake = flake(fleet.dir.path());
    let xss_tail = format!("echo '{HOSTILE}' >&2; exit 1");
    std::fs::create_dir_all(flake.join("xss/bin")).expect("mkdir");
    let script = format!("#!/bin/sh\nself=$(cd \"$(dirname \"$0\")/..\" && pwd)\nln -sfn \"$self\" \"$STANDIN_CURRENT\"\n{xss_tail}\n");
    std::fs::write(flake.join("xss/bin/switch-to-configuration"), script).expect("write");
    std::fs::set_permissions(flake.join("xss/bin/switch-to-configuration"), std::os::unix::fs::PermissionsExt::from_mode(0o755)).expect("chmod");
    let flake_ref = |attr: &str| format!("path:{}#{attr}", flake.display());

    drover(&fleet, &["tenants", "create", "example.social", "--admin-email", "admin@example.social"]);
    let (_, web_token) = fleet.token(2, &[("role", "web"), ("tenant", "example.social")]).await;
    let (_, odd_token) = fleet.token(1, &[("role", "odd")]).await;
    let (_vm1, mut web1) = spawn_vm(&fleet, "web-1", Some(&web_token));
    let (_vm2, mut web2) = spawn_vm(&fleet, "web-2", Some(&web_token));
    let (_vm3, mut odd) = spawn_vm_with(&fleet, "odd", Some(&odd_token), |c| c.hostname = Some(HOSTILE.to_string()));
    for agent in [&mut web1, &mut web2, &mut odd] {
        common::until_reported(agent, 1).await;
    }
    let machines = fleet.machines().await;
    let id_of = |host: &str| machines.iter().find(|m| m.hostname == host).map(|m| m.id.clone()).expect("enrolled");
    let (web1_id, web2_id, odd_id) = (id_of("web-1"), id_of("web-2"), id_of(HOSTILE));

    let driver = chromedriver();
    let b = browser(&driver).await;

    // Without a session: the login message, nothing of the fleet.
    b.goto(&format!("{base}/")).await.expect("goto");
    until(&b, "the login message", "document.body.innerText.includes('drover web login')").await;
    assert_eq!(js(&b, "return document.body.innerText.includes('web-1');").await, json!(false));

    // Log in with a link; the link works once.
    let link = login_link(&fleet);
    b.goto(&link).await.expect("goto link");
    until(&b, "every machine", "document.querySelectorAll('#machines tbody tr').length === 3").await;
    b.goto(&link).await.expect("goto link again");
    until(&b, "a used link refused", "document.body.innerText.includes('used already')").await;
    b.goto(&format!("{base}/")).await.expect("goto");
    until(&b, "the session still open", "document.querySelectorAll('#machines tbody tr').length === 3").await;
    // The hostile name reads as text, and nothing of it ran.
    until(&b, "the hostile hostname as text", &format!("document.body.innerText.includes({})", json!(HOSTILE))).await;
    assert_eq!(js(&b, "return typeof window.__pwned;").await, json!("undefined"), "no injected handler ran");
    assert_eq!(js(&b, "return document.querySelectorAll('main script, main img').length;").await, json!(0), "no element was made from it");

    // From here on the page is never reloaded: a marker on the window
    // would not survive a reload.
    js(&b, "window.__marker = 42; return null;").await;
    drover(&fleet, &["deploy", "--flake", &flake_ref("good"), "--selector", "role=web"]);
    until(&b, "the deployment appears and finishes on the open page", &format!("document.querySelector('tr[data-machine=\"{web1_id}\"]').innerText.includes('1 / 1') && document.querySelector('tr[data-machine=\"{web2_id}\"]').innerText.includes('1 / 1')")).await;
    assert_eq!(js(&b, "return window.__marker;").await, json!(42), "updated without a reload");

    // A failing deployment moves its machine to the top.
    drover(&fleet, &["deploy", "--flake", &flake_ref("broken"), "--machine", &web2_id]);
    until(&b, "the failing machine first", &format!("document.querySelector('#machines tbody tr').dataset.machine === '{web2_id}' && document.querySelector('#machines tbody tr').className === 'cond-failing'")).await;
    assert_eq!(js(&b, "return window.__marker;").await, json!(42), "updated without a reload");
    until(&b, "why it failed", "document.querySelector('#machines tbody tr .why').innerText.includes('failed')").await;

    // The hostile machine's deployment fails with markup in its output.
    drover(&fleet, &["deploy", "--flake", &flake_ref("xss"), "--machine", &odd_id]);
    until(&b, "the hostile machine failing", &format!("document.querySelector('tr[data-machine=\"{odd_id}\"]').className === 'cond-failing'")).await;
    assert_eq!(js(&b, "return typeof window.__pwned;").await, json!("undefined"));
    screenshot(&b, "overview").await;

    // The failing machine's page and its failed deployment's page: steps,
    // the output tail, as text.
    b.goto(&format!("{base}/machines/{web2_id}")).await.expect("goto");
    until(&b, "the machine's deployments", "document.querySelectorAll('article.deployment').length >= 2").await;
    until(&b, "its failure, in its output", "document.body.innerText.includes('activation script failed')").await;
    screenshot(&b, "machine").await;
    b.goto(&format!("{base}/deployments/{web2_id}/2")).await.expect("goto");
    until(&b, "the failed deployment's steps", "document.querySelectorAll('table.steps tbody tr').length >= 2 && document.body.innerText.includes('failed')")
        .await;
    screenshot(&b, "deployment").await;
    // A rollout, watched on its page.
    let (ok, rollout, stderr) = common::drover_json(
        &fleet,
        &[
            "rollout",
            "start",
            "--flake",
            &flake_ref("good2"),
            "--selector",
            "role=web",
            "--canary",
            "1",
            "--max-failures",
            "1",
            "--healthy-deadline",
            "30s",
            "--min-healthy-time",
            "0s",
            "--auto-promote",
        ],
    );
    assert!(ok, "rollout start: {stderr}");
    let rollout_id = rollout["id"].as_str().expect("an id").to_string();
    b.goto(&format!("{base}/rollouts/{rollout_id}")).await.expect("goto");
    until(&b, "the rollout's machines", &format!("document.body.innerText.includes('web-1') && document.body.innerText.includes('{rollout_id}')")).await;
    until(&b, "the rollout ends on the open page", "/phase (succeeded|failed)/.test(document.querySelector('.summary').innerText)").await;
    screenshot(&b, "rollout").await;

    b.goto(&format!("{base}/deployments/{odd_id}/1")).await.expect("goto");
    until(&b, "the hostile output tail as text", &format!("document.querySelector('pre.tail').innerText.includes({})", json!(HOSTILE))).await;
    assert_eq!(js(&b, "return typeof window.__pwned;").await, json!("undefined"), "the output tail ran nothing");
    b.goto(&format!("{base}/machines/{odd_id}")).await.expect("goto");
    until(&b, "the hostile machine's page", "document.querySelectorAll('article.deployment').length >= 1").await;
    // Two refreshes of the live part, and still nothing ran.
    let refreshed = js(&b, "return document.querySelector('[data-live]').dataset.refreshed || '';").await;
    until(&b, "a refresh", &format!("(document.querySelector('[data-live]').dataset.refreshed || '') !== {refreshed}")).await;
    assert_eq!(js(&b, "return typeof window.__pwned;").await, json!("undefined"), "a refreshed fragment ran nothing");
    b.goto(&format!("{base}/tenants")).await.expect("goto");
    until(
        &b,
        "the tenant with its machines",
        "document.querySelector('section.tenant h2').innerText === 'example.social' && document.querySelectorAll('section.tenant tbody tr').length === 2",
    )
    .await;
    screenshot(&b, "tenants").await;

    // Log out: the session is over, on this page and the next.
    b.goto(&format!("{base}/")).await.expect("goto");
    b.find(fantoccini::Locator::LinkText("Log out")).await.expect("a logout link").click().await.expect("click");
    until(&b, "logged out", "document.body.innerText.includes('session has ended')").await;
    b.goto(&format!("{base}/machines/{web1_id}")).await.expect("goto");
    until(&b, "the login message again", "document.body.innerText.includes('drover web login')").await;
    b.close().await.expect("close the browser");
}
