//! One request: authentication, injected faults, routing to discovery or a resource, option
//! parsing and validation, the operation, and the response (errors become `Status` bodies
//! here and nowhere else).

use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use http::{HeaderMap, Method, Response, StatusCode, header};
use http_body_util::BodyExt;
use http_body_util::combinators::BoxBody;
use http_body_util::{Full, Limited};
use hyper::body::Incoming;
use percent_encoding::percent_decode_str;
use serde_json::{Value, json};

use super::auth::{Attributes, User};
use super::kinds::Kind;
use super::selector::{FieldSelector, LabelSelector};
use super::status::{ApiError, ApiResult, FieldError};
use super::store::{
    DeleteOptions, FieldValidation, ListScope, ObjKey, PatchType, WriteCtx, list_item, matches, served,
};
use super::watch::{self, WatchSpec, WatchStart};
use super::{LoggedRequest, RequestFilter, Shared};
use super::{discovery, protobuf};

/// The largest request body accepted, as the API server's default.
const MAX_BODY_BYTES: usize = 3 * 1024 * 1024;
/// How long a read at a resourceVersion the server has not reached waits before a 504.
const TOO_NEW_WAIT: Duration = Duration::from_secs(3);

pub(crate) type Body = BoxBody<Bytes, std::io::Error>;

/// A parsed request target.
#[derive(Debug, Clone, PartialEq)]
enum Route {
    Version,
    Health,
    CoreVersions,
    Groups,
    Group(String),
    Resources { group: String, version: String },
    OpenApiV2,
    OpenApiV3Root,
    OpenApiV3 { group: String, version: String },
    Resource(ResourcePath),
}

/// `/api/v1/namespaces/ns/pods/name/status` and the like.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ResourcePath {
    pub(crate) group: String,
    pub(crate) version: String,
    pub(crate) namespace: Option<String>,
    pub(crate) plural: String,
    pub(crate) name: Option<String>,
    pub(crate) subresource: Option<String>,
    /// The deprecated `/watch/` path prefix.
    pub(crate) legacy_watch: bool,
}

/// Decoded query parameters.
#[derive(Debug, Default, Clone)]
pub(crate) struct Query(Vec<(String, String)>);

/// The response formats the fake can write.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Format {
    Json,
    Yaml,
}

/// What the handler learned about a request, for the log and fault filters.
#[derive(Debug, Clone)]
pub(crate) struct RequestInfo {
    pub(crate) method: String,
    pub(crate) path: String,
    pub(crate) query: String,
    pub(crate) namespace: Option<String>,
    pub(crate) watch: bool,
}

impl Query {
    pub(crate) fn parse(raw: &str) -> Query {
        let decode = |s: &str| percent_decode_str(&s.replace('+', " ")).decode_utf8_lossy().into_owned();
        Query(
            raw.split('&')
                .filter(|p| !p.is_empty())
                .map(|p| match p.split_once('=') {
                    Some((k, v)) => (decode(k), decode(v)),
                    None => (decode(p), String::new()),
                })
                .collect(),
        )
    }

    pub(crate) fn get(&self, key: &str) -> Option<&str> {
        self.0.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }

    fn non_empty(&self, key: &str) -> Option<&str> {
        self.get(key).filter(|v| !v.is_empty())
    }

    fn flag(&self, key: &str) -> Option<bool> {
        self.get(key).map(|v| v == "1" || v.eq_ignore_ascii_case("true") || v.is_empty())
    }
}

fn parse_route(path: &str) -> Option<Route> {
    let segments: Vec<String> =
        path.trim_matches('/').split('/').map(|s| percent_decode_str(s).decode_utf8_lossy().into_owned()).collect();
    let s: Vec<&str> = segments.iter().map(String::as_str).collect();
    match s.as_slice() {
        ["version"] => Some(Route::Version),
        ["healthz" | "livez" | "readyz"] => Some(Route::Health),
        ["api"] => Some(Route::CoreVersions),
        ["api", version] => Some(Route::Resources { group: String::new(), version: version.to_string() }),
        ["api", version, rest @ ..] => resource_path("", version, rest),
        ["apis"] => Some(Route::Groups),
        ["apis", group] => Some(Route::Group(group.to_string())),
        ["apis", group, version] => Some(Route::Resources { group: group.to_string(), version: version.to_string() }),
        ["apis", group, version, rest @ ..] => resource_path(group, version, rest),
        ["openapi", "v2"] => Some(Route::OpenApiV2),
        ["openapi", "v3"] => Some(Route::OpenApiV3Root),
        ["openapi", "v3", "api", version] => {
            Some(Route::OpenApiV3 { group: String::new(), version: version.to_string() })
        }
        ["openapi", "v3", "apis", group, version] => {
            Some(Route::OpenApiV3 { group: group.to_string(), version: version.to_string() })
        }
        _ => None,
    }
}

