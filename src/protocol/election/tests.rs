//! Rule-by-rule tests of the election core. Each is named after the rule it
//! checks and cites the patent (US 7,451,221, FIG. 5 and claim 2) or DESIGN §5.

use super::*;
use crate::protocol::control::{ControlGate, SiteSerial};
use crate::protocol::wire::ReplayLimits;
use proptest::prelude::*;

const ME: NodeId = NodeId(5);
const LOW: NodeId = NodeId(1);
const HIGH: NodeId = NodeId(9);

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn at(n: u64) -> Time {
    Time::from_millis(n)
}

fn config() -> ElectorConfig {
    ElectorConfig {
        timers: ElectionTimers {
            la_interval: ms(100),
            la_miss: 3,
            claim_delay_min: ms(10),
            claim_delay_max: ms(50),
            voting_window: ms(30),
            deposed_hold: ms(1000),
        },
        membership: MembershipTimers {
            alive_interval: ms(200),
            member_timeout: ms(1000),
            list_delay: ms(300),
            register_jitter: ms(100),
        },
        preempt: false,
        gl_capable: true,
        priority: PriorityInputs::default(),
        info: MemberInfo {
            http: "127.0.0.1:7480".into(),
            data: String::new(),
            name: "five".into(),
            serials: vec![],
        },
    }
}

fn prio(full: u32) -> Priority {
    Priority { base: full, full }
}

fn la(full: u32) -> ControlMsg {
    ControlMsg::LeaderAlive { priority: prio(full), list_version: 0 }
}

fn lc(full: u32) -> ControlMsg {
    ControlMsg::LeaderClaim { priority: prio(full) }
}

fn transmits(e: &mut Elector) -> Vec<Transmit> {
    std::iter::from_fn(|| e.poll_transmit()).collect()
}

fn events(e: &mut Elector) -> Vec<Event> {
    std::iter::from_fn(|| e.poll_event()).collect()
}

fn kinds(t: &[Transmit]) -> Vec<&'static str> {
    t.iter().map(|t| t.msg.kind()).collect()
}

/// Fires every timer due up to `until`, in order; returns what was sent.
fn run_until(e: &mut Elector, until: Time) -> Vec<Transmit> {
    let mut out = Vec::new();
    while let Some(t) = e.poll_timeout().filter(|t| *t <= until) {
        e.handle_timeout(t);
        out.extend(transmits(e));
    }
    out
}

fn started(config: ElectorConfig) -> Elector {
    let mut e = Elector::new(config, ME, 7);
    assert_eq!(e.poll_timeout(), Some(Time::ZERO), "a new core asks to be started");
    e.handle_timeout(Time::ZERO);
    e
}

/// A follower of `leader` (priority 1000) at t = 0.
fn follower_of(leader: NodeId) -> Elector {
    follower_with_id(ME, leader)
}

fn follower_with_id(id: NodeId, leader: NodeId) -> Elector {
    let mut e = Elector::new(config(), id, 7);
    e.handle_timeout(Time::ZERO);
    e.handle_datagram(Time::ZERO, leader, la(1000));
    assert_eq!(e.state(), State::LeaderKnown(leader));
    transmits(&mut e);
    events(&mut e);
    e
}

/// A node whose leader (priority 1000) timed out at t = 325 ms.
fn lost_leader(config: ElectorConfig) -> Elector {
    let mut e = Elector::new(config, ME, 7);
    e.handle_datagram(Time::ZERO, NodeId(3), la(1000));
    run_until(&mut e, at(325));
    assert_eq!(e.state(), State::LeaderUnknown);
    transmits(&mut e);
    events(&mut e);
    e
}

/// A node that has won an uncontested election.
fn leader() -> (Elector, Time) {
    let mut e = started(config());
    let sent = run_until(&mut e, at(2000));
    assert!(e.is_leader());
    // The claim, its two repeats within the window, then the first LA.
    assert_eq!(kinds(&sent)[..4], ["leader_claim", "leader_claim", "leader_claim", "leader_alive"]);
    events(&mut e);
    (e, at(2000))
}

#[test]
fn fig5_a_starting_node_listens_one_timeout_before_claiming() {
    let mut e = started(config());
    let delay = e.claim_delay(Time::ZERO);
    let claim_at = Time::ZERO + config().timers.leader_timeout() + delay;
    let just_before = Time::from_micros(claim_at.as_micros() - 1000);
    assert!(run_until(&mut e, just_before).is_empty());
    assert_eq!(e.state(), State::LeaderUnknown);
    assert_eq!(kinds(&run_until(&mut e, claim_at)), ["leader_claim"]);
    assert_eq!(e.state(), State::VotingOpen);
}

