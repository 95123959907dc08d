//! The host side at its boundaries, against the real Kafka and the real
//! rpm (issue 10, items 4, 5, 6 and 13):
//!
//! - `record` spools every valid line whatever its neighbours are (not
//!   UTF-8, 10 MB long, over an identity limit, a type error), cuts
//!   oversized text with a visible mark, and the flush after it exits 0;
//! - a record Kafka will never take is set aside as a dead letter, the rest
//!   ships, and no flush exits 75 ("unreachable") for it;
//! - the central side's `PKGSTREAM__*` variables do not touch
//!   `pkgstream-emit`, and a broken host configuration still spools;
//! - `inventory --root` finds an rpmdb that rpm built where the host's rpm
//!   would not look, and refuses an empty one.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Write;
use std::path::Path;
use std::process::{Output, Stdio};
use std::time::Duration;

use pkgstream_tests::hooks::{text, Hooks, HostRoot, TestRepo};
use pkgstream_tests::*;

const QUIET: Duration = Duration::from_secs(3);
const LIMIT: Duration = Duration::from_secs(90);

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// `pkgstream-emit record` with `input` as its raw stdin and `extra`
/// variables.
fn record_bytes(env: &EmitEnv, input: &[u8], extra: &[(&str, &str)]) -> Output {
    let mut child = env
        .command(&["record"])
        .envs(extra.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn record");
    let mut stdin = child.stdin.take().expect("stdin");
    // record reads all of stdin, whatever a line holds; one that stopped
    // early (broken pipe here) is caught by the assertions on what it did.
    let _ = stdin.write_all(input);
    drop(stdin);
    child.wait_with_output().expect("wait record")
}

fn status(env: &EmitEnv) -> String {
    let out = env.command(&["status"]).output().expect("status");
    assert!(out.status.success(), "status: {}", text(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A dnf install change of package `name` with `command_line`.
fn change(name: &str, command_line: &str) -> String {
    serde_json::json!({
        "kind": "change", "source": "dnf", "action": "install",
        "event_time": 1_764_000_000,
        "package": {"name": name, "epoch": 0, "version": "1.0", "release": "1.el9", "arch": "x86_64", "repo": "baseos"},
        "transaction": {"rpm_tid": 1_764_000_000, "history_id": 7, "command_line": command_line, "login_user": "alice"}
    })
    .to_string()
}

/// (package name, command line) of each change on the topic.
fn shipped_changes(env: &EmitEnv, expected: usize) -> Vec<(String, Option<String>)> {
    let mut got: Vec<(String, Option<String>)> =
        consume_all(&kafka_brokers(), &env.changes_topic, expected, QUIET, LIMIT)
            .iter()
            .map(|m| {
                let c = pkgstream_schemas::decode_change(&m.value).expect("change decodes");
                (
                    c.package.name.to_string(),
                    c.transaction.command_line.as_deref().map(str::to_owned),
                )
            })
            .collect();
    got.sort();
    got
}

#[test]
fn record_spools_every_valid_line_around_undecodable_and_oversized_ones() {
    let brokers = kafka_brokers();
    let env = EmitEnv::new(&brokers, "hardening-input");
    create_topics(&brokers, &[&env.changes_topic, &env.inventory_topic]);

    let ten_mb = 10 << 20;
    let lines: Vec<Vec<u8>> = vec![
        change("alpha", "dnf install alpha").into_bytes(),
        // Not UTF-8 (Latin-1 from a broken hook).
        b"{\"kind\":\"change\",\"source\":\"dnf\",\"action\":\"install\",\"package\":{\"name\":\"caf\xe9\"}}"
            .to_vec(),
        change("bravo", "dnf install bravo").into_bytes(),
        // A 10 MB package name: an identity field, refused.
        change(&"n".repeat(ten_mb), "dnf install n...").into_bytes(),
        // A 10 MB command line: text, cut.
        change("charlie", &"x".repeat(ten_mb)).into_bytes(),
        // A type error.
        change("delta", "dnf install delta")
            .replace("\"epoch\":0", "\"epoch\":\"zero\"")
            .into_bytes(),
        change("echo", "dnf install echo").into_bytes(),
    ];
    let mut input = Vec::new();
    for l in &lines {
        input.extend_from_slice(l);
        input.push(b'\n');
    }
    let out = record_bytes(&env, &input, &[]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(65), "{}", text(&out));
    assert!(
        err.contains("stdin line 2: not UTF-8 (invalid byte at offset 73)"),
        "{err}"
    );
    assert!(
        err.contains("stdin line 4: package.name is 10485760 bytes, more than the 256 allowed"),
        "{err}"
    );
    assert!(
        err.contains("cut: stdin line 5: transaction.command_line cut from 10485760 to"),
        "{err}"
    );
    assert!(
        err.contains("stdin line 6: package.epoch: invalid type: string \"zero\", expected i32"),
        "{err}"
    );
    let held = status(&env);
    assert!(
        held.contains("set aside (dead letters): 3 in"),
        "the three refused lines are kept: {held}"
    );

    let flush = env.flush(&[]);
    assert_eq!(flush.status.code(), Some(0), "{}", text(&flush));
    let got = shipped_changes(&env, 4);
    let names: Vec<&str> = got.iter().map(|g| g.0.as_str()).collect();
    assert_eq!(names, ["alpha", "bravo", "charlie", "echo"]);
    let cut = got[2].1.as_deref().expect("charlie has a command line");
    assert!(cut.len() <= 4096, "{}", cut.len());
    assert!(cut.starts_with("xxxx"));
    assert!(
        cut.ends_with("… [cut by pkgstream from 10485760 bytes]"),
        "{}",
        &cut[cut.len() - 60..]
    );
    // Nothing waits any more, and a second flush ships nothing new.
    assert!(
        status(&env).contains(": 0 bytes of change events"),
        "{}",
        status(&env)
    );
    assert_eq!(env.flush(&[]).status.code(), Some(0));
    assert_eq!(shipped_changes(&env, 4).len(), 4);
}

/// Creates `topic` with a `max.message.bytes` of `max`.
fn create_small_topic(brokers: &str, topic: &str, max: usize) {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let admin: AdminClient<rdkafka::client::DefaultClientContext> =
        pkgstream_tests::client_config(brokers)
            .create()
            .expect("admin");
    let max = max.to_string();
    let new = NewTopic::new(topic, 3, TopicReplication::Fixed(1)).set("max.message.bytes", &max);
    for r in rt
        .block_on(admin.create_topics(
            [&new],
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(30))),
        ))
        .expect("create topic")
    {
        r.unwrap_or_else(|(t, e)| panic!("cannot create {t}: {e}"));
    }
}

/// `n` characters that zstd cannot shrink much (a fixed xorshift stream).
fn incompressible(n: usize) -> String {
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            char::from(
                b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
                    [(x % 62) as usize],
            )
        })
        .collect()
}

