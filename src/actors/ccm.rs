//! Ccm: the controller's job orchestration (DESIGN §4 steps 2–9).
//!
//! A run goes: check the quorum can be met → pack the change (the
//! `AssignmentCreator`) → distribute the content assignment along the
//! store-and-forward tree (a `Distribution` core per assignment; the
//! `TreePlanner` orders the leaders) → collect one `SegmentResult` per
//! segment → if enough servers of the content group hold the release,
//! distribute a commit (every server switches `live`), otherwise an abort
//! (nothing goes live anywhere) → record the snapshot, update the shadow
//! copy, append to the history.
//!
//! Every change to a run is written to the database, and flushed before it
//! is acknowledged to a client or a peer. On start the actor resumes runs
//! that were committing (a commit is idempotent on the servers) and fails
//! cleanly, with an abort, the runs that had not reached the commit.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;
use std::time::Duration;

use actix::prelude::*;
use thiserror::Error;

use super::assignment_creator::{pack_options, AssignmentCreator, CreateContent, CreateControl, Created};
use super::scheduler::{RunBegan, RunEnded};
use super::tree_planner::{PlanTree, SetOrder, TreePlanner};
use crate::clock::unix_ms;
use crate::config::Config;
use crate::net::client::{ClientError, NodeClient};
use crate::protocol::api::{
    AssignmentRef, HopTarget, MemberReport, NextHop, Notify, SegmentReport, SegmentResult, ServerOutcome,
    CCM_NODE,
};
use crate::protocol::assignment::Kind;
use crate::protocol::crypto::ContentKey;
use crate::protocol::distribution::{Distribution, DistributionConfig, Stage, Target};
use crate::protocol::ids::{AssignmentSerial, JobId, NodeId};
use crate::protocol::paths::SiteName;
use crate::protocol::time::Time;
use crate::storage::assignment_file::AssignmentFile;
use crate::storage::checkpoint::{CheckpointInfo, Checkpoints};
use crate::storage::db::{Db, DbError, Table};
use crate::storage::records::{
    AssignmentRecord, GroupRecord, JobKind, JobRecord, Phase, Policy, RunRecord, RunState, SegmentProgress,
    SegmentRecord, ServerRecord, SettingRecord, SiteRecord, SnapshotRecord,
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
    /// The request conflicts with the state (a run already in progress…).
    #[error("{0}")]
    Conflict(String),
    /// A field of the job is missing or wrong.
    #[error("{field}: {message}")]
    Invalid {
        /// The field.
        field: &'static str,
        /// What is wrong.
        message: String,
    },
    /// The database failed.
    #[error(transparent)]
    Db(#[from] DbError),
}

/// Runs job `job` now; answers the new run's id once it is recorded.
#[derive(Message)]
#[rtype(result = "Result<u64, CcmError>")]
pub struct RunJob {
    /// The job.
    pub job: JobId,
    /// Why: `manual`, `schedule`, `retry`, `change`, `trigger`.
    pub reason: String,
}

/// Cancels run `run` unless it is already committing (then `Conflict`).
#[derive(Message)]
#[rtype(result = "Result<(), CcmError>")]
pub struct CancelRun(pub u64);

/// Answers the runs in progress.
#[derive(Message)]
#[rtype(result = "Vec<ActiveRun>")]
pub struct ActiveRuns;

/// A run in progress, as [`ActiveRuns`] answers it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ActiveRun {
    /// The run.
    pub id: u64,
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

/// Where to tell that runs ended (the scheduler).
#[derive(Message)]
#[rtype(result = "()")]
pub struct NotifyRunsTo(pub Recipient<RunEnded>, pub Recipient<RunBegan>);

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
    pub assignment: u64,
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
pub struct AssignmentPath(pub u64);

/// Which assignment a run is distributing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Wave {
    Content,
    Control(Kind),
}

/// A run in progress.
struct Active {
    run: RunRecord,
    /// The content group's servers.
    group: Vec<NodeId>,
    /// Servers needed for the quorum.
    needed: usize,
    wave: Wave,
    dist: Option<Distribution>,
    assignment: Option<AssignmentRecord>,
    deadline: Option<Time>,
    /// An admin cancelled it: the abort ends it as `cancelled`.
    cancelled: bool,
    /// The job's bandwidth limit, bytes per second.
    rate_limit: Option<u64>,
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
    active: HashMap<u64, Active>,
    by_assignment: HashMap<u64, u64>,
    ended_to: Option<Recipient<RunEnded>>,
    began_to: Option<Recipient<RunBegan>>,
    /// Told of every run that ends (load balancer, caches).
    observers: Vec<Recipient<crate::ops::RunEnded>>,
}

fn table<R: crate::storage::db::Record>(db: &Db) -> Table<R> {
    // Every table was created when the CCM started (`ccm::start`); opening
    // an existing tree of an open database does no I/O and cannot fail.
    db.table::<R>().unwrap_or_else(|e| panic!("database table {}: {e}", R::TABLE))
}

