//! From rpm's transaction elements to pkgstream change events: pure
//! functions, unit-tested without librpm.
//!
//! rpm sees a transaction as *added* and *removed* elements. A removed
//! element that makes way for an added one points at it
//! (`rpmteDependsOn`): with the same name it is the old version of an
//! upgrade, downgrade or reinstall (decided by comparing EVRs); with another
//! name it is a package obsoleted by the added one. A removed element that
//! points at nothing is a plain removal. Failed elements (`rpmteFailed`)
//! were not committed and are not reported.

use std::cmp::Ordering;
use std::collections::HashMap;

use serde_json::{json, Map, Value};

/// An rpm package identity (NEVRA).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Nevra {
    /// NAME.
    pub name: String,
    /// EPOCH, `None` when the package has none.
    pub epoch: Option<i32>,
    /// VERSION.
    pub version: String,
    /// RELEASE.
    pub release: String,
    /// ARCH.
    pub arch: String,
}

impl Nevra {
    /// `name-epoch:version-release.arch` with epoch 0 when unset: the key the
    /// dnf plugin uses for per-package context.
    pub fn key(&self) -> String {
        format!(
            "{}-{}:{}-{}.{}",
            self.name,
            self.epoch.unwrap_or(0),
            self.version,
            self.release,
            self.arch
        )
    }
}

/// What the header adds to the NEVRA.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[allow(missing_docs)]
pub struct Details {
    pub vendor: Option<String>,
    pub buildtime: Option<i64>,
    pub install_time: Option<i64>,
    pub size: Option<i64>,
    pub digest: Option<String>,
}

/// One transaction element as the plugin read it.
#[derive(Clone, Debug, Default)]
pub struct Element {
    /// Added (install side) or removed (erase side).
    pub added: bool,
    /// The package.
    pub nevra: Nevra,
    /// For a removed element: index of the added element it makes way for.
    pub depends_on: Option<usize>,
    /// rpm marked it failed: not committed.
    pub failed: bool,
    /// Header facts.
    pub details: Details,
}

/// `PackageChange.action` values (the hook input spelling).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[allow(missing_docs)]
pub enum Action {
    Install,
    Upgrade,
    Downgrade,
    Reinstall,
    Remove,
    Obsolete,
}

impl Action {
    /// The hook input name.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Install => "install",
            Action::Upgrade => "upgrade",
            Action::Downgrade => "downgrade",
            Action::Reinstall => "reinstall",
            Action::Remove => "remove",
            Action::Obsolete => "obsolete",
        }
    }
}

/// One change to report: indexes into the element list.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Change {
    /// What happened.
    pub action: Action,
    /// The package acted on.
    pub package: usize,
    /// The package it replaced (upgrade, downgrade, reinstall), or for an
    /// obsolete the package that obsoleted it.
    pub replaced: Option<usize>,
}

/// Compares two EVRs the way rpm does, with `vercmp` being `rpmvercmp`.
pub fn evr_cmp(a: &Nevra, b: &Nevra, vercmp: &dyn Fn(&str, &str) -> Ordering) -> Ordering {
    a.epoch
        .unwrap_or(0)
        .cmp(&b.epoch.unwrap_or(0))
        .then_with(|| vercmp(&a.version, &b.version))
        .then_with(|| vercmp(&a.release, &b.release))
}

/// The committed changes of a transaction, in element order.
pub fn classify(elements: &[Element], vercmp: &dyn Fn(&str, &str) -> Ordering) -> Vec<Change> {
    let mut out = Vec::new();
    // For each added element, the first same-name removed element pointing at it.
    let mut replaced_by: HashMap<usize, usize> = HashMap::new();
    for (i, e) in elements.iter().enumerate() {
        if let (false, Some(a)) = (e.added, e.depends_on) {
            if elements
                .get(a)
                .is_some_and(|added| added.nevra.name == e.nevra.name)
            {
                replaced_by.entry(a).or_insert(i);
            }
        }
    }
    for (i, e) in elements.iter().enumerate() {
        if e.failed {
            continue;
        }
        if e.added {
            let change = match replaced_by.get(&i) {
                None => Change {
                    action: Action::Install,
                    package: i,
                    replaced: None,
                },
                Some(&old) => {
                    let action = match evr_cmp(&e.nevra, &elements[old].nevra, vercmp) {
                        Ordering::Greater => Action::Upgrade,
                        Ordering::Less => Action::Downgrade,
                        Ordering::Equal => Action::Reinstall,
                    };
                    Change {
                        action,
                        package: i,
                        replaced: Some(old),
                    }
                }
            };
            out.push(change);
            continue;
        }
        match e.depends_on.filter(|a| elements.get(*a).is_some()) {
            None => out.push(Change {
                action: Action::Remove,
                package: i,
                replaced: None,
            }),
            // The old side of an upgrade/downgrade/reinstall: reported with the new side.
            Some(a) if replaced_by.get(&a) == Some(&i) => {}
            Some(a) if elements[a].nevra.name == e.nevra.name => out.push(Change {
                action: Action::Remove,
                package: i,
                replaced: None,
            }),
            Some(a) => out.push(Change {
                action: Action::Obsolete,
                package: i,
                replaced: Some(a),
            }),
        }
    }
    out
}

