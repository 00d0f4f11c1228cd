//! The admin REST API route by route, on an in-process cluster (a CCM and
//! two agents over real HTTP and UDP on 127.0.0.1): each route answers a
//! good call with 2xx and a bad one with the 4xx that names the problem,
//! every route refuses a caller without credentials (401), the login
//! session works with its CSRF token, and the OpenAPI document lists
//! exactly the routes served. The test checks its own coverage against
//! `admin_api::ROUTES`.

use std::collections::BTreeSet;

use cmover::http::admin_api::ROUTES;
use cmover::http::admin_client::AdminClient;
use cmover::local_cluster::{ClusterOptions, LocalCluster};
use cmover::storage::records::RunState;
use serde_json::{json, Value};

mod common;

use common::cluster::{init_logs, LIMIT};

/// Calls routes and remembers which were seen succeeding and refusing.
struct Walk {
    admin: AdminClient,
    ok: BTreeSet<(String, String)>,
    bad: BTreeSet<(String, String)>,
}

impl Walk {
    /// `template` is the route as declared (`/jobs/{id}`); `path` what is called.
    async fn hit(
        &mut self,
        method: &str,
        template: &str,
        path: &str,
        body: Option<Value>,
        want: u16,
    ) -> Value {
        let (status, v) = self.admin.call(method, &format!("/api/v1{path}"), body).await.unwrap();
        assert_eq!(status, want, "{method} {path}: {v}");
        let key = (method.to_lowercase(), template.to_owned());
        if (200..300).contains(&status) {
            self.ok.insert(key);
        } else {
            assert!(
                v["error"].as_str().is_some_and(|e| !e.is_empty()),
                "{method} {path}: no error text: {v}"
            );
            if status == 400 {
                assert!(v["field"].as_str().is_some(), "{method} {path}: 400 names no field: {v}");
            }
            self.bad.insert(key);
        }
        v
    }
}

/// Reads a Server-Sent Events stream until its first `overview` (and,
/// when asked for, `run`) events; answers them by name.
async fn first_events(url: &str, token: &str, path: &str) -> Value {
    use futures_util::StreamExt;
    let mut res =
        awc::Client::new().get(format!("{url}/api/v1{path}")).bearer_auth(token).send().await.unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers().get("content-type").unwrap(), "text/event-stream");
    let want_run = path.contains("run=");
    let mut text = String::new();
    let mut events = serde_json::Map::new();
    while events.len() < 1 + usize::from(want_run) {
        let chunk = tokio::time::timeout(std::time::Duration::from_secs(30), res.next())
            .await
            .expect("no event within 30 s")
            .expect("the stream ended")
            .unwrap();
        text.push_str(std::str::from_utf8(&chunk).unwrap());
        while let Some(end) = text.find("\n\n") {
            let block: String = text.drain(..end + 2).collect();
            let name = block.lines().find_map(|l| l.strip_prefix("event: "));
            let data = block.lines().find_map(|l| l.strip_prefix("data: "));
            if let (Some(name), Some(data)) = (name, data) {
                events.insert(name.to_owned(), serde_json::from_str(data).unwrap());
            }
        }
    }
    Value::Object(events)
}

/// Without credentials, every protected route answers 401 (and so exists: unknown routes are 404).
async fn unauthenticated_calls_get_401(url: &str) {
    let anonymous = AdminClient::new(url, "");
    for r in ROUTES.iter().filter(|r| r.auth) {
        let path = r.path.replace("{id}", "1").replace("{name}", "x").replace("{site}", "x");
        let body = r.body.map(|_| json!({}));
        let (status, v) =
            anonymous.call(&r.method.to_uppercase(), &format!("/api/v1{path}"), body).await.unwrap();
        assert_eq!(status, 401, "{} {path}: {v}", r.method);
    }
    let wrong = AdminClient::new(url, "wrong-token");
    let (status, _) = wrong.call("GET", "/api/v1/sites", None).await.unwrap();
    assert_eq!(status, 401);
}

