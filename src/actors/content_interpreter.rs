//! The content interpreter (DESIGN §4 step 7): carries out assignments on
//! this back-end server's site roots, once each.
//!
//! Only targets (DESIGN §4): the group leader hands over only assignments
//! that name this node, and a multicast one is carried out only when its
//! session named this node; anything else is dropped without a trace under
//! the sites root.
//!
//! Every assignment, however it arrived (fetched by this node as group
//! leader, or multicast by its leader), ends here as a verified file in the
//! assignments directory. The interpreter opens it (checking every hash and
//! decrypting with the content key derived from the cluster secret), finds
//! the site root `sites_root/<header.site>` and carries it out by kind:
//! a content assignment builds `incoming/<serial>` (never live), a commit
//! switches `live`, an abort discards the incoming release, a rollback
//! switches `live` back one release.
//!
//! The work runs in a blocking task, one assignment at a time (a lock shared
//! by those tasks), so that two assignments of a site never interleave while
//! the actor stays free to answer. It is idempotent by assignment id: the
//! outcome is recorded durably in the [`AgentState`] *before* the result is
//! reported, and a re-delivered or re-fetched assignment returns the recorded
//! outcome without being carried out again. Failures are not recorded: a
//! failed assignment changed nothing and may be carried out again.
//!
//! After each assignment the live serial of every site is read back from the
//! site roots and, when it changed, this node's registration is updated
//! ([`UpdateInfo`]) so that its leader and the CCM see it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use actix::prelude::*;

use super::elector::UpdateInfo;
use super::multicast_receiver::{AssignmentReceived, MarkHeld, ReportResult};
use crate::clock::unix_ms;
use crate::ops::config::HooksConfig;
use crate::ops::hooks::{self, Hook};
use crate::protocol::assignment::Kind;
use crate::protocol::control::{MemberInfo, SiteSerial};
use crate::protocol::crypto::ContentKey;
use crate::protocol::ids::{AssignmentId, AssignmentSerial, NodeId};
use crate::protocol::paths::SiteName;
use crate::storage::agent_state::{AgentState, Applied, StateError};
use crate::storage::assignment_file::AssignmentFile;
use crate::storage::assignment_file::{self, assignment_path, hash_copy};
use crate::storage::releases::{Outcome, SiteOptions, SiteRoot};

/// How many carried-out assignments are announced to the receiver at
/// start-up, so that it answers a leader's reports about them.
const PRIME_RECENT: usize = 32;

/// Carries out the verified assignment file `path`, whose cluster-wide id is
/// `id` (command). Answers `Ok` when it is (or already was) carried out,
/// or the exact error.
#[derive(Debug, Clone, Message)]
#[rtype(result = "Result<(), String>")]
pub struct ApplyAssignment {
    /// Cluster-wide assignment id.
    pub id: u64,
    /// The file.
    pub path: PathBuf,
}

/// Asks for the live serial of every site and the interpreter's counters (query).
#[derive(Debug, Clone, Copy, Message)]
#[rtype(result = "InterpreterStatus")]
pub struct GetInterpreterStatus;

/// What [`GetInterpreterStatus`] answers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InterpreterStatus {
    /// Live serial per site.
    pub live: BTreeMap<String, u64>,
    /// Assignments carried out since this interpreter started.
    pub executed: u64,
    /// Assignments answered from the state store without being carried out again.
    pub replayed: u64,
    /// Assignments that failed.
    pub failed: u64,
}

/// Everything the interpreter needs.
#[derive(Debug)]
pub struct InterpreterSetup {
    /// This node.
    pub node: NodeId,
    /// Where site roots live.
    pub sites_root: PathBuf,
    /// Where verified assignment copies are kept (`<id>.cma`).
    pub assignments: PathBuf,
    /// The state store.
    pub state: Arc<AgentState>,
    /// The content key (from the cluster secret).
    pub key: Option<ContentKey>,
    /// Settings of every site root.
    pub site_options: SiteOptions,
    /// The member's MCTP receiver: told what is held, and the results to report.
    pub receiver: Option<Recipient<ReportResult>>,
    /// The same receiver, for [`MarkHeld`].
    pub held: Option<Recipient<MarkHeld>>,
    /// The elector, and the registration to update when live serials change.
    pub registration: Option<(Recipient<UpdateInfo>, MemberInfo)>,
    /// Per-site pre- and post-commit commands (`[hooks]`).
    pub hooks: HooksConfig,
}

