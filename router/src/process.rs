//! The per-event work, free of I/O so it can be unit-tested and benched:
//! decode and validate, look the host up, compute the flags, build the
//! enriched bytes (copying the raw datum), and infer lost changes from
//! inventory snapshots.

use std::borrow::Cow;

use pkgstream_schemas::{
    decode_change, decode_snapshot, Encoder, EnrichedChange, EnrichedSnapshot, Enrichment, EventId,
    PackageChange, SchemaError, Source,
};

use crate::hosts::{HostMeta, HostTable};
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
    /// Events of hosts in no host table since the last [`Processor::take_unknown`].
    unknown: u64,
}

impl Processor {
    /// A processor reading the given host table.
    pub fn new(hosts: HostTable, defaults: HostDefaults) -> Self {
        Processor {
            hosts,
            defaults,
            encoder: Encoder::new(),
            inventory: InventoryTracker::default(),
            unknown: 0,
        }
    }

    /// Processes one raw event at `now` (microseconds): the enriched records
    /// to produce, or the reason it is poison.
    pub fn process(
        &mut self,
        lane: Lane,
        bytes: &[u8],
        now: i64,
    ) -> Result<Vec<Enriched>, SchemaError> {
        match lane {
            Lane::Changes => {
                let change = decode_change(bytes)?;
                self.inventory.note_change(&change);
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
                for synthetic in self.inventory.snapshot(&snapshot) {
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
            .process(Lane::Changes, &raw(&c), 1_800_000_000_000_000)
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
            .process(Lane::Changes, &raw(&c), 1_800_000_000_000_000)
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
            p.process(Lane::Changes, b"garbage-garbage", 1)
                .unwrap_err()
                .code(),
            "wrong_magic"
        );
        let mut snap = Vec::new();
        Encoder::new()
            .encode_snapshot(&sample::snapshot(1, 2), &mut snap)
            .unwrap();
        assert_eq!(
            p.process(Lane::Changes, &snap, 1).unwrap_err().code(),
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
        let first = p.process(Lane::Inventory, &enc(&s), 5).unwrap();
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
        let second = p.process(Lane::Inventory, &enc(&s), 6).unwrap();
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
