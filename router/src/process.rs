//! The per-event work, free of I/O so it can be unit-tested and benched:
//! decode and validate, bound the host's clock, look the host up, compute
//! the flags, build the enriched bytes (copying the raw datum), and infer
//! lost changes from inventory snapshots (staged until the caller commits,
//! see [`Processor::commit`]).

use std::borrow::Cow;

use pkgstream_schemas::{
    decode_change, decode_snapshot, Encoder, EnrichedChange, EnrichedSnapshot, Enrichment, EventId,
    PackageChange, SchemaError, Source,
};

use crate::hosts::{HostMeta, HostTable};
use tracing::warn;

use crate::chunks::{ChunkAssembler, ChunkOutcome};
use crate::inventory::InventoryTracker;

/// Which raw topic an event came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Lane {
    /// `pkgstream.changes.raw`.
    Changes,
    /// `pkgstream.inventory.raw`.
    Inventory,
}

impl Lane {
    /// Metric label.
    pub fn label(self) -> &'static str {
        match self {
            Lane::Changes => "changes",
            Lane::Inventory => "inventory",
        }
    }
}

/// One raw record as the router read it.
#[derive(Clone, Copy, Debug)]
pub struct RawEvent<'a> {
    /// The raw topic it came from.
    pub lane: Lane,
    /// Its partition (the host's: raw topics are keyed by machine id).
    pub partition: i32,
    /// The record value.
    pub bytes: &'a [u8],
    /// The record's Kafka timestamp in microseconds, if it has one.
    pub timestamp: Option<i64>,
}

/// Why a raw event cannot be routed: it goes to the DLQ with `code` (the
/// `pkgstream.error.code` header) and `reason`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Poison {
    /// Reason code: a `SchemaError::code()`, or `clock_ahead`.
    pub code: &'static str,
    /// What is wrong, for a human.
    pub reason: String,
}

impl From<SchemaError> for Poison {
    fn from(e: SchemaError) -> Poison {
        Poison {
            code: e.code(),
            reason: e.to_string(),
        }
    }
}

impl std::fmt::Display for Poison {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.code, self.reason)
    }
}

/// Default of [`Processor::with_max_clock_ahead`]: one hour.
pub const DEFAULT_MAX_CLOCK_AHEAD_SECS: u64 = 3600;

/// What an output record is, for metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OutKind {
    /// An enriched reported change.
    Change,
    /// An enriched snapshot.
    Snapshot,
    /// A change inferred from two snapshots.
    Synthetic,
}

impl OutKind {
    /// Metric label.
    pub fn label(self) -> &'static str {
        match self {
            OutKind::Change => "change",
            OutKind::Snapshot => "snapshot",
            OutKind::Synthetic => "synthetic",
        }
    }
}

/// One record for the enriched topic.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Enriched {
    /// Dedupe key (event id or snapshot id).
    pub id: EventId,
    /// How much context the report carries: 2 = dnf/yum context, 1 = bare
    /// rpm, 0 = inferred. Of two reports of one change the richer is kept.
    pub richness: u8,
    /// What it is.
    pub kind: OutKind,
    /// Kafka key: the machine id.
    pub key: Vec<u8>,
    /// Single-object encoded `EnrichedChange` or `EnrichedSnapshot`.
    pub value: Vec<u8>,
}

/// Defaults for hosts that no host table knows.
#[derive(Clone, Debug)]
pub struct HostDefaults {
    /// Host group.
    pub hostgroup: String,
    /// Environment.
    pub environment: String,
}

/// Turns raw events into enriched records.
pub struct Processor {
    hosts: HostTable,
    defaults: HostDefaults,
    encoder: Encoder,
    inventory: InventoryTracker,
    /// Chunked snapshots on their way to `inventory`.
    chunks: ChunkAssembler,
    /// Events of hosts in no host table since the last [`Processor::take_unknown`].
    unknown: u64,
    /// How far an event's time may be ahead of its record's timestamp, in
    /// microseconds.
    max_ahead_micros: i64,
}

