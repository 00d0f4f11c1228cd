//! Faults during a publish, each on its own in-process cluster (a CCM and
//! agents in one actix system, real UDP and HTTP on 127.0.0.1): a group
//! leader killed mid-distribution, a server offline (quorum), a server
//! rejoining (synchronize), the CCM restarted mid-run. A tampered copy on
//! a leader is covered by `cluster_agent.rs` and `http::files`.

use cmover::corpus::{self, EditSpec};
use cmover::local_cluster::ClusterOptions;
use cmover::protocol::api::ServerOutcome;
use cmover::protocol::ids::NodeId;
use cmover::storage::records::{Quorum, RunState, SegmentState};
use cmover::storage::tree::copy_tree;

mod common;

use common::cluster::{
    assert_all_live, assert_live, init_logs, live_serial, published, slow_multicast, staging, wait_for,
    wait_live_reported, LIMIT,
};

#[actix_rt::test]
async fn a_leader_killed_during_distribution_is_replaced_and_the_job_completes() {
    init_logs();
    let tmp = tempfile::tempdir().unwrap();
    let staging = staging(tmp.path(), 21, 4);
    let mut opts = ClusterOptions::new(&tmp.path().join("cluster"), 2, 3);
    opts.tweak_agent = Some(slow_multicast);
    // Five of the six servers: the killed leader cannot take part.
    let (mut c, _, most) = published(opts, &staging, Quorum::Count(5)).await;
    let leaders: Vec<u64> = c.wait_segments(LIMIT).await.unwrap().iter().map(|s| s.leader.0).collect();
    assert!(leaders.contains(&1) && leaders.contains(&4), "preferred leaders 1 and 4: {leaders:?}");

    corpus::mutate(&staging, 21, &EditSpec { byte_fraction: 0.3, ..EditSpec::default() }).unwrap();
    let run = c.admin.run_job(most).await.unwrap();
    // Kill seg-1's leader once it has been told to fetch, before its segment reported.
    wait_for(&c, run, "seg-1 to be notified", |r| {
        r.segments
            .get("seg-1")
            .is_some_and(|p| matches!(p.state, SegmentState::Notified | SegmentState::Holding))
    })
    .await;
    c.stop_agent(1).await;
    let r = c.admin.wait_run(run, LIMIT).await.unwrap();
    assert_eq!(r.state, RunState::Committed, "{r:#?}");
    assert_eq!(r.failed_servers, vec![NodeId(1)], "only the dead leader failed: {r:#?}");
    let seg1 = &r.segments["seg-1"];
    assert_eq!(seg1.state, SegmentState::Reported, "{r:#?}");
    assert_ne!(seg1.leader, Some(NodeId(1)), "seg-1 was finished by its new leader: {r:#?}");
    assert_live(&c, &[2, 3, 4, 5, 6], "www", &staging);
    // The dead leader serves the old release, whole: nothing half-live.
    assert_eq!(live_serial(&c, 1, "www"), Some(1));
    let (_, history) = c.admin.call("GET", "/api/v1/events", None).await.unwrap();
    assert!(history.to_string().contains("leader_changed"), "{history}");
    c.stop().await;
}

#[actix_rt::test]
async fn an_offline_server_blocks_quorum_all_and_is_listed_failed_under_a_count_quorum() {
    init_logs();
    let tmp = tempfile::tempdir().unwrap();
    let staging = staging(tmp.path(), 22, 1);
    let opts = ClusterOptions::new(&tmp.path().join("cluster"), 2, 2);
    let (mut c, all, most) = published(opts, &staging, Quorum::Count(3)).await;
    let v1 = tmp.path().join("v1");
    copy_tree(&staging, &v1).unwrap();

    // Server 4 (a member of seg-2) goes away; the CCM learns it from seg-2's leader.
    c.stop_agent(4).await;
    c.wait_segments(LIMIT).await.unwrap();
    corpus::mutate(&staging, 22, &EditSpec::default()).unwrap();

    // Quorum all: refused, nothing changes anywhere.
    let r = c.admin.wait_run(c.admin.run_job(all).await.unwrap(), LIMIT).await.unwrap();
    assert_eq!(r.state, RunState::Failed, "{r:#?}");
    let error = r.error.clone().unwrap();
    assert!(error.contains("quorum cannot be met"), "{error}");
    assert_eq!(r.applied.get(&NodeId(4)), Some(&ServerOutcome::Failed { error: "offline".into() }));
    assert!(r.failed_servers.contains(&NodeId(4)));
    assert_live(&c, &[1, 2, 3], "www", &v1);

    // Quorum 3 of 4: live on the three, server 4 listed as failed.
    let r = c.admin.wait_run(c.admin.run_job(most).await.unwrap(), LIMIT).await.unwrap();
    assert_eq!(r.state, RunState::Committed, "{r:#?}");
    assert_eq!(r.failed_servers, vec![NodeId(4)], "{r:#?}");
    assert_live(&c, &[1, 2, 3], "www", &staging);
    assert_live(&c, &[4], "www", &v1);
    c.stop().await;
}

