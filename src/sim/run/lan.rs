//! The segments: one seeded [`Network`] per LAN, carrying the control
//! channel (the real [`Elector`] of every server) and the data channel (the
//! leader's MCTP [`Sender`] and report [`Collector`], every member's
//! [`Receiver`] and [`Reporter`], in their real codecs). A leader's job is
//! wired as the group leader actor wires it: apply here if targeted,
//! multicast to the other targets, collect the reports of those that
//! acknowledged (rounds until `report_timeout`), name the rest failed or
//! silent, post the result.

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use rand::{Rng, RngCore};
use rand_chacha::ChaCha8Rng;

use super::world::World;
use super::{Fault, Holding, RunSimConfig};
use crate::protocol::api::ServerOutcome;
use crate::protocol::control::{ControlMsg, MemberInfo};
use crate::protocol::election::{self, Elector, ElectorConfig, Event};
use crate::protocol::ids::{AssignmentSerial, NodeId};
use crate::protocol::mctp::{
    self, Message, Payload, Receiver, ReceiverEvent, Sender, SenderEvent, SessionId,
};
use crate::protocol::reports::{self, Collector, Reporter};
use crate::protocol::time::Time;
use crate::sim::election::random_inputs;
use crate::sim::net::{Delivery, LinkFaults, Network};

/// Assignments a restarted server primes its receiver and reporter with
/// (the content interpreter's `PRIME_RECENT`).
const PRIME_RECENT: usize = 32;

/// A datagram on a segment's LAN.
#[derive(Debug, Clone)]
pub(super) enum Dgram {
    /// The control channel (election and membership).
    Control(ControlMsg),
    /// The data channel: an MCTP or report message, encoded.
    Data(Bytes),
}

/// One segment's LAN.
pub(super) struct Lan {
    pub(super) net: Network<Dgram>,
    /// The global index of its first server.
    base: usize,
    /// The wake-up armed, and its generation (older ones are stale).
    pub(super) wake: Option<Time>,
    pub(super) generation: u64,
}

impl Lan {
    pub(super) fn new(base: usize, servers: usize, seed: u64, loss: f64) -> Lan {
        let faults =
            LinkFaults { loss, duplicate: if loss > 0.0 { 0.01 } else { 0.0 }, ..LinkFaults::default() };
        let mut net = Network::new(servers, seed, faults);
        for i in 0..servers {
            net.crash(i); // until it starts
        }
        Lan { net, base, wake: None, generation: 0 }
    }
}

/// Where a leader's job is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Stage {
    Fetching,
    Forwarding,
    Sending,
    Collecting,
    Reporting,
}

/// One assignment's job on a leader.
#[derive(Debug, Clone)]
pub(super) struct Job {
    targets: Vec<NodeId>,
    pub(super) stage: Stage,
    servers: BTreeMap<NodeId, ServerOutcome>,
    deadline: Time,
    pub(super) failures: u32,
}

impl Job {
    pub(super) fn new(targets: Vec<NodeId>) -> Job {
        Job { targets, stage: Stage::Fetching, servers: BTreeMap::new(), deadline: Time::ZERO, failures: 0 }
    }
}

/// A running agent process: its cores and what it keeps in memory.
pub(super) struct Proc {
    pub(super) inc: u64,
    elector: Elector,
    pub(super) receiver: Receiver,
    reporter: Reporter,
    sender: Sender,
    collector: Collector,
    pub(super) leading: bool,
    pub(super) jobs: BTreeMap<u64, Job>,
    /// Files being received: session → (sender, bytes).
    files: BTreeMap<SessionId, (NodeId, Vec<u8>)>,
    /// Verified copies being applied: (done at, assignment, report to, intact).
    applies: Vec<(Time, u64, NodeId, bool)>,
}

/// A server.
pub(super) struct Node {
    pub(super) id: NodeId,
    config: ElectorConfig,
    /// Its agent process, while up (boxed: drivers take it out and put it back).
    pub(super) proc: Option<Box<Proc>>,
    /// The site on its disk.
    pub(super) site: Holding,
    /// Assignments its content interpreter carried out, with their hash, if it succeeded.
    done: BTreeMap<u64, Option<[u8; 32]>>,
    /// When its process next has something to do (kept by [`World::drain_node`],
    /// which runs after every input to the process).
    wake: Option<Time>,
}

