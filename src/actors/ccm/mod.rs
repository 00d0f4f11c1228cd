//! Ccm: the controller's job orchestration (DESIGN §4 steps 2–9), a driver
//! of the run core ([`crate::protocol::run`]).
//!
//! A run is planned by [`run::plan`] (targets, quorum, serial, source) and
//! carried by a [`Run`]: this actor only does what the core's actions say
//! (pack with the `AssignmentCreator`, order leaders with the
//! `TreePlanner`, notify leaders over HTTP, write records, bring the shadow
//! copy along) and feeds back what happened (packed, a next-hop request, a
//! segment result, a leader seen, a failed notify, time). One timer per run,
//! armed from [`Run::poll_timeout`]; no polling.
//!
//! Every change to a run is written to the database, and flushed before it
//! is acknowledged to a client or a peer. On start the actor recovers runs
//! in flight through [`Run::recover`]. A recovered run sends nothing until
//! every segment it concerns has reported since the start (its leader may
//! be back on another address), or [`RECOVERY_HOLD`] has passed; a new run
//! that conflicts with a recovered one waits for it to close (at most
//! [`RECOVERY_WAIT`]) instead of being refused at once.

mod checkpoint;
mod error;
mod leaders;
mod pack;
mod preview;
mod record;
mod store;
mod work;

pub use self::checkpoint::CreateCheckpoint;
pub use self::error::CcmError;
pub use self::leaders::{
    NextHopAsked, ProgressReported, SegmentReported, SegmentResultReceived, SetTreeOrder,
};
pub use self::pack::PackError;
pub use self::preview::{Preview, PreviewRun};
pub use self::work::WorkError;

use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;
use std::time::Duration;

use actix::prelude::*;

use self::record::{describe, ending, new_record, recovered_plan, sync};
use self::store::table;
use super::assignment_creator::AssignmentCreator;
use super::tree_planner::TreePlanner;
use crate::clock::unix_ms;
use crate::config::Config;
use crate::net::client::NodeClient;
use crate::protocol::api::CCM_NODE;
use crate::protocol::crypto::ContentKey;
use crate::protocol::distribution::DistributionConfig;
use crate::protocol::ids::{AssignmentId, JobId, NodeId, RunId};
use crate::protocol::run::{self, Action, Plan, PlanError, Run, RunConfig, Saved, SiteUpdate};
use crate::protocol::schedule;
use crate::protocol::time::Time;
use crate::storage::checkpoint::Checkpoints;
use crate::storage::db::{Db, DbError};
use crate::storage::records::{
    AssignmentRecord, GroupRecord, HistoryKind, JobRecord, Phase, RunRecord, RunState, SettingRecord,
    SiteRecord, SnapshotRecord,
};
use crate::storage::releases::{SiteOptions, SiteRoot};

/// Runs job `job` now; answers the new run's id once it is recorded.
#[derive(Message)]
#[rtype(result = "Result<RunId, CcmError>")]
pub struct RunJob {
    /// The job.
    pub job: JobId,
    /// Why: `manual`, `schedule`, `retry`, `change`, `trigger`.
    pub reason: String,
}

/// Cancels run `run` unless it is already committing.
#[derive(Message)]
#[rtype(result = "Result<(), CcmError>")]
pub struct CancelRun(pub RunId);

/// Answers the runs in progress.
#[derive(Message)]
#[rtype(result = "Vec<ActiveRun>")]
pub struct ActiveRuns;

/// A run in progress, as [`ActiveRuns`] answers it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ActiveRun {
    /// The run.
    pub id: RunId,
    /// The servers it sends to (a catch-up run: only those that lag).
    pub targets: Vec<NodeId>,
}

/// A run started (event, to the scheduler), by the scheduler or not.
#[derive(Message, Debug, Clone)]
#[rtype(result = "()")]
pub struct RunBegan {
    /// Its job.
    pub job: JobId,
    /// The run.
    pub run: RunId,
    /// Its site.
    pub site: String,
}

