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
//! in flight through [`Run::recover`].

mod store;
mod work;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;
use std::time::Duration;

use actix::prelude::*;
use thiserror::Error;

use self::store::table;
use super::assignment_creator::{pack_options, AssignmentCreator, CreateContent, CreateControl, Created};
use super::tree_planner::{PlanTree, SetOrder, TreePlanner};
use crate::clock::unix_ms;
use crate::config::Config;
use crate::net::client::{ClientError, NodeClient};
use crate::protocol::api::{
    AssignmentRef, HopTarget, NextHop, Notify, SegmentReport, SegmentResult, CCM_NODE,
};
use crate::protocol::assignment::Kind;
use crate::protocol::crypto::ContentKey;
use crate::protocol::distribution::{DistributionConfig, Stage, Target};
use crate::protocol::ids::{self, AssignmentId, AssignmentSerial, JobId, NodeId, RunId};
use crate::protocol::paths::SiteName;
use crate::protocol::run::{
    self, Action, CancelError, Plan, PlanError, Run, RunConfig, Saved, SiteUpdate, Wave,
};
use crate::protocol::schedule;
use crate::protocol::time::Time;
use crate::storage::checkpoint::{CheckpointInfo, Checkpoints};
use crate::storage::db::{Db, DbError};
use crate::storage::records::{
    AssignmentRecord, GroupRecord, HistoryKind, JobKind, JobRecord, Phase, Policy, RunRecord, RunState,
    SegmentProgress, SegmentRecord, SegmentState, SettingRecord, SiteRecord, SnapshotRecord,
};
use crate::storage::releases::{SiteOptions, SiteRoot};