fn resource_path(group: &str, version: &str, rest: &[&str]) -> Option<Route> {
    let (legacy_watch, rest) = match rest {
        ["watch", rest @ ..] => (true, rest),
        _ => (false, rest),
    };
    let (namespace, rest) = match rest {
        // `/namespaces/<name>` and its subresources address the namespace itself.
        ["namespaces", _] | ["namespaces", _, "status" | "finalize"] => (None, rest),
        ["namespaces", ns, rest @ ..] => (Some(ns.to_string()), rest),
        _ => (None, rest),
    };
    let (plural, name, subresource) = match rest {
        [plural] => (plural, None, None),
        [plural, name] => (plural, Some(name.to_string()), None),
        [plural, name, sub] => (plural, Some(name.to_string()), Some(sub.to_string())),
        _ => return None,
    };
    Some(Route::Resource(ResourcePath {
        group: group.to_string(),
        version: version.to_string(),
        namespace,
        plural: plural.to_string(),
        name,
        subresource,
        legacy_watch,
    }))
}

fn negotiate(headers: &HeaderMap) -> ApiResult<Format> {
    let Some(accept) = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()) else { return Ok(Format::Json) };
    if accept.trim().is_empty() {
        return Ok(Format::Json);
    }
    let mut yaml = false;
    for part in accept.split(',') {
        let mut params = part.split(';').map(str::trim);
        let media = params.next().unwrap_or_default();
        // A transformed form (`as=Table`, discovery v2) is not something the fake writes.
        let transformed = params.any(|p| p.starts_with("as="));
        match media {
            "application/json" | "application/*" | "*/*" if !transformed => return Ok(Format::Json),
            "application/yaml" if !transformed => yaml = true,
            _ => {}
        }
    }
    if yaml { Ok(Format::Yaml) } else { Err(ApiError::not_acceptable(accept)) }
}

/// Whether the `Accept` header lists this media type.
fn accepts(headers: &HeaderMap, media: &str) -> bool {
    headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|part| part.trim().split(';').next().is_some_and(|m| m.trim() == media))
}

fn respond(code: u16, value: &Value, format: Format, warnings: &[String]) -> Response<Body> {
    let (bytes, content_type) = match format {
        Format::Json => (serde_json::to_vec(value).expect("JSON values serialise"), "application/json"),
        Format::Yaml => (serde_saphyr::to_string(value).unwrap_or_default().into_bytes(), "application/yaml"),
    };
    let mut builder = Response::builder()
        .status(StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR))
        .header(header::CONTENT_TYPE, content_type)
        .header(header::CACHE_CONTROL, "no-cache, private");
    for warning in warnings {
        builder = builder.header("Warning", format!("299 - {}", serde_json::to_string(warning).unwrap_or_default()));
    }
    builder.body(full(bytes)).expect("a valid response")
}

pub(crate) fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into()).map_err(|never| match never {}).boxed()
}

fn error_response(error: &ApiError) -> Response<Body> {
    let mut response = respond(error.code, &error.to_status(), Format::Json, &[]);
    if let Some(seconds) = error.details.as_ref().and_then(|d| d["retryAfterSeconds"].as_u64()) {
        response.headers_mut().insert(header::RETRY_AFTER, seconds.into());
    }
    response
}

/// Serves one request.
pub(crate) async fn handle(shared: Arc<Shared>, request: http::Request<Incoming>) -> Response<Body> {
    let method = request.method().clone();
    let path = request.uri().path().to_string();
    let raw_query = request.uri().query().unwrap_or_default().to_string();
    let query = Query::parse(&raw_query);
    let headers = request.headers().clone();
    let header_text = |name: header::HeaderName| headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_string);
    let route = parse_route(&path);
    let namespace = match &route {
        Some(Route::Resource(r)) => r.namespace.clone(),
        _ => None,
    };
    let watch = match &route {
        Some(Route::Resource(r)) => r.legacy_watch || (method == Method::GET && query.flag("watch") == Some(true)),
        _ => false,
    };
    let info =
        RequestInfo { method: method.to_string(), path: path.clone(), query: raw_query.clone(), namespace, watch };

    let user = shared.auth.lock().expect("auth lock").authenticate(header_text(header::AUTHORIZATION).as_deref());
    let outcome = match (&user, shared.take_fault(&info)) {
        (None, _) => Err(ApiError::unauthorized()),
        (Some(_), Some(code)) => Err(ApiError::injected(code)),
        (Some(user), None) => {
            let body = if matches!(method, Method::POST | Method::PUT | Method::PATCH | Method::DELETE) {
                match Limited::new(request.into_body(), MAX_BODY_BYTES).collect().await {
                    Ok(collected) => Ok(collected.to_bytes()),
                    Err(_) => Err(ApiError::too_large(MAX_BODY_BYTES)),
                }
            } else {
                Ok(Bytes::new())
            };
            match body {
                Ok(body) => {
                    let request =
                        ApiRequest { method: &method, query: &query, headers: &headers, body, user, info: &info };
                    dispatch(&shared, route, request).await
                }
                Err(e) => Err(e),
            }
        }
    };
    let response = match outcome {
        Ok(response) => response,
        Err(error) => error_response(&error),
    };
    shared.log(LoggedRequest {
        method: info.method,
        path: info.path,
        query: info.query,
        user_agent: header_text(header::USER_AGENT),
        content_type: header_text(header::CONTENT_TYPE),
        user: user.map(|u| u.name).unwrap_or_default(),
        status: response.status().as_u16(),
        watch: info.watch,
    });
    response
}

