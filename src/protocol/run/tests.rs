//! The run core's rules, each test named after the one it checks.

use super::*;

fn n(ids: &[u64]) -> Vec<NodeId> {
    ids.iter().map(|i| NodeId(*i)).collect()
}

/// Six servers in two segments; `live` is each one's release of the site.
fn servers(live: &[u64]) -> Vec<ServerView> {
    live.iter()
        .enumerate()
        .map(|(i, l)| ServerView {
            id: NodeId(i as u64 + 1),
            segment: if i < 3 { "seg-1".into() } else { "seg-2".into() },
            online: true,
            live: *l,
        })
        .collect()
}

fn site(live: u64) -> SiteView {
    SiteView {
        name: "www".into(),
        live_serial: live,
        last_serial: live,
        shadow_serial: live,
        kept: (1..=live).collect(),
        live_base: live.saturating_sub(1),
    }
}

fn job(kind: JobKind) -> JobView {
    JobView { id: JobId(1), kind, ..JobView::default() }
}

fn group(ids: &[u64]) -> GroupView {
    GroupView { servers: n(ids), quorum: Quorum::All }
}

/// DESIGN §4 "Only targets": a publish is for the content group and nobody else.
#[test]
fn only_targets_a_publish_targets_the_group_alone() {
    let p = plan(&job(JobKind::Publish), &site(3), &group(&[1, 2, 4]), &servers(&[3; 6])).unwrap();
    assert_eq!(p.targets, n(&[1, 2, 4]));
    assert_eq!((p.serial, p.base, p.needed, p.source), (4, 3, 3, Source::Staging));
    assert_eq!(p.segments.get(&NodeId(4)).map(String::as_str), Some("seg-2"));
    assert_eq!(p.start, Start::Go);
}

#[test]
fn a_shadow_copy_behind_the_live_release_makes_a_full_assignment() {
    let mut s = site(3);
    s.shadow_serial = 2;
    let p = plan(&job(JobKind::Publish), &s, &group(&[1, 2]), &servers(&[3; 6])).unwrap();
    assert_eq!((p.serial, p.base), (4, 0));
}

#[test]
fn catch_up_targets_only_lagging_online_servers() {
    let mut all = servers(&[3, 0, 2, 3, 2, 0]);
    all[4].online = false;
    let g = group(&[1, 2, 3, 4, 5, 6]);
    let r = plan(&job(JobKind::Replicate), &site(3), &g, &all).unwrap();
    assert_eq!(r.targets, n(&[2, 3, 6]), "replicate: new or stale, online");
    assert_eq!((r.serial, r.base, r.needed), (3, 0, 1));
    let s = plan(&job(JobKind::Synchronize), &site(3), &g, &all).unwrap();
    assert_eq!(s.targets, n(&[3]), "synchronize: only those holding an older release");
    let none = plan(&job(JobKind::Synchronize), &site(3), &group(&[1, 4]), &all).unwrap();
    assert_eq!(none.start, Start::InSync);
}

/// A hot push goes to servers outside the group, with a serial of its own
/// (so it can never be mistaken for the site's live release).
#[test]
fn hot_content_is_its_own_release_on_servers_outside_the_group() {
    let mut j = job(JobKind::Hot);
    j.extra_servers = Some(2);
    let mut s = site(3);
    s.last_serial = 5;
    let p = plan(&j, &s, &group(&[1, 2]), &servers(&[3, 3, 0, 0, 0, 0])).unwrap();
    assert_eq!(p.targets, n(&[3, 4]));
    assert_eq!((p.serial, p.base, p.needed, p.source), (6, 0, 2, Source::ShadowPaths));
    assert!(matches!(
        plan(&j, &site(0), &group(&[1]), &servers(&[0; 6])),
        Err(PlanError::NoLiveRelease { .. })
    ));
}

