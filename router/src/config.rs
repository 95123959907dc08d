//! `[router]`: the router's section of `pkgstream.toml`.

use std::path::PathBuf;

use serde::Deserialize;

/// Router settings; every field has a default.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouterConfig {
    /// Consumer group of the raw topics.
    #[serde(default = "d_group_id")]
    pub group_id: String,
    /// Transactional id of this instance. Must be stable across restarts
    /// of one instance and unique among instances (e.g. the pod name).
    #[serde(default = "d_transactional_id")]
    pub transactional_id: String,
    /// Events per transaction at most.
    #[serde(default = "d_batch_events")]
    pub batch_events: usize,
    /// A transaction is committed after this long even if not full.
    #[serde(default = "d_batch_ms")]
    pub batch_ms: u64,
    /// Dedupe window: entries per partition at most.
    #[serde(default = "d_window_entries")]
    pub dedupe_window_entries: usize,
    /// Dedupe window: how long an id is remembered, in seconds.
    #[serde(default = "d_window_secs")]
    pub dedupe_window_secs: u32,
    /// Host group given to hosts in no host table.
    #[serde(default = "d_default_group")]
    pub default_hostgroup: String,
    /// Environment given to hosts in no host table.
    #[serde(default = "d_default_env")]
    pub default_environment: String,
    /// Optional CSV host table (see `hosts.rs`), re-read when it changes.
    #[serde(default)]
    pub hosts_file: Option<PathBuf>,
    /// Where `/metrics`, `/healthz` and `/readyz` listen.
    #[serde(default = "d_metrics_listen")]
    pub metrics_listen: String,
}

fn d_group_id() -> String {
    "pkgstream-router".into()
}
fn d_transactional_id() -> String {
    "pkgstream-router-0".into()
}
fn d_batch_events() -> usize {
    50_000
}
fn d_batch_ms() -> u64 {
    200
}
fn d_window_entries() -> usize {
    1_000_000
}
fn d_window_secs() -> u32 {
    7 * 24 * 3600
}
fn d_default_group() -> String {
    "unassigned".into()
}
fn d_default_env() -> String {
    "unknown".into()
}
fn d_metrics_listen() -> String {
    "127.0.0.1:9108".into()
}

impl Default for RouterConfig {
    fn default() -> Self {
        // Every field has a serde default, so an empty table parses.
        #[allow(clippy::expect_used)]
        serde_json::from_str("{}").expect("all router fields have defaults")
    }
}

impl RouterConfig {
    /// Checks values that parse but cannot work, without I/O.
    pub fn validate(&self) -> Result<(), String> {
        if self.batch_events == 0 || self.batch_ms == 0 {
            return Err("router.batch_events and router.batch_ms must be positive".into());
        }
        if self.dedupe_window_entries == 0 {
            return Err("router.dedupe_window_entries must be positive".into());
        }
        if self.default_hostgroup.is_empty() || self.default_environment.is_empty() {
            return Err(
                "router.default_hostgroup and router.default_environment must not be empty".into(),
            );
        }
        if self.transactional_id.is_empty() || self.group_id.is_empty() {
            return Err("router.transactional_id and router.group_id must not be empty".into());
        }
        Ok(())
    }
}
