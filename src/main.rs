//! The `cmover` command line. Parsing and dispatch only: the work is in the library.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};

use cmover::config::{Config, LogFormat};
use cmover::demo;
use cmover::logging::{self, LogTarget};
use cmover::offline::{self, DiffArgs};
use cmover::protocol::ids::AssignmentSerial;
use cmover::protocol::paths::SiteName;
use cmover::storage::assignment_file::AssignmentFile;
use cmover::storage::releases::{Outcome, SiteRoot};

mod client_cli;
mod sim_cli;

use client_cli::{
    CheckpointCmd, ClientCmd, Connection, EventsArgs, GroupCmd, JobCmd, Remote, RunCmd, SegmentCmd, SiteCmd,
    UserCmd,
};

/// A client command with the CCM to talk to.
#[derive(clap::Args)]
struct Client<C: Subcommand> {
    #[command(flatten)]
    remote: Remote,
    #[command(subcommand)]
    cmd: C,
}

#[derive(Parser)]
#[command(name = "cmover", version, about = "Content Mover: publish web content to many servers, atomically")]
struct Cli {
    /// Configuration file (TOML); defaults apply without one.
    #[arg(long, global = true, env = "CMOVER_CONFIG", help_heading = "Global options")]
    config: Option<PathBuf>,
    /// Log format (overrides log.format).
    #[arg(long, global = true, value_enum, help_heading = "Global options")]
    log_format: Option<LogFormat>,
    /// Log filter (overrides RUST_LOG and log.level), e.g. `debug`.
    #[arg(long, global = true, help_heading = "Global options")]
    log_level: Option<String>,
    #[command(flatten)]
    connection: Connection,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// A whole cluster on 127.0.0.1 (a CCM and agents in segments): publish the
    /// bundled sample site (or --staging), then publish again on every Enter.
    Demo {
        /// Directory for everything the demo writes (default: a new temporary directory, kept).
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Segments (LANs), each electing a group leader.
        #[arg(long, default_value_t = 2)]
        segments: usize,
        /// Agents (back-end servers) per segment.
        #[arg(long, default_value_t = 3)]
        agents_per_segment: usize,
        /// Address of the CCM's HTTP server (REST API); port 0 picks a free one.
        #[arg(long, default_value = "127.0.0.1:7480")]
        http: std::net::SocketAddr,
        /// Publish this directory instead of the bundled sample site.
        #[arg(long)]
        staging: Option<PathBuf>,
        /// Publish once, verify and exit, instead of waiting for more.
        #[arg(long)]
        once: bool,
        /// Without a network: diff, apply, verify and roll back the sample in one directory.
        #[arg(long, conflicts_with_all = ["segments", "agents_per_segment", "http", "staging", "once"])]
        offline: bool,
    },
    /// Build an assignment that turns OLD into NEW (a missing or empty OLD: everything is new).
    Diff {
        /// The old tree (what is live: the shadow copy).
        old: PathBuf,
        /// The new tree (staging).
        new: PathBuf,
        /// Where to write the assignment.
        #[arg(short, long)]
        output: PathBuf,
        /// Serial of the release it builds (default: 1 for an empty OLD, else 2).
        #[arg(long)]
        serial: Option<u64>,
        /// Serial of the release OLD is, for a delta (default: serial - 1).
        #[arg(long)]
        base_serial: Option<u64>,
        /// Job id recorded in the header.
        #[arg(long, default_value_t = 0)]
        job_id: u64,
        /// Site name recorded in the header (default: `default`).
        #[arg(long)]
        site: Option<String>,
        /// Encrypt the data with this key file (see `cmover keygen`).
        #[arg(long)]
        encrypt_key: Option<PathBuf>,
        /// Print the summary as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Apply an assignment to a site root (created if missing); content goes live unless --no-commit.
    Apply {
        /// The assignment.
        file: PathBuf,
        /// The site root (holding live, releases/, incoming/).
        #[arg(long)]
        site_root: PathBuf,
        /// Build the release in incoming/ but leave live as it is (then `cmover commit`).
        #[arg(long)]
        no_commit: bool,
        /// Key file to decrypt an encrypted assignment.
        #[arg(long)]
        decrypt_key: Option<PathBuf>,
    },
    /// Make a release applied with --no-commit live.
    Commit {
        /// The site root.
        #[arg(long)]
        site_root: PathBuf,
        /// The release.
        #[arg(long)]
        serial: u64,
    },
    /// Discard a release applied with --no-commit.
    Abort {
        /// The site root.
        #[arg(long)]
        site_root: PathBuf,
        /// The release.
        #[arg(long)]
        serial: u64,
    },
    /// Switch live back to the previous release.
    Rollback {
        /// The site root.
        #[arg(long)]
        site_root: PathBuf,
    },
    /// Verify an assignment and print its header and commands.
    Inspect {
        /// The assignment.
        file: PathBuf,
        /// Print JSON.
        #[arg(long)]
        json: bool,
        /// Key file, to check that it is the right key.
        #[arg(long)]
        decrypt_key: Option<PathBuf>,
    },
    /// Configuration tools.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Write a new random key (hex) for content encryption or the cluster secret.
    Keygen {
        /// Where to write it (created with mode 0600).
        #[arg(short, long)]
        output: PathBuf,
    },
    /// Run the controller (CCM): orchestrator, database, REST and node API, until Ctrl-C.
    Ccm,
    /// Run this server's agent until Ctrl-C or SIGTERM: elector, group-leader duties, multicast,
    /// content interpreter and node HTTP API (see [agent] and [data] in config.example.toml).
    Agent,
    /// Deterministic simulations of the protocols, for tests and for sizing timers.
    #[command(subcommand)]
    Sim(SimCommand),
    /// Sites on the CCM (REST client: --ccm, --token).
    Site(Client<SiteCmd>),
    /// Content groups on the CCM.
    Group(Client<GroupCmd>),
    /// Jobs: add, list, show, run [--wait], cancel, remove.
    Job(Box<Client<JobCmd>>),
    /// Runs: list, show, wait, cancel.
    Run(Client<RunCmd>),
    /// Checkpoints: add, list, show, restore.
    Checkpoint(Client<CheckpointCmd>),
    /// Segments and their group leaders.
    Segment(Client<SegmentCmd>),
    /// Admin accounts of the web UI.
    User(Client<UserCmd>),
    /// Segments, leaders, servers and their live release per site.
    Status {
        #[command(flatten)]
        remote: Remote,
    },
    /// The history: runs, changes of sites, groups and jobs, conflicts; newest first, local times.
    Events {
        #[command(flatten)]
        filter: EventsArgs,
        #[command(flatten)]
        remote: Remote,
    },
}

#[derive(Subcommand)]
enum SimCommand {
    /// Group-leader election and membership under loss, partitions and crashes.
    Election(sim_cli::ElectionArgs),
    /// Reliable multicast (MCTP) of one assignment to N members over a lossy simulated LAN.
    Mctp(SimMctpArgs),
    /// Whole runs of every job kind through the real run and distribution cores, with faults.
    Run(SimRunArgs),
}

#[derive(clap::Args)]
struct SimRunArgs {
    /// Segments (LANs).
    #[arg(long, default_value_t = 3)]
    segments: usize,
    /// Servers per segment.
    #[arg(long, default_value_t = 4)]
    servers_per_segment: usize,
    /// Runs to simulate (each in a fresh fleet, from its own seed).
    #[arg(long, default_value_t = 1000)]
    runs: u64,
    /// Faults each run may meet: `all`, `none`, or a list of loss, leader-crash,
    /// member-crash, ccm-restart, partition, late-reports, cancel.
    #[arg(long, default_value = "all")]
    faults: String,
    /// Seed of every random choice; the same seed gives the same runs.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Replay the one run of this run seed (as a failing run prints it).
    #[arg(long)]
    replay: Option<u64>,
    /// Print one JSON object instead of lines.
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args)]
struct SimMctpArgs {
    /// Members of the segment that the assignment is for.
    #[arg(long, default_value_t = 32)]
    receivers: usize,
    /// Further members of the segment that are not targets: they hear
    /// every datagram and must take no part (the run fails if one does).
    #[arg(long, default_value_t = 0)]
    bystanders: usize,
    /// Assignment size in bytes.
    #[arg(long, default_value_t = 4_000_000)]
    bytes: u64,
    /// Loss probability per datagram and member (0.0 ..= 0.9).
    #[arg(long, default_value_t = 0.05)]
    loss: f64,
    /// Bursty loss (Gilbert–Elliott) averaging --loss.
    #[arg(long)]
    burst: bool,
    /// Frame payload size in bytes (default: fills a 1500-byte MTU).
    #[arg(long)]
    frame_size: Option<u32>,
    /// Seed of every random choice; the same seed gives the same run.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Print one JSON object instead of lines.
    #[arg(long)]
    json: bool,
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Validate a configuration file; on error name the key, the problem and the fix.
    Check {
        /// The file.
        file: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", describe(&e));
            ExitCode::FAILURE
        }
    }
}

