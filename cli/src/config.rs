//! `pkgstream.toml`: the one configuration file of the central side (see
//! `config/pkgstream.example.toml`). Each stage reads its own section;
//! `[kafka]` and `[topics]` are shared. Unknown sections or keys are errors.

use std::path::Path;

use serde::Deserialize;

use pkgstream_router::RouterConfig;
use pkgstream_runtime::config::{KafkaConfig, TopicsConfig};
use pkgstream_sinks::config::{MetricsSinkConfig, SearchSinkConfig};

/// The whole central configuration.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PipelineConfig {
    /// `[kafka]`.
    #[serde(default)]
    pub kafka: KafkaConfig,
    /// `[topics]`.
    #[serde(default)]
    pub topics: TopicsConfig,
    /// `[router]`.
    #[serde(default)]
    pub router: RouterConfig,
    /// `[search_sink]`.
    #[serde(default)]
    pub search_sink: SearchSinkConfig,
    /// `[metrics_sink]`.
    #[serde(default)]
    pub metrics_sink: MetricsSinkConfig,
}

impl PipelineConfig {
    /// Loads defaults, the file (if any) and `PKGSTREAM__*` overrides, and
    /// validates without I/O.
    pub fn load(path: Option<&Path>) -> anyhow::Result<PipelineConfig> {
        let cfg: PipelineConfig =
            pkgstream_runtime::config::load_with_lists(path, &["metrics_sink.watch_packages"])?;
        cfg.router
            .validate()
            .map_err(|e| anyhow::anyhow!("configuration: {e}"))?;
        cfg.kafka.validate()?;
        cfg.search_sink.validate()?;
        cfg.metrics_sink.validate()?;
        Ok(cfg)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn example_file_is_the_defaults() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/pkgstream.example.toml");
        let file = PipelineConfig::load(Some(&path)).unwrap();
        let defaults = PipelineConfig::default();
        assert_eq!(
            format!("{file:?}"),
            format!("{defaults:?}"),
            "config/pkgstream.example.toml drifted from the defaults"
        );
        // In the same test: environment variables are process-wide.
        std::env::set_var("PKGSTREAM__METRICS_SINK__WATCH_PACKAGES", "kernel,glibc");
        std::env::set_var("PKGSTREAM__KAFKA__BROKERS", "k1:9092,k2:9092");
        let cfg = PipelineConfig::load(None);
        std::env::remove_var("PKGSTREAM__METRICS_SINK__WATCH_PACKAGES");
        std::env::remove_var("PKGSTREAM__KAFKA__BROKERS");
        let cfg = cfg.unwrap();
        assert_eq!(cfg.metrics_sink.watch_packages, ["kernel", "glibc"]);
        assert_eq!(cfg.kafka.brokers, "k1:9092,k2:9092");
        // [kafka] is checked before any stage starts.
        std::env::set_var("PKGSTREAM__KAFKA__SASL_USERNAME", "router");
        let err = PipelineConfig::load(None);
        std::env::remove_var("PKGSTREAM__KAFKA__SASL_USERNAME");
        let err = format!("{:#}", err.unwrap_err());
        assert!(
            err.contains("sasl_* settings need security_protocol"),
            "{err}"
        );
    }
}
