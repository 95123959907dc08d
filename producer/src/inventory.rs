//! `pkgstream-emit inventory`: the whole rpmdb as one `InventorySnapshot`.
//!
//! Read with `rpm -qa --qf` (so the emitter does not link librpm and works
//! with any rpm version), one tab-separated line per package, turned into
//! one `{"kind":"inventory",...}` hook line that [`crate::emitter::record`]
//! records like any other. `gpg-pubkey` pseudo-packages are skipped.

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

/// Runs `rpm [--root ROOT] [--dbpath DBPATH] -qa --qf ...` (killed after
/// `timeout`) and returns one inventory hook line.
pub fn snapshot_line(
    root: Option<&Path>,
    dbpath: Option<&str>,
    timeout: Duration,
) -> Result<String, ProducerError> {
    let mut cmd = Command::new("rpm");
    if let Some(r) = root {
        cmd.arg("--root").arg(r);
    }
    if let Some(d) = dbpath {
        cmd.arg("--dbpath").arg(d);
    }
    cmd.args(["-qa", "--qf", QUERY_FORMAT])
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
                    "rpm -qa did not finish within {} s",
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
        return Err(fail(format!("rpm -qa failed ({status}): {}", err.trim())));
    }
    let packages = parse_query(&text).map_err(fail)?;
    Ok(json!({"kind": "inventory", "packages": packages}).to_string())
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
}
