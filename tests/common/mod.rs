pub mod browser;
pub mod cluster;
pub mod mctp_cluster;
pub mod ops;

/// Sends SIGTERM to a child process.
#[allow(dead_code)]
pub fn sigterm(c: &std::process::Child) {
    let pid = nix::unistd::Pid::from_raw(c.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
}
