//! The audit replay into an index (`pkgstream replay --format index`):
//! [`AuditIndexer`] drives one lane ([`super::lane`]) without a consumer
//! group — history documents only, the live sink's ids, batching, item
//! retries and backoff; refused events are returned in the report instead
//! of the DLQ, and no offsets are stored.

use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use pkgstream_runtime::shutdown::Shutdown;

use super::client::{CallError, EngineClient};
use super::documents::Indices;
use super::lane::{Batch, Lane, LaneStop, Mode, Msg};
use super::setup::setup_history;
use super::sink::SearchSinkMetrics;
use crate::config::SearchSinkConfig;
use crate::SinkError;

/// An event the engine refused for good during an audit replay.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuditRejection {
    /// Its partition in the replayed topic.
    pub partition: i32,
    /// Its offset.
    pub offset: i64,
    /// `index_rejected` or `undecodable`.
    pub code: &'static str,
    /// The engine's (or the decoder's) reason.
    pub reason: String,
}

/// What an audit replay wrote.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AuditReport {
    /// Changes handed in.
    pub events: u64,
    /// Of those, already in the index before this replay (same event id:
    /// a 409, nothing changed; a 409 after a request of ours that failed
    /// as a whole may be our own write and is not counted).
    pub already_present: u64,
    /// Refused for good, with the reason; not in the index.
    pub rejected: Vec<AuditRejection>,
}

/// Writes enriched changes into the change history under a prefix of the
/// caller's choosing, with the live sink's own batching, documents, item
/// retries and backoff — so an audit index is, document for document, what
/// the live sink wrote for the same events. History only: the package and
/// host state are the live sink's (a range cannot rebuild them). Into the
/// live prefix it changes nothing: every id is there already (409).
pub struct AuditIndexer {
    lane: Lane,
    events: u64,
}

impl AuditIndexer {
    /// Reaches the engine and installs the history template under
    /// `cfg.index_prefix` (kept if the prefix has one). `topic` names the
    /// source in the report; an unreachable engine is an error at once.
    pub fn open(
        cfg: &SearchSinkConfig,
        topic: &str,
        shutdown: &Shutdown,
    ) -> Result<AuditIndexer, SinkError> {
        let client = EngineClient::new(cfg)?;
        let idx = Indices::new(&cfg.index_prefix);
        setup_history(&client, &idx, cfg).map_err(|e| match e {
            CallError::Fatal(e) => e,
            CallError::Retry(reason) => SinkError::Engine {
                url: client.display_url(),
                what: "reaching the engine".into(),
                reason,
            },
        })?;
        Ok(AuditIndexer {
            lane: Lane {
                id: 0,
                client,
                idx,
                cfg: cfg.clone(),
                topic: topic.to_owned(),
                mode: Mode::Audit {
                    rejected: Vec::new(),
                    duplicates: 0,
                },
                metrics: Arc::new(SearchSinkMetrics::new()?),
                engine_down: Arc::new([AtomicBool::new(false)]),
                shutdown: shutdown.clone(),
                batch: Batch::default(),
                queued: Arc::default(),
                chunks: Default::default(),
            },
            events: 0,
        })
    }

    /// Adds one enriched change (its bytes as read from Kafka); sends a
    /// bulk when the batch is full. Waits out an engine that stops
    /// answering, until shutdown.
    pub fn push(&mut self, partition: i32, offset: i64, payload: &[u8]) -> Result<(), SinkError> {
        self.events += 1;
        let lane = &mut self.lane;
        lane.add(Msg {
            partition,
            offset,
            key: None,
            payload: payload.to_vec(),
        })
        .map_err(|e| interrupted(e, &lane.client))?;
        if lane.batch.msgs.len() >= lane.cfg.batch_events
            || lane.batch.body.len() >= lane.cfg.batch_bytes
        {
            lane.flush().map_err(|e| interrupted(e, &lane.client))?;
        }
        Ok(())
    }

    /// Sends what is left and reports.
    pub fn finish(mut self) -> Result<AuditReport, SinkError> {
        let lane = &mut self.lane;
        lane.flush().map_err(|e| interrupted(e, &lane.client))?;
        let (rejected, duplicates) = match &mut lane.mode {
            Mode::Audit {
                rejected,
                duplicates,
            } => (std::mem::take(rejected), *duplicates),
            Mode::Live { .. } => (Vec::new(), 0),
        };
        Ok(AuditReport {
            events: self.events,
            already_present: duplicates,
            rejected,
        })
    }
}

fn interrupted(e: LaneStop, client: &EngineClient) -> SinkError {
    match e {
        LaneStop::Fatal(e) => e,
        LaneStop::Interrupted => SinkError::Engine {
            url: client.display_url(),
            what: "bulk".into(),
            reason:
                "interrupted while the engine did not answer; the batch in hand was not written"
                    .into(),
        },
    }
}
