//! The two jobs of `pkgstream-emit`: [`record`] hook input into the spool,
//! and [`flush`] the spool to Kafka, removing only what Kafka acknowledged.

use std::io::BufRead;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use pkgstream_schemas::{Encoder, Host};
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};
use rdkafka::ClientContext;
use tracing::{debug, error, info, warn};

use crate::config::EmitConfig;
use crate::input::HookEvent;
use crate::spool::{AppendReport, Lane, SetAside, Spool};
use crate::{host, limits, ProducerError};

/// What `record` did.
#[derive(Debug, Default)]
pub struct RecordReport {
    /// Change events written to the spool.
    pub changes: usize,
    /// Inventory snapshots written to the spool.
    pub snapshots: usize,
    /// Lines that could not be recorded, each with its line number (and
    /// packages left out of a recorded snapshot).
    pub rejected: Vec<ProducerError>,
    /// Values cut or dropped by the size limits ([`crate::limits`]), each
    /// naming its line and field; the events themselves were recorded.
    pub adjusted: Vec<String>,
    /// Refused lines kept as dead letters in the spool.
    pub set_aside: usize,
    /// Inventory snapshots evicted to make room.
    pub evicted_snapshots: usize,
    /// True when unshipped changes exceed the spool budget.
    pub over_budget: bool,
}

/// Reads NDJSON hook events from `input`, applies the size limits
/// ([`crate::limits`]), encodes them and appends them durably to the spool.
/// A line that cannot be recorded (not UTF-8, longer than
/// [`limits::MAX_LINE_BYTES`], not a valid event) is reported in
/// [`RecordReport::rejected`] and kept as a dead letter
/// ([`Spool::set_aside`]); every other line is recorded regardless, and so
/// is every line read before a read error.
pub fn record(
    cfg: &EmitConfig,
    spool: &Spool,
    mut input: impl BufRead,
    source_name: &str,
) -> Result<RecordReport, ProducerError> {
    let mut recorder = Recorder::new(cfg, source_name);
    let mut refused: Vec<(usize, String, Vec<u8>, usize)> = Vec::new();
    let mut buf = Vec::new();
    let mut line_no = 0usize;
    loop {
        line_no += 1;
        let total = match read_line_bounded(&mut input, &mut buf, limits::MAX_LINE_BYTES) {
            Ok(Some(total)) => total,
            Ok(None) => break,
            Err(e) => {
                let reason =
                    format!("cannot read past this line: {e}; the lines before it are recorded");
                recorder.reject(line_no, reason);
                break;
            }
        };
        let reason = if total > limits::MAX_LINE_BYTES {
            format!(
                "line is {total} bytes, more than the {} a hook line may have",
                limits::MAX_LINE_BYTES
            )
        } else {
            match std::str::from_utf8(&buf) {
                Err(e) => format!(
                    "not UTF-8 (invalid byte at offset {}); JSON hook input is UTF-8",
                    e.valid_up_to()
                ),
                Ok(line) if line.trim().is_empty() => continue,
                Ok(line) => match HookEvent::parse(line).and_then(|e| recorder.add(line_no, e)) {
                    Ok(()) => continue,
                    Err(reason) => reason,
                },
            }
        };
        let mut kept = std::mem::take(&mut buf);
        kept.truncate(crate::spool::DEAD_LETTER_INPUT_BYTES);
        refused.push((line_no, reason, kept, total));
    }
    let mut report = recorder.commit(spool)?;
    // The good lines are on disk: now keep the refused ones, and say why.
    for (line, reason, bytes, total_len) in refused {
        let source = format!("{source_name} line {line}");
        match spool.set_aside(
            SetAside::Input {
                source: &source,
                bytes: &bytes,
                total_len,
            },
            &reason,
        ) {
            Ok(path) => {
                report.set_aside += 1;
                error!(source = %source, reason = %reason, dead_letter = %path.display(), "hook line refused; kept as a dead letter");
            }
            Err(e) => {
                error!(source = %source, reason = %reason, error = %e, "hook line refused; it could not be kept as a dead letter");
            }
        }
        report.rejected.push(input_error(source_name, line, reason));
    }
    report.rejected.sort_by_key(|e| match e {
        ProducerError::Input { line, .. } => *line,
        _ => 0,
    });
    Ok(report)
}

