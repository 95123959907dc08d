//! What the sinks' HTTP clients (the search engine, Prometheus remote
//! write) share: TLS with a CA file and an optional client certificate,
//! and credentials sent as an `Authorization` header — never in the URL,
//! where transport errors would print them — read from the configuration,
//! the environment or a file, and held in a [`Secret`] that never prints.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde::Deserialize;

use crate::config::Secret;
use crate::SinkError;

/// TLS settings of a client (`[search_sink.tls]`,
/// `[metrics_sink.remote_write_tls]`). Used for `https://` URLs only.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM file of the CA certificate(s) the server's certificate must
    /// chain to; when set, only these are trusted. Empty: the public web
    /// roots (Mozilla's, built in).
    #[serde(default)]
    pub ca_file: String,
    /// PEM file of a client certificate (and its chain) for mutual TLS;
    /// needs `key_file`. Empty: no client certificate.
    #[serde(default)]
    pub cert_file: String,
    /// PEM file of the client certificate's private key (PKCS#8, PKCS#1 or
    /// SEC1).
    #[serde(default)]
    pub key_file: String,
}

fn invalid(key: String, reason: impl Into<String>) -> SinkError {
    SinkError::Config {
        key,
        reason: reason.into(),
    }
}

impl TlsConfig {
    /// Checks the settings without I/O; `section` names them in errors
    /// (`search_sink.tls`).
    pub fn validate(&self, section: &str) -> Result<(), SinkError> {
        match (self.cert_file.is_empty(), self.key_file.is_empty()) {
            (false, true) => Err(invalid(
                format!("{section}.key_file"),
                "cert_file is set: the client certificate needs its key_file",
            )),
            (true, false) => Err(invalid(
                format!("{section}.cert_file"),
                "key_file is set: the client key needs its cert_file",
            )),
            _ => Ok(()),
        }
    }

    /// The rustls configuration these settings ask for, or `None` when
    /// none is set (ureq's default: the public web roots, no client
    /// certificate). Reads the files.
    pub fn client_config(
        &self,
        section: &str,
    ) -> Result<Option<Arc<rustls::ClientConfig>>, SinkError> {
        if self.ca_file.is_empty() && self.cert_file.is_empty() {
            return Ok(None);
        }
        let mut roots = rustls::RootCertStore::empty();
        if self.ca_file.is_empty() {
            roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        } else {
            let key = format!("{section}.ca_file");
            for cert in read_certs(&key, &self.ca_file)? {
                roots.add(cert).map_err(|e| {
                    invalid(
                        key.clone(),
                        format!("'{}': not a usable CA certificate: {e}", self.ca_file),
                    )
                })?;
            }
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| invalid(section.to_owned(), format!("TLS set-up: {e}")))?
            .with_root_certificates(roots);
        let config = if self.cert_file.is_empty() {
            builder.with_no_client_auth()
        } else {
            let certs = read_certs(&format!("{section}.cert_file"), &self.cert_file)?;
            let key_key = format!("{section}.key_file");
            let pem = read_file(&key_key, &self.key_file)?;
            let key = PrivateKeyDer::from_pem_slice(&pem).map_err(|e| {
                invalid(
                    key_key.clone(),
                    format!("'{}': no PEM private key: {e}", self.key_file),
                )
            })?;
            builder.with_client_auth_cert(certs, key).map_err(|e| {
                invalid(
                    key_key,
                    format!("'{}' does not fit '{}': {e}", self.key_file, self.cert_file),
                )
            })?
        };
        Ok(Some(Arc::new(config)))
    }

    /// A `ureq` agent with these TLS settings and the given timeouts.
    pub fn agent(
        &self,
        section: &str,
        connect: Duration,
        request: Duration,
    ) -> Result<ureq::Agent, SinkError> {
        let mut b = ureq::AgentBuilder::new()
            .timeout_connect(connect)
            .timeout(request)
            .max_idle_connections_per_host(64);
        if let Some(tls) = self.client_config(section)? {
            b = b.tls_config(tls);
        }
        Ok(b.build())
    }
}

fn read_file(key: &str, path: &str) -> Result<Vec<u8>, SinkError> {
    std::fs::read(path).map_err(|e| invalid(key.to_owned(), format!("cannot read '{path}': {e}")))
}

