//! A hand-written positional codec for the *current* `PackageChange` version
//! (v1) and for the `Enrichment` record the router appends.
//!
//! serde_avro_fast goes through serde's by-name field protocol: every field
//! is handed over by name and matched against the schema, unions are looked
//! up by name, and the ~700-byte `PackageChange` moves through visitor
//! `Result`s. Avro itself needs none of that: a record is its fields in
//! schema order, so one schema version can be written and read as straight
//! code. That is what this module does, for the one record on the hot path.
//! [`super::decode_change`] and [`super::Encoder`] use it when the writer
//! (or current) schema is exactly the one written out here, and fall back to
//! serde_avro_fast with schema resolution otherwise.
//!
//! Wire rules followed (Avro 1.12 binary encoding): `fixed(16)` is 16 raw
//! bytes; `int`/`long` are zigzag varints (at most 10 bytes, the 10th at
//! most 1); a string is a long length then UTF-8 bytes; a `["null", X]`
//! union is a long branch index (0 null, 1 X) then X; an enum is a long
//! symbol index in the `.avsc` symbol order; a nested record is its fields
//! in order; a map is blocks of `count, (key, value)*` ended by a 0 count;
//! a boolean is one byte 0/1.
//!
//! The decoder borrows every string from the input (`Cow::Borrowed`),
//! validates UTF-8, bounds-checks every read and never panics: it returns
//! [`DecodeError`], which the caller turns into a [`SchemaError`] naming the
//! writer schema. Like the serde path, it refuses bytes after the datum: a
//! message is exactly one datum, which `append_enrichment` relies on when it
//! copies the raw datum.
//!
//! **If `PackageChange` (or `EnrichedChange`) gets a new version, this file
//! must be updated with it**: the `fast_path_matches_the_current_schema`
//! test fails until [`PACKAGE_CHANGE_FINGERPRINT`] and
//! `PACKAGE_CHANGE_CANONICAL` (and their `Enrichment` twins) describe the
//! current schema; until then the codec quietly uses the serde path for the
//! new version (see `Encoder::new`). Property tests in
//! `tests/fast_path_props.rs` check this codec byte for byte against
//! serde_avro_fast.

use std::borrow::Cow;
use std::fmt;

use crate::event::{
    Action, Enrichment, EventId, Host, Package, PackageChange, Source, Transaction,
};

/// CRC-64-AVRO fingerprint (single-object header order) of
/// `avro/PackageChange/v1.avsc`, the schema this module writes and reads
/// (`5488692bee11641f` in `avro/FINGERPRINTS`).
pub(crate) const PACKAGE_CHANGE_FINGERPRINT: [u8; 8] =
    [0x54, 0x88, 0x69, 0x2b, 0xee, 0x11, 0x64, 0x1f];

/// Version number of `PackageChange` this module implements.
#[cfg(test)]
pub(crate) const PACKAGE_CHANGE_VERSION: u32 = 1;

/// CRC-64-AVRO fingerprint of the `Enrichment` record (the last field of
/// `avro/EnrichedChange/v1.avsc` and `EnrichedSnapshot/v1.avsc`) as the
/// registry parses it on its own, i.e. without the enclosing namespace.
/// Never on the wire; only compared with the registry's.
pub(crate) const ENRICHMENT_FINGERPRINT: [u8; 8] = [0x8e, 0xf3, 0x6b, 0xfe, 0x4e, 0x0f, 0xba, 0xe3];

