//! The group leader's duties (DESIGN §4 steps 5, 6 and 8), active while
//! this node leads its segment.
//!
//! It follows the elector's events. While leading it reports the segment
//! to the CCM (on election, on every membership change, and every
//! `segment_report_interval`), registers the members' data addresses with
//! the [`MulticastSender`](super::multicast_sender::MulticastSender), and
//! accepts notifies from the node API. Each notified assignment runs as one
//! job, concurrently with others:
//!
//! 1. **fetch** the file from `fetch_from` (streamed, resumed, SHA-256
//!    checked: [`fetch_assignment`]) unless a verified copy is held;
//! 2. **forward**: ask the CCM `next-hop` and notify the leader it names,
//!    until it names none (a target that answers an error is not retried:
//!    the CCM reassigns it, we just ask again);
//! 3. **deliver**: multicast it to the targeted members (all of them when
//!    the notify names none), carry it out here through the
//!    [`ContentInterpreter`](super::content_interpreter::ContentInterpreter)
//!    when this node is targeted, and collect the members' reports;
//! 4. **report** one [`SegmentResult`] naming every targeted server, retried
//!    until the CCM accepts it.
//!
//! When leadership is lost the jobs stop where they are (their futures are
//! cancelled); the CCM notifies the new leader. The job's steps are plain
//! async code; the actor's events that a job waits for (a multicast session
//! ended, reports collected) reach it through one-shot channels.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix::prelude::*;
use tokio::sync::oneshot;

use super::content_interpreter::{ApplyAssignment, GetInterpreterStatus, InterpreterStatus};
use super::elector::ElectionEvent;
use super::multicast_receiver::MarkHeld;
use super::multicast_sender::{AssignmentSent, PassCounters, RegisterMember, SendAssignment};
use super::report_collector::{CollectReports, ReportsCollected};
use crate::net::client::NodeClient;
use crate::net::fetch::{fetch_assignment, FetchOptions};
use crate::protocol::api::{
    DeliveryStats, LivePhase, LiveProgress, MemberReport, NextHop, NextHopRequest, NodeStatus, NotLeader,
    Notify, ProgressReport, SegmentReport, SegmentResult, ServerOutcome, CCM_NODE,
};
use crate::protocol::control::MemberInfo;
use crate::protocol::election::Event;
use crate::protocol::ids::{AssignmentId, AssignmentSerial, NodeId};
use crate::protocol::mctp;
use crate::protocol::reports;
use crate::storage::agent_state::AgentState;
use crate::storage::assignment_file::assignment_path;

/// Failed requests to the CCM's `next-hop` in a row before a leader stops
/// forwarding and delivers in its segment (the CCM reassigns the rest).
const NEXT_HOP_ATTEMPTS: u32 = 5;
/// Longest pause between retried requests to the CCM.
const MAX_RETRY_DELAY: Duration = Duration::from_secs(30);

/// Fetch, forward and deliver an assignment a notify names (command, from
/// the node API). Answers `Err(NotLeader)` when this node does not lead.
#[derive(Debug, Clone, Message)]
#[rtype(result = "Result<(), NotLeader>")]
pub struct DistributeAssignment {
    /// Who sent the notify (the CCM or another leader).
    pub from: NodeId,
    /// The notify.
    pub notify: Notify,
}

/// Asks for this node's [`NodeStatus`] (query, from the node API).
#[derive(Debug, Clone, Copy, Message)]
#[rtype(result = "NodeStatus")]
pub struct GetNodeStatus;

/// Asks what the group leader is doing (query, for tests and the UI).
#[derive(Debug, Clone, Copy, Message)]
#[rtype(result = "LeaderStatus")]
pub struct GetLeaderStatus;

/// What [`GetLeaderStatus`] answers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LeaderStatus {
    /// True while this node leads its segment.
    pub leading: bool,
    /// The leader this node knows.
    pub leader: Option<NodeId>,
    /// The segment's members as last reported by the elector (leader only).
    pub members: Vec<NodeId>,
    /// Assignments whose job is running.
    pub jobs: Vec<AssignmentId>,
    /// Segment reports the CCM accepted.
    pub segment_reports: u64,
    /// Segment results the CCM accepted.
    pub results_reported: u64,
}

