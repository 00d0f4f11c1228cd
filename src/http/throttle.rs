//! Login throttling: failed logins are counted per user name and per client
//! address; past [`FREE_FAILURES`] in a row, the next attempt under that
//! name or from that address waits, [`FIRST_WAIT_MS`] doubled at each
//! further failure up to [`MAX_WAIT_MS`]. An attempt that must wait is
//! refused before any password is hashed (429 with `Retry-After`, see
//! `admin_api`), so a guesser gets a few tries an hour instead of dozens a
//! second, and a flood costs no hashing. A success clears the user's and the
//! address's count; a count untouched for [`FORGET_MS`] is forgotten.
//!
//! Pure: the caller passes the time.

use std::collections::HashMap;

/// Failures in a row before attempts must wait.
pub const FREE_FAILURES: u32 = 5;
/// The first wait.
pub const FIRST_WAIT_MS: u64 = 1_000;
/// The longest wait.
pub const MAX_WAIT_MS: u64 = 15 * 60_000;
/// A count untouched this long is forgotten.
pub const FORGET_MS: u64 = 60 * 60_000;
/// Most names and addresses remembered (the least recently failed go first).
pub const MAX_KEYS: usize = 100_000;

#[derive(Debug, Clone, Copy)]
struct Count {
    failures: u32,
    last_ms: u64,
}

/// The throttle's state. See the module docs.
#[derive(Debug, Default)]
pub struct LoginThrottle {
    counts: HashMap<String, Count>,
}

/// The keys an attempt is counted under: its user name and its address.
pub fn keys(user: &str, addr: &str) -> [String; 2] {
    [format!("user {user}"), format!("addr {addr}")]
}

/// The wait after `failures` failures in a row.
pub fn wait_ms(failures: u32) -> u64 {
    if failures < FREE_FAILURES {
        return 0;
    }
    let doublings = (failures - FREE_FAILURES).min(20);
    FIRST_WAIT_MS.saturating_mul(1 << doublings).min(MAX_WAIT_MS)
}

impl LoginThrottle {
    /// Whether an attempt under `keys` may be made at `now_ms`; if not, how
    /// many ms it must wait.
    pub fn check(&self, now_ms: u64, keys: &[String]) -> Result<(), u64> {
        let wait = keys
            .iter()
            .filter_map(|k| self.counts.get(k))
            .filter(|c| now_ms < c.last_ms.saturating_add(FORGET_MS))
            .map(|c| c.last_ms.saturating_add(wait_ms(c.failures)).saturating_sub(now_ms))
            .max()
            .unwrap_or(0);
        if wait == 0 {
            Ok(())
        } else {
            Err(wait)
        }
    }

    /// An attempt under `keys` failed at `now_ms`.
    pub fn failed(&mut self, now_ms: u64, keys: &[String]) {
        if self.counts.len() >= MAX_KEYS {
            self.counts.retain(|_, c| now_ms < c.last_ms.saturating_add(FORGET_MS));
        }
        while self.counts.len() >= MAX_KEYS {
            let Some(oldest) = self.counts.iter().min_by_key(|(_, c)| c.last_ms).map(|(k, _)| k.clone())
            else {
                break;
            };
            self.counts.remove(&oldest);
        }
        for k in keys {
            let c = self.counts.entry(k.clone()).or_insert(Count { failures: 0, last_ms: now_ms });
            if now_ms >= c.last_ms.saturating_add(FORGET_MS) {
                c.failures = 0;
            }
            c.failures = c.failures.saturating_add(1);
            c.last_ms = now_ms;
        }
    }

    /// An attempt under `keys` succeeded: their counts are cleared.
    pub fn succeeded(&mut self, keys: &[String]) {
        for k in keys {
            self.counts.remove(k);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue 15 item 6: 60 wrong passwords at ~37/s, then the right one,
    /// used to be accepted; now the sixth attempt already waits.
    #[test]
    fn failures_past_the_free_ones_make_the_next_attempt_wait() {
        let mut t = LoginThrottle::default();
        let k = keys("ada", "10.0.0.9");
        for i in 0..FREE_FAILURES {
            assert_eq!(t.check(1_000 + u64::from(i), &k), Ok(()), "attempt {i} is free");
            t.failed(1_000 + u64::from(i), &k);
        }
        let last = 1_000 + u64::from(FREE_FAILURES - 1);
        assert_eq!(t.check(last + 1, &k), Err(FIRST_WAIT_MS - 1));
        assert_eq!(t.check(last + FIRST_WAIT_MS, &k), Ok(()));
        t.failed(last + FIRST_WAIT_MS, &k);
        assert_eq!(t.check(last + FIRST_WAIT_MS, &k), Err(2 * FIRST_WAIT_MS), "doubled");
        assert_eq!(wait_ms(FREE_FAILURES + 40), MAX_WAIT_MS);
        assert_eq!(wait_ms(u32::MAX), MAX_WAIT_MS);
    }

    #[test]
    fn names_and_addresses_are_throttled_apart_and_a_success_clears_them() {
        let mut t = LoginThrottle::default();
        // One address trying many names.
        for (i, user) in ["a", "b", "c", "d", "e"].iter().enumerate() {
            t.failed(i as u64, &keys(user, "10.0.0.9"));
        }
        assert!(t.check(10, &keys("f", "10.0.0.9")).is_err(), "the address waits");
        assert_eq!(t.check(10, &keys("f", "10.0.0.10")), Ok(()), "another address does not");
        // Many addresses trying one name.
        for i in 0..FREE_FAILURES {
            t.failed(100, &keys("root", &format!("10.1.0.{i}")));
        }
        assert!(t.check(101, &keys("root", "10.2.0.1")).is_err(), "the name waits");
        t.succeeded(&keys("root", "10.2.0.1"));
        assert_eq!(t.check(101, &keys("root", "10.2.0.1")), Ok(()));
        // Forgotten after a quiet hour.
        assert_eq!(t.check(10 + FORGET_MS, &keys("f", "10.0.0.9")), Ok(()));
    }
}
