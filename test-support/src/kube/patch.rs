//! The PATCH bodies the API server accepts: JSON patch (RFC 6902), JSON merge patch
//! (RFC 7386) and, for built-in types, strategic merge patch with its directives
//! (`$patch`, `$retainKeys`, `$setElementOrder/`, `$deleteFromPrimitiveList/`).

use serde_json::{Map, Value};

use super::kinds::Kind;

/// How a list merges, from the built-in types' `patchStrategy`/`listType` tags or a CRD's
/// `x-kubernetes-list-type`.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum ListType {
    /// Replaced whole.
    Atomic,
    /// A set of scalars: merged by value.
    Set,
    /// Items are maps identified by these keys (the first is the strategic merge key).
    Map(Vec<String>),
}

/// The list type of a built-in type's list at `path` (field names from the root, without list
/// indices), as the Go types declare it.
pub(crate) fn builtin_list_type(kind: &Kind, path: &[&str]) -> ListType {
    let Some((last, parents)) = path.split_last() else { return ListType::Atomic };
    let parent = parents.last().copied().unwrap_or("");
    let keys = |k: &[&str]| ListType::Map(k.iter().map(|s| s.to_string()).collect());
    match *last {
        "finalizers" if parent == "metadata" => ListType::Set,
        "ownerReferences" if parent == "metadata" => keys(&["uid"]),
        "containers" | "initContainers" | "ephemeralContainers" => keys(&["name"]),
        "ports" if matches!(parent, "containers" | "initContainers" | "ephemeralContainers") => {
            keys(&["containerPort", "protocol"])
        }
        "ports" if kind.kind == "Service" && path == ["spec", "ports"] => keys(&["port", "protocol"]),
        "env" | "volumes" | "imagePullSecrets" | "resourceClaims" | "schedulingGates" => keys(&["name"]),
        "volumeMounts" => keys(&["mountPath"]),
        "volumeDevices" => keys(&["devicePath"]),
        "hostAliases" => keys(&["ip"]),
        "topologySpreadConstraints" => keys(&["topologyKey", "whenUnsatisfiable"]),
        "conditions" if parents.contains(&"status") => keys(&["type"]),
        "addresses" if kind.kind == "Node" && parent == "status" => keys(&["type"]),
        "webhooks" if kind.group == "admissionregistration.k8s.io" => keys(&["name"]),
        _ => ListType::Atomic,
    }
}

/// Applies an RFC 6902 JSON patch.
pub(crate) fn json_patch(target: &mut Value, patch: &Value) -> Result<(), String> {
    let patch: json_patch::Patch = serde_json::from_value(patch.clone()).map_err(|e| e.to_string())?;
    json_patch::patch(target, &patch).map_err(|e| e.to_string())
}

/// Applies an RFC 7386 merge patch.
pub(crate) fn merge_patch(target: &mut Value, patch: &Value) {
    json_patch::merge(target, patch);
}

/// Applies a strategic merge patch to a built-in type's object.
pub(crate) fn strategic_merge(kind: &Kind, original: &Value, patch: &Value) -> Result<Value, String> {
    let (Value::Object(original), Value::Object(patch)) = (original, patch) else {
        return Err("a strategic merge patch must be a JSON object".into());
    };
    match merge_map(kind, &mut Vec::new(), original.clone(), patch)? {
        Some(map) => Ok(Value::Object(map)),
        None => Err("a strategic merge patch may not delete the whole object".into()),
    }
}

const DIRECTIVE: &str = "$patch";
const RETAIN_KEYS: &str = "$retainKeys";
const SET_ELEMENT_ORDER: &str = "$setElementOrder/";
const DELETE_FROM_PRIMITIVE_LIST: &str = "$deleteFromPrimitiveList/";

