//! The host identity every event carries, read from the host itself.

use std::borrow::Cow;
use std::path::Path;

use pkgstream_schemas::Host;

use crate::config::HostConfig;
use crate::ProducerError;

/// Reads machine id, hostname and os-release as configured.
pub fn detect(cfg: &HostConfig) -> Result<Host<'static>, ProducerError> {
    let machine_id = read_trimmed(&cfg.machine_id_file)?;
    if machine_id.is_empty() {
        return Err(ProducerError::HostIdentity {
            path: cfg.machine_id_file.clone(),
            reason: "file is empty (run systemd-machine-id-setup)".into(),
        });
    }
    let hostname = read_trimmed(&cfg.hostname_file)?;
    let os_release =
        std::fs::read_to_string(&cfg.os_release_file).map_err(|e| ProducerError::HostIdentity {
            path: cfg.os_release_file.clone(),
            reason: e.to_string(),
        })?;
    Ok(Host {
        machine_id: Cow::Owned(machine_id),
        hostname: Cow::Owned(hostname),
        os_id: Cow::Owned(os_release_value(&os_release, "ID").unwrap_or_else(|| "unknown".into())),
        os_version: Cow::Owned(
            os_release_value(&os_release, "VERSION_ID").unwrap_or_else(|| "unknown".into()),
        ),
        arch: Cow::Borrowed(std::env::consts::ARCH),
    })
}

fn read_trimmed(path: &Path) -> Result<String, ProducerError> {
    std::fs::read_to_string(path)
        .map(|s| s.trim().to_owned())
        .map_err(|e| ProducerError::HostIdentity {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })
}

/// `KEY=value` or `KEY="value"` from os-release text.
fn os_release_value(text: &str, key: &str) -> Option<String> {
    text.lines().find_map(|line| {
        let value = line.trim().strip_prefix(key)?.strip_prefix('=')?;
        Some(value.trim_matches(|c| c == '"' || c == '\'').to_owned())
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn os_release_parsing() {
        let text = "NAME=\"Rocky Linux\"\nID=\"rocky\"\nID_LIKE=\"rhel centos fedora\"\nVERSION_ID=\"9.4\"\n";
        assert_eq!(os_release_value(text, "ID").as_deref(), Some("rocky"));
        assert_eq!(os_release_value(text, "VERSION_ID").as_deref(), Some("9.4"));
        assert_eq!(os_release_value(text, "BUILD_ID"), None);
    }

    #[test]
    fn missing_machine_id_names_the_file() {
        let cfg = HostConfig {
            machine_id_file: "/nonexistent/machine-id".into(),
            ..HostConfig::default()
        };
        let err = detect(&cfg).unwrap_err().to_string();
        assert!(err.contains("/nonexistent/machine-id"), "{err}");
    }
}