/// The parts of a request the operations read.
struct ApiRequest<'a> {
    method: &'a Method,
    query: &'a Query,
    headers: &'a HeaderMap,
    body: Bytes,
    user: &'a User,
    info: &'a RequestInfo,
}

impl ApiRequest<'_> {
    fn content_type(&self) -> &str {
        self.headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(|v| v.split(';').next().unwrap_or_default().trim())
            .unwrap_or("application/json")
    }

    /// The body of a create or update: JSON, YAML, or for some built-in kinds protobuf.
    fn object_body(&self, kind: &Kind) -> ApiResult<Value> {
        let accepted = ["application/json", "application/yaml", "application/vnd.kubernetes.protobuf"];
        match self.content_type() {
            "application/json" | "" => serde_json::from_slice(&self.body)
                .map_err(|e| ApiError::bad_request(format!("error decoding the body: {e}"))),
            "application/yaml" => yaml(&self.body),
            "application/vnd.kubernetes.protobuf" => match protobuf::decode(&self.body, &kind.group, &kind.kind) {
                Ok(value) => Ok(value),
                Err(protobuf::DecodeError::Unsupported(_)) => Err(ApiError::unsupported_media_type(&accepted[..2])),
                Err(protobuf::DecodeError::Malformed(why)) => {
                    Err(ApiError::bad_request(format!("error decoding the body: {why}")))
                }
            },
            _ => Err(ApiError::unsupported_media_type(&accepted)),
        }
    }

    fn user_agent_manager(&self) -> String {
        self.headers
            .get(header::USER_AGENT)
            .and_then(|v| v.to_str().ok())
            .map(|ua| ua.split('/').next().unwrap_or_default().to_string())
            .unwrap_or_default()
    }
}

fn yaml(bytes: &[u8]) -> ApiResult<Value> {
    let text = std::str::from_utf8(bytes).map_err(|e| ApiError::bad_request(format!("the body is not UTF-8: {e}")))?;
    serde_saphyr::from_str::<Value>(text).map_err(|e| ApiError::bad_request(format!("error decoding YAML: {e}")))
}

async fn dispatch(shared: &Arc<Shared>, route: Option<Route>, request: ApiRequest<'_>) -> ApiResult<Response<Body>> {
    if route == Some(Route::OpenApiV2)
        && request.method == Method::GET
        && accepts(request.headers, protobuf::OPENAPI_V2_MEDIA_TYPE)
    {
        let version = discovery::version();
        let paths = discovery::patch_paths(&shared.state.lock().expect("state lock").registry);
        let document =
            protobuf::openapi_v2_document("Kubernetes", version["gitVersion"].as_str().unwrap_or_default(), &paths);
        return Ok(Response::builder()
            .status(200)
            // As kube-openapi answers: the media type itself does not parse as one.
            .header(header::CONTENT_TYPE, "application/octet-stream")
            .body(full(document))
            .expect("a valid response"));
    }
    let format = negotiate(request.headers)?;
    let get_only = |value: Option<Value>| -> ApiResult<Response<Body>> {
        if request.method != Method::GET {
            return Err(ApiError::method_not_allowed());
        }
        value.map(|v| respond(200, &v, format, &[])).ok_or_else(ApiError::no_route)
    };
    let registry = || shared.state.lock().expect("state lock").registry.clone();
    match route {
        None => Err(ApiError::no_route()),
        Some(Route::Version) => get_only(Some(discovery::version())),
        Some(Route::Health) => {
            if request.method != Method::GET {
                return Err(ApiError::method_not_allowed());
            }
            Ok(Response::builder()
                .status(200)
                .header(header::CONTENT_TYPE, "text/plain")
                .body(full("ok"))
                .expect("valid"))
        }
        Some(Route::CoreVersions) => get_only(Some(discovery::core_versions(&shared.server_address()))),
        Some(Route::Groups) => get_only(Some(discovery::group_list(&registry()))),
        Some(Route::Group(g)) => get_only(discovery::group(&registry(), &g)),
        Some(Route::Resources { group, version }) => get_only(discovery::resource_list(&registry(), &group, &version)),
        Some(Route::OpenApiV3Root) => get_only(Some(discovery::openapi_v3_root(&registry()))),
        Some(Route::OpenApiV3 { group, version }) => {
            get_only(discovery::openapi_v3_document(&registry(), &group, &version))
        }
        Some(Route::OpenApiV2) => get_only(Some(discovery::openapi_v2())),
        Some(Route::Resource(path)) => resource(shared, path, request, format).await,
    }
}

