//! Time as both sides of the protocol record it.

use std::time::{SystemTime, UNIX_EPOCH};

/// Now, as nanoseconds since the Unix epoch.
pub fn now_ns() -> i64 {
    let d = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    i64::try_from(d.as_nanos()).unwrap_or(i64::MAX)
}