/// Reads one line (up to `\n`, which is not kept; a `\r` before it is
/// dropped too) into `buf`, keeping at most `max` bytes of it and skipping
/// the rest. Returns the line's whole length, or `None` at the end.
fn read_line_bounded(
    input: &mut impl BufRead,
    buf: &mut Vec<u8>,
    max: usize,
) -> std::io::Result<Option<usize>> {
    buf.clear();
    let mut total = 0usize;
    let mut seen_any = false;
    loop {
        let available = match input.fill_buf() {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if available.is_empty() {
            break;
        }
        seen_any = true;
        let (chunk, used, done) = match available.iter().position(|b| *b == b'\n') {
            Some(i) => (&available[..i], i + 1, true),
            None => (available, available.len(), false),
        };
        let room = max.saturating_sub(buf.len());
        buf.extend_from_slice(&chunk[..chunk.len().min(room)]);
        total += chunk.len();
        input.consume(used);
        if done {
            break;
        }
    }
    if !seen_any {
        return Ok(None);
    }
    if buf.last() == Some(&b'\r') && total == buf.len() {
        buf.pop();
        total -= 1;
    }
    Ok(Some(total))
}

fn input_error(source_name: &str, line: usize, reason: String) -> ProducerError {
    ProducerError::Input {
        source_name: source_name.to_owned(),
        line,
        reason,
    }
}

/// Encodes hook events (each with its line number in `source_name`, for
/// errors) and appends them durably to the spool: all change events of
/// one call in one append (one fsync), as one package-manager run; each
/// snapshot in its own segment. What `record` does after parsing, and what
/// `pkgstream simulate` calls with the events it builds. The size limits
/// ([`crate::limits`]) apply here too.
pub fn record_events(
    cfg: &EmitConfig,
    spool: &Spool,
    events: impl IntoIterator<Item = (usize, HookEvent)>,
    source_name: &str,
) -> Result<RecordReport, ProducerError> {
    let mut recorder = Recorder::new(cfg, source_name);
    for (line_no, event) in events {
        if let Err(reason) = recorder.add(line_no, event) {
            recorder.reject(line_no, reason);
        }
    }
    recorder.commit(spool)
}

/// The events of one `record` call on their way to the spool.
struct Recorder<'a> {
    cfg: &'a EmitConfig,
    source_name: &'a str,
    encoder: Encoder,
    local_host: Option<Result<Host<'static>, String>>,
    change_buf: Vec<u8>,
    changes: Vec<(Vec<u8>, std::ops::Range<usize>)>,
    /// Line, key and the snapshot's records (one, or its chunks in order).
    snapshots: Vec<(usize, Vec<u8>, Vec<Vec<u8>>)>,
    report: RecordReport,
}