#[test]
fn fig5_a_starting_node_that_hears_a_leader_follows_it_without_claiming() {
    let mut e = started(config());
    e.handle_datagram(at(150), LOW, la(1));
    assert_eq!(e.state(), State::LeaderKnown(LOW));
    assert_eq!(events(&mut e), [Event::LeaderElected { leader: LOW, me: false, previous: None }]);
    // LAs keep coming: no claim ever, only registration and MemberAlive.
    let mut sent = Vec::new();
    for i in 1..30 {
        sent.extend(run_until(&mut e, at(150 + i * 100)));
        e.handle_datagram(at(150 + i * 100), LOW, la(1));
    }
    assert!(!kinds(&sent).contains(&"leader_claim"), "{:?}", kinds(&sent));
    assert!(kinds(&sent).contains(&"register"));
}

#[test]
fn fig5_voting_open_with_no_objection_for_the_window_leads_and_sends_la() {
    let mut e = started(config());
    let claim_at = e.poll_timeout().unwrap();
    run_until(&mut e, claim_at);
    assert_eq!(e.state(), State::VotingOpen);
    assert_eq!(
        kinds(&run_until(&mut e, claim_at + ms(29))),
        ["leader_claim", "leader_claim"],
        "only the claim's repeats"
    );
    assert_eq!(kinds(&run_until(&mut e, claim_at + ms(30))), ["leader_alive"]);
    assert_eq!(e.state(), State::LeaderIsMe);
    assert_eq!(events(&mut e)[0], Event::LeaderElected { leader: ME, me: true, previous: None });
}

#[test]
fn fig5_leader_sends_la_every_interval_after_three_quick_announcements() {
    let (mut e, t0) = leader();
    let sent = run_until(&mut e, t0 + ms(1000));
    let las = sent.iter().filter(|t| t.msg.kind() == "leader_alive").count();
    // The election LA at ~t0-? is already drained; in the next second: the
    // two remaining quick ones plus about nine periodic ones.
    assert!((9..=12).contains(&las), "{las} LAs in one second");
    assert!(sent.iter().all(|t| t.to == Dest::All));
}

#[test]
fn fig5_known_becomes_unknown_only_after_la_miss_consecutive_las_are_missed() {
    let mut e = follower_of(HIGH);
    // Two LAs missed, the third arrives (a little late): still known.
    run_until(&mut e, at(310));
    e.handle_datagram(at(310), HIGH, la(1000));
    assert_eq!(e.state(), State::LeaderKnown(HIGH));
    // Now three in a row are missed.
    run_until(&mut e, at(310 + 324));
    assert_eq!(e.state(), State::LeaderKnown(HIGH));
    run_until(&mut e, at(310 + 325));
    assert_eq!(e.state(), State::LeaderUnknown);
    assert_eq!(events(&mut e), [Event::LeaderLost { leader: HIGH }]);
}

#[test]
fn claim2_unknown_concedes_to_a_higher_claim_and_follows_the_winner() {
    let mut e = started(config());
    e.handle_datagram(at(50), HIGH, lc(2400));
    assert_eq!(e.state(), State::Conceding(HIGH));
    assert!(transmits(&mut e).is_empty(), "a conceding node stays silent");
    e.handle_datagram(at(90), HIGH, la(2400));
    assert_eq!(e.state(), State::LeaderKnown(HIGH));
}

#[test]
fn claim2_unknown_answers_a_lower_claim_with_its_own_at_once() {
    let mut e = lost_leader(config());
    e.handle_datagram(at(350), LOW, lc(1));
    assert_eq!(e.state(), State::VotingOpen);
    assert_eq!(kinds(&transmits(&mut e)), ["leader_claim"]);
}

#[test]
fn design5_a_starting_node_does_not_answer_lower_claims_while_it_listens() {
    let mut e = started(config());
    e.handle_datagram(at(50), LOW, lc(1));
    assert_eq!(e.state(), State::LeaderUnknown);
    assert!(transmits(&mut e).is_empty());
    // A sitting leader answers that claim with its LA, which we follow.
    e.handle_datagram(at(51), NodeId(3), la(1));
    assert_eq!(e.state(), State::LeaderKnown(NodeId(3)));
    assert!(!kinds(&run_until(&mut e, at(100))).contains(&"leader_claim"));
    // Without a sitting leader, we answer within a third of the window.
    let mut e = started(config());
    e.handle_datagram(at(50), LOW, lc(1));
    assert_eq!(kinds(&run_until(&mut e, at(60))), ["leader_claim"]);
}

