//! What one transaction produces, and how Kafka's answer to each record is
//! known: a producer context that records every failed delivery by the
//! record's index in the batch's outputs, and the rule that turns an output
//! Kafka refused as too large into a dead letter with code `too_large`.
//!
//! Too large is decided per record, never per batch: librdkafka packs many
//! records of one partition into one record batch, and a broker whose topic
//! limit (`max.message.bytes`) is below the producer's batch size refuses
//! the whole batch although each record fits. A record refused along with
//! others is therefore sent alone next time ([`Out::alone`]); only a record
//! refused alone is too large.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{DeliveryResult, ProducerContext};
use rdkafka::ClientContext;

use crate::process::{Enriched, Lane};

/// A raw message, copied out of the consumer.
pub(crate) struct Raw {
    pub lane: Lane,
    pub partition: i32,
    pub offset: i64,
    /// Kafka timestamp in microseconds, if the record has one.
    pub timestamp: Option<i64>,
    pub key: Option<Vec<u8>>,
    pub payload: Vec<u8>,
}

/// One record to produce in the current transaction.
pub(crate) enum Out {
    /// An enriched record for enriched partition `partition`, made from
    /// `raws[raw]`.
    Enriched {
        partition: i32,
        record: Enriched,
        raw: usize,
        /// Send it alone (flushed before and after), to tell a record that
        /// is too large from a batch that is.
        alone: bool,
    },
    /// `raws[raw]` as a dead letter.
    Dlq {
        raw: usize,
        code: &'static str,
        reason: String,
        /// Whether the raw bytes go along (not when they are too large for
        /// the DLQ themselves).
        with_payload: bool,
        alone: bool,
    },
}

/// Longest reason text a dead letter carries (a header: it counts against
/// the record size too).
const MAX_REASON: usize = 1024;

/// `reason`, cut at a character boundary to [`MAX_REASON`] bytes.
pub(crate) fn bounded_reason(mut reason: String) -> String {
    if reason.len() > MAX_REASON {
        let mut cut = MAX_REASON;
        while !reason.is_char_boundary(cut) {
            cut -= 1;
        }
        reason.truncate(cut);
        reason.push('…');
    }
    reason
}

/// What to do with an output Kafka refused as too large.
pub(crate) enum TooLarge {
    /// Send this instead.
    Replace(Out),
    /// Even a dead letter without payload is refused: the DLQ topic's limit
    /// is too small to take any record (a configuration error).
    Hopeless,
}

impl Out {
    /// Whether it must be sent alone.
    pub fn alone(&self) -> bool {
        match self {
            Out::Enriched { alone, .. } | Out::Dlq { alone, .. } => *alone,
        }
    }

    /// Takes the record out of `slot` (leaving a placeholder to overwrite).
    pub fn take(slot: &mut Out) -> Out {
        std::mem::replace(
            slot,
            Out::Dlq {
                raw: 0,
                code: "",
                reason: String::new(),
                with_payload: false,
                alone: true,
            },
        )
    }

    /// The same record, to be sent alone.
    pub fn isolated(self) -> Out {
        match self {
            Out::Enriched {
                partition,
                record,
                raw,
                ..
            } => Out::Enriched {
                partition,
                record,
                raw,
                alone: true,
            },
            Out::Dlq {
                raw,
                code,
                reason,
                with_payload,
                ..
            } => Out::Dlq {
                raw,
                code,
                reason,
                with_payload,
                alone: true,
            },
        }
    }

