//! AssignmentCreator: builds a run's assignments off the actor threads.
//!
//! A content assignment is the change from the site's shadow copy (what is
//! live) to its staging tree, packed by `storage::pack` on a blocking
//! thread; commit and abort assignments are header-only. Files are written
//! under `data_dir/assignments/<id>.cma` and flushed to disk before they are
//! reported, since the CCM acknowledges them to others.

use std::fs::File;
use std::path::{Path, PathBuf};

use actix::prelude::*;
use thiserror::Error;

use crate::protocol::assignment::{encode_control, Header, Kind};
use crate::protocol::crypto::ContentKey;
use crate::protocol::ids::{AssignmentId, AssignmentSerial, JobId};
use crate::protocol::paths::SiteName;
use crate::storage::assignment_file::assignment_path;
use crate::storage::pack::{pack, PackError, PackOptions, PackSummary};
use crate::storage::tree::{hash_file, TreeFilter};

/// Why an assignment could not be made.
#[derive(Debug, Error)]
pub enum CreateError {
    /// Packing failed (staging unreadable, a bad symlink…).
    #[error(transparent)]
    Pack(#[from] PackError),
    /// Writing or flushing the file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The blocking task died.
    #[error("the packing task failed: {0}")]
    Task(String),
}

/// An assignment file ready to distribute.
#[derive(Debug, Clone)]
pub struct Created {
    /// Its path.
    pub path: PathBuf,
    /// Its size.
    pub size: u64,
    /// SHA-256 of the whole file, hex.
    pub sha256: String,
    /// What went into it (content assignments).
    pub summary: Option<PackSummary>,
}

/// Builds the content assignment `id` turning `shadow` into `staging`.
#[derive(Message)]
#[rtype(result = "Result<Created, CreateError>")]
pub struct CreateContent {
    /// Cluster-wide id of the file.
    pub id: AssignmentId,
    /// Site, serial, base and the rest of the packing options.
    pub options: PackOptions,
    /// The shadow copy (the live tree), possibly missing.
    pub shadow: PathBuf,
    /// The staging tree.
    pub staging: PathBuf,
}

/// Builds a header-only assignment (commit, abort, rollback).
#[derive(Message)]
#[rtype(result = "Result<Created, CreateError>")]
pub struct CreateControl {
    /// Cluster-wide id of the file.
    pub id: AssignmentId,
    /// Commit, abort or rollback.
    pub kind: Kind,
    /// The site.
    pub site: SiteName,
    /// The release concerned.
    pub serial: AssignmentSerial,
    /// The job.
    pub job: JobId,
    /// Now, Unix ms.
    pub created_ms: u64,
}

/// The actor. See the module docs.
#[derive(Debug)]
pub struct AssignmentCreator {
    dir: PathBuf,
}

impl AssignmentCreator {
    /// Writes assignments into `dir` (created if missing).
    pub fn new(dir: PathBuf) -> Self {
        AssignmentCreator { dir }
    }
}

impl Actor for AssignmentCreator {
    type Context = Context<Self>;
}

/// Off the actor thread: writes assignment `id` under `dir` with `write`,
/// then flushes it and measures and hashes it.
fn create(
    dir: PathBuf,
    id: AssignmentId,
    write: impl FnOnce(&Path) -> Result<Option<PackSummary>, CreateError> + Send + 'static,
) -> ResponseFuture<Result<Created, CreateError>> {
    Box::pin(async move {
        tokio::task::spawn_blocking(move || {
            std::fs::create_dir_all(&dir).map_err(|source| CreateError::Io { path: dir.clone(), source })?;
            let path = assignment_path(&dir, id);
            let summary = write(&path)?;
            let io = |source| CreateError::Io { path: path.clone(), source };
            File::open(&path).and_then(|f| f.sync_all()).map_err(io)?;
            let size = std::fs::metadata(&path).map_err(io)?.len();
            let sha256 = hash_file(&path).map_err(io)?.to_string();
            Ok(Created { path, size, sha256, summary })
        })
        .await
        .map_err(|e| CreateError::Task(e.to_string()))?
    })
}

impl Handler<CreateContent> for AssignmentCreator {
    type Result = ResponseFuture<Result<Created, CreateError>>;

    fn handle(&mut self, msg: CreateContent, _: &mut Context<Self>) -> Self::Result {
        create(self.dir.clone(), msg.id, move |path| {
            Ok(Some(pack(&msg.shadow, &msg.staging, path, &msg.options)?))
        })
    }
}

impl Handler<CreateControl> for AssignmentCreator {
    type Result = ResponseFuture<Result<Created, CreateError>>;

    fn handle(&mut self, msg: CreateControl, _: &mut Context<Self>) -> Self::Result {
        create(self.dir.clone(), msg.id, move |path| {
            let header = Header::control(msg.kind, msg.site, msg.serial, msg.job, msg.created_ms);
            std::fs::write(path, encode_control(&header))
                .map_err(|source| CreateError::Io { path: path.to_owned(), source })?;
            Ok(None)
        })
    }
}

/// Packing options for a site from the configuration and a job's policy (made now).
pub fn pack_options(
    config: &crate::config::Config,
    site: SiteName,
    serial: u64,
    base: u64,
    job: JobId,
    key: Option<(ContentKey, [u8; 32])>,
    policy: &crate::storage::records::Policy,
) -> Result<PackOptions, PackError> {
    let include: Vec<String> = config.content.include.iter().chain(&policy.include).cloned().collect();
    let exclude: Vec<String> = config.content.exclude.iter().chain(&policy.exclude).cloned().collect();
    Ok(PackOptions {
        site,
        serial: AssignmentSerial(serial),
        base_serial: AssignmentSerial(base),
        job_id: job,
        created_ms: crate::clock::unix_ms(),
        filter: TreeFilter::new(&include, &exclude)?,
        incompressible: config.content.incompressible.iter().map(|e| e.to_ascii_lowercase()).collect(),
        compression: TreeFilter::new(&policy.compress_include, &policy.compress_exclude)?,
        min_compression_gain: config.content.min_compression_gain,
        encrypt: key,
    })
}
