//! The data channel's sockets, shared by the MCTP and report actors of a node.
//!
//! Not an actor: a cloneable handle over one unicast socket (every send, and
//! unicast receipt) plus, for a member of a multicast group, a receive-only
//! socket joined to the group. Every datagram is sealed with the node's
//! data-channel key ([`wire`]: AES-256-GCM, the sequence number as nonce);
//! every datagram received is authenticated, decrypted in place and
//! replay-checked before its payload is looked at, and rejections are
//! counted. All the channels a node opens number their datagrams from one
//! sequence ([`DataChannel::open_sibling`]), so no nonce is used twice.
//! Where multicast is unavailable the channel fans a "group" datagram out
//! to every registered member, one copy each, sealed once; a session's
//! datagrams go only to the session's targets ([`DataChannel::send_among`]),
//! so that a member that is not one receives none of them (DESIGN §4
//! "Only targets"; with multicast it hears them and ignores them).
//!
//! The kernel's per-datagram cost, not the bytes, is what limits a UDP
//! sender (each `sendto` walks the whole stack, and on loopback the
//! receiver's too), so datagrams travel in batches where the kernel allows:
//!
//! - A run of sealed datagrams of one size (the frames of a pass) leaves in
//!   one `sendmsg` per destination with UDP generic segmentation offload
//!   (`UDP_SEGMENT`): the kernel, or the NIC, cuts it into the same
//!   datagrams that one `sendto` each would have sent. Where GSO is refused
//!   the channel falls back to one send per datagram, for good.
//! - Receiving sockets ask for UDP generic receive offload (`UDP_GRO`): a
//!   run of datagrams of one flow may arrive in one read, with its segment
//!   size, and is cut back into datagrams, each authenticated on its own.
//!   An [`Incoming`] stream drains many reads per wake-up and yields them
//!   as one batch.
//!
//! For tests the channel drops a seeded fraction of what it receives,
//! before anything else looks at it: the loss a lossy LAN would cause.

use std::collections::HashMap;
use std::io::{self, IoSlice, IoSliceMut};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::ops::Range;
use std::os::fd::AsRawFd;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use actix::prelude::Stream;
use bytes::Bytes;
use nix::sys::socket::{
    recvmsg, sendmsg, setsockopt, sockopt, ControlMessage, ControlMessageOwned, MsgFlags, SockaddrStorage,
};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tokio::io::Interest;
use tokio::net::UdpSocket;

use crate::clock::{unix_ms, unix_us};
use crate::protocol::ids::NodeId;
use crate::protocol::mctp::{Dest, Targets};
use crate::protocol::wire::{
    self, Channel, Envelope, OpeningKeys, Received, ReplayGuard, ReplayLimits, SealingKey, Sequencer,
    WireError,
};

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
    key: SealingKey,
    /// Shared by every channel of the node: the numbers are nonces.
    seq: Arc<Mutex<Sequencer>>,
    peers: Mutex<HashMap<NodeId, SocketAddr>>,
    replay: Mutex<ReplayGuard>,
    drop: Mutex<(f64, ChaCha8Rng)>,
    /// False once the kernel refused a segmented send: one send per datagram.
    gso: AtomicBool,
    sent: AtomicU64,
    send_errors: AtomicU64,
    received: AtomicU64,
    dropped: AtomicU64,
    rejected: AtomicU64,
}

/// Most datagrams in one segmented (GSO) send; the kernel allows 64 or more.
pub const MAX_SEGMENTS: usize = 64;

/// Most bytes in one segmented send: the largest IPv4 UDP payload.
pub const MAX_SEGMENTED_BYTES: usize = 65_507;

/// Room for the largest read: a whole GRO run or a maximal datagram.
const READ_ROOM: usize = 65_536;

/// Reads up to this size are copied out of the read buffer, which is kept
/// for the next read; larger ones (runs, jumbo frames) take the buffer along.
const COPY_BELOW: usize = 4096;

/// Read buffers kept for reuse per socket.
const POOLED: usize = 8;

/// A batch ends after this many bytes or datagrams: bounds both the memory a
/// wake-up holds and the time before the actor looks at its timers again.
const BATCH_BYTES: usize = 128 * 1024;
const BATCH_DATAGRAMS: usize = 256;

