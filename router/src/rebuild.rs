//! Dedupe windows rebuilt off the poll loop.
//!
//! The window of a raw partition `p` is rebuilt, when `p` first has input
//! after an assignment, from the ids already committed to enriched partition
//! `p`: up to `dedupe_window_entries` records, which on a big partition takes
//! longer than `max.poll.interval.ms` allows between two polls of the group
//! consumer (the member would be kicked out, rejoin, rebuild again, and never
//! commit). So the loop never waits for it: [`WindowRebuilds`] pauses `p` on
//! both raw topics, holds the messages of `p` already polled, and reads the
//! enriched partitions on a worker thread with its own reader, while the loop
//! keeps polling and committing the other partitions. When the window is
//! there, `p` is resumed and its held messages go first into the next batch,
//! so `p`'s order is kept (a paused partition resumes after the last message
//! it delivered).
//!
//! Nothing is committed to enriched `p` while its window is rebuilt: this
//! instance owns `p` and holds its input. A rebalance drops everything: the
//! held messages (their offsets are not committed: they come again, here or
//! elsewhere), the rebuilds under way (their results are ignored, their
//! workers stop) and the pauses.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TryRecvError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use pkgstream_runtime::config::KafkaConfig;
use pkgstream_schemas::{EventId, Kind, Registry};
use prometheus::Histogram;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::KafkaError;
use rdkafka::{Message, Offset, TopicPartitionList};
use tracing::{debug, info, warn};

use crate::dedupe::DedupeWindow;
use crate::output::Raw;
use crate::RouterError;

/// Finished rebuilds waiting for the loop, at most (a worker waits when the
/// loop has not taken them yet).
const FINISHED_QUEUE: usize = 256;

/// A partition quiet this long at the reader is at its end (transaction
/// markers past the last record, or an open transaction of a fenced
/// instance).
const QUIET_END: Duration = Duration::from_secs(2);

/// `max.poll.interval.ms` of a reader that joins no group: librdkafka's
/// most, above any session timeout it accepts.
pub(crate) const READER_POLL_INTERVAL_MS: &str = "86400000";

/// What a rebuild reads and how large its windows are.
#[derive(Clone)]
pub(crate) struct RebuildSpec {
    /// `[kafka]`.
    pub kafka: KafkaConfig,
    /// The enriched topic.
    pub topic: String,
    /// The reader's group id (it commits nothing).
    pub group_id: String,
    /// Window bound: entries.
    pub entries: usize,
    /// Window bound: age in seconds.
    pub secs: u32,
    /// Seconds from a rebuild's request to its window being ready, per partition.
    pub seconds: Histogram,
}

/// One partition's rebuilt window (or why it could not be), from a worker.
struct Rebuilt {
    /// The [`WindowRebuilds::epoch`] it was asked in.
    epoch: u64,
    partition: i32,
    window: Result<DedupeWindow, RouterError>,
}

/// The rebuilds under way and the input they hold back (see the module).
pub(crate) struct WindowRebuilds {
    spec: RebuildSpec,
    /// Bumped by [`WindowRebuilds::reset`]: older results are stale.
    epoch: u64,
    /// Raised to stop this epoch's workers.
    cancel: Arc<AtomicBool>,
    tx: SyncSender<Rebuilt>,
    rx: Receiver<Rebuilt>,
    /// Partitions being rebuilt (paused), with the messages held for them,
    /// in the order polled.
    held: HashMap<i32, Vec<Raw>>,
    /// Partitions this instance paused and has not resumed.
    paused: HashSet<i32>,
}

impl Drop for WindowRebuilds {
    fn drop(&mut self) {
        self.cancel.store(true, Ordering::Relaxed);
    }
}

