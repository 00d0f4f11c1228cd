//! Control-channel messages: the vocabulary of elections and membership.
//!
//! Every message travels as the payload of a [`wire`](super::wire) envelope on
//! [`Channel::Control`], so its sender is the envelope's authenticated
//! `sender` and is not repeated here. The payload is one tag byte followed by
//! the message's fields, little-endian, every length bounded:
//!
//! | tag | message | sent by | fields |
//! |---|---|---|---|
//! | 1 | [`ControlMsg::LeaderAlive`] | the group leader, every `la_interval` | priority, member-list version |
//! | 2 | [`ControlMsg::LeaderClaim`] | a candidate | priority |
//! | 3 | [`ControlMsg::Register`] | a member, to the leader | [`MemberInfo`] |
//! | 4 | [`ControlMsg::MemberList`] | the leader | version, member ids |
//! | 5 | [`ControlMsg::MemberAlive`] | a member | its leader, how long ago it heard it |
//! | 6 | [`ControlMsg::ChangeChannel`] | the leader | new multicast group and port |
//!
//! [`ControlCodec`] frames them with `tokio-util` on top of the datagram
//! envelope, and [`ControlGate`] is what a driver puts between its socket and
//! its election core: it seals outgoing messages with a sequence number and a
//! timestamp, and lets an incoming datagram through only if its tag verifies,
//! its timestamp is inside the window and its sequence number is new. Every
//! datagram it drops is counted by reason ([`RejectCounts`]), so forged or
//! replayed traffic is visible and never reaches the state machine.

// Sizes and counts here come from the network or the disk: no silent
// truncation (tests may build what they like).
#![cfg_attr(not(test), warn(clippy::cast_possible_truncation))]

use std::net::Ipv4Addr;

use bytes::{BufMut, Bytes, BytesMut};
use tokio_util::codec::{Decoder, Encoder};

use super::bytes::{DecodeError, Reader};
use super::ids::NodeId;
use super::paths::{SiteName, MAX_SITE_NAME};
use super::wire::{
    self, Channel, DatagramCodec, Envelope, OpeningKeys, RejectCounts, ReplayGuard, ReplayLimits, SealingKey,
    Sequencer, WireError,
};

/// Longest node name or HTTP address in a registration, in bytes.
pub const MAX_TEXT: usize = 255;
/// Most sites listed in one registration.
pub const MAX_SITES: usize = 256;
/// Most members in one member list (8 bytes each: 32 KiB, well inside a datagram).
pub const MAX_MEMBERS: usize = 4096;

/// A registration lists only sites whose name is a valid site name (at most
/// [`MAX_SITE_NAME`] bytes): the largest registration then fits a datagram,
/// which sites named up to [`MAX_TEXT`] bytes would not.
const _: () = assert!(1 + 3 * (2 + MAX_TEXT) + 2 + MAX_SITES * (2 + MAX_SITE_NAME + 8) <= wire::MAX_PAYLOAD);

/// The sites of `serials` a registration carries: those with a valid name,
/// at most [`MAX_SITES`].
fn listed(serials: &[SiteSerial]) -> impl Iterator<Item = &SiteSerial> {
    serials.iter().filter(|s| SiteName::valid(&s.site)).take(MAX_SITES)
}

/// A candidate's voting priority as it travels on the wire. The node id, the
/// last tie-breaker, is the envelope's sender. Two values travel because the
/// cluster may run with or without preemption (see `election`): `base` is what
/// configuration alone gives, `full` adds what the node's state earns it
/// (recently deposed leader, members known).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Priority {
    /// From configuration only: admin preference, resources, reliability, freshness.
    pub base: u32,
    /// `base` plus the state bonuses.
    pub full: u32,
}

/// One site's live release on a member, as reported at registration.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SiteSerial {
    /// The hosted site's name.
    pub site: String,
    /// The serial of its live release.
    pub serial: u64,
}

