//! The sending side of MCTP: one group leader, one session at a time.

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use bytes::Bytes;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::protocol::ids::{AssignmentSerial, NodeId};
use crate::protocol::time::Time;
use crate::protocol::wire;

use super::frameset::FrameSet;
use super::msg::{
    encode_block, encode_frame, frame_count, Announce, Block, Message, Selector, SessionId, Status,
    StatusKind, Targets, FRAME_HEADER_LEN, IP_UDP_OVERHEAD,
};

/// Settings of a [`Sender`]. `config.rs` builds one from `[mctp]`.
#[derive(Debug, Clone, PartialEq)]
pub struct SenderConfig {
    /// Payload bytes per frame.
    pub frame_size: u32,
    /// Assignments up to this size go in one datagram, without a session.
    pub block_size: u64,
    /// Initial rate, bytes per second on the wire.
    pub rate: u64,
    /// The rate never goes below this.
    pub rate_min: u64,
    /// Nor above this.
    pub rate_max: u64,
    /// Added to the rate after a pass with little loss.
    pub rate_increase: u64,
    /// The rate is multiplied by this after a pass with heavy loss.
    pub rate_decrease: f64,
    /// Loss (missing frames reported / frames the members needed) above
    /// which a pass counts as heavy.
    pub nack_threshold: f64,
    /// Depth of the token bucket, as time at the current rate.
    pub burst: Duration,
    /// Time between announces before the first frame.
    pub announce_interval: Duration,
    /// Announces sent before the first frame (fewer if every target answers "complete").
    pub announce_count: u32,
    /// Time between announces during the session, for members that join late.
    pub announce_repeat: Duration,
    /// Members report at a random time within this window after a pass ends.
    pub report_window: Duration,
    /// Extra wait after the window for the last reports to arrive.
    pub report_grace: Duration,
    /// Re-polls of silent members per pass.
    pub report_retries: u32,
    /// Passes in a row a member may stay silent before it is left out.
    pub silent_passes: u32,
    /// Passes without a drop in missing frames before giving up on the laggards.
    pub stall_passes: u32,
    /// Fraction of targets that must hold the assignment for success.
    pub quorum: f64,
}

impl Default for SenderConfig {
    fn default() -> Self {
        SenderConfig {
            frame_size: super::DEFAULT_FRAME_SIZE as u32,
            block_size: 8 * 1024,
            rate: 25_000_000,
            rate_min: 1_000_000,
            rate_max: 100_000_000,
            rate_increase: 5_000_000,
            rate_decrease: 0.5,
            nack_threshold: 0.2,
            burst: Duration::from_millis(2),
            announce_interval: Duration::from_millis(100),
            announce_count: 3,
            announce_repeat: Duration::from_secs(1),
            report_window: Duration::from_millis(200),
            report_grace: Duration::from_millis(50),
            report_retries: 5,
            silent_passes: 2,
            stall_passes: 10,
            quorum: 1.0,
        }
    }
}

/// Polls with nothing to resend (members verifying their hash) allowed per
/// `stall_passes` before the sender gives up on them.
const IDLE_PASSES_PER_STALL: u32 = 10;

/// Where a datagram goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dest {
    /// Every member of the data channel: one multicast, or one unicast per
    /// registered member in fan-out mode.
    Group,
    /// One member, by unicast.
    Node(NodeId),
}

/// What to send. Data is not held by the core: a frame or block names the
/// bytes of the assignment it carries and the driver reads them from its
/// copy ([`Transmit::encode`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Payload {
    /// A control message, complete.
    Message(Message),
    /// Frame `seq` of the session: `len` bytes of the assignment at `offset`.
    Frame {
        /// The session.
        session: SessionId,
        /// Pass number.
        pass: u32,
        /// Frame number.
        seq: u32,
        /// Where the payload starts in the assignment.
        offset: u64,
        /// Payload length.
        len: usize,
    },
    /// The whole (small) assignment in one datagram; `block.data` is empty.
    Block {
        /// Header fields.
        block: Block,
        /// Assignment size.
        len: usize,
    },
}

/// One datagram to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transmit {
    /// Destination.
    pub dest: Dest,
    /// Contents.
    pub payload: Payload,
}

