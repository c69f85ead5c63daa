//! Structural schemas of custom resources: the structural check a CRD must pass, and for each
//! custom object, defaulting, pruning of unknown fields (reported for `fieldValidation`) and
//! validation (types, required, enum, nullable, bounds, list types). `pattern` and `format`
//! are not checked: that would need a regular-expression engine for little gain in tests.

use serde_json::{Map, Value};

use super::patch::ListType;
use super::status::FieldError;

/// Fields every object has at its root, which schemas need not declare.
const ROOT_FIELDS: &[&str] = &["apiVersion", "kind", "metadata"];

/// Checks that `schema` is structural; `path` names it in errors.
pub(crate) fn check_structural(schema: &Value, path: &str) -> Vec<FieldError> {
    let mut errors = Vec::new();
    if schema.get("type").and_then(Value::as_str) != Some("object") {
        errors.push(FieldError::required(format!("{path}.type"), "must not be empty at the root"));
        if schema.get("type").is_some() {
            errors.pop();
            errors.push(FieldError::invalid(
                format!("{path}.type"),
                schema["type"].clone(),
                "must be object at the root",
            ));
        }
    }
    check_node(schema, path, true, &mut errors);
    errors
}

fn check_node(schema: &Value, path: &str, root: bool, errors: &mut Vec<FieldError>) {
    let preserve = flag(schema, "x-kubernetes-preserve-unknown-fields");
    let int_or_string = flag(schema, "x-kubernetes-int-or-string");
    let ty = schema.get("type").and_then(Value::as_str);
    if ty.is_none() && !preserve && !int_or_string && !root {
        errors.push(FieldError::required(format!("{path}.type"), "must not be empty for specified object fields"));
    }
    if let Some(ty) = ty
        && !["object", "array", "string", "integer", "number", "boolean"].contains(&ty)
    {
        errors.push(FieldError::not_supported(
            format!("{path}.type"),
            ty,
            &["array", "boolean", "integer", "number", "object", "string"],
        ));
    }
    if schema.get("properties").is_some() && schema.get("additionalProperties").is_some() {
        errors.push(FieldError::forbidden(
            format!("{path}.additionalProperties"),
            "additionalProperties and properties are mutual exclusive",
        ));
    }
    if let Some(Value::Object(props)) = schema.get("properties") {
        for (name, sub) in props {
            check_node(sub, &format!("{path}.properties[{name}]"), false, errors);
        }
    }
    if let Some(items) = schema.get("items") {
        check_node(items, &format!("{path}.items"), false, errors);
    } else if ty == Some("array") {
        errors.push(FieldError::required(format!("{path}.items"), "must be specified"));
    }
    if let Some(sub @ Value::Object(_)) = schema.get("additionalProperties") {
        check_node(sub, &format!("{path}.additionalProperties"), false, errors);
    }
    if let Some(Value::String(list_type)) = schema.get("x-kubernetes-list-type") {
        if !["atomic", "set", "map"].contains(&list_type.as_str()) {
            errors.push(FieldError::not_supported(
                format!("{path}.x-kubernetes-list-type"),
                list_type.as_str(),
                &["atomic", "map", "set"],
            ));
        }
        if list_type == "map"
            && schema.get("x-kubernetes-list-map-keys").and_then(Value::as_array).is_none_or(Vec::is_empty)
        {
            errors.push(FieldError::required(
                format!("{path}.x-kubernetes-list-map-keys"),
                "must not be empty if x-kubernetes-list-type is map",
            ));
        }
    }
}

fn flag(schema: &Value, name: &str) -> bool {
    schema.get(name).and_then(Value::as_bool).unwrap_or(false)
}

/// What processing an object against its schema found.
#[derive(Debug, Default)]
pub(crate) struct Outcome {
    pub(crate) errors: Vec<FieldError>,
    /// Paths of fields the schema does not declare (pruned).
    pub(crate) unknown: Vec<String>,
}

/// Defaults, prunes and validates a custom object in place.
pub(crate) fn process(schema: &Value, object: &mut Value) -> Outcome {
    let mut outcome = Outcome::default();
    node(schema, object, "", true, &mut outcome);
    outcome
}

fn join(path: &str, field: &str) -> String {
    if path.is_empty() { field.to_string() } else { format!("{path}.{field}") }
}

