//! The CCM's HTTP API: the signed node API that leaders talk to
//! (`/node/v1/…`, see `protocol::api`), and the admin REST API
//! (`/api/v1/…`, see `admin_api`), with the error type both answer with.
//!
//! Validation errors are `400` with an [`ErrorBody`] naming the field;
//! unknown things `404`; conflicts `409`; a missing or wrong token `401`.

use std::path::PathBuf;

use actix::{Addr, Recipient};
use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse, ResponseError};
use thiserror::Error;

use super::signed::{Signed, SignedError};
use crate::actors::ccm::{
    AssignmentPath, Ccm, CcmError, NextHopAsked, ProgressReported, SegmentReported, SegmentResultReceived,
};
use crate::actors::scheduler::JobChanged;
use crate::protocol::api::{ErrorBody, NextHopRequest, ProgressReport, SegmentReport, SegmentResult};
use crate::protocol::ids::AssignmentId;
use crate::storage::db::{Db, DbError};

/// Shared state of the handlers.
#[derive(Clone)]
pub struct CcmState {
    /// The orchestrator.
    pub ccm: Addr<Ccm>,
    /// The database (read directly by the REST API; writes of the
    /// orchestrator's records go through the actor).
    pub db: Db,
    /// The admin token; empty disables it (sessions still work).
    pub admin_token: String,
    /// The scheduler, told when a job changes.
    pub scheduler: Recipient<JobChanged>,
    /// Where checkpoints are kept.
    pub checkpoints: PathBuf,
    /// The configured static order of group leaders.
    pub tree_order: Vec<String>,
    /// The time zone of cron schedules.
    pub time_zone: chrono_tz::Tz,
    /// Bytes of assignment files served to leaders (the CCM's egress).
    pub egress: std::sync::Arc<std::sync::atomic::AtomicU64>,
    /// The web UI's live overview.
    pub live: super::live::Live,
    /// The load-balancer and cache configuration, as the settings screen shows it.
    pub integrations: serde_json::Value,
    /// Failed logins, per user name and address.
    pub logins: std::sync::Arc<std::sync::Mutex<super::throttle::LoginThrottle>>,
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
    /// Authenticated, but not allowed (a session change without its CSRF token).
    #[error("{0}")]
    Forbidden(String),
    /// Something broke inside.
    #[error("{0}")]
    Internal(String),
    /// Too many attempts: try again after `retry_after_s` (429, `Retry-After`).
    #[error("{message}")]
    TooManyRequests {
        /// What was refused and when to try again.
        message: String,
        /// Seconds to wait.
        retry_after_s: u64,
    },
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
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            ApiError::TooManyRequests { .. } => StatusCode::TOO_MANY_REQUESTS,
        }
    }

    fn error_response(&self) -> HttpResponse {
        let field = match self {
            ApiError::Invalid { field, .. } => Some(field.clone()),
            _ => None,
        };
        let mut resp = HttpResponse::build(self.status_code());
        if let ApiError::TooManyRequests { retry_after_s, .. } = self {
            resp.insert_header((actix_web::http::header::RETRY_AFTER, retry_after_s.to_string()));
        }
        resp.json(ErrorBody { error: self.to_string(), field })
    }
}

impl From<DbError> for ApiError {
    fn from(e: DbError) -> Self {
        ApiError::Internal(e.to_string())
    }
}

impl From<CcmError> for ApiError {
    fn from(e: CcmError) -> Self {
        use crate::protocol::run::PlanError;
        match e {
            CcmError::NotFound { .. } => ApiError::NotFound(e.to_string()),
            CcmError::Plan(PlanError::MissingParam { field, .. }) => {
                ApiError::Invalid { field: field.into(), message: e.to_string() }
            }
            CcmError::Plan(PlanError::NoCheckpoint { .. }) => ApiError::NotFound(e.to_string()),
            CcmError::Db(e) => ApiError::Internal(e.to_string()),
            e if e.is_conflict() => ApiError::Conflict(e.to_string()),
            e => ApiError::Internal(e.to_string()),
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
                .route("/progress", web::post().to(node_progress))
                .route("/assignments/{id}", web::get().to(node_assignment)),
        )
        .configure(super::admin_api::config);
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

async fn node_progress(state: web::Data<CcmState>, signed: Signed) -> Result<HttpResponse, ApiError> {
    let report: ProgressReport = signed.json().map_err(|e| invalid("body", e.to_string()))?;
    state.ccm.send(ProgressReported { node: signed.node, report }).await?;
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
        .send(AssignmentPath(AssignmentId(*id)))
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
