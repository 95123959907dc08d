//! The host spool: an append-only, crash-safe local queue (Flume's "file
//! channel"), written by hooks and drained by `pkgstream-emit flush`.
//!
//! Layout under the spool directory:
//! ```text
//! lock                      flock held briefly by every append, read snapshot and ack
//! flush.lock                held by the one running flush
//! changes/NNN…N.seg         change events, segments rolled at `segment_bytes`
//! changes/cursor            first unshipped position + positions shipped out of order
//! inventory/NNN…N.seg       one segment per inventory snapshot
//! inventory/cursor
//! dead/NNN…N.changes        dead letters: a record Kafka can never take (one
//! dead/NNN…N.inventory        frame, as in a segment), or a refused hook line
//! dead/NNN…N.input            (its first 1 MiB), each with
//! dead/NNN…N.reason           when, what and why, as text
//! ```
//! A segment is a sequence of frames:
//! `"PKS\x01" | body length u32 LE | CRC-32C of body u32 LE | body`, where the
//! body is `key length u16 LE | key | value`. An append writes its frames
//! with one `write` under the lock and `fdatasync`s before returning, so a
//! recorded event survives power loss. A torn or corrupt frame (power loss
//! mid-write, a truncated file) fails its length or CRC check: the reader
//! logs a warning and resynchronises on the next frame marker, so later
//! events are never blocked.
//!
//! Size policy: the spool holds at most `max_bytes`. When an append would
//! exceed it, the oldest inventory snapshots are deleted first (a newer
//! snapshot supersedes them). Change events are never dropped: a change rpm
//! committed must reach Kafka, so when only changes are left an append still
//! succeeds and the report says the spool is over budget (logged as an
//! error); an inventory snapshot that does not fit is refused.
//!
//! Dead letters ([`Spool::set_aside`]) are what can never be shipped or
//! recorded: kept apart so that they block nothing, counted by
//! [`Spool::stats`] (`pkgstream-emit status`), at most
//! [`DEAD_LETTER_MAX_BYTES`] of them (the oldest are deleted first, with a
//! warning). A set-aside frame can be re-queued by hand once the cause is
//! fixed (append the `.changes` file to a segment of `changes/`).

use std::collections::BTreeSet;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tracing::{error, warn};

use crate::ProducerError;

const FRAME_MAGIC: [u8; 4] = *b"PKS\x01";
const FRAME_HEADER: usize = 12;
/// Larger bodies are treated as corruption (an inventory of 10k packages is
/// about 2 MiB).
const MAX_BODY: u32 = 64 << 20;
const CURSOR_HEADER: &str = "pkgstream-spool-cursor v1";
/// Most bytes the dead letters (`dead/`) hold; the oldest are deleted first.
pub const DEAD_LETTER_MAX_BYTES: u64 = 32 << 20;
/// Of a refused hook line, at most this many bytes are kept as a dead letter.
pub const DEAD_LETTER_INPUT_BYTES: usize = 1 << 20;
const DEAD_DIR: &str = "dead";

/// The two queues of a spool; each ships to its own topic.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Lane {
    /// Change events (`pkgstream.changes.raw`).
    Changes,
    /// Inventory snapshots (`pkgstream.inventory.raw`).
    Inventory,
}

impl Lane {
    /// Both lanes, in the order a flush ships them.
    pub const ALL: [Lane; 2] = [Lane::Changes, Lane::Inventory];

    fn dir_name(self) -> &'static str {
        match self {
            Lane::Changes => "changes",
            Lane::Inventory => "inventory",
        }
    }
}

/// Spool limits (the `[spool]` config section).
#[derive(Clone, Debug)]
pub struct SpoolLimits {
    /// Upper bound on all segment files together, in bytes.
    pub max_bytes: u64,
    /// A change segment is closed once it reaches this size.
    pub segment_bytes: u64,
    /// How long an append waits for the lock before giving up.
    pub lock_timeout: Duration,
}

/// A position in a lane: segment number and byte offset.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Pos {
    /// Segment number (file name).
    pub segment: u64,
    /// Byte offset in the segment.
    pub offset: u64,
}

/// One record read back from the spool.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    /// Where the frame starts.
    pub pos: Pos,
    /// Kafka message key (the host's machine id).
    pub key: Vec<u8>,
    /// Kafka message value (a single-object encoded event).
    pub value: Vec<u8>,
}

/// Records read from one lane, in order, starting at the cursor.
#[derive(Debug, Default)]
pub struct Batch {
    /// The lane.
    pub lane: Option<Lane>,
    /// The records, in spool order.
    pub records: Vec<Record>,
    /// Position after the last frame (or skipped garbage) examined.
    pub end: Pos,
    /// Bytes skipped as corrupt while reading this batch.
    pub corrupt_bytes: u64,
}