/// Everything a [`GroupLeader`] needs.
pub struct LeaderSetup {
    /// This node.
    pub node: NodeId,
    /// The segment's name.
    pub segment: String,
    /// Where the segment is.
    pub location: String,
    /// The CCM's node API base URL.
    pub ccm_url: String,
    /// This node's node HTTP address (`host:port`).
    pub advertise_http: String,
    /// Where assignment copies are kept.
    pub assignments: PathBuf,
    /// The state store (held copies).
    pub state: Arc<AgentState>,
    /// Signs node API requests as this node.
    pub client: NodeClient,
    /// How hard fetches try.
    pub fetch: FetchOptions,
    /// Period of segment reports.
    pub report_interval: Duration,
    /// First delay before a failed CCM request is repeated.
    pub retry_delay: Duration,
    /// How long to keep asking members that received an assignment for their result.
    pub report_timeout: Duration,
    /// The MCTP sender.
    pub sender: Recipient<SendAssignment>,
    /// The same, for member addresses.
    pub register: Recipient<RegisterMember>,
    /// The report collector.
    pub collector: Recipient<CollectReports>,
    /// This node's interpreter.
    pub interpreter: Recipient<ApplyAssignment>,
    /// The same, for live serials.
    pub interpreter_status: Recipient<GetInterpreterStatus>,
    /// This node's MCTP receiver, told about copies fetched here.
    pub held: Option<Recipient<MarkHeld>>,
}

/// Where jobs wait for the actor's events.
#[derive(Default)]
struct Waiters {
    sent: HashMap<AssignmentSerial, oneshot::Sender<mctp::Outcome>>,
    collected: HashMap<AssignmentSerial, oneshot::Sender<reports::Outcome>>,
}

/// What a job needs, shared by all jobs (on the actor's thread: the HTTP
/// client is not `Send`).
struct Shared {
    node: NodeId,
    /// Drawn at start: tells the CCM this process is not the one that
    /// acknowledged earlier notifies (their jobs were in memory).
    incarnation: u64,
    segment: String,
    ccm_url: String,
    assignments: PathBuf,
    state: Arc<AgentState>,
    client: NodeClient,
    fetch: FetchOptions,
    retry_delay: Duration,
    report_timeout: Duration,
    sender: Recipient<SendAssignment>,
    collector: Recipient<CollectReports>,
    interpreter: Recipient<ApplyAssignment>,
    held: Option<Recipient<MarkHeld>>,
    waiters: Mutex<Waiters>,
    /// The segment's members (leader included) as the elector reports them.
    members: Mutex<BTreeMap<NodeId, MemberInfo>>,
}

/// The actor. See the module docs.
pub struct GroupLeader {
    shared: Rc<Shared>,
    location: String,
    advertise_http: String,
    report_interval: Duration,
    register: Recipient<RegisterMember>,
    interpreter_status: Recipient<GetInterpreterStatus>,
    leader: Option<NodeId>,
    leading: bool,
    jobs: HashMap<AssignmentId, SpawnHandle>,
    /// A segment report is being posted; post again when it is done.
    report_busy: bool,
    report_again: bool,
    segment_reports: u64,
    results_reported: Arc<Mutex<u64>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn backoff(base: Duration, attempt: u32) -> Duration {
    base.saturating_mul(1 << attempt.min(10)).min(MAX_RETRY_DELAY)
}

impl GroupLeader {
    /// A group leader, idle until this node is elected.
    pub fn new(s: LeaderSetup) -> Self {
        GroupLeader {
            shared: Rc::new(Shared {
                node: s.node,
                incarnation: rand::random::<u64>().max(1),
                segment: s.segment,
                ccm_url: s.ccm_url,
                assignments: s.assignments,
                state: s.state,
                client: s.client,
                fetch: s.fetch,
                retry_delay: s.retry_delay,
                report_timeout: s.report_timeout,
                sender: s.sender,
                collector: s.collector,
                interpreter: s.interpreter,
                held: s.held,
                waiters: Mutex::default(),
                members: Mutex::default(),
            }),
            location: s.location,
            advertise_http: s.advertise_http,
            report_interval: s.report_interval,
            register: s.register,
            interpreter_status: s.interpreter_status,
            leader: None,
            leading: false,
            jobs: HashMap::new(),
            report_busy: false,
            report_again: false,
            segment_reports: 0,
            results_reported: Arc::default(),
        }
    }

