//! Size limits on hook input, applied by `record` before anything is
//! encoded, so that what enters the spool can always be shipped, indexed
//! and shown. The rule (also in `producer/README.md`):
//!
//! - a hook line longer than [`MAX_LINE_BYTES`] is refused (it is not read
//!   whole; its first [`crate::spool::DEAD_LETTER_INPUT_BYTES`] are kept in
//!   the spool's dead letters);
//! - an **identity** field longer than its limit refuses the change (or
//!   leaves the package out of a snapshot): cutting a name or a version
//!   would report a different package, and the event id is built from them;
//! - a **text** field longer than its limit is cut at a character boundary
//!   and ends with [`TRUNCATION_MARK`] and the original size, so the cut is
//!   visible wherever the value is shown;
//! - a `digest` longer than its limit is dropped (a cut digest would be
//!   false; no digest is merely unknown).
//!
//! Every refusal, cut and drop names the field (`package.name`,
//! `packages[12].version`, `transaction.command_line`).

use crate::input::{ChangeInput, HostInput, InventoryInput, PackageInput, TransactionInput};

/// Longest hook line `record` reads, in bytes (a snapshot of 100,000
/// packages is about 25 MiB of JSON).
pub const MAX_LINE_BYTES: usize = 64 << 20;
/// Longest package name, version or release, in bytes (identity: refused).
pub const MAX_NEVRA_FIELD_BYTES: usize = 256;
/// Longest package architecture, in bytes (identity: refused).
pub const MAX_ARCH_BYTES: usize = 64;
/// Longest host machine id, in bytes (identity: refused).
pub const MAX_MACHINE_ID_BYTES: usize = 256;
/// Longest digest (`algo:hex`), in bytes (dropped when longer).
pub const MAX_DIGEST_BYTES: usize = 256;
/// Longest repository id or vendor, in bytes (text: cut).
pub const MAX_LABEL_BYTES: usize = 1024;
/// Longest transaction command line, in bytes (text: cut).
pub const MAX_COMMAND_LINE_BYTES: usize = 4096;
/// Longest login user, hostname, OS id or OS version, in bytes (text: cut).
pub const MAX_NAME_BYTES: usize = 256;
/// Most packages in one snapshot line.
pub const MAX_SNAPSHOT_PACKAGES: usize = 200_000;

/// What ends a cut value, followed by the original size: `… [cut by
/// pkgstream from 10485760 bytes]`.
pub const TRUNCATION_MARK: &str = "… [cut by pkgstream from ";

/// What the limits did to one event that was kept.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Adjusted {
    /// One line per cut or dropped field, naming it.
    pub notes: Vec<String>,
    /// Packages left out of a snapshot, one line each, naming the field.
    pub left_out: Vec<String>,
}

/// Applies the limits to a change: `Err` names the identity field that
/// refuses it; otherwise the notes say what was cut or dropped.
pub fn check_change(c: &mut ChangeInput) -> Result<Adjusted, String> {
    let mut adjusted = Adjusted::default();
    check_package(&mut c.package, "package", &mut adjusted.notes)?;
    if let Some(r) = &mut c.replaced {
        check_package(r, "replaced", &mut adjusted.notes)?;
    }
    check_transaction(&mut c.transaction, &mut adjusted.notes);
    if let Some(h) = &mut c.host {
        check_host(h, &mut adjusted.notes)?;
    }
    Ok(adjusted)
}

/// Applies the limits to a snapshot: packages whose identity is over a
/// limit are left out (each named in [`Adjusted::left_out`]); `Err` when
/// the snapshot as a whole cannot be kept.
pub fn check_inventory(s: &mut InventoryInput) -> Result<Adjusted, String> {
    if s.packages.len() > MAX_SNAPSHOT_PACKAGES {
        return Err(format!(
            "packages: {} packages, more than the {MAX_SNAPSHOT_PACKAGES} a snapshot may hold",
            s.packages.len()
        ));
    }
    let mut adjusted = Adjusted::default();
    if let Some(h) = &mut s.host {
        check_host(h, &mut adjusted.notes)?;
    }
    let mut index = 0usize;
    s.packages.retain_mut(|p| {
        let path = format!("packages[{index}]");
        index += 1;
        match check_package(p, &path, &mut adjusted.notes) {
            Ok(()) => true,
            Err(reason) => {
                adjusted.left_out.push(reason);
                false
            }
        }
    });
    Ok(adjusted)
}

fn check_package(p: &mut PackageInput, path: &str, notes: &mut Vec<String>) -> Result<(), String> {
    refuse_over(&p.name, MAX_NEVRA_FIELD_BYTES, path, "name")?;
    refuse_over(&p.version, MAX_NEVRA_FIELD_BYTES, path, "version")?;
    refuse_over(&p.release, MAX_NEVRA_FIELD_BYTES, path, "release")?;
    refuse_over(&p.arch, MAX_ARCH_BYTES, path, "arch")?;
    if let Some(d) = &p.digest {
        if d.len() > MAX_DIGEST_BYTES {
            notes.push(format!(
                "{path}.digest of {} bytes dropped (more than {MAX_DIGEST_BYTES})",
                d.len()
            ));
            p.digest = None;
        }
    }
    cut_opt(&mut p.repo, MAX_LABEL_BYTES, path, "repo", notes);
    cut_opt(&mut p.vendor, MAX_LABEL_BYTES, path, "vendor", notes);
    Ok(())
}

fn check_transaction(t: &mut TransactionInput, notes: &mut Vec<String>) {
    let path = "transaction";
    cut_opt(
        &mut t.command_line,
        MAX_COMMAND_LINE_BYTES,
        path,
        "command_line",
        notes,
    );
    cut_opt(&mut t.login_user, MAX_NAME_BYTES, path, "login_user", notes);
}

