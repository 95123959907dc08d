//! Prometheus remote write 1.0: the registry's counters and gauges as a
//! `WriteRequest` (protobuf, the message types of `prompb/remote.proto` and
//! `types.proto` declared with prost), snappy block-compressed, POSTed.

use std::collections::HashSet;
use std::time::Duration;

use prometheus::proto::MetricType;
use prost::Message;

use crate::config::{MetricsSinkConfig, Secret};
use crate::http::{basic_auth, secret_value};
use crate::search::retry::{
    request_verdict, transport_reason, transport_verdict, Contact, RequestVerdict,
};
use crate::SinkError;

/// `prometheus.WriteRequest`.
#[derive(Clone, PartialEq, Message)]
pub struct WriteRequest {
    /// The series.
    #[prost(message, repeated, tag = "1")]
    pub timeseries: Vec<TimeSeries>,
}

/// `prometheus.TimeSeries`.
#[derive(Clone, PartialEq, Message)]
pub struct TimeSeries {
    /// Labels, `__name__` first, sorted by name.
    #[prost(message, repeated, tag = "1")]
    pub labels: Vec<Label>,
    /// Samples, oldest first.
    #[prost(message, repeated, tag = "2")]
    pub samples: Vec<Sample>,
}

/// `prometheus.Label`.
#[derive(Clone, PartialEq, Message)]
pub struct Label {
    /// Name.
    #[prost(string, tag = "1")]
    pub name: String,
    /// Value.
    #[prost(string, tag = "2")]
    pub value: String,
}

/// `prometheus.Sample`.
#[derive(Clone, PartialEq, Message)]
pub struct Sample {
    /// Value.
    #[prost(double, tag = "1")]
    pub value: f64,
    /// Milliseconds since the Unix epoch.
    #[prost(int64, tag = "2")]
    pub timestamp: i64,
}

/// The registry's counters and gauges, one sample each at `timestamp_ms`.
pub fn write_request(registry: &prometheus::Registry, timestamp_ms: i64) -> WriteRequest {
    let mut timeseries = Vec::new();
    for family in registry.gather() {
        let ty = family.get_field_type();
        if !matches!(ty, MetricType::COUNTER | MetricType::GAUGE) {
            continue;
        }
        for m in family.get_metric() {
            let value = if ty == MetricType::COUNTER {
                m.get_counter().get_value()
            } else {
                m.get_gauge().get_value()
            };
            let mut labels = vec![Label {
                name: "__name__".into(),
                value: family.name().to_owned(),
            }];
            for l in m.get_label() {
                labels.push(Label {
                    name: l.name().to_owned(),
                    value: l.value().to_owned(),
                });
            }
            labels[1..].sort_by(|a, b| a.name.cmp(&b.name));
            timeseries.push(TimeSeries {
                labels,
                samples: vec![Sample {
                    value,
                    timestamp: timestamp_ms,
                }],
            });
        }
    }
    WriteRequest { timeseries }
}

/// Prometheus' staleness marker: a NaN with exactly these bits.
pub const STALE_NAN_BITS: u64 = 0x7ff0_0000_0000_0002;

/// A series' identity: its labels, `__name__` first.
pub type SeriesKey = Vec<(String, String)>;

fn key(ts: &TimeSeries) -> SeriesKey {
    ts.labels
        .iter()
        .map(|l| (l.name.clone(), l.value.clone()))
        .collect()
}

impl WriteRequest {
    /// Ends every series of `previous` that this request no longer carries
    /// with a staleness marker at `timestamp_ms`: a drift gauge whose
    /// version no host runs any more then disappears from queries at once
    /// instead of answering its last value for Prometheus' 5-minute
    /// lookback. Returns this request's own series (the next `previous`).
    pub fn mark_vanished(
        &mut self,
        previous: &HashSet<SeriesKey>,
        timestamp_ms: i64,
    ) -> HashSet<SeriesKey> {
        let current: HashSet<SeriesKey> = self.timeseries.iter().map(key).collect();
        for gone in previous.difference(&current) {
            self.timeseries.push(TimeSeries {
                labels: gone
                    .iter()
                    .map(|(name, value)| Label {
                        name: name.clone(),
                        value: value.clone(),
                    })
                    .collect(),
                samples: vec![Sample {
                    value: f64::from_bits(STALE_NAN_BITS),
                    timestamp: timestamp_ms,
                }],
            });
        }
        current
    }
}