/// What an append did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct AppendReport {
    /// Bytes written.
    pub bytes: u64,
    /// Inventory snapshots deleted to make room.
    pub evicted_snapshots: usize,
    /// True when the spool holds more than `max_bytes` of change events.
    pub over_budget: bool,
}

/// Unshipped contents of a spool.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct SpoolStats {
    /// Bytes in change segments.
    pub change_bytes: u64,
    /// Bytes in inventory segments.
    pub inventory_bytes: u64,
    /// Number of segment files.
    pub segments: usize,
    /// Dead letters kept (records or hook lines set aside).
    pub dead_letters: usize,
    /// Bytes of dead letters (payloads and reasons).
    pub dead_letter_bytes: u64,
}

/// What [`Spool::set_aside`] keeps.
#[derive(Clone, Copy, Debug)]
pub enum SetAside<'a> {
    /// A spooled record that Kafka refuses for good (too large, invalid).
    Record {
        /// The lane it came from.
        lane: Lane,
        /// Its Kafka key.
        key: &'a [u8],
        /// Its Kafka value.
        value: &'a [u8],
    },
    /// A hook line that `record` refused.
    Input {
        /// Where it came from (`stdin line 3`).
        source: &'a str,
        /// Its bytes (or the first of them).
        bytes: &'a [u8],
        /// Its whole length, when `bytes` is only the start.
        total_len: usize,
    },
}

/// A spool directory. Cheap to open; every operation takes the lock it needs,
/// so any number of processes may use one spool at once.
pub struct Spool {
    dir: PathBuf,
    limits: SpoolLimits,
    /// [`DEAD_LETTER_MAX_BYTES`], smaller in tests.
    dead_letter_max: u64,
}

#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct Cursor {
    next: Pos,
    /// Frames at or after `next` that were already shipped.
    acked: BTreeSet<Pos>,
}

impl Spool {
    /// Opens (creating if needed) the spool at `dir`.
    pub fn open(dir: impl Into<PathBuf>, limits: SpoolLimits) -> Result<Spool, ProducerError> {
        let dir = dir.into();
        for lane in Lane::ALL {
            let d = dir.join(lane.dir_name());
            fs::create_dir_all(&d).map_err(io_err(&d, "create directory"))?;
        }
        Ok(Spool {
            dir,
            limits,
            dead_letter_max: DEAD_LETTER_MAX_BYTES,
        })
    }

    /// The spool directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Durably appends `entries` (key, value) to `lane`: when this returns
    /// Ok, the frames are on disk. One lock, one write, one fdatasync.
    pub fn append(
        &self,
        lane: Lane,
        entries: &[(&[u8], &[u8])],
    ) -> Result<AppendReport, ProducerError> {
        let mut buf = Vec::with_capacity(
            entries
                .iter()
                .map(|(k, v)| FRAME_HEADER + 2 + k.len() + v.len())
                .sum(),
        );
        for (key, value) in entries {
            encode_frame(&mut buf, key, value)?;
        }
        if buf.is_empty() {
            return Ok(AppendReport::default());
        }
        let _lock = self.lock()?;
        let mut report = AppendReport {
            bytes: buf.len() as u64,
            ..AppendReport::default()
        };
        self.make_room(lane, buf.len() as u64, &mut report)?;

        let lane_dir = self.lane_dir(lane);
        let segments = list_segments(&lane_dir)?;
        let cursor = read_cursor(&lane_dir);
        let next_number = segments.last().map_or(0, |s| s.0).max(cursor.next.segment) + 1;
        let (number, created) = match (lane, segments.last()) {
            (Lane::Changes, Some(&(n, size))) if size < self.limits.segment_bytes => (n, false),
            _ => (next_number, true),
        };
        let path = segment_path(&lane_dir, number);
        let mut file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(io_err(&path, "open segment"))?;
        file.write_all(&buf).map_err(io_err(&path, "write"))?;
        file.sync_data().map_err(io_err(&path, "fdatasync"))?;
        if created {
            sync_dir(&lane_dir)?;
        }
        Ok(report)
    }

    /// Deletes oldest inventory segments until `incoming` bytes fit.
    fn make_room(
        &self,
        lane: Lane,
        incoming: u64,
        report: &mut AppendReport,
    ) -> Result<(), ProducerError> {
        let changes = list_segments(&self.lane_dir(Lane::Changes))?;
        let inventory_dir = self.lane_dir(Lane::Inventory);
        let inventory = list_segments(&inventory_dir)?;
        let mut used: u64 = changes.iter().chain(&inventory).map(|s| s.1).sum();
        let mut victims = inventory.iter();
        while used + incoming > self.limits.max_bytes {
            let Some(&(n, size)) = victims.next() else {
                break;
            };
            let path = segment_path(&inventory_dir, n);
            fs::remove_file(&path).map_err(io_err(&path, "evict snapshot"))?;
            warn!(segment = %path.display(), bytes = size, max_bytes = self.limits.max_bytes, "spool full: unshipped inventory snapshot evicted");
            used -= size;
            report.evicted_snapshots += 1;
        }
        if report.evicted_snapshots > 0 {
            sync_dir(&inventory_dir)?;
        }
        if used + incoming > self.limits.max_bytes {
            match lane {
                Lane::Inventory => {
                    return Err(ProducerError::SpoolFull {
                        path: self.dir.clone(),
                        used,
                        max: self.limits.max_bytes,
                    })
                }
                Lane::Changes => {
                    error!(used, incoming, max_bytes = self.limits.max_bytes, "spool over budget with unshipped change events; keeping them (a committed change is never dropped)");
                    report.over_budget = true;
                }
            }
        }
        Ok(())
    }

