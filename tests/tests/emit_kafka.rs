//! Acceptance tests of the host side against a real Kafka: what
//! `pkgstream-emit record` takes in arrives in Kafka byte for byte, exactly
//! once; an unreachable or stopped Kafka loses nothing; the spool survives
//! `kill -9` mid-flush and a torn tail.
//!
//! Needs the broker of `scripts/services.sh start kafka` (or
//! `PKGSTREAM_TEST_KAFKA`); the Kafka-stopped test starts a private broker
//! of its own on other ports with the same script.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use pkgstream_tests::*;

const QUIET: Duration = Duration::from_secs(3);
const LIMIT: Duration = Duration::from_secs(120);

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn assert_ok(what: &str, out: &std::process::Output) {
    assert!(
        out.status.success(),
        "{what} failed with {:?}:\n{}",
        out.status.code(),
        stderr(out)
    );
}

#[test]
fn recorded_events_arrive_byte_identical_exactly_once_and_in_host_order() {
    let brokers = kafka_brokers();
    let env = EmitEnv::new(&brokers, "roundtrip");
    create_topics(&brokers, &[&env.changes_topic, &env.inventory_topic]);

    let lines: Vec<String> = (0..1000).map(|i| change_line(i, i % 25)).collect();
    for chunk in lines.chunks(400) {
        assert_ok("record", &env.record(chunk));
    }
    // An inventory snapshot that takes its host identity from the host files.
    let inventory = r#"{"kind":"inventory","taken_at":"2026-11-24T08:00:00Z","packages":[{"name":"bash","version":"5.1.8","release":"9.el9","arch":"x86_64","size":7000000},{"name":"kernel-core","version":"5.14.0","release":"427.el9","arch":"x86_64","install_time":1764000000},{"name":"tzdata","version":"2024a","release":"1.el9","arch":"noarch"}]}"#;
    assert_ok("record inventory", &env.record(&[inventory.to_string()]));
    assert_ok("flush", &env.flush(&[]));

    let got = consume_all(&brokers, &env.changes_topic, lines.len(), QUIET, LIMIT);
    assert_eq!(got.len(), 1000, "exact count in Kafka");
    let mut expected: Vec<(Vec<u8>, Vec<u8>)> = lines.iter().map(|l| expected_bytes(l)).collect();
    let mut actual: Vec<(Vec<u8>, Vec<u8>)> = got
        .iter()
        .map(|m| (m.key.clone(), m.value.clone()))
        .collect();
    expected.sort();
    actual.sort();
    assert!(
        expected == actual,
        "Kafka holds different bytes than were recorded"
    );

    // Key = host: one host's events stay in one partition, in record order.
    for host in 0..25usize {
        let key = format!("{host:032x}").into_bytes();
        let mine: Vec<&Consumed> = got.iter().filter(|m| m.key == key).collect();
        assert_eq!(mine.len(), 40);
        assert!(
            mine.iter().all(|m| m.partition == mine[0].partition),
            "host {host} spread over partitions"
        );
        let times: Vec<i64> = mine
            .iter()
            .map(|m| {
                pkgstream_schemas::decode_change(&m.value)
                    .map(|c| c.event_time)
                    .unwrap_or(0)
            })
            .collect();
        assert!(
            times.windows(2).all(|w| w[0] < w[1]),
            "host {host} out of order"
        );
    }

    let snapshots = consume_all(&brokers, &env.inventory_topic, 1, QUIET, LIMIT);
    assert_eq!(snapshots.len(), 1);
    let s = pkgstream_schemas::decode_snapshot(&snapshots[0].value).expect("snapshot decodes");
    assert_eq!(snapshots[0].key, b"0123456789abcdef0123456789abcdef");
    assert_eq!(
        (
            &*s.host.machine_id,
            &*s.host.hostname,
            &*s.host.os_id,
            &*s.host.os_version
        ),
        (
            "0123456789abcdef0123456789abcdef",
            "test-host",
            "rocky",
            "9.4"
        )
    );
    assert_eq!(s.taken_at, 1_795_507_200_000_000);
    let names: Vec<&str> = s.packages.iter().map(|p| &*p.name).collect();
    assert_eq!(names, ["bash", "kernel-core", "tzdata"]);
    assert_eq!(s.packages[0].size, Some(7_000_000));
    assert_eq!(s.packages[1].install_time, Some(1_764_000_000_000_000));

    // The spool is empty and a second flush sends nothing more.
    let status = env.command(&["status"]).output().expect("status");
    assert_eq!(
        String::from_utf8_lossy(&status.stdout)
            .matches(" 0 bytes")
            .count(),
        2,
        "{}",
        String::from_utf8_lossy(&status.stdout)
    );
    assert_ok("second flush", &env.flush(&[]));
    assert_eq!(
        consume_all(&brokers, &env.changes_topic, 1000, QUIET, LIMIT).len(),
        1000
    );
}

