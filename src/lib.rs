//! # Content Mover
//!
//! Publishes web content from one staging directory to many back-end servers
//! (BES): the controller (CCM) packs each change into an *assignment*, group
//! leaders relay it through a store-and-forward tree and multicast it in their
//! LAN segment, and every server switches to the new release atomically.
//! `DESIGN.md` (in the project's shared folder) is the architecture; this crate is
//! also a library so that integration tests can build clusters in-process.
//!
//! ## Layout
//!
//! - [`config`]: typed TOML configuration, defaults and validation.
//! - [`logging`]: `tracing` set-up (JSON lines or pretty).
//! - [`protocol`]: wire formats and sans-IO cores: no sockets, files, clocks.
//!   - [`protocol::ids`], [`protocol::time`], [`protocol::bytes`] (bounded
//!     decoding), [`protocol::paths`] (paths confined to a site),
//!     [`protocol::crypto`] (key derivation, AEAD, HMAC),
//!     [`protocol::wire`] (authenticated datagrams).
//!   - [`protocol::mctp`] (reliable multicast of assignments),
//!     [`protocol::reports`] (report collection without implosion).
//! - [`actors`]: actix actors driving the cores with real sockets and files
//!   (`multicast_sender`, `multicast_receiver`, `report_collector`, and the
//!   shared `data_channel` sockets).
//! - [`sim`]: the seeded virtual-time network that drives the cores
//!   ([`sim::mctp`] simulates MCTP and report collection).
//! - [`udp`]: multicast and unicast UDP sockets for the channels.

pub mod actors;
pub mod config;
pub mod logging;
pub mod protocol;
pub mod sim;
pub mod udp;
