//! The rpm plugin inside a multi-threaded host: a python program drives
//! real rpm transactions through librpm (python3-rpm), as PackageKit does
//! through libdnf, from its main thread and from a worker thread, with and
//! without dnf's context. The plugin must leave the host's environment
//! alone (`setenv` races with any other thread's `getenv`, undefined
//! behaviour in glibc) except for the one variable the dnf plugin needs,
//! and that only when dnf drove the transaction and from the main thread;
//! the emitter still gets everything it needs: every change arrives in
//! Kafka, with dnf's context where there was one.
//!
//! Needs rpmbuild, createrepo_c and python3-rpm (Debian's `python3-rpm`,
//! which dnf depends on) and the broker of `scripts/services.sh start kafka`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use pkgstream_tests::hooks::*;
use pkgstream_tests::*;
use serde_json::Value;

/// The host: installs one package file through librpm from the main or a
/// worker thread, optionally with dnf's context in the environment (as the
/// dnf plugin puts it there), and prints the C environment (`environ`, what
/// `getenv(3)` reads) before and after, as JSON.
const HOST: &str = r#"
import ctypes, json, os, sys, threading
import rpm

root, pkg, where, context = sys.argv[1:5]
libc = ctypes.CDLL(None)
environ = ctypes.POINTER(ctypes.c_char_p).in_dll(libc, "environ")

def c_environ():
    out, i = [], 0
    while environ[i] is not None:
        out.append(environ[i].decode("utf-8", "replace"))
        i += 1
    return sorted(out)

if context == "dnf":
    os.environ["PKGSTREAM_DNF_CONTEXT"] = json.dumps({"pid": os.getpid(), "source": "dnf",
        "history_id": 42, "command_line": "threaded-host install", "login_user": "carol"})
result = {"before": c_environ()}

def transaction():
    result["main_thread"] = threading.current_thread() is threading.main_thread()
    ts = rpm.TransactionSet(root)
    fd = os.open(pkg, os.O_RDONLY)
    hdr = ts.hdrFromFdno(fd)
    os.close(fd)
    ts.addInstall(hdr, pkg, "u")
    fds = {}
    def callback(what, amount, total, key, data):
        if what == rpm.RPMCALLBACK_INST_OPEN_FILE:
            fds[key] = os.open(key, os.O_RDONLY)
            return fds[key]
        if what == rpm.RPMCALLBACK_INST_CLOSE_FILE:
            os.close(fds.pop(key))
    problems = ts.run(callback, "")
    result["problems"] = [str(p) for p in problems or []]
    ts.closeDB()

if where == "worker":
    t = threading.Thread(target=transaction)
    t.start()
    t.join()
else:
    transaction()
result["after"] = c_environ()
result["pid"] = os.getpid()
print(json.dumps(result))
"#;

struct Run {
    main_thread: bool,
    /// Variables added or changed by the transaction (`NAME=value`).
    added: Vec<String>,
    /// Variables gone or changed.
    removed: Vec<String>,
    pid: u64,
}

fn install(h: &HostRoot, script: &std::path::Path, pkg: &str, where_: &str, ctx: &str) -> Run {
    let repo = TestRepo::shared();
    let out = h
        .command("/usr/bin/python3")
        .arg(script)
        .arg(&h.root)
        .arg(repo.rpm(pkg, "1.0"))
        .args([where_, ctx])
        .output()
        .expect("run /usr/bin/python3 (apt-get install python3-rpm)");
    assert!(out.status.success(), "host {pkg}: {}", text(&out));
    let line = String::from_utf8_lossy(&out.stdout);
    let v: Value = serde_json::from_str(line.trim())
        .unwrap_or_else(|e| panic!("host output {e}: {}", text(&out)));
    assert_eq!(v["problems"], serde_json::json!([]), "{}", text(&out));
    let list = |k: &str| -> Vec<String> {
        v[k].as_array()
            .expect("env list")
            .iter()
            .map(|s| s.as_str().unwrap_or_default().to_owned())
            .collect()
    };
    let (before, after) = (list("before"), list("after"));
    Run {
        main_thread: v["main_thread"].as_bool().expect("main_thread"),
        added: after
            .iter()
            .filter(|e| !before.contains(e))
            .cloned()
            .collect(),
        removed: before
            .iter()
            .filter(|e| !after.contains(e))
            .cloned()
            .collect(),
        pid: v["pid"].as_u64().expect("pid"),
    }
}

