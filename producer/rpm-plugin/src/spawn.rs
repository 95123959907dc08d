//! Running `pkgstream-emit record` from inside rpm, in bounded time.
//!
//! The events go to the child's stdin through an anonymous memory file (so
//! a child that never reads cannot block us on a full pipe), its stderr
//! comes back the same way, and the child is killed when it overruns the
//! timeout. No threads are started inside rpm's process.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::fd::FromRawFd;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::PluginError;

fn memfd(name: &std::ffi::CStr) -> Result<File, PluginError> {
    // SAFETY: a valid C string and flags; the fd is owned by the File.
    let fd = unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(PluginError::Io {
            op: "memfd_create",
            source: std::io::Error::last_os_error(),
        });
    }
    // SAFETY: fd is a fresh descriptor we own.
    Ok(unsafe { File::from_raw_fd(fd) })
}

/// Exit statuses of `pkgstream-emit record` that mean "spooled, but look":
/// 65 (some lines refused, set aside in `SPOOL/dead/`, every other line
/// spooled) and 79 (configuration broken, spooled with the fallback).
const RECORDED_WITH_WARNING: [i32; 2] = [65, 79];

/// What `pkgstream-emit record` did with a transaction's events.
#[derive(Debug)]
pub struct Recorded {
    /// How long the emitter took.
    pub took: Duration,
    /// Why the emitter exited non-zero although it spooled the events (its
    /// exit status and the end of its stderr); `None` on a clean exit.
    pub warning: Option<String>,
}

/// Runs `exe record --spawn-flush` with `input` on stdin; kills it after
/// `timeout`. An exit that still spooled the events (65, 79) is a
/// [`Recorded`] with a warning, any other failure an error.
pub fn record(exe: &Path, input: &[u8], timeout: Duration) -> Result<Recorded, PluginError> {
    let started = Instant::now();
    let io = |op: &'static str| move |source: std::io::Error| PluginError::Io { op, source };
    let mut stdin = memfd(c"pkgstream-events")?;
    stdin.write_all(input).map_err(io("write events"))?;
    stdin
        .seek(SeekFrom::Start(0))
        .map_err(io("rewind events"))?;
    let mut stderr = memfd(c"pkgstream-stderr")?;
    let stderr_child = stderr.try_clone().map_err(io("dup stderr"))?;
    let mut child = Command::new(exe)
        .args(["record", "--spawn-flush"])
        .stdin(Stdio::from(stdin))
        .stdout(Stdio::null())
        .stderr(Stdio::from(stderr_child))
        .spawn()
        .map_err(|source| PluginError::Spawn {
            exe: exe.to_path_buf(),
            source,
        })?;
    let mut pause = Duration::from_micros(500);
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if started.elapsed() >= timeout => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(PluginError::Timeout {
                    exe: exe.to_path_buf(),
                    ms: timeout.as_millis() as u64,
                });
            }
            Ok(None) => {
                std::thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_millis(20));
            }
            Err(e) => {
                return Err(PluginError::Io {
                    op: "wait for pkgstream-emit",
                    source: e,
                })
            }
        }
    };
    let took = started.elapsed();
    if status.success() {
        return Ok(Recorded {
            took,
            warning: None,
        });
    }
    let mut raw = Vec::new();
    let _ = stderr.seek(SeekFrom::Start(0));
    let _ = (&mut stderr).take(4096).read_to_end(&mut raw);
    let text = String::from_utf8_lossy(&raw);
    let text = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .collect::<Vec<_>>()
        .join(" | ");
    if status
        .code()
        .is_some_and(|c| RECORDED_WITH_WARNING.contains(&c))
    {
        return Ok(Recorded {
            took,
            warning: Some(format!("{status}: {text}")),
        });
    }
    Err(PluginError::EmitterFailed {
        exe: exe.to_path_buf(),
        status: status.to_string(),
        stderr: text,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn emitter(dir: &Path, name: &str, code: i32) -> std::path::PathBuf {
        let exe = dir.join(name);
        std::fs::write(
            &exe,
            format!("#!/bin/sh\ncat >/dev/null\necho 'rejected: line 2' >&2\nexit {code}\n"),
        )
        .unwrap();
        std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o755)).unwrap();
        exe
    }

    #[test]
    fn an_emitter_that_spooled_with_a_warning_is_recorded_not_failed() {
        let dir = tempfile::tempdir().unwrap();
        for code in [65, 79] {
            let exe = emitter(dir.path(), &format!("emit{code}"), code);
            let recorded = record(&exe, b"{}\n", Duration::from_secs(5)).unwrap();
            let warning = recorded.warning.unwrap();
            assert!(warning.contains(&code.to_string()), "{warning}");
            assert!(warning.contains("rejected: line 2"), "{warning}");
        }
        let failing = emitter(dir.path(), "emit78", 78);
        assert!(matches!(
            record(&failing, b"{}\n", Duration::from_secs(5)),
            Err(PluginError::EmitterFailed { .. })
        ));
    }
}