async fn resource(
    shared: &Arc<Shared>,
    path: ResourcePath,
    request: ApiRequest<'_>,
    format: Format,
) -> ApiResult<Response<Body>> {
    let kind = shared
        .state
        .lock()
        .expect("state lock")
        .registry
        .lookup(&path.group, &path.version, &path.plural)
        .cloned()
        .ok_or_else(ApiError::no_route)?;
    if path.namespace.is_some() && !kind.namespaced {
        return Err(ApiError::no_route());
    }
    if path.name.is_some() && kind.namespaced && path.namespace.is_none() && !path.legacy_watch {
        return Err(ApiError::no_route());
    }
    let status = match path.subresource.as_deref() {
        None => false,
        Some("status") if kind.has_status(&path.version) => true,
        Some(_) => return Err(ApiError::no_route()),
    };
    let watch = request.info.watch;
    let verb = match (request.method.clone(), &path.name) {
        (Method::GET, _) if watch => "watch",
        (Method::GET, Some(_)) => "get",
        (Method::GET, None) => "list",
        (Method::POST, None) => "create",
        (Method::PUT, Some(_)) => "update",
        (Method::PATCH, Some(_)) => "patch",
        (Method::DELETE, Some(_)) => "delete",
        (Method::DELETE, None) if kind.verbs().contains(&"deletecollection") => "deletecollection",
        _ => return Err(ApiError::method_not_allowed()),
    };
    if kind.is_review() && verb != "create" {
        return Err(ApiError::method_not_allowed());
    }
    let resource_name = if status { format!("{}/status", kind.plural) } else { kind.plural.clone() };
    let allowed = shared.auth.lock().expect("auth lock").allowed(
        &request.user.name,
        &Attributes { verb, group: &kind.group, resource: &resource_name, namespace: path.namespace.as_deref() },
    );
    if !allowed {
        return Err(ApiError::forbidden(
            &request.user.name,
            verb,
            &kind.group,
            &resource_name,
            path.namespace.as_deref(),
        ));
    }
    if kind.is_review() {
        return review(shared, &kind, &path, &request, format);
    }
    match verb {
        "get" => {
            let name = path.name.as_deref().unwrap_or_default();
            let rv = parse_rv(request.query.non_empty("resourceVersion"))?;
            if let Some(rv) = rv {
                wait_for(shared, rv).await?;
            }
            let state = shared.state.lock().expect("state lock");
            let key = ObjKey {
                group: kind.group.clone(),
                resource: kind.plural.clone(),
                namespace: path.namespace.clone().unwrap_or_default(),
                name: name.to_string(),
            };
            let object = state.object(&key).ok_or_else(|| ApiError::not_found(&kind, name))?;
            Ok(respond(200, &served(object, &kind, &path.version), format, &[]))
        }
        "list" => list(shared, &kind, &path, request.query, format).await,
        "watch" => {
            let spec = watch_spec(&kind, &path, request.query)?;
            if let WatchStart::Initial { at_least: Some(rv) } = spec.start {
                wait_for(shared, rv).await?;
            }
            let filter_info = request.info.clone();
            Ok(watch::respond(shared.clone(), kind, spec, filter_info))
        }
        "create" => {
            let ctx = write_ctx(&kind, &path, &request, "CreateOptions")?;
            let body = request.object_body(&kind)?;
            let written = shared.state.lock().expect("state lock").create(&ctx, body)?;
            Ok(respond(written.code, &written.object, format, &written.warnings))
        }
        "update" => {
            let ctx = write_ctx(&kind, &path, &request, "UpdateOptions")?;
            let body = request.object_body(&kind)?;
            let name = path.name.as_deref().unwrap_or_default();
            let written = shared.state.lock().expect("state lock").update(&ctx, name, body, status)?;
            Ok(respond(written.code, &written.object, format, &written.warnings))
        }
        "patch" => patch(shared, &kind, &path, &request, status, format),
        "delete" => {
            let mut ctx = write_ctx(&kind, &path, &request, "DeleteOptions")?;
            let options = delete_options(&request)?;
            ctx.dry_run |= options.dry_run;
            let name = path.name.as_deref().unwrap_or_default();
            let written = shared.state.lock().expect("state lock").delete(&ctx, name, &options)?;
            Ok(respond(written.code, &written.object, format, &[]))
        }
        "deletecollection" => {
            let mut ctx = write_ctx(&kind, &path, &request, "DeleteOptions")?;
            let options = delete_options(&request)?;
            ctx.dry_run |= options.dry_run;
            let scope = list_scope(&kind, &path, request.query)?;
            let list = shared.state.lock().expect("state lock").delete_collection(&ctx, &scope, &options)?;
            Ok(respond(200, &list, format, &[]))
        }
        _ => Err(ApiError::method_not_allowed()),
    }
}

