//! The group leader's report collection driver: wraps a [`Collector`] core.
//!
//! It shares the leader's data channel (a clone of the
//! [`DataChannel`] handle) for sending requests; the
//! [`MulticastSender`](super::multicast_sender::MulticastSender), which
//! reads that channel's socket, forwards report datagrams here as
//! [`ReportDatagram`] events.

use actix::clock::Instant;
use actix::prelude::*;

use crate::protocol::ids::{self, AssignmentSerial, NodeId};
use crate::protocol::reports::{Collector, CollectorConfig, Outcome};
use crate::protocol::time::Time;

use super::multicast_sender::ReportDatagram;
use super::{arm_timer, Driven, DriverTimer};
use crate::net::data_channel::DataChannel;

/// Starts collecting the members' reports on an assignment (command).
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct CollectReports {
    /// The assignment.
    pub assignment: AssignmentSerial,
    /// Members expected to report.
    pub members: Vec<NodeId>,
}

/// Every member of a collection is accounted for (event).
#[derive(Debug, Clone, Message)]
#[rtype(result = "()")]
pub struct ReportsCollected {
    /// Succeeded, failed (with errors), silent.
    pub outcome: Outcome,
}

/// The actor. See the module docs.
pub struct ReportCollector {
    core: Collector,
    channel: DataChannel,
    start: Instant,
    timer: DriverTimer,
    collected_to: Option<Recipient<ReportsCollected>>,
}

impl ReportCollector {
    /// A collector sending through `channel`.
    pub fn new(
        cfg: CollectorConfig,
        channel: DataChannel,
        collected_to: Option<Recipient<ReportsCollected>>,
    ) -> Self {
        ReportCollector {
            core: Collector::new(cfg, 0),
            channel,
            start: Instant::now(),
            timer: DriverTimer::default(),
            collected_to,
        }
    }

    fn now(&self) -> Time {
        Time::from_micros(self.start.elapsed().as_micros() as u64)
    }

    fn drive(&mut self, ctx: &mut Context<Self>) {
        while let Some((dest, msg)) = self.core.poll_transmit() {
            if let Err(e) = self.channel.send(dest, &msg.to_bytes()) {
                tracing::debug!(event = "report_request_failed", error = %e);
            }
        }
        while let Some(o) = self.core.poll_event() {
            let silent: Vec<u64> = o.silent.iter().map(|n| n.0).collect();
            let failed: Vec<u64> = o.failed.iter().map(|(n, _)| n.0).collect();
            let (failed_count, silent_count) = (failed.len(), silent.len());
            let (failed, silent) = (ids::join(&failed), ids::join(&silent));
            if failed_count + silent_count > 0 {
                tracing::warn!(
                    event = "reports_collected", assignment = o.assignment.0,
                    succeeded = o.succeeded.len(), failed_count, %failed, silent_count, %silent, requests = o.requests,
                );
            } else {
                tracing::info!(
                    event = "reports_collected",
                    assignment = o.assignment.0,
                    succeeded = o.succeeded.len(),
                    failed_count,
                    silent_count,
                    requests = o.requests,
                );
            }
            if let Some(r) = &self.collected_to {
                r.do_send(ReportsCollected { outcome: o });
            }
        }
        let now = self.now();
        let at = self.core.poll_timeout();
        arm_timer(self, ctx, now, at);
    }
}

impl Actor for ReportCollector {
    type Context = Context<Self>;
}

impl Driven for ReportCollector {
    fn timer(&mut self) -> &mut DriverTimer {
        &mut self.timer
    }

    fn fire(&mut self, ctx: &mut Context<Self>) {
        let now = self.now();
        self.core.handle_timeout(now);
        self.drive(ctx);
    }
}

impl Handler<CollectReports> for ReportCollector {
    type Result = ();

    fn handle(&mut self, msg: CollectReports, ctx: &mut Context<Self>) {
        let now = self.now();
        self.core.collect(now, msg.assignment, msg.members);
        self.drive(ctx);
    }
}

impl Handler<ReportDatagram> for ReportCollector {
    type Result = ();

    fn handle(&mut self, msg: ReportDatagram, ctx: &mut Context<Self>) {
        let now = self.now();
        self.core.handle_datagram(now, msg.from, msg.msg);
        self.drive(ctx);
    }
}