/// A tree of hard links to `paths` of `live` (`keep`) or to all but them.
fn subtree(
    live: &std::path::Path,
    dest: &std::path::Path,
    paths: &[String],
    keep: bool,
) -> Result<(), String> {
    let paths = paths
        .iter()
        .map(|p| {
            crate::protocol::paths::SitePath::new(p.trim_matches('/')).map_err(|e| format!("path {p:?}: {e}"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    crate::storage::tree::link_subtree(live, dest, &paths, keep).map_err(|e| e.to_string())
}

fn kind_name(k: Kind) -> &'static str {
    match k {
        Kind::Content => "content",
        Kind::Commit => "commit",
        Kind::Abort => "abort",
        Kind::Rollback => "rollback",
    }
}

impl Ccm {
    /// A controller over an open database. `secret` is the cluster secret.
    pub fn new(config: Config, db: Db, secret: Vec<u8>) -> Self {
        let client = NodeClient::new(&secret, CCM_NODE, Duration::from_secs(30));
        let dir = config.ccm.data_dir.join("assignments");
        let creator = AssignmentCreator::new(dir).start();
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
            active: HashMap::new(),
            by_assignment: HashMap::new(),
            ended_to: None,
            began_to: None,
            observers: Vec::new(),
        }
    }

    /// Tells `observers` of every run that ends ([`crate::ops::RunEnded`]).
    pub fn with_observers(mut self, observers: Vec<Recipient<crate::ops::RunEnded>>) -> Self {
        self.observers = observers;
        self
    }

    fn now(&self) -> Time {
        Time::from_micros(self.epoch.elapsed().as_micros() as u64)
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

    fn content_key(&self) -> Option<ContentKey> {
        ContentKey::from_secret(&self.secret).ok()
    }

    fn history(&self, kind: &str, message: String, run: Option<u64>, site: Option<&str>) {
        crate::ops::append_history(&self.db, kind, message, run, site);
    }

    /// Tells the scheduler that `run` is over.
    fn ended(&self, run: &RunRecord) {
        if let Some(to) = &self.ended_to {
            to.do_send(RunEnded { job: run.job, run: run.id, state: run.state });
        }
    }

    /// Writes the run record (and flushes when `durable`); a failure is
    /// logged, for callers that carry on regardless.
    fn save(&self, run: &RunRecord, durable: bool) {
        let _ = self.try_save(run, durable);
    }

    /// Writes the run record (and flushes when `durable`); says if it failed.
    fn try_save(&self, run: &RunRecord, durable: bool) -> Result<(), DbError> {
        let result =
            table::<RunRecord>(&self.db)
                .put(run)
                .and_then(|_| if durable { self.db.flush() } else { Ok(()) });
        if let Err(e) = &result {
            tracing::error!(run = run.id, error = %e, "cannot save the run");
        }
        result
    }

    fn phase(run: &mut RunRecord, name: &str) {
        run.phases.push(Phase { name: name.into(), at_ms: unix_ms() });
    }

    /// The release a rollback of `site` goes back to: the one the live
    /// release was built on, if the shadow copy (and so the servers) keep it.
    fn rollback_target(&self, site: &SiteRecord) -> Result<u64, CcmError> {
        if site.live_serial == 0 {
            return Err(CcmError::Conflict(format!("site {} has no live release to roll back", site.name)));
        }
        // The live release's snapshot names the publish run that made it,
        // and that run the release it was built on.
        let snapshot = table::<SnapshotRecord>(&self.db).get(&(site.name.clone(), site.live_serial))?;
        let run = match snapshot {
            Some(snap) => table::<RunRecord>(&self.db).get(&snap.run)?,
            None => None,
        };
        let base = run.map_or(0, |r| r.base_serial);
        if base == 0 {
            return Err(CcmError::Conflict(format!(
                "release {} of site {} is its first: there is nothing to roll back to",
                site.live_serial, site.name
            )));
        }
        let kept = self.shadow(&site.name).releases().unwrap_or_default();
        if !kept.contains(&AssignmentSerial(base)) {
            return Err(CcmError::Conflict(format!(
                "release {base} of site {} is no longer kept (releases.keep_releases = {}); publish it again instead",
                site.name, self.config.releases.keep_releases
            )));
        }
        Ok(base)
    }

    /// A switch's release: one the servers still hold, other than the live one.
    fn switch_target(&self, site: &SiteRecord, serial: Option<u64>) -> Result<u64, CcmError> {
        let Some(serial) = serial else {
            return Err(CcmError::Invalid {
                field: "params.serial",
                message: "a switch names the release to make live".into(),
            });
        };
        if serial == site.live_serial {
            return Err(CcmError::Conflict(format!(
                "release {serial} of site {} is already live",
                site.name
            )));
        }
        let kept = self.shadow(&site.name).releases().unwrap_or_default();
        if !kept.contains(&AssignmentSerial(serial)) {
            return Err(CcmError::Conflict(format!(
                "release {serial} of site {} is not held (kept: {:?}); publish or restore it instead",
                site.name,
                kept.iter().map(|s| s.0).collect::<Vec<_>>()
            )));
        }
        Ok(serial)
    }

    /// The servers a run of `job` is for: the content group, or for the
    /// catch-up kinds its online servers that lag, or for `hot` the extra
    /// servers that get the files.
    fn targets_of(
        &self,
        job: &JobRecord,
        site: &SiteRecord,
        group: &GroupRecord,
    ) -> Result<Vec<NodeId>, CcmError> {
        let servers = table::<ServerRecord>(&self.db);
        let live_of = |rec: &ServerRecord| rec.live.get(&site.name).copied().unwrap_or(0);
        Ok(match job.kind {
            JobKind::Replicate | JobKind::Synchronize => {
                let mut lagging = Vec::new();
                for s in &group.servers {
                    if let Some(rec) = servers.get(s)? {
                        let live = live_of(&rec);
                        // Replicate: new or stale servers; synchronize: servers
                        // that hold an older release.
                        let lags = live != site.live_serial && (job.kind == JobKind::Replicate || live != 0);
                        if rec.online && lags {
                            lagging.push(*s);
                        }
                    }
                }
                lagging
            }
            JobKind::Hot => {
                let want = job.params.extra_servers.unwrap_or(1) as usize;
                let mut extra: Vec<NodeId> = servers
                    .all()?
                    .into_iter()
                    .filter(|r| r.online && !group.servers.contains(&r.id) && live_of(r) != site.live_serial)
                    .map(|r| r.id)
                    .collect();
                extra.sort();
                extra.truncate(want);
                extra
            }
            _ => group.servers.clone(),
        })
    }

    /// Starts a run of `job_id`; `reason` says why (`manual`, `schedule`…).
    fn start_run(&mut self, job_id: JobId, reason: &str, ctx: &mut Context<Self>) -> Result<u64, CcmError> {
        let job = table::<JobRecord>(&self.db)
            .get(&job_id)?
            .ok_or(CcmError::NotFound { what: "job", name: job_id.to_string() })?;
        let site = table::<SiteRecord>(&self.db)
            .get(&job.site)?
            .ok_or(CcmError::NotFound { what: "site", name: job.site.clone() })?;
        let group = table::<GroupRecord>(&self.db)
            .get(&job.group)?
            .ok_or(CcmError::NotFound { what: "content group", name: job.group.clone() })?;
        let kind = job.kind;
        let members = self.targets_of(&job, &site, &group)?;
        // A run conflicts with another of the same site that shares a server.
        let conflicting = |a: &Active| {
            a.run.site == site.name && (a.group.iter().any(|s| members.contains(s)) || a.run.job == job.id)
        };
        if let Some(other) = self.active.values().find(|a| conflicting(a)) {
            metrics::counter!("cmover_conflicts_total", "node" => crate::metrics::CCM).increment(1);
            return Err(CcmError::Conflict(format!(
                "run {} of site {} (job {}) is in progress on the same servers; wait for it or cancel it",
                other.run.id, site.name, other.run.job
            )));
        }
        let release = match kind {
            JobKind::Rollback => Some(self.rollback_target(&site)?),
            JobKind::Switch => Some(self.switch_target(&site, job.params.serial)?),
            _ => None,
        };
        if matches!(kind, JobKind::Hot | JobKind::Remove) && site.live_serial == 0 {
            return Err(CcmError::Conflict(format!(
                "site {} has no live release yet: publish it first",
                site.name
            )));
        }
        if kind == JobKind::Restore {
            self.checkpoint_of(&site.name, job.params.checkpoint)?;
        }
        let id = self.db.next("run")?;
        if let Some(to) = &self.began_to {
            to.do_send(RunBegan { job: job.id, run: id, site: site.name.clone() });
        }
        let catch_up = kind.catches_up();
        // Catch-up runs need no quorum: each server that succeeds is in sync.
        // A hot push counts its own targets.
        let quorum = job.policy.quorum.unwrap_or(group.quorum);
        let needed = match kind {
            _ if catch_up => 1,
            JobKind::Hot => job.policy.quorum.unwrap_or_default().needed(members.len()).max(1),
            _ => quorum.needed(group.servers.len()),
        };
        // A new release takes a serial never used before, even if a rollback
        // left newer ones on the servers.
        let (serial, base) = match release {
            Some(target) => (target, site.live_serial),
            None if catch_up || kind == JobKind::Hot => (site.live_serial, 0),
            None => {
                // A delta is built against the shadow copy: only when it holds
                // the live release (a failed shadow update leaves it behind)
                // may the servers' live release be the base; else send all.
                let shadow = self.shadow(&site.name).live().ok().flatten().map_or(0, |s| s.0);
                let base = if shadow == site.live_serial {
                    site.live_serial
                } else {
                    tracing::warn!(event = "shadow_behind", site = %site.name, live = site.live_serial, shadow, "the shadow copy does not hold the live release: sending a full assignment");
                    0
                };
                (site.live_serial.max(site.last_serial) + 1, base)
            }
        };
        let mut run = RunRecord {
            id,
            job: job.id,
            site: site.name.clone(),
            group: group.name.clone(),
            kind,
            reason: reason.into(),
            state: RunState::Packing,
            serial,
            base_serial: base,
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
        };
        Self::phase(&mut run, "check");
        // Which servers of the group are reachable now.
        let servers = table::<ServerRecord>(&self.db);
        let mut online = 0;
        let mut offline = Vec::new();
        for s in &members {
            match servers.get(s)? {
                Some(rec) if rec.online => online += 1,
                _ => {
                    offline.push(*s);
                    run.applied.insert(*s, ServerOutcome::Failed { error: "offline".into() });
                }
            }
        }
        table::<JobRecord>(&self.db).update(&job.id, |j| {
            j.map(|mut j| {
                j.runs.push(id);
                j
            })
        })?;
        if catch_up && (members.is_empty() || site.live_serial == 0) {
            run.state = RunState::Unchanged;
            let message = format!("every server of {} is in sync", group.name);
            self.close(&mut run, "unchanged", message);
            return Ok(id);
        }
        if online < needed || members.is_empty() {
            run.state = RunState::Failed;
            run.error = Some(if members.is_empty() {
                format!("no server to send to (kind {})", kind.name())
            } else {
                format!(
                    "quorum cannot be met: {needed} of {} servers needed, {online} online (offline: {offline:?})",
                    members.len()
                )
            });
            run.failed_servers = members.clone();
            let message = run.error.clone().unwrap_or_default();
            self.close(&mut run, "run_failed", message);
            return Ok(id);
        }
        if kind.makes_release() {
            table::<SiteRecord>(&self.db).update(&site.name, |s| {
                s.map(|mut s| {
                    s.last_serial = s.last_serial.max(serial);
                    s
                })
            })?;
        }
        let what = match kind {
            JobKind::Publish => format!("publishes site {} to group {}", site.name, group.name),
            JobKind::Replicate => format!("replicates site {} to {members:?}", site.name),
            JobKind::Synchronize => format!("synchronizes site {} on {members:?}", site.name),
            JobKind::Restore => format!(
                "restores checkpoint {} of site {} as release {serial}",
                job.params.checkpoint.unwrap_or_default(),
                site.name
            ),
            JobKind::Rollback => {
                format!("rolls site {} back to release {serial} on group {}", site.name, group.name)
            }
            JobKind::Switch => {
                format!("switches site {} to release {serial} on group {}", site.name, group.name)
            }
            JobKind::Remove => {
                format!("removes {:?} from site {} as release {serial}", job.params.paths, site.name)
            }
            JobKind::Hot => format!("pushes {:?} of site {} to {members:?}", job.params.paths, site.name),
        };
        Self::phase(&mut run, if release.is_some() { kind.name() } else { "pack" });
        if release.is_some() {
            run.state = RunState::Committing;
        }
        // A run the API acknowledges is on disk.
        self.try_save(&run, true)?;
        self.history("run_started", format!("run {id} of job {} {what}", job.id), Some(id), Some(&site.name));
        tracing::info!(event = "run_started", run = id, job = job.id.0, kind = kind.name(), reason, site = %site.name, serial = run.serial);
        let a = Active {
            run,
            group: if catch_up || kind == JobKind::Hot { members.clone() } else { group.servers.clone() },
            needed,
            wave: Wave::Content,
            dist: None,
            assignment: None,
            deadline: None,
            cancelled: false,
            rate_limit: job.policy.bandwidth,
        };
        if release.is_some() {
            // Header-only: every reachable server switches.
            let targets: Vec<NodeId> = members.iter().copied().filter(|s| !offline.contains(s)).collect();
            self.control(a, Kind::Rollback, targets, ctx);
        } else {
            self.active.insert(id, a);
            self.pack(id, site, job, ctx);
        }
        Ok(id)
    }

    /// The checkpoint a restore names.
    fn checkpoint_of(&self, site: &str, id: Option<u64>) -> Result<CheckpointInfo, CcmError> {
        let Some(id) = id else {
            return Err(CcmError::Invalid {
                field: "params.checkpoint",
                message: "a restore names the checkpoint to restore".into(),
            });
        };
        self.checkpoints()
            .get(site, id)
            .map_err(|e| CcmError::Conflict(e.to_string()))?
            .ok_or(CcmError::NotFound { what: "checkpoint", name: format!("{site}/{id}") })
    }

    /// The site's checkpoints.
    pub fn checkpoints(&self) -> Checkpoints {
        Checkpoints::new(self.config.ccm.data_dir.join("checkpoints"))
    }

    fn work_dir(&self, run_id: u64) -> PathBuf {
        self.config.ccm.data_dir.join("work").join(format!("run-{run_id}"))
    }

    fn pack(&mut self, run_id: u64, site: SiteRecord, job: JobRecord, ctx: &mut Context<Self>) {
        let Some(a) = self.active.get(&run_id) else { return };
        let (serial, base, kind) = (a.run.serial, a.run.base_serial, a.run.kind);
        let fail = move |act: &mut Ccm, msg: String| {
            if let Some(a) = act.active.get_mut(&run_id) {
                a.run.error = Some(msg);
                a.run.state = RunState::Failed;
            }
            act.finish(run_id);
        };
        let id = match self.db.next("assignment") {
            Ok(id) => id,
            Err(e) => return fail(self, e.to_string()),
        };
        let name = match SiteName::new(&site.name) {
            Ok(n) => n,
            Err(e) => return fail(self, e.to_string()),
        };
        let key = if job.policy.encrypt.unwrap_or(self.config.ccm.encrypt) {
            let mut salt = [0u8; 32];
            if ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut salt).is_err() {
                return fail(self, "no system randomness for the encryption salt".into());
            }
            match self.content_key() {
                Some(k) => Some((k, salt)),
                None => return fail(self, "the cluster secret gives no content key".into()),
            }
        } else {
            None
        };
        // Remove and hot runs pack what is live, unfiltered by the job.
        let policy = if matches!(kind, JobKind::Remove | JobKind::Hot) {
            Policy::default()
        } else {
            job.policy.clone()
        };
        let options = match pack_options(&self.config, name, serial, base, job.id, key, &policy) {
            Ok(o) => o,
            Err(e) => return fail(self, e.to_string()),
        };
        let live = self.shadow(&site.name).root().join(crate::storage::releases::LIVE);
        let nothing = self.config.ccm.data_dir.join("nothing");
        let work = self.work_dir(run_id);
        let checkpoints = self.checkpoints();
        let paths = job.params.paths.clone();
        let checkpoint = job.params.checkpoint.unwrap_or_default();
        let site_name = site.name.clone();
        // The old tree and how to make the new one (in a blocking task).
        type Prepare = Box<dyn FnOnce() -> Result<PathBuf, String> + Send>;
        // What the servers hold: the shadow's live tree, unless the run
        // sends everything (no base).
        let held = if base == 0 { nothing.clone() } else { live.clone() };
        let (old, prepare): (PathBuf, Prepare) = match kind {
            JobKind::Replicate | JobKind::Synchronize => (nothing, Box::new(move || Ok(live))),
            JobKind::Hot => (nothing, Box::new(move || subtree(&live, &work, &paths, true).map(|_| work))),
            JobKind::Remove => (held, Box::new(move || subtree(&live, &work, &paths, false).map(|_| work))),
            JobKind::Restore => (
                held,
                Box::new(move || {
                    let _ = std::fs::remove_dir_all(&work);
                    if let Some(parent) = work.parent() {
                        std::fs::create_dir_all(parent).map_err(|e| format!("{}: {e}", parent.display()))?;
                    }
                    checkpoints
                        .extract(&site_name, checkpoint, &work)
                        .map(|_| work)
                        .map_err(|e| e.to_string())
                }),
            ),
            _ => (held, Box::new(move || Ok(site.staging.clone()))),
        };
        let creator = self.creator.clone();
        async move {
            let new = tokio::task::spawn_blocking(prepare).await.map_err(|e| e.to_string())??;
            let msg = CreateContent { id, options, shadow: old, staging: new };
            creator.send(msg).await.map_err(|e| e.to_string())?.map_err(|e| e.to_string())
        }
        .into_actor(self)
        .map(move |res, act, ctx| {
            let _ = std::fs::remove_dir_all(act.work_dir(run_id));
            match res {
                Ok(created) => act.packed(run_id, id, created, ctx),
                Err(e) => fail(act, format!("packing failed: {e}")),
            }
        })
        .spawn(ctx);
    }

    fn packed(&mut self, run_id: u64, id: u64, created: Created, ctx: &mut Context<Self>) {
        let Some(a) = self.active.get_mut(&run_id) else { return };
        if a.cancelled {
            let _ = std::fs::remove_file(&created.path);
            return self.finish(run_id);
        }
        let summary = created.summary.clone().unwrap_or_default();
        tracing::info!(event = "packed", run = run_id, assignment = id, bytes = created.size, summary = %summary);
        a.run.summary = created.summary.clone();
        if summary.commands == 0 {
            let _ = std::fs::remove_file(&created.path);
            a.run.state = RunState::Unchanged;
            self.finish(run_id);
            return;
        }
        let rec = AssignmentRecord {
            id,
            site: a.run.site.clone(),
            serial: a.run.serial,
            kind: "content".into(),
            run: run_id,
            size: created.size,
            sha256: created.sha256,
            created_ms: unix_ms(),
        };
        a.run.content_assignment = Some(id);
        if let Err(e) = table::<AssignmentRecord>(&self.db).put(&rec) {
            a.run.error = Some(e.to_string());
            a.run.state = RunState::Failed;
            self.finish(run_id);
            return;
        }
        let servers: Vec<NodeId> = a
            .group
            .iter()
            .copied()
            .filter(|s| !matches!(a.run.applied.get(s), Some(ServerOutcome::Failed { .. })))
            .collect();
        a.run.state = RunState::Distributing;
        Self::phase(&mut a.run, "distribute");
        // The assignment and the run that names it are on disk before any
        // leader hears of it: after a crash, recovery aborts it everywhere.
        let run = a.run.clone();
        self.save(&run, true);
        self.distribute(run_id, rec, Wave::Content, servers, ctx);
    }

    /// Starts distributing `rec` to the segments holding `servers`.
    fn distribute(
        &mut self,
        run_id: u64,
        rec: AssignmentRecord,
        wave: Wave,
        servers: Vec<NodeId>,
        ctx: &mut Context<Self>,
    ) {
        let server_table = table::<ServerRecord>(&self.db);
        let mut by_segment: BTreeMap<String, Vec<NodeId>> = BTreeMap::new();
        for s in &servers {
            if let Ok(Some(r)) = server_table.get(s) {
                by_segment.entry(r.segment.clone()).or_default().push(*s);
            }
        }
        let segments: Vec<SegmentRecord> = by_segment
            .keys()
            .filter_map(|name| table::<SegmentRecord>(&self.db).get(name).ok().flatten())
            .collect();
        self.planner
            .send(PlanTree { segments })
            .into_actor(self)
            .map(move |ordered, act, ctx| {
                let ordered = ordered.unwrap_or_default();
                let targets: Vec<Target> = ordered
                    .into_iter()
                    .map(|s| Target {
                        servers: by_segment.get(&s.name).cloned().unwrap_or_default(),
                        url: format!("http://{}", s.leader_http),
                        leader: s.leader,
                        segment: s.name,
                    })
                    .collect();
                let cfg = DistributionConfig {
                    fanout: act.config.ccm.fanout as usize,
                    notify_timeout: act.config.ccm.notify_timeout,
                    max_attempts: act.config.ccm.max_attempts,
                    retry_delay: act.config.ccm.retry_delay,
                };
                let deadline = act.now() + act.config.ccm.report_timeout;
                let Some(a) = act.active.get_mut(&run_id) else { return };
                a.wave = wave;
                a.run.segments =
                    targets.iter().map(|t| (t.segment.clone(), SegmentProgress::default())).collect();
                a.dist = Some(Distribution::new(cfg, targets));
                a.deadline = Some(deadline);
                act.by_assignment.insert(rec.id, run_id);
                a.assignment = Some(rec);
                act.drive(run_id, ctx);
            })
            .spawn(ctx);
    }

    fn notify_of(&self, a: &Active, target: &Target, fetch_from: String) -> Option<Notify> {
        let rec = a.assignment.as_ref()?;
        Some(Notify {
            assignment: AssignmentRef {
                id: rec.id,
                site: rec.site.clone(),
                serial: rec.serial,
                kind: rec.kind.clone(),
                size: rec.size,
                sha256: rec.sha256.clone(),
            },
            fetch_from,
            run: a.run.id,
            targets: target.servers.clone(),
            rate_limit: a.rate_limit,
        })
    }

    /// Sends the CCM's own notifications, mirrors progress into the run
    /// record, and moves on when every segment has reported or time is up.
    fn drive(&mut self, run_id: u64, ctx: &mut Context<Self>) {
        let now = self.now();
        let ccm_url = self.config.ccm.url();
        let Some(a) = self.active.get_mut(&run_id) else { return };
        let Some(dist) = a.dist.as_mut() else { return };
        dist.handle_timeout(now);
        let hops = dist.ccm_hops(now);
        let a = &self.active[&run_id];
        let notifies: Vec<(Target, Notify)> =
            hops.into_iter().filter_map(|t| self.notify_of(a, &t, ccm_url.clone()).map(|n| (t, n))).collect();
        for (target, notify) in notifies {
            let client = self.client.clone();
            let segment = target.segment.clone();
            tracing::info!(event = "notify", run = run_id, assignment = notify.assignment.id, segment = %segment, leader = %target.leader, from = "ccm");
            async move { client.post_json::<_, serde_json::Value>(&target.url, "/node/v1/notify", &notify).await }
                .into_actor(self)
                .map(move |res: Result<serde_json::Value, ClientError>, act, ctx| {
                    if let Err(e) = res {
                        tracing::warn!(event = "notify_failed", run = run_id, segment = %segment, error = %e);
                        let now = act.now();
                        if let Some(d) = act.active.get_mut(&run_id).and_then(|a| a.dist.as_mut()) {
                            d.handle_notify_failed(now, &segment, &e.to_string());
                        }
                        act.drive(run_id, ctx);
                    }
                })
                .spawn(ctx);
        }
        self.mirror(run_id);
        let Some(a) = self.active.get(&run_id) else { return };
        let done = a.dist.as_ref().is_some_and(Distribution::is_done);
        let late = a.deadline.is_some_and(|d| now >= d);
        if done || late {
            self.wave_finished(run_id, ctx);
        }
    }

    /// Copies the distribution's progress into the run record.
    fn mirror(&mut self, run_id: u64) {
        let Some(a) = self.active.get_mut(&run_id) else { return };
        let Some(dist) = a.dist.as_ref() else { return };
        let mut changed = false;
        for e in dist.entries() {
            let p = a.run.segments.entry(e.target.segment.clone()).or_default();
            let (state, from) = match &e.stage {
                Stage::Pending => ("pending", None),
                Stage::Notified { by, .. } => ("notified", Some(*by)),
                Stage::Holding { from, .. } => ("holding", Some(*from)),
                Stage::Reported { from } => ("reported", Some(*from)),
                Stage::Failed { .. } => ("failed", None),
            };
            if p.state != state || p.leader != Some(e.target.leader) {
                changed = true;
                p.state = state.into();
                p.leader = Some(e.target.leader);
                if from.is_some() {
                    p.fetched_from = from;
                }
                match state {
                    "notified" => p.notified_ms = Some(unix_ms()),
                    "reported" => p.reported_ms = Some(unix_ms()),
                    _ => {}
                }
            }
        }
        if changed {
            let run = a.run.clone();
            self.save(&run, false);
        }
    }

    /// Every segment has reported (or time is up) for the current wave.
    fn wave_finished(&mut self, run_id: u64, ctx: &mut Context<Self>) {
        let Some(mut a) = self.active.remove(&run_id) else { return };
        if let Some(rec) = &a.assignment {
            self.by_assignment.remove(&rec.id);
        }
        let failed_segments: Vec<(String, String)> = a
            .dist
            .as_ref()
            .map(|d| d.failed().into_iter().map(|(t, r)| (t.segment.clone(), r.to_owned())).collect())
            .unwrap_or_default();
        let targeted: Vec<NodeId> = a
            .dist
            .as_ref()
            .map(|d| d.entries().iter().flat_map(|e| e.target.servers.clone()).collect())
            .unwrap_or_default();
        let outcomes = match a.wave {
            Wave::Content => &mut a.run.applied,
            Wave::Control(_) => &mut a.run.switched,
        };
        for s in &targeted {
            outcomes.entry(*s).or_insert(ServerOutcome::Silent);
        }
        let succeeded: Vec<NodeId> = targeted
            .iter()
            .copied()
            .filter(|s| outcomes.get(s) == Some(&ServerOutcome::Succeeded))
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        a.dist = None;
        match a.wave {
            Wave::Content => {
                let total = a.group.len();
                if succeeded.len() >= a.needed && !succeeded.is_empty() {
                    Self::phase(&mut a.run, "commit");
                    a.run.state = RunState::Committing;
                    self.history(
                        "quorum_met",
                        format!(
                            "{} of {total} servers hold release {} (need {})",
                            succeeded.len(),
                            a.run.serial,
                            a.needed
                        ),
                        Some(run_id),
                        Some(&a.run.site),
                    );
                    self.control(a, Kind::Commit, succeeded, ctx);
                } else {
                    let failing: Vec<String> = a
                        .run
                        .applied
                        .iter()
                        .filter(|(_, o)| **o != ServerOutcome::Succeeded)
                        .map(|(s, o)| match o {
                            ServerOutcome::Failed { error } => format!("{s}: {error}"),
                            _ => format!("{s}: silent"),
                        })
                        .collect();
                    let mut msg = format!(
                        "quorum not met: {} of {total} servers hold release {} (need {}); {}",
                        succeeded.len(),
                        a.run.serial,
                        a.needed,
                        failing.join("; ")
                    );
                    if !failed_segments.is_empty() {
                        msg.push_str(&format!("; segments given up: {failed_segments:?}"));
                    }
                    a.run.error = Some(msg);
                    Self::phase(&mut a.run, "abort");
                    a.run.state = RunState::Aborting;
                    // Everyone that may have built the release discards it.
                    let group = a.group.clone();
                    self.control(a, Kind::Abort, group, ctx);
                }
            }
            Wave::Control(Kind::Commit) => {
                self.record_live(&a.run.site, a.run.serial, &succeeded);
                a.run.state = if succeeded.is_empty() { RunState::Failed } else { RunState::Committed };
                if succeeded.is_empty() {
                    a.run.error.get_or_insert_with(|| "the commit reached no server".into());
                }
                a.run.failed_servers = a.group.iter().copied().filter(|s| !succeeded.contains(s)).collect();
                let id = a.run.id;
                self.active.insert(id, a);
                self.committed(id, ctx);
            }
            Wave::Control(Kind::Rollback) => {
                self.record_live(&a.run.site, a.run.serial, &succeeded);
                let ok = succeeded.len() >= a.needed && !succeeded.is_empty();
                a.run.state = if ok { RunState::Committed } else { RunState::Failed };
                a.run.failed_servers = a.group.iter().copied().filter(|s| !succeeded.contains(s)).collect();
                if !ok {
                    a.run.error = Some(format!(
                        "rollback reached {} of {} servers (need {}); those that switched serve release {}, the others {}",
                        succeeded.len(),
                        a.group.len(),
                        a.needed,
                        a.run.serial,
                        a.run.base_serial
                    ));
                }
                let id = a.run.id;
                self.active.insert(id, a);
                self.committed(id, ctx);
            }
            Wave::Control(_) => {
                a.run.state = RunState::Failed;
                a.run.failed_servers = a.group.clone();
                let id = a.run.id;
                self.active.insert(id, a);
                self.finish(id);
            }
        }
    }

    /// `servers` switched `site` to release `serial`: the CCM knows it now,
    /// before their leaders' next segment reports say so.
    fn record_live(&self, site: &str, serial: u64, servers: &[NodeId]) {
        let table = table::<ServerRecord>(&self.db);
        for s in servers {
            let result = table.update(s, |r| {
                r.map(|mut r| {
                    r.live.insert(site.to_owned(), serial);
                    r
                })
            });
            if let Err(e) = result {
                tracing::error!(server = %s, error = %e, "cannot record the live release");
            }
        }
    }

    /// Makes and distributes a commit or abort for `a`'s release.
    fn control(&mut self, mut a: Active, kind: Kind, servers: Vec<NodeId>, ctx: &mut Context<Self>) {
        let run_id = a.run.id;
        let (site, serial, job) = (a.run.site.clone(), a.run.serial, a.run.job);
        let id = match self.db.next("assignment") {
            Ok(id) => id,
            Err(e) => {
                a.run.error = Some(e.to_string());
                a.run.state = RunState::Failed;
                self.active.insert(run_id, a);
                return self.finish(run_id);
            }
        };
        a.run.control_assignment = Some(id);
        a.wave = Wave::Control(kind);
        self.save(&a.run, true);
        self.active.insert(run_id, a);
        let Ok(name) = SiteName::new(&site) else { return };
        let msg = CreateControl {
            id,
            kind,
            site: name,
            serial: AssignmentSerial(serial),
            job,
            created_ms: unix_ms(),
        };
        self.creator
            .send(msg)
            .into_actor(self)
            .map(move |res, act, ctx| {
                let created = match res {
                    Ok(Ok(c)) => c,
                    other => {
                        let e = match other {
                            Ok(Err(e)) => e.to_string(),
                            Err(e) => e.to_string(),
                            Ok(Ok(_)) => unreachable!(),
                        };
                        if let Some(a) = act.active.get_mut(&run_id) {
                            a.run.error =
                                Some(format!("cannot make the {} assignment: {e}", kind_name(kind)));
                            a.run.state = RunState::Failed;
                        }
                        return act.finish(run_id);
                    }
                };
                let rec = AssignmentRecord {
                    id,
                    site: site.clone(),
                    serial,
                    kind: kind_name(kind).into(),
                    run: run_id,
                    size: created.size,
                    sha256: created.sha256,
                    created_ms: unix_ms(),
                };
                if let Err(e) = table::<AssignmentRecord>(&act.db).put(&rec).and_then(|_| act.db.flush()) {
                    tracing::error!(error = %e, "cannot record the assignment");
                }
                act.distribute(run_id, rec, Wave::Control(kind), servers.clone(), ctx);
            })
            .spawn(ctx);
    }

    /// The commit (or rollback) wave is over: bring the shadow copy to what
    /// the servers now serve, record the site's live release and, for a
    /// publish, a snapshot.
    fn committed(&mut self, run_id: u64, ctx: &mut Context<Self>) {
        let Some(a) = self.active.get(&run_id) else { return };
        // Catch-up and hot runs send what is live already: nothing to record.
        if a.run.state != RunState::Committed || a.run.kind.catches_up() || a.run.kind == JobKind::Hot {
            return self.finish(run_id);
        }
        let (site, serial, job) = (a.run.site.clone(), a.run.serial, a.run.job);
        let shadow = self.shadow(&site);
        type Work = Box<dyn FnOnce() -> Result<(), String> + Send>;
        let (what, snapshot, work): (&str, Option<SnapshotRecord>, Work) = if a.run.kind.header_only() {
            let work =
                move || shadow.rollback_to(AssignmentSerial(serial)).map(|_| ()).map_err(|e| e.to_string());
            ("rolled back", None, Box::new(work))
        } else {
            let content = a.run.content_assignment.unwrap_or_default();
            let snap = SnapshotRecord {
                site: site.clone(),
                serial,
                job,
                run: run_id,
                assignment: content,
                at_ms: 0,
                summary: a.run.summary.clone(),
            };
            let path = AssignmentCreator::path_of(&self.config.ccm.data_dir.join("assignments"), content);
            let key = self.content_key();
            let work = move || -> Result<(), String> {
                let file = AssignmentFile::open(&path, key.as_ref()).map_err(|e| e.to_string())?;
                shadow.apply(&file).map_err(|e| e.to_string())?;
                shadow.commit(AssignmentSerial(serial)).map_err(|e| e.to_string())?;
                Ok(())
            };
            ("updated", Some(snap), Box::new(work))
        };
        async move { tokio::task::spawn_blocking(work).await.map_err(|e| e.to_string()).and_then(|r| r) }
            .into_actor(self)
            .map(move |res, act, _| {
                if let Err(e) = res {
                    tracing::error!(event = "shadow_failed", site = %site, serial, error = %e);
                    act.history(
                        "shadow_failed",
                        format!("shadow copy of {site} not {what}: {e}"),
                        Some(run_id),
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
                act.finish(run_id);
            })
            .spawn(ctx);
    }

    /// Ends a run: final state, history, flush.
    fn finish(&mut self, run_id: u64) {
        let Some(mut a) = self.active.remove(&run_id) else { return };
        if let Some(rec) = &a.assignment {
            self.by_assignment.remove(&rec.id);
        }
        let run = &mut a.run;
        if a.cancelled && run.state != RunState::Committed {
            run.state = RunState::Cancelled;
        }
        if !run.state.is_final() {
            run.state = RunState::Failed;
        }
        let (kind, message) = match run.state {
            RunState::Committed if run.kind.header_only() => (
                if run.kind == JobKind::Rollback { "rolled_back" } else { "switched" },
                format!(
                    "{} switched from release {} to {}; failed servers: {:?}",
                    run.site, run.base_serial, run.serial, run.failed_servers
                ),
            ),
            RunState::Committed if run.kind.catches_up() || run.kind == JobKind::Hot => (
                "committed",
                format!(
                    "release {} of {} sent by a {} run; failed servers: {:?}",
                    run.serial,
                    run.site,
                    run.kind.name(),
                    run.failed_servers
                ),
            ),
            RunState::Committed if run.failed_servers.is_empty() => {
                ("committed", format!("release {} of {} is live on every server", run.serial, run.site))
            }
            RunState::Committed => (
                "committed",
                format!(
                    "release {} of {} is live; failed servers: {:?}",
                    run.serial, run.site, run.failed_servers
                ),
            ),
            RunState::Unchanged => ("unchanged", format!("nothing to publish for {}", run.site)),
            RunState::Cancelled => ("cancelled", format!("run {} cancelled; nothing went live", run.id)),
            _ => ("run_failed", run.error.clone().unwrap_or_else(|| "failed".into())),
        };
        self.close(run, kind, message);
    }

    /// Ends `run`, whether it ran or was refused at its start: the last
    /// phase, the history event `kind`, the record (flushed), the scheduler,
    /// the metrics and the observers (load balancer, caches).
    fn close(&self, run: &mut RunRecord, kind: &str, message: String) {
        Self::phase(run, "done");
        run.finished_ms = Some(unix_ms());
        tracing::info!(event = kind, run = run.id, site = %run.site, serial = run.serial, failed = ?run.failed_servers, error = ?run.error);
        self.history(kind, message, Some(run.id), Some(&run.site));
        self.save(run, true);
        self.ended(run);
        crate::ops::run_metrics(run);
        for o in &self.observers {
            o.do_send(crate::ops::RunEnded(run.clone()));
        }
    }

    fn record_segment(&mut self, report: &SegmentReport) -> Result<(), CcmError> {
        let now = unix_ms();
        let segments = table::<SegmentRecord>(&self.db);
        let old = segments.get(&report.segment)?;
        let rec = SegmentRecord {
            name: report.segment.clone(),
            leader: report.leader,
            leader_http: report.leader_http.clone(),
            location: report.location.clone(),
            cpus: report.cpus,
            disk_free: report.disk_free,
            members: report.members.clone(),
            updated_ms: now,
        };
        segments.put(&rec)?;
        let servers = table::<ServerRecord>(&self.db);
        let listed: BTreeSet<NodeId> = report.members.iter().map(|m| m.id).collect();
        for m in &report.members {
            let MemberReport { id, name, http, live } = m.clone();
            let first = servers.get(&id)?.map_or(now, |s| s.first_seen_ms);
            if first == now {
                self.history(
                    "server_discovered",
                    format!("server {id} ({name}) in segment {}", report.segment),
                    None,
                    None,
                );
            }
            servers.put(&ServerRecord {
                id,
                name,
                http,
                segment: report.segment.clone(),
                live,
                online: true,
                first_seen_ms: first,
                last_seen_ms: now,
            })?;
        }
        for s in servers.all()? {
            if s.segment == report.segment && s.online && !listed.contains(&s.id) {
                servers.put(&ServerRecord { online: false, ..s })?;
            }
        }
        if old.as_ref().map(|o| o.leader) != Some(report.leader) {
            self.history(
                "leader_changed",
                format!("segment {} is led by {}", report.segment, report.leader),
                None,
                None,
            );
        }
        self.db.flush()?;
        Ok(())
    }

    /// Restart: resume committing runs, fail the others cleanly.
    fn recover(&mut self, ctx: &mut Context<Self>) {
        let runs = match table::<RunRecord>(&self.db).all() {
            Ok(r) => r,
            Err(e) => return tracing::error!(error = %e, "cannot read runs to recover"),
        };
        for mut run in runs.into_iter().filter(|r| !r.state.is_final()) {
            let group = table::<GroupRecord>(&self.db).get(&run.group).ok().flatten();
            let servers = group.as_ref().map(|g| g.servers.clone()).unwrap_or_default();
            let needed = group.as_ref().map_or(0, |g| g.quorum.needed(g.servers.len()));
            tracing::warn!(event = "run_recovered", run = run.id, state = ?run.state);
            let resume_commit = run.state == RunState::Committing;
            if !resume_commit {
                run.error =
                    Some(format!("the CCM restarted while the run was {:?}; nothing went live", run.state));
            }
            let id = run.id;
            let site = run.site.clone();
            let a = Active {
                run,
                group: servers.clone(),
                needed,
                wave: Wave::Content,
                dist: None,
                assignment: None,
                deadline: None,
                cancelled: false,
                rate_limit: None,
            };
            if resume_commit && a.run.kind.header_only() {
                // Switching to a named release is idempotent: send it again.
                self.history(
                    "run_resumed",
                    format!("run {id}: {} resumed after a restart", a.run.kind.name()),
                    Some(id),
                    Some(&site),
                );
                self.control(a, Kind::Rollback, servers, ctx);
            } else if resume_commit {
                let succeeded: Vec<NodeId> = a
                    .run
                    .applied
                    .iter()
                    .filter(|(_, o)| **o == ServerOutcome::Succeeded)
                    .map(|(s, _)| *s)
                    .collect();
                self.history(
                    "run_resumed",
                    format!("run {id}: commit resumed after a restart"),
                    Some(id),
                    Some(&site),
                );
                self.control(a, Kind::Commit, succeeded, ctx);
            } else if a.run.content_assignment.is_some() {
                let mut a = a;
                a.run.state = RunState::Aborting;
                self.control(a, Kind::Abort, servers, ctx);
            } else {
                self.active.insert(id, a);
                self.finish(id);
            }
        }
    }
}

impl Actor for Ccm {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        self.recover(ctx);
        ctx.run_interval(Duration::from_millis(250), |act, ctx| {
            let ids: Vec<u64> = act.active.keys().copied().collect();
            for id in ids {
                act.drive(id, ctx);
            }
        });
    }
}

impl Handler<RunJob> for Ccm {
    type Result = Result<u64, CcmError>;

    fn handle(&mut self, msg: RunJob, ctx: &mut Context<Self>) -> Self::Result {
        self.start_run(msg.job, &msg.reason, ctx)
    }
}

impl Handler<CancelRun> for Ccm {
    type Result = Result<(), CcmError>;

    fn handle(&mut self, msg: CancelRun, ctx: &mut Context<Self>) -> Self::Result {
        let id = msg.0;
        let Some(a) = self.active.get_mut(&id) else {
            return match table::<RunRecord>(&self.db).get(&id)? {
                Some(r) => Err(CcmError::Conflict(format!("run {id} is over ({:?})", r.state))),
                None => Err(CcmError::NotFound { what: "run", name: id.to_string() }),
            };
        };
        if a.cancelled {
            return Ok(());
        }
        if !matches!(a.run.state, RunState::Packing | RunState::Distributing) {
            return Err(CcmError::Conflict(format!(
                "run {id} is {:?}: past the point where it can be cancelled",
                a.run.state
            )));
        }
        a.cancelled = true;
        a.run.error = Some("cancelled by an admin".into());
        let (site, packing) = (a.run.site.clone(), a.run.state == RunState::Packing);
        tracing::info!(event = "run_cancelled", run = id);
        self.history("cancel_requested", format!("run {id}: cancel requested"), Some(id), Some(&site));
        if packing {
            // The packing task finds the run cancelled when it returns.
            return Ok(());
        }
        // Distributing: stop the wave now; everyone discards the release.
        let Some(mut a) = self.active.remove(&id) else { return Ok(()) };
        if let Some(rec) = &a.assignment {
            self.by_assignment.remove(&rec.id);
        }
        a.dist = None;
        Self::phase(&mut a.run, "abort");
        a.run.state = RunState::Aborting;
        let group = a.group.clone();
        self.control(a, Kind::Abort, group, ctx);
        Ok(())
    }
}

impl Handler<ActiveRuns> for Ccm {
    type Result = MessageResult<ActiveRuns>;

    fn handle(&mut self, _: ActiveRuns, _: &mut Context<Self>) -> Self::Result {
        MessageResult(
            self.active.iter().map(|(id, a)| ActiveRun { id: *id, targets: a.group.clone() }).collect(),
        )
    }
}

impl Handler<SetTreeOrder> for Ccm {
    type Result = Result<(), CcmError>;

    fn handle(&mut self, msg: SetTreeOrder, _: &mut Context<Self>) -> Self::Result {
        let value = serde_json::to_value(&msg.0).unwrap_or_default();
        table::<SettingRecord>(&self.db).put(&SettingRecord { name: "tree_order".into(), value })?;
        self.db.flush()?;
        self.history("settings_changed", format!("static order of group leaders: {:?}", msg.0), None, None);
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
                return Err(CcmError::Conflict(format!(
                    "site {} has no live release to checkpoint",
                    site.name
                )));
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
        Box::pin(
            async move { tokio::task::spawn_blocking(work).await.map_err(|e| e.to_string()).and_then(|r| r) }
                .into_actor(self)
                .map(move |res, act, _| match res {
                    Ok((info, pruned)) => {
                        act.history(
                            "checkpoint_created",
                            format!(
                                "checkpoint {} of {} at release {} ({} files, {} bytes); deleted: {pruned:?}",
                                info.id, info.site, info.serial, info.files, info.bytes
                            ),
                            None,
                            Some(&info.site),
                        );
                        let _ = act.db.flush();
                        Ok(info)
                    }
                    Err(e) => Err(CcmError::Conflict(format!("cannot make the checkpoint: {e}"))),
                }),
        )
    }
}

impl Handler<NotifyRunsTo> for Ccm {
    type Result = ();

    fn handle(&mut self, msg: NotifyRunsTo, _: &mut Context<Self>) {
        self.ended_to = Some(msg.0);
        self.began_to = Some(msg.1);
    }
}

impl Handler<SegmentReported> for Ccm {
    type Result = Result<(), CcmError>;

    fn handle(&mut self, msg: SegmentReported, ctx: &mut Context<Self>) -> Self::Result {
        let report = msg.0;
        self.record_segment(&report)?;
        tracing::debug!(event = "segment_reported", segment = %report.segment, leader = %report.leader, members = report.members.len());
        let url = format!("http://{}", report.leader_http);
        let ids: Vec<u64> = self.active.keys().copied().collect();
        for id in ids {
            if let Some(d) = self.active.get_mut(&id).and_then(|a| a.dist.as_mut()) {
                d.handle_leader_changed(&report.segment, report.leader, &url);
            }
            self.drive(id, ctx);
        }
        Ok(())
    }
}

impl Handler<NextHopAsked> for Ccm {
    type Result = MessageResult<NextHopAsked>;

    fn handle(&mut self, msg: NextHopAsked, ctx: &mut Context<Self>) -> Self::Result {
        let now = self.now();
        let Some(&run_id) = self.by_assignment.get(&msg.assignment) else {
            return MessageResult(NextHop { target: None });
        };
        let Some(a) = self.active.get_mut(&run_id) else { return MessageResult(NextHop { target: None }) };
        let Some(dist) = a.dist.as_mut() else { return MessageResult(NextHop { target: None }) };
        let holder_url =
            dist.entries().iter().find(|e| e.target.leader == msg.node).map(|e| e.target.url.clone());
        let next = dist.next_hop(now, msg.node);
        let a = &self.active[&run_id];
        let target = match (next, holder_url) {
            (Some(t), Some(from)) => self.notify_of(a, &t, from).map(|notify| {
                tracing::info!(event = "next_hop", run = run_id, assignment = msg.assignment, from = %msg.node, to = %t.leader, segment = %t.segment);
                HopTarget { node: t.leader, url: t.url.clone(), notify }
            }),
            _ => None,
        };
        self.drive(run_id, ctx);
        MessageResult(NextHop { target })
    }
}

impl Handler<SegmentResultReceived> for Ccm {
    type Result = Result<(), CcmError>;

    fn handle(&mut self, msg: SegmentResultReceived, ctx: &mut Context<Self>) -> Self::Result {
        let r = msg.result;
        let Some(&run_id) = self.by_assignment.get(&r.assignment) else {
            // A late or repeated report for a wave that is over: acknowledged, ignored.
            return Ok(());
        };
        let Some(a) = self.active.get_mut(&run_id) else { return Ok(()) };
        let outcomes = match a.wave {
            Wave::Content => &mut a.run.applied,
            Wave::Control(_) => &mut a.run.switched,
        };
        for (server, outcome) in &r.servers {
            outcomes.insert(*server, outcome.clone());
        }
        if matches!(a.wave, Wave::Content) && r.delivery.is_some() {
            a.run.segments.entry(r.segment.clone()).or_default().delivery = r.delivery;
        }
        if let Some(d) = a.dist.as_mut() {
            d.handle_reported(&r.segment);
        }
        tracing::info!(event = "segment_result", run = run_id, assignment = r.assignment, segment = %r.segment, leader = %msg.node,
            succeeded = r.servers.values().filter(|o| **o == ServerOutcome::Succeeded).count(), servers = r.servers.len());
        let run = a.run.clone();
        self.save(&run, true);
        self.drive(run_id, ctx);
        Ok(())
    }
}

impl Handler<AssignmentPath> for Ccm {
    type Result = Option<PathBuf>;

    fn handle(&mut self, msg: AssignmentPath, _: &mut Context<Self>) -> Self::Result {
        let rec = table::<AssignmentRecord>(&self.db).get(&msg.0).ok().flatten()?;
        Some(AssignmentCreator::path_of(&self.config.ccm.data_dir.join("assignments"), rec.id))
    }
}

impl Handler<Shutdown> for Ccm {
    type Result = ();

    fn handle(&mut self, _: Shutdown, ctx: &mut Context<Self>) {
        tracing::info!(event = "ccm_shutdown", runs_in_flight = self.active.len());
        let _ = self.db.flush();
        ctx.stop();
    }
}
