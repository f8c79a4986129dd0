//! The fleet page on `web_listen`: axum routes over [`super::http`]'s
//! bounded listener (`limits.web_connections`, `limits.web_header_timeout`),
//! HTTPS with the coordinator's certificate from the fleet CA (or the
//! operator's `web_tls_cert`) unless bound to loopback.
//!
//! Read-only: every route is GET (HEAD), nothing on the page changes the
//! fleet. Nobody sees anything without a session: `/login?token=` trades
//! a one-time link from `drover web login` for an HttpOnly, SameSite=Strict
//! cookie (Secure over HTTPS); every other page and fragment answers 401
//! with how to log in. Templates (askama, checked at compile time) escape
//! every value, and the Content-Security-Policy lets only the page's own
//! script and style run — an agent's text can never become markup.
//!
//! Live updates: each page's changing part is a fragment the page's small
//! script (vendored, `static/page.js`) fetches every two seconds and puts in
//! place; without the script the page reads the same, as of its loading.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::{Context, Result};
use askama::Template;
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderValue, Request, StatusCode};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::get;
use axum::Router;
use axum_extra::extract::cookie::{Cookie, CookieJar, SameSite};
use serde::Deserialize;
use tokio::task::JoinHandle;
use tower::ServiceExt;

use drover_net::identity;
use drover_protocol::WireError;

use super::http;
use crate::app::web::{self as view, BackendHealth, DeploymentView, MachineView, MachinesPage, MachinesQuery, RolloutView, Summary, TenantView};
use crate::app::web_sessions::Session;
use crate::app::{audit, now_ms, Coordinator};

/// The session cookie's name.
pub const COOKIE: &str = "drover_session";

/// Only the page's own script, style and images; no frames, no forms
/// elsewhere, no plugins.
const CSP: &str =
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'";

const SCRIPT: &str = include_str!("../../static/page.js");
const STYLE: &str = include_str!("../../static/page.css");

/// Rollouts the overview lists (those in progress first).
const OVERVIEW_ROLLOUTS: usize = 10;

#[derive(Clone)]
struct Web {
    state: Arc<Coordinator>,
    https: bool,
}

/// A page's frame around its content.
#[derive(Template)]
#[template(path = "base.html")]
struct Base<'a> {
    title: &'a str,
    admin: &'a str,
    /// The content, already rendered (and escaped) by its own template.
    body: &'a str,
}

#[derive(Template)]
#[template(path = "message.html")]
struct Message<'a> {
    text: &'a str,
}

#[derive(Template)]
#[template(path = "overview.html")]
struct Overview<'a> {
    summary: &'a Summary,
    backends: &'a [BackendHealth],
    rollouts: &'a [RolloutView],
    machines: &'a MachinesPage,
    live: &'a str,
    nav: Nav,
}

#[derive(Template)]
#[template(path = "machine.html")]
struct MachinePage<'a> {
    m: &'a MachineView,
    live: &'a str,
}

#[derive(Template)]
#[template(path = "deployment.html")]
struct DeploymentPage<'a> {
    d: &'a DeploymentView,
    live: &'a str,
}

#[derive(Template)]
#[template(path = "rollout.html")]
struct RolloutPage<'a> {
    r: &'a RolloutView,
    live: &'a str,
}

#[derive(Template)]
#[template(path = "tenants.html")]
struct TenantsPage<'a> {
    tenants: &'a [TenantView],
    live: &'a str,
}