    /// Reads up to `max_records` records (and roughly `max_bytes` bytes) of
    /// `lane` from the cursor on, skipping frames already shipped and
    /// corrupt bytes (with a warning).
    pub fn read_batch(
        &self,
        lane: Lane,
        max_records: usize,
        max_bytes: u64,
    ) -> Result<Batch, ProducerError> {
        let lane_dir = self.lane_dir(lane);
        let (cursor, segments) = {
            let _lock = self.lock()?;
            (read_cursor(&lane_dir), list_segments(&lane_dir)?)
        };
        let mut batch = Batch {
            lane: Some(lane),
            end: cursor.next,
            ..Batch::default()
        };
        let mut bytes = 0u64;
        for (number, size) in segments {
            if number < cursor.next.segment {
                continue;
            }
            let start = if number == cursor.next.segment {
                cursor.next.offset
            } else {
                0
            };
            if start >= size {
                batch.end = Pos {
                    segment: number,
                    offset: size,
                };
                continue;
            }
            let path = segment_path(&lane_dir, number);
            let data = match read_range(&path, start, size) {
                Ok(d) => d,
                // Evicted (inventory) between the listing and now.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(io_err(&path, "read")(e)),
            };
            let mut at = 0usize;
            while at < data.len() {
                match decode_frame(&data[at..]) {
                    Some((key, value, len)) => {
                        let pos = Pos {
                            segment: number,
                            offset: start + at as u64,
                        };
                        if !cursor.acked.contains(&pos) {
                            batch.records.push(Record {
                                pos,
                                key: key.to_vec(),
                                value: value.to_vec(),
                            });
                            bytes += len as u64;
                        }
                        at += len;
                    }
                    None => {
                        let skip = resync(&data[at..]);
                        warn!(segment = %path.display(), offset = start + at as u64, skipped_bytes = skip, "corrupt or torn spool frame skipped");
                        batch.corrupt_bytes += skip as u64;
                        at += skip;
                    }
                }
                batch.end = Pos {
                    segment: number,
                    offset: start + at as u64,
                };
                if batch.records.len() >= max_records || bytes >= max_bytes {
                    return Ok(batch);
                }
            }
        }
        Ok(batch)
    }

    /// Records that the records of `batch` for which `delivered` is true were
    /// shipped: advances the cursor over the delivered prefix, remembers
    /// delivered records after the first failure, and deletes segments that
    /// are fully shipped. Written atomically: a crash leaves the old cursor.
    pub fn ack(&self, batch: &Batch, delivered: &[bool]) -> Result<(), ProducerError> {
        let Some(lane) = batch.lane else {
            return Ok(());
        };
        let lane_dir = self.lane_dir(lane);
        let _lock = self.lock()?;
        let mut cursor = read_cursor(&lane_dir);
        let first_failed = delivered.iter().position(|d| !d);
        let next = match first_failed {
            Some(i) => batch.records[i].pos,
            None => batch.end,
        };
        if next > cursor.next {
            cursor.next = next;
        }
        for (record, &ok) in batch.records.iter().zip(delivered) {
            if ok && record.pos >= cursor.next {
                cursor.acked.insert(record.pos);
            }
        }
        let next = cursor.next;
        cursor.acked.retain(|p| *p >= next);
        write_cursor(&lane_dir, &cursor)?;

        let mut removed = false;
        for (number, size) in list_segments(&lane_dir)? {
            if number < next.segment || (number == next.segment && next.offset >= size) {
                let path = segment_path(&lane_dir, number);
                fs::remove_file(&path).map_err(io_err(&path, "delete shipped segment"))?;
                removed = true;
            }
        }
        if removed {
            sync_dir(&lane_dir)?;
        }
        Ok(())
    }

