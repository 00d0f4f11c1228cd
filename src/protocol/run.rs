//! A run of a job as a sans-IO core (DESIGN §4 steps 2–9; patent claim 1:
//! distribute, collect the status reports, then commit or abort).
//!
//! Two parts:
//!
//! - [`plan`]: a pure function of what the CCM knows (the job, its site, its
//!   content group, the servers) that says what a run of the job does: its
//!   **targets** (the servers that receive anything at all), how many of them
//!   the quorum needs, the release serial it makes and the one it is a delta
//!   against, and where its content comes from. Every job kind is one arm.
//! - [`Run`]: the state machine of one run over a [`Distribution`] per wave:
//!   the content wave, then a commit to the targets that built the release
//!   (when the quorum holds) or an abort to every target (when it does not,
//!   or an admin cancelled); header-only kinds (rollback, switch) have one
//!   switch wave. It is fed by `handle_*` calls and drained by
//!   [`Run::poll_action`]; [`Run::poll_timeout`] says when to call
//!   [`Run::handle_timeout`]. [`Run::recover`] rebuilds a run after a CCM
//!   restart from what was saved.
//!
//! **Only targets.** Outcomes of servers that are not targets of the wave
//! are ignored (a leader cannot make a non-target count in a quorum), a
//! commit names only the targets that built the release, and a hot push is
//! reported as hot content ([`Action::RecordLive`] with `hot`), never as the
//! site's live release.
//!
//! The `Ccm` actor drives it with real I/O; `sim::run` drives it over the
//! simulator's network with faults.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use thiserror::Error;

use super::api::ServerOutcome;
use super::distribution::{Distribution, DistributionConfig, Stage, Target};
use super::ids::{AssignmentId, JobId, NodeId, RunId};
use super::time::Time;

/// What a job does (DESIGN §4, "Other job types").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum JobKind {
    /// Staging → servers.
    #[default]
    Publish,
    /// The whole live release (the shadow copy) to the servers of the group
    /// that do not serve it: new servers, or ones that fell behind.
    Replicate,
    /// Bring servers whose live release lags the site's up to date, with a
    /// full copy of what is live (from the shadow copy).
    Synchronize,
    /// A checkpoint of the site goes live as a new release.
    Restore,
    /// Make the release that was live before the current one live again
    /// (a header-only assignment: the servers still hold it).
    Rollback,
    /// Go live with a release the servers already hold (`params.serial`),
    /// header-only like a rollback.
    Switch,
    /// Delete content (`params.paths`, or everything) from the servers, as a
    /// new release.
    Remove,
    /// Push named files (`params.paths`) to `params.extra_servers` more
    /// servers that do not carry the site, on an external signal (run now).
    /// What they get is hot content, never the site's live release.
    Hot,
}

impl JobKind {
    /// Every kind, for validation messages and the API document.
    pub const ALL: [JobKind; 8] = [
        JobKind::Publish,
        JobKind::Replicate,
        JobKind::Synchronize,
        JobKind::Restore,
        JobKind::Rollback,
        JobKind::Switch,
        JobKind::Remove,
        JobKind::Hot,
    ];

    /// Its name in the API.
    pub fn name(self) -> &'static str {
        match self {
            JobKind::Publish => "publish",
            JobKind::Replicate => "replicate",
            JobKind::Synchronize => "synchronize",
            JobKind::Restore => "restore",
            JobKind::Rollback => "rollback",
            JobKind::Switch => "switch",
            JobKind::Remove => "remove",
            JobKind::Hot => "hot",
        }
    }

    /// What a run of this kind does, in one line for people.
    pub fn summary(self) -> &'static str {
        match self {
            JobKind::Publish => {
                "sends what changed in staging since the live release, as a delta, and makes it live \
                 on every server of the group at once"
            }
            JobKind::Replicate => {
                "sends the whole live release to the group's servers that do not serve it (new or stale ones)"
            }
            JobKind::Synchronize => "brings the group's servers that hold an older release to the live one",
            JobKind::Restore => "makes a checkpoint's content live again as a new release",
            JobKind::Rollback => "makes the release the live one was built on live again (header only)",
            JobKind::Switch => "makes a release the servers still hold live (header only)",
            JobKind::Remove => "deletes the given paths (or all content) as a new release",
            JobKind::Hot => {
                "pushes the given paths to more servers outside the group as a hot release, never their live one"
            }
        }
    }

    /// True for kinds that make a release the servers already hold live
    /// with a header-only assignment.
    pub fn header_only(self) -> bool {
        matches!(self, JobKind::Rollback | JobKind::Switch)
    }

    /// True for kinds that make a new release of the site (a new serial that
    /// becomes the site's live release).
    pub fn makes_release(self) -> bool {
        matches!(self, JobKind::Publish | JobKind::Restore | JobKind::Remove)
    }

    /// True for kinds that send the whole live release to servers that lag.
    pub fn catches_up(self) -> bool {
        matches!(self, JobKind::Replicate | JobKind::Synchronize)
    }

    /// True for kinds that take a serial never used before.
    pub fn takes_fresh_serial(self) -> bool {
        self.makes_release() || self == JobKind::Hot
    }
}

