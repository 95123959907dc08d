//! Writes the seed corpora of the fuzz targets into `fuzz/seeds/<target>/`
//! from the project's own samples: the schemas crate's sample events
//! encoded with every shipped version, the hook lines of
//! `config/sample-events.ndjson`, spool segments written by the spool's
//! own `append`, and `config/sample-hosts.csv` plus the hosts-topic JSON of
//! `config/pkgstream.example.toml`. Canned bulk responses
//! (`seeds/bulk_response/`) were captured from OpenSearch 2.19 and are kept
//! as files; this program leaves them alone.
//!
//! Run from the repository root:
//! `cargo run --manifest-path fuzz/seedgen/Cargo.toml`.
//! File names say what a seed is, so a re-run rewrites the same files.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use pkgstream_producer::spool::{Lane, Spool, SpoolLimits};
use pkgstream_schemas::{sample, Encoder, Kind, Registry};

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

fn main() -> Result<()> {
    let root = PathBuf::from(std::env::args().nth(1).unwrap_or_else(|| ".".into()));
    let seeds = root.join("fuzz/seeds");
    decode_event(&seeds.join("decode_event"))?;
    hook_input(&root, &seeds.join("hook_input"))?;
    spool_reader(&seeds.join("spool_reader"))?;
    host_table(&root, &seeds.join("host_table"))?;
    Ok(())
}

fn put(dir: &Path, name: &str, bytes: &[u8]) -> Result<()> {
    fs::create_dir_all(dir)?;
    fs::write(dir.join(name), bytes)?;
    Ok(())
}

/// The selector byte of `decode_event` that prepends the header of `kind`'s
/// version `version`.
fn selector(kind: Kind, version: u32) -> u8 {
    let i = Registry::get()
        .versions()
        .iter()
        .position(|v| v.kind == kind && v.version == version)
        .unwrap_or(usize::MAX);
    u8::try_from(i).unwrap_or(u8::MAX)
}

fn decode_event(dir: &Path) -> Result<()> {
    let mut enc = Encoder::new();
    let raw_framing = u8::MAX;
    let mut events: Vec<(String, Kind, Vec<u8>)> = Vec::new();
    for i in [1u64, 2, 3, 4] {
        let mut out = Vec::new();
        enc.encode_change(&sample::change(i), &mut out)?;
        events.push((format!("change-{i}"), Kind::PackageChange, out));
    }
    // Sparse: an install with no optional field set.
    let mut sparse = sample::change(5);
    sparse.action = pkgstream_schemas::Action::Install;
    sparse.replaced = None;
    sparse.transaction.history_id = None;
    sparse.transaction.command_line = None;
    sparse.transaction.login_user = None;
    sparse.transaction.start_time = None;
    sparse.package.repo = None;
    sparse.package.vendor = None;
    sparse.package.digest = None;
    sparse.package.epoch = None;
    let mut out = Vec::new();
    enc.encode_change(&sparse, &mut out)?;
    events.push(("change-sparse".into(), Kind::PackageChange, out));
    for n in [0usize, 1, 3] {
        let mut out = Vec::new();
        enc.encode_snapshot(&sample::snapshot(2, n), &mut out)?;
        events.push((format!("snapshot-{n}"), Kind::InventorySnapshot, out));
    }
    let raw: Vec<Vec<u8>> = events.iter().map(|e| e.2.clone()).collect();
    for (i, r) in raw.iter().enumerate() {
        let mut out = Vec::new();
        if enc.append_enrichment(r, &sample::enrichment(i as u64), &mut out)? {
            let kind = if events[i].1 == Kind::PackageChange {
                Kind::EnrichedChange
            } else {
                Kind::EnrichedSnapshot
            };
            events.push((format!("enriched-{}", events[i].0), kind, out));
        }
    }
    for (name, kind, bytes) in &events {
        let version = Registry::get()
            .by_fingerprint(bytes[2..10].try_into()?)
            .map_or(0, |v| v.version);
        let mut seed = vec![selector(*kind, version)];
        seed.extend_from_slice(&bytes[10..]);
        put(dir, &format!("{name}-v{version}.bin"), &seed)?;
        // The same bytes with their own framing.
        let mut seed = vec![raw_framing];
        seed.extend_from_slice(bytes);
        put(dir, &format!("{name}-framed.bin"), &seed)?;
    }
    // Framing errors: short header, wrong magic, unknown fingerprint.
    put(dir, "short-header.bin", &[raw_framing, 0xC3, 0x01, 0x54])?;
    put(
        dir,
        "wrong-magic.bin",
        &[raw_framing, b'{', b'"', 0, 0, 0, 0, 0, 0, 0, 0],
    )?;
    let mut unknown = vec![raw_framing, 0xC3, 0x01];
    unknown.extend_from_slice(&[0xAA; 8]);
    unknown.extend_from_slice(&raw[0][10..]);
    put(dir, "unknown-fingerprint.bin", &unknown)?;
    Ok(())
}

