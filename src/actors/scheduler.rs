//! Scheduler: fires due jobs (DESIGN §4), wrapping the sans-IO core
//! `protocol::schedule::Scheduler` with the clock, the database, the
//! staging watcher and the `Ccm`.
//!
//! Every tick it hands the core the time; the core answers which jobs to
//! start, which conflict (an event in the history: queued or cancelled), and
//! which times to persist. Times are written and flushed before any run
//! starts, so a restart never fires a job twice. The `Ccm` says when runs
//! start and end; failures come back as retries with backoff.
//!
//! With `ccm.auto_catch_up`, it also watches the servers (the rule is the
//! sans-IO `protocol::catch_up`): one new to a content group gets a
//! `replicate`, one whose live release lags the site's gets a
//! `synchronize`, through per-group jobs it makes itself.
//! Sites with `on_change` jobs have their staging directories watched
//! (inotify through `notify`); the core debounces the events.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;

use actix::prelude::*;

use super::ccm::{RunBegan, RunEnded, RunJob};
use crate::clock::unix_ms;
use crate::config::Config;
use crate::protocol::api::ServerOutcome;
use crate::protocol::catch_up::{CatchUp, Failure, GroupView, Need, ServerView};
use crate::protocol::ids::{JobId, NodeId};
use crate::protocol::schedule::{self, Action, JobSpec, JobTimes, Reason, Schedule};
use crate::storage::db::{Db, Table};
use crate::storage::records::{
    GroupRecord, HistoryKind, JobKind, JobParams, JobRecord, Policy, RunRecord, RunState, SegmentRecord,
    ServerRecord, SiteRecord,
};

/// Job `0` was created, changed or deleted (sent by the REST API).
#[derive(Message, Debug, Clone, Copy)]
#[rtype(result = "()")]
pub struct JobChanged(pub JobId);

/// Stops the scheduler (the CCM is shutting down).
#[derive(Message, Debug, Clone, Copy)]
#[rtype(result = "()")]
pub struct StopScheduler;

/// A site's staging directory changed (sent by the watcher thread).
#[derive(Message, Debug, Clone)]
#[rtype(result = "()")]
struct StagingChanged(String);

fn table<R: crate::storage::db::Record>(db: &Db) -> Option<Table<R>> {
    match db.table::<R>() {
        Ok(t) => Some(t),
        Err(e) => {
            tracing::error!(table = R::TABLE, error = %e, "scheduler cannot open a table");
            None
        }
    }
}

/// The actor. See the module docs.
pub struct Scheduler {
    config: Config,
    db: Db,
    ccm: Recipient<RunJob>,
    core: schedule::Scheduler,
    /// The catch-up rule.
    catch_up: CatchUp,
    watcher: Option<notify::RecommendedWatcher>,
    /// Watched directory → site, shared with the watcher's thread.
    roots: Option<Roots>,
    watched: BTreeMap<String, PathBuf>,
}

type Roots = std::sync::Arc<std::sync::Mutex<BTreeMap<PathBuf, String>>>;

impl Scheduler {
    /// A scheduler over the CCM's database.
    pub fn new(config: Config, db: Db, ccm: Recipient<RunJob>) -> Self {
        let tz = schedule::parse_time_zone(&config.ccm.time_zone).unwrap_or(chrono_tz::UTC);
        Scheduler {
            config,
            db,
            ccm,
            core: schedule::Scheduler::new(tz),
            catch_up: CatchUp::default(),
            watcher: None,
            roots: None,
            watched: BTreeMap::new(),
        }
    }

    fn history(&self, kind: HistoryKind, message: String, site: Option<&str>) {
        crate::ops::append_history(&self.db, kind, message, None, site);
    }

    /// The core's view of a job.
    fn spec(&self, job: &JobRecord) -> JobSpec {
        let servers = table::<GroupRecord>(&self.db)
            .and_then(|t| t.get(&job.group).ok().flatten())
            .map(|g| g.servers.into_iter().collect())
            .unwrap_or_default();
        JobSpec {
            id: job.id,
            site: job.site.clone(),
            servers,
            schedule: job.schedule.clone(),
            conflict: job.policy.conflict,
            retry: job.policy.retry.clone(),
            enabled: job.enabled,
        }
    }

