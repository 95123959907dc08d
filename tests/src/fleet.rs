//! The whole-pipeline acceptance run, shared by the plaintext test
//! (`tests/tests/pipeline_e2e.rs`) and the secured one
//! (`tests/tests/secure_pipeline.rs`): the same four hosts, the same plan
//! of dnf and rogue rpm changes, the same figures computed from the plan
//! and the same assertions; only the [`Wiring`] — where each stage
//! connects and as whom — differs. [`run`] returns the [`Figures`] it
//! observed, and both tests compare them with [`EXPECTED`].
//!
//! Four simulated hosts in two host groups (three `web` hosts in prod
//! inside their maintenance window, one `db` host in staging outside it),
//! each an install root where the real dnf installs, upgrades, downgrades
//! and removes tiny RPMs built with rpmbuild and served by createrepo_c,
//! plus plain `rpm -U`/`rpm -e` changes no dnf transaction explains, and an
//! inventory snapshot per host at the end. Hooks → each host's spool →
//! `pkgstream-emit flush` → Kafka raw topics → `pkgstream router` (hosts
//! CSV) → enriched topic → `pkgstream sink search` and `pkgstream sink
//! metrics`, running together → the search engine and Prometheus → the
//! query commands and `pkgstream replay`.
//!
//! It proves, with figures computed from the planned changes (each step
//! names the changes it causes, and the model's final state is checked
//! against every root's rpmdb):
//! - the raw topic holds exactly one event per change although the rpm and
//!   the dnf plugin both see every dnf transaction, with dnf's context
//!   (history id, user, repo) or none for plain rpm; one host's events
//!   shipped a second time (a flush whose acknowledgement was lost) are
//!   dropped by the router, and the enriched topic and the changes index
//!   hold exactly one record/document per change, with the host's group,
//!   environment, window and unmanaged-rpm flags;
//! - `pkgstream history HOST --json` lists exactly that host's changes,
//!   oldest first, with user, dnf-vs-rpm source and repo; `pkgstream changes
//!   --source rpm` exactly the rogue ones;
//! - the package state index equals the model's final state, and the
//!   snapshots contradict nothing; `pkgstream drift` (all, `--group`,
//!   `--expect`) gives exactly the versions and host counts per group and
//!   the outlier hosts;
//! - `pkgstream replay` of the run's time range gives back exactly every
//!   host's changes (and skips one snapshot per host);
//! - Prometheus holds exactly the change counters by group, environment,
//!   action and source, the unmanaged-rpm and outside-window counters, the
//!   hosts per group, and the drift gauge of the watched package `pa` (on
//!   the sink's `/metrics` and in Prometheus exactly, with nothing left
//!   for versions a host moved away from: the sink ends such a series
//!   with a staleness marker).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::hooks::decode_all;
use crate::pipeline::*;
use crate::router::{read_all, send, RouterEnv};
use crate::sinks::*;
use crate::{binary, consume_all};

const LIMIT: Duration = Duration::from_secs(90);

/// Where every stage of the run connects, and as whom.
pub struct Wiring {
    /// The bootstrap servers the test's own clients read the topics back
    /// from and resend to (on a secured broker: its admin, registered).
    pub brokers: String,
    /// The router's topics and environment (its Kafka settings included).
    pub router: RouterEnv,
    /// The sinks' environment: Kafka, engine and remote-write settings,
    /// the index prefix; reading `router.enriched`.
    pub sinks: SinkEnv,
    /// Settings over each host's emitter environment
    /// (`PKGSTREAM_EMIT__KAFKA__*`; empty: the plaintext test Kafka).
    pub host_kafka: Vec<(String, String)>,
    /// The environment of the query commands and of `replay`: the engine,
    /// Kafka and their credentials (the index prefix is the sinks').
    pub cli_env: Vec<(String, String)>,
}

