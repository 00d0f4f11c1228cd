//! The admin REST API (`/api/v1/…`, JSON): sites, content groups, servers,
//! segments, jobs, runs, assignments, checkpoints, snapshots, events, the
//! group leaders' static order, users and the login session.
//!
//! Every route is declared once, in [`routes!`] below: the same list
//! registers the handlers and writes the OpenAPI document served at
//! `/api/v1/openapi.json`, so the two cannot drift apart.
//!
//! Validation errors are `400` with an `ErrorBody` naming the field;
//! unknown things `404`; conflicts `409`; no credentials `401`; a session
//! change without its CSRF token `403`.

use std::collections::BTreeMap;
use std::path::PathBuf;

use actix_web::{web, HttpMessage, HttpRequest, HttpResponse};
use serde::{Deserialize, Serialize};

use super::ccm_api::{ApiError, CcmState};
use super::live::stream;
use super::session::{self, authorize};
use super::throttle;
use crate::actors::ccm::{CancelRun, CreateCheckpoint, RunJob, SetTreeOrder};
use crate::actors::scheduler::JobChanged;
use crate::clock::unix_ms;
use crate::protocol::ids::{self, AssignmentId, JobId, NodeId, RunId};
use crate::protocol::paths::{SiteName, SitePath};
use crate::protocol::schedule::{self, JobTimes, Schedule};
use crate::storage::checkpoint::Checkpoints;
use crate::storage::db::{Record, Table};
use crate::storage::records::{
    AssignmentRecord, GroupRecord, HistoryKind, HistoryRecord, JobKind, JobParams, JobRecord, Policy, Quorum,
    RunRecord, SegmentRecord, ServerRecord, SessionRecord, SettingRecord, SiteRecord, SnapshotRecord,
    UserRecord,
};
use crate::storage::tree::TreeFilter;

/// One route of the API, as the OpenAPI document lists it.
#[derive(Debug, Clone, Copy)]
pub struct ApiRoute {
    /// `get`, `post`, `put`, `delete`.
    pub method: &'static str,
    /// Path under `/api/v1`, with `{name}` parameters.
    pub path: &'static str,
    /// What it does.
    pub summary: &'static str,
    /// The request body's type, if it takes one.
    pub body: Option<&'static str>,
    /// False for the routes anyone may call (login, the document itself).
    pub auth: bool,
}

macro_rules! routes {
    ($( $method:ident $path:literal => $handler:ident, $summary:literal, body $body:expr, auth $auth:expr; )*) => {
        fn register(scope: actix_web::Scope) -> actix_web::Scope {
            scope $( .route($path, web::$method().to($handler)) )*
        }

        /// Every route of the admin API.
        pub const ROUTES: &[ApiRoute] = &[
            $( ApiRoute { method: stringify!($method), path: $path, summary: $summary, body: $body, auth: $auth }, )*
        ];
    };
}

routes! {
    get "/openapi.json" => openapi, "This document", body None, auth false;
    post "/session" => login, "Log in; sets the session cookie, answers the CSRF token", body Some("Login"), auth false;
    get "/session" => whoami, "The current session", body None, auth true;
    delete "/session" => logout, "Log out", body None, auth false;
    get "/users" => list_users, "List admin accounts", body None, auth true;
    post "/users" => create_user, "Create an admin account", body Some("NewUser"), auth true;
    delete "/users/{name}" => delete_user, "Delete an admin account", body None, auth true;
    get "/sites" => list_sites, "List sites", body None, auth true;
    post "/sites" => create_site, "Create a site", body Some("NewSite"), auth true;
    get "/sites/{name}" => get_site, "One site", body None, auth true;
    put "/sites/{name}" => update_site, "Change a site's staging directory", body Some("SiteChange"), auth true;
    delete "/sites/{name}" => delete_site, "Delete a site no group or job uses", body None, auth true;
    get "/groups" => list_groups, "List content groups", body None, auth true;
    post "/groups" => create_group, "Create a content group", body Some("NewGroup"), auth true;
    get "/groups/{name}" => get_group, "One content group", body None, auth true;
    put "/groups/{name}" => update_group, "Change a group's servers or quorum", body Some("GroupChange"), auth true;
    delete "/groups/{name}" => delete_group, "Delete a content group no job uses", body None, auth true;
    get "/servers" => list_servers, "List servers", body None, auth true;
    get "/servers/{id}" => get_server, "One server", body None, auth true;
    get "/segments" => list_segments, "List segments and their leaders", body None, auth true;
    get "/jobs" => list_jobs, "List jobs with their next run time", body None, auth true;
    post "/jobs" => create_job, "Create a job", body Some("JobInput"), auth true;
    get "/jobs/{id}" => get_job, "One job", body None, auth true;
    put "/jobs/{id}" => update_job, "Replace a job's definition", body Some("JobInput"), auth true;
    delete "/jobs/{id}" => delete_job, "Delete a job", body None, auth true;
    get "/jobs/{id}/plan" => plan_job, "What a run of the job would do now (nothing is started)", body None, auth true;
    post "/jobs/{id}/run" => run_job, "Run a job now", body None, auth true;
    post "/jobs/{id}/cancel" => cancel_job, "Cancel a job's run in progress", body None, auth true;
    get "/runs" => list_runs, "List runs, newest first (?job, ?site, ?limit)", body None, auth true;
    get "/runs/{id}" => get_run, "One run with per-segment and per-server progress", body None, auth true;
    post "/runs/{id}/cancel" => cancel_run, "Cancel a run before its commit", body None, auth true;
    get "/assignments" => list_assignments, "List assignments' metadata (?site, ?run)", body None, auth true;
    get "/assignments/{id}" => get_assignment, "One assignment's metadata", body None, auth true;
    get "/checkpoints" => list_checkpoints, "List checkpoints (?site)", body None, auth true;
    post "/checkpoints" => create_checkpoint, "Make a checkpoint of a site's live release", body Some("NewCheckpoint"), auth true;
    get "/checkpoints/{site}/{id}" => get_checkpoint, "One checkpoint and the snapshot log since", body None, auth true;
    delete "/checkpoints/{site}/{id}" => delete_checkpoint, "Delete a checkpoint", body None, auth true;
    post "/checkpoints/{site}/{id}/restore" => restore_checkpoint, "Make a checkpoint live again (a restore job)", body Some("RestoreRequest"), auth true;
    get "/snapshots" => list_snapshots, "Releases that went live (?site)", body None, auth true;
    get "/events" => list_events, "History and conflicts, newest first (?kind, ?site, ?run, ?limit)", body None, auth true;
    get "/tree-order" => get_tree_order, "The group leaders' static order", body None, auth true;
    put "/tree-order" => set_tree_order, "Set the group leaders' static order", body Some("TreeOrder"), auth true;
    get "/settings" => get_settings, "The static order and the load-balancer and cache integrations", body None, auth true;
    get "/stream" => stream, "Live overview as Server-Sent Events; ?run adds that run's record", body None, auth true;
}

