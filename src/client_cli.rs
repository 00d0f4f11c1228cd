//! `cmover site|group|job|run|checkpoint|segment|status|user …`: a client of
//! the CCM's REST API (`--ccm URL`, `--token T`, or `CMOVER_CCM`,
//! `CMOVER_TOKEN`). Reads print tables, or the API's JSON with `--json`.

use std::io::{IsTerminal, Read};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use serde_json::{json, Value};

use cmover::http::admin_client::{AdminClient, AdminError};
use cmover::protocol::api::ServerOutcome;
use cmover::protocol::ids::join;
use cmover::storage::records::{RunRecord, RunState};

/// Where the CCM is and how to authenticate, as given after a client
/// subcommand (`cmover job list --ccm URL`). The same options may come
/// before it (`cmover --ccm URL job list`, [`Connection`]); these win.
#[derive(Args, Clone, Default)]
#[command(next_help_heading = "Connection (also before the subcommand)")]
pub struct Remote {
    /// The CCM's base URL [env: CMOVER_CCM; default: http://127.0.0.1:7480].
    #[arg(long, global = true)]
    pub ccm: Option<String>,
    /// The admin token (`ccm.admin_token`) [env: CMOVER_TOKEN].
    #[arg(long, global = true)]
    pub token: Option<String>,
    /// Print the API's JSON instead of text.
    #[arg(long, global = true)]
    pub json: bool,
}

/// The connection options before any subcommand (`cmover --ccm URL status`),
/// and the environment.
#[derive(Args, Clone, Default)]
#[command(next_help_heading = "Connection of the CCM client commands")]
pub struct Connection {
    /// The CCM's base URL.
    #[arg(long = "ccm", env = "CMOVER_CCM", default_value = "http://127.0.0.1:7480")]
    pub ccm: String,
    /// The admin token (`ccm.admin_token`).
    #[arg(long = "token", env = "CMOVER_TOKEN", default_value = "", hide_env_values = true)]
    pub token: String,
    /// Print the API's JSON instead of text (client commands).
    #[arg(long = "json")]
    pub json: bool,
}

impl Connection {
    /// These options with what was given after the subcommand on top.
    pub fn with(mut self, after: Remote) -> Connection {
        if let Some(c) = after.ccm {
            self.ccm = c;
        }
        if let Some(t) = after.token {
            self.token = t;
        }
        self.json |= after.json;
        self
    }
}

#[derive(Subcommand)]
pub enum SiteCmd {
    /// Create a site published from a staging directory on the CCM.
    Add {
        /// Its name.
        name: String,
        /// Absolute staging directory.
        #[arg(long)]
        staging: std::path::PathBuf,
    },
    /// List sites.
    List,
    /// Show one site.
    Show {
        /// Its name.
        name: String,
    },
    /// Delete a site no group uses.
    Remove {
        /// Its name.
        name: String,
    },
}

#[derive(Subcommand)]
pub enum GroupCmd {
    /// Create a content group.
    Add {
        /// Its name.
        name: String,
        /// The site it serves.
        #[arg(long)]
        site: String,
        /// Server ids, comma-separated.
        #[arg(long, value_delimiter = ',', required = true)]
        servers: Vec<u64>,
        /// Go-live quorum: `all`, a count (`4`) or a percentage (`75%`).
        #[arg(long, default_value = "all")]
        quorum: String,
    },
    /// List content groups.
    List,
    /// Show one group.
    Show {
        /// Its name.
        name: String,
    },
    /// Delete a group no job uses.
    Remove {
        /// Its name.
        name: String,
    },
}

/// A job's definition on the command line.
#[derive(Args)]
pub struct JobSpecArgs {
    /// The site.
    #[arg(long)]
    site: String,
    /// The content group.
    #[arg(long)]
    group: String,
    /// publish, replicate, synchronize, restore, rollback, switch, remove, hot.
    #[arg(long, default_value = "publish")]
    kind: String,
    /// A name for people.
    #[arg(long, default_value = "")]
    name: String,
    /// Run every interval (e.g. `10m`).
    #[arg(long, conflicts_with_all = ["cron", "at", "on_change"])]
    every: Option<humantime::Duration>,
    /// Run on a cron schedule (in the CCM's `ccm.time_zone`), e.g. `0 3 * * *`.
    #[arg(long, conflicts_with_all = ["at", "on_change"])]
    cron: Option<String>,
    /// Run once at this time (RFC 3339, e.g. `2026-12-01T03:00:00Z`).
    #[arg(long, conflicts_with = "on_change")]
    at: Option<humantime::Timestamp>,
    /// Run when the staging directory changes.
    #[arg(long)]
    on_change: bool,
    /// Quiet time before an on-change run.
    #[arg(long, default_value = "2s")]
    debounce: humantime::Duration,
    /// Quorum override: `all`, a count or a percentage.
    #[arg(long)]
    quorum: Option<String>,
    /// Retries of a failed run.
    #[arg(long, default_value_t = 0)]
    retries: u32,
    /// First retry's delay (doubles each time).
    #[arg(long, default_value = "5s")]
    backoff: humantime::Duration,
    /// When due during a conflicting run: queue or cancel.
    #[arg(long, default_value = "queue")]
    conflict: String,
    /// Only these patterns are content (repeatable).
    #[arg(long)]
    include: Vec<String>,
    /// Leave these patterns out (repeatable).
    #[arg(long)]
    exclude: Vec<String>,
    /// Never compress files matching these patterns (repeatable).
    #[arg(long)]
    no_compress: Vec<String>,
    /// Encrypt assignment data (`true`/`false`; default: `ccm.encrypt`).
    #[arg(long)]
    encrypt: Option<bool>,
    /// Bandwidth limit in bytes per second (e.g. `10MiB`).
    #[arg(long)]
    bandwidth: Option<bytesize::ByteSize>,
    /// switch: the release to make live.
    #[arg(long)]
    serial: Option<u64>,
    /// restore: the checkpoint.
    #[arg(long)]
    checkpoint: Option<u64>,
    /// remove / hot: paths (repeatable).
    #[arg(long)]
    path: Vec<String>,
    /// hot: how many more servers.
    #[arg(long)]
    extra_servers: Option<u32>,
    /// Create it disabled (it runs only when asked).
    #[arg(long)]
    disabled: bool,
}