/// What a run observed; [`EXPECTED`] is what the plan gives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Figures {
    /// Simulated hosts.
    pub hosts: usize,
    /// Planned steps (dnf or rpm commands).
    pub steps: usize,
    /// Of which by plain rpm.
    pub rogue_steps: usize,
    /// Events in the raw topic: one per change.
    pub raw_events: usize,
    /// One host's events resent, which the router dropped.
    pub resent_dropped: usize,
    /// Records in the enriched topic.
    pub enriched_records: usize,
    /// Documents in the changes index.
    pub documents: usize,
    /// Rows of `pkgstream history` over all hosts.
    pub history_rows: usize,
    /// Rows of `pkgstream changes --source rpm`.
    pub rogue_rows: usize,
    /// (group, package) pairs `pkgstream drift` checked.
    pub drift_pairs_checked: usize,
    /// Changes `pkgstream replay` wrote.
    pub replayed: usize,
    /// Snapshots `pkgstream replay` skipped.
    pub replayed_snapshots: usize,
    /// Series of the change counter in Prometheus.
    pub counter_series: usize,
    /// Their sum.
    pub counted_changes: usize,
}

/// The figures of the plan: 4 hosts, 12 steps (3 by plain rpm), 15
/// changes.
pub const EXPECTED: Figures = Figures {
    hosts: 4,
    steps: 12,
    rogue_steps: 3,
    raw_events: 15,
    resent_dropped: 4,
    enriched_records: 15,
    documents: 15,
    history_rows: 15,
    rogue_rows: 3,
    drift_pairs_checked: 4,
    replayed: 15,
    replayed_snapshots: 4,
    counter_series: 8,
    counted_changes: 15,
};

/// (source, action, name-V-R, replaced name-V-R): one change as the host
/// side and the indices both say it.
type Key = (String, String, String, Option<String>);

/// A change with who made it and from which repo.
type Reported = (Key, String, Option<&'static str>);

fn key(source: &str, c: &Change) -> Key {
    (
        source.to_owned(),
        c.action.to_owned(),
        format!("{}-{}", c.name, c.vr),
        c.replaced.map(|r| format!("{}-{r}", c.name)),
    )
}

/// `v` with each run of `sizes` sorted: rpm orders the elements of one
/// transaction its own way, and they share one event time.
fn chunk_sorted<T: Ord + Clone>(v: &[T], sizes: &[usize]) -> Vec<T> {
    if v.len() != sizes.iter().sum::<usize>() {
        return v.to_vec(); // the comparison shows what is missing or extra
    }
    let mut out = Vec::new();
    let mut at = 0;
    for n in sizes {
        let mut chunk = v[at..at + n].to_vec();
        chunk.sort();
        out.extend(chunk);
        at += n;
    }
    out
}

/// The repo dnf reports for a change: the local repo for what it
/// installed, none for removals and for plain rpm.
fn repo_of(source: &str, action: &str) -> Option<&'static str> {
    (source == "dnf" && matches!(action, "install" | "upgrade" | "downgrade" | "reinstall"))
        .then_some("local")
}

/// The test's repo as the events name it: `local`, or `?` for any other.
fn local(repo: Option<&str>) -> Option<&'static str> {
    repo.map(|r| if r == "local" { "local" } else { "?" })
}

