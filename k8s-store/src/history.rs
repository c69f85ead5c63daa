//! Histories kept in the cluster: one ConfigMap per dtab namespace
//! (`<object name>.dtab-history`), holding its records in order in one JSON list under
//! [`HISTORY_KEY`], bounded by count and by what one object may hold.
//!
//! A record belongs to one life of the `DTab` object (its `uid`: a namespace deleted and
//! created again starts a new life) and one generation of it; the API server moves the
//! generation on every change of the dentries, so records order by life, then generation,
//! whoever writes them and in whatever order. A record is written by the store that made the
//! change, with its author and message, and by every store that saw a change nobody recorded
//! (a `kubectl apply`), without them; (life, generation) identifies it, so it is written once.
//! Appending is a read, then an update carrying the ConfigMap's `resourceVersion`, again on
//! a conflict.

use std::collections::BTreeMap;
use std::time::SystemTime;

use k8s_openapi::api::core::v1::ConfigMap;
use kube::Api;
use kube::api::{ObjectMeta, PostParams};
use serde::{Deserialize, Serialize};
use waymark_store::kit::HistoryRecord;
use waymark_store::{ChangeMeta, HistoryEntry, Namespace, StoreError, Version};

use crate::call::{Call, Failure};
use crate::names::{NAMESPACE_ANNOTATION, history_name};

/// The ConfigMap key holding the records.
pub const HISTORY_KEY: &str = "history.json";

/// The label on every history ConfigMap.
pub const HISTORY_LABEL: &str = "waymark.io/dtab-history";

/// The most bytes of records one ConfigMap holds; Kubernetes allows 1 MiB of data.
const MAX_HISTORY_BYTES: usize = 900 * 1024;

/// How many times an append is tried against concurrent appends.
const APPEND_ATTEMPTS: usize = 50;

/// One record as the ConfigMap holds it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct StoredRecord {
    /// The `uid` of the object's life the change belongs to.
    pub(crate) life: String,
    /// The object's generation after the change.
    pub(crate) generation: i64,
    /// Whether the change deleted the object.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub(crate) deleted: bool,
    #[serde(flatten)]
    pub(crate) record: HistoryRecord,
}

/// Reads and appends histories.
#[derive(Clone)]
pub(crate) struct Histories {
    api: Api<ConfigMap>,
    limit: usize,
    call: Call,
}

impl StoredRecord {
    /// A record of a change to (or the deletion of) one life of an object.
    pub(crate) fn new(
        life: &str,
        generation: i64,
        version: &Version,
        text: Option<&str>,
        meta: &ChangeMeta,
    ) -> StoredRecord {
        StoredRecord {
            life: life.to_string(),
            generation,
            deleted: text.is_none(),
            record: HistoryRecord::new(Some(version), text, SystemTime::now(), meta),
        }
    }

    fn key(&self) -> (&str, i64, bool) {
        (&self.life, self.generation, self.deleted)
    }

    fn authored(&self) -> bool {
        self.record.author.is_some() || self.record.message.is_some()
    }

    fn entry(&self) -> Option<HistoryEntry> {
        match self.record.clone().into_entry(None) {
            Ok(entry) => Some(entry),
            Err(error) => {
                tracing::warn!(%error, "skipping a history record that does not parse");
                None
            }
        }
    }
}

/// The version of a deletion: it names the life that ended, and is never an object's
/// resourceVersion.
pub(crate) fn deletion_version(life: &str) -> Version {
    Version::from_bytes(format!("deleted-{life}"))
}

impl Histories {
    pub(crate) fn new(api: Api<ConfigMap>, limit: usize, call: Call) -> Self {
        Histories { api, limit: limit.max(1), call }
    }

    /// The namespace's records, oldest first; `None` when it has no history object.
    pub(crate) async fn read(&self, ns: &Namespace) -> Result<Option<Vec<StoredRecord>>, StoreError> {
        let name = history_name(ns);
        let Some(map) = self.call.run(self.api.get_opt(&name)).await.map_err(|f| f.store(ns))? else {
            return Ok(None);
        };
        Ok(Some(records_of(&map)))
    }

    /// The namespace's history entries, newest first, at most the limit.
    pub(crate) async fn entries(&self, ns: &Namespace) -> Result<Option<Vec<HistoryEntry>>, StoreError> {
        let Some(records) = self.read(ns).await? else { return Ok(None) };
        Ok(Some(records.iter().rev().take(self.limit).filter_map(StoredRecord::entry).collect()))
    }

    /// Whether a record of (life, generation, deleted) is there.
    pub(crate) async fn has(
        &self,
        ns: &Namespace,
        life: &str,
        generation: i64,
        deleted: bool,
    ) -> Result<bool, StoreError> {
        Ok(self.read(ns).await?.is_some_and(|records| records.iter().any(|r| r.key() == (life, generation, deleted))))
    }

