//! Host metadata for enrichment: the host table, its two sources, and
//! maintenance windows.
//!
//! Sources, later ones overriding earlier ones per host:
//! 1. a CSV file for small setups (`router.hosts_file`), re-read when it
//!    changes; columns `host,hostgroup,environment,owner,datacenter,tags,maintenance`
//!    where `host` is a machine id or a hostname, `tags` is `k=v;k=v` and
//!    `maintenance` is `DAYS HH:MM-HH:MM[; ...]` in UTC (`sat,sun 02:00-04:00`,
//!    `daily 22:00-02:00`);
//! 2. the compacted topic `pkgstream.hosts`: key = machine id, value = a
//!    JSON object [`HostMeta`] ([`HostMeta::from_topic_value`]), empty
//!    value = delete.
//!
//! Both sources go through one check, [`HostMeta::validated`]: what either
//! accepts, the router can put on every event of the host.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::{Arc, RwLock};

use chrono::{DateTime, Datelike, Timelike, Utc};
use serde::Deserialize;

use crate::RouterError;

/// What is known about one host.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostMeta {
    /// Host group.
    pub hostgroup: String,
    /// Environment (prod, staging, ...).
    pub environment: String,
    /// Owning team.
    #[serde(default)]
    pub owner: Option<String>,
    /// Datacenter or site.
    #[serde(default)]
    pub datacenter: Option<String>,
    /// Free-form tags.
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
    /// Weekly maintenance windows (UTC).
    #[serde(default)]
    pub maintenance: Vec<Window>,
}

/// A weekly maintenance window in UTC. `end` before `start` crosses
/// midnight into the next day.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, try_from = "String")]
pub struct Window {
    /// Days the window starts on (bit 0 = Monday ... bit 6 = Sunday).
    pub days: u8,
    /// Start, minutes after midnight.
    pub start: u16,
    /// End, minutes after midnight.
    pub end: u16,
}

impl TryFrom<String> for Window {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        Window::parse(&s)
    }
}

impl Window {
    /// Parses `sat,sun 02:00-04:00`, `daily 22:00-02:00`, `mon-fri 12:00-13:00`.
    pub fn parse(text: &str) -> Result<Window, String> {
        let bad = |why: &str| {
            format!("maintenance window {text:?}: {why} (expected e.g. \"sat,sun 02:00-04:00\")")
        };
        let (days, times) = text
            .trim()
            .split_once(' ')
            .ok_or_else(|| bad("missing time range"))?;
        let day = |d: &str| -> Result<u8, String> {
            ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
                .iter()
                .position(|n| n.eq_ignore_ascii_case(d.trim()))
                .map(|p| p as u8)
                .ok_or_else(|| bad(&format!("unknown day {d:?}")))
        };
        let mut mask = 0u8;
        for part in days.split(',') {
            if part.eq_ignore_ascii_case("daily") {
                mask |= 0x7f;
            } else if let Some((a, b)) = part.split_once('-') {
                let (a, b) = (day(a)?, day(b)?);
                let mut d = a;
                loop {
                    mask |= 1 << d;
                    if d == b {
                        break;
                    }
                    d = (d + 1) % 7;
                }
            } else {
                mask |= 1 << day(part)?;
            }
        }
        let (start, end) = times
            .trim()
            .split_once('-')
            .ok_or_else(|| bad("time range needs a '-'"))?;
        let hm = |t: &str| -> Result<u16, String> {
            let (h, m) = t
                .trim()
                .split_once(':')
                .ok_or_else(|| bad(&format!("{t:?} is not HH:MM")))?;
            let (h, m): (u16, u16) = (
                h.parse().map_err(|_| bad("bad hour"))?,
                m.parse().map_err(|_| bad("bad minute"))?,
            );
            if h > 24 || m > 59 || (h == 24 && m > 0) {
                return Err(bad(&format!("{t:?} is not a time of day")));
            }
            Ok(h * 60 + m)
        };
        Ok(Window {
            days: mask,
            start: hm(start)?,
            end: hm(end)?,
        })
    }

    /// Whether `t` falls in this window.
    pub fn contains(&self, t: DateTime<Utc>) -> bool {
        let day = t.weekday().num_days_from_monday() as u8;
        let minute = (t.hour() * 60 + t.minute()) as u16;
        let starts_on = |d: u8| self.days & (1 << d) != 0;
        if self.start < self.end {
            starts_on(day) && (self.start..self.end).contains(&minute)
        } else {
            // Crosses midnight: the evening of a listed day or the morning after it.
            (starts_on(day) && minute >= self.start)
                || (starts_on((day + 6) % 7) && minute < self.end)
        }
    }
}