impl<'a> Recorder<'a> {
    fn new(cfg: &'a EmitConfig, source_name: &'a str) -> Recorder<'a> {
        Recorder {
            cfg,
            source_name,
            encoder: Encoder::new(),
            local_host: None,
            change_buf: Vec::new(),
            changes: Vec::new(),
            snapshots: Vec::new(),
            report: RecordReport::default(),
        }
    }

    fn reject(&mut self, line: usize, reason: String) {
        self.report
            .rejected
            .push(input_error(self.source_name, line, reason));
    }

    /// Checks the limits, fills in the host and encodes one event; `Err`
    /// says why the event cannot be recorded.
    fn add(&mut self, line_no: usize, mut event: HookEvent) -> Result<(), String> {
        let adjusted = match &mut event {
            HookEvent::Change(c) => limits::check_change(c)?,
            HookEvent::Inventory(s) => limits::check_inventory(s)?,
        };
        let local = if event.needs_local_host() {
            match self
                .local_host
                .get_or_insert_with(|| host::detect(&self.cfg.host).map_err(|e| e.to_string()))
            {
                Ok(h) => Some(&*h),
                Err(e) => return Err(e.clone()),
            }
        } else {
            None
        };
        match event {
            HookEvent::Change(c) => {
                let event = c.into_event(local);
                let start = self.change_buf.len();
                if let Err(e) = self.encoder.encode_change(&event, &mut self.change_buf) {
                    self.change_buf.truncate(start);
                    return Err(e.to_string());
                }
                self.changes.push((
                    event.host.machine_id.as_bytes().to_vec(),
                    start..self.change_buf.len(),
                ));
            }
            HookEvent::Inventory(s) => {
                let snapshot = s.into_snapshot(local);
                let key = snapshot.host.machine_id.as_bytes().to_vec();
                let records = crate::chunk::encode_snapshot(
                    &mut self.encoder,
                    snapshot,
                    self.cfg.flush.snapshot_chunk_bytes,
                )
                .map_err(|e| e.to_string())?;
                if records.len() > 1 {
                    info!(
                        chunks = records.len(),
                        bytes = records.iter().map(Vec::len).sum::<usize>(),
                        "snapshot larger than flush.snapshot_chunk_bytes: recorded as chunks"
                    );
                }
                self.snapshots.push((line_no, key, records));
            }
        }
        for note in adjusted.notes {
            warn!(source = self.source_name, line = line_no, note = %note, "hook input over a size limit; recorded with the value cut");
            self.report
                .adjusted
                .push(format!("{} line {line_no}: {note}", self.source_name));
        }
        for reason in adjusted.left_out {
            self.reject(line_no, format!("left out of the snapshot: {reason}"));
        }
        Ok(())
    }

    /// Appends what was added: the changes in one append, each snapshot in
    /// its own (all its chunks in one segment, so they ship in order and
    /// are evicted together). A snapshot the spool cannot take is
    /// rejected, not fatal.
    fn commit(mut self, spool: &Spool) -> Result<RecordReport, ProducerError> {
        let entries: Vec<(&[u8], &[u8])> = self
            .changes
            .iter()
            .map(|(k, r)| (k.as_slice(), &self.change_buf[r.clone()]))
            .collect();
        let report = &mut self.report;
        let mut note = |r: AppendReport| {
            report.evicted_snapshots += r.evicted_snapshots;
            report.over_budget |= r.over_budget;
        };
        note(spool.append(Lane::Changes, &entries)?);
        report.changes = entries.len();
        for (line, key, records) in &self.snapshots {
            let entries: Vec<(&[u8], &[u8])> = records
                .iter()
                .map(|r| (key.as_slice(), r.as_slice()))
                .collect();
            match spool.append(Lane::Inventory, &entries) {
                Ok(r) => {
                    note(r);
                    report.snapshots += 1;
                }
                Err(e @ (ProducerError::SpoolFull { .. } | ProducerError::Input { .. })) => report
                    .rejected
                    .push(input_error(self.source_name, *line, e.to_string())),
                Err(e) => return Err(e),
            }
        }
        Ok(self.report)
    }
}

/// What `flush` shipped.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct FlushReport {
    /// Change events acknowledged by Kafka.
    pub changes: u64,
    /// Inventory records acknowledged by Kafka (whole snapshots, or chunks
    /// of one).
    pub snapshots: u64,
    /// Corrupt spool bytes skipped.
    pub corrupt_bytes: u64,
    /// Records Kafka can never take (too large, invalid), moved to the
    /// spool's dead letters so that they block nothing.
    pub set_aside: u64,
}

/// Why Kafka did not take a record: decided in one place, [`classify`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Failure {
    /// The cluster could not be reached or did not answer in time: the
    /// record stays spooled for the next flush (exit 75).
    Unreachable(String),
    /// Kafka answered that it will never take this record (larger than the
    /// broker's or the topic's message limit, invalid): once it fails alone
    /// too, it is set aside as a dead letter.
    Poison(String),
    /// Kafka answered and refuses this host's records (authorization, no
    /// such topic): they stay spooled until the configuration is fixed
    /// (exit 77).
    Refused(String),
}