#[test]
fn the_plugin_leaves_a_threaded_host_s_environment_alone_and_still_records() {
    let brokers = kafka_brokers();
    let env = EmitEnv::new(&brokers, "hooks-threaded");
    create_topics(&brokers, &[&env.changes_topic, &env.inventory_topic]);
    let h = HostRoot::new(
        env,
        Hooks {
            rpm_plugin: true,
            dnf_plugin: false,
        },
    );
    let script = h.env.dir.path().join("threaded_host.py");
    std::fs::write(&script, HOST).expect("write host script");

    // PackageKit's case: a worker thread, no dnf.
    let worker = install(&h, &script, "pa", "worker", "none");
    assert!(!worker.main_thread);
    assert_eq!(
        (worker.added, worker.removed),
        (vec![], vec![]),
        "worker thread, no dnf context: the environment is untouched"
    );
    // A plain librpm host on its main thread, no dnf.
    let main = install(&h, &script, "pb", "main", "none");
    assert!(main.main_thread);
    assert_eq!(
        (main.added, main.removed),
        (vec![], vec![]),
        "main thread, no dnf context: nobody needs a marker, none is set"
    );
    // dnf's case: the main thread, dnf's context naming this process.
    let dnf = install(&h, &script, "pc", "main", "dnf");
    assert!(dnf.main_thread);
    assert_eq!(dnf.removed, Vec::<String>::new());
    assert_eq!(dnf.added.len(), 1, "{:?}", dnf.added);
    let marker = dnf.added[0]
        .strip_prefix("PKGSTREAM_RPM_RECORDED=")
        .unwrap_or_else(|| panic!("only the marker for the dnf plugin: {:?}", dnf.added));
    let fields: Vec<&str> = marker.split(' ').collect();
    assert_eq!(fields.len(), 4, "{marker}");
    assert_eq!(
        (fields[0], fields[2], fields[3]),
        (dnf.pid.to_string().as_str(), "1", "ok"),
        "{marker}"
    );
    // dnf's context but a worker thread: still no setenv.
    let dnf_worker = install(&h, &script, "pd", "worker", "dnf");
    assert!(!dnf_worker.main_thread);
    assert_eq!(
        (dnf_worker.added, dnf_worker.removed),
        (vec![], vec![]),
        "worker thread with dnf context: never setenv off the main thread"
    );

    // The emitter got what it needed every time.
    let events = read_changes(&h.env, 4);
    let mut got: Vec<(String, String, Option<i64>, Option<String>)> = events
        .iter()
        .map(|e| {
            (
                e.seen.nvr.clone(),
                e.seen.source.clone(),
                e.history_id,
                e.command_line.clone(),
            )
        })
        .collect();
    got.sort();
    let dnf_ctx = |nvr: &str| {
        (
            nvr.to_owned(),
            "DNF".to_owned(),
            Some(42),
            Some("threaded-host install".to_owned()),
        )
    };
    assert_eq!(got.len(), 4, "{events:#?}");
    assert_eq!(
        (&got[0].0, &got[0].1, got[0].2),
        (&"pa-1.0-1".to_owned(), &"RPM".to_owned(), None)
    );
    assert_eq!(
        (&got[1].0, &got[1].1, got[1].2),
        (&"pb-1.0-1".to_owned(), &"RPM".to_owned(), None)
    );
    assert_eq!(got[2], dnf_ctx("pc-1.0-1"));
    assert_eq!(got[3], dnf_ctx("pd-1.0-1"));
    assert!(events.iter().all(|e| e.seen.action == "INSTALL"));
    assert_one_per_change(&events);
}
