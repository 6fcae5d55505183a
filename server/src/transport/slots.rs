//! Connection slots: a semaphore permit and the gauge that counts it, both given back when
//! the connection's task ends, however it ends.

use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering::Relaxed;

use tokio::sync::OwnedSemaphorePermit;

use crate::metrics::Metrics;

/// Counts a connection in one of the server's gauges for as long as it lives, including when
/// its task panics (the count goes down as the task unwinds).
pub(crate) struct Gauge {
    metrics: Arc<Metrics>,
    which: fn(&Metrics) -> &AtomicU64,
}

impl Gauge {
    pub(crate) fn up(metrics: &Arc<Metrics>, which: fn(&Metrics) -> &AtomicU64) -> Gauge {
        which(metrics).fetch_add(1, Relaxed);
        Gauge {
            metrics: metrics.clone(),
            which,
        }
    }
}

impl Drop for Gauge {
    fn drop(&mut self) {
        (self.which)(&self.metrics).fetch_sub(1, Relaxed);
    }
}

/// A connection slot and the gauge that counts it; both are given back when it drops.
pub(crate) struct Slot {
    _permit: OwnedSemaphorePermit,
    _gauge: Gauge,
}

impl Slot {
    pub(crate) fn new(permit: OwnedSemaphorePermit, gauge: Gauge) -> Slot {
        Slot {
            _permit: permit,
            _gauge: gauge,
        }
    }
}
