//! Deterministic simulation of a segment's election and membership.
//!
//! One run drives N [`Elector`] cores over a [`Network`] in virtual time,
//! everything derived from one seed: node priorities, start times, per-link
//! loss, delay, jitter (which reorders) and duplication, and the faults of the
//! scenario: a partition that heals, a crash of the leader and its restart,
//! a priority change. After the last fault the run continues for a
//! stabilisation time ([`SimConfig::settle`]) and then an observation window
//! ([`SimConfig::observe`]) in which it checks and measures:
//!
//! - **converged**: in the observation window the live nodes reached exactly
//!   one leader known by all (one live node in `LeaderIsMe`, every live node
//!   knowing it as its leader), and they never agreed on a different leader
//!   in that window. All faults have healed by then, so the live nodes form
//!   one connected component; random loss, duplication and reordering go on
//!   throughout, so a follower may still briefly lose its leader (and find it
//!   again) — that does not count against convergence, a change of leader
//!   does. Agreement at the very last instant is counted separately.
//! - **split brain**: at some instant of the observation window two live
//!   nodes were both in `LeaderIsMe` (checked after every event).
//! - **highest priority won**: the final leader has the highest configured
//!   priority (`base`, then node id) of the live nodes that may lead and
//!   that were up when all live nodes came to agree on it: after a crash,
//!   the highest-priority survivor. Without `preempt` a node that returns
//!   after its segment elected another does not take over (by design: no
//!   second change of leader), so it is not counted as a candidate; with
//!   `preempt` on every live node is.
//! - **failover**: from the leader's crash (when all live nodes agreed on it)
//!   to the first instant at which all live nodes agree on one live leader.
//! - **members agree**: at the end every live node's member list is the set
//!   of live nodes.
//! - **traffic**: datagrams sent (a multicast counts once, as on a LAN) per
//!   live node per second over the observation window.
//!
//! A run that does not converge or shows a split brain is listed by seed in
//! the [`Summary`]; [`run_one`] with that seed replays it exactly, and
//! [`SimConfig::trace`] records what happened.

use std::time::Duration;

use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

use super::net::{LinkFaults, Network, NodeIndex};
use crate::protocol::control::{ControlMsg, MemberInfo};
use crate::protocol::election::{
    Dest, ElectionTimers, Elector, ElectorConfig, MembershipTimers, PriorityInputs,
};
use crate::protocol::ids::NodeId;
use crate::protocol::time::Time;

/// What a simulation runs.
#[derive(Debug, Clone, PartialEq)]
pub struct SimConfig {
    /// Nodes in the segment.
    pub nodes: usize,
    /// Loss probability per datagram and receiver, for the whole run.
    pub loss: f64,
    /// Probability that a datagram is delivered twice.
    pub duplicate: f64,
    /// One-way delay.
    pub delay: Duration,
    /// Extra random delay up to this (reorders).
    pub jitter: Duration,
    /// Split the segment in two, then heal.
    pub partition: bool,
    /// Crash the leader, then restart it.
    pub crash: bool,
    /// Change a random node's priority inputs mid-run.
    pub priority_change: bool,
    /// The cluster's preempt setting.
    pub preempt: bool,
    /// Election timers of every node.
    pub timers: ElectionTimers,
    /// Membership timers of every node.
    pub membership: MembershipTimers,
    /// Stabilisation time after the last fault.
    pub settle: Duration,
    /// Observation window after the stabilisation time.
    pub observe: Duration,
    /// Record a trace of the run (slow; for replaying a failing seed).
    pub trace: bool,
}

