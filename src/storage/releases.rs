//! A site on a back-end server: releases, the `live` symlink, and the
//! content interpreter's work of applying, committing and rolling back.
//!
//! ```text
//! <site root>/
//!     live -> releases/<serial>     the release the web server serves
//!     releases/<serial>/            complete releases, newest kept
//!     incoming/<serial>.building/   a release being built
//!     incoming/<serial>/            a release built whole and flushed, awaiting commit
//! ```
//!
//! Applying never touches `live` or a release: it builds `incoming/<serial>`
//! (under a `.building` name until complete and flushed, so that a commit
//! never finds half a release) as a copy of the base release made of hard
//! links, and every command that writes a file writes a *new* file beside
//! its target and renames it over the link, so no inode shared with a live release is ever modified. Before
//! anything is written the assignment is verified (hashes, paths, key), its
//! base is checked against `live`, every symlink of the release it builds
//! (the base's that stay, and its own) is checked to resolve inside it, and
//! the free disk space is checked. While
//! building, no path is resolved through a symlink. On any failure the
//! half-built release is deleted and `live` is as it was.
//!
//! Committing renames `incoming/<serial>` to `releases/<serial>` and swaps
//! `live` atomically: a new symlink is renamed over the old one, so a reader
//! sees the old release or the new one, never a mix. Rolling back swaps
//! `live` to the newest older release.

// Sizes and counts here come from the network or the disk: no silent
// truncation (tests may build what they like).
#![cfg_attr(not(test), warn(clippy::cast_possible_truncation))]

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::os::unix::fs::{symlink, DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use filetime::FileTime;
use serde::Serialize;
use thiserror::Error;

use super::assignment_file::{AssignmentError, AssignmentFile};
use super::tree::hash_file;
use crate::protocol::assignment::{links_after, Command, FileMeta, Kind};
use crate::protocol::crypto::{Digest, Sha256};
use crate::protocol::delta::{self, DeltaError};
use crate::protocol::ids::AssignmentSerial;
use crate::protocol::paths::{PathError, SitePath, TreeLinks};

/// Name of the live symlink.
pub const LIVE: &str = "live";
/// Directory of complete releases.
pub const RELEASES: &str = "releases";
/// Directory of releases being built or awaiting commit.
pub const INCOMING: &str = "incoming";

/// Why an assignment could not be carried out. In every case `live` is unchanged.
#[derive(Debug, Error)]
pub enum ReleaseError {
    /// A file system call failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// On what.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// The assignment file is invalid or cannot be decrypted.
    #[error(transparent)]
    Assignment(#[from] AssignmentError),
    /// A delta for another base than the live release.
    #[error(
        "assignment {serial} is a delta against release {base}, but the live release under {root} is {live}: \
         apply the assignments in between first, or use a full assignment"
    )]
    BaseMismatch {
        /// The assignment.
        serial: AssignmentSerial,
        /// Its base.
        base: AssignmentSerial,
        /// What is live ("none" if nothing).
        live: String,
        /// The site root.
        root: PathBuf,
    },
    /// Not enough free space.
    #[error(
        "not enough disk space under {path}: the assignment needs {needed} bytes and {reserve} must stay free, \
         but only {available} are available; free some space or lower releases.min_free_disk"
    )]
    NoSpace {
        /// Where space was checked.
        path: PathBuf,
        /// Bytes the assignment needs.
        needed: u64,
        /// Bytes that must stay free.
        reserve: u64,
        /// Bytes available.
        available: u64,
    },
    /// The sizes an assignment declares add up past what a `u64` holds.
    #[error(
        "assignment {serial} declares files that add up to more than {} bytes: no disk under {root} holds \
         that; the assignment is rejected and nothing was written",
        u64::MAX
    )]
    TooLarge {
        /// The assignment.
        serial: AssignmentSerial,
        /// The site root.
        root: PathBuf,
    },
    /// A path would be resolved through a symlink or a non-directory.
    #[error("unsafe path {path}: {reason}; the assignment is rejected")]
    Unsafe {
        /// The path.
        path: String,
        /// Why.
        reason: String,
    },
    /// A symlink of the release the assignment would build leads outside it.
    #[error(
        "assignment {serial} is rejected, nothing was written under {root}: {source}. \
         Fix the symlink in the staging tree and publish again"
    )]
    Symlink {
        /// The assignment.
        serial: AssignmentSerial,
        /// The site root.
        root: PathBuf,
        /// Which symlink, and why.
        source: PathError,
    },
    /// Content does not have the hash the assignment says.
    #[error("{what} {path} has SHA-256 {actual}, the assignment expects {expected}")]
    HashMismatch {
        /// "base file" or "result".
        what: &'static str,
        /// The path.
        path: String,
        /// Expected hash.
        expected: Digest,
        /// Actual hash.
        actual: Digest,
    },
    /// A patch could not be applied.
    #[error("patching {path}: {source}")]
    Delta {
        /// The file.
        path: String,
        /// Why.
        source: DeltaError,
    },
    /// Commit of a release that was never applied.
    #[error("release {serial} was not applied under {root}: apply its content assignment first")]
    NotApplied {
        /// The serial.
        serial: AssignmentSerial,
        /// The site root.
        root: PathBuf,
    },
    /// The release already exists.
    #[error("release {serial} already exists under {root}: a serial is never applied twice")]
    Exists {
        /// The serial.
        serial: AssignmentSerial,
        /// The site root.
        root: PathBuf,
    },
    /// Rollback with no older release.
    #[error("no release older than {live} is kept under {root}: nothing to roll back to")]
    NoPrevious {
        /// What is live.
        live: AssignmentSerial,
        /// The site root.
        root: PathBuf,
    },
    /// Rollback to a release that is not kept.
    #[error("release {serial} is not kept under {root} (kept: {kept}): it cannot be made live again; publish instead")]
    NotKept {
        /// The release asked for.
        serial: AssignmentSerial,
        /// What is kept.
        kept: String,
        /// The site root.
        root: PathBuf,
    },
    /// Nothing is live.
    #[error("nothing is live under {root}")]
    NothingLive {
        /// The site root.
        root: PathBuf,
    },
    /// The site root is not laid out as expected.
    #[error("{0}")]
    Layout(String),
    /// A test asked for a failure here.
    #[error("injected failure before command {0}")]
    Injected(usize),
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> ReleaseError + 'a {
    move |source| ReleaseError::Io { op, path: path.to_owned(), source }
}

