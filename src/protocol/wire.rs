//! Authenticated datagrams: the envelope every UDP datagram travels in.
//!
//! ```text
//! magic "CM" | version u8 | channel u8 | sender u64 | seq u64 | timestamp_ms u64
//! | payload_len u16 | payload | tag (16 bytes, HMAC-SHA256 truncated)
//! ```
//!
//! The tag covers everything before it and is keyed per channel from the
//! cluster secret, so a datagram from outside the cluster, or from another
//! channel, is dropped before its payload is even parsed. Replays are stopped
//! by [`ReplayGuard`]: a timestamp window (too old or from the future) and,
//! per sender, a sliding window of sequence numbers as in IPsec. Senders start
//! their sequence at their start-up time in microseconds, so a restarted node
//! is not mistaken for a replay of itself.
//!
//! [`DatagramCodec`] is the `tokio-util` codec over this envelope, for
//! `UdpFramed`. It yields every datagram, authenticated or not, as a
//! [`Received`] so the driver can count rejections without ending the stream.

use std::collections::HashMap;

use bytes::{BufMut, Bytes, BytesMut};
use thiserror::Error;
use tokio_util::codec::{Decoder, Encoder};

use super::bytes::{DecodeError, Reader};
use super::crypto::MacKey;
use super::ids::NodeId;

/// First bytes of every datagram.
pub const MAGIC: [u8; 2] = *b"CM";
/// Envelope format version.
pub const VERSION: u8 = 1;
/// Bytes before the payload.
pub const HEADER_LEN: usize = 2 + 1 + 1 + 8 + 8 + 8 + 2;
/// Bytes of the authentication tag.
pub const TAG_LEN: usize = 16;
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

    /// The HKDF label of this channel's key.
    pub fn key_label(self) -> &'static str {
        match self {
            Channel::Control => "datagram control",
            Channel::Data => "datagram data",
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
    /// Timestamp older than the replay window allows.
    #[error("stale datagram from {sender} ({age_ms} ms old)")]
    Stale {
        /// Sender.
        sender: NodeId,
        /// How old.
        age_ms: u64,
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
}

/// Datagrams dropped, by reason: what a driver exposes so that operators and
/// tests can see forged, corrupted or replayed traffic.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct RejectCounts {
    /// Framing, version, size or payload errors, and datagrams not ours at all.
    pub malformed: u64,
    /// Tag did not verify (wrong secret, wrong channel, tampering).
    pub bad_tag: u64,
    /// Timestamp older than the replay window.
    pub stale: u64,
    /// Timestamp too far in the future.
    pub from_future: u64,
    /// Sequence number already seen or behind the window.
    pub replayed: u64,
}

impl RejectCounts {
    /// Counts one rejection.
    pub fn record(&mut self, e: &WireError) {
        let counter = match e {
            WireError::Malformed(_)
            | WireError::BadMagic
            | WireError::Version(_)
            | WireError::TooLarge(_) => &mut self.malformed,
            WireError::BadTag => &mut self.bad_tag,
            WireError::Stale { .. } => &mut self.stale,
            WireError::FromFuture { .. } => &mut self.from_future,
            WireError::Replayed { .. } => &mut self.replayed,
        };
        *counter += 1;
    }