/// Merges `patch` into `original`; `None` when the patch deletes the map.
fn merge_map(
    kind: &Kind,
    path: &mut Vec<String>,
    mut original: Map<String, Value>,
    patch: &Map<String, Value>,
) -> Result<Option<Map<String, Value>>, String> {
    match patch.get(DIRECTIVE).and_then(Value::as_str) {
        Some("replace") => return Ok(Some(strip_directives(patch))),
        Some("delete") => return Ok(None),
        Some("merge") | None => {}
        Some(other) => return Err(format!("unknown patch type: {other}")),
    }
    if let Some(retain) = patch.get(RETAIN_KEYS) {
        let keep: Vec<&str> =
            retain.as_array().ok_or("$retainKeys must be a list")?.iter().filter_map(Value::as_str).collect();
        original.retain(|k, _| keep.contains(&k.as_str()));
    }
    let mut orders: Vec<(&str, &Vec<Value>)> = Vec::new();
    for (key, value) in patch {
        if let Some(field) = key.strip_prefix(SET_ELEMENT_ORDER) {
            orders.push((field, value.as_array().ok_or("$setElementOrder must be a list")?));
        } else if let Some(field) = key.strip_prefix(DELETE_FROM_PRIMITIVE_LIST) {
            let remove = value.as_array().ok_or("$deleteFromPrimitiveList must be a list")?;
            if let Some(Value::Array(list)) = original.get_mut(field) {
                list.retain(|v| !remove.contains(v));
            }
        }
    }
    for (key, value) in patch {
        if key.starts_with('$') {
            continue;
        }
        path.push(key.clone());
        match value {
            Value::Null => {
                original.remove(key);
            }
            Value::Object(sub) => {
                let base = match original.remove(key) {
                    Some(Value::Object(m)) => m,
                    _ => Map::new(),
                };
                if let Some(merged) = merge_map(kind, path, base, sub)? {
                    original.insert(key.clone(), Value::Object(merged));
                }
            }
            Value::Array(items) => {
                let base = match original.remove(key) {
                    Some(Value::Array(a)) => a,
                    _ => Vec::new(),
                };
                let merged = merge_list(kind, path, base, items)?;
                original.insert(key.clone(), Value::Array(merged));
            }
            scalar => {
                original.insert(key.clone(), scalar.clone());
            }
        }
        path.pop();
    }
    for (field, order) in orders {
        path.push(field.to_string());
        if let Some(Value::Array(list)) = original.get_mut(field) {
            let refs: Vec<&str> = path.iter().map(String::as_str).collect();
            let list_type = builtin_list_type(kind, &refs);
            reorder(list, order, &list_type);
        }
        path.pop();
    }
    Ok(Some(original))
}

fn merge_list(
    kind: &Kind,
    path: &mut Vec<String>,
    original: Vec<Value>,
    patch: &[Value],
) -> Result<Vec<Value>, String> {
    let refs: Vec<&str> = path.iter().map(String::as_str).collect();
    let list_type = builtin_list_type(kind, &refs);
    let replaces = patch.iter().any(|item| item.get(DIRECTIVE).and_then(Value::as_str) == Some("replace"));
    match list_type {
        ListType::Atomic => Ok(patch.iter().map(strip_value).collect()),
        ListType::Set => {
            let mut out = if replaces { Vec::new() } else { original };
            for item in patch.iter().filter(|i| !i.is_object()) {
                if !out.contains(item) {
                    out.push(item.clone());
                }
            }
            Ok(out)
        }
        ListType::Map(keys) => {
            let key = keys[0].as_str();
            if replaces {
                return Ok(patch
                    .iter()
                    .filter(|i| i.get(DIRECTIVE).and_then(Value::as_str) != Some("replace"))
                    .map(strip_value)
                    .collect());
            }
            let mut out = original;
            for item in patch {
                let Value::Object(fields) = item else {
                    return Err(format!("list {} must contain maps", path.join(".")));
                };
                let id = fields
                    .get(key)
                    .ok_or_else(|| format!("map: {fields:?} does not contain declared merge key: {key}"))?;
                let position = out.iter().position(|o| o.get(key) == Some(id));
                if fields.get(DIRECTIVE).and_then(Value::as_str) == Some("delete") {
                    if let Some(i) = position {
                        out.remove(i);
                    }
                    continue;
                }
                match position {
                    Some(i) => {
                        let base = match out[i].take() {
                            Value::Object(m) => m,
                            _ => Map::new(),
                        };
                        match merge_map(kind, path, base, fields)? {
                            Some(merged) => out[i] = Value::Object(merged),
                            None => {
                                out.remove(i);
                            }
                        }
                    }
                    None => {
                        if let Some(merged) = merge_map(kind, path, Map::new(), fields)? {
                            out.push(Value::Object(merged));
                        }
                    }
                }
            }
            Ok(out)
        }
    }
}

