//! The controller's reads and writes of its records around a run: the
//! views [`crate::protocol::run::plan`] takes, what a segment report and a
//! commit change. Plain functions over the typed tables, no actor state.

use std::collections::{BTreeMap, BTreeSet};

use crate::clock::unix_ms;
use crate::protocol::api::{MemberReport, SegmentReport};
use crate::protocol::ids::NodeId;
use crate::protocol::run::{GroupView, JobView, ServerView, SiteView};
use crate::storage::checkpoint::Checkpoints;
use crate::storage::db::{Db, DbError, Record, Table};
use crate::storage::records::{
    GroupRecord, JobRecord, RunRecord, SegmentRecord, ServerRecord, SiteRecord, SnapshotRecord,
};
use crate::storage::releases::SiteRoot;

/// A table of an open database.
pub fn table<R: Record>(db: &Db) -> Table<R> {
    // Every table was created when the CCM started (`ccm::start`); opening
    // an existing tree of an open database does no I/O and cannot fail.
    db.table::<R>().unwrap_or_else(|e| panic!("database table {}: {e}", R::TABLE))
}

/// What the plan needs to know of `site`: its serials, what the shadow copy
/// holds, and the release the live one was built on.
pub fn site_view(db: &Db, site: &SiteRecord, shadow: &SiteRoot) -> Result<SiteView, DbError> {
    // The live release's snapshot names the run that made it, and that run
    // the release it was built on.
    let live_base = match table::<SnapshotRecord>(db).get(&(site.name.clone(), site.live_serial))? {
        Some(snap) => table::<RunRecord>(db).get(&snap.run)?.map_or(0, |r| r.base_serial),
        None => 0,
    };
    Ok(SiteView {
        name: site.name.clone(),
        live_serial: site.live_serial,
        last_serial: site.last_serial,
        shadow_serial: shadow.live().ok().flatten().map_or(0, |s| s.0),
        kept: shadow.releases().unwrap_or_default().into_iter().map(|s| s.0).collect::<BTreeSet<_>>(),
        live_base,
    })
}

/// The job as the plan sees it.
pub fn job_view(job: &JobRecord, checkpoints: &Checkpoints) -> JobView {
    JobView {
        id: job.id,
        kind: job.kind,
        serial: job.params.serial,
        checkpoint: job
            .params
            .checkpoint
            .map(|id| (id, checkpoints.get(&job.site, id).ok().flatten().is_some())),
        extra_servers: job.params.extra_servers,
        quorum: job.policy.quorum,
    }
}

/// The group as the plan sees it.
pub fn group_view(group: &GroupRecord) -> GroupView {
    GroupView { servers: group.servers.clone(), quorum: group.quorum }
}

/// Every known server, with its live release of `site`.
pub fn server_views(db: &Db, site: &str) -> Result<Vec<ServerView>, DbError> {
    Ok(table::<ServerRecord>(db)
        .all()?
        .into_iter()
        .map(|r| ServerView {
            live: r.live.get(site).copied().unwrap_or(0),
            id: r.id,
            segment: r.segment,
            online: r.online,
        })
        .collect())
}

/// `servers` serve release `serial` of `site` (as hot content when `hot`):
/// the CCM knows it now, before their leaders' next segment reports say so.
pub fn record_live(db: &Db, site: &str, serial: u64, servers: &[NodeId], hot: bool) {
    let table = table::<ServerRecord>(db);
    for s in servers {
        let result = table.update(s, |r| {
            r.map(|mut r| {
                if hot {
                    r.hot.insert(site.to_owned(), serial);
                    r.live.remove(site);
                } else {
                    r.live.insert(site.to_owned(), serial);
                    r.hot.remove(site);
                }
                r
            })
        });
        if let Err(e) = result {
            tracing::error!(server = s.0, error = %e, "cannot record the live release");
        }
    }
}

/// A server's releases as its leader reports them, split into live ones
/// and the hot release it was known to serve (a hot serial is never live).
fn split_hot(
    reported: BTreeMap<String, u64>,
    known_hot: &BTreeMap<String, u64>,
) -> (BTreeMap<String, u64>, BTreeMap<String, u64>) {
    let mut live = BTreeMap::new();
    let mut hot = BTreeMap::new();
    for (site, serial) in reported {
        if known_hot.get(&site) == Some(&serial) {
            hot.insert(site, serial);
        } else {
            live.insert(site, serial);
        }
    }
    (live, hot)
}