/// The HTTP body: protobuf, snappy block format.
pub fn encode(req: &WriteRequest) -> Result<Vec<u8>, SinkError> {
    snap::raw::Encoder::new()
        .compress_vec(&req.encode_to_vec())
        .map_err(|e| SinkError::Io(format!("snappy: {e}")))
}

/// Why a push failed.
#[derive(Debug)]
pub enum PushError {
    /// Unreachable, 5xx, 429, or a sample Prometheus refused (400): the
    /// next push carries the same counters.
    Retry(SinkError),
    /// Our credentials, the TLS set-up or the URL are wrong (401, 403, 404,
    /// an untrusted certificate): retrying cannot help.
    Fatal(SinkError),
}

/// A remote-write client: the endpoint, its TLS settings and credentials.
pub struct RemoteWriter {
    agent: ureq::Agent,
    url: String,
    /// `Authorization` header (basic or bearer), never in the URL.
    auth: Option<Secret>,
}

impl RemoteWriter {
    /// The client `cfg` asks for (reads the password, token, CA and
    /// certificate files).
    pub fn new(cfg: &MetricsSinkConfig) -> Result<RemoteWriter, SinkError> {
        let token = secret_value(
            "metrics_sink.remote_write_bearer_token",
            &cfg.remote_write_bearer_token,
            &cfg.remote_write_bearer_token_file,
        )?;
        let auth = if !token.is_empty() {
            Some(Secret(format!("Bearer {}", token.0)))
        } else if !cfg.remote_write_username.is_empty() {
            let pw = secret_value(
                "metrics_sink.remote_write_password",
                &cfg.remote_write_password,
                &cfg.remote_write_password_file,
            )?;
            Some(basic_auth(&cfg.remote_write_username, &pw))
        } else {
            None
        };
        // Short: the sink's loop (and SIGTERM) waits for the push.
        let agent = cfg.remote_write_tls.agent(
            "metrics_sink.remote_write_tls",
            Duration::from_secs(5),
            Duration::from_secs(10),
        )?;
        Ok(RemoteWriter {
            agent,
            url: cfg.remote_write_url.clone(),
            auth,
        })
    }

