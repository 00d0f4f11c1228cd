//! Every job kind end to end, each on its own in-process cluster (a CCM and
//! agents in one actix system, real UDP and HTTP on 127.0.0.1): publish with
//! policies, replicate to a new server and synchronize a lagging one (both
//! started by the scheduler), restore a checkpoint, roll back, switch,
//! remove, hot, and cancelling a run.

use std::path::Path;
use std::time::Duration;

use cmover::corpus::{self, EditSpec};
use cmover::local_cluster::{ClusterOptions, LocalCluster};
use cmover::protocol::ids::NodeId;
use cmover::storage::records::{JobKind, Quorum, RunRecord, RunState};
use cmover::storage::tree::{compare_trees, copy_tree};
use serde_json::json;

mod common;

use common::cluster::{
    assert_all_live, assert_live, init_logs, live_serial, published, slow_multicast, staging, wait_for,
    wait_live_reported, LIMIT,
};
use common::wait::wait_every;

/// Creates a job from its JSON definition; returns its id.
async fn job(c: &LocalCluster, body: serde_json::Value) -> u64 {
    let v = c.admin.ok("POST", "/api/v1/jobs", Some(body)).await.unwrap();
    v["id"].as_u64().unwrap()
}

/// Runs job `id` now and waits for the run to end.
async fn run(c: &LocalCluster, id: u64) -> RunRecord {
    c.admin.wait_run(c.admin.run_job(id).await.unwrap(), LIMIT).await.unwrap()
}

/// Waits until a run of `kind` started by the scheduler has done something
/// (ended other than `unchanged`); returns the oldest such run.
async fn scheduled_run(c: &LocalCluster, kind: JobKind) -> RunRecord {
    let what = format!("the scheduler to start a {kind:?} run");
    wait_every(what, LIMIT, Duration::from_millis(200), async || {
        let (_, runs) = c.admin.call("GET", "/api/v1/runs", None).await.unwrap();
        let runs: Vec<RunRecord> = serde_json::from_value(runs).unwrap();
        let done = |r: &RunRecord| {
            r.kind == kind && r.reason == "trigger" && r.state.is_final() && r.state != RunState::Unchanged
        };
        runs.iter().rev().find(|r| done(r)).cloned().ok_or_else(|| format!("{runs:#?}"))
    })
    .await
}

fn opts(tmp: &Path) -> ClusterOptions {
    ClusterOptions::new(&tmp.join("cluster"), 2, 2)
}

#[actix_rt::test]
async fn publish_honours_the_job_policies() {
    init_logs();
    let tmp = tempfile::tempdir().unwrap();
    let staging = staging(tmp.path(), 31, 1);
    std::fs::write(staging.join("debug.log"), "not for the servers").unwrap();
    let c = LocalCluster::start(opts(tmp.path())).await.unwrap();
    c.wait_segments(LIMIT).await.unwrap();
    c.admin.create_site("www", &staging).await.unwrap();
    c.admin.create_group("web", "www", &c.ids(), Quorum::Count(3)).await.unwrap();
    let id = job(
        &c,
        json!({"site": "www", "group": "web", "kind": "publish",
               "policy": {"exclude": ["*.log"], "compress_exclude": ["*"], "encrypt": true,
                          "bandwidth": 50_000_000, "quorum": {"type": "all"}}}),
    )
    .await;
    let r = run(&c, id).await;
    assert_eq!(r.state, RunState::Committed, "{r:#?}");
    let expected = tmp.path().join("expected");
    copy_tree(&staging, &expected).unwrap();
    std::fs::remove_file(expected.join("debug.log")).unwrap();
    assert_all_live(&c, "www", &expected);
    let s = r.summary.unwrap();
    assert!(s.data_stored_bytes >= s.data_raw_bytes, "nothing compressed: {s:?}");
    // The same content under the default policy compresses.
    c.admin.create_site("www2", &staging).await.unwrap();
    c.admin.create_group("web2", "www2", &c.ids(), Quorum::All).await.unwrap();
    let plain = c.admin.create_job("www2", "web2", "publish").await.unwrap();
    let s = run(&c, plain).await.summary.unwrap();
    assert!(s.data_stored_bytes < s.data_raw_bytes, "compressed by default: {s:?}");
    c.stop().await;
}