    /// Keeps `what` as a dead letter in `dead/`, with `reason`, durably
    /// (fdatasync), deleting the oldest dead letters beyond
    /// [`DEAD_LETTER_MAX_BYTES`]. Returns the path of the reason file.
    pub fn set_aside(&self, what: SetAside<'_>, reason: &str) -> Result<PathBuf, ProducerError> {
        let (ext, payload, described) = match what {
            SetAside::Record { lane, key, value } => {
                let mut frame = Vec::new();
                encode_frame(&mut frame, key, value)?;
                let described = format!(
                    "what: {} record, key {}, {} bytes\n",
                    lane.dir_name(),
                    String::from_utf8_lossy(key),
                    value.len()
                );
                (lane.dir_name(), frame, described)
            }
            SetAside::Input {
                source,
                bytes,
                total_len,
            } => {
                let kept = &bytes[..bytes.len().min(DEAD_LETTER_INPUT_BYTES)];
                let described = format!(
                    "what: hook input {source}, {total_len} bytes{}\n",
                    if kept.len() < total_len {
                        format!(" (the first {} kept)", kept.len())
                    } else {
                        String::new()
                    }
                );
                ("input", kept.to_vec(), described)
            }
        };
        let dead_dir = self.dir.join(DEAD_DIR);
        fs::create_dir_all(&dead_dir).map_err(io_err(&dead_dir, "create directory"))?;
        let _lock = self.lock()?;
        let mut entries = list_dead(&dead_dir)?;
        let number = entries.last().map_or(0, |e| e.0) + 1;
        let mut used: u64 = entries.iter().map(|e| e.1).sum();
        let max = self.dead_letter_max;
        let keep_payload = (payload.len() as u64) < max / 2;
        let incoming = if keep_payload {
            payload.len() as u64
        } else {
            0
        } + 1024;
        let mut oldest = entries.drain(..);
        while used + incoming > max {
            let Some((n, size)) = oldest.next() else {
                break;
            };
            for path in dead_files(&dead_dir, n)? {
                fs::remove_file(&path).map_err(io_err(&path, "delete dead letter"))?;
            }
            warn!(
                dead_letter = n,
                bytes = size,
                max_bytes = max,
                "dead letters full: the oldest deleted"
            );
            used -= size;
        }
        let mut text = format!(
            "time: {}\n{described}reason: {reason}\n",
            chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
        );
        if keep_payload {
            let path = dead_dir.join(format!("{number:020}.{ext}"));
            write_synced(&path, &payload)?;
        } else {
            text.push_str(&format!(
                "payload: not kept ({} bytes, more than half of the {max} dead letters may hold)\n",
                payload.len()
            ));
        }
        let reason_path = dead_dir.join(format!("{number:020}.reason"));
        write_synced(&reason_path, text.as_bytes())?;
        sync_dir(&dead_dir)?;
        Ok(reason_path)
    }

    /// Bytes waiting in each lane.
    pub fn stats(&self) -> Result<SpoolStats, ProducerError> {
        let _lock = self.lock()?;
        let mut stats = SpoolStats::default();
        for lane in Lane::ALL {
            let lane_dir = self.lane_dir(lane);
            let cursor = read_cursor(&lane_dir);
            let segments = list_segments(&lane_dir)?;
            stats.segments += segments.len();
            let pending: u64 = segments
                .iter()
                .map(|&(n, size)| {
                    if n == cursor.next.segment {
                        size.saturating_sub(cursor.next.offset)
                    } else {
                        size
                    }
                })
                .sum();
            match lane {
                Lane::Changes => stats.change_bytes = pending,
                Lane::Inventory => stats.inventory_bytes = pending,
            }
        }
        let dead_dir = self.dir.join(DEAD_DIR);
        if dead_dir.exists() {
            let dead = list_dead(&dead_dir)?;
            stats.dead_letters = dead.len();
            stats.dead_letter_bytes = dead.iter().map(|d| d.1).sum();
        }
        Ok(stats)
    }

    /// Takes the flush lock without waiting; `None` when another flush runs.
    pub fn try_flush_lock(&self) -> Result<Option<File>, ProducerError> {
        let (path, file) = self.open_lock_file("flush.lock")?;
        match file.try_lock() {
            Ok(()) => Ok(Some(file)),
            Err(fs::TryLockError::WouldBlock) => Ok(None),
            Err(fs::TryLockError::Error(e)) => Err(io_err(&path, "lock")(e)),
        }
    }

    /// Opens (creating) a lock file of the spool directory.
    fn open_lock_file(&self, name: &str) -> Result<(PathBuf, File), ProducerError> {
        let path = self.dir.join(name);
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(io_err(&path, "open lock"))?;
        Ok((path, file))
    }

    fn lane_dir(&self, lane: Lane) -> PathBuf {
        self.dir.join(lane.dir_name())
    }

    /// The spool lock, waited for up to `lock_timeout`; released on drop.
    fn lock(&self) -> Result<File, ProducerError> {
        let (path, file) = self.open_lock_file("lock")?;
        let started = Instant::now();
        loop {
            match file.try_lock() {
                Ok(()) => return Ok(file),
                Err(fs::TryLockError::WouldBlock)
                    if started.elapsed() < self.limits.lock_timeout =>
                {
                    std::thread::sleep(Duration::from_millis(1))
                }
                Err(fs::TryLockError::WouldBlock) => {
                    return Err(ProducerError::LockTimeout {
                        path,
                        waited_ms: started.elapsed().as_millis() as u64,
                    })
                }
                Err(fs::TryLockError::Error(e)) => return Err(io_err(&path, "lock")(e)),
            }
        }
    }
}