/// Adds the admin API under `/api/v1`.
pub fn config(cfg: &mut web::ServiceConfig) {
    let query = web::QueryConfig::default()
        .error_handler(|err, _| ApiError::Invalid { field: "query".into(), message: err.to_string() }.into());
    let path = web::PathConfig::default()
        .error_handler(|err, _| ApiError::Invalid { field: "path".into(), message: err.to_string() }.into());
    let scope = register(web::scope("/api/v1").app_data(query).app_data(path));
    cfg.service(scope.wrap(actix_web::middleware::from_fn(require_auth)));
}

/// Refuses callers without credentials before anything else (a body that
/// does not parse included), except on the public routes. This is the one
/// check of the protected routes: the handlers do not repeat it; the caller
/// it found is left in the request's extensions.
async fn require_auth(
    req: actix_web::dev::ServiceRequest,
    next: actix_web::middleware::Next<impl actix_web::body::MessageBody>,
) -> Result<actix_web::dev::ServiceResponse<impl actix_web::body::MessageBody>, actix_web::Error> {
    let path = req.path().strip_prefix("/api/v1").unwrap_or(req.path()).to_owned();
    let method = req.method().as_str().to_ascii_lowercase();
    let public = ROUTES.iter().any(|r| !r.auth && r.path == path && r.method == method);
    if !public {
        let state = req
            .app_data::<web::Data<CcmState>>()
            .ok_or_else(|| ApiError::Internal("the API has no state".into()))?
            .clone();
        let caller = authorize(req.request(), &state)?;
        req.extensions_mut().insert(caller);
    }
    next.call(req).await
}

fn table<R: Record>(state: &CcmState) -> Result<Table<R>, ApiError> {
    Ok(state.db.table::<R>()?)
}

fn invalid(field: &str, message: impl Into<String>) -> ApiError {
    ApiError::Invalid { field: field.into(), message: message.into() }
}

fn ok<T: Serialize>(v: T) -> Result<HttpResponse, ApiError> {
    Ok(HttpResponse::Ok().json(v))
}

fn created<T: Serialize>(state: &CcmState, v: T) -> Result<HttpResponse, ApiError> {
    state.db.flush()?;
    Ok(HttpResponse::Created().json(v))
}

fn not_found(what: &str, name: impl std::fmt::Display) -> ApiError {
    ApiError::NotFound(format!("{what} {name} does not exist"))
}

fn history(state: &CcmState, kind: HistoryKind, message: String, site: Option<&str>) -> Result<(), ApiError> {
    crate::ops::append_history(&state.db, kind, message, None, site);
    Ok(())
}

// ---- the document -------------------------------------------------------

/// The OpenAPI 3.0 document of [`ROUTES`].
pub fn openapi_document() -> serde_json::Value {
    let mut paths: BTreeMap<String, serde_json::Map<String, serde_json::Value>> = BTreeMap::new();
    for r in ROUTES {
        let params: Vec<serde_json::Value> = r
            .path
            .split('/')
            .filter_map(|seg| seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
            .map(|name| {
                let ty = if name == "id" { "integer" } else { "string" };
                serde_json::json!({"name": name, "in": "path", "required": true, "schema": {"type": ty}})
            })
            .collect();
        let mut op = serde_json::json!({
            "summary": r.summary,
            "operationId": format!("{}{}", r.method, r.path.replace(['/', '{', '}', '.', '-'], "_")),
            "parameters": params,
            "responses": {
                "200": {"description": "OK", "content": {"application/json": {}}},
                "400": {"description": "Bad input", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}}},
                "401": {"description": "Not logged in, or a wrong token"},
                "404": {"description": "Not found"},
                "409": {"description": "Conflicts with the current state"}
            }
        });
        if let Some(body) = r.body {
            op["requestBody"] = serde_json::json!({
                "required": true,
                "content": {"application/json": {"schema": {"$ref": format!("#/components/schemas/{body}")}}}
            });
        }
        if !r.auth {
            op["security"] = serde_json::json!([]);
        }
        paths.entry(format!("/api/v1{}", r.path)).or_default().insert(r.method.into(), op);
    }
    let mut schemas = serde_json::Map::new();
    schemas.insert(
        "ErrorBody".into(),
        serde_json::json!({"type": "object", "required": ["error"], "properties": {
            "error": {"type": "string"}, "field": {"type": "string"}}}),
    );
    for name in ROUTES.iter().filter_map(|r| r.body) {
        schemas.insert(name.into(), serde_json::json!({"type": "object", "description": format!("See `{name}` in the README's API section.")}));
    }
    serde_json::json!({
        "openapi": "3.0.3",
        "info": {"title": "Content Mover admin API", "version": env!("CARGO_PKG_VERSION")},
        "security": [{"bearer": []}, {"session": []}],
        "components": {
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer"},
                "session": {"type": "apiKey", "in": "cookie", "name": session::COOKIE}
            },
            "schemas": schemas
        },
        "paths": paths,
    })
}

async fn openapi() -> HttpResponse {
    HttpResponse::Ok().json(openapi_document())
}

// ---- session and users --------------------------------------------------

/// `POST /api/v1/session`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Login {
    /// Login name.
    pub user: String,
    /// Password.
    pub password: String,
}

/// Answer of a login or `GET /session`.
#[derive(Debug, Serialize, Deserialize)]
pub struct SessionInfo {
    /// The user (`token` for the bearer token).
    pub user: String,
    /// What changes must send in `x-csrf-token` (empty with the token).
    pub csrf: String,
}

