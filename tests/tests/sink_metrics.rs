//! The metrics sink against real Kafka and Prometheus (remote write): the
//! counters and drift gauges Prometheus holds after a run equal those
//! computed from the events; a restart rebuilds the gauges and counts
//! nothing twice; every PromQL expression of the Grafana dashboard answers
//! on the live Prometheus; the alert rules pass `promtool check` and
//! `promtool test`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::process::Command;
use std::time::Duration;

use pkgstream_schemas::Action;
use pkgstream_tests::kafka_brokers;
use pkgstream_tests::sinks::*;

const LIMIT: Duration = Duration::from_secs(180);
const WATCHED: [&str; 2] = ["openssl-libs", "kernel-core"];

/// (package, version, hostgroup) → hosts, computed from the scenario and
/// then the changes of `later` (produced after it).
fn expected_gauges(
    sc: &Scenario,
    later: Option<&Scenario>,
) -> BTreeMap<(String, String, String), i64> {
    let mut per_host: BTreeMap<String, (String, BTreeMap<String, String>)> = BTreeMap::new();
    let apply = |per_host: &mut BTreeMap<String, (String, BTreeMap<String, String>)>,
                 changes: &[pkgstream_schemas::EnrichedChange<'_>]| {
        for c in changes {
            let h = per_host.entry(c.host.machine_id.to_string()).or_default();
            h.0 = c.enrichment.hostgroup.to_string();
            if !WATCHED.contains(&c.package.name.as_ref()) {
                continue;
            }
            let v = format!("{}-{}", c.package.version, c.package.release);
            match c.action {
                Action::Remove | Action::Obsolete => {
                    h.1.remove(c.package.name.as_ref());
                }
                _ => {
                    h.1.insert(c.package.name.to_string(), v);
                }
            }
        }
    };
    apply(&mut per_host, &sc.changes);
    for s in &sc.snapshots {
        let h = per_host.get_mut(s.host.machine_id.as_ref()).unwrap();
        h.1 = s
            .packages
            .iter()
            .filter(|p| WATCHED.contains(&p.name.as_ref()))
            .map(|p| (p.name.to_string(), format!("{}-{}", p.version, p.release)))
            .collect();
    }
    if let Some(later) = later {
        apply(&mut per_host, &later.changes);
    }
    let mut out = BTreeMap::new();
    for (group, pkgs) in per_host.values() {
        for (name, v) in pkgs {
            *out.entry((name.clone(), v.clone(), group.clone()))
                .or_default() += 1;
        }
    }
    out
}

/// The sink's `/metrics` text; panics when nothing answers, so that a 0
/// read from it is a 0 the sink said, not an unreachable endpoint.
fn scrape(port: u16) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("/metrics answers");
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").unwrap();
    let mut body = String::new();
    s.read_to_string(&mut body).expect("read /metrics");
    assert_eq!(body.split_whitespace().nth(1), Some("200"), "{body}");
    body
}