    fn become_leader(&mut self, ctx: &mut Context<Self>) {
        self.leading = true;
        tracing::info!(event = "leading", node = self.shared.node.0, segment = %self.shared.segment, "group leader duties start");
        self.report_segment(ctx);
    }

    fn become_follower(&mut self, ctx: &mut Context<Self>) {
        if !self.leading {
            return;
        }
        self.leading = false;
        lock(&self.shared.members).clear();
        let stopped: Vec<AssignmentId> = self.jobs.keys().copied().collect();
        for (_, h) in self.jobs.drain() {
            ctx.cancel_future(h);
        }
        let mut w = lock(&self.shared.waiters);
        w.sent.clear();
        w.collected.clear();
        tracing::warn!(event = "leadership_lost", node = self.shared.node.0, stopped = %crate::protocol::ids::join(&stopped), "group leader duties stop");
    }

    /// Posts a segment report now, or once the one in flight is done.
    fn report_segment(&mut self, ctx: &mut Context<Self>) {
        if !self.leading {
            return;
        }
        if self.report_busy {
            self.report_again = true;
            return;
        }
        self.report_busy = true;
        let shared = self.shared.clone();
        let status = self.interpreter_status.clone();
        let (location, http) = (self.location.clone(), self.advertise_http.clone());
        let fut = async move {
            let own = status.send(GetInterpreterStatus).await.unwrap_or_default();
            let report = segment_report(&shared, &own, location, http);
            let n = report.members.len();
            let r: Result<serde_json::Value, _> =
                shared.client.post_json(CCM_NODE, &shared.ccm_url, "/node/v1/segment", &report).await;
            (r.map(|_| ()), n)
        };
        ctx.spawn(fut.into_actor(self).map(|(r, members), act, ctx| {
            act.report_busy = false;
            let node = act.shared.node;
            match r {
                Ok(()) => {
                    act.segment_reports += 1;
                    tracing::info!(event = "segment_reported", node = node.0, segment = %act.shared.segment, members, "segment reported");
                }
                Err(e) => {
                    tracing::warn!(event = "segment_report_failed", node = node.0, error = %e, "segment report failed; the next one retries")
                }
            }
            if std::mem::take(&mut act.report_again) {
                act.report_segment(ctx);
            }
        }));
    }

    fn segment_changed(&mut self, members: Vec<(NodeId, MemberInfo)>, ctx: &mut Context<Self>) {
        for (id, info) in &members {
            if *id == self.shared.node || info.data.is_empty() {
                continue;
            }
            match info.data.parse() {
                Ok(addr) => self.register.do_send(RegisterMember { node: *id, addr }),
                Err(_) => tracing::warn!(event = "bad_data_address", member = id.0, data = %info.data),
            }
        }
        *lock(&self.shared.members) = members.into_iter().collect();
        self.report_segment(ctx);
    }
}

fn segment_report(shared: &Shared, own: &InterpreterStatus, location: String, http: String) -> SegmentReport {
    let members = lock(&shared.members)
        .iter()
        .map(|(id, info)| MemberReport {
            id: *id,
            name: info.name.clone(),
            http: info.http.clone(),
            live: if *id == shared.node {
                own.live.clone()
            } else {
                info.serials.iter().map(|s| (s.site.clone(), s.serial)).collect()
            },
        })
        .collect();
    let cpus = std::thread::available_parallelism().map_or(1, |n| u32::try_from(n.get()).unwrap_or(u32::MAX));
    let disk_free = nix::sys::statvfs::statvfs(&shared.assignments)
        .map_or(0, |s| s.blocks_available().saturating_mul(s.fragment_size()));
    SegmentReport {
        segment: shared.segment.clone(),
        leader: shared.node,
        leader_http: http,
        incarnation: shared.incarnation,
        location,
        cpus,
        disk_free,
        members,
    }
}

/// How often a leader tells the CCM how far it is with an assignment
/// (only when something moved; a job shorter than this sends nothing).
const PROGRESS_EVERY: Duration = Duration::from_secs(1);

/// How far one assignment's job is, written by the fetch and the multicast
/// sender, read by [`report_progress`].
#[derive(Debug, Default)]
struct Tracker {
    phase: std::sync::atomic::AtomicU8,
    fetched: Arc<std::sync::atomic::AtomicU64>,
    mctp: Arc<PassCounters>,
}

impl Tracker {
    fn set(&self, phase: LivePhase) {
        self.phase.store(phase as u8, std::sync::atomic::Ordering::Relaxed);
    }

