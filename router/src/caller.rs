//! What a request carries from the hops before it, besides its dtab override: the caller's
//! deadline (`l5d-ctx-deadline`), the trace it belongs to (`l5d-ctx-trace` and `l5d-sample`,
//! with the trace id also sent as `l5d-reqid`), and the proxies it has passed (`Via`).
//!
//! The formats are Finagle's, so that a request can cross Waymark and Linkerd 1 routers in
//! any order and keep its deadline and trace. A malformed value is ignored, as Finagle does:
//! these headers only ever add information, and a request is never refused for one.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use http::header::VIA;
use http::{HeaderMap, HeaderName, HeaderValue, Version};

/// The caller's deadline: `<timestamp_ns> <deadline_ns>`, nanoseconds since the Unix epoch.
pub(crate) const L5D_CTX_DEADLINE: HeaderName = HeaderName::from_static("l5d-ctx-deadline");
/// The caller's trace id: base64 of Finagle's serialised `TraceId`.
pub(crate) const L5D_CTX_TRACE: HeaderName = HeaderName::from_static("l5d-ctx-trace");
/// A sample rate from 0 to 1 for a trace whose sampling is not yet decided.
pub(crate) const L5D_SAMPLE: HeaderName = HeaderName::from_static("l5d-sample");

/// What the caller said about a request, read (and removed) from its headers.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Caller {
    pub(crate) deadline: Option<Deadline>,
    pub(crate) trace: Option<TraceId>,
}

impl Caller {
    /// Reads and removes `l5d-ctx-deadline` (several values combine to the strictest),
    /// `l5d-ctx-trace` and `l5d-sample`.
    pub(crate) fn take(headers: &mut HeaderMap) -> Caller {
        let deadline = headers
            .get_all(&L5D_CTX_DEADLINE)
            .iter()
            .filter_map(|v| Deadline::parse(v.as_bytes()))
            .reduce(Deadline::combined);
        let mut trace = headers.get(&L5D_CTX_TRACE).and_then(|v| TraceId::decode(v.as_bytes()));
        let sample_rate = headers.get(&L5D_SAMPLE).and_then(|v| parse_sample_rate(v.as_bytes()));
        if let Some(rate) = sample_rate {
            let trace = trace.get_or_insert_with(TraceId::root);
            trace.decide_sampling(rate);
        }
        headers.remove(&L5D_CTX_DEADLINE);
        headers.remove(&L5D_CTX_TRACE);
        headers.remove(&L5D_SAMPLE);
        Caller { deadline, trace }
    }
}

/// A Finagle deadline: when it was set, and when the answer is due.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Deadline {
    pub(crate) timestamp_ns: i64,
    pub(crate) deadline_ns: i64,
}

impl Deadline {
    /// Parses `<timestamp_ns> <deadline_ns>`.
    fn parse(value: &[u8]) -> Option<Deadline> {
        let mut fields = std::str::from_utf8(value).ok()?.split_ascii_whitespace();
        let timestamp_ns = fields.next()?.parse().ok()?;
        let deadline_ns = fields.next()?.parse().ok()?;
        fields.next().is_none().then_some(Deadline { timestamp_ns, deadline_ns })
    }

    /// The stricter of two deadlines (Finagle's `Deadline.combined`): the later timestamp and
    /// the earlier deadline.
    pub(crate) fn combined(self, other: Deadline) -> Deadline {
        Deadline {
            timestamp_ns: self.timestamp_ns.max(other.timestamp_ns),
            deadline_ns: self.deadline_ns.min(other.deadline_ns),
        }
    }

    /// The deadline `timeout` after `now_ns`.
    pub(crate) fn after(now_ns: i64, timeout: Duration) -> Deadline {
        let timeout_ns = i64::try_from(timeout.as_nanos()).unwrap_or(i64::MAX);
        Deadline { timestamp_ns: now_ns, deadline_ns: now_ns.saturating_add(timeout_ns) }
    }

    /// The time left at `now_ns`; zero once the deadline has passed.
    pub(crate) fn remaining(&self, now_ns: i64) -> Duration {
        Duration::from_nanos(u64::try_from(self.deadline_ns.saturating_sub(now_ns)).unwrap_or(0))
    }

    pub(crate) fn header_value(&self) -> HeaderValue {
        let text = format!("{} {}", self.timestamp_ns, self.deadline_ns);
        HeaderValue::from_str(&text).unwrap_or_else(|_| HeaderValue::from_static("0 0"))
    }
}

/// Now, in nanoseconds since the Unix epoch: the clock deadlines are written in.
pub(crate) fn wall_clock_ns() -> i64 {
    let since_epoch = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    i64::try_from(since_epoch.as_nanos()).unwrap_or(i64::MAX)
}

