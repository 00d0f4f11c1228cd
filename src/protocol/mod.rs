//! Wire formats and pure ("sans-IO") state machines.
//!
//! Nothing here opens a socket or a file, reads a clock or a global RNG:
//! cores take events and `now` in and hand actions out, encoders and decoders
//! work on byte slices or on the `Read`/`Write` handed to them. That is what
//! lets `sim` run them deterministically. The actors in `actors` wrap them
//! with real I/O.

#![warn(missing_docs)]

pub mod api;
pub mod assignment;
pub mod bytes;
pub mod catch_up;
pub mod control;
pub mod crypto;
pub mod delta;
pub mod distribution;
pub mod election;
pub mod ids;
pub mod mctp;
pub mod paths;
pub mod reports;
pub mod run;
pub mod schedule;
pub mod time;
pub mod wire;
