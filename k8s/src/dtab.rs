//! namerd's `DTab` resource (`l5d.io/v1alpha1`), so that a namerd user's dtabs carry over: the
//! object's name is the dtab namespace, and the dentries sit in a top-level `dentries` list of
//! `{prefix, dst}` (no `spec`). Also its `v1` CustomResourceDefinition, whose structural schema
//! comes from the Rust type; `deploy/crds/dtabs.l5d.io.yaml` is this CRD, regenerated and
//! compared by a test.

use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::{
    CustomResourceDefinition, CustomResourceDefinitionNames, CustomResourceDefinitionSpec,
    CustomResourceDefinitionVersion, CustomResourceValidation, JSONSchemaProps,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use waymark_dtab::{Dentry, Dtab, NameTree, Path, Prefix};

/// The API group.
pub const GROUP: &str = "l5d.io";
/// The version namerd used.
pub const VERSION: &str = "v1alpha1";
/// The kind.
pub const KIND: &str = "DTab";
/// The resource name in URLs.
pub const PLURAL: &str = "dtabs";
/// The CRD's name.
pub const CRD_NAME: &str = "dtabs.l5d.io";

/// One dtab namespace, stored as namerd stored it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DTab {
    /// Standard object metadata; `name` is the dtab namespace.
    pub metadata: ObjectMeta,
    /// The dentries, in order (later ones take precedence).
    pub dentries: Vec<DTabDentry>,
}

/// A dentry as text, as namerd wrote it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct DTabDentry {
    /// The prefix the dentry matches, e.g. `/svc`.
    pub prefix: String,
    /// The name tree it rewrites to, e.g. `/#/io.l5d.k8s/default/http`.
    pub dst: String,
}

/// The fields of a `DTab` below its metadata: the CRD's schema is generated from this.
#[derive(JsonSchema)]
#[schemars(description = "A dtab of namerd's io.l5d.k8s store; the object's name is the dtab namespace.")]
#[allow(dead_code)]
struct DTabFields {
    /// The dentries of the dtab, in order: later ones take precedence.
    dentries: Vec<DTabDentry>,
}

/// The wire form: `apiVersion` and `kind` beside the fields.
#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Wire {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    api_version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    kind: Option<String>,
    #[serde(default)]
    metadata: ObjectMeta,
    #[serde(default)]
    dentries: Vec<DTabDentry>,
}

/// A dentry of a `DTab` object that is not valid dtab syntax.
#[derive(Debug, thiserror::Error)]
#[error("dentry {index} of DTab {name} ({prefix} => {dst})")]
pub struct InvalidDentry {
    /// The object's name.
    pub name: String,
    /// The dentry's position.
    pub index: usize,
    /// Its prefix, as written.
    pub prefix: String,
    /// Its destination, as written.
    pub dst: String,
    /// What the parser said.
    #[source]
    pub source: Box<waymark_dtab::ParseError>,
}

impl DTab {
    /// The object for a dtab namespace, with the dtab in canonical text.
    pub fn new(name: &str, dtab: &Dtab) -> DTab {
        DTab {
            metadata: ObjectMeta { name: Some(name.to_string()), ..ObjectMeta::default() },
            dentries: dtab
                .iter()
                .map(|d| DTabDentry { prefix: d.prefix().to_string(), dst: d.dst().to_string() })
                .collect(),
        }
    }

    /// The dtab it holds.
    pub fn to_dtab(&self) -> Result<Dtab, InvalidDentry> {
        let name = self.metadata.name.clone().unwrap_or_default();
        let dentries = self
            .dentries
            .iter()
            .enumerate()
            .map(|(index, d)| {
                let error = |source| InvalidDentry {
                    name: name.clone(),
                    index,
                    prefix: d.prefix.clone(),
                    dst: d.dst.clone(),
                    source: Box::new(source),
                };
                let prefix: Prefix = d.prefix.parse().map_err(error)?;
                let dst: NameTree<Path> = d.dst.parse().map_err(error)?;
                Ok(Dentry::new(prefix, dst))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Dtab::new(dentries))
    }
}

impl Serialize for DTab {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        Wire {
            api_version: Some(<DTab as k8s_openapi::Resource>::API_VERSION.to_string()),
            kind: Some(KIND.to_string()),
            metadata: self.metadata.clone(),
            dentries: self.dentries.clone(),
        }
        .serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for DTab {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let wire = Wire::deserialize(deserializer)?;
        if let Some(kind) = &wire.kind
            && kind != KIND
        {
            return Err(serde::de::Error::custom(format!("expected kind {KIND}, found {kind}")));
        }
        Ok(DTab { metadata: wire.metadata, dentries: wire.dentries })
    }
}

impl k8s_openapi::Resource for DTab {
    const API_VERSION: &'static str = "l5d.io/v1alpha1";
    const GROUP: &'static str = GROUP;
    const KIND: &'static str = KIND;
    const VERSION: &'static str = VERSION;
    const URL_PATH_SEGMENT: &'static str = PLURAL;
    type Scope = NamespaceResourceScope;
}

impl k8s_openapi::Metadata for DTab {
    type Ty = ObjectMeta;

