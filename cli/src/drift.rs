//! `pkgstream drift`: per host group and package, the versions present and
//! how many hosts run each; the outlier hosts (not on the expected or the
//! majority version); hosts whose last snapshot is stale; hosts whose
//! snapshot contradicted their reported state. Built for large fleets:
//! composite aggregations paged with `after_key` (never a 10,000-bucket
//! `terms`), `filter_path` on every answer, one query per drifted
//! (group, package) for its outliers — never one per host.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;
use serde_json::{json, Value};

use crate::query::Queries;
use crate::CliError;

/// What to report on.
#[derive(Clone, Debug, Default)]
pub struct DriftOptions {
    /// Only this host group.
    pub group: Option<String>,
    /// Only these packages (all when empty).
    pub packages: Vec<String>,
    /// Expected version (`E:V-R` or `V-R`) per package; otherwise the
    /// version most hosts of the group run is expected.
    pub expect: BTreeMap<String, String>,
    /// A snapshot older than this (µs since the epoch) is stale.
    pub stale_before: i64,
    /// Outlier hosts listed per (group, package), at most.
    pub max_outliers: usize,
}

/// One (group, package) with more than one version, or not on the expected one.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Drift {
    /// Host group.
    pub hostgroup: String,
    /// Package name.
    pub package: String,
    /// Version (`E:V-R`) → hosts.
    pub versions: BTreeMap<String, u64>,
    /// The version hosts should run.
    pub expected: String,
    /// Hosts not on it (count).
    pub outliers: u64,
    /// Some of those hosts (name).
    pub outlier_hosts: Vec<String>,
}

/// A host whose snapshot is old or contradicted its reported state.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct HostFlag {
    /// Host name.
    pub host: String,
    /// Host group.
    pub hostgroup: String,
    /// Last snapshot (RFC 3339), if any.
    pub last_snapshot: Option<String>,
    /// Packages the last snapshot contradicted.
    pub drift_count: u64,
}

/// The whole report.
#[derive(Clone, Debug, Default, Serialize)]
pub struct DriftReport {
    /// Drifted (group, package) pairs, sorted.
    pub drift: Vec<Drift>,
    /// (group, package) pairs looked at.
    pub checked: u64,
    /// Hosts without a snapshot newer than the stale limit (exact).
    pub stale_count: u64,
    /// The first [`HOSTS_LISTED`] of them by name.
    pub stale_hosts: Vec<HostFlag>,
    /// Hosts whose last snapshot contradicted what the hooks reported (exact).
    pub contradicted_count: u64,
    /// The first [`HOSTS_LISTED`] of them by name.
    pub contradicted_hosts: Vec<HostFlag>,
}

/// Stale or contradicted hosts listed, at most (the counts are exact).
pub const HOSTS_LISTED: usize = 1000;

/// The version most hosts run; on a tie the smallest version string.
pub fn majority(versions: &BTreeMap<String, u64>) -> String {
    versions
        .iter()
        .max_by(|a, b| a.1.cmp(b.1).then_with(|| b.0.cmp(a.0)))
        .map(|(v, _)| v.clone())
        .unwrap_or_default()
}

/// Hosts not on `expected`.
pub fn outlier_count(versions: &BTreeMap<String, u64>, expected: &str) -> u64 {
    versions
        .iter()
        .filter(|(v, _)| *v != expected)
        .map(|(_, n)| n)
        .sum()
}

/// `E:V-R` from `V-R` (epoch 0) so `--expect openssl=3.0.7-27.el9` works.
fn normalize_version(v: &str) -> String {
    if v.contains(':') {
        v.to_owned()
    } else {
        format!("0:{v}")
    }
}

