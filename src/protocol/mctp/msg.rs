//! The MCTP messages: what travels inside a data-channel envelope.
//!
//! ```text
//! Announce  1 | session u64 | assignment u64 | size u64 | frame_size u32 | frame_count u32 | rate u64 | sha256 [32] | targets
//! Frame     2 | session u64 | pass u32 | seq u32 | len u16 | crc32 u32 | payload[len]
//! EndOfPass 3 | session u64 | pass u32 | selector
//! Status    4 | session u64 | pass u32 | kind u8 | lo u32 | hi u32 | encoding u8 | len u16 | missing[len]
//! Block     5 | session u64 | assignment u64 | sha256 [32] | pass u32 | selector | targets | len u32 | data[len]
//! Query     6 | session u64
//! selector  = kind u8 (0 all, 1 only, 2 all-except) | count u16 | node u64 × count
//! targets   = count varint (≤ MAX_TARGETS) | first node varint | (gap to the next node varint, ≥ 1) × (count − 1)
//! ```
//!
//! Every announce and every block names the session's targets (DESIGN §4
//! "Only targets"): a member that is not among them takes no part in the
//! session, even though it hears it on its segment's data channel. The
//! list is sorted and carried as varint gaps, so the usual dense ids take a
//! byte each (160 members: 160 bytes, an announce still fits one MTU); at
//! most [`MAX_TARGETS`] of them, whose worst case (ten-byte gaps) still
//! fits a datagram ([`wire::MAX_PAYLOAD`]).
//!
//! Every length is checked against its bound before anything is taken, the
//! frame's CRC32 is checked on decode, and trailing bytes are an error, so a
//! decoder fed random bytes returns an error rather than panicking or
//! allocating what a length prefix claims. A status report covers the frames
//! `lo..hi` and lists the missing ones among them, either as runs (varint gap
//! and length pairs) or as a bitmap, whichever is shorter; a receiver whose
//! missing list does not fit one datagram sends several reports that tile
//! `0..frame_count`.

use std::sync::Arc;

use bytes::{BufMut, Bytes};

use crate::protocol::bytes::{DecodeError, Reader};
use crate::protocol::ids::{AssignmentSerial, NodeId};
use crate::protocol::wire;

use super::frameset::FrameSet;

/// Bytes of a frame's header inside the envelope (tag, session, pass, seq, len, crc32).
pub const FRAME_HEADER_LEN: usize = 1 + 8 + 4 + 4 + 2 + 4;

/// IPv4 and UDP headers.
pub const IP_UDP_OVERHEAD: usize = 20 + 8;

/// The largest data-channel payload that fits one 1500-byte Ethernet frame
/// with IPv4, UDP and the authenticated envelope: no IP fragmentation.
pub const MTU_PAYLOAD: usize = 1500 - IP_UDP_OVERHEAD - wire::HEADER_LEN - wire::TAG_LEN;

/// The default frame size: a frame fills one 1500-byte MTU exactly.
pub const DEFAULT_FRAME_SIZE: usize = MTU_PAYLOAD - FRAME_HEADER_LEN;

/// The largest frame size a datagram can carry (fragmented by IP beyond the MTU).
pub const MAX_FRAME_SIZE: usize = wire::MAX_PAYLOAD - FRAME_HEADER_LEN;

/// Most nodes named in one selector; keeps a poll within one MTU.
pub const MAX_SELECTOR_NODES: usize = 160;

/// Most targets one session may name (one LAN segment's members). Even
/// with the longest gaps (ten bytes each) an announce or block header
/// naming that many stays well within one datagram ([`wire::MAX_PAYLOAD`]).
pub const MAX_TARGETS: usize = 4096;

/// The longest encoding of a target list: the count and ten bytes a node.
pub const MAX_TARGETS_LEN: usize = 2 + 10 * MAX_TARGETS;

/// The longest encoding of a selector.
pub const MAX_SELECTOR_LEN: usize = 1 + 2 + 8 * MAX_SELECTOR_NODES;

/// Bytes of a block besides its selector, its targets and its data.
pub const BLOCK_FIXED_LEN: usize = 1 + 8 + 8 + 32 + 4 + 4;

/// Largest encoded missing list in one status report (fits the MTU).
pub const MAX_STATUS_BODY: usize = MTU_PAYLOAD - 32;

const TAG_ANNOUNCE: u8 = 1;
const TAG_FRAME: u8 = 2;
const TAG_END_OF_PASS: u8 = 3;
const TAG_STATUS: u8 = 4;
const TAG_BLOCK: u8 = 5;
const TAG_QUERY: u8 = 6;

/// True when a data-channel payload starting with `tag` is an MCTP message
/// (report collection uses other tags on the same channel).
pub fn is_mctp_tag(tag: u8) -> bool {
    (TAG_ANNOUNCE..=TAG_QUERY).contains(&tag)
}

