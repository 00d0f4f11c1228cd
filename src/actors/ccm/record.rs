//! What the CCM writes about a run: its record as it starts, as recovered
//! after a restart, as the core's state changes, and the history's words.

use std::collections::BTreeMap;

use super::store::{self, table};
use super::Driven;
use crate::clock::unix_ms;
use crate::protocol::distribution::Stage;
use crate::protocol::ids::{self, RunId};
use crate::protocol::run::{self, Plan, Wave};
use crate::storage::db::Db;
use crate::storage::records::{
    GroupRecord, HistoryKind, JobKind, JobRecord, RunRecord, RunState, SegmentProgress, SegmentState,
};

/// A run's record as it starts.
pub(super) fn new_record(id: RunId, job: &JobRecord, reason: &str, plan: &Plan) -> RunRecord {
    RunRecord {
        id,
        job: job.id,
        site: job.site.clone(),
        group: job.group.clone(),
        kind: job.kind,
        reason: reason.into(),
        state: RunState::Packing,
        serial: plan.serial,
        base_serial: plan.base,
        targets: plan.targets.clone(),
        needed: plan.needed,
        content_assignment: None,
        control_assignment: None,
        summary: None,
        phases: Vec::new(),
        segments: BTreeMap::new(),
        control_segments: BTreeMap::new(),
        applied: BTreeMap::new(),
        switched: BTreeMap::new(),
        failed_servers: Vec::new(),
        error: None,
        started_ms: unix_ms(),
        finished_ms: None,
    }
}

/// The plan of a run in flight, from its record (a record from before
/// targets were saved takes its group's servers).
pub(super) fn recovered_plan(db: &Db, record: &RunRecord, job: &JobRecord) -> Plan {
    let group = table::<GroupRecord>(db).get(&record.group).ok().flatten();
    let targets = if record.targets.is_empty() {
        group.as_ref().map(|g| g.servers.clone()).unwrap_or_default()
    } else {
        record.targets.clone()
    };
    let needed = if record.needed == 0 {
        group.as_ref().map_or(0, |g| g.quorum.needed(g.servers.len()))
    } else {
        record.needed
    };
    let servers = store::server_views(db, &record.site).unwrap_or_default();
    let segments =
        servers.iter().filter(|s| targets.contains(&s.id)).map(|s| (s.id, s.segment.clone())).collect();
    Plan {
        job: job.id,
        kind: record.kind,
        targets,
        offline: Vec::new(),
        segments,
        needed,
        serial: record.serial,
        base: record.base_serial,
        source: run::Source::Held,
        start: run::Start::Go,
    }
}

/// What a new run does, for the history.
pub(super) fn describe(job: &JobRecord, plan: &Plan) -> String {
    let (site, serial) = (&job.site, plan.serial);
    let servers = ids::join(&plan.targets);
    match job.kind {
        JobKind::Publish => format!("publishes site {site} to group {}", job.group),
        JobKind::Replicate => format!("replicates site {site} to servers {servers}"),
        JobKind::Synchronize => format!("synchronizes site {site} on servers {servers}"),
        JobKind::Restore => format!(
            "restores checkpoint {} of site {site} as release {serial}",
            job.params.checkpoint.unwrap_or_default()
        ),
        JobKind::Rollback => format!("rolls site {site} back to release {serial} on group {}", job.group),
        JobKind::Switch => format!("switches site {site} to release {serial} on group {}", job.group),
        JobKind::Remove => {
            format!("removes {} from site {site} as release {serial}", paths(&job.params.paths))
        }
        JobKind::Hot => format!(
            "pushes {} of site {site} to servers {servers} as hot release {serial}",
            paths(&job.params.paths)
        ),
    }
}

fn paths(p: &[String]) -> String {
    if p.is_empty() {
        "all content".into()
    } else {
        p.join(", ")
    }
}

/// The history event and message of a run that ended.
pub(super) fn ending(run: &RunRecord) -> (HistoryKind, String) {
    let failed = ids::join(&run.failed_servers);
    match run.state {
        RunState::Committed if run.kind.header_only() => (
            if run.kind == JobKind::Rollback { HistoryKind::RolledBack } else { HistoryKind::Switched },
            format!(
                "{} switched from release {} to {}; failed servers: {failed}",
                run.site, run.base_serial, run.serial
            ),
        ),
        RunState::Committed if run.kind.catches_up() || run.kind == JobKind::Hot => (
            HistoryKind::Committed,
            format!(
                "release {} of {} sent by a {} run; failed servers: {failed}",
                run.serial,
                run.site,
                run.kind.name()
            ),
        ),
        RunState::Committed if run.failed_servers.is_empty() => (
            HistoryKind::Committed,
            format!("release {} of {} is live on every server", run.serial, run.site),
        ),
        RunState::Committed => (
            HistoryKind::Committed,
            format!("release {} of {} is live; failed servers: {failed}", run.serial, run.site),
        ),
        RunState::Unchanged if run.kind.catches_up() => {
            (HistoryKind::Unchanged, format!("every server of {} is in sync", run.group))
        }
        RunState::Unchanged => (HistoryKind::Unchanged, format!("nothing to publish for {}", run.site)),
        RunState::Cancelled => {
            (HistoryKind::Cancelled, format!("run {} cancelled; nothing went live", run.id))
        }
        _ => (HistoryKind::RunFailed, run.error.clone().unwrap_or_else(|| "failed".into())),
    }
}

/// Copies the core's state into the run's record.
pub(super) fn sync(d: &mut Driven) {
    let (run, r) = (&d.run, &mut d.record);
    r.state = run.state();
    r.applied = run.applied().clone();
    r.switched = run.switched().clone();
    r.failed_servers = run.failed().to_vec();
    if let Some(e) = run.error() {
        r.error = Some(e.to_owned());
    }
    let Some(dist) = run.distribution() else { return };
    let wave = if matches!(run.wave(), Wave::Commit | Wave::Abort) {
        &mut r.control_segments
    } else {
        &mut r.segments
    };
    for e in dist.entries() {
        let p: &mut SegmentProgress = wave.entry(e.target.segment.clone()).or_default();
        let state = SegmentState::of(&e.stage);
        if p.state == state && p.leader == Some(e.target.leader) {
            continue;
        }
        p.state = state;
        p.leader = Some(e.target.leader);
        match &e.stage {
            Stage::Notified { by, .. } => {
                p.fetched_from = Some(*by);
                p.notified_ms = Some(unix_ms());
            }
            Stage::Holding { from, .. } => p.fetched_from = Some(*from),
            Stage::Reported { from } => {
                p.fetched_from = Some(*from);
                p.reported_ms = Some(unix_ms());
            }
            _ => {}
        }
    }
}
