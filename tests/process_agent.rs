//! The real binary: two `cmover agent --config F` processes in one segment
//! (unicast control and data channels on 127.0.0.1) and a fake CCM in the
//! test. They elect a leader, which reports the segment; every node route
//! refuses unsigned requests and answers signed ones; a content assignment
//! and its commit go live on both; SIGTERM stops each agent cleanly, with its
//! `agent_stopped` log line.

mod fake_ccm;

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use fake_ccm::{FakeCcm, DEADLINE};

use cmover::corpus::{self, CorpusSpec};
use cmover::http::signed::NodeClient;
use cmover::protocol::api::{NodeStatus, Notify, ServerOutcome, CCM_NODE};
use cmover::protocol::assignment::Kind;
use cmover::protocol::ids::NodeId;
use cmover::storage::tree::compare_trees;

const SECRET_HEX: &str = "0f1e2d3c4b5a69788796a5b4c3d2e1f00f1e2d3c4b5a69788796a5b4c3d2e1f0";

/// Kills the agents however the test ends.
struct Agents(Vec<Child>);

impl Drop for Agents {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn free_udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn write_config(root: &Path, id: u64, ccm: &str, ports: &[u16; 2]) -> PathBuf {
    let path = root.join(format!("agent{id}.toml"));
    let peers: Vec<String> =
        ports.iter().enumerate().map(|(i, p)| format!("\"{}@127.0.0.1:{p}\"", i + 1)).collect();
    let text = format!(
        r#"[node]
id = {id}
name = "proc-{id}"
[cluster]
secret_file = "{root}/secret"
[control]
mode = "unicast"
bind = "127.0.0.1:{port}"
peers = [{peers}]
[election]
la_interval = "200ms"
claim_delay_min = "20ms"
claim_delay_max = "150ms"
voting_window = "100ms"
preference = {pref}
[membership]
alive_interval = "400ms"
member_timeout = "2400ms"
list_delay = "400ms"
register_jitter = "200ms"
[mctp]
report_window = "100ms"
[reports]
interval = "50ms"
grace = "100ms"
[releases]
min_free_disk = "0 B"
[agent]
data_dir = "{root}/node{id}/data"
sites_root = "{root}/node{id}/sites"
segment = "solo"
ccm_url = "{ccm}"
http_bind = "127.0.0.1:0"
segment_report_interval = "1s"
retry_delay = "100ms"
[data]
mode = "unicast"
bind = "127.0.0.1:0"
"#,
        root = root.display(),
        port = ports[id as usize - 1],
        peers = peers.join(", "),
        pref = if id == 1 { 90 } else { 10 },
    );
    std::fs::write(&path, text).unwrap();
    path
}

#[actix_rt::test]
async fn two_agent_processes_publish_and_stop_on_sigterm() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    std::fs::write(root.join("secret"), format!("{SECRET_HEX}\n")).unwrap();
    let secret = cmover::protocol::crypto::parse_key_file(SECRET_HEX.as_bytes()).unwrap();
    let ccm = FakeCcm::start(&secret, &root.join("ccm")).await;
    let ports = [free_udp_port(), free_udp_port()];
    let bin = env!("CARGO_BIN_EXE_cmover");
    let (tx, rx) = mpsc::channel::<(u64, String)>();
    let mut agents = Agents(Vec::new());
    for id in 1..=2u64 {
        let config = write_config(root, id, &ccm.url, &ports);
        let mut child = Command::new(bin)
            .args(["agent", "--config", config.to_str().unwrap(), "--log-format", "json"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let out = child.stdout.take().unwrap();
        let tx = tx.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send((id, line)).is_err() {
                    break;
                }
            }
        });
        agents.0.push(child);
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
            run: 1,
            targets: vec![],
            rate_limit: None,
        };
        let _: serde_json::Value = client.post_json(&leader_url, "/node/v1/notify", &notify).await.unwrap();
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
    for c in &agents.0 {
        common::sigterm(c);
    }
    let start = Instant::now();
    let mut stopped = [false; 3];
    let mut log = Vec::new();
    while !(stopped[1] && stopped[2]) {
        let left = DEADLINE.checked_sub(start.elapsed()).unwrap_or_default();
        let Ok((id, line)) = rx.recv_timeout(left) else {
            panic!("the agents did not log agent_stopped within {DEADLINE:?}:\n{}", log.join("\n"));
        };
        if line.contains("\"agent_stopped\"") {
            stopped[id as usize] = true;
        }
        log.push(format!("agent {id}: {line}"));
    }
    for c in &mut agents.0 {
        let status = loop {
            if let Some(s) = c.try_wait().unwrap() {
                break s;
            }
            assert!(start.elapsed() < DEADLINE, "agent {} did not exit", c.id());
            std::thread::sleep(Duration::from_millis(20));
        };
        assert!(status.success(), "{status}");
    }
    ccm.stop().await;
}
