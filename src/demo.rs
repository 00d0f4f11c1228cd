//! `cmover demo`: Content Mover with nothing to set up.
//!
//! By default ([`run_cluster`]) a whole cluster in this process on
//! 127.0.0.1: a CCM and agents in segments that elect their leaders; the
//! bundled sample site (or `--staging DIR`) is published through the
//! store-and-forward tree and goes live everywhere at once; then it keeps
//! running, and every Enter (or a `curl` to the REST API) publishes what is
//! in staging again, as a delta.
//!
//! `--offline` ([`run`]) shows the pipeline without a network: it
//! publishes the sample to a site root as a full assignment, changes the
//! staging tree (edits, additions, a deletion, a move, a mode change, a
//! symlink), publishes the change as a delta, checks that the live tree is
//! byte-identical to staging each time, and rolls back.

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::Path;

use thiserror::Error;

use crate::config::Config;
use crate::local_cluster::{ClusterError, ClusterOptions, LocalCluster};
use crate::offline::{self, DiffArgs, OfflineError};
use crate::protocol::ids::AssignmentId;
use crate::storage::assignment_file::{assignment_path, AssignmentFile};
use crate::storage::releases::SiteRoot;
use crate::storage::tree::{compare_trees, copy_tree, ScanError};

/// Why the demo stopped.
#[derive(Debug, Error)]
pub enum DemoError {
    /// Writing the sample or the output failed.
    #[error("{0}")]
    Io(#[from] io::Error),
    /// A command failed.
    #[error(transparent)]
    Offline(#[from] OfflineError),
    /// Comparing trees failed.
    #[error(transparent)]
    Scan(#[from] ScanError),
    /// The cluster could not be built or driven.
    #[error(transparent)]
    Cluster(#[from] ClusterError),
    /// A call to the CCM's REST API failed.
    #[error(transparent)]
    Api(#[from] crate::http::admin_client::AdminError),
    /// A command-line value is unusable.
    #[error("{flag}: {problem}")]
    Invalid {
        /// The flag.
        flag: &'static str,
        /// What is wrong and how to fix it.
        problem: String,
    },
    /// The live tree is not what was published: a bug.
    #[error("live tree differs from {expected}: {}", diffs.join("; "))]
    Mismatch {
        /// What it should equal.
        expected: String,
        /// The differences.
        diffs: Vec<String>,
    },
}

/// Deterministic bytes that do not compress (a stand-in for images).
fn noise(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

fn page(title: &str, paragraphs: usize) -> String {
    let body: String = (0..paragraphs)
        .map(|i| {
            format!("<p>Paragraph {i} of {title}: content moves from staging to every server at once.</p>\n")
        })
        .collect();
    format!("<!doctype html>\n<html><head><title>{title}</title><link rel=stylesheet href=/css/site.css></head>\n<body>\n<h1>{title}</h1>\n{body}</body></html>\n")
}

/// Writes version 1 of the sample site under `dir`.
pub fn write_sample(dir: &Path) -> io::Result<()> {
    for d in ["about", "css", "js", "images", "docs", "uploads"] {
        fs::create_dir_all(dir.join(d))?;
    }
    fs::write(dir.join("index.html"), page("Welcome", 40))?;
    fs::write(dir.join("about/index.html"), page("About us", 12))?;
    fs::write(dir.join("about/Über uns.html"), page("Über uns", 12))?;
    fs::write(
        dir.join("css/site.css"),
        "body { font-family: sans-serif; margin: 2em; }\nh1 { color: #234; }\n",
    )?;
    fs::write(dir.join("js/app.js"), "document.title += ' · Content Mover';\n")?;
    fs::write(dir.join("images/logo.png"), noise(20_000, 1))?;
    fs::write(dir.join("images/banner photo.jpg"), noise(300_000, 2))?;
    let manual: String =
        (0..20_000).map(|i| format!("{i:05}: the manual says the same thing many times.\n")).collect();
    fs::write(dir.join("docs/manual.txt"), manual)?;
    symlink("index.html", dir.join("home.html"))?;
    symlink("docs", dir.join("latest"))?;
    Ok(())
}

/// Turns version 1 of the sample into version 2.
pub fn change_sample(dir: &Path) -> io::Result<()> {
    let manual = dir.join("docs/manual.txt");
    let mut text = fs::read_to_string(&manual)?;
    text.replace_range(500_000..500_004, "SAYS");
    fs::write(&manual, text)?;
    fs::write(dir.join("index.html"), page("Welcome back", 41))?;
    fs::create_dir_all(dir.join("news"))?;
    fs::write(dir.join("news/2026-11-24.html"), page("News of the day", 5))?;
    fs::remove_file(dir.join("js/app.js"))?;
    fs::create_dir_all(dir.join("images/banners"))?;
    fs::rename(dir.join("images/banner photo.jpg"), dir.join("images/banners/banner-2026.jpg"))?;
    fs::set_permissions(dir.join("css/site.css"), fs::Permissions::from_mode(0o600))?;
    fs::remove_file(dir.join("home.html"))?;
    symlink("about/index.html", dir.join("home.html"))?;
    Ok(())
}

fn check_same(live: &Path, expected: &Path) -> Result<(), DemoError> {
    let diffs = compare_trees(live, expected)?;
    if diffs.is_empty() {
        Ok(())
    } else {
        Err(DemoError::Mismatch { expected: expected.display().to_string(), diffs })
    }
}

/// Runs the demo in `dir` (which should be empty), writing progress to `out`.
pub fn run(dir: &Path, config: &Config, out: &mut impl Write) -> Result<(), DemoError> {
    let staging = dir.join("staging");
    let shadow = dir.join("shadow");
    let previous = dir.join("shadow-1");
    let site_root = dir.join("site");
    let assignments = dir.join("assignments");
    fs::create_dir_all(&assignments)?;
    let site = SiteRoot::new(&site_root, offline::site_options(config));
    writeln!(out, "Content Mover demo in {}", dir.display())?;

    write_sample(&staging)?;
    writeln!(out, "\n1. publish the sample site ({}) as a full assignment", staging.display())?;
    let first = assignment_path(&assignments, AssignmentId(1));
    let summary = offline::diff(&shadow, &staging, &first, DiffArgs::default(), config)?;
    writeln!(out, "   {summary}")?;
    for o in offline::apply(&first, &site_root, true, None, offline::site_options(config))? {
        writeln!(out, "   {}", offline::describe(&site_root, &o))?;
    }
    check_same(&site_root.join("live"), &staging)?;
    writeln!(out, "   verified: {}/live is identical to staging", site_root.display())?;
    copy_tree(&staging, &shadow)?;
    copy_tree(&staging, &previous)?;

    change_sample(&staging)?;
    writeln!(
        out,
        "\n2. edit, add, delete, move, chmod and relink in staging; publish the change as a delta"
    )?;
    let second = assignment_path(&assignments, AssignmentId(2));
    let summary = offline::diff(&shadow, &staging, &second, DiffArgs::default(), config)?;
    writeln!(out, "   {summary}")?;
    write!(
        out,
        "{}",
        indent(&offline::inspect_text(&AssignmentFile::open(&second, None).map_err(OfflineError::from)?))
    )?;
    for o in offline::apply(&second, &site_root, true, None, offline::site_options(config))? {
        writeln!(out, "   {}", offline::describe(&site_root, &o))?;
    }
    check_same(&site_root.join("live"), &staging)?;
    writeln!(out, "   verified: live is identical to the edited staging")?;
    fs::remove_dir_all(&shadow)?;
    copy_tree(&staging, &shadow)?;

    writeln!(out, "\n3. roll back")?;
    let (from, to) = site.rollback().map_err(OfflineError::from)?;
    writeln!(out, "   live went from release {from} back to release {to}")?;
    check_same(&site_root.join("live"), &previous)?;
    writeln!(out, "   verified: live is identical to the first version")?;
    writeln!(
        out,
        "\nLook around: {}  (live -> {})",
        site_root.display(),
        fs::read_link(site_root.join("live"))?.display()
    )?;
    writeln!(out, "Inspect an assignment: cmover inspect {}", second.display())?;
    Ok(())
}

fn indent(text: &str) -> String {
    text.lines().map(|l| format!("   | {l}\n")).collect()
}

/// What `cmover demo` builds.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// Everything goes here.
    pub dir: std::path::PathBuf,
    /// Segments.
    pub segments: usize,
    /// Agents per segment.
    pub per_segment: usize,
    /// The CCM's HTTP address.
    pub http: std::net::SocketAddr,
    /// Content to publish instead of the bundled sample.
    pub staging: Option<std::path::PathBuf>,
    /// Publish once, verify, and exit (scripts, tests).
    pub once: bool,
}

const SITE: &str = "www";
const GROUP: &str = "web";
const LIMIT: std::time::Duration = std::time::Duration::from_secs(600);

impl DemoOptions {
    fn check(&self) -> Result<(), DemoError> {
        if !(1..=32).contains(&self.segments) {
            return Err(DemoError::Invalid {
                flag: "--segments",
                problem: format!("{} is not in 1..=32", self.segments),
            });
        }
        if !(1..=32).contains(&self.per_segment) {
            return Err(DemoError::Invalid {
                flag: "--agents-per-segment",
                problem: format!("{} is not in 1..=32", self.per_segment),
            });
        }
        if !self.http.ip().is_loopback() {
            return Err(DemoError::Invalid {
                flag: "--http",
                problem: format!("{} is not a loopback address: the demo stays on this machine", self.http),
            });
        }
        if let Some(s) = &self.staging {
            if !s.is_dir() {
                return Err(DemoError::Invalid {
                    flag: "--staging",
                    problem: format!("{} is not a directory; give the directory to publish", s.display()),
                });
            }
        }
        Ok(())
    }
}

/// Runs the cluster demo (see the module docs) in its own actix system,
/// writing what happens to `out`, until Ctrl-C or SIGTERM (or after the
/// first publish with `once`).
pub fn run_cluster(opts: DemoOptions, out: &mut (impl Write + Send)) -> Result<(), DemoError> {
    opts.check()?;
    actix::System::new().block_on(cluster_demo(opts, out))
}

async fn cluster_demo(opts: DemoOptions, out: &mut (impl Write + Send)) -> Result<(), DemoError> {
    let staging = match &opts.staging {
        Some(s) => fs::canonicalize(s)?,
        None => {
            let s = opts.dir.join("staging");
            if !s.exists() {
                write_sample(&s)?;
            }
            s
        }
    };
    let n = opts.segments * opts.per_segment;
    writeln!(out, "Content Mover demo in {}", opts.dir.display())?;
    writeln!(
        out,
        "Starting a CCM and {n} agents ({} segments of {}) on 127.0.0.1...",
        opts.segments, opts.per_segment
    )?;
    let mut copts = ClusterOptions::new(&opts.dir, opts.segments, opts.per_segment);
    copts.http = opts.http;
    // One leader served by the CCM, the next by that leader: the tree shows.
    copts.fanout = 1;
    let cluster = LocalCluster::start(copts).await?;
    let started = std::time::Instant::now();
    let segments = cluster.wait_segments(LIMIT).await?;
    writeln!(out, "Every segment elected its leader in {:.1} s:", started.elapsed().as_secs_f64())?;
    for s in &segments {
        let members: Vec<String> = s.members.iter().map(|m| m.id.to_string()).collect();
        writeln!(out, "  {}: leader {}, members {}", s.name, s.leader, members.join(", "))?;
    }
    let job = setup_job(&cluster, &staging).await?;
    let password = web_admin(&cluster).await?;
    let result = async {
        publish(&cluster, job, &staging, out).await?;
        print_where(&cluster, job, &staging, out)?;
        writeln!(out, "  Web UI:     {}/  (user {ADMIN}, password {password})", cluster.url())?;
        if opts.once {
            return Ok(());
        }
        interactive(&cluster, job, &staging, out).await
    }
    .await;
    writeln!(out, "Stopping...")?;
    cluster.stop().await;
    result
}

/// The site, group and publish job, created or (with a reused `--dir`) found.
async fn setup_job(c: &LocalCluster, staging: &Path) -> Result<u64, DemoError> {
    let existing = c.admin.ok("GET", "/api/v1/jobs", None).await?;
    let found = existing
        .as_array()
        .into_iter()
        .flatten()
        .find(|j| j["site"] == SITE && j["group"] == GROUP && j["kind"] == "publish");
    if let Some(id) = found.and_then(|j| j["id"].as_u64()) {
        return Ok(id);
    }
    c.admin.create_site(SITE, staging).await?;
    c.admin.create_group(GROUP, SITE, &c.ids(), crate::storage::records::Quorum::All).await?;
    Ok(c.admin.create_job(SITE, GROUP, "publish").await?)
}

/// The web UI's login of the demo.
const ADMIN: &str = "admin";

/// The demo's admin account: created with a random password kept in
/// `<dir>/admin-password` (mode 0600), or that password when it exists.
async fn web_admin(c: &LocalCluster) -> Result<String, DemoError> {
    let file = c.opts.dir.join("admin-password");
    if let Ok(p) = fs::read_to_string(&file) {
        return Ok(p.trim().to_owned());
    }
    let users = c.admin.ok("GET", "/api/v1/users", None).await?;
    if users.as_array().into_iter().flatten().any(|u| u["name"] == ADMIN) {
        // Made by an earlier run whose password file is gone: keep it.
        return Ok("as set before; `cmover user add` makes another account".into());
    }
    let password = crate::http::session::random_hex(9)
        .map_err(|e| DemoError::Invalid { flag: "--dir", problem: e.to_string() })?;
    c.admin
        .ok("POST", "/api/v1/users", Some(serde_json::json!({ "name": ADMIN, "password": password })))
        .await?;
    fs::write(&file, &password)?;
    fs::set_permissions(&file, fs::Permissions::from_mode(0o600))?;
    Ok(password)
}

/// Runs the publish job once and shows what happened.
async fn publish(c: &LocalCluster, job: u64, staging: &Path, out: &mut impl Write) -> Result<(), DemoError> {
    writeln!(out, "\nPublishing {} ...", staging.display())?;
    let t = std::time::Instant::now();
    let run = c.admin.run_job(job).await?;
    let r = c.admin.wait_run(run, LIMIT).await?;
    let secs = t.elapsed().as_secs_f64();
    use crate::storage::records::RunState;
    match r.state {
        RunState::Unchanged => {
            writeln!(out, "Run {run}: nothing changed in staging since release {}.", r.base_serial)?;
            return Ok(());
        }
        RunState::Committed => {}
        _ => {
            writeln!(out, "Run {run} {}: {}", r.state, r.error.as_deref().unwrap_or("no reason given"))?;
            return Ok(());
        }
    }
    if let Some(s) = &r.summary {
        writeln!(out, "  {s}")?;
    }
    for (name, p) in &r.segments {
        let from = match p.fetched_from {
            Some(crate::protocol::ids::NodeId(0)) => "the CCM".to_string(),
            Some(n) => format!("the leader of another segment (node {n})"),
            None => "?".into(),
        };
        let leader = p.leader.map_or("?".into(), |l| l.to_string());
        // On 127.0.0.1 the data channel is a unicast fan-out: multicast
        // needs a network of its own (a namespace, see the README).
        writeln!(
            out,
            "  {name}: leader {leader} fetched it from {from}, sent it to each of its members (unicast fan-out on 127.0.0.1)"
        )?;
    }
    writeln!(out, "Run {run}: release {} is live on {} servers in {secs:.2} s.", r.serial, c.agents.len())?;
    if !r.failed_servers.is_empty() {
        writeln!(out, "  failed servers: {}", crate::protocol::ids::join(&r.failed_servers))?;
    }
    for id in c.agents.keys() {
        if !r.failed_servers.iter().any(|f| f.0 == *id) {
            check_same(&c.live_dir(*id, SITE), staging)?;
        }
    }
    writeln!(out, "  verified: every live tree is identical to staging")?;
    Ok(())
}

fn print_where(c: &LocalCluster, job: u64, staging: &Path, out: &mut impl Write) -> Result<(), DemoError> {
    let url = c.url();
    writeln!(out, "\nWhere to look:")?;
    writeln!(out, "  staging:    {}", staging.display())?;
    writeln!(out, "  live trees: {}/agents/<node>/sites/{SITE}/live", c.opts.dir.display())?;
    writeln!(out, "  CCM REST:   {url}/api/v1  (token {})", c.token)?;
    writeln!(out, "    curl -H 'Authorization: Bearer {}' {url}/api/v1/runs", c.token)?;
    writeln!(out, "    curl -X POST -H 'Authorization: Bearer {}' {url}/api/v1/jobs/{job}/run", c.token)?;
    writeln!(out, "  CLI:        export CMOVER_CCM={url} CMOVER_TOKEN={}", c.token)?;
    writeln!(out, "    cmover status; cmover run list; cmover job run {job} --wait")?;
    Ok(())
}

/// Publishes again on every Enter, until Ctrl-C, SIGTERM or the end of input.
async fn interactive(
    c: &LocalCluster,
    job: u64,
    staging: &Path,
    out: &mut impl Write,
) -> Result<(), DemoError> {
    let (tx, mut lines) = tokio::sync::mpsc::unbounded_channel::<()>();
    std::thread::spawn(move || {
        let mut line = String::new();
        while std::io::stdin().read_line(&mut line).is_ok_and(|n| n > 0) {
            if tx.send(()).is_err() {
                break;
            }
            line.clear();
        }
    });
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut stdin_open = true;
    loop {
        writeln!(
            out,
            "\nEdit files in {} and press Enter to publish again (Ctrl-C to stop).",
            staging.display()
        )?;
        out.flush()?;
        loop {
            tokio::select! {
                r = tokio::signal::ctrl_c() => return r.map_err(DemoError::from),
                _ = term.recv() => return Ok(()),
                line = lines.recv(), if stdin_open => match line {
                    Some(()) => break,
                    None => stdin_open = false,
                },
            }
        }
        publish(c, job, staging, out).await?;
    }
}
