//! The metrics sink's loop. It reads every partition of the enriched topic
//! from the beginning at start-up to rebuild the watch-list state (the
//! drift gauges), but counts in the counters only the events past the
//! offsets it committed last time, so a restart neither loses nor counts
//! twice; Prometheus sees an ordinary counter reset. One instance serves
//! the whole fleet: its state is a few entries per host.
//!
//! - Start: while Kafka is unreachable, the topic missing or the group
//!   coordinator not ready, it waits (capped backoff, a warning per
//!   attempt, not ready) and SIGTERM ends the wait with exit 0. It notes
//!   where each partition ends at that moment.
//! - Catching up: it has caught up once it has read every partition up to
//!   that end. Until then it neither pushes nor commits, so Prometheus never
//!   sees half-rebuilt gauges (a restart mid-rebuild recounts from the last
//!   commit: nothing lost, nothing twice).
//! - Then, at once and every `push_interval_secs`, it recomputes the gauges,
//!   pushes everything by remote write and commits how far it counted.
//! - `/readyz` ([`Health`]): ready once caught up and a push went through
//!   (when remote write is configured); not ready again while Kafka has not
//!   answered, or pushes have failed, for longer than `unready_after_secs`.
//!   Kafka is asked (a metadata request) whenever no message came for 2 s.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use pkgstream_runtime::config::{KafkaConfig, TopicsConfig};
use pkgstream_runtime::health::Readiness;
use pkgstream_runtime::shutdown::Shutdown;
use pkgstream_schemas::{decode_enriched_change, decode_enriched_snapshot, Kind, Registry};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext};
use rdkafka::error::KafkaError;
use rdkafka::{ClientContext, Message, Offset, TopicPartitionList};
use tracing::{debug, error, info, trace, warn};

use super::fleet::FleetMetrics;
use super::remote_write::{write_request, PushError, RemoteWriter, SeriesKey};
use crate::config::MetricsSinkConfig;
use crate::search::retry::backoff;
use crate::SinkError;

/// Timeout of one request to Kafka while starting or probing: short, so
/// that SIGTERM is served within seconds even while Kafka does not answer
/// (librdkafka keeps connecting in the background meanwhile).
const KAFKA_TIMEOUT: Duration = Duration::from_secs(3);
/// First and longest wait between two attempts to start.
const RETRY_INITIAL: Duration = Duration::from_millis(500);
const RETRY_MAX: Duration = Duration::from_secs(10);
/// Kafka is asked whether it answers after this long without a message.
const PROBE_IDLE: Duration = Duration::from_secs(2);
/// How long the last commit and the consumer's close may take at shutdown.
const FINISH_WAIT: Duration = Duration::from_secs(3);

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
    /// What `/readyz` answers (see [`Health`]).
    pub ready: Readiness,
}

/// Logs librdkafka's client errors as warnings (the sink waits through
/// all of them), except its end-of-partition events, which the sink asks
/// for to know when it has caught up, and "broker down" events, which come
/// by the dozen per second while Kafka is away: the sink says that itself
/// ("waiting", "not ready: Kafka does not answer").
struct Ctx;

impl ClientContext for Ctx {
    fn error(&self, error: KafkaError, reason: &str) {
        use rdkafka::types::RDKafkaErrorCode as Code;
        match error.rdkafka_error_code() {
            Some(Code::PartitionEOF) => trace!(reason, "end of partition"),
            Some(Code::AllBrokersDown | Code::BrokerTransportFailure) => {
                debug!(error = %error, reason, "Kafka client error")
            }
            _ => warn!(error = %error, reason, "Kafka client error"),
        }
    }
}
impl ConsumerContext for Ctx {}

type MetricsConsumer = BaseConsumer<Ctx>;

/// Where the sink starts, read from Kafka before it assigns itself the
/// partitions.
#[derive(Debug)]
struct StartPoint {
    partitions: Vec<i32>,
    /// Events below these offsets were counted by an earlier run.
    counted_from: HashMap<i32, i64>,
    /// Partition → its end offset at the start, for every partition that
    /// holds anything to read: caught up once this is empty.
    behind: HashMap<i32, i64>,
}