fn node(schema: &Value, value: &mut Value, path: &str, root: bool, outcome: &mut Outcome) {
    let int_or_string = flag(schema, "x-kubernetes-int-or-string");
    let ty = schema.get("type").and_then(Value::as_str);
    let type_ok = match (ty, &*value) {
        _ if int_or_string => value.is_string() || value.as_i64().is_some() || value.as_u64().is_some(),
        (None, _) => true,
        (Some("object"), Value::Object(_)) | (Some("array"), Value::Array(_)) | (Some("string"), Value::String(_)) => {
            true
        }
        (Some("boolean"), Value::Bool(_)) => true,
        (Some("number"), Value::Number(_)) => true,
        (Some("integer"), Value::Number(n)) => n.is_i64() || n.is_u64(),
        _ => false,
    };
    if !type_ok {
        let what = ty.unwrap_or("integer or string");
        outcome.errors.push(FieldError::invalid(
            path,
            json_type(value),
            format!("{path} in body must be of type {what}: {:?}", json_type(value)),
        ));
        return;
    }
    if let Some(Value::Array(allowed)) = schema.get("enum")
        && !allowed.contains(value)
    {
        let supported: Vec<String> =
            allowed.iter().map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_string)).collect();
        let refs: Vec<&str> = supported.iter().map(String::as_str).collect();
        outcome.errors.push(FieldError::not_supported(path, value.clone(), &refs));
    }
    bounds(schema, value, path, outcome);
    match value {
        Value::Object(map) => object(schema, map, path, root, outcome),
        Value::Array(items) => {
            if let Some(item_schema) = schema.get("items") {
                for (i, item) in items.iter_mut().enumerate() {
                    node(item_schema, item, &format!("{path}[{i}]"), false, outcome);
                }
            }
            list_uniqueness(schema, items, path, outcome);
        }
        _ => {}
    }
}

fn object(schema: &Value, map: &mut Map<String, Value>, path: &str, root: bool, outcome: &mut Outcome) {
    let preserve = flag(schema, "x-kubernetes-preserve-unknown-fields");
    let embedded = flag(schema, "x-kubernetes-embedded-resource");
    let props = schema.get("properties").and_then(Value::as_object);
    // Defaults first, so that required fields may be satisfied by them.
    if let Some(props) = props {
        for (name, sub) in props {
            if !map.contains_key(name)
                && let Some(default) = sub.get("default")
            {
                map.insert(name.clone(), default.clone());
            }
        }
    }
    let additional = schema.get("additionalProperties");
    let keys: Vec<String> = map.keys().cloned().collect();
    for key in keys {
        let child_path = join(path, &key);
        if (root || embedded) && ROOT_FIELDS.contains(&key.as_str()) {
            continue;
        }
        let sub = props.and_then(|p| p.get(&key)).or(match additional {
            Some(s @ Value::Object(_)) => Some(s),
            _ => None,
        });
        match sub {
            Some(sub) => {
                if map[&key].is_null() && !flag(sub, "nullable") {
                    map.remove(&key);
                    continue;
                }
                if let Some(child) = map.get_mut(&key) {
                    node(sub, child, &child_path, false, outcome);
                }
            }
            None if preserve || additional == Some(&Value::Bool(true)) => {}
            None => {
                map.remove(&key);
                outcome.unknown.push(child_path);
            }
        }
    }
    if let Some(Value::Array(required)) = schema.get("required") {
        for name in required.iter().filter_map(Value::as_str) {
            if !map.contains_key(name) {
                outcome.errors.push(FieldError::required(join(path, name), ""));
            }
        }
    }
}

fn bounds(schema: &Value, value: &Value, path: &str, outcome: &mut Outcome) {
    let num = |k: &str| schema.get(k).and_then(Value::as_f64);
    let count = |k: &str| schema.get(k).and_then(Value::as_u64).map(|n| n as usize);
    let mut fail = |detail: String| outcome.errors.push(FieldError::invalid(path, value.clone(), detail));
    if let Some(n) = value.as_f64() {
        if let Some(min) = num("minimum")
            && (n < min || (flag(schema, "exclusiveMinimum") && n == min))
        {
            fail(format!("{path} in body should be greater than or equal to {min}"));
        }
        if let Some(max) = num("maximum")
            && (n > max || (flag(schema, "exclusiveMaximum") && n == max))
        {
            fail(format!("{path} in body should be less than or equal to {max}"));
        }
    }
    if let Some(s) = value.as_str() {
        let len = s.chars().count();
        if let Some(min) = count("minLength")
            && len < min
        {
            fail(format!("{path} in body should be at least {min} chars long"));
        }
        if let Some(max) = count("maxLength")
            && len > max
        {
            fail(format!("{path} in body may not be longer than {max}"));
        }
    }
    if let Some(items) = value.as_array() {
        if let Some(min) = count("minItems")
            && items.len() < min
        {
            fail(format!("{path} in body should have at least {min} items"));
        }
        if let Some(max) = count("maxItems")
            && items.len() > max
        {
            fail(format!("{path} in body should have at most {max} items"));
        }
    }
    if let Some(map) = value.as_object() {
        if let Some(min) = count("minProperties")
            && map.len() < min
        {
            fail(format!("{path} in body should have at least {min} properties"));
        }
        if let Some(max) = count("maxProperties")
            && map.len() > max
        {
            fail(format!("{path} in body should have at most {max} properties"));
        }
    }
}

