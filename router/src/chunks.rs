//! Reassembly of chunked inventory snapshots for lost-change detection.
//!
//! A host sends a snapshot too large for one Kafka record as chunks
//! (`InventorySnapshot.chunk`, schema v2), in index order, into one raw
//! partition. The router enriches and forwards each chunk as it comes (the
//! sinks reconcile chunk by chunk); only the [`crate::inventory`] tracker
//! needs the whole snapshot, so the chunks of one snapshot are collected
//! here and handed over as one snapshot when the last one arrives.
//!
//! An assembly completes only from chunks 0, 1, …, count − 1 of one
//! snapshot id, in that order. Anything else — a chunk that is not the
//! next one (a chunk the host could not ship, a router restart or a
//! rebalance in the middle of a snapshot), another snapshot starting —
//! drops the assembly: that snapshot is compared with nothing and becomes
//! no baseline, so an incomplete one can never produce false synthetic
//! changes (the host's next complete snapshot is compared with its last
//! complete one).
//!
//! Like the tracker, the assemblies change only with the transaction that
//! published the chunks: every step is undoable until [`ChunkAssembler::commit`],
//! and [`ChunkAssembler::abort`] rolls back what the aborted transaction
//! added, so re-read chunks assemble the same way again.
//!
//! Memory is bounded: at most [`MAX_ASSEMBLING_PACKAGES`] packages are held
//! in all assemblies together (≈300 bytes each, ~75 MB); starting or
//! growing an assembly beyond it drops the oldest other assemblies first
//! (their snapshots are then not compared, and a warning says so). An
//! assembly of a snapshot claiming more than [`MAX_SNAPSHOT_PACKAGES`]
//! packages is not started.

use std::collections::HashMap;

use pkgstream_schemas::{EventId, InventorySnapshot, Package, SnapshotChunk};
use tracing::warn;

/// Most packages held in all assemblies together.
pub const MAX_ASSEMBLING_PACKAGES: usize = 250_000;
/// Most packages one assembled snapshot may have (the host's own limit).
pub const MAX_SNAPSHOT_PACKAGES: usize = 200_000;

type Key = (i32, String);

struct Assembly {
    whole_id: EventId,
    taken_at: i64,
    count: i32,
    next: i32,
    /// When it started, for evicting the oldest.
    seq: u64,
    snapshot: InventorySnapshot<'static>,
}

/// One undoable step.
enum Undo {
    /// An assembly was created (or replaced `previous`).
    Started {
        key: Key,
        previous: Option<Assembly>,
    },
    /// Chunk packages were appended: truncate back.
    Extended { key: Key, len: usize, next: i32 },
    /// An assembly was removed (completed, broken or evicted).
    Removed { key: Key, assembly: Assembly },
}

/// The chunked snapshots being assembled, per raw partition and host.
#[derive(Default)]
pub struct ChunkAssembler {
    assemblies: HashMap<Key, Assembly>,
    packages: usize,
    seq: u64,
    undo: Vec<Undo>,
}

/// What one chunk did.
#[derive(Debug, PartialEq, Eq)]
pub enum ChunkOutcome {
    /// Stored; more chunks to come.
    Pending,
    /// Not the next chunk of an assembly, nor a first chunk: ignored (the
    /// assembly it broke, if any, was dropped).
    Dropped(&'static str),
    /// Another chunk of a snapshot already dropped (or whose first chunk
    /// this router never saw): ignored, nothing new to say.
    Ignored,
}

impl ChunkAssembler {
    /// Adds one chunk (`s.chunk` is `Some`); returns the whole snapshot when
    /// this chunk completes it.
    pub fn add(
        &mut self,
        partition: i32,
        s: &InventorySnapshot<'_>,
        chunk: SnapshotChunk,
    ) -> Result<InventorySnapshot<'static>, ChunkOutcome> {
        let key = (partition, s.host.machine_id.to_string());
        let continues = self.assemblies.get(&key).is_some_and(|a| {
            a.whole_id == chunk.snapshot_id
                && a.next == chunk.index
                && a.count == chunk.count
                && a.taken_at == s.taken_at
        });
        if !continues {
            let broke = self.remove(&key).is_some();
            if chunk.index != 0 {
                return Err(if broke {
                    ChunkOutcome::Dropped(
                        "chunk out of order: the snapshot being assembled is dropped",
                    )
                } else {
                    ChunkOutcome::Ignored
                });
            }
            if chunk.package_count as usize > MAX_SNAPSHOT_PACKAGES {
                return Err(ChunkOutcome::Dropped("snapshot too large to assemble"));
            }
            self.seq += 1;
            let assembly = Assembly {
                whole_id: chunk.snapshot_id,
                taken_at: s.taken_at,
                count: chunk.count,
                next: 0,
                seq: self.seq,
                snapshot: InventorySnapshot {
                    snapshot_id: chunk.snapshot_id,
                    taken_at: s.taken_at,
                    host: owned_host(&s.host),
                    packages: Vec::new(),
                    chunk: None,
                },
            };
            let previous = self.assemblies.insert(key.clone(), assembly);
            self.undo.push(Undo::Started {
                key: key.clone(),
                previous,
            });
        }
        self.make_room(&key, s.packages.len());
        let Some(a) = self.assemblies.get_mut(&key) else {
            return Err(ChunkOutcome::Dropped("assembly evicted"));
        };
        if a.snapshot.packages.len() + s.packages.len() > MAX_SNAPSHOT_PACKAGES {
            self.remove(&key);
            return Err(ChunkOutcome::Dropped("snapshot too large to assemble"));
        }
        self.undo.push(Undo::Extended {
            key: key.clone(),
            len: a.snapshot.packages.len(),
            next: a.next,
        });
        a.snapshot
            .packages
            .extend(s.packages.iter().map(owned_package));
        a.next += 1;
        self.packages += s.packages.len();
        if a.next < a.count {
            return Err(ChunkOutcome::Pending);
        }
        let whole = self
            .assemblies
            .get(&key)
            .map(|a| a.snapshot.clone())
            .ok_or(ChunkOutcome::Dropped("assembly evicted"))?;
        self.remove(&key);
        Ok(whole)
    }

