//! Prometheus metrics: one recorder per process, every series labelled with
//! the node that recorded it, and `GET /metrics` on the CCM's and every
//! agent's HTTP server.
//!
//! # One registry, a `node` label
//!
//! The `metrics` facade has one global recorder per process. A production
//! process is one node, but `cmover demo` and the tests run a CCM and many
//! agents in one process (`local_cluster`), so every series carries
//! `node="ccm"` or `node="<agent id>"`, and each node's `/metrics` serves only
//! the series of its own node (filtered at render time). Recording works from
//! any thread (actors, blocking tasks, HTTP workers), which per-thread
//! recorders would not.
//!
//! Names follow Prometheus conventions: counters end in `_total`, durations
//! are histograms in `_seconds`, sizes are `_bytes`. [`NAMES`] lists them all
//! with their help text (also shown as `# HELP` lines).

use std::sync::OnceLock;
use std::time::Duration;

use actix_web::{web, HttpResponse};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::protocol::ids::NodeId;

/// The label value of the CCM's series.
pub const CCM: &str = "ccm";

/// Every metric: name and help text.
pub const NAMES: &[(&str, &str)] = &[
    ("cmover_elections_total", "Elections this node won (it became its segment's leader)."),
    ("cmover_leader_changes_total", "Times this node learnt of a new leader of its segment."),
    (
        "cmover_la_missed_total",
        "Leaders lost because their LeaderAlive messages stopped (la_miss intervals).",
    ),
    ("cmover_registered_members", "Members registered with this node while it leads its segment."),
    (
        "cmover_datagrams_rejected_total",
        "Datagrams dropped by the authentication gate, by channel and reason.",
    ),
    ("cmover_mctp_frames_sent_total", "MCTP frames sent by this node as group leader, all passes."),
    ("cmover_mctp_frames_retransmitted_total", "MCTP frames sent again in passes after the first."),
    ("cmover_mctp_passes_total", "MCTP passes sent by this node as group leader."),
    ("cmover_mctp_nacks_total", "NACKs (status reports naming missing frames) sent by this member."),
    ("cmover_mctp_sessions_total", "MCTP sessions ended, by result (completed, gave_up)."),
    (
        "cmover_hop_bytes_total",
        "Assignment bytes fetched over HTTP by this group leader, by source (ccm, leader).",
    ),
    ("cmover_ccm_egress_bytes_total", "Assignment bytes the CCM's HTTP server sent to group leaders."),
    ("cmover_assignment_apply_seconds", "Time to carry out an assignment on a server, by kind."),
    (
        "cmover_apply_failures_total",
        "Assignments a server failed to carry out (pre-commit hook failures included).",
    ),
    ("cmover_hook_runs_total", "Site hooks run on a server, by hook (pre_commit, post_commit) and result."),
    ("cmover_run_duration_seconds", "Duration of CCM runs from start to end, by kind and final state."),
    ("cmover_runs_total", "CCM runs ended, by kind and final state."),
    ("cmover_jobs", "CCM jobs by the state of their latest run (idle: never run)."),
    ("cmover_conflicts_total", "Runs refused because another run of the same site was in progress."),
    ("cmover_lb_actions_total", "Load-balancer actions, by driver, action (out, in) and result."),
    ("cmover_lb_servers_out", "Servers the CCM holds out of the load balancer's rotation."),
    ("cmover_cache_purges_total", "Cache invalidations sent, by kind (purge, webhook) and result."),
    (
        "cmover_webhook_attempts_total",
        "Webhook POST attempts, by result (ok; error: 5xx or network, retried; failed: 4xx, final).",
    ),
];

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Installs the process's recorder (once; later calls return the same
/// handle). `None` when another recorder was installed first by a program
/// embedding this crate: metrics then go there and `/metrics` says so.
pub fn init() -> Option<&'static PrometheusHandle> {
    HANDLE
        .get_or_init(|| {
            let buckets =
                [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0];
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &buckets)
                .ok()?;
            let recorder = builder.build_recorder();
            let handle = recorder.handle();
            metrics::set_global_recorder(recorder).ok()?;
            for (name, help) in NAMES {
                describe(name, help);
            }
            // Histograms keep raw samples until upkeep folds them in.
            let upkeep = handle.clone();
            let spawned = std::thread::Builder::new().name("metrics-upkeep".into()).spawn(move || loop {
                std::thread::sleep(Duration::from_secs(5));
                upkeep.run_upkeep();
            });
            if let Err(e) = spawned {
                tracing::warn!(error = %e, "no metrics upkeep thread; histograms fold in at each scrape");
            }
            Some(handle)
        })
        .as_ref()
}

fn describe(name: &'static str, help: &'static str) {
    if name.ends_with("_total") {
        metrics::describe_counter!(name, help);
    } else if name.ends_with("_seconds") {
        metrics::describe_histogram!(name, metrics::Unit::Seconds, help);
    } else {
        metrics::describe_gauge!(name, help);
    }
}

