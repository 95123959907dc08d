//! Rust types of the contract. Field names and order mirror the `.avsc`
//! files; strings are `Cow` so that decoding borrows from the input (no
//! allocation per event) while hooks and tests can build owned events.

use std::borrow::Cow;
use std::fmt;

use serde::{Deserialize, Serialize};

/// A 128-bit idempotency key (Avro `fixed` of 16 bytes named `EventId`).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct EventId(pub [u8; 16]);

impl EventId {
    /// Lowercase hex, the form used as a document `_id` and in logs.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
}

impl fmt::Display for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "EventId({self})")
    }
}

impl Serialize for EventId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(&self.0)
    }
}

impl<'de> Deserialize<'de> for EventId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = EventId;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("16 bytes")
            }
            fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<EventId, E> {
                <[u8; 16]>::try_from(v)
                    .map(EventId)
                    .map_err(|_| E::invalid_length(v.len(), &self))
            }
        }
        d.deserialize_bytes(V)
    }
}

/// Which hook reported a change (Avro enum `Source`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Source {
    /// The dnf 4 plugin.
    #[serde(alias = "dnf")]
    Dnf,
    /// The yum 3 plugin.
    #[serde(alias = "yum")]
    Yum,
    /// The rpm transaction plugin.
    #[serde(alias = "rpm")]
    Rpm,
    /// Inferred from two inventory snapshots.
    #[serde(alias = "inventory")]
    Inventory,
}

/// What happened to a package (Avro enum `Action`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Action {
    /// A package that was not installed before.
    #[serde(alias = "install")]
    Install,
    /// A newer version replaced an older one.
    #[serde(alias = "upgrade")]
    Upgrade,
    /// An older version replaced a newer one.
    #[serde(alias = "downgrade")]
    Downgrade,
    /// The same version installed again.
    #[serde(alias = "reinstall")]
    Reinstall,
    /// The package was removed.
    #[serde(alias = "remove")]
    Remove,
    /// The package was removed because another obsoletes it.
    #[serde(alias = "obsolete")]
    Obsolete,
}

impl Action {
    /// The Avro symbol, also the text hashed into `event_id`.
    pub fn symbol(self) -> &'static str {
        match self {
            Action::Install => "INSTALL",
            Action::Upgrade => "UPGRADE",
            Action::Downgrade => "DOWNGRADE",
            Action::Reinstall => "REINSTALL",
            Action::Remove => "REMOVE",
            Action::Obsolete => "OBSOLETE",
        }
    }
}

/// Host identity (Avro record `Host`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Host<'a> {
    /// /etc/machine-id; the Kafka message key.
    #[serde(borrow)]
    pub machine_id: Cow<'a, str>,
    /// Kernel hostname.
    #[serde(borrow)]
    pub hostname: Cow<'a, str>,
    /// `ID` from /etc/os-release.
    #[serde(borrow)]
    pub os_id: Cow<'a, str>,
    /// `VERSION_ID` from /etc/os-release.
    #[serde(borrow)]
    pub os_version: Cow<'a, str>,
    /// Machine architecture.
    #[serde(borrow)]
    pub arch: Cow<'a, str>,
}

/// An rpm package (Avro record `Package`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Package<'a> {
    /// rpm NAME.
    #[serde(borrow)]
    pub name: Cow<'a, str>,
    /// rpm EPOCH, `None` when unset.
    #[serde(default)]
    pub epoch: Option<i32>,
    /// rpm VERSION.
    #[serde(borrow)]
    pub version: Cow<'a, str>,
    /// rpm RELEASE.
    #[serde(borrow)]
    pub release: Cow<'a, str>,
    /// rpm ARCH.
    #[serde(borrow)]
    pub arch: Cow<'a, str>,
    /// Repository id, when known.
    #[serde(borrow, default, deserialize_with = "opt_cow")]
    pub repo: Option<Cow<'a, str>>,
    /// rpm VENDOR.
    #[serde(borrow, default, deserialize_with = "opt_cow")]
    pub vendor: Option<Cow<'a, str>>,
    /// rpm BUILDTIME, microseconds since the Unix epoch.
    #[serde(default)]
    pub buildtime: Option<i64>,
    /// rpm INSTALLTIME, microseconds since the Unix epoch.
    #[serde(default)]
    pub install_time: Option<i64>,
    /// Installed size in bytes.
    #[serde(default)]
    pub size: Option<i64>,
    /// `<algorithm>:<hex>` header digest.
    #[serde(borrow, default, deserialize_with = "opt_cow")]
    pub digest: Option<Cow<'a, str>>,
}