impl MetricsSink {
    /// Waits for Kafka, catches up, then runs until `shutdown`, then
    /// pushes and commits once more (if it had caught up). Errors only on
    /// what waiting cannot fix (a consumer that cannot be created).
    pub fn run(&self, shutdown: &Shutdown) -> Result<(), SinkError> {
        self.ready.set(false);
        self.metrics
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .set_max_versions(self.config.max_versions_per_group);
        let topic = &self.topics.changes_enriched;
        let consumer: Arc<MetricsConsumer> = Arc::new(
            self.kafka
                .client_config()
                .map_err(|e| self.kafka_err("client configuration", e))?
                .set("group.id", &self.config.group_id)
                .set("enable.auto.commit", "false")
                .set("enable.partition.eof", "true")
                .set("isolation.level", "read_committed")
                .set("queued.max.messages.kbytes", "16384")
                .create_with_context(Ctx)
                .map_err(|e| self.kafka_err("creating the consumer", e))?,
        );
        let Some(start) = self.wait_for_kafka(&consumer, shutdown) else {
            info!("shutdown requested while waiting for Kafka");
            return Ok(());
        };
        let mut assign = TopicPartitionList::new();
        for &p in &start.partitions {
            let _ = assign.add_partition_offset(topic, p, Offset::Beginning);
        }
        consumer
            .assign(&assign)
            .map_err(|e| self.kafka_err("assigning partitions", e))?;
        info!(
            topic,
            partitions = start.partitions.len(),
            counted_from = ?start.counted_from,
            ends = ?start.behind,
            "metrics sink rebuilding state from the beginning"
        );
        let StartPoint {
            counted_from,
            mut behind,
            ..
        } = start;

        let writer = RemoteWriter::new(&self.config)?;
        let interval = Duration::from_secs(self.config.push_interval_secs);
        let started = Instant::now();
        let mut health = Health::new(
            Duration::from_secs(self.config.unready_after_secs),
            !self.config.remote_write_url.is_empty(),
            started,
        );
        let mut next: HashMap<i32, i64> = HashMap::new();
        let mut last_push: Option<Instant> = None;
        let mut pushed: HashSet<SeriesKey> = HashSet::new();
        let mut was_ready = health.ready(started);
        loop {
            if !health.caught_up && behind.is_empty() {
                health.caught_up = true;
                info!(
                    seconds = started.elapsed().as_secs_f64(),
                    "caught up with the topic as it was at the start"
                );
            }
            let stop = shutdown.requested();
            if stop {
                self.ready.set(false);
            }
            let due = last_push.is_none_or(|t| t.elapsed() >= interval);
            if health.caught_up && (stop || due) {
                let began = Instant::now();
                let ok = self.push(&writer, &mut pushed)?;
                health.pushed(ok, began);
                last_push = Some(began);
                // Committed only after a successful push: what was counted
                // since is counted again after a restart rather than never
                // reaching Prometheus.
                let tpl = ok
                    .then(|| commit_list(topic, &next, &counted_from))
                    .flatten();
                if stop {
                    finish(consumer, tpl);
                    return Ok(());
                }
                if let Some(Err(e)) = tpl.map(|t| consumer.commit(&t, CommitMode::Async)) {
                    // A failed asynchronous commit is logged by librdkafka
                    // (COMMITFAIL); the next push commits again.
                    warn!(error = %e, "cannot commit how far the counters went");
                }
            }
            if stop {
                finish(consumer, None);
                return Ok(());
            }

            match consumer.poll(Duration::from_millis(200)) {
                Some(Ok(m)) => {
                    health.kafka_seen = Instant::now();
                    let (partition, offset) = (m.partition(), m.offset());
                    if behind.get(&partition).is_some_and(|&end| offset + 1 >= end) {
                        behind.remove(&partition);
                    }
                    let count = offset >= counted_from.get(&partition).copied().unwrap_or(0);
                    next.insert(partition, offset + 1);
                    self.apply(partition, offset, m.payload().unwrap_or_default(), count);
                }
                Some(Err(KafkaError::PartitionEOF(p))) => {
                    health.kafka_seen = Instant::now();
                    behind.remove(&p);
                }
                // Logged by `Ctx`.
                Some(Err(e)) => debug!(error = %e, "consumer error"),
                None => {}
            }
            // After a long push too: Kafka is judged on a fresh answer.
            if health.kafka_seen.elapsed() >= PROBE_IDLE {
                match consumer.fetch_metadata(Some(topic), KAFKA_TIMEOUT) {
                    Ok(_) => health.kafka_seen = Instant::now(),
                    Err(e) => debug!(error = %e, "Kafka does not answer"),
                }
            }
            let now_ready = health.ready(Instant::now());
            if now_ready != was_ready {
                match now_ready {
                    Ok(()) => info!("ready"),
                    Err(reason) => warn!(reason, "not ready"),
                }
                was_ready = now_ready;
            }
            self.ready.set(now_ready.is_ok());
        }
    }