/// The error and its causes, each cause once: many messages already
/// include their source's text.
fn describe(e: &anyhow::Error) -> String {
    let mut text = e.to_string();
    for cause in e.chain().skip(1) {
        let c = cause.to_string();
        if !text.contains(&c) {
            text.push_str(": ");
            text.push_str(&c);
        }
    }
    text
}

fn load_config(path: Option<&PathBuf>) -> Result<Config> {
    Ok(match path {
        Some(p) => Config::load(p)?,
        None => Config::default(),
    })
}

fn run(mut cli: Cli) -> Result<()> {
    if let Command::Config(ConfigCommand::Check { file }) = &cli.command {
        Config::load(file)?.check_secret_files()?;
        println!("{}: ok", file.display());
        return Ok(());
    }
    let command = std::mem::replace(&mut cli.command, Command::Ccm);
    let client = match command {
        Command::Site(c) => Some((c.remote, ClientCmd::Site(c.cmd))),
        Command::Group(c) => Some((c.remote, ClientCmd::Group(c.cmd))),
        Command::Job(c) => Some((c.remote, ClientCmd::Job(c.cmd))),
        Command::Run(c) => Some((c.remote, ClientCmd::Run(c.cmd))),
        Command::Checkpoint(c) => Some((c.remote, ClientCmd::Checkpoint(c.cmd))),
        Command::Segment(c) => Some((c.remote, ClientCmd::Segment(c.cmd))),
        Command::User(c) => Some((c.remote, ClientCmd::User(c.cmd))),
        Command::Status { remote } => Some((remote, ClientCmd::Status)),
        Command::Events { filter, remote } => Some((remote, ClientCmd::Events(filter))),
        other => {
            cli.command = other;
            None
        }
    };
    if let Some((remote, cmd)) = client {
        logging::init(LogFormat::Pretty, cli.log_level.as_deref(), "warn", LogTarget::Stderr)
            .map_err(anyhow::Error::msg)?;
        return client_cli::run(&cli.connection.clone().with(remote), cmd);
    }
    let config = load_config(cli.config.as_ref())?;
    let demo = matches!(cli.command, Command::Demo { offline: false, .. });
    let format = cli.log_format.unwrap_or(if demo { LogFormat::Pretty } else { config.log.format });
    // Services log to stdout at the configured level; one-shot tools print
    // their own results on stdout and log only warnings, to stderr.
    let (target, level) = match cli.command {
        Command::Agent | Command::Ccm => (LogTarget::Stdout, config.log.level.as_str()),
        // The cluster demo shows the documented events: the election, the
        // tree hops, the multicast, the builds and the commit.
        Command::Demo { offline: false, .. } => (LogTarget::Stderr, "warn,cmover=info"),
        _ => (LogTarget::Stderr, "warn"),
    };
    logging::init(format, cli.log_level.as_deref(), level, target).map_err(anyhow::Error::msg)?;
    let key = |path: Option<PathBuf>| path.map(|p| offline::load_key(&p)).transpose();
    let site = |root: PathBuf| SiteRoot::new(root, offline::site_options(&config));
    match cli.command {
        Command::Config(_) => unreachable!("handled above"),
        Command::Keygen { output } => keygen(&output),
        Command::Agent => {
            if cli.config.is_none() {
                anyhow::bail!("cmover agent needs a configuration: --config FILE (see config.example.toml)");
            }
            Ok(cmover::agent::run(&config)?)
        }
        Command::Ccm => {
            if cli.config.is_none() {
                anyhow::bail!("cmover ccm needs a configuration: --config FILE (see config.example.toml)");
            }
            Ok(cmover::ccm::run(&config)?)
        }
        Command::Sim(SimCommand::Election(args)) => sim_cli::election(&args),
        Command::Demo { dir, segments, agents_per_segment, http, staging, once, offline } => {
            let dir = match dir {
                Some(d) => d,
                None => tempfile::Builder::new().prefix("cmover-demo-").tempdir()?.keep(),
            };
            if offline {
                demo::run(&dir, &config, &mut std::io::stdout().lock())?;
            } else {
                let opts =
                    demo::DemoOptions { dir, segments, per_segment: agents_per_segment, http, staging, once };
                demo::run_cluster(opts, &mut std::io::stdout())?;
            }
            Ok(())
        }
        Command::Diff { old, new, output, serial, base_serial, job_id, site, encrypt_key, json } => {
            let site = site.map(|s| SiteName::new(&s)).transpose().context("--site")?;
            let args = DiffArgs { site, serial, base_serial, job_id, key: key(encrypt_key)? };
            let summary = offline::diff(&old, &new, &output, args, &config)?;
            if json {
                println!("{}", serde_json::to_string(&summary)?);
            } else {
                println!("{summary}");
            }
            Ok(())
        }
        Command::Apply { file, site_root, no_commit, decrypt_key } => {
            let key = key(decrypt_key)?;
            let outcomes =
                offline::apply(&file, &site_root, !no_commit, key.as_ref(), offline::site_options(&config))?;
            for o in &outcomes {
                println!("{}", offline::describe(&site_root, o));
            }
            Ok(())
        }
        Command::Commit { site_root, serial } => {
            let pruned = site(site_root.clone()).commit(AssignmentSerial(serial))?;
            let outcome = Outcome::Committed { serial, pruned: pruned.into_iter().map(|s| s.0).collect() };
            println!("{}", offline::describe(&site_root, &outcome));
            Ok(())
        }
        Command::Abort { site_root, serial } => {
            site(site_root.clone()).abort(AssignmentSerial(serial))?;
            println!("{}", offline::describe(&site_root, &Outcome::Aborted { serial }));
            Ok(())
        }
        Command::Rollback { site_root } => {
            let (from, to) = site(site_root.clone()).rollback()?;
            println!("{}", offline::describe(&site_root, &Outcome::RolledBack { from: from.0, to: to.0 }));
            Ok(())
        }
        Command::Inspect { file, json, decrypt_key } => {
            let key = key(decrypt_key)?;
            let a = AssignmentFile::open(&file, key.as_ref())?;
            if json {
                offline::write_inspect_json(&a, std::io::stdout().lock())?;
            } else {
                print!("{}", offline::inspect_text(&a));
            }
            Ok(())
        }
        Command::Sim(SimCommand::Mctp(args)) => sim_mctp(&config, &args),
        Command::Sim(SimCommand::Run(args)) => sim_run(&args),
        Command::Site(_)
        | Command::Group(_)
        | Command::Job(_)
        | Command::Run(_)
        | Command::Checkpoint(_)
        | Command::Segment(_)
        | Command::User(_)
        | Command::Status { .. }
        | Command::Events { .. } => unreachable!("client commands are handled above"),
    }
}

