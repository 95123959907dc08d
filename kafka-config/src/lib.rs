//! The one Kafka client configuration of pkgstream, shared by the host side
//! (`pkgstream-emit`, `[kafka]` of `emit.toml`, env `PKGSTREAM_EMIT__KAFKA__*`)
//! and the central side (router, sinks, replay, tail, simulate, topic
//! creation: `[kafka]` of `pkgstream.toml`, env `PKGSTREAM__KAFKA__*`).
//!
//! - [`KafkaConfig`]: what the user writes — brokers, `security_protocol`,
//!   the TLS files (CA, client certificate and key for mTLS), SASL (PLAIN,
//!   SCRAM-SHA-256/512) with the password from the environment or a file,
//!   and `librdkafka_options` for any other librdkafka property;
//! - [`KafkaConfig::validate`] checks it without I/O (conflicting or
//!   missing security settings, security keys smuggled into the
//!   pass-through table);
//! - [`KafkaConfig::client_config`] is the factory every client starts from:
//!   it reads the password file (each time a client is made, so a rotated
//!   password is picked up on the next reconnect of a stage), and warns once
//!   per process about plaintext to a non-loopback broker;
//! - [`Secret`]: a string that never prints (Debug, Display, errors);
//! - [`LastCause`]: a client context that keeps why the client last failed
//!   to reach the cluster (authentication, TLS handshake, a listener that
//!   closed the connection), so that the one error a command ends with
//!   says it instead of "broker transport failure".
//!
//! This crate depends on rdkafka, serde, thiserror and tracing only, so the
//! host agent stays small.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use std::sync::Mutex;

use rdkafka::client::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::ConsumerContext;
use rdkafka::error::KafkaError;
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::ClientConfig;
use serde::{Deserialize, Deserializer};

/// Errors of the Kafka client configuration. None of them carries a secret.
#[derive(Debug, thiserror::Error)]
pub enum KafkaConfigError {
    /// Settings that cannot work together, or a value out of its set.
    #[error("kafka: {0}")]
    Invalid(String),
    /// A secret file could not be read.
    #[error("kafka.{key}: cannot read {path}: {reason}")]
    SecretFile {
        /// The config key that names the file.
        key: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
}

/// A password or key: printed as `***` by Debug and Display, never
/// serialized; [`Secret::expose`] is the only way to the text.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps `text`.
    pub fn new(text: impl Into<String>) -> Secret {
        Secret(text.into())
    }

    /// The secret text, to hand to the client library and nowhere else.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Secret, D::Error> {
        // Any scalar: the environment layer parses `12345` as a number, and
        // a type error from serde would quote the value.
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Secret;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Secret, E> {
                Ok(Secret::new(v))
            }
            fn visit_string<E: serde::de::Error>(self, v: String) -> Result<Secret, E> {
                Ok(Secret(v))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Secret, E> {
                Ok(Secret(v.to_string()))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Secret, E> {
                Ok(Secret(v.to_string()))
            }
            fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<Secret, E> {
                Ok(Secret(v.to_string()))
            }
            fn visit_bool<E: serde::de::Error>(self, v: bool) -> Result<Secret, E> {
                Ok(Secret(v.to_string()))
            }
        }
        d.deserialize_any(V)
    }
}

/// `security_protocol`: how the client talks to the brokers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SecurityProtocol {
    /// No TLS, no authentication (labs, loopback).
    Plaintext,
    /// TLS; with a client certificate, mTLS (the hosts).
    Ssl,
    /// SASL without TLS (the password crosses the network in clear with PLAIN).
    SaslPlaintext,
    /// SASL inside TLS (the central stages).
    SaslSsl,
}

impl SecurityProtocol {
    /// librdkafka's name.
    pub fn as_str(self) -> &'static str {
        match self {
            SecurityProtocol::Plaintext => "plaintext",
            SecurityProtocol::Ssl => "ssl",
            SecurityProtocol::SaslPlaintext => "sasl_plaintext",
            SecurityProtocol::SaslSsl => "sasl_ssl",
        }
    }

    fn tls(self) -> bool {
        matches!(self, SecurityProtocol::Ssl | SecurityProtocol::SaslSsl)
    }

    fn sasl(self) -> bool {
        matches!(
            self,
            SecurityProtocol::SaslPlaintext | SecurityProtocol::SaslSsl
        )
    }
}