fn io_err<'a>(
    path: &'a Path,
    op: &'static str,
) -> impl FnOnce(std::io::Error) -> ProducerError + 'a {
    move |source| ProducerError::SpoolIo {
        path: path.to_path_buf(),
        op,
        source,
    }
}

fn encode_frame(buf: &mut Vec<u8>, key: &[u8], value: &[u8]) -> Result<(), ProducerError> {
    let body_len = 2 + key.len() + value.len();
    let key_len = u16::try_from(key.len()).ok();
    let body_len32 = u32::try_from(body_len).ok().filter(|l| *l <= MAX_BODY);
    let (Some(key_len), Some(body_len32)) = (key_len, body_len32) else {
        return Err(ProducerError::Input {
            source_name: "event".into(),
            line: 0,
            reason: format!(
                "record of {body_len} bytes is larger than the spool accepts ({MAX_BODY})"
            ),
        });
    };
    buf.extend_from_slice(&FRAME_MAGIC);
    buf.extend_from_slice(&body_len32.to_le_bytes());
    let crc_at = buf.len();
    buf.extend_from_slice(&[0; 4]);
    let body_at = buf.len();
    buf.extend_from_slice(&key_len.to_le_bytes());
    buf.extend_from_slice(key);
    buf.extend_from_slice(value);
    let crc = crc32c::crc32c(&buf[body_at..]);
    buf[crc_at..crc_at + 4].copy_from_slice(&crc.to_le_bytes());
    Ok(())
}

/// Parses one frame at the start of `data`: (key, value, frame length), or
/// `None` when the bytes there are not a whole valid frame.
fn decode_frame(data: &[u8]) -> Option<(&[u8], &[u8], usize)> {
    let header: &[u8; FRAME_HEADER] = data.first_chunk()?;
    if header[..4] != FRAME_MAGIC {
        return None;
    }
    let len = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
    if !(2..=MAX_BODY).contains(&len) {
        return None;
    }
    let crc = u32::from_le_bytes([header[8], header[9], header[10], header[11]]);
    let body = data.get(FRAME_HEADER..FRAME_HEADER + len as usize)?;
    if crc32c::crc32c(body) != crc {
        return None;
    }
    let key_len = u16::from_le_bytes([body[0], body[1]]) as usize;
    let key = body.get(2..2 + key_len)?;
    Some((key, &body[2 + key_len..], FRAME_HEADER + len as usize))
}

/// Bytes to skip from the start of a bad frame to the next frame marker
/// (or to the end).
fn resync(data: &[u8]) -> usize {
    data.get(1..)
        .and_then(|rest| {
            rest.windows(FRAME_MAGIC.len())
                .position(|w| w == FRAME_MAGIC)
        })
        .map_or(data.len(), |p| p + 1)
}

/// Files of `dir` whose name `number_of` parses, as (number, size, path),
/// sorted; a file that vanishes while being listed is skipped.
fn numbered_files(
    dir: &Path,
    number_of: impl Fn(&str) -> Option<u64>,
) -> Result<Vec<(u64, u64, PathBuf)>, ProducerError> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir).map_err(io_err(dir, "list"))? {
        let entry = entry.map_err(io_err(dir, "list"))?;
        let Some(number) = entry.file_name().to_str().and_then(&number_of) else {
            continue;
        };
        match entry.metadata() {
            Ok(m) => out.push((number, m.len(), entry.path())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err(&entry.path(), "stat")(e)),
        }
    }
    out.sort_unstable();
    Ok(out)
}

/// The dead letter a file of `SPOOL/dead/` belongs to (`<number>.<part>`).
fn dead_number(name: &str) -> Option<u64> {
    name.split_once('.').and_then(|(n, _)| n.parse().ok())
}

/// Dead letters as (number, bytes of all its files), oldest first.
fn list_dead(dead_dir: &Path) -> Result<Vec<(u64, u64)>, ProducerError> {
    let mut by_number = std::collections::BTreeMap::<u64, u64>::new();
    for (number, len, _) in numbered_files(dead_dir, dead_number)? {
        *by_number.entry(number).or_default() += len;
    }
    Ok(by_number.into_iter().collect())
}

/// The files of dead letter `number`.
fn dead_files(dead_dir: &Path, number: u64) -> Result<Vec<PathBuf>, ProducerError> {
    Ok(numbered_files(dead_dir, dead_number)?
        .into_iter()
        .filter(|(n, _, _)| *n == number)
        .map(|(_, _, path)| path)
        .collect())
}

/// Creates `path` with `data`, fdatasync'ed.
fn write_synced(path: &Path, data: &[u8]) -> Result<(), ProducerError> {
    let mut file = File::create(path).map_err(io_err(path, "create"))?;
    file.write_all(data).map_err(io_err(path, "write"))?;
    file.sync_data().map_err(io_err(path, "fdatasync"))
}

