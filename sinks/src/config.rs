//! `[search_sink]` and `[metrics_sink]`: the sinks' sections of
//! `pkgstream.toml`. Every field has a default; [`SearchSinkConfig::validate`]
//! and [`MetricsSinkConfig::validate`] check them without I/O.

use std::fmt;

use serde::Deserialize;

use crate::SinkError;

pub use crate::http::TlsConfig;
use crate::http::{has_userinfo, one_source};

/// A secret that never prints (`Debug` shows `***`, and there is no
/// `Display`): passwords, API keys, bearer tokens and the headers made of
/// them.
#[derive(Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct Secret(pub String);

impl Secret {
    /// Whether no value is set.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0.is_empty() { "\"\"" } else { "***" })
    }
}

/// The search sink (`pkgstream sink search`).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SearchSinkConfig {
    /// Base URL of the Elasticsearch/OpenSearch cluster (HTTP REST API),
    /// `http://` or `https://`, without credentials (those go in
    /// `username`/`password` or `api_key`, sent as an `Authorization`
    /// header). The query CLI (`drift`, `history`, `changes`) uses the
    /// same settings.
    #[serde(default = "d_url")]
    pub url: String,
    /// Basic-auth user (empty: no basic auth).
    #[serde(default)]
    pub username: String,
    /// Basic-auth password (better from the environment,
    /// `PKGSTREAM__SEARCH_SINK__PASSWORD`, or from `password_file`).
    #[serde(default)]
    pub password: Secret,
    /// File holding the basic-auth password (its first line), read at
    /// start; instead of `password`.
    #[serde(default)]
    pub password_file: String,
    /// Elasticsearch API key, as the engine returns it in `encoded`
    /// (base64 of `id:api_key`), sent as `Authorization: ApiKey ...`;
    /// instead of `username`/`password`.
    #[serde(default)]
    pub api_key: Secret,
    /// File holding the API key (its first line); instead of `api_key`.
    #[serde(default)]
    pub api_key_file: String,
    /// `[search_sink.tls]`: CA file and client certificate for `https://`.
    #[serde(default)]
    pub tls: TlsConfig,
    /// Prefix of the index names: `<prefix>-changes-YYYY.MM`,
    /// `<prefix>-packages`, `<prefix>-hosts`.
    #[serde(default = "d_index_prefix")]
    pub index_prefix: String,
    /// Consumer group on the enriched topic.
    #[serde(default = "d_search_group")]
    pub group_id: String,
    /// This instance's static membership in the group (Kafka's
    /// `group.instance.id`): stable across the instance's restarts and
    /// unique among the group's instances, so that a restarted instance
    /// (after a crash or a `kill -9`) gets its partitions back at once
    /// instead of after the session timeout. Empty (the default): the host
    /// name and the port of `metrics_listen` (`<hostname>-<port>`; two
    /// instances on one host listen on different ports), or, with port 0,
    /// the host name and the process id (unique, not stable). Letters,
    /// digits, `.`, `_`, `-`; at most 249 characters.
    #[serde(default)]
    pub instance_id: String,
    /// Parallel bulk lanes (requests in flight). Partition `p` always goes
    /// to lane `p % lanes`, so one host's events stay in order.
    #[serde(default = "d_lanes")]
    pub lanes: usize,
    /// A bulk request is sent when it holds this many events...
    #[serde(default = "d_batch_events")]
    pub batch_events: usize,
    /// ... or this many bytes of NDJSON ...
    #[serde(default = "d_batch_bytes")]
    pub batch_bytes: usize,
    /// ... or when its oldest event waited this long.
    #[serde(default = "d_batch_ms")]
    pub batch_ms: u64,
    /// First retry delay of a failed bulk or of rejected items (429/5xx);
    /// doubled per attempt, with jitter, up to `retry_max_ms`. The sink
    /// retries for as long as the engine is down: nothing is dropped.
    #[serde(default = "d_retry_initial_ms")]
    pub retry_initial_ms: u64,
    /// Longest retry delay.
    #[serde(default = "d_retry_max_ms")]
    pub retry_max_ms: u64,
    /// HTTP timeout of one request, in seconds.
    #[serde(default = "d_request_timeout_secs")]
    pub request_timeout_secs: u64,
    /// Days the change history is kept, where the engine has a lifecycle
    /// manager (ILM on Elasticsearch, ISM on OpenSearch); 0 keeps forever.
    #[serde(default = "d_retention_days")]
    pub retention_days: u32,
    /// Primary shards of the change indices.
    #[serde(default = "d_shards")]
    pub shards: u32,
    /// Replicas of every index (0 on a one-node cluster).
    #[serde(default)]
    pub replicas: u32,
    /// Where `/metrics`, `/healthz` and `/readyz` listen.
    #[serde(default = "d_search_metrics_listen")]
    pub metrics_listen: String,
}