/// Context of the transaction that is not in the rpm elements: from dnf
/// (through `PKGSTREAM_DNF_CONTEXT`) or from the rpm process itself.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Context {
    /// `dnf` or `rpm`.
    pub source: String,
    /// dnf history transaction id.
    pub history_id: Option<i64>,
    /// The command that drove the transaction.
    pub command_line: Option<String>,
    /// The human behind it.
    pub login_user: Option<String>,
    /// Transaction start, Unix seconds.
    pub start_time: Option<i64>,
    /// Repository id per NEVRA key ([`Nevra::key`]).
    pub repos: HashMap<String, String>,
    /// Obsoleted package key → key of the package obsoleting it (dnf
    /// erases obsoleted packages itself, so rpm does not link the two).
    pub obsoleted: HashMap<String, String>,
}

/// Links each removed element that dnf says is obsoleted to its obsoleter,
/// as rpm does for the obsoletes it resolves itself.
pub fn apply_obsoletes(elements: &mut [Element], ctx: &Context) {
    if ctx.obsoleted.is_empty() {
        return;
    }
    let added: HashMap<String, usize> = elements
        .iter()
        .enumerate()
        .filter(|(_, e)| e.added)
        .map(|(i, e)| (e.nevra.key(), i))
        .collect();
    for e in elements
        .iter_mut()
        .filter(|e| !e.added && e.depends_on.is_none())
    {
        if let Some(i) = ctx.obsoleted.get(&e.nevra.key()).and_then(|k| added.get(k)) {
            e.depends_on = Some(*i);
        }
    }
}

impl Context {
    /// Parses the dnf plugin's `PKGSTREAM_DNF_CONTEXT` value; `None` when it
    /// is not for process `pid` (a child of dnf inheriting the variable).
    pub fn from_dnf_env(text: &str, pid: u32) -> Option<Context> {
        let v: Value = serde_json::from_str(text).ok()?;
        if v.get("pid").and_then(Value::as_u64) != Some(u64::from(pid)) {
            return None;
        }
        let s = |k: &str| v.get(k).and_then(Value::as_str).map(str::to_owned);
        let map = |k: &str| -> HashMap<String, String> {
            v.get(k)
                .and_then(Value::as_object)
                .map(|m| {
                    m.iter()
                        .filter_map(|(k, r)| Some((k.clone(), r.as_str()?.to_owned())))
                        .collect()
                })
                .unwrap_or_default()
        };
        Some(Context {
            source: s("source").unwrap_or_else(|| "dnf".into()),
            history_id: v.get("history_id").and_then(Value::as_i64),
            command_line: s("command_line"),
            login_user: s("login_user"),
            start_time: v.get("start_time").and_then(Value::as_i64),
            repos: map("repos"),
            obsoleted: map("obsoleted"),
        })
    }
}

fn package_json(e: &Element, repo: Option<&String>) -> Value {
    let mut m = Map::new();
    m.insert("name".into(), json!(e.nevra.name));
    if let Some(ep) = e.nevra.epoch {
        m.insert("epoch".into(), json!(ep));
    }
    m.insert("version".into(), json!(e.nevra.version));
    m.insert("release".into(), json!(e.nevra.release));
    m.insert("arch".into(), json!(e.nevra.arch));
    let d = &e.details;
    let mut opt = |k: &str, v: Option<Value>| {
        if let Some(v) = v {
            m.insert(k.into(), v);
        }
    };
    opt("repo", repo.map(|r| json!(r)));
    opt("vendor", d.vendor.as_ref().map(|v| json!(v)));
    opt("buildtime", d.buildtime.map(|v| json!(v)));
    opt("install_time", d.install_time.map(|v| json!(v)));
    opt("size", d.size.map(|v| json!(v)));
    opt("digest", d.digest.as_ref().map(|v| json!(v)));
    Value::Object(m)
}

