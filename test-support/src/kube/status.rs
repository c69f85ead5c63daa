//! Failures as the API server reports them: a `Status` object with a reason and code, shaped as
//! `apimachinery/pkg/api/errors` builds them.

use std::fmt::Write as _;

use serde_json::{Map, Value, json};

use super::kinds::Kind;

/// A failed request, turned into a `Status` body in one place ([`ApiError::to_status`]).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ApiError {
    pub(crate) code: u16,
    pub(crate) reason: &'static str,
    pub(crate) message: String,
    pub(crate) details: Option<Value>,
    /// `metadata` of the Status (an inconsistent continue token on a 410 list).
    pub(crate) metadata: Option<Value>,
}

/// Why a field is wrong, as `field.ErrorType`.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum FieldErrorKind {
    Invalid(Value),
    Required,
    Forbidden,
    NotSupported(Value, Vec<String>),
    Duplicate(Value),
    TooLong(Value, usize),
}

/// One field's validation failure.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct FieldError {
    pub(crate) field: String,
    pub(crate) kind: FieldErrorKind,
    pub(crate) detail: String,
}

pub(crate) type ApiResult<T> = Result<T, ApiError>;

impl ApiError {
    fn new(code: u16, reason: &'static str, message: impl Into<String>) -> ApiError {
        ApiError { code, reason, message: message.into(), details: None, metadata: None }
    }

    fn with_details(mut self, details: Value) -> ApiError {
        self.details = Some(details);
        self
    }

    fn resource_details(kind: &Kind, name: &str) -> Value {
        let mut details = Map::new();
        details.insert("name".into(), json!(name));
        if !kind.group.is_empty() {
            details.insert("group".into(), json!(kind.group));
        }
        details.insert("kind".into(), json!(kind.plural));
        Value::Object(details)
    }

    /// `pods "x" not found`.
    pub(crate) fn not_found(kind: &Kind, name: &str) -> ApiError {
        ApiError::not_found_resource(&kind.qualified_resource(), &kind.group, &kind.plural, name)
    }

    /// NotFound for a resource named by its parts (namespaces while creating in one).
    pub(crate) fn not_found_resource(qualified: &str, group: &str, plural: &str, name: &str) -> ApiError {
        let mut details = Map::new();
        details.insert("name".into(), json!(name));
        if !group.is_empty() {
            details.insert("group".into(), json!(group));
        }
        details.insert("kind".into(), json!(plural));
        ApiError::new(404, "NotFound", format!("{qualified} \"{name}\" not found")).with_details(Value::Object(details))
    }

    /// 404 for a path the server does not serve.
    pub(crate) fn no_route() -> ApiError {
        ApiError::new(404, "NotFound", "the server could not find the requested resource").with_details(json!({}))
    }

    /// `pods "x" already exists`.
    pub(crate) fn already_exists(kind: &Kind, name: &str) -> ApiError {
        ApiError::new(409, "AlreadyExists", format!("{} \"{name}\" already exists", kind.qualified_resource()))
            .with_details(ApiError::resource_details(kind, name))
    }

    /// The optimistic-lock failure of an update.
    pub(crate) fn conflict(kind: &Kind, name: &str) -> ApiError {
        ApiError::conflict_because(
            kind,
            name,
            "the object has been modified; please apply your changes to the latest version and try again",
        )
    }

    /// `Operation cannot be fulfilled on pods "x": <why>`.
    pub(crate) fn conflict_because(kind: &Kind, name: &str, why: &str) -> ApiError {
        ApiError::new(
            409,
            "Conflict",
            format!("Operation cannot be fulfilled on {} \"{name}\": {why}", kind.qualified_resource()),
        )
        .with_details(ApiError::resource_details(kind, name))
    }

