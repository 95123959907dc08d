//! Helpers for the host hook tests (`tests/tests/hooks_*.rs`): tiny RPMs
//! built with the real `rpmbuild`, a `createrepo_c` repository, and a host
//! root where the real `dnf` and `rpm` run with pkgstream's rpm plugin
//! (`pkgstream.so`) and dnf plugin installed, recording into an [`EmitEnv`]
//! spool that ships to the real Kafka.
//!
//! Debian's rpm puts `%_dbpath` under `~/.rpmdb` and `%__plugindir` where no
//! plugin is: every root gets its own `HOME` with a `.rpmmacros` that sets
//! both (and `%__transaction_pkgstream` when the rpm plugin is wanted), which
//! both `rpm` and dnf's python rpm read.

#![allow(clippy::expect_used)] // test set-up: a failed step is a failed test, with its message

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

use crate::{binary, EmitEnv};

/// Machine id of every [`EmitEnv`] host.
pub const MACHINE_ID: &str = "0123456789abcdef0123456789abcdef";

/// One tiny package to build.
pub struct PkgSpec {
    /// NAME.
    pub name: String,
    /// VERSION.
    pub version: String,
    /// Extra preamble lines (`Obsoletes:`, `Provides:`, ...).
    pub preamble: String,
    /// Extra sections (scriptlets).
    pub sections: String,
}

impl PkgSpec {
    /// A plain noarch package `name-version-1` with one file.
    pub fn new(name: &str, version: &str) -> PkgSpec {
        PkgSpec {
            name: name.into(),
            version: version.into(),
            preamble: String::new(),
            sections: String::new(),
        }
    }

    fn text(&self) -> String {
        format!(
            "Name: {n}\nVersion: {v}\nRelease: 1\nSummary: pkgstream test package\nLicense: MIT\nBuildArch: noarch\nVendor: Pkgstream Tests\n{pre}\n%description\npkgstream hook test package.\n\n%install\nmkdir -p %{{buildroot}}/usr/share/{n}\necho {v} > %{{buildroot}}/usr/share/{n}/version\n\n%files\n/usr/share/{n}/version\n{sec}\n",
            n = self.name,
            v = self.version,
            pre = self.preamble,
            sec = self.sections
        )
    }
}

