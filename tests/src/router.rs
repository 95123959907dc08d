//! Helpers for the router's end-to-end tests: per-test topics, a router
//! process that can be killed and restarted, producing raw events and
//! reading the enriched topic and the DLQ back.

use std::collections::HashMap;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Headers;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{Message, Offset, TopicPartitionList};

use std::borrow::Cow;

use pkgstream_schemas::{
    decode_enriched_change, sample, EnrichedChange, Kind, PackageChange, Registry,
};

use crate::{binary, create_topics, unique};

/// Change `i` of host `host`: package `pkg-<i>`, with its own event id.
pub fn numbered_change(i: u64, host: u64) -> PackageChange<'static> {
    let mut c = sample::change(i);
    c.host = sample::host(host);
    c.package.name = Cow::Owned(format!("pkg-{i}"));
    c.event_id = pkgstream_schemas::change_event_id(
        &c.host.machine_id,
        c.action,
        &c.package.name,
        c.package.epoch,
        &c.package.version,
        &c.package.release,
        &c.package.arch,
        c.transaction.rpm_tid,
    );
    c
}

/// The enriched changes among `msgs` (snapshots and others left out).
pub fn enriched_changes(msgs: &[WithHeaders]) -> Vec<EnrichedChange<'_>> {
    msgs.iter()
        .filter(|m| {
            Registry::get()
                .writer_of(&m.value)
                .is_ok_and(|(v, _)| v.kind == Kind::EnrichedChange)
        })
        .map(|m| decode_enriched_change(&m.value).expect("enriched change decodes"))
        .collect()
}

/// The topics, group and transactional id of one test's pipeline.
#[derive(Clone)]
pub struct RouterEnv {
    /// Bootstrap servers.
    pub brokers: String,
    /// Raw change topic.
    pub changes_raw: String,
    /// Raw inventory topic.
    pub inventory_raw: String,
    /// Compacted hosts topic.
    pub hosts: String,
    /// Enriched topic.
    pub enriched: String,
    /// Dead-letter topic.
    pub dlq: String,
    /// Extra environment for the router process.
    pub vars: Vec<(String, String)>,
    /// Where the router's /metrics listens.
    pub metrics_port: u16,
}

impl RouterEnv {
    /// Creates fresh topics (raw and enriched with 3 partitions).
    pub fn new(brokers: &str, name: &str) -> RouterEnv {
        Self::with_topic_names(brokers, name, |role| unique(&format!("{name}-{role}")))
    }

    /// [`RouterEnv::new`] with the topic names `t(role)` (role: `changes-raw`,
    /// `inventory-raw`, `hosts`, `enriched`, `dlq`), e.g. under the prefixes
    /// a secured broker's ACLs allow.
    pub fn with_topic_names(brokers: &str, name: &str, t: impl Fn(&str) -> String) -> RouterEnv {
        let env = RouterEnv {
            brokers: brokers.to_owned(),
            changes_raw: t("changes-raw"),
            inventory_raw: t("inventory-raw"),
            hosts: t("hosts"),
            enriched: t("enriched"),
            dlq: t("dlq"),
            vars: Vec::new(),
            metrics_port: free_port(),
        };
        create_topics(
            brokers,
            &[
                &env.changes_raw,
                &env.inventory_raw,
                &env.hosts,
                &env.enriched,
                &env.dlq,
            ],
        );
        let id = unique(name);
        let mut env = env;
        env.vars = vec![
            ("PKGSTREAM__KAFKA__BROKERS".into(), brokers.to_owned()),
            (
                "PKGSTREAM__TOPICS__CHANGES_RAW".into(),
                env.changes_raw.clone(),
            ),
            (
                "PKGSTREAM__TOPICS__INVENTORY_RAW".into(),
                env.inventory_raw.clone(),
            ),
            ("PKGSTREAM__TOPICS__HOSTS".into(), env.hosts.clone()),
            (
                "PKGSTREAM__TOPICS__CHANGES_ENRICHED".into(),
                env.enriched.clone(),
            ),
            ("PKGSTREAM__TOPICS__DLQ".into(), env.dlq.clone()),
            ("PKGSTREAM__ROUTER__GROUP_ID".into(), format!("{id}-group")),
            (
                "PKGSTREAM__ROUTER__TRANSACTIONAL_ID".into(),
                format!("{id}-txn"),
            ),
            ("PKGSTREAM__ROUTER__BATCH_MS".into(), "100".into()),
            (
                "PKGSTREAM__ROUTER__METRICS_LISTEN".into(),
                format!("127.0.0.1:{}", env.metrics_port),
            ),
        ];
        env
    }

