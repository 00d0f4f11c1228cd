//! Typed configuration, read from TOML, with defaults for every option.
//!
//! Every section denies unknown keys, so a misspelt option is an error that
//! names it rather than a silently ignored line. [`Config::validate`] checks
//! what types cannot (ranges, patterns) and every error says which key is
//! wrong, what is wrong with it, and how to fix it. `config.example.toml` at
//! the repository root lists every option with its default; a test checks
//! that it parses to exactly [`Config::default`].

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytesize::ByteSize;
use serde::{Deserialize, Serialize};
use thiserror::Error;

/// A configuration problem.
#[derive(Debug, Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not valid TOML, has an unknown key or a value of the wrong type.
    #[error("config file {path}: {message}\nfix: compare with config.example.toml, which lists every option with its default")]
    Parse {
        /// The file.
        path: String,
        /// toml's message (it quotes the line and names the key).
        message: String,
    },
    /// A value is of the right type but not acceptable.
    #[error("config key `{key}`: {problem}\nfix: {fix}")]
    Invalid {
        /// Dotted key, e.g. `releases.keep_releases`.
        key: String,
        /// What is wrong.
        problem: String,
        /// What to do.
        fix: String,
    },
}

fn invalid(key: &str, problem: impl Into<String>, fix: impl Into<String>) -> ConfigError {
    ConfigError::Invalid { key: key.into(), problem: problem.into(), fix: fix.into() }
}

/// Reads the secret file named by config key `key` (the cluster secret, the
/// webhook key, a content key). A file that anyone but its owner may read or
/// write (any group or other permission bit: use 0600 or 0400) is refused,
/// since every key of the cluster derives from it.
pub fn read_secret_file(key: &str, path: &Path) -> Result<Vec<u8>, ConfigError> {
    use std::os::unix::fs::PermissionsExt;
    let unreadable = |e: std::io::Error| {
        invalid(
            key,
            format!("cannot read {}: {e}", path.display()),
            "check the path and that this process may read it (`cmover keygen -o FILE` makes one)",
        )
    };
    let md = std::fs::metadata(path).map_err(unreadable)?;
    let mode = md.permissions().mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(invalid(
            key,
            format!(
                "{} has mode {mode:04o}: users other than its owner may read or change the secret",
                path.display()
            ),
            format!("chmod 600 {} (only its owner may read it: 0600 or 0400)", path.display()),
        ));
    }
    std::fs::read(path).map_err(unreadable)
}

/// Durations in the config: humantime text (`"500ms"`, `"2s"`, `"1h"`), at
/// most [`duration::MAX`]. The bound keeps every `interval × count` the
/// protocols compute (a `u32` count at most) far from `Duration`'s limit, so
/// no value from the file can make one overflow.
pub mod duration {
    use std::time::Duration;

    use serde::{Deserializer, Serializer};

    /// The longest duration accepted: one year.
    pub const MAX: Duration = Duration::from_secs(365 * 24 * 3600);

    /// Writes `d` as humantime text.
    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        humantime_serde::serialize(d, s)
    }

    /// Reads humantime text and refuses durations over [`MAX`].
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let v: Duration = humantime_serde::deserialize(d)?;
        if v > MAX {
            return Err(serde::de::Error::custom(format!(
                "{} is longer than the longest duration accepted, {}",
                humantime::format_duration(v),
                humantime::format_duration(MAX)
            )));
        }
        Ok(v)
    }
}

/// The whole configuration.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Logging.
    pub log: LogConfig,
    /// What content is taken from a tree and how it is packed.
    pub content: ContentConfig,
    /// Releases kept on a back-end server.
    pub releases: ReleasesConfig,
    /// This agent's identity.
    pub node: NodeConfig,
    /// Reliable multicast of assignments in a segment.
    pub mctp: MctpConfig,
    /// Collection of members' job status reports.
    pub reports: ReportsConfig,
    /// What the cluster's nodes share.
    pub cluster: ClusterConfig,
    /// The segment's control channel (elections and membership).
    pub control: ControlConfig,
    /// Group-leader election.
    pub election: ElectionConfig,
    /// Segment membership.
    pub membership: MembershipConfig,
    /// The controller (`cmover ccm`).
    pub ccm: CcmConfig,
    /// The agent process: where it keeps things, whom it talks to.
    pub agent: AgentConfig,
    /// The data channel that carries assignments inside a segment.
    pub data: DataConfig,
    /// The CCM: the load balancer in front of the servers.
    pub lb: crate::ops::config::LbConfig,
    /// The CCM: caches invalidated after a commit.
    pub cache: crate::ops::config::CacheConfig,
    /// The CCM: delivery of webhooks.
    pub webhook: crate::ops::config::WebhookConfig,
    /// Each server: commands run around a commit, per site.
    pub hooks: crate::ops::config::HooksConfig,
}

/// `[agent]`: the agent process (`cmover agent`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AgentConfig {
    /// Where the agent keeps assignments (`assignments/<id>.cma`) and its state store.
    pub data_dir: PathBuf,
    /// Site `S` lives at `sites_root/S/{live,releases,incoming}`.
    pub sites_root: PathBuf,
    /// Name of this node's segment, reported to the CCM.
    pub segment: String,
    /// Where the segment is (free text: data centre, time zone…), reported to the CCM.
    pub location: String,
    /// Base URL of the CCM's node API (`http://host:port`).
    pub ccm_url: String,
    /// Address of the node HTTP server (port 0 picks one); `node.advertise_http`
    /// is what other nodes use, and defaults to this address once bound.
    pub http_bind: SocketAddr,
    /// A leader reports its segment to the CCM this often (and on every change).
    #[serde(with = "duration")]
    pub segment_report_interval: Duration,
    /// Time limit of a small node API request (notify, next-hop, report…).
    #[serde(with = "duration")]
    pub request_timeout: Duration,
    /// A download that receives nothing for this long is broken (and resumed).
    #[serde(with = "duration")]
    pub fetch_idle_timeout: Duration,
    /// Broken downloads resumed (with `Range`) before the fetch fails.
    pub fetch_retries: u32,
    /// Copies with a wrong SHA-256 deleted and fetched again before the fetch fails.
    pub fetch_hash_retries: u32,
    /// First delay before a failed request to the CCM is repeated; it doubles up to 30 s.
    #[serde(with = "duration")]
    pub retry_delay: Duration,
    /// Largest clock difference accepted on a signed node API request.
    #[serde(with = "duration")]
    pub api_max_skew: Duration,
    /// How long a leader keeps asking members that received an assignment
    /// for their result (a large release takes a while to build) before it
    /// reports them silent.
    #[serde(with = "duration")]
    pub report_timeout: Duration,
}

