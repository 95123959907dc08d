//! End-to-end cost of pkgstream's host hooks, and the host agent's size.
//!
//! 1. Builds 200 tiny RPMs (one spec, 200 subpackages) and a createrepo_c
//!    repository, then times the real `dnf install` of all 200 into a fresh
//!    install root, alternating runs without hooks and with both hooks (the
//!    rpm plugin `pkgstream.so` and the dnf plugin), release builds. The
//!    difference of the medians is the time the hooks add to a
//!    200-package transaction (goal: < 50 ms).
//! 2. Times what the rpm plugin runs per transaction on its own:
//!    `pkgstream-emit record --spawn-flush` with the 200 events.
//! 3. Sums the on-disk size of what the host package installs (stripped
//!    binary and plugin, python plugins, units, macros, config; goal:
//!    < 10 MB).
//!
//! Kafka is pointed at a closed port with a 1 s flush timeout, so the
//! background flush each hook starts gives up at once and the figures are
//! the hooks' own. Needs rpmbuild, createrepo_c and dnf. Runs
//! `cargo build --release` for the binary and the plugin first.
//! `cargo bench -p pkgstream-benches --bench hooks_overhead`; figures in
//! BENCHMARKS.md.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const PACKAGES: usize = 200;
const RUNS: usize = 7;

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("target"))
}

fn check(what: &str, cmd: &mut Command) -> std::process::Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        out.status.success(),
        "{what}: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn build_repo(dir: &Path) -> PathBuf {
    let top = dir.join("rpmbuild");
    std::fs::create_dir_all(top.join("SPECS")).expect("mkdir");
    let mut spec = String::from("Name: bulk\nVersion: 1.0\nRelease: 1\nSummary: bench\nLicense: MIT\nBuildArch: noarch\nVendor: Pkgstream Bench\n%description\nbench\n");
    for i in 0..PACKAGES {
        spec.push_str(&format!("%package -n bulk-{i:03}\nSummary: bench {i}\n%description -n bulk-{i:03}\nbench {i}\n%files -n bulk-{i:03}\n/usr/share/bulk/{i:03}\n"));
    }
    spec.push_str("%install\nmkdir -p %{buildroot}/usr/share/bulk\nfor i in $(seq -w 0 199); do echo $i > %{buildroot}/usr/share/bulk/$i; done\n");
    let path = top.join("SPECS/bulk.spec");
    std::fs::write(&path, spec).expect("write spec");
    check(
        "rpmbuild",
        Command::new("rpmbuild")
            .args(["-bb", "--quiet", "--define"])
            .arg(format!("_topdir {}", top.display()))
            .args(["--define", "_build_id_links none"])
            .arg(&path)
            .env("HOME", dir),
    );
    let repo = top.join("RPMS/noarch");
    check(
        "createrepo_c",
        Command::new("createrepo_c").arg("--quiet").arg(&repo),
    );
    repo
}

struct Setup {
    dir: PathBuf,
    emit: PathBuf,
    plugindir: PathBuf,
}

impl Setup {
    /// One `dnf install` of all packages into a fresh root; returns its wall time.
    fn dnf_install(&self, run: usize, hooks: bool) -> Duration {
        let base = self.dir.join(format!(
            "run-{run}-{}",
            if hooks { "hooks" } else { "plain" }
        ));
        let home = base.join("home");
        let root = base.join("root");
        std::fs::create_dir_all(&home).expect("mkdir");
        std::fs::create_dir_all(&root).expect("mkdir");
        let mut macros = format!(
            "%_dbpath /var/lib/rpm\n%__plugindir {}\n",
            self.plugindir.display()
        );
        if hooks {
            macros.push_str("%__transaction_pkgstream %{__plugindir}/pkgstream.so\n");
        }
        std::fs::write(home.join(".rpmmacros"), macros).expect("macros");
        let plugins = if hooks {
            repo_root().join("producer/dnf")
        } else {
            self.dir.join("no-plugins")
        };
        let pkgs: Vec<String> = (0..PACKAGES).map(|i| format!("bulk-{i:03}")).collect();
        let started = Instant::now();
        check(
            "dnf install",
            Command::new("dnf")
                .args(["-y", "-q", "-c"])
                .arg(self.dir.join("dnf.conf"))
                .arg(format!("--installroot={}", root.display()))
                .arg("--releasever=1")
                .arg(format!("--setopt=pluginpath={}", plugins.display()))
                .arg(format!("--setopt=pluginconfpath={}", plugins.display()))
                .arg("install")
                .args(&pkgs)
                .env("HOME", &home)
                .env("PKGSTREAM_EMIT", &self.emit)
                .envs(emit_env(&base)),
        );
        let took = started.elapsed();
        if hooks {
            let status = check(
                "status",
                Command::new(&self.emit).arg("status").envs(emit_env(&base)),
            );
            assert!(
                !String::from_utf8_lossy(&status.stdout).contains(": 0 bytes of change"),
                "the hooks recorded nothing"
            );
        }
        took
    }
}

