//! The wall clock, read in one place. Timestamps that leave the process
//! (signed requests, datagrams, records, assignment headers) are Unix time;
//! the sans-IO cores in `protocol/` never read the clock, they are handed
//! these values.

use std::time::{SystemTime, UNIX_EPOCH};

/// Unix time now, in milliseconds (0 if the clock says before 1970).
pub fn unix_ms() -> u64 {
    ms_of(SystemTime::now())
}

/// Unix time now, in microseconds (0 if the clock says before 1970).
pub fn unix_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

/// `t` as Unix milliseconds (0 before 1970).
pub fn ms_of(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}
