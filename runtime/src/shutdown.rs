//! Graceful shutdown: SIGTERM or SIGINT raise a flag; stage loops check it
//! between batches, finish and commit the batch in hand, and return.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use crate::RuntimeError;

/// A shutdown request flag, cheap to clone and to check.
#[derive(Clone, Debug, Default)]
pub struct Shutdown(Arc<AtomicBool>);

impl Shutdown {
    /// A flag raised by SIGTERM and SIGINT.
    pub fn on_signals() -> Result<Shutdown, RuntimeError> {
        let s = Shutdown::default();
        for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
            signal_hook::flag::register(sig, s.0.clone())
                .map_err(|e| RuntimeError::Signals(e.to_string()))?;
        }
        Ok(s)
    }

    /// Whether shutdown was requested.
    pub fn requested(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }

    /// Requests shutdown (tests, or a stage that must stop).
    pub fn request(&self) {
        self.0.store(true, Ordering::Relaxed)
    }
}