#[test]
fn a_rollback_goes_to_the_release_the_live_one_was_built_on() {
    let p = plan(&job(JobKind::Rollback), &site(3), &group(&[1, 2]), &servers(&[3; 6])).unwrap();
    assert_eq!((p.serial, p.base, p.source), (2, 3, Source::Held));
    let mut first = site(1);
    first.live_base = 0;
    assert!(matches!(
        plan(&job(JobKind::Rollback), &first, &group(&[1]), &servers(&[1; 6])),
        Err(PlanError::FirstRelease { serial: 1, .. })
    ));
    let mut pruned = site(3);
    pruned.kept = [3].into();
    assert!(matches!(
        plan(&job(JobKind::Rollback), &pruned, &group(&[1]), &servers(&[3; 6])),
        Err(PlanError::NotKept { serial: 2, .. })
    ));
}

#[test]
fn a_switch_names_a_held_release_other_than_the_live_one() {
    let mut j = job(JobKind::Switch);
    assert!(matches!(
        plan(&j, &site(3), &group(&[1]), &servers(&[3; 6])),
        Err(PlanError::MissingParam { .. })
    ));
    j.serial = Some(3);
    assert!(matches!(
        plan(&j, &site(3), &group(&[1]), &servers(&[3; 6])),
        Err(PlanError::AlreadyLive { .. })
    ));
    j.serial = Some(9);
    assert!(matches!(plan(&j, &site(3), &group(&[1]), &servers(&[3; 6])), Err(PlanError::NotHeld { .. })));
    j.serial = Some(1);
    assert_eq!(plan(&j, &site(3), &group(&[1]), &servers(&[3; 6])).unwrap().serial, 1);
}

#[test]
fn restore_and_remove_make_new_releases() {
    let mut r = job(JobKind::Restore);
    assert!(plan(&r, &site(3), &group(&[1]), &servers(&[3; 6])).is_err());
    r.checkpoint = Some((7, false));
    assert!(matches!(
        plan(&r, &site(3), &group(&[1]), &servers(&[3; 6])),
        Err(PlanError::NoCheckpoint { id: 7, .. })
    ));
    r.checkpoint = Some((7, true));
    let p = plan(&r, &site(3), &group(&[1]), &servers(&[3; 6])).unwrap();
    assert_eq!((p.serial, p.source), (4, Source::Checkpoint(7)));
    let rm = plan(&job(JobKind::Remove), &site(3), &group(&[1]), &servers(&[3; 6])).unwrap();
    assert_eq!((rm.serial, rm.base, rm.source), (4, 3, Source::ShadowWithout));
}

#[test]
fn a_quorum_out_of_reach_ends_the_run_at_its_start() {
    let mut all = servers(&[3; 6]);
    all[0].online = false;
    let p = plan(&job(JobKind::Publish), &site(3), &group(&[1, 2]), &all).unwrap();
    assert_eq!(p.start, Start::NoQuorum { needed: 2, online: 1 });
    let mut run = Run::start(RunId(1), p, RunConfig::default());
    assert_eq!(run.state(), RunState::Failed);
    assert!(run.error().unwrap().contains("offline: 1"), "{:?}", run.error());
    let actions: Vec<Action> = std::iter::from_fn(|| run.poll_action()).collect();
    assert_eq!(actions.last(), Some(&Action::End));
}

/// Drives one run against leaders that answer at once; returns the actions seen.
struct Driver {
    run: Run,
    now: Time,
    next_assignment: u64,
    seen: Vec<Action>,
    /// Per wave, what each server answers.
    answer: fn(Wave, NodeId) -> ServerOutcome,
}

impl Driver {
    fn new(p: Plan, answer: fn(Wave, NodeId) -> ServerOutcome) -> Self {
        Driver {
            run: Run::start(RunId(1), p, RunConfig::default()),
            now: Time::ZERO,
            next_assignment: 10,
            seen: Vec::new(),
            answer,
        }
    }

