//! A seeded network with virtual time, for driving sans-IO cores.
//!
//! Every fault derives from one seed (as in TigerBeetle's packet simulator):
//! per-link loss, delay and jitter (jitter reorders), duplication, bursty loss
//! (a Gilbert–Elliott chain per receiver), partitions that can heal, and
//! crashed nodes. The simulator for each protocol owns a `Network<M>` of its
//! message type, sends what its cores poll out, and delivers what
//! [`Network::pop_due`] returns, jumping virtual time from event to event.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::time::Duration;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

use crate::protocol::time::Time;

/// A node's index in the simulated network.
pub type NodeIndex = usize;

/// Bursty loss: a two-state (good/bad) Markov chain per receiver, stepped
/// once per datagram offered to it.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Burst {
    /// Chance per datagram of entering the bad state.
    pub p_enter: f64,
    /// Chance per datagram of leaving it.
    pub p_leave: f64,
    /// Loss probability while bad (the link's `loss` applies while good).
    pub loss: f64,
}

/// Faults of a link (or the default for all links).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct LinkFaults {
    /// Independent loss probability per datagram.
    pub loss: f64,
    /// Base one-way delay.
    pub delay: Duration,
    /// Uniform extra delay in `0..=jitter`; any jitter reorders datagrams.
    pub jitter: Duration,
    /// Probability that a delivered datagram is delivered twice.
    pub duplicate: f64,
    /// Bursty loss, if any.
    pub burst: Option<Burst>,
}

impl Default for LinkFaults {
    fn default() -> Self {
        LinkFaults {
            loss: 0.0,
            delay: Duration::from_micros(200),
            jitter: Duration::from_micros(100),
            duplicate: 0.0,
            burst: None,
        }
    }
}

/// Counters of what the network did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct NetStats {
    /// Datagrams offered (one per receiver for multicasts).
    pub offered: u64,
    /// Datagrams delivered (duplicates included).
    pub delivered: u64,
    /// Lost to random or burst loss.
    pub lost: u64,
    /// Dropped by a partition.
    pub partitioned: u64,
    /// Dropped because the receiver was down at delivery.
    pub to_down_node: u64,
    /// Extra copies delivered.
    pub duplicated: u64,
}

/// A datagram arriving at a node.
#[derive(Debug, Clone, PartialEq)]
pub struct Delivery<M> {
    /// When it arrives.
    pub at: Time,
    /// Sender.
    pub from: NodeIndex,
    /// Receiver.
    pub to: NodeIndex,
    /// The message.
    pub msg: M,
}

/// The simulated network. See the module docs.
#[derive(Debug)]
pub struct Network<M> {
    rng: ChaCha8Rng,
    faults: LinkFaults,
    links: HashMap<(NodeIndex, NodeIndex), LinkFaults>,
    group: Vec<u32>,
    up: Vec<bool>,
    bad: Vec<bool>,
    queue: BinaryHeap<Reverse<(Time, u64)>>,
    in_flight: HashMap<u64, (NodeIndex, NodeIndex, M)>,
    next_id: u64,
    stats: NetStats,
}

impl<M: Clone> Network<M> {
    /// A network of `nodes` nodes, all up and connected, with `faults` on every link.
    pub fn new(nodes: usize, seed: u64, faults: LinkFaults) -> Self {
        Network {
            rng: ChaCha8Rng::seed_from_u64(seed),
            faults,
            links: HashMap::new(),
            group: vec![0; nodes],
            up: vec![true; nodes],
            bad: vec![false; nodes],
            queue: BinaryHeap::new(),
            in_flight: HashMap::new(),
            next_id: 0,
            stats: NetStats::default(),
        }
    }

    /// Number of nodes.
    pub fn len(&self) -> usize {
        self.up.len()
    }

    /// True when there are no nodes.
    pub fn is_empty(&self) -> bool {
        self.up.is_empty()
    }

    /// The network's RNG, for scenario choices that must follow the same seed.
    pub fn rng(&mut self) -> &mut ChaCha8Rng {
        &mut self.rng
    }

    /// Overrides the faults of the directed link `from → to`.
    pub fn set_link(&mut self, from: NodeIndex, to: NodeIndex, faults: LinkFaults) {
        self.links.insert((from, to), faults);
    }

    /// Splits the nodes: each slice is one side; nodes in no slice form one more side.
    pub fn partition(&mut self, sides: &[&[NodeIndex]]) {
        self.group.iter_mut().for_each(|g| *g = 0);
        for (i, side) in sides.iter().enumerate() {
            for &n in *side {
                self.group[n] = i as u32 + 1;
            }
        }
    }

    /// Reconnects everyone.
    pub fn heal(&mut self) {
        self.group.iter_mut().for_each(|g| *g = 0);
    }

    /// True when `a` and `b` are on the same side of any partition.
    pub fn connected(&self, a: NodeIndex, b: NodeIndex) -> bool {
        self.group[a] == self.group[b]
    }

    /// Marks a node down: datagrams to it are dropped until [`Network::restart`].
    pub fn crash(&mut self, node: NodeIndex) {
        self.up[node] = false;
    }

    /// Marks a node up again.
    pub fn restart(&mut self, node: NodeIndex) {
        self.up[node] = true;
    }

    /// True when the node is up.
    pub fn is_up(&self, node: NodeIndex) -> bool {
        self.up[node]
    }

    /// What the network has done so far.
    pub fn stats(&self) -> NetStats {
        self.stats
    }