impl Default for AgentConfig {
    fn default() -> Self {
        AgentConfig {
            data_dir: PathBuf::from("/var/lib/cmover/agent"),
            sites_root: PathBuf::from("/srv/cmover/sites"),
            segment: "default".into(),
            location: String::new(),
            ccm_url: "http://127.0.0.1:7480".into(),
            http_bind: SocketAddr::from(([0, 0, 0, 0], 7481)),
            segment_report_interval: Duration::from_secs(10),
            request_timeout: Duration::from_secs(10),
            fetch_idle_timeout: Duration::from_secs(30),
            fetch_retries: 5,
            fetch_hash_retries: 3,
            retry_delay: Duration::from_millis(500),
            api_max_skew: Duration::from_secs(30),
            report_timeout: Duration::from_secs(300),
        }
    }
}

/// How the data channel reaches the members of the segment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DataChannelMode {
    /// One multicast group (TTL 1) for the whole segment.
    #[default]
    Multicast,
    /// One copy per registered member, for networks without multicast.
    Unicast,
}

impl DataChannelMode {
    /// Its name in the configuration and the logs.
    pub fn name(self) -> &'static str {
        match self {
            DataChannelMode::Multicast => "multicast",
            DataChannelMode::Unicast => "unicast",
        }
    }
}

/// `[data]`: the data channel (MCTP and job status reports).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DataConfig {
    /// `multicast` or `unicast`.
    pub mode: DataChannelMode,
    /// Multicast group of the data channel.
    pub group: Ipv4Addr,
    /// UDP port of the group (multicast mode).
    pub port: u16,
    /// Address of the interface that joins the group; 0.0.0.0 lets the system choose.
    pub interface: Ipv4Addr,
    /// Local address of the member's unicast data socket (port 0 picks one).
    pub bind: SocketAddr,
    /// The data address (`host:port`) announced to the leader; empty: the
    /// host of `node.advertise_http` (or of `data.bind`) with the bound port.
    pub advertise: String,
}

impl Default for DataConfig {
    fn default() -> Self {
        DataConfig {
            mode: DataChannelMode::Multicast,
            group: Ipv4Addr::new(239, 192, 70, 2),
            port: 7402,
            interface: Ipv4Addr::UNSPECIFIED,
            bind: SocketAddr::from(([0, 0, 0, 0], 7401)),
            advertise: String::new(),
        }
    }
}

/// `[node]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct NodeConfig {
    /// Unique id of this agent in the cluster (1 or more; 0 means unset).
    pub id: u64,
    /// A human name for logs and the UI; empty means `node-<id>`.
    pub name: String,
    /// The node HTTP address other nodes and the CCM reach this agent at
    /// (`host:port`), announced at registration; empty announces none.
    pub advertise_http: String,
}

/// `[cluster]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct ClusterConfig {
    /// File holding the cluster secret in hex (`cmover keygen`); every
    /// channel's key is derived from it. Required by the agent.
    pub secret_file: PathBuf,
}

/// How the control channel reaches the other nodes of the segment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ControlMode {
    /// A multicast group (TTL 1: the datagrams never leave the LAN).
    #[default]
    Multicast,
    /// A static list of unicast peers, for networks without multicast.
    Unicast,
}

impl ControlMode {
    /// Its name in the configuration and the logs.
    pub fn name(self) -> &'static str {
        match self {
            ControlMode::Multicast => "multicast",
            ControlMode::Unicast => "unicast",
        }
    }
}

/// `[control]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ControlConfig {
    /// `multicast` or `unicast`.
    pub mode: ControlMode,
    /// Multicast group of the control channel.
    pub group: Ipv4Addr,
    /// UDP port of the control channel (multicast mode).
    pub port: u16,
    /// Address of the interface that joins the group and sends to it;
    /// 0.0.0.0 lets the system choose.
    pub interface: Ipv4Addr,
    /// Local address and port of the socket (unicast mode).
    pub bind: SocketAddr,
    /// Unicast mode: every node of the segment as `ID@HOST:PORT`. This
    /// node's own entry may be listed too (it is skipped), so every node can
    /// share one list.
    pub peers: Vec<String>,
    /// Datagrams older than this are dropped as replays.
    #[serde(with = "duration")]
    pub replay_window: Duration,
    /// Datagrams stamped further ahead than this (clock skew) are dropped.
    #[serde(with = "duration")]
    pub max_clock_skew: Duration,
}

impl Default for ControlConfig {
    fn default() -> Self {
        ControlConfig {
            mode: ControlMode::Multicast,
            group: Ipv4Addr::new(239, 192, 70, 1),
            port: 7400,
            interface: Ipv4Addr::UNSPECIFIED,
            bind: SocketAddr::from(([0, 0, 0, 0], 7400)),
            peers: Vec::new(),
            replay_window: Duration::from_secs(30),
            max_clock_skew: Duration::from_secs(5),
        }
    }
}

/// One entry of `control.peers`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Peer {
    /// Its node id.
    pub id: u64,
    /// Its control socket.
    pub addr: SocketAddr,
}

impl std::str::FromStr for Peer {
    type Err = String;
    fn from_str(s: &str) -> Result<Peer, String> {
        let (id, addr) = s.split_once('@').ok_or_else(|| format!("{s:?} is not ID@HOST:PORT"))?;
        let id: u64 = id.trim().parse().map_err(|_| format!("{s:?}: {id:?} is not a node id"))?;
        let addr: SocketAddr =
            addr.trim().parse().map_err(|_| format!("{s:?}: {addr:?} is not an IP address and port"))?;
        if id == 0 {
            return Err(format!("{s:?}: node ids start at 1"));
        }
        Ok(Peer { id, addr })
    }
}

impl ControlConfig {
    /// The parsed peer list (validated by [`Config::validate`]).
    pub fn peer_list(&self) -> Result<Vec<Peer>, String> {
        self.peers.iter().map(|p| p.parse()).collect()
    }
}

