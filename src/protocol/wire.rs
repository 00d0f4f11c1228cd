//! Authenticated datagrams: the envelope every UDP datagram travels in.
//!
//! ```text
//! magic "CM" | version u8 | channel u8 | sender u64 | seq u64 | timestamp_ms u64
//! | payload_len u16 | payload (encrypted) | tag (16 bytes, AES-256-GCM)
//! ```
//!
//! # Sealing
//!
//! Every datagram, on every channel, is sealed with AES-256-GCM: the header
//! is the associated data, the payload is encrypted in place, and the
//! 16-byte tag covers both. The key is per channel *and* per sender
//! ([`DatagramKeyRoot`]: HKDF-SHA256 from the cluster secret with the
//! channel's label, then the sender's id), so a datagram from outside the
//! cluster, from another channel, or claiming another sender is dropped
//! before its payload is even parsed.
//!
//! The nonce is the sender's sequence number (8 bytes) followed by the low
//! 32 bits of its timestamp, both from the authenticated header. A nonce must
//! never repeat under one key, and the key belongs to one sender on one
//! channel, so what must never repeat is a (sequence, millisecond) pair of
//! one node on one channel:
//!
//! - Within a process, a node numbers all its datagrams of a channel from
//!   one [`Sequencer`] (the data channel's sockets share it: see
//!   `DataChannel::open_sibling`), which never hands out a number twice.
//! - Across restarts, a sequencer starts at the start-up time in Unix
//!   microseconds, above every number the previous run handed out unless it
//!   averaged more than a million datagrams a second, or the clock was set
//!   back between the runs; even then the nonce repeats only if the same
//!   number is also sealed in the same millisecond, which the timestamp in
//!   the nonce makes a coincidence rather than a certainty.
//! - Node ids are unique per cluster (two processes with one id would
//!   already break elections and the replay guard below).
//!
//! Why AES-GCM, and why encrypt: the check has to be cheap because a member
//! authenticates every byte it receives, and then hashes every byte again to
//! verify the assignment. With AES-NI and PCLMULQDQ, `ring`'s AES-GCM over a
//! payload it encrypts runs 2.5–4× as fast as HMAC-SHA256 with SHA-NI
//! (measured on the project's VMs, 1.4 to 64 KB datagrams), while its GMAC
//! path (the data as associated data only) takes it one block at a time and
//! is no faster than HMAC; ChaCha20-Poly1305 over associated data is 1.7×.
//! Confidentiality on the wire comes with the speed, at no extra cost. On a
//! CPU without AES instructions `ring` falls back to constant-time software
//! AES, slower than HMAC. See the README ("cargo bench --bench
//! mctp_fanout") for what it changed end to end.
//!
//! # Replays
//!
//! Replays are stopped by [`ReplayGuard`]: a timestamp window (too old or
//! from the future) and, per sender, a sliding window of sequence numbers as
//! in IPsec.
//!
//! Given the source address ([`ReplayGuard::check_from`]), the guard also
//! keeps one sender id to one node: the window belongs to the address it
//! was established by, and datagrams of the same id from another address
//! (a second node with a copied config), or from the same address numbered
//! far below the window (an older process, beyond [`STREAM_SPAN`]), are
//! refused as [`WireError::Duplicate`] without touching it, as long as the
//! established one was heard within `takeover_ms`. Only once it has been
//! silent that long does the newcomer take over (a node restarted on
//! another port). The same address numbering far above is a restart and
//! goes on at once (a second process on one address and port, which only
//! shared ports allow, is not told apart from one). So a duplicate can
//! neither flip the node's identity nor push its window past the genuine
//! node's numbers and lock it out.
//!
//! [`DatagramCodec`] is the `tokio-util` codec over this envelope, for
//! `UdpFramed`. It yields every datagram, authenticated or not, as a
//! [`Received`] so the driver can count rejections without ending the stream.

// Sizes and counts here come from the network or the disk: no silent
// truncation (tests may build what they like).
#![cfg_attr(not(test), warn(clippy::cast_possible_truncation))]

use std::collections::HashMap;
use std::ops::Range;

use bytes::{BufMut, Bytes, BytesMut};
use thiserror::Error;
use tokio_util::codec::{Decoder, Encoder};

use super::bytes::{DecodeError, Reader};
use super::crypto::{DatagramKey, DatagramKeyRoot, DATAGRAM_NONCE_LEN, DATAGRAM_TAG_LEN};
use super::ids::NodeId;

/// First bytes of every datagram.
pub const MAGIC: [u8; 2] = *b"CM";
/// Envelope format version: 2 is AES-256-GCM (1 was HMAC-SHA256).
pub const VERSION: u8 = 2;
/// Bytes before the payload.
pub const HEADER_LEN: usize = 2 + 1 + 1 + 8 + 8 + 8 + 2;
/// Bytes of the authentication tag.
pub const TAG_LEN: usize = DATAGRAM_TAG_LEN;
/// The largest payload that fits a UDP datagram with the envelope.
pub const MAX_PAYLOAD: usize = 65_507 - HEADER_LEN - TAG_LEN;

