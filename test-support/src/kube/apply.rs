//! Field ownership (`metadata.managedFields`, FieldsV1) and server-side apply: every write
//! records which manager set which fields; an apply merges the applied configuration,
//! removes fields its manager owned before and no longer applies, and refuses (409) to change
//! fields another manager owns unless forced.

use std::collections::BTreeSet;

use serde_json::{Map, Value, json};

use super::kinds::Kind;
use super::patch::{ListType, builtin_list_type};
use super::schema;

/// A field: path elements as FieldsV1 spells them (`f:spec`, `k:{"name":"a"}`, `v:"x"`).
pub(crate) type FieldPath = Vec<String>;
/// The fields a manager owns.
pub(crate) type FieldSet = BTreeSet<FieldPath>;

/// Metadata fields that no manager owns: the server sets or checks them.
const IGNORED_METADATA: &[&str] = &[
    "name",
    "namespace",
    "uid",
    "resourceVersion",
    "generation",
    "creationTimestamp",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
    "managedFields",
    "selfLink",
    "generateName",
];

/// How lists of one type merge: built-in tags or the CRD's schema.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ListTypes<'a> {
    kind: &'a Kind,
    schema: Option<&'a Value>,
}

/// One `managedFields` entry.
#[derive(Debug, Clone, PartialEq)]
struct Entry {
    manager: String,
    operation: String,
    api_version: String,
    time: String,
    subresource: Option<String>,
    fields: FieldSet,
}

/// A field another manager owns with a different value: (`"manager" using apiVersion`, path).
pub(crate) type Conflict = (String, String);

/// Which part of an object a write addresses.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Part {
    /// The main resource; `status` is not owned when it is a subresource.
    Main { status_is_subresource: bool },
    /// The `/status` subresource: only `status` is owned.
    Status,
}

impl<'a> ListTypes<'a> {
    pub(crate) fn new(kind: &'a Kind, version: &str) -> ListTypes<'a> {
        ListTypes { kind, schema: kind.version(version).and_then(|v| v.schema.as_ref()) }
    }

    fn list_type(&self, names: &[&str]) -> ListType {
        if self.kind.is_custom() {
            match self.schema.and_then(|s| schema::at(s, names)) {
                Some(node) => schema::list_type(node),
                None => ListType::Atomic,
            }
        } else {
            builtin_list_type(self.kind, names)
        }
    }
}

/// The fields `object` sets.
pub(crate) fn field_set(object: &Value, lists: ListTypes<'_>, part: Part) -> FieldSet {
    let mut set = FieldSet::new();
    let Value::Object(root) = object else { return set };
    for (key, value) in root {
        match key.as_str() {
            "apiVersion" | "kind" => continue,
            "status" if part == (Part::Main { status_is_subresource: true }) => continue,
            "status" => {}
            _ if part == Part::Status => continue,
            "metadata" => {
                if let Value::Object(meta) = value {
                    let filtered: Map<String, Value> = meta
                        .iter()
                        .filter(|(k, _)| !IGNORED_METADATA.contains(&k.as_str()))
                        .map(|(k, v)| (k.clone(), v.clone()))
                        .collect();
                    if !filtered.is_empty() {
                        walk_map(&filtered, &mut vec!["f:metadata".into()], &mut vec!["metadata"], lists, &mut set);
                    }
                }
                continue;
            }
            _ => {}
        }
        walk_value(value, &mut vec![format!("f:{key}")], &mut vec![key.as_str()], lists, &mut set);
    }
    set
}

fn walk_map<'v>(
    map: &'v Map<String, Value>,
    path: &mut FieldPath,
    names: &mut Vec<&'v str>,
    lists: ListTypes<'_>,
    set: &mut FieldSet,
) {
    for (key, value) in map {
        path.push(format!("f:{key}"));
        names.push(key);
        walk_value(value, path, names, lists, set);
        names.pop();
        path.pop();
    }
}

