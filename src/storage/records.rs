//! The CCM's records: one struct per table of the database ([`super::db`]).
//!
//! Each is plain data with a schema version; the `Ccm` actor and the HTTP
//! API read and write them through typed tables, never raw sled.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::db::Record;
use super::pack::PackSummary;
use crate::protocol::api::{MemberReport, ServerOutcome};
use crate::protocol::ids::{AssignmentId, JobId, NodeId, RunId};
pub use crate::protocol::run::{JobKind, PhaseName, Quorum, RunState, SegmentState, Wave};
use crate::protocol::schedule::{ConflictAction, JobTimes, Retry, Schedule};

/// A hosted site: where its content is staged, and what is live.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SiteRecord {
    /// Its name (also its directory name on every server).
    pub name: String,
    /// The staging directory published from.
    pub staging: PathBuf,
    /// The serial of the release live on the servers (0: none yet).
    pub live_serial: u64,
    /// The highest serial any run has used: a new release always gets a
    /// fresh one, even after a rollback left newer releases on the servers.
    #[serde(default)]
    pub last_serial: u64,
    /// When it was created, Unix ms.
    pub created_ms: u64,
}

impl Record for SiteRecord {
    const TABLE: &'static str = "sites";
    const VERSION: u64 = 1;
    type Key = String;
    fn key(&self) -> String {
        self.name.clone()
    }
}

/// A content group: the servers that receive one site's content.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GroupRecord {
    /// Its name.
    pub name: String,
    /// The site.
    pub site: String,
    /// Its servers.
    pub servers: Vec<NodeId>,
    /// The go-live quorum.
    pub quorum: Quorum,
}

impl Record for GroupRecord {
    const TABLE: &'static str = "groups";
    const VERSION: u64 = 1;
    type Key = String;
    fn key(&self) -> String {
        self.name.clone()
    }
}

/// A LAN segment, as its leader last reported it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SegmentRecord {
    /// Its name.
    pub name: String,
    /// Its leader.
    pub leader: NodeId,
    /// The leader's node HTTP address.
    pub leader_http: String,
    /// The leader's incarnation (see [`crate::protocol::api::SegmentReport`]).
    #[serde(default)]
    pub incarnation: u64,
    /// Where it is.
    pub location: String,
    /// The leader's CPU cores.
    pub cpus: u32,
    /// Free disk on the leader.
    pub disk_free: u64,
    /// Online servers.
    pub members: Vec<MemberReport>,
    /// When the report came, Unix ms.
    pub updated_ms: u64,
}

impl Record for SegmentRecord {
    const TABLE: &'static str = "segments";
    const VERSION: u64 = 1;
    type Key = String;
    fn key(&self) -> String {
        self.name.clone()
    }
}

/// A back-end server.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServerRecord {
    /// Its id.
    pub id: NodeId,
    /// Its name.
    pub name: String,
    /// Its node HTTP address.
    pub http: String,
    /// Its segment.
    pub segment: String,
    /// Live serial per site, as last reported.
    pub live: BTreeMap<String, u64>,
    /// Per site, the hot release (a subset of the site, `JobKind::Hot`) it
    /// serves instead of a live release; never counted as in sync.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub hot: BTreeMap<String, u64>,
    /// Whether its segment's leader lists it as online.
    pub online: bool,
    /// When it was first seen, Unix ms.
    pub first_seen_ms: u64,
    /// When it was last listed online, Unix ms.
    pub last_seen_ms: u64,
}

impl Record for ServerRecord {
    const TABLE: &'static str = "servers";
    const VERSION: u64 = 1;
    type Key = NodeId;
    fn key(&self) -> NodeId {
        self.id
    }
}

/// What some kinds need besides the site and the group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct JobParams {
    /// `switch`: the release to make live.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub serial: Option<u64>,
    /// `restore`: the checkpoint to restore.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub checkpoint: Option<u64>,
    /// `remove`: paths to delete (empty: all content); `hot`: files to push.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub paths: Vec<String>,
    /// `hot`: how many more servers get the files.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub extra_servers: Option<u32>,
}

