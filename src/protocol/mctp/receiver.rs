//! The receiving side of MCTP: one member, any number of senders' sessions.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::Duration;

use bytes::Bytes;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::protocol::crypto::Sha256;
use crate::protocol::ids::{AssignmentSerial, NodeId};
use crate::protocol::time::Time;

use super::frameset::FrameSet;
use super::msg::{
    nack_reports, Announce, Block, Frame, Message, Selector, SessionId, Status, StatusKind, Targets,
};

/// Sessions of other members remembered, so that their frames and polls
/// are recognised and dropped (no query, no state) rather than taken for
/// traffic of a session whose announce was missed.
pub const MAX_IGNORED: usize = 256;

/// Most frames a session may have: bounds the one-bit-per-frame map a
/// member allocates for an announce (8 MiB; 94 GB at the default frame size).
pub const MAX_FRAMES: u32 = 1 << 26;

/// Settings of a [`Receiver`]. `config.rs` builds one from `[mctp]`.
#[derive(Debug, Clone, PartialEq)]
pub struct ReceiverConfig {
    /// Reports go out at a random time within this window after a poll.
    pub report_window: Duration,
    /// A session that hears nothing from its sender this long is abandoned.
    pub session_timeout: Duration,
    /// A finished session is remembered this long to answer late polls.
    pub linger: Duration,
    /// Largest assignment accepted.
    pub max_size: u64,
    /// Most sessions received at once.
    pub max_sessions: usize,
    /// Least time between two queries for the announce of one unknown session.
    pub query_interval: Duration,
    /// Assignments remembered as held, to answer "complete" to announces.
    pub held_capacity: usize,
}

impl Default for ReceiverConfig {
    fn default() -> Self {
        ReceiverConfig {
            report_window: Duration::from_millis(200),
            session_timeout: Duration::from_secs(30),
            linger: Duration::from_secs(60),
            max_size: 16 << 30,
            max_sessions: 4,
            query_interval: Duration::from_millis(200),
            held_capacity: 64,
        }
    }
}

/// What the receiver asks its driver to do, or tells it.
#[derive(Debug, Clone)]
pub enum ReceiverEvent {
    /// A session for an assignment this member lacks began: create the file
    /// (`size` bytes) that the following writes go to.
    Started {
        /// The session.
        session: SessionId,
        /// The sender.
        sender: NodeId,
        /// The assignment.
        assignment: AssignmentSerial,
        /// Its size.
        size: u64,
        /// Its SHA-256.
        hash: [u8; 32],
        /// The session's targets (this member among them).
        targets: Targets,
    },
    /// Write `data` at `offset` of the session's file.
    Write {
        /// The session.
        session: SessionId,
        /// Byte offset.
        offset: u64,
        /// The frame's bytes (a slice of the datagram, no copy).
        data: Bytes,
    },
    /// Every frame is written; the hash of the first `from` bytes is in
    /// `hasher`. Read the file from `from` to the end into `hasher` and call
    /// [`Receiver::handle_verified`] with the digest. When frames arrive in
    /// order `from` is the whole size and there is nothing to read.
    Verify {
        /// The session.
        session: SessionId,
        /// Bytes already hashed.
        from: u64,
        /// The hash so far.
        hasher: Box<Sha256>,
    },
    /// The assignment is complete and its hash verified.
    Completed {
        /// The session.
        session: SessionId,
        /// The assignment.
        assignment: AssignmentSerial,
        /// Its size.
        size: u64,
        /// Its SHA-256.
        hash: [u8; 32],
    },
    /// The session failed here (hash mismatch, disk error); the file is useless.
    Failed {
        /// The session.
        session: SessionId,
        /// The assignment.
        assignment: AssignmentSerial,
        /// Why.
        error: String,
    },
    /// The sender went silent before the assignment was complete; delete the file.
    Abandoned {
        /// The session.
        session: SessionId,
        /// The assignment.
        assignment: AssignmentSerial,
    },
}

