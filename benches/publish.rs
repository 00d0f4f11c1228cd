//! Publish benchmark: in-process clusters on 127.0.0.1 (`local_cluster`),
//! against rsync, measured in the same run.
//!
//! `cargo bench --bench publish` (needs `rsync`). Options: `--size-mb N`
//! (site size, default 20), `--runs N` (timed updates, default 5),
//! `--max-segments N` (default 8), `--per-segment N` (default 2).
//!
//! 1. CCM egress: for 1, 2, 4, 8 segments, a full publish and then a ~1 %
//!    update; the bytes the CCM's HTTP server sent (assignments, commits)
//!    against `fanout × assignment size` (the store-and-forward ideal) and
//!    against what an rsync from the CCM to every server would send
//!    (`rsync --stats` "Total bytes sent" to one server, times the servers).
//! 2. Wall time on 2 segments × 3 agents: from `POST /jobs/{id}/run` to the
//!    run committed (live everywhere), against six `rsync -a -z
//!    --no-whole-file --delete` to six directories in parallel (the same
//!    change; both end identical to staging, which is checked). Medians.

mod common;

use common::{arg, median};

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use cmover::corpus::{self, CorpusSpec, EditSpec};
use cmover::local_cluster::{ClusterOptions, LocalCluster};
use cmover::storage::records::{Quorum, RunRecord, RunState};
use cmover::storage::tree::compare_trees;

const LIMIT: Duration = Duration::from_secs(600);

fn rsync_args() -> [&'static str; 5] {
    ["-a", "-z", "--no-whole-file", "--delete", "--stats"]
}