/// What a member tells its leader when it registers.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct MemberInfo {
    /// The member's node HTTP address (`host:port`), for the leader and the CCM.
    pub http: String,
    /// The member's data-channel address (`host:port`), where the leader
    /// sends assignments in unicast fan-out; empty when the data channel is
    /// multicast.
    pub data: String,
    /// A human name for logs and the UI.
    pub name: String,
    /// The live serial of every site the member holds.
    pub serials: Vec<SiteSerial>,
}

/// A control-channel message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ControlMsg {
    /// "I am the leader and alive" (LA), multicast every `la_interval`.
    LeaderAlive {
        /// The leader's priority now.
        priority: Priority,
        /// Version of the leader's member list, so a member that missed a
        /// list notices and asks again.
        list_version: u64,
    },
    /// "I claim the leadership" (LC), with the claimant's priority.
    LeaderClaim {
        /// The claimant's priority.
        priority: Priority,
    },
    /// A member registers with its leader.
    Register(MemberInfo),
    /// The members the leader believes are registered.
    MemberList {
        /// Grows with every change; unique to the leader that sends it.
        version: u64,
        /// Registered members, ascending.
        members: Vec<NodeId>,
    },
    /// A member's periodic proof of life. It also says when the member last
    /// heard its leader, so that a member which missed a few LAs learns from
    /// its peers that the leader is still there instead of starting an election.
    MemberAlive {
        /// The leader the member follows.
        leader: NodeId,
        /// Milliseconds since the member last heard an LA from it.
        heard_ago_ms: u32,
    },
    /// The leader moves the segment to another control channel.
    ChangeChannel {
        /// New multicast group.
        group: Ipv4Addr,
        /// New port.
        port: u16,
    },
}

const TAG_LA: u8 = 1;
const TAG_LC: u8 = 2;
const TAG_REGISTER: u8 = 3;
const TAG_LIST: u8 = 4;
const TAG_ALIVE: u8 = 5;
const TAG_CHANNEL: u8 = 6;

