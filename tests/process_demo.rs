//! `cmover demo`, the README's main command, as a user runs it: a cluster
//! comes up, the sample site goes live on every agent; an edit in staging
//! and Enter publish it again as a delta; SIGTERM stops it cleanly. Bad
//! flags are refused with a message naming the flag.

mod common;

use common::Demo;

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use cmover::storage::tree::compare_trees;

const LIMIT: Duration = Duration::from_secs(180);

/// Reads lines until one contains `want`; returns everything read.
fn read_until(rx: &mpsc::Receiver<String>, want: &str, seen: &mut Vec<String>) {
    let start = Instant::now();
    while !seen.iter().any(|l| l.contains(want)) {
        let left = LIMIT.checked_sub(start.elapsed()).unwrap_or_default();
        match rx.recv_timeout(left) {
            Ok(line) => seen.push(line),
            Err(_) => panic!("no line with {want:?} within {LIMIT:?}; output:\n{}", seen.join("\n")),
        }
    }
}

fn assert_live_everywhere(dir: &Path, agents: u64) {
    for id in 1..=agents {
        let live = dir.join(format!("agents/{id}/sites/www/live"));
        assert_eq!(compare_trees(&live, &dir.join("staging")).unwrap(), Vec::<String>::new(), "agent {id}");
    }
}

#[test]
fn the_demo_publishes_then_publishes_an_edit_on_enter_and_stops_on_sigterm() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let mut child = Command::new(env!("CARGO_BIN_EXE_cmover"))
        .args(["demo", "--segments", "2", "--agents-per-segment", "2", "--http", "127.0.0.1:0", "--dir"])
        .arg(dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let out = child.stdout.take().unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let mut demo = Demo(child);
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut seen = Vec::new();
    read_until(&rx, "press Enter", &mut seen);
    let text = seen.join("\n");
    assert!(text.contains("Run 1: release 1 is live on 4 servers"), "{text}");
    assert!(text.contains("fetched it from the leader of another segment"), "the tree shows: {text}");
    assert!(text.contains("/api/v1/jobs/1/run"), "{text}");
    assert_live_everywhere(dir, 4);

    std::fs::write(dir.join("staging/news.html"), "<p>fresh</p>\n").unwrap();
    let index = dir.join("staging/index.html");
    let mut page = std::fs::read_to_string(&index).unwrap();
    page.push_str("<!-- edited -->\n");
    std::fs::write(&index, page).unwrap();
    stdin.write_all(b"\n").unwrap();
    stdin.flush().unwrap();
    seen.clear();
    read_until(&rx, "verified", &mut seen);
    let text = seen.join("\n");
    assert!(text.contains("(delta from 1)") && text.contains("1 new, 1 changed"), "{text}");
    assert!(text.contains("release 2 is live on 4 servers"), "{text}");
    assert_live_everywhere(dir, 4);

    common::sigterm(&demo.0);
    let start = Instant::now();
    let status = loop {
        if let Some(s) = demo.0.try_wait().unwrap() {
            break s;
        }
        assert!(start.elapsed() < LIMIT, "the demo did not stop on SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "{status}");
}

#[test]
fn bad_demo_flags_name_the_flag() {
    let tmp = tempfile::tempdir().unwrap();
    for (args, flag) in [
        (vec!["--segments", "0"], "--segments"),
        (vec!["--http", "10.1.2.3:80"], "--http"),
        (vec!["--staging", "/nonexistent/staging"], "--staging"),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_cmover"))
            .arg("demo")
            .args(&args)
            .arg("--dir")
            .arg(tmp.path())
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} accepted");
        assert!(err.contains(flag), "{args:?}: {err}");
    }
}