impl WindowRebuilds {
    pub(crate) fn new(spec: RebuildSpec) -> WindowRebuilds {
        let (tx, rx) = sync_channel(FINISHED_QUEUE);
        WindowRebuilds {
            spec,
            epoch: 0,
            cancel: Arc::new(AtomicBool::new(false)),
            tx,
            rx,
            held: HashMap::new(),
            paused: HashSet::new(),
        }
    }

    /// Messages held back, over all partitions being rebuilt.
    pub(crate) fn held(&self) -> usize {
        self.held.values().map(Vec::len).sum()
    }

    /// After a rebalance: drops the held messages and the rebuilds under
    /// way, and resumes every partition paused here or assigned (an
    /// application pause outlives a revoke in librdkafka).
    pub(crate) fn reset<C: ConsumerContext>(
        &mut self,
        consumer: &BaseConsumer<C>,
        topics: [&str; 2],
    ) -> Result<(), KafkaError> {
        self.cancel.store(true, Ordering::Relaxed);
        self.cancel = Arc::new(AtomicBool::new(false));
        self.epoch += 1;
        if !self.held.is_empty() {
            debug!(
                partitions = self.held.len(),
                dropped = self.held(),
                "rebalance: dropping the messages held for window rebuilds"
            );
        }
        self.held.clear();
        let mut tpl = consumer.assignment()?;
        for p in self.paused.drain() {
            for topic in topics {
                tpl.add_partition(topic, p);
            }
        }
        if tpl.count() > 0 {
            consumer.resume(&tpl)?;
        }
        Ok(())
    }

    /// Takes the rebuilds that finished: their windows go into `windows`,
    /// their partitions are resumed, and their held messages are returned
    /// (to be processed before anything polled later). A failed rebuild is
    /// the loop's error.
    pub(crate) fn finished<C: ConsumerContext>(
        &mut self,
        consumer: &BaseConsumer<C>,
        topics: [&str; 2],
        windows: &mut HashMap<i32, DedupeWindow>,
    ) -> Result<Vec<Raw>, RouterError> {
        let mut out = Vec::new();
        let mut resume = TopicPartitionList::new();
        loop {
            let done = match self.rx.try_recv() {
                Ok(done) => done,
                Err(TryRecvError::Empty | TryRecvError::Disconnected) => break,
            };
            if done.epoch != self.epoch {
                continue;
            }
            let Some(held) = self.held.remove(&done.partition) else {
                continue;
            };
            windows.insert(done.partition, done.window?);
            if self.paused.remove(&done.partition) {
                for topic in topics {
                    resume.add_partition(topic, done.partition);
                }
            }
            out.extend(held);
        }
        if resume.count() > 0 {
            consumer.resume(&resume).map_err(|e| RouterError::Kafka {
                brokers: self.spec.kafka.brokers.clone(),
                what: "resume partitions",
                reason: e.to_string(),
            })?;
        }
        Ok(out)
    }

    /// Splits `batch`: the messages of partitions with a window are
    /// returned; the others are held, and their partitions paused and
    /// rebuilt (one worker for the partitions new in this batch).
    pub(crate) fn hold_unready<C: ConsumerContext>(
        &mut self,
        consumer: &BaseConsumer<C>,
        topics: [&str; 2],
        windows: &HashMap<i32, DedupeWindow>,
        batch: Vec<Raw>,
    ) -> Result<Vec<Raw>, RouterError> {
        let mut ready = Vec::with_capacity(batch.len());
        let mut new = Vec::new();
        for raw in batch {
            if windows.contains_key(&raw.partition) {
                ready.push(raw);
                continue;
            }
            let held = self.held.entry(raw.partition).or_insert_with(|| {
                new.push(raw.partition);
                Vec::new()
            });
            held.push(raw);
        }
        if new.is_empty() {
            return Ok(ready);
        }
        let mut pause = TopicPartitionList::new();
        for p in &new {
            for topic in topics {
                pause.add_partition(topic, *p);
            }
        }
        consumer.pause(&pause).map_err(|e| RouterError::Kafka {
            brokers: self.spec.kafka.brokers.clone(),
            what: "pause partitions",
            reason: e.to_string(),
        })?;
        self.paused.extend(new.iter().copied());
        debug!(partitions = ?new, "partitions paused while their dedupe windows are rebuilt");
        let spec = self.spec.clone();
        let (tx, epoch, cancel) = (self.tx.clone(), self.epoch, self.cancel.clone());
        let worker = new.clone();
        std::thread::Builder::new()
            .name("window-rebuild".into())
            .spawn(move || rebuild(&spec, &worker, epoch, &tx, &cancel))
            .map_err(|e| {
                RouterError::Topology(format!("cannot start a window rebuild thread: {e}"))
            })?;
        Ok(ready)
    }
}