impl SimConfig {
    /// The simulation's defaults for `nodes` nodes: LAN-like links, tight
    /// timers (LA every 100 ms, 3 missed, claim delay 5–40 ms, voting window
    /// 30 ms: failover bound 325 + 40 + 30 = 395 ms), no faults.
    pub fn new(nodes: usize) -> Self {
        SimConfig {
            nodes,
            loss: 0.0,
            duplicate: 0.01,
            delay: Duration::from_micros(200),
            jitter: Duration::from_millis(1),
            partition: false,
            crash: false,
            priority_change: false,
            preempt: false,
            timers: ElectionTimers {
                la_interval: Duration::from_millis(100),
                la_miss: 3,
                claim_delay_min: Duration::from_millis(5),
                claim_delay_max: Duration::from_millis(40),
                voting_window: Duration::from_millis(30),
                deposed_hold: Duration::from_secs(1),
            },
            membership: MembershipTimers {
                alive_interval: Duration::from_millis(200),
                member_timeout: Duration::from_millis(2000),
                list_delay: Duration::from_millis(300),
                register_jitter: Duration::from_millis(100),
            },
            settle: Duration::from_secs(3),
            observe: Duration::from_secs(2),
            trace: false,
        }
    }
}

/// The result of one run. See the module docs for the definitions.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RunOutcome {
    /// The run's seed.
    pub seed: u64,
    /// One leader known by all live nodes reached, and no other, in the window.
    pub converged: bool,
    /// All live nodes agreed on one leader at the last instant of the run.
    pub agreed_at_end: bool,
    /// Two live leaders at once during the observation window.
    pub split_brain: bool,
    /// The final leader has the highest configured priority of the
    /// candidates it was elected among (see the module docs).
    pub highest_priority_won: bool,
    /// The final leader has the highest priority of every live node, one
    /// that returned after the election included (only preemption does that).
    pub highest_live_won: bool,
    /// Every live node lists exactly the live nodes.
    pub members_agree: bool,
    /// Leader crash to a new leader known by all, if a leader was crashed.
    pub failover: Option<Duration>,
    /// Datagrams per live node per second in the observation window.
    pub datagrams_per_node_per_s: f64,
    /// The final leader.
    pub leader: Option<NodeId>,
    /// The trace, if asked for.
    #[serde(skip)]
    pub trace: Vec<String>,
}

/// Results of many runs: the keys `cmover sim election --json` prints.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Summary {
    /// Runs.
    pub runs: u64,
    /// Runs that converged.
    pub converged: u64,
    /// Runs with a split brain after stabilisation.
    pub split_brain: u64,
    /// Runs won by the highest-priority candidate (after a crash: survivor).
    pub highest_priority_won: u64,
    /// Runs won by the highest-priority live node, a returning one included.
    pub highest_live_won: u64,
    /// Median failover, ms (null without crashes).
    pub failover_ms_p50: Option<f64>,
    /// 99th percentile failover, ms.
    pub failover_ms_p99: Option<f64>,
    /// Mean steady-state datagrams per node per second.
    pub datagrams_per_node_per_s: f64,
    /// Failovers measured (not in the JSON).
    #[serde(skip)]
    pub failovers: u64,
    /// Longest failover, ms (not in the JSON).
    #[serde(skip)]
    pub failover_ms_max: Option<f64>,
    /// Runs whose member lists agreed (not in the JSON).
    #[serde(skip)]
    pub members_agree: u64,
    /// Runs agreeing on the leader at their last instant (not in the JSON).
    #[serde(skip)]
    pub agreed_at_end: u64,
    /// Seeds of runs that did not converge or split (not in the JSON).
    #[serde(skip)]
    pub failing_seeds: Vec<u64>,
    /// Seeds of runs whose member lists disagreed (not in the JSON).
    #[serde(skip)]
    pub members_disagree_seeds: Vec<u64>,
}

