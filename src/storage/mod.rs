//! Persistence and file-system work: reading trees, writing and reading
//! assignment files, the releases of a site on a back-end server, and the
//! agent's small local state store.

#![warn(missing_docs)]

pub mod agent_state;
pub mod assignment_file;
pub mod checkpoint;
pub mod db;
pub mod pack;
pub mod records;
pub mod releases;
pub mod tree;
