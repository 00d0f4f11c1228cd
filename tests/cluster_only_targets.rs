//! DESIGN §4 "Only targets": a server that is not among a run's targets
//! stores nothing, applies nothing and switches nothing, even when it shares
//! a segment (and so the data channel) with targets.
//!
//! A CCM and 2 segments × 3 agents in one actix system, real UDP and HTTP on
//! 127.0.0.1: site `www` goes to everyone, then site `bsite`, whose content
//! group is servers 1, 2 and 4, is published. Server 3 sits in segment 1
//! with targets 1 and 2 and hears every datagram of that segment's
//! sessions (the content and the single-datagram commit); servers 5 and 6
//! sit with target 4.

use std::time::{Duration, Instant};

use cmover::corpus::{self, CorpusSpec};
use cmover::local_cluster::{ClusterOptions, LocalCluster};
use cmover::storage::records::{Quorum, RunState};

mod common;

use common::cluster::{assert_all_live, assert_live, init_logs, LIMIT};

const SITE: &str = "bsite";
const TARGETS: [u64; 3] = [1, 2, 4];
const BYSTANDERS: [u64; 3] = [3, 5, 6];

/// The CCM's server records, by id.
async fn servers(c: &LocalCluster) -> Vec<serde_json::Value> {
    let (status, v) = c.admin.call("GET", "/api/v1/servers", None).await.unwrap();
    assert_eq!(status, 200, "{v}");
    v.as_array().cloned().unwrap_or_default()
}

/// Waits until the CCM's records show every target serving `serial` of `SITE`.
async fn wait_targets_reported(c: &LocalCluster, serial: u64) {
    let deadline = Instant::now() + LIMIT;
    loop {
        let all = servers(c).await;
        let reported =
            TARGETS.iter().all(|id| all.iter().any(|s| s["id"] == *id && s["live"][SITE] == serial));
        if reported {
            return;
        }
        assert!(Instant::now() < deadline, "the CCM never learnt that {TARGETS:?} serve {SITE}: {all:?}");
        actix::clock::sleep(Duration::from_millis(100)).await;
    }
}

/// Nothing of `SITE` on any bystander: no site directory, no record.
async fn assert_bystanders_untouched(c: &LocalCluster) {
    for id in BYSTANDERS {
        let root = c.configs[&id].agent.sites_root.join(SITE);
        assert!(
            std::fs::symlink_metadata(&root).is_err(),
            "server {id} is not a target of {SITE} but has {}",
            root.display()
        );
    }
    let all = servers(c).await;
    for id in BYSTANDERS {
        let s = all.iter().find(|s| s["id"] == id).unwrap_or_else(|| panic!("no record of {id}: {all:?}"));
        assert!(s["live"].get(SITE).is_none(), "the CCM lists {SITE} on server {id}: {s}");
    }
    let (status, three) = c.admin.call("GET", "/api/v1/servers/3", None).await.unwrap();
    assert_eq!(status, 200, "{three}");
    assert!(three["live"].get(SITE).is_none(), "GET /api/v1/servers/3 lists {SITE}: {three}");
    assert!(three["live"].get("www").is_some(), "server 3 serves www: {three}");
}

#[actix_rt::test]
async fn only_targets_store_apply_and_switch_a_site_whose_group_is_a_subset_of_a_segment() {
    init_logs();
    let tmp = tempfile::tempdir().unwrap();
    let www = tmp.path().join("www");
    corpus::generate(&www, 3, &CorpusSpec::small()).unwrap();
    let bsite = tmp.path().join("bsite");
    corpus::generate(&bsite, 11, &CorpusSpec::small()).unwrap();
    let c = LocalCluster::start(ClusterOptions::new(&tmp.path().join("cluster"), 2, 3)).await.unwrap();
    c.wait_segments(LIMIT).await.unwrap();

    // Every server serves www.
    c.admin.create_site("www", &www).await.unwrap();
    c.admin.create_group("all", "www", &c.ids(), Quorum::All).await.unwrap();
    let job = c.admin.create_job("www", "all", "publish").await.unwrap();
    let r = c.admin.wait_run(c.admin.run_job(job).await.unwrap(), LIMIT).await.unwrap();
    assert_eq!(r.state, RunState::Committed, "{r:#?}");
    assert_all_live(&c, "www", &www);

    // bsite goes to 1, 2 and 4 only.
    c.admin.create_site(SITE, &bsite).await.unwrap();
    c.admin.create_group("b", SITE, &TARGETS, Quorum::All).await.unwrap();
    let job = c.admin.create_job(SITE, "b", "publish").await.unwrap();
    let r = c.admin.wait_run(c.admin.run_job(job).await.unwrap(), LIMIT).await.unwrap();
    assert_eq!(r.state, RunState::Committed, "{r:#?}");
    assert!(r.failed_servers.is_empty(), "{r:#?}");
    assert_live(&c, &TARGETS, SITE, &bsite);
    wait_targets_reported(&c, r.serial).await;
    assert_bystanders_untouched(&c).await;

    // A second publish (a delta, and its commit) changes nothing for them either.
    corpus::mutate(&bsite, 11, &corpus::EditSpec::default()).unwrap();
    let r = c.admin.wait_run(c.admin.run_job(job).await.unwrap(), LIMIT).await.unwrap();
    assert_eq!(r.state, RunState::Committed, "{r:#?}");
    assert_live(&c, &TARGETS, SITE, &bsite);
    wait_targets_reported(&c, r.serial).await;
    assert_bystanders_untouched(&c).await;
    c.stop().await;
}
