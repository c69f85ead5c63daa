//! CustomResourceDefinitions (`apiextensions.k8s.io/v1`): defaulting, validation (names,
//! versions, structural schemas), the status the API server writes (`NamesAccepted`,
//! `Established`), and the resource type a CRD defines.

use serde_json::{Value, json};

use super::kinds::{Kind, NameRule, Origin, VersionInfo};
use super::schema;
use super::status::FieldError;

/// Fills in what the API server defaults: singular and list kind names, the conversion
/// strategy.
pub(crate) fn default(crd: &mut Value) {
    let Some(spec) = crd.get_mut("spec").and_then(Value::as_object_mut) else { return };
    if let Some(names) = spec.get_mut("names").and_then(Value::as_object_mut) {
        let kind = names.get("kind").and_then(Value::as_str).unwrap_or_default().to_string();
        if !names.contains_key("singular") && !kind.is_empty() {
            names.insert("singular".into(), json!(kind.to_lowercase()));
        }
        if !names.contains_key("listKind") && !kind.is_empty() {
            names.insert("listKind".into(), json!(format!("{kind}List")));
        }
    }
    if !spec.contains_key("conversion") {
        spec.insert("conversion".into(), json!({"strategy": "None"}));
    }
}

/// Validates a CRD as `apiextensions-apiserver/pkg/apis/apiextensions/validation` does, in
/// the parts tests rely on.
pub(crate) fn validate(crd: &Value) -> Vec<FieldError> {
    let mut errors = Vec::new();
    let spec = &crd["spec"];
    let group = spec["group"].as_str().unwrap_or_default();
    let plural = spec["names"]["plural"].as_str().unwrap_or_default();
    let name = crd["metadata"]["name"].as_str().unwrap_or_default();
    if group.is_empty() {
        errors.push(FieldError::required("spec.group", ""));
    } else if !group.contains('.') {
        errors.push(FieldError::invalid("spec.group", group, "should be a domain with at least one dot"));
    }
    if plural.is_empty() {
        errors.push(FieldError::required("spec.names.plural", ""));
    }
    if spec["names"]["kind"].as_str().unwrap_or_default().is_empty() {
        errors.push(FieldError::required("spec.names.kind", ""));
    }
    if !group.is_empty() && !plural.is_empty() && name != format!("{plural}.{group}") {
        errors.push(FieldError::invalid("metadata.name", name, "must be spec.names.plural+\".\"+spec.group"));
    }
    match spec["scope"].as_str() {
        Some("Namespaced") | Some("Cluster") => {}
        Some(other) => errors.push(FieldError::not_supported("spec.scope", other, &["Cluster", "Namespaced"])),
        None => errors.push(FieldError::required("spec.scope", "")),
    }
    let versions = spec["versions"].as_array().cloned().unwrap_or_default();
    if versions.is_empty() {
        errors.push(FieldError::invalid(
            "spec.versions",
            json!([]),
            "must have exactly one version marked as storage version",
        ));
    } else {
        let storage = versions.iter().filter(|v| v["storage"].as_bool() == Some(true)).count();
        if storage != 1 {
            errors.push(FieldError::invalid(
                "spec.versions",
                json!(versions),
                "must have exactly one version marked as storage version",
            ));
        }
        if !versions.iter().any(|v| v["served"].as_bool() == Some(true)) {
            errors.push(FieldError::invalid(
                "spec.versions",
                json!(versions),
                "must have at least one version marked as served",
            ));
        }
        for (i, version) in versions.iter().enumerate() {
            let path = format!("spec.versions[{i}]");
            if version["name"].as_str().unwrap_or_default().is_empty() {
                errors.push(FieldError::required(format!("{path}.name"), ""));
            }
            match version.pointer("/schema/openAPIV3Schema") {
                Some(s) => errors.extend(schema::check_structural(s, &format!("{path}.schema.openAPIV3Schema"))),
                None => {
                    errors.push(FieldError::required(format!("{path}.schema.openAPIV3Schema"), "schemas are required"))
                }
            }
        }
    }
    errors
}

