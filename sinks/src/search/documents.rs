//! Per-event functions: an enriched change or snapshot → bulk items (action
//! line + body line, NDJSON). Pure, no I/O; unit-tested below and benched
//! in `benches/benches/sink.rs`.
//!
//! Three indices (names under `index_prefix`, default `pkgstream`):
//! - `<p>-changes-YYYY.MM` (month of the event time): the history, one
//!   document per change, `_id` = event id, op `create` so a duplicate is a
//!   harmless 409. Monthly indices chosen by the *event* time (not a data
//!   stream's rollover) keep a duplicate in the index of its original, so it
//!   stays a 409 even months later in a replay.
//! - `<p>-packages`: current state, `_id` = `<machine_id>/<name>.<arch>`,
//!   written by stored scripts that compare event times, so a late or
//!   replayed event never overwrites newer state.
//! - `<p>-hosts`: one document per host, `_id` = machine id.
//!
//! Field names follow ECS where ECS has one (`host.name`, `package.name`,
//! `package.architecture`, `user.name`, `process.command_line`, `labels`);
//! our extensions (`package.epoch`, `package.release`, `package.repo`,
//! `package.vendor`, `package.evr`, `package.evr_sort`) and the enrichment
//! (`pkgstream.*`) sit beside them.

use std::collections::BTreeMap;

use pkgstream_schemas::{
    Action, EnrichedChange, EnrichedSnapshot, Enrichment, Host, Package, Source,
};
use serde::ser::{Serialize, SerializeMap, Serializer};

/// Stored script: upsert a package document unless it holds a newer event.
pub const SCRIPT_PACKAGE_UPSERT: &str = "pkgstream-package-upsert";
/// Stored script: delete a package document if it holds the removed
/// version and no newer event.
pub const SCRIPT_PACKAGE_REMOVE: &str = "pkgstream-package-remove";
/// Stored script: update a host document (last seen; snapshot facts).
pub const SCRIPT_HOST: &str = "pkgstream-host";
/// Stored script: rewrite a package document's `package.evr_sort` if it
/// still holds the version the key was computed for (documents an older
/// sink wrote with another key); creates nothing.
pub const SCRIPT_PACKAGE_SORT_KEY: &str = "pkgstream-package-sort-key";

/// The stored scripts (id, painless source), installed at start-up.
pub const SCRIPTS: [(&str, &str); 4] = [
    (
        SCRIPT_PACKAGE_UPSERT,
        "if (ctx._source.event_time_us != null && ctx._source.event_time_us > params.d.event_time_us) { ctx.op = 'none' } \
         else { ctx._source.clear(); ctx._source.putAll(params.d) }",
    ),
    (
        SCRIPT_PACKAGE_REMOVE,
        "if (ctx._source.event_time_us == null || ctx._source.event_time_us > params.t || ctx._source.package.evr != params.evr) { ctx.op = 'none' } \
         else { ctx.op = 'delete' }",
    ),
    (
        SCRIPT_HOST,
        "def s = ctx._source; boolean changed = false; \
         if (s.last_seen_us == null || params.t >= s.last_seen_us) { s.last_seen_us = params.t; s.last_seen = params.ts; s.host = params.host; s.pkgstream = params.p; changed = true } \
         if (params.snap != null && (s.last_snapshot_us == null || params.t > s.last_snapshot_us)) { s.last_snapshot_us = params.t; s.last_snapshot = params.ts; s.package_count = params.snap.count; s.drift_count = params.snap.drift; changed = true } \
         if (!changed) { ctx.op = 'none' }",
    ),
    (
        SCRIPT_PACKAGE_SORT_KEY,
        "if (ctx._source.package == null || ctx._source.package.evr != params.evr || ctx._source.package.evr_sort == params.key) { ctx.op = 'none' } \
         else { ctx._source.package.evr_sort = params.key }",
    ),
];

/// The kind of a bulk item, which decides how its status is read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ItemKind {
    /// `create` of a change document (409 = already there).
    Change,
    /// Scripted update of a package document.
    Package,
    /// Scripted update of a host document.
    Host,
}

/// Index names under one prefix.
#[derive(Clone, Debug)]
pub struct Indices {
    prefix: String,
    packages: String,
    hosts: String,
}

impl Indices {
    /// Names under `prefix`.
    pub fn new(prefix: &str) -> Indices {
        Indices {
            prefix: prefix.to_owned(),
            packages: format!("{prefix}-packages"),
            hosts: format!("{prefix}-hosts"),
        }
    }

    /// The prefix.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Pattern of the change indices (`<p>-changes-*`).
    pub fn changes_pattern(&self) -> String {
        format!("{}-changes-*", self.prefix)
    }

    /// The change index of an event time (µs): `<p>-changes-YYYY.MM`.
    pub fn changes(&self, event_time_us: i64) -> String {
        let (y, m) = year_month(event_time_us);
        format!("{}-changes-{y:04}.{m:02}", self.prefix)
    }

    /// The current-state index.
    pub fn packages(&self) -> &str {
        &self.packages
    }

    /// The host index.
    pub fn hosts(&self) -> &str {
        &self.hosts
    }
}