/// `[election]`: timers and priority. See `config.example.toml` for the
/// arithmetic behind the defaults.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ElectionConfig {
    /// Period of the leader's LeaderAlive.
    #[serde(with = "duration")]
    pub la_interval: Duration,
    /// LeaderAlives missed in a row before the leader is lost.
    pub la_miss: u32,
    /// Claim delay of the highest possible priority.
    #[serde(with = "duration")]
    pub claim_delay_min: Duration,
    /// Claim delay of the lowest possible priority.
    #[serde(with = "duration")]
    pub claim_delay_max: Duration,
    /// How long a claimant listens for objections before it leads.
    #[serde(with = "duration")]
    pub voting_window: Duration,
    /// How long a leader that stepped down keeps its "recently deposed" bonus.
    #[serde(with = "duration")]
    pub deposed_hold: Duration,
    /// Whether a higher-priority node takes over from a stable leader. Must
    /// be the same on every node of a segment.
    pub preempt: bool,
    /// Whether this node may be elected group leader.
    pub gl_capable: bool,
    /// Administrator's preference, 0–100 (weighs as much as all the rest).
    pub preference: u8,
    /// CPU power, 0–100.
    pub cpu: u8,
    /// Disk space and speed, 0–100.
    pub disk: u8,
    /// Network capacity, 0–100.
    pub network: u8,
    /// Reliability, 0–100.
    pub reliability: u8,
    /// Content freshness, 0–100.
    pub freshness: u8,
}

impl Default for ElectionConfig {
    fn default() -> Self {
        ElectionConfig {
            la_interval: Duration::from_millis(500),
            la_miss: 3,
            claim_delay_min: Duration::from_millis(50),
            claim_delay_max: Duration::from_millis(300),
            voting_window: Duration::from_millis(200),
            deposed_hold: Duration::from_secs(10),
            preempt: false,
            gl_capable: true,
            preference: 0,
            cpu: 50,
            disk: 50,
            network: 50,
            reliability: 50,
            freshness: 50,
        }
    }
}

/// `[membership]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MembershipConfig {
    /// Period of a member's MemberAlive.
    #[serde(with = "duration")]
    pub alive_interval: Duration,
    /// Silence after which the leader marks a member offline.
    #[serde(with = "duration")]
    pub member_timeout: Duration,
    /// Delay from the last registration to the member-list multicast.
    #[serde(with = "duration")]
    pub list_delay: Duration,
    /// Largest random delay before a (re-)registration.
    #[serde(with = "duration")]
    pub register_jitter: Duration,
}

impl Default for MembershipConfig {
    fn default() -> Self {
        MembershipConfig {
            alive_interval: Duration::from_secs(1),
            member_timeout: Duration::from_secs(6),
            list_delay: Duration::from_secs(3),
            register_jitter: Duration::from_secs(1),
        }
    }
}

/// Log output format.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// One JSON object per line, for log shippers.
    #[default]
    Json,
    /// Human-readable lines.
    Pretty,
}

/// `[log]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// `json` or `pretty`.
    pub format: LogFormat,
    /// A `tracing` filter: a level (`info`) or directives (`info,cmover::protocol=debug`).
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig { format: LogFormat::Json, level: "info".into() }
    }
}

/// `[content]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ContentConfig {
    /// Glob patterns of files to take; empty takes everything.
    pub include: Vec<String>,
    /// Glob patterns of files and directories to leave out.
    pub exclude: Vec<String>,
    /// File extensions (without the dot, any case) never worth compressing.
    pub incompressible: Vec<String>,
    /// Smallest saving, as a fraction of a chunk, for which a compressed chunk is kept.
    pub min_compression_gain: f64,
}

impl Default for ContentConfig {
    fn default() -> Self {
        ContentConfig {
            include: Vec::new(),
            exclude: Vec::new(),
            incompressible: DEFAULT_INCOMPRESSIBLE.iter().map(|s| s.to_string()).collect(),
            min_compression_gain: 0.05,
        }
    }
}

/// Extensions of formats that are already compressed.
pub const DEFAULT_INCOMPRESSIBLE: &[&str] = &[
    "jpg", "jpeg", "png", "gif", "webp", "avif", "heic", "ico", "mp4", "m4v", "webm", "mkv", "mov", "avi",
    "mp3", "m4a", "ogg", "opus", "flac", "zip", "gz", "tgz", "bz2", "xz", "zst", "lz4", "7z", "rar", "br",
    "woff", "woff2", "pdf", "jar",
];

/// `[releases]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ReleasesConfig {
    /// Releases kept per site, the live one included (older ones are deleted after a commit).
    pub keep_releases: u32,
    /// Free space that must remain on the site's file system after an apply.
    pub min_free_disk: ByteSize,
}

/// `[ccm]`: the controller.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CcmConfig {
    /// Database, assignments, shadow copies.
    pub data_dir: PathBuf,
    /// Address of the HTTP server (admin REST API and node API).
    pub http_bind: SocketAddr,
    /// Base URL agents reach the CCM at; empty means `http://<http_bind>`.
    pub advertise_url: String,
    /// Bearer token of the admin REST API; empty disables the API.
    pub admin_token: String,
    /// Group leaders the CCM sends an assignment to itself; the rest get it
    /// from each other.
    pub fanout: u32,
    /// Time a notified leader has to confirm it holds the copy.
    #[serde(with = "duration")]
    pub notify_timeout: Duration,
    /// Notifications of a leader before its segment is given up.
    pub max_attempts: u32,
    /// Wait after a notification fails (leader unreachable), times the
    /// attempts so far: time for the segment to elect a new leader.
    #[serde(with = "duration")]
    pub retry_delay: Duration,
    /// Time segments have to report an assignment's outcome; later ones count as silent.
    #[serde(with = "duration")]
    pub report_timeout: Duration,
    /// A segment whose leader has not reported for this long is silent: its
    /// servers count as offline until it reports again (keep it a few times
    /// `agent.segment_report_interval`).
    #[serde(with = "duration")]
    pub segment_silence: Duration,
    /// Segment names in the order their leaders should be served (admin
    /// static order); segments not listed follow, by CPU and free disk.
    pub tree_order: Vec<String>,
    /// Largest clock difference accepted on signed node requests.
    #[serde(with = "duration")]
    pub max_clock_skew: Duration,
    /// Encrypt assignment data with the content key derived from the cluster secret.
    pub encrypt: bool,
    /// Checkpoints kept per site (the oldest are deleted).
    pub keep_checkpoints: u32,
    /// IANA time zone of cron schedules (e.g. "Europe/Paris").
    pub time_zone: String,
    /// How often the scheduler looks for due jobs.
    #[serde(with = "duration")]
    pub scheduler_tick: Duration,
    /// Start a replicate for servers new to a content group, and a
    /// synchronize for servers whose live release lags, by themselves.
    pub auto_catch_up: bool,
    /// The web UI's first admin account, created at start when there is none.
    pub first_admin: String,
    /// The file holding `first_admin`'s password.
    pub first_admin_password_file: PathBuf,
}

