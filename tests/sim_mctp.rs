//! MCTP and report collection over the seeded simulated network: every live
//! member ends with a byte-identical, hash-verified assignment under loss,
//! bursts, duplication, reordering, a crash and a late join; NACK
//! aggregation is as tight as the ideal ARQ. A failure names its seed.

use std::time::Duration;

use cmover::protocol::mctp::{ideal_arq_ratio, SenderConfig};
use cmover::sim::mctp::{member_id, run, SimConfig, SimResult};

fn sim(cfg: &SimConfig) -> SimResult {
    run(cfg).unwrap_or_else(|e| panic!("{e}"))
}

/// Every member that is not `except` holds a verified copy.
fn assert_all_verified(r: &SimResult, cfg: &SimConfig, except: &[usize]) {
    for (i, &ok) in r.verified.iter().enumerate() {
        if !except.contains(&i) {
            assert!(ok, "seed {}: member {i} lacks a verified copy ({:?})", cfg.seed, r.outcome);
        }
    }
    assert!(r.outcome.completed, "seed {}: {:?}", cfg.seed, r.outcome);
}

#[test]
fn every_member_completes_under_independent_loss_from_0_to_30_percent() {
    for (loss, seeds) in [(0.0, 1..3), (0.05, 1..4), (0.1, 1..3), (0.2, 1..3), (0.3, 1..4)] {
        for seed in seeds {
            let cfg = SimConfig {
                receivers: 12,
                bytes: 300_000 + seed * 1_111,
                loss,
                seed,
                ..SimConfig::default()
            };
            let r = sim(&cfg);
            assert_all_verified(&r, &cfg, &[]);
            assert_eq!(r.summary.completed, 12, "seed {seed} loss {loss}");
            // Reports are collected from everyone.
            let reports = r.reports.unwrap();
            assert_eq!(reports.succeeded.len(), 12, "seed {seed}: {reports:?}");
            if loss == 0.0 {
                assert_eq!(r.summary.passes, 1, "seed {seed}");
                assert_eq!(r.summary.frames_sent, u64::from(r.summary.frames_needed));
            }
        }
    }
}

/// DESIGN §6: the GL "aggregates NACKs and retransmits only missing frames":
/// the cost must match the ideal NACK-aggregating ARQ.
#[test]
fn nack_aggregation_costs_what_the_ideal_arq_costs() {
    for (n, loss, seed) in [(32, 0.05, 1), (16, 0.1, 2), (8, 0.2, 3)] {
        let cfg = SimConfig {
            receivers: n,
            bytes: 4_000_000,
            loss,
            seed,
            collect_reports: false,
            ..SimConfig::default()
        };
        let r = sim(&cfg);
        let ideal = ideal_arq_ratio(n as u32, loss);
        let ratio = r.summary.transmission_ratio;
        assert!(
            (ratio - ideal).abs() / ideal < 0.05,
            "seed {seed}: ratio {ratio} vs ideal {ideal} (n {n}, loss {loss})"
        );
        assert_eq!(r.summary.completed, n, "seed {seed}");
    }
}

/// The command line: `--receivers 32 --bytes 4000000 --loss 0.05 --seed 1`.
#[test]
fn acceptance_32_receivers_4mb_5_percent_and_report_implosion_at_0_percent() {
    let cfg = SimConfig {
        receivers: 32,
        bytes: 4_000_000,
        loss: 0.05,
        seed: 1,
        collect_reports: false,
        ..SimConfig::default()
    };
    let r = sim(&cfg);
    assert_eq!(r.summary.completed, 32);
    let (ratio, ideal) = (r.summary.transmission_ratio, r.summary.ideal_arq_ratio);
    assert!((ratio - ideal).abs() / ideal < 0.05, "{:?}", r.summary);

    let clean = sim(&SimConfig { loss: 0.0, ..cfg });
    assert_eq!(clean.summary.completed, 32);
    assert!(clean.summary.report_datagrams_per_receiver <= 1.2, "{:?}", clean.summary);
}

#[test]
fn bursty_loss_duplication_and_reordering() {
    for seed in 1..4 {
        let cfg = SimConfig {
            receivers: 10,
            bytes: 500_000,
            loss: 0.1,
            burst: true,
            duplicate: 0.1,
            jitter: Duration::from_millis(3),
            seed,
            ..SimConfig::default()
        };
        let r = sim(&cfg);
        assert_all_verified(&r, &cfg, &[]);
        assert!(r.net.duplicated > 0 || r.net.delivered > 0);
    }
    // Duplication and reordering alone cost nothing extra.
    let cfg = SimConfig {
        receivers: 6,
        bytes: 400_000,
        duplicate: 0.3,
        jitter: Duration::from_millis(5),
        seed: 9,
        ..SimConfig::default()
    };
    let r = sim(&cfg);
    assert_all_verified(&r, &cfg, &[]);
    assert_eq!(r.summary.passes, 1, "{:?}", r.summary);
}