fn year_month(us: i64) -> (i32, u32) {
    use chrono::Datelike;
    let t = chrono::DateTime::from_timestamp_micros(us).unwrap_or_default();
    (t.year(), t.month())
}

/// A timestamp in µs, serialized as RFC 3339 with microseconds.
#[derive(Clone, Copy)]
struct Ts(i64);

impl Serialize for Ts {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let buf = rfc3339_micros(self.0);
        // The buffer holds ASCII digits and separators only.
        s.serialize_str(std::str::from_utf8(&buf).unwrap_or("1970-01-01T00:00:00.000000Z"))
    }
}

/// `YYYY-MM-DDTHH:MM:SS.ffffffZ` without a format-string interpreter (the
/// hot path writes several per event).
fn rfc3339_micros(us: i64) -> [u8; 27] {
    use chrono::{Datelike, Timelike};
    let t = chrono::DateTime::from_timestamp_micros(us).unwrap_or_default();
    let mut b = *b"0000-00-00T00:00:00.000000Z";
    let mut put = |at: usize, width: usize, mut v: u32| {
        for i in (at..at + width).rev() {
            b[i] = b'0' + (v % 10) as u8;
            v /= 10;
        }
    };
    put(0, 4, t.year().clamp(0, 9999) as u32);
    put(5, 2, t.month());
    put(8, 2, t.day());
    put(11, 2, t.hour());
    put(14, 2, t.minute());
    put(17, 2, t.second());
    put(20, 6, us.rem_euclid(1_000_000) as u32);
    b
}

/// `E:V-R` (epoch 0 when absent), the version identity of a package.
pub fn evr(p: &Package<'_>) -> String {
    format!("{}:{}-{}", p.epoch.unwrap_or(0), p.version, p.release)
}

/// A key that, compared bytewise (a `keyword` in the engine), orders
/// packages exactly as rpm does (`pkgstream_schemas::rpmvercmp::evrcmp`):
/// epoch, then version, then release, each compared like `rpmvercmp`.
///
/// A version is read as rpm reads it — separators (anything but ASCII
/// letters, digits, `~` and `^`) skipped, runs of digits and runs of
/// letters as segments — and each token written with a tag that sorts in
/// rpm's order: `~` (`!`) < end of the version (`#`) < `^` (`%`) < a
/// letter segment (`+letters,`) < a numeric segment (`.` then its length
/// without leading zeros, itself prefixed by its digit count, then the
/// digits). So `1.0~rc1` < `1.0` < `1.0^git1` < `1.0a` < `1.0.1`, `1.01` =
/// `1.1`, and `10` > `9`. The epoch is a numeric segment (`-` and an
/// offset for a negative one, which validation refuses anyway):
/// `1:5.14.0-427.el9` → `.111:.115.1214.10#-.13427+el,.119#`.
pub fn evr_sort(p: &Package<'_>) -> String {
    let mut out = String::with_capacity(2 * (p.version.len() + p.release.len()) + 16);
    let epoch = p.epoch.unwrap_or(0);
    if epoch < 0 {
        out.push('-');
        out.push_str(&format!("{:010}", i64::from(epoch) - i64::from(i32::MIN)));
    } else {
        numeric_key(&mut out, epoch.to_string().as_bytes());
    }
    out.push(':');
    version_key(&mut out, &p.version);
    out.push('-');
    version_key(&mut out, &p.release);
    out
}

/// Appends the tokens of one version or release string and its end.
fn version_key(out: &mut String, v: &str) {
    let b = v.as_bytes();
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if c == b'~' {
            out.push('!');
            i += 1;
        } else if c == b'^' {
            out.push('%');
            i += 1;
        } else if c.is_ascii_digit() {
            let start = i;
            while i < b.len() && b[i].is_ascii_digit() {
                i += 1;
            }
            numeric_key(out, &b[start..i]);
        } else if c.is_ascii_alphabetic() {
            let start = i;
            while i < b.len() && b[i].is_ascii_alphabetic() {
                i += 1;
            }
            out.push('+');
            // ASCII letters only.
            out.push_str(std::str::from_utf8(&b[start..i]).unwrap_or_default());
            out.push(',');
        } else {
            i += 1;
        }
    }
    out.push('#');
}

/// Appends a numeric segment (ASCII digits): `.`, the count of digits of
/// its length, its length, its digits, leading zeros dropped.
fn numeric_key(out: &mut String, digits: &[u8]) {
    let start = digits
        .iter()
        .position(|d| *d != b'0')
        .unwrap_or(digits.len());
    let digits = &digits[start..];
    let len = digits.len().to_string();
    out.push('.');
    out.push(char::from(b'0' + len.len() as u8));
    out.push_str(&len);
    out.push_str(std::str::from_utf8(digits).unwrap_or_default());
}

/// The `_id` of a package document: `<machine_id>/<name>.<arch>`.
pub fn package_key(machine_id: &str, p: &Package<'_>) -> String {
    format!("{machine_id}/{}.{}", p.name, p.arch)
}

/// The engine's limit on a document `_id`, in UTF-8 bytes: a longer one
/// makes it refuse the whole bulk request (HTTP 400).
pub const MAX_ID_BYTES: usize = 512;

