//! Two promises of the run core (issue 14), each on an in-process cluster (a
//! CCM and 2 segments × 3 agents in one actix system, real UDP and HTTP on
//! 127.0.0.1):
//!
//! - **Hot content is its own state** (DESIGN §4 "Only targets"): a hot push
//!   to servers outside the content group, in the segment of a group member
//!   that lags, never makes the hot subset live on that member, and the CCM
//!   records the hot servers as holding hot content, not the site's release.
//! - **Leader restarts** (DESIGN §4 step 5): a leader killed after it
//!   acknowledged a notify and restarted at the same address (so re-elected,
//!   same id, same URL) is notified again and the run commits long before
//!   `ccm.report_timeout`.

use std::path::Path;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use cmover::config::Config;
use cmover::corpus::{self, EditSpec};
use cmover::local_cluster::{ClusterOptions, LocalCluster};
use cmover::protocol::ids::NodeId;
use cmover::storage::records::{Quorum, RunState, SegmentState};
use cmover::storage::tree::copy_tree;

mod common;

use common::cluster::{assert_live, init_logs, live_serial, slow_multicast, staging, wait_for, LIMIT};
use common::wait::wait_every;

/// Catch-up would bring the lagging member along by itself: off.
fn no_catch_up(c: &mut Config) {
    c.ccm.auto_catch_up = false;
}

async fn servers(c: &LocalCluster) -> Vec<serde_json::Value> {
    let (status, v) = c.admin.call("GET", "/api/v1/servers", None).await.unwrap();
    assert_eq!(status, 200, "{v}");
    v.as_array().cloned().unwrap_or_default()
}

fn files(root: &Path) -> usize {
    walkdir::WalkDir::new(root)
        .follow_links(true)
        .into_iter()
        .filter_map(Result::ok)
        .filter(|e| e.file_type().is_file())
        .count()
}

#[actix_rt::test]
async fn a_hot_push_next_to_a_lagging_member_never_makes_the_hot_subset_live_there() {
    init_logs();
    let tmp = tempfile::tempdir().unwrap();
    let staging = staging(tmp.path(), 31, 0);
    let mut opts = ClusterOptions::new(&tmp.path().join("cluster"), 2, 3);
    opts.tweak_ccm = Some(no_catch_up);
    let mut c = LocalCluster::start(opts).await.unwrap();
    c.wait_segments(LIMIT).await.unwrap();
    // The group: 1, 2 (segment 1) and 4, 5 (segment 2); 3 and 6 carry no www.
    let group = [1, 2, 4, 5];
    c.admin.create_site("www", &staging).await.unwrap();
    c.admin.create_group("web", "www", &group, Quorum::Count(3)).await.unwrap();
    let publish = c.admin.create_job("www", "web", "publish").await.unwrap();
    let r1 = c.admin.wait_run(c.admin.run_job(publish).await.unwrap(), LIMIT).await.unwrap();
    assert_eq!(r1.state, RunState::Committed, "{r1:#?}");
    let v1 = tmp.path().join("v1");
    copy_tree(&staging, &v1).unwrap();

    // Server 2 misses release 2: it lags, with release 1 live.
    c.stop_agent(2).await;
    c.wait_segments(LIMIT).await.unwrap();
    corpus::mutate(&staging, 31, &EditSpec::default()).unwrap();
    let r2 = c.admin.wait_run(c.admin.run_job(publish).await.unwrap(), LIMIT).await.unwrap();
    assert_eq!(r2.state, RunState::Committed, "{r2:#?}");
    c.start_agent(2).await.unwrap();
    let deadline = Instant::now() + LIMIT;
    while !servers(&c)
        .await
        .iter()
        .any(|s| s["id"] == 2 && s["online"] == true && s["live"]["www"] == r1.serial)
    {
        assert!(Instant::now() < deadline, "server 2 never came back lagging");
        actix::clock::sleep(Duration::from_millis(100)).await;
    }

    // A hot push of one file to the two servers outside the group: 3 shares
    // segment 1 (and its sessions) with the lagging 2.
    let hot_file = walkdir::WalkDir::new(&staging)
        .into_iter()
        .filter_map(Result::ok)
        .find(|e| e.file_type().is_file())
        .map(|e| e.path().strip_prefix(&staging).unwrap().to_string_lossy().into_owned())
        .unwrap();
    let body = serde_json::json!({"site": "www", "group": "web", "kind": "hot",
        "params": {"paths": [hot_file], "extra_servers": 2}});
    let hot = c.admin.ok("POST", "/api/v1/jobs", Some(body)).await.unwrap()["id"].as_u64().unwrap();
    let rh = c.admin.wait_run(c.admin.run_job(hot).await.unwrap(), LIMIT).await.unwrap();
    assert_eq!(rh.state, RunState::Committed, "{rh:#?}");
    assert_eq!(rh.targets, vec![NodeId(3), NodeId(6)], "{rh:#?}");
    assert_ne!(rh.serial, r2.serial, "a hot push has a release serial of its own: {rh:#?}");
    for id in [3, 6] {
        assert_eq!(live_serial(&c, id, "www"), Some(rh.serial), "server {id} serves the hot files");
        assert_eq!(files(&c.live_dir(id, "www")), 1, "server {id} holds the hot subset only");
    }
    // The lagging member still serves release 1, whole.
    assert_eq!(live_serial(&c, 2, "www"), Some(r1.serial));
    assert_live(&c, &[2], "www", &v1);
    assert_live(&c, &[1, 4, 5], "www", &staging);
    // The CCM tells hot content from the site's release, after the leaders reported.
    let deadline = Instant::now() + LIMIT;
    loop {
        let all = servers(&c).await;
        let hot_ok = [3, 6].iter().all(|id| {
            all.iter()
                .any(|s| s["id"] == *id && s["hot"]["www"] == rh.serial && s["live"].get("www").is_none())
        });
        if hot_ok {
            break;
        }
        assert!(Instant::now() < deadline, "hot servers recorded as live or not at all: {all:?}");
        actix::clock::sleep(Duration::from_millis(200)).await;
    }
    let all = servers(&c).await;
    let two = all.iter().find(|s| s["id"] == 2).unwrap();
    assert_eq!(two["live"]["www"], r1.serial, "{two}");
    assert!(two["hot"].get("www").is_none(), "{two}");
    c.stop().await;
}