impl FromStr for SecurityProtocol {
    type Err = KafkaConfigError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "plaintext" => Ok(SecurityProtocol::Plaintext),
            "ssl" => Ok(SecurityProtocol::Ssl),
            "sasl_plaintext" => Ok(SecurityProtocol::SaslPlaintext),
            "sasl_ssl" => Ok(SecurityProtocol::SaslSsl),
            _ => Err(KafkaConfigError::Invalid(format!(
                "security_protocol '{s}': one of PLAINTEXT, SSL, SASL_PLAINTEXT, SASL_SSL"
            ))),
        }
    }
}

/// `sasl_mechanism`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SaslMechanism {
    /// User name and password as they are (only inside TLS).
    Plain,
    /// SCRAM with SHA-256.
    ScramSha256,
    /// SCRAM with SHA-512.
    ScramSha512,
}

impl SaslMechanism {
    /// librdkafka's (and Kafka's) name.
    pub fn as_str(self) -> &'static str {
        match self {
            SaslMechanism::Plain => "PLAIN",
            SaslMechanism::ScramSha256 => "SCRAM-SHA-256",
            SaslMechanism::ScramSha512 => "SCRAM-SHA-512",
        }
    }
}

impl FromStr for SaslMechanism {
    type Err = KafkaConfigError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_uppercase().replace('_', "-").as_str() {
            "PLAIN" => Ok(SaslMechanism::Plain),
            "SCRAM-SHA-256" => Ok(SaslMechanism::ScramSha256),
            "SCRAM-SHA-512" => Ok(SaslMechanism::ScramSha512),
            _ => Err(KafkaConfigError::Invalid(format!(
                "sasl_mechanism '{s}': one of PLAIN, SCRAM-SHA-256, SCRAM-SHA-512"
            ))),
        }
    }
}

fn from_str_opt<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: FromStr<Err = KafkaConfigError>,
{
    let s = String::deserialize(d)?;
    s.parse().map(Some).map_err(serde::de::Error::custom)
}

/// librdkafka properties that only the typed settings may set: the
/// security ones (secrets included) and the brokers.
const RESERVED: [&str; 17] = [
    "bootstrap.servers",
    "metadata.broker.list",
    "security.protocol",
    "sasl.mechanism",
    "sasl.mechanisms",
    "sasl.username",
    "sasl.password",
    "sasl.oauthbearer.config",
    "sasl.oauthbearer.client.secret",
    "ssl.ca.location",
    "ssl.ca.pem",
    "ssl.certificate.location",
    "ssl.certificate.pem",
    "ssl.key.location",
    "ssl.key.pem",
    "ssl.key.password",
    "ssl.keystore.password",
];

