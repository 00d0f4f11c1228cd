//! The data channel's sockets, shared by the MCTP and report actors of a node.
//!
//! Not an actor: a cloneable handle over one unicast socket (every send, and
//! unicast receipt) plus, for a member of a multicast group, a receive-only
//! socket joined to the group. Every datagram is sealed with the data
//! channel's key ([`wire`]); every datagram received is authenticated and
//! replay-checked before its payload is looked at, and rejections are
//! counted. Where multicast is unavailable the channel fans a "group"
//! datagram out to every registered member, one copy each, sealed once.
//!
//! For tests the channel drops a seeded fraction of what it receives,
//! before anything else looks at it: the loss a lossy LAN would cause.

use std::collections::HashMap;
use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::{Bytes, BytesMut};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tokio::net::UdpSocket;
use tokio_util::udp::UdpFramed;

use crate::protocol::crypto::MacKey;
use crate::protocol::ids::NodeId;
use crate::protocol::mctp::Dest;
use crate::protocol::wire::{self, Channel, DatagramCodec, Received, ReplayGuard, ReplayLimits, Sequencer};

/// How the data channel reaches the segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DataMode {
    /// One multicast group and port (TTL 1) through `interface`.
    Multicast {
        /// Group address.
        group: Ipv4Addr,
        /// Port.
        port: u16,
        /// Local interface address.
        interface: Ipv4Addr,
        /// Join the group to receive (members); the leader only sends.
        join: bool,
    },
    /// Unicast fan-out to registered members (networks without multicast).
    Unicast,
}

/// Settings of a [`DataChannel`].
#[derive(Debug, Clone)]
pub struct DataChannelConfig {
    /// This node.
    pub node: NodeId,
    /// The cluster secret (the data channel's key is derived from it).
    pub secret: Vec<u8>,
    /// Address of the unicast socket (port 0 picks one).
    pub bind: SocketAddr,
    /// Multicast or unicast fan-out.
    pub mode: DataMode,
    /// Known peers and their unicast addresses (fan-out targets).
    pub peers: Vec<(NodeId, SocketAddr)>,
    /// Fraction of received datagrams dropped on purpose (tests).
    pub drop_rate: f64,
    /// Seed of those drops.
    pub drop_seed: u64,
}

/// Counters of a channel.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ChannelStats {
    /// Datagrams sent (each fan-out copy counts).
    pub sent: u64,
    /// Sends that failed (full buffer, unreachable).
    pub send_errors: u64,
    /// Datagrams accepted.
    pub received: u64,
    /// Datagrams dropped by the injected loss.
    pub dropped: u64,
    /// Datagrams rejected: bad tag, malformed, stale or replayed.
    pub rejected: u64,
}

#[derive(Debug)]
struct Inner {
    node: NodeId,
    socket: Arc<UdpSocket>,
    group: Option<SocketAddr>,
    key: MacKey,
    seq: Mutex<Sequencer>,
    peers: Mutex<HashMap<NodeId, SocketAddr>>,
    replay: Mutex<ReplayGuard>,
    drop: Mutex<(f64, ChaCha8Rng)>,
    sent: AtomicU64,
    send_errors: AtomicU64,
    received: AtomicU64,
    dropped: AtomicU64,
    rejected: AtomicU64,
}

/// A stream of datagrams from one of the channel's sockets, for `add_stream`.
pub type Incoming = UdpFramed<DatagramCodec, Arc<UdpSocket>>;

/// A handle on a node's data channel; clones share sockets, sequence and peers.
#[derive(Debug, Clone)]
pub struct DataChannel(Arc<Inner>);

fn unix_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