/// Finagle's trace id flags.
const FLAG_SAMPLING_KNOWN: u64 = 1 << 1;
const FLAG_SAMPLED: u64 = 1 << 2;

/// A Finagle trace id: this span, its parent, the trace, flags (among them the sampling
/// decision) and, for 128-bit traces, the trace id's high 64 bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct TraceId {
    pub(crate) span: u64,
    pub(crate) parent: u64,
    pub(crate) trace: u64,
    pub(crate) flags: u64,
    pub(crate) trace_high: Option<u64>,
}

impl TraceId {
    /// A new trace, whose first span is its own parent (as Finagle writes a root span).
    pub(crate) fn root() -> TraceId {
        let id = waymark_random::next_u64();
        TraceId { span: id, parent: id, trace: id, flags: 0, trace_high: None }
    }

    /// Decodes the base64 of 32 bytes (span, parent, trace, flags; 8 bytes each, big-endian)
    /// or 40 (with the trace id's high bits after them).
    pub(crate) fn decode(value: &[u8]) -> Option<TraceId> {
        let mut bytes = [0u8; 40];
        let len = STANDARD.decode_slice(value, &mut bytes).ok()?;
        if len != 32 && len != 40 {
            return None;
        }
        let word = |i: usize| u64::from_be_bytes(bytes[i * 8..i * 8 + 8].try_into().expect("8 bytes"));
        Some(TraceId {
            span: word(0),
            parent: word(1),
            trace: word(2),
            flags: word(3),
            trace_high: (len == 40).then(|| word(4)),
        })
    }

    /// The span of the next hop: a new span id under this one, in the same trace.
    pub(crate) fn child(&self) -> TraceId {
        TraceId { span: waymark_random::next_u64(), parent: self.span, ..*self }
    }

    /// The sampling decision, when one was made.
    pub(crate) fn sampled(&self) -> Option<bool> {
        (self.flags & FLAG_SAMPLING_KNOWN != 0).then_some(self.flags & FLAG_SAMPLED != 0)
    }

    /// Decides whether the trace is sampled, with probability `rate`, unless that was
    /// decided already: a trace is sampled all along its path or not at all.
    fn decide_sampling(&mut self, rate: f64) {
        if self.sampled().is_some() {
            return;
        }
        let draw = waymark_random::unit();
        self.flags |= FLAG_SAMPLING_KNOWN;
        if draw < rate {
            self.flags |= FLAG_SAMPLED;
        } else {
            self.flags &= !FLAG_SAMPLED;
        }
    }

    pub(crate) fn header_value(&self) -> HeaderValue {
        let mut bytes = [0u8; 40];
        for (i, word) in [self.span, self.parent, self.trace, self.flags].into_iter().chain(self.trace_high).enumerate()
        {
            bytes[i * 8..i * 8 + 8].copy_from_slice(&word.to_be_bytes());
        }
        let len = if self.trace_high.is_some() { 40 } else { 32 };
        // Encoded on the stack: this runs for every request.
        let mut encoded = [0u8; 56];
        let written = STANDARD.encode_slice(&bytes[..len], &mut encoded).unwrap_or(0);
        HeaderValue::from_bytes(&encoded[..written]).unwrap_or_else(|_| HeaderValue::from_static(""))
    }

    /// The trace id as sixteen hex digits: Linkerd's `l5d-reqid`, the same on every hop of a
    /// request, for finding its lines in the logs of every router it crossed.
    pub(crate) fn request_id(&self) -> HeaderValue {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut digits = [0u8; 16];
        for (i, digit) in digits.iter_mut().enumerate() {
            *digit = HEX[((self.trace >> (60 - 4 * i)) & 15) as usize];
        }
        HeaderValue::from_bytes(&digits).unwrap_or_else(|_| HeaderValue::from_static("0"))
    }
}

/// `l5d-sample`: a rate clamped to [0, 1]; not a number is no rate.
fn parse_sample_rate(value: &[u8]) -> Option<f64> {
    let rate: f64 = std::str::from_utf8(value).ok()?.trim().parse().ok()?;
    (!rate.is_nan()).then(|| rate.clamp(0.0, 1.0))
}

/// How many proxies the request has passed, by the entries of its `Via` headers.
pub(crate) fn call_depth(headers: &HeaderMap) -> usize {
    headers.get_all(VIA).iter().map(|v| v.as_bytes().split(|b| *b == b',').count()).sum()
}

