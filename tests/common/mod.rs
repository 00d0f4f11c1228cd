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

/// A `cmover demo` child process, killed (and reaped) when dropped.
#[allow(dead_code)]
pub struct Demo(pub std::process::Child);

impl Drop for Demo {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
