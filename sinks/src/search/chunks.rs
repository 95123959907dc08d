//! A chunked snapshot (`InventorySnapshot.chunk`, schema v2) reconciled
//! chunk by chunk, without putting it back together: the chunks of one
//! snapshot arrive in order in one partition, hence in one lane.
//!
//! - every chunk: its packages are upserted where the index holds another
//!   version (or nothing), and the documents already at the snapshot's
//!   version are *marked* with the snapshot's id (`pkgstream.snapshot_id`,
//!   script [`SCRIPT_PACKAGE_MARK`](super::documents::SCRIPT_PACKAGE_MARK));
//!   either way no document holding a newer event is touched;
//! - the last chunk: the host's documents that no chunk wrote or marked
//!   (another snapshot id) and that hold nothing newer than the snapshot
//!   are deleted (guarded, as for a whole snapshot), and the host document
//!   gets the snapshot's facts.
//!
//! Deletions need every earlier chunk to have been applied: the lane
//! remembers, per host, which chunk of which snapshot it applied last
//! ([`ChunkProgress`]); a chunk out of order (one the host could not ship,
//! one the DLQ took, or a sink restart in the middle of a snapshot) makes
//! the snapshot incomplete: its upserts and marks stand (they are true as
//! of the snapshot), nothing is deleted, and
//! `pkgstream_search_sink_snapshots_incomplete_total` counts it. The next
//! complete snapshot removes what this one could not. At most
//! [`MAX_HOSTS_IN_FLIGHT`] hosts are remembered per lane (one entry ≈ 100
//! bytes, dropped at the host's last chunk); beyond that the oldest entries
//! are forgotten (those snapshots end incomplete).
//!
//! The empty-snapshot guard holds for the whole snapshot: a chunk of a
//! chunked snapshot is never empty (the decoder refuses it), so only a
//! whole snapshot can be empty, and it is refused as before.

use std::collections::{BTreeMap, HashMap};

use pkgstream_schemas::{EnrichedSnapshot, EventId, SnapshotChunk};

use super::documents::{
    evr, evr_sort, host_update, package_mark, package_remove, package_upsert, snapshot_state,
    IndexedPackage, Indices, SnapshotFacts,
};

/// Most hosts with a chunked snapshot in progress one lane remembers.
pub const MAX_HOSTS_IN_FLIGHT: usize = 10_000;

/// Where each host's chunked snapshot in progress stands, in one lane.
#[derive(Default)]
pub(super) struct ChunkProgress {
    hosts: HashMap<String, Progress>,
    seq: u64,
}

#[derive(Clone, Copy)]
struct Progress {
    whole: EventId,
    next: i32,
    /// Packages whose indexed state the chunks so far contradicted.
    drift: usize,
    /// The host had no package document at the first chunk.
    first: bool,
    seq: u64,
}

/// What the lane knows about a chunk before applying it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Step {
    /// Every earlier chunk of this snapshot was applied by this lane.
    pub complete: bool,
    /// First snapshot of a host nothing was known about (drift is 0).
    pub first: bool,
    /// Drift of the earlier chunks.
    pub drift_before: usize,
}

impl ChunkProgress {
    /// Notes that `chunk` of host `machine_id` is about to be applied;
    /// `indexed_is_empty` is whether the host has no package document
    /// (read at the first chunk).
    pub(super) fn step(
        &mut self,
        machine_id: &str,
        chunk: SnapshotChunk,
        indexed_is_empty: bool,
    ) -> Step {
        if chunk.index == 0 {
            if self.hosts.len() >= MAX_HOSTS_IN_FLIGHT && !self.hosts.contains_key(machine_id) {
                if let Some(oldest) = self
                    .hosts
                    .iter()
                    .min_by_key(|(_, p)| p.seq)
                    .map(|(k, _)| k.clone())
                {
                    self.hosts.remove(&oldest);
                }
            }
            self.seq += 1;
            self.hosts.insert(
                machine_id.to_owned(),
                Progress {
                    whole: chunk.snapshot_id,
                    next: 0,
                    drift: 0,
                    first: indexed_is_empty,
                    seq: self.seq,
                },
            );
        }
        match self.hosts.get_mut(machine_id) {
            Some(p) if p.whole == chunk.snapshot_id && p.next == chunk.index => {
                p.next += 1;
                Step {
                    complete: true,
                    first: p.first,
                    drift_before: p.drift,
                }
            }
            _ => {
                self.hosts.remove(machine_id);
                Step {
                    complete: false,
                    first: false,
                    drift_before: 0,
                }
            }
        }
    }