/// `s` cut to at most [`MAX_TEXT`] bytes, at a char boundary.
fn cut(s: &str) -> &str {
    let mut end = s.len().min(MAX_TEXT);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

fn put_text(out: &mut BytesMut, s: &str) {
    // Callers bound their text ([`MemberInfo::bounded`]); cut rather than
    // emit a length the decoder would refuse.
    let s = cut(s);
    out.put_u16_le(u16::try_from(s.len()).unwrap_or(u16::MAX));
    out.put_slice(s.as_bytes());
}

fn put_priority(out: &mut BytesMut, p: Priority) {
    out.put_u32_le(p.base);
    out.put_u32_le(p.full);
}

fn read_priority(r: &mut Reader<'_>) -> Result<Priority, DecodeError> {
    Ok(Priority { base: r.u32("priority base")?, full: r.u32("priority full")? })
}

fn read_count(r: &mut Reader<'_>, what: &'static str, max: usize) -> Result<usize, DecodeError> {
    let n = r.u16(what)?;
    if usize::from(n) > max {
        return Err(DecodeError::TooLong { what, len: u64::from(n), max: max as u64 });
    }
    Ok(usize::from(n))
}

impl MemberInfo {
    /// A copy cut to the wire's bounds (text to [`MAX_TEXT`] bytes, at most
    /// [`MAX_SITES`] sites, only valid site names), so that what is sent is
    /// what is received.
    pub fn bounded(&self) -> MemberInfo {
        MemberInfo {
            http: cut(&self.http).to_string(),
            data: cut(&self.data).to_string(),
            name: cut(&self.name).to_string(),
            serials: listed(&self.serials).cloned().collect(),
        }
    }
}

impl ControlMsg {
    /// A short name for logs and counters.
    pub fn kind(&self) -> &'static str {
        match self {
            ControlMsg::LeaderAlive { .. } => "leader_alive",
            ControlMsg::LeaderClaim { .. } => "leader_claim",
            ControlMsg::Register(_) => "register",
            ControlMsg::MemberList { .. } => "member_list",
            ControlMsg::MemberAlive { .. } => "member_alive",
            ControlMsg::ChangeChannel { .. } => "change_channel",
        }
    }

    /// Appends the payload encoding to `out`. Lists longer than the bounds
    /// are cut to them (the state machine never builds such lists).
    pub fn encode(&self, out: &mut BytesMut) {
        match self {
            ControlMsg::LeaderAlive { priority, list_version } => {
                out.put_u8(TAG_LA);
                put_priority(out, *priority);
                out.put_u64_le(*list_version);
            }
            ControlMsg::LeaderClaim { priority } => {
                out.put_u8(TAG_LC);
                put_priority(out, *priority);
            }
            ControlMsg::Register(info) => {
                out.put_u8(TAG_REGISTER);
                put_text(out, &info.http);
                put_text(out, &info.data);
                put_text(out, &info.name);
                let sites: Vec<&SiteSerial> = listed(&info.serials).collect();
                out.put_u16_le(u16::try_from(sites.len()).unwrap_or(u16::MAX));
                for s in sites {
                    put_text(out, &s.site);
                    out.put_u64_le(s.serial);
                }
            }
            ControlMsg::MemberList { version, members } => {
                out.put_u8(TAG_LIST);
                out.put_u64_le(*version);
                let members = &members[..members.len().min(MAX_MEMBERS)];
                out.put_u16_le(u16::try_from(members.len()).unwrap_or(u16::MAX));
                for m in members {
                    out.put_u64_le(m.0);
                }
            }
            ControlMsg::MemberAlive { leader, heard_ago_ms } => {
                out.put_u8(TAG_ALIVE);
                out.put_u64_le(leader.0);
                out.put_u32_le(*heard_ago_ms);
            }
            ControlMsg::ChangeChannel { group, port } => {
                out.put_u8(TAG_CHANNEL);
                out.put_slice(&group.octets());
                out.put_u16_le(*port);
            }
        }
    }

    /// The payload encoding as bytes.
    pub fn to_bytes(&self) -> Bytes {
        let mut out = BytesMut::new();
        self.encode(&mut out);
        out.freeze()
    }

    /// Decodes a whole payload. Never panics; every length is checked against
    /// its bound before anything is allocated, and trailing bytes are an error.
    pub fn decode(payload: &[u8]) -> Result<ControlMsg, DecodeError> {
        let mut r = Reader::new(payload);
        let msg = match r.u8("message tag")? {
            TAG_LA => ControlMsg::LeaderAlive {
                priority: read_priority(&mut r)?,
                list_version: r.u64("list version")?,
            },
            TAG_LC => ControlMsg::LeaderClaim { priority: read_priority(&mut r)? },
            TAG_REGISTER => {
                let http = r.str_u16("http address", MAX_TEXT)?.to_string();
                let data = r.str_u16("data address", MAX_TEXT)?.to_string();
                let name = r.str_u16("name", MAX_TEXT)?.to_string();
                let n = read_count(&mut r, "site count", MAX_SITES)?;
                let mut serials = Vec::with_capacity(n);
                for _ in 0..n {
                    serials.push(SiteSerial {
                        site: r.str_u16("site", MAX_TEXT)?.to_string(),
                        serial: r.u64("serial")?,
                    });
                }
                ControlMsg::Register(MemberInfo { http, data, name, serials })
            }
            TAG_LIST => {
                let version = r.u64("list version")?;
                let n = read_count(&mut r, "member count", MAX_MEMBERS)?;
                let mut members = Vec::with_capacity(n);
                for _ in 0..n {
                    members.push(NodeId(r.u64("member id")?));
                }
                ControlMsg::MemberList { version, members }
            }
            TAG_ALIVE => ControlMsg::MemberAlive {
                leader: NodeId(r.u64("leader id")?),
                heard_ago_ms: r.u32("heard ago")?,
            },
            TAG_CHANNEL => ControlMsg::ChangeChannel {
                group: Ipv4Addr::from(r.array::<4>("group")?),
                port: r.u16("port")?,
            },
            tag => return Err(DecodeError::Invalid { what: "message tag", value: u64::from(tag) }),
        };
        r.finish("control message")?;
        Ok(msg)
    }
}