/// The machines table's links to other pages, keeping the filters.
struct Nav {
    prev: Option<String>,
    next: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
struct TableQuery {
    #[serde(default)]
    selector: String,
    #[serde(default)]
    tenant: String,
    #[serde(default)]
    page: Option<usize>,
    /// Only the changing part (for the page's script).
    #[serde(default)]
    fragment: Option<u8>,
}

#[derive(Debug, Default, Deserialize)]
struct FragmentQuery {
    #[serde(default)]
    fragment: Option<u8>,
}

#[derive(Debug, Default, Deserialize)]
struct LoginQuery {
    #[serde(default)]
    token: String,
}

fn query_string(selector: &str, tenant: &str, page: usize) -> String {
    let mut q = form_urlencoded::Serializer::new(String::new());
    if !selector.is_empty() {
        q.append_pair("selector", selector);
    }
    if !tenant.is_empty() {
        q.append_pair("tenant", tenant);
    }
    if page > 1 {
        q.append_pair("page", &page.to_string());
    }
    q.finish()
}

fn with_fragment(path: &str, query: &str) -> String {
    if query.is_empty() {
        format!("{path}?fragment=1")
    } else {
        format!("{path}?{query}&fragment=1")
    }
}

/// What a page answers instead, when it cannot be shown.
type Refused = Box<Response>;

/// A rendered template, or a plain 500 naming the failure.
fn render(t: &impl Template) -> Result<String, Refused> {
    t.render().map_err(|e| {
        tracing::warn!(error = %e, "a page could not be rendered");
        Box::new((StatusCode::INTERNAL_SERVER_ERROR, "the page could not be rendered; see the coordinator's log").into_response())
    })
}

fn message(status: StatusCode, title: &str, text: &str) -> Response {
    match render(&Message { text }).and_then(|body| render(&Base { title, admin: "", body: &body })) {
        Ok(page) => (status, Html(page)).into_response(),
        Err(r) => *r,
    }
}

fn login_needed() -> Response {
    message(
        StatusCode::UNAUTHORIZED,
        "Log in",
        "You are not logged in, or your session ended. Run `drover web login` on a machine with your admin certificate and open the link it prints.",
    )
}

fn wire_error(e: WireError) -> Response {
    let status = match e.code {
        drover_protocol::ErrorCode::NotFound => StatusCode::NOT_FOUND,
        drover_protocol::ErrorCode::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    message(status, "Not available", &e.message)
}

/// The session of the request's cookie, while the admin who logged in
/// still exists: one removed since (or removed and added again under the
/// same name) sees nothing more.
fn session(web: &Web, jar: &CookieJar) -> Option<Session> {
    let cookie = jar.get(COOKIE)?;
    let session = web.state.web.sessions.session(cookie.value(), now_ms())?;
    match web.state.store.admin(&session.admin) {
        Ok(Some(record)) if record.created_at == session.admin_since => Some(session),
        _ => None,
    }
}

/// Reads the store off the async workers.
async fn read<T: Send + 'static>(web: &Web, f: impl FnOnce(&Coordinator) -> Result<T, WireError> + Send + 'static) -> Result<T, Refused> {
    let state = web.state.clone();
    match tokio::task::spawn_blocking(move || f(&state)).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(Box::new(wire_error(e))),
        Err(_) => Err(Box::new((StatusCode::INTERNAL_SERVER_ERROR, "reading the fleet failed; see the coordinator's log").into_response())),
    }
}

/// A page: the whole of it, or only its live part when asked.
fn page(title: &str, session: &Session, content: Result<String, Refused>, fragment: bool) -> Response {
    let body = match content {
        Ok(b) => b,
        Err(r) => return *r,
    };
    if fragment {
        return Html(body).into_response();
    }
    match render(&Base { title, admin: &session.admin, body: &body }) {
        Ok(p) => Html(p).into_response(),
        Err(r) => *r,
    }
}

async fn overview(State(web): State<Web>, jar: CookieJar, Query(q): Query<TableQuery>) -> Response {
    let Some(session) = session(&web, &jar) else { return login_needed() };
    let query = MachinesQuery { selector: q.selector.clone(), tenant: q.tenant.clone(), page: q.page.unwrap_or(1) };
    let view::Overview { summary, rollouts, machines } = match read(&web, move |s| view::overview(s, &query, OVERVIEW_ROLLOUTS)).await {
        Ok(v) => v,
        Err(r) => return *r,
    };
    let backends = view::backends(&web.state).await;
    let here = query_string(&machines.selector, &machines.tenant, machines.page);
    let live = with_fragment("/", &here);
    let nav = Nav {
        prev: (machines.page > 1).then(|| format!("/?{}", query_string(&machines.selector, &machines.tenant, machines.page - 1))),
        next: (machines.page < machines.pages).then(|| format!("/?{}", query_string(&machines.selector, &machines.tenant, machines.page + 1))),
    };
    let content = render(&Overview { summary: &summary, backends: &backends, rollouts: &rollouts, machines: &machines, live: &live, nav });
    page("Fleet", &session, content, q.fragment.is_some())
}