impl Default for CcmConfig {
    fn default() -> Self {
        CcmConfig {
            data_dir: PathBuf::from("/var/lib/cmover/ccm"),
            http_bind: SocketAddr::from(([127, 0, 0, 1], 7480)),
            advertise_url: String::new(),
            admin_token: String::new(),
            fanout: 2,
            notify_timeout: Duration::from_secs(30),
            max_attempts: 3,
            retry_delay: Duration::from_secs(2),
            report_timeout: Duration::from_secs(300),
            segment_silence: Duration::from_secs(60),
            tree_order: Vec::new(),
            max_clock_skew: Duration::from_secs(30),
            encrypt: false,
            keep_checkpoints: 5,
            time_zone: "UTC".into(),
            scheduler_tick: Duration::from_secs(1),
            auto_catch_up: true,
            first_admin: String::new(),
            first_admin_password_file: PathBuf::new(),
        }
    }
}

impl CcmConfig {
    /// The URL agents reach the CCM at.
    pub fn url(&self) -> String {
        if self.advertise_url.is_empty() {
            format!("http://{}", self.http_bind)
        } else {
            self.advertise_url.trim_end_matches('/').to_owned()
        }
    }

    fn validate(&self) -> Result<(), ConfigError> {
        if self.fanout == 0 {
            return Err(invalid(
                "ccm.fanout",
                "0 sends the assignment nowhere",
                "give 1 or more (the default is 2)",
            ));
        }
        if self.max_attempts == 0 {
            return Err(invalid(
                "ccm.max_attempts",
                "0 never notifies anyone",
                "give 1 or more (the default is 3)",
            ));
        }
        if self.advertise_url.is_empty() && self.http_bind.ip().is_unspecified() {
            return Err(invalid(
                "ccm.advertise_url",
                format!(
                    "http_bind {} listens everywhere, so agents cannot be told one address",
                    self.http_bind
                ),
                "set advertise_url to the URL agents use, e.g. \"http://10.0.0.1:7480\"",
            ));
        }
        if self.keep_checkpoints == 0 {
            return Err(invalid(
                "ccm.keep_checkpoints",
                "0 would delete every checkpoint as soon as it is made",
                "give 1 or more (the default is 5)",
            ));
        }
        if let Err(e) = crate::protocol::schedule::parse_time_zone(&self.time_zone) {
            return Err(invalid(
                "ccm.time_zone",
                e.to_string(),
                "give an IANA name such as \"UTC\" or \"Europe/Paris\"",
            ));
        }
        if self.scheduler_tick < Duration::from_millis(50) || self.scheduler_tick > Duration::from_secs(60) {
            return Err(invalid(
                "ccm.scheduler_tick",
                format!("{:?} is outside 50ms..60s", self.scheduler_tick),
                "give a tick such as \"1s\" (the default)",
            ));
        }
        if !self.advertise_url.is_empty() && !self.advertise_url.starts_with("http://") {
            return Err(invalid(
                "ccm.advertise_url",
                format!("{:?} is not an http:// URL", self.advertise_url),
                "give a URL such as \"http://10.0.0.1:7480\"",
            ));
        }
        Ok(())
    }
}

impl Default for ReleasesConfig {
    fn default() -> Self {
        ReleasesConfig { keep_releases: 3, min_free_disk: ByteSize::mib(64) }
    }
}

/// `[mctp]`: reliable multicast of assignments from a group leader to its segment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MctpConfig {
    /// Payload bytes per frame; the default fills a 1500-byte MTU without IP fragmentation.
    pub frame_size: u32,
    /// Assignments up to this size travel in one datagram, without a session.
    pub block_size: ByteSize,
    /// Initial sending rate per second (on the wire).
    pub rate: ByteSize,
    /// Lowest rate per second the NACK feedback may bring it to.
    pub rate_min: ByteSize,
    /// Highest rate per second.
    pub rate_max: ByteSize,
    /// Added to the rate after a pass with little loss.
    pub rate_increase: ByteSize,
    /// Factor applied to the rate after a pass with heavy loss.
    pub rate_decrease: f64,
    /// Fraction of needed frames reported missing above which a pass counts as heavy loss.
    pub nack_threshold: f64,
    /// Token bucket depth, as time at the current rate.
    #[serde(with = "duration")]
    pub burst: Duration,
    /// Time between announces before the first frame.
    #[serde(with = "duration")]
    pub announce_interval: Duration,
    /// Announces before the first frame (fewer if every member already holds it).
    pub announce_count: u32,
    /// Time between announces during a session, for members that join late.
    #[serde(with = "duration")]
    pub announce_repeat: Duration,
    /// Members report at a random time within this window after each pass.
    #[serde(with = "duration")]
    pub report_window: Duration,
    /// Extra wait after the window for the last reports.
    #[serde(with = "duration")]
    pub report_grace: Duration,
    /// Polls repeated per pass for members whose report did not arrive.
    pub report_retries: u32,
    /// Passes in a row a member may be silent before it is left out and named.
    pub silent_passes: u32,
    /// Passes without fewer missing frames before the laggards are given up.
    pub stall_passes: u32,
    /// Fraction of the members that must hold the assignment for success.
    pub quorum: f64,
    /// A member abandons a session whose sender is silent this long.
    #[serde(with = "duration")]
    pub session_timeout: Duration,
    /// A member remembers a finished session this long to answer late polls.
    #[serde(with = "duration")]
    pub linger: Duration,
    /// Largest assignment a member accepts.
    pub max_assignment_size: ByteSize,
    /// Most sessions a member receives at once.
    pub max_sessions: u32,
}

