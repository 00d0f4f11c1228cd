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
//! - [`offline`]: the offline commands (`diff`, `apply`, `inspect`…).
//! - [`demo`]: `cmover demo`, the whole pipeline on a bundled sample site.
//! - [`corpus`]: seeded generated site trees for tests and benchmarks.
//! - [`protocol`]: wire formats and sans-IO cores: no sockets, files, clocks.
//!   - [`protocol::ids`], [`protocol::time`], [`protocol::bytes`] (bounded
//!     decoding), [`protocol::paths`] (paths confined to a site),
//!     [`protocol::crypto`] (key derivation, AEAD, HMAC),
//!     [`protocol::wire`] (authenticated datagrams),
//!     [`protocol::assignment`] (the assignment file format),
//!     [`protocol::delta`] (tree comparison and byte deltas).
//!   - [`protocol::control`] (control-channel messages, the authentication
//!     gate), [`protocol::election`] (group-leader election and membership).
//!   - [`protocol::mctp`] (reliable multicast of assignments),
//!     [`protocol::reports`] (report collection without implosion).
//! - [`storage`]: the file system and the database: [`storage::tree`]
//!   (scanning trees), [`storage::pack`] (building assignments),
//!   [`storage::assignment_file`] (verified reading), [`storage::releases`]
//!   (a BES site: apply, commit, rollback), [`storage::db`] (typed tables),
//!   [`storage::agent_state`] (what an agent has carried out and holds).
//! - [`actors`]: actix actors that run the cores on real sockets and files
//!   ([`actors::elector`], `multicast_sender`, `multicast_receiver`,
//!   `report_collector`),
//!   [`actors::content_interpreter`] (carries assignments out, once each),
//!   [`actors::group_leader`] (fetch, forward, deliver, report).
//! - [`http`]: the node API: [`http::signed`] (signed requests),
//!   [`http::files`] (serving assignment files),
//!   [`http::node_api`] (the agent's routes).
//! - [`agent`]: the `cmover agent` process, wired from the configuration.
//! - [`ccm`]: the `cmover ccm` process (orchestrator, database, HTTP API).
//! - [`http`]: the node API (signed requests) and the admin REST API.
//! - [`local_cluster`]: a CCM and agents in one process on 127.0.0.1 (demo, tests, benchmarks).
//! - [`sim`]: the seeded virtual-time network that drives the cores, and the
//!   simulations built on it ([`sim::election`], [`sim::mctp`]).
//! - [`net`]: the client side: the signed node HTTP client, fetching
//!   assignments, UDP sockets, the data channel.

pub mod actors;
pub mod agent;
pub mod ccm;
pub mod clock;
pub mod config;
pub mod corpus;
pub mod demo;
pub mod http;
pub mod local_cluster;
pub mod logging;
pub mod metrics;
pub mod net;
pub mod offline;
pub mod ops;
pub mod protocol;
pub mod sim;
pub mod storage;
