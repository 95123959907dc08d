//! `pkgstream history HOST` and `pkgstream changes`: time-ordered change
//! history from the indices the search sink writes (`[search_sink]` url and
//! index prefix) — who (login user), how (dnf command line or plain rpm),
//! from which repo. Bad input is an error, never an empty table that looks
//! like an answer: an unknown host, a time in the future, an inverted range,
//! an index prefix with nothing under it on the engine.

use std::io::Write;

use chrono::{DateTime, Utc};
use pkgstream_sinks::config::SearchSinkConfig;
use pkgstream_sinks::search::client::{CallError, EngineClient};
use pkgstream_sinks::search::documents::Indices;
use pkgstream_sinks::SinkError;
use serde_json::{json, Value};

use crate::CliError;

/// Parses `1h`, `30m`, `7d`, `2w`, `45s` (ago) or an RFC 3339 time into
/// microseconds since the epoch; rejects times in the future.
pub fn parse_time(s: &str, now: DateTime<Utc>) -> Result<i64, CliError> {
    let bad = |reason: &str| CliError::BadInput(format!("time '{s}': {reason}"));
    let t = if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        t.with_timezone(&Utc)
    } else {
        let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
        let n: i64 = num
            .parse()
            .map_err(|_| bad("expected a duration like 90m, 1h, 7d or an RFC 3339 time like 2026-11-01T00:00:00Z"))?;
        let secs = match unit {
            "s" => 1,
            "m" => 60,
            "h" => 3600,
            "d" => 86_400,
            "w" => 7 * 86_400,
            _ => return Err(bad("unit must be s, m, h, d or w")),
        };
        chrono::Duration::try_seconds(n.saturating_mul(secs))
            .and_then(|d| now.checked_sub_signed(d))
            .ok_or_else(|| bad("is too far in the past"))?
    };
    if t > now {
        return Err(bad("is in the future"));
    }
    Ok(t.timestamp_micros())
}

/// What to select.
#[derive(Clone, Debug, Default)]
pub struct ChangeFilter {
    /// Machine id (resolved from a name by [`resolve_host`]).
    pub host_id: Option<String>,
    /// From (µs, inclusive).
    pub since: Option<i64>,
    /// Until (µs, exclusive).
    pub until: Option<i64>,
    /// Action (`install`, `remove`, ...).
    pub action: Option<String>,
    /// Source (`dnf`, `rpm`, ...).
    pub source: Option<String>,
    /// Package name.
    pub package: Option<String>,
    /// Host group.
    pub group: Option<String>,
    /// Only changes outside the maintenance window.
    pub outside_window: bool,
    /// At most this many rows.
    pub limit: usize,
}

const ACTIONS: [&str; 6] = [
    "install",
    "upgrade",
    "downgrade",
    "reinstall",
    "remove",
    "obsolete",
];
const SOURCES: [&str; 4] = ["dnf", "yum", "rpm", "inventory"];

impl ChangeFilter {
    /// Checks values without I/O.
    pub fn validate(&self) -> Result<(), CliError> {
        if let (Some(a), Some(b)) = (self.since, self.until) {
            if a >= b {
                return Err(CliError::BadInput("--since must be before --until".into()));
            }
        }
        if let Some(a) = &self.action {
            if !ACTIONS.contains(&a.as_str()) {
                return Err(CliError::BadInput(format!(
                    "--action '{a}': one of {}",
                    ACTIONS.join(", ")
                )));
            }
        }
        if let Some(s) = &self.source {
            if !SOURCES.contains(&s.as_str()) {
                return Err(CliError::BadInput(format!(
                    "--source '{s}': one of {}",
                    SOURCES.join(", ")
                )));
            }
        }
        Ok(())
    }

    fn query(&self) -> Value {
        let mut filter = Vec::new();
        let mut term = |field: &str, v: &Option<String>| {
            if let Some(v) = v {
                filter.push(json!({"term": {field: v}}));
            }
        };
        term("host.id", &self.host_id);
        term("event.action", &self.action);
        term("pkgstream.source", &self.source);
        term("package.name", &self.package);
        term("pkgstream.hostgroup", &self.group);
        if self.outside_window {
            filter.push(json!({"term": {"pkgstream.outside_maintenance_window": true}}));
        }
        let mut range = serde_json::Map::new();
        if let Some(s) = self.since {
            range.insert("gte".into(), s.into());
        }
        if let Some(u) = self.until {
            range.insert("lt".into(), u.into());
        }
        if !range.is_empty() {
            filter.push(json!({"range": {"event_time_us": range}}));
        }
        json!({"bool": {"filter": filter}})
    }
}

/// A query client on the search sink's indices.
pub struct Queries {
    client: EngineClient,
    idx: Indices,
}

