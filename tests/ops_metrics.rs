//! `/metrics` on the CCM and on the agents: Prometheus text that a
//! Prometheus parser reads, each node serving its own series, and counters
//! that move during a publish.

use std::collections::BTreeMap;

use cmover::local_cluster::{ClusterOptions, LocalCluster};
use cmover::storage::records::{Quorum, RunState};
use prometheus_parse::{Scrape, Value};

mod common;

use common::cluster::{init_logs, LIMIT};
use common::ops::get;
use common::wait::wait_every;

/// Scrapes `url` and parses it; checks every sample is labelled `node`.
async fn scrape(url: &str, node: &str) -> Scrape {
    let (status, text, headers) = get(&format!("{url}/metrics"), None).await.unwrap();
    assert_eq!(status, 200, "{text}");
    let ctype = headers.get("content-type").unwrap().to_str().unwrap();
    assert!(ctype.starts_with("text/plain; version=0.0.4"), "{ctype}");
    let scrape = Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))).unwrap();
    assert!(!scrape.samples.is_empty(), "{text}");
    for s in &scrape.samples {
        assert_eq!(s.labels.get("node"), Some(node), "{} at {url}: {:?}", s.metric, s.labels);
    }
    scrape
}

/// Sum of a counter's (or gauge's) samples whose labels include `labels`;
/// for a histogram, the sum of its observation counts.
fn total(s: &Scrape, metric: &str, labels: &[(&str, &str)]) -> f64 {
    s.samples
        .iter()
        .filter(|x| x.metric == metric && labels.iter().all(|(k, v)| x.labels.get(k) == Some(*v)))
        .map(|x| match &x.value {
            Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => *v,
            Value::Histogram(b) => b.iter().map(|c| c.count).fold(0.0, f64::max),
            Value::Summary(_) => 0.0,
        })
        .sum()
}

