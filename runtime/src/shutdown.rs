//! Graceful shutdown: SIGTERM or SIGINT raise a flag; stage loops check it
//! between batches, finish and commit the batch in hand, and return.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

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

    /// Sleeps `d`, or less if shutdown is requested meanwhile (checked every
    /// 50 ms); returns whether it was.
    pub fn sleep(&self, d: Duration) -> bool {
        let until = Instant::now() + d;
        loop {
            if self.requested() {
                return true;
            }
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            std::thread::sleep(left.min(Duration::from_millis(50)));
        }
    }

    /// Requests shutdown (tests, or a stage that must stop).
    pub fn request(&self) {
        self.0.store(true, Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sleep_ends_early_on_request() {
        let s = Shutdown::default();
        let started = Instant::now();
        assert!(!s.sleep(Duration::from_millis(60)));
        assert!(started.elapsed() >= Duration::from_millis(60));
        let other = s.clone();
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(100));
            other.request();
        });
        let started = Instant::now();
        assert!(s.sleep(Duration::from_secs(30)));
        assert!(started.elapsed() < Duration::from_secs(5));
        t.join().ok();
    }
}
