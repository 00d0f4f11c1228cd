//! Collection of job status reports in a segment, without report implosion.
//!
//! After applying an assignment every member reports its result to the
//! group leader at a random multiple of an interval, so that a segment of
//! hundreds of servers does not answer in the same instant (the patent's
//! "report implosion"). The leader's [`Collector`] waits out the spread,
//! then asks again for what is missing: by unicast when few are missing,
//! otherwise by one multicast request that carries the shorter of the two
//! lists, the missing or the received. It repeats until everyone has
//! reported or `max_requests` requests were made, and then names every
//! member: succeeded, failed (with its error), or silent.
//!
//! Only targets (DESIGN §4): the leader collects from the assignment's
//! targets only, and counts only their reports. A multicast request reaches
//! the whole segment; "all but these" means all the *targets* but these: a
//! member that is not one holds no result for the assignment (it never
//! received it) and so never answers.
//!
//! ```text
//! Report   16 | assignment u64 | ok u8 | error (u16 length, UTF-8, ≤ 512)
//! Request  17 | assignment u64 | selector (see mctp::msg)
//! ```
//!
//! Both cores are sans-IO: `handle_*` in, `poll_*` out, time as `now`.

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use bytes::{BufMut, Bytes};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::bytes::{DecodeError, Reader};
use super::ids::{AssignmentSerial, NodeId};
use super::mctp::{Dest, Selector};
use super::time::Time;

/// Longest error text carried in a report.
pub const MAX_ERROR_LEN: usize = 512;

const TAG_REPORT: u8 = 16;
const TAG_REQUEST: u8 = 17;

/// True when a data-channel payload starting with `tag` is a report message.
pub fn is_report_tag(tag: u8) -> bool {
    tag == TAG_REPORT || tag == TAG_REQUEST
}

/// Settings of report collection (both sides). `config.rs` builds it from `[reports]`.
#[derive(Debug, Clone, PartialEq)]
pub struct CollectorConfig {
    /// The unit of the random report delay.
    pub interval: Duration,
    /// A member reports after `k × interval`, `k` uniform in `0..slots`.
    pub slots: u32,
    /// Extra wait for the last reports to arrive.
    pub grace: Duration,
    /// Up to this many missing reports are requested one by one by unicast;
    /// more, and one multicast request goes out.
    pub unicast_max: usize,
    /// Requests (rounds) before the silent members are given up.
    pub max_requests: u32,
}

impl Default for CollectorConfig {
    fn default() -> Self {
        CollectorConfig {
            interval: Duration::from_millis(500),
            slots: 4,
            grace: Duration::from_millis(200),
            unicast_max: 4,
            max_requests: 10,
        }
    }
}

/// Report collection messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// A member's result for an assignment.
    Report {
        /// The assignment.
        assignment: AssignmentSerial,
        /// `Ok`, or the error, at most [`MAX_ERROR_LEN`] bytes.
        result: Result<(), String>,
    },
    /// The leader asks the selected members to report (again).
    Request {
        /// The assignment.
        assignment: AssignmentSerial,
        /// Who.
        who: Selector,
    },
}

impl Message {
    /// Appends the encoding.
    pub fn encode(&self, out: &mut impl BufMut) {
        match self {
            Message::Report { assignment, result } => {
                out.put_u8(TAG_REPORT);
                out.put_u64_le(assignment.0);
                match result {
                    Ok(()) => {
                        out.put_u8(1);
                        out.put_u16_le(0);
                    }
                    Err(e) => {
                        out.put_u8(0);
                        let e = truncate(e, MAX_ERROR_LEN);
                        out.put_u16_le(e.len() as u16);
                        out.put_slice(e.as_bytes());
                    }
                }
            }
            Message::Request { assignment, who } => {
                out.put_u8(TAG_REQUEST);
                out.put_u64_le(assignment.0);
                who.encode(out);
            }
        }
    }

    /// The encoding as bytes.
    pub fn to_bytes(&self) -> Bytes {
        let mut v = Vec::new();
        self.encode(&mut v);
        Bytes::from(v)
    }

