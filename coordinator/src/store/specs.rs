//! A deployment's spec, kept once: what an assignment shares with the
//! other machines of its deployment (the system, secrets, checks, deadline,
//! goal) is a [`SpecRecord`] in the specs tree, keyed by the SHA-256 of its
//! stored form; the assignment keeps its machine's own part (generation,
//! facts, volumes, SSH access) and the digest, and a deployment record the
//! same digest in place of its system. A deployment to 10,000 machines
//! thus writes its spec once and small entries per machine.
//!
//! It happens here, where records are encoded and decoded: the application
//! reads and writes whole `AssignmentRecord`s and `DeploymentRecord`s
//! as before. A spec is immutable (its key is its content), so the decoded
//! ones are cached. Records written before hold their spec whole and read
//! as they are. A spec is never removed: a deployment removed before its
//! commit point may leave one no record names (a few hundred bytes; the
//! same content deployed again uses it).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use serde_json::{Map, Value};

use crate::model::SpecRecord;

use super::{codec, Record, StoreError, Tree};

impl Record for SpecRecord {
    const TREE: Tree = Tree::Specs;
    const WHAT: &'static str = "deployment spec";
}

/// Whether, and how, a record's stored form refers to a spec.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sharing {
    None,
    /// An assignment: its shared fields go to the spec.
    Assignment,
    /// A deployment record: its system, when it names the spec it is in.
    Deployment,
}

/// The assignment's fields a spec holds.
const SHARED: [&str; 7] = ["system", "secrets", "checks", "health_deadline_ms", "goal", "force_switch", "reboot"];

/// Where a record names its spec.
const SPEC: &str = "spec";

fn to_object<T: serde::Serialize>(record: &T) -> Result<Map<String, Value>, StoreError> {
    match serde_json::to_value(record).map_err(|e| StoreError::Encode(e.to_string()))? {
        Value::Object(map) => Ok(map),
        _ => Err(StoreError::Encode("a record is not a JSON object".into())),
    }
}

/// What [`split`] makes of a record: the bytes to keep under its key, and
/// the spec (digest, record) it refers to, to be kept too.
pub struct Split {
    pub bytes: Vec<u8>,
    pub spec: Option<(String, SpecRecord)>,
}

/// The stored form of `record`, of a tree that shares as `sharing` says.
/// A deployment record leaves its system out only when `kept` says the
/// spec it names is kept (else it stays whole).
pub fn split<T: Record>(sharing: Sharing, record: &T, kept: &dyn Fn(&str) -> Result<bool, StoreError>) -> Result<Split, StoreError> {
    let mut map = to_object(record)?;
    let spec = match sharing {
        Sharing::None => None,
        Sharing::Assignment => {
            let Some(Value::Object(assignment)) = map.get_mut("assignment") else {
                return Err(StoreError::Encode("an assignment record without its assignment".into()));
            };
            let shared: Map<String, Value> = SHARED.iter().filter_map(|f| assignment.remove(*f).map(|v| (f.to_string(), v))).collect();
            let spec: SpecRecord = serde_json::from_value(Value::Object(shared)).map_err(|e| StoreError::Encode(e.to_string()))?;
            let digest = spec.digest();
            map.insert(SPEC.into(), Value::String(digest.clone()));
            Some((digest, spec))
        }
        Sharing::Deployment => {
            match map.get(SPEC) {
                Some(Value::String(digest)) if kept(digest)? => {
                    map.remove("system");
                }
                Some(_) => {
                    map.remove(SPEC);
                }
                None => {}
            }
            None
        }
    };
    Ok(Split { bytes: codec::encode(&Value::Object(map))?, spec })
}

/// A spec's fields, decoded once and shared.
pub type Shared = Arc<Map<String, Value>>;