#[test]
fn bad_lines_are_rejected_by_line_and_good_ones_still_recorded() {
    let brokers = kafka_brokers();
    let env = EmitEnv::new(&brokers, "badinput");
    create_topics(&brokers, &[&env.changes_topic, &env.inventory_topic]);
    let good = change_line(1, 1);
    let lines = vec![
        good.clone(),
        "{not json".to_string(),
        good.replace("\"upgrade\"", "\"upgrayed\""),
        {
            let mut v: serde_json::Value = serde_json::from_str(&good).expect("json");
            v["package"]["name"] = "".into();
            v.to_string()
        },
        change_line(2, 1),
    ];
    let out = env.record(&lines);
    assert_eq!(out.status.code(), Some(65), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains("stdin line 2:"), "{err}");
    assert!(
        err.contains("stdin line 3:") && err.contains("upgrayed"),
        "{err}"
    );
    assert!(
        err.contains("stdin line 4: invalid PackageChange: package.name is empty"),
        "{err}"
    );
    assert!(
        !err.contains("line 1:") && !err.contains("line 5:"),
        "{err}"
    );
    assert_ok("flush", &env.flush(&[]));
    let got = consume_all(&brokers, &env.changes_topic, 2, QUIET, LIMIT);
    assert_eq!(got.len(), 2, "the two good lines and only them");
}

#[test]
fn kafka_unreachable_record_is_fast_flush_fails_clearly_and_keeps_everything() {
    let brokers = kafka_brokers();
    // Port 1 on loopback: nothing listens, connections are refused.
    let mut env = EmitEnv::new("127.0.0.1:1", "unreachable");
    create_topics(&brokers, &[&env.changes_topic, &env.inventory_topic]);
    let lines: Vec<String> = (0..200).map(|i| change_line(i, 3)).collect();
    let started = Instant::now();
    assert_ok("record", &env.record(&lines));
    let record_time = started.elapsed();
    assert!(
        record_time < Duration::from_secs(2),
        "record took {record_time:?} with Kafka down"
    );

    let started = Instant::now();
    let out = env.flush(&["--timeout", "4"]);
    let took = started.elapsed();
    assert_eq!(out.status.code(), Some(75), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("Kafka at 127.0.0.1:1 unreachable") && err.contains("stay spooled"),
        "{err}"
    );
    assert_eq!(
        err.lines().filter(|l| l.contains("error:")).count(),
        1,
        "one clear line:\n{err}"
    );
    assert!(
        took < Duration::from_secs(8),
        "flush overran its 4 s timeout: {took:?}"
    );

    // Same spool, real Kafka: the next flush ships all of it.
    env.vars
        .retain(|(k, _)| k != "PKGSTREAM_EMIT__KAFKA__BROKERS");
    env.vars
        .push(("PKGSTREAM_EMIT__KAFKA__BROKERS".into(), brokers.clone()));
    assert_ok("flush", &env.flush(&[]));
    let got = consume_all(&brokers, &env.changes_topic, 200, QUIET, LIMIT);
    assert_eq!(by_event_id(&got).len(), 200);
    assert_eq!(got.len(), 200);
}