fn hook_input(root: &Path, dir: &Path) -> Result<()> {
    let text = fs::read_to_string(root.join("config/sample-events.ndjson"))?;
    for (i, line) in text.lines().enumerate() {
        put(
            dir,
            &format!("sample-events-line{}.ndjson", i + 1),
            line.as_bytes(),
        )?;
    }
    put(dir, "sample-events.ndjson", text.as_bytes())?;
    // Host overrides, RFC 3339 with an offset, every action and source.
    let more = [
        r#"{"kind":"change","source":"YUM","action":"downgrade","event_time":1795486205,"package":{"name":"bash","version":"5.1.8","release":"6.el9","arch":"x86_64"},"replaced":{"name":"bash","version":"5.1.8","release":"9.el9","arch":"x86_64"},"transaction":{"rpm_tid":1795486205,"start_time":"2026-11-24T03:10:01+01:00"},"host":{"machine_id":"0123456789abcdef0123456789abcdef","hostname":"sim-1","os_id":"rhel","os_version":"9.4","arch":"x86_64"}}"#,
        r#"{"kind":"change","source":"inventory","action":"obsolete","package":{"name":"oldtool","epoch":0,"version":"1.0","release":"1","arch":"noarch"},"transaction":{"rpm_tid":0},"host":{"hostname":"h2"}}"#,
        r#"{"kind":"change","source":"rpm","action":"reinstall","package":{"name":"glibc","version":"2.34","release":"100.el9_4.2","arch":"x86_64","buildtime":"2024-05-21T12:00:00Z","install_time":1795486206,"size":0,"digest":"sha256:00"},"transaction":{"rpm_tid":1795486206,"history_id":-1,"command_line":"","login_user":"root"}}"#,
        r#"{"kind":"inventory","taken_at":1795486205,"packages":[],"host":{"machine_id":"m"}}"#,
    ];
    for (i, line) in more.iter().enumerate() {
        put(dir, &format!("more-{}.ndjson", i + 1), line.as_bytes())?;
    }
    Ok(())
}

