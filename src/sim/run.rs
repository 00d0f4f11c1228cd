//! `cmover sim run`: whole runs of every job kind, driven through the real
//! run core ([`crate::protocol::run`]) and its store-and-forward
//! [`Distribution`](crate::protocol::distribution::Distribution), over a
//! simulated fleet of S segments × M servers with several sites whose
//! content groups overlap segments, under seeded faults.
//!
//! What is real: [`plan`], [`Run`] (waves, quorum, commit/abort, cancel,
//! timeouts, recovery after a CCM restart) and the distribution tree (next
//! hops, re-notifies, leader changes and restarts by incarnation). What is
//! modelled, with seeded delays and loss: the HTTP hops, a leader's job
//! (fetch, forward, deliver, collect, report, retried until accepted), the
//! segment's multicast (a target that misses the data reports failed) and
//! the election after a leader crash (a new leader after a delay; a
//! restarted leader re-elected at the same address with a new incarnation).
//! Each server is a small model of the content interpreter: it stores and
//! applies only assignments that name it, switches only a release it built,
//! and discards on abort.
//!
//! After every event the invariants are checked: (a) only targets ever
//! store, apply or switch; (b) no server is ever live on the release of a
//! run that aborted; (c) a run commits only if its quorum held, and then
//! every target is live on the new release or named as failed; (d) every
//! run ends within a bound derived from the configuration; (e) no group
//! member is live on a hot release. Every run derives from one seed
//! ([`run_seed`]); a failing run's seed replays it with `--seed … --runs 1`.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap};
use std::time::Duration;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

use crate::protocol::api::ServerOutcome;
use crate::protocol::distribution::{DistributionConfig, Target};
use crate::protocol::ids::{AssignmentId, JobId, NodeId, RunId};
use crate::protocol::run::{
    plan, Action, GroupView, JobKind, JobView, Plan, Quorum, Run, RunConfig, RunState, Saved, ServerView,
    SiteView, Wave,
};
use crate::protocol::time::Time;

/// The faults a run can meet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Fault {
    /// Members miss the multicast (and report failed).
    Loss,
    /// A leader crashes mid-run and restarts (re-elected, or another leads).
    LeaderCrash,
    /// Members crash (and stay silent).
    MemberCrash,
    /// The CCM restarts mid-run and recovers its runs from what it saved.
    CcmRestart,
    /// A segment is cut off from the CCM for a while.
    Partition,
    /// Segment results arrive late, some after the report timeout.
    LateReports,
    /// An admin cancels the run.
    Cancel,
}

impl Fault {
    /// Every fault.
    pub const ALL: [Fault; 7] = [
        Fault::Loss,
        Fault::LeaderCrash,
        Fault::MemberCrash,
        Fault::CcmRestart,
        Fault::Partition,
        Fault::LateReports,
        Fault::Cancel,
    ];

    /// Parses `loss`, `leader-crash`, … or `all`.
    pub fn parse_list(s: &str) -> Result<Vec<Fault>, String> {
        let mut out = Vec::new();
        for name in s.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            match name {
                "all" => out.extend(Fault::ALL),
                "none" => {}
                "loss" => out.push(Fault::Loss),
                "leader-crash" => out.push(Fault::LeaderCrash),
                "member-crash" => out.push(Fault::MemberCrash),
                "ccm-restart" => out.push(Fault::CcmRestart),
                "partition" => out.push(Fault::Partition),
                "late-reports" => out.push(Fault::LateReports),
                "cancel" => out.push(Fault::Cancel),
                other => {
                    return Err(format!(
                    "unknown fault {other:?}: use all, none or a list of loss, leader-crash, member-crash, \
                         ccm-restart, partition, late-reports, cancel"
                ))
                }
            }
        }
        out.sort();
        out.dedup();
        Ok(out)
    }
}

