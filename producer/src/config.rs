//! `pkgstream-emit` configuration: one TOML file (`/etc/pkgstream/emit.toml`
//! by default, see `config/emit.example.toml`) with environment overrides
//! (`PKGSTREAM__SPOOL__DIR=/var/spool/pkgstream`). Unknown keys are errors.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::spool::SpoolLimits;
use crate::ProducerError;

/// Default location of the configuration file.
pub const DEFAULT_PATH: &str = "/etc/pkgstream/emit.toml";

/// The whole emitter configuration.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmitConfig {
    /// Where Kafka is.
    #[serde(default)]
    pub kafka: KafkaConfig,
    /// Topic names.
    #[serde(default)]
    pub topics: TopicsConfig,
    /// The local spool.
    #[serde(default)]
    pub spool: SpoolConfig,
    /// How `flush` ships the spool.
    #[serde(default)]
    pub flush: FlushConfig,
    /// Where the host identity is read from.
    #[serde(default)]
    pub host: HostConfig,
}

/// `[kafka]`: the cluster the host ships to.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaConfig {
    /// Bootstrap servers, comma separated.
    #[serde(default = "default_brokers")]
    pub brokers: String,
    /// Client id shown in broker logs and quotas.
    #[serde(default = "default_client_id")]
    pub client_id: String,
}

/// `[topics]`: where each lane goes.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopicsConfig {
    /// Topic for change events.
    #[serde(default = "default_changes_topic")]
    pub changes_raw: String,
    /// Topic for inventory snapshots.
    #[serde(default = "default_inventory_topic")]
    pub inventory_raw: String,
}

/// `[spool]`: the durable local queue.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SpoolConfig {
    /// Spool directory (created if missing).
    #[serde(default = "default_spool_dir")]
    pub dir: PathBuf,
    /// Upper bound on the spool's size in bytes (inventory snapshots are
    /// evicted first; change events are never dropped).
    #[serde(default = "default_max_bytes")]
    pub max_bytes: u64,
    /// Size at which a change segment is closed and a new one started.
    #[serde(default = "default_segment_bytes")]
    pub segment_bytes: u64,
    /// How long `record` waits for the spool lock, in milliseconds.
    #[serde(default = "default_lock_timeout_ms")]
    pub lock_timeout_ms: u64,
}

/// `[flush]`: shipping to Kafka.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FlushConfig {
    /// A flush gives up (exit 75, nothing lost) after this many seconds.
    #[serde(default = "default_flush_timeout_secs")]
    pub timeout_secs: u64,
    /// Records read from the spool and sent per round.
    #[serde(default = "default_batch_events")]
    pub batch_events: usize,
}

/// `[host]`: where the host identity comes from (overridable for tests and
/// containers).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostConfig {
    /// File holding the machine id.
    #[serde(default = "default_machine_id_file")]
    pub machine_id_file: PathBuf,
    /// os-release file (ID, VERSION_ID).
    #[serde(default = "default_os_release_file")]
    pub os_release_file: PathBuf,
    /// File holding the hostname.
    #[serde(default = "default_hostname_file")]
    pub hostname_file: PathBuf,
}

fn default_brokers() -> String {
    "127.0.0.1:9092".into()
}
fn default_client_id() -> String {
    "pkgstream-emit".into()
}
fn default_changes_topic() -> String {
    "pkgstream.changes.raw".into()
}
fn default_inventory_topic() -> String {
    "pkgstream.inventory.raw".into()
}
fn default_spool_dir() -> PathBuf {
    "/var/spool/pkgstream".into()
}
fn default_max_bytes() -> u64 {
    256 << 20
}
fn default_segment_bytes() -> u64 {
    8 << 20
}
fn default_lock_timeout_ms() -> u64 {
    2_000
}
fn default_flush_timeout_secs() -> u64 {
    30
}
fn default_batch_events() -> usize {
    10_000
}
fn default_machine_id_file() -> PathBuf {
    "/etc/machine-id".into()
}
fn default_os_release_file() -> PathBuf {
    "/etc/os-release".into()
}
fn default_hostname_file() -> PathBuf {
    "/proc/sys/kernel/hostname".into()
}

