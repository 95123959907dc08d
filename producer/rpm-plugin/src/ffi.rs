//! The slice of librpm the plugin uses, resolved at run time.
//!
//! The plugin does not link librpm: it finds the librpm that already loaded
//! it (`dlopen(..., RTLD_NOLOAD)` over the known sonames, newest first) and
//! takes its functions from there with `dlsym` on that handle. This works
//! when librpm is global (the `rpm` CLI) and when python's `_rpm` loaded it
//! `RTLD_LOCAL` (dnf, yum), where plain undefined symbols would not resolve.
//! One build serves librpm.so.8 (rpm 4.14, RHEL 8), .9 (4.16/4.18, RHEL 9)
//! and .10 (4.19/4.20, RHEL 10, Fedora): every function used here has kept
//! its signature across them.

use std::ffi::{c_char, c_int, c_void, CStr, CString};

use crate::PluginError;

/// Sonames tried, newest first: `(librpm, librpmio)`.
pub const SONAMES: [(&str, &str); 3] = [
    ("librpm.so.10", "librpmio.so.10"),
    ("librpm.so.9", "librpmio.so.9"),
    ("librpm.so.8", "librpmio.so.8"),
];

/// Opaque librpm handles.
pub type Rpmts = *mut c_void;
/// A transaction element.
pub type Rpmte = *mut c_void;
/// A transaction element iterator.
pub type Rpmtsi = *mut c_void;
/// A package header.
pub type Header = *mut c_void;

/// `rpmElementType` values.
pub const TR_ADDED: u32 = 1 << 0;
/// An element that erases an installed package.
pub const TR_REMOVED: u32 = 1 << 1;
/// `RPMTRANS_FLAG_TEST`: dnf's and `rpm --test`'s dry run.
pub const RPMTRANS_FLAG_TEST: u32 = 1 << 0;

/// rpm tags read from headers (`rpmtag.h`; the same numbers `rpm -q --qf`
/// and the inventory snapshot read by name).
pub mod tag {
    #![allow(missing_docs)]
    pub const BUILDTIME: u32 = 1006;
    pub const INSTALLTIME: u32 = 1008;
    pub const SIZE: u32 = 1009;
    pub const VENDOR: u32 = 1011;
    pub const LONGSIZE: u32 = 5009;
    /// `RPMTAG_SHA256HEADER` = `RPMTAG_SIG_BASE` (256) + 17: the SHA-256 of
    /// the header, what `%{SHA256HEADER}` prints. (5097 is
    /// `RPMTAG_PAYLOADDIGESTALT`, a digest of the payload.)
    pub const SHA256HEADER: u32 = 273;
    /// `RPMTAG_SHA1HEADER` = 256 + 13, for packages built without SHA-256.
    pub const SHA1HEADER: u32 = 269;
}

/// `RPMLOG_WARNING`.
pub const RPMLOG_WARNING: c_int = 4;
/// `RPMLOG_DEBUG`.
pub const RPMLOG_DEBUG: c_int = 7;

/// The librpm functions, as found in the loaded librpm.
#[allow(missing_docs)]
pub struct Rpm {
    pub soname: &'static str,
    pub ts_flags: unsafe extern "C" fn(Rpmts) -> u32,
    pub ts_get_tid: unsafe extern "C" fn(Rpmts) -> i32,
    pub tsi_init: unsafe extern "C" fn(Rpmts) -> Rpmtsi,
    pub tsi_next: unsafe extern "C" fn(Rpmtsi, u32) -> Rpmte,
    pub tsi_free: unsafe extern "C" fn(Rpmtsi) -> Rpmtsi,
    pub te_type: unsafe extern "C" fn(Rpmte) -> u32,
    pub te_n: unsafe extern "C" fn(Rpmte) -> *const c_char,
    pub te_e: unsafe extern "C" fn(Rpmte) -> *const c_char,
    pub te_v: unsafe extern "C" fn(Rpmte) -> *const c_char,
    pub te_r: unsafe extern "C" fn(Rpmte) -> *const c_char,
    pub te_a: unsafe extern "C" fn(Rpmte) -> *const c_char,
    pub te_depends_on: unsafe extern "C" fn(Rpmte) -> Rpmte,
    pub te_failed: unsafe extern "C" fn(Rpmte) -> c_int,
    pub te_header: unsafe extern "C" fn(Rpmte) -> Header,
    pub header_free: unsafe extern "C" fn(Header) -> Header,
    pub header_get_string: unsafe extern "C" fn(Header, u32) -> *const c_char,
    pub header_get_number: unsafe extern "C" fn(Header, u32) -> u64,
    pub vercmp: unsafe extern "C" fn(*const c_char, *const c_char) -> c_int,
    pub log: unsafe extern "C" fn(c_int, *const c_char, ...),
}

