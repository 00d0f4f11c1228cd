//! Actix actors: thin drivers that give the sans-IO cores of `protocol`
//! sockets, files, timers and each other.
//!
//! Each actor holds its core, its I/O handles, the `Recipient`s it reports
//! to and one timer; every handler ends with a private `drive` that drains
//! the core's transmits and events and re-arms the timer from the core's
//! `poll_timeout`. One actor per file.

#![warn(missing_docs)]

pub mod assignment_creator;
pub mod ccm;
pub mod content_interpreter;
pub mod elector;
pub mod group_leader;
pub mod multicast_receiver;
pub mod multicast_sender;
pub mod report_collector;
pub mod scheduler;
pub mod tree_planner;

use actix::{Actor, AsyncContext, Context, SpawnHandle};

use crate::protocol::time::Time;

/// The one timer of a driver actor, armed for the core's earliest deadline.
#[derive(Debug, Default)]
pub(crate) struct DriverTimer(Option<(SpawnHandle, Time)>);

/// An actor driving a sans-IO core with one [`DriverTimer`].
pub(crate) trait Driven: Actor<Context = Context<Self>> {
    /// The actor's timer.
    fn timer(&mut self) -> &mut DriverTimer;
    /// The timer fired: feed the core the time and drive it.
    fn fire(&mut self, ctx: &mut Context<Self>);
}

/// Arms `act`'s timer for `at` (the core's `poll_timeout`). A timer already
/// armed for an earlier time is kept: firing early is harmless (the core
/// finds nothing due and is asked again), and re-arming on every datagram
/// when a deadline only moves later would cost more than it saves.
pub(crate) fn arm_timer<A: Driven>(act: &mut A, ctx: &mut Context<A>, now: Time, at: Option<Time>) {
    let Some(at) = at else {
        if let Some((h, _)) = act.timer().0.take() {
            ctx.cancel_future(h);
        }
        return;
    };
    if act.timer().0.as_ref().is_some_and(|(_, armed)| *armed <= at) {
        return;
    }
    if let Some((h, _)) = act.timer().0.take() {
        ctx.cancel_future(h);
    }
    let h = ctx.run_later(at.saturating_since(now), |act: &mut A, ctx| {
        act.timer().0 = None;
        act.fire(ctx);
    });
    act.timer().0 = Some((h, at));
}
