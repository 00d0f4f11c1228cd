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
//!   as they arrive; the core keeps one bit per frame. Every announce and
//!   block names the session's [`Targets`]; a member not among them takes
//!   no part (DESIGN §4 "Only targets").
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
    frame_count, Announce, Block, Frame, Message, Selector, SessionId, Status, StatusKind, Targets,
    DEFAULT_FRAME_SIZE, FRAME_HEADER_LEN, MAX_FRAME_SIZE, MAX_TARGETS, MTU_PAYLOAD,
};
pub use receiver::{Receiver, ReceiverConfig, ReceiverEvent, MAX_FRAMES, MAX_IGNORED, MAX_LINGERING};
pub use sender::{Dest, FrameSource, Outcome, Payload, Sender, SenderConfig, SenderEvent, Transmit};

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

    fn targets(ids: &[u64]) -> Targets {
        Targets::new(ids.iter().copied().map(NodeId)).unwrap()
    }

    /// Everything a receiver was told and sent.
    fn drain(r: &mut Receiver) -> (Vec<ReceiverEvent>, Vec<(NodeId, Message)>) {
        (std::iter::from_fn(|| r.poll_event()).collect(), std::iter::from_fn(|| r.poll_transmit()).collect())
    }

    /// DESIGN §4 "Only targets": a member that an announce does not name
    /// takes no part in the session, although it hears all of it: no file,
    /// no write, no delivery, no query, no report, no state but the
    /// session's id, even when it holds the assignment already.
    #[test]
    fn only_targets_a_member_not_named_by_the_announce_takes_no_part() {
        use bytes::Bytes;
        let data: Vec<u8> = (0..5000u32).map(|i| i as u8).collect();
        let a = Announce {
            session: SessionId(5),
            assignment: AssignmentSerial(2),
            size: data.len() as u64,
            frame_size: 1000,
            frame_count: 5,
            rate: 0,
            hash: crate::protocol::crypto::sha256(&data),
            targets: targets(&[1, 2, 4]),
        };
        for holds in [false, true] {
            let mut r = Receiver::new(NodeId(3), ReceiverConfig::default(), 1);
            if holds {
                r.mark_held(a.assignment, a.hash);
            }
            let mut now = Time::ZERO;
            r.handle_datagram(now, NodeId(9), Message::Announce(a.clone()));
            for seq in 0..5 {
                let (off, len) = a.frame_range(seq);
                let payload = Bytes::copy_from_slice(&data[off as usize..off as usize + len]);
                r.handle_datagram(
                    now,
                    NodeId(9),
                    Message::Frame(Frame { session: a.session, pass: 1, seq, payload }),
                );
            }
            for poll in [Selector::All, Selector::AllExcept(vec![NodeId(1)]), Selector::Only(vec![NodeId(3)])]
            {
                r.handle_datagram(now, NodeId(9), Message::EndOfPass { session: a.session, pass: 1, poll });
            }
            r.handle_datagram(now, NodeId(9), Message::Announce(a.clone()));
            assert!(r.poll_timeout().is_none(), "no timer for a session of others");
            now += std::time::Duration::from_secs(120);
            r.handle_timeout(now);
            let (events, sent) = drain(&mut r);
            assert!(events.is_empty(), "{events:?}");
            assert!(sent.is_empty(), "{sent:?}");
            assert_eq!(r.sessions(), 0);
            assert!(r.is_ignored(a.session));
        }
        // A target that already holds the assignment still says so.
        let mut r = Receiver::new(NodeId(4), ReceiverConfig::default(), 1);
        r.mark_held(a.assignment, a.hash);
        r.handle_datagram(Time::ZERO, NodeId(9), Message::Announce(a.clone()));
        let (events, sent) = drain(&mut r);
        assert!(events.is_empty(), "{events:?}");
        assert!(
            matches!(&sent[..], [(NodeId(9), Message::Status(Status { kind: StatusKind::Complete, .. }))]),
            "{sent:?}"
        );
    }

    /// DESIGN §4 "Only targets": the tiny commit and abort assignments
    /// travel as single-datagram blocks; one that does not name a member
    /// is not delivered there, whoever it polls.
    #[test]
    fn only_targets_a_block_for_other_members_is_not_delivered() {
        use bytes::Bytes;
        let data = Bytes::from_static(b"commit header");
        let block = |session: u64, to: &[u64]| Block {
            session: SessionId(session),
            assignment: AssignmentSerial(7),
            hash: crate::protocol::crypto::sha256(&data),
            pass: 1,
            poll: Selector::All,
            targets: targets(to),
            data: data.clone(),
        };
        let mut r = Receiver::new(NodeId(3), ReceiverConfig::default(), 1);
        for pass in 1..4 {
            r.handle_datagram(Time::ZERO, NodeId(9), Message::Block(Block { pass, ..block(1, &[1, 2]) }));
        }
        let (events, sent) = drain(&mut r);
        assert!(events.is_empty() && sent.is_empty(), "{events:?} {sent:?}");
        assert_eq!(r.sessions(), 0);
        // The same member, named: delivered.
        r.handle_datagram(Time::ZERO, NodeId(9), Message::Block(block(2, &[1, 3])));
        let (events, _) = drain(&mut r);
        assert!(events.iter().any(|e| matches!(e, ReceiverEvent::Completed { .. })), "{events:?}");
    }

    /// DESIGN §4 "Only targets": the memory of ignored sessions is bounded
    /// however many sessions of others a segment carries, and a frame of one
    /// of the newest costs a lookup, not a query.
    #[test]
    fn only_targets_ignored_sessions_are_remembered_within_a_bound() {
        use bytes::Bytes;
        let mut r = Receiver::new(NodeId(3), ReceiverConfig::default(), 1);
        for i in 0..10_000u64 {
            let a = Announce {
                session: SessionId(i),
                assignment: AssignmentSerial(i),
                size: 10,
                frame_size: 10,
                frame_count: 1,
                rate: 0,
                hash: [0; 32],
                targets: targets(&[1, 2]),
            };
            r.handle_datagram(Time::ZERO, NodeId(9), Message::Announce(a));
            let payload = Bytes::from_static(b"0123456789");
            r.handle_datagram(
                Time::ZERO,
                NodeId(9),
                Message::Frame(Frame { session: SessionId(i), pass: 1, seq: 0, payload }),
            );
        }
        let (events, sent) = drain(&mut r);
        assert!(events.is_empty() && sent.is_empty(), "{events:?} {sent:?}");
        assert_eq!(r.sessions(), 0);
        assert!(r.ignored_sessions() <= MAX_IGNORED, "{} remembered", r.ignored_sessions());
        assert!(r.is_ignored(SessionId(9_999)) && !r.is_ignored(SessionId(0)));
    }

    /// DESIGN §4 "Only targets": the sender names its targets in every
    /// announce and block, and a report from anyone else counts for nothing.
    #[test]
    fn only_targets_are_named_by_the_sender_and_counted() {
        for size in [100u64, 50_000] {
            let cfg = SenderConfig { report_retries: 1, silent_passes: 1, ..SenderConfig::default() };
            let mut s = Sender::new(cfg, 3);
            let mut now = Time::ZERO;
            s.send_assignment(now, AssignmentSerial(1), size, [0; 32], vec![NodeId(2), NodeId(1), NodeId(2)]);
            let mut named = 0;
            let outcome = 'run: loop {
                while let Some(t) = s.poll_transmit(now) {
                    let (session, pass, list) = match &t.payload {
                        Payload::Message(Message::Announce(a)) => (a.session, 0, Some(a.targets.clone())),
                        Payload::Block { block, .. } => {
                            (block.session, block.pass, Some(block.targets.clone()))
                        }
                        Payload::Message(Message::EndOfPass { session, pass, .. }) => (*session, *pass, None),
                        _ => continue,
                    };
                    if let Some(list) = list {
                        assert_eq!(list.as_slice(), [NodeId(1), NodeId(2)]);
                        named += 1;
                    }
                    let frames = frame_count(size, 1403).unwrap();
                    for (n, kind) in [(3, StatusKind::Ack), (4, StatusKind::Complete), (1, StatusKind::Ack)] {
                        let st = Status { session, pass, kind, lo: 0, hi: frames, missing: vec![] };
                        s.handle_datagram(now, NodeId(n), Message::Status(st));
                    }
                }
                while let Some(e) = s.poll_event() {
                    if let SenderEvent::Finished(o) = e {
                        break 'run o;
                    }
                }
                now = s.poll_timeout().expect("a timer while a session runs");
                s.handle_timeout(now);
            };
            assert!(named > 0);
            assert_eq!(outcome.acked, [NodeId(1)], "{outcome:?}");
            assert!(outcome.already_had.is_empty(), "{outcome:?}");
            assert_eq!(outcome.silent, [NodeId(2)], "{outcome:?}");
            assert!(!outcome.completed, "3 and 4 do not make up for 2: {outcome:?}");
        }
        // More targets than can be named: nothing is sent, every one failed.
        let mut s = Sender::new(SenderConfig::default(), 3);
        let many: Vec<NodeId> = (0..=MAX_TARGETS as u64).map(NodeId).collect();
        s.send_assignment(Time::ZERO, AssignmentSerial(1), 100, [0; 32], many);
        assert!(s.poll_transmit(Time::ZERO).is_none());
        let o = std::iter::from_fn(|| s.poll_event())
            .find_map(|e| match e {
                SenderEvent::Finished(o) => Some(o),
                _ => None,
            })
            .unwrap();
        assert_eq!(o.failed.len(), MAX_TARGETS + 1);
        assert!(!o.completed && o.gave_up);
    }

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
                    Payload::Message(Message::EndOfPass { pass, poll, session }) => {
                        (pass, poll, session, frame_count(size, 1403).unwrap())
                    }
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

    proptest::proptest! {
        /// Authenticated peers can still be buggy: no message, however odd,
        /// makes a core panic.
        #[test]
        fn cores_survive_arbitrary_messages(ops in proptest::collection::vec(
            (0u8..6, proptest::num::u64::ANY, proptest::num::u32::ANY, proptest::num::u32::ANY,
             proptest::num::u32::ANY, proptest::collection::vec(proptest::num::u8::ANY, 0..40)),
            0..80,
        )) {
            use bytes::Bytes;
            let mut s = Sender::new(SenderConfig::default(), 1);
            let mut now = Time::ZERO;
            s.send_assignment(now, AssignmentSerial(1), 50_000, [0; 32], vec![NodeId(1), NodeId(2)]);
            let session = s.poll_announce().unwrap().session;
            let mut r = Receiver::new(NodeId(1), ReceiverConfig::default(), 1);
            let kinds = [StatusKind::Nack, StatusKind::Ack, StatusKind::Complete, StatusKind::Failed];
            for (kind, a, b, c, d, bytes) in ops {
                now += std::time::Duration::from_millis(u64::from(d % 500));
                let sess = if a % 2 == 0 { session } else { SessionId(a) };
                let msg = match kind {
                    0 => Message::Announce(Announce {
                        session: sess,
                        assignment: AssignmentSerial(a % 3),
                        size: u64::from(b % 100_000),
                        frame_size: c % 2000,
                        frame_count: d % 100,
                        rate: 0,
                        hash: [0; 32],
                        targets: targets(if c % 3 == 0 { &[2] } else { &[1, 2] }),
                    }),
                    1 => Message::Frame(Frame { session: sess, pass: b, seq: c % 50, payload: Bytes::from(bytes) }),
                    2 => Message::EndOfPass { session: sess, pass: b % 4, poll: Selector::All },
                    3 => Message::Status(Status {
                        session: sess,
                        pass: b % 4,
                        kind: kinds[(c % 4) as usize],
                        lo: c % 64,
                        hi: d % 64,
                        missing: vec![(c % 64, d % 64), (d, c)],
                    }),
                    4 => Message::Block(Block {
                        session: sess,
                        assignment: AssignmentSerial(a % 3),
                        hash: [0; 32],
                        pass: b,
                        poll: Selector::Only(vec![NodeId(1)]),
                        targets: targets(if c % 3 == 1 { &[3] } else { &[1] }),
                        data: Bytes::from(bytes),
                    }),
                    _ => Message::Query { session: sess },
                };
                s.handle_datagram(now, NodeId(1 + a % 3), msg.clone());
                r.handle_datagram(now, NodeId(9), msg);
                if s.poll_timeout().is_some_and(|t| t <= now) {
                    s.handle_timeout(now);
                }
                if r.poll_timeout().is_some_and(|t| t <= now) {
                    r.handle_timeout(now);
                }
                while s.poll_transmit(now).is_some() {}
                while s.poll_event().is_some() {}
                while r.poll_transmit().is_some() {}
                while let Some(e) = r.poll_event() {
                    if let ReceiverEvent::Verify { session, .. } = e {
                        r.handle_verified(now, session, [0; 32]);
                    }
                }
            }
        }
    }

    /// Single-datagram blocks, each its own session, finish at once and
    /// linger for late polls; a flood of them keeps a bounded map.
    #[test]
    fn finished_sessions_are_bounded_whatever_the_senders_rate() {
        use bytes::Bytes;
        let mut r = Receiver::new(NodeId(1), ReceiverConfig::default(), 3);
        let data = Bytes::from_static(b"small assignment");
        let now = Time::ZERO;
        for i in 0..5_000u64 {
            let hash = if i % 2 == 0 { crate::protocol::crypto::sha256(&data) } else { [0; 32] };
            let block = Block {
                session: SessionId(i),
                assignment: AssignmentSerial(i),
                hash,
                pass: 1,
                poll: Selector::All,
                targets: targets(&[1]),
                data: data.clone(),
            };
            r.handle_datagram(now, NodeId(9), Message::Block(block));
            while let Some(e) = r.poll_event() {
                if let ReceiverEvent::Verify { session, hasher, .. } = e {
                    r.handle_verified(now, session, hasher.finish());
                }
            }
            while r.poll_transmit().is_some() {}
        }
        let n = r.sessions();
        assert!(n <= ReceiverConfig::default().max_sessions + MAX_LINGERING, "{n} sessions kept");
        // The newest finished sessions are still there to answer a poll.
        assert!(r.has_session(SessionId(4_999)) && r.has_session(SessionId(4_998)));
        assert!(!r.has_session(SessionId(0)));
    }

    /// A member checking the hash of a large file answers polls with
    /// "nothing missing" (so it is not taken for silent), then acknowledges.
    #[test]
    fn a_verifying_member_answers_polls_then_acknowledges() {
        use bytes::Bytes;
        let data: Vec<u8> = (0..5000u32).map(|i| i as u8).collect();
        let a = Announce {
            session: SessionId(5),
            assignment: AssignmentSerial(2),
            size: data.len() as u64,
            frame_size: 1000,
            frame_count: 5,
            rate: 0,
            hash: crate::protocol::crypto::sha256(&data),
            targets: targets(&[1, 2]),
        };
        let cfg = ReceiverConfig::default();
        let mut r = Receiver::new(NodeId(1), cfg.clone(), 3);
        let mut now = Time::ZERO;
        r.handle_datagram(now, NodeId(9), Message::Announce(a.clone()));
        // Out of order: the in-order hash stops after frame 1.
        for seq in [0, 2, 1, 4, 3] {
            let (off, len) = a.frame_range(seq);
            let payload = Bytes::copy_from_slice(&data[off as usize..off as usize + len]);
            r.handle_datagram(
                now,
                NodeId(9),
                Message::Frame(Frame { session: a.session, pass: 1, seq, payload }),
            );
        }
        let verify = std::iter::from_fn(|| r.poll_event())
            .find_map(|e| match e {
                ReceiverEvent::Verify { from, hasher, .. } => Some((from, hasher)),
                _ => None,
            })
            .expect("a read-back is asked for");
        assert_eq!(verify.0, 2000, "frames 0 and 1 were hashed as they came");
        let poll = |r: &mut Receiver, now: &mut Time| {
            r.handle_datagram(
                *now,
                NodeId(9),
                Message::EndOfPass { session: a.session, pass: 1, poll: Selector::All },
            );
            *now = r.poll_timeout().unwrap();
            r.handle_timeout(*now);
            std::iter::from_fn(|| r.poll_transmit()).collect::<Vec<_>>()
        };
        let sent = poll(&mut r, &mut now);
        assert!(
            matches!(&sent[..], [(NodeId(9), Message::Status(Status { kind: StatusKind::Nack, missing, .. }))] if missing.is_empty()),
            "{sent:?}"
        );
        let mut hasher = verify.1;
        hasher.update(&data[2000..]);
        r.handle_verified(now, a.session, hasher.finish());
        assert!(std::iter::from_fn(|| r.poll_event()).any(|e| matches!(e, ReceiverEvent::Completed { .. })));
        now = r.poll_timeout().unwrap();
        r.handle_timeout(now);
        let sent: Vec<_> = std::iter::from_fn(|| r.poll_transmit()).collect();
        assert!(
            matches!(&sent[..], [(_, Message::Status(Status { kind: StatusKind::Ack, .. }))]),
            "{sent:?}"
        );
    }

    fn status(pass: u32, kind: StatusKind, n: u32, missing: Vec<(u32, u32)>) -> Status {
        Status { session: SessionId(0), pass, kind, lo: 0, hi: n, missing }
    }

    /// Patent: "When the number of lost frames does not decrease after a
    /// configurable number of tries (e.g., ten tries) ... the GL reports a
    /// problem", naming the servers.
    #[test]
    fn no_progress_for_n_passes_gives_up_naming_the_laggard() {
        let cfg = SenderConfig { stall_passes: 4, ..SenderConfig::default() };
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
        let cfg =
            SenderConfig { report_retries: 2, silent_passes: 2, quorum: 0.5, ..SenderConfig::default() };
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
        assert!(rates.iter().all(|&r| r >= cfg.rate_min && r <= cfg.rate_max));
    }

    #[test]
    fn ideal_ratio_matches_known_values() {
        assert_eq!(ideal_arq_ratio(32, 0.0), 1.0);
        assert!((ideal_arq_ratio(1, 0.5) - 2.0).abs() < 1e-9, "geometric: 1/(1-p)");
        let r = ideal_arq_ratio(32, 0.05);
        assert!((1.85..1.90).contains(&r), "{r}");
    }
}