    /// Adds `record` in its place. A record of the same change already there is kept, unless
    /// it says nothing of who made the change and this one does.
    pub(crate) async fn append(&self, ns: &Namespace, record: StoredRecord) -> Result<(), StoreError> {
        let name = history_name(ns);
        for _ in 0..APPEND_ATTEMPTS {
            let Some(map) = self.call.run(self.api.get_opt(&name)).await.map_err(|f| f.store(ns))? else {
                let mut records = vec![record.clone()];
                let map = self.object(ns, &name, None, &mut records);
                match self.call.run(self.api.create(&PostParams::default(), &map)).await {
                    Ok(_) => return Ok(()),
                    Err(Failure::Conflict | Failure::Exists) => continue,
                    Err(f) => return Err(f.store(ns)),
                }
            };
            let mut records = records_of(&map);
            match records.iter().position(|r| r.key() == record.key()) {
                Some(i) if records[i].authored() || !record.authored() => return Ok(()),
                Some(i) => records[i] = record.clone(),
                None => insert(&mut records, record.clone()),
            }
            let map = self.object(ns, &name, map.metadata.resource_version.clone(), &mut records);
            match self.call.run(self.api.replace(&name, &PostParams::default(), &map)).await {
                Ok(_) => return Ok(()),
                // Someone appended meanwhile, or deleted it: read it again.
                Err(Failure::Conflict | Failure::NotFound) => continue,
                Err(f) => return Err(f.store(ns)),
            }
        }
        Err(StoreError::Unavailable(format!("the history of {ns} changed under every attempt to add to it")))
    }

    /// The ConfigMap holding `records`, trimmed to the limits.
    fn object(
        &self,
        ns: &Namespace,
        name: &str,
        resource_version: Option<String>,
        records: &mut Vec<StoredRecord>,
    ) -> ConfigMap {
        let excess = records.len().saturating_sub(self.limit);
        records.drain(..excess);
        let mut text = serde_json::to_string(&records).unwrap_or_default();
        while text.len() > MAX_HISTORY_BYTES && records.len() > 1 {
            records.remove(0);
            text = serde_json::to_string(&records).unwrap_or_default();
        }
        ConfigMap {
            metadata: ObjectMeta {
                name: Some(name.to_string()),
                resource_version,
                labels: Some(BTreeMap::from([
                    (HISTORY_LABEL.to_string(), "true".to_string()),
                    ("app.kubernetes.io/managed-by".to_string(), "waymark".to_string()),
                ])),
                annotations: Some(BTreeMap::from([(NAMESPACE_ANNOTATION.to_string(), ns.to_string())])),
                ..ObjectMeta::default()
            },
            data: Some(BTreeMap::from([(HISTORY_KEY.to_string(), text)])),
            ..ConfigMap::default()
        }
    }
}

fn records_of(map: &ConfigMap) -> Vec<StoredRecord> {
    let text = map.data.as_ref().and_then(|d| d.get(HISTORY_KEY)).map_or("[]", String::as_str);
    serde_json::from_str(text).unwrap_or_else(|error| {
        tracing::warn!(%error, name = ?map.metadata.name, "a history object that does not parse starts again");
        Vec::new()
    })
}

/// Inserts `record` after the records of its life that come before it; a life not seen yet
/// is the newest.
fn insert(records: &mut Vec<StoredRecord>, record: StoredRecord) {
    let same_life: Vec<usize> =
        records.iter().enumerate().filter(|(_, r)| r.life == record.life).map(|(i, _)| i).collect();
    let Some(&last) = same_life.last() else {
        records.push(record);
        return;
    };
    let position = same_life
        .iter()
        .copied()
        .find(|&i| (records[i].generation, records[i].deleted) > (record.generation, record.deleted))
        .unwrap_or(last + 1);
    records.insert(position, record);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(life: &str, generation: i64, deleted: bool) -> StoredRecord {
        let text = if deleted { None } else { Some("/a=>/b") };
        StoredRecord::new(life, generation, &Version::from_bytes("1"), text, &ChangeMeta::default())
    }

    #[test]
    fn records_order_by_life_then_generation_whatever_the_order_they_come_in() {
        let mut records = Vec::new();
        for r in [
            record("a", 2, false),
            record("a", 1, false),
            record("b", 1, false),
            record("a", 3, true),
            record("b", 2, false),
        ] {
            insert(&mut records, r);
        }
        let keys: Vec<(String, i64, bool)> =
            records.iter().map(|r| (r.life.clone(), r.generation, r.deleted)).collect();
        assert_eq!(
            keys,
            [
                ("a".into(), 1, false),
                ("a".into(), 2, false),
                ("a".into(), 3, true),
                ("b".into(), 1, false),
                ("b".into(), 2, false)
            ]
        );
    }
}