/// The status the API server writes once it accepts a CRD's names.
pub(crate) fn status(crd: &Value, now: &str) -> Value {
    let storage: Vec<Value> = crd["spec"]["versions"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|v| v["storage"].as_bool() == Some(true))
        .map(|v| v["name"].clone())
        .collect();
    let mut stored = crd["status"]["storedVersions"].as_array().cloned().unwrap_or_default();
    for v in storage {
        if !stored.contains(&v) {
            stored.push(v);
        }
    }
    json!({
        "acceptedNames": crd["spec"]["names"],
        "conditions": [
            {"type": "NamesAccepted", "status": "True", "lastTransitionTime": now, "reason": "NoConflicts", "message": "no conflicts found"},
            {"type": "Established", "status": "True", "lastTransitionTime": now, "reason": "InitialNamesAccepted", "message": "the initial names have been accepted"},
        ],
        "storedVersions": stored,
    })
}

/// The resource type a valid CRD defines.
pub(crate) fn kind(crd: &Value) -> Kind {
    let spec = &crd["spec"];
    let names = &spec["names"];
    let text = |v: &Value| v.as_str().unwrap_or_default().to_string();
    let list = |v: &Value| -> Vec<String> {
        v.as_array().into_iter().flatten().filter_map(Value::as_str).map(str::to_string).collect()
    };
    let mut versions: Vec<VersionInfo> = spec["versions"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|v| v["served"].as_bool() == Some(true))
        .map(|v| VersionInfo {
            name: text(&v["name"]),
            schema: v.pointer("/schema/openAPIV3Schema").cloned(),
            status: v.pointer("/subresources/status").is_some(),
            selectable_fields: v["selectableFields"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|f| f["jsonPath"].as_str())
                .map(|p| {
                    let p = p.trim_start_matches('.').to_string();
                    (p.clone(), p)
                })
                .collect(),
        })
        .collect();
    versions.sort_by_key(|v| std::cmp::Reverse(super::kinds::version_priority(&v.name)));
    let storage_version = spec["versions"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|v| v["storage"].as_bool() == Some(true))
        .map(|v| text(&v["name"]))
        .unwrap_or_default();
    let kind = text(&names["kind"]);
    Kind {
        group: text(&spec["group"]),
        versions,
        storage_version,
        list_kind: names["listKind"].as_str().map_or_else(|| format!("{kind}List"), str::to_string),
        singular: names["singular"].as_str().map_or_else(|| kind.to_lowercase(), str::to_string),
        kind,
        plural: text(&names["plural"]),
        namespaced: spec["scope"].as_str() == Some("Namespaced"),
        short_names: list(&names["shortNames"]),
        categories: list(&names["categories"]),
        generation: true,
        unconditional_update: false,
        create_on_update: false,
        return_deleted: false,
        field_selectors: Vec::new(),
        names: NameRule::Subdomain,
        origin: Origin::Custom { crd: text(&crd["metadata"]["name"]) },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn crd() -> Value {
        json!({"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
               "metadata": {"name": "dtabs.l5d.io"},
               "spec": {"group": "l5d.io", "scope": "Namespaced",
                        "names": {"kind": "DTab", "plural": "dtabs"},
                        "versions": [{"name": "v1alpha1", "served": true, "storage": true,
                                      "schema": {"openAPIV3Schema": {"type": "object"}}}]}})
    }

    #[test]
    fn a_valid_crd_defines_a_kind() {
        let mut c = crd();
        default(&mut c);
        assert!(validate(&c).is_empty(), "{:?}", validate(&c));
        let k = kind(&c);
        assert_eq!((k.group.as_str(), k.plural.as_str(), k.list_kind.as_str()), ("l5d.io", "dtabs", "DTabList"));
        assert!(k.namespaced && k.is_custom());
        assert_eq!(status(&c, "t")["conditions"][1]["type"], "Established");
    }

    #[test]
    fn invalid_crds_are_refused() {
        let mut c = crd();
        c["metadata"]["name"] = json!("other.l5d.io");
        c["spec"]["versions"][0]["storage"] = json!(false);
        c["spec"]["versions"][0]["schema"]["openAPIV3Schema"] = json!({"properties": {}});
        let fields: Vec<String> = validate(&c).into_iter().map(|e| e.field).collect();
        assert_eq!(fields, ["metadata.name", "spec.versions", "spec.versions[0].schema.openAPIV3Schema.type"]);
    }
}