impl DataChannel {
    /// Opens the sockets (inside a tokio runtime) and returns the handle and
    /// the incoming streams to add to the owning actor.
    pub fn open(cfg: DataChannelConfig) -> io::Result<(DataChannel, Vec<Incoming>)> {
        let std_socket = crate::udp::bind_unicast(cfg.bind)?;
        let mut incoming_sockets = Vec::new();
        let mut group = None;
        if let DataMode::Multicast { group: g, port, interface, join } = cfg.mode {
            let sock = socket2::SockRef::from(&std_socket);
            sock.set_multicast_if_v4(&interface)?;
            sock.set_multicast_ttl_v4(1)?;
            sock.set_multicast_loop_v4(true)?;
            group = Some(SocketAddr::V4(SocketAddrV4::new(g, port)));
            if join {
                incoming_sockets.push(crate::udp::bind_multicast(g, port, interface)?);
            }
        }
        for s in std::iter::once(&std_socket).chain(&incoming_sockets) {
            // Bigger buffers ride out bursts; the kernel caps them at rmem_max.
            let _ = socket2::SockRef::from(s).set_recv_buffer_size(8 << 20);
        }
        let socket = Arc::new(UdpSocket::from_std(std_socket)?);
        let codec = DatagramCodec::new(&cfg.secret, Channel::Data);
        let mut incoming = vec![UdpFramed::new(socket.clone(), codec.clone())];
        for s in incoming_sockets {
            incoming.push(UdpFramed::new(Arc::new(UdpSocket::from_std(s)?), codec.clone()));
        }
        let start_us =
            SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_micros() as u64).unwrap_or(0);
        let inner = Inner {
            node: cfg.node,
            socket,
            group,
            key: MacKey::derive(&cfg.secret, Channel::Data.key_label()),
            seq: Mutex::new(Sequencer::new(cfg.node, start_us)),
            peers: Mutex::new(cfg.peers.into_iter().collect()),
            replay: Mutex::new(ReplayGuard::new(ReplayLimits::default())),
            drop: Mutex::new((cfg.drop_rate.clamp(0.0, 1.0), ChaCha8Rng::seed_from_u64(cfg.drop_seed))),
            sent: AtomicU64::new(0),
            send_errors: AtomicU64::new(0),
            received: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            rejected: AtomicU64::new(0),
        };
        Ok((DataChannel(Arc::new(inner)), incoming))
    }

    /// This node.
    pub fn node(&self) -> NodeId {
        self.0.node
    }

    /// The unicast socket's address (what peers send to).
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.0.socket.local_addr()
    }

    /// Registers (or moves) a peer.
    pub fn add_peer(&self, node: NodeId, addr: SocketAddr) {
        lock(&self.0.peers).insert(node, addr);
    }

    /// The registered peers.
    pub fn peers(&self) -> Vec<NodeId> {
        let mut v: Vec<NodeId> = lock(&self.0.peers).keys().copied().collect();
        v.sort();
        v
    }

    /// Seals `payload` once and sends it to `dest`: the group (multicast, or
    /// one copy per registered peer) or one node.
    pub fn send(&self, dest: Dest, payload: &[u8]) -> io::Result<()> {
        let env = lock(&self.0.seq).next(Channel::Data, unix_ms());
        let mut buf = BytesMut::with_capacity(payload.len() + wire::HEADER_LEN + wire::TAG_LEN);
        wire::seal(&self.0.key, &env, payload, &mut buf)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        let addrs: Vec<SocketAddr> = match (dest, self.0.group) {
            (Dest::Group, Some(g)) => vec![g],
            (Dest::Group, None) => lock(&self.0.peers).values().copied().collect(),
            (Dest::Node(n), _) => match lock(&self.0.peers).get(&n) {
                Some(&a) => vec![a],
                None => {
                    return Err(io::Error::new(
                        io::ErrorKind::NotFound,
                        format!("no address known for node {n}"),
                    ))
                }
            },
        };
        for addr in addrs {
            match self.0.socket.try_send_to(&buf, addr) {
                Ok(_) => {
                    self.0.sent.fetch_add(1, Ordering::Relaxed);
                }
                Err(e) => {
                    self.0.send_errors.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(event = "data_send_failed", %addr, error = %e);
                }
            }
        }
        Ok(())
    }

    /// Screens one item of an [`Incoming`] stream: injected drop, then
    /// authentication and replay check. Learns the sender's address.
    pub fn accept(&self, item: io::Result<(Received, SocketAddr)>) -> Option<(NodeId, Bytes)> {
        let (received, from) = item.ok()?;
        {
            let mut d = lock(&self.0.drop);
            let p = d.0;
            if p > 0.0 && d.1.random_bool(p) {
                self.0.dropped.fetch_add(1, Ordering::Relaxed);
                return None;
            }
        }
        let checked = received.and_then(|(env, payload)| {
            lock(&self.0.replay).check(unix_ms(), &env)?;
            Ok((env, payload))
        });
        match checked {
            Ok((env, payload)) if env.sender != self.0.node => {
                self.0.received.fetch_add(1, Ordering::Relaxed);
                // Authenticated, so the address may be trusted: a peer that
                // moved (restarted on another port) is followed.
                if from.port() != 0 && !from.ip().is_multicast() {
                    lock(&self.0.peers).insert(env.sender, from);
                }
                Some((env.sender, payload))
            }
            Ok(_) => None,
            Err(e) => {
                self.0.rejected.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(event = "data_rejected", %from, error = %e);
                None
            }
        }
    }

    /// The counters.
    pub fn stats(&self) -> ChannelStats {
        let i = &self.0;
        ChannelStats {
            sent: i.sent.load(Ordering::Relaxed),
            send_errors: i.send_errors.load(Ordering::Relaxed),
            received: i.received.load(Ordering::Relaxed),
            dropped: i.dropped.load(Ordering::Relaxed),
            rejected: i.rejected.load(Ordering::Relaxed),
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