fn check_host(h: &mut HostInput, notes: &mut Vec<String>) -> Result<(), String> {
    if let Some(id) = &h.machine_id {
        refuse_over(id, MAX_MACHINE_ID_BYTES, "host", "machine_id")?;
    }
    cut_opt(&mut h.hostname, MAX_NAME_BYTES, "host", "hostname", notes);
    cut_opt(&mut h.os_id, MAX_NAME_BYTES, "host", "os_id", notes);
    cut_opt(
        &mut h.os_version,
        MAX_NAME_BYTES,
        "host",
        "os_version",
        notes,
    );
    cut_opt(&mut h.arch, MAX_ARCH_BYTES, "host", "arch", notes);
    Ok(())
}

fn refuse_over(value: &str, max: usize, path: &str, field: &str) -> Result<(), String> {
    if value.len() > max {
        return Err(format!(
            "{path}.{field} is {} bytes, more than the {max} allowed (an identity field is never cut)",
            value.len()
        ));
    }
    Ok(())
}

fn cut_opt(
    value: &mut Option<String>,
    max: usize,
    path: &str,
    field: &str,
    notes: &mut Vec<String>,
) {
    if let Some(v) = value {
        if let Some(original) = cut(v, max) {
            notes.push(format!(
                "{path}.{field} cut from {original} to {} bytes",
                v.len()
            ));
        }
    }
}

/// Cuts `value` to at most `max` bytes (at a character boundary), ending
/// with the truncation mark and the original size. Returns the original
/// size when it cut.
pub fn cut(value: &mut String, max: usize) -> Option<usize> {
    let original = value.len();
    if original <= max {
        return None;
    }
    let mark = format!("{TRUNCATION_MARK}{original} bytes]");
    let mut keep = max.saturating_sub(mark.len());
    while !value.is_char_boundary(keep) {
        keep -= 1;
    }
    value.truncate(keep);
    value.push_str(&mark);
    if value.len() > max {
        // `max` is smaller than the mark itself: keep what fits of the mark.
        let mut end = max;
        while !value.is_char_boundary(end) {
            end -= 1;
        }
        value.truncate(end);
    }
    Some(original)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::input::HookEvent;

    fn change(line: &str) -> ChangeInput {
        match HookEvent::parse(line).unwrap() {
            HookEvent::Change(c) => *c,
            HookEvent::Inventory(_) => panic!("not a change"),
        }
    }

    const LINE: &str = r#"{"kind":"change","source":"dnf","action":"install","package":{"name":"NAME","version":"1","release":"1","arch":"noarch","digest":"DIGEST"},"transaction":{"rpm_tid":1,"command_line":"CMD"}}"#;

    #[test]
    fn an_oversized_identity_field_refuses_the_change_and_names_it() {
        let mut c = change(&LINE.replace("NAME", &"n".repeat(10 << 20)));
        let err = check_change(&mut c).unwrap_err();
        assert_eq!(
            err,
            "package.name is 10485760 bytes, more than the 256 allowed (an identity field is never cut)"
        );
        let mut c = change(&LINE.replace("NAME", &"n".repeat(256)));
        assert_eq!(check_change(&mut c).unwrap(), Adjusted::default());
    }

    #[test]
    fn an_oversized_command_line_is_cut_with_a_visible_mark() {
        let mut c = change(&LINE.replace("CMD", &"é".repeat(5 << 20)));
        let adjusted = check_change(&mut c).unwrap();
        let cmd = c.transaction.command_line.unwrap();
        assert!(cmd.len() <= MAX_COMMAND_LINE_BYTES, "{}", cmd.len());
        assert!(cmd.len() > MAX_COMMAND_LINE_BYTES - 4, "{}", cmd.len());
        assert!(
            cmd.ends_with("… [cut by pkgstream from 10485760 bytes]"),
            "{}",
            &cmd[cmd.len() - 60..]
        );
        assert!(cmd.starts_with("éé"));
        assert_eq!(
            adjusted.notes,
            [format!(
                "transaction.command_line cut from 10485760 to {} bytes",
                cmd.len()
            )]
        );
    }

    #[test]
    fn an_oversized_digest_is_dropped_not_cut() {
        let mut c = change(&LINE.replace("DIGEST", &"a".repeat(300)));
        let adjusted = check_change(&mut c).unwrap();
        assert_eq!(c.package.digest, None);
        assert_eq!(
            adjusted.notes,
            ["package.digest of 300 bytes dropped (more than 256)"]
        );
    }

    #[test]
    fn a_snapshot_leaves_out_only_the_oversized_packages() {
        let line = format!(
            r#"{{"kind":"inventory","packages":[{{"name":"bash","version":"5","release":"1","arch":"x86_64"}},{{"name":"x","version":"{}","release":"1","arch":"x86_64"}},{{"name":"zsh","version":"5","release":"1","arch":"x86_64"}}]}}"#,
            "9".repeat(1000)
        );
        let HookEvent::Inventory(mut s) = HookEvent::parse(&line).unwrap() else {
            panic!("not a snapshot")
        };
        let adjusted = check_inventory(&mut s).unwrap();
        let names: Vec<&str> = s.packages.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["bash", "zsh"]);
        assert_eq!(
            adjusted.left_out,
            ["packages[1].version is 1000 bytes, more than the 256 allowed (an identity field is never cut)"]
        );
    }

    #[test]
    fn cut_respects_tiny_limits_and_char_boundaries() {
        let mut s = "ü".repeat(100);
        assert_eq!(cut(&mut s, 11), Some(200));
        assert!(s.len() <= 11 && s.is_char_boundary(s.len()));
        let mut short = "abc".to_owned();
        assert_eq!(cut(&mut short, 3), None);
        assert_eq!(short, "abc");
    }
}
