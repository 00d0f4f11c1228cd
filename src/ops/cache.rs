//! The `CacheInvalidator` actor (CCM): after a run puts a release live, the
//! URLs of the paths it changed are invalidated in the configured caches,
//! so that a cache in front of the farm does not keep serving the old
//! content until it expires.
//!
//! The changed paths are read from the run's assignment (new, changed,
//! removed, renamed files and symlinks; a rollback invalidates what the
//! release it leaves had changed). A path maps to a URL under the site's
//! base URL (`cache.base_urls`); an `index.html` also invalidates its
//! directory's URL. Each cache in `cache.purge` gets `PURGE <path>` with the
//! site's `Host` (Varnish, nginx with the cache purge module: 200 purged,
//! 404 was not cached); `cache.webhook_url` gets one signed POST of
//! `{site, serial, run, urls}`. The outcome is one history entry per run
//! (`cache_purged` or `cache_failed`) and `cmover_cache_purges_total`.

use std::collections::BTreeSet;
use std::path::PathBuf;

use actix::prelude::*;
use serde::Serialize;

use super::config::CacheConfig;
use super::webhook::{deliver, Delivery};
use super::{append_history, RunEnded};
use crate::protocol::assignment::Command;
use crate::protocol::crypto::ContentKey;
use crate::protocol::ids::{AssignmentId, RunId};
use crate::storage::assignment_file::{assignment_path, AssignmentFile};
use crate::storage::db::Db;
use crate::storage::records::{HistoryKind, JobKind, RunState, SnapshotRecord};

/// The webhook's JSON body.
#[derive(Debug, Clone, Serialize)]
pub struct Invalidation {
    /// The site.
    pub site: String,
    /// The release now live.
    pub serial: u64,
    /// The run that put it live.
    pub run: RunId,
    /// The changed URLs.
    pub urls: Vec<String>,
}

/// The actor. See the module docs.
pub struct CacheInvalidator {
    config: CacheConfig,
    delivery: Option<Delivery>,
    db: Db,
    assignments: PathBuf,
    key: Option<ContentKey>,
}

/// Paths (relative, `/`-separated) the commands change, as seen by a client.
pub fn changed_paths(commands: &[Command]) -> BTreeSet<String> {
    commands
        .iter()
        .filter(|c| !matches!(c, Command::MakeDir { .. } | Command::SetMode { .. }))
        .map(|c| c.path().as_str().to_owned())
        .collect()
}

fn encode_path(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    for b in path.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~/".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The URLs of `paths` under `base` (an `index.html` also as its directory).
pub fn urls_of(base: &str, paths: &BTreeSet<String>) -> Vec<String> {
    let base = base.trim_end_matches('/');
    let mut urls = BTreeSet::new();
    for p in paths {
        urls.insert(format!("{base}/{}", encode_path(p)));
        if p == "index.html" || p.ends_with("/index.html") {
            let dir = &p[..p.len() - "index.html".len()];
            urls.insert(format!("{base}/{}", encode_path(dir)));
        }
    }
    urls.into_iter().collect()
}

/// `(host, path)` of an http(s) URL.
fn split_url(url: &str) -> (&str, &str) {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    }
}

/// How one PURGE went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Purge {
    Purged,
    NotCached,
}

async fn purge(client: &awc::Client, cache: &str, url: &str) -> Result<Purge, String> {
    let (host, path) = split_url(url);
    let target = format!("{}{path}", cache.trim_end_matches('/'));
    let method = awc::http::Method::from_bytes(b"PURGE").map_err(|e| e.to_string())?;
    let resp = client.request(method, &target).insert_header(("Host", host)).send().await;
    match resp {
        Ok(r) if r.status().is_success() => Ok(Purge::Purged),
        Ok(r) if r.status().as_u16() == 404 => Ok(Purge::NotCached),
        Ok(r) => Err(format!("{cache}: PURGE {path} answered {}", r.status())),
        Err(e) => Err(format!("{cache}: PURGE {path}: {e}")),
    }
}

impl CacheInvalidator {
    /// An invalidator over the CCM's database; `assignments` is the CCM's
    /// assignments directory, `key` the content key (encrypted assignments),
    /// `delivery` how to deliver the webhook (when one is configured).
    pub fn new(
        config: CacheConfig,
        delivery: Option<Delivery>,
        db: Db,
        assignments: PathBuf,
        key: Option<ContentKey>,
    ) -> Self {
        CacheInvalidator { config, delivery, db, assignments, key }
    }

    /// The assignment whose paths a run changed, if any.
    fn assignment_of(&self, run: &crate::storage::records::RunRecord) -> Option<AssignmentId> {
        match run.kind {
            JobKind::Publish | JobKind::Restore | JobKind::Remove => run.content_assignment,
            // What the release left behind had changed (for a switch forward,
            // an approximation: what the release switched from had changed).
            JobKind::Rollback | JobKind::Switch => {
                let snap = self.db.table::<SnapshotRecord>().ok()?.get(&(run.site.clone(), run.base_serial));
                snap.ok().flatten().map(|s| s.assignment)
            }
            // The live release, sent to servers that lacked it: nothing changed.
            JobKind::Synchronize | JobKind::Replicate | JobKind::Hot => None,
        }
    }
}