fn review(
    shared: &Arc<Shared>,
    kind: &Kind,
    path: &ResourcePath,
    request: &ApiRequest<'_>,
    format: Format,
) -> ApiResult<Response<Body>> {
    let mut body = request.object_body(kind)?;
    if !body.is_object() {
        return Err(ApiError::bad_request("the body must be an object"));
    }
    body["apiVersion"] = json!(kind.api_version(&path.version));
    body["kind"] = json!(kind.kind);
    if body.get("metadata").is_none() {
        body["metadata"] = json!({});
    }
    let auth = shared.auth.lock().expect("auth lock");
    let answer = match kind.plural.as_str() {
        "tokenreviews" => {
            if body["spec"]["token"].as_str().unwrap_or_default().is_empty() {
                return Err(ApiError::invalid(kind, "", vec![FieldError::required("spec.token", "")]));
            }
            auth.token_review(body)
        }
        "selfsubjectreviews" => auth.self_subject_review(request.user, body),
        "selfsubjectaccessreviews" => auth.access_review(Some(request.user), body),
        _ => auth.access_review(None, body),
    };
    Ok(respond(201, &answer, format, &[]))
}

fn parse_rv(text: Option<&str>) -> ApiResult<Option<u64>> {
    match text {
        None | Some("0") => Ok(None),
        Some(t) => {
            t.parse::<u64>().map(Some).map_err(|_| ApiError::bad_request(format!("invalid resource version: {t}")))
        }
    }
}

/// Waits until the store reaches `rv`, or answers 504 as the API server does.
async fn wait_for(shared: &Arc<Shared>, rv: u64) -> ApiResult<()> {
    let mut head = shared.state.lock().expect("state lock").subscribe();
    let reached = tokio::time::timeout(TOO_NEW_WAIT, head.wait_for(|h| *h >= rv)).await.is_ok_and(|r| r.is_ok());
    if reached {
        Ok(())
    } else {
        let current = *head.borrow();
        Err(ApiError::too_large_resource_version(rv, current))
    }
}

fn field_validation(query: &Query) -> ApiResult<FieldValidation> {
    match query.get("fieldValidation").unwrap_or("") {
        "" | "Warn" => Ok(FieldValidation::Warn),
        "Ignore" => Ok(FieldValidation::Ignore),
        "Strict" => Ok(FieldValidation::Strict),
        other => Err(ApiError::bad_request(format!(
            "fieldValidation must be one of \"Ignore\", \"Warn\", or \"Strict\", got {other:?}"
        ))),
    }
}

fn write_ctx(kind: &Arc<Kind>, path: &ResourcePath, request: &ApiRequest<'_>, options: &str) -> ApiResult<WriteCtx> {
    let mut errors = Vec::new();
    let dry_run = match request.query.get("dryRun") {
        None | Some("") => false,
        Some("All") => true,
        Some(other) => {
            errors.push(FieldError::not_supported("dryRun", other, &["All"]));
            false
        }
    };
    let manager =
        request.query.non_empty("fieldManager").map(str::to_string).unwrap_or_else(|| request.user_agent_manager());
    if manager.len() > 128 {
        errors.push(FieldError::too_long("fieldManager", manager.as_str(), 128));
    }
    if !errors.is_empty() {
        return Err(ApiError::invalid_options(options, errors));
    }
    Ok(WriteCtx {
        kind: kind.clone(),
        version: path.version.clone(),
        namespace: path.namespace.clone(),
        dry_run,
        manager,
        field_validation: field_validation(request.query)?,
        keep_status: false,
    })
}

fn patch(
    shared: &Arc<Shared>,
    kind: &Arc<Kind>,
    path: &ResourcePath,
    request: &ApiRequest<'_>,
    status: bool,
    format: Format,
) -> ApiResult<Response<Body>> {
    let accepted: &[&str] = if kind.is_custom() {
        &["application/json-patch+json", "application/merge-patch+json", "application/apply-patch+yaml"]
    } else {
        &[
            "application/json-patch+json",
            "application/merge-patch+json",
            "application/apply-patch+yaml",
            "application/strategic-merge-patch+json",
        ]
    };
    let patch_type = match request.content_type() {
        "application/json-patch+json" => PatchType::Json,
        "application/merge-patch+json" => PatchType::Merge,
        "application/strategic-merge-patch+json" if !kind.is_custom() => PatchType::Strategic,
        "application/apply-patch+yaml" => PatchType::Apply,
        _ => return Err(ApiError::unsupported_media_type(accepted)),
    };
    let force = request.query.flag("force").unwrap_or(false);
    let mut errors = Vec::new();
    if patch_type == PatchType::Apply {
        if request.query.non_empty("fieldManager").is_none() {
            errors.push(FieldError::required("fieldManager", "is required for apply patch"));
        }
    } else if request.query.get("force").is_some() {
        errors.push(FieldError::forbidden("force", "may not be specified for non-apply patch"));
    }
    if !errors.is_empty() {
        return Err(ApiError::invalid_options("PatchOptions", errors));
    }
    let ctx = write_ctx(kind, path, request, "PatchOptions")?;
    let body = match patch_type {
        PatchType::Apply => yaml(&request.body)?,
        _ => serde_json::from_slice(&request.body)
            .map_err(|e| ApiError::bad_request(format!("error decoding the patch: {e}")))?,
    };
    let name = path.name.as_deref().unwrap_or_default();
    let written = shared.state.lock().expect("state lock").patch(&ctx, name, patch_type, &body, status, force)?;
    Ok(respond(written.code, &written.object, format, &written.warnings))
}