/// The `reason` label of a datagram the authentication gate dropped.
pub fn reject_reason(e: &crate::protocol::wire::WireError) -> &'static str {
    use crate::protocol::wire::WireError;
    match e {
        WireError::Malformed(_) | WireError::BadMagic | WireError::Version(_) | WireError::TooLarge(_) => {
            "malformed"
        }
        WireError::BadTag => "bad_tag",
        // Only sealing fails this way; counted if it ever shows.
        WireError::WrongKey { .. } => "wrong_key",
        WireError::Stale { .. } | WireError::BeforeStart { .. } => "stale",
        WireError::Duplicate { .. } => "duplicate",
        WireError::FromFuture { .. } => "from_future",
        WireError::Replayed { .. } => "replayed",
    }
}

/// The `node` label of agent `id`.
pub fn node_label(id: NodeId) -> String {
    id.0.to_string()
}

/// The process's metrics in the Prometheus text format, only the series
/// labelled `node="<node>"` (and their `# HELP`/`# TYPE` lines).
pub fn render(node: &str) -> Option<String> {
    let handle = init()?;
    handle.run_upkeep();
    Some(filter_node(&handle.render(), node))
}

/// Keeps the samples of `text` labelled `node="<node>"`, and the comment
/// lines of the families that keep at least one sample.
pub fn filter_node(text: &str, node: &str) -> String {
    let want = format!("node=\"{}\"", node.replace('\\', "\\\\").replace('"', "\\\""));
    let mut out = String::new();
    let mut comments: Vec<&str> = Vec::new();
    for line in text.lines() {
        if line.starts_with('#') {
            // A family starts with `# HELP name` and/or `# TYPE name`; the
            // comments of a family that kept no sample are dropped.
            let name = line.split_whitespace().nth(2).unwrap_or_default();
            let same = comments.last().is_some_and(|c| c.split_whitespace().nth(2) == Some(name));
            if !(same && line.starts_with("# TYPE")) {
                comments.clear();
            }
            comments.push(line);
            continue;
        }
        if line.trim().is_empty() {
            continue;
        }
        let labelled = line
            .find('{')
            .zip(line.find('}'))
            .is_some_and(|(open, close)| line[open + 1..close].split(',').any(|l| l == want));
        if labelled {
            for c in comments.drain(..) {
                out.push_str(c);
                out.push('\n');
            }
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

/// Sets gauges read from elsewhere just before a scrape.
pub type Refresh = std::sync::Arc<dyn Fn() + Send + Sync>;

#[derive(Clone)]
struct MetricsNode(String, Option<Refresh>);

/// `GET /metrics` for `node`: its series in the Prometheus text format
/// (unauthenticated, like every Prometheus target; it holds counts, no content).
pub fn resource(node: impl Into<String>) -> actix_web::Resource {
    resource_with(node, None)
}

/// [`resource`], calling `refresh` before each scrape.
pub fn resource_with(node: impl Into<String>, refresh: Option<Refresh>) -> actix_web::Resource {
    web::resource("/metrics")
        .app_data(web::Data::new(MetricsNode(node.into(), refresh)))
        .route(web::get().to(serve))
}

async fn serve(node: web::Data<MetricsNode>) -> HttpResponse {
    if let Some(refresh) = &node.1 {
        refresh();
    }
    match render(&node.0) {
        Some(text) => HttpResponse::Ok().content_type("text/plain; version=0.0.4; charset=utf-8").body(text),
        None => HttpResponse::ServiceUnavailable()
            .body("another metrics recorder was installed in this process; metrics go there\n"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filtering_keeps_one_nodes_series_and_their_comments() {
        let text = "# HELP a_total A.\n# TYPE a_total counter\na_total{node=\"1\"} 3\na_total{node=\"11\"} 4\n\n\
                    # HELP b_seconds B.\n# TYPE b_seconds histogram\nb_seconds_bucket{node=\"2\",le=\"1\"} 1\n\
                    b_seconds_sum{node=\"2\"} 0.5\nb_seconds_count{node=\"2\"} 1\n\
                    # TYPE c counter\nc{kind=\"x\",node=\"1\"} 1\n";
        let one = filter_node(text, "1");
        assert_eq!(
            one,
            "# HELP a_total A.\n# TYPE a_total counter\na_total{node=\"1\"} 3\n# TYPE c counter\nc{kind=\"x\",node=\"1\"} 1\n"
        );
        let two = filter_node(text, "2");
        assert!(
            two.starts_with("# HELP b_seconds B.\n# TYPE b_seconds histogram\nb_seconds_bucket"),
            "{two}"
        );
        assert_eq!(two.lines().count(), 5, "{two}");
        assert_eq!(filter_node(text, "3"), "");
    }
}
