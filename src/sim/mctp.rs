//! Simulation of MCTP (and of the report collection that follows it) over
//! the seeded virtual-time [`Network`].
//!
//! Node 0 is the group leader running a [`Sender`]; nodes `1..=N` run a
//! [`Receiver`] each and keep the bytes they are told to write in memory,
//! so the run can check that every live member ends with a byte-identical
//! copy. Every datagram goes through the real codec. The summary is what
//! `cmover sim mctp` prints; a failing run names its seed.
//!
//! Bystanders (DESIGN §4 "Only targets"): members `N+1..=N+B` share the
//! segment, and so hear every multicast datagram, but are not targets of
//! the session. The run fails as soon as one of them is told to create,
//! write or deliver anything, or sends anything but the query of one that
//! missed every announce.

use std::time::Duration;

use bytes::Bytes;
use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

use crate::protocol::crypto::sha256;
use crate::protocol::ids::{AssignmentSerial, NodeId};
use crate::protocol::mctp::{
    ideal_arq_ratio, Dest, Message, Outcome, Receiver, ReceiverConfig, ReceiverEvent, Sender, SenderConfig,
    SenderEvent,
};
use crate::protocol::reports::{self, Collector, CollectorConfig, Reporter};
use crate::protocol::time::Time;

use super::net::{Burst, LinkFaults, NetStats, Network};

/// One simulated run.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// Members of the segment that are the session's targets (the leader not counted).
    pub receivers: usize,
    /// Further members of the segment that are not targets: they hear
    /// everything and must take no part.
    pub bystanders: usize,
    /// Assignment size.
    pub bytes: u64,
    /// Loss probability per datagram and receiver (average loss with `burst`).
    pub loss: f64,
    /// Bursty loss (Gilbert–Elliott) with `loss` as its average.
    pub burst: bool,
    /// Probability a datagram is delivered twice.
    pub duplicate: f64,
    /// Extra random delay per datagram (reorders).
    pub jitter: Duration,
    /// The seed of everything.
    pub seed: u64,
    /// Crash this member (0-based) once this fraction of pass 1 is sent.
    pub crash: Option<(usize, f64)>,
    /// This member (0-based) starts only after this much virtual time.
    pub late_join: Option<(usize, Duration)>,
    /// Members that hold the assignment before the session.
    pub already_have: Vec<usize>,
    /// Also run report collection after the transfer.
    pub collect_reports: bool,
    /// Sender settings.
    pub sender: SenderConfig,
    /// Receiver settings.
    pub receiver: ReceiverConfig,
    /// Report collection settings.
    pub collector: CollectorConfig,
    /// Stop (as a failure) after this much virtual time.
    pub max_virtual: Duration,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            receivers: 8,
            bystanders: 0,
            bytes: 1_000_000,
            loss: 0.0,
            burst: false,
            duplicate: 0.0,
            jitter: LinkFaults::default().jitter,
            seed: 1,
            crash: None,
            late_join: None,
            already_have: Vec::new(),
            collect_reports: true,
            sender: SenderConfig::default(),
            receiver: ReceiverConfig::default(),
            collector: CollectorConfig::default(),
            max_virtual: Duration::from_secs(3600),
        }
    }
}

/// What `cmover sim mctp --json` prints: exactly these keys.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Summary {
    /// Members.
    pub receivers: usize,
    /// Members that ended with a byte-identical, hash-verified copy.
    pub completed: usize,
    /// Passes sent.
    pub passes: u32,
    /// Frames in the assignment.
    pub frames_needed: u32,
    /// Frames sent (a multicast counts once).
    pub frames_sent: u64,
    /// `frames_sent / frames_needed`.
    pub transmission_ratio: f64,
    /// The expected ratio of a perfect NACK-aggregating ARQ for these N and P.
    pub ideal_arq_ratio: f64,
    /// Datagrams sent by members during the transfer, per member.
    pub report_datagrams_per_receiver: f64,
    /// Virtual time until the sender finished.
    pub virtual_ms: u64,
}

/// Everything a run produced.
#[derive(Debug, Clone)]
pub struct SimResult {
    /// The printed summary.
    pub summary: Summary,
    /// The sender's account of the session.
    pub outcome: Outcome,
    /// Per member: holds a byte-identical copy whose hash its core verified.
    pub verified: Vec<bool>,
    /// Report collection's account, when run.
    pub reports: Option<reports::Outcome>,
    /// What the network did.
    pub net: NetStats,
}

