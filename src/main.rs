//! The `cmover` command line. Parsing and dispatch only: the work is in the library.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};

use cmover::config::{Config, LogFormat};
use cmover::logging::{self, LogTarget};

#[derive(Parser)]
#[command(
    name = "cmover",
    version,
    about = "Content Mover: publish web content to many servers, atomically"
)]
struct Cli {
    /// Configuration file (TOML); defaults apply without one.
    #[arg(long, global = true, env = "CMOVER_CONFIG")]
    config: Option<PathBuf>,
    /// Log format (overrides log.format).
    #[arg(long, global = true, value_enum)]
    log_format: Option<LogFormat>,
    /// Log filter (overrides RUST_LOG and log.level), e.g. `debug`.
    #[arg(long, global = true)]
    log_level: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Configuration tools.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Write a new random key (hex) for content encryption or the cluster secret.
    Keygen {
        /// Where to write it (created with mode 0600).
        #[arg(short, long)]
        output: PathBuf,
    },
    /// Deterministic simulations of the protocols.
    Sim {
        #[command(subcommand)]
        command: SimCommand,
    },
}

#[derive(Subcommand)]
enum SimCommand {
    /// Reliable multicast (MCTP) of one assignment to N members over a lossy simulated LAN.
    Mctp(SimMctpArgs),
}

#[derive(clap::Args)]
struct SimMctpArgs {
    /// Members of the segment.
    #[arg(long, default_value_t = 32)]
    receivers: usize,
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
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn load_config(path: Option<&PathBuf>) -> Result<Config> {
    Ok(match path {
        Some(p) => Config::load(p)?,
        None => Config::default(),
    })
}

fn run(cli: Cli) -> Result<()> {
    if let Command::Config(ConfigCommand::Check { file }) = &cli.command {
        Config::load(file)?;
        println!("{}: ok", file.display());
        return Ok(());
    }
    let config = load_config(cli.config.as_ref())?;
    let format = cli.log_format.unwrap_or(config.log.format);
    logging::init(
        format,
        cli.log_level.as_deref(),
        &config.log.level,
        LogTarget::Stderr,
    )
    .map_err(anyhow::Error::msg)?;
    match cli.command {
        Command::Config(_) => unreachable!("handled above"),
        Command::Keygen { output } => keygen(&output),
        Command::Sim {
            command: SimCommand::Mctp(args),
        } => sim_mctp(&config, &args),
    }
}

fn sim_mctp(config: &Config, args: &SimMctpArgs) -> Result<()> {
    use cmover::sim::mctp::{run, SimConfig};
    anyhow::ensure!(
        (0.0..=0.9).contains(&args.loss),
        "--loss {} is outside 0.0 ..= 0.9",
        args.loss
    );
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
        println!(
            "report_datagrams_per_receiver: {:.3}",
            s.report_datagrams_per_receiver
        );
        println!("virtual_ms: {}", s.virtual_ms);
    }
    Ok(())
}

fn keygen(output: &PathBuf) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut key = [0u8; 32];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut key)
        .map_err(|_| anyhow::anyhow!("the system random generator failed"))?;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(output)
        .with_context(|| {
            format!(
                "cannot create key file {} (it must not exist yet)",
                output.display()
            )
        })?;
    writeln!(f, "{}", hex::encode(key))?;
    println!("wrote a new 256-bit key to {}", output.display());
    Ok(())
}
