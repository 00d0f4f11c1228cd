//! The simulated fleet: the CCM (the run core and its driver), the HTTP
//! hops between the CCM and the leaders (modelled: seeded delays, retries),
//! the faults, and the invariants. The segments' LANs and the cores on
//! every server are in [`super::lan`].

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap};
use std::time::Duration;

use bytes::Bytes;
use rand::{Rng, RngCore};
use rand_chacha::ChaCha8Rng;

use super::lan::{Lan, Node, Stage};
use super::{Fault, Holding, RunSimConfig, Violations, Wire};
use crate::protocol::api::ServerOutcome;
use crate::protocol::crypto::sha256;
use crate::protocol::distribution::Target;
use crate::protocol::ids::{AssignmentId, NodeId};
use crate::protocol::run::{Action, Run, RunState, Saved, Wave};
use crate::protocol::time::Time;

/// Failed next-hop requests after which a leader delivers in its segment
/// anyway (the group leader actor's `NEXT_HOP_ATTEMPTS`).
const NEXT_HOP_ATTEMPTS: u32 = 5;
/// The longest retry delay of a leader's requests to the CCM.
const MAX_RETRY_DELAY: Duration = Duration::from_secs(30);
/// Steps at one instant of virtual time beyond which a run counts as spinning.
const MAX_STEPS_AT_ONE_INSTANT: u32 = 1_000_000;
/// Longest warm-up (elections before the run starts).
const MAX_WARM_UP: Duration = Duration::from_secs(20);

/// The name of segment `seg`.
pub(super) fn segment_name(seg: usize) -> String {
    format!("seg-{}", seg + 1)
}

/// A modelled event (an HTTP hop, a fault, a CCM timer).
#[derive(Debug, Clone)]
pub(super) enum Ev {
    /// The run's timer.
    Timer,
    /// The CCM (re)starts.
    CcmUp,
    /// The CCM goes down.
    CcmDown { down_for: Duration },
    /// An admin cancels.
    Cancel,
    /// The pack (or a header-only assignment) is ready (made by the CCM
    /// process of `epoch`: one that crashed since never answers).
    Made { wave: Wave, epoch: u32 },
    /// A notify reaches server `node`.
    Notify { node: usize, target: Target, from_ccm: bool, id: u64 },
    /// Leader `node` (process `inc`) holds its copy of `id`.
    Fetched { node: usize, inc: u64, id: u64 },
    /// Leader `node` asks the CCM for the next hop of `id`.
    AskNextHop { node: usize, inc: u64, id: u64 },
    /// Leader `node` posts its segment result for `id` to the CCM.
    Report { node: usize, inc: u64, id: u64, result: BTreeMap<NodeId, ServerOutcome> },
    /// Server `node` (process `inc`) posts a segment report if it leads;
    /// `periodic` ones come again.
    SegmentReport { node: usize, inc: u64, periodic: bool },
    /// A server crashes; it restarts after `back_after`, if any.
    Crash { node: usize, back_after: Option<Duration> },
    /// The leader of `seg` crashes and restarts after `down_for`.
    LeaderCrash { seg: usize, down_for: Duration },
    /// A crashed server starts again (a new process).
    Restart { node: usize },
    /// A segment's LAN splits: `side` against the rest.
    Split { seg: usize, side: Vec<usize> },
    /// It heals.
    Heal { seg: usize },
}