/// Which channel a datagram belongs to; each has its own key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Channel {
    /// Elections and membership.
    Control = 1,
    /// Multicast transfer of assignments and status reports.
    Data = 2,
}

impl Channel {
    fn from_u8(v: u8) -> Result<Self, DecodeError> {
        match v {
            1 => Ok(Channel::Control),
            2 => Ok(Channel::Data),
            value => Err(DecodeError::Invalid { what: "channel", value: u64::from(value) }),
        }
    }

    /// The HKDF label of this channel's keys (each sender's key adds its id).
    pub fn key_label(self) -> &'static str {
        match self {
            Channel::Control => "datagram aead control",
            Channel::Data => "datagram aead data",
        }
    }
}

/// The authenticated fields of a datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Envelope {
    /// The channel.
    pub channel: Channel,
    /// Who sent it (claimed, but covered by the tag).
    pub sender: NodeId,
    /// The sender's sequence number, strictly increasing per sender.
    pub seq: u64,
    /// The sender's wall clock, Unix milliseconds.
    pub timestamp_ms: u64,
}

/// Why a datagram was dropped.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum WireError {
    /// Too short, wrong magic or version, or a length that does not add up.
    #[error("malformed datagram: {0}")]
    Malformed(#[from] DecodeError),
    /// Bad magic bytes: not ours at all.
    #[error("not a cmover datagram")]
    BadMagic,
    /// A format version this build does not speak.
    #[error("datagram format version {0} is not supported")]
    Version(u8),
    /// Payload over [`MAX_PAYLOAD`].
    #[error("payload of {0} bytes is over the datagram limit")]
    TooLarge(usize),
    /// The tag does not verify: wrong cluster secret, wrong channel or tampering.
    #[error("authentication failed")]
    BadTag,
    /// Sealing only: the envelope names another sender or channel than the
    /// key's, so no receiver could open it.
    #[error(
        "cannot seal a datagram of {sender} on the {channel:?} channel with another node's or channel's key"
    )]
    WrongKey {
        /// The envelope's sender.
        sender: NodeId,
        /// The envelope's channel.
        channel: Channel,
    },
    /// Timestamp older than the replay window allows.
    #[error("stale datagram from {sender} ({age_ms} ms old)")]
    Stale {
        /// Sender.
        sender: NodeId,
        /// How old.
        age_ms: u64,
    },
    /// Stamped before the receiver started: a capture replayed to a
    /// restarted node, whose windows are new.
    #[error("datagram from {sender} was sent {early_ms} ms before this node started")]
    BeforeStart {
        /// Sender.
        sender: NodeId,
        /// How long before the start.
        early_ms: u64,
    },
    /// Timestamp further in the future than clock skew allows.
    #[error("datagram from {sender} is {ahead_ms} ms in the future")]
    FromFuture {
        /// Sender.
        sender: NodeId,
        /// How far ahead.
        ahead_ms: u64,
    },
    /// A sequence number already seen, or too far behind.
    #[error("replayed datagram from {sender} (seq {seq})")]
    Replayed {
        /// Sender.
        sender: NodeId,
        /// Its sequence number.
        seq: u64,
    },
    /// A second node (or process) sends as `sender`, which another one at
    /// `established` is: the established one is kept.
    #[error(
        "node id {sender} is used twice: by {established} (kept) and by {other} (refused); give each node its own node.id"
    )]
    Duplicate {
        /// The id both use.
        sender: NodeId,
        /// Where the node that keeps the id sends from.
        established: std::net::SocketAddr,
        /// Where the other one sends from.
        other: std::net::SocketAddr,
    },
}

/// Datagrams dropped, by reason: what a driver exposes so that operators and
/// tests can see forged, corrupted or replayed traffic.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct RejectCounts {
    /// Framing, version, size or payload errors, and datagrams not ours at all.
    pub malformed: u64,
    /// Tag did not verify (wrong secret, wrong channel, tampering).
    pub bad_tag: u64,
    /// Timestamp older than the replay window, or from before this node started.
    pub stale: u64,
    /// Timestamp too far in the future.
    pub from_future: u64,
    /// Sequence number already seen or behind the window.
    pub replayed: u64,
    /// From a second node using a sender id another one holds.
    pub duplicate: u64,
}

