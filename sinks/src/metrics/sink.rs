//! The metrics sink's loop. It reads every partition of the enriched topic
//! from the beginning at start-up to rebuild the watch-list state (the
//! drift gauges), but counts in the counters only the events past the
//! offsets it committed last time, so a restart neither loses nor counts
//! twice; Prometheus sees an ordinary counter reset. Every
//! `push_interval_secs` it recomputes the gauges, pushes everything by
//! remote write and commits how far it counted. One instance serves the
//! whole fleet: its state is a few entries per host.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use pkgstream_runtime::config::{KafkaConfig, TopicsConfig};
use pkgstream_runtime::health::Readiness;
use pkgstream_runtime::shutdown::Shutdown;
use pkgstream_schemas::{decode_enriched_change, decode_enriched_snapshot, Kind, Registry};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};
use tracing::{debug, info, warn};

use super::fleet::FleetMetrics;
use super::remote_write::{push, write_request, SeriesKey};
use crate::config::MetricsSinkConfig;
use crate::SinkError;

/// Everything the metrics sink needs.
pub struct MetricsSink {
    /// `[kafka]`.
    pub kafka: KafkaConfig,
    /// `[topics]`: reads `changes_enriched`.
    pub topics: TopicsConfig,
    /// `[metrics_sink]`.
    pub config: MetricsSinkConfig,
    /// The series (shared with `/metrics`).
    pub metrics: Arc<std::sync::Mutex<FleetMetrics>>,
    /// Set once caught up with the topic.
    pub ready: Readiness,
}

impl MetricsSink {
    /// Runs until `shutdown`, then pushes and commits once more.
    pub fn run(&self, shutdown: &Shutdown) -> Result<(), SinkError> {
        let brokers = &self.kafka.brokers;
        let topic = &self.topics.changes_enriched;
        let kerr = |what: &str, e: rdkafka::error::KafkaError| SinkError::Kafka {
            brokers: brokers.clone(),
            what: what.to_owned(),
            reason: e.to_string(),
        };
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", brokers)
            .set("group.id", &self.config.group_id)
            .set("enable.auto.commit", "false")
            .set("isolation.level", "read_committed")
            .set("queued.max.messages.kbytes", "16384")
            .create()
            .map_err(|e| kerr("creating the consumer", e))?;
        let timeout = Duration::from_secs(30);
        let md = consumer
            .fetch_metadata(Some(topic), timeout)
            .map_err(|e| kerr("reading topic metadata", e))?;
        let partitions: Vec<i32> = md
            .topics()
            .iter()
            .flat_map(|t| t.partitions().iter().map(|p| p.id()))
            .collect();
        if partitions.is_empty() {
            return Err(SinkError::Kafka {
                brokers: brokers.clone(),
                what: format!("topic {topic}"),
                reason: "does not exist or has no partitions".into(),
            });
        }
        let mut tpl = TopicPartitionList::new();
        for &p in &partitions {
            tpl.add_partition(topic, p);
        }
        let committed = consumer
            .committed_offsets(tpl, timeout)
            .map_err(|e| kerr("reading committed offsets", e))?;
        // Events below these offsets were counted by an earlier run.
        let mut counted_from: HashMap<i32, i64> = HashMap::new();
        for e in committed.elements() {
            if let Offset::Offset(o) = e.offset() {
                counted_from.insert(e.partition(), o);
            }
        }
        let mut assign = TopicPartitionList::new();
        for &p in &partitions {
            let _ = assign.add_partition_offset(topic, p, Offset::Beginning);
        }
        consumer
            .assign(&assign)
            .map_err(|e| kerr("assigning partitions", e))?;
        info!(
            topic,
            partitions = partitions.len(),
            ?counted_from,
            "metrics sink rebuilding state from the beginning"
        );

        let agent = ureq::AgentBuilder::new()
            .timeout_connect(Duration::from_secs(5))
            .build();
        let interval = Duration::from_secs(self.config.push_interval_secs);
        let mut next: HashMap<i32, i64> = HashMap::new();
        let mut last_push = Instant::now();
        let mut pushed: HashSet<SeriesKey> = HashSet::new();
        loop {
            let stop = shutdown.requested();
            if stop || last_push.elapsed() >= interval {
                self.push_and_commit(&agent, &consumer, topic, &next, &counted_from, &mut pushed);
                last_push = Instant::now();
                if stop {
                    return Ok(());
                }
            }
            let Some(r) = consumer.poll(Duration::from_millis(200)) else {
                self.ready.set(true);
                continue;
            };
            let m = match r {
                Ok(m) => m,
                Err(e) => {
                    warn!(error = %e, "consumer error");
                    continue;
                }
            };
            let payload = m.payload().unwrap_or_default();
            let count = m.offset() >= counted_from.get(&m.partition()).copied().unwrap_or(0);
            next.insert(m.partition(), m.offset() + 1);
            let mut fleet = self.metrics.lock().unwrap_or_else(|p| p.into_inner());
            let outcome = match Registry::get().writer_of(payload).map(|(v, _)| v.kind) {
                Ok(Kind::EnrichedSnapshot) => match decode_enriched_snapshot(payload) {
                    Ok(s) => {
                        fleet.snapshot(&s);
                        "snapshot"
                    }
                    Err(_) => "undecodable",
                },
                _ => match decode_enriched_change(payload) {
                    Ok(c) => {
                        fleet.change(&c, count);
                        if count {
                            "counted"
                        } else {
                            "state_only"
                        }
                    }
                    Err(e) => {
                        debug!(partition = m.partition(), offset = m.offset(), error = %e, "undecodable event skipped (the search sink sends it to the DLQ)");
                        "undecodable"
                    }
                },
            };
            fleet.events.with_label_values(&[outcome]).inc();
        }
    }

    fn push_and_commit(
        &self,
        agent: &ureq::Agent,
        consumer: &BaseConsumer,
        topic: &str,
        next: &HashMap<i32, i64>,
        counted_from: &HashMap<i32, i64>,
        pushed: &mut HashSet<SeriesKey>,
    ) {
        let now_ms = chrono::Utc::now().timestamp_millis();
        let mut req = {
            let fleet = self.metrics.lock().unwrap_or_else(|p| p.into_inner());
            fleet.refresh_gauges();
            write_request(&fleet.registry, now_ms)
        };
        let current = req.mark_vanished(pushed, now_ms);
        if !self.config.remote_write_url.is_empty() {
            let outcome = match push(agent, &self.config.remote_write_url, &req) {
                Ok(()) => {
                    debug!(
                        series = req.timeseries.len(),
                        ended = req.timeseries.len() - current.len(),
                        "pushed"
                    );
                    *pushed = current;
                    "ok"
                }
                Err(e) => {
                    warn!(error = %e, "remote write failed; the next push carries the same counters");
                    "failed"
                }
            };
            let fleet = self.metrics.lock().unwrap_or_else(|p| p.into_inner());
            fleet.pushes.with_label_values(&[outcome]).inc();
            if outcome != "ok" {
                // Not committed: what was counted since is counted again
                // after a restart rather than never reaching Prometheus.
                return;
            }
        }
        if next.is_empty() {
            return;
        }
        let mut tpl = TopicPartitionList::new();
        for (&p, &o) in next {
            // Never behind what an earlier run counted, even mid-rebuild.
            let o = o.max(counted_from.get(&p).copied().unwrap_or(0));
            let _ = tpl.add_partition_offset(topic, p, Offset::Offset(o));
        }
        if let Err(e) = consumer.commit(&tpl, CommitMode::Sync) {
            warn!(error = %e, "cannot commit how far the counters went");
        }
    }
}
