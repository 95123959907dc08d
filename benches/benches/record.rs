//! The durable path of a hook: `Spool::append` including its fdatasync, one
//! event per call and 100 per call (one dnf transaction), on the real disk;
//! and the whole `pkgstream-emit record` process for a 20-package
//! transaction (wall time per call, peak RSS).
//!
//! `cargo bench -p pkgstream-benches --bench record`. The process part needs
//! `cargo build --release -p pkgstream-producer` first (or
//! `PKGSTREAM_EMIT_BIN=/path/to/pkgstream-emit`); without it, it is skipped
//! with a note. The spool lives under the target directory (override with
//! `PKGSTREAM_BENCH_DIR`), never in tmpfs, whose fsync costs nothing.
//! Without `--bench` (as `cargo test --all-targets` runs it) every part runs
//! a few iterations only, as a smoke test.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use pkgstream_benches::{ms, Latencies};
use pkgstream_producer::spool::SpoolLimits;
use pkgstream_producer::{Lane, Spool};
use pkgstream_schemas::{sample, Encoder};

struct Sizes {
    single_calls: usize,
    batch_calls: usize,
    batch_events: usize,
    process_calls: usize,
    process_lines: usize,
}

const FULL: Sizes = Sizes {
    single_calls: 2000,
    batch_calls: 200,
    batch_events: 100,
    process_calls: 200,
    process_lines: 20,
};
const SMOKE: Sizes = Sizes {
    single_calls: 20,
    batch_calls: 3,
    batch_events: 100,
    process_calls: 3,
    process_lines: 20,
};

fn main() {
    let sizes = if std::env::args().any(|a| a == "--bench") {
        FULL
    } else {
        SMOKE
    };
    let base = std::env::var_os("PKGSTREAM_BENCH_DIR")
        .map_or_else(|| PathBuf::from(env!("CARGO_TARGET_TMPDIR")), PathBuf::from);
    std::fs::create_dir_all(&base).unwrap();
    let dir = tempfile::Builder::new()
        .prefix("record-bench-")
        .tempdir_in(&base)
        .unwrap();
    println!(
        "spool directory: {} ({})",
        dir.path().display(),
        filesystem_of(dir.path())
    );

    let limits = SpoolLimits {
        max_bytes: 256 << 20,
        segment_bytes: 8 << 20,
        lock_timeout: Duration::from_secs(2),
    };
    let (keys, values) = encoded_samples();
    let mean = values.iter().map(Vec::len).sum::<usize>() / values.len();
    println!("event: PackageChange, {mean} bytes encoded (mean of {} samples), key = machine id ({} bytes)", values.len(), keys[0].len());
    println!();

    raw_fdatasync(&dir.path().join("raw"), mean, sizes.single_calls);
    single_appends(
        &Spool::open(dir.path().join("single"), limits.clone()).unwrap(),
        &keys,
        &values,
        sizes.single_calls,
    );
    batched_appends(
        &Spool::open(dir.path().join("batched"), limits).unwrap(),
        &keys,
        &values,
        sizes.batch_calls,
        sizes.batch_events,
    );
    record_process(dir.path(), sizes.process_calls, sizes.process_lines);
}

fn encoded_samples() -> (Vec<Vec<u8>>, Vec<Vec<u8>>) {
    let mut enc = Encoder::new();
    (0..64)
        .map(|i| {
            let e = sample::change(i);
            let mut out = Vec::new();
            enc.encode_change(&e, &mut out).unwrap();
            (e.host.machine_id.as_bytes().to_vec(), out)
        })
        .unzip()
}

fn report(name: &str, events: usize, wall: Duration, lat: &Latencies) {
    println!("{name}");
    println!(
        "  calls {:>6}   events {:>7}   wall {:.3} s   {:.0} events/s   {:.0} calls/s",
        lat.len(),
        events,
        wall.as_secs_f64(),
        events as f64 / wall.as_secs_f64(),
        lat.len() as f64 / wall.as_secs_f64()
    );
    println!(
        "  per call: p50 {}   p99 {}   p99.9 {}   max {}",
        ms(lat.percentile(50.0)),
        ms(lat.percentile(99.0)),
        ms(lat.percentile(99.9)),
        ms(lat.max())
    );
}