/// Finished sessions kept for late polls, beyond `max_sessions`.
pub const MAX_LINGERING: usize = 256;

#[derive(Debug, Clone, PartialEq, Eq)]
enum State {
    Receiving,
    Verifying,
    Complete,
    Failed,
}

#[derive(Debug)]
struct Session {
    sender: NodeId,
    announce: Announce,
    received: FrameSet,
    hasher: Option<Sha256>,
    hashed: u32,
    state: State,
    /// A report is due at this time, for this pass.
    report: Option<(Time, u32)>,
    /// A poll came while verifying: report when done.
    report_after_verify: Option<u32>,
    expires: Time,
}

/// The MCTP receiver core (sans-IO).
///
/// Call order: feed [`Receiver::handle_datagram`], [`Receiver::handle_timeout`],
/// and the driver's answers [`Receiver::handle_verified`] /
/// [`Receiver::handle_write_failed`]; then drain [`Receiver::poll_event`]
/// (apply every `Write` in order, before the next input), drain
/// [`Receiver::poll_transmit`], and re-arm the timer from
/// [`Receiver::poll_timeout`].
///
/// Memory stays flat: frames are handed to the driver as `Write` events the
/// moment they arrive, never buffered; the core keeps one bit per frame and
/// a running SHA-256 of the in-order prefix, so the driver reads back only
/// what arrived out of order (usually nothing on pass 1 without loss).
///
/// Reports: a member reports only when polled (an end-of-pass marker or a
/// block that selects it), at a random time within `report_window`, so
/// that the reports of a large segment spread out instead of imploding on
/// the sender; a member that holds everything says so in one `Ack`.
///
/// Only targets (DESIGN §4): every announce and block names the session's
/// targets, and a member that is not among them takes no part. It keeps
/// only the session's id (among the last [`MAX_IGNORED`]), so that the
/// session's frames and polls cost a lookup; it emits no event for it and
/// sends nothing: no query, no report, not even "complete" when it happens
/// to hold the assignment.
#[derive(Debug)]
pub struct Receiver {
    node: NodeId,
    cfg: ReceiverConfig,
    rng: ChaCha8Rng,
    sessions: BTreeMap<SessionId, Session>,
    held: VecDeque<(AssignmentSerial, [u8; 32])>,
    queried: BTreeMap<SessionId, Time>,
    /// Sessions that do not name this member, newest last.
    ignored: VecDeque<SessionId>,
    ignored_set: BTreeSet<SessionId>,
    transmits: VecDeque<(NodeId, Message)>,
    events: VecDeque<ReceiverEvent>,
}

impl Receiver {
    /// A receiver for member `node`; `seed` drives the report delays.
    pub fn new(node: NodeId, cfg: ReceiverConfig, seed: u64) -> Self {
        Receiver {
            node,
            cfg,
            rng: ChaCha8Rng::seed_from_u64(seed),
            sessions: BTreeMap::new(),
            held: VecDeque::new(),
            queried: BTreeMap::new(),
            ignored: VecDeque::new(),
            ignored_set: BTreeSet::new(),
            transmits: VecDeque::new(),
            events: VecDeque::new(),
        }
    }

    /// This member's id.
    pub fn node(&self) -> NodeId {
        self.node
    }

    /// Records that this member holds `assignment` with `hash`, so that an
    /// announce of it is answered "complete" and nothing is sent again.
    pub fn mark_held(&mut self, assignment: AssignmentSerial, hash: [u8; 32]) {
        if self.holds(assignment, &hash) {
            return;
        }
        if self.held.len() >= self.cfg.held_capacity.max(1) {
            self.held.pop_front();
        }
        self.held.push_back((assignment, hash));
    }

    fn holds(&self, assignment: AssignmentSerial, hash: &[u8; 32]) -> bool {
        self.held.iter().any(|(a, h)| *a == assignment && h == hash)
    }

