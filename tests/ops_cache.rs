//! Cache invalidation against a real nginx with the cache purge module
//! (Debian `libnginx-mod-http-cache-purge`): two caching proxies in front of
//! a server's live directory, the CCM configured to PURGE only the first.
//! After a publish the first serves the changed page fresh; the second, the
//! control, still serves the stale copy it cached.

use std::path::Path;
use std::sync::OnceLock;
use std::time::Duration;

use cmover::config::Config;
use cmover::local_cluster::{ClusterOptions, LocalCluster};
use cmover::storage::records::{Quorum, RunState};

mod common;

use common::cluster::{init_logs, LIMIT};
use common::net::free_tcp_port;
use common::ops::{get, require, static_server};
use common::proc::Proc;
use common::wait::wait_every;

const HOST: &str = "www.example.test";
const PURGE_MODULE: &str = "/usr/lib/nginx/modules/ngx_http_cache_purge_module.so";
static PURGED_CACHE: OnceLock<String> = OnceLock::new();

fn ccm_cache(c: &mut Config) {
    c.cache.purge = vec![PURGED_CACHE.get().unwrap().clone()];
    c.cache.base_urls.insert("www".into(), format!("http://{HOST}/"));
}

fn write_site(dir: &Path, version: &str) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("index.html"), "<a href=page.html>page</a>\n").unwrap();
    std::fs::write(dir.join("page.html"), format!("page version {version}\n")).unwrap();
}

fn nginx_conf(prefix: &Path, origin: std::net::SocketAddr, purged: u16, control: u16) -> String {
    let p = prefix.display();
    let server = |port: u16, zone: &str, purge: bool| {
        // The module's "same location" form (`proxy_cache_purge PURGE from …`)
        // crashes Debian 12's nginx workers; the separate location works.
        let purge = if purge {
            format!(
                "        location ~ ^/purge(/.*)$ {{\n            allow 127.0.0.1;\n            deny all;\n\
                 \x20           proxy_cache_purge {zone} $host$1$is_args$args;\n        }}\n"
            )
        } else {
            String::new()
        };
        format!(
            "    server {{\n        listen 127.0.0.1:{port};\n        location / {{\n\
             \x20           proxy_pass http://{origin};\n            proxy_cache {zone};\n\
             \x20           proxy_cache_key $host$request_uri;\n            proxy_cache_valid 200 1h;\n\
             \x20           proxy_ignore_headers Cache-Control Expires Set-Cookie;\n\
             \x20           add_header X-Cache-Status $upstream_cache_status;\n        }}\n{purge}    }}\n"
        )
    };
    format!(
        "load_module {PURGE_MODULE};\nuser root;\nworker_processes 1;\npid {p}/nginx.pid;\nerror_log {p}/error.log;\n\
         events {{ worker_connections 64; }}\nhttp {{\n    access_log off;\n\
         \x20   client_body_temp_path {p}/body;\n    proxy_temp_path {p}/proxy;\n    fastcgi_temp_path {p}/fastcgi;\n\
         \x20   uwsgi_temp_path {p}/uwsgi;\n    scgi_temp_path {p}/scgi;\n\
         \x20   proxy_cache_path {p}/cache-purged keys_zone=purged:1m;\n\
         \x20   proxy_cache_path {p}/cache-control keys_zone=control:1m;\n{}{}}}\n",
        server(purged, "purged", true),
        server(control, "control", false),
    )
}

/// GET /page.html through the cache on `port`: body and X-Cache-Status.
async fn page(port: u16) -> (String, String) {
    let (status, body, headers) =
        get(&format!("http://127.0.0.1:{port}/page.html"), Some(HOST)).await.unwrap();
    assert_eq!(status, 200, "{body}");
    let cache = headers.get("x-cache-status").and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
    (body, cache)
}