fn read_certs(key: &str, path: &str) -> Result<Vec<CertificateDer<'static>>, SinkError> {
    let pem = read_file(key, path)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| invalid(key.to_owned(), format!("'{path}': bad PEM: {e}")))?;
    if certs.is_empty() {
        return Err(invalid(
            key.to_owned(),
            format!("'{path}' holds no PEM certificate"),
        ));
    }
    Ok(certs)
}

/// A secret's value, from the configuration (`value`, e.g. set by the
/// environment) or from `file` (its first line; for files that Kubernetes
/// or Vault mounts). `key` names the setting in errors; the value is never
/// part of one.
pub fn secret_value(key: &str, value: &Secret, file: &str) -> Result<Secret, SinkError> {
    if file.is_empty() {
        return Ok(value.clone());
    }
    let file_key = format!("{key}_file");
    let text = std::fs::read_to_string(file)
        .map_err(|e| invalid(file_key.clone(), format!("cannot read '{file}': {e}")))?;
    let line = text.lines().next().unwrap_or("").trim_end();
    if line.is_empty() {
        return Err(invalid(file_key, format!("'{file}' is empty")));
    }
    Ok(Secret(line.to_owned()))
}

/// Checks that at most one of a secret's two sources is set.
pub fn one_source(key: &str, value: &Secret, file: &str) -> Result<(), SinkError> {
    if !value.0.is_empty() && !file.is_empty() {
        return Err(invalid(
            key.to_owned(),
            format!("both {key} and {key}_file are set: choose one"),
        ));
    }
    Ok(())
}

/// `Authorization: Basic base64(user:password)`.
pub fn basic_auth(user: &str, password: &Secret) -> Secret {
    let raw = format!("{user}:{}", password.0);
    Secret(format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(raw)
    ))
}

/// Whether a URL carries credentials (`https://user:pw@host`): refused,
/// since an error that prints the URL would print them.
pub fn has_userinfo(url: &str) -> bool {
    url::Url::parse(url)
        .map(|u| !u.username().is_empty() || u.password().is_some())
        .unwrap_or(false)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn basic_auth_is_rfc_7617() {
        // RFC 7617 section 2's example.
        let h = basic_auth("Aladdin", &Secret("open sesame".into()));
        assert_eq!(h.0, "Basic QWxhZGRpbjpvcGVuIHNlc2FtZQ==");
        assert_eq!(format!("{h:?}"), "***");
    }

    #[test]
    fn secrets_come_from_a_file_first_line() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("pw");
        std::fs::write(&p, "s3cr3t-from-file\n").unwrap();
        let path = p.display().to_string();
        let v = secret_value("search_sink.password", &Secret::default(), &path).unwrap();
        assert_eq!(v.0, "s3cr3t-from-file");
        std::fs::write(&p, "\n").unwrap();
        let e = secret_value("search_sink.password", &Secret::default(), &path)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("search_sink.password_file") && e.contains("empty"),
            "{e}"
        );
        let e = secret_value(
            "search_sink.password",
            &Secret::default(),
            "/nonexistent/pw",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("cannot read '/nonexistent/pw'"), "{e}");
        let e = one_source("search_sink.password", &Secret("x".into()), &path)
            .unwrap_err()
            .to_string();
        assert!(e.contains("choose one"), "{e}");
    }

    #[test]
    fn tls_files_are_checked_with_the_key_named() {
        let t = TlsConfig {
            cert_file: "/c.pem".into(),
            ..Default::default()
        };
        let e = t.validate("search_sink.tls").unwrap_err().to_string();
        assert!(e.contains("search_sink.tls.key_file"), "{e}");
        assert!(TlsConfig::default().client_config("x").unwrap().is_none());
        let t = TlsConfig {
            ca_file: "/nonexistent/ca.pem".into(),
            ..Default::default()
        };
        let e = t.client_config("search_sink.tls").unwrap_err().to_string();
        assert!(
            e.contains("search_sink.tls.ca_file") && e.contains("/nonexistent/ca.pem"),
            "{e}"
        );
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("ca.pem");
        std::fs::write(&p, "not a certificate\n").unwrap();
        let t = TlsConfig {
            ca_file: p.display().to_string(),
            ..Default::default()
        };
        let e = t.client_config("search_sink.tls").unwrap_err().to_string();
        assert!(e.contains("holds no PEM certificate"), "{e}");
    }

    #[test]
    fn credentials_in_urls_are_seen() {
        assert!(has_userinfo("https://u:p@h:9200"));
        assert!(has_userinfo("https://u@h:9200"));
        assert!(!has_userinfo("https://h:9200/"));
    }
}
