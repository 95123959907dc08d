//! The router's Kafka loop: consume raw → process → produce enriched, one
//! Kafka transaction per batch with the consumer offsets inside it
//! (consume–transform–produce, KIP-447), so a crash at any point neither
//! loses nor duplicates an event in the enriched topic (read_committed).
//!
//! Partitions are the unit of parallelism and state: an event read from
//! raw partition `p` is written to enriched partition `p` (both keyed by
//! machine id), and the dedupe window of `p` is rebuilt on assignment from
//! the ids already committed to enriched partition `p` — on a worker thread,
//! with `p` paused meanwhile, so a big window never keeps the loop from
//! polling past `max.poll.interval.ms` (see [`crate::rebuild`]). The range
//! assignor gives partition `p` of both raw topics to the same instance.
//!
//! One thread runs the loop; more throughput comes from more partitions and
//! more instances. On any Kafka error the transaction is aborted and the
//! loop restarts from the committed offsets with fresh clients; what the
//! aborted batch taught the inventory tracker is dropped with it. An output
//! Kafka refuses as too large goes to the DLQ instead (see [`crate::output`])
//! and the rest of the batch is committed.
//!
//! Readiness means progress: `/readyz` is 200 after a committed transaction,
//! or while idle with the broker answering, and 503 from a failed
//! transaction until the next commit. The lag gauge counts from the
//! committed offsets, so a wedged router shows its lag.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use pkgstream_runtime::config::{KafkaConfig, LastCause, TopicsConfig};
use pkgstream_runtime::health::Readiness;
use pkgstream_runtime::shutdown::Shutdown;
use pkgstream_runtime::topics::{create_missing, TopicSpec};
use pkgstream_schemas::EventId;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::Timestamp;
use rdkafka::{ClientContext, Message, Offset, TopicPartitionList};
use tracing::{debug, info, info_span, warn};

use crate::config::RouterConfig;
use crate::dedupe::DedupeWindow;
use crate::hosts::{read_hosts_file, HostMeta, HostTable};
use crate::metrics::RouterMetrics;
use crate::output::{bounded_reason, is_too_large, Deliveries, Out, Raw, TooLarge};
use crate::process::{HostDefaults, Lane, Processor, RawEvent};
use crate::rebuild::{RebuildSpec, WindowRebuilds};
use crate::RouterError;

/// librdkafka's default `batch.size`, the most a record batch holds.
const BATCH_BYTES: usize = 1_000_000;

/// Timeout of the transaction calls that do not wait for deliveries.
const TXN_CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// The committed offset (next to read) of each raw partition, as the
/// inventory tracker's state reflects it; -1 for none.
type KnownOffsets = HashMap<(Lane, i32), i64>;

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

/// What one round of polling collected.
#[derive(Default)]
struct Batch {
    messages: Vec<Raw>,
    /// A rebalance happened while collecting.
    rebalanced: bool,
}

/// How one attempt at a batch's transaction ended, short of a commit.
enum Attempt {
    /// Kafka refused some outputs for their size: they were replaced
    /// (isolated or made dead letters); abort and try again.
    Refused,
    /// Anything else: abort and restart with fresh clients.
    Failed(RouterError),
}

