//! Time as a port, so expiry rules can be tested without waiting.

use std::time::{SystemTime, UNIX_EPOCH};

pub trait Clock: Send + Sync + 'static {
    /// Unix time in milliseconds.
    fn now_ms(&self) -> i64;
}

#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> i64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
    }
}

/// Wall-clock seconds, as TTL attributes are kept (DynamoDB TTL reads epoch seconds).
pub fn now_seconds() -> i64 {
    SystemClock.now_ms() / 1000
}
