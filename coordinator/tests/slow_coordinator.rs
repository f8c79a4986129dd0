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

    let next = drover_agent::session::ask(&conn, Request::Agent(AgentRequest::ReportDeployment(DeploymentReport {
        generation: 1,
        step: DeployStep::Received,
        message: String::new(),
        output_tail: String::new(),
        system_path: None,
    })), Duration::from_secs(5))
    .await
    .expect("the same connection answers the next request");
    assert_eq!(next, Response::Agent(AgentResponse::Ack));
}
