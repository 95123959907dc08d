//! pkgstream's host side: what runs on every RPM-based server.
//!
//! Hooks (the dnf/yum plugins, the rpm plugin, the inventory timer) call
//! `pkgstream-emit record` with JSON events ([`input`]); the emitter encodes
//! them with the contract (`pkgstream-schemas`) and appends them durably to
//! the local [`spool`] before returning. `pkgstream-emit flush`
//! ([`emitter::flush`]) ships the spool to Kafka with an idempotent producer
//! and removes only what Kafka acknowledged. Nothing here talks to the
//! central services except through Kafka, and nothing central is imported.
//!
//! - [`config`]: the `emit.toml` file and its environment overrides;
//! - [`host`]: machine id, hostname and os-release;
//! - [`input`]: the NDJSON hook format;
//! - [`limits`]: the size limits `record` applies to hook input;
//! - [`inventory`]: the rpmdb as one snapshot (`pkgstream-emit inventory`);
//! - [`chunk`]: a snapshot too large for one Kafka record, as chunks;
//! - [`spool`]: the crash-safe append-only queue;
//! - [`emitter`]: `record` and `flush`;
//! - [`ProducerError`]: the one error type, with an exit code per variant.

pub mod chunk;
pub mod config;
pub mod emitter;
mod error;
pub mod host;
pub mod input;
pub mod inventory;
pub mod limits;
pub mod spool;

pub use config::EmitConfig;
pub use error::{ProducerError, EXIT_RECORDED_WITH_FALLBACK_CONFIG};
pub use spool::{Lane, Spool};
