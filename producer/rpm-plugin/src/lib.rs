//! `pkgstream.so`, pkgstream's rpm transaction plugin: whatever drives rpm
//! (dnf, yum, dnf5, PackageKit or a sysadmin's `rpm -U`), every package
//! change rpm commits is handed to `pkgstream-emit record`.
//!
//! rpm loads `%{__plugindir}/pkgstream.so` when the macro
//! `%__transaction_pkgstream` is defined (`producer/rpm-macros/`) and reads
//! the hook table [`pkgstream_hooks`]. Only `tsm_post` does work: after the
//! transaction it walks the elements ([`change`]), skips dry runs
//! (`RPMTRANS_FLAG_TEST`) and failed elements, and runs the emitter with a
//! timeout ([`spawn`]). When dnf drove the transaction, the dnf plugin has
//! put its context (history id, command line, user, repos) in
//! `PKGSTREAM_DNF_CONTEXT`; the events are then reported with source DNF
//! and that context, and `PKGSTREAM_RPM_RECORDED` tells the dnf plugin it
//! has nothing left to do — one event per change. That marker is the only
//! change the plugin makes to its host's environment, and only for dnf, on
//! the main thread ([`on_main_thread`]): inside other hosts (PackageKit,
//! with its worker threads) `setenv` would race with their `getenv`.
//!
//! Every entry point catches panics and returns `RPMRC_OK`: the plugin can
//! log, never fail or stall a transaction. librpm is found at run time
//! ([`ffi`]), so one build works with librpm.so.8, .9 and .10.
//!
//! Settings (environment): `PKGSTREAM_EMIT` (default
//! `/usr/bin/pkgstream-emit`), `PKGSTREAM_HOOK_TIMEOUT_MS` (default 5000).

pub mod change;
pub mod ffi;
pub mod spawn;

use std::ffi::{c_int, c_void, CString};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use change::{Context, Details, Element, Nevra};
use ffi::{Rpm, Rpmte, Rpmts};

/// Everything that can go wrong inside the plugin; each is logged through
/// rpm's log and the transaction goes on.
#[derive(Debug, thiserror::Error)]
pub enum PluginError {
    /// No known librpm soname is loaded in this process.
    #[error("no librpm.so.10/.9/.8 loaded in this process; pkgstream.so only runs inside rpm")]
    NoLibrpm,
    /// A librpm function is missing.
    #[error("{soname} has no symbol {symbol}")]
    Symbol {
        /// The library searched.
        soname: String,
        /// The missing function.
        symbol: &'static str,
    },
    /// The emitter could not be started (missing, not executable).
    #[error("cannot run {exe}: {source}; events of this transaction are not recorded")]
    Spawn {
        /// The emitter path.
        exe: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The emitter exited with an error.
    #[error("{exe} record failed ({status}): {stderr}")]
    EmitterFailed {
        /// The emitter path.
        exe: PathBuf,
        /// Its exit status.
        status: String,
        /// The end of its stderr.
        stderr: String,
    },
    /// The emitter overran its time and was killed.
    #[error("{exe} record did not finish within {ms} ms and was killed; events of this transaction may not be recorded")]
    Timeout {
        /// The emitter path.
        exe: PathBuf,
        /// The timeout.
        ms: u64,
    },
    /// Local I/O for the hand-off failed.
    #[error("{op}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The OS error.
        source: std::io::Error,
    },
}

/// rpm's `rpmRC`: only `RPMRC_OK` is ever returned.
const RPMRC_OK: c_int = 0;

type InitFn = unsafe extern "C" fn(*mut c_void, Rpmts) -> c_int;
type CleanupFn = unsafe extern "C" fn(*mut c_void);
type TsmPostFn = unsafe extern "C" fn(*mut c_void, Rpmts, c_int) -> c_int;
type PsmPreFn = unsafe extern "C" fn(*mut c_void, Rpmte) -> c_int;

/// `struct rpmPluginHooks_s` (rpm 4.12 to 4.20): twelve function pointers;
/// the ones pkgstream does not use are NULL. Zeroed spare slots follow, so
/// that a newer rpm reading hooks appended to the struct finds NULL.
#[repr(C)]
pub struct RpmPluginHooks {
    init: Option<InitFn>,
    cleanup: Option<CleanupFn>,
    tsm_pre: Option<InitFn>,
    tsm_post: Option<TsmPostFn>,
    psm_pre: Option<PsmPreFn>,
    /// psm_post, scriptlet_pre, scriptlet_fork_post,
    /// scriptlet_post, fsm_file_pre, fsm_file_post, fsm_file_prepare, then
    /// spare slots.
    unused: [usize; 7 + 16],
}

