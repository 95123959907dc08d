//! The search sink: enriched topic → Elasticsearch/OpenSearch.
//!
//! - [`documents`]: per-event functions (change/snapshot → bulk items);
//! - [`retry`]: what a bulk status means (done, retry, DLQ) and the backoff;
//! - [`client`]: the engine's REST API (bulk, JSON calls);
//! - [`setup`]: scripts, templates, indices, lifecycle at start-up;
//! - [`sink`]: the Kafka loop, the lanes and their batches, and the audit
//!   indexer that drives one lane for `pkgstream replay --format index`.

pub mod client;
pub mod documents;
pub mod retry;
pub mod setup;
pub mod sink;

pub use sink::{AuditIndexer, AuditRejection, AuditReport, SearchSink, SearchSinkMetrics};