fn open_loaded(name: &str) -> Option<*mut c_void> {
    let c = CString::new(name).ok()?;
    // SAFETY: dlopen with a valid C string; RTLD_NOLOAD only returns a
    // handle to a library already in the process, loading nothing.
    let h = unsafe { libc::dlopen(c.as_ptr(), libc::RTLD_LAZY | libc::RTLD_NOLOAD) };
    (!h.is_null()).then_some(h)
}

fn sym(handle: *mut c_void, soname: &str, name: &'static str) -> Result<*mut c_void, PluginError> {
    let c = CString::new(name).map_err(|_| PluginError::Symbol {
        soname: soname.to_owned(),
        symbol: name,
    })?;
    // SAFETY: handle came from dlopen and is never closed; c is a C string.
    let p = unsafe { libc::dlsym(handle, c.as_ptr()) };
    if p.is_null() {
        Err(PluginError::Symbol {
            soname: soname.to_owned(),
            symbol: name,
        })
    } else {
        Ok(p)
    }
}

macro_rules! load {
    ($h:expr, $so:expr, $name:literal) => {{
        let p = sym($h, $so, $name)?;
        // SAFETY: the symbol is the librpm function of that name, whose C
        // prototype the field's type mirrors (same in rpm 4.14 to 4.20).
        // The target type is the struct field's, spelled out there.
        #[allow(clippy::missing_transmute_annotations)]
        unsafe {
            std::mem::transmute::<*mut c_void, _>(p)
        }
    }};
}

impl Rpm {
    /// Finds the librpm this process loaded and resolves every function.
    pub fn find() -> Result<Rpm, PluginError> {
        for (rpm, rpmio) in SONAMES {
            let Some(h) = open_loaded(rpm) else { continue };
            let io = open_loaded(rpmio).ok_or_else(|| PluginError::Symbol {
                soname: rpmio.to_owned(),
                symbol: "(library)",
            })?;
            return Ok(Rpm {
                soname: rpm,
                ts_flags: load!(h, rpm, "rpmtsFlags"),
                ts_get_tid: load!(h, rpm, "rpmtsGetTid"),
                tsi_init: load!(h, rpm, "rpmtsiInit"),
                tsi_next: load!(h, rpm, "rpmtsiNext"),
                tsi_free: load!(h, rpm, "rpmtsiFree"),
                te_type: load!(h, rpm, "rpmteType"),
                te_n: load!(h, rpm, "rpmteN"),
                te_e: load!(h, rpm, "rpmteE"),
                te_v: load!(h, rpm, "rpmteV"),
                te_r: load!(h, rpm, "rpmteR"),
                te_a: load!(h, rpm, "rpmteA"),
                te_depends_on: load!(h, rpm, "rpmteDependsOn"),
                te_failed: load!(h, rpm, "rpmteFailed"),
                te_header: load!(h, rpm, "rpmteHeader"),
                header_free: load!(h, rpm, "headerFree"),
                header_get_string: load!(h, rpm, "headerGetString"),
                header_get_number: load!(h, rpm, "headerGetNumber"),
                vercmp: load!(io, rpmio, "rpmvercmp"),
                log: load!(io, rpmio, "rpmlog"),
            });
        }
        Err(PluginError::NoLibrpm)
    }

    /// Logs `msg` through rpm's own log (stderr of `rpm`, dnf's `dnf.rpm.log`).
    pub fn log(&self, level: c_int, msg: &str) {
        let text =
            CString::new(format!("pkgstream: {}\n", msg.replace('\0', " "))).unwrap_or_default();
        // SAFETY: "%s" with one valid C string argument.
        unsafe { (self.log)(level, c"%s".as_ptr(), text.as_ptr()) }
    }
}

/// A C string from librpm as an owned `String` (`None` for NULL).
///
/// # Safety
/// `p` is NULL or points to a NUL-terminated string that stays valid for
/// the duration of the call.
pub unsafe fn string(p: *const c_char) -> Option<String> {
    if p.is_null() {
        None
    } else {
        // SAFETY: guaranteed by the caller.
        Some(unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned())
    }
}