fn delete_options(request: &ApiRequest<'_>) -> ApiResult<DeleteOptions> {
    let mut options = DeleteOptions::default();
    let body: Value = if request.body.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&request.body)
            .map_err(|e| ApiError::bad_request(format!("error decoding DeleteOptions: {e}")))?
    };
    options.uid = body.pointer("/preconditions/uid").and_then(Value::as_str).map(str::to_string);
    options.resource_version =
        body.pointer("/preconditions/resourceVersion").and_then(Value::as_str).map(str::to_string);
    let policy = body["propagationPolicy"].as_str().or(request.query.get("propagationPolicy")).unwrap_or("Background");
    let orphan_flag = body["orphanDependents"].as_bool().or(request.query.flag("orphanDependents")).unwrap_or(false);
    options.orphan = policy == "Orphan" || orphan_flag;
    // DeleteOptions may carry dryRun in the body as well as in the query.
    match &body["dryRun"] {
        Value::Null => {}
        Value::Array(values) if values.iter().all(|v| v == "All") => options.dry_run = !values.is_empty(),
        other => {
            return Err(ApiError::invalid_options(
                "DeleteOptions",
                vec![FieldError::not_supported("dryRun", other.clone(), &["All"])],
            ));
        }
    }
    Ok(options)
}

fn list_scope(kind: &Kind, path: &ResourcePath, query: &Query) -> ApiResult<ListScope> {
    let labels = LabelSelector::parse(query.get("labelSelector").unwrap_or("")).map_err(ApiError::bad_request)?;
    let mut fields = FieldSelector::parse(query.get("fieldSelector").unwrap_or("")).map_err(ApiError::bad_request)?;
    for term in &fields.terms {
        if kind.field_path(&path.version, &term.field).is_none() {
            return Err(ApiError::bad_request(if kind.is_custom() {
                format!(
                    "\"{}\" is not a known field selector: only \"metadata.name\", \"metadata.namespace\"",
                    term.field
                )
            } else {
                format!("field label not supported: {}", term.field)
            }));
        }
    }
    if path.legacy_watch
        && let Some(name) = &path.name
    {
        fields.terms.push(super::selector::FieldTerm {
            field: "metadata.name".into(),
            equal: true,
            value: name.clone(),
        });
    }
    Ok(ListScope { namespace: path.namespace.clone(), labels, fields })
}

/// The list and watch option rules of `internalversion/validation`.
fn validate_list_options(query: &Query, watch: bool) -> ApiResult<()> {
    let rv = query.get("resourceVersion").unwrap_or("");
    let rv_match = query.get("resourceVersionMatch").unwrap_or("");
    let continue_ = query.get("continue").unwrap_or("");
    let send_initial = query.get("sendInitialEvents").is_some();
    let mut errors = Vec::new();
    if watch {
        if send_initial && rv_match != "NotOlderThan" {
            errors.push(FieldError::forbidden(
                "resourceVersionMatch",
                "sendInitialEvents requires setting resourceVersionMatch to NotOlderThan",
            ));
        }
        if !rv_match.is_empty() {
            if !send_initial {
                errors.push(FieldError::forbidden(
                    "resourceVersionMatch",
                    "resourceVersionMatch is forbidden for watch unless sendInitialEvents is provided",
                ));
            }
            if rv_match != "NotOlderThan" {
                errors.push(FieldError::not_supported("resourceVersionMatch", rv_match, &["NotOlderThan"]));
            }
            if !continue_.is_empty() {
                errors.push(FieldError::forbidden(
                    "resourceVersionMatch",
                    "resourceVersionMatch is forbidden when continue is provided",
                ));
            }
        }
    } else {
        if !rv_match.is_empty() {
            if rv.is_empty() {
                errors.push(FieldError::forbidden(
                    "resourceVersionMatch",
                    "resourceVersionMatch is forbidden unless resourceVersion is provided",
                ));
            }
            if !continue_.is_empty() {
                errors.push(FieldError::forbidden(
                    "resourceVersionMatch",
                    "resourceVersionMatch is forbidden when continue is provided",
                ));
            }
            match rv_match {
                "Exact" if rv == "0" => errors.push(FieldError::forbidden(
                    "resourceVersionMatch",
                    "resourceVersionMatch \"exact\" is forbidden for resourceVersion \"0\"",
                )),
                "Exact" | "NotOlderThan" => {}
                other => errors.push(FieldError::not_supported(
                    "resourceVersionMatch",
                    other,
                    &["Exact", "NotOlderThan", ""],
                )),
            }
        }
        if send_initial {
            errors.push(FieldError::forbidden("sendInitialEvents", "sendInitialEvents is forbidden for list"));
        }
    }
    if errors.is_empty() { Ok(()) } else { Err(ApiError::invalid_list_options(errors)) }
}