    /// Feeds a datagram from `from` on the data channel.
    pub fn handle_datagram(&mut self, now: Time, from: NodeId, msg: Message) {
        match msg {
            Message::Announce(a) => self.handle_announce(now, from, a),
            Message::Frame(f) => self.handle_frame(now, from, f),
            Message::EndOfPass { session, pass, poll } => self.handle_poll(now, from, session, pass, &poll),
            Message::Block(b) => self.handle_block(now, from, b),
            Message::Status(_) | Message::Query { .. } => {}
        }
    }

    /// Remembers that session `id` is for other members.
    fn ignore(&mut self, id: SessionId) {
        if !self.ignored_set.insert(id) {
            return;
        }
        self.ignored.push_back(id);
        self.queried.remove(&id);
        while self.ignored.len() > MAX_IGNORED {
            if let Some(old) = self.ignored.pop_front() {
                self.ignored_set.remove(&old);
            }
        }
    }

    /// Sessions remembered as other members' (at most [`MAX_IGNORED`]).
    pub fn ignored_sessions(&self) -> usize {
        debug_assert_eq!(self.ignored.len(), self.ignored_set.len());
        self.ignored.len()
    }

    /// Whether session `id` is known to be for other members.
    pub fn is_ignored(&self, id: SessionId) -> bool {
        self.ignored_set.contains(&id)
    }

    fn handle_announce(&mut self, now: Time, from: NodeId, a: Announce) {
        if self.ignored_set.contains(&a.session) {
            return;
        }
        if !a.targets.contains(self.node) {
            // Not for this member, even if it holds the assignment: no
            // "complete" either (the sender counts only its targets).
            if !self.sessions.contains_key(&a.session) {
                self.ignore(a.session);
            }
            return;
        }
        if let Some(s) = self.sessions.get_mut(&a.session) {
            if s.state == State::Receiving || s.state == State::Verifying {
                s.expires = now + self.cfg.session_timeout;
            }
            return;
        }
        if self.holds(a.assignment, &a.hash) {
            self.transmits.push_back((
                from,
                Message::Status(Status {
                    session: a.session,
                    pass: 0,
                    kind: StatusKind::Complete,
                    lo: 0,
                    hi: a.frame_count,
                    missing: Vec::new(),
                }),
            ));
            return;
        }
        if a.check().is_err()
            || a.size > self.cfg.max_size
            || a.frame_count > MAX_FRAMES
            || self.receiving() >= self.cfg.max_sessions
        {
            return;
        }
        self.queried.remove(&a.session);
        // Finished sessions linger to answer late polls; a sender that starts
        // session after session (single-datagram blocks) must not make the
        // map grow with its rate: the oldest finished one gives way.
        if self.sessions.len() >= self.cfg.max_sessions + MAX_LINGERING {
            let oldest = self
                .sessions
                .iter()
                .filter(|(_, s)| matches!(s.state, State::Complete | State::Failed))
                .min_by_key(|(_, s)| s.expires)
                .map(|(id, _)| *id);
            if let Some(id) = oldest {
                self.sessions.remove(&id);
            }
        }
        let started = ReceiverEvent::Started {
            session: a.session,
            sender: from,
            assignment: a.assignment,
            size: a.size,
            hash: a.hash,
            targets: a.targets.clone(),
        };
        self.sessions.insert(
            a.session,
            Session {
                sender: from,
                received: FrameSet::empty(a.frame_count),
                announce: a,
                hasher: Some(Sha256::default()),
                hashed: 0,
                state: State::Receiving,
                report: None,
                report_after_verify: None,
                expires: now + self.cfg.session_timeout,
            },
        );
        self.events.push_back(started);
    }

    /// Sessions held: in progress, or finished and lingering for late polls.
    pub fn sessions(&self) -> usize {
        self.sessions.len()
    }

    /// Whether session `id` is held.
    pub fn has_session(&self, id: SessionId) -> bool {
        self.sessions.contains_key(&id)
    }

    fn receiving(&self) -> usize {
        self.sessions.values().filter(|s| matches!(s.state, State::Receiving | State::Verifying)).count()
    }

