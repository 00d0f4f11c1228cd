//! Configuration of the agents and CCMs that tests start: built as typed
//! `cmover::config::Config` values and, for a process, written as the TOML
//! an operator would write (`toml::to_string`), never as hand-written text
//! that drifts from the struct.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use cmover::config::{Config, ControlMode, DataChannelMode};

/// Any port on 127.0.0.1.
pub fn any_local_port() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

/// Writes a secret file as `cmover keygen` does: readable by its owner only
/// (the agents and the CCM refuse a secret file others may read).
pub fn write_secret(path: &Path, contents: &str) {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
    f.write_all(contents.as_bytes()).unwrap();
}

/// An agent `id` named `web-{id}` with its data and sites under `dir`, the
/// cluster secret in `secret_file`, its node HTTP server and data socket on
/// any 127.0.0.1 port; otherwise the defaults.
pub fn agent(id: u64, dir: &Path, secret_file: &Path) -> Config {
    let mut c = Config::default();
    c.node.id = id;
    c.node.name = format!("web-{id}");
    c.cluster.secret_file = secret_file.to_owned();
    c.agent.data_dir = dir.join("data");
    c.agent.sites_root = dir.join("sites");
    c.agent.http_bind = any_local_port();
    c.data.bind = any_local_port();
    c
}

/// `agent`, reporting segment `segment` to the CCM at `ccm_url`, with
/// unicast control and data channels: its control socket at `peers[id]`,
/// and every entry of `peers` (its own included) as a peer. Timers are the
/// one-machine ones (`cmover::local_cluster::one_machine_timers`), segment
/// reports every second and retries after 100 ms.
pub fn unicast_agent(
    id: u64,
    dir: &Path,
    secret_file: &Path,
    segment: &str,
    ccm_url: &str,
    peers: &[(u64, SocketAddr)],
) -> Config {
    let mut c = agent(id, dir, secret_file);
    c.control.mode = ControlMode::Unicast;
    c.control.bind = peers.iter().find(|(p, _)| *p == id).expect("the agent is among its peers").1;
    c.control.peers = peers.iter().map(|(p, a)| format!("{p}@{a}")).collect();
    cmover::local_cluster::one_machine_timers(&mut c);
    c.agent.segment = segment.into();
    c.agent.ccm_url = ccm_url.into();
    c.agent.segment_report_interval = Duration::from_secs(1);
    c.agent.retry_delay = Duration::from_millis(100);
    c.data.mode = DataChannelMode::Unicast;
    c
}

/// Writes `config` to `path` as TOML; answers `path`.
pub fn write_toml(path: &Path, config: &Config) -> PathBuf {
    std::fs::write(path, toml::to_string(config).unwrap()).unwrap();
    path.to_owned()
}