/// Settings of a site root.
#[derive(Debug, Clone)]
pub struct SiteOptions {
    /// Releases kept, the live one included.
    pub keep_releases: u32,
    /// Bytes that must stay free after an apply.
    pub min_free_disk: u64,
    /// Fault injection for tests: fail just before this command.
    #[doc(hidden)]
    pub fail_before_command: Option<usize>,
}

impl Default for SiteOptions {
    fn default() -> Self {
        SiteOptions { keep_releases: 3, min_free_disk: 64 << 20, fail_before_command: None }
    }
}

/// What applying built.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ApplyReport {
    /// The release built.
    pub serial: u64,
    /// Commands executed.
    pub commands: u64,
    /// Entries carried over from the base release by hard link or copy.
    pub carried_over: u64,
    /// Files written (new, patched, copied for a mode change).
    pub files_written: u64,
    /// Bytes written.
    pub bytes_written: u64,
}

/// What an assignment did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum Outcome {
    /// A release was built in `incoming/`.
    Applied(ApplyReport),
    /// A release went live.
    Committed {
        /// It.
        serial: u64,
        /// Releases deleted to keep `keep_releases`.
        pruned: Vec<u64>,
    },
    /// An incoming release was discarded.
    Aborted {
        /// It.
        serial: u64,
    },
    /// Live went back one release.
    RolledBack {
        /// Was live.
        from: u64,
        /// Is live.
        to: u64,
    },
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Outcome::Applied(r) => write!(
                f,
                "built release {}: {} commands, {} files written ({} bytes), {} entries carried over",
                r.serial, r.commands, r.files_written, r.bytes_written, r.carried_over
            ),
            Outcome::Committed { serial, pruned } if pruned.is_empty() => {
                write!(f, "release {serial} is live")
            }
            Outcome::Committed { serial, pruned } => {
                write!(
                    f,
                    "release {serial} is live; old releases {} deleted",
                    crate::protocol::ids::join(pruned)
                )
            }
            Outcome::Aborted { serial } => write!(f, "release {serial} discarded"),
            Outcome::RolledBack { from, to } => write!(f, "rolled back from release {from} to {to}"),
        }
    }
}

/// One site's directory on a back-end server. See the module docs.
#[derive(Debug, Clone)]
pub struct SiteRoot {
    root: PathBuf,
    opts: SiteOptions,
}

impl SiteRoot {
    /// A site rooted at `root` (created on first apply).
    pub fn new(root: impl Into<PathBuf>, opts: SiteOptions) -> Self {
        SiteRoot { root: root.into(), opts }
    }

    /// The site root.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Directory of release `serial`.
    pub fn release_dir(&self, serial: AssignmentSerial) -> PathBuf {
        self.root.join(RELEASES).join(serial.to_string())
    }

    /// Directory where release `serial` waits, built, for its commit.
    pub fn incoming_dir(&self, serial: AssignmentSerial) -> PathBuf {
        self.root.join(INCOMING).join(serial.to_string())
    }

    /// Directory where release `serial` is being built (renamed to
    /// [`SiteRoot::incoming_dir`] when complete).
    fn building_dir(&self, serial: AssignmentSerial) -> PathBuf {
        self.root.join(INCOMING).join(format!("{serial}.building"))
    }