    fn now(&self, size: u64, targets: usize) -> LiveProgress {
        use std::sync::atomic::Ordering::Relaxed;
        let phase = match self.phase.load(Relaxed) {
            p if p == LivePhase::Forwarding as u8 => LivePhase::Forwarding,
            p if p == LivePhase::Sending as u8 => LivePhase::Sending,
            p if p == LivePhase::Applying as u8 => LivePhase::Applying,
            _ => LivePhase::Fetching,
        };
        let fetched = if phase == LivePhase::Fetching { self.fetched.load(Relaxed) } else { size };
        LiveProgress {
            phase,
            fetched,
            size,
            frames: self.mctp.frames.load(Relaxed),
            passes: self.mctp.pass.load(Relaxed),
            missing: self.mctp.missing.load(Relaxed),
            receiving: self.mctp.active.load(Relaxed),
            targets: targets as u32,
        }
    }
}

/// Tells the CCM how far the job is, every [`PROGRESS_EVERY`] that
/// something moved, until the job is over (the caller drops it).
async fn report_progress(shared: &Shared, notify: &Notify, t: &Tracker) -> std::convert::Infallible {
    let mut last = None;
    loop {
        tokio::time::sleep(PROGRESS_EVERY).await;
        let progress = t.now(notify.assignment.size, notify.targets.len());
        if last == Some(progress) {
            continue;
        }
        last = Some(progress);
        let report = ProgressReport {
            assignment: notify.assignment.id,
            run: notify.run,
            segment: shared.segment.clone(),
            leader: shared.node,
            progress,
        };
        let r: Result<serde_json::Value, _> =
            shared.client.post_json(CCM_NODE, &shared.ccm_url, "/node/v1/progress", &report).await;
        if let Err(e) = r {
            tracing::debug!(event = "progress_failed", node = shared.node.0, assignment = report.assignment.0, error = %e);
        }
    }
}

/// One assignment's job: fetch, forward, deliver, report. Returns the
/// result it reported.
async fn run_job(shared: Rc<Shared>, notify: Notify) -> SegmentResult {
    let id = notify.assignment.id;
    let node = shared.node;
    let targets = notify.targets.clone();
    let tracker = Tracker::default();
    let work = async {
        match fetch(&shared, &notify, &tracker).await {
            Ok(hash) => {
                tracker.set(LivePhase::Forwarding);
                forward(&shared, id).await;
                tracker.set(LivePhase::Sending);
                deliver(&shared, id, hash, &targets, &tracker).await
            }
            Err(error) => {
                let error = format!("group leader {node} could not fetch assignment {id}: {error}");
                (targets.iter().map(|t| (*t, ServerOutcome::Failed { error: error.clone() })).collect(), None)
            }
        }
    };
    let (servers, delivery) = tokio::select! {
        done = work => done,
        never = report_progress(&shared, &notify, &tracker) => match never {},
    };
    let result = SegmentResult {
        assignment: id,
        run: notify.run,
        segment: shared.segment.clone(),
        leader: node,
        servers,
        delivery: delivery.map(|d| DeliveryStats { bytes: notify.assignment.size, ..d }),
    };
    let count = |f: fn(&ServerOutcome) -> bool| result.servers.values().filter(|o| f(o)).count();
    tracing::info!(
        event = "delivered", node = node.0, assignment = id.0, run = notify.run.0, segment = %shared.segment,
        succeeded = count(|o| matches!(o, ServerOutcome::Succeeded)),
        failed = count(|o| matches!(o, ServerOutcome::Failed { .. })),
        silent = count(|o| matches!(o, ServerOutcome::Silent)),
        "assignment delivered in the segment"
    );
    let mut attempt = 0;
    loop {
        let r: Result<serde_json::Value, _> =
            shared.client.post_json(CCM_NODE, &shared.ccm_url, "/node/v1/report", &result).await;
        match r {
            Ok(_) => break,
            Err(e) => {
                tracing::warn!(event = "report_failed", node = node.0, assignment = id.0, attempt, error = %e, "segment result not accepted; retrying");
                tokio::time::sleep(backoff(shared.retry_delay, attempt)).await;
                attempt += 1;
            }
        }
    }
    tracing::info!(
        event = "reported",
        node = node.0,
        assignment = id.0,
        run = notify.run.0,
        "segment result reported"
    );
    result
}

/// Makes sure a verified copy is held; returns its SHA-256.
async fn fetch(shared: &Shared, notify: &Notify, tracker: &Tracker) -> Result<[u8; 32], String> {
    let a = &notify.assignment;
    let expected: [u8; 32] = hex::decode(&a.sha256)
        .ok()
        .and_then(|v| v.try_into().ok())
        .ok_or_else(|| format!("sha256 {:?} is not 64 hex digits", a.sha256))?;
    let dest = assignment_path(&shared.assignments, a.id);
    if shared.state.held_hash(a.id.0) == Some(expected) && dest.is_file() {
        tracing::info!(
            event = "fetched",
            node = shared.node.0,
            assignment = a.id.0,
            bytes = 0,
            held = true,
            "copy already held"
        );
        return Ok(expected);
    }
    let opts = FetchOptions {
        rate_limit: notify.rate_limit,
        progress: Some(tracker.fetched.clone()),
        ..shared.fetch.clone()
    };
    let got = fetch_assignment(&shared.client, &notify.fetch_from, a, &dest, &opts)
        .await
        .map_err(|e| e.to_string())?;
    shared.state.record_held(a.id.0, expected).map_err(|e| e.to_string())?;
    if let Some(h) = &shared.held {
        h.do_send(MarkHeld { assignment: AssignmentSerial(a.id.0), hash: expected });
    }
    let source = if notify.fetch_from.trim_end_matches('/') == shared.ccm_url { "ccm" } else { "leader" };
    metrics::counter!("cmover_hop_bytes_total", "node" => crate::metrics::node_label(shared.node), "from" => source)
        .increment(got.bytes);
    tracing::info!(
        event = "fetched", node = shared.node.0, assignment = a.id.0, from = %notify.fetch_from,
        bytes = got.bytes, ms = got.ms, resumed = got.resumed, refetched = got.refetched, "assignment fetched"
    );
    Ok(expected)
}

/// Asks the CCM for next hops and notifies them until it names none.
async fn forward(shared: &Shared, id: AssignmentId) {
    let node = shared.node;
    let mut failures = 0;
    loop {
        let hop: NextHop = match shared
            .client
            .post_json(CCM_NODE, &shared.ccm_url, "/node/v1/next-hop", &NextHopRequest { assignment: id })
            .await
        {
            Ok(h) => h,
            Err(e) => {
                failures += 1;
                tracing::warn!(event = "next_hop_failed", node = node.0, assignment = id.0, failures, error = %e);
                if failures >= NEXT_HOP_ATTEMPTS {
                    tracing::warn!(
                        event = "forwarding_abandoned",
                        node = node.0,
                        assignment = id.0,
                        "the CCM does not answer next-hop; delivering in the segment"
                    );
                    return;
                }
                tokio::time::sleep(backoff(shared.retry_delay, failures)).await;
                continue;
            }
        };
        failures = 0;
        let Some(target) = hop.target else {
            return;
        };
        let r: Result<serde_json::Value, _> =
            shared.client.post_json(target.node, &target.url, "/node/v1/notify", &target.notify).await;
        match r {
            Ok(_) => tracing::info!(
                event = "forwarded", node = node.0, assignment = id.0, to = target.node.0, url = %target.url,
                "assignment forwarded"
            ),
            Err(e) => {
                // The CCM hears of it from the next next-hop and reassigns.
                tracing::warn!(event = "forward_failed", node = node.0, assignment = id.0, to = target.node.0, error = %e);
                tokio::time::sleep(shared.retry_delay).await;
            }
        }
    }
}

/// Multicasts to the targeted members, applies here if targeted, collects.
async fn deliver(
    shared: &Shared,
    id: AssignmentId,
    hash: [u8; 32],
    targets: &[NodeId],
    tracker: &Tracker,
) -> (BTreeMap<NodeId, ServerOutcome>, Option<DeliveryStats>) {
    let path = assignment_path(&shared.assignments, id);
    let me = shared.node;
    let others: Vec<NodeId> = targets.iter().copied().filter(|t| *t != me).collect();
    let here = async {
        if !targets.contains(&me) {
            return None;
        }
        let r = shared.interpreter.send(ApplyAssignment { id: id.0, path: path.clone() }).await;
        Some(match r {
            Ok(Ok(())) => ServerOutcome::Succeeded,
            Ok(Err(error)) => ServerOutcome::Failed { error },
            Err(e) => ServerOutcome::Failed { error: format!("the content interpreter is not running: {e}") },
        })
    };
    let (own, (mut servers, delivery)) =
        tokio::join!(here, multicast(shared, id.0, hash, &path, others, tracker));
    if let Some(own) = own {
        servers.insert(me, own);
    }
    (servers, delivery)
}

async fn multicast(
    shared: &Shared,
    id: u64,
    hash: [u8; 32],
    path: &std::path::Path,
    others: Vec<NodeId>,
    tracker: &Tracker,
) -> (BTreeMap<NodeId, ServerOutcome>, Option<DeliveryStats>) {
    let mut out = BTreeMap::new();
    if others.is_empty() {
        return (out, None);
    }
    let assignment = AssignmentSerial(id);
    let (tx, rx) = oneshot::channel();
    lock(&shared.waiters).sent.insert(assignment, tx);
    let send = SendAssignment {
        assignment,
        path: path.to_owned(),
        hash,
        targets: others.clone(),
        progress: Some(tracker.mctp.clone()),
    };
    let failed_all =
        |error: String| others.iter().map(|n| (*n, ServerOutcome::Failed { error: error.clone() })).collect();
    match shared.sender.send(send).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            return (failed_all(format!("the leader cannot read its copy {}: {e}", path.display())), None)
        }
        Err(e) => return (failed_all(format!("the leader's multicast sender is not running: {e}")), None),
    }
    let Ok(sent) = rx.await else {
        return (failed_all("the multicast session was dropped".into()), None);
    };
    tracker.set(LivePhase::Applying);
    let delivery = Some(DeliveryStats {
        bytes: 0,
        frames_needed: sent.frames_needed,
        frames_sent: sent.frames_sent,
        passes: sent.passes,
    });
    let mut collect = Vec::new();
    for n in &others {
        if sent.acked.contains(n) || sent.already_had.contains(n) || sent.failed.contains(n) {
            collect.push(*n);
        } else if let Some((_, missing)) = sent.laggards.iter().find(|(l, _)| l == n) {
            let error = format!("did not receive the whole assignment: {missing} frames still missing when the leader gave up");
            out.insert(*n, ServerOutcome::Failed { error });
        } else {
            out.insert(*n, ServerOutcome::Silent);
        }
    }
    if collect.is_empty() {
        return (out, delivery);
    }
    // Members report once they have carried the assignment out, which for a
    // large release takes longer than the collector's patience: members
    // still silent are asked again, round after round, until report_timeout.
    let deadline = tokio::time::Instant::now() + shared.report_timeout;
    let mut pending = collect;
    let mut round = 0u32;
    while !pending.is_empty() {
        round += 1;
        let (tx, rx) = oneshot::channel();
        lock(&shared.waiters).collected.insert(assignment, tx);
        let asked = shared.collector.send(CollectReports { assignment, members: pending.clone() }).await;
        let Some(reports) = (match asked {
            Ok(()) => rx.await.ok(),
            Err(_) => None,
        }) else {
            break;
        };
        for n in reports.succeeded {
            out.insert(n, ServerOutcome::Succeeded);
        }
        for (n, error) in reports.failed {
            out.insert(n, ServerOutcome::Failed { error });
        }
        pending = reports.silent;
        if pending.is_empty() || tokio::time::Instant::now() >= deadline {
            break;
        }
        tracing::info!(
            event = "reports_pending", node = shared.node.0, assignment = id, round,
            waiting = %crate::protocol::ids::join(&pending), "members still applying; asking again"
        );
    }
    for n in pending {
        out.insert(n, ServerOutcome::Silent);
    }
    (out, delivery)
}

