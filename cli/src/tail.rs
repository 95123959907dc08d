//! `pkgstream tail`: print the events of a topic as JSON lines.

use std::io::Write;
use std::time::{Duration, Instant};

use pkgstream_runtime::config::{KafkaConfig, LastCause};
use pkgstream_schemas::{Kind, Registry};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Message, Offset, TopicPartitionList};
use tracing::warn;

use crate::{render, CliError};

/// What to read.
pub struct TailOptions {
    /// The cluster and how to reach it.
    pub kafka: KafkaConfig,
    /// Topic to read.
    pub topic: String,
    /// Start at the beginning of every partition (else at the end).
    pub from_beginning: bool,
    /// Stop after this many events.
    pub max: Option<usize>,
    /// Stop when nothing arrived for this long.
    pub idle: Option<Duration>,
}

/// What `tail` saw.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct TailReport {
    /// Events printed.
    pub printed: usize,
    /// Messages that did not decode (reported on stderr, not printed).
    pub undecodable: usize,
}

/// Reads `opts.topic` without a consumer group (nothing is committed) and
/// writes one JSON object per event to `out`.
pub fn tail(opts: &TailOptions, out: &mut impl Write) -> Result<TailReport, CliError> {
    let consumer: BaseConsumer<LastCause> = opts
        .kafka
        .client_config()
        .map_err(|e| CliError::Kafka {
            brokers: opts.kafka.brokers.clone(),
            reason: e.to_string(),
        })?
        .set("group.id", crate::acls::TAIL_GROUP)
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed")
        .set("allow.auto.create.topics", "false")
        .create_with_context(LastCause::default())
        .map_err(|e| CliError::Kafka {
            brokers: opts.kafka.brokers.clone(),
            reason: e.to_string(),
        })?;
    let kafka = |reason: String| CliError::Kafka {
        brokers: opts.kafka.brokers.clone(),
        reason,
    };
    // A Kafka error with the cause the client last reported (a failed
    // authentication, an untrusted certificate, a TLS listener).
    let failed = |what: &str, e: &dyn std::fmt::Display| {
        kafka({
            // The client's errors and logs arrive with a poll.
            let _ = consumer.poll(Duration::from_millis(100));
            consumer.context().reason(&opts.kafka, what, e)
        })
    };
    let metadata = consumer
        .fetch_metadata(Some(&opts.topic), Duration::from_secs(10))
        .map_err(|e| failed("unreachable", &e))?;
    let topic = metadata.topics().first();
    if let Some(e) = topic.and_then(|t| t.error()) {
        let code = rdkafka::types::RDKafkaErrorCode::from(e);
        if code != rdkafka::types::RDKafkaErrorCode::UnknownTopicOrPartition {
            return Err(kafka(format!("topic {}: {code}", opts.topic)));
        }
    }
    let partitions = topic
        .filter(|t| t.error().is_none())
        .map_or(0, |t| t.partitions().len());
    if partitions == 0 {
        return Err(CliError::NoSuchTopic {
            topic: opts.topic.clone(),
            brokers: opts.kafka.brokers.clone(),
        });
    }
    let mut tpl = TopicPartitionList::new();
    let start = if opts.from_beginning {
        Offset::Beginning
    } else {
        Offset::End
    };
    for p in 0..partitions as i32 {
        tpl.add_partition_offset(&opts.topic, p, start)
            .map_err(|e| kafka(e.to_string()))?;
    }
    consumer.assign(&tpl).map_err(|e| kafka(e.to_string()))?;

    let mut report = TailReport::default();
    let mut last = Instant::now();
    while opts.max.is_none_or(|m| report.printed < m) {
        match consumer.poll(Duration::from_millis(200)) {
            Some(Ok(m)) => {
                last = Instant::now();
                let bytes = m.payload().unwrap_or_default();
                let rendered = Registry::get()
                    .writer_of(bytes)
                    .and_then(|(v, _)| match v.kind {
                        Kind::PackageChange => {
                            pkgstream_schemas::decode_change(bytes).map(|c| render::change(&c))
                        }
                        Kind::InventorySnapshot => {
                            pkgstream_schemas::decode_snapshot(bytes).map(|s| render::snapshot(&s))
                        }
                        Kind::EnrichedChange => pkgstream_schemas::decode_enriched_change(bytes)
                            .map(|e| render::enriched_change(e)),
                        Kind::EnrichedSnapshot => {
                            pkgstream_schemas::decode_enriched_snapshot(bytes)
                                .map(|e| render::enriched_snapshot(e))
                        }
                    });
                match rendered {
                    Ok(v) => {
                        let _ = writeln!(out, "{v}");
                        report.printed += 1;
                    }
                    Err(e) => {
                        warn!(topic = %opts.topic, partition = m.partition(), offset = m.offset(), error = %e, "undecodable message");
                        report.undecodable += 1;
                    }
                }
            }
            Some(Err(e)) => return Err(failed("reading", &e)),
            None if opts.idle.is_some_and(|idle| last.elapsed() >= idle) => break,
            None => {}
        }
    }
    Ok(report)
}