    /// All rejections.
    pub fn total(&self) -> u64 {
        self.malformed + self.bad_tag + self.stale + self.from_future + self.replayed
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
    h[28..30].copy_from_slice(&(payload_len as u16).to_le_bytes());
    h
}

/// Seals `payload` into a datagram appended to `out`.
pub fn seal(key: &MacKey, env: &Envelope, payload: &[u8], out: &mut BytesMut) -> Result<(), WireError> {
    if payload.len() > MAX_PAYLOAD {
        return Err(WireError::TooLarge(payload.len()));
    }
    let start = out.len();
    out.reserve(HEADER_LEN + payload.len() + TAG_LEN);
    out.put_slice(&header(env, payload.len()));
    out.put_slice(payload);
    let tag = key.sign(&[&out[start..]]);
    out.put_slice(&tag[..TAG_LEN]);
    Ok(())
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
/// after its header is the payload. Writes the header and appends the tag;
/// the bytes are exactly those [`seal`] produces. On error `out` is cut
/// back to `start`.
pub fn seal_in_place(key: &MacKey, env: &Envelope, out: &mut Vec<u8>, start: usize) -> Result<(), WireError> {
    out.resize(out.len().max(start + HEADER_LEN) + TAG_LEN, 0);
    let sealed = seal_slice(key, env, &mut out[start..]);
    if sealed.is_err() {
        out.truncate(start);
    }
    sealed
}

/// Seals a datagram laid out in `datagram`: `HEADER_LEN` bytes for the
/// header, the payload, `TAG_LEN` bytes for the tag. Writes header and tag;
/// the bytes are exactly those [`seal`] produces for that payload. For a
/// driver that lays several datagrams out before filling them (frames read
/// from a file with one system call).
pub fn seal_slice(key: &MacKey, env: &Envelope, datagram: &mut [u8]) -> Result<(), WireError> {
    let payload_len = datagram.len().saturating_sub(HEADER_LEN + TAG_LEN);
    if datagram.len() < HEADER_LEN + TAG_LEN || payload_len > MAX_PAYLOAD {
        return Err(WireError::TooLarge(payload_len));
    }
    let tag_at = datagram.len() - TAG_LEN;
    datagram[..HEADER_LEN].copy_from_slice(&header(env, payload_len));
    let tag = key.sign(&[&datagram[..tag_at]]);
    datagram[tag_at..].copy_from_slice(&tag[..TAG_LEN]);
    Ok(())
}

/// Checks a datagram's framing and tag and returns its envelope and payload.
/// Replay checks are separate ([`ReplayGuard`]) because they need the time.
pub fn open<'a>(key: &MacKey, datagram: &'a [u8]) -> Result<(Envelope, &'a [u8]), WireError> {
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
    let payload = r.bytes_u16("payload", MAX_PAYLOAD)?;
    let signed_len = r.position();
    let tag = r.bytes(TAG_LEN, "tag")?;
    r.finish("datagram")?;
    if !key.verify(&[&datagram[..signed_len]], tag) {
        return Err(WireError::BadTag);
    }
    Ok((Envelope { channel, sender, seq, timestamp_ms }, payload))
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
}

impl Default for ReplayLimits {
    fn default() -> Self {
        ReplayLimits { max_age_ms: 30_000, max_future_ms: 5_000, max_senders: 4096 }
    }
}

#[derive(Debug, Clone, Copy)]
struct Window {
    highest: u64,
    /// Bit i set: `highest - i` was seen.
    seen: u64,
    last_ms: u64,
}

/// Drops datagrams that are too old, from the future, or seen before.
#[derive(Debug, Clone, Default)]
pub struct ReplayGuard {
    limits: ReplayLimits,
    windows: HashMap<NodeId, Window>,
}

impl ReplayGuard {
    /// A guard with these limits.
    pub fn new(limits: ReplayLimits) -> Self {
        ReplayGuard { limits, windows: HashMap::new() }
    }

    /// Accepts `env` (and remembers it) or says why not. `now_ms` is the
    /// receiver's wall clock in Unix milliseconds.
    pub fn check(&mut self, now_ms: u64, env: &Envelope) -> Result<(), WireError> {
        let sender = env.sender;
        if env.timestamp_ms > now_ms.saturating_add(self.limits.max_future_ms) {
            return Err(WireError::FromFuture { sender, ahead_ms: env.timestamp_ms - now_ms });
        }
        if env.timestamp_ms.saturating_add(self.limits.max_age_ms) < now_ms {
            return Err(WireError::Stale { sender, age_ms: now_ms - env.timestamp_ms });
        }
        let replayed = WireError::Replayed { sender, seq: env.seq };
        match self.windows.get_mut(&sender) {
            Some(w) if env.seq > w.highest => {
                let shift = env.seq - w.highest;
                w.seen = if shift >= 64 { 1 } else { (w.seen << shift) | 1 };
                w.highest = env.seq;
                w.last_ms = now_ms;
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
                self.windows.insert(sender, Window { highest: env.seq, seen: 1, last_ms: now_ms });
            }
        }
        Ok(())
    }
}

/// A datagram as the codec hands it over: authenticated, or the reason it was not.
pub type Received = Result<(Envelope, Bytes), WireError>;

/// Opens one whole datagram of `channel`: framing and tag (not replay). The
/// payload is a slice of `datagram`, not a copy.
pub fn open_datagram(key: &MacKey, channel: Channel, datagram: Bytes) -> Received {
    let (env, payload) = open(key, &datagram)?;
    if env.channel != channel {
        return Err(WireError::BadTag);
    }
    let start = payload.as_ptr() as usize - datagram.as_ptr() as usize;
    let len = payload.len();
    Ok((env, datagram.slice(start..start + len)))
}

/// `tokio-util` codec for one channel. Decoding checks framing and tag (not
/// replay, which needs the clock); encoding seals `(envelope, payload)`.
#[derive(Debug, Clone)]
pub struct DatagramCodec {
    key: MacKey,
    channel: Channel,
}

impl DatagramCodec {
    /// A codec for `channel` keyed from the cluster secret.
    pub fn new(secret: &[u8], channel: Channel) -> Self {
        DatagramCodec { key: MacKey::derive(secret, channel.key_label()), channel }
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
        Ok(Some(open_datagram(&self.key, self.channel, src.split().freeze())))
    }
}

impl Encoder<(Envelope, Bytes)> for DatagramCodec {
    type Error = std::io::Error;

    fn encode(
        &mut self,
        (env, payload): (Envelope, Bytes),
        dst: &mut BytesMut,
    ) -> Result<(), std::io::Error> {
        seal(&self.key, &env, &payload, dst)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))
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

    fn sealed(seq: u64, ts: u64, payload: &[u8]) -> BytesMut {
        let mut out = BytesMut::new();
        let key = MacKey::derive(SECRET, Channel::Control.key_label());
        seal(&key, &env(seq, ts), payload, &mut out).unwrap();
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
    fn sealing_in_place_gives_the_same_bytes() {
        let key = MacKey::derive(SECRET, Channel::Control.key_label());
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