/// Identifies one transfer session of one sender.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct SessionId(pub u64);

impl std::fmt::Display for SessionId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

/// The members a session is for, sorted and without repeats, at most
/// [`MAX_TARGETS`] (checked when built and when decoded). Cheap to clone:
/// every announce of a session shares one list.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Targets(Arc<[NodeId]>);

impl Targets {
    /// The targets `nodes` (in any order, repeats ignored); an error when
    /// there are more than [`MAX_TARGETS`].
    pub fn new(nodes: impl IntoIterator<Item = NodeId>) -> Result<Targets, DecodeError> {
        let mut v: Vec<NodeId> = nodes.into_iter().collect();
        v.sort_unstable();
        v.dedup();
        if v.len() > MAX_TARGETS {
            return Err(DecodeError::TooLong {
                what: "targets",
                len: v.len() as u64,
                max: MAX_TARGETS as u64,
            });
        }
        Ok(Targets(v.into()))
    }

    /// True when `node` is a target (a binary search).
    pub fn contains(&self, node: NodeId) -> bool {
        self.0.binary_search(&node).is_ok()
    }

    /// How many there are.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// True when the session is for nobody.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The targets, ascending.
    pub fn as_slice(&self) -> &[NodeId] {
        &self.0
    }

    /// Bytes of the encoding (at most [`MAX_TARGETS_LEN`]).
    pub fn encoded_len(&self) -> usize {
        let mut prev = 0;
        let mut n = varint_len(self.0.len() as u32);
        for id in self.0.iter() {
            n += varint64_len(id.0 - prev);
            prev = id.0;
        }
        n
    }

    /// Appends the encoding: the count, then the first id and the gaps.
    pub fn encode(&self, out: &mut impl BufMut) {
        // At most MAX_TARGETS, by construction.
        put_varint(out, self.0.len() as u32);
        let mut prev = 0;
        for id in self.0.iter() {
            put_varint64(out, id.0 - prev);
            prev = id.0;
        }
    }

    /// Decodes a target list; the count is checked against [`MAX_TARGETS`]
    /// and the bytes left before anything is allocated.
    pub fn decode(r: &mut Reader<'_>) -> Result<Targets, DecodeError> {
        let count = get_varint(r)? as usize;
        // Each node takes at least one byte.
        let max = MAX_TARGETS.min(r.remaining());
        if count > max {
            return Err(DecodeError::TooLong { what: "targets", len: count as u64, max: max as u64 });
        }
        let mut v = Vec::with_capacity(count);
        let mut prev: Option<u64> = None;
        for _ in 0..count {
            let gap = get_varint64(r)?;
            let id = match prev {
                None => Some(gap),
                Some(p) if gap > 0 => p.checked_add(gap),
                Some(_) => None,
            };
            let Some(id) = id else {
                return Err(DecodeError::Invalid { what: "target gap", value: gap });
            };
            v.push(NodeId(id));
            prev = Some(id);
        }
        Ok(Targets(v.into()))
    }
}

/// Opens a session: everything a receiver needs to take part.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Announce {
    /// The session.
    pub session: SessionId,
    /// The assignment carried.
    pub assignment: AssignmentSerial,
    /// Its size in bytes.
    pub size: u64,
    /// Payload bytes per frame (the last frame may be shorter).
    pub frame_size: u32,
    /// `ceil(size / frame_size)`.
    pub frame_count: u32,
    /// The sender's initial rate, bytes per second (informational).
    pub rate: u64,
    /// SHA-256 of the whole assignment.
    pub hash: [u8; 32],
    /// The members the session is for: no other member takes part.
    pub targets: Targets,
}

impl Announce {
    /// Checks that the numbers agree with one another.
    pub fn check(&self) -> Result<(), DecodeError> {
        if self.frame_size == 0 || self.frame_size as usize > MAX_FRAME_SIZE {
            return Err(DecodeError::Invalid { what: "frame size", value: u64::from(self.frame_size) });
        }
        if frame_count(self.size, self.frame_size) != Some(self.frame_count) {
            return Err(DecodeError::Invalid { what: "frame count", value: u64::from(self.frame_count) });
        }
        Ok(())
    }

    /// The byte range of frame `seq`.
    pub fn frame_range(&self, seq: u32) -> (u64, usize) {
        let offset = u64::from(seq) * u64::from(self.frame_size);
        let len = (self.size - offset.min(self.size)).min(u64::from(self.frame_size));
        (offset, len as usize)
    }
}

