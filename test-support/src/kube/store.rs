//! The fake's state: stored objects, one global resourceVersion, the history of changes that
//! watches replay and paginated lists read their snapshot from, and the write pipeline
//! (create, update, patch, apply, delete) with the semantics the API server documents.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::SystemTime;

use serde_json::{Map, Value, json};
use tokio::sync::watch;

use super::apply::{Apply, ListTypes, Part, UpdateRecord};
use super::kinds::{Kind, Origin, Registry};
use super::patch;
use super::schema;
use super::selector::{FieldSelector, LabelSelector, field_value};
use super::status::{ApiError, ApiResult, FieldError};
use super::{crd, validation};

/// Where an object lives: group, resource (plural), namespace ("" when cluster-scoped), name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct ObjKey {
    pub(crate) group: String,
    pub(crate) resource: String,
    pub(crate) namespace: String,
    pub(crate) name: String,
}

/// One committed change, at one resourceVersion.
#[derive(Debug)]
pub(crate) struct Change {
    pub(crate) rv: u64,
    pub(crate) key: ObjKey,
    pub(crate) before: Option<Arc<Value>>,
    pub(crate) after: Option<Arc<Value>>,
}

/// The resourceVersion history no longer covers.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Compacted(pub(crate) u64);

/// How unknown fields of a custom object are treated (`fieldValidation`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FieldValidation {
    Ignore,
    Warn,
    Strict,
}

/// What a write is about and how it was asked for.
#[derive(Debug, Clone)]
pub(crate) struct WriteCtx {
    pub(crate) kind: Arc<Kind>,
    pub(crate) version: String,
    pub(crate) namespace: Option<String>,
    pub(crate) dry_run: bool,
    pub(crate) manager: String,
    pub(crate) field_validation: FieldValidation,
    /// A seeding write from a test: status is kept as given on create.
    pub(crate) keep_status: bool,
}

/// A successful write: the object as served, the HTTP status, and warnings for the client.
#[derive(Debug)]
pub(crate) struct Written {
    pub(crate) object: Value,
    pub(crate) code: u16,
    pub(crate) warnings: Vec<String>,
}

/// The body of a PATCH.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PatchType {
    Json,
    Merge,
    Strategic,
    Apply,
}

/// DELETE options from the query and body.
#[derive(Debug, Clone, Default)]
pub(crate) struct DeleteOptions {
    pub(crate) uid: Option<String>,
    pub(crate) resource_version: Option<String>,
    pub(crate) orphan: bool,
    /// `dryRun: ["All"]` in the body.
    pub(crate) dry_run: bool,
}

/// What a list reads.
#[derive(Debug, Clone, Default)]
pub(crate) struct ListScope {
    pub(crate) namespace: Option<String>,
    pub(crate) labels: LabelSelector,
    pub(crate) fields: FieldSelector,
}

/// The stored objects and their history.
#[derive(Debug)]
pub(crate) struct State {
    pub(crate) registry: Registry,
    objects: BTreeMap<ObjKey, Arc<Value>>,
    head: u64,
    compacted: u64,
    history: VecDeque<Arc<Change>>,
    history_limit: usize,
    next_cluster_ip: u32,
    head_tx: watch::Sender<u64>,
}

/// The namespaces a new cluster has.
const INITIAL_NAMESPACES: &[&str] = &["default", "kube-system", "kube-public", "kube-node-lease"];
/// The resourceVersion of the empty store: versions are opaque, so start somewhere
/// unremarkable rather than at 0, which means "any" to the API.
const FIRST_RESOURCE_VERSION: u64 = 100;

pub(crate) fn now() -> String {
    humantime::format_rfc3339_seconds(SystemTime::now()).to_string()
}

fn new_uid() -> String {
    let mut bytes = [0u8; 16];
    for b in &mut bytes {
        *b = fastrand::u8(..);
    }
    bytes[6] = (bytes[6] & 0x0f) | 0x40;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!("{}-{}-{}-{}-{}", &hex[0..8], &hex[8..12], &hex[12..16], &hex[16..20], &hex[20..32])
}

/// The alphabet `generateName` suffixes come from (no vowels, no look-alikes).
const NAME_SUFFIX_ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";

fn name_suffix() -> String {
    (0..5).map(|_| NAME_SUFFIX_ALPHABET[fastrand::usize(..NAME_SUFFIX_ALPHABET.len())] as char).collect()
}

fn meta(object: &Value) -> &Value {
    object.get("metadata").unwrap_or(&Value::Null)
}

fn meta_str<'v>(object: &'v Value, field: &str) -> &'v str {
    meta(object).get(field).and_then(Value::as_str).unwrap_or_default()
}

fn meta_mut(object: &mut Value) -> &mut Map<String, Value> {
    if !object.get("metadata").is_some_and(Value::is_object) {
        object["metadata"] = json!({});
    }
    object["metadata"].as_object_mut().expect("metadata is an object")
}

/// The labels of an object, for selectors.
pub(crate) fn labels_of(object: &Value) -> BTreeMap<String, String> {
    meta(object)
        .get("labels")
        .and_then(Value::as_object)
        .map(|m| m.iter().filter_map(|(k, v)| v.as_str().map(|v| (k.clone(), v.to_string()))).collect())
        .unwrap_or_default()
}

/// The object as served at `version`: only `apiVersion` differs between versions here
/// (conversion strategy `None`).
pub(crate) fn served(object: &Value, kind: &Kind, version: &str) -> Value {
    let mut out = object.clone();
    out["apiVersion"] = json!(kind.api_version(version));
    out
}