impl Processor {
    /// A processor reading the given host table.
    pub fn new(hosts: HostTable, defaults: HostDefaults) -> Self {
        Processor {
            hosts,
            defaults,
            encoder: Encoder::new(),
            inventory: InventoryTracker::default(),
            chunks: ChunkAssembler::default(),
            unknown: 0,
            max_ahead_micros: (DEFAULT_MAX_CLOCK_AHEAD_SECS * 1_000_000) as i64,
        }
    }

    /// Refuses events whose time is more than `secs` ahead of their record's
    /// Kafka timestamp (or of `now`, where that is earlier: a record's
    /// CreateTime is the host's own clock).
    pub fn with_max_clock_ahead(mut self, secs: u64) -> Self {
        self.max_ahead_micros = secs.saturating_mul(1_000_000).min(i64::MAX as u64) as i64;
        self
    }

    /// Poison when `event_time` is too far ahead of the reference clock.
    fn check_clock(
        &self,
        what: &str,
        event_time: i64,
        raw: &RawEvent<'_>,
        now: i64,
    ) -> Result<(), Poison> {
        let reference = raw.timestamp.map_or(now, |t| t.min(now));
        let ahead = event_time.saturating_sub(reference);
        if ahead > self.max_ahead_micros {
            return Err(Poison {
                code: "clock_ahead",
                reason: format!(
                    "{what} {event_time} µs is {} s ahead of the record's timestamp {reference} µs (the host's clock is wrong; router.max_clock_ahead_secs = {})",
                    ahead / 1_000_000,
                    self.max_ahead_micros / 1_000_000
                ),
            });
        }
        Ok(())
    }

    /// Processes one raw event at `now` (microseconds): the enriched records
    /// to produce, or the reason it is poison. What it teaches the inventory
    /// tracker is staged until [`Processor::commit`].
    pub fn process(&mut self, raw: &RawEvent<'_>, now: i64) -> Result<Vec<Enriched>, Poison> {
        let bytes = raw.bytes;
        match raw.lane {
            Lane::Changes => {
                let change = decode_change(bytes)?;
                self.check_clock("event_time", change.event_time, raw, now)?;
                self.inventory.note_change(raw.partition, &change);
                let meta = self
                    .hosts
                    .get(&change.host.machine_id, &change.host.hostname);
                let enrichment = change_enrichment(
                    &self.defaults,
                    &mut self.unknown,
                    meta.as_deref(),
                    &change,
                    now,
                );
                let richness = richness(&change);
                let mut value = Vec::with_capacity(bytes.len() + 64);
                if !self
                    .encoder
                    .append_enrichment(bytes, &enrichment, &mut value)?
                {
                    let (id, key) = (change.event_id, change.host.machine_id.as_bytes().to_vec());
                    self.encoder.encode_enriched_change(
                        &EnrichedChange::new(change, enrichment),
                        &mut value,
                    )?;
                    return Ok(vec![Enriched {
                        id,
                        richness,
                        kind: OutKind::Change,
                        key,
                        value,
                    }]);
                }
                Ok(vec![Enriched {
                    id: change.event_id,
                    richness,
                    kind: OutKind::Change,
                    key: change.host.machine_id.as_bytes().to_vec(),
                    value,
                }])
            }
            Lane::Inventory => {
                let snapshot = decode_snapshot(bytes)?;
                self.check_clock("taken_at", snapshot.taken_at, raw, now)?;
                let meta = self
                    .hosts
                    .get(&snapshot.host.machine_id, &snapshot.host.hostname);
                let key = snapshot.host.machine_id.as_bytes().to_vec();
                let enrichment =
                    base_enrichment(&self.defaults, &mut self.unknown, meta.as_deref(), now);
                let mut out = Vec::new();
                let mut value = Vec::with_capacity(bytes.len() + 64);
                if !self
                    .encoder
                    .append_enrichment(bytes, &enrichment, &mut value)?
                {
                    self.encoder.encode_enriched_snapshot(
                        &EnrichedSnapshot::new(snapshot.clone(), enrichment.clone()),
                        &mut value,
                    )?;
                }
                out.push(Enriched {
                    id: snapshot.snapshot_id,
                    richness: 0,
                    kind: OutKind::Snapshot,
                    key: key.clone(),
                    value,
                });
                // A chunk is forwarded as it is; the tracker compares whole
                // snapshots, assembled from their chunks (see `chunks`).
                let synthetics = match snapshot.chunk {
                    None => self.inventory.snapshot(raw.partition, &snapshot),
                    Some(chunk) => match self.chunks.add(raw.partition, &snapshot, chunk) {
                        Ok(whole) => self.inventory.snapshot(raw.partition, &whole),
                        Err(ChunkOutcome::Pending | ChunkOutcome::Ignored) => Vec::new(),
                        Err(ChunkOutcome::Dropped(why)) => {
                            warn!(partition = raw.partition, machine_id = %snapshot.host.machine_id, index = chunk.index, count = chunk.count, why, "snapshot chunk not assembled: that snapshot is not compared for lost changes");
                            Vec::new()
                        }
                    },
                };
                for synthetic in synthetics {
                    let mut value = Vec::new();
                    let id = synthetic.event_id;
                    self.encoder.encode_enriched_change(
                        &EnrichedChange::new(synthetic, enrichment.clone()),
                        &mut value,
                    )?;
                    out.push(Enriched {
                        id,
                        richness: 0,
                        kind: OutKind::Synthetic,
                        key: key.clone(),
                        value,
                    });
                }
                Ok(out)
            }
        }
    }

