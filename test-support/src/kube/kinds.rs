//! The resource types the fake serves: the built-in table (adding a kind is one entry) and the
//! types that custom resource definitions add at run time.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde_json::{Value, json};

/// Which rule an object name must follow (`apimachinery/pkg/api/validation` and the per-type
/// strategies).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum NameRule {
    /// DNS-1123 subdomain: most types.
    Subdomain,
    /// DNS-1123 label: namespaces.
    Label,
    /// DNS-1035 label (starts with a letter): services.
    Dns1035Label,
    /// Anything but `.`, `..`, `/` and `%`: RBAC objects.
    PathSegment,
}

/// What kind of API a resource type is.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Origin {
    /// A compiled-in type: strategic merge patch works, list items carry no `kind`.
    Builtin,
    /// A type defined by the named CustomResourceDefinition.
    Custom { crd: String },
    /// A create-only review (TokenReview, SelfSubjectAccessReview, ...): nothing is stored.
    Review,
}

/// One served version of a resource type.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct VersionInfo {
    pub(crate) name: String,
    /// The CRD's `openAPIV3Schema` for this version (custom resources only).
    pub(crate) schema: Option<Value>,
    /// Whether `/status` is a subresource in this version.
    pub(crate) status: bool,
    /// Extra field selectors: selector name and the JSON path it reads.
    pub(crate) selectable_fields: Vec<(String, String)>,
}

/// A resource type, as discovery describes it and the handlers need it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Kind {
    pub(crate) group: String,
    /// Served versions, preferred first.
    pub(crate) versions: Vec<VersionInfo>,
    pub(crate) storage_version: String,
    pub(crate) kind: String,
    pub(crate) list_kind: String,
    pub(crate) plural: String,
    pub(crate) singular: String,
    pub(crate) namespaced: bool,
    pub(crate) short_names: Vec<String>,
    pub(crate) categories: Vec<String>,
    /// Whether `metadata.generation` counts changes outside metadata and status.
    pub(crate) generation: bool,
    /// Whether a PUT without `metadata.resourceVersion` is allowed.
    pub(crate) unconditional_update: bool,
    /// Whether a PUT may create a missing object.
    pub(crate) create_on_update: bool,
    /// Whether DELETE answers with the object instead of a success Status.
    pub(crate) return_deleted: bool,
    /// Field selectors beyond `metadata.name` and `metadata.namespace`: name and JSON path.
    pub(crate) field_selectors: Vec<(String, String)>,
    pub(crate) names: NameRule,
    pub(crate) origin: Origin,
}

/// One row of the built-in table.
#[derive(Debug, Clone, Copy)]
struct Builtin {
    group: &'static str,
    version: &'static str,
    kind: &'static str,
    plural: &'static str,
    namespaced: bool,
    short_names: &'static [&'static str],
    categories: &'static [&'static str],
    status: bool,
    generation: bool,
    create_on_update: bool,
    return_deleted: bool,
    /// Field selectors other than metadata.name/namespace, each read from the same JSON path
    /// unless written `selector=path`.
    fields: &'static [&'static str],
    names: NameRule,
    review: bool,
}

/// The defaults every row starts from.
const BASE: Builtin = Builtin {
    group: "",
    version: "v1",
    kind: "",
    plural: "",
    namespaced: true,
    short_names: &[],
    categories: &[],
    status: false,
    generation: false,
    create_on_update: false,
    return_deleted: false,
    fields: &[],
    names: NameRule::Subdomain,
    review: false,
};