/// A failed run: the seed re-runs it exactly.
#[derive(Debug, Clone, thiserror::Error)]
#[error("mctp simulation with seed {seed} failed: {message}")]
pub struct SimError {
    /// The seed.
    pub seed: u64,
    /// What went wrong.
    pub message: String,
}

struct Member {
    core: Option<Receiver>,
    data: Vec<u8>,
    verified: bool,
    joins_at: Option<Time>,
}

/// The node id of member `i` (0-based); the leader is `NodeId(0)`.
pub fn member_id(i: usize) -> NodeId {
    NodeId(i as u64 + 1)
}

/// Runs one simulation.
pub fn run(cfg: &SimConfig) -> Result<SimResult, SimError> {
    let fail = |message: String| SimError { seed: cfg.seed, message };
    let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed);
    let mut source = vec![0u8; usize::try_from(cfg.bytes).map_err(|e| fail(e.to_string()))?];
    rng.fill_bytes(&mut source);
    let hash = sha256(&source);
    let assignment = AssignmentSerial(1);

    let mut faults =
        LinkFaults { loss: cfg.loss, duplicate: cfg.duplicate, jitter: cfg.jitter, ..LinkFaults::default() };
    if cfg.burst && cfg.loss > 0.0 {
        let p_leave = 0.25;
        let avg = cfg.loss.min(0.9);
        faults.loss = 0.0;
        faults.burst = Some(Burst { p_enter: avg * p_leave / (1.0 - avg), p_leave, loss: 1.0 });
    }
    let n = cfg.receivers;
    let mut net: Network<Bytes> = Network::new(n + cfg.bystanders + 1, rng.next_u64(), faults);
    let mut sender = Sender::new(cfg.sender.clone(), rng.next_u64());
    let mut members: Vec<Member> = (0..n)
        .map(|i| {
            let mut core = Receiver::new(member_id(i), cfg.receiver.clone(), rng.next_u64());
            let holds = cfg.already_have.contains(&i);
            if holds {
                core.mark_held(assignment, hash);
            }
            let joins_at = cfg.late_join.filter(|(j, _)| *j == i).map(|(_, d)| Time::ZERO + d);
            Member {
                core: Some(core).filter(|_| joins_at.is_none()),
                data: if holds { source.clone() } else { Vec::new() },
                verified: holds,
                joins_at,
            }
        })
        .collect();
    for (i, m) in members.iter().enumerate() {
        if m.joins_at.is_some() {
            net.crash(i + 1);
        }
    }
    // Bystanders hold the assignment, some of them: not even "complete" may come back.
    let mut bystanders: Vec<Receiver> = (n..n + cfg.bystanders)
        .map(|i| {
            let mut core = Receiver::new(member_id(i), cfg.receiver.clone(), rng.next_u64());
            if i % 2 == 1 {
                core.mark_held(assignment, hash);
            }
            core
        })
        .collect();
    let targets: Vec<NodeId> = (0..n).map(member_id).collect();
    let mut now = Time::ZERO;
    sender.send_assignment(now, assignment, cfg.bytes, hash, targets.clone());
    let mut member_datagrams = 0u64;
    let mut frames_sent_pass1 = 0u64;
    let mut crashed = false;
    let mut outcome = None;
    let mut buf = Vec::with_capacity(2048);
    loop {
        // Drain every core's output at `now`.
        while let Some(t) = sender.poll_transmit(now) {
            buf.clear();
            t.encode(&mut source, &mut buf).map_err(|e| fail(format!("reading the source: {e}")))?;
            if matches!(t.payload, crate::protocol::mctp::Payload::Frame { pass: 1, .. }) {
                frames_sent_pass1 += 1;
            }
            let bytes = Bytes::copy_from_slice(&buf);
            match t.dest {
                Dest::Group => net.multicast(now, 0, bytes),
                Dest::Node(id) => net.send(now, 0, id.0 as usize, bytes),
            }
        }
        while let Some(ev) = sender.poll_event() {
            if let SenderEvent::Finished(o) = ev {
                outcome = Some(o);
            }
        }
        for (i, m) in members.iter_mut().enumerate() {
            let Some(core) = m.core.as_mut() else {
                continue;
            };
            drain_member(now, core, &mut m.data, &source, &mut m.verified);
            while let Some((to, msg)) = core.poll_transmit() {
                member_datagrams += 1;
                net.send(now, i + 1, to.0 as usize, msg.to_bytes());
            }
        }
        for (j, core) in bystanders.iter_mut().enumerate() {
            if let Some(ev) = core.poll_event() {
                return Err(fail(format!("bystander {} (not a target) was told {ev:?}", member_id(n + j))));
            }
            while let Some((to, msg)) = core.poll_transmit() {
                // A bystander that missed every announce asks for one when it
                // hears a frame (it cannot know the session is not its own);
                // anything else is taking part.
                if !matches!(msg, Message::Query { .. }) {
                    return Err(fail(format!(
                        "bystander {} (not a target) sent {msg:?} to {to}",
                        member_id(n + j)
                    )));
                }
                net.send(now, n + j + 1, to.0 as usize, msg.to_bytes());
            }
        }
        if let Some((victim, fraction)) = cfg.crash {
            if !crashed && frames_sent_pass1 as f64 >= fraction * f64::from(sender_frames(cfg)) {
                crashed = true;
                net.crash(victim + 1);
                members[victim].core = None;
            }
        }
        if outcome.is_some() {
            break;
        }
        // Jump to the next event.
        let next = [
            net.next_time(),
            sender.poll_timeout(),
            members.iter().filter_map(|m| m.core.as_ref().and_then(|c| c.poll_timeout())).min(),
            members.iter().filter_map(|m| m.joins_at).min(),
            bystanders.iter().filter_map(Receiver::poll_timeout).min(),
        ]
        .into_iter()
        .flatten()
        .min();
        let Some(next) = next else {
            return Err(fail("nothing left to happen but the sender has not finished".into()));
        };
        now = now.max(next);
        if now - Time::ZERO > cfg.max_virtual {
            return Err(fail(format!("no outcome after {:?} of virtual time", cfg.max_virtual)));
        }
        for (i, m) in members.iter_mut().enumerate() {
            if m.joins_at.is_some_and(|t| t <= now) {
                m.joins_at = None;
                let mut core = Receiver::new(member_id(i), cfg.receiver.clone(), cfg.seed ^ (i as u64 + 99));
                if m.verified {
                    core.mark_held(assignment, hash);
                }
                m.core = Some(core);
                net.restart(i + 1);
            }
        }
        while let Some(d) = net.pop_due(now) {
            let msg = Message::decode(&d.msg).map_err(|e| fail(format!("undecodable datagram: {e}")))?;
            if d.to == 0 {
                sender.handle_datagram(now, NodeId(d.from as u64), msg);
            } else if d.to > n {
                bystanders[d.to - n - 1].handle_datagram(now, NodeId(0), msg);
            } else if let Some(core) = members[d.to - 1].core.as_mut() {
                core.handle_datagram(now, NodeId(0), msg);
            }
        }
        if sender.poll_timeout().is_some_and(|t| t <= now) {
            sender.handle_timeout(now);
        }
        for m in members.iter_mut() {
            if let Some(core) = m.core.as_mut() {
                if core.poll_timeout().is_some_and(|t| t <= now) {
                    core.handle_timeout(now);
                }
            }
        }
        for core in bystanders.iter_mut() {
            if core.poll_timeout().is_some_and(|t| t <= now) {
                core.handle_timeout(now);
            }
        }
    }
    if let Some(j) = bystanders.iter().position(|b| b.sessions() > 0) {
        return Err(fail(format!("bystander {} (not a target) holds session state", member_id(n + j))));
    }
    let outcome = outcome.unwrap_or_else(|| unreachable!("loop ends with an outcome"));
    let virtual_ms = (now - Time::ZERO).as_millis() as u64;
    let verified: Vec<bool> = members.iter().map(|m| m.verified && m.data == source).collect();
    let summary = Summary {
        receivers: n,
        completed: verified.iter().filter(|&&v| v).count(),
        passes: outcome.passes,
        frames_needed: outcome.frames_needed,
        frames_sent: outcome.frames_sent,
        transmission_ratio: outcome.frames_sent as f64 / f64::from(outcome.frames_needed.max(1)),
        ideal_arq_ratio: ideal_arq_ratio(n as u32, cfg.loss),
        report_datagrams_per_receiver: member_datagrams as f64 / n.max(1) as f64,
        virtual_ms,
    };
    let reports = if cfg.collect_reports {
        Some(collect_reports(cfg, &mut net, &members, &targets, now, &fail)?)
    } else {
        None
    };
    Ok(SimResult { summary, outcome, verified, reports, net: net.stats() })
}

