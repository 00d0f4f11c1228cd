pub mod cluster;
pub mod mctp_cluster;