/// How a job runs: go-live quorum, retries, conflicts, what is sent and how.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct Policy {
    /// Overrides the content group's quorum.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub quorum: Option<Quorum>,
    /// Retries of a failed run, with backoff.
    pub retry: Retry,
    /// What to do when the job is due while a conflicting run is going on.
    pub conflict: ConflictAction,
    /// Only files matching these patterns are compressed (empty: all).
    pub compress_include: Vec<String>,
    /// Files matching these patterns are never compressed.
    pub compress_exclude: Vec<String>,
    /// Encrypt assignment data (default: `ccm.encrypt`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub encrypt: Option<bool>,
    /// Only entries matching these patterns are content (added to `content.include`).
    pub include: Vec<String>,
    /// Entries matching these patterns are left out (added to `content.exclude`).
    pub exclude: Vec<String>,
    /// Largest rate, bytes per second, at which group leaders fetch and
    /// multicast this job's assignments (none: unlimited).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bandwidth: Option<u64>,
}

/// A job: a site, a content group, a kind, a schedule and policies.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobRecord {
    /// Its id.
    pub id: JobId,
    /// A name for people (may be empty).
    #[serde(default)]
    pub name: String,
    /// The site.
    pub site: String,
    /// The content group.
    pub group: String,
    /// What it does.
    pub kind: JobKind,
    /// What the kind needs.
    #[serde(default)]
    pub params: JobParams,
    /// When it runs by itself.
    #[serde(default)]
    pub schedule: Schedule,
    /// How it runs.
    #[serde(default)]
    pub policy: Policy,
    /// A disabled job runs only when asked.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// The scheduler's times (next due, retries), kept across restarts.
    #[serde(default)]
    pub times: JobTimes,
    /// When it was created, Unix ms.
    pub created_ms: u64,
    /// Its runs, oldest first.
    pub runs: Vec<RunId>,
    /// Made for one action (a rollback, switch or restore from the UI or
    /// the CLI, an automatic catch-up): listed only when asked for
    /// (`GET /api/v1/jobs?all=true`), its runs everywhere as usual.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub one_off: bool,
}

/// `true`, the serde default of `enabled` fields.
pub(crate) fn yes() -> bool {
    true
}

impl Record for JobRecord {
    const TABLE: &'static str = "jobs";
    const VERSION: u64 = 1;
    type Key = JobId;
    fn key(&self) -> JobId {
        self.id
    }
}

/// A phase of a run and when it began.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Phase {
    /// Which.
    pub name: PhaseName,
    /// When, Unix ms.
    pub at_ms: u64,
}

/// One segment's part in a run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct SegmentProgress {
    /// The content assignment's multicast in the segment, once reported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delivery: Option<crate::protocol::api::DeliveryStats>,
    /// The leader notified.
    pub leader: Option<NodeId>,
    /// Where it is.
    pub state: SegmentState,
    /// Who it got the assignment from (the CCM is node 0), for the tree picture.
    pub fetched_from: Option<NodeId>,
    /// When it was notified, Unix ms.
    pub notified_ms: Option<u64>,
    /// When it reported, Unix ms.
    pub reported_ms: Option<u64>,
    /// How far its leader is with the content, as it last said.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub live: Option<crate::protocol::api::LiveProgress>,
    /// When it said so, Unix ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub live_ms: Option<u64>,
}