    /// A server-side apply conflict with other field managers.
    pub(crate) fn apply_conflict(kind: &Kind, name: &str, conflicts: &[(String, String)]) -> ApiError {
        // Group the fields by manager, as NewApplyConflict words it.
        let mut by_manager: Vec<(String, Vec<String>)> = Vec::new();
        for (manager, field) in conflicts {
            match by_manager.iter_mut().find(|(m, _)| m == manager) {
                Some((_, fields)) => fields.push(field.clone()),
                None => by_manager.push((manager.clone(), vec![field.clone()])),
            }
        }
        let count = conflicts.len();
        let mut message = format!("Apply failed with {count} conflict{}: ", if count == 1 { "" } else { "s" });
        if count == 1 {
            let (manager, field) = &conflicts[0];
            let _ = write!(message, "conflict with {manager}: {field}");
        } else {
            let parts: Vec<String> = by_manager
                .iter()
                .map(|(manager, fields)| {
                    let mut s = format!("conflicts with {manager}:");
                    for f in fields {
                        let _ = write!(s, "\n- {f}");
                    }
                    s
                })
                .collect();
            message.push_str(&parts.join("\n"));
        }
        let causes: Vec<Value> = conflicts
            .iter()
            .map(|(manager, field)| json!({"reason": "FieldManagerConflict", "message": format!("conflict with {manager}"), "field": field}))
            .collect();
        let mut details = ApiError::resource_details(kind, name);
        details["causes"] = Value::Array(causes);
        ApiError::new(409, "Conflict", message).with_details(details)
    }

    /// 422 for an object that fails validation.
    pub(crate) fn invalid(kind: &Kind, name: &str, errors: Vec<FieldError>) -> ApiError {
        ApiError::invalid_named(&kind.qualified_kind(), &kind.group, &kind.kind, name, errors)
    }

    /// 422 for a request object that is not a stored kind (ListOptions, PatchOptions).
    pub(crate) fn invalid_named(
        qualified_kind: &str,
        group: &str,
        kind: &str,
        name: &str,
        errors: Vec<FieldError>,
    ) -> ApiError {
        let rendered: Vec<String> = errors.iter().map(FieldError::to_string).collect();
        let summary = if rendered.len() == 1 { rendered[0].clone() } else { format!("[{}]", rendered.join(", ")) };
        let causes: Vec<Value> = errors.iter().map(FieldError::cause).collect();
        let mut details = Map::new();
        details.insert("name".into(), json!(name));
        if !group.is_empty() {
            details.insert("group".into(), json!(group));
        }
        details.insert("kind".into(), json!(kind));
        details.insert("causes".into(), Value::Array(causes));
        ApiError::new(422, "Invalid", format!("{qualified_kind} \"{name}\" is invalid: {summary}"))
            .with_details(Value::Object(details))
    }

    /// 422 for invalid list or watch options.
    pub(crate) fn invalid_list_options(errors: Vec<FieldError>) -> ApiError {
        ApiError::invalid_named("ListOptions.meta.k8s.io", "meta.k8s.io", "ListOptions", "", errors)
    }

    /// 422 for invalid patch, create, update or delete options.
    pub(crate) fn invalid_options(kind: &str, errors: Vec<FieldError>) -> ApiError {
        ApiError::invalid_named(&format!("{kind}.meta.k8s.io"), "meta.k8s.io", kind, "", errors)
    }