    /// The transaction holding the outputs of everything processed since the
    /// last commit or abort committed: the inventory state it implies holds.
    pub fn commit(&mut self) {
        self.inventory.commit();
        self.chunks.commit();
    }

    /// That transaction aborted: its inventory state is forgotten, so the
    /// same events processed again give the same outputs.
    pub fn abort(&mut self) {
        self.inventory.abort();
        self.chunks.abort();
    }

    /// Keeps the inventory state of the raw partitions `keep` accepts.
    pub fn retain_partitions(&mut self, keep: impl Fn(i32) -> bool) {
        self.chunks.retain_partitions(&keep);
        self.inventory.retain_partitions(keep);
    }

    /// Raw partitions with inventory state.
    pub fn partitions(&self) -> Vec<i32> {
        self.inventory.partitions()
    }

    /// Returns and resets the count of events from unknown hosts.
    pub fn take_unknown(&mut self) -> u64 {
        std::mem::take(&mut self.unknown)
    }
}

/// The enrichment of one event, borrowing the host's metadata (no
/// allocation per event for known hosts); counts unknown hosts.
fn base_enrichment<'m>(
    defaults: &'m HostDefaults,
    unknown: &mut u64,
    meta: Option<&'m HostMeta>,
    now: i64,
) -> Enrichment<'m> {
    match meta {
        Some(m) => Enrichment {
            hostgroup: Cow::Borrowed(&m.hostgroup),
            environment: Cow::Borrowed(&m.environment),
            owner: m.owner.as_deref().map(Cow::Borrowed),
            datacenter: m.datacenter.as_deref().map(Cow::Borrowed),
            tags: Cow::Borrowed(&m.tags),
            known_host: true,
            outside_maintenance_window: false,
            unexplained_rpm: false,
            routed_at: now,
        },
        None => {
            *unknown += 1;
            Enrichment {
                hostgroup: Cow::Borrowed(&defaults.hostgroup),
                environment: Cow::Borrowed(&defaults.environment),
                owner: None,
                datacenter: None,
                tags: Cow::Owned(Default::default()),
                known_host: false,
                outside_maintenance_window: false,
                unexplained_rpm: false,
                routed_at: now,
            }
        }
    }
}