    /// The live release, if any.
    pub fn live(&self) -> Result<Option<AssignmentSerial>, ReleaseError> {
        let link = self.root.join(LIVE);
        match fs::symlink_metadata(&link) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_err("inspect", &link)(e)),
            Ok(md) if !md.file_type().is_symlink() => {
                return Err(ReleaseError::Layout(format!(
                    "{} is not a symlink; move it away so that Content Mover can manage it",
                    link.display()
                )))
            }
            Ok(_) => {}
        }
        let target = fs::read_link(&link).map_err(io_err("read", &link))?;
        let serial = target
            .strip_prefix(RELEASES)
            .ok()
            .and_then(|p| p.to_str())
            .and_then(|s| s.parse::<u64>().ok())
            .ok_or_else(|| {
                ReleaseError::Layout(format!(
                    "{} points to {}, not to {RELEASES}/<serial>",
                    link.display(),
                    target.display()
                ))
            })?;
        Ok(Some(AssignmentSerial(serial)))
    }

    fn serials_in(&self, dir: &str) -> Result<Vec<AssignmentSerial>, ReleaseError> {
        let path = self.root.join(dir);
        let entries = match fs::read_dir(&path) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            r => r.map_err(io_err("list", &path))?,
        };
        let mut out = Vec::new();
        for e in entries {
            let e = e.map_err(io_err("list", &path))?;
            if let Some(n) = e.file_name().to_str().and_then(|s| s.parse::<u64>().ok()) {
                out.push(AssignmentSerial(n));
            }
        }
        out.sort();
        Ok(out)
    }

    /// Releases kept, oldest first.
    pub fn releases(&self) -> Result<Vec<AssignmentSerial>, ReleaseError> {
        self.serials_in(RELEASES)
    }

    /// Releases built and awaiting commit.
    pub fn incoming(&self) -> Result<Vec<AssignmentSerial>, ReleaseError> {
        self.serials_in(INCOMING)
    }

    /// Carries out any assignment: builds a content release, or commits,
    /// aborts or rolls back.
    pub fn execute(&self, a: &AssignmentFile) -> Result<Outcome, ReleaseError> {
        let serial = a.header.serial;
        match a.header.kind {
            Kind::Content => self.apply(a).map(Outcome::Applied),
            Kind::Commit => self.commit(serial).map(|pruned| Outcome::Committed {
                serial: serial.0,
                pruned: pruned.into_iter().map(|s| s.0).collect(),
            }),
            Kind::Abort => self.abort(serial).map(|()| Outcome::Aborted { serial: serial.0 }),
            // A rollback assignment names the release to make live again.
            Kind::Rollback => {
                self.rollback_to(serial).map(|(from, to)| Outcome::RolledBack { from: from.0, to: to.0 })
            }
        }
    }

    /// Builds release `serial` in `incoming/` from a content assignment.
    pub fn apply(&self, a: &AssignmentFile) -> Result<ApplyReport, ReleaseError> {
        a.ensure_readable()?;
        let h = &a.header;
        if h.kind != Kind::Content {
            return Err(ReleaseError::Layout(format!("assignment {} is not a content assignment", h.serial)));
        }
        let live = self.live()?;
        let base = if h.is_delta() {
            if live != Some(h.base_serial) {
                return Err(ReleaseError::BaseMismatch {
                    serial: h.serial,
                    base: h.base_serial,
                    live: live.map_or("none".into(), |s| s.to_string()),
                    root: self.root.clone(),
                });
            }
            Some(self.release_dir(h.base_serial))
        } else {
            None
        };
        let target = self.release_dir(h.serial);
        if fs::symlink_metadata(&target).is_ok() {
            return Err(ReleaseError::Exists { serial: h.serial, root: self.root.clone() });
        }
        self.check_links(a, base.as_deref())?;
        self.check_space(a, base.as_deref())?;

        for dir in [RELEASES, INCOMING] {
            let p = self.root.join(dir);
            fs::create_dir_all(&p).map_err(io_err("create", &p))?;
        }
        // Built under another name and renamed when complete and flushed:
        // `incoming/<serial>` only ever holds a whole release, so a commit
        // after a crash mid-build finds nothing to make live.
        let staging = self.incoming_dir(h.serial);
        let building = self.building_dir(h.serial);
        remove_any(&staging)?;
        remove_any(&building)?;
        let builder = Builder {
            a,
            base: base.as_deref(),
            dst: &building,
            dir_modes: BTreeMap::new(),
            tmp_seq: 0,
            report: ApplyReport { serial: h.serial.0, ..ApplyReport::default() },
            fail_before: self.opts.fail_before_command,
            written: Vec::new(),
        };
        let built = builder.run().and_then(|report| {
            fs::rename(&building, &staging).map_err(io_err("move into place", &building))?;
            let incoming = self.root.join(INCOMING);
            File::open(&incoming).and_then(|d| d.sync_all()).map_err(io_err("sync", &incoming))?;
            Ok(report)
        });
        match built {
            Ok(report) => {
                tracing::info!(
                    event = "release_built",
                    site = %self.root.display(),
                    serial = h.serial.0,
                    files_written = report.files_written,
                    bytes_written = report.bytes_written,
                    "built release"
                );
                Ok(report)
            }
            Err(e) => {
                if let Err(clean) = remove_any(&building).and_then(|()| remove_any(&staging)) {
                    tracing::error!(path = %staging.display(), error = %clean, "could not clean up a failed apply");
                }
                tracing::warn!(event = "apply_failed", site = %self.root.display(), serial = h.serial.0, error = %e);
                Err(e)
            }
        }
    }

    /// Checks, before anything is written, that every symlink of the release
    /// `a` builds resolves inside it: the base release's symlinks that stay,
    /// with the assignment's own, followed wherever they chain.
    fn check_links(&self, a: &AssignmentFile, base: Option<&Path>) -> Result<(), ReleaseError> {
        let base_links = match base {
            Some(b) => links_in(b)?,
            None => TreeLinks::new(),
        };
        links_after(base_links, &a.commands).check().map_err(|source| ReleaseError::Symlink {
            serial: a.header.serial,
            root: self.root.clone(),
            source,
        })
    }

    fn check_space(&self, a: &AssignmentFile, base: Option<&Path>) -> Result<(), ReleaseError> {
        // The sizes are the assignment's word: summed with checks, since a
        // total that wrapped round would pass any free-space check.
        let too_large = || ReleaseError::TooLarge { serial: a.header.serial, root: self.root.clone() };
        let commands = u64::try_from(a.commands.len()).map_err(|_| too_large())?;
        let mut needed = commands.checked_add(1).and_then(|n| n.checked_mul(4096)).ok_or_else(too_large)?;
        for c in &a.commands {
            let more = match c {
                Command::PutFile { size, .. } | Command::PatchFile { size, .. } => *size,
                // A mode change of a file shared with the base release copies it.
                Command::SetMode { path, .. } => base
                    .and_then(|b| fs::symlink_metadata(path.under(b)).ok())
                    .filter(|m| m.is_file())
                    .map_or(0, |m| m.len()),
                _ => 0,
            };
            needed = needed.checked_add(more).ok_or_else(too_large)?;
        }
        let mut probe = self.root.as_path();
        while fs::symlink_metadata(probe).is_err() {
            probe = match probe.parent() {
                Some(p) if !p.as_os_str().is_empty() => p,
                _ => Path::new("."),
            };
            if probe == Path::new(".") {
                break;
            }
        }
        let st = nix::sys::statvfs::statvfs(probe)
            .map_err(|e| io_err("check free space of", probe)(io::Error::from_raw_os_error(e as i32)))?;
        let available = st.blocks_available().saturating_mul(st.fragment_size());
        if available < needed.saturating_add(self.opts.min_free_disk) {
            return Err(ReleaseError::NoSpace {
                path: probe.to_owned(),
                needed,
                reserve: self.opts.min_free_disk,
                available,
            });
        }
        Ok(())
    }

    /// Makes the applied release `serial` live, then deletes releases beyond
    /// `keep_releases`. Committing the release that is already live is a no-op.
    pub fn commit(&self, serial: AssignmentSerial) -> Result<Vec<AssignmentSerial>, ReleaseError> {
        let staging = self.incoming_dir(serial);
        if !staging.is_dir() {
            let live = self.live()?;
            if live == Some(serial) {
                return Ok(Vec::new());
            }
            // A commit interrupted between moving the release into place and
            // switching `live`: finish it.
            // (Only forward: commits make a new, newer release live.)
            if live.is_none_or(|l| l < serial) && self.releases()?.contains(&serial) {
                tracing::warn!(event = "commit_resumed", site = %self.root.display(), serial = serial.0);
                self.switch_live(serial)?;
                return self.prune(serial);
            }
            return Err(ReleaseError::NotApplied { serial, root: self.root.clone() });
        }
        let target = self.release_dir(serial);
        if fs::symlink_metadata(&target).is_ok() {
            return Err(ReleaseError::Exists { serial, root: self.root.clone() });
        }
        fs::rename(&staging, &target).map_err(io_err("move into place", &staging))?;
        self.switch_live(serial)?;
        tracing::info!(event = "release_live", site = %self.root.display(), serial = serial.0, "release is live");
        self.prune(serial)
    }

    /// Discards the applied, uncommitted release `serial` (if any).
    pub fn abort(&self, serial: AssignmentSerial) -> Result<(), ReleaseError> {
        remove_any(&self.incoming_dir(serial))
    }

    /// Switches `live` to the newest release older than the live one.
    /// Returns (was live, is live).
    pub fn rollback(&self) -> Result<(AssignmentSerial, AssignmentSerial), ReleaseError> {
        let live = self.live()?.ok_or_else(|| ReleaseError::NothingLive { root: self.root.clone() })?;
        let previous = self
            .releases()?
            .into_iter()
            .filter(|s| *s < live)
            .max()
            .ok_or_else(|| ReleaseError::NoPrevious { live, root: self.root.clone() })?;
        self.switch_live(previous)?;
        tracing::info!(event = "rolled_back", site = %self.root.display(), from = live.0, to = previous.0);
        Ok((live, previous))
    }

    /// Makes the kept release `serial` live again; returns (was live, now
    /// live). Idempotent: rolling back to what is live changes nothing.
    pub fn rollback_to(
        &self,
        serial: AssignmentSerial,
    ) -> Result<(AssignmentSerial, AssignmentSerial), ReleaseError> {
        let live = self.live()?.ok_or_else(|| ReleaseError::NothingLive { root: self.root.clone() })?;
        if live == serial {
            return Ok((live, serial));
        }
        let releases = self.releases()?;
        if !releases.contains(&serial) {
            let kept = releases.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ");
            return Err(ReleaseError::NotKept { serial, kept, root: self.root.clone() });
        }
        self.switch_live(serial)?;
        tracing::info!(event = "rolled_back", site = %self.root.display(), from = live.0, to = serial.0);
        Ok((live, serial))
    }

    /// Points `live` at release `serial` atomically (new symlink renamed over the old).
    fn switch_live(&self, serial: AssignmentSerial) -> Result<(), ReleaseError> {
        let tmp = self.root.join(format!(".{LIVE}.{serial}.tmp"));
        remove_any(&tmp)?;
        symlink(format!("{RELEASES}/{serial}"), &tmp).map_err(io_err("create symlink", &tmp))?;
        let live = self.root.join(LIVE);
        fs::rename(&tmp, &live).map_err(io_err("swap", &live))?;
        File::open(&self.root).and_then(|d| d.sync_all()).map_err(io_err("sync", &self.root))
    }

    /// Deletes releases beyond `keep_releases` (never the live one), and
    /// incoming releases not newer than the one just committed.
    fn prune(&self, committed: AssignmentSerial) -> Result<Vec<AssignmentSerial>, ReleaseError> {
        let live = self.live()?;
        let releases = self.releases()?;
        let keep = self.opts.keep_releases as usize;
        let mut pruned = Vec::new();
        for (i, s) in releases.iter().rev().enumerate() {
            if i >= keep && Some(*s) != live {
                remove_any(&self.release_dir(*s))?;
                pruned.push(*s);
            }
        }
        for s in self.incoming()? {
            if s <= committed {
                remove_any(&self.incoming_dir(s))?;
            }
        }
        self.discard_interrupted_builds()?;
        Ok(pruned)
    }

    /// Deletes the `incoming/N.building` directories a crash left behind (a
    /// build is never resumed: the assignment is applied again from its
    /// start). An agent calls it at start, before any assignment. Answers
    /// the directories deleted.
    pub fn discard_interrupted_builds(&self) -> Result<Vec<PathBuf>, ReleaseError> {
        let incoming = self.root.join(INCOMING);
        let mut removed = Vec::new();
        for e in fs::read_dir(&incoming).into_iter().flatten().flatten() {
            if e.file_name().to_str().is_some_and(|n| n.ends_with(".building")) {
                remove_any(&e.path())?;
                removed.push(e.path());
            }
        }
        Ok(removed)
    }
}

