//! `/api/1/dtabs`: list, read (JSON or text, with ETag), create, update (with `If-Match`),
//! delete, watch and history.

use std::time::SystemTime;

use axum::body::Bytes;
use axum::extract::{Path as UrlPath, Query, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use tokio_stream::wrappers::WatchStream;
use waymark_dtab::Dtab;
use waymark_dtab::json::{DentryJson, dtab_from_json};
use waymark_store::{ChangeMeta, HistoryPage, Namespace, StoreError, Version};

use super::watch::stream_response;
use super::{ApiError, HttpApi, document, is_watch, refuse_browser_write};

/// The author of a change, for history.
pub const AUTHOR_HEADER: &str = "waymark-author";
/// The reason for a change, for history.
pub const MESSAGE_HEADER: &str = "waymark-message";

#[derive(Debug, Deserialize)]
pub(crate) struct WatchQuery {
    watch: Option<String>,
    /// History: entries to skip, newest first.
    offset: Option<usize>,
    /// History: the most entries to return.
    limit: Option<usize>,
}

/// A history page holds at most this many entries (a `limit` asks for fewer)...
pub(crate) const HISTORY_PAGE_ENTRIES: usize = 100;
/// ...and, after its first entry, at most this much dtab text: a long history of large
/// dtabs is read a page at a time, as the `Link: <...>; rel="next"` header offers.
pub(crate) const HISTORY_PAGE_BYTES: usize = 2 * 1024 * 1024;

/// The two ways a dtab travels over this API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Codec {
    /// `[{"prefix":..,"dst":..}]`
    Json,
    /// The canonical text, labelled with the media type the client asked for.
    Text(&'static str),
}

/// One entry of `/api/1/dtabs/<ns>/history`, newest first.
#[derive(Debug, Serialize)]
struct HistoryJson {
    /// The version this change produced, as an ETag.
    version: String,
    /// The dtab after the change; `null` when the change deleted the namespace.
    dtab: Option<Vec<DentryJson>>,
    /// When, in RFC 3339.
    at: String,
    author: Option<String>,
    message: Option<String>,
}

pub(crate) fn etag(version: &Version) -> String {
    BASE64.encode(version.as_bytes())
}

/// What an `If-Match` header asks of the namespace's current version.
#[derive(Debug, Clone, PartialEq, Eq)]
enum IfMatch {
    /// `*`: the namespace must exist.
    Exists,
    /// One of these versions must be current.
    AnyOf(Vec<Version>),
}

/// Reads `If-Match`: absent is `None` (an unconditional write); `*`; or a list of ETags, each
/// decoded leniently as namerd does (quotes and a weak marker are ignored). A value that is
/// empty or not base64 cannot match any version, so it fails the request with 412 at once,
/// rather than being mistaken for no condition at all.
fn if_match(headers: &HeaderMap) -> Result<Option<IfMatch>, ApiError> {
    let values: Vec<_> = headers.get_all(header::IF_MATCH).iter().collect();
    if values.is_empty() {
        return Ok(None);
    }
    let mut versions = Vec::new();
    for value in values {
        let text = value
            .to_str()
            .map_err(|_| ApiError::PreconditionFailed("If-Match is not ASCII text; send the ETag of a read".into()))?;
        for tag in text.split(',').map(str::trim) {
            if tag == "*" {
                return Ok(Some(IfMatch::Exists));
            }
            let bare = tag.strip_prefix("W/").unwrap_or(tag).trim_matches('"');
            let decoded = BASE64
                .decode(bare)
                .or_else(|_| base64::engine::general_purpose::STANDARD_NO_PAD.decode(bare.trim_end_matches('=')));
            match decoded {
                Ok(bytes) if !bytes.is_empty() => versions.push(Version::from_bytes(bytes)),
                _ if tag.is_empty() => {}
                _ => {
                    return Err(ApiError::PreconditionFailed(format!(
                        "If-Match \"{}\" is not a version this namer hands out; send the ETag of a read",
                        quoted(tag)
                    )));
                }
            }
        }
    }
    if versions.is_empty() {
        return Err(ApiError::PreconditionFailed(
            "If-Match is empty; send the ETag of a read, or leave the header out for an unconditional write".into(),
        ));
    }
    Ok(Some(IfMatch::AnyOf(versions)))
}

/// Client text as an error message shows it: control characters (a NUL, an escape, a line
/// break) escaped as Rust writes them, and at most 1,024 characters, so that nothing a client
/// sends reaches a response body raw. Other text is shown as it is, as namerd shows it.
pub(crate) fn quoted(text: &str) -> String {
    const SHOWN: usize = 1024;
    let mut out = String::with_capacity(text.len().min(SHOWN));
    for (i, c) in text.chars().enumerate() {
        if i == SHOWN {
            out.push_str("...");
            break;
        }
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

/// The 412 for a namespace that is not at any version the client gave.
fn stale(ns: &Namespace, condition: &IfMatch) -> ApiError {
    let given = match condition {
        IfMatch::Exists => return ApiError::PreconditionFailed(format!("namespace {ns} does not exist (If-Match: *)")),
        IfMatch::AnyOf(versions) => versions.iter().map(etag).collect::<Vec<_>>().join(", "),
    };
    ApiError::PreconditionFailed(format!(
        "namespace {ns} is no longer at version {given}: it changed since that version was read; \
         read it again, and write against the new version"
    ))
}

/// The version to compare-and-swap against for `condition`: the current one when it
/// satisfies the condition. `*` and lists read the current version first; the store's own
/// compare-and-swap then catches a write that lands in between.
async fn expected_version(api: &HttpApi, ns: &Namespace, condition: &IfMatch) -> Result<Version, ApiError> {
    if let IfMatch::AnyOf(versions) = condition
        && let [only] = versions.as_slice()
    {
        return Ok(only.clone());
    }
    let current = match api.store.get(ns).await {
        Ok(current) => current.version,
        Err(StoreError::NotFound(_)) if *condition == IfMatch::Exists => return Err(stale(ns, condition)),
        // A namespace whose stored text does not parse still has a version.
        Err(StoreError::NotFound(_)) => return Err(ApiError::NotFound),
        Err(e) => return Err(e.into()),
    };
    match condition {
        IfMatch::Exists => Ok(current),
        IfMatch::AnyOf(versions) if versions.contains(&current) => Ok(current),
        IfMatch::AnyOf(_) => Err(stale(ns, condition)),
    }
}

fn media_type(value: &str) -> String {
    value.split(';').next().unwrap_or("").trim().to_ascii_lowercase()
}

fn codec_of(media_type: &str) -> Option<Codec> {
    match media_type {
        "application/json" => Some(Codec::Json),
        "application/dtab" => Some(Codec::Text("application/dtab")),
        "text/plain" => Some(Codec::Text("text/plain")),
        _ => None,
    }
}

/// The codec for a response: the first media type of `Accept` (by quality) that is
/// understood, else JSON.
fn negotiate(headers: &HeaderMap) -> Codec {
    let accept = headers.get_all(header::ACCEPT).iter().filter_map(|v| v.to_str().ok()).collect::<Vec<_>>().join(",");
    let mut ranges: Vec<(f32, String)> = accept
        .split(',')
        .filter(|r| !r.trim().is_empty())
        .map(|range| {
            let quality = range
                .split(';')
                .skip(1)
                .filter_map(|p| p.trim().strip_prefix("q="))
                .find_map(|q| q.trim().parse::<f32>().ok())
                .unwrap_or(1.0);
            (quality, media_type(range))
        })
        .collect();
    ranges.sort_by(|a, b| b.0.total_cmp(&a.0));
    ranges.iter().find_map(|(_, m)| codec_of(m)).unwrap_or(Codec::Json)
}

fn render(codec: Codec, dtab: &Dtab) -> String {
    match codec {
        Codec::Json => serde_json::to_string(&Vec::<DentryJson>::from(dtab)).unwrap_or_default(),
        Codec::Text(_) => dtab.to_string(),
    }
}

fn content_type(codec: Codec) -> &'static str {
    match codec {
        Codec::Json => "application/json",
        Codec::Text(ct) => ct,
    }
}

/// Parses a request body by its `Content-Type`.
fn parse_body(headers: &HeaderMap, body: &Bytes) -> Result<Dtab, ApiError> {
    let raw_type = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    let codec = codec_of(&media_type(raw_type))
        .ok_or_else(|| ApiError::BadRequest(format!("Invalid Content-Type \"{raw_type}\". ")))?;
    match codec {
        Codec::Json => {
            let dentries: Vec<Option<DentryJson>> =
                serde_json::from_slice(body).map_err(|e| ApiError::BadRequest(format!("Invalid JSON dtab: {e}")))?;
            let dentries: Vec<DentryJson> = dentries.into_iter().collect::<Option<_>>().ok_or_else(|| {
                ApiError::BadRequest(format!(
                    "The dtab contains invalid dentries: {}",
                    quoted(&String::from_utf8_lossy(body))
                ))
            })?;
            dtab_from_json(&dentries).map_err(|e| ApiError::BadRequest(format!("Invalid dtab: {e}")))
        }
        Codec::Text(_) => {
            let text =
                std::str::from_utf8(body).map_err(|_| ApiError::BadRequest("the dtab is not UTF-8 text".into()))?;
            text.parse::<Dtab>().map_err(|e| ApiError::BadRequest(format!("Invalid dtab: {e}\n{}", e.excerpt())))
        }
    }
}

fn change_meta(headers: &HeaderMap) -> ChangeMeta {
    let text = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(|v| percent_encoding::percent_decode_str(v).decode_utf8_lossy().into_owned())
    };
    ChangeMeta { author: text(AUTHOR_HEADER), message: text(MESSAGE_HEADER) }
}

fn no_content_with_etag(version: &Version) -> Response {
    let mut response = StatusCode::NO_CONTENT.into_response();
    if let Ok(value) = HeaderValue::from_str(&etag(version)) {
        response.headers_mut().insert(header::ETAG, value);
    }
    response
}

fn rfc3339(at: SystemTime) -> String {
    humantime::format_rfc3339_millis(at).to_string()
}

/// `GET /api/1/dtabs`: the namespace names, sorted; streamed with `watch`.
pub(crate) async fn list(State(api): State<HttpApi>, Query(q): Query<WatchQuery>) -> Result<Response, ApiError> {
    if is_watch(q.watch.as_deref()) {
        let documents = WatchStream::new(api.store.watch_list()).map(|names| {
            serde_json::to_string(&names.iter().map(Namespace::as_str).collect::<Vec<_>>()).unwrap_or_default()
        });
        return Ok(stream_response(&api, "dtabs", Some("application/json"), documents));
    }
    let names = api.store.list().await?;
    let names: Vec<&str> = names.iter().map(Namespace::as_str).collect();
    Ok(document(Some("application/json"), format!("{}\n", serde_json::to_string(&names).unwrap_or_default())))
}

/// Everything under `/api/1/dtabs/`: one namespace, or its history.
pub(crate) async fn resource(
    State(api): State<HttpApi>,
    method: Method,
    uri: Uri,
    UrlPath(rest): UrlPath<String>,
    Query(q): Query<WatchQuery>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    if matches!(method, Method::POST | Method::PUT | Method::DELETE) {
        let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
        refuse_browser_write(&headers, host.or(uri.authority().map(|a| a.as_str())))?;
    }
    if let Some(ns) = rest.strip_suffix("/history") {
        let ns = namespace(ns)?;
        let page = HistoryPage {
            offset: q.offset.unwrap_or(0),
            limit: q.limit.unwrap_or(HISTORY_PAGE_ENTRIES).clamp(1, HISTORY_PAGE_ENTRIES),
            max_bytes: HISTORY_PAGE_BYTES,
        };
        return match method {
            Method::GET | Method::HEAD => history(&api, &ns, &page).await,
            _ => Err(method_not_allowed("GET, HEAD")),
        };
    }
    let ns = namespace(&rest)?;
    match method {
        Method::GET if is_watch(q.watch.as_deref()) => Ok(watch_dtab(&api, &ns, negotiate(&headers))),
        Method::GET => get(&api, &ns, negotiate(&headers), false).await,
        Method::HEAD => get(&api, &ns, Codec::Json, true).await,
        Method::POST => {
            let dtab = parse_body(&headers, &body)?;
            let version = api.store.create(&ns, &dtab, &change_meta(&headers)).await?;
            Ok(no_content_with_etag(&version))
        }
        Method::PUT => {
            let condition = if_match(&headers)?;
            let dtab = parse_body(&headers, &body)?;
            let meta = change_meta(&headers);
            let version = match &condition {
                Some(condition) => {
                    let expected = expected_version(&api, &ns, condition).await?;
                    api.store.update(&ns, &dtab, &expected, &meta).await.map_err(|e| conditional(&ns, condition, e))?
                }
                // Without If-Match, PUT is an upsert, as in every namerd store.
                None => api.store.put(&ns, &dtab, &meta).await?,
            };
            Ok(no_content_with_etag(&version))
        }
        Method::DELETE => {
            let meta = change_meta(&headers);
            match if_match(&headers)? {
                Some(condition) => {
                    let expected = expected_version(&api, &ns, &condition).await?;
                    api.store.delete_at(&ns, &expected, &meta).await.map_err(|e| conditional(&ns, &condition, e))?;
                }
                None => api.store.delete(&ns, &meta).await?,
            }
            Ok(StatusCode::NO_CONTENT.into_response())
        }
        _ => Err(method_not_allowed("GET, HEAD, POST, PUT, DELETE")),
    }
}

/// The response for a failed conditional write: a conflict names the versions given.
fn conditional(ns: &Namespace, condition: &IfMatch, e: StoreError) -> ApiError {
    match e {
        StoreError::Conflict => stale(ns, condition),
        other => other.into(),
    }
}

fn method_not_allowed(allow: &'static str) -> ApiError {
    ApiError::MethodNotAllowed(allow)
}

fn namespace(text: &str) -> Result<Namespace, ApiError> {
    text.parse::<Namespace>().map_err(|e| ApiError::BadRequest(e.to_string()))
}

async fn get(api: &HttpApi, ns: &Namespace, codec: Codec, head: bool) -> Result<Response, ApiError> {
    let current = api.store.get(ns).await.map_err(|e| match e {
        // On a read, invalid means broken backing data (a hand-edited file), not a bad request.
        StoreError::Invalid(why) => ApiError::Internal(format!("the stored dtab of {ns} is invalid: {why}")),
        other => other.into(),
    })?;
    let mut response = if head {
        StatusCode::OK.into_response()
    } else {
        document(Some(content_type(codec)), format!("{}\n", render(codec, &current.dtab)))
    };
    if let Ok(value) = HeaderValue::from_str(&etag(&current.version)) {
        response.headers_mut().insert(header::ETAG, value);
    }
    Ok(response)
}

/// Streams the dtab: nothing while the namespace does not exist, then every change.
fn watch_dtab(api: &HttpApi, ns: &Namespace, codec: Codec) -> Response {
    let documents = WatchStream::new(api.store.watch(ns))
        .filter_map(move |current| futures::future::ready(current.map(|v| render(codec, &v.dtab))));
    stream_response(api, "dtab", Some(content_type(codec)), documents)
}

/// One page of the namespace's history, with a `Link` to the next when there is more. At most
/// a few pages are read at once: each holds its dtabs parsed while it is written out.
async fn history(api: &HttpApi, ns: &Namespace, page: &HistoryPage) -> Result<Response, ApiError> {
    let _slot = tokio::time::timeout(api.request_timeout, api.history_slots.acquire())
        .await
        .map_err(|_| ApiError::Unavailable("Request timed out.".into()))?;
    let slice = api.store.history_page(ns, page).await?;
    let mut json = String::from("[");
    for (i, e) in slice.entries.iter().enumerate() {
        if i > 0 {
            json.push(',');
        }
        let entry = HistoryJson {
            version: etag(&e.version),
            dtab: e.dtab.as_ref().map(Vec::<DentryJson>::from),
            at: rfc3339(e.at),
            author: e.author.clone(),
            message: e.message.clone(),
        };
        json.push_str(&serde_json::to_string(&entry).unwrap_or_default());
    }
    json.push_str("]\n");
    let mut response = document(Some("application/json"), json);
    if slice.more {
        let next = format!(
            "</api/1/dtabs/{ns}/history?offset={}&limit={}>; rel=\"next\"",
            page.offset + slice.entries.len(),
            page.limit
        );
        if let Ok(value) = HeaderValue::from_str(&next) {
            response.headers_mut().insert(header::LINK, value);
        }
    }
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn accept_picks_the_best_understood_type() {
        assert_eq!(negotiate(&headers(&[])), Codec::Json);
        assert_eq!(negotiate(&headers(&[("accept", "application/dtab")])), Codec::Text("application/dtab"));
        assert_eq!(
            negotiate(&headers(&[("accept", "application/json;q=0.5, text/plain;charset=UTF-8;q=0.9")])),
            Codec::Text("text/plain")
        );
        assert_eq!(negotiate(&headers(&[("accept", "*/*, image/png")])), Codec::Json);
        assert_eq!(negotiate(&headers(&[("accept", "TEXT/PLAIN")])), Codec::Text("text/plain"));
    }

    #[test]
    fn if_match_is_lenient_about_quotes() {
        let v = Version::from_bytes(vec![0, 0, 0, 0, 0, 0, 0, 1]);
        for value in ["AAAAAAAAAAE=", "\"AAAAAAAAAAE=\"", "W/\"AAAAAAAAAAE=\"", "AAAAAAAAAAE"] {
            let h = headers(&[("if-match", value)]);
            assert_eq!(if_match(&h).unwrap(), Some(IfMatch::AnyOf(vec![v.clone()])), "{value}");
        }
    }

    #[test]
    fn if_match_reads_star_and_lists_and_refuses_empty_or_garbage() {
        let (one, two) = (Version::from_bytes(1u64.to_be_bytes()), Version::from_bytes(2u64.to_be_bytes()));
        assert_eq!(if_match(&headers(&[])).unwrap(), None);
        assert_eq!(if_match(&headers(&[("if-match", "*")])).unwrap(), Some(IfMatch::Exists));
        assert_eq!(
            if_match(&headers(&[("if-match", "\"AAAAAAAAAAE=\", AAAAAAAAAAI=")])).unwrap(),
            Some(IfMatch::AnyOf(vec![one, two]))
        );
        for garbage in ["", " ", "%%%", ",", "\"\""] {
            match if_match(&headers(&[("if-match", garbage)])) {
                Err(ApiError::PreconditionFailed(why)) => assert!(!why.is_empty()),
                other => panic!("{garbage:?}: {other:?}"),
            }
        }
    }

    #[test]
    fn quoted_client_text_escapes_control_characters_and_is_cut_short() {
        assert_eq!(quoted("a\0b\n\u{1b}[2J é"), "a\\u{0}b\\n\\u{1b}[2J é");
        assert_eq!(quoted(&"x".repeat(5000)).len(), 1027);
    }
}