fn segment_path(lane_dir: &Path, number: u64) -> PathBuf {
    lane_dir.join(format!("{number:020}.seg"))
}

/// Segments of a lane as (number, size), oldest first.
fn list_segments(lane_dir: &Path) -> Result<Vec<(u64, u64)>, ProducerError> {
    let number_of = |name: &str| name.strip_suffix(".seg").and_then(|n| n.parse().ok());
    Ok(numbered_files(lane_dir, number_of)?
        .into_iter()
        .map(|(number, len, _)| (number, len))
        .collect())
}

fn read_range(path: &Path, start: u64, end: u64) -> std::io::Result<Vec<u8>> {
    let mut file = File::open(path)?;
    file.seek(SeekFrom::Start(start))?;
    let mut data = Vec::with_capacity((end - start) as usize);
    file.take(end - start).read_to_end(&mut data)?;
    Ok(data)
}

/// Reads a lane's cursor; a missing file is the start, a damaged one is
/// reported and treated as the start (events are re-sent with their ids, so
/// the pipeline deduplicates them; nothing is lost).
fn read_cursor(lane_dir: &Path) -> Cursor {
    let path = lane_dir.join("cursor");
    let text = match fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Cursor::default(),
        Err(e) => {
            warn!(path = %path.display(), error = %e, "spool cursor unreadable; re-reading the lane from its start");
            return Cursor::default();
        }
    };
    parse_cursor(&text).unwrap_or_else(|| {
        warn!(path = %path.display(), "spool cursor damaged; re-reading the lane from its start");
        Cursor::default()
    })
}

fn parse_cursor(text: &str) -> Option<Cursor> {
    let mut lines = text.lines();
    if lines.next()? != CURSOR_HEADER {
        return None;
    }
    let pos = |line: &str, prefix: &str| -> Option<Pos> {
        let mut parts = line.strip_prefix(prefix)?.split(' ');
        let p = Pos {
            segment: parts.next()?.parse().ok()?,
            offset: parts.next()?.parse().ok()?,
        };
        parts.next().is_none().then_some(p)
    };
    let next = pos(lines.next()?, "next ")?;
    let mut acked = BTreeSet::new();
    for line in lines {
        acked.insert(pos(line, "acked ")?);
    }
    Some(Cursor { next, acked })
}

fn write_cursor(lane_dir: &Path, cursor: &Cursor) -> Result<(), ProducerError> {
    let mut text = format!(
        "{CURSOR_HEADER}\nnext {} {}\n",
        cursor.next.segment, cursor.next.offset
    );
    for p in &cursor.acked {
        text.push_str(&format!("acked {} {}\n", p.segment, p.offset));
    }
    let tmp = lane_dir.join("cursor.tmp");
    let path = lane_dir.join("cursor");
    let mut file = File::create(&tmp).map_err(io_err(&tmp, "create cursor"))?;
    file.write_all(text.as_bytes())
        .map_err(io_err(&tmp, "write cursor"))?;
    file.sync_data().map_err(io_err(&tmp, "fdatasync cursor"))?;
    fs::rename(&tmp, &path).map_err(io_err(&path, "replace cursor"))?;
    sync_dir(lane_dir)
}

