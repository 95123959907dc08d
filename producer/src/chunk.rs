//! Snapshots bounded on the wire: a snapshot whose encoding is larger than
//! `flush.snapshot_chunk_bytes` is recorded as several Kafka records
//! (chunks), each at most that size, which the router and the sinks put
//! back together (`InventorySnapshot.chunk`, schema v2).
//!
//! Why chunks (and not compression or a larger broker limit): a host with
//! 25,000 packages encodes to ~4 MB, 50,000 to ~8 MB; the broker's default
//! `message.max.bytes` is 1 MB, and a fleet should not have to raise it
//! (nor the router's, whose enriched records are larger still) for its
//! build hosts. Compression would only move the limit (the broker checks
//! the compressed batch, librdkafka the uncompressed message).
//!
//! The rules the consumers rely on:
//! - every chunk carries the whole snapshot's id, its index, the chunk
//!   count and the whole snapshot's package count; its own `snapshot_id` is
//!   [`chunk_id`] of those, so each chunk has its own idempotency key;
//! - all chunks have the host's key and are appended to the spool in one
//!   segment, in index order, so they are shipped in order into one
//!   partition and evicted (spool full) together;
//! - the packages of one `name.arch` (install-only packages such as the
//!   kernel) are never split across chunks, so each chunk's package state
//!   is that of the whole snapshot for the names it holds;
//! - a snapshot that fits in one record is sent as before (`chunk` null).
//!
//! The default size, 512 KiB, leaves half of a 1 MB broker limit for the
//! router's enrichment (host-table tags) and the record overhead.

use pkgstream_schemas::{
    chunk_id, Encoder, InventorySnapshot, Package, SchemaError, SnapshotChunk,
};

/// Default of `flush.snapshot_chunk_bytes`.
pub const DEFAULT_CHUNK_BYTES: usize = 512 << 10;
/// Smallest `flush.snapshot_chunk_bytes` accepted (a package's identity
/// fields alone may take ~1 KB).
pub const MIN_CHUNK_BYTES: usize = 16 << 10;

/// Bytes a chunk's header may take beyond the whole snapshot's: the
/// `chunk` record (union index, 16-byte id, three ints) and array block
/// counts, rounded up.
const CHUNK_OVERHEAD: usize = 64;

/// Encodes `snapshot` as one record when it fits in `max_bytes`, else as
/// chunks of at most `max_bytes` each, in index order. The snapshot is
/// validated as a whole (the error names the package).
pub fn encode_snapshot(
    encoder: &mut Encoder,
    mut snapshot: InventorySnapshot<'_>,
    max_bytes: usize,
) -> Result<Vec<Vec<u8>>, SchemaError> {
    let mut whole = Vec::new();
    encoder.encode_snapshot(&snapshot, &mut whole)?;
    if whole.len() <= max_bytes {
        return Ok(vec![whole]);
    }
    let package_bytes: usize = snapshot.packages.iter().map(encoded_len).sum();
    let fixed = whole.len().saturating_sub(package_bytes) + CHUNK_OVERHEAD;
    let budget = max_bytes.saturating_sub(fixed).max(1);

    // Packages of one name.arch side by side, otherwise in rpmdb order.
    let mut packages = std::mem::take(&mut snapshot.packages);
    packages.sort_by(|a, b| (&a.name, &a.arch).cmp(&(&b.name, &b.arch)));
    let bounds = chunk_bounds(&packages, budget);

    let package_count = i32::try_from(packages.len()).unwrap_or(i32::MAX);
    let count = i32::try_from(bounds.len()).unwrap_or(i32::MAX);
    let whole_id = snapshot.snapshot_id;
    let mut out = Vec::with_capacity(bounds.len());
    let mut rest = packages;
    // Cut from the back so each chunk takes its packages without copying.
    let mut chunks = Vec::with_capacity(bounds.len());
    for range in bounds.iter().rev() {
        chunks.push(rest.split_off(range.start));
    }
    chunks.reverse();
    for (index, packages) in chunks.into_iter().enumerate() {
        let index = i32::try_from(index).unwrap_or(i32::MAX);
        let chunk = InventorySnapshot {
            snapshot_id: chunk_id(&whole_id, index),
            taken_at: snapshot.taken_at,
            host: snapshot.host.clone(),
            packages,
            chunk: Some(SnapshotChunk {
                snapshot_id: whole_id,
                index,
                count,
                package_count,
            }),
        };
        let mut buf = Vec::with_capacity(max_bytes.min(whole.len()));
        encoder.encode_snapshot(&chunk, &mut buf)?;
        out.push(buf);
    }
    Ok(out)
}