fn emit_env(base: &Path) -> Vec<(String, String)> {
    let etc = base.join("etc");
    let _ = std::fs::create_dir_all(&etc);
    let _ = std::fs::write(etc.join("machine-id"), "0123456789abcdef0123456789abcdef\n");
    let _ = std::fs::write(etc.join("os-release"), "ID=bench\nVERSION_ID=1\n");
    let _ = std::fs::write(etc.join("hostname"), "bench\n");
    let _ = std::fs::write(etc.join("emit.toml"), "");
    vec![
        (
            "PKGSTREAM_EMIT__KAFKA__BROKERS".into(),
            "127.0.0.1:1".into(),
        ),
        ("PKGSTREAM_EMIT__FLUSH__TIMEOUT_SECS".into(), "1".into()),
        (
            "PKGSTREAM_EMIT__SPOOL__DIR".into(),
            base.join("spool").display().to_string(),
        ),
        (
            "PKGSTREAM_EMIT__HOST__MACHINE_ID_FILE".into(),
            etc.join("machine-id").display().to_string(),
        ),
        (
            "PKGSTREAM_EMIT__HOST__OS_RELEASE_FILE".into(),
            etc.join("os-release").display().to_string(),
        ),
        (
            "PKGSTREAM_EMIT__HOST__HOSTNAME_FILE".into(),
            etc.join("hostname").display().to_string(),
        ),
        (
            "PKGSTREAM_EMIT_CONFIG".into(),
            etc.join("emit.toml").display().to_string(),
        ),
    ]
}

fn record_alone(emit: &Path, dir: &Path) -> Duration {
    let line = |i: usize| {
        format!(
            r#"{{"kind":"change","source":"dnf","action":"install","event_time":1764000000,"package":{{"name":"bulk-{i:03}","version":"1.0","release":"1","arch":"noarch","repo":"local","vendor":"Pkgstream Bench","buildtime":1764000000,"install_time":1764000000,"size":4,"digest":"sha256:{i:064x}"}},"transaction":{{"rpm_tid":1764000000,"history_id":1,"command_line":"dnf -y install bulk-*","login_user":"root","start_time":1764000000}}}}"#
        )
    };
    let input: String = (0..PACKAGES).map(|i| line(i) + "\n").collect();
    let base = dir.join("record-alone");
    let mut times = Vec::new();
    for _ in 0..23 {
        let started = Instant::now();
        let mut child = Command::new(emit)
            .args(["record", "--spawn-flush"])
            .envs(emit_env(&base))
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(input.as_bytes())
            .expect("write");
        assert!(child.wait().expect("wait").success());
        times.push(started.elapsed());
    }
    median(times[3..].to_vec())
}

fn stripped_size(path: &Path, dir: &Path) -> u64 {
    let to = dir.join(format!(
        "stripped-{}",
        path.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    ));
    check("strip", Command::new("strip").arg("-o").arg(&to).arg(path));
    std::fs::metadata(&to).map(|m| m.len()).unwrap_or(0)
}