async fn login(
    req: HttpRequest,
    state: web::Data<CcmState>,
    body: web::Json<Login>,
) -> Result<HttpResponse, ApiError> {
    let Login { user, password } = body.into_inner();
    let addr = req.peer_addr().map(|a| a.ip().to_string()).unwrap_or_default();
    let keys = throttle::keys(&user, &addr);
    let logins = || state.logins.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    // Refused before any hashing: a flood of guesses costs nothing.
    if let Err(wait_ms) = logins().check(unix_ms(), &keys) {
        let secs = wait_ms.div_ceil(1000).max(1);
        tracing::warn!(event = "login_throttled", user = %user, addr = %addr, retry_after_s = secs);
        return Err(ApiError::TooManyRequests {
            message: format!("too many failed logins as {user:?} or from {addr}: try again in {secs} s"),
            retry_after_s: secs,
        });
    }
    let rec = table::<UserRecord>(&state)?.get(&user)?;
    // The same one hash whether or not the user exists, on the blocking
    // pool: the HTTP workers go on serving the node API meanwhile.
    let known = web::block(move || session::check_login(rec.as_ref(), &password))
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    if !known {
        logins().failed(unix_ms(), &keys);
        tracing::warn!(event = "login_failed", user = %user, addr = %addr);
        return Err(ApiError::Unauthorized("wrong user name or password".into()));
    }
    logins().succeeded(&keys);
    let (s, cookie) = session::open(&state, &user)?;
    tracing::info!(event = "login", user = %user);
    Ok(HttpResponse::Ok().cookie(cookie).json(SessionInfo { user, csrf: s.csrf }))
}

async fn whoami(req: HttpRequest, state: web::Data<CcmState>) -> Result<HttpResponse, ApiError> {
    let caller = req.extensions().get::<session::Caller>().cloned();
    match caller.ok_or_else(|| ApiError::Unauthorized("no session".into()))? {
        session::Caller::Token => ok(SessionInfo { user: "token".into(), csrf: String::new() }),
        session::Caller::User(_) => {
            let s: SessionRecord =
                session::current(&req, &state)?.ok_or_else(|| ApiError::Unauthorized("no session".into()))?;
            ok(SessionInfo { user: s.user, csrf: s.csrf })
        }
    }
}

async fn logout(req: HttpRequest, state: web::Data<CcmState>) -> Result<HttpResponse, ApiError> {
    let gone = session::close(&req, &state)?;
    Ok(HttpResponse::Ok().cookie(gone).json(serde_json::json!({})))
}

/// `POST /api/v1/users`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewUser {
    /// Login name.
    pub name: String,
    /// Password (at least 10 characters).
    pub password: String,
}

/// A user as the API shows it (never the hash).
#[derive(Debug, Serialize, Deserialize)]
pub struct UserInfo {
    /// Login name.
    pub name: String,
    /// When it was created, Unix ms.
    pub created_ms: u64,
}

async fn list_users(state: web::Data<CcmState>, q: web::Query<ListQuery>) -> Result<HttpResponse, ApiError> {
    q.limit()?;
    let users = table::<UserRecord>(&state)?.all()?;
    ok(users.into_iter().map(|u| UserInfo { name: u.name, created_ms: u.created_ms }).collect::<Vec<_>>())
}

async fn create_user(state: web::Data<CcmState>, body: web::Json<NewUser>) -> Result<HttpResponse, ApiError> {
    let NewUser { name, password } = body.into_inner();
    let good = |c: char| c.is_ascii_alphanumeric() || "-_.@".contains(c);
    if name.is_empty() || name.len() > 64 || !name.chars().all(good) {
        return Err(invalid("name", "give 1 to 64 letters, digits or - _ . @"));
    }
    if password.chars().count() < 10 {
        return Err(invalid("password", "give at least 10 characters"));
    }
    let users = table::<UserRecord>(&state)?;
    if users.get(&name)?.is_some() {
        return Err(ApiError::Conflict(format!("user {name} already exists")));
    }
    let rec = session::new_user(&name, &password)?;
    users.put(&rec)?;
    history(&state, HistoryKind::UserCreated, format!("admin account {name} created"), None)?;
    created(&state, UserInfo { name: rec.name, created_ms: rec.created_ms })
}

async fn delete_user(state: web::Data<CcmState>, name: web::Path<String>) -> Result<HttpResponse, ApiError> {
    table::<UserRecord>(&state)?.delete(&name)?.ok_or_else(|| not_found("user", &*name))?;
    for s in table::<SessionRecord>(&state)?.all()?.into_iter().filter(|s| s.user == *name) {
        table::<SessionRecord>(&state)?.delete(&s.token_sha256)?;
    }
    history(&state, HistoryKind::UserDeleted, format!("admin account {name} deleted"), None)?;
    state.db.flush()?;
    ok(serde_json::json!({}))
}

// ---- sites --------------------------------------------------------------

/// `POST /api/v1/sites`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewSite {
    /// The site's name.
    pub name: String,
    /// Its staging directory (absolute).
    pub staging: PathBuf,
}

/// `PUT /api/v1/sites/{name}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SiteChange {
    /// Its staging directory (absolute).
    pub staging: PathBuf,
}

fn check_staging(staging: &std::path::Path) -> Result<(), ApiError> {
    if !staging.is_absolute() {
        return Err(invalid("staging", format!("{} is not an absolute path", staging.display())));
    }
    if !staging.is_dir() {
        return Err(invalid("staging", format!("{} is not a directory on the CCM", staging.display())));
    }
    Ok(())
}

async fn list_sites(state: web::Data<CcmState>, q: web::Query<ListQuery>) -> Result<HttpResponse, ApiError> {
    q.limit()?;
    ok(table::<SiteRecord>(&state)?.all()?)
}

async fn get_site(state: web::Data<CcmState>, name: web::Path<String>) -> Result<HttpResponse, ApiError> {
    ok(table::<SiteRecord>(&state)?.get(&name)?.ok_or_else(|| not_found("site", &*name))?)
}

async fn create_site(state: web::Data<CcmState>, body: web::Json<NewSite>) -> Result<HttpResponse, ApiError> {
    let NewSite { name, staging } = body.into_inner();
    SiteName::new(&name).map_err(|e| invalid("name", e.to_string()))?;
    check_staging(&staging)?;
    let sites = table::<SiteRecord>(&state)?;
    if sites.get(&name)?.is_some() {
        return Err(ApiError::Conflict(format!("site {name} already exists")));
    }
    let rec = SiteRecord { name, staging, live_serial: 0, last_serial: 0, created_ms: unix_ms() };
    sites.put(&rec)?;
    history(
        &state,
        HistoryKind::SiteCreated,
        format!("site {} staged at {}", rec.name, rec.staging.display()),
        Some(&rec.name),
    )?;
    created(&state, rec)
}

