//! Group-leader election and segment membership: the state machine of the
//! patent's FIG. 5 and claim 2, with no I/O and no clock.
//!
//! # The election (DESIGN §5)
//!
//! Every agent of a segment is in one of five [`State`]s:
//!
//! - **`LeaderKnown(L)`**: L's LeaderAlive (LA) datagrams arrive. No LA for
//!   `la_miss × la_interval` (plus a quarter interval of slack, so that exactly
//!   `la_miss` consecutive LAs must be missed) → `LeaderUnknown`. Members also
//!   echo, in their `MemberAlive`, how long ago they heard L; a member that
//!   missed a few LAs learns from its peers that L is alive and does not start
//!   a needless election. Such hearsay can only report LAs that L really sent,
//!   so it never delays the detection of a dead leader past its last LA plus
//!   the timeout.
//! - **`LeaderUnknown`**: a LeaderClaim (LC) of higher priority → `Conceding`;
//!   otherwise, after a claim delay that shrinks as priority grows, send an LC
//!   → `VotingOpen`. An LC of *lower* priority is answered at once with our own
//!   (claim 2: "no received voting priority is greater"). At start-up the claim
//!   delay is preceded by one detection timeout, so a node that joins a segment
//!   with a leader hears it before it claims; in that time it answers a lower
//!   claim only after a third of the voting window, unless the sitting
//!   leader's LA (its answer to the claim) arrives first.
//! - **`VotingOpen`**: no LC or LA for `voting_window` → `LeaderIsMe`, send LA.
//!   The claim is repeated at a third and two thirds of the window, so one
//!   lost claim or lost answer does not make a leader.
//!   An LC of higher priority → `Conceding`; of lower priority → answer with an
//!   LC and stay. An LA → `LeaderKnown` (with `preempt`, only if the leader
//!   outranks us; otherwise we answer with an LC and it concedes).
//! - **`LeaderIsMe`**: send LA every `la_interval` (the first three a quarter
//!   interval apart, so that a lost first LA costs little). An LA of a
//!   higher-priority leader → yield (`LeaderKnown`); of a lower one → answer
//!   with an LA at once, which makes it yield. An LC: with `preempt` and from
//!   a higher priority → concede; otherwise answer with an LA, and the claimant,
//!   in `VotingOpen`, falls back to `LeaderKnown`. So without preemption a
//!   stable leader keeps its place; the patent's GL answers with an LC instead
//!   and wins on its "recently deposed" bonus, to the same effect.
//! - **`Conceding(X)`**: an LA → `LeaderKnown`; an LC above X's → concede to it
//!   instead; no LA within `voting_window + 2 × la_interval` → `LeaderUnknown`
//!   (never stuck).
//!
//! # Priority
//!
//! A total order: the weighted sum of the inputs of [`PriorityInputs`], then
//! the node id. `base` counts configuration only; `full` adds the state
//! bonuses: recently deposed leader (for `deposed_hold`) and members known.
//! With `preempt` off (the default) the `full` value ranks candidates, so a
//! former leader that knows the members wins a new election; with `preempt` on
//! `base` alone ranks them and the best configured node always ends up leader:
//! a `LeaderKnown` node that outranks its leader claims, and the leader concedes.
//! All nodes of a segment must agree on `preempt`.
//!
//! # Membership
//!
//! A member that learns of a new leader registers ([`ControlMsg::Register`])
//! after a random delay of at most `register_jitter`. The leader multicasts the
//! list of registered members `list_delay` after the last registration (at most
//! `2 × list_delay` after the first one pending); a member missing from it
//! registers again after a random delay of at most `register_jitter`, until the
//! list is stable. A registration from a member already registered, with no
//! list pending, means it missed the last list: the leader sends it that list
//! directly. Members prove liveness with a `MemberAlive` every
//! `alive_interval`; the leader marks a member silent for `member_timeout`
//! offline and reports [`Event::MemberLeft`] and [`Event::SegmentChanged`].
//! Every LA carries the version of the last list sent, so a member that missed
//! a list notices and registers again, which makes the leader resend it.
//!
//! Steady-state traffic: the leader sends one LA per `la_interval`; each
//! member one `MemberAlive` per `alive_interval`. With `alive_interval ≥
//! la_interval` that is at most one datagram per node per `la_interval`.

use std::collections::{BTreeMap, VecDeque};
use std::net::Ipv4Addr;
use std::time::Duration;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::control::{ControlMsg, MemberInfo, Priority};
use super::ids::NodeId;
use super::time::Time;

/// Election timers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ElectionTimers {
    /// Period of the leader's LA.
    pub la_interval: Duration,
    /// LAs missed in a row before the leader is declared lost.
    pub la_miss: u32,
    /// Claim delay of the highest possible priority.
    pub claim_delay_min: Duration,
    /// Claim delay of the lowest possible priority.
    pub claim_delay_max: Duration,
    /// How long a claimant listens for objections before it leads.
    pub voting_window: Duration,
    /// How long a leader that stepped down keeps the "recently deposed" bonus.
    pub deposed_hold: Duration,
}

impl ElectionTimers {
    /// Time without an LA after which the leader is lost: `la_miss` intervals
    /// plus a quarter interval, so the `la_miss`-th LA, arriving a little
    /// late, still counts.
    pub fn leader_timeout(&self) -> Duration {
        self.la_interval * self.la_miss + self.la_interval / 4
    }

    /// How long a conceding node waits for the winner's LA.
    pub fn concede_timeout(&self) -> Duration {
        self.voting_window + self.la_interval * 2
    }

    /// Worst-case failover without loss: detection, the longest claim delay,
    /// the voting window. Each LA lost to a member adds a quarter interval
    /// (first three LAs) and then whole intervals.
    pub fn failover_bound(&self) -> Duration {
        self.leader_timeout() + self.claim_delay_max + self.voting_window
    }
}

