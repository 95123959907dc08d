//! The engine's REST API over plain HTTP(S) (`ureq`): bulk, refresh,
//! search, and the JSON calls of start-up. Only calls that Elasticsearch
//! 7.10+/8 and OpenSearch share are used.

use std::io::Read;
use std::time::Duration;

use super::retry::{
    refusal_reason, request_verdict, transport_reason, transport_verdict, BulkResponse, Contact,
    RequestVerdict,
};
use crate::config::{SearchSinkConfig, Secret};
use crate::http::{basic_auth, secret_value};
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
    /// The `Authorization` header, if any: never part of the URL, so that
    /// no transport error (which prints the URL) can show it.
    auth: Option<Secret>,
}

impl EngineClient {
    /// A client for `cfg.url` with `cfg`'s credentials and TLS settings
    /// (reads the password, API key, CA and certificate files).
    pub fn new(cfg: &SearchSinkConfig) -> Result<EngineClient, SinkError> {
        let base = url::Url::parse(&cfg.url).map_err(|e| SinkError::Config {
            key: "search_sink.url".into(),
            reason: format!("'{}': {e}", cfg.url),
        })?;
        let api_key = secret_value("search_sink.api_key", &cfg.api_key, &cfg.api_key_file)?;
        let auth = if !api_key.is_empty() {
            Some(Secret(format!("ApiKey {}", api_key.0)))
        } else if !cfg.username.is_empty() {
            let pw = secret_value("search_sink.password", &cfg.password, &cfg.password_file)?;
            Some(basic_auth(&cfg.username, &pw))
        } else {
            None
        };
        let agent = cfg.tls.agent(
            "search_sink.tls",
            Duration::from_secs(5),
            Duration::from_secs(cfg.request_timeout_secs),
        )?;
        Ok(EngineClient { agent, base, auth })
    }

    /// The cluster URL, for messages (it never holds credentials).
    pub fn display_url(&self) -> String {
        self.base.as_str().trim_end_matches('/').to_owned()
    }

    fn url(&self, path: &str) -> String {
        format!("{}{}", self.base.as_str().trim_end_matches('/'), path)
    }

