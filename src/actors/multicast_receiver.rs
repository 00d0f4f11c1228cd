//! A member's MCTP driver: wraps a [`Receiver`] core (and the member's
//! [`Reporter`]) with the data channel and the files being received.
//!
//! Frames are written at their offset the moment they arrive, consecutive
//! frames of one wake-up together (one `pwritev`, no copy);
//! the file is created at its full size when the session starts and renamed
//! into place only after its SHA-256 is verified, so a partial file is never
//! mistaken for an assignment. Verification reads back only the part the
//! core could not hash in order (see [`ReceiverEvent::Verify`]), through a
//! fixed buffer: memory does not grow with the assignment.
//!
//! Only sessions that name this member reach the disk: the core ignores
//! the others (DESIGN §4 "Only targets"), so no file is created for them.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use actix::clock::Instant;
use actix::prelude::*;
use bytes::Bytes;

use crate::protocol::crypto::Sha256;
use crate::protocol::ids::{AssignmentSerial, NodeId};
use crate::protocol::mctp::{
    msg::is_mctp_tag, Announce, Message, Receiver, ReceiverConfig, ReceiverEvent, SessionId, StatusKind,
    Targets,
};
use crate::protocol::reports::{self, CollectorConfig, Reporter};
use crate::protocol::time::Time;

use super::{arm_timer, Driven, DriverTimer};
use crate::net::data_channel::{Batch, DataChannel, Incoming};
use crate::protocol::mctp::Dest;

/// A received, verified assignment file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceivedFile {
    /// Where it is.
    pub path: PathBuf,
    /// Its size.
    pub size: u64,
    /// Its SHA-256 (verified).
    pub hash: [u8; 32],
}

/// An assignment arrived, or its session failed here (event).
#[derive(Debug, Clone, Message)]
#[rtype(result = "()")]
pub struct AssignmentReceived {
    /// The assignment.
    pub assignment: AssignmentSerial,
    /// The leader that sent it.
    pub from: NodeId,
    /// The members the session was for (this one among them: the core
    /// delivers nothing else), for the interpreter to check again.
    pub targets: Targets,
    /// The file, or why there is none.
    pub result: Result<ReceivedFile, String>,
}

/// Reports this member's result on an assignment to the leader (command).
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct ReportResult {
    /// The assignment.
    pub assignment: AssignmentSerial,
    /// The leader to report to.
    pub leader: NodeId,
    /// Applied, or the error.
    pub result: Result<(), String>,
}

/// Declares that this member already holds an assignment (command).
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct MarkHeld {
    /// The assignment.
    pub assignment: AssignmentSerial,
    /// Its SHA-256.
    pub hash: [u8; 32],
}

/// An announce arrived some other way than the data channel: piggy-backed
/// on the leader's `LeaderAlive` on the control channel (event).
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct AnnounceHeard {
    /// The leader that sent it.
    pub leader: NodeId,
    /// The announce (decode it with `mctp::Message::decode`).
    pub announce: Announce,
}

struct Receiving {
    file: File,
    path: PathBuf,
    sender: NodeId,
    targets: Targets,
}

/// Most pieces in one `pwritev` (the kernel's `IOV_MAX` is 1024).
const WRITE_PIECES: usize = 256;

/// Frames to be written at consecutive offsets of one session's file:
/// one system call for a wake-up's worth of frames instead of one each.
#[derive(Default)]
struct WriteRun {
    session: SessionId,
    offset: u64,
    len: u64,
    pieces: Vec<Bytes>,
}

impl WriteRun {
    /// Adds `data` if it continues the run (or the run is empty).
    fn extend(&mut self, session: SessionId, offset: u64, data: Bytes) -> Result<(), Bytes> {
        if self.pieces.is_empty() {
            self.session = session;
            self.offset = offset;
            self.len = 0;
        } else if session != self.session
            || offset != self.offset + self.len
            || self.pieces.len() >= WRITE_PIECES
        {
            return Err(data);
        }
        self.len += data.len() as u64;
        self.pieces.push(data);
        Ok(())
    }
}

