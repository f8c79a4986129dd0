//! A resilient Garage cluster formed by the coordinator: nodes are recorded
//! (`cluster add-node`), then `cluster apply` learns their ids, connects them,
//! stages and applies the layout (zones and capacities; the replication
//! factor is Garage's own setting) and waits until Garage reports healthy.

use std::collections::BTreeSet;
use std::time::Duration;

use serde_json::Value;

use drover_protocol::v1::{S3Cluster, S3Node};
use drover_protocol::{ErrorCode, WireError};

use crate::model::S3NodeRecord;
use crate::server::{now_ms, wire_error, Coordinator};

use super::garage::Garage;
use super::service::{provider, wire};

/// How long `apply` waits for the cluster to become healthy.
pub const HEALTHY_TIMEOUT: Duration = Duration::from_secs(90);

fn invalid(m: impl Into<String>) -> WireError {
    WireError::new(ErrorCode::InvalidArgument, m)
}

fn token(state: &Coordinator) -> Result<String, WireError> {
    let (config, _) = provider(state)?;
    config.admin_token().map_err(|e| WireError::new(ErrorCode::Internal, format!("{e:#}")))
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
    token(state)?;
    let record = S3NodeRecord { admin: admin.trim_end_matches('/').to_string(), rpc, zone, capacity, id: None, added_at: now_ms() };
    state.store.put_s3_node(&record).map_err(wire_error)?;
    tracing::info!(admin = %record.admin, zone = %record.zone, "garage node recorded");
    status(state).await
}

/// Records a Garage node that is a Drover machine, from its labels.
pub async fn add_machine(state: &Coordinator, machine: &str) -> Result<S3Cluster, WireError> {
    let record = state
        .store
        .machine(machine)
        .map_err(wire_error)?
        .ok_or_else(|| WireError::new(ErrorCode::NotFound, format!("machine {machine:?} not found; see `drover machines list`")))?;
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
    let token = token(state)?;
    let mut nodes = state.store.s3_nodes().map_err(wire_error)?;
    if nodes.is_empty() {
        return Err(invalid("no Garage node is recorded; add them with `drover s3 cluster add-node`"));
    }
    for node in nodes.iter_mut() {
        let g = Garage::new(&node.admin, token.clone()).map_err(wire)?;
        let id = g.node_id().await.map_err(|e| {
            let e = wire(e);
            WireError::new(e.code, format!("node {}: {}", node.admin, e.message))
        })?;
        node.id = Some(id);
        state.store.put_s3_node(node).map_err(wire_error)?;
    }
    let first = Garage::new(&nodes[0].admin, token.clone()).map_err(wire)?;
    let peers: Vec<String> = nodes.iter().skip(1).filter_map(|n| n.id.as_ref().map(|id| format!("{id}@{}", n.rpc))).collect();
    if !peers.is_empty() {
        first.connect(&peers).await.map_err(wire)?;
    }
    let wanted: BTreeSet<(String, String, u64)> =
        nodes.iter().filter_map(|n| n.id.clone().map(|id| (id, n.zone.clone(), n.capacity))).collect();
    let current: BTreeSet<(String, String, u64)> = first.layout_roles().await.map_err(wire)?.into_iter().collect();
    if wanted != current {
        let roles: Vec<_> = wanted.into_iter().collect();
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
        let connected = health.get("connectedNodes").and_then(Value::as_u64).unwrap_or(0);
        let settled = health.get("status").and_then(Value::as_str) == Some("healthy")
            && connected >= nodes.len() as u64;
        stable = if settled { stable + 1 } else { 0 };
        if stable >= 3 {
            break;
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(WireError::new(
                ErrorCode::Unavailable,
                format!("the cluster is not healthy after {}s: {health}", HEALTHY_TIMEOUT.as_secs()),
            ));
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    status(state).await
}

/// Nodes, zones, health and partitions, from the first node that answers.
pub async fn status(state: &Coordinator) -> Result<S3Cluster, WireError> {
    let token = token(state)?;
    let nodes = state.store.s3_nodes().map_err(wire_error)?;
    let mut answer: Option<(Value, Value)> = None;
    for node in &nodes {
        let g = Garage::new(&node.admin, token.clone()).map_err(wire)?;
        if let (Ok(health), Ok(status)) = (g.health().await, g.status().await) {
            answer = Some((health, status));
            break;
        }
    }
    let (health, status) = answer.unwrap_or((Value::Null, Value::Null));
    let up = |id: &Option<String>| {
        status
            .get("nodes")
            .and_then(Value::as_array)
            .and_then(|list| list.iter().find(|n| n.get("id").and_then(Value::as_str) == id.as_deref()))
            .and_then(|n| n.get("isUp"))
            .and_then(Value::as_bool)
            .unwrap_or(false)
    };
    let num = |k: &str| health.get(k).and_then(Value::as_u64).unwrap_or(0);
    Ok(S3Cluster {
        health: health.get("status").and_then(Value::as_str).unwrap_or("unknown").to_string(),
        layout_version: status.get("layoutVersion").and_then(Value::as_u64).unwrap_or(0),
        partitions: num("partitions"),
        partitions_all_ok: num("partitionsAllOk"),
        nodes: nodes
            .iter()
            .map(|n| S3Node { id: n.id.clone(), admin: n.admin.clone(), rpc: n.rpc.clone(), zone: n.zone.clone(), capacity: n.capacity, up: up(&n.id) })
            .collect(),
    })
}
