//! Live state for the web UI: one task builds an [`Overview`] of the
//! cluster every [`TICK`] and publishes it when it changed; `GET
//! /api/v1/stream` sends each new one to every browser as a Server-Sent
//! Event (`overview`), and with `?run=ID` also that run's record (`run`)
//! whenever it changes. A browser therefore lags the CCM's state by at
//! most one tick plus delivery.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use actix_web::{web, HttpRequest, HttpResponse};
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::ccm_api::{ApiError, CcmState};
use super::session::authorize;
use crate::actors::ccm::{ActiveRun, ActiveRuns};
use crate::protocol::ids::{JobId, RunId};
use crate::storage::db::{Db, DbError};
use crate::storage::records::{
    GroupRecord, HistoryRecord, RunRecord, RunState, SegmentRecord, ServerRecord, SiteRecord,
};
use actix::Recipient;

/// How often the overview is rebuilt and compared.
pub const TICK: Duration = Duration::from_millis(200);
/// A comment line this often keeps proxies from closing an idle stream.
const KEEPALIVE: Duration = Duration::from_secs(15);
/// Runs listed in the overview (with any older one still running).
const RECENT_RUNS: usize = 12;

/// What a server is doing, as the overview shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ServerState {
    /// Reporting, and in step with its sites.
    Online,
    /// Its leader no longer lists it.
    Offline,
    /// A run in progress targets it and has no outcome from it yet.
    Applying,
    /// The last run of one of its sites failed on it and it still lags.
    Failed,
}

/// One server in the overview.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServerView {
    /// The server.
    #[serde(flatten)]
    pub record: ServerRecord,
    /// Its state.
    pub state: ServerState,
    /// The content groups it belongs to (none: newly discovered).
    pub groups: Vec<String>,
}

/// A run, without its per-server maps.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunSummary {
    /// The run.
    pub id: RunId,
    /// Its job.
    pub job: JobId,
    /// Site, group and kind.
    pub site: String,
    /// The content group.
    pub group: String,
    /// What it does.
    pub kind: String,
    /// Where it is.
    pub state: RunState,
    /// The release it builds.
    pub serial: u64,
    /// Servers with an outcome of the content assignment.
    pub applied: usize,
    /// Servers that did not end up with the release live.
    pub failed_servers: Vec<u64>,
    /// Why it failed.
    pub error: Option<String>,
    /// Start and end, Unix ms.
    pub started_ms: u64,
    /// End, Unix ms.
    pub finished_ms: Option<u64>,
}

impl From<&RunRecord> for RunSummary {
    fn from(r: &RunRecord) -> Self {
        RunSummary {
            id: r.id,
            job: r.job,
            site: r.site.clone(),
            group: r.group.clone(),
            kind: r.kind.name().to_owned(),
            state: r.state,
            serial: r.serial,
            applied: r.applied.len(),
            failed_servers: r.failed_servers.iter().map(|n| n.0).collect(),
            error: r.error.clone(),
            started_ms: r.started_ms,
            finished_ms: r.finished_ms,
        }
    }
}

/// Everything the overview screen shows.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct Overview {
    /// Sites with their live release.
    pub sites: Vec<SiteRecord>,
    /// Content groups.
    pub groups: Vec<GroupRecord>,
    /// Segments and their leaders (members are in `servers`).
    pub segments: Vec<SegmentView>,
    /// Every known server.
    pub servers: Vec<ServerView>,
    /// The newest runs, newest first (running ones among them).
    pub runs: Vec<RunSummary>,
    /// The newest history entry's id (the events screen reloads on change).
    pub last_event: u64,
}

/// A segment in the overview.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SegmentView {
    /// Its name.
    pub name: String,
    /// Its leader.
    pub leader: u64,
    /// Where it is.
    pub location: String,
    /// When its leader last reported, Unix ms.
    pub updated_ms: u64,
    /// The leader's CPU cores.
    pub cpus: u32,
    /// Free bytes on the leader's data disk.
    pub disk_free: u64,
}

