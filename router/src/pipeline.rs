//! The router's Kafka loop: consume raw → process → produce enriched, one
//! Kafka transaction per batch with the consumer offsets inside it
//! (consume–transform–produce, KIP-447), so a crash at any point neither
//! loses nor duplicates an event in the enriched topic (read_committed).
//!
//! Partitions are the unit of parallelism and state: an event read from
//! raw partition `p` is written to enriched partition `p` (both keyed by
//! machine id), and the dedupe window of `p` is rebuilt on assignment from
//! the ids already committed to enriched partition `p`. The range assignor
//! gives partition `p` of both raw topics to the same instance.
//!
//! One thread runs the loop; more throughput comes from more partitions and
//! more instances. On any Kafka error the transaction is aborted and the
//! loop restarts from the committed offsets with fresh clients.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use pkgstream_runtime::config::{KafkaConfig, TopicsConfig};
use pkgstream_runtime::health::Readiness;
use pkgstream_runtime::shutdown::Shutdown;
use pkgstream_runtime::topics::{create_missing, TopicSpec};
use pkgstream_schemas::{EventId, Kind, Registry};
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{ClientConfig, ClientContext, Message, Offset, TopicPartitionList};
use tracing::{debug, info, info_span, warn};

use crate::config::RouterConfig;
use crate::dedupe::DedupeWindow;
use crate::hosts::{read_hosts_file, HostMeta, HostTable};
use crate::metrics::RouterMetrics;
use crate::process::{Enriched, HostDefaults, Lane, Processor};
use crate::RouterError;

const TXN_TIMEOUT: Duration = Duration::from_secs(30);

/// Everything the router loop needs.
pub struct Router {
    /// `[kafka]`.
    pub kafka: KafkaConfig,
    /// `[topics]`.
    pub topics: TopicsConfig,
    /// `[router]`.
    pub config: RouterConfig,
    /// Metrics to update.
    pub metrics: Arc<RouterMetrics>,
    /// Set once consuming.
    pub ready: Readiness,
}

/// Records rebalances so the loop can drop work of revoked partitions.
#[derive(Default)]
struct RebalanceLog {
    /// Bumped on every assignment change.
    generation: Mutex<u64>,
}

impl ClientContext for RebalanceLog {}

impl ConsumerContext for RebalanceLog {
    fn pre_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(tpl) = rebalance {
            info!(partitions = tpl.count(), "partitions revoked");
        }
        *self.generation.lock().unwrap_or_else(|p| p.into_inner()) += 1;
    }

    fn post_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(tpl) = rebalance {
            info!(partitions = tpl.count(), "partitions assigned");
        }
        *self.generation.lock().unwrap_or_else(|p| p.into_inner()) += 1;
    }
}

