//! Waiting for a condition with a deadline: one generic poll loop, so that
//! every test fails the same way (what it waited for, how long, and what it
//! saw last) instead of each carrying a loop of its own.
//!
//! Deadlines are generous: the tests must pass on a loaded 2-core machine.
//! The clock is tokio's (`actix::clock`), like the actors'.

#![allow(dead_code)]

use std::fmt::Display;
use std::sync::mpsc::Receiver;
use std::time::Duration;

use actix::clock::Instant;

/// How often [`wait_for`] probes.
pub const POLL: Duration = Duration::from_millis(50);

/// What a probe answers: a value when the condition holds, or (with
/// `Result<T, String>`) what it saw instead, for the failure message.
pub trait Probed<T> {
    /// The value, or what was seen instead (`None`: nothing to say).
    fn probed(self) -> Result<T, Option<String>>;
}

impl<T> Probed<T> for Option<T> {
    fn probed(self) -> Result<T, Option<String>> {
        self.ok_or(None)
    }
}

impl<T> Probed<T> for Result<T, String> {
    fn probed(self) -> Result<T, Option<String>> {
        self.map_err(Some)
    }
}

/// Polls `probe` every [`POLL`] until it answers a value; fails the test
/// with `what` once `deadline` has passed (the probe always runs at least once).
pub async fn wait_for<T, R: Probed<T>>(
    what: impl Display,
    deadline: Duration,
    probe: impl AsyncFnMut() -> R,
) -> T {
    wait_every(what, deadline, POLL, probe).await
}

/// [`wait_for`], probing every `every`.
pub async fn wait_every<T, R: Probed<T>>(
    what: impl Display,
    deadline: Duration,
    every: Duration,
    mut probe: impl AsyncFnMut() -> R,
) -> T {
    let start = Instant::now();
    loop {
        let last = match probe().await.probed() {
            Ok(v) => return v,
            Err(last) => last,
        };
        if start.elapsed() >= deadline {
            match last {
                Some(last) => panic!("timed out after {deadline:?} waiting for {what}: {last}"),
                None => panic!("timed out after {deadline:?} waiting for {what}"),
            }
        }
        actix::clock::sleep(every).await;
    }
}

/// [`wait_for`] with a synchronous probe (a look at shared state).
pub async fn wait_for_sync<T, R: Probed<T>>(
    what: impl Display,
    deadline: Duration,
    mut probe: impl FnMut() -> R,
) -> T {
    wait_for(what, deadline, || std::future::ready(probe())).await
}

/// Blocking, for tests outside an async runtime: polls `probe` every
/// `every` until it answers a value, failing after `deadline` (measured
/// from `start`) with `what`.
pub fn block_until<T, R: Probed<T>>(
    what: impl Display,
    start: std::time::Instant,
    deadline: Duration,
    every: Duration,
    mut probe: impl FnMut() -> R,
) -> T {
    loop {
        let last = match probe().probed() {
            Ok(v) => return v,
            Err(last) => last,
        };
        if start.elapsed() >= deadline {
            panic!("timed out after {deadline:?} waiting for {what}: {}", last.unwrap_or_default());
        }
        std::thread::sleep(every);
    }
}

/// Hands each message from `rx` to `take` until it answers true. False if
/// `deadline` (measured from `start`) passes first or every sender is gone;
/// the caller fails with what it collected.
pub fn recv_until<M>(
    rx: &Receiver<M>,
    start: std::time::Instant,
    deadline: Duration,
    mut take: impl FnMut(M) -> bool,
) -> bool {
    loop {
        let left = deadline.checked_sub(start.elapsed()).unwrap_or_default();
        match rx.recv_timeout(left) {
            Ok(m) => {
                if take(m) {
                    return true;
                }
            }
            Err(_) => return false,
        }
    }
}
