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
use crate::storage::records::{Quorum, RunRecord, SegmentRecord};

/// Why the cluster could not be built or driven.
#[derive(Debug, Error)]
pub enum ClusterError {
    /// The CCM did not start.
    #[error("CCM: {0}")]
    Ccm(#[from] StartError),
    /// An agent did not start.
    #[error("agent {id}: {source}")]
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
    #[error("{0}")]
    Api(String),
    /// Something did not happen in time.
    #[error("timed out after {0:?} waiting for {1}")]
    Timeout(Duration, String),
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
        std::fs::create_dir_all(&opts.dir)?;
        let secret_file = opts.dir.join("secret");
        if !secret_file.exists() {
            let mut key = [0u8; 32];
            ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut key)
                .map_err(|_| std::io::Error::other("no system randomness"))?;
            std::fs::write(&secret_file, hex::encode(key))?;
        }
        let mut token = [0u8; 16];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut token)
            .map_err(|_| std::io::Error::other("no system randomness"))?;
        let mut ccm_config = Config::default();
        ccm_config.cluster.secret_file = secret_file.clone();
        ccm_config.ccm.data_dir = opts.dir.join("ccm");
        ccm_config.ccm.http_bind = opts.http;
        ccm_config.ccm.admin_token = hex::encode(token);
        ccm_config.ccm.fanout = opts.fanout;
        ccm_config.ccm.notify_timeout = Duration::from_secs(20);
        ccm_config.ccm.report_timeout = Duration::from_secs(120);
        ccm_config.ccm.retry_delay = Duration::from_millis(500);
        if let Some(tweak) = opts.tweak_ccm {
            tweak(&mut ccm_config);
        }
        let ccm = crate::ccm::start(ccm_config.clone()).await?;
        // Keep the port the CCM got, so that a restart comes back on it.
        if let Some(port) = ccm.url.rsplit(':').next().and_then(|p| p.parse::<u16>().ok()) {
            ccm_config.ccm.http_bind.set_port(port);
            ccm_config.ccm.advertise_url = ccm.url.clone();
        }
        let n = (opts.segments * opts.per_segment) as u64;
        let mut control = BTreeMap::new();
        for id in 1..=n {
            control.insert(id, free_udp_port()?);
        }
        let mut configs = BTreeMap::new();
        for id in 1..=n {
            configs.insert(id, agent_config(&opts, id, &secret_file, &ccm.url, &control));
        }
        let mut cluster = LocalCluster {
            token: ccm_config.ccm.admin_token.clone(),
            opts,
            ccm: Some(ccm),
            agents: BTreeMap::new(),
            configs,
            ccm_config,
        };
        for id in 1..=n {
            cluster.start_agent(id).await?;
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

    /// Calls the REST API; returns status and JSON.
    pub async fn api(
        &self,
        method: &str,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> Result<(u16, serde_json::Value), ClusterError> {
        let url = format!("{}{path}", self.url());
        // A client per call: pooled connections would outlive a CCM restart.
        let client = awc::Client::builder().timeout(Duration::from_secs(30)).finish();
        let req = client
            .request(method.parse().map_err(|_| ClusterError::Api(format!("bad method {method}")))?, &url)
            .insert_header(("authorization", format!("Bearer {}", self.token)));
        let sent = match body {
            Some(b) => req.send_json(&b).await,
            None => req.send().await,
        };
        let mut resp = sent.map_err(|e| ClusterError::Api(format!("{url}: {e}")))?;
        let bytes =
            resp.body().limit(64 << 20).await.map_err(|e| ClusterError::Api(format!("{url}: {e}")))?;
        Ok((resp.status().as_u16(), serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null)))
    }

    async fn api_ok(
        &self,
        method: &str,
        path: &str,
        body: serde_json::Value,
    ) -> Result<serde_json::Value, ClusterError> {
        let (status, v) = self.api(method, path, Some(body)).await?;
        if (200..300).contains(&status) {
            Ok(v)
        } else {
            Err(ClusterError::Api(format!("{method} {path}: HTTP {status}: {v}")))
        }
    }

    /// Creates a site.
    pub async fn create_site(&self, name: &str, staging: &Path) -> Result<(), ClusterError> {
        self.api_ok("POST", "/api/v1/sites", serde_json::json!({"name": name, "staging": staging}))
            .await
            .map(|_| ())
    }

    /// Creates a content group.
    pub async fn create_group(
        &self,
        name: &str,
        site: &str,
        servers: &[u64],
        quorum: Quorum,
    ) -> Result<(), ClusterError> {
        let body = serde_json::json!({"name": name, "site": site, "servers": servers, "quorum": quorum});
        self.api_ok("POST", "/api/v1/groups", body).await.map(|_| ())
    }

    /// Creates a job; returns its id.
    pub async fn create_job(&self, site: &str, group: &str, kind: &str) -> Result<u64, ClusterError> {
        let v = self
            .api_ok("POST", "/api/v1/jobs", serde_json::json!({"site": site, "group": group, "kind": kind}))
            .await?;
        v["id"].as_u64().ok_or_else(|| ClusterError::Api(format!("no job id in {v}")))
    }

    /// Runs a job now; returns the run id.
    pub async fn run_job(&self, job: u64) -> Result<u64, ClusterError> {
        let v = self.api_ok("POST", &format!("/api/v1/jobs/{job}/run"), serde_json::json!({})).await?;
        v["run"].as_u64().ok_or_else(|| ClusterError::Api(format!("no run id in {v}")))
    }

    /// A run's record.
    pub async fn run(&self, run: u64) -> Result<RunRecord, ClusterError> {
        let (status, v) = self.api("GET", &format!("/api/v1/runs/{run}"), None).await?;
        if status != 200 {
            return Err(ClusterError::Api(format!("run {run}: HTTP {status}: {v}")));
        }
        serde_json::from_value(v).map_err(|e| ClusterError::Api(e.to_string()))
    }

    /// Waits until run `run` is over.
    pub async fn wait_run(&self, run: u64, limit: Duration) -> Result<RunRecord, ClusterError> {
        let start = std::time::Instant::now();
        loop {
            if let Ok(r) = self.run(run).await {
                if r.state.is_final() {
                    return Ok(r);
                }
            }
            if start.elapsed() > limit {
                return Err(ClusterError::Timeout(limit, format!("run {run} to end")));
            }
            actix::clock::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until the CCM knows every segment with all its running agents online.
    pub async fn wait_segments(&self, limit: Duration) -> Result<Vec<SegmentRecord>, ClusterError> {
        let start = std::time::Instant::now();
        loop {
            let (status, v) = self.api("GET", "/api/v1/segments", None).await?;
            if status == 200 {
                let segs: Vec<SegmentRecord> = serde_json::from_value(v).unwrap_or_default();
                let complete = (1..=self.opts.segments).all(|s| {
                    let name = format!("seg-{s}");
                    let want: Vec<u64> = self
                        .agents
                        .keys()
                        .copied()
                        .filter(|id| segment_of(*id, self.opts.per_segment) == name)
                        .collect();
                    segs.iter().any(|r| {
                        r.name == name
                            && want.iter().all(|id| r.members.iter().any(|m| m.id.0 == *id))
                            && r.members.len() == want.len()
                    })
                });
                if complete {
                    return Ok(segs);
                }
            }
            if start.elapsed() > limit {
                return Err(ClusterError::Timeout(limit, "every segment to report all its agents".into()));
            }
            actix::clock::sleep(Duration::from_millis(100)).await;
        }
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
    // Timers for a LAN that is one machine: quick, and calm enough on a busy one.
    let e = &mut c.election;
    e.la_interval = Duration::from_millis(200);
    e.claim_delay_min = Duration::from_millis(20);
    e.claim_delay_max = Duration::from_millis(150);
    e.voting_window = Duration::from_millis(100);
    e.deposed_hold = Duration::from_secs(2);
    // The first agent of each segment is preferred, so that leaders are predictable.
    e.preference = if (id - 1) % opts.per_segment as u64 == 0 { 90 } else { 10 };
    let m = &mut c.membership;
    m.alive_interval = Duration::from_millis(400);
    m.member_timeout = Duration::from_millis(2400);
    m.list_delay = Duration::from_millis(400);
    m.register_jitter = Duration::from_millis(200);
    c.mctp.report_window = Duration::from_millis(100);
    c.reports.interval = Duration::from_millis(50);
    c.reports.grace = Duration::from_millis(100);
    c.releases.min_free_disk = ByteSize::b(0);
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
