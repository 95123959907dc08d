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
//! [`AuditIndexer`] drives one lane without a consumer for `pkgstream
//! replay --format index`: history documents only, no offsets, refused
//! events returned to the caller.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use pkgstream_runtime::config::{KafkaConfig, TopicsConfig};
use pkgstream_runtime::health::Readiness;
use pkgstream_runtime::shutdown::Shutdown;
use pkgstream_schemas::{
    decode_enriched_change, decode_enriched_snapshot, EnrichedSnapshot, Kind, Registry,
};
use prometheus::{
    Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry as PromRegistry,
};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::{ClientConfig, ClientContext, Message, Offset, TopicPartitionList};
use serde_json::json;
use tracing::{debug, error, info, info_span, warn};

use super::client::{BulkAnswer, CallError, EngineClient};
use super::documents::{
    change_items, history_item, host_update, oversized_id, snapshot_items, IndexedPackage, Indices,
    ItemKind,
};
use super::plan::{Answer, BulkPlan, ItemOutcome, Step};
use super::retry::{backoff, item_verdict, ItemVerdict};
use super::setup::{setup, setup_history};
use crate::config::SearchSinkConfig;
use crate::dlq::{elide, MAX_REASON_BYTES};
use crate::dlq::{DeadLetter, Dlq};
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
        let engine_up = IntGauge::new(
            "pkgstream_search_sink_engine_up",
            "1 while the search engine answers, 0 while it does not",
        )?;
        registry.register(Box::new(events.clone()))?;
        registry.register(Box::new(bulk_requests.clone()))?;
        registry.register(Box::new(items_retried.clone()))?;
        registry.register(Box::new(bulk_seconds.clone()))?;
        registry.register(Box::new(snapshots.clone()))?;
        registry.register(Box::new(engine_up.clone()))?;
        Ok(SearchSinkMetrics {
            registry,
            events,
            bulk_requests,
            items_retried,
            bulk_seconds,
            snapshots,
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
struct Ctx;
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

type SinkConsumer = BaseConsumer<Ctx>;

/// A message copied out of the consumer.
struct Msg {
    partition: i32,
    offset: i64,
    key: Option<Vec<u8>>,
    payload: Vec<u8>,
}

/// What stopped a lane.
enum LaneStop {
    /// Shutdown while the engine was unreachable: the batch was not
    /// acknowledged, its offsets not stored (it is read again next time).
    Interrupted,
    /// An error retrying cannot fix.
    Fatal(SinkError),
}

impl From<SinkError> for LaneStop {
    fn from(e: SinkError) -> Self {
        LaneStop::Fatal(e)
    }
}

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

        let brokers = &self.kafka.brokers;
        let instance = cfg.effective_instance_id();
        let consumer: Arc<SinkConsumer> = Arc::new(
            ClientConfig::new()
                .set("bootstrap.servers", brokers)
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
        let dlq = Arc::new(Dlq::new(brokers, &self.topics.dlq)?);

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
                shutdown: shutdown.clone(),
                batch: Batch::default(),
                queued: queued.clone(),
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
        let mut held: VecDeque<Msg> = VecDeque::new();
        let mut paused = false;
        while !shutdown.requested() {
            if let Some(e) = lanes.dead(shutdown) {
                error!(error = %e, "a lane died: stopping the sink");
                failure = Some(e);
                break;
            }
            if let Some((code, reason)) = consumer.client().fatal_error() {
                failure = Some(kafka_err(
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
        shutdown.request();
        info!("shutting down: finishing the batches in hand");
        drop(senders);
        let joined = lanes.join(shutdown);
        if let Err(e) = consumer.commit_consumer_state(CommitMode::Sync) {
            debug!(error = %e, "final commit (nothing stored since the last one?)");
        }
        match failure.or(joined) {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
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

fn ms(v: u64) -> Duration {
    Duration::from_millis(v)
}

/// Sleeps `d` in small steps; false if shutdown was requested meanwhile.
fn sleep_unless(shutdown: &Shutdown, d: Duration) -> bool {
    let end = Instant::now() + d;
    while Instant::now() < end {
        if shutdown.requested() {
            return false;
        }
        std::thread::sleep((end - Instant::now()).min(ms(100)));
    }
    !shutdown.requested()
}

/// One bulk item: its bytes in the body, its kind, its message, and a
/// hash of its action line (same index and `_id` → same target).
struct Item {
    start: usize,
    end: usize,
    kind: ItemKind,
    msg: usize,
    target: u64,
}

/// The batch a lane is building.
#[derive(Default)]
struct Batch {
    body: Vec<u8>,
    items: Vec<Item>,
    msgs: Vec<Msg>,
    /// Per message: why it goes to the DLQ (code, reason).
    rejected: Vec<Option<(&'static str, String)>>,
    /// Per host: the message with its latest event (one host update per batch).
    hosts: HashMap<String, (i64, usize)>,
    started: Option<Instant>,
}

impl Batch {
    fn push_msg(&mut self, m: Msg) -> usize {
        self.started.get_or_insert_with(Instant::now);
        self.msgs.push(m);
        self.rejected.push(None);
        self.msgs.len() - 1
    }

    /// Records the items written to `body` since `start` (two lines each).
    fn note_items(&mut self, start: usize, kinds: &[ItemKind], msg: usize) {
        let mut pos = start;
        for &kind in kinds {
            let mut newlines = self.body[pos..]
                .iter()
                .enumerate()
                .filter(|(_, b)| **b == b'\n')
                .map(|(i, _)| pos + i + 1);
            let action_end = newlines.next().unwrap_or(self.body.len());
            let end = newlines.next().unwrap_or(self.body.len());
            let mut h = std::hash::DefaultHasher::new();
            std::hash::Hash::hash(&self.body[pos..action_end], &mut h);
            let target = std::hash::Hasher::finish(&h);
            self.items.push(Item {
                start: pos,
                end,
                kind,
                msg,
                target,
            });
            pos = end;
        }
    }

    fn clear(&mut self) {
        self.body.clear();
        self.items.clear();
        self.msgs.clear();
        self.rejected.clear();
        self.hosts.clear();
        self.started = None;
    }
}

/// Where a lane's finished batches go.
enum Mode {
    /// The live sink: every index; rejected events to the DLQ, then the
    /// batch's offsets stored in the consumer group.
    Live {
        consumer: Arc<SinkConsumer>,
        dlq: Arc<Dlq>,
    },
    /// An audit replay ([`AuditIndexer`]): the history documents only;
    /// rejected events kept for the caller's report, no offsets.
    Audit {
        rejected: Vec<AuditRejection>,
        duplicates: u64,
    },
}

struct Lane {
    id: usize,
    client: EngineClient,
    idx: Indices,
    cfg: SearchSinkConfig,
    topic: String,
    mode: Mode,
    metrics: Arc<SearchSinkMetrics>,
    /// Per lane: waiting for the engine (its last request got no answer).
    engine_down: Arc<[AtomicBool]>,
    shutdown: Shutdown,
    batch: Batch,
    /// Bytes queued for lanes (see `SearchSink::run`).
    queued: Arc<AtomicUsize>,
}

impl Lane {
    fn run(&mut self, rx: Receiver<Msg>) -> Result<(), LaneStop> {
        let linger = ms(self.cfg.batch_ms);
        loop {
            let wait = match self.batch.started {
                Some(t) => linger.saturating_sub(t.elapsed()),
                None => ms(500),
            };
            match rx.recv_timeout(wait) {
                Ok(m) => {
                    self.queued.fetch_sub(m.payload.len(), Ordering::Relaxed);
                    self.add(m)?;
                    if self.batch.msgs.len() >= self.cfg.batch_events
                        || self.batch.body.len() >= self.cfg.batch_bytes
                    {
                        self.flush()?;
                    }
                }
                Err(RecvTimeoutError::Timeout) => {
                    if self.batch.started.is_some_and(|t| t.elapsed() >= linger) {
                        self.flush()?;
                    }
                }
                Err(RecvTimeoutError::Disconnected) => {
                    self.flush()?;
                    return Ok(());
                }
            }
        }
    }

    /// Adds one message to the batch (a snapshot is reconciled at once,
    /// after flushing what came before it).
    fn add(&mut self, m: Msg) -> Result<(), LaneStop> {
        let audit = matches!(self.mode, Mode::Audit { .. });
        let kind = Registry::get().writer_of(&m.payload).map(|(v, _)| v.kind);
        if let (Ok(Kind::EnrichedSnapshot), false) = (&kind, audit) {
            self.flush()?;
            return self.reconcile(m);
        }
        let b = &mut self.batch;
        let i = b.push_msg(m);
        let payload = &b.msgs[i].payload;
        match decode_enriched_change(payload) {
            Ok(c) if audit => {
                let start = b.body.len();
                history_item(&mut b.body, &self.idx, &c);
                b.note_items(start, &[ItemKind::Change], i);
            }
            Ok(c) => {
                if let Some(reason) = oversized_id(&c.host.machine_id, [&c.package]) {
                    b.rejected[i] = Some(("index_rejected", reason));
                    return Ok(());
                }
                let start = b.body.len();
                let kinds = change_items(&mut b.body, &self.idx, &c);
                let host = b
                    .hosts
                    .entry(c.host.machine_id.to_string())
                    .or_insert((c.event_time, i));
                if c.event_time >= host.0 {
                    *host = (c.event_time, i);
                }
                b.note_items(start, &kinds, i);
            }
            Err(e) => {
                let reason = match kind {
                    Ok(k) => format!("{} is not an enriched change or snapshot: {e}", k.name()),
                    Err(_) => e.to_string(),
                };
                b.rejected[i] = Some(("undecodable", reason));
            }
        }
        Ok(())
    }

    /// Replaces the host's package state with its snapshot's. An empty
    /// snapshot is not believed (an installed system always has packages:
    /// the host read the wrong rpmdb): the state is kept and the snapshot
    /// goes to the DLQ (`empty_snapshot`).
    fn reconcile(&mut self, m: Msg) -> Result<(), LaneStop> {
        let i = self.batch.push_msg(m);
        let payload = std::mem::take(&mut self.batch.msgs[i].payload);
        let result = match decode_enriched_snapshot(&payload) {
            Ok(s) if s.packages.is_empty() => {
                warn!(
                    host = %s.host.hostname,
                    machine_id = %s.host.machine_id,
                    "empty inventory snapshot: the host's package state is kept, the snapshot goes to the DLQ"
                );
                Err((
                    "empty_snapshot",
                    format!(
                        "inventory snapshot of host {} ({}) lists no package: its package state is kept \
                         (an installed system always has packages: does the host read the right rpmdb?)",
                        s.host.hostname, s.host.machine_id
                    ),
                ))
            }
            Ok(s) => match oversized_id(&s.host.machine_id, &s.packages) {
                Some(reason) => Err(("index_rejected", reason)),
                None => {
                    let indexed = self.with_retry(|lane| lane.indexed_packages(&s))?;
                    let start = self.batch.body.len();
                    let (n, facts) = snapshot_items(&mut self.batch.body, &self.idx, &s, &indexed);
                    let mut kinds = vec![ItemKind::Package; n];
                    kinds.push(ItemKind::Host);
                    self.batch.note_items(start, &kinds, i);
                    info!(host = %s.host.hostname, packages = facts.count, drift = facts.drift, "snapshot reconciled");
                    Ok(())
                }
            },
            Err(e) => Err(("undecodable", e.to_string())),
        };
        self.batch.msgs[i].payload = payload;
        match result {
            Ok(()) => self.metrics.snapshots.inc(),
            Err(rejected) => self.batch.rejected[i] = Some(rejected),
        }
        self.flush()
    }

    /// The host's package documents as indexed now (after a refresh).
    fn indexed_packages(
        &self,
        s: &EnrichedSnapshot<'_>,
    ) -> Result<BTreeMap<String, IndexedPackage>, CallError> {
        let packages = self.idx.packages();
        self.client
            .json("POST", &format!("/{packages}/_refresh"), None)?;
        let mut out = BTreeMap::new();
        let mut after: Option<serde_json::Value> = None;
        loop {
            let mut q = json!({
                "size": 5000,
                "query": {"term": {"host.id": s.host.machine_id}},
                "_source": ["package.evr", "package.evr_sort", "event_time_us"],
                "sort": [{"package.name": "asc"}, {"package.architecture": "asc"}]
            });
            if let Some(a) = &after {
                q["search_after"] = a.clone();
            }
            let r = self.client.json(
                "POST",
                &format!("/{packages}/_search?filter_path=hits.hits._id,hits.hits._source,hits.hits.sort"),
                Some(&q),
            )?;
            let hits = r["hits"]["hits"].as_array().cloned().unwrap_or_default();
            for h in &hits {
                if let (Some(id), Some(evr), Some(t)) = (
                    h["_id"].as_str(),
                    h["_source"]["package"]["evr"].as_str(),
                    h["_source"]["event_time_us"].as_i64(),
                ) {
                    out.insert(
                        id.to_owned(),
                        IndexedPackage {
                            evr: evr.to_owned(),
                            evr_sort: h["_source"]["package"]["evr_sort"]
                                .as_str()
                                .unwrap_or_default()
                                .to_owned(),
                            event_time_us: t,
                        },
                    );
                }
            }
            if hits.len() < 5000 {
                return Ok(out);
            }
            after = hits.last().map(|h| h["sort"].clone());
        }
    }

    /// Runs `f` until it succeeds, waiting out an unreachable engine.
    fn with_retry<T>(
        &self,
        mut f: impl FnMut(&Self) -> Result<T, CallError>,
    ) -> Result<T, LaneStop> {
        let mut attempt = 0;
        loop {
            match f(self) {
                Ok(v) => {
                    self.engine_answered(true);
                    return Ok(v);
                }
                Err(CallError::Fatal(e)) => return Err(LaneStop::Fatal(e)),
                Err(CallError::Retry(why)) => {
                    self.engine_answered(false);
                    warn!(lane = self.id, attempt, error = %why, "search engine unavailable, retrying");
                }
            }
            if !sleep_unless(&self.shutdown, self.backoff(attempt)) {
                return Err(LaneStop::Interrupted);
            }
            attempt += 1;
        }
    }

    /// Records whether the engine answered the lane's last request.
    fn engine_answered(&self, up: bool) {
        self.metrics.engine_up.set(i64::from(up));
        if let Some(d) = self.engine_down.get(self.id) {
            d.store(!up, Ordering::Relaxed);
        }
    }

    fn backoff(&self, attempt: u32) -> Duration {
        backoff(
            attempt,
            ms(self.cfg.retry_initial_ms),
            ms(self.cfg.retry_max_ms),
        )
    }

    /// Sends the batch until every item is applied or rejected for good,
    /// sends rejected events to the DLQ, then stores the batch's offsets.
    fn flush(&mut self) -> Result<(), LaneStop> {
        if self.batch.msgs.is_empty() {
            return Ok(());
        }
        // One host-document update per host: its latest event in the batch
        // (an audit batch has none: it writes history only).
        let hosts: Vec<(i64, usize)> = match self.mode {
            Mode::Live { .. } => self.batch.hosts.values().copied().collect(),
            Mode::Audit { .. } => Vec::new(),
        };
        for (_, i) in hosts {
            let start = self.batch.body.len();
            if let Ok(c) = decode_enriched_change(&self.batch.msgs[i].payload) {
                host_update(
                    &mut self.batch.body,
                    &self.idx,
                    &c.host,
                    &c.enrichment,
                    c.event_time,
                    None,
                );
                self.batch.note_items(start, &[ItemKind::Host], i);
            }
        }
        let total = self.batch.items.len();
        let mut plan = BulkPlan::new(self.batch.items.iter().map(|it| it.target).collect());
        // Items of a request that failed as a whole (a timeout): the engine
        // may have applied them, so a later 409 may be our own write.
        let mut maybe_applied: HashSet<usize> = HashSet::new();
        let mut attempt = 0;
        loop {
            let sent = match plan.next_step() {
                Step::Done => break,
                Step::Send(sent) => sent,
                Step::Backoff => {
                    let retry = plan.take_deferred();
                    self.metrics.items_retried.inc_by(retry);
                    debug!(
                        lane = self.id,
                        retry, attempt, "items rejected for now, retrying them"
                    );
                    if !sleep_unless(&self.shutdown, self.backoff(attempt)) {
                        return Err(LaneStop::Interrupted);
                    }
                    attempt += 1;
                    continue;
                }
            };
            let body: Cow<'_, [u8]> = if sent.len() == total {
                Cow::Borrowed(&self.batch.body)
            } else {
                let mut b = Vec::new();
                for &i in &sent {
                    let it = &self.batch.items[i];
                    b.extend_from_slice(&self.batch.body[it.start..it.end]);
                }
                Cow::Owned(b)
            };
            let t0 = Instant::now();
            let answer = match self.client.send_bulk(&body) {
                Ok(BulkAnswer::Items(resp)) => {
                    self.metrics
                        .bulk_seconds
                        .observe(t0.elapsed().as_secs_f64());
                    self.engine_answered(true);
                    if !resp.errors {
                        self.metrics.bulk_requests.with_label_values(&["ok"]).inc();
                        Answer::AllDone
                    } else if resp.items.len() != sent.len() {
                        self.metrics
                            .bulk_requests
                            .with_label_values(&["partial"])
                            .inc();
                        warn!(
                            lane = self.id,
                            sent = sent.len(),
                            answered = resp.items.len(),
                            "bulk answer does not match the request, sending it again"
                        );
                        maybe_applied.extend(sent.iter().copied());
                        Answer::Mismatch
                    } else {
                        self.metrics
                            .bulk_requests
                            .with_label_values(&["partial"])
                            .inc();
                        let mut outcomes = Vec::with_capacity(sent.len());
                        for (&i, item) in sent.iter().zip(&resp.items) {
                            let it = &self.batch.items[i];
                            let st = item.status();
                            if let (ItemKind::Change, 409, Mode::Audit { duplicates, .. }) =
                                (it.kind, st.status, &mut self.mode)
                            {
                                if !maybe_applied.contains(&i) {
                                    *duplicates += 1;
                                }
                            }
                            outcomes.push(match item_verdict(it.kind, st.status) {
                                ItemVerdict::Done => ItemOutcome::Done,
                                ItemVerdict::Retry => ItemOutcome::Retry,
                                ItemVerdict::Reject => {
                                    ItemOutcome::Reject(elide(&st.reason(), MAX_REASON_BYTES))
                                }
                            });
                        }
                        Answer::Items(outcomes)
                    }
                }
                Ok(BulkAnswer::Refused(reason)) => {
                    self.engine_answered(true);
                    self.metrics
                        .bulk_requests
                        .with_label_values(&["refused"])
                        .inc();
                    if sent.len() == total {
                        warn!(
                            lane = self.id,
                            items = sent.len(),
                            reason,
                            "bulk refused as a whole, splitting it to find the items refused"
                        );
                    } else {
                        debug!(
                            lane = self.id,
                            items = sent.len(),
                            reason,
                            "part of a bulk refused as a whole, splitting it"
                        );
                    }
                    if sent.len() == 1 {
                        Answer::Refused(format!("{reason} (this item alone: {} bytes)", body.len()))
                    } else {
                        Answer::Refused(reason)
                    }
                }
                Err(CallError::Retry(why)) => {
                    maybe_applied.extend(sent.iter().copied());
                    self.metrics
                        .bulk_requests
                        .with_label_values(&["failed"])
                        .inc();
                    self.engine_answered(false);
                    warn!(lane = self.id, attempt, items = sent.len(), error = %why, "bulk failed, retrying");
                    plan.answered(sent, Answer::Unavailable);
                    if !sleep_unless(&self.shutdown, self.backoff(attempt)) {
                        return Err(LaneStop::Interrupted);
                    }
                    attempt += 1;
                    continue;
                }
                Err(CallError::Fatal(e)) => return Err(LaneStop::Fatal(e)),
            };
            plan.answered(sent, answer);
        }
        for (i, reason) in plan.rejected() {
            let slot = &mut self.batch.rejected[self.batch.items[*i].msg];
            if slot.is_none() {
                *slot = Some(("index_rejected", reason.clone()));
            }
        }
        self.finish()
    }

    /// DLQ for rejected events, then the offsets (an audit keeps the
    /// rejected for its report instead); clears the batch.
    fn finish(&mut self) -> Result<(), LaneStop> {
        let b = &self.batch;
        let mut dlq = 0;
        for (m, r) in b.msgs.iter().zip(&b.rejected) {
            let Some((code, reason)) = r else { continue };
            dlq += 1;
            match &mut self.mode {
                Mode::Live { dlq, .. } => {
                    warn!(
                        partition = m.partition,
                        offset = m.offset,
                        code,
                        reason,
                        "event to the DLQ"
                    );
                    dlq.send(&DeadLetter {
                        topic: &self.topic,
                        partition: m.partition,
                        offset: m.offset,
                        key: m.key.as_deref(),
                        payload: &m.payload,
                        code,
                        reason,
                    })?;
                }
                Mode::Audit { rejected, .. } => rejected.push(AuditRejection {
                    partition: m.partition,
                    offset: m.offset,
                    code,
                    reason: reason.clone(),
                }),
            }
        }
        self.metrics.events.with_label_values(&["dlq"]).inc_by(dlq);
        self.metrics
            .events
            .with_label_values(&["indexed"])
            .inc_by(b.msgs.len() as u64 - dlq);
        if let Mode::Live { consumer, dlq: q } = &self.mode {
            if dlq > 0 {
                q.flush()?;
            }
            let mut next: BTreeMap<i32, i64> = BTreeMap::new();
            for m in &b.msgs {
                let e = next.entry(m.partition).or_insert(0);
                *e = (*e).max(m.offset + 1);
            }
            let mut tpl = TopicPartitionList::new();
            for (p, o) in next {
                let _ = tpl.add_partition_offset(&self.topic, p, Offset::Offset(o));
            }
            if let Err(e) = consumer.store_offsets(&tpl) {
                // Revoked meanwhile: the new owner re-reads; ids make it harmless.
                debug!(lane = self.id, error = %e, "offsets not stored");
            }
        }
        self.batch.clear();
        Ok(())
    }
}

/// An event the engine refused for good during an audit replay.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuditRejection {
    /// Its partition in the replayed topic.
    pub partition: i32,
    /// Its offset.
    pub offset: i64,
    /// `index_rejected` or `undecodable`.
    pub code: &'static str,
    /// The engine's (or the decoder's) reason.
    pub reason: String,
}

/// What an audit replay wrote.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AuditReport {
    /// Changes handed in.
    pub events: u64,
    /// Of those, already in the index before this replay (same event id:
    /// a 409, nothing changed; a 409 after a request of ours that failed
    /// as a whole may be our own write and is not counted).
    pub already_present: u64,
    /// Refused for good, with the reason; not in the index.
    pub rejected: Vec<AuditRejection>,
}

/// Writes enriched changes into the change history under a prefix of the
/// caller's choosing, with the live sink's own batching, documents, item
/// retries and backoff — so an audit index is, document for document, what
/// the live sink wrote for the same events. History only: the package and
/// host state are the live sink's (a range cannot rebuild them). Into the
/// live prefix it changes nothing: every id is there already (409).
pub struct AuditIndexer {
    lane: Lane,
    events: u64,
}

impl AuditIndexer {
    /// Reaches the engine and installs the history template under
    /// `cfg.index_prefix` (kept if the prefix has one). `topic` names the
    /// source in the report; an unreachable engine is an error at once.
    pub fn open(
        cfg: &SearchSinkConfig,
        topic: &str,
        shutdown: &Shutdown,
    ) -> Result<AuditIndexer, SinkError> {
        let client = EngineClient::new(cfg)?;
        let idx = Indices::new(&cfg.index_prefix);
        setup_history(&client, &idx, cfg).map_err(|e| match e {
            CallError::Fatal(e) => e,
            CallError::Retry(reason) => SinkError::Engine {
                url: client.display_url(),
                what: "reaching the engine".into(),
                reason,
            },
        })?;
        Ok(AuditIndexer {
            lane: Lane {
                id: 0,
                client,
                idx,
                cfg: cfg.clone(),
                topic: topic.to_owned(),
                mode: Mode::Audit {
                    rejected: Vec::new(),
                    duplicates: 0,
                },
                metrics: Arc::new(SearchSinkMetrics::new()?),
                engine_down: Arc::new([AtomicBool::new(false)]),
                shutdown: shutdown.clone(),
                batch: Batch::default(),
                queued: Arc::default(),
            },
            events: 0,
        })
    }

    /// Adds one enriched change (its bytes as read from Kafka); sends a
    /// bulk when the batch is full. Waits out an engine that stops
    /// answering, until shutdown.
    pub fn push(&mut self, partition: i32, offset: i64, payload: &[u8]) -> Result<(), SinkError> {
        self.events += 1;
        let lane = &mut self.lane;
        lane.add(Msg {
            partition,
            offset,
            key: None,
            payload: payload.to_vec(),
        })
        .map_err(|e| interrupted(e, &lane.client))?;
        if lane.batch.msgs.len() >= lane.cfg.batch_events
            || lane.batch.body.len() >= lane.cfg.batch_bytes
        {
            lane.flush().map_err(|e| interrupted(e, &lane.client))?;
        }
        Ok(())
    }

    /// Sends what is left and reports.
    pub fn finish(mut self) -> Result<AuditReport, SinkError> {
        let lane = &mut self.lane;
        lane.flush().map_err(|e| interrupted(e, &lane.client))?;
        let (rejected, duplicates) = match &mut lane.mode {
            Mode::Audit {
                rejected,
                duplicates,
            } => (std::mem::take(rejected), *duplicates),
            Mode::Live { .. } => (Vec::new(), 0),
        };
        Ok(AuditReport {
            events: self.events,
            already_present: duplicates,
            rejected,
        })
    }
}

fn interrupted(e: LaneStop, client: &EngineClient) -> SinkError {
    match e {
        LaneStop::Fatal(e) => e,
        LaneStop::Interrupted => SinkError::Engine {
            url: client.display_url(),
            what: "bulk".into(),
            reason:
                "interrupted while the engine did not answer; the batch in hand was not written"
                    .into(),
        },
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