/// The metrics sink (`pkgstream sink metrics`).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsSinkConfig {
    /// Prometheus remote-write endpoint; empty disables pushing (then
    /// Prometheus scrapes `/metrics`). No credentials in it: use
    /// `remote_write_username`/`_password` or `remote_write_bearer_token`.
    #[serde(default = "d_remote_write_url")]
    pub remote_write_url: String,
    /// Basic-auth user for remote write (empty: no basic auth).
    #[serde(default)]
    pub remote_write_username: String,
    /// Basic-auth password for remote write (better from the environment
    /// or `remote_write_password_file`).
    #[serde(default)]
    pub remote_write_password: Secret,
    /// File holding the remote-write password (its first line).
    #[serde(default)]
    pub remote_write_password_file: String,
    /// Bearer token for remote write (`Authorization: Bearer ...`);
    /// instead of basic auth.
    #[serde(default)]
    pub remote_write_bearer_token: Secret,
    /// File holding the bearer token (its first line).
    #[serde(default)]
    pub remote_write_bearer_token_file: String,
    /// `[metrics_sink.remote_write_tls]`: CA file and client certificate
    /// for an `https://` remote-write endpoint.
    #[serde(default)]
    pub remote_write_tls: TlsConfig,
    /// Seconds between two pushes.
    #[serde(default = "d_push_interval_secs")]
    pub push_interval_secs: u64,
    /// Packages whose versions are tracked per host group (the drift
    /// signal); every other package only counts in the change counters.
    #[serde(default = "d_watch")]
    pub watch_packages: Vec<String>,
    /// Consumer group under which the sink records how far it counted.
    #[serde(default = "d_metrics_group")]
    pub group_id: String,
    /// At most this many version series per watched package and host
    /// group (the versions most hosts run); hosts on any other version
    /// count under `version="other"`, as do versions longer than 128 bytes.
    #[serde(default = "d_max_versions")]
    pub max_versions_per_group: usize,
    /// Seconds Kafka may go without answering, or pushes to
    /// `remote_write_url` may keep failing, before `/readyz` says 503.
    #[serde(default = "d_unready_after_secs")]
    pub unready_after_secs: u64,
    /// Where `/metrics`, `/healthz` and `/readyz` listen.
    #[serde(default = "d_metrics_metrics_listen")]
    pub metrics_listen: String,
}

fn d_url() -> String {
    "http://127.0.0.1:9200".into()
}
fn d_index_prefix() -> String {
    "pkgstream".into()
}
fn d_search_group() -> String {
    "pkgstream-sink-search".into()
}
fn d_lanes() -> usize {
    4
}
fn d_batch_events() -> usize {
    5_000
}
fn d_batch_bytes() -> usize {
    8 << 20
}
fn d_batch_ms() -> u64 {
    500
}
fn d_retry_initial_ms() -> u64 {
    100
}
fn d_retry_max_ms() -> u64 {
    30_000
}
fn d_request_timeout_secs() -> u64 {
    60
}
fn d_retention_days() -> u32 {
    400
}
fn d_shards() -> u32 {
    1
}
fn d_search_metrics_listen() -> String {
    "127.0.0.1:9110".into()
}
fn d_remote_write_url() -> String {
    "http://127.0.0.1:9090/api/v1/write".into()
}
fn d_push_interval_secs() -> u64 {
    15
}
fn d_watch() -> Vec<String> {
    ["kernel", "kernel-core", "openssl", "openssl-libs", "glibc"]
        .map(String::from)
        .to_vec()
}
fn d_metrics_group() -> String {
    "pkgstream-sink-metrics".into()
}
fn d_max_versions() -> usize {
    crate::metrics::fleet::DEFAULT_MAX_VERSIONS
}
fn d_unready_after_secs() -> u64 {
    30
}
fn d_metrics_metrics_listen() -> String {
    "127.0.0.1:9111".into()
}

