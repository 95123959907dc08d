//! The secured services of `scripts/services.sh start opensearch-secure
//! prometheus-secure`: where they are, their CAs, users and passwords (made
//! at their first start), and the settings that point a sink or the query
//! CLI at them.
//!
//! The engine's users (roles in the README, "Production"): `admin`
//! (all_access: the tests inspect indices with it), `pkgstream-sink`
//! (writes `pkgstream*` indices), `pkgstream-query` (reads them),
//! `pkgstream-nowrite` (the sink's set-up rights, no write); client
//! certificates for `pkgstream-sink` and `pkgstream-query`. Prometheus has
//! one user, `pkgstream-metrics`.

use std::path::PathBuf;
use std::time::Duration;

use pkgstream_sinks::config::Secret;
use pkgstream_sinks::http::{basic_auth, TlsConfig};

use crate::sinks::{Target, ENGINE_TARGET, PROMETHEUS_TARGET};

fn run_dir(var: &str, name: &str) -> PathBuf {
    std::env::var(var).map(PathBuf::from).unwrap_or_else(|_| {
        let home = std::env::var("PKGSTREAM_HOME")
            .map(PathBuf::from)
            .unwrap_or_else(|_| {
                PathBuf::from(std::env::var("HOME").expect("HOME")).join(".cache/pkgstream")
            });
        home.join("run").join(name)
    })
}

/// The secured OpenSearch.
pub struct SecureEngine {
    /// `https://localhost:9250` (`PKGSTREAM_TEST_OPENSEARCH_SECURE`).
    pub url: String,
    /// Its run dir (`PKGSTREAM_TEST_OPENSEARCH_SECURE_DIR`): tls/, users/.
    pub dir: PathBuf,
}

/// The secured Prometheus.
pub struct SecurePrometheus {
    /// `https://localhost:9098` (`PKGSTREAM_TEST_PROMETHEUS_SECURE`).
    pub url: String,
    /// Its run dir (`PKGSTREAM_TEST_PROMETHEUS_SECURE_DIR`).
    pub dir: PathBuf,
}

/// The secured engine.
pub fn engine() -> SecureEngine {
    let e = SecureEngine {
        url: std::env::var("PKGSTREAM_TEST_OPENSEARCH_SECURE")
            .unwrap_or_else(|_| "https://localhost:9250".into()),
        dir: run_dir("PKGSTREAM_TEST_OPENSEARCH_SECURE_DIR", "opensearch-secure"),
    };
    assert!(
        e.dir.join("users/.done").exists(),
        "{} has no users: run `scripts/services.sh start opensearch-secure` first",
        e.dir.display()
    );
    e
}

/// The secured Prometheus.
pub fn prometheus() -> SecurePrometheus {
    let p = SecurePrometheus {
        url: std::env::var("PKGSTREAM_TEST_PROMETHEUS_SECURE")
            .unwrap_or_else(|_| "https://localhost:9098".into()),
        dir: run_dir("PKGSTREAM_TEST_PROMETHEUS_SECURE_DIR", "prometheus-secure"),
    };
    assert!(
        p.dir.join("users/.done").exists(),
        "{} has no users: run `scripts/services.sh start prometheus-secure` first",
        p.dir.display()
    );
    p
}

fn first_line(path: &std::path::Path) -> String {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .lines()
        .next()
        .unwrap_or_default()
        .to_owned()
}

fn target(url: &str, ca: &str, user: &str, password: &str) -> Target {
    let agent = TlsConfig {
        ca_file: ca.to_owned(),
        ..Default::default()
    }
    .agent("test", Duration::from_secs(5), Duration::from_secs(60))
    .expect("test TLS agent");
    Target {
        url: url.to_owned(),
        agent,
        auth: Some(basic_auth(user, &Secret(password.to_owned())).0),
    }
}