/// The shared part a blocking task works with.
#[derive(Debug)]
struct Work {
    sites_root: PathBuf,
    state: Arc<AgentState>,
    key: Option<ContentKey>,
    site_options: SiteOptions,
    hooks: HooksConfig,
    /// The `node` label of this server's metrics.
    metrics_node: String,
    /// One assignment at a time.
    lock: Mutex<()>,
}

/// What one assignment came to.
#[derive(Debug)]
struct Done {
    applied: Applied,
    /// True when answered from the state store.
    replayed: bool,
    live: BTreeMap<String, u64>,
    ms: u64,
    detail: Option<Outcome>,
}

/// The actor. See the module docs.
pub struct ContentInterpreter {
    node: NodeId,
    assignments: PathBuf,
    work: Arc<Work>,
    receiver: Option<Recipient<ReportResult>>,
    held: Option<Recipient<MarkHeld>>,
    registration: Option<(Recipient<UpdateInfo>, MemberInfo)>,
    status: InterpreterStatus,
}

/// Live serial of every site under `sites_root` (directories whose name is
/// not a site name, and sites without a valid `live` link, are left out).
pub fn scan_live(sites_root: &Path) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    let Ok(entries) = std::fs::read_dir(sites_root) else {
        return out;
    };
    for e in entries.flatten() {
        let Some(name) = e.file_name().to_str().filter(|n| SiteName::valid(n)).map(str::to_owned) else {
            continue;
        };
        if let Ok(Some(serial)) = SiteRoot::new(e.path(), SiteOptions::default()).live() {
            out.insert(name, serial.0);
        }
    }
    out
}

/// Deletes the release builds a crash interrupted (`incoming/N.building`)
/// in every site under `sites_root`; each one deleted is logged. Blocking;
/// an agent calls it at start, before any assignment arrives.
pub fn discard_interrupted_builds(sites_root: &Path) {
    let Ok(entries) = std::fs::read_dir(sites_root) else {
        return;
    };
    for e in entries.flatten() {
        if !e.file_name().to_str().is_some_and(SiteName::valid) {
            continue;
        }
        match SiteRoot::new(e.path(), SiteOptions::default()).discard_interrupted_builds() {
            Ok(removed) => {
                for dir in removed {
                    tracing::warn!(event = "interrupted_build_deleted", path = %dir.display(), "a build a crash interrupted was deleted");
                }
            }
            Err(err) => {
                tracing::error!(site = %e.path().display(), error = %err, "cannot delete interrupted builds")
            }
        }
    }
}

/// Brings the store's list of held copies in line with the files in
/// `dir`: copies whose file is gone are forgotten, files not yet listed are
/// hashed and listed. Blocking. Returns the held copies.
pub fn reconcile_held(dir: &Path, state: &AgentState) -> Result<BTreeMap<u64, [u8; 32]>, StateError> {
    let io = |op, source| StateError::Io { op, path: dir.to_owned(), source };
    std::fs::create_dir_all(dir).map_err(|e| io("create", e))?;
    let mut on_disk = BTreeMap::new();
    for e in std::fs::read_dir(dir).map_err(|e| io("list", e))?.flatten() {
        let name = e.file_name();
        let Some(id) = name
            .to_str()
            .and_then(|n| n.strip_suffix(&format!(".{}", assignment_file::EXTENSION)))
            .and_then(|n| n.parse::<u64>().ok())
        else {
            continue;
        };
        on_disk.insert(id, e.path());
    }
    let held = state.held();
    let gone: Vec<u64> = held.keys().filter(|id| !on_disk.contains_key(id)).copied().collect();
    state.forget_held(&gone)?;
    for (id, path) in on_disk {
        if held.contains_key(&id) {
            continue;
        }
        match hash_copy(&path) {
            Ok((_, hash)) => state.record_held(id, hash)?,
            Err(e) => {
                tracing::warn!(event = "held_unreadable", assignment = id, path = %path.display(), error = %e)
            }
        }
    }
    Ok(state.held())
}

