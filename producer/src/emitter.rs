//! The two jobs of `pkgstream-emit`: [`record`] hook input into the spool,
//! and [`flush`] the spool to Kafka, removing only what Kafka acknowledged.

use std::io::BufRead;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use pkgstream_schemas::{Encoder, Host};
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};
use rdkafka::{ClientConfig, ClientContext};
use tracing::{debug, info, warn};

use crate::config::EmitConfig;
use crate::input::HookEvent;
use crate::spool::{AppendReport, Lane, Spool};
use crate::{host, ProducerError};

/// What `record` did.
#[derive(Debug, Default)]
pub struct RecordReport {
    /// Change events written to the spool.
    pub changes: usize,
    /// Inventory snapshots written to the spool.
    pub snapshots: usize,
    /// Lines that could not be recorded, each with its line number.
    pub rejected: Vec<ProducerError>,
    /// Inventory snapshots evicted to make room.
    pub evicted_snapshots: usize,
    /// True when unshipped changes exceed the spool budget.
    pub over_budget: bool,
}

/// Reads NDJSON hook events from `input`, encodes them and appends them
/// durably to the spool ([`record_events`]). Lines that fail are reported
/// in [`RecordReport::rejected`]; the good ones are recorded regardless.
pub fn record(
    cfg: &EmitConfig,
    spool: &Spool,
    input: impl BufRead,
    source_name: &str,
) -> Result<RecordReport, ProducerError> {
    let mut rejected = Vec::new();
    let mut events = Vec::new();
    for (i, line) in input.lines().enumerate() {
        let line_no = i + 1;
        let line =
            line.map_err(|e| input_error(source_name, line_no, format!("cannot read: {e}")))?;
        if line.trim().is_empty() {
            continue;
        }
        match HookEvent::parse(&line) {
            Ok(e) => events.push((line_no, e)),
            Err(reason) => rejected.push((line_no, input_error(source_name, line_no, reason))),
        }
    }
    let mut report = record_events(cfg, spool, events, source_name)?;
    // In line order, whichever step refused the line.
    rejected.extend(report.rejected.drain(..).map(|e| match &e {
        ProducerError::Input { line, .. } => (*line, e),
        _ => (0, e),
    }));
    rejected.sort_by_key(|(line, _)| *line);
    report.rejected = rejected.into_iter().map(|(_, e)| e).collect();
    Ok(report)
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
/// `pkgstream simulate` calls with the events it builds.
pub fn record_events(
    cfg: &EmitConfig,
    spool: &Spool,
    events: impl IntoIterator<Item = (usize, HookEvent)>,
    source_name: &str,
) -> Result<RecordReport, ProducerError> {
    let mut report = RecordReport::default();
    let mut encoder = Encoder::new();
    let mut local_host: Option<Result<Host<'static>, String>> = None;
    let mut change_buf: Vec<u8> = Vec::new();
    let mut changes: Vec<(Vec<u8>, std::ops::Range<usize>)> = Vec::new();
    let mut snapshots: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
    let reject = |line: usize, reason: String| input_error(source_name, line, reason);

    for (line_no, event) in events {
        let local = if event.needs_local_host() {
            match local_host
                .get_or_insert_with(|| host::detect(&cfg.host).map_err(|e| e.to_string()))
            {
                Ok(h) => Some(&*h),
                Err(e) => {
                    report.rejected.push(reject(line_no, e.clone()));
                    continue;
                }
            }
        } else {
            None
        };
        match event {
            HookEvent::Change(c) => {
                let event = c.into_event(local);
                let start = change_buf.len();
                match encoder.encode_change(&event, &mut change_buf) {
                    Ok(()) => changes.push((
                        event.host.machine_id.as_bytes().to_vec(),
                        start..change_buf.len(),
                    )),
                    Err(e) => report.rejected.push(reject(line_no, e.to_string())),
                }
            }
            HookEvent::Inventory(s) => {
                let snapshot = s.into_snapshot(local);
                let mut buf = Vec::new();
                match encoder.encode_snapshot(&snapshot, &mut buf) {
                    Ok(()) => snapshots.push((snapshot.host.machine_id.as_bytes().to_vec(), buf)),
                    Err(e) => report.rejected.push(reject(line_no, e.to_string())),
                }
            }
        }
    }

    let entries: Vec<(&[u8], &[u8])> = changes
        .iter()
        .map(|(k, r)| (k.as_slice(), &change_buf[r.clone()]))
        .collect();
    let mut note = |r: AppendReport| {
        report.evicted_snapshots += r.evicted_snapshots;
        report.over_budget |= r.over_budget;
    };
    note(spool.append(Lane::Changes, &entries)?);
    report.changes = entries.len();
    for (key, value) in &snapshots {
        note(spool.append(Lane::Inventory, &[(key, value)])?);
        report.snapshots += 1;
    }
    Ok(report)
}

/// What `flush` shipped.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct FlushReport {
    /// Change events acknowledged by Kafka.
    pub changes: u64,
    /// Inventory snapshots acknowledged by Kafka.
    pub snapshots: u64,
    /// Corrupt spool bytes skipped.
    pub corrupt_bytes: u64,
}