/// What this module was written against: the parsing canonical form of
/// `PackageChange` v1 as apache-avro prints it. A test compares it with the
/// current `.avsc` so that a changed schema shows as a readable diff.
#[cfg(test)]
pub(crate) const PACKAGE_CHANGE_CANONICAL: &str = concat!(
    r#"{"name":"io.pkgstream.PackageChange","type":"record","fields":["#,
    r#"{"name":"event_id","type":{"name":"io.pkgstream.EventId","type":"fixed","size":16}},"#,
    r#"{"name":"event_time","type":{"type":"long"}},"#,
    r#"{"name":"host","type":{"name":"io.pkgstream.Host","type":"record","fields":["#,
    r#"{"name":"machine_id","type":"string"},{"name":"hostname","type":"string"},{"name":"os_id","type":"string"},"#,
    r#"{"name":"os_version","type":"string"},{"name":"arch","type":"string"}]}},"#,
    r#"{"name":"source","type":{"name":"io.pkgstream.Source","type":"enum","symbols":["DNF","YUM","RPM","INVENTORY"]}},"#,
    r#"{"name":"action","type":{"name":"io.pkgstream.Action","type":"enum","symbols":["INSTALL","UPGRADE","DOWNGRADE","REINSTALL","REMOVE","OBSOLETE"]}},"#,
    r#"{"name":"package","type":{"name":"io.pkgstream.Package","type":"record","fields":["#,
    r#"{"name":"name","type":"string"},{"name":"epoch","type":["null","int"]},{"name":"version","type":"string"},"#,
    r#"{"name":"release","type":"string"},{"name":"arch","type":"string"},{"name":"repo","type":["null","string"]},"#,
    r#"{"name":"vendor","type":["null","string"]},"#,
    r#"{"name":"buildtime","type":["null",{"type":"long"}]},"#,
    r#"{"name":"install_time","type":["null",{"type":"long"}]},"#,
    r#"{"name":"size","type":["null","long"]},{"name":"digest","type":["null","string"]}]}},"#,
    r#"{"name":"replaced","type":["null","io.pkgstream.Package"]},"#,
    r#"{"name":"transaction","type":{"name":"io.pkgstream.Transaction","type":"record","fields":["#,
    r#"{"name":"rpm_tid","type":"long"},{"name":"history_id","type":["null","long"]},"#,
    r#"{"name":"command_line","type":["null","string"]},{"name":"login_user","type":["null","string"]},"#,
    r#"{"name":"start_time","type":["null",{"type":"long"}]}]}}]}"#,
);

/// The `Enrichment` record this module writes, like [`PACKAGE_CHANGE_CANONICAL`].
#[cfg(test)]
pub(crate) const ENRICHMENT_CANONICAL: &str = concat!(
    r#"{"name":"Enrichment","type":"record","fields":["#,
    r#"{"name":"hostgroup","type":"string"},{"name":"environment","type":"string"},"#,
    r#"{"name":"owner","type":["null","string"]},{"name":"datacenter","type":["null","string"]},"#,
    r#"{"name":"tags","type":{"type":"map","values":"string"}},{"name":"known_host","type":"boolean"},"#,
    r#"{"name":"outside_maintenance_window","type":"boolean"},{"name":"unexplained_rpm","type":"boolean"},"#,
    r#"{"name":"routed_at","type":{"type":"long"}}]}"#,
);

// ---------------------------------------------------------------- encode

/// Appends the Avro datum (no header) of `c` to `out`, as
/// `PackageChange` v1. Infallible: every Rust value has an encoding.
pub(crate) fn encode_change(c: &PackageChange<'_>, out: &mut Vec<u8>) {
    out.reserve(max_change_len(c));
    let w = out;
    w.extend_from_slice(&c.event_id.0);
    long(w, c.event_time);
    let h = &c.host;
    for s in [&h.machine_id, &h.hostname, &h.os_id, &h.os_version, &h.arch] {
        string(w, s);
    }
    long(w, source_index(c.source));
    long(w, action_index(c.action));
    package(w, &c.package);
    match &c.replaced {
        None => w.push(0),
        Some(p) => {
            w.push(2);
            package(w, p);
        }
    }
    let t = &c.transaction;
    long(w, t.rpm_tid);
    opt_long(w, t.history_id);
    opt_string(w, t.command_line.as_deref());
    opt_string(w, t.login_user.as_deref());
    opt_long(w, t.start_time);
}

/// Appends the Avro datum of `e` as the `Enrichment` record.
pub(crate) fn encode_enrichment(e: &Enrichment<'_>, out: &mut Vec<u8>) {
    let w = out;
    string(w, &e.hostgroup);
    string(w, &e.environment);
    opt_string(w, e.owner.as_deref());
    opt_string(w, e.datacenter.as_deref());
    if !e.tags.is_empty() {
        // One block with every entry, as serde_avro_fast writes it.
        long(w, i64::try_from(e.tags.len()).unwrap_or(i64::MAX));
        for (k, v) in e.tags.iter() {
            string(w, k);
            string(w, v);
        }
    }
    w.push(0);
    w.push(u8::from(e.known_host));
    w.push(u8::from(e.outside_maintenance_window));
    w.push(u8::from(e.unexplained_rpm));
    long(w, e.routed_at);
}