/// Reads the overview from the database; `active` are the runs in
/// progress (listed even when older than the newest ones; the servers each
/// waits for are its targets, else its group's).
pub fn overview(db: &Db, active: &[ActiveRun]) -> Result<Overview, DbError> {
    let sites: Vec<SiteRecord> = db.table::<SiteRecord>()?.all()?;
    let groups: Vec<GroupRecord> = db.table::<GroupRecord>()?.all()?;
    // The newest runs, and the older ones still running.
    let runs = db.table::<RunRecord>()?;
    let mut records: Vec<RunRecord> = runs.last(RECENT_RUNS)?;
    let oldest = records.last().map_or(RunId(u64::MAX), |r| r.id);
    for a in active.iter().filter(|a| a.id < oldest) {
        records.extend(runs.get(&a.id)?);
    }
    let last_event = db.table::<HistoryRecord>()?.last(1)?.first().map_or(0, |h| h.id);
    let segments = db
        .table::<SegmentRecord>()?
        .all()?
        .into_iter()
        .map(|s| SegmentView {
            name: s.name,
            leader: s.leader.0,
            location: s.location,
            updated_ms: s.updated_ms,
            cpus: s.cpus,
            disk_free: s.disk_free,
        })
        .collect();
    let live_of: BTreeMap<&str, u64> = sites.iter().map(|s| (s.name.as_str(), s.live_serial)).collect();
    let members_of: BTreeMap<&str, &GroupRecord> = groups.iter().map(|g| (g.name.as_str(), g)).collect();
    // Servers a run in progress still waits for.
    let mut applying = BTreeSet::new();
    for r in records.iter().filter(|r| !r.state.is_final()) {
        let waiting_on = if r.state == RunState::Committing { &r.switched } else { &r.applied };
        let targets = match active.iter().find(|a| a.id == r.id) {
            Some(a) => a.targets.as_slice(),
            None => members_of.get(r.group.as_str()).map(|g| g.servers.as_slice()).unwrap_or_default(),
        };
        for s in targets {
            if !waiting_on.contains_key(s) {
                applying.insert(*s);
            }
        }
    }
    // Servers the last finished run of a site left behind, while they lag.
    let mut failed = BTreeSet::new();
    let mut seen_sites = BTreeSet::new();
    for r in records.iter().filter(|r| r.state.is_final() && r.state != RunState::Unchanged) {
        if seen_sites.insert(r.site.as_str()) {
            failed.extend(r.failed_servers.iter().map(|s| (r.site.as_str(), *s)));
        }
    }
    let servers = db
        .table::<ServerRecord>()?
        .all()?
        .into_iter()
        .map(|record| {
            let lags = |site: &str| {
                record.live.get(site).copied().unwrap_or(0) != live_of.get(site).copied().unwrap_or(0)
            };
            let state = if !record.online {
                ServerState::Offline
            } else if applying.contains(&record.id) {
                ServerState::Applying
            } else if failed.iter().any(|(site, s)| *s == record.id && lags(site)) {
                ServerState::Failed
            } else {
                ServerState::Online
            };
            let groups =
                groups.iter().filter(|g| g.servers.contains(&record.id)).map(|g| g.name.clone()).collect();
            ServerView { record, state, groups }
        })
        .collect();
    Ok(Overview {
        sites,
        groups,
        segments,
        servers,
        runs: records.iter().map(RunSummary::from).collect(),
        last_event,
    })
}

/// The overview as published: its JSON, numbered.
#[derive(Debug, Default)]
pub struct Published {
    /// Grows with every change.
    pub version: u64,
    /// The overview, as JSON.
    pub json: String,
}

/// The receiving end the stream handlers watch.
pub type Live = watch::Receiver<Arc<Published>>;

/// The task that rebuilds the overview.
#[derive(Debug)]
pub struct LiveTask(tokio::task::JoinHandle<()>);

impl LiveTask {
    /// Stops it; every stream then ends, and nothing holds the database.
    pub async fn stop(self) {
        self.0.abort();
        let _ = self.0.await;
    }
}

/// Starts the task that rebuilds the overview every [`TICK`] (on the
/// current actix arbiter), asking `active` for the runs in progress; it runs
/// until stopped or every receiver is gone.
pub fn start(db: Db, active: Recipient<ActiveRuns>) -> (Live, LiveTask) {
    let (tx, rx) = watch::channel(Arc::new(Published::default()));
    let task = actix::spawn(async move {
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut version = 0;
        loop {
            tick.tick().await;
            if tx.is_closed() {
                break;
            }
            let mut running = active.send(ActiveRuns).await.unwrap_or_default();
            running.sort_unstable_by_key(|a| std::cmp::Reverse(a.id));
            let json = match overview(&db, &running).map(|o| serde_json::to_string(&o)) {
                Ok(Ok(json)) => json,
                Ok(Err(e)) => {
                    tracing::error!(event = "overview_failed", error = %e);
                    continue;
                }
                Err(e) => {
                    tracing::error!(event = "overview_failed", error = %e, "cannot read the overview");
                    continue;
                }
            };
            if json != tx.borrow().json {
                version += 1;
                tx.send_replace(Arc::new(Published { version, json }));
            }
        }
    });
    (rx, LiveTask(task))
}

/// `GET /api/v1/stream` query.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StreamQuery {
    /// Also send this run's record whenever it changes.
    pub run: Option<RunId>,
}

