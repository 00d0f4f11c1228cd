//! The real binary: two `cmover agent --config F` processes in one segment
//! (unicast control and data channels on 127.0.0.1) and a fake CCM in the
//! test. They elect a leader, which reports the segment; every node route
//! refuses unsigned requests and answers signed ones; a content assignment
//! and its commit go live on both; SIGTERM stops each agent cleanly, with its
//! `agent_stopped` log line.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::config::{unicast_agent, write_toml};
use common::fake_ccm::{FakeCcm, DEADLINE};
use common::net::free_udp_port;
use common::proc::{cmover_bin, spawn_agent};
use common::wait::recv_until;

use cmover::config::ElectionConfig;
use cmover::corpus::{self, CorpusSpec};
use cmover::net::client::NodeClient;
use cmover::protocol::api::{NodeStatus, Notify, ServerOutcome, CCM_NODE};
use cmover::protocol::assignment::Kind;
use cmover::protocol::ids::{NodeId, RunId};
use cmover::storage::tree::compare_trees;

const SECRET_HEX: &str = "0f1e2d3c4b5a69788796a5b4c3d2e1f00f1e2d3c4b5a69788796a5b4c3d2e1f0";

/// Agent `id` of segment `solo`, its control socket at `ports[id - 1]`.
fn write_config(root: &Path, id: u64, ccm: &str, ports: &[u16; 2]) -> PathBuf {
    let peers: Vec<(u64, SocketAddr)> =
        (1..=2).zip(ports).map(|(p, port)| (p, SocketAddr::from(([127, 0, 0, 1], *port)))).collect();
    let dir = root.join(format!("node{id}"));
    let mut c = unicast_agent(id, &dir, &root.join("secret"), "solo", ccm, &peers);
    c.node.name = format!("proc-{id}");
    c.election.preference = if id == 1 { 90 } else { 10 };
    c.election.deposed_hold = ElectionConfig::default().deposed_hold;
    write_toml(&root.join(format!("agent{id}.toml")), &c)
}

#[actix_rt::test]
async fn two_agent_processes_publish_and_stop_on_sigterm() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    common::config::write_secret(&root.join("secret"), &format!("{SECRET_HEX}\n"));
    let secret = cmover::protocol::crypto::parse_key_file(SECRET_HEX.as_bytes()).unwrap();
    let ccm = FakeCcm::start(&secret, &root.join("ccm")).await;
    let ports = [free_udp_port(), free_udp_port()];
    let (tx, rx) = mpsc::channel::<(u64, String)>();
    let mut agents = Vec::new();
    for id in 1..=2u64 {
        let config = write_config(root, id, &ccm.url, &ports);
        agents.push(spawn_agent(Command::new(cmover_bin()), id, &config, &tx));
    }

    let report = ccm
        .wait_for("the segment report with both agents", |s| {
            s.segments.get("solo").filter(|r| r.members.len() == 2 && r.leader == NodeId(1)).cloned()
        })
        .await;
    let client = NodeClient::new(&secret, CCM_NODE, Duration::from_secs(20));
    for m in &report.members {
        let url = format!("http://{}", m.http);
        let unsigned = awc::Client::new().get(format!("{url}/node/v1/status")).send().await.unwrap();
        assert_eq!(unsigned.status(), 401, "unsigned status on node {}", m.id);
        let mut resp =
            client.request(awc::http::Method::GET, &url, "/node/v1/status", b"").send().await.unwrap();
        assert_eq!(resp.status(), 200);
        let status: NodeStatus = resp.json().await.unwrap();
        assert_eq!((status.id, status.segment.as_str(), status.leader), (m.id, "solo", Some(NodeId(1))));
    }

    let tree = root.join("tree");
    let spec =
        CorpusSpec { dirs: 6, small_files: 30, large_files: 1, large_size: 200_000, ..CorpusSpec::small() };
    corpus::generate(&tree, 11, &spec).unwrap();
    ccm.pack(&secret, &tree, "www", 1, 1);
    ccm.control(Kind::Commit, "www", 1, 2);
    let leader_url = format!("http://{}", report.leader_http);
    for (id, kind) in [(1, "content"), (2, "commit")] {
        let notify = Notify {
            assignment: ccm.aref(id, "www", kind, 1),
            fetch_from: ccm.url.clone(),
            run: RunId(1),
            targets: vec![NodeId(1), NodeId(2)],
            rate_limit: None,
        };
        let _: serde_json::Value =
            client.post_json(report.leader, &leader_url, "/node/v1/notify", &notify).await.unwrap();
        let results = ccm.results_of(id, 1).await;
        let servers: Vec<(NodeId, ServerOutcome)> = results[0].servers.clone().into_iter().collect();
        assert_eq!(
            servers,
            vec![(NodeId(1), ServerOutcome::Succeeded), (NodeId(2), ServerOutcome::Succeeded)],
            "{kind}"
        );
    }
    for id in 1..=2 {
        let live = root.join(format!("node{id}/sites/www/live"));
        assert_eq!(compare_trees(&live, &tree).unwrap(), Vec::<String>::new(), "node {id}");
    }

    // SIGTERM: each agent stops cleanly and says so.
    for a in &agents {
        a.sigterm();
    }
    let start = Instant::now();
    let mut stopped = [false; 3];
    let mut log = Vec::new();
    let all_stopped = recv_until(&rx, start, DEADLINE, |(id, line)| {
        if line.contains("\"agent_stopped\"") {
            stopped[id as usize] = true;
        }
        log.push(format!("agent {id}: {line}"));
        stopped[1] && stopped[2]
    });
    assert!(all_stopped, "the agents did not log agent_stopped within {DEADLINE:?}:\n{}", log.join("\n"));
    // The documented events, at the default level, with ids as integers.
    let events: Vec<serde_json::Value> =
        log.iter().filter_map(|l| serde_json::from_str(l.split_once(": ").unwrap().1).ok()).collect();
    for e in ["fetched", "delivered", "mctp_start", "mctp_done", "release_built", "release_live", "reported"]
    {
        assert!(events.iter().any(|v| v["fields"]["event"] == e), "no {e} event:\n{}", log.join("\n"));
    }
    for v in &events {
        for key in ["node", "leader", "member", "assignment", "run", "session"] {
            let f = &v["fields"][key];
            assert!(f.is_null() || f.is_u64(), "{key} is not an integer in {v}");
        }
    }
    for a in &mut agents {
        let status = a.wait_exit(start, DEADLINE);
        assert!(status.success(), "{status}");
    }
    ccm.stop().await;
}