#[actix_rt::test]
async fn metrics_parse_and_move_during_a_publish() {
    init_logs();
    let tmp = tempfile::tempdir().unwrap();
    let staging = tmp.path().join("staging");
    cmover::corpus::generate(&staging, 5, &cmover::corpus::CorpusSpec::small()).unwrap();
    let mut c = LocalCluster::start(ClusterOptions::new(&tmp.path().join("cluster"), 2, 2)).await.unwrap();
    let segments = c.wait_segments(LIMIT).await.unwrap();
    c.admin.create_site("www", &staging).await.unwrap();
    c.admin.create_group("web", "www", &c.ids(), Quorum::All).await.unwrap();
    let job = c.admin.create_job("www", "web", "publish").await.unwrap();

    let agent_url = |id: u64| format!("http://{}", c.agents[&id].http);
    let leader = segments.iter().find(|s| s.name == "seg-1").unwrap().leader.0;
    let member = if leader == 1 { 2 } else { 1 };
    let ccm0 = scrape(&c.url(), "ccm").await;
    let leader0 = scrape(&agent_url(leader), &leader.to_string()).await;
    let member0 = scrape(&agent_url(member), &member.to_string()).await;
    assert!(total(&leader0, "cmover_elections_total", &[]) >= 1.0, "the leader won an election");
    assert!(total(&member0, "cmover_leader_changes_total", &[]) >= 1.0, "the member learnt its leader");
    assert_eq!(total(&ccm0, "cmover_jobs", &[("state", "idle")]), 1.0);

    let r = c.admin.wait_run(c.admin.run_job(job).await.unwrap(), LIMIT).await.unwrap();
    assert_eq!(r.state, RunState::Committed, "{r:#?}");

    let ccm1 = scrape(&c.url(), "ccm").await;
    let leader1 = scrape(&agent_url(leader), &leader.to_string()).await;
    let member1 = scrape(&agent_url(member), &member.to_string()).await;
    let moved = |a: &Scrape, b: &Scrape, m: &str, l: &[(&str, &str)]| total(b, m, l) - total(a, m, l);
    let mut deltas = BTreeMap::new();
    let committed = [("kind", "publish"), ("state", "committed")];
    deltas.insert("ccm runs committed", moved(&ccm0, &ccm1, "cmover_runs_total", &committed));
    deltas.insert("ccm run durations", moved(&ccm0, &ccm1, "cmover_run_duration_seconds", &committed));
    deltas.insert("ccm egress bytes", moved(&ccm0, &ccm1, "cmover_ccm_egress_bytes_total", &[]));
    deltas.insert("leader hop bytes", moved(&leader0, &leader1, "cmover_hop_bytes_total", &[]));
    deltas.insert("leader frames sent", moved(&leader0, &leader1, "cmover_mctp_frames_sent_total", &[]));
    deltas.insert("leader passes", moved(&leader0, &leader1, "cmover_mctp_passes_total", &[]));
    deltas.insert(
        "member content applies",
        moved(&member0, &member1, "cmover_assignment_apply_seconds", &[("kind", "content")]),
    );
    deltas.insert(
        "member commits",
        moved(&member0, &member1, "cmover_assignment_apply_seconds", &[("kind", "commit")]),
    );
    assert!(deltas.values().all(|d| *d > 0.0), "every counter moved: {deltas:#?}");
    assert_eq!(deltas["ccm runs committed"], 1.0, "{deltas:#?}");
    assert_eq!(deltas["member content applies"], 1.0, "{deltas:#?}");
    assert_eq!(total(&ccm1, "cmover_jobs", &[("state", "committed")]), 1.0);
    assert_eq!(total(&ccm1, "cmover_jobs", &[("state", "idle")]), 0.0);
    assert_eq!(total(&member1, "cmover_apply_failures_total", &[]), 0.0);

    // Runs that end at their start count too: a synchronize with every
    // server in sync, and a publish whose group's quorum cannot be met (its
    // only server is offline), which an alert on failed runs must catch.
    let gone = [1, 2, 3, 4].into_iter().find(|id| segments.iter().all(|s| s.leader.0 != *id)).unwrap();
    c.stop_agent(gone).await;
    wait_every(
        format!("server {gone} to be offline"),
        LIMIT,
        std::time::Duration::from_millis(100),
        async || {
            let (_, v) = c.admin.call("GET", &format!("/api/v1/servers/{gone}"), None).await.unwrap();
            if v["online"] == false {
                Ok(())
            } else {
                Err(v.to_string())
            }
        },
    )
    .await;
    c.admin.create_group("ghost", "www", &[gone], Quorum::All).await.unwrap();
    let sync = c.admin.create_job("www", "web", "synchronize").await.unwrap();
    let ghost = c.admin.create_job("www", "ghost", "publish").await.unwrap();
    let r = c.admin.wait_run(c.admin.run_job(sync).await.unwrap(), LIMIT).await.unwrap();
    assert_eq!(r.state, RunState::Unchanged, "{r:#?}");
    let r = c.admin.wait_run(c.admin.run_job(ghost).await.unwrap(), LIMIT).await.unwrap();
    assert_eq!(r.state, RunState::Failed, "{r:#?}");
    assert!(r.error.as_deref().unwrap_or_default().contains("quorum cannot be met"), "{r:#?}");
    assert!(
        r.finished_ms.is_some()
            && r.phases.last().is_some_and(|p| p.name == cmover::protocol::run::PhaseName::Done),
        "{r:#?}"
    );
    let ccm2 = scrape(&c.url(), "ccm").await;
    let unchanged = [("kind", "synchronize"), ("state", "unchanged")];
    assert_eq!(moved(&ccm1, &ccm2, "cmover_runs_total", &unchanged), 1.0);
    let failed = [("kind", "publish"), ("state", "failed")];
    assert_eq!(moved(&ccm1, &ccm2, "cmover_runs_total", &failed), 1.0);
    assert_eq!(moved(&ccm1, &ccm2, "cmover_run_duration_seconds", &failed), 1.0);
    // Help text reaches Prometheus.
    assert!(ccm1.docs.get("cmover_runs_total").is_some_and(|d| d.contains("runs ended")), "{:?}", ccm1.docs);
    c.stop().await;
}