#[test]
fn a_record_kafka_never_takes_is_set_aside_and_the_rest_ships() {
    let brokers = kafka_brokers();
    let env = EmitEnv::new(&brokers, "hardening-poison");
    // The broker takes at most 2 KiB per record batch on this topic: a
    // change with a 4 KB random command line is larger even compressed.
    create_small_topic(&brokers, &env.changes_topic, 2048);
    create_topics(&brokers, &[&env.inventory_topic]);
    let mut lines: Vec<String> = (0..3)
        .map(|i| change(&format!("small-{i}"), "dnf upgrade"))
        .collect();
    lines.push(change("poison", &incompressible(4000)));
    lines.extend((3..6).map(|i| change(&format!("small-{i}"), "dnf upgrade")));
    let out = env.record(&lines);
    assert!(out.status.success(), "{}", text(&out));

    let started = std::time::Instant::now();
    let flush = env.flush(&["--timeout", "20"]);
    let err = stderr(&flush);
    println!(
        "flush with one poison record took {:?}:\n{err}",
        started.elapsed()
    );
    assert_eq!(
        flush.status.code(),
        Some(65),
        "a record set aside is reported, and is not 'unreachable' (75): {}",
        text(&flush)
    );
    assert!(
        err.contains("1 record(s) that Kafka at") && err.contains("were set aside in"),
        "{err}"
    );
    assert!(!err.contains("unreachable"), "{err}");
    let got = shipped_changes(&env, 6);
    let names: Vec<&str> = got.iter().map(|g| g.0.as_str()).collect();
    assert_eq!(
        names,
        ["small-0", "small-1", "small-2", "small-3", "small-4", "small-5"]
    );

    let held = status(&env);
    assert!(held.contains(": 0 bytes of change events"), "{held}");
    assert!(held.contains("set aside (dead letters): 1 in"), "{held}");
    let dead = env.spool_dir().join("dead");
    let reason =
        std::fs::read_to_string(dead.join("00000000000000000001.reason")).expect("the reason file");
    assert!(
        reason.contains("what: changes record, key ") && reason.contains("too large"),
        "{reason}"
    );
    assert!(dead.join("00000000000000000001.changes").exists());

    // It blocks nothing: the next flush has nothing left and exits 0.
    let again = env.flush(&["--timeout", "20"]);
    assert_eq!(again.status.code(), Some(0), "{}", text(&again));
    assert_eq!(shipped_changes(&env, 6).len(), 6);
}