    /// Sends `msg` from `from` to `to` at `now`.
    pub fn send(&mut self, now: Time, from: NodeIndex, to: NodeIndex, msg: M) {
        self.stats.offered += 1;
        if !self.connected(from, to) {
            self.stats.partitioned += 1;
            return;
        }
        let f = self.links.get(&(from, to)).copied().unwrap_or(self.faults);
        let loss = match f.burst {
            Some(b) => {
                let bad = &mut self.bad[to];
                let flip = if *bad { b.p_leave } else { b.p_enter };
                if self.rng.random_bool(flip.clamp(0.0, 1.0)) {
                    *bad = !*bad;
                }
                if *bad {
                    b.loss
                } else {
                    f.loss
                }
            }
            None => f.loss,
        };
        if self.rng.random_bool(loss.clamp(0.0, 1.0)) {
            self.stats.lost += 1;
            return;
        }
        let copies = if self.rng.random_bool(f.duplicate.clamp(0.0, 1.0)) { 2 } else { 1 };
        for _ in 0..copies {
            let jitter = self.rng.random_range(0..=f.jitter.as_micros() as u64);
            let at = now + f.delay + Duration::from_micros(jitter);
            let id = self.next_id;
            self.next_id += 1;
            self.queue.push(Reverse((at, id)));
            self.in_flight.insert(id, (from, to, msg.clone()));
        }
    }

    /// Sends `msg` from `from` to every other node (multicast: each copy is
    /// lost, delayed and duplicated independently).
    pub fn multicast(&mut self, now: Time, from: NodeIndex, msg: M) {
        for to in 0..self.len() {
            if to != from {
                self.send(now, from, to, msg.clone());
            }
        }
    }

    /// When the next datagram arrives, if any is in flight.
    pub fn next_time(&self) -> Option<Time> {
        self.queue.peek().map(|Reverse((t, _))| *t)
    }

    /// The next datagram arriving at or before `now`. Datagrams to a node
    /// that is down, or across a partition made while they flew, are dropped.
    pub fn pop_due(&mut self, now: Time) -> Option<Delivery<M>> {
        while let Some(&Reverse((at, id))) = self.queue.peek() {
            if at > now {
                return None;
            }
            self.queue.pop();
            let Some((from, to, msg)) = self.in_flight.remove(&id) else {
                continue;
            };
            if !self.up[to] {
                self.stats.to_down_node += 1;
                continue;
            }
            if !self.connected(from, to) {
                self.stats.partitioned += 1;
                continue;
            }
            self.stats.delivered += 1;
            return Some(Delivery { at, from, to, msg });
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drain(net: &mut Network<u32>) -> Vec<Delivery<u32>> {
        let mut out = Vec::new();
        while let Some(t) = net.next_time() {
            while let Some(d) = net.pop_due(t) {
                out.push(d);
            }
        }
        out
    }

    #[test]
    fn same_seed_same_history() {
        let faults = LinkFaults { loss: 0.3, duplicate: 0.1, ..LinkFaults::default() };
        let run = |seed| {
            let mut net = Network::new(4, seed, faults);
            for i in 0..200 {
                net.multicast(Time::from_millis(i), (i % 4) as usize, i as u32);
            }
            drain(&mut net)
        };
        assert_eq!(run(7), run(7));
        assert_ne!(run(7), run(8));
    }

    #[test]
    fn loss_rate_is_close_to_the_setting() {
        let mut net = Network::new(2, 1, LinkFaults { loss: 0.2, ..LinkFaults::default() });
        for i in 0..10_000 {
            net.send(Time::from_millis(i), 0, 1, 0u32);
        }
        let got = drain(&mut net).len();
        assert!((7_700..8_300).contains(&got), "{got} delivered");
    }

    #[test]
    fn partitions_and_crashes_drop_and_heal() {
        let mut net = Network::new(3, 1, LinkFaults::default());
        net.partition(&[&[0], &[1, 2]]);
        net.send(Time::ZERO, 0, 1, 1u32);
        net.send(Time::ZERO, 1, 2, 2u32);
        assert_eq!(drain(&mut net).iter().map(|d| d.msg).collect::<Vec<_>>(), [2]);
        net.heal();
        net.crash(2);
        net.send(Time::ZERO, 0, 1, 3u32);
        net.send(Time::ZERO, 0, 2, 4u32);
        assert_eq!(drain(&mut net).iter().map(|d| d.msg).collect::<Vec<_>>(), [3]);
        assert_eq!(net.stats().to_down_node, 1);
        assert_eq!(net.stats().partitioned, 1);
    }

    #[test]
    fn jitter_reorders_but_time_never_goes_back() {
        let faults = LinkFaults { jitter: Duration::from_millis(5), ..LinkFaults::default() };
        let mut net = Network::new(2, 3, faults);
        for i in 0..100 {
            net.send(Time::from_micros(i * 10), 0, 1, i as u32);
        }
        let got = drain(&mut net);
        assert!(got.windows(2).all(|w| w[0].at <= w[1].at));
        assert!(got.windows(2).any(|w| w[0].msg > w[1].msg), "no reordering");
    }

    #[test]
    fn bursts_cluster_losses() {
        let burst = Burst { p_enter: 0.01, p_leave: 0.1, loss: 1.0 };
        let mut net = Network::new(2, 5, LinkFaults { burst: Some(burst), ..LinkFaults::default() });
        for i in 0..20_000 {
            net.send(Time::from_micros(i * 1000), 0, 1, i as u32);
        }
        let got: Vec<u32> = drain(&mut net).iter().map(|d| d.msg).collect();
        let gaps = got.windows(2).filter(|w| w[1] - w[0] > 1).count();
        let lost = 20_000 - got.len();
        assert!(lost > 500, "{lost} lost");
        assert!(lost > gaps * 5, "losses are not bursty: {lost} lost in {gaps} gaps");
    }
}