    /// Applies one event to the series and counts its outcome.
    fn apply(&self, partition: i32, offset: i64, payload: &[u8], count: bool) {
        let mut fleet = self.metrics.lock().unwrap_or_else(|p| p.into_inner());
        let outcome = match Registry::get().writer_of(payload).map(|(v, _)| v.kind) {
            Ok(Kind::EnrichedSnapshot) => match decode_enriched_snapshot(payload) {
                Ok(s) if fleet.snapshot(&s) => "snapshot",
                // A chunk out of order: its snapshot is not applied.
                Ok(_) => "snapshot_incomplete",
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
                    debug!(partition, offset, error = %e, "undecodable event skipped (the search sink sends it to the DLQ)");
                    "undecodable"
                }
            },
        };
        fleet.events.with_label_values(&[outcome]).inc();
    }

    fn kafka_err(&self, what: &str, e: impl std::fmt::Display) -> SinkError {
        SinkError::Kafka {
            brokers: self.kafka.brokers.clone(),
            what: what.to_owned(),
            reason: e.to_string(),
        }
    }

    /// Reads the start point, retrying with capped backoff for as long as
    /// Kafka does not give it; `None` when shutdown was requested first.
    fn wait_for_kafka(
        &self,
        consumer: &MetricsConsumer,
        shutdown: &Shutdown,
    ) -> Option<StartPoint> {
        let mut attempt = 0;
        loop {
            if shutdown.requested() {
                return None;
            }
            match self.start_point(consumer, shutdown) {
                Ok(s) => return Some(s),
                Err(e) => {
                    let wait = backoff(attempt, RETRY_INITIAL, RETRY_MAX);
                    warn!(error = %e, attempt, retry_in_ms = wait.as_millis() as u64, "cannot start reading the topic yet; waiting");
                    if !wait_serving(consumer, shutdown, wait) {
                        return None;
                    }
                    attempt = attempt.saturating_add(1);
                }
            }
        }
    }

    /// The partitions, what earlier runs counted and where each partition
    /// ends now.
    fn start_point(
        &self,
        consumer: &MetricsConsumer,
        shutdown: &Shutdown,
    ) -> Result<StartPoint, SinkError> {
        let topic = &self.topics.changes_enriched;
        let md = consumer
            .fetch_metadata(Some(topic), KAFKA_TIMEOUT)
            .map_err(|e| self.kafka_err("reading topic metadata", e))?;
        let partitions: Vec<i32> = md
            .topics()
            .iter()
            .flat_map(|t| t.partitions().iter().map(|p| p.id()))
            .collect();
        if partitions.is_empty() {
            return Err(self.kafka_err(
                &format!("topic {topic}"),
                "does not exist (yet) or has no partitions",
            ));
        }
        let mut tpl = TopicPartitionList::new();
        for &p in &partitions {
            tpl.add_partition(topic, p);
        }
        let committed = consumer
            .committed_offsets(tpl, KAFKA_TIMEOUT)
            .map_err(|e| self.kafka_err("reading committed offsets", e))?;
        let mut counted_from = HashMap::new();
        for e in committed.elements() {
            if let Offset::Offset(o) = e.offset() {
                counted_from.insert(e.partition(), o);
            }
        }
        let mut behind = HashMap::new();
        for &p in &partitions {
            if shutdown.requested() {
                return Err(SinkError::Io("interrupted".into()));
            }
            let (low, high) = consumer
                .fetch_watermarks(topic, p, KAFKA_TIMEOUT)
                .map_err(|e| self.kafka_err(&format!("reading the end of partition {p}"), e))?;
            if high > low {
                behind.insert(p, high);
            }
        }
        Ok(StartPoint {
            partitions,
            counted_from,
            behind,
        })
    }

    /// Recomputes the gauges and pushes them (when remote write is
    /// configured); false when the push failed for now, an error when it
    /// cannot succeed (credentials, TLS, URL).
    fn push(
        &self,
        writer: &RemoteWriter,
        pushed: &mut HashSet<SeriesKey>,
    ) -> Result<bool, SinkError> {
        let now_ms = chrono::Utc::now().timestamp_millis();
        let mut req = {
            let fleet = self.metrics.lock().unwrap_or_else(|p| p.into_inner());
            fleet.refresh_gauges();
            write_request(&fleet.registry, now_ms)
        };
        let current = req.mark_vanished(pushed, now_ms);
        if self.config.remote_write_url.is_empty() {
            return Ok(true);
        }
        let ok = match writer.push(&req) {
            Ok(()) => {
                debug!(
                    series = req.timeseries.len(),
                    ended = req.timeseries.len() - current.len(),
                    "pushed"
                );
                *pushed = current;
                true
            }
            Err(PushError::Retry(e)) => {
                warn!(error = %e, "remote write failed; the next push carries the same counters");
                false
            }
            Err(PushError::Fatal(e)) => {
                error!(error = %e, "remote write refused: stopping the metrics sink");
                return Err(e);
            }
        };
        let fleet = self.metrics.lock().unwrap_or_else(|p| p.into_inner());
        fleet
            .pushes
            .with_label_values(&[if ok { "ok" } else { "failed" }])
            .inc();
        Ok(ok)
    }
}

