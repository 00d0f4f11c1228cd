//! The controller's blocking work, run off the actor's thread: the trees a
//! content assignment is built from, and bringing the shadow copy along
//! once servers went live.

use std::io;
use std::path::{Path, PathBuf};

use thiserror::Error;

use crate::protocol::crypto::ContentKey;
use crate::protocol::ids::AssignmentSerial;
use crate::protocol::paths::{PathError, SitePath};
use crate::protocol::run::{SiteUpdate, Source};
use crate::storage::assignment_file::{AssignmentError, AssignmentFile};
use crate::storage::checkpoint::{CheckpointError, Checkpoints};
use crate::storage::releases::{ReleaseError, SiteRoot};
use crate::storage::tree::ScanError;

/// Why the trees of a run or the shadow copy could not be made.
#[derive(Debug, Error)]
pub enum WorkError {
    /// A path the job names is not a path inside the site.
    #[error("path {path:?} of the job: {source}")]
    JobPath {
        /// The path as the job gives it.
        path: String,
        /// Why it is refused.
        source: PathError,
    },
    /// The live tree could not be linked.
    #[error(transparent)]
    Tree(#[from] ScanError),
    /// A directory could not be made.
    #[error("cannot create {}: {source}", path.display())]
    Io {
        /// The directory.
        path: PathBuf,
        /// What the system said.
        source: io::Error,
    },
    /// A checkpoint could not be read.
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    /// The content assignment could not be read.
    #[error(transparent)]
    Assignment(#[from] AssignmentError),
    /// The shadow copy's releases refused the change.
    #[error(transparent)]
    Release(#[from] ReleaseError),
    /// The blocking task stopped before it finished.
    #[error("the CCM's work task stopped: {error}")]
    Stopped {
        /// How.
        error: String,
    },
}

/// Builds the new tree of a run (in a blocking task); returns its root.
pub type Prepare = Box<dyn FnOnce() -> Result<PathBuf, WorkError> + Send>;

/// Where a run's old and new trees come from.
pub struct Trees {
    /// The shadow copy's live tree.
    pub live: PathBuf,
    /// An empty tree (for a full assignment).
    pub nothing: PathBuf,
    /// Scratch space of this run.
    pub work: PathBuf,
    /// The staging directory.
    pub staging: PathBuf,
    /// The site's checkpoints.
    pub checkpoints: Checkpoints,
    /// The site.
    pub site: String,
    /// `hot`, `remove`: the paths.
    pub paths: Vec<String>,
}

/// A tree of hard links to `paths` of `live` (`keep`) or to all but them.
fn subtree(live: &Path, dest: &Path, paths: &[String], keep: bool) -> Result<(), WorkError> {
    let paths = paths
        .iter()
        .map(|p| {
            SitePath::new(p.trim_matches('/'))
                .map_err(|source| WorkError::JobPath { path: p.clone(), source })
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(crate::storage::tree::link_subtree(live, dest, &paths, keep)?)
}

/// The old tree (what the servers hold: the live tree for a delta, nothing
/// for a full assignment) and how to make the new one, for `source`.
pub fn trees(source: Source, base: u64, t: Trees) -> (PathBuf, Prepare) {
    let Trees { live, nothing, work, staging, checkpoints, site, paths } = t;
    let held = if base == 0 { nothing.clone() } else { live.clone() };
    match source {
        Source::Shadow => (nothing, Box::new(move || Ok(live))),
        Source::ShadowPaths => (nothing, Box::new(move || subtree(&live, &work, &paths, true).map(|_| work))),
        Source::ShadowWithout => (held, Box::new(move || subtree(&live, &work, &paths, false).map(|_| work))),
        Source::Checkpoint(id) => (
            held,
            Box::new(move || {
                let _ = std::fs::remove_dir_all(&work);
                if let Some(parent) = work.parent() {
                    std::fs::create_dir_all(parent)
                        .map_err(|source| WorkError::Io { path: parent.to_owned(), source })?;
                }
                checkpoints.extract(&site, id, &work)?;
                Ok(work)
            }),
        ),
        Source::Staging | Source::Held => (held, Box::new(move || Ok(staging))),
    }
}

/// Brings the shadow copy to what the servers now serve: the content
/// assignment applied and committed, or a switch to a release it holds.
pub fn update_shadow(
    shadow: &SiteRoot,
    update: SiteUpdate,
    serial: u64,
    content: &Path,
    key: Option<&ContentKey>,
) -> Result<(), WorkError> {
    match update {
        SiteUpdate::SwitchTo => {
            shadow.rollback_to(AssignmentSerial(serial))?;
        }
        SiteUpdate::Apply => {
            let file = AssignmentFile::open(content, key)?;
            shadow.apply(&file)?;
            shadow.commit(AssignmentSerial(serial))?;
        }
    }
    Ok(())
}