    fn load(&mut self, id: JobId, now: u64) -> Vec<Action> {
        let job = table::<JobRecord>(&self.db).and_then(|t| t.get(&id).ok().flatten());
        match job {
            Some(job) => {
                let times = (job.times != JobTimes::default()).then(|| job.times.clone());
                let spec = self.spec(&job);
                self.core.upsert(spec, times, now)
            }
            None => {
                self.core.remove(id);
                Vec::new()
            }
        }
    }

    /// Carries out the core's actions: persist first, then events, then starts.
    fn apply(&mut self, actions: Vec<Action>, ctx: &mut Context<Self>) {
        let jobs = table::<JobRecord>(&self.db);
        let mut persisted = false;
        for a in &actions {
            if let (Action::Persist { job, times }, Some(jobs)) = (a, &jobs) {
                let r = jobs.update(job, |j| {
                    j.map(|mut j| {
                        j.times = times.clone();
                        j
                    })
                });
                if let Err(e) = r {
                    tracing::error!(job = job.0, error = %e, "cannot persist the job's times");
                }
                persisted = true;
            }
        }
        if persisted {
            if let Err(e) = self.db.flush() {
                tracing::error!(error = %e, "cannot flush the job times; not starting runs");
                return;
            }
        }
        for a in actions {
            match a {
                Action::Persist { .. } => {}
                Action::Conflict { job, with, queued } => {
                    let site = jobs.as_ref().and_then(|t| t.get(&job).ok().flatten()).map(|j| j.site);
                    let what = if queued { "queued" } else { "cancelled (policy: cancel)" };
                    tracing::info!(event = "conflict", job = job.0, with = %with, queued);
                    self.history(
                        HistoryKind::Conflict,
                        format!(
                            "job {job} was due while job {with} runs on the same site and servers: {what}"
                        ),
                        site.as_deref(),
                    );
                }
                Action::Start { job, reason } => self.start(job, reason, ctx),
            }
        }
    }

    fn start(&mut self, job: JobId, reason: Reason, ctx: &mut Context<Self>) {
        let reason = match reason {
            Reason::Schedule => "schedule",
            Reason::Retry => "retry",
            Reason::Manual => "manual",
            Reason::Change => "change",
            Reason::Trigger => "trigger",
        };
        tracing::info!(event = "job_due", job = job.0, reason);
        self.ccm
            .send(RunJob { job, reason: reason.into() })
            .into_actor(self)
            .map(move |res, act, ctx| {
                let refused = match res {
                    Ok(Ok(_)) => return,
                    Ok(Err(e)) => e.to_string(),
                    Err(e) => e.to_string(),
                };
                tracing::warn!(event = "run_refused", job = job.0, error = %refused);
                act.history(
                    HistoryKind::RunRefused,
                    format!("job {job} was due ({reason}) but did not start: {refused}"),
                    None,
                );
                let actions = act.core.finished(job, false, unix_ms());
                act.apply(actions, ctx);
            })
            .spawn(ctx);
    }

    /// The per-group job of `kind` the scheduler runs by itself, made if needed.
    fn auto_job(&self, group: &GroupRecord, kind: JobKind) -> Option<JobId> {
        let jobs = table::<JobRecord>(&self.db)?;
        let name = format!("auto {} {}", kind.name(), group.name);
        let all = jobs.all().ok()?;
        if let Some(j) = all.iter().find(|j| j.name == name && j.group == group.name && j.kind == kind) {
            return Some(j.id);
        }
        let id = JobId(self.db.next("job").ok()?);
        let rec = JobRecord {
            id,
            name,
            site: group.site.clone(),
            group: group.name.clone(),
            kind,
            params: JobParams::default(),
            schedule: Schedule::Manual,
            policy: Policy::default(),
            enabled: true,
            times: JobTimes::default(),
            created_ms: unix_ms(),
            runs: Vec::new(),
            one_off: true,
        };
        jobs.put(&rec).ok()?;
        Some(id)
    }

