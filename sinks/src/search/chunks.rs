//! A chunked snapshot (`InventorySnapshot.chunk`, schema v2) reconciled
//! chunk by chunk, without putting it back together: the chunks of one
//! snapshot arrive in order in one partition, hence in one lane.
//!
//! - every chunk: its packages are upserted where the index holds another
//!   version (or nothing) and nothing newer, exactly as for a whole
//!   snapshot; the lane remembers the chunk's document ids;
//! - the last chunk: the host's documents that no chunk of the snapshot
//!   named and that hold nothing newer than the snapshot are deleted
//!   (guarded, as for a whole snapshot), and the host document gets the
//!   snapshot's facts.
//!
//! Why remember ids rather than mark every document with the snapshot's
//! id in the index: marking writes every unchanged package of a big host
//! at every snapshot (25,000 writes a day for a build host), while the ids
//! of one snapshot in flight take ~60 bytes each in memory, for the few
//! seconds between its first and last chunk.
//!
//! Deletions need every earlier chunk to have been applied: the lane
//! remembers, per host, which chunk of which snapshot it applied last
//! ([`ChunkProgress`]); a chunk out of order (one the host could not ship,
//! one the DLQ took, or a sink restart in the middle of a snapshot) makes
//! the snapshot incomplete: its upserts stand (they are true as of the
//! snapshot), nothing is deleted, and
//! `pkgstream_search_sink_snapshots_incomplete_total` counts it. The next
//! complete snapshot removes what this one could not. Memory is bounded
//! per lane: at most [`MAX_IDS_IN_FLIGHT`] ids and [`MAX_HOSTS_IN_FLIGHT`]
//! hosts; beyond either, the oldest host's progress is forgotten (its
//! snapshot ends incomplete).
//!
//! The empty-snapshot guard holds for the whole snapshot: a chunk of a
//! chunked snapshot is never empty (the decoder refuses it), so only a
//! whole snapshot can be empty, and it is refused as before.

use std::collections::{BTreeMap, HashMap, HashSet};

use pkgstream_schemas::{EnrichedSnapshot, EventId, SnapshotChunk};

use super::documents::{
    evr, evr_sort, host_update, package_remove, package_upsert, snapshot_state, sort_key_update,
    IndexedPackage, Indices, SnapshotFacts,
};

/// Most hosts with a chunked snapshot in progress one lane remembers.
pub const MAX_HOSTS_IN_FLIGHT: usize = 10_000;
/// Most document ids of chunked snapshots in progress one lane remembers
/// (≈60 bytes each: ~30 MB).
pub const MAX_IDS_IN_FLIGHT: usize = 500_000;

/// Where each host's chunked snapshot in progress stands, in one lane.
#[derive(Default)]
pub(super) struct ChunkProgress {
    hosts: HashMap<String, Progress>,
    ids: usize,
    seq: u64,
}