/// Runs the whole pipeline on `w`, asserting every outcome on the way;
/// returns the figures observed.
pub fn run(w: Wiring) -> Figures {
    let started = Instant::now();
    let Wiring {
        brokers,
        mut router,
        sinks,
        host_kafka,
        cli_env,
    } = w;
    let cli = |args: &[&str]| -> Output {
        Command::new(binary("pkgstream"))
            .args(args)
            .env_remove("PKGSTREAM_CONFIG")
            .envs(cli_env.iter().map(|(k, v)| (k, v)))
            .env("PKGSTREAM__SEARCH_SINK__INDEX_PREFIX", &sinks.prefix)
            .output()
            .expect("run pkgstream")
    };
    let tag = sinks.prefix.clone();
    let (web, db) = (format!("{tag}-web"), format!("{tag}-db"));

    // The fleet: distinct machine ids and names; web in prod inside its
    // maintenance window (now ± 2 h), db in staging outside it (now + 10 h).
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let fleet_spec = [
        ("web-1.e2e.example", &web, "prod", "alice"),
        ("web-2.e2e.example", &web, "prod", "alice"),
        ("web-3.e2e.example", &web, "prod", "carol"),
        ("db-1.e2e.example", &db, "staging", "bob"),
    ];
    let hosts: Vec<SimHost> = fleet_spec
        .iter()
        .enumerate()
        .map(|(i, (name, group, env, user))| {
            let machine_id = format!("e2e0{:04x}{:024x}", i + 1, nanos % (1 << 96));
            SimHost::new(&router, &host_kafka, name, &machine_id, (group, env), user)
        })
        .collect();
    let now = chrono::Utc::now();
    let in_window = daily_window(now - chrono::Duration::hours(2), 4);
    let out_of_window = daily_window(now + chrono::Duration::hours(10), 1);
    let csv_dir = tempfile::tempdir().unwrap();
    let csv = csv_dir.path().join("hosts.csv");
    let rows: Vec<(&str, &str, &str, String)> = hosts
        .iter()
        .map(|h| {
            let w = if h.hostgroup == db {
                &out_of_window
            } else {
                &in_window
            };
            (
                h.hostname.as_str(),
                h.hostgroup.as_str(),
                h.environment.as_str(),
                w.clone(),
            )
        })
        .collect();
    write_hosts_csv(&csv, &rows);
    router.vars.push((
        "PKGSTREAM__ROUTER__HOSTS_FILE".into(),
        csv.display().to_string(),
    ));

    let router_proc = Running(router.start());
    router.wait_ready(LIMIT);
    let search = sinks.start("search", &[]);
    let metrics = sinks.start(
        "metrics",
        &[("PKGSTREAM__METRICS_SINK__WATCH_PACKAGES", "pa".into())],
    );

    // The plan: what each step runs and the changes it must cause.
    use Tool::{Dnf, Rpm};
    let plan = vec![
        Step {
            host: 0,
            tool: Dnf(vec!["install", "pa-1.0", "pb"]),
            changes: vec![
                ch("install", "pa", "1.0-1", None),
                ch("install", "pb", "1.0-1", None),
            ],
        },
        Step {
            host: 0,
            tool: Dnf(vec!["upgrade", "pa"]),
            changes: vec![ch("upgrade", "pa", "3.0-1", Some("1.0-1"))],
        },
        Step {
            host: 0,
            tool: Dnf(vec!["remove", "pb"]),
            changes: vec![ch("remove", "pb", "1.0-1", None)],
        },
        Step {
            host: 1,
            tool: Dnf(vec!["install", "pa-2.0"]),
            changes: vec![ch("install", "pa", "2.0-1", None)],
        },
        Step {
            host: 1,
            tool: Dnf(vec!["upgrade", "pa"]),
            changes: vec![ch("upgrade", "pa", "3.0-1", Some("2.0-1"))],
        },
        Step {
            host: 1,
            tool: Dnf(vec!["install", "pc"]),
            changes: vec![ch("install", "pc", "1.0-1", None)],
        },
        Step {
            host: 2,
            tool: Dnf(vec!["install", "pa-2.0", "pc"]),
            changes: vec![
                ch("install", "pa", "2.0-1", None),
                ch("install", "pc", "1.0-1", None),
            ],
        },
        // Rogue: a package dnf never installed.
        Step {
            host: 2,
            tool: Rpm(vec!["-U", "pd-1.0.rpm"]),
            changes: vec![ch("install", "pd", "1.0-1", None)],
        },
        Step {
            host: 3,
            tool: Dnf(vec!["install", "pa-1.0", "pd"]),
            changes: vec![
                ch("install", "pa", "1.0-1", None),
                ch("install", "pd", "1.0-1", None),
            ],
        },
        // Rogue: an upgrade by hand, then dnf takes it back, then a removal by hand.
        Step {
            host: 3,
            tool: Rpm(vec!["-U", "pa-2.0.rpm"]),
            changes: vec![ch("upgrade", "pa", "2.0-1", Some("1.0-1"))],
        },
        Step {
            host: 3,
            tool: Dnf(vec!["downgrade", "pa"]),
            changes: vec![ch("downgrade", "pa", "1.0-1", Some("2.0-1"))],
        },
        Step {
            host: 3,
            tool: Rpm(vec!["-e", "pd"]),
            changes: vec![ch("remove", "pd", "1.0-1", None)],
        },
    ];
    let steps_of = |h: usize| plan.iter().filter(move |s| s.host == h);
    let n: usize = plan.iter().map(|s| s.changes.len()).sum();
    // What each host's history must be: (key, user, repo) per change, and
    // the sizes of its transactions.
    let expected_of = |h: usize| -> (Vec<Reported>, Vec<usize>) {
        let mut list = Vec::new();
        let mut sizes = Vec::new();
        for s in steps_of(h) {
            sizes.push(s.changes.len());
            for c in &s.changes {
                list.push((
                    key(s.tool.source(), c),
                    hosts[h].user.clone(),
                    repo_of(s.tool.source(), c.action),
                ));
            }
        }
        (list, sizes)
    };

    // Run it: the hosts in parallel, each host's steps in order.
    let t_run = Instant::now();
    std::thread::scope(|scope| {
        for (i, h) in hosts.iter().enumerate() {
            let steps: Vec<&Step> = steps_of(i).collect();
            scope.spawn(move || {
                for s in steps {
                    h.run(&s.tool);
                }
                h.flush();
            });
        }
    });
    let run_took = t_run.elapsed();
    // The model's final state is what the rpmdbs hold.
    let state: Vec<BTreeMap<String, String>> =
        (0..hosts.len()).map(|i| final_state(steps_of(i))).collect();
    for (h, want) in hosts.iter().zip(&state) {
        assert_eq!(&h.installed(), want, "rpmdb of {}", h.hostname);
    }

    // 1. Raw topic: one event per change, dnf's context or none.
    let raw = consume_all(
        &brokers,
        &router.changes_raw,
        n,
        Duration::from_secs(3),
        LIMIT,
    );
    assert_eq!(raw.len(), n, "raw events: one per change");
    let events = decode_all(&raw);
    for (i, h) in hosts.iter().enumerate() {
        let (want, sizes) = expected_of(i);
        let mine: Vec<_> = events
            .iter()
            .filter(|e| e.machine_id == h.machine_id)
            .collect();
        let got: Vec<Reported> = mine
            .iter()
            .map(|e| {
                (
                    (
                        e.seen.source.to_lowercase(),
                        e.seen.action.to_lowercase(),
                        e.seen.nvr.clone(),
                        e.seen.replaced.clone(),
                    ),
                    e.login_user.clone().unwrap_or_default(),
                    local(e.repo.as_deref()),
                )
            })
            .collect();
        assert_eq!(
            chunk_sorted(&got, &sizes),
            chunk_sorted(&want, &sizes),
            "raw events of {}",
            h.hostname
        );
        for e in &mine {
            assert_eq!(e.hostname, h.hostname);
            assert_eq!(
                e.history_id.is_some(),
                e.seen.source == "DNF",
                "a history id exactly on dnf's changes: {e:?}"
            );
        }
    }

    // 2. A flush whose acknowledgement was lost: web-1's events again.
    let again: Vec<(Vec<u8>, Vec<u8>)> = raw
        .iter()
        .filter(|m| m.key == hosts[0].machine_id.as_bytes())
        .map(|m| (m.key.clone(), m.value.clone()))
        .collect();
    let dups = again.len();
    assert_eq!(dups, steps_of(0).map(|s| s.changes.len()).sum::<usize>());
    send(&router.producer(), &router.changes_raw, &again);
    wait_for("the router to drop the resent events", LIMIT, || {
        router.metric("pkgstream_router_events_deduplicated_total") == dups as f64
    });

    // 3. Enriched topic: exactly one record per change, enriched.
    let enriched = read_all(&brokers, &router.enriched, n, Duration::from_secs(3), LIMIT);
    assert_eq!(enriched.len(), n, "enriched records: one per change");
    let mut ids = BTreeSet::new();
    for m in &enriched {
        let c = pkgstream_schemas::decode_enriched_change(&m.value).expect("an enriched change");
        ids.insert(c.event_id.to_hex());
        let h = hosts
            .iter()
            .find(|h| h.machine_id == c.host.machine_id.as_ref())
            .expect("a fleet host");
        let e = &c.enrichment;
        assert!(e.known_host, "{c:?}");
        assert_eq!(
            (e.hostgroup.as_ref(), e.environment.as_ref()),
            (h.hostgroup.as_str(), h.environment.as_str())
        );
        assert_eq!(
            e.unexplained_rpm,
            c.source == pkgstream_schemas::Source::Rpm
        );
        assert_eq!(
            e.outside_maintenance_window,
            h.hostgroup == db,
            "web changes are inside their window, db's outside: {c:?}"
        );
    }
    assert_eq!(ids.len(), n, "distinct event ids");

    // 4. The changes index: exactly one document per change.
    wait_count(&sinks.changes(), n as u64, LIMIT);

    // 5. Inventory snapshots: the package state equals the model, nothing
    // contradicted, no change inferred.
    for h in &hosts {
        h.inventory();
        h.flush();
    }
    wait_for("a snapshot on every host document", LIMIT, || {
        let docs = all_docs(&sinks.hosts());
        docs.len() == hosts.len() && docs.values().all(|d| d["last_snapshot_us"].is_i64())
    });
    let host_docs = all_docs(&sinks.hosts());
    for (h, st) in hosts.iter().zip(&state) {
        let d = &host_docs[&h.machine_id];
        assert_eq!(d["package_count"], st.len(), "{d}");
        assert_eq!(d["drift_count"], 0, "{d}");
        assert_eq!(d["host"]["name"], h.hostname.as_str());
        assert_eq!(d["pkgstream"]["hostgroup"], h.hostgroup.as_str());
    }
    let expected_state: State = hosts
        .iter()
        .zip(&state)
        .flat_map(|(h, st)| {
            st.iter()
                .map(|(name, vr)| (format!("{}/{name}.noarch", h.machine_id), format!("0:{vr}")))
        })
        .collect();
    wait_state(&sinks.packages(), &expected_state, LIMIT);
    assert_eq!(
        router.metric("pkgstream_router_events_out_total{kind=\"snapshot\"}"),
        hosts.len() as f64
    );
    assert_eq!(
        router.metric("pkgstream_router_events_out_total{kind=\"synthetic\"}"),
        0.0
    );
    assert_eq!(
        count(&sinks.changes()),
        n as u64,
        "snapshots add no history"
    );

    // 6. pkgstream history HOST: exactly its changes, oldest first.
    let mut history_rows = 0;
    for (i, h) in hosts.iter().enumerate() {
        let out = cli(&["history", &h.hostname, "--json"]);
        assert!(out.status.success(), "history {}: {out:?}", h.hostname);
        let docs = json_lines(&out);
        history_rows += docs.len();
        // One time per transaction, later for each later step, even for
        // steps run within one second.
        let (_, sizes) = expected_of(i);
        let times: Vec<i64> = docs
            .iter()
            .map(|d| d["event_time_us"].as_i64().unwrap())
            .collect();
        let mut step_times: Vec<i64> = Vec::new();
        let mut rest = &times[..];
        for n in &sizes {
            let (step, after) = rest.split_at((*n).min(rest.len()));
            assert!(step.windows(2).all(|w| w[0] == w[1]), "{times:?}");
            step_times.extend(step.first());
            rest = after;
        }
        assert!(
            step_times.windows(2).all(|w| w[0] < w[1]),
            "history of {} in time order, one step after the other: {times:?}",
            h.hostname
        );
        let got: Vec<Reported> = docs
            .iter()
            .map(|d| {
                let s = |v: &Value| v.as_str().unwrap_or_default().to_owned();
                let name = s(&d["package"]["name"]);
                let vr = |evr: &Value| {
                    evr.as_str()
                        .map(|e| format!("{name}-{}", e.strip_prefix("0:").unwrap_or(e)))
                };
                assert_eq!(d["host"]["id"], h.machine_id.as_str());
                (
                    (
                        s(&d["pkgstream"]["source"]),
                        s(&d["event"]["action"]),
                        vr(&d["package"]["evr"]).unwrap_or_default(),
                        vr(&d["pkgstream"]["replaced"]["evr"]),
                    ),
                    s(&d["user"]["name"]),
                    local(d["package"]["repo"].as_str()),
                )
            })
            .collect();
        let (want, sizes) = expected_of(i);
        assert_eq!(
            chunk_sorted(&got, &sizes),
            chunk_sorted(&want, &sizes),
            "history of {}",
            h.hostname
        );
        for d in &docs {
            let cl = d["process"]["command_line"].as_str().unwrap_or_default();
            let want_prefix = if d["pkgstream"]["source"] == "rpm" {
                "rpm "
            } else {
                "dnf "
            };
            assert!(cl.starts_with(want_prefix), "command line {cl}: {d}");
        }
    }
    let out = cli(&["changes", "--since", "1h", "--source", "rpm", "--json"]);
    assert!(out.status.success(), "{out:?}");
    let rogue: BTreeSet<(String, String, String)> = json_lines(&out)
        .iter()
        .map(|d| {
            (
                d["host"]["name"].as_str().unwrap().to_owned(),
                d["event"]["action"].as_str().unwrap().to_owned(),
                d["package"]["name"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let hosts_ref = &hosts;
    let want_rogue: BTreeSet<(String, String, String)> = plan
        .iter()
        .filter(|s| s.tool.source() == "rpm")
        .flat_map(|s| {
            s.changes.iter().map(move |c| {
                (
                    hosts_ref[s.host].hostname.clone(),
                    c.action.to_owned(),
                    c.name.to_owned(),
                )
            })
        })
        .collect();
    assert_eq!(rogue, want_rogue, "pkgstream changes --source rpm");
    let rogue_rows = json_lines(&out).len();
    assert_eq!(rogue_rows, want_rogue.len());

    // 7. pkgstream drift: versions and host counts per group, outliers.
    // (group, package) -> E:V-R -> hostnames, from the model.
    let mut versions: BTreeMap<(String, String), BTreeMap<String, Vec<String>>> = BTreeMap::new();
    for (h, st) in hosts.iter().zip(&state) {
        for (name, vr) in st {
            versions
                .entry((h.hostgroup.clone(), name.clone()))
                .or_default()
                .entry(format!("0:{vr}"))
                .or_default()
                .push(h.hostname.clone());
        }
    }
    let drift = |args: &[&str]| -> Value {
        let mut a = vec!["drift", "--format", "json"];
        a.extend_from_slice(args);
        let out = cli(&a);
        assert!(out.status.success(), "drift {args:?}: {out:?}");
        serde_json::from_slice(&out.stdout).unwrap()
    };
    // (group, package, versions → hosts, expected, outlier hosts sorted)
    type Row = (String, String, BTreeMap<String, u64>, String, Vec<String>);
    let rows_of = |r: &Value| -> Vec<Row> {
        r["drift"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| {
                assert_eq!(
                    d["outliers"].as_u64().unwrap(),
                    d["outlier_hosts"].as_array().unwrap().len() as u64
                );
                (
                    d["hostgroup"].as_str().unwrap().to_owned(),
                    d["package"].as_str().unwrap().to_owned(),
                    d["versions"]
                        .as_object()
                        .unwrap()
                        .iter()
                        .map(|(v, n)| (v.clone(), n.as_u64().unwrap()))
                        .collect(),
                    d["expected"].as_str().unwrap().to_owned(),
                    d["outlier_hosts"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|h| h.as_str().unwrap().to_owned())
                        .collect(),
                )
            })
            .collect()
    };
    let want_rows = |group: Option<&str>, expect: Option<(&str, &str)>| -> (u64, Vec<Row>) {
        let mut rows = Vec::new();
        let mut checked = 0;
        for ((g, p), vs) in &versions {
            if group.is_some_and(|want| want != g) {
                continue;
            }
            checked += 1;
            let expected = match expect {
                Some((ep, ev)) if ep == p => format!("0:{ev}"),
                _ => {
                    let top = vs.values().map(Vec::len).max().unwrap();
                    let tops: Vec<&String> = vs
                        .iter()
                        .filter(|(_, h)| h.len() == top)
                        .map(|(v, _)| v)
                        .collect();
                    assert_eq!(tops.len(), 1, "the plan has a clear majority: {vs:?}");
                    tops[0].clone()
                }
            };
            let mut outliers: Vec<String> = vs
                .iter()
                .filter(|(v, _)| **v != expected)
                .flat_map(|(_, h)| h.clone())
                .collect();
            if outliers.is_empty() {
                continue;
            }
            outliers.sort();
            rows.push((
                g.clone(),
                p.clone(),
                vs.iter()
                    .map(|(v, h)| (v.clone(), h.len() as u64))
                    .collect(),
                expected,
                outliers,
            ));
        }
        (checked, rows)
    };
    let r = drift(&[]);
    let (checked, rows) = want_rows(None, None);
    assert_eq!(r["checked"], checked, "{r}");
    assert_eq!(rows_of(&r), rows, "drift of the fleet");
    assert!(
        rows.iter()
            .any(|(g, p, _, _, o)| g == &web && p == "pa" && o == &[hosts[2].hostname.clone()]),
        "the plan leaves web-3 behind on pa: {rows:?}"
    );
    assert_eq!(r["stale_hosts"], serde_json::json!([]), "{r}");
    assert_eq!(r["contradicted_hosts"], serde_json::json!([]), "{r}");
    let r = drift(&["--group", &web, "--expect", "pa=2.0-1"]);
    let (checked, rows) = want_rows(Some(&web), Some(("pa", "2.0-1")));
    assert_eq!(r["checked"], checked, "{r}");
    assert_eq!(rows_of(&r), rows, "drift of web expecting pa 2.0-1");
    let r = drift(&["--group", &db, "--package", "pa", "--expect", "pa=3.0-1"]);
    let (checked, rows) = want_rows(Some(&db), Some(("pa", "3.0-1")));
    assert_eq!(r["checked"], checked, "{r}");
    assert_eq!(rows_of(&r), rows, "drift of db expecting pa 3.0-1");
    assert_eq!(rows.len(), 1, "db-1 is an outlier when 3.0-1 is expected");

    // 8. pkgstream replay of the run's time range: every host's changes
    // exactly as reported, the snapshots skipped.
    let out = cli(&["replay", "--from", "1h", "--topic", &router.enriched]);
    assert!(out.status.success(), "replay: {out:?}");
    let replayed_docs = json_lines(&out);
    let summary: Value = String::from_utf8_lossy(&out.stderr)
        .lines()
        .rfind(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).expect("replay summary JSON"))
        .unwrap_or_else(|| panic!("no replay summary: {out:?}"));
    let replayed = replayed_docs.len();
    let replayed_snapshots = summary["snapshots_skipped"].as_u64().unwrap_or(0) as usize;
    assert_eq!(summary["written"], replayed, "{summary}");
    assert_eq!(summary["undecodable"], 0, "{summary}");
    for (i, h) in hosts.iter().enumerate() {
        let (want, sizes) = expected_of(i);
        let got: Vec<Reported> = replayed_docs
            .iter()
            .filter(|d| d["host"]["machine_id"] == h.machine_id.as_str())
            .map(|d| {
                let s = |v: &Value| v.as_str().unwrap_or_default().to_owned();
                let nvr = |p: &Value| {
                    p.is_object().then(|| {
                        format!(
                            "{}-{}-{}",
                            s(&p["name"]),
                            s(&p["version"]),
                            s(&p["release"])
                        )
                    })
                };
                (
                    (
                        s(&d["source"]).to_lowercase(),
                        s(&d["action"]).to_lowercase(),
                        nvr(&d["package"]).unwrap_or_default(),
                        nvr(&d["replaced"]),
                    ),
                    s(&d["transaction"]["login_user"]),
                    local(d["package"]["repo"].as_str()),
                )
            })
            .collect();
        assert_eq!(
            chunk_sorted(&got, &sizes),
            chunk_sorted(&want, &sizes),
            "replay of {}",
            h.hostname
        );
    }

    // 9. Prometheus: counters by group, environment, action and source;
    // unmanaged rpm and outside-window counters; hosts; the drift gauge.
    let g = format!("hostgroup=~\"{tag}-.*\"");
    let series = |q: &str, labels: &[&str]| -> BTreeMap<Vec<String>, i64> {
        let mut m = BTreeMap::new();
        for s in prom_query(q) {
            let v = s["value"][1].as_str().unwrap().parse::<f64>().unwrap() as i64;
            if v != 0 {
                let k = labels
                    .iter()
                    .map(|l| s["metric"][*l].as_str().unwrap_or_default().to_owned())
                    .collect();
                *m.entry(k).or_default() += v;
            }
        }
        m
    };
    let mut want_changes: BTreeMap<Vec<String>, i64> = BTreeMap::new();
    let mut want_rpm: BTreeMap<Vec<String>, i64> = BTreeMap::new();
    let mut want_outside: BTreeMap<Vec<String>, i64> = BTreeMap::new();
    for s in &plan {
        let h = &hosts[s.host];
        for c in &s.changes {
            *want_changes
                .entry(vec![
                    h.hostgroup.clone(),
                    h.environment.clone(),
                    c.action.to_owned(),
                    s.tool.source().to_owned(),
                ])
                .or_default() += 1;
            let ge = vec![h.hostgroup.clone(), h.environment.clone()];
            if s.tool.source() == "rpm" {
                *want_rpm.entry(ge.clone()).or_default() += 1;
            }
            if h.hostgroup == db {
                *want_outside.entry(ge).or_default() += 1;
            }
        }
    }
    let mut want_hosts: BTreeMap<Vec<String>, i64> = BTreeMap::new();
    let mut want_gauge: BTreeMap<Vec<String>, i64> = BTreeMap::new();
    for (h, st) in hosts.iter().zip(&state) {
        *want_hosts.entry(vec![h.hostgroup.clone()]).or_default() += 1;
        if let Some(vr) = st.get("pa") {
            *want_gauge
                .entry(vec!["pa".into(), vr.clone(), h.hostgroup.clone()])
                .or_default() += 1;
        }
    }
    let q_changes = format!("pkgstream_fleet_package_changes_total{{{g}}}");
    let l_changes = ["hostgroup", "environment", "action", "source"];
    wait_eq(
        "the change counters in Prometheus",
        LIMIT,
        &want_changes,
        || series(&q_changes, &l_changes),
    );
    assert_eq!(want_changes.values().sum::<i64>(), n as i64);
    let ge = ["hostgroup", "environment"];
    assert_eq!(
        series(
            &format!("pkgstream_fleet_unexplained_rpm_changes_total{{{g}}}"),
            &ge
        ),
        want_rpm,
        "unmanaged rpm changes"
    );
    assert_eq!(
        series(
            &format!("pkgstream_fleet_changes_outside_window_total{{{g}}}"),
            &ge
        ),
        want_outside,
        "changes outside the maintenance window"
    );
    // The drift gauge, first as the sink exposes it: exactly the final
    // versions, and nothing for every version a host left behind.
    let mut seen_versions: BTreeSet<Vec<String>> = BTreeSet::new();
    for s in &plan {
        for c in s.changes.iter().filter(|c| c.name == "pa") {
            for vr in std::iter::once(c.vr).chain(c.replaced) {
                seen_versions.insert(vec![
                    "pa".into(),
                    vr.into(),
                    hosts[s.host].hostgroup.clone(),
                ]);
            }
        }
    }
    let gauge_series = |k: &[String]| {
        format!(
            "pkgstream_fleet_watched_package_hosts{{hostgroup=\"{}\",package=\"{}\",version=\"{}\"}}",
            k[2], k[0], k[1]
        )
    };
    wait_for(
        "the drift gauge of pa on the sink's /metrics",
        LIMIT,
        || {
            seen_versions.iter().all(|k| {
                metrics.metric(&gauge_series(k)) == want_gauge.get(k).copied().unwrap_or(0) as f64
            })
        },
    );
    // Then in Prometheus, exactly: a series whose count fell to 0 is ended
    // with a staleness marker, so a version a host left behind is gone
    // from the query at once (not after the 5-minute lookback).
    let q_gauge = format!("pkgstream_fleet_watched_package_hosts{{{g}}}");
    wait_eq(
        "the drift gauge of pa in Prometheus",
        LIMIT,
        &want_gauge,
        || series(&q_gauge, &["package", "version", "hostgroup"]),
    );
    assert_eq!(
        series(&format!("pkgstream_fleet_hosts{{{g}}}"), &["hostgroup"]),
        want_hosts
    );

    // Nothing was poison; every stage stops cleanly.
    for dlq in [&router.dlq, &sinks.dlq] {
        assert!(
            read_all(
                &brokers,
                dlq,
                0,
                Duration::from_secs(1),
                Duration::from_secs(5)
            )
            .is_empty(),
            "nothing in {dlq}"
        );
    }
    assert!(search.stop().success(), "search sink: SIGTERM, exit 0");
    assert!(metrics.stop().success(), "metrics sink: SIGTERM, exit 0");
    assert!(router_proc.stop().success(), "router: SIGTERM, exit 0");
    let figures = Figures {
        hosts: hosts.len(),
        steps: plan.len(),
        rogue_steps: plan.iter().filter(|s| s.tool.source() == "rpm").count(),
        raw_events: raw.len(),
        resent_dropped: dups,
        enriched_records: enriched.len(),
        documents: count(&sinks.changes()) as usize,
        history_rows,
        rogue_rows,
        drift_pairs_checked: versions.len(),
        replayed,
        replayed_snapshots,
        counter_series: want_changes.len(),
        counted_changes: want_changes.values().sum::<i64>() as usize,
    };
    println!(
        "fleet e2e: {figures:?}; dnf/rpm took {run_took:?}, all {:?}",
        started.elapsed()
    );
    figures
}
