//! The agent process (`cmover agent`): turns the configuration into a
//! running [`Agent`]: the elector on the control channel, the member's
//! MCTP receiver and the content interpreter, the group leader's duties
//! (MCTP sender, report collector, [`GroupLeader`]) and the node HTTP
//! server, wired together in one place.
//!
//! ```text
//!   elector ──events──▶ GroupLeader ──SendAssignment──▶ MulticastSender ─┐ leader
//!      ▲                 │  ▲  │ ApplyAssignment        ReportCollector ◀┘ channel
//!      │ UpdateInfo      │  │  ▼
//!      └──────── ContentInterpreter ◀──AssignmentReceived── MulticastReceiver  member
//!                        └──ReportResult / MarkHeld──────────▶                 channel
//!   node HTTP server ──DistributeAssignment / GetNodeStatus──▶ GroupLeader
//! ```
//!
//! A node has two data channels: the *member* channel (bound at `data.bind`,
//! announced as `MemberInfo.data`, joined to the group in multicast mode)
//! carries what a member receives and its reports; the *leader* channel
//! (same address, any port) carries what this node sends while it leads.
//! Two sockets because each MCTP actor reads its own.
//!
//! All of an agent's actors run on one arbiter (thread) of their own, so
//! that [`Agent::stop`] ends them all and closes every socket, and several
//! agents can share a process in tests.
//!
//! Agent-only requirements (a node id, a readable cluster secret) are checked
//! here, with the same "key, problem, fix" errors as [`Config::validate`], so
//! that `cmover config check` stays usable for files that configure other roles.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr, SocketAddrV4, TcpListener};
use std::path::PathBuf;
use std::sync::Arc;

use actix_web::dev::ServerHandle;
use thiserror::Error;

use crate::actors::content_interpreter::{
    discard_interrupted_builds, reconcile_held, ContentInterpreter, InterpreterSetup,
};
use crate::actors::elector::{ElectionEvent, ElectorActor, ElectorSetup, Shutdown, Transport};
use crate::actors::group_leader::{GroupLeader, LeaderSetup};
use crate::actors::multicast_receiver::MulticastReceiver;
use crate::actors::multicast_sender::MulticastSender;
use crate::actors::report_collector::ReportCollector;
use crate::config::{Config, ConfigError, ControlMode, DataChannelMode};
use crate::http::node_api::{self, NodeApi};
use crate::http::signed::NodeAuth;
use crate::net::client::NodeClient;
use crate::net::data_channel::{DataChannel, DataChannelConfig, DataMode};
use crate::net::fetch::FetchOptions;
use crate::net::udp;
use crate::protocol::control::MemberInfo;
use crate::protocol::crypto::parse_key_file;
use crate::protocol::crypto::ContentKey;
use crate::protocol::election::{ElectionTimers, ElectorConfig, MembershipTimers, PriorityInputs};
use crate::protocol::ids::NodeId;
use crate::protocol::wire::ReplayLimits;
use crate::storage::agent_state::{AgentState, StateError};
use actix::prelude::*;

fn invalid(key: &str, problem: impl Into<String>, fix: impl Into<String>) -> ConfigError {
    ConfigError::Invalid { key: key.into(), problem: problem.into(), fix: fix.into() }
}

/// The election core's configuration from the agent's configuration.
pub fn elector_config(config: &Config) -> ElectorConfig {
    let e = &config.election;
    let m = &config.membership;
    let name = if config.node.name.is_empty() {
        format!("node-{}", config.node.id)
    } else {
        config.node.name.clone()
    };
    ElectorConfig {
        timers: ElectionTimers {
            la_interval: e.la_interval,
            la_miss: e.la_miss,
            claim_delay_min: e.claim_delay_min,
            claim_delay_max: e.claim_delay_max,
            voting_window: e.voting_window,
            deposed_hold: e.deposed_hold,
        },
        membership: MembershipTimers {
            alive_interval: m.alive_interval,
            member_timeout: m.member_timeout,
            list_delay: m.list_delay,
            register_jitter: m.register_jitter,
        },
        preempt: e.preempt,
        gl_capable: e.gl_capable,
        priority: PriorityInputs {
            preference: e.preference,
            cpu: e.cpu,
            disk: e.disk,
            network: e.network,
            reliability: e.reliability,
            freshness: e.freshness,
        },
        info: MemberInfo {
            http: config.node.advertise_http.clone(),
            data: String::new(),
            name,
            serials: Vec::new(),
        },
    }
}

