//! A CCM and 2 segments × 3 agents in one actix system, real UDP and HTTP
//! on 127.0.0.1, temp dirs: publish a generated site, update it (edits,
//! additions, deletions, renames), remove content, roll back. Every live
//! tree must be byte-identical to what was published.

use std::path::Path;

use cmover::corpus::{self, CorpusSpec, EditSpec};
use cmover::local_cluster::{ClusterOptions, LocalCluster};
use cmover::storage::records::{Quorum, RunState};
use cmover::storage::tree::copy_tree;

mod common;

use common::cluster::{assert_all_live, init_logs, tree_bytes, LIMIT};

#[actix_rt::test]
async fn publish_update_remove_and_roll_back_on_two_segments_of_three() {
    init_logs();
    let tmp = tempfile::tempdir().unwrap();
    let staging = tmp.path().join("staging");
    corpus::generate(&staging, 7, &CorpusSpec::small()).unwrap();
    let c = LocalCluster::start(ClusterOptions::new(&tmp.path().join("cluster"), 2, 3)).await.unwrap();
    c.wait_segments(LIMIT).await.unwrap();
    c.admin.create_site("www", &staging).await.unwrap();
    c.admin.create_group("web", "www", &c.ids(), Quorum::All).await.unwrap();
    let job = c.admin.create_job("www", "web", "publish").await.unwrap();

    // 1. First publish: everything is new.
    let r = c.admin.wait_run(c.admin.run_job(job).await.unwrap(), LIMIT).await.unwrap();
    assert_eq!(r.state, RunState::Committed, "{r:#?}");
    assert!(r.failed_servers.is_empty());
    assert_all_live(&c, "www", &staging);

    // 2. Edit, add, delete, rename: a delta goes out.
    corpus::mutate(&staging, 7, &EditSpec::default()).unwrap();
    let r = c.admin.wait_run(c.admin.run_job(job).await.unwrap(), LIMIT).await.unwrap();
    assert_eq!(r.state, RunState::Committed, "{r:#?}");
    let s = r.summary.clone().unwrap();
    assert!(s.files_patched > 0 && s.files_renamed > 0, "{s}");
    let total = tree_bytes(&staging);
    assert!(
        s.assignment_bytes * 5 < total,
        "assignment of {} bytes for a {total}-byte site",
        s.assignment_bytes
    );
    assert_all_live(&c, "www", &staging);
    let v2 = tmp.path().join("v2");
    copy_tree(&staging, &v2).unwrap();
    // The tree: one segment got it from the CCM, the other from that segment's leader or the CCM.
    assert!(r.segments.values().any(|p| p.fetched_from == Some(cmover::protocol::ids::NodeId(0))));

    // 3. Remove content.
    let victim = walkdir::WalkDir::new(&staging)
        .min_depth(1)
        .into_iter()
        .flatten()
        .find(|e| e.file_type().is_dir())
        .unwrap()
        .into_path();
    std::fs::remove_dir_all(&victim).unwrap();
    let r = c.admin.wait_run(c.admin.run_job(job).await.unwrap(), LIMIT).await.unwrap();
    assert_eq!(r.state, RunState::Committed, "{r:#?}");
    assert!(r.summary.unwrap().removed >= 1);
    assert_all_live(&c, "www", &staging);

    // 4. Roll back: every server goes back to the previous release at once.
    let rollback = c.admin.create_job("www", "web", "rollback").await.unwrap();
    let r = c.admin.wait_run(c.admin.run_job(rollback).await.unwrap(), LIMIT).await.unwrap();
    assert_eq!(r.state, RunState::Committed, "{r:#?}");
    assert_eq!((r.serial, r.base_serial), (2, 3));
    assert_eq!(r.content_assignment, None, "a rollback sends no content");
    assert_all_live(&c, "www", &v2);
    for id in c.agents.keys() {
        let live = std::fs::read_link(c.live_dir(*id, "www")).unwrap();
        assert_eq!(live, Path::new("releases/2"), "agent {id}");
    }
    // And publishing again after a rollback works (new serial, delta against the rolled-back release).
    let r = c.admin.wait_run(c.admin.run_job(job).await.unwrap(), LIMIT).await.unwrap();
    assert_eq!(r.state, RunState::Committed, "{r:#?}");
    assert_eq!(r.serial, 4);
    assert_all_live(&c, "www", &staging);
    c.stop().await;
}