#[actix_rt::test]
async fn after_a_publish_the_purged_cache_serves_the_change_and_an_unpurged_one_stays_stale() {
    if !require("nginx", "nginx") {
        return;
    }
    if !Path::new(PURGE_MODULE).exists() {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "{PURGE_MODULE} missing (Debian package libnginx-mod-http-cache-purge); .ci/run installs it"
        );
        eprintln!("SKIPPED: {PURGE_MODULE} missing: apt-get install -y libnginx-mod-http-cache-purge");
        return;
    }
    init_logs();
    let tmp = tempfile::tempdir().unwrap();
    let staging = tmp.path().join("staging");
    write_site(&staging, "1");
    let cluster_dir = tmp.path().join("cluster");
    let origin = static_server(cluster_dir.join("agents/1/sites/www/live"));
    let (purged, control) = (free_tcp_port(), free_tcp_port());
    PURGED_CACHE.set(format!("http://127.0.0.1:{purged}/purge")).unwrap();
    let prefix = tmp.path().join("nginx");
    std::fs::create_dir_all(&prefix).unwrap();
    let conf = prefix.join("nginx.conf");
    std::fs::write(&conf, nginx_conf(&prefix, origin, purged, control)).unwrap();
    let mut cmd = std::process::Command::new("nginx");
    cmd.arg("-p").arg(&prefix).arg("-c").arg(&conf).arg("-g").arg("daemon off;");
    let mut nginx = Proc::logged("nginx", &mut cmd, &prefix.join("stdout.log"));

    let mut opts = ClusterOptions::new(&cluster_dir, 1, 2);
    opts.tweak_ccm = Some(ccm_cache);
    let c = LocalCluster::start(opts).await.unwrap();
    c.wait_segments(LIMIT).await.unwrap();
    c.admin.create_site("www", &staging).await.unwrap();
    c.admin.create_group("web", "www", &c.ids(), Quorum::All).await.unwrap();
    let publish = c.admin.create_job("www", "web", "publish").await.unwrap();
    let r = c.admin.wait_run(c.admin.run_job(publish).await.unwrap(), LIMIT).await.unwrap();
    assert_eq!(r.state, RunState::Committed, "{r:#?}");

    // Both caches hold version 1.
    for port in [purged, control] {
        wait_every("nginx to serve the page", LIMIT, Duration::from_millis(100), || {
            nginx.assert_running();
            async move {
                get(&format!("http://127.0.0.1:{port}/page.html"), Some(HOST)).await.filter(|r| r.0 == 200)
            }
        })
        .await;
        let (body, status) = page(port).await;
        assert_eq!((body.as_str(), status.as_str()), ("page version 1\n", "HIT"), "port {port}");
    }

    write_site(&staging, "2");
    let run = c.admin.run_job(publish).await.unwrap();
    let r = c.admin.wait_run(run, LIMIT).await.unwrap();
    assert_eq!(r.state, RunState::Committed, "{r:#?}");
    let (_, direct, _) = get(&format!("http://{origin}/page.html"), None).await.unwrap();
    assert_eq!(direct, "page version 2\n", "the origin serves the new release");
    let event = wait_every("the purge of run's URLs", LIMIT, Duration::from_millis(100), || async {
        let (_, history) = c.admin.call("GET", "/api/v1/events", None).await.ok()?;
        let kinds = ["cache_purged", "cache_failed"];
        history.as_array()?.iter().find(|e| e["run"] == run && kinds.iter().any(|k| e["kind"] == *k)).cloned()
    })
    .await;
    assert_eq!(event["kind"], "cache_purged", "{event}");
    let message = event["message"].as_str().unwrap();
    assert!(message.contains("1 purged"), "only page.html was cached and changed: {message}");

    // Purged: fresh. Control (not purged): the stale copy, for up to an hour.
    let (body, status) = page(purged).await;
    assert_eq!((body.as_str(), status.as_str()), ("page version 2\n", "MISS"));
    let (body, status) = page(control).await;
    assert_eq!((body.as_str(), status.as_str()), ("page version 1\n", "HIT"));
    nginx.assert_running();
    c.stop().await;
}