/// How far the counters went, never behind what an earlier run counted
/// (even mid-rebuild); `None` when nothing was read.
fn commit_list(
    topic: &str,
    next: &HashMap<i32, i64>,
    counted_from: &HashMap<i32, i64>,
) -> Option<TopicPartitionList> {
    if next.is_empty() {
        return None;
    }
    let mut tpl = TopicPartitionList::new();
    for (&p, &o) in next {
        let o = o.max(counted_from.get(&p).copied().unwrap_or(0));
        let _ = tpl.add_partition_offset(topic, p, Offset::Offset(o));
    }
    Some(tpl)
}

/// At shutdown: the last commit (synchronous) and the consumer's close,
/// waited for at most [`FINISH_WAIT`] together: librdkafka waits for the
/// group coordinator without bound in both, and SIGTERM must be served
/// promptly whatever Kafka does. The process exits right after, so what
/// did not finish is cut short; an unanswered commit means its events are
/// counted again after a restart.
fn finish(consumer: Arc<MetricsConsumer>, tpl: Option<TopicPartitionList>) {
    let started = Instant::now();
    let has_commit = tpl.is_some();
    let (tx, rx) = std::sync::mpsc::channel();
    let spawned = std::thread::Builder::new()
        .name("finish".into())
        .spawn(move || {
            if let Some(tpl) = tpl {
                let _ = tx.send(Some(consumer.commit(&tpl, CommitMode::Sync)));
            }
            drop(consumer);
            let _ = tx.send(None);
        });
    if let Err(e) = spawned {
        warn!(error = %e, "cannot commit how far the counters went");
        return;
    }
    let mut answered = !has_commit;
    loop {
        match rx.recv_timeout(FINISH_WAIT.saturating_sub(started.elapsed())) {
            Ok(Some(Ok(()))) => {
                answered = true;
                debug!("committed how far the counters went");
            }
            Ok(Some(Err(e))) => {
                answered = true;
                warn!(error = %e, "cannot commit how far the counters went; a restart counts those events again");
            }
            Ok(None) => {
                info!(seconds = started.elapsed().as_secs_f64(), "stopped");
                return;
            }
            Err(_) if answered => {
                info!("the Kafka consumer did not close in time; exiting anyway");
                return;
            }
            Err(_) => {
                warn!("Kafka did not answer the last commit in time; a restart counts the events since the previous commit again");
                return;
            }
        }
    }
}