impl Node {
    pub(super) fn new(cfg: &RunSimConfig, i: usize, per: usize, site: Holding, rng: &mut ChaCha8Rng) -> Node {
        let id = NodeId(i as u64 + 1);
        let config = ElectorConfig {
            timers: cfg.election,
            membership: cfg.membership,
            preempt: false,
            gl_capable: true,
            priority: random_inputs(rng),
            info: MemberInfo {
                http: format!("10.{}.0.{}:7480", i / per, i % per + 1),
                data: String::new(),
                name: format!("server-{id}"),
                serials: Vec::new(),
            },
        };
        Node { id, config, proc: None, site, done: BTreeMap::new(), wake: None }
    }
}

fn min_time(a: Option<Time>, b: Option<Time>) -> Option<Time> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

impl Proc {
    fn wake(&self) -> Option<Time> {
        [
            self.elector.poll_timeout(),
            self.receiver.poll_timeout(),
            self.reporter.poll_timeout(),
            self.sender.poll_timeout(),
            self.collector.poll_timeout(),
            self.applies.iter().map(|a| a.0).min(),
        ]
        .into_iter()
        .fold(None, min_time)
    }

    /// Fires every timer due at `now`; true if any was.
    fn fire(&mut self, now: Time) -> bool {
        let due = |t: Option<Time>| t.is_some_and(|t| t <= now);
        let mut fired = false;
        if due(self.elector.poll_timeout()) {
            self.elector.handle_timeout(now);
            fired = true;
        }
        if due(self.receiver.poll_timeout()) {
            self.receiver.handle_timeout(now);
            fired = true;
        }
        if due(self.reporter.poll_timeout()) {
            self.reporter.handle_timeout(now);
            fired = true;
        }
        if due(self.sender.poll_timeout()) {
            self.sender.handle_timeout(now);
            fired = true;
        }
        if due(self.collector.poll_timeout()) {
            self.collector.handle_timeout(now);
            fired = true;
        }
        fired || self.applies.iter().any(|a| a.0 <= now)
    }
}

impl World {
    fn local(&self, i: usize) -> usize {
        i % self.per
    }

    /// The global index of `id` if it is on segment `seg`.
    fn on_segment(&self, seg: usize, id: NodeId) -> Option<usize> {
        let i = usize::try_from(id.0).ok()?.checked_sub(1)?;
        (i < self.nodes.len() && self.seg(i) == seg).then_some(i)
    }

    /// When segment `seg` next has something to do.
    pub(super) fn segment_wake(&self, seg: usize) -> Option<Time> {
        let lan = &self.lans[seg];
        let base = lan.base;
        self.nodes[base..base + self.per].iter().map(|n| n.wake).fold(lan.net.next_time(), min_time)
    }

    /// Starts server `i`'s agent (a new process, a new incarnation).
    pub(super) fn start_node(&mut self, i: usize) {
        self.incarnations += 1;
        let inc = self.incarnations;
        let now = self.now;
        let n = &self.nodes[i];
        let seed = self.rng.next_u64();
        let mut elector = Elector::new(n.config.clone(), n.id, seed);
        elector.handle_timeout(now);
        let mut receiver = Receiver::new(n.id, self.cfg.receiver.clone(), seed ^ 1);
        let mut reporter = Reporter::new(n.id, self.cfg.collector.clone(), seed ^ 2);
        // Copies already carried out: "complete" to a leader announcing them
        // again, and their result to a leader that asks for it.
        for (&id, hash) in n.done.iter().rev().take(PRIME_RECENT) {
            if let Some(hash) = hash {
                receiver.mark_held(AssignmentSerial(id), *hash);
                reporter.report(now, n.id, AssignmentSerial(id), Ok(()));
            }
        }
        self.nodes[i].proc = Some(Box::new(Proc {
            inc,
            elector,
            receiver,
            reporter,
            sender: Sender::new(self.cfg.sender.clone(), seed ^ 3),
            collector: Collector::new(self.cfg.collector.clone(), seed ^ 4),
            leading: false,
            jobs: BTreeMap::new(),
            files: BTreeMap::new(),
            applies: Vec::new(),
        }));
        let (seg, local) = (self.seg(i), self.local(i));
        self.lans[seg].net.restart(local);
        self.drain_node(i);
    }

