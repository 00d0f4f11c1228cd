//! Webhook delivery (the load balancer's webhook driver) against a real
//! HTTP server on 127.0.0.1: retried on 5xx with backoff, given up after
//! the configured attempts with a `lb_failed` event in the history, not
//! retried on 4xx, and every request signed so that the receiver verifies it.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix::prelude::*;
use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use cmover::ops::config::LbConfig;
use cmover::ops::lb::{LbAction, LbRequest, LoadBalancer, SetRotation, WebhookDriver};
use cmover::ops::webhook::{verify, Delivery, SIGNATURE_HEADER};
use cmover::protocol::ids::NodeId;
use cmover::storage::db::Db;
use cmover::storage::records::{HistoryKind, HistoryRecord};
use common::net::local_listener;

const SECRET: &[u8] = b"shared webhook secret";

/// What the receiver saw: (body, signature header, verified).
#[derive(Default)]
struct Seen {
    requests: Vec<(Vec<u8>, String, bool)>,
}

/// A receiver answering `fail_first` times with `status`, then 204.
fn receiver(fail_first: usize, status: u16) -> (String, Arc<Mutex<Seen>>) {
    let seen = Arc::new(Mutex::new(Seen::default()));
    let state = web::Data::new((seen.clone(), fail_first, status));
    let (listener, addr) = local_listener();
    let url = format!("http://{addr}/lb");
    let server = HttpServer::new(move || {
        App::new().app_data(state.clone()).route(
            "/lb",
            web::post().to(
                |req: HttpRequest, body: web::Bytes, s: web::Data<(Arc<Mutex<Seen>>, usize, u16)>| async move {
                    let sig = req.headers().get(SIGNATURE_HEADER).and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
                    let ok = verify(SECRET, &body, &sig);
                    let mut seen = s.0.lock().unwrap();
                    seen.requests.push((body.to_vec(), sig, ok));
                    if seen.requests.len() <= s.1 {
                        HttpResponse::build(actix_web::http::StatusCode::from_u16(s.2).unwrap()).body("not now")
                    } else {
                        HttpResponse::NoContent().finish()
                    }
                },
            ),
        )
    })
    .workers(1)
    .disable_signals()
    .listen(listener)
    .unwrap()
    .run();
    actix_rt::spawn(server);
    (url, seen)
}

fn balancer(url: &str, attempts: u32, db: &Db) -> Addr<LoadBalancer> {
    let delivery = Delivery {
        secret: SECRET.to_vec(),
        attempts,
        backoff: Duration::from_millis(50),
        timeout: Duration::from_secs(10),
    };
    let driver = WebhookDriver { url: url.into(), delivery };
    LoadBalancer::new(LbConfig::default(), db.clone(), Box::new(driver)).start()
}

fn request() -> LbRequest {
    LbRequest {
        server: NodeId(3),
        lb_server: "web-3".into(),
        site: "www".into(),
        action: LbAction::Out,
        reason: "failed to apply release 2".into(),
    }
}

fn history(db: &Db) -> Vec<HistoryRecord> {
    db.table::<HistoryRecord>().unwrap().all().unwrap()
}

#[actix_rt::test]
async fn a_webhook_is_retried_on_5xx_and_delivered_signed() {
    let db = Db::temporary().unwrap();
    let (url, seen) = receiver(2, 503);
    let lb = balancer(&url, 5, &db);
    let detail = lb.send(SetRotation(request())).await.unwrap().unwrap();
    assert!(detail.contains("attempt 3"), "{detail}");
    let seen = seen.lock().unwrap();
    assert_eq!(seen.requests.len(), 3, "two 503s, then delivered");
    for (body, sig, ok) in &seen.requests {
        assert!(*ok, "signature {sig} verifies");
        assert_eq!(body, &seen.requests[0].0, "every attempt sends the same body");
    }
    let json: serde_json::Value = serde_json::from_slice(&seen.requests[0].0).unwrap();
    assert_eq!(json["server"], 3);
    assert_eq!(json["lb_server"], "web-3");
    assert_eq!(json["site"], "www");
    assert_eq!(json["action"], "out");
    assert_eq!(json["reason"], "failed to apply release 2");
    // A body changed in transit does not verify.
    assert!(!verify(SECRET, br#"{"server":4}"#, &seen.requests[0].1));
    let h = history(&db);
    assert!(h.iter().any(|e| e.kind == HistoryKind::LbOut && e.message.contains("web-3")), "{h:#?}");
}

#[actix_rt::test]
async fn a_webhook_gives_up_after_the_configured_attempts_with_an_event() {
    let db = Db::temporary().unwrap();
    let (url, seen) = receiver(usize::MAX, 500);
    let lb = balancer(&url, 3, &db);
    let err = lb.send(SetRotation(request())).await.unwrap().unwrap_err();
    assert!(err.contains("gave up") && err.contains("after 3 attempts"), "{err}");
    assert_eq!(seen.lock().unwrap().requests.len(), 3, "exactly the configured attempts");
    assert!(seen.lock().unwrap().requests.iter().all(|r| r.2), "every attempt signed");
    let h = history(&db);
    let failed =
        h.iter().find(|e| e.kind == HistoryKind::LbFailed).unwrap_or_else(|| panic!("no lb_failed: {h:#?}"));
    assert!(failed.message.contains("web-3") && failed.message.contains("after 3 attempts"), "{failed:?}");
    assert!(!h.iter().any(|e| e.kind == HistoryKind::LbOut), "{h:#?}");
}

#[actix_rt::test]
async fn a_webhook_refused_with_4xx_is_not_retried() {
    let db = Db::temporary().unwrap();
    let (url, seen) = receiver(usize::MAX, 403);
    let lb = balancer(&url, 5, &db);
    let err = lb.send(SetRotation(request())).await.unwrap().unwrap_err();
    assert!(err.contains("refused") && err.contains("403"), "{err}");
    assert_eq!(seen.lock().unwrap().requests.len(), 1);
}