impl RejectCounts {
    /// Counts one rejection.
    pub fn record(&mut self, e: &WireError) {
        let counter = match e {
            WireError::Malformed(_)
            | WireError::BadMagic
            | WireError::Version(_)
            | WireError::TooLarge(_)
            | WireError::WrongKey { .. } => &mut self.malformed,
            WireError::BadTag => &mut self.bad_tag,
            WireError::Stale { .. } | WireError::BeforeStart { .. } => &mut self.stale,
            WireError::FromFuture { .. } => &mut self.from_future,
            WireError::Replayed { .. } => &mut self.replayed,
            WireError::Duplicate { .. } => &mut self.duplicate,
        };
        *counter += 1;
    }

    /// All rejections.
    pub fn total(&self) -> u64 {
        self.malformed + self.bad_tag + self.stale + self.from_future + self.replayed + self.duplicate
    }
}

/// The envelope's header for a payload of `payload_len` bytes (bounded by
/// [`MAX_PAYLOAD`] by the callers).
fn header(env: &Envelope, payload_len: usize) -> [u8; HEADER_LEN] {
    let mut h = [0u8; HEADER_LEN];
    h[0..2].copy_from_slice(&MAGIC);
    h[2] = VERSION;
    h[3] = env.channel as u8;
    h[4..12].copy_from_slice(&env.sender.0.to_le_bytes());
    h[12..20].copy_from_slice(&env.seq.to_le_bytes());
    h[20..28].copy_from_slice(&env.timestamp_ms.to_le_bytes());
    h[28..30].copy_from_slice(&u16::try_from(payload_len).unwrap_or(u16::MAX).to_le_bytes());
    h
}

/// The AEAD nonce of a datagram: its sequence number, then the low 32 bits
/// of its timestamp (see the module docs for why it never repeats).
fn nonce(env: &Envelope) -> [u8; DATAGRAM_NONCE_LEN] {
    let mut n = [0u8; DATAGRAM_NONCE_LEN];
    n[..8].copy_from_slice(&env.seq.to_le_bytes());
    // The low 32 bits of the timestamp.
    n[8..].copy_from_slice(&env.timestamp_ms.to_le_bytes()[..4]);
    n
}

/// The key one node seals its datagrams of one channel with.
#[derive(Debug, Clone)]
pub struct SealingKey {
    channel: Channel,
    sender: NodeId,
    key: DatagramKey,
}

impl SealingKey {
    /// Derives `sender`'s key for `channel` from the cluster secret.
    pub fn new(secret: &[u8], channel: Channel, sender: NodeId) -> Self {
        SealingKey::from_root(&DatagramKeyRoot::derive(secret, channel.key_label()), channel, sender)
    }

    fn from_root(root: &DatagramKeyRoot, channel: Channel, sender: NodeId) -> Self {
        SealingKey { channel, sender, key: root.sender_key(sender.0) }
    }

    /// The node whose key this is.
    pub fn sender(&self) -> NodeId {
        self.sender
    }
}

/// Most sender keys an [`OpeningKeys`] remembers; beyond that one is
/// forgotten (and derived again when its sender is heard from).
pub const MAX_SENDER_KEYS: usize = 4096;

/// The keys a node opens the datagrams of one channel with: each sender's,
/// derived from the cluster secret the first time that sender is heard
/// from, and remembered once a datagram under it authenticated, so that
/// forged senders cost a derivation each but never crowd out real ones.
#[derive(Debug, Clone)]
pub struct OpeningKeys {
    channel: Channel,
    root: DatagramKeyRoot,
    senders: HashMap<NodeId, DatagramKey>,
}

impl OpeningKeys {
    /// The keys of `channel`, from the cluster secret.
    pub fn new(secret: &[u8], channel: Channel) -> Self {
        OpeningKeys {
            channel,
            root: DatagramKeyRoot::derive(secret, channel.key_label()),
            senders: HashMap::new(),
        }
    }

    /// The channel.
    pub fn channel(&self) -> Channel {
        self.channel
    }

    /// The key `sender` seals with (derived afresh).
    pub fn sealing_key(&self, sender: NodeId) -> SealingKey {
        SealingKey::from_root(&self.root, self.channel, sender)
    }

    /// Runs `open` with `sender`'s key; remembers the key if it succeeded.
    fn with_key(&mut self, sender: NodeId, open: impl FnOnce(&DatagramKey) -> bool) -> bool {
        if let Some(key) = self.senders.get(&sender) {
            return open(key);
        }
        let key = self.root.sender_key(sender.0);
        if !open(&key) {
            return false;
        }
        if self.senders.len() >= MAX_SENDER_KEYS {
            if let Some(&old) = self.senders.keys().next() {
                self.senders.remove(&old);
            }
        }
        self.senders.insert(sender, key);
        true
    }
}

/// Seals `payload` into a datagram appended to `out`.
pub fn seal(key: &SealingKey, env: &Envelope, payload: &[u8], out: &mut BytesMut) -> Result<(), WireError> {
    if payload.len() > MAX_PAYLOAD {
        return Err(WireError::TooLarge(payload.len()));
    }
    let start = out.len();
    out.reserve(HEADER_LEN + payload.len() + TAG_LEN);
    out.put_slice(&[0; HEADER_LEN]);
    out.put_slice(payload);
    out.put_slice(&[0; TAG_LEN]);
    let sealed = seal_slice(key, env, &mut out[start..]);
    if sealed.is_err() {
        out.truncate(start);
    }
    sealed
}