/// The symlinks of the release at `dir`.
fn links_in(dir: &Path) -> Result<TreeLinks, ReleaseError> {
    let mut links = TreeLinks::new();
    for entry in walkdir::WalkDir::new(dir).min_depth(1).follow_links(false) {
        let entry = entry.map_err(|e| io_err("read", dir)(e.into()))?;
        if !entry.file_type().is_symlink() {
            continue;
        }
        let rel = entry.path().strip_prefix(dir).unwrap_or(entry.path());
        let target = fs::read_link(entry.path()).map_err(io_err("read", entry.path()))?;
        let not_utf8 =
            || unsafe_path(&rel.to_string_lossy(), "the base release has a name that is not UTF-8");
        let path = SitePath::from_relative(rel).map_err(|_| not_utf8())?;
        links.insert(&path, target.to_str().ok_or_else(not_utf8)?);
    }
    Ok(links)
}

/// Deletes a file, symlink or directory tree; absent is fine. Never follows symlinks.
fn remove_any(path: &Path) -> Result<(), ReleaseError> {
    let result = match fs::symlink_metadata(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => Err(e),
        Ok(md) if md.is_dir() => {
            // A read-only directory must be made writable to delete what is in it.
            make_tree_writable(path);
            fs::remove_dir_all(path)
        }
        Ok(_) => fs::remove_file(path),
    };
    result.map_err(io_err("delete", path))
}