fn event(name: &str, id: u64, json: &str) -> Bytes {
    Bytes::from(format!("id: {id}\nevent: {name}\ndata: {json}\n\n"))
}

/// `GET /api/v1/stream`: Server-Sent Events, `overview` at once and on
/// every change, and `run` for `?run=ID`.
pub async fn stream(
    req: HttpRequest,
    state: web::Data<CcmState>,
    q: web::Query<StreamQuery>,
) -> Result<HttpResponse, ApiError> {
    // The API's middleware has checked the caller; the stream checks again
    // before each event.
    let run = q.run;
    if let Some(id) = run {
        state.db.table::<RunRecord>()?.get(&id)?.ok_or_else(|| ApiError::NotFound(format!("no run {id}")))?;
    }
    struct Follow {
        live: Live,
        // Checked again before each event: a logout or an expired session
        // ends the stream.
        req: HttpRequest,
        state: web::Data<CcmState>,
        run: Option<RunId>,
        last_run: String,
        run_over: bool,
        first: bool,
    }
    impl Follow {
        /// The run's record as an event, when it changed since the last one.
        fn run_event(&mut self, version: u64) -> Option<Bytes> {
            let id = self.run?;
            let r = self.state.db.table::<RunRecord>().and_then(|t| t.get(&id)).ok().flatten()?;
            let json = serde_json::to_string(&r).ok()?;
            self.run_over = r.state.is_final();
            if json == self.last_run {
                return None;
            }
            self.last_run = json;
            Some(event("run", version, &self.last_run))
        }
    }
    let start = Follow {
        live: state.live.clone(),
        req,
        state,
        run,
        last_run: String::new(),
        run_over: false,
        first: true,
    };
    let body = futures_util::stream::unfold(start, |mut f| async move {
        let mut out = Vec::new();
        if f.first {
            f.first = false;
            out.extend_from_slice(b"retry: 1000\n\n");
        } else {
            // A run in progress is read every tick (its per-segment progress
            // does not always change the overview); otherwise wait for a
            // change of the overview, with a keep-alive now and then.
            let idle = tokio::time::Instant::now() + KEEPALIVE;
            loop {
                let following = f.run.is_some() && !f.run_over;
                let wake = if following { TICK } else { KEEPALIVE };
                tokio::select! {
                    changed = f.live.changed() => {
                        if changed.is_err() {
                            return None;
                        }
                        break;
                    }
                    _ = tokio::time::sleep(wake) => {
                        if authorize(&f.req, &f.state).is_err() {
                            return None;
                        }
                        let version = f.live.borrow().version;
                        if let Some(e) = f.run_event(version) {
                            return Some((Ok::<_, actix_web::Error>(e), f));
                        }
                        if tokio::time::Instant::now() >= idle {
                            return Some((Ok(Bytes::from_static(b": keepalive\n\n")), f));
                        }
                    }
                }
            }
        }
        if authorize(&f.req, &f.state).is_err() {
            return None;
        }
        let published = f.live.borrow_and_update().clone();
        if !published.json.is_empty() {
            out.extend_from_slice(&event("overview", published.version, &published.json));
        }
        if let Some(e) = f.run_event(published.version) {
            out.extend_from_slice(&e);
        }
        Some((Ok(Bytes::from(out)), f))
    });
    Ok(HttpResponse::Ok()
        .insert_header(("content-type", "text/event-stream"))
        .insert_header(("cache-control", "no-cache"))
        .insert_header(("x-accel-buffering", "no"))
        .streaming(body))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::api::MemberReport;
    use crate::protocol::ids::NodeId;
    use crate::storage::records::{JobKind, Quorum};

    fn server(id: u64, online: bool, live: u64) -> ServerRecord {
        ServerRecord {
            hot: BTreeMap::new(),
            id: NodeId(id),
            name: format!("bes-{id}"),
            http: String::new(),
            segment: "seg-1".into(),
            live: BTreeMap::from([("www".to_string(), live)]),
            online,
            first_seen_ms: 1,
            last_seen_ms: 1,
        }
    }

    fn run(id: u64, state: RunState) -> RunRecord {
        let id = RunId(id);
        RunRecord {
            targets: vec![],
            needed: 0,
            id,
            job: JobId(1),
            site: "www".into(),
            group: "web".into(),
            kind: JobKind::Publish,
            reason: "manual".into(),
            state,
            serial: 2,
            base_serial: 1,
            content_assignment: None,
            control_assignment: None,
            summary: None,
            phases: vec![],
            segments: BTreeMap::new(),
            control_segments: BTreeMap::new(),
            applied: BTreeMap::new(),
            switched: BTreeMap::new(),
            failed_servers: vec![],
            error: None,
            started_ms: 1,
            finished_ms: None,
        }
    }

    #[test]
    fn server_states_follow_runs_reports_and_releases() {
        let db = Db::temporary().unwrap();
        let site = SiteRecord {
            name: "www".into(),
            staging: "/tmp".into(),
            live_serial: 1,
            last_serial: 1,
            created_ms: 1,
        };
        db.table::<SiteRecord>().unwrap().put(&site).unwrap();
        let group = GroupRecord {
            name: "web".into(),
            site: "www".into(),
            servers: vec![NodeId(1), NodeId(2), NodeId(3)],
            quorum: Quorum::All,
        };
        db.table::<GroupRecord>().unwrap().put(&group).unwrap();
        let servers = db.table::<ServerRecord>().unwrap();
        for s in [server(1, true, 1), server(2, true, 1), server(3, false, 1), server(4, true, 0)] {
            servers.put(&s).unwrap();
        }
        let seg = SegmentRecord {
            incarnation: 1,
            name: "seg-1".into(),
            leader: NodeId(1),
            leader_http: String::new(),
            location: String::new(),
            cpus: 1,
            disk_free: 0,
            members: vec![MemberReport {
                id: NodeId(1),
                name: "bes-1".into(),
                http: String::new(),
                live: BTreeMap::new(),
            }],
            updated_ms: 1,
        };
        db.table::<SegmentRecord>().unwrap().put(&seg).unwrap();
        let state =
            |o: &Overview, id: u64| o.servers.iter().find(|s| s.record.id == NodeId(id)).unwrap().state;

        let o = overview(&db, &[]).unwrap();
        assert_eq!(
            [1, 2, 3, 4].map(|i| state(&o, i)),
            [ServerState::Online, ServerState::Online, ServerState::Offline, ServerState::Online]
        );
        assert!(o.servers[3].groups.is_empty(), "server 4 is new: in no group");
        assert_eq!(o.segments[0].leader, 1);

        // A run in progress that has heard from server 1 only.
        let mut r = run(1, RunState::Distributing);
        r.applied.insert(NodeId(1), crate::protocol::api::ServerOutcome::Succeeded);
        db.table::<RunRecord>().unwrap().put(&r).unwrap();
        let o = overview(&db, &[]).unwrap();
        assert_eq!([1, 2].map(|i| state(&o, i)), [ServerState::Online, ServerState::Applying]);
        assert_eq!(o.runs[0].state, RunState::Distributing);
        // Known to the CCM as sending to server 1 only (a catch-up run):
        // server 2 is not waited for.
        let o = overview(&db, &[ActiveRun { id: RunId(1), targets: vec![NodeId(1)] }]).unwrap();
        assert_eq!([1, 2].map(|i| state(&o, i)), [ServerState::Online, ServerState::Online]);
        let o = overview(&db, &[ActiveRun { id: RunId(1), targets: vec![NodeId(1), NodeId(2)] }]).unwrap();
        assert_eq!([1, 2].map(|i| state(&o, i)), [ServerState::Online, ServerState::Applying]);

        // It committed release 2 without server 2: failed while it lags.
        r.state = RunState::Committed;
        r.failed_servers = vec![NodeId(2)];
        db.table::<RunRecord>().unwrap().put(&r).unwrap();
        db.table::<SiteRecord>().unwrap().put(&SiteRecord { live_serial: 2, ..site }).unwrap();
        servers.put(&server(1, true, 2)).unwrap();
        let o = overview(&db, &[]).unwrap();
        assert_eq!([1, 2].map(|i| state(&o, i)), [ServerState::Online, ServerState::Failed]);
        servers.put(&server(2, true, 2)).unwrap();
        assert_eq!(state(&overview(&db, &[]).unwrap(), 2), ServerState::Online, "in step again");
    }

    #[test]
    fn a_long_run_stays_in_view_behind_newer_ones() {
        let db = Db::temporary().unwrap();
        let runs = db.table::<RunRecord>().unwrap();
        runs.put(&run(1, RunState::Distributing)).unwrap();
        for id in 2..=40 {
            runs.put(&run(id, RunState::Committed)).unwrap();
        }
        let active = [ActiveRun { id: RunId(1), targets: vec![] }];
        let ids: Vec<RunId> = overview(&db, &active).unwrap().runs.iter().map(|r| r.id).collect();
        assert_eq!(ids.len(), RECENT_RUNS + 1, "{ids:?}");
        assert_eq!(
            (ids[0], *ids.last().unwrap()),
            (RunId(40), RunId(1)),
            "newest first, the running one kept: {ids:?}"
        );
    }
}