/// Writes `pieces` at `offset` of `file`, in as few calls as the kernel allows.
fn write_pieces_at(file: &File, pieces: &[Bytes], mut offset: u64) -> io::Result<()> {
    let mut done = 0;
    while done < pieces.len() {
        let iov: Vec<io::IoSlice<'_>> = pieces[done..].iter().map(|p| io::IoSlice::new(p)).collect();
        let at = i64::try_from(offset).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        let mut n = nix::sys::uio::pwritev(file, &iov, at).map_err(io::Error::from)?;
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        offset += n as u64;
        // Whole pieces written; a piece cut short is finished on its own.
        while done < pieces.len() && n >= pieces[done].len() {
            n -= pieces[done].len();
            done += 1;
        }
        if n > 0 {
            file.write_all_at(&pieces[done][n..], offset)?;
            offset += (pieces[done].len() - n) as u64;
            done += 1;
        }
    }
    Ok(())
}

/// The actor. See the module docs.
pub struct MulticastReceiver {
    core: Receiver,
    reporter: Reporter,
    channel: DataChannel,
    incoming: Vec<Incoming>,
    dir: PathBuf,
    start: Instant,
    timer: DriverTimer,
    files: HashMap<SessionId, Receiving>,
    writes: WriteRun,
    received_to: Option<Recipient<AssignmentReceived>>,
}

/// Where a verified assignment is stored in `dir`.
pub fn assignment_path(dir: &Path, assignment: AssignmentSerial) -> PathBuf {
    dir.join(format!("{assignment}.assignment"))
}

impl MulticastReceiver {
    /// A receiver storing assignments in `dir`; `seed` drives report delays.
    pub fn new(
        cfg: ReceiverConfig,
        reports: CollectorConfig,
        seed: u64,
        channel: DataChannel,
        incoming: Vec<Incoming>,
        dir: PathBuf,
        received_to: Option<Recipient<AssignmentReceived>>,
    ) -> Self {
        let node = channel.node();
        MulticastReceiver {
            core: Receiver::new(node, cfg, seed),
            reporter: Reporter::new(node, reports, seed ^ 0x7265_706f),
            channel,
            incoming,
            dir,
            start: Instant::now(),
            timer: DriverTimer::default(),
            files: HashMap::new(),
            writes: WriteRun::default(),
            received_to,
        }
    }

    fn now(&self) -> Time {
        Time::from_micros(self.start.elapsed().as_micros() as u64)
    }

    fn notify(&self, assignment: AssignmentSerial, r: Receiving, result: Result<ReceivedFile, String>) {
        if let Some(to) = &self.received_to {
            to.do_send(AssignmentReceived { assignment, from: r.sender, targets: r.targets, result });
        }
    }

    /// Writes the run of frames, if any; a failure fails the session.
    fn flush_writes(&mut self) {
        let run = std::mem::take(&mut self.writes.pieces);
        if run.is_empty() {
            return;
        }
        let session = self.writes.session;
        let Some(r) = self.files.get(&session) else {
            return;
        };
        if let Err(e) = write_pieces_at(&r.file, &run, self.writes.offset) {
            let error = format!("cannot write {}: {e}", r.path.display());
            let now = self.now();
            self.core.handle_write_failed(now, session, error);
        }
        // Keep the allocation for the next run.
        self.writes.pieces = run;
        self.writes.pieces.clear();
    }

