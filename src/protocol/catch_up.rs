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
//!
//! A server whose release failed to arrive backs off, per group and server:
//! it is left alone for [`BACKOFF_FIRST_MS`], doubled at each failure in a
//! row up to [`BACKOFF_MAX_MS`], and forgotten once it holds the release. A
//! server that failed for lack of disk space is left alone until its free
//! space (as the CCM hears of it) changes, or [`BACKOFF_MAX_MS`] passes
//! when nothing tells it the free space. [`CatchUp::backoffs`] lists who
//! waits, for the UI.

use std::collections::{BTreeMap, BTreeSet};

use super::ids::{NodeId, RunId};

/// A site is left alone this long after one of its runs ended.
pub const SETTLE_MS: u64 = 5_000;

/// A server's first back-off after a failed catch-up.
pub const BACKOFF_FIRST_MS: u64 = 30_000;

/// The longest back-off.
pub const BACKOFF_MAX_MS: u64 = 30 * 60_000;

/// Why a server did not get a release, as far as the rule cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// Its disk is too small: retrying before the space changes cannot help.
    NoSpace,
    /// Anything else.
    Other,
}

impl Failure {
    /// The failure an agent's error text describes.
    pub fn of(error: &str) -> Failure {
        let e = error.to_ascii_lowercase();
        if e.contains("not enough disk space") || e.contains("no space left") {
            Failure::NoSpace
        } else {
            Failure::Other
        }
    }
}

/// A server of a group that waits before its next catch-up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backoff {
    /// The group.
    pub group: String,
    /// The server.
    pub server: NodeId,
    /// Failures in a row.
    pub failures: u32,
    /// Not retried before, Unix ms.
    pub until_ms: u64,
    /// The last failure was for lack of disk space: retried as soon as its
    /// free space changes.
    pub no_space: bool,
    /// Its free space when it failed, if known.
    pub disk_free: Option<u64>,
}

/// The back-off after `failures` failures in a row (at least one).
pub fn backoff_ms(failures: u32) -> u64 {
    let doublings = failures.saturating_sub(1).min(20);
    BACKOFF_FIRST_MS.saturating_mul(1 << doublings).min(BACKOFF_MAX_MS)
}