    /// Starts replicate / synchronize runs for servers that need them (the
    /// rule is `protocol::catch_up`).
    fn catch_up(&mut self, now: u64) {
        let (Some(groups), Some(sites), Some(servers)) =
            (table::<GroupRecord>(&self.db), table::<SiteRecord>(&self.db), table::<ServerRecord>(&self.db))
        else {
            return;
        };
        let (Ok(groups), Ok(servers)) = (groups.all(), servers.all()) else { return };
        let servers: HashMap<NodeId, ServerRecord> = servers.into_iter().map(|s| (s.id, s)).collect();
        // The CCM hears of a leader's free space (its segment report), not a member's.
        let disk_free: HashMap<NodeId, u64> = table::<SegmentRecord>(&self.db)
            .and_then(|t| t.all().ok())
            .unwrap_or_default()
            .into_iter()
            .map(|s| (s.leader, s.disk_free))
            .collect();
        let views: Vec<GroupView> = groups
            .iter()
            .map(|g| {
                let site_serial = sites.get(&g.site).ok().flatten().map_or(0, |s| s.live_serial);
                let servers = g
                    .servers
                    .iter()
                    .map(|id| {
                        let rec = servers.get(id);
                        ServerView {
                            id: *id,
                            online: rec.is_some_and(|r| r.online),
                            live: rec.and_then(|r| r.live.get(&g.site).copied()).unwrap_or(0),
                            disk_free: disk_free.get(id).copied(),
                        }
                    })
                    .collect();
                GroupView { name: g.name.clone(), site: g.site.clone(), site_serial, servers }
            })
            .collect();
        for need in self.catch_up.check(now, &views) {
            let (name, kind) = match need {
                Need::Replicate(g) => (g, JobKind::Replicate),
                Need::Synchronize(g) => (g, JobKind::Synchronize),
            };
            let Some(g) = groups.iter().find(|g| g.name == name) else { continue };
            let Some(job) = self.auto_job(g, kind) else { continue };
            if self.core.is_running(job) {
                continue;
            }
            let actions = self.load(job, now);
            debug_assert!(actions.iter().all(|a| matches!(a, Action::Persist { .. })));
            if self.core.trigger(job, Reason::Trigger) {
                tracing::info!(event = "catch_up", job = job.0, kind = kind.name(), group = %g.name);
            }
        }
    }

    /// Watches the staging directories of sites with `on_change` jobs.
    fn rewatch(&mut self, ctx: &mut Context<Self>) {
        use notify::Watcher;
        let Some(jobs) = table::<JobRecord>(&self.db).and_then(|t| t.all().ok()) else { return };
        let Some(sites) = table::<SiteRecord>(&self.db) else { return };
        let mut want = BTreeMap::new();
        for j in jobs.iter().filter(|j| j.enabled && matches!(j.schedule, Schedule::OnChange { .. })) {
            if let Some(site) = sites.get(&j.site).ok().flatten() {
                want.insert(site.name, site.staging);
            }
        }
        if want == self.watched {
            return;
        }
        if self.watcher.is_none() {
            let addr = ctx.address();
            let roots: Roots = Default::default();
            let seen = roots.clone();
            let made = notify::recommended_watcher(move |ev: notify::Result<notify::Event>| {
                let Ok(ev) = ev else { return };
                let roots = seen.lock().unwrap_or_else(|p| p.into_inner());
                for (root, site) in roots.iter() {
                    if ev.paths.iter().any(|p| p.starts_with(root)) {
                        addr.do_send(StagingChanged(site.clone()));
                    }
                }
            });
            match made {
                Ok(w) => {
                    self.watcher = Some(w);
                    self.roots = Some(roots);
                }
                Err(e) => return tracing::error!(error = %e, "cannot watch staging directories"),
            }
        }
        let Some(w) = self.watcher.as_mut() else { return };
        for (site, dir) in &self.watched {
            if want.get(site) != Some(dir) {
                let _ = w.unwatch(dir);
            }
        }
        for (site, dir) in &want {
            if self.watched.get(site) != Some(dir) {
                if let Err(e) = w.watch(dir, notify::RecursiveMode::Recursive) {
                    tracing::error!(site = %site, dir = %dir.display(), error = %e, "cannot watch the staging directory");
                }
            }
        }
        if let Some(roots) = &self.roots {
            let mut r = roots.lock().unwrap_or_else(|p| p.into_inner());
            *r = want.iter().map(|(s, d)| (d.clone(), s.clone())).collect();
        }
        self.watched = want;
    }
}

