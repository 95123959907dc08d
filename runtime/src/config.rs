//! The pipeline configuration file (`pkgstream.toml`, see
//! `config/pkgstream.example.toml`): sections shared by every central stage.

use std::path::Path;

use serde::de::DeserializeOwned;
use serde::Deserialize;

use crate::RuntimeError;

/// `[kafka]`: the cluster and how to authenticate to it, the same type as
/// the host side's (see [`pkgstream_kafka_config`]).
pub use pkgstream_kafka_config::{KafkaConfig, KafkaConfigError, LastCause, Secret};

/// `[topics]`: every topic of the pipeline.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(missing_docs)]
pub struct TopicsConfig {
    #[serde(default = "d_changes_raw")]
    pub changes_raw: String,
    #[serde(default = "d_inventory_raw")]
    pub inventory_raw: String,
    /// Compacted: host metadata for enrichment, keyed by machine id.
    #[serde(default = "d_hosts")]
    pub hosts: String,
    #[serde(default = "d_changes_enriched")]
    pub changes_enriched: String,
    /// Poison events, with the reason in headers.
    #[serde(default = "d_dlq")]
    pub dlq: String,
}

fn d_changes_raw() -> String {
    "pkgstream.changes.raw".into()
}
fn d_inventory_raw() -> String {
    "pkgstream.inventory.raw".into()
}
fn d_hosts() -> String {
    "pkgstream.hosts".into()
}
fn d_changes_enriched() -> String {
    "pkgstream.changes.enriched".into()
}
fn d_dlq() -> String {
    "pkgstream.dlq".into()
}

impl Default for TopicsConfig {
    fn default() -> Self {
        TopicsConfig {
            changes_raw: d_changes_raw(),
            inventory_raw: d_inventory_raw(),
            hosts: d_hosts(),
            changes_enriched: d_changes_enriched(),
            dlq: d_dlq(),
        }
    }
}

/// Reads defaults, then the TOML file `path` (if given; it must exist), then
/// `PKGSTREAM__SECTION__KEY` environment variables, into `T`. Unknown keys
/// are errors that name the key.
pub fn load<T: DeserializeOwned>(path: Option<&Path>) -> Result<T, RuntimeError> {
    load_with_lists(path, &[])
}

/// [`load`], where the environment values of `list_keys` (e.g.
/// `metrics_sink.watch_packages`) are comma-separated lists.
pub fn load_with_lists<T: DeserializeOwned>(
    path: Option<&Path>,
    list_keys: &[&str],
) -> Result<T, RuntimeError> {
    let mut builder = config::Config::builder();
    if let Some(p) = path {
        builder = builder.add_source(
            config::File::from(p)
                .format(config::FileFormat::Toml)
                .required(true),
        );
    }
    let mut env = config::Environment::with_prefix("PKGSTREAM")
        .separator("__")
        .try_parsing(true);
    if !list_keys.is_empty() {
        env = env.list_separator(",");
        for k in list_keys {
            env = env.with_list_parse_key(k);
        }
    }
    builder
        .add_source(env)
        .build()
        .and_then(|c| c.try_deserialize())
        .map_err(|e| {
            RuntimeError::Config(format!(
                "{e}{}",
                path.map(|p| format!(" (file {})", p.display()))
                    .unwrap_or_default()
            ))
        })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[derive(Deserialize, Debug)]
    #[serde(deny_unknown_fields)]
    struct Pipeline {
        #[serde(default)]
        kafka: KafkaConfig,
        #[serde(default)]
        topics: TopicsConfig,
    }

    #[test]
    fn file_values_defaults_and_unknown_keys() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.toml");
        std::fs::write(&path, "[topics]\ndlq = \"my.dlq\"\n").unwrap();
        let p: Pipeline = load(Some(&path)).unwrap();
        assert_eq!(p.topics.dlq, "my.dlq");
        assert_eq!(p.topics.hosts, "pkgstream.hosts");
        assert_eq!(p.kafka.brokers, "127.0.0.1:9092");
        std::fs::write(&path, "[topics]\ndlqq = \"x\"\n").unwrap();
        let err = load::<Pipeline>(Some(&path)).unwrap_err().to_string();
        assert!(err.contains("dlqq"), "{err}");
    }
}