/// One server of a group as the CCM last heard of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerView {
    /// The server.
    pub id: NodeId,
    /// Listed online by its segment's leader.
    pub online: bool,
    /// Its live release of the group's site (0: none).
    pub live: u64,
    /// Its free disk space, when the CCM hears of it (a segment's leader).
    pub disk_free: Option<u64>,
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
    /// (group, server) → its back-off.
    backoff: BTreeMap<(String, NodeId), Backoff>,
    /// Server → its free space at the last check.
    disk_seen: BTreeMap<NodeId, u64>,
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

    /// Server `server` of `group` did not get the release of a run that
    /// ended at `now_ms`: it backs off. Answers its back-off.
    pub fn server_failed(&mut self, group: &str, server: NodeId, now_ms: u64, failure: Failure) -> Backoff {
        let key = (group.to_owned(), server);
        let failures = self.backoff.get(&key).map_or(0, |b| b.failures).saturating_add(1);
        let no_space = failure == Failure::NoSpace;
        let wait = if no_space { BACKOFF_MAX_MS } else { backoff_ms(failures) };
        let b = Backoff {
            group: group.to_owned(),
            server,
            failures,
            until_ms: now_ms.saturating_add(wait),
            no_space,
            disk_free: self.disk_seen.get(&server).copied(),
        };
        self.backoff.insert(key.clone(), b.clone());
        self.lagging.remove(&key);
        b
    }

    /// Server `server` of `group` got a release: its back-off is over.
    pub fn server_caught_up(&mut self, group: &str, server: NodeId) {
        self.backoff.remove(&(group.to_owned(), server));
    }

    /// The servers that wait before their next catch-up.
    pub fn backoffs(&self) -> Vec<Backoff> {
        self.backoff.values().cloned().collect()
    }

    /// Whether the back-off of `s` in `group` holds it back at `now_ms`; a
    /// lack of space is over once the server's free space changed.
    fn held_back(&mut self, group: &str, s: &ServerView, now_ms: u64) -> bool {
        let key = (group.to_owned(), s.id);
        let Some(b) = self.backoff.get_mut(&key) else { return false };
        if b.no_space && s.disk_free.is_some() && s.disk_free != b.disk_free {
            b.until_ms = now_ms;
            b.no_space = false;
        }
        now_ms < b.until_ms
    }

    /// Looks at every group; answers the needs, in group order.
    pub fn check(&mut self, now_ms: u64, groups: &[GroupView]) -> Vec<Need> {
        let mut needs = BTreeSet::new();
        let mut lagging_now = BTreeSet::new();
        for g in groups {
            for s in &g.servers {
                if let Some(free) = s.disk_free {
                    self.disk_seen.insert(s.id, free);
                }
            }
            let recent = self.settled.get(&g.site).is_some_and(|t| now_ms < t.saturating_add(SETTLE_MS));
            let busy = self.running.values().any(|s| *s == g.site);
            if g.site_serial == 0 || recent || busy {
                continue;
            }
            for s in g.servers.iter().filter(|s| s.online && s.live != g.site_serial) {
                if self.held_back(&g.name, s, now_ms) {
                    continue;
                }
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
        let servers = live
            .iter()
            .map(|&(id, online, live)| ServerView { id: NodeId(id), online, live, disk_free: None })
            .collect();
        vec![GroupView { name: "web".into(), site: "www".into(), site_serial, servers }]
    }

    /// Checks every second from `from` to `to` (ms), as the scheduler does;
    /// answers when a need came.
    fn needs_between(c: &mut CatchUp, g: &[GroupView], from: u64, to: u64) -> Vec<u64> {
        (from..to).step_by(1_000).filter(|t| !c.check(*t, g).is_empty()).collect()
    }

    /// Issue 15 item 3: a server that keeps failing is not sent a fresh
    /// replicate at every check (7 runs in 72 s), but after 30 s, 60 s,
    /// 120 s … at most 30 min; once it holds the release it is forgotten.
    #[test]
    fn a_failing_server_backs_off_exponentially_up_to_a_cap() {
        let mut c = CatchUp::default();
        let g = group(&[(1, true, 3), (2, true, 0)], 3);
        assert_eq!(needs_between(&mut c, &g, 0, 2_000), vec![1_000]);
        let mut t = 1_000;
        for (failures, wait) in [(1, 30_000), (2, 60_000), (3, 120_000), (4, 240_000)] {
            c.run_began(RunId(failures), "www");
            c.run_ended(RunId(failures), t);
            let b = c.server_failed("web", NodeId(2), t, Failure::Other);
            assert_eq!((b.failures, b.until_ms), (failures as u32, t + wait));
            assert_eq!(c.backoffs(), vec![b]);
            let due = needs_between(&mut c, &g, t, t + wait + 2_000);
            assert_eq!(due, vec![t + wait + 1_000], "failure {failures}: seen twice once the wait is over");
            t += wait + 1_000;
        }
        assert_eq!(backoff_ms(7), BACKOFF_MAX_MS);
        assert_eq!(backoff_ms(u32::MAX), BACKOFF_MAX_MS);
        c.server_caught_up("web", NodeId(2));
        assert!(c.backoffs().is_empty());
    }

    /// Issue 15 item 3: a server whose disk is too small is not retried
    /// until its free space changes (or the longest back-off passed).
    #[test]
    fn a_server_out_of_disk_waits_for_its_free_space_to_change() {
        assert_eq!(
            Failure::of("not enough disk space under /s: the assignment needs 9 bytes"),
            Failure::NoSpace
        );
        assert_eq!(Failure::of("write f: No space left on device (os error 28)"), Failure::NoSpace);
        assert_eq!(Failure::of("offline"), Failure::Other);
        let mut c = CatchUp::default();
        let mut g = group(&[(1, true, 3), (2, true, 0)], 3);
        g[0].servers[1].disk_free = Some(100);
        c.check(0, &g);
        c.server_failed("web", NodeId(2), 1_000, Failure::NoSpace);
        assert!(needs_between(&mut c, &g, 2_000, 600_000).is_empty(), "same free space: left alone");
        g[0].servers[1].disk_free = Some(5_000);
        assert_eq!(needs_between(&mut c, &g, 600_000, 602_000), vec![601_000], "space changed: retried");

        // Nothing tells the free space: the longest back-off.
        let mut c = CatchUp::default();
        let g = group(&[(2, true, 0)], 3);
        c.server_failed("web", NodeId(2), 0, Failure::NoSpace);
        assert!(needs_between(&mut c, &g, 1_000, BACKOFF_MAX_MS).is_empty());
        assert_eq!(
            needs_between(&mut c, &g, BACKOFF_MAX_MS, BACKOFF_MAX_MS + 2_000),
            vec![BACKOFF_MAX_MS + 1_000]
        );
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