async fn machine(State(web): State<Web>, jar: CookieJar, Path(id): Path<String>, Query(q): Query<FragmentQuery>) -> Response {
    let Some(session) = session(&web, &jar) else { return login_needed() };
    let m = match read(&web, move |s| view::machine(s, &id)).await {
        Ok(m) => m,
        Err(r) => return *r,
    };
    let live = with_fragment(&format!("/machines/{}", urlencode(&m.row.id)), "");
    let title = format!("Machine {}", m.row.hostname);
    page(&title, &session, render(&MachinePage { m: &m, live: &live }), q.fragment.is_some())
}

async fn deployment(State(web): State<Web>, jar: CookieJar, Path((machine, generation)): Path<(String, u64)>, Query(q): Query<FragmentQuery>) -> Response {
    let Some(session) = session(&web, &jar) else { return login_needed() };
    let d = match read(&web, move |s| view::deployment(s, &machine, generation)).await {
        Ok(d) => d,
        Err(r) => return *r,
    };
    let live = with_fragment(&format!("/deployments/{}/{}", urlencode(&d.machine_id), d.generation), "");
    let title = format!("Deployment {}", d.id);
    page(&title, &session, render(&DeploymentPage { d: &d, live: &live }), q.fragment.is_some())
}

async fn rollout(State(web): State<Web>, jar: CookieJar, Path(id): Path<String>, Query(q): Query<FragmentQuery>) -> Response {
    let Some(session) = session(&web, &jar) else { return login_needed() };
    let r = match read(&web, move |s| view::rollout(s, &id)).await {
        Ok(r) => r,
        Err(r) => return *r,
    };
    let live = with_fragment(&format!("/rollouts/{}", urlencode(&r.id)), "");
    let title = format!("Rollout {}", r.id);
    page(&title, &session, render(&RolloutPage { r: &r, live: &live }), q.fragment.is_some())
}

async fn tenants(State(web): State<Web>, jar: CookieJar, Query(q): Query<FragmentQuery>) -> Response {
    let Some(session) = session(&web, &jar) else { return login_needed() };
    let t = match read(&web, view::tenants).await {
        Ok(t) => t,
        Err(r) => return *r,
    };
    let live = with_fragment("/tenants", "");
    page("Tenants", &session, render(&TenantsPage { tenants: &t, live: &live }), q.fragment.is_some())
}

fn session_cookie(https: bool, value: String, max_age: time::Duration) -> Cookie<'static> {
    Cookie::build((COOKIE, value)).http_only(true).same_site(SameSite::Strict).secure(https).path("/").max_age(max_age).build()
}

async fn login(State(web): State<Web>, jar: CookieJar, Query(q): Query<LoginQuery>, peer: axum::Extension<SocketAddr>) -> Response {
    let state = web.state.clone();
    let lifetime = state.config.limits.web_session_lifetime;
    match state.web.sessions.redeem(&q.token, now_ms(), lifetime) {
        Ok((cookie, session)) => {
            audit::record(&state, &session.admin, Some(session.role), Some(("web session open".into(), format!("from {}", peer.0.ip()))), Ok(())).await;
            tracing::info!(admin = %session.admin, peer = %peer.0.ip(), "fleet page session opened");
            let max_age = time::Duration::seconds(i64::try_from(lifetime.as_secs()).unwrap_or(i64::MAX));
            (jar.add(session_cookie(web.https, cookie, max_age)), Redirect::to("/")).into_response()
        }
        Err(why) => message(StatusCode::UNAUTHORIZED, "Log in", why.message()),
    }
}