impl Work {
    /// Carries out assignment `id` from `path`, once. Blocking.
    fn carry_out(&self, id: u64, path: &Path) -> Result<Done, String> {
        let _one_at_a_time = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        let started = std::time::Instant::now();
        if let Some(applied) = self.state.applied(id) {
            let live = scan_live(&self.sites_root);
            return Ok(Done { applied, replayed: true, live, ms: 0, detail: None });
        }
        let file = AssignmentFile::open(path, self.key.as_ref()).map_err(|e| e.to_string())?;
        let h = &file.header;
        let site = SiteRoot::new(self.sites_root.join(h.site.as_str()), self.site_options.clone());
        // Every kind is idempotent (a rollback names its release), so a
        // crash before the record below only means doing it again.
        let detail = Some(site.execute(&file).map_err(|e| e.to_string())?);
        self.run_hooks(&site, h)?;
        let applied =
            Applied { site: h.site.as_str().to_owned(), serial: h.serial.0, kind: h.kind, at_ms: unix_ms() };
        self.state.record_applied(id, applied.clone()).map_err(|e| e.to_string())?;
        let ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
        Ok(Done { applied, replayed: false, live: scan_live(&self.sites_root), ms, detail })
    }
}

impl Work {
    /// The site's hooks around a commit: a failing pre-commit hook discards
    /// the release it was given and fails the assignment (so the server is
    /// left out of the commit); a failing post-commit hook is only reported.
    fn run_hooks(&self, site: &SiteRoot, h: &crate::protocol::assignment::Header) -> Result<(), String> {
        let (hook, release) = match h.kind {
            Kind::Content => (Hook::PreCommit, site.incoming_dir(h.serial)),
            Kind::Commit => (Hook::PostCommit, site.release_dir(h.serial)),
            _ => return Ok(()),
        };
        let res = hooks::run(&self.hooks, hook, h.site.as_str(), h.serial.0, &release);
        let result = match &res {
            Ok(false) => return Ok(()),
            Ok(true) => "ok",
            Err(_) => "failed",
        };
        metrics::counter!("cmover_hook_runs_total", "node" => self.metrics_node.clone(), "hook" => hook.name(), "result" => result)
            .increment(1);
        match res {
            Err(e) if hook == Hook::PreCommit => {
                if let Err(abort) = site.abort(h.serial) {
                    tracing::warn!(event = "abort_failed", site = %h.site, serial = h.serial.0, error = %abort);
                }
                Err(e.to_string())
            }
            Err(e) => {
                tracing::warn!(event = "hook_failed", site = %h.site, serial = h.serial.0, error = %e);
                Ok(())
            }
            Ok(_) => {
                tracing::info!(event = "hook_ran", site = %h.site, serial = h.serial.0, hook = hook.name());
                Ok(())
            }
        }
    }
}

impl ContentInterpreter {
    /// An interpreter; see [`InterpreterSetup`].
    pub fn new(setup: InterpreterSetup) -> Self {
        let live = scan_live(&setup.sites_root);
        ContentInterpreter {
            node: setup.node,
            assignments: setup.assignments,
            work: Arc::new(Work {
                sites_root: setup.sites_root,
                state: setup.state,
                key: setup.key,
                site_options: setup.site_options,
                hooks: setup.hooks,
                metrics_node: crate::metrics::node_label(setup.node),
                lock: Mutex::new(()),
            }),
            receiver: setup.receiver,
            held: setup.held,
            registration: setup.registration,
            status: InterpreterStatus { live, ..InterpreterStatus::default() },
        }
    }

