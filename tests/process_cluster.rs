//! The real binary, as an operator runs it: `cmover ccm --config F` and four
//! `cmover agent --config F` processes (two segments of two, unicast control
//! and data channels on 127.0.0.1), configured from TOML files. A site is
//! published and then updated through the REST API; every live tree must
//! equal staging, and every process stops cleanly on SIGTERM.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::config::write_toml;
use common::proc::{cmover_bin, Proc};

use cmover::corpus::{self, CorpusSpec, EditSpec};
use cmover::http::admin_client::AdminClient;
use cmover::local_cluster::{expected_segments, plan, ClusterOptions};
use cmover::storage::records::{Quorum, RunState};
use cmover::storage::tree::compare_trees;

const LIMIT: Duration = Duration::from_secs(120);

/// `cmover ARGS --log-format json`, logging to `log` (stderr to `log` with
/// the extension `err`); killed however the test ends, its logs printed if it fails.
fn spawn(name: &str, args: &[&str], log: &std::path::Path) -> Proc {
    let mut cmd = Command::new(cmover_bin());
    cmd.args(args).args(["--log-format", "json"]);
    Proc::logged_apart(name, &mut cmd, log)
}

#[actix_rt::test]
async fn a_ccm_and_four_agent_processes_publish_and_update_a_site() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("cluster");
    let opts = ClusterOptions::new(&dir, 2, 2);
    let plan = plan(&opts).unwrap();
    let mut procs = Vec::new();
    let ccm_toml = write_toml(&dir.join("ccm.toml"), &plan.ccm);
    // The configuration files are what `config check` accepts.
    let check =
        Command::new(cmover_bin()).args(["config", "check", ccm_toml.to_str().unwrap()]).output().unwrap();
    assert!(check.status.success(), "{}", String::from_utf8_lossy(&check.stderr));
    procs.push(spawn("ccm", &["ccm", "--config", ccm_toml.to_str().unwrap()], &dir.join("ccm.log")));
    for (id, config) in &plan.agents {
        let file = write_toml(&dir.join(format!("agent{id}.toml")), config);
        procs.push(spawn(
            &format!("agent {id}"),
            &["agent", "--config", file.to_str().unwrap()],
            &dir.join(format!("agent{id}.log")),
        ));
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
    for p in &procs {
        p.sigterm();
    }
    for p in &mut procs {
        let status = p.wait_exit(start, LIMIT);
        assert!(status.success(), "{}: {status}", p.name);
    }
}
