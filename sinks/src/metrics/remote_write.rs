//! Prometheus remote write 1.0: the registry's counters and gauges as a
//! `WriteRequest` (protobuf, the message types of `prompb/remote.proto` and
//! `types.proto` declared with prost), snappy block-compressed, POSTed.

use std::time::Duration;

use prometheus::proto::MetricType;
use prost::Message;

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

/// The HTTP body: protobuf, snappy block format.
pub fn encode(req: &WriteRequest) -> Result<Vec<u8>, SinkError> {
    snap::raw::Encoder::new()
        .compress_vec(&req.encode_to_vec())
        .map_err(|e| SinkError::Io(format!("snappy: {e}")))
}

/// Pushes one request; a non-2xx answer is an error with Prometheus' reason.
pub fn push(agent: &ureq::Agent, url: &str, req: &WriteRequest) -> Result<(), SinkError> {
    let body = encode(req)?;
    let err = |reason: String| SinkError::RemoteWrite {
        url: url.to_owned(),
        reason,
    };
    match agent
        .post(url)
        .timeout(Duration::from_secs(30))
        .set("Content-Type", "application/x-protobuf")
        .set("Content-Encoding", "snappy")
        .set("X-Prometheus-Remote-Write-Version", "0.1.0")
        .send_bytes(&body)
    {
        Ok(_) => Ok(()),
        Err(ureq::Error::Status(code, r)) => Err(err(format!(
            "HTTP {code}: {}",
            r.into_string().unwrap_or_default().trim()
        ))),
        Err(ureq::Error::Transport(t)) => Err(err(t.to_string())),
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
}