/// A run of a job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunRecord {
    /// Its id.
    pub id: RunId,
    /// The job.
    pub job: JobId,
    /// The site.
    pub site: String,
    /// The content group.
    pub group: String,
    /// What the run does.
    #[serde(default)]
    pub kind: JobKind,
    /// Why it started: `manual`, `schedule`, `retry`, `change`, `trigger`.
    #[serde(default)]
    pub reason: String,
    /// Where it is.
    pub state: RunState,
    /// The release it builds.
    pub serial: u64,
    /// The release it is a delta against.
    pub base_serial: u64,
    /// Every server it is for (nobody else receives anything).
    #[serde(default)]
    pub targets: Vec<NodeId>,
    /// Targets that must succeed for the release to go live.
    #[serde(default)]
    pub needed: usize,
    /// The content assignment's id.
    pub content_assignment: Option<AssignmentId>,
    /// The commit (or abort) assignment's id.
    pub control_assignment: Option<AssignmentId>,
    /// What went into the content assignment.
    pub summary: Option<PackSummary>,
    /// Phases, in order.
    pub phases: Vec<Phase>,
    /// Per segment: the content wave (for header-only kinds, the switch).
    pub segments: BTreeMap<String, SegmentProgress>,
    /// Per segment: the commit or abort wave, kept apart so the content
    /// wave's figures (bytes, frames, passes, times) stay after it.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub control_segments: BTreeMap<String, SegmentProgress>,
    /// Per server: the content assignment's outcome.
    pub applied: BTreeMap<NodeId, ServerOutcome>,
    /// Per server: the commit's (or abort's) outcome.
    pub switched: BTreeMap<NodeId, ServerOutcome>,
    /// Servers that did not end up with the release live.
    pub failed_servers: Vec<NodeId>,
    /// Why the run failed, if it did.
    pub error: Option<String>,
    /// When it started, Unix ms.
    pub started_ms: u64,
    /// When it ended, Unix ms.
    pub finished_ms: Option<u64>,
}

impl RunRecord {
    /// The servers this run made live: those that carried out its commit
    /// (or switch) wave; none when it aborted.
    pub fn went_live(&self) -> Vec<NodeId> {
        let committed = self
            .phases
            .iter()
            .any(|p| matches!(p.name, PhaseName::Commit | PhaseName::Rollback | PhaseName::Switch));
        let aborted = self.phases.iter().any(|p| p.name == PhaseName::Abort);
        if !committed || aborted {
            return Vec::new();
        }
        self.switched.iter().filter(|(_, o)| **o == ServerOutcome::Succeeded).map(|(s, _)| *s).collect()
    }
}

impl Record for RunRecord {
    const TABLE: &'static str = "runs";
    const VERSION: u64 = 1;
    type Key = RunId;
    fn key(&self) -> RunId {
        self.id
    }
}

/// An assignment file the CCM made.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AssignmentRecord {
    /// Cluster-wide id.
    pub id: AssignmentId,
    /// The site.
    pub site: String,
    /// The release serial.
    pub serial: u64,
    /// Which wave it is for.
    pub kind: Wave,
    /// The run.
    pub run: RunId,
    /// Size in bytes.
    pub size: u64,
    /// SHA-256 of the file, hex.
    pub sha256: String,
    /// When it was made, Unix ms.
    pub created_ms: u64,
}

impl Record for AssignmentRecord {
    const TABLE: &'static str = "assignments";
    const VERSION: u64 = 1;
    type Key = AssignmentId;
    fn key(&self) -> AssignmentId {
        self.id
    }
}

/// A release that went live: what, when, from which job (no content).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SnapshotRecord {
    /// The site.
    pub site: String,
    /// The release.
    pub serial: u64,
    /// The job.
    pub job: JobId,
    /// The run.
    pub run: RunId,
    /// The content assignment.
    pub assignment: AssignmentId,
    /// When it went live, Unix ms.
    pub at_ms: u64,
    /// What changed.
    pub summary: Option<PackSummary>,
}

impl Record for SnapshotRecord {
    const TABLE: &'static str = "snapshots";
    const VERSION: u64 = 1;
    type Key = (String, u64);
    fn key(&self) -> (String, u64) {
        (self.site.clone(), self.serial)
    }
}

