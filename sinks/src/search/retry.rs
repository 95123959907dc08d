//! The one place that decides what a bulk status means: done, retry later,
//! reject to the DLQ, or stop the sink; and what a failure to get any HTTP
//! answer means (unreachable: retry; a TLS failure: stop). Tested on canned
//! response bodies below.

use std::time::Duration;

use serde::Deserialize;

use super::documents::ItemKind;
use crate::dlq::{elide, MAX_REASON_BYTES};

/// What to do with one bulk item after the engine answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ItemVerdict {
    /// Applied (or, for a `create`, already there: 409 means a duplicate).
    Done,
    /// Rejected for now (429, 5xx, a version conflict): send again.
    Retry,
    /// Rejected for good (mapping or parsing error): the event goes to the DLQ.
    Reject,
    /// Refused for who we are, not for what the item holds (401, 403: a
    /// user without the privilege to write the index answers HTTP 200 with
    /// every item `403 security_exception`): a configuration error, so the
    /// sink stops with the engine's reason instead of sending every event
    /// to the DLQ.
    Fatal,
}

/// Reads one item's HTTP status.
pub fn item_verdict(kind: ItemKind, status: u16) -> ItemVerdict {
    match status {
        200..=299 => ItemVerdict::Done,
        409 if kind == ItemKind::Change => ItemVerdict::Done,
        409 | 429 | 500..=599 => ItemVerdict::Retry,
        401 | 403 => ItemVerdict::Fatal,
        _ => ItemVerdict::Reject,
    }
}

/// What a request that got no HTTP answer means: [`RequestVerdict::Retry`]
/// when the engine is unreachable (refused, reset, timed out, a name that
/// does not resolve yet: it may come back), [`RequestVerdict::Fatal`] when
/// retrying cannot help — the TLS handshake failed (an untrusted or expired
/// certificate, a name mismatch, `https://` to a plaintext port), the
/// server answered something that is not HTTP (`http://` to a TLS port),
/// or the URL itself is wrong.
///
/// A server that accepts the connection and closes it without an answer is
/// retried while the sink runs (an engine killed mid-request does that),
/// but is fatal at [`Contact::First`]: a TLS port spoken to in plaintext
/// (`http://` to an `https://` engine) does exactly that, forever.
pub fn transport_verdict(t: &ureq::Transport, contact: Contact) -> RequestVerdict {
    use ureq::ErrorKind as K;
    match t.kind() {
        _ if contact == Contact::First && closed_without_answer(t) => RequestVerdict::Fatal,
        K::InvalidUrl
        | K::UnknownScheme
        | K::InsecureRequestHttpsOnly
        | K::BadStatus
        | K::BadHeader
        | K::InvalidProxyUrl
        | K::ProxyUnauthorized => RequestVerdict::Fatal,
        _ if tls_error(t).is_some() => RequestVerdict::Fatal,
        _ => RequestVerdict::Retry,
    }
}

/// Which request a transport error happened on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Contact {
    /// The first request to the engine (`GET /` of the set-up or a query).
    First,
    /// Any later one.
    Running,
}

/// Whether the server closed the connection before any HTTP answer.
fn closed_without_answer(t: &ureq::Transport) -> bool {
    use std::io::ErrorKind as K;
    let mut source = std::error::Error::source(t);
    while let Some(e) = source {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            if matches!(
                io.kind(),
                K::ConnectionAborted | K::UnexpectedEof | K::ConnectionReset
            ) {
                return true;
            }
        }
        source = e.source();
    }
    false
}

/// The rustls error under a transport error, if the TLS layer failed
/// (rustls' errors reach ureq inside an `io::Error`, whose `source()`
/// skips the error it wraps: look inside with `get_ref`).
fn tls_error(t: &ureq::Transport) -> Option<&rustls::Error> {
    let mut source = std::error::Error::source(t);
    while let Some(e) = source {
        if let Some(tls) = e.downcast_ref::<rustls::Error>() {
            return Some(tls);
        }
        if let Some(inner) = e
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
        {
            if let Some(tls) = inner.downcast_ref::<rustls::Error>() {
                return Some(tls);
            }
            source = Some(inner);
            continue;
        }
        source = e.source();
    }
    None
}