fn walk_value<'v>(
    value: &'v Value,
    path: &mut FieldPath,
    names: &mut Vec<&'v str>,
    lists: ListTypes<'_>,
    set: &mut FieldSet,
) {
    match value {
        Value::Object(map) if !map.is_empty() => walk_map(map, path, names, lists, set),
        Value::Array(items) if !items.is_empty() => match lists.list_type(names) {
            ListType::Atomic => {
                set.insert(path.clone());
            }
            ListType::Set => {
                for item in items {
                    path.push(format!("v:{item}"));
                    set.insert(path.clone());
                    path.pop();
                }
            }
            ListType::Map(keys) => {
                for item in items {
                    path.push(item_key(item, &keys));
                    set.insert(path.clone());
                    if let Value::Object(fields) = item {
                        walk_map(fields, path, names, lists, set);
                    }
                    path.pop();
                }
            }
        },
        _ => {
            set.insert(path.clone());
        }
    }
}

/// `k:{"name":"a"}` for a map-list item, keys sorted as the server writes them.
fn item_key(item: &Value, keys: &[String]) -> String {
    let mut sorted: Vec<&String> = keys.iter().collect();
    sorted.sort();
    let parts: Vec<String> =
        sorted.into_iter().filter_map(|k| item.get(k).map(|v| format!("{}:{v}", Value::String(k.clone())))).collect();
    format!("k:{{{}}}", parts.join(","))
}

fn item_matches(item: &Value, key: &str) -> bool {
    match serde_json::from_str::<Map<String, Value>>(key) {
        Ok(wanted) => wanted.iter().all(|(k, v)| item.get(k) == Some(v)),
        Err(_) => false,
    }
}

/// The value at a field path.
pub(crate) fn value_at<'v>(object: &'v Value, path: &[String]) -> Option<&'v Value> {
    let mut current = object;
    for element in path {
        current = step(current, element)?;
    }
    Some(current)
}

fn step<'v>(current: &'v Value, element: &str) -> Option<&'v Value> {
    if let Some(field) = element.strip_prefix("f:") {
        current.get(field)
    } else if let Some(key) = element.strip_prefix("k:") {
        current.as_array()?.iter().find(|item| item_matches(item, key))
    } else if let Some(value) = element.strip_prefix("v:") {
        let wanted: Value = serde_json::from_str(value).ok()?;
        current.as_array()?.iter().find(|item| **item == wanted)
    } else if let Some(index) = element.strip_prefix("i:") {
        current.as_array()?.get(index.parse::<usize>().ok()?)
    } else {
        None
    }
}

/// Removes the value at a field path, if there is one.
fn remove_at(object: &mut Value, path: &[String]) {
    let Some((last, parents)) = path.split_last() else { return };
    let mut current = object;
    for element in parents {
        let next = if let Some(field) = element.strip_prefix("f:") {
            current.get_mut(field)
        } else if let Some(key) = element.strip_prefix("k:") {
            current.as_array_mut().and_then(|items| items.iter_mut().find(|item| item_matches(item, key)))
        } else if let Some(value) = element.strip_prefix("v:") {
            let wanted: Option<Value> = serde_json::from_str(value).ok();
            current.as_array_mut().and_then(|items| items.iter_mut().find(|item| Some(&**item) == wanted.as_ref()))
        } else {
            None
        };
        match next {
            Some(n) => current = n,
            None => return,
        }
    }
    if let Some(field) = last.strip_prefix("f:") {
        if let Value::Object(map) = current {
            map.remove(field);
        }
    } else if let Some(key) = last.strip_prefix("k:") {
        if let Value::Array(items) = current {
            items.retain(|item| !item_matches(item, key));
        }
    } else if let Some(value) = last.strip_prefix("v:") {
        let wanted: Option<Value> = serde_json::from_str(value).ok();
        if let Value::Array(items) = current {
            items.retain(|item| Some(item) != wanted.as_ref());
        }
    }
}

