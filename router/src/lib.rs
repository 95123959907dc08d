//! pkgstream router: consumes `pkgstream.changes.raw` and
//! `pkgstream.inventory.raw`, decodes and validates every shipped schema
//! version, enriches events with host metadata, deduplicates them by
//! `event_id` and republishes them to `pkgstream.changes.enriched` with Kafka
//! transactions.
//!
//! Only the crate exists so far: the router is built by its own issue. It will
//! depend on `pkgstream-schemas` for the contract and never on a sink.