impl Actor for GroupLeader {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.run_interval(self.report_interval, |act, ctx| act.report_segment(ctx));
    }
}

impl Handler<ElectionEvent> for GroupLeader {
    type Result = ();

    fn handle(&mut self, msg: ElectionEvent, ctx: &mut Context<Self>) {
        match msg.event {
            Event::LeaderElected { leader, me, .. } => {
                self.leader = Some(leader);
                if me && !self.leading {
                    self.become_leader(ctx);
                } else if !me {
                    self.become_follower(ctx);
                }
            }
            Event::LeaderLost { .. } => {
                self.leader = None;
                self.become_follower(ctx);
            }
            Event::SegmentChanged { members } => self.segment_changed(members, ctx),
            _ => {}
        }
    }
}

impl Handler<DistributeAssignment> for GroupLeader {
    type Result = Result<(), NotLeader>;

    fn handle(&mut self, msg: DistributeAssignment, ctx: &mut Context<Self>) -> Result<(), NotLeader> {
        let n = msg.notify;
        let id = n.assignment.id;
        let node = self.shared.node;
        if !self.leading {
            tracing::info!(
                event = "notify_refused",
                node = node.0,
                assignment = id.0,
                leader = self.leader.map(|l| l.0),
                "not the leader"
            );
            return Err(NotLeader { leader: self.leader });
        }
        tracing::info!(
            event = "notified", node = node.0, assignment = id.0, run = n.run.0, from = msg.from.0, fetch_from = %n.fetch_from,
            kind = %n.assignment.kind, site = %n.assignment.site, serial = n.assignment.serial,
            size = n.assignment.size, targets = n.targets.len(), duplicate = self.jobs.contains_key(&id),
            "notified"
        );
        if self.jobs.contains_key(&id) {
            return Ok(());
        }
        let reported = self.results_reported.clone();
        let job = run_job(self.shared.clone(), n).into_actor(self).map(move |_, act, _| {
            *lock(&reported) += 1;
            act.jobs.remove(&id);
        });
        let handle = ctx.spawn(job);
        self.jobs.insert(id, handle);
        Ok(())
    }
}