/// An upper bound of the encoded size, so that `out` grows at most once.
fn max_change_len(c: &PackageChange<'_>) -> usize {
    const VARINT: usize = 10;
    fn opt(s: &Option<Cow<'_, str>>) -> usize {
        s.as_ref().map_or(0, |s| s.len())
    }
    fn package(p: &Package<'_>) -> usize {
        // 11 fields: at most a branch byte and a varint each, plus text.
        11 * (1 + VARINT)
            + p.name.len()
            + p.version.len()
            + p.release.len()
            + p.arch.len()
            + opt(&p.repo)
            + opt(&p.vendor)
            + opt(&p.digest)
    }
    let h = &c.host;
    let t = &c.transaction;
    16 + 8 * VARINT
        + h.machine_id.len()
        + h.hostname.len()
        + h.os_id.len()
        + h.os_version.len()
        + h.arch.len()
        + package(&c.package)
        + 1
        + c.replaced.as_ref().map_or(0, package)
        + 4 * (1 + VARINT)
        + opt(&t.command_line)
        + opt(&t.login_user)
}

fn source_index(s: Source) -> i64 {
    // The symbol order of the .avsc: DNF, YUM, RPM, INVENTORY.
    match s {
        Source::Dnf => 0,
        Source::Yum => 1,
        Source::Rpm => 2,
        Source::Inventory => 3,
    }
}

fn action_index(a: Action) -> i64 {
    // The symbol order of the .avsc: INSTALL, UPGRADE, DOWNGRADE,
    // REINSTALL, REMOVE, OBSOLETE.
    match a {
        Action::Install => 0,
        Action::Upgrade => 1,
        Action::Downgrade => 2,
        Action::Reinstall => 3,
        Action::Remove => 4,
        Action::Obsolete => 5,
    }
}

#[inline]
fn long(w: &mut Vec<u8>, n: i64) {
    let mut z = ((n << 1) ^ (n >> 63)) as u64;
    while z >= 0x80 {
        w.push(z as u8 | 0x80);
        z >>= 7;
    }
    w.push(z as u8);
}

#[inline]
fn string(w: &mut Vec<u8>, s: &str) {
    // A `str` is at most isize::MAX bytes, so the length fits an i64.
    long(w, s.len() as i64);
    w.extend_from_slice(s.as_bytes());
}

#[inline]
fn opt_long(w: &mut Vec<u8>, v: Option<i64>) {
    match v {
        None => w.push(0),
        Some(v) => {
            w.push(2);
            long(w, v);
        }
    }
}

#[inline]
fn opt_string(w: &mut Vec<u8>, v: Option<&str>) {
    match v {
        None => w.push(0),
        Some(s) => {
            w.push(2);
            string(w, s);
        }
    }
}

fn package(w: &mut Vec<u8>, p: &Package<'_>) {
    string(w, &p.name);
    opt_long(w, p.epoch.map(i64::from));
    string(w, &p.version);
    string(w, &p.release);
    string(w, &p.arch);
    opt_string(w, p.repo.as_deref());
    opt_string(w, p.vendor.as_deref());
    opt_long(w, p.buildtime);
    opt_long(w, p.install_time);
    opt_long(w, p.size);
    opt_string(w, p.digest.as_deref());
}

// ---------------------------------------------------------------- decode

/// Why a datum could not be read. Small and `Copy` so that the hot path's
/// `Result`s stay small; turned into a [`crate::SchemaError`] by the caller.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum DecodeError {
    /// The datum ended before the schema was satisfied.
    Truncated,
    /// A complete datum followed by this many more bytes.
    Trailing(usize),
    /// Bytes that do not follow the schema, at `field`.
    Malformed {
        /// Path of the field being read, e.g. `package.repo`.
        field: &'static str,
        /// What was wrong.
        problem: Problem,
    },
}