/// Reads the cluster secret named by `cluster.secret_file`.
pub fn read_secret(config: &Config) -> Result<Vec<u8>, ConfigError> {
    let path = &config.cluster.secret_file;
    if path.as_os_str().is_empty() {
        return Err(invalid(
            "cluster.secret_file",
            "no cluster secret file is configured",
            "create one with `cmover keygen --output FILE` and copy it to every node",
        ));
    }
    let bytes = crate::config::read_secret_file("cluster.secret_file", path)?;
    parse_key_file(&bytes).map_err(|e| {
        invalid(
            "cluster.secret_file",
            format!("{}: {e}", path.display()),
            "use a file written by `cmover keygen`",
        )
    })
}

/// The agent's elector, ready to start: checked configuration and a bound socket.
pub fn elector_setup(
    config: &Config,
    events: Vec<Recipient<ElectionEvent>>,
) -> Result<ElectorSetup, ConfigError> {
    config.validate()?;
    if config.node.id == 0 {
        return Err(invalid(
            "node.id",
            "no node id is set",
            "give every agent its own id, 1 or more, e.g. id = 3 under [node]",
        ));
    }
    let secret = read_secret(config)?;
    let c = &config.control;
    let (socket, transport) = match c.mode {
        ControlMode::Multicast => {
            let socket = udp::bind_multicast(c.group, c.port, c.interface).map_err(|e| {
                invalid(
                    "control.group",
                    format!("cannot join {}:{} on {}: {e}", c.group, c.port, c.interface),
                    "check control.interface names an address of this host with multicast, or use mode = \"unicast\"",
                )
            })?;
            let transport =
                Transport::Multicast { group: SocketAddrV4::new(c.group, c.port), interface: c.interface };
            (socket, transport)
        }
        ControlMode::Unicast => {
            let socket = udp::bind_unicast(c.bind).map_err(|e| {
                invalid(
                    "control.bind",
                    format!("cannot bind {}: {e}", c.bind),
                    "choose a free port and an address of this host",
                )
            })?;
            let peers: HashMap<NodeId, SocketAddr> = c
                .peer_list()
                .map_err(|e| invalid("control.peers", e, "write peers as \"ID@HOST:PORT\""))?
                .into_iter()
                .filter(|p| p.id != config.node.id)
                .map(|p| (NodeId(p.id), p.addr))
                .collect();
            (socket, Transport::Unicast { peers })
        }
    };
    let replay = ReplayLimits {
        max_age_ms: u64::try_from(c.replay_window.as_millis()).unwrap_or(u64::MAX),
        max_future_ms: u64::try_from(c.max_clock_skew.as_millis()).unwrap_or(u64::MAX),
        // A node silent this long is gone for its segment: then another may take its id.
        takeover_ms: u64::try_from(config.membership.member_timeout.as_millis()).unwrap_or(u64::MAX),
        ..ReplayLimits::default()
    };
    Ok(ElectorSetup {
        id: NodeId(config.node.id),
        config: elector_config(config),
        secret,
        socket,
        transport,
        replay,
        events,
    })
}