impl Default for SearchSinkConfig {
    fn default() -> Self {
        SearchSinkConfig {
            url: d_url(),
            username: String::new(),
            password: Secret::default(),
            password_file: String::new(),
            api_key: Secret::default(),
            api_key_file: String::new(),
            tls: TlsConfig::default(),
            index_prefix: d_index_prefix(),
            group_id: d_search_group(),
            instance_id: String::new(),
            lanes: d_lanes(),
            batch_events: d_batch_events(),
            batch_bytes: d_batch_bytes(),
            batch_ms: d_batch_ms(),
            retry_initial_ms: d_retry_initial_ms(),
            retry_max_ms: d_retry_max_ms(),
            request_timeout_secs: d_request_timeout_secs(),
            retention_days: d_retention_days(),
            shards: d_shards(),
            replicas: 0,
            metrics_listen: d_search_metrics_listen(),
        }
    }
}

impl Default for MetricsSinkConfig {
    fn default() -> Self {
        MetricsSinkConfig {
            remote_write_url: d_remote_write_url(),
            remote_write_username: String::new(),
            remote_write_password: Secret::default(),
            remote_write_password_file: String::new(),
            remote_write_bearer_token: Secret::default(),
            remote_write_bearer_token_file: String::new(),
            remote_write_tls: TlsConfig::default(),
            push_interval_secs: d_push_interval_secs(),
            watch_packages: d_watch(),
            group_id: d_metrics_group(),
            max_versions_per_group: d_max_versions(),
            unready_after_secs: d_unready_after_secs(),
            metrics_listen: d_metrics_metrics_listen(),
        }
    }
}

fn invalid(key: &str, reason: impl Into<String>) -> SinkError {
    SinkError::Config {
        key: key.to_owned(),
        reason: reason.into(),
    }
}

fn check_url(key: &str, url: &str) -> Result<(), SinkError> {
    if !(url.starts_with("http://") || url.starts_with("https://")) {
        return Err(invalid(
            key,
            format!("'{url}' is not an http:// or https:// URL"),
        ));
    }
    if has_userinfo(url) {
        return Err(invalid(
            key,
            "credentials in the URL are refused (errors and logs print URLs): set the username and password (or token) settings instead",
        ));
    }
    Ok(())
}

/// Checks a client's credential settings: at most one source per secret,
/// a password only with a user, and one kind of credential.
fn check_credentials(
    section: &str,
    user: &str,
    password: (&str, &Secret, &str),
    token: (&str, &Secret, &str),
) -> Result<(), SinkError> {
    let (pw_key, pw, pw_file) = password;
    let (tok_key, tok, tok_file) = token;
    let full = |k: &str| format!("{section}.{k}");
    one_source(&full(pw_key), pw, pw_file)?;
    one_source(&full(tok_key), tok, tok_file)?;
    let has_pw = !pw.is_empty() || !pw_file.is_empty();
    let has_tok = !tok.is_empty() || !tok_file.is_empty();
    if has_pw && user.is_empty() {
        return Err(invalid(
            &full(pw_key),
            "a password is set but the user name is empty",
        ));
    }
    if has_tok && (has_pw || !user.is_empty()) {
        return Err(invalid(
            &full(tok_key),
            format!("both basic auth and {tok_key} are set: choose one"),
        ));
    }
    Ok(())
}