async fn update_site(
    state: web::Data<CcmState>,
    name: web::Path<String>,
    body: web::Json<SiteChange>,
) -> Result<HttpResponse, ApiError> {
    let staging = body.into_inner().staging;
    check_staging(&staging)?;
    let sites = table::<SiteRecord>(&state)?;
    sites.get(&name)?.ok_or_else(|| not_found("site", &*name))?;
    let rec = sites.update(&name, |s| s.map(|s| SiteRecord { staging: staging.clone(), ..s }))?;
    history(
        &state,
        HistoryKind::SiteChanged,
        format!("site {name} now staged at {}", staging.display()),
        Some(&name),
    )?;
    state.db.flush()?;
    ok(rec)
}

async fn delete_site(state: web::Data<CcmState>, name: web::Path<String>) -> Result<HttpResponse, ApiError> {
    table::<SiteRecord>(&state)?.get(&name)?.ok_or_else(|| not_found("site", &*name))?;
    let groups: Vec<String> = table::<GroupRecord>(&state)?
        .all()?
        .into_iter()
        .filter(|g| g.site == *name)
        .map(|g| g.name)
        .collect();
    if !groups.is_empty() {
        return Err(ApiError::Conflict(format!(
            "site {name} is served by content groups {}; delete them first",
            groups.join(", ")
        )));
    }
    table::<SiteRecord>(&state)?.delete(&name)?;
    history(&state, HistoryKind::SiteDeleted, format!("site {name} deleted"), Some(&name))?;
    state.db.flush()?;
    ok(serde_json::json!({}))
}

// ---- content groups -----------------------------------------------------

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

/// `PUT /api/v1/groups/{name}`: what is given changes.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupChange {
    /// Its servers.
    pub servers: Option<Vec<u64>>,
    /// The go-live quorum.
    pub quorum: Option<Quorum>,
}

fn check_quorum(field: &str, q: Quorum) -> Result<(), ApiError> {
    match q {
        Quorum::Count(0) => Err(invalid(field, "a count of 0 would go live with no server")),
        Quorum::Percent(p) if !(p > 0.0 && p <= 100.0) => {
            Err(invalid(field, format!("{p} is not a percentage in (0, 100]")))
        }
        _ => Ok(()),
    }
}

/// ` (name)` after a job's id when it has a name.
fn named(name: &str) -> String {
    if name.is_empty() {
        String::new()
    } else {
        format!(" ({name})")
    }
}

/// A group's servers: at least one, each a server some leader has reported.
fn check_servers(state: &CcmState, servers: Vec<u64>) -> Result<Vec<NodeId>, ApiError> {
    if servers.is_empty() {
        return Err(invalid("servers", "a content group needs at least one server"));
    }
    if servers.contains(&0) {
        return Err(invalid("servers", "0 is the CCM's node id, not a server's"));
    }
    let mut servers: Vec<NodeId> = servers.into_iter().map(NodeId).collect();
    servers.sort();
    servers.dedup();
    let known = table::<ServerRecord>(state)?;
    for s in &servers {
        if known.get(s)?.is_none() {
            return Err(invalid(
                "servers",
                format!(
                    "server {s} is not known: no group leader has reported it; start its agent \
                     (agent.id = {s}) or correct the id (see GET /api/v1/servers)"
                ),
            ));
        }
    }
    Ok(servers)
}

async fn list_groups(state: web::Data<CcmState>, q: web::Query<ListQuery>) -> Result<HttpResponse, ApiError> {
    q.limit()?;
    ok(table::<GroupRecord>(&state)?.all()?)
}

async fn get_group(state: web::Data<CcmState>, name: web::Path<String>) -> Result<HttpResponse, ApiError> {
    ok(table::<GroupRecord>(&state)?.get(&name)?.ok_or_else(|| not_found("content group", &*name))?)
}

async fn create_group(
    state: web::Data<CcmState>,
    body: web::Json<NewGroup>,
) -> Result<HttpResponse, ApiError> {
    let g = body.into_inner();
    // Group names end up in paths, logs and URLs: the same safe rule as site names.
    if !SiteName::valid(&g.name) {
        return Err(invalid(
            "name",
            format!(
                "{:?} is not a group name: use 1 to 64 ASCII letters, digits, '.', '_' or '-', \
                 starting with a letter or digit",
                g.name
            ),
        ));
    }
    if table::<SiteRecord>(&state)?.get(&g.site)?.is_none() {
        return Err(invalid("site", format!("site {:?} does not exist; create it first", g.site)));
    }
    let servers = check_servers(&state, g.servers)?;
    check_quorum("quorum", g.quorum)?;
    let groups = table::<GroupRecord>(&state)?;
    if groups.get(&g.name)?.is_some() {
        return Err(ApiError::Conflict(format!("content group {} already exists", g.name)));
    }
    let rec = GroupRecord { name: g.name, site: g.site, servers, quorum: g.quorum };
    groups.put(&rec)?;
    history(
        &state,
        HistoryKind::GroupCreated,
        format!("content group {} of site {}: servers {}", rec.name, rec.site, ids::join(&rec.servers)),
        Some(&rec.site),
    )?;
    created(&state, rec)
}

async fn update_group(
    state: web::Data<CcmState>,
    name: web::Path<String>,
    body: web::Json<GroupChange>,
) -> Result<HttpResponse, ApiError> {
    let change = body.into_inner();
    let groups = table::<GroupRecord>(&state)?;
    let mut rec = groups.get(&name)?.ok_or_else(|| not_found("content group", &*name))?;
    if let Some(s) = change.servers {
        rec.servers = check_servers(&state, s)?;
    }
    if let Some(q) = change.quorum {
        check_quorum("quorum", q)?;
        rec.quorum = q;
    }
    groups.put(&rec)?;
    history(
        &state,
        HistoryKind::GroupChanged,
        format!("content group {}: servers {}, quorum {}", rec.name, ids::join(&rec.servers), rec.quorum),
        Some(&rec.site),
    )?;
    // The scheduler's conflict check uses the group's servers.
    for j in table::<JobRecord>(&state)?.all()?.into_iter().filter(|j| j.group == rec.name) {
        state.scheduler.do_send(JobChanged(j.id));
    }
    state.db.flush()?;
    ok(rec)
}

async fn delete_group(state: web::Data<CcmState>, name: web::Path<String>) -> Result<HttpResponse, ApiError> {
    let rec = table::<GroupRecord>(&state)?.get(&name)?.ok_or_else(|| not_found("content group", &*name))?;
    let jobs: Vec<u64> =
        table::<JobRecord>(&state)?.all()?.into_iter().filter(|j| j.group == *name).map(|j| j.id.0).collect();
    if !jobs.is_empty() {
        return Err(ApiError::Conflict(format!(
            "content group {name} is used by jobs {}; delete them first",
            ids::join(&jobs)
        )));
    }
    table::<GroupRecord>(&state)?.delete(&name)?;
    history(&state, HistoryKind::GroupDeleted, format!("content group {name} deleted"), Some(&rec.site))?;
    state.db.flush()?;
    ok(serde_json::json!({}))
}