/// Membership timers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MembershipTimers {
    /// Period of a member's `MemberAlive`.
    pub alive_interval: Duration,
    /// Silence after which the leader marks a member offline.
    pub member_timeout: Duration,
    /// Delay from the last registration to the member-list multicast.
    pub list_delay: Duration,
    /// Largest random delay before a (re-)registration.
    pub register_jitter: Duration,
}

/// Inputs of the voting priority, each 0–100 (larger is better; values
/// above 100 count as 100).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PriorityInputs {
    /// Administrator's preference; it weighs as much as all the others together.
    pub preference: u8,
    /// CPU power available.
    pub cpu: u8,
    /// Disk space and speed available.
    pub disk: u8,
    /// Network capacity available.
    pub network: u8,
    /// How reliable the server has been.
    pub reliability: u8,
    /// How up to date its content is (a newcomer still catching up scores low).
    pub freshness: u8,
}

impl Default for PriorityInputs {
    fn default() -> Self {
        PriorityInputs { preference: 0, cpu: 50, disk: 50, network: 50, reliability: 50, freshness: 50 }
    }
}

/// Points per unit of each input: (preference, cpu, disk, network, reliability, freshness).
const WEIGHTS: [u32; 6] = [10, 2, 1, 2, 2, 1];
/// Largest `base` value.
pub const BASE_MAX: u32 = 100 * (10 + 2 + 1 + 2 + 2 + 1);
/// Bonus of a recently deposed leader.
pub const DEPOSED_BONUS: u32 = 500;
/// Points per member known, up to [`MEMBERS_CAP`] members.
pub const MEMBER_POINTS: u32 = 2;
/// Members counted in the priority.
pub const MEMBERS_CAP: u32 = 100;
/// Largest `full` value.
pub const FULL_MAX: u32 = BASE_MAX + DEPOSED_BONUS + MEMBER_POINTS * MEMBERS_CAP;

impl PriorityInputs {
    /// The configuration part of the priority, 0..=[`BASE_MAX`].
    pub fn base(&self) -> u32 {
        let v = [self.preference, self.cpu, self.disk, self.network, self.reliability, self.freshness];
        v.iter().zip(WEIGHTS).map(|(&x, w)| u32::from(x.min(100)) * w).sum()
    }

    /// The full priority given the state inputs.
    pub fn priority(&self, deposed: bool, members_known: usize) -> Priority {
        let base = self.base();
        let members = u32::try_from(members_known).unwrap_or(u32::MAX).min(MEMBERS_CAP);
        Priority { base, full: base + if deposed { DEPOSED_BONUS } else { 0 } + members * MEMBER_POINTS }
    }
}

/// Everything the core is configured with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ElectorConfig {
    /// Election timers.
    pub timers: ElectionTimers,
    /// Membership timers.
    pub membership: MembershipTimers,
    /// Whether a higher-priority node takes over from a stable leader.
    pub preempt: bool,
    /// Whether this node may lead; one that may not still registers.
    pub gl_capable: bool,
    /// Priority inputs.
    pub priority: PriorityInputs,
    /// What this node registers with.
    pub info: MemberInfo,
}

/// Where the core wants a message sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Dest {
    /// Every node of the segment (the multicast group, or every peer).
    All,
    /// One node.
    Node(NodeId),
}

/// A message to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transmit {
    /// To whom.
    pub to: Dest,
    /// What.
    pub msg: ControlMsg,
}

/// Something the driver should know about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A leader is known (or we lead): the first after none, or a change.
    LeaderElected {
        /// The leader.
        leader: NodeId,
        /// True when the leader is this node.
        me: bool,
        /// The leader known before, if any.
        previous: Option<NodeId>,
    },
    /// The known leader is gone (LA timeout, or we stepped down) and none is known yet.
    LeaderLost {
        /// The leader that was known.
        leader: NodeId,
    },
    /// (Leader) a member registered, or came back after being offline.
    MemberJoined {
        /// The member.
        id: NodeId,
        /// What it registered with.
        info: MemberInfo,
    },
    /// (Leader) a member was silent for `member_timeout` and is now offline.
    MemberLeft {
        /// The member.
        id: NodeId,
    },
    /// (Leader) the segment's membership or a member's details changed; the
    /// CCM is told (in a later issue).
    SegmentChanged {
        /// The online members and what they registered with.
        members: Vec<(NodeId, MemberInfo)>,
    },
    /// (Member) the leader's member list changed.
    MemberListChanged {
        /// The leader that sent it.
        leader: NodeId,
        /// The registered members.
        members: Vec<NodeId>,
    },
    /// The segment moves to another control channel: the driver rebinds.
    MoveChannel {
        /// New multicast group.
        group: Ipv4Addr,
        /// New port.
        port: u16,
    },
}

/// The five states of FIG. 5.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum State {
    /// Following this leader.
    LeaderKnown(NodeId),
    /// No leader known, no claim heard that outranks us.
    LeaderUnknown,
    /// This node leads.
    LeaderIsMe,
    /// This node has claimed and listens for objections.
    VotingOpen,
    /// Waiting for the LA of this higher-priority claimant.
    Conceding(NodeId),
}

impl State {
    /// Its name in logs: `leader_known`, `leader_unknown`, `leader_is_me`,
    /// `voting_open`, `conceding`.
    pub fn name(&self) -> &'static str {
        match self {
            State::LeaderKnown(_) => "leader_known",
            State::LeaderUnknown => "leader_unknown",
            State::LeaderIsMe => "leader_is_me",
            State::VotingOpen => "voting_open",
            State::Conceding(_) => "conceding",
        }
    }
}

/// Counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ElectorStats {
    /// Messages handed out by [`Elector::poll_transmit`].
    pub transmits: u64,
    /// Claims sent.
    pub claims: u64,
    /// Times this node became leader.
    pub elections_won: u64,
    /// Messages received.
    pub received: u64,
}

/// The core's timers, one slot each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Timer {
    /// Leader: send the next LA.
    LeaderAlive,
    /// Follower: the leader is lost if no LA by then.
    LeaderTimeout,
    /// Unknown: send our claim.
    Claim,
    /// VotingOpen: we lead if nobody objected by then.
    VotingWindow,
    /// VotingOpen: repeat our claim, in case it or its answer was lost.
    ClaimRepeat,
    /// Conceding: give up waiting for the winner.
    Concede,
    /// Member: (re-)register.
    Register,
    /// Member: send MemberAlive.
    MemberAlive,
    /// Leader: multicast the member list.
    MemberList,
    /// Leader: look for silent members.
    MemberSweep,
}

const TIMERS: [Timer; 10] = [
    Timer::LeaderAlive,
    Timer::LeaderTimeout,
    Timer::Claim,
    Timer::VotingWindow,
    Timer::ClaimRepeat,
    Timer::Concede,
    Timer::Register,
    Timer::MemberAlive,
    Timer::MemberList,
    Timer::MemberSweep,
];

#[derive(Debug, Clone, Default)]
struct TimerTable([Option<Time>; TIMERS.len()]);

impl TimerTable {
    fn set(&mut self, t: Timer, at: Time) {
        self.0[t as usize] = Some(at);
    }
    fn stop(&mut self, t: Timer) {
        self.0[t as usize] = None;
    }
    fn get(&self, t: Timer) -> Option<Time> {
        self.0[t as usize]
    }
    fn next(&self) -> Option<Time> {
        self.0.iter().flatten().min().copied()
    }
    /// Takes a timer that is due at `now`, if any.
    fn take_due(&mut self, now: Time) -> Option<Timer> {
        let t = TIMERS.into_iter().find(|&t| self.get(t).is_some_and(|at| at <= now))?;
        self.stop(t);
        Some(t)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct MemberRecord {
    info: MemberInfo,
    last_seen: Time,
    online: bool,
}

/// The member list as a member last received it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct HeldList {
    leader: NodeId,
    version: u64,
    members: Vec<NodeId>,
}

/// The election and membership core of one agent. See the module docs for
/// the protocol.
///
/// # Call order
///
/// 1. [`Elector::new`]; its [`poll_timeout`](Elector::poll_timeout) is then
///    `Some(Time::ZERO)`, asking for a first [`handle_timeout`](Elector::handle_timeout)
///    (any `handle_*` call starts the core at the `now` it is given).
/// 2. Feed inputs as they happen: [`handle_datagram`](Elector::handle_datagram)
///    for every authenticated message (never this node's own),
///    [`handle_timeout`](Elector::handle_timeout) when the time from
///    `poll_timeout` is reached, [`handle_config`](Elector::handle_config) when the
///    configuration changes, [`move_channel`](Elector::move_channel) on command.
///    `now` must never go backwards.
/// 3. After each input drain [`poll_transmit`](Elector::poll_transmit) and
///    [`poll_event`](Elector::poll_event) until `None`, then re-arm the one
///    driver timer from [`poll_timeout`](Elector::poll_timeout).
#[derive(Debug)]
pub struct Elector {
    config: ElectorConfig,
    me: NodeId,
    rng: ChaCha8Rng,
    started: bool,
    state: State,
    timers: TimerTable,
    /// Priority of the leader we follow, or of the claimant we concede to.
    other_priority: Priority,
    /// Last LA heard directly from the leader we follow.
    leader_heard_at: Time,
    /// Latest time the leader is known to have been alive (LA or hearsay).
    leader_alive_at: Time,
    /// The highest recent LC heard: sender, priority, when.
    best_claim: Option<(NodeId, Priority, Time)>,
    /// Until when we count as a recently deposed leader.
    deposed_until: Option<Time>,
    /// The leader we lost by timeout, while we try to elect a successor: if
    /// peers show it was alive after all, we go back to it.
    lost: Option<(NodeId, Priority)>,
    /// Until when a starting node only listens: it answers no lower claim.
    listening_until: Time,
    /// When we last answered a stray claim with hearsay.
    answered_claim_at: Option<Time>,
    /// Leader: everyone who registered with us (kept a while after stepping
    /// down, for the members-known input).
    table: BTreeMap<NodeId, MemberRecord>,
    /// Leader: version of the online member set; grows on every change.
    list_version: u64,
    /// Leader: version of the last list multicast.
    list_sent: u64,
    /// Leader: when the oldest unsent registration arrived.
    list_pending_since: Option<Time>,
    /// Leader: quick LAs still to send after winning.
    announce_left: u8,
    /// Leader: a channel move being announced, with repeats left.
    channel_move: Option<(Ipv4Addr, u16, u8)>,
    /// Member: the leader's list as received.
    list: Option<HeldList>,
    /// The last channel move reported, to report each once.
    moved_to: Option<(Ipv4Addr, u16)>,
    /// Member: the leader this core has sent its registration to. A list
    /// naming this node proves only that *some* incarnation of it
    /// registered (a restarted agent is still listed, with its old details),
    /// so it stops registering only once it has registered itself.
    registered_with: Option<NodeId>,
    /// Member: our registration details changed (a live serial, an address)
    /// and the leader may not have them yet. Set on a change; cleared by the
    /// first list newer than the one held when the new details were sent,
    /// since the leader answers every changed registration with a new list.
    info_unacked: bool,
    /// Member: the version of the list held when the changed details were
    /// last sent (`None`: not sent yet).
    info_sent_at: Option<u64>,
    /// The leader last reported in an event.
    announced: Option<NodeId>,
    transmits: VecDeque<Transmit>,
    events: VecDeque<Event>,
    stats: ElectorStats,
}

impl Elector {
    /// A core for node `me`; `seed` drives its random delays.
    pub fn new(config: ElectorConfig, me: NodeId, seed: u64) -> Self {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        // List versions start at a random point so that a restarted leader's
        // lists are not mistaken for those of its previous life.
        let list_version = rng.random_range(1..u64::MAX / 2);
        Elector {
            config,
            me,
            rng,
            started: false,
            state: State::LeaderUnknown,
            timers: TimerTable::default(),
            other_priority: Priority::default(),
            leader_heard_at: Time::ZERO,
            leader_alive_at: Time::ZERO,
            best_claim: None,
            deposed_until: None,
            lost: None,
            listening_until: Time::ZERO,
            answered_claim_at: None,
            table: BTreeMap::new(),
            list_version,
            list_sent: list_version,
            list_pending_since: None,
            announce_left: 0,
            channel_move: None,
            list: None,
            moved_to: None,
            registered_with: None,
            info_unacked: false,
            info_sent_at: None,
            announced: None,
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            stats: ElectorStats::default(),
        }
    }