    /// Adds a chunk's drift; forgets the host at its last chunk.
    pub(super) fn applied(&mut self, machine_id: &str, chunk: SnapshotChunk, drift: usize) {
        if chunk.is_last() {
            self.hosts.remove(machine_id);
        } else if let Some(p) = self.hosts.get_mut(machine_id) {
            p.drift += drift;
        }
    }
}

/// The items of one chunk.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct ChunkItems {
    /// Package items appended.
    pub packages: usize,
    /// Of those, upserts and deletes (drift).
    pub drift: usize,
    /// At the last chunk: the facts written to the host document (which
    /// is appended after the package items).
    pub facts: Option<SnapshotFacts>,
}

/// Appends the items of one chunk (see the module doc); `indexed` holds
/// the host's documents for this chunk's packages, and at the last chunk
/// all of the host's documents.
pub(super) fn chunk_items(
    out: &mut Vec<u8>,
    idx: &Indices,
    s: &EnrichedSnapshot<'_>,
    chunk: SnapshotChunk,
    indexed: &BTreeMap<String, IndexedPackage>,
    step: Step,
) -> ChunkItems {
    let state = snapshot_state(s);
    let whole = chunk.snapshot_id.to_hex();
    let (mut packages, mut drift) = (0, 0);
    for (key, p) in &state {
        match indexed.get(key) {
            // A newer event wrote it: the snapshot does not speak for it.
            Some(ix) if ix.event_time_us > s.taken_at => {}
            Some(ix) if ix.evr == evr(p) => {
                if ix.snapshot_id != whole || ix.evr_sort != evr_sort(p) {
                    package_mark(out, idx, key, p, s.taken_at, &whole);
                    packages += 1;
                }
            }
            _ => {
                package_upsert(
                    out,
                    idx,
                    &s.host,
                    p,
                    &s.enrichment,
                    s.taken_at,
                    "inventory",
                    "snapshot",
                    &whole,
                    Some(&whole),
                );
                packages += 1;
                drift += 1;
            }
        }
    }
    let mut facts = None;
    if chunk.is_last() {
        if step.complete {
            for (key, ix) in indexed {
                if !state.contains_key(key)
                    && ix.snapshot_id != whole
                    && ix.event_time_us <= s.taken_at
                {
                    package_remove(out, idx, key, &ix.evr, s.taken_at);
                    packages += 1;
                    drift += 1;
                }
            }
        }
        let earlier = indexed
            .iter()
            .filter(|(k, ix)| ix.snapshot_id == whole && !state.contains_key(*k))
            .count();
        let f = SnapshotFacts {
            count: state.len() + earlier,
            drift: if step.first {
                0
            } else {
                step.drift_before + drift
            },
        };
        host_update(out, idx, &s.host, &s.enrichment, s.taken_at, Some(f));
        facts = Some(f);
    }
    ChunkItems {
        packages,
        drift,
        facts,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use pkgstream_schemas::{chunk_id, sample, InventorySnapshot};
    use serde_json::Value;

    fn chunk(
        s: &InventorySnapshot<'static>,
        index: i32,
        count: i32,
        range: std::ops::Range<usize>,
    ) -> EnrichedSnapshot<'static> {
        let c = SnapshotChunk {
            snapshot_id: s.snapshot_id,
            index,
            count,
            package_count: s.packages.len() as i32,
        };
        EnrichedSnapshot::new(
            InventorySnapshot {
                snapshot_id: chunk_id(&s.snapshot_id, index),
                taken_at: s.taken_at,
                host: s.host.clone(),
                packages: s.packages[range].to_vec(),
                chunk: Some(c),
            },
            sample::enrichment(1),
        )
    }

    fn scripts(body: &[u8]) -> Vec<String> {
        body.split(|b| *b == b'\n')
            .filter(|l| !l.is_empty())
            .map(|l| serde_json::from_slice::<Value>(l).unwrap())
            .filter_map(|v| v["script"]["id"].as_str().map(str::to_owned))
            .collect()
    }

    #[test]
    fn the_last_chunk_deletes_only_what_no_chunk_confirmed_and_only_when_complete() {
        let s = sample::snapshot(1, 4);
        let idx = Indices::new("p");
        let (a, b) = (chunk(&s, 0, 2, 0..2), chunk(&s, 1, 2, 2..4));
        let whole = s.snapshot_id.to_hex();
        let doc = |evr: &str, sid: &str, t: i64| IndexedPackage {
            evr: evr.into(),
            evr_sort: String::new(),
            event_time_us: t,
            snapshot_id: sid.into(),
        };
        let key = |e: &EnrichedSnapshot<'_>, i: usize| {
            super::super::documents::package_key(&e.host.machine_id, &e.packages[i])
        };
        let mut progress = ChunkProgress::default();
        // Chunk 0: one package at the same version (marked), one missing (upserted).
        let mut indexed = BTreeMap::new();
        indexed.insert(key(&a, 0), doc(&evr(&a.packages[0]), "old", s.taken_at - 1));
        let step = progress.step(&s.host.machine_id, a.chunk.unwrap(), false);
        assert_eq!(
            step,
            Step {
                complete: true,
                first: false,
                drift_before: 0
            }
        );
        let mut out = Vec::new();
        let r = chunk_items(&mut out, &idx, &a, a.chunk.unwrap(), &indexed, step);
        assert_eq!((r.packages, r.drift, r.facts), (2, 1, None));
        assert_eq!(
            scripts(&out),
            ["pkgstream-package-mark", "pkgstream-package-upsert"]
        );
        progress.applied(&s.host.machine_id, a.chunk.unwrap(), r.drift);

        // Chunk 1 sees everything of the host: chunk 0's two (now marked), a
        // stale one (deleted), a newer one (kept), and its own two.
        let mut all = BTreeMap::new();
        all.insert(
            key(&a, 0),
            doc(&evr(&a.packages[0]), &whole, s.taken_at - 1),
        );
        all.insert(key(&a, 1), doc(&evr(&a.packages[1]), &whole, s.taken_at));
        all.insert("m/gone.x86_64".into(), doc("0:1-1", "old", s.taken_at - 5));
        all.insert("m/new.x86_64".into(), doc("0:1-1", "", s.taken_at + 5));
        all.insert(key(&b, 0), doc(&evr(&b.packages[0]), "old", s.taken_at - 1));
        let step = progress.step(&s.host.machine_id, b.chunk.unwrap(), false);
        assert_eq!(step.drift_before, 1);
        let mut out = Vec::new();
        let r = chunk_items(&mut out, &idx, &b, b.chunk.unwrap(), &all, step);
        assert_eq!(
            scripts(&out),
            [
                "pkgstream-package-mark",
                "pkgstream-package-upsert",
                "pkgstream-package-remove",
                "pkgstream-host"
            ]
        );
        assert_eq!(r.facts, Some(SnapshotFacts { count: 4, drift: 3 }));

        // The same last chunk without the first one (a restart): nothing deleted.
        let mut fresh = ChunkProgress::default();
        let step = fresh.step(&s.host.machine_id, b.chunk.unwrap(), false);
        assert!(!step.complete);
        let mut out = Vec::new();
        chunk_items(&mut out, &idx, &b, b.chunk.unwrap(), &all, step);
        assert!(!scripts(&out).contains(&"pkgstream-package-remove".to_owned()));
    }
}
