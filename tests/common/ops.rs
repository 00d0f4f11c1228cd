//! Helpers of the operations tests: real programs (HAProxy, nginx) run as
//! children of the test, a small static web server over a directory, and
//! waiting for conditions with a deadline.
#![allow(dead_code)]

use std::net::{SocketAddr, TcpListener};
use std::path::{Component, Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};

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

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Waits (polling) until `cond` answers `Some`, failing after `limit` with `what`.
pub async fn wait_until<T, F, Fut>(limit: Duration, what: &str, mut cond: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = cond().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out after {limit:?} waiting for {what}");
        actix::clock::sleep(Duration::from_millis(100)).await;
    }
}

/// A child process killed (and reaped) when dropped.
pub struct Program {
    pub child: Child,
    pub name: &'static str,
    pub log: PathBuf,
}

impl Program {
    /// Starts `cmd` with stdout and stderr to `log`.
    pub fn start(name: &'static str, mut cmd: Command, log: &Path) -> Program {
        let out = std::fs::File::create(log).unwrap();
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        Program { child, name, log: log.to_owned() }
    }

    /// Panics with the program's log if it exited.
    pub fn assert_running(&mut self) {
        if let Ok(Some(status)) = self.child.try_wait() {
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            panic!("{} exited ({status}):\n{log}", self.name);
        }
    }
}

impl Drop for Program {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
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
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
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