    /// Server `i` crashes: its process and everything in memory are gone.
    pub(super) fn crash_node(&mut self, i: usize) {
        self.nodes[i].proc = None;
        self.nodes[i].wake = None;
        let (seg, local) = (self.seg(i), self.local(i));
        self.lans[seg].net.crash(local);
        self.touched.insert(seg);
    }

    /// Everything due on segment `seg` at `now`.
    pub(super) fn step_segment(&mut self, seg: usize) {
        let now = self.now;
        let base = self.lans[seg].base;
        loop {
            let mut any = false;
            while let Some(d) = self.lans[seg].net.pop_due(now) {
                any = true;
                self.deliver(base, d);
            }
            for i in base..base + self.per {
                if self.nodes[i].wake.is_none_or(|t| t > now) {
                    continue;
                }
                if self.nodes[i].proc.as_mut().is_some_and(|p| p.fire(now)) {
                    any = true;
                }
                self.drain_node(i);
            }
            if !any {
                break;
            }
        }
        self.touched.insert(seg);
    }

    fn deliver(&mut self, base: usize, d: Delivery<Dgram>) {
        let (to, from) = (base + d.to, self.nodes[base + d.from].id);
        let now = self.now;
        let Some(p) = self.nodes[to].proc.as_mut() else { return };
        match d.msg {
            Dgram::Control(m) => p.elector.handle_datagram(now, from, m),
            Dgram::Data(b) => {
                let Some(&tag) = b.first() else { return };
                if reports::is_report_tag(tag) {
                    match reports::Message::decode(&b) {
                        Ok(m @ reports::Message::Report { .. }) => p.collector.handle_datagram(now, from, m),
                        Ok(m @ reports::Message::Request { .. }) => p.reporter.handle_datagram(now, from, m),
                        Err(_) => {}
                    }
                } else {
                    match Message::decode(&b) {
                        Ok(m @ (Message::Status(_) | Message::Query { .. })) => {
                            p.sender.handle_datagram(now, from, m)
                        }
                        Ok(m) => p.receiver.handle_datagram(now, from, m),
                        Err(_) => {}
                    }
                }
            }
        }
        self.drain_node(to);
    }

    /// Sends `msg` from server `i`: to all of its segment, or to one.
    fn send(&mut self, i: usize, to: Option<NodeId>, msg: Dgram) {
        self.count(1);
        let (seg, now, local) = (self.seg(i), self.now, self.local(i));
        match to {
            None => self.lans[seg].net.multicast(now, local, msg),
            Some(id) => {
                // A report to itself (primed before any leader asked) goes nowhere.
                if let Some(j) = self.on_segment(seg, id).filter(|j| *j != i) {
                    let to = self.local(j);
                    self.lans[seg].net.send(now, local, to, msg);
                }
            }
        }
        self.touched.insert(seg);
    }

