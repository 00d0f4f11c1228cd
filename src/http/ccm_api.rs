//! The CCM's HTTP API: the signed node API that leaders talk to
//! (`/node/v1/…`, see `protocol::api`), and the admin REST API
//! (`/api/v1/…`, bearer token) for sites, content groups, jobs, runs,
//! segments and servers.
//!
//! Validation errors are `400` with an [`ErrorBody`] naming the field;
//! unknown things `404`; conflicts `409`; a missing or wrong token `401`.

use std::path::PathBuf;

use actix::Addr;
use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse, ResponseError};
use serde::{Deserialize, Serialize};
use thiserror::Error;

use super::signed::{unix_ms, Signed, SignedError};
use crate::actors::ccm::{
    AssignmentPath, Ccm, CcmError, NextHopAsked, RunJob, SegmentReported, SegmentResultReceived,
};
use crate::protocol::api::{ErrorBody, NextHopRequest, SegmentReport, SegmentResult};
use crate::protocol::ids::{JobId, NodeId};
use crate::protocol::paths::SiteName;
use crate::storage::db::{Db, DbError};
use crate::storage::records::{
    GroupRecord, HistoryRecord, JobKind, JobRecord, Quorum, RunRecord, SegmentRecord, ServerRecord,
    SiteRecord,
};

