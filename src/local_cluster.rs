//! A whole cluster in one process on 127.0.0.1: a CCM and agents in
//! segments, each agent with its own directories, control channel (unicast
//! peers within its segment) and data channel. `cmover demo` runs one; the
//! cluster tests and the publish benchmark build on it.
//!
//! Everything lives under one directory: `ccm/` (database, assignments,
//! shadow copies), `agents/<id>/data`, and each agent's sites under
//! `agents/<id>/sites/<site>/{live,releases,incoming}`.

use std::collections::BTreeMap;
use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytesize::ByteSize;
use thiserror::Error;

use crate::agent::{Agent, AgentError};
use crate::ccm::{CcmHandle, StartError};
use crate::config::{Config, ControlMode, DataChannelMode};
use crate::http::admin_client::{AdminClient, AdminError};
use crate::storage::records::SegmentRecord;

/// Why the cluster could not be built or driven.
#[derive(Debug, Error)]
pub enum ClusterError {
    /// The CCM did not start.
    #[error("the CCM did not start")]
    Ccm(#[from] StartError),
    /// An agent did not start.
    #[error("agent {id} did not start")]
    Agent {
        /// Which.
        id: u64,
        /// Why.
        source: AgentError,
    },
    /// Files could not be written.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// A REST call failed.
    #[error(transparent)]
    Api(#[from] AdminError),
}

impl ClusterError {
    /// True when a port chosen as free was taken before it was bound.
    fn is_port_taken(&self) -> bool {
        let mut text = self.to_string();
        let mut source = std::error::Error::source(self);
        while let Some(e) = source {
            text.push_str(&e.to_string());
            source = e.source();
        }
        text.contains("already in use")
    }
}

/// Shape and timing of a local cluster.
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    /// Everything goes under this directory.
    pub dir: PathBuf,
    /// Segments.
    pub segments: usize,
    /// Agents per segment.
    pub per_segment: usize,
    /// Address of the CCM's HTTP server (port 0: any).
    pub http: SocketAddr,
    /// Leaders the CCM serves itself.
    pub fanout: u32,
    /// Changes to every agent's configuration (given its id), after the defaults.
    pub tweak_agent: Option<fn(u64, &mut Config)>,
    /// Changes to the CCM's configuration, after the defaults.
    pub tweak_ccm: Option<fn(&mut Config)>,
}

impl ClusterOptions {
    /// `segments` × `per_segment` agents under `dir`, CCM on any port.
    pub fn new(dir: &Path, segments: usize, per_segment: usize) -> Self {
        ClusterOptions {
            dir: dir.to_owned(),
            segments,
            per_segment,
            http: SocketAddr::from(([127, 0, 0, 1], 0)),
            fanout: 2,
            tweak_agent: None,
            tweak_ccm: None,
        }
    }
}

/// A running local cluster.
pub struct LocalCluster {
    /// The options it was built with.
    pub opts: ClusterOptions,
    /// The CCM (None while stopped).
    pub ccm: Option<CcmHandle>,
    /// Running agents by id.
    pub agents: BTreeMap<u64, Agent>,
    /// Every agent's configuration by id (stopped ones included).
    pub configs: BTreeMap<u64, Config>,
    /// The CCM's configuration.
    pub ccm_config: Config,
    /// The admin token of the REST API.
    pub token: String,
    /// A client of the CCM's REST API.
    pub admin: AdminClient,
    /// When it started, Unix ms: segment records older than this are stale.
    pub started_ms: u64,
}

/// The configuration of every process of a cluster.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The CCM's.
    pub ccm: Config,
    /// Every agent's, by id.
    pub agents: BTreeMap<u64, Config>,
}

fn free_tcp_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn random_hex(len: usize) -> std::io::Result<String> {
    let mut bytes = vec![0u8; len];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes)
        .map_err(|_| std::io::Error::other("no system randomness"))?;
    Ok(hex::encode(bytes))
}