/// Points the helpers of [`crate::sinks`] (`engine`, `count`,
/// `wait_state`, `prom_query`, ...) at the secured services, as `admin`
/// and `pkgstream-metrics`. Call first in every test of a binary that uses
/// the secured services.
pub fn init() -> (SecureEngine, SecurePrometheus) {
    let (e, p) = (engine(), prometheus());
    ENGINE_TARGET.get_or_init(|| target(&e.url, &e.ca(), "admin", &e.password("admin")));
    PROMETHEUS_TARGET.get_or_init(|| {
        target(
            &p.url,
            &p.ca(),
            "pkgstream-metrics",
            &first_line(&p.password_file()),
        )
    });
    (e, p)
}

impl SecureEngine {
    /// The CA that signed the engine's certificate.
    pub fn ca(&self) -> String {
        self.dir.join("tls/ca.pem").display().to_string()
    }

    /// A CA that signed nothing the engine presents.
    pub fn other_ca(&self) -> String {
        self.dir.join("tls/other-ca.pem").display().to_string()
    }

    /// The file holding `user`'s password.
    pub fn password_file(&self, user: &str) -> String {
        self.dir
            .join(format!("users/{user}.password"))
            .display()
            .to_string()
    }

    /// `user`'s password.
    pub fn password(&self, user: &str) -> String {
        first_line(std::path::Path::new(&self.password_file(user)))
    }

    /// `user`'s client certificate and key.
    pub fn cert(&self, user: &str) -> (String, String) {
        let f = |ext: &str| {
            self.dir
                .join(format!("tls/{user}.{ext}"))
                .display()
                .to_string()
        };
        (f("pem"), f("key"))
    }

    /// `[search_sink]` settings for `user` with basic auth from its
    /// password file.
    pub fn basic_vars(&self, user: &str) -> Vec<(&'static str, String)> {
        vec![
            ("PKGSTREAM__SEARCH_SINK__URL", self.url.clone()),
            ("PKGSTREAM__SEARCH_SINK__USERNAME", user.to_owned()),
            (
                "PKGSTREAM__SEARCH_SINK__PASSWORD_FILE",
                self.password_file(user),
            ),
            ("PKGSTREAM__SEARCH_SINK__TLS__CA_FILE", self.ca()),
        ]
    }

    /// `[search_sink]` settings for `user` with its client certificate
    /// (mutual TLS, no password).
    pub fn cert_vars(&self, user: &str) -> Vec<(&'static str, String)> {
        let (cert, key) = self.cert(user);
        vec![
            ("PKGSTREAM__SEARCH_SINK__URL", self.url.clone()),
            ("PKGSTREAM__SEARCH_SINK__TLS__CA_FILE", self.ca()),
            ("PKGSTREAM__SEARCH_SINK__TLS__CERT_FILE", cert),
            ("PKGSTREAM__SEARCH_SINK__TLS__KEY_FILE", key),
        ]
    }
}

impl SecurePrometheus {
    /// The CA that signed Prometheus' certificate.
    pub fn ca(&self) -> String {
        self.dir.join("tls/ca.pem").display().to_string()
    }

    /// The file holding `pkgstream-metrics`' password.
    pub fn password_file(&self) -> PathBuf {
        self.dir.join("users/pkgstream-metrics.password")
    }

    /// The password of `pkgstream-metrics`.
    pub fn password(&self) -> String {
        first_line(&self.password_file())
    }

    /// `[metrics_sink]` settings that push to it as `pkgstream-metrics`.
    pub fn vars(&self) -> Vec<(&'static str, String)> {
        vec![
            (
                "PKGSTREAM__METRICS_SINK__REMOTE_WRITE_URL",
                format!("{}/api/v1/write", self.url),
            ),
            (
                "PKGSTREAM__METRICS_SINK__REMOTE_WRITE_USERNAME",
                "pkgstream-metrics".into(),
            ),
            (
                "PKGSTREAM__METRICS_SINK__REMOTE_WRITE_PASSWORD_FILE",
                self.password_file().display().to_string(),
            ),
            (
                "PKGSTREAM__METRICS_SINK__REMOTE_WRITE_TLS__CA_FILE",
                self.ca(),
            ),
        ]
    }
}