/// Random access to the assignment being sent (a file, or bytes in memory).
pub trait FrameSource {
    /// Fills `buf` from `offset`.
    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> std::io::Result<()>;
}

fn read_slice(src: &[u8], offset: u64, buf: &mut [u8]) -> std::io::Result<()> {
    let start = usize::try_from(offset).unwrap_or(usize::MAX);
    match src.get(start..start.saturating_add(buf.len())) {
        Some(src) => {
            buf.copy_from_slice(src);
            Ok(())
        }
        None => Err(std::io::ErrorKind::UnexpectedEof.into()),
    }
}

impl FrameSource for [u8] {
    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> std::io::Result<()> {
        read_slice(self, offset, buf)
    }
}

impl FrameSource for Bytes {
    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> std::io::Result<()> {
        read_slice(self, offset, buf)
    }
}

impl FrameSource for Vec<u8> {
    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> std::io::Result<()> {
        read_slice(self, offset, buf)
    }
}

impl Transmit {
    /// Appends the MCTP payload of this datagram (to be sealed in an
    /// envelope), reading frame data from `source`.
    pub fn encode(&self, source: &mut dyn FrameSource, out: &mut Vec<u8>) -> std::io::Result<()> {
        match &self.payload {
            Payload::Message(m) => m.encode(out),
            Payload::Frame { session, pass, seq, offset, len } => {
                // Read the payload in place, then fill in its CRC: no copy.
                let start = out.len();
                encode_frame(out, *session, *pass, *seq, &[]);
                let header = out.len();
                out.resize(header + len, 0);
                source.read_at(*offset, &mut out[header..])?;
                let crc = crc32fast::hash(&out[header..]);
                out[start + 17..start + 19].copy_from_slice(&(*len as u16).to_le_bytes());
                out[start + 19..start + 23].copy_from_slice(&crc.to_le_bytes());
            }
            Payload::Block { block, len } => {
                let mut data = vec![0u8; *len];
                source.read_at(0, &mut data)?;
                encode_block(out, block, &data);
            }
        }
        Ok(())
    }

    /// Bytes this datagram takes on the wire (IP, UDP, envelope and payload).
    pub fn wire_len(&self) -> usize {
        let body = match &self.payload {
            Payload::Message(m) => m.to_bytes().len(),
            Payload::Frame { len, .. } => FRAME_HEADER_LEN + len,
            Payload::Block { block, len } => block.encoded_len(*len),
        };
        body + wire::HEADER_LEN + wire::TAG_LEN + IP_UDP_OVERHEAD
    }
}

/// How a target ended a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TargetState {
    /// Still receiving.
    Active,
    /// Acknowledged every frame with a verified hash.
    Acked,
    /// Held the assignment before the session.
    AlreadyHad,
    /// Reported a failure (hash or disk).
    Failed,
    /// Did not report for `silent_passes` passes; left out.
    Silent,
}

#[derive(Debug, Clone)]
struct Target {
    state: TargetState,
    /// Parts of this pass's report received: `lo -> (hi, missing frames)`.
    parts: BTreeMap<u32, (u32, u32)>,
    reported: bool,
    silent_streak: u32,
    /// Missing frames at the start of the pass (from the last report).
    needed: u32,
    /// Missing frames in the last complete report.
    missing: u32,
}

/// Why the sender stopped: every target is accounted for, or no progress.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// The session.
    pub session: SessionId,
    /// The assignment.
    pub assignment: AssignmentSerial,
    /// True when acked + already-had targets reach the quorum.
    pub completed: bool,
    /// True when the sender stopped for lack of progress rather than because
    /// every target was accounted for.
    pub gave_up: bool,
    /// Passes sent.
    pub passes: u32,
    /// Frames in the assignment.
    pub frames_needed: u32,
    /// Frames (or blocks) sent, all passes together.
    pub frames_sent: u64,
    /// Targets that acknowledged the whole assignment.
    pub acked: Vec<NodeId>,
    /// Targets that already held it.
    pub already_had: Vec<NodeId>,
    /// Targets that reported a failure.
    pub failed: Vec<NodeId>,
    /// Targets still missing frames when the sender gave up, with the count.
    pub laggards: Vec<(NodeId, u32)>,
    /// Targets that stopped answering.
    pub silent: Vec<NodeId>,
}