/// Why the CCM refused or failed something; the API maps these to 4xx/5xx.
#[derive(Debug, Error)]
pub enum CcmError {
    /// Something named does not exist.
    #[error("{what} {name:?} does not exist")]
    NotFound {
        /// What kind of thing.
        what: &'static str,
        /// Its name or id.
        name: String,
    },
    /// Another run of the site is in progress on some of the same servers.
    #[error(
        "run {run} of site {site} (job {job}) is in progress on the same servers; wait for it or cancel it"
    )]
    RunInProgress {
        /// The run in progress.
        run: RunId,
        /// The site.
        site: String,
        /// Its job.
        job: JobId,
    },
    /// The job cannot run now.
    #[error(transparent)]
    Plan(#[from] PlanError),
    /// The run cannot be cancelled now.
    #[error(transparent)]
    Cancel(#[from] CancelError),
    /// The run is over.
    #[error("run {run} is over ({state:?})")]
    RunOver {
        /// The run.
        run: RunId,
        /// How it ended.
        state: RunState,
    },
    /// A checkpoint could not be made or read.
    #[error("checkpoint of site {site}: {error}")]
    Checkpoint {
        /// The site.
        site: String,
        /// What went wrong.
        error: String,
    },
    /// The database failed.
    #[error(transparent)]
    Db(#[from] DbError),
}

impl CcmError {
    /// True when the request conflicts with the state (HTTP 409).
    pub fn is_conflict(&self) -> bool {
        match self {
            CcmError::RunInProgress { .. } | CcmError::Cancel(_) | CcmError::RunOver { .. } => true,
            CcmError::Checkpoint { .. } => true,
            CcmError::Plan(p) => {
                !matches!(p, PlanError::MissingParam { .. } | PlanError::NoCheckpoint { .. })
            }
            _ => false,
        }
    }
}

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

/// Sets the admin static order of segments (stored; overrides `ccm.tree_order`).
#[derive(Message)]
#[rtype(result = "Result<(), CcmError>")]
pub struct SetTreeOrder(pub Vec<String>);

/// Makes a checkpoint of a site's live release; answers its description.
#[derive(Message)]
#[rtype(result = "Result<CheckpointInfo, CcmError>")]
pub struct CreateCheckpoint {
    /// The site.
    pub site: String,
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

/// A leader's segment report arrived.
#[derive(Message)]
#[rtype(result = "Result<(), CcmError>")]
pub struct SegmentReported(pub SegmentReport);

/// A leader holding assignment `assignment` asks for its next hop.
#[derive(Message)]
#[rtype(result = "NextHop")]
pub struct NextHopAsked {
    /// The leader.
    pub node: NodeId,
    /// The assignment.
    pub assignment: AssignmentId,
}

/// A segment's result for an assignment arrived.
#[derive(Message)]
#[rtype(result = "Result<(), CcmError>")]
pub struct SegmentResultReceived {
    /// The leader that sent it.
    pub node: NodeId,
    /// The result.
    pub result: SegmentResult,
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
}

fn wave_kind(wave: Wave) -> Kind {
    match wave {
        Wave::Content => Kind::Content,
        Wave::Commit => Kind::Commit,
        Wave::Abort => Kind::Abort,
        Wave::Switch => Kind::Rollback,
    }
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

    /// Plans and starts a run of `job_id`; `reason` says why.
    fn start_run(&mut self, job_id: JobId, reason: &str, ctx: &mut Context<Self>) -> Result<RunId, CcmError> {
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
        )?;
        // The one conflict rule (protocol::schedule's): same site, a server in common.
        let mine: BTreeSet<NodeId> = plan.targets.iter().copied().collect();
        let busy = self.runs.values().find(|d| {
            let theirs: BTreeSet<NodeId> = d.record.targets.iter().copied().collect();
            d.record.job == job.id || schedule::conflicts(&d.record.site, &theirs, &site.name, &mine)
        });
        if let Some(other) = busy {
            metrics::counter!("cmover_conflicts_total", "node" => crate::metrics::CCM).increment(1);
            let r = &other.record;
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
        let mut d = Driven { run, record, written: None, job, assignment: None, timer: None };
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

    fn pack(&mut self, id: RunId, ctx: &mut Context<Self>) {
        let Some(d) = self.runs.get(&id) else { return };
        let (plan, job) = (d.run.plan().clone(), d.job.clone());
        let prepared = self.pack_request(id, &plan, &job);
        let creator = self.creator.clone();
        async move {
            let (aid, old, prepare, options) = prepared?;
            let new = tokio::task::spawn_blocking(prepare).await.map_err(|e| e.to_string())??;
            let msg = CreateContent { id: aid, options, shadow: old, staging: new };
            creator.send(msg).await.map_err(|e| e.to_string())?.map_err(|e| e.to_string()).map(|c| (aid, c))
        }
        .into_actor(self)
        .map(move |res, act, ctx| {
            let _ = std::fs::remove_dir_all(act.work_dir(id));
            match res {
                Ok((aid, created)) => act.packed(id, aid, created, ctx),
                Err(e) => act.feed(id, ctx, |run, _| run.handle_failed(format!("packing failed: {e}"))),
            }
        })
        .spawn(ctx);
    }

    /// What packing needs: the assignment id, the old tree, how to make the
    /// new one, the options.
    fn pack_request(
        &self,
        id: RunId,
        plan: &Plan,
        job: &JobRecord,
    ) -> Result<(AssignmentId, PathBuf, work::Prepare, crate::storage::pack::PackOptions), String> {
        let aid = AssignmentId(self.db.next("assignment").map_err(|e| e.to_string())?);
        let name = SiteName::new(&job.site).map_err(|e| e.to_string())?;
        let key = if job.policy.encrypt.unwrap_or(self.config.ccm.encrypt) {
            let mut salt = [0u8; 32];
            ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut salt)
                .map_err(|_| "no system randomness for the encryption salt".to_owned())?;
            Some((self.content_key().ok_or("the cluster secret gives no content key")?, salt))
        } else {
            None
        };
        // Remove and hot runs pack what is live, unfiltered by the job.
        let policy = if matches!(job.kind, JobKind::Remove | JobKind::Hot) {
            Policy::default()
        } else {
            job.policy.clone()
        };
        let options = pack_options(&self.config, name, plan.serial, plan.base, job.id, key, &policy)
            .map_err(|e| e.to_string())?;
        let staging = table::<SiteRecord>(&self.db)
            .get(&job.site)
            .ok()
            .flatten()
            .map(|s| s.staging)
            .ok_or_else(|| format!("site {} is gone", job.site))?;
        let trees = work::Trees {
            live: self.shadow(&job.site).root().join(crate::storage::releases::LIVE),
            nothing: self.config.ccm.data_dir.join("nothing"),
            work: self.work_dir(id),
            staging,
            checkpoints: self.checkpoints(),
            site: job.site.clone(),
            paths: job.params.paths.clone(),
        };
        let (old, prepare) = work::trees(plan.source, plan.base, trees);
        Ok((aid, old, prepare, options))
    }

    fn work_dir(&self, id: RunId) -> PathBuf {
        self.config.ccm.data_dir.join("work").join(format!("run-{id}"))
    }

    fn packed(&mut self, id: RunId, aid: AssignmentId, created: Created, ctx: &mut Context<Self>) {
        let Some(d) = self.runs.get_mut(&id) else { return };
        let summary = created.summary.clone().unwrap_or_default();
        tracing::info!(event = "packed", run = id.0, assignment = aid.0, bytes = created.size, summary = %summary);
        d.record.summary = created.summary.clone();
        if d.run.cancelled() || summary.commands == 0 {
            let _ = std::fs::remove_file(&created.path);
            return self.feed(id, ctx, |run, now| run.handle_packed(now, aid, summary.commands));
        }
        let rec = AssignmentRecord {
            id: aid,
            site: d.record.site.clone(),
            serial: d.record.serial,
            kind: Wave::Content,
            run: id,
            size: created.size,
            sha256: created.sha256,
            created_ms: unix_ms(),
        };
        d.record.content_assignment = Some(aid);
        if let Err(e) = table::<AssignmentRecord>(&self.db).put(&rec) {
            return self.feed(id, ctx, |run, _| run.handle_failed(e.to_string()));
        }
        d.assignment = Some(rec);
        self.by_assignment.insert(aid, id);
        self.feed(id, ctx, |run, now| run.handle_packed(now, aid, summary.commands));
    }

    /// Makes the header-only assignment of `wave`.
    fn make_control(&mut self, id: RunId, wave: Wave, ctx: &mut Context<Self>) {
        let Some(d) = self.runs.get(&id) else { return };
        let (site, serial, job) = (d.record.site.clone(), d.record.serial, d.record.job);
        let aid = match self.db.next("assignment") {
            Ok(a) => AssignmentId(a),
            Err(e) => return self.feed(id, ctx, |run, _| run.handle_failed(e.to_string())),
        };
        let Ok(name) = SiteName::new(&site) else { return };
        let msg = CreateControl {
            id: aid,
            kind: wave_kind(wave),
            site: name,
            serial: AssignmentSerial(serial),
            job,
            created_ms: unix_ms(),
        };
        self.creator
            .send(msg)
            .into_actor(self)
            .map(move |res, act, ctx| {
                let created = match res.map_err(|e| e.to_string()).and_then(|r| r.map_err(|e| e.to_string()))
                {
                    Ok(c) => c,
                    Err(e) => {
                        let e = format!("cannot make the {} assignment: {e}", wave_kind(wave).name());
                        return act.feed(id, ctx, |run, _| run.handle_failed(e));
                    }
                };
                let rec = AssignmentRecord {
                    id: aid,
                    site,
                    serial,
                    kind: wave,
                    run: id,
                    size: created.size,
                    sha256: created.sha256,
                    created_ms: unix_ms(),
                };
                if let Err(e) = table::<AssignmentRecord>(&act.db).put(&rec).and_then(|_| act.db.flush()) {
                    tracing::error!(error = %e, "cannot record the assignment");
                }
                let Some(d) = act.runs.get_mut(&id) else { return };
                d.record.control_assignment = Some(aid);
                d.assignment = Some(rec);
                act.by_assignment.insert(aid, id);
                act.feed(id, ctx, |run, now| run.handle_assignment_made(now, wave, aid));
            })
            .spawn(ctx);
    }

    /// Orders the wave's segments' leaders.
    fn plan_tree(&mut self, id: RunId, names: Vec<String>, ctx: &mut Context<Self>) {
        let segments: Vec<SegmentRecord> =
            names.iter().filter_map(|n| table::<SegmentRecord>(&self.db).get(n).ok().flatten()).collect();
        self.planner
            .send(PlanTree { segments })
            .into_actor(self)
            .map(move |ordered, act, ctx| {
                let order = ordered
                    .unwrap_or_default()
                    .into_iter()
                    .map(|s| (s.name, s.leader, format!("http://{}", s.leader_http), s.incarnation))
                    .collect();
                act.feed(id, ctx, |run, now| run.handle_tree(now, order));
            })
            .spawn(ctx);
    }

    fn notify_of(&self, d: &Driven, target: &Target, fetch_from: String) -> Option<Notify> {
        let rec = d.assignment.as_ref()?;
        Some(Notify {
            assignment: AssignmentRef {
                id: rec.id,
                site: rec.site.clone(),
                serial: rec.serial,
                kind: wave_kind(rec.kind),
                size: rec.size,
                sha256: rec.sha256.clone(),
            },
            fetch_from,
            run: d.record.id,
            targets: target.servers.clone(),
            rate_limit: d.job.policy.bandwidth,
        })
    }

    /// Notifies `target` from the CCM.
    fn notify(&mut self, id: RunId, target: Target, ctx: &mut Context<Self>) {
        let Some(notify) = self.runs.get(&id).and_then(|d| self.notify_of(d, &target, self.config.ccm.url()))
        else {
            return;
        };
        let client = self.client.clone();
        let segment = target.segment.clone();
        tracing::info!(event = "notify", run = id.0, assignment = notify.assignment.id.0, segment = %segment, leader = %target.leader, from = "ccm");
        async move { client.post_json::<_, serde_json::Value>(&target.url, "/node/v1/notify", &notify).await }
            .into_actor(self)
            .map(move |res: Result<serde_json::Value, ClientError>, act, ctx| {
                if let Err(e) = res {
                    tracing::warn!(event = "notify_failed", run = id.0, segment = %segment, error = %e);
                    act.feed(id, ctx, |run, now| run.handle_notify_failed(now, &segment, &e.to_string()));
                }
            })
            .spawn(ctx);
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
        async move { tokio::task::spawn_blocking(work).await.map_err(|e| e.to_string()).and_then(|r| r) }
            .into_actor(self)
            .map(move |res, act, ctx| {
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
                    let _ =
                        table::<SnapshotRecord>(&act.db).put(&SnapshotRecord { at_ms: unix_ms(), ..snap });
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
        tracing::info!(event = kind.name(), run = run.id.0, site = %run.site, serial = run.serial, failed = ?run.failed_servers, error = ?run.error);
        self.history(kind, message, Some(run.id), Some(&run.site));
        let _ = self.save(run, true);
        crate::ops::run_metrics(run);
        for o in &self.ended {
            o.do_send(RunEnded(run.clone()));
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
            tracing::warn!(event = "run_recovered", run = record.id.0, state = ?record.state);
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
            self.runs.insert(id, Driven { run, record, written: None, job, assignment, timer: None });
            self.process(id, ctx);
        }
    }
}

/// A run's record as it starts.
fn new_record(id: RunId, job: &JobRecord, reason: &str, plan: &Plan) -> RunRecord {
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
fn recovered_plan(db: &Db, record: &RunRecord, job: &JobRecord) -> Plan {
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
fn describe(job: &JobRecord, plan: &Plan) -> String {
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
fn ending(run: &RunRecord) -> (HistoryKind, String) {
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
fn sync(d: &mut Driven) {
    let (run, r) = (&d.run, &mut d.record);
    r.state = run.state();
    r.applied = run.applied().clone();
    r.switched = run.switched().clone();
    r.failed_servers = run.failed().to_vec();
    if let Some(e) = run.error() {
        r.error = Some(e.to_owned());
    }
    let Some(dist) = run.distribution() else { return };
    for e in dist.entries() {
        let p: &mut SegmentProgress = r.segments.entry(e.target.segment.clone()).or_default();
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

impl Actor for Ccm {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        self.recover(ctx);
    }
}

impl Handler<RunJob> for Ccm {
    type Result = Result<RunId, CcmError>;

    fn handle(&mut self, msg: RunJob, ctx: &mut Context<Self>) -> Self::Result {
        self.start_run(msg.job, &msg.reason, ctx)
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

impl Handler<SetTreeOrder> for Ccm {
    type Result = Result<(), CcmError>;

    fn handle(&mut self, msg: SetTreeOrder, _: &mut Context<Self>) -> Self::Result {
        let value = serde_json::to_value(&msg.0).unwrap_or_default();
        table::<SettingRecord>(&self.db).put(&SettingRecord { name: "tree_order".into(), value })?;
        self.db.flush()?;
        let order = ids::join(&msg.0);
        self.history(
            HistoryKind::SettingsChanged,
            format!("static order of group leaders: {order}"),
            None,
            None,
        );
        self.planner.do_send(SetOrder(msg.0));
        Ok(())
    }
}

impl Handler<CreateCheckpoint> for Ccm {
    type Result = ResponseActFuture<Self, Result<CheckpointInfo, CcmError>>;

    fn handle(&mut self, msg: CreateCheckpoint, _: &mut Context<Self>) -> Self::Result {
        let prepared = (|| {
            let site = table::<SiteRecord>(&self.db)
                .get(&msg.site)?
                .ok_or(CcmError::NotFound { what: "site", name: msg.site.clone() })?;
            if site.live_serial == 0 {
                return Err(CcmError::Plan(PlanError::NoLiveRelease { site: site.name }));
            }
            Ok((site, self.db.next("checkpoint")?))
        })();
        let (site, id) = match prepared {
            Ok(p) => p,
            Err(e) => return Box::pin(actix::fut::ready(Err(e))),
        };
        let live = self.shadow(&site.name).root().join(crate::storage::releases::LIVE);
        let checkpoints = self.checkpoints();
        let keep = self.config.ccm.keep_checkpoints as usize;
        let name = site.name.clone();
        let work = move || -> Result<(CheckpointInfo, Vec<u64>), String> {
            // `live` is a symbolic link to the release directory.
            let tree = std::fs::canonicalize(&live).map_err(|e| format!("{}: {e}", live.display()))?;
            let info = checkpoints
                .create(&name, id, site.live_serial, &tree, unix_ms())
                .map_err(|e| e.to_string())?;
            let pruned = checkpoints.prune(&name, keep).map_err(|e| e.to_string())?;
            Ok((info, pruned))
        };
        let site = msg.site;
        Box::pin(
            async move { tokio::task::spawn_blocking(work).await.map_err(|e| e.to_string()).and_then(|r| r) }
                .into_actor(self)
                .map(move |res, act, _| match res {
                    Ok((info, pruned)) => {
                        let pruned = if pruned.is_empty() {
                            String::new()
                        } else {
                            format!("; deleted checkpoints {}", ids::join(&pruned))
                        };
                        act.history(
                            HistoryKind::CheckpointCreated,
                            format!(
                                "checkpoint {} of {} at release {} ({} files, {} bytes){pruned}",
                                info.id, info.site, info.serial, info.files, info.bytes
                            ),
                            None,
                            Some(&info.site),
                        );
                        let _ = act.db.flush();
                        Ok(info)
                    }
                    Err(error) => Err(CcmError::Checkpoint { site, error }),
                }),
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

impl Handler<SegmentReported> for Ccm {
    type Result = Result<(), CcmError>;

    fn handle(&mut self, msg: SegmentReported, ctx: &mut Context<Self>) -> Self::Result {
        let report = msg.0;
        let (leader_changed, discovered) = store::record_segment(&self.db, &report)?;
        for (id, name) in discovered {
            self.history(
                HistoryKind::ServerDiscovered,
                format!("server {id} ({name}) in segment {}", report.segment),
                None,
                None,
            );
        }
        if leader_changed {
            self.history(
                HistoryKind::LeaderChanged,
                format!("segment {} is led by {}", report.segment, report.leader),
                None,
                None,
            );
        }
        tracing::debug!(event = "segment_reported", segment = %report.segment, leader = %report.leader, members = report.members.len());
        let url = format!("http://{}", report.leader_http);
        let ids: Vec<RunId> = self.runs.keys().copied().collect();
        for id in ids {
            self.feed(id, ctx, |run, now| {
                run.handle_leader_seen(now, &report.segment, report.leader, &url, report.incarnation)
            });
        }
        Ok(())
    }
}

impl Handler<NextHopAsked> for Ccm {
    type Result = MessageResult<NextHopAsked>;

    fn handle(&mut self, msg: NextHopAsked, ctx: &mut Context<Self>) -> Self::Result {
        let now = self.now();
        let none = MessageResult(NextHop { target: None });
        let Some(&id) = self.by_assignment.get(&msg.assignment) else { return none };
        let Some(d) = self.runs.get_mut(&id) else { return none };
        if d.run.assignment() != Some(msg.assignment) {
            return none;
        }
        let from = d.run.leader_url(msg.node).map(str::to_owned);
        let next = d.run.handle_next_hop(now, msg.node);
        let target = match (next, from) {
            (Some(t), Some(from)) => self.runs.get(&id).and_then(|d| self.notify_of(d, &t, from)).map(|notify| {
                tracing::info!(event = "next_hop", run = id.0, assignment = msg.assignment.0, from = %msg.node, to = %t.leader, segment = %t.segment);
                HopTarget { node: t.leader, url: t.url.clone(), notify }
            }),
            _ => None,
        };
        self.process(id, ctx);
        MessageResult(NextHop { target })
    }
}

impl Handler<SegmentResultReceived> for Ccm {
    type Result = Result<(), CcmError>;

    fn handle(&mut self, msg: SegmentResultReceived, ctx: &mut Context<Self>) -> Self::Result {
        let r = msg.result;
        let aid = r.assignment;
        // A late or repeated report for a wave that is over: acknowledged, ignored.
        let Some(&id) = self.by_assignment.get(&aid) else { return Ok(()) };
        let now = self.now();
        let Some(d) = self.runs.get_mut(&id) else { return Ok(()) };
        if !d.run.handle_segment_result(now, aid, &r.segment, &r.servers) {
            return Ok(());
        }
        if d.run.wave() == Wave::Content && r.delivery.is_some() {
            d.record.segments.entry(r.segment.clone()).or_default().delivery = r.delivery;
        }
        tracing::info!(event = "segment_result", run = id.0, assignment = r.assignment.0, segment = %r.segment, leader = %msg.node,
            succeeded = r.servers.values().filter(|o| **o == crate::protocol::api::ServerOutcome::Succeeded).count(), servers = r.servers.len());
        self.process(id, ctx);
        Ok(())
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