/// `[kafka]`: where the cluster is and how to authenticate to it. The same
/// keys on the host side and the central side.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaConfig {
    /// Bootstrap servers, comma separated (`host:port`).
    #[serde(default = "default_brokers")]
    pub brokers: String,
    /// Client id shown in broker logs and quotas (default: the program's).
    #[serde(default)]
    pub client_id: Option<String>,
    /// PLAINTEXT (default), SSL, SASL_PLAINTEXT or SASL_SSL. Unset with a
    /// broker that is not on the loopback, a warning is logged.
    #[serde(default, deserialize_with = "from_str_opt")]
    pub security_protocol: Option<SecurityProtocol>,
    /// PEM file of the CA(s) that signed the brokers' certificates (SSL,
    /// SASL_SSL; default: the system's roots).
    #[serde(default)]
    pub ssl_ca_file: Option<PathBuf>,
    /// PEM file of this client's certificate, for mTLS (with `ssl_key_file`).
    #[serde(default)]
    pub ssl_certificate_file: Option<PathBuf>,
    /// PEM file of this client's private key, for mTLS.
    #[serde(default)]
    pub ssl_key_file: Option<PathBuf>,
    /// Passphrase of `ssl_key_file`, if it is encrypted (prefer the
    /// environment: `..._KAFKA__SSL_KEY_PASSWORD`, or `ssl_key_password_file`).
    #[serde(default)]
    pub ssl_key_password: Option<Secret>,
    /// File holding the passphrase of `ssl_key_file` (trailing newline
    /// ignored), re-read whenever a client is created.
    #[serde(default)]
    pub ssl_key_password_file: Option<PathBuf>,
    /// PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512 (SASL_PLAINTEXT, SASL_SSL).
    #[serde(default, deserialize_with = "from_str_opt")]
    pub sasl_mechanism: Option<SaslMechanism>,
    /// SASL user name.
    #[serde(default)]
    pub sasl_username: Option<String>,
    /// SASL password; set it through the environment
    /// (`PKGSTREAM__KAFKA__SASL_PASSWORD`) or use `sasl_password_file`.
    #[serde(default)]
    pub sasl_password: Option<Secret>,
    /// File holding the SASL password (trailing newline ignored), re-read
    /// whenever a client is created.
    #[serde(default)]
    pub sasl_password_file: Option<PathBuf>,
    /// Any other librdkafka property (`"socket.keepalive.enable" = "true"`).
    /// The security keys and `bootstrap.servers` are refused here (use the
    /// settings above); what a stage sets for its guarantees (idempotence,
    /// transactions, isolation, group) overrides these.
    #[serde(default)]
    pub librdkafka_options: BTreeMap<String, String>,
}

fn default_brokers() -> String {
    "127.0.0.1:9092".into()
}

impl Default for KafkaConfig {
    fn default() -> Self {
        KafkaConfig {
            brokers: default_brokers(),
            client_id: None,
            security_protocol: None,
            ssl_ca_file: None,
            ssl_certificate_file: None,
            ssl_key_file: None,
            ssl_key_password: None,
            ssl_key_password_file: None,
            sasl_mechanism: None,
            sasl_username: None,
            sasl_password: None,
            sasl_password_file: None,
            librdkafka_options: BTreeMap::new(),
        }
    }
}

impl KafkaConfig {
    /// The protocol in effect (PLAINTEXT when unset).
    pub fn protocol(&self) -> SecurityProtocol {
        self.security_protocol
            .unwrap_or(SecurityProtocol::Plaintext)
    }

    /// Checks the settings without I/O: brokers given, TLS files only with
    /// a TLS protocol and certificate with key, SASL settings exactly with
    /// a SASL protocol, one password source, no reserved key in
    /// `librdkafka_options`.
    pub fn validate(&self) -> Result<(), KafkaConfigError> {
        let bad = |m: String| Err(KafkaConfigError::Invalid(m));
        if self.brokers.trim().is_empty() {
            return bad("brokers is empty".into());
        }
        let p = self.protocol();
        let tls_set = self.ssl_ca_file.is_some()
            || self.ssl_certificate_file.is_some()
            || self.ssl_key_file.is_some()
            || self.ssl_key_password.is_some()
            || self.ssl_key_password_file.is_some();
        if tls_set && !p.tls() {
            return bad(format!(
                "ssl_* settings need security_protocol SSL or SASL_SSL (it is {})",
                p.as_str().to_ascii_uppercase()
            ));
        }
        if self.ssl_certificate_file.is_some() != self.ssl_key_file.is_some() {
            return bad("ssl_certificate_file and ssl_key_file go together (mTLS)".into());
        }
        let key_password = self.ssl_key_password.is_some() || self.ssl_key_password_file.is_some();
        if key_password && self.ssl_key_file.is_none() {
            return bad("ssl_key_password(_file) without ssl_key_file".into());
        }
        if self.ssl_key_password.is_some() && self.ssl_key_password_file.is_some() {
            return bad("ssl_key_password and ssl_key_password_file: set one, not both".into());
        }
        let sasl_set = self.sasl_mechanism.is_some()
            || self.sasl_username.is_some()
            || self.sasl_password.is_some()
            || self.sasl_password_file.is_some();
        if p.sasl() {
            if self.sasl_mechanism.is_none() {
                return bad(format!(
                    "security_protocol {} needs sasl_mechanism (PLAIN, SCRAM-SHA-256, SCRAM-SHA-512)",
                    p.as_str().to_ascii_uppercase()
                ));
            }
            if self.sasl_username.as_deref().is_none_or(str::is_empty) {
                return bad("sasl_username is missing".into());
            }
            match (&self.sasl_password, &self.sasl_password_file) {
                (Some(_), Some(_)) => {
                    return bad("sasl_password and sasl_password_file: set one, not both".into())
                }
                (None, None) => {
                    return bad(
                        "the SASL password is missing: set sasl_password_file, or sasl_password through the environment"
                            .into(),
                    )
                }
                _ => {}
            }
        } else if sasl_set {
            return bad(format!(
                "sasl_* settings need security_protocol SASL_PLAINTEXT or SASL_SSL (it is {})",
                p.as_str().to_ascii_uppercase()
            ));
        }
        for key in self.librdkafka_options.keys() {
            let k = key.trim().to_ascii_lowercase();
            if RESERVED.contains(&k.as_str()) {
                return bad(format!(
                    "librdkafka_options may not set '{key}': use the [kafka] settings (security_protocol, ssl_*, sasl_*, brokers)"
                ));
            }
        }
        Ok(())
    }