    /// Drains server `i`'s cores until they have nothing more to say,
    /// acting on their events.
    pub(super) fn drain_node(&mut self, i: usize) {
        let Some(mut p) = self.nodes[i].proc.take() else { return };
        let now = self.now;
        let mut buf = Vec::with_capacity(2048);
        loop {
            let mut busy = false;
            while let Some(t) = p.elector.poll_transmit() {
                busy = true;
                let to = match t.to {
                    election::Dest::All => None,
                    election::Dest::Node(id) => Some(id),
                };
                self.send(i, to, Dgram::Control(t.msg));
            }
            while let Some(e) = p.elector.poll_event() {
                match e {
                    Event::LeaderElected { me: true, .. } if !p.leading => {
                        p.leading = true;
                        self.leader_elected(i, p.inc);
                    }
                    Event::LeaderElected { me: false, .. } | Event::LeaderLost { .. } => {
                        // Leadership lost: its jobs stop (become_follower).
                        p.leading = false;
                        p.jobs.clear();
                    }
                    _ => {}
                }
            }
            while let Some(ev) = p.receiver.poll_event() {
                busy = true;
                self.receiver_event(i, &mut p, ev);
            }
            while let Some((to, msg)) = p.receiver.poll_transmit() {
                self.send(i, Some(to), Dgram::Data(msg.to_bytes()));
            }
            while let Some((to, msg)) = p.reporter.poll_transmit() {
                self.send(i, Some(to), Dgram::Data(msg.to_bytes()));
            }
            while let Some(t) = p.sender.poll_transmit(now) {
                let assignment = match &t.payload {
                    Payload::Block { block, .. } => Some(block.assignment),
                    Payload::Frame { session, .. } => {
                        p.sender.poll_announce().filter(|a| a.session == *session).map(|a| a.assignment)
                    }
                    Payload::Message(_) => None,
                };
                let mut source =
                    assignment.and_then(|a| self.blobs.get(&a.0)).map(|b| b.0.clone()).unwrap_or_default();
                buf.clear();
                if t.encode(&mut source, &mut buf).is_err() {
                    continue;
                }
                let to = match t.dest {
                    mctp::Dest::Group => None,
                    mctp::Dest::Node(id) => Some(id),
                };
                self.send(i, to, Dgram::Data(Bytes::copy_from_slice(&buf)));
            }
            while let Some(ev) = p.sender.poll_event() {
                if let SenderEvent::Finished(o) = ev {
                    busy = true;
                    self.sent(i, &mut p, o);
                }
            }
            while let Some((dest, msg)) = p.collector.poll_transmit() {
                let to = match dest {
                    mctp::Dest::Group => None,
                    mctp::Dest::Node(id) => Some(id),
                };
                self.send(i, to, Dgram::Data(msg.to_bytes()));
            }
            while let Some(o) = p.collector.poll_event() {
                busy = true;
                self.collected(i, &mut p, o);
            }
            if p.applies.iter().any(|a| a.0 <= now) {
                busy = true;
                let (due, later): (Vec<_>, Vec<_>) = p.applies.drain(..).partition(|a| a.0 <= now);
                p.applies = later;
                for (_, id, leader, intact) in due {
                    let result = if intact {
                        match self.carry_out(i, id) {
                            ServerOutcome::Succeeded => Ok(()),
                            ServerOutcome::Failed { error } => Err(error),
                            ServerOutcome::Silent => Err("silent".into()),
                        }
                    } else {
                        Err(format!("assignment {id} does not match its original"))
                    };
                    let hash = self.blobs.get(&id).map(|b| b.1).filter(|_| result.is_ok());
                    self.nodes[i].done.insert(id, hash);
                    p.reporter.report(now, leader, AssignmentSerial(id), result);
                }
            }
            if !busy {
                break;
            }
        }
        self.nodes[i].wake = p.wake();
        self.nodes[i].proc = Some(p);
        let seg = self.seg(i);
        self.touched.insert(seg);
    }

    fn receiver_event(&mut self, i: usize, p: &mut Proc, ev: ReceiverEvent) {
        let now = self.now;
        match ev {
            ReceiverEvent::Started { session, sender, assignment, size, .. } => {
                self.stored_by_non_target(i, assignment.0);
                let size = usize::try_from(size).unwrap_or(0).min(1 << 20);
                p.files.insert(session, (sender, vec![0; size]));
            }
            ReceiverEvent::Write { session, offset, data } => {
                if let Some((_, f)) = p.files.get_mut(&session) {
                    let at = usize::try_from(offset).unwrap_or(usize::MAX);
                    if let Some(dst) = f.get_mut(at..at.saturating_add(data.len())) {
                        dst.copy_from_slice(&data);
                    }
                }
            }
            ReceiverEvent::Verify { session, from, mut hasher } => {
                if let Some((_, f)) = p.files.get(&session) {
                    hasher.update(f.get(usize::try_from(from).unwrap_or(usize::MAX)..).unwrap_or(&[]));
                }
                p.receiver.handle_verified(now, session, hasher.finish());
            }
            ReceiverEvent::Completed { session, assignment, .. } => {
                let Some((sender, file)) = p.files.remove(&session) else { return };
                let intact = self.blobs.get(&assignment.0).is_some_and(|b| b.0[..] == file[..]);
                // The content interpreter takes a moment; a slow one much longer.
                let mut d = Duration::from_micros(self.rng.random_range(100..5_000));
                if self.faults.contains(&Fault::LateReports) && self.rng.random_bool(0.2) {
                    d += Duration::from_millis(self.rng.random_range(0..3_000));
                }
                p.applies.push((now + d, assignment.0, sender, intact));
            }
            ReceiverEvent::Failed { session, assignment, error } => {
                if let Some((sender, _)) = p.files.remove(&session) {
                    p.reporter.report(now, sender, assignment, Err(error));
                }
            }
            ReceiverEvent::Abandoned { session, .. } => {
                p.files.remove(&session);
            }
        }
    }

