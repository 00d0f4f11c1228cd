//! The agent's node HTTP routes (see `protocol::api` for the contract):
//! `POST /node/v1/notify`, `GET /node/v1/assignments/{id}` and
//! `GET /node/v1/status`, every one behind the [`Signed`] extractor, so an
//! unsigned, wrongly signed or stale request gets `401` before a handler
//! runs.
//!
//! The routes only translate: a notify becomes a [`DistributeAssignment`]
//! for the group leader, a status query a [`GetNodeStatus`], a GET is served
//! from the assignments directory by [`files::serve_assignment`]. The
//! handlers talk to [`Recipient`]s, so tests can put fakes behind them.

use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;

use actix::{MailboxError, Recipient};
use actix_web::dev::ServerHandle;
use actix_web::http::StatusCode;
use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};

use super::files;
use super::signed::{NodeAuth, Signed, SignedError};
use crate::actors::group_leader::{DistributeAssignment, GetNodeStatus};
use crate::protocol::api::{ErrorBody, Notify};
use crate::protocol::ids::AssignmentId;

/// What the routes talk to (`app_data`).
#[derive(Clone)]
pub struct NodeApi {
    /// The group leader (notifies).
    pub notify: Recipient<DistributeAssignment>,
    /// Who answers status queries.
    pub status: Recipient<GetNodeStatus>,
    /// Where assignment copies are kept.
    pub assignments: PathBuf,
    /// The `node` label whose series `GET /metrics` serves (unsigned, like
    /// every Prometheus target).
    pub metrics_node: String,
}

/// Mounts the node routes (the app must also carry `web::Data<NodeAuth>`
/// and `web::Data<NodeApi>`).
pub fn config(cfg: &mut web::ServiceConfig) {
    cfg.route("/node/v1/notify", web::post().to(notify))
        .route("/node/v1/assignments/{id}", web::get().to(assignment))
        .route("/node/v1/status", web::get().to(status));
}

fn unavailable(e: MailboxError) -> HttpResponse {
    HttpResponse::build(StatusCode::SERVICE_UNAVAILABLE)
        .json(ErrorBody { error: format!("the agent is shutting down: {e}"), field: None })
}

async fn notify(signed: Signed, api: web::Data<NodeApi>) -> Result<HttpResponse, SignedError> {
    let notify: Notify = signed.json()?;
    if notify.targets.is_empty() {
        // Only a run's targets receive anything: a notify must say who they are.
        let error = format!(
            "notify for assignment {} of run {} names no target servers; nothing is sent to a segment without them",
            notify.assignment.id, notify.run
        );
        return Ok(HttpResponse::BadRequest().json(ErrorBody { error, field: Some("targets".into()) }));
    }
    Ok(match api.notify.send(DistributeAssignment { from: signed.node, notify }).await {
        Ok(Ok(())) => HttpResponse::Accepted().finish(),
        Ok(Err(not_leader)) => HttpResponse::Conflict().json(not_leader),
        Err(e) => unavailable(e),
    })
}

async fn assignment(
    _signed: Signed,
    id: web::Path<AssignmentId>,
    req: HttpRequest,
    api: web::Data<NodeApi>,
) -> HttpResponse {
    files::serve_assignment(&api.assignments, id.into_inner(), &req).await
}

async fn status(_signed: Signed, api: web::Data<NodeApi>) -> HttpResponse {
    match api.status.send(GetNodeStatus).await {
        Ok(s) => HttpResponse::Ok().json(s),
        Err(e) => unavailable(e),
    }
}