/// A run ended (event, to the scheduler, the load balancer and the caches),
/// after its final state and the site's live release were recorded.
#[derive(Message, Debug, Clone)]
#[rtype(result = "()")]
pub struct RunEnded(pub RunRecord);

/// Where to tell that runs began and ended.
#[derive(Message)]
#[rtype(result = "()")]
pub struct ObserveRuns {
    /// Told of every run that ends.
    pub ended: Recipient<RunEnded>,
    /// Told of every run that begins.
    pub began: Recipient<RunBegan>,
}

/// Stops the orchestrator (runs in flight stay in the database and are
/// recovered by the next start).
#[derive(Message)]
#[rtype(result = "()")]
pub struct Shutdown;

/// The path of assignment file `id`, if the CCM made it.
#[derive(Message)]
#[rtype(result = "Option<PathBuf>")]
pub struct AssignmentPath(pub AssignmentId);

/// How long a recovered run waits for fresh segment reports before it
/// sends its closing wave to the leaders the database knows.
pub const RECOVERY_HOLD: Duration = Duration::from_secs(20);

/// How long a new run that conflicts with a recovered one (still closing)
/// waits for it to end before it is refused (less than a client's 30 s).
pub const RECOVERY_WAIT: Duration = Duration::from_secs(25);

/// A run being driven.
struct Driven {
    run: Run,
    record: RunRecord,
    /// The record as last written.
    written: Option<RunRecord>,
    job: JobRecord,
    /// The wave's assignment.
    assignment: Option<AssignmentRecord>,
    timer: Option<SpawnHandle>,
    /// Recovered after a restart and not ended yet.
    recovered: bool,
    /// Recovered, and waiting for fresh segment reports before it sends.
    held: bool,
}

/// The actor. See the module docs.
pub struct Ccm {
    config: Config,
    db: Db,
    secret: Vec<u8>,
    client: NodeClient,
    creator: Addr<AssignmentCreator>,
    planner: Addr<TreePlanner>,
    epoch: actix::clock::Instant,
    runs: HashMap<RunId, Driven>,
    by_assignment: HashMap<AssignmentId, RunId>,
    began: Vec<Recipient<RunBegan>>,
    /// Told of every run that ends (scheduler, load balancer, caches).
    ended: Vec<Recipient<RunEnded>>,
    /// Segments that reported since this start.
    fresh: BTreeSet<String>,
    /// New runs waiting for a recovered run to end.
    closing: HashMap<RunId, Vec<tokio::sync::oneshot::Sender<()>>>,
}

impl Ccm {
    /// A controller over an open database. `secret` is the cluster secret.
    pub fn new(config: Config, db: Db, secret: Vec<u8>) -> Self {
        let client = NodeClient::new(&secret, CCM_NODE, Duration::from_secs(30));
        let creator = AssignmentCreator::new(config.ccm.data_dir.join("assignments")).start();
        // An order set through the API overrides the configuration's.
        let order = db
            .table::<SettingRecord>()
            .ok()
            .and_then(|t| t.get(&"tree_order".to_owned()).ok().flatten())
            .and_then(|r| serde_json::from_value(r.value).ok())
            .unwrap_or_else(|| config.ccm.tree_order.clone());
        let planner = TreePlanner::new(order).start();
        Ccm {
            config,
            db,
            secret,
            client,
            creator,
            planner,
            epoch: actix::clock::Instant::now(),
            runs: HashMap::new(),
            by_assignment: HashMap::new(),
            began: Vec::new(),
            ended: Vec::new(),
            fresh: BTreeSet::new(),
            closing: HashMap::new(),
        }
    }

    /// Tells `observers` of every run that ends.
    pub fn with_observers(mut self, observers: Vec<Recipient<RunEnded>>) -> Self {
        self.ended.extend(observers);
        self
    }