impl SearchSinkConfig {
    /// Checks every value without I/O.
    pub fn validate(&self) -> Result<(), SinkError> {
        check_url("search_sink.url", &self.url)?;
        check_credentials(
            "search_sink",
            &self.username,
            ("password", &self.password, &self.password_file),
            ("api_key", &self.api_key, &self.api_key_file),
        )?;
        self.tls.validate("search_sink.tls")?;
        let p = &self.index_prefix;
        if p.is_empty()
            || p.starts_with(['-', '_', '+'])
            || p.chars()
                .any(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || "-_.".contains(c)))
        {
            return Err(invalid(
                "search_sink.index_prefix",
                format!("'{p}' is not a valid index name prefix (lowercase letters, digits, '-', '_', '.')"),
            ));
        }
        for (key, v) in [
            ("search_sink.lanes", self.lanes),
            ("search_sink.batch_events", self.batch_events),
            ("search_sink.batch_bytes", self.batch_bytes),
        ] {
            if v == 0 {
                return Err(invalid(key, "must be at least 1"));
            }
        }
        if self.lanes > 256 {
            return Err(invalid("search_sink.lanes", "at most 256"));
        }
        if self.retry_initial_ms == 0 || self.retry_max_ms < self.retry_initial_ms {
            return Err(invalid(
                "search_sink.retry_max_ms",
                "need 0 < retry_initial_ms <= retry_max_ms",
            ));
        }
        if self.request_timeout_secs == 0 {
            return Err(invalid(
                "search_sink.request_timeout_secs",
                "must be at least 1",
            ));
        }
        if self.shards == 0 {
            return Err(invalid("search_sink.shards", "must be at least 1"));
        }
        let id = &self.instance_id;
        if id.len() > 249 || !id.chars().all(instance_id_char) {
            return Err(invalid(
                "search_sink.instance_id",
                format!("'{id}': letters, digits, '.', '_' and '-' only, at most 249 characters"),
            ));
        }
        Ok(())
    }

    /// The `group.instance.id` this instance uses: `instance_id`, or one
    /// derived from the host name and the `metrics_listen` port (see the
    /// field).
    pub fn effective_instance_id(&self) -> String {
        if !self.instance_id.is_empty() {
            return self.instance_id.clone();
        }
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .ok()
            .or_else(|| std::env::var("HOSTNAME").ok())
            .map(|h| h.trim().to_owned())
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "localhost".into());
        let host: String = host
            .chars()
            .map(|c| if instance_id_char(c) { c } else { '-' })
            .take(200)
            .collect();
        match self
            .metrics_listen
            .rsplit_once(':')
            .and_then(|(_, p)| p.parse::<u16>().ok())
        {
            Some(port) if port != 0 => format!("{host}-{port}"),
            _ => format!("{host}-pid{}", std::process::id()),
        }
    }
}

fn instance_id_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || "._-".contains(c)
}

