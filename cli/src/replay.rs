//! `pkgstream replay`: the enriched changes of a time range, exactly as
//! reported, for auditors. Reads the topic between two Kafka timestamps
//! (`offsets_for_times`, no consumer group, read_committed, nothing
//! committed), filters by host, group, package and action, and writes NDJSON,
//! an Avro object container file (self-describing: the writer schema is in
//! the file, so any Avro reader opens it years later), or a change-history
//! index through the search sink's own code
//! ([`pkgstream_sinks::search::AuditIndexer`]: an audit index is what the
//! live sink wrote for the same events; into the live prefix it changes
//! nothing).

use std::collections::{BTreeMap, HashMap};
use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

use apache_avro::{from_avro_datum, Codec, Schema, Writer};
use pkgstream_runtime::config::{KafkaConfig, LastCause};
use pkgstream_runtime::shutdown::Shutdown;
use pkgstream_schemas::{decode_enriched_change, Kind, Registry};
use pkgstream_sinks::search::{AuditIndexer, AuditReport};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Message, Offset, TopicPartitionList};

use crate::{render, CliError};

/// Where the replayed changes go.
pub enum ReplayOutput<'a> {
    /// One JSON object per line (`pkgstream tail`'s rendering).
    Ndjson(&'a mut dyn Write),
    /// Avro object container file of `EnrichedChange`, deflate blocks.
    Avro(&'a mut dyn Write),
    /// Change-history documents under a prefix, as the search sink writes them.
    Index(Box<AuditIndexer>),
}

/// [`ReplayOutput`] while writing.
enum Target<'a, 's> {
    Ndjson(&'a mut dyn Write),
    Avro(Writer<'s, &'a mut dyn Write>),
    Index(Box<AuditIndexer>),
}

/// What to replay.
#[derive(Clone, Debug)]
pub struct ReplayOptions {
    /// The cluster and how to reach it.
    pub kafka: KafkaConfig,
    /// Topic (the enriched changes).
    pub topic: String,
    /// From (Kafka timestamp, ms, inclusive).
    pub from_ms: i64,
    /// Until (Kafka timestamp, ms, exclusive).
    pub to_ms: i64,
    /// Only this host (name or machine id).
    pub host: Option<String>,
    /// Only this host group.
    pub group: Option<String>,
    /// Only this package name.
    pub package: Option<String>,
    /// Only this action (lower case).
    pub action: Option<String>,
}

/// What a replay did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ReplayReport {
    /// Messages read in the range.
    pub read: u64,
    /// Changes written.
    pub written: u64,
    /// Snapshots in the range (not written: the audit is of changes).
    pub snapshots: u64,
    /// Messages that did not decode.
    pub undecodable: u64,
    /// For an index: what the engine did with the changes written.
    pub index: Option<AuditReport>,
}

/// Replays into `out`; progress (events/s, ETA) on stderr when it is a
/// terminal, else nothing until [`print_summary`]. On `shutdown` it writes
/// out what it has read so far (the Avro container, the batch in hand)
/// and fails with [`CliError::Interrupted`] saying how far it got.
pub fn replay(
    o: &ReplayOptions,
    out: ReplayOutput<'_>,
    shutdown: &Shutdown,
) -> Result<ReplayReport, CliError> {
    if o.from_ms >= o.to_ms {
        return Err(CliError::BadInput("--from must be before --to".into()));
    }
    let consumer: BaseConsumer<LastCause> = o
        .kafka
        .client_config()
        .map_err(|e| CliError::Kafka {
            brokers: o.kafka.brokers.clone(),
            reason: e.to_string(),
        })?
        .set("group.id", crate::acls::REPLAY_GROUP)
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed")
        .set("allow.auto.create.topics", "false")
        .create_with_context(LastCause::default())
        .map_err(|e| CliError::Kafka {
            brokers: o.kafka.brokers.clone(),
            reason: format!("client: {e}"),
        })?;
    // Each Kafka error with the cause the client last reported (a failed
    // authentication, an untrusted certificate, a TLS listener).
    let kafka = |what: &str, e: &dyn std::fmt::Display| CliError::Kafka {
        brokers: o.kafka.brokers.clone(),
        reason: {
            // The client's errors and logs arrive with a poll.
            let _ = consumer.poll(Duration::from_millis(100));
            consumer.context().reason(&o.kafka, what, e)
        },
    };
    let timeout = Duration::from_secs(15);
    let md = consumer
        .fetch_metadata(Some(&o.topic), timeout)
        .map_err(|e| kafka("unreachable", &e))?;
    let partitions: Vec<i32> = md
        .topics()
        .first()
        .filter(|t| t.error().is_none())
        .map(|t| t.partitions().iter().map(|p| p.id()).collect())
        .unwrap_or_default();
    if partitions.is_empty() {
        return Err(CliError::NoSuchTopic {
            topic: o.topic.clone(),
            brokers: o.kafka.brokers.clone(),
        });
    }
    let at = |ms: i64| -> Result<BTreeMap<i32, i64>, CliError> {
        let mut tpl = TopicPartitionList::new();
        for &p in &partitions {
            tpl.add_partition_offset(&o.topic, p, Offset::Offset(ms))
                .map_err(|e| kafka("offsets", &e))?;
        }
        let found = consumer
            .offsets_for_times(tpl, timeout)
            .map_err(|e| kafka("offsets_for_times", &e))?;
        let mut out = BTreeMap::new();
        for e in found.elements() {
            let o = match e.offset() {
                Offset::Offset(x) => x,
                // No message at or after the time: the partition's end.
                _ => {
                    consumer
                        .fetch_watermarks(&o.topic, e.partition(), timeout)
                        .map_err(|err| kafka("watermarks", &err))?
                        .1
                }
            };
            out.insert(e.partition(), o);
        }
        Ok(out)
    };
    let start = at(o.from_ms)?;
    let end = at(o.to_ms)?;
    let total: i64 = partitions.iter().map(|p| (end[p] - start[p]).max(0)).sum();
    let mut tpl = TopicPartitionList::new();
    let mut open: Vec<i32> = Vec::new();
    for &p in &partitions {
        if end[&p] > start[&p] {
            tpl.add_partition_offset(&o.topic, p, Offset::Offset(start[&p]))
                .map_err(|e| kafka("assign", &e))?;
            open.push(p);
        }
    }
    let mut report = ReplayReport::default();
    let avro_schema = |json: &str| {
        Schema::parse_str(json).map_err(|e| CliError::BadInput(format!("schema: {e}")))
    };
    let schema = avro_schema(Registry::get().current(Kind::EnrichedChange).json)?;
    // Writer schemas by fingerprint: old events are resolved to the current one.
    let mut writers: HashMap<[u8; 8], Schema> = HashMap::new();
    // The Avro container is written block by block as it fills, never
    // held whole: memory stays flat however long the range.
    let mut out = match out {
        ReplayOutput::Ndjson(w) => Target::Ndjson(w),
        ReplayOutput::Avro(w) => Target::Avro(Writer::with_codec(
            &schema,
            w,
            Codec::Deflate(Default::default()),
        )),
        ReplayOutput::Index(ix) => Target::Index(ix),
    };
    if !open.is_empty() {
        consumer.assign(&tpl).map_err(|e| kafka("assign", &e))?;
    }
    let progress = std::io::stderr().is_terminal();
    let started = Instant::now();
    let mut last_progress = Instant::now();
    let mut idle_since = Instant::now();
    while !open.is_empty() && !shutdown.requested() {
        let m = match consumer.poll(Duration::from_millis(200)) {
            Some(Ok(m)) => m,
            Some(Err(e)) => return Err(kafka("reading", &e)),
            None => {
                // Transaction markers take offsets no message is read at:
                // a partition whose position reached its end is done.
                if let Ok(pos) = consumer.position() {
                    for e in pos.elements() {
                        if let Offset::Offset(x) = e.offset() {
                            if x >= end[&e.partition()] {
                                open.retain(|p| *p != e.partition());
                            }
                        }
                    }
                }
                if idle_since.elapsed() > Duration::from_secs(30) {
                    return Err(CliError::Kafka {
                        brokers: o.kafka.brokers.clone(),
                        reason: format!(
                            "no progress for 30 s on partitions {open:?} of {}",
                            o.topic
                        ),
                    });
                }
                continue;
            }
        };
        let p = m.partition();
        if m.offset() >= end[&p] {
            open.retain(|x| *x != p);
            continue;
        }
        if m.offset() + 1 >= end[&p] {
            open.retain(|x| *x != p);
        }
        report.read += 1;
        let bytes = m.payload().unwrap_or_default();
        match Registry::get().writer_of(bytes).map(|(v, _)| v.kind) {
            Ok(Kind::EnrichedSnapshot) => {
                report.snapshots += 1;
                continue;
            }
            Ok(Kind::EnrichedChange) => {}
            _ => {
                report.undecodable += 1;
                continue;
            }
        }
        let Ok(c) = decode_enriched_change(bytes) else {
            report.undecodable += 1;
            continue;
        };
        let keep = o
            .host
            .as_ref()
            .is_none_or(|h| *h == c.host.hostname || *h == c.host.machine_id)
            && o.group
                .as_ref()
                .is_none_or(|g| *g == c.enrichment.hostgroup)
            && o.package.as_ref().is_none_or(|n| *n == c.package.name)
            && o.action
                .as_ref()
                .is_none_or(|a| a.eq_ignore_ascii_case(c.action.symbol()));
        if keep {
            match &mut out {
                Target::Index(ix) => ix.push(p, m.offset(), bytes)?,
                Target::Avro(w) => {
                    let (writer, datum) = Registry::get()
                        .writer_of(bytes)
                        .map_err(|e| CliError::BadInput(e.to_string()))?;
                    let writer_schema = match writers.entry(writer.fingerprint) {
                        std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
                        std::collections::hash_map::Entry::Vacant(e) => {
                            e.insert(avro_schema(writer.json)?)
                        }
                    };
                    let value = from_avro_datum(writer_schema, &mut &datum[..], Some(&schema))
                        .map_err(|e| CliError::BadInput(format!("offset {}: {e}", m.offset())))?;
                    w.append(value)
                        .map_err(|e| CliError::BadInput(format!("Avro writer: {e}")))?;
                }
                Target::Ndjson(out) => {
                    writeln!(out, "{}", render::enriched_change(c))
                        .map_err(|e| CliError::BadInput(format!("writing: {e}")))?;
                }
            }
            report.written += 1;
        }
        // After the write: an engine that made the lane wait is not a
        // Kafka that stopped answering.
        idle_since = Instant::now();
        if progress && last_progress.elapsed() > Duration::from_secs(1) {
            last_progress = Instant::now();
            let rate = report.read as f64 / started.elapsed().as_secs_f64();
            let left = (total - report.read as i64).max(0) as f64;
            eprint!(
                "\rpkgstream replay: {}/{total} read, {:.0} events/s, ETA {:.0} s   ",
                report.read,
                rate,
                left / rate.max(1.0)
            );
        }
    }
    if progress {
        eprintln!();
    }
    match out {
        Target::Avro(w) => {
            w.into_inner()
                .map_err(|e| CliError::BadInput(format!("Avro writer: {e}")))?;
        }
        Target::Index(ix) => report.index = Some(ix.finish()?),
        Target::Ndjson(_) => {}
    }
    if !open.is_empty() {
        return Err(CliError::Interrupted(format!(
            "{} of {total} message(s) read, {} change(s) written; the output holds those",
            report.read, report.written
        )));
    }
    Ok(report)
}

/// Prints what a replay did on stderr: a sentence on a terminal, one JSON
/// line for scripts otherwise; then every change the engine refused
/// (`topic`, partition, offset, reason), which is an error: the index
/// does not hold the whole range.
pub fn print_summary(r: &ReplayReport, topic: &str) -> Result<(), CliError> {
    let index = r.index.as_ref().map(|ix| {
        serde_json::json!({
            "new": ix.events - ix.already_present - ix.rejected.len() as u64,
            "already_present": ix.already_present,
            "refused": ix.rejected.len(),
        })
    });
    if std::io::stderr().is_terminal() {
        eprintln!(
            "pkgstream replay: {} change(s) written of {} message(s) read ({} snapshot(s) skipped, {} undecodable)",
            r.written, r.read, r.snapshots, r.undecodable
        );
        if let Some(ix) = &index {
            eprintln!(
                "pkgstream replay: index: {} new, {} already present, {} refused",
                ix["new"], ix["already_present"], ix["refused"]
            );
        }
    } else {
        let summary = serde_json::json!({
            "read": r.read,
            "written": r.written,
            "snapshots_skipped": r.snapshots,
            "undecodable": r.undecodable,
            "index": index,
        });
        eprintln!("{summary}");
    }
    let refused = r
        .index
        .as_ref()
        .map(|ix| &ix.rejected[..])
        .unwrap_or_default();
    for x in refused.iter().take(20) {
        eprintln!(
            "pkgstream replay: refused: {topic} partition {} offset {}: {}: {}",
            x.partition, x.offset, x.code, x.reason
        );
    }
    if refused.is_empty() {
        Ok(())
    } else {
        Err(CliError::BadInput(format!(
            "{} change(s) of the range are not in the index (the first 20 are listed above)",
            refused.len()
        )))
    }
}