static LEADER_PORT: OnceLock<u16> = OnceLock::new();

/// Leader 1 listens on a fixed port, so that it comes back at the same
/// address; multicast is slow, so that the run can be interrupted.
fn fixed_leader(id: u64, c: &mut Config) {
    slow_multicast(id, c);
    if id == 1 {
        c.agent.http_bind = std::net::SocketAddr::from(([127, 0, 0, 1], *LEADER_PORT.get().unwrap()));
    } else if id <= 3 {
        // Its members wait 20 s before they miss it, so that it leads again
        // after its restart even on a loaded machine (there is no preemption).
        c.election.la_miss = 40;
    }
}

#[actix_rt::test]
async fn a_leader_restarted_at_the_same_address_after_acknowledging_is_notified_again() {
    init_logs();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    LEADER_PORT.set(port).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let staging = staging(tmp.path(), 32, 4);
    let mut opts = ClusterOptions::new(&tmp.path().join("cluster"), 2, 3);
    opts.tweak_agent = Some(fixed_leader);
    opts.tweak_ccm = Some(no_catch_up);
    let mut c = LocalCluster::start(opts).await.unwrap();
    let leaders: Vec<u64> = c.wait_segments(LIMIT).await.unwrap().iter().map(|s| s.leader.0).collect();
    assert!(leaders.contains(&1), "preferred leader 1: {leaders:?}");
    c.admin.create_site("www", &staging).await.unwrap();
    // Five of six: the restarted leader may miss the content and be listed failed.
    c.admin.create_group("web", "www", &c.ids(), Quorum::Count(5)).await.unwrap();
    let job = c.admin.create_job("www", "web", "publish").await.unwrap();
    let run = c.admin.run_job(job).await.unwrap();
    // Once seg-1's leader has acknowledged (holds the copy), and before its
    // segment reported, it is killed and restarted at once, at the same address.
    // (Holding: it fetched and asked for its next hop; the CCM waits for its
    // result and, before the run core, never notified it again.)
    wait_for(&c, run, "seg-1's leader to acknowledge", |r| {
        r.segments.get("seg-1").is_some_and(|p| p.state == SegmentState::Holding)
    })
    .await;
    c.stop_agent(1).await;
    let restarted = Instant::now();
    c.start_agent(1).await.unwrap();
    let r = c.admin.wait_run(run, LIMIT).await.unwrap();
    let took = restarted.elapsed();
    assert_eq!(r.state, RunState::Committed, "{r:#?}");
    assert_eq!(r.segments["seg-1"].state, SegmentState::Reported, "{r:#?}");
    // report_timeout is 120 s in local clusters: a leader that is not
    // notified again leaves its segment silent until then.
    assert!(took < Duration::from_secs(60), "the run took {took:?} after the restart: {r:#?}");
    // The restarted leader leads again (same id, same address).
    let seg1 = wait_every("server 1 to lead seg-1 again", LIMIT, Duration::from_millis(100), async || {
        let segs = c.wait_segments(LIMIT).await.unwrap();
        let seg1 = segs.into_iter().find(|s| s.name == "seg-1").unwrap();
        if seg1.leader == NodeId(1) {
            Ok(seg1)
        } else {
            Err(format!("leader {}", seg1.leader))
        }
    })
    .await;
    assert_eq!(seg1.leader_http, format!("127.0.0.1:{port}"));
    assert_live(&c, &[2, 3, 4, 5, 6], "www", &staging);
    c.stop().await;
}