/// What the sender tells its driver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SenderEvent {
    /// A session began.
    Started {
        /// The session.
        session: SessionId,
        /// The assignment.
        assignment: AssignmentSerial,
        /// Its size.
        size: u64,
        /// Its frames (1 for a block).
        frames: u32,
        /// Targets.
        targets: usize,
    },
    /// A pass ended and its reports are in.
    PassEnded {
        /// The session.
        session: SessionId,
        /// The pass.
        pass: u32,
        /// Frames sent in it.
        sent: u32,
        /// Frames still missing at some target (the next pass's size).
        missing: u32,
        /// Targets still receiving.
        active: usize,
        /// The rate for the next pass.
        rate: u64,
    },
    /// The session is over.
    Finished(Outcome),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Announcing,
    Sending,
    Collecting,
}

/// The sender's timers, one slot each in a table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Timer {
    /// Next announce before the first frame.
    Announce = 0,
    /// Tokens for the next frame.
    Pace = 1,
    /// Reports of this pass are due.
    Collect = 2,
    /// Next announce during the session.
    Reannounce = 3,
}

const TIMERS: [Timer; 4] = [Timer::Announce, Timer::Pace, Timer::Collect, Timer::Reannounce];

#[derive(Debug)]
struct Session {
    announce: Announce,
    small: bool,
    targets: BTreeMap<NodeId, Target>,
    phase: Phase,
    pass: u32,
    to_send: FrameSet,
    cursor: u32,
    sent_in_pass: u32,
    union: FrameSet,
    frames_sent: u64,
    best_missing: u32,
    stall: u32,
    idle_passes: u32,
    announces: u32,
    retries: u32,
    timers: [Option<Time>; 4],
}

#[derive(Debug)]
struct Job {
    assignment: AssignmentSerial,
    size: u64,
    hash: [u8; 32],
    targets: Vec<NodeId>,
}

/// The MCTP sender core (sans-IO).
///
/// Call order, as in quinn-proto: feed inputs with [`Sender::send_assignment`],
/// [`Sender::handle_datagram`] and [`Sender::handle_timeout`] (when
/// [`Sender::poll_timeout`]'s time has come); then drain
/// [`Sender::poll_transmit`] until `None`, drain [`Sender::poll_event`], and
/// re-arm the one timer from [`Sender::poll_timeout`]. `poll_transmit` paces
/// frames with a token bucket: `None` with a pacing deadline in
/// `poll_timeout` means "call again then", not "done".
///
/// One session runs at a time; further assignments queue. A session: announce
/// (`announce_count` times, or until every target answers "complete"), pass 1
/// sends every frame, then an end-of-pass marker polls the targets, which
/// report after a random delay; targets whose report does not arrive are
/// polled again (`report_retries` times). Pass n + 1 sends exactly the union
/// of the frames the reports of pass n name, so each frame goes out once per
/// pass in which anyone still misses it.
#[derive(Debug)]
pub struct Sender {
    cfg: SenderConfig,
    rng: ChaCha8Rng,
    rate: u64,
    tokens: f64,
    refilled: Time,
    session: Option<Session>,
    queue: VecDeque<Job>,
    transmits: VecDeque<Transmit>,
    events: VecDeque<SenderEvent>,
}

impl Sender {
    /// A sender; `seed` drives session ids (drivers pass a random seed, simulations a fixed one).
    pub fn new(cfg: SenderConfig, seed: u64) -> Self {
        let rate = cfg.rate.clamp(cfg.rate_min, cfg.rate_max.max(cfg.rate_min));
        Sender {
            cfg,
            rng: ChaCha8Rng::seed_from_u64(seed),
            rate,
            tokens: 0.0,
            refilled: Time::ZERO,
            session: None,
            queue: VecDeque::new(),
            transmits: VecDeque::new(),
            events: VecDeque::new(),
        }
    }

    /// The current sending rate, bytes per second.
    pub fn rate(&self) -> u64 {
        self.rate
    }

    /// True when no session runs and none is queued.
    pub fn is_idle(&self) -> bool {
        self.session.is_none() && self.queue.is_empty()
    }