/// The hook table rpm looks up as `pkgstream_hooks`.
#[unsafe(no_mangle)]
#[allow(non_upper_case_globals)]
pub static pkgstream_hooks: RpmPluginHooks = RpmPluginHooks {
    init: Some(init),
    cleanup: None,
    tsm_pre: Some(tsm_pre),
    tsm_post: Some(tsm_post),
    psm_pre: Some(psm_pre),
    unused: [0; 23],
};

static RPM: OnceLock<Result<Rpm, String>> = OnceLock::new();

/// Header facts per element, taken in `psm_pre` while rpm holds the header
/// (after the transaction, added elements no longer have one).
static DETAILS: Mutex<Vec<(usize, Details)>> = Mutex::new(Vec::new());

fn details_store() -> std::sync::MutexGuard<'static, Vec<(usize, Details)>> {
    DETAILS.lock().unwrap_or_else(|p| p.into_inner())
}

unsafe extern "C" fn tsm_pre(_plugin: *mut c_void, _ts: Rpmts) -> c_int {
    let _ = catch_unwind(|| details_store().clear());
    RPMRC_OK
}

unsafe extern "C" fn psm_pre(_plugin: *mut c_void, te: Rpmte) -> c_int {
    let _ = catch_unwind(AssertUnwindSafe(|| {
        if let Some(rpm) = rpm() {
            // SAFETY: te is the live element rpm is about to process.
            let d = unsafe { details(rpm, te) };
            details_store().push((te as usize, d));
        }
    }));
    RPMRC_OK
}

fn rpm() -> Option<&'static Rpm> {
    RPM.get_or_init(|| Rpm::find().map_err(|e| e.to_string()))
        .as_ref()
        .ok()
}

unsafe extern "C" fn init(_plugin: *mut c_void, _ts: Rpmts) -> c_int {
    let _ = catch_unwind(|| {
        if let Err(e) = RPM.get_or_init(|| Rpm::find().map_err(|e| e.to_string())) {
            eprintln!("pkgstream: warning: rpm plugin disabled: {e}");
        }
    });
    RPMRC_OK
}

unsafe extern "C" fn tsm_post(_plugin: *mut c_void, ts: Rpmts, _res: c_int) -> c_int {
    let outcome = catch_unwind(AssertUnwindSafe(|| {
        if let Some(rpm) = rpm() {
            // SAFETY: ts is the live transaction rpm passes to tsm_post.
            unsafe { after_transaction(rpm, ts) }
        }
    }));
    if outcome.is_err() {
        if let Some(rpm) = rpm() {
            rpm.log(
                ffi::RPMLOG_WARNING,
                "internal error (panic) in the rpm plugin; transaction unaffected",
            );
        }
    }
    RPMRC_OK
}

