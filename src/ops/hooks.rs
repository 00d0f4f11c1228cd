//! Hooks on a server: a site's `pre_commit` and `post_commit` commands
//! (`[hooks]`), run by the content interpreter around a commit.
//!
//! `pre_commit` runs once a content assignment has built the new release
//! (in `incoming/`), before the server reports: if it fails, the release is
//! discarded and the server reports the failure, so the CCM leaves it out
//! of the commit like any server that failed. `post_commit` runs after
//! `live` switched; its failure is logged and counted, the release stays.
//!
//! A hook is `sh -c COMMAND` in its own process group, with `CMOVER_SITE`,
//! `CMOVER_SERIAL`, `CMOVER_RELEASE` and `CMOVER_HOOK` set, stdin closed; it
//! is killed (the whole group) when it runs past `hooks.timeout`. Blocking:
//! call it from a blocking task.

use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use thiserror::Error;

use super::config::HooksConfig;

/// Which hook.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hook {
    /// Before the server votes for the commit.
    PreCommit,
    /// After the release went live.
    PostCommit,
}

impl Hook {
    /// Its name (config key, metric label, `CMOVER_HOOK`).
    pub fn name(self) -> &'static str {
        match self {
            Hook::PreCommit => "pre_commit",
            Hook::PostCommit => "post_commit",
        }
    }
}

/// Why a hook failed.
#[derive(Debug, Error)]
pub enum HookError {
    /// It could not be started.
    #[error("{hook} hook of site {site} could not start: {error}")]
    Spawn {
        /// Which hook.
        hook: &'static str,
        /// The site.
        site: String,
        /// Why.
        error: std::io::Error,
    },
    /// It exited with a failure.
    #[error("{hook} hook of site {site} failed ({status}): {output}")]
    Failed {
        /// Which hook.
        hook: &'static str,
        /// The site.
        site: String,
        /// Exit status.
        status: String,
        /// The end of its output (stdout and stderr).
        output: String,
    },
    /// It ran too long and was killed.
    #[error("{hook} hook of site {site} ran longer than {timeout:?} and was killed")]
    TimedOut {
        /// Which hook.
        hook: &'static str,
        /// The site.
        site: String,
        /// The limit.
        timeout: Duration,
    },
}

/// Runs `hook` of `site` if one is configured (`Ok(false)` when none is).
pub fn run(
    config: &HooksConfig,
    hook: Hook,
    site: &str,
    serial: u64,
    release: &Path,
) -> Result<bool, HookError> {
    let Some(h) = config.sites.get(site) else { return Ok(false) };
    let command = match hook {
        Hook::PreCommit => &h.pre_commit,
        Hook::PostCommit => &h.post_commit,
    };
    if command.trim().is_empty() {
        return Ok(false);
    }
    let name = hook.name();
    let site_owned = site.to_owned();
    let spawn_err = |error| HookError::Spawn { hook: name, site: site_owned.clone(), error };
    let out = tempfile::tempfile().map_err(spawn_err)?;
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(command)
        .env("CMOVER_SITE", site)
        .env("CMOVER_SERIAL", serial.to_string())
        .env("CMOVER_RELEASE", release)
        .env("CMOVER_HOOK", name)
        .stdin(Stdio::null())
        .stdout(out.try_clone().map_err(spawn_err)?)
        .stderr(out.try_clone().map_err(spawn_err)?)
        .process_group(0)
        .spawn()
        .map_err(spawn_err)?;
    let started = Instant::now();
    let mut pause = Duration::from_millis(2);
    let status = loop {
        match child.try_wait().map_err(spawn_err)? {
            Some(status) => break status,
            None if started.elapsed() >= config.timeout => {
                // The whole group: `sh -c` may have started children.
                if let Ok(pid) = i32::try_from(child.id()) {
                    let _ =
                        nix::sys::signal::killpg(nix::unistd::Pid::from_raw(pid), nix::sys::signal::SIGKILL);
                }
                let _ = child.kill();
                let _ = child.wait();
                return Err(HookError::TimedOut { hook: name, site: site.into(), timeout: config.timeout });
            }
            None => {
                std::thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_millis(50));
            }
        }
    };
    if status.success() {
        return Ok(true);
    }
    let mut text = String::new();
    let mut out = out;
    let _ = std::io::Seek::rewind(&mut out);
    let _ = out.take(64 * 1024).read_to_string(&mut text);
    let tail: String = text.trim().chars().rev().take(500).collect::<Vec<_>>().into_iter().rev().collect();
    Err(HookError::Failed { hook: name, site: site.into(), status: status.to_string(), output: tail })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::config::SiteHooks;

    fn config(pre: &str, timeout: Duration) -> HooksConfig {
        let mut c = HooksConfig { timeout, ..HooksConfig::default() };
        c.sites.insert("www".into(), SiteHooks { pre_commit: pre.into(), post_commit: String::new() });
        c
    }

    #[test]
    fn a_hook_sees_its_environment_and_its_failure_is_reported_with_its_output() {
        let dir = tempfile::tempdir().unwrap();
        let ok = config("test \"$CMOVER_SITE/$CMOVER_SERIAL/$CMOVER_HOOK\" = www/7/pre_commit && test -d \"$CMOVER_RELEASE\"", Duration::from_secs(30));
        assert!(run(&ok, Hook::PreCommit, "www", 7, dir.path()).unwrap());
        assert!(!run(&ok, Hook::PostCommit, "www", 7, dir.path()).unwrap(), "no post_commit configured");
        assert!(!run(&ok, Hook::PreCommit, "other", 7, dir.path()).unwrap(), "no hooks for that site");
        let bad = config("echo not today >&2; exit 3", Duration::from_secs(30));
        let err = run(&bad, Hook::PreCommit, "www", 7, dir.path()).unwrap_err().to_string();
        assert!(err.contains("pre_commit hook of site www failed") && err.contains("not today"), "{err}");
    }

    #[test]
    fn a_hook_past_its_timeout_is_killed() {
        let dir = tempfile::tempdir().unwrap();
        let slow = config("sleep 30", Duration::from_millis(200));
        let started = Instant::now();
        let err = run(&slow, Hook::PreCommit, "www", 1, dir.path()).unwrap_err();
        assert!(matches!(err, HookError::TimedOut { .. }), "{err}");
        assert!(started.elapsed() < Duration::from_secs(20), "killed, not waited for");
    }
}
