//! The Elector actor: the election core ([`Elector`]) on a real UDP socket.
//!
//! A thin driver in the quinn style: it owns the core, the socket, the
//! authentication gate, the `Recipient`s of its events and one timer. Every
//! handler feeds the core and ends with `drive`, which sends what the core
//! polls out, re-arms the single timer from `poll_timeout` and logs and
//! forwards the core's events. Time is `actix::clock::Instant` (tokio's
//! clock) relative to the actor's start; only the envelope's timestamp reads
//! the wall clock.
//!
//! Two transports: a multicast group (every send goes to the group; TTL 1) or
//! a static list of unicast peers (a send to all goes to every peer).
//! Datagrams that fail authentication or the replay check never reach the
//! core; they are counted by reason and reported by [`GetStatus`].

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::Arc;

use actix::clock::Instant;
use actix::prelude::*;
use tokio::net::UdpSocket;
use tokio_util::udp::UdpFramed;

use crate::clock::{unix_ms, unix_us};
use crate::net::udp;
use crate::protocol::control::{ControlCodec, ControlGate, MemberInfo, ReceivedControl};
use crate::protocol::election::{Dest, Elector, ElectorConfig, ElectorStats, Event, State, Transmit};
use crate::protocol::ids::NodeId;
use crate::protocol::time::Time;
use crate::protocol::wire::{RejectCounts, ReplayLimits};

/// How the actor reaches the other nodes of its segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transport {
    /// A multicast group; `interface` is the one that joined it.
    Multicast {
        /// Group and port.
        group: SocketAddrV4,
        /// The interface that joins and sends.
        interface: Ipv4Addr,
    },
    /// Unicast to each peer (this node excluded).
    Unicast {
        /// Every other node's control socket.
        peers: HashMap<NodeId, SocketAddr>,
    },
}

/// Everything needed to start an [`ElectorActor`].
#[derive(Debug)]
pub struct ElectorSetup {
    /// This node.
    pub id: NodeId,
    /// The core's configuration.
    pub config: ElectorConfig,
    /// The cluster secret.
    pub secret: Vec<u8>,
    /// The socket, bound (see [`crate::net::udp`]) and non-blocking.
    pub socket: std::net::UdpSocket,
    /// How to reach the others.
    pub transport: Transport,
    /// Replay limits of incoming datagrams.
    pub replay: ReplayLimits,
    /// Who gets the core's events.
    pub events: Vec<Recipient<ElectionEvent>>,
}

/// An event of the core, from node `node`.
#[derive(Debug, Clone, PartialEq, Eq, Message)]
#[rtype(result = "()")]
pub struct ElectionEvent {
    /// The node whose core reported it.
    pub node: NodeId,
    /// What happened.
    pub event: Event,
}

/// What the actor reports on [`GetStatus`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ElectorStatus {
    /// This node.
    pub id: NodeId,
    /// Its state.
    pub state: State,
    /// The leader it knows.
    pub leader: Option<NodeId>,
    /// The registered members as it knows them.
    pub members: Vec<NodeId>,
    /// Datagrams dropped before the core, by reason.
    pub rejected: RejectCounts,
    /// Datagrams accepted and handed to the core.
    pub accepted: u64,
    /// The core's counters.
    pub stats: ElectorStats,
    /// Sends the socket refused.
    pub send_errors: u64,
}

/// Asks for the actor's [`ElectorStatus`].
#[derive(Debug, Clone, Copy, Message)]
#[rtype(result = "ElectorStatus")]
pub struct GetStatus;

/// Replaces the core's configuration (priority inputs, preempt, timers…).
#[derive(Debug, Clone, Message)]
#[rtype(result = "()")]
pub struct UpdateConfig(pub ElectorConfig);

/// Replaces what this node registers with (its [`MemberInfo`]: live
/// serials, addresses); a member re-registers, a leader reports its segment
/// changed.
#[derive(Debug, Clone, Message)]
#[rtype(result = "()")]
pub struct UpdateInfo(pub MemberInfo);

/// (Leader) moves the segment to another control channel; false if not leader.
#[derive(Debug, Clone, Copy, Message)]
#[rtype(result = "bool")]
pub struct MoveChannel {
    /// New group.
    pub group: Ipv4Addr,
    /// New port.
    pub port: u16,
}

/// Stops the actor and closes its socket.
#[derive(Debug, Clone, Copy, Message)]
#[rtype(result = "()")]
pub struct Shutdown;

type Incoming = Result<(ReceivedControl, SocketAddr), std::io::Error>;

/// The actor. See the module docs.
pub struct ElectorActor {
    core: Elector,
    gate: ControlGate,
    secret: Vec<u8>,
    socket: Arc<UdpSocket>,
    stream: Option<SpawnHandle>,
    transport: Transport,
    epoch: Instant,
    timer: Option<(Time, SpawnHandle)>,
    events: Vec<Recipient<ElectionEvent>>,
    accepted: u64,
    send_errors: u64,
    /// The segment's members as last logged.
    logged_members: Vec<NodeId>,
}