/// Splits `packages` (sorted by name and arch) into ranges whose packages
/// encode to at most `budget` bytes, never splitting a `name.arch` group
/// unless the group alone exceeds the budget.
fn chunk_bounds(packages: &[Package<'_>], budget: usize) -> Vec<std::ops::Range<usize>> {
    let mut bounds = Vec::new();
    let mut start = 0;
    let mut used = 0;
    let mut i = 0;
    while i < packages.len() {
        // The group of packages[i]: same name and arch.
        let mut end = i + 1;
        let mut group = encoded_len(&packages[i]);
        while end < packages.len()
            && packages[end].name == packages[i].name
            && packages[end].arch == packages[i].arch
        {
            group += encoded_len(&packages[end]);
            end += 1;
        }
        if used + group <= budget {
            used += group;
            i = end;
            continue;
        }
        if used > 0 {
            bounds.push(start..i);
            start = i;
            used = 0;
            continue;
        }
        // A group larger than a chunk on its own: split it by package.
        for (p, package) in packages.iter().enumerate().take(end).skip(i) {
            let len = encoded_len(package);
            if used + len > budget && used > 0 {
                bounds.push(start..p);
                start = p;
                used = 0;
            }
            used += len;
        }
        i = end;
    }
    if start < packages.len() || bounds.is_empty() {
        bounds.push(start..packages.len());
    }
    bounds
}

/// Avro binary size of one `Package` (schema v1/v2 field order).
fn encoded_len(p: &Package<'_>) -> usize {
    fn string(s: &str) -> usize {
        varint_len(s.len() as i64) + s.len()
    }
    fn opt_string(s: Option<&str>) -> usize {
        1 + s.map_or(0, string)
    }
    fn opt_long(v: Option<i64>) -> usize {
        1 + v.map_or(0, varint_len)
    }
    string(&p.name)
        + opt_long(p.epoch.map(i64::from))
        + string(&p.version)
        + string(&p.release)
        + string(&p.arch)
        + opt_string(p.repo.as_deref())
        + opt_string(p.vendor.as_deref())
        + opt_long(p.buildtime)
        + opt_long(p.install_time)
        + opt_long(p.size)
        + opt_string(p.digest.as_deref())
}

/// Length of a zig-zag varint.
fn varint_len(v: i64) -> usize {
    let mut z = ((v << 1) ^ (v >> 63)) as u64;
    let mut n = 1;
    while z >= 0x80 {
        z >>= 7;
        n += 1;
    }
    n
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use pkgstream_schemas::{decode_snapshot, sample};
    use proptest::prelude::*;
    use std::borrow::Cow;
    use std::collections::BTreeMap;

    fn decoded(chunks: &[Vec<u8>]) -> Vec<InventorySnapshot<'_>> {
        chunks.iter().map(|c| decode_snapshot(c).unwrap()).collect()
    }

    #[test]
    fn encoded_len_is_exact() {
        let mut enc = Encoder::new();
        let mut s = sample::snapshot(1, 0);
        let mut empty = Vec::new();
        enc.encode_snapshot(&s, &mut empty).unwrap();
        s.packages = sample::snapshot(1, 1).packages;
        s.packages[0].epoch = Some(-0);
        s.packages[0].size = Some(1 << 40);
        let mut one = Vec::new();
        enc.encode_snapshot(&s, &mut one).unwrap();
        // One more array block count byte (1 instead of 0 items, then 0).
        assert_eq!(one.len() - empty.len(), encoded_len(&s.packages[0]) + 1);
        for v in [0, 1, -1, 63, 64, -64, -65, i64::MAX, i64::MIN] {
            let mut buf = Vec::new();
            let mut z = ((v << 1) ^ (v >> 63)) as u64;
            loop {
                buf.push(z as u8);
                z >>= 7;
                if z == 0 {
                    break;
                }
            }
            assert_eq!(varint_len(v), buf.len(), "{v}");
        }
    }

    #[test]
    fn a_small_snapshot_is_one_record_without_chunk_info() {
        let s = sample::snapshot(2, 100);
        let out = encode_snapshot(&mut Encoder::new(), s.clone(), DEFAULT_CHUNK_BYTES).unwrap();
        assert_eq!(out.len(), 1);
        assert_eq!(decode_snapshot(&out[0]).unwrap(), s);
    }

    #[test]
    fn twenty_five_thousand_packages_fit_a_one_megabyte_broker() {
        let s = sample::snapshot(3, 25_000);
        let out = encode_snapshot(&mut Encoder::new(), s.clone(), DEFAULT_CHUNK_BYTES).unwrap();
        assert!(out.len() > 1);
        let total: usize = out.iter().map(Vec::len).sum();
        assert!(out.iter().all(|c| c.len() <= DEFAULT_CHUNK_BYTES));
        // Chunks are filled: no more than one extra chunk's worth of slack.
        assert!(
            out.len() <= total / (DEFAULT_CHUNK_BYTES * 9 / 10) + 1,
            "{} chunks",
            out.len()
        );
        let chunks = decoded(&out);
        let n: usize = chunks.iter().map(|c| c.packages.len()).sum();
        assert_eq!(n, 25_000);
        for (i, c) in chunks.iter().enumerate() {
            let info = c.chunk.unwrap();
            assert_eq!((info.index as usize, info.count as usize), (i, out.len()));
            assert_eq!(info.snapshot_id, s.snapshot_id);
            assert_eq!(info.package_count, 25_000);
            assert_eq!(c.snapshot_id, chunk_id(&s.snapshot_id, info.index));
            assert_eq!((c.taken_at, &c.host), (s.taken_at, &s.host));
        }
    }

    fn package(name: String, arch: &str, release: String, pad: usize) -> Package<'static> {
        let mut p = sample::snapshot(0, 1).packages.remove(0);
        p.name = Cow::Owned(name);
        p.arch = Cow::Owned(arch.to_owned());
        p.release = Cow::Owned(release);
        p.vendor = Some(Cow::Owned("v".repeat(pad)));
        p
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]
        /// Every chunk is under the limit, every package is in exactly one
        /// chunk, and a name.arch group stays in one chunk.
        #[test]
        fn chunks_are_bounded_and_hold_every_package_once(
            specs in proptest::collection::vec((0u16..400, 0u8..3, 0usize..900), 0..1500),
            max_kib in 16usize..96,
        ) {
            let max = max_kib << 10;
            let mut s = sample::snapshot(9, 0);
            s.packages = specs
                .iter()
                .enumerate()
                .map(|(i, (name, arch, pad))| {
                    package(format!("p{name}"), ["x86_64", "noarch", "i686"][*arch as usize], format!("{i}"), *pad)
                })
                .collect();
            let out = encode_snapshot(&mut Encoder::new(), s.clone(), max).unwrap();
            for c in &out {
                prop_assert!(c.len() <= max, "chunk of {} bytes over {}", c.len(), max);
            }
            let chunks = decoded(&out);
            let mut seen: BTreeMap<String, usize> = BTreeMap::new();
            let mut group_chunk: BTreeMap<(String, String), usize> = BTreeMap::new();
            for (i, c) in chunks.iter().enumerate() {
                prop_assert_eq!(c.chunk.is_some(), out.len() > 1);
                for p in &c.packages {
                    *seen.entry(p.release.to_string()).or_default() += 1;
                    let g = group_chunk.entry((p.name.to_string(), p.arch.to_string())).or_insert(i);
                    prop_assert_eq!(*g, i, "a name.arch group split across chunks");
                }
            }
            prop_assert_eq!(seen.len(), s.packages.len());
            prop_assert!(seen.values().all(|n| *n == 1));
        }
    }

    #[test]
    fn a_group_larger_than_a_chunk_is_split_rather_than_oversized() {
        let mut s = sample::snapshot(4, 0);
        s.packages = (0..100)
            .map(|i| package("kernel".into(), "x86_64", format!("{i}"), 900))
            .collect();
        let max = MIN_CHUNK_BYTES;
        let out = encode_snapshot(&mut Encoder::new(), s, max).unwrap();
        assert!(out.len() > 1);
        assert!(out.iter().all(|c| c.len() <= max));
        let n: usize = decoded(&out).iter().map(|c| c.packages.len()).sum();
        assert_eq!(n, 100);
    }
}
