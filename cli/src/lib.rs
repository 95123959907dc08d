//! The `pkgstream` command's logic; `main.rs` only parses arguments and
//! wires. It holds the pipeline [`config`] file, [`acls`]: the Kafka ACLs a
//! deployment needs, and [`tail`]: read a
//! pkgstream topic and print each event as one JSON line, decoded with
//! every shipped schema version; [`query`]: `history` and `changes` from
//! the search engine; [`drift`]: the drift report; [`replay`]: a time
//! range of the enriched topic as NDJSON, an Avro container file or an
//! index; [`simulate`]: a fleet simulator writing through the producer's
//! own code. The router and the sinks live in their crates; `pkgstream
//! router` and `pkgstream sink ...` only start them. This crate stays thin
//! glue over them.

pub mod acls;
pub mod config;
pub mod drift;
pub mod query;
pub mod render;
pub mod replay;
pub mod simulate;
pub mod tail;

/// Errors of the `pkgstream` command's library part.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// Kafka could not be reached or answered with an error.
    #[error("Kafka at {brokers}: {reason}")]
    Kafka {
        /// Bootstrap servers.
        brokers: String,
        /// What went wrong.
        reason: String,
    },
    /// The search engine could not be reached or refused the query.
    #[error("search engine at {url}: {reason}")]
    Engine {
        /// Cluster URL.
        url: String,
        /// What went wrong.
        reason: String,
    },
    /// An argument is wrong (unknown host, time in the future, ...).
    #[error("{0}")]
    BadInput(String),
    /// A local spool (of `pkgstream simulate`) could not be written.
    #[error("spool {dir}: {reason}")]
    Spool {
        /// The spool directory.
        dir: std::path::PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// The search sink's code (an audit replay into an index) failed.
    #[error(transparent)]
    Sink(#[from] pkgstream_sinks::SinkError),
    /// Stopped by SIGINT/SIGTERM before the end.
    #[error("interrupted: {0}")]
    Interrupted(String),
    /// The topic does not exist.
    #[error("topic {topic} does not exist on {brokers}")]
    NoSuchTopic {
        /// The topic asked for.
        topic: String,
        /// Bootstrap servers.
        brokers: String,
    },
}
