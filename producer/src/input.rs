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
use serde::{Deserialize, Deserializer as _};

/// One line of hook input.
#[derive(Debug)]
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
        // A visitor, not an untagged enum: the error is then raised at the
        // value, where the parser knows the position (and so the field).
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = Timestamp;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("an RFC 3339 time or integer Unix seconds")
            }

            fn visit_i64<E: serde::de::Error>(self, s: i64) -> Result<Timestamp, E> {
                s.checked_mul(1_000_000)
                    .map(Timestamp)
                    .ok_or_else(|| E::custom(format!("{s} seconds is out of range")))
            }

            fn visit_u64<E: serde::de::Error>(self, s: u64) -> Result<Timestamp, E> {
                i64::try_from(s)
                    .map_err(|_| E::custom(format!("{s} seconds is out of range")))
                    .and_then(|s| self.visit_i64(s))
            }

            fn visit_str<E: serde::de::Error>(self, t: &str) -> Result<Timestamp, E> {
                DateTime::parse_from_rfc3339(t)
                    .map(|dt| Timestamp(dt.timestamp_micros()))
                    .map_err(|e| {
                        E::custom(format!(
                            "{t:?} is not an RFC 3339 time or Unix seconds: {e}"
                        ))
                    })
            }
        }
        d.deserialize_any(Visitor)
    }
}

/// Microseconds since the Unix epoch, now.
pub fn now_micros() -> i64 {
    Utc::now().timestamp_micros()
}

impl HookEvent {
    /// Parses one line of input. Errors name the field by its path
    /// (`package.epoch: invalid type: string "x", expected i32`), and give
    /// the byte offset in the line.
    pub fn parse(line: &str) -> Result<HookEvent, String> {
        // First the kind alone, then the event itself, read straight from
        // the text (not through serde's buffered tagged-enum content, which
        // would lose the position, and with it the field path).
        #[derive(Deserialize)]
        struct Kind {
            kind: Option<String>,
        }
        if !line.trim_start().starts_with('{') {
            return Err("a hook line is one JSON object, {\"kind\":...}".into());
        }
        let kind = serde_json::from_str::<Kind>(line)
            .map_err(|e| describe(line, &e))?
            .kind
            .ok_or_else(|| "missing field `kind` (change or inventory)".to_owned())?;
        let mut de = serde_json::Deserializer::from_str(line);
        let event = match kind.as_str() {
            "change" => (&mut de)
                .deserialize_map(WithoutKind::<ChangeInput>(std::marker::PhantomData))
                .map(|c| HookEvent::Change(Box::new(c))),
            "inventory" => (&mut de)
                .deserialize_map(WithoutKind::<InventoryInput>(std::marker::PhantomData))
                .map(HookEvent::Inventory),
            other => {
                return Err(format!(
                    "kind: unknown kind {other:?}, expected change or inventory"
                ))
            }
        };
        event
            .and_then(|e| de.end().map(|()| e))
            .map_err(|e| describe(line, &e))
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

/// Deserializes `T` from a JSON object, skipping its `kind` key.
struct WithoutKind<T>(std::marker::PhantomData<T>);

impl<'de, T: Deserialize<'de>> serde::de::Visitor<'de> for WithoutKind<T> {
    type Value = T;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<T, A::Error> {
        T::deserialize(serde::de::value::MapAccessDeserializer::new(SkipKind(map)))
    }
}

/// A map without its `kind` entry.
struct SkipKind<A>(A);

impl<'de, A: serde::de::MapAccess<'de>> serde::de::MapAccess<'de> for SkipKind<A> {
    type Error = A::Error;

    fn next_key_seed<K: serde::de::DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, A::Error> {
        use serde::de::IntoDeserializer;
        loop {
            match self.0.next_key::<Cow<'de, str>>()? {
                None => return Ok(None),
                Some(key) if key == "kind" => {
                    self.0.next_value::<serde::de::IgnoredAny>()?;
                }
                Some(key) => {
                    let key: serde::de::value::CowStrDeserializer<'de, A::Error> =
                        key.into_deserializer();
                    return seed.deserialize(key).map(Some);
                }
            }
        }
    }

    fn next_value_seed<V: serde::de::DeserializeSeed<'de>>(
        &mut self,
        seed: V,
    ) -> Result<V::Value, A::Error> {
        self.0.next_value_seed(seed)
    }
}

/// A parse error as `path: message (at byte N)`, the path found from the
/// error's position in `line` ([`path_at`]); syntax errors keep serde's text.
fn describe(line: &str, e: &serde_json::Error) -> String {
    let text = e.to_string();
    if e.line() == 0 {
        return text;
    }
    let message = text
        .strip_suffix(&format!(" at line {} column {}", e.line(), e.column()))
        .unwrap_or(&text);
    // One line: the column is the 1-based byte position where it stopped.
    let offset = e.column().saturating_sub(1);
    match e.classify() {
        serde_json::error::Category::Data => match path_at(line, offset) {
            // Reported at the key itself: name the object that has it.
            path if message.starts_with("unknown field")
                || message.starts_with("duplicate field") =>
            {
                let parent = path.rfind(['.', '[']).map_or("", |i| &path[..i]);
                if parent.is_empty() {
                    format!("{message} (at byte {offset})")
                } else {
                    format!("{parent}: {message} (at byte {offset})")
                }
            }
            path if path.is_empty() => format!("{message} (at byte {offset})"),
            path => format!("{path}: {message} (at byte {offset})"),
        },
        _ => format!("invalid JSON: {message} (at byte {offset})"),
    }
}