    /// Carries out `id` off the actor's thread; logs, counts, tells the
    /// receiver and the elector; answers the result.
    fn apply(
        &mut self,
        id: u64,
        path: PathBuf,
        report_to: NodeId,
    ) -> ResponseActFuture<Self, Result<(), String>> {
        let work = self.work.clone();
        let task = tokio::task::spawn_blocking(move || work.carry_out(id, &path));
        Box::pin(task.into_actor(self).map(move |joined, act, _ctx| {
            let result = joined.map_err(|e| format!("the interpreter task failed: {e}")).and_then(|r| r);
            let node = act.node;
            match &result {
                Ok(done) => {
                    let a = &done.applied;
                    if done.replayed {
                        act.status.replayed += 1;
                        tracing::info!(
                            event = "already_applied", node = node.0, assignment = id, site = %a.site,
                            serial = a.serial, kind = %a.kind, "assignment already carried out"
                        );
                    } else {
                        act.status.executed += 1;
                        metrics::histogram!("cmover_assignment_apply_seconds", "node" => act.work.metrics_node.clone(), "kind" => a.kind.name())
                            .record(done.ms as f64 / 1000.0);
                        let event = match a.kind {
                            Kind::Content => "applied",
                            Kind::Commit => "committed",
                            Kind::Abort => "aborted",
                            Kind::Rollback => "rolled_back",
                        };
                        tracing::info!(
                            event, node = node.0, assignment = id, site = %a.site, serial = a.serial,
                            ms = done.ms, outcome = done.detail.as_ref().map(|d| d.to_string()), "assignment carried out"
                        );
                    }
                    if done.live != act.status.live {
                        act.status.live = done.live.clone();
                        act.register_live();
                    }
                }
                Err(error) => {
                    act.status.failed += 1;
                    metrics::counter!("cmover_apply_failures_total", "node" => act.work.metrics_node.clone()).increment(1);
                    tracing::warn!(event = "apply_failed", node = node.0, assignment = id, %error, "assignment failed");
                }
            }
            let result = result.map(|_| ());
            if let Some(hash) = act.work.state.held_hash(id) {
                if let Some(h) = &act.held {
                    h.do_send(MarkHeld { assignment: AssignmentSerial(id), hash });
                }
            }
            if let Some(r) = &act.receiver {
                r.do_send(ReportResult {
                    assignment: AssignmentSerial(id),
                    leader: report_to,
                    result: result.clone(),
                });
            }
            result
        }))
    }

    fn register_live(&self) {
        if let Some((elector, base)) = &self.registration {
            let serials = self
                .status
                .live
                .iter()
                .map(|(site, &serial)| SiteSerial { site: site.clone(), serial })
                .collect();
            elector.do_send(UpdateInfo(MemberInfo { serials, ..base.clone() }));
        }
    }
}

impl Actor for ContentInterpreter {
    type Context = Context<Self>;

    fn started(&mut self, _ctx: &mut Context<Self>) {
        self.register_live();
        // Copies already carried out: the receiver answers "complete" to a
        // leader that announces them again, and reports their result.
        let applied = self.work.state.all_applied();
        let held = self.work.state.held();
        for id in applied.keys().rev().filter(|id| held.contains_key(id)).take(PRIME_RECENT) {
            if let Some(h) = &self.held {
                h.do_send(MarkHeld { assignment: AssignmentSerial(*id), hash: held[id] });
            }
            if let Some(r) = &self.receiver {
                // The leader is not known yet: the report goes nowhere until
                // a leader asks for it (and becomes its destination).
                r.do_send(ReportResult {
                    assignment: AssignmentSerial(*id),
                    leader: self.node,
                    result: Ok(()),
                });
            }
        }
    }
}

impl Handler<ApplyAssignment> for ContentInterpreter {
    type Result = ResponseActFuture<Self, Result<(), String>>;

    fn handle(&mut self, msg: ApplyAssignment, _ctx: &mut Context<Self>) -> Self::Result {
        let me = self.node;
        self.apply(msg.id, msg.path, me)
    }
}

impl Handler<AssignmentReceived> for ContentInterpreter {
    type Result = ();