struct Progress {
    whole: EventId,
    next: i32,
    /// Document ids the chunks so far named.
    ids: HashSet<String>,
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
            self.forget(machine_id);
            if self.hosts.len() >= MAX_HOSTS_IN_FLIGHT {
                self.forget_oldest();
            }
            self.seq += 1;
            self.hosts.insert(
                machine_id.to_owned(),
                Progress {
                    whole: chunk.snapshot_id,
                    next: 0,
                    ids: HashSet::new(),
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
                self.forget(machine_id);
                Step {
                    complete: false,
                    first: false,
                    drift_before: 0,
                }
            }
        }
    }

    /// The ids the earlier chunks of the host's snapshot named.
    pub(super) fn earlier_ids(&self, machine_id: &str) -> Option<&HashSet<String>> {
        self.hosts.get(machine_id).map(|p| &p.ids)
    }

    /// Adds a chunk's ids and drift; forgets the host at its last chunk.
    pub(super) fn applied(
        &mut self,
        machine_id: &str,
        chunk: SnapshotChunk,
        ids: Vec<String>,
        drift: usize,
    ) {
        if chunk.is_last() {
            self.forget(machine_id);
            return;
        }
        while self.ids + ids.len() > MAX_IDS_IN_FLIGHT && self.forget_oldest_other(machine_id) {}
        if self.ids + ids.len() > MAX_IDS_IN_FLIGHT {
            // This snapshot alone is too large to remember: incomplete.
            self.forget(machine_id);
            return;
        }
        if let Some(p) = self.hosts.get_mut(machine_id) {
            p.drift += drift;
            self.ids += ids.len();
            p.ids.extend(ids);
        }
    }

    fn forget(&mut self, machine_id: &str) {
        if let Some(p) = self.hosts.remove(machine_id) {
            self.ids -= p.ids.len();
        }
    }

    fn forget_oldest(&mut self) {
        self.forget_oldest_other("");
    }

    /// Forgets the oldest host but `keep`; false when there is none.
    fn forget_oldest_other(&mut self, keep: &str) -> bool {
        let oldest = self
            .hosts
            .iter()
            .filter(|(k, _)| k.as_str() != keep)
            .min_by_key(|(_, p)| p.seq)
            .map(|(k, _)| k.clone());
        match oldest {
            Some(k) => {
                tracing::warn!(machine_id = %k, max_hosts = MAX_HOSTS_IN_FLIGHT, max_ids = MAX_IDS_IN_FLIGHT, "too many chunked snapshots in progress: the oldest is forgotten (it ends incomplete)");
                self.forget(&k);
                true
            }
            None => false,
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
    /// The document ids this chunk named.
    pub ids: Vec<String>,
    /// At the last chunk: the facts written to the host document (which
    /// is appended after the package items).
    pub facts: Option<SnapshotFacts>,
}

/// Appends the items of one chunk (see the module doc); `indexed` holds
/// the host's documents for this chunk's packages, and at the last chunk
/// all of the host's documents; `earlier` the ids the earlier chunks named
/// (`None` when they are not all known: then nothing is deleted).
pub(super) fn chunk_items(
    out: &mut Vec<u8>,
    idx: &Indices,
    s: &EnrichedSnapshot<'_>,
    chunk: SnapshotChunk,
    indexed: &BTreeMap<String, IndexedPackage>,
    step: Step,
    earlier: Option<&HashSet<String>>,
) -> ChunkItems {
    let state = snapshot_state(s);
    let whole = chunk.snapshot_id.to_hex();
    let (mut packages, mut drift) = (0, 0);
    for (key, p) in &state {
        match indexed.get(key) {
            // A newer event wrote it: the snapshot does not speak for it.
            Some(ix) if ix.event_time_us > s.taken_at => {}
            Some(ix) if ix.evr == evr(p) => {
                let sort = evr_sort(p);
                if ix.evr_sort != sort {
                    sort_key_update(out, idx, key, &ix.evr, &sort);
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
        let earlier_count =
            earlier.map_or(0, |e| e.iter().filter(|k| !state.contains_key(*k)).count());
        if let (true, Some(earlier)) = (step.complete, earlier) {
            for (key, ix) in indexed {
                if !state.contains_key(key)
                    && !earlier.contains(key)
                    && ix.event_time_us <= s.taken_at
                {
                    package_remove(out, idx, key, &ix.evr, s.taken_at);
                    packages += 1;
                    drift += 1;
                }
            }
        }
        let f = SnapshotFacts {
            count: state.len() + earlier_count,
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
        ids: if chunk.is_last() {
            Vec::new()
        } else {
            state.into_keys().collect()
        },
        facts,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::search::documents::package_key;
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
    fn the_last_chunk_deletes_only_what_no_chunk_named_and_only_when_complete() {
        let s = sample::snapshot(1, 4);
        let idx = Indices::new("p");
        let (a, b) = (chunk(&s, 0, 2, 0..2), chunk(&s, 1, 2, 2..4));
        let doc = |e: &EnrichedSnapshot<'_>, i: usize, t: i64| IndexedPackage {
            evr: evr(&e.packages[i]),
            evr_sort: evr_sort(&e.packages[i]),
            event_time_us: t,
        };
        let key =
            |e: &EnrichedSnapshot<'_>, i: usize| package_key(&e.host.machine_id, &e.packages[i]);
        let m = s.host.machine_id.to_string();
        let mut progress = ChunkProgress::default();
        // Chunk 0: one package at the same version (nothing to do), one missing (upserted).
        let mut indexed = BTreeMap::new();
        indexed.insert(key(&a, 0), doc(&a, 0, s.taken_at - 1));
        let step = progress.step(&m, a.chunk.unwrap(), false);
        assert_eq!(
            step,
            Step {
                complete: true,
                first: false,
                drift_before: 0
            }
        );
        let mut out = Vec::new();
        let r = chunk_items(
            &mut out,
            &idx,
            &a,
            a.chunk.unwrap(),
            &indexed,
            step,
            progress.earlier_ids(&m),
        );
        assert_eq!((r.packages, r.drift, r.facts), (1, 1, None));
        assert_eq!(scripts(&out), ["pkgstream-package-upsert"]);
        progress.applied(&m, a.chunk.unwrap(), r.ids, r.drift);

        // Chunk 1 sees everything of the host: chunk 0's two, a stale one
        // (deleted), a newer one (kept), one of its own at another version.
        let mut all = BTreeMap::new();
        all.insert(key(&a, 0), doc(&a, 0, s.taken_at - 1));
        all.insert(key(&a, 1), doc(&a, 1, s.taken_at));
        let stale = IndexedPackage {
            evr: "0:1-1".into(),
            event_time_us: s.taken_at - 5,
            ..Default::default()
        };
        all.insert(format!("{m}/gone.x86_64"), stale);
        let newer = IndexedPackage {
            evr: "0:1-1".into(),
            event_time_us: s.taken_at + 5,
            ..Default::default()
        };
        all.insert(format!("{m}/new.x86_64"), newer);
        all.insert(
            key(&b, 0),
            IndexedPackage {
                evr: "0:0-0".into(),
                event_time_us: s.taken_at - 1,
                ..Default::default()
            },
        );
        all.insert(key(&b, 1), doc(&b, 1, s.taken_at - 1));
        let step = progress.step(&m, b.chunk.unwrap(), false);
        assert_eq!(step.drift_before, 1);
        let mut out = Vec::new();
        let r = chunk_items(
            &mut out,
            &idx,
            &b,
            b.chunk.unwrap(),
            &all,
            step,
            progress.earlier_ids(&m),
        );
        assert_eq!(
            scripts(&out),
            [
                "pkgstream-package-upsert",
                "pkgstream-package-remove",
                "pkgstream-host"
            ]
        );
        assert_eq!(r.facts, Some(SnapshotFacts { count: 4, drift: 3 }));
        progress.applied(&m, b.chunk.unwrap(), r.ids, r.drift);
        assert_eq!((progress.hosts.len(), progress.ids), (0, 0));

        // The same last chunk without the first one (a restart): nothing deleted.
        let mut fresh = ChunkProgress::default();
        let step = fresh.step(&m, b.chunk.unwrap(), false);
        assert!(!step.complete);
        let mut out = Vec::new();
        chunk_items(
            &mut out,
            &idx,
            &b,
            b.chunk.unwrap(),
            &all,
            step,
            fresh.earlier_ids(&m),
        );
        assert!(!scripts(&out).contains(&"pkgstream-package-remove".to_owned()));
    }

    #[test]
    fn memory_is_bounded() {
        let mut p = ChunkProgress::default();
        let c = |i: u8| SnapshotChunk {
            snapshot_id: EventId([i; 16]),
            index: 0,
            count: 2,
            package_count: 1,
        };
        for h in 0..4u8 {
            let m = format!("host-{h}");
            p.step(&m, c(h), false);
            p.applied(
                &m,
                c(h),
                (0..MAX_IDS_IN_FLIGHT / 3)
                    .map(|i| format!("{h}/{i}"))
                    .collect(),
                0,
            );
            assert!(p.ids <= MAX_IDS_IN_FLIGHT);
        }
        assert_eq!(p.hosts.len(), 3);
        assert!(p.earlier_ids("host-0").is_none(), "the oldest is forgotten");
    }
}