/// Everything of one run.
pub(super) struct World {
    pub(super) cfg: RunSimConfig,
    pub(super) rng: ChaCha8Rng,
    pub(super) now: Time,
    queue: BinaryHeap<Reverse<(Time, u64, usize)>>,
    events: Vec<Option<Ev>>,
    seq: u64,
    /// Segment wake-ups: (time, segment, generation).
    wakes: BinaryHeap<Reverse<(Time, usize, u64)>>,
    pub(super) touched: BTreeSet<usize>,
    pub(super) nodes: Vec<Node>,
    pub(super) lans: Vec<Lan>,
    pub(super) per: usize,
    pub(super) group: BTreeSet<NodeId>,
    pub(super) hot_serials: BTreeSet<u64>,
    /// The run's targets (empty before it starts).
    pub(super) plan_targets: BTreeSet<NodeId>,
    pub(super) run: Option<Run>,
    saved: Option<Saved>,
    ccm_up: bool,
    /// The leader (and its incarnation) the CCM last heard of, per segment
    /// (the CCM's segment records: kept across its restarts).
    ccm_leaders: Vec<Option<(NodeId, u64)>>,
    /// Cut off from the CCM until then, per segment.
    cut_until: Vec<Time>,
    next_assignment: u64,
    /// What each assignment says, and its bytes.
    pub(super) wires: BTreeMap<u64, Wire>,
    pub(super) blobs: BTreeMap<u64, (Bytes, [u8; 32])>,
    pub(super) faults: BTreeSet<Fault>,
    /// Datagrams and requests sent while the run was on.
    pub(super) datagrams: u64,
    counting: bool,
    pub(super) violations: Violations,
    pub(super) first_violation: Option<String>,
    pub(super) restarts: u32,
    pub(super) downtime: Duration,
    timer_at: Option<Time>,
    timer_fired: Option<Time>,
    /// The commit was decided (sent): servers that got it may be live even
    /// if their results never came back.
    pub(super) commit_decided: bool,
    /// Servers whose site changed in this step.
    pub(super) dirty: Vec<usize>,
    /// Process incarnations handed out.
    pub(super) incarnations: u64,
    /// Steps taken at the current instant.
    steps_now: u32,
}

impl World {
    /// A fleet of `sites.len()` servers, every one started at a random time
    /// within one LA interval.
    pub(super) fn new(
        cfg: &RunSimConfig,
        mut rng: ChaCha8Rng,
        sites: Vec<Holding>,
        group: Vec<NodeId>,
        hot_serials: BTreeSet<u64>,
        faults: BTreeSet<Fault>,
    ) -> World {
        let per = cfg.servers_per_segment.max(1);
        let nseg = sites.len() / per;
        let loss = if faults.contains(&Fault::Loss) { cfg.loss } else { 0.0 };
        let lans = (0..nseg).map(|s| Lan::new(s * per, per, rng.next_u64(), loss)).collect();
        let nodes =
            sites.into_iter().enumerate().map(|(i, site)| Node::new(cfg, i, per, site, &mut rng)).collect();
        let mut w = World {
            cfg: cfg.clone(),
            rng,
            now: Time::ZERO,
            queue: BinaryHeap::new(),
            events: Vec::new(),
            seq: 0,
            wakes: BinaryHeap::new(),
            touched: BTreeSet::new(),
            nodes,
            lans,
            per,
            group: group.into_iter().collect(),
            hot_serials,
            plan_targets: BTreeSet::new(),
            run: None,
            saved: None,
            ccm_up: true,
            ccm_leaders: vec![None; nseg],
            cut_until: vec![Time::ZERO; nseg],
            next_assignment: 100,
            wires: BTreeMap::new(),
            blobs: BTreeMap::new(),
            faults,
            datagrams: 0,
            counting: false,
            violations: Violations::default(),
            first_violation: None,
            restarts: 0,
            downtime: Duration::ZERO,
            timer_at: None,
            timer_fired: None,
            commit_decided: false,
            dirty: Vec::new(),
            incarnations: 0,
            steps_now: 0,
        };
        let la = cfg.election.la_interval.as_micros() as u64;
        for i in 0..w.nodes.len() {
            let at = Duration::from_micros(w.rng.random_range(0..=la));
            w.at(at, Ev::Restart { node: i });
        }
        w
    }

    pub(super) fn at(&mut self, after: Duration, ev: Ev) {
        self.seq += 1;
        let i = self.events.len();
        self.events.push(Some(ev));
        self.queue.push(Reverse((self.now + after, self.seq, i)));
    }

    pub(super) fn violate(&mut self, which: fn(&mut Violations) -> &mut u64, what: String) {
        *which(&mut self.violations) += 1;
        if self.first_violation.is_none() {
            self.first_violation = Some(what);
        }
    }

    /// Counts `n` datagrams or requests (while the run is on).
    pub(super) fn count(&mut self, n: u64) {
        if self.counting {
            self.datagrams += n;
        }
    }

    fn latency(&mut self) -> Duration {
        Duration::from_micros(self.rng.random_range(500..5_000))
    }

