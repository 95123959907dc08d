//! End-to-end search sink throughput into the real engine, side by side in
//! one run on the same enriched topic:
//! 1. the engine's ceiling: the bulk bodies the sink would send (history
//!    `create` + package-state upsert per event, one host update per host
//!    and batch), pre-built, posted by as many threads as the sink has
//!    lanes, as fast as the engine takes them;
//! 2. the release `pkgstream sink search` consuming the topic;
//! 3. the Python baseline (`benches/python/baseline_sink.py`, opensearch-py
//!    `parallel_bulk`), which writes the history index only.
//!
//! Prints events/s, CPU seconds per million events of the sink process and
//! of the engine, and peak RSS.
//!
//! Needs Kafka and OpenSearch (`scripts/services.sh start kafka opensearch`),
//! `cargo build --release -p pkgstream`, and for the baseline the venv of
//! `benches/python/README.md`; then
//! `cargo bench -p pkgstream-benches --bench sink_e2e` (N=200,000;
//! `PKGSTREAM_BENCH_EVENTS` overrides). Without `--bench`: a 2,000-event
//! smoke run, skipped when a service or the release binary is missing.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use pkgstream_benches::{bench_events, proc_cpu_secs, proc_peak_rss_mib, release_pkgstream};
use pkgstream_sinks::config::SearchSinkConfig;
use pkgstream_sinks::search::client::EngineClient;
use pkgstream_sinks::search::documents::{change_items, host_update, Indices};
use pkgstream_sinks::search::setup::setup;
use pkgstream_tests::sinks::{count, engine_url, scenario, SinkEnv};

const LANES: usize = 4;
const BATCH: usize = 5000;

fn engine_pid() -> Option<u32> {
    let home = std::env::var("PKGSTREAM_HOME").unwrap_or_else(|_| {
        format!(
            "{}/.cache/pkgstream",
            std::env::var("HOME").unwrap_or_default()
        )
    });
    let run = std::env::var("PKGSTREAM_RUN_DIR").unwrap_or_else(|_| format!("{home}/run"));
    std::fs::read_to_string(format!("{run}/opensearch/opensearch.pid"))
        .ok()?
        .trim()
        .parse()
        .ok()
}

struct Run {
    name: &'static str,
    events_per_s: f64,
    cpu_s_per_m: Option<f64>,
    engine_cpu_s_per_m: f64,
    rss_mib: Option<f64>,
    note: String,
}

