//! UDP sockets for the control and data channels.
//!
//! Two ways to reach the other nodes of a segment: a multicast group (one
//! send reaches everyone; TTL 1 so nothing leaves the LAN), or a static list of
//! unicast peers for networks without multicast (most clouds), where every
//! "multicast" is a loop of unicasts. Sockets are made with `socket2` (for
//! `SO_REUSEADDR`, the multicast interface and TTL) and handed to tokio
//! non-blocking.

use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};

use socket2::{Domain, Protocol, Socket, Type};

/// Binds a socket that receives `group:port` on `interface` and sends to the
/// group through `interface` with TTL 1. Several sockets on one host may join
/// the same group and port (`SO_REUSEADDR`), as in tests.
pub fn bind_multicast(group: Ipv4Addr, port: u16, interface: Ipv4Addr) -> io::Result<UdpSocket> {
    if !group.is_multicast() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{group} is not a multicast address"),
        ));
    }
    let socket = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    // Binding to the group address receives only that group's datagrams.
    socket.bind(&SocketAddrV4::new(group, port).into())?;
    socket.join_multicast_v4(&group, &interface)?;
    socket.set_multicast_if_v4(&interface)?;
    socket.set_multicast_ttl_v4(1)?;
    socket.set_multicast_loop_v4(true)?;
    socket.set_nonblocking(true)?;
    Ok(socket.into())
}

/// Binds a unicast socket (port 0 picks a free port).
pub fn bind_unicast(addr: SocketAddr) -> io::Result<UdpSocket> {
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    socket.bind(&addr.into())?;
    socket.set_nonblocking(true)?;
    Ok(socket.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unicast_binds_loopback_and_multicast_checks_the_group() {
        let s = bind_unicast("127.0.0.1:0".parse().unwrap()).unwrap();
        assert!(s.local_addr().unwrap().port() != 0);
        let err = bind_multicast(Ipv4Addr::new(10, 0, 0, 1), 5000, Ipv4Addr::LOCALHOST).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
    }
}
