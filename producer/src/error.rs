//! The one error type of the host side.

use std::path::PathBuf;

/// Exit status of `record` when its configuration is broken but the events
/// were spooled anyway, with the fallback configuration
/// ([`crate::EmitConfig::load_or_fallback`]): nothing is lost, the
/// configuration needs fixing. Outside `sysexits.h` (64–78) on purpose, so
/// that it cannot be mistaken for 78, "bad configuration, nothing done".
pub const EXIT_RECORDED_WITH_FALLBACK_CONFIG: u8 = 79;

/// Everything that can go wrong on the host side, each with what to do.
#[derive(Debug, thiserror::Error)]
pub enum ProducerError {
    /// The configuration file or an environment override is wrong.
    #[error("configuration: {0}")]
    Config(String),
    /// A hook sent an event that cannot be recorded.
    #[error("{source_name} line {line}: {reason}")]
    Input {
        /// Where the input came from (`stdin`, a file name).
        source_name: String,
        /// 1-based line number.
        line: usize,
        /// What is wrong, naming the field.
        reason: String,
    },
    /// The host identity could not be read.
    #[error("host identity: cannot read {path}: {reason}")]
    HostIdentity {
        /// The file that was read.
        path: PathBuf,
        /// Why it failed.
        reason: String,
    },
    /// Spool I/O failed.
    #[error("spool {path}: {op}: {source}")]
    SpoolIo {
        /// The file or directory.
        path: PathBuf,
        /// What was being done.
        op: &'static str,
        /// The OS error.
        source: std::io::Error,
    },
    /// Another process held the spool lock for too long.
    #[error(
        "spool {path}: lock not acquired within {waited_ms} ms (another pkgstream-emit is stuck?)"
    )]
    LockTimeout {
        /// The lock file.
        path: PathBuf,
        /// How long we waited.
        waited_ms: u64,
    },
    /// The spool is full and the record is one the policy drops.
    #[error("spool {path} is full ({used} of {max} bytes, all unshipped change events): inventory snapshot not recorded")]
    SpoolFull {
        /// The spool directory.
        path: PathBuf,
        /// Bytes in use.
        used: u64,
        /// Configured bound.
        max: u64,
    },
    /// Kafka could not be reached or did not acknowledge in time.
    #[error("Kafka at {brokers} unreachable: {reason}; {pending} event(s) stay spooled for the next flush")]
    KafkaUnavailable {
        /// Bootstrap servers.
        brokers: String,
        /// librdkafka's reason.
        reason: String,
        /// Events not acknowledged.
        pending: u64,
    },
    /// Kafka answered but refuses this host's records (authorization, no
    /// such topic): nothing is lost, but retrying will not help.
    #[error("Kafka at {brokers} refuses records for topic {topic}: {reason}; {pending} event(s) stay spooled until the configuration or the ACLs are fixed")]
    KafkaRefused {
        /// Bootstrap servers.
        brokers: String,
        /// The topic written to.
        topic: String,
        /// librdkafka's reason.
        reason: String,
        /// Events not acknowledged.
        pending: u64,
    },
    /// The Kafka client could not be created (bad client setting).
    #[error("Kafka client: {0}")]
    KafkaClient(String),
    /// The rpmdb could not be read for an inventory snapshot.
    #[error("inventory: {0}")]
    Inventory(String),
    /// The rpmdb lists no package: the wrong root or dbpath, most likely
    /// (an installed system always has packages).
    #[error("inventory: no package in the rpmdb of {root} (looked at {looked_at}); an installed system always has packages, so this is the wrong root or --dbpath; nothing recorded (--allow-empty records an empty snapshot anyway)")]
    InventoryEmpty {
        /// The root read.
        root: String,
        /// The database locations tried, and what each held.
        looked_at: String,
    },
    /// An event could not be encoded.
    #[error(transparent)]
    Schema(#[from] pkgstream_schemas::SchemaError),
}

impl ProducerError {
    /// The `sysexits.h` code a command exits with for this error, so hooks
    /// and systemd can tell bad input (65), an empty rpmdb (66), a full
    /// spool or I/O error (74), an unreachable Kafka (75, the only transient
    /// one), a Kafka that refuses the records (77) and bad configuration
    /// (78).
    pub fn exit_code(&self) -> u8 {
        match self {
            ProducerError::Input { .. } | ProducerError::Schema(_) => 65,
            ProducerError::InventoryEmpty { .. } => 66,
            ProducerError::HostIdentity { .. }
            | ProducerError::Inventory(_)
            | ProducerError::SpoolIo { .. }
            | ProducerError::LockTimeout { .. }
            | ProducerError::SpoolFull { .. } => 74,
            ProducerError::KafkaUnavailable { .. } => 75,
            ProducerError::KafkaRefused { .. } => 77,
            ProducerError::Config(_) | ProducerError::KafkaClient(_) => 78,
        }
    }
}
