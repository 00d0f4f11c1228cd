//! Six agents in two segments of three, each a full `Agent` (elector,
//! group leader, MCTP sender and receiver, report collector, content
//! interpreter, node HTTP server) on real UDP and HTTP on 127.0.0.1, in
//! unicast mode, with a fake CCM: a small actix-web app implementing the
//! CCM's side of the node API (`segment`, `next-hop`, `report`,
//! `assignments/{id}`) behind the `Signed` extractor.
//!
//! It checks DESIGN §4 steps 5–9 from the agents' side: the CCM notifies
//! the first segment's leader, which fetches the assignment, forwards it to
//! the second segment's leader (the CCM's next hop), and both multicast it to
//! their members and report every server; a commit then switches every `live`
//! tree to exactly the packed tree. A copy the CCM serves damaged once is
//! rejected by its hash and fetched again; an agent restarted after applying
//! neither applies again nor forgets what is live; when a leader goes away,
//! the member that takes over carries the next release (a delta) to the
//! servers left.
//!
//! Conditions are awaited with generous deadlines (the machine may be busy).

mod common;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::config::unicast_agent;
use common::fake_ccm::FakeCcm;
use common::net::free_udp_port;

use cmover::actors::content_interpreter::GetInterpreterStatus;
use cmover::actors::group_leader::GetLeaderStatus;
use cmover::agent::Agent;
use cmover::config::Config;
use cmover::corpus::{self, CorpusSpec};
use cmover::net::client::{ClientError, NodeClient};
use cmover::protocol::api::{
    AssignmentRef, HopTarget, NodeStatus, Notify, SegmentResult, ServerOutcome, CCM_NODE,
};
use cmover::protocol::assignment::Kind;
use cmover::protocol::ids::{AssignmentId, NodeId, RunId};
use cmover::storage::tree::compare_trees;

const SECRET_HEX: &str = "6f2d1c3b4a5968778695a4b3c2d1e0f00112233445566778899aabbccddeeff0";
const SITE: &str = "www";
const ALL: [u64; 6] = [1, 2, 3, 4, 5, 6];

fn secret() -> Vec<u8> {
    cmover::protocol::crypto::parse_key_file(SECRET_HEX.as_bytes()).unwrap()
}

/// Segment of a node: 1–3 are "east", 4–6 "west".
fn segment_of(id: u64) -> &'static str {
    if id <= 3 {
        "east"
    } else {
        "west"
    }
}

fn agent_config(root: &Path, id: u64, ccm_url: &str, control: &BTreeMap<u64, SocketAddr>) -> Config {
    let peers: Vec<(u64, SocketAddr)> =
        control.iter().filter(|(p, _)| segment_of(**p) == segment_of(id)).map(|(p, a)| (*p, *a)).collect();
    let dir = root.join(format!("node-{id}"));
    let mut c = unicast_agent(id, &dir, &root.join("secret"), segment_of(id), ccm_url, &peers);
    // The first node of each segment is preferred: it leads.
    c.election.preference = if id == 1 || id == 4 { 90 } else { 10 };
    c.agent.location = format!("{}-dc", segment_of(id));
    c.agent.request_timeout = Duration::from_secs(20);
    c
}

struct Cluster {
    root: PathBuf,
    ccm: FakeCcm,
    control: BTreeMap<u64, SocketAddr>,
    agents: BTreeMap<u64, Agent>,
    client: NodeClient,
}

impl Cluster {
    fn config(&self, id: u64) -> Config {
        agent_config(&self.root, id, &self.ccm.url, &self.control)
    }

    /// Waits until both segments' reports list their running agents (at
    /// their current HTTP addresses when `exact`, with `want` as every
    /// member's live serial of the site), and returns each segment's leader
    /// and its base URL.
    async fn segments_settled(&self, exact: bool, want: Option<u64>) -> HashMap<String, (NodeId, String)> {
        let agents: HashMap<NodeId, String> =
            self.agents.values().map(|a| (a.id, a.http.to_string())).collect();
        let running = |seg: &str| self.agents.keys().filter(|id| segment_of(**id) == seg).count();
        let counts = [running("east"), running("west")];
        self.ccm
            .wait_for("both segments reported with their running agents", |s| {
                let mut out = HashMap::new();
                for (seg, n) in ["east", "west"].into_iter().zip(counts) {
                    let r = s.segments.get(seg)?;
                    let ok = r.members.len() == n
                        && (!exact
                            || r.members.iter().all(|m| {
                                agents.get(&m.id) == Some(&m.http) && m.live.get(SITE).copied() == want
                            }));
                    if !ok {
                        return None;
                    }
                    out.insert(seg.to_string(), (r.leader, format!("http://{}", r.leader_http)));
                }
                Some(out)
            })
            .await
    }