#[test]
fn design5_a_follower_answers_a_stray_claim_with_hearsay_and_the_claimant_goes_back() {
    // The follower hears its leader well and sees a claim from a peer.
    let mut f = follower_with_id(NodeId(4), HIGH);
    f.handle_datagram(at(300), HIGH, la(1000));
    f.handle_datagram(at(360), ME, lc(900));
    let sent = transmits(&mut f);
    let hearsay = ControlMsg::MemberAlive { leader: HIGH, heard_ago_ms: 60 };
    assert_eq!(sent, [Transmit { to: Dest::Node(ME), msg: hearsay.clone() }]);
    // Only once per voting window.
    f.handle_datagram(at(361), ME, lc(900));
    assert!(transmits(&mut f).is_empty());
    // The claimant missed three LAs; the hearsay brings it back to HIGH.
    let mut c = follower_of(HIGH);
    run_until(&mut c, at(380));
    assert_eq!(c.state(), State::VotingOpen);
    c.handle_datagram(at(381), NodeId(4), hearsay);
    assert_eq!(c.state(), State::LeaderKnown(HIGH));
    // Its deadline is the one the LA it missed (at 381 - 60) would have set.
    let deadline = at(321) + config().timers.leader_timeout();
    run_until(&mut c, Time::from_micros(deadline.as_micros() - 1));
    assert_eq!(c.state(), State::LeaderKnown(HIGH));
    run_until(&mut c, deadline);
    assert_eq!(c.state(), State::LeaderUnknown);
}

#[test]
fn design5_stale_hearsay_does_not_bring_back_a_dead_leader() {
    let mut c = follower_of(HIGH);
    run_until(&mut c, at(380));
    assert_eq!(c.state(), State::VotingOpen);
    c.handle_datagram(at(381), NodeId(4), ControlMsg::MemberAlive { leader: HIGH, heard_ago_ms: 340 });
    assert_eq!(c.state(), State::VotingOpen);
}

#[test]
fn claim2_voting_open_concedes_to_a_higher_claim() {
    let mut e = lost_leader(config());
    e.handle_datagram(at(350), LOW, lc(1));
    transmits(&mut e);
    e.handle_datagram(at(355), HIGH, lc(2400));
    assert_eq!(e.state(), State::Conceding(HIGH));
    // The voting window passes without effect: we conceded.
    run_until(&mut e, at(400));
    assert_eq!(e.state(), State::Conceding(HIGH));
}

#[test]
fn claim2_voting_open_answers_a_lower_claim_and_keeps_its_window() {
    let mut e = lost_leader(config());
    e.handle_datagram(at(350), LOW, lc(1));
    transmits(&mut e);
    e.handle_datagram(at(360), NodeId(2), lc(2));
    assert_eq!(kinds(&transmits(&mut e)), ["leader_claim"]);
    assert_eq!(e.state(), State::VotingOpen);
    run_until(&mut e, at(380));
    assert!(e.is_leader(), "window counted from our own claim");
}

#[test]
fn claim2_voting_open_follows_an_la_without_preemption() {
    let mut e = lost_leader(config());
    e.handle_datagram(at(350), LOW, lc(1));
    transmits(&mut e);
    e.handle_datagram(at(360), LOW, la(1));
    assert_eq!(e.state(), State::LeaderKnown(LOW));
}

#[test]
fn design5_voting_open_with_preemption_answers_a_lower_leaders_la_with_a_claim() {
    let mut e = lost_leader(ElectorConfig { preempt: true, ..config() });
    e.handle_datagram(at(350), LOW, lc(1));
    transmits(&mut e);
    e.handle_datagram(at(360), LOW, la(1));
    assert_eq!(e.state(), State::VotingOpen);
    assert_eq!(kinds(&transmits(&mut e)), ["leader_claim"]);
}

#[test]
fn fig5_conceding_without_an_la_returns_to_unknown_never_stuck() {
    let mut e = started(config());
    e.handle_datagram(at(50), HIGH, lc(2400));
    let timeout = config().timers.concede_timeout();
    run_until(&mut e, at(49) + timeout);
    assert_eq!(e.state(), State::Conceding(HIGH));
    run_until(&mut e, at(50) + timeout);
    // Unknown, then its own claim after the claim delay.
    assert_eq!(e.state(), State::LeaderUnknown);
    run_until(&mut e, at(50) + timeout + ms(60));
    assert_eq!(e.state(), State::VotingOpen);
}