    /// Decodes a whole datagram payload.
    pub fn decode(buf: &[u8]) -> Result<Message, DecodeError> {
        let mut r = Reader::new(buf);
        let tag = r.u8("report tag")?;
        let assignment = AssignmentSerial(r.u64("assignment")?);
        let msg = match tag {
            TAG_REPORT => {
                let ok = r.u8("report ok")?;
                let error = r.str_u16("report error", MAX_ERROR_LEN)?;
                let result = match ok {
                    1 if error.is_empty() => Ok(()),
                    0 => Err(error.to_string()),
                    v => return Err(DecodeError::Invalid { what: "report ok", value: u64::from(v) }),
                };
                Message::Report { assignment, result }
            }
            TAG_REQUEST => Message::Request { assignment, who: Selector::decode(&mut r)? },
            v => return Err(DecodeError::Invalid { what: "report tag", value: u64::from(v) }),
        };
        r.finish("report message")?;
        Ok(msg)
    }
}

fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// The leader's account of one assignment's reports: every member named once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// The assignment.
    pub assignment: AssignmentSerial,
    /// Members that reported success.
    pub succeeded: Vec<NodeId>,
    /// Members that reported failure, with their error.
    pub failed: Vec<(NodeId, String)>,
    /// Members never heard from.
    pub silent: Vec<NodeId>,
    /// Requests made after the first spread.
    pub requests: u32,
}

#[derive(Debug)]
struct Collection {
    members: BTreeMap<NodeId, Option<Result<(), String>>>,
    deadline: Time,
    requests: u32,
}

/// Reports kept for collections not started yet, at most.
const EARLY_MAX: usize = 4096;

/// The group leader's report collector (sans-IO).
///
/// Call order: [`Collector::collect`] when the assignment has been handed
/// out; feed [`Collector::handle_datagram`] and [`Collector::handle_timeout`];
/// drain [`Collector::poll_transmit`] and [`Collector::poll_event`]; re-arm
/// the timer from [`Collector::poll_timeout`].
#[derive(Debug)]
pub struct Collector {
    cfg: CollectorConfig,
    collections: BTreeMap<AssignmentSerial, Collection>,
    /// Reports that arrived before their collection started (a member that
    /// applied quickly reports while the leader still waits for the
    /// transfer's acknowledgements), kept for [`Collector::collect`].
    early: BTreeMap<AssignmentSerial, BTreeMap<NodeId, Result<(), String>>>,
    transmits: VecDeque<(Dest, Message)>,
    events: VecDeque<Outcome>,
}

impl Collector {
    /// A collector. (`seed` is accepted for symmetry; the collector draws nothing random.)
    pub fn new(cfg: CollectorConfig, _seed: u64) -> Self {
        Collector {
            cfg,
            collections: BTreeMap::new(),
            early: BTreeMap::new(),
            transmits: VecDeque::new(),
            events: VecDeque::new(),
        }
    }

    /// Starts waiting for `members`' reports on `assignment`.
    pub fn collect(&mut self, now: Time, assignment: AssignmentSerial, members: Vec<NodeId>) {
        let spread = self.cfg.interval * self.cfg.slots.max(1);
        let mut early = self.early.remove(&assignment).unwrap_or_default();
        self.collections.insert(
            assignment,
            Collection {
                members: members.into_iter().map(|m| (m, early.remove(&m))).collect(),
                deadline: now + spread + self.cfg.grace,
                requests: 0,
            },
        );
        self.finish_if_done(assignment);
    }

    /// Feeds a datagram from `from`.
    pub fn handle_datagram(&mut self, _now: Time, from: NodeId, msg: Message) {
        let Message::Report { assignment, result } = msg else {
            return;
        };
        let Some(c) = self.collections.get_mut(&assignment) else {
            // Kept for a collection that may start soon; bounded, oldest
            // assignments dropped first.
            self.early.entry(assignment).or_default().insert(from, result);
            while self.early.values().map(BTreeMap::len).sum::<usize>() > EARLY_MAX {
                self.early.pop_first();
            }
            return;
        };
        if let Some(slot) = c.members.get_mut(&from) {
            *slot = Some(result);
        }
        self.finish_if_done(assignment);
    }

    fn finish_if_done(&mut self, assignment: AssignmentSerial) {
        let done = self.collections.get(&assignment).is_some_and(|c| c.members.values().all(Option::is_some));
        if done {
            self.finish(assignment);
        }
    }