/// What changed with a segment report: the segment, its servers (online
/// or not), their releases. Returns whether the leader changed, and the
/// servers seen for the first time.
pub fn record_segment(db: &Db, report: &SegmentReport) -> Result<(bool, Vec<(NodeId, String)>), DbError> {
    let now = unix_ms();
    let segments = table::<SegmentRecord>(db);
    let old = segments.get(&report.segment)?;
    segments.put(&SegmentRecord {
        name: report.segment.clone(),
        leader: report.leader,
        leader_http: report.leader_http.clone(),
        incarnation: report.incarnation,
        location: report.location.clone(),
        cpus: report.cpus,
        disk_free: report.disk_free,
        members: report.members.clone(),
        updated_ms: now,
    })?;
    let servers = table::<ServerRecord>(db);
    let listed: BTreeSet<NodeId> = report.members.iter().map(|m| m.id).collect();
    let mut discovered = Vec::new();
    for m in &report.members {
        let MemberReport { id, name, http, live } = m.clone();
        let known = servers.get(&id)?;
        let first = known.as_ref().map_or(now, |s| s.first_seen_ms);
        if known.is_none() {
            discovered.push((id, name.clone()));
        }
        let (live, hot) = split_hot(live, &known.map(|k| k.hot).unwrap_or_default());
        servers.put(&ServerRecord {
            id,
            name,
            http,
            segment: report.segment.clone(),
            live,
            hot,
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
    db.flush()?;
    Ok((old.as_ref().map(|o| o.leader) != Some(report.leader), discovered))
}

/// Segment `segment` is silent at `now_ms` when its last report is older
/// than `silence_ms`: its servers still listed online are marked offline.
/// Answers them (none when it reported in time, or is unknown).
pub fn mark_silent(db: &Db, segment: &str, now_ms: u64, silence_ms: u64) -> Result<Vec<NodeId>, DbError> {
    let Some(seg) = table::<SegmentRecord>(db).get(&segment.to_owned())? else {
        return Ok(Vec::new());
    };
    if now_ms < seg.updated_ms.saturating_add(silence_ms) {
        return Ok(Vec::new());
    }
    let servers = table::<ServerRecord>(db);
    let mut gone = Vec::new();
    for s in servers.all()? {
        if s.segment == segment && s.online {
            gone.push(s.id);
            servers.put(&ServerRecord { online: false, ..s })?;
        }
    }
    if !gone.is_empty() {
        db.flush()?;
    }
    Ok(gone)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue 15 item 8: a segment whose only agent stopped no longer shows
    /// its server online (it did 86 s later): silent for `segment_silence`,
    /// its servers are offline until it reports again.
    #[test]
    fn a_silent_segment_s_servers_go_offline() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(dir.path()).unwrap();
        let report = SegmentReport {
            segment: "seg-2".into(),
            leader: NodeId(3),
            leader_http: "127.0.0.1:1".into(),
            incarnation: 1,
            location: String::new(),
            cpus: 1,
            disk_free: 0,
            members: vec![MemberReport {
                id: NodeId(3),
                name: "web-3".into(),
                http: String::new(),
                live: Default::default(),
            }],
        };
        record_segment(&db, &report).unwrap();
        let at = table::<SegmentRecord>(&db).get(&"seg-2".to_owned()).unwrap().unwrap().updated_ms;
        assert_eq!(mark_silent(&db, "seg-2", at + 59_999, 60_000).unwrap(), vec![], "not silent yet");
        assert!(table::<ServerRecord>(&db).get(&NodeId(3)).unwrap().unwrap().online);
        assert_eq!(mark_silent(&db, "seg-2", at + 60_000, 60_000).unwrap(), vec![NodeId(3)]);
        assert!(!table::<ServerRecord>(&db).get(&NodeId(3)).unwrap().unwrap().online);
        assert_eq!(mark_silent(&db, "seg-2", at + 90_000, 60_000).unwrap(), vec![], "once");
        assert_eq!(mark_silent(&db, "nope", at + 90_000, 60_000).unwrap(), vec![]);
        record_segment(&db, &report).unwrap();
        assert!(table::<ServerRecord>(&db).get(&NodeId(3)).unwrap().unwrap().online, "back when it reports");
    }

    /// Issue 14 defect 2: a hot release reported by a server stays hot.
    #[test]
    fn a_reported_hot_release_is_never_taken_for_the_live_one() {
        let known: BTreeMap<String, u64> = [("www".to_owned(), 7)].into();
        let reported: BTreeMap<String, u64> = [("www".to_owned(), 7), ("blog".to_owned(), 3)].into();
        let (live, hot) = split_hot(reported, &known);
        assert_eq!(live, [("blog".to_owned(), 3)].into());
        assert_eq!(hot, known);
        let (live, hot) = split_hot([("www".to_owned(), 8)].into(), &known);
        assert_eq!((live.get("www"), hot.len()), (Some(&8), 0), "a full release replaced it");
    }
}