/// `micros` since the Unix epoch as RFC 3339 UTC with microseconds
/// (`2026-11-24T08:00:01.500000Z`), the hook input's precise time form:
/// integer seconds would put two transactions of one second in one instant,
/// and history could not tell which came first. (Civil date from days:
/// H. Hinnant's `civil_from_days`.)
pub fn rfc3339_micros(micros: i64) -> String {
    let (secs, frac) = (micros.div_euclid(1_000_000), micros.rem_euclid(1_000_000));
    let (days, sod) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{frac:06}Z",
        sod / 3600,
        sod % 3600 / 60,
        sod % 60
    )
}

/// The NDJSON lines `pkgstream-emit record` takes for `changes`;
/// `event_time` in microseconds since the Unix epoch.
pub fn ndjson(
    elements: &[Element],
    changes: &[Change],
    tid: i64,
    ctx: &Context,
    event_time: i64,
) -> String {
    let event_time = rfc3339_micros(event_time);
    let mut out = String::new();
    let mut txn = Map::new();
    txn.insert("rpm_tid".into(), json!(tid));
    if let Some(h) = ctx.history_id {
        txn.insert("history_id".into(), json!(h));
    }
    if let Some(c) = &ctx.command_line {
        txn.insert("command_line".into(), json!(c));
    }
    if let Some(u) = &ctx.login_user {
        txn.insert("login_user".into(), json!(u));
    }
    txn.insert("start_time".into(), json!(ctx.start_time.unwrap_or(tid)));
    let txn = Value::Object(txn);
    for c in changes {
        let pkg = &elements[c.package];
        // Only packages dnf installed come from a repository.
        let repo = if pkg.added {
            ctx.repos.get(&pkg.nevra.key())
        } else {
            None
        };
        let mut line = Map::new();
        line.insert("kind".into(), json!("change"));
        line.insert("source".into(), json!(ctx.source));
        line.insert("action".into(), json!(c.action.as_str()));
        line.insert("event_time".into(), json!(event_time));
        line.insert("package".into(), package_json(pkg, repo));
        if let Some(r) = c.replaced {
            line.insert("replaced".into(), package_json(&elements[r], None));
        }
        line.insert("transaction".into(), txn.clone());
        out.push_str(&Value::Object(line).to_string());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn el(added: bool, name: &str, v: &str, depends_on: Option<usize>) -> Element {
        Element {
            added,
            nevra: Nevra {
                name: name.into(),
                epoch: None,
                version: v.into(),
                release: "1".into(),
                arch: "noarch".into(),
            },
            depends_on,
            ..Default::default()
        }
    }

    /// Numeric dotted compare, enough for the tests (librpm's rpmvercmp in production).
    fn vercmp(a: &str, b: &str) -> Ordering {
        let p = |s: &str| {
            s.split('.')
                .map(|x| x.parse::<u64>().unwrap_or(0))
                .collect::<Vec<_>>()
        };
        p(a).cmp(&p(b))
    }

    fn actions(els: &[Element]) -> Vec<(Action, &str, Option<&str>)> {
        classify(els, &vercmp)
            .iter()
            .map(|c| {
                (
                    c.action,
                    els[c.package].nevra.version.as_str(),
                    c.replaced.map(|r| els[r].nevra.version.as_str()),
                )
            })
            .collect()
    }

    #[test]
    fn upgrade_downgrade_reinstall_install_remove() {
        let els = vec![
            el(true, "a", "2", None),
            el(false, "a", "1", Some(0)),
            el(true, "b", "1", None),
            el(false, "b", "2", Some(2)),
            el(true, "c", "3", None),
            el(false, "c", "3", Some(4)),
            el(true, "d", "1", None),
            el(false, "e", "9", None),
        ];
        assert_eq!(
            actions(&els),
            vec![
                (Action::Upgrade, "2", Some("1")),
                (Action::Downgrade, "1", Some("2")),
                (Action::Reinstall, "3", Some("3")),
                (Action::Install, "1", None),
                (Action::Remove, "9", None)
            ]
        );
    }

    #[test]
    fn obsoleted_package_points_at_its_obsoleter() {
        let els = vec![el(true, "new", "1", None), el(false, "old", "5", Some(0))];
        assert_eq!(
            actions(&els),
            vec![
                (Action::Install, "1", None),
                (Action::Obsolete, "5", Some("1"))
            ]
        );
    }

    #[test]
    fn dnf_obsoletes_link_an_unlinked_erase() {
        let mut els = vec![
            el(true, "new", "1", None),
            el(false, "old", "5", None),
            el(false, "gone", "1", None),
        ];
        let mut ctx = Context::default();
        ctx.obsoleted
            .insert("old-0:5-1.noarch".into(), "new-0:1-1.noarch".into());
        apply_obsoletes(&mut els, &ctx);
        assert_eq!(
            actions(&els),
            vec![
                (Action::Install, "1", None),
                (Action::Obsolete, "5", Some("1")),
                (Action::Remove, "1", None)
            ]
        );
    }

    #[test]
    fn failed_elements_are_not_reported() {
        let mut els = vec![
            el(true, "a", "2", None),
            el(false, "a", "1", Some(0)),
            el(true, "x", "1", None),
        ];
        els[0].failed = true;
        els[1].failed = true;
        assert_eq!(actions(&els), vec![(Action::Install, "1", None)]);
    }

    #[test]
    fn epoch_wins_over_version() {
        let mut a = el(true, "a", "1", None).nevra;
        let b = el(true, "a", "9", None).nevra;
        a.epoch = Some(1);
        assert_eq!(evr_cmp(&a, &b, &vercmp), Ordering::Greater);
    }

    #[test]
    fn dnf_context_only_for_its_own_process() {
        let text = r#"{"pid":42,"source":"dnf","history_id":7,"command_line":"dnf -y install a","login_user":"alice","repos":{"a-0:2-1.noarch":"local"}}"#;
        let ctx = Context::from_dnf_env(text, 42).unwrap();
        assert_eq!(ctx.history_id, Some(7));
        assert_eq!(
            ctx.repos.get("a-0:2-1.noarch").map(String::as_str),
            Some("local")
        );
        assert!(Context::from_dnf_env(text, 43).is_none());
        assert!(Context::from_dnf_env("{broken", 42).is_none());
    }

    #[test]
    fn event_times_keep_their_microseconds() {
        assert_eq!(rfc3339_micros(0), "1970-01-01T00:00:00.000000Z");
        assert_eq!(
            rfc3339_micros(1_795_507_201_500_000),
            "2026-11-24T08:00:01.500000Z"
        );
        assert_eq!(
            rfc3339_micros(1_709_164_799_999_999),
            "2024-02-28T23:59:59.999999Z"
        );
        assert_eq!(
            rfc3339_micros(1_709_164_800_000_001),
            "2024-02-29T00:00:00.000001Z"
        );
        assert_eq!(
            rfc3339_micros(951_782_400_000_000),
            "2000-02-29T00:00:00.000000Z"
        );
        assert_eq!(rfc3339_micros(-1), "1969-12-31T23:59:59.999999Z");
    }

    #[test]
    fn ndjson_lines_are_valid_hook_input() {
        let els = vec![el(true, "a", "2", None), el(false, "a", "1", Some(0))];
        let mut ctx = Context {
            source: "dnf".into(),
            history_id: Some(3),
            ..Default::default()
        };
        ctx.repos.insert("a-0:2-1.noarch".into(), "local".into());
        let text = ndjson(
            &els,
            &classify(&els, &vercmp),
            1_700_000_000,
            &ctx,
            1_700_000_001_250_000,
        );
        let v: Value = serde_json::from_str(text.trim()).unwrap();
        assert_eq!(v["action"], "upgrade");
        assert_eq!(v["event_time"], "2023-11-14T22:13:21.250000Z");
        assert_eq!(v["package"]["repo"], "local");
        assert_eq!(v["replaced"]["version"], "1");
        assert_eq!(v["transaction"]["rpm_tid"], 1_700_000_000);
        assert_eq!(v["transaction"]["history_id"], 3);
        assert_eq!(text.lines().count(), 1);
    }
}
