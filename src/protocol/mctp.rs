//! MCTP, the Multicast Content Transport Protocol: moves an assignment from
//! a group leader to every member of its LAN segment, sending each frame
//! once where possible and only the missing frames again (DESIGN.md §6,
//! the patent's "local distribution").
//!
//! - [`msg`]: the messages and their strict codec.
//! - [`Sender`]: the group leader's side. Small assignments go in one
//!   datagram ([`Block`]); larger ones get a session: an [`Announce`], then
//!   passes of frames paced by a token bucket, each pass ended by a poll to
//!   which members report after a random delay; the next pass sends the
//!   union of the frames reported missing (NACK aggregation). The rate
//!   follows the NACK volume (AIMD).
//! - [`Receiver`]: a member's side. Frames go straight to the driver's file
//!   as they arrive; the core keeps one bit per frame.
//! - [`ideal_arq_ratio`]: what a perfect NACK-aggregating ARQ would cost, the
//!   yardstick of the simulation.
//!
//! Both cores are sans-IO in the quinn style: time comes in as `now`, output
//! is drained with `poll_transmit`, `poll_event` and `poll_timeout`.

mod frameset;
pub mod msg;
mod receiver;
mod sender;

pub use frameset::{FrameSet, Runs};
pub use msg::{
    frame_count, Announce, Block, Frame, Message, Selector, SessionId, Status, StatusKind,
    DEFAULT_FRAME_SIZE, FRAME_HEADER_LEN, MAX_FRAME_SIZE, MTU_PAYLOAD,
};
pub use receiver::{Receiver, ReceiverConfig, ReceiverEvent};
pub use sender::{
    Dest, FrameSource, Outcome, Payload, Sender, SenderConfig, SenderEvent, Transmit,
};

