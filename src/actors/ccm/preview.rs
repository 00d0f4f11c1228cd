//! What a run of a job would do now, without starting it (`GET
//! /api/v1/jobs/{id}/plan`, `cmover job plan`): the run core's plan, the
//! run in progress it would wait for, and for a publish the trees whose
//! difference it would send (compared by the caller, off the actor).

use std::path::PathBuf;

use actix::prelude::*;

use super::{Ccm, CcmError};
use crate::protocol::ids::{JobId, RunId};
use crate::protocol::run::{Plan, PlanError, Source};
use crate::storage::records::JobRecord;
use crate::storage::tree::TreeFilter;

/// Asks what a run of `job` would do now.
#[derive(Message)]
#[rtype(result = "Result<Preview, CcmError>")]
pub struct PreviewRun {
    /// The job.
    pub job: JobId,
}

/// What a run of a job would do now.
#[derive(Debug)]
pub struct Preview {
    /// The job.
    pub job: JobRecord,
    /// The plan, or why the job cannot run now.
    pub plan: Result<Plan, PlanError>,
    /// The run in progress a run now would conflict with.
    pub busy: Option<RunId>,
    /// A publish: the live tree (the shadow copy; empty for a first
    /// release), staging, and which entries are content.
    pub compare: Option<(PathBuf, PathBuf, TreeFilter)>,
}

impl Handler<PreviewRun> for Ccm {
    type Result = Result<Preview, CcmError>;

    fn handle(&mut self, msg: PreviewRun, _: &mut Context<Self>) -> Self::Result {
        let (job, site, plan) = self.plan_of(msg.job)?;
        let busy =
            plan.as_ref().ok().and_then(|p| self.conflicting(job.id, &site.name, &p.targets)).map(|r| r.id);
        let compare = match &plan {
            Ok(p) if p.source == Source::Staging => {
                let old = if p.base == 0 {
                    self.config.ccm.data_dir.join("nothing")
                } else {
                    self.shadow(&site.name).root().join(crate::storage::releases::LIVE)
                };
                let c = &self.config.content;
                let include: Vec<String> = c.include.iter().chain(&job.policy.include).cloned().collect();
                let exclude: Vec<String> = c.exclude.iter().chain(&job.policy.exclude).cloned().collect();
                let filter = TreeFilter::new(&include, &exclude)?;
                Some((old, site.staging.clone(), filter))
            }
            _ => None,
        };
        Ok(Preview { job, plan, busy, compare })
    }
}