fn sender_frames(cfg: &SimConfig) -> u32 {
    if cfg.bytes <= cfg.sender.block_size {
        1
    } else {
        crate::protocol::mctp::frame_count(cfg.bytes, cfg.sender.frame_size).unwrap_or(1)
    }
}

/// Applies a member core's events to its in-memory file.
fn drain_member(now: Time, core: &mut Receiver, data: &mut Vec<u8>, source: &[u8], verified: &mut bool) {
    while let Some(ev) = core.poll_event() {
        match ev {
            ReceiverEvent::Started { size, .. } => {
                data.clear();
                data.resize(size as usize, 0);
            }
            ReceiverEvent::Write { offset, data: d, .. } => {
                let at = offset as usize;
                data[at..at + d.len()].copy_from_slice(&d);
            }
            ReceiverEvent::Verify { session, from, mut hasher } => {
                hasher.update(&data[from as usize..]);
                core.handle_verified(now, session, hasher.finish());
            }
            ReceiverEvent::Completed { hash, .. } => {
                *verified = hash == sha256(data) && data.as_slice() == source;
            }
            ReceiverEvent::Failed { .. } | ReceiverEvent::Abandoned { .. } => {}
        }
    }
}

/// After the transfer, every member that completed reports success, every
/// other live member a failure; crashed members stay silent.
fn collect_reports(
    cfg: &SimConfig,
    net: &mut Network<Bytes>,
    members: &[Member],
    targets: &[NodeId],
    start: Time,
    fail: &dyn Fn(String) -> SimError,
) -> Result<reports::Outcome, SimError> {
    let mut now = start;
    let assignment = AssignmentSerial(1);
    let mut collector = Collector::new(cfg.collector.clone(), cfg.seed ^ 0x5eed);
    collector.collect(now, assignment, targets.to_vec());
    let mut reporters: Vec<Option<Reporter>> = members
        .iter()
        .enumerate()
        .map(|(i, m)| {
            m.core.as_ref().map(|_| {
                let mut r = Reporter::new(member_id(i), cfg.collector.clone(), cfg.seed ^ i as u64);
                let result = if m.verified { Ok(()) } else { Err("assignment not received".to_string()) };
                r.report(now, NodeId(0), assignment, result);
                r
            })
        })
        .collect();
    loop {
        while let Some((dest, msg)) = collector.poll_transmit() {
            match dest {
                Dest::Group => net.multicast(now, 0, msg.to_bytes()),
                Dest::Node(id) => net.send(now, 0, id.0 as usize, msg.to_bytes()),
            }
        }
        if let Some(o) = collector.poll_event() {
            return Ok(o);
        }
        for (i, r) in reporters.iter_mut().enumerate() {
            if let Some(r) = r {
                while let Some((to, msg)) = r.poll_transmit() {
                    net.send(now, i + 1, to.0 as usize, msg.to_bytes());
                }
            }
        }
        let next = [
            net.next_time(),
            collector.poll_timeout(),
            reporters.iter().flatten().filter_map(|r| r.poll_timeout()).min(),
        ]
        .into_iter()
        .flatten()
        .min()
        .ok_or_else(|| fail("report collection stalled".into()))?;
        now = now.max(next);
        while let Some(d) = net.pop_due(now) {
            let Ok(msg) = reports::Message::decode(&d.msg) else {
                continue; // a late MCTP datagram
            };
            if d.to == 0 {
                collector.handle_datagram(now, NodeId(d.from as u64), msg);
            } else if let Some(r) = reporters.get_mut(d.to - 1).and_then(Option::as_mut) {
                // Bystanders (past the reporters) hold no result and answer nothing.
                r.handle_datagram(now, NodeId(0), msg);
            }
        }
        if collector.poll_timeout().is_some_and(|t| t <= now) {
            collector.handle_timeout(now);
        }
        for r in reporters.iter_mut().flatten() {
            if r.poll_timeout().is_some_and(|t| t <= now) {
                r.handle_timeout(now);
            }
        }
    }
}
