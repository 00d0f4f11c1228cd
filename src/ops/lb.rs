//! The `LoadBalancer` actor (CCM): keeps every server's place in the load
//! balancer's rotation in line with whether it serves the site's live
//! release (DESIGN §4 step 9: failed servers are "taken out of rotation
//! through the load-balancer hook").
//!
//! Two inputs decide:
//! - [`RunEnded`] of a committed run: the servers it names as failed (they
//!   did not receive, apply or switch to the release) go out at once, with
//!   the reason from the run.
//! - every `lb.check_interval`, the server records: a server of a content
//!   group that is offline, or whose live release of the group's site is
//!   not the site's, is *lagging*; after `lb.lag_grace` of lagging it goes
//!   out. A server in sync goes (back) in. Sites with a run in progress are
//!   left alone until it ends: their servers switch one by one.
//!
//! On start nothing is known of the load balancer, so the first check
//! asserts every server's state (in or out). Actions go through one
//! [`LbDriver`]; each is recorded in the history (`lb_out`, `lb_in`,
//! `lb_failed`) and counted (`cmover_lb_actions_total`). A failed action is
//! tried again at the next check.

use std::collections::{BTreeMap, BTreeSet};

use actix::prelude::*;
use futures_util::future::LocalBoxFuture;
use serde::Serialize;
use thiserror::Error;

use super::config::{LbConfig, LbDriverKind};
use super::webhook::{deliver, Delivery};
use super::{append_history, RunEnded};
use crate::protocol::api::ServerOutcome;
use crate::protocol::ids::NodeId;
use crate::storage::db::Db;
use crate::storage::records::{GroupRecord, HistoryKind, RunRecord, RunState, ServerRecord, SiteRecord};

/// Out of rotation, or in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LbAction {
    /// Out of rotation (HAProxy: maintenance).
    Out,
    /// In rotation (HAProxy: ready).
    In,
}

impl LbAction {
    fn as_str(self) -> &'static str {
        match self {
            LbAction::Out => "out",
            LbAction::In => "in",
        }
    }
}

/// One action for a driver (also the webhook driver's JSON body).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LbRequest {
    /// The BES.
    pub server: NodeId,
    /// Its name in the load balancer.
    pub lb_server: String,
    /// The site that made the decision (empty when none did, e.g. offline).
    pub site: String,
    /// Out or in.
    pub action: LbAction,
    /// Why, for people.
    pub reason: String,
}

/// Why a driver could not carry out an action.
#[derive(Debug, Error)]
pub enum LbError {
    /// The load balancer could not be reached.
    #[error("cannot reach {target}: {error}")]
    Unreachable {
        /// Socket or URL.
        target: String,
        /// Why.
        error: String,
    },
    /// The load balancer answered with an error.
    #[error("{target} refused: {answer}")]
    Refused {
        /// Socket or URL.
        target: String,
        /// Its answer.
        answer: String,
    },
    /// The webhook could not be delivered.
    #[error(transparent)]
    Webhook(#[from] super::webhook::WebhookError),
}

/// A load-balancer driver: carries out one action, answering a detail for
/// the history. Futures run on the actor's thread (they need not be `Send`).
pub trait LbDriver: 'static {
    /// Its name, for metrics and the history.
    fn name(&self) -> &'static str;
    /// Carries out `req`.
    fn apply(&self, req: &LbRequest) -> LocalBoxFuture<'static, Result<String, LbError>>;
}

/// The generic webhook driver: POSTs the [`LbRequest`] as JSON, signed.
#[derive(Debug, Clone)]
pub struct WebhookDriver {
    /// Where.
    pub url: String,
    /// How.
    pub delivery: Delivery,
}

impl LbDriver for WebhookDriver {
    fn name(&self) -> &'static str {
        "webhook"
    }

    fn apply(&self, req: &LbRequest) -> LocalBoxFuture<'static, Result<String, LbError>> {
        let me = self.clone();
        let body = serde_json::to_vec(req).unwrap_or_default();
        Box::pin(async move {
            let attempts = deliver(&me.url, &body, &me.delivery).await?;
            Ok(format!("webhook {} (attempt {attempts})", me.url))
        })
    }
}

/// Sets `server` out of or into rotation now (command; the periodic check
/// may undo it if it disagrees with the server's state).
#[derive(Debug, Clone, Message)]
#[rtype(result = "Result<String, String>")]
pub struct SetRotation(pub LbRequest);

/// The rotation the actor believes each server is in (query).
#[derive(Debug, Clone, Copy, Message)]
#[rtype(result = "BTreeMap<NodeId, LbAction>")]
pub struct GetRotation;

