//! Names: `/api/1/bind`, `/addr`, `/resolve`, `/delegate` and `/bound-names`.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path as UrlPath, Query, State};
use axum::http::{HeaderMap, header};
use axum::response::Response;
use futures::{Stream, StreamExt, future, stream};
use serde::Deserialize;
use tokio_stream::wrappers::WatchStream;
use waymark_dtab::json::delegate_json_within;
use waymark_dtab::{Addr, BoundLeaf, BoundName, DelegateError, DelegateTree, Dtab, NameTree, Path};

use super::dtabs::quoted;
use super::watch::{TreeState, TreeWatch, stream_response};
use super::{ApiError, HttpApi, document, is_watch};

/// namerd answers a delegation within 2 s; addresses still unknown by then are shown pending.
const DELEGATE_ADDRESS_WAIT: Duration = Duration::from_secs(2);

/// How many distinct bound ids of a delegation get their addresses looked up (and shown); the
/// others are shown without. A dtab a client sends can name thousands of hosts, and looking
/// each one up would turn one request into thousands of DNS queries.
const DELEGATE_MAX_ADDRESSES: usize = 100;

/// The namespace standing for "no namespace": not a valid namespace name, so it never has a
/// stored dtab and binds with the request's dtab alone.
const NO_NAMESPACE: &str = "";

#[derive(Debug, Deserialize)]
pub(crate) struct NameQuery {
    path: Option<String>,
    dtab: Option<String>,
    watch: Option<String>,
    namespace: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct DelegateBody {
    namespace: Option<String>,
    dtab: String,
    path: String,
}

fn parse_path(raw: Option<&str>) -> Result<Path, ApiError> {
    let raw = raw.ok_or_else(|| ApiError::BadRequest("Invalid path: the path parameter is required".into()))?;
    raw.parse::<Path>()
        .map_err(|e| ApiError::BadRequest(format!("Invalid path: {} / {e}\n{}", quoted(raw), e.excerpt())))
}

/// The extra dtab of a request; missing or empty is the empty dtab (Linkerd sends `dtab=`).
fn parse_dtab(raw: Option<&str>) -> Result<Dtab, ApiError> {
    match raw {
        None | Some("") => Ok(Dtab::empty()),
        Some(text) => {
            text.parse::<Dtab>().map_err(|e| ApiError::BadRequest(format!("Invalid dtab: {e}\n{}", e.excerpt())))
        }
    }
}

fn json<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_string(value).unwrap_or_default()
}

/// `GET /api/1/bind/<ns>?path=&dtab=[&watch=]`
pub(crate) async fn bind(
    State(api): State<HttpApi>,
    UrlPath(ns): UrlPath<String>,
    Query(q): Query<NameQuery>,
) -> Result<Response, ApiError> {
    bind_in(&api, &ns, &q).await
}

/// `GET /api/1/bind?path=&dtab=`: binds with the given dtab alone.
pub(crate) async fn bind_without_namespace(
    State(api): State<HttpApi>,
    Query(q): Query<NameQuery>,
) -> Result<Response, ApiError> {
    bind_in(&api, NO_NAMESPACE, &q).await
}

async fn bind_in(api: &HttpApi, ns: &str, q: &NameQuery) -> Result<Response, ApiError> {
    let path = parse_path(q.path.as_deref())?;
    let extra = parse_dtab(q.dtab.as_deref())?;
    let tree = TreeWatch::new(api.interpreter.clone(), api.interpreter.bind(ns, &path, &extra));
    if is_watch(q.watch.as_deref()) {
        let documents = tree_documents(tree, |tree, state| json(&tree.json(state)));
        return Ok(stream_response(api, "bind", Some("application/json"), documents));
    }
    let (tree, bound) = complete_tree(api, tree).await?;
    Ok(document(Some("application/json"), format!("{}\n", json(&tree.json(&bound)))))
}