impl HostMeta {
    /// The one check both sources apply: text fields trimmed, `hostgroup`
    /// and `environment` not empty (every enriched event carries them), an
    /// empty `owner` or `datacenter` is none, tag keys not empty. The error
    /// names the field.
    pub fn validated(mut self) -> Result<HostMeta, String> {
        let trim = |s: &mut String| {
            let t = s.trim();
            if t.len() != s.len() {
                *s = t.to_owned();
            }
        };
        trim(&mut self.hostgroup);
        trim(&mut self.environment);
        if self.hostgroup.is_empty() {
            return Err("hostgroup is empty".into());
        }
        if self.environment.is_empty() {
            return Err("environment is empty".into());
        }
        for opt in [&mut self.owner, &mut self.datacenter] {
            if let Some(v) = opt.as_mut() {
                trim(v);
            }
            if opt.as_deref().is_some_and(str::is_empty) {
                *opt = None;
            }
        }
        if self.tags.keys().any(|k| k.trim().is_empty()) {
            return Err("tags: a tag key is empty".into());
        }
        Ok(self)
    }

    /// Parses one value of the hosts topic: empty = delete (`None`), else a
    /// JSON object (not an array: a positional form would silently take
    /// fields in declaration order), checked by [`HostMeta::validated`].
    pub fn from_topic_value(bytes: &[u8]) -> Result<Option<HostMeta>, String> {
        if bytes.is_empty() {
            return Ok(None);
        }
        let value: serde_json::Value =
            serde_json::from_slice(bytes).map_err(|e| format!("not JSON: {e}"))?;
        if !value.is_object() {
            return Err("host metadata must be a JSON object".into());
        }
        let meta: HostMeta = serde_json::from_value(value).map_err(|e| e.to_string())?;
        meta.validated().map(Some)
    }

    /// Whether the event at `micros` is outside every window; false when the
    /// host has no windows (nothing to be outside of).
    pub fn outside_maintenance(&self, micros: i64) -> bool {
        let Some(t) = DateTime::from_timestamp_micros(micros) else {
            return false;
        };
        !self.maintenance.is_empty() && !self.maintenance.iter().any(|w| w.contains(t))
    }
}

/// The live host table: file entries (by machine id or hostname) under
/// topic entries (by machine id). Shared between the router loop (reads)
/// and the file watcher and topic reader (writes).
#[derive(Clone, Default)]
pub struct HostTable {
    inner: Arc<RwLock<Tables>>,
}

#[derive(Default)]
struct Tables {
    file: HashMap<String, Arc<HostMeta>>,
    topic: HashMap<String, Arc<HostMeta>>,
}

impl HostTable {
    /// Looks a host up by machine id, then by hostname.
    pub fn get(&self, machine_id: &str, hostname: &str) -> Option<Arc<HostMeta>> {
        let t = self.inner.read().unwrap_or_else(|p| p.into_inner());
        t.topic
            .get(machine_id)
            .or_else(|| t.file.get(machine_id))
            .or_else(|| t.file.get(hostname))
            .cloned()
    }

    /// Replaces all file entries.
    pub fn set_file_entries(&self, entries: HashMap<String, Arc<HostMeta>>) {
        self.inner.write().unwrap_or_else(|p| p.into_inner()).file = entries;
    }

    /// Applies one record of the hosts topic (`None` value = delete).
    pub fn apply_topic_record(&self, machine_id: &str, value: Option<HostMeta>) {
        let mut t = self.inner.write().unwrap_or_else(|p| p.into_inner());
        match value {
            Some(meta) => t.topic.insert(machine_id.to_owned(), Arc::new(meta)),
            None => t.topic.remove(machine_id),
        };
    }

    /// Number of hosts known from (file, topic).
    pub fn sizes(&self) -> (usize, usize) {
        let t = self.inner.read().unwrap_or_else(|p| p.into_inner());
        (t.file.len(), t.topic.len())
    }
}

