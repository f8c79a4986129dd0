//! The fleet page on `web_listen`, over HTTP as a browser's requests reach
//! it (the browser itself drives it in `browser.rs`): who may see it, what
//! every answer carries, what it shows of hostile text, its bounds, and
//! HTTPS with the fleet CA.

use crate::common;

use std::net::SocketAddr;
use std::time::Duration;

use common::flake::{flake, flake_spec, spawn_vm};
use common::{eventually, Options, TestCoordinator};
use drover_protocol::v1::*;

/// A coordinator with the page on a loopback port.
pub async fn with_page(https: bool) -> (TestCoordinator, SocketAddr) {
    let mut fleet = TestCoordinator::start_with(Options { no_server: true, ..Default::default() }).await;
    fleet.config.web_listen = Some("127.0.0.1:0".parse().expect("addr"));
    fleet.config.web_https_on_loopback = https;
    fleet.serve().await;
    let addr = fleet.handle.as_ref().and_then(|h| h.web_addr).expect("the page is served");
    (fleet, addr)
}

/// A client that follows no redirect and keeps no cookie by itself.
fn client() -> reqwest::Client {
    reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).timeout(Duration::from_secs(10)).build().expect("client")
}

/// `drover web login` through the CLI: the link.
pub fn login_link(fleet: &TestCoordinator) -> String {
    let (ok, json, stderr) = common::drover_json(fleet, &["web", "login"]);
    assert!(ok, "drover web login: {stderr}");
    json["url"].as_str().expect("a url").to_string()
}

/// Opens a session with a fresh link: the cookie header to send.
async fn session(fleet: &TestCoordinator, http: &reqwest::Client) -> String {
    let link = login_link(fleet);
    let answer = http.get(&link).send().await.expect("GET the link");
    assert_eq!(answer.status(), 303, "a link redirects to the page");
    let set = answer.headers().get("set-cookie").expect("a cookie").to_str().expect("text").to_string();
    for attribute in ["HttpOnly", "SameSite=Strict", "Path=/", "Max-Age=43200"] {
        assert!(set.contains(attribute), "the cookie has {attribute}: {set}");
    }
    set.split(';').next().expect("name=value").to_string()
}