macro_rules! default_from_serde {
    ($($t:ty),*) => {$(
        impl Default for $t {
            fn default() -> Self {
                // Every field has a serde default, so an empty table parses.
                #[allow(clippy::expect_used)]
                serde_json::from_str("{}").expect("all fields have defaults")
            }
        }
    )*};
}
default_from_serde!(
    KafkaConfig,
    TopicsConfig,
    SpoolConfig,
    FlushConfig,
    HostConfig
);

impl EmitConfig {
    /// Loads defaults, then `path` (required when given; `DEFAULT_PATH` is
    /// used only if it exists), then `PKGSTREAM__*` environment variables,
    /// and validates the result.
    pub fn load(path: Option<&Path>) -> Result<EmitConfig, ProducerError> {
        let mut builder = config::Config::builder();
        match path {
            Some(p) => {
                builder = builder.add_source(
                    config::File::from(p)
                        .format(config::FileFormat::Toml)
                        .required(true),
                )
            }
            None if Path::new(DEFAULT_PATH).exists() => {
                builder = builder.add_source(
                    config::File::from(Path::new(DEFAULT_PATH)).format(config::FileFormat::Toml),
                )
            }
            None => {}
        }
        let builder = builder.add_source(
            config::Environment::with_prefix("PKGSTREAM")
                .separator("__")
                .try_parsing(true),
        );
        let cfg: EmitConfig = builder
            .build()
            .and_then(|c| c.try_deserialize())
            .map_err(|e| {
                ProducerError::Config(format!(
                    "{e}{}",
                    path.map(|p| format!(" (file {})", p.display()))
                        .unwrap_or_default()
                ))
            })?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Checks values that parse but cannot work, without any I/O.
    pub fn validate(&self) -> Result<(), ProducerError> {
        let bad = |msg: String| Err(ProducerError::Config(msg));
        if self.kafka.brokers.trim().is_empty() {
            return bad("kafka.brokers is empty".into());
        }
        if self.topics.changes_raw.is_empty() || self.topics.inventory_raw.is_empty() {
            return bad("topics.changes_raw and topics.inventory_raw must be set".into());
        }
        if self.spool.segment_bytes < 4096 || self.spool.segment_bytes > self.spool.max_bytes {
            return bad(format!(
                "spool.segment_bytes ({}) must be at least 4096 and at most spool.max_bytes ({})",
                self.spool.segment_bytes, self.spool.max_bytes
            ));
        }
        if self.flush.timeout_secs == 0 || self.flush.batch_events == 0 {
            return bad("flush.timeout_secs and flush.batch_events must be positive".into());
        }
        Ok(())
    }

    /// The spool limits this configuration asks for.
    pub fn spool_limits(&self) -> SpoolLimits {
        SpoolLimits {
            max_bytes: self.spool.max_bytes,
            segment_bytes: self.spool.segment_bytes,
            lock_timeout: Duration::from_millis(self.spool.lock_timeout_ms),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn load_text(text: &str) -> Result<EmitConfig, ProducerError> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("emit.toml");
        std::fs::write(&path, text).unwrap();
        EmitConfig::load(Some(&path))
    }

    #[test]
    fn defaults_and_file_values() {
        let cfg = load_text("[kafka]\nbrokers = \"k1:9092,k2:9092\"\n[spool]\ndir = \"/tmp/x\"\n")
            .unwrap();
        assert_eq!(cfg.kafka.brokers, "k1:9092,k2:9092");
        assert_eq!(cfg.spool.dir, PathBuf::from("/tmp/x"));
        assert_eq!(cfg.spool.max_bytes, 256 << 20);
        assert_eq!(cfg.topics.changes_raw, "pkgstream.changes.raw");
    }

    #[test]
    fn unknown_key_is_an_error_naming_it() {
        let err = load_text("[spool]\ndirr = \"/tmp/x\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("dirr"), "{err}");
        let err = load_text("[kafak]\nbrokers = \"x\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("kafak"), "{err}");
    }

    #[test]
    fn impossible_values_are_rejected() {
        let err = load_text("[spool]\nsegment_bytes = 10\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("spool.segment_bytes"), "{err}");
        assert!(load_text("[flush]\ntimeout_secs = \"soon\"\n").is_err());
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod example_file {
    use super::*;

    #[test]
    fn example_file_is_the_defaults() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/emit.example.toml");
        let file = EmitConfig::load(Some(&path)).unwrap();
        assert_eq!(
            format!("{file:?}"),
            format!("{:?}", EmitConfig::default()),
            "config/emit.example.toml drifted from the defaults"
        );
    }
}
