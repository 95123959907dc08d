//! The search sink: enriched topic → Elasticsearch/OpenSearch.
//!
//! - [`documents`]: per-event functions (change/snapshot → bulk items);
//! - [`retry`]: what a status means (done, retry, split, fatal), the
//!   engine's reasons, and the backoff;
//! - [`plan`]: which items go in the next bulk of a batch (item retries in
//!   order, bisection of a bulk refused as a whole);
//! - [`client`]: the engine's REST API (bulk, JSON calls);
//! - [`setup`]: scripts, templates, indices, lifecycle at start-up;
//! - [`sink`]: the Kafka loop, readiness, lane supervision, metrics;
//! - `lane`: one lane — batches, bulks, snapshots, DLQ, offsets;
//! - [`chunks`]: a chunked snapshot reconciled chunk by chunk;
//! - [`audit`]: the audit indexer that drives one lane for `pkgstream
//!   replay --format index`.

pub mod audit;
pub mod chunks;
pub mod client;
pub mod documents;
mod lane;
pub mod plan;
pub mod retry;
pub mod setup;
pub mod sink;

pub use audit::{AuditIndexer, AuditRejection, AuditReport};
pub use sink::{SearchSink, SearchSinkMetrics};
