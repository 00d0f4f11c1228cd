//! The load-balancer integration against a real HAProxy: three agents'
//! live directories served by static servers behind HAProxy on 127.0.0.1;
//! one server fails an apply (its pre-commit hook refuses), the CCM puts it
//! into maintenance through HAProxy's admin socket, and back to ready after
//! a synchronize brings it up to date. HAProxy's own state (`show servers
//! state`) and the traffic through it are checked, not the CCM's belief.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use cmover::config::Config;
use cmover::local_cluster::{ClusterOptions, LocalCluster};
use cmover::ops::config::{LbDriverKind, SiteHooks};
use cmover::ops::haproxy::Haproxy;
use cmover::storage::records::{Quorum, RunState};

mod common;

use common::cluster::{init_logs, live_serial, LIMIT};
use common::net::free_tcp_port;
use common::ops::{get, require, static_server};
use common::proc::Proc;
use common::wait::wait_every;

static SOCKET: OnceLock<PathBuf> = OnceLock::new();

fn ccm_lb(c: &mut Config) {
    c.lb.driver = LbDriverKind::Haproxy;
    c.lb.haproxy_socket = SOCKET.get().unwrap().display().to_string();
    c.lb.haproxy_backend = "web".into();
    c.lb.check_interval = Duration::from_millis(200);
    // Only a failed run (or a long lag) takes a server out here.
    c.lb.lag_grace = Duration::from_secs(60);
    // The test runs the synchronize itself; an automatic one could run first
    // (and fail while the hook refuses) on a slow machine.
    c.ccm.auto_catch_up = false;
}

/// Every server refuses to vote for a release while `<its agent dir>/fail` exists
/// (`$CMOVER_RELEASE` is `<agent dir>/sites/www/incoming/<serial>`).
fn agent_hooks(_id: u64, c: &mut Config) {
    let hooks = SiteHooks {
        pre_commit:
            "test ! -e \"$CMOVER_RELEASE/../../../../fail\" || { echo refused by the test >&2; exit 1; }"
                .into(),
        post_commit: String::new(),
    };
    c.hooks.sites.insert("www".into(), hooks);
}

/// HAProxy's admin state of each server of backend `web` (`srv_admin_state`).
async fn admin_states(h: &Haproxy) -> Vec<(String, u32)> {
    let text = h.command("show servers state web").await.unwrap();
    let mut lines = text.lines().filter(|l| !l.trim().is_empty());
    let _version = lines.next();
    let header: Vec<&str> = lines.next().unwrap().trim_start_matches('#').split_whitespace().collect();
    let name = header.iter().position(|c| *c == "srv_name").unwrap();
    let admin = header.iter().position(|c| *c == "srv_admin_state").unwrap();
    lines
        .map(|l| {
            let cols: Vec<&str> = l.split_whitespace().collect();
            (cols[name].to_owned(), cols[admin].parse().unwrap())
        })
        .collect()
}

/// Waits until HAProxy says web-3 is (`maint`) or is not in forced maintenance.
async fn wait_web3(h: &Haproxy, maint: bool) -> Vec<(String, u32)> {
    let what = if maint { "web-3 in maintenance" } else { "web-3 ready" };
    wait_every(what, LIMIT, Duration::from_millis(100), || async {
        let states = admin_states(h).await;
        let web3 = states.iter().find(|(n, _)| n == "web-3").map(|(_, s)| *s)?;
        // Bit 0x01 of srv_admin_state: forced maintenance (set by the runtime API).
        ((web3 & 1 == 1) == maint).then_some(states)
    })
    .await
}

fn write_site(dir: &Path, version: &str) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("index.html"), format!("<h1>release {version}</h1>\n")).unwrap();
    std::fs::write(dir.join("about.html"), "about us\n").unwrap();
}

/// What HAProxy's frontend serves, `n` requests in a row (round robin).
async fn through_haproxy(port: u16, n: usize) -> Vec<String> {
    let mut out = Vec::new();
    for _ in 0..n {
        let (status, body, _) = get(&format!("http://127.0.0.1:{port}/"), None).await.unwrap();
        assert_eq!(status, 200, "{body}");
        out.push(body);
    }
    out
}

