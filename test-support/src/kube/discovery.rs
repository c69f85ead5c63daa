//! Discovery (`/version`, `/api`, `/api/v1`, `/apis`, `/apis/G`, `/apis/G/V`) and the OpenAPI
//! documents kubectl reads (`/openapi/v3` and its group-version documents, `/openapi/v2`).
//!
//! The OpenAPI documents describe paths and their parameters, not object schemas: each PATCH
//! operation declares `fieldValidation` and `dryRun`, so kubectl leaves validation to the
//! server and allows server-side dry runs, and its request body has no schema reference, so
//! kubectl computes strategic merge patches from its compiled-in types. kubectl before 1.28
//! reads the v2 document in protobuf (see `protobuf::openapi_v2_document`).

use std::hash::{Hash, Hasher};

use serde_json::{Map, Value, json};

use super::kinds::{Kind, Registry, api_resources};

/// The Kubernetes version the fake reports.
pub(crate) const MAJOR: &str = "1";
pub(crate) const MINOR: &str = "33";

pub(crate) fn version() -> Value {
    json!({
        "major": MAJOR,
        "minor": MINOR,
        "gitVersion": format!("v{MAJOR}.{MINOR}.0"),
        "gitCommit": "0000000000000000000000000000000000000000",
        "gitTreeState": "clean",
        "buildDate": "2026-01-01T00:00:00Z",
        "goVersion": "go1.24.0",
        "compiler": "gc",
        "platform": "linux/amd64",
    })
}

/// `/api`.
pub(crate) fn core_versions(server_address: &str) -> Value {
    json!({
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": server_address}],
    })
}

fn group_entry(group: &str, versions: &[String]) -> Value {
    let list: Vec<Value> =
        versions.iter().map(|v| json!({"groupVersion": format!("{group}/{v}"), "version": v})).collect();
    json!({"name": group, "versions": list, "preferredVersion": list[0]})
}

/// `/apis`.
pub(crate) fn group_list(registry: &Registry) -> Value {
    let groups: Vec<Value> = registry
        .groups()
        .into_iter()
        .filter(|(g, _)| !g.is_empty())
        .map(|(g, versions)| group_entry(&g, &versions))
        .collect();
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
}

/// `/apis/<group>`.
pub(crate) fn group(registry: &Registry, name: &str) -> Option<Value> {
    let (_, versions) = registry.groups().into_iter().find(|(g, _)| g == name && !g.is_empty())?;
    let mut entry = group_entry(name, &versions);
    entry["kind"] = json!("APIGroup");
    entry["apiVersion"] = json!("v1");
    Some(entry)
}