#[derive(Subcommand)]
pub enum JobCmd {
    /// Create a job.
    Add(Box<JobSpecArgs>),
    /// List jobs with their next run time.
    List {
        /// Also the one-off jobs (rollbacks, switches, restores, automatic catch-ups).
        #[arg(long)]
        all: bool,
    },
    /// Show one job, its last runs and what it does.
    Show {
        /// Its id.
        id: u64,
    },
    /// What a run of the job would do now (nothing is started): the
    /// changes against live, the servers, the quorum.
    Plan {
        /// Its id.
        id: u64,
    },
    /// Run a job now.
    Run {
        /// Its id.
        id: u64,
        /// Wait for the run to end, with a progress bar; exit non-zero if it fails.
        #[arg(long)]
        wait: bool,
    },
    /// Cancel a job's run in progress.
    Cancel {
        /// Its id.
        id: u64,
    },
    /// Delete a job.
    Remove {
        /// Its id.
        id: u64,
    },
}

#[derive(Subcommand)]
pub enum RunCmd {
    /// List runs, newest first.
    List {
        /// Only this job's.
        #[arg(long)]
        job: Option<u64>,
        /// Only this site's.
        #[arg(long)]
        site: Option<String>,
        /// At most this many.
        #[arg(long, default_value_t = 20)]
        limit: usize,
    },
    /// Show one run.
    Show {
        /// Its id.
        id: u64,
    },
    /// Wait for a run to end (progress bar); exit non-zero if it fails.
    Wait {
        /// Its id.
        id: u64,
    },
    /// Cancel a run before its commit.
    Cancel {
        /// Its id.
        id: u64,
    },
}

#[derive(Subcommand)]
pub enum CheckpointCmd {
    /// Make a checkpoint of a site's live release.
    Add {
        /// The site.
        #[arg(long)]
        site: String,
    },
    /// List checkpoints.
    List {
        /// Only this site's.
        #[arg(long)]
        site: Option<String>,
    },
    /// Show a checkpoint and the releases that went live since.
    Show {
        /// The site.
        site: String,
        /// The checkpoint.
        id: u64,
    },
    /// Make a checkpoint live again on a content group.
    Restore {
        /// The site.
        site: String,
        /// The checkpoint.
        id: u64,
        /// The content group.
        #[arg(long)]
        group: String,
        /// Wait for the run to end, with a progress bar.
        #[arg(long)]
        wait: bool,
    },
}

#[derive(Subcommand)]
pub enum SegmentCmd {
    /// List segments, their leaders and servers.
    List,
}

#[derive(Subcommand)]
pub enum UserCmd {
    /// Create an admin account of the web UI; the password is read from
    /// `CMOVER_PASSWORD` or standard input.
    Add {
        /// Login name.
        name: String,
    },
    /// List admin accounts.
    List,
}

/// Filters of `cmover events`.
#[derive(Args, Clone, Default)]
pub struct EventsArgs {
    /// Only this site's.
    #[arg(long)]
    pub site: Option<String>,
    /// Only this run's.
    #[arg(long)]
    pub run: Option<u64>,
    /// Only this kind (e.g. `committed`, `run_failed`).
    #[arg(long)]
    pub kind: Option<String>,
    /// At most this many, newest first.
    #[arg(long, default_value_t = 30)]
    pub limit: usize,
}

/// One client command.
pub enum ClientCmd {
    Site(SiteCmd),
    Group(GroupCmd),
    Job(JobCmd),
    Run(RunCmd),
    Checkpoint(CheckpointCmd),
    Segment(SegmentCmd),
    User(UserCmd),
    Status,
    Events(EventsArgs),
}

/// Runs `cmd` against the CCM in `remote`.
pub fn run(remote: &Connection, cmd: ClientCmd) -> Result<()> {
    let client = AdminClient::new(&remote.ccm, &remote.token);
    let system = actix_rt::System::new();
    system.block_on(async move { dispatch(&client, remote.json, cmd).await })
}