    fn now(&self) -> Time {
        Time::from_micros(u64::try_from(self.epoch.elapsed().as_micros()).unwrap_or(u64::MAX))
    }

    fn run_config(&self) -> RunConfig {
        let c = &self.config.ccm;
        RunConfig {
            distribution: DistributionConfig {
                fanout: c.fanout as usize,
                notify_timeout: c.notify_timeout,
                max_attempts: c.max_attempts,
                retry_delay: c.retry_delay,
            },
            report_timeout: c.report_timeout,
        }
    }

    fn shadow(&self, site: &str) -> SiteRoot {
        // It keeps as many releases as the servers do: rollback and switch
        // check what it holds.
        let opts = SiteOptions {
            min_free_disk: 0,
            keep_releases: self.config.releases.keep_releases,
            ..SiteOptions::default()
        };
        SiteRoot::new(self.config.ccm.data_dir.join("shadow").join(site), opts)
    }

    /// The site's checkpoints.
    pub fn checkpoints(&self) -> Checkpoints {
        Checkpoints::new(self.config.ccm.data_dir.join("checkpoints"))
    }

    fn content_key(&self) -> Option<ContentKey> {
        ContentKey::from_secret(&self.secret).ok()
    }

    fn history(&self, kind: HistoryKind, message: String, run: Option<RunId>, site: Option<&str>) {
        crate::ops::append_history(&self.db, kind, message, run, site);
    }

    fn save(&self, run: &RunRecord, durable: bool) -> Result<(), DbError> {
        let result =
            table::<RunRecord>(&self.db)
                .put(run)
                .and_then(|_| if durable { self.db.flush() } else { Ok(()) });
        if let Err(e) = &result {
            tracing::error!(run = run.id.0, error = %e, "cannot save the run");
        }
        result
    }

    /// Plans a run of `job_id` as it would start now: the job, its site,
    /// and the plan (or why the job cannot run now).
    fn plan_of(&self, job_id: JobId) -> Result<(JobRecord, SiteRecord, Result<Plan, PlanError>), CcmError> {
        let job = table::<JobRecord>(&self.db)
            .get(&job_id)?
            .ok_or(CcmError::NotFound { what: "job", name: job_id.to_string() })?;
        let site = table::<SiteRecord>(&self.db)
            .get(&job.site)?
            .ok_or(CcmError::NotFound { what: "site", name: job.site.clone() })?;
        let group = table::<GroupRecord>(&self.db)
            .get(&job.group)?
            .ok_or(CcmError::NotFound { what: "content group", name: job.group.clone() })?;
        let plan = run::plan(
            &store::job_view(&job, &self.checkpoints()),
            &store::site_view(&self.db, &site, &self.shadow(&site.name))?,
            &store::group_view(&group),
            &store::server_views(&self.db, &site.name)?,
        );
        Ok((job, site, plan))
    }

    /// The run in progress that a run of `job` for `targets` of `site`
    /// would conflict with (the one rule, `protocol::schedule`'s: the same
    /// job, or the same site and a server in common).
    fn conflicting(&self, job: JobId, site: &str, targets: &[NodeId]) -> Option<&RunRecord> {
        let mine: BTreeSet<NodeId> = targets.iter().copied().collect();
        self.runs.values().map(|d| &d.record).find(|r| {
            let theirs: BTreeSet<NodeId> = r.targets.iter().copied().collect();
            r.job == job || schedule::conflicts(&r.site, &theirs, site, &mine)
        })
    }