/// rsync `src/` to `dest/`; returns "Total bytes sent".
fn rsync(src: &Path, dest: &Path) -> u64 {
    let out = Command::new("rsync")
        .args(rsync_args())
        .arg(format!("{}/", src.display()))
        .arg(format!("{}/", dest.display()))
        .output()
        .expect("rsync (apt-get install -y rsync)");
    assert!(out.status.success(), "rsync: {}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .find_map(|l| l.strip_prefix("Total bytes sent: "))
        .map(|v| v.replace(',', "").trim().parse().unwrap_or(0))
        .unwrap_or(0)
}

/// Six (or n) rsyncs in parallel; returns the wall time.
fn rsync_parallel(src: &Path, dests: &[PathBuf]) -> f64 {
    let t = Instant::now();
    let children: Vec<_> = dests
        .iter()
        .map(|d| {
            Command::new("rsync")
                .args(rsync_args())
                .arg(format!("{}/", src.display()))
                .arg(format!("{}/", d.display()))
                .stdout(std::process::Stdio::null())
                .spawn()
                .expect("rsync")
        })
        .collect();
    for mut c in children {
        assert!(c.wait().unwrap().success());
    }
    t.elapsed().as_secs_f64()
}

fn spec(size_mb: u64) -> CorpusSpec {
    let small = CorpusSpec::small();
    let large_total = (size_mb as usize) << 20;
    CorpusSpec { large_files: 4, large_size: large_total / 4, ..small }
}

async fn publish(c: &LocalCluster, job: u64) -> (RunRecord, f64) {
    let t = Instant::now();
    let r = c.admin.wait_run(c.admin.run_job(job).await.unwrap(), LIMIT).await.unwrap();
    let secs = t.elapsed().as_secs_f64();
    assert_eq!(r.state, RunState::Committed, "{r:#?}");
    assert!(r.failed_servers.is_empty(), "{r:#?}");
    (r, secs)
}

/// Seconds from phase `from` to phase `to` of a run.
fn phase_secs(r: &RunRecord, from: &str, to: &str) -> f64 {
    let at = |name: &str| {
        r.phases
            .iter()
            .find(|p| {
                serde_json::to_value(p.name).ok().and_then(|v| v.as_str().map(|s| s == name)).unwrap_or(false)
            })
            .map_or(0, |p| p.at_ms)
    };
    at(to).saturating_sub(at(from)) as f64 / 1000.0
}

fn verify(c: &LocalCluster, staging: &Path) {
    for id in c.agents.keys() {
        assert!(compare_trees(&c.live_dir(*id, "www"), staging).unwrap().is_empty(), "agent {id}");
    }
}

async fn cluster(dir: &Path, staging: &Path, segments: usize, per: usize) -> (LocalCluster, u64) {
    let c = LocalCluster::start(ClusterOptions::new(dir, segments, per)).await.unwrap();
    c.wait_segments(LIMIT).await.unwrap();
    c.admin.create_site("www", staging).await.unwrap();
    c.admin.create_group("web", "www", &c.ids(), Quorum::All).await.unwrap();
    let job = c.admin.create_job("www", "web", "publish").await.unwrap();
    (c, job)
}

fn egress(c: &LocalCluster) -> u64 {
    c.ccm.as_ref().map_or(0, |h| h.egress.load(Ordering::Relaxed))
}

async fn egress_table(tmp: &Path, size_mb: u64, max_segments: u64, per: usize) {
    println!("\n## CCM egress per publish ({size_mb} MB site, {per} agents per segment, fan-out 2)\n");
    println!("| segments | servers | publish | assignment B | CCM egress B | egress / (fan-out × assignment) | rsync to every server B | egress / rsync |");
    println!("|---:|---:|---|---:|---:|---:|---:|---:|");
    let mut s = 1u64;
    while s <= max_segments {
        let dir = tmp.join(format!("egress-{s}"));
        let staging = dir.join("staging");
        corpus::generate(&staging, 41, &spec(size_mb)).unwrap();
        // rsync baselines: one server's worth, full then update.
        let one = dir.join("rsync-one");
        let full_rsync = rsync(&staging, &one);
        let (c, job) = cluster(&dir.join("cluster"), &staging, s as usize, per).await;
        let servers = c.agents.len() as u64;
        let fanout = 2u64.min(s);
        for step in ["full", "1 % update"] {
            let rsync_bytes = if step == "full" {
                full_rsync
            } else {
                corpus::mutate(&staging, 41, &EditSpec::default()).unwrap();
                rsync(&staging, &one)
            };
            let before = egress(&c);
            let (r, _) = publish(&c, job).await;
            let sent = egress(&c) - before;
            verify(&c, &staging);
            let size = r.summary.map_or(0, |s| s.assignment_bytes);
            println!(
                "| {s} | {servers} | {step} | {size} | {sent} | {:.3} | {} | {:.3} |",
                sent as f64 / (fanout * size) as f64,
                rsync_bytes * servers,
                sent as f64 / (rsync_bytes * servers) as f64
            );
        }
        c.stop().await;
        s *= 2;
    }
}

async fn time_table(tmp: &Path, size_mb: u64, runs: u64) {
    let dir = tmp.join("time");
    let staging = dir.join("staging");
    corpus::generate(&staging, 43, &spec(size_mb)).unwrap();
    let dests: Vec<PathBuf> = (1..=6).map(|i| dir.join(format!("rsync-{i}"))).collect();
    let (c, job) = cluster(&dir.join("cluster"), &staging, 2, 3).await;
    let (full, cm_full) = publish(&c, job).await;
    verify(&c, &staging);
    let rs_full = rsync_parallel(&staging, &dests);
    let (mut cm, mut rs, mut pack, mut dist, mut commit) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for run in 0..runs {
        corpus::mutate(&staging, 100 + run, &EditSpec::default()).unwrap();
        let (r, secs) = publish(&c, job).await;
        verify(&c, &staging);
        cm.push(secs);
        pack.push(phase_secs(&r, "pack", "distribute"));
        dist.push(phase_secs(&r, "distribute", "commit"));
        commit.push(phase_secs(&r, "commit", "done"));
        rs.push(rsync_parallel(&staging, &dests));
        for d in &dests {
            assert!(compare_trees(d, &staging).unwrap().is_empty());
        }
    }
    c.stop().await;
    let (cm_m, rs_m) = (median(cm), median(rs));
    println!(
        "\n## Publish wall time, 2 segments × 3 agents ({size_mb} MB site; updates: median of {runs})\n"
    );
    println!("| publish | Content Mover s | 6 × rsync in parallel s | ratio |");
    println!("|---|---:|---:|---:|");
    println!("| full (first) | {cm_full:.3} | {rs_full:.3} | {:.2} |", cm_full / rs_full);
    println!("| 1 % update | {cm_m:.3} | {rs_m:.3} | {:.2} |", cm_m / rs_m);
    println!("\nContent Mover phases (s): full: pack {:.3}, distribute {:.3}, commit {:.3}; update (medians): pack {:.3}, distribute {:.3}, commit {:.3}",
        phase_secs(&full, "pack", "distribute"), phase_secs(&full, "distribute", "commit"), phase_secs(&full, "commit", "done"),
        median(pack), median(dist), median(commit));
}

fn main() {
    let size_mb = arg("--size-mb", 20);
    let runs = arg("--runs", 5).max(1);
    let max_segments = arg("--max-segments", 8);
    let per = arg("--per-segment", 2) as usize;
    let tmp = tempfile::tempdir().unwrap();
    actix::System::new().block_on(async {
        egress_table(tmp.path(), size_mb, max_segments, per).await;
        time_table(tmp.path(), size_mb, runs).await;
    });
}