fn engine_err(client: &EngineClient, e: CallError) -> CliError {
    let url = client.display_url();
    let reason = match e {
        // "<url> unreachable: ..." names the engine once, not twice.
        CallError::Retry(why) => why
            .strip_prefix(&format!("{url} "))
            .map(str::to_owned)
            .unwrap_or(why),
        CallError::Fatal(SinkError::Engine { what, reason, .. }) => format!("{what}: {reason}"),
        CallError::Fatal(e) => e.to_string(),
    };
    CliError::Engine { url, reason }
}

impl Queries {
    /// Reads where the search sink configured by `cfg` writes.
    pub fn new(cfg: &SearchSinkConfig) -> Result<Queries, CliError> {
        let client = EngineClient::new(cfg).map_err(|e| CliError::BadInput(e.to_string()))?;
        Ok(Queries {
            client,
            idx: Indices::new(&cfg.index_prefix),
        })
    }

    fn search(&self, index: &str, body: &Value) -> Result<Value, CliError> {
        self.search_filtered(index, "", body)
    }

    /// A search whose answer is cut to `filter_path` (empty: all of it).
    /// When no index matches `index` at all — a wrong prefix, another
    /// engine, a sink that never ran — this is an error naming the index,
    /// the prefix and the engine, never an empty answer.
    pub(crate) fn search_filtered(
        &self,
        index: &str,
        filter_path: &str,
        body: &Value,
    ) -> Result<Value, CliError> {
        let r = self.search_any(index, filter_path, body)?;
        if from_no_index(&r) {
            return Err(self.no_index(index));
        }
        Ok(r)
    }

    /// [`Queries::search_filtered`] that answers an empty result when no
    /// index matches (`_shards.total` 0 then; it is always in the answer).
    fn search_any(&self, index: &str, filter_path: &str, body: &Value) -> Result<Value, CliError> {
        let fp = if filter_path.is_empty() {
            String::new()
        } else {
            format!("&filter_path={filter_path},_shards.total")
        };
        let path = format!("/{index}/_search?ignore_unavailable=true&allow_no_indices=true{fp}");
        self.client
            .json("POST", &path, Some(body))
            .map_err(|e| engine_err(&self.client, e))
    }

    /// The error for a query on `index` where no index matched.
    fn no_index(&self, index: &str) -> CliError {
        CliError::Engine {
            url: self.client.display_url(),
            reason: format!(
                "no index {index} under index prefix '{}' (is [search_sink] index_prefix or url wrong, or has the search sink never run against this engine?)",
                self.idx.prefix()
            ),
        }
    }

    /// Whether the search sink has set up the prefix here (its host or
    /// package-state index exists), even if it has indexed no change yet.
    fn prefix_exists(&self) -> Result<bool, CliError> {
        let both = format!("{},{}", self.idx.hosts(), self.idx.packages());
        let r = self.search_any(&both, "hits.total", &json!({"size": 0}))?;
        Ok(!from_no_index(&r))
    }

    /// The index names queried.
    pub(crate) fn indices(&self) -> &Indices {
        &self.idx
    }

    /// The machine id of a host given by name or id; an unknown host is an
    /// error that says how many hosts the index knows.
    pub fn resolve_host(&self, host: &str) -> Result<String, CliError> {
        let r = self.search(
            self.idx.hosts(),
            &json!({"size": 2, "query": {"bool": {"should": [{"term": {"host.name": host}}, {"term": {"host.id": host}}]}}, "_source": ["host.id"]}),
        )?;
        let hits = r["hits"]["hits"].as_array().cloned().unwrap_or_default();
        match hits.as_slice() {
            [one] => Ok(one["_source"]["host"]["id"]
                .as_str()
                .unwrap_or(host)
                .to_owned()),
            [] => {
                let known = self.search(
                    self.idx.hosts(),
                    &json!({"size": 0, "track_total_hits": true}),
                )?;
                Err(CliError::BadInput(format!(
                    "unknown host '{host}': no host of that name or machine id in {} ({} hosts known)",
                    self.idx.hosts(),
                    known["hits"]["total"]["value"].as_u64().unwrap_or(0)
                )))
            }
            _ => Err(CliError::BadInput(format!(
                "host name '{host}' is ambiguous: give the machine id"
            ))),
        }
    }