fn main() {
    let n = bench_events(200_000);
    let brokers = pkgstream_tests::kafka_brokers();
    if std::net::TcpStream::connect(&brokers).is_err() || ureq::get(&engine_url()).call().is_err() {
        println!("sink_e2e: skipped, Kafka at {brokers} or the engine at {} unreachable (scripts/services.sh start kafka opensearch)", engine_url());
        return;
    }
    let Some(bin) = release_pkgstream("sink_e2e") else {
        return;
    };
    let env = SinkEnv::new(&brokers, "bench-sink");
    let sc = scenario(&env.prefix, (n / 100).max(1) as u64, 100.min(n), 60, 0);
    let records = sc.records();
    let n = records.len();
    let bytes: usize = records.iter().map(|(_, v)| v.len()).sum();
    let t = Instant::now();
    env.produce(&records);
    println!(
        "sink_e2e: {n} enriched changes ({:.0} bytes avg, {} hosts) produced in {:.1} s",
        bytes as f64 / n as f64,
        n / 100,
        t.elapsed().as_secs_f64()
    );
    let epid = engine_pid().unwrap_or(0);
    let mut runs = Vec::new();

    // 1. The engine's ceiling for the same bulk bodies.
    let cfg = SearchSinkConfig {
        url: engine_url(),
        index_prefix: format!("{}-ceiling", env.prefix),
        ..Default::default()
    };
    let client = EngineClient::new(&cfg).unwrap();
    let idx = Indices::new(&cfg.index_prefix);
    setup(&client, &idx, &cfg).map_err(|_| "setup").unwrap();
    let mut bodies = Vec::new();
    for chunk in sc.changes.chunks(BATCH) {
        let mut body = Vec::new();
        let mut hosts: HashMap<&str, usize> = HashMap::new();
        for (i, c) in chunk.iter().enumerate() {
            change_items(&mut body, &idx, c);
            hosts.insert(&c.host.machine_id, i);
        }
        for &i in hosts.values() {
            let c = &chunk[i];
            host_update(&mut body, &idx, &c.host, &c.enrichment, c.event_time, None);
        }
        bodies.push(body);
    }
    let queue = Arc::new(Mutex::new(bodies));
    let engine_cpu0 = proc_cpu_secs(epid);
    let t = Instant::now();
    let threads: Vec<_> = (0..LANES)
        .map(|_| {
            let (q, c) = (queue.clone(), client.clone());
            std::thread::spawn(move || loop {
                let Some(body) = q.lock().unwrap().pop() else {
                    return;
                };
                let r = c.bulk(&body).map_err(|_| "bulk failed").unwrap();
                assert!(!r.errors, "ceiling bulk had item errors");
            })
        })
        .collect();
    for th in threads {
        th.join().unwrap();
    }
    let secs = t.elapsed().as_secs_f64();
    assert_eq!(count(&format!("{}-changes-*", cfg.index_prefix)), n as u64);
    runs.push(Run {
        name: "engine ceiling (pre-built bodies)",
        events_per_s: n as f64 / secs,
        cpu_s_per_m: None,
        engine_cpu_s_per_m: (proc_cpu_secs(epid) - engine_cpu0) / n as f64 * 1e6,
        rss_mib: None,
        note: format!("{LANES} threads, {BATCH} events per bulk"),
    });

    // 2. The sink.
    let mut child = Command::new(&bin)
        .args(["sink", "search"])
        .envs(env.vars.iter().map(|(k, v)| (k, v)))
        .env(
            "PKGSTREAM__SEARCH_SINK__INDEX_PREFIX",
            format!("{}-sink", env.prefix),
        )
        .env("PKGSTREAM__SEARCH_SINK__BATCH_MS", "500")
        .env("PKGSTREAM__SEARCH_SINK__METRICS_LISTEN", "127.0.0.1:19110")
        .env(
            "RUST_LOG",
            std::env::var("PKGSTREAM_BENCH_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn sink");
    let pid = child.id();
    let metric = |series: &str| pkgstream_tests::scrape_metric(19110, series);
    let ready = Instant::now();
    while ureq::get("http://127.0.0.1:19110/readyz").call().is_err() {
        assert!(ready.elapsed() < Duration::from_secs(60), "sink not ready");
        std::thread::sleep(Duration::from_millis(20));
    }
    let (cpu0, engine_cpu0) = (proc_cpu_secs(pid), proc_cpu_secs(epid));
    let t = Instant::now();
    while metric("pkgstream_search_sink_events_total{outcome=\"indexed\"}") < n as f64 {
        assert!(t.elapsed() < Duration::from_secs(1800), "sink stalled");
        std::thread::sleep(Duration::from_millis(20));
    }
    let secs = t.elapsed().as_secs_f64();
    let cpu = proc_cpu_secs(pid) - cpu0;
    runs.push(Run {
        name: "pkgstream sink search",
        events_per_s: n as f64 / secs,
        cpu_s_per_m: Some(cpu / n as f64 * 1e6),
        engine_cpu_s_per_m: (proc_cpu_secs(epid) - engine_cpu0) / n as f64 * 1e6,
        rss_mib: Some(proc_peak_rss_mib(pid)),
        note: format!(
            "{LANES} lanes; history + state + hosts ({:.0}% of one core)",
            cpu / secs * 100.0
        ),
    });
    child.kill().ok();
    child.wait().ok();
    assert_eq!(count(&format!("{}-sink-changes-*", env.prefix)), n as u64);

    // 3. The Python baseline.
    let home = std::env::var("HOME").unwrap_or_default();
    let python = PathBuf::from(format!("{home}/.cache/pkgstream/bench-venv/bin/python"));
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("python/baseline_sink.py");
    if python.exists() {
        let engine_cpu0 = proc_cpu_secs(epid);
        let out = Command::new(&python)
            .arg(&script)
            .args([
                "--brokers",
                &brokers,
                "--topic",
                &env.enriched,
                "--url",
                &engine_url(),
            ])
            .args([
                "--index-prefix",
                &format!("{}-python", env.prefix),
                "--count",
                &n.to_string(),
            ])
            .args([
                "--group",
                &format!("{}-python", env.prefix),
                "--threads",
                "2",
            ])
            .stderr(Stdio::inherit())
            .output()
            .expect("run the Python baseline");
        let engine_cpu = proc_cpu_secs(epid) - engine_cpu0;
        let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|_| {
            panic!("baseline output: {}", String::from_utf8_lossy(&out.stdout))
        });
        runs.push(Run {
            name: "Python opensearch-py parallel_bulk",
            events_per_s: r["events_per_s"].as_f64().unwrap_or(0.0),
            cpu_s_per_m: r["cpu_seconds"].as_f64().map(|c| c / n as f64 * 1e6),
            engine_cpu_s_per_m: engine_cpu / n as f64 * 1e6,
            rss_mib: r["peak_rss_kib"].as_f64().map(|k| k / 1024.0),
            note: "2 threads; history index only".into(),
        });
    } else {
        println!(
            "sink_e2e: Python baseline skipped ({} missing: see benches/python/README.md)",
            python.display()
        );
    }

    println!("sink_e2e: {n} events, side by side:");
    println!("| run | events/s | vs ceiling | client CPU-s per 1M events | engine CPU-s per 1M events | client peak RSS | note |");
    println!("| --- | ---: | ---: | ---: | ---: | ---: | --- |");
    let ceiling = runs[0].events_per_s;
    for r in &runs {
        println!(
            "| {} | {:.0} | {:.0}% | {} | {:.0} | {} | {} |",
            r.name,
            r.events_per_s,
            r.events_per_s / ceiling * 100.0,
            r.cpu_s_per_m.map_or("—".into(), |c| format!("{c:.1}")),
            r.engine_cpu_s_per_m,
            r.rss_mib.map_or("—".into(), |m| format!("{m:.0} MiB")),
            r.note
        );
    }
}