    /// Plans and starts a run of `job_id`; `reason` says why.
    fn start_run(&mut self, job_id: JobId, reason: &str, ctx: &mut Context<Self>) -> Result<RunId, CcmError> {
        let (job, site, plan) = self.plan_of(job_id)?;
        let plan = plan?;
        if let Some(r) = self.conflicting(job.id, &site.name, &plan.targets) {
            metrics::counter!("cmover_conflicts_total", "node" => crate::metrics::CCM).increment(1);
            return Err(CcmError::RunInProgress { run: r.id, site: r.site.clone(), job: r.job });
        }
        let id = RunId(self.db.next("run")?);
        for to in &self.began {
            to.do_send(RunBegan { job: job.id, run: id, site: site.name.clone() });
        }
        table::<JobRecord>(&self.db).update(&job.id, |j| {
            j.map(|mut j| {
                j.runs.push(id);
                j
            })
        })?;
        if job.kind.takes_fresh_serial() && plan.start == run::Start::Go {
            table::<SiteRecord>(&self.db).update(&site.name, |s| {
                s.map(|mut s| {
                    s.last_serial = s.last_serial.max(plan.serial);
                    s
                })
            })?;
        }
        let record = new_record(id, &job, reason, &plan);
        let what = describe(&job, &plan);
        let run = Run::start(id, plan, self.run_config());
        let mut d = Driven {
            run,
            record,
            written: None,
            job,
            assignment: None,
            timer: None,
            recovered: false,
            held: false,
        };
        sync(&mut d);
        if !d.run.state().is_final() {
            // A run the API acknowledges is on disk.
            self.save(&d.record, true)?;
            self.history(
                HistoryKind::RunStarted,
                format!("run {id} of job {} {what}", d.job.id),
                Some(id),
                Some(&site.name),
            );
            tracing::info!(event = "run_started", run = id.0, job = d.job.id.0, kind = d.job.kind.name(), reason, site = %site.name, serial = d.record.serial);
        }
        self.runs.insert(id, d);
        self.process(id, ctx);
        Ok(id)
    }

    /// Feeds run `id` an event, then carries out what it asks.
    fn feed(&mut self, id: RunId, ctx: &mut Context<Self>, event: impl FnOnce(&mut Run, Time)) {
        let now = self.now();
        let Some(d) = self.runs.get_mut(&id) else { return };
        event(&mut d.run, now);
        self.process(id, ctx);
    }

    /// Carries out the run's actions, then re-arms its timer.
    fn process(&mut self, id: RunId, ctx: &mut Context<Self>) {
        loop {
            let Some(d) = self.runs.get_mut(&id) else { return };
            if d.held {
                return;
            }
            let Some(action) = d.run.poll_action() else { break };
            match action {
                Action::Save { durable } => {
                    sync(d);
                    let record = d.record.clone();
                    if self.save(&record, durable).is_ok() {
                        if let Some(d) = self.runs.get_mut(&id) {
                            d.written = Some(record);
                        }
                    }
                }
                Action::Phase(name) => d.record.phases.push(Phase { name, at_ms: unix_ms() }),
                Action::Pack => self.pack(id, ctx),
                Action::MakeAssignment(wave) => self.make_control(id, wave, ctx),
                Action::PlanTree { segments } => self.plan_tree(id, segments, ctx),
                Action::Notify(target) => self.notify(id, target, ctx),
                Action::RecordLive { servers, serial, hot } => {
                    store::record_live(&self.db, &d.record.site, serial, &servers, hot)
                }
                Action::UpdateSite(update) => self.update_site(id, update, ctx),
                Action::End => return self.end(id, ctx),
            }
        }
        let now = self.now();
        let Some(d) = self.runs.get_mut(&id) else { return };
        sync(d);
        // Progress shows in the record (the API and the UI read it).
        if d.written.as_ref() != Some(&d.record) {
            let record = d.record.clone();
            d.written = Some(record.clone());
            let _ = self.save(&record, false);
        }
        let Some(d) = self.runs.get_mut(&id) else { return };
        if let Some(h) = d.timer.take() {
            ctx.cancel_future(h);
        }
        if let Some(at) = d.run.poll_timeout() {
            let wait = at.saturating_since(now);
            d.timer = Some(ctx.run_later(wait, move |act, ctx| {
                if let Some(d) = act.runs.get_mut(&id) {
                    d.timer = None;
                }
                act.feed(id, ctx, |run, now| run.handle_timeout(now));
            }));
        }
    }

