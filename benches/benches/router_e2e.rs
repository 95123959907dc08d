//! End-to-end router throughput through the real broker on this machine:
//! N raw change events are produced to a fresh 3-partition topic (the
//! producer's own rate is printed: the broker's ceiling here), then the
//! release `pkgstream router` drains them into the enriched topic with
//! Kafka transactions. Prints events/s, router CPU seconds per million
//! events, and the router's peak RSS.
//!
//! Needs Kafka (`scripts/services.sh start kafka`) and
//! `cargo build --release -p pkgstream`; then
//! `cargo bench -p pkgstream-benches --bench router_e2e` (N=500,000;
//! `PKGSTREAM_BENCH_EVENTS` overrides). Without `--bench` it is a smoke run
//! of 2,000 events, skipped when Kafka or the release binary is missing.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use pkgstream_benches::{bench_events, proc_cpu_secs, proc_peak_rss_mib, release_pkgstream};
use pkgstream_schemas::{sample, Encoder};
use pkgstream_tests::router::{send, RouterEnv};

fn main() {
    let n = bench_events(500_000);
    let brokers = pkgstream_tests::kafka_brokers();
    if std::net::TcpStream::connect(&brokers).is_err() {
        println!("router_e2e: skipped, no Kafka at {brokers} (scripts/services.sh start kafka)");
        return;
    }
    let Some(bin) = release_pkgstream("router_e2e") else {
        return;
    };

    let mut env = RouterEnv::new(&brokers, "bench");
    // The test helper's short batches suit tests; the bench uses the
    // router's defaults unless PKGSTREAM_BENCH_ROUTER_* say otherwise.
    env.vars.retain(|(k, _)| k != "PKGSTREAM__ROUTER__BATCH_MS");
    for (k, v) in std::env::vars() {
        if let Some(key) = k.strip_prefix("PKGSTREAM_BENCH_ROUTER_") {
            env.vars.push((format!("PKGSTREAM__ROUTER__{key}"), v));
        }
    }
    let mut enc = Encoder::new();
    let records: Vec<(Vec<u8>, Vec<u8>)> = (0..n as u64)
        .map(|i| {
            let mut c = sample::change(i);
            c.host = sample::host(i % 10_000);
            c.event_id.0[..8].copy_from_slice(&i.to_le_bytes());
            let mut v = Vec::new();
            enc.encode_change(&c, &mut v).unwrap();
            (c.host.machine_id.as_bytes().to_vec(), v)
        })
        .collect();
    let bytes: usize = records.iter().map(|(_, v)| v.len()).sum();
    let producer = env.producer();
    let t = Instant::now();
    send(&producer, &env.changes_raw, &records);
    let produce = t.elapsed();
    println!("router_e2e: {n} events ({:.0} bytes avg) produced to the broker in {:.2} s: {:.0} events/s (the broker's and producer's ceiling here)", bytes as f64 / n as f64, produce.as_secs_f64(), n as f64 / produce.as_secs_f64());

    let started = Instant::now();
    let mut child = Command::new(&bin)
        .arg("router")
        .envs(env.vars.iter().map(|(k, v)| (k, v)))
        .env(
            "RUST_LOG",
            std::env::var("PKGSTREAM_BENCH_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn router");
    let pid = child.id();
    env.wait_ready(Duration::from_secs(60));
    let ready = started.elapsed();
    let cpu_at_ready = proc_cpu_secs(pid);
    let t = Instant::now();
    loop {
        let out = env.metric("pkgstream_router_events_out_total{kind=\"change\"}");
        if out as usize >= n {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(900),
            "router stalled at {out} of {n}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let drain = t.elapsed();
    let cpu = proc_cpu_secs(pid) - cpu_at_ready;
    let rss = proc_peak_rss_mib(pid);
    child.kill().ok();
    child.wait().ok();
    println!(
        "router_e2e: router drained {n} events in {:.2} s after ready ({:.1} s to ready): {:.0} events/s; router CPU {:.2} s = {:.2} CPU-s per million events ({:.0}% of one core); peak RSS {:.1} MiB",
        drain.as_secs_f64(),
        ready.as_secs_f64(),
        n as f64 / drain.as_secs_f64(),
        cpu,
        cpu / n as f64 * 1e6,
        cpu / drain.as_secs_f64() * 100.0,
        rss
    );
}