#[actix_rt::test]
async fn a_server_that_fails_an_apply_goes_to_maintenance_in_haproxy_and_back_after_a_synchronize() {
    if !require("haproxy", "haproxy") {
        return;
    }
    init_logs();
    let tmp = tempfile::tempdir().unwrap();
    let staging = tmp.path().join("staging");
    write_site(&staging, "1");
    let cluster_dir = tmp.path().join("cluster");
    let live = |id: u64| cluster_dir.join("agents").join(id.to_string()).join("sites/www/live");

    // Each agent's document root, served on its own port; HAProxy in front.
    let backends: Vec<_> = (1..=3).map(|id| static_server(live(id))).collect();
    let socket = tmp.path().join("haproxy.sock");
    SOCKET.set(socket.clone()).unwrap();
    let front = free_tcp_port();
    let servers: String =
        backends.iter().enumerate().map(|(i, a)| format!("    server web-{} {a}\n", i + 1)).collect();
    let cfg = format!(
        "global\n    stats socket {} mode 600 level admin\n\
         defaults\n    mode http\n    timeout connect 5s\n    timeout client 30s\n    timeout server 30s\n\
         frontend www\n    bind 127.0.0.1:{front}\n    default_backend web\n\
         backend web\n    balance roundrobin\n{servers}",
        socket.display()
    );
    let cfg_path = tmp.path().join("haproxy.cfg");
    std::fs::write(&cfg_path, cfg).unwrap();
    let mut cmd = std::process::Command::new("haproxy");
    cmd.arg("-db").arg("-f").arg(&cfg_path);
    let mut haproxy = Proc::logged("haproxy", &mut cmd, &tmp.path().join("haproxy.log"));
    let h = Haproxy {
        socket: socket.display().to_string(),
        backend: "web".into(),
        timeout: Duration::from_secs(5),
    };
    wait_every("HAProxy's admin socket", LIMIT, Duration::from_millis(100), || {
        haproxy.assert_running();
        let h = &h;
        async move { h.command("show info").await.ok().filter(|t| t.contains("Name: HAProxy")) }
    })
    .await;

    let mut opts = ClusterOptions::new(&cluster_dir, 1, 3);
    opts.tweak_ccm = Some(ccm_lb);
    opts.tweak_agent = Some(agent_hooks);
    let c = LocalCluster::start(opts).await.unwrap();
    c.wait_segments(LIMIT).await.unwrap();
    c.admin.create_site("www", &staging).await.unwrap();
    c.admin.create_group("web", "www", &c.ids(), Quorum::Count(2)).await.unwrap();
    let publish = c.admin.create_job("www", "web", "publish").await.unwrap();
    let sync = c.admin.create_job("www", "web", "synchronize").await.unwrap();

    // Release 1 everywhere: all three in rotation.
    let r = c.admin.wait_run(c.admin.run_job(publish).await.unwrap(), LIMIT).await.unwrap();
    assert_eq!(r.state, RunState::Committed, "{r:#?}");
    let states = admin_states(&h).await;
    assert_eq!(states.len(), 3, "{states:?}");
    assert!(states.iter().all(|(_, s)| s & 1 == 0), "{states:?}");
    assert!(through_haproxy(front, 6).await.iter().all(|b| b.contains("release 1")));

    // Server 3 refuses release 2: it stays on 1 and goes to maintenance.
    std::fs::write(cluster_dir.join("agents/3/fail"), "").unwrap();
    write_site(&staging, "2");
    let r = c.admin.wait_run(c.admin.run_job(publish).await.unwrap(), LIMIT).await.unwrap();
    assert_eq!(r.state, RunState::Committed, "{r:#?}");
    assert_eq!(r.failed_servers, vec![cmover::protocol::ids::NodeId(3)], "{r:#?}");
    let why = format!("{:?}", r.applied[&cmover::protocol::ids::NodeId(3)]);
    assert!(
        why.contains("pre_commit hook of site www failed") && why.contains("refused by the test"),
        "{why}"
    );
    assert_eq!(live_serial(&c, 3, "www"), Some(1));
    let states = wait_web3(&h, true).await;
    assert!(states.iter().filter(|(n, _)| n != "web-3").all(|(_, s)| s & 1 == 0), "{states:?}");
    // HAProxy sends nobody to the stale server any more, though it still serves release 1.
    let (_, direct, _) = get(&format!("http://{}/", backends[2]), None).await.unwrap();
    assert!(direct.contains("release 1"), "{direct}");
    let bodies = through_haproxy(front, 9).await;
    assert!(bodies.iter().all(|b| b.contains("release 2")), "{bodies:?}");
    let (_, history) = c.admin.call("GET", "/api/v1/events", None).await.unwrap();
    let out = history
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["kind"] == "lb_out")
        .unwrap_or_else(|| panic!("no lb_out event: {history}"));
    assert!(out["message"].as_str().unwrap().contains("web-3"), "{out}");

    // Fixed: a synchronize brings it up to date, and it is back in rotation.
    std::fs::remove_file(cluster_dir.join("agents/3/fail")).unwrap();
    let r = c.admin.wait_run(c.admin.run_job(sync).await.unwrap(), LIMIT).await.unwrap();
    assert_eq!(r.state, RunState::Committed, "{r:#?}");
    assert_eq!(live_serial(&c, 3, "www"), Some(2));
    let states = wait_web3(&h, false).await;
    assert!(states.iter().all(|(_, s)| s & 1 == 0), "{states:?}");
    let bodies = through_haproxy(front, 9).await;
    assert!(bodies.iter().all(|b| b.contains("release 2")), "{bodies:?}");
    let (_, history) = c.admin.call("GET", "/api/v1/events", None).await.unwrap();
    let back = history.as_array().unwrap().iter().any(|e| {
        e["kind"] == "lb_in"
            && e["message"].as_str().is_some_and(|m| m.contains("web-3") && m.contains("in sync again"))
    });
    assert!(back, "no lb_in event for web-3: {history}");
    haproxy.assert_running();
    c.stop().await;
}
