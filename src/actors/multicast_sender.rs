//! The group leader's MCTP driver: wraps a [`Sender`] core with the data
//! channel and the assignment files.
//!
//! Frames are read from the assignment file at the moment they are sent
//! (positioned reads, straight into the datagrams being sealed), so the
//! leader holds no copy in memory either. Consecutive frames of one size
//! are laid out as sealed datagrams end to end in one buffer, their
//! payloads read with one `preadv`, and leave together, one segmented send
//! per destination ([`DataChannel::send_sealed`]): the same datagrams, for
//! a fraction of the system calls.
//! Every datagram of a session goes to the session's targets only when the
//! channel fans out by unicast (DESIGN §4 "Only targets").
//! Datagrams of the report protocol that arrive on the same socket are
//! forwarded to the [`ReportCollector`](super::report_collector) if one is
//! connected.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, IoSliceMut};
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};

use actix::clock::Instant;
use actix::prelude::*;
use bytes::Bytes;

use crate::protocol::ids::{self, AssignmentSerial, NodeId};
use crate::protocol::mctp::{
    msg::{frame_header, is_mctp_tag},
    Announce, Dest, FrameSource, Message, Outcome, Payload, Sender, SenderConfig, SenderEvent, SessionId,
    Targets, Transmit, FRAME_HEADER_LEN, MAX_TARGETS,
};
use crate::protocol::reports;
use crate::protocol::time::Time;
use crate::protocol::wire;

use super::{arm_timer, Driven, DriverTimer};
use crate::net::data_channel::{Batch, DataChannel, Incoming, MAX_SEGMENTED_BYTES, MAX_SEGMENTS};

/// Sends an assignment file to `targets` (command).
#[derive(Debug, Message)]
#[rtype(result = "io::Result<()>")]
pub struct SendAssignment {
    /// The assignment.
    pub assignment: AssignmentSerial,
    /// Its file.
    pub path: PathBuf,
    /// Its SHA-256 (from the assignment's header, or computed by the caller).
    pub hash: [u8; 32],
    /// Members that must receive it.
    pub targets: Vec<NodeId>,
    /// Where to keep the session's progress (for the leader's reports).
    pub progress: Option<std::sync::Arc<PassCounters>>,
}

/// How far a session is, updated as it starts and at the end of each pass:
/// the leader reads it for its progress reports to the CCM.
#[derive(Debug, Default)]
pub struct PassCounters {
    /// Frames in the assignment.
    pub frames: AtomicU32,
    /// Passes ended.
    pub pass: AtomicU32,
    /// Frames still missing at some target after the last pass.
    pub missing: AtomicU32,
    /// Targets still receiving.
    pub active: AtomicU32,
}

impl PassCounters {
    fn set(&self, pass: u32, missing: u32, active: usize) {
        self.pass.store(pass, Ordering::Relaxed);
        self.missing.store(missing, Ordering::Relaxed);
        self.active.store(active as u32, Ordering::Relaxed);
    }
}

/// Registers a member's unicast address for fan-out and unicast messages (command).
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct RegisterMember {
    /// The member.
    pub node: NodeId,
    /// Its data-channel address.
    pub addr: std::net::SocketAddr,
}

/// Returns the announce of the session in progress, for piggy-backing on
/// `LeaderAlive`; counts it as sent (query).
#[derive(Debug, Message)]
#[rtype(result = "Option<Announce>")]
pub struct TakeAnnounce;

/// A session ended (event).
#[derive(Debug, Clone, Message)]
#[rtype(result = "()")]
pub struct AssignmentSent {
    /// The sender's account: who acknowledged, who already had it, who is
    /// silent or lagging.
    pub outcome: Outcome,
}

/// A report-protocol datagram that arrived on the data channel (event, to the collector).
#[derive(Debug, Clone, Message)]
#[rtype(result = "()")]
pub struct ReportDatagram {
    /// Who sent it.
    pub from: NodeId,
    /// The decoded message.
    pub msg: reports::Message,
}

struct FileSource<'a>(&'a File);

impl FrameSource for FileSource<'_> {
    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        self.0.read_exact_at(buf, offset)
    }
}