/// The field path (`package.epoch`, `packages[3].name`) of the JSON value
/// that holds byte `offset` of `text`: the keys and indices of the objects
/// and arrays open there. A closing brace at `offset` closes its object, so
/// a "missing field" reported at the end of `package` names `package`.
pub fn path_at(text: &str, offset: usize) -> String {
    enum Frame {
        Object(Option<String>),
        Array(usize),
    }
    let bytes = text.as_bytes();
    let mut stack: Vec<Frame> = Vec::new();
    let mut i = 0usize;
    while i < bytes.len() && i <= offset {
        match bytes[i] {
            b'{' => stack.push(Frame::Object(None)),
            b'[' => stack.push(Frame::Array(0)),
            b'}' | b']' => {
                stack.pop();
            }
            b',' => match stack.last_mut() {
                Some(Frame::Array(n)) => *n += 1,
                Some(Frame::Object(key)) => *key = None,
                None => {}
            },
            b'"' => {
                let start = i + 1;
                let mut j = start;
                while j < bytes.len() && bytes[j] != b'"' {
                    j += if bytes[j] == b'\\' { 2 } else { 1 };
                }
                if let Some(Frame::Object(key @ None)) = stack.last_mut() {
                    *key = Some(
                        String::from_utf8_lossy(&bytes[start..j.min(bytes.len())]).into_owned(),
                    );
                }
                i = j;
            }
            _ => {}
        }
        i += 1;
    }
    let mut path = String::new();
    for frame in &stack {
        match frame {
            Frame::Object(Some(key)) => {
                if !path.is_empty() {
                    path.push('.');
                }
                path.push_str(key);
            }
            Frame::Object(None) => {}
            Frame::Array(n) => path.push_str(&format!("[{n}]")),
        }
    }
    path
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
            chunk: None,
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

    fn err(line: &str) -> String {
        HookEvent::parse(line).unwrap_err()
    }

    #[test]
    fn type_errors_name_the_field_by_its_path() {
        let line = UPGRADE.replace(
            r#""epoch":1,"version":"3.0.7","release":"27.el9""#,
            r#""epoch":"one","version":"3.0.7","release":"27.el9""#,
        );
        // The byte is the closing quote of the bad value.
        let at = line.find(r#""one""#).unwrap() + 4;
        assert_eq!(
            err(&line),
            format!(r#"package.epoch: invalid type: string "one", expected i32 (at byte {at})"#)
        );
        let e = err(&UPGRADE.replace(r#""rpm_tid":1764000000"#, r#""rpm_tid":"soon""#));
        assert!(
            e.starts_with("transaction.rpm_tid: invalid type: string \"soon\", expected i64"),
            "{e}"
        );
        let e = err(&UPGRADE.replace(r#""release":"25.el9""#, r#""release":25"#));
        assert!(
            e.starts_with("replaced.release: invalid type: integer `25`, expected a string"),
            "{e}"
        );
        let e = err(&UPGRADE.replace(r#""hostname":"h1""#, r#""hostname":["h1"]"#));
        assert!(
            e.starts_with("host.hostname: invalid type: sequence, expected a string"),
            "{e}"
        );
        let e = err(&UPGRADE.replace("2026-11-24T08:00:01.5Z", "yesterday"));
        assert!(
            e.starts_with("event_time: \"yesterday\" is not an RFC 3339 time"),
            "{e}"
        );
        let e = err(&UPGRADE.replace(r#""buildtime":1716300000"#, r#""buildtime":true"#));
        assert!(e.starts_with("package.buildtime: invalid type: boolean `true`, expected an RFC 3339 time or integer Unix seconds"), "{e}");
        let e = err(
            r#"{"kind":"inventory","packages":[{"name":"a","version":"1","release":"1","arch":"x"},{"name":"b","epoch":"x","version":"1","release":"1","arch":"x"}]}"#,
        );
        assert!(
            e.starts_with("packages[1].epoch: invalid type: string \"x\", expected i32"),
            "{e}"
        );
    }

    #[test]
    fn missing_and_unknown_fields_name_their_object() {
        let e = err(&UPGRADE.replace(r#","arch":"x86_64","repo":"baseos""#, r#","repo":"baseos""#));
        assert!(e.starts_with("package: missing field `arch`"), "{e}");
        let e = err(&UPGRADE.replace(r#""login_user":"alice""#, r#""login_usr":"alice""#));
        assert!(
            e.starts_with("transaction: unknown field `login_usr`"),
            "{e}"
        );
        let e = err(&UPGRADE.replace(r#""source":"dnf""#, r#""sauce":"dnf""#));
        assert!(e.starts_with("unknown field `sauce`"), "{e}");
        assert_eq!(
            err(r#"{"source":"dnf"}"#),
            "missing field `kind` (change or inventory)"
        );
        assert_eq!(
            err("[1,2]"),
            r#"a hook line is one JSON object, {"kind":...}"#
        );
        assert!(err(r#"{"kind":"change""#).starts_with("invalid JSON: EOF while parsing an object"));
        assert!(err(&format!("{UPGRADE} x")).starts_with("invalid JSON: trailing characters"));
    }

    #[test]
    fn path_at_follows_objects_arrays_and_escaped_quotes() {
        let text = r#"{"a":{"b\"c":[1,{"d":2}]},"e":3}"#;
        let at = |needle: &str| path_at(text, text.find(needle).unwrap());
        assert_eq!(at("2"), r#"a.b\"c[1].d"#);
        assert_eq!(at("1"), r#"a.b\"c[0]"#);
        assert_eq!(at("3"), "e");
        assert_eq!(path_at(text, text.find("]}").unwrap() + 1), "a");
    }
}