    // ----- queries -------------------------------------------------------

    /// This node's id.
    pub fn id(&self) -> NodeId {
        self.me
    }

    /// The current state.
    pub fn state(&self) -> State {
        self.state
    }

    /// The leader this node knows (itself when it leads).
    pub fn leader(&self) -> Option<NodeId> {
        match self.state {
            State::LeaderKnown(l) => Some(l),
            State::LeaderIsMe => Some(self.me),
            _ => None,
        }
    }

    /// True in `LeaderIsMe`.
    pub fn is_leader(&self) -> bool {
        self.state == State::LeaderIsMe
    }

    /// The configuration in force.
    pub fn config(&self) -> &ElectorConfig {
        &self.config
    }

    /// This node's priority now.
    pub fn priority(&self, now: Time) -> Priority {
        self.config.priority.priority(self.is_deposed(now), self.members_known(now))
    }

    /// The registered members as this node knows them: the leader's own
    /// table, or the last list a member received from its current leader.
    pub fn members(&self) -> Vec<NodeId> {
        match self.state {
            State::LeaderIsMe => self.online_members(),
            State::LeaderKnown(l) => match &self.list {
                Some(list) if list.leader == l => list.members.clone(),
                _ => Vec::new(),
            },
            _ => Vec::new(),
        }
    }

    /// (Leader) the online members and what they registered with.
    pub fn member_details(&self) -> Vec<(NodeId, MemberInfo)> {
        self.table.iter().filter(|(_, r)| r.online).map(|(id, r)| (*id, r.info.clone())).collect()
    }

    /// Counters.
    pub fn stats(&self) -> ElectorStats {
        self.stats
    }

    /// The claim delay this node would wait now: shorter the higher its priority.
    pub fn claim_delay(&self, now: Time) -> Duration {
        claim_delay(&self.config, self.priority(now))
    }

    // ----- outputs -------------------------------------------------------

    /// The next message to send.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        let t = self.transmits.pop_front()?;
        self.stats.transmits += 1;
        Some(t)
    }

    /// The next event.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// When [`handle_timeout`](Elector::handle_timeout) must next be called.
    pub fn poll_timeout(&self) -> Option<Time> {
        if !self.started {
            return Some(Time::ZERO);
        }
        self.timers.next()
    }

    // ----- inputs --------------------------------------------------------

    /// Timers due at `now` fire.
    pub fn handle_timeout(&mut self, now: Time) {
        self.start(now);
        while let Some(t) = self.timers.take_due(now) {
            self.on_timer(now, t);
        }
        self.sync_events();
    }

    /// An authenticated message `msg` from node `from` arrived.
    pub fn handle_datagram(&mut self, now: Time, from: NodeId, msg: ControlMsg) {
        self.start(now);
        if from == self.me {
            return;
        }
        self.stats.received += 1;
        if self.state == State::LeaderIsMe {
            // Any datagram from a member proves it alive.
            if let Some(r) = self.table.get_mut(&from).filter(|r| r.online) {
                r.last_seen = now;
            }
        }
        match msg {
            ControlMsg::LeaderAlive { priority, list_version } => {
                self.on_leader_alive(now, from, priority, list_version)
            }
            ControlMsg::LeaderClaim { priority } => self.on_leader_claim(now, from, priority),
            ControlMsg::Register(info) => self.on_register(now, from, info),
            ControlMsg::MemberList { version, members } => self.on_member_list(now, from, version, members),
            ControlMsg::MemberAlive { leader, heard_ago_ms } => {
                self.on_member_alive(now, from, leader, heard_ago_ms)
            }
            ControlMsg::ChangeChannel { group, port } => {
                if self.leader() == Some(from) {
                    self.report_move(group, port);
                }
            }
        }
        self.sync_events();
    }

    /// The configuration changed (priority inputs, capability, timers, preempt,
    /// registration details). Takes effect at once; timers already armed run out.
    pub fn handle_config(&mut self, now: Time, config: ElectorConfig) {
        self.start(now);
        let info_changed = config.info != self.config.info;
        self.config = config;
        if !self.config.gl_capable {
            self.timers.stop(Timer::Claim);
            if matches!(self.state, State::LeaderIsMe | State::VotingOpen) {
                self.become_unknown(now);
            }
        } else if self.state == State::LeaderUnknown && self.timers.get(Timer::Claim).is_none() {
            self.timers.set(Timer::Claim, now + self.claim_delay(now));
        }
        if info_changed {
            self.info_unacked = self.state != State::LeaderIsMe;
            self.info_sent_at = None;
            match self.state {
                State::LeaderIsMe => {
                    let info = self.config.info.clone();
                    if let Some(r) = self.table.get_mut(&self.me) {
                        r.info = info;
                    }
                    self.events.push_back(Event::SegmentChanged { members: self.member_details() });
                }
                State::LeaderKnown(_) => {
                    let at = now + self.jitter();
                    self.timers.set(Timer::Register, at);
                }
                _ => {}
            }
        }
        self.sync_events();
    }