fn list_uniqueness(schema: &Value, items: &[Value], path: &str, outcome: &mut Outcome) {
    match list_type(schema) {
        ListType::Set => {
            for (i, item) in items.iter().enumerate() {
                if items[..i].contains(item) {
                    outcome.errors.push(FieldError::duplicate(format!("{path}[{i}]"), item.clone()));
                }
            }
        }
        ListType::Map(keys) => {
            let ids: Vec<Vec<Option<&Value>>> =
                items.iter().map(|item| keys.iter().map(|k| item.get(k)).collect()).collect();
            for (i, id) in ids.iter().enumerate() {
                if ids[..i].contains(id) {
                    let shown: Map<String, Value> =
                        keys.iter().zip(id).filter_map(|(k, v)| v.map(|v| (k.clone(), v.clone()))).collect();
                    outcome.errors.push(FieldError::duplicate(format!("{path}[{i}]"), Value::Object(shown)));
                }
            }
        }
        ListType::Atomic => {}
    }
}

/// The list type a schema node declares (`atomic` when it says nothing).
pub(crate) fn list_type(schema: &Value) -> ListType {
    match schema.get("x-kubernetes-list-type").and_then(Value::as_str) {
        Some("set") => ListType::Set,
        Some("map") => ListType::Map(
            schema
                .get("x-kubernetes-list-map-keys")
                .and_then(Value::as_array)
                .map(|keys| keys.iter().filter_map(Value::as_str).map(str::to_string).collect())
                .unwrap_or_default(),
        ),
        _ => ListType::Atomic,
    }
}

/// The schema node at `path` (field names, without list indices).
pub(crate) fn at<'a>(schema: &'a Value, path: &[&str]) -> Option<&'a Value> {
    let mut current = schema;
    for field in path {
        if current.get("type").and_then(Value::as_str) == Some("array") {
            current = current.get("items")?;
        }
        current = current
            .get("properties")
            .and_then(|p| p.get(*field))
            .or_else(|| current.get("additionalProperties").filter(|a| a.is_object()))?;
    }
    Some(current)
}

fn json_type(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_f64() => "number",
        Value::Number(_) => "integer",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn dtab_schema() -> Value {
        json!({"type": "object", "properties": {
            "dentries": {"type": "array", "x-kubernetes-list-type": "atomic", "items": {
                "type": "object", "required": ["prefix", "dst"],
                "properties": {"prefix": {"type": "string"}, "dst": {"type": "string"}}}},
            "mode": {"type": "string", "enum": ["a", "b"], "default": "a"}
        }})
    }

    #[test]
    fn prunes_defaults_and_validates() {
        let mut object = json!({"apiVersion": "l5d.io/v1alpha1", "kind": "DTab", "metadata": {"name": "x"},
                                "dentries": [{"prefix": "/a", "dst": "/b", "extra": 1}], "junk": true});
        let outcome = process(&dtab_schema(), &mut object);
        assert!(outcome.errors.is_empty(), "{:?}", outcome.errors);
        assert_eq!(outcome.unknown, ["dentries[0].extra", "junk"]);
        assert_eq!(object["mode"], "a");
        assert!(object.get("junk").is_none());

        let mut bad = json!({"dentries": [{"prefix": 1}], "mode": "c"});
        let outcome = process(&dtab_schema(), &mut bad);
        let rendered: Vec<String> = outcome.errors.iter().map(ToString::to_string).collect();
        assert_eq!(
            rendered,
            [
                "dentries[0].prefix: Invalid value: \"integer\": dentries[0].prefix in body must be of type string: \"integer\"",
                "dentries[0].dst: Required value",
                "mode: Unsupported value: \"c\": supported values: \"a\", \"b\"",
            ]
        );
    }

    #[test]
    fn structural_check() {
        assert!(check_structural(&dtab_schema(), "s").is_empty());
        let errors = check_structural(&json!({"type": "object", "properties": {"a": {}}}), "s");
        assert_eq!(errors.len(), 1);
        assert_eq!(errors[0].field, "s.properties[a].type");
        assert!(!check_structural(&json!({"properties": {}}), "s").is_empty());
    }
}