    /// Queues an assignment of `size` bytes with SHA-256 `hash` for
    /// `targets`; every announce and block of its session names them, and
    /// only their reports count. More than [`MAX_TARGETS`](super::msg::MAX_TARGETS)
    /// cannot be named: such a session ends at once, every target failed.
    pub fn send_assignment(
        &mut self,
        now: Time,
        assignment: AssignmentSerial,
        size: u64,
        hash: [u8; 32],
        targets: Vec<NodeId>,
    ) {
        self.queue.push_back(Job { assignment, size, hash, targets });
        if self.session.is_none() {
            self.start_next(now);
        }
    }

    /// The current session's announce, for a driver that piggy-backs it on
    /// `LeaderAlive`. Call [`Sender::announce_piggybacked`] after sending it.
    pub fn poll_announce(&self) -> Option<Announce> {
        self.session.as_ref().filter(|s| !s.small).map(|s| s.announce.clone())
    }

    /// The targets of the session in progress: a driver in unicast fan-out
    /// mode sends the session's datagrams for the group to them only.
    pub fn current_targets(&self) -> Option<&Targets> {
        self.session.as_ref().map(|s| &s.announce.targets)
    }

    /// The announce went out with a `LeaderAlive`: it counts as one sent.
    pub fn announce_piggybacked(&mut self, now: Time) {
        let cfg = &self.cfg;
        if let Some(s) = self.session.as_mut().filter(|s| !s.small) {
            if s.phase == Phase::Announcing {
                s.announces += 1;
            } else {
                s.timers[Timer::Reannounce as usize] = Some(now + cfg.announce_repeat);
            }
        }
    }

    fn start_next(&mut self, now: Time) {
        let Some(job) = self.queue.pop_front() else {
            return;
        };
        let (named, too_many) = match Targets::new(job.targets.iter().copied()) {
            Ok(t) => (t, false),
            Err(_) => (Targets::default(), true),
        };
        let small = job.size <= self.cfg.block_size
            && usize::try_from(job.size).is_ok_and(|size| Block::max_len(&named, size) <= wire::MAX_PAYLOAD);
        let frame_size = if small {
            u32::try_from(job.size.max(1)).unwrap_or(u32::MAX)
        } else {
            self.cfg.frame_size.max(1)
        };
        let frames = frame_count(job.size, frame_size).unwrap_or(u32::MAX);
        let announce = Announce {
            session: SessionId(self.rng.random()),
            assignment: job.assignment,
            size: job.size,
            frame_size,
            frame_count: frames,
            rate: self.rate,
            hash: job.hash,
            targets: named,
        };
        let targets = job
            .targets
            .iter()
            .map(|&n| {
                (
                    n,
                    Target {
                        state: TargetState::Active,
                        parts: BTreeMap::new(),
                        reported: false,
                        silent_streak: 0,
                        needed: frames,
                        missing: frames,
                    },
                )
            })
            .collect();
        self.events.push_back(SenderEvent::Started {
            session: announce.session,
            assignment: job.assignment,
            size: job.size,
            frames,
            targets: job.targets.len(),
        });
        let mut s = Session {
            announce,
            small,
            targets,
            phase: Phase::Announcing,
            pass: 0,
            to_send: FrameSet::empty(frames),
            cursor: 0,
            sent_in_pass: 0,
            union: FrameSet::empty(frames),
            frames_sent: 0,
            best_missing: u32::MAX,
            stall: 0,
            idle_passes: 0,
            announces: 0,
            retries: 0,
            timers: [None; 4],
        };
        if too_many {
            // The targets cannot be named on the wire: nobody is sent
            // anything, and every target is accounted failed.
            for t in s.targets.values_mut() {
                t.state = TargetState::Failed;
            }
            self.session = Some(s);
            return self.finish(now, true);
        }
        if small {
            s.union.insert(0);
            self.session = Some(s);
            self.begin_pass(now);
        } else {
            s.announces = 1;
            s.timers[Timer::Announce as usize] = Some(now + self.cfg.announce_interval);
            let announce = Message::Announce(s.announce.clone());
            self.transmits.push_back(Transmit { dest: Dest::Group, payload: Payload::Message(announce) });
            self.session = Some(s);
        }
        if self.session.as_ref().is_some_and(|s| s.targets.is_empty()) {
            self.finish(now, false);
        }
    }