/// Classifies a produce or delivery error.
pub fn classify(error: &KafkaError) -> Failure {
    let text = error.to_string();
    match error.rdkafka_error_code() {
        Some(
            RDKafkaErrorCode::MessageSizeTooLarge
            | RDKafkaErrorCode::InvalidMessageSize
            | RDKafkaErrorCode::InvalidRecord,
        ) => Failure::Poison(text),
        Some(
            RDKafkaErrorCode::TopicAuthorizationFailed
            | RDKafkaErrorCode::ClusterAuthorizationFailed
            | RDKafkaErrorCode::SaslAuthenticationFailed
            | RDKafkaErrorCode::Authentication
            | RDKafkaErrorCode::UnknownTopic,
        ) => Failure::Refused(text),
        _ => Failure::Unreachable(text),
    }
}

/// Delivery reports of the batch in flight, indexed by the record's
/// position in the batch.
#[derive(Default)]
struct Deliveries {
    state: Mutex<DeliveryState>,
}

#[derive(Default)]
struct DeliveryState {
    /// `None` pending, `Some(Ok)` acknowledged, `Some(Err)` failed.
    results: Vec<Option<Result<(), Failure>>>,
    /// The client's last error that says why (authentication, TLS, ...).
    last_error: Option<String>,
    /// The last broker connection failure it logged.
    last_failure: Option<String>,
    /// The last "all brokers down".
    generic_error: Option<String>,
}

impl DeliveryState {
    /// What the client last said about the connection, most specific first.
    fn take_reason(&mut self) -> Option<String> {
        let r = self
            .last_error
            .take()
            .or(self.last_failure.take())
            .or(self.generic_error.take());
        self.last_failure = None;
        self.generic_error = None;
        r
    }
}

impl Deliveries {
    fn with_state<T>(&self, f: impl FnOnce(&mut DeliveryState) -> T) -> T {
        let mut guard = self
            .state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        f(&mut guard)
    }
}

impl ClientContext for Deliveries {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, log_message: &str) {
        debug!(?level, facility = fac, message = log_message, "librdkafka");
        if fac == "FAIL" {
            self.with_state(|s| s.last_failure = Some(log_message.to_owned()));
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        debug!(error = %error, reason, "librdkafka error");
        // "all brokers down" follows the error that says why (a failed
        // authentication, an untrusted certificate): the why is kept.
        let generic = error.rdkafka_error_code() == Some(RDKafkaErrorCode::AllBrokersDown);
        self.with_state(|s| {
            let slot = if generic {
                &mut s.generic_error
            } else {
                &mut s.last_error
            };
            *slot = Some(reason.to_owned());
        });
    }
}

impl ProducerContext for Deliveries {
    type DeliveryOpaque = usize;

    fn delivery(&self, result: &DeliveryResult<'_>, index: usize) {
        self.with_state(|s| {
            let outcome = match result {
                Ok(_) => Ok(()),
                Err((e, _)) => Err(classify(e)),
            };
            if let Some(slot) = s.results.get_mut(index) {
                *slot = Some(outcome);
            }
        });
    }
}