fn spool_reader(dir: &Path) -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let limits = SpoolLimits {
        max_bytes: 1 << 30,
        segment_bytes: 1 << 30,
        lock_timeout: Duration::from_secs(5),
    };
    let spool = Spool::open(tmp.path(), limits)?;
    let mut enc = Encoder::new();
    let mut values = Vec::new();
    for i in 1..=3 {
        let mut v = Vec::new();
        enc.encode_change(&sample::change(i), &mut v)?;
        values.push(v);
    }
    let key = sample::host(1).machine_id.into_owned();
    let entries: Vec<(&[u8], &[u8])> = values
        .iter()
        .map(|v| (key.as_bytes(), v.as_slice()))
        .collect();
    spool.append(Lane::Changes, &entries)?;
    let mut snapshot = Vec::new();
    enc.encode_snapshot(&sample::snapshot(1, 2), &mut snapshot)?;
    spool.append(Lane::Inventory, &[(key.as_bytes(), &snapshot)])?;

    let segment = |lane: &str, n: u64| fs::read(tmp.path().join(lane).join(format!("{n:020}.seg")));
    let changes = segment("changes", 1)?;
    let inventory = segment("inventory", 1)?;
    // flags, cursor_len, [cursor], segment bytes (see spool_reader.rs).
    let seed = |flags: u8, cursor: &[u8], seg: &[u8]| {
        let mut s = vec![flags, u8::try_from(cursor.len()).unwrap_or(u8::MAX)];
        s.extend_from_slice(cursor);
        s.extend_from_slice(seg);
        s
    };
    put(dir, "changes-3-frames.bin", &seed(0, &[], &changes))?;
    put(dir, "changes-split-batch2.bin", &seed(2 | 8, &[], &changes))?;
    put(
        dir,
        "changes-flaky-batch3.bin",
        &seed(16 | 32, &[], &changes),
    )?;
    put(dir, "inventory-1-frame.bin", &seed(4, &[], &inventory))?;
    // A torn tail: the last frame cut short.
    put(
        dir,
        "changes-torn-tail.bin",
        &seed(0, &[], &changes[..changes.len() - 40]),
    )?;
    // A flipped bit in the middle frame.
    let mut flipped = changes.clone();
    let mid = flipped.len() / 2;
    flipped[mid] ^= 0x10;
    put(dir, "changes-flipped-bit.bin", &seed(0, &[], &flipped))?;
    // Garbage first, then frames.
    let mut garbage = b"PKS\x01\xff\xff\xff\x7f garbage PKS".to_vec();
    garbage.extend_from_slice(&changes);
    put(dir, "changes-garbage-first.bin", &seed(0, &[], &garbage))?;
    // Cursors as ack writes them: after the first frame; a frame acked out of order.
    let first = 12 + 2 + key.len() + values[0].len();
    let second = first + 12 + 2 + key.len() + values[1].len();
    let cursor = format!("pkgstream-spool-cursor v1\nnext 1 {first}\n");
    put(
        dir,
        "changes-cursor-next.bin",
        &seed(1, cursor.as_bytes(), &changes),
    )?;
    let cursor = format!("pkgstream-spool-cursor v1\nnext 1 {first}\nacked 1 {second}\n");
    put(
        dir,
        "changes-cursor-acked.bin",
        &seed(1 | 8, cursor.as_bytes(), &changes),
    )?;
    put(
        dir,
        "changes-cursor-damaged.bin",
        &seed(1, b"garbage", &changes),
    )?;
    Ok(())
}

fn host_table(root: &Path, dir: &Path) -> Result<()> {
    let csv = fs::read(root.join("config/sample-hosts.csv"))?;
    let with_mode = |mode: u8, bytes: &[u8]| {
        let mut s = vec![mode];
        s.extend_from_slice(bytes);
        s
    };
    put(dir, "sample-hosts.csv.bin", &with_mode(0, &csv))?;
    put(
        dir,
        "hosts-all-columns.csv.bin",
        &with_mode(0, b"host,hostgroup,environment,owner,datacenter,tags,maintenance\n# a comment\nweb-1,web,prod,team-a,dc1,tier=fe;rack=r1,\"sat,sun 02:00-04:00; wed 22:00-23:00\"\n5eed0001,db,staging,,,,daily 22:00-02:00\nbuild-7,build,dev,,,,mon-fri 12:00-13:00\n"),
    )?;
    put(
        dir,
        "hosts-minimal.csv.bin",
        &with_mode(0, b"host,hostgroup,environment\nh1,g,e\n"),
    )?;
    // The hosts-topic value documented in config/pkgstream.example.toml.
    put(
        dir,
        "topic-example.json.bin",
        &with_mode(1, br#"{"hostgroup":"web","environment":"prod","owner":"team-web","datacenter":"dc1","tags":{"tier":"frontend"},"maintenance":["sat,sun 02:00-04:00"]}"#),
    )?;
    // As `pkgstream simulate` writes it.
    put(
        dir,
        "topic-simulated.json.bin",
        &with_mode(1, br#"{"datacenter":"dc2","environment":"staging","hostgroup":"db","maintenance":["daily 22:00-01:00"],"owner":"team-db","tags":{"simulated":"true","tier":"3"}}"#),
    )?;
    put(
        dir,
        "topic-minimal.json.bin",
        &with_mode(1, br#"{"hostgroup":"g","environment":"e","maintenance":["mon-fri 09:00-18:00","daily 00:00-24:00"]}"#),
    )?;
    Ok(())
}
