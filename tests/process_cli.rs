//! The CLI client against a demo cluster, entirely through `cmover`
//! commands (separate processes, `CMOVER_CCM`/`CMOVER_TOKEN` from the
//! demo's output): add a site and a group, add a job and run it with
//! `--wait`, list runs, make a checkpoint and restore it, show the status.
//! Bad input fails with the API's message naming the field.

mod common;

use common::proc::{cmover_bin, start_demo};
use common::wait::recv_until;

use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use cmover::storage::tree::compare_trees;

const LIMIT: Duration = Duration::from_secs(180);

/// Runs `cmover ARGS` against the demo's CCM.
fn cmover(url: &str, token: &str, args: &[&str]) -> Output {
    Command::new(cmover_bin()).args(args).env("CMOVER_CCM", url).env("CMOVER_TOKEN", token).output().unwrap()
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
    assert!(text.contains("Committed") && text.contains("release 1 of shop"), "{text}");
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
    let text = ok(&url, &token, &["job", "run", &edge_job, "--wait"]);
    assert!(text.contains("Committed"), "{text}");
    let runs: serde_json::Value =
        serde_json::from_str(&ok(&url, &token, &["run", "list", "--json", "--site", "edge"])).unwrap();
    let run = runs[0]["id"].as_u64().expect("the edge run is listed").to_string();
    let text = ok(&url, &token, &["run", "show", &run]);
    assert!(text.contains("targets: 1, 3\n"), "{text}");
    assert!(text.contains("went live on: 1, 3\n"), "{text}");
    assert!(text.contains("failed: none"), "{text}");
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
    assert!(text.contains("Committed") && text.contains("release 3 of shop"), "{text}");
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
    assert!(String::from_utf8_lossy(&out.stderr).contains("Failed"));
}
