//! Plumbing shared by pkgstream's central stages (router, sinks, replay):
//! nothing here knows what an event is.
//!
//! - [`config`]: the `[kafka]` and `[topics]` sections every stage reads,
//!   and [`config::load`], which reads one TOML file plus `PKGSTREAM__*`
//!   environment overrides into a stage's own config type, rejecting
//!   unknown keys;
//! - [`delivery`]: a producer context that remembers failed deliveries;
//! - [`dlq`]: the headers of a dead letter, the same from every stage;
//! - [`health`]: the `/metrics`, `/healthz` and `/readyz` HTTP endpoint;
//! - [`shutdown`]: a flag raised by SIGTERM/SIGINT that loops poll;
//! - [`topics`]: creating missing topics.

pub mod config;
pub mod delivery;
pub mod dlq;
pub mod health;
pub mod shutdown;
pub mod topics;

/// Errors of the shared plumbing.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// The configuration is unreadable or wrong.
    #[error("configuration: {0}")]
    Config(String),
    /// The metrics/health endpoint could not listen.
    #[error("cannot listen on {addr} for /metrics: {reason}")]
    Listen {
        /// The address asked for.
        addr: String,
        /// Why.
        reason: String,
    },
    /// Kafka refused or failed an admin request.
    #[error("Kafka at {brokers}: {reason}")]
    Kafka {
        /// Bootstrap servers.
        brokers: String,
        /// What went wrong.
        reason: String,
    },
    /// The `[kafka]` settings cannot make a client.
    #[error(transparent)]
    KafkaConfig(#[from] config::KafkaConfigError),
    /// Signal handlers could not be installed.
    #[error("cannot install signal handlers: {0}")]
    Signals(String),
}
