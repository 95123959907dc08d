//! Helpers shared by pkgstream's benches and the allocation test; the
//! benches themselves are under `benches/benches/`, their figures in
//! `BENCHMARKS.md` at the repository root.
//!
//! - [`CountingAlloc`]: a global allocator that counts heap allocations per
//!   thread, to prove (not assume) that the hot path does not allocate;
//! - [`Latencies`]: percentiles of a set of timed calls.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::time::Duration;

thread_local! {
    // `const` and without a destructor: usable from inside the allocator,
    // even while the thread is being torn down.
    static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
    static ALLOCATED_BYTES: Cell<u64> = const { Cell::new(0) };
}

fn note(bytes: usize) {
    let _ = ALLOCATIONS.try_with(|c| c.set(c.get() + 1));
    let _ = ALLOCATED_BYTES.try_with(|c| c.set(c.get() + bytes as u64));
}

/// The system allocator, counting every `alloc`, `alloc_zeroed` and
/// `realloc` of the calling thread. Install it in a test or bench binary:
/// `#[global_allocator] static A: CountingAlloc = CountingAlloc;`
pub struct CountingAlloc;

// SAFETY: every method forwards to `System` with the caller's arguments;
// counting touches only a thread-local `Cell` and never allocates.
unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        // SAFETY: forwarded unchanged; the caller upholds `alloc`'s contract.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        // SAFETY: as above.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note(new_size);
        // SAFETY: as above; `ptr` was allocated by `System` through us.
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: as above.
        unsafe { System.dealloc(ptr, layout) }
    }
}

/// Heap allocations made by one thread during a call.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Allocs {
    /// Number of `alloc`/`alloc_zeroed`/`realloc` calls.
    pub count: u64,
    /// Bytes requested by them.
    pub bytes: u64,
}

/// Runs `f` and returns what it allocated on this thread. Meaningful only in
/// a binary whose `#[global_allocator]` is [`CountingAlloc`] (otherwise it
/// reports zero).
pub fn count_allocs<R>(f: impl FnOnce() -> R) -> (R, Allocs) {
    let before = (ALLOCATIONS.with(Cell::get), ALLOCATED_BYTES.with(Cell::get));
    let r = f();
    let after = (ALLOCATIONS.with(Cell::get), ALLOCATED_BYTES.with(Cell::get));
    (
        r,
        Allocs {
            count: after.0 - before.0,
            bytes: after.1 - before.1,
        },
    )
}

/// Durations of timed calls, sorted, for percentiles.
pub struct Latencies {
    sorted: Vec<Duration>,
}

impl Latencies {
    /// Sorts `samples` (at least one).
    pub fn new(mut samples: Vec<Duration>) -> Latencies {
        assert!(!samples.is_empty(), "no samples");
        samples.sort_unstable();
        Latencies { sorted: samples }
    }

    /// The nearest-rank `p`-th percentile, `p` in (0, 100].
    pub fn percentile(&self, p: f64) -> Duration {
        // The epsilon keeps 99.9% of 1000 at rank 999 despite 0.999 * 1000
        // rounding up in binary floating point.
        let rank = (p / 100.0 * self.sorted.len() as f64 - 1e-9).ceil() as usize;
        self.sorted[rank.clamp(1, self.sorted.len()) - 1]
    }

    /// The slowest call.
    pub fn max(&self) -> Duration {
        self.sorted[self.sorted.len() - 1]
    }

    /// Sum of all calls.
    pub fn total(&self) -> Duration {
        self.sorted.iter().sum()
    }

    /// Number of calls.
    pub fn len(&self) -> usize {
        self.sorted.len()
    }

    /// Always false (construction requires a sample).
    pub fn is_empty(&self) -> bool {
        self.sorted.is_empty()
    }
}

/// A duration as milliseconds with three decimals, for tables.
pub fn ms(d: Duration) -> String {
    format!("{:.3} ms", d.as_secs_f64() * 1e3)
}

/// User + system CPU seconds of process `pid` so far (from /proc).
pub fn proc_cpu_secs(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    let ticks: f64 = fields
        .get(11)
        .and_then(|u| u.parse::<f64>().ok())
        .unwrap_or(0.0)
        + fields
            .get(12)
            .and_then(|s| s.parse::<f64>().ok())
            .unwrap_or(0.0);
    ticks / 100.0
}

/// Peak resident set (VmHWM) of process `pid`, in MiB.
pub fn proc_peak_rss_mib(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.strip_prefix("VmHWM:").map(|v| {
                v.trim()
                    .trim_end_matches(" kB")
                    .parse::<f64>()
                    .unwrap_or(0.0)
                    / 1024.0
            })
        })
        .unwrap_or(0.0)
}

/// Events for an end-to-end bench: `PKGSTREAM_BENCH_EVENTS`, else `full`
/// when run with `--bench`, else a 2,000-event smoke run.
pub fn bench_events(full: usize) -> usize {
    let bench = std::env::args().any(|a| a == "--bench");
    std::env::var("PKGSTREAM_BENCH_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if bench { full } else { 2_000 })
}

/// The release `pkgstream` binary, or `None` after saying how to build it.
pub fn release_pkgstream(bench: &str) -> Option<std::path::PathBuf> {
    let bin =
        std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/release/pkgstream");
    if bin.exists() {
        return Some(bin);
    }
    println!(
        "{bench}: skipped, {} missing (cargo build --release -p pkgstream)",
        bin.display()
    );
    None
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let l = Latencies::new((1..=1000).rev().map(Duration::from_micros).collect());
        assert_eq!(l.percentile(50.0), Duration::from_micros(500));
        assert_eq!(l.percentile(99.0), Duration::from_micros(990));
        assert_eq!(l.percentile(99.9), Duration::from_micros(999));
        assert_eq!(l.percentile(100.0), l.max());
        assert_eq!(l.total(), Duration::from_micros(500_500));
        assert_eq!(
            Latencies::new(vec![Duration::from_secs(1)]).percentile(0.1),
            Duration::from_secs(1)
        );
    }
}