/// Why the documents of a host's `packages` cannot be indexed: a host or
/// package-state `_id` longer than [`MAX_ID_BYTES`] (a machine id or a
/// package name far too long). Checked before sending, so such an event
/// goes to the DLQ without costing the batch a bisection.
pub fn oversized_id<'p, 'q: 'p>(
    machine_id: &str,
    packages: impl IntoIterator<Item = &'p Package<'q>>,
) -> Option<String> {
    let too_long = |index: &str, id: &str| {
        (id.len() > MAX_ID_BYTES).then(|| {
            let mut cut = id.len().min(64);
            while !id.is_char_boundary(cut) {
                cut -= 1;
            }
            format!(
                "document _id of {} bytes in {index} is longer than the engine's {MAX_ID_BYTES}-byte _id limit: {}…",
                id.len(),
                &id[..cut]
            )
        })
    };
    if let Some(r) = too_long("the host index", machine_id) {
        return Some(r);
    }
    packages
        .into_iter()
        .find_map(|p| too_long("the package index", &package_key(machine_id, p)))
}

/// Lower-case source name (`dnf`).
pub fn source_name(s: Source) -> &'static str {
    match s {
        Source::Dnf => "dnf",
        Source::Yum => "yum",
        Source::Rpm => "rpm",
        Source::Inventory => "inventory",
    }
}

/// Lower-case action name (`upgrade`).
pub fn action_name(a: Action) -> &'static str {
    match a {
        Action::Install => "install",
        Action::Upgrade => "upgrade",
        Action::Downgrade => "downgrade",
        Action::Reinstall => "reinstall",
        Action::Remove => "remove",
        Action::Obsolete => "obsolete",
    }
}

/// Whether the action takes the package off the host.
pub fn removes(a: Action) -> bool {
    matches!(a, Action::Remove | Action::Obsolete)
}

struct HostDoc<'a>(&'a Host<'a>);

impl Serialize for HostDoc<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let h = self.0;
        let mut m = s.serialize_map(Some(4))?;
        m.serialize_entry("id", &h.machine_id)?;
        m.serialize_entry("name", &h.hostname)?;
        m.serialize_entry("architecture", &h.arch)?;
        m.serialize_entry(
            "os",
            &OsDoc {
                platform: &h.os_id,
                version: &h.os_version,
            },
        )?;
        m.end()
    }
}

#[derive(serde::Serialize)]
struct OsDoc<'a> {
    platform: &'a str,
    version: &'a str,
}

struct PackageDoc<'a>(&'a Package<'a>);

impl Serialize for PackageDoc<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let p = self.0;
        let mut m = s.serialize_map(None)?;
        m.serialize_entry("name", &p.name)?;
        if let Some(e) = p.epoch {
            m.serialize_entry("epoch", &e)?;
        }
        m.serialize_entry("version", &p.version)?;
        m.serialize_entry("release", &p.release)?;
        m.serialize_entry("architecture", &p.arch)?;
        m.serialize_entry("evr", &evr(p))?;
        m.serialize_entry("evr_sort", &evr_sort(p))?;
        if let Some(r) = &p.repo {
            m.serialize_entry("repo", r)?;
        }
        if let Some(v) = &p.vendor {
            m.serialize_entry("vendor", v)?;
        }
        if let Some(t) = p.buildtime {
            m.serialize_entry("buildtime", &Ts(t))?;
        }
        if let Some(t) = p.install_time {
            m.serialize_entry("installed", &Ts(t))?;
        }
        if let Some(sz) = p.size {
            m.serialize_entry("size", &sz)?;
        }
        if let Some(d) = &p.digest {
            m.serialize_entry("checksum", d)?;
        }
        m.end()
    }
}

/// The enrichment as `pkgstream.*` fields (plus `source`/`action` when
/// given, and a history document's window, rpm, replaced-package and
/// transaction facts when `change` is).
struct EnrichmentDoc<'a> {
    e: &'a Enrichment<'a>,
    source: Option<&'static str>,
    action: Option<&'static str>,
    event_id: Option<&'a str>,
    /// The whole snapshot a package document was written or confirmed by.
    snapshot_id: Option<&'a str>,
    change: Option<&'a EnrichedChange<'a>>,
}

impl Serialize for EnrichmentDoc<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let e = self.e;
        let mut m = s.serialize_map(None)?;
        m.serialize_entry("hostgroup", &e.hostgroup)?;
        m.serialize_entry("environment", &e.environment)?;
        if let Some(o) = &e.owner {
            m.serialize_entry("owner", o)?;
        }
        if let Some(d) = &e.datacenter {
            m.serialize_entry("datacenter", d)?;
        }
        m.serialize_entry("known_host", &e.known_host)?;
        if let Some(src) = self.source {
            m.serialize_entry("source", src)?;
        }
        if let Some(a) = self.action {
            m.serialize_entry("action", a)?;
        }
        if let Some(id) = self.event_id {
            m.serialize_entry("event_id", id)?;
        }
        if let Some(id) = self.snapshot_id {
            m.serialize_entry("snapshot_id", id)?;
        }
        if let Some(c) = self.change {
            #[derive(serde::Serialize)]
            struct Transaction {
                rpm_tid: i64,
                #[serde(skip_serializing_if = "Option::is_none")]
                history_id: Option<i64>,
                #[serde(skip_serializing_if = "Option::is_none")]
                start: Option<Ts>,
            }
            m.serialize_entry("outside_maintenance_window", &e.outside_maintenance_window)?;
            m.serialize_entry("unexplained_rpm", &e.unexplained_rpm)?;
            if let Some(r) = &c.replaced {
                m.serialize_entry("replaced", &PackageDoc(r))?;
            }
            let t = &c.transaction;
            m.serialize_entry(
                "transaction",
                &Transaction {
                    rpm_tid: t.rpm_tid,
                    history_id: t.history_id,
                    start: t.start_time.map(Ts),
                },
            )?;
        }
        m.end()
    }
}