fn make_tree_writable(path: &Path) {
    for e in walkdir::WalkDir::new(path).follow_links(false).into_iter().flatten() {
        if e.file_type().is_dir() {
            let _ = fs::set_permissions(e.path(), fs::Permissions::from_mode(0o700));
        }
    }
}

struct HashingWriter {
    out: BufWriter<File>,
    hash: Sha256,
    len: u64,
}

impl Write for HashingWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.out.write(buf)?;
        self.hash.update(&buf[..n]);
        self.len += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

/// Builds one release directory.
struct Builder<'a> {
    a: &'a AssignmentFile,
    base: Option<&'a Path>,
    dst: &'a Path,
    /// Directory modes, set last (deepest first) so read-only directories can be filled.
    dir_modes: BTreeMap<PathBuf, u32>,
    tmp_seq: u64,
    report: ApplyReport,
    fail_before: Option<usize>,
    /// Files written, to be flushed before the release counts as applied.
    written: Vec<PathBuf>,
}

fn unsafe_path(path: &str, reason: impl Into<String>) -> ReleaseError {
    ReleaseError::Unsafe { path: path.to_owned(), reason: reason.into() }
}

impl Builder<'_> {
    fn run(mut self) -> Result<ApplyReport, ReleaseError> {
        fs::DirBuilder::new().mode(0o700).create(self.dst).map_err(io_err("create", self.dst))?;
        self.dir_modes.insert(self.dst.to_owned(), 0o755);
        if let Some(base) = self.base {
            self.carry_over(base)?;
        }
        for (i, cmd) in self.a.commands.iter().enumerate() {
            if self.fail_before == Some(i) {
                return Err(ReleaseError::Injected(i));
            }
            self.exec(cmd)?;
            self.report.commands += 1;
        }
        for (dir, mode) in self.dir_modes.iter().rev() {
            fs::set_permissions(dir, fs::Permissions::from_mode(*mode))
                .map_err(io_err("set mode of", dir))?;
        }
        self.flush()?;
        Ok(self.report)
    }

    /// Makes the release durable before it is reported as applied: the data
    /// of every file written (flushed from a few threads at once, so that the
    /// file system can batch its journal commits), then the directory, whose
    /// fsync commits the journal holding every link, directory and rename.
    /// Only what this apply wrote is waited for, not the whole file system.
    fn flush(&mut self) -> Result<(), ReleaseError> {
        let written = std::mem::take(&mut self.written);
        let threads = written.len().clamp(1, 8);
        let per = written.len().div_ceil(threads).max(1);
        std::thread::scope(|s| {
            let workers: Vec<_> = written
                .chunks(per)
                .map(|files| {
                    s.spawn(move || {
                        for f in files {
                            File::open(f).and_then(|f| f.sync_data()).map_err(io_err("flush", f))?;
                        }
                        Ok::<(), ReleaseError>(())
                    })
                })
                .collect();
            workers.into_iter().try_for_each(|w| w.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
        })?;
        File::open(self.dst).and_then(|d| d.sync_all()).map_err(io_err("flush", self.dst))
    }

    /// Recreates the base release: directories anew, files as hard links, symlinks anew.
    fn carry_over(&mut self, base: &Path) -> Result<(), ReleaseError> {
        for entry in walkdir::WalkDir::new(base).min_depth(1).follow_links(false) {
            let entry = entry.map_err(|e| io_err("read", base)(e.into()))?;
            let rel = entry.path().strip_prefix(base).unwrap_or(entry.path());
            let to = self.dst.join(rel);
            let ft = entry.file_type();
            if ft.is_dir() {
                let mode = entry.metadata().map_err(|e| io_err("read", entry.path())(e.into()))?.mode();
                fs::DirBuilder::new().mode(0o700).create(&to).map_err(io_err("create", &to))?;
                self.dir_modes.insert(to, mode & 0o777);
            } else if ft.is_file() {
                fs::hard_link(entry.path(), &to).map_err(io_err("link", &to))?;
            } else if ft.is_symlink() {
                let target = fs::read_link(entry.path()).map_err(io_err("read", entry.path()))?;
                symlink(target, &to).map_err(io_err("create symlink", &to))?;
            } else {
                continue;
            }
            self.report.carried_over += 1;
        }
        Ok(())
    }

    /// The path of `p` in the new release, after checking that every parent
    /// is a real directory (not a symlink, not a file).
    fn target(&self, p: &SitePath) -> Result<PathBuf, ReleaseError> {
        checked(self.dst, p)?;
        Ok(p.under(self.dst))
    }

    /// The regular file `p` in the base release. With `expected`, its hash is
    /// checked first.
    fn base_file(
        &self,
        p: &SitePath,
        expected: Option<&Digest>,
    ) -> Result<(PathBuf, File, u64), ReleaseError> {
        let base =
            self.base.ok_or_else(|| unsafe_path(p.as_str(), "a full assignment has no base release"))?;
        checked(base, p)?;
        let path = p.under(base);
        let md = fs::symlink_metadata(&path).map_err(io_err("read base file", &path))?;
        if !md.is_file() {
            return Err(unsafe_path(p.as_str(), "the base entry is not a regular file"));
        }
        if let Some(expected) = expected {
            check_hash("base file", p, &path, expected)?;
        }
        let f = File::open(&path).map_err(io_err("open base file", &path))?;
        Ok((path, f, md.len()))
    }

    /// A fresh temporary name in `dir`.
    fn tmp_in(&mut self, dir: &Path) -> PathBuf {
        self.tmp_seq += 1;
        dir.join(format!(".cmover-{}.tmp", self.tmp_seq))
    }

    /// Writes a new file through `fill`, checks its length and hash, sets
    /// mode and mtime, and renames it over `target`.
    fn write_new(
        &mut self,
        p: &SitePath,
        target: &Path,
        meta: Option<&FileMeta>,
        size: u64,
        sha256: &Digest,
        fill: impl FnOnce(&mut HashingWriter) -> Result<(), ReleaseError>,
    ) -> Result<(), ReleaseError> {
        let dir = target.parent().unwrap_or(self.dst).to_owned();
        let tmp = loop {
            let tmp = self.tmp_in(&dir);
            if fs::symlink_metadata(&tmp).is_err() {
                break tmp;
            }
        };
        let result = (|| {
            let file = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&tmp)
                .map_err(io_err("create", &tmp))?;
            let mut w = HashingWriter {
                out: BufWriter::with_capacity(256 << 10, file),
                hash: Sha256::default(),
                len: 0,
            };
            fill(&mut w)?;
            w.flush().map_err(io_err("write", &tmp))?;
            let actual = w.hash.digest();
            if w.len != size || actual != *sha256 {
                return Err(ReleaseError::HashMismatch {
                    what: "result",
                    path: p.to_string(),
                    expected: *sha256,
                    actual,
                });
            }
            let file = w.out.into_inner().map_err(|e| io_err("write", &tmp)(e.into_error()))?;
            if let Some(m) = meta {
                file.set_permissions(fs::Permissions::from_mode(m.mode))
                    .map_err(io_err("set mode of", &tmp))?;
                let t = FileTime::from_unix_time(m.mtime.secs, m.mtime.nanos);
                filetime::set_file_handle_times(&file, None, Some(t))
                    .map_err(io_err("set mtime of", &tmp))?;
            }
            fs::rename(&tmp, target).map_err(io_err("move into place", target))?;
            self.written.push(target.to_owned());
            self.report.files_written += 1;
            self.report.bytes_written = self.report.bytes_written.saturating_add(size);
            Ok(())
        })();
        if result.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        result
    }

    fn exec(&mut self, cmd: &Command) -> Result<(), ReleaseError> {
        match cmd {
            Command::MakeDir { path, mode } => {
                let t = self.target(path)?;
                match fs::symlink_metadata(&t) {
                    Ok(md) if md.is_dir() => {}
                    Ok(_) => {
                        remove_any(&t)?;
                        fs::DirBuilder::new().mode(0o700).create(&t).map_err(io_err("create", &t))?;
                    }
                    Err(_) => fs::DirBuilder::new().mode(0o700).create(&t).map_err(io_err("create", &t))?,
                }
                self.dir_modes.insert(t, *mode);
            }
            Command::PutFile { path, meta, size, sha256, data } => {
                let t = self.target(path)?;
                let a = self.a;
                self.write_new(path, &t, Some(meta), *size, sha256, |w| {
                    let mut src = a.section(data);
                    io::copy(&mut src, w).map_err(io_err("write", &t))?;
                    Ok(())
                })?;
            }
            Command::PatchFile { path, base, base_sha256, meta, size, sha256, data } => {
                let t = self.target(path)?;
                // The result's hash covers the base: its own hash is computed
                // only to name the culprit when the result is wrong.
                let (base_path, mut base_file, base_len) = self.base_file(base, None)?;
                let a = self.a;
                let result = self.write_new(path, &t, Some(meta), *size, sha256, |w| {
                    let mut ops = a.section(data);
                    delta::apply(&mut ops, &mut base_file, base_len, w, *size)
                        .map_err(|source| ReleaseError::Delta { path: path.to_string(), source })
                });
                if result.is_err() {
                    check_hash("base file", base, &base_path, base_sha256)?;
                }
                result?;
            }
            Command::Remove { path } => {
                let t = self.target(path)?;
                remove_any(&t)?;
                self.dir_modes.retain(|dir, _| !dir.starts_with(&t));
            }
            Command::Rename { from, to, sha256 } => {
                let (src, _, _) = self.base_file(from, Some(sha256))?;
                let t = self.target(to)?;
                let tmp = self.tmp_in(t.parent().unwrap_or(self.dst));
                fs::hard_link(&src, &tmp).map_err(io_err("link", &tmp))?;
                if let Err(e) = fs::rename(&tmp, &t) {
                    let _ = fs::remove_file(&tmp);
                    return Err(io_err("move into place", &t)(e));
                }
            }
            Command::SetMode { path, mode, mtime } => {
                let t = self.target(path)?;
                let md = fs::symlink_metadata(&t).map_err(io_err("read", &t))?;
                if md.is_dir() {
                    self.dir_modes.insert(t, *mode);
                } else if md.is_file() {
                    let meta = FileMeta {
                        mode: *mode,
                        mtime: mtime.unwrap_or(crate::protocol::assignment::Mtime {
                            secs: md.mtime(),
                            nanos: md.mtime_nsec().clamp(0, 999_999_999) as u32,
                        }),
                    };
                    if md.nlink() == 1 {
                        // Written by this apply: nobody else sees this inode.
                        fs::set_permissions(&t, fs::Permissions::from_mode(*mode))
                            .map_err(io_err("set mode of", &t))?;
                        let when = FileTime::from_unix_time(meta.mtime.secs, meta.mtime.nanos);
                        filetime::set_file_mtime(&t, when).map_err(io_err("set mtime of", &t))?;
                        return Ok(());
                    }
                    // Shared with the base release: copy it rather than change a live inode.
                    let sha = hash_file(&t).map_err(io_err("read", &t))?;
                    let src = t.clone();
                    self.write_new(path, &t, Some(&meta), md.len(), &sha, |w| {
                        let mut f = File::open(&src).map_err(io_err("read", &src))?;
                        io::copy(&mut f, w).map_err(io_err("copy", &src))?;
                        Ok(())
                    })?;
                } else {
                    return Err(unsafe_path(path.as_str(), "cannot set the mode of a symlink"));
                }
            }
            Command::Symlink { path, target } => {
                let t = self.target(path)?;
                let tmp = self.tmp_in(t.parent().unwrap_or(self.dst));
                symlink(target, &tmp).map_err(io_err("create symlink", &tmp))?;
                if let Err(e) = fs::rename(&tmp, &t) {
                    let _ = fs::remove_file(&tmp);
                    return Err(io_err("move into place", &t)(e));
                }
            }
        }
        Ok(())
    }
}

