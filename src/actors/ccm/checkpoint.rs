//! Checkpoints of a site's live release, made from the CCM's shadow copy
//! off the actor's thread.

use actix::prelude::*;

use super::store::table;
use super::{Ccm, CcmError, WorkError};
use crate::clock::unix_ms;
use crate::protocol::ids;
use crate::protocol::run::PlanError;
use crate::storage::checkpoint::CheckpointInfo;
use crate::storage::records::{HistoryKind, SiteRecord};

/// Makes a checkpoint of a site's live release; answers its description.
#[derive(Message)]
#[rtype(result = "Result<CheckpointInfo, CcmError>")]
pub struct CreateCheckpoint {
    /// The site.
    pub site: String,
}

impl Handler<CreateCheckpoint> for Ccm {
    type Result = ResponseActFuture<Self, Result<CheckpointInfo, CcmError>>;

    fn handle(&mut self, msg: CreateCheckpoint, _: &mut Context<Self>) -> Self::Result {
        let prepared = (|| {
            let site = table::<SiteRecord>(&self.db)
                .get(&msg.site)?
                .ok_or(CcmError::NotFound { what: "site", name: msg.site.clone() })?;
            if site.live_serial == 0 {
                return Err(CcmError::Plan(PlanError::NoLiveRelease { site: site.name }));
            }
            Ok((site, self.db.next("checkpoint")?))
        })();
        let (site, id) = match prepared {
            Ok(p) => p,
            Err(e) => return Box::pin(actix::fut::ready(Err(e))),
        };
        let live = self.shadow(&site.name).root().join(crate::storage::releases::LIVE);
        let checkpoints = self.checkpoints();
        let keep = self.config.ccm.keep_checkpoints as usize;
        let name = site.name.clone();
        let work = move || -> Result<(CheckpointInfo, Vec<u64>), WorkError> {
            // `live` is a symbolic link to the release directory.
            let tree = std::fs::canonicalize(&live).map_err(|source| WorkError::Io { path: live, source })?;
            let info = checkpoints.create(&name, id, site.live_serial, &tree, unix_ms())?;
            let pruned = checkpoints.prune(&name, keep)?;
            Ok((info, pruned))
        };
        let site = msg.site;
        Box::pin(
            async move {
                let done = tokio::task::spawn_blocking(work).await;
                done.map_err(|e| WorkError::Stopped { error: e.to_string() })?
            }
            .into_actor(self)
            .map(move |res, act, _| match res {
                Ok((info, pruned)) => {
                    let pruned = if pruned.is_empty() {
                        String::new()
                    } else {
                        format!("; deleted checkpoints {}", ids::join(&pruned))
                    };
                    act.history(
                        HistoryKind::CheckpointCreated,
                        format!(
                            "checkpoint {} of {} at release {} ({} files, {} bytes){pruned}",
                            info.id, info.site, info.serial, info.files, info.bytes
                        ),
                        None,
                        Some(&info.site),
                    );
                    let _ = act.db.flush();
                    Ok(info)
                }
                Err(source) => Err(CcmError::Checkpoint { site, source: Box::new(source) }),
            }),
        )
    }
}
