//! Request bodies in Kubernetes' protobuf encoding, for the kinds kubectl's typed clients send
//! that way (`kubectl create configmap|secret|namespace|serviceaccount|service`, `kubectl auth
//! can-i`). Responses stay JSON, which those clients also accept.
//!
//! The envelope is the magic `k8s\0` and a `runtime.Unknown` (type meta, raw object). Objects
//! decode through per-kind field tables taken from the `generated.proto` files of
//! `k8s.io/api`; fields the tables do not name are skipped. Zero values are dropped, as the Go
//! types' `omitempty` JSON does, because gogo-protobuf writes every non-pointer field.

use base64::Engine as _;
use serde_json::{Map, Value, json};

/// The four bytes before every protobuf body.
const MAGIC: &[u8] = b"k8s\0";

#[derive(Debug, Clone, Copy)]
enum Ty {
    Str,
    /// Bytes, as base64 in JSON.
    Bytes,
    Bool,
    Int,
    Msg(&'static [Field]),
    /// `metav1.Time`: seconds and nanos, as RFC 3339 in JSON.
    Time,
    IntOrString,
    StrMap,
    BytesMap,
}

#[derive(Debug, Clone, Copy)]
struct Field {
    number: u64,
    name: &'static str,
    ty: Ty,
    repeated: bool,
}

const fn f(number: u64, name: &'static str, ty: Ty) -> Field {
    Field { number, name, ty, repeated: false }
}

const fn list(number: u64, name: &'static str, ty: Ty) -> Field {
    Field { number, name, ty, repeated: true }
}

const OWNER_REFERENCE: &[Field] = &[
    f(1, "kind", Ty::Str),
    f(3, "name", Ty::Str),
    f(4, "uid", Ty::Str),
    f(5, "apiVersion", Ty::Str),
    f(6, "controller", Ty::Bool),
    f(7, "blockOwnerDeletion", Ty::Bool),
];

const OBJECT_META: &[Field] = &[
    f(1, "name", Ty::Str),
    f(2, "generateName", Ty::Str),
    f(3, "namespace", Ty::Str),
    f(5, "uid", Ty::Str),
    f(6, "resourceVersion", Ty::Str),
    f(7, "generation", Ty::Int),
    f(8, "creationTimestamp", Ty::Time),
    f(9, "deletionTimestamp", Ty::Time),
    f(10, "deletionGracePeriodSeconds", Ty::Int),
    f(11, "labels", Ty::StrMap),
    f(12, "annotations", Ty::StrMap),
    list(13, "ownerReferences", Ty::Msg(OWNER_REFERENCE)),
    list(14, "finalizers", Ty::Str),
];

const OBJECT_REFERENCE: &[Field] = &[
    f(1, "kind", Ty::Str),
    f(2, "namespace", Ty::Str),
    f(3, "name", Ty::Str),
    f(4, "uid", Ty::Str),
    f(5, "apiVersion", Ty::Str),
    f(6, "resourceVersion", Ty::Str),
    f(7, "fieldPath", Ty::Str),
];

const LOCAL_OBJECT_REFERENCE: &[Field] = &[f(1, "name", Ty::Str)];

const CONFIG_MAP: &[Field] = &[
    f(1, "metadata", Ty::Msg(OBJECT_META)),
    f(2, "data", Ty::StrMap),
    f(3, "binaryData", Ty::BytesMap),
    f(4, "immutable", Ty::Bool),
];

const SECRET: &[Field] = &[
    f(1, "metadata", Ty::Msg(OBJECT_META)),
    f(2, "data", Ty::BytesMap),
    f(3, "type", Ty::Str),
    f(4, "stringData", Ty::StrMap),
    f(5, "immutable", Ty::Bool),
];

const NAMESPACE_SPEC: &[Field] = &[list(1, "finalizers", Ty::Str)];

const NAMESPACE: &[Field] = &[f(1, "metadata", Ty::Msg(OBJECT_META)), f(2, "spec", Ty::Msg(NAMESPACE_SPEC))];

const SERVICE_ACCOUNT: &[Field] = &[
    f(1, "metadata", Ty::Msg(OBJECT_META)),
    list(2, "secrets", Ty::Msg(OBJECT_REFERENCE)),
    list(3, "imagePullSecrets", Ty::Msg(LOCAL_OBJECT_REFERENCE)),
    f(4, "automountServiceAccountToken", Ty::Bool),
];

const SERVICE_PORT: &[Field] = &[
    f(1, "name", Ty::Str),
    f(2, "protocol", Ty::Str),
    f(3, "port", Ty::Int),
    f(4, "targetPort", Ty::IntOrString),
    f(5, "nodePort", Ty::Int),
    f(6, "appProtocol", Ty::Str),
];

const SERVICE_SPEC: &[Field] = &[
    list(1, "ports", Ty::Msg(SERVICE_PORT)),
    f(2, "selector", Ty::StrMap),
    f(3, "clusterIP", Ty::Str),
    f(4, "type", Ty::Str),
    list(5, "externalIPs", Ty::Str),
    f(7, "sessionAffinity", Ty::Str),
    f(8, "loadBalancerIP", Ty::Str),
    list(9, "loadBalancerSourceRanges", Ty::Str),
    f(10, "externalName", Ty::Str),
    f(11, "externalTrafficPolicy", Ty::Str),
    f(12, "healthCheckNodePort", Ty::Int),
    f(13, "publishNotReadyAddresses", Ty::Bool),
    f(17, "ipFamilyPolicy", Ty::Str),
    list(18, "clusterIPs", Ty::Str),
    list(19, "ipFamilies", Ty::Str),
    f(20, "allocateLoadBalancerNodePorts", Ty::Bool),
    f(21, "loadBalancerClass", Ty::Str),
    f(22, "internalTrafficPolicy", Ty::Str),
];

const SERVICE: &[Field] = &[f(1, "metadata", Ty::Msg(OBJECT_META)), f(2, "spec", Ty::Msg(SERVICE_SPEC))];

const RESOURCE_ATTRIBUTES: &[Field] = &[
    f(1, "namespace", Ty::Str),
    f(2, "verb", Ty::Str),
    f(3, "group", Ty::Str),
    f(4, "version", Ty::Str),
    f(5, "resource", Ty::Str),
    f(6, "subresource", Ty::Str),
    f(7, "name", Ty::Str),
];

const NON_RESOURCE_ATTRIBUTES: &[Field] = &[f(1, "path", Ty::Str), f(2, "verb", Ty::Str)];

const SELF_SUBJECT_ACCESS_REVIEW_SPEC: &[Field] = &[
    f(1, "resourceAttributes", Ty::Msg(RESOURCE_ATTRIBUTES)),
    f(2, "nonResourceAttributes", Ty::Msg(NON_RESOURCE_ATTRIBUTES)),
];

const SELF_SUBJECT_ACCESS_REVIEW: &[Field] =
    &[f(1, "metadata", Ty::Msg(OBJECT_META)), f(2, "spec", Ty::Msg(SELF_SUBJECT_ACCESS_REVIEW_SPEC))];

/// The kinds with a field table: (group, kind, table).
const KINDS: &[(&str, &str, &[Field])] = &[
    ("", "ConfigMap", CONFIG_MAP),
    ("", "Secret", SECRET),
    ("", "Namespace", NAMESPACE),
    ("", "ServiceAccount", SERVICE_ACCOUNT),
    ("", "Service", SERVICE),
    ("authorization.k8s.io", "SelfSubjectAccessReview", SELF_SUBJECT_ACCESS_REVIEW),
];

/// Why a body could not be decoded.
#[derive(Debug, PartialEq)]
pub(crate) enum DecodeError {
    /// A kind without a field table here.
    Unsupported(String),
    /// Not a valid protobuf body.
    Malformed(&'static str),
}

/// Decodes a protobuf request body for `group`/`kind` into the JSON the API would take.
pub(crate) fn decode(body: &[u8], group: &str, kind: &str) -> Result<Value, DecodeError> {
    let Some(table) = KINDS.iter().find(|(g, k, _)| *g == group && *k == kind).map(|(_, _, t)| *t) else {
        return Err(DecodeError::Unsupported(kind.to_string()));
    };
    let envelope = body.strip_prefix(MAGIC).ok_or(DecodeError::Malformed("missing the k8s protobuf prefix"))?;
    let mut type_meta = Map::new();
    let mut raw: &[u8] = &[];
    for (number, value) in Fields::new(envelope) {
        match (number?, value) {
            (1, Wire::Bytes(bytes)) => {
                type_meta = message(bytes, &[f(1, "apiVersion", Ty::Str), f(2, "kind", Ty::Str)])?
            }
            (2, Wire::Bytes(bytes)) => raw = bytes,
            _ => {}
        }
    }
    let mut object = message(raw, table)?;
    for (key, value) in type_meta {
        object.insert(key, value);
    }
    Ok(Value::Object(object))
}

/// The media type of the protobuf OpenAPI v2 document.
pub(crate) const OPENAPI_V2_MEDIA_TYPE: &str = "application/com.github.proto-openapi.spec.v2@v1.0+protobuf";

/// A PATCH operation of the OpenAPI v2 document: the item path, and the type's group,
/// version and kind.
#[derive(Debug, Clone)]
pub(crate) struct PatchPath {
    pub(crate) path: String,
    pub(crate) group: String,
    pub(crate) version: String,
    pub(crate) kind: String,
}

/// The OpenAPI v2 document in gnostic's protobuf form (`openapi.v2.Document`), which kubectl
/// before 1.28 fetches: each type's PATCH operation with its `x-kubernetes-group-version-kind`
/// and query parameters (kubectl looks for `dryRun` there before a server-side dry run), and no
/// schemas, so kubectl computes strategic merge patches from its compiled-in types.
pub(crate) fn openapi_v2_document(title: &str, version: &str, paths: &[PatchPath]) -> Vec<u8> {
    let info = [length_delimited(1, title.as_bytes()), length_delimited(2, version.as_bytes())].concat();
    let named_paths: Vec<u8> = paths.iter().flat_map(|p| length_delimited(2, &named_path_item(p))).collect();
    [
        length_delimited(1, b"2.0"),
        length_delimited(2, &info),
        length_delimited(8, &named_paths),
        length_delimited(9, &[]),
    ]
    .concat()
}

/// `NamedPathItem { name, value: PathItem { patch: Operation } }`.
fn named_path_item(path: &PatchPath) -> Vec<u8> {
    let query = |name: &str, ty: &str| {
        // ParametersItem.parameter -> Parameter.non_body_parameter ->
        // NonBodyParameter.query_parameter_sub_schema { in, name, type }.
        let sub =
            [length_delimited(2, b"query"), length_delimited(4, name.as_bytes()), length_delimited(6, ty.as_bytes())]
                .concat();
        length_delimited(8, &length_delimited(1, &length_delimited(2, &length_delimited(3, &sub))))
    };
    // NamedAny { name, value: Any { yaml } }.
    let extension = |name: &str, yaml: &str| {
        length_delimited(
            13,
            &[length_delimited(1, name.as_bytes()), length_delimited(2, &length_delimited(2, yaml.as_bytes()))]
                .concat(),
        )
    };
    let gvk = format!("group: {:?}\nkind: {}\nversion: {}\n", path.group, path.kind, path.version);
    let operation = [
        length_delimited(5, format!("patch{}", path.kind).as_bytes()),
        query("dryRun", "string"),
        query("fieldManager", "string"),
        query("fieldValidation", "string"),
        query("force", "boolean"),
        extension("x-kubernetes-action", "patch\n"),
        extension("x-kubernetes-group-version-kind", &gvk),
    ]
    .concat();
    [length_delimited(1, path.path.as_bytes()), length_delimited(2, &length_delimited(8, &operation))].concat()
}

fn varint(mut value: u64, out: &mut Vec<u8>) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

fn length_delimited(number: u64, bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes.len() + 4);
    varint(number << 3 | 2, &mut out);
    varint(bytes.len() as u64, &mut out);
    out.extend_from_slice(bytes);
    out
}

/// One field's value on the wire.
enum Wire<'a> {
    Varint(u64),
    Bytes(&'a [u8]),
    Fixed,
}

/// The fields of a message, in order.
struct Fields<'a> {
    bytes: &'a [u8],
    failed: bool,
}