/// Waits, up to the request timeout, for a binding whose leaves all have known addresses.
async fn complete_tree(api: &HttpApi, mut tree: TreeWatch) -> Result<(TreeWatch, Arc<NameTree<BoundLeaf>>), ApiError> {
    let wait = async {
        loop {
            match tree.current() {
                TreeState::Bound { tree: bound, complete: true } => return Ok(bound),
                TreeState::Failed(e) => return Err(ApiError::Internal(e)),
                TreeState::Pending | TreeState::Bound { .. } => {}
            }
            if !tree.changed().await {
                return Err(ApiError::Unavailable("the namer is shutting down".into()));
            }
        }
    };
    match tokio::time::timeout(api.request_timeout, wait).await {
        Ok(Ok(bound)) => Ok((tree, bound)),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(ApiError::Unavailable("Request timed out.".into())),
    }
}

/// One document per complete state of a bound tree; a failure is written as its message and
/// ends the stream, as namerd does.
fn tree_documents<F>(tree: TreeWatch, render: F) -> impl Stream<Item = String> + Send + 'static
where
    F: Fn(&TreeWatch, &NameTree<BoundLeaf>) -> String + Send + Sync + 'static,
{
    let render = Arc::new(render);
    // The state carries whether a document was just sent: the next one waits for a change.
    stream::unfold(Some((tree, false)), move |state| {
        let render = render.clone();
        async move {
            let (mut tree, sent) = state?;
            if sent && !tree.changed().await {
                return None;
            }
            loop {
                match tree.current() {
                    TreeState::Bound { tree: bound, complete: true } => {
                        let doc = render(&tree, &bound);
                        return Some((doc, Some((tree, true))));
                    }
                    TreeState::Failed(e) => return Some((e, None)),
                    TreeState::Pending | TreeState::Bound { .. } => {}
                }
                if !tree.changed().await {
                    return None;
                }
            }
        }
    })
}

/// Picks one bound id from a tree as namerd's `resolve` does: a union branch at random by
/// weight, an alternative's first branch that yields one; nothing for `~`, `!` and `$`.
fn pick(tree: &NameTree<BoundLeaf>) -> Option<&BoundName> {
    match tree {
        NameTree::Leaf(leaf) => Some(&leaf.name),
        NameTree::Alt(trees) => trees.iter().find_map(pick),
        NameTree::Union(branches) => {
            let total: f64 = branches.iter().map(|w| w.weight.get()).sum();
            if total <= 0.0 {
                return branches.iter().find_map(|w| pick(&w.tree));
            }
            let mut point = waymark_random::unit() * total;
            for branch in branches {
                point -= branch.weight.get();
                if point < 0.0 {
                    return pick(&branch.tree);
                }
            }
            branches.last().and_then(|w| pick(&w.tree))
        }
        NameTree::Neg | NameTree::Fail | NameTree::Empty => None,
    }
}

fn resolved(tree: &TreeWatch, bound: &NameTree<BoundLeaf>) -> Addr {
    pick(bound).and_then(|name| tree.addr(name.id())).unwrap_or(Addr::Neg)
}

/// `GET /api/1/resolve/<ns>?path=&dtab=[&watch=]`: binds, picks one id, answers its addresses.
pub(crate) async fn resolve(
    State(api): State<HttpApi>,
    UrlPath(ns): UrlPath<String>,
    Query(q): Query<NameQuery>,
) -> Result<Response, ApiError> {
    let path = parse_path(q.path.as_deref())?;
    let extra = parse_dtab(q.dtab.as_deref())?;
    let tree = TreeWatch::new(api.interpreter.clone(), api.interpreter.bind(&ns, &path, &extra));
    if is_watch(q.watch.as_deref()) {
        let documents = tree_documents(tree, |tree, bound| json(&resolved(tree, bound)));
        return Ok(stream_response(&api, "resolve", Some("application/json"), documents));
    }
    let (tree, bound) = complete_tree(&api, tree).await?;
    Ok(document(Some("application/json"), format!("{}\n", json(&resolved(&tree, &bound)))))
}