impl Actor for Scheduler {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        let now = unix_ms();
        let ids: Vec<JobId> = table::<JobRecord>(&self.db)
            .and_then(|t| t.all().ok())
            .unwrap_or_default()
            .iter()
            .map(|j| j.id)
            .collect();
        let mut actions = Vec::new();
        for id in ids {
            actions.extend(self.load(id, now));
        }
        self.apply(actions, ctx);
        self.rewatch(ctx);
        let tick = self.config.ccm.scheduler_tick;
        let mut n: u64 = 0;
        ctx.run_interval(tick, move |act, ctx| {
            let now = unix_ms();
            n += 1;
            // Catch-up checks every ~2 s whatever the tick.
            let every = (2000 / tick.as_millis().max(1) as u64).max(1);
            if act.config.ccm.auto_catch_up && n % every == 0 {
                act.catch_up(now);
            }
            let actions = act.core.tick(now);
            act.apply(actions, ctx);
        });
    }
}

impl Scheduler {
    /// What run `run` tells the catch-up rule: its targets that did not get
    /// the release back off (logged, and in the history the UI shows),
    /// those that did are forgotten. A cancelled run tells nothing, nor does
    /// a target with no outcome at all (a run the CCM's restart ended never
    /// asked it: not its failure).
    fn backoffs_after(&mut self, run: &RunRecord, now: u64) {
        if matches!(run.state, RunState::Cancelled | RunState::Unchanged) {
            return;
        }
        for s in &run.targets {
            if !run.failed_servers.contains(s) {
                self.catch_up.server_caught_up(&run.group, *s);
                continue;
            }
            let error = match run.switched.get(s).or_else(|| run.applied.get(s)) {
                // Offline when planned: caught up once it is back, as before.
                Some(ServerOutcome::Failed { error }) if error == "offline" => continue,
                Some(ServerOutcome::Failed { error }) => error.clone(),
                Some(ServerOutcome::Silent) => "silent".to_owned(),
                Some(ServerOutcome::Succeeded) | None => continue,
            };
            let b = self.catch_up.server_failed(&run.group, *s, now, Failure::of(&error));
            let wait_s = b.until_ms.saturating_sub(now) / 1000;
            let until = if b.no_space {
                format!("until its free space changes (at most {wait_s} s)")
            } else {
                format!("for {wait_s} s")
            };
            tracing::warn!(event = "catch_up_backoff", server = s.0, group = %run.group, failures = b.failures, wait_s, no_space = b.no_space, error = %error);
            self.history(
                HistoryKind::CatchUpBackoff,
                format!(
                    "server {s} of group {} is not caught up again {until}: run {} failed there ({} in a row): {error}",
                    run.group, run.id, b.failures
                ),
                Some(&run.site),
            );
        }
    }
}

impl Handler<RunEnded> for Scheduler {
    type Result = ();

    fn handle(&mut self, msg: RunEnded, ctx: &mut Context<Self>) {
        let run = msg.0;
        self.catch_up.run_ended(run.id, unix_ms());
        self.backoffs_after(&run, unix_ms());
        // A cancelled run is not retried.
        let ok = matches!(run.state, RunState::Committed | RunState::Unchanged | RunState::Cancelled);
        let actions = self.core.finished(run.job, ok, unix_ms());
        self.apply(actions, ctx);
    }
}

impl Handler<RunBegan> for Scheduler {
    type Result = ();

    fn handle(&mut self, msg: RunBegan, _: &mut Context<Self>) {
        self.catch_up.run_began(msg.run, &msg.site);
        if !self.core.is_running(msg.job) {
            self.core.started_elsewhere(msg.job);
        }
    }
}

impl Handler<JobChanged> for Scheduler {
    type Result = ();

    fn handle(&mut self, msg: JobChanged, ctx: &mut Context<Self>) {
        let actions = self.load(msg.0, unix_ms());
        self.apply(actions, ctx);
        self.rewatch(ctx);
    }
}

impl Handler<StagingChanged> for Scheduler {
    type Result = ();

    fn handle(&mut self, msg: StagingChanged, _: &mut Context<Self>) {
        tracing::debug!(event = "staging_changed", site = %msg.0);
        self.core.staging_changed(&msg.0, unix_ms());
    }
}

impl Handler<StopScheduler> for Scheduler {
    type Result = ();

    fn handle(&mut self, _: StopScheduler, ctx: &mut Context<Self>) {
        self.watcher = None;
        ctx.stop();
    }
}