/// Every built-in type the fake serves. Adding a type is adding a row.
const BUILTINS: &[Builtin] = &[
    // core/v1
    Builtin {
        kind: "Namespace",
        plural: "namespaces",
        namespaced: false,
        short_names: &["ns"],
        status: true,
        return_deleted: true,
        fields: &["status.phase"],
        names: NameRule::Label,
        ..BASE
    },
    Builtin {
        kind: "Service",
        plural: "services",
        short_names: &["svc"],
        categories: &["all"],
        status: true,
        return_deleted: true,
        fields: &["spec.clusterIP", "spec.type"],
        names: NameRule::Dns1035Label,
        ..BASE
    },
    Builtin { kind: "Endpoints", plural: "endpoints", short_names: &["ep"], create_on_update: true, ..BASE },
    Builtin {
        kind: "Pod",
        plural: "pods",
        short_names: &["po"],
        categories: &["all"],
        status: true,
        return_deleted: true,
        fields: &[
            "spec.nodeName",
            "spec.restartPolicy",
            "spec.schedulerName",
            "spec.serviceAccountName",
            "spec.hostNetwork",
            "status.phase",
            "status.podIP",
            "status.nominatedNodeName",
        ],
        ..BASE
    },
    Builtin {
        kind: "Node",
        plural: "nodes",
        namespaced: false,
        short_names: &["no"],
        status: true,
        fields: &["spec.unschedulable"],
        ..BASE
    },
    Builtin { kind: "Secret", plural: "secrets", fields: &["type"], ..BASE },
    Builtin { kind: "ConfigMap", plural: "configmaps", short_names: &["cm"], ..BASE },
    Builtin { kind: "ServiceAccount", plural: "serviceaccounts", short_names: &["sa"], ..BASE },
    Builtin {
        kind: "Event",
        plural: "events",
        short_names: &["ev"],
        create_on_update: true,
        fields: &[
            "involvedObject.kind",
            "involvedObject.namespace",
            "involvedObject.name",
            "involvedObject.uid",
            "involvedObject.apiVersion",
            "involvedObject.resourceVersion",
            "involvedObject.fieldPath",
            "reason",
            "reportingComponent",
            "source=source.component",
            "type",
        ],
        ..BASE
    },
    // discovery.k8s.io/v1
    Builtin { group: "discovery.k8s.io", kind: "EndpointSlice", plural: "endpointslices", ..BASE },
    // networking.k8s.io/v1
    Builtin {
        group: "networking.k8s.io",
        kind: "Ingress",
        plural: "ingresses",
        short_names: &["ing"],
        status: true,
        generation: true,
        ..BASE
    },
    Builtin {
        group: "networking.k8s.io",
        kind: "IngressClass",
        plural: "ingressclasses",
        namespaced: false,
        generation: true,
        ..BASE
    },
    // apps/v1
    Builtin {
        group: "apps",
        kind: "Deployment",
        plural: "deployments",
        short_names: &["deploy"],
        categories: &["all"],
        status: true,
        generation: true,
        ..BASE
    },
    Builtin {
        group: "apps",
        kind: "DaemonSet",
        plural: "daemonsets",
        short_names: &["ds"],
        categories: &["all"],
        status: true,
        generation: true,
        ..BASE
    },
    Builtin {
        group: "apps",
        kind: "StatefulSet",
        plural: "statefulsets",
        short_names: &["sts"],
        categories: &["all"],
        status: true,
        generation: true,
        ..BASE
    },
    Builtin {
        group: "apps",
        kind: "ReplicaSet",
        plural: "replicasets",
        short_names: &["rs"],
        categories: &["all"],
        status: true,
        generation: true,
        fields: &["status.replicas"],
        ..BASE
    },
    // batch/v1
    Builtin {
        group: "batch",
        kind: "Job",
        plural: "jobs",
        categories: &["all"],
        status: true,
        generation: true,
        fields: &["status.successful"],
        ..BASE
    },
    Builtin {
        group: "batch",
        kind: "CronJob",
        plural: "cronjobs",
        short_names: &["cj"],
        categories: &["all"],
        status: true,
        generation: true,
        ..BASE
    },
    // apiextensions.k8s.io/v1
    Builtin {
        group: "apiextensions.k8s.io",
        kind: "CustomResourceDefinition",
        plural: "customresourcedefinitions",
        namespaced: false,
        short_names: &["crd", "crds"],
        categories: &["api-extensions"],
        status: true,
        generation: true,
        ..BASE
    },
    // admissionregistration.k8s.io/v1
    Builtin {
        group: "admissionregistration.k8s.io",
        kind: "MutatingWebhookConfiguration",
        plural: "mutatingwebhookconfigurations",
        namespaced: false,
        categories: &["api-extensions"],
        generation: true,
        ..BASE
    },
    Builtin {
        group: "admissionregistration.k8s.io",
        kind: "ValidatingWebhookConfiguration",
        plural: "validatingwebhookconfigurations",
        namespaced: false,
        categories: &["api-extensions"],
        generation: true,
        ..BASE
    },
    // rbac.authorization.k8s.io/v1
    Builtin {
        group: "rbac.authorization.k8s.io",
        kind: "ClusterRole",
        plural: "clusterroles",
        namespaced: false,
        names: NameRule::PathSegment,
        ..BASE
    },
    Builtin {
        group: "rbac.authorization.k8s.io",
        kind: "ClusterRoleBinding",
        plural: "clusterrolebindings",
        namespaced: false,
        names: NameRule::PathSegment,
        ..BASE
    },
    Builtin { group: "rbac.authorization.k8s.io", kind: "Role", plural: "roles", names: NameRule::PathSegment, ..BASE },
    Builtin {
        group: "rbac.authorization.k8s.io",
        kind: "RoleBinding",
        plural: "rolebindings",
        names: NameRule::PathSegment,
        ..BASE
    },
    // policy/v1
    Builtin {
        group: "policy",
        kind: "PodDisruptionBudget",
        plural: "poddisruptionbudgets",
        short_names: &["pdb"],
        status: true,
        generation: true,
        ..BASE
    },
    // coordination.k8s.io/v1
    Builtin { group: "coordination.k8s.io", kind: "Lease", plural: "leases", create_on_update: true, ..BASE },
    // Reviews: create-only, nothing stored.
    Builtin {
        group: "authentication.k8s.io",
        kind: "TokenReview",
        plural: "tokenreviews",
        namespaced: false,
        review: true,
        ..BASE
    },
    Builtin {
        group: "authentication.k8s.io",
        kind: "SelfSubjectReview",
        plural: "selfsubjectreviews",
        namespaced: false,
        review: true,
        ..BASE
    },
    Builtin {
        group: "authorization.k8s.io",
        kind: "SelfSubjectAccessReview",
        plural: "selfsubjectaccessreviews",
        namespaced: false,
        review: true,
        ..BASE
    },
    Builtin {
        group: "authorization.k8s.io",
        kind: "SubjectAccessReview",
        plural: "subjectaccessreviews",
        namespaced: false,
        review: true,
        ..BASE
    },
];