/// What the actor knows of a server.
#[derive(Debug, Default)]
struct Tracked {
    /// The last action carried out.
    state: Option<LbAction>,
    /// Lagging since (ms on the actor's clock), and why.
    lagging: Option<(actix::clock::Instant, String, String)>,
    /// A failed run named it: out without waiting for the grace.
    failed: Option<(String, String)>,
    /// An action is under way.
    busy: bool,
}

/// The actor. See the module docs.
pub struct LoadBalancer {
    config: LbConfig,
    db: Db,
    driver: Box<dyn LbDriver>,
    servers: BTreeMap<NodeId, Tracked>,
}

impl LoadBalancer {
    /// An actor over the CCM's database with `driver`.
    pub fn new(config: LbConfig, db: Db, driver: Box<dyn LbDriver>) -> Self {
        LoadBalancer { config, db, driver, servers: BTreeMap::new() }
    }

    /// The driver `[lb]` asks for (`None` for `driver = "none"`); `delivery`
    /// is used by the webhook driver.
    pub fn driver_from(config: &LbConfig, delivery: Delivery) -> Option<Box<dyn LbDriver>> {
        match config.driver {
            LbDriverKind::None => None,
            LbDriverKind::Haproxy => Some(Box::new(super::haproxy::Haproxy {
                socket: config.haproxy_socket.clone(),
                backend: config.haproxy_backend.clone(),
                timeout: config.timeout,
            })),
            LbDriverKind::Webhook => {
                Some(Box::new(WebhookDriver { url: config.webhook_url.clone(), delivery }))
            }
        }
    }

    fn lb_name(&self, server: &ServerRecord) -> String {
        match self.config.servers.get(&server.id.0.to_string()) {
            Some(n) => n.clone(),
            None if server.name.is_empty() => format!("node-{}", server.id),
            None => server.name.clone(),
        }
    }

    /// Carries out `req` unless an action for the server is under way.
    fn act(&mut self, req: LbRequest, ctx: &mut Context<Self>) {
        let t = self.servers.entry(req.server).or_default();
        if t.busy {
            return;
        }
        t.busy = true;
        let fut = self.driver.apply(&req);
        fut.into_actor(self)
            .map(move |res, act, _| {
                act.record(&req, res.map_err(|e| e.to_string()));
            })
            .spawn(ctx);
    }

    fn record(&mut self, req: &LbRequest, res: Result<String, String>) {
        let t = self.servers.entry(req.server).or_default();
        t.busy = false;
        let driver = self.driver.name();
        let site = (!req.site.is_empty()).then_some(req.site.as_str());
        let result = if res.is_ok() { "ok" } else { "failed" };
        metrics::counter!("cmover_lb_actions_total", "node" => crate::metrics::CCM, "driver" => driver,
            "action" => req.action.as_str(), "result" => result)
        .increment(1);
        match res {
            Ok(detail) => {
                t.state = Some(req.action);
                let (kind, verb) = match req.action {
                    LbAction::Out => (HistoryKind::LbOut, "out of rotation"),
                    LbAction::In => (HistoryKind::LbIn, "back in rotation"),
                };
                tracing::info!(event = kind.name(), server = req.server.0, lb_server = %req.lb_server, site = %req.site, reason = %req.reason, %detail);
                append_history(
                    &self.db,
                    kind,
                    format!("server {} ({}) {verb}: {} [{detail}]", req.server, req.lb_server, req.reason),
                    None,
                    site,
                );
            }
            Err(error) => {
                tracing::warn!(event = "lb_failed", server = req.server.0, lb_server = %req.lb_server, action = req.action.as_str(), %error);
                append_history(
                    &self.db,
                    HistoryKind::LbFailed,
                    format!(
                        "server {} ({}) not taken {} by {driver}: {error}",
                        req.server,
                        req.lb_server,
                        req.action.as_str()
                    ),
                    None,
                    site,
                );
            }
        }
        let out = self.servers.values().filter(|t| t.state == Some(LbAction::Out)).count();
        metrics::gauge!("cmover_lb_servers_out", "node" => crate::metrics::CCM).set(out as f64);
    }

