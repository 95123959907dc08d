//! The search sink's loop. One thread polls the enriched topic and hands
//! each message to lane `partition % lanes` over a bounded channel; when a
//! lane's channel is full the consumer pauses its partitions (it keeps
//! polling, so it stays in the group) until there is room again. Each lane
//! batches by count, bytes and time, posts one bulk at a time, retries only
//! the items the engine rejected for now (429/5xx) with jittered backoff,
//! sends events it rejected for good to the DLQ, and only then stores the
//! offsets of the batch. Offsets are auto-committed from that store, so a
//! crash re-reads at most the batches not yet acknowledged, and the
//! idempotent ids make that harmless. One partition is in one lane, so one
//! host's events are applied in order.
//!
//! Here: the consumer loop, readiness (Kafka answers, no lane waits for the
//! engine), lane supervision (a lane that dies stops the sink), and the
//! sink's metrics. A lane itself is in [`super::lane`].

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{sync_channel, SyncSender, TrySendError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use pkgstream_runtime::config::{KafkaConfig, TopicsConfig};
use pkgstream_runtime::health::Readiness;
use pkgstream_runtime::shutdown::Shutdown;
use prometheus::{
    Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry as PromRegistry,
};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::{ClientContext, Message};
use tracing::{debug, error, info, info_span, warn};

use super::client::{CallError, EngineClient};
use super::documents::Indices;
use super::lane::{ms, sleep_unless, Batch, Lane, LaneStop, Mode, Msg};
use super::retry::backoff;
use super::setup::setup;
use crate::config::SearchSinkConfig;
use crate::dlq::Dlq;
use crate::SinkError;

/// The search sink's metrics (`pkgstream_search_sink_*`).
pub struct SearchSinkMetrics {
    /// The registry `/metrics` serves.
    pub registry: PromRegistry,
    /// Events handled, by outcome (`indexed`, `dlq`).
    pub events: IntCounterVec,
    /// Bulk requests, by outcome (`ok`, `partial`, `failed`).
    pub bulk_requests: IntCounterVec,
    /// Items sent again: rejected for now (429/5xx/conflict), or behind
    /// such an item on the same document.
    pub items_retried: IntCounter,
    /// Bulk round trip time.
    pub bulk_seconds: Histogram,
    /// Inventory snapshots reconciled.
    pub snapshots: IntCounter,
    /// Chunked snapshots whose last chunk came without all earlier ones
    /// (nothing deleted; see `search::chunks`).
    pub snapshots_incomplete: IntCounter,
    /// 1 while the last request reached the engine.
    pub engine_up: IntGauge,
}

impl SearchSinkMetrics {
    /// Registers every metric in a fresh registry.
    pub fn new() -> Result<SearchSinkMetrics, prometheus::Error> {
        let registry = PromRegistry::new();
        let events = IntCounterVec::new(
            Opts::new(
                "pkgstream_search_sink_events_total",
                "Enriched events handled, by outcome",
            ),
            &["outcome"],
        )?;
        let bulk_requests = IntCounterVec::new(
            Opts::new(
                "pkgstream_search_sink_bulk_requests_total",
                "Bulk requests, by outcome",
            ),
            &["outcome"],
        )?;
        let items_retried = IntCounter::new(
            "pkgstream_search_sink_items_retried_total",
            "Bulk items sent again after 429, 5xx or a version conflict",
        )?;
        let bulk_seconds = Histogram::with_opts(
            HistogramOpts::new(
                "pkgstream_search_sink_bulk_seconds",
                "Bulk request round trip",
            )
            .buckets(vec![0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0]),
        )?;
        let snapshots = IntCounter::new(
            "pkgstream_search_sink_snapshots_total",
            "Inventory snapshots reconciled into the package state",
        )?;
        let snapshots_incomplete = IntCounter::new(
            "pkgstream_search_sink_snapshots_incomplete_total",
            "Chunked snapshots whose last chunk came without every earlier one: upserted, nothing deleted",
        )?;
        let engine_up = IntGauge::new(
            "pkgstream_search_sink_engine_up",
            "1 while the search engine answers, 0 while it does not",
        )?;
        registry.register(Box::new(events.clone()))?;
        registry.register(Box::new(bulk_requests.clone()))?;
        registry.register(Box::new(items_retried.clone()))?;
        registry.register(Box::new(bulk_seconds.clone()))?;
        registry.register(Box::new(snapshots.clone()))?;
        registry.register(Box::new(snapshots_incomplete.clone()))?;
        registry.register(Box::new(engine_up.clone()))?;
        Ok(SearchSinkMetrics {
            registry,
            events,
            bulk_requests,
            items_retried,
            bulk_seconds,
            snapshots,
            snapshots_incomplete,
            engine_up,
        })
    }
}

/// Everything the search sink needs.
pub struct SearchSink {
    /// `[kafka]`.
    pub kafka: KafkaConfig,
    /// `[topics]`: reads `changes_enriched`, writes `dlq`.
    pub topics: TopicsConfig,
    /// `[search_sink]`.
    pub config: SearchSinkConfig,
    /// Metrics to update.
    pub metrics: Arc<SearchSinkMetrics>,
    /// Set once the engine is set up and the consumer subscribed.
    pub ready: Readiness,
}

/// Logs rebalances.
pub(super) struct Ctx;
impl ClientContext for Ctx {}
impl ConsumerContext for Ctx {
    fn post_rebalance(&self, _: &BaseConsumer<Self>, r: &Rebalance<'_>) {
        match r {
            Rebalance::Assign(tpl) => info!(partitions = tpl.count(), "partitions assigned"),
            Rebalance::Revoke(tpl) => info!(partitions = tpl.count(), "partitions revoked"),
            Rebalance::Error(e) => warn!(error = %e, "rebalance error"),
        }
    }
}

/// The sink's consumer (shared by the loop and the lanes, which store offsets).
pub(super) type SinkConsumer = BaseConsumer<Ctx>;

impl SearchSink {
    /// Sets the engine up (waiting while it is unreachable), then runs the
    /// loop until `shutdown`; on return every acknowledged batch's offsets
    /// are committed. Ready (`/readyz`) only while it can make progress:
    /// Kafka answers, no lane is waiting for the engine, every lane runs.
    /// A lane that dies (an error retrying cannot fix, or a panic) stops
    /// the sink with that lane's error.
    pub fn run(&self, shutdown: &Shutdown) -> Result<(), SinkError> {
        let cfg = &self.config;
        let client = EngineClient::new(cfg)?;
        let idx = Indices::new(&cfg.index_prefix);
        self.ready.set(false);
        let mut attempt = 0;
        let lifecycle = loop {
            match setup(&client, &idx, cfg) {
                Ok(l) => break l,
                Err(CallError::Fatal(e)) => return Err(e),
                Err(CallError::Retry(why)) => {
                    self.metrics.engine_up.set(0);
                    warn!(error = %why, attempt, "search engine not ready, waiting");
                    if !sleep_unless(
                        shutdown,
                        backoff(attempt, ms(cfg.retry_initial_ms), ms(cfg.retry_max_ms)),
                    ) {
                        return Ok(());
                    }
                    attempt += 1;
                }
            }
        };
        self.metrics.engine_up.set(1);
        info!(?lifecycle, prefix = cfg.index_prefix, "indices ready");
        loop {
            match self.consume(&client, &idx, shutdown)? {
                Life::Stopped => return Ok(()),
                Life::Lost(why) => {
                    // librdkafka makes a static member's consumer unusable
                    // for good when the coordinator fenced it (e.g. after
                    // a broker outage longer than the session timeout): a
                    // fresh consumer with the same instance id takes the
                    // partitions back from the committed offsets; what the
                    // lanes indexed since is indexed again, idempotently.
                    warn!(error = %why, "the Kafka consumer is lost: starting a fresh one");
                    if !sleep_unless(shutdown, Duration::from_secs(1)) {
                        return Ok(());
                    }
                }
            }
        }
    }

    /// One consumer's life: consume until `shutdown`, a lane dies, or the
    /// consumer hits a fatal Kafka error ([`Life::Lost`]).
    fn consume(
        &self,
        client: &EngineClient,
        idx: &Indices,
        shutdown: &Shutdown,
    ) -> Result<Life, SinkError> {
        let cfg = &self.config;
        // The lanes of this life stop when it ends; SIGTERM ends it.
        let life = Shutdown::default();
        let brokers = &self.kafka.brokers;
        let instance = cfg.effective_instance_id();
        let consumer: Arc<SinkConsumer> = Arc::new(
            self.kafka
                .client_config()
                .map_err(|e| kafka_err(brokers, "client configuration", e))?
                .set("group.id", &cfg.group_id)
                // Static membership: a restarted instance takes its
                // partitions back at once instead of after the session
                // timeout (the old member is replaced, not waited for).
                .set("group.instance.id", &instance)
                // A static member that stops for good (scale-down) hands
                // its partitions over after this long.
                .set("session.timeout.ms", "10000")
                .set("enable.auto.commit", "true")
                .set("auto.commit.interval.ms", "1000")
                .set("enable.auto.offset.store", "false")
                .set("auto.offset.reset", "earliest")
                .set("isolation.level", "read_committed")
                .set("queued.max.messages.kbytes", "32768")
                .create_with_context(Ctx)
                .map_err(|e| kafka_err(brokers, "creating the consumer", e))?,
        );
        let topic = self.topics.changes_enriched.clone();
        consumer
            .subscribe(&[&topic])
            .map_err(|e| kafka_err(brokers, "subscribing", e))?;
        let dlq = Arc::new(Dlq::new(&self.kafka, &self.topics.dlq)?);

        // Bytes handed to lanes and not yet taken into a batch: with the
        // channels' message count, this bounds memory for large events
        // (inventory snapshots) as well as small ones.
        let queued = Arc::new(AtomicUsize::new(0));
        let budget = cfg.batch_bytes.saturating_mul(cfg.lanes);
        let engine_down: Arc<[AtomicBool]> =
            (0..cfg.lanes).map(|_| AtomicBool::new(false)).collect();
        let mut senders: Vec<SyncSender<Msg>> = Vec::new();
        let mut lanes = LaneSet::default();
        for id in 0..cfg.lanes {
            let (tx, rx) = sync_channel(cfg.batch_events.min(10_000));
            senders.push(tx);
            let mut lane = Lane {
                id,
                client: client.clone(),
                idx: idx.clone(),
                cfg: cfg.clone(),
                topic: topic.clone(),
                mode: Mode::Live {
                    consumer: consumer.clone(),
                    dlq: dlq.clone(),
                },
                metrics: self.metrics.clone(),
                engine_down: engine_down.clone(),
                shutdown: life.clone(),
                batch: Batch::default(),
                queued: queued.clone(),
                chunks: Default::default(),
            };
            lanes.spawn(id, move || match lane.run(rx) {
                Ok(()) | Err(LaneStop::Interrupted) => Ok(()),
                Err(LaneStop::Fatal(e)) => Err(e),
            })?;
        }
        info!(
            topic,
            group = cfg.group_id,
            instance,
            lanes = cfg.lanes,
            "search sink running"
        );

        let mut kafka = KafkaProbe::new(consumer.clone(), &topic);
        let mut failure: Option<SinkError> = None;
        let mut lost: Option<SinkError> = None;
        let mut held: VecDeque<Msg> = VecDeque::new();
        let mut paused = false;
        while !shutdown.requested() {
            if let Some(e) = lanes.dead(&life) {
                error!(error = %e, "a lane died: stopping the sink");
                failure = Some(e);
                break;
            }
            if let Some((code, reason)) = consumer.client().fatal_error() {
                lost = Some(kafka_err(
                    brokers,
                    &format!("consuming as group.instance.id '{instance}'"),
                    format!("{code:?}: {reason}"),
                ));
                break;
            }
            let waiting = engine_down.iter().any(|d| d.load(Ordering::Relaxed));
            self.ready.set(kafka.reachable() && !waiting);
            while let Some(m) = held.pop_front() {
                let len = m.payload.len();
                let now = queued.load(Ordering::Relaxed);
                if now > 0 && now + len > budget {
                    held.push_front(m);
                    break;
                }
                let lane = m.partition.rem_euclid(senders.len() as i32) as usize;
                match senders[lane].try_send(m) {
                    Ok(()) => {
                        queued.fetch_add(len, Ordering::Relaxed);
                    }
                    Err(TrySendError::Full(m)) | Err(TrySendError::Disconnected(m)) => {
                        // A disconnected lane is dead: `lanes.dead` says why.
                        held.push_front(m);
                        break;
                    }
                }
            }
            if !held.is_empty() {
                // Again on every round: partitions assigned meanwhile start
                // unpaused, and `held` must not grow with their messages.
                set_paused(&consumer, true);
                if !paused {
                    debug!(held = held.len(), "lanes full: partitions paused");
                }
                paused = true;
            } else if paused {
                set_paused(&consumer, false);
                paused = false;
            }
            match consumer.poll(Duration::from_millis(if held.is_empty() {
                200
            } else {
                20
            })) {
                Some(Ok(m)) => held.push_back(Msg {
                    partition: m.partition(),
                    offset: m.offset(),
                    key: m.key().map(<[u8]>::to_vec),
                    payload: m.payload().unwrap_or_default().to_vec(),
                }),
                Some(Err(e)) => warn!(error = %e, "consumer error"),
                None => {}
            }
        }
        self.ready.set(false);
        // Every lane stops: at SIGTERM after its batch in hand; after a
        // lane died, at once if it waits for the engine.
        life.request();
        info!("shutting down: finishing the batches in hand");
        drop(senders);
        let joined = lanes.join(&life);
        if let Err(e) = consumer.commit_consumer_state(CommitMode::Sync) {
            debug!(error = %e, "final commit (nothing stored since the last one?)");
        }
        match (failure.or(joined), lost) {
            (Some(e), _) => Err(e),
            (None, Some(why)) => Ok(Life::Lost(why)),
            (None, None) => Ok(Life::Stopped),
        }
    }
}

/// How a consumer's life ended.
enum Life {
    /// At shutdown.
    Stopped,
    /// The consumer hit a fatal Kafka error (why): a fresh one takes over.
    Lost(SinkError),
}

/// Whether Kafka answers: the enriched topic's metadata, asked at most
/// every 5 s (a broker that is down costs the poll loop up to 2 s per ask).
struct KafkaProbe {
    consumer: Arc<SinkConsumer>,
    topic: String,
    last: Option<Instant>,
    ok: bool,
}

impl KafkaProbe {
    fn new(consumer: Arc<SinkConsumer>, topic: &str) -> KafkaProbe {
        KafkaProbe {
            consumer,
            topic: topic.to_owned(),
            last: None,
            ok: false,
        }
    }

    fn reachable(&mut self) -> bool {
        if self
            .last
            .is_some_and(|t| t.elapsed() < Duration::from_secs(5))
        {
            return self.ok;
        }
        let first = self.last.is_none();
        self.last = Some(Instant::now());
        let answer = match self
            .consumer
            .fetch_metadata(Some(&self.topic), Duration::from_secs(2))
        {
            Ok(md) => match md.topics().first() {
                Some(t) if t.error().is_none() && !t.partitions().is_empty() => Ok(()),
                Some(t) => Err(format!("topic {}: {:?}", self.topic, t.error())),
                None => Err(format!("topic {} not in the metadata", self.topic)),
            },
            Err(e) => Err(e.to_string()),
        };
        match (&answer, self.ok) {
            (Ok(()), false) => info!(topic = self.topic, "Kafka answers: ready"),
            (Err(e), true) => {
                warn!(error = %e, topic = self.topic, "Kafka does not answer: not ready")
            }
            (Err(e), false) if first => {
                warn!(error = %e, topic = self.topic, "Kafka does not answer yet: not ready")
            }
            (Err(e), false) => {
                debug!(error = %e, topic = self.topic, "Kafka still does not answer")
            }
            (Ok(()), true) => {}
        }
        self.ok = answer.is_ok();
        self.ok
    }
}

/// The lane threads, watched: a lane that stops while the sink runs is
/// fatal (its partitions would go unindexed), whether it returned an error
/// or panicked.
#[derive(Default)]
struct LaneSet {
    handles: Vec<Option<JoinHandle<Result<(), SinkError>>>>,
}

impl LaneSet {
    /// Starts lane `id` on its own thread.
    fn spawn(
        &mut self,
        id: usize,
        f: impl FnOnce() -> Result<(), SinkError> + Send + 'static,
    ) -> Result<(), SinkError> {
        let h = std::thread::Builder::new()
            .name(format!("search-lane-{id}"))
            .spawn(move || {
                let _span = info_span!("lane", lane = id).entered();
                f()
            })
            .map_err(|e| SinkError::Io(format!("spawning a lane thread: {e}")))?;
        self.handles.push(Some(h));
        Ok(())
    }

    /// A lane that has stopped (joined): its error, a panic as an error,
    /// or — unless shutdown was requested — the fact that it stopped.
    fn dead(&mut self, shutdown: &Shutdown) -> Option<SinkError> {
        let lane = self
            .handles
            .iter()
            .position(|h| h.as_ref().is_some_and(JoinHandle::is_finished))?;
        let h = self.handles[lane].take()?;
        lane_result(lane, h.join(), shutdown).err()
    }

    /// Waits for every lane; the first error.
    fn join(self, shutdown: &Shutdown) -> Option<SinkError> {
        let mut first = None;
        for (lane, h) in self.handles.into_iter().enumerate() {
            if let Some(h) = h {
                if let Err(e) = lane_result(lane, h.join(), shutdown) {
                    first.get_or_insert(e);
                }
            }
        }
        first
    }
}

fn lane_result(
    lane: usize,
    joined: std::thread::Result<Result<(), SinkError>>,
    shutdown: &Shutdown,
) -> Result<(), SinkError> {
    match joined {
        Ok(Ok(())) if shutdown.requested() => Ok(()),
        Ok(Ok(())) => Err(SinkError::LaneDied {
            lane,
            reason: "stopped while the sink was running".into(),
        }),
        Ok(Err(e)) => Err(e),
        Err(panic) => Err(SinkError::LaneDied {
            lane,
            reason: format!(
                "panicked: {}",
                panic
                    .downcast_ref::<&str>()
                    .map(|s| (*s).to_owned())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "(no message)".into())
            ),
        }),
    }
}