impl From<RouterError> for Attempt {
    fn from(e: RouterError) -> Attempt {
        Attempt::Failed(e)
    }
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
        )
        .with_max_clock_ahead(self.config.max_clock_ahead_secs);
        let mut known = KnownOffsets::new();
        let mut backoff = Duration::from_millis(500);
        while !shutdown.requested() {
            let mut committed = false;
            match self.run_clients(&mut processor, &mut known, &mut committed, shutdown) {
                Ok(()) => break,
                Err(e) if e.is_fatal() => return Err(e),
                Err(e) => {
                    if committed {
                        backoff = Duration::from_millis(500);
                    }
                    warn!(error = %e, backoff_ms = backoff.as_millis() as u64, "router loop failed; restarting from the committed offsets");
                    self.ready.set(false);
                    if shutdown.sleep(backoff) {
                        break;
                    }
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
        known: &mut KnownOffsets,
        committed: &mut bool,
        shutdown: &Shutdown,
    ) -> Result<(), RouterError> {
        let mut producer = self.transactional_producer()?;
        let consumer: BaseConsumer<RebalanceLog> = self
            .kafka
            .client_config()
            .map_err(|e| RouterError::KafkaClient(e.to_string()))?
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
        let mut rebuilds = WindowRebuilds::new(RebuildSpec {
            kafka: self.kafka.clone(),
            topic: self.topics.changes_enriched.clone(),
            group_id: format!("{}-rebuild", self.config.group_id),
            entries: self.config.dedupe_window_entries,
            secs: self.config.dedupe_window_secs,
            seconds: self.metrics.window_rebuild_seconds.clone(),
        });
        let raw_topics = [
            self.topics.changes_raw.as_str(),
            self.topics.inventory_raw.as_str(),
        ];
        // None: never (an Instant in the past may not exist on a machine up
        // for less than the interval).
        let mut last_lag: Option<Instant> = None;
        // Total lag from the committed offsets at the last refresh (None:
        // unknown, the broker did not answer or nothing is assigned).
        let mut lag: Option<i64> = None;
        let mut generation = consumer.context().generation();
        while !shutdown.requested() {
            let batch = self.collect_batch(&consumer, shutdown, &mut generation)?;
            if batch.rebalanced {
                // Partitions may have moved: windows are rebuilt on demand,
                // inventory state is kept only where it is still current.
                windows.clear();
                rebuilds
                    .reset(&consumer, raw_topics)
                    .map_err(self.kafka_err("resume partitions"))?;
                self.reconcile_inventory(&consumer, processor, known)?;
                last_lag = None;
            }
            // Partitions whose window just arrived go on with what was held
            // for them; those without one are held (paused) until theirs does.
            let mut ready = rebuilds.finished(&consumer, raw_topics, &mut windows)?;
            ready.extend(rebuilds.hold_unready(&consumer, raw_topics, &windows, batch.messages)?);
            let batch = ready;
            if last_lag.is_none_or(|t| t.elapsed() > Duration::from_secs(10)) {
                lag = self.update_lag(&consumer);
                last_lag = Some(Instant::now());
            }
            if batch.is_empty() {
                // Idle: not ready when the broker does not answer; ready
                // when everything assigned is committed; else as the last
                // transaction left it (a restart after a failure with a
                // backlog stays not ready until it commits).
                match lag {
                    None if last_lag.is_some() => self.ready.set(false),
                    Some(0) => self.ready.set(true),
                    _ => {}
                }
                continue;
            }
            self.transact(
                &mut producer,
                &consumer,
                processor,
                &mut windows,
                known,
                batch,
            )?;
            *committed = true;
            self.ready.set(true);
        }
        Ok(())
    }

    /// A transactional producer, initialized (which fences an earlier
    /// producer of this transactional id and aborts its open transaction).
    fn transactional_producer(&self) -> Result<BaseProducer<Deliveries>, RouterError> {
        // A record batch must fit the smallest limit of the output topics: a
        // broker refuses a whole batch above its topic's max.message.bytes,
        // though each record in it fits. (librdkafka still sends a single
        // record larger than batch.size, alone: only that one is refused.)
        let limit = pkgstream_runtime::topics::max_message_bytes(
            &self.kafka,
            &[&self.topics.changes_enriched, &self.topics.dlq],
        )
        .unwrap_or_else(|e| {
            debug!(error = %e, "topic limits unknown; records refused in a batch are sent again alone");
            Vec::new()
        })
        .into_iter()
        .flatten()
        .min()
        .unwrap_or(BATCH_BYTES)
        .min(BATCH_BYTES);
        let producer: BaseProducer<Deliveries> = self
            .kafka
            .client_config()
            .map_err(|e| RouterError::KafkaClient(e.to_string()))?
            .set("batch.size", limit.max(1024).to_string())
            .set("transactional.id", &self.config.transactional_id)
            .set("enable.idempotence", "true")
            .set("compression.type", "zstd")
            .set("linger.ms", "5")
            .set(
                "transaction.timeout.ms",
                self.config.transaction_timeout_ms.to_string(),
            )
            // Right after a commit the broker answers the next transaction's
            // first AddPartitionsToTxn with CONCURRENT_TRANSACTIONS until the
            // markers are written; the default 100 ms retry backoff would
            // then idle every transaction for 100 ms.
            .set("retry.backoff.ms", "5")
            .create_with_context(Deliveries::default())
            .map_err(|e| RouterError::KafkaClient(e.to_string()))?;
        producer
            .init_transactions(TXN_CALL_TIMEOUT)
            .map_err(self.kafka_err("init transactions"))?;
        Ok(producer)
    }

    fn txn_timeout(&self) -> Duration {
        Duration::from_millis(self.config.transaction_timeout_ms)
    }

    /// After a rebalance: keeps the inventory state of an assigned raw
    /// partition only if the group's committed offsets of both its lanes
    /// are those the state reflects (no one else moved it meanwhile);
    /// drops every other partition's (revoked, or moved and back).
    fn reconcile_inventory(
        &self,
        consumer: &BaseConsumer<RebalanceLog>,
        processor: &mut Processor,
        known: &mut KnownOffsets,
    ) -> Result<(), RouterError> {
        let assignment = consumer
            .assignment()
            .map_err(self.kafka_err("assignment"))?;
        if assignment.count() == 0 {
            // Between a revoke and the next assignment nothing is processed:
            // decide when the assignment is known (stale state is caught
            // then by its offsets).
            return Ok(());
        }
        let committed = consumer
            .committed_offsets(assignment, TXN_CALL_TIMEOUT)
            .map_err(self.kafka_err("committed offsets"))?;
        let mut now = KnownOffsets::new();
        for e in committed.elements() {
            let lane = if e.topic() == self.topics.inventory_raw {
                Lane::Inventory
            } else {
                Lane::Changes
            };
            let offset = match e.offset() {
                Offset::Offset(o) => o,
                _ => -1,
            };
            now.insert((lane, e.partition()), offset);
        }
        let before = processor.partitions();
        let current = |p: i32| {
            [Lane::Changes, Lane::Inventory].iter().all(|lane| {
                now.contains_key(&(*lane, p)) && known.get(&(*lane, p)) == now.get(&(*lane, p))
            })
        };
        processor.retain_partitions(current);
        let after = processor.partitions();
        if before.len() != after.len() {
            info!(
                kept = after.len(),
                dropped = before.len() - after.len(),
                "inventory state of partitions no longer owned or moved meanwhile dropped"
            );
        }
        *known = now;
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
        create_missing(&self.kafka, &specs).map_err(|e| RouterError::Topology(e.to_string()))
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
                    let timestamp = match m.timestamp() {
                        Timestamp::CreateTime(t) | Timestamp::LogAppendTime(t) => {
                            Some(t.saturating_mul(1000))
                        }
                        Timestamp::NotAvailable => None,
                    };
                    batch.messages.push(Raw {
                        lane,
                        partition: m.partition(),
                        offset: m.offset(),
                        timestamp,
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

    /// Processes `batch` and commits its outputs and offsets in one
    /// transaction; outputs Kafka refuses as too large go to the DLQ in a
    /// new attempt instead.
    fn transact(
        &self,
        producer: &mut BaseProducer<Deliveries>,
        consumer: &BaseConsumer<RebalanceLog>,
        processor: &mut Processor,
        windows: &mut HashMap<i32, DedupeWindow>,
        known: &mut KnownOffsets,
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
        for (index, raw) in batch.iter().enumerate() {
            let slot = offsets
                .entry((raw.lane, raw.partition))
                .or_insert(raw.offset);
            *slot = (*slot).max(raw.offset);
            self.metrics
                .events_in
                .with_label_values(&[raw.lane.label()])
                .inc();
            let event = RawEvent {
                lane: raw.lane,
                partition: raw.partition,
                bytes: &raw.payload,
                timestamp: raw.timestamp,
            };
            match processor.process(&event, now) {
                Ok(records) => {
                    for record in records {
                        let p = raw.partition;
                        if windows.get(&p).is_some_and(|w| w.contains(&record.id)) {
                            deduplicated += 1;
                            continue;
                        }
                        let out = |record| Out::Enriched {
                            partition: p,
                            record,
                            raw: index,
                            alone: false,
                        };
                        match in_batch.get(&(p, record.id)) {
                            Some(&(i, richness)) => {
                                deduplicated += 1;
                                if record.richness > richness {
                                    in_batch.insert((p, record.id), (i, record.richness));
                                    outs[i] = out(record);
                                }
                            }
                            None => {
                                in_batch.insert((p, record.id), (outs.len(), record.richness));
                                outs.push(out(record));
                            }
                        }
                    }
                }
                Err(e) => {
                    warn!(topic = self.raw_topic(raw.lane), partition = raw.partition, offset = raw.offset, code = e.code, reason = %e.reason, "poison event to the DLQ");
                    outs.push(Out::Dlq {
                        raw: index,
                        code: e.code,
                        reason: bounded_reason(e.reason),
                        with_payload: true,
                        alone: false,
                    });
                }
            }
        }

        let process_time = process_started.elapsed();
        let started = Instant::now();
        let mut attempts = 0u32;
        loop {
            attempts += 1;
            match self.attempt(producer, consumer, &mut outs, &batch, &offsets) {
                Ok(()) => break,
                Err(attempt) => {
                    self.metrics.transactions_aborted.inc();
                    if let Err(abort) = producer.abort_transaction(TXN_CALL_TIMEOUT) {
                        warn!(error = %abort, "abort failed");
                        processor.abort();
                        return Err(match attempt {
                            Attempt::Failed(e) => e,
                            Attempt::Refused => self.kafka_err("abort transaction")(abort),
                        });
                    }
                    match attempt {
                        Attempt::Refused => {
                            // A record the broker refused leaves a gap in the
                            // idempotent producer's sequence numbers that the
                            // abort does not close (the next attempt would
                            // fail on OUT_OF_ORDER_SEQUENCE_NUMBER): a fresh
                            // producer starts a new epoch.
                            debug!(
                                attempts,
                                "outputs refused as too large; trying again without them"
                            );
                            *producer = self
                                .transactional_producer()
                                .inspect_err(|_| processor.abort())?;
                        }
                        Attempt::Failed(e) => {
                            processor.abort();
                            return Err(e);
                        }
                    }
                }
            }
        }
        processor.commit();
        for ((lane, partition), offset) in &offsets {
            known.insert((*lane, *partition), offset + 1);
        }
        self.metrics
            .transaction_seconds
            .observe(started.elapsed().as_secs_f64());
        debug!(
            process_ms = process_time.as_millis() as u64,
            transaction_ms = started.elapsed().as_millis() as u64,
            outputs = outs.len(),
            attempts,
            "batch committed"
        );

        // Committed: now the ids count as seen (not those that went to the
        // DLQ instead).
        let now_secs = (now / 1_000_000) as u32;
        for ((p, id), (i, _)) in &in_batch {
            if matches!(outs.get(*i), Some(Out::Enriched { .. })) {
                if let Some(w) = windows.get_mut(p) {
                    w.insert(id, now_secs);
                }
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

    /// One attempt at the batch's transaction: begin, produce, offsets,
    /// wait for every delivery, commit. The caller aborts on error.
    fn attempt(
        &self,
        producer: &BaseProducer<Deliveries>,
        consumer: &BaseConsumer<RebalanceLog>,
        outs: &mut [Out],
        raws: &[Raw],
        offsets: &BTreeMap<(Lane, i32), i64>,
    ) -> Result<(), Attempt> {
        let started = Instant::now();
        producer.context().start_attempt();
        producer
            .begin_transaction()
            .map_err(self.kafka_err("begin transaction"))?;
        self.produce_all(producer, outs, raws)?;
        // Every delivery is known before the offsets go in: a refused
        // record makes the transaction abortable, and the offsets would
        // fail on it.
        producer
            .flush(self.txn_timeout())
            .map_err(self.kafka_err("flush"))?;
        self.check_deliveries(producer, outs, raws)?;
        let produced = started.elapsed();
        let mut tpl = TopicPartitionList::new();
        for ((lane, partition), offset) in offsets {
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
            .send_offsets_to_transaction(&tpl, &group, TXN_CALL_TIMEOUT)
            .map_err(self.kafka_err("send offsets to transaction"))?;
        let offsets_sent = started.elapsed();
        producer
            .commit_transaction(self.txn_timeout())
            .map_err(self.kafka_err("commit transaction"))?;
        debug!(
            produce_ms = produced.as_millis() as u64,
            offsets_ms = offsets_sent.saturating_sub(produced).as_millis() as u64,
            commit_ms = started.elapsed().saturating_sub(offsets_sent).as_millis() as u64,
            "transaction phases"
        );
        Ok(())
    }

    /// The failed deliveries of this attempt: none, or outputs refused for
    /// their size (now replaced: isolated, or made dead letters), or a
    /// failure a new attempt cannot avoid.
    fn check_deliveries(
        &self,
        producer: &BaseProducer<Deliveries>,
        outs: &mut [Out],
        raws: &[Raw],
    ) -> Result<(), Attempt> {
        let failed = producer.context().take();
        if failed.is_empty() {
            return Ok(());
        }
        // A refused record makes the transaction abortable, and librdkafka
        // then purges the records still queued: those are sent again as they
        // are in the next attempt.
        let (too_large, other): (Vec<_>, Vec<_>) =
            failed.into_iter().partition(|(_, e)| is_too_large(e));
        if too_large.is_empty() {
            return Err(Attempt::Failed(RouterError::Kafka {
                brokers: self.kafka.brokers.clone(),
                what: "deliver",
                reason: format!(
                    "{} of the batch's records failed, e.g.: {}",
                    other.len(),
                    other
                        .first()
                        .map(|(_, e)| e.to_string())
                        .unwrap_or_default()
                ),
            }));
        }
        debug!(
            refused = too_large.len(),
            purged_or_failed = other.len(),
            "records refused as too large"
        );
        for (i, e) in too_large {
            self.refused(outs, raws, i, &e.to_string())?;
        }
        Err(Attempt::Refused)
    }

    /// Replaces `outs[i]`, refused by Kafka as too large: with itself sent
    /// alone if it was not, else with its dead letter.
    fn refused(
        &self,
        outs: &mut [Out],
        raws: &[Raw],
        i: usize,
        error: &str,
    ) -> Result<(), RouterError> {
        let Some(slot) = outs.get_mut(i) else {
            return Ok(());
        };
        let out = Out::take(slot);
        if !out.alone() {
            *slot = out.isolated();
            return Ok(());
        }
        let raw = match &out {
            Out::Enriched { raw, .. } | Out::Dlq { raw, .. } => raws.get(*raw),
        };
        match out.too_large(raws, error) {
            TooLarge::Replace(dead_letter) => {
                if let Some(raw) = raw {
                    warn!(
                        topic = self.raw_topic(raw.lane),
                        partition = raw.partition,
                        offset = raw.offset,
                        error,
                        "output refused as too large; to the DLQ"
                    );
                }
                *slot = dead_letter;
                Ok(())
            }
            TooLarge::Hopeless => Err(RouterError::Topology(format!(
                "the DLQ topic {} refuses even a dead letter without payload as too large ({error}): raise its max.message.bytes",
                self.topics.dlq
            ))),
        }
    }

    /// Sends every output; one that librdkafka refuses at once as too large
    /// is replaced by its dead letter here. An output marked `alone` is
    /// flushed before and after, so it is the only record of its batch.
    fn produce_all(
        &self,
        producer: &BaseProducer<Deliveries>,
        outs: &mut [Out],
        raws: &[Raw],
    ) -> Result<(), RouterError> {
        for i in 0..outs.len() {
            loop {
                let alone = outs[i].alone();
                if alone {
                    producer
                        .flush(self.txn_timeout())
                        .map_err(self.kafka_err("flush"))?;
                }
                match self.send_one(producer, &outs[i], raws, i) {
                    Ok(()) => {
                        if alone {
                            producer
                                .flush(self.txn_timeout())
                                .map_err(self.kafka_err("flush"))?;
                        }
                        break;
                    }
                    Err(e) if is_too_large(&e) => {
                        let msg = e.to_string();
                        if !outs[i].alone() {
                            let out = Out::take(&mut outs[i]);
                            outs[i] = out.isolated();
                        }
                        // Refused by the client itself: the record is too large.
                        self.refused(outs, raws, i, &msg)?;
                    }
                    // A delivery failed meanwhile (the transaction must be
                    // aborted): stop here; the caller learns which record
                    // failed from its delivery report.
                    Err(KafkaError::MessageProduction(RDKafkaErrorCode::State)) => {
                        debug!(
                            sent = i,
                            of = outs.len(),
                            "transaction failed while producing"
                        );
                        return Ok(());
                    }
                    Err(e) => {
                        return Err(RouterError::Kafka {
                            brokers: self.kafka.brokers.clone(),
                            what: "produce",
                            reason: e.to_string(),
                        })
                    }
                }
            }
        }
        producer.poll(Duration::ZERO);
        Ok(())
    }

    /// Queues one output (waiting while the queue is full).
    fn send_one(
        &self,
        producer: &BaseProducer<Deliveries>,
        out: &Out,
        raws: &[Raw],
        index: usize,
    ) -> Result<(), KafkaError> {
        let mut record: BaseRecord<'_, [u8], [u8], usize> = match out {
            Out::Enriched {
                partition, record, ..
            } => BaseRecord::with_opaque_to(
                &self.topics.changes_enriched,
                producer.context().opaque(index),
            )
            .partition(*partition)
            .key(&record.key[..])
            .payload(&record.value[..]),
            Out::Dlq {
                raw,
                code,
                reason,
                with_payload,
                ..
            } => {
                let Some(raw) = raws.get(*raw) else {
                    return Ok(());
                };
                let headers = pkgstream_runtime::dlq::headers(
                    code,
                    reason,
                    self.raw_topic(raw.lane),
                    raw.partition,
                    raw.offset,
                );
                let mut r =
                    BaseRecord::with_opaque_to(&self.topics.dlq, producer.context().opaque(index))
                        .headers(headers);
                if *with_payload {
                    r = r.payload(&raw.payload[..]);
                }
                if let Some(k) = &raw.key {
                    r = r.key(&k[..]);
                }
                r
            }
        };
        loop {
            match producer.send(record) {
                Ok(()) => return Ok(()),
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                    record = r;
                    producer.poll(Duration::from_millis(10));
                }
                Err((e, _)) => return Err(e),
            }
        }
    }

    /// Sets the lag gauge of every assigned raw partition from the group's
    /// committed offsets (what a restart would resume from, so a router that
    /// reads but cannot commit shows its lag); returns whether the broker
    /// answered: the total lag, `None` when it did not or nothing is
    /// assigned.
    fn update_lag(&self, consumer: &BaseConsumer<RebalanceLog>) -> Option<i64> {
        let assignment = consumer.assignment().ok()?;
        if assignment.count() == 0 {
            return None;
        }
        let committed = consumer
            .committed_offsets(assignment, Duration::from_secs(5))
            .ok()?;
        let mut total = 0;
        for e in committed.elements() {
            let Ok((low, high)) =
                consumer.fetch_watermarks(e.topic(), e.partition(), Duration::from_secs(2))
            else {
                return None;
            };
            let from = match e.offset() {
                Offset::Offset(o) => o,
                _ => low,
            };
            let lag = (high - from).max(0);
            total += lag;
            self.metrics
                .consumer_lag
                .with_label_values(&[e.topic(), &e.partition().to_string()])
                .set(lag);
        }
        Some(total)
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
    let kafka = router.kafka.clone();
    let topic = router.topics.hosts.clone();
    let file = router.config.hosts_file.clone();
    let metrics = router.metrics.clone();
    std::thread::Builder::new()
        .name("host-table".into())
        .spawn(move || {
            let mut file_mtime = file.as_ref().and_then(|f| std::fs::metadata(f).and_then(|m| m.modified()).ok());
            let mut reader: Option<(BaseConsumer<LastCause>, HashMap<i32, i64>)> = None;
            let mut last_file_check = Instant::now();
            while !shutdown.requested() {
                if reader.is_none() {
                    match open_hosts_reader(&kafka, &topic) {
                        Ok(r) => reader = Some(r),
                        Err(e) => {
                            if !flag.get() {
                                warn!(topic = %topic, brokers = %kafka.brokers, error = %e, "hosts topic not readable; retrying every 30 s (file entries and defaults apply meanwhile)");
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
                            let value = HostMeta::from_topic_value(m.payload().unwrap_or_default());
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
///
/// A failure says what the client last reported as its cause (a failed
/// authentication, an untrusted certificate, a TLS listener), not only
/// "broker transport failure".
fn open_hosts_reader(
    kafka: &KafkaConfig,
    topic: &str,
) -> Result<(BaseConsumer<LastCause>, HashMap<i32, i64>), String> {
    let consumer: BaseConsumer<LastCause> = kafka
        .client_config()
        .map_err(|e| e.to_string())?
        .set("group.id", "pkgstream-router-hosts")
        .set("enable.auto.commit", "false")
        // Assign only, like the rebuild reader.
        .set(
            "max.poll.interval.ms",
            crate::rebuild::READER_POLL_INTERVAL_MS,
        )
        .set("allow.auto.create.topics", "false")
        .create_with_context(LastCause::default())
        .map_err(|e| e.to_string())?;
    let failed = |what: &str, e: KafkaError| {
        // The client's errors and logs arrive with a poll.
        let _ = consumer.poll(Duration::from_millis(100));
        consumer.context().reason(kafka, what, &e)
    };
    let md = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .map_err(|e| failed("metadata", e))?;
    let t = md
        .topics()
        .first()
        .filter(|t| t.error().is_none() && !t.partitions().is_empty())
        .ok_or_else(|| {
            failed(
                "metadata",
                KafkaError::MetadataFetch(RDKafkaErrorCode::UnknownTopic),
            )
        })?;
    let mut tpl = TopicPartitionList::new();
    let mut ends = HashMap::new();
    for p in t.partitions() {
        tpl.add_partition_offset(topic, p.id(), Offset::Beginning)
            .map_err(|e| failed("assign", e))?;
        let (low, high) = consumer
            .fetch_watermarks(topic, p.id(), Duration::from_secs(10))
            .map_err(|e| failed("watermarks", e))?;
        if high > low {
            ends.insert(p.id(), high);
        }
    }
    consumer.assign(&tpl).map_err(|e| failed("assign", e))?;
    Ok((consumer, ends))
}
