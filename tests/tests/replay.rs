//! `pkgstream replay` against real Kafka and the real engine: a Kafka-time
//! range of the enriched topic, exactly the changes produced in it, as
//! NDJSON, as an Avro container file that a generic Avro reader opens, and
//! as a history index equal, document for document, to the live sink's
//! index restricted to the range; replaying into the live index changes
//! nothing; filters; bad input.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;
use std::time::Duration;

use pkgstream_tests::sinks::{
    all_docs, count, indexed_state, rack_conflict, scenario, wait_count, SinkEnv,
};
use pkgstream_tests::{binary, kafka_brokers};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};

fn run(env: &SinkEnv, args: &[&str]) -> (bool, Vec<u8>, String) {
    let out = Command::new(binary("pkgstream"))
        .arg("replay")
        .args(args)
        .env_remove("PKGSTREAM_CONFIG")
        .envs(env.vars.iter().map(|(k, v)| (k, v)))
        .output()
        .unwrap();
    (
        out.status.success(),
        out.stdout,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The one-line JSON summary replay prints on stderr when it is not a terminal.
fn summary(err: &str) -> serde_json::Value {
    let line = err
        .lines()
        .rfind(|l| l.starts_with('{'))
        .unwrap_or_else(|| panic!("no summary in {err}"));
    serde_json::from_str(line).unwrap()
}

fn iso(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .unwrap()
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// Produces `records` with Kafka timestamps one second apart from `base`.
fn produce_at(env: &SinkEnv, records: &[(Vec<u8>, Vec<u8>)], base: i64) {
    let producer: BaseProducer = pkgstream_tests::client_config(&env.brokers)
        .create()
        .unwrap();
    for (i, (k, v)) in records.iter().enumerate() {
        producer
            .send(
                BaseRecord::to(&env.enriched)
                    .key(&k[..])
                    .payload(&v[..])
                    .timestamp(base + i as i64 * 1000),
            )
            .unwrap();
        producer.poll(Duration::ZERO);
    }
    producer.flush(Duration::from_secs(30)).unwrap();
}

#[test]
fn a_time_range_replays_exactly_as_reported() {
    let env = SinkEnv::new(&kafka_brokers(), "replay");
    let sc = scenario(&env.prefix, 10, 30, 20, 0);
    // An hour ago.
    let base = chrono::Utc::now().timestamp_millis() - 3_600_000;
    produce_at(&env, &sc.records(), base);
    let (from, to) = (iso(base + 100_000), iso(base + 200_000));
    let want: Vec<String> = sc.changes[100..200]
        .iter()
        .map(|c| c.event_id.to_hex())
        .collect();

    // NDJSON: exactly records 100..200, per partition in order.
    let (ok, out, err) = run(&env, &["--from", &from, "--to", &to]);
    assert!(ok, "{err}");
    let lines: Vec<serde_json::Value> = String::from_utf8(out)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let mut got: Vec<String> = lines
        .iter()
        .map(|l| l["event_id"].as_str().unwrap().to_owned())
        .collect();
    let mut sorted_want = want.clone();
    got.sort();
    sorted_want.sort();
    assert_eq!(got, sorted_want);
    let s = summary(&err);
    assert_eq!(
        (s["written"].as_u64(), s["read"].as_u64()),
        (Some(100), Some(100)),
        "{err}"
    );
    assert!(s["index"].is_null());

    // Avro container: a generic reader gets the same 100 events.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("audit.avro");
    let (ok, _, err) = run(
        &env,
        &[
            "--from",
            &from,
            "--to",
            &to,
            "--format",
            "avro",
            "--out",
            file.to_str().unwrap(),
        ],
    );
    assert!(ok, "{err}");
    let reader = apache_avro::Reader::new(std::fs::File::open(&file).unwrap()).unwrap();
    assert!(reader
        .writer_schema()
        .canonical_form()
        .contains("EnrichedChange"));
    let mut ids: Vec<String> = reader
        .map(|r| match r.unwrap() {
            apache_avro::types::Value::Record(fields) => match &fields[0] {
                (name, apache_avro::types::Value::Fixed(16, b)) if name == "event_id" => {
                    hex::encode(b)
                }
                other => panic!("first field: {other:?}"),
            },
            other => panic!("not a record: {other:?}"),
        })
        .collect();
    ids.sort();
    assert_eq!(ids, sorted_want);

    // Filters: one host, one action.
    let host = &sc.changes[150].host;
    let (ok, out, _) = run(
        &env,
        &["--from", &from, "--to", &to, "--host", &host.hostname],
    );
    assert!(ok);
    let n = String::from_utf8(out).unwrap().lines().count();
    assert_eq!(
        n,
        sc.changes[100..200]
            .iter()
            .filter(|c| c.host.machine_id == host.machine_id)
            .count()
    );
    let (ok, out, _) = run(&env, &["--from", &from, "--to", &to, "--action", "upgrade"]);
    assert!(ok);
    let n = String::from_utf8(out).unwrap().lines().count();
    assert_eq!(
        n,
        sc.changes[100..200]
            .iter()
            .filter(|c| c.action == pkgstream_schemas::Action::Upgrade)
            .count()
    );

    // Bad input.
    let (ok, _, err) = run(&env, &["--from", &to, "--to", &from]);
    assert!(!ok && err.contains("--from must be before --to"), "{err}");
    let (ok, _, err) = run(&env, &["--from", "2099-01-01T00:00:00Z"]);
    assert!(!ok && err.contains("future"), "{err}");
    let (ok, _, err) = run(&env, &["--from", "1h", "--topic", "no-such-topic-replay"]);
    assert!(
        !ok && err.contains("no-such-topic-replay does not exist"),
        "{err}"
    );
    let (ok, _, err) = run(&env, &["--from", "1h", "--format", "csv"]);
    assert!(!ok && err.contains("ndjson, avro or index"), "{err}");
    let (ok, _, err) = run(&env, &["--from", "1h", "--format", "index"]);
    assert!(
        !ok && err.contains("--format index needs --index PREFIX"),
        "{err}"
    );
    let (ok, _, err) = run(&env, &["--from", "1h", "--index", "audit"]);
    assert!(
        !ok && err.contains("--index goes with --format index"),
        "{err}"
    );
    println!("replay: 100 of 300 changes by Kafka time, NDJSON and Avro identical, filters exact");
}

#[test]
fn a_range_replayed_into_an_index_equals_the_live_index_restricted_to_it() {
    let env = SinkEnv::new(&kafka_brokers(), "replay-index");
    let sc = scenario(&env.prefix, 12, 40, 25, 0);
    let base = chrono::Utc::now().timestamp_millis() - 7_200_000;
    produce_at(&env, &sc.records(), base);
    let live = env.start("search", &[]);
    wait_count(
        &env.changes(),
        sc.changes.len() as u64,
        Duration::from_secs(120),
    );
    assert_eq!(live.stop().code(), Some(0));
    let live_docs = all_docs(&env.changes());
    let live_state = indexed_state(&env.packages());
    assert_eq!(live_docs.len(), sc.changes.len());

    // Records 150..330 by Kafka time, into a fresh audit prefix.
    let (from, to) = (iso(base + 150_000), iso(base + 330_000));
    let audit = format!("{}-audit", env.prefix);
    let (ok, _, err) = run(
        &env,
        &[
            "--from", &from, "--to", &to, "--format", "index", "--index", &audit,
        ],
    );
    assert!(ok, "{err}");
    assert_eq!(
        summary(&err)["index"],
        serde_json::json!({"new": 180, "already_present": 0, "refused": 0}),
        "{err}"
    );
    let audit_docs = all_docs(&format!("{audit}-changes-*"));
    let want: std::collections::BTreeMap<String, serde_json::Value> = sc.changes[150..330]
        .iter()
        .map(|c| {
            let id = c.event_id.to_hex();
            (id.clone(), live_docs[&id].clone())
        })
        .collect();
    assert_eq!(audit_docs.len(), 180);
    assert!(
        audit_docs == want,
        "the audit index differs from the live one restricted to the range"
    );
    // History only: no state or host index under the audit prefix.
    assert_eq!(count(&format!("{audit}-packages")), 0);
    assert_eq!(count(&format!("{audit}-hosts")), 0);
    // The same monthly indices as the live ones.
    let months = |pattern: &str| -> Vec<String> {
        let r = pkgstream_tests::sinks::engine(
            "GET",
            &format!("/_cat/indices/{pattern}?format=json&h=index"),
            None,
        );
        let mut v: Vec<String> = r
            .as_array()
            .unwrap()
            .iter()
            .map(|i| {
                let name = i["index"].as_str().unwrap();
                name[name.len() - 7..].to_owned()
            })
            .collect();
        v.sort();
        v
    };
    let live_months: std::collections::BTreeSet<String> = live_docs
        .values()
        .map(|d| d["@timestamp"].as_str().unwrap()[..7].replace('-', "."))
        .collect();
    let audit_months: std::collections::BTreeSet<String> = want
        .values()
        .map(|d| d["@timestamp"].as_str().unwrap()[..7].replace('-', "."))
        .collect();
    assert!(audit_months.is_subset(&live_months));
    assert_eq!(
        months(&format!("{audit}-changes-*")),
        audit_months.into_iter().collect::<Vec<_>>()
    );

    // The whole topic into the live prefix: every id is there, nothing changes.
    let (ok, _, err) = run(
        &env,
        &[
            "--from",
            &iso(base - 1_000),
            "--format",
            "index",
            "--index",
            &env.prefix,
        ],
    );
    assert!(ok, "{err}");
    let n = sc.changes.len();
    assert_eq!(
        summary(&err)["index"],
        serde_json::json!({"new": 0, "already_present": n, "refused": 0}),
        "{err}"
    );
    assert!(
        all_docs(&env.changes()) == live_docs,
        "replaying into the live index changed it"
    );
    assert_eq!(indexed_state(&env.packages()), live_state);

    // An engine that does not answer: one line naming it, exit non-zero.
    let out = Command::new(binary("pkgstream"))
        .args([
            "replay", "--from", "3h", "--format", "index", "--index", &audit,
        ])
        .env_remove("PKGSTREAM_CONFIG")
        .envs(env.vars.iter().map(|(k, v)| (k, v)))
        .env("PKGSTREAM__SEARCH_SINK__URL", "http://127.0.0.1:1")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("search engine at http://127.0.0.1:1"), "{err}");
    println!("replay into an index: 180 of {n} changes equal the live documents; into the live prefix: {n} already present, nothing changed");
}

#[test]
fn an_event_the_engine_refuses_is_listed_and_the_replay_fails() {
    let env = SinkEnv::new(&kafka_brokers(), "replay-refused");
    let mut sc = scenario(&env.prefix, 5, 20, 10, 0);
    let bad = rack_conflict(&mut sc, 10);
    let mut records = sc.records();
    records.push(bad);
    let base = chrono::Utc::now().timestamp_millis() - 3_600_000;
    produce_at(&env, &records, base);
    let audit = format!("{}-audit", env.prefix);
    let (ok, _, err) = run(
        &env,
        &[
            "--from",
            &iso(base - 1_000),
            "--format",
            "index",
            "--index",
            &audit,
        ],
    );
    assert!(!ok, "a refused change fails the replay: {err}");
    let n = sc.changes.len();
    assert_eq!(
        summary(&err)["index"],
        serde_json::json!({"new": n, "already_present": 0, "refused": 1}),
        "{err}"
    );
    let refused: Vec<&str> = err.lines().filter(|l| l.contains("refused: ")).collect();
    assert_eq!(refused.len(), 1, "{err}");
    assert!(
        refused[0].contains(&env.enriched)
            && refused[0].contains("index_rejected")
            && refused[0].contains("rack"),
        "{err}"
    );
    assert!(
        err.contains("1 change(s) of the range are not in the index"),
        "{err}"
    );
    assert_eq!(count(&format!("{audit}-changes-*")), n as u64);
}

#[test]
fn sigterm_stops_a_replay_with_what_was_read_and_a_non_zero_exit() {
    use std::io::{BufRead, BufReader};
    let env = SinkEnv::new(&kafka_brokers(), "replay-sigterm");
    let sc = scenario(&env.prefix, 20, 150, 20, 0);
    let n = sc.changes.len();
    let base = chrono::Utc::now().timestamp_millis() - 3_600_000;
    produce_at(&env, &sc.records(), base);
    // Nobody reads stdout at first: the pipe fills and replay waits on it,
    // far before the end of the range (3,000 lines of ~1 KiB).
    let mut child = Command::new(binary("pkgstream"))
        .args(["replay", "--from", &iso(base - 1_000)])
        .env_remove("PKGSTREAM_CONFIG")
        .envs(env.vars.iter().map(|(k, v)| (k, v)))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut first = String::new();
    out.read_line(&mut first).unwrap();
    assert!(first.starts_with('{'), "{first}");
    std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let rest: Vec<String> = out.lines().map(|l| l.unwrap()).collect();
    let status = child.wait().unwrap();
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    assert!(!status.success(), "interrupted is a failure: {err}");
    assert!(err.contains("interrupted: "), "{err}");
    let lines = 1 + rest.len();
    assert!(lines < n, "stopped early: {lines} of {n} lines");
    assert!(
        err.contains(&format!("{lines} change(s) written")),
        "the message says how far: {lines} lines, {err}"
    );
    for l in &rest {
        serde_json::from_str::<serde_json::Value>(l).unwrap();
    }
}
