//! Operations integrations: what the Content Mover tells the load balancers
//! and caches in front of the farm, and the commands each server runs
//! around a commit.
//!
//! - [`lb`]: the `LoadBalancer` actor (CCM) keeps every server's place in
//!   rotation in line with whether it is in sync, through a [`lb::LbDriver`]:
//!   [`haproxy`] (runtime API on the admin socket) or a webhook.
//! - [`cache`]: the `CacheInvalidator` actor (CCM) purges the changed URLs
//!   after a commit (HTTP `PURGE`, and/or a webhook with the list).
//! - [`webhook`]: signed JSON POSTs, retried with backoff.
//! - [`hooks`]: pre- and post-commit commands on a server, with a timeout.
//! - [`config`]: the `[lb]`, `[cache]`, `[webhook]` and `[hooks]` sections.
//!
//! Every action of the CCM's actors is appended to the history (kinds
//! `lb_out`, `lb_in`, `lb_failed`, `cache_purged`, `cache_failed`), and
//! counted in the metrics ([`crate::metrics`]).

pub mod cache;
pub mod config;
pub mod haproxy;
pub mod hooks;
pub mod lb;
pub mod webhook;

use actix::{Actor, Recipient};

use crate::config::{Config, ConfigError};

use crate::clock::unix_ms;
use crate::protocol::ids::RunId;
use crate::storage::db::Db;
use crate::storage::records::{HistoryKind, HistoryRecord, RunRecord};

pub use crate::actors::ccm::RunEnded;

/// Appends an entry to the CCM's history.
pub fn append_history(db: &Db, kind: HistoryKind, message: String, run: Option<RunId>, site: Option<&str>) {
    let result = db.next("history").and_then(|id| {
        db.table::<HistoryRecord>()?.put(&HistoryRecord {
            id,
            at_ms: unix_ms(),
            kind,
            message,
            run,
            site: site.map(Into::into),
        })
    });
    if let Err(e) = result {
        tracing::error!(error = %e, kind = kind.name(), "cannot append to the history");
    }
}

/// Reads the webhook signing key named by `key`: its contents, surrounding
/// whitespace trimmed. Refused when others may read it or it is empty.
pub fn read_secret_file(key: &str, path: &std::path::Path) -> Result<Vec<u8>, ConfigError> {
    let text = crate::config::read_secret_file(key, path)?;
    let trimmed = text.trim_ascii();
    if trimmed.is_empty() {
        return Err(ConfigError::Invalid {
            key: key.into(),
            problem: format!("{} is empty", path.display()),
            fix: "write the shared secret into it (`cmover keygen -o FILE` makes one)".into(),
        });
    }
    Ok(trimmed.to_vec())
}

fn label<T: serde::Serialize>(v: &T) -> String {
    match serde_json::to_value(v) {
        Ok(serde_json::Value::String(s)) => s,
        _ => "unknown".into(),
    }
}

/// Counts a run that ended: `cmover_runs_total` and `cmover_run_duration_seconds`.
pub fn run_metrics(run: &RunRecord) {
    let (kind, state) = (label(&run.kind), label(&run.state));
    metrics::counter!("cmover_runs_total", "node" => crate::metrics::CCM, "kind" => kind.clone(), "state" => state.clone())
        .increment(1);
    let ms = run.finished_ms.unwrap_or_else(unix_ms).saturating_sub(run.started_ms);
    metrics::histogram!("cmover_run_duration_seconds", "node" => crate::metrics::CCM, "kind" => kind, "state" => state)
        .record(ms as f64 / 1000.0);
}

/// Sets the `cmover_jobs{state}` gauges from the database: each job counts
/// under the state of its latest run (`idle` if it never ran).
pub fn job_gauges(db: &Db) {
    use crate::storage::records::{JobRecord, RunState};
    let (Ok(jobs), Ok(runs)) = (db.table::<JobRecord>(), db.table::<RunRecord>()) else { return };
    let Ok(jobs) = jobs.all() else { return };
    let mut counts: std::collections::BTreeMap<String, u64> = [
        RunState::Packing,
        RunState::Distributing,
        RunState::Committing,
        RunState::Aborting,
        RunState::Committed,
        RunState::Unchanged,
        RunState::Failed,
    ]
    .iter()
    .map(|s| (label(s), 0))
    .chain([("idle".to_owned(), 0)])
    .collect();
    for j in jobs {
        let state = match j.runs.last().and_then(|r| runs.get(r).ok().flatten()) {
            Some(r) => label(&r.state),
            None => "idle".into(),
        };
        *counts.entry(state).or_default() += 1;
    }
    for (state, n) in counts {
        metrics::gauge!("cmover_jobs", "node" => crate::metrics::CCM, "state" => state).set(n as f64);
    }
}

/// Starts the CCM's operations actors the configuration asks for (the
/// load balancer, the cache invalidator) on the current arbiter, and
/// answers the recipients the orchestrator tells of every run that ends.
pub fn start_ccm_observers(
    config: &Config,
    db: &Db,
    cluster_secret: &[u8],
) -> Result<Vec<Recipient<RunEnded>>, ConfigError> {
    let delivery = || -> Result<webhook::Delivery, ConfigError> {
        let path = &config.webhook.secret_file;
        let secret = read_secret_file("webhook.secret_file", path)?;
        Ok(webhook::Delivery::new(&config.webhook, secret))
    };
    let mut out = Vec::new();
    let lb_delivery = match config.lb.driver {
        config::LbDriverKind::Webhook => Some(delivery()?),
        _ => None,
    };
    let placeholder = webhook::Delivery::new(&config.webhook, Vec::new());
    if let Some(driver) = lb::LoadBalancer::driver_from(&config.lb, lb_delivery.unwrap_or(placeholder)) {
        out.push(lb::LoadBalancer::new(config.lb.clone(), db.clone(), driver).start().recipient());
    }
    let c = &config.cache;
    if !c.purge.is_empty() || !c.webhook_url.is_empty() {
        let hook = if c.webhook_url.is_empty() { None } else { Some(delivery()?) };
        let key = crate::protocol::crypto::ContentKey::from_secret(cluster_secret).ok();
        let assignments = config.ccm.data_dir.join("assignments");
        let actor = cache::CacheInvalidator::new(c.clone(), hook, db.clone(), assignments, key);
        out.push(actor.start().recipient());
    }
    Ok(out)
}
