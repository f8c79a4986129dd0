//! The fleet page's health of the systems the coordinator works with: a
//! real Garage and the LINSTOR double, answering and then not.

use crate::common;

use std::time::Duration;

use common::garage::GarageNode;
use common::linstor::LinstorDouble;
use drover_coordinator::config::LinstorConfig;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_shows_garage_and_linstor_healthy_and_then_not() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut node = GarageNode::single(dir.path()).await;
    let mut fleet = common::garage::unserved_with_s3(&node.admin_url, &node.s3_url, &node.admin_token, None).await;
    let mut double = LinstorDouble::start(&fleet.dir.path().join("linstor"), &["web-1"]).await;
    let mut linstor = LinstorConfig::new(&double.url);
    linstor.request_timeout = Duration::from_secs(2);
    fleet.config.linstor = Some(linstor);
    fleet.config.web_listen = Some("127.0.0.1:0".parse().expect("addr"));
    fleet.serve().await;
    let state = fleet.handle.as_ref().expect("served").coordinator.clone();

    let health = drover_coordinator::app::web::backends_now(&state).await;
    let garage = health.iter().find(|h| h.system == "Garage").expect("Garage is shown");
    assert!(garage.ok && garage.text.starts_with("healthy"), "{garage:?}");
    let block = health.iter().find(|h| h.system == "LINSTOR").expect("LINSTOR is shown");
    assert!(block.ok && block.text.starts_with("answering"), "{block:?}");
    // What the page shows is the same, for the next seconds.
    assert_eq!(drover_coordinator::app::web::backends(&state).await.len(), 2);

    node.stop();
    double.stop().await;
    let health = drover_coordinator::app::web::backends_now(&state).await;
    for h in &health {
        assert!(!h.ok, "{} is down and shown so: {h:?}", h.system);
        assert!(!h.text.is_empty(), "with why");
    }
    fleet.stop().await;
}