    /// Brings the shadow copy, the site's live release and the snapshot along.
    fn update_site(&mut self, id: RunId, update: SiteUpdate, ctx: &mut Context<Self>) {
        let Some(d) = self.runs.get(&id) else { return };
        let (site, serial) = (d.record.site.clone(), d.record.serial);
        let content = d.record.content_assignment.unwrap_or_default();
        let snapshot = (update == SiteUpdate::Apply).then(|| SnapshotRecord {
            site: site.clone(),
            serial,
            job: d.record.job,
            run: id,
            assignment: content,
            at_ms: 0,
            summary: d.record.summary.clone(),
        });
        let shadow = self.shadow(&site);
        let path = crate::storage::assignment_file::assignment_path(
            &self.config.ccm.data_dir.join("assignments"),
            content,
        );
        let key = self.content_key();
        let work = move || work::update_shadow(&shadow, update, serial, &path, key.as_ref());
        async move {
            tokio::task::spawn_blocking(work)
                .await
                .map_err(|e| WorkError::Stopped { error: e.to_string() })?
        }
        .into_actor(self)
        .map(move |res: Result<(), WorkError>, act, ctx| {
            if let Err(e) = res {
                tracing::error!(event = "shadow_failed", site = %site, serial, error = %e);
                act.history(
                    HistoryKind::ShadowFailed,
                    format!("shadow copy of {site} not updated: {e}"),
                    Some(id),
                    Some(&site),
                );
            }
            let _ = table::<SiteRecord>(&act.db).update(&site, |s| {
                s.map(|mut s| {
                    s.live_serial = serial;
                    s
                })
            });
            if let Some(snap) = snapshot {
                let _ = table::<SnapshotRecord>(&act.db).put(&SnapshotRecord { at_ms: unix_ms(), ..snap });
            }
            act.feed(id, ctx, |run, _| run.handle_site_updated());
        })
        .spawn(ctx);
    }

    /// The run is over: its record (flushed), history, metrics, observers.
    fn end(&mut self, id: RunId, ctx: &mut Context<Self>) {
        let Some(mut d) = self.runs.remove(&id) else { return };
        self.by_assignment.retain(|_, r| *r != id);
        if let Some(h) = d.timer.take() {
            ctx.cancel_future(h);
        }
        sync(&mut d);
        let run = &mut d.record;
        run.finished_ms = Some(unix_ms());
        let (kind, message) = ending(run);
        let failed = crate::protocol::ids::join(&run.failed_servers);
        let (site, error) = (run.site.as_str(), run.error.as_deref());
        let (event, n) = (kind.name(), run.failed_servers.len());
        if matches!(run.state, RunState::Failed) || n > 0 {
            tracing::warn!(
                event,
                run = run.id.0,
                site,
                serial = run.serial,
                state = run.state.name(),
                failed_count = n,
                failed,
                error,
                "{message}"
            );
        } else {
            tracing::info!(
                event,
                run = run.id.0,
                site,
                serial = run.serial,
                state = run.state.name(),
                failed_count = n,
                "{message}"
            );
        }
        self.history(kind, message, Some(run.id), Some(&run.site));
        let _ = self.save(run, true);
        crate::ops::run_metrics(run);
        for o in &self.ended {
            o.do_send(RunEnded(run.clone()));
        }
        for waiting in self.closing.remove(&id).unwrap_or_default() {
            let _ = waiting.send(());
        }
    }