/// The transaction a change was part of (Avro record `Transaction`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Transaction<'a> {
    /// rpm transaction id (seconds timestamp).
    pub rpm_tid: i64,
    /// dnf/yum history id.
    #[serde(default)]
    pub history_id: Option<i64>,
    /// Command line that drove the transaction.
    #[serde(borrow, default, deserialize_with = "opt_cow")]
    pub command_line: Option<Cow<'a, str>>,
    /// Login user behind the change.
    #[serde(borrow, default, deserialize_with = "opt_cow")]
    pub login_user: Option<Cow<'a, str>>,
    /// Transaction start, microseconds since the Unix epoch.
    #[serde(default)]
    pub start_time: Option<i64>,
}

/// One change of one package on one host (Avro record `PackageChange`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PackageChange<'a> {
    /// Idempotency key, see [`crate::change_event_id`].
    pub event_id: EventId,
    /// When the change happened, microseconds since the Unix epoch.
    pub event_time: i64,
    /// The host.
    #[serde(borrow)]
    pub host: Host<'a>,
    /// Which hook reported it.
    pub source: Source,
    /// What happened.
    pub action: Action,
    /// The package acted on.
    #[serde(borrow)]
    pub package: Package<'a>,
    /// The package it replaced, if any.
    #[serde(borrow, default)]
    pub replaced: Option<Package<'a>>,
    /// The transaction.
    #[serde(borrow)]
    pub transaction: Transaction<'a>,
}

/// The full installed set of one host (Avro record `InventorySnapshot`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InventorySnapshot<'a> {
    /// Idempotency key, see [`crate::snapshot_id`].
    pub snapshot_id: EventId,
    /// When the rpmdb was read, microseconds since the Unix epoch.
    pub taken_at: i64,
    /// The host.
    #[serde(borrow)]
    pub host: Host<'a>,
    /// Every installed package (of this chunk, for a chunk).
    #[serde(borrow)]
    pub packages: Vec<Package<'a>>,
    /// Set when this record is one chunk of a larger snapshot (v2); `None`
    /// for a whole snapshot and for every v1 record.
    #[serde(default)]
    pub chunk: Option<SnapshotChunk>,
}

/// Where a chunk belongs in its snapshot (Avro record `SnapshotChunk`, v2).
/// A snapshot too large for one Kafka message is sent as `count` records
/// with the same key, in `index` order; each record's own `snapshot_id` is
/// [`crate::chunk_id`] of the whole snapshot's id and its index.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotChunk {
    /// The whole snapshot's id ([`crate::snapshot_id`]), the same in every chunk.
    pub snapshot_id: EventId,
    /// This chunk's position, 0-based.
    pub index: i32,
    /// How many chunks the snapshot has.
    pub count: i32,
    /// Packages in the whole snapshot.
    pub package_count: i32,
}

impl SnapshotChunk {
    /// True for the last chunk of its snapshot.
    pub fn is_last(&self) -> bool {
        self.index + 1 == self.count
    }
}

impl InventorySnapshot<'_> {
    /// The id of the whole snapshot this record is (or is a chunk of).
    pub fn whole_id(&self) -> EventId {
        self.chunk.map_or(self.snapshot_id, |c| c.snapshot_id)
    }
}

/// `Option<Cow<str>>` that borrows from the input when it can (serde's own
/// `Cow` impl always allocates, and `#[serde(borrow)]` does not reach inside
/// an `Option`).
fn opt_cow<'de: 'a, 'a, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<Cow<'a, str>>, D::Error> {
    struct CowStr;
    impl<'de> serde::de::Visitor<'de> for CowStr {
        type Value = Option<Cow<'de, str>>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("null or a string")
        }
        fn visit_none<E: serde::de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_unit<E: serde::de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_some<D: serde::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
            d.deserialize_str(self)
        }
        fn visit_borrowed_str<E: serde::de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
            Ok(Some(Cow::Borrowed(v)))
        }
        fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Self::Value, E> {
            Ok(Some(Cow::Owned(v.to_owned())))
        }
        fn visit_string<E: serde::de::Error>(self, v: String) -> Result<Self::Value, E> {
            Ok(Some(Cow::Owned(v)))
        }
    }
    d.deserialize_option(CowStr)
}