/// `/api/v1` or `/apis/<group>/<version>`.
pub(crate) fn resource_list(registry: &Registry, group: &str, version: &str) -> Option<Value> {
    let kinds = registry.in_group_version(group, version);
    if kinds.is_empty() {
        return None;
    }
    let resources: Vec<Value> = kinds.iter().flat_map(|k| api_resources(k, version)).collect();
    let group_version = if group.is_empty() { version.to_string() } else { format!("{group}/{version}") };
    Some(json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": group_version, "resources": resources}))
}

/// The OpenAPI v3 path of a group-version: `api/v1` or `apis/<g>/<v>`.
fn v3_path(group: &str, version: &str) -> String {
    if group.is_empty() { format!("api/{version}") } else { format!("apis/{group}/{version}") }
}

/// The path template of one object of a type, as OpenAPI documents name it.
fn item_path(kind: &Kind, group: &str, version: &str) -> String {
    let prefix = if group.is_empty() { format!("/api/{version}") } else { format!("/apis/{group}/{version}") };
    if kind.namespaced {
        format!("{prefix}/namespaces/{{namespace}}/{}/{{name}}", kind.plural)
    } else {
        format!("{prefix}/{}/{{name}}", kind.plural)
    }
}

/// `/openapi/v3`: one entry per group-version, with a hash of its document.
pub(crate) fn openapi_v3_root(registry: &Registry) -> Value {
    let mut paths = Map::new();
    for (group, versions) in registry.groups() {
        for version in versions {
            let doc = openapi_v3_document(registry, &group, &version).expect("a served group-version has a document");
            let path = v3_path(&group, &version);
            paths.insert(path.clone(), json!({"serverRelativeURL": format!("/openapi/v3/{path}?hash={}", hash(&doc))}));
        }
    }
    json!({"paths": paths})
}

fn hash(doc: &Value) -> String {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    doc.to_string().hash(&mut hasher);
    format!("{:016X}", hasher.finish())
}

/// `/openapi/v3/api/v1` or `/openapi/v3/apis/<g>/<v>`.
pub(crate) fn openapi_v3_document(registry: &Registry, group: &str, version: &str) -> Option<Value> {
    let kinds = registry.in_group_version(group, version);
    if kinds.is_empty() {
        return None;
    }
    let mut paths = Map::new();
    for kind in kinds.iter().filter(|k| !k.is_review()) {
        let item = item_path(kind, group, version);
        paths.insert(item.clone(), json!({"patch": patch_operation(kind, group, version, false)}));
        if kind.has_status(version) {
            paths.insert(format!("{item}/status"), json!({"patch": patch_operation(kind, group, version, true)}));
        }
    }
    Some(json!({
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes", "version": format!("v{MAJOR}.{MINOR}.0")},
        "paths": paths,
        "components": {"schemas": {}},
    }))
}

fn patch_operation(kind: &Kind, group: &str, version: &str, status: bool) -> Value {
    let query = |name: &str, ty: &str| json!({"name": name, "in": "query", "schema": {"type": ty}});
    let body_types = if kind.is_custom() {
        vec!["application/apply-patch+yaml", "application/json-patch+json", "application/merge-patch+json"]
    } else {
        vec![
            "application/apply-patch+yaml",
            "application/json-patch+json",
            "application/merge-patch+json",
            "application/strategic-merge-patch+json",
        ]
    };
    let content: Map<String, Value> =
        body_types.into_iter().map(|t| (t.to_string(), json!({"schema": {"type": "object"}}))).collect();
    json!({
        "operationId": format!("patch{}{}", kind.kind, if status { "Status" } else { "" }),
        "parameters": [
            query("dryRun", "string"),
            query("fieldManager", "string"),
            query("fieldValidation", "string"),
            query("force", "boolean"),
        ],
        "requestBody": {"content": content, "required": true},
        "responses": {"200": {"description": "OK"}, "201": {"description": "Created"}},
        "x-kubernetes-action": "patch",
        "x-kubernetes-group-version-kind": {"group": group, "version": version, "kind": kind.kind},
    })
}

/// The item path of every stored type's PATCH operation, for the OpenAPI v2 document.
pub(crate) fn patch_paths(registry: &Registry) -> Vec<super::protobuf::PatchPath> {
    let mut out = Vec::new();
    for (group, versions) in registry.groups() {
        for version in versions {
            for kind in registry.in_group_version(&group, &version).into_iter().filter(|k| !k.is_review()) {
                out.push(super::protobuf::PatchPath {
                    path: item_path(kind, &group, &version),
                    group: group.clone(),
                    version: version.clone(),
                    kind: kind.kind.clone(),
                });
            }
        }
    }
    out
}

/// `/openapi/v2`, in JSON: paths only, like the v3 documents.
pub(crate) fn openapi_v2() -> Value {
    json!({
        "swagger": "2.0",
        "info": {"title": "Kubernetes", "version": format!("v{MAJOR}.{MINOR}.0")},
        "paths": {},
        "definitions": {},
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn discovery_lists_groups_resources_and_status() {
        let registry = Registry::builtin();
        let groups = group_list(&registry);
        let names: Vec<&str> =
            groups["groups"].as_array().unwrap().iter().map(|g| g["name"].as_str().unwrap()).collect();
        assert!(names.contains(&"apps") && names.contains(&"discovery.k8s.io") && !names.contains(&""));
        let core = resource_list(&registry, "", "v1").unwrap();
        let resources: Vec<&str> =
            core["resources"].as_array().unwrap().iter().map(|r| r["name"].as_str().unwrap()).collect();
        assert!(
            resources.contains(&"pods")
                && resources.contains(&"pods/status")
                && !resources.contains(&"configmaps/status")
        );
        let root = openapi_v3_root(&registry);
        assert!(
            root["paths"]["apis/apps/v1"]["serverRelativeURL"]
                .as_str()
                .unwrap()
                .starts_with("/openapi/v3/apis/apps/v1?hash=")
        );
        let apps = openapi_v3_document(&registry, "apps", "v1").unwrap();
        let patch = &apps["paths"]["/apis/apps/v1/namespaces/{namespace}/deployments/{name}"]["patch"];
        assert_eq!(patch["x-kubernetes-group-version-kind"]["kind"], "Deployment");
        assert!(resource_list(&registry, "apps", "v2").is_none());
    }
}