#[actix_rt::test]
async fn a_server_added_to_a_group_is_replicated_by_the_scheduler() {
    init_logs();
    let tmp = tempfile::tempdir().unwrap();
    let staging = staging(tmp.path(), 32, 1);
    let c = LocalCluster::start(opts(tmp.path())).await.unwrap();
    c.wait_segments(LIMIT).await.unwrap();
    c.admin.create_site("www", &staging).await.unwrap();
    c.admin.create_group("web", "www", &[1, 2, 3], Quorum::All).await.unwrap();
    let publish = c.admin.create_job("www", "web", "publish").await.unwrap();
    assert_eq!(run(&c, publish).await.state, RunState::Committed);
    assert_live(&c, &[1, 2, 3], "www", &staging);
    assert_eq!(live_serial(&c, 4, "www"), None);

    // Server 4 joins the group: the scheduler replicates the live release to it.
    c.admin.ok("PUT", "/api/v1/groups/web", Some(json!({"servers": [1, 2, 3, 4]}))).await.unwrap();
    let r = scheduled_run(&c, JobKind::Replicate).await;
    assert_eq!(r.state, RunState::Committed, "{r:#?}");
    assert_eq!(r.applied.keys().copied().collect::<Vec<_>>(), vec![NodeId(4)], "only the new server");
    assert_all_live(&c, "www", &staging);
    assert_eq!(live_serial(&c, 4, "www"), Some(1));
    c.stop().await;
}

#[actix_rt::test]
async fn a_lagging_server_is_synchronized_by_the_scheduler() {
    init_logs();
    let tmp = tempfile::tempdir().unwrap();
    let staging = staging(tmp.path(), 33, 1);
    let (mut c, _, most) = published(opts(tmp.path()), &staging, Quorum::Count(3)).await;
    c.stop_agent(2).await;
    c.wait_segments(LIMIT).await.unwrap();
    corpus::mutate(&staging, 1, &EditSpec::default()).unwrap();
    let r = run(&c, most).await;
    assert_eq!((r.state, r.failed_servers.clone()), (RunState::Committed, vec![NodeId(2)]), "{r:#?}");

    // It comes back with release 1; the scheduler brings it to release 2 by itself.
    c.start_agent(2).await.unwrap();
    let r = scheduled_run(&c, JobKind::Synchronize).await;
    assert_eq!(r.state, RunState::Committed, "{r:#?}");
    assert_eq!(r.applied.keys().copied().collect::<Vec<_>>(), vec![NodeId(2)], "only the lagging server");
    assert_all_live(&c, "www", &staging);
    assert_eq!(live_serial(&c, 2, "www"), Some(2));
    c.stop().await;
}

#[actix_rt::test]
async fn a_checkpoint_is_restored_as_a_new_release() {
    init_logs();
    let tmp = tempfile::tempdir().unwrap();
    let staging = staging(tmp.path(), 34, 1);
    let (c, all, _) = published(opts(tmp.path()), &staging, Quorum::All).await;
    let v1 = tmp.path().join("v1");
    copy_tree(&staging, &v1).unwrap();
    let ck = c.admin.ok("POST", "/api/v1/checkpoints", Some(json!({"site": "www"}))).await.unwrap();
    assert_eq!(ck["serial"], 1, "{ck}");
    let id = ck["id"].as_u64().unwrap();

    corpus::mutate(&staging, 2, &EditSpec::default()).unwrap();
    assert_eq!(run(&c, all).await.state, RunState::Committed);
    assert_all_live(&c, "www", &staging);

    let v = c
        .admin
        .ok("POST", &format!("/api/v1/checkpoints/www/{id}/restore"), Some(json!({"group": "all"})))
        .await
        .unwrap();
    let r = c.admin.wait_run(v["run"].as_u64().unwrap(), LIMIT).await.unwrap();
    assert_eq!((r.state, r.kind, r.serial), (RunState::Committed, JobKind::Restore, 3), "{r:#?}");
    assert_all_live(&c, "www", &v1);
    // The snapshot log since the checkpoint lists both releases made after it.
    let view = c.admin.ok("GET", &format!("/api/v1/checkpoints/www/{id}"), None).await.unwrap();
    let serials: Vec<u64> =
        view["snapshots_since"].as_array().unwrap().iter().map(|s| s["serial"].as_u64().unwrap()).collect();
    assert_eq!(serials, vec![2, 3], "{view}");
    c.stop().await;
}