#[test]
fn fig5_conceding_switches_to_an_even_higher_claimant() {
    let mut e = started(config());
    e.handle_datagram(at(50), NodeId(7), lc(2000));
    e.handle_datagram(at(51), HIGH, lc(2400));
    assert_eq!(e.state(), State::Conceding(HIGH));
    e.handle_datagram(at(52), LOW, lc(2100));
    assert_eq!(e.state(), State::Conceding(HIGH));
}

#[test]
fn fig5_leader_answers_a_lower_leaders_la_and_yields_to_a_higher_one() {
    let (mut e, t) = leader();
    e.handle_datagram(t, LOW, la(0));
    assert!(e.is_leader());
    assert_eq!(kinds(&transmits(&mut e)), ["leader_alive"]);
    e.handle_datagram(t + ms(1), HIGH, la(FULL_MAX));
    assert_eq!(e.state(), State::LeaderKnown(HIGH));
    assert_eq!(events(&mut e), [Event::LeaderElected { leader: HIGH, me: false, previous: Some(ME) }]);
}

#[test]
fn design5_without_preemption_a_stable_leader_answers_any_claim_with_an_la() {
    let (mut e, t) = leader();
    e.handle_datagram(t, HIGH, lc(FULL_MAX));
    assert!(e.is_leader());
    assert_eq!(kinds(&transmits(&mut e)), ["leader_alive"]);
}

#[test]
fn design5_with_preemption_a_leader_concedes_to_a_higher_claim_only() {
    let mut c = config();
    c.preempt = true;
    let mut e = started(c);
    run_until(&mut e, at(2000));
    assert!(e.is_leader());
    e.handle_datagram(at(2000), LOW, lc(0));
    assert!(e.is_leader());
    assert_eq!(kinds(&transmits(&mut e)), ["leader_alive"]);
    e.handle_datagram(at(2001), HIGH, lc(BASE_MAX));
    assert_eq!(e.state(), State::Conceding(HIGH));
    assert_eq!(events(&mut e).last(), Some(&Event::LeaderLost { leader: ME }));
}

#[test]
fn design5_with_preemption_a_follower_that_outranks_its_leader_claims() {
    let mut c = config();
    c.preempt = true;
    let mut e = started(c.clone());
    e.handle_datagram(at(10), LOW, la(10));
    assert_eq!(e.state(), State::VotingOpen, "it outranks base 10");
    assert_eq!(kinds(&transmits(&mut e)), ["leader_claim"]);
    // Without preemption the same node follows.
    let mut e = started(config());
    e.handle_datagram(at(10), LOW, la(10));
    assert_eq!(e.state(), State::LeaderKnown(LOW));
}

#[test]
fn design5_a_follower_switches_to_a_new_leader_when_its_own_went_quiet() {
    let mut e = follower_of(HIGH);
    // A lower leader appears while HIGH is still heard: ignored.
    e.handle_datagram(at(50), LOW, la(1));
    assert_eq!(e.state(), State::LeaderKnown(HIGH));
    // HIGH silent for more than 1.5 intervals: LOW is its successor.
    e.handle_datagram(at(200), LOW, la(1));
    assert_eq!(e.state(), State::LeaderKnown(LOW));
}

#[test]
fn design5_a_node_that_may_not_lead_never_claims() {
    let mut e = started(ElectorConfig { gl_capable: false, ..config() });
    assert!(run_until(&mut e, at(10_000)).is_empty());
    e.handle_datagram(at(10_000), LOW, lc(0));
    assert_eq!(e.state(), State::Conceding(LOW));
    assert!(run_until(&mut e, at(20_000)).is_empty());
    assert_eq!(e.state(), State::LeaderUnknown);
}

#[test]
fn design5_losing_the_capability_makes_a_leader_resign() {
    let (mut e, t) = leader();
    e.handle_config(t, ElectorConfig { gl_capable: false, ..config() });
    assert_eq!(e.state(), State::LeaderUnknown);
    assert!(run_until(&mut e, t + ms(5000)).is_empty());
}

