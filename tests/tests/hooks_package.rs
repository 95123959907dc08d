//! The packaging is tested too: `producer/packaging/pkgstream.spec` is
//! built with the real rpmbuild from the binaries cargo built, installed with
//! `rpm` into an empty root, verified (`rpm -V`, `systemd-analyze verify` of
//! the units), and then the *installed* rpm plugin, macro file, dnf plugin
//! and `pkgstream-emit` drive a real dnf/rpm session and an inventory
//! snapshot, read back from the real Kafka.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use pkgstream_tests::hooks::*;
use pkgstream_tests::*;

fn run(what: &str, cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(out.status.success(), "{what}: {}", text(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn strip(from: &Path, to: &Path) {
    run("strip", Command::new("strip").arg("-o").arg(to).arg(from));
}

fn find_rpm(dir: &Path, prefix: &str) -> PathBuf {
    let arch_dirs = std::fs::read_dir(dir).expect("RPMS dir");
    for d in arch_dirs.flatten() {
        for f in std::fs::read_dir(d.path()).expect("arch dir").flatten() {
            let name = f.file_name().to_string_lossy().into_owned();
            if name.starts_with(prefix)
                && name[prefix.len()..].starts_with(|c: char| c.is_ascii_digit())
            {
                return f.path();
            }
        }
    }
    panic!("no {prefix}*.rpm under {}", dir.display());
}

#[test]
fn the_host_rpm_builds_installs_verifies_and_its_installed_hooks_work() {
    let work = tempfile::tempdir().expect("tempdir");
    let stage = work.path().join("stage");
    std::fs::create_dir_all(&stage).expect("mkdir");
    strip(&binary("pkgstream-emit"), &stage.join("pkgstream-emit"));
    strip(&plugin_so(), &stage.join("pkgstream.so"));

    let top = work.path().join("rpmbuild");
    run(
        "rpmbuild the spec",
        Command::new("rpmbuild")
            .args(["-bb", "--quiet"])
            .arg("--define")
            .arg(format!("_topdir {}", top.display()))
            .arg("--define")
            .arg(format!("pkgstream_src {}", repo_root().display()))
            .arg("--define")
            .arg(format!("pkgstream_stage {}", stage.display()))
            .arg(repo_root().join("producer/packaging/pkgstream.spec"))
            .env("HOME", work.path()),
    );
    let main_rpm = find_rpm(&top.join("RPMS"), "pkgstream-");
    let yum_rpm = find_rpm(&top.join("RPMS"), "pkgstream-yum-");
    let files = run(
        "rpm -qlp",
        Command::new("rpm")
            .args(["-qlp"])
            .arg(&main_rpm)
            .env("HOME", work.path()),
    );
    let files: Vec<&str> = files.lines().collect();
    let plugindir = run(
        "rpm --eval",
        Command::new("rpm").args(["--eval", "%{__plugindir}"]),
    )
    .trim()
    .to_owned();
    let rpmconfigdir = run(
        "rpm --eval",
        Command::new("rpm").args(["--eval", "%{_rpmconfigdir}"]),
    )
    .trim()
    .to_owned();
    for must in [
        "/usr/bin/pkgstream-emit".to_owned(),
        format!("{plugindir}/pkgstream.so"),
        format!("{rpmconfigdir}/macros.d/macros.transaction_pkgstream"),
        "/etc/dnf/plugins/pkgstream.conf".into(),
        "/etc/pkgstream/emit.toml".into(),
        "/usr/lib/systemd/system/pkgstream-flush.service".into(),
        "/usr/lib/systemd/system/pkgstream-flush.timer".into(),
        "/usr/lib/systemd/system/pkgstream-inventory.service".into(),
        "/usr/lib/systemd/system/pkgstream-inventory.timer".into(),
        "/var/spool/pkgstream".into(),
    ] {
        assert!(
            files.contains(&must.as_str()),
            "{must} not in the package: {files:#?}"
        );
    }
    let dnf_plugin = files
        .iter()
        .find(|f| f.ends_with("/dnf-plugins/pkgstream.py"))
        .unwrap_or_else(|| panic!("no dnf plugin in {files:#?}"));
    let yum_files = run(
        "rpm -qlp yum",
        Command::new("rpm")
            .args(["-qlp"])
            .arg(&yum_rpm)
            .env("HOME", work.path()),
    );
    assert_eq!(
        yum_files.lines().collect::<Vec<_>>(),
        [
            "/etc/yum/pluginconf.d/pkgstream.conf",
            "/usr/lib/yum-plugins/pkgstream.py"
        ]
    );

    // Install with rpm into an empty root and verify every file.
    let pkgroot = work.path().join("pkgroot");
    std::fs::create_dir_all(&pkgroot).expect("mkdir");
    let rpm_in = |args: &[&str]| {
        let mut c = Command::new("rpm");
        c.arg("--root")
            .arg(&pkgroot)
            .args(["--dbpath", "/var/lib/rpm"])
            .args(args)
            .env("HOME", work.path());
        c
    };
    run(
        "rpm -i the package",
        rpm_in(&["-i", "--nodeps"]).arg(&main_rpm).arg(&yum_rpm),
    );
    // --nodeps: the empty root has no rpm package to satisfy `Requires: rpm`; every file is still checked.
    run(
        "rpm -V",
        &mut rpm_in(&["-V", "--nodeps", "pkgstream", "pkgstream-yum"]),
    );
    let size: u64 = run(
        "rpm -q size",
        &mut rpm_in(&["-q", "--qf", "%{LONGSIZE}", "pkgstream"]),
    )
    .trim()
    .parse()
    .expect("size");
    println!(
        "pkgstream package (debug build, stripped): {:.1} MB installed",
        size as f64 / 1e6
    );

    // The units pass systemd's own checks (host units copied in for the targets they name).
    let unitdir = pkgroot.join("usr/lib/systemd/system");
    for entry in std::fs::read_dir("/lib/systemd/system")
        .expect("host units")
        .flatten()
    {
        let to = unitdir.join(entry.file_name());
        if !to.exists() && entry.path().is_file() {
            let _ = std::fs::copy(entry.path(), to);
        }
    }
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(format!("--root={}", pkgroot.display()))
        .args([
            "pkgstream-flush.service",
            "pkgstream-flush.timer",
            "pkgstream-inventory.service",
            "pkgstream-inventory.timer",
        ])
        .output()
        .expect("systemd-analyze (apt-get install systemd)");
    assert!(
        out.status.success() && out.stderr.is_empty() && out.stdout.is_empty(),
        "units: {}",
        text(&out)
    );

    // The installed hooks at work: a dnf install and a plain rpm -e.
    let brokers = kafka_brokers();
    let env = EmitEnv::new(&brokers, "hooks-package");
    create_topics(&brokers, &[&env.changes_topic, &env.inventory_topic]);
    let mut h = HostRoot::new(
        env,
        Hooks {
            rpm_plugin: true,
            dnf_plugin: true,
        },
    );
    let installed_plugindir = pkgroot.join(plugindir.trim_start_matches('/'));
    let macros = pkgroot
        .join(rpmconfigdir.trim_start_matches('/'))
        .join("macros.d/macros.transaction_pkgstream");
    let dnf_dir = pkgroot
        .join(dnf_plugin.trim_start_matches('/'))
        .parent()
        .expect("dnf plugin dir")
        .to_path_buf();
    h.use_installed(&pkgroot, &installed_plugindir, &macros, &dnf_dir);
    let out = h.dnf(&["install", "pa-1.0", "pb"]);
    assert!(out.status.success(), "{}", text(&out));
    let out = h.rpm(&["-e", "--nodeps", "pb"]);
    assert!(out.status.success(), "{}", text(&out));

    // And an inventory snapshot of that root by the installed emitter.
    let mut inv = h.env.command(&[
        "inventory",
        "--root",
        &h.root.display().to_string(),
        "--dbpath",
        "/var/lib/rpm",
    ]);
    inv.env("HOME", work.path());
    let inv = inv.output().expect("inventory");
    assert!(inv.status.success(), "inventory: {}", text(&inv));

    let events = read_changes(&h.env, 3);
    let mut got: Vec<Seen> = events.iter().map(|e| e.seen.clone()).collect();
    got[0..2].sort();
    assert_eq!(
        got,
        [
            seen("DNF", "INSTALL", "pa-1.0-1", None),
            seen("DNF", "INSTALL", "pb-1.0-1", None),
            seen("RPM", "REMOVE", "pb-1.0-1", None)
        ]
    );
    assert!(events[..2]
        .iter()
        .all(|e| e.history_id.is_some() && e.repo.as_deref() == Some("local")));
    assert_one_per_change(&events);

    let snapshots = consume_all(
        &brokers,
        &h.env.inventory_topic,
        1,
        Duration::from_secs(3),
        Duration::from_secs(60),
    );
    assert_eq!(snapshots.len(), 1);
    let s = pkgstream_schemas::decode_snapshot(&snapshots[0].value).expect("snapshot decodes");
    let pkgs: Vec<String> = s
        .packages
        .iter()
        .map(|p| format!("{}-{}-{}.{}", p.name, p.version, p.release, p.arch))
        .collect();
    assert_eq!(pkgs, ["pa-1.0-1.noarch"]);
    let p = &s.packages[0];
    assert_eq!(
        (p.vendor.as_deref(), p.size),
        (Some("Pkgstream Tests"), Some(4))
    );
    assert!(
        p.digest
            .as_deref()
            .is_some_and(|d| d.starts_with("sha256:"))
            && p.install_time.is_some()
            && p.buildtime.is_some(),
        "{p:?}"
    );
    assert_eq!(&*s.host.machine_id, MACHINE_ID);
}