/// Serves the node routes on `listener` (two workers, no signal handling:
/// the agent owns shutdown). Spawns the server on the current arbiter and
/// returns its handle.
pub fn serve(
    listener: TcpListener,
    auth: NodeAuth,
    api: NodeApi,
) -> std::io::Result<(SocketAddr, ServerHandle)> {
    let addr = listener.local_addr()?;
    let auth = web::Data::new(auth);
    let api = web::Data::new(api);
    let server = HttpServer::new(move || {
        App::new()
            .app_data(auth.clone())
            .app_data(api.clone())
            .service(crate::metrics::resource(api.metrics_node.clone()))
            .configure(config)
    })
    .workers(2)
    .disable_signals()
    .shutdown_timeout(5)
    .listen(listener)?
    .run();
    let handle = server.handle();
    actix_rt::spawn(server);
    Ok((addr, handle))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::unix_ms;
    use crate::protocol::api::{self, AssignmentRef, NodeStatus, NotLeader};
    use crate::protocol::crypto::MacKey;
    use crate::protocol::ids::NodeId;
    use actix::prelude::*;
    use actix_web::test;
    use std::time::Duration;

    const SECRET: &[u8] = b"cluster secret for the node api tests";

    /// Leads when `leading`; answers a fixed status.
    struct FakeLeader {
        leading: bool,
    }

    impl Actor for FakeLeader {
        type Context = Context<Self>;
    }

    impl Handler<DistributeAssignment> for FakeLeader {
        type Result = Result<(), NotLeader>;
        fn handle(&mut self, _: DistributeAssignment, _: &mut Context<Self>) -> Self::Result {
            if self.leading {
                Ok(())
            } else {
                Err(NotLeader { leader: Some(NodeId(9)) })
            }
        }
    }

    impl Handler<GetNodeStatus> for FakeLeader {
        type Result = MessageResult<GetNodeStatus>;
        fn handle(&mut self, _: GetNodeStatus, _: &mut Context<Self>) -> Self::Result {
            MessageResult(NodeStatus {
                id: NodeId(3),
                segment: "s".into(),
                leader: Some(NodeId(3)),
                live: Default::default(),
                held: vec![7],
            })
        }
    }

    fn notify_body() -> Vec<u8> {
        serde_json::to_vec(&Notify {
            assignment: AssignmentRef {
                id: AssignmentId(7),
                site: "www".into(),
                serial: 1,
                kind: crate::protocol::assignment::Kind::Content,
                size: 3,
                sha256: "00".repeat(32),
            },
            fetch_from: "http://127.0.0.1:1".into(),
            run: crate::protocol::ids::RunId(1),
            targets: vec![NodeId(1)],
            rate_limit: None,
        })
        .unwrap()
    }

    fn signed(method: &str, path: &str, body: &[u8]) -> test::TestRequest {
        let key = MacKey::derive(SECRET, api::NODE_KEY_LABEL);
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        let mut nonce = [0u8; 16];
        nonce[..8].copy_from_slice(&NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed).to_le_bytes());
        let h = api::sign(&key, NodeId(0), Some(NodeId(1)), nonce, unix_ms(), method, path, body);
        let req = if method == "POST" { test::TestRequest::post() } else { test::TestRequest::get() };
        h.pairs()
            .into_iter()
            .fold(req.uri(path), |r, (k, v)| r.insert_header((k, v.to_owned())))
            .set_payload(body.to_vec())
    }

    #[actix_web::test]
    async fn every_route_is_signed_and_notify_answers_202_or_409_and_400_without_targets() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            crate::storage::assignment_file::assignment_path(dir.path(), AssignmentId(7)),
            b"abcdef",
        )
        .unwrap();
        for leading in [true, false] {
            let fake = FakeLeader { leading }.start();
            let api = NodeApi {
                notify: fake.clone().recipient(),
                status: fake.recipient(),
                assignments: dir.path().to_owned(),
                metrics_node: "1".into(),
            };
            let app = test::init_service(
                App::new()
                    .app_data(web::Data::new(NodeAuth::from_secret(
                        SECRET,
                        NodeId(1),
                        Duration::from_secs(30),
                    )))
                    .app_data(web::Data::new(api))
                    .configure(config),
            )
            .await;
            for (method, path) in
                [("POST", "/node/v1/notify"), ("GET", "/node/v1/assignments/7"), ("GET", "/node/v1/status")]
            {
                let req = if method == "POST" { test::TestRequest::post() } else { test::TestRequest::get() };
                let resp = test::call_service(&app, req.uri(path).to_request()).await;
                assert_eq!(resp.status(), StatusCode::UNAUTHORIZED, "unsigned {method} {path}");
            }
            let body = notify_body();
            let resp = test::call_service(&app, signed("POST", "/node/v1/notify", &body).to_request()).await;
            if leading {
                assert_eq!(resp.status(), StatusCode::ACCEPTED);
            } else {
                assert_eq!(resp.status(), StatusCode::CONFLICT);
                let nl: NotLeader = test::read_body_json(resp).await;
                assert_eq!(nl.leader, Some(NodeId(9)));
            }
            // Only targets receive: a notify naming none is refused, not taken for "everyone".
            let mut nobody: Notify = serde_json::from_slice(&body).unwrap();
            nobody.targets.clear();
            let body = serde_json::to_vec(&nobody).unwrap();
            let resp = test::call_service(&app, signed("POST", "/node/v1/notify", &body).to_request()).await;
            assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
            let e: ErrorBody = test::read_body_json(resp).await;
            assert!(e.error.contains("names no target servers"), "{}", e.error);
            let req = signed("GET", "/node/v1/assignments/7", b"").insert_header(("range", "bytes=2-"));
            let resp = test::call_service(&app, req.to_request()).await;
            assert_eq!(resp.status(), StatusCode::PARTIAL_CONTENT);
            assert_eq!(test::read_body(resp).await.as_ref(), b"cdef");
            let resp = test::call_service(&app, signed("GET", "/node/v1/status", b"").to_request()).await;
            let s: NodeStatus = test::read_body_json(resp).await;
            assert_eq!(s.held, vec![7]);
        }
    }
}
