//! `pkgstream-emit inventory`: the whole rpmdb as one `InventorySnapshot`.
//!
//! Read with `rpm -qa --qf` (so the emitter does not link librpm and works
//! with any rpm version), one tab-separated line per package, turned into
//! one `{"kind":"inventory",...}` hook line that [`crate::emitter::record`]
//! records like any other. `gpg-pubkey` pseudo-packages are skipped.
//!
//! Which rpmdb: `--dbpath` when given; otherwise, as rpm finds it, the
//! first of [`dbpath_candidates`] under the root that holds a database
//! (rpm's own `%_dbpath` first, then where the distributions keep it —
//! under `--root`, the host's `%_dbpath` need not be the root's: Debian's
//! rpm says `~/.rpmdb`). A database that lists no package is refused
//! ([`ProducerError::InventoryEmpty`]): an installed system always has
//! packages, and an empty snapshot would tell the pipeline that the host
//! has none. `--allow-empty` records it anyway.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use serde_json::{json, Map, Value};

use crate::ProducerError;

/// The query format: NAME EPOCH VERSION RELEASE ARCH VENDOR INSTALLTIME
/// BUILDTIME LONGSIZE SHA256HEADER, tab separated; `(none)` when unset.
pub const QUERY_FORMAT: &str = "%{NAME}\\t%{EPOCH}\\t%{VERSION}\\t%{RELEASE}\\t%{ARCH}\\t%{VENDOR}\\t%{INSTALLTIME}\\t%{BUILDTIME}\\t%{LONGSIZE}\\t%{SHA256HEADER}\\n";

/// Parses `rpm -qa --qf QUERY_FORMAT` output into hook-input packages.
pub fn parse_query(text: &str) -> Result<Vec<Value>, String> {
    let mut out = Vec::new();
    for (i, line) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let f: Vec<&str> = line.split('\t').collect();
        if f.len() != 10 {
            return Err(format!(
                "rpm output line {}: expected 10 tab-separated fields, got {}: {line:?}",
                i + 1,
                f.len()
            ));
        }
        if f[0] == "gpg-pubkey" {
            continue;
        }
        let set = |v: &str| (v != "(none)" && !v.is_empty()).then(|| v.to_owned());
        let num = |v: &str| set(v).and_then(|v| v.parse::<i64>().ok());
        let mut p = Map::new();
        p.insert("name".into(), json!(f[0]));
        if let Some(e) = num(f[1]) {
            p.insert("epoch".into(), json!(e));
        }
        p.insert("version".into(), json!(f[2]));
        p.insert("release".into(), json!(f[3]));
        p.insert(
            "arch".into(),
            json!(set(f[4]).unwrap_or_else(|| "noarch".into())),
        );
        for (k, v) in [
            ("vendor", set(f[5]).map(Value::from)),
            ("install_time", num(f[6]).map(Value::from)),
            ("buildtime", num(f[7]).map(Value::from)),
            ("size", num(f[8]).map(Value::from)),
            (
                "digest",
                set(f[9]).map(|d| Value::from(format!("sha256:{}", d.to_ascii_lowercase()))),
            ),
        ] {
            if let Some(v) = v {
                p.insert(k.into(), v);
            }
        }
        out.push(Value::Object(p));
    }
    Ok(out)
}

/// Where distributions keep the rpmdb, inside the root: RHEL ≤ 9, SUSE,
/// older Fedora; Fedora ≥ 36 and RHEL 10.
pub const STANDARD_DBPATHS: [&str; 2] = ["/var/lib/rpm", "/usr/lib/sysimage/rpm"];

/// Files that make a directory an rpmdb: sqlite (rpm ≥ 4.16), Berkeley DB,
/// ndb.
const DB_FILES: [&str; 3] = ["rpmdb.sqlite", "Packages", "Packages.db"];

/// Where to look for the rpmdb, in order: rpm's own `%_dbpath` (when rpm
/// names one), then [`STANDARD_DBPATHS`], each once.
pub fn dbpath_candidates(rpm_dbpath: Option<&str>) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for c in rpm_dbpath.into_iter().chain(STANDARD_DBPATHS) {
        let c = c.trim().trim_end_matches('/');
        if c.starts_with('/') && !out.iter().any(|o| o == c) {
            out.push(c.to_owned());
        }
    }
    out
}