/// Shared state of the handlers.
#[derive(Clone)]
pub struct CcmState {
    /// The orchestrator.
    pub ccm: Addr<Ccm>,
    /// The database (read directly by the REST API; writes of the
    /// orchestrator's records go through the actor).
    pub db: Db,
    /// The admin token; empty disables the REST API.
    pub admin_token: String,
    /// Bytes of assignment files served to leaders (the CCM's egress).
    pub egress: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

/// An API error, answered as JSON.
#[derive(Debug, Error)]
pub enum ApiError {
    /// A field is missing or wrong.
    #[error("{message}")]
    Invalid {
        /// The field.
        field: String,
        /// What is wrong and what to do.
        message: String,
    },
    /// Not found.
    #[error("{0}")]
    NotFound(String),
    /// Conflicts with the current state.
    #[error("{0}")]
    Conflict(String),
    /// No or a wrong token.
    #[error("{0}")]
    Unauthorized(String),
    /// Something broke inside.
    #[error("{0}")]
    Internal(String),
}

fn invalid(field: &str, message: impl Into<String>) -> ApiError {
    ApiError::Invalid { field: field.into(), message: message.into() }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        match self {
            ApiError::Invalid { .. } => StatusCode::BAD_REQUEST,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn error_response(&self) -> HttpResponse {
        let field = match self {
            ApiError::Invalid { field, .. } => Some(field.clone()),
            _ => None,
        };
        HttpResponse::build(self.status_code()).json(ErrorBody { error: self.to_string(), field })
    }
}

impl From<DbError> for ApiError {
    fn from(e: DbError) -> Self {
        ApiError::Internal(e.to_string())
    }
}

impl From<CcmError> for ApiError {
    fn from(e: CcmError) -> Self {
        match e {
            CcmError::NotFound { .. } => ApiError::NotFound(e.to_string()),
            CcmError::Conflict(m) => ApiError::Conflict(m),
            CcmError::Db(e) => ApiError::Internal(e.to_string()),
        }
    }
}

impl From<actix::MailboxError> for ApiError {
    fn from(e: actix::MailboxError) -> Self {
        ApiError::Internal(format!("the orchestrator is not running: {e}"))
    }
}

/// Routes of the CCM.
pub fn config(cfg: &mut web::ServiceConfig) {
    let json = web::JsonConfig::default().limit(1 << 20).error_handler(|err, _| {
        let text = err.to_string();
        let field = text.split('`').nth(1).unwrap_or("body").to_owned();
        ApiError::Invalid { field, message: format!("bad JSON: {text}") }.into()
    });
    cfg.app_data(json)
        .service(
            web::scope("/node/v1")
                .route("/segment", web::post().to(node_segment))
                .route("/next-hop", web::post().to(node_next_hop))
                .route("/report", web::post().to(node_report))
                .route("/assignments/{id}", web::get().to(node_assignment)),
        )
        .service(
            web::scope("/api/v1")
                .route("/sites", web::get().to(list_sites))
                .route("/sites", web::post().to(create_site))
                .route("/groups", web::get().to(list_groups))
                .route("/groups", web::post().to(create_group))
                .route("/jobs", web::get().to(list_jobs))
                .route("/jobs", web::post().to(create_job))
                .route("/jobs/{id}/run", web::post().to(run_job))
                .route("/runs", web::get().to(list_runs))
                .route("/runs/{id}", web::get().to(get_run))
                .route("/segments", web::get().to(list_segments))
                .route("/servers", web::get().to(list_servers))
                .route("/history", web::get().to(list_history)),
        );
}

async fn node_segment(state: web::Data<CcmState>, signed: Signed) -> Result<HttpResponse, ApiError> {
    let report: SegmentReport = signed.json().map_err(|e| invalid("body", e.to_string()))?;
    if report.leader != signed.node {
        return Err(ApiError::Unauthorized(format!(
            "node {} may not report for leader {}",
            signed.node, report.leader
        )));
    }
    state.ccm.send(SegmentReported(report)).await??;
    Ok(HttpResponse::Ok().json(serde_json::json!({})))
}

async fn node_next_hop(state: web::Data<CcmState>, signed: Signed) -> Result<HttpResponse, ApiError> {
    let req: NextHopRequest = signed.json().map_err(|e| invalid("body", e.to_string()))?;
    let hop = state.ccm.send(NextHopAsked { node: signed.node, assignment: req.assignment }).await?;
    Ok(HttpResponse::Ok().json(hop))
}

async fn node_report(state: web::Data<CcmState>, signed: Signed) -> Result<HttpResponse, ApiError> {
    let result: SegmentResult = signed.json().map_err(|e| invalid("body", e.to_string()))?;
    state.ccm.send(SegmentResultReceived { node: signed.node, result }).await??;
    Ok(HttpResponse::Ok().json(serde_json::json!({})))
}

async fn node_assignment(
    req: HttpRequest,
    state: web::Data<CcmState>,
    signed: Result<Signed, SignedError>,
    id: web::Path<u64>,
) -> Result<HttpResponse, actix_web::Error> {
    signed?;
    let path = state
        .ccm
        .send(AssignmentPath(*id))
        .await
        .map_err(ApiError::from)?
        .ok_or_else(|| ApiError::NotFound(format!("assignment {id} is not known")))?;
    let resp = super::files::serve_file(&path, &format!("assignment {id}"), &req).await;
    let sent = match actix_web::body::MessageBody::size(resp.body()) {
        actix_web::body::BodySize::Sized(n) => n,
        _ => 0,
    };
    state.egress.fetch_add(sent, std::sync::atomic::Ordering::Relaxed);
    Ok(resp)
}

/// Checks the admin bearer token (constant time).
fn admin(req: &HttpRequest, state: &CcmState) -> Result<(), ApiError> {
    if state.admin_token.is_empty() {
        return Err(ApiError::Unauthorized("the admin API is disabled: set ccm.admin_token".into()));
    }
    let given = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    let (a, b) = (given.as_bytes(), state.admin_token.as_bytes());
    let same = a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0;
    if same {
        Ok(())
    } else {
        Err(ApiError::Unauthorized(
            "missing or wrong bearer token (Authorization: Bearer <ccm.admin_token>)".into(),
        ))
    }
}

fn table<R: crate::storage::db::Record>(state: &CcmState) -> Result<crate::storage::db::Table<R>, ApiError> {
    Ok(state.db.table::<R>()?)
}

async fn list_sites(req: HttpRequest, state: web::Data<CcmState>) -> Result<HttpResponse, ApiError> {
    admin(&req, &state)?;
    Ok(HttpResponse::Ok().json(table::<SiteRecord>(&state)?.all()?))
}

/// `POST /api/v1/sites`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewSite {
    /// The site's name.
    pub name: String,
    /// Its staging directory (absolute).
    pub staging: PathBuf,
}

async fn create_site(
    req: HttpRequest,
    state: web::Data<CcmState>,
    body: web::Json<NewSite>,
) -> Result<HttpResponse, ApiError> {
    admin(&req, &state)?;
    let NewSite { name, staging } = body.into_inner();
    SiteName::new(&name).map_err(|e| invalid("name", e.to_string()))?;
    if !staging.is_absolute() {
        return Err(invalid("staging", format!("{} is not an absolute path", staging.display())));
    }
    if !staging.is_dir() {
        return Err(invalid("staging", format!("{} is not a directory on the CCM", staging.display())));
    }
    let sites = table::<SiteRecord>(&state)?;
    if sites.get(&name)?.is_some() {
        return Err(ApiError::Conflict(format!("site {name} already exists")));
    }
    let rec = SiteRecord { name, staging, live_serial: 0, last_serial: 0, created_ms: unix_ms() };
    sites.put(&rec)?;
    state.db.flush()?;
    Ok(HttpResponse::Created().json(rec))
}

async fn list_groups(req: HttpRequest, state: web::Data<CcmState>) -> Result<HttpResponse, ApiError> {
    admin(&req, &state)?;
    Ok(HttpResponse::Ok().json(table::<GroupRecord>(&state)?.all()?))
}

/// `POST /api/v1/groups`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewGroup {
    /// The group's name.
    pub name: String,
    /// The site it serves.
    pub site: String,
    /// Its servers.
    pub servers: Vec<u64>,
    /// The go-live quorum (default: all).
    #[serde(default)]
    pub quorum: Quorum,
}