    fn query(&mut self, now: Time, from: NodeId, session: SessionId) {
        let due = match self.queried.get(&session) {
            Some(&at) => now >= at + self.cfg.query_interval,
            None => true,
        };
        if !due {
            return;
        }
        if self.queried.len() >= 64 {
            if let Some(&oldest) = self.queried.keys().next() {
                self.queried.remove(&oldest);
            }
        }
        self.queried.insert(session, now);
        self.transmits.push_back((from, Message::Query { session }));
    }

    fn handle_frame(&mut self, now: Time, from: NodeId, f: Frame) {
        let Some(s) = self.sessions.get_mut(&f.session) else {
            if self.ignored_set.contains(&f.session) {
                return;
            }
            return self.query(now, from, f.session);
        };
        if s.state != State::Receiving || f.seq >= s.announce.frame_count {
            return;
        }
        let (offset, len) = s.announce.frame_range(f.seq);
        if f.payload.len() != len {
            return;
        }
        s.expires = now + self.cfg.session_timeout;
        if f.seq == s.hashed {
            if let Some(h) = s.hasher.as_mut() {
                h.update(&f.payload);
                s.hashed += 1;
            }
        }
        if !s.received.insert(f.seq) {
            return;
        }
        self.events.push_back(ReceiverEvent::Write { session: f.session, offset, data: f.payload });
        if s.received.is_full() {
            self.start_verify(now, f.session);
        }
    }

    fn start_verify(&mut self, now: Time, session: SessionId) {
        let Some(s) = self.sessions.get_mut(&session) else {
            return;
        };
        s.state = State::Verifying;
        let hasher = s.hasher.take().unwrap_or_default();
        if s.hashed == s.announce.frame_count {
            let digest = hasher.finish();
            self.handle_verified(now, session, digest);
        } else {
            let from = (u64::from(s.hashed) * u64::from(s.announce.frame_size)).min(s.announce.size);
            self.events.push_back(ReceiverEvent::Verify { session, from, hasher: Box::new(hasher) });
        }
    }

    /// The driver's answer to [`ReceiverEvent::Verify`]: the SHA-256 of the file.
    pub fn handle_verified(&mut self, now: Time, session: SessionId, digest: [u8; 32]) {
        let Some(s) = self.sessions.get_mut(&session) else {
            return;
        };
        if s.state != State::Verifying {
            return;
        }
        let (assignment, size, hash) = (s.announce.assignment, s.announce.size, s.announce.hash);
        s.expires = now + self.cfg.linger;
        if digest == hash {
            s.state = State::Complete;
            self.events.push_back(ReceiverEvent::Completed { session, assignment, size, hash });
            self.mark_held(assignment, hash);
        } else {
            s.state = State::Failed;
            self.events.push_back(ReceiverEvent::Failed {
                session,
                assignment,
                error: format!("SHA-256 of the received assignment {assignment} does not match the announce"),
            });
        }
        if let Some(pass) = self.sessions.get_mut(&session).and_then(|s| s.report_after_verify.take()) {
            self.schedule_report(now, session, pass);
        }
    }

    /// The driver could not write the session's file: the member reports failure.
    pub fn handle_write_failed(&mut self, now: Time, session: SessionId, error: String) {
        let Some(s) = self.sessions.get_mut(&session) else {
            return;
        };
        if s.state == State::Failed {
            return;
        }
        s.state = State::Failed;
        s.expires = now + self.cfg.linger;
        self.events.push_back(ReceiverEvent::Failed { session, assignment: s.announce.assignment, error });
    }

    fn handle_poll(&mut self, now: Time, from: NodeId, session: SessionId, pass: u32, poll: &Selector) {
        if !poll.selects(self.node) || self.ignored_set.contains(&session) {
            return;
        }
        if !self.sessions.contains_key(&session) {
            return self.query(now, from, session);
        }
        self.schedule_report(now, session, pass);
    }

