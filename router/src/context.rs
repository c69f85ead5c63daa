//! The dtab context of a request: the per-request override carried in `l5d-ctx-dtab` (set by
//! an earlier router) and `l5d-dtab` (set by a person or a client), and the other `l5d-*`
//! headers a router reads, writes or strips.

use http::{HeaderMap, HeaderName, HeaderValue};
use waymark_dtab::{Dtab, ParseError};

/// Dtab override written by routers and forwarded hop to hop.
pub(crate) const L5D_CTX_DTAB: HeaderName = HeaderName::from_static("l5d-ctx-dtab");
/// Dtab override set by a client for one request (and, through `l5d-ctx-dtab`, every later hop).
pub(crate) const L5D_DTAB: HeaderName = HeaderName::from_static("l5d-dtab");
/// The logical name a router routed the request by.
pub(crate) const L5D_DST_SERVICE: HeaderName = HeaderName::from_static("l5d-dst-service");
/// The concrete (bound) name a router sent the request to.
pub(crate) const L5D_DST_CLIENT: HeaderName = HeaderName::from_static("l5d-dst-client");
/// The residual path of the bound name, when it has one.
pub(crate) const L5D_DST_RESIDUAL: HeaderName = HeaderName::from_static("l5d-dst-residual");
/// A request id for correlating logs across hops.
pub(crate) const L5D_REQID: HeaderName = HeaderName::from_static("l5d-reqid");
/// Present on responses the router made itself: what went wrong, URL-form-encoded.
pub(crate) const L5D_ERR: HeaderName = HeaderName::from_static("l5d-err");
/// `true` on a router-made error response when the failed request is safe to retry.
pub(crate) const L5D_RETRYABLE: HeaderName = HeaderName::from_static("l5d-retryable");
/// On responses: how the router classified it, `1.0` for a success and `0.0` for a failure,
/// so that routers earlier on the path count it as the one nearest the service did.
pub(crate) const L5D_SUCCESS_CLASS: HeaderName = HeaderName::from_static("l5d-success-class");