/// How many servers of a content group must hold a release for it to go live.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, Default)]
#[serde(tag = "type", content = "value", rename_all = "snake_case")]
pub enum Quorum {
    /// Every server of the group.
    #[default]
    All,
    /// At least this many servers.
    Count(u32),
    /// At least this percentage of the group (rounded up).
    Percent(f64),
}

impl std::fmt::Display for Quorum {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Quorum::All => f.write_str("all"),
            Quorum::Count(n) => write!(f, "{n}"),
            Quorum::Percent(p) => write!(f, "{p}%"),
        }
    }
}

impl Quorum {
    /// Servers needed out of `total`.
    pub fn needed(&self, total: usize) -> usize {
        match *self {
            Quorum::All => total,
            Quorum::Count(n) => (n as usize).min(total),
            Quorum::Percent(p) => ((p.clamp(0.0, 100.0) / 100.0) * total as f64).ceil() as usize,
        }
    }
}

/// Where a run is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunState {
    /// Building the assignment.
    Packing,
    /// Sending the content assignment to the segments.
    Distributing,
    /// Sending the commit.
    Committing,
    /// Sending the abort.
    Aborting,
    /// Live on the servers (those that failed are listed).
    Committed,
    /// Nothing to publish: staging equals what is live.
    Unchanged,
    /// Failed; nothing went live.
    Failed,
    /// Cancelled by an admin before the commit; nothing went live.
    Cancelled,
}

impl RunState {
    /// True once the run is over.
    pub fn is_final(self) -> bool {
        matches!(self, RunState::Committed | RunState::Unchanged | RunState::Failed | RunState::Cancelled)
    }

    /// Its name, as records and people say it.
    pub fn name(self) -> &'static str {
        match self {
            RunState::Packing => "packing",
            RunState::Distributing => "distributing",
            RunState::Committing => "committing",
            RunState::Aborting => "aborting",
            RunState::Committed => "committed",
            RunState::Unchanged => "unchanged",
            RunState::Failed => "failed",
            RunState::Cancelled => "cancelled",
        }
    }
}

impl std::fmt::Display for RunState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl PhaseName {
    /// Its name, as records and people say it.
    pub fn name(self) -> &'static str {
        match self {
            PhaseName::Check => "check",
            PhaseName::Pack => "pack",
            PhaseName::Distribute => "distribute",
            PhaseName::Commit => "commit",
            PhaseName::Abort => "abort",
            PhaseName::Rollback => "rollback",
            PhaseName::Switch => "switch",
            PhaseName::Done => "done",
        }
    }
}

/// A phase of a run, as its record lists them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PhaseName {
    /// The quorum is checked against the servers online.
    Check,
    /// The content assignment is built.
    Pack,
    /// The content assignment travels.
    Distribute,
    /// The commit travels.
    Commit,
    /// The abort travels.
    Abort,
    /// A rollback's switch travels.
    Rollback,
    /// A switch's switch travels.
    Switch,
    /// Over.
    Done,
}

/// Which assignment a wave distributes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Wave {
    /// The content assignment: every target builds the release beside the live one.
    Content,
    /// Targets that built the release make it live.
    Commit,
    /// Targets discard the release.
    Abort,
    /// Header-only: targets make a release they hold live (rollback, switch).
    Switch,
}

impl Wave {
    /// Its name, as records and people say it.
    pub fn name(self) -> &'static str {
        match self {
            Wave::Content => "content",
            Wave::Commit => "commit",
            Wave::Abort => "abort",
            Wave::Switch => "switch",
        }
    }
}

/// A segment's stage in a wave, as run records show it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum SegmentState {
    /// Waiting to be notified.
    #[default]
    Pending,
    /// Its leader was notified.
    Notified,
    /// Its leader holds the copy.
    Holding,
    /// Its leader reported the result.
    Reported,
    /// Given up.
    Failed,
}

impl SegmentState {
    /// Its name, as records and people say it.
    pub fn name(self) -> &'static str {
        match self {
            SegmentState::Pending => "pending",
            SegmentState::Notified => "notified",
            SegmentState::Holding => "holding",
            SegmentState::Reported => "reported",
            SegmentState::Failed => "failed",
        }
    }

    /// The state of a distribution stage.
    pub fn of(stage: &Stage) -> SegmentState {
        match stage {
            Stage::Pending => SegmentState::Pending,
            Stage::Notified { .. } => SegmentState::Notified,
            Stage::Holding { .. } => SegmentState::Holding,
            Stage::Reported { .. } => SegmentState::Reported,
            Stage::Failed { .. } => SegmentState::Failed,
        }
    }
}