fn sync_dir(dir: &Path) -> Result<(), ProducerError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(dir, "fsync directory"))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn limits() -> SpoolLimits {
        SpoolLimits {
            max_bytes: 1 << 20,
            segment_bytes: 4096,
            lock_timeout: Duration::from_secs(2),
        }
    }

    fn values(batch: &Batch) -> Vec<Vec<u8>> {
        batch.records.iter().map(|r| r.value.clone()).collect()
    }

    fn append_n(spool: &Spool, lane: Lane, range: std::ops::Range<u32>) {
        for i in range {
            let v = format!("event-{i:05}-{}", "x".repeat(100));
            spool.append(lane, &[(b"host-a", v.as_bytes())]).unwrap();
        }
    }

    #[test]
    fn append_read_ack_in_order_across_segments() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path(), limits()).unwrap();
        append_n(&spool, Lane::Changes, 0..100);
        assert!(
            list_segments(&dir.path().join("changes")).unwrap().len() > 2,
            "segments roll"
        );
        let batch = spool.read_batch(Lane::Changes, 1000, u64::MAX).unwrap();
        assert_eq!(batch.records.len(), 100);
        assert!(batch.records.windows(2).all(|w| w[0].pos < w[1].pos));
        assert!(batch.records[99].value.starts_with(b"event-00099"));
        spool.ack(&batch, &[true; 100]).unwrap();
        assert!(spool
            .read_batch(Lane::Changes, 1000, u64::MAX)
            .unwrap()
            .records
            .is_empty());
        assert_eq!(
            list_segments(&dir.path().join("changes")).unwrap(),
            vec![],
            "shipped segments are deleted"
        );
        // Numbering continues after everything was deleted.
        append_n(&spool, Lane::Changes, 100..101);
        assert_eq!(
            values(&spool.read_batch(Lane::Changes, 10, u64::MAX).unwrap()).len(),
            1
        );
    }

    #[test]
    fn partial_ack_resends_only_the_undelivered() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path(), limits()).unwrap();
        append_n(&spool, Lane::Changes, 0..10);
        let batch = spool.read_batch(Lane::Changes, 100, u64::MAX).unwrap();
        let delivered: Vec<bool> = (0..10).map(|i| i != 3 && i != 7).collect();
        spool.ack(&batch, &delivered).unwrap();
        let again = spool.read_batch(Lane::Changes, 100, u64::MAX).unwrap();
        let names: Vec<String> = again
            .records
            .iter()
            .map(|r| String::from_utf8_lossy(&r.value[..11]).into_owned())
            .collect();
        assert_eq!(names, vec!["event-00003", "event-00007"]);
        spool.ack(&again, &[true, true]).unwrap();
        assert!(spool
            .read_batch(Lane::Changes, 100, u64::MAX)
            .unwrap()
            .records
            .is_empty());
    }

    #[test]
    fn batch_limits_are_respected() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path(), limits()).unwrap();
        append_n(&spool, Lane::Changes, 0..50);
        let b = spool.read_batch(Lane::Changes, 20, u64::MAX).unwrap();
        assert_eq!(b.records.len(), 20);
        spool.ack(&b, &[true; 20]).unwrap();
        let b = spool.read_batch(Lane::Changes, 1000, 500).unwrap();
        assert_eq!(b.records.len(), 4, "~130-byte frames, 500-byte budget");
        assert!(b.records[0].value.starts_with(b"event-00020"));
    }

    #[test]
    fn torn_tail_is_skipped_and_later_appends_still_arrive() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path(), limits()).unwrap();
        append_n(&spool, Lane::Changes, 0..3);
        let seg = segment_path(&dir.path().join("changes"), 1);
        let len = fs::metadata(&seg).unwrap().len();
        // Power loss mid-write: the last frame is cut in half.
        OpenOptions::new()
            .write(true)
            .open(&seg)
            .unwrap()
            .set_len(len - 50)
            .unwrap();
        append_n(&spool, Lane::Changes, 3..5);
        let b = spool.read_batch(Lane::Changes, 100, u64::MAX).unwrap();
        let names: Vec<_> = b.records.iter().map(|r| r.value[..11].to_vec()).collect();
        assert_eq!(
            names,
            vec![
                b"event-00000".to_vec(),
                b"event-00001".to_vec(),
                b"event-00003".to_vec(),
                b"event-00004".to_vec()
            ]
        );
        assert!(b.corrupt_bytes > 0);
    }

    #[test]
    fn flipped_bit_in_the_middle_loses_only_that_frame() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path(), limits()).unwrap();
        append_n(&spool, Lane::Changes, 0..5);
        let seg = segment_path(&dir.path().join("changes"), 1);
        let mut data = fs::read(&seg).unwrap();
        let frame = data.len() / 5;
        data[frame * 2 + 40] ^= 0x10;
        fs::write(&seg, data).unwrap();
        let b = spool.read_batch(Lane::Changes, 100, u64::MAX).unwrap();
        assert_eq!(b.records.len(), 4);
        assert!(b.records[2].value.starts_with(b"event-00003"));
    }

    #[test]
    fn full_spool_evicts_oldest_snapshots_and_keeps_changes() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(
            dir.path(),
            SpoolLimits {
                max_bytes: 10_000,
                ..limits()
            },
        )
        .unwrap();
        let snapshot = vec![7u8; 3000];
        for _ in 0..3 {
            spool.append(Lane::Inventory, &[(b"h", &snapshot)]).unwrap();
        }
        // 9 KB of snapshots; 2 KB of changes forces out the oldest.
        let change = vec![1u8; 2000];
        let r = spool.append(Lane::Changes, &[(b"h", &change)]).unwrap();
        assert_eq!(r.evicted_snapshots, 1);
        assert_eq!(
            spool
                .read_batch(Lane::Inventory, 10, u64::MAX)
                .unwrap()
                .records
                .len(),
            2
        );
        // Changes alone over budget: kept, flagged; snapshots then refused.
        for _ in 0..5 {
            spool.append(Lane::Changes, &[(b"h", &change)]).unwrap();
        }
        let r = spool.append(Lane::Changes, &[(b"h", &change)]).unwrap();
        assert!(r.over_budget);
        assert_eq!(
            spool
                .read_batch(Lane::Changes, 100, u64::MAX)
                .unwrap()
                .records
                .len(),
            7
        );
        assert!(matches!(
            spool.append(Lane::Inventory, &[(b"h", &snapshot)]),
            Err(ProducerError::SpoolFull { .. })
        ));
    }

    #[test]
    fn concurrent_writers_lose_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let threads: Vec<_> = (0..8)
            .map(|t| {
                let path = dir.path().to_path_buf();
                std::thread::spawn(move || {
                    let spool = Spool::open(path, limits()).unwrap();
                    for i in 0..200 {
                        spool
                            .append(Lane::Changes, &[(b"k", format!("{t}-{i}").as_bytes())])
                            .unwrap();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let spool = Spool::open(dir.path(), limits()).unwrap();
        let b = spool.read_batch(Lane::Changes, 10_000, u64::MAX).unwrap();
        assert_eq!(b.records.len(), 1600);
        assert_eq!(b.corrupt_bytes, 0);
        let distinct: BTreeSet<_> = b.records.iter().map(|r| r.value.clone()).collect();
        assert_eq!(distinct.len(), 1600);
    }

    #[test]
    fn damaged_cursor_rereads_from_start() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path(), limits()).unwrap();
        append_n(&spool, Lane::Changes, 0..3);
        let b = spool.read_batch(Lane::Changes, 2, u64::MAX).unwrap();
        spool.ack(&b, &[true, true]).unwrap();
        fs::write(dir.path().join("changes/cursor"), "garbage").unwrap();
        assert_eq!(
            spool
                .read_batch(Lane::Changes, 100, u64::MAX)
                .unwrap()
                .records
                .len(),
            3
        );
    }

    #[test]
    fn cursor_text_round_trips() {
        let c = Cursor {
            next: Pos {
                segment: 3,
                offset: 77,
            },
            acked: [
                Pos {
                    segment: 3,
                    offset: 200,
                },
                Pos {
                    segment: 4,
                    offset: 0,
                },
            ]
            .into(),
        };
        let dir = tempfile::tempdir().unwrap();
        write_cursor(dir.path(), &c).unwrap();
        assert_eq!(read_cursor(dir.path()), c);
        assert_eq!(
            parse_cursor("pkgstream-spool-cursor v1\nnext 1 2 3\n"),
            None
        );
    }

    #[test]
    fn dead_letters_are_kept_apart_counted_and_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path(), limits()).unwrap();
        append_n(&spool, Lane::Changes, 0..3);
        let reason = spool
            .set_aside(
                SetAside::Record {
                    lane: Lane::Changes,
                    key: b"host-a",
                    value: b"too large",
                },
                "Kafka will never take it: message too large",
            )
            .unwrap();
        let text = fs::read_to_string(&reason).unwrap();
        assert!(
            text.contains("what: changes record, key host-a, 9 bytes\n"),
            "{text}"
        );
        assert!(
            text.contains("reason: Kafka will never take it: message too large\n"),
            "{text}"
        );
        // The payload is a frame, as in a segment, so it can be re-queued.
        let frame = fs::read(reason.with_extension("changes")).unwrap();
        assert_eq!(
            decode_frame(&frame).map(|f| (f.0, f.1)),
            Some((&b"host-a"[..], &b"too large"[..]))
        );
        // Dead letters are not in the lanes: the three changes are all a flush sees.
        assert_eq!(
            spool
                .read_batch(Lane::Changes, 100, u64::MAX)
                .unwrap()
                .records
                .len(),
            3
        );
        let stats = spool.stats().unwrap();
        assert_eq!(stats.dead_letters, 1);
        assert_eq!(stats.dead_letter_bytes, (frame.len() + text.len()) as u64);

        // Bounded: the oldest go when the next would pass the cap.
        let spool = Spool {
            dead_letter_max: 64 << 10,
            ..spool
        };
        let line = vec![b'x'; 20 << 10];
        for i in 0..6 {
            spool
                .set_aside(
                    SetAside::Input {
                        source: &format!("stdin line {i}"),
                        bytes: &line,
                        total_len: line.len(),
                    },
                    "refused",
                )
                .unwrap();
        }
        let stats = spool.stats().unwrap();
        assert!(stats.dead_letter_bytes <= 64 << 10, "{stats:?}");
        assert_eq!(stats.dead_letters, 3, "the oldest were deleted: {stats:?}");
        let newest: Vec<String> = (5..=7)
            .map(|n| fs::read_to_string(dir.path().join(format!("dead/{n:020}.reason"))).unwrap())
            .collect();
        assert!(
            newest[2].contains("what: hook input stdin line 5, 20480 bytes\n"),
            "{}",
            newest[2]
        );
        // Too large to keep at all: the reason stays, the payload does not.
        let reason = spool
            .set_aside(
                SetAside::Record {
                    lane: Lane::Inventory,
                    key: b"h",
                    value: &[0u8; 40 << 10],
                },
                "too large",
            )
            .unwrap();
        assert!(fs::read_to_string(&reason)
            .unwrap()
            .contains("payload: not kept (40975 bytes"));
        assert!(!reason.with_extension("inventory").exists());
    }
}