fn set_paused(consumer: &SinkConsumer, pause: bool) {
    let Ok(tpl) = consumer.assignment() else {
        return;
    };
    let r = if pause {
        consumer.pause(&tpl)
    } else {
        consumer.resume(&tpl)
    };
    if let Err(e) = r {
        warn!(error = %e, pause, "cannot pause/resume partitions");
    }
}

fn kafka_err(brokers: &str, what: &str, e: impl std::fmt::Display) -> SinkError {
    SinkError::Kafka {
        brokers: brokers.to_owned(),
        what: what.to_owned(),
        reason: e.to_string(),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// Polls `lanes.dead` for up to 10 s.
    fn wait_dead(lanes: &mut LaneSet, sd: &Shutdown) -> Option<SinkError> {
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(10) {
            if let Some(e) = lanes.dead(sd) {
                return Some(e);
            }
            std::thread::sleep(ms(10));
        }
        None
    }

    fn until_shutdown(sd: Shutdown) -> impl FnOnce() -> Result<(), SinkError> {
        move || {
            while !sd.requested() {
                std::thread::sleep(ms(10));
            }
            Ok(())
        }
    }

    #[test]
    fn a_lane_that_panics_is_a_fatal_error_naming_the_lane() {
        let sd = Shutdown::default();
        let mut lanes = LaneSet::default();
        lanes.spawn(0, until_shutdown(sd.clone())).unwrap();
        lanes
            .spawn(1, || -> Result<(), SinkError> { panic!("boom in lane 1") })
            .unwrap();
        let e = wait_dead(&mut lanes, &sd).unwrap();
        assert!(
            matches!(&e, SinkError::LaneDied { lane: 1, reason } if reason == "panicked: boom in lane 1"),
            "{e}"
        );
        assert_eq!(
            e.to_string(),
            "search sink lane 1 died: panicked: boom in lane 1"
        );
        // The others stop at shutdown, without an error of their own.
        sd.request();
        assert!(lanes.join(&sd).is_none());
    }

    #[test]
    fn a_lane_error_is_the_sinks_error() {
        let sd = Shutdown::default();
        let mut lanes = LaneSet::default();
        lanes.spawn(0, until_shutdown(sd.clone())).unwrap();
        lanes
            .spawn(1, || {
                Err(SinkError::Engine {
                    url: "http://e:9200".into(),
                    what: "bulk".into(),
                    reason: "HTTP 403: security_exception: no permissions".into(),
                })
            })
            .unwrap();
        let e = wait_dead(&mut lanes, &sd).unwrap();
        assert!(e.to_string().contains("HTTP 403"), "{e}");
        sd.request();
        assert!(lanes.join(&sd).is_none());
    }

    #[test]
    fn a_lane_that_stops_on_its_own_is_dead_unless_shutting_down() {
        let sd = Shutdown::default();
        let mut lanes = LaneSet::default();
        lanes.spawn(0, || Ok(())).unwrap();
        let e = wait_dead(&mut lanes, &sd).unwrap();
        assert!(e.to_string().contains("lane 0 died: stopped"), "{e}");
        let mut lanes = LaneSet::default();
        lanes.spawn(0, || Ok(())).unwrap();
        sd.request();
        std::thread::sleep(ms(100));
        assert!(lanes.dead(&sd).is_none());
        assert!(lanes.join(&sd).is_none());
    }
}