/// What the CCM knows of the job's site.
#[derive(Debug, Clone, Default)]
pub struct SiteView {
    /// Its name.
    pub name: String,
    /// The live release (0: none).
    pub live_serial: u64,
    /// The highest serial used.
    pub last_serial: u64,
    /// The release the CCM's shadow copy holds live (0: none).
    pub shadow_serial: u64,
    /// Releases the shadow copy (and so the servers) keep.
    pub kept: BTreeSet<u64>,
    /// The release the live one was built on (0: it is the first).
    pub live_base: u64,
}

/// What the CCM knows of one server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerView {
    /// The server.
    pub id: NodeId,
    /// Its segment.
    pub segment: String,
    /// Listed online by its leader.
    pub online: bool,
    /// The site's release it serves (0: none).
    pub live: u64,
}

/// The job being planned.
#[derive(Debug, Clone, Default)]
pub struct JobView {
    /// The job.
    pub id: JobId,
    /// What it does.
    pub kind: JobKind,
    /// `switch`: the release to make live.
    pub serial: Option<u64>,
    /// `restore`: the checkpoint, and whether it exists.
    pub checkpoint: Option<(u64, bool)>,
    /// `hot`: how many more servers get the files.
    pub extra_servers: Option<u32>,
    /// The job's quorum, overriding the group's.
    pub quorum: Option<Quorum>,
}

/// The job's content group.
#[derive(Debug, Clone, Default)]
pub struct GroupView {
    /// Its servers.
    pub servers: Vec<NodeId>,
    /// Its quorum.
    pub quorum: Quorum,
}

/// Where a run's content comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    /// The staging directory, as a delta against the shadow copy.
    Staging,
    /// The whole shadow copy's live tree.
    Shadow,
    /// The named paths of the shadow copy's live tree (hot).
    ShadowPaths,
    /// The shadow copy's live tree without the named paths (remove).
    ShadowWithout,
    /// A checkpoint.
    Checkpoint(u64),
    /// Nothing: the servers hold the release (header only).
    Held,
}

/// How a run starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Start {
    /// It runs.
    Go,
    /// A catch-up run with nobody lagging: it ends unchanged.
    InSync,
    /// Nobody to send to.
    NoServers,
    /// Too few targets online for the quorum.
    NoQuorum {
        /// Servers needed.
        needed: usize,
        /// Targets online.
        online: usize,
    },
}

/// What a run of a job does. See the module docs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// The job.
    pub job: JobId,
    /// Its kind.
    pub kind: JobKind,
    /// Every server the run is for, sorted: nobody else receives anything.
    pub targets: Vec<NodeId>,
    /// The targets that are offline (failed from the start).
    pub offline: Vec<NodeId>,
    /// The segment of each online target.
    pub segments: BTreeMap<NodeId, String>,
    /// Targets that must succeed for the release to go live.
    pub needed: usize,
    /// The release it makes (or, header-only, makes live).
    pub serial: u64,
    /// The release it is a delta against (0: full), or for header-only
    /// kinds the live release it switches from.
    pub base: u64,
    /// Where its content comes from.
    pub source: Source,
    /// How it starts.
    pub start: Start,
}

impl Plan {
    /// The targets online.
    pub fn reachable(&self) -> Vec<NodeId> {
        self.targets.iter().copied().filter(|t| !self.offline.contains(t)).collect()
    }
}

/// Why a job cannot run now (nothing was recorded).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum PlanError {
    /// The kind needs a live release and the site has none.
    #[error("site {site} has no live release yet: publish it first")]
    NoLiveRelease {
        /// The site.
        site: String,
    },
    /// A rollback of a site's first release.
    #[error("release {serial} of site {site} is its first: there is nothing to roll back to")]
    FirstRelease {
        /// The site.
        site: String,
        /// Its live release.
        serial: u64,
    },
    /// The release to go back to is pruned.
    #[error("release {serial} of site {site} is no longer kept (releases.keep_releases); publish it again instead")]
    NotKept {
        /// The site.
        site: String,
        /// The release.
        serial: u64,
    },
    /// A switch to the live release.
    #[error("release {serial} of site {site} is already live")]
    AlreadyLive {
        /// The site.
        site: String,
        /// The release.
        serial: u64,
    },
    /// A switch to a release that is not held.
    #[error("release {serial} of site {site} is not held (kept: {}); publish or restore it instead", crate::protocol::ids::join(.kept))]
    NotHeld {
        /// The site.
        site: String,
        /// The release.
        serial: u64,
        /// What is kept.
        kept: Vec<u64>,
    },
    /// A parameter the kind needs is missing.
    #[error("{field}: {message}")]
    MissingParam {
        /// The field.
        field: &'static str,
        /// What it is for.
        message: &'static str,
    },
    /// The checkpoint a restore names does not exist.
    #[error("checkpoint {site}/{id} does not exist")]
    NoCheckpoint {
        /// The site.
        site: String,
        /// The checkpoint.
        id: u64,
    },
}