    /// Leader `i` has its copy and nobody left to forward to: it applies
    /// here if targeted and multicasts to the other targets.
    pub(super) fn deliver_job(&mut self, i: usize, id: u64) {
        let Some(mut p) = self.nodes[i].proc.take() else { return };
        let me = self.nodes[i].id;
        let now = self.now;
        if let Some(targets) = p.jobs.get(&id).map(|j| j.targets.clone()) {
            let mut outcome = None;
            if targets.contains(&me) {
                let o = self.carry_out(i, id);
                let hash = self.blobs.get(&id).map(|b| b.1).filter(|_| o == ServerOutcome::Succeeded);
                self.nodes[i].done.insert(id, hash);
                outcome = Some(o);
            }
            let others: Vec<NodeId> = targets.into_iter().filter(|t| *t != me).collect();
            let job = p.jobs.get_mut(&id).expect("job");
            if let Some(o) = outcome {
                job.servers.insert(me, o);
            }
            if others.is_empty() {
                job.stage = Stage::Reporting;
                let result = job.servers.clone();
                self.post_result(i, p.inc, id, result);
            } else if let Some((bytes, hash)) = self.blobs.get(&id) {
                job.stage = Stage::Sending;
                p.sender.send_assignment(now, AssignmentSerial(id), bytes.len() as u64, *hash, others);
            }
        }
        self.nodes[i].proc = Some(p);
        self.drain_node(i);
    }

    /// The multicast of an assignment is over: collect from those that
    /// acknowledged; the rest failed (laggards) or are silent.
    fn sent(&mut self, i: usize, p: &mut Proc, o: mctp::Outcome) {
        let id = o.assignment.0;
        let report_timeout = self.cfg.run.report_timeout;
        let now = self.now;
        let Some(job) = p.jobs.get_mut(&id).filter(|j| j.stage == Stage::Sending) else { return };
        let me = self.nodes[i].id;
        let mut collect = Vec::new();
        for n in job.targets.iter().copied().filter(|t| *t != me) {
            if o.acked.contains(&n) || o.already_had.contains(&n) || o.failed.contains(&n) {
                collect.push(n);
            } else if let Some((_, missing)) = o.laggards.iter().find(|(l, _)| *l == n) {
                let error = format!("did not receive the whole assignment: {missing} frames still missing");
                job.servers.insert(n, ServerOutcome::Failed { error });
            } else {
                job.servers.insert(n, ServerOutcome::Silent);
            }
        }
        if collect.is_empty() {
            job.stage = Stage::Reporting;
            let result = job.servers.clone();
            return self.post_result(i, p.inc, id, result);
        }
        job.stage = Stage::Collecting;
        job.deadline = now + report_timeout;
        p.collector.collect(now, o.assignment, collect);
    }

    /// A round of report collection is over: ask again for the silent ones
    /// until `report_timeout`, then post the result.
    fn collected(&mut self, i: usize, p: &mut Proc, o: reports::Outcome) {
        let id = o.assignment.0;
        let now = self.now;
        let Some(job) = p.jobs.get_mut(&id).filter(|j| j.stage == Stage::Collecting) else { return };
        for n in o.succeeded {
            job.servers.insert(n, ServerOutcome::Succeeded);
        }
        for (n, error) in o.failed {
            job.servers.insert(n, ServerOutcome::Failed { error });
        }
        if !o.silent.is_empty() && now < job.deadline {
            p.collector.collect(now, o.assignment, o.silent);
            return;
        }
        for n in o.silent {
            job.servers.insert(n, ServerOutcome::Silent);
        }
        job.stage = Stage::Reporting;
        let result = job.servers.clone();
        self.post_result(i, p.inc, id, result);
    }
}
