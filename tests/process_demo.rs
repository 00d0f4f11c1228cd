//! `cmover demo`, the README's main command, as a user runs it: a cluster
//! comes up, the sample site goes live on every agent; an edit in staging
//! and Enter publish it again as a delta; SIGTERM stops it cleanly. Bad
//! flags are refused with a message naming the flag.

mod common;

use common::proc::{cmover_bin, start_demo};
use common::wait::recv_until;

use std::io::Write;
use std::path::Path;
use std::process::Command;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use cmover::storage::tree::compare_trees;

const LIMIT: Duration = Duration::from_secs(180);

/// Reads lines until one contains `want`; returns everything read.
fn read_until(rx: &mpsc::Receiver<String>, want: &str, seen: &mut Vec<String>) {
    let found = seen.iter().any(|l| l.contains(want))
        || recv_until(rx, Instant::now(), LIMIT, |line| {
            seen.push(line);
            seen.last().is_some_and(|l| l.contains(want))
        });
    assert!(found, "no line with {want:?} within {LIMIT:?}; output:\n{}", seen.join("\n"));
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
    let (mut demo, rx) = start_demo(dir);
    let mut stdin = demo.child.stdin.take().unwrap();
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

    demo.sigterm();
    let status = demo.wait_exit(Instant::now(), LIMIT);
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
        let out =
            Command::new(cmover_bin()).arg("demo").args(&args).arg("--dir").arg(tmp.path()).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} accepted");
        assert!(err.contains(flag), "{args:?}: {err}");
    }
}