/// Frames needed for `size` bytes, if that is representable (at least one frame).
pub fn frame_count(size: u64, frame_size: u32) -> Option<u32> {
    if frame_size == 0 {
        return None;
    }
    u32::try_from(size.div_ceil(u64::from(frame_size)).max(1)).ok()
}

/// Who a poll (end-of-pass marker, report request) asks to answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selector {
    /// Everyone in the session.
    All,
    /// Only these nodes.
    Only(Vec<NodeId>),
    /// Everyone but these nodes (those already heard from).
    AllExcept(Vec<NodeId>),
}

impl Selector {
    /// True when `node` is asked.
    pub fn selects(&self, node: NodeId) -> bool {
        match self {
            Selector::All => true,
            Selector::Only(v) => v.contains(&node),
            Selector::AllExcept(v) => !v.contains(&node),
        }
    }

    /// The selectors that ask exactly `wanted`, given that `others` are the
    /// rest of the addressed nodes: the shorter of the two lists (the
    /// patent's rule for report requests), split over several selectors if
    /// even that is too long for one datagram.
    pub fn for_lists(wanted: &[NodeId], others: &[NodeId]) -> Vec<Selector> {
        if others.is_empty() {
            return vec![Selector::All];
        }
        if others.len() < wanted.len() && others.len() <= MAX_SELECTOR_NODES {
            return vec![Selector::AllExcept(others.to_vec())];
        }
        wanted.chunks(MAX_SELECTOR_NODES).map(|c| Selector::Only(c.to_vec())).collect()
    }

    /// Bytes of the encoding.
    pub fn encoded_len(&self) -> usize {
        let n = match self {
            Selector::All => 0,
            Selector::Only(v) | Selector::AllExcept(v) => v.len().min(MAX_SELECTOR_NODES),
        };
        3 + 8 * n
    }

    /// Appends the encoding.
    pub fn encode(&self, out: &mut impl BufMut) {
        let (kind, list): (u8, &[NodeId]) = match self {
            Selector::All => (0, &[]),
            Selector::Only(v) => (1, v),
            Selector::AllExcept(v) => (2, v),
        };
        out.put_u8(kind);
        // Bounded by MAX_SELECTOR_NODES when built with for_lists.
        out.put_u16_le(list.len().min(MAX_SELECTOR_NODES) as u16);
        for n in list.iter().take(MAX_SELECTOR_NODES) {
            out.put_u64_le(n.0);
        }
    }

    /// Decodes one selector.
    pub fn decode(r: &mut Reader<'_>) -> Result<Selector, DecodeError> {
        let kind = r.u8("selector kind")?;
        let count = r.u16("selector count")?;
        if usize::from(count) > MAX_SELECTOR_NODES {
            return Err(DecodeError::TooLong {
                what: "selector",
                len: u64::from(count),
                max: MAX_SELECTOR_NODES as u64,
            });
        }
        let mut list = Vec::with_capacity(usize::from(count));
        for _ in 0..count {
            list.push(NodeId(r.u64("selector node")?));
        }
        match (kind, list.is_empty()) {
            (0, true) => Ok(Selector::All),
            (1, _) => Ok(Selector::Only(list)),
            (2, _) => Ok(Selector::AllExcept(list)),
            _ => Err(DecodeError::Invalid { what: "selector kind", value: u64::from(kind) }),
        }
    }
}

/// What a status report says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatusKind {
    /// Frames are missing (listed); `lo..hi` says which part of the list this is.
    Nack = 0,
    /// Every frame received and the hash verified.
    Ack = 1,
    /// The member already held the assignment before the session.
    Complete = 2,
    /// Every frame received but the hash did not verify, or the file could not be written.
    Failed = 3,
}

impl StatusKind {
    fn from_u8(v: u8) -> Result<Self, DecodeError> {
        Ok(match v {
            0 => StatusKind::Nack,
            1 => StatusKind::Ack,
            2 => StatusKind::Complete,
            3 => StatusKind::Failed,
            _ => return Err(DecodeError::Invalid { what: "status kind", value: u64::from(v) }),
        })
    }
}

/// A member's status report for one pass.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    /// The session.
    pub session: SessionId,
    /// The pass just ended (0 for an answer to the announce).
    pub pass: u32,
    /// What it says.
    pub kind: StatusKind,
    /// First frame covered by this report.
    pub lo: u32,
    /// One past the last frame covered.
    pub hi: u32,
    /// The missing frames within `lo..hi`, as sorted disjoint `start..end` runs.
    pub missing: Vec<(u32, u32)>,
}

/// A single-datagram assignment: announce, the one frame and the end of pass at once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Block {
    /// The session.
    pub session: SessionId,
    /// The assignment.
    pub assignment: AssignmentSerial,
    /// Its SHA-256.
    pub hash: [u8; 32],
    /// Transmission count, from 1.
    pub pass: u32,
    /// Who is to report.
    pub poll: Selector,
    /// The members the block is for: no other member takes it.
    pub targets: Targets,
    /// The whole assignment.
    pub data: Bytes,
}