/// The ways bytes can break the schema (besides ending early).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Problem {
    /// A varint of more than 64 bits.
    VarintOverflow,
    /// A string length below zero.
    NegativeLength(i64),
    /// String bytes that are not UTF-8.
    InvalidUtf8,
    /// A `["null", X]` union branch other than 0 or 1.
    UnionIndex(i64),
    /// An enum index outside its symbols.
    EnumIndex {
        /// The index read.
        index: i64,
        /// How many symbols the enum has.
        symbols: usize,
    },
    /// An `int` outside the 32-bit range.
    IntOutOfRange(i64),
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Problem::VarintOverflow => f.write_str("varint longer than 64 bits"),
            Problem::NegativeLength(n) => write!(f, "negative string length {n}"),
            Problem::InvalidUtf8 => f.write_str("string is not valid UTF-8"),
            Problem::UnionIndex(i) => write!(f, "union branch {i}, expected 0 (null) or 1"),
            Problem::EnumIndex { index, symbols } => {
                write!(f, "enum index {index}, expected 0..{symbols}")
            }
            Problem::IntOutOfRange(n) => write!(f, "int {n} out of the 32-bit range"),
        }
    }
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DecodeError::Truncated => f.write_str("datum ends early"),
            DecodeError::Trailing(n) => write!(f, "{n} byte(s) after the datum"),
            DecodeError::Malformed { field, problem } => write!(f, "{field}: {problem}"),
        }
    }
}

type Result<T> = std::result::Result<T, DecodeError>;

#[cold]
fn malformed<T>(field: &'static str, problem: Problem) -> Result<T> {
    Err(DecodeError::Malformed { field, problem })
}

#[cold]
fn truncated<T>() -> Result<T> {
    Err(DecodeError::Truncated)
}

/// Field paths of the two `Package` fields, for messages.
struct PackagePaths {
    name: &'static str,
    epoch: &'static str,
    version: &'static str,
    release: &'static str,
    arch: &'static str,
    repo: &'static str,
    vendor: &'static str,
    buildtime: &'static str,
    install_time: &'static str,
    size: &'static str,
    digest: &'static str,
}

macro_rules! package_paths {
    ($p:literal) => {
        PackagePaths {
            name: concat!($p, ".name"),
            epoch: concat!($p, ".epoch"),
            version: concat!($p, ".version"),
            release: concat!($p, ".release"),
            arch: concat!($p, ".arch"),
            repo: concat!($p, ".repo"),
            vendor: concat!($p, ".vendor"),
            buildtime: concat!($p, ".buildtime"),
            install_time: concat!($p, ".install_time"),
            size: concat!($p, ".size"),
            digest: concat!($p, ".digest"),
        }
    };
}

const PACKAGE: PackagePaths = package_paths!("package");
const REPLACED: PackagePaths = package_paths!("replaced");

struct Reader<'b> {
    rest: &'b [u8],
}

impl<'b> Reader<'b> {
    #[inline(always)]
    fn long(&mut self, field: &'static str) -> Result<i64> {
        // Most values on the wire (lengths, branches, enums) are one byte.
        if let [b, rest @ ..] = self.rest {
            if *b < 0x80 {
                self.rest = rest;
                return Ok(unzigzag(u64::from(*b)));
            }
        }
        self.long_slow(field)
    }

    #[inline(never)]
    fn long_slow(&mut self, field: &'static str) -> Result<i64> {
        let mut z = 0u64;
        for (k, &b) in self.rest.iter().enumerate() {
            if k == 9 {
                // Bits 63.. : only the lowest may be set, and it must end.
                if b > 1 {
                    return malformed(field, Problem::VarintOverflow);
                }
                self.rest = &self.rest[10..];
                return Ok(unzigzag(z | (u64::from(b) << 63)));
            }
            z |= u64::from(b & 0x7f) << (7 * k);
            if b < 0x80 {
                self.rest = &self.rest[k + 1..];
                return Ok(unzigzag(z));
            }
        }
        truncated()
    }

    #[inline]
    fn int(&mut self, field: &'static str) -> Result<i32> {
        let n = self.long(field)?;
        match i32::try_from(n) {
            Ok(v) => Ok(v),
            Err(_) => malformed(field, Problem::IntOutOfRange(n)),
        }
    }