    /// Changes matching `f`, oldest first, at most `f.limit`.
    pub fn changes(&self, f: &ChangeFilter) -> Result<Vec<Value>, CliError> {
        f.validate()?;
        let mut out = Vec::new();
        let mut after: Option<Value> = None;
        while out.len() < f.limit {
            let mut body = json!({
                "size": (f.limit - out.len()).min(5000),
                "query": f.query(),
                "sort": [{"event_time_us": "asc"}, {"event.id": "asc"}]
            });
            if let Some(a) = &after {
                body["search_after"] = a.clone();
            }
            let pattern = self.idx.changes_pattern();
            let r = self.search_any(&pattern, "", &body)?;
            if from_no_index(&r) {
                // No change index: only the truth if the prefix is there.
                if self.prefix_exists()? {
                    break;
                }
                return Err(self.no_index(&pattern));
            }
            let hits = r["hits"]["hits"].as_array().cloned().unwrap_or_default();
            let n = hits.len();
            after = hits.last().map(|h| h["sort"].clone());
            out.extend(hits.into_iter().map(|h| h["_source"].clone()));
            if n < 5000 {
                break;
            }
        }
        Ok(out)
    }
}

/// The PACKAGE cell: `name.arch evr`, and for a change that replaced a
/// package, old side first: `name.arch old-evr -> new-evr` when the name and
/// arch stay, else both in full (`oldtool.noarch 0:1.0-1 -> newtool.noarch
/// 0:2.0-1`). In an obsolete the document's package is the old side (the
/// obsoleted one) and `replaced` the package that obsoletes it, always shown
/// in full; in every other action `replaced` is the old side.
pub fn package_cell(doc: &Value) -> String {
    let s = |v: &Value| v.as_str().unwrap_or("").to_owned();
    let name_arch = |p: &Value| match (p["name"].as_str(), p["architecture"].as_str()) {
        (Some(n), Some(a)) => format!("{n}.{a}"),
        (Some(n), None) => n.to_owned(),
        (None, _) => "?".to_owned(),
    };
    let pkg = &doc["package"];
    let replaced = &doc["pkgstream"]["replaced"];
    if replaced["evr"].as_str().is_none() {
        return format!("{} {}", name_arch(pkg), s(&pkg["evr"]));
    }
    let obsolete = doc["event"]["action"].as_str() == Some("obsolete");
    let (old, new) = if obsolete {
        (pkg, replaced)
    } else {
        (replaced, pkg)
    };
    // A field the old side lacks is taken as unchanged.
    let kept = |f: &str| old[f].is_null() || old[f] == new[f];
    if !obsolete && kept("name") && kept("architecture") {
        format!(
            "{} {} -> {}",
            name_arch(new),
            s(&old["evr"]),
            s(&new["evr"])
        )
    } else {
        format!(
            "{} {} -> {} {}",
            name_arch(old),
            s(&old["evr"]),
            name_arch(new),
            s(&new["evr"])
        )
    }
}

/// Whether a search answer came from no index at all: with
/// `allow_no_indices` a pattern that matches nothing answers 0 hits from 0
/// shards, where an existing (even empty) index has at least one shard.
fn from_no_index(r: &Value) -> bool {
    r["_shards"]["total"].as_u64() == Some(0)
}

/// One row of the history table.
pub fn row(doc: &Value) -> [String; 7] {
    let s = |v: &Value| v.as_str().unwrap_or("").to_owned();
    let what = package_cell(doc);
    let how = match (
        doc["pkgstream"]["source"].as_str(),
        doc["process"]["command_line"].as_str(),
    ) {
        (Some("rpm"), Some(cl)) => format!("plain rpm: {cl}"),
        (Some("rpm"), None) => "plain rpm".into(),
        (_, Some(cl)) => cl.to_owned(),
        (src, None) => src.unwrap_or("").to_owned(),
    };
    [
        s(&doc["@timestamp"]),
        s(&doc["host"]["name"]),
        s(&doc["event"]["action"]),
        what,
        doc["user"]["name"].as_str().unwrap_or("-").to_owned(),
        how,
        doc["package"]["repo"].as_str().unwrap_or("-").to_owned(),
    ]
}