impl MetricsSinkConfig {
    /// Checks every value without I/O.
    pub fn validate(&self) -> Result<(), SinkError> {
        if !self.remote_write_url.is_empty() {
            check_url("metrics_sink.remote_write_url", &self.remote_write_url)?;
        }
        check_credentials(
            "metrics_sink",
            &self.remote_write_username,
            (
                "remote_write_password",
                &self.remote_write_password,
                &self.remote_write_password_file,
            ),
            (
                "remote_write_bearer_token",
                &self.remote_write_bearer_token,
                &self.remote_write_bearer_token_file,
            ),
        )?;
        self.remote_write_tls
            .validate("metrics_sink.remote_write_tls")?;
        if self.push_interval_secs == 0 {
            return Err(invalid(
                "metrics_sink.push_interval_secs",
                "must be at least 1",
            ));
        }
        if !(1..=1000).contains(&self.max_versions_per_group) {
            return Err(invalid(
                "metrics_sink.max_versions_per_group",
                "must be between 1 and 1000",
            ));
        }
        if self.unready_after_secs == 0 {
            return Err(invalid(
                "metrics_sink.unready_after_secs",
                "must be at least 1",
            ));
        }
        if self.watch_packages.len() > 100 {
            return Err(invalid(
                "metrics_sink.watch_packages",
                "at most 100 packages: each adds series per version and host group",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_secrets_do_not_print() {
        SearchSinkConfig::default().validate().unwrap();
        MetricsSinkConfig::default().validate().unwrap();
        let c = SearchSinkConfig {
            password: Secret("hunter2".into()),
            ..Default::default()
        };
        assert!(!format!("{c:?}").contains("hunter2"));
        let m = MetricsSinkConfig {
            remote_write_bearer_token: Secret("tok-hunter3".into()),
            ..Default::default()
        };
        m.validate().unwrap();
        assert!(!format!("{m:?}").contains("hunter3"));
    }

    #[test]
    fn credential_settings_that_conflict_name_the_key() {
        let url = SearchSinkConfig {
            url: "https://sink:hunter2@es:9200".into(),
            ..Default::default()
        };
        let e = url.validate().unwrap_err().to_string();
        assert!(
            e.contains("search_sink.url") && e.contains("credentials in the URL"),
            "{e}"
        );
        assert!(!e.contains("hunter2"), "{e}");
        let both = SearchSinkConfig {
            username: "sink".into(),
            password: Secret("x".into()),
            password_file: "/run/pw".into(),
            ..Default::default()
        };
        let e = both.validate().unwrap_err().to_string();
        assert!(
            e.contains("search_sink.password") && e.contains("choose one"),
            "{e}"
        );
        let no_user = SearchSinkConfig {
            password_file: "/run/pw".into(),
            ..Default::default()
        };
        let e = no_user.validate().unwrap_err().to_string();
        assert!(e.contains("user name is empty"), "{e}");
        let mixed = SearchSinkConfig {
            username: "sink".into(),
            api_key_file: "/run/key".into(),
            ..Default::default()
        };
        let e = mixed.validate().unwrap_err().to_string();
        assert!(
            e.contains("search_sink.api_key") && e.contains("choose one"),
            "{e}"
        );
        let m = MetricsSinkConfig {
            remote_write_username: "u".into(),
            remote_write_bearer_token_file: "/run/tok".into(),
            ..Default::default()
        };
        let e = m.validate().unwrap_err().to_string();
        assert!(e.contains("metrics_sink.remote_write_bearer_token"), "{e}");
        let m = MetricsSinkConfig {
            remote_write_tls: TlsConfig {
                key_file: "/k.pem".into(),
                ..Default::default()
            },
            ..Default::default()
        };
        let e = m.validate().unwrap_err().to_string();
        assert!(e.contains("metrics_sink.remote_write_tls.cert_file"), "{e}");
    }

    #[test]
    fn the_instance_id_is_stable_and_differs_per_port() {
        let a = SearchSinkConfig {
            metrics_listen: "127.0.0.1:9110".into(),
            ..Default::default()
        };
        let b = SearchSinkConfig {
            metrics_listen: "0.0.0.0:9120".into(),
            ..Default::default()
        };
        assert_eq!(a.effective_instance_id(), a.effective_instance_id());
        assert!(a.effective_instance_id().ends_with("-9110"));
        assert!(b.effective_instance_id().ends_with("-9120"));
        assert!(a.effective_instance_id().chars().all(instance_id_char));
        let c = SearchSinkConfig {
            instance_id: "sink-a.1".into(),
            ..Default::default()
        };
        c.validate().unwrap();
        assert_eq!(c.effective_instance_id(), "sink-a.1");
    }

    #[test]
    fn bad_values_name_the_key() {
        let c = SearchSinkConfig {
            url: "localhost:9200".into(),
            ..Default::default()
        };
        let e = c.validate().unwrap_err().to_string();
        assert!(
            e.contains("search_sink.url") && e.contains("localhost:9200"),
            "{e}"
        );
        let c = SearchSinkConfig {
            index_prefix: "PkgStream".into(),
            ..Default::default()
        };
        assert!(c
            .validate()
            .unwrap_err()
            .to_string()
            .contains("index_prefix"));
        let c = SearchSinkConfig {
            instance_id: "sink search/1".into(),
            ..Default::default()
        };
        let e = c.validate().unwrap_err().to_string();
        assert!(
            e.contains("search_sink.instance_id") && e.contains("sink search/1"),
            "{e}"
        );
        let c = MetricsSinkConfig {
            push_interval_secs: 0,
            ..Default::default()
        };
        assert!(c
            .validate()
            .unwrap_err()
            .to_string()
            .contains("push_interval_secs"));
        for c in [
            MetricsSinkConfig {
                unready_after_secs: 0,
                ..Default::default()
            },
            MetricsSinkConfig {
                max_versions_per_group: 0,
                ..Default::default()
            },
        ] {
            let e = c.validate().unwrap_err().to_string();
            assert!(
                e.contains("metrics_sink.unready_after_secs")
                    || e.contains("metrics_sink.max_versions_per_group"),
                "{e}"
            );
        }
    }
}