    fn finish(&mut self, assignment: AssignmentSerial) {
        let Some(c) = self.collections.remove(&assignment) else {
            return;
        };
        let mut o = Outcome {
            assignment,
            succeeded: Vec::new(),
            failed: Vec::new(),
            silent: Vec::new(),
            requests: c.requests,
        };
        for (id, r) in c.members {
            match r {
                Some(Ok(())) => o.succeeded.push(id),
                Some(Err(e)) => o.failed.push((id, e)),
                None => o.silent.push(id),
            }
        }
        self.events.push_back(o);
    }

    /// Feeds the passing of time.
    pub fn handle_timeout(&mut self, now: Time) {
        let due: Vec<AssignmentSerial> =
            self.collections.iter().filter(|(_, c)| c.deadline <= now).map(|(&a, _)| a).collect();
        for assignment in due {
            let Some(c) = self.collections.get_mut(&assignment) else {
                continue;
            };
            if c.requests >= self.cfg.max_requests {
                self.finish(assignment);
                continue;
            }
            c.requests += 1;
            c.deadline = now + self.cfg.interval + self.cfg.grace;
            let (missing, received): (Vec<NodeId>, Vec<NodeId>) = {
                let (m, r): (Vec<_>, Vec<_>) = c.members.iter().partition(|(_, r)| r.is_none());
                (m.into_iter().map(|(&id, _)| id).collect(), r.into_iter().map(|(&id, _)| id).collect())
            };
            if missing.len() <= self.cfg.unicast_max {
                for id in missing {
                    self.transmits.push_back((
                        Dest::Node(id),
                        Message::Request { assignment, who: Selector::Only(vec![id]) },
                    ));
                }
            } else {
                for who in Selector::for_lists(&missing, &received) {
                    self.transmits.push_back((Dest::Group, Message::Request { assignment, who }));
                }
            }
        }
    }

    /// The next datagram to send.
    pub fn poll_transmit(&mut self) -> Option<(Dest, Message)> {
        self.transmits.pop_front()
    }

    /// The next finished collection.
    pub fn poll_event(&mut self) -> Option<Outcome> {
        self.events.pop_front()
    }

    /// When [`Collector::handle_timeout`] should next be called.
    pub fn poll_timeout(&self) -> Option<Time> {
        self.collections.values().map(|c| c.deadline).min()
    }
}

#[derive(Debug)]
struct Pending {
    leader: NodeId,
    result: Result<(), String>,
    due: Option<Time>,
}

/// A member's side of report collection (sans-IO).
///
/// Call [`Reporter::report`] once the assignment is applied; feed requests
/// through [`Reporter::handle_datagram`] and time through
/// [`Reporter::handle_timeout`]; drain [`Reporter::poll_transmit`]; re-arm
/// from [`Reporter::poll_timeout`].
#[derive(Debug)]
pub struct Reporter {
    node: NodeId,
    cfg: CollectorConfig,
    rng: ChaCha8Rng,
    results: BTreeMap<AssignmentSerial, Pending>,
    transmits: VecDeque<(NodeId, Message)>,
}

/// Results remembered to answer requests.
const KEEP_RESULTS: usize = 64;

impl Reporter {
    /// The reporter of member `node`; `seed` drives the random delays.
    pub fn new(node: NodeId, cfg: CollectorConfig, seed: u64) -> Self {
        Reporter {
            node,
            cfg,
            rng: ChaCha8Rng::seed_from_u64(seed),
            results: BTreeMap::new(),
            transmits: VecDeque::new(),
        }
    }

    /// Records this member's result on `assignment`, to be reported to
    /// `leader` at a random multiple of the interval.
    pub fn report(
        &mut self,
        now: Time,
        leader: NodeId,
        assignment: AssignmentSerial,
        result: Result<(), String>,
    ) {
        let k = self.rng.random_range(0..self.cfg.slots.max(1));
        if self.results.len() >= KEEP_RESULTS {
            if let Some(&oldest) = self.results.keys().next() {
                self.results.remove(&oldest);
            }
        }
        self.results.insert(assignment, Pending { leader, result, due: Some(now + self.cfg.interval * k) });
    }