/// Receiving sockets ask for this much buffer: room for a burst while the
/// receiving thread waits for a CPU. Above `net.core.rmem_max` only with
/// CAP_NET_ADMIN; otherwise the kernel's maximum.
const RECV_BUFFER: usize = 16 << 20;

/// One datagram as an [`Incoming`] stream yields it: authenticated (not yet
/// replay-checked), or the reason it was not, and where it came from.
pub type Datagram = (Received, SocketAddr);

/// The datagrams one wake-up of an [`Incoming`] stream found.
pub type Batch = Vec<Datagram>;

type Pool = Arc<Mutex<Vec<Vec<u8>>>>;

/// A read buffer lent to the datagrams cut from it; back to the pool when
/// the last of them is dropped. Reusing buffers (rather than allocating and
/// zeroing one per read) keeps the receive path free of per-read work.
struct Lent {
    buf: Vec<u8>,
    len: usize,
    pool: Pool,
}

impl AsRef<[u8]> for Lent {
    fn as_ref(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

impl Drop for Lent {
    fn drop(&mut self) {
        let mut pool = lock(&self.pool);
        if pool.len() < POOLED {
            pool.push(std::mem::take(&mut self.buf));
        }
    }
}

/// A stream of datagrams from one of the channel's sockets, for
/// `add_stream`: each item is every datagram the socket held, up to a bound
/// ([`Batch`]), read with as few system calls as the kernel allows.
pub struct Incoming {
    socket: Arc<UdpSocket>,
    keys: OpeningKeys,
    buf: Vec<u8>,
    /// The datagrams of the last read, opened in place: kept for its allocation.
    opened: Vec<Result<(Envelope, Range<usize>), WireError>>,
    pool: Pool,
    cmsg: Vec<u8>,
}

impl std::fmt::Debug for Incoming {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Incoming").field("socket", &self.socket).finish_non_exhaustive()
    }
}

impl Incoming {
    fn new(socket: Arc<UdpSocket>, keys: OpeningKeys) -> Self {
        Incoming {
            socket,
            keys,
            buf: Vec::new(),
            opened: Vec::new(),
            pool: Pool::default(),
            cmsg: nix::cmsg_space!(i32),
        }
    }