/// A continue token: the snapshot's resourceVersion (-1: inconsistent, read now) and the last
/// key returned, encoded as the API server encodes its own.
fn encode_continue(rv: i64, last: &ObjKey) -> String {
    let start = if last.namespace.is_empty() {
        format!("{}\u{0}", last.name)
    } else {
        format!("{}/{}\u{0}", last.namespace, last.name)
    };
    let token = json!({"v": "meta.k8s.io/v1", "rv": rv, "start": start});
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(token.to_string())
}

fn decode_continue(token: &str) -> ApiResult<(i64, String, String)> {
    let invalid = |why: &str| ApiError::bad_request(format!("continue key is not valid: {why}"));
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(token.trim_end_matches('='))
        .map_err(|_| invalid("incorrect encoded start resourceVersion (version meta.k8s.io/v1)"))?;
    let value: Value = serde_json::from_slice(&bytes)
        .map_err(|_| invalid("incorrect encoded start resourceVersion (version meta.k8s.io/v1)"))?;
    if value["v"] != "meta.k8s.io/v1" {
        return Err(invalid("server does not recognize this encoded version"));
    }
    let rv = value["rv"]
        .as_i64()
        .ok_or_else(|| invalid("incorrect encoded start resourceVersion (version meta.k8s.io/v1)"))?;
    let start = value["start"].as_str().unwrap_or_default().trim_end_matches('\u{0}');
    let (namespace, name) = match start.split_once('/') {
        Some((ns, name)) => (ns.to_string(), name.to_string()),
        None => (String::new(), start.to_string()),
    };
    Ok((rv, namespace, name))
}

async fn list(
    shared: &Arc<Shared>,
    kind: &Arc<Kind>,
    path: &ResourcePath,
    query: &Query,
    format: Format,
) -> ApiResult<Response<Body>> {
    validate_list_options(query, false)?;
    let scope = list_scope(kind, path, query)?;
    let limit = query.non_empty("limit").and_then(|l| l.parse::<i64>().ok()).filter(|l| *l > 0).map(|l| l as usize);
    let rv_text = query.get("resourceVersion").unwrap_or("");
    let rv_match = query.get("resourceVersionMatch").unwrap_or("");
    let continue_ = query.non_empty("continue").map(decode_continue).transpose()?;
    if continue_.is_some() && !rv_text.is_empty() && rv_text != "0" {
        return Err(ApiError::bad_request("specifying resource version is not allowed when using continue"));
    }
    let rv = parse_rv(Some(rv_text).filter(|t| !t.is_empty()))?;
    // Exact: the given version, from history. Otherwise: now, once the store reached it.
    let exact = rv.filter(|_| rv_match == "Exact" || (rv_match.is_empty() && limit.is_some()));
    if let Some(rv) = rv {
        wait_for(shared, rv).await?;
    }
    let state = shared.state.lock().expect("state lock");
    let (snapshot_rv, after) = match continue_.clone() {
        Some((-1, ns, name)) => (state.head(), Some((ns, name))),
        Some((token_rv, ns, name)) => {
            let token_rv = u64::try_from(token_rv).map_err(|_| ApiError::bad_request("continue key is not valid"))?;
            (token_rv, Some((ns, name)))
        }
        None => (exact.unwrap_or(state.head()), None),
    };
    let objects = match state.objects_at(kind, scope.namespace.as_deref(), snapshot_rv) {
        Ok(objects) => objects,
        Err(compacted) => {
            let mut error = if after.is_some() {
                ApiError::expired(
                    "The provided continue parameter is too old to display a consistent list result. You can start a new list without the continue parameter, or use the continue token in this response to retrieve the remainder of the results. Continuing with the provided token results in an inconsistent list - objects that were created, modified, or deleted between the time the first chunk was returned and now may show up in the list.",
                )
            } else {
                ApiError::expired(format!("too old resource version: {snapshot_rv} ({})", compacted.0))
            };
            if let Some((ns, name)) = &after {
                let last = ObjKey {
                    group: kind.group.clone(),
                    resource: kind.plural.clone(),
                    namespace: ns.clone(),
                    name: name.clone(),
                };
                error.metadata = Some(json!({"continue": encode_continue(-1, &last)}));
            }
            return Err(error);
        }
    };
    drop(state);
    let mut items = Vec::new();
    let mut last_key = None;
    let mut remaining = 0usize;
    for (key, object) in &objects {
        if let Some((ns, name)) = &after
            && (key.namespace.as_str(), key.name.as_str()) <= (ns.as_str(), name.as_str())
        {
            continue;
        }
        if !matches(kind, &path.version, &scope, object) {
            continue;
        }
        if limit.is_some_and(|l| items.len() >= l) {
            remaining += 1;
            continue;
        }
        items.push(list_item(kind, &path.version, object));
        last_key = Some(key.clone());
    }
    let mut metadata = json!({"resourceVersion": snapshot_rv.to_string()});
    if remaining > 0
        && let Some(last) = &last_key
    {
        let token_rv = if continue_.as_ref().is_some_and(|(rv, _, _)| *rv == -1) { -1 } else { snapshot_rv as i64 };
        metadata["continue"] = json!(encode_continue(token_rv, last));
        if scope.labels.is_empty() && scope.fields.terms.is_empty() {
            metadata["remainingItemCount"] = json!(remaining);
        }
    }
    let list = json!({"kind": kind.list_kind, "apiVersion": kind.api_version(&path.version), "metadata": metadata, "items": items});
    Ok(respond(200, &list, format, &[]))
}

