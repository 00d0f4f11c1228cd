//! Shared by the in-process cluster tests (`cmover::local_cluster`).

#![allow(dead_code)]

use std::path::Path;
use std::time::Duration;

use cmover::local_cluster::LocalCluster;
use cmover::storage::tree::compare_trees;

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
