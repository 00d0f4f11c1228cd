//! A group leader and 8 members on real UDP (127.0.0.1, unicast fan-out)
//! move a 20 MB assignment with 5 % of datagrams dropped at every receiver;
//! the report collector then names all 8.

mod common;

use std::time::Duration;

use cmover::protocol::ids::AssignmentSerial;
use common::mctp_cluster::*;

#[actix_rt::test]
async fn leader_and_8_members_move_20_mb_with_5_percent_drops() {
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("source.assignment");
    let hash = write_random_file(&source, 20_000_000, 20);
    let mut cfg = SegmentConfig::new(8, Net::Unicast, dir.path());
    cfg.member_drop = 0.05;
    cfg.leader_drop = 0.05;
    cfg.sender.rate_max = 40_000_000;
    let mut seg = start_segment(cfg);
    let (sent, reports) = seg
        .move_and_collect(AssignmentSerial(7), &source, hash, Duration::from_secs(300))
        .await;
    eprintln!(
        "mctp outcome: passes {} frames {} sent {}",
        sent.passes, sent.frames_needed, sent.frames_sent
    );
    assert!(sent.passes >= 2, "5 % loss needs retransmission passes");
    assert!(
        sent.frames_sent < 2 * u64::from(sent.frames_needed),
        "{sent:?}"
    );
    let mut members: Vec<_> = seg.members.iter().map(|(n, _, _)| *n).collect();
    members.sort();
    assert_eq!(reports.succeeded, members, "{reports:?}");
    assert!(reports.failed.is_empty() && reports.silent.is_empty());
    // The injected loss really happened at every member.
    for ch in &seg.member_channels {
        let s = ch.stats();
        assert!(s.dropped > 0, "{s:?}");
        assert_eq!(s.rejected, 0, "{s:?}");
    }
    // No partial files are left behind.
    for (_, _, d) in &seg.members {
        for e in std::fs::read_dir(d).unwrap() {
            let name = e.unwrap().file_name();
            assert!(!name.to_string_lossy().ends_with(".part"), "{name:?} left");
        }
    }
}