    /// Feeds a datagram from `from` (the leader).
    pub fn handle_datagram(&mut self, now: Time, from: NodeId, msg: Message) {
        let Message::Request { assignment, who } = msg else {
            return;
        };
        if !who.selects(self.node) {
            return;
        }
        let window = self.cfg.interval.as_micros() as u64;
        let delay = Duration::from_micros(self.rng.random_range(0..=window));
        if let Some(p) = self.results.get_mut(&assignment) {
            p.leader = from;
            p.due.get_or_insert(now + delay);
        }
    }

    /// Feeds the passing of time.
    pub fn handle_timeout(&mut self, now: Time) {
        for (&assignment, p) in self.results.iter_mut() {
            if p.due.is_some_and(|t| t <= now) {
                p.due = None;
                self.transmits
                    .push_back((p.leader, Message::Report { assignment, result: p.result.clone() }));
            }
        }
    }

    /// The next datagram to send, to the leader.
    pub fn poll_transmit(&mut self) -> Option<(NodeId, Message)> {
        self.transmits.pop_front()
    }

    /// When [`Reporter::handle_timeout`] should next be called.
    pub fn poll_timeout(&self) -> Option<Time> {
        self.results.values().filter_map(|p| p.due).min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn messages_round_trip_and_cuts_fail() {
        let msgs = [
            Message::Report { assignment: AssignmentSerial(4), result: Ok(()) },
            Message::Report { assignment: AssignmentSerial(4), result: Err("disk full on /srv".into()) },
            Message::Request { assignment: AssignmentSerial(4), who: Selector::AllExcept(vec![NodeId(1)]) },
        ];
        for m in msgs {
            let b = m.to_bytes();
            assert_eq!(Message::decode(&b).unwrap(), m);
            for cut in 0..b.len() {
                assert!(Message::decode(&b[..cut]).is_err());
            }
        }
        let long = Message::Report { assignment: AssignmentSerial(1), result: Err("é".repeat(400)) };
        let Message::Report { result: Err(e), .. } = Message::decode(&long.to_bytes()).unwrap() else {
            panic!()
        };
        assert!(e.len() <= MAX_ERROR_LEN);
    }

    /// Patent: "The Group Leader sends a unicast request to any participating
    /// group member who did not report"; more than a few missing: one
    /// multicast request with the shorter list.
    #[test]
    fn reports_that_arrive_before_the_collection_count() {
        let a = AssignmentSerial(5);
        let mut c = Collector::new(CollectorConfig::default(), 0);
        c.handle_datagram(Time::ZERO, NodeId(1), Message::Report { assignment: a, result: Ok(()) });
        c.handle_datagram(
            Time::ZERO,
            NodeId(2),
            Message::Report { assignment: a, result: Err("disk".into()) },
        );
        // A report for another assignment, and one from a stranger, do not count.
        c.handle_datagram(
            Time::ZERO,
            NodeId(3),
            Message::Report { assignment: AssignmentSerial(6), result: Ok(()) },
        );
        c.handle_datagram(Time::ZERO, NodeId(9), Message::Report { assignment: a, result: Ok(()) });
        c.collect(Time::ZERO, a, vec![NodeId(1), NodeId(2), NodeId(3)]);
        assert!(c.poll_event().is_none(), "3 has not reported on 5");
        c.handle_datagram(Time::ZERO, NodeId(3), Message::Report { assignment: a, result: Ok(()) });
        let o = c.poll_event().unwrap();
        assert_eq!(
            (o.succeeded, o.failed, o.requests),
            (vec![NodeId(1), NodeId(3)], vec![(NodeId(2), "disk".into())], 0)
        );
        // Early reports are bounded.
        for i in 0..(EARLY_MAX as u64 + 10) {
            c.handle_datagram(
                Time::ZERO,
                NodeId(i),
                Message::Report { assignment: AssignmentSerial(7 + i % 3), result: Ok(()) },
            );
        }
        assert!(c.early.values().map(BTreeMap::len).sum::<usize>() <= EARLY_MAX);
    }

    #[test]
    fn requests_are_unicast_when_few_and_one_multicast_when_many() {
        let cfg = CollectorConfig::default();
        let members: Vec<NodeId> = (1..=10).map(NodeId).collect();
        let a = AssignmentSerial(9);
        let mut c = Collector::new(cfg.clone(), 0);
        c.collect(Time::ZERO, a, members.clone());
        for &m in &members[..8] {
            c.handle_datagram(Time::ZERO, m, Message::Report { assignment: a, result: Ok(()) });
        }
        let t = c.poll_timeout().unwrap();
        c.handle_timeout(t);
        let sent: Vec<_> = std::iter::from_fn(|| c.poll_transmit()).collect();
        assert_eq!(sent.len(), 2);
        assert!(sent.iter().all(|(d, _)| matches!(d, Dest::Node(_))));

        let mut c = Collector::new(cfg, 0);
        c.collect(Time::ZERO, a, members.clone());
        for &m in &members[..3] {
            c.handle_datagram(Time::ZERO, m, Message::Report { assignment: a, result: Ok(()) });
        }
        let t = c.poll_timeout().unwrap();
        c.handle_timeout(t);
        let sent: Vec<_> = std::iter::from_fn(|| c.poll_transmit()).collect();
        assert_eq!(
            sent,
            [(
                Dest::Group,
                Message::Request { assignment: a, who: Selector::AllExcept(members[..3].to_vec()) }
            )]
        );
        // Nobody answers: after max_requests every silent member is named.
        for _ in 0..10 {
            if let Some(t) = c.poll_timeout() {
                c.handle_timeout(t);
            }
        }
        let o = c.poll_event().unwrap();
        assert_eq!(o.succeeded, members[..3]);
        assert_eq!(o.silent, members[3..]);
        assert_eq!(o.requests, CollectorConfig::default().max_requests);
    }

    /// DESIGN §4 "Only targets": a multicast request for "everyone but the
    /// received" reaches members that are not targets; they hold no result
    /// and stay silent, and a stranger's report counts for nothing.
    #[test]
    fn only_targets_are_asked_and_counted() {
        let a = AssignmentSerial(9);
        let cfg = CollectorConfig { unicast_max: 0, ..CollectorConfig::default() };
        let mut bystander = Reporter::new(NodeId(3), cfg.clone(), 1);
        bystander.report(Time::ZERO, NodeId(0), AssignmentSerial(8), Ok(()));
        while let Some(t) = bystander.poll_timeout() {
            bystander.handle_timeout(t);
        }
        while bystander.poll_transmit().is_some() {}
        let mut c = Collector::new(cfg, 0);
        c.collect(Time::ZERO, a, vec![NodeId(1), NodeId(2), NodeId(4)]);
        c.handle_datagram(Time::ZERO, NodeId(1), Message::Report { assignment: a, result: Ok(()) });
        c.handle_datagram(Time::ZERO, NodeId(3), Message::Report { assignment: a, result: Ok(()) });
        let t = c.poll_timeout().unwrap();
        c.handle_timeout(t);
        let sent: Vec<_> = std::iter::from_fn(|| c.poll_transmit()).collect();
        assert!(!sent.is_empty());
        for (dest, msg) in sent {
            assert_eq!(dest, Dest::Group);
            let Message::Request { who, .. } = &msg else { panic!("{msg:?}") };
            assert!(!who.selects(NodeId(1)) && who.selects(NodeId(2)) && who.selects(NodeId(4)));
            bystander.handle_datagram(t, NodeId(0), msg);
        }
        assert!(bystander.poll_timeout().is_none(), "a non-target has nothing to report");
        while let Some(t) = c.poll_timeout() {
            c.handle_timeout(t);
        }
        let o = c.poll_event().unwrap();
        assert_eq!(o.succeeded, [NodeId(1)]);
        assert_eq!(o.silent, [NodeId(2), NodeId(4)]);
    }

    #[test]
    fn reporters_spread_over_random_multiples_of_the_interval() {
        let cfg = CollectorConfig::default();
        let mut dues = std::collections::BTreeSet::new();
        for i in 0..40 {
            let mut r = Reporter::new(NodeId(i), cfg.clone(), i);
            r.report(Time::ZERO, NodeId(0), AssignmentSerial(1), Ok(()));
            let due = r.poll_timeout().unwrap();
            assert_eq!(due.as_micros() % cfg.interval.as_micros() as u64, 0);
            dues.insert(due);
        }
        assert_eq!(dues.len(), cfg.slots as usize, "every slot used");
    }

    proptest! {
        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..700)) {
            let _ = Message::decode(&bytes);
        }
    }
}