/// The floor: one `write` + `fdatasync` of an event-sized buffer to an
/// append-only file, no spool logic.
fn raw_fdatasync(path: &Path, bytes: usize, calls: usize) {
    let mut file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap();
    let buf = vec![0x5a; bytes + 12 + 2 + 32];
    let mut lat = Vec::with_capacity(calls);
    let started = Instant::now();
    for _ in 0..calls {
        let t = Instant::now();
        file.write_all(&buf).unwrap();
        file.sync_data().unwrap();
        lat.push(t.elapsed());
    }
    report(
        "floor: write + fdatasync of one frame-sized buffer (no spool)",
        calls,
        started.elapsed(),
        &Latencies::new(lat),
    );
}

fn single_appends(spool: &Spool, keys: &[Vec<u8>], values: &[Vec<u8>], calls: usize) {
    for i in 0..10 {
        spool
            .append(Lane::Changes, &[(&keys[i], &values[i])])
            .unwrap();
    }
    let mut lat = Vec::with_capacity(calls);
    let started = Instant::now();
    for i in 0..calls {
        let k = i % values.len();
        let t = Instant::now();
        spool
            .append(Lane::Changes, &[(&keys[k], &values[k])])
            .unwrap();
        lat.push(t.elapsed());
    }
    let wall = started.elapsed();
    report(
        "Spool::append, 1 event per call (lock, size check, write, fdatasync)",
        calls,
        wall,
        &Latencies::new(lat),
    );
    let stored = spool
        .read_batch(Lane::Changes, usize::MAX, u64::MAX)
        .unwrap();
    assert_eq!(
        stored.records.len(),
        calls + 10,
        "every appended event is in the spool"
    );
    assert_eq!(stored.corrupt_bytes, 0);
}

fn batched_appends(
    spool: &Spool,
    keys: &[Vec<u8>],
    values: &[Vec<u8>],
    calls: usize,
    per_call: usize,
) {
    let batches: Vec<Vec<(&[u8], &[u8])>> = (0..4)
        .map(|b| {
            (0..per_call)
                .map(|i| (i + b) % values.len())
                .map(|k| (keys[k].as_slice(), values[k].as_slice()))
                .collect()
        })
        .collect();
    spool.append(Lane::Changes, &batches[0]).unwrap();
    let mut lat = Vec::with_capacity(calls);
    let started = Instant::now();
    for c in 0..calls {
        let t = Instant::now();
        spool
            .append(Lane::Changes, &batches[c % batches.len()])
            .unwrap();
        lat.push(t.elapsed());
    }
    let wall = started.elapsed();
    report(
        &format!("Spool::append, {per_call} events per call (one dnf transaction)"),
        calls * per_call,
        wall,
        &Latencies::new(lat),
    );
    let stored = spool
        .read_batch(Lane::Changes, usize::MAX, u64::MAX)
        .unwrap();
    assert_eq!(stored.records.len(), (calls + 1) * per_call);
}

/// `lines` NDJSON change lines of one dnf transaction, with every host field
/// given so the emitter reads nothing under /etc.
fn transaction_input(call: usize, lines: usize) -> Vec<u8> {
    let mut out = Vec::new();
    let rpm_tid = 1_764_000_000 + call as i64;
    for k in 0..lines {
        let name = format!("python3-pkg{k:02}");
        let line = serde_json::json!({
            "kind": "change", "source": "dnf", "action": "upgrade", "event_time": rpm_tid,
            "package": {"name": name, "epoch": 0, "version": "3.9.18", "release": "3.el9_4.1", "arch": "x86_64",
                        "repo": "rhel-9-for-x86_64-appstream-rpms", "vendor": "Red Hat, Inc.", "buildtime": 1_716_300_000,
                        "install_time": rpm_tid, "size": 6_712_345,
                        "digest": format!("sha256:{:064x}", k * 7919 + call)},
            "replaced": {"name": name, "epoch": 0, "version": "3.9.18", "release": "3.el9_4", "arch": "x86_64",
                         "install_time": 1_750_000_000, "size": 6_700_001},
            "transaction": {"rpm_tid": rpm_tid, "history_id": 40 + call, "command_line": "dnf -y upgrade --security",
                            "login_user": "alice", "start_time": rpm_tid - 2},
            "host": {"machine_id": "4c4c4544004d3510804bb4c04f463432", "hostname": "web-00042.dc1",
                     "os_id": "rhel", "os_version": "9.4", "arch": "x86_64"}
        });
        serde_json::to_writer(&mut out, &line).unwrap();
        out.push(b'\n');
    }
    out
}