/// Waits `d`, polling the (not yet assigned) consumer in small steps so
/// that the error events librdkafka queues while Kafka is away are served
/// (logged by [`Ctx`]) and dropped instead of piling up; false if shutdown
/// was requested meanwhile.
fn wait_serving(consumer: &MetricsConsumer, shutdown: &Shutdown, d: Duration) -> bool {
    let end = Instant::now() + d;
    while Instant::now() < end {
        if shutdown.requested() {
            return false;
        }
        let _ = consumer.poll((end - Instant::now()).min(Duration::from_millis(100)));
    }
    !shutdown.requested()
}

/// What `/readyz` answers, from what the loop saw: ready once caught up
/// with the topic and (with remote write) a push went through; not ready
/// while Kafka has not answered, or pushes have failed, for longer than
/// `bound`.
#[derive(Debug)]
pub struct Health {
    bound: Duration,
    remote_write: bool,
    /// Every partition read up to where it ended at the start.
    pub caught_up: bool,
    /// Kafka's last answer (a message, an end of partition, metadata).
    pub kafka_seen: Instant,
    pushed_once: bool,
    push_failing_since: Option<Instant>,
}

impl Health {
    /// Not caught up, Kafka seen at `now`, nothing pushed.
    pub fn new(bound: Duration, remote_write: bool, now: Instant) -> Health {
        Health {
            bound,
            remote_write,
            caught_up: false,
            kafka_seen: now,
            pushed_once: false,
            push_failing_since: None,
        }
    }

    /// Records a push's outcome.
    pub fn pushed(&mut self, ok: bool, now: Instant) {
        if ok {
            self.pushed_once = true;
            self.push_failing_since = None;
        } else if self.push_failing_since.is_none() {
            self.push_failing_since = Some(now);
        }
    }

    /// Ready, or why not.
    pub fn ready(&self, now: Instant) -> Result<(), &'static str> {
        if !self.caught_up {
            return Err("catching up with the topic");
        }
        if now.saturating_duration_since(self.kafka_seen) > self.bound {
            return Err("Kafka does not answer");
        }
        if self.remote_write {
            if !self.pushed_once {
                return Err("no push has reached the remote-write endpoint yet");
            }
            if self
                .push_failing_since
                .is_some_and(|t| now.saturating_duration_since(t) > self.bound)
            {
                return Err("pushes to the remote-write endpoint keep failing");
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn ready_only_caught_up_and_pushed_and_not_while_a_failure_outlasts_the_bound() {
        let t0 = Instant::now();
        let mut h = Health::new(30 * S, true, t0);
        assert!(h.ready(t0).is_err(), "not caught up");
        h.caught_up = true;
        assert!(h.ready(t0).is_err(), "no push yet");
        h.pushed(false, t0);
        assert!(h.ready(t0 + S).is_err(), "the first push failed");
        h.pushed(true, t0 + 2 * S);
        assert_eq!(h.ready(t0 + 2 * S), Ok(()));
        // Pushes fail from 10 s on: still ready at 40 s, not at 41 s.
        h.kafka_seen = t0 + 40 * S;
        h.pushed(false, t0 + 10 * S);
        h.pushed(false, t0 + 25 * S);
        assert_eq!(h.ready(t0 + 40 * S), Ok(()));
        assert!(h.ready(t0 + 41 * S).is_err());
        h.pushed(true, t0 + 42 * S);
        assert_eq!(h.ready(t0 + 42 * S), Ok(()));
        // Kafka silent for longer than the bound.
        assert!(h.ready(t0 + 71 * S).is_err());
        h.kafka_seen = t0 + 71 * S;
        assert_eq!(h.ready(t0 + 71 * S), Ok(()));
    }

    #[test]
    fn without_remote_write_caught_up_and_kafka_suffice() {
        let t0 = Instant::now();
        let mut h = Health::new(5 * S, false, t0);
        assert!(h.ready(t0).is_err());
        h.caught_up = true;
        assert_eq!(h.ready(t0 + 5 * S), Ok(()));
        assert!(h.ready(t0 + 6 * S).is_err());
    }
}