#[test]
fn patent_a_recently_deposed_leader_has_the_best_claim_for_a_while() {
    let (mut e, t) = leader();
    let before = e.priority(t);
    e.handle_datagram(t, HIGH, la(FULL_MAX));
    let p = e.priority(t);
    assert_eq!(p.full, before.full + DEPOSED_BONUS);
    assert!(e.claim_delay(t) < claim_delay(&config(), before));
    let later = t + config().timers.deposed_hold;
    assert_eq!(e.priority(later).full, e.config().priority.base());
}

#[test]
fn design5_hearsay_keeps_a_live_leader_but_cannot_revive_a_dead_one() {
    let mut e = follower_of(HIGH);
    // We miss every LA, but a peer heard HIGH 20 ms ago at t = 300.
    run_until(&mut e, at(300));
    e.handle_datagram(at(300), LOW, ControlMsg::MemberAlive { leader: HIGH, heard_ago_ms: 20 });
    run_until(&mut e, at(500));
    assert_eq!(e.state(), State::LeaderKnown(HIGH), "still alive by hearsay");
    // HIGH's last LA was at 280: nothing can keep us past 280 + timeout.
    e.handle_datagram(at(600), LOW, ControlMsg::MemberAlive { leader: HIGH, heard_ago_ms: 320 });
    run_until(&mut e, at(280) + config().timers.leader_timeout());
    assert_eq!(e.state(), State::LeaderUnknown);
}

#[test]
fn design5_members_register_and_the_leader_multicasts_the_list_after_the_last_registration() {
    let (mut gl, t) = leader();
    let mut m = follower_with_id(HIGH, ME);
    // The member registers within the jitter.
    let sent = run_until(&mut m, at(100));
    let reg = sent.iter().find(|s| s.msg.kind() == "register").unwrap();
    assert_eq!(reg.to, Dest::Node(ME));
    gl.handle_datagram(t, LOW, ControlMsg::Register(MemberInfo::default()));
    gl.handle_datagram(t + ms(100), HIGH, reg.msg.clone());
    let evs = events(&mut gl);
    assert!(evs.contains(&Event::MemberJoined { id: LOW, info: MemberInfo::default() }));
    // The list goes out list_delay after the *last* registration.
    let sent = run_until(&mut gl, t + ms(399));
    assert!(!kinds(&sent).contains(&"member_list"));
    let sent = run_until(&mut gl, t + ms(400));
    let list = sent.iter().find(|s| s.msg.kind() == "member_list").unwrap();
    assert_eq!(
        list.msg,
        ControlMsg::MemberList {
            version: match &list.msg {
                ControlMsg::MemberList { version, .. } => *version,
                _ => unreachable!(),
            },
            members: vec![LOW, ME, HIGH]
        }
    );
    assert_eq!(gl.members(), [LOW, ME, HIGH]);
}

#[test]
fn design5_a_member_missing_from_the_list_registers_again_within_the_jitter() {
    let mut m = follower_of(HIGH);
    run_until(&mut m, at(100));
    m.handle_datagram(at(150), HIGH, ControlMsg::MemberList { version: 1, members: vec![HIGH] });
    let sent = run_until(&mut m, at(250));
    assert_eq!(sent.iter().filter(|s| s.msg.kind() == "register").count(), 1, "{:?}", kinds(&sent));
    // Listed: no more registrations.
    m.handle_datagram(at(260), HIGH, ControlMsg::MemberList { version: 2, members: vec![ME, HIGH] });
    assert_eq!(m.members(), [ME, HIGH]);
    let mut sent = Vec::new();
    for i in 0..20 {
        sent.extend(run_until(&mut m, at(300 + i * 100)));
        m.handle_datagram(
            at(300 + i * 100),
            HIGH,
            ControlMsg::LeaderAlive { priority: prio(1000), list_version: 2 },
        );
    }
    assert!(!kinds(&sent).contains(&"register"), "{:?}", kinds(&sent));
    // Steady state: only MemberAlive, one per alive_interval.
    assert_eq!(sent.len(), 10, "{:?}", kinds(&sent));
}

#[test]
fn design5_a_member_that_missed_a_list_asks_again_when_an_la_announces_a_newer_one() {
    let mut m = follower_of(HIGH);
    assert!(run_until(&mut m, at(100)).iter().any(|s| s.msg.kind() == "register"));
    m.handle_datagram(at(110), HIGH, ControlMsg::MemberList { version: 1, members: vec![ME, HIGH] });
    assert!(run_until(&mut m, at(199)).iter().all(|s| s.msg.kind() != "register"));
    m.handle_datagram(at(200), HIGH, ControlMsg::LeaderAlive { priority: prio(1000), list_version: 2 });
    assert!(run_until(&mut m, at(300)).iter().any(|s| s.msg.kind() == "register"));
}