/// Builds `specs` with rpmbuild into `dir/RPMS/noarch`, then runs
/// `createrepo_c` on it. Returns the repository directory.
pub fn build_repo(dir: &Path, specs: &[PkgSpec]) -> PathBuf {
    let top = dir.join("rpmbuild");
    std::fs::create_dir_all(top.join("SPECS")).expect("mkdir");
    for spec in specs {
        let path = top
            .join("SPECS")
            .join(format!("{}-{}.spec", spec.name, spec.version));
        std::fs::write(&path, spec.text()).expect("write spec");
        let out = Command::new("rpmbuild")
            .arg("-bb")
            .arg("--quiet")
            .arg("--define")
            .arg(format!("_topdir {}", top.display()))
            .arg("--define")
            .arg("_build_id_links none")
            .arg(&path)
            .env("HOME", dir)
            .output()
            .expect("rpmbuild (apt-get install rpm; scripts/bootstrap.sh does)");
        assert!(
            out.status.success(),
            "rpmbuild {}: {}",
            path.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let repo = top.join("RPMS").join("noarch");
    let out = Command::new("createrepo_c")
        .arg("--quiet")
        .arg(&repo)
        .output()
        .expect("createrepo_c (apt-get install createrepo-c)");
    assert!(
        out.status.success(),
        "createrepo_c: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    repo
}

/// The test packages shared by the hook tests, built once per test binary.
pub struct TestRepo {
    _dir: tempfile::TempDir,
    /// The repository (and the .rpm files).
    pub path: PathBuf,
}

impl TestRepo {
    /// `pa` 1.0/2.0/3.0, `pb`, `pc`, `pd`, `pold` 1.0, `pnew` 1.0
    /// (obsoletes `pold`), and `pfail` 1.0 whose `%pre` (lua) fails the install.
    pub fn shared() -> &'static TestRepo {
        static REPO: OnceLock<TestRepo> = OnceLock::new();
        REPO.get_or_init(|| {
            let dir = tempfile::tempdir().expect("tempdir");
            let mut specs = vec![
                PkgSpec::new("pa", "1.0"),
                PkgSpec::new("pa", "2.0"),
                PkgSpec::new("pa", "3.0"),
                PkgSpec::new("pb", "1.0"),
                PkgSpec::new("pc", "1.0"),
                PkgSpec::new("pd", "1.0"),
                PkgSpec::new("pold", "1.0"),
            ];
            let mut pnew = PkgSpec::new("pnew", "1.0");
            pnew.preamble = "Obsoletes: pold < 2\nProvides: pold = 2".into();
            specs.push(pnew);
            let mut pfail = PkgSpec::new("pfail", "1.0");
            pfail.sections =
                "%pre -p <lua>\nerror(\"pkgstream test: this package refuses to install\")\n"
                    .into();
            specs.push(pfail);
            let path = build_repo(dir.path(), &specs);
            TestRepo { _dir: dir, path }
        })
    }

    /// Path of `name-version-1.noarch.rpm`.
    pub fn rpm(&self, name: &str, version: &str) -> PathBuf {
        self.path.join(format!("{name}-{version}-1.noarch.rpm"))
    }
}

/// Path of the built rpm plugin (`libpkgstream_rpm_plugin.so`): the newest
/// of `target/<profile>/` (a `cargo build`) and its `deps/` (built as a
/// dependency of this crate by `cargo test`).
pub fn plugin_so() -> PathBuf {
    let emit = binary("pkgstream-emit");
    let dir = emit.parent().expect("target dir");
    let candidates = [
        dir.join("libpkgstream_rpm_plugin.so"),
        dir.join("deps").join("libpkgstream_rpm_plugin.so"),
    ];
    candidates
        .into_iter()
        .filter_map(|p| Some((std::fs::metadata(&p).ok()?.modified().ok()?, p)))
        .max()
        .map(|(_, p)| p)
        .unwrap_or_else(|| {
            panic!(
                "libpkgstream_rpm_plugin.so is missing under {}: build the workspace first",
                dir.display()
            )
        })
}

/// The dnf plugin's source folder (`producer/dnf`).
pub fn dnf_plugin_dir() -> PathBuf {
    repo_root().join("producer/dnf")
}

/// The repository root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("repo root")
        .to_path_buf()
}

/// Which hooks a [`HostRoot`] has installed.
#[derive(Clone, Copy, Debug)]
pub struct Hooks {
    /// The rpm plugin is configured (`%__transaction_pkgstream`).
    pub rpm_plugin: bool,
    /// The dnf plugin is on dnf's plugin path.
    pub dnf_plugin: bool,
}

/// An empty install root with the hooks, and the spool/Kafka they report to.
pub struct HostRoot {
    /// Spool, topics, host identity.
    pub env: EmitEnv,
    /// The install root.
    pub root: PathBuf,
    home: PathBuf,
    plugindir: PathBuf,
    hooks: Hooks,
    /// Extra environment for dnf and rpm (e.g. `PKGSTREAM_EMIT`).
    pub extra_env: Vec<(String, String)>,
    /// dnf `pluginpath` and `pluginconfpath` instead of `producer/dnf`.
    pub dnf_plugin_paths: Option<(PathBuf, PathBuf)>,
}

impl HostRoot {
    /// A new root reporting through `env`.
    pub fn new(env: EmitEnv, hooks: Hooks) -> HostRoot {
        let base = env.dir.path().to_path_buf();
        let root = base.join("root");
        let home = base.join("home");
        let plugindir = base.join("rpm-plugins");
        for d in [&root, &home, &plugindir] {
            std::fs::create_dir_all(d).expect("mkdir");
        }
        std::fs::copy(plugin_so(), plugindir.join("pkgstream.so")).expect("copy plugin");
        let mut macros = format!(
            "%_dbpath /var/lib/rpm\n%__plugindir {}\n",
            plugindir.display()
        );
        if hooks.rpm_plugin {
            macros.push_str("%__transaction_pkgstream %{__plugindir}/pkgstream.so\n");
        }
        std::fs::write(home.join(".rpmmacros"), macros).expect("write .rpmmacros");
        let repo = TestRepo::shared();
        std::fs::write(
            base.join("dnf.conf"),
            format!("[main]\ngpgcheck=0\nreposdir=/dev/null\ncachedir={}\nkeepcache=0\n\n[local]\nname=local\nbaseurl=file://{}\ngpgcheck=0\nmetadata_expire=0\n", base.join("cache").display(), repo.path.display()),
        )
        .expect("write dnf.conf");
        std::fs::create_dir_all(base.join("no-plugins")).expect("mkdir");
        HostRoot {
            env,
            root,
            home,
            plugindir,
            hooks,
            extra_env: vec![(
                "PKGSTREAM_EMIT".into(),
                binary("pkgstream-emit").display().to_string(),
            )],
            dnf_plugin_paths: None,
        }
    }

    fn with_env(&self, mut cmd: Command) -> Command {
        cmd.env("HOME", &self.home)
            .env_remove("PKGSTREAM_DNF_CONTEXT")
            .env_remove("PKGSTREAM_RPM_RECORDED")
            .env_remove("PKGSTREAM_EMIT_CONFIG")
            .env_remove("SUDO_USER");
        cmd.envs(self.env.vars.iter().map(|(k, v)| (k, v)));
        cmd.envs(self.extra_env.iter().map(|(k, v)| (k, v)));
        cmd
    }

    /// `dnf -y --installroot ... ARGS` with the hooks.
    pub fn dnf(&self, args: &[&str]) -> Output {
        let base = self.env.dir.path();
        let (plugins, conf) = match (&self.dnf_plugin_paths, self.hooks.dnf_plugin) {
            (Some((path, conf)), true) => (path.clone(), conf.clone()),
            (None, true) => (dnf_plugin_dir(), dnf_plugin_dir()),
            (_, false) => (base.join("no-plugins"), base.join("no-plugins")),
        };
        let mut cmd = self.with_env(Command::new("dnf"));
        cmd.arg("-y")
            .arg("-c")
            .arg(base.join("dnf.conf"))
            .arg(format!("--installroot={}", self.root.display()))
            .arg("--releasever=1")
            .arg(format!("--setopt=pluginpath={}", plugins.display()))
            .arg(format!("--setopt=pluginconfpath={}", conf.display()))
            .arg("--setopt=install_weak_deps=False")
            .args(args);
        cmd.output().expect("run dnf (apt-get install dnf)")
    }

    /// `rpm --root ... ARGS` with the hooks (plugindir and dbpath from `~/.rpmmacros`).
    pub fn rpm(&self, args: &[&str]) -> Output {
        let mut cmd = self.with_env(Command::new("rpm"));
        cmd.arg("--root").arg(&self.root).args(args);
        cmd.output().expect("run rpm")
    }

    /// `program` with this root's hook environment (`HOME` with its
    /// `.rpmmacros`, the spool, `PKGSTREAM_EMIT`): another host of the rpm
    /// plugin than `rpm` and `dnf`, e.g. a python program using librpm.
    pub fn command(&self, program: &str) -> Command {
        self.with_env(Command::new(program))
    }

    /// The rpm plugin directory of this root.
    pub fn plugindir(&self) -> &Path {
        &self.plugindir
    }

    /// Uses the hooks as installed by the pkgstream RPM under `pkgroot`:
    /// its `pkgstream.so` (plugin dir `plugindir`), its rpm macro file, its
    /// dnf plugin and configuration, and its `pkgstream-emit`.
    pub fn use_installed(
        &mut self,
        pkgroot: &Path,
        plugindir: &Path,
        macros: &Path,
        dnf_plugindir: &Path,
    ) {
        let macro_text = std::fs::read_to_string(macros).expect("installed macros file");
        std::fs::write(
            self.home.join(".rpmmacros"),
            format!(
                "%_dbpath /var/lib/rpm\n%__plugindir {}\n{macro_text}",
                plugindir.display()
            ),
        )
        .expect("write .rpmmacros");
        self.plugindir = plugindir.to_path_buf();
        self.dnf_plugin_paths =
            Some((dnf_plugindir.to_path_buf(), pkgroot.join("etc/dnf/plugins")));
        self.extra_env.retain(|(k, _)| k != "PKGSTREAM_EMIT");
        self.extra_env.push((
            "PKGSTREAM_EMIT".into(),
            pkgroot.join("usr/bin/pkgstream-emit").display().to_string(),
        ));
    }

    /// `INSTALLTID` of installed package `name` in this root.
    pub fn installtid(&self, name: &str) -> i64 {
        let out = self.rpm(&["-q", "--qf", "%{INSTALLTID}", name]);
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .unwrap_or_else(|_| {
                panic!(
                    "no INSTALLTID for {name}: {}",
                    String::from_utf8_lossy(&out.stderr)
                )
            })
    }
}

/// A decoded change event, reduced to what the hook tests compare.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Seen {
    /// `DNF`, `RPM`, ...
    pub source: String,
    /// `INSTALL`, ...
    pub action: String,
    /// `name-version-release`.
    pub nvr: String,
    /// The replaced package's `name-version-release`.
    pub replaced: Option<String>,
}

