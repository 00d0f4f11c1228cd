//! The scheduler under load on an in-process cluster: 200 jobs over 10
//! sites with overlapping content groups, all due at once. No two
//! conflicting runs may ever overlap, every job must run to its end, and the
//! conflicts must show in the history.

use std::collections::BTreeMap;
use std::time::Duration;

use cmover::clock::unix_ms;
use cmover::local_cluster::{ClusterOptions, LocalCluster};
use cmover::storage::records::{GroupRecord, HistoryRecord, Quorum, RunRecord, RunState};
use serde_json::json;

mod common;

use common::cluster::{init_logs, LIMIT};
use common::wait::wait_every;

#[actix_rt::test]
async fn two_hundred_queued_jobs_never_overlap_when_they_conflict_and_all_finish() {
    init_logs();
    let tmp = tempfile::tempdir().unwrap();
    let c = LocalCluster::start(ClusterOptions::new(&tmp.path().join("cluster"), 2, 2)).await.unwrap();
    c.wait_segments(LIMIT).await.unwrap();
    // 10 sites; each has two groups that share server 3 (so they conflict)
    // and overlap the other sites' groups (which must not conflict).
    for s in 0..10 {
        let staging = tmp.path().join(format!("staging-{s}"));
        std::fs::create_dir_all(staging.join("d")).unwrap();
        std::fs::write(staging.join("index.html"), format!("site {s}")).unwrap();
        std::fs::write(staging.join("d/page.html"), format!("page of {s}")).unwrap();
        let site = format!("site{s}");
        c.admin.create_site(&site, &staging).await.unwrap();
        c.admin.create_group(&format!("{site}-a"), &site, &[1, 2, 3], Quorum::All).await.unwrap();
        c.admin.create_group(&format!("{site}-b"), &site, &[3, 4], Quorum::All).await.unwrap();
    }
    // 20 jobs per site, alternating groups, all due in two seconds.
    let at = unix_ms() + 2000;
    let mut jobs = Vec::new();
    for s in 0..10 {
        for j in 0..20 {
            let group = format!("site{s}-{}", if j % 2 == 0 { "a" } else { "b" });
            let body = json!({"site": format!("site{s}"), "group": group, "kind": "publish",
                              "schedule": {"type": "once", "at_ms": at}});
            let v = c.admin.ok("POST", "/api/v1/jobs", Some(body)).await.unwrap();
            jobs.push(v["id"].as_u64().unwrap());
        }
    }
    assert_eq!(jobs.len(), 200);

    // Wait until every job has one finished run.
    let runs: Vec<RunRecord> =
        wait_every("200 finished runs", LIMIT * 3, Duration::from_millis(250), async || {
            let (_, v) = c.admin.call("GET", "/api/v1/runs?limit=10000", None).await.unwrap();
            let runs: Vec<RunRecord> = serde_json::from_value(v).unwrap();
            let ours = runs.iter().filter(|r| jobs.contains(&r.job.0)).count();
            if ours >= 200 && runs.iter().all(|r| r.state.is_final()) {
                return Ok(runs);
            }
            let done = runs.iter().filter(|r| r.state.is_final() && jobs.contains(&r.job.0)).count();
            Err(format!("only {done} of 200 runs finished"))
        })
        .await;
    let mut per_job: BTreeMap<u64, usize> = BTreeMap::new();
    // (The scheduler's own replicate runs, for servers that a group's
    // publish left without the site, are checked for overlaps too.)
    for r in &runs {
        assert!(matches!(r.state, RunState::Committed | RunState::Unchanged), "{r:#?}");
        if jobs.contains(&r.job.0) {
            *per_job.entry(r.job.0).or_default() += 1;
        }
    }
    assert_eq!(per_job.keys().copied().collect::<Vec<_>>(), jobs, "every job ran");
    assert!(per_job.values().all(|n| *n == 1), "no job fired twice: {per_job:?}");

    // No two runs of one site whose groups share a server overlapped in time.
    let (_, groups) = c.admin.call("GET", "/api/v1/groups", None).await.unwrap();
    let groups: Vec<GroupRecord> = serde_json::from_value(groups).unwrap();
    let servers = |g: &str| groups.iter().find(|x| x.name == g).unwrap().servers.clone();
    let mut overlaps_across_sites = 0;
    for (i, a) in runs.iter().enumerate() {
        for b in &runs[i + 1..] {
            let (a0, a1) = (a.started_ms, a.finished_ms.unwrap());
            let (b0, b1) = (b.started_ms, b.finished_ms.unwrap());
            let overlap = a0 < b1 && b0 < a1;
            let share = servers(&a.group).iter().any(|s| servers(&b.group).contains(s));
            if a.site == b.site && share {
                assert!(!overlap, "conflicting runs overlapped:\n{a:#?}\n{b:#?}");
            } else if overlap {
                overlaps_across_sites += 1;
            }
        }
    }
    // Runs that do not conflict were free to run side by side, and did.
    assert!(overlaps_across_sites > 0, "runs of different sites never ran at the same time");

    // The history shows the conflicts, queued.
    let (_, events) = c.admin.call("GET", "/api/v1/events?kind=conflict&limit=10000", None).await.unwrap();
    let events: Vec<HistoryRecord> = serde_json::from_value(events).unwrap();
    assert!(events.len() >= 100, "{} conflict events", events.len());
    assert!(events.iter().all(|e| e.message.contains("queued")), "{events:#?}");
    c.stop().await;
}