    /// (Leader) moves the segment to another control channel: the move is
    /// announced with the next three LAs, then reported to this node's driver
    /// as [`Event::MoveChannel`]. Returns false if this node does not lead.
    pub fn move_channel(&mut self, now: Time, group: Ipv4Addr, port: u16) -> bool {
        self.start(now);
        if !self.is_leader() {
            return false;
        }
        self.channel_move = Some((group, port, 3));
        self.send(Dest::All, ControlMsg::ChangeChannel { group, port });
        true
    }

    // ----- internals -----------------------------------------------------

    fn start(&mut self, now: Time) {
        if self.started {
            return;
        }
        self.started = true;
        self.listening_until = now + self.config.timers.leader_timeout();
        if self.config.gl_capable {
            // Listen one detection timeout for a sitting leader before claiming.
            let at = self.listening_until + self.claim_delay(now);
            self.timers.set(Timer::Claim, at);
        }
    }

    fn send(&mut self, to: Dest, msg: ControlMsg) {
        self.transmits.push_back(Transmit { to, msg });
    }

    fn jitter(&mut self) -> Duration {
        let max = self.config.membership.register_jitter.as_micros() as u64;
        Duration::from_micros(self.rng.random_range(0..=max))
    }

    fn is_deposed(&self, now: Time) -> bool {
        self.deposed_until.is_some_and(|t| now < t)
    }

    /// Members known: a leader's (or recently deposed leader's) own table,
    /// else the size of the list received from the current leader.
    fn members_known(&self, now: Time) -> usize {
        match (&self.state, &self.list) {
            (State::LeaderIsMe, _) => self.table.values().filter(|r| r.online).count(),
            _ if self.is_deposed(now) => self.table.values().filter(|r| r.online).count(),
            (State::LeaderKnown(l), Some(list)) if list.leader == *l => list.members.len(),
            _ => 0,
        }
    }

    fn online_members(&self) -> Vec<NodeId> {
        self.table.iter().filter(|(_, r)| r.online).map(|(id, _)| *id).collect()
    }

    /// The order in which candidates are ranked: see "Priority" in the module docs.
    fn rank(&self, p: Priority, node: NodeId) -> (u32, NodeId) {
        (if self.config.preempt { p.base } else { p.full }, node)
    }

    fn my_rank(&self, now: Time) -> (u32, NodeId) {
        self.rank(self.priority(now), self.me)
    }

    /// Reports leader changes as events, whatever the path that led to them.
    fn sync_events(&mut self) {
        let now_leader = self.leader();
        if now_leader == self.announced {
            return;
        }
        match now_leader {
            Some(leader) => self.events.push_back(Event::LeaderElected {
                leader,
                me: leader == self.me,
                previous: self.announced,
            }),
            None => {
                if let Some(leader) = self.announced {
                    self.events.push_back(Event::LeaderLost { leader });
                }
            }
        }
        self.announced = now_leader;
    }

    fn stop_timers(&mut self, timers: &[Timer]) {
        for &t in timers {
            self.timers.stop(t);
        }
    }

    /// Leaving `LeaderIsMe` for any reason: the bonus of a recently deposed leader.
    fn step_down(&mut self, now: Time) {
        if self.state == State::LeaderIsMe {
            self.deposed_until = Some(now + self.config.timers.deposed_hold);
            self.channel_move = None;
            self.stop_timers(&[Timer::LeaderAlive, Timer::MemberList, Timer::MemberSweep]);
        }
    }

    fn become_known(&mut self, now: Time, leader: NodeId, priority: Priority) {
        let previous = self.leader();
        self.step_down(now);
        self.state = State::LeaderKnown(leader);
        self.other_priority = priority;
        self.leader_heard_at = now;
        self.leader_alive_at = now;
        self.stop_timers(&[Timer::Claim, Timer::VotingWindow, Timer::ClaimRepeat, Timer::Concede]);
        self.timers.set(Timer::LeaderTimeout, now + self.config.timers.leader_timeout());
        self.lost = None;
        let listed = self.registered_with == Some(leader)
            && !self.info_unacked
            && self.list.as_ref().is_some_and(|l| l.leader == leader && l.members.contains(&self.me));
        if previous != Some(leader) && !listed {
            // A new leader: register with it.
            let reg = now + self.jitter();
            self.timers.set(Timer::Register, reg);
        }
        if previous != Some(leader) {
            // Spread our MemberAlives over the interval rather than all at once.
            let alive = self.config.membership.alive_interval.as_micros() as u64;
            let first = Duration::from_micros(self.rng.random_range(0..=alive));
            self.timers.set(Timer::MemberAlive, now + first);
        }
    }

