//! The agent process (`cmover agent`): turns the configuration into a
//! running [`ElectorActor`] on the configured control channel.
//!
//! Agent-only requirements (a node id, a readable cluster secret) are checked
//! here, with the same "key, problem, fix" errors as [`Config::validate`], so
//! that `cmover config check` stays usable for files that configure other roles.

use std::collections::HashMap;
use std::net::{SocketAddr, SocketAddrV4};

use crate::actors::elector::{ElectionEvent, ElectorActor, ElectorSetup, Transport};
use crate::config::{Config, ConfigError, ControlMode};
use crate::protocol::control::MemberInfo;
use crate::protocol::crypto::parse_key_file;
use crate::protocol::election::{ElectionTimers, ElectorConfig, MembershipTimers, PriorityInputs};
use crate::protocol::ids::NodeId;
use crate::protocol::wire::ReplayLimits;
use crate::udp;
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
    let bytes = std::fs::read(path).map_err(|e| {
        invalid(
            "cluster.secret_file",
            format!("cannot read {}: {e}", path.display()),
            "check the path and that the agent may read it",
        )
    })?;
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

/// Runs the agent until Ctrl-C (or SIGTERM).
pub fn run(config: &Config) -> anyhow::Result<()> {
    let system = actix::System::new();
    system.block_on(async {
        let setup = elector_setup(config, Vec::new())?;
        let mode = format!("{:?}", config.control.mode).to_lowercase();
        let elector = ElectorActor::start(setup)?;
        tracing::info!(
            event = "agent_started",
            node = config.node.id,
            mode = %mode,
            "agent started"
        );
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            r = tokio::signal::ctrl_c() => r?,
            _ = term.recv() => {}
        }
        elector.do_send(crate::actors::elector::Shutdown);
        tracing::info!(event = "agent_stopped", node = config.node.id, "agent stopped");
        anyhow::Ok(())
    })
}