impl Default for MctpConfig {
    fn default() -> Self {
        let s = crate::protocol::mctp::SenderConfig::default();
        let r = crate::protocol::mctp::ReceiverConfig::default();
        MctpConfig {
            frame_size: s.frame_size,
            block_size: ByteSize::kib(8),
            rate: ByteSize::mb(25),
            rate_min: ByteSize::mb(1),
            rate_max: ByteSize::mb(100),
            rate_increase: ByteSize::mb(5),
            rate_decrease: s.rate_decrease,
            nack_threshold: s.nack_threshold,
            burst: s.burst,
            announce_interval: s.announce_interval,
            announce_count: s.announce_count,
            announce_repeat: s.announce_repeat,
            report_window: s.report_window,
            report_grace: s.report_grace,
            report_retries: s.report_retries,
            silent_passes: s.silent_passes,
            stall_passes: s.stall_passes,
            quorum: s.quorum,
            session_timeout: r.session_timeout,
            linger: r.linger,
            max_assignment_size: ByteSize::gib(16),
            max_sessions: r.max_sessions as u32,
        }
    }
}

impl MctpConfig {
    /// The sender core's settings.
    pub fn sender(&self) -> crate::protocol::mctp::SenderConfig {
        crate::protocol::mctp::SenderConfig {
            frame_size: self.frame_size,
            block_size: self.block_size.as_u64(),
            rate: self.rate.as_u64(),
            rate_min: self.rate_min.as_u64(),
            rate_max: self.rate_max.as_u64(),
            rate_increase: self.rate_increase.as_u64(),
            rate_decrease: self.rate_decrease,
            nack_threshold: self.nack_threshold,
            burst: self.burst,
            announce_interval: self.announce_interval,
            announce_count: self.announce_count,
            announce_repeat: self.announce_repeat,
            report_window: self.report_window,
            report_grace: self.report_grace,
            report_retries: self.report_retries,
            silent_passes: self.silent_passes,
            stall_passes: self.stall_passes,
            quorum: self.quorum,
        }
    }

    /// The receiver core's settings.
    pub fn receiver(&self) -> crate::protocol::mctp::ReceiverConfig {
        crate::protocol::mctp::ReceiverConfig {
            report_window: self.report_window,
            session_timeout: self.session_timeout,
            linger: self.linger,
            max_size: self.max_assignment_size.as_u64(),
            max_sessions: self.max_sessions as usize,
            ..crate::protocol::mctp::ReceiverConfig::default()
        }
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let max_frame = crate::protocol::mctp::MAX_FRAME_SIZE;
        if self.frame_size == 0 || self.frame_size as usize > max_frame {
            return Err(invalid(
                "mctp.frame_size",
                format!("{} is outside 1 ..= {max_frame}", self.frame_size),
                format!(
                    "use {} (fills a 1500-byte MTU) or, on jumbo-frame LANs, MTU - {}",
                    crate::protocol::mctp::DEFAULT_FRAME_SIZE,
                    1500 - crate::protocol::mctp::DEFAULT_FRAME_SIZE
                ),
            ));
        }
        if self.block_size.as_u64() as usize > crate::protocol::wire::MAX_PAYLOAD - 128 {
            return Err(invalid(
                "mctp.block_size",
                format!("{} does not fit one datagram", self.block_size),
                "keep it at most 60 KiB (the default is 8 KiB)",
            ));
        }
        if self.rate_min.as_u64() == 0 || self.rate_min > self.rate_max {
            return Err(invalid(
                "mctp.rate_min",
                format!("{} is zero or above rate_max {}", self.rate_min, self.rate_max),
                "give 0 < rate_min <= rate <= rate_max, e.g. \"1 MB\", \"25 MB\", \"100 MB\"",
            ));
        }
        if self.rate < self.rate_min || self.rate > self.rate_max {
            return Err(invalid(
                "mctp.rate",
                format!("{} is outside rate_min ..= rate_max", self.rate),
                "give a rate between mctp.rate_min and mctp.rate_max",
            ));
        }
        for (key, v) in
            [("mctp.rate_decrease", self.rate_decrease), ("mctp.nack_threshold", self.nack_threshold)]
        {
            if !(v > 0.0 && v < 1.0) {
                return Err(invalid(
                    key,
                    format!("{v} is outside 0.0 <..< 1.0"),
                    "give a fraction such as 0.5",
                ));
            }
        }
        if !(self.quorum > 0.0 && self.quorum <= 1.0) {
            return Err(invalid(
                "mctp.quorum",
                format!("{} is outside 0.0 <..= 1.0", self.quorum),
                "give the fraction of members that must receive, e.g. 1.0 (all) or 0.8",
            ));
        }
        for (key, v) in [
            ("mctp.announce_count", self.announce_count),
            ("mctp.silent_passes", self.silent_passes),
            ("mctp.stall_passes", self.stall_passes),
            ("mctp.max_sessions", self.max_sessions),
        ] {
            if v == 0 {
                return Err(invalid(key, "0 is not allowed", "give at least 1"));
            }
        }
        if self.report_window.is_zero() {
            return Err(invalid(
                "mctp.report_window",
                "a zero window makes every member report at once",
                "give a window such as \"200ms\" (longer for segments of hundreds of servers)",
            ));
        }
        Ok(())
    }
}

/// `[reports]`: collection of job status reports by the group leader.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ReportsConfig {
    /// The unit of the random report delay.
    #[serde(with = "duration")]
    pub interval: Duration,
    /// A member reports after k × interval, k random in 0 ..< slots.
    pub slots: u32,
    /// Extra wait for the last reports.
    #[serde(with = "duration")]
    pub grace: Duration,
    /// Up to this many missing reports are requested by unicast, more by one multicast.
    pub unicast_max: u32,
    /// Requests before silent members are given up and named.
    pub max_requests: u32,
}

impl Default for ReportsConfig {
    fn default() -> Self {
        let c = crate::protocol::reports::CollectorConfig::default();
        ReportsConfig {
            interval: c.interval,
            slots: c.slots,
            grace: c.grace,
            unicast_max: c.unicast_max as u32,
            max_requests: c.max_requests,
        }
    }
}

impl ReportsConfig {
    /// The collector's (and reporter's) settings.
    pub fn collector(&self) -> crate::protocol::reports::CollectorConfig {
        crate::protocol::reports::CollectorConfig {
            interval: self.interval,
            slots: self.slots,
            grace: self.grace,
            unicast_max: self.unicast_max as usize,
            max_requests: self.max_requests,
        }
    }

