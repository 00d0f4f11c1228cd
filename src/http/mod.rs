//! HTTP: the node API between CCM and agents (signed requests, see
//! `protocol::api`), the admin REST API with its login sessions, and its client.

#![warn(missing_docs)]

pub mod admin_api;
pub mod admin_client;
pub mod ccm_api;
pub mod files;
pub mod live;
pub mod node_api;
pub mod session;
pub mod signed;
pub mod throttle;
pub mod ui;
