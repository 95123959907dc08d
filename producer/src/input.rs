//! The hook input format of `pkgstream-emit record`: one JSON object per
//! line (NDJSON) on stdin. Documented with examples in `producer/README.md`.
//!
//! ```json
//! {"kind":"change","source":"dnf","action":"upgrade",
//!  "package":{"name":"openssl-libs","epoch":1,"version":"3.0.7","release":"27.el9","arch":"x86_64","repo":"baseos"},
//!  "replaced":{"name":"openssl-libs","epoch":1,"version":"3.0.7","release":"25.el9","arch":"x86_64"},
//!  "transaction":{"rpm_tid":1764000000,"history_id":42,"command_line":"dnf upgrade openssl","login_user":"alice"}}
//! {"kind":"inventory","packages":[{"name":"bash","version":"5.1.8","release":"9.el9","arch":"x86_64"}]}
//! ```
//! Times are RFC 3339 strings or integer Unix seconds (what rpm headers
//! hold). `event_time`/`taken_at` default to now, `host` to the local host
//! identity, and `event_id`/`snapshot_id` are always derived here, never
//! taken from the hook.

use std::borrow::Cow;

use chrono::{DateTime, Utc};
use pkgstream_schemas::{
    change_event_id, snapshot_id, Action, Host, InventorySnapshot, Package, PackageChange, Source,
    Transaction,
};
use serde::Deserialize;

/// One line of hook input.
#[derive(Debug, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum HookEvent {
    /// A package change.
    Change(Box<ChangeInput>),
    /// A full rpmdb snapshot.
    Inventory(InventoryInput),
}

/// A package change as a hook reports it.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChangeInput {
    /// `dnf`, `yum`, `rpm` or `inventory` (any case).
    pub source: Source,
    /// `install`, `upgrade`, `downgrade`, `reinstall`, `remove`, `obsolete`.
    pub action: Action,
    /// The package acted on.
    pub package: PackageInput,
    /// The package it replaced (required for upgrade and downgrade).
    #[serde(default)]
    pub replaced: Option<PackageInput>,
    /// The transaction.
    pub transaction: TransactionInput,
    /// When it happened; default: now.
    #[serde(default)]
    pub event_time: Option<Timestamp>,
    /// Host identity fields to override (simulators, containers).
    #[serde(default)]
    pub host: Option<HostInput>,
}

/// An inventory snapshot as a hook reports it.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InventoryInput {
    /// Every installed package.
    pub packages: Vec<PackageInput>,
    /// When the rpmdb was read; default: now.
    #[serde(default)]
    pub taken_at: Option<Timestamp>,
    /// Host identity fields to override.
    #[serde(default)]
    pub host: Option<HostInput>,
}

/// A package in hook input.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(missing_docs)]
pub struct PackageInput {
    pub name: String,
    #[serde(default)]
    pub epoch: Option<i32>,
    pub version: String,
    pub release: String,
    pub arch: String,
    #[serde(default)]
    pub repo: Option<String>,
    #[serde(default)]
    pub vendor: Option<String>,
    #[serde(default)]
    pub buildtime: Option<Timestamp>,
    #[serde(default)]
    pub install_time: Option<Timestamp>,
    #[serde(default)]
    pub size: Option<i64>,
    #[serde(default)]
    pub digest: Option<String>,
}

/// The transaction in hook input.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(missing_docs)]
pub struct TransactionInput {
    pub rpm_tid: i64,
    #[serde(default)]
    pub history_id: Option<i64>,
    #[serde(default)]
    pub command_line: Option<String>,
    #[serde(default)]
    pub login_user: Option<String>,
    #[serde(default)]
    pub start_time: Option<Timestamp>,
}

/// Host fields a hook may override; missing ones come from the host.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(missing_docs)]
pub struct HostInput {
    pub machine_id: Option<String>,
    pub hostname: Option<String>,
    pub os_id: Option<String>,
    pub os_version: Option<String>,
    pub arch: Option<String>,
}