/// Delivery reports of the batch in flight, indexed by the record's
/// position in the batch.
#[derive(Default)]
struct Deliveries {
    state: Mutex<DeliveryState>,
}

#[derive(Default)]
struct DeliveryState {
    /// `None` pending, `Some(true)` acknowledged, `Some(false)` failed.
    results: Vec<Option<bool>>,
    last_error: Option<String>,
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
    }

    fn error(&self, error: KafkaError, reason: &str) {
        debug!(error = %error, reason, "librdkafka error");
        self.with_state(|s| s.last_error = Some(reason.to_owned()));
    }
}

impl ProducerContext for Deliveries {
    type DeliveryOpaque = usize;

    fn delivery(&self, result: &DeliveryResult<'_>, index: usize) {
        self.with_state(|s| {
            let ok = match result {
                Ok(_) => true,
                Err((e, _)) => {
                    s.last_error = Some(e.to_string());
                    false
                }
            };
            if let Some(slot) = s.results.get_mut(index) {
                *slot = Some(ok);
            }
        });
    }
}

/// Ships everything in the spool to Kafka within `timeout`: changes first,
/// then snapshots, in batches; after each batch only the acknowledged
/// records are removed. Returns [`ProducerError::KafkaUnavailable`] (and
/// keeps what was not acknowledged) when Kafka cannot be reached in time.
/// An empty spool makes no connection at all.
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
            let delivered = send_batch(producer, topic, &batch.records, deadline);
            spool.ack(&batch, &delivered)?;
            let acked = delivered.iter().filter(|d| **d).count() as u64;
            match lane {
                Lane::Changes => report.changes += acked,
                Lane::Inventory => report.snapshots += acked,
            }
            let failed = delivered.len() as u64 - acked;
            info!(topic, acked, failed, "batch shipped");
            if failed > 0 {
                let reason = producer
                    .context()
                    .with_state(|s| s.last_error.take())
                    .unwrap_or_else(|| "no acknowledgement before the flush timeout".into());
                return Err(ProducerError::KafkaUnavailable {
                    brokers: cfg.kafka.brokers.clone(),
                    reason,
                    pending: failed,
                });
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
    let producer: BaseProducer<Deliveries> = ClientConfig::new()
        .set("bootstrap.servers", &cfg.kafka.brokers)
        .set("client.id", &cfg.kafka.client_id)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("compression.type", "zstd")
        .set("linger.ms", "5")
        .set("message.timeout.ms", remaining.as_millis().to_string())
        .create_with_context(Deliveries::default())
        .map_err(|e| ProducerError::KafkaClient(e.to_string()))?;
    let probe = remaining.min(Duration::from_secs(10));
    if let Err(e) = producer.client().fetch_metadata(None, probe) {
        let reason = producer
            .context()
            .with_state(|s| s.last_error.take())
            .unwrap_or_else(|| e.to_string());
        return Err(ProducerError::KafkaUnavailable {
            brokers: cfg.kafka.brokers.clone(),
            reason,
            pending: pending as u64,
        });
    }
    Ok(producer)
}

/// Sends `records` and waits for their delivery reports until `deadline`.
/// Returns, per record, whether Kafka acknowledged it.
fn send_batch(
    producer: &BaseProducer<Deliveries>,
    topic: &str,
    records: &[crate::spool::Record],
    deadline: Instant,
) -> Vec<bool> {
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
                    warn!(topic, error = %e, "message not accepted by the client");
                    producer.context().with_state(|s| {
                        s.results[i] = Some(false);
                        s.last_error = Some(e.to_string());
                    });
                    break;
                }
            }
        }
    }
    let _ = producer.flush(deadline.saturating_duration_since(Instant::now()));
    producer
        .context()
        .with_state(|s| s.results.iter().map(|r| *r == Some(true)).collect())
}
