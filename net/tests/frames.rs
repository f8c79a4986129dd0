//! Frames are read as their bytes arrive: a declared length costs nothing
//! until the bytes come, and a budget shared by every stream bounds what all
//! frames in flight hold, over real QUIC on loopback.

use std::net::SocketAddr;
use std::time::Duration;

use drover_net::stream::{read_frame_within, FrameBudget, StreamError};
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};

/// A server endpoint on loopback and a client connection to it.
async fn pair() -> (quinn::Endpoint, quinn::Connection, quinn::Connection) {
    let ca_key = KeyPair::generate().expect("key");
    let mut ca_params = CertificateParams::default();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).expect("ca");
    let issuer = Issuer::new(ca_params, ca_key);
    let key = KeyPair::generate().expect("key");
    let leaf = CertificateParams::new(vec!["localhost".to_string()]).expect("params").signed_by(&key, &issuer).expect("leaf");
    let idle = Duration::from_secs(10);
    let server_config = drover_net::tls::server_config(ca.der(), vec![leaf.der().to_vec()], &key.serialize_der(), idle).expect("server tls");
    let server = drover_net::socket::endpoint(SocketAddr::from(([127, 0, 0, 1], 0)), Some(server_config)).expect("server");
    let addr = server.local_addr().expect("addr");
    let client = drover_net::client::client_endpoint(addr).expect("client");
    let client_config = drover_net::tls::client_config(ca.der(), None, idle).expect("client tls");
    let connecting = client.connect_with(client_config, addr, "localhost").expect("connect");
    let (accepted, connected) = tokio::join!(async { server.accept().await.expect("incoming").await.expect("accepted") }, connecting);
    (server, accepted, connected.expect("connected"))
}

/// Opens a stream that declares a frame of `declared` bytes and sends
/// `sent` of them, leaving the stream open.
async fn declare(conn: &quinn::Connection, declared: u32, sent: usize) -> quinn::SendStream {
    let (mut send, _recv) = conn.open_bi().await.expect("open");
    send.write_all(&declared.to_be_bytes()).await.expect("header");
    send.write_all(&vec![7u8; sent]).await.expect("bytes");
    send
}

async fn until(mut done: impl FnMut() -> bool) {
    tokio::time::timeout(Duration::from_secs(10), async {
        while !done() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("condition reached within 10 s");
}

#[tokio::test]
async fn a_declared_length_reserves_only_the_bytes_that_arrived() {
    let (_server, server_conn, client_conn) = pair().await;
    let budget = FrameBudget::new(32 << 20);
    let _send = declare(&client_conn, 8 << 20, 1000).await;
    let (_s, mut recv) = server_conn.accept_bi().await.expect("accept");
    let reader = {
        let budget = budget.clone();
        tokio::spawn(async move { read_frame_within::<String>(&mut recv, 8 << 20, &[&budget]).await.map(|_| ()) })
    };
    until(|| budget.available() < budget.total()).await;
    let reserved = budget.total() - budget.available();
    assert!(reserved <= 64 << 10, "1,000 bytes of a declared 8 MiB frame reserve {reserved} bytes");
    drop(_send);
    client_conn.close(0u32.into(), b"done");
    let outcome = reader.await.expect("reader");
    assert!(outcome.is_err(), "an unfinished frame is an error");
    assert_eq!(budget.available(), budget.total(), "the bytes go back to the budget when the stream fails");
}

#[tokio::test]
async fn an_exhausted_budget_fails_the_stream_and_recovers_when_frames_end() {
    let (_server, server_conn, client_conn) = pair().await;
    let budget = FrameBudget::new(64 << 10);
    let mut first_send = declare(&client_conn, 1 << 20, 60 << 10).await;
    let (_s1, mut first) = server_conn.accept_bi().await.expect("accept");
    let first_reader = {
        let budget = budget.clone();
        tokio::spawn(async move { read_frame_within::<Vec<u8>>(&mut first, 1 << 20, &[&budget]).await })
    };
    until(|| budget.available() == 0).await;

    let _second_send = declare(&client_conn, 1 << 20, 4 << 10).await;
    let (_s2, mut second) = server_conn.accept_bi().await.expect("accept");
    let refused = read_frame_within::<Vec<u8>>(&mut second, 1 << 20, &[&budget]).await;
    match refused {
        Err(e @ StreamError::BudgetExhausted { .. }) => {
            assert!(e.to_string().contains("65536 bytes"), "the error names the budget: {e}");
        }
        other => panic!("a frame beyond the budget is refused, got {other:?}"),
    }

    first_send.reset(0u32.into()).expect("reset");
    assert!(first_reader.await.expect("reader").is_err());
    assert_eq!(budget.available(), budget.total(), "the first frame's bytes come back");
}

#[tokio::test]
async fn a_whole_frame_within_the_budget_decodes_and_gives_its_bytes_back() {
    let (_server, server_conn, client_conn) = pair().await;
    let budget = FrameBudget::new(1 << 20);
    let message = "x".repeat(300 << 10);
    let writer = {
        let message = message.clone();
        tokio::spawn(async move {
            let (mut send, _recv) = client_conn.open_bi().await.expect("open");
            drover_net::stream::write_frame(&mut send, &message).await.expect("write");
            send.finish().expect("finish");
            send.stopped().await.ok();
        })
    };
    let (_s, mut recv) = server_conn.accept_bi().await.expect("accept");
    let got: String = read_frame_within(&mut recv, 8 << 20, &[&budget]).await.expect("decoded");
    assert_eq!(got, message);
    assert_eq!(budget.available(), budget.total());
    drop(recv);
    writer.await.expect("writer");
}

#[tokio::test]
async fn a_frame_reserves_from_every_budget_or_from_none() {
    let (_server, server_conn, client_conn) = pair().await;
    let connection = FrameBudget::new(32 << 10);
    let process = FrameBudget::new(1 << 20);
    let _send = declare(&client_conn, 1 << 20, 100 << 10).await;
    let (_s, mut recv) = server_conn.accept_bi().await.expect("accept");
    let refused = read_frame_within::<Vec<u8>>(&mut recv, 1 << 20, &[&process, &connection]).await;
    assert!(matches!(refused, Err(StreamError::BudgetExhausted { budget }) if budget == 32 << 10), "the connection's budget refuses: {refused:?}");
    assert_eq!(process.available(), process.total(), "what the process budget gave is given back");
    assert_eq!(connection.available(), connection.total());
}