/// The actor. See the module docs.
pub struct MulticastSender {
    core: Sender,
    channel: DataChannel,
    incoming: Vec<Incoming>,
    start: Instant,
    timer: DriverTimer,
    files: HashMap<AssignmentSerial, File>,
    /// Progress of the sessions, by assignment.
    progress: HashMap<AssignmentSerial, std::sync::Arc<PassCounters>>,
    current: Option<(SessionId, AssignmentSerial)>,
    sent_to: Option<Recipient<AssignmentSent>>,
    reports_to: Option<Recipient<ReportDatagram>>,
    /// Sealed frames waiting to leave together (see [`FrameRun`]).
    run: FrameRun,
}

/// A frame waiting in a [`FrameRun`].
#[derive(Debug, Clone, Copy)]
struct RunFrame {
    session: SessionId,
    pass: u32,
    seq: u32,
    offset: u64,
    len: usize,
}

/// Frames for the group waiting to leave together: laid out as sealed
/// datagrams of one size end to end (the last may be shorter), what one
/// segmented send carries.
#[derive(Debug, Default)]
struct FrameRun {
    frames: Vec<RunFrame>,
    /// Datagram size (of all but the last).
    segment: usize,
    /// Bytes of all the datagrams.
    bytes: usize,
    /// A shorter datagram ended the run: nothing may follow it.
    closed: bool,
    buf: Vec<u8>,
}

/// Where a frame's payload starts in its datagram.
const PAYLOAD_AT: usize = wire::HEADER_LEN + FRAME_HEADER_LEN;

fn datagram_len(payload: usize) -> usize {
    PAYLOAD_AT + payload + wire::TAG_LEN
}

impl FrameRun {
    /// True when a datagram of `len` bytes may join the run.
    fn fits(&self, len: usize) -> bool {
        self.frames.is_empty()
            || (!self.closed
                && len <= self.segment
                && self.frames.len() < MAX_SEGMENTS
                && self.bytes + len <= MAX_SEGMENTED_BYTES)
    }

    fn push(&mut self, frame: RunFrame) {
        let len = datagram_len(frame.len);
        if self.frames.is_empty() {
            self.segment = len;
        } else if len < self.segment {
            self.closed = true;
        }
        self.bytes += len;
        self.frames.push(frame);
    }

    /// Lays the run out in `buf`: payloads read from `file` (one `preadv`
    /// per stretch of consecutive frames, straight into the datagrams),
    /// then each frame's header and each datagram's seal.
    fn build(&mut self, file: &File, channel: &DataChannel) -> io::Result<()> {
        self.buf.clear();
        self.buf.resize(self.bytes, 0);
        let segment = self.segment.max(1);
        {
            let mut slots: Vec<IoSliceMut<'_>> = Vec::with_capacity(self.frames.len());
            let mut from = self.frames.first().map_or(0, |f| f.offset);
            let mut next = from;
            for (datagram, f) in self.buf.chunks_mut(segment).zip(&self.frames) {
                if f.offset != next {
                    read_exact_vectored_at(file, &mut slots, from)?;
                    slots.clear();
                    from = f.offset;
                }
                slots.push(IoSliceMut::new(&mut datagram[PAYLOAD_AT..PAYLOAD_AT + f.len]));
                next = f.offset + f.len as u64;
            }
            read_exact_vectored_at(file, &mut slots, from)?;
        }
        for (datagram, f) in self.buf.chunks_mut(segment).zip(&self.frames) {
            let header = frame_header(f.session, f.pass, f.seq, &datagram[PAYLOAD_AT..PAYLOAD_AT + f.len]);
            datagram[wire::HEADER_LEN..PAYLOAD_AT].copy_from_slice(&header);
            channel.seal_datagram(datagram)?;
        }
        Ok(())
    }

    fn clear(&mut self) {
        self.frames.clear();
        self.bytes = 0;
        self.closed = false;
    }
}