    /// Marks the servers of `segment` offline if it has not reported within
    /// `ccm.segment_silence` from now (checked then; every report re-arms it).
    pub(super) fn watch_silence(&mut self, segment: String, ctx: &mut Context<Self>) {
        let silence = self.config.ccm.segment_silence;
        ctx.run_later(silence + Duration::from_millis(10), move |act, _| {
            let silence_ms = u64::try_from(silence.as_millis()).unwrap_or(u64::MAX);
            match store::mark_silent(&act.db, &segment, unix_ms(), silence_ms) {
                Ok(gone) if !gone.is_empty() => {
                    let ids = crate::protocol::ids::join(&gone);
                    tracing::warn!(event = "segment_silent", segment = %segment, servers = %ids);
                    act.history(
                        HistoryKind::SegmentSilent,
                        format!(
                            "segment {segment} has not reported for {}: servers {ids} count as offline",
                            humantime::format_duration(silence)
                        ),
                        None,
                        None,
                    );
                }
                Ok(_) => {}
                Err(e) => tracing::error!(segment = %segment, error = %e, "cannot mark a silent segment"),
            }
        });
    }

    /// Lets held recovered runs send once every segment they concern has
    /// reported since the start (or, with `all`, whatever has reported).
    fn release_held(&mut self, all: bool, ctx: &mut Context<Self>) {
        let ready: Vec<RunId> = self
            .runs
            .iter()
            .filter(|(_, d)| {
                d.held && (all || d.run.plan().segments.values().all(|s| self.fresh.contains(s)))
            })
            .map(|(id, _)| *id)
            .collect();
        for id in ready {
            if let Some(d) = self.runs.get_mut(&id) {
                d.held = false;
                tracing::info!(event = "run_recovery_released", run = id.0, fresh = !all);
            }
            self.process(id, ctx);
        }
    }

    /// Starts a run of `job`; if a run recovered after a restart stands in
    /// its way, waits for that one to close (until `deadline`) and tries again.
    fn start_or_wait(
        &mut self,
        job: JobId,
        reason: String,
        deadline: actix::clock::Instant,
        ctx: &mut Context<Self>,
    ) -> ResponseActFuture<Self, Result<RunId, CcmError>> {
        match self.start_run(job, &reason, ctx) {
            Err(CcmError::RunInProgress { run, .. })
                if self.runs.get(&run).is_some_and(|d| d.recovered)
                    && actix::clock::Instant::now() < deadline =>
            {
                tracing::info!(event = "run_waits_for_recovery", job = job.0, run = run.0);
                let (tx, rx) = tokio::sync::oneshot::channel();
                self.closing.entry(run).or_default().push(tx);
                Box::pin(
                    async move {
                        let _ = tokio::time::timeout_at(deadline, rx).await;
                    }
                    .into_actor(self)
                    .then(move |(), act, ctx| {
                        if actix::clock::Instant::now() >= deadline {
                            // One last try: refused as before if still in the way.
                            Box::pin(actix::fut::ready(act.start_run(job, &reason, ctx)))
                        } else {
                            act.start_or_wait(job, reason, deadline, ctx)
                        }
                    }),
                )
            }
            other => Box::pin(actix::fut::ready(other)),
        }
    }

    /// Restart: every run that was in flight goes on through [`Run::recover`].
    fn recover(&mut self, ctx: &mut Context<Self>) {
        let runs = match table::<RunRecord>(&self.db).all() {
            Ok(r) => r,
            Err(e) => return tracing::error!(error = %e, "cannot read runs to recover"),
        };
        for record in runs.into_iter().filter(|r| !r.state.is_final()) {
            let Ok(Some(job)) = table::<JobRecord>(&self.db).get(&record.job) else {
                tracing::error!(run = record.id.0, "the job of a run in flight is gone");
                continue;
            };
            tracing::warn!(
                event = "run_recovered",
                run = record.id.0,
                state = record.state.name(),
                "run in flight recovered"
            );
            let id = record.id;
            let plan = recovered_plan(&self.db, &record, &job);
            let saved = Saved {
                state: record.state,
                content: record.content_assignment,
                applied: record.applied.clone(),
            };
            let run = Run::recover(id, plan, self.run_config(), saved);
            if run.state() == RunState::Committing {
                self.history(
                    HistoryKind::RunResumed,
                    format!("run {id}: commit resumed after a restart"),
                    Some(id),
                    Some(&record.site),
                );
            }
            let assignment = record
                .content_assignment
                .and_then(|a| table::<AssignmentRecord>(&self.db).get(&a).ok().flatten());
            // Held until its leaders report: they may be back on new addresses.
            let held = !run.state().is_final();
            let d =
                Driven { run, record, written: None, job, assignment, timer: None, recovered: true, held };
            self.runs.insert(id, d);
            if !held {
                self.process(id, ctx);
            }
        }
        if self.runs.values().any(|d| d.held) {
            ctx.run_later(RECOVERY_HOLD, |act, ctx| act.release_held(true, ctx));
        }
    }
}