/// Plans a run of `job` (see the module docs): one arm per job kind.
pub fn plan(
    job: &JobView,
    site: &SiteView,
    group: &GroupView,
    servers: &[ServerView],
) -> Result<Plan, PlanError> {
    let by_id: BTreeMap<NodeId, &ServerView> = servers.iter().map(|s| (s.id, s)).collect();
    let live_of = |id: &NodeId| by_id.get(id).map_or(0, |s| s.live);
    let online = |id: &NodeId| by_id.get(id).is_some_and(|s| s.online);
    let no_live = || PlanError::NoLiveRelease { site: site.name.clone() };
    let fresh = site.live_serial.max(site.last_serial) + 1;
    // A delta only against a shadow copy that holds the live release.
    let delta_base = if site.shadow_serial == site.live_serial { site.live_serial } else { 0 };
    let group_quorum = job.quorum.unwrap_or(group.quorum);
    let (mut targets, serial, base, source, needed): (Vec<NodeId>, u64, u64, Source, Option<usize>) =
        match job.kind {
            JobKind::Publish => (group.servers.clone(), fresh, delta_base, Source::Staging, None),
            JobKind::Restore => {
                let (id, exists) = job.checkpoint.ok_or(PlanError::MissingParam {
                    field: "params.checkpoint",
                    message: "a restore names the checkpoint to restore",
                })?;
                if !exists {
                    return Err(PlanError::NoCheckpoint { site: site.name.clone(), id });
                }
                (group.servers.clone(), fresh, delta_base, Source::Checkpoint(id), None)
            }
            JobKind::Remove => {
                if site.live_serial == 0 {
                    return Err(no_live());
                }
                (group.servers.clone(), fresh, delta_base, Source::ShadowWithout, None)
            }
            JobKind::Replicate | JobKind::Synchronize => {
                // Replicate: new or stale servers; synchronize: servers that
                // hold an older release. Each that succeeds is in sync.
                let lagging = group
                    .servers
                    .iter()
                    .copied()
                    .filter(|s| {
                        let live = live_of(s);
                        online(s) && live != site.live_serial && (job.kind == JobKind::Replicate || live != 0)
                    })
                    .collect();
                (lagging, site.live_serial, 0, Source::Shadow, Some(1))
            }
            JobKind::Hot => {
                if site.live_serial == 0 {
                    return Err(no_live());
                }
                let want = job.extra_servers.unwrap_or(1) as usize;
                let mut extra: Vec<NodeId> = servers
                    .iter()
                    .filter(|s| s.online && !group.servers.contains(&s.id) && s.live != site.live_serial)
                    .map(|s| s.id)
                    .collect();
                extra.sort();
                extra.truncate(want);
                let needed = job.quorum.unwrap_or_default().needed(extra.len()).max(1);
                (extra, fresh, 0, Source::ShadowPaths, Some(needed))
            }
            JobKind::Rollback => {
                if site.live_serial == 0 {
                    return Err(no_live());
                }
                let to = site.live_base;
                if to == 0 {
                    return Err(PlanError::FirstRelease {
                        site: site.name.clone(),
                        serial: site.live_serial,
                    });
                }
                if !site.kept.contains(&to) {
                    return Err(PlanError::NotKept { site: site.name.clone(), serial: to });
                }
                (group.servers.clone(), to, site.live_serial, Source::Held, None)
            }
            JobKind::Switch => {
                let to = job.serial.ok_or(PlanError::MissingParam {
                    field: "params.serial",
                    message: "a switch names the release to make live",
                })?;
                if to == site.live_serial {
                    return Err(PlanError::AlreadyLive { site: site.name.clone(), serial: to });
                }
                if !site.kept.contains(&to) {
                    return Err(PlanError::NotHeld {
                        site: site.name.clone(),
                        serial: to,
                        kept: site.kept.iter().copied().collect(),
                    });
                }
                (group.servers.clone(), to, site.live_serial, Source::Held, None)
            }
        };
    targets.sort();
    targets.dedup();
    let needed = needed.unwrap_or_else(|| group_quorum.needed(targets.len()));
    let offline: Vec<NodeId> = targets.iter().copied().filter(|t| !online(t)).collect();
    let segments = targets
        .iter()
        .filter(|t| online(t))
        .filter_map(|t| by_id.get(t).map(|s| (*t, s.segment.clone())))
        .collect();
    let reachable = targets.len() - offline.len();
    let start = if job.kind.catches_up() && (targets.is_empty() || site.live_serial == 0) {
        Start::InSync
    } else if targets.is_empty() {
        Start::NoServers
    } else if reachable < needed {
        Start::NoQuorum { needed, online: reachable }
    } else {
        Start::Go
    };
    Ok(Plan { job: job.id, kind: job.kind, targets, offline, segments, needed, serial, base, source, start })
}

/// The timers of a run.
#[derive(Debug, Clone, Copy)]
pub struct RunConfig {
    /// The distribution of each wave.
    pub distribution: DistributionConfig,
    /// Longest a wave waits for its segments' results.
    pub report_timeout: Duration,
}