impl Block {
    /// Bytes of a block carrying `size` bytes for `targets` with the
    /// longest selector: a sender sends an assignment as a block only when
    /// this fits one datagram.
    pub fn max_len(targets: &Targets, size: usize) -> usize {
        BLOCK_FIXED_LEN + MAX_SELECTOR_LEN + targets.encoded_len() + size
    }

    /// Bytes of this block's encoding when it carries `size` bytes of data.
    pub fn encoded_len(&self, size: usize) -> usize {
        BLOCK_FIXED_LEN + self.poll.encoded_len() + self.targets.encoded_len() + size
    }
}

/// One frame of a session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// The session.
    pub session: SessionId,
    /// Transmission count, from 1.
    pub pass: u32,
    /// Frame number.
    pub seq: u32,
    /// The bytes (CRC already checked when decoded).
    pub payload: Bytes,
}

/// Every MCTP message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// Opens a session.
    Announce(Announce),
    /// Data.
    Frame(Frame),
    /// A pass is over: the selected members report now (after a random delay).
    EndOfPass {
        /// The session.
        session: SessionId,
        /// The pass that ended.
        pass: u32,
        /// Who is to report.
        poll: Selector,
    },
    /// A member's report.
    Status(Status),
    /// A small assignment in one datagram.
    Block(Block),
    /// A member saw traffic of a session it has no announce for.
    Query {
        /// The session.
        session: SessionId,
    },
}

fn put_varint(out: &mut impl BufMut, mut v: u32) {
    while v >= 0x80 {
        out.put_u8((v as u8) | 0x80);
        v >>= 7;
    }
    out.put_u8(v as u8);
}

fn varint_len(v: u32) -> usize {
    match v {
        0..=0x7f => 1,
        0x80..=0x3fff => 2,
        0x4000..=0x1f_ffff => 3,
        0x20_0000..=0xfff_ffff => 4,
        _ => 5,
    }
}

fn get_varint(r: &mut Reader<'_>) -> Result<u32, DecodeError> {
    let mut v: u64 = 0;
    for i in 0..5 {
        let b = r.u8("varint")?;
        v |= u64::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            return u32::try_from(v).map_err(|_| DecodeError::Invalid { what: "varint", value: v });
        }
    }
    Err(DecodeError::Invalid { what: "varint", value: v })
}

fn put_varint64(out: &mut impl BufMut, mut v: u64) {
    while v >= 0x80 {
        out.put_u8((v as u8) | 0x80);
        v >>= 7;
    }
    out.put_u8(v as u8);
}

fn varint64_len(v: u64) -> usize {
    (64 - v.leading_zeros() as usize).div_ceil(7).max(1)
}

fn get_varint64(r: &mut Reader<'_>) -> Result<u64, DecodeError> {
    let mut v: u64 = 0;
    for i in 0..10 {
        let b = r.u8("varint")?;
        let bits = u64::from(b & 0x7f);
        // The tenth byte holds the top bit only.
        if i == 9 && bits > 1 {
            return Err(DecodeError::Invalid { what: "varint", value: bits });
        }
        v |= bits << (7 * i);
        if b & 0x80 == 0 {
            return Ok(v);
        }
    }
    Err(DecodeError::Invalid { what: "varint", value: v })
}

const ENC_RUNS: u8 = 0;
const ENC_BITMAP: u8 = 1;

/// Builds the status reports that describe `received` (bit set: frame held):
/// a list of parts tiling `0..universe`, each fitting one datagram.
pub fn nack_reports(session: SessionId, pass: u32, received: &FrameSet) -> Vec<Status> {
    let n = received.universe();
    let bitmap_frames = (MAX_STATUS_BODY * 8) as u32;
    let mut parts = Vec::new();
    let mut lo = 0;
    while lo < n {
        // How far a list of runs reaches within the budget.
        let mut size = 2;
        let mut prev = lo;
        let mut runs = Vec::new();
        let mut runs_hi = n;
        for (a, b) in received.absent_runs(lo, n) {
            let cost = varint_len(a - prev) + varint_len(b - a);
            if size + cost > MAX_STATUS_BODY || runs.len() == usize::from(u16::MAX) {
                runs_hi = a;
                break;
            }
            size += cost;
            runs.push((a, b));
            prev = b;
        }
        let bitmap_hi = lo.saturating_add(bitmap_frames).min(n);
        let hi = if runs_hi >= bitmap_hi {
            runs_hi
        } else {
            runs.clear();
            runs.extend(received.absent_runs(lo, bitmap_hi));
            bitmap_hi
        };
        parts.push(Status { session, pass, kind: StatusKind::Nack, lo, hi, missing: runs });
        lo = hi;
    }
    parts
}