impl Actor for CacheInvalidator {
    type Context = Context<Self>;
}

impl Handler<RunEnded> for CacheInvalidator {
    type Result = ();

    fn handle(&mut self, msg: RunEnded, ctx: &mut Context<Self>) {
        let run = msg.0;
        if run.state != RunState::Committed {
            return;
        }
        let Some(base) = self.config.base_urls.get(&run.site).cloned() else { return };
        let Some(assignment) = self.assignment_of(&run) else { return };
        let path = assignment_path(&self.assignments, assignment);
        let key = self.key.clone();
        let read = tokio::task::spawn_blocking(move || {
            AssignmentFile::open(&path, key.as_ref())
                .map(|f| changed_paths(&f.commands))
                .map_err(|e| e.to_string())
        });
        let caches = self.config.purge.clone();
        let webhook = self.config.webhook_url.clone();
        let delivery = self.delivery.clone();
        let (site, serial, run_id) = (run.site.clone(), run.serial, run.id);
        async move {
            let paths = read.await.map_err(|e| e.to_string()).and_then(|r| r)?;
            let urls = urls_of(&base, &paths);
            let client = awc::Client::builder().timeout(std::time::Duration::from_secs(10)).finish();
            let (mut purged, mut not_cached, mut failed) = (0u64, 0u64, Vec::new());
            for cache in &caches {
                for url in &urls {
                    let res = purge(&client, cache, url).await;
                    let result = match &res {
                        Ok(Purge::Purged) => "purged",
                        Ok(Purge::NotCached) => "not_cached",
                        Err(_) => "failed",
                    };
                    metrics::counter!("cmover_cache_purges_total", "node" => crate::metrics::CCM, "kind" => "purge", "result" => result)
                        .increment(1);
                    match res {
                        Ok(Purge::Purged) => purged += 1,
                        Ok(Purge::NotCached) => not_cached += 1,
                        Err(e) => failed.push(e),
                    }
                }
            }
            let mut hook = None;
            if let (false, Some(how)) = (webhook.is_empty(), delivery) {
                let body = Invalidation { site: site.clone(), serial, run: run_id, urls: urls.clone() };
                let body = serde_json::to_vec(&body).unwrap_or_default();
                let res = deliver(&webhook, &body, &how).await.map_err(|e| e.to_string());
                let result = if res.is_ok() { "ok" } else { "failed" };
                metrics::counter!("cmover_cache_purges_total", "node" => crate::metrics::CCM, "kind" => "webhook", "result" => result)
                    .increment(1);
                hook = Some(res);
            }
            Ok::<_, String>((urls, purged, not_cached, failed, hook))
        }
        .into_actor(self)
        .map(move |res, act, _| match res {
            Err(e) => {
                tracing::warn!(event = "cache_failed", run = run_id.0, site = %run.site, error = %e);
                append_history(
                    &act.db,
                    HistoryKind::CacheFailed,
                    format!("changed paths of run {run_id} unknown, caches not invalidated: {e}"),
                    Some(run_id),
                    Some(&run.site),
                );
            }
            Ok((urls, purged, not_cached, failed, hook)) => {
                let mut msg = format!(
                    "release {serial}: {} changed URLs; PURGE in {} caches: {purged} purged, {not_cached} not cached",
                    urls.len(),
                    act.config.purge.len()
                );
                match &hook {
                    Some(Ok(_)) => msg.push_str("; webhook delivered"),
                    Some(Err(e)) => msg.push_str(&format!("; webhook failed: {e}")),
                    None => {}
                }
                let ok = failed.is_empty() && !matches!(hook, Some(Err(_)));
                if !failed.is_empty() {
                    msg.push_str(&format!("; {} failed: {}", failed.len(), failed.join("; ")));
                }
                let kind = if ok { HistoryKind::CachePurged } else { HistoryKind::CacheFailed };
                tracing::info!(event = kind.name(), run = run_id.0, site = %run.site, urls = urls.len(), purged, not_cached, failed = failed.len());
                append_history(&act.db, kind, msg, Some(run_id), Some(&run.site));
            }
        })
        .spawn(ctx);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_map_to_urls_under_the_base() {
        let paths: BTreeSet<String> =
            ["index.html", "a b/ü.css", "docs/index.html"].iter().map(|s| s.to_string()).collect();
        let urls = urls_of("http://www.example.com/shop/", &paths);
        assert_eq!(
            urls,
            vec![
                "http://www.example.com/shop/",
                "http://www.example.com/shop/a%20b/%C3%BC.css",
                "http://www.example.com/shop/docs/",
                "http://www.example.com/shop/docs/index.html",
                "http://www.example.com/shop/index.html",
            ]
        );
        assert_eq!(split_url("http://h:81/x/y"), ("h:81", "/x/y"));
        assert_eq!(split_url("http://h"), ("h", "/"));
    }
}
