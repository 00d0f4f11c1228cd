//! Store-and-forward distribution of one assignment to the group leaders
//! of a run (patent FIG. 7), as a pure state machine the `Ccm` actor drives.
//!
//! The CCM notifies the first `fanout` leaders itself. Every leader that
//! holds a copy asks for its next hop ([`Distribution::next_hop`]) and is
//! given the next leader still waiting, until none is left; so copies spread
//! as a tree and the CCM's uplink sends each byte about `fanout` times.
//! A leader that does not show it holds the copy within `notify_timeout`
//! (by asking for a next hop or reporting) is notified again, by the CCM
//! if no leader is still forwarding; after `max_attempts` it is given up and
//! named. A segment whose leader changes, or whose leader restarted (a new
//! incarnation in its segment report), is notified afresh; a leader that
//! holds the copy but falls silent for `notify_timeout` (no next-hop
//! request, no segment report) is notified again, which a live leader
//! answers as a duplicate and a restarted one takes up as a new job.
//!
//! Call order: [`Distribution::new`], then on every event the matching
//! `handle_*`, then [`Distribution::ccm_hops`] to learn whom the CCM must
//! notify itself; [`Distribution::poll_timeout`] says when to call
//! [`Distribution::handle_timeout`].

use std::time::Duration;

use serde::Serialize;

use super::api::CCM_NODE;
use super::ids::NodeId;
use super::time::Time;

/// A segment to deliver to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Target {
    /// The segment.
    pub segment: String,
    /// Its leader.
    pub leader: NodeId,
    /// The leader's base URL.
    pub url: String,
    /// Its servers that must receive the assignment.
    pub servers: Vec<NodeId>,
    /// The leader's incarnation (changes when its process restarts).
    #[serde(default)]
    pub incarnation: u64,
}

/// Where a target is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "stage", rename_all = "snake_case")]
pub enum Stage {
    /// Waiting to be notified.
    Pending,
    /// Notified by `by` (the CCM is node 0) at `at`, copy not yet confirmed.
    Notified {
        /// Who notified it.
        by: NodeId,
        /// When.
        at: Time,
    },
    /// Holds a verified copy; `forwarding` until told there is no next hop
    /// (or silent for `notify_timeout`: it may have died).
    Holding {
        /// Who it got the copy from.
        from: NodeId,
        /// Still asking for next hops.
        forwarding: bool,
        /// When it was last heard of (a next-hop request, a segment
        /// report, an answered notify).
        asked: Time,
    },
    /// Reported its segment's result.
    Reported {
        /// Who it got the copy from.
        from: NodeId,
    },
    /// Given up.
    Failed {
        /// Why.
        reason: String,
    },
}

/// One target and its progress.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Entry {
    /// The target.
    pub target: Target,
    /// Where it is.
    pub stage: Stage,
    /// Notifications sent so far.
    pub attempts: u32,
    /// A pending target is not notified before this (backoff after a failure).
    pub not_before: Time,
}

/// Settings.
#[derive(Debug, Clone, Copy)]
pub struct DistributionConfig {
    /// Leaders the CCM notifies itself.
    pub fanout: usize,
    /// Time a notified leader has to show it holds the copy.
    pub notify_timeout: Duration,
    /// Notifications per target before it is given up.
    pub max_attempts: u32,
    /// Wait after a failed notification, times the attempts so far: a dead
    /// leader's segment gets time to elect a new one before it is given up.
    pub retry_delay: Duration,
}

impl Default for DistributionConfig {
    fn default() -> Self {
        DistributionConfig {
            fanout: 2,
            notify_timeout: Duration::from_secs(30),
            max_attempts: 3,
            retry_delay: Duration::from_secs(1),
        }
    }
}

impl Entry {
    fn is_due(&self, now: Time) -> bool {
        self.stage == Stage::Pending && self.not_before <= now
    }
}

/// The distribution of one assignment. See the module docs.
#[derive(Debug, Clone)]
pub struct Distribution {
    cfg: DistributionConfig,
    entries: Vec<Entry>,
    /// Holders silent for `notify_timeout`, to be notified again by the CCM.
    probes: Vec<usize>,
}

