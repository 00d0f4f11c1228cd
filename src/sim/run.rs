//! `cmover sim run`: whole runs of every job kind over a simulated fleet of
//! S segments × M servers, with several sites whose content groups overlap
//! segments, under seeded faults, driven through the real sans-IO cores.
//!
//! What is real: the run core ([`plan`], [`Run`]: waves, quorum,
//! commit/abort, cancel, timeouts, recovery after a CCM restart) and its
//! store-and-forward [`Distribution`](crate::protocol::distribution::Distribution)
//! (next hops, re-notifies, leader changes and restarts by incarnation);
//! in every segment, every server's [`Elector`](crate::protocol::election::Elector)
//! (the leader is whoever the election makes one, and loses its jobs when
//! it stops leading), the leader's MCTP [`Sender`](crate::protocol::mctp::Sender)
//! and every member's [`Receiver`](crate::protocol::mctp::Receiver) (announces
//! and blocks name the segment's targets; the others hear every datagram and
//! must ignore it), and report collection ([`Collector`](crate::protocol::reports::Collector)
//! on the leader, rounds until `report_timeout` as the group leader actor
//! does; a [`Reporter`](crate::protocol::reports::Reporter) on every member).
//! These datagrams go through the real codecs (data channel) over the
//! seeded virtual-time [`Network`](super::net::Network) of their segment,
//! with loss, delay, jitter, duplication, crashed nodes and LAN partitions.
//!
//! What is modelled, with seeded delays: the HTTP hops (CCM → leader
//! notify, leader → leader notify, the leader's fetch of its copy, next-hop
//! requests, segment reports and segment results to the CCM, retried with
//! the actor's backoff until accepted), the CCM process (packing, the tree
//! planner, which orders the leaders the CCM last heard of), and each
//! server's content interpreter: it applies only an assignment whose
//! verified copy it received (its bytes are checked against the original),
//! stores and builds only what names it, switches only a release it built,
//! discards on abort, and keeps its releases and results across a crash.
//!
//! After every step the invariants are checked: (a) only targets ever
//! store, apply or switch; (b) no server is ever live on the release of a
//! run that aborted; (c) a run commits only if its quorum held, and then
//! every target is live on the new release or named as failed; (d) every
//! run ends within a bound derived from the configuration; (e) no group
//! member is live on a hot release. Every run derives from one seed
//! ([`run_seed`]); a failing run's seed replays it with `--replay`.

mod lan;
mod world;

use std::collections::BTreeSet;
use std::time::Duration;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

use crate::protocol::api::ServerOutcome;
use crate::protocol::distribution::DistributionConfig;
use crate::protocol::election::{ElectionTimers, MembershipTimers};
use crate::protocol::ids::{JobId, NodeId, RunId};
use crate::protocol::mctp::{ReceiverConfig, SenderConfig};
use crate::protocol::reports::CollectorConfig;
use crate::protocol::run::{
    plan, GroupView, JobKind, JobView, Plan, Quorum, Run, RunConfig, RunState, ServerView, SiteView,
};

use world::World;

/// The faults a run can meet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Fault {
    /// Datagrams are lost on the segments' LANs (MCTP repairs, or a target fails).
    Loss,
    /// A leader crashes mid-run and restarts (re-elected, or another leads).
    LeaderCrash,
    /// Members crash mid-run; some restart.
    MemberCrash,
    /// The CCM restarts mid-run and recovers its runs from what it saved.
    CcmRestart,
    /// A segment is cut off from the CCM for a while, or its LAN splits in two.
    Partition,
    /// Segment results arrive late, some after the report timeout; members apply slowly.
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
    /// Period of a leader's segment reports to the CCM.
    pub segment_report_interval: Duration,
    /// Loss probability per datagram and receiver on every segment's LAN
    /// (with [`Fault::Loss`]).
    pub loss: f64,
    /// Every server's election timers.
    pub election: ElectionTimers,
    /// Every server's membership timers.
    pub membership: MembershipTimers,
    /// The leaders' MCTP senders.
    pub sender: SenderConfig,
    /// The members' MCTP receivers.
    pub receiver: ReceiverConfig,
    /// Report collection (leader and members).
    pub collector: CollectorConfig,
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
            loss: 0.05,
            // LAN-like timers, tighter than the shipped defaults so that a run
            // takes about a second: failover 650 + 80 + 50 ms.
            election: ElectionTimers {
                la_interval: Duration::from_millis(200),
                la_miss: 3,
                claim_delay_min: Duration::from_millis(10),
                claim_delay_max: Duration::from_millis(80),
                voting_window: Duration::from_millis(50),
                deposed_hold: Duration::from_secs(2),
            },
            membership: MembershipTimers {
                alive_interval: Duration::from_secs(1),
                member_timeout: Duration::from_secs(6),
                list_delay: Duration::from_millis(300),
                register_jitter: Duration::from_millis(200),
            },
            sender: SenderConfig {
                announce_interval: Duration::from_millis(20),
                announce_repeat: Duration::from_millis(500),
                report_window: Duration::from_millis(50),
                report_grace: Duration::from_millis(20),
                ..SenderConfig::default()
            },
            receiver: ReceiverConfig {
                report_window: Duration::from_millis(50),
                session_timeout: Duration::from_secs(5),
                linger: Duration::from_secs(20),
                query_interval: Duration::from_millis(50),
                ..ReceiverConfig::default()
            },
            collector: CollectorConfig {
                interval: Duration::from_millis(50),
                slots: 4,
                grace: Duration::from_millis(50),
                unicast_max: 4,
                max_requests: 10,
            },
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
    /// Datagrams (election, MCTP, reports) and HTTP requests sent during the run.
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