/// Why an agent could not start.
#[derive(Debug, Error)]
pub enum AgentError {
    /// The configuration is wrong (key, problem, fix).
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The state store cannot be used.
    #[error(transparent)]
    State(#[from] StateError),
    /// A directory or socket could not be set up.
    #[error("cannot {what}")]
    Io {
        /// What was being done.
        what: String,
        /// Why.
        source: std::io::Error,
    },
    /// The agent's arbiter stopped while starting.
    #[error("the agent's arbiter stopped while it was starting")]
    Stopped,
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> AgentError {
    let what = what.into();
    move |source| AgentError::Io { what, source }
}

/// A running agent. See the module docs.
pub struct Agent {
    /// This node.
    pub id: NodeId,
    /// Where the node HTTP server listens.
    pub http: SocketAddr,
    /// The member data channel's address.
    pub data: SocketAddr,
    /// The elector.
    pub elector: Addr<ElectorActor>,
    /// The group leader duties.
    pub leader: Addr<GroupLeader>,
    /// The content interpreter.
    pub interpreter: Addr<ContentInterpreter>,
    server: ServerHandle,
    arbiter: Arbiter,
}

struct Parts {
    id: NodeId,
    http: SocketAddr,
    data: SocketAddr,
    elector: Addr<ElectorActor>,
    leader: Addr<GroupLeader>,
    interpreter: Addr<ContentInterpreter>,
    server: ServerHandle,
}

impl Agent {
    /// Starts an agent on an arbiter of its own (inside a running actix system).
    pub async fn start(config: Config) -> Result<Agent, AgentError> {
        let arbiter = Arbiter::new();
        let (tx, rx) = tokio::sync::oneshot::channel();
        arbiter.spawn_fn(move || {
            let _ = tx.send(build(&config));
        });
        match rx.await {
            Ok(Ok(p)) => Ok(Agent {
                id: p.id,
                http: p.http,
                data: p.data,
                elector: p.elector,
                leader: p.leader,
                interpreter: p.interpreter,
                server: p.server,
                arbiter,
            }),
            Ok(Err(e)) => {
                arbiter.stop();
                Err(e)
            }
            Err(_) => Err(AgentError::Stopped),
        }
    }

    /// Stops the HTTP server and every actor, and closes every socket.
    pub async fn stop(self) {
        self.server.stop(true).await;
        let _ = self.elector.send(Shutdown).await;
        self.arbiter.stop();
        let _ = self.arbiter.join();
    }
}

/// The address this node's members reach its data socket at.
fn data_advertise(config: &Config, http: &str, bound: SocketAddr) -> Result<String, ConfigError> {
    if !config.data.advertise.is_empty() {
        return Ok(config.data.advertise.clone());
    }
    let ip: Option<IpAddr> = if bound.ip().is_unspecified() {
        http.parse::<SocketAddr>().ok().map(|a| a.ip()).filter(|ip| !ip.is_unspecified())
    } else {
        Some(bound.ip())
    };
    match (ip, config.data.mode) {
        (Some(ip), _) => Ok(SocketAddr::new(ip, bound.port()).to_string()),
        (None, DataChannelMode::Multicast) => Ok(String::new()),
        (None, DataChannelMode::Unicast) => Err(invalid(
            "data.advertise",
            "unicast fan-out needs this node's data address, and neither data.bind nor node.advertise_http names one",
            "set data.advertise = \"HOST:PORT\" (or node.advertise_http to an IP address and port)",
        )),
    }
}

/// Builds and starts everything, on the current arbiter.
fn build(config: &Config) -> Result<Parts, AgentError> {
    let a = &config.agent;
    let id = NodeId(config.node.id);
    crate::metrics::init();
    let assignments: PathBuf = a.data_dir.join("assignments");
    let receiving = a.data_dir.join("receiving");
    for dir in [&assignments, &receiving, &a.sites_root] {
        std::fs::create_dir_all(dir).map_err(io(format!("create {}", dir.display())))?;
    }
    // Sessions cut short by a crash leave partial files behind; nothing
    // resumes them.
    if let Ok(entries) = std::fs::read_dir(&receiving) {
        for e in entries.flatten() {
            let _ = std::fs::remove_file(e.path());
        }
    }
    // So are release builds (`incoming/N.building`): the assignment is
    // applied again from its start if it comes again.
    discard_interrupted_builds(&a.sites_root);
    let state = Arc::new(AgentState::open(&a.data_dir)?);
    let held = reconcile_held(&assignments, &state)?;
    let mut elector_setup = elector_setup(config, Vec::new())?;
    let secret = elector_setup.secret.clone();
    let key = ContentKey::from_secret(&secret).map_err(|e| {
        invalid("cluster.secret_file", e.to_string(), "use a file written by `cmover keygen`")
    })?;

    let listener = TcpListener::bind(a.http_bind).map_err(|e| {
        invalid(
            "agent.http_bind",
            format!("cannot listen on {}: {e}", a.http_bind),
            "choose a free port and an address of this host",
        )
    })?;
    let http = listener.local_addr().map_err(io("read the HTTP address"))?;
    let advertise_http = if !config.node.advertise_http.is_empty() {
        config.node.advertise_http.clone()
    } else if http.ip().is_unspecified() {
        return Err(invalid(
            "node.advertise_http",
            format!("empty, and agent.http_bind ({}) listens on every address", a.http_bind),
            "set node.advertise_http to the \"HOST:PORT\" the CCM and other leaders reach this agent at",
        )
        .into());
    } else {
        http.to_string()
    };

    let d = &config.data;
    let mode = |join| match d.mode {
        DataChannelMode::Unicast => DataMode::Unicast,
        DataChannelMode::Multicast => {
            DataMode::Multicast { group: d.group, port: d.port, interface: d.interface, join }
        }
    };
    let channel = |bind: SocketAddr, join: bool| DataChannelConfig {
        node: id,
        secret: secret.clone(),
        bind,
        mode: mode(join),
        peers: Vec::new(),
        drop_rate: 0.0,
        drop_seed: 0,
    };
    let (member_channel, member_incoming) = DataChannel::open(channel(d.bind, true)).map_err(|e| {
        invalid(
            "data.bind",
            format!("cannot open the data channel on {} ({:?}): {e}", d.bind, d.mode),
            "choose a free port and an address of this host (and, in multicast mode, check data.interface)",
        )
    })?;
    // The leader's sockets number their datagrams on from the member's:
    // one sequence per node (the numbers are nonces).
    let (leader_channel, leader_incoming) = member_channel
        .open_sibling(channel(SocketAddr::new(d.bind.ip(), 0), false))
        .map_err(io("open the leader's data channel"))?;
    let data = member_channel.local_addr().map_err(io("read the data address"))?;
    let name = if config.node.name.is_empty() { format!("node-{id}") } else { config.node.name.clone() };
    let info = MemberInfo {
        http: advertise_http.clone(),
        data: data_advertise(config, &advertise_http, data)?,
        name,
        serials: Vec::new(),
    };

    let leader_ctx = Context::<GroupLeader>::new();
    let leader = leader_ctx.address();
    let receiver_ctx = Context::<MulticastReceiver>::new();
    let receiver = receiver_ctx.address();
    elector_setup.config.info = info.clone();
    elector_setup.events = vec![leader.clone().recipient()];
    let elector = ElectorActor::start(elector_setup).map_err(io("start the elector"))?;
    let interpreter = ContentInterpreter::new(InterpreterSetup {
        node: id,
        sites_root: a.sites_root.clone(),
        assignments: assignments.clone(),
        state: state.clone(),
        key: Some(key),
        site_options: crate::offline::site_options(config),
        receiver: Some(receiver.clone().recipient()),
        held: Some(receiver.clone().recipient()),
        registration: Some((elector.clone().recipient(), info.clone())),
        hooks: config.hooks.clone(),
    })
    .start();
    let seed = id.0 ^ crate::clock::unix_ms().rotate_left(17);
    receiver_ctx.run(MulticastReceiver::new(
        config.mctp.receiver(),
        config.reports.collector(),
        seed,
        member_channel,
        member_incoming,
        receiving,
        Some(interpreter.clone().recipient()),
    ));
    let collector = ReportCollector::new(
        config.reports.collector(),
        leader_channel.clone(),
        Some(leader.clone().recipient()),
    )
    .start();
    let sender = MulticastSender::new(
        config.mctp.sender(),
        seed.rotate_left(7),
        leader_channel,
        leader_incoming,
        Some(leader.clone().recipient()),
        Some(collector.clone().recipient()),
    )
    .start();
    let client = NodeClient::new(&secret, id, a.request_timeout);
    leader_ctx.run(GroupLeader::new(LeaderSetup {
        node: id,
        segment: a.segment.clone(),
        location: a.location.clone(),
        ccm_url: a.ccm_url.trim_end_matches('/').to_owned(),
        advertise_http: advertise_http.clone(),
        assignments: assignments.clone(),
        state,
        client,
        fetch: FetchOptions {
            idle_timeout: a.fetch_idle_timeout,
            retries: a.fetch_retries,
            hash_retries: a.fetch_hash_retries,
            retry_delay: a.retry_delay,
            rate_limit: None,
            progress: None,
        },
        report_interval: a.segment_report_interval,
        retry_delay: a.retry_delay,
        report_timeout: a.report_timeout,
        sender: sender.clone().recipient(),
        register: sender.recipient(),
        collector: collector.recipient(),
        interpreter: interpreter.clone().recipient(),
        interpreter_status: interpreter.clone().recipient(),
        held: Some(receiver.recipient()),
    }));
    let api = NodeApi {
        notify: leader.clone().recipient(),
        status: leader.clone().recipient(),
        assignments,
        metrics_node: crate::metrics::node_label(id),
    };
    let (_, server) = node_api::serve(listener, NodeAuth::from_secret(&secret, id, a.api_max_skew), api)
        .map_err(io("start the node HTTP server"))?;
    tracing::info!(
        event = "agent_started", node = id.0, segment = %a.segment, http = %http, advertise_http = %advertise_http,
        data = %data, data_mode = d.mode.name(), control_mode = config.control.mode.name(), held = held.len(),
        "agent started"
    );
    Ok(Parts { id, http, data, elector, leader, interpreter, server })
}

/// Runs the agent until Ctrl-C (or SIGTERM).
pub fn run(config: &Config) -> Result<(), AgentError> {
    let system = actix::System::new();
    system.block_on(async {
        let agent = Agent::start(config.clone()).await?;
        let signals = io("wait for Ctrl-C or SIGTERM");
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).map_err(signals)?;
        tokio::select! {
            r = tokio::signal::ctrl_c() => r.map_err(io("wait for Ctrl-C"))?,
            _ = term.recv() => {}
        }
        let node = agent.id;
        agent.stop().await;
        tracing::info!(event = "agent_stopped", node = node.0, "agent stopped");
        Ok(())
    })
}
