//! Which content groups need a `replicate` or a `synchronize` (the
//! scheduler's catch-up rule), as a sans-IO core: the scheduler actor hands
//! it the groups' servers and their live releases, the runs that begin and
//! end, and the time; it answers which groups need which kind of run.
//!
//! A server of a group that is online and does not serve the site's live
//! release lags: one with no release of the site is *new* (→ `replicate`),
//! one with another release is *stale* (→ `synchronize`). A server counts
//! only when seen lagging by two checks in a row, and never while a run of
//! its site is in progress or for [`SETTLE_MS`] after one ended: segment
//! reports sent before a commit can arrive after it, saying the old release.

use std::collections::{BTreeMap, BTreeSet};

use super::ids::{NodeId, RunId};

/// A site is left alone this long after one of its runs ended.
pub const SETTLE_MS: u64 = 5_000;

/// One server of a group as the CCM last heard of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerView {
    /// The server.
    pub id: NodeId,
    /// Listed online by its segment's leader.
    pub online: bool,
    /// Its live release of the group's site (0: none).
    pub live: u64,
}

/// A content group and its site's live release.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupView {
    /// The group.
    pub name: String,
    /// Its site.
    pub site: String,
    /// The site's live release (0: never published).
    pub site_serial: u64,
    /// Its servers.
    pub servers: Vec<ServerView>,
}

/// What a group needs.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Need {
    /// Servers new to the group: the whole live release.
    Replicate(String),
    /// Servers holding another release: the whole live release.
    Synchronize(String),
}

/// The catch-up rule's state. See the module docs.
#[derive(Debug, Default)]
pub struct CatchUp {
    /// (group, server) seen lagging at the last check.
    lagging: BTreeSet<(String, NodeId)>,
    /// Runs in progress → their site.
    running: BTreeMap<RunId, String>,
    /// Site → when its last run ended, Unix ms.
    settled: BTreeMap<String, u64>,
}

impl CatchUp {
    /// Run `run` of `site` began.
    pub fn run_began(&mut self, run: RunId, site: &str) {
        self.running.insert(run, site.to_owned());
    }

    /// Run `run` ended at `now_ms`.
    pub fn run_ended(&mut self, run: RunId, now_ms: u64) {
        if let Some(site) = self.running.remove(&run) {
            self.settled.insert(site, now_ms);
        }
    }

    /// Looks at every group; answers the needs, in group order.
    pub fn check(&mut self, now_ms: u64, groups: &[GroupView]) -> Vec<Need> {
        let mut needs = BTreeSet::new();
        let mut lagging_now = BTreeSet::new();
        for g in groups {
            let recent = self.settled.get(&g.site).is_some_and(|t| now_ms < t.saturating_add(SETTLE_MS));
            let busy = self.running.values().any(|s| *s == g.site);
            if g.site_serial == 0 || recent || busy {
                continue;
            }
            for s in g.servers.iter().filter(|s| s.online && s.live != g.site_serial) {
                let key = (g.name.clone(), s.id);
                if self.lagging.contains(&key) {
                    needs.insert(if s.live == 0 {
                        Need::Replicate(g.name.clone())
                    } else {
                        Need::Synchronize(g.name.clone())
                    });
                }
                lagging_now.insert(key);
            }
        }
        self.lagging = lagging_now;
        needs.into_iter().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn group(live: &[(u64, bool, u64)], site_serial: u64) -> Vec<GroupView> {
        let servers =
            live.iter().map(|&(id, online, live)| ServerView { id: NodeId(id), online, live }).collect();
        vec![GroupView { name: "web".into(), site: "www".into(), site_serial, servers }]
    }

    #[test]
    fn a_new_server_gets_a_replicate_once_seen_twice() {
        let mut c = CatchUp::default();
        let g = group(&[(1, true, 3), (2, true, 0)], 3);
        assert_eq!(c.check(1_000, &g), vec![], "seen once");
        assert_eq!(c.check(3_000, &g), vec![Need::Replicate("web".into())]);
    }

    #[test]
    fn a_lagging_server_gets_a_synchronize_and_one_in_sync_nothing() {
        let mut c = CatchUp::default();
        let lagging = group(&[(1, true, 3), (2, true, 2)], 3);
        assert_eq!(c.check(1_000, &lagging), vec![]);
        assert_eq!(c.check(3_000, &lagging), vec![Need::Synchronize("web".into())]);
        let synced = group(&[(1, true, 3), (2, true, 3)], 3);
        assert_eq!(c.check(5_000, &synced), vec![]);
        assert_eq!(c.check(7_000, &synced), vec![]);
    }

    #[test]
    fn one_stale_report_does_not_count() {
        let mut c = CatchUp::default();
        assert_eq!(c.check(1_000, &group(&[(2, true, 2)], 3)), vec![]);
        assert_eq!(c.check(3_000, &group(&[(2, true, 3)], 3)), vec![]);
        assert_eq!(c.check(5_000, &group(&[(2, true, 2)], 3)), vec![], "not twice in a row");
    }

    #[test]
    fn offline_servers_unpublished_sites_and_busy_or_settling_sites_are_left_alone() {
        let mut c = CatchUp::default();
        let offline = group(&[(2, false, 0)], 3);
        c.check(1_000, &offline);
        assert_eq!(c.check(3_000, &offline), vec![]);
        let unpublished = group(&[(2, true, 0)], 0);
        c.check(1_000, &unpublished);
        assert_eq!(c.check(3_000, &unpublished), vec![]);

        let lagging = group(&[(2, true, 2)], 3);
        c.run_began(RunId(7), "www");
        c.check(10_000, &lagging);
        assert_eq!(c.check(12_000, &lagging), vec![], "a run of the site is in progress");
        c.run_ended(RunId(7), 12_500);
        c.check(13_000, &lagging);
        assert_eq!(c.check(15_000, &lagging), vec![], "settling after the run");
        c.check(17_600, &lagging);
        assert_eq!(c.check(19_600, &lagging), vec![Need::Synchronize("web".into())]);
        // Another site's run does not hold this one back.
        c.run_began(RunId(8), "shop");
        assert_eq!(c.check(21_600, &lagging), vec![Need::Synchronize("web".into())]);
    }
}