    /// Runs until the run ends or nothing is left to do.
    fn go(&mut self) {
        while let Some(a) = self.run.poll_action() {
            self.seen.push(a.clone());
            match a {
                Action::Pack => {
                    self.next_assignment += 1;
                    self.run.handle_packed(self.now, AssignmentId(self.next_assignment), 5);
                }
                Action::MakeAssignment(w) => {
                    self.next_assignment += 1;
                    self.run.handle_assignment_made(self.now, w, AssignmentId(self.next_assignment));
                }
                Action::PlanTree { segments } => {
                    let order = segments
                        .iter()
                        .enumerate()
                        .map(|(i, s)| (s.clone(), NodeId(100 + i as u64), format!("http://gl{i}"), 1))
                        .collect();
                    self.run.handle_tree(self.now, order);
                }
                Action::Notify(t) => {
                    let wave = self.run.wave();
                    let a = self.run.assignment().unwrap();
                    // Leaders report every server they are told of, and a
                    // stray one that is not a target.
                    let mut servers: BTreeMap<NodeId, ServerOutcome> =
                        t.servers.iter().map(|s| (*s, (self.answer)(wave, *s))).collect();
                    servers.insert(NodeId(99), ServerOutcome::Succeeded);
                    self.run.handle_segment_result(self.now, a, &t.segment, &servers);
                }
                Action::UpdateSite(_) => self.run.handle_site_updated(),
                _ => {}
            }
        }
    }
}

fn ok(_: Wave, _: NodeId) -> ServerOutcome {
    ServerOutcome::Succeeded
}

/// Patent claim 1 / DESIGN §4 step 9: the content wave, then a commit to
/// the servers that built the release; a non-target never counts.
#[test]
fn claim1_content_then_commit_to_the_servers_that_built_it() {
    let p = plan(&job(JobKind::Publish), &site(3), &group(&[1, 2, 4]), &servers(&[3; 6])).unwrap();
    let mut d = Driver::new(p, ok);
    d.go();
    assert_eq!(d.run.state(), RunState::Committed);
    assert!(!d.run.applied().contains_key(&NodeId(99)), "a non-target's outcome is ignored");
    assert!(!d.run.switched().contains_key(&NodeId(99)));
    assert!(d.seen.contains(&Action::RecordLive { servers: n(&[1, 2, 4]), serial: 4, hot: false }));
    assert!(d.seen.contains(&Action::UpdateSite(SiteUpdate::Apply)));
    assert_eq!(d.seen.last(), Some(&Action::End));
}

fn server_2_fails(w: Wave, s: NodeId) -> ServerOutcome {
    if w == Wave::Content && s == NodeId(2) {
        ServerOutcome::Failed { error: "disk full".into() }
    } else {
        ServerOutcome::Succeeded
    }
}

/// DESIGN §4 step 9: without the quorum an abort goes to every target and
/// nothing goes live anywhere.
#[test]
fn without_quorum_every_target_is_sent_an_abort() {
    let p = plan(&job(JobKind::Publish), &site(3), &group(&[1, 2, 4]), &servers(&[3; 6])).unwrap();
    let mut d = Driver::new(p, server_2_fails);
    d.go();
    assert_eq!(d.run.state(), RunState::Failed);
    assert!(d.seen.contains(&Action::MakeAssignment(Wave::Abort)));
    assert!(!d.seen.iter().any(|a| matches!(a, Action::RecordLive { .. })), "nothing went live");
    assert!(d.run.error().unwrap().contains("2: disk full"));
    assert_eq!(d.run.failed(), n(&[2]), "only 2 failed: 1 and 4 held the release");
}

/// Issue 15 item 8: a run aborted for want of a quorum names as failed only
/// the servers that did not build the release (it named all 6 when 5 held it).
#[test]
fn an_abort_names_as_failed_only_the_servers_that_did_not_build_the_release() {
    let p = plan(&job(JobKind::Publish), &site(3), &group(&[1, 2, 3, 4, 5, 6]), &servers(&[3; 6])).unwrap();
    let mut d = Driver::new(p, server_2_fails);
    d.go();
    assert_eq!(d.run.state(), RunState::Failed);
    assert_eq!(d.run.failed(), n(&[2]));
}

