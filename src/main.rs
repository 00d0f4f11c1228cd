//! The `cmover` command line. Parsing and dispatch only: the work is in the library.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};

use cmover::config::{Config, LogFormat};
use cmover::logging::{self, LogTarget};

mod sim_cli;

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
    /// Run this server's agent (the elector on the control channel) until Ctrl-C.
    Agent,
    /// Deterministic simulations of the protocols, for tests and for sizing timers.
    #[command(subcommand)]
    Sim(SimCommand),
}

#[derive(Subcommand)]
enum SimCommand {
    /// Group-leader election and membership under loss, partitions and crashes.
    Election(sim_cli::ElectionArgs),
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
    let target = match cli.command {
        Command::Agent => LogTarget::Stdout,
        _ => LogTarget::Stderr,
    };
    logging::init(format, cli.log_level.as_deref(), &config.log.level, target)
        .map_err(anyhow::Error::msg)?;
    match cli.command {
        Command::Config(_) => unreachable!("handled above"),
        Command::Keygen { output } => keygen(&output),
        Command::Agent => {
            if cli.config.is_none() {
                anyhow::bail!(
                    "cmover agent needs a configuration: --config FILE (see config.example.toml)"
                );
            }
            cmover::agent::run(&config)
        }
        Command::Sim(SimCommand::Election(args)) => sim_cli::election(&args),
    }
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