fn main() {
    // `cargo bench` passes --bench; a filter that does not name us skips the run.
    if std::env::args()
        .skip(1)
        .any(|a| !a.starts_with('-') && !"hooks_overhead".contains(a.as_str()))
    {
        return;
    }
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    check(
        "cargo build --release (emitter)",
        Command::new(&cargo)
            .args(["build", "--release", "-p", "pkgstream-producer", "--bins"])
            .current_dir(repo_root()),
    );
    check(
        "cargo build --release (rpm plugin)",
        Command::new(&cargo)
            .args(["build", "--release", "-p", "pkgstream-rpm-plugin", "--lib"])
            .current_dir(repo_root()),
    );
    let release = target_dir().join("release");
    let emit = release.join("pkgstream-emit");
    let so = release.join("libpkgstream_rpm_plugin.so");

    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().to_path_buf();
    let plugindir = dir.join("rpm-plugins");
    std::fs::create_dir_all(&plugindir).expect("mkdir");
    std::fs::create_dir_all(dir.join("no-plugins")).expect("mkdir");
    std::fs::copy(&so, plugindir.join("pkgstream.so")).expect("copy plugin");
    let started = Instant::now();
    let repo = build_repo(&dir);
    println!(
        "built {PACKAGES} packages and the repository in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    std::fs::write(dir.join("dnf.conf"), format!("[main]\ngpgcheck=0\nreposdir=/dev/null\ncachedir={}\n[local]\nname=local\nbaseurl=file://{}\ngpgcheck=0\n", dir.join("cache").display(), repo.display())).expect("dnf.conf");
    let setup = Setup {
        dir: dir.clone(),
        emit: emit.clone(),
        plugindir,
    };

    // Warm the metadata cache and page cache once per variant, untimed.
    setup.dnf_install(100, false);
    setup.dnf_install(100, true);
    let (mut plain, mut hooked) = (Vec::new(), Vec::new());
    for run in 0..RUNS {
        plain.push(setup.dnf_install(run, false));
        hooked.push(setup.dnf_install(run, true));
    }
    let (p, h) = (median(plain.clone()), median(hooked.clone()));
    println!(
        "dnf install of {PACKAGES} packages, {RUNS} runs each (ms): without hooks {:?}",
        plain.iter().map(|d| ms(*d).round()).collect::<Vec<_>>()
    );
    println!(
        "dnf install of {PACKAGES} packages, {RUNS} runs each (ms): with hooks    {:?}",
        hooked.iter().map(|d| ms(*d).round()).collect::<Vec<_>>()
    );
    println!(
        "median without hooks {:.0} ms, with hooks {:.0} ms: the hooks add {:.0} ms (goal < 50 ms)",
        ms(p),
        ms(h),
        ms(h) - ms(p)
    );
    let alone = record_alone(&emit, &dir);
    println!("pkgstream-emit record --spawn-flush of {PACKAGES} events, as the rpm plugin runs it: median {:.1} ms (20 runs)", ms(alone));

    let bin = stripped_size(&emit, &dir);
    let plugin = stripped_size(&so, &dir);
    let root = repo_root();
    let others: u64 = [
        "producer/dnf/pkgstream.py",
        "producer/dnf/pkgstream.conf",
        "producer/yum/pkgstream.py",
        "producer/yum/pkgstream.conf",
        "producer/rpm-macros/macros.transaction_pkgstream",
        "producer/systemd/pkgstream-flush.service",
        "producer/systemd/pkgstream-flush.timer",
        "producer/systemd/pkgstream-inventory.service",
        "producer/systemd/pkgstream-inventory.timer",
        "config/emit.example.toml",
    ]
    .iter()
    .map(|f| {
        std::fs::metadata(root.join(f))
            .map(|m| m.len())
            .unwrap_or(0)
    })
    .sum();
    let total = bin + plugin + others;
    println!(
        "host agent on disk (stripped release): pkgstream-emit {:.2} MB + pkgstream.so {:.2} MB + plugins/units/config {:.3} MB = {:.2} MB (goal < 10 MB)",
        bin as f64 / 1e6,
        plugin as f64 / 1e6,
        others as f64 / 1e6,
        total as f64 / 1e6
    );
}
