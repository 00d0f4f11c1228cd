//! # Content Mover
//!
//! Publishes web content from one staging directory to many back-end servers
//! (BES): the controller (CCM) packs each change into an *assignment*, group
//! leaders relay it through a store-and-forward tree and multicast it in their
//! LAN segment, and every server switches to the new release atomically.
//! The architecture is described in the design document (`DESIGN.md`) kept
//! in the project's shared folder, not in this repository; this crate is
//! also a library so that integration tests can build clusters in-process.
//!
//! ## Layout
//!
//! The processes and their wiring:
//!
//! - [`ccm`]: the `cmover ccm` process (orchestrator, database, HTTP API).
//! - [`agent`]: the `cmover agent` process, wired from the configuration.
//! - [`local_cluster`]: a CCM and agents in one process on 127.0.0.1 (demo, tests, benchmarks).
//! - [`demo`]: `cmover demo`, the whole pipeline on a bundled sample site.
//! - [`offline`]: the offline commands (`diff`, `apply`, `inspect`…).
//! - [`config`]: typed TOML configuration, defaults and validation.
//! - [`logging`]: `tracing` set-up (JSON lines or pretty).
//! - [`metrics`]: Prometheus metrics, one recorder per process, `GET /metrics`.
//! - [`clock`]: the wall clock (Unix milliseconds), read in one place.
//!
//! The sans-IO cores and formats:
//!
//! - [`protocol`]: wire formats and sans-IO cores: no sockets, files, clocks.
//!   - [`protocol::ids`], [`protocol::time`], [`protocol::bytes`] (bounded
//!     decoding), [`protocol::paths`] (paths confined to a site),
//!     [`protocol::crypto`] (key derivation, AEAD, HMAC),
//!     [`protocol::wire`] (authenticated datagrams),
//!     [`protocol::assignment`] (the assignment file format),
//!     [`protocol::delta`] (tree comparison and byte deltas),
//!     [`protocol::api`] (the JSON of the HTTP APIs, request signing).
//!   - Agent side: [`protocol::control`] (control-channel messages, the
//!     authentication gate), [`protocol::election`] (group-leader election
//!     and membership), [`protocol::mctp`] (reliable multicast of
//!     assignments), [`protocol::reports`] (report collection without
//!     implosion).
//!   - Controller side: [`protocol::schedule`] (when jobs run: schedules,
//!     conflicts, the queue), [`protocol::distribution`] (the
//!     store-and-forward tree among leaders), [`protocol::catch_up`] (which
//!     groups need a replicate or a synchronize), [`protocol::run`] (a run:
//!     the plan of every job kind, its waves, commit or abort, recovery).
//! - [`sim`]: the seeded virtual-time network that drives the cores, and the
//!   simulations built on it ([`sim::election`], [`sim::mctp`],
//!   [`sim::run`]: whole runs with faults, checked against five invariants).
//!
//! The drivers, with real sockets, files and timers:
//!
//! - [`actors`]: actix actors that run the cores.
//!   - Agent side: [`actors::elector`], [`actors::multicast_sender`],
//!     [`actors::multicast_receiver`], [`actors::report_collector`],
//!     [`actors::content_interpreter`] (carries assignments out, once each),
//!     [`actors::group_leader`] (fetch, forward, deliver, report).
//!   - Controller side: [`actors::ccm`] (drives the run core),
//!     [`actors::scheduler`] (fires due jobs), [`actors::assignment_creator`]
//!     (packs assignments), [`actors::tree_planner`] (the order in which
//!     leaders are served).
//! - [`storage`]: the file system and the database: [`storage::tree`]
//!   (scanning trees), [`storage::pack`] (building assignments),
//!   [`storage::assignment_file`] (an assignment copy's name, verified
//!   reading), [`storage::releases`] (a BES site: apply, commit, rollback),
//!   [`storage::agent_state`] (what an agent has carried out and holds),
//!   [`storage::db`] (typed tables), [`storage::records`] (the CCM's
//!   records), [`storage::checkpoint`] (archives of a site to restore).
//! - [`http`]: the servers: [`http::signed`] (checking signed requests),
//!   [`http::files`] (serving assignment files), [`http::node_api`] (the
//!   agent's routes), [`http::ccm_api`] (the CCM's HTTP API, node and admin),
//!   [`http::admin_api`] with [`http::session`] (the admin REST API and its
//!   logins), [`http::live`] (live state for the UI, as Server-Sent Events), [`http::ui`] (the embedded web
//!   UI), and [`http::admin_client`] (the admin API's client).
//! - [`net`]: the client side of the network: [`net::client`] (the signed
//!   node HTTP client), [`net::fetch`] (fetching assignment files),
//!   [`net::udp`] (multicast and unicast sockets), [`net::data_channel`]
//!   (the sealed data channel the MCTP and report actors share).
//! - [`ops`]: operations integrations: load balancers ([`ops::lb`],
//!   [`ops::haproxy`], [`ops::webhook`]), cache purges ([`ops::cache`]) and
//!   the commands run around a commit ([`ops::hooks`]).

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
