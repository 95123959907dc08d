//! The dead-letter producer both sinks share: the original bytes, with the
//! reason and the source position in headers (the same header names the
//! router uses).

use std::time::Duration;

use pkgstream_runtime::config::KafkaConfig;
use pkgstream_runtime::delivery::DeliveryFailures;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{BaseRecord, Producer, ThreadedProducer};

use crate::SinkError;

/// Longest reason kept in a dead letter's header (and in logs): an engine
/// repeats the offending value, and a 100 KB package name must not make a
/// 100 KB header. Longer reasons keep their start and end ([`elide`]).
pub const MAX_REASON_BYTES: usize = 1024;

/// `s` if it fits in `max` bytes, else its start and end around
/// `…(N bytes)…`, cut on character boundaries.
pub fn elide(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let marker = format!(" …({} bytes)… ", s.len());
    let room = max.saturating_sub(marker.len());
    let mut head = room * 2 / 3;
    while !s.is_char_boundary(head) {
        head -= 1;
    }
    let mut tail = s.len() - (room - head);
    while !s.is_char_boundary(tail) {
        tail += 1;
    }
    format!("{}{marker}{}", &s[..head], &s[tail..])
}

/// One event for the DLQ.
pub struct DeadLetter<'a> {
    /// Topic it was read from.
    pub topic: &'a str,
    /// Partition it was read from.
    pub partition: i32,
    /// Offset it was read at.
    pub offset: i64,
    /// Its key.
    pub key: Option<&'a [u8]>,
    /// Its bytes, unchanged.
    pub payload: &'a [u8],
    /// Machine-readable code (`index_rejected`, `undecodable`,
    /// `empty_snapshot`).
    pub code: &'a str,
    /// What the engine or the decoder said.
    pub reason: &'a str,
}

/// An idempotent producer to the DLQ topic.
pub struct Dlq {
    producer: ThreadedProducer<DeliveryFailures>,
    topic: String,
    brokers: String,
}

impl Dlq {
    /// A producer for `topic` on the cluster of `kafka`.
    pub fn new(kafka: &KafkaConfig, topic: &str) -> Result<Dlq, SinkError> {
        let brokers = &kafka.brokers;
        let producer = kafka
            .client_config()
            .map_err(|e| SinkError::Kafka {
                brokers: brokers.to_owned(),
                what: "client configuration".into(),
                reason: e.to_string(),
            })?
            .set("enable.idempotence", "true")
            .set("linger.ms", "5")
            .create_with_context(DeliveryFailures::default())
            .map_err(|e| SinkError::Kafka {
                brokers: brokers.to_owned(),
                what: "creating the DLQ producer".into(),
                reason: e.to_string(),
            })?;
        Ok(Dlq {
            producer,
            topic: topic.to_owned(),
            brokers: brokers.to_owned(),
        })
    }

    /// Queues one dead letter (waits while the local queue is full).
    pub fn send(&self, d: &DeadLetter<'_>) -> Result<(), SinkError> {
        let reason = elide(d.reason, MAX_REASON_BYTES);
        let headers =
            pkgstream_runtime::dlq::headers(d.code, &reason, d.topic, d.partition, d.offset);
        let mut record = BaseRecord::to(&self.topic)
            .payload(d.payload)
            .headers(headers);
        if let Some(k) = d.key {
            record = record.key(k);
        }
        loop {
            match self.producer.send(record) {
                Ok(()) => return Ok(()),
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                    record = r;
                    std::thread::sleep(Duration::from_millis(50));
                }
                Err((e, _)) => {
                    return Err(SinkError::Kafka {
                        brokers: self.brokers.clone(),
                        what: format!("producing to the DLQ topic {}", self.topic),
                        reason: e.to_string(),
                    })
                }
            }
        }
    }

    /// Waits until every queued dead letter is delivered; an error if
    /// Kafka refused any (then the caller must not store its offsets).
    pub fn flush(&self) -> Result<(), SinkError> {
        let err = |reason: String| SinkError::Kafka {
            brokers: self.brokers.clone(),
            what: format!("delivering to the DLQ topic {}", self.topic),
            reason,
        };
        self.producer
            .flush(Duration::from_secs(60))
            .map_err(|e| err(e.to_string()))?;
        match self.producer.context().take() {
            Some((n, reason)) => Err(err(format!("{n} not delivered: {reason}"))),
            None => Ok(()),
        }
    }
}
