//! The group leader's job against fakes of the actors around it (MCTP
//! sender, report collector, interpreter) and the fake CCM: it fetches,
//! asks for next hops, delivers, applies itself, asks members still
//! applying again and reports every server; it refuses notifies when not
//! leading and stops its jobs when leadership is lost.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use common::fake_ccm::FakeCcm;
use common::net::local_listener;

use cmover::actors::content_interpreter::{ApplyAssignment, GetInterpreterStatus, InterpreterStatus};
use cmover::actors::elector::ElectionEvent;
use cmover::actors::group_leader::{DistributeAssignment, GetLeaderStatus, GroupLeader, LeaderSetup};
use cmover::actors::multicast_sender::{AssignmentSent, RegisterMember, SendAssignment};
use cmover::actors::report_collector::{CollectReports, ReportsCollected};
use cmover::net::client::NodeClient;
use cmover::net::fetch::FetchOptions;
use cmover::protocol::api::{AssignmentRef, NotLeader, Notify, ServerOutcome};
use cmover::protocol::assignment::Kind;
use cmover::protocol::control::MemberInfo;
use cmover::protocol::election::Event;
use cmover::protocol::ids::{AssignmentId, NodeId, RunId};
use cmover::protocol::mctp::{self, SessionId};
use cmover::protocol::reports;
use cmover::storage::agent_state::AgentState;
use cmover::storage::assignment_file::assignment_path;

const SECRET: &[u8] = b"cluster secret for the group leader tests";
const ME: NodeId = NodeId(1);
const MEMBER: NodeId = NodeId(2);

/// Stands in for the sender, the collector and the interpreter; tells
/// the leader what the real ones would.
struct Fakes {
    leader: Option<Addr<GroupLeader>>,
    registered: Vec<(NodeId, std::net::SocketAddr)>,
    collections: u32,
    applied: Vec<u64>,
}

impl Actor for Fakes {
    type Context = Context<Self>;
}

#[derive(Message)]
#[rtype(result = "()")]
struct SetLeader(Addr<GroupLeader>);

impl Handler<SetLeader> for Fakes {
    type Result = ();
    fn handle(&mut self, msg: SetLeader, _: &mut Context<Self>) {
        self.leader = Some(msg.0);
    }
}

impl Handler<SendAssignment> for Fakes {
    type Result = std::io::Result<()>;
    fn handle(&mut self, msg: SendAssignment, _: &mut Context<Self>) -> std::io::Result<()> {
        let outcome = mctp::Outcome {
            session: SessionId(1),
            assignment: msg.assignment,
            completed: true,
            gave_up: false,
            passes: 1,
            frames_needed: 1,
            frames_sent: 1,
            acked: msg.targets,
            already_had: vec![],
            failed: vec![],
            laggards: vec![],
            silent: vec![],
        };
        self.leader.as_ref().unwrap().do_send(AssignmentSent { outcome });
        Ok(())
    }
}

impl Handler<RegisterMember> for Fakes {
    type Result = ();
    fn handle(&mut self, msg: RegisterMember, _: &mut Context<Self>) {
        self.registered.push((msg.node, msg.addr));
    }
}

impl Handler<CollectReports> for Fakes {
    type Result = ();
    /// The first round finds every member still applying; the next, done.
    fn handle(&mut self, msg: CollectReports, _: &mut Context<Self>) {
        self.collections += 1;
        let mut outcome = reports::Outcome {
            assignment: msg.assignment,
            succeeded: vec![],
            failed: vec![],
            silent: vec![],
            requests: 0,
        };
        if self.collections == 1 {
            outcome.silent = msg.members;
        } else {
            outcome.succeeded = msg.members;
        }
        self.leader.as_ref().unwrap().do_send(ReportsCollected { outcome });
    }
}

impl Handler<ApplyAssignment> for Fakes {
    type Result = Result<(), String>;
    fn handle(&mut self, msg: ApplyAssignment, _: &mut Context<Self>) -> Result<(), String> {
        self.applied.push(msg.id);
        Ok(())
    }
}

impl Handler<GetInterpreterStatus> for Fakes {
    type Result = MessageResult<GetInterpreterStatus>;
    fn handle(&mut self, _: GetInterpreterStatus, _: &mut Context<Self>) -> Self::Result {
        MessageResult(InterpreterStatus::default())
    }
}

#[derive(Message)]
#[rtype(result = "(Vec<(NodeId, std::net::SocketAddr)>, u32, Vec<u64>)")]
struct Seen;

impl Handler<Seen> for Fakes {
    type Result = MessageResult<Seen>;
    fn handle(&mut self, _: Seen, _: &mut Context<Self>) -> Self::Result {
        MessageResult((self.registered.clone(), self.collections, self.applied.clone()))
    }
}

fn start_leader(dir: &std::path::Path, ccm_url: &str) -> (Addr<GroupLeader>, Addr<Fakes>) {
    let fakes = Fakes { leader: None, registered: vec![], collections: 0, applied: vec![] }.start();
    let assignments = dir.join("assignments");
    std::fs::create_dir_all(&assignments).unwrap();
    let leader = GroupLeader::new(LeaderSetup {
        node: ME,
        segment: "east".into(),
        location: "here".into(),
        ccm_url: ccm_url.into(),
        advertise_http: "127.0.0.1:1".into(),
        assignments,
        state: Arc::new(AgentState::open(&dir.join("state")).unwrap()),
        client: NodeClient::new(SECRET, ME, Duration::from_secs(20)),
        fetch: FetchOptions { idle_timeout: Duration::from_secs(20), ..FetchOptions::default() },
        report_interval: Duration::from_secs(60),
        retry_delay: Duration::from_millis(20),
        report_timeout: Duration::from_secs(30),
        sender: fakes.clone().recipient(),
        register: fakes.clone().recipient(),
        collector: fakes.clone().recipient(),
        interpreter: fakes.clone().recipient(),
        interpreter_status: fakes.clone().recipient(),
        held: None,
    })
    .start();
    fakes.do_send(SetLeader(leader.clone()));
    (leader, fakes)
}