    fn handle(&mut self, msg: AssignmentReceived, ctx: &mut Context<Self>) {
        let id = msg.assignment.0;
        let leader = msg.from;
        if !msg.targets.contains(self.node) {
            // DESIGN §4 "Only targets": not this server's to store, apply
            // or report (the receiver never delivers such a session; this
            // is the second lock on the door).
            tracing::warn!(
                event = "not_a_target",
                node = self.node.0,
                assignment = id,
                from = leader.0,
                "assignment for other servers dropped"
            );
            if let Ok(file) = &msg.result {
                let _ = std::fs::remove_file(&file.path);
            }
            return;
        }
        let file = match msg.result {
            Ok(file) => file,
            Err(error) => {
                tracing::warn!(event = "receive_failed", node = self.node.0, assignment = id, %error);
                if let Some(r) = &self.receiver {
                    r.do_send(ReportResult { assignment: msg.assignment, leader, result: Err(error) });
                }
                return;
            }
        };
        let dest = assignment_path(&self.assignments, AssignmentId(id));
        let stored = std::fs::rename(&file.path, &dest)
            .map_err(|e| format!("cannot store assignment {id} at {}: {e}", dest.display()))
            .and_then(|()| self.work.state.record_held(id, file.hash).map_err(|e| e.to_string()));
        if let Err(error) = stored {
            tracing::warn!(event = "store_failed", node = self.node.0, assignment = id, %error);
            if let Some(r) = &self.receiver {
                r.do_send(ReportResult { assignment: msg.assignment, leader, result: Err(error) });
            }
            return;
        }
        tracing::info!(
            event = "received",
            node = self.node.0,
            assignment = id,
            from = leader.0,
            size = file.size
        );
        ctx.spawn(self.apply(id, dest, leader).map(|_, _, _| ()));
    }
}

impl Handler<GetInterpreterStatus> for ContentInterpreter {
    type Result = MessageResult<GetInterpreterStatus>;