impl Default for RunConfig {
    fn default() -> Self {
        RunConfig { distribution: DistributionConfig::default(), report_timeout: Duration::from_secs(300) }
    }
}

impl RunConfig {
    /// The longest a run can take once packed: each wave (content, then a
    /// commit or abort) ends at its report timeout at the latest.
    pub fn bound(&self) -> Duration {
        self.report_timeout * 2
    }
}

/// What the site's records must say once a wave made servers live.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SiteUpdate {
    /// The content assignment goes into the shadow copy, the release is the
    /// site's live one, a snapshot is recorded.
    Apply,
    /// The shadow copy and the site go to a release they hold.
    SwitchTo,
}

/// What the driver must do (drained with [`Run::poll_action`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Write the run's record (flushed when `durable`).
    Save {
        /// Flush before going on.
        durable: bool,
    },
    /// A phase began.
    Phase(PhaseName),
    /// Build the content assignment from the plan's source, then call
    /// [`Run::handle_packed`] or [`Run::handle_failed`].
    Pack,
    /// Make the header-only assignment of `wave`, then call
    /// [`Run::handle_assignment_made`] or [`Run::handle_failed`].
    MakeAssignment(Wave),
    /// Order these segments' leaders (the tree planner), then call
    /// [`Run::handle_tree`].
    PlanTree {
        /// The segments holding the wave's targets.
        segments: Vec<String>,
    },
    /// Notify this leader of the wave's assignment, from the CCM; on failure
    /// call [`Run::handle_notify_failed`].
    Notify(Target),
    /// `servers` now serve release `serial` of the site (hot: as hot
    /// content, not the site's live release).
    RecordLive {
        /// The servers.
        servers: Vec<NodeId>,
        /// The release.
        serial: u64,
        /// A hot push.
        hot: bool,
    },
    /// Bring the shadow copy and the site's record along, then call
    /// [`Run::handle_site_updated`].
    UpdateSite(SiteUpdate),
    /// The run is over ([`Run::state`] is final).
    End,
}

/// Why a cancel was refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum CancelError {
    /// Committing, aborting or over.
    #[error("run {run} is {state}: past the point where it can be cancelled")]
    TooLate {
        /// The run.
        run: RunId,
        /// Where it is.
        state: RunState,
    },
}

/// What a run saved, for [`Run::recover`].
#[derive(Debug, Clone)]
pub struct Saved {
    /// Where it was.
    pub state: RunState,
    /// The content assignment, if it was made.
    pub content: Option<AssignmentId>,
    /// Content outcomes so far.
    pub applied: BTreeMap<NodeId, ServerOutcome>,
}

/// One run. See the module docs.
#[derive(Debug, Clone)]
pub struct Run {
    id: RunId,
    plan: Plan,
    cfg: RunConfig,
    state: RunState,
    wave: Wave,
    /// The servers the current wave is for.
    wave_servers: Vec<NodeId>,
    dist: Option<Distribution>,
    /// The last wave's distribution as it ended (for the record).
    ended: Option<Distribution>,
    assignment: Option<AssignmentId>,
    content: Option<AssignmentId>,
    deadline: Option<Time>,
    applied: BTreeMap<NodeId, ServerOutcome>,
    switched: BTreeMap<NodeId, ServerOutcome>,
    failed: Vec<NodeId>,
    error: Option<String>,
    cancelled: bool,
    /// The commit is over; the site's records are being brought along.
    updating_site: bool,
    actions: VecDeque<Action>,
}

impl Run {
    fn blank(id: RunId, plan: Plan, cfg: RunConfig) -> Run {
        Run {
            id,
            plan,
            cfg,
            state: RunState::Packing,
            wave: Wave::Content,
            wave_servers: Vec::new(),
            dist: None,
            ended: None,
            assignment: None,
            content: None,
            deadline: None,
            applied: BTreeMap::new(),
            switched: BTreeMap::new(),
            failed: Vec::new(),
            error: None,
            cancelled: false,
            updating_site: false,
            actions: VecDeque::new(),
        }
    }

    /// Starts run `id` of `plan`.
    pub fn start(id: RunId, plan: Plan, cfg: RunConfig) -> Run {
        let mut run = Run::blank(id, plan, cfg);
        run.actions.push_back(Action::Phase(PhaseName::Check));
        for s in &run.plan.offline {
            run.applied.insert(*s, ServerOutcome::Failed { error: "offline".into() });
        }
        match run.plan.start.clone() {
            Start::InSync => run.end(RunState::Unchanged),
            Start::NoServers => {
                run.error = Some(format!("no server to send to (kind {})", run.plan.kind.name()));
                run.end(RunState::Failed);
            }
            Start::NoQuorum { needed, online } => {
                run.error = Some(format!(
                    "quorum cannot be met: {needed} of {} servers needed, {online} online (offline: {})",
                    run.plan.targets.len(),
                    super::ids::join(&run.plan.offline)
                ));
                run.failed = run.plan.targets.clone();
                run.end(RunState::Failed);
            }
            Start::Go if run.plan.kind.header_only() => {
                run.state = RunState::Committing;
                let phase =
                    if run.plan.kind == JobKind::Rollback { PhaseName::Rollback } else { PhaseName::Switch };
                run.actions.push_back(Action::Phase(phase));
                run.control(Wave::Switch, run.plan.reachable());
            }
            Start::Go => {
                run.actions.push_back(Action::Phase(PhaseName::Pack));
                run.actions.push_back(Action::Pack);
            }
        }
        run
    }