fn sim_mctp(config: &Config, args: &SimMctpArgs) -> Result<()> {
    use cmover::sim::mctp::{run, SimConfig};
    anyhow::ensure!((0.0..=0.9).contains(&args.loss), "--loss {} is outside 0.0 ..= 0.9", args.loss);
    let mut sender = config.mctp.sender();
    if let Some(f) = args.frame_size {
        anyhow::ensure!(
            f > 0 && f as usize <= cmover::protocol::mctp::MAX_FRAME_SIZE,
            "--frame-size {f} is outside 1 ..= {}",
            cmover::protocol::mctp::MAX_FRAME_SIZE
        );
        sender.frame_size = f;
    }
    let cfg = SimConfig {
        receivers: args.receivers,
        bystanders: args.bystanders,
        bytes: args.bytes,
        loss: args.loss,
        burst: args.burst,
        seed: args.seed,
        sender,
        receiver: config.mctp.receiver(),
        collector: config.reports.collector(),
        collect_reports: false,
        ..SimConfig::default()
    };
    let result = run(&cfg)?;
    let s = &result.summary;
    if args.json {
        println!("{}", serde_json::to_string(s)?);
    } else {
        println!("receivers: {}", s.receivers);
        println!("completed: {}", s.completed);
        println!("passes: {}", s.passes);
        println!("frames_needed: {}", s.frames_needed);
        println!("frames_sent: {}", s.frames_sent);
        println!("transmission_ratio: {:.4}", s.transmission_ratio);
        println!("ideal_arq_ratio: {:.4}", s.ideal_arq_ratio);
        println!("report_datagrams_per_receiver: {:.3}", s.report_datagrams_per_receiver);
        println!("virtual_ms: {}", s.virtual_ms);
    }
    Ok(())
}

