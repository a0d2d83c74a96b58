//! Wall-clock and monotonic time in the integer units the hot path uses.

use std::sync::OnceLock;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

/// Unix time in nanoseconds (saturating; a clock before 1970 reads 0).
pub fn unix_nanos() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
}

/// Unix time in milliseconds.
pub fn unix_ms() -> i64 {
    unix_nanos() / 1_000_000
}

/// `at` in nanoseconds on a monotonic clock that starts near process start;
/// used by the rate limiter, which must not jump with the wall clock. Takes
/// an instant the request already read, to save a clock read.
pub fn mono_nanos_at(at: Instant) -> u64 {
    static ORIGIN: OnceLock<Instant> = OnceLock::new();
    let origin = *ORIGIN.get_or_init(Instant::now);
    u64::try_from(at.saturating_duration_since(origin).as_nanos()).unwrap_or(u64::MAX)
}