    #[inline(always)]
    fn str(&mut self, field: &'static str) -> Result<Cow<'b, str>> {
        let n = self.long(field)?;
        let Ok(len) = usize::try_from(n) else {
            return malformed(field, Problem::NegativeLength(n));
        };
        if len > self.rest.len() {
            return truncated();
        }
        let (bytes, rest) = self.rest.split_at(len);
        self.rest = rest;
        match utf8(bytes) {
            Some(s) => Ok(Cow::Borrowed(s)),
            None => malformed(field, Problem::InvalidUtf8),
        }
    }

    /// The branch of a `["null", X]` union: `false` for null.
    #[inline(always)]
    fn present(&mut self, field: &'static str) -> Result<bool> {
        match self.long(field)? {
            0 => Ok(false),
            1 => Ok(true),
            i => malformed(field, Problem::UnionIndex(i)),
        }
    }

    #[inline(always)]
    fn opt_long(&mut self, field: &'static str) -> Result<Option<i64>> {
        Ok(if self.present(field)? {
            Some(self.long(field)?)
        } else {
            None
        })
    }

    #[inline(always)]
    fn opt_str(&mut self, field: &'static str) -> Result<Option<Cow<'b, str>>> {
        Ok(if self.present(field)? {
            Some(self.str(field)?)
        } else {
            None
        })
    }

    #[inline]
    fn enum_index(&mut self, field: &'static str, symbols: usize) -> Result<usize> {
        let index = self.long(field)?;
        match usize::try_from(index) {
            Ok(i) if i < symbols => Ok(i),
            _ => malformed(field, Problem::EnumIndex { index, symbols }),
        }
    }

    fn event_id(&mut self) -> Result<EventId> {
        match self.rest.split_first_chunk::<16>() {
            Some((id, rest)) => {
                self.rest = rest;
                Ok(EventId(*id))
            }
            None => truncated(),
        }
    }

    #[inline(always)]
    fn package(&mut self, p: &PackagePaths) -> Result<Package<'b>> {
        Ok(Package {
            name: self.str(p.name)?,
            epoch: if self.present(p.epoch)? {
                Some(self.int(p.epoch)?)
            } else {
                None
            },
            version: self.str(p.version)?,
            release: self.str(p.release)?,
            arch: self.str(p.arch)?,
            repo: self.opt_str(p.repo)?,
            vendor: self.opt_str(p.vendor)?,
            buildtime: self.opt_long(p.buildtime)?,
            install_time: self.opt_long(p.install_time)?,
            size: self.opt_long(p.size)?,
            digest: self.opt_str(p.digest)?,
        })
    }
}

/// `bytes` as `&str` if they are UTF-8. Nearly every string in a change
/// (NEVRA, host, digest) is short ASCII: checking that inline, 8 bytes at a
/// time, is several times cheaper than the out-of-line `str::from_utf8`
/// (or `<[u8]>::is_ascii`) call, which remains the check for the rest.
#[inline(always)]
fn utf8(bytes: &[u8]) -> Option<&str> {
    if is_ascii(bytes) {
        // SAFETY: every ASCII byte sequence is valid UTF-8.
        Some(unsafe { std::str::from_utf8_unchecked(bytes) })
    } else {
        std::str::from_utf8(bytes).ok()
    }
}

#[inline(always)]
fn is_ascii(bytes: &[u8]) -> bool {
    let (words, tail) = bytes.as_chunks::<8>();
    let mut high = 0u64;
    for w in words {
        high |= u64::from_ne_bytes(*w);
    }
    for &b in tail {
        high |= u64::from(b);
    }
    high & 0x8080_8080_8080_8080 == 0
}

#[inline(always)]
fn unzigzag(z: u64) -> i64 {
    (z >> 1) as i64 ^ -((z & 1) as i64)
}

/// Reads a `PackageChange` v1 datum (no header), borrowing strings from
/// `datum`, which must hold that datum and nothing else. Does not validate
/// the semantics: the caller does.
pub(crate) fn decode_change(datum: &[u8]) -> Result<PackageChange<'_>> {
    let mut r = Reader { rest: datum };
    let event_id = r.event_id()?;
    let event_time = r.long("event_time")?;
    let host = Host {
        machine_id: r.str("host.machine_id")?,
        hostname: r.str("host.hostname")?,
        os_id: r.str("host.os_id")?,
        os_version: r.str("host.os_version")?,
        arch: r.str("host.arch")?,
    };
    const SOURCES: [Source; 4] = [Source::Dnf, Source::Yum, Source::Rpm, Source::Inventory];
    const ACTIONS: [Action; 6] = [
        Action::Install,
        Action::Upgrade,
        Action::Downgrade,
        Action::Reinstall,
        Action::Remove,
        Action::Obsolete,
    ];
    let source = SOURCES[r.enum_index("source", SOURCES.len())?];
    let action = ACTIONS[r.enum_index("action", ACTIONS.len())?];
    let package = r.package(&PACKAGE)?;
    let replaced = if r.present("replaced")? {
        Some(r.package(&REPLACED)?)
    } else {
        None
    };
    let transaction = Transaction {
        rpm_tid: r.long("transaction.rpm_tid")?,
        history_id: r.opt_long("transaction.history_id")?,
        command_line: r.opt_str("transaction.command_line")?,
        login_user: r.opt_str("transaction.login_user")?,
        start_time: r.opt_long("transaction.start_time")?,
    };
    if !r.rest.is_empty() {
        return Err(DecodeError::Trailing(r.rest.len()));
    }
    Ok(PackageChange {
        event_id,
        event_time,
        host,
        source,
        action,
        package,
        replaced,
        transaction,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::codec::{Kind, Registry};
    use crate::sample;

    fn canonical(json: &str) -> String {
        apache_avro::Schema::parse_str(json)
            .map(|s| s.canonical_form())
            .unwrap_or_else(|e| format!("does not parse: {e}"))
    }

    /// The drift guard: this module writes `PackageChange` v1 field by field.
    /// When the current schema changes, this test fails until the module is
    /// updated (and the codec meanwhile falls back to the serde path).
    #[test]
    fn fast_path_matches_the_current_schema() {
        let r = Registry::get();
        let current = r.current(Kind::PackageChange);
        let todo = "schemas/src/codec/fast.rs writes and reads PackageChange by hand and no longer matches the current \
                    .avsc. Update encode_change/decode_change for the new fields (order, types, enum symbols), then \
                    PACKAGE_CHANGE_FINGERPRINT, PACKAGE_CHANGE_VERSION and PACKAGE_CHANGE_CANONICAL, and run \
                    tests/fast_path_props.rs. Until then the codec uses the (slower) serde path";
        assert_eq!(canonical(current.json), PACKAGE_CHANGE_CANONICAL, "{todo}");
        assert_eq!(current.fingerprint, PACKAGE_CHANGE_FINGERPRINT, "{todo}");
        assert_eq!(current.version, PACKAGE_CHANGE_VERSION, "{todo}");

        let enrichment = r.enrichment_schema();
        let todo = "schemas/src/codec/fast.rs writes the Enrichment record by hand and no longer matches the current \
                    EnrichedChange .avsc. Update encode_enrichment, then ENRICHMENT_FINGERPRINT and ENRICHMENT_CANONICAL";
        assert_eq!(
            canonical(&super::super::enrichment_schema_json(
                r.current(Kind::EnrichedChange).json
            )),
            ENRICHMENT_CANONICAL,
            "{todo}"
        );
        assert_eq!(
            *enrichment.rabin_fingerprint(),
            ENRICHMENT_FINGERPRINT,
            "{todo}"
        );
        assert_eq!(
            hex::encode(PACKAGE_CHANGE_FINGERPRINT),
            "5488692bee11641f",
            "the golden value in avro/FINGERPRINTS"
        );
    }

    #[test]
    fn ascii_check_agrees_with_std() {
        for len in 0..40 {
            let mut bytes = vec![b'a'; len];
            assert!(is_ascii(&bytes));
            for at in 0..len {
                for high in [0x80, 0xc3, 0xff] {
                    bytes[at] = high;
                    assert!(!is_ascii(&bytes), "len {len}, byte {at} = {high:#x}");
                    assert_eq!(utf8(&bytes), std::str::from_utf8(&bytes).ok());
                }
                bytes[at] = 0x7f;
                assert!(is_ascii(&bytes));
                bytes[at] = b'a';
            }
        }
        assert_eq!(utf8("é".as_bytes()), Some("é"));
    }

    #[test]
    fn truncation_anywhere_is_truncated() {
        let mut out = Vec::new();
        encode_change(&sample::change(1), &mut out);
        assert_eq!(decode_change(&out), Ok(sample::change(1)));
        for n in 0..out.len() {
            assert_eq!(
                decode_change(&out[..n]),
                Err(DecodeError::Truncated),
                "cut at {n}"
            );
        }
    }

    #[test]
    fn each_malformation_names_its_field() {
        let mut good = Vec::new();
        encode_change(&sample::change(1), &mut good);
        // event_id (16) then event_time: a varint of 10 bytes whose last
        // carries more than bit 63.
        let mut overflow = good[..16].to_vec();
        overflow.extend_from_slice(&[0xff; 9]);
        overflow.push(0x02);
        overflow.extend_from_slice(&good[16..]);
        let e = decode_change(&overflow).unwrap_err();
        assert_eq!(
            e,
            DecodeError::Malformed {
                field: "event_time",
                problem: Problem::VarintOverflow
            }
        );
        assert_eq!(e.to_string(), "event_time: varint longer than 64 bits");

        // The largest 10-byte varint is fine (i64::MIN zigzagged).
        let mut min = good[..16].to_vec();
        long(&mut min, i64::MIN);
        assert_eq!(min.len(), 26);
        assert_eq!(Reader { rest: &min[16..] }.long("x"), Ok(i64::MIN));

        let at = |needle: &[u8]| {
            good.windows(needle.len())
                .position(|w| w == needle)
                .unwrap()
        };
        let id = sample::change(1).host.machine_id.into_owned();
        let m = at(id.as_bytes());
        let mut neg = good.clone();
        neg[m - 1] = 0x01;
        assert_eq!(
            decode_change(&neg).unwrap_err().to_string(),
            "host.machine_id: negative string length -1"
        );
        let mut utf8 = good.clone();
        utf8[m] = 0xff;
        assert_eq!(
            decode_change(&utf8).unwrap_err().to_string(),
            "host.machine_id: string is not valid UTF-8"
        );

        // After the 5 host strings: source (DNF = 0) then action (UPGRADE = 1 → 0x02).
        let src = m + id.len() + 1 + "web-00001.dc1".len() + 1 + 4 + 1 + 3 + 1 + 6;
        assert_eq!(&good[src..src + 2], &[0x00, 0x02]);
        let mut bad_source = good.clone();
        bad_source[src] = 0x08;
        assert_eq!(
            decode_change(&bad_source).unwrap_err().to_string(),
            "source: enum index 4, expected 0..4"
        );
        let mut bad_action = good.clone();
        bad_action[src + 1] = 0x01;
        assert_eq!(
            decode_change(&bad_action).unwrap_err().to_string(),
            "action: enum index -1, expected 0..6"
        );

        // package.name, then package.epoch's branch (1 → 0x02).
        let epoch = src + 2 + 1 + sample::change(1).package.name.len();
        assert_eq!(good[epoch], 0x02);
        let mut bad_union = good.clone();
        bad_union[epoch] = 0x04;
        assert_eq!(
            decode_change(&bad_union).unwrap_err().to_string(),
            "package.epoch: union branch 2, expected 0 (null) or 1"
        );
        let mut big_int = good[..epoch + 1].to_vec();
        long(&mut big_int, i64::from(i32::MAX) + 1);
        big_int.extend_from_slice(&good[epoch + 2..]);
        assert_eq!(
            decode_change(&big_int).unwrap_err().to_string(),
            "package.epoch: int 2147483648 out of the 32-bit range"
        );
    }

    #[test]
    fn enrichment_bytes_equal_serde() {
        let schema = Registry::get().enrichment_schema();
        for i in 0..10 {
            let mut e = sample::enrichment(i);
            if i % 3 == 0 {
                e.tags.to_mut().clear();
                e.owner = None;
            }
            let mut fast = Vec::new();
            encode_enrichment(&e, &mut fast);
            let serde = serde_avro_fast::to_datum_vec(
                &e,
                &mut serde_avro_fast::ser::SerializerConfig::new(schema),
            )
            .unwrap();
            assert_eq!(fast, serde);
        }
    }
}