/// Writes `docs` as an aligned table (or JSON lines with `json`).
pub fn print(docs: &[Value], json_lines: bool, out: &mut impl Write) -> std::io::Result<()> {
    if json_lines {
        for d in docs {
            writeln!(out, "{d}")?;
        }
        return Ok(());
    }
    let head = ["TIME", "HOST", "ACTION", "PACKAGE", "USER", "HOW", "REPO"].map(String::from);
    let rows: Vec<[String; 7]> = std::iter::once(head).chain(docs.iter().map(row)).collect();
    let mut widths = [0usize; 7];
    for r in &rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    for r in &rows {
        let mut line = String::new();
        for (i, (c, w)) in r.iter().zip(widths).enumerate() {
            if i + 1 == r.len() {
                line.push_str(c);
            } else {
                line.push_str(&format!("{c:<w$}  "));
            }
        }
        writeln!(out, "{}", line.trim_end())?;
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn now() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2026-11-27T12:00:00Z")
            .unwrap()
            .with_timezone(&Utc)
    }

    #[test]
    fn times_relative_absolute_and_wrong() {
        let n = now().timestamp_micros();
        assert_eq!(parse_time("1h", now()).unwrap(), n - 3_600_000_000);
        assert_eq!(parse_time("2d", now()).unwrap(), n - 2 * 86_400_000_000);
        assert_eq!(
            parse_time("2026-11-01T00:00:00Z", now()).unwrap(),
            1_793_491_200_000_000
        );
        assert!(parse_time("2027-01-01T00:00:00Z", now())
            .unwrap_err()
            .to_string()
            .contains("future"));
        assert!(parse_time("1y", now())
            .unwrap_err()
            .to_string()
            .contains("unit"));
        assert!(parse_time("yesterday", now())
            .unwrap_err()
            .to_string()
            .contains("RFC 3339"));
    }

    #[test]
    fn filters_are_checked() {
        let f = ChangeFilter {
            since: Some(2),
            until: Some(1),
            ..Default::default()
        };
        assert!(f.validate().unwrap_err().to_string().contains("before"));
        let f = ChangeFilter {
            action: Some("erase".into()),
            ..Default::default()
        };
        assert!(f
            .validate()
            .unwrap_err()
            .to_string()
            .contains("install, upgrade"));
        let f = ChangeFilter {
            source: Some("rpm".into()),
            outside_window: true,
            ..Default::default()
        };
        f.validate().unwrap();
        let q = f.query().to_string();
        assert!(
            q.contains("\"pkgstream.source\":\"rpm\"") && q.contains("outside_maintenance_window"),
            "{q}"
        );
    }

    #[test]
    fn rows_say_who_how_and_from_where() {
        let doc = json!({"@timestamp": "2026-11-24T02:10:05.000000Z", "host": {"name": "web-1"},
            "event": {"action": "upgrade"}, "user": {"name": "alice"}, "process": {"command_line": "dnf -y upgrade"},
            "package": {"name": "openssl-libs", "architecture": "x86_64", "evr": "1:3.0.7-27.el9", "repo": "baseos"},
            "pkgstream": {"source": "dnf", "replaced": {"evr": "1:3.0.7-25.el9"}}});
        assert_eq!(
            row(&doc),
            [
                "2026-11-24T02:10:05.000000Z",
                "web-1",
                "upgrade",
                "openssl-libs.x86_64 1:3.0.7-25.el9 -> 1:3.0.7-27.el9",
                "alice",
                "dnf -y upgrade",
                "baseos"
            ]
        );
        let mut out = Vec::new();
        print(&[doc], false, &mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(
            text.starts_with("TIME") && text.lines().count() == 2,
            "{text}"
        );
    }

    fn obsolete_doc() -> Value {
        // As the search sink writes it: the obsoleted package, and in
        // `replaced` the package that obsoletes it.
        json!({"event": {"action": "obsolete"},
            "package": {"name": "oldtool", "architecture": "noarch", "evr": "0:1.0-1"},
            "pkgstream": {"source": "dnf", "replaced": {"name": "newtool", "architecture": "noarch", "evr": "0:2.0-1"}}})
    }

    #[test]
    fn an_obsolete_names_both_packages_old_side_first() {
        assert_eq!(
            row(&obsolete_doc())[3],
            "oldtool.noarch 0:1.0-1 -> newtool.noarch 0:2.0-1"
        );
        // Without the obsoleting package's name the gap shows.
        let mut d = obsolete_doc();
        d["pkgstream"]["replaced"] = json!({"evr": "0:2.0-1"});
        assert_eq!(row(&d)[3], "oldtool.noarch 0:1.0-1 -> ? 0:2.0-1");
    }

    #[test]
    fn a_replacement_under_another_name_or_arch_names_both() {
        let d = json!({"event": {"action": "upgrade"},
            "package": {"name": "curl-minimal", "architecture": "x86_64", "evr": "0:7.76.1-29.el9"},
            "pkgstream": {"replaced": {"name": "curl", "architecture": "x86_64", "evr": "0:7.76.1-26.el9"}}});
        assert_eq!(
            row(&d)[3],
            "curl.x86_64 0:7.76.1-26.el9 -> curl-minimal.x86_64 0:7.76.1-29.el9"
        );
        let d = json!({"event": {"action": "upgrade"},
            "package": {"name": "glibc", "architecture": "x86_64", "evr": "0:2.34-100"},
            "pkgstream": {"replaced": {"name": "glibc", "architecture": "i686", "evr": "0:2.34-83"}}});
        assert_eq!(
            row(&d)[3],
            "glibc.i686 0:2.34-83 -> glibc.x86_64 0:2.34-100"
        );
        let d = json!({"event": {"action": "install"},
            "package": {"name": "pa", "architecture": "noarch", "evr": "0:1.0-1"}, "pkgstream": {}});
        assert_eq!(row(&d)[3], "pa.noarch 0:1.0-1");
    }
}
