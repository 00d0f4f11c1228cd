//! Deterministic simulation of the protocol cores.
//!
//! [`net`] is the seeded virtual-time network shared by every simulation; a
//! simulation of a protocol lives beside it and drives that protocol's cores.
//! Every run derives from one seed and prints it when it fails, so any
//! failure re-runs exactly.

pub mod election;
pub mod mctp;
pub mod net;
pub mod run;

/// The nearest-rank percentile `p` (0.0..=1.0) of `sorted` values, every
/// simulation's rule for the figures it reports.
pub fn nearest_rank<T: Copy>(sorted: &[T], p: f64) -> Option<T> {
    let rank = ((p * sorted.len() as f64).ceil() as usize).max(1);
    sorted.get(rank.min(sorted.len()).checked_sub(1)?).copied()
}