impl Queries {
    /// Runs the drift report.
    pub fn drift(&self, o: &DriftOptions) -> Result<DriftReport, CliError> {
        let mut filter = Vec::new();
        if let Some(g) = &o.group {
            filter.push(json!({"term": {"pkgstream.hostgroup": g}}));
        }
        if !o.packages.is_empty() {
            filter.push(json!({"terms": {"package.name": o.packages}}));
        }
        // (group, package, version) → hosts, paged.
        let mut tuples: BTreeMap<(String, String), BTreeMap<String, u64>> = BTreeMap::new();
        let mut after: Option<Value> = None;
        loop {
            let mut comp = json!({
                "size": 5000,
                "sources": [
                    {"g": {"terms": {"field": "pkgstream.hostgroup"}}},
                    {"p": {"terms": {"field": "package.name"}}},
                    {"v": {"terms": {"field": "package.evr"}}}
                ]
            });
            if let Some(a) = &after {
                comp["after"] = a.clone();
            }
            let r = self.search_filtered(
                self.indices().packages(),
                "aggregations.t.buckets.key,aggregations.t.buckets.doc_count,aggregations.t.after_key",
                &json!({"size": 0, "query": {"bool": {"filter": filter}}, "aggs": {"t": {"composite": comp}}}),
            )?;
            let buckets = r["aggregations"]["t"]["buckets"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            for b in &buckets {
                let k = &b["key"];
                let s = |f: &str| k[f].as_str().unwrap_or("").to_owned();
                tuples
                    .entry((s("g"), s("p")))
                    .or_default()
                    .insert(s("v"), b["doc_count"].as_u64().unwrap_or(0));
            }
            match r["aggregations"]["t"]["after_key"].clone() {
                Value::Null => break,
                _ if buckets.len() < 5000 => break,
                a => after = Some(a),
            }
        }
        if tuples.is_empty() {
            return Err(self.nothing_matched(o)?);
        }
        let mut report = DriftReport {
            checked: tuples.len() as u64,
            ..Default::default()
        };
        for ((group, package), versions) in tuples {
            let expected = match o.expect.get(&package) {
                Some(v) => normalize_version(v),
                None => majority(&versions),
            };
            let outliers = outlier_count(&versions, &expected);
            if outliers == 0 {
                continue;
            }
            let r = self.search_filtered(
                self.indices().packages(),
                "hits.hits._source.host.name",
                &json!({
                    "size": o.max_outliers,
                    "_source": ["host.name"],
                    "sort": [{"host.name": "asc"}],
                    "query": {"bool": {
                        "filter": [{"term": {"pkgstream.hostgroup": group}}, {"term": {"package.name": package}}],
                        "must_not": [{"term": {"package.evr": expected}}]
                    }}
                }),
            )?;
            let outlier_hosts = r["hits"]["hits"]
                .as_array()
                .map(|h| {
                    h.iter()
                        .filter_map(|h| h["_source"]["host"]["name"].as_str().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default();
            report.drift.push(Drift {
                hostgroup: group,
                package,
                versions,
                expected,
                outliers,
                outlier_hosts,
            });
        }
        let host_filter: Vec<Value> = o
            .group
            .iter()
            .map(|g| json!({"term": {"pkgstream.hostgroup": g}}))
            .collect();
        let flags = |extra: Value| -> Result<(u64, Vec<HostFlag>), CliError> {
            let mut f = host_filter.clone();
            f.push(extra);
            let r = self.search_filtered(
                self.indices().hosts(),
                "hits.total.value,hits.hits._source",
                &json!({"size": HOSTS_LISTED, "track_total_hits": true, "sort": [{"host.name": "asc"}], "_source": ["host.name", "pkgstream.hostgroup", "last_snapshot", "drift_count"], "query": {"bool": {"filter": f}}}),
            )?;
            let total = r["hits"]["total"]["value"].as_u64();
            let listed: Vec<HostFlag> = r["hits"]["hits"]
                .as_array()
                .map(|hits| {
                    hits.iter()
                        .map(|h| {
                            let s = &h["_source"];
                            HostFlag {
                                host: s["host"]["name"].as_str().unwrap_or("").to_owned(),
                                hostgroup: s["pkgstream"]["hostgroup"]
                                    .as_str()
                                    .unwrap_or("")
                                    .to_owned(),
                                last_snapshot: s["last_snapshot"].as_str().map(str::to_owned),
                                drift_count: s["drift_count"].as_u64().unwrap_or(0),
                            }
                        })
                        .collect()
                })
                .unwrap_or_default();
            // An engine that leaves the total out still counts what it listed.
            Ok((total.unwrap_or(0).max(listed.len() as u64), listed))
        };
        (report.stale_count, report.stale_hosts) = flags(
            json!({"bool": {"must_not": [{"range": {"last_snapshot_us": {"gte": o.stale_before}}}]}}),
        )?;
        (report.contradicted_count, report.contradicted_hosts) =
            flags(json!({"range": {"drift_count": {"gt": 0}}}))?;
        Ok(report)
    }

    /// Why nothing matched: an unknown group or package, named.
    fn nothing_matched(&self, o: &DriftOptions) -> Result<CliError, CliError> {
        let known = |field: &str| -> Result<Vec<String>, CliError> {
            let r = self.search_filtered(
                self.indices().packages(),
                "aggregations.k.buckets.key",
                &json!({"size": 0, "aggs": {"k": {"terms": {"field": field, "size": 20}}}}),
            )?;
            Ok(r["aggregations"]["k"]["buckets"]
                .as_array()
                .map(|b| {
                    b.iter()
                        .filter_map(|b| b["key"].as_str().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default())
        };
        let groups = known("pkgstream.hostgroup")?;
        if groups.is_empty() {
            return Ok(CliError::BadInput(format!(
                "{} holds no package state yet (is the search sink running?)",
                self.indices().packages()
            )));
        }
        if let Some(g) = o.group.as_ref().filter(|g| !groups.contains(g)) {
            return Ok(CliError::BadInput(format!(
                "unknown host group '{g}' (some known: {})",
                groups.join(", ")
            )));
        }
        Ok(CliError::BadInput(format!(
            "no host{} has package {}",
            o.group
                .as_ref()
                .map(|g| format!(" in group '{g}'"))
                .unwrap_or_default(),
            o.packages.join(", ")
        )))
    }
}

/// The report as a table.
pub fn render_table(r: &DriftReport) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "drift: {} of {} (group, package) pairs run more than the expected version",
        r.drift.len(),
        r.checked
    );
    for d in &r.drift {
        let _ = writeln!(
            out,
            "  {} / {}: expected {}, {} outlier host(s)",
            d.hostgroup, d.package, d.expected, d.outliers
        );
        for (v, n) in &d.versions {
            let _ = writeln!(
                out,
                "      {:>6}  {v}{}",
                n,
                if *v == d.expected { "  (expected)" } else { "" }
            );
        }
        if !d.outlier_hosts.is_empty() {
            let more = d.outliers.saturating_sub(d.outlier_hosts.len() as u64);
            let _ = writeln!(
                out,
                "      outliers: {}{}",
                d.outlier_hosts.join(", "),
                if more > 0 {
                    format!(" (+{more} more)")
                } else {
                    String::new()
                }
            );
        }
    }
    let more = |total: u64, listed: usize| match total.saturating_sub(listed as u64) {
        0 => String::new(),
        n => format!("  (+{n} more, not listed)\n"),
    };
    let _ = writeln!(out, "stale snapshots: {} host(s)", r.stale_count);
    for h in &r.stale_hosts {
        let _ = writeln!(
            out,
            "  {} ({}): last snapshot {}",
            h.host,
            h.hostgroup,
            h.last_snapshot.as_deref().unwrap_or("never")
        );
    }
    let _ = write!(out, "{}", more(r.stale_count, r.stale_hosts.len()));
    let _ = writeln!(
        out,
        "snapshot contradicted reported state: {} host(s)",
        r.contradicted_count
    );
    for h in &r.contradicted_hosts {
        let _ = writeln!(
            out,
            "  {} ({}): {} package(s)",
            h.host, h.hostgroup, h.drift_count
        );
    }
    let _ = write!(
        out,
        "{}",
        more(r.contradicted_count, r.contradicted_hosts.len())
    );
    out
}

fn label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// The report for node_exporter's textfile collector.
pub fn render_prometheus(r: &DriftReport) -> String {
    let mut out = String::new();
    out.push_str("# HELP pkgstream_drift_package_hosts Hosts per version of a drifted package in a host group.\n# TYPE pkgstream_drift_package_hosts gauge\n");
    for d in &r.drift {
        for (v, n) in &d.versions {
            let _ = writeln!(out, "pkgstream_drift_package_hosts{{hostgroup=\"{}\",package=\"{}\",version=\"{}\"}} {n}", label(&d.hostgroup), label(&d.package), label(v));
        }
    }
    out.push_str("# HELP pkgstream_drift_outlier_hosts Hosts not on the expected version.\n# TYPE pkgstream_drift_outlier_hosts gauge\n");
    for d in &r.drift {
        let _ = writeln!(
            out,
            "pkgstream_drift_outlier_hosts{{hostgroup=\"{}\",package=\"{}\"}} {}",
            label(&d.hostgroup),
            label(&d.package),
            d.outliers
        );
    }
    let _ = writeln!(out, "# HELP pkgstream_drift_stale_snapshot_hosts Hosts without a recent inventory snapshot.\n# TYPE pkgstream_drift_stale_snapshot_hosts gauge\npkgstream_drift_stale_snapshot_hosts {}", r.stale_count);
    let _ = writeln!(out, "# HELP pkgstream_drift_contradicted_hosts Hosts whose last snapshot contradicted the reported state.\n# TYPE pkgstream_drift_contradicted_hosts gauge\npkgstream_drift_contradicted_hosts {}", r.contradicted_count);
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn renders() {
        let r = DriftReport {
            drift: vec![Drift {
                hostgroup: "web".into(),
                package: "openssl-libs".into(),
                versions: [
                    ("1:3.0.7-25.el9".to_owned(), 2),
                    ("1:3.0.7-27.el9".to_owned(), 90),
                ]
                .into(),
                expected: "1:3.0.7-27.el9".into(),
                outliers: 2,
                outlier_hosts: vec!["web-07".into()],
            }],
            checked: 10,
            stale_count: 1500,
            stale_hosts: vec![HostFlag {
                host: "web-01".into(),
                hostgroup: "web".into(),
                last_snapshot: None,
                drift_count: 0,
            }],
            contradicted_count: 0,
            contradicted_hosts: vec![],
        };
        let t = render_table(&r);
        assert!(
            t.contains("web / openssl-libs: expected 1:3.0.7-27.el9, 2 outlier host(s)"),
            "{t}"
        );
        assert!(t.contains("outliers: web-07 (+1 more)"), "{t}");
        assert!(t.contains("stale snapshots: 1500 host(s)\n  web-01 (web): last snapshot never\n  (+1499 more, not listed)\n"), "{t}");
        assert!(render_prometheus(&r).contains("pkgstream_drift_stale_snapshot_hosts 1500\n"));
        let p = render_prometheus(&r);
        assert!(p.contains("pkgstream_drift_package_hosts{hostgroup=\"web\",package=\"openssl-libs\",version=\"1:3.0.7-25.el9\"} 2"), "{p}");
        assert!(
            p.contains(
                "pkgstream_drift_outlier_hosts{hostgroup=\"web\",package=\"openssl-libs\"} 2"
            ),
            "{p}"
        );
        assert_eq!(normalize_version("3.0.7-27.el9"), "0:3.0.7-27.el9");
    }
}