/// A simulation's settings.
#[derive(Debug, Clone)]
pub struct RunSimConfig {
    /// Segments.
    pub segments: usize,
    /// Servers per segment.
    pub servers_per_segment: usize,
    /// Faults to draw from (each run draws some of them).
    pub faults: Vec<Fault>,
    /// The run core's timers.
    pub run: RunConfig,
    /// Period of segment reports.
    pub segment_report_interval: Duration,
    /// Time a segment takes to elect a new leader after its leader crashed.
    pub election_delay: Duration,
    /// Probability that a target misses the multicast (with [`Fault::Loss`]).
    pub loss: f64,
}

impl Default for RunSimConfig {
    fn default() -> Self {
        RunSimConfig {
            segments: 3,
            servers_per_segment: 4,
            faults: Fault::ALL.to_vec(),
            run: RunConfig {
                distribution: DistributionConfig {
                    fanout: 2,
                    notify_timeout: Duration::from_secs(2),
                    max_attempts: 3,
                    retry_delay: Duration::from_millis(500),
                },
                report_timeout: Duration::from_secs(20),
            },
            segment_report_interval: Duration::from_secs(1),
            election_delay: Duration::from_millis(1500),
            loss: 0.05,
        }
    }
}

/// Violations per invariant.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Violations {
    /// (a) a server that is not a target stored, applied or switched.
    pub only_targets: u64,
    /// (b) a server live on the release of a run that did not commit.
    pub aborted_live: u64,
    /// (c) committed without the quorum, or a target neither live nor failed.
    pub quorum: u64,
    /// (d) a run that did not end within its bound.
    pub bound: u64,
    /// (e) a group member live on a hot release.
    pub hot_live: u64,
}

impl Violations {
    /// All of them.
    pub fn total(&self) -> u64 {
        self.only_targets + self.aborted_live + self.quorum + self.bound + self.hot_live
    }

    fn add(&mut self, o: &Violations) {
        self.only_targets += o.only_targets;
        self.aborted_live += o.aborted_live;
        self.quorum += o.quorum;
        self.bound += o.bound;
        self.hot_live += o.hot_live;
    }
}

/// One run's outcome.
#[derive(Debug, Clone, Serialize)]
pub struct RunOutcome {
    /// Its seed.
    pub seed: u64,
    /// The job kind.
    pub kind: JobKind,
    /// Refused at planning (e.g. a rollback of a first release).
    pub refused: bool,
    /// How it ended.
    pub state: Option<RunState>,
    /// Virtual time from start to end.
    pub run_ms: u64,
    /// Datagrams and requests sent.
    pub datagrams: u64,
    /// What broke.
    pub violations: Violations,
    /// The first violation, in words.
    pub first_violation: Option<String>,
}

/// What `cmover sim run --json` prints.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    /// Runs simulated.
    pub runs: u64,
    /// Runs that went live.
    pub committed: u64,
    /// Runs that failed, were cancelled or found nothing to do.
    pub not_committed: u64,
    /// Jobs refused at planning.
    pub refused: u64,
    /// Violations per invariant.
    pub violations: Violations,
    /// Median run time, virtual ms.
    pub run_ms_p50: u64,
    /// 99th percentile run time, virtual ms.
    pub run_ms_p99: u64,
    /// Datagrams and requests per server per run.
    pub datagrams_per_server: f64,
    /// Seeds of runs that broke an invariant (at most 20).
    pub failing_seeds: Vec<u64>,
    /// The first violation, in words.
    pub first_violation: Option<String>,
}

/// The seed of run `i` of a simulation seeded `seed`.
pub fn run_seed(seed: u64, i: u64) -> u64 {
    seed.wrapping_mul(0x9E37_79B9_7F4A_7C15).wrapping_add(i.wrapping_mul(0xBF58_476D_1CE4_E5B9)) ^ (i << 17)
}

/// Runs `runs` seeded runs and sums them up.
pub fn run_many(cfg: &RunSimConfig, runs: u64, seed: u64) -> Summary {
    let outcomes: Vec<RunOutcome> = (0..runs).map(|i| run_one(cfg, run_seed(seed, i))).collect();
    summarise(cfg, &outcomes)
}