/// `.spec.containers[name="a"].image`, as conflict messages print a field.
pub(crate) fn display_path(path: &[String]) -> String {
    let mut out = String::new();
    for element in path {
        if let Some(field) = element.strip_prefix("f:") {
            out.push('.');
            out.push_str(field);
        } else if let Some(key) = element.strip_prefix("k:") {
            let parts: Vec<String> = serde_json::from_str::<Map<String, Value>>(key)
                .map(|m| m.iter().map(|(k, v)| format!("{k}={v}")).collect())
                .unwrap_or_default();
            out.push_str(&format!("[{}]", parts.join(",")));
        } else if let Some(value) = element.strip_prefix("v:") {
            out.push_str(&format!("[={value}]"));
        } else if let Some(index) = element.strip_prefix("i:") {
            out.push_str(&format!("[{index}]"));
        }
    }
    out
}

/// A FieldsV1 document for a set of fields.
pub(crate) fn to_fields_v1(set: &FieldSet) -> Value {
    #[derive(Default)]
    struct Node {
        member: bool,
        children: std::collections::BTreeMap<String, Node>,
    }
    fn render(node: &Node) -> Value {
        let mut map = Map::new();
        if node.member && !node.children.is_empty() {
            map.insert(".".into(), json!({}));
        }
        for (k, child) in &node.children {
            map.insert(k.clone(), render(child));
        }
        Value::Object(map)
    }
    let mut root = Node::default();
    for path in set {
        let mut node = &mut root;
        for element in path {
            node = node.children.entry(element.clone()).or_default();
        }
        node.member = true;
    }
    render(&root)
}

/// The set of fields a FieldsV1 document names.
pub(crate) fn from_fields_v1(value: &Value) -> FieldSet {
    fn walk(value: &Value, path: &mut FieldPath, set: &mut FieldSet) {
        let Value::Object(map) = value else { return };
        if map.is_empty() && !path.is_empty() {
            set.insert(path.clone());
        }
        for (k, v) in map {
            if k == "." {
                if !path.is_empty() {
                    set.insert(path.clone());
                }
            } else {
                path.push(k.clone());
                walk(v, path, set);
                path.pop();
            }
        }
    }
    let mut set = FieldSet::new();
    walk(value, &mut Vec::new(), &mut set);
    set
}

fn parse_entries(object: &Value) -> Vec<Entry> {
    let Some(Value::Array(list)) = object.pointer("/metadata/managedFields") else { return Vec::new() };
    list.iter()
        .filter_map(|e| {
            let manager = e.get("manager")?.as_str()?.to_string();
            Some(Entry {
                manager,
                operation: e.get("operation").and_then(Value::as_str).unwrap_or("Update").to_string(),
                api_version: e.get("apiVersion").and_then(Value::as_str).unwrap_or_default().to_string(),
                time: e.get("time").and_then(Value::as_str).unwrap_or_default().to_string(),
                subresource: e.get("subresource").and_then(Value::as_str).map(str::to_string),
                fields: e.get("fieldsV1").map(from_fields_v1).unwrap_or_default(),
            })
        })
        .collect()
}

fn write_entries(object: &mut Value, entries: &[Entry]) {
    let rendered: Vec<Value> = entries
        .iter()
        .filter(|e| !e.fields.is_empty())
        .map(|e| {
            let mut v = json!({
                "manager": e.manager,
                "operation": e.operation,
                "apiVersion": e.api_version,
                "time": e.time,
                "fieldsType": "FieldsV1",
                "fieldsV1": to_fields_v1(&e.fields),
            });
            if let Some(sub) = &e.subresource {
                v["subresource"] = json!(sub);
            }
            v
        })
        .collect();
    if let Some(Value::Object(meta)) = object.get_mut("metadata") {
        if rendered.is_empty() {
            meta.remove("managedFields");
        } else {
            meta.insert("managedFields".into(), Value::Array(rendered));
        }
    }
}

/// Whether any field in `set` lies strictly below `path`.
fn has_descendant(set: &FieldSet, path: &FieldPath) -> bool {
    // Paths below `path` sort right after it.
    set.range((std::ops::Bound::Excluded(path.clone()), std::ops::Bound::Unbounded))
        .next()
        .is_some_and(|next| next.starts_with(path))
}

/// Records an ordinary write (create, update, non-apply patch) by `manager`: the fields it
/// changed become its own and leave every other manager.
pub(crate) struct UpdateRecord<'a> {
    pub(crate) manager: &'a str,
    pub(crate) api_version: &'a str,
    pub(crate) subresource: Option<&'a str>,
    pub(crate) now: &'a str,
    pub(crate) lists: ListTypes<'a>,
    pub(crate) part: Part,
}