impl ObjKey {
    fn of(kind: &Kind, namespace: &str, name: &str) -> ObjKey {
        ObjKey {
            group: kind.group.clone(),
            resource: kind.plural.clone(),
            namespace: if kind.namespaced { namespace.to_string() } else { String::new() },
            name: name.to_string(),
        }
    }
}

impl State {
    pub(crate) fn new(history_limit: usize) -> State {
        let (head_tx, _) = watch::channel(FIRST_RESOURCE_VERSION);
        let mut state = State {
            registry: Registry::builtin(),
            objects: BTreeMap::new(),
            head: FIRST_RESOURCE_VERSION,
            compacted: FIRST_RESOURCE_VERSION,
            history: VecDeque::new(),
            history_limit,
            next_cluster_ip: 1,
            head_tx,
        };
        let namespaces = state.registry.get("", "namespaces").cloned().expect("namespaces are built in");
        for name in INITIAL_NAMESPACES {
            let ctx = WriteCtx {
                kind: namespaces.clone(),
                version: "v1".into(),
                namespace: None,
                dry_run: false,
                manager: "kube-apiserver".into(),
                field_validation: FieldValidation::Ignore,
                keep_status: false,
            };
            state
                .create(&ctx, json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}))
                .expect("initial namespaces are valid");
        }
        let services = state.registry.get("", "services").cloned().expect("services are built in");
        let ctx = WriteCtx {
            kind: services,
            version: "v1".into(),
            namespace: Some("default".into()),
            dry_run: false,
            manager: "kube-apiserver".into(),
            field_validation: FieldValidation::Ignore,
            keep_status: false,
        };
        state
            .create(
                &ctx,
                json!({"apiVersion": "v1", "kind": "Service",
                       "metadata": {"name": "kubernetes", "labels": {"component": "apiserver", "provider": "kubernetes"}},
                       "spec": {"ports": [{"name": "https", "port": 443, "protocol": "TCP", "targetPort": 6443}]}}),
            )
            .expect("the kubernetes service is valid");
        state
    }

    /// The newest resourceVersion.
    pub(crate) fn head(&self) -> u64 {
        self.head
    }

    /// Every resourceVersion at or below this one has left the history.
    pub(crate) fn compacted(&self) -> u64 {
        self.compacted
    }

    /// A receiver that changes whenever the head moves.
    pub(crate) fn subscribe(&self) -> watch::Receiver<u64> {
        self.head_tx.subscribe()
    }

    /// Drops every change up to now from the history: older resourceVersions become 410.
    pub(crate) fn compact(&mut self) {
        self.history.clear();
        self.compacted = self.head;
    }

    /// The changes after `rv`, or the compaction point if history no longer reaches back.
    pub(crate) fn changes_since(&self, rv: u64) -> Result<Vec<Arc<Change>>, Compacted> {
        if rv < self.compacted {
            return Err(Compacted(self.compacted));
        }
        // Every watch looks here on every change: find the start by bisection.
        let start = self.history.partition_point(|c| c.rv <= rv);
        Ok(self.history.range(start..).cloned().collect())
    }

    /// The object at `key`, now.
    pub(crate) fn object(&self, key: &ObjKey) -> Option<&Arc<Value>> {
        self.objects.get(key)
    }

    /// The objects of `kind` (in `namespace`, if given) as they were at `rv`.
    pub(crate) fn objects_at(
        &self,
        kind: &Kind,
        namespace: Option<&str>,
        rv: u64,
    ) -> Result<BTreeMap<ObjKey, Arc<Value>>, Compacted> {
        if rv < self.compacted && rv != self.head {
            return Err(Compacted(self.compacted));
        }
        let in_scope = |key: &ObjKey| {
            key.group == kind.group && key.resource == kind.plural && namespace.is_none_or(|ns| key.namespace == ns)
        };
        let start = ObjKey {
            group: kind.group.clone(),
            resource: kind.plural.clone(),
            namespace: namespace.unwrap_or_default().to_string(),
            name: String::new(),
        };
        let mut map: BTreeMap<ObjKey, Arc<Value>> = self
            .objects
            .range(start..)
            .take_while(|(k, _)| k.group == kind.group && k.resource == kind.plural)
            .filter(|(k, _)| in_scope(k))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        for change in self.history.iter().rev().take_while(|c| c.rv > rv) {
            if in_scope(&change.key) {
                match &change.before {
                    Some(before) => map.insert(change.key.clone(), before.clone()),
                    None => map.remove(&change.key),
                };
            }
        }
        Ok(map)
    }

    /// Whether a namespace exists.
    pub(crate) fn namespace_exists(&self, name: &str) -> bool {
        self.objects.contains_key(&ObjKey {
            group: String::new(),
            resource: "namespaces".into(),
            namespace: String::new(),
            name: name.into(),
        })
    }

    fn commit(&mut self, key: ObjKey, after: Option<Value>) -> Option<Arc<Value>> {
        self.head += 1;
        let rv = self.head;
        let after = after.map(|mut object| {
            meta_mut(&mut object).insert("resourceVersion".into(), json!(rv.to_string()));
            Arc::new(object)
        });
        let before = match &after {
            Some(a) => self.objects.insert(key.clone(), a.clone()),
            None => self.objects.remove(&key),
        };
        self.history.push_back(Arc::new(Change { rv, key, before, after: after.clone() }));
        while self.history.len() > self.history_limit {
            if let Some(dropped) = self.history.pop_front() {
                self.compacted = dropped.rv;
            }
        }
        self.head_tx.send_replace(rv);
        after
    }

    // ---- create -------------------------------------------------------------------------

    /// Creates an object (POST, or an apply or PUT that creates).
    pub(crate) fn create(&mut self, ctx: &WriteCtx, body: Value) -> ApiResult<Written> {
        let kind = ctx.kind.clone();
        let mut object = self.check_body(ctx, body)?;
        if !meta_str(&object, "resourceVersion").is_empty() {
            return Err(ApiError::bad_request("resourceVersion should not be set on objects to be created"));
        }
        if meta_str(&object, "name").is_empty() {
            let generate = meta_str(&object, "generateName").to_string();
            if !generate.is_empty() {
                meta_mut(&mut object).insert("name".into(), json!(format!("{generate}{}", name_suffix())));
            }
        }
        let name = meta_str(&object, "name").to_string();
        let namespace = ctx.namespace.clone().unwrap_or_default();
        if kind.namespaced && !name.is_empty() && !self.namespace_exists(&namespace) {
            return Err(ApiError::not_found_resource("namespaces", "", "namespaces", &namespace));
        }
        {
            let m = meta_mut(&mut object);
            m.insert("uid".into(), json!(new_uid()));
            m.insert("creationTimestamp".into(), json!(now()));
            for server_owned in ["deletionTimestamp", "deletionGracePeriodSeconds", "selfLink"] {
                m.remove(server_owned);
            }
            if kind.generation {
                m.insert("generation".into(), json!(1));
            } else {
                m.remove("generation");
            }
        }
        // Status is the controllers' to write, except for a node registering itself.
        if kind.has_status(&ctx.version)
            && !ctx.keep_status
            && kind.kind != "Node"
            && let Some(map) = object.as_object_mut()
        {
            map.remove("status");
        }
        self.apply_defaults(&kind, &mut object);
        let warnings = self.validate(ctx, &mut object, None)?;
        let key = ObjKey::of(&kind, &namespace, &name);
        if self.objects.contains_key(&key) {
            return Err(ApiError::already_exists(&kind, &name));
        }
        self.record_update(ctx, None, &mut object, Part::Main { status_is_subresource: kind.has_status(&ctx.version) });
        if kind.kind == "CustomResourceDefinition" {
            object["status"] = crd::status(&object, &now());
        }
        if ctx.dry_run {
            return Ok(Written { object: served(&object, &kind, &ctx.version), code: 201, warnings });
        }
        let stored = self.commit(key, Some(self.to_storage(&kind, object))).expect("a create stores an object");
        if kind.kind == "CustomResourceDefinition" {
            self.registry.define(crd::kind(&stored));
        }
        Ok(Written { object: served(&stored, &kind, &ctx.version), code: 201, warnings })
    }

    /// Checks the body's type and namespace, fills them in, and returns it in storage form.
    fn check_body(&self, ctx: &WriteCtx, body: Value) -> ApiResult<Value> {
        let kind = &ctx.kind;
        let Value::Object(_) = body else {
            return Err(ApiError::bad_request("the body of the request must be a JSON or YAML object"));
        };
        let mut object = body;
        let want_version = kind.api_version(&ctx.version);
        if let Some(given) = object.get("kind").and_then(Value::as_str)
            && !given.is_empty()
            && given != kind.kind
        {
            return Err(ApiError::bad_request(format!(
                "{given} in version \"{}\" cannot be handled as a {}: no kind \"{given}\" is registered for version \"{want_version}\"",
                ctx.version, kind.kind
            )));
        }
        if let Some(given) = object.get("apiVersion").and_then(Value::as_str)
            && !given.is_empty()
            && given != want_version
        {
            return Err(ApiError::bad_request(format!(
                "the API version in the data ({given}) does not match the expected API version ({want_version})"
            )));
        }
        object["kind"] = json!(kind.kind);
        object["apiVersion"] = json!(want_version);
        let body_namespace = meta_str(&object, "namespace").to_string();
        if kind.namespaced {
            let namespace = ctx.namespace.clone().unwrap_or_default();
            if !body_namespace.is_empty() && body_namespace != namespace {
                return Err(ApiError::bad_request(
                    "the namespace of the provided object does not match the namespace sent on the request",
                ));
            }
            meta_mut(&mut object).insert("namespace".into(), json!(namespace));
        } else {
            meta_mut(&mut object).remove("namespace");
        }
        Ok(object)
    }

    fn to_storage(&self, kind: &Kind, object: Value) -> Value {
        served(&object, kind, &kind.storage_version)
    }

    /// What the API server defaults on create.
    fn apply_defaults(&mut self, kind: &Kind, object: &mut Value) {
        match (kind.group.as_str(), kind.kind.as_str()) {
            ("", "Namespace") => {
                let name = meta_str(object, "name").to_string();
                let labels = meta_mut(object).entry("labels").or_insert_with(|| json!({}));
                if let Value::Object(labels) = labels {
                    labels.insert("kubernetes.io/metadata.name".into(), json!(name));
                }
                object["spec"] = json!({"finalizers": ["kubernetes"]});
                object["status"] = json!({"phase": "Active"});
            }
            ("", "Pod") if object.get("status").is_none() => object["status"] = json!({"phase": "Pending"}),
            ("", "Secret") if object.get("type").is_none_or(|t| t.as_str().is_none_or(str::is_empty)) => {
                object["type"] = json!("Opaque")
            }
            ("", "Service") => {
                if !object.get("spec").is_some_and(Value::is_object) {
                    object["spec"] = json!({});
                }
                let spec = object["spec"].as_object_mut().expect("spec is an object");
                let ty =
                    spec.entry("type").or_insert_with(|| json!("ClusterIP")).as_str().unwrap_or_default().to_string();
                spec.entry("sessionAffinity").or_insert_with(|| json!("None"));
                if ty != "ExternalName" && spec.get("clusterIP").is_none_or(|ip| ip.as_str().is_none_or(str::is_empty))
                {
                    let n = self.next_cluster_ip;
                    self.next_cluster_ip += 1;
                    let ip = format!("10.96.{}.{}", n / 256, n % 256);
                    spec.insert("clusterIP".into(), json!(ip));
                    spec.insert("clusterIPs".into(), json!([ip]));
                }
                if let Some(Value::Array(ports)) = spec.get_mut("ports") {
                    for port in ports.iter_mut().filter_map(Value::as_object_mut) {
                        port.entry("protocol").or_insert_with(|| json!("TCP"));
                        if !port.contains_key("targetPort")
                            && let Some(p) = port.get("port").cloned()
                        {
                            port.insert("targetPort".into(), p);
                        }
                    }
                }
                if object.get("status").is_none() {
                    object["status"] = json!({"loadBalancer": {}});
                }
            }
            ("apiextensions.k8s.io", "CustomResourceDefinition") => crd::default(object),
            _ => {}
        }
    }

    /// Prunes, defaults and validates; the warnings are for unknown fields under `Warn`.
    fn validate(&self, ctx: &WriteCtx, object: &mut Value, old: Option<&Value>) -> ApiResult<Vec<String>> {
        let kind = &ctx.kind;
        let name = meta_str(object, "name").to_string();
        let mut errors = validation::object_meta(kind.names, meta(object));
        let mut warnings = Vec::new();
        if let Some(schema) = kind.version(&ctx.version).and_then(|v| v.schema.as_ref()) {
            let outcome = schema::process(schema, object);
            errors.extend(outcome.errors);
            if !outcome.unknown.is_empty() {
                match ctx.field_validation {
                    FieldValidation::Strict => {
                        let list: Vec<String> =
                            outcome.unknown.iter().map(|f| format!("unknown field \"{f}\"")).collect();
                        return Err(ApiError::bad_request(format!(
                            "{} in version \"{}\" cannot be handled as a {}: strict decoding error: {}",
                            kind.kind,
                            ctx.version,
                            kind.kind,
                            list.join(", ")
                        )));
                    }
                    FieldValidation::Warn => {
                        warnings.extend(outcome.unknown.iter().map(|f| format!("unknown field \"{f}\"")))
                    }
                    FieldValidation::Ignore => {}
                }
            }
        }
        if kind.kind == "CustomResourceDefinition" {
            errors.extend(crd::validate(object));
            if let Some(old) = old {
                for field in ["group", "scope"] {
                    if old["spec"][field] != object["spec"][field] {
                        errors.push(FieldError::invalid(
                            format!("spec.{field}"),
                            object["spec"][field].clone(),
                            "field is immutable",
                        ));
                    }
                }
                if old["spec"]["names"]["plural"] != object["spec"]["names"]["plural"] {
                    errors.push(FieldError::invalid(
                        "spec.names.plural",
                        object["spec"]["names"]["plural"].clone(),
                        "field is immutable",
                    ));
                }
            } else if errors.is_empty() {
                let group = object["spec"]["group"].as_str().unwrap_or_default();
                let plural = object["spec"]["names"]["plural"].as_str().unwrap_or_default();
                if self.registry.get(group, plural).is_some_and(|k| !k.is_custom()) {
                    errors.push(FieldError::invalid("spec.names.plural", plural, "conflicts with a built-in resource"));
                }
            }
        }
        if let Some(old) = old {
            match (kind.group.as_str(), kind.kind.as_str()) {
                ("", "Service") => {
                    let before = &old["spec"]["clusterIP"];
                    if before.as_str().is_some_and(|s| !s.is_empty() && s != "None")
                        && object["spec"]["clusterIP"] != *before
                    {
                        errors.push(FieldError::invalid(
                            "spec.clusterIP",
                            object["spec"]["clusterIP"].clone(),
                            "field is immutable",
                        ));
                    }
                }
                ("networking.k8s.io", "IngressClass") if old["spec"]["controller"] != object["spec"]["controller"] => {
                    errors.push(FieldError::invalid(
                        "spec.controller",
                        object["spec"]["controller"].clone(),
                        "field is immutable",
                    ));
                }
                _ => {}
            }
        }
        if errors.is_empty() { Ok(warnings) } else { Err(ApiError::invalid(kind, &name, errors)) }
    }

    fn record_update(&self, ctx: &WriteCtx, old: Option<&Value>, new: &mut Value, part: Part) {
        if ctx.manager.is_empty() {
            return;
        }
        let api_version = ctx.kind.api_version(&ctx.version);
        let now = now();
        UpdateRecord {
            manager: &ctx.manager,
            api_version: &api_version,
            subresource: if part == Part::Status { Some("status") } else { None },
            now: &now,
            lists: ListTypes::new(&ctx.kind, &ctx.version),
            part,
        }
        .record(old, new);
    }

    // ---- update, patch, apply -----------------------------------------------------------

    /// PUT of an object or its status.
    pub(crate) fn update(&mut self, ctx: &WriteCtx, name: &str, body: Value, status: bool) -> ApiResult<Written> {
        let kind = ctx.kind.clone();
        let object = self.check_body(ctx, body)?;
        let body_name = meta_str(&object, "name");
        if body_name != name {
            return Err(ApiError::bad_request(format!(
                "the name of the object ({body_name}) does not match the name on the URL ({name})"
            )));
        }
        let key = ObjKey::of(&kind, ctx.namespace.as_deref().unwrap_or_default(), name);
        let Some(old) = self.objects.get(&key).cloned() else {
            if kind.create_on_update && !status {
                let mut object = object;
                meta_mut(&mut object).remove("resourceVersion");
                return self.create(ctx, object);
            }
            return Err(ApiError::not_found(&kind, name));
        };
        let given = meta_str(&object, "resourceVersion");
        if given.is_empty() {
            if !kind.unconditional_update {
                return Err(ApiError::invalid(
                    &kind,
                    name,
                    vec![FieldError::invalid(
                        "metadata.resourceVersion",
                        json!("0x0"),
                        "must be specified for an update",
                    )],
                ));
            }
        } else if given != meta_str(&old, "resourceVersion") {
            return Err(ApiError::conflict(&kind, name));
        }
        self.finish_update(ctx, &key, &old, object, status, true)
    }

    /// PATCH of an object or its status.
    pub(crate) fn patch(
        &mut self,
        ctx: &WriteCtx,
        name: &str,
        patch_type: PatchType,
        body: &Value,
        status: bool,
        force: bool,
    ) -> ApiResult<Written> {
        let kind = ctx.kind.clone();
        let key = ObjKey::of(&kind, ctx.namespace.as_deref().unwrap_or_default(), name);
        let old = self.objects.get(&key).cloned();
        if patch_type == PatchType::Apply {
            return self.apply(ctx, &key, old, body, status, force);
        }
        let Some(old) = old else { return Err(ApiError::not_found(&kind, name)) };
        let current = served(&old, &kind, &ctx.version);
        let patched = match patch_type {
            PatchType::Json => {
                let mut doc = current.clone();
                patch::json_patch(&mut doc, body).map_err(|e| {
                    ApiError::invalid_named("", "", "", "", vec![FieldError::invalid("patch", body.to_string(), e)])
                })?;
                doc
            }
            PatchType::Merge => {
                if !body.is_object() {
                    return Err(ApiError::bad_request("a merge patch must be a JSON object"));
                }
                let mut doc = current.clone();
                patch::merge_patch(&mut doc, body);
                doc
            }
            PatchType::Strategic => patch::strategic_merge(&kind, &current, body).map_err(ApiError::bad_request)?,
            PatchType::Apply => unreachable!("handled above"),
        };
        if !patched.is_object() {
            return Err(ApiError::bad_request("the patched object is not a JSON object"));
        }
        // A resourceVersion the patch sets is a precondition.
        let given = meta_str(&patched, "resourceVersion");
        if !given.is_empty() && given != meta_str(&old, "resourceVersion") {
            return Err(ApiError::conflict(&kind, name));
        }
        let object = self.check_body(ctx, patched)?;
        if meta_str(&object, "name") != name {
            return Err(ApiError::invalid(
                &kind,
                name,
                vec![FieldError::invalid("metadata.name", meta_str(&object, "name"), "field is immutable")],
            ));
        }
        self.finish_update(ctx, &key, &old, object, status, true)
    }

    fn apply(
        &mut self,
        ctx: &WriteCtx,
        key: &ObjKey,
        old: Option<Arc<Value>>,
        body: &Value,
        status: bool,
        force: bool,
    ) -> ApiResult<Written> {
        let kind = ctx.kind.clone();
        let name = key.name.clone();
        let applied = self.check_body(ctx, body.clone())?;
        if meta_str(&applied, "name") != name {
            return Err(ApiError::bad_request(format!(
                "the name of the object ({}) does not match the name on the URL ({name})",
                meta_str(&applied, "name")
            )));
        }
        let given = meta_str(&applied, "resourceVersion").to_string();
        if !given.is_empty() {
            match &old {
                Some(old) if meta_str(old, "resourceVersion") == given => {}
                Some(_) => return Err(ApiError::conflict(&kind, &name)),
                None => return Err(ApiError::not_found(&kind, &name)),
            }
        }
        let part =
            if status { Part::Status } else { Part::Main { status_is_subresource: kind.has_status(&ctx.version) } };
        let api_version = kind.api_version(&ctx.version);
        let now = now();
        let merger = Apply {
            manager: &ctx.manager,
            force,
            api_version: &api_version,
            subresource: if status { Some("status") } else { None },
            now: &now,
            lists: ListTypes::new(&kind, &ctx.version),
            part,
        };
        let live = match &old {
            Some(old) => served(old, &kind, &ctx.version),
            None => {
                if status {
                    return Err(ApiError::not_found(&kind, &name));
                }
                let mut skeleton = json!({"apiVersion": api_version, "kind": kind.kind, "metadata": {"name": name}});
                if kind.namespaced {
                    skeleton["metadata"]["namespace"] = json!(key.namespace);
                }
                skeleton
            }
        };
        let merged =
            merger.merge(&live, &applied).map_err(|conflicts| ApiError::apply_conflict(&kind, &name, &conflicts))?;
        match old {
            None => {
                let mut object = merged;
                meta_mut(&mut object).remove("resourceVersion");
                let ctx = WriteCtx { manager: String::new(), ..ctx.clone() };
                self.create(&ctx, object)
            }
            Some(old) => self.finish_update(ctx, key, &old, merged, status, false),
        }
    }

    /// The common end of PUT, PATCH and apply on an existing object.
    fn finish_update(
        &mut self,
        ctx: &WriteCtx,
        key: &ObjKey,
        old: &Arc<Value>,
        mut object: Value,
        status: bool,
        record: bool,
    ) -> ApiResult<Written> {
        let kind = ctx.kind.clone();
        let old_served = served(old, &kind, &ctx.version);
        let has_status = kind.has_status(&ctx.version);
        if status {
            // The status subresource changes status and nothing else.
            let mut candidate = old_served.clone();
            match object.get("status") {
                Some(s) => candidate["status"] = s.clone(),
                None => {
                    if let Some(map) = candidate.as_object_mut() {
                        map.remove("status");
                    }
                }
            }
            if let Some(fields) = object.pointer("/metadata/managedFields") {
                meta_mut(&mut candidate).insert("managedFields".into(), fields.clone());
            }
            object = candidate;
        } else if has_status {
            match old_served.get("status") {
                Some(s) => object["status"] = s.clone(),
                None => {
                    if let Some(map) = object.as_object_mut() {
                        map.remove("status");
                    }
                }
            }
        }
        {
            let old_meta = meta(&old_served).clone();
            let m = meta_mut(&mut object);
            for preserved in
                ["uid", "creationTimestamp", "deletionTimestamp", "deletionGracePeriodSeconds", "generation"]
            {
                match old_meta.get(preserved) {
                    Some(v) => m.insert(preserved.into(), v.clone()),
                    None => m.remove(preserved),
                };
            }
            m.insert("resourceVersion".into(), old_meta["resourceVersion"].clone());
            m.remove("selfLink");
        }
        if kind.generation && spec_changed(&old_served, &object, has_status) {
            let generation = meta(&old_served).get("generation").and_then(Value::as_i64).unwrap_or(0) + 1;
            meta_mut(&mut object).insert("generation".into(), json!(generation));
        }
        if kind.kind == "CustomResourceDefinition" && !status {
            crd::default(&mut object);
        }
        let warnings = self.validate(ctx, &mut object, Some(&old_served))?;
        if record {
            let part = if status { Part::Status } else { Part::Main { status_is_subresource: has_status } };
            self.record_update(ctx, Some(&old_served), &mut object, part);
        }
        if kind.kind == "CustomResourceDefinition" {
            object["status"] = crd::status(&object, &now());
            if let Some(existing) = old_served.get("status").and_then(|s| s.get("conditions")) {
                object["status"]["conditions"] = existing.clone();
            }
        }
        if object == old_served {
            return Ok(Written { object, code: 200, warnings });
        }
        let finalized = !meta_str(&object, "deletionTimestamp").is_empty()
            && meta(&object).get("finalizers").and_then(Value::as_array).is_none_or(Vec::is_empty);
        if ctx.dry_run {
            return Ok(Written { object, code: 200, warnings });
        }
        let stored =
            self.commit(key.clone(), Some(self.to_storage(&kind, object))).expect("an update stores an object");
        if kind.kind == "CustomResourceDefinition" {
            self.registry.define(crd::kind(&stored));
        }
        if finalized {
            self.remove(&kind, key, false);
        }
        Ok(Written { object: served(&stored, &kind, &ctx.version), code: 200, warnings })
    }

    // ---- delete -------------------------------------------------------------------------

    /// DELETE of one object.
    pub(crate) fn delete(&mut self, ctx: &WriteCtx, name: &str, options: &DeleteOptions) -> ApiResult<Written> {
        let kind = ctx.kind.clone();
        let key = ObjKey::of(&kind, ctx.namespace.as_deref().unwrap_or_default(), name);
        let Some(old) = self.objects.get(&key).cloned() else { return Err(ApiError::not_found(&kind, name)) };
        if let Some(uid) = &options.uid
            && uid != meta_str(&old, "uid")
        {
            return Err(ApiError::conflict_because(
                &kind,
                name,
                &format!(
                    "Precondition failed: UID in precondition: {uid}, UID in object meta: {}",
                    meta_str(&old, "uid")
                ),
            ));
        }
        if let Some(rv) = &options.resource_version
            && rv != meta_str(&old, "resourceVersion")
        {
            return Err(ApiError::conflict_because(
                &kind,
                name,
                &format!(
                    "Precondition failed: ResourceVersion in precondition: {rv}, ResourceVersion in object meta: {}",
                    meta_str(&old, "resourceVersion")
                ),
            ));
        }
        let finalizers = meta(&old).get("finalizers").and_then(Value::as_array).is_some_and(|f| !f.is_empty());
        if finalizers || kind.kind == "Namespace" {
            // Deletion waits for finalizers; namespaces go through Terminating.
            let mut marked = (*old).clone();
            if meta_str(&marked, "deletionTimestamp").is_empty() {
                let m = meta_mut(&mut marked);
                m.insert("deletionTimestamp".into(), json!(now()));
                m.insert("deletionGracePeriodSeconds".into(), json!(0));
                if kind.kind == "Namespace" {
                    marked["status"]["phase"] = json!("Terminating");
                }
            }
            if ctx.dry_run {
                return Ok(Written { object: served(&marked, &kind, &ctx.version), code: 202, warnings: Vec::new() });
            }
            let stored =
                if marked == *old { old.clone() } else { self.commit(key.clone(), Some(marked)).expect("stored") };
            if kind.kind == "Namespace" {
                self.remove_namespace_contents(name);
                if !finalizers {
                    self.remove(&kind, &key, options.orphan);
                    return Ok(Written {
                        object: served(&stored, &kind, &ctx.version),
                        code: 200,
                        warnings: Vec::new(),
                    });
                }
            }
            return Ok(Written { object: served(&stored, &kind, &ctx.version), code: 202, warnings: Vec::new() });
        }
        if !ctx.dry_run {
            self.remove(&kind, &key, options.orphan);
        }
        let object = if kind.return_deleted {
            served(&old, &kind, &ctx.version)
        } else {
            let mut details = Map::new();
            details.insert("name".into(), json!(name));
            if !kind.group.is_empty() {
                details.insert("group".into(), json!(kind.group));
            }
            details.insert("kind".into(), json!(kind.plural));
            details.insert("uid".into(), json!(meta_str(&old, "uid")));
            json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "details": details})
        };
        Ok(Written { object, code: 200, warnings: Vec::new() })
    }

    /// Removes an object now, with what follows from it: a CRD's objects and type, the
    /// dependents that name it as owner (unless orphaned).
    fn remove(&mut self, kind: &Kind, key: &ObjKey, orphan: bool) {
        let Some(removed) = self.objects.get(key).cloned() else { return };
        self.commit(key.clone(), None);
        if kind.kind == "CustomResourceDefinition" {
            let group = removed["spec"]["group"].as_str().unwrap_or_default().to_string();
            let plural = removed["spec"]["names"]["plural"].as_str().unwrap_or_default().to_string();
            let keys: Vec<ObjKey> =
                self.objects.keys().filter(|k| k.group == group && k.resource == plural).cloned().collect();
            for k in keys {
                self.commit(k, None);
            }
            self.registry.undefine(&group, &plural);
        }
        if orphan {
            return;
        }
        let uid = meta_str(&removed, "uid").to_string();
        let dependents: Vec<ObjKey> = self
            .objects
            .iter()
            .filter(|(_, o)| {
                meta(o)
                    .get("ownerReferences")
                    .and_then(Value::as_array)
                    .is_some_and(|refs| refs.iter().any(|r| r["uid"].as_str() == Some(uid.as_str())))
            })
            .map(|(k, _)| k.clone())
            .collect();
        for dependent in dependents {
            if let Some(dependent_kind) = self.registry.get(&dependent.group, &dependent.resource).cloned() {
                let finalizers = self.objects.get(&dependent).is_some_and(|o| {
                    meta(o).get("finalizers").and_then(Value::as_array).is_some_and(|f| !f.is_empty())
                });
                if finalizers {
                    if let Some(o) = self.objects.get(&dependent).cloned()
                        && meta_str(&o, "deletionTimestamp").is_empty()
                    {
                        let mut marked = (*o).clone();
                        meta_mut(&mut marked).insert("deletionTimestamp".into(), json!(now()));
                        self.commit(dependent, Some(marked));
                    }
                } else {
                    self.remove(&dependent_kind, &dependent, false);
                }
            }
        }
    }

    fn remove_namespace_contents(&mut self, namespace: &str) {
        let keys: Vec<ObjKey> = self.objects.keys().filter(|k| k.namespace == namespace).cloned().collect();
        for key in keys {
            if let Some(kind) = self.registry.get(&key.group, &key.resource).cloned() {
                self.remove(&kind, &key, true);
            }
        }
    }

    /// DELETE of a collection: every matching object, answered with the list of them.
    pub(crate) fn delete_collection(
        &mut self,
        ctx: &WriteCtx,
        scope: &ListScope,
        options: &DeleteOptions,
    ) -> ApiResult<Value> {
        let kind = ctx.kind.clone();
        let objects =
            self.objects_at(&kind, scope.namespace.as_deref(), self.head).expect("the head is never compacted");
        let mut items = Vec::new();
        for (key, object) in objects {
            if !matches(&kind, &ctx.version, scope, &object) {
                continue;
            }
            let ctx = WriteCtx { namespace: Some(key.namespace.clone()).filter(|n| !n.is_empty()), ..ctx.clone() };
            self.delete(&ctx, &key.name, options)?;
            items.push(list_item(&kind, &ctx.version, &object));
        }
        Ok(json!({
            "kind": kind.list_kind,
            "apiVersion": kind.api_version(&ctx.version),
            "metadata": {"resourceVersion": self.head.to_string()},
            "items": items,
        }))
    }
}