fn notify(id: u64, bytes: &[u8], fetch_from: &str) -> Notify {
    Notify {
        assignment: AssignmentRef {
            id: AssignmentId(id),
            site: "www".into(),
            serial: 1,
            kind: Kind::Content,
            size: bytes.len() as u64,
            sha256: hex::encode(cmover::protocol::crypto::sha256(bytes)),
        },
        fetch_from: fetch_from.into(),
        run: RunId(7),
        targets: vec![ME, MEMBER],
        rate_limit: None,
    }
}

fn elected(me: bool) -> ElectionEvent {
    ElectionEvent {
        node: ME,
        event: Event::LeaderElected { leader: if me { ME } else { MEMBER }, me, previous: None },
    }
}

#[actix_rt::test]
async fn a_job_fetches_delivers_and_asks_members_still_applying_again() {
    let dir = tempfile::tempdir().unwrap();
    let ccm = FakeCcm::start(SECRET, &dir.path().join("ccm")).await;
    let bytes = b"an assignment's bytes".repeat(100);
    std::fs::write(assignment_path(&dir.path().join("ccm"), AssignmentId(5)), &bytes).unwrap();
    let url = ccm.url.clone();
    let (leader, fakes) = start_leader(dir.path(), &url);

    let refused =
        leader.send(DistributeAssignment { from: NodeId(0), notify: notify(5, &bytes, &url) }).await;
    assert_eq!(refused.unwrap(), Err(NotLeader { leader: None }), "not leading yet");
    leader.send(elected(true)).await.unwrap();
    let info =
        |data: &str| MemberInfo { http: "h".into(), data: data.into(), name: "n".into(), serials: vec![] };
    let members = vec![(ME, info("")), (MEMBER, info("127.0.0.1:9"))];
    leader.send(ElectionEvent { node: ME, event: Event::SegmentChanged { members } }).await.unwrap();
    leader
        .send(DistributeAssignment { from: NodeId(0), notify: notify(5, &bytes, &url) })
        .await
        .unwrap()
        .unwrap();

    let result = ccm.results_of(5, 1).await.remove(0);
    assert_eq!(result.assignment, AssignmentId(5));
    assert_eq!(result.run, RunId(7));
    assert_eq!(
        result.servers,
        BTreeMap::from([(ME, ServerOutcome::Succeeded), (MEMBER, ServerOutcome::Succeeded)])
    );
    let (registered, collections, applied) = fakes.send(Seen).await.unwrap();
    assert_eq!(registered, vec![(MEMBER, "127.0.0.1:9".parse().unwrap())]);
    assert_eq!(collections, 2, "the member still applying was asked again");
    assert_eq!(applied, vec![5], "the leader applied it itself");
    assert_eq!(
        std::fs::read(assignment_path(&dir.path().join("assignments"), AssignmentId(5))).unwrap(),
        bytes
    );
    let last = ccm.state().segments.get("east").cloned().expect("a segment report");
    assert_eq!((last.segment.as_str(), last.location.as_str(), last.members.len()), ("east", "here", 2));
    assert!(last.cpus >= 1 && last.disk_free > 0, "{last:?}");
    ccm.stop().await;
}

#[actix_rt::test]
async fn losing_leadership_stops_jobs_and_refuses_notifies() {
    let dir = tempfile::tempdir().unwrap();
    // A holder that accepts connections and never answers.
    let (_silent, addr) = local_listener();
    let url = format!("http://{addr}");
    let (leader, _fakes) = start_leader(dir.path(), &url);
    leader.send(elected(true)).await.unwrap();
    leader
        .send(DistributeAssignment { from: NodeId(0), notify: notify(9, b"x", &url) })
        .await
        .unwrap()
        .unwrap();
    // A second notify for the same assignment joins the running job.
    leader
        .send(DistributeAssignment { from: NodeId(0), notify: notify(9, b"x", &url) })
        .await
        .unwrap()
        .unwrap();
    let s = leader.send(GetLeaderStatus).await.unwrap();
    assert!(s.leading);
    assert_eq!(s.jobs, vec![AssignmentId(9)]);

    leader.send(elected(false)).await.unwrap();
    let s = leader.send(GetLeaderStatus).await.unwrap();
    assert!(!s.leading && s.jobs.is_empty(), "{s:?}");
    assert_eq!(s.leader, Some(MEMBER));
    let refused = leader.send(DistributeAssignment { from: NodeId(0), notify: notify(9, b"x", &url) }).await;
    assert_eq!(refused.unwrap(), Err(NotLeader { leader: Some(MEMBER) }));
    leader.send(ElectionEvent { node: ME, event: Event::LeaderLost { leader: MEMBER } }).await.unwrap();
    let s = leader.send(GetLeaderStatus).await.unwrap();
    assert_eq!(s.leader, None);
}