impl RebalanceLog {
    fn generation(&self) -> u64 {
        *self.generation.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A raw message, copied out of the consumer.
struct Raw {
    lane: Lane,
    partition: i32,
    offset: i64,
    key: Option<Vec<u8>>,
    payload: Vec<u8>,
}

/// What one round of polling collected.
#[derive(Default)]
struct Batch {
    messages: Vec<Raw>,
    /// A rebalance happened while collecting.
    rebalanced: bool,
}

/// One record to produce in the current transaction.
enum Out {
    Enriched {
        partition: i32,
        record: Enriched,
    },
    Dlq {
        raw: Raw,
        code: &'static str,
        reason: String,
    },
}

impl Router {
    /// Runs until `shutdown`: starts the host table sources, then the loop;
    /// restarts the loop with fresh clients after a Kafka error.
    pub fn run(&self, shutdown: &Shutdown) -> Result<(), RouterError> {
        let hosts = HostTable::default();
        let hosts_ready = start_host_sources(self, hosts.clone(), shutdown.clone())?;
        let started = Instant::now();
        while !hosts_ready.get()
            && started.elapsed() < Duration::from_secs(30)
            && !shutdown.requested()
        {
            std::thread::sleep(Duration::from_millis(20));
        }
        if !hosts_ready.get() {
            warn!(topic = %self.topics.hosts, "host table not caught up after 30 s; starting anyway");
        }
        let mut processor = Processor::new(
            hosts,
            HostDefaults {
                hostgroup: self.config.default_hostgroup.clone(),
                environment: self.config.default_environment.clone(),
            },
        );
        let mut backoff = Duration::from_millis(500);
        while !shutdown.requested() {
            match self.run_clients(&mut processor, shutdown) {
                Ok(()) => break,
                Err(e) if e.is_fatal() => return Err(e),
                Err(e) => {
                    warn!(error = %e, backoff_ms = backoff.as_millis() as u64, "router loop failed; restarting from the committed offsets");
                    self.ready.set(false);
                    std::thread::sleep(backoff);
                    backoff = (backoff * 2).min(Duration::from_secs(30));
                }
            }
        }
        info!("router stopped");
        Ok(())
    }

    /// The raw topic a lane is read from.
    fn raw_topic(&self, lane: Lane) -> &str {
        match lane {
            Lane::Changes => &self.topics.changes_raw,
            Lane::Inventory => &self.topics.inventory_raw,
        }
    }

    fn kafka_err(&self, what: &'static str) -> impl Fn(KafkaError) -> RouterError + '_ {
        move |e| RouterError::Kafka {
            brokers: self.kafka.brokers.clone(),
            what,
            reason: e.to_string(),
        }
    }

    /// One life of the clients: init, then batches until shutdown or error.
    fn run_clients(
        &self,
        processor: &mut Processor,
        shutdown: &Shutdown,
    ) -> Result<(), RouterError> {
        let producer: BaseProducer = ClientConfig::new()
            .set("bootstrap.servers", &self.kafka.brokers)
            .set("transactional.id", &self.config.transactional_id)
            .set("enable.idempotence", "true")
            .set("compression.type", "zstd")
            .set("linger.ms", "5")
            .set("transaction.timeout.ms", "60000")
            // Right after a commit the broker answers the next transaction's
            // first AddPartitionsToTxn with CONCURRENT_TRANSACTIONS until the
            // markers are written; the default 100 ms retry backoff would
            // then idle every transaction for 100 ms.
            .set("retry.backoff.ms", "5")
            .create()
            .map_err(|e| RouterError::KafkaClient(e.to_string()))?;
        producer
            .init_transactions(TXN_TIMEOUT)
            .map_err(self.kafka_err("init transactions"))?;
        let consumer: BaseConsumer<RebalanceLog> = ClientConfig::new()
            .set("bootstrap.servers", &self.kafka.brokers)
            .set("group.id", &self.config.group_id)
            .set("enable.auto.commit", "false")
            .set("auto.offset.reset", "earliest")
            .set("isolation.level", "read_committed")
            .set("partition.assignment.strategy", "range")
            // Static membership: a restarted instance takes its partitions
            // back at once instead of after the session timeout.
            .set("group.instance.id", &self.config.transactional_id)
            // A static member that stops for good (scale-down) hands its
            // partitions over after this long.
            .set("session.timeout.ms", "10000")
            .create_with_context(RebalanceLog::default())
            .map_err(|e| RouterError::KafkaClient(e.to_string()))?;
        self.check_partitions(&consumer)?;
        consumer
            .subscribe(&[&self.topics.changes_raw, &self.topics.inventory_raw])
            .map_err(self.kafka_err("subscribe"))?;

        let mut windows: HashMap<i32, DedupeWindow> = HashMap::new();
        let mut last_lag = Instant::now() - Duration::from_secs(60);
        let mut generation = consumer.context().generation();
        while !shutdown.requested() {
            let batch = self.collect_batch(&consumer, shutdown, &mut generation)?;
            if batch.rebalanced {
                // Partitions may have moved: windows are rebuilt on demand.
                windows.clear();
            }
            let batch = batch.messages;
            if consumer.assignment().is_ok_and(|a| a.count() > 0) {
                self.ready.set(true);
            }
            if last_lag.elapsed() > Duration::from_secs(10) {
                self.update_lag(&consumer);
                last_lag = Instant::now();
            }
            if batch.is_empty() {
                continue;
            }
            for p in batch.iter().map(|r| r.partition).collect::<HashSet<_>>() {
                if let std::collections::hash_map::Entry::Vacant(slot) = windows.entry(p) {
                    slot.insert(self.rebuild_window(p)?);
                }
            }
            self.transact(&producer, &consumer, processor, &mut windows, batch)?;
        }
        Ok(())
    }

    /// Creates the enriched and DLQ topics, and a raw topic whose sibling
    /// exists, when missing (with as many partitions as the larger raw
    /// topic, the broker's default replication), and fails early when the enriched topic has fewer
    /// partitions than a raw topic (partition p of raw is written to
    /// partition p of enriched).
    fn check_partitions(&self, consumer: &BaseConsumer<RebalanceLog>) -> Result<(), RouterError> {
        let count = |topic: &str| -> Result<usize, RouterError> {
            let md = consumer
                .fetch_metadata(Some(topic), Duration::from_secs(10))
                .map_err(self.kafka_err("fetch metadata"))?;
            Ok(md
                .topics()
                .first()
                .filter(|t| t.error().is_none())
                .map_or(0, |t| t.partitions().len()))
        };
        let changes_raw = count(&self.topics.changes_raw)?;
        let inventory_raw = count(&self.topics.inventory_raw)?;
        let raw = changes_raw.max(inventory_raw).max(1);
        let mut missing: Vec<&str> = [&self.topics.changes_enriched, &self.topics.dlq]
            .into_iter()
            .filter(|t| count(t).is_ok_and(|n| n == 0))
            .map(String::as_str)
            .collect();
        // One raw topic exists and not the other (hosts have shipped only
        // snapshots so far, or only changes): the missing one is created
        // like its sibling, so subscribing to both does not fail.
        if changes_raw == 0 && inventory_raw > 0 {
            missing.push(&self.topics.changes_raw);
        } else if inventory_raw == 0 && changes_raw > 0 {
            missing.push(&self.topics.inventory_raw);
        }
        if !missing.is_empty() {
            self.create_topics(&missing, raw)?;
        }
        let enriched = count(&self.topics.changes_enriched)?;
        for topic in [&self.topics.changes_raw, &self.topics.inventory_raw] {
            let n = count(topic)?;
            if enriched < n {
                return Err(RouterError::Topology(format!(
                    "{} has {enriched} partitions, fewer than {topic}'s {n}: add partitions to it (the router writes raw partition p to enriched partition p)",
                    self.topics.changes_enriched
                )));
            }
        }
        Ok(())
    }

    fn create_topics(&self, topics: &[&str], partitions: usize) -> Result<(), RouterError> {
        let specs: Vec<TopicSpec<'_>> = topics
            .iter()
            .map(|name| TopicSpec {
                name,
                partitions,
                compact: false,
            })
            .collect();
        create_missing(&self.kafka.brokers, &specs)
            .map_err(|e| RouterError::Topology(e.to_string()))
    }

    /// Polls up to `batch_events` messages or `batch_ms`. An (eager)
    /// rebalance resets every position to the committed offset, so messages
    /// received before it are dropped — they come again, here or elsewhere —
    /// while those received after it are kept.
    fn collect_batch(
        &self,
        consumer: &BaseConsumer<RebalanceLog>,
        shutdown: &Shutdown,
        generation: &mut u64,
    ) -> Result<Batch, RouterError> {
        let deadline = Instant::now() + Duration::from_millis(self.config.batch_ms);
        let mut batch = Batch::default();
        while batch.messages.len() < self.config.batch_events && !shutdown.requested() {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            let polled = consumer.poll(left);
            let now_generation = consumer.context().generation();
            if now_generation != *generation {
                debug!(
                    dropped = batch.messages.len(),
                    "rebalance: dropping messages read before it"
                );
                *generation = now_generation;
                batch.messages.clear();
                batch.rebalanced = true;
            }
            match polled {
                Some(Ok(m)) => {
                    let lane = if m.topic() == self.topics.inventory_raw {
                        Lane::Inventory
                    } else {
                        Lane::Changes
                    };
                    batch.messages.push(Raw {
                        lane,
                        partition: m.partition(),
                        offset: m.offset(),
                        key: m.key().map(<[u8]>::to_vec),
                        payload: m.payload().unwrap_or_default().to_vec(),
                    });
                }
                Some(Err(e)) => return Err(self.kafka_err("consume")(e)),
                None => {}
            }
        }
        Ok(batch)
    }

    /// Processes `batch` and commits its outputs and offsets in one transaction.
    fn transact(
        &self,
        producer: &BaseProducer,
        consumer: &BaseConsumer<RebalanceLog>,
        processor: &mut Processor,
        windows: &mut HashMap<i32, DedupeWindow>,
        batch: Vec<Raw>,
    ) -> Result<(), RouterError> {
        let span = info_span!("batch", events = batch.len());
        let _enter = span.enter();
        let process_started = Instant::now();
        let now = chrono::Utc::now().timestamp_micros();
        let mut offsets: BTreeMap<(Lane, i32), i64> = BTreeMap::new();
        let mut outs: Vec<Out> = Vec::with_capacity(batch.len());
        // Ids produced in this batch: position in `outs` and richness.
        let mut in_batch: HashMap<(i32, EventId), (usize, u8)> = HashMap::new();
        let mut deduplicated = 0u64;
        for raw in batch {
            let slot = offsets
                .entry((raw.lane, raw.partition))
                .or_insert(raw.offset);
            *slot = (*slot).max(raw.offset);
            self.metrics
                .events_in
                .with_label_values(&[raw.lane.label()])
                .inc();
            match processor.process(raw.lane, &raw.payload, now) {
                Ok(records) => {
                    for record in records {
                        let p = raw.partition;
                        if windows.get(&p).is_some_and(|w| w.contains(&record.id)) {
                            deduplicated += 1;
                            continue;
                        }
                        match in_batch.get(&(p, record.id)) {
                            Some(&(i, richness)) => {
                                deduplicated += 1;
                                if record.richness > richness {
                                    in_batch.insert((p, record.id), (i, record.richness));
                                    outs[i] = Out::Enriched {
                                        partition: p,
                                        record,
                                    };
                                }
                            }
                            None => {
                                in_batch.insert((p, record.id), (outs.len(), record.richness));
                                outs.push(Out::Enriched {
                                    partition: p,
                                    record,
                                });
                            }
                        }
                    }
                }
                Err(e) => {
                    warn!(topic = self.raw_topic(raw.lane), partition = raw.partition, offset = raw.offset, reason = %e, "poison event to the DLQ");
                    outs.push(Out::Dlq {
                        code: e.code(),
                        reason: e.to_string(),
                        raw,
                    });
                }
            }
        }

        let process_time = process_started.elapsed();
        let started = Instant::now();
        producer
            .begin_transaction()
            .map_err(self.kafka_err("begin transaction"))?;
        let result = self.produce_all(producer, &outs).and_then(|()| {
            let produced = started.elapsed();
            let mut tpl = TopicPartitionList::new();
            for ((lane, partition), offset) in &offsets {
                tpl.add_partition_offset(
                    self.raw_topic(*lane),
                    *partition,
                    Offset::Offset(offset + 1),
                )
                .map_err(self.kafka_err("offsets"))?;
            }
            let group = consumer
                .group_metadata()
                .ok_or_else(|| RouterError::Kafka {
                    brokers: self.kafka.brokers.clone(),
                    what: "group metadata",
                    reason: "consumer has no group metadata".into(),
                })?;
            producer
                .send_offsets_to_transaction(&tpl, &group, TXN_TIMEOUT)
                .map_err(self.kafka_err("send offsets to transaction"))?;
            // Wait for the deliveries here: librdkafka's own flush inside
            // commit_transaction sleeps in 100 ms steps on a BaseProducer.
            producer
                .flush(TXN_TIMEOUT)
                .map_err(self.kafka_err("flush"))?;
            let offsets_sent = started.elapsed();
            let r = producer
                .commit_transaction(TXN_TIMEOUT)
                .map_err(self.kafka_err("commit transaction"));
            debug!(
                produce_ms = produced.as_millis() as u64,
                offsets_ms = (offsets_sent - produced).as_millis() as u64,
                commit_ms = (started.elapsed() - offsets_sent).as_millis() as u64,
                "transaction phases"
            );
            r
        });
        if let Err(e) = result {
            self.metrics.transactions_aborted.inc();
            if let Err(abort) = producer.abort_transaction(TXN_TIMEOUT) {
                warn!(error = %abort, "abort failed");
            }
            return Err(e);
        }
        self.metrics
            .transaction_seconds
            .observe(started.elapsed().as_secs_f64());
        debug!(
            process_ms = process_time.as_millis() as u64,
            transaction_ms = started.elapsed().as_millis() as u64,
            outputs = outs.len(),
            "batch committed"
        );

        // Committed: now the ids count as seen.
        let now_secs = (now / 1_000_000) as u32;
        for (p, id) in in_batch.keys() {
            if let Some(w) = windows.get_mut(p) {
                w.insert(id, now_secs);
            }
        }
        for out in &outs {
            match out {
                Out::Enriched { record, .. } => self
                    .metrics
                    .events_out
                    .with_label_values(&[record.kind.label()])
                    .inc(),
                Out::Dlq { code, .. } => self.metrics.dlq.with_label_values(&[code]).inc(),
            }
        }
        self.metrics.deduplicated.inc_by(deduplicated);
        self.metrics.unknown_hosts.inc_by(processor.take_unknown());
        self.metrics
            .window_entries
            .set(windows.values().map(|w| w.len() as i64).sum());
        self.metrics
            .window_bytes
            .set(windows.values().map(|w| w.bytes() as i64).sum());
        Ok(())
    }

    fn produce_all(&self, producer: &BaseProducer, outs: &[Out]) -> Result<(), RouterError> {
        for out in outs {
            let (mut record, topic): (BaseRecord<'_, [u8], [u8]>, &str) = match out {
                Out::Enriched { partition, record } => (
                    BaseRecord::to(&self.topics.changes_enriched)
                        .partition(*partition)
                        .key(&record.key[..])
                        .payload(&record.value[..]),
                    &self.topics.changes_enriched,
                ),
                Out::Dlq { raw, code, reason } => {
                    let headers = pkgstream_runtime::dlq::headers(
                        code,
                        reason,
                        self.raw_topic(raw.lane),
                        raw.partition,
                        raw.offset,
                    );
                    let mut r = BaseRecord::to(&self.topics.dlq)
                        .payload(&raw.payload[..])
                        .headers(headers);
                    if let Some(k) = &raw.key {
                        r = r.key(&k[..]);
                    }
                    (r, &self.topics.dlq)
                }
            };
            loop {
                match producer.send(record) {
                    Ok(()) => break,
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                        record = r;
                        producer.poll(Duration::from_millis(10));
                    }
                    Err((e, _)) => {
                        return Err(RouterError::Kafka {
                            brokers: self.kafka.brokers.clone(),
                            what: "produce",
                            reason: format!("{topic}: {e}"),
                        })
                    }
                }
            }
        }
        producer.poll(Duration::ZERO);
        Ok(())
    }

    /// The window of partition `p`: the ids already committed to enriched
    /// partition `p` within the window's bounds.
    fn rebuild_window(&self, p: i32) -> Result<DedupeWindow, RouterError> {
        let started = Instant::now();
        let mut window = DedupeWindow::new(
            self.config.dedupe_window_entries,
            self.config.dedupe_window_secs,
        );
        let reader: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &self.kafka.brokers)
            .set("group.id", format!("{}-rebuild", self.config.group_id))
            .set("enable.auto.commit", "false")
            .set("isolation.level", "read_committed")
            .set("enable.partition.eof", "true")
            .create()
            .map_err(self.kafka_err("create rebuild reader"))?;
        let topic = &self.topics.changes_enriched;
        let (low, high) = reader
            .fetch_watermarks(topic, p, Duration::from_secs(10))
            .map_err(self.kafka_err("fetch watermarks"))?;
        let mut start = low.max(high - self.config.dedupe_window_entries as i64);
        let since = chrono::Utc::now().timestamp_millis()
            - i64::from(self.config.dedupe_window_secs) * 1000;
        let mut by_time = TopicPartitionList::new();
        by_time
            .add_partition_offset(topic, p, Offset::Offset(since))
            .map_err(self.kafka_err("offsets"))?;
        if let Ok(found) = reader.offsets_for_times(by_time, Duration::from_secs(10)) {
            if let Some(Offset::Offset(o)) = found.elements().first().map(|e| e.offset()) {
                start = start.max(o);
            }
        }
        debug!(partition = p, low, high, start, "rebuilding dedupe window");
        if start >= high {
            return Ok(window);
        }
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(topic, p, Offset::Offset(start))
            .map_err(self.kafka_err("offsets"))?;
        reader.assign(&tpl).map_err(self.kafka_err("assign"))?;
        let now_secs = (chrono::Utc::now().timestamp()) as u32;
        let mut idle = Instant::now();
        let registry = Registry::get();
        loop {
            match reader.poll(Duration::from_millis(200)) {
                Some(Ok(m)) => {
                    idle = Instant::now();
                    let bytes = m.payload().unwrap_or_default();
                    // Both enriched kinds start with their 16-byte id.
                    if let (Ok((v, _)), Some(id)) = (registry.writer_of(bytes), bytes.get(10..26)) {
                        if matches!(v.kind, Kind::EnrichedChange | Kind::EnrichedSnapshot) {
                            let mut b = [0u8; 16];
                            b.copy_from_slice(id);
                            window.insert(&EventId(b), now_secs);
                        }
                    }
                    if m.offset() + 1 >= high {
                        break;
                    }
                }
                Some(Err(KafkaError::PartitionEOF(_))) => break,
                Some(Err(e)) => return Err(self.kafka_err("rebuild dedupe window")(e)),
                // Transaction markers past the last record, or an open
                // transaction of a fenced instance: stop when quiet.
                None if idle.elapsed() > Duration::from_secs(2) => break,
                None => {}
            }
        }
        info!(
            partition = p,
            entries = window.len(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "dedupe window rebuilt"
        );
        Ok(window)
    }

    fn update_lag(&self, consumer: &BaseConsumer<RebalanceLog>) {
        let Ok(positions) = consumer.position() else {
            return;
        };
        for e in positions.elements() {
            if let (Offset::Offset(pos), Ok((_, high))) = (
                e.offset(),
                consumer.fetch_watermarks(e.topic(), e.partition(), Duration::from_secs(2)),
            ) {
                self.metrics
                    .consumer_lag
                    .with_label_values(&[e.topic(), &e.partition().to_string()])
                    .set((high - pos).max(0));
            }
        }
    }
}

/// Starts the host table sources on a background thread: the CSV file
/// (re-read when its modification time changes) and the compacted hosts
/// topic (read from the beginning, then followed). The returned flag is
/// raised once the topic was read up to its end as of start.
fn start_host_sources(
    router: &Router,
    hosts: HostTable,
    shutdown: Shutdown,
) -> Result<Readiness, RouterError> {
    if let Some(path) = &router.config.hosts_file {
        // A broken file at start is a configuration error; later it is a warning.
        hosts.set_file_entries(read_hosts_file(path)?);
    }
    let caught_up = Readiness::default();
    let flag = caught_up.clone();
    let brokers = router.kafka.brokers.clone();
    let topic = router.topics.hosts.clone();
    let file = router.config.hosts_file.clone();
    let metrics = router.metrics.clone();
    std::thread::Builder::new()
        .name("host-table".into())
        .spawn(move || {
            let mut file_mtime = file.as_ref().and_then(|f| std::fs::metadata(f).and_then(|m| m.modified()).ok());
            let mut reader: Option<(BaseConsumer, HashMap<i32, i64>)> = None;
            let mut last_file_check = Instant::now();
            while !shutdown.requested() {
                if reader.is_none() {
                    match open_hosts_reader(&brokers, &topic) {
                        Ok(r) => reader = Some(r),
                        Err(e) => {
                            if !flag.get() {
                                warn!(topic = %topic, error = %e, "hosts topic not readable; retrying every 30 s (file entries and defaults apply meanwhile)");
                            } else {
                                debug!(topic = %topic, error = %e, "hosts topic still not readable");
                            }
                            flag.set(true);
                            for _ in 0..150 {
                                if shutdown.requested() {
                                    return;
                                }
                                std::thread::sleep(Duration::from_millis(200));
                            }
                            continue;
                        }
                    }
                }
                if let Some((consumer, ends)) = &mut reader {
                    match consumer.poll(Duration::from_millis(200)) {
                        Some(Ok(m)) => {
                            let key = m.key().map(|k| String::from_utf8_lossy(k).into_owned()).unwrap_or_default();
                            let value = match m.payload() {
                                None | Some([]) => Ok(None),
                                Some(v) => serde_json::from_slice::<HostMeta>(v).map(Some),
                            };
                            match value {
                                Ok(v) => {
                                    hosts.apply_topic_record(&key, v);
                                    metrics.host_table_updates.inc();
                                }
                                Err(e) => warn!(topic = %topic, partition = m.partition(), offset = m.offset(), host = %key, error = %e, "bad host metadata record ignored"),
                            }
                            if ends.get(&m.partition()).is_some_and(|end| m.offset() + 1 >= *end) {
                                ends.remove(&m.partition());
                            }
                        }
                        Some(Err(e)) => debug!(error = %e, "hosts topic read"),
                        None => {}
                    }
                    if ends.is_empty() && !flag.get() {
                        info!(topic = %topic, "host table caught up");
                        flag.set(true);
                    }
                }
                if let Some(path) = &file {
                    if last_file_check.elapsed() > Duration::from_secs(2) {
                        last_file_check = Instant::now();
                        let mtime = std::fs::metadata(path).and_then(|m| m.modified()).ok();
                        if mtime != file_mtime {
                            file_mtime = mtime;
                            match read_hosts_file(path) {
                                Ok(entries) => {
                                    info!(path = %path.display(), hosts = entries.len(), "hosts file reloaded");
                                    hosts.set_file_entries(entries);
                                    metrics.host_table_updates.inc();
                                }
                                Err(e) => warn!(error = %e, "hosts file not reloaded; keeping the previous entries"),
                            }
                        }
                    }
                }
                let (f, t) = hosts.sizes();
                metrics.host_table_hosts.with_label_values(&["file"]).set(f as i64);
                metrics.host_table_hosts.with_label_values(&["topic"]).set(t as i64);
            }
        })
        .map_err(|e| RouterError::Topology(format!("cannot start the host table thread: {e}")))?;
    Ok(caught_up)
}

/// A reader of every partition of the hosts topic from the beginning, and
/// the end offset of each non-empty partition at start.
fn open_hosts_reader(
    brokers: &str,
    topic: &str,
) -> Result<(BaseConsumer, HashMap<i32, i64>), KafkaError> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", "pkgstream-router-hosts")
        .set("enable.auto.commit", "false")
        .set("allow.auto.create.topics", "false")
        .create()?;
    let md = consumer.fetch_metadata(Some(topic), Duration::from_secs(10))?;
    let t = md
        .topics()
        .first()
        .filter(|t| t.error().is_none() && !t.partitions().is_empty())
        .ok_or(KafkaError::MetadataFetch(RDKafkaErrorCode::UnknownTopic))?;
    let mut tpl = TopicPartitionList::new();
    let mut ends = HashMap::new();
    for p in t.partitions() {
        tpl.add_partition_offset(topic, p.id(), Offset::Beginning)?;
        let (low, high) = consumer.fetch_watermarks(topic, p.id(), Duration::from_secs(10))?;
        if high > low {
            ends.insert(p.id(), high);
        }
    }
    consumer.assign(&tpl)?;
    Ok((consumer, ends))
}