async fn logout(State(web): State<Web>, jar: CookieJar) -> Response {
    let ended = jar.get(COOKIE).and_then(|c| web.state.web.sessions.end(c.value()));
    if let Some(session) = &ended {
        audit::record(&web.state, &session.admin, Some(session.role), Some(("web session close".into(), "logged out".into())), Ok(())).await;
    }
    let jar = jar.remove(session_cookie(web.https, String::new(), time::Duration::ZERO));
    (jar, message(StatusCode::OK, "Logged out", "Your session has ended. `drover web login` prints a link to open a new one.")).into_response()
}

async fn script() -> Response {
    ([(header::CONTENT_TYPE, "text/javascript; charset=utf-8")], SCRIPT).into_response()
}

async fn style() -> Response {
    ([(header::CONTENT_TYPE, "text/css; charset=utf-8")], STYLE).into_response()
}

async fn not_found() -> Response {
    message(StatusCode::NOT_FOUND, "Not found", "There is no such page. The fleet's overview is at /.")
}

fn urlencode(s: &str) -> String {
    form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

/// The headers every answer carries.
async fn harden(response: Response) -> Response {
    let mut response = response;
    let h = response.headers_mut();
    h.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

fn router(web: Web) -> Router {
    Router::new()
        .route("/", get(overview))
        .route("/machines/{id}", get(machine))
        .route("/deployments/{machine}/{generation}", get(deployment))
        .route("/rollouts/{id}", get(rollout))
        .route("/tenants", get(tenants))
        .route("/login", get(login))
        .route("/logout", get(logout))
        .route("/static/page.js", get(script))
        .route("/static/page.css", get(style))
        .fallback(not_found)
        .layer(axum::middleware::map_response(harden))
        .with_state(web)
}

/// The page's TLS: the operator's certificate, or the coordinator's own
/// from the fleet CA.
fn tls(state: &Coordinator) -> Result<tokio_rustls::TlsAcceptor> {
    let config = &state.config;
    let (chain, key) = match (&config.web_tls_cert, &config.web_tls_key) {
        (Some(cert), Some(key)) => {
            let pem = std::fs::read(cert).with_context(|| format!("cannot read web_tls_cert {}", cert.display()))?;
            let chain = pem::parse_many(&pem)
                .with_context(|| format!("web_tls_cert {} is not PEM", cert.display()))?
                .into_iter()
                .filter(|p| p.tag() == "CERTIFICATE")
                .map(|p| p.into_contents())
                .collect::<Vec<_>>();
            if chain.is_empty() {
                anyhow::bail!("web_tls_cert {} holds no CERTIFICATE block", cert.display());
            }
            let key = identity::read_key_pem(key).with_context(|| format!("web_tls_key {}", key.display()))?.serialize_der();
            (chain, key)
        }
        _ => super::server_identity(config, &state.ca)?,
    };
    let chain = chain.into_iter().map(rustls::pki_types::CertificateDer::from).collect();
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(key.into());
    let mut tls = rustls::ServerConfig::builder_with_provider(drover_net::tls::provider())
        .with_safe_default_protocol_versions()
        .context("TLS versions")?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .context("the page's certificate and key do not go together")?;
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(tls)))
}

/// Binds `addr` and serves the page until the task is aborted.
pub async fn serve(state: Arc<Coordinator>, addr: SocketAddr) -> Result<(SocketAddr, JoinHandle<()>)> {
    let https = state.config.web_https();
    let acceptor = if https { Some(tls(&state)?) } else { None };
    let listener = tokio::net::TcpListener::bind(addr).await.with_context(|| format!("cannot listen for the fleet page on {addr} (web_listen)"))?;
    let local = listener.local_addr()?;
    let _ = state.web.bound.set(local);
    let bounds = http::Bounds { connections: state.config.limits.web_connections, header_timeout: state.config.limits.web_header_timeout };
    tracing::info!(%local, https, "fleet page served");
    let app = router(Web { state, https });
    let answer: http::Answer = Arc::new(move |request: Request<hyper::body::Incoming>, peer| {
        let app = app.clone();
        Box::pin(async move {
            let mut request = request.map(Body::new);
            request.extensions_mut().insert(peer);
            match app.oneshot(request).await {
                Ok(r) => r,
                Err(never) => match never {},
            }
        })
    });
    Ok((local, http::spawn(listener, bounds, acceptor, "fleet page", answer)))
}
