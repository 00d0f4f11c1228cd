//! Making a run's assignments with the `AssignmentCreator`: the content
//! assignment from the trees the plan names, and the header-only commit,
//! abort and switch assignments.

use std::path::PathBuf;

use actix::prelude::*;
use thiserror::Error;

use super::store::table;
use super::{work, Ccm};
use crate::actors::assignment_creator::{pack_options, CreateContent, CreateControl, CreateError, Created};
use crate::clock::unix_ms;
use crate::protocol::assignment::Kind;
use crate::protocol::ids::{AssignmentId, AssignmentSerial, RunId};
use crate::protocol::paths::{PathError, SiteName};
use crate::protocol::run::{Plan, Wave};
use crate::storage::db::DbError;
use crate::storage::pack::{PackError as OptionsError, PackOptions};
use crate::storage::records::{AssignmentRecord, JobKind, JobRecord, Policy, SiteRecord};

/// Why a run's content assignment could not be made.
#[derive(Debug, Error)]
pub enum PackError {
    /// The database failed.
    #[error(transparent)]
    Db(#[from] DbError),
    /// The job names a site that is not a valid name.
    #[error("site name {site:?}: {source}")]
    SiteName {
        /// The name.
        site: String,
        /// Why it is refused.
        source: PathError,
    },
    /// The site was deleted while the run started.
    #[error("site {site} is gone; create it again or delete the job")]
    SiteGone {
        /// The site.
        site: String,
    },
    /// Encryption is on, but there is no randomness for its salt.
    #[error("no system randomness for the encryption salt")]
    NoRandomness,
    /// Encryption is on, but the cluster secret gives no key.
    #[error("the cluster secret gives no content key; check ccm.secret_file")]
    NoContentKey,
    /// The packing options are wrong (include/exclude patterns…).
    #[error(transparent)]
    Options(#[from] OptionsError),
    /// The trees could not be prepared.
    #[error(transparent)]
    Work(#[from] work::WorkError),
    /// The assignment creator failed.
    #[error(transparent)]
    Create(#[from] CreateError),
    /// A task or the assignment creator stopped.
    #[error("the {what} stopped: {error}")]
    Stopped {
        /// Which.
        what: &'static str,
        /// How.
        error: String,
    },
}

/// The assignment kind of a wave.
pub(super) fn wave_kind(wave: Wave) -> Kind {
    match wave {
        Wave::Content => Kind::Content,
        Wave::Commit => Kind::Commit,
        Wave::Abort => Kind::Abort,
        Wave::Switch => Kind::Rollback,
    }
}

impl Ccm {
    /// Packs the run's content assignment off the actor's thread.
    pub(super) fn pack(&mut self, id: RunId, ctx: &mut Context<Self>) {
        let Some(d) = self.runs.get(&id) else { return };
        let (plan, job) = (d.run.plan().clone(), d.job.clone());
        let prepared = self.pack_request(id, &plan, &job);
        let creator = self.creator.clone();
        async move {
            let (aid, old, prepare, options) = prepared?;
            let stopped =
                |what| move |e: &dyn std::fmt::Display| PackError::Stopped { what, error: e.to_string() };
            let new =
                tokio::task::spawn_blocking(prepare).await.map_err(|e| stopped("packing task")(&e))??;
            let msg = CreateContent { id: aid, options, shadow: old, staging: new };
            let created = creator.send(msg).await.map_err(|e| stopped("assignment creator")(&e))??;
            Ok::<_, PackError>((aid, created))
        }
        .into_actor(self)
        .map(move |res, act, ctx| {
            let _ = std::fs::remove_dir_all(act.work_dir(id));
            match res {
                Ok((aid, created)) => act.packed(id, aid, created, ctx),
                Err(e) => act.feed(id, ctx, |run, _| run.handle_failed(format!("packing failed: {e}"))),
            }
        })
        .spawn(ctx);
    }

    /// What packing needs: the assignment id, the old tree, how to make the
    /// new one, the options.
    fn pack_request(
        &self,
        id: RunId,
        plan: &Plan,
        job: &JobRecord,
    ) -> Result<(AssignmentId, PathBuf, work::Prepare, PackOptions), PackError> {
        let aid = AssignmentId(self.db.next("assignment")?);
        let name = SiteName::new(&job.site)
            .map_err(|source| PackError::SiteName { site: job.site.clone(), source })?;
        let key = if job.policy.encrypt.unwrap_or(self.config.ccm.encrypt) {
            let mut salt = [0u8; 32];
            ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut salt)
                .map_err(|_| PackError::NoRandomness)?;
            Some((self.content_key().ok_or(PackError::NoContentKey)?, salt))
        } else {
            None
        };
        // Remove and hot runs pack what is live, unfiltered by the job.
        let policy = if matches!(job.kind, JobKind::Remove | JobKind::Hot) {
            Policy::default()
        } else {
            job.policy.clone()
        };
        let options = pack_options(&self.config, name, plan.serial, plan.base, job.id, key, &policy)?;
        let staging = table::<SiteRecord>(&self.db)
            .get(&job.site)?
            .map(|s| s.staging)
            .ok_or_else(|| PackError::SiteGone { site: job.site.clone() })?;
        let trees = work::Trees {
            live: self.shadow(&job.site).root().join(crate::storage::releases::LIVE),
            nothing: self.config.ccm.data_dir.join("nothing"),
            work: self.work_dir(id),
            staging,
            checkpoints: self.checkpoints(),
            site: job.site.clone(),
            paths: job.params.paths.clone(),
        };
        let (old, prepare) = work::trees(plan.source, plan.base, trees);
        Ok((aid, old, prepare, options))
    }

    fn work_dir(&self, id: RunId) -> PathBuf {
        self.config.ccm.data_dir.join("work").join(format!("run-{id}"))
    }

    fn packed(&mut self, id: RunId, aid: AssignmentId, created: Created, ctx: &mut Context<Self>) {
        let Some(d) = self.runs.get_mut(&id) else { return };
        let summary = created.summary.clone().unwrap_or_default();
        tracing::info!(event = "packed", run = id.0, assignment = aid.0, bytes = created.size, summary = %summary);
        d.record.summary = created.summary.clone();
        if d.run.cancelled() || summary.commands == 0 {
            let _ = std::fs::remove_file(&created.path);
            return self.feed(id, ctx, |run, now| run.handle_packed(now, aid, summary.commands));
        }
        let rec = AssignmentRecord {
            id: aid,
            site: d.record.site.clone(),
            serial: d.record.serial,
            kind: Wave::Content,
            run: id,
            size: created.size,
            sha256: created.sha256,
            created_ms: unix_ms(),
        };
        d.record.content_assignment = Some(aid);
        if let Err(e) = table::<AssignmentRecord>(&self.db).put(&rec) {
            return self.feed(id, ctx, |run, _| run.handle_failed(e.to_string()));
        }
        d.assignment = Some(rec);
        self.by_assignment.insert(aid, id);
        self.feed(id, ctx, |run, now| run.handle_packed(now, aid, summary.commands));
    }

    /// Makes the header-only assignment of `wave`.
    pub(super) fn make_control(&mut self, id: RunId, wave: Wave, ctx: &mut Context<Self>) {
        let Some(d) = self.runs.get(&id) else { return };
        let (site, serial, job) = (d.record.site.clone(), d.record.serial, d.record.job);
        let aid = match self.db.next("assignment") {
            Ok(a) => AssignmentId(a),
            Err(e) => return self.feed(id, ctx, |run, _| run.handle_failed(e.to_string())),
        };
        let Ok(name) = SiteName::new(&site) else { return };
        let msg = CreateControl {
            id: aid,
            kind: wave_kind(wave),
            site: name,
            serial: AssignmentSerial(serial),
            job,
            created_ms: unix_ms(),
        };
        self.creator
            .send(msg)
            .into_actor(self)
            .map(move |res, act, ctx| {
                let created = match res.map_err(|e| e.to_string()).and_then(|r| r.map_err(|e| e.to_string()))
                {
                    Ok(c) => c,
                    Err(e) => {
                        let e = format!("cannot make the {} assignment: {e}", wave_kind(wave).name());
                        return act.feed(id, ctx, |run, _| run.handle_failed(e));
                    }
                };
                let rec = AssignmentRecord {
                    id: aid,
                    site,
                    serial,
                    kind: wave,
                    run: id,
                    size: created.size,
                    sha256: created.sha256,
                    created_ms: unix_ms(),
                };
                if let Err(e) = table::<AssignmentRecord>(&act.db).put(&rec).and_then(|_| act.db.flush()) {
                    tracing::error!(error = %e, "cannot record the assignment");
                }
                let Some(d) = act.runs.get_mut(&id) else { return };
                d.record.control_assignment = Some(aid);
                d.assignment = Some(rec);
                act.by_assignment.insert(aid, id);
                act.feed(id, ctx, |run, now| run.handle_assignment_made(now, wave, aid));
            })
            .spawn(ctx);
    }
}
