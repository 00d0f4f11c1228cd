//! The distribution tree's side of the CCM: ordering a wave's leaders,
//! notifying them, and what they tell it (segment reports, next-hop
//! requests, segment results), each fed to the run it concerns.

use actix::prelude::*;

use super::super::tree_planner::{PlanTree, SetOrder};
use super::pack::wave_kind;
use super::store::{self, table};
use super::{Ccm, CcmError, Driven};
use crate::net::client::ClientError;
use crate::protocol::api::{
    AssignmentRef, HopTarget, NextHop, Notify, ProgressReport, SegmentReport, SegmentResult, ServerOutcome,
};
use crate::protocol::distribution::Target;
use crate::protocol::ids::{self, AssignmentId, NodeId, RunId};
use crate::protocol::run::Wave;
use crate::storage::records::{HistoryKind, SegmentRecord, SegmentState, SettingRecord};

/// Sets the admin static order of segments (stored; overrides `ccm.tree_order`).
#[derive(Message)]
#[rtype(result = "Result<(), CcmError>")]
pub struct SetTreeOrder(pub Vec<String>);

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

/// A leader says how far it is with an assignment (the run's record shows
/// it; nothing is decided on it).
#[derive(Message)]
#[rtype(result = "()")]
pub struct ProgressReported {
    /// The leader that sent it.
    pub node: NodeId,
    /// The report.
    pub report: ProgressReport,
}

impl Ccm {
    /// Orders the wave's segments' leaders.
    pub(super) fn plan_tree(&mut self, id: RunId, names: Vec<String>, ctx: &mut Context<Self>) {
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

    pub(super) fn notify_of(&self, d: &Driven, target: &Target, fetch_from: String) -> Option<Notify> {
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
    pub(super) fn notify(&mut self, id: RunId, target: Target, ctx: &mut Context<Self>) {
        let Some(notify) = self.runs.get(&id).and_then(|d| self.notify_of(d, &target, self.config.ccm.url()))
        else {
            return;
        };
        let client = self.client.clone();
        let segment = target.segment.clone();
        tracing::info!(event = "notify", run = id.0, assignment = notify.assignment.id.0, segment = %segment, leader = target.leader.0, from = "ccm");
        async move {
            client
                .post_json::<_, serde_json::Value>(target.leader, &target.url, "/node/v1/notify", &notify)
                .await
        }
        .into_actor(self)
        .map(move |res: Result<serde_json::Value, ClientError>, act, ctx| {
            if let Err(e) = res {
                tracing::warn!(event = "notify_failed", run = id.0, segment = %segment, error = %e);
                act.feed(id, ctx, |run, now| run.handle_notify_failed(now, &segment, &e.to_string()));
            }
        })
        .spawn(ctx);
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
        tracing::debug!(event = "segment_reported", segment = %report.segment, leader = report.leader.0, members = report.members.len());
        let url = format!("http://{}", report.leader_http);
        let ids: Vec<RunId> = self.runs.keys().copied().collect();
        for id in ids {
            self.feed(id, ctx, |run, now| {
                run.handle_leader_seen(now, &report.segment, report.leader, &url, report.incarnation)
            });
        }
        if self.fresh.insert(report.segment.clone()) {
            self.release_held(false, ctx);
        }
        self.watch_silence(report.segment.clone(), ctx);
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
                tracing::info!(event = "next_hop", run = id.0, assignment = msg.assignment.0, from = msg.node.0, to = t.leader.0, segment = %t.segment);
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
        // The wave it is for: the last result of the content wave moves the
        // run on to the commit wave at once.
        let wave = d.run.wave();
        if !d.run.handle_segment_result(now, aid, &r.segment, &r.servers) {
            return Ok(());
        }
        if wave == Wave::Content {
            // Kept for the record after the commit wave (records::RunRecord::segments).
            let p = d.record.segments.entry(r.segment.clone()).or_default();
            if r.delivery.is_some() {
                p.delivery = r.delivery;
            }
            if p.state != SegmentState::Reported {
                p.state = SegmentState::Reported;
                p.reported_ms = Some(crate::clock::unix_ms());
            }
        }
        tracing::info!(event = "segment_result", run = id.0, assignment = r.assignment.0, segment = %r.segment, leader = msg.node.0,
            succeeded = r.servers.values().filter(|o| **o == ServerOutcome::Succeeded).count(), servers = r.servers.len());
        self.process(id, ctx);
        Ok(())
    }
}

impl Handler<ProgressReported> for Ccm {
    type Result = ();

    fn handle(&mut self, msg: ProgressReported, ctx: &mut Context<Self>) {
        let r = msg.report;
        // Only the leader it was sent to, for a content wave in progress.
        let Some(&id) = self.by_assignment.get(&r.assignment) else { return };
        let Some(d) = self.runs.get_mut(&id) else { return };
        if d.run.wave() != Wave::Content || r.leader != msg.node {
            return;
        }
        let Some(p) = d.record.segments.get_mut(&r.segment) else { return };
        if p.leader != Some(msg.node) {
            return;
        }
        p.live = Some(r.progress);
        p.live_ms = Some(crate::clock::unix_ms());
        self.process(id, ctx);
    }
}