/// Starts a datagram at the end of `out` to be sealed in place: reserves
/// the header and returns where the datagram starts. Append the payload to
/// `out`, then call [`seal_in_place`] with that start. Saves the copy
/// [`seal`] makes when the payload is produced straight into the datagram
/// (a frame read from a file).
pub fn begin_in_place(out: &mut Vec<u8>) -> usize {
    let start = out.len();
    out.resize(start + HEADER_LEN, 0);
    start
}

/// Seals the datagram begun at `start` by [`begin_in_place`]: everything
/// after its header is the payload. Writes the header, encrypts the payload
/// and appends the tag; the bytes are exactly those [`seal`] produces. On
/// error `out` is cut back to `start`.
pub fn seal_in_place(
    key: &SealingKey,
    env: &Envelope,
    out: &mut Vec<u8>,
    start: usize,
) -> Result<(), WireError> {
    out.resize(out.len().max(start + HEADER_LEN) + TAG_LEN, 0);
    let sealed = seal_slice(key, env, &mut out[start..]);
    if sealed.is_err() {
        out.truncate(start);
    }
    sealed
}

/// Seals a datagram laid out in `datagram`: `HEADER_LEN` bytes for the
/// header, the payload, `TAG_LEN` bytes for the tag. Writes the header,
/// encrypts the payload and writes the tag; the bytes are exactly those
/// [`seal`] produces for that payload. For a driver that lays several
/// datagrams out before filling them (frames read from a file with one
/// system call).
pub fn seal_slice(key: &SealingKey, env: &Envelope, datagram: &mut [u8]) -> Result<(), WireError> {
    let payload_len = datagram.len().saturating_sub(HEADER_LEN + TAG_LEN);
    if datagram.len() < HEADER_LEN + TAG_LEN || payload_len > MAX_PAYLOAD {
        return Err(WireError::TooLarge(payload_len));
    }
    if env.sender != key.sender || env.channel != key.channel {
        return Err(WireError::WrongKey { sender: env.sender, channel: env.channel });
    }
    let (head, rest) = datagram.split_at_mut(HEADER_LEN);
    let (payload, tag) = rest.split_at_mut(payload_len);
    head.copy_from_slice(&header(env, payload_len));
    tag.copy_from_slice(&key.key.seal(nonce(env), head, payload));
    Ok(())
}

/// Checks a datagram's framing and tag and decrypts its payload in place;
/// returns its envelope and where its payload is in `datagram`. A datagram
/// of another channel than `keys`' is refused as [`WireError::BadTag`]
/// (its tag could not verify under these keys). Replay checks are separate
/// ([`ReplayGuard`]) because they need the time.
pub fn open(keys: &mut OpeningKeys, datagram: &mut [u8]) -> Result<(Envelope, Range<usize>), WireError> {
    let mut r = Reader::new(datagram);
    if r.array::<2>("magic")? != MAGIC {
        return Err(WireError::BadMagic);
    }
    let version = r.u8("version")?;
    if version != VERSION {
        return Err(WireError::Version(version));
    }
    let channel = Channel::from_u8(r.u8("channel")?)?;
    let sender = NodeId(r.u64("sender")?);
    let seq = r.u64("seq")?;
    let timestamp_ms = r.u64("timestamp")?;
    let payload_len = r.bytes_u16("payload", MAX_PAYLOAD)?.len();
    let tag: [u8; TAG_LEN] = r.array("tag")?;
    r.finish("datagram")?;
    if channel != keys.channel {
        return Err(WireError::BadTag);
    }
    let env = Envelope { channel, sender, seq, timestamp_ms };
    let (head, rest) = datagram.split_at_mut(HEADER_LEN);
    let payload = &mut rest[..payload_len];
    if !keys.with_key(sender, |key| key.open(nonce(&env), head, payload, &tag)) {
        return Err(WireError::BadTag);
    }
    Ok((env, HEADER_LEN..HEADER_LEN + payload_len))
}

/// Numbers the datagrams of one sender.
#[derive(Debug, Clone)]
pub struct Sequencer {
    sender: NodeId,
    next: u64,
}

impl Sequencer {
    /// Starts at `start`; drivers pass their start-up time in microseconds
    /// since the Unix epoch so that a restart continues above old numbers.
    /// The numbers are nonces (see the module docs): a node needs exactly
    /// one sequencer per channel, shared by everything that seals for it.
    pub fn new(sender: NodeId, start: u64) -> Self {
        Sequencer { sender, next: start }
    }