/// Adds this router to `Via`, with the protocol the request arrived in (RFC 9110, 7.6.3).
/// The entries are kept in one header line, so that a long path (a routing loop, say) is
/// stopped by the call depth limit rather than by a server's limit on the number of headers.
pub(crate) fn append_via(headers: &mut HeaderMap, received: Version) {
    let entry = match received {
        Version::HTTP_2 => "2 waymark",
        Version::HTTP_10 => "1.0 waymark",
        _ => "1.1 waymark",
    };
    if !headers.contains_key(VIA) {
        headers.insert(VIA, HeaderValue::from_static(entry));
        return;
    }
    let mut line = Vec::with_capacity(128);
    for value in headers.get_all(VIA) {
        line.extend_from_slice(value.as_bytes());
        line.extend_from_slice(b", ");
    }
    line.extend_from_slice(entry.as_bytes());
    match HeaderValue::from_bytes(&line) {
        Ok(value) => {
            headers.insert(VIA, value);
        }
        Err(_) => {
            headers.append(VIA, HeaderValue::from_static(entry));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&HeaderName, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (name, value) in pairs {
            h.append(*name, value.parse().unwrap());
        }
        h
    }

    #[test]
    fn deadlines_combine_to_the_strictest_and_malformed_ones_are_ignored() {
        let mut h = headers(&[
            (&L5D_CTX_DEADLINE, "100 900"),
            (&L5D_CTX_DEADLINE, "200 1500"),
            (&L5D_CTX_DEADLINE, "not a deadline"),
            (&L5D_CTX_DEADLINE, "1 2 3"),
        ]);
        let caller = Caller::take(&mut h);
        assert_eq!(caller.deadline, Some(Deadline { timestamp_ns: 200, deadline_ns: 900 }));
        assert!(h.is_empty(), "the headers are removed");
        let d = Deadline::after(1_000, Duration::from_micros(5));
        assert_eq!(d.header_value(), "1000 6000");
        assert_eq!(d.remaining(2_000), Duration::from_nanos(4_000));
        assert_eq!(d.remaining(7_000), Duration::ZERO);
    }

    #[test]
    fn trace_ids_round_trip_in_finagles_layout_and_children_keep_the_trace() {
        // span 1, parent 2, trace 3, flags 6 (sampling known, sampled), as Finagle writes it.
        let mut raw = Vec::new();
        for word in [1u64, 2, 3, 6] {
            raw.extend_from_slice(&word.to_be_bytes());
        }
        let text = STANDARD.encode(&raw);
        let id = TraceId::decode(text.as_bytes()).unwrap();
        assert_eq!(id, TraceId { span: 1, parent: 2, trace: 3, flags: 6, trace_high: None });
        assert_eq!(id.header_value(), text.as_str());
        assert_eq!(id.sampled(), Some(true));
        assert_eq!(id.request_id(), "0000000000000003");
        let child = id.child();
        assert_eq!((child.parent, child.trace, child.flags), (1, 3, 6));
        assert_ne!(child.span, 1);

        raw.extend_from_slice(&9u64.to_be_bytes());
        let wide = TraceId::decode(STANDARD.encode(&raw).as_bytes()).unwrap();
        assert_eq!(wide.trace_high, Some(9));
        assert_eq!(wide.child().header_value().len(), STANDARD.encode(&raw).len());
        assert_eq!(TraceId::decode(b"AAAA"), None);
        assert_eq!(TraceId::decode(b"not base64!"), None);
    }

    #[test]
    fn a_sample_rate_decides_sampling_once() {
        let mut h = headers(&[(&L5D_SAMPLE, "1.5")]);
        let root = Caller::take(&mut h).trace.unwrap();
        assert_eq!(root.sampled(), Some(true), "a rate above 1 is 1");
        assert_eq!((root.span, root.parent), (root.span, root.span));
        let mut h = headers(&[(&L5D_SAMPLE, "-3")]);
        assert_eq!(Caller::take(&mut h).trace.unwrap().sampled(), Some(false));
        // An earlier decision stands.
        let mut h = headers(&[(&L5D_CTX_TRACE, root.header_value().to_str().unwrap()), (&L5D_SAMPLE, "0")]);
        let caller = Caller::take(&mut h);
        assert_eq!(caller.trace.unwrap().sampled(), Some(true));
        assert!(h.is_empty());
        let mut h = headers(&[(&L5D_SAMPLE, "NaN")]);
        assert_eq!(Caller::take(&mut h).trace, None);
        assert_eq!(TraceId::root().sampled(), None);
    }

    #[test]
    fn via_counts_every_proxy_and_names_this_one() {
        let mut h = headers(&[(&VIA, "1.1 a, 1.1 b"), (&VIA, "2 c")]);
        assert_eq!(call_depth(&h), 3);
        append_via(&mut h, Version::HTTP_2);
        assert_eq!(call_depth(&h), 4);
        assert_eq!(h.get_all(VIA).iter().collect::<Vec<_>>(), ["1.1 a, 1.1 b, 2 c, 2 waymark"], "one line");
        let mut first = HeaderMap::new();
        append_via(&mut first, Version::HTTP_11);
        assert_eq!(first[VIA], "1.1 waymark");
        assert_eq!(call_depth(&HeaderMap::new()), 0);
    }
}