fn watch_spec(kind: &Kind, path: &ResourcePath, query: &Query) -> ApiResult<WatchSpec> {
    validate_list_options(query, true)?;
    let scope = list_scope(kind, path, query)?;
    let send_initial_events = query.flag("sendInitialEvents").unwrap_or(false);
    let rv = parse_rv(query.non_empty("resourceVersion"))?;
    let start = match (send_initial_events, rv) {
        (true, _) | (false, None) => WatchStart::Initial { at_least: rv },
        (false, Some(rv)) => WatchStart::After(rv),
    };
    Ok(WatchSpec {
        version: path.version.clone(),
        scope,
        start,
        send_initial_events,
        bookmarks: query.flag("allowWatchBookmarks").unwrap_or(false),
        timeout: query.non_empty("timeoutSeconds").and_then(|t| t.parse::<u64>().ok()).map(Duration::from_secs),
    })
}

impl RequestInfo {
    /// Whether a fault or close filter selects this request.
    pub(crate) fn matches(&self, filter: &RequestFilter) -> bool {
        filter.method.as_deref().is_none_or(|m| m.eq_ignore_ascii_case(&self.method))
            && filter.path_contains.as_deref().is_none_or(|p| self.path.contains(p))
            && filter.watch.is_none_or(|w| w == self.watch)
            && filter.namespace.as_deref().is_none_or(|ns| self.namespace.as_deref() == Some(ns))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes() {
        let r = |p: &str| parse_route(p).unwrap();
        assert_eq!(
            r("/api/v1/namespaces/default/pods/web/status"),
            Route::Resource(ResourcePath {
                group: String::new(),
                version: "v1".into(),
                namespace: Some("default".into()),
                plural: "pods".into(),
                name: Some("web".into()),
                subresource: Some("status".into()),
                legacy_watch: false,
            })
        );
        let Route::Resource(ns) = r("/api/v1/namespaces/default") else { panic!() };
        assert_eq!((ns.namespace, ns.plural.as_str(), ns.name.as_deref()), (None, "namespaces", Some("default")));
        let Route::Resource(w) = r("/apis/l5d.io/v1alpha1/watch/namespaces/linkerd/dtabs") else { panic!() };
        assert!(w.legacy_watch && w.namespace.as_deref() == Some("linkerd"));
        assert_eq!(r("/apis/apps/v1"), Route::Resources { group: "apps".into(), version: "v1".into() });
        assert_eq!(r("/openapi/v3/apis/apps/v1"), Route::OpenApiV3 { group: "apps".into(), version: "v1".into() });
        assert!(parse_route("/nonsense").is_none());
    }

    #[test]
    fn list_option_rules() {
        let check = |q: &str, watch: bool| validate_list_options(&Query::parse(q), watch).map_err(|e| e.code);
        assert_eq!(check("resourceVersionMatch=NotOlderThan", false), Err(422));
        assert_eq!(check("resourceVersion=0&resourceVersionMatch=Exact", false), Err(422));
        assert_eq!(check("resourceVersion=5&resourceVersionMatch=Exact", false), Ok(()));
        assert_eq!(check("sendInitialEvents=true", false), Err(422));
        assert_eq!(check("sendInitialEvents=true&watch=1", true), Err(422));
        assert_eq!(check("sendInitialEvents=true&resourceVersionMatch=NotOlderThan", true), Ok(()));
        assert_eq!(check("resourceVersionMatch=NotOlderThan&resourceVersion=1", true), Err(422));
    }

    #[test]
    fn continue_tokens_round_trip() {
        let key = ObjKey { group: String::new(), resource: "pods".into(), namespace: "ns".into(), name: "a".into() };
        let token = encode_continue(42, &key);
        assert_eq!(decode_continue(&token).unwrap(), (42, "ns".to_string(), "a".to_string()));
        assert_eq!(decode_continue("garbage!").unwrap_err().code, 400);
    }

    #[test]
    fn negotiation() {
        let mut headers = HeaderMap::new();
        assert_eq!(negotiate(&headers).unwrap(), Format::Json);
        headers
            .insert(header::ACCEPT, "application/json;as=Table;v=v1;g=meta.k8s.io,application/json".parse().unwrap());
        assert_eq!(negotiate(&headers).unwrap(), Format::Json);
        headers.insert(header::ACCEPT, "application/vnd.kubernetes.protobuf".parse().unwrap());
        assert_eq!(negotiate(&headers).unwrap_err().code, 406);
        headers.insert(header::ACCEPT, "application/yaml".parse().unwrap());
        assert_eq!(negotiate(&headers).unwrap(), Format::Yaml);
    }
}