    /// One read: the datagrams it holds (several with GRO), or the error.
    fn read(&mut self, batch: &mut Batch) -> io::Result<usize> {
        if self.buf.len() < READ_ROOM {
            self.buf = lock(&self.pool).pop().unwrap_or_else(|| vec![0; READ_ROOM]);
        }
        let fd = self.socket.as_raw_fd();
        let (buf, cmsg) = (&mut self.buf, &mut self.cmsg);
        let (n, from, segment) = self.socket.try_io(Interest::READABLE, || {
            let mut iov = [IoSliceMut::new(&mut buf[..])];
            let msg = recvmsg::<SockaddrStorage>(fd, &mut iov, Some(cmsg), MsgFlags::empty())?;
            if msg.flags.contains(MsgFlags::MSG_TRUNC) {
                // Bigger than any datagram of ours: not ours.
                return Ok((0, None, None));
            }
            let segment = msg.cmsgs().ok().and_then(|mut c| {
                c.find_map(|c| match c {
                    ControlMessageOwned::UdpGroSegments(s) => usize::try_from(s).ok(),
                    _ => None,
                })
            });
            Ok((msg.bytes, msg.address.and_then(to_socket_addr), segment))
        })?;
        let Some(from) = from.filter(|_| n > 0) else {
            return Ok(n);
        };
        // Authenticate and decrypt every datagram of the read in place,
        // before the buffer is shared.
        let segment = segment.filter(|&s| s > 0).unwrap_or(n);
        self.opened.clear();
        for at in (0..n).step_by(segment) {
            let end = (at + segment).min(n);
            let opened = wire::open(&mut self.keys, &mut self.buf[at..end]);
            self.opened.push(opened.map(|(env, payload)| (env, at + payload.start..at + payload.end)));
        }
        let data = if n < COPY_BELOW {
            Bytes::copy_from_slice(&self.buf[..n])
        } else {
            let buf = std::mem::take(&mut self.buf);
            Bytes::from_owner(Lent { buf, len: n, pool: self.pool.clone() })
        };
        for opened in self.opened.drain(..) {
            batch.push((opened.map(|(env, payload)| (env, data.slice(payload))), from));
        }
        Ok(n)
    }
}

fn to_socket_addr(a: SockaddrStorage) -> Option<SocketAddr> {
    if let Some(v4) = a.as_sockaddr_in() {
        return Some(SocketAddr::from(*v4));
    }
    a.as_sockaddr_in6().map(|v6| SocketAddr::from(std::net::SocketAddrV6::from(*v6)))
}

impl Stream for Incoming {
    type Item = Batch;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Batch>> {
        let this = self.get_mut();
        let mut batch = Batch::new();
        let mut bytes = 0;
        while bytes < BATCH_BYTES && batch.len() < BATCH_DATAGRAMS {
            match this.socket.poll_recv_ready(cx) {
                Poll::Pending => break,
                Poll::Ready(Err(e)) => {
                    tracing::debug!(event = "data_receive_failed", error = %e);
                    break;
                }
                Poll::Ready(Ok(())) => {}
            }
            match this.read(&mut batch) {
                Ok(n) => bytes += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => {
                    // An ICMP error surfacing, say: note it and look again
                    // on the next wake-up, which this one asks for.
                    tracing::debug!(event = "data_receive_failed", error = %e);
                    cx.waker().wake_by_ref();
                    break;
                }
            }
        }
        if batch.is_empty() {
            Poll::Pending
        } else {
            if bytes >= BATCH_BYTES || batch.len() >= BATCH_DATAGRAMS {
                // Stopped by the bound, not because the socket is empty.
                cx.waker().wake_by_ref();
            }
            Poll::Ready(Some(batch))
        }
    }
}

/// A handle on a node's data channel; clones share sockets, sequence and peers.
#[derive(Debug, Clone)]
pub struct DataChannel(Arc<Inner>);

impl DataChannel {
    /// Opens the sockets (inside a tokio runtime) and returns the handle and
    /// the incoming streams to add to the owning actor. A node that needs
    /// more than one channel opens the others with [`open_sibling`](Self::open_sibling).
    pub fn open(cfg: DataChannelConfig) -> io::Result<(DataChannel, Vec<Incoming>)> {
        Self::open_with(cfg, None)
    }