    fn become_unknown(&mut self, now: Time) {
        self.step_down(now);
        self.state = State::LeaderUnknown;
        self.stop_timers(&[
            Timer::LeaderTimeout,
            Timer::Register,
            Timer::MemberAlive,
            Timer::VotingWindow,
            Timer::ClaimRepeat,
            Timer::Concede,
            Timer::Claim,
        ]);
        if !self.config.gl_capable {
            return;
        }
        // Claims heard recently count as if heard now (claim 2: an LC of higher
        // priority → concede; only lower ones → claim at once).
        let window = self.config.timers.voting_window;
        match self.best_claim {
            Some((from, p, at)) if now - at <= window => {
                if self.rank(p, from) > self.my_rank(now) {
                    self.become_conceding(now, from, p);
                } else {
                    self.claim(now);
                }
            }
            _ => {
                let at = now + self.claim_delay(now);
                self.timers.set(Timer::Claim, at);
            }
        }
    }

    fn become_conceding(&mut self, now: Time, to: NodeId, priority: Priority) {
        self.step_down(now);
        self.state = State::Conceding(to);
        self.other_priority = priority;
        self.stop_timers(&[
            Timer::Claim,
            Timer::VotingWindow,
            Timer::ClaimRepeat,
            Timer::LeaderTimeout,
            Timer::Register,
            Timer::MemberAlive,
        ]);
        self.timers.set(Timer::Concede, now + self.config.timers.concede_timeout());
    }

    fn claim(&mut self, now: Time) {
        self.step_down(now);
        self.state = State::VotingOpen;
        self.stats.claims += 1;
        self.stop_timers(&[
            Timer::Claim,
            Timer::LeaderTimeout,
            Timer::Concede,
            Timer::Register,
            Timer::MemberAlive,
        ]);
        let window = self.config.timers.voting_window;
        self.timers.set(Timer::VotingWindow, now + window);
        self.timers.set(Timer::ClaimRepeat, now + window / 3);
        let priority = self.priority(now);
        self.send(Dest::All, ControlMsg::LeaderClaim { priority });
    }

    fn become_leader(&mut self, now: Time) {
        self.state = State::LeaderIsMe;
        self.lost = None;
        self.stats.elections_won += 1;
        self.deposed_until = None;
        self.best_claim = None;
        self.list = None;
        self.table.clear();
        self.table
            .insert(self.me, MemberRecord { info: self.config.info.clone(), last_seen: now, online: true });
        self.list_version += 1;
        self.list_pending_since = None;
        self.announce_left = 2;
        self.stop_timers(&[
            Timer::Claim,
            Timer::VotingWindow,
            Timer::ClaimRepeat,
            Timer::Concede,
            Timer::LeaderTimeout,
            Timer::Register,
            Timer::MemberAlive,
        ]);
        self.send_leader_alive(now);
        self.timers.set(Timer::LeaderAlive, now + self.config.timers.la_interval / 4);
        self.timers.set(Timer::MemberSweep, now + self.config.membership.alive_interval);
        self.sync_events();
        self.events.push_back(Event::SegmentChanged { members: self.member_details() });
    }

    fn send_leader_alive(&mut self, now: Time) {
        let priority = self.priority(now);
        let list_version = self.list_sent;
        self.send(Dest::All, ControlMsg::LeaderAlive { priority, list_version });
    }

    fn on_timer(&mut self, now: Time, timer: Timer) {
        let t = self.config.timers;
        let m = self.config.membership;
        match (timer, self.state) {
            (Timer::LeaderAlive, State::LeaderIsMe) => {
                self.send_leader_alive(now);
                if let Some((group, port, left)) = self.channel_move.take() {
                    self.send(Dest::All, ControlMsg::ChangeChannel { group, port });
                    if left > 1 {
                        self.channel_move = Some((group, port, left - 1));
                    } else {
                        self.report_move(group, port);
                    }
                }
                let next = if self.announce_left > 0 {
                    self.announce_left -= 1;
                    t.la_interval / 4
                } else {
                    t.la_interval
                };
                self.timers.set(Timer::LeaderAlive, now + next);
            }
            (Timer::LeaderTimeout, State::LeaderKnown(l)) => {
                let p = self.other_priority;
                self.become_unknown(now);
                self.lost = Some((l, p));
            }
            (Timer::Claim, State::LeaderUnknown) if self.config.gl_capable => self.claim(now),
            (Timer::VotingWindow, State::VotingOpen) => self.become_leader(now),
            (Timer::ClaimRepeat, State::VotingOpen) => {
                let priority = self.priority(now);
                self.send(Dest::All, ControlMsg::LeaderClaim { priority });
                // At a third and two thirds of the window.
                let third = t.voting_window / 3;
                let second =
                    self.timers.get(Timer::VotingWindow).is_some_and(|end| end - now > third + third / 2);
                if second {
                    self.timers.set(Timer::ClaimRepeat, now + third);
                }
            }
            (Timer::Concede, State::Conceding(_)) => self.become_unknown(now),
            (Timer::Register, State::LeaderKnown(leader)) => {
                let info = self.config.info.bounded();
                self.send(Dest::Node(leader), ControlMsg::Register(info));
                self.registered_with = Some(leader);
                if self.info_unacked {
                    self.info_sent_at = Some(self.list.as_ref().map_or(0, |l| l.version));
                }
                // Registered for sure only once a list names us; until then
                // retry, after the time the leader takes to send its list.
                let retry = m.list_delay + m.register_jitter + self.jitter();
                self.timers.set(Timer::Register, now + retry);
            }
            (Timer::MemberAlive, State::LeaderKnown(leader)) => {
                let heard = now - self.leader_heard_at;
                let heard_ago_ms = u32::try_from(heard.as_millis()).unwrap_or(u32::MAX);
                self.send(Dest::All, ControlMsg::MemberAlive { leader, heard_ago_ms });
                self.timers.set(Timer::MemberAlive, now + m.alive_interval);
            }
            (Timer::MemberList, State::LeaderIsMe) => {
                self.list_pending_since = None;
                self.list_sent = self.list_version;
                let members = self.online_members();
                self.send(Dest::All, ControlMsg::MemberList { version: self.list_sent, members });
            }
            (Timer::MemberSweep, State::LeaderIsMe) => {
                self.sweep_members(now);
                self.timers.set(Timer::MemberSweep, now + m.alive_interval);
            }
            // A timer of a state we have left: nothing to do.
            _ => {}
        }
    }