/// The seed of run `i` of a batch started with `seed` (SplitMix64).
pub fn run_seed(seed: u64, i: u64) -> u64 {
    let mut z = seed.wrapping_add(i.wrapping_add(1).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Runs `runs` seeded scenarios (on all cores) and summarises them. The
/// result depends only on `config`, `runs` and `seed`.
pub fn run_many(config: &SimConfig, runs: u64, seed: u64) -> Summary {
    let threads =
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1).min(runs.max(1) as usize);
    let mut outcomes: Vec<RunOutcome> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                s.spawn(move || {
                    (t as u64..runs)
                        .step_by(threads)
                        .map(|i| run_one(config, run_seed(seed, i)))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles.into_iter().flat_map(|h| h.join().unwrap_or_else(|e| std::panic::resume_unwind(e))).collect()
    });
    outcomes.sort_by_key(|o| o.seed);
    summarise(&outcomes)
}

/// Summarises outcomes.
pub fn summarise(outcomes: &[RunOutcome]) -> Summary {
    let count = |f: &dyn Fn(&RunOutcome) -> bool| outcomes.iter().filter(|o| f(o)).count() as u64;
    let mut failovers: Vec<f64> =
        outcomes.iter().filter_map(|o| o.failover).map(|d| d.as_secs_f64() * 1000.0).collect();
    failovers.sort_by(f64::total_cmp);
    let pct = |p: f64| super::nearest_rank(&failovers, p).map(|v| (v * 1000.0).round() / 1000.0);
    let traffic = if outcomes.is_empty() {
        0.0
    } else {
        outcomes.iter().map(|o| o.datagrams_per_node_per_s).sum::<f64>() / outcomes.len() as f64
    };
    Summary {
        runs: outcomes.len() as u64,
        converged: count(&|o| o.converged),
        split_brain: count(&|o| o.split_brain),
        highest_priority_won: count(&|o| o.highest_priority_won),
        highest_live_won: count(&|o| o.highest_live_won),
        failover_ms_p50: pct(0.50),
        failover_ms_p99: pct(0.99),
        datagrams_per_node_per_s: (traffic * 1000.0).round() / 1000.0,
        failovers: failovers.len() as u64,
        failover_ms_max: failovers.last().copied(),
        members_agree: count(&|o| o.members_agree),
        agreed_at_end: count(&|o| o.agreed_at_end),
        failing_seeds: outcomes.iter().filter(|o| !o.converged || o.split_brain).map(|o| o.seed).collect(),
        members_disagree_seeds: outcomes.iter().filter(|o| !o.members_agree).map(|o| o.seed).collect(),
    }
}

/// A scheduled fault.
#[derive(Debug, Clone)]
enum Action {
    Start(NodeIndex),
    CrashLeader,
    Restart,
    Partition(Vec<NodeIndex>),
    Heal,
    Reprioritise(NodeIndex, PriorityInputs),
}

struct Node {
    id: NodeId,
    config: ElectorConfig,
    core: Option<Elector>,
    incarnation: u64,
    /// When its process last started.
    started: Time,
}

struct Sim<'a> {
    cfg: &'a SimConfig,
    seed: u64,
    net: Network<ControlMsg>,
    nodes: Vec<Node>,
    now: Time,
    trace: Vec<String>,
    sent_in_window: u64,
    window_start: Time,
}

/// Random election inputs (most nodes without an administrator preference).
pub(crate) fn random_inputs(rng: &mut ChaCha8Rng) -> PriorityInputs {
    let mut r = || rng.random_range(0..=100u8);
    let preference = r();
    let (cpu, disk, network, reliability, freshness) = (r(), r(), r(), r(), r());
    PriorityInputs {
        // Most nodes carry no administrator preference.
        preference: if preference < 80 { 0 } else { preference },
        cpu,
        disk,
        network,
        reliability,
        freshness,
    }
}