    fn handle_event(&mut self, ev: ReceiverEvent, ctx: &mut Context<Self>) {
        // The common case first, and without reading the clock.
        let ev = match ev {
            ReceiverEvent::Write { session, offset, data } => {
                if let Err(data) = self.writes.extend(session, offset, data) {
                    self.flush_writes();
                    let _ = self.writes.extend(session, offset, data);
                }
                return;
            }
            ev => ev,
        };
        // Whatever comes next (a read-back, a rename) needs the frames on disk.
        self.flush_writes();
        let now = self.now();
        match ev {
            ReceiverEvent::Started { session, sender, assignment, size, targets, .. } => {
                let path = self.dir.join(format!("{assignment}.{session}.part"));
                let opened = OpenOptions::new()
                    .create(true)
                    .truncate(true)
                    .read(true)
                    .write(true)
                    .open(&path)
                    .and_then(|f| f.set_len(size).map(|_| f));
                match opened {
                    Ok(file) => {
                        tracing::info!(event = "mctp_receive_start", session = session.0, assignment = assignment.0, size, from = %sender);
                        self.files.insert(session, Receiving { file, path, sender, targets });
                    }
                    Err(e) => self.core.handle_write_failed(
                        now,
                        session,
                        format!("cannot create {}: {e}", path.display()),
                    ),
                }
            }
            ReceiverEvent::Write { .. } => {}
            ReceiverEvent::Verify { session, from, hasher } => {
                let Some(r) = self.files.get(&session) else {
                    return;
                };
                // Off the actor's thread: reading back a large file takes
                // seconds, and meanwhile the core answers polls "verifying".
                let path = r.path.clone();
                let file = r.file.try_clone();
                let work = tokio::task::spawn_blocking(move || read_rest(&mut file?, from, *hasher));
                ctx.spawn(work.into_actor(self).map(move |res, act, ctx| {
                    let now = act.now();
                    match res.map_err(io::Error::other).and_then(|r| r) {
                        Ok(digest) => act.core.handle_verified(now, session, digest),
                        Err(e) => {
                            let error = format!("cannot read back {}: {e}", path.display());
                            act.core.handle_write_failed(now, session, error);
                        }
                    }
                    act.drive(ctx);
                }));
            }
            ReceiverEvent::Completed { session, assignment, size, hash } => {
                let Some(r) = self.files.remove(&session) else {
                    return;
                };
                let path = assignment_path(&self.dir, assignment);
                let result = r
                    .file
                    .sync_all()
                    .and_then(|_| std::fs::rename(&r.path, &path))
                    .map(|_| ReceivedFile { path, size, hash })
                    .map_err(|e| format!("cannot store assignment {assignment}: {e}"));
                tracing::info!(
                    event = "mctp_received",
                    session = session.0,
                    assignment = assignment.0,
                    size,
                    ok = result.is_ok()
                );
                self.notify(assignment, r, result);
            }
            ReceiverEvent::Failed { session, assignment, error } => {
                tracing::warn!(event = "mctp_receive_failed", session = session.0, assignment = assignment.0, %error);
                if let Some(r) = self.files.remove(&session) {
                    let _ = std::fs::remove_file(&r.path);
                    self.notify(assignment, r, Err(error));
                }
            }
            ReceiverEvent::Abandoned { session, assignment } => {
                tracing::warn!(event = "mctp_abandoned", session = session.0, assignment = assignment.0);
                if let Some(r) = self.files.remove(&session) {
                    let _ = std::fs::remove_file(&r.path);
                    let error = "the leader went silent before the assignment was complete";
                    self.notify(assignment, r, Err(error.into()));
                }
            }
        }
    }