/// Writes one action line (`{"op":{"_index":..,"_id":..}}`) and a newline.
fn action_line(out: &mut Vec<u8>, op: &str, index: &str, id: &str, retry: bool) {
    #[derive(serde::Serialize)]
    struct Meta<'a> {
        _index: &'a str,
        _id: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        retry_on_conflict: Option<u32>,
    }
    let mut m = BTreeMap::new();
    m.insert(
        op,
        Meta {
            _index: index,
            _id: id,
            retry_on_conflict: retry.then_some(5),
        },
    );
    // Serializing plain strings and integers into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, &m);
    out.push(b'\n');
}

fn body_line(out: &mut Vec<u8>, body: &impl Serialize) {
    let _ = serde_json::to_writer(&mut *out, body);
    out.push(b'\n');
}

/// `{"scripted_upsert":true,"upsert":{},"script":{"id":ID,"params":PARAMS}}`
struct ScriptedUpsert<'a, P> {
    id: &'a str,
    params: P,
}

impl<P: Serialize> Serialize for ScriptedUpsert<'_, P> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        #[derive(serde::Serialize)]
        struct Script<'a, P> {
            id: &'a str,
            params: &'a P,
        }
        let mut m = s.serialize_map(Some(3))?;
        m.serialize_entry("scripted_upsert", &true)?;
        m.serialize_entry("upsert", &serde_json::Map::new())?;
        m.serialize_entry(
            "script",
            &Script {
                id: self.id,
                params: &self.params,
            },
        )?;
        m.end()
    }
}

/// The change document (`<p>-changes-*`).
struct ChangeDoc<'a> {
    c: &'a EnrichedChange<'a>,
    id: &'a str,
}

impl Serialize for ChangeDoc<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        #[derive(serde::Serialize)]
        struct Event<'a> {
            id: &'a str,
            action: &'a str,
            kind: &'a str,
            category: [&'a str; 1],
            #[serde(rename = "type")]
            ty: [&'a str; 1],
            created: Ts,
            dataset: &'a str,
        }
        let c = self.c;
        let e = &c.enrichment;
        let action = action_name(c.action);
        let mut m = s.serialize_map(None)?;
        m.serialize_entry("@timestamp", &Ts(c.event_time))?;
        m.serialize_entry(
            "event",
            &Event {
                id: self.id,
                action,
                kind: "event",
                category: ["package"],
                ty: [match c.action {
                    Action::Install => "installation",
                    Action::Remove | Action::Obsolete => "deletion",
                    _ => "change",
                }],
                created: Ts(e.routed_at),
                dataset: "pkgstream.changes",
            },
        )?;
        m.serialize_entry("host", &HostDoc(&c.host))?;
        m.serialize_entry("package", &PackageDoc(&c.package))?;
        #[derive(serde::Serialize)]
        struct User<'a> {
            name: &'a str,
        }
        #[derive(serde::Serialize)]
        struct Process<'a> {
            command_line: &'a str,
        }
        if let Some(name) = &c.transaction.login_user {
            m.serialize_entry("user", &User { name })?;
        }
        if let Some(command_line) = &c.transaction.command_line {
            m.serialize_entry("process", &Process { command_line })?;
        }
        if !e.tags.is_empty() {
            m.serialize_entry("labels", &*e.tags)?;
        }
        m.serialize_entry("event_time_us", &c.event_time)?;
        m.serialize_entry(
            "pkgstream",
            &EnrichmentDoc {
                e,
                source: Some(source_name(c.source)),
                action: None,
                event_id: None,
                snapshot_id: None,
                change: Some(c),
            },
        )?;
        m.end()
    }
}

/// The package-state document (`<p>-packages`).
struct PackageStateDoc<'a> {
    host: &'a Host<'a>,
    package: &'a Package<'a>,
    e: &'a Enrichment<'a>,
    event_time: i64,
    source: &'static str,
    action: &'static str,
    event_id: &'a str,
    snapshot_id: Option<&'a str>,
}