#[actix_rt::test]
async fn a_rejoining_server_is_resynchronised_by_a_synchronize_job() {
    init_logs();
    let tmp = tempfile::tempdir().unwrap();
    let staging = staging(tmp.path(), 23, 1);
    let mut opts = ClusterOptions::new(&tmp.path().join("cluster"), 2, 2);
    // This test runs the synchronize itself (tests/cluster_jobs.rs covers the automatic one).
    opts.tweak_ccm = Some(|c| c.ccm.auto_catch_up = false);
    let (mut c, _, most) = published(opts, &staging, Quorum::Count(3)).await;

    // Server 2 misses two releases.
    c.stop_agent(2).await;
    c.wait_segments(LIMIT).await.unwrap();
    for seed in [1, 2] {
        corpus::mutate(&staging, seed, &EditSpec::default()).unwrap();
        let r = c.admin.wait_run(c.admin.run_job(most).await.unwrap(), LIMIT).await.unwrap();
        assert_eq!(r.state, RunState::Committed, "{r:#?}");
        assert_eq!(r.failed_servers, vec![NodeId(2)]);
    }
    assert_eq!(live_serial(&c, 2, "www"), Some(1));

    // It comes back; its leader reports its stale release; a synchronize job brings it up to date.
    c.start_agent(2).await.unwrap();
    c.wait_segments(LIMIT).await.unwrap();
    wait_live_reported(&c, &[(1, 3), (2, 1), (3, 3), (4, 3)]).await;
    let sync = c.admin.create_job("www", "most", "synchronize").await.unwrap();
    let r = c.admin.wait_run(c.admin.run_job(sync).await.unwrap(), LIMIT).await.unwrap();
    assert_eq!(r.state, RunState::Committed, "{r:#?}");
    assert_eq!(r.applied.keys().copied().collect::<Vec<_>>(), vec![NodeId(2)], "only the lagging server");
    assert_all_live(&c, "www", &staging);
    assert_eq!(live_serial(&c, 2, "www"), Some(3));
    // Now in sync, a second synchronize has nothing to do.
    wait_live_reported(&c, &[(1, 3), (2, 3), (3, 3), (4, 3)]).await;
    let r = c.admin.wait_run(c.admin.run_job(sync).await.unwrap(), LIMIT).await.unwrap();
    assert_eq!(r.state, RunState::Unchanged, "{r:#?}");
    c.stop().await;
}

#[actix_rt::test]
async fn a_ccm_restarted_mid_run_loses_nothing_and_fails_the_run_cleanly() {
    init_logs();
    let tmp = tempfile::tempdir().unwrap();
    let staging = staging(tmp.path(), 24, 4);
    let mut opts = ClusterOptions::new(&tmp.path().join("cluster"), 2, 2);
    opts.tweak_agent = Some(slow_multicast);
    let (mut c, all, _) = published(opts, &staging, Quorum::Count(3)).await;
    let v1 = tmp.path().join("v1");
    copy_tree(&staging, &v1).unwrap();
    let first = c.admin.call("GET", "/api/v1/runs", None).await.unwrap().1;

    corpus::mutate(&staging, 24, &EditSpec { byte_fraction: 0.3, ..EditSpec::default() }).unwrap();
    let run = c.admin.run_job(all).await.unwrap();
    wait_for(&c, run, "distribution", |r| r.state == RunState::Distributing).await;
    c.stop_ccm().await;
    c.start_ccm().await.unwrap();

    // The run was acknowledged, so it is still there, and ends cleanly.
    let r = c.admin.wait_run(run, LIMIT).await.unwrap();
    assert_eq!(r.state, RunState::Failed, "{r:#?}");
    assert!(r.error.as_deref().unwrap_or("").contains("restarted"), "{r:#?}");
    // Nothing went live anywhere.
    assert_all_live(&c, "www", &v1);
    // Every acknowledged record survived.
    let (_, runs) = c.admin.call("GET", "/api/v1/runs", None).await.unwrap();
    for old in first.as_array().unwrap() {
        assert!(runs.as_array().unwrap().contains(old), "{old} lost");
    }
    let (_, jobs) = c.admin.call("GET", "/api/v1/jobs", None).await.unwrap();
    assert_eq!(jobs.as_array().map(Vec::len), Some(2), "{jobs}");
    // And the job runs again, to the end.
    c.wait_segments(LIMIT).await.unwrap();
    let r = c.admin.wait_run(c.admin.run_job(all).await.unwrap(), LIMIT).await.unwrap();
    assert_eq!(r.state, RunState::Committed, "{r:#?}");
    assert_all_live(&c, "www", &staging);
    c.stop().await;
}
