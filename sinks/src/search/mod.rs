//! The search sink: enriched topic → Elasticsearch/OpenSearch.
//!
//! - [`documents`]: per-event functions (change/snapshot → bulk items);
//! - [`retry`]: what a status means (done, retry, split, fatal), the
//!   engine's reasons, and the backoff;
//! - [`plan`]: which items go in the next bulk of a batch (item retries in
//!   order, bisection of a bulk refused as a whole);
//! - [`client`]: the engine's REST API (bulk, JSON calls);
//! - [`setup`]: scripts, templates, indices, lifecycle at start-up;
//! - [`sink`]: the Kafka loop, the lanes and their batches, and the audit
//!   indexer that drives one lane for `pkgstream replay --format index`.

pub mod client;
pub mod documents;
pub mod plan;
pub mod retry;
pub mod setup;
pub mod sink;

pub use sink::{AuditIndexer, AuditRejection, AuditReport, SearchSink, SearchSinkMetrics};