    fn backoff(&self, attempt: u32) -> Duration {
        let base = self.cfg.run.distribution.retry_delay;
        base.saturating_mul(1 << attempt.min(10)).min(MAX_RETRY_DELAY)
    }

    fn reachable(&self, seg: usize) -> bool {
        self.ccm_up && self.now >= self.cut_until[seg]
    }

    fn url(seg: usize, leader: NodeId) -> String {
        format!("sim://{}/{}", segment_name(seg), leader)
    }

    /// The segment of server `node`.
    pub(super) fn seg(&self, node: usize) -> usize {
        node / self.per
    }

    /// The live release of server `id`.
    pub(super) fn live_of(&self, id: NodeId) -> Option<u64> {
        let i = usize::try_from(id.0).ok()?.checked_sub(1)?;
        self.nodes.get(i).map(|n| n.site.live)
    }

    /// Runs the elections until the CCM has heard of a leader in every
    /// segment (or [`MAX_WARM_UP`] passed).
    pub(super) fn warm_up(&mut self) {
        let cap = self.now + MAX_WARM_UP;
        while self.ccm_leaders.iter().any(Option::is_none) {
            if !self.step(cap) {
                break;
            }
        }
    }

    /// Starts the run (the CCM starts it; datagrams count from now).
    pub(super) fn start_run(&mut self, run: Run, targets: &[NodeId]) {
        self.plan_targets = targets.iter().copied().collect();
        self.run = Some(run);
        self.counting = true;
        self.drain();
    }

    /// Draws the run's faults at seeded times within its first seconds.
    pub(super) fn schedule_faults(&mut self) {
        let soon = |rng: &mut ChaCha8Rng| Duration::from_millis(rng.random_range(0..3_000));
        // Crashes within the first second, while most runs are on.
        let early = |rng: &mut ChaCha8Rng| Duration::from_millis(rng.random_range(0..1_000));
        let nseg = self.lans.len();
        let f = self.faults.clone();
        if f.contains(&Fault::LeaderCrash) {
            let (seg, at, down) = (self.rng.random_range(0..nseg), early(&mut self.rng), soon(&mut self.rng));
            self.at(at, Ev::LeaderCrash { seg, down_for: down + Duration::from_millis(200) });
        }
        if f.contains(&Fault::MemberCrash) {
            for _ in 0..self.rng.random_range(1..3) {
                let node = self.rng.random_range(0..self.nodes.len());
                let at = early(&mut self.rng);
                let back_after = self.rng.random_bool(0.5).then(|| soon(&mut self.rng) + soon(&mut self.rng));
                self.at(at, Ev::Crash { node, back_after });
            }
        }
        if f.contains(&Fault::CcmRestart) {
            let (at, down) = (soon(&mut self.rng), soon(&mut self.rng));
            self.at(at, Ev::CcmDown { down_for: down + Duration::from_millis(100) });
        }
        if f.contains(&Fault::Partition) {
            let seg = self.rng.random_range(0..nseg);
            if self.rng.random_bool(0.5) || self.per < 2 {
                let until = self.now + soon(&mut self.rng) + soon(&mut self.rng);
                self.cut_until[seg] = until;
            } else {
                let side: Vec<usize> = (0..self.per).filter(|_| self.rng.random_bool(0.5)).collect();
                let (at, lasts) = (soon(&mut self.rng), soon(&mut self.rng));
                self.at(at, Ev::Split { seg, side });
                self.at(at + lasts, Ev::Heal { seg });
            }
        }
        if f.contains(&Fault::Cancel) {
            let at = Duration::from_millis(self.rng.random_range(0..200));
            self.at(at, Ev::Cancel);
        }
    }

    /// Steps until the run is over or `cap` passed.
    pub(super) fn run_to_end(&mut self, cap: Time) {
        while self.run.as_ref().is_some_and(|r| !r.state().is_final()) {
            if !self.step(cap) {
                break;
            }
        }
        self.counting = false;
    }