    fn validate(&self) -> Result<(), ConfigError> {
        if self.interval.is_zero() || self.slots == 0 {
            return Err(invalid(
                if self.slots == 0 { "reports.slots" } else { "reports.interval" },
                "members would all report at the same instant (report implosion)",
                "give a non-zero interval (e.g. \"500ms\") and at least 1 slot",
            ));
        }
        Ok(())
    }
}

impl Config {
    /// Parses TOML text; `origin` names the source in errors.
    pub fn from_toml(text: &str, origin: &str) -> Result<Config, ConfigError> {
        let config: Config = toml::from_str(text)
            .map_err(|e| ConfigError::Parse { path: origin.into(), message: e.to_string() })?;
        config.validate()?;
        Ok(config)
    }

    /// Reads, parses and validates a file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| ConfigError::Read { path: path.display().to_string(), source })?;
        Config::from_toml(&text, &path.display().to_string())
    }

    /// Checks the files the configuration names that hold secrets (what
    /// `cmover config check` adds to [`Config::validate`]): each one given
    /// exists, is readable, is readable by its owner only, and holds a key.
    pub fn check_secret_files(&self) -> Result<(), ConfigError> {
        let cluster = &self.cluster.secret_file;
        if !cluster.as_os_str().is_empty() {
            let bytes = read_secret_file("cluster.secret_file", cluster)?;
            crate::protocol::crypto::parse_key_file(&bytes).map_err(|e| {
                invalid(
                    "cluster.secret_file",
                    format!("{}: {e}", cluster.display()),
                    "use a file written by `cmover keygen`",
                )
            })?;
        }
        let webhook = &self.webhook.secret_file;
        if !webhook.as_os_str().is_empty() {
            let bytes = read_secret_file("webhook.secret_file", webhook)?;
            if bytes.trim_ascii().is_empty() {
                return Err(invalid(
                    "webhook.secret_file",
                    format!("{} is empty", webhook.display()),
                    "write the shared secret into it (`cmover keygen -o FILE` makes one)",
                ));
            }
        }
        Ok(())
    }

    /// Checks values that types alone cannot.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if tracing_subscriber::EnvFilter::try_new(&self.log.level).is_err() {
            return Err(invalid(
                "log.level",
                format!("{:?} is not a log filter", self.log.level),
                "use error, warn, info, debug or trace, optionally with per-module directives like \"info,cmover=debug\"",
            ));
        }
        for (key, patterns) in
            [("content.include", &self.content.include), ("content.exclude", &self.content.exclude)]
        {
            for p in patterns.iter() {
                if let Err(e) = globset::Glob::new(p) {
                    return Err(invalid(
                        key,
                        format!("{p:?} is not a glob pattern: {}", e.kind()),
                        "use shell-style globs such as \"*.tmp\", \"cache/**\" or \"**/.git\"",
                    ));
                }
            }
        }
        for ext in &self.content.incompressible {
            if ext.is_empty() || ext.contains(['.', '/']) {
                return Err(invalid(
                    "content.incompressible",
                    format!("{ext:?} is not a file extension"),
                    "list bare extensions without the dot, like \"jpg\"",
                ));
            }
        }
        let gain = self.content.min_compression_gain;
        if !(0.0..1.0).contains(&gain) {
            return Err(invalid(
                "content.min_compression_gain",
                format!("{gain} is outside 0.0 ..< 1.0"),
                "give a fraction such as 0.05 (keep compressed chunks that save at least 5 %)",
            ));
        }
        self.validate_control()?;
        self.validate_election()?;
        if self.releases.keep_releases < 2 {
            return Err(invalid(
                "releases.keep_releases",
                format!("{} leaves nothing to roll back to", self.releases.keep_releases),
                "keep at least 2 releases (the default is 3)",
            ));
        }
        self.mctp.validate()?;
        self.reports.validate()?;
        self.ccm.validate()?;
        self.validate_agent()?;
        self.lb.validate()?;
        self.cache.validate()?;
        let webhooks =
            self.lb.driver == crate::ops::config::LbDriverKind::Webhook || !self.cache.webhook_url.is_empty();
        self.webhook.validate(webhooks)?;
        self.hooks.validate()?;
        Ok(())
    }
}

impl Config {
    fn validate_agent(&self) -> Result<(), ConfigError> {
        let a = &self.agent;
        if a.segment.trim().is_empty() {
            return Err(invalid(
                "agent.segment",
                "the segment name is empty",
                "name the LAN segment this agent sits in, e.g. segment = \"dc1-rack4\"",
            ));
        }
        let rest = a.ccm_url.strip_prefix("http://").unwrap_or("");
        if rest.is_empty() || rest.contains(['/', '?', '#']) && !rest.ends_with('/') {
            return Err(invalid(
                "agent.ccm_url",
                format!("{:?} is not a base URL of the form http://host:port", a.ccm_url),
                "give the CCM's node API address, e.g. \"http://10.0.0.1:7480\" (plain http; requests are signed)",
            ));
        }
        if a.segment_report_interval < Duration::from_millis(100) {
            return Err(invalid(
                "agent.segment_report_interval",
                format!("{:?} would flood the CCM", a.segment_report_interval),
                "give at least \"100ms\" (the default is \"10s\")",
            ));
        }
        for (key, d) in [
            ("agent.request_timeout", a.request_timeout),
            ("agent.fetch_idle_timeout", a.fetch_idle_timeout),
            ("agent.retry_delay", a.retry_delay),
            ("agent.api_max_skew", a.api_max_skew),
            ("agent.report_timeout", a.report_timeout),
        ] {
            if d.is_zero() {
                return Err(invalid(key, "zero", "give a duration such as \"10s\""));
            }
        }
        let d = &self.data;
        if !d.group.is_multicast() {
            return Err(invalid(
                "data.group",
                format!("{} is not a multicast address", d.group),
                "use an address in 239.0.0.0/8, such as the default 239.192.70.2",
            ));
        }
        if d.port == 0 {
            return Err(invalid("data.port", "port 0", "give the UDP port of the group, such as 7402"));
        }
        if !d.advertise.is_empty() && d.advertise.parse::<SocketAddr>().is_err() {
            return Err(invalid(
                "data.advertise",
                format!("{:?} is not an IP address and port", d.advertise),
                "give this node's data address as HOST:PORT, e.g. \"10.0.0.5:7401\", or leave it empty",
            ));
        }
        Ok(())
    }
}