    /// The record to send instead of this one, which Kafka refused as too
    /// large (`error`) when sent alone: an enriched record becomes a dead
    /// letter of its raw event; a dead letter loses its payload.
    pub fn too_large(self, raws: &[Raw], error: &str) -> TooLarge {
        match self {
            Out::Enriched { record, raw, .. } => {
                let raw_bytes = raws.get(raw).map_or(0, |r| r.payload.len());
                TooLarge::Replace(Out::Dlq {
                    raw,
                    code: "too_large",
                    reason: bounded_reason(format!(
                        "the enriched {} is {} bytes (raw {raw_bytes} bytes): Kafka refused it as too large: {error}",
                        record.kind.label(),
                        record.value.len(),
                    )),
                    with_payload: true,
                    alone: true,
                })
            }
            Out::Dlq {
                raw,
                code,
                reason,
                with_payload: true,
                ..
            } => {
                let raw_bytes = raws.get(raw).map_or(0, |r| r.payload.len());
                TooLarge::Replace(Out::Dlq {
                    raw,
                    code,
                    reason: bounded_reason(format!(
                        "{reason} (the raw event's {raw_bytes} bytes are omitted: too large for the DLQ as well)"
                    )),
                    with_payload: false,
                    alone: true,
                })
            }
            Out::Dlq {
                with_payload: false,
                ..
            } => TooLarge::Hopeless,
        }
    }
}

/// Whether Kafka refused a record for its size (client or broker side).
pub(crate) fn is_too_large(e: &KafkaError) -> bool {
    matches!(
        e.rdkafka_error_code(),
        Some(RDKafkaErrorCode::MessageSizeTooLarge | RDKafkaErrorCode::MessageBatchTooLarge)
    )
}

/// The router's producer context: failed deliveries of the current
/// attempt, by output index. A delivery report of an earlier attempt (an
/// aborted transaction's purged records arrive later) is ignored: the
/// opaque carries the attempt's number in its high bits.
#[derive(Default)]
pub(crate) struct Deliveries {
    attempt: AtomicUsize,
    failed: Mutex<Vec<(usize, KafkaError)>>,
}

impl Deliveries {
    /// Starts a new attempt: forgets the failures noted so far.
    pub fn start_attempt(&self) {
        self.attempt.fetch_add(1, Ordering::Relaxed);
        self.take();
    }

    /// The opaque of output `index` in the current attempt.
    pub fn opaque(&self, index: usize) -> usize {
        (self.attempt.load(Ordering::Relaxed) << 32) | (index & 0xffff_ffff)
    }

    /// The failures of the current attempt noted since the last call.
    pub fn take(&self) -> Vec<(usize, KafkaError)> {
        std::mem::take(&mut *self.failed.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

impl ClientContext for Deliveries {}

impl ProducerContext for Deliveries {
    type DeliveryOpaque = usize;

    fn delivery(&self, result: &DeliveryResult<'_>, opaque: usize) {
        if let Err((e, _)) = result {
            if opaque >> 32 == self.attempt.load(Ordering::Relaxed) & 0xffff_ffff {
                self.failed
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push((opaque & 0xffff_ffff, e.clone()));
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::process::OutKind;
    use pkgstream_schemas::EventId;

    #[test]
    fn too_large_becomes_a_dead_letter_then_loses_its_payload() {
        let raws = vec![Raw {
            lane: Lane::Inventory,
            partition: 1,
            offset: 7,
            timestamp: None,
            key: None,
            payload: vec![0; 300],
        }];
        let out = Out::Enriched {
            partition: 1,
            record: Enriched {
                id: EventId([0; 16]),
                richness: 0,
                kind: OutKind::Snapshot,
                key: vec![],
                value: vec![0; 400],
            },
            raw: 0,
            alone: false,
        };
        let TooLarge::Replace(dlq) = out.too_large(&raws, "Broker: Message size too large") else {
            panic!("an enriched record always has a dead letter");
        };
        let Out::Dlq {
            code,
            ref reason,
            with_payload: true,
            alone: true,
            ..
        } = dlq
        else {
            panic!("a dead letter with payload, sent alone");
        };
        assert_eq!(code, "too_large");
        assert!(
            reason.contains("snapshot is 400 bytes (raw 300 bytes)"),
            "{reason}"
        );
        let TooLarge::Replace(bare) = dlq.too_large(&raws, "again") else {
            panic!("a dead letter with payload can go without");
        };
        assert!(matches!(
            bare,
            Out::Dlq {
                with_payload: false,
                ..
            }
        ));
        assert!(matches!(bare.too_large(&raws, "x"), TooLarge::Hopeless));
        let long = bounded_reason("é".repeat(2000));
        assert!(long.len() <= MAX_REASON + '…'.len_utf8());
    }
}