/// Sums up outcomes.
pub fn summarise(cfg: &RunSimConfig, outcomes: &[RunOutcome]) -> Summary {
    let mut violations = Violations::default();
    let mut times: Vec<u64> = Vec::new();
    let mut datagrams = 0u64;
    for o in outcomes {
        violations.add(&o.violations);
        datagrams += o.datagrams;
        if !o.refused {
            times.push(o.run_ms);
        }
    }
    times.sort_unstable();
    let pct = |p: f64| super::nearest_rank(&times, p).unwrap_or(0);
    let servers = (cfg.segments * cfg.servers_per_segment).max(1) as f64;
    let failing: Vec<&RunOutcome> = outcomes.iter().filter(|o| o.violations.total() > 0).collect();
    Summary {
        runs: outcomes.len() as u64,
        committed: outcomes.iter().filter(|o| o.state == Some(RunState::Committed)).count() as u64,
        not_committed: outcomes.iter().filter(|o| o.state.is_some_and(|s| s != RunState::Committed)).count()
            as u64,
        refused: outcomes.iter().filter(|o| o.refused).count() as u64,
        violations,
        run_ms_p50: pct(0.5),
        run_ms_p99: pct(0.99),
        datagrams_per_server: datagrams as f64 / servers / outcomes.len().max(1) as f64,
        failing_seeds: failing.iter().take(20).map(|o| o.seed).collect(),
        first_violation: failing.first().and_then(|o| o.first_violation.clone()),
    }
}

/// A server's model of one site.
#[derive(Debug, Clone, Default)]
struct Holding {
    /// Built, not live (`incoming/`).
    incoming: BTreeSet<u64>,
    /// Releases it keeps.
    releases: BTreeSet<u64>,
    /// Live release (0: none).
    live: u64,
}

#[derive(Debug, Clone)]
struct Server {
    id: NodeId,
    segment: usize,
    up: bool,
    site: Holding,
}

#[derive(Debug, Clone)]
struct Segment {
    name: String,
    members: Vec<usize>,
    /// The leader (an index into servers), if one is elected.
    leader: Option<usize>,
    incarnation: u64,
    /// Cut off from the CCM until then.
    cut_until: Time,
    /// Assignment ids whose job the leader has in memory.
    jobs: BTreeSet<u64>,
}

/// What the simulated leaders carry out for the wave.
#[derive(Debug, Clone)]
struct Wire {
    id: AssignmentId,
    wave: Wave,
    serial: u64,
    base: u64,
}

#[derive(Debug, Clone)]
enum Ev {
    /// The run's timer.
    Timer,
    /// The CCM (re)starts.
    CcmUp,
    /// A notify reaches segment `seg`'s leader `leader` in incarnation `inc`.
    Notify { seg: usize, target: Target, from_ccm: bool, wire: Wire },
    /// The leader holds the copy and asks for its next hop.
    AskNextHop { seg: usize, inc: u64, wire: Wire, targets: Vec<NodeId> },
    /// The segment's members carried the assignment out; the leader reports.
    Report { seg: usize, inc: u64, wire: Wire, result: BTreeMap<NodeId, ServerOutcome> },
    /// A segment report (leader, incarnation) to the CCM.
    SegmentReport { seg: usize },
    /// A leader crashes.
    LeaderCrash { seg: usize, down_for: Duration },
    /// A crashed leader is back.
    LeaderBack { seg: usize, server: usize, reelected: bool },
    /// The segment elects a new leader.
    Elect { seg: usize },
    /// The CCM goes down.
    CcmDown { down_for: Duration },
    /// An admin cancels.
    Cancel,
    /// The pack (or a header-only assignment) is ready (made by the CCM
    /// process of `epoch`: one that crashed since never answers).
    Made { wave: Wave, epoch: u32 },
}

struct World {
    cfg: RunSimConfig,
    rng: ChaCha8Rng,
    now: Time,
    queue: BinaryHeap<Reverse<(Time, u64, usize)>>,
    events: Vec<Option<Ev>>,
    seq: u64,
    servers: Vec<Server>,
    segments: Vec<Segment>,
    group: Vec<NodeId>,
    hot_serials: BTreeSet<u64>,
    run: Option<Run>,
    saved: Option<Saved>,
    ccm_up: bool,
    next_assignment: u64,
    wire: Option<Wire>,
    faults: BTreeSet<Fault>,
    datagrams: u64,
    violations: Violations,
    first_violation: Option<String>,
    restarts: u32,
    downtime: Duration,
    timer_at: Option<Time>,
    timer_fired: Option<Time>,
    /// The commit was decided (sent): servers that got it may be live even
    /// if their results never came back.
    commit_decided: bool,
}