#[actix_rt::test]
async fn rollback_and_switch_move_between_held_releases() {
    init_logs();
    let tmp = tempfile::tempdir().unwrap();
    let staging = staging(tmp.path(), 35, 1);
    let (c, all, _) = published(opts(tmp.path()), &staging, Quorum::All).await;
    let v1 = tmp.path().join("v1");
    copy_tree(&staging, &v1).unwrap();
    corpus::mutate(&staging, 3, &EditSpec::default()).unwrap();
    assert_eq!(run(&c, all).await.state, RunState::Committed);

    let back = c.admin.create_job("www", "all", "rollback").await.unwrap();
    let r = run(&c, back).await;
    assert_eq!((r.state, r.serial), (RunState::Committed, 1), "{r:#?}");
    assert_all_live(&c, "www", &v1);

    let switch =
        job(&c, json!({"site": "www", "group": "all", "kind": "switch", "params": {"serial": 2}})).await;
    let r = run(&c, switch).await;
    assert_eq!((r.state, r.serial, r.kind), (RunState::Committed, 2, JobKind::Switch), "{r:#?}");
    assert_all_live(&c, "www", &staging);
    assert_eq!(live_serial(&c, 1, "www"), Some(2));
    // Switching to the live release, or to one nobody holds, is refused.
    let (status, body) = c.admin.call("POST", &format!("/api/v1/jobs/{switch}/run"), None).await.unwrap();
    assert_eq!(status, 409, "{body}");
    let gone =
        job(&c, json!({"site": "www", "group": "all", "kind": "switch", "params": {"serial": 9}})).await;
    let (status, body) = c.admin.call("POST", &format!("/api/v1/jobs/{gone}/run"), None).await.unwrap();
    assert_eq!(status, 409, "{body}");
    assert!(body["error"].as_str().unwrap().contains("not held"), "{body}");
    c.stop().await;
}

#[actix_rt::test]
async fn remove_deletes_the_named_paths_as_a_new_release() {
    init_logs();
    let tmp = tempfile::tempdir().unwrap();
    let staging = staging(tmp.path(), 36, 1);
    let (c, _, _) = published(opts(tmp.path()), &staging, Quorum::All).await;
    let dir = std::fs::read_dir(&staging)
        .unwrap()
        .map(|e| e.unwrap())
        .find(|e| e.file_type().unwrap().is_dir())
        .expect("the corpus has a directory")
        .file_name()
        .into_string()
        .unwrap();
    let remove =
        job(&c, json!({"site": "www", "group": "all", "kind": "remove", "params": {"paths": [dir]}})).await;
    let r = run(&c, remove).await;
    assert_eq!((r.state, r.serial), (RunState::Committed, 2), "{r:#?}");
    let expected = tmp.path().join("expected");
    copy_tree(&staging, &expected).unwrap();
    std::fs::remove_dir_all(expected.join(&dir)).unwrap();
    assert_all_live(&c, "www", &expected);
    // A path that does not exist fails the run; nothing changes.
    let bad =
        job(&c, json!({"site": "www", "group": "all", "kind": "remove", "params": {"paths": ["no/such"]}}))
            .await;
    let r = run(&c, bad).await;
    assert_eq!(r.state, RunState::Failed, "{r:#?}");
    assert_all_live(&c, "www", &expected);
    c.stop().await;
}

