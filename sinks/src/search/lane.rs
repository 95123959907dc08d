//! One lane of the search sink: it batches the messages of its partitions
//! by count, bytes and time, turns them into bulk items
//! ([`super::documents`]), sends one bulk at a time as [`super::plan`]
//! says (item retries in order, a refused bulk bisected), reconciles
//! snapshots against the indexed state, sends what the engine refused for
//! good to the DLQ, and only then stores the batch's offsets. One partition
//! is in one lane, so one host's events are applied in order. The audit
//! replay ([`super::audit`]) drives a lane without a consumer.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use pkgstream_runtime::shutdown::Shutdown;
use pkgstream_schemas::{
    decode_enriched_change, decode_enriched_snapshot, EnrichedSnapshot, Kind, Registry,
};
use rdkafka::consumer::Consumer;
use rdkafka::{Offset, TopicPartitionList};
use serde_json::json;
use tracing::{debug, info, warn};

use super::audit::AuditRejection;
use super::client::{BulkAnswer, CallError, EngineClient};
use super::documents::{
    change_items, history_item, host_update, oversized_id, snapshot_items, IndexedPackage, Indices,
    ItemKind,
};
use super::plan::{Answer, BulkPlan, ItemOutcome, Step};
use super::retry::{backoff, item_verdict, ItemVerdict};
use super::sink::{SearchSinkMetrics, SinkConsumer};
use crate::config::SearchSinkConfig;
use crate::dlq::{elide, DeadLetter, Dlq, MAX_REASON_BYTES};
use crate::SinkError;

/// A message copied out of the consumer.
pub(super) struct Msg {
    pub(super) partition: i32,
    pub(super) offset: i64,
    pub(super) key: Option<Vec<u8>>,
    pub(super) payload: Vec<u8>,
}

/// What stopped a lane.
pub(super) enum LaneStop {
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

pub(super) fn ms(v: u64) -> Duration {
    Duration::from_millis(v)
}

/// Sleeps `d` in small steps; false if shutdown was requested meanwhile.
pub(super) fn sleep_unless(shutdown: &Shutdown, d: Duration) -> bool {
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
pub(super) struct Item {
    start: usize,
    end: usize,
    kind: ItemKind,
    msg: usize,
    target: u64,
}

/// The batch a lane is building.
#[derive(Default)]
pub(super) struct Batch {
    pub(super) body: Vec<u8>,
    pub(super) items: Vec<Item>,
    pub(super) msgs: Vec<Msg>,
    /// Per message: why it goes to the DLQ (code, reason).
    pub(super) rejected: Vec<Option<(&'static str, String)>>,
    /// Per host: the message with its latest event (one host update per batch).
    pub(super) hosts: HashMap<String, (i64, usize)>,
    pub(super) started: Option<Instant>,
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
pub(super) enum Mode {
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

pub(super) struct Lane {
    pub(super) id: usize,
    pub(super) client: EngineClient,
    pub(super) idx: Indices,
    pub(super) cfg: SearchSinkConfig,
    pub(super) topic: String,
    pub(super) mode: Mode,
    pub(super) metrics: Arc<SearchSinkMetrics>,
    /// Per lane: waiting for the engine (its last request got no answer).
    pub(super) engine_down: Arc<[AtomicBool]>,
    pub(super) shutdown: Shutdown,
    pub(super) batch: Batch,
    /// Bytes queued for lanes (see `SearchSink::run`).
    pub(super) queued: Arc<AtomicUsize>,
}

impl Lane {
    pub(super) fn run(&mut self, rx: Receiver<Msg>) -> Result<(), LaneStop> {
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
    pub(super) fn add(&mut self, m: Msg) -> Result<(), LaneStop> {
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
    pub(super) fn flush(&mut self) -> Result<(), LaneStop> {
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
                                ItemVerdict::Fatal => {
                                    // Nothing of this batch goes to the DLQ
                                    // and no offset is stored: the events are
                                    // read again once the user may write.
                                    return Err(LaneStop::Fatal(SinkError::Engine {
                                        url: self.client.display_url(),
                                        what: format!("bulk item ({:?})", it.kind).to_lowercase(),
                                        reason: elide(
                                            &format!("HTTP {}: {}", st.status, st.reason()),
                                            MAX_REASON_BYTES,
                                        ),
                                    }));
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