impl UpdateRecord<'_> {
    /// Updates `new`'s managedFields, given the object before the write.
    pub(crate) fn record(&self, old: Option<&Value>, new: &mut Value) {
        let old_entries = old.map(parse_entries).unwrap_or_default();
        let sent = new.pointer("/metadata/managedFields").cloned();
        let kept = old.and_then(|o| o.pointer("/metadata/managedFields").cloned());
        // A client that changes managedFields itself (kubectl's migration to server-side
        // apply, or `[{}]` to clear them) is taken at its word.
        let mut entries = if sent.is_some() && sent != kept { parse_entries(new) } else { old_entries };
        let new_set = field_set(new, self.lists, self.part);
        let old_set = old.map(|o| field_set(o, self.lists, self.part)).unwrap_or_default();
        let changed: FieldSet = new_set
            .iter()
            .filter(|p| {
                let before = old.and_then(|o| value_at(o, p));
                if has_descendant(&new_set, p) { before.is_none() } else { before != value_at(new, p) }
            })
            .cloned()
            .collect();
        let gone: FieldSet = old_set.difference(&new_set).cloned().collect();
        let mine = |e: &Entry| {
            e.manager == self.manager && e.operation == "Update" && e.subresource.as_deref() == self.subresource
        };
        for entry in entries.iter_mut().filter(|e| !mine(e)) {
            entry.fields.retain(|p| !changed.contains(p) && !gone.contains(p));
        }
        match entries.iter_mut().find(|e| mine(e)) {
            Some(entry) => {
                entry.fields.retain(|p| !gone.contains(p));
                if !changed.is_empty() {
                    entry.fields.extend(changed);
                    entry.time = self.now.to_string();
                    entry.api_version = self.api_version.to_string();
                }
            }
            None if !changed.is_empty() => entries.push(Entry {
                manager: self.manager.to_string(),
                operation: "Update".into(),
                api_version: self.api_version.to_string(),
                time: self.now.to_string(),
                subresource: self.subresource.map(str::to_string),
                fields: changed,
            }),
            None => {}
        }
        write_entries(new, &entries);
    }
}

/// A server-side apply by one manager.
pub(crate) struct Apply<'a> {
    pub(crate) manager: &'a str,
    pub(crate) force: bool,
    pub(crate) api_version: &'a str,
    pub(crate) subresource: Option<&'a str>,
    pub(crate) now: &'a str,
    pub(crate) lists: ListTypes<'a>,
    pub(crate) part: Part,
}

impl Apply<'_> {
    /// Merges `applied` into `live` (a skeleton for a create); on conflicts, returns them.
    pub(crate) fn merge(&self, live: &Value, applied: &Value) -> Result<Value, Vec<Conflict>> {
        let mut entries = parse_entries(live);
        let applied_set = field_set(applied, self.lists, self.part);
        let mine = |e: &Entry| {
            e.manager == self.manager && e.operation == "Apply" && e.subresource.as_deref() == self.subresource
        };

        // Conflicts: a leaf another manager owns, which this apply would change.
        let mut conflicts = Vec::new();
        let mut forced: Vec<(usize, FieldPath)> = Vec::new();
        for (i, entry) in entries.iter().enumerate() {
            if entry.manager == self.manager {
                continue;
            }
            for path in entry.fields.intersection(&applied_set) {
                if has_descendant(&applied_set, path) {
                    continue;
                }
                if value_at(live, path) != value_at(applied, path) {
                    conflicts.push((format!("\"{}\" using {}", entry.manager, entry.api_version), display_path(path)));
                    forced.push((i, path.clone()));
                }
            }
        }
        if !conflicts.is_empty() && !self.force {
            return Err(conflicts);
        }
        for (i, path) in forced {
            entries[i].fields.remove(&path);
        }

        // Fields this manager applied before and no longer applies, and nobody else owns, go.
        let previous = entries.iter().find(|e| mine(e)).map(|e| e.fields.clone()).unwrap_or_default();
        let others: FieldSet = entries.iter().filter(|e| !mine(e)).flat_map(|e| e.fields.iter().cloned()).collect();
        let mut merged = live.clone();
        let mut removals: Vec<&FieldPath> = previous
            .iter()
            .filter(|p| !applied_set.contains(*p) && !others.contains(*p) && !has_descendant(&others, p))
            .collect();
        // Outermost first: removing a list item takes its fields with it, and the item must
        // still carry its key fields to be found.
        removals.sort_by_key(|p| p.len());
        let mut removed: Vec<&FieldPath> = Vec::new();
        for path in removals {
            if !removed.iter().any(|r| path.starts_with(r)) {
                remove_at(&mut merged, path);
                removed.push(path);
            }
        }
        merge_applied(&mut merged, applied, &mut Vec::new(), self.lists, self.part);

        entries.retain(|e| !mine(e));
        if !applied_set.is_empty() {
            entries.push(Entry {
                manager: self.manager.to_string(),
                operation: "Apply".into(),
                api_version: self.api_version.to_string(),
                time: self.now.to_string(),
                subresource: self.subresource.map(str::to_string),
                fields: applied_set,
            });
        }
        write_entries(&mut merged, &entries);
        Ok(merged)
    }
}