    /// The envelope for the next datagram.
    pub fn next(&mut self, channel: Channel, timestamp_ms: u64) -> Envelope {
        let seq = self.next;
        self.next = self.next.wrapping_add(1);
        Envelope { channel, sender: self.sender, seq, timestamp_ms }
    }
}

/// Limits of the replay check.
#[derive(Debug, Clone, Copy)]
pub struct ReplayLimits {
    /// Oldest timestamp accepted, relative to now.
    pub max_age_ms: u64,
    /// Furthest future timestamp accepted (clock skew).
    pub max_future_ms: u64,
    /// Most senders tracked; beyond this the least recently seen is forgotten
    /// (its old datagrams are still stopped by the timestamp window).
    pub max_senders: usize,
    /// How long a sender id stays with the node that holds it after that
    /// node was last heard: another node using the id is refused until then
    /// (see [`ReplayGuard::check_from`]). Drivers give the membership timeout.
    pub takeover_ms: u64,
}

impl Default for ReplayLimits {
    fn default() -> Self {
        ReplayLimits { max_age_ms: 30_000, max_future_ms: 5_000, max_senders: 4096, takeover_ms: 6_000 }
    }
}

/// Sequence numbers of one sender stay within this of each other (a node
/// numbers its datagrams one by one from its start-up time in µs): a
/// datagram further from the window's highest comes from another process.
pub const STREAM_SPAN: u64 = 1 << 24;

#[derive(Debug, Clone, Copy)]
struct Window {
    highest: u64,
    /// Bit i set: `highest - i` was seen.
    seen: u64,
    last_ms: u64,
    /// Where the sender holding the window sends from, when known.
    from: Option<std::net::SocketAddr>,
}

/// Drops datagrams that are too old, from the future, or seen before.
#[derive(Debug, Clone, Default)]
pub struct ReplayGuard {
    limits: ReplayLimits,
    windows: HashMap<NodeId, Window>,
    /// Datagrams stamped earlier are refused (see [`ReplayGuard::refuse_before`]).
    floor_ms: u64,
}

impl ReplayGuard {
    /// A guard with these limits.
    pub fn new(limits: ReplayLimits) -> Self {
        ReplayGuard { limits, windows: HashMap::new(), floor_ms: 0 }
    }

    /// Refuses datagrams stamped before `floor_ms` (Unix ms). A driver
    /// passes its start-up time: its windows start empty, so without the
    /// floor a datagram captured before a restart would pass again for the
    /// whole timestamp window. (A sender whose clock runs ahead by up to the
    /// allowed skew keeps that much of an opening; one that runs behind has
    /// its first datagrams after the start refused for as long.)
    pub fn refuse_before(&mut self, floor_ms: u64) {
        self.floor_ms = floor_ms;
    }

    /// Accepts `env` (and remembers it) or says why not. `now_ms` is the
    /// receiver's wall clock in Unix milliseconds.
    pub fn check(&mut self, now_ms: u64, env: &Envelope) -> Result<(), WireError> {
        self.check_from(now_ms, env, None)
    }

    /// [`ReplayGuard::check`] for a datagram that came from `from`: one
    /// from another address than the sender's established one, or far
    /// outside its run of numbers, is a [`WireError::Duplicate`] while the
    /// established one was heard within `takeover_ms`; after that it takes
    /// the window over.
    pub fn check_from(
        &mut self,
        now_ms: u64,
        env: &Envelope,
        from: Option<std::net::SocketAddr>,
    ) -> Result<(), WireError> {
        let sender = env.sender;
        if env.timestamp_ms > now_ms.saturating_add(self.limits.max_future_ms) {
            return Err(WireError::FromFuture { sender, ahead_ms: env.timestamp_ms - now_ms });
        }
        if env.timestamp_ms.saturating_add(self.limits.max_age_ms) < now_ms {
            return Err(WireError::Stale { sender, age_ms: now_ms - env.timestamp_ms });
        }
        if env.timestamp_ms < self.floor_ms {
            return Err(WireError::BeforeStart { sender, early_ms: self.floor_ms - env.timestamp_ms });
        }
        let replayed = WireError::Replayed { sender, seq: env.seq };
        if let (Some(w), Some(other)) = (self.windows.get(&sender), from) {
            let established = w.from.unwrap_or(other);
            let behind = env.seq.saturating_add(STREAM_SPAN) < w.highest;
            let ahead = env.seq > w.highest.saturating_add(STREAM_SPAN);
            if established != other || behind {
                if now_ms < w.last_ms.saturating_add(self.limits.takeover_ms) {
                    return Err(WireError::Duplicate { sender, established, other });
                }
                // The holder has been silent: the newcomer takes the id over.
                self.windows.remove(&sender);
            } else if ahead {
                // The same address numbering far above: the node restarted
                // (its numbers start at its start-up time). It goes on at once.
                self.windows.remove(&sender);
            }
        }
        match self.windows.get_mut(&sender) {
            Some(w) if env.seq > w.highest => {
                let shift = env.seq - w.highest;
                w.seen = if shift >= 64 { 1 } else { (w.seen << shift) | 1 };
                w.highest = env.seq;
                w.last_ms = now_ms;
                w.from = w.from.or(from);
            }
            Some(w) => {
                let back = w.highest - env.seq;
                if back >= 64 || w.seen & (1 << back) != 0 {
                    return Err(replayed);
                }
                w.seen |= 1 << back;
                w.last_ms = now_ms;
            }
            None => {
                if self.windows.len() >= self.limits.max_senders {
                    let oldest = self.windows.iter().min_by_key(|(_, w)| w.last_ms).map(|(id, _)| *id);
                    if let Some(id) = oldest {
                        self.windows.remove(&id);
                    }
                }
                self.windows.insert(sender, Window { highest: env.seq, seen: 1, last_ms: now_ms, from });
            }
        }
        Ok(())
    }
}