impl<'a> Fields<'a> {
    fn new(bytes: &'a [u8]) -> Fields<'a> {
        Fields { bytes, failed: false }
    }

    fn varint(&mut self) -> Option<u64> {
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let (&byte, rest) = self.bytes.split_first()?;
            self.bytes = rest;
            value |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Some(value);
            }
        }
        None
    }
}

impl<'a> Iterator for Fields<'a> {
    type Item = (Result<u64, DecodeError>, Wire<'a>);

    fn next(&mut self) -> Option<Self::Item> {
        if self.bytes.is_empty() || self.failed {
            return None;
        }
        let malformed = |this: &mut Self| {
            this.failed = true;
            Some((Err(DecodeError::Malformed("truncated protobuf")), Wire::Fixed))
        };
        let Some(key) = self.varint() else { return malformed(self) };
        let value = match key & 7 {
            0 => match self.varint() {
                Some(v) => Wire::Varint(v),
                None => return malformed(self),
            },
            1 | 5 => {
                let width = if key & 7 == 1 { 8 } else { 4 };
                if self.bytes.len() < width {
                    return malformed(self);
                }
                self.bytes = &self.bytes[width..];
                Wire::Fixed
            }
            2 => {
                let Some(len) = self.varint().and_then(|l| usize::try_from(l).ok()) else { return malformed(self) };
                if self.bytes.len() < len {
                    return malformed(self);
                }
                let (value, rest) = self.bytes.split_at(len);
                self.bytes = rest;
                Wire::Bytes(value)
            }
            _ => return malformed(self),
        };
        Some((Ok(key >> 3), value))
    }
}

fn message(bytes: &[u8], table: &[Field]) -> Result<Map<String, Value>, DecodeError> {
    let mut out = Map::new();
    for (number, wire) in Fields::new(bytes) {
        let number = number?;
        let Some(field) = table.iter().find(|f| f.number == number) else { continue };
        let Some(value) = scalar(field.ty, wire)? else { continue };
        if field.repeated {
            out.entry(field.name).or_insert_with(|| json!([])).as_array_mut().expect("a list").push(value);
        } else if let (Some(Value::Object(existing)), Value::Object(more)) = (out.get_mut(field.name), &value) {
            // Map entries arrive one by one.
            existing.extend(more.clone());
        } else {
            out.insert(field.name.to_string(), value);
        }
    }
    // Zero values are absent, as Go's omitempty JSON has them.
    out.retain(|_, v| {
        !matches!(v, Value::String(s) if s.is_empty()) && *v != json!(0) && *v != json!(false) && !v.is_null()
    });
    Ok(out)
}

fn scalar(ty: Ty, wire: Wire<'_>) -> Result<Option<Value>, DecodeError> {
    let text = |b: &[u8]| String::from_utf8(b.to_vec()).map_err(|_| DecodeError::Malformed("a string is not UTF-8"));
    Ok(match (ty, wire) {
        (Ty::Str, Wire::Bytes(b)) => Some(Value::String(text(b)?)),
        (Ty::Bytes, Wire::Bytes(b)) => Some(Value::String(base64::engine::general_purpose::STANDARD.encode(b))),
        (Ty::Bool, Wire::Varint(v)) => Some(Value::Bool(v != 0)),
        // int32 and int64 both travel as two's-complement varints.
        (Ty::Int, Wire::Varint(v)) => Some(json!(v as i64)),
        (Ty::Msg(table), Wire::Bytes(b)) => Some(Value::Object(message(b, table)?)),
        (Ty::Time, Wire::Bytes(b)) => {
            let time = message(b, &[f(1, "seconds", Ty::Int), f(2, "nanos", Ty::Int)])?;
            match time.get("seconds").and_then(Value::as_i64) {
                Some(seconds) if seconds > 0 => {
                    let at = std::time::UNIX_EPOCH + std::time::Duration::from_secs(seconds as u64);
                    Some(Value::String(humantime::format_rfc3339_seconds(at).to_string()))
                }
                _ => None,
            }
        }
        (Ty::IntOrString, Wire::Bytes(b)) => {
            let v = message(b, &[f(1, "type", Ty::Int), f(2, "intVal", Ty::Int), f(3, "strVal", Ty::Str)])?;
            if v.get("type").and_then(Value::as_i64) == Some(1) {
                v.get("strVal").cloned()
            } else {
                Some(v.get("intVal").cloned().unwrap_or(json!(0)))
            }
        }
        (Ty::StrMap | Ty::BytesMap, Wire::Bytes(b)) => {
            let value_ty = if matches!(ty, Ty::StrMap) { Ty::Str } else { Ty::Bytes };
            let entry = message(b, &[f(1, "key", Ty::Str), f(2, "value", value_ty)])?;
            let key = entry.get("key").and_then(Value::as_str).unwrap_or_default().to_string();
            let value = entry.get("value").cloned().unwrap_or_else(|| json!(""));
            Some(json!({ key: value }))
        }
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes_field(number: u64, value: &[u8]) -> Vec<u8> {
        length_delimited(number, value)
    }

    #[test]
    fn the_openapi_v2_document_reads_back() {
        let path = PatchPath {
            path: "/apis/apps/v1/namespaces/{namespace}/deployments/{name}".into(),
            group: "apps".into(),
            version: "v1".into(),
            kind: "Deployment".into(),
        };
        let doc = openapi_v2_document("Kubernetes", "v1.33.0", &[path]);
        const ANY: &[Field] = &[f(2, "yaml", Ty::Str)];
        const NAMED_ANY: &[Field] = &[f(1, "name", Ty::Str), f(2, "value", Ty::Msg(ANY))];
        const QUERY: &[Field] = &[f(2, "in", Ty::Str), f(4, "name", Ty::Str)];
        const NON_BODY: &[Field] = &[f(3, "query", Ty::Msg(QUERY))];
        const PARAMETER: &[Field] = &[f(2, "nonBody", Ty::Msg(NON_BODY))];
        const ITEM: &[Field] = &[f(1, "parameter", Ty::Msg(PARAMETER))];
        const OPERATION: &[Field] = &[list(8, "parameters", Ty::Msg(ITEM)), list(13, "extensions", Ty::Msg(NAMED_ANY))];
        const PATH_ITEM: &[Field] = &[f(8, "patch", Ty::Msg(OPERATION))];
        const NAMED_PATH: &[Field] = &[f(1, "name", Ty::Str), f(2, "value", Ty::Msg(PATH_ITEM))];
        const PATHS: &[Field] = &[list(2, "path", Ty::Msg(NAMED_PATH))];
        const INFO: &[Field] = &[f(1, "title", Ty::Str), f(2, "version", Ty::Str)];
        const DOCUMENT: &[Field] =
            &[f(1, "swagger", Ty::Str), f(2, "info", Ty::Msg(INFO)), f(8, "paths", Ty::Msg(PATHS))];
        let value = Value::Object(message(&doc, DOCUMENT).unwrap());
        assert_eq!(value["swagger"], "2.0");
        let path = &value["paths"]["path"][0];
        assert_eq!(path["name"], "/apis/apps/v1/namespaces/{namespace}/deployments/{name}");
        let operation = &path["value"]["patch"];
        assert_eq!(
            operation["parameters"][0]["parameter"]["nonBody"]["query"],
            json!({"in": "query", "name": "dryRun"})
        );
        assert_eq!(operation["extensions"][1]["value"]["yaml"], "group: \"apps\"\nkind: Deployment\nversion: v1\n");
    }

    #[test]
    fn a_config_map_decodes_with_its_type_meta_and_maps() {
        let meta = [
            bytes_field(1, b"cm"),
            bytes_field(3, b""),
            bytes_field(11, &[bytes_field(1, b"app"), bytes_field(2, b"web")].concat()),
        ]
        .concat();
        let object = [
            bytes_field(1, &meta),
            bytes_field(2, &[bytes_field(1, b"a"), bytes_field(2, b"1")].concat()),
            bytes_field(2, &[bytes_field(1, b"b"), bytes_field(2, b"2")].concat()),
            vec![4 << 3, 0],
        ]
        .concat();
        let type_meta = [bytes_field(1, b"v1"), bytes_field(2, b"ConfigMap")].concat();
        let body = [MAGIC.to_vec(), bytes_field(1, &type_meta), bytes_field(2, &object)].concat();
        let value = decode(&body, "", "ConfigMap").unwrap();
        assert_eq!(
            value,
            json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "cm", "labels": {"app": "web"}},
                   "data": {"a": "1", "b": "2"}})
        );
        assert_eq!(decode(&body, "apps", "Deployment"), Err(DecodeError::Unsupported("Deployment".into())));
        assert!(matches!(decode(b"k8s\0\x0a\x09", "", "ConfigMap"), Err(DecodeError::Malformed(_))));
    }
}
