//! The router's Prometheus metrics (`pkgstream_router_*`).

use prometheus::{
    Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
};

/// Every metric the router exports. Label values come from small fixed sets.
#[allow(missing_docs)]
pub struct RouterMetrics {
    pub registry: Registry,
    /// `lane` = changes | inventory.
    pub events_in: IntCounterVec,
    /// `kind` = change | snapshot | synthetic.
    pub events_out: IntCounterVec,
    pub deduplicated: IntCounter,
    /// `reason` = a `SchemaError::code()`.
    pub dlq: IntCounterVec,
    pub unknown_hosts: IntCounter,
    pub window_entries: IntGauge,
    pub window_bytes: IntGauge,
    /// Per partition: from a window rebuild's request to its window.
    pub window_rebuild_seconds: Histogram,
    pub transaction_seconds: Histogram,
    pub transactions_aborted: IntCounter,
    /// `source` = file | topic.
    pub host_table_hosts: IntGaugeVec,
    pub host_table_updates: IntCounter,
    /// Per assigned partition of the raw topics: `topic`, `partition`.
    pub consumer_lag: IntGaugeVec,
}

impl RouterMetrics {
    /// Creates and registers the metrics.
    pub fn new() -> Result<RouterMetrics, prometheus::Error> {
        let registry = Registry::new();
        let m = RouterMetrics {
            events_in: IntCounterVec::new(
                Opts::new("pkgstream_router_events_in_total", "Raw events consumed"),
                &["lane"],
            )?,
            events_out: IntCounterVec::new(
                Opts::new(
                    "pkgstream_router_events_out_total",
                    "Events produced to the enriched topic",
                ),
                &["kind"],
            )?,
            deduplicated: IntCounter::new(
                "pkgstream_router_events_deduplicated_total",
                "Duplicate reports dropped",
            )?,
            dlq: IntCounterVec::new(
                Opts::new(
                    "pkgstream_router_events_dlq_total",
                    "Poison events sent to the DLQ",
                ),
                &["reason"],
            )?,
            unknown_hosts: IntCounter::new(
                "pkgstream_router_unknown_host_events_total",
                "Events of hosts in no host table",
            )?,
            window_entries: IntGauge::new(
                "pkgstream_router_dedupe_window_entries",
                "Ids in the dedupe windows",
            )?,
            window_bytes: IntGauge::new(
                "pkgstream_router_dedupe_window_bytes",
                "Heap bytes of the dedupe windows",
            )?,
            window_rebuild_seconds: Histogram::with_opts(
                HistogramOpts::new(
                    "pkgstream_router_dedupe_window_rebuild_seconds",
                    "Time to rebuild one partition's dedupe window (off the poll loop)",
                )
                .buckets(vec![
                    0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
                ]),
            )?,
            transaction_seconds: Histogram::with_opts(
                HistogramOpts::new(
                    "pkgstream_router_transaction_commit_seconds",
                    "Time to commit one transaction",
                )
                .buckets(vec![
                    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                ]),
            )?,
            transactions_aborted: IntCounter::new(
                "pkgstream_router_transactions_aborted_total",
                "Transactions aborted",
            )?,
            host_table_hosts: IntGaugeVec::new(
                Opts::new(
                    "pkgstream_router_host_table_hosts",
                    "Hosts in the host table",
                ),
                &["source"],
            )?,
            host_table_updates: IntCounter::new(
                "pkgstream_router_host_table_updates_total",
                "Host table updates applied",
            )?,
            consumer_lag: IntGaugeVec::new(
                Opts::new(
                    "pkgstream_router_consumer_lag_messages",
                    "Messages behind the end of each assigned raw partition",
                ),
                &["topic", "partition"],
            )?,
            registry,
        };
        m.registry.register(Box::new(m.events_in.clone()))?;
        m.registry.register(Box::new(m.events_out.clone()))?;
        m.registry.register(Box::new(m.deduplicated.clone()))?;
        m.registry.register(Box::new(m.dlq.clone()))?;
        m.registry.register(Box::new(m.unknown_hosts.clone()))?;
        m.registry.register(Box::new(m.window_entries.clone()))?;
        m.registry.register(Box::new(m.window_bytes.clone()))?;
        m.registry
            .register(Box::new(m.window_rebuild_seconds.clone()))?;
        m.registry
            .register(Box::new(m.transaction_seconds.clone()))?;
        m.registry
            .register(Box::new(m.transactions_aborted.clone()))?;
        m.registry.register(Box::new(m.host_table_hosts.clone()))?;
        m.registry
            .register(Box::new(m.host_table_updates.clone()))?;
        m.registry.register(Box::new(m.consumer_lag.clone()))?;
        Ok(m)
    }
}