/// Whether anything but metadata (and status, when it is a subresource) differs.
fn spec_changed(old: &Value, new: &Value, status_is_subresource: bool) -> bool {
    let strip = |v: &Value| -> Map<String, Value> {
        v.as_object()
            .map(|m| {
                m.iter()
                    .filter(|(k, _)| {
                        let ignored = matches!(k.as_str(), "metadata" | "apiVersion" | "kind")
                            || (status_is_subresource && k.as_str() == "status");
                        !ignored
                    })
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect()
            })
            .unwrap_or_default()
    };
    strip(old) != strip(new)
}

/// Whether an object passes a list's selectors.
pub(crate) fn matches(kind: &Kind, version: &str, scope: &ListScope, object: &Value) -> bool {
    if !scope.labels.is_empty() && !scope.labels.matches(&labels_of(object)) {
        return false;
    }
    scope.fields.terms.iter().all(|term| {
        let path = kind.field_path(version, &term.field).unwrap_or_else(|| term.field.clone());
        (field_value(object, &path) == term.value) == term.equal
    })
}

/// A list item as served: built-in lists carry no `apiVersion`/`kind` on their items.
pub(crate) fn list_item(kind: &Kind, version: &str, object: &Value) -> Value {
    let mut item = served(object, kind, version);
    if kind.origin == Origin::Builtin
        && let Some(map) = item.as_object_mut()
    {
        map.remove("apiVersion");
        map.remove("kind");
    }
    item
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx(state: &State, group: &str, plural: &str, namespace: Option<&str>) -> WriteCtx {
        WriteCtx {
            kind: state.registry.get(group, plural).unwrap().clone(),
            version: "v1".into(),
            namespace: namespace.map(str::to_string),
            dry_run: false,
            manager: "test".into(),
            field_validation: FieldValidation::Strict,
            keep_status: false,
        }
    }

    #[test]
    fn create_update_conflict_delete() {
        let mut state = State::new(1000);
        let cm = ctx(&state, "", "configmaps", Some("default"));
        let created = state
            .create(
                &cm,
                json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "a"}, "data": {"k": "1"}}),
            )
            .unwrap();
        assert_eq!(created.code, 201);
        let rv = created.object["metadata"]["resourceVersion"].as_str().unwrap().to_string();
        assert_eq!(rv, state.head().to_string());
        let again = state.create(&cm, json!({"metadata": {"name": "a"}})).unwrap_err();
        assert_eq!((again.code, again.reason), (409, "AlreadyExists"));

        let mut changed = created.object.clone();
        changed["data"]["k"] = json!("2");
        let updated = state.update(&cm, "a", changed.clone(), false).unwrap();
        assert_ne!(updated.object["metadata"]["resourceVersion"], json!(rv));
        let stale = state.update(&cm, "a", changed, false).unwrap_err();
        assert_eq!((stale.code, stale.reason), (409, "Conflict"));

        // A no-op update keeps the resourceVersion.
        let head = state.head();
        state.update(&cm, "a", updated.object.clone(), false).unwrap();
        assert_eq!(state.head(), head);

        let deleted = state.delete(&cm, "a", &DeleteOptions::default()).unwrap();
        assert_eq!(deleted.object["status"], "Success");
        assert_eq!(state.delete(&cm, "a", &DeleteOptions::default()).unwrap_err().code, 404);
    }

    #[test]
    fn snapshots_read_the_past_until_compaction() {
        let mut state = State::new(1000);
        let cm = ctx(&state, "", "configmaps", Some("default"));
        state.create(&cm, json!({"metadata": {"name": "a"}})).unwrap();
        let at = state.head();
        state.create(&cm, json!({"metadata": {"name": "b"}})).unwrap();
        state.delete(&cm, "a", &DeleteOptions::default()).unwrap();
        let kind = cm.kind.clone();
        let names = |m: BTreeMap<ObjKey, Arc<Value>>| m.keys().map(|k| k.name.clone()).collect::<Vec<_>>();
        assert_eq!(names(state.objects_at(&kind, Some("default"), at).unwrap()), ["a"]);
        assert_eq!(names(state.objects_at(&kind, Some("default"), state.head()).unwrap()), ["b"]);
        assert_eq!(state.changes_since(at).unwrap().len(), 2);
        state.compact();
        assert!(state.objects_at(&kind, Some("default"), at).is_err());
        assert!(state.changes_since(at).is_err());
        assert!(state.changes_since(state.head()).unwrap().is_empty());
    }

    #[test]
    fn finalizers_hold_deletion_and_status_is_a_subresource() {
        let mut state = State::new(1000);
        let deploy = ctx(&state, "apps", "deployments", Some("default"));
        let created = state
            .create(
                &deploy,
                json!({"metadata": {"name": "d", "finalizers": ["x/y"]}, "spec": {"replicas": 1}, "status": {"replicas": 9}}),
            )
            .unwrap();
        assert!(created.object.get("status").is_none(), "status is reset on create");
        assert_eq!(created.object["metadata"]["generation"], 1);
        let mut body = created.object.clone();
        body["status"] = json!({"replicas": 5});
        body["spec"]["replicas"] = json!(2);
        let updated = state.update(&deploy, "d", body, false).unwrap();
        assert!(updated.object.get("status").is_none(), "the main resource ignores status");
        assert_eq!(updated.object["metadata"]["generation"], 2);
        let mut body = updated.object.clone();
        body["status"] = json!({"replicas": 5});
        let with_status = state.update(&deploy, "d", body, true).unwrap();
        assert_eq!(with_status.object["status"]["replicas"], 5);
        assert_eq!(with_status.object["metadata"]["generation"], 2, "status does not move the generation");

        let pending = state.delete(&deploy, "d", &DeleteOptions::default()).unwrap();
        assert_eq!(pending.code, 202);
        assert!(pending.object["metadata"]["deletionTimestamp"].is_string());
        let mut body = pending.object.clone();
        body["metadata"]["finalizers"] = json!([]);
        state.update(&deploy, "d", body, false).unwrap();
        let key = ObjKey::of(&deploy.kind, "default", "d");
        assert!(state.object(&key).is_none());
    }
}