/// Rebuilds the windows of `partitions` with one reader and sends each to
/// `tx` as soon as it is complete; stops when `cancel` is raised or the
/// loop is gone.
fn rebuild(
    spec: &RebuildSpec,
    partitions: &[i32],
    epoch: u64,
    tx: &SyncSender<Rebuilt>,
    cancel: &AtomicBool,
) {
    let started = Instant::now();
    let send = |partition: i32, window: Result<DedupeWindow, RouterError>| {
        if let Ok(w) = &window {
            spec.seconds.observe(started.elapsed().as_secs_f64());
            info!(
                partition,
                entries = w.len(),
                elapsed_ms = started.elapsed().as_millis() as u64,
                "dedupe window rebuilt"
            );
        }
        tx.send(Rebuilt {
            epoch,
            partition,
            window,
        })
        .is_ok()
    };
    let kafka_err = |what: &'static str| {
        move |e: KafkaError| RouterError::Kafka {
            brokers: spec.kafka.brokers.clone(),
            what,
            reason: e.to_string(),
        }
    };
    let (reader, mut todo) = match plan(spec, partitions) {
        Ok(planned) => planned,
        Err(e) => {
            warn!(error = %e, "dedupe window rebuild failed");
            for p in partitions {
                if !send(*p, Err(clone_err(&e))) {
                    return;
                }
            }
            return;
        }
    };
    let mut windows: HashMap<i32, DedupeWindow> = HashMap::new();
    for (p, end) in &todo {
        debug!(partition = p, end, "rebuilding dedupe window");
        windows.insert(*p, DedupeWindow::new(spec.entries, spec.secs));
    }
    for p in partitions {
        if !todo.contains_key(p) && !send(*p, Ok(DedupeWindow::new(spec.entries, spec.secs))) {
            return;
        }
    }
    let now_secs = chrono::Utc::now().timestamp() as u32;
    let registry = Registry::get();
    let mut idle = Instant::now();
    while !todo.is_empty() {
        if cancel.load(Ordering::Relaxed) {
            debug!("dedupe window rebuild cancelled");
            return;
        }
        let done: Vec<i32> = match reader.poll(Duration::from_millis(200)) {
            Some(Ok(m)) => {
                idle = Instant::now();
                let p = m.partition();
                let bytes = m.payload().unwrap_or_default();
                if let Some(w) = windows.get_mut(&p) {
                    // Both enriched kinds start with their 16-byte id.
                    if let (Ok((v, _)), Some(id)) = (registry.writer_of(bytes), bytes.get(10..26)) {
                        if matches!(v.kind, Kind::EnrichedChange | Kind::EnrichedSnapshot) {
                            let mut b = [0u8; 16];
                            b.copy_from_slice(id);
                            w.insert(&EventId(b), now_secs);
                        }
                    }
                }
                if todo.get(&p).is_some_and(|end| m.offset() + 1 >= *end) {
                    vec![p]
                } else {
                    continue;
                }
            }
            Some(Err(KafkaError::PartitionEOF(p))) => vec![p],
            Some(Err(e)) => {
                let e = kafka_err("rebuild dedupe window")(e);
                warn!(error = %e, "dedupe window rebuild failed");
                for p in todo.keys() {
                    if !send(*p, Err(clone_err(&e))) {
                        return;
                    }
                }
                return;
            }
            None if idle.elapsed() > QUIET_END => todo.keys().copied().collect(),
            None => continue,
        };
        // A partition read to its end is fetched no more (the loop may
        // already be committing to it).
        let mut stop = TopicPartitionList::new();
        for p in &done {
            stop.add_partition(&spec.topic, *p);
        }
        if let Err(e) = reader.pause(&stop) {
            debug!(error = %e, "rebuild reader: pause of finished partitions failed");
        }
        for p in done {
            if todo.remove(&p).is_some() {
                let w = windows
                    .remove(&p)
                    .unwrap_or_else(|| DedupeWindow::new(spec.entries, spec.secs));
                if !send(p, Ok(w)) {
                    return;
                }
            }
        }
    }
}