fn check_hash(what: &'static str, p: &SitePath, path: &Path, expected: &Digest) -> Result<(), ReleaseError> {
    let actual = hash_file(path).map_err(io_err("read", path))?;
    if actual != *expected {
        return Err(ReleaseError::HashMismatch { what, path: p.to_string(), expected: *expected, actual });
    }
    Ok(())
}

/// Checks that every proper ancestor of `p` under `root` is a real directory.
fn checked(root: &Path, p: &SitePath) -> Result<(), ReleaseError> {
    for a in p.ancestors() {
        match fs::symlink_metadata(root.join(a)) {
            Ok(md) if md.file_type().is_symlink() => {
                return Err(unsafe_path(p.as_str(), format!("its parent {a} is a symlink")));
            }
            Ok(md) if !md.is_dir() => {
                return Err(unsafe_path(p.as_str(), format!("its parent {a} is not a directory")));
            }
            Ok(_) => {}
            Err(_) => return Err(unsafe_path(p.as_str(), format!("its parent {a} does not exist"))),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn site(root: &Path) -> SiteRoot {
        SiteRoot::new(root, SiteOptions { min_free_disk: 0, ..SiteOptions::default() })
    }

    /// Every path under `root` with its kind and link target: what a refused
    /// commit must leave exactly as it was.
    fn snapshot(root: &Path) -> Vec<(PathBuf, bool, Option<PathBuf>)> {
        walkdir::WalkDir::new(root)
            .sort_by_file_name()
            .into_iter()
            .flatten()
            .map(|e| (e.path().to_owned(), e.file_type().is_dir(), fs::read_link(e.path()).ok()))
            .collect()
    }

    /// DESIGN §4 "Only targets": a commit switches only a server that built
    /// the run's release. On a server that never got the content (not a
    /// target) the commit is refused and the site directory is not created.
    #[test]
    fn builds_a_crash_interrupted_are_deleted_at_start() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("www");
        fs::create_dir_all(root.join("incoming/7.building/sub")).unwrap();
        fs::write(root.join("incoming/7.building/sub/f"), b"half").unwrap();
        fs::create_dir_all(root.join("incoming/6")).unwrap();
        let removed = site(&root).discard_interrupted_builds().unwrap();
        assert_eq!(removed, vec![root.join("incoming/7.building")]);
        assert!(!root.join("incoming/7.building").exists());
        assert!(root.join("incoming/6").is_dir(), "a complete release waiting for its commit stays");
        // A site with no incoming directory at all is fine.
        assert!(site(&dir.path().join("new")).discard_interrupted_builds().unwrap().is_empty());
    }

    #[test]
    fn only_targets_a_commit_without_a_built_release_is_refused_and_creates_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("sites/bsite");
        let err = site(&root).commit(AssignmentSerial(7)).unwrap_err();
        assert!(matches!(err, ReleaseError::NotApplied { serial: AssignmentSerial(7), .. }), "{err}");
        assert!(fs::symlink_metadata(dir.path().join("sites")).is_err(), "nothing created");
        assert!(site(&root).abort(AssignmentSerial(7)).is_ok());
        assert!(fs::symlink_metadata(dir.path().join("sites")).is_err(), "an abort creates nothing either");
    }

    /// A commit for a serial whose `incoming/<serial>` was never completed
    /// (only a `.building` directory, or another serial) is refused and
    /// changes nothing: the live release stays.
    #[test]
    fn a_commit_of_a_release_not_built_here_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("www");
        fs::create_dir_all(root.join("releases/1")).unwrap();
        fs::write(root.join("releases/1/index.html"), b"one").unwrap();
        symlink("releases/1", root.join(LIVE)).unwrap();
        fs::create_dir_all(root.join("incoming/2.building")).unwrap();
        fs::create_dir_all(root.join("incoming/3")).unwrap();
        let before = snapshot(&root);
        for serial in [2, 4] {
            let err = site(&root).commit(AssignmentSerial(serial)).unwrap_err();
            assert!(matches!(err, ReleaseError::NotApplied { .. }), "{err}");
            assert_eq!(snapshot(&root), before, "commit {serial} changed the site");
        }
        assert_eq!(site(&root).live().unwrap(), Some(AssignmentSerial(1)));
        // The release that was built here goes live.
        site(&root).commit(AssignmentSerial(3)).unwrap();
        assert_eq!(site(&root).live().unwrap(), Some(AssignmentSerial(3)));
    }
}