/// Waits until the first batch was acknowledged (the cursor file exists).
fn wait_for_first_ack(spool: &Path) {
    let started = Instant::now();
    while !spool.join("changes/cursor").exists() {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "no batch acknowledged in 30 s"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
}

#[test]
fn kafka_stopped_during_flush_loses_nothing_and_resends_only_unacknowledged() {
    let kafka = PrivateKafka::started();
    let mut env = EmitEnv::new(&kafka.brokers(), "stopped");
    env.vars
        .push(("PKGSTREAM_EMIT__FLUSH__BATCH_EVENTS".into(), "200".into()));
    create_topics(
        &kafka.brokers(),
        &[&env.changes_topic, &env.inventory_topic],
    );
    let lines: Vec<String> = (0..30_000).map(|i| change_line(i, i % 100)).collect();
    for chunk in lines.chunks(5_000) {
        assert_ok("record", &env.record(chunk));
    }

    let flush = env
        .command(&["flush", "--timeout", "8"])
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn flush");
    wait_for_first_ack(&env.spool_dir());
    kafka.kill();
    let out = flush.wait_with_output().expect("wait flush");
    assert_eq!(
        out.status.code(),
        Some(75),
        "flush must fail while Kafka is down: {}",
        stderr(&out)
    );
    assert!(
        stderr(&out).contains("Kafka at 127.0.0.1:19092 unreachable"),
        "{}",
        stderr(&out)
    );

    // While Kafka is down, hooks still record at once.
    let more: Vec<String> = (30_000..30_100).map(|i| change_line(i, i % 100)).collect();
    let started = Instant::now();
    assert_ok("record while down", &env.record(&more));
    assert!(started.elapsed() < Duration::from_secs(2));
    assert_eq!(env.flush(&["--timeout", "3"]).status.code(), Some(75));

    kafka.start();
    assert_ok("flush after restart", &env.flush(&["--timeout", "60"]));

    let got = consume_all(&kafka.brokers(), &env.changes_topic, 30_100, QUIET, LIMIT);
    let ids = by_event_id(&got);
    let expected: std::collections::HashSet<[u8; 16]> = lines
        .iter()
        .chain(&more)
        .map(|l| {
            let (_, bytes) = expected_bytes(l);
            pkgstream_schemas::decode_change(&bytes)
                .map(|c| c.event_id.0)
                .expect("decode")
        })
        .collect();
    let present: std::collections::HashSet<[u8; 16]> = ids.keys().copied().collect();
    assert_eq!(
        present, expected,
        "every recorded event is in Kafka, nothing else"
    );
    let resent: usize = ids.values().map(|v| v.len() - 1).sum();
    println!("kafka killed mid-flush: {} events, {} messages, {resent} resent after a lost acknowledgement", expected.len(), got.len());
    assert!(
        ids.values()
            .all(|v| v.iter().all(|m| m.value == v[0].value)),
        "a resent event differs from its first copy"
    );
    assert!(
        resent <= 200,
        "{resent} resent: more than the one batch in flight when Kafka died"
    );
}

#[test]
fn spool_survives_repeated_kill_9_mid_flush_and_a_torn_tail() {
    let brokers = kafka_brokers();
    let mut env = EmitEnv::new(&brokers, "kill9");
    env.vars
        .push(("PKGSTREAM_EMIT__FLUSH__BATCH_EVENTS".into(), "200".into()));
    create_topics(&brokers, &[&env.changes_topic, &env.inventory_topic]);
    let lines: Vec<String> = (0..30_000).map(|i| change_line(i, i % 100)).collect();
    assert_ok("record", &env.record(&lines));

    // kill -9 five times, each time at a different point after the flush
    // made progress (a new batch acknowledged).
    let cursor = env.spool_dir().join("changes/cursor");
    for round in 0..5u64 {
        let before = std::fs::read_to_string(&cursor).unwrap_or_default();
        let mut flush = env
            .command(&["flush"])
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn flush");
        let started = Instant::now();
        while std::fs::read_to_string(&cursor).unwrap_or_default() == before {
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "flush made no progress in 30 s"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
        std::thread::sleep(Duration::from_millis(round * 7));
        flush.kill().expect("kill -9 flush");
        flush.wait().expect("reap");
    }

    // Power loss mid-write: the last frame of the newest segment is cut.
    let changes = env.spool_dir().join("changes");
    let mut segments: Vec<PathBuf> = std::fs::read_dir(&changes)
        .expect("ls")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .collect();
    segments.sort();
    let last = segments.last().expect("a segment remains");
    let len = std::fs::metadata(last).expect("stat").len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(last)
        .expect("open")
        .set_len(len - 40)
        .expect("truncate");

    // Later events land after the torn bytes and must not be blocked by them.
    let later: Vec<String> = (30_000..30_010).map(|i| change_line(i, i % 100)).collect();
    assert_ok("record after tear", &env.record(&later));
    let out = env.flush(&[]);
    assert_ok("flush after kill", &out);
    assert!(
        stderr(&out).contains("corrupt or torn spool frame skipped"),
        "{}",
        stderr(&out)
    );

    let got = consume_all(&brokers, &env.changes_topic, 30_009, QUIET, LIMIT);
    let ids = by_event_id(&got);
    let id_of = |l: &String| {
        pkgstream_schemas::decode_change(&expected_bytes(l).1)
            .map(|c| c.event_id.0)
            .expect("decode")
    };
    let torn = id_of(&lines[29_999]);
    assert!(
        !ids.contains_key(&torn),
        "the torn event cannot have been shipped"
    );
    for l in lines[..29_999].iter().chain(&later) {
        assert!(ids.contains_key(&id_of(l)), "lost: {l}");
    }
    assert_eq!(ids.len(), 30_009);
    let resent: usize = ids.values().map(|v| v.len() - 1).sum();
    println!(
        "emitter killed mid-flush: {} messages for 30009 events, {resent} resent",
        got.len()
    );
    assert!(
        resent <= 5 * 200,
        "{resent} resent: more than the batches in flight at the five kills"
    );
}