    /// Compares every content group's servers with their site's live release.
    fn check(&mut self, ctx: &mut Context<Self>) {
        let read = || -> Result<_, crate::storage::db::DbError> {
            let sites: BTreeMap<String, SiteRecord> =
                self.db.table::<SiteRecord>()?.all()?.into_iter().map(|s| (s.name.clone(), s)).collect();
            let groups = self.db.table::<GroupRecord>()?.all()?;
            let servers: BTreeMap<NodeId, ServerRecord> =
                self.db.table::<ServerRecord>()?.all()?.into_iter().map(|s| (s.id, s)).collect();
            let busy: BTreeSet<String> = self
                .db
                .table::<RunRecord>()?
                .all()?
                .into_iter()
                .filter(|r| !r.state.is_final())
                .map(|r| r.site)
                .collect();
            Ok((sites, groups, servers, busy))
        };
        let (sites, groups, servers, busy) = match read() {
            Ok(x) => x,
            Err(e) => return tracing::error!(error = %e, "load balancer: cannot read the servers"),
        };
        // Per server: in sync, lagging (site, reason), or undecided (a run is on).
        let mut verdicts: BTreeMap<NodeId, Option<(String, String)>> = BTreeMap::new();
        let mut undecided = BTreeSet::new();
        for g in &groups {
            let Some(site) = sites.get(&g.site) else { continue };
            if site.live_serial == 0 {
                continue;
            }
            for id in &g.servers {
                let Some(s) = servers.get(id) else { continue };
                if busy.contains(&site.name) {
                    undecided.insert(*id);
                    continue;
                }
                let live = s.live.get(&site.name).copied().unwrap_or(0);
                let lag = if !s.online {
                    Some("offline".to_owned())
                } else if live != site.live_serial {
                    Some(format!("live release {live} of {}, the site's is {}", site.name, site.live_serial))
                } else {
                    None
                };
                let v = verdicts.entry(*id).or_insert(None);
                if v.is_none() {
                    *v = lag.map(|l| (site.name.clone(), l));
                }
            }
        }
        let now = actix::clock::Instant::now();
        let grace = self.config.lag_grace;
        let mut todo = Vec::new();
        for (id, verdict) in verdicts {
            if undecided.contains(&id) {
                continue;
            }
            let Some(rec) = servers.get(&id) else { continue };
            let lb_server = self.lb_name(rec);
            let t = self.servers.entry(id).or_default();
            match verdict {
                Some((site, reason)) => {
                    let since = t.lagging.get_or_insert_with(|| (now, site.clone(), reason.clone())).0;
                    let failed = t.failed.clone();
                    let due = failed.is_some() || now.duration_since(since) >= grace;
                    if due && t.state != Some(LbAction::Out) {
                        let (site, reason) = failed.unwrap_or((site, reason));
                        todo.push(LbRequest { server: id, lb_server, site, action: LbAction::Out, reason });
                    }
                }
                None => {
                    t.lagging = None;
                    t.failed = None;
                    if t.state != Some(LbAction::In) {
                        let reason = if t.state.is_none() {
                            "in sync (state asserted at start)".to_owned()
                        } else {
                            "in sync again".to_owned()
                        };
                        todo.push(LbRequest {
                            server: id,
                            lb_server,
                            site: String::new(),
                            action: LbAction::In,
                            reason,
                        });
                    }
                }
            }
        }
        for req in todo {
            self.act(req, ctx);
        }
    }
}

impl Actor for LoadBalancer {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        tracing::info!(event = "lb_started", driver = self.driver.name());
        ctx.run_interval(self.config.check_interval, |act, ctx| act.check(ctx));
    }
}

impl Handler<RunEnded> for LoadBalancer {
    type Result = ();

    fn handle(&mut self, msg: RunEnded, ctx: &mut Context<Self>) {
        let run = msg.0;
        // Only a release that went live leaves the failed servers behind; an
        // aborted run leaves every server on the same release.
        if run.state != RunState::Committed {
            return;
        }
        for s in &run.failed_servers {
            let why = match run.switched.get(s).or_else(|| run.applied.get(s)) {
                Some(ServerOutcome::Failed { error }) => error.clone(),
                Some(ServerOutcome::Succeeded) => "did not switch".into(),
                _ => "silent".into(),
            };
            let reason =
                format!("run {} of {} left it behind release {}: {why}", run.id, run.site, run.serial);
            self.servers.entry(*s).or_default().failed = Some((run.site.clone(), reason));
        }
        self.check(ctx);
    }
}

impl Handler<SetRotation> for LoadBalancer {
    type Result = ResponseActFuture<Self, Result<String, String>>;

    fn handle(&mut self, msg: SetRotation, _ctx: &mut Context<Self>) -> Self::Result {
        let req = msg.0;
        self.servers.entry(req.server).or_default().busy = true;
        let fut = self.driver.apply(&req);
        Box::pin(fut.into_actor(self).map(move |res, act, _| {
            let res = res.map_err(|e| e.to_string());
            act.record(&req, res.clone());
            res
        }))
    }
}

impl Handler<GetRotation> for LoadBalancer {
    type Result = MessageResult<GetRotation>;

    fn handle(&mut self, _: GetRotation, _: &mut Context<Self>) -> Self::Result {
        MessageResult(self.servers.iter().filter_map(|(id, t)| t.state.map(|s| (*id, s))).collect())
    }
}