/// Fills `bufs` from `file` at `offset`, in as few reads as the kernel allows.
fn read_exact_vectored_at(file: &File, mut bufs: &mut [IoSliceMut<'_>], mut offset: u64) -> io::Result<()> {
    while bufs.iter().any(|b| !b.is_empty()) {
        let at = i64::try_from(offset).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        let n = nix::sys::uio::preadv(file, bufs, at).map_err(io::Error::from)?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        offset += n as u64;
        IoSliceMut::advance_slices(&mut bufs, n);
    }
    Ok(())
}

impl MulticastSender {
    /// A sender over `channel` (whose incoming streams it reads). `seed`
    /// draws session ids.
    pub fn new(
        cfg: SenderConfig,
        seed: u64,
        channel: DataChannel,
        incoming: Vec<Incoming>,
        sent_to: Option<Recipient<AssignmentSent>>,
        reports_to: Option<Recipient<ReportDatagram>>,
    ) -> Self {
        MulticastSender {
            core: Sender::new(cfg, seed),
            channel,
            incoming,
            start: Instant::now(),
            timer: DriverTimer::default(),
            files: HashMap::new(),
            progress: HashMap::new(),
            current: None,
            sent_to,
            reports_to,
            run: FrameRun::default(),
        }
    }

    fn drain_events(&mut self) {
        while let Some(ev) = self.core.poll_event() {
            match ev {
                SenderEvent::Started { session, assignment, size, frames, targets } => {
                    self.current = Some((session, assignment));
                    if let Some(p) = self.progress.get(&assignment) {
                        p.frames.store(frames, Ordering::Relaxed);
                        p.set(0, frames, targets);
                    }
                    tracing::info!(
                        event = "mctp_start",
                        session = session.0,
                        assignment = assignment.0,
                        size,
                        frames,
                        targets
                    );
                }
                SenderEvent::PassEnded { session, pass, sent, missing, active, rate } => {
                    let current = self.current.filter(|(s, _)| *s == session).map(|(_, a)| a);
                    if let Some(p) = current.and_then(|a| self.progress.get(&a)) {
                        p.set(pass, missing, active);
                    }
                    tracing::info!(
                        event = "mctp_pass",
                        session = session.0,
                        pass,
                        sent,
                        missing,
                        active,
                        rate
                    );
                }
                SenderEvent::Finished(o) => {
                    let result = if o.gave_up || !o.completed { "gave_up" } else { "completed" };
                    let node = crate::metrics::node_label(self.channel.node());
                    metrics::counter!("cmover_mctp_sessions_total", "node" => node.clone(), "result" => result).increment(1);
                    metrics::counter!("cmover_mctp_passes_total", "node" => node.clone())
                        .increment(u64::from(o.passes));
                    metrics::counter!("cmover_mctp_frames_sent_total", "node" => node.clone())
                        .increment(o.frames_sent);
                    let again = o.frames_sent.saturating_sub(u64::from(o.frames_needed));
                    metrics::counter!("cmover_mctp_frames_retransmitted_total", "node" => node)
                        .increment(again);
                    let silent: Vec<u64> = o.silent.iter().map(|n| n.0).collect();
                    let laggards: Vec<u64> = o.laggards.iter().map(|(n, _)| n.0).collect();
                    if o.gave_up || !o.completed {
                        tracing::warn!(
                            event = "mctp_gave_up", session = o.session.0, assignment = o.assignment.0,
                            passes = o.passes, acked = o.acked.len(), silent = %ids::join(&silent), laggards = %ids::join(&laggards),
                        );
                    } else {
                        tracing::info!(
                            event = "mctp_done", session = o.session.0, assignment = o.assignment.0,
                            passes = o.passes, frames_sent = o.frames_sent, frames = o.frames_needed,
                            acked = o.acked.len(), already_had = o.already_had.len(), silent = %ids::join(&silent),
                        );
                    }
                    self.files.remove(&o.assignment);
                    if let Some(p) = self.progress.remove(&o.assignment) {
                        p.set(o.passes, o.laggards.iter().map(|(_, m)| *m).max().unwrap_or(0), 0);
                    }
                    self.current = None;
                    if let Some(r) = &self.sent_to {
                        r.do_send(AssignmentSent { outcome: o });
                    }
                }
            }
        }
    }

    fn now(&self) -> Time {
        Time::from_micros(self.start.elapsed().as_micros() as u64)
    }

    /// Drains the core: events (a session's start names its file), transmits,
    /// events again, then re-arms the one timer.
    fn drive(&mut self, ctx: &mut Context<Self>) {
        let now = self.now();
        self.drain_events();
        while let Some(t) = self.core.poll_transmit(now) {
            self.transmit(t);
        }
        self.flush_run();
        self.drain_events();
        let at = self.core.poll_timeout();
        arm_timer(self, ctx, now, at);
    }

    /// Sends one transmit: frames for the group join the run of frames
    /// (sent when it is full or something else must go first), anything
    /// else goes at once, after the run.
    fn transmit(&mut self, t: Transmit) {
        if let (Payload::Frame { session, pass, seq, offset, len }, Dest::Group) = (&t.payload, t.dest) {
            let frame = RunFrame { session: *session, pass: *pass, seq: *seq, offset: *offset, len: *len };
            if !self.run.fits(datagram_len(frame.len)) {
                self.flush_run();
            }
            self.run.push(frame);
            return;
        }
        self.flush_run();
        let file = self.current.and_then(|(_, a)| self.files.get(&a));
        let mut buf = Vec::new();
        let encoded = match file {
            Some(f) => t.encode(&mut FileSource(f), &mut buf),
            None => t.encode(&mut Vec::new(), &mut buf),
        };
        // A session's datagrams are for its targets only (fan-out mode).
        let sent = encoded.and_then(|_| match self.core.current_targets() {
            Some(targets) => self.channel.send_among(t.dest, targets, &buf),
            None => self.channel.send(t.dest, &buf),
        });
        if let Err(e) = sent {
            tracing::warn!(event = "mctp_send_failed", error = %e);
        }
    }

    /// Sends the run of frames, if any.
    fn flush_run(&mut self) {
        if self.run.frames.is_empty() {
            return;
        }
        let file = self.current.and_then(|(_, a)| self.files.get(&a));
        let built = match file {
            Some(f) => self.run.build(f, &self.channel),
            None => Err(io::Error::new(io::ErrorKind::NotFound, "the session's assignment file is not open")),
        };
        let targets = self.core.current_targets();
        let sent = built.and_then(|_| {
            self.channel.send_sealed_among(Dest::Group, targets, &self.run.buf, self.run.segment)
        });
        if let Err(e) = sent {
            tracing::warn!(event = "mctp_send_failed", frames = self.run.frames.len(), error = %e);
        }
        self.run.clear();
    }
}

impl Driven for MulticastSender {
    fn timer(&mut self) -> &mut DriverTimer {
        &mut self.timer
    }

    fn fire(&mut self, ctx: &mut Context<Self>) {
        let now = self.now();
        self.core.handle_timeout(now);
        self.drive(ctx);
    }
}

impl Actor for MulticastSender {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        for s in self.incoming.drain(..) {
            ctx.add_stream(s);
        }
    }
}