    fn on_leader_alive(&mut self, now: Time, from: NodeId, p: Priority, list_version: u64) {
        let theirs = self.rank(p, from);
        match self.state {
            State::LeaderIsMe => {
                if theirs > self.my_rank(now) {
                    self.become_known(now, from, p);
                } else {
                    // Two leaders: ours outranks; tell it now rather than in an interval.
                    self.send_leader_alive(now);
                }
            }
            State::LeaderKnown(l) if l == from => {
                self.other_priority = p;
                self.leader_heard_at = now;
                self.leader_alive_at = now;
                self.timers.set(Timer::LeaderTimeout, now + self.config.timers.leader_timeout());
                self.check_list_version(now, from, list_version);
                self.maybe_preempt(now);
            }
            State::LeaderKnown(l) => {
                // Another leader. Follow it if it outranks ours or ours has
                // gone quiet (it is likely dead and this is its successor);
                // otherwise the two leaders settle it between themselves.
                let quiet = now - self.leader_alive_at > self.config.timers.la_interval * 3 / 2;
                if theirs > self.rank(self.other_priority, l) || quiet {
                    self.become_known(now, from, p);
                    self.maybe_preempt(now);
                }
            }
            State::LeaderUnknown | State::Conceding(_) => {
                self.become_known(now, from, p);
                self.maybe_preempt(now);
            }
            State::VotingOpen => {
                if !self.config.preempt || theirs > self.my_rank(now) {
                    self.become_known(now, from, p);
                } else {
                    // Preemption: we outrank this leader; our claim makes it concede.
                    let priority = self.priority(now);
                    self.send(Dest::All, ControlMsg::LeaderClaim { priority });
                }
            }
        }
    }

    /// With preemption, a follower that outranks its leader claims.
    fn maybe_preempt(&mut self, now: Time) {
        if let State::LeaderKnown(l) = self.state {
            if self.config.preempt
                && self.config.gl_capable
                && self.my_rank(now) > self.rank(self.other_priority, l)
            {
                self.claim(now);
                // Not a lost leader: peers' hearsay about it must not stop us.
                self.lost = None;
            }
        }
    }

    fn on_leader_claim(&mut self, now: Time, from: NodeId, p: Priority) {
        let theirs = self.rank(p, from);
        let window = self.config.timers.voting_window;
        let remember = match self.best_claim {
            Some((f, bp, at)) => now - at > window || theirs > self.rank(bp, f),
            None => true,
        };
        if remember {
            self.best_claim = Some((from, p, now));
        }
        let mine = self.my_rank(now);
        match self.state {
            State::LeaderIsMe => {
                if self.config.preempt && theirs > mine {
                    self.become_conceding(now, from, p);
                } else {
                    // A stable leader answers a claim with proof of life.
                    self.send_leader_alive(now);
                }
            }
            State::LeaderKnown(l) => {
                // A stray claim (its claimant missed our leader's LAs) while we
                // hear the leader well: tell the claimant, so it goes back.
                let t = self.config.timers;
                let fresh = now - self.leader_heard_at <= t.la_interval * 3 / 2;
                let preempting = self.config.preempt && theirs > self.rank(self.other_priority, l);
                let recently = self.answered_claim_at.is_some_and(|a| now - a < t.voting_window);
                if from != l && fresh && !preempting && !recently {
                    self.answered_claim_at = Some(now);
                    let heard = now - self.leader_heard_at;
                    let heard_ago_ms = u32::try_from(heard.as_millis()).unwrap_or(u32::MAX);
                    self.send(Dest::Node(from), ControlMsg::MemberAlive { leader: l, heard_ago_ms });
                }
            }
            State::LeaderUnknown => {
                if !self.config.gl_capable || theirs > mine {
                    self.become_conceding(now, from, p);
                } else if now >= self.listening_until {
                    self.claim(now);
                } else {
                    // Still listening after start-up: a sitting leader would
                    // answer that claim with an LA within moments. Wait a
                    // little for it, then claim before the claimant's window ends.
                    let soon = now + self.config.timers.voting_window / 3;
                    if self.timers.get(Timer::Claim).is_none_or(|t| t > soon) {
                        self.timers.set(Timer::Claim, soon);
                    }
                }
            }
            State::VotingOpen => {
                if theirs > mine {
                    self.become_conceding(now, from, p);
                } else {
                    let priority = self.priority(now);
                    self.send(Dest::All, ControlMsg::LeaderClaim { priority });
                }
            }
            State::Conceding(to) => {
                if theirs > self.rank(self.other_priority, to) {
                    self.become_conceding(now, from, p);
                }
            }
        }
    }

    fn on_register(&mut self, now: Time, from: NodeId, info: MemberInfo) {
        if self.state != State::LeaderIsMe {
            return;
        }
        let before = self.table.get(&from).cloned();
        let joined = !before.as_ref().is_some_and(|r| r.online);
        let changed = joined || before.as_ref().is_some_and(|r| r.info != info);
        self.table.insert(from, MemberRecord { info: info.clone(), last_seen: now, online: true });
        if changed {
            // New details count as a change of the list, so that the member,
            // which waits for a list newer than its registration, stops retrying.
            self.list_version += 1;
        }
        if joined {
            self.events.push_back(Event::MemberJoined { id: from, info });
        }
        if changed {
            self.events.push_back(Event::SegmentChanged { members: self.member_details() });
            self.schedule_list(now);
        } else if self.timers.get(Timer::MemberList).is_none() {
            // Already registered and no list pending: it missed the last list;
            // send that one to it alone, at once.
            let members = self.online_members();
            self.send(Dest::Node(from), ControlMsg::MemberList { version: self.list_sent, members });
        }
    }