fn refused(e: AdminError) -> anyhow::Error {
    match e {
        AdminError::Refused { method, path, status, body } => {
            let msg = body.get("error").and_then(Value::as_str).unwrap_or("").to_owned();
            match body.get("field").and_then(Value::as_str) {
                Some(f) => anyhow::anyhow!("{method} {path}: HTTP {status}: {f}: {msg}"),
                None if status == 401 => {
                    anyhow::anyhow!("HTTP 401: {msg} (give --token or set CMOVER_TOKEN)")
                }
                None => anyhow::anyhow!("{method} {path}: HTTP {status}: {msg}"),
            }
        }
        e => anyhow::Error::new(e).context("is the CCM running? (--ccm URL or CMOVER_CCM)"),
    }
}

async fn call(c: &AdminClient, method: &str, path: &str, body: Option<Value>) -> Result<Value> {
    c.ok(method, path, body).await.map_err(refused)
}

fn quorum(q: &str) -> Result<Value> {
    let q = q.trim();
    if q == "all" {
        return Ok(json!({"type": "all"}));
    }
    if let Some(p) = q.strip_suffix('%') {
        let p: f64 = p.parse().with_context(|| format!("quorum {q:?}: not a percentage"))?;
        return Ok(json!({"type": "percent", "value": p}));
    }
    let n: u32 =
        q.parse().with_context(|| format!("quorum {q:?}: give all, a count or a percentage like 75%"))?;
    Ok(json!({"type": "count", "value": n}))
}

fn job_body(a: &JobSpecArgs) -> Result<Value> {
    let schedule = if let Some(every) = a.every {
        json!({"type": "every", "interval_ms": every.as_millis() as u64})
    } else if let Some(expr) = &a.cron {
        json!({"type": "cron", "expr": expr})
    } else if let Some(at) = a.at {
        let at: std::time::SystemTime = at.into();
        let ms = cmover::clock::ms_of(at);
        json!({"type": "once", "at_ms": ms})
    } else if a.on_change {
        json!({"type": "on_change", "debounce_ms": a.debounce.as_millis() as u64})
    } else {
        json!({"type": "manual"})
    };
    let mut policy = json!({
        "retry": {"attempts": a.retries, "backoff_ms": a.backoff.as_millis() as u64,
                  "max_backoff_ms": (a.backoff.as_millis() as u64).max(300_000)},
        "conflict": a.conflict,
        "include": a.include,
        "exclude": a.exclude,
        "compress_exclude": a.no_compress,
    });
    if let Some(q) = &a.quorum {
        policy["quorum"] = quorum(q)?;
    }
    if let Some(e) = a.encrypt {
        policy["encrypt"] = json!(e);
    }
    if let Some(b) = a.bandwidth {
        policy["bandwidth"] = json!(b.as_u64());
    }
    let mut params = json!({});
    if let Some(s) = a.serial {
        params["serial"] = json!(s);
    }
    if let Some(c) = a.checkpoint {
        params["checkpoint"] = json!(c);
    }
    if !a.path.is_empty() {
        params["paths"] = json!(a.path);
    }
    if let Some(n) = a.extra_servers {
        params["extra_servers"] = json!(n);
    }
    Ok(json!({
        "name": a.name, "site": a.site, "group": a.group, "kind": a.kind,
        "params": params, "schedule": schedule, "policy": policy, "enabled": !a.disabled,
    }))
}

/// `GET path`: the answer as JSON with `--json`, else a table of its
/// items, one `row` each, under `header`.
async fn list(
    c: &AdminClient,
    json_out: bool,
    path: &str,
    header: &[&str],
    row: impl Fn(&Value) -> Vec<String>,
) -> Result<()> {
    let v = call(c, "GET", path, None).await?;
    if json_out {
        return print_value(true, &v);
    }
    table(header, v.as_array().into_iter().flatten().map(row).collect());
    Ok(())
}

/// Prints rows under a header, columns aligned.
fn table(header: &[&str], rows: Vec<Vec<String>>) {
    print!("{}", table_text(header, rows));
}