impl Message {
    /// Appends the encoding of this message. Frames and blocks are built
    /// without copying the data with [`encode_frame`] and [`encode_block`].
    pub fn encode(&self, out: &mut impl BufMut) {
        match self {
            Message::Announce(a) => {
                out.put_u8(TAG_ANNOUNCE);
                out.put_u64_le(a.session.0);
                out.put_u64_le(a.assignment.0);
                out.put_u64_le(a.size);
                out.put_u32_le(a.frame_size);
                out.put_u32_le(a.frame_count);
                out.put_u64_le(a.rate);
                out.put_slice(&a.hash);
                a.targets.encode(out);
            }
            Message::Frame(f) => encode_frame(out, f.session, f.pass, f.seq, &f.payload),
            Message::EndOfPass { session, pass, poll } => {
                out.put_u8(TAG_END_OF_PASS);
                out.put_u64_le(session.0);
                out.put_u32_le(*pass);
                poll.encode(out);
            }
            Message::Status(s) => {
                out.put_u8(TAG_STATUS);
                out.put_u64_le(s.session.0);
                out.put_u32_le(s.pass);
                out.put_u8(s.kind as u8);
                out.put_u32_le(s.lo);
                out.put_u32_le(s.hi);
                let mut runs = Vec::new();
                put_varint(&mut runs, s.missing.len() as u32);
                let mut prev = s.lo;
                for &(a, b) in &s.missing {
                    put_varint(&mut runs, a.saturating_sub(prev));
                    put_varint(&mut runs, b.saturating_sub(a));
                    prev = b;
                }
                let bits = (s.hi.saturating_sub(s.lo) as usize).div_ceil(8);
                if bits < runs.len() {
                    let mut map = vec![0u8; bits];
                    for &(a, b) in &s.missing {
                        for i in a..b {
                            let k = (i - s.lo) as usize;
                            map[k / 8] |= 1 << (k % 8);
                        }
                    }
                    out.put_u8(ENC_BITMAP);
                    out.put_u16_le(map.len() as u16);
                    out.put_slice(&map);
                } else {
                    out.put_u8(ENC_RUNS);
                    out.put_u16_le(runs.len() as u16);
                    out.put_slice(&runs);
                }
            }
            Message::Block(b) => encode_block(out, b, &b.data),
            Message::Query { session } => {
                out.put_u8(TAG_QUERY);
                out.put_u64_le(session.0);
            }
        }
    }

    /// The encoding as bytes.
    pub fn to_bytes(&self) -> Bytes {
        let mut v = Vec::new();
        self.encode(&mut v);
        Bytes::from(v)
    }

    /// Decodes one message from a whole datagram payload. Frame and block
    /// data are slices of `buf`, not copies.
    pub fn decode(buf: &Bytes) -> Result<Message, DecodeError> {
        let mut r = Reader::new(buf);
        let tag = r.u8("mctp tag")?;
        let session = SessionId(r.u64("session")?);
        let msg = match tag {
            TAG_ANNOUNCE => {
                let a = Announce {
                    session,
                    assignment: AssignmentSerial(r.u64("assignment")?),
                    size: r.u64("size")?,
                    frame_size: r.u32("frame size")?,
                    frame_count: r.u32("frame count")?,
                    rate: r.u64("rate")?,
                    hash: r.array("hash")?,
                    targets: Targets::decode(&mut r)?,
                };
                a.check()?;
                Message::Announce(a)
            }
            TAG_FRAME => {
                let pass = r.u32("pass")?;
                let seq = r.u32("seq")?;
                let len = r.u16("frame length")?;
                let crc = r.u32("crc32")?;
                let start = r.position();
                let payload = r.bytes(usize::from(len), "frame payload")?;
                if crc32fast::hash(payload) != crc {
                    return Err(DecodeError::Invalid { what: "frame crc32", value: u64::from(crc) });
                }
                r.finish("frame")?;
                Message::Frame(Frame {
                    session,
                    pass,
                    seq,
                    payload: buf.slice(start..start + usize::from(len)),
                })
            }
            TAG_END_OF_PASS => {
                Message::EndOfPass { session, pass: r.u32("pass")?, poll: Selector::decode(&mut r)? }
            }
            TAG_STATUS => {
                let pass = r.u32("pass")?;
                let kind = StatusKind::from_u8(r.u8("status kind")?)?;
                let lo = r.u32("lo")?;
                let hi = r.u32("hi")?;
                if hi < lo {
                    return Err(DecodeError::Invalid { what: "status range", value: u64::from(hi) });
                }
                let enc = r.u8("encoding")?;
                let body = r.bytes_u16("missing list", MAX_STATUS_BODY)?;
                let missing = decode_missing(enc, body, lo, hi)?;
                Message::Status(Status { session, pass, kind, lo, hi, missing })
            }
            TAG_BLOCK => {
                let assignment = AssignmentSerial(r.u64("assignment")?);
                let hash = r.array("hash")?;
                let pass = r.u32("pass")?;
                let poll = Selector::decode(&mut r)?;
                let targets = Targets::decode(&mut r)?;
                let len = r.u32("block length")? as usize;
                let start = r.position();
                r.bytes(len, "block data")?;
                r.finish("block")?;
                Message::Block(Block {
                    session,
                    assignment,
                    hash,
                    pass,
                    poll,
                    targets,
                    data: buf.slice(start..start + len),
                })
            }
            TAG_QUERY => Message::Query { session },
            other => return Err(DecodeError::Invalid { what: "mctp tag", value: u64::from(other) }),
        };
        r.finish("mctp message")?;
        Ok(msg)
    }
}