    fn metadata(&self) -> &ObjectMeta {
        &self.metadata
    }

    fn metadata_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

/// The structural schema of a `DTab`, from the Rust type: no references, no `$schema` or
/// `title`, and `dentries` an atomic list (its order is its meaning).
pub fn schema() -> serde_json::Value {
    let mut settings = schemars::generate::SchemaSettings::openapi3();
    settings.inline_subschemas = true;
    let generator = settings.into_generator();
    let mut schema = generator.into_root_schema_for::<DTabFields>().to_value();
    strip_keywords(&mut schema);
    if let Some(dentries) = schema.pointer_mut("/properties/dentries") {
        dentries["x-kubernetes-list-type"] = serde_json::json!("atomic");
    }
    schema
}

/// Removes what a structural schema may not or need not carry.
fn strip_keywords(value: &mut serde_json::Value) {
    if let serde_json::Value::Object(map) = value {
        for keyword in ["$schema", "title", "$defs", "definitions", "additionalProperties"] {
            map.remove(keyword);
        }
        for child in map.values_mut() {
            strip_keywords(child);
        }
    }
}

/// The `v1` CustomResourceDefinition for `DTab`.
pub fn crd() -> CustomResourceDefinition {
    let schema: JSONSchemaProps = serde_json::from_value(schema()).expect("the generated schema is a JSONSchemaProps");
    CustomResourceDefinition {
        metadata: ObjectMeta { name: Some(CRD_NAME.to_string()), ..ObjectMeta::default() },
        spec: CustomResourceDefinitionSpec {
            group: GROUP.to_string(),
            names: CustomResourceDefinitionNames {
                kind: KIND.to_string(),
                list_kind: Some(format!("{KIND}List")),
                plural: PLURAL.to_string(),
                singular: Some("dtab".to_string()),
                ..CustomResourceDefinitionNames::default()
            },
            scope: "Namespaced".to_string(),
            versions: vec![CustomResourceDefinitionVersion {
                name: VERSION.to_string(),
                served: true,
                storage: true,
                schema: Some(CustomResourceValidation { open_api_v3_schema: Some(schema) }),
                ..CustomResourceDefinitionVersion::default()
            }],
            ..CustomResourceDefinitionSpec::default()
        },
        status: None,
    }
}

/// The CRD as the YAML committed under `deploy/crds/`.
pub fn crd_yaml() -> String {
    let body = serde_saphyr::to_string(&crd()).expect("a CRD serialises to YAML");
    format!(
        "# The DTab resource of namerd's io.l5d.k8s store, as a v1 CRD with a structural schema.\n\
         # Generated from waymark_k8s::dtab::crd(); do not edit. To regenerate:\n\
         #   WAYMARK_REGENERATE=1 cargo test -p waymark-k8s --test crd\n{body}"
    )
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn objects_are_shaped_as_namerd_wrote_them() {
        let dtab: Dtab = "/srv => /#/io.l5d.k8s/default/http; /svc => 1 * /srv/a & 2 * /srv/b".parse().unwrap();
        let object = DTab::new("internal", &dtab);
        let value = serde_json::to_value(&object).unwrap();
        assert_eq!(
            value,
            json!({"apiVersion": "l5d.io/v1alpha1", "kind": "DTab", "metadata": {"name": "internal"},
                   "dentries": [{"prefix": "/srv", "dst": "/#/io.l5d.k8s/default/http"},
                                {"prefix": "/svc", "dst": "/srv/a & 2.00*/srv/b"}]})
        );
        let back: DTab = serde_json::from_value(value).unwrap();
        assert_eq!(back.to_dtab().unwrap(), dtab);
    }

    #[test]
    fn namerd_objects_read_and_bad_dentries_are_named() {
        let namerd = json!({"apiVersion": "l5d.io/v1alpha1", "kind": "DTab",
                            "metadata": {"name": "internal", "namespace": "linkerd", "resourceVersion": "7"},
                            "dentries": [{"prefix": "/svc", "dst": "/srv"}, {"prefix": "svc", "dst": "/x"}]});
        let object: DTab = serde_json::from_value(namerd).unwrap();
        let error = object.to_dtab().unwrap_err();
        assert_eq!(error.index, 1);
        assert!(error.to_string().contains("DTab internal"), "{error}");
        assert!(serde_json::from_value::<DTab>(json!({"kind": "ConfigMap"})).is_err());
    }

    #[test]
    fn the_schema_is_structural_and_atomic() {
        let schema = schema();
        assert_eq!(schema["type"], "object");
        assert_eq!(schema["required"], json!(["dentries"]));
        let dentries = &schema["properties"]["dentries"];
        assert_eq!(dentries["x-kubernetes-list-type"], "atomic");
        assert_eq!(dentries["items"]["required"], json!(["prefix", "dst"]));
        assert_eq!(dentries["items"]["properties"]["dst"]["type"], "string");
        assert!(!schema.to_string().contains("$ref"));
    }
}