/// Parses a hosts CSV file; errors name the line and the column.
pub fn read_hosts_file(path: &Path) -> Result<HashMap<String, Arc<HostMeta>>, RouterError> {
    let bad = |line: u64, reason: String| RouterError::HostsFile {
        path: path.to_path_buf(),
        line,
        reason,
    };
    let mut reader = csv::ReaderBuilder::new()
        .trim(csv::Trim::All)
        .comment(Some(b'#'))
        .from_path(path)
        .map_err(|e| bad(0, e.to_string()))?;
    let headers = reader.headers().map_err(|e| bad(1, e.to_string()))?.clone();
    let col = |name: &str| headers.iter().position(|h| h == name);
    let (Some(host_col), Some(group_col), Some(env_col)) =
        (col("host"), col("hostgroup"), col("environment"))
    else {
        return Err(bad(1, "header must name at least host, hostgroup, environment (optional: owner, datacenter, tags, maintenance)".into()));
    };
    let known = [
        "host",
        "hostgroup",
        "environment",
        "owner",
        "datacenter",
        "tags",
        "maintenance",
    ];
    if let Some(unknown) = headers.iter().find(|h| !known.contains(h)) {
        return Err(bad(
            1,
            format!("unknown column {unknown:?} (known: {})", known.join(", ")),
        ));
    }
    let mut out = HashMap::new();
    for record in reader.records() {
        let record =
            record.map_err(|e| bad(e.position().map_or(0, |p| p.line()), e.to_string()))?;
        let line = record.position().map_or(0, |p| p.line());
        let field = |c: Option<usize>| {
            c.and_then(|c| record.get(c))
                .filter(|v| !v.is_empty())
                .map(str::to_owned)
        };
        let host = field(Some(host_col)).ok_or_else(|| bad(line, "host is empty".into()))?;
        let mut meta = HostMeta {
            hostgroup: field(Some(group_col)).unwrap_or_default(),
            environment: field(Some(env_col)).unwrap_or_default(),
            owner: field(col("owner")),
            datacenter: field(col("datacenter")),
            ..HostMeta::default()
        };
        for tag in field(col("tags"))
            .unwrap_or_default()
            .split(';')
            .filter(|t| !t.trim().is_empty())
        {
            let (k, v) = tag
                .split_once('=')
                .ok_or_else(|| bad(line, format!("tag {tag:?} is not key=value")))?;
            meta.tags.insert(k.trim().to_owned(), v.trim().to_owned());
        }
        for w in field(col("maintenance"))
            .unwrap_or_default()
            .split(';')
            .filter(|w| !w.trim().is_empty())
        {
            meta.maintenance
                .push(Window::parse(w).map_err(|e| bad(line, e))?);
        }
        let meta = meta.validated().map_err(|e| bad(line, e))?;
        out.insert(host, Arc::new(meta));
    }
    Ok(out)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn windows_parse_and_match() {
        let w = Window::parse("sat,sun 02:00-04:00").unwrap();
        assert!(w.contains(at("2026-11-28T02:30:00Z")), "Saturday 02:30");
        assert!(!w.contains(at("2026-11-28T04:00:00Z")), "end is exclusive");
        assert!(!w.contains(at("2026-11-27T02:30:00Z")), "Friday");
        let night = Window::parse("mon-fri 22:00-02:00").unwrap();
        assert!(night.contains(at("2026-11-27T23:00:00Z")), "Friday evening");
        assert!(
            night.contains(at("2026-11-28T01:00:00Z")),
            "Saturday morning after a Friday window"
        );
        assert!(
            !night.contains(at("2026-11-29T01:00:00Z")),
            "Sunday morning: Saturday is not listed"
        );
        assert!(Window::parse("daily 00:00-24:00")
            .unwrap()
            .contains(at("2026-11-24T13:00:00Z")));
        assert!(Window::parse("someday 01:00-02:00")
            .unwrap_err()
            .contains("someday"));
        assert!(Window::parse("sat 25:00-26:00").is_err());
    }

    #[test]
    fn outside_maintenance_needs_windows() {
        let mut meta = HostMeta {
            hostgroup: "g".into(),
            environment: "e".into(),
            ..HostMeta::default()
        };
        let t = at("2026-11-24T13:00:00Z").timestamp_micros();
        assert!(!meta.outside_maintenance(t));
        meta.maintenance
            .push(Window::parse("sat 02:00-04:00").unwrap());
        assert!(meta.outside_maintenance(t));
    }

    #[test]
    fn hosts_file_and_topic_precedence() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hosts.csv");
        std::fs::write(&path, "host,hostgroup,environment,owner,tags,maintenance\n# a comment\nweb-1,web,prod,team-a,tier=fe;rack=r1,sat 02:00-04:00; wed 22:00-23:00\nabc123,db,staging,,,\n").unwrap();
        let entries = read_hosts_file(&path).unwrap();
        assert_eq!(entries["web-1"].tags["rack"], "r1");
        assert_eq!(entries["web-1"].maintenance.len(), 2);
        assert_eq!(entries["abc123"].owner, None);
        let table = HostTable::default();
        table.set_file_entries(entries);
        assert_eq!(table.get("m-unknown", "web-1").unwrap().hostgroup, "web");
        assert_eq!(table.get("abc123", "whatever").unwrap().hostgroup, "db");
        table.apply_topic_record(
            "abc123",
            Some(HostMeta {
                hostgroup: "db-new".into(),
                environment: "prod".into(),
                ..HostMeta::default()
            }),
        );
        assert_eq!(table.get("abc123", "whatever").unwrap().hostgroup, "db-new");
        table.apply_topic_record("abc123", None);
        assert_eq!(table.get("abc123", "whatever").unwrap().hostgroup, "db");
        assert!(table.get("nope", "nope").is_none());
    }

    #[test]
    fn hosts_file_errors_name_line_and_column() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hosts.csv");
        std::fs::write(&path, "host,hostgroup,environment,maintenance\nweb-1,web,prod,sat 02:00-04:00\nweb-2,web,prod,someday 1-2\n").unwrap();
        let err = read_hosts_file(&path).unwrap_err().to_string();
        assert!(err.contains("line 3") && err.contains("someday"), "{err}");
        std::fs::write(&path, "host,group,environment\n").unwrap();
        assert!(read_hosts_file(&path)
            .unwrap_err()
            .to_string()
            .contains("hostgroup"));
    }

    #[test]
    fn both_sources_share_one_check() {
        for bad in [
            r#"{"hostgroup":"","environment":"prod"}"#,
            r#"{"hostgroup":"web","environment":"  "}"#,
            r#"["web",""]"#,
            r#"["","prod"]"#,
            r#"{"hostgroup":"web","environment":"prod","tags":{"":"x"}}"#,
            "null",
        ] {
            assert!(
                HostMeta::from_topic_value(bad.as_bytes()).is_err(),
                "{bad} accepted"
            );
        }
        assert_eq!(HostMeta::from_topic_value(b"").unwrap(), None);
        let meta =
            HostMeta::from_topic_value(br#"{"hostgroup":" web ","environment":"prod","owner":""}"#)
                .unwrap()
                .unwrap();
        assert_eq!((meta.hostgroup.as_str(), meta.owner), ("web", None));
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hosts.csv");
        std::fs::write(
            &path,
            "host,hostgroup,environment,tags\nweb-1,web,prod,=x\n",
        )
        .unwrap();
        let err = read_hosts_file(&path).unwrap_err().to_string();
        assert!(err.contains("line 2") && err.contains("tag key"), "{err}");
        std::fs::write(&path, "host,hostgroup,environment\nweb-1,,prod\n").unwrap();
        let err = read_hosts_file(&path).unwrap_err().to_string();
        assert!(
            err.contains("line 2") && err.contains("hostgroup is empty"),
            "{err}"
        );
    }

    /// The `host_table` fuzz target's crash inputs (`fuzz/regressions/`,
    /// a mode byte then a hosts-topic value), replayed without cargo-fuzz:
    /// each is refused, so no host is enriched with an empty group or
    /// environment (that made every event of the host poison).
    #[test]
    fn the_fuzzers_host_table_findings_are_refused() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/regressions/host_table");
        let mut replayed = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let data = std::fs::read(&path).unwrap();
            let (mode, value) = data.split_first().unwrap();
            assert_eq!(mode & 1, 1, "{}: a hosts-topic input", path.display());
            let got = HostMeta::from_topic_value(value);
            assert!(got.is_err(), "{}: accepted as {got:?}", path.display());
            replayed += 1;
        }
        assert!(replayed >= 4, "{replayed} inputs in {}", dir.display());
    }

    #[test]
    fn topic_values_are_json() {
        let meta: HostMeta = serde_json::from_str(r#"{"hostgroup":"web","environment":"prod","maintenance":["daily 01:00-03:00"],"tags":{"a":"b"}}"#).unwrap();
        assert_eq!(
            meta.maintenance[0],
            Window {
                days: 0x7f,
                start: 60,
                end: 180
            }
        );
    }
}