impl Config {
    fn validate_control(&self) -> Result<(), ConfigError> {
        let c = &self.control;
        if !c.group.is_multicast() {
            return Err(invalid(
                "control.group",
                format!("{} is not a multicast address", c.group),
                "use an address in 239.0.0.0/8 (organisation-local), such as the default 239.192.70.1",
            ));
        }
        if c.port == 0 {
            return Err(invalid(
                "control.port",
                "port 0",
                "give the UDP port every node of the segment uses, such as 7400",
            ));
        }
        let peers = c.peer_list().map_err(|e| {
            invalid("control.peers", e, "write each peer as \"ID@HOST:PORT\", e.g. \"2@10.0.0.2:7400\"")
        })?;
        let mut ids: Vec<u64> = peers.iter().map(|p| p.id).collect();
        ids.sort_unstable();
        if let Some(w) = ids.windows(2).find(|w| w[0] == w[1]) {
            return Err(invalid(
                "control.peers",
                format!("node id {} is listed twice", w[0]),
                "give every node of the segment one entry with its own id",
            ));
        }
        if c.mode == ControlMode::Unicast && peers.iter().all(|p| p.id == self.node.id) {
            return Err(invalid(
                "control.peers",
                "unicast mode needs the other nodes of the segment, and none is listed",
                "list every node as \"ID@HOST:PORT\", or use mode = \"multicast\"",
            ));
        }
        if c.replay_window < Duration::from_secs(1) {
            return Err(invalid(
                "control.replay_window",
                format!("{:?} is too short to accept datagrams in flight", c.replay_window),
                "give at least \"1s\" (the default is \"30s\")",
            ));
        }
        Ok(())
    }