impl Serialize for PackageStateDoc<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(Some(5))?;
        m.serialize_entry("@timestamp", &Ts(self.event_time))?;
        m.serialize_entry("event_time_us", &self.event_time)?;
        m.serialize_entry("host", &HostDoc(self.host))?;
        m.serialize_entry("package", &PackageDoc(self.package))?;
        m.serialize_entry(
            "pkgstream",
            &EnrichmentDoc {
                e: self.e,
                source: Some(self.source),
                action: Some(self.action),
                event_id: Some(self.event_id),
                snapshot_id: self.snapshot_id,
                change: None,
            },
        )?;
        m.end()
    }
}

/// Appends the upsert of one package-state document.
#[allow(clippy::too_many_arguments)]
pub(crate) fn package_upsert(
    out: &mut Vec<u8>,
    idx: &Indices,
    host: &Host<'_>,
    package: &Package<'_>,
    e: &Enrichment<'_>,
    event_time: i64,
    source: &'static str,
    action: &'static str,
    event_id: &str,
    snapshot_id: Option<&str>,
) {
    action_line(
        out,
        "update",
        idx.packages(),
        &package_key(&host.machine_id, package),
        true,
    );
    #[derive(serde::Serialize)]
    struct P<'a> {
        d: PackageStateDoc<'a>,
    }
    body_line(
        out,
        &ScriptedUpsert {
            id: SCRIPT_PACKAGE_UPSERT,
            params: P {
                d: PackageStateDoc {
                    host,
                    package,
                    e,
                    event_time,
                    source,
                    action,
                    event_id,
                    snapshot_id,
                },
            },
        },
    );
}

/// Appends the guarded delete of a package-state document: it goes only if
/// it still holds `evr` and no event newer than `t`.
pub fn package_remove(out: &mut Vec<u8>, idx: &Indices, key: &str, evr: &str, t: i64) {
    action_line(out, "update", idx.packages(), key, true);
    #[derive(serde::Serialize)]
    struct P<'a> {
        evr: &'a str,
        t: i64,
    }
    body_line(
        out,
        &ScriptedUpsert {
            id: SCRIPT_PACKAGE_REMOVE,
            params: P { evr, t },
        },
    );
}

/// Facts a snapshot sets on its host document.
#[derive(serde::Serialize, Clone, Copy, Debug, PartialEq, Eq)]
pub struct SnapshotFacts {
    /// Packages in the snapshot.
    pub count: usize,
    /// Packages whose indexed state the snapshot contradicted.
    pub drift: usize,
}

/// Appends the host-document update for an event at `t` (µs).
pub fn host_update(
    out: &mut Vec<u8>,
    idx: &Indices,
    host: &Host<'_>,
    e: &Enrichment<'_>,
    t: i64,
    snap: Option<SnapshotFacts>,
) {
    action_line(out, "update", idx.hosts(), &host.machine_id, true);
    #[derive(serde::Serialize)]
    struct P<'a> {
        t: i64,
        ts: Ts,
        host: HostDoc<'a>,
        p: EnrichmentDoc<'a>,
        snap: Option<SnapshotFacts>,
    }
    body_line(
        out,
        &ScriptedUpsert {
            id: SCRIPT_HOST,
            params: P {
                t,
                ts: Ts(t),
                host: HostDoc(host),
                p: EnrichmentDoc {
                    e,
                    source: None,
                    action: None,
                    event_id: None,
                    snapshot_id: None,
                    change: None,
                },
                snap,
            },
        },
    );
}

/// Appends the items of one change: the history document (`create`) and
/// the package-state update (upsert, or guarded delete for a removal). The
/// host document is written once per batch by the caller
/// ([`host_update`]). Returns the kinds of the items appended, in order.
pub fn change_items(out: &mut Vec<u8>, idx: &Indices, c: &EnrichedChange<'_>) -> [ItemKind; 2] {
    let id = history_item(out, idx, c);
    if removes(c.action) {
        package_remove(
            out,
            idx,
            &package_key(&c.host.machine_id, &c.package),
            &evr(&c.package),
            c.event_time,
        );
    } else {
        package_upsert(
            out,
            idx,
            &c.host,
            &c.package,
            &c.enrichment,
            c.event_time,
            source_name(c.source),
            action_name(c.action),
            &id,
            None,
        );
    }
    [ItemKind::Change, ItemKind::Package]
}

/// The change's history document alone (`create`, `_id` = event id), as
/// an audit replay writes it; returns the id.
pub fn history_item(out: &mut Vec<u8>, idx: &Indices, c: &EnrichedChange<'_>) -> String {
    let id = c.event_id.to_hex();
    action_line(out, "create", &idx.changes(c.event_time), &id, false);
    body_line(out, &ChangeDoc { c, id: &id });
    id
}

/// The package state a snapshot says a host has: one package per
/// `name.arch` (for install-only packages such as the kernel, the one
/// installed last), keyed by the package document id.
pub fn snapshot_state<'a>(s: &'a EnrichedSnapshot<'a>) -> BTreeMap<String, &'a Package<'a>> {
    let mut state: BTreeMap<String, &Package<'_>> = BTreeMap::new();
    for p in &s.packages {
        let key = package_key(&s.host.machine_id, p);
        match state.get(&key) {
            Some(prev) if prev.install_time.unwrap_or(0) > p.install_time.unwrap_or(0) => {}
            _ => {
                state.insert(key, p);
            }
        }
    }
    state
}