/// Orders `list` as `$setElementOrder` says; items it does not mention keep their relative
/// order after those it does.
fn reorder(list: &mut Vec<Value>, order: &[Value], list_type: &ListType) {
    let id_of = |item: &Value| -> Value {
        match list_type {
            ListType::Map(keys) => item.get(&keys[0]).cloned().unwrap_or(Value::Null),
            _ => item.clone(),
        }
    };
    let wanted: Vec<Value> = order.iter().map(id_of).collect();
    let mut items = std::mem::take(list);
    for id in &wanted {
        if let Some(i) = items.iter().position(|item| &id_of(item) == id) {
            list.push(items.remove(i));
        }
    }
    list.append(&mut items);
}

fn strip_directives(map: &Map<String, Value>) -> Map<String, Value> {
    map.iter().filter(|(k, _)| !k.starts_with('$')).map(|(k, v)| (k.clone(), strip_value(v))).collect()
}

fn strip_value(value: &Value) -> Value {
    match value {
        Value::Object(m) => Value::Object(strip_directives(m)),
        Value::Array(items) => Value::Array(items.iter().map(strip_value).collect()),
        other => other.clone(),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::kube::kinds::Registry;

    fn deployments() -> Kind {
        Registry::builtin().lookup("apps", "v1", "deployments").unwrap().as_ref().clone()
    }

    #[test]
    fn containers_merge_by_name_and_directives_apply() {
        let original = json!({"spec": {"template": {"spec": {"containers": [
            {"name": "a", "image": "a:1", "env": [{"name": "X", "value": "1"}]},
            {"name": "b", "image": "b:1"}
        ]}}}, "metadata": {"finalizers": ["f1"]}});
        let patch = json!({"spec": {"template": {"spec": {
            "$setElementOrder/containers": [{"name": "c"}, {"name": "a"}],
            "containers": [
                {"name": "a", "image": "a:2", "env": [{"name": "Y", "value": "2"}]},
                {"name": "b", "$patch": "delete"},
                {"name": "c", "image": "c:1"}
            ]}}}, "metadata": {"finalizers": ["f2"], "$deleteFromPrimitiveList/finalizers": ["f1"]}});
        let merged = strategic_merge(&deployments(), &original, &patch).unwrap();
        assert_eq!(
            merged,
            json!({"spec": {"template": {"spec": {"containers": [
                {"name": "c", "image": "c:1"},
                {"name": "a", "image": "a:2", "env": [{"name": "X", "value": "1"}, {"name": "Y", "value": "2"}]}
            ]}}}, "metadata": {"finalizers": ["f2"]}})
        );
    }

    #[test]
    fn replace_retain_keys_and_null() {
        let original = json!({"spec": {"strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1}},
                                        "selector": {"matchLabels": {"a": "1"}}, "paused": true,
                                        "template": {"spec": {"tolerations": [{"key": "x"}]}}}});
        let patch = json!({"spec": {
            "strategy": {"$retainKeys": ["type"], "type": "Recreate"},
            "selector": {"$patch": "replace", "matchLabels": {"b": "2"}},
            "paused": null,
            "template": {"spec": {"tolerations": [{"key": "y"}]}}
        }});
        let merged = strategic_merge(&deployments(), &original, &patch).unwrap();
        assert_eq!(
            merged,
            json!({"spec": {"strategy": {"type": "Recreate"}, "selector": {"matchLabels": {"b": "2"}},
                            "template": {"spec": {"tolerations": [{"key": "y"}]}}}})
        );
    }

    #[test]
    fn merge_and_json_patches() {
        let mut doc = json!({"a": {"b": 1, "c": [1, 2]}});
        merge_patch(&mut doc, &json!({"a": {"b": null, "c": [3]}}));
        assert_eq!(doc, json!({"a": {"c": [3]}}));
        json_patch(&mut doc, &json!([{"op": "add", "path": "/a/d", "value": "x"}])).unwrap();
        assert_eq!(doc["a"]["d"], "x");
        assert!(json_patch(&mut doc, &json!([{"op": "test", "path": "/a/d", "value": "y"}])).is_err());
    }
}
