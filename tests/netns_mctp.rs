//! Real multicast: a leader and 3 members in a private network namespace
//! that this test creates, with about 10 % of UDP datagrams dropped by an
//! nftables rule on the namespace's input hook. Needs root (and the `ip` and
//! `nft` tools); without root it is skipped with a reason, unless CI=true,
//! where it must run.
//!
//! The outer test sets the namespace up and runs this same test binary
//! inside it (`ip netns exec`), selecting the ignored inner test, so every
//! socket the segment opens lives in the namespace. The namespace is
//! deleted by a guard, even when the test fails.

mod common;

use std::net::Ipv4Addr;
use std::time::Duration;

use cmover::protocol::ids::AssignmentSerial;
use common::mctp_cluster::*;
use common::net::{can_use_netns, Netns};

const INNER_ENV: &str = "CMOVER_NETNS_INNER";

#[test]
fn multicast_segment_in_a_private_namespace_with_10_percent_loss() {
    if std::env::var_os(INNER_ENV).is_some() {
        return;
    }
    if !can_use_netns() {
        return;
    }
    let ns = Netns::create(&format!("cmover-mctp-{}", std::process::id())).unwrap_or_else(|e| panic!("{e}"));
    let exec = |args: &[&str]| ns.exec(args).unwrap_or_else(|e| panic!("{e}"));
    exec(&["nft", "add", "table", "inet", "loss"]);
    exec(&["nft", "add chain inet loss in { type filter hook input priority 0; policy accept; }"]);
    exec(&["nft", "add rule inet loss in meta l4proto udp numgen random mod 100 < 10 counter drop"]);
    let exe = std::env::current_exe().unwrap();
    let out = ns
        .command(&exe)
        .args(["inner_multicast_segment", "--exact", "--ignored", "--nocapture"])
        .env(INNER_ENV, "1")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("{stdout}\n{stderr}");
    assert!(out.status.success(), "the segment inside the namespace failed");
    assert!(stdout.contains("1 passed"), "the inner test did not run: {stdout}");
    // The drop rule really dropped datagrams. It counts packets as the input
    // hook sees them: on loopback a run of frames sent with UDP segmentation
    // offload stays one packet of up to 64 KiB until the receiving socket,
    // so the bytes dropped are what says how much was lost.
    let rules = exec(&["nft", "list", "table", "inet", "loss"]);
    let counter = |name: &str| -> u64 {
        rules.split_whitespace().skip_while(|w| *w != name).nth(1).and_then(|n| n.parse().ok()).unwrap_or(0)
    };
    let (packets, bytes) = (counter("packets"), counter("bytes"));
    assert!(
        packets > 0 && bytes > 50 * 1500,
        "the nft rule dropped {packets} packets, {bytes} bytes (fewer than 50 datagrams' worth): {rules}"
    );
}

#[ignore = "runs inside the namespace made by multicast_segment_in_a_private_namespace_with_10_percent_loss"]
#[actix_rt::test]
async fn inner_multicast_segment() {
    assert!(std::env::var_os(INNER_ENV).is_some(), "run only inside the test's network namespace");
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("source.assignment");
    let hash = write_random_file(&source, 3_000_000, 3);
    let mut seg = start_segment(SegmentConfig::new(
        3,
        Net::Multicast { group: Ipv4Addr::new(239, 255, 77, 1), port: 47_123 },
        dir.path(),
    ));
    let (sent, reports) =
        seg.move_and_collect(AssignmentSerial(3), &source, hash, Duration::from_secs(120)).await;
    println!(
        "multicast outcome: passes {} frames {} sent {}",
        sent.passes, sent.frames_needed, sent.frames_sent
    );
    assert!(sent.passes >= 2, "10 % loss needs retransmission passes");
    // Multicast: each frame left the leader once per pass, not once per member.
    let leader = seg.leader_channel.stats();
    assert!(leader.sent < 2 * sent.frames_needed as u64, "{leader:?} for {} frames", sent.frames_needed);
    assert_eq!(reports.succeeded.len(), 3, "{reports:?}");
}