/// Configures a cluster under `opts.dir` without starting it: the cluster
/// secret (written once), a CCM on `opts.http` (a free port if 0) with a
/// fresh admin token, and the agents, for this process or separate ones.
pub fn plan(opts: &ClusterOptions) -> Result<Plan, ClusterError> {
    std::fs::create_dir_all(&opts.dir)?;
    let secret_file = opts.dir.join("secret");
    // Readable by its owner only: the agents refuse a secret others may read.
    if !secret_file.exists() {
        use std::io::Write as _;
        use std::os::unix::fs::OpenOptionsExt;
        let mut f =
            std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&secret_file)?;
        f.write_all(random_hex(32)?.as_bytes())?;
    } else {
        // Written by an older build with the default mode.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&secret_file, std::fs::Permissions::from_mode(0o600))?;
    }
    let mut http = opts.http;
    if http.port() == 0 {
        http.set_port(free_tcp_port()?);
    }
    let mut ccm = Config::default();
    ccm.cluster.secret_file = secret_file.clone();
    ccm.ccm.data_dir = opts.dir.join("ccm");
    ccm.ccm.http_bind = http;
    ccm.ccm.admin_token = random_hex(16)?;
    ccm.ccm.fanout = opts.fanout;
    ccm.ccm.notify_timeout = Duration::from_secs(20);
    // Agents report every 2 s here (`agent_config`).
    ccm.ccm.segment_silence = Duration::from_secs(10);
    ccm.ccm.report_timeout = Duration::from_secs(120);
    ccm.ccm.retry_delay = Duration::from_millis(500);
    ccm.ccm.scheduler_tick = Duration::from_millis(200);
    if let Some(tweak) = opts.tweak_ccm {
        tweak(&mut ccm);
    }
    let n = (opts.segments * opts.per_segment) as u64;
    let mut control = BTreeMap::new();
    for id in 1..=n {
        control.insert(id, free_udp_port()?);
    }
    let agents =
        (1..=n).map(|id| (id, agent_config(opts, id, &secret_file, &ccm.ccm.url(), &control))).collect();
    Ok(Plan { ccm, agents })
}

fn free_udp_port() -> std::io::Result<SocketAddr> {
    UdpSocket::bind("127.0.0.1:0")?.local_addr()
}

/// The segment name of agent `id` (1-based ids, `per_segment` per segment).
pub fn segment_of(id: u64, per_segment: usize) -> String {
    format!("seg-{}", (id - 1) / per_segment as u64 + 1)
}

impl LocalCluster {
    /// Starts the CCM and every agent (inside a running actix system).
    pub async fn start(opts: ClusterOptions) -> Result<LocalCluster, ClusterError> {
        // Ports are chosen free, then bound a moment later; another process
        // (or test) may take one in between. Then start over on new ports.
        let mut attempt = 0;
        loop {
            match Self::start_once(opts.clone()).await {
                Err(e) if attempt < 4 && e.is_port_taken() => {
                    tracing::warn!(attempt, error = %e, "a chosen port was taken; starting the cluster again");
                    attempt += 1;
                }
                result => return result,
            }
        }
    }

    async fn start_once(opts: ClusterOptions) -> Result<LocalCluster, ClusterError> {
        let Plan { ccm: ccm_config, agents: configs } = plan(&opts)?;
        let started_ms = crate::clock::unix_ms();
        let ccm = crate::ccm::start(ccm_config.clone()).await?;
        let mut cluster = LocalCluster {
            token: ccm_config.ccm.admin_token.clone(),
            admin: AdminClient::new(&ccm.url, &ccm_config.ccm.admin_token),
            started_ms,
            opts,
            ccm: Some(ccm),
            agents: BTreeMap::new(),
            configs,
            ccm_config,
        };
        for id in cluster.ids() {
            if let Err(e) = cluster.start_agent(id).await {
                cluster.stop().await;
                return Err(e);
            }
        }
        Ok(cluster)
    }

    /// Starts (or restarts) agent `id`.
    pub async fn start_agent(&mut self, id: u64) -> Result<(), ClusterError> {
        let config = self.configs[&id].clone();
        let agent = Agent::start(config).await.map_err(|source| ClusterError::Agent { id, source })?;
        self.agents.insert(id, agent);
        Ok(())
    }

    /// Stops agent `id` (its files stay).
    pub async fn stop_agent(&mut self, id: u64) {
        if let Some(a) = self.agents.remove(&id) {
            a.stop().await;
        }
    }

    /// Stops the CCM (its database stays).
    pub async fn stop_ccm(&mut self) {
        if let Some(c) = self.ccm.take() {
            c.stop().await;
        }
    }

    /// Starts the CCM again on the same port and data.
    pub async fn start_ccm(&mut self) -> Result<(), ClusterError> {
        self.ccm = Some(crate::ccm::start(self.ccm_config.clone()).await?);
        Ok(())
    }

