//! Log set-up: `tracing` events as JSON lines (the default, for operators'
//! log shippers) or pretty lines for humans.
//!
//! The filter comes from, in order: the `--log-level` flag, `RUST_LOG`, the
//! config's `log.level`. Long-running processes log to stdout; one-shot tools
//! log to stderr so their own output on stdout stays clean.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

/// Where log lines go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogTarget {
    /// Standard output (services).
    Stdout,
    /// Standard error (command-line tools).
    Stderr,
}

/// Installs the global subscriber. `flag_level` is `--log-level`, if given;
/// `config_level` the config's `log.level`. Fails on a bad filter.
pub fn init(
    format: LogFormat,
    flag_level: Option<&str>,
    config_level: &str,
    target: LogTarget,
) -> Result<(), String> {
    let filter = match (flag_level, std::env::var("RUST_LOG").ok()) {
        (Some(level), _) => EnvFilter::try_new(level).map_err(|e| format!("--log-level {level:?}: {e}"))?,
        (None, Some(env)) => EnvFilter::try_new(&env).map_err(|e| format!("RUST_LOG={env:?}: {e}"))?,
        (None, None) => {
            EnvFilter::try_new(config_level).map_err(|e| format!("log.level {config_level:?}: {e}"))?
        }
    };
    // Colour codes only for a terminal, never into a file or a pipe.
    let ansi = match target {
        LogTarget::Stdout => std::io::stdout().is_terminal(),
        LogTarget::Stderr => std::io::stderr().is_terminal(),
    };
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_ansi(ansi);
    let result = match (format, target) {
        (LogFormat::Json, LogTarget::Stdout) => builder.json().with_writer(std::io::stdout).try_init(),
        (LogFormat::Json, LogTarget::Stderr) => builder.json().with_writer(std::io::stderr).try_init(),
        (LogFormat::Pretty, LogTarget::Stdout) => builder.with_writer(std::io::stdout).try_init(),
        (LogFormat::Pretty, LogTarget::Stderr) => builder.with_writer(std::io::stderr).try_init(),
    };
    result.map_err(|e| e.to_string())
}