/// The verbs of an ordinary stored type, as discovery lists them.
const CRUD_VERBS: &[&str] = &["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"];

/// Every resource type currently served: the built-ins plus those of established CRDs, by
/// group and plural.
#[derive(Debug, Clone)]
pub(crate) struct Registry {
    kinds: BTreeMap<(String, String), Arc<Kind>>,
    /// Group order for discovery: built-in groups in table order, then custom groups.
    group_order: Vec<String>,
}

impl Kind {
    /// `pods` or `deployments.apps`: how errors name the resource.
    pub(crate) fn qualified_resource(&self) -> String {
        if self.group.is_empty() { self.plural.clone() } else { format!("{}.{}", self.plural, self.group) }
    }

    /// `Pod` or `Deployment.apps`: how Invalid errors name the kind.
    pub(crate) fn qualified_kind(&self) -> String {
        if self.group.is_empty() { self.kind.clone() } else { format!("{}.{}", self.kind, self.group) }
    }

    /// `v1` or `apps/v1` for a version of this type.
    pub(crate) fn api_version(&self, version: &str) -> String {
        if self.group.is_empty() { version.to_string() } else { format!("{}/{}", self.group, version) }
    }

    /// The served version called `name`.
    pub(crate) fn version(&self, name: &str) -> Option<&VersionInfo> {
        self.versions.iter().find(|v| v.name == name)
    }

    /// Whether `/status` is a subresource (in any served version: they agree in practice).
    pub(crate) fn has_status(&self, version: &str) -> bool {
        self.version(version).is_some_and(|v| v.status)
    }