    /// Publishes assignment `aref` (already in the CCM's directory): the CCM
    /// notifies east's leader, whose next hop is west's leader, then none.
    /// Returns the two segment results.
    async fn distribute(&self, aref: &AssignmentRef, run: u64) -> Vec<SegmentResult> {
        let leaders = self.segments_settled(false, None).await;
        let (east, east_url) = leaders["east"].clone();
        let (west, west_url) = leaders["west"].clone();
        // Each segment's running agents are the targets there.
        let targets = |seg: &str| -> Vec<NodeId> {
            self.agents.values().filter(|a| segment_of(a.id.0) == seg).map(|a| a.id).collect()
        };
        let notify = |fetch_from: &str, seg: &str| Notify {
            assignment: aref.clone(),
            fetch_from: fetch_from.to_string(),
            run: RunId(run),
            targets: targets(seg),
            rate_limit: None,
        };
        self.ccm.state().hops.insert(
            aref.id,
            VecDeque::from([HopTarget { node: west, url: west_url, notify: notify(&east_url, "west") }]),
        );
        let _: serde_json::Value = self
            .client
            .post_json(east, &east_url, "/node/v1/notify", &notify(&self.ccm.url, "east"))
            .await
            .unwrap();
        let results = self.ccm.results_of(aref.id.0, 2).await;
        let asked = self.ccm.state().asked[&aref.id].clone();
        assert!(
            asked.contains(&east) && asked.contains(&west),
            "both leaders asked for next hops: {asked:?}"
        );
        results
    }
}

/// Both results name exactly the nodes in `nodes`, all succeeded.
fn all_succeeded(results: &[SegmentResult], nodes: &[u64]) {
    assert_eq!(results.len(), 2, "{results:#?}");
    let mut servers = BTreeMap::new();
    for r in results {
        let n = nodes.iter().filter(|id| segment_of(**id) == r.segment).count();
        assert_eq!(r.servers.len(), n, "{r:#?}");
        servers.extend(r.servers.clone());
    }
    let want: BTreeMap<NodeId, ServerOutcome> =
        nodes.iter().map(|&i| (NodeId(i), ServerOutcome::Succeeded)).collect();
    assert_eq!(servers, want, "{results:#?}");
}