    /// Arms the member-list multicast `list_delay` after now, but never later
    /// than `2 × list_delay` after the first change still unsent.
    fn schedule_list(&mut self, now: Time) {
        let delay = self.config.membership.list_delay;
        let since = *self.list_pending_since.get_or_insert(now);
        let at = (now + delay).min(since + delay * 2);
        self.timers.set(Timer::MemberList, at);
    }

    fn sweep_members(&mut self, now: Time) {
        let timeout = self.config.membership.member_timeout;
        let me = self.me;
        let silent: Vec<NodeId> = self
            .table
            .iter()
            .filter(|(id, r)| **id != me && r.online && now - r.last_seen > timeout)
            .map(|(id, _)| *id)
            .collect();
        if silent.is_empty() {
            return;
        }
        for id in silent {
            if let Some(r) = self.table.get_mut(&id) {
                r.online = false;
            }
            self.list_version += 1;
            self.events.push_back(Event::MemberLeft { id });
        }
        self.events.push_back(Event::SegmentChanged { members: self.member_details() });
        self.schedule_list(now);
    }

    fn on_member_list(&mut self, now: Time, from: NodeId, version: u64, members: Vec<NodeId>) {
        if self.state != State::LeaderKnown(from) {
            return;
        }
        let changed = self.list.as_ref().is_none_or(|l| l.leader != from || l.members != members);
        let listed = members.contains(&self.me);
        if changed {
            self.events.push_back(Event::MemberListChanged { leader: from, members: members.clone() });
        }
        self.list = Some(HeldList { leader: from, version, members });
        // Changed details count as received only from a list the leader made
        // after they were sent: a list already on its way, or one answering
        // someone else, must not end the retries (the leader would keep the
        // old live serials and the CCM would never synchronize this node).
        if self.info_unacked && self.info_sent_at.is_some_and(|sent| version > sent) {
            self.info_unacked = false;
        }
        if listed && self.registered_with == Some(from) && !self.info_unacked {
            self.timers.stop(Timer::Register);
        } else if !listed || self.timers.get(Timer::Register).is_none() {
            // Missing, or listed from an earlier life: register (again).
            let at = now + self.jitter();
            self.timers.set(Timer::Register, at);
        }
    }

    /// A member whose list is older than the one its leader last sent asks
    /// again by registering (unless it is about to anyway).
    fn check_list_version(&mut self, now: Time, leader: NodeId, version: u64) {
        let current = self.list.as_ref().is_some_and(|l| l.leader == leader && l.version == version);
        if !current && self.timers.get(Timer::Register).is_none() {
            let at = now + self.jitter();
            self.timers.set(Timer::Register, at);
        }
    }

    fn on_member_alive(&mut self, now: Time, from: NodeId, leader: NodeId, heard_ago_ms: u32) {
        match self.state {
            State::LeaderIsMe if leader == self.me => {
                if let Some(r) = self.table.get_mut(&from).filter(|r| r.online) {
                    r.last_seen = now;
                }
            }
            State::LeaderUnknown | State::VotingOpen => {
                // We lost our leader by timeout, but a peer heard it recently
                // enough that we would not have: it is alive, go back to it.
                let Some((l, p)) = self.lost.filter(|(l, _)| *l == leader) else {
                    return;
                };
                let ago = Duration::from_millis(u64::from(heard_ago_ms));
                let timeout = self.config.timers.leader_timeout();
                if ago >= timeout {
                    return;
                }
                let heard_at = self.leader_heard_at;
                self.become_known(now, l, p);
                self.leader_heard_at = heard_at;
                self.leader_alive_at = Time::from_micros(now.as_micros() - ago.as_micros() as u64);
                self.timers.set(Timer::LeaderTimeout, now + (timeout - ago));
            }
            State::LeaderKnown(l) if l == leader => {
                // Hearsay: a peer heard our leader `heard_ago_ms` ago.
                let ago = Duration::from_millis(u64::from(heard_ago_ms));
                if now.as_micros() < ago.as_micros() as u64 {
                    return;
                }
                let alive_at = Time::from_micros(now.as_micros() - ago.as_micros() as u64);
                if alive_at > self.leader_alive_at {
                    self.leader_alive_at = alive_at;
                    let deadline = alive_at + self.config.timers.leader_timeout();
                    if self.timers.get(Timer::LeaderTimeout).is_some_and(|t| t < deadline) {
                        self.timers.set(Timer::LeaderTimeout, deadline);
                    }
                }
            }
            _ => {}
        }
    }

    fn report_move(&mut self, group: Ipv4Addr, port: u16) {
        if self.moved_to != Some((group, port)) {
            self.moved_to = Some((group, port));
            self.events.push_back(Event::MoveChannel { group, port });
        }
    }
}

/// The claim delay of a node with priority `p`: `claim_delay_max` for the
/// lowest possible priority down to `claim_delay_min` for the highest,
/// linear in the ranked value (`full`, or `base` with preemption).
pub fn claim_delay(config: &ElectorConfig, p: Priority) -> Duration {
    let (value, max) = if config.preempt { (p.base, BASE_MAX) } else { (p.full, FULL_MAX) };
    let t = config.timers;
    let span = t.claim_delay_max.saturating_sub(t.claim_delay_min);
    let span_us = span.as_micros() as u64;
    let cut = span_us * u64::from(value.min(max)) / u64::from(max);
    t.claim_delay_min + Duration::from_micros(span_us - cut)
}

#[cfg(test)]
mod tests;
