//! The client side of the network: the signed node HTTP client
//! ([`client`]), fetching assignment files with it ([`fetch`]), the UDP
//! sockets of the control and data channels ([`udp`]) and the data channel
//! built on them ([`data_channel`]). The servers are in [`crate::http`].

pub mod client;
pub mod data_channel;
pub mod fetch;
pub mod udp;
