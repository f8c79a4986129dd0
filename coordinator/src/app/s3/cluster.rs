//! A resilient Garage cluster formed by the coordinator: nodes are recorded
//! (`cluster add-node`), then `cluster apply` learns their ids, connects them,
//! stages and applies the layout (zones and capacities; the replication
//! factor is Garage's own setting) and waits until the cluster reports
//! healthy with every node connected.

use std::collections::BTreeSet;
use std::time::Duration;

use drover_protocol::v1::{S3Cluster, S3Node};
use drover_protocol::{ErrorCode, WireError};

use crate::model::S3NodeRecord;
use crate::s3::{ClusterHealth, ClusterStatus, Role};

use super::super::errors::{invalid, not_found, s3 as wire};
use super::super::{now_ms, Coordinator};
use super::object_store;

/// How long `apply` waits for the cluster to become healthy.
pub const HEALTHY_TIMEOUT: Duration = Duration::from_secs(90);

/// Records a node (replacing one with the same admin endpoint).
async fn record(state: &Coordinator, node: &S3NodeRecord) -> Result<(), WireError> {
    state.store.commit(|tx| tx.put(node.admin.as_bytes(), node)).await.map_err(WireError::from)
}

pub async fn add_node(state: &Coordinator, admin: String, rpc: String, zone: String, capacity: u64) -> Result<S3Cluster, WireError> {
    if !(admin.starts_with("http://") || admin.starts_with("https://")) {
        return Err(invalid(format!("--admin {admin:?} must be the node's admin API URL, e.g. http://10.0.0.11:3903")));
    }
    let port_ok = rpc.rsplit_once(':').is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok());
    if !port_ok {
        return Err(invalid(format!("--rpc {rpc:?} must be the node's RPC address HOST:PORT (its rpc_public_addr)")));
    }
    if zone.is_empty() || !zone.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)) {
        return Err(invalid(format!("--zone {zone:?} must be a name of letters, digits, '-', '_' or '.'")));
    }
    if capacity < 1024 {
        return Err(invalid("--capacity must be at least 1KiB"));
    }
    let store = object_store(state)?;
    (store.connect)(&admin).map_err(wire)?;
    let node = S3NodeRecord { admin: admin.trim_end_matches('/').to_string(), rpc, zone, capacity, id: None, added_at: now_ms() };
    record(state, &node).await?;
    tracing::info!(admin = %node.admin, zone = %node.zone, "garage node recorded");
    status(state).await
}

/// Records a Garage node that is a Drover machine, from its labels.
pub async fn add_machine(state: &Coordinator, machine: &str) -> Result<S3Cluster, WireError> {
    let record = state.store.machine(machine)?.ok_or_else(|| not_found(format!("machine {machine:?} not found; see `drover machines list`")))?;
    let label = |key: &str| {
        record.labels.get(key).cloned().ok_or_else(|| {
            invalid(format!(
                "machine {machine} has no label {key}; set garage.admin, garage.rpc, garage.zone and garage.capacity with `drover machines label {machine} {key}=...`"
            ))
        })
    };
    let capacity = label("garage.capacity")?
        .parse::<bytesize::ByteSize>()
        .map_err(|e| invalid(format!("machine {machine}: label garage.capacity is not a size: {e}")))?
        .as_u64();
    add_node(state, label("garage.admin")?, label("garage.rpc")?, label("garage.zone")?, capacity).await
}

pub async fn apply(state: &Coordinator) -> Result<S3Cluster, WireError> {
    let store = object_store(state)?;
    let mut nodes = state.store.s3_nodes()?;
    if nodes.is_empty() {
        return Err(invalid("no Garage node is recorded; add them with `drover s3 cluster add-node`"));
    }
    for node in nodes.iter_mut() {
        let client = (store.connect)(&node.admin).map_err(wire)?;
        let id = client.node_id().await.map_err(|e| {
            let e = wire(e);
            WireError::new(e.code, format!("node {}: {}", node.admin, e.message))
        })?;
        node.id = Some(id);
        record(state, node).await?;
    }
    let first = (store.connect)(&nodes[0].admin).map_err(wire)?;
    let peers: Vec<String> = nodes.iter().skip(1).filter_map(|n| n.id.as_ref().map(|id| format!("{id}@{}", n.rpc))).collect();
    if !peers.is_empty() {
        first.connect(&peers).await.map_err(wire)?;
    }
    let wanted: BTreeSet<Role> = nodes.iter().filter_map(|n| n.id.clone().map(|node| Role { node, zone: n.zone.clone(), capacity: n.capacity })).collect();
    let current: BTreeSet<Role> = first.layout().await.map_err(wire)?.into_iter().collect();
    if wanted != current {
        let roles: Vec<Role> = wanted.into_iter().collect();
        let version = first.apply_layout(&roles).await.map_err(wire)?;
        tracing::info!(version, nodes = roles.len(), "garage layout applied");
    }
    // Healthy, with every recorded node connected, several polls in a row:
    // right after a layout change Garage can say healthy while peers are
    // still (re)connecting.
    let deadline = tokio::time::Instant::now() + HEALTHY_TIMEOUT;
    let mut stable = 0;
    loop {
        let health = first.health().await.map_err(wire)?;
        let settled = health.status == "healthy" && health.connected_nodes >= nodes.len() as u64;
        stable = if settled { stable + 1 } else { 0 };
        if stable >= 3 {
            break;
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(WireError::new(ErrorCode::Unavailable, format!("the cluster is not healthy after {}s: {health:?}", HEALTHY_TIMEOUT.as_secs())));
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    status(state).await
}

/// Nodes, zones, health and partitions, from the first node that answers.
pub async fn status(state: &Coordinator) -> Result<S3Cluster, WireError> {
    let store = object_store(state)?;
    let nodes = state.store.s3_nodes()?;
    let mut answer: Option<(ClusterHealth, ClusterStatus)> = None;
    for node in &nodes {
        // A connector error is the coordinator's own (its token file): say
        // so. A node that does not answer is passed over.
        let client = (store.connect)(&node.admin).map_err(wire)?;
        if let (Ok(health), Ok(status)) = (client.health().await, client.status().await) {
            answer = Some((health, status));
            break;
        }
    }
    let (health, status) = answer.unwrap_or_else(|| (ClusterHealth { status: "unknown".into(), ..Default::default() }, ClusterStatus::default()));
    let up = |id: &Option<String>| status.nodes.iter().any(|(n, up)| Some(n) == id.as_ref() && *up);
    Ok(S3Cluster {
        health: health.status.clone(),
        layout_version: status.layout_version,
        partitions: health.partitions,
        partitions_all_ok: health.partitions_all_ok,
        nodes: nodes
            .iter()
            .map(|n| S3Node { id: n.id.clone(), admin: n.admin.clone(), rpc: n.rpc.clone(), zone: n.zone.clone(), capacity: n.capacity, up: up(&n.id) })
            .collect(),
    })
}