/// A datagram as the codec hands it over: authenticated, or the reason it was not.
pub type Received = Result<(Envelope, Bytes), WireError>;

/// Opens one whole datagram (framing and tag, not replay), decrypting it in
/// place. The payload is a slice of `datagram`, not a copy.
pub fn open_datagram(keys: &mut OpeningKeys, mut datagram: BytesMut) -> Received {
    let (env, payload) = open(keys, &mut datagram)?;
    Ok((env, datagram.freeze().slice(payload)))
}

/// `tokio-util` codec for one channel. Decoding checks framing and tag (not
/// replay, which needs the clock) and decrypts; encoding seals
/// `(envelope, payload)` with the envelope's sender's key.
#[derive(Debug, Clone)]
pub struct DatagramCodec {
    keys: OpeningKeys,
    sealing: Option<SealingKey>,
}

impl DatagramCodec {
    /// A codec for `channel` keyed from the cluster secret.
    pub fn new(secret: &[u8], channel: Channel) -> Self {
        DatagramCodec { keys: OpeningKeys::new(secret, channel), sealing: None }
    }
}

impl Decoder for DatagramCodec {
    type Item = Received;
    type Error = std::io::Error;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Received>, std::io::Error> {
        if src.is_empty() {
            return Ok(None);
        }
        // A datagram arrives whole: consume all of it, whatever it holds.
        Ok(Some(open_datagram(&mut self.keys, src.split())))
    }
}

impl Encoder<(Envelope, Bytes)> for DatagramCodec {
    type Error = std::io::Error;