fn decode_missing(enc: u8, body: &[u8], lo: u32, hi: u32) -> Result<Vec<(u32, u32)>, DecodeError> {
    let mut out = Vec::new();
    match enc {
        ENC_RUNS => {
            let mut r = Reader::new(body);
            let count = get_varint(&mut r)?;
            // Each run takes at least two bytes.
            if count as usize > body.len() / 2 {
                return Err(DecodeError::TooLong {
                    what: "missing runs",
                    len: u64::from(count),
                    max: (body.len() / 2) as u64,
                });
            }
            let mut prev = lo;
            for _ in 0..count {
                let a = prev.checked_add(get_varint(&mut r)?);
                let len = get_varint(&mut r)?;
                let b = a.and_then(|a| a.checked_add(len));
                match (a, b) {
                    (Some(a), Some(b)) if len > 0 && b <= hi && (a > prev || out.is_empty()) => {
                        out.push((a, b));
                        prev = b;
                    }
                    _ => return Err(DecodeError::Invalid { what: "missing run", value: u64::from(len) }),
                }
            }
            r.finish("missing runs")?;
        }
        ENC_BITMAP => {
            let span = hi - lo;
            if body.len() != (span as usize).div_ceil(8) {
                return Err(DecodeError::Invalid { what: "bitmap length", value: body.len() as u64 });
            }
            let mut run: Option<u32> = None;
            for k in 0..span {
                let bit = body[(k / 8) as usize] & (1 << (k % 8)) != 0;
                match (bit, run) {
                    (true, None) => run = Some(lo + k),
                    (false, Some(a)) => {
                        out.push((a, lo + k));
                        run = None;
                    }
                    _ => {}
                }
            }
            if let Some(a) = run {
                out.push((a, hi));
            }
        }
        _ => return Err(DecodeError::Invalid { what: "missing list encoding", value: u64::from(enc) }),
    }
    Ok(out)
}

/// Appends a frame built from its header fields and `payload`.
pub fn encode_frame(out: &mut impl BufMut, session: SessionId, pass: u32, seq: u32, payload: &[u8]) {
    out.put_slice(&frame_header(session, pass, seq, payload));
    out.put_slice(payload);
}

/// The header of a frame carrying `payload` (its length and CRC32 included),
/// for a driver that lays frames out itself: header then payload are
/// exactly what [`encode_frame`] appends.
pub fn frame_header(session: SessionId, pass: u32, seq: u32, payload: &[u8]) -> [u8; FRAME_HEADER_LEN] {
    let mut h = [0u8; FRAME_HEADER_LEN];
    h[0] = TAG_FRAME;
    h[1..9].copy_from_slice(&session.0.to_le_bytes());
    h[9..13].copy_from_slice(&pass.to_le_bytes());
    h[13..17].copy_from_slice(&seq.to_le_bytes());
    // Frame sizes are bounded by MAX_FRAME_SIZE < 65536.
    h[17..19].copy_from_slice(&(payload.len() as u16).to_le_bytes());
    h[19..23].copy_from_slice(&crc32fast::hash(payload).to_le_bytes());
    h
}

