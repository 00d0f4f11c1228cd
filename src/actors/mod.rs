//! Actix actors: thin drivers that give the sans-IO cores of `protocol`
//! sockets, files, timers and each other.
//!
//! Each actor holds its core, its I/O handles, the `Recipient`s it reports
//! to and one timer; every handler ends with a private `drive` that drains
//! the core's transmits and events and re-arms the timer from the core's
//! `poll_timeout`.

pub mod data_channel;
pub mod multicast_receiver;
pub mod multicast_sender;
pub mod report_collector;