    /// Drains both cores, then re-arms the one timer.
    fn drive(&mut self, ctx: &mut Context<Self>) {
        // Events may feed the core (verification, a failed write), which
        // may add events.
        loop {
            while let Some(ev) = self.core.poll_event() {
                self.handle_event(ev, ctx);
            }
            if self.writes.pieces.is_empty() {
                break;
            }
            self.flush_writes();
        }
        let mut buf = Vec::with_capacity(1500);
        while let Some((to, msg)) = self.core.poll_transmit() {
            if let Message::Status(s) = &msg {
                if s.kind == StatusKind::Nack && !s.missing.is_empty() {
                    metrics::counter!("cmover_mctp_nacks_total", "node" => crate::metrics::node_label(self.channel.node()))
                        .increment(1);
                }
            }
            buf.clear();
            msg.encode(&mut buf);
            if let Err(e) = self.channel.send(Dest::Node(to), &buf) {
                tracing::debug!(event = "mctp_report_failed", %to, error = %e);
            }
        }
        while let Some((to, msg)) = self.reporter.poll_transmit() {
            if let Err(e) = self.channel.send(Dest::Node(to), &msg.to_bytes()) {
                tracing::debug!(event = "report_send_failed", %to, error = %e);
            }
        }
        let next = [self.core.poll_timeout(), self.reporter.poll_timeout()].into_iter().flatten().min();
        let now = self.now();
        arm_timer(self, ctx, now, next);
    }
}

/// Hashes `file` from `from` to its end into `hasher`, through a fixed buffer.
fn read_rest(file: &mut File, from: u64, mut hasher: Sha256) -> io::Result<[u8; 32]> {
    file.seek(SeekFrom::Start(from))?;
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            return Ok(hasher.finish());
        }
        hasher.update(&buf[..n]);
    }
}

impl Driven for MulticastReceiver {
    fn timer(&mut self) -> &mut DriverTimer {
        &mut self.timer
    }

    fn fire(&mut self, ctx: &mut Context<Self>) {
        let now = self.now();
        if self.core.poll_timeout().is_some_and(|t| t <= now) {
            self.core.handle_timeout(now);
        }
        if self.reporter.poll_timeout().is_some_and(|t| t <= now) {
            self.reporter.handle_timeout(now);
        }
        self.drive(ctx);
    }
}

impl Actor for MulticastReceiver {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        for s in self.incoming.drain(..) {
            ctx.add_stream(s);
        }
    }

    fn stopped(&mut self, _ctx: &mut Context<Self>) {
        for (_, r) in self.files.drain() {
            let _ = std::fs::remove_file(&r.path);
        }
    }
}

impl StreamHandler<Batch> for MulticastReceiver {
    fn handle(&mut self, batch: Batch, ctx: &mut Context<Self>) {
        let now = self.now();
        let channel = self.channel.clone();
        for (from, payload) in channel.accept_batch(batch) {
            match payload.first() {
                Some(&t) if is_mctp_tag(t) => match Message::decode(&payload) {
                    Ok(msg) => self.core.handle_datagram(now, from, msg),
                    Err(e) => tracing::debug!(event = "mctp_undecodable", %from, error = %e),
                },
                Some(&t) if reports::is_report_tag(t) => {
                    if let Ok(msg) = reports::Message::decode(&payload) {
                        self.reporter.handle_datagram(now, from, msg);
                    }
                }
                _ => {}
            }
        }
        self.drive(ctx);
    }

    fn finished(&mut self, _ctx: &mut Context<Self>) {}
}

impl Handler<ReportResult> for MulticastReceiver {
    type Result = ();

    fn handle(&mut self, msg: ReportResult, ctx: &mut Context<Self>) {
        let now = self.now();
        self.reporter.report(now, msg.leader, msg.assignment, msg.result);
        self.drive(ctx);
    }
}

impl Handler<AnnounceHeard> for MulticastReceiver {
    type Result = ();

    fn handle(&mut self, msg: AnnounceHeard, ctx: &mut Context<Self>) {
        let now = self.now();
        self.core.handle_datagram(now, msg.leader, Message::Announce(msg.announce));
        self.drive(ctx);
    }
}

impl Handler<MarkHeld> for MulticastReceiver {
    type Result = ();

    fn handle(&mut self, msg: MarkHeld, ctx: &mut Context<Self>) {
        self.core.mark_held(msg.assignment, msg.hash);
        self.drive(ctx);
    }
}
