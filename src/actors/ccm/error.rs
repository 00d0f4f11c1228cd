//! What the CCM answers when it refuses or fails a request.

use thiserror::Error;

use super::WorkError;
use crate::protocol::ids::{JobId, RunId};
use crate::protocol::run::{CancelError, PlanError};
use crate::storage::db::DbError;
use crate::storage::records::RunState;

/// Why the CCM refused or failed something; the API maps these to 4xx/5xx.
#[derive(Debug, Error)]
pub enum CcmError {
    /// Something named does not exist.
    #[error("{what} {name:?} does not exist")]
    NotFound {
        /// What kind of thing.
        what: &'static str,
        /// Its name or id.
        name: String,
    },
    /// Another run of the site is in progress on some of the same servers.
    #[error(
        "run {run} of site {site} (job {job}) is in progress on the same servers; wait for it or cancel it"
    )]
    RunInProgress {
        /// The run in progress.
        run: RunId,
        /// The site.
        site: String,
        /// Its job.
        job: JobId,
    },
    /// The job cannot run now.
    #[error(transparent)]
    Plan(#[from] PlanError),
    /// The run cannot be cancelled now.
    #[error(transparent)]
    Cancel(#[from] CancelError),
    /// The run is over.
    #[error("run {run} is over ({state})")]
    RunOver {
        /// The run.
        run: RunId,
        /// How it ended.
        state: RunState,
    },
    /// A checkpoint could not be made or read.
    #[error("checkpoint of site {site}: {source}")]
    Checkpoint {
        /// The site.
        site: String,
        /// What went wrong.
        source: Box<WorkError>,
    },
    /// The content filter (`content.include`/`exclude` and the job's) is wrong.
    #[error("the content filter: {0}")]
    Filter(#[from] crate::storage::tree::ScanError),
    /// The database failed.
    #[error(transparent)]
    Db(#[from] DbError),
}

impl CcmError {
    /// True when the request conflicts with the state (HTTP 409).
    pub fn is_conflict(&self) -> bool {
        match self {
            CcmError::RunInProgress { .. } | CcmError::Cancel(_) | CcmError::RunOver { .. } => true,
            CcmError::Checkpoint { .. } => true,
            CcmError::Plan(p) => {
                !matches!(p, PlanError::MissingParam { .. } | PlanError::NoCheckpoint { .. })
            }
            _ => false,
        }
    }
}