    /// Whether this is a custom resource.
    pub(crate) fn is_custom(&self) -> bool {
        matches!(self.origin, Origin::Custom { .. })
    }

    /// Whether objects of this type are stored (reviews are not).
    pub(crate) fn is_review(&self) -> bool {
        self.origin == Origin::Review
    }

    /// The discovery verbs.
    pub(crate) fn verbs(&self) -> Vec<&'static str> {
        if self.is_review() {
            vec!["create"]
        } else if self.plural == "namespaces" {
            CRUD_VERBS.iter().copied().filter(|v| *v != "deletecollection").collect()
        } else {
            CRUD_VERBS.to_vec()
        }
    }

    /// The JSON path a field selector reads, if this type supports it.
    pub(crate) fn field_path(&self, version: &str, selector: &str) -> Option<String> {
        if selector == "metadata.name" || selector == "metadata.namespace" {
            return Some(selector.to_string());
        }
        self.field_selectors
            .iter()
            .chain(self.version(version).map(|v| v.selectable_fields.iter()).into_iter().flatten())
            .find(|(name, _)| name == selector)
            .map(|(_, path)| path.clone())
    }
}

impl Builtin {
    fn to_kind(self) -> Kind {
        let fields = self
            .fields
            .iter()
            .map(|f| match f.split_once('=') {
                Some((name, path)) => (name.to_string(), path.to_string()),
                None => (f.to_string(), f.to_string()),
            })
            .collect();
        Kind {
            group: self.group.to_string(),
            versions: vec![VersionInfo {
                name: self.version.to_string(),
                schema: None,
                status: self.status,
                selectable_fields: Vec::new(),
            }],
            storage_version: self.version.to_string(),
            kind: self.kind.to_string(),
            list_kind: format!("{}List", self.kind),
            plural: self.plural.to_string(),
            singular: self.kind.to_lowercase(),
            namespaced: self.namespaced,
            short_names: self.short_names.iter().map(|s| s.to_string()).collect(),
            categories: self.categories.iter().map(|s| s.to_string()).collect(),
            generation: self.generation,
            unconditional_update: true,
            create_on_update: self.create_on_update,
            return_deleted: self.return_deleted,
            field_selectors: fields,
            names: self.names,
            origin: if self.review { Origin::Review } else { Origin::Builtin },
        }
    }
}

impl Registry {
    /// The built-in types.
    pub(crate) fn builtin() -> Registry {
        let mut registry = Registry { kinds: BTreeMap::new(), group_order: Vec::new() };
        for row in BUILTINS {
            registry.insert(Arc::new(row.to_kind()));
        }
        registry
    }

    fn insert(&mut self, kind: Arc<Kind>) {
        if !self.group_order.contains(&kind.group) {
            self.group_order.push(kind.group.clone());
        }
        self.kinds.insert((kind.group.clone(), kind.plural.clone()), kind);
    }

    /// The type with this group and plural, whatever its versions.
    pub(crate) fn get(&self, group: &str, plural: &str) -> Option<&Arc<Kind>> {
        self.kinds.get(&(group.to_string(), plural.to_string()))
    }

    /// The type served at `group/version` under `plural`.
    pub(crate) fn lookup(&self, group: &str, version: &str, plural: &str) -> Option<&Arc<Kind>> {
        self.get(group, plural).filter(|k| k.version(version).is_some())
    }

    /// The type with this group and kind name.
    pub(crate) fn by_kind(&self, group: &str, kind: &str) -> Option<&Arc<Kind>> {
        self.kinds.values().find(|k| k.group == group && k.kind == kind)
    }

    /// Every type.
    #[cfg(test)]
    pub(crate) fn all(&self) -> impl Iterator<Item = &Arc<Kind>> {
        self.kinds.values()
    }