async fn create_group(
    req: HttpRequest,
    state: web::Data<CcmState>,
    body: web::Json<NewGroup>,
) -> Result<HttpResponse, ApiError> {
    admin(&req, &state)?;
    let g = body.into_inner();
    if g.name.trim().is_empty() || g.name.len() > 64 {
        return Err(invalid("name", "give a name of 1 to 64 characters"));
    }
    if table::<SiteRecord>(&state)?.get(&g.site)?.is_none() {
        return Err(invalid("site", format!("site {:?} does not exist; create it first", g.site)));
    }
    if g.servers.is_empty() {
        return Err(invalid("servers", "a content group needs at least one server"));
    }
    match g.quorum {
        Quorum::Count(0) => return Err(invalid("quorum", "a count of 0 would go live with no server")),
        Quorum::Percent(p) if !(p > 0.0 && p <= 100.0) => {
            return Err(invalid("quorum", format!("{p} is not a percentage in (0, 100]")))
        }
        _ => {}
    }
    let groups = table::<GroupRecord>(&state)?;
    if groups.get(&g.name)?.is_some() {
        return Err(ApiError::Conflict(format!("content group {} already exists", g.name)));
    }
    let mut servers: Vec<NodeId> = g.servers.into_iter().map(NodeId).collect();
    servers.sort();
    servers.dedup();
    let rec = GroupRecord { name: g.name, site: g.site, servers, quorum: g.quorum };
    groups.put(&rec)?;
    state.db.flush()?;
    Ok(HttpResponse::Created().json(rec))
}

async fn list_jobs(req: HttpRequest, state: web::Data<CcmState>) -> Result<HttpResponse, ApiError> {
    admin(&req, &state)?;
    Ok(HttpResponse::Ok().json(table::<JobRecord>(&state)?.all()?))
}

/// `POST /api/v1/jobs`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewJob {
    /// The site.
    pub site: String,
    /// The content group.
    pub group: String,
    /// What it does (default `publish`).
    #[serde(default)]
    pub kind: JobKind,
}

async fn create_job(
    req: HttpRequest,
    state: web::Data<CcmState>,
    body: web::Json<NewJob>,
) -> Result<HttpResponse, ApiError> {
    admin(&req, &state)?;
    let j = body.into_inner();
    if table::<SiteRecord>(&state)?.get(&j.site)?.is_none() {
        return Err(invalid("site", format!("site {:?} does not exist", j.site)));
    }
    match table::<GroupRecord>(&state)?.get(&j.group)? {
        None => return Err(invalid("group", format!("content group {:?} does not exist", j.group))),
        Some(g) if g.site != j.site => {
            return Err(invalid(
                "group",
                format!("content group {:?} serves site {:?}, not {:?}", g.name, g.site, j.site),
            ))
        }
        Some(_) => {}
    }
    let id = JobId(state.db.next("job")?);
    let rec =
        JobRecord { id, site: j.site, group: j.group, kind: j.kind, created_ms: unix_ms(), runs: Vec::new() };
    table::<JobRecord>(&state)?.put(&rec)?;
    state.db.flush()?;
    Ok(HttpResponse::Created().json(rec))
}

/// Answer of `POST /api/v1/jobs/{id}/run`.
#[derive(Debug, Serialize, Deserialize)]
pub struct RunStarted {
    /// The new run.
    pub run: u64,
}

async fn run_job(
    req: HttpRequest,
    state: web::Data<CcmState>,
    id: web::Path<u64>,
) -> Result<HttpResponse, ApiError> {
    admin(&req, &state)?;
    let run = state.ccm.send(RunJob { job: JobId(*id) }).await??;
    Ok(HttpResponse::Accepted().json(RunStarted { run }))
}

async fn list_runs(req: HttpRequest, state: web::Data<CcmState>) -> Result<HttpResponse, ApiError> {
    admin(&req, &state)?;
    let mut runs = table::<RunRecord>(&state)?.all()?;
    runs.reverse();
    runs.truncate(100);
    Ok(HttpResponse::Ok().json(runs))
}

async fn get_run(
    req: HttpRequest,
    state: web::Data<CcmState>,
    id: web::Path<u64>,
) -> Result<HttpResponse, ApiError> {
    admin(&req, &state)?;
    let run = table::<RunRecord>(&state)?
        .get(&id)?
        .ok_or_else(|| ApiError::NotFound(format!("run {id} does not exist")))?;
    Ok(HttpResponse::Ok().json(run))
}

async fn list_segments(req: HttpRequest, state: web::Data<CcmState>) -> Result<HttpResponse, ApiError> {
    admin(&req, &state)?;
    Ok(HttpResponse::Ok().json(table::<SegmentRecord>(&state)?.all()?))
}

async fn list_servers(req: HttpRequest, state: web::Data<CcmState>) -> Result<HttpResponse, ApiError> {
    admin(&req, &state)?;
    Ok(HttpResponse::Ok().json(table::<ServerRecord>(&state)?.all()?))
}

async fn list_history(req: HttpRequest, state: web::Data<CcmState>) -> Result<HttpResponse, ApiError> {
    admin(&req, &state)?;
    let mut h = table::<HistoryRecord>(&state)?.all()?;
    h.reverse();
    h.truncate(500);
    Ok(HttpResponse::Ok().json(h))
}