/// One series' value in a scrape (0 when the sink has no such series).
fn value(scrape: &str, series: &str) -> f64 {
    scrape
        .lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

fn prom_gauges(tag: &str) -> BTreeMap<(String, String, String), i64> {
    prom_query(&format!(
        "pkgstream_fleet_watched_package_hosts{{hostgroup=~\"{tag}-.*\"}}"
    ))
    .iter()
    .map(|s| {
        let m = &s["metric"];
        (
            (
                m["package"].as_str().unwrap().to_owned(),
                m["version"].as_str().unwrap().to_owned(),
                m["hostgroup"].as_str().unwrap().to_owned(),
            ),
            s["value"][1].as_str().unwrap().parse::<f64>().unwrap() as i64,
        )
    })
    .collect()
}

#[test]
fn prometheus_holds_the_counters_and_drift_gauges_and_a_restart_counts_nothing_twice() {
    let env = SinkEnv::new(&kafka_brokers(), "sink-metrics");
    let tag = env.prefix.clone();
    let sc = scenario(&tag, 60, 50, 30, 6);
    env.produce(&sc.records());
    let n = sc.changes.len() as f64;
    let sink = env.start(
        "metrics",
        &[(
            "PKGSTREAM__METRICS_SINK__WATCH_PACKAGES",
            "openssl-libs,kernel-core".into(),
        )],
    );
    wait_for("every change counted", LIMIT, || {
        sink.metric("pkgstream_metrics_sink_events_total{outcome=\"counted\"}") == n
    });

    // Prometheus, after the next push.
    let g = format!("hostgroup=~\"{tag}-.*\"");
    wait_for("the counters in Prometheus", LIMIT, || {
        prom_value(&format!(
            "sum(pkgstream_fleet_package_changes_total{{{g}}})"
        )) == n
    });
    let count = |f: &dyn Fn(&pkgstream_schemas::EnrichedChange<'_>) -> bool| {
        sc.changes.iter().filter(|c| f(c)).count() as f64
    };
    for (action, a) in [
        ("install", Action::Install),
        ("upgrade", Action::Upgrade),
        ("remove", Action::Remove),
        ("obsolete", Action::Obsolete),
    ] {
        assert_eq!(
            prom_value(&format!(
                "sum(pkgstream_fleet_package_changes_total{{{g},action=\"{action}\"}})"
            )),
            count(&|c| c.action == a),
            "{action}"
        );
    }
    let g0 = format!("{tag}-g0");
    assert_eq!(
        prom_value(&format!("sum(pkgstream_fleet_package_changes_total{{hostgroup=\"{g0}\",environment=\"prod\",source=\"rpm\"}})")),
        count(&|c| c.enrichment.hostgroup == g0 && c.enrichment.environment == "prod" && c.enrichment.unexplained_rpm)
    );
    assert_eq!(
        prom_value(&format!(
            "sum(pkgstream_fleet_changes_outside_window_total{{{g}}})"
        )),
        count(&|c| c.enrichment.outside_maintenance_window)
    );
    assert_eq!(
        prom_value(&format!(
            "sum(pkgstream_fleet_unexplained_rpm_changes_total{{{g}}})"
        )),
        count(&|c| c.enrichment.unexplained_rpm)
    );
    let expected = expected_gauges(&sc, None);
    assert!(
        expected
            .keys()
            .filter(|(p, _, g)| p == "openssl-libs" && g == &g0)
            .count()
            > 1,
        "the scenario has drift to see"
    );
    wait_for("the drift gauges in Prometheus", LIMIT, || {
        prom_gauges(&tag) == expected
    });
    assert_eq!(
        prom_value(&format!("sum(pkgstream_fleet_hosts{{{g}}})")),
        60.0
    );
    assert!(sink.stop().success(), "SIGTERM: exit 0");

    // Restart: state rebuilt from the topic, nothing counted twice.
    let sink = env.start(
        "metrics",
        &[(
            "PKGSTREAM__METRICS_SINK__WATCH_PACKAGES",
            "openssl-libs,kernel-core".into(),
        )],
    );
    wait_for("the state rebuilt", LIMIT, || {
        sink.metric("pkgstream_metrics_sink_events_total{outcome=\"state_only\"}") == n
    });
    let m = scrape(sink.port);
    assert_eq!(
        (
            value(
                &m,
                "pkgstream_metrics_sink_events_total{outcome=\"state_only\"}"
            ),
            value(
                &m,
                "pkgstream_metrics_sink_events_total{outcome=\"counted\"}"
            )
        ),
        (n, 0.0),
        "every event read again, none counted again"
    );
    let more = scenario(&tag, 1, 5, 3, 0);
    env.produce(&more.records());
    wait_for("the new changes counted", LIMIT, || {
        sink.metric("pkgstream_metrics_sink_events_total{outcome=\"counted\"}") == 5.0
    });
    // Prometheus sees the restarted counters (a counter reset, which
    // rate() and increase() handle): host 0's 5 new installs, 4 by dnf and
    // 1 by rpm, not those plus the 3,000 counted before.
    let series = |source: &str| {
        format!("pkgstream_fleet_package_changes_total{{hostgroup=\"{g0}\",environment=\"staging\",action=\"install\",source=\"{source}\"}}")
    };
    wait_for("the new counts in Prometheus", LIMIT, || {
        prom_value(&series("dnf")) == 4.0 && prom_value(&series("rpm")) == 1.0
    });
    // The gauges of the 60 hosts plus host 0's new state, as the restarted
    // sink pushed them (the pre-restart samples lack host 0's new state).
    let after = expected_gauges(&sc, Some(&more));
    assert_ne!(after, expected, "the new changes move a drift gauge");
    wait_for(
        "the restarted sink's drift gauges in Prometheus",
        LIMIT,
        || prom_gauges(&tag) == after,
    );
    assert_eq!(
        prom_value(&format!("sum(pkgstream_fleet_hosts{{{g}}})")),
        60.0
    );
    grafana_expressions_answer(&tag);
    assert!(sink.stop().success());
    println!(
        "metrics: {n} changes counted once, {} drift series, restart counted 0 old + 5 new",
        expected.len()
    );
}

/// Every `expr` of `sinks/grafana/pkgstream.json` runs on the live
/// Prometheus (variables at their "All" value); the fleet panels return data.
fn grafana_expressions_answer(tag: &str) {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../sinks/grafana/pkgstream.json"
    );
    let dash: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let mut checked = 0;
    for panel in dash["panels"].as_array().unwrap() {
        for t in panel["targets"].as_array().unwrap() {
            let expr = t["expr"].as_str().unwrap();
            let q = expr
                .replace("$hostgroup", &format!("{tag}-.*"))
                .replace("$package", ".*")
                .replace("$__rate_interval", "1m")
                .replace("$__range", "1h");
            let result = prom_query(&q);
            if expr.contains("pkgstream_fleet_") || expr.contains("pkgstream_metrics_sink_") {
                assert!(
                    !result.is_empty(),
                    "panel '{}': no data for {q}",
                    panel["title"]
                );
            }
            checked += 1;
        }
    }
    assert!(checked >= 12);
    println!("grafana: {checked} expressions answered");
}

#[test]
fn alert_rules_check_and_unit_tests_pass() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../sinks/prometheus");
    let check = Command::new("promtool")
        .args(["check", "rules", "alerts.yml"])
        .current_dir(dir)
        .output()
        .expect("promtool (scripts/services.sh install prometheus)");
    let out = String::from_utf8_lossy(&check.stdout).into_owned()
        + &String::from_utf8_lossy(&check.stderr);
    assert!(check.status.success(), "{out}");
    assert!(out.contains("SUCCESS: 8 rules found"), "{out}");
    let test = Command::new("promtool")
        .args(["test", "rules", "alerts.test.yml"])
        .current_dir(dir)
        .output()
        .expect("promtool");
    let out =
        String::from_utf8_lossy(&test.stdout).into_owned() + &String::from_utf8_lossy(&test.stderr);
    assert!(test.status.success() && out.contains("SUCCESS"), "{out}");
}