    /// Sends a request; returns the status and body of any HTTP answer,
    /// or why none came, judged by [`transport_verdict`]: unreachable is
    /// for retrying, a TLS failure or a non-HTTP answer is fatal.
    pub fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<(&str, &[u8])>,
    ) -> Result<(u16, Vec<u8>), CallError> {
        self.send(method, path, body, Contact::Running)
    }

    /// `GET /`, the first request of a sink or a query: as [`Self::json`],
    /// except that a server that closes the connection without answering
    /// is fatal here (see [`Contact::First`]).
    pub fn first_contact(&self) -> Result<serde_json::Value, CallError> {
        let (status, out) = self.send("GET", "/", None, Contact::First)?;
        self.judge_json("GET", "/", status, &out)
    }

    fn send(
        &self,
        method: &str,
        path: &str,
        body: Option<(&str, &[u8])>,
        contact: Contact,
    ) -> Result<(u16, Vec<u8>), CallError> {
        let mut req = self.agent.request(method, &self.url(path));
        if let Some(auth) = &self.auth {
            req = req.set("Authorization", &auth.0);
        }
        let res = match body {
            Some((ctype, bytes)) => req.set("Content-Type", ctype).send_bytes(bytes),
            None => req.call(),
        };
        let resp = match res {
            Ok(r) => r,
            Err(ureq::Error::Status(_, r)) => r,
            Err(ureq::Error::Transport(t)) => {
                return Err(match transport_verdict(&t, contact) {
                    RequestVerdict::Fatal => CallError::Fatal(SinkError::Engine {
                        url: self.display_url(),
                        what: format!("{method} {}", path_only(path)),
                        reason: transport_reason(&t),
                    }),
                    _ => CallError::Retry(format!(
                        "{} unreachable: {}",
                        self.display_url(),
                        transport_reason(&t)
                    )),
                })
            }
        };
        let status = resp.status();
        let mut out = Vec::new();
        resp.into_reader()
            .take(MAX_RESPONSE)
            .read_to_end(&mut out)
            .map_err(|e| {
                CallError::Retry(format!("{}: reading the response: {e}", self.display_url()))
            })?;
        Ok((status, out))
    }

    /// Whether `path` exists (`HEAD`: 200 yes, 404 no); any other answer
    /// is judged like every request (401/403 are fatal).
    pub fn exists(&self, path: &str) -> Result<bool, CallError> {
        let (status, out) = self.call("HEAD", path, None)?;
        match (status, request_verdict(status)) {
            (404, _) => Ok(false),
            (_, RequestVerdict::Items) => Ok(true),
            (_, RequestVerdict::Retry) => {
                Err(CallError::Retry(format!("HEAD {path}: HTTP {status}")))
            }
            _ => Err(CallError::Fatal(SinkError::Engine {
                url: self.display_url(),
                what: format!("HEAD {path}"),
                reason: refusal_reason(status, &out),
            })),
        }
    }

    /// A JSON call judged like a bulk: 2xx → the parsed body.
    pub fn json(
        &self,
        method: &str,
        path: &str,
        body: Option<&serde_json::Value>,
    ) -> Result<serde_json::Value, CallError> {
        let bytes = body.map(|b| b.to_string().into_bytes());
        let (status, out) = self.call(
            method,
            path,
            bytes.as_deref().map(|b| ("application/json", b)),
        )?;
        self.judge_json(method, path, status, &out)
    }

    fn judge_json(
        &self,
        method: &str,
        path: &str,
        status: u16,
        out: &[u8],
    ) -> Result<serde_json::Value, CallError> {
        let text = || String::from_utf8_lossy(&out[..out.len().min(2000)]).into_owned();
        match request_verdict(status) {
            RequestVerdict::Items => serde_json::from_slice(out).map_err(|e| {
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
        let (status, out) = self.call("POST", PATH, Some(("application/x-ndjson", body)))?;
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

/// A request path without its query string, for messages.
fn path_only(path: &str) -> &str {
    path.split('?').next().unwrap_or(path)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::io::{BufRead, BufReader, Write};
    use std::net::TcpListener;

    use super::*;

    /// Serves one request with `answer` and returns its request line and
    /// headers.
    fn one_request(answer: &'static str) -> (String, std::thread::JoinHandle<Vec<String>>) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", l.local_addr().unwrap());
        let t = std::thread::spawn(move || {
            let (s, _) = l.accept().unwrap();
            let mut r = BufReader::new(s.try_clone().unwrap());
            let mut lines = Vec::new();
            loop {
                let mut line = String::new();
                r.read_line(&mut line).unwrap();
                if line.trim().is_empty() {
                    break;
                }
                lines.push(line.trim().to_owned());
            }
            (&s).write_all(answer.as_bytes()).unwrap();
            lines
        });
        (url, t)
    }

    const OK: &str = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}";

    #[test]
    fn an_api_key_is_an_authorization_header() {
        let (url, t) = one_request(OK);
        let c = EngineClient::new(&SearchSinkConfig {
            url: url.clone(),
            api_key: Secret("VnVhQ2ZHY0JDZGJrUW0tZTVhT3g6dWkybHAyYXhUTm1zeWFrdzl0dk5udw==".into()),
            ..Default::default()
        })
        .unwrap();
        c.first_contact().unwrap();
        let lines = t.join().unwrap();
        assert_eq!(lines[0], "GET / HTTP/1.1");
        assert!(
            lines.contains(
                &"Authorization: ApiKey VnVhQ2ZHY0JDZGJrUW0tZTVhT3g6dWkybHAyYXhUTm1zeWFrdzl0dk5udw=="
                    .to_owned()
            ),
            "{lines:?}"
        );
        assert_eq!(c.display_url(), url);
    }

    #[test]
    fn basic_auth_is_a_header_and_never_in_the_url_or_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let pw = dir.path().join("pw");
        std::fs::write(&pw, "Pw-In-A-File-7781\n").unwrap();
        let (url, t) = one_request(OK);
        let cfg = SearchSinkConfig {
            url,
            username: "sink".into(),
            password_file: pw.display().to_string(),
            ..Default::default()
        };
        let c = EngineClient::new(&cfg).unwrap();
        c.first_contact().unwrap();
        let lines = t.join().unwrap();
        let want = basic_auth("sink", &Secret("Pw-In-A-File-7781".into())).0;
        assert!(
            lines.contains(&format!("Authorization: {want}")),
            "{lines:?}"
        );
        assert!(!c.display_url().contains("Pw-In"));
        // Unreachable now: the error names the engine, never the password.
        let e = match c.first_contact() {
            Err(CallError::Retry(e)) => e,
            other => panic!("{other:?}"),
        };
        assert!(e.contains(&c.display_url()) && !e.contains("Pw-In"), "{e}");
    }

    #[test]
    fn plaintext_to_a_server_that_closes_at_once_is_fatal_at_first_contact() {
        // What a TLS port does with a plaintext request: close, no answer.
        let (url, t) = one_request("");
        let c = EngineClient::new(&SearchSinkConfig {
            url,
            ..Default::default()
        })
        .unwrap();
        let e = match c.first_contact() {
            Err(CallError::Fatal(e)) => e.to_string(),
            other => panic!("{other:?}"),
        };
        t.join().unwrap();
        assert!(e.contains("is this a TLS port? use https://"), "{e}");
    }
}