    /// One step: the next modelled event or the next segment wake-up; then
    /// the run core's actions and the invariants. False when nothing is
    /// left to happen before `cap`.
    fn step(&mut self, cap: Time) -> bool {
        // Stale wake-ups (a segment re-armed since) are skipped.
        while let Some(&Reverse((_, seg, generation))) = self.wakes.peek() {
            if self.lans[seg].generation == generation {
                break;
            }
            self.wakes.pop();
        }
        let ev_at = self.queue.peek().map(|Reverse((t, _, _))| *t);
        let wake_at = self.wakes.peek().map(|Reverse((t, _, _))| *t);
        let Some(t) = [ev_at, wake_at].into_iter().flatten().min().filter(|t| *t <= cap) else {
            return false;
        };
        if t == self.now {
            self.steps_now += 1;
            if self.steps_now > MAX_STEPS_AT_ONE_INSTANT {
                self.violate(|v| &mut v.bound, format!("the simulation spins at {} µs", t.as_micros()));
                return false;
            }
        } else {
            self.steps_now = 0;
        }
        self.now = t;
        if ev_at == Some(t) {
            let Some(Reverse((_, _, i))) = self.queue.pop() else { return false };
            if let Some(ev) = self.events[i].take() {
                self.handle(ev);
            }
            // Only modelled events reach the run core.
            self.drain();
        } else if let Some(Reverse((_, seg, _))) = self.wakes.pop() {
            self.step_segment(seg);
        }
        self.rearm();
        self.check_dirty();
        true
    }

    /// Re-arms the wake-up of every segment touched in this step.
    fn rearm(&mut self) {
        while let Some(seg) = self.touched.pop_first() {
            let wake = self.segment_wake(seg);
            let lan = &mut self.lans[seg];
            if wake != lan.wake {
                lan.generation += 1;
                lan.wake = wake;
                if let Some(t) = wake {
                    self.wakes.push(Reverse((t, seg, lan.generation)));
                }
            }
        }
    }

    /// Carries out the run core's actions.
    fn drain(&mut self) {
        loop {
            let Some(run) = self.run.as_mut() else { return };
            let Some(action) = run.poll_action() else { break };
            match action {
                Action::Save { .. } => {
                    let run = self.run.as_ref().expect("run");
                    self.saved = Some(Saved {
                        state: run.state(),
                        content: run.content(),
                        applied: run.applied().clone(),
                    });
                }
                Action::Phase(_) | Action::RecordLive { .. } => {}
                Action::Pack => {
                    let d = Duration::from_millis(self.rng.random_range(5..60));
                    let epoch = self.restarts;
                    self.at(d, Ev::Made { wave: Wave::Content, epoch });
                }
                Action::MakeAssignment(wave) => {
                    self.commit_decided |= wave == Wave::Commit;
                    let epoch = self.restarts;
                    self.at(Duration::from_millis(1), Ev::Made { wave, epoch })
                }
                Action::PlanTree { segments } => {
                    // The tree planner orders the leaders the CCM knows of.
                    let order = segments
                        .iter()
                        .filter_map(|name| {
                            let seg = (0..self.lans.len()).find(|s| segment_name(*s) == *name)?;
                            let (leader, inc) = self.ccm_leaders[seg]?;
                            Some((name.clone(), leader, World::url(seg, leader), inc))
                        })
                        .collect();
                    let now = self.now;
                    self.run.as_mut().expect("run").handle_tree(now, order);
                }
                Action::Notify(target) => {
                    self.count(1);
                    let node = (target.leader.0 as usize).wrapping_sub(1);
                    if node >= self.nodes.len() {
                        continue;
                    }
                    let (d, id) = (self.latency(), self.run.as_ref().and_then(Run::assignment));
                    let Some(id) = id else { continue };
                    self.at(d, Ev::Notify { node, target, from_ccm: true, id: id.0 });
                }
                Action::UpdateSite(_) => self.run.as_mut().expect("run").handle_site_updated(),
                Action::End => {}
            }
        }
        if !self.ccm_up {
            return; // a CCM that is down has no timers; recovery arms them
        }
        let next = self.run.as_ref().and_then(Run::poll_timeout);
        if let Some(t) = next.filter(|t| Some(*t) != self.timer_at) {
            if t <= self.now && self.timer_fired == Some(self.now) {
                // The core asks to be woken now again right after a timeout:
                // a driver would spin.
                self.violate(|v| &mut v.bound, format!("the run core's timer spins at {} µs", t.as_micros()));
                self.run = self.run.take().map(|mut r| {
                    r.handle_failed("timer spin".into());
                    r
                });
                return;
            }
            self.timer_at = Some(t);
            let wait = t.saturating_since(self.now);
            self.at(wait, Ev::Timer);
        }
    }

