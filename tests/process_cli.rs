//! The CLI client against a demo cluster, entirely through `cmover`
//! commands (separate processes, `CMOVER_CCM`/`CMOVER_TOKEN` from the
//! demo's output): add a site and a group, add a job and run it with
//! `--wait`, list runs, make a checkpoint and restore it, show the status.
//! Bad input fails with the API's message naming the field.

mod common;

use common::proc::{cmover_bin, demo_log, start_demo};
use common::wait::recv_until;

use std::path::Path;
use std::process::{Command, Output};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use cmover::storage::tree::compare_trees;

const LIMIT: Duration = Duration::from_secs(180);

/// Every text the CLI printed for people (not `--json`), stdout and stderr.
static FOR_PEOPLE: Mutex<Vec<String>> = Mutex::new(Vec::new());

/// Runs `cmover ARGS` against the demo's CCM.
fn cmover(url: &str, token: &str, args: &[&str]) -> Output {
    let out = Command::new(cmover_bin())
        .args(args)
        .env("CMOVER_CCM", url)
        .env("CMOVER_TOKEN", token)
        .output()
        .unwrap();
    if !args.contains(&"--json") {
        let mut texts = FOR_PEOPLE.lock().unwrap();
        texts.push(format!("cmover {args:?}: {}", String::from_utf8_lossy(&out.stdout)));
        texts.push(format!("cmover {args:?} (stderr): {}", String::from_utf8_lossy(&out.stderr)));
    }
    out
}

/// The first piece of Rust debug notation in `text`, if any.
fn rust_notation(text: &str) -> Option<&'static str> {
    ["NodeId(", "RunId(", "JobId(", "Some(", "None", "[]", "\u{1b}["].into_iter().find(|n| text.contains(n))
}

/// Like `cmover`, but it must succeed; returns its standard output.
fn ok(url: &str, token: &str, args: &[&str]) -> String {
    let out = cmover(url, token, args);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "cmover {args:?} failed: {}\n{text}", String::from_utf8_lossy(&out.stderr));
    text
}

fn assert_live(dir: &Path, site: &str, expected: &Path) {
    for id in 1..=4 {
        let live = dir.join(format!("agents/{id}/sites/{site}/live"));
        assert_eq!(compare_trees(&live, expected).unwrap(), Vec::<String>::new(), "agent {id}");
    }
}

