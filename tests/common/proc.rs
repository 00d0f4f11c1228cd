//! Child processes of a test (the `cmover` binary, HAProxy, nginx,
//! ChromeDriver): one guard that kills and reaps its child however the
//! test ends, and prints the tail of the child's logs when it fails.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, ExitStatus, Stdio};
use std::sync::mpsc::Sender;
use std::time::{Duration, Instant};

use crate::common::wait::block_until;

/// The `cmover` binary under test.
pub fn cmover_bin() -> &'static str {
    env!("CARGO_BIN_EXE_cmover")
}

/// Sends SIGTERM to a child process.
pub fn sigterm(c: &Child) {
    let pid = nix::unistd::Pid::from_raw(c.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
}

/// A child process, killed (and reaped) when dropped. If the test is
/// failing then, the last lines of its log files are printed.
pub struct Proc {
    pub name: String,
    pub child: Child,
    logs: Vec<PathBuf>,
}

impl Proc {
    /// Starts `cmd` as it is set up.
    pub fn spawn(name: impl Into<String>, cmd: &mut Command) -> Proc {
        let name = name.into();
        let child = cmd.spawn().unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        Proc { name, child, logs: Vec::new() }
    }

    /// Starts `cmd` with no input and its stdout and stderr to `log`.
    pub fn logged(name: impl Into<String>, cmd: &mut Command, log: &Path) -> Proc {
        let out = std::fs::File::create(log).unwrap();
        cmd.stdin(Stdio::null()).stdout(out.try_clone().unwrap()).stderr(out);
        Proc::spawn(name, cmd).with_logs(&[log])
    }

    /// Starts `cmd` with no input, its stdout to `log` and its stderr to
    /// `log` with the extension `err`.
    pub fn logged_apart(name: impl Into<String>, cmd: &mut Command, log: &Path) -> Proc {
        let err = log.with_extension("err");
        cmd.stdin(Stdio::null())
            .stdout(std::fs::File::create(log).unwrap())
            .stderr(std::fs::File::create(&err).unwrap());
        Proc::spawn(name, cmd).with_logs(&[log, &err])
    }

    /// Prints the tails of `logs` if the test fails while this runs.
    pub fn with_logs(mut self, logs: &[&Path]) -> Proc {
        self.logs.extend(logs.iter().map(|l| l.to_path_buf()));
        self
    }

    /// Its standard output (piped by the command).
    pub fn take_stdout(&mut self) -> ChildStdout {
        self.child.stdout.take().expect("stdout is piped")
    }

    /// Sends it SIGTERM.
    pub fn sigterm(&self) {
        sigterm(&self.child)
    }

    /// Waits until it exits, failing after `deadline` measured from `start`.
    pub fn wait_exit(&mut self, start: Instant, deadline: Duration) -> ExitStatus {
        let (name, child) = (&self.name, &mut self.child);
        block_until(format!("{name} to exit"), start, deadline, Duration::from_millis(20), || {
            child.try_wait().unwrap()
        })
    }

    /// Panics with its logs if it exited.
    pub fn assert_running(&mut self) {
        if let Ok(Some(status)) = self.child.try_wait() {
            let logs: Vec<String> =
                self.logs.iter().map(|l| std::fs::read_to_string(l).unwrap_or_default()).collect();
            panic!("{} exited ({status}):\n{}", self.name, logs.join("\n"));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            for log in &self.logs {
                let text = std::fs::read_to_string(log).unwrap_or_default();
                let tail: Vec<&str> = text.lines().rev().take(30).collect();
                eprintln!(
                    "--- {} {} (last lines, newest first) ---\n{}",
                    self.name,
                    log.display(),
                    tail.join("\n")
                );
            }
        }
    }
}

/// Sends each line `out` writes to `tx`, as `wrap(line)`, from a thread
/// of its own, until `out` closes or the receiver is gone.
pub fn forward_lines<M: Send + 'static>(
    out: impl Read + Send + 'static,
    tx: Sender<M>,
    wrap: impl Fn(String) -> M + Send + 'static,
) {
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send(wrap(line)).is_err() {
                break;
            }
        }
    });
}

/// `cmover demo` with two segments of two agents in `dir`, its admin API on
/// any 127.0.0.1 port, stdin piped; answers it and its output lines.
pub fn start_demo(dir: &Path) -> (Proc, std::sync::mpsc::Receiver<String>) {
    let mut cmd = Command::new(cmover_bin());
    // Its log (pretty, for people) goes to a file beside its directory.
    let log = std::fs::OpenOptions::new().create(true).append(true).open(demo_log(dir)).unwrap();
    cmd.args(["demo", "--segments", "2", "--agents-per-segment", "2", "--http", "127.0.0.1:0", "--dir"])
        .arg(dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(log);
    let mut demo = Proc::spawn("the demo", &mut cmd);
    let (tx, rx) = std::sync::mpsc::channel();
    forward_lines(demo.take_stdout(), tx, |line| line);
    (demo, rx)
}

/// Where [`start_demo`] writes the demo's log.
pub fn demo_log(dir: &Path) -> std::path::PathBuf {
    let name = dir.file_name().and_then(|n| n.to_str()).unwrap_or("demo");
    dir.with_file_name(format!("{name}.log"))
}

/// Agent `id`: `cmd agent --config CONFIG --log-format json`, where `cmd`
/// runs `cmover` (directly, or inside a namespace). Its log lines go to
/// `tx` tagged with `id`; its stderr is the test's.
pub fn spawn_agent(mut cmd: Command, id: u64, config: &Path, tx: &Sender<(u64, String)>) -> Proc {
    cmd.arg("agent")
        .arg("--config")
        .arg(config)
        .args(["--log-format", "json"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    let mut agent = Proc::spawn(format!("agent {id}"), &mut cmd);
    forward_lines(agent.take_stdout(), tx.clone(), move |line| (id, line));
    agent
}
