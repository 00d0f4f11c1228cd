//! The CCM on its own, over real HTTP on 127.0.0.1: the admin REST API, and
//! a whole run driven by two fake group leaders that speak the signed node
//! API (fetch with Range, next hop, segment results). The agent side is
//! tested against the real CCM in `cluster_*.rs`.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix_web::{web, App, HttpResponse, HttpServer};
use cmover::config::Config;
use cmover::corpus::{self, CorpusSpec};
use cmover::http::signed::{NodeAuth, Signed};
use cmover::net::client::NodeClient;
use cmover::protocol::api::{
    MemberReport, NextHop, NextHopRequest, Notify, SegmentReport, SegmentResult, ServerOutcome, CCM_NODE,
};
use cmover::protocol::crypto::Digest;
use cmover::protocol::ids::{AssignmentId, NodeId, RunId};
use cmover::storage::records::{RunRecord, RunState};
use cmover::storage::tree::compare_trees;
use common::net::local_listener;
use common::wait::{wait_for, wait_for_sync};

const TOKEN: &str = "test-admin-token";

struct World {
    _dir: tempfile::TempDir,
    staging: std::path::PathBuf,
    config: Config,
    secret: Vec<u8>,
}

fn world() -> World {
    let dir = tempfile::tempdir().unwrap();
    let secret_file = dir.path().join("secret");
    common::config::write_secret(&secret_file, &hex::encode([7u8; 32]));
    let staging = dir.path().join("staging");
    corpus::generate(&staging, 3, &CorpusSpec::small()).unwrap();
    let mut config = Config::default();
    config.cluster.secret_file = secret_file;
    config.ccm.data_dir = dir.path().join("ccm");
    config.ccm.http_bind = "127.0.0.1:0".parse().unwrap();
    config.ccm.admin_token = TOKEN.into();
    config.ccm.fanout = 1;
    config.ccm.notify_timeout = Duration::from_secs(20);
    config.ccm.report_timeout = Duration::from_secs(60);
    World { _dir: dir, staging, config, secret: vec![7u8; 32] }
}

/// A fake leader, node `id`: records the notifies it gets (signed for it).
async fn fake_leader(secret: &[u8], id: NodeId) -> (String, Arc<Mutex<Vec<Notify>>>) {
    let got: Arc<Mutex<Vec<Notify>>> = Arc::default();
    let data = web::Data::new(got.clone());
    let auth = web::Data::new(NodeAuth::from_secret(secret, id, Duration::from_secs(30)));
    let (listener, addr) = local_listener();
    let server = HttpServer::new(move || {
        App::new().app_data(auth.clone()).app_data(data.clone()).route(
            "/node/v1/notify",
            web::post().to(|s: Signed, got: web::Data<Arc<Mutex<Vec<Notify>>>>| async move {
                got.lock().unwrap().push(s.json::<Notify>().unwrap());
                HttpResponse::Accepted().finish()
            }),
        )
    })
    .workers(1)
    .disable_signals()
    .listen(listener)
    .unwrap()
    .run();
    actix::spawn(server);
    (addr.to_string(), got)
}

/// How long the CCM may take to get somewhere.
const WAIT: Duration = Duration::from_secs(60);

async fn wait_for_run(ccm: &cmover::ccm::CcmHandle, run: RunId, state: RunState) -> RunRecord {
    wait_for(format!("run {run} to reach {state:?}"), WAIT, async || {
        let r = run_state(ccm, run).await;
        if r.state == state {
            Ok(r)
        } else {
            Err(format!("{r:?}"))
        }
    })
    .await
}

async fn admin(
    client: &awc::Client,
    method: &str,
    url: String,
    body: Option<serde_json::Value>,
) -> (u16, serde_json::Value) {
    let req = client
        .request(method.parse().unwrap(), url)
        .insert_header(("authorization", format!("Bearer {TOKEN}")));
    let mut resp = match body {
        Some(b) => req.send_json(&b).await.unwrap(),
        None => req.send().await.unwrap(),
    };
    let status = resp.status().as_u16();
    let bytes = resp.body().await.unwrap();
    (status, serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null))
}

fn report(segment: &str, leader: u64, http: &str, ids: &[u64]) -> SegmentReport {
    SegmentReport {
        segment: segment.into(),
        leader: NodeId(leader),
        leader_http: http.into(),
        incarnation: 1,
        location: "test".into(),
        cpus: 2,
        disk_free: 1 << 30,
        members: ids
            .iter()
            .map(|&id| MemberReport {
                id: NodeId(id),
                name: format!("web-{id}"),
                http: http.into(),
                live: Default::default(),
            })
            .collect(),
    }
}