/// What the index holds for one package document of a host.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct IndexedPackage {
    /// `E:V-R`.
    pub evr: String,
    /// Its `package.evr_sort` as indexed (empty when absent).
    pub evr_sort: String,
    /// Event time (µs) of the event that wrote it.
    pub event_time_us: i64,
}

/// Reconciles a host's indexed packages with its snapshot: appends upserts
/// for packages that are missing or at another version, and guarded
/// deletes for documents the snapshot does not contain (in both cases only
/// where the index holds nothing newer than the snapshot), then the host
/// document update. A document at the snapshot's version whose sort key is
/// out of date (written by an older sink) gets its key rewritten, which is
/// not drift. Returns the number of package items appended and the facts
/// written to the host document (drift = upserts and deletes, 0 for the
/// first snapshot of a host nothing was known about).
pub fn snapshot_items(
    out: &mut Vec<u8>,
    idx: &Indices,
    s: &EnrichedSnapshot<'_>,
    indexed: &BTreeMap<String, IndexedPackage>,
) -> (usize, SnapshotFacts) {
    let state = snapshot_state(s);
    let id = s.snapshot_id.to_hex();
    let mut items = 0;
    let mut refreshed = 0;
    for (key, p) in &state {
        let stale = match indexed.get(key) {
            None => true,
            Some(ix) => ix.event_time_us <= s.taken_at && ix.evr != evr(p),
        };
        if stale {
            package_upsert(
                out,
                idx,
                &s.host,
                p,
                &s.enrichment,
                s.taken_at,
                "inventory",
                "snapshot",
                &id,
                Some(&id),
            );
            items += 1;
        } else if let Some(ix) = indexed.get(key) {
            let sort = evr_sort(p);
            if ix.evr == evr(p) && ix.evr_sort != sort {
                sort_key_update(out, idx, key, &ix.evr, &sort);
                refreshed += 1;
            }
        }
    }
    for (key, ix) in indexed {
        if !state.contains_key(key) && ix.event_time_us <= s.taken_at {
            package_remove(out, idx, key, &ix.evr, s.taken_at);
            items += 1;
        }
    }
    let facts = SnapshotFacts {
        count: state.len(),
        drift: if indexed.is_empty() { 0 } else { items },
    };
    host_update(out, idx, &s.host, &s.enrichment, s.taken_at, Some(facts));
    (items + refreshed, facts)
}

