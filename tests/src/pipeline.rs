//! Helpers for the whole-pipeline acceptance run ([`crate::fleet`], of
//! `tests/tests/pipeline_e2e.rs` and `secure_pipeline.rs`): simulated hosts — each a [`HostRoot`]
//! with its own machine id, hostname and login user, reporting into the
//! router's raw topics — the hosts CSV the router enriches from, the
//! planned changes and the state they leave, processes killed when a test
//! fails.

#![allow(clippy::expect_used)] // test set-up: a failed step is a failed test, with its message

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Output;
use std::time::{Duration, Instant};

use crate::hooks::{text, Hooks, HostRoot};
use crate::router::RouterEnv;
use crate::secure_kafka::override_vars;
pub use crate::Running;
use crate::{kafka_brokers, EmitEnv};

/// One simulated host: an install root with both hooks whose events carry
/// this host's identity and user and go to the router's raw topics.
pub struct SimHost {
    /// Host name (`/etc/hostname` of the emitter).
    pub hostname: String,
    /// Machine id (`/etc/machine-id` of the emitter).
    pub machine_id: String,
    /// Host group the hosts CSV gives it.
    pub hostgroup: String,
    /// Environment the hosts CSV gives it.
    pub environment: String,
    /// Who runs dnf and rpm (`SUDO_USER`; the login uid is unset here).
    pub user: String,
    /// The install root, its spool and hooks.
    pub root: HostRoot,
}

impl SimHost {
    /// A fresh root whose emitter reports as `hostname`/`machine_id` into
    /// `router`'s raw topics with the Kafka settings `kafka` over those of
    /// the plaintext test Kafka, dnf and rpm run as `user`.
    pub fn new(
        router: &RouterEnv,
        kafka: &[(String, String)],
        hostname: &str,
        machine_id: &str,
        (hostgroup, environment): (&str, &str),
        user: &str,
    ) -> SimHost {
        let mut env = EmitEnv::new(&kafka_brokers(), "e2e-host");
        let etc = env.dir.path().join("etc");
        std::fs::write(etc.join("machine-id"), format!("{machine_id}\n")).expect("write");
        std::fs::write(etc.join("hostname"), format!("{hostname}\n")).expect("write");
        env.vars
            .retain(|(k, _)| !k.starts_with("PKGSTREAM_EMIT__TOPICS__"));
        env.vars.push((
            "PKGSTREAM_EMIT__TOPICS__CHANGES_RAW".into(),
            router.changes_raw.clone(),
        ));
        env.vars.push((
            "PKGSTREAM_EMIT__TOPICS__INVENTORY_RAW".into(),
            router.inventory_raw.clone(),
        ));
        override_vars(&mut env.vars, kafka.to_vec());
        env.changes_topic = router.changes_raw.clone();
        env.inventory_topic = router.inventory_raw.clone();
        let mut root = HostRoot::new(
            env,
            Hooks {
                rpm_plugin: true,
                dnf_plugin: true,
            },
        );
        root.extra_env.push(("SUDO_USER".into(), user.into()));
        SimHost {
            hostname: hostname.into(),
            machine_id: machine_id.into(),
            hostgroup: hostgroup.into(),
            environment: environment.into(),
            user: user.into(),
            root,
        }
    }

    /// Runs one planned step (dnf or plain rpm); panics if it fails.
    pub fn run(&self, tool: &Tool) {
        let out = match tool {
            Tool::Dnf(args) => self.root.dnf(args),
            Tool::Rpm(args) => {
                let repo = crate::hooks::TestRepo::shared();
                let args: Vec<String> = args
                    .iter()
                    .map(|a| match a.strip_suffix(".rpm") {
                        Some(nv) => {
                            let (n, v) = nv.rsplit_once('-').expect("NAME-VERSION.rpm");
                            repo.rpm(n, v).display().to_string()
                        }
                        None => (*a).to_owned(),
                    })
                    .collect();
                let args: Vec<&str> = args.iter().map(String::as_str).collect();
                self.root.rpm(&args)
            }
        };
        assert!(
            out.status.success(),
            "{} on {}: {}",
            tool,
            self.hostname,
            text(&out)
        );
    }

    /// `pkgstream-emit inventory` of this root (its rpmdb at `/var/lib/rpm`).
    pub fn inventory(&self) {
        let out = self
            .root
            .env
            .command(&[
                "inventory",
                "--root",
                &self.root.root.display().to_string(),
                "--dbpath",
                "/var/lib/rpm",
            ])
            .output()
            .expect("run pkgstream-emit inventory");
        assert!(out.status.success(), "inventory: {}", text(&out));
    }