impl World {
    fn at(&mut self, after: Duration, ev: Ev) {
        self.seq += 1;
        let i = self.events.len();
        self.events.push(Some(ev));
        self.queue.push(Reverse((self.now + after, self.seq, i)));
    }

    fn violate(&mut self, which: fn(&mut Violations) -> &mut u64, what: String) {
        *which(&mut self.violations) += 1;
        if self.first_violation.is_none() {
            self.first_violation = Some(what);
        }
    }

    fn latency(&mut self) -> Duration {
        Duration::from_micros(self.rng.random_range(500..5_000))
    }

    fn reachable(&self, seg: usize) -> bool {
        self.ccm_up && self.now >= self.segments[seg].cut_until
    }

    fn seg_of(&self, name: &str) -> Option<usize> {
        self.segments.iter().position(|s| s.name == name)
    }

    fn url(&self, seg: usize) -> (NodeId, String, u64) {
        let s = &self.segments[seg];
        let leader = s.leader.map_or(NodeId(0), |l| self.servers[l].id);
        (leader, format!("sim://{}/{}", s.name, leader), s.incarnation)
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
                    let order = segments
                        .iter()
                        .filter_map(|name| self.seg_of(name))
                        .filter(|s| self.segments[*s].leader.is_some())
                        .map(|s| {
                            let (leader, url, inc) = self.url(s);
                            (self.segments[s].name.clone(), leader, url, inc)
                        })
                        .collect();
                    let now = self.now;
                    self.run.as_mut().expect("run").handle_tree(now, order);
                }
                Action::Notify(target) => {
                    self.datagrams += 1;
                    let Some(seg) = self.seg_of(&target.segment) else { continue };
                    let wire = self.wire.clone().expect("a wave has an assignment");
                    let d = self.latency();
                    self.at(d, Ev::Notify { seg, target, from_ccm: true, wire });
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

    /// A member carries out `wire` (if it names it); returns its outcome.
    fn carry_out(&mut self, server: usize, wire: &Wire, targets: &[NodeId]) -> Option<ServerOutcome> {
        let id = self.servers[server].id;
        if !targets.contains(&id) {
            // The multicast reached it, but the session does not name it:
            // it stores nothing (the receiver's rule).
            return None;
        }
        let plan_targets = self.run.as_ref().map(|r| r.plan().targets.clone()).unwrap_or_default();
        if !plan_targets.contains(&id) {
            self.violate(
                |v| &mut v.only_targets,
                format!("server {id} was sent {:?} of a run it is not a target of", wire.wave),
            );
        }
        if !self.servers[server].up {
            return None;
        }
        if self.faults.contains(&Fault::Loss)
            && wire.wave == Wave::Content
            && self.rng.random_bool(self.cfg.loss)
        {
            return Some(ServerOutcome::Failed { error: "did not receive the whole assignment".into() });
        }
        let h = &mut self.servers[server].site;
        Some(match wire.wave {
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
        })
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
                let id = AssignmentId(self.next_assignment);
                let now = self.now;
                let run = self.run.as_mut().expect("run");
                let (serial, base) = (run.plan().serial, run.plan().base);
                let base = if wave == Wave::Content { base } else { 0 };
                self.wire = Some(Wire { id, wave, serial, base });
                if wave == Wave::Content {
                    run.handle_packed(now, id, 1);
                } else {
                    run.handle_assignment_made(now, wave, id);
                }
            }
            Ev::Notify { seg, target, from_ccm, wire } => {
                let s = &self.segments[seg];
                let alive_leader = s.leader.filter(|l| self.servers[*l].up).map(|l| self.servers[l].id);
                let accepted = alive_leader == Some(target.leader) && (!from_ccm || self.reachable(seg));
                if !accepted {
                    if from_ccm && self.ccm_up {
                        let now = self.now;
                        if let Some(r) = self.run.as_mut() {
                            r.handle_notify_failed(now, &target.segment, "not the leader, or unreachable");
                        }
                    }
                    return;
                }
                if !self.segments[seg].jobs.insert(wire.id.0) {
                    return; // a duplicate: the job is running
                }
                let inc = self.segments[seg].incarnation;
                let fetch = Duration::from_millis(self.rng.random_range(2..40));
                self.at(fetch, Ev::AskNextHop { seg, inc, wire, targets: target.servers });
            }
            Ev::AskNextHop { seg, inc, wire, targets } => {
                if self.segments[seg].incarnation != inc || !self.leader_up(seg) {
                    return; // the job died with its leader
                }
                self.datagrams += 1;
                let current = self.run.as_ref().and_then(Run::assignment) == Some(wire.id);
                if self.reachable(seg) && current {
                    let now = self.now;
                    let me = self.url(seg).0;
                    let next = self.run.as_mut().and_then(|r| r.handle_next_hop(now, me));
                    if let Some(t) = next {
                        if let Some(to) = self.seg_of(&t.segment) {
                            let d = self.latency();
                            self.at(
                                d,
                                Ev::Notify { seg: to, target: t, from_ccm: false, wire: wire.clone() },
                            );
                        }
                        let d = self.latency();
                        self.at(d, Ev::AskNextHop { seg, inc, wire, targets });
                        return;
                    }
                } else if !self.reachable(seg) {
                    // The CCM does not answer: ask again later, as the leader does.
                    self.at(
                        self.cfg.run.distribution.retry_delay,
                        Ev::AskNextHop { seg, inc, wire, targets },
                    );
                    return;
                }
                // Deliver in the segment: every member hears the multicast.
                let members = self.segments[seg].members.clone();
                let mut result = BTreeMap::new();
                for m in members {
                    self.datagrams += 1;
                    if let Some(o) = self.carry_out(m, &wire, &targets) {
                        result.insert(self.servers[m].id, o);
                    }
                }
                for t in &targets {
                    result.entry(*t).or_insert(ServerOutcome::Silent);
                }
                let mut d = Duration::from_millis(self.rng.random_range(5..80));
                if self.faults.contains(&Fault::LateReports) && self.rng.random_bool(0.2) {
                    d += Duration::from_millis(self.rng.random_range(0..30_000));
                }
                self.at(d, Ev::Report { seg, inc, wire, result });
            }
            Ev::Report { seg, inc, wire, result } => {
                if self.segments[seg].incarnation != inc || !self.leader_up(seg) {
                    return;
                }
                self.datagrams += 1;
                if !self.reachable(seg) {
                    // Retried until the CCM accepts it.
                    self.at(self.cfg.run.distribution.retry_delay, Ev::Report { seg, inc, wire, result });
                    return;
                }
                let now = self.now;
                let name = self.segments[seg].name.clone();
                if let Some(r) = self.run.as_mut() {
                    r.handle_segment_result(now, wire.id, &name, &result);
                }
            }
            Ev::SegmentReport { seg } => {
                if self.leader_up(seg) && self.reachable(seg) {
                    self.datagrams += 1;
                    let (leader, url, inc) = self.url(seg);
                    let (now, name) = (self.now, self.segments[seg].name.clone());
                    if let Some(r) = self.run.as_mut() {
                        r.handle_leader_seen(now, &name, leader, &url, inc);
                    }
                }
                let every = self.cfg.segment_report_interval;
                if self.run.as_ref().is_some_and(|r| !r.state().is_final()) {
                    self.at(every, Ev::SegmentReport { seg });
                }
            }
            Ev::LeaderCrash { seg, down_for } => {
                let Some(l) = self.segments[seg].leader else { return };
                self.servers[l].up = false;
                self.segments[seg].jobs.clear();
                self.segments[seg].leader = None;
                let reelected = self.rng.random_bool(0.5);
                if !reelected {
                    self.at(self.cfg.election_delay, Ev::Elect { seg });
                }
                self.at(down_for, Ev::LeaderBack { seg, server: l, reelected });
            }
            Ev::LeaderBack { seg, server, reelected } => {
                self.servers[server].up = true;
                if reelected && self.segments[seg].leader.is_none() {
                    // Back at the same address, a new process: a new incarnation.
                    self.segments[seg].leader = Some(server);
                    self.segments[seg].incarnation += 1;
                    self.segments[seg].jobs.clear();
                    self.at(Duration::ZERO, Ev::SegmentReport { seg });
                }
            }
            Ev::Elect { seg } => {
                if self.segments[seg].leader.is_some() {
                    return;
                }
                let next = self.segments[seg].members.iter().copied().find(|m| self.servers[*m].up);
                self.segments[seg].leader = next;
                self.segments[seg].incarnation += 1;
                self.segments[seg].jobs.clear();
                self.at(Duration::ZERO, Ev::SegmentReport { seg });
            }
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
                self.wire = None;
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

    fn leader_up(&self, seg: usize) -> bool {
        self.segments[seg].leader.is_some_and(|l| self.servers[l].up)
    }

    /// (b) and (e), after every step.
    fn check_live(&mut self, aborted: Option<u64>) {
        for i in 0..self.servers.len() {
            let (id, live) = (self.servers[i].id, self.servers[i].site.live);
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
    }
}

fn pick_kind(rng: &mut ChaCha8Rng) -> JobKind {
    match rng.random_range(0..20) {
        0..=7 => JobKind::Publish,
        8 => JobKind::Replicate,
        9 => JobKind::Synchronize,
        10 | 11 => JobKind::Restore,
        12 | 13 => JobKind::Rollback,
        14 => JobKind::Switch,
        15 | 16 => JobKind::Remove,
        _ => JobKind::Hot,
    }
}

/// One seeded run in a fresh world (see the module docs).
pub fn run_one(cfg: &RunSimConfig, seed: u64) -> RunOutcome {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let per = cfg.servers_per_segment.max(1);
    let live = rng.random_range(1..4u64);
    let mut servers = Vec::new();
    let mut segments = Vec::new();
    for s in 0..cfg.segments.max(1) {
        let members: Vec<usize> = (0..per).map(|m| s * per + m).collect();
        for m in &members {
            servers.push(Server {
                id: NodeId(*m as u64 + 1),
                segment: s,
                up: true,
                site: Holding::default(),
            });
        }
        segments.push(Segment {
            name: format!("seg-{}", s + 1),
            leader: Some(members[0]),
            incarnation: 1,
            cut_until: Time::ZERO,
            members,
            jobs: BTreeSet::new(),
        });
    }
    // Two sites' groups overlap every segment; this run is about one of
    // them, the other site's servers share its segments (non-targets).
    let share = if rng.random_bool(0.5) { 0.6 } else { 0.3 };
    let group: Vec<NodeId> = servers.iter().filter(|_| rng.random_bool(share)).map(|s| s.id).collect();
    let group = if group.is_empty() { vec![servers[0].id] } else { group };
    for s in servers.iter_mut() {
        if group.contains(&s.id) {
            let lag = rng.random_range(0..100);
            s.site.live = match lag {
                0 => 0,
                1 => live.saturating_sub(1),
                _ => live,
            };
            s.site.releases = (1..=s.site.live).collect();
        }
    }
    let kind = pick_kind(&mut rng);
    let faults: BTreeSet<Fault> = cfg.faults.iter().copied().filter(|_| rng.random_bool(0.35)).collect();
    let quorum = if rng.random_bool(0.3) { Quorum::All } else { Quorum::Percent(90.0) };
    let site = SiteView {
        name: "www".into(),
        live_serial: live,
        last_serial: live + rng.random_range(0..2),
        shadow_serial: live,
        kept: (1..=live).collect(),
        live_base: live.saturating_sub(1),
    };
    let job = JobView {
        id: JobId(1),
        kind,
        serial: Some(rng.random_range(1..=live)),
        checkpoint: Some((1, true)),
        extra_servers: Some(rng.random_range(1..4)),
        quorum: None,
    };
    let views: Vec<ServerView> = servers
        .iter()
        .map(|s| ServerView {
            id: s.id,
            segment: segments[s.segment].name.clone(),
            online: true,
            live: s.site.live,
        })
        .collect();
    let mut outcome = RunOutcome {
        seed,
        kind,
        refused: false,
        state: None,
        run_ms: 0,
        datagrams: 0,
        violations: Violations::default(),
        first_violation: None,
    };
    let p: Plan = match plan(&job, &site, &GroupView { servers: group.clone(), quorum }, &views) {
        Ok(p) => p,
        Err(_) => {
            outcome.refused = true;
            return outcome;
        }
    };
    let mut w = World {
        cfg: cfg.clone(),
        rng,
        now: Time::ZERO,
        queue: BinaryHeap::new(),
        events: Vec::new(),
        seq: 0,
        servers,
        segments,
        group,
        hot_serials: if kind == JobKind::Hot { [p.serial].into() } else { BTreeSet::new() },
        run: None,
        saved: None,
        ccm_up: true,
        next_assignment: 100,
        wire: None,
        faults: faults.clone(),
        datagrams: 0,
        violations: Violations::default(),
        first_violation: None,
        restarts: 0,
        downtime: Duration::ZERO,
        timer_at: None,
        timer_fired: None,
        commit_decided: false,
    };
    let targets = p.targets.clone();
    let needed = p.needed;
    let serial = p.serial;
    w.run = Some(Run::start(RunId(1), p, cfg.run));
    // Faults at seeded times within the first seconds of the run.
    let soon = |rng: &mut ChaCha8Rng| Duration::from_millis(rng.random_range(0..3_000));
    let nseg = w.segments.len();
    if faults.contains(&Fault::LeaderCrash) {
        let (seg, at, down) = (w.rng.random_range(0..nseg), soon(&mut w.rng), soon(&mut w.rng));
        w.at(at, Ev::LeaderCrash { seg, down_for: down + Duration::from_millis(200) });
    }
    if faults.contains(&Fault::MemberCrash) {
        for _ in 0..w.rng.random_range(1..3) {
            let s = w.rng.random_range(0..w.servers.len());
            if w.segments.iter().all(|g| g.leader != Some(s)) {
                w.servers[s].up = false;
            }
        }
    }
    if faults.contains(&Fault::CcmRestart) {
        let (at, down) = (soon(&mut w.rng), soon(&mut w.rng));
        w.at(at, Ev::CcmDown { down_for: down + Duration::from_millis(100) });
    }
    if faults.contains(&Fault::Partition) {
        let seg = w.rng.random_range(0..nseg);
        let until = w.now + soon(&mut w.rng) + soon(&mut w.rng);
        w.segments[seg].cut_until = until;
    }
    if faults.contains(&Fault::Cancel) {
        let at = Duration::from_millis(w.rng.random_range(0..200));
        w.at(at, Ev::Cancel);
    }
    for seg in 0..nseg {
        let at = Duration::from_millis(w.rng.random_range(0..1_000));
        w.at(at, Ev::SegmentReport { seg });
    }
    w.drain();
    let bound_cap = Time::ZERO + cfg.run.bound() * 4 + Duration::from_secs(60);
    while let Some(Reverse((t, _, i))) = w.queue.pop() {
        if w.run.as_ref().is_some_and(|r| r.state().is_final()) || t > bound_cap {
            break;
        }
        if w.events.len() > 200_000 {
            let last = format!("{:?}", w.events[i]);
            w.violate(
                |v| &mut v.bound,
                format!("more than 200000 events at {} ms; last {last}", t.as_micros() / 1000),
            );
            break;
        }
        w.now = t;
        if let Some(ev) = w.events[i].take() {
            w.handle(ev);
            w.drain();
            w.check_live(None);
        }
    }
    let run = w.run.take().expect("run");
    let state = run.state();
    let ran = w.now.saturating_since(Time::ZERO);
    // (d): each wave ends at its report timeout; a CCM restart starts one more.
    let bound = cfg.run.report_timeout * (2 + w.restarts) + w.downtime + Duration::from_secs(2);
    if !state.is_final() || ran > bound {
        w.violate(
            |v| &mut v.bound,
            format!("run took {} ms (bound {} ms), ended {state:?}", ran.as_millis(), bound.as_millis()),
        );
    }
    let makes_release = kind.takes_fresh_serial();
    if !w.commit_decided && makes_release {
        w.check_live(Some(serial));
    }
    if state == RunState::Committed {
        let built = run.applied().values().filter(|o| **o == ServerOutcome::Succeeded).count();
        if !kind.header_only() && built < needed {
            w.violate(|v| &mut v.quorum, format!("committed with {built} of {needed} needed"));
        }
        for t in &targets {
            let on = w.servers.iter().find(|s| s.id == *t).map(|s| s.site.live);
            if on != Some(serial) && !run.failed().contains(t) {
                w.violate(
                    |v| &mut v.quorum,
                    format!("target {t} is on {on:?}, not {serial}, and not named failed"),
                );
            }
        }
    }
    w.check_live(None);
    outcome.state = Some(state);
    outcome.run_ms = u64::try_from(ran.as_millis()).unwrap_or(u64::MAX);
    outcome.datagrams = w.datagrams;
    outcome.violations = w.violations;
    outcome.first_violation =
        w.first_violation.map(|v| format!("seed {seed} ({kind:?}, faults {faults:?}): {v}"));
    outcome
}

#[cfg(test)]
mod tests {
    use super::*;

    fn small() -> RunSimConfig {
        RunSimConfig::default()
    }

    fn assert_clean(s: &Summary) {
        assert_eq!(
            s.violations,
            Violations::default(),
            "{:?}; replay with the seeds {:?}",
            s.first_violation,
            s.failing_seeds
        );
    }

    /// DESIGN §4 "Only targets" and claim 1 under every fault: 2,000 seeded
    /// small runs (3 segments × 4 servers, overlapping groups, every kind).
    #[test]
    fn claim1_two_thousand_seeded_runs_keep_every_invariant() {
        let s = run_many(&small(), 2_000, 1);
        assert_clean(&s);
        assert!(s.committed > 500, "most runs go live: {s:?}");
        assert!(s.not_committed > 50, "faults make some fail: {s:?}");
    }

    /// FIG. 7 at a larger scale, with every fault.
    #[test]
    fn fig7_a_wider_fleet_keeps_every_invariant() {
        let cfg = RunSimConfig { segments: 10, servers_per_segment: 8, ..small() };
        assert_clean(&run_many(&cfg, 200, 7));
    }

    /// DESIGN §4 step 9: without faults a run fails only because a target
    /// could not take it (a lagging server given a delta), never by timing out.
    #[test]
    fn design4_step9_without_faults_runs_end_on_their_results() {
        let cfg = RunSimConfig { faults: Vec::new(), ..small() };
        let mut committed = 0;
        for i in 0..300 {
            let o = run_one(&cfg, run_seed(3, i));
            assert_eq!(o.violations.total(), 0, "{:?}", o.first_violation);
            if o.state == Some(RunState::Committed) {
                committed += 1;
            }
            if !o.refused {
                assert!(
                    o.run_ms < 2_000,
                    "seed {}: {:?} took {} ms without faults",
                    o.seed,
                    o.kind,
                    o.run_ms
                );
            }
        }
        assert!(committed > 150, "{committed} of 300 committed");
    }

    #[test]
    fn the_same_seed_replays_the_same_run() {
        let a = run_one(&small(), 42);
        let b = run_one(&small(), 42);
        assert_eq!((a.state, a.run_ms, a.datagrams), (b.state, b.run_ms, b.datagrams));
    }

    #[test]
    fn fault_lists_parse() {
        assert_eq!(Fault::parse_list("all").unwrap().len(), Fault::ALL.len());
        assert_eq!(Fault::parse_list("loss, cancel").unwrap(), [Fault::Loss, Fault::Cancel]);
        assert!(Fault::parse_list("lightning").unwrap_err().contains("unknown fault"));
    }
}