/// Merges an applied configuration into an object: maps by key, lists by their type.
fn merge_applied<'v>(live: &mut Value, applied: &'v Value, names: &mut Vec<&'v str>, lists: ListTypes<'_>, part: Part) {
    let Value::Object(applied_map) = applied else {
        *live = applied.clone();
        return;
    };
    if !live.is_object() {
        *live = Value::Object(Map::new());
    }
    let Value::Object(live_map) = live else { return };
    for (key, value) in applied_map {
        if names.is_empty() {
            let skip = match part {
                Part::Status => key != "status",
                Part::Main { status_is_subresource } => status_is_subresource && key == "status",
            };
            if skip {
                continue;
            }
        }
        if names == &["metadata"] && IGNORED_METADATA.contains(&key.as_str()) {
            continue;
        }
        names.push(key);
        match value {
            Value::Null => {
                live_map.remove(key);
            }
            Value::Object(_) => {
                let entry = live_map.entry(key.clone()).or_insert_with(|| Value::Object(Map::new()));
                merge_applied(entry, value, names, lists, part);
            }
            Value::Array(items) => {
                let existing = match live_map.remove(key) {
                    Some(Value::Array(a)) => a,
                    _ => Vec::new(),
                };
                let merged = match lists.list_type(names) {
                    ListType::Atomic => items.clone(),
                    ListType::Set => {
                        let mut out = existing;
                        for item in items {
                            if !out.contains(item) {
                                out.push(item.clone());
                            }
                        }
                        out
                    }
                    ListType::Map(keys) => {
                        let mut rest = existing;
                        let mut out = Vec::new();
                        for item in items {
                            let key = item_key(item, &keys);
                            let id = key.strip_prefix("k:").unwrap_or_default().to_string();
                            let mut base = match rest.iter().position(|l| item_matches(l, &id)) {
                                Some(i) => rest.remove(i),
                                None => Value::Object(Map::new()),
                            };
                            merge_applied(&mut base, item, names, lists, part);
                            out.push(base);
                        }
                        out.extend(rest);
                        out
                    }
                };
                live_map.insert(key.clone(), Value::Array(merged));
            }
            scalar => {
                live_map.insert(key.clone(), scalar.clone());
            }
        }
        names.pop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kube::kinds::Registry;

    fn deployments() -> Kind {
        Registry::builtin().lookup("apps", "v1", "deployments").unwrap().as_ref().clone()
    }

    const MAIN: Part = Part::Main { status_is_subresource: true };

    #[test]
    fn field_sets_round_trip_through_fields_v1() {
        let kind = deployments();
        let lists = ListTypes::new(&kind, "v1");
        let object = json!({"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "web", "labels": {"app": "web"}, "finalizers": ["a"]},
            "spec": {"replicas": 2, "template": {"spec": {"containers": [{"name": "c", "image": "i", "args": ["x"]}]}}},
            "status": {"replicas": 1}});
        let set = field_set(&object, lists, MAIN);
        let v1 = to_fields_v1(&set);
        assert_eq!(
            v1,
            json!({"f:metadata": {"f:finalizers": {"v:\"a\"": {}}, "f:labels": {"f:app": {}}},
                   "f:spec": {"f:replicas": {}, "f:template": {"f:spec": {"f:containers": {
                       "k:{\"name\":\"c\"}": {".": {}, "f:args": {}, "f:image": {}, "f:name": {}}}}}}})
        );
        assert_eq!(from_fields_v1(&v1), set);
        let path: FieldPath = vec![
            "f:spec".into(),
            "f:template".into(),
            "f:spec".into(),
            "f:containers".into(),
            "k:{\"name\":\"c\"}".into(),
            "f:image".into(),
        ];
        assert_eq!(value_at(&object, &path), Some(&json!("i")));
        assert_eq!(display_path(&path), ".spec.template.spec.containers[name=\"c\"].image");
    }

    #[test]
    fn apply_removes_what_it_no_longer_applies_and_conflicts_with_others() {
        let kind = deployments();
        let lists = ListTypes::new(&kind, "v1");
        let apply = |manager: &'static str, force: bool| Apply {
            manager,
            force,
            api_version: "apps/v1",
            subresource: None,
            now: "2026-01-01T00:00:00Z",
            lists,
            part: MAIN,
        };
        let skeleton = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"}});
        let first = json!({"metadata": {"labels": {"a": "1", "b": "2"}}, "spec": {"replicas": 1}});
        let live = apply("alice", false).merge(&skeleton, &first).unwrap();
        assert_eq!(live["metadata"]["labels"], json!({"a": "1", "b": "2"}));

        // Alice drops label b: it goes. Bob sets replicas to 3: conflict unless forced.
        let second = json!({"metadata": {"labels": {"a": "1"}}, "spec": {"replicas": 1}});
        let live = apply("alice", false).merge(&live, &second).unwrap();
        assert_eq!(live["metadata"]["labels"], json!({"a": "1"}));
        let bob = json!({"spec": {"replicas": 3}});
        let conflicts = apply("bob", false).merge(&live, &bob).unwrap_err();
        assert_eq!(conflicts, [("\"alice\" using apps/v1".to_string(), ".spec.replicas".to_string())]);
        // The same value is shared, not a conflict.
        assert!(apply("bob", false).merge(&live, &json!({"spec": {"replicas": 1}})).is_ok());
        let live = apply("bob", true).merge(&live, &bob).unwrap();
        assert_eq!(live["spec"]["replicas"], 3);
        let managers: Vec<&str> = live["metadata"]["managedFields"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["manager"].as_str().unwrap())
            .collect();
        assert_eq!(managers, ["alice", "bob"]);
        // Alice no longer owns replicas, so dropping it from her config leaves it alone.
        let live = apply("alice", false).merge(&live, &json!({"metadata": {"labels": {"a": "1"}}})).unwrap();
        assert_eq!(live["spec"]["replicas"], 3);
    }

    #[test]
    fn updates_move_ownership_of_changed_fields() {
        let kind = deployments();
        let lists = ListTypes::new(&kind, "v1");
        let record = |manager: &'static str| UpdateRecord {
            manager,
            api_version: "apps/v1",
            subresource: None,
            now: "t",
            lists,
            part: MAIN,
        };
        let mut created =
            json!({"metadata": {"name": "w", "labels": {"a": "1"}}, "spec": {"replicas": 1, "paused": false}});
        record("creator").record(None, &mut created);
        let mut updated = created.clone();
        updated["spec"]["replicas"] = json!(2);
        record("scaler").record(Some(&created), &mut updated);
        let entries = &updated["metadata"]["managedFields"];
        assert_eq!(entries[0]["manager"], "creator");
        assert_eq!(
            entries[0]["fieldsV1"],
            json!({"f:metadata": {"f:labels": {"f:a": {}}}, "f:spec": {"f:paused": {}}})
        );
        assert_eq!(entries[1]["fieldsV1"], json!({"f:spec": {"f:replicas": {}}}));
    }
}