async fn fetch(node: &NodeClient, base: &str, id: AssignmentId) -> Vec<u8> {
    // First 100 bytes, then the rest with a Range request, as a resumed transfer would.
    let path = format!("/node/v1/assignments/{id}");
    let mut head = node
        .request(awc::http::Method::GET, base, &path, b"")
        .insert_header(("range", "bytes=0-99"))
        .send()
        .await
        .unwrap();
    assert_eq!(head.status().as_u16(), 206);
    let mut bytes = head.body().limit(1 << 30).await.unwrap().to_vec();
    assert_eq!(bytes.len(), 100);
    let mut rest = node
        .request(awc::http::Method::GET, base, &path, b"")
        .insert_header(("range", "bytes=100-"))
        .send()
        .await
        .unwrap();
    bytes.extend_from_slice(&rest.body().limit(1 << 30).await.unwrap());
    bytes
}

/// Leader `gl` plays its part for one assignment: fetch, forward, report.
async fn leader_round(
    gl: &NodeClient,
    ccm: &str,
    notify: &Notify,
    segment: &str,
    servers: &[(u64, ServerOutcome)],
) -> Option<Notify> {
    let bytes = fetch(gl, &notify.fetch_from, notify.assignment.id).await;
    assert_eq!(bytes.len() as u64, notify.assignment.size);
    assert_eq!(Digest::of(&bytes).to_string(), notify.assignment.sha256);
    let hop: NextHop = gl
        .post_json(CCM_NODE, ccm, "/node/v1/next-hop", &NextHopRequest { assignment: notify.assignment.id })
        .await
        .unwrap();
    let forwarded = hop.target.map(|t| t.notify);
    if forwarded.is_some() {
        let again: NextHop = gl
            .post_json(
                CCM_NODE,
                ccm,
                "/node/v1/next-hop",
                &NextHopRequest { assignment: notify.assignment.id },
            )
            .await
            .unwrap();
        assert!(again.target.is_none(), "one target per ask, then none");
    }
    let result = SegmentResult {
        assignment: notify.assignment.id,
        run: notify.run,
        segment: segment.into(),
        leader: gl_id(gl),
        servers: servers.iter().map(|(id, o)| (NodeId(*id), o.clone())).collect(),
        delivery: None,
    };
    let _: serde_json::Value = gl.post_json(CCM_NODE, ccm, "/node/v1/report", &result).await.unwrap();
    forwarded
}

fn gl_id(gl: &NodeClient) -> NodeId {
    let s = format!("{gl:?}");
    NodeId(s.trim_start_matches("NodeClient(node ").trim_end_matches(')').parse().unwrap())
}

async fn setup(
    w: &World,
) -> (cmover::ccm::CcmHandle, [(String, Arc<Mutex<Vec<Notify>>>); 2], NodeClient, NodeClient) {
    let ccm = cmover::ccm::start(w.config.clone()).await.unwrap();
    let a = fake_leader(&w.secret, NodeId(1)).await;
    let b = fake_leader(&w.secret, NodeId(4)).await;
    let gl_a = NodeClient::new(&w.secret, NodeId(1), Duration::from_secs(10));
    let gl_b = NodeClient::new(&w.secret, NodeId(4), Duration::from_secs(10));
    let _: serde_json::Value = gl_a
        .post_json(CCM_NODE, &ccm.url, "/node/v1/segment", &report("a", 1, &a.0, &[1, 2, 3]))
        .await
        .unwrap();
    let _: serde_json::Value = gl_b
        .post_json(CCM_NODE, &ccm.url, "/node/v1/segment", &report("b", 4, &b.0, &[4, 5, 6]))
        .await
        .unwrap();
    let client = awc::Client::default();
    let (s, _) = admin(
        &client,
        "POST",
        format!("{}/api/v1/sites", ccm.url),
        Some(serde_json::json!({"name": "www", "staging": w.staging})),
    )
    .await;
    assert_eq!(s, 201);
    let body = serde_json::json!({"name": "web", "site": "www", "servers": [1, 2, 3, 4, 5, 6]});
    assert_eq!(admin(&client, "POST", format!("{}/api/v1/groups", ccm.url), Some(body)).await.0, 201);
    let (s, job) = admin(
        &client,
        "POST",
        format!("{}/api/v1/jobs", ccm.url),
        Some(serde_json::json!({"site": "www", "group": "web"})),
    )
    .await;
    assert_eq!(s, 201, "{job}");
    (ccm, [a, b], gl_a, gl_b)
}