/// Where `dbpath` under `root` holds an rpm database: the path to give
/// rpm's `--dbpath`, with a symlink there resolved inside the root (rpm
/// opens `ROOT/DBPATH` without a chroot, so an absolute link such as
/// `/var/lib/rpm -> /usr/lib/sysimage/rpm` would lead it out of the root).
/// `None` when no database is there.
pub fn find_rpmdb(root: &Path, dbpath: &str) -> Option<String> {
    let inside = |p: &str| root.join(p.trim_start_matches('/'));
    let mut resolved = normalize(dbpath);
    if let Ok(target) = std::fs::read_link(inside(&resolved)) {
        let target = target.to_string_lossy().into_owned();
        resolved = if target.starts_with('/') {
            normalize(&target)
        } else {
            normalize(&format!("{resolved}/../{target}"))
        };
    }
    let dir = inside(&resolved);
    DB_FILES
        .iter()
        .any(|f| dir.join(f).is_file())
        .then_some(resolved)
}

/// `path` made absolute and without `.`, `..` or repeated slashes
/// (lexically; `..` stops at `/`).
fn normalize(path: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            p => parts.push(p),
        }
    }
    format!("/{}", parts.join("/"))
}

/// Reads the rpmdb of `root` (default `/`) at `dbpath` (default: found as
/// described in the module doc) with `rpm -qa --qf ...`, each rpm run
/// killed after `timeout`, and returns one inventory hook line. An rpmdb
/// with no package is an error unless `allow_empty`.
pub fn snapshot_line(
    root: Option<&Path>,
    dbpath: Option<&str>,
    allow_empty: bool,
    timeout: Duration,
) -> Result<String, ProducerError> {
    let root_dir = root.unwrap_or(Path::new("/"));
    let candidates = match dbpath {
        Some(d) => vec![d.to_owned()],
        None => {
            let own = run_rpm(&["--eval", "%{_dbpath}"], timeout)
                .map_err(|e| tracing::warn!(error = %e, "rpm --eval %{{_dbpath}} failed; trying the standard locations"))
                .ok();
            dbpath_candidates(own.as_deref())
        }
    };
    let mut looked_at = Vec::new();
    let mut queried: Vec<String> = Vec::new();
    for candidate in &candidates {
        let Some(found) = find_rpmdb(root_dir, candidate) else {
            looked_at.push(format!("{candidate}: no database"));
            continue;
        };
        if queried.contains(&found) {
            continue;
        }
        queried.push(found.clone());
        let candidate = &found;
        let mut args: Vec<&str> = Vec::new();
        let root_text = root.map(|r| r.display().to_string());
        if let Some(r) = &root_text {
            args.extend(["--root", r]);
        }
        args.extend(["--dbpath", candidate, "-qa", "--qf", QUERY_FORMAT]);
        let text = run_rpm(&args, timeout)?;
        let packages = parse_query(&text).map_err(ProducerError::Inventory)?;
        if !packages.is_empty() {
            tracing::debug!(root = %root_dir.display(), dbpath = %candidate, packages = packages.len(), "rpmdb read");
            return Ok(json!({"kind": "inventory", "packages": packages}).to_string());
        }
        looked_at.push(format!("{candidate}: no package"));
    }
    if allow_empty {
        tracing::warn!(root = %root_dir.display(), looked_at = %looked_at.join(", "), "no package in the rpmdb; recording an empty snapshot (--allow-empty)");
        return Ok(json!({"kind": "inventory", "packages": []}).to_string());
    }
    Err(ProducerError::InventoryEmpty {
        root: root_dir.display().to_string(),
        looked_at: looked_at.join(", "),
    })
}