/// Runs `runs` seeded runs (on all cores) and sums them up. The result
/// depends only on `cfg`, `runs` and `seed`.
pub fn run_many(cfg: &RunSimConfig, runs: u64, seed: u64) -> Summary {
    let threads =
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1).min(runs.max(1) as usize);
    let mut outcomes: Vec<(u64, RunOutcome)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                s.spawn(move || {
                    (t as u64..runs)
                        .step_by(threads)
                        .map(|i| (i, run_one(cfg, run_seed(seed, i))))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles.into_iter().flat_map(|h| h.join().unwrap_or_else(|e| std::panic::resume_unwind(e))).collect()
    });
    outcomes.sort_by_key(|(i, _)| *i);
    let outcomes: Vec<RunOutcome> = outcomes.into_iter().map(|(_, o)| o).collect();
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

/// A server's content interpreter's state of the site (on its disk: it
/// survives a crash).
#[derive(Debug, Clone, Default)]
struct Holding {
    /// Built, not live (`incoming/`).
    incoming: BTreeSet<u64>,
    /// Releases it keeps.
    releases: BTreeSet<u64>,
    /// Live release (0: none).
    live: u64,
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

/// One seeded run in a fresh fleet (see the module docs).
pub fn run_one(cfg: &RunSimConfig, seed: u64) -> RunOutcome {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let per = cfg.servers_per_segment.max(1);
    let nseg = cfg.segments.max(1);
    let live = rng.random_range(1..4u64);
    let ids: Vec<NodeId> = (0..nseg * per).map(|i| NodeId(i as u64 + 1)).collect();
    // Two sites' groups overlap every segment; this run is about one of
    // them, the other site's servers share its segments (non-targets).
    let share = if rng.random_bool(0.5) { 0.6 } else { 0.3 };
    let group: Vec<NodeId> = ids.iter().copied().filter(|_| rng.random_bool(share)).collect();
    let group = if group.is_empty() { vec![ids[0]] } else { group };
    let mut sites: Vec<Holding> = vec![Holding::default(); ids.len()];
    for (i, h) in sites.iter_mut().enumerate() {
        if group.contains(&ids[i]) {
            h.live = match rng.random_range(0..100) {
                0 => 0,
                1 => live.saturating_sub(1),
                _ => live,
            };
            h.releases = (1..=h.live).collect();
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
    let views: Vec<ServerView> = ids
        .iter()
        .enumerate()
        .map(|(i, id)| ServerView {
            id: *id,
            segment: world::segment_name(i / per),
            online: true,
            live: sites[i].live,
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
    let (targets, needed, serial) = (p.targets.clone(), p.needed, p.serial);
    let hot = if kind == JobKind::Hot { [serial].into() } else { BTreeSet::new() };
    let mut w = World::new(cfg, rng, sites, group, hot, faults.clone());
    w.warm_up();
    let start = w.now;
    w.start_run(Run::start(RunId(1), p, cfg.run), &targets);
    w.schedule_faults();
    w.run_to_end(start + cfg.run.bound() * 4 + Duration::from_secs(60));
    let run = w.run.take().expect("run");
    let state = run.state();
    let ran = w.now.saturating_since(start);
    // (d): each wave ends at its report timeout; a CCM restart starts one more.
    let bound = cfg.run.report_timeout * (2 + w.restarts) + w.downtime + Duration::from_secs(2);
    if !state.is_final() || ran > bound {
        w.violate(
            |v| &mut v.bound,
            format!("run took {} ms (bound {} ms), ended {state:?}", ran.as_millis(), bound.as_millis()),
        );
    }
    if !w.commit_decided && kind.takes_fresh_serial() {
        w.check_live_all(Some(serial));
    }
    if state == RunState::Committed {
        let built = run.applied().values().filter(|o| **o == ServerOutcome::Succeeded).count();
        if !kind.header_only() && built < needed {
            w.violate(|v| &mut v.quorum, format!("committed with {built} of {needed} needed"));
        }
        for t in &targets {
            let on = w.live_of(*t);
            if on != Some(serial) && !run.failed().contains(t) {
                w.violate(
                    |v| &mut v.quorum,
                    format!("target {t} is on {on:?}, not {serial}, and not named failed"),
                );
            }
        }
    }
    w.check_live_all(None);
    outcome.state = Some(state);
    outcome.run_ms = u64::try_from(ran.as_millis()).unwrap_or(u64::MAX);
    outcome.datagrams = w.datagrams;
    outcome.violations = w.violations;
    outcome.first_violation =
        w.first_violation.map(|v| format!("seed {seed} ({kind:?}, faults {faults:?}): {v}"));
    outcome
}

/// What a run's content interpreters are sent.
#[derive(Debug, Clone, Copy)]
struct Wire {
    wave: crate::protocol::run::Wave,
    serial: u64,
    base: u64,
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