    /// The assignment `id`'s bytes: a content assignment of a few frames
    /// (or one block), or a header.
    fn make_blob(&mut self, id: u64, wire: Wire) {
        let len = if wire.wave == Wave::Content { self.rng.random_range(200..24_000) } else { 64 };
        let mut data = vec![0u8; len];
        self.rng.fill_bytes(&mut data);
        data[..8].copy_from_slice(&id.to_le_bytes());
        data[8..16].copy_from_slice(&wire.serial.to_le_bytes());
        let hash = sha256(&data);
        self.blobs.insert(id, (Bytes::from(data), hash));
        self.wires.insert(id, wire);
    }

    fn handle(&mut self, ev: Ev) {
        match ev {
            Ev::Timer => {
                if self.timer_at.is_some_and(|t| t <= self.now) {
                    self.timer_at = None;
                    self.timer_fired = Some(self.now);
                }
                if self.ccm_up {
                    let now = self.now;
                    if let Some(r) = self.run.as_mut() {
                        r.handle_timeout(now);
                    }
                }
            }
            Ev::Made { wave, epoch } => {
                if !self.ccm_up || epoch != self.restarts {
                    return;
                }
                self.next_assignment += 1;
                let id = self.next_assignment;
                let run = self.run.as_ref().expect("run");
                let (serial, base) = (run.plan().serial, run.plan().base);
                let base = if wave == Wave::Content { base } else { 0 };
                self.make_blob(id, Wire { wave, serial, base });
                let now = self.now;
                let run = self.run.as_mut().expect("run");
                if wave == Wave::Content {
                    run.handle_packed(now, AssignmentId(id), 1);
                } else {
                    run.handle_assignment_made(now, wave, AssignmentId(id));
                }
            }
            Ev::Notify { node, target, from_ccm, id } => {
                let seg = self.seg(node);
                let leading = self.nodes[node].proc.as_ref().is_some_and(|p| p.leading);
                let accepted = leading && (!from_ccm || self.reachable(seg));
                if !accepted {
                    if from_ccm && self.ccm_up {
                        let now = self.now;
                        if let Some(r) = self.run.as_mut() {
                            r.handle_notify_failed(now, &target.segment, "not the leader, or unreachable");
                        }
                    }
                    return;
                }
                let fetch = Duration::from_millis(self.rng.random_range(2..40));
                let Some(p) = self.nodes[node].proc.as_mut() else { return };
                if p.jobs.contains_key(&id) {
                    return; // a duplicate: the job is running
                }
                p.jobs.insert(id, super::lan::Job::new(target.servers));
                let inc = p.inc;
                self.at(fetch, Ev::Fetched { node, inc, id });
            }
            Ev::Fetched { node, inc, id } => {
                let hash = self.blobs.get(&id).map(|b| b.1);
                let Some(p) = self.nodes[node].proc.as_mut().filter(|p| p.inc == inc) else { return };
                let Some(job) = p.jobs.get_mut(&id) else { return };
                job.stage = Stage::Forwarding;
                if let Some(hash) = hash {
                    // Its own receiver answers "complete" to announces of it.
                    p.receiver.mark_held(crate::protocol::ids::AssignmentSerial(id), hash);
                }
                let d = self.latency();
                self.at(d, Ev::AskNextHop { node, inc, id });
            }
            Ev::AskNextHop { node, inc, id } => {
                let seg = self.seg(node);
                let reachable = self.reachable(seg);
                let Some(job) = self.job(node, inc, id) else { return };
                if !reachable {
                    job.failures += 1;
                    let failures = job.failures;
                    self.count(1);
                    if failures >= NEXT_HOP_ATTEMPTS {
                        // The CCM does not answer: deliver in the segment.
                        self.deliver_job(node, id);
                    } else {
                        let d = self.backoff(failures);
                        self.at(d, Ev::AskNextHop { node, inc, id });
                    }
                    return;
                }
                job.failures = 0;
                self.count(1);
                let now = self.now;
                let me = self.nodes[node].id;
                let next = match self.run.as_mut() {
                    Some(r) if r.assignment() == Some(AssignmentId(id)) => r.handle_next_hop(now, me),
                    _ => None,
                };
                let Some(t) = next else {
                    return self.deliver_job(node, id);
                };
                let to = (t.leader.0 as usize).wrapping_sub(1);
                if to < self.nodes.len() {
                    self.count(1);
                    let d = self.latency();
                    self.at(d, Ev::Notify { node: to, target: t, from_ccm: false, id });
                }
                let d = self.latency();
                self.at(d, Ev::AskNextHop { node, inc, id });
            }
            Ev::Report { node, inc, id, result } => {
                let seg = self.seg(node);
                let reachable = self.reachable(seg);
                let Some(job) = self.job(node, inc, id) else { return };
                if !reachable {
                    // Retried until the CCM accepts it.
                    job.failures += 1;
                    let failures = job.failures;
                    let d = self.backoff(failures);
                    self.count(1);
                    self.at(d, Ev::Report { node, inc, id, result });
                    return;
                }
                self.count(1);
                if let Some(p) = self.nodes[node].proc.as_mut() {
                    p.jobs.remove(&id);
                }
                let now = self.now;
                if let Some(r) = self.run.as_mut() {
                    r.handle_segment_result(now, AssignmentId(id), &segment_name(seg), &result);
                }
            }
            Ev::SegmentReport { node, inc, periodic } => {
                let seg = self.seg(node);
                let Some(p) = self.nodes[node].proc.as_ref().filter(|p| p.inc == inc) else { return };
                if p.leading {
                    self.count(1);
                    if self.reachable(seg) {
                        let me = self.nodes[node].id;
                        self.ccm_leaders[seg] = Some((me, inc));
                        let now = self.now;
                        if let Some(r) = self.run.as_mut() {
                            r.handle_leader_seen(now, &segment_name(seg), me, &World::url(seg, me), inc);
                        }
                    }
                }
                if periodic {
                    let every = self.cfg.segment_report_interval;
                    self.at(every, Ev::SegmentReport { node, inc, periodic });
                }
            }
            Ev::Crash { node, back_after } => {
                if self.nodes[node].proc.is_some() {
                    self.crash_node(node);
                    if let Some(d) = back_after {
                        self.at(d, Ev::Restart { node });
                    }
                }
            }
            Ev::LeaderCrash { seg, down_for } => {
                let members = seg * self.per..(seg + 1) * self.per;
                let leader =
                    members.clone().find(|i| self.nodes[*i].proc.as_ref().is_some_and(|p| p.leading));
                let victim = leader.unwrap_or_else(|| self.rng.random_range(members));
                if self.nodes[victim].proc.is_some() {
                    self.crash_node(victim);
                    self.at(down_for, Ev::Restart { node: victim });
                }
            }
            Ev::Restart { node } => {
                if self.nodes[node].proc.is_none() {
                    self.start_node(node);
                    let inc = self.nodes[node].proc.as_ref().map_or(0, |p| p.inc);
                    let first =
                        self.rng.random_range(0..=self.cfg.segment_report_interval.as_micros() as u64);
                    self.at(Duration::from_micros(first), Ev::SegmentReport { node, inc, periodic: true });
                }
            }
            Ev::Split { seg, side } => {
                self.lans[seg].net.partition(&[&side]);
            }
            Ev::Heal { seg } => self.lans[seg].net.heal(),
            Ev::CcmDown { down_for } => {
                if !self.ccm_up || self.run.as_ref().is_none_or(|r| r.state().is_final()) {
                    return;
                }
                self.ccm_up = false;
                self.restarts += 1;
                self.downtime += down_for;
                self.at(down_for, Ev::CcmUp);
            }
            Ev::CcmUp => {
                self.ccm_up = true;
                self.timer_at = None;
                let run = self.run.take().expect("run");
                let saved = self.saved.clone().unwrap_or(Saved {
                    state: RunState::Packing,
                    content: None,
                    applied: BTreeMap::new(),
                });
                let mut plan = run.plan().clone();
                plan.offline.clear();
                self.run = Some(Run::recover(run.id(), plan, self.cfg.run, saved));
            }
            Ev::Cancel => {
                if self.ccm_up {
                    let now = self.now;
                    if let Some(r) = self.run.as_mut() {
                        let _ = r.handle_cancel(now);
                    }
                }
            }
        }
    }