/// A point in time: RFC 3339 text or integer Unix seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timestamp(pub i64);

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Seconds(i64),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Seconds(s) => s
                .checked_mul(1_000_000)
                .map(Timestamp)
                .ok_or_else(|| serde::de::Error::custom(format!("{s} seconds is out of range"))),
            Raw::Text(t) => DateTime::parse_from_rfc3339(&t)
                .map(|dt| Timestamp(dt.timestamp_micros()))
                .map_err(|e| {
                    serde::de::Error::custom(format!(
                        "{t:?} is not an RFC 3339 time or Unix seconds: {e}"
                    ))
                }),
        }
    }
}

/// Microseconds since the Unix epoch, now.
pub fn now_micros() -> i64 {
    Utc::now().timestamp_micros()
}

impl HookEvent {
    /// Parses one line of input.
    pub fn parse(line: &str) -> Result<HookEvent, String> {
        serde_json::from_str(line).map_err(|e| e.to_string())
    }

    /// Whether this event needs the local host identity (a field is missing).
    pub fn needs_local_host(&self) -> bool {
        let host = match self {
            HookEvent::Change(c) => &c.host,
            HookEvent::Inventory(i) => &i.host,
        };
        host.as_ref().is_none_or(|h| {
            h.machine_id.is_none()
                || h.hostname.is_none()
                || h.os_id.is_none()
                || h.os_version.is_none()
                || h.arch.is_none()
        })
    }
}

fn host(input: Option<HostInput>, local: Option<&Host<'static>>) -> Host<'static> {
    let h = input.unwrap_or_default();
    let pick = |v: Option<String>, local: Option<&Cow<'static, str>>| -> Cow<'static, str> {
        v.map(Cow::Owned)
            .or_else(|| local.cloned())
            .unwrap_or(Cow::Borrowed(""))
    };
    Host {
        machine_id: pick(h.machine_id, local.map(|l| &l.machine_id)),
        hostname: pick(h.hostname, local.map(|l| &l.hostname)),
        os_id: pick(h.os_id, local.map(|l| &l.os_id)),
        os_version: pick(h.os_version, local.map(|l| &l.os_version)),
        arch: pick(h.arch, local.map(|l| &l.arch)),
    }
}

fn to_package(p: PackageInput) -> Package<'static> {
    Package {
        name: p.name.into(),
        epoch: p.epoch,
        version: p.version.into(),
        release: p.release.into(),
        arch: p.arch.into(),
        repo: p.repo.map(Cow::Owned),
        vendor: p.vendor.map(Cow::Owned),
        buildtime: p.buildtime.map(|t| t.0),
        install_time: p.install_time.map(|t| t.0),
        size: p.size,
        digest: p.digest.map(Cow::Owned),
    }
}