    fn validate_election(&self) -> Result<(), ConfigError> {
        let e = &self.election;
        if e.la_interval < Duration::from_millis(10) {
            return Err(invalid(
                "election.la_interval",
                format!("{:?} is below 10ms", e.la_interval),
                "give an interval such as \"500ms\" (the default)",
            ));
        }
        if e.la_miss == 0 {
            return Err(invalid(
                "election.la_miss",
                "0 would declare every leader lost at once",
                "give the LeaderAlives to miss in a row before an election, such as 3",
            ));
        }
        if e.claim_delay_min > e.claim_delay_max {
            return Err(invalid(
                "election.claim_delay_min",
                format!("{:?} is above claim_delay_max ({:?})", e.claim_delay_min, e.claim_delay_max),
                "make claim_delay_min the smaller of the two",
            ));
        }
        if e.voting_window.is_zero() {
            return Err(invalid(
                "election.voting_window",
                "a zero window hears no objection",
                "give a window longer than a round trip on the LAN, such as \"200ms\"",
            ));
        }
        for (key, v) in [
            ("election.preference", e.preference),
            ("election.cpu", e.cpu),
            ("election.disk", e.disk),
            ("election.network", e.network),
            ("election.reliability", e.reliability),
            ("election.freshness", e.freshness),
        ] {
            if v > 100 {
                return Err(invalid(
                    key,
                    format!("{v} is above 100"),
                    "priority inputs are scores from 0 to 100",
                ));
            }
        }
        let m = &self.membership;
        if m.alive_interval < e.la_interval {
            return Err(invalid(
                "membership.alive_interval",
                format!(
                    "{:?} is shorter than election.la_interval ({:?}): members would send more than the leader",
                    m.alive_interval, e.la_interval
                ),
                "give at least la_interval; twice it (the default) keeps traffic near half a datagram per node per interval",
            ));
        }
        if m.member_timeout < m.alive_interval * 3 {
            return Err(invalid(
                "membership.member_timeout",
                format!(
                    "{:?} is under three alive intervals ({:?}): members would be marked offline for a lost datagram or two",
                    m.member_timeout,
                    m.alive_interval * 3
                ),
                "give at least three times membership.alive_interval (the default is six)",
            ));
        }
        if m.list_delay.is_zero() {
            return Err(invalid(
                "membership.list_delay",
                "a zero delay sends a list for every registration",
                "give a delay such as \"3s\" (the patent's 3–5 s)",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn example_file_documents_exactly_the_defaults() {
        let text = include_str!("../config.example.toml");
        let parsed = Config::from_toml(text, "config.example.toml").unwrap();
        assert_eq!(parsed, Config::default());
        // Every option the code knows appears in the example, uncommented.
        let defaults = toml::to_string(&Config::default()).unwrap();
        let example: toml::Table = toml::from_str(text).unwrap();
        let known: toml::Table = toml::from_str(&defaults).unwrap();
        for (section, table) in &known {
            let table = table.as_table().unwrap();
            let ex = example.get(section).and_then(|t| t.as_table());
            let ex = ex.unwrap_or_else(|| panic!("[{section}] missing from config.example.toml"));
            for key in table.keys() {
                assert!(ex.contains_key(key), "{section}.{key} missing from config.example.toml");
            }
        }
    }

    fn write_mode(path: &Path, text: &str, mode: u32) {
        use std::os::unix::fs::PermissionsExt;
        std::fs::write(path, text).unwrap();
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
    }

    #[test]
    fn secret_files_others_may_read_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret");
        for mode in [0o644, 0o640, 0o604, 0o620, 0o602] {
            write_mode(&path, "ab", mode);
            let err = read_secret_file("cluster.secret_file", &path).unwrap_err().to_string();
            assert!(err.contains(&format!("{mode:04o}")) && err.contains("chmod 600"), "{mode:o}: {err}");
        }
        for mode in [0o600, 0o400] {
            write_mode(&path, "ab", mode);
            assert_eq!(read_secret_file("cluster.secret_file", &path).unwrap(), b"ab", "{mode:o}");
        }
    }

    #[test]
    fn config_check_refuses_a_missing_or_empty_secret_file() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = Config::default();
        c.cluster.secret_file = dir.path().join("missing");
        let err = c.check_secret_files().unwrap_err().to_string();
        assert!(err.contains("cluster.secret_file") && err.contains("missing"), "{err}");
        write_mode(&c.cluster.secret_file, &format!("{}\n", "5a".repeat(32)), 0o600);
        c.check_secret_files().unwrap();
        c.webhook.secret_file = dir.path().join("hook");
        write_mode(&c.webhook.secret_file, " \n", 0o600);
        let err = c.check_secret_files().unwrap_err().to_string();
        assert!(err.contains("webhook.secret_file") && err.contains("empty"), "{err}");
    }

    #[test]
    fn unknown_keys_are_named() {
        let err = Config::from_toml("[releases]\nkep_releases = 3\n", "f.toml").unwrap_err().to_string();
        assert!(err.contains("kep_releases"), "{err}");
        assert!(err.contains("f.toml"), "{err}");
        assert!(err.contains("fix:"), "{err}");
    }

    #[test]
    fn overlong_durations_are_refused_not_a_panic() {
        // `alive_interval × 3` used to overflow in `validate` and panic.
        for text in [
            "[membership]\nalive_interval = \"7000000000000000000s\"\n",
            "[election]\nla_interval = \"400days\"\n",
            "[lb]\ncheck_interval = \"2years\"\n",
        ] {
            let err = Config::from_toml(text, "f.toml").unwrap_err().to_string();
            let key = text.split(['\n', ' ']).nth(1).unwrap();
            assert!(err.contains(key), "{text}: {err}");
            assert!(err.contains("longest duration accepted"), "{text}: {err}");
        }
        // The longest accepted, with the largest count: checked, not a panic.
        let text = "[election]\nla_interval = \"365days\"\nla_miss = 4294967295\n[membership]\nalive_interval = \"365days\"\nmember_timeout = \"365days\"\n";
        let err = Config::from_toml(text, "f.toml").unwrap_err().to_string();
        assert!(err.contains("membership.member_timeout"), "{err}");
    }

    #[test]
    fn bad_values_name_key_problem_and_fix() {
        let cases = [
            ("[releases]\nkeep_releases = 1\n", "releases.keep_releases"),
            ("[content]\nmin_compression_gain = 1.5\n", "content.min_compression_gain"),
            ("[content]\nexclude = [\"a[\"]\n", "content.exclude"),
            ("[content]\nincompressible = [\".jpg\"]\n", "content.incompressible"),
            ("[log]\nlevel = \"info,cmover=loudest\"\n", "log.level"),
            ("[control]\ngroup = \"10.0.0.1\"\n", "control.group"),
            ("[control]\npeers = [\"x@1.2.3.4:5\"]\n", "control.peers"),
            ("[control]\npeers = [\"2@1.2.3.4\"]\n", "control.peers"),
            ("[control]\npeers = [\"2@1.2.3.4:5\", \"2@1.2.3.5:5\"]\n", "control.peers"),
            ("[control]\nmode = \"unicast\"\n", "control.peers"),
            ("[election]\nla_miss = 0\n", "election.la_miss"),
            ("[mctp]\nframe_size = 70000\n", "mctp.frame_size"),
            ("[mctp]\nquorum = 0.0\n", "mctp.quorum"),
            ("[mctp]\nrate = \"500 MB\"\n", "mctp.rate"),
            ("[reports]\nslots = 0\n", "reports.slots"),
            ("[ccm]\nfanout = 0\n", "ccm.fanout"),
            ("[ccm]\nhttp_bind = \"0.0.0.0:7480\"\n", "ccm.advertise_url"),
            (
                "[election]\nclaim_delay_min = \"1s\"\nclaim_delay_max = \"100ms\"\n",
                "election.claim_delay_min",
            ),
            ("[election]\ncpu = 101\n", "election.cpu"),
            ("[membership]\nalive_interval = \"100ms\"\n", "membership.alive_interval"),
            ("[membership]\nmember_timeout = \"2s\"\n", "membership.member_timeout"),
            ("[agent]\nsegment = \"\"\n", "agent.segment"),
            ("[agent]\nccm_url = \"https://ccm:7480\"\n", "agent.ccm_url"),
            ("[agent]\nccm_url = \"ccm:7480\"\n", "agent.ccm_url"),
            ("[agent]\nsegment_report_interval = \"1ms\"\n", "agent.segment_report_interval"),
            ("[agent]\nfetch_idle_timeout = \"0s\"\n", "agent.fetch_idle_timeout"),
            ("[data]\ngroup = \"10.1.1.1\"\n", "data.group"),
            ("[data]\nport = 0\n", "data.port"),
            ("[data]\nadvertise = \"here\"\n", "data.advertise"),
            ("[lb]\ndriver = \"haproxy\"\n", "lb.haproxy_socket"),
            ("[lb]\ndriver = \"haproxy\"\nhaproxy_socket = \"/run/h.sock\"\n", "lb.haproxy_backend"),
            ("[lb]\ndriver = \"webhook\"\n", "lb.webhook_url"),
            ("[lb]\ndriver = \"webhook\"\nwebhook_url = \"ftp://x\"\n", "lb.webhook_url"),
            ("[lb]\ndriver = \"webhook\"\nwebhook_url = \"http://x/h\"\n", "webhook.secret_file"),
            ("[lb.servers]\nweb-1 = \"web/web-1\"\n", "lb.servers"),
            ("[lb.servers]\n1 = \"a/b/c\"\n", "lb.servers"),
            ("[lb]\ncheck_interval = \"1ms\"\n", "lb.check_interval"),
            ("[cache]\npurge = [\"127.0.0.1:6081\"]\n", "cache.purge"),
            ("[cache]\npurge = [\"http://127.0.0.1:6081\"]\n", "cache.base_urls"),
            ("[cache.base_urls]\nwww = \"www.example.com\"\n", "cache.base_urls.www"),
            ("[webhook]\nattempts = 0\n", "webhook.attempts"),
            ("[hooks]\ntimeout = \"0s\"\n", "hooks.timeout"),
            ("[hooks.sites.www]\npre_commit = \"\"\n", "hooks.sites.www"),
        ];
        for (text, key) in cases {
            let err = Config::from_toml(text, "f.toml").unwrap_err();
            let ConfigError::Invalid { key: k, .. } = &err else { panic!("{err}") };
            assert_eq!(k, key);
            assert!(err.to_string().contains("fix: "), "{err}");
        }
        let err = Config::from_toml("[releases]\nmin_free_disk = \"lots\"\n", "f.toml").unwrap_err();
        assert!(err.to_string().contains("min_free_disk"), "{err}");
    }
}
