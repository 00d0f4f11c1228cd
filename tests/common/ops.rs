//! Helpers of the operations tests: whether a real program (HAProxy,
//! nginx) is installed, a small static web server over a directory, and a
//! plain HTTP GET.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Component, Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};

use crate::common::net::local_listener;

/// Whether `program` is installed. Under `CI=true` a missing program fails
/// the test (`.ci/run` installs it); elsewhere the test is skipped, loudly.
pub fn require(program: &str, package: &str) -> bool {
    let found = Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {program}"))
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if found {
        return true;
    }
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{program} is not installed (Debian package {package}); .ci/run installs it");
    }
    eprintln!("SKIPPED: {program} is not installed (apt-get install -y {package}); this test needs the real program");
    false
}

async fn serve_file(req: HttpRequest, root: web::Data<PathBuf>) -> HttpResponse {
    let tail = req.match_info().query("tail");
    let rel = Path::new(tail);
    if rel.components().any(|c| !matches!(c, Component::Normal(_))) {
        return HttpResponse::NotFound().finish();
    }
    let mut path = root.join(rel);
    if path.is_dir() {
        path = path.join("index.html");
    }
    match std::fs::read(&path) {
        Ok(bytes) => HttpResponse::Ok().content_type("text/html").body(bytes),
        Err(_) => HttpResponse::NotFound().finish(),
    }
}

/// A static web server over `root` (resolved at each request, so a `live`
/// symlink that switches is followed) on a free 127.0.0.1 port, inside the
/// running actix system. Answers its address.
pub fn static_server(root: PathBuf) -> SocketAddr {
    let (listener, addr) = local_listener();
    let root = web::Data::new(root);
    let server = HttpServer::new(move || {
        App::new().app_data(root.clone()).route("/{tail:.*}", web::get().to(serve_file))
    })
    .workers(1)
    .disable_signals()
    .listen(listener)
    .unwrap()
    .run();
    actix_rt::spawn(server);
    addr
}

/// GET `url` (with `Host: host` when given): status, body, headers.
pub async fn get(url: &str, host: Option<&str>) -> Option<(u16, String, awc::http::header::HeaderMap)> {
    let client = awc::Client::builder().timeout(Duration::from_secs(10)).finish();
    let mut req = client.get(url);
    if let Some(h) = host {
        req = req.insert_header(("Host", h));
    }
    let mut resp = req.send().await.ok()?;
    let body = resp.body().limit(1 << 20).await.ok()?;
    Some((resp.status().as_u16(), String::from_utf8_lossy(&body).into_owned(), resp.headers().clone()))
}