/// Ships everything in the spool to Kafka within `timeout`: changes first,
/// then snapshots, in batches; after each batch only the acknowledged
/// records are removed. A record Kafka will never take ([`Failure::Poison`],
/// again when sent alone) is set aside as a dead letter
/// ([`Spool::set_aside`]) and counted in [`FlushReport::set_aside`]; the
/// rest go on. Returns [`ProducerError::KafkaUnavailable`] (and keeps what
/// was not acknowledged) when Kafka cannot be reached in time, and
/// [`ProducerError::KafkaRefused`] when it refuses the host's records. An
/// empty spool makes no connection at all.
pub fn flush(
    cfg: &EmitConfig,
    spool: &Spool,
    timeout: Duration,
) -> Result<FlushReport, ProducerError> {
    let deadline = Instant::now() + timeout;
    let mut report = FlushReport::default();
    let mut producer: Option<BaseProducer<Deliveries>> = None;
    for lane in Lane::ALL {
        let topic = match lane {
            Lane::Changes => cfg.topics.changes_raw.as_str(),
            Lane::Inventory => cfg.topics.inventory_raw.as_str(),
        };
        loop {
            let batch = spool.read_batch(lane, cfg.flush.batch_events, 16 << 20)?;
            report.corrupt_bytes += batch.corrupt_bytes;
            if batch.records.is_empty() {
                // Moves the cursor over skipped garbage, if any.
                spool.ack(&batch, &[])?;
                break;
            }
            let producer = match &mut producer {
                Some(p) => p,
                None => producer.insert(connect(cfg, deadline, batch.records.len())?),
            };
            let mut outcomes = send_batch(producer, topic, &batch.records, deadline);
            // A broker refuses a whole request that is too large: only what
            // fails alone too is poison.
            let mut retried_alone = 0u64;
            for (i, outcome) in outcomes.iter_mut().enumerate() {
                if matches!(outcome, Err(Failure::Poison(_))) && batch.records.len() > 1 {
                    retried_alone += 1;
                    if let Some(alone) =
                        send_batch(producer, topic, &batch.records[i..=i], deadline)
                            .into_iter()
                            .next()
                    {
                        *outcome = alone;
                    }
                }
            }
            let mut done = Vec::with_capacity(outcomes.len());
            let mut set_aside = 0u64;
            let mut failure: Option<Failure> = None;
            for (record, outcome) in batch.records.iter().zip(outcomes) {
                match outcome {
                    Ok(()) => done.push(true),
                    Err(Failure::Poison(reason)) => {
                        let reason = format!(
                            "Kafka at {} will never take it for topic {topic}: {reason}",
                            cfg.kafka.brokers
                        );
                        let path = spool.set_aside(
                            SetAside::Record {
                                lane,
                                key: &record.key,
                                value: &record.value,
                            },
                            &reason,
                        )?;
                        error!(topic, bytes = record.value.len(), reason = %reason, dead_letter = %path.display(), "record set aside");
                        set_aside += 1;
                        done.push(true);
                    }
                    Err(other) => {
                        if !matches!(failure, Some(Failure::Refused(_))) {
                            failure = Some(other);
                        }
                        done.push(false);
                    }
                }
            }
            spool.ack(&batch, &done)?;
            let failed = done.iter().filter(|d| !**d).count() as u64;
            let acked = done.len() as u64 - failed - set_aside;
            report.set_aside += set_aside;
            match lane {
                Lane::Changes => report.changes += acked,
                Lane::Inventory => report.snapshots += acked,
            }
            info!(
                topic,
                acked, failed, set_aside, retried_alone, "batch shipped"
            );
            match failure {
                None => {}
                Some(Failure::Refused(reason)) => {
                    return Err(ProducerError::KafkaRefused {
                        brokers: cfg.kafka.brokers.clone(),
                        topic: topic.to_owned(),
                        reason,
                        pending: failed,
                    })
                }
                Some(Failure::Unreachable(text) | Failure::Poison(text)) => {
                    // The client's own view of the connection says more
                    // than "timed out", when it has one.
                    let reason = producer
                        .context()
                        .with_state(DeliveryState::take_reason)
                        .unwrap_or(text);
                    let reason = cfg.kafka.explain(&reason);
                    return Err(ProducerError::KafkaUnavailable {
                        brokers: cfg.kafka.brokers.clone(),
                        reason,
                        pending: failed,
                    });
                }
            }
        }
    }
    Ok(report)
}

/// Creates the idempotent producer and checks that a broker answers.
fn connect(
    cfg: &EmitConfig,
    deadline: Instant,
    pending: usize,
) -> Result<BaseProducer<Deliveries>, ProducerError> {
    let remaining = deadline
        .saturating_duration_since(Instant::now())
        .max(Duration::from_millis(100));
    let producer: BaseProducer<Deliveries> = cfg
        .kafka
        .client_config()
        .map_err(|e| ProducerError::Config(e.to_string()))?
        .set(
            "client.id",
            cfg.kafka.client_id.as_deref().unwrap_or("pkgstream-emit"),
        )
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("compression.type", "zstd")
        .set("linger.ms", "5")
        .set("message.timeout.ms", remaining.as_millis().to_string())
        .create_with_context(Deliveries::default())
        .map_err(|e| ProducerError::KafkaClient(e.to_string()))?;
    let probe = remaining.min(Duration::from_secs(10));
    if let Err(e) = producer.client().fetch_metadata(None, probe) {
        // Client errors (authentication, TLS) reach the context when polled.
        producer.poll(Duration::from_millis(100));
        let reason = producer
            .context()
            .with_state(DeliveryState::take_reason)
            .unwrap_or_else(|| e.to_string());
        let reason = cfg.kafka.explain(&reason);
        return Err(ProducerError::KafkaUnavailable {
            brokers: cfg.kafka.brokers.clone(),
            reason,
            pending: pending as u64,
        });
    }
    Ok(producer)
}