#[test]
fn design5_a_restarted_member_still_listed_registers_its_new_details() {
    // The leader still lists the member from before its restart, and sends
    // that list before the new incarnation's registration jitter runs out:
    // the new details (addresses, live serials) must reach the leader anyway.
    let mut c = config();
    c.info.http = "127.0.0.1:9999".into();
    let mut m = Elector::new(c.clone(), ME, 8);
    m.handle_timeout(Time::ZERO);
    m.handle_datagram(Time::ZERO, HIGH, la(1000));
    m.handle_datagram(at(1), HIGH, ControlMsg::MemberList { version: 4, members: vec![ME, HIGH] });
    let sent = run_until(&mut m, at(150));
    assert!(sent.iter().any(|s| s.msg == ControlMsg::Register(c.info.clone())), "{:?}", kinds(&sent));
    // Once it has registered, a list naming it ends the retries.
    m.handle_datagram(at(160), HIGH, ControlMsg::MemberList { version: 5, members: vec![ME, HIGH] });
    let sent = run_until(&mut m, at(1000));
    assert!(!kinds(&sent).contains(&"register"), "{:?}", kinds(&sent));
}

#[test]
fn design5_the_leader_marks_silent_members_offline_and_reports_the_segment_change() {
    let (mut gl, t) = leader();
    gl.handle_datagram(t, LOW, ControlMsg::Register(MemberInfo::default()));
    gl.handle_datagram(t, HIGH, ControlMsg::Register(MemberInfo::default()));
    events(&mut gl);
    // LOW keeps proving liveness; HIGH goes silent.
    for i in 1..=10 {
        run_until(&mut gl, t + ms(i * 200));
        gl.handle_datagram(t + ms(i * 200), LOW, ControlMsg::MemberAlive { leader: ME, heard_ago_ms: 10 });
    }
    run_until(&mut gl, t + ms(2200));
    let evs = events(&mut gl);
    assert!(evs.contains(&Event::MemberLeft { id: HIGH }), "{evs:?}");
    assert!(!evs.contains(&Event::MemberLeft { id: LOW }));
    assert!(matches!(evs.last(), Some(Event::SegmentChanged { members }) if members.len() == 2));
    assert_eq!(gl.members(), [LOW, ME]);
    // HIGH comes back: joined again.
    gl.handle_datagram(t + ms(2300), HIGH, ControlMsg::Register(MemberInfo::default()));
    assert!(events(&mut gl).contains(&Event::MemberJoined { id: HIGH, info: MemberInfo::default() }));
}

#[test]
fn design5_changed_registration_details_reach_the_leader() {
    let mut m = follower_of(HIGH);
    run_until(&mut m, at(100));
    let mut c = config();
    c.info.serials.push(SiteSerial { site: "www".into(), serial: 3 });
    m.handle_config(at(150), c.clone());
    let sent = run_until(&mut m, at(250));
    assert!(sent.iter().any(|s| s.msg == ControlMsg::Register(c.info.clone())));
}

/// Runs follower `m` from `from` to `to` ms with an LA from HIGH announcing
/// list `version` every 100 ms; returns what it sent.
fn following(m: &mut Elector, from: u64, to: u64, version: u64) -> Vec<Transmit> {
    let mut sent = Vec::new();
    for t in (from..=to).step_by(100) {
        sent.extend(run_until(m, at(t)));
        m.handle_datagram(
            at(t),
            HIGH,
            ControlMsg::LeaderAlive { priority: prio(1000), list_version: version },
        );
    }
    sent
}