impl ElectorActor {
    /// Starts the actor in the current actix system.
    pub fn start(setup: ElectorSetup) -> std::io::Result<Addr<ElectorActor>> {
        let socket = Arc::new(UdpSocket::from_std(setup.socket)?);
        let started = unix_us();
        // The RNG only spreads delays; seed it from the id and start time.
        let seed = started ^ setup.id.0.rotate_left(32);
        let core = Elector::new(setup.config, setup.id, seed);
        let mut gate = ControlGate::new(&setup.secret, setup.id, started, setup.replay);
        // Nothing sent before this start passes (the windows are new).
        gate.refuse_before(unix_ms());
        Ok(ElectorActor::create(move |ctx| {
            let mut actor = ElectorActor {
                core,
                gate,
                secret: setup.secret,
                socket,
                stream: None,
                transport: setup.transport,
                epoch: Instant::now(),
                timer: None,
                events: setup.events,
                accepted: 0,
                send_errors: 0,
                logged_members: Vec::new(),
            };
            actor.listen(ctx);
            actor
        }))
    }

    fn listen(&mut self, ctx: &mut Context<Self>) {
        if let Some(old) = self.stream.take() {
            ctx.cancel_future(old);
        }
        let framed = UdpFramed::new(self.socket.clone(), ControlCodec::new(&self.secret));
        self.stream = Some(ctx.add_stream(framed));
    }

    fn now(&self) -> Time {
        Time::from_micros(u64::try_from(self.epoch.elapsed().as_micros()).unwrap_or(u64::MAX))
    }

    fn send(&mut self, t: Transmit) {
        let datagram = self.gate.seal(unix_ms(), &t.msg);
        let targets: Vec<SocketAddr> = match (&self.transport, t.to) {
            (Transport::Multicast { group, .. }, _) => vec![SocketAddr::V4(*group)],
            (Transport::Unicast { peers }, Dest::All) => peers.values().copied().collect(),
            (Transport::Unicast { peers }, Dest::Node(id)) => peers.get(&id).copied().into_iter().collect(),
        };
        for to in targets {
            if let Err(e) = self.socket.try_send_to(&datagram, to) {
                self.send_errors += 1;
                tracing::debug!(node = self.core.id().0, %to, error = %e, "control datagram not sent");
            }
        }
    }

    /// Drains the core: transmits, events, then the one timer.
    fn drive(&mut self, ctx: &mut Context<Self>) {
        while let Some(t) = self.core.poll_transmit() {
            self.send(t);
        }
        while let Some(event) = self.core.poll_event() {
            self.report(&event, ctx);
            for r in &self.events {
                r.do_send(ElectionEvent { node: self.core.id(), event: event.clone() });
            }
        }
        let next = self.core.poll_timeout();
        if self.timer.as_ref().map(|(at, _)| *at) != next {
            if let Some((_, handle)) = self.timer.take() {
                ctx.cancel_future(handle);
            }
            if let Some(at) = next {
                let delay = at - self.now();
                let handle = ctx.run_later(delay, |act, ctx| {
                    act.timer = None;
                    let now = act.now();
                    act.core.handle_timeout(now);
                    act.drive(ctx);
                });
                self.timer = Some((at, handle));
            }
        }
    }

    /// Logs an event as a structured line, and acts on channel moves.
    fn report(&mut self, event: &Event, ctx: &mut Context<Self>) {
        let node = self.core.id();
        let label = crate::metrics::node_label(node);
        match event {
            Event::LeaderElected { me, .. } => {
                metrics::counter!("cmover_leader_changes_total", "node" => label.clone()).increment(1);
                if *me {
                    metrics::counter!("cmover_elections_total", "node" => label.clone()).increment(1);
                }
            }
            Event::LeaderLost { .. } => {
                metrics::counter!("cmover_la_missed_total", "node" => label.clone()).increment(1)
            }
            Event::MemberJoined { .. } | Event::MemberLeft { .. } | Event::SegmentChanged { .. } => {
                let members = self.core.members().len();
                metrics::gauge!("cmover_registered_members", "node" => label.clone()).set(members as f64);
            }
            _ => {}
        }
        match event {
            Event::LeaderElected { leader, me, previous } => tracing::info!(
                event = "leader_elected",
                node = node.0,
                leader = leader.0,
                me = *me,
                previous = previous.map(|p| p.0),
                state = self.core.state().name(),
                "leader elected"
            ),
            Event::LeaderLost { leader } => {
                tracing::info!(event = "leader_lost", node = node.0, leader = leader.0, "leader lost")
            }
            Event::MemberJoined { id, info } => tracing::info!(
                event = "member_joined",
                node = node.0,
                member = id.0,
                name = %info.name,
                http = %info.http,
                "member joined"
            ),
            Event::MemberLeft { id } => {
                tracing::info!(event = "member_left", node = node.0, member = id.0, "member left")
            }
            Event::SegmentChanged { members } => {
                // Only a change of who is in the segment is news; new
                // details of the same members (their releases) are not.
                let ids: Vec<NodeId> = members.iter().map(|(id, _)| *id).collect();
                if ids != self.logged_members {
                    tracing::info!(
                        event = "segment_changed",
                        node = node.0,
                        members = ids.len(),
                        ids = %crate::protocol::ids::join(&ids),
                        "segment changed"
                    );
                    self.logged_members = ids;
                }
            }
            Event::MemberListChanged { leader, members } => tracing::debug!(
                event = "member_list",
                node = node.0,
                leader = leader.0,
                members = %crate::protocol::ids::join(members),
                "member list received"
            ),
            Event::MoveChannel { group, port } => self.move_to(*group, *port, ctx),
        }
    }

