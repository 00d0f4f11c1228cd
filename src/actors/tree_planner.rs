//! TreePlanner: the order in which the leaders of a run's segments are
//! served (patent: "an ordered list of GLs necessary for service to each
//! content group").
//!
//! The admin static order comes first (segment names in `ccm.tree_order`);
//! the other segments follow, those whose leaders have more CPUs and more
//! free disk first (they forward fastest), then by name so the order is
//! stable.

use actix::prelude::*;

use crate::storage::records::SegmentRecord;

/// Orders segments for distribution.
#[derive(Message)]
#[rtype(result = "Vec<SegmentRecord>")]
pub struct PlanTree {
    /// The segments that hold servers of the content group.
    pub segments: Vec<SegmentRecord>,
}

/// The actor. See the module docs.
#[derive(Debug, Default)]
pub struct TreePlanner {
    static_order: Vec<String>,
}

impl TreePlanner {
    /// A planner with the admin static order.
    pub fn new(static_order: Vec<String>) -> Self {
        TreePlanner { static_order }
    }

    /// The ordering itself.
    pub fn plan(&self, mut segments: Vec<SegmentRecord>) -> Vec<SegmentRecord> {
        let rank =
            |s: &SegmentRecord| self.static_order.iter().position(|n| *n == s.name).unwrap_or(usize::MAX);
        segments.sort_by(|a, b| {
            rank(a)
                .cmp(&rank(b))
                .then(b.cpus.cmp(&a.cpus))
                .then(b.disk_free.cmp(&a.disk_free))
                .then(a.name.cmp(&b.name))
        });
        segments
    }
}

impl Actor for TreePlanner {
    type Context = Context<Self>;
}

impl Handler<PlanTree> for TreePlanner {
    type Result = MessageResult<PlanTree>;

    fn handle(&mut self, msg: PlanTree, _: &mut Context<Self>) -> Self::Result {
        MessageResult(self.plan(msg.segments))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::ids::NodeId;

    fn seg(name: &str, cpus: u32, disk: u64) -> SegmentRecord {
        SegmentRecord {
            incarnation: 1,
            name: name.into(),
            leader: NodeId(1),
            leader_http: String::new(),
            location: String::new(),
            cpus,
            disk_free: disk,
            members: Vec::new(),
            updated_ms: 0,
        }
    }

    #[test]
    fn static_order_first_then_strongest_leaders() {
        let p = TreePlanner::new(vec!["paris".into(), "tokyo".into()]);
        let order = p.plan(vec![
            seg("a", 2, 5),
            seg("tokyo", 1, 1),
            seg("b", 8, 1),
            seg("paris", 1, 1),
            seg("c", 8, 9),
        ]);
        let names: Vec<&str> = order.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["paris", "tokyo", "c", "b", "a"]);
    }
}

/// Replaces the admin static order (from the REST API).
#[derive(Message)]
#[rtype(result = "()")]
pub struct SetOrder(pub Vec<String>);

impl Handler<SetOrder> for TreePlanner {
    type Result = ();

    fn handle(&mut self, msg: SetOrder, _: &mut Context<Self>) {
        self.static_order = msg.0;
    }
}