/// A control datagram as [`ControlCodec`] hands it over: authenticated and
/// parsed, or the reason it was not.
pub type ReceivedControl = Result<(Envelope, ControlMsg), WireError>;

/// `tokio-util` codec for the control channel: the datagram envelope
/// ([`DatagramCodec`]) around a [`ControlMsg`]. Decoding checks framing, tag
/// and payload; the replay check needs the clock and is [`ControlGate`]'s.
#[derive(Debug, Clone)]
pub struct ControlCodec {
    inner: DatagramCodec,
}

impl ControlCodec {
    /// A codec keyed from the cluster secret.
    pub fn new(secret: &[u8]) -> Self {
        ControlCodec { inner: DatagramCodec::new(secret, Channel::Control) }
    }
}

impl Decoder for ControlCodec {
    type Item = ReceivedControl;
    type Error = std::io::Error;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<ReceivedControl>, std::io::Error> {
        Ok(self
            .inner
            .decode(src)?
            .map(|received| received.and_then(|(env, payload)| Ok((env, ControlMsg::decode(&payload)?)))))
    }
}

impl Encoder<(Envelope, ControlMsg)> for ControlCodec {
    type Error = std::io::Error;

    fn encode(
        &mut self,
        (env, msg): (Envelope, ControlMsg),
        dst: &mut BytesMut,
    ) -> Result<(), std::io::Error> {
        self.inner.encode((env, msg.to_bytes()), dst)
    }
}

/// The authentication gate between a socket and an election core (sans-IO:
/// the driver passes its wall clock in). Outgoing: numbers, timestamps and
/// seals. Incoming: lets through only datagrams whose tag verifies and which
/// pass the replay window, and counts every other one by reason.
#[derive(Debug)]
pub struct ControlGate {
    me: NodeId,
    sealing: SealingKey,
    opening: OpeningKeys,
    sequencer: Sequencer,
    guard: ReplayGuard,
    rejected: RejectCounts,
    own: u64,
    /// Duplicate ids seen and not yet taken by the driver (each pair once).
    duplicates: Vec<WireError>,
    reported: std::collections::HashSet<(NodeId, std::net::SocketAddr)>,
}

impl ControlGate {
    /// A gate for node `me`. `seq_start` should be the start-up time in Unix
    /// microseconds, so that a restarted node numbers above its old datagrams
    /// (the numbers are nonces: see [`wire`]). One gate per node.
    pub fn new(secret: &[u8], me: NodeId, seq_start: u64, limits: ReplayLimits) -> Self {
        ControlGate {
            me,
            sealing: SealingKey::new(secret, Channel::Control, me),
            opening: OpeningKeys::new(secret, Channel::Control),
            sequencer: Sequencer::new(me, seq_start),
            guard: ReplayGuard::new(limits),
            rejected: RejectCounts::default(),
            own: 0,
            duplicates: Vec::new(),
            reported: std::collections::HashSet::new(),
        }
    }

    /// Refuses datagrams stamped before `floor_ms`: the driver's start-up
    /// time (see [`ReplayGuard::refuse_before`]).
    pub fn refuse_before(&mut self, floor_ms: u64) {
        self.guard.refuse_before(floor_ms);
    }

    /// Seals `msg` into a datagram stamped with `now_ms` (Unix milliseconds).
    pub fn seal(&mut self, now_ms: u64, msg: &ControlMsg) -> Bytes {
        let env = self.sequencer.next(Channel::Control, now_ms);
        let mut out = BytesMut::new();
        // Control messages are bounded far below MAX_PAYLOAD, so sealing cannot fail.
        if let Err(e) = wire::seal(&self.sealing, &env, &msg.to_bytes(), &mut out) {
            unreachable!("control message over the datagram limit: {e}");
        }
        out.freeze()
    }

    /// Decides on a datagram the codec decoded (or failed to). Returns the
    /// sender and message if it may reach the core; otherwise counts why not.
    /// The node's own datagrams (multicast loops back) are dropped silently.
    pub fn admit(&mut self, now_ms: u64, received: ReceivedControl) -> Option<(NodeId, ControlMsg)> {
        self.admit_from(now_ms, received, None)
    }

