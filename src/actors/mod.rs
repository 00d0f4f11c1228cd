//! Actix actors: each wraps a sans-IO core from `protocol` with real I/O
//! (sockets, timers, files). One actor per file; each is a thin driver that
//! feeds its core and drains what the core polls out.

#![warn(missing_docs)]

pub mod elector;