/// Rows under a header, columns aligned, a line each.
fn table_text(header: &[&str], rows: Vec<Vec<String>>) -> String {
    let mut width: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for r in &rows {
        for (i, c) in r.iter().enumerate() {
            width[i] = width[i].max(c.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: Vec<String>| {
        let text: Vec<String> =
            cells.iter().enumerate().map(|(i, c)| format!("{c:<w$}", w = width[i])).collect();
        out.push_str(text.join("  ").trim_end());
        out.push('\n');
    };
    line(header.iter().map(|h| h.to_uppercase()).collect());
    for r in rows {
        line(r);
    }
    out
}

/// A JSON value for people: `-` for nothing, strings bare, lists joined.
fn s(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        Value::Array(a) if a.is_empty() => "none".into(),
        Value::Array(a) => a.iter().map(s).collect::<Vec<_>>().join(", "),
        v => v.to_string(),
    }
}

/// A quorum as the API writes it, for people: `all`, `3`, `75%`.
fn quorum_text(q: &Value) -> String {
    match (q["type"].as_str(), &q["value"]) {
        (Some("count"), v) => s(v),
        (Some("percent"), v) => format!("{}%", s(v)),
        (Some(t), _) => t.to_owned(),
        (None, v) => s(v),
    }
}

/// Prints one record; as JSON whether or not `--json` was given (a record
/// has too many fields for a table).
fn print_value(_json_out: bool, v: &Value) -> Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

async fn dispatch(c: &AdminClient, json_out: bool, cmd: ClientCmd) -> Result<()> {
    match cmd {
        ClientCmd::Site(cmd) => site(c, json_out, cmd).await,
        ClientCmd::Group(cmd) => group(c, json_out, cmd).await,
        ClientCmd::Job(cmd) => job(c, json_out, cmd).await,
        ClientCmd::Run(cmd) => run_cmd(c, json_out, cmd).await,
        ClientCmd::Checkpoint(cmd) => checkpoint(c, json_out, cmd).await,
        ClientCmd::Segment(SegmentCmd::List) => segments(c, json_out).await,
        ClientCmd::User(cmd) => user(c, json_out, cmd).await,
        ClientCmd::Status => status(c, json_out).await,
        ClientCmd::Events(a) => events(c, json_out, a).await,
    }
}

async fn site(c: &AdminClient, json_out: bool, cmd: SiteCmd) -> Result<()> {
    match cmd {
        SiteCmd::Add { name, staging } => {
            let staging = std::path::absolute(&staging).unwrap_or(staging);
            let v = call(c, "POST", "/api/v1/sites", Some(json!({"name": name, "staging": staging}))).await?;
            if json_out {
                return print_value(true, &v);
            }
            println!("site {name} created, staged at {}", staging.display());
        }
        SiteCmd::List => {
            list(c, json_out, "/api/v1/sites", &["site", "live", "staging"], |x| {
                vec![s(&x["name"]), s(&x["live_serial"]), s(&x["staging"])]
            })
            .await?;
        }
        SiteCmd::Show { name } => {
            print_value(json_out, &call(c, "GET", &format!("/api/v1/sites/{name}"), None).await?)?
        }
        SiteCmd::Remove { name } => {
            call(c, "DELETE", &format!("/api/v1/sites/{name}"), None).await?;
            println!("site {name} deleted");
        }
    }
    Ok(())
}

async fn group(c: &AdminClient, json_out: bool, cmd: GroupCmd) -> Result<()> {
    match cmd {
        GroupCmd::Add { name, site, servers, quorum: q } => {
            let body = json!({"name": name, "site": site, "servers": servers, "quorum": quorum(&q)?});
            let v = call(c, "POST", "/api/v1/groups", Some(body)).await?;
            if json_out {
                return print_value(true, &v);
            }
            let list: Vec<String> = servers.iter().map(u64::to_string).collect();
            println!("content group {name} of site {site} created: servers {}, quorum {q}", list.join(", "));
        }
        GroupCmd::List => {
            list(c, json_out, "/api/v1/groups", &["group", "site", "servers", "quorum"], |x| {
                vec![s(&x["name"]), s(&x["site"]), s(&x["servers"]), quorum_text(&x["quorum"])]
            })
            .await?;
        }
        GroupCmd::Show { name } => {
            print_value(json_out, &call(c, "GET", &format!("/api/v1/groups/{name}"), None).await?)?
        }
        GroupCmd::Remove { name } => {
            call(c, "DELETE", &format!("/api/v1/groups/{name}"), None).await?;
            println!("content group {name} deleted");
        }
    }
    Ok(())
}

async fn job(c: &AdminClient, json_out: bool, cmd: JobCmd) -> Result<()> {
    match cmd {
        JobCmd::Add(a) => {
            let v = call(c, "POST", "/api/v1/jobs", Some(job_body(&a)?)).await?;
            if json_out {
                return print_value(true, &v);
            }
            println!("job {} created ({} site {} on group {})", s(&v["id"]), a.kind, a.site, a.group);
        }
        JobCmd::List { all } => {
            list(
                c,
                json_out,
                if all { "/api/v1/jobs?all=true" } else { "/api/v1/jobs" },
                &["id", "name", "kind", "site", "group", "schedule", "next run", "runs", "last run"],
                |x| {
                    vec![
                        s(&x["id"]),
                        s(&x["name"]),
                        s(&x["kind"]),
                        s(&x["site"]),
                        s(&x["group"]),
                        s(&x["schedule"]["type"]),
                        local_v(&x["next_run_ms"]),
                        x["runs"].as_array().map_or(0, Vec::len).to_string(),
                        match &x["last_run"] {
                            Value::Null => "never".into(),
                            r => format!("{} {}", s(&r["id"]), s(&r["state"])),
                        },
                    ]
                },
            )
            .await?;
        }
        JobCmd::Show { id } => {
            let v = call(c, "GET", &format!("/api/v1/jobs/{id}"), None).await?;
            if json_out {
                return print_value(true, &v);
            }
            let runs = call(c, "GET", &format!("/api/v1/runs?job={id}&limit=5"), None).await?;
            print!("{}", job_text(&v, &runs));
        }
        JobCmd::Plan { id } => {
            let v = call(c, "GET", &format!("/api/v1/jobs/{id}/plan"), None).await?;
            if json_out {
                return print_value(true, &v);
            }
            print!("{}", plan_text(&v));
        }
        JobCmd::Run { id, wait } => {
            let v = call(c, "POST", &format!("/api/v1/jobs/{id}/run"), None).await?;
            let run = v["run"].as_u64().context("the CCM did not say which run started")?;
            if wait {
                return wait_run(c, json_out, run).await;
            }
            if json_out {
                return print_value(true, &v);
            }
            println!("run {run} of job {id} started");
        }
        JobCmd::Cancel { id } => {
            let v = call(c, "POST", &format!("/api/v1/jobs/{id}/cancel"), None).await?;
            println!("run {} of job {id}: cancel requested", s(&v["run"]));
        }
        JobCmd::Remove { id } => {
            call(c, "DELETE", &format!("/api/v1/jobs/{id}"), None).await?;
            println!("job {id} deleted");
        }
    }
    Ok(())
}

fn run_row(x: &Value) -> Vec<String> {
    let failed = x["failed_servers"].as_array().map_or(0, Vec::len);
    vec![
        s(&x["id"]),
        s(&x["job"]),
        s(&x["kind"]),
        s(&x["site"]),
        s(&x["serial"]),
        s(&x["state"]),
        local_v(&x["started_ms"]),
        failed.to_string(),
        x["error"].as_str().unwrap_or("").chars().take(60).collect(),
    ]
}

async fn run_cmd(c: &AdminClient, json_out: bool, cmd: RunCmd) -> Result<()> {
    match cmd {
        RunCmd::List { job, site, limit } => {
            let mut q = format!("/api/v1/runs?limit={limit}");
            if let Some(j) = job {
                q.push_str(&format!("&job={j}"));
            }
            if let Some(s) = site {
                q.push_str(&format!("&site={s}"));
            }
            let header = ["run", "job", "kind", "site", "serial", "state", "started", "failed", "error"];
            list(c, json_out, &q, &header, run_row).await?;
        }
        RunCmd::Show { id } => {
            let v = call(c, "GET", &format!("/api/v1/runs/{id}"), None).await?;
            if json_out {
                return print_value(true, &v);
            }
            let rec: RunRecord =
                serde_json::from_value(v).context("the CCM's run record is not what this cmover reads")?;
            print!("{}", run_text(&rec));
        }
        RunCmd::Wait { id } => return wait_run(c, json_out, id).await,
        RunCmd::Cancel { id } => {
            call(c, "POST", &format!("/api/v1/runs/{id}/cancel"), None).await?;
            println!("run {id}: cancel requested");
        }
    }
    Ok(())
}

/// Follows run `run` with a progress bar (servers done / total, bytes)
/// until it ends; an error when it did not commit.
async fn wait_run(c: &AdminClient, json_out: bool, run: u64) -> Result<()> {
    let bar = indicatif::ProgressBar::new(0);
    if json_out || !std::io::stderr().is_terminal() {
        bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} run {prefix} [{bar:30}] {pos}/{len} servers {msg}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    bar.set_prefix(run.to_string());
    let mut transient = 0;
    let rec: RunRecord = loop {
        match c.run(run).await {
            Ok(r) => {
                transient = 0;
                // Steady: every target counts once, done when its part of
                // the wave in progress is over.
                let total = r.targets.len().max(r.applied.len());
                let done = match r.state {
                    RunState::Committing | RunState::Aborting => r.switched.len(),
                    _ if r.state.is_final() => total,
                    _ => r.applied.len(),
                };
                bar.set_length(total as u64);
                bar.set_position(done.min(total) as u64);
                bar.set_message(progress_words(&r));
                if r.state.is_final() {
                    break r;
                }
            }
            Err(e @ AdminError::Refused { .. }) => return Err(refused(e)),
            Err(e) => {
                transient += 1;
                if transient > 50 {
                    return Err(refused(e));
                }
            }
        }
        bar.tick();
        actix_rt::time::sleep(Duration::from_millis(200)).await;
    };
    bar.finish_and_clear();
    if json_out {
        println!("{}", serde_json::to_string_pretty(&rec)?);
    } else {
        let bytes = rec.summary.as_ref().map_or(0, |s| s.assignment_bytes);
        println!(
            "run {} of job {} ({}): {}, release {} of {}, {} servers switched, {} sent; failed servers: {}",
            rec.id,
            rec.job,
            rec.kind.name(),
            rec.state,
            rec.serial,
            rec.site,
            rec.went_live().len(),
            bytesize::ByteSize::b(bytes),
            join(&rec.failed_servers)
        );
    }
    match rec.state {
        RunState::Committed | RunState::Unchanged => Ok(()),
        state => {
            bail!("run {} ended {state}: {}", rec.id, rec.error.unwrap_or_else(|| "no error recorded".into()))
        }
    }
}

/// The bar's words: the state, and while the content moves, the bytes its
/// segments' leaders hold so far and how many are still sending.
fn progress_words(r: &RunRecord) -> String {
    use cmover::protocol::api::LivePhase;
    let moving: Vec<_> =
        r.segments.values().filter(|p| p.reported_ms.is_none()).filter_map(|p| p.live).collect();
    if moving.is_empty() || r.state != RunState::Distributing {
        return r.state.to_string();
    }
    let held: u64 = moving.iter().map(|l| l.fetched).sum();
    let size: u64 = moving.iter().map(|l| l.size).sum();
    let sending = moving.iter().filter(|l| l.phase == LivePhase::Sending).count();
    format!(
        "{}: {} of {} fetched, {sending} of {} segments multicasting",
        r.state,
        bytesize::ByteSize::b(held),
        bytesize::ByteSize::b(size),
        r.segments.len()
    )
}

/// A time for people, in the local time zone: `2026-12-02 13:04:05`.
fn local(ms: u64) -> String {
    use chrono::TimeZone;
    match chrono::Local.timestamp_millis_opt(ms as i64) {
        chrono::LocalResult::Single(t) => t.format("%Y-%m-%d %H:%M:%S").to_string(),
        _ => format!("{ms} ms after 1970"),
    }
}

fn local_v(ms: &Value) -> String {
    ms.as_u64().map_or_else(|| "-".into(), local)
}

/// A duration for people, as the API and the UI write them: `412ms`,
/// `1.4s`, `2m 5s`, `3h 2m`.
pub fn duration(ms: u64) -> String {
    match ms {
        0..=999 => format!("{ms}ms"),
        1_000..=59_999 => format!("{:.1}s", ms as f64 / 1000.0),
        60_000..=3_599_999 => format!("{}m {}s", ms / 60_000, ms % 60_000 / 1000),
        _ => format!("{}h {}m", ms / 3_600_000, ms % 3_600_000 / 60_000),
    }
}

/// A run record for people (`cmover run show`).
fn run_text(r: &RunRecord) -> String {
    use std::fmt::Write;
    let mut t = String::new();
    let since =
        |ms: Option<u64>| ms.map_or("-".into(), |m| format!("+{}", duration(m.saturating_sub(r.started_ms))));
    let _ = writeln!(t, "run {} of job {} ({}, {}): {}", r.id, r.job, r.kind.name(), r.reason, r.state);
    let base =
        if r.base_serial == 0 { "full".to_string() } else { format!("from release {}", r.base_serial) };
    let _ = writeln!(t, "  site {}, group {}, release {} ({base})", r.site, r.group, r.serial);
    let took = r.finished_ms.map_or("running".into(), |f| duration(f.saturating_sub(r.started_ms)));
    let _ = writeln!(t, "  started {}, took {took}", local(r.started_ms));
    if let Some(s) = &r.summary {
        let _ = writeln!(
            t,
            "  content: {} new, {} changed ({} as deltas), {} removed, {} renamed; {} of data, assignment {}",
            s.files_new,
            s.files_changed,
            s.files_patched,
            s.removed,
            s.files_renamed,
            bytesize::ByteSize::b(s.data_raw_bytes),
            bytesize::ByteSize::b(s.assignment_bytes)
        );
    }
    let _ = writeln!(t, "  targets: {}", join(&r.targets));
    if r.needed > 0 {
        let _ = writeln!(t, "  quorum: ≥ {} of {}", r.needed, r.targets.len());
    }
    let _ = writeln!(t, "  went live on: {}", join(&r.went_live()));
    let _ = writeln!(t, "  failed: {}", join(&r.failed_servers));
    let phases: Vec<String> =
        r.phases.iter().map(|p| format!("{} {}", p.name.name(), since(Some(p.at_ms)))).collect();
    if !phases.is_empty() {
        let _ = writeln!(t, "  phases: {}", phases.join(", "));
    }
    if let Some(e) = &r.error {
        let _ = writeln!(t, "  error: {e}");
    }
    if !r.segments.is_empty() {
        let _ = writeln!(t);
        let mut rows = Vec::new();
        for (name, p) in &r.segments {
            let c = r.control_segments.get(name);
            let d = p.delivery;
            rows.push(vec![
                name.clone(),
                p.leader.map_or("-".into(), |l| l.to_string()),
                p.state.name().into(),
                since(p.notified_ms),
                since(p.reported_ms),
                d.map_or("-".into(), |d| bytesize::ByteSize::b(d.bytes).to_string()),
                d.map_or("-".into(), |d| format!("{}/{}", d.frames_sent, d.frames_needed)),
                d.map_or("-".into(), |d| d.passes.to_string()),
                c.map_or("-".into(), |c| c.state.name().into()),
                since(c.and_then(|c| c.reported_ms)),
            ]);
        }
        let header = [
            "segment",
            "leader",
            "content",
            "notified",
            "reported",
            "bytes",
            "frames",
            "passes",
            "commit",
            "commit reported",
        ];
        t.push_str(&table_text(&header, rows));
    }
    let mut problems = Vec::new();
    for (wave, outcomes) in [("content", &r.applied), ("commit", &r.switched)] {
        for (s, o) in outcomes.iter() {
            match o {
                ServerOutcome::Failed { error } => problems.push(format!("  server {s} ({wave}): {error}")),
                ServerOutcome::Silent => problems.push(format!("  server {s} ({wave}): no report")),
                ServerOutcome::Succeeded => {}
            }
        }
    }
    if !problems.is_empty() {
        let _ = writeln!(t, "\nproblems:\n{}", problems.join("\n"));
    }
    t
}

/// A job for people (`cmover job show`): what it is, when it runs, its last runs.
fn job_text(j: &Value, runs: &Value) -> String {
    use std::fmt::Write;
    let mut t = String::new();
    let kind = j["kind"].as_str().unwrap_or("?");
    let name = j["name"].as_str().filter(|n| !n.is_empty()).map_or(String::new(), |n| format!(" \"{n}\""));
    let _ =
        writeln!(t, "job {}{name}: {kind} site {} on group {}", s(&j["id"]), s(&j["site"]), s(&j["group"]));
    if let Ok(k) = serde_json::from_value::<cmover::storage::records::JobKind>(j["kind"].clone()) {
        let _ = writeln!(t, "  {}", k.summary());
    }
    let sched = &j["schedule"];
    let schedule = match sched["type"].as_str() {
        Some("every") => format!("every {}", duration(sched["interval_ms"].as_u64().unwrap_or(0))),
        Some("cron") => format!("cron {}", s(&sched["expr"])),
        Some("once") => format!("once at {}", local_v(&sched["at_ms"])),
        Some("on_change") => {
            format!(
                "when staging changes (after {} quiet)",
                duration(sched["debounce_ms"].as_u64().unwrap_or(0))
            )
        }
        _ => "only when run by hand".into(),
    };
    let enabled = if j["enabled"].as_bool() == Some(false) { " (disabled)" } else { "" };
    let _ = writeln!(t, "  schedule: {schedule}{enabled}; next run: {}", local_v(&j["next_run_ms"]));
    let params = &j["params"];
    for (key, what) in
        [("serial", "release"), ("checkpoint", "checkpoint"), ("extra_servers", "extra servers")]
    {
        if !params[key].is_null() {
            let _ = writeln!(t, "  {what}: {}", s(&params[key]));
        }
    }
    if let Some(p) = params["paths"].as_array().filter(|p| !p.is_empty()) {
        let p: Vec<String> = p.iter().map(s).collect();
        let _ = writeln!(t, "  paths: {}", p.join(", "));
    }
    let all = j["runs"].as_array().map_or(0, Vec::len);
    let _ = writeln!(t, "  runs: {all}");
    let list = runs.as_array().cloned().unwrap_or_default();
    if !list.is_empty() {
        let rows = list
            .iter()
            .map(|r| {
                let took = match (r["started_ms"].as_u64(), r["finished_ms"].as_u64()) {
                    (Some(a), Some(b)) => duration(b.saturating_sub(a)),
                    _ => "running".into(),
                };
                let failed: Vec<String> =
                    r["failed_servers"].as_array().into_iter().flatten().map(s).collect();
                vec![
                    s(&r["id"]),
                    s(&r["state"]),
                    s(&r["serial"]),
                    local_v(&r["started_ms"]),
                    took,
                    if failed.is_empty() { "none".into() } else { failed.join(", ") },
                ]
            })
            .collect();
        let _ = writeln!(t, "\nlast runs:");
        t.push_str(&table_text(&["run", "state", "release", "started", "took", "failed"], rows));
    }
    t
}

/// A job plan for people (`cmover job plan`).
fn plan_text(p: &Value) -> String {
    use std::fmt::Write;
    let mut t = String::new();
    let _ = writeln!(t, "job {} ({}): {}", s(&p["job"]), s(&p["kind"]), s(&p["description"]));
    if p["runnable"].as_bool() == Some(true) && p["blocked"].is_null() {
        let _ = writeln!(t, "  a run now would start");
    } else {
        let _ = writeln!(t, "  a run now would not go ahead: {}", s(&p["blocked"]));
    }
    if !p["serial"].is_null() {
        let base = match p["base_serial"].as_u64() {
            Some(0) | None => "full".into(),
            Some(b) => format!("from release {b}"),
        };
        let _ = writeln!(t, "  release {} ({base})", s(&p["serial"]));
    }
    let ids = |v: &Value| {
        let l: Vec<String> = v.as_array().into_iter().flatten().map(s).collect();
        if l.is_empty() {
            "none".to_string()
        } else {
            l.join(", ")
        }
    };
    if !p["quorum"].as_str().unwrap_or("").is_empty() {
        let _ = writeln!(t, "  targets: {}", ids(&p["targets"]));
        let _ = writeln!(t, "  offline: {}", ids(&p["offline"]));
        let _ = writeln!(t, "  quorum: {}", s(&p["quorum"]));
    }
    let c = &p["changes"];
    if c.is_object() {
        let n = |k: &str| c[k].as_u64().unwrap_or(0);
        let _ = writeln!(
            t,
            "  changes against live: {} new, {} changed, {} removed, {} moved, {} new directories, {} symlinks, {} mode or time changes",
            n("files_new"),
            n("files_changed"),
            n("removed"),
            n("files_renamed"),
            n("dirs_new"),
            n("symlinks"),
            n("attr_changes")
        );
        for path in c["paths"].as_array().into_iter().flatten() {
            let _ = writeln!(t, "    {}", s(path));
        }
        if n("more") > 0 {
            let _ = writeln!(t, "    … and {} more", n("more"));
        }
    }
    t
}

/// The history (`cmover events`), newest first.
async fn events(c: &AdminClient, json_out: bool, a: EventsArgs) -> Result<()> {
    let mut q = format!("/api/v1/events?limit={}", a.limit);
    if let Some(s) = &a.site {
        q.push_str(&format!("&site={s}"));
    }
    if let Some(r) = a.run {
        q.push_str(&format!("&run={r}"));
    }
    if let Some(k) = &a.kind {
        q.push_str(&format!("&kind={k}"));
    }
    list(c, json_out, &q, &["when", "event", "site", "run", "what"], |x| {
        vec![local_v(&x["at_ms"]), s(&x["kind"]), s(&x["site"]), s(&x["run"]), s(&x["message"])]
    })
    .await
}

async fn checkpoint(c: &AdminClient, json_out: bool, cmd: CheckpointCmd) -> Result<()> {
    match cmd {
        CheckpointCmd::Add { site } => {
            let v = call(c, "POST", "/api/v1/checkpoints", Some(json!({"site": site}))).await?;
            if json_out {
                return print_value(true, &v);
            }
            println!(
                "checkpoint {} of site {} made at release {} ({} files, {} bytes)",
                s(&v["id"]),
                site,
                s(&v["serial"]),
                s(&v["files"]),
                s(&v["bytes"])
            );
        }
        CheckpointCmd::List { site } => {
            let path = match &site {
                Some(s) => format!("/api/v1/checkpoints?site={s}"),
                None => "/api/v1/checkpoints".into(),
            };
            list(c, json_out, &path, &["id", "site", "release", "files", "bytes", "created"], |x| {
                vec![
                    s(&x["id"]),
                    s(&x["site"]),
                    s(&x["serial"]),
                    s(&x["files"]),
                    s(&x["bytes"]),
                    local_v(&x["created_ms"]),
                ]
            })
            .await?;
        }
        CheckpointCmd::Show { site, id } => {
            print_value(json_out, &call(c, "GET", &format!("/api/v1/checkpoints/{site}/{id}"), None).await?)?
        }
        CheckpointCmd::Restore { site, id, group, wait } => {
            let path = format!("/api/v1/checkpoints/{site}/{id}/restore");
            let v = call(c, "POST", &path, Some(json!({"group": group}))).await?;
            let run = v["run"].as_u64().context("the CCM did not say which run started")?;
            if wait {
                return wait_run(c, json_out, run).await;
            }
            if json_out {
                return print_value(true, &v);
            }
            println!("restore job {} started run {run}", s(&v["job"]));
        }
    }
    Ok(())
}

async fn segments(c: &AdminClient, json_out: bool) -> Result<()> {
    list(c, json_out, "/api/v1/segments", &["segment", "leader", "leader http", "servers", "reported"], |x| {
        let members: Vec<String> =
            x["members"].as_array().into_iter().flatten().map(|m| s(&m["id"])).collect();
        vec![
            s(&x["name"]),
            s(&x["leader"]),
            s(&x["leader_http"]),
            members.join(","),
            local_v(&x["updated_ms"]),
        ]
    })
    .await
}

async fn status(c: &AdminClient, json_out: bool) -> Result<()> {
    let segments = call(c, "GET", "/api/v1/segments", None).await?;
    let servers = call(c, "GET", "/api/v1/servers", None).await?;
    let sites = call(c, "GET", "/api/v1/sites", None).await?;
    if json_out {
        return print_value(true, &json!({"segments": segments, "servers": servers, "sites": sites}));
    }
    let site_names: Vec<String> = sites.as_array().into_iter().flatten().map(|x| s(&x["name"])).collect();
    for x in sites.as_array().into_iter().flatten() {
        println!("site {}: live release {}", s(&x["name"]), s(&x["live_serial"]));
    }
    let mut rows = Vec::new();
    for seg in segments.as_array().into_iter().flatten() {
        let leader = seg["leader"].as_u64();
        for sv in servers.as_array().into_iter().flatten().filter(|sv| sv["segment"] == seg["name"]) {
            let live: Vec<String> = site_names
                .iter()
                .map(|n| format!("{n}={}", sv["live"].get(n).map_or("-".into(), s)))
                .collect();
            let role = if sv["id"].as_u64() == leader { "leader" } else { "member" };
            let state = if sv["online"].as_bool() == Some(true) { "online" } else { "offline" };
            rows.push(vec![
                s(&seg["name"]),
                s(&sv["id"]),
                s(&sv["name"]),
                role.into(),
                state.into(),
                live.join(" "),
            ]);
        }
    }
    table(&["segment", "server", "name", "role", "state", "live"], rows);
    Ok(())
}

async fn user(c: &AdminClient, json_out: bool, cmd: UserCmd) -> Result<()> {
    match cmd {
        UserCmd::Add { name } => {
            let password = match std::env::var("CMOVER_PASSWORD") {
                Ok(p) => p,
                Err(_) => {
                    if std::io::stdin().is_terminal() {
                        eprint!("password for {name} (then Enter, Ctrl-D): ");
                    }
                    let mut p = String::new();
                    std::io::stdin()
                        .read_to_string(&mut p)
                        .context("reading the password from standard input")?;
                    p.trim_end_matches(['\n', '\r']).to_owned()
                }
            };
            let v =
                call(c, "POST", "/api/v1/users", Some(json!({"name": name, "password": password}))).await?;
            if json_out {
                return print_value(true, &v);
            }
            println!("admin account {name} created");
        }
        UserCmd::List => {
            list(c, json_out, "/api/v1/users", &["user", "created"], |x| {
                vec![s(&x["name"]), local_v(&x["created_ms"])]
            })
            .await?;
        }
    }
    Ok(())
}