    /// Removes an assembly (undoably).
    fn remove(&mut self, key: &Key) -> Option<()> {
        let assembly = self.assemblies.remove(key)?;
        self.packages -= assembly.snapshot.packages.len();
        self.undo.push(Undo::Removed {
            key: key.clone(),
            assembly,
        });
        Some(())
    }

    /// Drops the oldest assemblies other than `keep` until `incoming` more
    /// packages fit.
    fn make_room(&mut self, keep: &Key, incoming: usize) {
        while self.packages + incoming > MAX_ASSEMBLING_PACKAGES {
            let Some(oldest) = self
                .assemblies
                .iter()
                .filter(|(k, _)| *k != keep)
                .min_by_key(|(_, a)| a.seq)
                .map(|(k, _)| k.clone())
            else {
                return;
            };
            warn!(partition = oldest.0, machine_id = %oldest.1, max_packages = MAX_ASSEMBLING_PACKAGES, "too many chunked snapshot packages in flight: the oldest assembly is dropped (that snapshot is not compared)");
            self.remove(&oldest);
        }
    }

    /// The transaction that published the chunks committed.
    pub fn commit(&mut self) {
        self.undo.clear();
    }

    /// That transaction aborted: every step since the last commit is undone.
    pub fn abort(&mut self) {
        while let Some(step) = self.undo.pop() {
            match step {
                Undo::Started { key, previous } => {
                    if let Some(a) = self.assemblies.remove(&key) {
                        self.packages -= a.snapshot.packages.len();
                    }
                    if let Some(p) = previous {
                        self.packages += p.snapshot.packages.len();
                        self.assemblies.insert(key, p);
                    }
                }
                Undo::Extended { key, len, next } => {
                    if let Some(a) = self.assemblies.get_mut(&key) {
                        self.packages -= a.snapshot.packages.len() - len;
                        a.snapshot.packages.truncate(len);
                        a.next = next;
                    }
                }
                Undo::Removed { key, assembly } => {
                    self.packages += assembly.snapshot.packages.len();
                    self.assemblies.insert(key, assembly);
                }
            }
        }
    }

    /// Keeps the assemblies of the partitions `keep` accepts (after a
    /// rebalance; what was staged is dropped with the tracker's).
    pub fn retain_partitions(&mut self, keep: impl Fn(i32) -> bool) {
        self.abort();
        self.assemblies.retain(|(p, _), _| keep(*p));
        self.packages = self
            .assemblies
            .values()
            .map(|a| a.snapshot.packages.len())
            .sum();
    }

    /// Snapshots being assembled.
    pub fn assembling(&self) -> usize {
        self.assemblies.len()
    }

    /// Packages held.
    pub fn packages(&self) -> usize {
        self.packages
    }
}

