//! A producer context that remembers failed deliveries, for producers
//! whose caller must know after `flush` whether Kafka refused anything
//! (the dead-letter producer, the simulator's host metadata).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use rdkafka::producer::{DeliveryResult, ProducerContext};
use rdkafka::ClientContext;

/// Counts failed deliveries and keeps the first one's reason.
#[derive(Default)]
pub struct DeliveryFailures {
    count: AtomicU64,
    first: Mutex<Option<String>>,
}

impl DeliveryFailures {
    /// The failures since the last call (how many, the first reason), and
    /// starts counting afresh.
    pub fn take(&self) -> Option<(u64, String)> {
        let n = self.count.swap(0, Ordering::Relaxed);
        let first = self.first.lock().unwrap_or_else(|p| p.into_inner()).take();
        (n > 0).then(|| (n, first.unwrap_or_default()))
    }
}

impl ClientContext for DeliveryFailures {}

impl ProducerContext for DeliveryFailures {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        if let Err((e, _)) = result {
            self.count.fetch_add(1, Ordering::Relaxed);
            let mut slot = self.first.lock().unwrap_or_else(|p| p.into_inner());
            slot.get_or_insert_with(|| e.to_string());
        }
    }
}
