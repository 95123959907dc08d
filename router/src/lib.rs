//! pkgstream router: turns the raw topics into `pkgstream.changes.enriched`.
//!
//! For every raw event: decode and validate it with any shipped schema
//! version (poison goes to `pkgstream.dlq` with the reason in headers),
//! enrich it with host metadata, drop duplicates by `event_id`, and produce
//! it — all inside one Kafka transaction per batch together with the
//! consumer offsets, so the enriched topic (read_committed) holds each
//! event exactly once whatever crashes happen.
//!
//! - [`pipeline`]: the Kafka loop (transactions, rebalances, window rebuild,
//!   host table sources);
//! - [`process`]: the per-event work, I/O free;
//! - `rebuild`: dedupe windows rebuilt on a worker thread while the loop
//!   keeps polling (the partition paused, its input held);
//! - `output`: what a transaction produces, delivery tracking, and outputs
//!   too large for Kafka turned into dead letters;
//! - [`hosts`]: the host table (CSV file + compacted topic) and maintenance windows;
//! - [`dedupe`]: the bounded dedupe window;
//! - [`inventory`]: lost changes inferred from consecutive snapshots;
//! - [`chunks`]: chunked snapshots reassembled for `inventory`;
//! - [`config`], [`metrics`], and [`RouterError`].

// `Instant::now() - d` panics where the clock started less than `d` ago
// (a machine just booted, on platforms whose Instant cannot go below zero).
#![deny(clippy::unchecked_time_subtraction)]

pub mod chunks;
pub mod config;
pub mod dedupe;
pub mod hosts;
pub mod inventory;
pub mod metrics;
mod output;
pub mod pipeline;
pub mod process;
mod rebuild;

pub use config::RouterConfig;
pub use pipeline::Router;

use std::path::PathBuf;

/// Everything that stops the router or one of its sources.
#[derive(Debug, thiserror::Error)]
pub enum RouterError {
    /// Kafka refused or failed an operation (retried with fresh clients).
    #[error("Kafka at {brokers}: {what}: {reason}")]
    Kafka {
        /// Bootstrap servers.
        brokers: String,
        /// The operation.
        what: &'static str,
        /// librdkafka's reason.
        reason: String,
    },
    /// A Kafka client setting is invalid (fatal).
    #[error("Kafka client configuration: {0}")]
    KafkaClient(String),
    /// The topics cannot work as configured (fatal).
    #[error("{0}")]
    Topology(String),
    /// The hosts CSV file is wrong (fatal at start, a warning on reload).
    #[error("hosts file {path} line {line}: {reason}")]
    HostsFile {
        /// The file.
        path: PathBuf,
        /// 1-based line (0 when the file cannot be opened).
        line: u64,
        /// What is wrong, naming the column.
        reason: String,
    },
}

impl RouterError {
    /// Errors a restart cannot fix.
    pub fn is_fatal(&self) -> bool {
        matches!(
            self,
            RouterError::Topology(_) | RouterError::HostsFile { .. } | RouterError::KafkaClient(_)
        )
    }
}