#[test]
fn central_variables_do_not_touch_record_and_a_broken_host_config_still_spools() {
    let brokers = kafka_brokers();
    let env = EmitEnv::new(&brokers, "hardening-config");
    create_topics(&brokers, &[&env.changes_topic, &env.inventory_topic]);

    // A shell or unit carrying the central side's settings.
    let out = record_bytes(
        &env,
        format!("{}\n", change("central-env", "dnf install central-env")).as_bytes(),
        &[
            ("PKGSTREAM__SEARCH_SINK__URL", "https://es.example.com:9200"),
            ("PKGSTREAM__ROUTER__TRANSACTIONAL_ID", "router-0"),
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));

    // The host's own namespace with a key it does not know: broken, but the
    // change is spooled (into the spool the environment names) and the exit
    // status says so.
    let out = record_bytes(
        &env,
        format!("{}\n", change("broken-config", "dnf install broken-config")).as_bytes(),
        &[("PKGSTREAM_EMIT__SEARCH_SINK__URL", "x")],
    );
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(79), "{}", text(&out));
    assert!(
        err.contains("unknown field `search_sink`")
            && err.contains("PKGSTREAM_EMIT__SEARCH_SINK__URL")
            && err.contains("1 change(s) and 0 snapshot(s) were recorded anyway"),
        "{err}"
    );

    // A configuration file that is not TOML at all: spooled too.
    let bad = env.dir.path().join("bad-emit.toml");
    std::fs::write(&bad, "[kafka\nbrokers = ").expect("write");
    let out = record_bytes(
        &env,
        format!("{}\n", change("broken-file", "dnf install broken-file")).as_bytes(),
        &[("PKGSTREAM_EMIT_CONFIG", bad.to_str().expect("utf-8 path"))],
    );
    assert_eq!(out.status.code(), Some(79), "{}", text(&out));

    // Once the configuration is right again, flush ships all three.
    let flush = env.flush(&[]);
    assert_eq!(flush.status.code(), Some(0), "{}", text(&flush));
    let got = shipped_changes(&env, 3);
    let names: Vec<&str> = got.iter().map(|g| g.0.as_str()).collect();
    assert_eq!(names, ["broken-config", "broken-file", "central-env"]);
}

/// Package names of the one snapshot on the inventory topic.
fn shipped_snapshot(env: &EmitEnv) -> Vec<String> {
    let got = consume_all(&kafka_brokers(), &env.inventory_topic, 1, QUIET, LIMIT);
    assert_eq!(got.len(), 1, "exactly one snapshot");
    let s = pkgstream_schemas::decode_snapshot(&got[0].value).expect("snapshot decodes");
    let mut names: Vec<String> = s.packages.iter().map(|p| p.name.to_string()).collect();
    names.sort();
    names
}

fn install(h: &HostRoot, dbpath: Option<&str>, packages: &[(&str, &str)]) {
    let repo = TestRepo::shared();
    let mut args: Vec<String> = Vec::new();
    if let Some(d) = dbpath {
        args.extend(["--dbpath".into(), d.into()]);
    }
    args.push("-i".into());
    args.extend(
        packages
            .iter()
            .map(|(n, v)| repo.rpm(n, v).display().to_string()),
    );
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = h.rpm(&args);
    assert!(out.status.success(), "rpm -i: {}", text(&out));
}

const NO_HOOKS: Hooks = Hooks {
    rpm_plugin: false,
    dnf_plugin: false,
};

fn inventory(env: &EmitEnv, root: &Path, extra: &[&str]) -> Output {
    let root = root.display().to_string();
    let mut args = vec!["inventory", "--root", root.as_str()];
    args.extend_from_slice(extra);
    // The test process's own HOME: Debian's rpm says %_dbpath ~/.rpmdb.
    env.command(&args).output().expect("inventory")
}