/// Reads a record of a tree that shares as `sharing` says, with its spec
/// (by digest) from `spec`.
pub fn join<T: Record>(sharing: Sharing, key: &[u8], bytes: &[u8], spec: &dyn Fn(&str) -> Result<Shared, StoreError>) -> Result<T, StoreError> {
    if sharing == Sharing::None {
        return codec::decode(T::TREE, key, bytes);
    }
    let corrupt = |reason: String| StoreError::Corrupt { tree: T::TREE.name(), key: String::from_utf8_lossy(key).to_string(), reason };
    let Value::Object(mut map) = codec::decode::<Value>(T::TREE, key, bytes)? else {
        return Err(corrupt("not a JSON object".into()));
    };
    if let Some(Value::String(digest)) = map.get(SPEC) {
        let shared = spec(digest).map_err(|e| corrupt(format!("its deployment spec {digest}: {e}")))?;
        match sharing {
            Sharing::Assignment => {
                let Some(Value::Object(assignment)) = map.get_mut("assignment") else {
                    return Err(corrupt("an assignment record without its assignment".into()));
                };
                assignment.extend(shared.iter().map(|(k, v)| (k.clone(), v.clone())));
                map.remove(SPEC);
            }
            Sharing::Deployment => {
                let system = shared.get("system").cloned().ok_or_else(|| corrupt("its deployment spec has no system".into()))?;
                map.insert("system".into(), system);
            }
            Sharing::None => {}
        }
    }
    serde_json::from_value(Value::Object(map)).map_err(|e| corrupt(e.to_string()))
}

/// Decoded specs by digest. Specs never change, so what is here is never
/// stale; it is emptied when it grows past [`CACHED`].
#[derive(Default)]
pub struct SpecCache(Mutex<HashMap<String, Shared>>);

/// The most specs kept decoded.
const CACHED: usize = 256;

impl SpecCache {
    /// Whether the spec under `digest` was read (and so is kept).
    pub fn has(&self, digest: &str) -> bool {
        self.lock().contains_key(digest)
    }

    /// The spec under `digest`, read with `read` (raw bytes of the specs
    /// tree) when it is not cached.
    pub fn get(&self, digest: &str, read: impl FnOnce(&[u8]) -> Result<Option<Vec<u8>>, StoreError>) -> Result<Shared, StoreError> {
        if let Some(found) = self.lock().get(digest) {
            return Ok(found.clone());
        }
        let bytes = read(digest.as_bytes())?.ok_or_else(|| StoreError::NotFound { what: SpecRecord::WHAT, id: digest.to_string() })?;
        let spec: SpecRecord = codec::decode(Tree::Specs, digest.as_bytes(), &bytes)?;
        let shared = Arc::new(to_object(&spec)?);
        let mut cache = self.lock();
        if cache.len() >= CACHED {
            cache.clear();
        }
        cache.insert(digest.to_string(), shared.clone());
        Ok(shared)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Shared>> {
        self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Reads a stored record of a sharing tree and writes it again, without
/// its spec: the machine's own part is read through its record type (with
/// a stand-in spec) and must come back the same (the store's golden
/// records).
pub fn recode<T: Record>(sharing: Sharing, key: &[u8], bytes: &[u8]) -> Result<Vec<u8>, StoreError> {
    let Value::Object(stored) = codec::decode::<Value>(T::TREE, key, bytes)? else {
        return Err(StoreError::Corrupt { tree: T::TREE.name(), key: String::from_utf8_lossy(key).to_string(), reason: "not a JSON object".into() });
    };
    let Some(Value::String(digest)) = stored.get(SPEC).cloned() else {
        let record: T = codec::decode(T::TREE, key, bytes)?;
        return codec::encode(&record);
    };
    let stand_in = SpecRecord {
        system: drover_protocol::v1::SystemSpec::Flake { uri: String::new(), attribute: String::new() },
        secrets: Vec::new(),
        checks: Vec::new(),
        health_deadline_ms: 0,
        goal: Default::default(),
        force_switch: false,
        reboot: false,
    };
    let shared = Arc::new(to_object(&stand_in)?);
    let record: T = join(sharing, key, bytes, &|_| Ok(shared.clone()))?;
    let again = split(sharing, &record, &|_| Ok(true))?;
    if sharing != Sharing::Assignment {
        return Ok(again.bytes);
    }
    // Split again, it names the stand-in: the digest stays the record's.
    let mut map = match codec::decode::<Value>(T::TREE, key, &again.bytes)? {
        Value::Object(map) => map,
        _ => return Err(StoreError::Encode("a record is not a JSON object".into())),
    };
    map.insert(SPEC.into(), Value::String(digest));
    codec::encode(&Value::Object(map))
}