/// What a line of the history log tells.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HistoryKind {
    /// A run started.
    RunStarted,
    /// A run's commit went on after a CCM restart.
    RunResumed,
    /// An admin asked to cancel a run.
    CancelRequested,
    /// A run's release went live.
    Committed,
    /// A rollback run switched servers back.
    RolledBack,
    /// A switch run switched servers.
    Switched,
    /// A run had nothing to do.
    Unchanged,
    /// A run was cancelled.
    Cancelled,
    /// A run failed (aborted).
    RunFailed,
    /// A due job did not start.
    RunRefused,
    /// A due job met a run in progress.
    Conflict,
    /// The CCM's shadow copy was not brought along.
    ShadowFailed,
    /// A checkpoint was made.
    CheckpointCreated,
    /// A checkpoint was deleted.
    CheckpointDeleted,
    /// A server reported for the first time.
    ServerDiscovered,
    /// A segment has a new leader.
    LeaderChanged,
    /// A setting changed.
    SettingsChanged,
    /// A server was taken out of the load balancer's rotation.
    LbOut,
    /// A server was put back in rotation.
    LbIn,
    /// The load balancer could not be driven.
    LbFailed,
    /// Caches were purged of changed URLs.
    CachePurged,
    /// A cache purge or webhook failed.
    CacheFailed,
    /// An admin account was created.
    UserCreated,
    /// An admin account was deleted.
    UserDeleted,
    /// A site was created.
    SiteCreated,
    /// A site changed.
    SiteChanged,
    /// A site was deleted.
    SiteDeleted,
    /// A content group was created.
    GroupCreated,
    /// A content group changed.
    GroupChanged,
    /// A content group was deleted.
    GroupDeleted,
    /// A job was created.
    JobCreated,
    /// A job changed.
    JobChanged,
    /// A job was deleted.
    JobDeleted,
    /// A server's catch-up backs off after a failure.
    CatchUpBackoff,
    /// A segment stopped reporting: its servers count as offline.
    SegmentSilent,
}

impl HistoryKind {
    /// Every kind.
    pub const ALL: [HistoryKind; 35] = [
        HistoryKind::RunStarted,
        HistoryKind::RunResumed,
        HistoryKind::CancelRequested,
        HistoryKind::Committed,
        HistoryKind::RolledBack,
        HistoryKind::Switched,
        HistoryKind::Unchanged,
        HistoryKind::Cancelled,
        HistoryKind::RunFailed,
        HistoryKind::RunRefused,
        HistoryKind::Conflict,
        HistoryKind::ShadowFailed,
        HistoryKind::CheckpointCreated,
        HistoryKind::CheckpointDeleted,
        HistoryKind::ServerDiscovered,
        HistoryKind::LeaderChanged,
        HistoryKind::SettingsChanged,
        HistoryKind::LbOut,
        HistoryKind::LbIn,
        HistoryKind::LbFailed,
        HistoryKind::CachePurged,
        HistoryKind::CacheFailed,
        HistoryKind::UserCreated,
        HistoryKind::UserDeleted,
        HistoryKind::SiteCreated,
        HistoryKind::SiteChanged,
        HistoryKind::SiteDeleted,
        HistoryKind::GroupCreated,
        HistoryKind::GroupChanged,
        HistoryKind::GroupDeleted,
        HistoryKind::JobCreated,
        HistoryKind::JobChanged,
        HistoryKind::JobDeleted,
        HistoryKind::CatchUpBackoff,
        HistoryKind::SegmentSilent,
    ];

    /// Its name, as the API, the UI and the logs say it.
    pub fn name(self) -> &'static str {
        match self {
            HistoryKind::RunStarted => "run_started",
            HistoryKind::RunResumed => "run_resumed",
            HistoryKind::CancelRequested => "cancel_requested",
            HistoryKind::Committed => "committed",
            HistoryKind::RolledBack => "rolled_back",
            HistoryKind::Switched => "switched",
            HistoryKind::Unchanged => "unchanged",
            HistoryKind::Cancelled => "cancelled",
            HistoryKind::RunFailed => "run_failed",
            HistoryKind::RunRefused => "run_refused",
            HistoryKind::Conflict => "conflict",
            HistoryKind::ShadowFailed => "shadow_failed",
            HistoryKind::CheckpointCreated => "checkpoint_created",
            HistoryKind::CheckpointDeleted => "checkpoint_deleted",
            HistoryKind::ServerDiscovered => "server_discovered",
            HistoryKind::LeaderChanged => "leader_changed",
            HistoryKind::SettingsChanged => "settings_changed",
            HistoryKind::LbOut => "lb_out",
            HistoryKind::LbIn => "lb_in",
            HistoryKind::LbFailed => "lb_failed",
            HistoryKind::CachePurged => "cache_purged",
            HistoryKind::CacheFailed => "cache_failed",
            HistoryKind::UserCreated => "user_created",
            HistoryKind::UserDeleted => "user_deleted",
            HistoryKind::SiteCreated => "site_created",
            HistoryKind::SiteChanged => "site_changed",
            HistoryKind::SiteDeleted => "site_deleted",
            HistoryKind::GroupCreated => "group_created",
            HistoryKind::GroupChanged => "group_changed",
            HistoryKind::GroupDeleted => "group_deleted",
            HistoryKind::JobCreated => "job_created",
            HistoryKind::JobChanged => "job_changed",
            HistoryKind::JobDeleted => "job_deleted",
            HistoryKind::CatchUpBackoff => "catch_up_backoff",
            HistoryKind::SegmentSilent => "segment_silent",
        }
    }
}