    /// Opens another channel of this channel's node (other sockets, the
    /// same key) that numbers its datagrams from the same sequence. The
    /// sequence number is the nonce of the node's key, so two channels of
    /// one node must never count on their own. `cfg.node` must be this
    /// channel's node.
    pub fn open_sibling(&self, cfg: DataChannelConfig) -> io::Result<(DataChannel, Vec<Incoming>)> {
        if cfg.node != self.0.node {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("a sibling of node {}'s data channel opened for node {}", self.0.node, cfg.node),
            ));
        }
        Self::open_with(cfg, Some(self.0.seq.clone()))
    }

    fn open_with(
        cfg: DataChannelConfig,
        seq: Option<Arc<Mutex<Sequencer>>>,
    ) -> io::Result<(DataChannel, Vec<Incoming>)> {
        let std_socket = super::udp::bind_unicast(cfg.bind)?;
        let mut incoming_sockets = Vec::new();
        let mut group = None;
        if let DataMode::Multicast { group: g, port, interface, join } = cfg.mode {
            let sock = socket2::SockRef::from(&std_socket);
            sock.set_multicast_if_v4(&interface)?;
            sock.set_multicast_ttl_v4(1)?;
            sock.set_multicast_loop_v4(true)?;
            group = Some(SocketAddr::V4(SocketAddrV4::new(g, port)));
            if join {
                incoming_sockets.push(super::udp::bind_multicast(g, port, interface)?);
            }
        }
        for s in std::iter::once(&std_socket).chain(&incoming_sockets) {
            // Bigger buffers ride out bursts (see RECV_BUFFER).
            let sock = socket2::SockRef::from(s);
            let _ = sock.set_recv_buffer_size(RECV_BUFFER);
            if sock.recv_buffer_size().is_ok_and(|n| n < RECV_BUFFER) {
                let _ = setsockopt(s, sockopt::RcvBufForce, &RECV_BUFFER);
            }
            // Runs of datagrams in one read where the kernel can (best effort).
            let _ = setsockopt(s, sockopt::UdpGroSegment, &true);
        }
        let _ = socket2::SockRef::from(&std_socket).set_send_buffer_size(4 << 20);
        let socket = Arc::new(UdpSocket::from_std(std_socket)?);
        let keys = OpeningKeys::new(&cfg.secret, Channel::Data);
        let mut incoming = vec![Incoming::new(socket.clone(), keys.clone())];
        for s in incoming_sockets {
            incoming.push(Incoming::new(Arc::new(UdpSocket::from_std(s)?), keys.clone()));
        }
        let seq = seq.unwrap_or_else(|| Arc::new(Mutex::new(Sequencer::new(cfg.node, unix_us()))));
        let inner = Inner {
            node: cfg.node,
            socket,
            group,
            key: keys.sealing_key(cfg.node),
            seq,
            peers: Mutex::new(cfg.peers.into_iter().collect()),
            replay: Mutex::new({
                // Nothing sent before this start passes (the windows are new).
                let mut guard = ReplayGuard::new(ReplayLimits::default());
                guard.refuse_before(unix_ms());
                guard
            }),
            drop: Mutex::new((cfg.drop_rate.clamp(0.0, 1.0), ChaCha8Rng::seed_from_u64(cfg.drop_seed))),
            gso: AtomicBool::new(true),
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
        let mut buf = Vec::with_capacity(payload.len() + wire::HEADER_LEN + wire::TAG_LEN);
        let len = self.seal_into(&mut buf, |out| {
            out.extend_from_slice(payload);
            Ok(())
        })?;
        self.send_sealed(dest, &buf, len)
    }

    /// Appends one sealed datagram to `out`: `fill` appends its payload
    /// (straight into the datagram, no copy), then the envelope is sealed
    /// around it. Returns the datagram's length; on error `out` is as it was.
    pub fn seal_into(
        &self,
        out: &mut Vec<u8>,
        fill: impl FnOnce(&mut Vec<u8>) -> io::Result<()>,
    ) -> io::Result<usize> {
        let start = wire::begin_in_place(out);
        if let Err(e) = fill(out) {
            out.truncate(start);
            return Err(e);
        }
        let env = lock(&self.0.seq).next(Channel::Data, unix_ms());
        wire::seal_in_place(&self.0.key, &env, out, start)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        Ok(out.len() - start)
    }

    /// Seals a datagram laid out in `datagram` (header room, payload, tag
    /// room: see [`wire::seal_slice`]) with the channel's next envelope.
    pub fn seal_datagram(&self, datagram: &mut [u8]) -> io::Result<()> {
        let env = lock(&self.0.seq).next(Channel::Data, unix_ms());
        wire::seal_slice(&self.0.key, &env, datagram)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))
    }

    /// Like [`DataChannel::send`], but in fan-out mode a datagram for the
    /// group goes only to the registered members among `among` (a
    /// session's targets). Multicast reaches the whole group regardless.
    pub fn send_among(&self, dest: Dest, among: &Targets, payload: &[u8]) -> io::Result<()> {
        let mut buf = Vec::with_capacity(payload.len() + wire::HEADER_LEN + wire::TAG_LEN);
        let len = self.seal_into(&mut buf, |out| {
            out.extend_from_slice(payload);
            Ok(())
        })?;
        self.send_sealed_among(dest, Some(among), &buf, len)
    }

    fn addresses(&self, dest: Dest, among: Option<&Targets>) -> io::Result<Vec<SocketAddr>> {
        Ok(match (dest, self.0.group) {
            (Dest::Group, Some(g)) => vec![g],
            (Dest::Group, None) => lock(&self.0.peers)
                .iter()
                .filter(|(n, _)| among.is_none_or(|among| among.contains(**n)))
                .map(|(_, a)| *a)
                .collect(),
            (Dest::Node(n), _) => match lock(&self.0.peers).get(&n) {
                Some(&a) => vec![a],
                None => {
                    return Err(io::Error::new(
                        io::ErrorKind::NotFound,
                        format!("no address known for node {n}"),
                    ))
                }
            },
        })
    }

    /// Sends sealed datagrams laid end to end in `datagrams`, each `segment`
    /// bytes long but the last (which may be shorter; at most
    /// [`MAX_SEGMENTS`] of them and [`MAX_SEGMENTED_BYTES`] in all), to
    /// `dest`: one segmented send per address where the kernel allows, one
    /// send per datagram otherwise. A failed send is counted and logged;
    /// the protocol recovers the loss like any other.
    pub fn send_sealed(&self, dest: Dest, datagrams: &[u8], segment: usize) -> io::Result<()> {
        self.send_sealed_among(dest, None, datagrams, segment)
    }

    /// [`DataChannel::send_sealed`], with a group datagram in fan-out mode
    /// sent only to the registered members among `among`, when given
    /// (see [`DataChannel::send_among`]).
    pub fn send_sealed_among(
        &self,
        dest: Dest,
        among: Option<&Targets>,
        datagrams: &[u8],
        segment: usize,
    ) -> io::Result<()> {
        let segment = segment.max(1);
        let count = datagrams.len().div_ceil(segment);
        let fd = self.0.socket.as_raw_fd();
        for addr in self.addresses(dest, among)? {
            if count > 1 && self.0.gso.load(Ordering::Relaxed) {
                let seg = u16::try_from(segment).unwrap_or(u16::MAX);
                let sent = sendmsg(
                    fd,
                    &[IoSlice::new(datagrams)],
                    &[ControlMessage::UdpGsoSegments(&seg)],
                    MsgFlags::empty(),
                    Some(&SockaddrStorage::from(addr)),
                );
                match sent {
                    Ok(_) => {
                        self.0.sent.fetch_add(count as u64, Ordering::Relaxed);
                        continue;
                    }
                    Err(
                        e @ (nix::Error::EIO
                        | nix::Error::EINVAL
                        | nix::Error::ENOPROTOOPT
                        | nix::Error::EOPNOTSUPP),
                    ) => {
                        // No segmentation on this path: one send per
                        // datagram from now on.
                        tracing::info!(event = "data_gso_off", error = %e);
                        self.0.gso.store(false, Ordering::Relaxed);
                    }
                    Err(e) => {
                        self.0.send_errors.fetch_add(count as u64, Ordering::Relaxed);
                        tracing::debug!(event = "data_send_failed", %addr, error = %e);
                        continue;
                    }
                }
            }
            for d in datagrams.chunks(segment) {
                match self.0.socket.try_send_to(d, addr) {
                    Ok(_) => {
                        self.0.sent.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => {
                        self.0.send_errors.fetch_add(1, Ordering::Relaxed);
                        tracing::debug!(event = "data_send_failed", %addr, error = %e);
                    }
                }
            }
        }
        Ok(())
    }

    /// Screens one item of an [`Incoming`] stream: injected drop, then
    /// authentication and replay check. Learns the sender's address.
    pub fn accept(&self, datagram: Datagram) -> Option<(NodeId, Bytes)> {
        self.accept_at(unix_ms(), datagram)
    }

    /// Screens a whole batch ([`DataChannel::accept`] on each datagram,
    /// reading the clock once): the datagrams that pass, with their senders.
    pub fn accept_batch(&self, batch: Batch) -> impl Iterator<Item = (NodeId, Bytes)> + '_ {
        let now_ms = unix_ms();
        batch.into_iter().filter_map(move |d| self.accept_at(now_ms, d))
    }

    fn accept_at(&self, now_ms: u64, (received, from): Datagram) -> Option<(NodeId, Bytes)> {
        {
            let mut d = lock(&self.0.drop);
            let p = d.0;
            if p > 0.0 && d.1.random_bool(p) {
                self.0.dropped.fetch_add(1, Ordering::Relaxed);
                return None;
            }
        }
        let checked = received.and_then(|(env, payload)| {
            lock(&self.0.replay).check(now_ms, &env)?;
            Ok((env, payload))
        });
        match checked {
            Ok((env, payload)) if env.sender != self.0.node => {
                self.0.received.fetch_add(1, Ordering::Relaxed);
                // Authenticated, so the address may be trusted: a peer that
                // moved (restarted on another port) is followed.
                if from.port() != 0 && !from.ip().is_multicast() {
                    let mut peers = lock(&self.0.peers);
                    if peers.get(&env.sender) != Some(&from) {
                        peers.insert(env.sender, from);
                    }
                }
                Some((env.sender, payload))
            }
            Ok(_) => None,
            Err(e) => {
                self.0.rejected.fetch_add(1, Ordering::Relaxed);
                metrics::counter!("cmover_datagrams_rejected_total", "node" => crate::metrics::node_label(self.0.node),
                    "channel" => "data", "reason" => crate::metrics::reject_reason(&e))
                .increment(1);
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

#[cfg(test)]
mod tests {
    use super::*;

    fn config(node: u64) -> DataChannelConfig {
        DataChannelConfig {
            node: NodeId(node),
            secret: b"data channel test secret, 32 b!".to_vec(),
            bind: "127.0.0.1:0".parse().unwrap(),
            mode: DataMode::Unicast,
            peers: Vec::new(),
            drop_rate: 0.0,
            drop_seed: 0,
        }
    }

    fn sealed_seq(channel: &DataChannel) -> u64 {
        let mut out = Vec::new();
        channel
            .seal_into(&mut out, |o| {
                o.extend_from_slice(b"payload");
                Ok(())
            })
            .unwrap();
        u64::from_le_bytes(out[12..20].try_into().unwrap())
    }

    /// DESIGN §4 "Only targets": in fan-out mode a session's datagrams go
    /// to its targets only; a registered member that is not one gets none.
    #[tokio::test]
    async fn only_targets_fan_out_reaches_the_targets_only() {
        use futures_util::StreamExt;
        let (leader, _) = DataChannel::open(config(9)).unwrap();
        let mut members = Vec::new();
        for id in [1, 2] {
            let (ch, mut incoming) = DataChannel::open(config(id)).unwrap();
            leader.add_peer(NodeId(id), ch.local_addr().unwrap());
            members.push((ch, incoming.remove(0)));
        }
        let targets = Targets::new([NodeId(1)]).unwrap();
        // A fresh socket's readiness is not known yet: a `try_send` would fail.
        leader.0.socket.writable().await.unwrap();
        leader.send_among(Dest::Group, &targets, b"for the targets").unwrap();
        // A marker sent after it to everyone: member 2 must see it first.
        leader.send(Dest::Group, b"for everyone").unwrap();
        let mut got = Vec::new();
        for (ch, incoming) in &mut members {
            let mut payloads = Vec::new();
            while !payloads.iter().any(|p: &Bytes| &p[..] == b"for everyone") {
                let batch = tokio::time::timeout(std::time::Duration::from_secs(30), incoming.next())
                    .await
                    .unwrap_or_else(|_| {
                        panic!("nothing in 30 s: {:?}, sent {:?}", ch.stats(), leader.stats())
                    })
                    .expect("the stream goes on");
                payloads.extend(ch.accept_batch(batch).map(|(_, p)| p));
            }
            got.push(payloads);
        }
        assert_eq!(got[0], [Bytes::from_static(b"for the targets"), Bytes::from_static(b"for everyone")]);
        assert_eq!(got[1], [Bytes::from_static(b"for everyone")]);
    }

    #[tokio::test]
    async fn sibling_channels_of_a_node_share_one_sequence() {
        let (member, _) = DataChannel::open(config(1)).unwrap();
        let (leader, _) = member.open_sibling(config(1)).unwrap();
        let first = sealed_seq(&member);
        assert_eq!(sealed_seq(&leader), first + 1);
        assert_eq!(sealed_seq(&member), first + 2);
        let other = member.open_sibling(config(2)).unwrap_err();
        assert_eq!(other.kind(), io::ErrorKind::InvalidInput);
    }
}