// ---- servers and segments -----------------------------------------------

async fn list_servers(
    state: web::Data<CcmState>,
    q: web::Query<ListQuery>,
) -> Result<HttpResponse, ApiError> {
    q.limit()?;
    ok(table::<ServerRecord>(&state)?.all()?)
}

async fn get_server(state: web::Data<CcmState>, id: web::Path<u64>) -> Result<HttpResponse, ApiError> {
    ok(table::<ServerRecord>(&state)?.get(&NodeId(*id))?.ok_or_else(|| not_found("server", *id))?)
}

async fn list_segments(
    state: web::Data<CcmState>,
    q: web::Query<ListQuery>,
) -> Result<HttpResponse, ApiError> {
    q.limit()?;
    ok(table::<SegmentRecord>(&state)?.all()?)
}

// ---- jobs ---------------------------------------------------------------

/// `POST /api/v1/jobs` and `PUT /api/v1/jobs/{id}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobInput {
    /// A name for people.
    #[serde(default)]
    pub name: String,
    /// The site.
    pub site: String,
    /// The content group.
    pub group: String,
    /// What it does (default `publish`).
    #[serde(default)]
    pub kind: JobKind,
    /// What the kind needs.
    #[serde(default)]
    pub params: JobParams,
    /// When it runs by itself (default: only when asked).
    #[serde(default)]
    pub schedule: Schedule,
    /// How it runs.
    #[serde(default)]
    pub policy: Policy,
    /// A disabled job runs only when asked (default true).
    #[serde(default = "crate::storage::records::yes")]
    pub enabled: bool,
    /// Made for one action (a rollback, switch or restore): hidden from
    /// the job list unless `?all=true`.
    #[serde(default)]
    pub one_off: bool,
}

/// A job as the API shows it: the record and its next run time.
#[derive(Debug, Serialize, Deserialize)]
pub struct JobView {
    /// The job.
    #[serde(flatten)]
    pub job: JobRecord,
    /// When it runs next by itself, Unix ms.
    pub next_run_ms: Option<u64>,
    /// Its newest run, if it ran.
    #[serde(default)]
    pub last_run: Option<LastRun>,
}

/// A job's newest run, as the job list shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LastRun {
    /// The run.
    pub id: RunId,
    /// Where it is.
    pub state: crate::storage::records::RunState,
    /// When it started, Unix ms.
    pub started_ms: u64,
    /// When it ended, Unix ms.
    pub finished_ms: Option<u64>,
}

fn view(state: &CcmState, job: JobRecord) -> JobView {
    let t = &job.times;
    let mut next_run_ms = [t.next_due_ms, t.retry_at_ms].into_iter().flatten().min();
    if next_run_ms.is_none() && *t == JobTimes::default() {
        // Not yet seen by the scheduler (it persists its times a moment later).
        next_run_ms = schedule::next_due(&job.schedule, unix_ms(), state.time_zone);
    }
    let last_run =
        job.runs.last().and_then(|id| table::<RunRecord>(state).ok()?.get(id).ok().flatten()).map(|r| {
            LastRun { id: r.id, state: r.state, started_ms: r.started_ms, finished_ms: r.finished_ms }
        });
    JobView { next_run_ms: next_run_ms.filter(|_| job.enabled), job, last_run }
}

fn check_patterns(field: &str, patterns: &[String]) -> Result<(), ApiError> {
    TreeFilter::new(patterns, &[]).map(|_| ()).map_err(|e| invalid(field, e.to_string()))
}

/// Checks a job's definition against the database; answers the group.
pub fn check_job(state: &CcmState, j: &JobInput) -> Result<GroupRecord, ApiError> {
    if j.name.len() > 128 {
        return Err(invalid("name", "give at most 128 characters"));
    }
    if table::<SiteRecord>(state)?.get(&j.site)?.is_none() {
        return Err(invalid("site", format!("site {:?} does not exist", j.site)));
    }
    let group = match table::<GroupRecord>(state)?.get(&j.group)? {
        None => return Err(invalid("group", format!("content group {:?} does not exist", j.group))),
        Some(g) if g.site != j.site => {
            return Err(invalid(
                "group",
                format!("content group {:?} serves site {:?}, not {:?}", g.name, g.site, j.site),
            ))
        }
        Some(g) => g,
    };
    let p = &j.params;
    match j.kind {
        JobKind::Switch if p.serial.is_none_or(|s| s == 0) => {
            return Err(invalid("params.serial", "a switch names the release to make live (a serial ≥ 1)"))
        }
        JobKind::Restore => {
            let Some(id) = p.checkpoint else {
                return Err(invalid("params.checkpoint", "a restore names the checkpoint to restore"));
            };
            let found = Checkpoints::new(&state.checkpoints).get(&j.site, id).map_err(ck_err)?;
            if found.is_none() {
                return Err(invalid("params.checkpoint", format!("site {} has no checkpoint {id}", j.site)));
            }
        }
        JobKind::Hot if p.paths.is_empty() => {
            return Err(invalid("params.paths", "a hot job names the files to push"))
        }
        JobKind::Hot if p.extra_servers.is_none_or(|n| n == 0) => {
            return Err(invalid("params.extra_servers", "a hot job pushes to 1 or more extra servers"))
        }
        _ => {}
    }
    // Refused as given, never trimmed: "/etc/passwd" is not "etc/passwd".
    for path in &p.paths {
        SitePath::new(path).map_err(|e| {
            invalid(
                "params.paths",
                format!("{e}; give paths relative to the site root, like \"docs/index.html\""),
            )
        })?;
    }
    schedule::validate(&j.schedule).map_err(|e| invalid(e.field(), e.to_string()))?;
    let pol = &j.policy;
    if let Some(q) = pol.quorum {
        check_quorum("policy.quorum", q)?;
    }
    pol.retry.validate().map_err(|e| invalid("policy.retry", e.to_string()))?;
    if pol.retry.attempts > 0 && pol.retry.backoff_ms < 100 {
        return Err(invalid("policy.retry.backoff_ms", "give at least 100 ms between retries"));
    }
    check_patterns("policy.include", &pol.include)?;
    check_patterns("policy.exclude", &pol.exclude)?;
    check_patterns("policy.compress_include", &pol.compress_include)?;
    check_patterns("policy.compress_exclude", &pol.compress_exclude)?;
    if pol.bandwidth.is_some_and(|b| b < 1024) {
        return Err(invalid(
            "policy.bandwidth",
            "give at least 1024 bytes per second, or leave it out for no limit",
        ));
    }
    Ok(group)
}