/// One line of the history log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HistoryRecord {
    /// Its id (increasing).
    pub id: u64,
    /// When, Unix ms.
    pub at_ms: u64,
    /// What happened.
    pub kind: HistoryKind,
    /// For people.
    pub message: String,
    /// The run, if any.
    pub run: Option<RunId>,
    /// The site, if any.
    pub site: Option<String>,
}

impl Record for HistoryRecord {
    const TABLE: &'static str = "history";
    const VERSION: u64 = 1;
    type Key = u64;
    fn key(&self) -> u64 {
        self.id
    }
}

/// An admin account of the web UI (the REST API's session login).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserRecord {
    /// Login name.
    pub name: String,
    /// PBKDF2-HMAC-SHA256 salt, hex.
    pub salt: String,
    /// PBKDF2-HMAC-SHA256 of the password, hex.
    pub hash: String,
    /// PBKDF2 iterations.
    pub iterations: u32,
    /// When it was created, Unix ms.
    pub created_ms: u64,
}

impl Record for UserRecord {
    const TABLE: &'static str = "users";
    const VERSION: u64 = 1;
    type Key = String;
    fn key(&self) -> String {
        self.name.clone()
    }
}

/// A logged-in session; the cookie holds the token, the table its hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionRecord {
    /// SHA-256 of the session token, hex.
    pub token_sha256: String,
    /// The user.
    pub user: String,
    /// The CSRF token changes must carry in `x-csrf-token`.
    pub csrf: String,
    /// When it ends, Unix ms.
    pub expires_ms: u64,
}

impl Record for SessionRecord {
    const TABLE: &'static str = "sessions";
    const VERSION: u64 = 1;
    type Key = String;
    fn key(&self) -> String {
        self.token_sha256.clone()
    }
}

/// A setting changed through the API (e.g. `tree_order`), overriding the
/// configuration file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SettingRecord {
    /// Its name.
    pub name: String,
    /// Its value.
    pub value: serde_json::Value,
}

impl Record for SettingRecord {
    const TABLE: &'static str = "settings";
    const VERSION: u64 = 1;
    type Key = String;
    fn key(&self) -> String {
        self.name.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quorum_counts() {
        assert_eq!(Quorum::All.needed(6), 6);
        assert_eq!(Quorum::Count(4).needed(6), 4);
        assert_eq!(Quorum::Count(9).needed(6), 6);
        assert_eq!(Quorum::Percent(50.0).needed(5), 3);
        assert_eq!(Quorum::Percent(100.0).needed(5), 5);
        assert_eq!(Quorum::Percent(0.0).needed(5), 0);
    }

    #[test]
    fn history_kinds_are_stored_under_the_names_the_api_and_ui_filter_by() {
        for kind in HistoryKind::ALL {
            let json = serde_json::to_value(kind).unwrap();
            assert_eq!(json, serde_json::Value::from(kind.name()), "{kind:?}");
            assert_eq!(serde_json::from_value::<HistoryKind>(json).unwrap(), kind);
        }
        let names: std::collections::BTreeSet<_> = HistoryKind::ALL.iter().map(|k| k.name()).collect();
        assert_eq!(names.len(), HistoryKind::ALL.len(), "two kinds share a name");
        // A line written when kinds were strings still reads.
        let old = r#"{"id":3,"at_ms":1,"kind":"committed","message":"m","run":7,"site":"www"}"#;
        let h: HistoryRecord = serde_json::from_str(old).unwrap();
        assert_eq!((h.kind, h.run), (HistoryKind::Committed, Some(RunId(7))));
    }
}