    /// [`ControlGate::admit`] for a datagram from `from`: a second node
    /// using a sender id another one holds is refused (see
    /// [`ReplayGuard::check_from`]) and, the first time for each address,
    /// kept for [`ControlGate::take_duplicates`].
    pub fn admit_from(
        &mut self,
        now_ms: u64,
        received: ReceivedControl,
        from: Option<std::net::SocketAddr>,
    ) -> Option<(NodeId, ControlMsg)> {
        let (env, msg) = match received {
            Ok(ok) => ok,
            Err(e) => {
                self.rejected.record(&e);
                return None;
            }
        };
        if env.sender == self.me {
            self.own += 1;
            return None;
        }
        if let Err(e) = self.guard.check_from(now_ms, &env, from) {
            self.rejected.record(&e);
            if let WireError::Duplicate { sender, other, .. } = e {
                // Bounded: at most this many pairs are remembered.
                if self.reported.len() < 1024 && self.reported.insert((sender, other)) {
                    self.duplicates.push(e);
                }
            }
            return None;
        }
        Some((env.sender, msg))
    }

    /// The duplicate ids seen since the last call (each id and address
    /// once), for the driver to log.
    pub fn take_duplicates(&mut self) -> Vec<WireError> {
        std::mem::take(&mut self.duplicates)
    }

    /// Opens a raw datagram (decode, authenticate, replay check) in one step.
    pub fn open(&mut self, now_ms: u64, datagram: &[u8]) -> Option<(NodeId, ControlMsg)> {
        // Opening decrypts in place: work on a copy (control datagrams are small).
        let mut datagram = datagram.to_vec();
        let received = wire::open(&mut self.opening, &mut datagram)
            .and_then(|(env, payload)| Ok((env, ControlMsg::decode(&datagram[payload])?)));
        self.admit(now_ms, received)
    }

    /// Datagrams dropped so far, by reason.
    pub fn rejected(&self) -> RejectCounts {
        self.rejected
    }