/// Stores a new job from a checked definition (flushed) and tells the scheduler.
fn add_job(state: &CcmState, j: JobInput) -> Result<JobRecord, ApiError> {
    let rec = JobRecord {
        id: JobId(state.db.next("job")?),
        name: j.name,
        site: j.site,
        group: j.group,
        kind: j.kind,
        params: j.params,
        schedule: j.schedule,
        policy: j.policy,
        enabled: j.enabled,
        times: JobTimes::default(),
        created_ms: unix_ms(),
        runs: Vec::new(),
        one_off: j.one_off,
    };
    table::<JobRecord>(state)?.put(&rec)?;
    state.db.flush()?;
    state.scheduler.do_send(JobChanged(rec.id));
    Ok(rec)
}

async fn list_jobs(state: web::Data<CcmState>, q: web::Query<ListQuery>) -> Result<HttpResponse, ApiError> {
    q.limit()?;
    let all = q.all == Some(true);
    let jobs = table::<JobRecord>(&state)?.all()?.into_iter().filter(|j| all || !j.one_off);
    ok(jobs.map(|j| view(&state, j)).collect::<Vec<_>>())
}

async fn get_job(state: web::Data<CcmState>, id: web::Path<u64>) -> Result<HttpResponse, ApiError> {
    ok(view(&state, table::<JobRecord>(&state)?.get(&JobId(*id))?.ok_or_else(|| not_found("job", *id))?))
}

async fn create_job(state: web::Data<CcmState>, body: web::Json<JobInput>) -> Result<HttpResponse, ApiError> {
    let j = body.into_inner();
    check_job(&state, &j)?;
    let rec = add_job(&state, j)?;
    history(
        &state,
        HistoryKind::JobCreated,
        format!(
            "job {}{} {} site {} on group {}",
            rec.id,
            named(&rec.name),
            rec.kind.name(),
            rec.site,
            rec.group
        ),
        Some(&rec.site),
    )?;
    created(&state, view(&state, rec))
}

async fn update_job(
    state: web::Data<CcmState>,
    id: web::Path<u64>,
    body: web::Json<JobInput>,
) -> Result<HttpResponse, ApiError> {
    let id = JobId(*id);
    let old = table::<JobRecord>(&state)?.get(&id)?.ok_or_else(|| not_found("job", id))?;
    let j = body.into_inner();
    check_job(&state, &j)?;
    // A new schedule starts afresh; the same one keeps its times.
    let times = if j.schedule == old.schedule { old.times.clone() } else { JobTimes::default() };
    let rec = JobRecord {
        name: j.name,
        site: j.site,
        group: j.group,
        kind: j.kind,
        params: j.params,
        schedule: j.schedule,
        policy: j.policy,
        enabled: j.enabled,
        times,
        ..old
    };
    table::<JobRecord>(&state)?.put(&rec)?;
    history(&state, HistoryKind::JobChanged, format!("job {id} changed"), Some(&rec.site))?;
    state.db.flush()?;
    state.scheduler.do_send(JobChanged(id));
    ok(view(&state, rec))
}

async fn delete_job(state: web::Data<CcmState>, id: web::Path<u64>) -> Result<HttpResponse, ApiError> {
    let id = JobId(*id);
    let rec = table::<JobRecord>(&state)?.delete(&id)?.ok_or_else(|| not_found("job", id))?;
    history(&state, HistoryKind::JobDeleted, format!("job {id} deleted"), Some(&rec.site))?;
    state.db.flush()?;
    state.scheduler.do_send(JobChanged(id));
    ok(serde_json::json!({}))
}

/// Answer of `POST /api/v1/jobs/{id}/run`.
#[derive(Debug, Serialize, Deserialize)]
pub struct RunStarted {
    /// The new run.
    pub run: RunId,
}

async fn run_job(state: web::Data<CcmState>, id: web::Path<u64>) -> Result<HttpResponse, ApiError> {
    let run = state.ccm.send(RunJob { job: JobId(*id), reason: "manual".into() }).await??;
    Ok(HttpResponse::Accepted().json(RunStarted { run }))
}

/// `GET /api/v1/jobs/{id}/plan`: what a run of the job would do now.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JobPlan {
    /// The job.
    pub job: JobId,
    /// Its kind.
    pub kind: JobKind,
    /// What a run of that kind does, in one line.
    pub description: String,
    /// Whether a run would start now.
    pub runnable: bool,
    /// Why it would not (or why it would end at once), for people.
    pub blocked: Option<String>,
    /// The release it would make (header-only kinds: make live).
    pub serial: Option<u64>,
    /// The release it would be a delta against (0: full; header-only
    /// kinds: the live one it switches from).
    pub base_serial: Option<u64>,
    /// Every server it would send to.
    pub targets: Vec<NodeId>,
    /// Of those, the ones offline now.
    pub offline: Vec<NodeId>,
    /// Targets that must succeed for the release to go live.
    pub needed: usize,
    /// The quorum for people: `≥ 3 of 4`.
    pub quorum: String,
    /// A publish: what it would send, against the live release.
    pub changes: Option<crate::storage::pack::ChangePreview>,
}

/// Paths a job plan lists at most.
const PLAN_PATHS: usize = 20;