    /// Why plaintext is risky here, when it is: no `security_protocol` set
    /// and a broker that is not on the loopback.
    pub fn plaintext_warning(&self) -> Option<String> {
        if self.security_protocol.is_some() {
            return None;
        }
        let remote: Vec<&str> = self
            .brokers
            .split(',')
            .map(str::trim)
            .filter(|b| !b.is_empty() && !is_loopback(b))
            .collect();
        (!remote.is_empty()).then(|| remote.join(","))
    }

    /// The base every client of this side starts from: brokers, security,
    /// `librdkafka_options`; the caller adds its own properties. Validates
    /// first and reads the password file.
    pub fn client_config(&self) -> Result<ClientConfig, KafkaConfigError> {
        self.validate()?;
        if let Some(brokers) = self.plaintext_warning() {
            static WARNED: std::sync::Once = std::sync::Once::new();
            WARNED.call_once(|| {
                tracing::warn!(
                    brokers,
                    "kafka: plaintext to a broker off the loopback (no security_protocol): events and credentials cross the network unencrypted; set kafka.security_protocol (PLAINTEXT to silence this)"
                )
            });
        }
        let mut c = ClientConfig::new();
        for (k, v) in &self.librdkafka_options {
            c.set(k.trim(), v);
        }
        c.set("bootstrap.servers", &self.brokers);
        if let Some(id) = &self.client_id {
            c.set("client.id", id);
        }
        let p = self.protocol();
        c.set("security.protocol", p.as_str());
        let path = |p: &Path| p.display().to_string();
        if let Some(ca) = &self.ssl_ca_file {
            c.set("ssl.ca.location", path(ca));
        }
        if let (Some(cert), Some(key)) = (&self.ssl_certificate_file, &self.ssl_key_file) {
            c.set("ssl.certificate.location", path(cert));
            c.set("ssl.key.location", path(key));
        }
        let key_password = match (&self.ssl_key_password, &self.ssl_key_password_file) {
            (Some(pw), _) => Some(pw.clone()),
            (None, Some(file)) => Some(read_secret_file("ssl_key_password_file", file)?),
            (None, None) => None,
        };
        if let Some(pw) = &key_password {
            c.set("ssl.key.password", pw.expose());
        }
        if p.sasl() {
            if let Some(m) = self.sasl_mechanism {
                c.set("sasl.mechanism", m.as_str());
            }
            if let Some(u) = &self.sasl_username {
                c.set("sasl.username", u);
            }
            let password = match (&self.sasl_password, &self.sasl_password_file) {
                (Some(pw), _) => pw.clone(),
                (None, Some(file)) => read_secret_file("sasl_password_file", file)?,
                (None, None) => Secret::new(""),
            };
            c.set("sasl.password", password.expose());
        }
        Ok(c)
    }
}

