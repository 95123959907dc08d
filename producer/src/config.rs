//! `pkgstream-emit` configuration: one TOML file (`/etc/pkgstream/emit.toml`
//! by default, see `config/emit.example.toml`) with environment overrides
//! in the host side's own namespace
//! (`PKGSTREAM_EMIT__SPOOL__DIR=/var/spool/pkgstream`), which the central
//! side's `PKGSTREAM__*` can never match. Unknown keys are errors, except
//! for `record`, which falls back ([`EmitConfig::load_or_fallback`]) so that
//! a committed change is spooled whatever the configuration says.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::spool::SpoolLimits;
use crate::ProducerError;

/// Default location of the configuration file.
pub const DEFAULT_PATH: &str = "/etc/pkgstream/emit.toml";

/// Prefix of the environment overrides: `PKGSTREAM_EMIT__<SECTION>__<KEY>`.
/// Distinct from the central side's `PKGSTREAM__`, so neither side ever
/// reads (and rejects) the other's keys.
pub const ENV_PREFIX: &str = "PKGSTREAM_EMIT";

/// Separator between prefix, section and key in environment overrides.
pub const ENV_SEPARATOR: &str = "__";

/// Sections that only the host side has: a `PKGSTREAM__SPOOL__DIR` was meant
/// for `pkgstream-emit` under the old shared namespace and is now ignored.
const HOST_ONLY_SECTIONS: [&str; 3] = ["SPOOL", "FLUSH", "HOST"];

/// A configuration for `record`, which must spool even when the
/// configuration is broken.
#[derive(Debug)]
pub struct Loaded {
    /// The configuration to use: the real one, or the fallback.
    pub config: EmitConfig,
    /// Why the real one could not be used (then `config` is the fallback:
    /// compiled defaults, with `spool.dir` and the `[host]` files taken from
    /// the file and the environment wherever they are readable).
    pub error: Option<ProducerError>,
}

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