impl Handler<AssignmentSent> for GroupLeader {
    type Result = ();

    fn handle(&mut self, msg: AssignmentSent, _ctx: &mut Context<Self>) {
        if let Some(tx) = lock(&self.shared.waiters).sent.remove(&msg.outcome.assignment) {
            let _ = tx.send(msg.outcome);
        }
    }
}

impl Handler<ReportsCollected> for GroupLeader {
    type Result = ();

    fn handle(&mut self, msg: ReportsCollected, _ctx: &mut Context<Self>) {
        if let Some(tx) = lock(&self.shared.waiters).collected.remove(&msg.outcome.assignment) {
            let _ = tx.send(msg.outcome);
        }
    }
}

impl Handler<GetNodeStatus> for GroupLeader {
    type Result = ResponseFuture<NodeStatus>;

    fn handle(&mut self, _msg: GetNodeStatus, _ctx: &mut Context<Self>) -> Self::Result {
        let status = self.interpreter_status.clone();
        let (id, segment, leader) = (self.shared.node, self.shared.segment.clone(), self.leader);
        let held = self.shared.state.held().into_keys().collect();
        Box::pin(async move {
            let live = status.send(GetInterpreterStatus).await.map(|s| s.live).unwrap_or_default();
            NodeStatus { id, segment, leader, live, held }
        })
    }
}

impl Handler<GetLeaderStatus> for GroupLeader {
    type Result = MessageResult<GetLeaderStatus>;

    fn handle(&mut self, _msg: GetLeaderStatus, _ctx: &mut Context<Self>) -> Self::Result {
        let mut jobs: Vec<AssignmentId> = self.jobs.keys().copied().collect();
        jobs.sort_unstable();
        MessageResult(LeaderStatus {
            leading: self.leading,
            leader: self.leader,
            members: lock(&self.shared.members).keys().copied().collect(),
            jobs,
            segment_reports: self.segment_reports,
            results_reported: *lock(&self.results_reported),
        })
    }
}
