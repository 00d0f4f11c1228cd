//! Scaffolding shared by the integration tests. Each test binary includes
//! it with `mod common;` and uses what it needs.
//!
//! - `net`: free ports on 127.0.0.1, private network namespaces.
//! - `wait`: waiting for a condition with a deadline.
//! - `proc`: child processes, killed and reaped however a test ends.
//! - `config`: agent and CCM configuration as typed values and TOML files.
//! - `cluster`, `mctp_cluster`, `fake_ccm`, `ops`, `browser`: the worlds
//!   the tests run in (an in-process cluster, an MCTP segment, a fake CCM,
//!   real proxies and caches, a headless browser).

pub mod browser;
pub mod cluster;
pub mod config;
pub mod fake_ccm;
pub mod mctp_cluster;
pub mod net;
pub mod ops;
pub mod proc;
pub mod wait;