/// Appends the guarded rewrite of a package document's sort key.
pub(crate) fn sort_key_update(out: &mut Vec<u8>, idx: &Indices, key: &str, evr: &str, sort: &str) {
    action_line(out, "update", idx.packages(), key, true);
    #[derive(serde::Serialize)]
    struct P<'a> {
        evr: &'a str,
        key: &'a str,
    }
    body_line(
        out,
        &ScriptedUpsert {
            id: SCRIPT_PACKAGE_SORT_KEY,
            params: P { evr, key: sort },
        },
    );
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use pkgstream_schemas::sample;
    use serde_json::Value;

    fn lines(body: &[u8]) -> Vec<Value> {
        body.split(|b| *b == b'\n')
            .filter(|l| !l.is_empty())
            .map(|l| serde_json::from_slice(l).unwrap())
            .collect()
    }

    #[test]
    fn change_becomes_create_and_package_upsert() {
        let c = EnrichedChange::new(sample::change(7), sample::enrichment(7));
        let idx = Indices::new("pkgstream");
        let mut out = Vec::new();
        let kinds = change_items(&mut out, &idx, &c);
        assert_eq!(kinds, [ItemKind::Change, ItemKind::Package]);
        let l = lines(&out);
        assert_eq!(l.len(), 4);
        let id = c.event_id.to_hex();
        assert_eq!(l[0]["create"]["_id"], id.as_str());
        let month = chrono::DateTime::from_timestamp_micros(c.event_time)
            .unwrap()
            .format("%Y.%m");
        assert_eq!(
            l[0]["create"]["_index"],
            format!("pkgstream-changes-{month}")
        );
        assert_eq!(l[1]["event"]["id"], id.as_str());
        assert_eq!(l[1]["event"]["action"], "upgrade");
        assert_eq!(l[1]["host"]["name"], c.host.hostname.as_ref());
        assert_eq!(l[1]["package"]["name"], c.package.name.as_ref());
        assert_eq!(l[1]["package"]["evr"], evr(&c.package).as_str());
        assert_eq!(l[1]["pkgstream"]["hostgroup"], "web-3");
        assert_eq!(
            l[1]["pkgstream"]["replaced"]["name"],
            c.package.name.as_ref()
        );
        assert_eq!(l[1]["labels"]["tier"], "frontend");
        assert_eq!(l[1]["event_time_us"], c.event_time);
        assert_eq!(l[2]["update"]["_index"], "pkgstream-packages");
        assert_eq!(
            l[2]["update"]["_id"],
            format!("{}/{}.x86_64", c.host.machine_id, c.package.name)
        );
        assert_eq!(l[3]["script"]["id"], SCRIPT_PACKAGE_UPSERT);
        assert_eq!(l[3]["scripted_upsert"], true);
        assert_eq!(
            l[3]["script"]["params"]["d"]["package"]["version"],
            c.package.version.as_ref()
        );
        // Timestamps carry microseconds.
        let ts = l[1]["@timestamp"].as_str().unwrap();
        assert!(ts.ends_with('Z') && ts.len() == 27, "{ts}");
    }

    #[test]
    fn removal_is_a_guarded_delete() {
        let mut c = EnrichedChange::new(sample::change(3), sample::enrichment(3));
        c.action = Action::Remove;
        let mut out = Vec::new();
        change_items(&mut out, &Indices::new("x"), &c);
        let l = lines(&out);
        assert_eq!(l[3]["script"]["id"], SCRIPT_PACKAGE_REMOVE);
        assert_eq!(l[3]["script"]["params"]["evr"], evr(&c.package).as_str());
        assert_eq!(l[3]["script"]["params"]["t"], c.event_time);
    }

    #[test]
    fn timestamps_match_chrono() {
        for us in [
            0,
            1,
            1_793_484_000_123_456,
            1_700_000_000_999_999,
            253_402_300_799_000_000,
        ] {
            let want = chrono::DateTime::from_timestamp_micros(us)
                .unwrap()
                .format("%Y-%m-%dT%H:%M:%S%.6fZ")
                .to_string();
            assert_eq!(std::str::from_utf8(&rfc3339_micros(us)).unwrap(), want);
        }
    }

    fn pkg(epoch: Option<i32>, v: &str, r: &str) -> Package<'static> {
        Package {
            epoch,
            version: v.to_owned().into(),
            release: r.to_owned().into(),
            ..sample::change(0).package
        }
    }

    #[test]
    fn evr_sort_orders_as_rpm_on_the_known_cases() {
        let key = |v: &str| evr_sort(&pkg(None, v, "1"));
        assert!(key("1.0~rc1") < key("1.0"), "a pre-release sorts first");
        assert!(key("1.0") < key("1.0^git1"), "a snapshot after its base");
        assert!(
            key("1.0^git1") < key("1.0.1"),
            "and before the next version"
        );
        assert!(key("1.0^git1") < key("1.01"));
        assert!(key("1.0a") < key("1.0.1"), "letters before digits");
        assert_eq!(key("1.01"), key("1.1"), "leading zeros");
        assert_eq!(key("2_0"), key("2.0"), "separators");
        assert!(key("1.9") < key("1.10"));
        assert!(key("4.999.9") < key("5.0"));
        assert!(evr_sort(&pkg(None, "5.14.0", "9.el9")) < evr_sort(&pkg(None, "5.14.0", "10.el9")));
        assert!(evr_sort(&pkg(Some(1), "1.0", "1")) > evr_sort(&pkg(None, "9.0", "1")));
        assert!(evr_sort(&pkg(Some(-1), "9", "1")) < evr_sort(&pkg(None, "1", "1")));
        assert_eq!(
            evr_sort(&pkg(Some(1), "5.14.0", "427.el9")),
            ".111:.115.1214.10#-.13427+el,.119#"
        );
    }

    mod evr_sort_vs_rpm {
        use super::*;
        use pkgstream_schemas::rpmvercmp::evrcmp;
        use proptest::prelude::*;

        /// Versions from the characters rpm treats differently: digits
        /// (leading zeros too), letters of both cases, `~`, `^`, and
        /// separators (ASCII and not).
        fn version() -> impl Strategy<Value = String> {
            let chars = prop::sample::select(vec![
                '0', '0', '1', '2', '9', 'a', 'b', 'z', 'A', 'Z', '~', '~', '^', '^', '.', '.',
                '_', '+', '-', 'é',
            ]);
            prop::collection::vec(chars, 0..10).prop_map(|c| c.into_iter().collect())
        }

        fn epoch() -> impl Strategy<Value = Option<i32>> {
            prop::sample::select(vec![
                None,
                Some(0),
                Some(1),
                Some(2),
                Some(10),
                Some(i32::MAX),
                Some(-1),
                Some(i32::MIN),
            ])
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(20_000))]
            #[test]
            fn the_key_orders_every_pair_as_evrcmp(
                e1 in epoch(), v1 in version(), r1 in version(),
                e2 in epoch(), v2 in version(), r2 in version(),
            ) {
                let (a, b) = (pkg(e1, &v1, &r1), pkg(e2, &v2, &r2));
                prop_assert_eq!(
                    evr_sort(&a).cmp(&evr_sort(&b)),
                    evrcmp((e1, &v1, &r1), (e2, &v2, &r2)),
                    "{:?} vs {:?}", evr_sort(&a), evr_sort(&b)
                );
            }

            /// Same version strings in both: exercises the equal prefixes.
            #[test]
            fn close_versions_order_as_rpmvercmp(v in version(), tail1 in version(), tail2 in version()) {
                let (x, y) = (format!("{v}{tail1}"), format!("{v}{tail2}"));
                prop_assert_eq!(
                    evr_sort(&pkg(None, &x, "1")).cmp(&evr_sort(&pkg(None, &y, "1"))),
                    pkgstream_schemas::rpmvercmp::rpmvercmp(&x, &y)
                );
            }
        }

        #[test]
        fn long_numbers_order_by_value() {
            let big = "9".repeat(12);
            let bigger = format!("1{}", "0".repeat(12));
            assert!(evr_sort(&pkg(None, &big, "1")) < evr_sort(&pkg(None, &bigger, "1")));
            assert_eq!(
                evrcmp((None, &big, "1"), (None, &bigger, "1")),
                std::cmp::Ordering::Less
            );
        }
    }

    #[test]
    fn ids_over_512_bytes_are_caught_before_sending() {
        let c = sample::change(1);
        assert_eq!(oversized_id(&c.host.machine_id, [&c.package]), None);
        let mut p = c.package.clone();
        // Exactly at the limit is fine, one byte more is not.
        let room = MAX_ID_BYTES - package_key(&c.host.machine_id, &p).len() + p.name.len();
        p.name = "n".repeat(room).into();
        assert_eq!(package_key(&c.host.machine_id, &p).len(), MAX_ID_BYTES);
        assert_eq!(oversized_id(&c.host.machine_id, [&p]), None);
        p.name = "é".repeat(room).into();
        let r = oversized_id(&c.host.machine_id, [&c.package, &p]).unwrap();
        assert!(
            r.contains("_id of") && r.contains("512-byte _id limit"),
            "{r}"
        );
        assert!(r.len() < 300, "{r}");
        let r = oversized_id(&"m".repeat(513), std::iter::empty()).unwrap();
        assert!(r.contains("513 bytes in the host index"), "{r}");
    }

    #[test]
    fn snapshot_reconciles_against_indexed_state() {
        let mut s = EnrichedSnapshot::new(sample::snapshot(1, 3), sample::enrichment(1));
        let t = s.taken_at;
        let state: Vec<(String, String, String)> = snapshot_state(&s)
            .iter()
            .map(|(k, p)| (k.clone(), evr(p), evr_sort(p)))
            .collect();
        assert_eq!(state.len(), 3);
        let mut indexed = BTreeMap::new();
        // Same version: nothing to do.
        indexed.insert(
            state[0].0.clone(),
            IndexedPackage {
                evr: state[0].1.clone(),
                evr_sort: state[0].2.clone(),
                event_time_us: t - 1,
            },
        );
        // Other version, older: upsert.
        indexed.insert(
            state[1].0.clone(),
            IndexedPackage {
                evr: "0:9-9".into(),
                evr_sort: String::new(),
                event_time_us: t - 1,
            },
        );
        // Missing: state[2] is upserted.
        // Not in the snapshot, older: removed; newer: kept.
        indexed.insert(
            "h/gone.x86_64".into(),
            IndexedPackage {
                evr: "0:1-1".into(),
                evr_sort: String::new(),
                event_time_us: t - 1,
            },
        );
        indexed.insert(
            "h/new.x86_64".into(),
            IndexedPackage {
                evr: "0:1-1".into(),
                evr_sort: String::new(),
                event_time_us: t + 1,
            },
        );
        let mut out = Vec::new();
        let (items, facts) = snapshot_items(&mut out, &Indices::new("p"), &s, &indexed);
        assert_eq!(items, 3);
        assert_eq!(facts, SnapshotFacts { count: 3, drift: 3 });
        let l = lines(&out);
        let ids: Vec<&str> = l
            .iter()
            .step_by(2)
            .map(|a| a["update"]["_id"].as_str().unwrap())
            .collect();
        assert_eq!(
            ids,
            [
                state[1].0.as_str(),
                state[2].0.as_str(),
                "h/gone.x86_64",
                s.host.machine_id.as_ref()
            ]
        );
        assert_eq!(l[7]["script"]["params"]["snap"]["count"], 3);
        // A first snapshot is not drift.
        s.packages.truncate(2);
        let (items, facts) =
            snapshot_items(&mut Vec::new(), &Indices::new("p"), &s, &BTreeMap::new());
        assert_eq!((items, facts.drift, facts.count), (2, 0, 2));
        // A document at the snapshot's version with an older sink's key:
        // its key is rewritten (guarded by the version), and it is not drift.
        let old_key = IndexedPackage {
            evr_sort: "0000000000:0000000001.0000000002-0000000003".into(),
            ..indexed[&state[0].0].clone()
        };
        let indexed = BTreeMap::from([
            (state[0].0.clone(), old_key),
            (
                state[1].0.clone(),
                IndexedPackage {
                    evr: state[1].1.clone(),
                    evr_sort: state[1].2.clone(),
                    event_time_us: t - 1,
                },
            ),
        ]);
        let mut out = Vec::new();
        let (items, facts) = snapshot_items(&mut out, &Indices::new("p"), &s, &indexed);
        assert_eq!((items, facts.drift), (1, 0));
        let l = lines(&out);
        assert_eq!(l[0]["update"]["_id"], state[0].0.as_str());
        assert_eq!(l[1]["script"]["id"], SCRIPT_PACKAGE_SORT_KEY);
        assert_eq!(l[1]["script"]["params"]["evr"], state[0].1.as_str());
        assert_eq!(l[1]["script"]["params"]["key"], state[0].2.as_str());
    }
}