impl Distribution {
    /// Targets in the order the tree planner chose.
    pub fn new(cfg: DistributionConfig, targets: Vec<Target>) -> Self {
        let entries = targets
            .into_iter()
            .map(|target| Entry { target, stage: Stage::Pending, attempts: 0, not_before: Time::ZERO })
            .collect();
        Distribution { cfg, entries, probes: Vec::new() }
    }

    /// Every target and its stage.
    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }

    fn find(&self, segment: &str) -> Option<usize> {
        self.entries.iter().position(|e| e.target.segment == segment)
    }

    fn by_leader(&self, leader: NodeId) -> Option<usize> {
        self.entries.iter().position(|e| e.target.leader == leader)
    }

    fn notify(&mut self, i: usize, by: NodeId, now: Time) {
        let e = &mut self.entries[i];
        e.attempts += 1;
        e.stage = Stage::Notified { by, at: now };
    }

    /// Targets the CCM must notify itself now (marked notified by the CCM):
    /// pending ones, while the CCM has fewer than `fanout` in flight and no
    /// leader is still forwarding (a forwarding leader will take them).
    pub fn ccm_hops(&mut self, now: Time) -> Vec<Target> {
        let forwarding =
            self.entries.iter().any(|e| matches!(e.stage, Stage::Holding { forwarding: true, .. }));
        let mut in_flight = self
            .entries
            .iter()
            .filter(|e| matches!(e.stage, Stage::Notified { by, .. } if by == CCM_NODE))
            .count();
        let mut out: Vec<Target> =
            std::mem::take(&mut self.probes).into_iter().map(|i| self.entries[i].target.clone()).collect();
        if forwarding {
            return out;
        }
        for i in 0..self.entries.len() {
            if in_flight >= self.cfg.fanout.max(1) {
                break;
            }
            if self.entries[i].is_due(now) {
                self.notify(i, CCM_NODE, now);
                in_flight += 1;
                out.push(self.entries[i].target.clone());
            }
        }
        out
    }

    fn confirm_holding(&mut self, i: usize, now: Time) {
        match self.entries[i].stage {
            Stage::Notified { by, .. } => {
                self.entries[i].stage = Stage::Holding { from: by, forwarding: true, asked: now }
            }
            Stage::Holding { from, forwarding: true, .. } => {
                self.entries[i].stage = Stage::Holding { from, forwarding: true, asked: now }
            }
            _ => {}
        }
    }

    /// `holder` holds a copy and asks whom to forward it to: the next
    /// pending target (now notified by `holder`), or `None`.
    pub fn next_hop(&mut self, now: Time, holder: NodeId) -> Option<Target> {
        let me = self.by_leader(holder);
        if let Some(i) = me {
            self.confirm_holding(i, now);
        }
        let next = self.entries.iter().position(|e| e.is_due(now));
        match next {
            Some(j) => {
                self.notify(j, holder, now);
                Some(self.entries[j].target.clone())
            }
            None => {
                if let Some(i) = me {
                    if let Stage::Holding { from, .. } = self.entries[i].stage {
                        self.entries[i].stage = Stage::Holding { from, forwarding: false, asked: now };
                    }
                }
                None
            }
        }
    }

    /// A notification could not be delivered (connection refused, not the
    /// leader…), a first one or a probe of a silent holder.
    pub fn handle_notify_failed(&mut self, now: Time, segment: &str, reason: &str) {
        if let Some(i) = self.find(segment) {
            if matches!(self.entries[i].stage, Stage::Notified { .. } | Stage::Holding { .. }) {
                let wait = self.cfg.retry_delay * self.entries[i].attempts;
                self.retry_or_fail(i, reason, now + wait);
            }
        }
    }

    fn retry_or_fail(&mut self, i: usize, reason: &str, not_before: Time) {
        let e = &mut self.entries[i];
        e.stage = if e.attempts >= self.cfg.max_attempts {
            Stage::Failed { reason: format!("{reason} (after {} attempts)", e.attempts) }
        } else {
            e.not_before = not_before;
            Stage::Pending
        };
    }

    /// A segment reported its result.
    pub fn handle_reported(&mut self, segment: &str) {
        if let Some(i) = self.find(segment) {
            let from = match &self.entries[i].stage {
                Stage::Notified { by, .. } => *by,
                Stage::Holding { from, .. } | Stage::Reported { from } => *from,
                _ => CCM_NODE,
            };
            self.entries[i].stage = Stage::Reported { from };
        }
    }

    /// A segment report came from `leader` at `url` in its `incarnation`: a
    /// new leader, address or incarnation (it restarted and lost its jobs)
    /// is notified afresh unless the segment has reported; the same one is
    /// heard of, so a holder is not probed.
    pub fn handle_leader_seen(
        &mut self,
        now: Time,
        segment: &str,
        leader: NodeId,
        url: &str,
        incarnation: u64,
    ) {
        if let Some(i) = self.find(segment) {
            let e = &mut self.entries[i];
            if matches!(e.stage, Stage::Reported { .. }) {
                return;
            }
            let same = e.target.leader == leader && e.target.url == url;
            if same && (e.target.incarnation == incarnation || e.target.incarnation == 0) {
                e.target.incarnation = incarnation;
                if let Stage::Holding { from, forwarding, .. } = e.stage {
                    e.stage = Stage::Holding { from, forwarding, asked: now };
                }
                return;
            }
            e.target.leader = leader;
            e.target.url = url.to_owned();
            e.target.incarnation = incarnation;
            e.stage = Stage::Pending;
            e.attempts = 0;
            e.not_before = Time::ZERO;
            self.probes.retain(|p| *p != i);
        }
    }

    /// When [`Distribution::handle_timeout`] should next be called.
    pub fn poll_timeout(&self) -> Option<Time> {
        self.entries
            .iter()
            .filter_map(|e| match e.stage {
                Stage::Notified { at, .. } => Some(at + self.cfg.notify_timeout),
                Stage::Holding { asked, .. } => Some(asked + self.cfg.notify_timeout),
                Stage::Pending if e.not_before > Time::ZERO => Some(e.not_before),
                _ => None,
            })
            .min()
    }

    /// Notified targets that did not confirm in time go back to pending;
    /// a forwarding leader silent as long is no longer counted on to forward.
    pub fn handle_timeout(&mut self, now: Time) {
        for i in 0..self.entries.len() {
            // A backoff that is over: the target is due (it waits for a free
            // slot or a forwarding leader, not for the clock).
            if self.entries[i].stage == Stage::Pending && self.entries[i].not_before <= now {
                self.entries[i].not_before = Time::ZERO;
            }
            match self.entries[i].stage {
                Stage::Notified { at, .. } if now >= at + self.cfg.notify_timeout => {
                    self.retry_or_fail(i, "no copy confirmed in time", now);
                }
                Stage::Holding { from, forwarding: true, asked }
                    if now >= asked + self.cfg.notify_timeout =>
                {
                    // Not counted on to forward; probed if silent as long again.
                    self.entries[i].stage = Stage::Holding { from, forwarding: false, asked: now };
                }
                Stage::Holding { from, forwarding: false, asked }
                    if now >= asked + self.cfg.notify_timeout =>
                {
                    // Silent since: notify it again (it answers, or the
                    // failure puts the segment back to pending).
                    self.entries[i].stage = Stage::Holding { from, forwarding: false, asked: now };
                    if !self.probes.contains(&i) {
                        self.probes.push(i);
                    }
                }
                _ => {}
            }
        }
    }

    /// True when every target has reported or been given up.
    pub fn is_done(&self) -> bool {
        self.entries.iter().all(|e| matches!(e.stage, Stage::Reported { .. } | Stage::Failed { .. }))
    }

    /// Targets given up, with the reason.
    pub fn failed(&self) -> Vec<(&Target, &str)> {
        self.entries
            .iter()
            .filter_map(|e| match &e.stage {
                Stage::Failed { reason } => Some((&e.target, reason.as_str())),
                _ => None,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn targets(n: u64) -> Vec<Target> {
        (1..=n)
            .map(|i| Target {
                segment: format!("s{i}"),
                leader: NodeId(i * 10),
                url: format!("http://gl{i}"),
                servers: vec![NodeId(i * 10)],
                incarnation: 1,
            })
            .collect()
    }

    fn cfg() -> DistributionConfig {
        DistributionConfig {
            fanout: 2,
            notify_timeout: Duration::from_secs(5),
            max_attempts: 2,
            retry_delay: Duration::from_secs(1),
        }
    }

    fn segs(t: &[Target]) -> Vec<&str> {
        t.iter().map(|t| t.segment.as_str()).collect()
    }

    /// Patent FIG. 7: the CCM sends to the first leaders, holders forward to
    /// the rest, each target gets the assignment once.
    #[test]
    fn fig7_copies_spread_as_a_tree_from_fanout_first_hops() {
        let mut d = Distribution::new(cfg(), targets(6));
        let t0 = Time::ZERO;
        assert_eq!(segs(&d.ccm_hops(t0)), ["s1", "s2"]);
        assert!(d.ccm_hops(t0).is_empty(), "fanout reached");
        assert_eq!(d.next_hop(t0, NodeId(10)).unwrap().segment, "s3");
        assert_eq!(d.next_hop(t0, NodeId(20)).unwrap().segment, "s4");
        assert!(d.ccm_hops(t0).is_empty(), "leaders are forwarding");
        assert_eq!(d.next_hop(t0, NodeId(30)).unwrap().segment, "s5");
        assert_eq!(d.next_hop(t0, NodeId(10)).unwrap().segment, "s6");
        for leader in [20, 40, 50, 60, 30, 10] {
            assert_eq!(d.next_hop(t0, NodeId(leader)), None);
        }
        for s in 1..=6 {
            assert!(!d.is_done());
            d.handle_reported(&format!("s{s}"));
        }
        assert!(d.is_done());
        let from: Vec<NodeId> = d
            .entries()
            .iter()
            .map(|e| match e.stage {
                Stage::Reported { from } => from,
                _ => panic!(),
            })
            .collect();
        assert_eq!(from, [NodeId(0), NodeId(0), NodeId(10), NodeId(20), NodeId(30), NodeId(10)]);
    }

    #[test]
    fn a_silent_leader_is_renotified_then_given_up() {
        let mut d = Distribution::new(cfg(), targets(1));
        assert_eq!(d.ccm_hops(Time::ZERO).len(), 1);
        assert_eq!(d.poll_timeout(), Some(Time::ZERO + Duration::from_secs(5)));
        d.handle_timeout(Time::from_millis(4_999));
        assert!(d.ccm_hops(Time::from_millis(4_999)).is_empty());
        d.handle_timeout(Time::from_millis(5_000));
        assert_eq!(d.ccm_hops(Time::from_millis(5_000)).len(), 1, "notified again");
        d.handle_notify_failed(Time::from_millis(5_000), "s1", "connection refused");
        assert!(d.is_done());
        assert_eq!(d.failed()[0].1, "connection refused (after 2 attempts)");
    }

    #[test]
    fn a_failed_hop_is_taken_over_by_the_ccm_once_nobody_forwards() {
        let mut d = Distribution::new(DistributionConfig { fanout: 1, max_attempts: 3, ..cfg() }, targets(3));
        let t = Time::ZERO;
        assert_eq!(segs(&d.ccm_hops(t)), ["s1"]);
        assert_eq!(d.next_hop(t, NodeId(10)).unwrap().segment, "s2");
        d.handle_notify_failed(t, "s2", "refused");
        // s2 backs off (1 s × 1 attempt); s1 serves s3 meanwhile, then has nobody left.
        assert_eq!(d.next_hop(t, NodeId(10)).unwrap().segment, "s3");
        assert_eq!(d.next_hop(t, NodeId(10)), None, "s2 is not due yet");
        assert!(d.ccm_hops(t).is_empty(), "nor for the CCM");
        // Nobody forwards any more: once due, the CCM itself notifies s2.
        let t = t + Duration::from_secs(1);
        assert_eq!(segs(&d.ccm_hops(t)), ["s2"]);
        // s3's hop died; s2, holding, takes it after its backoff.
        d.handle_notify_failed(t, "s3", "connection reset");
        assert_eq!(d.next_hop(t, NodeId(20)), None);
        assert_eq!(d.next_hop(t + Duration::from_secs(1), NodeId(20)).unwrap().segment, "s3");
    }

    #[test]
    fn a_forwarding_leader_that_goes_silent_no_longer_holds_the_ccm_back() {
        let mut d = Distribution::new(DistributionConfig { fanout: 1, ..cfg() }, targets(3));
        let t = Time::ZERO;
        assert_eq!(segs(&d.ccm_hops(t)), ["s1"]);
        assert_eq!(d.next_hop(t, NodeId(10)).unwrap().segment, "s2");
        // s2 was notified by s1, which then dies: s2's notification times out...
        let t = t + Duration::from_secs(5);
        d.handle_timeout(t);
        // ...and s1, silent as long, is no longer taken to be forwarding: the CCM serves s2 and s3.
        assert_eq!(segs(&d.ccm_hops(t)), ["s2"]);
        assert_eq!(d.poll_timeout(), Some(t + Duration::from_secs(5)));
    }

    #[test]
    fn a_leader_back_on_a_new_address_is_notified_there() {
        let mut d = Distribution::new(cfg(), targets(1));
        assert_eq!(d.ccm_hops(Time::ZERO)[0].url, "http://gl1");
        d.handle_leader_seen(Time::ZERO, "s1", NodeId(10), "http://gl1", 1);
        assert!(d.ccm_hops(Time::ZERO).is_empty(), "same leader, same address: nothing new");
        d.handle_leader_seen(Time::ZERO, "s1", NodeId(10), "http://gl1-restarted", 1);
        assert_eq!(d.ccm_hops(Time::ZERO)[0].url, "http://gl1-restarted");
    }

    #[test]
    fn a_new_leader_is_notified_afresh_unless_reported() {
        let mut d = Distribution::new(cfg(), targets(2));
        d.ccm_hops(Time::ZERO);
        d.handle_reported("s2");
        d.handle_leader_seen(Time::ZERO, "s1", NodeId(11), "http://new", 1);
        d.handle_leader_seen(Time::ZERO, "s2", NodeId(21), "http://other", 1);
        let hops = d.ccm_hops(Time::ZERO);
        assert_eq!(hops.len(), 1);
        assert_eq!((hops[0].leader, hops[0].url.as_str()), (NodeId(11), "http://new"));
        assert_eq!(d.entries()[1].target.leader, NodeId(20), "reported segment unchanged");
    }

    /// Issue 14 defect 3: a leader restarted at the same address (a new
    /// incarnation) after it acknowledged is notified again at once.
    #[test]
    fn a_leader_restarted_at_the_same_address_is_notified_again() {
        let mut d = Distribution::new(cfg(), targets(1));
        let t = Time::ZERO;
        assert_eq!(d.ccm_hops(t).len(), 1);
        assert_eq!(d.next_hop(t, NodeId(10)), None, "holds, nobody left to forward to");
        d.handle_leader_seen(t, "s1", NodeId(10), "http://gl1", 1);
        assert!(d.ccm_hops(t).is_empty(), "same incarnation: still working on it");
        d.handle_leader_seen(t, "s1", NodeId(10), "http://gl1", 2);
        assert_eq!(segs(&d.ccm_hops(t)), ["s1"], "restarted: notified afresh");
    }

    /// A holder that falls silent for notify_timeout is probed with a notify;
    /// a failed probe makes the segment pending again.
    #[test]
    fn a_silent_holder_is_probed_after_notify_timeout() {
        let mut d = Distribution::new(cfg(), targets(1));
        let t = Time::ZERO;
        d.ccm_hops(t);
        assert_eq!(d.next_hop(t, NodeId(10)), None);
        assert_eq!(d.poll_timeout(), Some(t + Duration::from_secs(5)), "a holder has a deadline");
        let t = t + Duration::from_secs(4);
        d.handle_leader_seen(t, "s1", NodeId(10), "http://gl1", 1);
        d.handle_timeout(t + Duration::from_secs(1));
        assert!(d.ccm_hops(t).is_empty(), "heard of 1 s ago: not probed");
        let t = t + Duration::from_secs(5);
        d.handle_timeout(t);
        assert_eq!(segs(&d.ccm_hops(t)), ["s1"], "silent 5 s: probed");
        assert!(d.ccm_hops(t).is_empty(), "once");
        d.handle_notify_failed(t, "s1", "connection refused");
        assert!(matches!(d.entries()[0].stage, Stage::Pending), "the probe failed: pending again");
        d.handle_reported("s1");
        assert!(d.is_done());
    }
}