async fn run_state(ccm: &cmover::ccm::CcmHandle, run: RunId) -> RunRecord {
    let client = awc::Client::default();
    let (s, v) = admin(&client, "GET", format!("{}/api/v1/runs/{run}", ccm.url), None).await;
    assert_eq!(s, 200);
    serde_json::from_value(v).unwrap()
}

async fn start_run(ccm: &cmover::ccm::CcmHandle) -> RunId {
    let client = awc::Client::default();
    let (s, v) = admin(&client, "POST", format!("{}/api/v1/jobs/1/run", ccm.url), None).await;
    assert_eq!(s, 202, "{v}");
    RunId(v["run"].as_u64().unwrap())
}

fn ok(ids: &[u64]) -> Vec<(u64, ServerOutcome)> {
    ids.iter().map(|&i| (i, ServerOutcome::Succeeded)).collect()
}

#[actix_web::test]
async fn a_publish_run_spreads_as_a_tree_commits_and_records_everything() {
    let w = world();
    let (ccm, [(_, got_a), (_, got_b)], gl_a, gl_b) = setup(&w).await;
    let run = start_run(&ccm).await;

    // Content: the CCM notifies only the first leader (fanout 1); it forwards to the second.
    let n = wait_for_sync("content notify", WAIT, || got_a.lock().unwrap().first().cloned()).await;
    assert_eq!(
        (n.assignment.kind.name(), n.assignment.serial, n.fetch_from.as_str()),
        ("content", 1, ccm.url.as_str())
    );
    assert!(got_b.lock().unwrap().is_empty(), "the CCM sent to one leader only");
    let hop = leader_round(&gl_a, &ccm.url, &n, "a", &ok(&[1, 2, 3])).await.expect("a forwards to b");
    assert_eq!(hop.assignment, n.assignment);
    assert_ne!(hop.fetch_from, ccm.url);
    // b fetches from the CCM here (the fake a serves nothing), which is the same file.
    let hop = Notify { fetch_from: ccm.url.clone(), ..hop };
    assert!(leader_round(&gl_b, &ccm.url, &hop, "b", &ok(&[4, 5, 6])).await.is_none());

    // Commit: notified the same way.
    let c = wait_for_sync("commit notify", WAIT, || got_a.lock().unwrap().get(1).cloned()).await;
    assert_eq!((c.assignment.kind.name(), c.assignment.serial), ("commit", 1));
    let hop = leader_round(&gl_a, &ccm.url, &c, "a", &ok(&[1, 2, 3])).await.expect("forwarded");
    let hop = Notify { fetch_from: ccm.url.clone(), ..hop };
    leader_round(&gl_b, &ccm.url, &hop, "b", &ok(&[4, 5, 6])).await;

    let r = wait_for_run(&ccm, run, RunState::Committed).await;
    assert!(r.failed_servers.is_empty(), "{r:?}");
    assert_eq!(r.segments["b"].fetched_from, Some(NodeId(1)), "the tree: b got it from a");
    assert_eq!(r.segments["a"].fetched_from, Some(NodeId(0)), "a got it from the CCM");
    // The shadow copy is what went live.
    let shadow = w.config.ccm.data_dir.join("shadow/www/live");
    assert!(compare_trees(&shadow, &w.staging).unwrap().is_empty());
    let client = awc::Client::default();
    let (_, sites) = admin(&client, "GET", format!("{}/api/v1/sites", ccm.url), None).await;
    assert_eq!(sites[0]["live_serial"], 1);
    let (_, history) = admin(&client, "GET", format!("{}/api/v1/events", ccm.url), None).await;
    assert!(history.as_array().unwrap().iter().any(|h| h["kind"] == "committed"), "{history}");

    // Nothing changed since: the next run is a no-op.
    let run2 = start_run(&ccm).await;
    wait_for_run(&ccm, run2, RunState::Unchanged).await;
}