impl KafkaConfig {
    /// `reason` (what the client said about a failed connection), with a
    /// hint where the usual cause is a setting: a plaintext client whose
    /// first request the broker answers by closing the connection is
    /// talking to a TLS listener.
    pub fn explain(&self, reason: &str) -> String {
        let plaintext = !self.protocol().tls();
        if plaintext && reason.contains("APIVERSION_QUERY") && reason.contains("Disconnected") {
            format!(
                "{reason} (the broker closed the connection at the first request: a TLS listener? kafka.security_protocol is {})",
                self.protocol().as_str().to_ascii_uppercase()
            )
        } else {
            reason.to_owned()
        }
    }
}

/// Reads a secret from `path`, without its trailing newline.
fn read_secret_file(key: &'static str, path: &Path) -> Result<Secret, KafkaConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| KafkaConfigError::SecretFile {
        key,
        path: path.to_owned(),
        reason: e.to_string(),
    })?;
    Ok(Secret(text.trim_end_matches(['\r', '\n']).to_owned()))
}

/// `host:port` (or a bare host, or `[v6]:port`) on the loopback.
fn is_loopback(broker: &str) -> bool {
    let broker = broker.split_once("://").map_or(broker, |(_, rest)| rest);
    let host = if let Some(rest) = broker.strip_prefix('[') {
        rest.split(']').next().unwrap_or(rest)
    } else {
        broker.rsplit_once(':').map_or(broker, |(h, _)| h)
    };
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// A client context that keeps why the client last failed to reach the
/// cluster: librdkafka reports the cause (a failed SASL authentication, an
/// untrusted certificate, a connection the broker closed) as an error or a
/// `FAIL` log line, and the call that fails later only says "broker
/// transport failure" or "timed out". The client's errors and logs go to
/// the debug level, so a command that fails prints one error line, the one
/// [`LastCause::reason`] makes.
#[derive(Debug, Default)]
pub struct LastCause {
    causes: Mutex<Causes>,
}

#[derive(Debug, Default)]
struct Causes {
    /// The last error that says why (authentication, TLS, ...).
    error: Option<String>,
    /// The last broker connection failure logged.
    failure: Option<String>,
    /// The last "all brokers down".
    generic: Option<String>,
}

impl LastCause {
    /// What the client last said about the connection, most specific
    /// first, explained for `config` ([`KafkaConfig::explain`]); `None`
    /// when it said nothing.
    pub fn cause(&self, config: &KafkaConfig) -> Option<String> {
        let c = self.causes.lock().unwrap_or_else(|p| p.into_inner());
        c.error
            .as_ref()
            .or(c.failure.as_ref())
            .or(c.generic.as_ref())
            .map(|r| config.explain(r))
    }

    /// `what: error`, followed by the cause the client last reported when
    /// there is one (`what: error: cause`).
    pub fn reason(&self, config: &KafkaConfig, what: &str, error: &dyn fmt::Display) -> String {
        match self.cause(config) {
            Some(cause) => format!("{what}: {error}: {cause}"),
            None => format!("{what}: {error}"),
        }
    }
}

impl ClientContext for LastCause {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, log_message: &str) {
        tracing::debug!(?level, facility = fac, message = log_message, "librdkafka");
        if fac == "FAIL" {
            let mut c = self.causes.lock().unwrap_or_else(|p| p.into_inner());
            c.failure = Some(log_message.to_owned());
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        tracing::debug!(error = %error, reason, "librdkafka error");
        // "All brokers down" follows the error that says why: the why is kept.
        let generic = error.rdkafka_error_code() == Some(RDKafkaErrorCode::AllBrokersDown);
        let mut c = self.causes.lock().unwrap_or_else(|p| p.into_inner());
        let slot = if generic {
            &mut c.generic
        } else {
            &mut c.error
        };
        *slot = Some(reason.to_owned());
    }
}

impl ConsumerContext for LastCause {}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn parse(json: &str) -> KafkaConfig {
        serde_json::from_str(json).unwrap()
    }

    fn get(c: &ClientConfig, k: &str) -> Option<String> {
        c.get(k).map(str::to_owned)
    }

    #[test]
    fn defaults_are_plaintext_on_the_loopback_without_warning() {
        let k = KafkaConfig::default();
        k.validate().unwrap();
        assert_eq!(k.plaintext_warning(), None);
        let c = k.client_config().unwrap();
        assert_eq!(get(&c, "security.protocol").as_deref(), Some("plaintext"));
        assert_eq!(
            get(&c, "bootstrap.servers").as_deref(),
            Some("127.0.0.1:9092")
        );
    }

    #[test]
    fn plaintext_off_the_loopback_is_flagged_unless_chosen() {
        let k = parse(r#"{"brokers":"127.0.0.1:9092,kafka-1.prod:9092"}"#);
        assert_eq!(k.plaintext_warning().as_deref(), Some("kafka-1.prod:9092"));
        let k = parse(r#"{"brokers":"localhost:9092,[::1]:9092"}"#);
        assert_eq!(k.plaintext_warning(), None);
        let k = parse(r#"{"brokers":"kafka-1.prod:9092","security_protocol":"PLAINTEXT"}"#);
        assert_eq!(k.plaintext_warning(), None);
    }

    #[test]
    fn sasl_ssl_with_scram_and_a_password_file() {
        let dir = std::env::temp_dir().join(format!("kcfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let pw = dir.join("pw");
        std::fs::write(&pw, "s3cr3t-from-file\n").unwrap();
        let k = parse(&format!(
            r#"{{"brokers":"k:9095","security_protocol":"SASL_SSL","ssl_ca_file":"/etc/ca.pem",
                "sasl_mechanism":"scram-sha-512","sasl_username":"router",
                "sasl_password_file":{:?},"librdkafka_options":{{"socket.keepalive.enable":"true"}}}}"#,
            pw.display().to_string()
        ));
        let c = k.client_config().unwrap();
        assert_eq!(get(&c, "security.protocol").as_deref(), Some("sasl_ssl"));
        assert_eq!(get(&c, "sasl.mechanism").as_deref(), Some("SCRAM-SHA-512"));
        assert_eq!(get(&c, "sasl.username").as_deref(), Some("router"));
        assert_eq!(
            get(&c, "sasl.password").as_deref(),
            Some("s3cr3t-from-file")
        );
        assert_eq!(get(&c, "ssl.ca.location").as_deref(), Some("/etc/ca.pem"));
        assert_eq!(get(&c, "socket.keepalive.enable").as_deref(), Some("true"));
        std::fs::remove_file(&pw).unwrap();
        let err = k.client_config().unwrap_err().to_string();
        assert!(
            err.contains("kafka.sasl_password_file") && err.contains("pw"),
            "{err}"
        );
    }

    #[test]
    fn the_key_passphrase_comes_from_a_file_re_read_for_each_client() {
        let dir = std::env::temp_dir().join(format!("kcfg-key-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let pw = dir.join("key.pw");
        std::fs::write(&pw, "k3y-pass-one\n").unwrap();
        let k = parse(&format!(
            r#"{{"security_protocol":"ssl","ssl_certificate_file":"/c","ssl_key_file":"/k",
                "ssl_key_password_file":{:?}}}"#,
            pw.display().to_string()
        ));
        let c = k.client_config().unwrap();
        assert_eq!(get(&c, "ssl.key.password").as_deref(), Some("k3y-pass-one"));
        // Rotated: the next client has the new one.
        std::fs::write(&pw, "k3y-pass-two\n").unwrap();
        let c = k.client_config().unwrap();
        assert_eq!(get(&c, "ssl.key.password").as_deref(), Some("k3y-pass-two"));
        assert!(!format!("{k:?}").contains("k3y-pass"));
        std::fs::remove_file(&pw).unwrap();
        let err = k.client_config().unwrap_err().to_string();
        assert!(
            err.contains("kafka.ssl_key_password_file") && !err.contains("k3y-pass"),
            "{err}"
        );
        // One source, and only with a key.
        let both = parse(&format!(
            r#"{{"security_protocol":"ssl","ssl_certificate_file":"/c","ssl_key_file":"/k",
                "ssl_key_password":"x","ssl_key_password_file":{:?}}}"#,
            pw.display().to_string()
        ));
        assert!(both
            .validate()
            .unwrap_err()
            .to_string()
            .contains("not both"));
        let keyless = parse(r#"{"security_protocol":"ssl","ssl_key_password_file":"/p"}"#);
        assert!(keyless
            .validate()
            .unwrap_err()
            .to_string()
            .contains("without ssl_key_file"));
    }

    #[test]
    fn mtls_sets_certificate_and_key() {
        let k = parse(
            r#"{"security_protocol":"ssl","ssl_ca_file":"/ca","ssl_certificate_file":"/c","ssl_key_file":"/k"}"#,
        );
        let c = k.client_config().unwrap();
        assert_eq!(get(&c, "ssl.certificate.location").as_deref(), Some("/c"));
        assert_eq!(get(&c, "ssl.key.location").as_deref(), Some("/k"));
        assert_eq!(get(&c, "sasl.mechanism"), None);
    }

    #[test]
    fn conflicting_or_missing_settings_are_refused_by_name() {
        let cases = [
            (r#"{"ssl_ca_file":"/ca"}"#, "ssl_* settings need"),
            (
                r#"{"security_protocol":"ssl","ssl_certificate_file":"/c"}"#,
                "ssl_certificate_file and ssl_key_file",
            ),
            (
                r#"{"security_protocol":"sasl_ssl"}"#,
                "needs sasl_mechanism",
            ),
            (
                r#"{"security_protocol":"sasl_ssl","sasl_mechanism":"PLAIN"}"#,
                "sasl_username",
            ),
            (
                r#"{"security_protocol":"sasl_ssl","sasl_mechanism":"PLAIN","sasl_username":"u"}"#,
                "password is missing",
            ),
            (
                r#"{"security_protocol":"sasl_ssl","sasl_mechanism":"PLAIN","sasl_username":"u","sasl_password":"x","sasl_password_file":"/f"}"#,
                "not both",
            ),
            (r#"{"sasl_username":"u"}"#, "sasl_* settings need"),
            (
                r#"{"librdkafka_options":{"SASL.Password":"x"}}"#,
                "may not set 'SASL.Password'",
            ),
            (
                r#"{"librdkafka_options":{"security.protocol":"ssl"}}"#,
                "may not set 'security.protocol'",
            ),
            (r#"{"brokers":" "}"#, "brokers is empty"),
        ];
        for (json, want) in cases {
            let err = parse(json).validate().unwrap_err().to_string();
            assert!(err.contains(want), "{json}: {err}");
        }
        let err = serde_json::from_str::<KafkaConfig>(r#"{"security_protocol":"tls"}"#)
            .unwrap_err()
            .to_string();
        assert!(err.contains("SASL_SSL"), "{err}");
        let err = serde_json::from_str::<KafkaConfig>(r#"{"sasl_passwrod":"x"}"#)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("sasl_passwrod") && !err.contains("\"x\""),
            "{err}"
        );
    }

    #[test]
    fn a_plaintext_client_closed_at_the_first_request_is_told_about_tls() {
        let reason = "127.0.0.1:9195/bootstrap: Disconnected: connection closed by peer: receive 0 after POLLIN (after 1ms in state APIVERSION_QUERY)";
        let hint = KafkaConfig::default().explain(reason);
        assert!(
            hint.starts_with(reason)
                && hint.contains("TLS listener? kafka.security_protocol is PLAINTEXT"),
            "{hint}"
        );
        let tls = parse(r#"{"security_protocol":"ssl"}"#);
        assert_eq!(tls.explain(reason), reason);
        assert_eq!(KafkaConfig::default().explain("refused"), "refused");
    }

    #[test]
    fn secrets_never_print() {
        let k = parse(
            r#"{"security_protocol":"sasl_ssl","sasl_mechanism":"PLAIN","sasl_username":"u","sasl_password":"hunter2-DISTINCT"}"#,
        );
        let shown = format!("{k:?} {}", k.sasl_password.as_ref().unwrap());
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("***"), "{shown}");
        // A number from the environment layer is still a password, not an
        // error that quotes it.
        let k: KafkaConfig = serde_json::from_str(r#"{"sasl_password":123456}"#).unwrap();
        assert_eq!(k.sasl_password.unwrap().expose(), "123456");
    }
}