/// Reads the committed changes of `ts` and records them.
///
/// # Safety
/// `ts` is a live rpm transaction set.
unsafe fn after_transaction(rpm: &Rpm, ts: Rpmts) {
    // SAFETY: ts is live (caller).
    let (flags, tid) = unsafe { ((rpm.ts_flags)(ts), i64::from((rpm.ts_get_tid)(ts))) };
    if flags & ffi::RPMTRANS_FLAG_TEST != 0 {
        return;
    }
    let pid = std::process::id();
    let dnf_context = std::env::var("PKGSTREAM_DNF_CONTEXT")
        .ok()
        .and_then(|t| Context::from_dnf_env(&t, pid));
    // Only the dnf plugin (same process) reads the marker.
    let under_dnf = dnf_context.is_some();
    let ctx = dnf_context.unwrap_or_else(rpm_context);
    // SAFETY: as above.
    let mut elements = unsafe { read_elements(rpm, ts) };
    change::apply_obsoletes(&mut elements, &ctx);
    let vercmp = |a: &str, b: &str| {
        let (Ok(a), Ok(b)) = (CString::new(a), CString::new(b)) else {
            return a.cmp(b);
        };
        // SAFETY: two valid C strings.
        unsafe { (rpm.vercmp)(a.as_ptr(), b.as_ptr()) }.cmp(&0)
    };
    let changes = change::classify(&elements, &vercmp);
    if changes.is_empty() {
        if under_dnf {
            mark_recorded(rpm, pid, tid, 0, "ok");
        }
        return;
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(tid.saturating_mul(1_000_000));
    let input = change::ndjson(&elements, &changes, tid, &ctx, now);
    let exe = std::env::var_os("PKGSTREAM_EMIT")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/pkgstream-emit"));
    let timeout = std::env::var("PKGSTREAM_HOOK_TIMEOUT_MS")
        .ok()
        .and_then(|v| v.parse().ok())
        .map(Duration::from_millis)
        .unwrap_or(Duration::from_secs(5));
    let status = match spawn::record(&exe, input.as_bytes(), timeout) {
        Ok(spawn::Recorded {
            took,
            warning: None,
        }) => {
            rpm.log(
                ffi::RPMLOG_DEBUG,
                &format!(
                    "recorded {} change(s) of transaction {tid} in {} ms",
                    changes.len(),
                    took.as_millis()
                ),
            );
            "ok".to_owned()
        }
        Ok(spawn::Recorded {
            warning: Some(w), ..
        }) => {
            // Spooled; the emitter's stderr says what needs a look.
            rpm.log(
                ffi::RPMLOG_WARNING,
                &format!(
                    "{} change(s) of transaction {tid} recorded, with a warning from pkgstream-emit ({w})",
                    changes.len()
                ),
            );
            format!("warning {w}")
        }
        Err(e) => {
            // Under dnf, rpm's log of a finished transaction is not shown:
            // the dnf plugin repeats this reason in dnf's log.
            rpm.log(
                ffi::RPMLOG_WARNING,
                &format!(
                    "{} change(s) of transaction {tid} not recorded: {e}",
                    changes.len()
                ),
            );
            format!("failed {e}")
        }
    };
    if under_dnf {
        mark_recorded(rpm, pid, tid, changes.len(), &status);
    }
}

/// Whether the calling thread is the process's main thread (its thread id
/// is the process id).
pub fn on_main_thread() -> bool {
    // SAFETY: gettid and getpid cannot fail.
    unsafe { libc::gettid() == libc::getpid() }
}

/// Tells the dnf plugin (same process, called only when dnf's context names
/// this process) that this transaction is handled:
/// `PKGSTREAM_RPM_RECORDED="<pid> <rpm tid> <changes> ok"`,
/// `"... warning <what>"` (spooled, but the emitter complained) or
/// `"... failed <reason>"`.
///
/// This is the plugin's only change to its host's environment, and
/// `setenv(3)` is not safe while another thread may call `getenv(3)`: it
/// happens on the main thread only, where dnf runs rpm's transaction (its
/// python threads are idle then). Off the main thread nothing is set; the
/// dnf plugin then records the changes from its own view, with the same
/// event ids, which downstream deduplication absorbs. Nothing else the
/// plugin does touches the environment: the emitter inherits it as it is.
fn mark_recorded(rpm: &Rpm, pid: u32, tid: i64, changes: usize, status: &str) {
    if !on_main_thread() {
        rpm.log(
            ffi::RPMLOG_DEBUG,
            &format!("transaction {tid} ran off the main thread: PKGSTREAM_RPM_RECORDED not set (the dnf plugin records it again, same event ids)"),
        );
        return;
    }
    if let Ok(v) = CString::new(format!("{pid} {tid} {changes} {status}")) {
        // SAFETY: valid C strings, on the main thread (checked above) of a
        // process where dnf drives the transaction from that thread.
        unsafe { libc::setenv(c"PKGSTREAM_RPM_RECORDED".as_ptr(), v.as_ptr(), 1) };
    }
}

/// Reads every element of `ts` with its header facts.
///
/// # Safety
/// `ts` is a live rpm transaction set.
unsafe fn read_elements(rpm: &Rpm, ts: Rpmts) -> Vec<Element> {
    let mut handles: Vec<Rpmte> = Vec::new();
    // SAFETY: ts is live; the iterator is freed below.
    unsafe {
        let it = (rpm.tsi_init)(ts);
        if it.is_null() {
            return Vec::new();
        }
        loop {
            let te = (rpm.tsi_next)(it, 0);
            if te.is_null() {
                break;
            }
            handles.push(te);
        }
        (rpm.tsi_free)(it);
    }
    handles
        .iter()
        .map(|&te| {
            // SAFETY: te is an element of the live ts; strings are copied at once.
            unsafe {
                let kind = (rpm.te_type)(te);
                let dep = (rpm.te_depends_on)(te);
                Element {
                    added: kind & ffi::TR_ADDED != 0,
                    nevra: Nevra {
                        name: ffi::string((rpm.te_n)(te)).unwrap_or_default(),
                        epoch: ffi::string((rpm.te_e)(te)).and_then(|e| e.parse().ok()),
                        version: ffi::string((rpm.te_v)(te)).unwrap_or_default(),
                        release: ffi::string((rpm.te_r)(te)).unwrap_or_default(),
                        arch: ffi::string((rpm.te_a)(te)).unwrap_or_default(),
                    },
                    depends_on: if dep.is_null() {
                        None
                    } else {
                        handles.iter().position(|&h| h == dep)
                    },
                    failed: (rpm.te_failed)(te) != 0,
                    details: details_store()
                        .iter()
                        .rev()
                        .find(|(p, _)| *p == te as usize)
                        .map(|(_, d)| d.clone())
                        .unwrap_or_default(),
                }
            }
        })
        .collect()
}

/// Vendor, times, size and digest from the element's header.
///
/// # Safety
/// `te` is a live transaction element.
unsafe fn details(rpm: &Rpm, te: Rpmte) -> Details {
    // SAFETY: rpmteHeader returns a new reference (or NULL), freed below;
    // strings are copied while it lives.
    unsafe {
        let h = (rpm.te_header)(te);
        if h.is_null() {
            return Details::default();
        }
        let num = |tag| match (rpm.header_get_number)(h, tag) {
            0 => None,
            n => i64::try_from(n).ok(),
        };
        let digest = ffi::string((rpm.header_get_string)(h, ffi::tag::SHA256HEADER))
            .map(|d| format!("sha256:{}", d.to_ascii_lowercase()))
            .or_else(|| {
                ffi::string((rpm.header_get_string)(h, ffi::tag::SHA1HEADER))
                    .map(|d| format!("sha1:{}", d.to_ascii_lowercase()))
            });
        let d = Details {
            vendor: ffi::string((rpm.header_get_string)(h, ffi::tag::VENDOR)),
            buildtime: num(ffi::tag::BUILDTIME),
            install_time: num(ffi::tag::INSTALLTIME),
            size: num(ffi::tag::LONGSIZE).or_else(|| num(ffi::tag::SIZE)),
            digest,
        };
        (rpm.header_free)(h);
        d
    }
}

/// Context of a plain `rpm` run: its command line and the human behind it.
fn rpm_context() -> Context {
    let command_line = std::fs::read("/proc/self/cmdline")
        .ok()
        .map(|raw| {
            raw.split(|b| *b == 0)
                .filter(|a| !a.is_empty())
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect::<Vec<_>>()
                .join(" ")
        })
        .filter(|c| !c.is_empty());
    Context {
        source: "rpm".into(),
        command_line,
        login_user: login_user(),
        ..Default::default()
    }
}

/// The login uid's name; when unset (4294967295), `SUDO_USER`, else the uid's name.
fn login_user() -> Option<String> {
    let loginuid = std::fs::read_to_string("/proc/self/loginuid")
        .ok()
        .and_then(|s| s.trim().parse::<u32>().ok())
        .filter(|u| *u != u32::MAX);
    if let Some(uid) = loginuid {
        return user_name(uid).or_else(|| Some(uid.to_string()));
    }
    if let Some(u) = std::env::var("SUDO_USER").ok().filter(|u| !u.is_empty()) {
        return Some(u);
    }
    // SAFETY: getuid cannot fail.
    let uid = unsafe { libc::getuid() };
    user_name(uid).or_else(|| Some(uid.to_string()))
}

fn user_name(uid: u32) -> Option<String> {
    let mut buf = vec![0 as libc::c_char; 4096];
    // SAFETY: zeroed passwd is a valid out-parameter.
    let mut pw: libc::passwd = unsafe { std::mem::zeroed() };
    let mut out: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: all pointers valid for the call; buf outlives the use of pw.
    let rc = unsafe { libc::getpwuid_r(uid, &mut pw, buf.as_mut_ptr(), buf.len(), &mut out) };
    if rc != 0 || out.is_null() {
        return None;
    }
    // SAFETY: pw_name points into buf.
    unsafe { ffi::string(pw.pw_name) }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    #[test]
    fn a_spawned_thread_is_not_the_main_thread() {
        assert!(!std::thread::spawn(super::on_main_thread).join().unwrap());
    }
}