#[actix_web::test]
async fn without_quorum_the_release_is_aborted_and_the_failure_named() {
    let w = world();
    let (ccm, [(_, got_a), (_, _)], gl_a, gl_b) = setup(&w).await;
    let run = start_run(&ccm).await;
    let n = wait_for_sync("content notify", WAIT, || got_a.lock().unwrap().first().cloned()).await;
    let hop = leader_round(&gl_a, &ccm.url, &n, "a", &ok(&[1, 2, 3])).await.unwrap();
    let mut outcomes = ok(&[4, 6]);
    outcomes.push((5, ServerOutcome::Failed { error: "disk full".into() }));
    leader_round(&gl_b, &ccm.url, &Notify { fetch_from: ccm.url.clone(), ..hop }, "b", &outcomes).await;
    let a = wait_for_sync("abort notify", WAIT, || got_a.lock().unwrap().get(1).cloned()).await;
    assert_eq!(a.assignment.kind.name(), "abort");
    let hop = leader_round(&gl_a, &ccm.url, &a, "a", &ok(&[1, 2, 3])).await.unwrap();
    leader_round(&gl_b, &ccm.url, &Notify { fetch_from: ccm.url.clone(), ..hop }, "b", &ok(&[4, 5, 6])).await;
    let r = wait_for_run(&ccm, run, RunState::Failed).await;
    let err = r.error.unwrap();
    assert!(err.contains("quorum not met") && err.contains("5: disk full"), "{err}");
    assert!(!w.config.ccm.data_dir.join("shadow/www/live").exists(), "nothing went live");
}

#[actix_web::test]
async fn the_rest_api_checks_tokens_and_names_bad_fields() {
    let w = world();
    let ccm = cmover::ccm::start(w.config.clone()).await.unwrap();
    let client = awc::Client::default();
    let resp = client.get(format!("{}/api/v1/sites", ccm.url)).send().await.unwrap();
    assert_eq!(resp.status().as_u16(), 401);
    let cases = [
        ("sites", serde_json::json!({"name": "../x", "staging": w.staging}), "name"),
        ("sites", serde_json::json!({"name": "www", "staging": "relative/dir"}), "staging"),
        ("sites", serde_json::json!({"name": "www"}), "staging"),
        ("groups", serde_json::json!({"name": "g", "site": "nope", "servers": [1]}), "site"),
        ("jobs", serde_json::json!({"site": "nope", "group": "g"}), "site"),
    ];
    for (path, body, field) in cases {
        let (s, v) = admin(&client, "POST", format!("{}/api/v1/{path}", ccm.url), Some(body.clone())).await;
        assert_eq!(s, 400, "{body} -> {v}");
        assert_eq!(v["field"], field, "{body} -> {v}");
    }
    // Node routes refuse unsigned requests.
    let resp = client
        .post(format!("{}/node/v1/next-hop", ccm.url))
        .send_json(&serde_json::json!({"assignment": 1}))
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 401);
    // A quorum that cannot be met fails the run at once, naming the offline servers.
    let (s, _) = admin(
        &client,
        "POST",
        format!("{}/api/v1/sites", ccm.url),
        Some(serde_json::json!({"name": "www", "staging": w.staging})),
    )
    .await;
    assert_eq!(s, 201);
    // A server nobody has reported is refused; server 9, seen once and now
    // offline, is accepted.
    let (s, v) = admin(
        &client,
        "POST",
        format!("{}/api/v1/groups", ccm.url),
        Some(serde_json::json!({"name": "g", "site": "www", "servers": [9]})),
    )
    .await;
    assert_eq!((s, &v["field"]), (400, &serde_json::json!("servers")), "{v}");
    assert!(v["error"].as_str().unwrap().contains("server 9 is not known"), "{v}");
    let gl = NodeClient::new(&w.secret, NodeId(8), Duration::from_secs(10));
    for members in [&[8, 9][..], &[8]] {
        let _: serde_json::Value = gl
            .post_json(CCM_NODE, &ccm.url, "/node/v1/segment", &report("z", 8, "127.0.0.1:9", members))
            .await
            .unwrap();
    }
    let (s, v) = admin(
        &client,
        "POST",
        format!("{}/api/v1/groups", ccm.url),
        Some(serde_json::json!({"name": "g", "site": "www", "servers": [9]})),
    )
    .await;
    assert_eq!(s, 201, "{v}");
    let (_, job) = admin(
        &client,
        "POST",
        format!("{}/api/v1/jobs", ccm.url),
        Some(serde_json::json!({"site": "www", "group": "g"})),
    )
    .await;
    let (_, started) =
        admin(&client, "POST", format!("{}/api/v1/jobs/{}/run", ccm.url, job["id"]), None).await;
    let r = run_state(&ccm, RunId(started["run"].as_u64().unwrap())).await;
    assert_eq!(r.state, RunState::Failed);
    assert!(r.error.unwrap().contains("offline: 9"));
}

