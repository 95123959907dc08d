//! The metrics sink: enriched topic → time series.
//!
//! - [`fleet`]: per-event function updating the counters and the
//!   watch-list state (the drift gauges); pure, unit-tested;
//! - [`remote_write`]: Prometheus remote write (protobuf, snappy);
//! - [`sink`]: the Kafka loop and the push timer.
//!
//! Labels stay bounded: action, source, host group and environment are
//! small fixed sets; package and version appear only for the configured
//! watch list. Per-host or per-package detail belongs in the search engine:
//! one series per host × package would be 15 million series for 10,000
//! hosts, which no Prometheus holds.

pub mod fleet;
pub mod remote_write;
pub mod sink;

pub use fleet::FleetMetrics;
pub use sink::MetricsSink;