/// What the router attaches to an event (Avro record `Enrichment`, the last
/// field of `EnrichedChange` and `EnrichedSnapshot`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Enrichment<'a> {
    /// Host group (or the configured default for unknown hosts).
    #[serde(borrow)]
    pub hostgroup: Cow<'a, str>,
    /// Environment (or the configured default).
    #[serde(borrow)]
    pub environment: Cow<'a, str>,
    /// Owning team.
    #[serde(borrow, default, deserialize_with = "opt_cow")]
    pub owner: Option<Cow<'a, str>>,
    /// Datacenter or site.
    #[serde(borrow, default, deserialize_with = "opt_cow")]
    pub datacenter: Option<Cow<'a, str>>,
    /// Free-form tags.
    #[serde(default)]
    pub tags: Cow<'a, std::collections::BTreeMap<String, String>>,
    /// False when no host table knows the host.
    pub known_host: bool,
    /// The host has maintenance windows and the event is in none.
    pub outside_maintenance_window: bool,
    /// A plain-rpm change no dnf/yum transaction explains.
    pub unexplained_rpm: bool,
    /// When the router processed the event, microseconds since the Unix epoch.
    pub routed_at: i64,
}

/// A change after the router (Avro record `EnrichedChange`): the
/// `PackageChange` fields in order, then `enrichment`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[allow(missing_docs)]
pub struct EnrichedChange<'a> {
    pub event_id: EventId,
    pub event_time: i64,
    #[serde(borrow)]
    pub host: Host<'a>,
    pub source: Source,
    pub action: Action,
    #[serde(borrow)]
    pub package: Package<'a>,
    #[serde(borrow, default)]
    pub replaced: Option<Package<'a>>,
    #[serde(borrow)]
    pub transaction: Transaction<'a>,
    /// What the router added.
    #[serde(borrow)]
    pub enrichment: Enrichment<'a>,
}

impl<'a> EnrichedChange<'a> {
    /// Joins a change and its enrichment.
    pub fn new(c: PackageChange<'a>, enrichment: Enrichment<'a>) -> Self {
        EnrichedChange {
            event_id: c.event_id,
            event_time: c.event_time,
            host: c.host,
            source: c.source,
            action: c.action,
            package: c.package,
            replaced: c.replaced,
            transaction: c.transaction,
            enrichment,
        }
    }

    /// Splits into the change as reported and the enrichment.
    pub fn into_parts(self) -> (PackageChange<'a>, Enrichment<'a>) {
        let c = PackageChange {
            event_id: self.event_id,
            event_time: self.event_time,
            host: self.host,
            source: self.source,
            action: self.action,
            package: self.package,
            replaced: self.replaced,
            transaction: self.transaction,
        };
        (c, self.enrichment)
    }
}

/// A snapshot after the router (Avro record `EnrichedSnapshot`): the
/// `InventorySnapshot` fields in order, then `enrichment`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[allow(missing_docs)]
pub struct EnrichedSnapshot<'a> {
    pub snapshot_id: EventId,
    pub taken_at: i64,
    #[serde(borrow)]
    pub host: Host<'a>,
    #[serde(borrow)]
    pub packages: Vec<Package<'a>>,
    #[serde(default)]
    pub chunk: Option<SnapshotChunk>,
    /// What the router added.
    #[serde(borrow)]
    pub enrichment: Enrichment<'a>,
}

impl<'a> EnrichedSnapshot<'a> {
    /// Joins a snapshot and its enrichment.
    pub fn new(s: InventorySnapshot<'a>, enrichment: Enrichment<'a>) -> Self {
        EnrichedSnapshot {
            snapshot_id: s.snapshot_id,
            taken_at: s.taken_at,
            host: s.host,
            packages: s.packages,
            chunk: s.chunk,
            enrichment,
        }
    }

    /// The id of the whole snapshot this record is (or is a chunk of).
    pub fn whole_id(&self) -> EventId {
        self.chunk.map_or(self.snapshot_id, |c| c.snapshot_id)
    }
}