async fn plan_job(state: web::Data<CcmState>, id: web::Path<u64>) -> Result<HttpResponse, ApiError> {
    use crate::actors::ccm::PreviewRun;
    use crate::protocol::run::Start;
    let p = state.ccm.send(PreviewRun { job: JobId(*id) }).await??;
    let kind = p.job.kind;
    let mut plan = JobPlan {
        job: p.job.id,
        kind,
        description: kind.summary().into(),
        runnable: false,
        blocked: None,
        serial: None,
        base_serial: None,
        targets: Vec::new(),
        offline: Vec::new(),
        needed: 0,
        quorum: String::new(),
        changes: None,
    };
    let run = match p.plan {
        Ok(run) => run,
        Err(e) => {
            plan.blocked = Some(e.to_string());
            return ok(plan);
        }
    };
    plan.quorum = format!("≥ {} of {}", run.needed, run.targets.len());
    plan.blocked = match run.start {
        Start::Go => p.busy.map(|r| format!("run {r} is in progress on the same servers: a run now would wait")),
        Start::InSync => Some("every server of the group is in sync: a run would end unchanged".into()),
        Start::NoServers => Some("the run would have no server to send to".into()),
        Start::NoQuorum { needed, online } => Some(format!(
            "only {online} of the targets are online and {needed} are needed: a run would fail at once (offline: {})",
            ids::join(&run.offline)
        )),
    };
    plan.runnable = run.start == Start::Go;
    plan.serial = Some(run.serial);
    plan.base_serial = Some(run.base);
    plan.targets = run.targets.clone();
    plan.offline = run.offline.clone();
    plan.needed = run.needed;
    if let Some((old, new, filter)) = p.compare {
        let changes = web::block(move || crate::storage::pack::preview(&old, &new, &filter, PLAN_PATHS))
            .await
            .map_err(|e| ApiError::Internal(format!("the diff task stopped: {e}")))?;
        match changes {
            Ok(c) => {
                if c.is_empty() && plan.blocked.is_none() {
                    plan.blocked = Some("staging equals the live release: a run would end unchanged".into());
                }
                plan.changes = Some(c);
            }
            Err(e) => plan.blocked = Some(format!("staging cannot be read: {e}")),
        }
    }
    ok(plan)
}

async fn cancel_job(state: web::Data<CcmState>, id: web::Path<u64>) -> Result<HttpResponse, ApiError> {
    let job = table::<JobRecord>(&state)?.get(&JobId(*id))?.ok_or_else(|| not_found("job", *id))?;
    let runs = table::<RunRecord>(&state)?;
    let live = job.runs.iter().rev().find_map(|r| runs.get(r).ok().flatten().filter(|r| !r.state.is_final()));
    let Some(run) = live else {
        return Err(ApiError::Conflict(format!("job {id} has no run in progress")));
    };
    state.ccm.send(CancelRun(run.id)).await??;
    Ok(HttpResponse::Accepted().json(RunStarted { run: run.id }))
}

// ---- runs ---------------------------------------------------------------

/// Filters of list routes.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    /// Only this job's.
    pub job: Option<u64>,
    /// Only this site's.
    pub site: Option<String>,
    /// Only this run's.
    pub run: Option<RunId>,
    /// Only this kind of event.
    pub kind: Option<String>,
    /// At most this many (default 100, at most 10000).
    pub limit: Option<usize>,
    /// Jobs: the one-off ones too.
    pub all: Option<bool>,
}

impl ListQuery {
    fn limit(&self) -> Result<usize, ApiError> {
        match self.limit {
            Some(0) => Err(invalid("limit", "give 1 or more")),
            Some(n) if n > 10_000 => Err(invalid("limit", "give at most 10000")),
            Some(n) => Ok(n),
            None => Ok(100),
        }
    }
}

async fn list_runs(state: web::Data<CcmState>, q: web::Query<ListQuery>) -> Result<HttpResponse, ApiError> {
    let limit = q.limit()?;
    let mut runs: Vec<RunRecord> = table::<RunRecord>(&state)?
        .all()?
        .into_iter()
        .filter(|r| q.job.is_none_or(|j| r.job.0 == j) && q.site.as_ref().is_none_or(|s| *s == r.site))
        .collect();
    runs.reverse();
    runs.truncate(limit);
    ok(runs)
}

async fn get_run(state: web::Data<CcmState>, id: web::Path<RunId>) -> Result<HttpResponse, ApiError> {
    ok(table::<RunRecord>(&state)?.get(&id)?.ok_or_else(|| not_found("run", *id))?)
}

async fn cancel_run(state: web::Data<CcmState>, id: web::Path<RunId>) -> Result<HttpResponse, ApiError> {
    state.ccm.send(CancelRun(*id)).await??;
    Ok(HttpResponse::Accepted().json(RunStarted { run: *id }))
}

// ---- assignments, snapshots, events --------------------------------------

async fn list_assignments(
    state: web::Data<CcmState>,
    q: web::Query<ListQuery>,
) -> Result<HttpResponse, ApiError> {
    let limit = q.limit()?;
    let mut v: Vec<AssignmentRecord> = table::<AssignmentRecord>(&state)?
        .all()?
        .into_iter()
        .filter(|a| q.site.as_ref().is_none_or(|s| *s == a.site) && q.run.is_none_or(|r| r == a.run))
        .collect();
    v.reverse();
    v.truncate(limit);
    ok(v)
}

async fn get_assignment(
    state: web::Data<CcmState>,
    id: web::Path<AssignmentId>,
) -> Result<HttpResponse, ApiError> {
    ok(table::<AssignmentRecord>(&state)?.get(&id)?.ok_or_else(|| not_found("assignment", *id))?)
}

async fn list_snapshots(
    state: web::Data<CcmState>,
    q: web::Query<ListQuery>,
) -> Result<HttpResponse, ApiError> {
    let t = table::<SnapshotRecord>(&state)?;
    let mut v = match &q.site {
        Some(s) => t.with_prefix(s)?,
        None => t.all()?,
    };
    v.reverse();
    v.truncate(q.limit()?);
    ok(v)
}

async fn list_events(state: web::Data<CcmState>, q: web::Query<ListQuery>) -> Result<HttpResponse, ApiError> {
    let limit = q.limit()?;
    let mut v: Vec<HistoryRecord> = table::<HistoryRecord>(&state)?
        .all()?
        .into_iter()
        .filter(|h| {
            q.kind.as_ref().is_none_or(|k| k == h.kind.name())
                && q.site.as_ref().is_none_or(|s| h.site.as_ref() == Some(s))
                && q.run.is_none_or(|r| h.run == Some(r))
        })
        .collect();
    v.reverse();
    v.truncate(limit);
    ok(v)
}

// ---- checkpoints --------------------------------------------------------

/// `POST /api/v1/checkpoints`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewCheckpoint {
    /// The site.
    pub site: String,
}

/// `POST /api/v1/checkpoints/{site}/{id}/restore`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RestoreRequest {
    /// The content group to restore on.
    pub group: String,
}

/// Answer of a restore: the job made and its run.
#[derive(Debug, Serialize, Deserialize)]
pub struct RestoreStarted {
    /// The restore job.
    pub job: JobId,
    /// Its run.
    pub run: RunId,
}

fn checkpoints(state: &CcmState) -> Checkpoints {
    Checkpoints::new(&state.checkpoints)
}