    fn schedule_report(&mut self, now: Time, session: SessionId, pass: u32) {
        let window = self.cfg.report_window.as_micros() as u64;
        let delay = Duration::from_micros(self.rng.random_range(0..=window));
        let Some(s) = self.sessions.get_mut(&session) else {
            return;
        };
        match &mut s.report {
            Some((_, p)) => *p = pass.max(*p),
            None => s.report = Some((now + delay, pass)),
        }
    }

    fn handle_block(&mut self, now: Time, from: NodeId, b: Block) {
        let Ok(size) = u32::try_from(b.data.len()) else {
            return;
        };
        if self.ignored_set.contains(&b.session) {
            return;
        }
        if !b.targets.contains(self.node) {
            if !self.sessions.contains_key(&b.session) {
                self.ignore(b.session);
            }
            return;
        }
        if !self.sessions.contains_key(&b.session) {
            let announce = Announce {
                session: b.session,
                assignment: b.assignment,
                size: u64::from(size),
                frame_size: size.max(1),
                frame_count: 1,
                rate: 0,
                hash: b.hash,
                targets: b.targets,
            };
            self.handle_announce(now, from, announce);
            if self.sessions.contains_key(&b.session) {
                self.handle_frame(
                    now,
                    from,
                    Frame { session: b.session, pass: b.pass, seq: 0, payload: b.data },
                );
            }
        }
        if b.poll.selects(self.node) && self.sessions.contains_key(&b.session) {
            self.schedule_report(now, b.session, b.pass);
        }
    }

    fn send_report(&mut self, now: Time, session: SessionId, pass: u32) {
        let Some(s) = self.sessions.get_mut(&session) else {
            return;
        };
        let n = s.announce.frame_count;
        let whole = |kind| Status { session, pass, kind, lo: 0, hi: n, missing: Vec::new() };
        let reports = match s.state {
            State::Receiving => nack_reports(session, pass, &s.received),
            // Every frame is here and the hash is being checked: say so
            // (nothing missing, no acknowledgement yet) so the sender keeps
            // waiting instead of counting this member silent; the Ack follows
            // the verification.
            State::Verifying => {
                s.report_after_verify = Some(pass);
                vec![whole(StatusKind::Nack)]
            }
            State::Complete => vec![whole(StatusKind::Ack)],
            State::Failed => vec![whole(StatusKind::Failed)],
        };
        let _ = now;
        for r in reports {
            self.transmits.push_back((s.sender, Message::Status(r)));
        }
    }

    /// Feeds the passing of time; call when [`Receiver::poll_timeout`]'s time has come.
    pub fn handle_timeout(&mut self, now: Time) {
        let due: Vec<(SessionId, Option<u32>, bool)> = self
            .sessions
            .iter()
            .filter_map(|(&id, s)| {
                let report = s.report.filter(|(at, _)| *at <= now).map(|(_, p)| p);
                let expired = s.expires <= now;
                (report.is_some() || expired).then_some((id, report, expired))
            })
            .collect();
        for (id, report, expired) in due {
            if let Some(pass) = report {
                if let Some(s) = self.sessions.get_mut(&id) {
                    s.report = None;
                }
                self.send_report(now, id, pass);
            }
            if expired {
                if let Some(s) = self.sessions.remove(&id) {
                    if matches!(s.state, State::Receiving | State::Verifying) {
                        self.events.push_back(ReceiverEvent::Abandoned {
                            session: id,
                            assignment: s.announce.assignment,
                        });
                    }
                }
            }
        }
    }

    /// The next datagram to send: a report or query to the given sender.
    pub fn poll_transmit(&mut self) -> Option<(NodeId, Message)> {
        self.transmits.pop_front()
    }

    /// The next event for the driver.
    pub fn poll_event(&mut self) -> Option<ReceiverEvent> {
        self.events.pop_front()
    }

    /// When [`Receiver::handle_timeout`] should next be called.
    pub fn poll_timeout(&self) -> Option<Time> {
        self.sessions.values().flat_map(|s| [s.report.map(|(at, _)| at), Some(s.expires)]).flatten().min()
    }
}
