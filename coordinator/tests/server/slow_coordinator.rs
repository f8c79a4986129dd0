//! A coordinator slow to answer one request: the agent gives up on that
//! request only, with words of its own ("did not answer", not "timed out
//! connecting"), and keeps its connection — the next request on it is
//! answered. Closing the connection made a deploy to a large fleet cause
//! thousands of reconnects.

use std::sync::Arc;
use std::time::Duration;

use drover_coordinator::pki::Ca;
use drover_net::stream::{read_frame, write_frame};
use drover_net::{ClientError, CoordinatorConnection};
use drover_protocol::v1::*;
use drover_protocol::{MAX_FRAME_LEN, PROTOCOL_VERSION};

/// A server that answers Hello, never answers `FetchAssignment`, and
/// acknowledges everything else.
async fn slow_server(ca: &Ca) -> (quinn::Endpoint, std::net::SocketAddr) {
    let (cert, key_pem) = ca.server_certificate(&["127.0.0.1".into()]).expect("server cert");
    let key = rcgen::KeyPair::from_pem(&key_pem).expect("key").serialize_der();
    let config = drover_net::tls::server_config(&ca.cert_der, vec![cert], &key, Duration::from_secs(30)).expect("tls");
    let endpoint = quinn::Endpoint::server(config, "127.0.0.1:0".parse().expect("addr")).expect("bind");
    let addr = endpoint.local_addr().expect("addr");
    let server = endpoint.clone();
    tokio::spawn(async move {
        while let Some(incoming) = server.accept().await {
            tokio::spawn(async move {
                let Ok(conn) = incoming.await else { return };
                let held = Arc::new(tokio::sync::Mutex::new(Vec::new()));
                while let Ok((mut send, mut recv)) = conn.accept_bi().await {
                    let held = held.clone();
                    tokio::spawn(async move {
                        let Ok(request) = read_frame::<Request>(&mut recv, MAX_FRAME_LEN).await else { return };
                        let answer = match request {
                            Request::Hello(_) => Response::Hello(HelloAck { version: PROTOCOL_VERSION, software: "slow".into() }),
                            Request::Agent(AgentRequest::FetchAssignment) => {
                                // Held open, never answered.
                                held.lock().await.push((send, recv));
                                return;
                            }
                            _ => Response::Agent(AgentResponse::Ack),
                        };
                        let _ = write_frame(&mut send, &answer).await;
                        let _ = send.finish();
                    });
                }
            });
        }
    });
    (endpoint, addr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_answer_abandons_the_request_not_the_connection() {
    drover_net::tls::install_default_provider();
    let (ca, _) = Ca::generate("test").expect("ca");
    let (_server, addr) = slow_server(&ca).await;
    let config = drover_net::tls::client_config(&ca.cert_der, None, Duration::from_secs(30)).expect("tls");
    let endpoint = drover_net::client::client_endpoint(addr).expect("endpoint");
    let conn = CoordinatorConnection::connect(&endpoint, config, addr, "127.0.0.1", "test", Duration::from_secs(5)).await.expect("connect");

    let slow = drover_agent::session::ask(&conn, Request::Agent(AgentRequest::FetchAssignment), Duration::from_millis(300)).await;
    let e = slow.expect_err("no answer in time");
    assert!(matches!(e, ClientError::RequestTimeout { .. }), "{e:?}");
    let text = e.to_string();
    assert!(text.contains("did not answer") && !text.contains("connecting"), "its own words: {text}");
    assert!(conn.connection.close_reason().is_none(), "the connection stays open");

    let next = drover_agent::session::ask(
        &conn,
        Request::Agent(AgentRequest::ReportDeployment(DeploymentReport {
            generation: 1,
            step: DeployStep::Received,
            message: String::new(),
            output_tail: String::new(),
            system_path: None,
            volumes: vec![],
        })),
        Duration::from_secs(5),
    )
    .await
    .expect("the same connection answers the next request");
    assert_eq!(next, Response::Agent(AgentResponse::Ack));
}

/// The slow server on a runtime of its own, which `stop` drops with every
/// socket and task on it: the peer goes silent, as a killed process.
fn server_on_its_own_runtime(ca_der: Vec<u8>, ca: Ca) -> (std::net::SocketAddr, std::sync::mpsc::Sender<std::sync::mpsc::Sender<()>>) {
    let (addr_tx, addr_rx) = std::sync::mpsc::channel();
    let (stop, stopped) = std::sync::mpsc::channel::<std::sync::mpsc::Sender<()>>();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().expect("runtime");
        let (_endpoint, addr) = rt.block_on(slow_server(&ca));
        let _ = addr_tx.send(addr);
        let done = stopped.recv();
        rt.shutdown_timeout(Duration::from_secs(5));
        drop(ca_der);
        if let Ok(done) = done {
            let _ = done.send(());
        }
    });
    (addr_rx.recv().expect("server address"), stop)
}

/// A coordinator that is gone is QUIC's to notice: a late answer never
/// closes the connection, the idle timeout (here 1 s) does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_coordinator_that_sends_nothing_at_all_is_left_at_the_idle_timeout() {
    drover_net::tls::install_default_provider();
    let (ca, _) = Ca::generate("test").expect("ca");
    let ca_der = ca.cert_der.clone();
    let (addr, stop) = server_on_its_own_runtime(ca_der.clone(), ca);
    let config = drover_net::tls::client_config(&ca_der, None, Duration::from_secs(1)).expect("tls");
    let endpoint = drover_net::client::client_endpoint(addr).expect("endpoint");
    let conn = CoordinatorConnection::connect(&endpoint, config, addr, "127.0.0.1", "test", Duration::from_secs(5)).await.expect("connect");
    let alive = drover_agent::session::ask(&conn, Request::Agent(AgentRequest::Report(health())), Duration::from_secs(5)).await;
    assert_eq!(alive.expect("answered"), Response::Agent(AgentResponse::Ack));
    // The server goes away without a word.
    let (done, gone) = std::sync::mpsc::channel();
    stop.send(done).expect("stop");
    tokio::task::spawn_blocking(move || gone.recv()).await.expect("join").expect("the server is gone");
    let e = drover_agent::session::ask(&conn, Request::Agent(AgentRequest::Report(health())), Duration::from_secs(30)).await.expect_err("no answer");
    assert!(!matches!(e, ClientError::RequestTimeout { .. }), "the idle timeout ends it before the deadline: {e:?}");
    assert!(matches!(conn.connection.close_reason(), Some(quinn::ConnectionError::TimedOut)), "{:?}", conn.connection.close_reason());
}

fn health() -> HealthReport {
    HealthReport {
        hostname: "h".into(),
        uptime_secs: 1,
        load_average: [0.0; 3],
        cpu_count: 1,
        cpu_usage_percent: 0.0,
        memory_total_bytes: 1,
        memory_used_bytes: 1,
        disks: vec![],
        failed_units: None,
        agent_version: "0".into(),
        system_path: None,
        boot_id: None,
        booted_system: None,
        pending_system: None,
        nix_store: None,
        addresses: vec![],
        volumes: vec![],
    }
}