/// The session: login, cookie, CSRF on changes, logout.
async fn session_login_works_with_its_csrf_token(url: &str, w: &mut Walk) {
    w.hit("POST", "/users", "/users", Some(json!({"name": "ada", "password": "short"})), 400).await;
    w.hit("POST", "/users", "/users", Some(json!({"name": "ada", "password": "a long password"})), 201).await;
    w.hit("GET", "/users", "/users", None, 200).await;
    w.hit("GET", "/users", "/users?limit=0", None, 400).await;
    w.hit("POST", "/session", "/session", Some(json!({"user": "ada"})), 400).await;
    let (status, _) = w
        .admin
        .call("POST", "/api/v1/session", Some(json!({"user": "ada", "password": "not the password"})))
        .await
        .unwrap();
    assert_eq!(status, 401, "a wrong password is refused");

    let client = awc::Client::default();
    let mut resp = client
        .post(format!("{url}/api/v1/session"))
        .send_json(&json!({"user": "ada", "password": "a long password"}))
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    w.ok.insert(("post".into(), "/session".into()));
    let set = resp.headers().get("set-cookie").unwrap().to_str().unwrap().to_owned();
    assert!(set.contains("HttpOnly") && set.contains("SameSite=Strict"), "{set}");
    let cookie = set.split(';').next().unwrap().to_owned();
    let csrf = resp.json::<Value>().await.unwrap()["csrf"].as_str().unwrap().to_owned();
    let with = |m: awc::http::Method, p: &str| {
        client.request(m, format!("{url}/api/v1{p}")).insert_header(("cookie", cookie.clone()))
    };
    let mut me = with(awc::http::Method::GET, "/session").send().await.unwrap();
    assert_eq!(me.status(), 200);
    assert_eq!(me.json::<Value>().await.unwrap()["user"], "ada");
    w.ok.insert(("get".into(), "/session".into()));
    // A change with the cookie but without the CSRF token: 403.
    let body = json!({"segments": ["seg-1"]});
    let r = with(awc::http::Method::PUT, "/tree-order").send_json(&body).await.unwrap();
    assert_eq!(r.status(), 403);
    let r = with(awc::http::Method::PUT, "/tree-order")
        .insert_header(("x-csrf-token", csrf))
        .send_json(&body)
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = with(awc::http::Method::DELETE, "/session").send().await.unwrap();
    assert_eq!(r.status(), 200);
    w.ok.insert(("delete".into(), "/session".into()));
    let r = with(awc::http::Method::GET, "/session").send().await.unwrap();
    assert_eq!(r.status(), 401, "the session is over");
    w.bad.insert(("get".into(), "/session".into()));
    w.hit("DELETE", "/users/{name}", "/users/nobody", None, 404).await;
    w.hit("DELETE", "/users/{name}", "/users/ada", None, 200).await;
}

/// Issue 15 item 6: failed logins are throttled per user and address: past
/// five in a row the next attempt gets 429 with `Retry-After`, even with the
/// right password (60 wrong ones at ~37/s, then the right one, used to pass).
async fn failed_logins_are_throttled_with_429_and_retry_after(url: &str, w: &mut Walk) {
    w.hit("POST", "/users", "/users", Some(json!({"name": "bob", "password": "bob's long password"})), 201)
        .await;
    let client = awc::Client::default();
    let login = |password: &str| {
        client.post(format!("{url}/api/v1/session")).send_json(&json!({"user": "bob", "password": password}))
    };
    for i in 0..5 {
        assert_eq!(login("guess").await.unwrap().status(), 401, "guess {i}");
    }
    let mut resp = login("bob's long password").await.unwrap();
    assert_eq!(resp.status(), 429, "the sixth attempt waits, right password or not");
    let retry: u64 = resp.headers().get("retry-after").unwrap().to_str().unwrap().parse().unwrap();
    assert!((1..=900).contains(&retry), "{retry}");
    let v: Value = resp.json().await.unwrap();
    assert!(v["error"].as_str().unwrap().contains("try again"), "{v}");
    w.bad.insert(("post".into(), "/session".into()));
    // Once the wait is over the right password works, and clears the count.
    std::thread::sleep(std::time::Duration::from_secs(retry));
    assert_eq!(login("bob's long password").await.unwrap().status(), 200);
    w.hit("DELETE", "/users/{name}", "/users/bob", None, 200).await;
}

