//! Persistence and file-system work: reading trees, writing and reading
//! assignment files, and the releases of a site on a back-end server.

#![warn(missing_docs)]

pub mod assignment_file;
pub mod db;
pub mod pack;
pub mod records;
pub mod releases;
pub mod tree;