fn owned_host(h: &pkgstream_schemas::Host<'_>) -> pkgstream_schemas::Host<'static> {
    pkgstream_schemas::Host {
        machine_id: h.machine_id.to_string().into(),
        hostname: h.hostname.to_string().into(),
        os_id: h.os_id.to_string().into(),
        os_version: h.os_version.to_string().into(),
        arch: h.arch.to_string().into(),
    }
}

fn owned_package(p: &Package<'_>) -> Package<'static> {
    let s = |c: &std::borrow::Cow<'_, str>| std::borrow::Cow::Owned(c.to_string());
    Package {
        name: s(&p.name),
        epoch: p.epoch,
        version: s(&p.version),
        release: s(&p.release),
        arch: s(&p.arch),
        repo: p.repo.as_ref().map(s),
        vendor: p.vendor.as_ref().map(s),
        buildtime: p.buildtime,
        install_time: p.install_time,
        size: p.size,
        digest: p.digest.as_ref().map(s),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use pkgstream_schemas::{chunk_id, sample};

    /// `s` split into `n` chunks of (nearly) equal package counts.
    fn chunks(s: &InventorySnapshot<'static>, n: usize) -> Vec<InventorySnapshot<'static>> {
        let per = s.packages.len().div_ceil(n);
        s.packages
            .chunks(per)
            .enumerate()
            .map(|(i, p)| InventorySnapshot {
                snapshot_id: chunk_id(&s.snapshot_id, i as i32),
                taken_at: s.taken_at,
                host: s.host.clone(),
                packages: p.to_vec(),
                chunk: Some(SnapshotChunk {
                    snapshot_id: s.snapshot_id,
                    index: i as i32,
                    count: n as i32,
                    package_count: s.packages.len() as i32,
                }),
            })
            .collect()
    }

    fn add(
        a: &mut ChunkAssembler,
        c: &InventorySnapshot<'_>,
    ) -> Result<InventorySnapshot<'static>, ChunkOutcome> {
        a.add(0, c, c.chunk.unwrap())
    }

    #[test]
    fn chunks_in_order_assemble_the_whole_snapshot() {
        let s = sample::snapshot(1, 10);
        let mut a = ChunkAssembler::default();
        let parts = chunks(&s, 3);
        assert_eq!(add(&mut a, &parts[0]), Err(ChunkOutcome::Pending));
        assert_eq!(add(&mut a, &parts[1]), Err(ChunkOutcome::Pending));
        assert_eq!(add(&mut a, &parts[2]).unwrap(), s);
        assert_eq!((a.assembling(), a.packages()), (0, 0));
    }

    #[test]
    fn a_missing_or_repeated_chunk_assembles_nothing() {
        let s = sample::snapshot(2, 10);
        let parts = chunks(&s, 3);
        let mut a = ChunkAssembler::default();
        add(&mut a, &parts[0]).unwrap_err();
        assert!(matches!(
            add(&mut a, &parts[2]),
            Err(ChunkOutcome::Dropped(_))
        ));
        assert_eq!(a.assembling(), 0);
        // Started mid-snapshot (a restart): nothing until a first chunk.
        let mut b = ChunkAssembler::default();
        assert_eq!(add(&mut b, &parts[1]), Err(ChunkOutcome::Ignored));
        assert_eq!(add(&mut b, &parts[2]), Err(ChunkOutcome::Ignored));
        // A repeated chunk breaks the sequence too.
        let mut c = ChunkAssembler::default();
        add(&mut c, &parts[0]).unwrap_err();
        add(&mut c, &parts[1]).unwrap_err();
        assert!(matches!(
            add(&mut c, &parts[1]),
            Err(ChunkOutcome::Dropped(_))
        ));
        assert_eq!(add(&mut c, &parts[2]), Err(ChunkOutcome::Ignored));
        // A new snapshot replaces an unfinished one.
        let mut t = s.clone();
        t.taken_at += 1;
        t.snapshot_id = pkgstream_schemas::snapshot_id(&t.host.machine_id, t.taken_at);
        let next = chunks(&t, 2);
        let mut d = ChunkAssembler::default();
        add(&mut d, &parts[0]).unwrap_err();
        add(&mut d, &next[0]).unwrap_err();
        assert!(matches!(
            add(&mut d, &parts[1]),
            Err(ChunkOutcome::Dropped(_))
        ));
        add(&mut d, &next[0]).unwrap_err();
        assert_eq!(add(&mut d, &next[1]).unwrap(), t);
    }

    #[test]
    fn abort_rolls_back_to_the_last_commit() {
        let s = sample::snapshot(3, 12);
        let parts = chunks(&s, 4);
        let mut a = ChunkAssembler::default();
        add(&mut a, &parts[0]).unwrap_err();
        a.commit();
        add(&mut a, &parts[1]).unwrap_err();
        add(&mut a, &parts[2]).unwrap_err();
        add(&mut a, &parts[3]).unwrap();
        a.abort();
        assert_eq!((a.assembling(), a.packages()), (1, 3));
        // The same chunks again give the same snapshot.
        add(&mut a, &parts[1]).unwrap_err();
        add(&mut a, &parts[2]).unwrap_err();
        assert_eq!(add(&mut a, &parts[3]).unwrap(), s);
        a.abort();
        a.retain_partitions(|p| p != 0);
        assert_eq!((a.assembling(), a.packages()), (0, 0));
    }

    #[test]
    fn memory_is_bounded_by_evicting_the_oldest() {
        let mut a = ChunkAssembler::default();
        let per = MAX_ASSEMBLING_PACKAGES / 4;
        for host in 0..6u64 {
            let s = sample::snapshot(host, per * 2);
            add(&mut a, &chunks(&s, 2)[0]).unwrap_err();
            assert!(a.packages() <= MAX_ASSEMBLING_PACKAGES);
        }
        assert_eq!(a.assembling(), 4);
    }
}
