//! The spool frame reader (`producer/src/spool.rs`: `Spool::read_batch`,
//! which parses frames, resynchronises after corrupt or torn ones and skips
//! what the cursor says was shipped; then `Spool::ack`). The frame parser is
//! private, so the bytes go into a real spool directory (on /dev/shm when
//! there is one, so that the spool's fsyncs cost little).
//!
//! Input: `flags`, `cursor_len`, then `cursor_len` bytes of cursor file (only
//! when flags bit 0 is set; otherwise there is no cursor file), then segment
//! bytes. flags bit 1: split the segment bytes into two segment files; bit 2:
//! the inventory lane instead of the changes lane; bits 3-4: batch size of
//! the drain (1-4); bit 5: the drain fails every other record once.
//!
//! What must hold, beyond "never panics and always ends":
//! - each record read is a frame found at its position in the file, key and
//!   value as the frame holds them;
//! - a frame appended after arbitrary bytes (a torn tail, garbage) is read
//!   back: nothing earlier blocks a later event (unless a frame found in the
//!   garbage legitimately spans it);
//! - draining in small batches, acking as it goes (some deliveries failing
//!   once), ships every record of a one-shot read exactly once, in order of
//!   first delivery, and leaves nothing.
#![no_main]

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use pkgstream_producer::spool::{Batch, Lane, Pos, Spool, SpoolLimits};

const SENTINEL_KEY: &[u8] = b"fuzz-host";
const SENTINEL_VALUE: &[u8] = b"\xc3\x01sentinel event appended after the fuzzed bytes";

fn segment_path(dir: &Path, lane: Lane, n: u64) -> std::path::PathBuf {
    let lane = match lane {
        Lane::Changes => "changes",
        Lane::Inventory => "inventory",
    };
    dir.join(lane).join(format!("{n:020}.seg"))
}

fn scratch_dir() -> tempfile::TempDir {
    let shm = Path::new("/dev/shm");
    let made = if shm.is_dir() {
        tempfile::tempdir_in(shm)
    } else {
        tempfile::tempdir()
    };
    made.expect("a temporary directory")
}

fuzz_target!(|data: &[u8]| {
    let [flags, cursor_len, rest @ ..] = data else {
        return;
    };
    let (cursor, segment) = if flags & 1 != 0 {
        rest.split_at(usize::from(*cursor_len).min(rest.len()))
    } else {
        (&[][..], rest)
    };
    let with_cursor = flags & 1 != 0;
    let split = flags & 2 != 0;
    let lane = if flags & 4 != 0 {
        Lane::Inventory
    } else {
        Lane::Changes
    };
    let batch_size = 1 + usize::from((flags >> 3) & 3);
    let flaky = flags & 32 != 0;

    let tmp = scratch_dir();
    let limits = SpoolLimits {
        max_bytes: 1 << 40,
        segment_bytes: 1 << 30,
        lock_timeout: Duration::from_secs(5),
    };
    let spool = Spool::open(tmp.path(), limits).expect("open spool");
    let files: Vec<(u64, &[u8])> = if split {
        let (a, b) = segment.split_at(segment.len() / 2);
        vec![(1, a), (2, b)]
    } else {
        vec![(1, segment)]
    };
    for (n, bytes) in &files {
        std::fs::write(segment_path(tmp.path(), lane, *n), bytes).expect("write segment");
    }
    if with_cursor {
        let dir = segment_path(tmp.path(), lane, 0);
        let dir = dir.parent().expect("lane dir");
        std::fs::write(dir.join("cursor"), cursor).expect("write cursor");
    }

    // A record appended now, after the fuzzed bytes.
    let (last_n, last_bytes) = *files.last().expect("a segment");
    spool
        .append(lane, &[(SENTINEL_KEY, SENTINEL_VALUE)])
        .expect("append");
    let sentinel_at = match lane {
        // Changes go on at the end of the last segment (it is small).
        Lane::Changes => Pos {
            segment: last_n,
            offset: last_bytes.len() as u64,
        },
        // Each snapshot gets a new segment.
        Lane::Inventory => Pos {
            segment: last_n + 1,
            offset: 0,
        },
    };

    let full = spool
        .read_batch(lane, usize::MAX, u64::MAX)
        .expect("read_batch");
    let file_of = |n: u64| -> Vec<u8> {
        std::fs::read(segment_path(tmp.path(), lane, n)).expect("read segment back")
    };
    let frame_len =
        |r: &pkgstream_producer::spool::Record| 14 + (r.key.len() + r.value.len()) as u64;
    for r in &full.records {
        let file = file_of(r.pos.segment);
        let at = r.pos.offset as usize;
        assert_eq!(
            &file[at..at + 4],
            b"PKS\x01",
            "record at {:?} is no frame",
            r.pos
        );
        let key_at = at + 14;
        assert_eq!(
            &file[key_at..key_at + r.key.len()],
            &r.key[..],
            "key at {:?}",
            r.pos
        );
        let value_at = key_at + r.key.len();
        assert_eq!(
            &file[value_at..value_at + r.value.len()],
            &r.value[..],
            "value at {:?}",
            r.pos
        );
    }
    assert!(
        full.records.windows(2).all(|w| w[0].pos < w[1].pos),
        "records out of order"
    );

    if !with_cursor {
        let found = full
            .records
            .iter()
            .any(|r| r.pos == sentinel_at && r.key == SENTINEL_KEY && r.value == SENTINEL_VALUE);
        let swallowed = full.records.iter().any(|r| {
            r.pos.segment == sentinel_at.segment
                && r.pos.offset < sentinel_at.offset
                && r.pos.offset + frame_len(r) > sentinel_at.offset
        });
        assert!(
            found || swallowed,
            "a frame appended after {} fuzzed bytes is not read back (records: {:?})",
            last_bytes.len(),
            full.records.iter().map(|r| r.pos).collect::<Vec<_>>()
        );
    }

    // Drain in small batches, acking as a flush does.
    let mut shipped: Vec<Pos> = Vec::new();
    let mut failed_once: BTreeSet<Pos> = BTreeSet::new();
    let mut rounds = 0usize;
    loop {
        rounds += 1;
        assert!(
            rounds <= 2 * full.records.len() + 4,
            "the drain does not end ({} records, {rounds} rounds)",
            full.records.len()
        );
        let batch: Batch = spool
            .read_batch(lane, batch_size, u64::MAX)
            .expect("read_batch while draining");
        if batch.records.is_empty() {
            spool.ack(&batch, &[]).expect("ack of an empty batch");
            break;
        }
        let delivered: Vec<bool> = batch
            .records
            .iter()
            .enumerate()
            .map(|(i, r)| {
                assert!(
                    !shipped.contains(&r.pos),
                    "{:?} read again after it was acked",
                    r.pos
                );
                if flaky && i % 2 == 1 && failed_once.insert(r.pos) {
                    false
                } else {
                    shipped.push(r.pos);
                    true
                }
            })
            .collect();
        spool.ack(&batch, &delivered).expect("ack");
    }
    let mut expected: Vec<Pos> = full.records.iter().map(|r| r.pos).collect();
    let mut got = shipped.clone();
    expected.sort();
    got.sort();
    assert_eq!(
        got, expected,
        "the drain shipped other records than one read holds"
    );
    let after = spool
        .read_batch(lane, usize::MAX, u64::MAX)
        .expect("read after the drain");
    assert!(after.records.is_empty(), "records left after the drain");
});