#[test]
fn design5_changed_details_are_sent_again_until_a_newer_list_answers_them() {
    // Registered and listed at version 5.
    let mut m = follower_of(HIGH);
    run_until(&mut m, at(100));
    m.handle_datagram(at(110), HIGH, ControlMsg::MemberList { version: 5, members: vec![ME, HIGH] });
    assert!(!kinds(&run_until(&mut m, at(140))).contains(&"register"));
    // New live serial; before the jitter runs out, a list answering another
    // member arrives: it must not cancel the registration of the new details.
    let mut c = config();
    c.info.serials.push(SiteSerial { site: "www".into(), serial: 3 });
    m.handle_config(at(150), c.clone());
    m.handle_datagram(at(151), HIGH, ControlMsg::MemberList { version: 6, members: vec![ME, HIGH] });
    let sent = run_until(&mut m, at(250));
    assert!(sent.iter().any(|s| s.msg == ControlMsg::Register(c.info.clone())), "{:?}", kinds(&sent));
    // That registration is lost; a list of the same version (already on its
    // way) does not stop the retries either.
    m.handle_datagram(at(260), HIGH, ControlMsg::MemberList { version: 6, members: vec![ME, HIGH] });
    let sent = following(&mut m, 300, 1000, 6);
    assert!(sent.iter().any(|s| s.msg == ControlMsg::Register(c.info.clone())), "{:?}", kinds(&sent));
    // The leader got it and answered with a newer list: retries end.
    m.handle_datagram(at(1010), HIGH, ControlMsg::MemberList { version: 7, members: vec![ME, HIGH] });
    let sent = following(&mut m, 1100, 3000, 7);
    assert!(!kinds(&sent).contains(&"register"), "{:?}", kinds(&sent));
}

#[test]
fn design5_the_leader_answers_changed_details_with_a_newer_list() {
    let (mut gl, t) = leader();
    gl.handle_datagram(t, LOW, ControlMsg::Register(MemberInfo::default()));
    let first = run_until(&mut gl, t + ms(1000));
    let version = |sent: &[Transmit]| {
        sent.iter()
            .find_map(|s| match &s.msg {
                ControlMsg::MemberList { version, .. } => Some(*version),
                _ => None,
            })
            .unwrap()
    };
    let v1 = version(&first);
    let mut info = MemberInfo::default();
    info.serials.push(SiteSerial { site: "www".into(), serial: 2 });
    gl.handle_datagram(t + ms(1000), LOW, ControlMsg::Register(info.clone()));
    let v2 = version(&run_until(&mut gl, t + ms(2000)));
    assert!(v2 > v1, "{v2} after {v1}");
    assert!(gl.member_details().contains(&(LOW, info)));
}

#[test]
fn patent_the_leader_can_move_the_segment_to_another_control_channel() {
    let group = Ipv4Addr::new(239, 9, 9, 9);
    let (mut gl, t) = leader();
    assert!(gl.move_channel(t, group, 7500));
    let mut sent = transmits(&mut gl);
    sent.extend(run_until(&mut gl, t + ms(500)));
    let moves = sent.iter().filter(|s| s.msg == ControlMsg::ChangeChannel { group, port: 7500 }).count();
    assert_eq!(moves, 4, "sent at once and with the next three LAs");
    assert!(events(&mut gl).contains(&Event::MoveChannel { group, port: 7500 }));
    let mut m = follower_of(HIGH);
    m.handle_datagram(at(10), LOW, ControlMsg::ChangeChannel { group, port: 1 });
    assert!(events(&mut m).is_empty(), "only the leader may move us");
    m.handle_datagram(at(10), HIGH, ControlMsg::ChangeChannel { group, port: 1 });
    m.handle_datagram(at(11), HIGH, ControlMsg::ChangeChannel { group, port: 1 });
    assert_eq!(events(&mut m), [Event::MoveChannel { group, port: 1 }]);
    let mut f = follower_of(HIGH);
    assert!(!f.move_channel(at(1), group, 1));
}

/// Everything observable about a core, to show an input changed nothing.
fn snapshot(e: &Elector) -> String {
    format!(
        "{:?} {:?} {:?} {:?} {:?} {:?}",
        e.state(),
        e.leader(),
        e.poll_timeout(),
        e.members(),
        e.priority(at(1)),
        e.stats()
    )
}

#[test]
fn security8_forged_and_replayed_datagrams_change_no_state() {
    let secret = b"the real cluster secret, 32 byte";
    let now_ms = 1_700_000_000_000;
    let mut sender = ControlGate::new(secret, HIGH, 1, ReplayLimits::default());
    let mut forger = ControlGate::new(b"a guessed secret, also 32 bytes!", HIGH, 1, ReplayLimits::default());
    let mut gate = ControlGate::new(secret, ME, 1, ReplayLimits::default());
    let mut e = follower_of(LOW);
    let genuine = sender.seal(now_ms, &la(FULL_MAX));
    let deliver = |e: &mut Elector, gate: &mut ControlGate, now_ms: u64, d: &[u8]| {
        if let Some((from, msg)) = gate.open(now_ms, d) {
            e.handle_datagram(at(20), from, msg);
        }
    };
    // Forged (wrong key), stale, from the future: all ignored.
    let before = snapshot(&e);
    deliver(&mut e, &mut gate, now_ms, &forger.seal(now_ms, &la(FULL_MAX)));
    deliver(&mut e, &mut gate, now_ms, &sender.seal(now_ms - 60_000, &lc(FULL_MAX)));
    deliver(&mut e, &mut gate, now_ms, &sender.seal(now_ms + 60_000, &lc(FULL_MAX)));
    assert_eq!(snapshot(&e), before);
    assert!(transmits(&mut e).is_empty() && events(&mut e).is_empty());
    // The genuine one takes effect once; its replay does nothing more.
    deliver(&mut e, &mut gate, now_ms, &genuine);
    assert_eq!(e.state(), State::LeaderKnown(HIGH));
    transmits(&mut e);
    events(&mut e);
    let after = snapshot(&e);
    deliver(&mut e, &mut gate, now_ms, &genuine);
    assert_eq!(snapshot(&e), after);
    let r = gate.rejected();
    assert_eq!((r.bad_tag, r.stale, r.from_future, r.replayed), (1, 1, 1, 1));
}