    /// The CCM's URL.
    pub fn url(&self) -> String {
        self.ccm_config.ccm.url()
    }

    /// Agent `id`'s live directory for `site`.
    pub fn live_dir(&self, id: u64, site: &str) -> PathBuf {
        self.configs[&id].agent.sites_root.join(site).join("live")
    }

    /// Agent ids.
    pub fn ids(&self) -> Vec<u64> {
        self.configs.keys().copied().collect()
    }

    /// The segments and members expected from the running agents.
    pub fn expected_segments(&self) -> Vec<(String, Vec<u64>)> {
        expected_segments(&self.opts, self.agents.keys().copied())
    }

    /// Waits until the CCM knows every segment with all its running agents online.
    pub async fn wait_segments(&self, limit: Duration) -> Result<Vec<SegmentRecord>, ClusterError> {
        Ok(self.admin.wait_segments(&self.expected_segments(), self.started_ms, limit).await?)
    }

    /// Stops everything.
    pub async fn stop(mut self) {
        let ids: Vec<u64> = self.agents.keys().copied().collect();
        for id in ids {
            self.stop_agent(id).await;
        }
        self.stop_ccm().await;
    }
}

/// Segment name → the ids among `running` in it, for every segment of `opts`.
pub fn expected_segments(
    opts: &ClusterOptions,
    running: impl Iterator<Item = u64>,
) -> Vec<(String, Vec<u64>)> {
    let running: Vec<u64> = running.collect();
    (1..=opts.segments)
        .map(|s| {
            let name = format!("seg-{s}");
            let ids =
                running.iter().copied().filter(|id| segment_of(*id, opts.per_segment) == name).collect();
            (name, ids)
        })
        .collect()
}

/// Timers for a LAN that is one machine (election, membership, reports):
/// quick, and calm enough on a busy one; and no free-disk reserve.
pub fn one_machine_timers(c: &mut Config) {
    let e = &mut c.election;
    e.la_interval = Duration::from_millis(200);
    e.claim_delay_min = Duration::from_millis(20);
    e.claim_delay_max = Duration::from_millis(150);
    e.voting_window = Duration::from_millis(100);
    e.deposed_hold = Duration::from_secs(2);
    let m = &mut c.membership;
    m.alive_interval = Duration::from_millis(400);
    m.member_timeout = Duration::from_millis(2400);
    m.list_delay = Duration::from_millis(400);
    m.register_jitter = Duration::from_millis(200);
    c.mctp.report_window = Duration::from_millis(100);
    c.reports.interval = Duration::from_millis(50);
    c.reports.grace = Duration::from_millis(100);
    c.releases.min_free_disk = ByteSize::b(0);
}

fn agent_config(
    opts: &ClusterOptions,
    id: u64,
    secret: &Path,
    ccm_url: &str,
    control: &BTreeMap<u64, SocketAddr>,
) -> Config {
    let segment = segment_of(id, opts.per_segment);
    let mut c = Config::default();
    c.node.id = id;
    c.node.name = format!("web-{id}");
    c.cluster.secret_file = secret.to_owned();
    c.control.mode = ControlMode::Unicast;
    c.control.bind = control[&id];
    c.control.peers = control
        .iter()
        .filter(|(p, _)| segment_of(**p, opts.per_segment) == segment)
        .map(|(p, a)| format!("{p}@{a}"))
        .collect();
    one_machine_timers(&mut c);
    // The first agent of each segment is preferred, so that leaders are predictable.
    c.election.preference = if (id - 1) % opts.per_segment as u64 == 0 { 90 } else { 10 };
    let a = &mut c.agent;
    let dir = opts.dir.join("agents").join(id.to_string());
    a.data_dir = dir.join("data");
    a.sites_root = dir.join("sites");
    a.segment = segment;
    a.location = "127.0.0.1".into();
    a.ccm_url = ccm_url.into();
    a.http_bind = SocketAddr::from(([127, 0, 0, 1], 0));
    a.segment_report_interval = Duration::from_secs(2);
    a.retry_delay = Duration::from_millis(100);
    a.report_timeout = Duration::from_secs(30);
    c.data.mode = DataChannelMode::Unicast;
    c.data.bind = SocketAddr::from(([127, 0, 0, 1], 0));
    if let Some(tweak) = opts.tweak_agent {
        tweak(id, &mut c);
    }
    c
}
