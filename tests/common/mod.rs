pub mod mctp_cluster;