    /// Starts the next pass with the frames in `union`.
    fn begin_pass(&mut self, now: Time) {
        let Some(s) = self.session.as_mut() else {
            return;
        };
        s.pass += 1;
        s.to_send = std::mem::replace(&mut s.union, FrameSet::empty(s.announce.frame_count));
        s.cursor = 0;
        s.sent_in_pass = 0;
        s.retries = 0;
        s.phase = Phase::Sending;
        s.timers[Timer::Collect as usize] = None;
        for t in s.targets.values_mut() {
            t.parts.clear();
            t.reported = false;
            t.needed = t.missing;
        }
        if s.small {
            self.send_block(now);
        } else if s.pass == 1 {
            s.timers[Timer::Reannounce as usize] = Some(now + self.cfg.announce_repeat);
        }
    }

    /// Sends the block of a small session, polling the targets still active;
    /// each copy is one pass.
    fn send_block(&mut self, now: Time) {
        let Some(s) = self.session.as_mut() else {
            return;
        };
        let poll = poll_selectors(&s.targets);
        let block = Block {
            session: s.announce.session,
            assignment: s.announce.assignment,
            hash: s.announce.hash,
            pass: s.pass,
            targets: s.announce.targets.clone(),
            // One selector fits a block; a longer poll asks everyone.
            poll: if poll.len() == 1 {
                poll.into_iter().next().unwrap_or(Selector::All)
            } else {
                Selector::All
            },
            data: Bytes::new(),
        };
        s.frames_sent += 1;
        s.sent_in_pass = 1;
        self.transmits.push_back(Transmit {
            dest: Dest::Group,
            payload: Payload::Block { block, len: s.announce.size as usize },
        });
        s.phase = Phase::Collecting;
        s.timers[Timer::Collect as usize] = Some(now + self.cfg.report_window + self.cfg.report_grace);
    }

    /// Feeds a datagram from `from` on the data channel.
    pub fn handle_datagram(&mut self, now: Time, from: NodeId, msg: Message) {
        let Some(s) = self.session.as_mut() else {
            return;
        };
        match msg {
            Message::Status(st) if st.session == s.announce.session => {
                self.handle_status(now, from, st);
            }
            Message::Query { session } if session == s.announce.session && !s.small => {
                self.transmits.push_back(Transmit {
                    dest: Dest::Node(from),
                    payload: Payload::Message(Message::Announce(s.announce.clone())),
                });
            }
            _ => {}
        }
    }

    fn handle_status(&mut self, now: Time, from: NodeId, st: Status) {
        let Some(s) = self.session.as_mut() else {
            return;
        };
        let n = s.announce.frame_count;
        let Some(t) = s.targets.get_mut(&from) else {
            return;
        };
        if t.state == TargetState::Silent {
            t.state = TargetState::Active;
            t.silent_streak = 0;
        }
        match st.kind {
            StatusKind::Complete if t.state == TargetState::Active => {
                t.state = TargetState::AlreadyHad;
                t.missing = 0;
            }
            StatusKind::Ack if t.state == TargetState::Active => {
                t.state = TargetState::Acked;
                t.missing = 0;
            }
            StatusKind::Failed if t.state == TargetState::Active => {
                t.state = TargetState::Failed;
            }
            StatusKind::Nack
                if t.state == TargetState::Active
                    && st.pass == s.pass
                    && s.phase == Phase::Collecting
                    && !t.reported =>
            {
                let missing =
                    st.missing.iter().fold(0u32, |acc, (a, b)| acc.saturating_add(b.saturating_sub(*a)));
                for &(a, b) in &st.missing {
                    s.union.insert_range(a, b);
                }
                t.parts.insert(st.lo, (st.hi.min(n), missing));
                // Complete when the parts tile 0..n.
                let mut at = 0;
                for (&lo, &(hi, _)) in &t.parts {
                    if lo > at {
                        break;
                    }
                    at = at.max(hi);
                }
                if at >= n {
                    t.reported = true;
                    t.silent_streak = 0;
                    t.missing = t.parts.values().fold(0u32, |acc, &(_, m)| acc.saturating_add(m));
                }
            }
            _ => {}
        }
        self.check_progress(now);
    }