    /// Pushes one request; a non-2xx answer is an error with Prometheus'
    /// reason, judged by the sinks' one retry-vs-fatal decision
    /// ([`crate::search::retry`]).
    pub fn push(&self, req: &WriteRequest) -> Result<(), PushError> {
        let body = encode(req).map_err(PushError::Retry)?;
        let err = |reason: String| SinkError::RemoteWrite {
            url: self.url.clone(),
            reason,
        };
        let mut r = self
            .agent
            .post(&self.url)
            .set("Content-Type", "application/x-protobuf")
            .set("Content-Encoding", "snappy")
            .set("X-Prometheus-Remote-Write-Version", "0.1.0");
        if let Some(auth) = &self.auth {
            r = r.set("Authorization", &auth.0);
        }
        match r.send_bytes(&body) {
            Ok(_) => Ok(()),
            Err(ureq::Error::Status(code, r)) => {
                let text = r.into_string().unwrap_or_default();
                // A TLS listener (Prometheus behind web.config.file) answers
                // plaintext with a bare 400 and closes the connection, its
                // text often lost to the reset: retrying cannot help.
                let go_tls = "Client sent an HTTP request to an HTTPS server";
                if code == 400
                    && self.url.starts_with("http://")
                    && (text.trim().is_empty() || text.contains(go_tls))
                {
                    return Err(PushError::Fatal(err(format!(
                        "HTTP 400: {} (is this a TLS port? use https://)",
                        if text.trim().is_empty() {
                            "no reason given"
                        } else {
                            go_tls
                        }
                    ))));
                }
                let e = err(format!("HTTP {code}: {}", text.trim()));
                match request_verdict(code) {
                    RequestVerdict::Fatal => Err(PushError::Fatal(e)),
                    _ => Err(PushError::Retry(e)),
                }
            }
            Err(ureq::Error::Transport(t)) => {
                let e = err(transport_reason(&t));
                match transport_verdict(&t, Contact::Running) {
                    RequestVerdict::Fatal => Err(PushError::Fatal(e)),
                    _ => Err(PushError::Retry(e)),
                }
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use prometheus::{IntCounterVec, Opts};

    #[test]
    fn registry_to_write_request_and_back() {
        let r = prometheus::Registry::new();
        let c = IntCounterVec::new(Opts::new("x_total", "x"), &["b", "a"]).unwrap();
        r.register(Box::new(c.clone())).unwrap();
        c.with_label_values(&["2", "1"]).inc_by(5);
        let req = write_request(&r, 1234);
        assert_eq!(req.timeseries.len(), 1);
        let names: Vec<(&str, &str)> = req.timeseries[0]
            .labels
            .iter()
            .map(|l| (l.name.as_str(), l.value.as_str()))
            .collect();
        assert_eq!(names, [("__name__", "x_total"), ("a", "1"), ("b", "2")]);
        assert_eq!(
            req.timeseries[0].samples,
            [Sample {
                value: 5.0,
                timestamp: 1234
            }]
        );
        let body = encode(&req).unwrap();
        let raw = snap::raw::Decoder::new().decompress_vec(&body).unwrap();
        assert_eq!(WriteRequest::decode(&raw[..]).unwrap(), req);
    }

    /// Serves one request with `status`; returns its header lines.
    fn one_request(status: u16) -> (String, std::thread::JoinHandle<Vec<String>>) {
        one_answer(format!(
            "HTTP/1.1 {status} X\r\nContent-Length: 12\r\nConnection: close\r\n\r\nUnauthorized"
        ))
    }

    /// Serves one request with `answer` (the whole response), then closes.
    fn one_answer(answer: String) -> (String, std::thread::JoinHandle<Vec<String>>) {
        use std::io::{BufRead, BufReader, Read, Write};
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/api/v1/write", l.local_addr().unwrap());
        let t = std::thread::spawn(move || {
            let (s, _) = l.accept().unwrap();
            let mut r = BufReader::new(s.try_clone().unwrap());
            let mut lines = Vec::new();
            let mut len = 0;
            loop {
                let mut line = String::new();
                r.read_line(&mut line).unwrap();
                let line = line.trim().to_owned();
                if line.is_empty() {
                    break;
                }
                if let Some(v) = line.strip_prefix("Content-Length: ") {
                    len = v.parse().unwrap();
                }
                lines.push(line);
            }
            let mut body = vec![0; len];
            r.read_exact(&mut body).unwrap();
            (&s).write_all(answer.as_bytes()).unwrap();
            lines
        });
        (url, t)
    }

    #[test]
    fn plaintext_to_a_tls_listener_is_fatal_and_says_so() {
        // What Go's TLS server (Prometheus with --web.config.file) answers
        // a plaintext request, with and without its text.
        for answer in [
            "HTTP/1.0 400 Bad Request\r\n\r\nClient sent an HTTP request to an HTTPS server.\n",
            "HTTP/1.0 400 Bad Request\r\n\r\n",
        ] {
            let (url, t) = one_answer(answer.to_owned());
            let w = RemoteWriter::new(&MetricsSinkConfig {
                remote_write_url: url.clone(),
                ..Default::default()
            })
            .unwrap();
            let e = match w.push(&WriteRequest::default()) {
                Err(PushError::Fatal(e)) => e.to_string(),
                other => panic!("{answer:?}: {other:?}"),
            };
            t.join().unwrap();
            assert!(
                e.starts_with(&format!("Prometheus remote write to {url}: HTTP 400: "))
                    && e.ends_with("(is this a TLS port? use https://)"),
                "{e}"
            );
        }
        // Prometheus' own 400 (a sample it refused) is still retried.
        let (url, t) = one_answer(
            "HTTP/1.1 400 X\r\nContent-Length: 17\r\nConnection: close\r\n\r\nout of order samp"
                .to_owned(),
        );
        let w = RemoteWriter::new(&MetricsSinkConfig {
            remote_write_url: url,
            ..Default::default()
        })
        .unwrap();
        assert!(matches!(
            w.push(&WriteRequest::default()),
            Err(PushError::Retry(_))
        ));
        t.join().unwrap();
    }

    #[test]
    fn a_bearer_token_from_a_file_is_a_header_and_a_401_is_fatal() {
        let dir = tempfile::tempdir().unwrap();
        let tok = dir.path().join("token");
        std::fs::write(&tok, "tok-Sekret-991\n").unwrap();
        let (url, t) = one_request(401);
        let w = RemoteWriter::new(&MetricsSinkConfig {
            remote_write_url: url.clone(),
            remote_write_bearer_token_file: tok.display().to_string(),
            ..Default::default()
        })
        .unwrap();
        let e = match w.push(&WriteRequest::default()) {
            Err(PushError::Fatal(e)) => e.to_string(),
            other => panic!("{other:?}"),
        };
        let lines = t.join().unwrap();
        assert!(
            lines.contains(&"Authorization: Bearer tok-Sekret-991".to_owned()),
            "{lines:?}"
        );
        assert_eq!(
            e,
            format!("Prometheus remote write to {url}: HTTP 401: Unauthorized")
        );
        // Unreachable now: retried, and the token is nowhere in the error.
        match w.push(&WriteRequest::default()) {
            Err(PushError::Retry(e)) => assert!(!e.to_string().contains("Sekret"), "{e}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_server_error_is_retried() {
        let (url, t) = one_request(503);
        let w = RemoteWriter::new(&MetricsSinkConfig {
            remote_write_url: url,
            remote_write_username: "m".into(),
            remote_write_password: Secret("pw".into()),
            ..Default::default()
        })
        .unwrap();
        assert!(matches!(
            w.push(&WriteRequest::default()),
            Err(PushError::Retry(_))
        ));
        let lines = t.join().unwrap();
        assert!(
            lines.contains(&"Authorization: Basic bTpwdw==".to_owned()),
            "{lines:?}"
        );
    }

    #[test]
    fn a_vanished_series_ends_with_a_staleness_marker_once() {
        let r = prometheus::Registry::new();
        let g = prometheus::IntGaugeVec::new(Opts::new("h", "h"), &["v"]).unwrap();
        r.register(Box::new(g.clone())).unwrap();
        g.with_label_values(&["1.0"]).set(2);
        g.with_label_values(&["2.0"]).set(1);
        let mut first = write_request(&r, 1000);
        let pushed = first.mark_vanished(&HashSet::new(), 1000);
        assert_eq!((first.timeseries.len(), pushed.len()), (2, 2));
        g.reset();
        g.with_label_values(&["2.0"]).set(3);
        let mut second = write_request(&r, 2000);
        let pushed = second.mark_vanished(&pushed, 2000);
        assert_eq!(pushed.len(), 1);
        let stale: Vec<_> = second
            .timeseries
            .iter()
            .filter(|t| t.samples[0].value.to_bits() == STALE_NAN_BITS)
            .collect();
        assert_eq!(stale.len(), 1);
        assert_eq!(stale[0].labels[1].value, "1.0");
        assert_eq!(stale[0].samples[0].timestamp, 2000);
        let mut third = write_request(&r, 3000);
        third.mark_vanished(&pushed, 3000);
        assert_eq!(third.timeseries.len(), 1, "the marker is sent once");
    }
}