fn arb_inputs() -> impl Strategy<Value = PriorityInputs> {
    (0u8..=120, 0u8..=100, 0u8..=100, 0u8..=100, 0u8..=100, 0u8..=100).prop_map(
        |(preference, cpu, disk, network, reliability, freshness)| PriorityInputs {
            preference,
            cpu,
            disk,
            network,
            reliability,
            freshness,
        },
    )
}

proptest! {
    #[test]
    fn priority_the_claim_delay_shrinks_as_priority_grows(
        a in arb_inputs(), b in arb_inputs(),
        da in any::<bool>(), db in any::<bool>(),
        ma in 0usize..300, mb in 0usize..300, preempt in any::<bool>(),
    ) {
        let c = ElectorConfig { preempt, ..config() };
        let (pa, pb) = (a.priority(da, ma), b.priority(db, mb));
        let (ka, kb) = if preempt { (pa.base, pb.base) } else { (pa.full, pb.full) };
        let (wa, wb) = (claim_delay(&c, pa), claim_delay(&c, pb));
        if ka > kb { prop_assert!(wa <= wb); }
        prop_assert!(wa >= c.timers.claim_delay_min && wa <= c.timers.claim_delay_max);
        prop_assert!(pa.base <= BASE_MAX && pa.full <= FULL_MAX);
    }

    #[test]
    fn priority_is_a_total_order_and_node_id_breaks_ties(full in 0u32..FULL_MAX, x in 1u64..1000, y in 1u64..1000) {
        prop_assume!(x != y);
        let e = Elector::new(config(), NodeId(x), 1);
        let (rx, ry) = (e.rank(prio(full), NodeId(x)), e.rank(prio(full), NodeId(y)));
        prop_assert_ne!(rx, ry);
        prop_assert_eq!(rx > ry, x > y);
    }

    /// Any sequence of messages, timer firings and config changes: the core
    /// never panics, is never in a state without a way out, and has a timer
    /// armed whenever it waits for one.
    #[test]
    fn fig5_every_state_has_a_way_out(ops in proptest::collection::vec((0u8..8, 0u64..4, 0u32..FULL_MAX, 1u64..40), 1..120)) {
        let mut e = started(config());
        let mut now = Time::ZERO;
        for (op, from, p, dt) in ops {
            now += ms(dt);
            let from = NodeId(from + 1);
            match op {
                0 => e.handle_datagram(now, from, la(p)),
                1 => e.handle_datagram(now, from, lc(p)),
                2 => e.handle_datagram(now, from, ControlMsg::Register(MemberInfo::default())),
                3 => e.handle_datagram(now, from, ControlMsg::MemberList { version: u64::from(p), members: vec![from, ME] }),
                4 => e.handle_datagram(now, from, ControlMsg::MemberAlive { leader: ME, heard_ago_ms: p }),
                5 => { let c = ElectorConfig { preempt: p % 2 == 0, ..config() }; e.handle_config(now, c) }
                _ => { run_until(&mut e, now); }
            }
            transmits(&mut e);
            events(&mut e);
            let need = match e.state() {
                State::LeaderKnown(_) => Timer::LeaderTimeout,
                State::LeaderUnknown => Timer::Claim,
                State::LeaderIsMe => Timer::LeaderAlive,
                State::VotingOpen => Timer::VotingWindow,
                State::Conceding(_) => Timer::Concede,
            };
            prop_assert!(e.timers.get(need).is_some(), "{:?} without its timer", e.state());
        }
    }
}