    /// Ends the pass or the session when nothing more is awaited.
    fn check_progress(&mut self, now: Time) {
        let Some(s) = self.session.as_ref() else {
            return;
        };
        let active = s.targets.values().filter(|t| t.state == TargetState::Active);
        let mut waiting = false;
        let mut any_active = false;
        for t in active {
            any_active = true;
            waiting |= !t.reported;
        }
        if !any_active {
            self.finish(now, false);
        } else if s.phase == Phase::Collecting && !waiting {
            self.end_pass(now);
        }
    }

    fn end_pass(&mut self, now: Time) {
        let cfg = &self.cfg;
        let Some(s) = self.session.as_mut() else {
            return;
        };
        // Silent this pass: count it; too many in a row and the member is left out.
        for t in s.targets.values_mut() {
            if t.state == TargetState::Active && !t.reported {
                t.silent_streak += 1;
                if t.silent_streak >= cfg.silent_passes {
                    t.state = TargetState::Silent;
                }
            }
        }
        let (needed, missing) = s
            .targets
            .values()
            .filter(|t| t.reported)
            .fold((0u64, 0u64), |(n, m), t| (n + u64::from(t.needed), m + u64::from(t.missing)));
        // AIMD judges a pass by the frames it sent: a poll repeated while
        // members verify sent none and says nothing about the network.
        if needed > 0 && s.sent_in_pass > 0 {
            let loss = missing as f64 / needed as f64;
            self.rate = if loss > cfg.nack_threshold {
                (self.rate as f64 * cfg.rate_decrease) as u64
            } else {
                self.rate.saturating_add(cfg.rate_increase)
            }
            .clamp(cfg.rate_min, cfg.rate_max.max(cfg.rate_min));
        }
        let union = s.union.count();
        let active = s.targets.values().filter(|t| t.state == TargetState::Active).count();
        self.events.push_back(SenderEvent::PassEnded {
            session: s.announce.session,
            pass: s.pass,
            sent: s.sent_in_pass,
            missing: union,
            active,
            rate: self.rate,
        });
        if active == 0 {
            return self.finish(now, false);
        }
        if union == 0 && s.pass > 0 && !s.small {
            // Nothing to resend: the members still active hold every frame
            // and are verifying, or were silent. Poll again, for a while.
            s.idle_passes += 1;
            if s.idle_passes >= cfg.stall_passes.saturating_mul(IDLE_PASSES_PER_STALL) {
                return self.finish(now, true);
            }
            // Not a new pass: poll the same one again after the window.
            // Its frames were judged (and reported) once; this poll sends none.
            s.sent_in_pass = 0;
            for t in s.targets.values_mut() {
                t.parts.clear();
                t.reported = false;
            }
            s.retries = 0;
            s.timers[Timer::Collect as usize] = Some(now + cfg.report_window + cfg.report_grace);
            let polls = poll_selectors(&s.targets);
            push_polls(&mut self.transmits, s, polls);
            return;
        } else if union < s.best_missing {
            s.best_missing = union;
            s.stall = 0;
        } else {
            s.stall += 1;
            if s.stall >= cfg.stall_passes {
                return self.finish(now, true);
            }
        }
        if s.small {
            s.union.insert(0);
        }
        self.begin_pass(now);
    }

    fn finish(&mut self, now: Time, gave_up: bool) {
        let Some(s) = self.session.take() else {
            return;
        };
        let mut o = Outcome {
            session: s.announce.session,
            assignment: s.announce.assignment,
            completed: false,
            gave_up,
            passes: s.pass,
            frames_needed: s.announce.frame_count,
            frames_sent: s.frames_sent,
            acked: Vec::new(),
            already_had: Vec::new(),
            failed: Vec::new(),
            laggards: Vec::new(),
            silent: Vec::new(),
        };
        for (&id, t) in &s.targets {
            match t.state {
                TargetState::Acked => o.acked.push(id),
                TargetState::AlreadyHad => o.already_had.push(id),
                TargetState::Failed => o.failed.push(id),
                TargetState::Silent => o.silent.push(id),
                TargetState::Active if t.silent_streak > 0 && !t.reported => o.silent.push(id),
                TargetState::Active => o.laggards.push((id, t.missing)),
            }
        }
        let holders = (o.acked.len() + o.already_had.len()) as f64;
        let need = (self.cfg.quorum.clamp(0.0, 1.0) * s.targets.len() as f64).ceil();
        o.completed = holders >= need;
        self.events.push_back(SenderEvent::Finished(o));
        self.start_next(now);
    }