    pub(crate) fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(400, "BadRequest", message)
    }

    /// 410 for a resourceVersion the history no longer holds.
    pub(crate) fn expired(message: impl Into<String>) -> ApiError {
        ApiError::new(410, "Expired", message)
    }

    /// 403, worded as the RBAC authorizer words it.
    pub(crate) fn forbidden(
        user: &str,
        verb: &str,
        kind_group: &str,
        plural: &str,
        namespace: Option<&str>,
    ) -> ApiError {
        let resource = if kind_group.is_empty() { plural.to_string() } else { format!("{plural}.{kind_group}") };
        let scope = match namespace {
            Some(ns) => format!("in the namespace \"{ns}\""),
            None => "at the cluster scope".to_string(),
        };
        let mut details = Map::new();
        if !kind_group.is_empty() {
            details.insert("group".into(), json!(kind_group));
        }
        details.insert("kind".into(), json!(plural));
        ApiError::new(
            403,
            "Forbidden",
            format!(
                "{resource} is forbidden: User \"{user}\" cannot {verb} resource \"{plural}\" in API group \"{kind_group}\" {scope}"
            ),
        )
        .with_details(Value::Object(details))
    }

    pub(crate) fn unauthorized() -> ApiError {
        ApiError::new(401, "Unauthorized", "Unauthorized")
    }

    pub(crate) fn method_not_allowed() -> ApiError {
        ApiError::new(405, "MethodNotAllowed", "the server does not allow this method on the requested resource")
    }

    pub(crate) fn not_acceptable(accept: &str) -> ApiError {
        ApiError::new(
            406,
            "NotAcceptable",
            format!("the server was unable to respond with a content type that the client supports: {accept}"),
        )
    }

    pub(crate) fn unsupported_media_type(accepted: &[&str]) -> ApiError {
        ApiError::new(
            415,
            "UnsupportedMediaType",
            format!(
                "the body of the request was in an unknown format - accepted media types include: {}",
                accepted.join(", ")
            ),
        )
    }

    pub(crate) fn too_large(limit: usize) -> ApiError {
        ApiError::new(413, "RequestEntityTooLarge", format!("the request body exceeds {limit} bytes"))
    }

    /// 504 for a resourceVersion the server has not reached.
    pub(crate) fn too_large_resource_version(asked: u64, current: u64) -> ApiError {
        ApiError::new(504, "Timeout", format!("Too large resource version: {asked}, current: {current}")).with_details(
            json!({"causes": [{"reason": "ResourceVersionTooLarge", "message": "Too large resource version"}], "retryAfterSeconds": 1}),
        )
    }

    /// A failure a test asked for, with the usual reason for its code.
    pub(crate) fn injected(code: u16) -> ApiError {
        let reason = match code {
            400 => "BadRequest",
            401 => "Unauthorized",
            403 => "Forbidden",
            404 => "NotFound",
            409 => "Conflict",
            410 => "Expired",
            422 => "Invalid",
            429 => "TooManyRequests",
            503 => "ServiceUnavailable",
            504 => "Timeout",
            _ => "InternalError",
        };
        let mut error = ApiError::new(code, reason, format!("injected failure ({code})"));
        if code == 429 || code == 503 {
            error.details = Some(json!({"retryAfterSeconds": 1}));
        }
        error
    }

    /// The `Status` object for this failure.
    pub(crate) fn to_status(&self) -> Value {
        let mut status = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": self.metadata.clone().unwrap_or_else(|| json!({})),
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        });
        if let Some(details) = &self.details {
            status["details"] = details.clone();
        }
        status
    }
}

impl FieldError {
    pub(crate) fn invalid(field: impl Into<String>, value: impl Into<Value>, detail: impl Into<String>) -> FieldError {
        FieldError { field: field.into(), kind: FieldErrorKind::Invalid(value.into()), detail: detail.into() }
    }

    pub(crate) fn required(field: impl Into<String>, detail: impl Into<String>) -> FieldError {
        FieldError { field: field.into(), kind: FieldErrorKind::Required, detail: detail.into() }
    }

    pub(crate) fn forbidden(field: impl Into<String>, detail: impl Into<String>) -> FieldError {
        FieldError { field: field.into(), kind: FieldErrorKind::Forbidden, detail: detail.into() }
    }

    pub(crate) fn not_supported(field: impl Into<String>, value: impl Into<Value>, supported: &[&str]) -> FieldError {
        FieldError {
            field: field.into(),
            kind: FieldErrorKind::NotSupported(value.into(), supported.iter().map(|s| s.to_string()).collect()),
            detail: String::new(),
        }
    }