    /// Groups in discovery order, each with its served versions in preference order.
    pub(crate) fn groups(&self) -> Vec<(String, Vec<String>)> {
        let mut out = Vec::new();
        for group in &self.group_order {
            let mut versions: Vec<String> = Vec::new();
            for kind in self.kinds.values().filter(|k| &k.group == group) {
                for v in &kind.versions {
                    if !versions.contains(&v.name) {
                        versions.push(v.name.clone());
                    }
                }
            }
            if !versions.is_empty() {
                versions.sort_by_key(|v| std::cmp::Reverse(version_priority(v)));
                out.push((group.clone(), versions));
            }
        }
        out
    }

    /// Every type served at `group/version`.
    pub(crate) fn in_group_version(&self, group: &str, version: &str) -> Vec<&Arc<Kind>> {
        self.kinds.values().filter(|k| k.group == group && k.version(version).is_some()).collect()
    }

    /// Adds or replaces the type a CRD defines.
    pub(crate) fn define(&mut self, kind: Kind) {
        self.insert(Arc::new(kind));
    }

    /// Removes the type a CRD defined.
    pub(crate) fn undefine(&mut self, group: &str, plural: &str) {
        self.kinds.remove(&(group.to_string(), plural.to_string()));
        if !self.kinds.values().any(|k| k.group == group) {
            self.group_order.retain(|g| g != group);
        }
    }
}

/// Kubernetes' version ordering: GA above beta above alpha, higher numbers first; versions
/// that do not look like `vN[alpha|betaM]` sort last, by name.
pub(crate) fn version_priority(version: &str) -> (u8, u64, u64, std::cmp::Reverse<String>) {
    let parsed = version.strip_prefix('v').and_then(|rest| {
        let digits: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
        let major: u64 = digits.parse().ok()?;
        let tail = &rest[digits.len()..];
        if tail.is_empty() {
            return Some((3, major, 0));
        }
        for (word, rank) in [("beta", 2), ("alpha", 1)] {
            if let Some(n) = tail.strip_prefix(word) {
                return n.parse::<u64>().ok().map(|minor| (rank, major, minor));
            }
        }
        None
    });
    match parsed {
        Some((rank, major, minor)) => (rank, major, minor, std::cmp::Reverse(String::new())),
        None => (0, 0, 0, std::cmp::Reverse(version.to_string())),
    }
}

/// The discovery entry (`APIResource`) for a type, and its `/status` entry.
pub(crate) fn api_resources(kind: &Kind, version: &str) -> Vec<Value> {
    let mut main = json!({
        "name": kind.plural,
        "singularName": kind.singular,
        "namespaced": kind.namespaced,
        "kind": kind.kind,
        "verbs": kind.verbs(),
    });
    if !kind.short_names.is_empty() {
        main["shortNames"] = json!(kind.short_names);
    }
    if !kind.categories.is_empty() {
        main["categories"] = json!(kind.categories);
    }
    let mut out = vec![main];
    if kind.has_status(version) {
        out.push(json!({
            "name": format!("{}/status", kind.plural),
            "singularName": "",
            "namespaced": kind.namespaced,
            "kind": kind.kind,
            "verbs": ["get", "patch", "update"],
        }));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_sort_as_kubernetes_does() {
        let mut v = vec!["v1alpha1", "v2", "v1beta2", "v1", "foo", "v1beta1", "v10"];
        v.sort_by_key(|v| std::cmp::Reverse(version_priority(v)));
        assert_eq!(v, ["v10", "v2", "v1", "v1beta2", "v1beta1", "v1alpha1", "foo"]);
    }

    #[test]
    fn every_builtin_row_is_distinct_and_named() {
        let registry = Registry::builtin();
        assert_eq!(registry.all().count(), BUILTINS.len());
        for kind in registry.all() {
            assert!(!kind.kind.is_empty() && !kind.plural.is_empty());
        }
        let pods = registry.lookup("", "v1", "pods").unwrap();
        assert_eq!(pods.field_path("v1", "spec.nodeName").as_deref(), Some("spec.nodeName"));
        let events = registry.lookup("", "v1", "events").unwrap();
        assert_eq!(events.field_path("v1", "source").as_deref(), Some("source.component"));
        assert!(registry.lookup("apps", "v1beta1", "deployments").is_none());
    }
}
