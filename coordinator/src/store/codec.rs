//! How records are kept: JSON inside a versioned envelope
//! `{"v": N, "record": ...}`. Reading an older `v` runs the record through
//! [`migrate`] first; a newer `v` than this build knows is an error.

use serde::{de::DeserializeOwned, Deserialize, Serialize};
use serde_json::Value;

use super::StoreError;
use drover_store::Tree;

/// The schema version this build writes.
///
/// - 1: the first.
/// - 2: health reports are normalised before they are stored; version 1
///   could hold `null` where an agent had sent NaN or an infinity, which
///   made the machine's record unreadable. The migration puts 0 there.
/// - 3: what the machines of a deployment share is kept once, in the specs
///   tree ([`super::specs`]): an assignment names it (`spec`) in place of
///   its system, secrets, checks, deadline and goal, a deployment record
///   in place of its system. Records of version 2 read as they are; a
///   build of version 2 refuses a store of 3 rather than misread it.
pub const SCHEMA_VERSION: u32 = 3;

#[derive(Serialize, Deserialize)]
struct Envelope<T> {
    v: u32,
    record: T,
}

#[derive(Deserialize)]
struct VersionOnly {
    v: u32,
}

/// Brings a record written by an older schema up to [`SCHEMA_VERSION`],
/// one version at a time.
pub fn migrate(tree: Tree, mut v: u32, mut record: Value) -> Result<Value, String> {
    while v < SCHEMA_VERSION {
        record = match v {
            1 => v1_to_v2(tree, record),
            // A record of 2 holds its spec whole, as 3 may too.
            2 => record,
            other => return Err(format!("no migration from version {other} for {}", tree.name())),
        };
        v += 1;
    }
    if v > SCHEMA_VERSION {
        return Err(format!("written by a newer coordinator (record version {v}, this build reads up to {SCHEMA_VERSION}); upgrade drover"));
    }
    Ok(record)
}

/// Version 2: non-finite floats in a machine's health, stored as `null`, become 0.
fn v1_to_v2(tree: Tree, mut record: Value) -> Value {
    if tree != Tree::Machines {
        return record;
    }
    if let Some(health) = record.get_mut("health").and_then(Value::as_object_mut) {
        if let Some(load) = health.get_mut("load_average").and_then(Value::as_array_mut) {
            for x in load.iter_mut().filter(|x| x.is_null()) {
                *x = Value::from(0.0);
            }
        }
        if let Some(cpu) = health.get_mut("cpu_usage_percent").filter(|x| x.is_null()) {
            *cpu = Value::from(0.0);
        }
    }
    record
}

pub fn encode<T: Serialize>(record: &T) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(&Envelope { v: SCHEMA_VERSION, record }).map_err(|e| StoreError::Encode(e.to_string()))
}

pub fn decode<T: DeserializeOwned>(tree: Tree, key: &[u8], bytes: &[u8]) -> Result<T, StoreError> {
    let corrupt = |reason: String| StoreError::Corrupt { tree: tree.name(), key: String::from_utf8_lossy(key).to_string(), reason };
    let VersionOnly { v } = serde_json::from_slice(bytes).map_err(|e| corrupt(e.to_string()))?;
    if v == SCHEMA_VERSION {
        let envelope: Envelope<T> = serde_json::from_slice(bytes).map_err(|e| corrupt(e.to_string()))?;
        return Ok(envelope.record);
    }
    let envelope: Envelope<Value> = serde_json::from_slice(bytes).map_err(|e| corrupt(e.to_string()))?;
    let record = migrate(tree, v, envelope.record).map_err(corrupt)?;
    serde_json::from_value(record).map_err(|e| corrupt(e.to_string()))
}

/// Wraps `record` in an envelope of an older version (for migration tests).
#[cfg(test)]
pub fn encode_as(v: u32, record: Value) -> Vec<u8> {
    serde_json::to_vec(&Envelope { v, record }).unwrap_or_default()
}