    /// Rebuilds a run after a CCM restart: a commit (or switch) in progress
    /// is sent again (the servers carry it out once), a run that had a
    /// content assignment is aborted everywhere it went, any other fails.
    pub fn recover(id: RunId, plan: Plan, cfg: RunConfig, saved: Saved) -> Run {
        let mut run = Run::blank(id, plan, cfg);
        run.applied = saved.applied;
        run.content = saved.content;
        match saved.state {
            RunState::Committing if run.plan.kind.header_only() => {
                run.state = RunState::Committing;
                run.control(Wave::Switch, run.plan.reachable());
            }
            RunState::Committing => {
                run.state = RunState::Committing;
                let built = run.succeeded(&run.plan.targets, Wave::Content);
                run.control(Wave::Commit, built);
            }
            state => {
                run.error = Some(format!("the CCM restarted while the run was {state}; nothing went live"));
                if run.content.is_some() {
                    run.state = RunState::Aborting;
                    run.actions.push_back(Action::Phase(PhaseName::Abort));
                    run.control(Wave::Abort, run.plan.reachable());
                } else {
                    run.end(RunState::Failed);
                }
            }
        }
        run
    }

    /// The run.
    pub fn id(&self) -> RunId {
        self.id
    }

    /// Its plan.
    pub fn plan(&self) -> &Plan {
        &self.plan
    }

    /// Where it is.
    pub fn state(&self) -> RunState {
        self.state
    }

    /// The wave in progress.
    pub fn wave(&self) -> Wave {
        self.wave
    }

    /// The servers the wave in progress is for.
    pub fn wave_servers(&self) -> &[NodeId] {
        &self.wave_servers
    }

    /// The assignment the wave in progress distributes.
    pub fn assignment(&self) -> Option<AssignmentId> {
        self.assignment
    }

    /// The content assignment.
    pub fn content(&self) -> Option<AssignmentId> {
        self.content
    }

    /// The wave's distribution (or, between waves, the last one as it ended).
    pub fn distribution(&self) -> Option<&Distribution> {
        self.dist.as_ref().or(self.ended.as_ref())
    }

    /// Content outcomes per target.
    pub fn applied(&self) -> &BTreeMap<NodeId, ServerOutcome> {
        &self.applied
    }

    /// Commit (abort, switch) outcomes per target.
    pub fn switched(&self) -> &BTreeMap<NodeId, ServerOutcome> {
        &self.switched
    }

    /// Targets that did not end up with the release live (once over).
    pub fn failed(&self) -> &[NodeId] {
        &self.failed
    }

    /// Why it failed.
    pub fn error(&self) -> Option<&str> {
        self.error.as_deref()
    }

    /// Whether an admin cancelled it.
    pub fn cancelled(&self) -> bool {
        self.cancelled
    }

