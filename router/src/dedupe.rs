//! The deduplication window: event ids seen recently, bounded by count and
//! by age, one per partition.
//!
//! An entry costs the 16-byte id in a swiss table (plus control byte and
//! load-factor slack) and 20 bytes in the eviction queue: about 40 bytes,
//! measured by [`DedupeWindow::bytes`] (the `dedupe_window_bytes` metric).
//! Ids are SHA-256 output, so the low 64 bits are already a good hash.

use std::collections::VecDeque;
use std::hash::{BuildHasherDefault, Hasher};

use pkgstream_schemas::EventId;

/// Hashes an already-uniform 128-bit id by taking 64 of its bits.
#[derive(Default)]
pub struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut b = [0u8; 8];
            b[..chunk.len()].copy_from_slice(chunk);
            self.0 ^= u64::from_le_bytes(b);
        }
    }
    fn write_u128(&mut self, v: u128) {
        self.0 = v as u64;
    }
}

type IdSet = hashbrown::HashSet<u128, BuildHasherDefault<IdHasher>>;

/// Event ids seen in the last `max_age_secs` seconds, at most `max_entries`.
pub struct DedupeWindow {
    set: IdSet,
    /// Ids in insertion order, for eviction.
    order: VecDeque<u128>,
    /// Insertion time (Unix seconds) of the same position in `order`.
    times: VecDeque<u32>,
    max_entries: usize,
    max_age_secs: u32,
}

impl DedupeWindow {
    /// An empty window.
    pub fn new(max_entries: usize, max_age_secs: u32) -> Self {
        DedupeWindow {
            set: IdSet::default(),
            order: VecDeque::new(),
            times: VecDeque::new(),
            max_entries: max_entries.max(1),
            max_age_secs,
        }
    }

    /// Whether `id` is in the window.
    pub fn contains(&self, id: &EventId) -> bool {
        self.set.contains(&u128::from_le_bytes(id.0))
    }

    /// Adds `id` seen at `now` (Unix seconds); evicts the oldest entries
    /// beyond the count bound and entries older than the age bound.
    pub fn insert(&mut self, id: &EventId, now: u32) {
        let key = u128::from_le_bytes(id.0);
        if self.set.insert(key) {
            self.order.push_back(key);
            self.times.push_back(now);
        }
        while self.order.len() > self.max_entries
            || self
                .times
                .front()
                .is_some_and(|t| now.saturating_sub(*t) > self.max_age_secs)
        {
            if let Some(old) = self.order.pop_front() {
                self.set.remove(&old);
            }
            self.times.pop_front();
        }
    }

    /// Entries held.
    pub fn len(&self) -> usize {
        self.order.len()
    }

    /// Whether the window is empty.
    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }

    /// Heap bytes held (table buckets and control bytes, queues' capacity).
    pub fn bytes(&self) -> usize {
        let buckets = (self.set.capacity() * 8 / 7).next_power_of_two();
        buckets * (16 + 1) + self.order.capacity() * 16 + self.times.capacity() * 4
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn id(i: u64) -> EventId {
        let mut b = [0u8; 16];
        b[..8].copy_from_slice(&i.to_le_bytes());
        b[8..].copy_from_slice(&(i.wrapping_mul(0x9e37_79b9_7f4a_7c15)).to_le_bytes());
        EventId(b)
    }

    #[test]
    fn remembers_within_bounds_and_forgets_beyond() {
        let mut w = DedupeWindow::new(3, 100);
        for i in 0..3 {
            w.insert(&id(i), 10);
        }
        assert!((0..3).all(|i| w.contains(&id(i))));
        w.insert(&id(3), 10);
        assert!(!w.contains(&id(0)), "count bound evicts the oldest");
        assert_eq!(w.len(), 3);
        w.insert(&id(4), 200);
        assert!(
            !w.contains(&id(1)) && !w.contains(&id(2)) && !w.contains(&id(3)),
            "age bound"
        );
        assert!(w.contains(&id(4)));
        w.insert(&id(4), 201);
        assert_eq!(w.len(), 1, "re-inserting does not duplicate");
    }

    #[test]
    fn memory_per_entry_at_one_million() {
        let mut w = DedupeWindow::new(1_000_000, u32::MAX);
        for i in 0..1_000_000 {
            w.insert(&id(i), 1);
        }
        let per_entry = w.bytes() as f64 / w.len() as f64;
        assert!(per_entry < 64.0, "{per_entry} bytes per entry");
    }
}
