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

/// Runs `exe record --spawn-flush` with `input` on stdin; kills it after
/// `timeout`. Returns how long it took.
pub fn record(exe: &Path, input: &[u8], timeout: Duration) -> Result<Duration, PluginError> {
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
    if status.success() {
        return Ok(started.elapsed());
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
    Err(PluginError::EmitterFailed {
        exe: exe.to_path_buf(),
        status: status.to_string(),
        stderr: text,
    })
}
