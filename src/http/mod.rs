//! HTTP: the node API between CCM and agents (signed requests, see
//! `protocol::api`), and later the admin REST API and UI.

#![warn(missing_docs)]

pub mod admin_client;
pub mod ccm_api;
pub mod files;
pub mod node_api;
pub mod signed;