impl Sim<'_> {
    fn index_of(&self, id: NodeId) -> Option<NodeIndex> {
        self.nodes.iter().position(|n| n.id == id)
    }

    fn log(&mut self, what: impl FnOnce() -> String) {
        if self.cfg.trace {
            let line = format!("{:>9.3} {}", self.now.as_micros() as f64 / 1000.0, what());
            self.trace.push(line);
        }
    }

    fn live(&self) -> impl Iterator<Item = (NodeIndex, &Elector)> {
        self.nodes.iter().enumerate().filter_map(|(i, n)| n.core.as_ref().map(|c| (i, c)))
    }

    /// The one live leader that every live node knows, if there is one.
    fn agreed_leader(&self) -> Option<NodeId> {
        let mut leaders = self.live().filter(|(_, c)| c.is_leader());
        let (_, leader) = leaders.next()?;
        if leaders.next().is_some() {
            return None;
        }
        let id = leader.id();
        self.live().all(|(_, c)| c.leader() == Some(id)).then_some(id)
    }

    fn live_leaders(&self) -> usize {
        self.live().filter(|(_, c)| c.is_leader()).count()
    }

    /// Sends what node `i` has to send and records its events.
    fn drain(&mut self, i: NodeIndex) {
        let now = self.now;
        loop {
            let Some(core) = self.nodes[i].core.as_mut() else {
                return;
            };
            let t = core.poll_transmit();
            let e = if t.is_none() { core.poll_event() } else { None };
            match (t, e) {
                (Some(t), _) => {
                    if now >= self.window_start {
                        self.sent_in_window += 1;
                    }
                    self.log(|| format!("{i} sends {:?} to {:?}", t.msg, t.to));
                    match t.to {
                        Dest::All => self.net.multicast(now, i, t.msg),
                        Dest::Node(id) => {
                            if let Some(j) = self.index_of(id) {
                                self.net.send(now, i, j, t.msg);
                            }
                        }
                    }
                }
                (None, Some(e)) => self.log(|| format!("{i} event {e:?}")),
                (None, None) => return,
            }
        }
    }

    fn start_node(&mut self, i: NodeIndex) {
        let n = &mut self.nodes[i];
        n.incarnation += 1;
        n.started = self.now;
        let seed = self.seed ^ (i as u64) << 32 ^ n.incarnation;
        let mut core = Elector::new(n.config.clone(), n.id, seed);
        core.handle_timeout(self.now);
        n.core = Some(core);
        self.net.restart(i);
        self.log(|| format!("{i} starts"));
        self.drain(i);
    }

    fn crash(&mut self, i: NodeIndex) {
        self.nodes[i].core = None;
        self.net.crash(i);
        self.log(|| format!("{i} crashes"));
    }
}