fn emit_binary() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("PKGSTREAM_EMIT_BIN") {
        return Some(PathBuf::from(p));
    }
    // CARGO_TARGET_TMPDIR is <target>/tmp.
    let target = Path::new(env!("CARGO_TARGET_TMPDIR")).parent()?;
    let bin = target.join("release").join("pkgstream-emit");
    bin.exists().then_some(bin)
}

fn record_process(dir: &Path, calls: usize, lines: usize) {
    let title =
        format!("pkgstream-emit record, {lines} change lines on stdin per call (spawn to exit)");
    let Some(bin) = emit_binary() else {
        println!("{title}\n  SKIPPED: target/release/pkgstream-emit not found; run `cargo build --release -p pkgstream-producer` first (or set PKGSTREAM_EMIT_BIN)");
        return;
    };
    let spool_dir = dir.join("process-spool");
    // An empty config file keeps /etc/pkgstream/emit.toml out of the run; the
    // spool directory comes from the environment, as a hook would set it.
    let config = dir.join("emit.toml");
    std::fs::write(&config, "").unwrap();
    println!("{title}");
    println!("  binary {}", bin.display());
    let inputs: Vec<Vec<u8>> = (0..calls + 3)
        .map(|c| transaction_input(c, lines))
        .collect();
    let mut wall = Vec::with_capacity(calls);
    let mut cpu = Vec::with_capacity(calls);
    for (c, input) in inputs.iter().enumerate() {
        let (w, cpu_time) = run_record(&bin, &config, &spool_dir, input);
        if c >= 3 {
            // The first calls create the spool and warm the page cache.
            wall.push(w);
            cpu.push(cpu_time);
        }
    }
    let total: Duration = wall.iter().sum();
    let wall = Latencies::new(wall);
    let cpu = Latencies::new(cpu);
    println!(
        "  calls {:>6}   {:.0} calls/s   {:.0} events/s (one process at a time)",
        wall.len(),
        wall.len() as f64 / total.as_secs_f64(),
        (wall.len() * lines) as f64 / total.as_secs_f64()
    );
    println!(
        "  wall per call: p50 {}   p99 {}   max {}",
        ms(wall.percentile(50.0)),
        ms(wall.percentile(99.0)),
        ms(wall.max())
    );
    println!(
        "  cpu (user+sys) per call: p50 {}   p99 {}",
        ms(cpu.percentile(50.0)),
        ms(cpu.percentile(99.0))
    );
    let rss_runs = calls.min(20);
    match peak_rss_kib(&bin, &config, &spool_dir, &inputs[..rss_runs], dir) {
        Some(rss) => println!("  peak RSS (GNU time %M over {rss_runs} more calls): median {} KiB   max {} KiB", rss[rss.len() / 2], rss[rss.len() - 1]),
        None => println!("  peak RSS: not measured (/usr/bin/time not installed; wait4's ru_maxrss would include this bench's own RSS, see peak_rss_kib)"),
    }
    let recorded = inputs.len()
        + if Path::new(TIME).exists() {
            rss_runs
        } else {
            0
        };

    let spool = Spool::open(
        &spool_dir,
        SpoolLimits {
            max_bytes: 256 << 20,
            segment_bytes: 8 << 20,
            lock_timeout: Duration::from_secs(2),
        },
    )
    .unwrap();
    let stored = spool
        .read_batch(Lane::Changes, usize::MAX, u64::MAX)
        .unwrap();
    assert_eq!(
        stored.records.len(),
        recorded * lines,
        "every recorded change is in the spool"
    );
}