/// Runs `rpm ARGS` (killed after `timeout`) and returns its stdout.
fn run_rpm(args: &[&str], timeout: Duration) -> Result<String, ProducerError> {
    let mut cmd = Command::new("rpm");
    cmd.args(args)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let fail = |reason: String| ProducerError::Inventory(reason);
    let mut child = cmd
        .spawn()
        .map_err(|e| fail(format!("cannot run rpm: {e}")))?;
    // rpm -qa output can exceed a pipe buffer: read it on a thread while we wait with a deadline.
    let mut stdout = child
        .stdout
        .take()
        .ok_or_else(|| fail("no stdout".into()))?;
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut stdout, &mut s).map(|_| s)
    });
    let started = std::time::Instant::now();
    let status = loop {
        match child.try_wait() {
            Ok(Some(s)) => break s,
            Ok(None) if started.elapsed() > timeout => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(fail(format!(
                    "rpm {} did not finish within {} s",
                    args.first().copied().unwrap_or_default(),
                    timeout.as_secs()
                )));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(10)),
            Err(e) => return Err(fail(format!("waiting for rpm: {e}"))),
        }
    };
    let text = reader
        .join()
        .map_err(|_| fail("reader thread panicked".into()))?
        .map_err(|e| fail(format!("reading rpm output: {e}")))?;
    if !status.success() {
        let mut err = String::new();
        if let Some(mut e) = child.stderr.take() {
            let _ = std::io::Read::read_to_string(&mut e, &mut err);
        }
        return Err(fail(format!(
            "rpm {} failed ({status}): {}",
            args.join(" "),
            err.trim()
        )));
    }
    Ok(text)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn query_lines_become_packages() {
        let text = "bash\t(none)\t5.1.8\t9.el9\tx86_64\tRocky\t1700000000\t1690000000\t7000000\tAbC123\n\
                    gpg-pubkey\t(none)\tfd431d51\t4ae0493b\t(none)\t(none)\t1700000000\t1700000000\t0\t(none)\n\
                    openssl\t1\t3.0.7\t27.el9\tx86_64\t(none)\t1700000001\t1690000001\t123\t(none)\n";
        let p = parse_query(text).unwrap();
        assert_eq!(p.len(), 2);
        assert_eq!(
            p[0],
            json!({"name":"bash","version":"5.1.8","release":"9.el9","arch":"x86_64","vendor":"Rocky","install_time":1700000000,"buildtime":1690000000,"size":7000000,"digest":"sha256:abc123"})
        );
        assert_eq!(p[1]["epoch"], 1);
        assert!(p[1].get("vendor").is_none());
        assert!(parse_query("bash\t1\n").unwrap_err().contains("line 1"));
    }

    #[test]
    fn candidates_start_with_rpms_own_dbpath_each_once() {
        assert_eq!(
            dbpath_candidates(Some("/root/.rpmdb\n")),
            ["/root/.rpmdb", "/var/lib/rpm", "/usr/lib/sysimage/rpm"]
        );
        assert_eq!(
            dbpath_candidates(Some("/var/lib/rpm/")),
            ["/var/lib/rpm", "/usr/lib/sysimage/rpm"]
        );
        // An unexpanded or relative answer is no path.
        assert_eq!(
            dbpath_candidates(Some("%{_dbpath}")),
            ["/var/lib/rpm", "/usr/lib/sysimage/rpm"]
        );
    }

    #[test]
    fn a_database_is_found_through_a_symlink_resolved_inside_the_root() {
        let root = tempfile::tempdir().unwrap();
        let sysimage = root.path().join("usr/lib/sysimage/rpm");
        std::fs::create_dir_all(&sysimage).unwrap();
        std::fs::write(sysimage.join("rpmdb.sqlite"), b"").unwrap();
        std::fs::create_dir_all(root.path().join("var/lib")).unwrap();
        std::os::unix::fs::symlink("/usr/lib/sysimage/rpm", root.path().join("var/lib/rpm"))
            .unwrap();
        let found = |p: &str| find_rpmdb(root.path(), p);
        assert_eq!(
            found("/var/lib/rpm").as_deref(),
            Some("/usr/lib/sysimage/rpm")
        );
        assert_eq!(
            found("/usr/lib/sysimage/rpm/").as_deref(),
            Some("/usr/lib/sysimage/rpm")
        );
        assert_eq!(found("/root/.rpmdb"), None);
        // Fedora's own link is relative.
        std::fs::remove_file(root.path().join("var/lib/rpm")).unwrap();
        std::os::unix::fs::symlink(
            "../../usr/lib/sysimage/rpm",
            root.path().join("var/lib/rpm"),
        )
        .unwrap();
        assert_eq!(
            found("/var/lib/rpm").as_deref(),
            Some("/usr/lib/sysimage/rpm")
        );
        assert_eq!(normalize("/a/./b//../c/"), "/a/c");
        assert_eq!(normalize("/../x"), "/x");
    }
}