/// With a quorum below all, the commit names only the servers that built it.
#[test]
fn a_commit_switches_only_servers_that_built_the_release() {
    let mut g = group(&[1, 2, 4]);
    g.quorum = Quorum::Count(2);
    let p = plan(&job(JobKind::Publish), &site(3), &g, &servers(&[3; 6])).unwrap();
    let mut d = Driver::new(p, server_2_fails);
    d.go();
    assert_eq!(d.run.state(), RunState::Committed);
    assert!(!d.run.switched().contains_key(&NodeId(2)), "2 did not build it: not sent the commit");
    assert_eq!(d.run.failed(), n(&[2]));
}

#[test]
fn a_hot_push_is_recorded_as_hot_content() {
    let mut j = job(JobKind::Hot);
    j.extra_servers = Some(1);
    let p = plan(&j, &site(3), &group(&[1, 2]), &servers(&[3, 3, 0, 0, 0, 0])).unwrap();
    let mut d = Driver::new(p, ok);
    d.go();
    assert_eq!(d.run.state(), RunState::Committed);
    assert!(d.seen.contains(&Action::RecordLive { servers: n(&[3]), serial: 4, hot: true }));
    assert!(
        !d.seen.iter().any(|a| matches!(a, Action::UpdateSite(_))),
        "the site's live release is unchanged"
    );
}

#[test]
fn a_rollback_is_one_switch_wave() {
    let p = plan(&job(JobKind::Rollback), &site(3), &group(&[1, 2]), &servers(&[3; 6])).unwrap();
    let mut d = Driver::new(p, ok);
    d.go();
    assert_eq!(d.run.state(), RunState::Committed);
    assert!(!d.seen.contains(&Action::Pack));
    assert!(d.seen.contains(&Action::UpdateSite(SiteUpdate::SwitchTo)));
}

#[test]
fn a_cancel_while_distributing_aborts_and_ends_cancelled() {
    let p = plan(&job(JobKind::Publish), &site(3), &group(&[1, 2]), &servers(&[3; 6])).unwrap();
    let mut run = Run::start(RunId(1), p, RunConfig::default());
    while let Some(a) = run.poll_action() {
        match a {
            Action::Pack => run.handle_packed(Time::ZERO, AssignmentId(5), 1),
            Action::PlanTree { segments } => {
                run.handle_tree(Time::ZERO, vec![(segments[0].clone(), NodeId(1), "http://gl".into(), 1)])
            }
            Action::Notify(_) => break,
            _ => {}
        }
    }
    assert_eq!(run.state(), RunState::Distributing);
    run.handle_cancel(Time::ZERO).unwrap();
    assert_eq!(run.state(), RunState::Aborting);
    assert!(run.handle_cancel(Time::ZERO).is_ok(), "twice is fine");
    let mut ended = false;
    while let Some(a) = run.poll_action() {
        match a {
            Action::MakeAssignment(Wave::Abort) => {
                run.handle_assignment_made(Time::ZERO, Wave::Abort, AssignmentId(6))
            }
            Action::PlanTree { .. } => {
                run.handle_tree(Time::ZERO, vec![("seg-1".into(), NodeId(1), "http://gl".into(), 1)])
            }
            Action::Notify(t) => {
                let all = t.servers.iter().map(|s| (*s, ServerOutcome::Succeeded)).collect();
                run.handle_segment_result(Time::ZERO, AssignmentId(6), &t.segment, &all);
            }
            Action::End => ended = true,
            _ => {}
        }
    }
    assert!(ended);
    assert_eq!(run.state(), RunState::Cancelled);
    assert!(matches!(run.handle_cancel(Time::ZERO), Ok(())), "a cancelled run stays cancelled");
}