    /// Starts `pkgstream router` (logs to stderr).
    pub fn start(&self) -> Child {
        self.start_with(&[])
    }

    /// Starts `pkgstream router` with extra environment (a second instance:
    /// its own transactional id and metrics port).
    pub fn start_with(&self, extra: &[(String, String)]) -> Child {
        Command::new(binary("pkgstream"))
            .arg("router")
            .env_remove("PKGSTREAM_CONFIG")
            .envs(self.vars.iter().map(|(k, v)| (k, v)))
            .envs(extra.iter().map(|(k, v)| (k, v)))
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn pkgstream router")
    }

    /// Value of a metric line (exact name with labels), 0 when absent.
    pub fn metric(&self, series: &str) -> f64 {
        crate::scrape_metric(self.metrics_port, series)
    }

    /// Waits until the router says it is ready (assigned partitions).
    pub fn wait_ready(&self, limit: Duration) {
        let started = Instant::now();
        loop {
            use std::io::{Read, Write};
            if let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", self.metrics_port)) {
                let _ = s.write_all(b"GET /readyz HTTP/1.0\r\n\r\n");
                let mut body = String::new();
                let _ = s.read_to_string(&mut body);
                if body.starts_with("HTTP/1.0 200") || body.starts_with("HTTP/1.1 200") {
                    return;
                }
            }
            assert!(
                started.elapsed() < limit,
                "router not ready within {limit:?}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// A producer for raw events.
    pub fn producer(&self) -> BaseProducer {
        crate::client_config(&self.brokers)
            .set("linger.ms", "5")
            .create()
            .expect("producer")
    }
}

/// Sends `(key, value)` records to `topic` and waits until all are acknowledged.
pub fn send(producer: &BaseProducer, topic: &str, records: &[(Vec<u8>, Vec<u8>)]) {
    for (k, v) in records {
        let mut r = BaseRecord::to(topic).key(&k[..]).payload(&v[..]);
        loop {
            match producer.send(r) {
                Ok(()) => break,
                Err((_, back)) => {
                    r = back;
                    producer.poll(Duration::from_millis(10));
                }
            }
        }
    }
    producer
        .flush(Duration::from_secs(30))
        .expect("flush test producer");
}

/// One message with its headers.
#[derive(Clone, Debug)]
pub struct WithHeaders {
    /// Message key.
    pub key: Vec<u8>,
    /// Message value.
    pub value: Vec<u8>,
    /// Partition.
    pub partition: i32,
    /// Headers as text.
    pub headers: HashMap<String, String>,
}

/// Reads all of `topic` (read_committed) until `expected` messages arrived
/// and then `quiet` passed without more, or `limit` passed.
pub fn read_all(
    brokers: &str,
    topic: &str,
    expected: usize,
    quiet: Duration,
    limit: Duration,
) -> Vec<WithHeaders> {
    let consumer: BaseConsumer = crate::client_config(brokers)
        .set("group.id", unique("reader"))
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed")
        .create()
        .expect("consumer");
    let md = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .expect("metadata");
    let n = md.topics().first().map_or(0, |t| t.partitions().len());
    let mut tpl = TopicPartitionList::new();
    for p in 0..n as i32 {
        tpl.add_partition_offset(topic, p, Offset::Beginning)
            .expect("tpl");
    }
    consumer.assign(&tpl).expect("assign");
    let (started, mut last) = (Instant::now(), Instant::now());
    let mut out = Vec::new();
    while started.elapsed() < limit {
        match consumer.poll(Duration::from_millis(200)) {
            Some(Ok(m)) => {
                let headers = m
                    .headers()
                    .map(|h| {
                        h.iter()
                            .map(|x| {
                                (
                                    x.key.to_owned(),
                                    String::from_utf8_lossy(x.value.unwrap_or_default())
                                        .into_owned(),
                                )
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                out.push(WithHeaders {
                    key: m.key().unwrap_or_default().to_vec(),
                    value: m.payload().unwrap_or_default().to_vec(),
                    partition: m.partition(),
                    headers,
                });
                last = Instant::now();
            }
            Some(Err(e)) => panic!("read {topic}: {e}"),
            None if out.len() >= expected && last.elapsed() >= quiet => break,
            None => {}
        }
    }
    out
}

/// A loopback port nothing listens on now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}