    /// What the rpmdb of this root holds: name → `V-R`.
    pub fn installed(&self) -> BTreeMap<String, String> {
        let out = self
            .root
            .rpm(&["-qa", "--qf", "%{NAME} %{VERSION}-%{RELEASE}\\n"]);
        assert!(out.status.success(), "rpm -qa: {}", text(&out));
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.split_once(' '))
            .map(|(n, v)| (n.to_owned(), v.to_owned()))
            .collect()
    }

    /// Ships everything in the spool (changes and snapshots), waiting out
    /// a background flush a hook started.
    pub fn flush(&self) {
        let env = &self.root.env;
        let started = Instant::now();
        loop {
            let flush = env.flush(&["--timeout", "30"]);
            assert!(flush.status.success(), "flush: {}", text(&flush));
            let status = env.command(&["status"]).output().expect("status");
            let s = String::from_utf8_lossy(&status.stdout);
            if s.contains(": 0 bytes of change events, 0 bytes of inventory snapshots") {
                return;
            }
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "spool of {} not empty after 60 s: {s}",
                self.hostname
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

/// How a step changes packages.
#[derive(Clone, Debug)]
pub enum Tool {
    /// `dnf -y ARGS` (both hooks see it).
    Dnf(Vec<&'static str>),
    /// `rpm ARGS` outside dnf; `NAME-VERSION.rpm` stands for that test package's file.
    Rpm(Vec<&'static str>),
}

impl Tool {
    /// The source the pipeline must report: `dnf` or `rpm`.
    pub fn source(&self) -> &'static str {
        match self {
            Tool::Dnf(_) => "dnf",
            Tool::Rpm(_) => "rpm",
        }
    }
}

impl std::fmt::Display for Tool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Tool::Dnf(a) => write!(f, "dnf {}", a.join(" ")),
            Tool::Rpm(a) => write!(f, "rpm {}", a.join(" ")),
        }
    }
}

/// One package change a step must cause.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Change {
    /// `install`, `upgrade`, `downgrade`, `reinstall`, `remove`, `obsolete`.
    pub action: &'static str,
    /// Package name.
    pub name: &'static str,
    /// `VERSION-RELEASE` after the change (the removed one for a removal).
    pub vr: &'static str,
    /// `VERSION-RELEASE` it replaced (upgrade, downgrade).
    pub replaced: Option<&'static str>,
}

/// Shorthand for a [`Change`]: `ch("upgrade", "pa", "3.0-1", Some("1.0-1"))`.
pub fn ch(
    action: &'static str,
    name: &'static str,
    vr: &'static str,
    replaced: Option<&'static str>,
) -> Change {
    Change {
        action,
        name,
        vr,
        replaced,
    }
}

/// One step of the plan: a command on a host and the changes it causes.
#[derive(Clone, Debug)]
pub struct Step {
    /// Index of the host in the fleet.
    pub host: usize,
    /// The command.
    pub tool: Tool,
    /// The changes it causes (one rpm transaction: their order is rpm's).
    pub changes: Vec<Change>,
}

/// Applies `steps` of one host to an empty package set: name → `V-R`.
pub fn final_state<'a>(steps: impl IntoIterator<Item = &'a Step>) -> BTreeMap<String, String> {
    let mut state = BTreeMap::new();
    for c in steps.into_iter().flat_map(|s| &s.changes) {
        match c.action {
            "remove" | "obsolete" => {
                state.remove(c.name);
            }
            _ => {
                state.insert(c.name.to_owned(), c.vr.to_owned());
            }
        }
    }
    state
}

/// Writes the router's hosts CSV: one line per host with its group,
/// environment and maintenance window.
pub fn write_hosts_csv(path: &Path, rows: &[(&str, &str, &str, String)]) {
    let mut csv = String::from("host,hostgroup,environment,owner,datacenter,tags,maintenance\n");
    for (host, group, env, window) in rows {
        csv.push_str(&format!(
            "{host},{group},{env},team-{group},dc1,tier=e2e,\"{window}\"\n"
        ));
    }
    std::fs::write(path, csv).expect("write hosts CSV");
}

/// A daily maintenance window `daily HH:MM-HH:MM` (UTC) from `start` for
/// `hours` hours.
pub fn daily_window(start: chrono::DateTime<chrono::Utc>, hours: i64) -> String {
    let end = start + chrono::Duration::hours(hours);
    format!("daily {}-{}", start.format("%H:%M"), end.format("%H:%M"))
}

/// The JSON lines of a command's standard output.
pub fn json_lines(out: &Output) -> Vec<serde_json::Value> {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| {
            serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}\n{}", text(out)))
        })
        .collect()
}

/// Polls `f` every 500 ms until it answers `want`; after `limit` the panic
/// shows the last answer next to `want`.
pub fn wait_eq<T: PartialEq + std::fmt::Debug>(
    what: &str,
    limit: Duration,
    want: &T,
    mut f: impl FnMut() -> T,
) {
    let started = Instant::now();
    loop {
        let got = f();
        if &got == want {
            return;
        }
        assert!(
            started.elapsed() < limit,
            "timed out after {limit:?} waiting for {what}:\n got: {got:?}\nwant: {want:?}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}