#[actix_web::test]
async fn a_ccm_restart_fails_an_unfinished_distribution_cleanly_and_resumes_a_commit() {
    let w = world();
    let (ccm, [(a, got_a), (b, _)], gl_a, gl_b) = setup(&w).await;
    // What the leaders send every segment_report_interval: a recovered run
    // sends nothing before its segments report (or RECOVERY_HOLD passed).
    let report_again = |url: String| {
        let (gl_a, gl_b, a, b) = (gl_a.clone(), gl_b.clone(), a.clone(), b.clone());
        async move {
            let _: serde_json::Value = gl_a
                .post_json(CCM_NODE, &url, "/node/v1/segment", &report("a", 1, &a, &[1, 2, 3]))
                .await
                .unwrap();
            let _: serde_json::Value = gl_b
                .post_json(CCM_NODE, &url, "/node/v1/segment", &report("b", 4, &b, &[4, 5, 6]))
                .await
                .unwrap();
        }
    };

    // Run 1: the CCM stops while the content is being distributed.
    let run1 = start_run(&ccm).await;
    let n = wait_for_sync("content notify", WAIT, || got_a.lock().unwrap().first().cloned()).await;
    leader_round(&gl_a, &ccm.url, &n, "a", &ok(&[1, 2, 3])).await.unwrap();
    ccm.stop().await;
    let ccm = cmover::ccm::start(w.config.clone()).await.unwrap();
    report_again(ccm.url.clone()).await;
    // It fails cleanly: an abort goes to the leaders, nothing goes live.
    let abort = wait_for_sync("abort notify", WAIT, || got_a.lock().unwrap().get(1).cloned()).await;
    assert_eq!(abort.assignment.kind.name(), "abort");
    let hop = leader_round(&gl_a, &ccm.url, &abort, "a", &ok(&[1, 2, 3])).await.unwrap();
    leader_round(&gl_b, &ccm.url, &Notify { fetch_from: ccm.url.clone(), ..hop }, "b", &ok(&[4, 5, 6])).await;
    let r = wait_for_run(&ccm, run1, RunState::Failed).await;
    assert!(r.error.unwrap().contains("restarted"));
    assert_eq!(
        r.applied.get(&NodeId(1)),
        Some(&ServerOutcome::Succeeded),
        "acknowledged reports survive the restart"
    );

    // Run 2: the CCM stops while committing; the commit resumes after the restart.
    let run2 = start_run(&ccm).await;
    let n = wait_for_sync("content notify", WAIT, || got_a.lock().unwrap().get(2).cloned()).await;
    assert_eq!(n.run, run2);
    let hop = leader_round(&gl_a, &ccm.url, &n, "a", &ok(&[1, 2, 3])).await.unwrap();
    leader_round(&gl_b, &ccm.url, &Notify { fetch_from: ccm.url.clone(), ..hop }, "b", &ok(&[4, 5, 6])).await;
    let c = wait_for_sync("commit notify", WAIT, || got_a.lock().unwrap().get(3).cloned()).await;
    assert_eq!(c.assignment.kind.name(), "commit");
    ccm.stop().await;
    let ccm = cmover::ccm::start(w.config.clone()).await.unwrap();
    report_again(ccm.url.clone()).await;
    let c2 = wait_for_sync("resumed commit notify", WAIT, || got_a.lock().unwrap().get(4).cloned()).await;
    // Run 1 used serial 1 and failed; a serial is never used twice.
    assert_eq!((c2.assignment.kind.name(), c2.run, c2.assignment.serial), ("commit", run2, 2));
    let hop = leader_round(&gl_a, &ccm.url, &c2, "a", &ok(&[1, 2, 3])).await.unwrap();
    leader_round(&gl_b, &ccm.url, &Notify { fetch_from: ccm.url.clone(), ..hop }, "b", &ok(&[4, 5, 6])).await;
    let r = wait_for_run(&ccm, run2, RunState::Committed).await;
    assert!(r.failed_servers.is_empty());
    assert!(compare_trees(&w.config.ccm.data_dir.join("shadow/www/live"), &w.staging).unwrap().is_empty());
}