impl Actor for Ccm {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        self.recover(ctx);
        // Segments silent since before this start go offline too.
        let known = table::<crate::storage::records::SegmentRecord>(&self.db).all().unwrap_or_default();
        for s in known {
            self.watch_silence(s.name, ctx);
        }
    }
}

impl Handler<RunJob> for Ccm {
    type Result = ResponseActFuture<Self, Result<RunId, CcmError>>;

    fn handle(&mut self, msg: RunJob, ctx: &mut Context<Self>) -> Self::Result {
        let deadline = actix::clock::Instant::now() + RECOVERY_WAIT;
        self.start_or_wait(msg.job, msg.reason, deadline, ctx)
    }
}

impl Handler<CancelRun> for Ccm {
    type Result = Result<(), CcmError>;

    fn handle(&mut self, msg: CancelRun, ctx: &mut Context<Self>) -> Self::Result {
        let id = msg.0;
        let now = self.now();
        let Some(d) = self.runs.get_mut(&id) else {
            return match table::<RunRecord>(&self.db).get(&id)? {
                Some(r) => Err(CcmError::RunOver { run: id, state: r.state }),
                None => Err(CcmError::NotFound { what: "run", name: id.to_string() }),
            };
        };
        let first = !d.run.cancelled();
        d.run.handle_cancel(now)?;
        if first {
            let site = d.record.site.clone();
            sync(d);
            let record = d.record.clone();
            // A cancel survives a restart (recovery then aborts the run).
            self.save(&record, true)?;
            tracing::info!(event = "run_cancelled", run = id.0);
            self.history(
                HistoryKind::CancelRequested,
                format!("run {id}: cancel requested"),
                Some(id),
                Some(&site),
            );
        }
        self.process(id, ctx);
        Ok(())
    }
}

impl Handler<ActiveRuns> for Ccm {
    type Result = MessageResult<ActiveRuns>;

    fn handle(&mut self, _: ActiveRuns, _: &mut Context<Self>) -> Self::Result {
        MessageResult(
            self.runs
                .iter()
                .map(|(id, d)| ActiveRun { id: *id, targets: d.run.plan().targets.clone() })
                .collect(),
        )
    }
}

impl Handler<ObserveRuns> for Ccm {
    type Result = ();

    fn handle(&mut self, msg: ObserveRuns, _: &mut Context<Self>) {
        self.ended.push(msg.ended);
        self.began.push(msg.began);
    }
}

impl Handler<AssignmentPath> for Ccm {
    type Result = Option<PathBuf>;

    fn handle(&mut self, msg: AssignmentPath, _: &mut Context<Self>) -> Self::Result {
        let rec = table::<AssignmentRecord>(&self.db).get(&msg.0).ok().flatten()?;
        Some(crate::storage::assignment_file::assignment_path(
            &self.config.ccm.data_dir.join("assignments"),
            rec.id,
        ))
    }
}

impl Handler<Shutdown> for Ccm {
    type Result = ();

    fn handle(&mut self, _: Shutdown, ctx: &mut Context<Self>) {
        tracing::info!(event = "ccm_shutdown", runs_in_flight = self.runs.len());
        let _ = self.db.flush();
        ctx.stop();
    }
}
