//! pkgstream sinks: read `pkgstream.changes.enriched` and put it where
//! operators look — a search engine (history, current state, drift) and
//! Prometheus (trends and alerts).
//!
//! Only the crate exists so far: the sinks are built by their own issue. They
//! will depend on `pkgstream-schemas` for the contract and never on the router.