#[test]
fn the_cli_drives_a_demo_cluster() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("demo");
    let (_demo, rx) = start_demo(&dir);
    let mut export = None;
    let printed = recv_until(&rx, Instant::now(), LIMIT, |line: String| {
        export = line.split_once("export ").map(|(_, rest)| rest.to_owned());
        export.is_some()
    });
    assert!(printed, "the demo never printed its CLI line (or stopped early)");
    let export = export.unwrap();
    let var = |name: &str| {
        export.split_whitespace().find_map(|kv| kv.strip_prefix(&format!("{name}="))).unwrap().to_owned()
    };
    let (url, token) = (var("CMOVER_CCM"), var("CMOVER_TOKEN"));

    // The connection options may also come before the subcommand.
    let out = Command::new(cmover_bin())
        .args(["--ccm", &url, "--token", &token, "site", "list"])
        .env_remove("CMOVER_CCM")
        .env_remove("CMOVER_TOKEN")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("www"));

    // A second site, on every server.
    let shop = tmp.path().join("shop");
    std::fs::create_dir_all(shop.join("img")).unwrap();
    std::fs::write(shop.join("index.html"), "<h1>shop</h1>\n").unwrap();
    std::fs::write(shop.join("img/logo.svg"), "<svg/>\n").unwrap();
    let shop_s = shop.to_str().unwrap();
    ok(&url, &token, &["site", "add", "shop", "--staging", shop_s]);
    ok(
        &url,
        &token,
        &["group", "add", "shopweb", "--site", "shop", "--servers", "1,2,3,4", "--quorum", "75%"],
    );
    let text = ok(&url, &token, &["site", "list"]);
    assert!(text.contains("shop") && text.contains("www"), "{text}");
    let text =
        ok(&url, &token, &["job", "add", "--site", "shop", "--group", "shopweb", "--name", "shop publish"]);
    let job: String = text.split_whitespace().nth(1).unwrap().to_owned();
    let text = ok(&url, &token, &["job", "run", &job, "--wait"]);
    assert!(text.contains("committed") && text.contains("release 1 of shop"), "{text}");
    assert_live(&dir, "shop", &shop);

    // A site for two of the four servers: `run show` names exactly those as
    // targets and as the servers it went live on; the others hold nothing of it.
    let edge = tmp.path().join("edge");
    std::fs::create_dir_all(&edge).unwrap();
    std::fs::write(edge.join("index.html"), "<h1>edge</h1>\n").unwrap();
    ok(&url, &token, &["site", "add", "edge", "--staging", edge.to_str().unwrap()]);
    ok(&url, &token, &["group", "add", "edgeweb", "--site", "edge", "--servers", "1,3"]);
    let text = ok(&url, &token, &["job", "add", "--site", "edge", "--group", "edgeweb", "--name", "edge"]);
    let edge_job: String = text.split_whitespace().nth(1).unwrap().to_owned();
    // Before it runs: what it would send, to whom, with which quorum.
    let text = ok(&url, &token, &["job", "plan", &edge_job]);
    assert!(text.contains("a run now would start"), "{text}");
    assert!(text.contains("targets: 1, 3\n") && text.contains("quorum: ≥ 2 of 2\n"), "{text}");
    assert!(text.contains("1 new") && text.contains("+ index.html"), "{text}");
    let text = ok(&url, &token, &["job", "run", &edge_job, "--wait"]);
    assert!(text.contains("committed") && text.contains("failed servers: none"), "{text}");
    let text = ok(&url, &token, &["job", "list"]);
    assert!(text.lines().next().unwrap().ends_with("LAST RUN"), "{text}");
    assert!(
        text.lines().any(|l| l.starts_with(&format!("{edge_job} ")) && l.ends_with(" committed")),
        "{text}"
    );
    let text = ok(&url, &token, &["job", "show", &edge_job]);
    assert!(text.contains("publish site edge on group edgeweb") && text.contains("last runs:"), "{text}");
    assert!(text.lines().any(|l| l.contains("committed") && l.contains("none")), "{text}");
    let runs: serde_json::Value =
        serde_json::from_str(&ok(&url, &token, &["run", "list", "--json", "--site", "edge"])).unwrap();
    let run = runs[0]["id"].as_u64().expect("the edge run is listed").to_string();
    let text = ok(&url, &token, &["run", "show", &run]);
    assert!(text.contains("targets: 1, 3\n"), "{text}");
    assert!(text.contains("went live on: 1, 3\n"), "{text}");
    assert!(text.contains("failed: none"), "{text}");
    // Human text: local times, the content wave's figures per segment.
    assert!(text.contains(": committed\n") && text.contains("started 20"), "{text}");
    assert!(text.lines().any(|l| l.starts_with("SEGMENT") && l.contains("COMMIT")), "{text}");
    assert!(text.lines().any(|l| l.starts_with("seg-") && l.contains("reported")), "{text}");
    for id in [2, 4] {
        let site = dir.join(format!("agents/{id}/sites/edge"));
        assert!(!site.exists(), "server {id} is not a target but has {}", site.display());
    }

    // Runs, as a table and as JSON.
    let text = ok(&url, &token, &["run", "list"]);
    assert!(text.lines().next().unwrap().starts_with("RUN"), "{text}");
    assert!(text.lines().any(|l| l.contains("shop") && l.contains("committed")), "{text}");
    let runs: serde_json::Value =
        serde_json::from_str(&ok(&url, &token, &["run", "list", "--json"])).unwrap();
    assert!(
        runs.as_array().unwrap().iter().any(|r| r["site"] == "shop" && r["state"] == "committed"),
        "{runs}"
    );

    // A checkpoint, an edit published, then the checkpoint restored.
    let text = ok(&url, &token, &["checkpoint", "add", "--site", "shop"]);
    let ck: String = text.split_whitespace().nth(1).unwrap().to_owned();
    assert!(text.contains("at release 1"), "{text}");
    let v1 = tmp.path().join("v1");
    cmover::storage::tree::copy_tree(&shop, &v1).unwrap();
    // Checkpoints (tar) keep modification times to the second.
    for f in ["index.html", "img/logo.svg"] {
        let t = filetime::FileTime::from_last_modification_time(&std::fs::metadata(v1.join(f)).unwrap());
        filetime::set_file_mtime(v1.join(f), filetime::FileTime::from_unix_time(t.unix_seconds(), 0))
            .unwrap();
    }
    std::fs::write(shop.join("index.html"), "<h1>shop, changed</h1>\n").unwrap();
    ok(&url, &token, &["job", "run", &job, "--wait"]);
    assert_live(&dir, "shop", &shop);
    let text = ok(&url, &token, &["checkpoint", "list", "--site", "shop"]);
    assert!(text.lines().any(|l| l.split_whitespace().next() == Some(ck.as_str())), "{text}");
    let text = ok(&url, &token, &["checkpoint", "restore", "shop", &ck, "--group", "shopweb", "--wait"]);
    assert!(text.contains("committed") && text.contains("release 3 of shop"), "{text}");
    assert_live(&dir, "shop", &v1);

    // The status names every server and its live release per site.
    let text = ok(&url, &token, &["status"]);
    assert!(text.contains("site shop: live release 3"), "{text}");
    assert_eq!(text.lines().filter(|l| l.contains("shop=3")).count(), 4, "{text}");

    // Bad input: the API's message, naming the field; non-zero exit.
    let out = cmover(&url, &token, &["group", "add", "bad", "--site", "nope", "--servers", "1"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("site") && err.contains("does not exist"), "{err}");
    // A server no leader has reported is refused, naming the field.
    let out = cmover(&url, &token, &["group", "add", "typo", "--site", "shop", "--servers", "1,99"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("servers: server 99 is not known"), "{err}");
    let out = cmover(&url, "wrong", &["site", "list"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("401"));
    // A run that fails makes `--wait` exit non-zero.
    let text = ok(
        &url,
        &token,
        &["job", "add", "--site", "shop", "--group", "shopweb", "--kind", "remove", "--path", "no/such"],
    );
    let bad_job: String = text.split_whitespace().nth(1).unwrap().to_owned();
    let out = cmover(&url, &token, &["job", "run", &bad_job, "--wait"]);
    assert!(!out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
    assert!(String::from_utf8_lossy(&out.stderr).contains("ended failed"));

    // The history, newest first, in local time.
    let text = ok(&url, &token, &["events", "--site", "shop"]);
    assert!(text.lines().next().unwrap().starts_with("WHEN"), "{text}");
    assert!(text.lines().any(|l| l.contains("committed") && l.contains("shop")), "{text}");
    assert!(text.lines().any(|l| l.contains("run_failed")), "{text}");
    let history: serde_json::Value =
        serde_json::from_str(&ok(&url, &token, &["events", "--json", "--limit", "1000"])).unwrap();
    let mut texts = FOR_PEOPLE.lock().unwrap().clone();
    texts.extend(history.as_array().unwrap().iter().map(|h| format!("history: {}", h["message"])));

    // No text for people carries Rust notation or colour codes: the CLI's
    // output and errors, the history, and the demo's log in a file.
    let log = std::fs::read_to_string(demo_log(&dir)).unwrap();
    assert!(log.contains("segment_changed") && log.contains("release_live"), "{log}");
    texts.extend(log.lines().map(|l| format!("demo log: {l}")));
    for t in &texts {
        assert_eq!(rust_notation(t), None, "{t}");
    }
    // A segment's membership is logged when it changes, not again unchanged.
    let mut last: std::collections::HashMap<String, String> = Default::default();
    for l in log.lines().filter(|l| l.contains("segment_changed")) {
        let field = |k: &str| l.split(&format!(" {k}=")).nth(1).map(|r| r.split(' ').next().unwrap_or(""));
        let (node, ids) =
            (field("node").unwrap_or("").to_owned(), l.split(" ids=").nth(1).unwrap_or("").to_owned());
        assert_ne!(last.insert(node, ids.clone()), Some(ids), "{l}");
    }
}