/// Why a request's dtab override was refused.
#[derive(Debug, thiserror::Error)]
pub(crate) enum OverrideError {
    /// The override headers together exceed the configured size.
    #[error("the dtab override headers are {size} bytes long; the limit is {limit}")]
    TooLarge { size: usize, limit: usize },
    /// A header is not text.
    #[error("the {header} header is not valid text")]
    NotText { header: &'static str },
    /// A header does not parse as a dtab.
    #[error("the {header} header is not a valid dtab: {error}")]
    Invalid {
        header: &'static str,
        text: String,
        #[source]
        error: ParseError,
    },
}

impl OverrideError {
    /// The offending text with a caret under the error, when there is one.
    pub(crate) fn excerpt(&self) -> Option<String> {
        match self {
            OverrideError::Invalid { error, .. } => Some(error.excerpt()),
            _ => None,
        }
    }
}

/// Removes every `l5d-*` header: what an untrusted listener does to requests it accepts and
/// responses it sends (Linkerd's `clearContext`).
pub(crate) fn strip_l5d(headers: &mut HeaderMap) {
    // Collecting first: a HeaderMap cannot be filtered in place.
    let doomed: Vec<HeaderName> = headers.keys().filter(|name| name.as_str().starts_with("l5d-")).cloned().collect();
    for name in doomed {
        headers.remove(name);
    }
}

/// True when any `l5d-*` header is present (cheaper than collecting names on the hot path).
pub(crate) fn has_l5d(headers: &HeaderMap) -> bool {
    headers.keys().any(|name| name.as_str().starts_with("l5d-"))
}

/// Reads, removes and combines the override headers: `l5d-ctx-dtab` first, then `l5d-dtab`,
/// so that the client's own entries win. Several instances of a header are concatenated in
/// order. Returns the empty dtab when neither header is present.
pub(crate) fn take_override(headers: &mut HeaderMap, limit: usize) -> Result<Dtab, OverrideError> {
    let size: usize = headers.get_all(&L5D_CTX_DTAB).iter().chain(headers.get_all(&L5D_DTAB)).map(|v| v.len()).sum();
    if size == 0 {
        headers.remove(&L5D_CTX_DTAB);
        headers.remove(&L5D_DTAB);
        return Ok(Dtab::empty());
    }
    if size > limit {
        return Err(OverrideError::TooLarge { size, limit });
    }
    let ctx = parse_all(headers, &L5D_CTX_DTAB, "l5d-ctx-dtab")?;
    let user = parse_all(headers, &L5D_DTAB, "l5d-dtab")?;
    headers.remove(&L5D_CTX_DTAB);
    headers.remove(&L5D_DTAB);
    Ok(ctx.concat(&user))
}

fn parse_all(headers: &HeaderMap, name: &HeaderName, header: &'static str) -> Result<Dtab, OverrideError> {
    let mut dtab = Dtab::empty();
    for value in headers.get_all(name) {
        let text = value.to_str().map_err(|_| OverrideError::NotText { header })?;
        let parsed: Dtab =
            text.parse().map_err(|error| OverrideError::Invalid { header, text: text.to_string(), error })?;
        dtab = dtab.concat(&parsed);
    }
    Ok(dtab)
}

/// The `l5d-ctx-dtab` value that carries `local` to the next hop, or `None` when it is empty.
pub(crate) fn ctx_dtab_value(local: &Dtab) -> Option<HeaderValue> {
    if local.is_empty() {
        return None;
    }
    HeaderValue::from_str(&local.to_string()).ok()
}

/// `message` URL-form-encoded as Linkerd writes `l5d-err`: spaces as `+`, bytes outside the
/// unreserved set as `%XX`, truncated to `max_bytes` of input.
pub(crate) fn form_encode(message: &str, max_bytes: usize) -> String {
    let mut out = String::with_capacity(message.len().min(max_bytes) + 16);
    for &b in message.as_bytes().iter().take(max_bytes) {
        match b {
            b' ' => out.push('+'),
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'.' | b'-' | b'*' | b'_' => out.push(b as char),
            _ => {
                const HEX: &[u8; 16] = b"0123456789ABCDEF";
                out.push('%');
                out.push(HEX[(b >> 4) as usize] as char);
                out.push(HEX[(b & 15) as usize] as char);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overrides_combine_ctx_first_and_are_removed() {
        let mut h = HeaderMap::new();
        h.append(L5D_DTAB, "/svc/web => /srv/canary".parse().unwrap());
        h.append(L5D_CTX_DTAB, "/srv => /$/inet/127.0.0.1".parse().unwrap());
        h.append(L5D_CTX_DTAB, "/a=>/b".parse().unwrap());
        let dtab = take_override(&mut h, 8192).unwrap();
        assert_eq!(dtab.to_string(), "/srv=>/$/inet/127.0.0.1;/a=>/b;/svc/web=>/srv/canary");
        assert!(h.is_empty());
    }

    #[test]
    fn bad_and_oversized_overrides_are_refused() {
        let mut h = HeaderMap::new();
        h.insert(L5D_DTAB, "/svc -> /x".parse().unwrap());
        let err = take_override(&mut h, 8192).unwrap_err();
        assert!(err.to_string().starts_with("the l5d-dtab header is not a valid dtab: line 1, column 6"), "{err}");
        assert!(err.excerpt().unwrap().contains('^'));
        let mut h = HeaderMap::new();
        h.insert(L5D_DTAB, HeaderValue::from_str(&"/a=>/b;".repeat(100)).unwrap());
        assert!(matches!(take_override(&mut h, 64), Err(OverrideError::TooLarge { size: 700, limit: 64 })));
    }

    #[test]
    fn strip_removes_only_l5d_headers_and_errors_encode_like_linkerd() {
        let mut h = HeaderMap::new();
        h.insert("l5d-dtab", "/a=>/b".parse().unwrap());
        h.insert("l5d-anything", "x".parse().unwrap());
        h.insert("x-keep", "y".parse().unwrap());
        assert!(has_l5d(&h));
        strip_l5d(&mut h);
        assert_eq!(h.len(), 1);
        assert!(!has_l5d(&h));
        assert_eq!(form_encode("no endpoints for /svc/web: 1/2", 1000), "no+endpoints+for+%2Fsvc%2Fweb%3A+1%2F2");
        assert_eq!(form_encode("abcdef", 3), "abc");
    }
}
