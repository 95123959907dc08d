//! pkgstream's event contract.
//!
//! The `.avsc` files under `schemas/avro/<Record>/vN.avsc` are the contract;
//! this crate is their Rust face:
//! - [`event`]: the types (`PackageChange`, `InventorySnapshot`, ...), with
//!   strings that borrow from the decoded bytes;
//! - [`codec`]: single-object framing, the registry of every shipped version,
//!   [`decode_change`]/[`decode_snapshot`] and the reusable [`Encoder`]; its
//!   private `codec/fast.rs` is the hand-written positional codec for the
//!   current `PackageChange` and `Enrichment` (the hot path);
//! - [`id`]: the `event_id` and `snapshot_id` derivations;
//! - [`validate`]: semantic checks applied on encode and decode;
//! - [`rpmvercmp`]: rpm's version order, shared by every stage that
//!   compares or sorts versions;
//! - [`sample`]: realistic sample events for tests, benches and demos;
//! - [`SchemaError`]: the one error type, one variant per way input is bad.
//!
//! Schema evolution rules and the `event_id` derivation are documented in
//! `schemas/README.md`; `tests/evolution.rs` enforces them over all versions.

pub mod codec;
mod error;
pub mod event;
pub mod id;
pub mod rpmvercmp;
pub mod sample;
pub mod validate;

pub use codec::{
    decode_change, decode_enriched_change, decode_enriched_snapshot, decode_snapshot, Encoder,
    Kind, Registry, SchemaVersion,
};
pub use error::SchemaError;
pub use event::{
    Action, EnrichedChange, EnrichedSnapshot, Enrichment, EventId, Host, InventorySnapshot,
    Package, PackageChange, SnapshotChunk, Source, Transaction,
};
pub use id::{change_event_id, chunk_id, snapshot_id};