    fn handle(&mut self, _msg: GetInterpreterStatus, _ctx: &mut Context<Self>) -> Self::Result {
        MessageResult(self.status.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::assignment::{encode_control, Header};
    use crate::protocol::ids::JobId;
    use crate::protocol::paths::SiteName;
    use crate::storage::pack::{pack, PackOptions};
    use crate::storage::tree::{compare_trees, TreeFilter};

    const SECRET: &[u8] = b"cluster secret for the interpreter tests";

    fn setup(dir: &Path) -> InterpreterSetup {
        InterpreterSetup {
            node: NodeId(1),
            sites_root: dir.join("sites"),
            assignments: dir.join("assignments"),
            state: Arc::new(AgentState::open(&dir.join("state")).unwrap()),
            key: Some(ContentKey::from_secret(SECRET).unwrap()),
            site_options: SiteOptions { min_free_disk: 0, ..SiteOptions::default() },
            receiver: None,
            held: None,
            registration: None,
            hooks: HooksConfig::default(),
        }
    }

    /// Generates a tree of `files` files from `seed` and packs it (encrypted with the
    /// cluster's content key) as a full release `serial` of site `www` into
    /// assignment `10 * serial`, its commit into `10 * serial + 1`.
    fn assignments(dir: &Path, serial: u64, seed: u64, files: usize) -> (PathBuf, PathBuf, PathBuf) {
        let tree = dir.join(format!("tree-{serial}"));
        let spec = crate::corpus::CorpusSpec {
            large_files: 0,
            small_files: files,
            dirs: 3,
            ..crate::corpus::CorpusSpec::small()
        };
        // Not every seed makes a tree with these few files (see the report of
        // this change): these do.
        crate::corpus::generate(&tree, seed, &spec).unwrap();
        let out = dir.join("assignments");
        std::fs::create_dir_all(&out).unwrap();
        let empty = dir.join("empty");
        std::fs::create_dir_all(&empty).unwrap();
        let site = SiteName::new("www").unwrap();
        let opts = PackOptions {
            site: site.clone(),
            serial: AssignmentSerial(serial),
            base_serial: AssignmentSerial(0),
            job_id: JobId(1),
            created_ms: 0,
            filter: TreeFilter::default(),
            incompressible: Default::default(),
            compression: Default::default(),
            min_compression_gain: 0.05,
            encrypt: Some((ContentKey::from_secret(SECRET).unwrap(), [3; 32])),
        };
        let content = assignment_path(&out, AssignmentId(10 * serial));
        pack(&empty, &tree, &content, &opts).unwrap();
        let commit = assignment_path(&out, AssignmentId(10 * serial + 1));
        let header = Header::control(Kind::Commit, site, AssignmentSerial(serial), JobId(1), 0);
        std::fs::write(&commit, encode_control(&header)).unwrap();
        (tree, content, commit)
    }

    fn apply(id: u64, path: &Path) -> ApplyAssignment {
        ApplyAssignment { id, path: path.to_owned() }
    }

    #[actix_rt::test]
    async fn assignments_are_carried_out_once_across_restarts() {
        let dir = tempfile::tempdir().unwrap();
        let (tree, content, commit) = assignments(dir.path(), 1, 7, 20);
        let interp = ContentInterpreter::new(setup(dir.path())).start();
        interp.send(apply(10, &content)).await.unwrap().unwrap();
        let site = dir.path().join("sites/www");
        assert!(site.join("incoming/1").is_dir());
        assert!(!site.join("live").exists(), "content never goes live by itself");
        // Delivered again: not applied again, the recorded outcome answers.
        interp.send(apply(10, &content)).await.unwrap().unwrap();
        interp.send(apply(11, &commit)).await.unwrap().unwrap();
        assert_eq!(compare_trees(&site.join("live"), &tree).unwrap(), Vec::<String>::new());
        let s = interp.send(GetInterpreterStatus).await.unwrap();
        assert_eq!((s.executed, s.replayed, s.failed), (2, 1, 0));
        assert_eq!(s.live, BTreeMap::from([("www".to_string(), 1)]));

        // A new interpreter over the same state (a restart): nothing runs again.
        let again = ContentInterpreter::new(setup(dir.path())).start();
        assert_eq!(again.send(GetInterpreterStatus).await.unwrap().live["www"], 1);
        again.send(apply(10, &content)).await.unwrap().unwrap();
        again.send(apply(11, &commit)).await.unwrap().unwrap();
        let s = again.send(GetInterpreterStatus).await.unwrap();
        assert_eq!((s.executed, s.replayed), (0, 2));
    }

    #[actix_rt::test]
    async fn a_rollback_delivered_twice_rolls_back_once() {
        let dir = tempfile::tempdir().unwrap();
        let (tree1, content1, commit1) = assignments(dir.path(), 1, 7, 20);
        let (_, content2, commit2) = assignments(dir.path(), 2, 8, 8);
        let rollback = assignment_path(&dir.path().join("assignments"), AssignmentId(99));
        let site = SiteName::new("www").unwrap();
        let header = Header::control(Kind::Rollback, site, AssignmentSerial(1), JobId(1), 0);
        std::fs::write(&rollback, encode_control(&header)).unwrap();
        let interp = ContentInterpreter::new(setup(dir.path())).start();
        for (id, path) in [(10, &content1), (11, &commit1), (20, &content2), (21, &commit2)] {
            interp.send(apply(id, path)).await.unwrap().unwrap();
        }
        assert_eq!(interp.send(GetInterpreterStatus).await.unwrap().live["www"], 2);
        interp.send(apply(99, &rollback)).await.unwrap().unwrap();
        interp.send(apply(99, &rollback)).await.unwrap().unwrap();
        let again = ContentInterpreter::new(setup(dir.path())).start();
        again.send(apply(99, &rollback)).await.unwrap().unwrap();
        let s = again.send(GetInterpreterStatus).await.unwrap();
        assert_eq!(s.live["www"], 1, "back to release 1");
        let live = dir.path().join("sites/www/live");
        assert_eq!(compare_trees(&live, &tree1).unwrap(), Vec::<String>::new());
    }

    #[actix_rt::test]
    async fn a_bad_assignment_reports_the_exact_error_and_is_not_recorded() {
        let dir = tempfile::tempdir().unwrap();
        let (_, content, commit) = assignments(dir.path(), 1, 8, 8);
        let interp = ContentInterpreter::new(setup(dir.path())).start();
        // Commit before content: nothing to commit.
        let err = interp.send(apply(11, &commit)).await.unwrap().unwrap_err();
        assert!(err.contains("was not applied"), "{err}");
        // A damaged copy is refused whole.
        let good = std::fs::read(&content).unwrap();
        let mut bad = good.clone();
        let n = bad.len();
        bad[n / 2] ^= 0x40;
        std::fs::write(&content, &bad).unwrap();
        let err = interp.send(apply(10, &content)).await.unwrap().unwrap_err();
        assert!(err.contains("rejected"), "{err}");
        // Neither was recorded: once the copy is right, both go through.
        std::fs::write(&content, &good).unwrap();
        interp.send(apply(10, &content)).await.unwrap().unwrap();
        interp.send(apply(11, &commit)).await.unwrap().unwrap();
        let s = interp.send(GetInterpreterStatus).await.unwrap();
        assert_eq!((s.executed, s.failed), (2, 2));
    }
}