    fn move_to(&mut self, group: Ipv4Addr, port: u16, ctx: &mut Context<Self>) {
        let node = self.core.id();
        let Transport::Multicast { interface, .. } = self.transport else {
            tracing::warn!(event = "channel_move_ignored", node = node.0, %group, port, "unicast mode: control channel move ignored");
            return;
        };
        match udp::bind_multicast(group, port, interface).and_then(UdpSocket::from_std) {
            Ok(socket) => {
                self.socket = Arc::new(socket);
                self.transport = Transport::Multicast { group: SocketAddrV4::new(group, port), interface };
                self.listen(ctx);
                tracing::info!(event = "channel_moved", node = node.0, %group, port, "control channel moved");
            }
            Err(e) => {
                tracing::error!(event = "channel_move_failed", node = node.0, %group, port, error = %e, "cannot move the control channel; staying")
            }
        }
    }
}

impl Actor for ElectorActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        let now = self.now();
        self.core.handle_timeout(now);
        self.drive(ctx);
    }
}

impl StreamHandler<Incoming> for ElectorActor {
    fn handle(&mut self, item: Incoming, ctx: &mut Self::Context) {
        match item {
            Ok((received, from)) => {
                let admitted = self.gate.admit_from(unix_ms(), received, Some(from));
                for dup in self.gate.take_duplicates() {
                    if let crate::protocol::wire::WireError::Duplicate { sender, established, other } = &dup {
                        tracing::error!(event = "duplicate_node_id", node = self.core.id().0, id = sender.0, kept = %established, refused = %other, "{dup}");
                    }
                }
                if let Some((sender, msg)) = admitted {
                    self.accepted += 1;
                    let now = self.now();
                    self.core.handle_datagram(now, sender, msg);
                } else {
                    let r = self.gate.rejected();
                    let node = crate::metrics::node_label(self.core.id());
                    for (reason, n) in [
                        ("malformed", r.malformed),
                        ("bad_tag", r.bad_tag),
                        ("stale", r.stale),
                        ("from_future", r.from_future),
                        ("replayed", r.replayed),
                        ("duplicate", r.duplicate),
                    ] {
                        if n > 0 {
                            metrics::counter!("cmover_datagrams_rejected_total", "node" => node.clone(),
                                "channel" => "control", "reason" => reason)
                            .absolute(n);
                        }
                    }
                }
            }
            Err(e) => tracing::debug!(node = self.core.id().0, error = %e, "control socket error"),
        }
        self.drive(ctx);
    }

    fn finished(&mut self, ctx: &mut Self::Context) {
        tracing::error!(node = self.core.id().0, "control socket closed");
        ctx.stop();
    }
}

impl Handler<GetStatus> for ElectorActor {
    type Result = MessageResult<GetStatus>;

    fn handle(&mut self, _: GetStatus, ctx: &mut Self::Context) -> Self::Result {
        let status = ElectorStatus {
            id: self.core.id(),
            state: self.core.state(),
            leader: self.core.leader(),
            members: self.core.members(),
            rejected: self.gate.rejected(),
            accepted: self.accepted,
            stats: self.core.stats(),
            send_errors: self.send_errors,
        };
        self.drive(ctx);
        MessageResult(status)
    }
}

impl Handler<UpdateConfig> for ElectorActor {
    type Result = ();

    fn handle(&mut self, msg: UpdateConfig, ctx: &mut Self::Context) {
        let now = self.now();
        self.core.handle_config(now, msg.0);
        self.drive(ctx);
    }
}

impl Handler<UpdateInfo> for ElectorActor {
    type Result = ();

    fn handle(&mut self, msg: UpdateInfo, ctx: &mut Self::Context) {
        let now = self.now();
        let config = ElectorConfig { info: msg.0, ..self.core.config().clone() };
        self.core.handle_config(now, config);
        self.drive(ctx);
    }
}

impl Handler<MoveChannel> for ElectorActor {
    type Result = bool;

    fn handle(&mut self, msg: MoveChannel, ctx: &mut Self::Context) -> bool {
        let now = self.now();
        let ok = self.core.move_channel(now, msg.group, msg.port);
        self.drive(ctx);
        ok
    }
}

impl Handler<Shutdown> for ElectorActor {
    type Result = ();

    fn handle(&mut self, _: Shutdown, ctx: &mut Self::Context) {
        tracing::info!(event = "elector_stopped", node = self.core.id().0, "elector stopped");
        ctx.stop();
    }
}
