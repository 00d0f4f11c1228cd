//! An in-process MCTP segment for tests: one leader (sender + report
//! collector) and N members on real UDP sockets, wired with actix.

#![allow(dead_code)]

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use actix::prelude::*;
use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tokio::sync::mpsc;

use cmover::actors::multicast_receiver::{AssignmentReceived, MulticastReceiver, ReportResult};
use cmover::actors::multicast_sender::{AssignmentSent, MulticastSender, SendAssignment};
use cmover::actors::report_collector::{CollectReports, ReportCollector, ReportsCollected};
use cmover::net::data_channel::{DataChannel, DataChannelConfig, DataMode};
use cmover::protocol::crypto::Sha256;
use cmover::protocol::ids::{AssignmentSerial, NodeId};
use cmover::protocol::mctp::{ReceiverConfig, SenderConfig};
use cmover::protocol::reports::CollectorConfig;

pub const SECRET: &[u8] = b"a cluster secret for the mctp tests";
pub const LEADER: NodeId = NodeId(100);

/// Forwards every message it gets into a channel, so a test can await it.
pub struct Sink<M: Message<Result = ()> + Send + 'static>(pub mpsc::UnboundedSender<M>);

impl<M: Message<Result = ()> + Send + Unpin + 'static> Actor for Sink<M> {
    type Context = Context<Self>;
}

impl<M: Message<Result = ()> + Send + Unpin + 'static> Handler<M> for Sink<M> {
    type Result = ();
    fn handle(&mut self, msg: M, _ctx: &mut Context<Self>) {
        let _ = self.0.send(msg);
    }
}

pub fn sink<M: Message<Result = ()> + Send + Unpin + 'static>() -> (Recipient<M>, mpsc::UnboundedReceiver<M>)
{
    let (tx, rx) = mpsc::unbounded_channel();
    (Sink(tx).start().recipient(), rx)
}

pub async fn recv<M>(rx: &mut mpsc::UnboundedReceiver<M>, what: &str, limit: Duration) -> M {
    tokio::time::timeout(limit, rx.recv())
        .await
        .unwrap_or_else(|_| panic!("no {what} within {limit:?}"))
        .unwrap_or_else(|| panic!("{what}: channel closed"))
}

/// Writes `size` seeded random bytes to `path` in chunks; returns the SHA-256.
pub fn write_random_file(path: &Path, size: u64, seed: u64) -> [u8; 32] {
    use std::io::Write;
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    let mut h = Sha256::default();
    let mut buf = vec![0u8; 1 << 20];
    let mut left = size;
    while left > 0 {
        let n = left.min(buf.len() as u64) as usize;
        rng.fill_bytes(&mut buf[..n]);
        f.write_all(&buf[..n]).unwrap();
        h.update(&buf[..n]);
        left -= n as u64;
    }
    f.flush().unwrap();
    h.finish()
}

/// True when two files hold the same bytes.
pub fn same_file(a: &Path, b: &Path) -> bool {
    use std::io::Read;
    let (mut fa, mut fb) = (std::fs::File::open(a).unwrap(), std::fs::File::open(b).unwrap());
    let (mut ba, mut bb) = (vec![0u8; 1 << 16], vec![0u8; 1 << 16]);
    loop {
        let na = fa.read(&mut ba).unwrap();
        let mut nb = 0;
        while nb < na {
            let k = fb.read(&mut bb[nb..na]).unwrap();
            if k == 0 {
                return false;
            }
            nb += k;
        }
        if na == 0 {
            return fb.read(&mut bb).unwrap() == 0;
        }
        if ba[..na] != bb[..na] {
            return false;
        }
    }
}

pub enum Net {
    /// Unicast fan-out on 127.0.0.1.
    Unicast,
    /// A multicast group on 127.0.0.1 (inside a network namespace).
    Multicast { group: Ipv4Addr, port: u16 },
}

pub struct Segment {
    pub leader: Addr<MulticastSender>,
    pub collector: Addr<ReportCollector>,
    pub members: Vec<(NodeId, Addr<MulticastReceiver>, PathBuf)>,
    pub member_channels: Vec<DataChannel>,
    pub leader_channel: DataChannel,
    pub sent: mpsc::UnboundedReceiver<AssignmentSent>,
    pub received: mpsc::UnboundedReceiver<AssignmentReceived>,
    pub collected: mpsc::UnboundedReceiver<ReportsCollected>,
}

pub struct SegmentConfig {
    pub members: usize,
    pub net: Net,
    /// Receive-side drop probability injected at the members' sockets.
    pub member_drop: f64,
    /// And at the leader's.
    pub leader_drop: f64,
    pub sender: SenderConfig,
    pub receiver: ReceiverConfig,
    pub reports: CollectorConfig,
    pub dir: PathBuf,
}