/// Runs one scenario. Deterministic in `(config, seed)`.
pub fn run_one(config: &SimConfig, seed: u64) -> RunOutcome {
    let n = config.nodes.max(1);
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let faults = LinkFaults {
        loss: config.loss,
        delay: config.delay,
        jitter: config.jitter,
        duplicate: config.duplicate,
        burst: None,
    };
    let mut net = Network::new(n, rng.random(), faults);
    // Ids in random order, so that id order says nothing about priority.
    let mut ids: Vec<u64> = (1..=n as u64).collect();
    ids.shuffle(&mut rng);
    let nodes: Vec<Node> = ids
        .iter()
        .map(|&id| Node {
            id: NodeId(id),
            config: ElectorConfig {
                timers: config.timers,
                membership: config.membership,
                preempt: config.preempt,
                gl_capable: true,
                priority: random_inputs(&mut rng),
                info: MemberInfo {
                    http: format!("10.0.0.{id}:7480"),
                    data: String::new(),
                    name: format!("node-{id}"),
                    serials: Vec::new(),
                },
            },
            core: None,
            incarnation: 0,
            started: Time::ZERO,
        })
        .collect();
    for i in 0..n {
        net.crash(i);
    }

    // The scenario: starts within one LA interval, then the faults.
    let la = config.timers.la_interval;
    let mut plan: Vec<(Time, Action)> = (0..n)
        .map(|i| {
            let at = Time::from_micros(rng.random_range(0..=la.as_micros() as u64));
            (at, Action::Start(i))
        })
        .collect();
    let ms = |rng: &mut ChaCha8Rng, lo: u64, hi: u64| Duration::from_millis(rng.random_range(lo..=hi));
    let mut t = Time::from_millis(2000);
    if config.partition && n >= 2 {
        t += ms(&mut rng, 0, 500);
        let mut order: Vec<NodeIndex> = (0..n).collect();
        order.shuffle(&mut rng);
        let cut = rng.random_range(1..n);
        plan.push((t, Action::Partition(order[..cut].to_vec())));
        t += ms(&mut rng, 500, 2000);
        plan.push((t, Action::Heal));
        t += ms(&mut rng, 1000, 1500);
    }
    if config.priority_change {
        let at = Time::from_millis(1000) + ms(&mut rng, 0, 1000);
        let who = rng.random_range(0..n);
        plan.push((at, Action::Reprioritise(who, random_inputs(&mut rng))));
    }
    if config.crash && n >= 2 {
        t += ms(&mut rng, 0, 500);
        plan.push((t, Action::CrashLeader));
        t += ms(&mut rng, 1500, 2500);
        plan.push((t, Action::Restart));
    }
    plan.sort_by_key(|(at, _)| *at);
    let last_fault = plan.iter().map(|(at, _)| *at).max().unwrap_or(Time::ZERO);
    let window_start = last_fault + config.settle;
    let end = window_start + config.observe;

    let mut sim = Sim {
        cfg: config,
        seed,
        net,
        nodes,
        now: Time::ZERO,
        trace: Vec::new(),
        sent_in_window: 0,
        window_start,
    };
    let mut plan = plan.into_iter().peekable();
    let mut crashed: Option<NodeIndex> = None;
    let mut failover_from: Option<Time> = None;
    let mut failover = None;
    let mut split_brain = false;
    // Leaders all live nodes agreed on during the observation window.
    let mut agreed_in_window: Vec<NodeId> = Vec::new();
    // The last leader all live nodes came to agree on, and since when.
    let mut elected: Option<(NodeId, Time)> = None;

    loop {
        let next_timer = sim.live().filter_map(|(_, c)| c.poll_timeout()).min();
        let next =
            [sim.net.next_time(), next_timer, plan.peek().map(|(at, _)| *at)].into_iter().flatten().min();
        let Some(next) = next.filter(|t| *t <= end) else {
            break;
        };
        sim.now = sim.now.max(next);
        let now = sim.now;

        while let Some((_, action)) = plan.next_if(|(at, _)| *at <= now) {
            sim.log(|| format!("fault {action:?}"));
            match action {
                Action::Start(i) => sim.start_node(i),
                Action::CrashLeader => {
                    let clean = sim.agreed_leader();
                    let leader = sim.live().find(|(_, c)| c.is_leader()).map(|(i, _)| i);
                    let victim = leader.unwrap_or_else(|| rng.random_range(0..n));
                    if clean.is_some() && leader.is_some() {
                        failover_from = Some(now);
                    }
                    sim.crash(victim);
                    crashed = Some(victim);
                }
                Action::Restart => {
                    if let Some(i) = crashed.take() {
                        sim.start_node(i);
                    }
                }
                Action::Partition(side) => sim.net.partition(&[&side]),
                Action::Heal => sim.net.heal(),
                Action::Reprioritise(i, inputs) => {
                    sim.nodes[i].config.priority = inputs;
                    let config = sim.nodes[i].config.clone();
                    if let Some(c) = sim.nodes[i].core.as_mut() {
                        c.handle_config(now, config);
                    }
                    sim.drain(i);
                }
            }
        }
        while let Some(d) = sim.net.pop_due(now) {
            let from = sim.nodes[d.from].id;
            if let Some(core) = sim.nodes[d.to].core.as_mut() {
                core.handle_datagram(now, from, d.msg);
                sim.drain(d.to);
            }
        }
        for i in 0..n {
            let due = sim.nodes[i].core.as_ref().and_then(|c| c.poll_timeout()).is_some_and(|t| t <= now);
            if due {
                if let Some(core) = sim.nodes[i].core.as_mut() {
                    core.handle_timeout(now);
                }
                sim.drain(i);
            }
        }

        if let Some(from) = failover_from {
            if sim.agreed_leader().is_some() {
                failover = Some(now - from);
                failover_from = None;
                sim.log(|| format!("failover after {:?}", now - from));
            }
        }
        if let Some(l) = sim.agreed_leader() {
            if elected.map(|(e, _)| e) != Some(l) {
                elected = Some((l, now));
            }
        }
        if now >= window_start {
            if let Some(l) = sim.agreed_leader() {
                if !agreed_in_window.contains(&l) {
                    agreed_in_window.push(l);
                }
            }
        }
        if now >= window_start && sim.live_leaders() > 1 {
            if !split_brain {
                sim.log(|| "split brain".to_string());
            }
            split_brain = true;
        }
    }

    let at_end = sim.agreed_leader();
    let converged = agreed_in_window.len() == 1;
    let leader = if converged { agreed_in_window.first().copied() } else { None };
    // The candidates the final leader was chosen among: the live ones that
    // were up when all came to agree on it (a node that restarts after its
    // segment elected another does not take over without preemption, by
    // design), or every live one with preemption on.
    let since = elected.filter(|(e, _)| Some(*e) == leader).map_or(Time::ZERO, |(_, t)| t);
    let best_of = |all: bool| {
        sim.live()
            .filter(|(i, _)| sim.nodes[*i].config.gl_capable)
            .filter(|(i, _)| all || config.preempt || sim.nodes[*i].started <= since)
            .map(|(i, _)| (sim.nodes[i].config.priority.base(), sim.nodes[i].id))
            .max()
            .map(|(_, id)| id)
    };
    let (best, best_live) = (best_of(false), best_of(true));
    let mut live_ids: Vec<NodeId> = sim.live().map(|(_, c)| c.id()).collect();
    live_ids.sort();
    let members_agree = sim.live().all(|(_, c)| c.members() == live_ids);
    let live = live_ids.len().max(1) as f64;
    let secs = config.observe.as_secs_f64().max(1e-9);
    RunOutcome {
        seed,
        converged,
        agreed_at_end: at_end.is_some(),
        split_brain,
        highest_priority_won: leader.is_some() && leader == best,
        highest_live_won: leader.is_some() && leader == best_live,
        members_agree,
        failover,
        datagrams_per_node_per_s: sim.sent_in_window as f64 / live / secs,
        leader,
        trace: sim.trace,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_run_replays_exactly_from_its_seed() {
        let mut c = SimConfig::new(5);
        c.loss = 0.1;
        c.crash = true;
        c.partition = true;
        assert_eq!(run_one(&c, 42), run_one(&c, 42));
        let s1 = run_many(&c, 8, 3);
        let s2 = run_many(&c, 8, 3);
        assert_eq!(s1, s2);
    }

    #[test]
    fn percentiles_use_the_nearest_rank() {
        let o = |ms: u64| RunOutcome {
            seed: ms,
            converged: true,
            agreed_at_end: true,
            split_brain: false,
            highest_priority_won: true,
            highest_live_won: true,
            members_agree: true,
            failover: Some(Duration::from_millis(ms)),
            datagrams_per_node_per_s: 1.0,
            leader: None,
            trace: Vec::new(),
        };
        let outs: Vec<_> = (1..=100).map(o).collect();
        let s = summarise(&outs);
        assert_eq!(s.failover_ms_p50, Some(50.0));
        assert_eq!(s.failover_ms_p99, Some(99.0));
        assert_eq!(s.failover_ms_max, Some(100.0));
        assert_eq!(s.runs, 100);
    }
}