/// What went wrong, in one line: ureq's text (the URL it prints holds no
/// credentials: they travel in a header), with a hint for the common
/// mistakes.
pub fn transport_reason(t: &ureq::Transport) -> String {
    let hint = match (t.kind(), tls_error(t)) {
        (_, Some(rustls::Error::InvalidCertificate(_))) => {
            " (the server's certificate is not trusted: set tls.ca_file to the CA that signed it)"
        }
        (_, Some(rustls::Error::InvalidMessage(_))) => {
            " (is this a plaintext http:// port? use http:// or the TLS port)"
        }
        (_, Some(_)) => "",
        (ureq::ErrorKind::BadStatus | ureq::ErrorKind::BadHeader, None) => {
            " (not an HTTP answer: is this a TLS port? use https://)"
        }
        _ if closed_without_answer(t) => {
            " (the server closed the connection without an HTTP answer: is this a TLS port? use https://)"
        }
        _ => "",
    };
    let mut text = t.to_string().replace('\n', " ");
    text.push_str(hint);
    text
}

/// What a whole request's HTTP status means. This is the one place that
/// tells retryable from fatal, for bulks and every other call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RequestVerdict {
    /// The engine answered; read the items.
    Items,
    /// Overloaded, restarting or unreachable (408, 429, 5xx): send the
    /// whole request again.
    Retry,
    /// Refused for what it holds (400 — e.g. an `_id` over 512 bytes fails
    /// the whole bulk's validation —, 413 too large, and any other 4xx that
    /// is not about credentials or addressing): a bulk is split in halves
    /// until the items the engine refuses alone are found; for any other
    /// call it is fatal.
    Refused,
    /// Our credentials or address are wrong (401, 403, 404 on a missing
    /// index or a wrong URL path, 405, 407, 3xx): retrying cannot help,
    /// stop with the engine's reason.
    Fatal,
}

/// Reads a whole request's HTTP status.
pub fn request_verdict(status: u16) -> RequestVerdict {
    match status {
        200..=299 => RequestVerdict::Items,
        408 | 429 | 500..=599 => RequestVerdict::Retry,
        401 | 403 | 404 | 405 | 407 => RequestVerdict::Fatal,
        400..=499 => RequestVerdict::Refused,
        _ => RequestVerdict::Fatal,
    }
}

/// The engine's reason for refusing a whole request, from its answer:
/// `HTTP 400: type: reason (caused by type: reason)`, or the body's text,
/// shortened in the middle to [`MAX_REASON_BYTES`] (the end of an engine
/// reason says the most: "... must be no longer than 512 bytes but was:
/// 100040").
pub fn refusal_reason(status: u16, body: &[u8]) -> String {
    let parsed: Option<serde_json::Value> = serde_json::from_slice(body).ok();
    let text = match parsed.as_ref().map(|v| &v["error"]) {
        Some(e) if e.is_object() => ItemStatus {
            status,
            error: Some(e.clone()),
        }
        .reason(),
        Some(serde_json::Value::String(s)) => s.clone(),
        _ if body.is_empty() && status == 413 => {
            "request entity too large (over the engine's http.max_content_length or a gateway's body limit)".into()
        }
        _ => String::from_utf8_lossy(&body[..body.len().min(4 * MAX_REASON_BYTES)]).into_owned(),
    };
    elide(&format!("HTTP {status}: {text}"), MAX_REASON_BYTES)
}

/// A bulk response, reduced by `filter_path` to what the sink reads.
#[derive(Debug, Deserialize)]
pub struct BulkResponse {
    /// Whether any item failed.
    #[serde(default)]
    pub errors: bool,
    /// One entry per item, in request order (absent when `filter_path`
    /// dropped everything).
    #[serde(default)]
    pub items: Vec<BulkItem>,
}

/// One item's result, under its operation name.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "lowercase")]
#[allow(missing_docs)]
pub enum BulkItem {
    Index(ItemStatus),
    Create(ItemStatus),
    Update(ItemStatus),
    Delete(ItemStatus),
}

impl BulkItem {
    /// The status and error, whatever the operation.
    pub fn status(&self) -> &ItemStatus {
        match self {
            BulkItem::Index(s)
            | BulkItem::Create(s)
            | BulkItem::Update(s)
            | BulkItem::Delete(s) => s,
        }
    }
}

/// An item's HTTP status and the engine's error, if any.
#[derive(Debug, Deserialize)]
pub struct ItemStatus {
    /// HTTP status of the item.
    pub status: u16,
    /// The engine's error object.
    #[serde(default)]
    pub error: Option<serde_json::Value>,
}

impl ItemStatus {
    /// `type: reason (caused by: type: reason)`, as the engine said it.
    pub fn reason(&self) -> String {
        let Some(e) = &self.error else {
            return format!("HTTP {}", self.status);
        };
        let one = |e: &serde_json::Value| {
            format!(
                "{}: {}",
                e["type"].as_str().unwrap_or("error"),
                e["reason"].as_str().unwrap_or("")
            )
        };
        match e.get("caused_by") {
            Some(c) if c.is_object() => format!("{} (caused by {})", one(e), one(c)),
            _ => one(e),
        }
    }
}