    fn encode(
        &mut self,
        (env, payload): (Envelope, Bytes),
        dst: &mut BytesMut,
    ) -> Result<(), std::io::Error> {
        let key = match &self.sealing {
            Some(k) if k.sender() == env.sender => k,
            _ => self.sealing.insert(self.keys.sealing_key(env.sender)),
        };
        seal(key, &env, &payload, dst).map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const SECRET: &[u8] = b"cluster secret for tests";

    fn env(seq: u64, ts: u64) -> Envelope {
        Envelope { channel: Channel::Control, sender: NodeId(9), seq, timestamp_ms: ts }
    }

    fn key() -> SealingKey {
        SealingKey::new(SECRET, Channel::Control, NodeId(9))
    }

    fn sealed(seq: u64, ts: u64, payload: &[u8]) -> BytesMut {
        let mut out = BytesMut::new();
        seal(&key(), &env(seq, ts), payload, &mut out).unwrap();
        out
    }

    #[test]
    fn codec_round_trip() {
        let mut codec = DatagramCodec::new(SECRET, Channel::Control);
        let mut buf = BytesMut::new();
        codec.encode((env(1, 1000), Bytes::from_static(b"hello")), &mut buf).unwrap();
        let (e, p) = codec.decode(&mut buf).unwrap().unwrap().unwrap();
        assert_eq!(e, env(1, 1000));
        assert_eq!(&p[..], b"hello");
        assert!(buf.is_empty());
        assert!(codec.decode(&mut buf).unwrap().is_none());
    }

    #[test]
    fn wrong_secret_wrong_channel_and_every_flipped_bit_are_rejected() {
        let good = sealed(1, 1000, b"payload");
        let mut other = DatagramCodec::new(b"another cluster secret!!", Channel::Control);
        assert_eq!(other.decode(&mut good.clone()).unwrap().unwrap(), Err(WireError::BadTag));
        let mut data = DatagramCodec::new(SECRET, Channel::Data);
        assert!(data.decode(&mut good.clone()).unwrap().unwrap().is_err());
        let mut codec = DatagramCodec::new(SECRET, Channel::Control);
        for i in 0..good.len() * 8 {
            let mut bad = good.clone();
            bad[i / 8] ^= 1 << (i % 8);
            assert!(codec.decode(&mut bad).unwrap().unwrap().is_err(), "bit {i} flip accepted");
        }
        for cut in 0..good.len() {
            let mut short = BytesMut::from(&good[..cut]);
            if cut > 0 {
                assert!(codec.decode(&mut short).unwrap().unwrap().is_err(), "cut at {cut} accepted");
            }
        }
    }

    #[test]
    fn a_datagram_claiming_another_sender_or_sealed_with_its_key_is_rejected() {
        let mut good = sealed(1, 1000, b"payload");
        let mut keys = OpeningKeys::new(SECRET, Channel::Control);
        // The sender field rewritten: node 10's key does not open it.
        let mut claimed = good.clone();
        claimed[4..12].copy_from_slice(&10u64.to_le_bytes());
        assert_eq!(open(&mut keys, &mut claimed), Err(WireError::BadTag));
        // Node 10's key cannot seal node 9's envelope, nor a data-channel one.
        let mut out = BytesMut::new();
        let ten = SealingKey::new(SECRET, Channel::Control, NodeId(10));
        assert!(matches!(seal(&ten, &env(1, 1000), b"x", &mut out), Err(WireError::WrongKey { .. })));
        let data = Envelope { channel: Channel::Data, ..env(1, 1000) };
        assert!(matches!(seal(&key(), &data, b"x", &mut out), Err(WireError::WrongKey { .. })));
        assert!(out.is_empty());
        let (e, payload) = open(&mut keys, &mut good).unwrap();
        assert_eq!(e, env(1, 1000));
        assert_eq!(&good[payload], b"payload");
    }

    #[test]
    fn the_payload_is_encrypted_under_a_nonce_of_sequence_and_time() {
        let payload = [0x41u8; 64];
        let a = sealed(1, 1000, &payload);
        let body = |d: &BytesMut| d[HEADER_LEN..d.len() - TAG_LEN].to_vec();
        assert_ne!(body(&a), payload.to_vec(), "payload in clear");
        // Another sequence number, or the same one in another millisecond,
        // is another nonce: another keystream and tag.
        for other in [sealed(2, 1000, &payload), sealed(1, 1001, &payload)] {
            assert_ne!(body(&a), body(&other));
            assert_ne!(a[a.len() - TAG_LEN..], other[other.len() - TAG_LEN..]);
        }
        assert_eq!(a, sealed(1, 1000, &payload), "sealing is deterministic");
    }

    #[test]
    fn only_senders_that_authenticated_are_remembered() {
        let mut keys = OpeningKeys::new(SECRET, Channel::Control);
        for sender in 100..110u64 {
            let mut forged = sealed(1, 1000, b"forged");
            forged[4..12].copy_from_slice(&sender.to_le_bytes());
            assert_eq!(open(&mut keys, &mut forged), Err(WireError::BadTag));
        }
        assert!(keys.senders.is_empty());
        open(&mut keys, &mut sealed(1, 1000, b"real")).unwrap();
        assert_eq!(keys.senders.len(), 1);
        // The cache is bounded; a forgotten sender's key is derived again.
        for sender in 0..MAX_SENDER_KEYS as u64 + 10 {
            let key = keys.sealing_key(NodeId(sender + 1000));
            let mut out = BytesMut::new();
            let e = Envelope { sender: NodeId(sender + 1000), ..env(1, 1000) };
            seal(&key, &e, b"x", &mut out).unwrap();
            open(&mut keys, &mut out).unwrap();
        }
        assert_eq!(keys.senders.len(), MAX_SENDER_KEYS);
        open(&mut keys, &mut sealed(2, 1000, b"again")).unwrap();
    }

    #[test]
    fn sealing_in_place_gives_the_same_bytes() {
        let key = key();
        for len in [0usize, 1, 1403, MAX_PAYLOAD] {
            let payload: Vec<u8> = (0..len).map(|i| i as u8).collect();
            let mut expected = BytesMut::new();
            seal(&key, &env(7, 1000), &payload, &mut expected).unwrap();
            let mut out = b"earlier datagram".to_vec();
            let start = begin_in_place(&mut out);
            out.extend_from_slice(&payload);
            seal_in_place(&key, &env(7, 1000), &mut out, start).unwrap();
            assert_eq!(&out[..start], b"earlier datagram");
            assert_eq!(&out[start..], &expected[..], "payload of {len} bytes");
        }
        let mut out = Vec::new();
        let start = begin_in_place(&mut out);
        out.resize(start + HEADER_LEN + MAX_PAYLOAD + 1, 0);
        assert_eq!(
            seal_in_place(&key, &env(7, 1000), &mut out, start),
            Err(WireError::TooLarge(MAX_PAYLOAD + 1))
        );
        assert!(out.is_empty());
    }

    #[test]
    fn replay_guard_drops_duplicates_old_and_future() {
        let mut g = ReplayGuard::new(ReplayLimits::default());
        let now = 100_000;
        g.check(now, &env(10, now)).unwrap();
        assert_eq!(g.check(now, &env(10, now)), Err(WireError::Replayed { sender: NodeId(9), seq: 10 }));
        g.check(now, &env(8, now)).unwrap();
        g.check(now, &env(12, now)).unwrap();
        assert!(g.check(now, &env(8, now)).is_err());
        g.check(now, &env(9, now)).unwrap();
        g.check(now, &env(200, now)).unwrap();
        assert!(g.check(now, &env(12, now)).is_err(), "too far behind the window");
        assert!(matches!(g.check(now, &env(300, now - 31_000)), Err(WireError::Stale { .. })));
        assert!(matches!(g.check(now, &env(301, now + 6_000)), Err(WireError::FromFuture { .. })));
    }

    /// Issue 15 item 7: a restarted node's windows start empty; a datagram
    /// captured before the restart (inside the 30 s timestamp window) used
    /// to pass again.
    #[test]
    fn a_capture_from_before_the_receiver_started_is_refused() {
        let (sent, started) = (100_000, 110_000);
        let capture = env(1_000, sent);
        let mut before = ReplayGuard::new(ReplayLimits::default());
        before.check(sent, &capture).unwrap();
        let mut restarted = ReplayGuard::new(ReplayLimits::default());
        restarted.refuse_before(started);
        assert_eq!(
            restarted.check(started + 5, &capture),
            Err(WireError::BeforeStart { sender: NodeId(9), early_ms: 10_000 })
        );
        restarted.check(started + 5, &env(1_001, started + 4)).unwrap();
        let mut counts = RejectCounts::default();
        counts.record(&WireError::BeforeStart { sender: NodeId(9), early_ms: 1 });
        assert_eq!(counts.stale, 1);
    }

    /// Issue 15 item 2: a second agent with the same node id (a copied
    /// config) is refused while the established one lives, and never moves
    /// its window (its higher numbers used to lock the genuine node out).
    #[test]
    fn a_second_node_with_the_same_id_is_refused_and_never_locks_the_first_out() {
        let limits = ReplayLimits::default();
        let mut g = ReplayGuard::new(limits);
        let (a, b): (std::net::SocketAddr, std::net::SocketAddr) =
            ("10.0.0.1:7400".parse().unwrap(), "10.0.0.2:7400".parse().unwrap());
        // The genuine node started first (lower numbers), the copy later.
        let (genuine, copy) = (1_700_000_000_000_000u64, 1_700_000_060_000_000u64);
        let mut now = 100_000;
        for i in 0..50 {
            now += 200;
            g.check_from(now, &env(genuine + i, now), Some(a)).unwrap();
            let dup = g.check_from(now, &env(copy + i, now), Some(b));
            assert_eq!(dup, Err(WireError::Duplicate { sender: NodeId(9), established: a, other: b }));
        }
        // The same address numbered far below (an older second process): refused too.
        let older = genuine - 2 * STREAM_SPAN;
        assert!(matches!(g.check_from(now, &env(older, now), Some(a)), Err(WireError::Duplicate { .. })));
        g.check_from(now, &env(genuine + 50, now), Some(a)).unwrap();
        // The genuine node restarted at its address (numbers from its new
        // start-up time): heard at once, not after takeover_ms.
        let restarted = genuine + 5_000_000_000;
        g.check_from(now, &env(restarted, now), Some(a)).unwrap();
        assert!(
            matches!(g.check_from(now, &env(genuine + 51, now), Some(a)), Err(WireError::Duplicate { .. })),
            "the old numbers are gone with the old process"
        );
        // The genuine node stops; once silent for takeover_ms the other takes over.
        now += limits.takeover_ms - 1;
        assert!(g.check_from(now, &env(copy + 60, now), Some(b)).is_err());
        now += 1;
        g.check_from(now, &env(copy + 61, now), Some(b)).unwrap();
        // A restart on the same address (higher numbers) after a silence is accepted.
        now += limits.takeover_ms;
        g.check_from(now, &env(copy + 10_000_000_000, now), Some(b)).unwrap();
        let text = WireError::Duplicate { sender: NodeId(9), established: a, other: b }.to_string();
        assert!(text.contains("10.0.0.1:7400") && text.contains("10.0.0.2:7400"), "{text}");
    }

    proptest! {
        #[test]
        fn random_bytes_never_panic_nor_authenticate(bytes in proptest::collection::vec(any::<u8>(), 0..2000)) {
            let mut codec = DatagramCodec::new(SECRET, Channel::Control);
            let mut buf = BytesMut::from(&bytes[..]);
            if let Some(item) = codec.decode(&mut buf).unwrap() {
                prop_assert!(item.is_err());
            }
        }
    }
}