fn sim_run(args: &SimRunArgs) -> Result<()> {
    use cmover::sim::run::{run_many, Fault, RunSimConfig};
    anyhow::ensure!(
        (1..=100_000).contains(&args.segments),
        "--segments {} is outside 1 ..= 100000",
        args.segments
    );
    anyhow::ensure!(
        (1..=10_000).contains(&args.servers_per_segment),
        "--servers-per-segment {} is outside 1 ..= 10000",
        args.servers_per_segment
    );
    let faults = Fault::parse_list(&args.faults).map_err(|e| anyhow::anyhow!("--faults: {e}"))?;
    let cfg = RunSimConfig {
        segments: args.segments,
        servers_per_segment: args.servers_per_segment,
        faults,
        ..Default::default()
    };
    if let Some(seed) = args.replay {
        let o = cmover::sim::run::run_one(&cfg, seed);
        println!("{}", serde_json::to_string_pretty(&o)?);
        anyhow::ensure!(o.violations.total() == 0, "{} invariant violations", o.violations.total());
        return Ok(());
    }
    let s = run_many(&cfg, args.runs, args.seed);
    if args.json {
        println!("{}", serde_json::to_string(&s)?);
    } else {
        println!(
            "runs: {} (committed {}, not committed {}, refused at planning {})",
            s.runs, s.committed, s.not_committed, s.refused
        );
        let v = &s.violations;
        println!(
            "violations: only_targets {}, aborted_live {}, quorum {}, bound {}, hot_live {}",
            v.only_targets, v.aborted_live, v.quorum, v.bound, v.hot_live
        );
        println!("run_ms_p50: {}  run_ms_p99: {}", s.run_ms_p50, s.run_ms_p99);
        println!("datagrams_per_server: {:.2}", s.datagrams_per_server);
        if let Some(v) = &s.first_violation {
            println!("first violation: {v}");
            println!(
                "failing run seeds (replay one with `cmover sim run --replay SEED`): {:?}",
                s.failing_seeds
            );
        }
    }
    anyhow::ensure!(s.violations.total() == 0, "{} invariant violations", s.violations.total());
    Ok(())
}

fn keygen(output: &PathBuf) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut key = [0u8; 32];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut key)
        .map_err(|_| anyhow::anyhow!("the system random generator failed"))?;
    let mut f =
        std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(output).with_context(
            || format!("cannot create key file {} (it must not exist yet)", output.display()),
        )?;
    writeln!(f, "{}", hex::encode(key))?;
    println!("wrote a new 256-bit key to {}", output.display());
    Ok(())
}