/// Delay before retry number `attempt` (0-based): `initial · 2^attempt`,
/// capped at `max`, with full jitter in [d/2, d] so that lanes and
/// instances do not retry in lockstep.
pub fn backoff(attempt: u32, initial: Duration, max: Duration) -> Duration {
    let base = initial.saturating_mul(1u32 << attempt.min(20)).min(max);
    let half = base / 2;
    half + half.mul_f64(jitter())
}

/// A number in [0, 1) from the clock's nanoseconds (xorshift-mixed); good
/// enough to spread retries, not for anything else.
fn jitter() -> f64 {
    let mut x = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos() as u64 ^ d.as_secs())
        .unwrap_or(1)
        | 1;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    (x % 1_000_000) as f64 / 1_000_000.0
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn verdicts_on_a_canned_mixed_response() {
        // As OpenSearch 2.19 answers with filter_path=errors,items.*.status,items.*.error
        let body = r#"{"errors":true,"items":[
            {"create":{"status":201}},
            {"create":{"status":409,"error":{"type":"version_conflict_engine_exception","reason":"[ab]: version conflict, document already exists"}}},
            {"update":{"status":429,"error":{"type":"es_rejected_execution_exception","reason":"rejected execution"}}},
            {"create":{"status":400,"error":{"type":"mapper_parsing_exception","reason":"failed to parse field [labels.rack] of type [keyword]","caused_by":{"type":"illegal_state_exception","reason":"Can't get text on a START_OBJECT"}}}},
            {"update":{"status":409,"error":{"type":"version_conflict_engine_exception","reason":"conflict"}}},
            {"update":{"status":503,"error":{"type":"unavailable_shards_exception","reason":"primary shard is not active"}}},
            {"delete":{"status":200}}
        ]}"#;
        let r: BulkResponse = serde_json::from_str(body).unwrap();
        assert!(r.errors);
        let kinds = [
            ItemKind::Change,
            ItemKind::Change,
            ItemKind::Package,
            ItemKind::Change,
            ItemKind::Host,
            ItemKind::Package,
            ItemKind::Package,
        ];
        let v: Vec<ItemVerdict> = r
            .items
            .iter()
            .zip(kinds)
            .map(|(i, k)| item_verdict(k, i.status().status))
            .collect();
        use ItemVerdict::*;
        assert_eq!(v, [Done, Done, Retry, Reject, Retry, Retry, Done]);
        assert_eq!(
            r.items[3].status().reason(),
            "mapper_parsing_exception: failed to parse field [labels.rack] of type [keyword] (caused by illegal_state_exception: Can't get text on a START_OBJECT)"
        );
    }

    /// As OpenSearch 2.19.4's security plugin answers a bulk from a user
    /// who may not write the indices: HTTP 200, every item 403.
    #[test]
    fn items_refused_for_privileges_stop_the_sink_instead_of_the_dlq() {
        let body = r#"{"errors":true,"items":[{"create":{"status":403,"error":{"type":"security_exception","reason":"no permissions for [indices:data/write/bulk[s], indices:data/write/index] and User [name=pkgstream-nowrite, backend_roles=[], requestedTenant=null]"}}},{"update":{"status":403,"error":{"type":"security_exception","reason":"no permissions for [indices:data/write/bulk[s], indices:data/write/update] and User [name=pkgstream-nowrite, backend_roles=[], requestedTenant=null]"}}}]}"#;
        let r: BulkResponse = serde_json::from_str(body).unwrap();
        let v: Vec<ItemVerdict> = r
            .items
            .iter()
            .map(|i| item_verdict(ItemKind::Change, i.status().status))
            .collect();
        assert_eq!(v, [ItemVerdict::Fatal, ItemVerdict::Fatal]);
        assert_eq!(item_verdict(ItemKind::Package, 401), ItemVerdict::Fatal);
        assert!(r.items[0]
            .status()
            .reason()
            .starts_with("security_exception: no permissions for [indices:data/write/bulk[s], indices:data/write/index] and User [name=pkgstream-nowrite"));
        // A mapping error is still the item's own fault.
        assert_eq!(item_verdict(ItemKind::Change, 400), ItemVerdict::Reject);
    }

    #[test]
    fn an_all_good_response_without_items() {
        let r: BulkResponse = serde_json::from_str(r#"{"errors":false}"#).unwrap();
        assert!(!r.errors && r.items.is_empty());
    }

    #[test]
    fn request_statuses() {
        assert_eq!(request_verdict(200), RequestVerdict::Items);
        assert_eq!(request_verdict(429), RequestVerdict::Retry);
        assert_eq!(request_verdict(503), RequestVerdict::Retry);
        assert_eq!(request_verdict(408), RequestVerdict::Retry);
        assert_eq!(request_verdict(401), RequestVerdict::Fatal);
        assert_eq!(request_verdict(403), RequestVerdict::Fatal);
        assert_eq!(request_verdict(404), RequestVerdict::Fatal);
        assert_eq!(request_verdict(301), RequestVerdict::Fatal);
        assert_eq!(request_verdict(400), RequestVerdict::Refused);
        assert_eq!(request_verdict(413), RequestVerdict::Refused);
        assert_eq!(request_verdict(422), RequestVerdict::Refused);
    }

    /// As OpenSearch 2.19 answers a bulk with one `_id` over 512 bytes
    /// (the whole request fails validation; the id is repeated in full).
    #[test]
    fn a_bulk_refused_for_a_long_id_is_split_and_the_reason_kept_short() {
        let id = format!(
            "0000000000000000000000005eed0002/{}.x86_64",
            "p".repeat(100_000)
        );
        let body = format!(
            r#"{{"error":{{"root_cause":[{{"type":"action_request_validation_exception","reason":"Validation Failed: 1: id [{id}] is too long, must be no longer than 512 bytes but was: {};"}}],"type":"action_request_validation_exception","reason":"Validation Failed: 1: id [{id}] is too long, must be no longer than 512 bytes but was: {};"}},"status":400}}"#,
            id.len(),
            id.len()
        );
        assert_eq!(request_verdict(400), RequestVerdict::Refused);
        let r = refusal_reason(400, body.as_bytes());
        assert!(r.len() <= MAX_REASON_BYTES, "{} bytes", r.len());
        assert!(
            r.starts_with("HTTP 400: action_request_validation_exception: Validation Failed: 1: id [0000000000000000000000005eed0002/ppp"),
            "{r}"
        );
        assert!(
            r.ends_with(&format!(
                "must be no longer than 512 bytes but was: {};",
                id.len()
            )),
            "{r}"
        );
    }

    /// OpenSearch above http.max_content_length: 413 with an empty body.
    #[test]
    fn a_bulk_refused_as_too_large_is_split() {
        assert_eq!(request_verdict(413), RequestVerdict::Refused);
        let r = refusal_reason(413, b"");
        assert!(r.starts_with("HTTP 413: request entity too large"), "{r}");
        assert!(r.contains("http.max_content_length"), "{r}");
    }

    #[test]
    fn credentials_and_addresses_are_fatal_with_the_engine_reason() {
        let body = br#"{"error":{"root_cause":[{"type":"security_exception","reason":"missing authentication credentials for REST request [/_bulk]"}],"type":"security_exception","reason":"missing authentication credentials for REST request [/_bulk]"},"status":401}"#;
        assert_eq!(request_verdict(401), RequestVerdict::Fatal);
        assert_eq!(
            refusal_reason(401, body),
            "HTTP 401: security_exception: missing authentication credentials for REST request [/_bulk]"
        );
        let body = br#"{"error":{"root_cause":[{"type":"index_not_found_exception","reason":"no such index [p-packages]"}],"type":"index_not_found_exception","reason":"no such index [p-packages]","index":"p-packages"},"status":404}"#;
        assert_eq!(request_verdict(404), RequestVerdict::Fatal);
        assert!(refusal_reason(404, body).contains("no such index [p-packages]"));
        // A rejected execution on the whole request is only "for now".
        assert_eq!(request_verdict(429), RequestVerdict::Retry);
    }

    #[test]
    fn elide_keeps_both_ends_on_char_boundaries() {
        assert_eq!(elide("short", 10), "short");
        let s = format!("début {} fin", "é".repeat(2000));
        let e = elide(&s, 200);
        assert!(e.len() <= 200, "{}", e.len());
        assert!(e.starts_with("début ") && e.ends_with(" fin"), "{e}");
        assert!(e.contains(&format!("({} bytes)", s.len())));
    }

    #[test]
    fn backoff_grows_caps_and_jitters() {
        let i = Duration::from_millis(100);
        let m = Duration::from_secs(30);
        for a in 0..30 {
            let d = backoff(a, i, m);
            let full = i.saturating_mul(1 << a.min(20)).min(m);
            assert!(d >= full / 2 && d <= full, "attempt {a}: {d:?} vs {full:?}");
        }
    }
}