/// `GET /api/1/addr/<ns>?path=<id>[&watch=]`: the addresses of a concrete bound id.
pub(crate) async fn addr(
    State(api): State<HttpApi>,
    UrlPath(_ns): UrlPath<String>,
    Query(q): Query<NameQuery>,
) -> Result<Response, ApiError> {
    let id = parse_path(q.path.as_deref())?;
    let mut rx = api.interpreter.resolve(&id);
    if is_watch(q.watch.as_deref()) {
        let documents = WatchStream::new(rx).filter(|a| future::ready(!a.is_pending())).map(|a| json(&a));
        return Ok(stream_response(&api, "addr", Some("application/json"), documents));
    }
    let addr = match tokio::time::timeout(api.request_timeout, rx.wait_for(|a| !a.is_pending())).await {
        Ok(Ok(addr)) => addr.clone(),
        Ok(Err(_)) => return Err(ApiError::Unavailable("the namer is shutting down".into())),
        Err(_) => return Err(ApiError::Unavailable("Request timed out.".into())),
    };
    Ok(document(Some("application/json"), format!("{}\n", json(&addr))))
}

/// The delegation tree as namerd's JSON, with the addresses of its first
/// [`DELEGATE_MAX_ADDRESSES`] bound ids as known within [`DELEGATE_ADDRESS_WAIT`] (and the
/// request's time). Rendered on a blocking thread, within four times the delegation limit;
/// when address sets would take it past that, the tree is shown without them.
async fn delegate_json(api: &HttpApi, tree: DelegateTree, deadline: tokio::time::Instant) -> Result<String, ApiError> {
    let mut ids: Vec<Path> = Vec::new();
    for name in tree.bound_names() {
        if ids.len() == DELEGATE_MAX_ADDRESSES {
            break;
        }
        if !ids.contains(name.id()) {
            ids.push(name.id().clone());
        }
    }
    let mut watches: Vec<_> = ids.into_iter().map(|id| (id.clone(), api.interpreter.resolve(&id))).collect();
    let wait = future::join_all(watches.iter_mut().map(|(_, rx)| async move {
        // Only the waiting matters; the guard it returns must not live across an await.
        let _known = rx.wait_for(|a| !a.is_pending()).await.is_ok();
    }));
    let wait_until = deadline.min(tokio::time::Instant::now() + DELEGATE_ADDRESS_WAIT);
    let _ = tokio::time::timeout_at(wait_until, wait).await;
    let addrs: std::collections::HashMap<Path, Addr> =
        watches.iter().map(|(id, rx)| (id.clone(), rx.borrow().clone())).collect();
    let limit = api.max_delegation_bytes.saturating_mul(4);
    let render = tokio::task::spawn_blocking(move || {
        delegate_json_within(&tree, &|name| addrs.get(name.id()), limit)
            .or_else(|_| delegate_json_within(&tree, &|_| None, limit))
    });
    match tokio::time::timeout_at(deadline, render).await {
        Ok(Ok(Ok(json))) => Ok(json),
        Ok(Ok(Err(e))) => Err(ApiError::BadRequest(format!("cannot show the delegation: {e}"))),
        Ok(Err(e)) => Err(ApiError::Internal(format!("rendering the delegation failed: {e}"))),
        Err(_) => Err(ApiError::Unavailable("Request timed out.".into())),
    }
}

async fn delegate_in(api: &HttpApi, ns: &str, path: &Path, extra: &Dtab) -> Result<Response, ApiError> {
    let deadline = tokio::time::Instant::now() + api.request_timeout;
    let tree = api.interpreter.delegate(ns, path, extra, api.request_timeout).await.map_err(|e| match e {
        DelegateError::Cancelled => ApiError::Unavailable("Request timed out.".into()),
        e => ApiError::BadRequest(format!("cannot delegate {}: {e}", quoted(&path.to_string()))),
    })?;
    Ok(document(Some("application/json"), delegate_json(api, tree, deadline).await?))
}