    pub(crate) fn duplicate(field: impl Into<String>, value: impl Into<Value>) -> FieldError {
        FieldError { field: field.into(), kind: FieldErrorKind::Duplicate(value.into()), detail: String::new() }
    }

    pub(crate) fn too_long(field: impl Into<String>, value: impl Into<Value>, max: usize) -> FieldError {
        FieldError { field: field.into(), kind: FieldErrorKind::TooLong(value.into(), max), detail: String::new() }
    }

    fn reason(&self) -> &'static str {
        match self.kind {
            FieldErrorKind::Invalid(_) => "FieldValueInvalid",
            FieldErrorKind::Required => "FieldValueRequired",
            FieldErrorKind::Forbidden => "FieldValueForbidden",
            FieldErrorKind::NotSupported(..) => "FieldValueNotSupported",
            FieldErrorKind::Duplicate(_) => "FieldValueDuplicate",
            FieldErrorKind::TooLong(..) => "FieldValueTooLong",
        }
    }

    /// The message without the field, as causes carry it.
    fn body(&self) -> String {
        let with_detail = |head: String| if self.detail.is_empty() { head } else { format!("{head}: {}", self.detail) };
        match &self.kind {
            FieldErrorKind::Invalid(v) => with_detail(format!("Invalid value: {}", go_value(v))),
            FieldErrorKind::Required => with_detail("Required value".to_string()),
            FieldErrorKind::Forbidden => with_detail("Forbidden".to_string()),
            FieldErrorKind::NotSupported(v, supported) => {
                let list: Vec<String> = supported.iter().map(|s| format!("{s:?}")).collect();
                format!("Unsupported value: {}: supported values: {}", go_value(v), list.join(", "))
            }
            FieldErrorKind::Duplicate(v) => format!("Duplicate value: {}", go_value(v)),
            FieldErrorKind::TooLong(_, max) => format!("Too long: may not be more than {max} bytes"),
        }
    }

    fn cause(&self) -> Value {
        json!({"reason": self.reason(), "message": self.body(), "field": self.field})
    }
}

impl std::fmt::Display for FieldError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.field, self.body())
    }
}

/// A value as Go's `%#v` prints the simple cases field errors use.
fn go_value(value: &Value) -> String {
    match value {
        Value::String(s) => format!("{s:?}"),
        Value::Null => "null".to_string(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kube::kinds::Registry;

    #[test]
    fn statuses_are_shaped_as_apimachinery_builds_them() {
        let registry = Registry::builtin();
        let deployments = registry.lookup("apps", "v1", "deployments").unwrap();
        let status = ApiError::not_found(deployments, "web").to_status();
        assert_eq!(
            status,
            json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                   "message": "deployments.apps \"web\" not found", "reason": "NotFound",
                   "details": {"name": "web", "group": "apps", "kind": "deployments"}, "code": 404})
        );
        let pods = registry.lookup("", "v1", "pods").unwrap();
        assert_eq!(
            ApiError::conflict(pods, "p").message,
            "Operation cannot be fulfilled on pods \"p\": the object has been modified; please apply your changes to the latest version and try again"
        );
        let invalid =
            ApiError::invalid(pods, "Bad", vec![FieldError::invalid("metadata.name", "Bad", "must be lower case")]);
        assert_eq!(
            invalid.message,
            "Pod \"Bad\" is invalid: metadata.name: Invalid value: \"Bad\": must be lower case"
        );
        assert_eq!(invalid.to_status()["details"]["causes"][0]["reason"], "FieldValueInvalid");
        let two = ApiError::invalid_list_options(vec![
            FieldError::forbidden("resourceVersionMatch", "a"),
            FieldError::forbidden("sendInitialEvents", "b"),
        ]);
        assert_eq!(
            two.message,
            "ListOptions.meta.k8s.io \"\" is invalid: [resourceVersionMatch: Forbidden: a, sendInitialEvents: Forbidden: b]"
        );
    }
}