impl SegmentConfig {
    /// `members` members, no injected loss, 100 ms report windows, a
    /// 10 MB/s initial rate, files under `dir`.
    pub fn new(members: usize, net: Net, dir: &Path) -> Self {
        SegmentConfig {
            members,
            net,
            member_drop: 0.0,
            leader_drop: 0.0,
            sender: SenderConfig {
                rate: 10_000_000,
                report_window: Duration::from_millis(100),
                ..SenderConfig::default()
            },
            receiver: ReceiverConfig {
                report_window: Duration::from_millis(100),
                ..ReceiverConfig::default()
            },
            reports: fast_reports(),
            dir: dir.to_path_buf(),
        }
    }
}

pub fn fast_reports() -> CollectorConfig {
    CollectorConfig {
        interval: Duration::from_millis(50),
        slots: 4,
        grace: Duration::from_millis(100),
        unicast_max: 2,
        max_requests: 8,
    }
}

pub fn start_segment(cfg: SegmentConfig) -> Segment {
    let localhost: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let mode = |join| match cfg.net {
        Net::Unicast => DataMode::Unicast,
        Net::Multicast { group, port } => {
            DataMode::Multicast { group, port, interface: Ipv4Addr::LOCALHOST, join }
        }
    };
    let (received_to, received) = sink::<AssignmentReceived>();
    let mut members = Vec::new();
    let mut member_channels = Vec::new();
    let mut peers = Vec::new();
    for i in 0..cfg.members {
        let node = NodeId(i as u64 + 1);
        let (channel, incoming) = DataChannel::open(DataChannelConfig {
            node,
            secret: SECRET.to_vec(),
            bind: localhost,
            mode: mode(true),
            peers: Vec::new(),
            drop_rate: cfg.member_drop,
            drop_seed: 1000 + i as u64,
        })
        .unwrap();
        peers.push((node, channel.local_addr().unwrap()));
        let dir = cfg.dir.join(format!("member-{}", node.0));
        std::fs::create_dir_all(&dir).unwrap();
        let addr = MulticastReceiver::new(
            cfg.receiver.clone(),
            cfg.reports.clone(),
            i as u64,
            channel.clone(),
            incoming,
            dir.clone(),
            Some(received_to.clone()),
        )
        .start();
        member_channels.push(channel);
        members.push((node, addr, dir));
    }
    let (leader_channel, incoming) = DataChannel::open(DataChannelConfig {
        node: LEADER,
        secret: SECRET.to_vec(),
        bind: localhost,
        mode: mode(false),
        peers,
        drop_rate: cfg.leader_drop,
        drop_seed: 7,
    })
    .unwrap();
    let (collected_to, collected) = sink::<ReportsCollected>();
    let collector =
        ReportCollector::new(cfg.reports.clone(), leader_channel.clone(), Some(collected_to)).start();
    let (sent_to, sent) = sink::<AssignmentSent>();
    let leader = MulticastSender::new(
        cfg.sender,
        42,
        leader_channel.clone(),
        incoming,
        Some(sent_to),
        Some(collector.clone().recipient()),
    )
    .start();
    Segment { leader, collector, members, member_channels, leader_channel, sent, received, collected }
}

impl Segment {
    /// Sends `path` to every member, waits for the session's end and every
    /// member's file, checks them byte for byte, then has every member report
    /// success and collects the reports. Returns the report outcome.
    pub async fn move_and_collect(
        &mut self,
        assignment: AssignmentSerial,
        path: &Path,
        hash: [u8; 32],
        limit: Duration,
    ) -> (cmover::protocol::mctp::Outcome, cmover::protocol::reports::Outcome) {
        let targets: Vec<NodeId> = self.members.iter().map(|(n, _, _)| *n).collect();
        self.leader
            .send(SendAssignment {
                assignment,
                path: path.to_path_buf(),
                hash,
                targets: targets.clone(),
                progress: None,
            })
            .await
            .unwrap()
            .unwrap();
        let sent = recv(&mut self.sent, "AssignmentSent", limit).await.outcome;
        assert!(sent.completed, "{sent:?}");
        assert_eq!(sent.acked.len(), targets.len(), "{sent:?}");
        let mut got = Vec::new();
        while got.len() < targets.len() {
            let r = recv(&mut self.received, "AssignmentReceived", limit).await;
            assert_eq!(r.assignment, assignment);
            assert_eq!(r.from, LEADER);
            let file = r.result.unwrap_or_else(|e| panic!("a member failed: {e}"));
            assert_eq!(file.hash, hash);
            assert!(same_file(&file.path, path), "{} differs", file.path.display());
            got.push(file.path);
        }
        for (_, addr, _) in &self.members {
            addr.do_send(ReportResult { assignment, leader: LEADER, result: Ok(()) });
        }
        self.collector.do_send(CollectReports { assignment, members: targets });
        let reports = recv(&mut self.collected, "ReportsCollected", limit).await.outcome;
        (sent, reports)
    }
}
