//! Semantic checks: what the Avro schema allows but no real rpm transaction
//! can produce. Applied on encode (never emit garbage) and decode (never
//! pass it on).

use crate::event::{Action, Enrichment, InventorySnapshot, Package, PackageChange};
use crate::SchemaError;

const CHANGE: &str = "PackageChange";
const SNAPSHOT: &str = "InventorySnapshot";
/// Most chunks one snapshot may have (at the default chunk size, ~250
/// million packages: no real host; bounds what a reassembly may expect).
pub const MAX_CHUNKS: i32 = 65_536;

/// Checks a change event.
pub fn change(c: &PackageChange<'_>) -> Result<(), SchemaError> {
    let bad = |field: &str, reason| {
        Err(SchemaError::Invalid {
            kind: CHANGE,
            field: field.to_owned(),
            reason,
        })
    };
    if c.host.machine_id.is_empty() {
        return bad("host.machine_id", "is empty");
    }
    if c.event_time <= 0 {
        return bad("event_time", "is not after 1970");
    }
    if c.transaction.rpm_tid < 0 {
        return bad("transaction.rpm_tid", "is negative");
    }
    package(CHANGE, "package", &c.package)?;
    match (&c.replaced, c.action) {
        (Some(r), _) => package(CHANGE, "replaced", r)?,
        (None, Action::Upgrade | Action::Downgrade) => {
            return bad(
                "replaced",
                "is missing (UPGRADE and DOWNGRADE name the package they replaced)",
            )
        }
        (None, _) => {}
    }
    Ok(())
}

/// Checks an inventory snapshot.
pub fn snapshot(s: &InventorySnapshot<'_>) -> Result<(), SchemaError> {
    if s.host.machine_id.is_empty() {
        return Err(SchemaError::Invalid {
            kind: SNAPSHOT,
            field: "host.machine_id".into(),
            reason: "is empty",
        });
    }
    if s.taken_at <= 0 {
        return Err(SchemaError::Invalid {
            kind: SNAPSHOT,
            field: "taken_at".into(),
            reason: "is not after 1970",
        });
    }
    if let Some(c) = &s.chunk {
        let bad = |field: &str, reason| {
            Err(SchemaError::Invalid {
                kind: SNAPSHOT,
                field: format!("chunk.{field}"),
                reason,
            })
        };
        if c.count < 1 || c.count > MAX_CHUNKS {
            return bad("count", "is not between 1 and 65536");
        }
        if c.index < 0 || c.index >= c.count {
            return bad("index", "is not between 0 and count - 1");
        }
        if c.package_count < 0 || (c.package_count as usize) < s.packages.len() {
            return bad("package_count", "is smaller than the chunk's packages");
        }
        if c.count > 1 && s.packages.is_empty() {
            return bad("index", "is an empty chunk of a chunked snapshot");
        }
    }
    for (i, p) in s.packages.iter().enumerate() {
        // Only format the path when there is an error.
        if let Err(SchemaError::Invalid { field, reason, .. }) = package(SNAPSHOT, "", p) {
            return Err(SchemaError::Invalid {
                kind: SNAPSHOT,
                field: format!("packages[{i}]{field}"),
                reason,
            });
        }
    }
    Ok(())
}

fn package(kind: &'static str, path: &str, p: &Package<'_>) -> Result<(), SchemaError> {
    let bad = |field: &str, reason| {
        Err(SchemaError::Invalid {
            kind,
            field: format!("{path}.{field}"),
            reason,
        })
    };
    for (field, value) in [
        ("name", &p.name),
        ("version", &p.version),
        ("release", &p.release),
        ("arch", &p.arch),
    ] {
        if value.is_empty() {
            return bad(field, "is empty");
        }
    }
    if p.epoch.is_some_and(|e| e < 0) {
        return bad("epoch", "is negative");
    }
    if p.size.is_some_and(|s| s < 0) {
        return bad("size", "is negative");
    }
    Ok(())
}

/// Checks the router's enrichment.
pub fn enrichment(kind: &'static str, e: &Enrichment<'_>) -> Result<(), SchemaError> {
    let bad = |field: &str, reason| {
        Err(SchemaError::Invalid {
            kind,
            field: format!("enrichment.{field}"),
            reason,
        })
    };
    if e.hostgroup.is_empty() {
        return bad("hostgroup", "is empty");
    }
    if e.environment.is_empty() {
        return bad("environment", "is empty");
    }
    if e.routed_at <= 0 {
        return bad("routed_at", "is not after 1970");
    }
    Ok(())
}
