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