#[actix_rt::test]
async fn two_segments_publish_commit_refetch_restart_and_fail_over() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let started = std::time::Instant::now();
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().to_path_buf();
    common::config::write_secret(&root.join("secret"), &format!("{SECRET_HEX}\n"));
    let ccm = FakeCcm::start(&secret(), &root.join("ccm")).await;
    let control: BTreeMap<u64, SocketAddr> =
        (1..=6).map(|id| (id, SocketAddr::from(([127, 0, 0, 1], free_udp_port())))).collect();
    let mut cluster = Cluster {
        root: root.clone(),
        ccm,
        control,
        agents: BTreeMap::new(),
        client: NodeClient::new(&secret(), CCM_NODE, Duration::from_secs(20)),
    };
    for id in 1..=6 {
        let agent = Agent::start(cluster.config(id)).await.unwrap();
        cluster.agents.insert(id, agent);
    }
    let leaders = cluster.segments_settled(true, None).await;
    assert_eq!(leaders["east"].0, NodeId(1));
    assert_eq!(leaders["west"].0, NodeId(4));
    let settled = started.elapsed();

    // A member refuses a notify: 409 naming its leader.
    let member_url = format!("http://{}", cluster.agents[&2].http);
    let n = Notify {
        assignment: AssignmentRef {
            id: AssignmentId(1),
            site: SITE.into(),
            serial: 1,
            kind: Kind::Content,
            size: 1,
            sha256: "00".repeat(32),
        },
        fetch_from: cluster.ccm.url.clone(),
        run: RunId(1),
        targets: vec![NodeId(2)],
        rate_limit: None,
    };
    let err =
        cluster.client.post_json::<_, serde_json::Value>(NodeId(2), &member_url, "/node/v1/notify", &n).await;
    match err {
        Err(ClientError::Status { status: 409, body, .. }) => {
            assert!(body.contains("\"leader\":1"), "{body}")
        }
        other => panic!("a member accepted a notify: {other:?}"),
    }

    // Content: a generated tree, packed and encrypted with the cluster's content key.
    let tree = root.join("tree");
    let spec =
        CorpusSpec { dirs: 10, small_files: 60, large_files: 1, large_size: 600_000, ..CorpusSpec::small() };
    corpus::generate(&tree, 11, &spec).unwrap();
    cluster.ccm.pack(&secret(), &tree, SITE, 1, 100);
    let content = cluster.ccm.aref(100, SITE, "content", 1);
    let t = std::time::Instant::now();
    let results = cluster.distribute(&content, 1).await;
    let content_time = t.elapsed();
    all_succeeded(&results, &ALL);
    for id in 1..=6 {
        let site_root = root.join(format!("node-{id}/sites/{SITE}"));
        assert!(site_root.join("incoming/1").is_dir(), "node {id} built incoming/1");
        assert!(!site_root.join("live").exists(), "node {id}: nothing live before the commit");
    }
    assert_eq!(cluster.ccm.state().gets[&AssignmentId(100)], 1, "the CCM sent the content once");

    // Commit, served damaged once by the CCM: east's leader rejects the copy
    // by its hash and fetches it again.
    cluster.ccm.control(Kind::Commit, SITE, 1, 101);
    cluster.ccm.state().tamper_once.insert(AssignmentId(101));
    let commit = cluster.ccm.aref(101, SITE, "commit", 1);
    let t = std::time::Instant::now();
    let results = cluster.distribute(&commit, 1).await;
    let commit_time = t.elapsed();
    all_succeeded(&results, &ALL);
    assert_eq!(cluster.ccm.state().gets[&AssignmentId(101)], 2, "the damaged copy was fetched again");
    for id in 1..=6 {
        let live = root.join(format!("node-{id}/sites/{SITE}/live"));
        assert_eq!(compare_trees(&live, &tree).unwrap(), Vec::<String>::new(), "node {id}'s live tree");
        let s = cluster.agents[&id].interpreter.send(GetInterpreterStatus).await.unwrap();
        assert_eq!((s.executed, s.failed), (2, 0), "node {id} carried out content and commit once each");
    }
    // Every member's new live serial reaches the CCM through its leader.
    cluster.segments_settled(true, Some(1)).await;

    // Restart a member after applying: it knows what is live and holds,
    // and a re-delivered assignment is not carried out again.
    let agent = cluster.agents.remove(&3).unwrap();
    agent.stop().await;
    let agent = Agent::start(cluster.config(3)).await.unwrap();
    let url = format!("http://{}", agent.http);
    cluster.agents.insert(3, agent);
    let status: NodeStatus = {
        let resp = cluster.client.request(awc::http::Method::GET, &url, "/node/v1/status", b"").send().await;
        let mut resp = resp.unwrap();
        assert_eq!(resp.status(), 200);
        resp.json().await.unwrap()
    };
    assert_eq!(status.live.get(SITE), Some(&1), "{status:?}");
    assert_eq!(status.held, vec![100, 101], "{status:?}");
    // Its new address and its live serial reach the CCM.
    cluster.segments_settled(true, Some(1)).await;
    cluster.ccm.state().results.retain(|r| r.assignment != AssignmentId(101));
    let results = cluster.distribute(&commit, 2).await;
    all_succeeded(&results, &ALL);
    let s = cluster.agents[&3].interpreter.send(GetInterpreterStatus).await.unwrap();
    assert_eq!(s.executed, 0, "the restarted agent applied nothing again: {s:?}");
    for id in [1, 2, 4, 5, 6] {
        let s = cluster.agents[&id].interpreter.send(GetInterpreterStatus).await.unwrap();
        assert_eq!(s.executed, 2, "node {id} applied nothing again: {s:?}");
    }
    let l = cluster.agents[&1].leader.send(GetLeaderStatus).await.unwrap();
    assert!(l.leading && l.jobs.is_empty(), "{l:?}");
    assert_eq!(cluster.ccm.state().gets[&AssignmentId(101)], 2, "held copies are not fetched again");

    // East's leader goes away: a member takes over, reports the segment,
    // and the next release (a delta against the live one) reaches the five
    // servers left through it.
    let t = std::time::Instant::now();
    cluster.agents.remove(&1).unwrap().stop().await;
    let leaders = cluster.segments_settled(true, Some(1)).await;
    let failover = t.elapsed();
    assert!([2, 3].contains(&leaders["east"].0 .0), "{leaders:?}");
    let tree2 = root.join("tree2");
    cmover::storage::tree::copy_tree(&tree, &tree2).unwrap();
    corpus::mutate(&tree2, 12, &corpus::EditSpec::default()).unwrap();
    cluster.ccm.pack_delta(&secret(), &tree, &tree2, SITE, 2, 1, 102);
    cluster.ccm.control(Kind::Commit, SITE, 2, 103);
    let five = [2, 3, 4, 5, 6];
    let results = cluster.distribute(&cluster.ccm.aref(102, SITE, "content", 2), 3).await;
    all_succeeded(&results, &five);
    let results = cluster.distribute(&cluster.ccm.aref(103, SITE, "commit", 2), 3).await;
    all_succeeded(&results, &five);
    for id in five {
        let live = root.join(format!("node-{id}/sites/{SITE}/live"));
        assert_eq!(compare_trees(&live, &tree2).unwrap(), Vec::<String>::new(), "node {id}'s live tree");
    }
    cluster.segments_settled(true, Some(2)).await;

    println!(
        "settled {:?}, content {:?} ({} bytes), commit {:?}, failover {:?}, total {:?}",
        settled,
        content_time,
        content.size,
        commit_time,
        failover,
        started.elapsed()
    );
    for (_, a) in std::mem::take(&mut cluster.agents) {
        a.stop().await;
    }
    cluster.ccm.stop().await;
}