impl StreamHandler<Batch> for MulticastSender {
    fn handle(&mut self, batch: Batch, ctx: &mut Context<Self>) {
        let channel = self.channel.clone();
        for (from, payload) in channel.accept_batch(batch) {
            handle_payload(self, from, payload);
        }
        self.drive(ctx);
    }

    fn finished(&mut self, _ctx: &mut Context<Self>) {}
}

fn handle_payload(act: &mut MulticastSender, from: NodeId, payload: Bytes) {
    match payload.first() {
        Some(&t) if is_mctp_tag(t) => match Message::decode(&payload) {
            Ok(msg) => {
                let now = act.now();
                act.core.handle_datagram(now, from, msg);
            }
            Err(e) => tracing::debug!(event = "mctp_undecodable", %from, error = %e),
        },
        Some(&t) if reports::is_report_tag(t) => {
            if let (Ok(msg), Some(r)) = (reports::Message::decode(&payload), &act.reports_to) {
                r.do_send(ReportDatagram { from, msg });
            }
        }
        _ => {}
    }
}

impl Handler<SendAssignment> for MulticastSender {
    type Result = io::Result<()>;

    fn handle(&mut self, msg: SendAssignment, ctx: &mut Context<Self>) -> io::Result<()> {
        if Targets::new(msg.targets.iter().copied()).is_err() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "assignment {} names {} targets, more than the {MAX_TARGETS} one session can carry",
                    msg.assignment,
                    msg.targets.len()
                ),
            ));
        }
        let file = File::open(&msg.path)?;
        let size = file.metadata()?.len();
        self.files.insert(msg.assignment, file);
        if let Some(p) = msg.progress {
            self.progress.insert(msg.assignment, p);
        }
        let now = self.now();
        self.core.send_assignment(now, msg.assignment, size, msg.hash, msg.targets);
        self.drive(ctx);
        Ok(())
    }
}

impl Handler<RegisterMember> for MulticastSender {
    type Result = ();

    fn handle(&mut self, msg: RegisterMember, ctx: &mut Context<Self>) {
        self.channel.add_peer(msg.node, msg.addr);
        self.drive(ctx);
    }
}

impl Handler<TakeAnnounce> for MulticastSender {
    type Result = Option<Announce>;

    fn handle(&mut self, _msg: TakeAnnounce, ctx: &mut Context<Self>) -> Option<Announce> {
        let a = self.core.poll_announce();
        if a.is_some() {
            let now = self.now();
            self.core.announce_piggybacked(now);
        }
        self.drive(ctx);
        a
    }
}