    /// Feeds the passing of time; call when [`Sender::poll_timeout`]'s time has come.
    pub fn handle_timeout(&mut self, now: Time) {
        for timer in TIMERS {
            let Some(s) = self.session.as_mut() else {
                return;
            };
            match s.timers[timer as usize] {
                Some(at) if at <= now => s.timers[timer as usize] = None,
                _ => continue,
            }
            match timer {
                Timer::Announce => {
                    if s.announces < self.cfg.announce_count {
                        s.announces += 1;
                        s.timers[Timer::Announce as usize] = Some(now + self.cfg.announce_interval);
                        self.transmits.push_back(Transmit {
                            dest: Dest::Group,
                            payload: Payload::Message(Message::Announce(s.announce.clone())),
                        });
                    } else {
                        s.union = FrameSet::full(s.announce.frame_count);
                        self.begin_pass(now);
                    }
                }
                Timer::Pace => {}
                Timer::Reannounce => {
                    s.timers[Timer::Reannounce as usize] = Some(now + self.cfg.announce_repeat);
                    self.transmits.push_back(Transmit {
                        dest: Dest::Group,
                        payload: Payload::Message(Message::Announce(s.announce.clone())),
                    });
                }
                Timer::Collect => {
                    let waiting: Vec<NodeId> = s
                        .targets
                        .iter()
                        .filter(|(_, t)| t.state == TargetState::Active && !t.reported)
                        .map(|(&id, _)| id)
                        .collect();
                    if waiting.is_empty() {
                        self.check_progress(now);
                    } else if s.retries >= self.cfg.report_retries {
                        self.end_pass(now);
                    } else if s.small {
                        // A lost block and a lost report look alike: send
                        // the block again, as a poll and as the next pass.
                        s.retries += 1;
                        s.pass += 1;
                        self.send_block(now);
                    } else {
                        s.retries += 1;
                        let others: Vec<NodeId> =
                            s.targets.keys().filter(|id| !waiting.contains(id)).copied().collect();
                        let polls = Selector::for_lists(&waiting, &others);
                        push_polls(&mut self.transmits, s, polls);
                        s.timers[Timer::Collect as usize] =
                            Some(now + self.cfg.report_window + self.cfg.report_grace);
                    }
                }
            }
        }
    }

    /// The next datagram to send, if one is due now.
    pub fn poll_transmit(&mut self, now: Time) -> Option<Transmit> {
        if let Some(t) = self.transmits.pop_front() {
            return Some(t);
        }
        let s = self.session.as_mut()?;
        if s.phase != Phase::Sending {
            return None;
        }
        let Some(seq) = s.to_send.next_member(s.cursor) else {
            // The pass is sent: poll the members for their reports.
            s.phase = Phase::Collecting;
            s.timers[Timer::Collect as usize] = Some(now + self.cfg.report_window + self.cfg.report_grace);
            let polls = poll_selectors(&s.targets);
            push_polls(&mut self.transmits, s, polls);
            return self.transmits.pop_front();
        };
        let (offset, len) = s.announce.frame_range(seq);
        let cost = (FRAME_HEADER_LEN + len + wire::HEADER_LEN + wire::TAG_LEN + IP_UDP_OVERHEAD) as f64;
        // Refill the bucket.
        let depth = (self.rate as f64 * self.cfg.burst.as_secs_f64()).max(2.0 * cost);
        let elapsed = now.saturating_since(self.refilled).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate as f64).min(depth);
        self.refilled = now;
        if self.tokens < cost {
            let wait = (cost - self.tokens) / self.rate.max(1) as f64;
            s.timers[Timer::Pace as usize] =
                Some(now + Duration::from_secs_f64(wait).max(Duration::from_micros(1)));
            return None;
        }
        self.tokens -= cost;
        s.cursor = seq + 1;
        s.sent_in_pass += 1;
        s.frames_sent += 1;
        Some(Transmit {
            dest: Dest::Group,
            payload: Payload::Frame { session: s.announce.session, pass: s.pass, seq, offset, len },
        })
    }

    /// When [`Sender::handle_timeout`] should next be called.
    pub fn poll_timeout(&self) -> Option<Time> {
        self.session.as_ref()?.timers.iter().flatten().min().copied()
    }

    /// The next event for the driver.
    pub fn poll_event(&mut self) -> Option<SenderEvent> {
        self.events.pop_front()
    }
}