/// Shorthand for an expected [`Seen`].
pub fn seen(source: &str, action: &str, nvr: &str, replaced: Option<&str>) -> Seen {
    Seen {
        source: source.into(),
        action: action.into(),
        nvr: nvr.into(),
        replaced: replaced.map(Into::into),
    }
}

/// A decoded change event, with what the hook tests look at.
#[derive(Clone, Debug)]
pub struct Event {
    /// Source, action, package and replaced package.
    pub seen: Seen,
    /// The idempotency key.
    pub event_id: [u8; 16],
    /// Host machine id.
    pub machine_id: String,
    /// Host name.
    pub hostname: String,
    /// rpm transaction id.
    pub rpm_tid: i64,
    /// dnf history id.
    pub history_id: Option<i64>,
    /// Command line.
    pub command_line: Option<String>,
    /// Login user.
    pub login_user: Option<String>,
    /// Repository of the package.
    pub repo: Option<String>,
    /// Vendor of the package.
    pub vendor: Option<String>,
    /// Header digest.
    pub digest: Option<String>,
    /// Installed size.
    pub size: Option<i64>,
}

/// Decodes every message of a changes topic, in topic order.
pub fn decode_all(messages: &[crate::Consumed]) -> Vec<Event> {
    messages
        .iter()
        .map(|m| {
            let e = pkgstream_schemas::decode_change(&m.value).expect("change decodes");
            let nvr = |p: &pkgstream_schemas::Package<'_>| {
                format!("{}-{}-{}", p.name, p.version, p.release)
            };
            Event {
                seen: Seen {
                    source: format!("{:?}", e.source).to_uppercase(),
                    action: format!("{:?}", e.action).to_uppercase(),
                    nvr: nvr(&e.package),
                    replaced: e.replaced.as_ref().map(nvr),
                },
                event_id: e.event_id.0,
                machine_id: e.host.machine_id.to_string(),
                hostname: e.host.hostname.to_string(),
                rpm_tid: e.transaction.rpm_tid,
                history_id: e.transaction.history_id,
                command_line: e.transaction.command_line.as_deref().map(str::to_owned),
                login_user: e.transaction.login_user.as_deref().map(str::to_owned),
                repo: e.package.repo.as_deref().map(str::to_owned),
                vendor: e.package.vendor.as_deref().map(str::to_owned),
                digest: e.package.digest.as_deref().map(str::to_owned),
                size: e.package.size,
            }
        })
        .collect()
}

