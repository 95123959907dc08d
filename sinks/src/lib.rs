//! pkgstream sinks: read `pkgstream.changes.enriched` and put it where
//! operators look.
//!
//! - [`search`]: the search sink (`pkgstream sink search`) — bulk indexing
//!   into Elasticsearch/OpenSearch: the change history, the current package
//!   state per host and one document per host; offsets are committed only
//!   for events the engine acknowledged;
//! - [`metrics`]: the metrics sink (`pkgstream sink metrics`) — counters
//!   and drift gauges, pushed to Prometheus by remote write and served on
//!   `/metrics`;
//! - [`dlq`]: the dead-letter producer both share;
//! - [`http`]: TLS and credentials of both sinks' HTTP clients;
//! - [`config`]: the `[search_sink]` and `[metrics_sink]` sections;
//! - [`SinkError`]: the one error type.
//!
//! The alert rules, the Grafana dashboard and the Kibana saved objects that
//! read what these sinks write live beside this crate in `sinks/prometheus/`,
//! `sinks/grafana/` and `sinks/kibana/`. Sinks depend on `pkgstream-schemas`
//! for the contract and never on the router.

pub mod config;
pub mod dlq;
pub mod http;
pub mod metrics;
pub mod search;

/// Errors of the sinks.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// A configuration value is wrong.
    #[error("configuration: {key}: {reason}")]
    Config {
        /// The key, e.g. `search_sink.url`.
        key: String,
        /// Why.
        reason: String,
    },
    /// Kafka refused or failed.
    #[error("Kafka at {brokers}: {what}: {reason}")]
    Kafka {
        /// Bootstrap servers.
        brokers: String,
        /// What we were doing.
        what: String,
        /// What went wrong.
        reason: String,
    },
    /// The search engine refused a request that retrying cannot fix
    /// (authentication, a malformed request, a missing permission).
    #[error("search engine at {url}: {what}: {reason}")]
    Engine {
        /// Cluster URL (without credentials).
        url: String,
        /// The request.
        what: String,
        /// The engine's answer.
        reason: String,
    },
    /// Prometheus refused the pushed series.
    #[error("Prometheus remote write to {url}: {reason}")]
    RemoteWrite {
        /// Endpoint.
        url: String,
        /// Its answer.
        reason: String,
    },
    /// Metrics registration failed (a bug).
    #[error("metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    /// A search-sink lane stopped while the sink was running (a panic, or
    /// a lane that ended on its own): its partitions would go unindexed,
    /// so the sink stops.
    #[error("search sink lane {lane} died: {reason}")]
    LaneDied {
        /// The lane.
        lane: usize,
        /// Its panic message or why it stopped.
        reason: String,
    },
    /// A local I/O failure (threads, sockets).
    #[error("{0}")]
    Io(String),
}
