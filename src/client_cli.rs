//! `cmover site|group|job|run|checkpoint|segment|status|user …`: a client of
//! the CCM's REST API (`--ccm URL`, `--token T`, or `CMOVER_CCM`,
//! `CMOVER_TOKEN`). Reads print tables, or the API's JSON with `--json`.

use std::io::{IsTerminal, Read};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use serde_json::{json, Value};

use cmover::http::admin_client::{AdminClient, AdminError};
use cmover::storage::records::{RunRecord, RunState};

/// Where the CCM is and how to authenticate.
#[derive(Args, Clone)]
pub struct Remote {
    /// The CCM's base URL.
    #[arg(long, global = true, env = "CMOVER_CCM", default_value = "http://127.0.0.1:7480")]
    pub ccm: String,
    /// The admin token (`ccm.admin_token`).
    #[arg(long, global = true, env = "CMOVER_TOKEN", default_value = "", hide_env_values = true)]
    pub token: String,
    /// Print the API's JSON instead of a table.
    #[arg(long, global = true)]
    pub json: bool,
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
    List,
    /// Show one job.
    Show {
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
}

/// Runs `cmd` against the CCM in `remote`.
pub fn run(remote: &Remote, cmd: ClientCmd) -> Result<()> {
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
    let mut width: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in &rows {
        for (i, c) in r.iter().enumerate() {
            width[i] = width[i].max(c.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let text: Vec<String> =
            cells.iter().enumerate().map(|(i, c)| format!("{c:<w$}", w = width[i])).collect();
        println!("{}", text.join("  ").trim_end());
    };
    line(header.iter().map(|h| h.to_uppercase()).collect());
    for r in rows {
        line(r);
    }
}

fn s(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        v => v.to_string(),
    }
}

fn when(ms: &Value) -> String {
    match ms.as_u64() {
        Some(ms) => {
            humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + Duration::from_millis(ms)).to_string()
        }
        None => "-".into(),
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
            println!("content group {name} of site {site} created: servers {servers:?}, quorum {q}");
        }
        GroupCmd::List => {
            list(c, json_out, "/api/v1/groups", &["group", "site", "servers", "quorum"], |x| {
                vec![s(&x["name"]), s(&x["site"]), s(&x["servers"]), s(&x["quorum"])]
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
        JobCmd::List => {
            list(
                c,
                json_out,
                "/api/v1/jobs",
                &["id", "name", "kind", "site", "group", "schedule", "next run", "runs"],
                |x| {
                    vec![
                        s(&x["id"]),
                        s(&x["name"]),
                        s(&x["kind"]),
                        s(&x["site"]),
                        s(&x["group"]),
                        s(&x["schedule"]["type"]),
                        when(&x["next_run_ms"]),
                        x["runs"].as_array().map_or(0, Vec::len).to_string(),
                    ]
                },
            )
            .await?;
        }
        JobCmd::Show { id } => {
            print_value(json_out, &call(c, "GET", &format!("/api/v1/jobs/{id}"), None).await?)?
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
        when(&x["started_ms"]),
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
            if !json_out {
                if let Ok(rec) = serde_json::from_value::<RunRecord>(v.clone()) {
                    use cmover::protocol::ids::join as ids;
                    println!(
                        "run {} of job {} ({}): {:?}, release {} of {}\n  targets: {}\n  went live on: {}\n  failed: {}",
                        rec.id,
                        rec.job,
                        rec.kind.name(),
                        rec.state,
                        rec.serial,
                        rec.site,
                        ids(&rec.targets),
                        ids(&rec.went_live()),
                        ids(&rec.failed_servers)
                    );
                }
            }
            print_value(json_out, &v)?
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
                let total = r.applied.len().max(r.switched.len()).max(r.segments.len());
                let done = match r.state {
                    RunState::Committing | RunState::Aborting => r.switched.len(),
                    _ if r.state.is_final() => r.switched.len().max(r.applied.len()),
                    _ => r.applied.len(),
                };
                bar.set_length(total as u64);
                bar.set_position(done as u64);
                let bytes = r.summary.as_ref().map_or(0, |s| s.assignment_bytes);
                bar.set_message(format!("{:?}, {}", r.state, bytesize::ByteSize::b(bytes)));
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
        let ok =
            rec.switched.values().filter(|o| **o == cmover::protocol::api::ServerOutcome::Succeeded).count();
        let bytes = rec.summary.as_ref().map_or(0, |s| s.assignment_bytes);
        println!(
            "run {} of job {} ({}): {:?}, release {} of {}, {} servers switched, {} sent; failed servers: {:?}",
            rec.id,
            rec.job,
            rec.kind.name(),
            rec.state,
            rec.serial,
            rec.site,
            ok,
            bytesize::ByteSize::b(bytes),
            rec.failed_servers.iter().map(|s| s.0).collect::<Vec<_>>()
        );
    }
    match rec.state {
        RunState::Committed | RunState::Unchanged => Ok(()),
        state => bail!("run {} ended {:?}: {}", rec.id, state, rec.error.unwrap_or_default()),
    }
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
                    when(&x["created_ms"]),
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
        vec![s(&x["name"]), s(&x["leader"]), s(&x["leader_http"]), members.join(","), when(&x["updated_ms"])]
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
                vec![s(&x["name"]), when(&x["created_ms"])]
            })
            .await?;
        }
    }
    Ok(())
}
