//! Real multicast: three `cmover agent` processes in multicast mode inside a
//! private network namespace that this test creates (and always deletes),
//! so nothing is sent outside it. They must elect one leader, known by all,
//! and the leader must see the two others register.
//!
//! Needs root (or CAP_NET_ADMIN) for `ip netns`. Without it the test is
//! skipped with a printed reason, except under `CI=true`, where it fails.

mod common;

use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::config::{agent, write_toml};
use common::net::{can_use_netns, Netns};
use common::proc::{cmover_bin, spawn_agent};
use common::wait::recv_until;

use cmover::config::ControlMode;

const DEADLINE: Duration = Duration::from_secs(60);

/// Agent `id` in multicast mode on the namespace's loopback, control port `port`.
fn write_config(dir: &Path, id: u64, secret: &Path, port: u16) -> PathBuf {
    let mut c = agent(id, &dir.join(format!("agent{id}")), secret);
    c.node.name = format!("ns-agent-{id}");
    c.control.mode = ControlMode::Multicast;
    c.control.group = "239.192.70.9".parse().unwrap();
    c.control.port = port;
    c.control.interface = "127.0.0.1".parse().unwrap();
    let e = &mut c.election;
    e.la_interval = Duration::from_millis(100);
    e.claim_delay_min = Duration::from_millis(10);
    e.claim_delay_max = Duration::from_millis(100);
    e.voting_window = Duration::from_millis(60);
    e.preference = u8::try_from(id * 10).unwrap();
    let m = &mut c.membership;
    m.alive_interval = Duration::from_millis(200);
    m.member_timeout = Duration::from_secs(2);
    m.list_delay = Duration::from_millis(300);
    m.register_jitter = Duration::from_millis(100);
    c.data.group = "239.192.70.10".parse().unwrap();
    c.data.interface = "127.0.0.1".parse().unwrap();
    write_toml(&dir.join(format!("agent{id}.toml")), &c)
}

#[test]
fn fig5_three_agents_in_multicast_mode_elect_one_leader_in_a_network_namespace() {
    if !can_use_netns() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("cluster.key");
    common::config::write_secret(&secret, &format!("{}\n", "5a".repeat(32)));

    let name = format!("cmover-elect-{}", std::process::id());
    let ns = Netns::create(&name).unwrap_or_else(|e| panic!("{e}"));
    ns.exec(&["ip", "link", "set", "lo", "multicast", "on"]).unwrap_or_else(|e| panic!("{e}"));
    let (tx, rx) = mpsc::channel::<(u64, String)>();
    let mut agents = Vec::new();
    for id in 1..=3u64 {
        let config = write_config(dir.path(), id, &secret, 7400);
        agents.push(spawn_agent(ns.command(cmover_bin()), id, &config, &tx));
    }

    // Each agent's leader, from its structured log events.
    let mut leader: [Option<u64>; 4] = [None; 4];
    let mut joined: Vec<u64> = Vec::new();
    let mut log = Vec::new();
    let agreed = recv_until(&rx, Instant::now(), DEADLINE, |(id, line)| {
        log.push(format!("agent {id}: {line}"));
        let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) else {
            return false;
        };
        let f = &v["fields"];
        let num = |k: &str| f[k].as_u64();
        match f["event"].as_str() {
            Some("leader_elected") => leader[id as usize] = num("leader"),
            Some("leader_lost") => leader[id as usize] = None,
            Some("member_joined") if Some(id) == leader[id as usize] => {
                if let Some(m) = num("member") {
                    if !joined.contains(&m) {
                        joined.push(m);
                    }
                }
            }
            _ => {}
        }
        leader[1].is_some() && leader[1] == leader[2] && leader[2] == leader[3] && joined.len() == 2
    });
    assert!(
        agreed,
        "no agreement within {DEADLINE:?}: leaders {leader:?}, joined {joined:?}\n{}",
        log.join("\n")
    );
    let l = leader[1].unwrap();
    assert!((1..=3).contains(&l), "leader {l} is not one of the agents");
    // The most preferred agent leads (no loss inside the namespace).
    assert_eq!(l, 3, "{}", log.join("\n"));
    joined.sort();
    assert_eq!(joined, [1, 2]);
    drop(agents);
    drop(ns);
    assert!(!Netns::exists(&name), "namespace {name} left behind");
}