/// A wave ends at its report timeout: silent segments count as silent servers.
#[test]
fn a_wave_ends_at_its_report_timeout() {
    let p = plan(&job(JobKind::Publish), &site(3), &group(&[1, 2]), &servers(&[3; 6])).unwrap();
    let cfg = RunConfig { report_timeout: Duration::from_secs(60), ..RunConfig::default() };
    let mut run = Run::start(RunId(1), p, cfg);
    while let Some(a) = run.poll_action() {
        match a {
            Action::Pack => run.handle_packed(Time::ZERO, AssignmentId(5), 1),
            Action::PlanTree { segments } => {
                run.handle_tree(Time::ZERO, vec![(segments[0].clone(), NodeId(1), "http://gl".into(), 1)])
            }
            _ => {}
        }
    }
    let mut now = Time::ZERO;
    while run.state() == RunState::Distributing {
        now = run.poll_timeout().expect("a wave always has a deadline");
        run.handle_timeout(now);
        while let Some(a) = run.poll_action() {
            if let Action::Notify(t) = a {
                run.handle_notify_failed(now, &t.segment, "connection refused");
            }
        }
    }
    assert!(now <= Time::ZERO + Duration::from_secs(60));
    assert_eq!(run.state(), RunState::Aborting);
    assert_eq!(run.applied().get(&NodeId(1)), Some(&ServerOutcome::Silent));
}

/// After a CCM restart a committing run commits again to the servers that
/// built the release; an earlier one is aborted.
#[test]
fn recovery_resumes_a_commit_and_aborts_the_rest() {
    let p = plan(&job(JobKind::Publish), &site(3), &group(&[1, 2]), &servers(&[3; 6])).unwrap();
    let applied: BTreeMap<NodeId, ServerOutcome> =
        [(NodeId(1), ServerOutcome::Succeeded), (NodeId(2), ServerOutcome::Silent)].into();
    let saved =
        Saved { state: RunState::Committing, content: Some(AssignmentId(5)), applied: applied.clone() };
    let run = Run::recover(RunId(1), p.clone(), RunConfig::default(), saved);
    assert_eq!((run.wave(), run.wave_servers()), (Wave::Commit, &n(&[1])[..]));
    let saved = Saved { state: RunState::Distributing, content: Some(AssignmentId(5)), applied };
    let run = Run::recover(RunId(1), p.clone(), RunConfig::default(), saved);
    assert_eq!((run.state(), run.wave()), (RunState::Aborting, Wave::Abort));
    let saved = Saved { state: RunState::Packing, content: None, applied: BTreeMap::new() };
    let run = Run::recover(RunId(1), p, RunConfig::default(), saved);
    assert_eq!(run.state(), RunState::Failed);
}

#[test]
fn a_wave_is_named_as_its_records_store_it() {
    for wave in [Wave::Content, Wave::Commit, Wave::Abort, Wave::Switch] {
        assert_eq!(serde_json::to_value(wave).unwrap(), serde_json::Value::from(wave.name()));
    }
}

#[test]
fn run_phase_and_segment_states_are_named_as_their_records_store_them() {
    use RunState::*;
    for s in [Packing, Distributing, Committing, Aborting, Committed, Unchanged, Failed, Cancelled] {
        assert_eq!(serde_json::to_value(s).unwrap(), serde_json::Value::from(s.name()));
        assert_eq!(s.to_string(), s.name());
    }
    use PhaseName as P;
    for p in [P::Check, P::Pack, P::Distribute, P::Commit, P::Abort, P::Rollback, P::Switch, P::Done] {
        assert_eq!(serde_json::to_value(p).unwrap(), serde_json::Value::from(p.name()));
    }
    use SegmentState as S;
    for s in [S::Pending, S::Notified, S::Holding, S::Reported, S::Failed] {
        assert_eq!(serde_json::to_value(s).unwrap(), serde_json::Value::from(s.name()));
    }
}