#[actix_rt::test]
async fn every_route_answers_good_and_bad_calls_and_is_documented() {
    init_logs();
    let tmp = tempfile::tempdir().unwrap();
    let c = LocalCluster::start(ClusterOptions::new(&tmp.path().join("cluster"), 1, 2)).await.unwrap();
    c.wait_segments(LIMIT).await.unwrap();
    let url = c.admin.url().to_owned();
    let mut w = Walk { admin: c.admin.clone(), ok: BTreeSet::new(), bad: BTreeSet::new() };

    // The document: served without credentials, listing exactly the routes.
    let (status, doc) = AdminClient::new(&url, "").call("GET", "/api/v1/openapi.json", None).await.unwrap();
    assert_eq!(status, 200);
    w.ok.insert(("get".into(), "/openapi.json".into()));
    let documented: BTreeSet<(String, String)> = doc["paths"]
        .as_object()
        .unwrap()
        .iter()
        .flat_map(|(p, ops)| ops.as_object().unwrap().keys().map(move |m| (m.clone(), p.clone())))
        .collect();
    let declared: BTreeSet<(String, String)> =
        ROUTES.iter().map(|r| (r.method.to_owned(), format!("/api/v1{}", r.path))).collect();
    assert_eq!(documented, declared);
    unauthenticated_calls_get_401(&url).await;
    session_login_works_with_its_csrf_token(&url, &mut w).await;
    failed_logins_are_throttled_with_429_and_retry_after(&url, &mut w).await;

    // Sites.
    let staging = tmp.path().join("staging");
    std::fs::create_dir_all(&staging).unwrap();
    std::fs::write(staging.join("index.html"), vec![b'x'; 64 * 1024]).unwrap();
    let other = tmp.path().join("other");
    std::fs::create_dir_all(&other).unwrap();
    let site = |name: &str, dir: &std::path::Path| json!({"name": name, "staging": dir});
    w.hit("POST", "/sites", "/sites", Some(site("www", &staging)), 201).await;
    w.hit("POST", "/sites", "/sites", Some(json!({"name": "rel", "staging": "relative/dir"})), 400).await;
    w.hit("POST", "/sites", "/sites", Some(site("www", &staging)), 409).await;
    w.hit("GET", "/sites", "/sites", None, 200).await;
    w.hit("GET", "/sites", "/sites?color=red", None, 400).await;
    w.hit("GET", "/sites/{name}", "/sites/www", None, 200).await;
    w.hit("GET", "/sites/{name}", "/sites/nope", None, 404).await;
    w.hit("PUT", "/sites/{name}", "/sites/www", Some(json!({"staging": staging})), 200).await;
    w.hit("PUT", "/sites/{name}", "/sites/www", Some(json!({"staging": "not/absolute"})), 400).await;
    w.hit("POST", "/sites", "/sites", Some(site("tmp", &other)), 201).await;
    w.hit("DELETE", "/sites/{name}", "/sites/tmp", None, 200).await;

    // Groups.
    let group = |name: &str, servers: Value| json!({"name": name, "site": "www", "servers": servers});
    w.hit("POST", "/groups", "/groups", Some(group("web", json!([1, 2]))), 201).await;
    w.hit("POST", "/groups", "/groups", Some(group("empty", json!([]))), 400).await;
    // A server no leader has reported is refused, naming the field and the id.
    let v = w.hit("POST", "/groups", "/groups", Some(group("typo", json!([1, 99]))), 400).await;
    assert_eq!(v["field"], "servers", "{v}");
    assert!(v["error"].as_str().unwrap().contains("server 99 is not known"), "{v}");
    // Group names are safe names (issue 15 item 8): no climbing, no NUL.
    for bad in ["../../g", "g\u{0}x", "/g", ""] {
        let v = w.hit("POST", "/groups", "/groups", Some(group(bad, json!([1]))), 400).await;
        assert_eq!(v["field"], "name", "{bad:?}: {v}");
    }
    w.hit("GET", "/groups", "/groups", None, 200).await;
    w.hit("GET", "/groups", "/groups?limit=abc", None, 400).await;
    w.hit("GET", "/groups/{name}", "/groups/web", None, 200).await;
    w.hit("GET", "/groups/{name}", "/groups/nope", None, 404).await;
    w.hit(
        "PUT",
        "/groups/{name}",
        "/groups/web",
        Some(json!({"quorum": {"type": "count", "value": 1}})),
        200,
    )
    .await;
    w.hit(
        "PUT",
        "/groups/{name}",
        "/groups/web",
        Some(json!({"quorum": {"type": "count", "value": 0}})),
        400,
    )
    .await;
    w.hit("POST", "/groups", "/groups", Some(group("spare", json!([2]))), 201).await;
    w.hit("DELETE", "/groups/{name}", "/groups/spare", None, 200).await;
    w.hit("DELETE", "/sites/{name}", "/sites/www", None, 409).await;

    // Servers and segments.
    w.hit("GET", "/servers", "/servers", None, 200).await;
    w.hit("GET", "/servers", "/servers?limit=0", None, 400).await;
    w.hit("GET", "/servers/{id}", "/servers/1", None, 200).await;
    w.hit("GET", "/servers/{id}", "/servers/abc", None, 400).await;
    w.hit("GET", "/servers/{id}", "/servers/999", None, 404).await;
    w.hit("GET", "/segments", "/segments", None, 200).await;
    w.hit("GET", "/segments", "/segments?limit=0", None, 400).await;

    // Jobs, runs, assignments.
    let job = |kind: &str, extra: Value| {
        let mut j = json!({"site": "www", "group": "web", "kind": kind});
        j.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        j
    };
    let v = w.hit("POST", "/jobs", "/jobs", Some(job("publish", json!({}))), 201).await;
    let publish = v["id"].as_u64().unwrap();
    let bad_cron = job("publish", json!({"schedule": {"type": "cron", "expr": "every tuesday"}}));
    let v = w.hit("POST", "/jobs", "/jobs", Some(bad_cron), 400).await;
    assert_eq!(v["field"], "schedule.expr", "{v}");
    w.hit("POST", "/jobs", "/jobs", Some(job("switch", json!({}))), 400).await;
    w.hit("POST", "/jobs", "/jobs", Some(job("publish", json!({"policy": {"include": ["a[b"]}}))), 400).await;
    w.hit("POST", "/jobs", "/jobs", Some(job("teleport", json!({}))), 400).await;
    // A hot job's path is refused as given, not trimmed into the site (issue 15 item 8).
    let v = w
        .hit(
            "POST",
            "/jobs",
            "/jobs",
            Some(job("hot", json!({"params": {"paths": ["/etc/passwd"], "extra_servers": 1}}))),
            400,
        )
        .await;
    assert_eq!(v["field"], "params.paths", "{v}");
    w.hit("GET", "/jobs", "/jobs", None, 200).await;
    w.hit("GET", "/jobs", "/jobs?limit=0", None, 400).await;
    // A one-off job (a rollback from the releases page) is listed only when asked for.
    let v = w.hit("POST", "/jobs", "/jobs", Some(job("rollback", json!({"one_off": true}))), 201).await;
    let one_off = v["id"].clone();
    let listed = |v: &Value| v.as_array().unwrap().iter().any(|j| j["id"] == one_off);
    assert!(!listed(&w.hit("GET", "/jobs", "/jobs", None, 200).await), "a one-off job is hidden");
    assert!(listed(&w.hit("GET", "/jobs", "/jobs?all=true", None, 200).await), "?all=true lists it");
    w.hit("DELETE", "/jobs/{id}", &format!("/jobs/{one_off}"), None, 200).await;
    w.hit("GET", "/jobs/{id}", &format!("/jobs/{publish}"), None, 200).await;
    w.hit("GET", "/jobs/{id}", "/jobs/999", None, 404).await;
    let every = job("publish", json!({"schedule": {"type": "every", "interval_ms": 3_600_000}}));
    let v = w.hit("PUT", "/jobs/{id}", &format!("/jobs/{publish}"), Some(every), 200).await;
    assert!(v["next_run_ms"].as_u64().is_some(), "an interval job has a next run: {v}");
    w.hit("PUT", "/jobs/{id}", &format!("/jobs/{publish}"), Some(job("hot", json!({}))), 400).await;
    // The plan of a run before it starts: the diff against live, the
    // targets, the quorum as a count, what the kind does.
    let v = w.hit("GET", "/jobs/{id}/plan", &format!("/jobs/{publish}/plan"), None, 200).await;
    assert_eq!(v["runnable"], true, "{v}");
    assert_eq!(v["targets"], json!([1, 2]), "{v}");
    assert_eq!(v["quorum"], "≥ 1 of 2", "{v}");
    assert_eq!(v["changes"]["files_new"], 1, "{v}");
    assert_eq!(v["changes"]["paths"], json!(["+ index.html"]), "{v}");
    assert!(v["description"].as_str().unwrap().contains("staging"), "{v}");
    w.hit("GET", "/jobs/{id}/plan", "/jobs/999/plan", None, 404).await;
    w.hit("POST", "/jobs/{id}/cancel", &format!("/jobs/{publish}/cancel"), None, 409).await;
    let v = w.hit("POST", "/jobs/{id}/run", &format!("/jobs/{publish}/run"), None, 202).await;
    let run = v["run"].as_u64().unwrap();
    w.hit("POST", "/jobs/{id}/run", "/jobs/999/run", None, 404).await;
    let r = c.admin.wait_run(run, LIMIT).await.unwrap();
    assert_eq!(r.state, RunState::Committed, "{r:#?}");
    w.hit("GET", "/runs", "/runs", None, 200).await;
    w.hit("GET", "/runs", "/runs?limit=0", None, 400).await;
    w.hit("GET", "/runs/{id}", &format!("/runs/{run}"), None, 200).await;
    w.hit("GET", "/runs/{id}", "/runs/999", None, 404).await;
    w.hit("POST", "/runs/{id}/cancel", &format!("/runs/{run}/cancel"), None, 409).await;
    let assignment = r.content_assignment.unwrap();
    w.hit("GET", "/assignments", "/assignments?site=www", None, 200).await;
    w.hit("GET", "/assignments", "/assignments?limit=x", None, 400).await;
    w.hit("GET", "/assignments/{id}", &format!("/assignments/{assignment}"), None, 200).await;
    w.hit("GET", "/assignments/{id}", "/assignments/999", None, 404).await;
    w.hit("GET", "/snapshots", "/snapshots?site=www", None, 200).await;
    w.hit("GET", "/snapshots", "/snapshots?limit=0", None, 400).await;

    // A slow run (1 KiB/s bandwidth limit on 64 KiB) to cancel, by job and by run.
    std::fs::write(staging.join("index.html"), vec![b'y'; 64 * 1024]).unwrap();
    let slow = job("publish", json!({"policy": {"bandwidth": 1024, "compress_exclude": ["*"]}}));
    let slow = w.hit("POST", "/jobs", "/jobs", Some(slow), 201).await["id"].as_u64().unwrap();
    let run = w.hit("POST", "/jobs/{id}/run", &format!("/jobs/{slow}/run"), None, 202).await["run"]
        .as_u64()
        .unwrap();
    w.hit("POST", "/jobs/{id}/cancel", &format!("/jobs/{slow}/cancel"), None, 202).await;
    let r = c.admin.wait_run(run, LIMIT).await.unwrap();
    assert_eq!(r.state, RunState::Cancelled, "{r:#?}");
    let run = w.hit("POST", "/jobs/{id}/run", &format!("/jobs/{slow}/run"), None, 202).await["run"]
        .as_u64()
        .unwrap();
    w.hit("POST", "/runs/{id}/cancel", &format!("/runs/{run}/cancel"), None, 202).await;
    assert_eq!(c.admin.wait_run(run, LIMIT).await.unwrap().state, RunState::Cancelled);
    w.hit("DELETE", "/jobs/{id}", &format!("/jobs/{slow}"), None, 200).await;
    w.hit("DELETE", "/jobs/{id}", "/jobs/999", None, 404).await;

    // Checkpoints.
    let v = w.hit("POST", "/checkpoints", "/checkpoints", Some(json!({"site": "www"})), 201).await;
    let ck = v["id"].as_u64().unwrap();
    w.hit("POST", "/checkpoints", "/checkpoints", Some(json!({"site": "nope"})), 400).await;
    w.hit("GET", "/checkpoints", "/checkpoints?site=www", None, 200).await;
    w.hit("GET", "/checkpoints", "/checkpoints?site=nope", None, 400).await;
    w.hit("GET", "/checkpoints/{site}/{id}", &format!("/checkpoints/www/{ck}"), None, 200).await;
    w.hit("GET", "/checkpoints/{site}/{id}", "/checkpoints/www/999", None, 404).await;
    // A bad site name is the caller's mistake, not the server's (issue 15 item 8: was 500).
    w.hit("GET", "/checkpoints/{site}/{id}", "/checkpoints/..%2F..%2Fetc/1", None, 400).await;
    w.hit("GET", "/checkpoints/{site}/{id}", "/checkpoints/bad%20site/1", None, 400).await;
    let restore = format!("/checkpoints/www/{ck}/restore");
    w.hit("POST", "/checkpoints/{site}/{id}/restore", &restore, Some(json!({"group": "nope"})), 400).await;
    let v =
        w.hit("POST", "/checkpoints/{site}/{id}/restore", &restore, Some(json!({"group": "web"})), 202).await;
    let r = c.admin.wait_run(v["run"].as_u64().unwrap(), LIMIT).await.unwrap();
    assert!(matches!(r.state, RunState::Committed | RunState::Unchanged), "{r:#?}");
    w.hit("DELETE", "/checkpoints/{site}/{id}", &format!("/checkpoints/www/{ck}"), None, 200).await;
    w.hit("DELETE", "/checkpoints/{site}/{id}", &format!("/checkpoints/www/{ck}"), None, 404).await;

    // Events and the static order.
    let v = w.hit("GET", "/events", "/events?kind=committed", None, 200).await;
    assert!(
        v.as_array().unwrap().iter().all(|e| e["kind"] == "committed") && !v.as_array().unwrap().is_empty(),
        "{v}"
    );
    w.hit("GET", "/events", "/events?limit=20000", None, 400).await;
    w.hit("GET", "/tree-order", "/tree-order", None, 200).await;
    w.hit("GET", "/tree-order", "/tree-order?x=1", None, 400).await;
    w.hit("PUT", "/tree-order", "/tree-order", Some(json!({"segments": ["seg-1"]})), 200).await;
    w.hit("PUT", "/tree-order", "/tree-order", Some(json!({"segments": ["seg-1", "seg-1"]})), 400).await;
    // A segment no leader has reported is refused, naming it.
    let v =
        w.hit("PUT", "/tree-order", "/tree-order", Some(json!({"segments": ["seg-1", "seg-9"]})), 400).await;
    assert_eq!(v["field"], "segments[1]", "{v}");
    let v = w.hit("GET", "/tree-order", "/tree-order", None, 200).await;
    assert_eq!(v["segments"], json!(["seg-1"]));
    w.hit("DELETE", "/groups/{name}", "/groups/web", None, 409).await;
    let v = w.hit("GET", "/settings", "/settings", None, 200).await;
    assert_eq!(v["tree_order"], json!(["seg-1"]), "{v}");
    assert!(v["integrations"]["lb"]["driver"].is_string(), "{v}");
    w.hit("GET", "/settings", "/settings?x=1", None, 400).await;

    // The live stream: an overview at once, and the run's record with ?run.
    let first = first_events(&url, &c.token, "/stream?run=1").await;
    assert_eq!(first["overview"]["servers"].as_array().map(Vec::len), Some(2), "{first}");
    assert_eq!(first["run"]["id"], 1, "{first}");
    w.ok.insert(("get".into(), "/stream".into()));
    w.hit("GET", "/stream", "/stream?run=abc", None, 400).await;
    w.hit("GET", "/stream", "/stream?run=99999", None, 404).await;

    // Coverage: every route was seen succeeding and refusing bad input,
    // but for the two that take none (the document, and logging out).
    let no_input: BTreeSet<(String, String)> = [("get", "/openapi.json"), ("delete", "/session")]
        .iter()
        .map(|(m, p)| (m.to_string(), p.to_string()))
        .collect();
    for r in ROUTES {
        let key = (r.method.to_owned(), r.path.to_owned());
        assert!(w.ok.contains(&key), "no successful call of {} {}", r.method, r.path);
        assert!(w.bad.contains(&key) || no_input.contains(&key), "no bad call of {} {}", r.method, r.path);
    }
    c.stop().await;
}