    /// The node's own datagrams seen (and ignored) so far.
    pub fn own_seen(&self) -> u64 {
        self.own
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const SECRET: &[u8] = b"cluster secret for control tests";

    fn samples() -> Vec<ControlMsg> {
        vec![
            ControlMsg::LeaderAlive { priority: Priority { base: 7, full: 900 }, list_version: 42 },
            ControlMsg::LeaderClaim { priority: Priority { base: u32::MAX, full: 0 } },
            ControlMsg::Register(MemberInfo {
                http: "10.0.0.7:7480".into(),
                data: "10.0.0.7:7401".into(),
                name: "web-7 ünïcode".into(),
                serials: vec![SiteSerial { site: "www".into(), serial: 17 }],
            }),
            ControlMsg::Register(MemberInfo::default()),
            ControlMsg::MemberList { version: 3, members: vec![NodeId(1), NodeId(5), NodeId(u64::MAX)] },
            ControlMsg::MemberAlive { leader: NodeId(5), heard_ago_ms: 120 },
            ControlMsg::ChangeChannel { group: Ipv4Addr::new(239, 1, 2, 3), port: 7400 },
        ]
    }

    #[test]
    fn every_message_round_trips_and_every_truncation_fails() {
        for msg in samples() {
            let bytes = msg.to_bytes();
            assert_eq!(ControlMsg::decode(&bytes).unwrap(), msg);
            for cut in 0..bytes.len() {
                assert!(ControlMsg::decode(&bytes[..cut]).is_err(), "{} cut at {cut} decoded", msg.kind());
            }
            let mut long = bytes.to_vec();
            long.push(0);
            assert!(matches!(ControlMsg::decode(&long), Err(DecodeError::Trailing { .. })));
        }
    }

    #[test]
    fn lengths_over_their_bounds_are_refused_before_allocating() {
        let mut list = BytesMut::new();
        list.put_u8(TAG_LIST);
        list.put_u64_le(1);
        list.put_u16_le(MAX_MEMBERS as u16 + 1);
        assert!(matches!(ControlMsg::decode(&list), Err(DecodeError::TooLong { what: "member count", .. })));
        let mut reg = BytesMut::new();
        reg.put_u8(TAG_REGISTER);
        reg.put_u16_le(MAX_TEXT as u16 + 1);
        assert!(matches!(ControlMsg::decode(&reg), Err(DecodeError::TooLong { .. })));
        assert!(matches!(ControlMsg::decode(&[99]), Err(DecodeError::Invalid { value: 99, .. })));
    }

    #[test]
    fn oversized_info_is_cut_to_what_decodes() {
        let info = MemberInfo {
            http: "é".repeat(200),
            data: String::new(),
            name: "n".repeat(1000),
            serials: vec![SiteSerial { site: "s".into(), serial: 1 }; MAX_SITES + 5],
        };
        let sent = ControlMsg::Register(info.bounded());
        let got = ControlMsg::decode(&sent.to_bytes()).unwrap();
        assert_eq!(got, sent);
        let ControlMsg::Register(got) = got else { unreachable!() };
        assert_eq!(got.name.len(), MAX_TEXT);
        assert_eq!(got.serials.len(), MAX_SITES);
    }

    #[test]
    fn the_largest_registration_seals_into_one_datagram() {
        // Directory names under the sites root can be any 255 bytes; only
        // valid site names travel, so even this registration fits.
        let mut serials: Vec<SiteSerial> = (0..MAX_SITES)
            .map(|i| SiteSerial { site: format!("{i:x}").repeat(255)[..255].into(), serial: 1 })
            .collect();
        serials.extend((0..MAX_SITES + 3).map(|i| SiteSerial { site: format!("{i:0>64}"), serial: 2 }));
        serials.push(SiteSerial { site: "../x".into(), serial: 3 });
        let info = MemberInfo {
            http: "h".repeat(MAX_TEXT),
            data: "d".repeat(MAX_TEXT),
            name: "n".repeat(MAX_TEXT),
            serials,
        };
        let msg = ControlMsg::Register(info.bounded());
        let ControlMsg::Register(b) = msg.clone() else { unreachable!() };
        assert_eq!(b.serials.len(), MAX_SITES);
        assert!(b.serials.iter().all(|s| s.serial == 2 && s.site.len() == MAX_SITE_NAME));
        let mut alice = ControlGate::new(SECRET, NodeId(1), 10, ReplayLimits::default());
        let mut bob = ControlGate::new(SECRET, NodeId(2), 10, ReplayLimits::default());
        let sealed = alice.seal(1_000_000, &msg);
        assert_eq!(bob.open(1_000_000, &sealed), Some((NodeId(1), msg)));
        // Encoding the unbounded info lists the same sites.
        let raw = ControlMsg::Register(info.clone());
        let ControlMsg::Register(got) = ControlMsg::decode(&raw.to_bytes()).unwrap() else { unreachable!() };
        assert_eq!(got.serials, b.serials);
    }

    #[test]
    fn gate_admits_fresh_datagrams_once_and_counts_every_rejection() {
        let now = 1_000_000;
        let mut alice = ControlGate::new(SECRET, NodeId(1), 10, ReplayLimits::default());
        let mut bob = ControlGate::new(SECRET, NodeId(2), 10, ReplayLimits::default());
        let mut mallory =
            ControlGate::new(b"not the cluster secret at all!!", NodeId(1), 10, ReplayLimits::default());
        let msg = samples().remove(0);
        let good = alice.seal(now, &msg);
        assert_eq!(bob.open(now, &good), Some((NodeId(1), msg.clone())));
        // Replayed: same sequence number.
        assert_eq!(bob.open(now, &good), None);
        // Forged: wrong key.
        assert_eq!(bob.open(now, &mallory.seal(now, &msg)), None);
        // Old and future timestamps.
        assert_eq!(bob.open(now, &alice.seal(now - 60_000, &msg)), None);
        assert_eq!(bob.open(now, &alice.seal(now + 60_000, &msg)), None);
        // Garbage and our own datagrams.
        assert_eq!(bob.open(now, b"CM\x01garbage"), None);
        let own = bob.seal(now, &msg);
        assert_eq!(bob.open(now, &own), None);
        let r = bob.rejected();
        assert_eq!((r.replayed, r.bad_tag, r.stale, r.from_future, r.malformed), (1, 1, 1, 1, 1));
        assert_eq!(r.total(), 5);
        assert_eq!(bob.own_seen(), 1);
        // A later datagram from alice still gets through.
        assert!(bob.open(now, &alice.seal(now, &msg)).is_some());
    }

    #[test]
    fn codec_frames_control_messages() {
        let mut codec = ControlCodec::new(SECRET);
        let env = Envelope { channel: Channel::Control, sender: NodeId(3), seq: 1, timestamp_ms: 5 };
        for msg in samples() {
            let mut buf = BytesMut::new();
            codec.encode((env, msg.clone()), &mut buf).unwrap();
            let got = codec.decode(&mut buf).unwrap().unwrap().unwrap();
            assert_eq!(got, (env, msg));
            assert!(codec.decode(&mut buf).unwrap().is_none());
        }
        // A valid envelope around a payload that is not a control message.
        let mut buf = BytesMut::new();
        DatagramCodec::new(SECRET, Channel::Control)
            .encode((env, Bytes::from_static(&[200, 1, 2])), &mut buf)
            .unwrap();
        assert!(matches!(codec.decode(&mut buf).unwrap().unwrap(), Err(WireError::Malformed(_))));
    }

    fn arb_msg() -> impl Strategy<Value = ControlMsg> {
        let prio = (any::<u32>(), any::<u32>()).prop_map(|(base, full)| Priority { base, full });
        let text = "[a-z0-9.:ü-]{0,40}";
        // Registrations carry valid site names only (see `listed`).
        let site = "[a-z0-9][a-z0-9._-]{0,40}";
        prop_oneof![
            (prio.clone(), any::<u64>())
                .prop_map(|(priority, list_version)| { ControlMsg::LeaderAlive { priority, list_version } }),
            prio.prop_map(|priority| ControlMsg::LeaderClaim { priority }),
            (text, text, text, proptest::collection::vec((site, any::<u64>()), 0..5)).prop_map(
                |(http, data, name, s)| ControlMsg::Register(MemberInfo {
                    http,
                    data,
                    name,
                    serials: s.into_iter().map(|(site, serial)| SiteSerial { site, serial }).collect(),
                })
            ),
            (any::<u64>(), proptest::collection::vec(any::<u64>(), 0..50)).prop_map(|(version, m)| {
                ControlMsg::MemberList { version, members: m.into_iter().map(NodeId).collect() }
            }),
            (any::<u64>(), any::<u32>())
                .prop_map(|(l, h)| ControlMsg::MemberAlive { leader: NodeId(l), heard_ago_ms: h }),
            (any::<[u8; 4]>(), any::<u16>())
                .prop_map(|(g, port)| ControlMsg::ChangeChannel { group: Ipv4Addr::from(g), port }),
        ]
    }

    proptest! {
        #[test]
        fn random_messages_round_trip(msg in arb_msg()) {
            prop_assert_eq!(ControlMsg::decode(&msg.to_bytes()).unwrap(), msg);
        }

        #[test]
        fn random_payloads_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
            let _ = ControlMsg::decode(&bytes);
        }

        #[test]
        fn mutated_messages_never_panic(msg in arb_msg(), at in any::<usize>(), byte in any::<u8>()) {
            let mut bytes = msg.to_bytes().to_vec();
            let i = at % bytes.len();
            bytes[i] = byte;
            let _ = ControlMsg::decode(&bytes);
        }

        #[test]
        fn random_datagrams_never_pass_the_gate(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
            let mut gate = ControlGate::new(SECRET, NodeId(1), 0, ReplayLimits::default());
            prop_assert!(gate.open(1_000, &bytes).is_none());
            prop_assert_eq!(gate.rejected().total(), 1);
        }
    }
}