/// `[kafka]`: the cluster the host ships to and how it authenticates (mTLS
/// for hosts: `security_protocol = "SSL"` with `ssl_certificate_file` and
/// `ssl_key_file`); the same type as the central side's.
pub use pkgstream_kafka_config::KafkaConfig;

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
    /// Largest record an inventory snapshot is sent as, in bytes: a larger
    /// snapshot is recorded as chunks of at most this size (see
    /// `pkgstream_producer::chunk`). Keep it well under the broker's
    /// `message.max.bytes` (1 MB by default): the router adds its
    /// enrichment to every chunk. At least 16384.
    #[serde(default = "default_snapshot_chunk_bytes")]
    pub snapshot_chunk_bytes: usize,
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
fn default_snapshot_chunk_bytes() -> usize {
    crate::chunk::DEFAULT_CHUNK_BYTES
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
default_from_serde!(TopicsConfig, SpoolConfig, FlushConfig, HostConfig);

impl EmitConfig {
    /// Loads defaults, then `path` (required when given; `DEFAULT_PATH` is
    /// used only if it exists), then `PKGSTREAM_EMIT__*` environment
    /// variables, and validates the result.
    pub fn load(path: Option<&Path>) -> Result<EmitConfig, ProducerError> {
        Self::load_from(path, None)
    }

    /// [`EmitConfig::load`], or when that fails, the fallback that `record`
    /// spools with: compiled defaults, except `spool.dir` and the `[host]`
    /// files, which are taken from each source (file, environment) that
    /// still yields them as text. The error is returned beside it, to be
    /// reported loudly.
    pub fn load_or_fallback(path: Option<&Path>) -> Loaded {
        Self::load_or_fallback_from(path, None)
    }

    fn load_or_fallback_from(path: Option<&Path>, env: Option<&EnvVars>) -> Loaded {
        match Self::load_from(path, env) {
            Ok(config) => Loaded {
                config,
                error: None,
            },
            Err(e) => Loaded {
                config: Self::salvage(path, env),
                error: Some(e),
            },
        }
    }

    /// The fallback of [`EmitConfig::load_or_fallback`].
    fn salvage(path: Option<&Path>, env: Option<&EnvVars>) -> EmitConfig {
        let mut cfg = EmitConfig::default();
        let layers = [
            file_source(path).map(|f| config::Config::builder().add_source(f).build()),
            Some(
                config::Config::builder()
                    .add_source(env_source(env))
                    .build(),
            ),
        ];
        for layer in layers.into_iter().flatten().filter_map(Result::ok) {
            let text = |key: &str| layer.get_string(key).ok().filter(|v| !v.is_empty());
            if let Some(v) = text("spool.dir") {
                cfg.spool.dir = v.into();
            }
            if let Some(v) = text("host.machine_id_file") {
                cfg.host.machine_id_file = v.into();
            }
            if let Some(v) = text("host.os_release_file") {
                cfg.host.os_release_file = v.into();
            }
            if let Some(v) = text("host.hostname_file") {
                cfg.host.hostname_file = v.into();
            }
        }
        cfg
    }

    fn load_from(path: Option<&Path>, env: Option<&EnvVars>) -> Result<EmitConfig, ProducerError> {
        let mut builder = config::Config::builder();
        if let Some(file) = file_source(path) {
            builder = builder.add_source(file);
        }
        let builder = builder.add_source(env_source(env));
        let cfg: EmitConfig = builder
            .build()
            .and_then(|c| c.try_deserialize())
            .map_err(|e| {
                let overrides = env_override_names(env);
                ProducerError::Config(format!(
                    "{e}{}{}",
                    path.map(|p| format!(" (file {})", p.display()))
                        .unwrap_or_default(),
                    if overrides.is_empty() {
                        String::new()
                    } else {
                        format!(" (environment overrides: {})", overrides.join(" "))
                    }
                ))
            })?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Checks values that parse but cannot work, without any I/O.
    pub fn validate(&self) -> Result<(), ProducerError> {
        let bad = |msg: String| Err(ProducerError::Config(msg));
        self.kafka
            .validate()
            .map_err(|e| ProducerError::Config(e.to_string()))?;
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
        if self.flush.snapshot_chunk_bytes < crate::chunk::MIN_CHUNK_BYTES {
            return bad(format!(
                "flush.snapshot_chunk_bytes ({}) must be at least {}",
                self.flush.snapshot_chunk_bytes,
                crate::chunk::MIN_CHUNK_BYTES
            ));
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

/// Environment variables as (name, value), instead of the process's own
/// (for tests).
type EnvVars = config::Map<String, String>;

/// The configuration file source: `path` (required), or `DEFAULT_PATH` when
/// it exists.
fn file_source(
    path: Option<&Path>,
) -> Option<config::File<config::FileSourceFile, config::FileFormat>> {
    match path {
        Some(p) => Some(
            config::File::from(p)
                .format(config::FileFormat::Toml)
                .required(true),
        ),
        None if Path::new(DEFAULT_PATH).exists() => {
            Some(config::File::from(Path::new(DEFAULT_PATH)).format(config::FileFormat::Toml))
        }
        None => None,
    }
}

/// The `PKGSTREAM_EMIT__SECTION__KEY` environment overrides.
fn env_source(env: Option<&EnvVars>) -> config::Environment {
    config::Environment::with_prefix(ENV_PREFIX)
        .separator(ENV_SEPARATOR)
        .try_parsing(true)
        .source(env.cloned())
}

/// Names of the `PKGSTREAM_EMIT__*` variables set, for error messages
/// (names only: values may be secrets).
fn env_override_names(env: Option<&EnvVars>) -> Vec<String> {
    let prefix = format!("{ENV_PREFIX}{ENV_SEPARATOR}");
    let mut names: Vec<String> = match env {
        Some(map) => map.keys().cloned().collect(),
        None => std::env::vars_os()
            .filter_map(|(k, _)| k.into_string().ok())
            .collect(),
    };
    names.retain(|n| n.to_ascii_uppercase().starts_with(&prefix));
    names.sort();
    names
}

/// Environment variables of the old shared namespace that can only have
/// been meant for the host side (`PKGSTREAM__SPOOL__DIR`, ...): ignored now,
/// worth a warning.
pub fn ignored_legacy_env<'a>(names: impl IntoIterator<Item = &'a str>) -> Vec<String> {
    names
        .into_iter()
        .filter(|name| {
            name.strip_prefix("PKGSTREAM__").is_some_and(|rest| {
                HOST_ONLY_SECTIONS
                    .iter()
                    .any(|s| rest.strip_prefix(s).is_some_and(|r| r.starts_with("__")))
            })
        })
        .map(str::to_owned)
        .collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn load_text(text: &str) -> Result<EmitConfig, ProducerError> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("emit.toml");
        std::fs::write(&path, text).unwrap();
        EmitConfig::load_from(Some(&path), Some(&EnvVars::default()))
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

    fn vars(pairs: &[(&str, &str)]) -> EnvVars {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn empty_file() -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("emit.toml");
        std::fs::write(&path, "").unwrap();
        (dir, path)
    }

    #[test]
    fn the_host_side_reads_its_own_env_namespace_and_ignores_the_central_one() {
        let (_dir, path) = empty_file();
        let env = vars(&[
            ("PKGSTREAM_EMIT__KAFKA__BROKERS", "host-kafka:9093"),
            ("PKGSTREAM_EMIT__SPOOL__DIR", "/srv/spool"),
            // The central side's: neither applied nor rejected.
            ("PKGSTREAM__SEARCH_SINK__URL", "https://es:9200"),
            ("PKGSTREAM__KAFKA__BROKERS", "central-kafka:9092"),
            // Not overrides: the emitter's path and config file.
            ("PKGSTREAM_EMIT", "/usr/bin/pkgstream-emit"),
            ("PKGSTREAM_EMIT_CONFIG", "/etc/pkgstream/emit.toml"),
        ]);
        let cfg = EmitConfig::load_from(Some(&path), Some(&env)).unwrap();
        assert_eq!(cfg.kafka.brokers, "host-kafka:9093");
        assert_eq!(cfg.spool.dir, PathBuf::from("/srv/spool"));
    }

    #[test]
    fn a_typo_in_the_host_namespace_is_an_error_naming_key_and_variable() {
        let (_dir, path) = empty_file();
        let env = vars(&[("PKGSTREAM_EMIT__SPOOL__DIRR", "/srv/spool")]);
        let err = EmitConfig::load_from(Some(&path), Some(&env))
            .unwrap_err()
            .to_string();
        assert!(err.contains("dirr"), "{err}");
        assert!(err.contains("PKGSTREAM_EMIT__SPOOL__DIRR"), "{err}");
    }

    #[test]
    fn a_broken_configuration_falls_back_keeping_spool_dir_and_host_files() {
        // An unknown key in the environment: the file's spool and host files stand.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("emit.toml");
        std::fs::write(
            &path,
            "[spool]\ndir = \"/srv/file-spool\"\n[host]\nmachine_id_file = \"/srv/machine-id\"\n",
        )
        .unwrap();
        let env = vars(&[("PKGSTREAM_EMIT__SEARCH_SINK__URL", "x")]);
        let loaded = EmitConfig::load_or_fallback_from(Some(&path), Some(&env));
        assert!(
            loaded
                .error
                .as_ref()
                .unwrap()
                .to_string()
                .contains("search_sink"),
            "{:?}",
            loaded.error
        );
        assert_eq!(loaded.config.spool.dir, PathBuf::from("/srv/file-spool"));
        assert_eq!(
            loaded.config.host.machine_id_file,
            PathBuf::from("/srv/machine-id")
        );
        assert_eq!(loaded.config.kafka.brokers, "127.0.0.1:9092");

        // A file that is not TOML at all: the environment's spool dir stands.
        std::fs::write(&path, "[spool\ndir = ").unwrap();
        let env = vars(&[("PKGSTREAM_EMIT__SPOOL__DIR", "/srv/env-spool")]);
        let loaded = EmitConfig::load_or_fallback_from(Some(&path), Some(&env));
        assert!(loaded.error.is_some());
        assert_eq!(loaded.config.spool.dir, PathBuf::from("/srv/env-spool"));

        // Nothing readable: the compiled default.
        let loaded = EmitConfig::load_or_fallback_from(Some(&path), Some(&vars(&[])));
        assert_eq!(
            loaded.config.spool.dir,
            PathBuf::from("/var/spool/pkgstream")
        );

        // A good configuration has no error.
        std::fs::write(&path, "").unwrap();
        assert!(
            EmitConfig::load_or_fallback_from(Some(&path), Some(&vars(&[])))
                .error
                .is_none()
        );
    }

    #[test]
    fn old_shared_namespace_variables_meant_for_the_host_are_named() {
        assert_eq!(
            ignored_legacy_env([
                "PKGSTREAM__SPOOL__DIR",
                "PKGSTREAM__HOST__MACHINE_ID_FILE",
                "PKGSTREAM__KAFKA__BROKERS",
                "PKGSTREAM__SEARCH_SINK__URL",
                "PKGSTREAM__HOSTS__X",
                "PKGSTREAM_EMIT__SPOOL__DIR",
            ]),
            ["PKGSTREAM__SPOOL__DIR", "PKGSTREAM__HOST__MACHINE_ID_FILE"]
        );
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
        let file = EmitConfig::load_from(Some(&path), Some(&Default::default())).unwrap();
        assert_eq!(
            format!("{file:?}"),
            format!("{:?}", EmitConfig::default()),
            "config/emit.example.toml drifted from the defaults"
        );
    }
}
