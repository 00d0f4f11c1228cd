//! Shared by the in-process cluster tests (`cmover::local_cluster`).

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use bytesize::ByteSize;
use cmover::config::Config;
use cmover::corpus::{self, CorpusSpec};
use cmover::local_cluster::{ClusterOptions, LocalCluster};
use cmover::storage::records::{Quorum, RunRecord, RunState};
use cmover::storage::tree::compare_trees;

use super::wait::wait_every;

/// Generous: cluster tests must pass on a loaded 2-core machine.
pub const LIMIT: Duration = Duration::from_secs(120);

pub fn init_logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

/// Every agent in `ids` serves exactly `expected` as `site`.
pub fn assert_live(c: &LocalCluster, ids: &[u64], site: &str, expected: &Path) {
    for id in ids {
        let live = c.live_dir(*id, site);
        let diffs = compare_trees(&live, expected).unwrap_or_else(|e| panic!("agent {id}: {e}"));
        assert!(diffs.is_empty(), "agent {id}: {:?}", &diffs[..diffs.len().min(5)]);
    }
}

/// Every running agent serves exactly `expected` as `site`.
pub fn assert_all_live(c: &LocalCluster, site: &str, expected: &Path) {
    let ids: Vec<u64> = c.agents.keys().copied().collect();
    assert_live(c, &ids, site, expected);
}

/// The release agent `id` serves for `site` (None: nothing live).
pub fn live_serial(c: &LocalCluster, id: u64, site: &str) -> Option<u64> {
    let link = std::fs::read_link(c.live_dir(id, site)).ok()?;
    link.file_name()?.to_str()?.parse().ok()
}

/// Bytes of regular files under `root`.
pub fn tree_bytes(root: &Path) -> u64 {
    walkdir::WalkDir::new(root)
        .into_iter()
        .flatten()
        .filter_map(|e| e.metadata().ok())
        .filter(|m| m.is_file())
        .map(|m| m.len())
        .sum()
}

/// Multicast slowly, so that a distribution lasts long enough to be interrupted.
pub fn slow_multicast(_id: u64, c: &mut Config) {
    c.mctp.rate = ByteSize::mb(3);
    c.mctp.rate_max = ByteSize::mb(3);
    c.mctp.rate_min = ByteSize::mb(1);
}

/// A site of about `large_mb` MB in `dir/staging`.
pub fn staging(dir: &Path, seed: u64, large_mb: usize) -> PathBuf {
    let staging = dir.join("staging");
    let spec = CorpusSpec { large_files: 2, large_size: large_mb << 19, ..CorpusSpec::small() };
    corpus::generate(&staging, seed, &spec).unwrap();
    staging
}

/// Polls run `run` until `cond` holds; fails if the run ends first.
pub async fn wait_for(
    c: &LocalCluster,
    run: u64,
    what: &str,
    cond: impl Fn(&RunRecord) -> bool,
) -> RunRecord {
    wait_every(format!("run {run}: {what}"), LIMIT, Duration::from_millis(10), async || {
        let r = c.admin.run(run).await.ok()?;
        if cond(&r) {
            return Some(r);
        }
        assert!(!r.state.is_final(), "run {run} ended before {what}: {r:#?}");
        None
    })
    .await
}

/// Builds a cluster, creates site `www` from `staging`, groups `all` (every
/// server, quorum all) and `most` (quorum `most`), and publishes once to `all`.
/// Returns the cluster and the publish jobs of both groups.
pub async fn published(opts: ClusterOptions, staging: &Path, most: Quorum) -> (LocalCluster, u64, u64) {
    let c = LocalCluster::start(opts).await.unwrap();
    c.wait_segments(LIMIT).await.unwrap();
    c.admin.create_site("www", staging).await.unwrap();
    c.admin.create_group("all", "www", &c.ids(), Quorum::All).await.unwrap();
    c.admin.create_group("most", "www", &c.ids(), most).await.unwrap();
    let all = c.admin.create_job("www", "all", "publish").await.unwrap();
    let most = c.admin.create_job("www", "most", "publish").await.unwrap();
    let r = c.admin.wait_run(c.admin.run_job(all).await.unwrap(), LIMIT).await.unwrap();
    assert_eq!(r.state, RunState::Committed, "{r:#?}");
    assert_all_live(&c, "www", staging);
    (c, all, most)
}

/// Waits until the CCM's server records show these (server, live release of `www`) pairs.
pub async fn wait_live_reported(c: &LocalCluster, want: &[(u64, u64)]) {
    wait_every(format!("the CCM to learn {want:?}"), LIMIT, Duration::from_millis(100), async || {
        let (_, servers) = c.admin.call("GET", "/api/v1/servers", None).await.unwrap();
        let all = want.iter().all(|(id, serial)| {
            servers
                .as_array()
                .is_some_and(|a| a.iter().any(|s| s["id"] == *id && s["live"]["www"] == *serial))
        });
        if all {
            Ok(())
        } else {
            Err(servers.to_string())
        }
    })
    .await
}
