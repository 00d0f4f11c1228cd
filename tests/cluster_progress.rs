//! What an operator sees while a run moves and after it (DESIGN §4 step 7,
//! the run page): the group leaders' progress reaches the run's record
//! before the release goes live, and the content wave's per-segment
//! figures (bytes, frames, passes, times) stay in the record after the
//! commit wave, which is kept beside them.

use cmover::local_cluster::{ClusterOptions, LocalCluster};
use cmover::protocol::api::LivePhase;
use cmover::storage::records::{Quorum, RunState, SegmentState};

mod common;

use common::cluster::{assert_all_live, init_logs, slow_multicast, staging, wait_for, LIMIT};

#[actix_rt::test]
async fn progress_shows_while_data_moves_and_the_content_figures_stay_after_the_commit() {
    init_logs();
    let tmp = tempfile::tempdir().unwrap();
    let staging = staging(tmp.path(), 7, 8);
    let mut opts = ClusterOptions::new(&tmp.path().join("cluster"), 2, 2);
    opts.tweak_agent = Some(slow_multicast);
    let c = LocalCluster::start(opts).await.unwrap();
    c.wait_segments(LIMIT).await.unwrap();
    c.admin.create_site("www", &staging).await.unwrap();
    c.admin.create_group("all", "www", &c.ids(), Quorum::All).await.unwrap();
    let job = c.admin.create_job("www", "all", "publish").await.unwrap();
    let run = c.admin.run_job(job).await.unwrap();

    // While the multicast runs, a leader's report says how far it is.
    let r = wait_for(&c, run, "a leader's progress while the content moves", |r| {
        r.segments.values().any(|p| {
            p.reported_ms.is_none()
                && p.live.is_some_and(|l| l.phase == LivePhase::Sending && l.frames > 0 && l.missing > 0)
        })
    })
    .await;
    assert!(r.switched.is_empty(), "nothing is switched while the content moves: {r:#?}");
    let live = r.segments.values().find_map(|p| p.live).unwrap();
    assert_eq!(live.fetched, live.size, "a sending leader holds the whole copy: {live:?}");
    // The segment's two targets: the leader, and the member still receiving.
    assert_eq!((live.targets, live.receiving), (2, 1), "{live:?}");

    let r = c.admin.wait_run(run, LIMIT).await.unwrap();
    assert_eq!(r.state, RunState::Committed, "{r:#?}");
    assert_all_live(&c, "www", &staging);
    assert_eq!(r.segments.len(), 2);
    for (name, p) in &r.segments {
        // The content wave's figures, after the commit.
        let d = p.delivery.unwrap_or_else(|| panic!("{name}: no delivery figures after the commit: {r:#?}"));
        assert!(d.bytes == live.size && d.frames_needed > 0, "{name}: {d:?}");
        assert!(d.frames_sent >= u64::from(d.frames_needed) && d.passes >= 1, "{name}: {d:?}");
        assert_eq!(p.state, SegmentState::Reported, "{name}");
        // The commit wave, beside them, later.
        let commit = r.control_segments.get(name).unwrap_or_else(|| panic!("{name}: no commit wave: {r:#?}"));
        assert_eq!(commit.state, SegmentState::Reported, "{name}");
        let (notified, reported) = (p.notified_ms.unwrap(), p.reported_ms.unwrap());
        assert!(
            notified <= reported && reported <= commit.notified_ms.unwrap(),
            "{name}: {p:?} then {commit:?}"
        );
    }
    c.stop().await;
}