/// A reader assigned where each partition's window starts (the later of
/// the last `entries` records and the first record younger than `secs`),
/// and the end offset of each partition to read (those with nothing to
/// read are left out).
fn plan(
    spec: &RebuildSpec,
    partitions: &[i32],
) -> Result<(BaseConsumer, HashMap<i32, i64>), RouterError> {
    let kafka_err = |what: &'static str| {
        move |e: KafkaError| RouterError::Kafka {
            brokers: spec.kafka.brokers.clone(),
            what,
            reason: e.to_string(),
        }
    };
    let reader: BaseConsumer = spec
        .kafka
        .client_config()
        .map_err(|e| RouterError::KafkaClient(e.to_string()))?
        .set("group.id", &spec.group_id)
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed")
        .set("enable.partition.eof", "true")
        // It joins no group (assign only): the group consumer's poll
        // interval, which `librdkafka_options` may lower below the default
        // session timeout (refused by librdkafka), does not apply.
        .set("max.poll.interval.ms", READER_POLL_INTERVAL_MS)
        .create()
        .map_err(kafka_err("create rebuild reader"))?;
    let topic = spec.topic.as_str();
    let since = chrono::Utc::now().timestamp_millis() - i64::from(spec.secs) * 1000;
    let mut by_time = TopicPartitionList::new();
    for p in partitions {
        by_time
            .add_partition_offset(topic, *p, Offset::Offset(since))
            .map_err(kafka_err("offsets"))?;
    }
    let young: HashMap<i32, i64> = reader
        .offsets_for_times(by_time, Duration::from_secs(10))
        .map(|found| {
            found
                .elements()
                .iter()
                .filter_map(|e| match e.offset() {
                    Offset::Offset(o) => Some((e.partition(), o)),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    let mut tpl = TopicPartitionList::new();
    let mut ends = HashMap::new();
    for p in partitions {
        let (low, high) = reader
            .fetch_watermarks(topic, *p, Duration::from_secs(10))
            .map_err(kafka_err("fetch watermarks"))?;
        let mut start = low.max(high - spec.entries as i64);
        if let Some(o) = young.get(p) {
            start = start.max(*o);
        }
        if start < high {
            tpl.add_partition_offset(topic, *p, Offset::Offset(start))
                .map_err(kafka_err("offsets"))?;
            ends.insert(*p, high);
        }
    }
    if tpl.count() > 0 {
        reader.assign(&tpl).map_err(kafka_err("assign"))?;
    }
    Ok((reader, ends))
}

/// The same error again, for each partition of a failed rebuild.
fn clone_err(e: &RouterError) -> RouterError {
    match e {
        RouterError::Kafka {
            brokers,
            what,
            reason,
        } => RouterError::Kafka {
            brokers: brokers.clone(),
            what,
            reason: reason.clone(),
        },
        RouterError::KafkaClient(s) => RouterError::KafkaClient(s.clone()),
        other => RouterError::Topology(other.to_string()),
    }
}