/// Patent: the GL "continues to retransmit ... until it gets the status
/// reports from all or a quorum number"; the crashed member is named.
#[test]
fn a_member_crashing_mid_session_is_named_and_the_quorum_completes() {
    for seed in 1..3 {
        let cfg = SimConfig {
            receivers: 8,
            bytes: 800_000,
            loss: 0.05,
            seed,
            crash: Some((3, 0.5)),
            sender: SenderConfig { quorum: 0.75, ..SenderConfig::default() },
            ..SimConfig::default()
        };
        let r = sim(&cfg);
        assert_all_verified(&r, &cfg, &[3]);
        assert!(!r.verified[3]);
        assert_eq!(r.outcome.silent, [member_id(3)], "seed {seed}: {:?}", r.outcome);
        assert_eq!(r.outcome.acked.len(), 7);
        let reports = r.reports.unwrap();
        assert_eq!(reports.silent, [member_id(3)], "seed {seed}: {reports:?}");
        assert_eq!(reports.succeeded.len(), 7);
    }
    // With quorum = all, the same crash makes the session fail, naming it.
    let cfg = SimConfig {
        receivers: 4,
        bytes: 300_000,
        seed: 5,
        crash: Some((0, 0.3)),
        collect_reports: false,
        ..SimConfig::default()
    };
    let r = sim(&cfg);
    assert!(!r.outcome.completed);
    assert_eq!(r.outcome.silent, [member_id(0)]);
}

#[test]
fn a_member_joining_late_catches_up() {
    for seed in 1..3 {
        let cfg = SimConfig {
            receivers: 6,
            bytes: 2_000_000,
            loss: 0.02,
            seed,
            // The announce phase takes 200 ms; pass 1 of 2 MB at 25 MB/s ~80 ms.
            late_join: Some((2, Duration::from_millis(250))),
            ..SimConfig::default()
        };
        let r = sim(&cfg);
        assert_all_verified(&r, &cfg, &[]);
        assert!(r.summary.passes >= 2, "the late member needed a second pass");
    }
}

/// Patent: "Each member that receives the announcement determines if it
/// needs the assignment and either replies with a completion signal or
/// silently participates".
#[test]
fn members_that_already_hold_it_answer_complete_and_are_left_out() {
    let cfg = SimConfig {
        receivers: 5,
        bytes: 300_000,
        seed: 3,
        already_have: vec![0, 1, 2, 3, 4],
        ..SimConfig::default()
    };
    let r = sim(&cfg);
    assert_eq!(r.outcome.already_had.len(), 5);
    assert_eq!(r.outcome.frames_sent, 0, "{:?}", r.outcome);
    assert!(r.outcome.completed);

    let cfg = SimConfig { already_have: vec![1], ..cfg };
    let r = sim(&cfg);
    assert_eq!(r.outcome.already_had, [member_id(1)]);
    assert_eq!(r.outcome.acked.len(), 4);
    assert_all_verified(&r, &cfg, &[]);
}

#[test]
fn small_assignments_travel_as_one_block_even_under_loss() {
    for (bytes, loss, seed) in [(0, 0.0, 1), (5_000, 0.0, 2), (8_192, 0.3, 3), (100, 0.3, 4)] {
        let cfg = SimConfig { receivers: 10, bytes, loss, seed, ..SimConfig::default() };
        let r = sim(&cfg);
        assert_all_verified(&r, &cfg, &[]);
        assert_eq!(r.summary.frames_needed, 1);
        if loss == 0.0 {
            assert_eq!(r.summary.frames_sent, 1);
            assert!(r.summary.report_datagrams_per_receiver <= 1.0);
        }
    }
}

#[test]
fn the_same_seed_gives_the_same_run() {
    let cfg = SimConfig { receivers: 5, bytes: 200_000, loss: 0.15, seed: 42, ..SimConfig::default() };
    let a = sim(&cfg);
    let b = sim(&cfg);
    assert_eq!(a.summary, b.summary);
    assert_eq!(a.net, b.net);
    let c = sim(&SimConfig { seed: 43, ..cfg });
    assert_ne!(a.net, c.net);
}

/// DESIGN §4 "Only targets": members of the segment that are not the
/// session's targets hear every multicast datagram (announces, frames,
/// polls, blocks, report requests) and never deliver, write or answer
/// anything; the run fails the moment one does. The targets complete as
/// usual, and the bystanders' presence costs them nothing.
#[test]
fn only_targets_bystanders_on_the_segment_never_deliver() {
    for (bytes, loss, seed) in
        [(300_000, 0.0, 1), (300_000, 0.2, 2), (2_000, 0.0, 3), (2_000, 0.3, 4), (1_000_000, 0.1, 5)]
    {
        let cfg = SimConfig { receivers: 6, bystanders: 4, bytes, loss, seed, ..SimConfig::default() };
        let r = sim(&cfg);
        assert_all_verified(&r, &cfg, &[]);
        assert_eq!(r.verified.len(), 6, "seed {seed}: only the targets are accounted");
        let reports = r.reports.unwrap();
        assert_eq!(reports.succeeded.len(), 6, "seed {seed}: {reports:?}");
        let without = sim(&SimConfig { bystanders: 0, ..cfg.clone() });
        if loss == 0.0 {
            assert_eq!(r.summary.frames_sent, without.summary.frames_sent, "seed {seed}");
        }
    }
}