async fn get(http: &reqwest::Client, url: &str, cookie: Option<&str>) -> (u16, String, reqwest::header::HeaderMap) {
    let mut request = http.get(url);
    if let Some(c) = cookie {
        request = request.header("cookie", c);
    }
    let answer = request.send().await.unwrap_or_else(|e| panic!("GET {url}: {e}"));
    let status = answer.status().as_u16();
    let headers = answer.headers().clone();
    (status, answer.text().await.expect("body"), headers)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nobody_sees_the_page_without_a_session_from_a_one_time_link() {
    let (fleet, addr) = with_page(false).await;
    let base = format!("http://{addr}");
    let http = client();
    let flake = flake(fleet.dir.path());
    let (_, token) = fleet.token(1, &[("role", "web")]).await;
    let (_vm, mut agent) = spawn_vm(&fleet, "web-1", Some(&token));
    common::until_reported(&mut agent, 1).await;
    let id = fleet.machines().await[0].id.clone();
    fleet.call(AdminRequest::Deploy(common::deploy_to_role("web", flake_spec(&flake, "good")))).await.deployed().expect("deployed");

    // Every page and every live fragment, without a cookie and with a
    // made-up one: 401 and how to log in.
    let pages = [
        "/",
        "/?fragment=1",
        &format!("/machines/{id}"),
        &format!("/machines/{id}?fragment=1"),
        &format!("/deployments/{id}/1"),
        "/rollouts/r-1",
        "/tenants",
        "/tenants?fragment=1",
    ];
    for page in pages {
        for cookie in [None, Some("drover_session=0123456789abcdef")] {
            let (status, body, headers) = get(&http, &format!("{base}{page}"), cookie).await;
            assert_eq!(status, 401, "{page} with {cookie:?}");
            assert!(body.contains("drover web login"), "{page}: the answer says how to log in: {body}");
            assert!(!body.contains("web-1"), "{page}: nothing of the fleet shows");
            assert_eq!(headers["content-security-policy"].to_str().expect("text").split(';').next(), Some("default-src 'none'"));
        }
    }

    // A link that was never made, then a real one, used twice.
    let (status, body, _) = get(&http, &format!("{base}/login?token=00ff"), None).await;
    assert_eq!(status, 401);
    assert!(body.contains("not valid"), "{body}");
    let link = login_link(&fleet);
    assert!(link.starts_with(&format!("{base}/login?token=")), "{link}");
    let answer = http.get(&link).send().await.expect("GET");
    assert_eq!(answer.status(), 303);
    let cookie = answer.headers()["set-cookie"].to_str().expect("text").split(';').next().expect("cookie").to_string();
    assert!(!answer.headers()["set-cookie"].to_str().expect("text").contains("Secure"), "no Secure flag over plain HTTP on loopback");
    let (status, body, _) = get(&http, &link, None).await;
    assert_eq!(status, 401, "a link works once");
    assert!(body.contains("used already"), "{body}");

    // With the session: every page, each with the hardening headers.
    for page in pages {
        let page = page.replace("/rollouts/r-1", "/");
        let (status, body, headers) = get(&http, &format!("{base}{page}"), Some(&cookie)).await;
        assert_eq!(status, 200, "{page}: {body}");
        for (name, value) in
            [("x-content-type-options", "nosniff"), ("referrer-policy", "no-referrer"), ("x-frame-options", "DENY"), ("cache-control", "no-store")]
        {
            assert_eq!(headers[name], value, "{page}: {name}");
        }
        assert!(headers["content-security-policy"].to_str().expect("text").contains("script-src 'self'"));
    }
    let (_, overview, _) = get(&http, &format!("{base}/"), Some(&cookie)).await;
    assert!(overview.contains("web-1") && overview.contains("1</b> online"), "{overview}");
    assert!(
        eventually(Duration::from_secs(20), || async { get(&http, &format!("{base}/deployments/{id}/1"), Some(&cookie)).await.1.contains("status succeeded") })
            .await
    );
    let (status, _, _) = get(&http, &format!("{base}/machines/m-nothere"), Some(&cookie)).await;
    assert_eq!(status, 404);

    // Nothing but GET: the page changes nothing.
    for method in [reqwest::Method::POST, reqwest::Method::PUT, reqwest::Method::DELETE] {
        let answer = http.request(method.clone(), format!("{base}/")).header("cookie", &cookie).send().await.expect("send");
        assert_eq!(answer.status(), 405, "{method}");
    }

    // Logging out ends the session for good.
    let (status, body, headers) = get(&http, &format!("{base}/logout"), Some(&cookie)).await;
    assert_eq!(status, 200);
    assert!(body.contains("session has ended"), "{body}");
    assert!(headers["set-cookie"].to_str().expect("text").contains("Max-Age=0"), "the cookie is cleared");
    let (status, _, _) = get(&http, &format!("{base}/"), Some(&cookie)).await;
    assert_eq!(status, 401, "the old cookie opens nothing");

    // Each login and logout is in the audit log.
    let audit = fleet.call(AdminRequest::Audit { since: None, admin: None, limit: 100 }).await.audit().expect("audit");
    let actions: Vec<&str> = audit.iter().map(|e| e.action.as_str()).collect();
    for action in ["web login", "web session open", "web session close"] {
        assert!(actions.contains(&action), "{action} audited: {actions:?}");
    }
    assert!(audit.iter().all(|e| !e.target.contains(link.split('=').next_back().expect("token"))), "no link's secret in the audit log");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_viewer_logs_in_and_a_removed_admins_session_shows_nothing_more_even_under_a_reused_name() {
    let (fleet, addr) = with_page(false).await;
    let vera = fleet.dir.path().join("vera.bundle");
    let (ok, _, err) = common::drover_json(&fleet, &["admins", "add", "vera", "--role", "viewer", "--out", vera.to_str().expect("utf-8")]);
    assert!(ok, "{err}");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_drover"))
        .args(["web", "login", "--output", "json"])
        .env("DROVER_ADMIN_BUNDLE", &vera)
        .output()
        .expect("run drover");
    assert!(out.status.success(), "a viewer may log in: {}", String::from_utf8_lossy(&out.stderr));
    let link: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let http = client();
    let answer = http.get(link["url"].as_str().expect("url")).send().await.expect("GET");
    assert_eq!(answer.status(), 303);
    let cookie = answer.headers()["set-cookie"].to_str().expect("text").split(';').next().expect("cookie").to_string();
    let (status, body, _) = get(&http, &format!("http://{addr}/"), Some(&cookie)).await;
    assert_eq!(status, 200);
    assert!(body.contains("vera"), "the page names who is logged in");
    let (ok, _, err) = common::drover_json(&fleet, &["admins", "remove", "vera"]);
    assert!(ok, "{err}");
    let (status, _, _) = get(&http, &format!("http://{addr}/"), Some(&cookie)).await;
    assert_eq!(status, 401, "a removed admin's session shows nothing more");
    // The name given to someone new does not bring the old session back.
    let (ok, _, err) =
        common::drover_json(&fleet, &["admins", "add", "vera", "--role", "viewer", "--out", fleet.dir.path().join("vera-2.bundle").to_str().expect("utf-8")]);
    assert!(ok, "{err}");
    let (status, _, _) = get(&http, &format!("http://{addr}/"), Some(&cookie)).await;
    assert_eq!(status, 401, "a session belongs to the admin record that logged in, not to its name");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_link_opens_nothing() {
    let mut fleet = TestCoordinator::start_with(Options { no_server: true, ..Default::default() }).await;
    fleet.config.web_listen = Some("127.0.0.1:0".parse().expect("addr"));
    fleet.config.limits.web_link_lifetime = Duration::from_secs(1);
    fleet.serve().await;
    let (ok, link, stderr) = common::drover_json(&fleet, &["web", "login"]);
    assert!(ok, "{stderr}");
    // Past the link's expiry, as the coordinator stated it.
    let expires_at = link["expires_at"].as_u64().expect("expires_at");
    let wait = expires_at.saturating_sub(drover_coordinator::app::now_ms()) + 100;
    tokio::time::sleep(Duration::from_millis(wait)).await;
    let (status, body, headers) = get(&client(), link["url"].as_str().expect("url"), None).await;
    assert_eq!(status, 401);
    assert!(body.contains("expired"), "{body}");
    assert!(headers.get("set-cookie").is_none(), "no session");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_web_listen_a_login_names_the_setting_to_change() {
    let fleet = TestCoordinator::start().await;
    let (ok, _, stderr) = common::drover_json(&fleet, &["web", "login"]);
    assert!(!ok);
    assert!(stderr.contains("set web_listen"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_text_from_agents_is_shown_as_text() {
    let (fleet, addr) = with_page(false).await;
    let base = format!("http://{addr}");
    let http = client();
    let hostile = "<script>window.__pwned=1</script><img/src=x/onerror=window.__pwned=2>";
    let (token, _) = fleet.token(1, &[("role", "x")]).await;
    common::enroll_raw(&fleet, &token, hostile).await;
    let id = fleet.machines().await[0].id.clone();
    fleet
        .call(AdminRequest::MachinesLabel { id: id.clone(), set: [("note".to_string(), "\"><svg/onload=alert(1)>".to_string())].into(), remove: vec![] })
        .await
        .machine()
        .expect("labelled");
    let cookie = session(&fleet, &http).await;
    for page in ["/".to_string(), format!("/machines/{id}"), "/?fragment=1".to_string()] {
        let (status, body, _) = get(&http, &format!("{base}{page}"), Some(&cookie)).await;
        assert_eq!(status, 200);
        assert!(!body.contains("<script>window"), "{page}: the hostname is escaped");
        assert!(!body.contains("<img/src"), "{page}: no markup from an agent");
        assert!(!body.contains("<svg"), "{page}: no markup from a label");
        let text = body.replace("&#60;", "&lt;").replace("&#62;", "&gt;");
        assert!(text.contains("&lt;script&gt;window.__pwned=1&lt;/script&gt;&lt;img/src=x/onerror=window.__pwned=2&gt;"), "{page}: shown as text: {body}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_clients_cannot_keep_the_page_from_its_admins() {
    let mut fleet = TestCoordinator::start_with(Options { no_server: true, ..Default::default() }).await;
    fleet.config.web_listen = Some("127.0.0.1:0".parse().expect("addr"));
    fleet.config.limits.web_connections = 16;
    fleet.config.limits.web_header_timeout = Duration::from_secs(30);
    fleet.serve().await;
    let addr = fleet.handle.as_ref().and_then(|h| h.web_addr).expect("served");
    // Ten times as many clients as places, each sending half a request.
    let mut slow = Vec::new();
    for _ in 0..160 {
        if let Ok(mut stream) = tokio::net::TcpStream::connect(addr).await {
            use tokio::io::AsyncWriteExt;
            let _ = stream.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n").await;
            slow.push(stream);
        }
    }
    let http = client();
    let cookie = session(&fleet, &http).await;
    let (status, body, _) = get(&http, &format!("http://{addr}/"), Some(&cookie)).await;
    assert_eq!(status, 200, "{body}");
    // The slow ones were let go: at most the bound is held.
    let mut closed = vec![false; slow.len()];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let mut all_but_the_bound = false;
    while !all_but_the_bound && tokio::time::Instant::now() < deadline {
        for (i, stream) in slow.iter_mut().enumerate() {
            if closed[i] {
                continue;
            }
            use tokio::io::AsyncReadExt;
            let mut buf = [0u8; 1];
            // End of stream or reset: the coordinator let it go.
            if matches!(tokio::time::timeout(Duration::from_millis(20), stream.read(&mut buf)).await, Ok(Ok(0) | Err(_))) {
                closed[i] = true;
            }
        }
        all_but_the_bound = closed.iter().filter(|c| **c).count() >= 160 - 16;
    }
    assert!(all_but_the_bound, "connections beyond the bound were closed: {}", closed.iter().filter(|c| **c).count());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn off_loopback_the_page_is_https_with_the_fleet_ca() {
    let (fleet, addr) = with_page(true).await;
    let ca = reqwest::Certificate::from_pem(&std::fs::read(fleet.state_dir.join("ca.pem")).expect("ca.pem")).expect("pem");
    let https =
        reqwest::Client::builder().add_root_certificate(ca).tls_built_in_root_certs(false).redirect(reqwest::redirect::Policy::none()).build().expect("client");
    let link = login_link(&fleet);
    assert!(link.starts_with("https://127.0.0.1:"), "{link}");
    let answer = https.get(&link).send().await.expect("the fleet CA's certificate is trusted");
    assert_eq!(answer.status(), 303);
    let set = answer.headers()["set-cookie"].to_str().expect("text").to_string();
    assert!(set.contains("Secure"), "Secure over HTTPS: {set}");
    let cookie = set.split(';').next().expect("cookie").to_string();
    let (status, _, _) = get(&https, &format!("https://{addr}/"), Some(&cookie)).await;
    assert_eq!(status, 200);
    // Plain HTTP gets no page.
    assert!(client().get(format!("http://{addr}/")).send().await.is_err(), "plain HTTP is not served");
    // A client that does not trust the fleet CA refuses it.
    let stranger = reqwest::Client::builder().tls_built_in_root_certs(true).build().expect("client");
    assert!(stranger.get(format!("https://{addr}/")).send().await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_operators_own_certificate_serves_the_page_when_given() {
    let mut fleet = TestCoordinator::start_with(Options { no_server: true, ..Default::default() }).await;
    let own = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string()]).expect("a certificate");
    let (cert, key) = (fleet.dir.path().join("page.pem"), fleet.dir.path().join("page.key"));
    std::fs::write(&cert, own.cert.pem()).expect("write");
    std::fs::write(&key, own.signing_key.serialize_pem()).expect("write");
    fleet.config.web_listen = Some("127.0.0.1:0".parse().expect("addr"));
    fleet.config.web_https_on_loopback = true;
    fleet.config.web_tls_cert = Some(cert);
    fleet.config.web_tls_key = Some(key);
    fleet.serve().await;
    let addr = fleet.handle.as_ref().and_then(|h| h.web_addr).expect("served");
    let trusting = |pem: &[u8]| {
        reqwest::Client::builder()
            .add_root_certificate(reqwest::Certificate::from_pem(pem).expect("pem"))
            .tls_built_in_root_certs(false)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .expect("client")
    };
    let answer = trusting(own.cert.pem().as_bytes()).get(format!("https://{addr}/")).send().await.expect("the operator's certificate is served");
    assert_eq!(answer.status(), 401, "and the page still wants a session");
    let fleet_ca = std::fs::read(fleet.state_dir.join("ca.pem")).expect("ca.pem");
    assert!(trusting(&fleet_ca).get(format!("https://{addr}/")).send().await.is_err(), "not the fleet CA's certificate");
}