#[actix_rt::test]
async fn hot_pushes_named_files_to_more_servers() {
    init_logs();
    let tmp = tempfile::tempdir().unwrap();
    let staging = staging(tmp.path(), 37, 1);
    let c = LocalCluster::start(opts(tmp.path())).await.unwrap();
    c.wait_segments(LIMIT).await.unwrap();
    c.admin.create_site("www", &staging).await.unwrap();
    c.admin.create_group("web", "www", &[1, 3], Quorum::All).await.unwrap();
    let publish = c.admin.create_job("www", "web", "publish").await.unwrap();
    assert_eq!(run(&c, publish).await.state, RunState::Committed);
    let file = std::fs::read_dir(&staging)
        .unwrap()
        .map(|e| e.unwrap())
        .find(|e| e.file_type().unwrap().is_file())
        .expect("the corpus has a top-level file")
        .file_name()
        .into_string()
        .unwrap();
    let hot = job(
        &c,
        json!({"site": "www", "group": "web", "kind": "hot", "params": {"paths": [file], "extra_servers": 2}}),
    )
    .await;
    let r = run(&c, hot).await;
    assert_eq!(r.state, RunState::Committed, "{r:#?}");
    assert_eq!(r.applied.keys().map(|n| n.0).collect::<Vec<_>>(), vec![2, 4], "{r:#?}");
    let only = tmp.path().join("only");
    std::fs::create_dir_all(&only).unwrap();
    std::fs::copy(staging.join(&file), only.join(&file)).unwrap();
    let mtime =
        filetime::FileTime::from_last_modification_time(&std::fs::metadata(staging.join(&file)).unwrap());
    filetime::set_file_mtime(only.join(&file), mtime).unwrap();
    assert_live(&c, &[2, 4], "www", &only);
    assert_live(&c, &[1, 3], "www", &staging);
    c.stop().await;
}

#[actix_rt::test]
async fn a_cancelled_run_leaves_every_server_on_its_release() {
    init_logs();
    let tmp = tempfile::tempdir().unwrap();
    let staging = staging(tmp.path(), 38, 4);
    let mut o = opts(tmp.path());
    o.tweak_agent = Some(slow_multicast);
    let (c, all, _) = published(o, &staging, Quorum::All).await;
    let v1 = tmp.path().join("v1");
    copy_tree(&staging, &v1).unwrap();
    corpus::mutate(&staging, 4, &EditSpec { byte_fraction: 0.5, ..EditSpec::default() }).unwrap();
    let id = c.admin.run_job(all).await.unwrap();
    wait_for(&c, id, "distribution", |r| r.state == RunState::Distributing).await;
    let (status, body) = c.admin.call("POST", &format!("/api/v1/runs/{id}/cancel"), None).await.unwrap();
    assert_eq!(status, 202, "{body}");
    let r = c.admin.wait_run(id, LIMIT).await.unwrap();
    assert_eq!(r.state, RunState::Cancelled, "{r:#?}");
    assert_all_live(&c, "www", &v1);
    wait_live_reported(&c, &[(1, 1), (2, 1), (3, 1), (4, 1)]).await;
    assert!(!compare_trees(&c.live_dir(1, "www"), &staging).unwrap().is_empty(), "the edit did not go out");
    c.stop().await;
}

/// A shadow copy that fell behind the live release (its update failed)
/// must not be the base of the next delta: that publish sends everything,
/// and the one after is a delta again.
#[actix_rt::test]
async fn a_shadow_copy_behind_the_live_release_makes_the_next_publish_full() {
    init_logs();
    let tmp = tempfile::tempdir().unwrap();
    let staging = staging(tmp.path(), 35, 1);
    let c = LocalCluster::start(opts(tmp.path())).await.unwrap();
    c.wait_segments(LIMIT).await.unwrap();
    c.admin.create_site("www", &staging).await.unwrap();
    c.admin.create_group("web", "www", &c.ids(), Quorum::All).await.unwrap();
    let id = c.admin.create_job("www", "web", "publish").await.unwrap();
    let r1 = run(&c, id).await;
    assert_eq!(r1.state, RunState::Committed, "{r1:#?}");
    // The shadow loses its live release, as if its commit had failed.
    let shadow_live = tmp.path().join("cluster/ccm/shadow/www/live");
    std::fs::remove_file(&shadow_live).unwrap();
    std::fs::write(staging.join("new.html"), "release 2").unwrap();
    let r2 = run(&c, id).await;
    assert_eq!(r2.state, RunState::Committed, "{r2:#?}");
    assert_eq!((r2.serial, r2.base_serial), (2, 0), "a full assignment: {r2:#?}");
    assert_all_live(&c, "www", &staging);
    std::fs::write(staging.join("new.html"), "release 3").unwrap();
    let r3 = run(&c, id).await;
    assert_eq!(r3.state, RunState::Committed, "{r3:#?}");
    assert_eq!((r3.serial, r3.base_serial), (3, 2), "a delta again: {r3:#?}");
    assert_all_live(&c, "www", &staging);
    c.stop().await;
}