/// [`base_enrichment`] plus the flags of a change.
fn change_enrichment<'m>(
    defaults: &'m HostDefaults,
    unknown: &mut u64,
    meta: Option<&'m HostMeta>,
    change: &PackageChange<'_>,
    now: i64,
) -> Enrichment<'m> {
    let mut e = base_enrichment(defaults, unknown, meta, now);
    e.outside_maintenance_window = meta.is_some_and(|m| m.outside_maintenance(change.event_time));
    e.unexplained_rpm = change.source == Source::Rpm;
    e
}

/// 2 when a package manager's context is present, 1 for a bare report, 0
/// for an inferred one.
fn richness(c: &PackageChange<'_>) -> u8 {
    match c.source {
        Source::Inventory => 0,
        _ if c.transaction.history_id.is_some() || c.transaction.command_line.is_some() => 2,
        _ => 1,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::hosts::Window;
    use pkgstream_schemas::{decode_enriched_change, decode_enriched_snapshot, sample, Action};

    fn processor() -> (Processor, HostTable) {
        let hosts = HostTable::default();
        let p = Processor::new(
            hosts.clone(),
            HostDefaults {
                hostgroup: "unassigned".into(),
                environment: "unknown".into(),
            },
        );
        (p, hosts)
    }

    fn ev(lane: Lane, bytes: &[u8]) -> RawEvent<'_> {
        RawEvent {
            lane,
            partition: 0,
            bytes,
            timestamp: None,
        }
    }

    #[test]
    fn events_too_far_ahead_of_the_record_timestamp_are_poison() {
        let (p, _) = processor();
        let mut p = p.with_max_clock_ahead(3600);
        let mut c = sample::change(3);
        let now = 1_800_000_000_000_000;
        let record_time = now - 86_400_000_000;
        c.event_time = record_time + 3_600_000_000;
        let bytes = raw(&c);
        let at = |timestamp| RawEvent {
            timestamp,
            ..ev(Lane::Changes, &bytes)
        };
        assert!(
            p.process(&at(Some(record_time)), now).is_ok(),
            "at the bound"
        );
        c.event_time += 1;
        let bytes = raw(&c);
        let at = |timestamp| RawEvent {
            timestamp,
            ..ev(Lane::Changes, &bytes)
        };
        let e = p.process(&at(Some(record_time)), now).unwrap_err();
        assert_eq!(e.code, "clock_ahead");
        assert!(e.reason.contains("3600 s ahead"), "{}", e.reason);
        assert!(p.process(&at(None), now).is_ok(), "no timestamp: now");
        // A CreateTime as far ahead as the event does not excuse it.
        c.event_time = now + 10 * 365 * 86_400_000_000;
        let bytes = raw(&c);
        let e = p
            .process(
                &RawEvent {
                    timestamp: Some(c.event_time),
                    ..ev(Lane::Changes, &bytes)
                },
                now,
            )
            .unwrap_err();
        assert_eq!(e.code, "clock_ahead");
        let mut s = sample::snapshot(2, 2);
        s.taken_at = now + 7_200_000_000;
        let mut bytes = Vec::new();
        Encoder::new().encode_snapshot(&s, &mut bytes).unwrap();
        assert_eq!(
            p.process(&ev(Lane::Inventory, &bytes), now)
                .unwrap_err()
                .code,
            "clock_ahead"
        );
    }

    fn raw(c: &PackageChange<'_>) -> Vec<u8> {
        let mut out = Vec::new();
        Encoder::new().encode_change(c, &mut out).unwrap();
        out
    }

    #[test]
    fn known_host_gets_its_metadata_and_flags() {
        let (mut p, hosts) = processor();
        let c = sample::change(1);
        hosts.apply_topic_record(
            &c.host.machine_id,
            Some(HostMeta {
                hostgroup: "web".into(),
                environment: "prod".into(),
                owner: Some("team-web".into()),
                maintenance: vec![Window::parse("sat 02:00-04:00").unwrap()],
                ..HostMeta::default()
            }),
        );
        let out = p
            .process(&ev(Lane::Changes, &raw(&c)), 1_800_000_000_000_000)
            .unwrap();
        assert_eq!(out.len(), 1);
        let e = decode_enriched_change(&out[0].value).unwrap();
        let (change, enrichment) = e.into_parts();
        assert_eq!(change, c, "the reported change passes unchanged");
        assert_eq!(
            (
                &*enrichment.hostgroup,
                &*enrichment.environment,
                enrichment.owner.as_deref()
            ),
            ("web", "prod", Some("team-web"))
        );
        assert!(
            enrichment.known_host
                && enrichment.outside_maintenance_window
                && !enrichment.unexplained_rpm
        );
        assert_eq!(out[0].id, c.event_id);
        assert_eq!(out[0].key, c.host.machine_id.as_bytes());
        assert_eq!(out[0].richness, 2);
        assert_eq!(p.take_unknown(), 0);
    }

    #[test]
    fn unknown_host_gets_defaults_and_plain_rpm_is_flagged() {
        let (mut p, _) = processor();
        let mut c = sample::change(2);
        c.source = Source::Rpm;
        c.transaction.history_id = None;
        c.transaction.command_line = None;
        let out = p
            .process(&ev(Lane::Changes, &raw(&c)), 1_800_000_000_000_000)
            .unwrap();
        let (_, e) = decode_enriched_change(&out[0].value).unwrap().into_parts();
        assert_eq!(
            (
                &*e.hostgroup,
                e.known_host,
                e.unexplained_rpm,
                e.outside_maintenance_window
            ),
            ("unassigned", false, true, false)
        );
        assert_eq!(out[0].richness, 1);
        assert_eq!(p.take_unknown(), 1);
    }

    #[test]
    fn poison_is_an_error_with_its_reason() {
        let (mut p, _) = processor();
        assert_eq!(
            p.process(&ev(Lane::Changes, b"garbage-garbage"), 1)
                .unwrap_err()
                .code,
            "wrong_magic"
        );
        let mut snap = Vec::new();
        Encoder::new()
            .encode_snapshot(&sample::snapshot(1, 2), &mut snap)
            .unwrap();
        assert_eq!(
            p.process(&ev(Lane::Changes, &snap), 1).unwrap_err().code,
            "wrong_kind"
        );
    }

    #[test]
    fn second_snapshot_yields_synthetic_changes() {
        let (mut p, _) = processor();
        let mut s = sample::snapshot(4, 3);
        let enc = |s: &pkgstream_schemas::InventorySnapshot<'_>| {
            let mut out = Vec::new();
            Encoder::new().encode_snapshot(s, &mut out).unwrap();
            out
        };
        let first = p
            .process(&ev(Lane::Inventory, &enc(&s)), 1_800_000_000_000_000)
            .unwrap();
        assert_eq!(first.len(), 1);
        assert_eq!(
            decode_enriched_snapshot(&first[0].value)
                .unwrap()
                .packages
                .len(),
            3
        );
        s.taken_at += 86_400_000_000;
        s.snapshot_id = pkgstream_schemas::snapshot_id(&s.host.machine_id, s.taken_at);
        s.packages[1].release = Cow::Borrowed("99.el9");
        let second = p
            .process(&ev(Lane::Inventory, &enc(&s)), 1_800_000_000_000_001)
            .unwrap();
        assert_eq!(
            second.iter().map(|o| o.kind).collect::<Vec<_>>(),
            [OutKind::Snapshot, OutKind::Synthetic]
        );
        let (c, e) = decode_enriched_change(&second[1].value)
            .unwrap()
            .into_parts();
        assert_eq!(
            (c.action, c.source, &*c.package.name, &*c.package.release),
            (Action::Upgrade, Source::Inventory, "pkg-0001", "99.el9")
        );
        assert_eq!(e.hostgroup, "unassigned");
    }
}