/// `GET /api/1/delegate/<ns>?path=&dtab=`: stored dtab followed by `dtab`.
pub(crate) async fn delegate(
    State(api): State<HttpApi>,
    UrlPath(ns): UrlPath<String>,
    Query(q): Query<NameQuery>,
) -> Result<Response, ApiError> {
    let path = parse_path(q.path.as_deref())?;
    let extra = parse_dtab(q.dtab.as_deref())?;
    delegate_in(&api, &ns, &path, &extra).await
}

/// `GET /api/1/delegate?path=&dtab=[&namespace=]`: with a namespace, its stored dtab
/// followed by `dtab`; without one, `dtab` alone.
pub(crate) async fn delegate_query(
    State(api): State<HttpApi>,
    Query(q): Query<NameQuery>,
) -> Result<Response, ApiError> {
    let path = parse_path(q.path.as_deref())?;
    let extra = parse_dtab(q.dtab.as_deref())?;
    delegate_in(&api, q.namespace.as_deref().unwrap_or(NO_NAMESPACE), &path, &extra).await
}

/// `POST /api/1/delegate` with `{"namespace": .., "dtab": .., "path": ..}`.
pub(crate) async fn delegate_post(
    State(api): State<HttpApi>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let content_type = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    if content_type.split(';').next().map(str::trim) != Some("application/json") {
        return Err(ApiError::UnsupportedMediaType(format!("expected application/json, not {content_type:?}")));
    }
    let request: DelegateBody = serde_json::from_slice(&body).map_err(|_| {
        ApiError::BadRequest(format!("Malformed delegation request: {}", quoted(&String::from_utf8_lossy(&body))))
    })?;
    let path = parse_path(Some(&request.path))?;
    let dtab = parse_dtab(Some(&request.dtab))?;
    delegate_in(&api, request.namespace.as_deref().unwrap_or(NO_NAMESPACE), &path, &dtab).await
}

/// `GET /namer_state/<prefix>.json` (admin port): what the namer mounted at `/#/<prefix>`
/// holds, for namers that show it (`/namer_state/io.l5d.k8s.json`), as Linkerd 1 does.
pub(crate) async fn namer_state(
    State(api): State<HttpApi>,
    UrlPath(namer): UrlPath<String>,
) -> Result<Response, ApiError> {
    let prefix = namer.strip_suffix(".json").ok_or(ApiError::NotFound)?;
    let mount: Path = format!("/#/{prefix}").parse().map_err(|_| ApiError::NotFound)?;
    let state = api.interpreter.namer_state(&mount).ok_or(ApiError::NotFound)?;
    Ok(document(Some("application/json"), json(&state)))
}

/// `GET /api/1/bound-names[?watch=]`: the concrete names the enumerating namers know.
pub(crate) async fn bound_names(State(api): State<HttpApi>, Query(q): Query<NameQuery>) -> Result<Response, ApiError> {
    let render = |names: Vec<Path>| json(&names.iter().map(ToString::to_string).collect::<Vec<_>>());
    if is_watch(q.watch.as_deref()) {
        let interpreter = api.interpreter.clone();
        let changes = interpreter.watch_bound_names();
        let documents =
            stream::unfold((interpreter, changes, true), move |(interpreter, mut changes, first)| async move {
                if !first {
                    changes.changed().await;
                }
                let doc = render(interpreter.bound_names());
                Some((doc, (interpreter, changes, false)))
            });
        return Ok(stream_response(&api, "bound-names", Some("application/json"), documents));
    }
    Ok(document(Some("application/json"), format!("{}\n", render(api.interpreter.bound_names()))))
}

/// `GET /api/1/bound-names/<ns>`: the logical names currently bound in a namespace.
pub(crate) async fn active_names(State(api): State<HttpApi>, UrlPath(ns): UrlPath<String>) -> Response {
    let paths: Vec<String> = api.interpreter.active_paths(&ns).iter().map(ToString::to_string).collect();
    document(Some("application/json"), format!("{}\n", json(&paths)))
}