#[test]
fn inventory_reads_the_rpmdb_rpm_built_where_the_hosts_rpm_does_not_look() {
    let brokers = kafka_brokers();
    // /var/lib/rpm (RHEL up to 9) in a root built by the real rpm.
    let env = EmitEnv::new(&brokers, "hardening-inv-varlib");
    create_topics(&brokers, &[&env.changes_topic, &env.inventory_topic]);
    let h = HostRoot::new(env, NO_HOOKS);
    install(&h, None, &[("pa", "1.0"), ("pb", "1.0"), ("pc", "1.0")]);
    assert!(h.root.join("var/lib/rpm/rpmdb.sqlite").exists());
    let out = inventory(&h.env, &h.root, &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let flush = h.env.flush(&[]);
    assert_eq!(flush.status.code(), Some(0), "{}", text(&flush));
    assert_eq!(shipped_snapshot(&h.env), ["pa", "pb", "pc"]);

    // /usr/lib/sysimage/rpm (Fedora, RHEL 10), /var/lib/rpm an absolute
    // symlink to it inside the root.
    let env = EmitEnv::new(&brokers, "hardening-inv-sysimage");
    create_topics(&brokers, &[&env.changes_topic, &env.inventory_topic]);
    let h = HostRoot::new(env, NO_HOOKS);
    install(
        &h,
        Some("/usr/lib/sysimage/rpm"),
        &[("pd", "1.0"), ("pold", "1.0")],
    );
    std::fs::create_dir_all(h.root.join("var/lib")).expect("mkdir");
    std::os::unix::fs::symlink("/usr/lib/sysimage/rpm", h.root.join("var/lib/rpm"))
        .expect("symlink");
    let out = inventory(&h.env, &h.root, &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(h.env.flush(&[]).status.code(), Some(0));
    assert_eq!(shipped_snapshot(&h.env), ["pd", "pold"]);
}

#[test]
fn an_empty_rpmdb_is_refused_unless_allowed() {
    let brokers = kafka_brokers();
    let env = EmitEnv::new(&brokers, "hardening-inv-empty");
    create_topics(&brokers, &[&env.changes_topic, &env.inventory_topic]);

    // A root with no rpmdb at all.
    let empty = env.dir.path().join("empty-root");
    std::fs::create_dir_all(&empty).expect("mkdir");
    let out = inventory(&env, &empty, &[]);
    assert_eq!(out.status.code(), Some(66), "{}", text(&out));
    assert!(
        stderr(&out).contains("no package in the rpmdb of")
            && stderr(&out).contains("/var/lib/rpm: no database"),
        "{}",
        text(&out)
    );
    // A root whose rpmdb exists and holds no package.
    let initialized = env.dir.path().join("initialized-root");
    let out = std::process::Command::new("rpm")
        .arg("--root")
        .arg(&initialized)
        .args(["--dbpath", "/var/lib/rpm", "--initdb"])
        .output()
        .expect("rpm --initdb");
    assert!(out.status.success(), "{}", text(&out));
    let out = inventory(&env, &initialized, &[]);
    assert_eq!(out.status.code(), Some(66), "{}", text(&out));
    assert!(
        stderr(&out).contains("/var/lib/rpm: no package"),
        "{}",
        text(&out)
    );
    assert!(
        status(&env).contains(": 0 bytes of change events, 0 bytes of inventory snapshots"),
        "nothing recorded: {}",
        status(&env)
    );

    // Forced: recorded and shipped, empty.
    let out = inventory(&env, &initialized, &["--allow-empty"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(env.flush(&[]).status.code(), Some(0));
    assert_eq!(shipped_snapshot(&env), Vec::<String>::new());
}

#[test]
fn a_broken_configuration_in_rpms_environment_still_records_the_transaction() {
    use pkgstream_tests::hooks::{read_changes, seen};
    let brokers = kafka_brokers();
    let env = EmitEnv::new(&brokers, "hardening-hook-config");
    create_topics(&brokers, &[&env.changes_topic, &env.inventory_topic]);
    let mut h = HostRoot::new(
        env,
        Hooks {
            rpm_plugin: true,
            dnf_plugin: false,
        },
    );
    // The admin's shell carries a central setting and a host-side typo.
    h.extra_env.push((
        "PKGSTREAM__SEARCH_SINK__URL".into(),
        "https://es.example.com:9200".into(),
    ));
    h.extra_env
        .push(("PKGSTREAM_EMIT__SPOOL__MAX_BYTE".into(), "1000000".into()));
    let repo = TestRepo::shared();
    let rpm = repo.rpm("pa", "1.0").display().to_string();
    let out = h.rpm(&["-i", &rpm]);
    assert!(out.status.success(), "rpm must succeed: {}", text(&out));
    let err = stderr(&out);
    assert!(
        err.contains("exit status: 79") && err.contains("recorded anyway"),
        "the hook reports the broken configuration loudly: {err}"
    );
    // The change is in the spool; with the configuration right, it ships.
    let events = read_changes(&h.env, 1);
    let got: Vec<_> = events.iter().map(|e| e.seen.clone()).collect();
    assert_eq!(got, [seen("RPM", "INSTALL", "pa-1.0-1", None)]);
}
