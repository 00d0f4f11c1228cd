//! The real binary, as an operator runs it: `cmover ccm --config F` and four
//! `cmover agent --config F` processes (two segments of two, unicast control
//! and data channels on 127.0.0.1), configured from TOML files. A site is
//! published and then updated through the REST API; every live tree must
//! equal staging, and every process stops cleanly on SIGTERM.

mod common;

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use cmover::corpus::{self, CorpusSpec, EditSpec};
use cmover::http::admin_client::AdminClient;
use cmover::local_cluster::{expected_segments, plan, ClusterOptions};
use cmover::storage::records::{Quorum, RunState};
use cmover::storage::tree::compare_trees;

const LIMIT: Duration = Duration::from_secs(120);

/// The processes, killed however the test ends; their logs are printed if it fails.
struct Procs(Vec<(String, Child, PathBuf)>);

impl Procs {
    fn spawn(&mut self, name: &str, args: &[&str], log: PathBuf) {
        let child = Command::new(env!("CARGO_BIN_EXE_cmover"))
            .args(args)
            .args(["--log-format", "json"])
            .stdin(Stdio::null())
            .stdout(Stdio::from(File::create(&log).unwrap()))
            .stderr(Stdio::from(File::create(log.with_extension("err")).unwrap()))
            .spawn()
            .unwrap();
        self.0.push((name.into(), child, log));
    }
}

impl Drop for Procs {
    fn drop(&mut self) {
        for (name, c, log) in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
            if std::thread::panicking() {
                let text = std::fs::read_to_string(&*log).unwrap_or_default();
                let err = std::fs::read_to_string(log.with_extension("err")).unwrap_or_default();
                let tail: Vec<&str> = text.lines().rev().take(30).collect();
                eprintln!("--- {name} (last lines, newest first) ---\n{}\n{err}", tail.join("\n"));
            }
        }
    }
}

fn write_toml(path: &Path, config: &cmover::config::Config) {
    std::fs::write(path, toml::to_string(config).unwrap()).unwrap();
}

#[actix_rt::test]
async fn a_ccm_and_four_agent_processes_publish_and_update_a_site() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("cluster");
    let opts = ClusterOptions::new(&dir, 2, 2);
    let plan = plan(&opts).unwrap();
    let mut procs = Procs(Vec::new());
    let ccm_toml = dir.join("ccm.toml");
    write_toml(&ccm_toml, &plan.ccm);
    // The configuration files are what `config check` accepts.
    let check = Command::new(env!("CARGO_BIN_EXE_cmover"))
        .args(["config", "check", ccm_toml.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(check.status.success(), "{}", String::from_utf8_lossy(&check.stderr));
    procs.spawn("ccm", &["ccm", "--config", ccm_toml.to_str().unwrap()], dir.join("ccm.log"));
    for (id, config) in &plan.agents {
        let file = dir.join(format!("agent{id}.toml"));
        write_toml(&file, config);
        procs.spawn(
            &format!("agent {id}"),
            &["agent", "--config", file.to_str().unwrap()],
            dir.join(format!("agent{id}.log")),
        );
    }
    let admin = AdminClient::new(&plan.ccm.ccm.url(), &plan.ccm.ccm.admin_token);
    let ids: Vec<u64> = plan.agents.keys().copied().collect();
    admin.wait_segments(&expected_segments(&opts, ids.iter().copied()), 0, LIMIT).await.unwrap();

    let staging = tmp.path().join("staging");
    corpus::generate(&staging, 31, &CorpusSpec::small()).unwrap();
    admin.create_site("www", &staging).await.unwrap();
    admin.create_group("web", "www", &ids, Quorum::All).await.unwrap();
    let job = admin.create_job("www", "web", "publish").await.unwrap();
    let live = |id: &u64| plan.agents[id].agent.sites_root.join("www/live");
    for (step, seed) in [("publish", None), ("update", Some(31))] {
        if let Some(seed) = seed {
            corpus::mutate(&staging, seed, &EditSpec::default()).unwrap();
        }
        let r = admin.wait_run(admin.run_job(job).await.unwrap(), LIMIT).await.unwrap();
        assert_eq!(r.state, RunState::Committed, "{step}: {r:#?}");
        assert!(r.failed_servers.is_empty(), "{step}: {r:#?}");
        for id in &ids {
            assert_eq!(
                compare_trees(&live(id), &staging).unwrap(),
                Vec::<String>::new(),
                "{step}: agent {id}"
            );
        }
        if seed.is_some() {
            let s = r.summary.unwrap();
            assert!(s.files_patched > 0, "the update went out as deltas: {s}");
        }
    }

    // SIGTERM: every process exits 0.
    let start = Instant::now();
    for (_, c, _) in &procs.0 {
        common::sigterm(c);
    }
    for (name, c, _) in &mut procs.0 {
        let status = loop {
            if let Some(s) = c.try_wait().unwrap() {
                break s;
            }
            assert!(start.elapsed() < LIMIT, "{name} did not exit on SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        };
        assert!(status.success(), "{name}: {status}");
    }
}