impl ChangeInput {
    /// The contract event, with its derived `event_id`.
    pub fn into_event(self, local: Option<&Host<'static>>) -> PackageChange<'static> {
        let host = host(self.host, local);
        let package = to_package(self.package);
        let event_id = change_event_id(
            &host.machine_id,
            self.action,
            &package.name,
            package.epoch,
            &package.version,
            &package.release,
            &package.arch,
            self.transaction.rpm_tid,
        );
        PackageChange {
            event_id,
            event_time: self.event_time.map_or_else(now_micros, |t| t.0),
            host,
            source: self.source,
            action: self.action,
            package,
            replaced: self.replaced.map(to_package),
            transaction: Transaction {
                rpm_tid: self.transaction.rpm_tid,
                history_id: self.transaction.history_id,
                command_line: self.transaction.command_line.map(Cow::Owned),
                login_user: self.transaction.login_user.map(Cow::Owned),
                start_time: self.transaction.start_time.map(|t| t.0),
            },
        }
    }
}

impl InventoryInput {
    /// The contract snapshot, with its derived `snapshot_id`.
    pub fn into_snapshot(self, local: Option<&Host<'static>>) -> InventorySnapshot<'static> {
        let host = host(self.host, local);
        let taken_at = self.taken_at.map_or_else(now_micros, |t| t.0);
        InventorySnapshot {
            snapshot_id: snapshot_id(&host.machine_id, taken_at),
            taken_at,
            host,
            packages: self.packages.into_iter().map(to_package).collect(),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    const UPGRADE: &str = r#"{"kind":"change","source":"dnf","action":"upgrade","event_time":"2026-11-24T08:00:01.5Z","package":{"name":"openssl-libs","epoch":1,"version":"3.0.7","release":"27.el9","arch":"x86_64","repo":"baseos","buildtime":1716300000},"replaced":{"name":"openssl-libs","epoch":1,"version":"3.0.7","release":"25.el9","arch":"x86_64"},"transaction":{"rpm_tid":1764000000,"history_id":42,"command_line":"dnf upgrade openssl","login_user":"alice"},"host":{"machine_id":"abc","hostname":"h1","os_id":"rhel","os_version":"9.4","arch":"x86_64"}}"#;

    #[test]
    fn change_line_becomes_the_contract_event() {
        let HookEvent::Change(c) = HookEvent::parse(UPGRADE).unwrap() else {
            panic!("not a change")
        };
        let e = c.into_event(None);
        assert_eq!(e.action, Action::Upgrade);
        assert_eq!(e.source, Source::Dnf);
        assert_eq!(e.event_time, 1_795_507_201_500_000);
        assert_eq!(e.package.buildtime, Some(1_716_300_000_000_000));
        assert_eq!(e.replaced.as_ref().unwrap().release, "25.el9");
        assert_eq!(
            e.event_id,
            change_event_id(
                "abc",
                Action::Upgrade,
                "openssl-libs",
                Some(1),
                "3.0.7",
                "27.el9",
                "x86_64",
                1_764_000_000
            )
        );
    }

    #[test]
    fn same_change_from_two_hooks_has_one_id() {
        let rpm = UPGRADE
            .replace(r#""source":"dnf""#, r#""source":"RPM""#)
            .replace(
                r#","history_id":42,"command_line":"dnf upgrade openssl","login_user":"alice""#,
                "",
            );
        let id = |line: &str| match HookEvent::parse(line).unwrap() {
            HookEvent::Change(c) => c.into_event(None).event_id,
            HookEvent::Inventory(_) => unreachable!(),
        };
        assert_eq!(id(UPGRADE), id(&rpm));
    }

    #[test]
    fn errors_name_the_field() {
        let err = HookEvent::parse(&UPGRADE.replace(
            "\"arch\":\"x86_64\",\"repo\"",
            "\"arhc\":\"x86_64\",\"repo\"",
        ))
        .unwrap_err();
        assert!(err.contains("arhc"), "{err}");
        let err =
            HookEvent::parse(&UPGRADE.replace("2026-11-24T08:00:01.5Z", "yesterday")).unwrap_err();
        assert!(err.contains("yesterday"), "{err}");
        assert!(HookEvent::parse(r#"{"kind":"reboot"}"#)
            .unwrap_err()
            .contains("reboot"));
        assert!(
            HookEvent::parse(&UPGRADE.replace("\"upgrade\"", "\"upgrayed\""))
                .unwrap_err()
                .contains("upgrayed")
        );
    }

    #[test]
    fn missing_host_fields_come_from_the_local_host() {
        let line = UPGRADE.replace(r#","host":{"machine_id":"abc","hostname":"h1","os_id":"rhel","os_version":"9.4","arch":"x86_64"}"#, r#","host":{"hostname":"sim-1"}"#);
        let ev = HookEvent::parse(&line).unwrap();
        assert!(ev.needs_local_host());
        let local = pkgstream_schemas::sample::host(9);
        let HookEvent::Change(c) = ev else { panic!() };
        let e = c.into_event(Some(&local));
        assert_eq!(e.host.hostname, "sim-1");
        assert_eq!(e.host.machine_id, local.machine_id);
    }
}