/// Reads the changes topic of `env` until `expected` events and a quiet
/// period, and decodes them.
pub fn read_changes(env: &EmitEnv, expected: usize) -> Vec<Event> {
    flush_until_empty(env);
    let got = crate::consume_all(
        &crate::kafka_brokers(),
        &env.changes_topic,
        expected,
        std::time::Duration::from_secs(3),
        std::time::Duration::from_secs(90),
    );
    decode_all(&got)
}

/// Runs `pkgstream-emit flush` until the spool holds no change event (a
/// background flush started by a hook may hold the flush lock for a while).
pub fn flush_until_empty(env: &EmitEnv) {
    let started = std::time::Instant::now();
    loop {
        let flush = env.flush(&["--timeout", "30"]);
        assert!(flush.status.success(), "flush: {}", text(&flush));
        let status = env.command(&["status"]).output().expect("status");
        if String::from_utf8_lossy(&status.stdout).contains(": 0 bytes of change events") {
            return;
        }
        assert!(
            started.elapsed() < std::time::Duration::from_secs(60),
            "spool not empty after 60 s: {}",
            text(&status)
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}

/// Asserts one event per change: distinct event ids, and distinct
/// (host, name-version-release, action) among `events`.
pub fn assert_one_per_change(events: &[Event]) {
    let ids: std::collections::HashSet<[u8; 16]> = events.iter().map(|e| e.event_id).collect();
    assert_eq!(ids.len(), events.len(), "duplicate event ids: {events:#?}");
    let keys: std::collections::HashSet<(String, String, String)> = events
        .iter()
        .map(|e| {
            (
                e.machine_id.clone(),
                e.seen.nvr.clone(),
                e.seen.action.clone(),
            )
        })
        .collect();
    assert_eq!(
        keys.len(),
        events.len(),
        "the same change reported twice: {events:#?}"
    );
}

/// Output of a command as text, for assertion messages.
pub fn text(out: &Output) -> String {
    format!(
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}