/// Queues the end-of-pass markers that poll `polls` for the session's current pass.
fn push_polls(transmits: &mut VecDeque<Transmit>, s: &Session, polls: Vec<Selector>) {
    for poll in polls {
        transmits.push_back(Transmit {
            dest: Dest::Group,
            payload: Payload::Message(Message::EndOfPass { session: s.announce.session, pass: s.pass, poll }),
        });
    }
}

/// The end-of-pass selectors: every target that may still need frames.
fn poll_selectors(targets: &BTreeMap<NodeId, Target>) -> Vec<Selector> {
    let (wanted, others): (Vec<_>, Vec<_>) =
        targets.iter().partition(|(_, t)| matches!(t.state, TargetState::Active | TargetState::Silent));
    let ids = |v: Vec<(&NodeId, &Target)>| v.into_iter().map(|(&id, _)| id).collect::<Vec<_>>();
    Selector::for_lists(&ids(wanted), &ids(others))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Drives `s` until it ends; `answer` gives a member's reply to each
    /// end-of-pass marker (pass number, how many markers of that pass so far).
    fn run(s: &mut Sender, mut answer: impl FnMut(SessionId, u32, u32, u32) -> Status) -> Vec<SenderEvent> {
        let member = NodeId(7);
        let mut now = Time::ZERO;
        let mut frames = 0;
        let mut polls: BTreeMap<u32, u32> = BTreeMap::new();
        let mut events = Vec::new();
        for _ in 0..100_000 {
            while let Some(t) = s.poll_transmit(now) {
                match t.payload {
                    Payload::Message(Message::Announce(a)) => frames = a.frame_count,
                    Payload::Message(Message::EndOfPass { session, pass, .. }) => {
                        let n = polls.entry(pass).or_default();
                        *n += 1;
                        let st = answer(session, pass, *n, frames);
                        s.handle_datagram(now, member, Message::Status(st));
                    }
                    _ => {}
                }
            }
            while let Some(e) = s.poll_event() {
                let done = matches!(e, SenderEvent::Finished(_));
                events.push(e);
                if done {
                    return events;
                }
            }
            match s.poll_timeout() {
                Some(at) => now = at.max(now),
                None => now += Duration::from_millis(1),
            }
            s.handle_timeout(now);
        }
        panic!("the session did not end: {events:?}");
    }

    #[test]
    fn polls_while_a_member_verifies_leave_the_rate_alone() {
        let cfg = SenderConfig { frame_size: 1000, announce_count: 1, ..SenderConfig::default() };
        let mut s = Sender::new(cfg.clone(), 1);
        s.send_assignment(Time::ZERO, AssignmentSerial(1), 100_000, [0; 32], vec![NodeId(7)]);
        // Pass 1 arrives whole; the member then verifies through three
        // polls (nothing missing, no acknowledgement yet), then acknowledges.
        let events = run(&mut s, |session, pass, n, frames| {
            let kind = if n <= 3 { StatusKind::Nack } else { StatusKind::Ack };
            Status { session, pass, kind, lo: 0, hi: frames, missing: Vec::new() }
        });
        let passes: Vec<(u32, u32, u64)> = events
            .iter()
            .filter_map(|e| match e {
                SenderEvent::PassEnded { pass, sent, rate, .. } => Some((*pass, *sent, *rate)),
                _ => None,
            })
            .collect();
        let raised = cfg.rate + cfg.rate_increase;
        // The pass that sent 100 frames without loss raises the rate once;
        // the polls that follow send nothing and change nothing.
        assert_eq!(passes, vec![(1, 100, raised), (1, 0, raised), (1, 0, raised)], "{events:?}");
        assert_eq!(s.rate(), raised);
        let Some(SenderEvent::Finished(o)) = events.last() else { panic!("{events:?}") };
        assert!(o.completed, "{o:?}");
        assert_eq!(o.frames_sent, 100);
    }
}