/// Spawns one `record`, feeds it `input`, reaps it with `wait4`: wall time
/// from spawn to exit and user+sys CPU time.
#[allow(clippy::zombie_processes)] // reaped by wait4, which std cannot see
fn run_record(bin: &Path, config: &Path, spool_dir: &Path, input: &[u8]) -> (Duration, Duration) {
    let started = Instant::now();
    let mut child = record_command(Command::new(bin), config, spool_dir)
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(input).unwrap();
    drop(stdin);
    let pid = child.id() as libc::pid_t;
    let mut status: libc::c_int = 0;
    // SAFETY: `rusage` is plain old data, for which all-zero is valid.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `pid` is our unreaped child (std never waited for it); the
    // pointers are to live locals.
    let reaped = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    let wall = started.elapsed();
    assert_eq!(reaped, pid, "wait4: {}", std::io::Error::last_os_error());
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "pkgstream-emit record failed (status {status:#x}); run it by hand to see why"
    );
    let tv = |t: libc::timeval| {
        Duration::from_secs(t.tv_sec as u64) + Duration::from_micros(t.tv_usec as u64)
    };
    (wall, tv(usage.ru_utime) + tv(usage.ru_stime))
}

fn record_command(mut cmd: Command, config: &Path, spool_dir: &Path) -> Command {
    cmd.arg("--config")
        .arg(config)
        .arg("record")
        .env("PKGSTREAM_EMIT__SPOOL__DIR", spool_dir)
        .env_remove("PKGSTREAM_EMIT_CONFIG")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    cmd
}

const TIME: &str = "/usr/bin/time";

/// Peak RSS of `record` per input, in KiB, sorted; `None` without GNU time.
///
/// Not from our own `wait4`: Linux carries the pre-exec memory of a child
/// into its `ru_maxrss`, and a child spawned from this bench starts as a
/// copy of (or, with posix_spawn, shares) this process's ~20 MiB. GNU time
/// forks from a ~1 MiB process, so its `%M` is the emitter's own peak to
/// within that.
fn peak_rss_kib(
    bin: &Path,
    config: &Path,
    spool_dir: &Path,
    inputs: &[Vec<u8>],
    scratch: &Path,
) -> Option<Vec<u64>> {
    if !Path::new(TIME).exists() {
        return None;
    }
    let out = scratch.join("time.out");
    let mut rss: Vec<u64> = inputs
        .iter()
        .map(|input| {
            let mut time = Command::new(TIME);
            time.args(["-f", "%M", "-o"]).arg(&out).arg(bin);
            let mut child = record_command(time, config, spool_dir).spawn().unwrap();
            child.stdin.take().unwrap().write_all(input).unwrap();
            assert!(
                child.wait().unwrap().success(),
                "pkgstream-emit record under {TIME} failed"
            );
            std::fs::read_to_string(&out)
                .unwrap()
                .trim()
                .parse()
                .unwrap()
        })
        .collect();
    rss.sort_unstable();
    Some(rss)
}

/// The mount holding `path` (type and device), from /proc/self/mountinfo.
fn filesystem_of(path: &Path) -> String {
    let path = path.canonicalize().unwrap_or_else(|_| path.to_path_buf());
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return "filesystem unknown".into();
    };
    info.lines()
        .filter_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let mount_point = left.split(' ').nth(4)?;
            let mut r = right.split(' ');
            let (fs_type, source) = (r.next()?, r.next()?);
            path.starts_with(mount_point).then(|| {
                (
                    mount_point.len(),
                    format!("{fs_type} on {source}, mounted at {mount_point}"),
                )
            })
        })
        .max_by_key(|(len, _)| *len)
        .map_or_else(
            || "filesystem unknown".into(),
            |(_, desc)| {
                if desc.starts_with("tmpfs") {
                    format!("{desc} -- WARNING: tmpfs, fsync is free here")
                } else {
                    desc
                }
            },
        )
}