    /// The job `id` of leader `node`'s process `inc`, if it still runs.
    fn job(&mut self, node: usize, inc: u64, id: u64) -> Option<&mut super::lan::Job> {
        self.nodes[node].proc.as_mut().filter(|p| p.inc == inc)?.jobs.get_mut(&id)
    }

    /// Leader `node` posts its segment result for `id` (after a delay; late
    /// with [`Fault::LateReports`]).
    pub(super) fn post_result(
        &mut self,
        node: usize,
        inc: u64,
        id: u64,
        result: BTreeMap<NodeId, ServerOutcome>,
    ) {
        let mut d = Duration::from_millis(self.rng.random_range(5..80));
        if self.faults.contains(&Fault::LateReports) && self.rng.random_bool(0.2) {
            d += Duration::from_millis(self.rng.random_range(0..30_000));
        }
        self.at(d, Ev::Report { node, inc, id, result });
    }

    /// A leader became one: it reports its segment at once.
    pub(super) fn leader_elected(&mut self, node: usize, inc: u64) {
        let d = self.latency();
        self.at(d, Ev::SegmentReport { node, inc, periodic: false });
    }

    /// The content interpreter of server `i` carries out `id`: it stores,
    /// builds and switches only what it holds and is named in.
    pub(super) fn carry_out(&mut self, i: usize, id: u64) -> ServerOutcome {
        let Some(wire) = self.wires.get(&id).copied() else {
            return ServerOutcome::Failed { error: format!("assignment {id} is unknown") };
        };
        let me = self.nodes[i].id;
        if !self.plan_targets.contains(&me) {
            self.violate(
                |v| &mut v.only_targets,
                format!(
                    "server {me} carried out the {} wave of a run it is not a target of",
                    wire.wave.name()
                ),
            );
        }
        self.dirty.push(i);
        let h = &mut self.nodes[i].site;
        match wire.wave {
            Wave::Content => {
                if wire.base != 0 && h.live != wire.base {
                    ServerOutcome::Failed {
                        error: format!("delta against {}, live is {}", wire.base, h.live),
                    }
                } else {
                    h.incoming.insert(wire.serial);
                    ServerOutcome::Succeeded
                }
            }
            Wave::Commit => {
                if h.incoming.remove(&wire.serial) || h.live == wire.serial {
                    h.releases.insert(wire.serial);
                    h.live = wire.serial;
                    ServerOutcome::Succeeded
                } else {
                    ServerOutcome::Failed { error: format!("release {} was not built here", wire.serial) }
                }
            }
            Wave::Abort => {
                h.incoming.remove(&wire.serial);
                ServerOutcome::Succeeded
            }
            Wave::Switch => {
                if h.releases.contains(&wire.serial) {
                    h.live = wire.serial;
                    ServerOutcome::Succeeded
                } else {
                    ServerOutcome::Failed { error: format!("release {} is not held", wire.serial) }
                }
            }
        }
    }

    /// A member of a session that is not a target of the run stored something.
    pub(super) fn stored_by_non_target(&mut self, i: usize, id: u64) {
        let me = self.nodes[i].id;
        if !self.plan_targets.contains(&me) {
            self.violate(
                |v| &mut v.only_targets,
                format!("server {me} stored assignment {id} not meant for it"),
            );
        }
    }

    fn check_server(&mut self, i: usize, aborted: Option<u64>) {
        let (id, live) = (self.nodes[i].id, self.nodes[i].site.live);
        if Some(live) == aborted {
            self.violate(
                |v| &mut v.aborted_live,
                format!("server {id} is live on release {live} of a run that did not commit"),
            );
        }
        if self.hot_serials.contains(&live) && self.group.contains(&id) {
            self.violate(|v| &mut v.hot_live, format!("group member {id} is live on hot release {live}"));
        }
    }

    /// (e) after every step, for the servers whose site changed.
    fn check_dirty(&mut self) {
        while let Some(i) = self.dirty.pop() {
            self.check_server(i, None);
        }
    }

    /// (b) and (e) over every server.
    pub(super) fn check_live_all(&mut self, aborted: Option<u64>) {
        for i in 0..self.nodes.len() {
            self.check_server(i, aborted);
        }
    }
}