/// The expected number of transmissions of one frame by a perfect
/// NACK-aggregating ARQ to `n` receivers that each lose a datagram
/// independently with probability `p`:
/// `E[T] = Σ_{k≥0} (1 − (1 − p^k)^n)`, the `k = 0` term being 1 (a frame is
/// sent a `k+1`-th time exactly when some receiver lost all `k` copies).
/// Terms below 1e-12 end the sum.
pub fn ideal_arq_ratio(n: u32, p: f64) -> f64 {
    if n == 0 {
        return 0.0;
    }
    let p = p.clamp(0.0, 0.999_999);
    let mut total = 1.0;
    let mut pk = p;
    for _ in 1..100_000 {
        let term = 1.0 - (1.0 - pk).powi(n as i32);
        if term < 1e-12 {
            break;
        }
        total += term;
        pk *= p;
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::ids::{AssignmentSerial, NodeId};
    use crate::protocol::time::Time;

    /// Runs a sender against scripted members: `answer(pass, node)` gives
    /// each polled member's report (None: silent). Returns the outcome and
    /// the pass-end events.
    fn drive(
        cfg: SenderConfig,
        size: u64,
        targets: &[u64],
        answer: impl Fn(u32, NodeId, u32) -> Option<Status>,
    ) -> (Outcome, Vec<SenderEvent>) {
        let mut s = Sender::new(cfg, 7);
        let mut now = Time::ZERO;
        let ids: Vec<NodeId> = targets.iter().map(|&i| NodeId(i)).collect();
        s.send_assignment(now, AssignmentSerial(1), size, [0; 32], ids.clone());
        let mut events = Vec::new();
        for _ in 0..1_000_000 {
            while let Some(t) = s.poll_transmit(now) {
                let (pass, poll, session, frames) = match t.payload {
                    Payload::Message(Message::EndOfPass {
                        pass,
                        poll,
                        session,
                    }) => (pass, poll, session, frame_count(size, 1403).unwrap()),
                    _ => continue,
                };
                for &id in &ids {
                    if poll.selects(id) {
                        if let Some(mut st) = answer(pass, id, frames) {
                            st.session = session;
                            s.handle_datagram(now, id, Message::Status(st));
                        }
                    }
                }
            }
            while let Some(e) = s.poll_event() {
                if let SenderEvent::Finished(o) = e {
                    return (o, events);
                }
                events.push(e);
            }
            now = s.poll_timeout().expect("a timer while a session runs");
            s.handle_timeout(now);
        }
        panic!("no outcome");
    }

    fn status(pass: u32, kind: StatusKind, n: u32, missing: Vec<(u32, u32)>) -> Status {
        Status {
            session: SessionId(0),
            pass,
            kind,
            lo: 0,
            hi: n,
            missing,
        }
    }

    /// Patent: "When the number of lost frames does not decrease after a
    /// configurable number of tries (e.g., ten tries) ... the GL reports a
    /// problem", naming the servers.
    #[test]
    fn no_progress_for_n_passes_gives_up_naming_the_laggard() {
        let cfg = SenderConfig {
            stall_passes: 4,
            ..SenderConfig::default()
        };
        let (o, events) = drive(cfg, 100_000, &[1, 2], |pass, id, n| {
            Some(if id == NodeId(1) {
                status(pass, StatusKind::Ack, n, vec![])
            } else {
                status(pass, StatusKind::Nack, n, vec![(0, 5)])
            })
        });
        assert!(o.gave_up);
        assert!(!o.completed);
        assert_eq!(o.acked, [NodeId(1)]);
        assert_eq!(o.laggards, [(NodeId(2), 5)]);
        // Pass 1 sends everything, later passes only the 5 missing frames.
        let sent: Vec<u32> = events
            .iter()
            .filter_map(|e| match e {
                SenderEvent::PassEnded { sent, .. } => Some(*sent),
                _ => None,
            })
            .collect();
        assert_eq!(sent[0], 72);
        assert!(sent[1..].iter().all(|&n| n == 5), "{sent:?}");
        assert_eq!(o.passes, 1 + 4);
    }

    #[test]
    fn a_silent_member_is_polled_again_then_left_out_and_named() {
        let cfg = SenderConfig {
            report_retries: 2,
            silent_passes: 2,
            quorum: 0.5,
            ..SenderConfig::default()
        };
        let (o, _) = drive(cfg, 50_000, &[1, 2], |pass, id, n| {
            (id == NodeId(1)).then(|| status(pass, StatusKind::Ack, n, vec![]))
        });
        assert!(o.completed);
        assert!(!o.gave_up);
        assert_eq!(o.silent, [NodeId(2)]);
    }

    #[test]
    fn the_rate_falls_on_heavy_loss_and_grows_on_light_loss() {
        let cfg = SenderConfig::default();
        let start = cfg.rate;
        let (_, events) = drive(cfg.clone(), 1_000_000, &[1], |pass, _, n| {
            Some(match pass {
                1 => status(pass, StatusKind::Nack, n, vec![(0, n / 2)]),
                2 => status(pass, StatusKind::Nack, n, vec![(0, 1)]),
                _ => status(pass, StatusKind::Ack, n, vec![]),
            })
        });
        let rates: Vec<u64> = events
            .iter()
            .filter_map(|e| match e {
                SenderEvent::PassEnded { rate, .. } => Some(*rate),
                _ => None,
            })
            .collect();
        assert_eq!(rates[0], (start as f64 * cfg.rate_decrease) as u64);
        assert_eq!(rates[1], rates[0] + cfg.rate_increase);
        assert!(rates
            .iter()
            .all(|&r| r >= cfg.rate_min && r <= cfg.rate_max));
    }

    #[test]
    fn ideal_ratio_matches_known_values() {
        assert_eq!(ideal_arq_ratio(32, 0.0), 1.0);
        assert!(
            (ideal_arq_ratio(1, 0.5) - 2.0).abs() < 1e-9,
            "geometric: 1/(1-p)"
        );
        let r = ideal_arq_ratio(32, 0.05);
        assert!((1.85..1.90).contains(&r), "{r}");
    }
}