/// A checkpoint error as the caller should see it: a bad site name is the
/// caller's mistake (400), a missing checkpoint 404, a taken id 409.
fn ck_err(e: crate::storage::checkpoint::CheckpointError) -> ApiError {
    use crate::storage::checkpoint::CheckpointError as E;
    match e {
        E::BadSite(e) => invalid("site", e.to_string()),
        e @ E::NotFound { .. } => ApiError::NotFound(e.to_string()),
        e @ E::Exists { .. } => ApiError::Conflict(e.to_string()),
        e => ApiError::Internal(e.to_string()),
    }
}

async fn list_checkpoints(
    state: web::Data<CcmState>,
    q: web::Query<ListQuery>,
) -> Result<HttpResponse, ApiError> {
    let sites: Vec<String> = match &q.site {
        Some(s) => {
            table::<SiteRecord>(&state)?
                .get(s)?
                .ok_or_else(|| invalid("site", format!("site {s:?} does not exist")))?;
            vec![s.clone()]
        }
        None => table::<SiteRecord>(&state)?.all()?.into_iter().map(|s| s.name).collect(),
    };
    let mut all = Vec::new();
    for s in sites {
        all.extend(checkpoints(&state).list(&s).map_err(ck_err)?);
    }
    ok(all)
}

async fn create_checkpoint(
    state: web::Data<CcmState>,
    body: web::Json<NewCheckpoint>,
) -> Result<HttpResponse, ApiError> {
    let site = body.into_inner().site;
    if table::<SiteRecord>(&state)?.get(&site)?.is_none() {
        return Err(invalid("site", format!("site {site:?} does not exist")));
    }
    let info = state.ccm.send(CreateCheckpoint { site }).await??;
    created(&state, info)
}

/// A checkpoint and every release that went live since.
#[derive(Debug, Serialize, Deserialize)]
pub struct CheckpointView {
    /// The checkpoint.
    pub checkpoint: crate::storage::checkpoint::CheckpointInfo,
    /// The snapshot log since it, oldest first.
    pub snapshots_since: Vec<SnapshotRecord>,
}

async fn get_checkpoint(
    state: web::Data<CcmState>,
    p: web::Path<(String, u64)>,
) -> Result<HttpResponse, ApiError> {
    let (site, id) = p.into_inner();
    let checkpoint = checkpoints(&state)
        .get(&site, id)
        .map_err(ck_err)?
        .ok_or_else(|| not_found("checkpoint", format!("{site}/{id}")))?;
    let snapshots_since = table::<SnapshotRecord>(&state)?
        .with_prefix(&site)?
        .into_iter()
        .filter(|s| s.serial > checkpoint.serial || s.at_ms > checkpoint.created_ms)
        .collect();
    ok(CheckpointView { checkpoint, snapshots_since })
}

async fn delete_checkpoint(
    state: web::Data<CcmState>,
    p: web::Path<(String, u64)>,
) -> Result<HttpResponse, ApiError> {
    let (site, id) = p.into_inner();
    if !checkpoints(&state).delete(&site, id).map_err(ck_err)? {
        return Err(not_found("checkpoint", format!("{site}/{id}")));
    }
    history(
        &state,
        HistoryKind::CheckpointDeleted,
        format!("checkpoint {id} of {site} deleted"),
        Some(&site),
    )?;
    state.db.flush()?;
    ok(serde_json::json!({}))
}

async fn restore_checkpoint(
    state: web::Data<CcmState>,
    p: web::Path<(String, u64)>,
    body: web::Json<RestoreRequest>,
) -> Result<HttpResponse, ApiError> {
    let (site, id) = p.into_inner();
    let input = JobInput {
        name: format!("restore checkpoint {id}"),
        site,
        group: body.into_inner().group,
        kind: JobKind::Restore,
        params: JobParams { checkpoint: Some(id), ..JobParams::default() },
        schedule: Schedule::default(),
        policy: Policy::default(),
        enabled: true,
        one_off: true,
    };
    check_job(&state, &input).map_err(|e| match e {
        ApiError::Invalid { field, message } if field == "params.checkpoint" => ApiError::NotFound(message),
        e => e,
    })?;
    let job = add_job(&state, input)?.id;
    let run = state.ccm.send(RunJob { job, reason: "manual".into() }).await??;
    Ok(HttpResponse::Accepted().json(RestoreStarted { job, run }))
}

// ---- settings -----------------------------------------------------------

/// `PUT /api/v1/tree-order`.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TreeOrder {
    /// Segment names, served first in this order.
    pub segments: Vec<String>,
}

async fn get_tree_order(
    state: web::Data<CcmState>,
    q: web::Query<ListQuery>,
) -> Result<HttpResponse, ApiError> {
    q.limit()?;
    ok(TreeOrder { segments: tree_order(&state)? })
}

/// The static order in effect: as set through the API, else as configured.
fn tree_order(state: &CcmState) -> Result<Vec<String>, ApiError> {
    Ok(match table::<SettingRecord>(state)?.get(&"tree_order".to_owned())? {
        Some(r) => serde_json::from_value(r.value).unwrap_or_default(),
        None => state.tree_order.clone(),
    })
}

/// `GET /api/v1/settings` query: none is taken.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NoQuery {}

/// `GET /api/v1/settings`.
#[derive(Debug, Serialize, Deserialize)]
pub struct Settings {
    /// The group leaders' static order in effect.
    pub tree_order: Vec<String>,
    /// The load-balancer and cache integrations (`[lb]`, `[cache]` of the
    /// CCM's configuration file; changed there).
    pub integrations: serde_json::Value,
}

async fn get_settings(state: web::Data<CcmState>, _q: web::Query<NoQuery>) -> Result<HttpResponse, ApiError> {
    ok(Settings { tree_order: tree_order(&state)?, integrations: state.integrations.clone() })
}

async fn set_tree_order(
    state: web::Data<CcmState>,
    body: web::Json<TreeOrder>,
) -> Result<HttpResponse, ApiError> {
    let segments = body.into_inner().segments;
    let mut seen = std::collections::BTreeSet::new();
    for (i, s) in segments.iter().enumerate() {
        if s.trim().is_empty() || s.len() > 64 {
            return Err(invalid(&format!("segments[{i}]"), "give a segment name of 1 to 64 characters"));
        }
        if !seen.insert(s) {
            return Err(invalid(&format!("segments[{i}]"), format!("{s:?} is listed twice")));
        }
        if table::<SegmentRecord>(&state)?.get(s)?.is_none() {
            return Err(invalid(
                &format!("segments[{i}]"),
                format!(
                    "segment {s:?} is not known: no group leader has reported it (see GET /api/v1/segments)"
                ),
            ));
        }
    }
    state.ccm.send(SetTreeOrder(segments.clone())).await??;
    ok(TreeOrder { segments })
}