/// Sends `records` and waits for their delivery reports until `deadline`.
/// Returns, per record, whether Kafka acknowledged it, or why not (a
/// record with no report by the deadline is [`Failure::Unreachable`]).
fn send_batch(
    producer: &BaseProducer<Deliveries>,
    topic: &str,
    records: &[crate::spool::Record],
    deadline: Instant,
) -> Vec<Result<(), Failure>> {
    producer
        .context()
        .with_state(|s| s.results = vec![None; records.len()]);
    for (i, record) in records.iter().enumerate() {
        let mut message = BaseRecord::with_opaque_to(topic, i)
            .key(&record.key)
            .payload(&record.value);
        loop {
            match producer.send(message) {
                Ok(()) => break,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), m))
                    if Instant::now() < deadline =>
                {
                    message = m;
                    producer.poll(Duration::from_millis(50));
                }
                Err((e, _)) => {
                    warn!(topic, error = %e, bytes = record.value.len(), "message not accepted by the client");
                    producer
                        .context()
                        .with_state(|s| s.results[i] = Some(Err(classify(&e))));
                    break;
                }
            }
        }
    }
    let _ = producer.flush(deadline.saturating_duration_since(Instant::now()));
    producer.context().with_state(|s| {
        s.results
            .iter()
            .map(|r| {
                r.clone().unwrap_or_else(|| {
                    Err(Failure::Unreachable(
                        "no acknowledgement before the flush timeout".into(),
                    ))
                })
            })
            .collect()
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    /// A configuration whose host files and spool live in `dir`.
    fn setup() -> (tempfile::TempDir, EmitConfig, Spool) {
        let dir = tempfile::tempdir().unwrap();
        let etc = dir.path().join("etc");
        std::fs::create_dir_all(&etc).unwrap();
        std::fs::write(etc.join("machine-id"), "0123456789abcdef0123456789abcdef\n").unwrap();
        std::fs::write(etc.join("hostname"), "unit\n").unwrap();
        std::fs::write(etc.join("os-release"), "ID=rocky\nVERSION_ID=9.4\n").unwrap();
        let mut cfg = EmitConfig::default();
        cfg.spool.dir = dir.path().join("spool");
        cfg.host.machine_id_file = etc.join("machine-id");
        cfg.host.hostname_file = etc.join("hostname");
        cfg.host.os_release_file = etc.join("os-release");
        let spool = Spool::open(&cfg.spool.dir, cfg.spool_limits()).unwrap();
        (dir, cfg, spool)
    }

    fn change(name: &str, command_line: &str) -> String {
        serde_json::json!({"kind":"change","source":"dnf","action":"install",
            "package":{"name":name,"version":"1","release":"1","arch":"noarch"},
            "transaction":{"rpm_tid":1,"command_line":command_line}})
        .to_string()
    }

    /// (package name, command line) of each spooled change.
    fn spooled(spool: &Spool) -> Vec<(String, Option<String>)> {
        spool
            .read_batch(Lane::Changes, 1000, u64::MAX)
            .unwrap()
            .records
            .iter()
            .map(|r| {
                let c = pkgstream_schemas::decode_change(&r.value).unwrap();
                (
                    c.package.name.to_string(),
                    c.transaction.command_line.as_deref().map(str::to_owned),
                )
            })
            .collect()
    }

    #[test]
    fn a_bad_line_never_takes_the_good_ones_with_it() {
        let (_dir, cfg, spool) = setup();
        let mut input = Vec::new();
        for part in [
            change("first", "dnf install first").into_bytes(),
            b"\xff\xfe{\"kind\":\"change\"}".to_vec(),
            change("second", "dnf install second").into_bytes(),
            vec![b' '; limits::MAX_LINE_BYTES + 1],
            change(&"n".repeat(10 << 20), "dnf install huge-name").into_bytes(),
            change("long-command", &"x".repeat(10 << 20)).into_bytes(),
            format!("{}\r", change("crlf", "dnf install crlf")).into_bytes(),
        ] {
            input.extend_from_slice(&part);
            input.push(b'\n');
        }
        let report = record(&cfg, &spool, &input[..], "stdin").unwrap();

        let names: Vec<String> = spooled(&spool).into_iter().map(|c| c.0).collect();
        assert_eq!(names, ["first", "second", "long-command", "crlf"]);
        assert_eq!(report.changes, 4);
        let rejected: Vec<String> = report.rejected.iter().map(ToString::to_string).collect();
        assert_eq!(rejected.len(), 3, "{rejected:#?}");
        assert!(
            rejected[0].starts_with("stdin line 2: not UTF-8 (invalid byte at offset 0)"),
            "{}",
            rejected[0]
        );
        assert!(
            rejected[1].starts_with("stdin line 4: line is 67108865 bytes, more than the 67108864"),
            "{}",
            rejected[1]
        );
        assert!(
            rejected[2].starts_with(
                "stdin line 5: package.name is 10485760 bytes, more than the 256 allowed"
            ),
            "{}",
            rejected[2]
        );
        assert_eq!(report.set_aside, 3);
        assert_eq!(spool.stats().unwrap().dead_letters, 3);
        assert_eq!(report.adjusted.len(), 1, "{:?}", report.adjusted);
        assert!(report.adjusted[0]
            .starts_with("stdin line 6: transaction.command_line cut from 10485760 to"));

        let cmd = spooled(&spool)[2].1.clone().unwrap();
        assert!(cmd.len() <= limits::MAX_COMMAND_LINE_BYTES);
        assert!(cmd.ends_with("… [cut by pkgstream from 10485760 bytes]"));
    }

    /// Yields `data`, then fails.
    struct FailsAfter<'a>(&'a [u8]);

    impl std::io::Read for FailsAfter<'_> {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            if self.0.is_empty() {
                return Err(std::io::Error::other("pipe broke"));
            }
            let n = buf.len().min(self.0.len());
            buf[..n].copy_from_slice(&self.0[..n]);
            self.0 = &self.0[n..];
            Ok(n)
        }
    }

    #[test]
    fn a_read_error_keeps_what_was_read_before_it() {
        let (_dir, cfg, spool) = setup();
        let text = format!("{}\n{}\n", change("a", "x"), change("b", "y"));
        let input = std::io::BufReader::new(FailsAfter(text.as_bytes()));
        let report = record(&cfg, &spool, input, "stdin").unwrap();
        assert_eq!(report.changes, 2);
        assert_eq!(spooled(&spool).len(), 2);
        assert_eq!(report.rejected.len(), 1);
        assert!(report.rejected[0].to_string().contains("pipe broke"));
    }

    #[test]
    fn kafka_errors_are_classified_in_one_place() {
        let e = |code| KafkaError::MessageProduction(code);
        assert!(matches!(
            classify(&e(RDKafkaErrorCode::MessageSizeTooLarge)),
            Failure::Poison(_)
        ));
        assert!(matches!(
            classify(&e(RDKafkaErrorCode::InvalidRecord)),
            Failure::Poison(_)
        ));
        assert!(matches!(
            classify(&e(RDKafkaErrorCode::TopicAuthorizationFailed)),
            Failure::Refused(_)
        ));
        assert!(matches!(
            classify(&e(RDKafkaErrorCode::UnknownTopic)),
            Failure::Refused(_)
        ));
        assert!(matches!(
            classify(&e(RDKafkaErrorCode::MessageTimedOut)),
            Failure::Unreachable(_)
        ));
        assert!(matches!(
            classify(&e(RDKafkaErrorCode::BrokerTransportFailure)),
            Failure::Unreachable(_)
        ));
        assert!(matches!(
            classify(&e(RDKafkaErrorCode::NotLeaderForPartition)),
            Failure::Unreachable(_)
        ));
    }
}