/// Appends a block with the header fields of `b` and the data `data`
/// (`b.data` is ignored, so a driver can pass an empty `Bytes` there).
pub fn encode_block(out: &mut impl BufMut, b: &Block, data: &[u8]) {
    out.put_u8(TAG_BLOCK);
    out.put_u64_le(b.session.0);
    out.put_u64_le(b.assignment.0);
    out.put_slice(&b.hash);
    out.put_u32_le(b.pass);
    b.poll.encode(out);
    b.targets.encode(out);
    out.put_u32_le(data.len() as u32);
    out.put_slice(data);
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn targets(ids: &[u64]) -> Targets {
        Targets::new(ids.iter().copied().map(NodeId)).unwrap()
    }

    fn round_trip(m: &Message) {
        let bytes = m.to_bytes();
        assert_eq!(&Message::decode(&bytes).unwrap(), m);
        for cut in 0..bytes.len() {
            assert!(Message::decode(&bytes.slice(..cut)).is_err(), "{m:?} cut at {cut}");
        }
    }

    #[test]
    fn default_frame_fills_the_mtu_exactly() {
        assert_eq!(wire::HEADER_LEN + wire::TAG_LEN, 46);
        assert_eq!(FRAME_HEADER_LEN, 23);
        assert_eq!(DEFAULT_FRAME_SIZE, 1500 - 20 - 8 - 46 - 23);
        assert_eq!(DEFAULT_FRAME_SIZE, 1403);
        let mut v = Vec::new();
        encode_frame(&mut v, SessionId(1), 1, 2, &[0u8; DEFAULT_FRAME_SIZE]);
        assert_eq!(v.len() + wire::HEADER_LEN + wire::TAG_LEN + IP_UDP_OVERHEAD, 1500);
    }

    #[test]
    fn every_message_round_trips_and_every_cut_is_an_error() {
        let a = Announce {
            session: SessionId(7),
            assignment: AssignmentSerial(3),
            size: 10_000,
            frame_size: 1403,
            frame_count: 8,
            rate: 1 << 20,
            hash: [9; 32],
            targets: targets(&[1, 2, 5, 300, u64::MAX]),
        };
        round_trip(&Message::Announce(a.clone()));
        round_trip(&Message::Announce(Announce { targets: Targets::default(), ..a }));
        round_trip(&Message::Frame(Frame {
            session: SessionId(7),
            pass: 2,
            seq: 5,
            payload: Bytes::from_static(b"hello"),
        }));
        for poll in
            [Selector::All, Selector::Only(vec![NodeId(1), NodeId(2)]), Selector::AllExcept(vec![NodeId(3)])]
        {
            round_trip(&Message::EndOfPass { session: SessionId(1), pass: 4, poll: poll.clone() });
            let b = Block {
                session: SessionId(2),
                assignment: AssignmentSerial(5),
                hash: [1; 32],
                pass: 1,
                poll,
                targets: targets(&[0, 7]),
                data: Bytes::from_static(b"small assignment"),
            };
            assert_eq!(Message::Block(b.clone()).to_bytes().len(), b.encoded_len(b.data.len()));
            round_trip(&Message::Block(b));
        }
        round_trip(&Message::Query { session: SessionId(11) });
        for missing in [vec![], vec![(0, 3), (10, 11), (4000, 5000)]] {
            round_trip(&Message::Status(Status {
                session: SessionId(7),
                pass: 1,
                kind: StatusKind::Nack,
                lo: 0,
                hi: 5000,
                missing,
            }));
        }
    }

    #[test]
    fn a_corrupted_frame_fails_its_crc() {
        let mut v = Vec::new();
        encode_frame(&mut v, SessionId(1), 1, 0, b"payload bytes");
        let n = v.len();
        v[n - 1] ^= 1;
        assert!(matches!(
            Message::decode(&Bytes::from(v)),
            Err(DecodeError::Invalid { what: "frame crc32", .. })
        ));
    }

    #[test]
    fn selectors_carry_the_shorter_list() {
        let ids = |r: std::ops::Range<u64>| r.map(NodeId).collect::<Vec<_>>();
        assert_eq!(Selector::for_lists(&ids(0..2), &ids(2..10)), [Selector::Only(ids(0..2))]);
        assert_eq!(Selector::for_lists(&ids(0..8), &ids(8..10)), [Selector::AllExcept(ids(8..10))]);
        assert_eq!(Selector::for_lists(&ids(0..8), &[]), [Selector::All]);
        let many = Selector::for_lists(&ids(0..400), &ids(400..800));
        assert_eq!(many.len(), 3);
        assert!(many.iter().all(|s| matches!(s, Selector::Only(v) if v.len() <= MAX_SELECTOR_NODES)));
    }

    /// DESIGN §4 "Only targets": a segment's worth of dense ids keeps an
    /// announce within one MTU; the most targets, however sparse, within
    /// one datagram; one more is refused when built and when decoded.
    #[test]
    fn only_targets_lists_are_compact_and_strictly_bounded() {
        let dense = Targets::new((1..=MAX_SELECTOR_NODES as u64).map(NodeId)).unwrap();
        let a = Announce {
            session: SessionId(1),
            assignment: AssignmentSerial(2),
            size: 1 << 30,
            frame_size: DEFAULT_FRAME_SIZE as u32,
            frame_count: frame_count(1 << 30, DEFAULT_FRAME_SIZE as u32).unwrap(),
            rate: 0,
            hash: [0; 32],
            targets: dense,
        };
        assert!(Message::Announce(a.clone()).to_bytes().len() <= MTU_PAYLOAD);
        let sparse =
            Targets::new((0..MAX_TARGETS as u64).map(|i| NodeId(u64::MAX - i * (u64::MAX / 4096)))).unwrap();
        assert_eq!(sparse.len(), MAX_TARGETS);
        assert!(sparse.encoded_len() <= MAX_TARGETS_LEN);
        let big = Message::Announce(Announce { targets: sparse.clone(), ..a });
        let bytes = big.to_bytes();
        assert!(bytes.len() <= wire::MAX_PAYLOAD, "{} bytes", bytes.len());
        assert_eq!(Message::decode(&bytes).unwrap(), big);
        assert!(Block::max_len(&sparse, 0) <= wire::MAX_PAYLOAD);
        // One more than the bound: refused both ways, before any allocation.
        assert!(matches!(
            Targets::new((0..=MAX_TARGETS as u64).map(NodeId)),
            Err(DecodeError::TooLong { what: "targets", .. })
        ));
        let mut v = Vec::new();
        put_varint(&mut v, MAX_TARGETS as u32 + 1);
        v.extend(std::iter::repeat_n(1u8, MAX_TARGETS + 1));
        assert!(matches!(
            Targets::decode(&mut Reader::new(&v)),
            Err(DecodeError::TooLong { what: "targets", .. })
        ));
        // A count the bytes cannot hold is refused before allocating it.
        let mut v = Vec::new();
        put_varint(&mut v, 4000);
        assert!(Targets::decode(&mut Reader::new(&v)).is_err());
        // Repeats (a zero gap) and overflowing gaps are invalid.
        for bad in [vec![2u8, 5, 0], vec![2, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01, 1]] {
            assert!(Targets::decode(&mut Reader::new(&bad)).is_err(), "{bad:?}");
        }
    }

    proptest! {
        #[test]
        fn targets_round_trip_and_every_cut_is_an_error(ids in proptest::collection::vec(any::<u64>(), 0..300)) {
            let t = Targets::new(ids.iter().copied().map(NodeId)).unwrap();
            let mut v = Vec::new();
            t.encode(&mut v);
            prop_assert_eq!(v.len(), t.encoded_len());
            let mut r = Reader::new(&v);
            prop_assert_eq!(&Targets::decode(&mut r).unwrap(), &t);
            prop_assert_eq!(r.remaining(), 0);
            for id in &ids {
                prop_assert!(t.contains(NodeId(*id)));
            }
            for cut in 0..v.len() {
                prop_assert!(Targets::decode(&mut Reader::new(&v[..cut])).is_err());
            }
        }

        #[test]
        fn random_bytes_as_targets_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
            if let Ok(t) = Targets::decode(&mut Reader::new(&bytes)) {
                prop_assert!(t.len() <= MAX_TARGETS);
                prop_assert!(t.as_slice().windows(2).all(|w| w[0] < w[1]));
            }
        }

        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..1600)) {
            let _ = Message::decode(&Bytes::from(bytes));
        }

        #[test]
        fn random_bytes_after_a_valid_tag_never_panic(tag in 1u8..=6, bytes in proptest::collection::vec(any::<u8>(), 0..1600)) {
            let mut v = vec![tag];
            v.extend(bytes);
            let _ = Message::decode(&Bytes::from(v));
        }

        #[test]
        fn nack_reports_tile_the_frames_and_round_trip(
            n in 1u32..60_000,
            holes in proptest::collection::vec((0u32..60_000, 1u32..50), 0..3000),
        ) {
            let mut received = FrameSet::full(n);
            let mut missing = FrameSet::empty(n);
            for (a, len) in holes {
                missing.insert_range(a, a + len);
            }
            received.clear();
            for (a, b) in missing.absent_runs(0, n) {
                received.insert_range(a, b);
            }
            let parts = nack_reports(SessionId(1), 1, &received);
            let mut at = 0;
            let mut got = FrameSet::empty(n);
            for p in &parts {
                prop_assert_eq!(p.lo, at);
                at = p.hi;
                let bytes = Message::Status(p.clone()).to_bytes();
                prop_assert!(bytes.len() <= MTU_PAYLOAD, "{} bytes", bytes.len());
                let Message::Status(back) = Message::decode(&bytes).unwrap() else { panic!() };
                prop_assert_eq!(&back, p);
                for (a, b) in back.missing {
                    got.insert_range(a, b);
                }
            }
            prop_assert_eq!(at, n);
            prop_assert_eq!(got, missing);
        }
    }
}
