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
    let (sent, reports) =
        seg.move_and_collect(AssignmentSerial(7), &source, hash, Duration::from_secs(300)).await;
    eprintln!("mctp outcome: passes {} frames {} sent {}", sent.passes, sent.frames_needed, sent.frames_sent);
    assert!(sent.passes >= 2, "5 % loss needs retransmission passes");
    assert!(sent.frames_sent < 2 * u64::from(sent.frames_needed), "{sent:?}");
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

/// Patent: "The session information sent by the GL can also be sent in the
/// same message as the periodic LeaderAlive"; members that already hold the
/// assignment answer "complete" and are left out.
#[actix_rt::test]
async fn piggy_backed_announce_and_members_that_already_hold_it() {
    use cmover::actors::multicast_receiver::{AnnounceHeard, MarkHeld};
    use cmover::actors::multicast_sender::{SendAssignment, TakeAnnounce};
    use cmover::protocol::mctp::Message;

    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("source.assignment");
    let hash = write_random_file(&source, 300_000, 5);
    let mut cfg = SegmentConfig::new(3, Net::Unicast, dir.path());
    // A slow announce cadence on the data channel, so the piggy-backed
    // announce is what the members act on first.
    cfg.sender.announce_count = 3;
    cfg.sender.announce_interval = Duration::from_millis(300);
    let mut seg = start_segment(cfg);
    let a = AssignmentSerial(11);
    let holder = seg.members[0].0;
    seg.members[0].1.do_send(MarkHeld { assignment: a, hash });
    let targets: Vec<_> = seg.members.iter().map(|(n, _, _)| *n).collect();
    seg.leader
        .send(SendAssignment { assignment: a, path: source.clone(), hash, targets, progress: None })
        .await
        .unwrap()
        .unwrap();
    // What an elector would do on each LeaderAlive: take the announce, put
    // its bytes in the LA, and the members' electors hand it on.
    let announce = seg.leader.send(TakeAnnounce).await.unwrap().expect("a session runs");
    assert_eq!(announce.assignment, a);
    let bytes = Message::Announce(announce).to_bytes();
    let Ok(Message::Announce(decoded)) = Message::decode(&bytes) else {
        panic!("announce bytes do not decode")
    };
    for (_, m, _) in &seg.members {
        m.do_send(AnnounceHeard { leader: LEADER, announce: decoded.clone() });
    }
    let sent = recv(&mut seg.sent, "AssignmentSent", Duration::from_secs(60)).await.outcome;
    assert!(sent.completed, "{sent:?}");
    assert_eq!(sent.already_had, [holder], "{sent:?}");
    assert_eq!(sent.acked.len(), 2, "{sent:?}");
    for _ in 0..2 {
        let r = recv(&mut seg.received, "AssignmentReceived", Duration::from_secs(60)).await;
        let file = r.result.unwrap();
        assert!(same_file(&file.path, &source));
    }
    assert!(seg.received.try_recv().is_err(), "the holder received it again");
}
