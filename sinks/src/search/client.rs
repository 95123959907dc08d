//! The engine's REST API over plain HTTP(S) (`ureq`): bulk, refresh,
//! search, and the JSON calls of start-up. Only calls that Elasticsearch
//! 7.10+/8 and OpenSearch share are used.

use std::io::Read;
use std::time::Duration;

use super::retry::{refusal_reason, request_verdict, BulkResponse, RequestVerdict};
use crate::config::SearchSinkConfig;
use crate::SinkError;

/// Responses larger than this are refused (a bulk response filtered by
/// `filter_path` is a few bytes per item).
const MAX_RESPONSE: u64 = 256 << 20;

/// A failed request, already judged.
#[derive(Debug)]
pub enum CallError {
    /// Unreachable, timed out, 429 or 5xx: try again later.
    Retry(String),
    /// The engine refused the request itself: retrying cannot help.
    Fatal(SinkError),
}

/// The engine's answer to a bulk request.
#[derive(Debug)]
pub enum BulkAnswer {
    /// Item by item.
    Items(BulkResponse),
    /// Refused as a whole for what it holds (400, 413, ...), with the
    /// engine's reason: split it to find the items it refuses.
    Refused(String),
}

/// A client of one cluster.
#[derive(Clone)]
pub struct EngineClient {
    agent: ureq::Agent,
    base: url::Url,
}

impl EngineClient {
    /// A client for `cfg.url` with `cfg.username`/`cfg.password`.
    pub fn new(cfg: &SearchSinkConfig) -> Result<EngineClient, SinkError> {
        let mut base = url::Url::parse(&cfg.url).map_err(|e| SinkError::Config {
            key: "search_sink.url".into(),
            reason: format!("'{}': {e}", cfg.url),
        })?;
        if !cfg.username.is_empty() {
            let bad = |_| SinkError::Config {
                key: "search_sink.username".into(),
                reason: "cannot be set on this URL".into(),
            };
            base.set_username(&cfg.username).map_err(bad)?;
            base.set_password(Some(&cfg.password.0)).map_err(bad)?;
        }
        let agent = ureq::AgentBuilder::new()
            .timeout_connect(Duration::from_secs(5))
            .timeout(Duration::from_secs(cfg.request_timeout_secs))
            .max_idle_connections_per_host(64)
            .build();
        Ok(EngineClient { agent, base })
    }

    /// The cluster URL without credentials, for messages.
    pub fn display_url(&self) -> String {
        let mut u = self.base.clone();
        let _ = u.set_username("");
        let _ = u.set_password(None);
        u.to_string().trim_end_matches('/').to_owned()
    }

    fn url(&self, path: &str) -> String {
        format!("{}{}", self.base.as_str().trim_end_matches('/'), path)
    }

    /// Sends a request; returns the status and body of any HTTP answer,
    /// or why none came.
    pub fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<(&str, &[u8])>,
    ) -> Result<(u16, Vec<u8>), String> {
        let req = self.agent.request(method, &self.url(path));
        let res = match body {
            Some((ctype, bytes)) => req.set("Content-Type", ctype).send_bytes(bytes),
            None => req.call(),
        };
        let resp = match res {
            Ok(r) => r,
            Err(ureq::Error::Status(_, r)) => r,
            Err(ureq::Error::Transport(t)) => return Err(t.to_string()),
        };
        let status = resp.status();
        let mut out = Vec::new();
        resp.into_reader()
            .take(MAX_RESPONSE)
            .read_to_end(&mut out)
            .map_err(|e| format!("reading the response: {e}"))?;
        Ok((status, out))
    }

    /// A JSON call judged like a bulk: 2xx → the parsed body.
    pub fn json(
        &self,
        method: &str,
        path: &str,
        body: Option<&serde_json::Value>,
    ) -> Result<serde_json::Value, CallError> {
        let bytes = body.map(|b| b.to_string().into_bytes());
        let (status, out) = self
            .call(
                method,
                path,
                bytes.as_deref().map(|b| ("application/json", b)),
            )
            .map_err(|e| CallError::Retry(format!("{} unreachable: {e}", self.display_url())))?;
        let text = || String::from_utf8_lossy(&out[..out.len().min(2000)]).into_owned();
        match request_verdict(status) {
            RequestVerdict::Items => serde_json::from_slice(&out).map_err(|e| {
                CallError::Retry(format!(
                    "{method} {path}: unreadable answer ({e}): {}",
                    text()
                ))
            }),
            RequestVerdict::Retry => Err(CallError::Retry(format!(
                "{method} {path}: HTTP {status}: {}",
                text()
            ))),
            RequestVerdict::Refused | RequestVerdict::Fatal => {
                Err(CallError::Fatal(SinkError::Engine {
                    url: self.display_url(),
                    what: format!("{method} {path}"),
                    reason: format!("HTTP {status}: {}", text()),
                }))
            }
        }
    }

    /// Posts one bulk body (NDJSON) and reads the per-item answer; a bulk
    /// refused as a whole is a fatal error here (see [`Self::send_bulk`]).
    pub fn bulk(&self, body: &[u8]) -> Result<BulkResponse, CallError> {
        match self.send_bulk(body)? {
            BulkAnswer::Items(r) => Ok(r),
            BulkAnswer::Refused(reason) => Err(CallError::Fatal(SinkError::Engine {
                url: self.display_url(),
                what: "bulk".into(),
                reason,
            })),
        }
    }

    /// Posts one bulk body (NDJSON): the per-item answer, or the engine's
    /// reason for refusing the request as a whole.
    pub fn send_bulk(&self, body: &[u8]) -> Result<BulkAnswer, CallError> {
        const PATH: &str = "/_bulk?filter_path=errors,items.*.status,items.*.error";
        let (status, out) = self
            .call("POST", PATH, Some(("application/x-ndjson", body)))
            .map_err(|e| CallError::Retry(format!("{} unreachable: {e}", self.display_url())))?;
        match request_verdict(status) {
            RequestVerdict::Items => {
                serde_json::from_slice(&out)
                    .map(BulkAnswer::Items)
                    .map_err(|e| {
                        CallError::Retry(format!(
                            "bulk: unreadable answer ({e}): {}",
                            String::from_utf8_lossy(&out[..out.len().min(500)])
                        ))
                    })
            }
            RequestVerdict::Retry => Err(CallError::Retry(format!(
                "bulk: HTTP {status}: {}",
                String::from_utf8_lossy(&out[..out.len().min(500)])
            ))),
            RequestVerdict::Refused => Ok(BulkAnswer::Refused(refusal_reason(status, &out))),
            RequestVerdict::Fatal => Err(CallError::Fatal(SinkError::Engine {
                url: self.display_url(),
                what: "bulk".into(),
                reason: refusal_reason(status, &out),
            })),
        }
    }
}
