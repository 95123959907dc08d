//! `pkgstream replay` against real Kafka: a Kafka-time range of the
//! enriched topic, exactly the changes produced in it, as NDJSON and as an
//! Avro container file that a generic Avro reader opens; filters; bad input.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;
use std::time::Duration;

use pkgstream_tests::sinks::{scenario, SinkEnv};
use pkgstream_tests::{binary, kafka_brokers};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::ClientConfig;

fn run(env: &SinkEnv, args: &[&str]) -> (bool, Vec<u8>, String) {
    let out = Command::new(binary("pkgstream"))
        .arg("replay")
        .args(args)
        .env_remove("PKGSTREAM_CONFIG")
        .env("PKGSTREAM__KAFKA__BROKERS", &env.brokers)
        .env("PKGSTREAM__TOPICS__CHANGES_ENRICHED", &env.enriched)
        .output()
        .unwrap();
    (
        out.status.success(),
        out.stdout,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn iso(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .unwrap()
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

#[test]
fn a_time_range_replays_exactly_as_reported() {
    let env = SinkEnv::new(&kafka_brokers(), "replay");
    let sc = scenario(&env.prefix, 10, 30, 20, 0);
    let records = sc.records();
    // Kafka timestamps one second apart, an hour ago.
    let base = chrono::Utc::now().timestamp_millis() - 3_600_000;
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", &env.brokers)
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
    assert!(
        err.contains("100 change(s) written of 100 message(s) read"),
        "{err}"
    );

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
    assert!(!ok && err.contains("ndjson or avro"), "{err}");
    println!("replay: 100 of 300 changes by Kafka time, NDJSON and Avro identical, filters exact");
}