    /// The next thing the driver must do.
    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// When [`Run::handle_timeout`] is next due.
    pub fn poll_timeout(&self) -> Option<Time> {
        let dist = self.dist.as_ref().and_then(Distribution::poll_timeout);
        match (dist, self.deadline) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Time passed.
    pub fn handle_timeout(&mut self, now: Time) {
        self.drive(now);
    }

    /// The content assignment was built: `commands` commands (none: nothing changed).
    pub fn handle_packed(&mut self, now: Time, assignment: AssignmentId, commands: u64) {
        if self.state != RunState::Packing {
            return;
        }
        if self.cancelled {
            return self.end(RunState::Cancelled);
        }
        if commands == 0 {
            return self.end(RunState::Unchanged);
        }
        self.content = Some(assignment);
        self.state = RunState::Distributing;
        self.actions.push_back(Action::Phase(PhaseName::Distribute));
        // The run naming the assignment is on disk before any leader hears of
        // it: after a crash, recovery aborts it everywhere.
        self.actions.push_back(Action::Save { durable: true });
        let servers = self.plan.reachable();
        self.begin_wave(now, Wave::Content, assignment, servers);
    }

    /// Packing, or making a header-only assignment, failed.
    pub fn handle_failed(&mut self, error: String) {
        if self.state.is_final() {
            return;
        }
        self.error = Some(error);
        self.failed = self.plan.targets.clone();
        self.end(RunState::Failed);
    }

    /// The header-only assignment of `wave` was made.
    pub fn handle_assignment_made(&mut self, now: Time, wave: Wave, assignment: AssignmentId) {
        if self.wave != wave || self.assignment.is_some() || self.state.is_final() {
            return;
        }
        let servers = std::mem::take(&mut self.wave_servers);
        self.begin_wave(now, wave, assignment, servers);
    }

    /// The leaders of the wave's segments, in the planner's order: segment,
    /// leader, base URL, incarnation.
    pub fn handle_tree(&mut self, now: Time, order: Vec<(String, NodeId, String, u64)>) {
        if self.dist.is_some() || self.assignment.is_none() || self.state.is_final() {
            return;
        }
        let mut by_segment: BTreeMap<&str, Vec<NodeId>> = BTreeMap::new();
        for s in &self.wave_servers {
            if let Some(seg) = self.plan.segments.get(s) {
                by_segment.entry(seg.as_str()).or_default().push(*s);
            }
        }
        let targets = order
            .into_iter()
            .filter_map(|(segment, leader, url, incarnation)| {
                let servers = by_segment.get(segment.as_str())?.clone();
                Some(Target { segment, leader, url, servers, incarnation })
            })
            .collect();
        self.dist = Some(Distribution::new(self.cfg.distribution, targets));
        self.deadline = Some(now + self.cfg.report_timeout);
        self.drive(now);
    }

    /// `leader`, holding the wave's assignment, asks whom to forward it to.
    pub fn handle_next_hop(&mut self, now: Time, leader: NodeId) -> Option<Target> {
        let next = self.dist.as_mut()?.next_hop(now, leader);
        self.drive(now);
        next
    }

    /// The base URL of the wave's leader `leader`, if it is one.
    pub fn leader_url(&self, leader: NodeId) -> Option<&str> {
        let dist = self.dist.as_ref()?;
        dist.entries().iter().find(|e| e.target.leader == leader).map(|e| e.target.url.as_str())
    }

    /// A notify the CCM sent failed.
    pub fn handle_notify_failed(&mut self, now: Time, segment: &str, reason: &str) {
        if let Some(d) = self.dist.as_mut() {
            d.handle_notify_failed(now, segment, reason);
        }
        self.drive(now);
    }

    /// A segment report arrived from `leader` (its address, incarnation).
    pub fn handle_leader_seen(
        &mut self,
        now: Time,
        segment: &str,
        leader: NodeId,
        url: &str,
        incarnation: u64,
    ) {
        if let Some(d) = self.dist.as_mut() {
            d.handle_leader_seen(now, segment, leader, url, incarnation);
        }
        self.drive(now);
    }

    /// A segment's result for `assignment`: only the wave's targets count.
    /// Returns false when it is not for the wave in progress (late, repeated).
    pub fn handle_segment_result(
        &mut self,
        now: Time,
        assignment: AssignmentId,
        segment: &str,
        servers: &BTreeMap<NodeId, ServerOutcome>,
    ) -> bool {
        if self.assignment != Some(assignment) || self.dist.is_none() {
            return false;
        }
        let outcomes = if self.wave == Wave::Content { &mut self.applied } else { &mut self.switched };
        for (server, outcome) in servers {
            if self.wave_servers.contains(server) {
                outcomes.insert(*server, outcome.clone());
            }
        }
        if let Some(d) = self.dist.as_mut() {
            d.handle_reported(segment);
        }
        self.actions.push_back(Action::Save { durable: true });
        self.drive(now);
        true
    }

    /// An admin cancels: while packing, the run ends when the pack returns;
    /// while distributing, every target discards the release.
    pub fn handle_cancel(&mut self, now: Time) -> Result<(), CancelError> {
        if self.cancelled {
            return Ok(());
        }
        match self.state {
            RunState::Packing => {
                self.cancelled = true;
                self.error = Some("cancelled by an admin".into());
                Ok(())
            }
            RunState::Distributing => {
                self.cancelled = true;
                self.error = Some("cancelled by an admin".into());
                self.abort(now);
                Ok(())
            }
            state => Err(CancelError::TooLate { run: self.id, state }),
        }
    }

    /// The shadow copy and the site record are brought along.
    pub fn handle_site_updated(&mut self) {
        if std::mem::take(&mut self.updating_site) {
            self.end(RunState::Committed);
        }
    }

    fn end(&mut self, state: RunState) {
        self.state = if self.cancelled && state != RunState::Committed { RunState::Cancelled } else { state };
        self.dist = None;
        self.deadline = None;
        self.actions.push_back(Action::Phase(PhaseName::Done));
        self.actions.push_back(Action::End);
    }

    /// Makes the header-only assignment of `wave` for `servers`.
    fn control(&mut self, wave: Wave, servers: Vec<NodeId>) {
        self.wave = wave;
        self.wave_servers = servers;
        self.dist = None;
        self.assignment = None;
        self.deadline = None;
        self.actions.push_back(Action::Save { durable: true });
        self.actions.push_back(Action::MakeAssignment(wave));
    }

    fn begin_wave(&mut self, _now: Time, wave: Wave, assignment: AssignmentId, servers: Vec<NodeId>) {
        self.wave = wave;
        self.assignment = Some(assignment);
        let segments: BTreeSet<String> =
            servers.iter().filter_map(|s| self.plan.segments.get(s).cloned()).collect();
        self.wave_servers = servers;
        self.dist = None;
        self.actions.push_back(Action::PlanTree { segments: segments.into_iter().collect() });
    }

    fn succeeded(&self, among: &[NodeId], wave: Wave) -> Vec<NodeId> {
        let outcomes = if wave == Wave::Content { &self.applied } else { &self.switched };
        among.iter().copied().filter(|s| outcomes.get(s) == Some(&ServerOutcome::Succeeded)).collect()
    }

    fn abort(&mut self, _now: Time) {
        self.state = RunState::Aborting;
        self.actions.push_back(Action::Phase(PhaseName::Abort));
        // Everyone that may have built the release discards it.
        self.control(Wave::Abort, self.plan.reachable());
    }

    fn drive(&mut self, now: Time) {
        let Some(dist) = self.dist.as_mut() else { return };
        dist.handle_timeout(now);
        for t in dist.ccm_hops(now) {
            self.actions.push_back(Action::Notify(t));
        }
        let done = dist.is_done();
        let late = self.deadline.is_some_and(|d| now >= d);
        if done || late {
            self.wave_finished(now);
        }
    }

    fn wave_finished(&mut self, now: Time) {
        let Some(dist) = self.dist.take() else { return };
        self.ended = Some(dist.clone());
        self.deadline = None;
        let servers = self.wave_servers.clone();
        let outcomes = if self.wave == Wave::Content { &mut self.applied } else { &mut self.switched };
        for s in &servers {
            outcomes.entry(*s).or_insert(ServerOutcome::Silent);
        }
        let succeeded = self.succeeded(&servers, self.wave);
        let others = |ok: &[NodeId]| -> Vec<NodeId> {
            self.plan.targets.iter().copied().filter(|s| !ok.contains(s)).collect()
        };
        match self.wave {
            Wave::Content => {
                let total = self.plan.targets.len();
                if succeeded.len() >= self.plan.needed && !succeeded.is_empty() {
                    self.state = RunState::Committing;
                    self.actions.push_back(Action::Phase(PhaseName::Commit));
                    // A commit switches only a server that built the release.
                    self.control(Wave::Commit, succeeded);
                } else {
                    let failing: Vec<String> = self
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
                        self.plan.serial,
                        self.plan.needed,
                        failing.join("; ")
                    );
                    let given_up: Vec<String> =
                        dist.failed().into_iter().map(|(t, r)| format!("{} ({r})", t.segment)).collect();
                    if !given_up.is_empty() {
                        msg.push_str(&format!("; segments given up: {}", given_up.join(", ")));
                    }
                    self.error = Some(msg);
                    self.abort(now);
                }
            }
            Wave::Commit => {
                let hot = self.plan.kind == JobKind::Hot;
                self.actions.push_back(Action::RecordLive {
                    servers: succeeded.clone(),
                    serial: self.plan.serial,
                    hot,
                });
                self.failed = others(&succeeded);
                if succeeded.is_empty() {
                    self.error.get_or_insert_with(|| "the commit reached no server".into());
                    return self.end(RunState::Failed);
                }
                if self.plan.kind.makes_release() {
                    // Committed once the site's records say so (the run stays
                    // committing until then, also across a CCM restart).
                    self.updating_site = true;
                    self.actions.push_back(Action::UpdateSite(SiteUpdate::Apply));
                } else {
                    self.end(RunState::Committed);
                }
            }
            Wave::Switch => {
                self.actions.push_back(Action::RecordLive {
                    servers: succeeded.clone(),
                    serial: self.plan.serial,
                    hot: false,
                });
                self.failed = others(&succeeded);
                if succeeded.len() >= self.plan.needed && !succeeded.is_empty() {
                    self.updating_site = true;
                    self.actions.push_back(Action::UpdateSite(SiteUpdate::SwitchTo));
                } else {
                    self.error = Some(format!(
                        "{} reached {} of {} servers (need {}); those that switched serve release {}, the others {}",
                        self.plan.kind.name(),
                        succeeded.len(),
                        self.plan.targets.len(),
                        self.plan.needed,
                        self.plan.serial,
                        self.plan.base
                    ));
                    self.end(RunState::Failed);
                }
            }
            Wave::Abort => {
                // The servers that did not build the release: those that did
                // held it and were told to discard it, which is no failure of theirs.
                let built = self.succeeded(&self.plan.targets, Wave::Content);
                self.failed = others(&built);
                self.end(RunState::Failed);
            }
        }
    }
}

#[cfg(test)]
mod tests;
