//! Addresses and networks for tests: free ports on 127.0.0.1, and private
//! network namespaces (created by the test, always deleted) for real
//! multicast. Nothing here sends anywhere but 127.0.0.1 or such a namespace.

#![allow(dead_code)]

use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::path::Path;
use std::process::Command;

/// A UDP port on 127.0.0.1 that was free a moment ago.
pub fn free_udp_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A TCP port on 127.0.0.1 that was free a moment ago.
pub fn free_tcp_port() -> u16 {
    local_listener().1.port()
}

/// A TCP listener on a free 127.0.0.1 port, and its address.
pub fn local_listener() -> (TcpListener, SocketAddr) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    (listener, addr)
}

/// Whether this process may create network namespaces (it is root).
pub fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .map(|s| s.lines().any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0")))
        .unwrap_or(false)
}

/// Either a namespace test may run, or it says why not: a skip outside CI,
/// a failure under `CI=true` (CI runs as root).
pub fn can_use_netns() -> bool {
    if is_root() {
        return true;
    }
    let reason = "not root: `ip netns` needs root or CAP_NET_ADMIN";
    assert!(std::env::var("CI").as_deref() != Ok("true"), "CI=true: this test must run, but {reason}");
    eprintln!("skipped: {reason}");
    false
}

/// Runs `program args`; its standard output, or what failed.
pub fn run(program: &str, args: &[&str]) -> Result<String, String> {
    let out = Command::new(program)
        .args(args)
        .output()
        .map_err(|e| format!("cannot run `{program}`: {e} (install iproute2 and nftables)"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!("`{program} {}` failed: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim()))
    }
}

/// A private network namespace with `lo` up, deleted when dropped (drop
/// the processes started in it first: declare their guards after this one).
pub struct Netns {
    pub name: String,
}

impl Netns {
    /// Creates namespace `name` and brings its loopback up.
    pub fn create(name: &str) -> Result<Netns, String> {
        run("ip", &["netns", "add", name])?;
        let ns = Netns { name: name.to_owned() };
        ns.exec(&["ip", "link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// Runs `args` inside the namespace; its standard output.
    pub fn exec(&self, args: &[&str]) -> Result<String, String> {
        let mut all = vec!["netns", "exec", &self.name];
        all.extend_from_slice(args);
        run("ip", &all)
    }

    /// A command that runs `program` inside the namespace.
    pub fn command(&self, program: impl AsRef<Path>) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name]).arg(program.as_ref());
        cmd
    }

    /// Whether the namespace still exists.
    pub fn exists(name: &str) -> bool {
        run("ip", &["netns", "exec", name, "true"]).is_ok()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = run("ip", &["netns", "delete", &self.name]);
    }
}
