//! Real multicast: three `cmover agent` processes in multicast mode inside a
//! private network namespace that this test creates (and always deletes),
//! so nothing is sent outside it. They must elect one leader, known by all,
//! and the leader must see the two others register.
//!
//! Needs root (or CAP_NET_ADMIN) for `ip netns`. Without it the test is
//! skipped with a printed reason, except under `CI=true`, where it fails.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const DEADLINE: Duration = Duration::from_secs(60);

/// Deletes the namespace and kills the agents however the test ends.
struct Namespace {
    name: String,
    children: Vec<Child>,
}

impl Namespace {
    fn create(name: &str) -> Result<Namespace, String> {
        ip(&["netns", "add", name])?;
        let ns = Namespace { name: name.to_string(), children: Vec::new() };
        ns.exec(&["ip", "link", "set", "lo", "up"])?;
        ns.exec(&["ip", "link", "set", "lo", "multicast", "on"])?;
        Ok(ns)
    }

    fn exec(&self, args: &[&str]) -> Result<(), String> {
        let mut all = vec!["netns", "exec", &self.name];
        all.extend_from_slice(args);
        ip(&all)
    }

    fn spawn(&mut self, program: &Path, args: &[&str]) -> Result<&mut Child, String> {
        let child = Command::new("ip")
            .args(["netns", "exec", &self.name])
            .arg(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", program.display()))?;
        self.children.push(child);
        Ok(self.children.last_mut().unwrap())
    }
}

impl Drop for Namespace {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = ip(&["netns", "delete", &self.name]);
    }
}

fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip").args(args).output().map_err(|e| format!("cannot run `ip`: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!("`ip {}` failed: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim()))
    }
}

fn is_root() -> bool {
    Command::new("id").arg("-u").output().is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// Either runs, or explains why not: a skip outside CI, a failure under CI.
fn can_run() -> bool {
    if is_root() {
        return true;
    }
    let reason = "not root: `ip netns` needs root or CAP_NET_ADMIN";
    assert!(std::env::var("CI").as_deref() != Ok("true"), "CI=true: this test must run, but {reason}");
    println!("skipped: {reason}");
    false
}

fn write_config(dir: &Path, id: u64, secret: &Path, port: u16) -> PathBuf {
    let path = dir.join(format!("agent{id}.toml"));
    let text = format!(
        r#"[node]
id = {id}
name = "ns-agent-{id}"
[cluster]
secret_file = "{secret}"
[control]
mode = "multicast"
group = "239.192.70.9"
port = {port}
interface = "127.0.0.1"
[election]
la_interval = "100ms"
claim_delay_min = "10ms"
claim_delay_max = "100ms"
voting_window = "60ms"
preference = {pref}
[membership]
alive_interval = "200ms"
member_timeout = "2s"
list_delay = "300ms"
register_jitter = "100ms"
[agent]
data_dir = "{agent_dir}/data"
sites_root = "{agent_dir}/sites"
http_bind = "127.0.0.1:0"
[data]
group = "239.192.70.10"
interface = "127.0.0.1"
bind = "127.0.0.1:0"
"#,
        agent_dir = dir.join(format!("agent{id}")).display(),
        secret = secret.display(),
        pref = id * 10,
    );
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn fig5_three_agents_in_multicast_mode_elect_one_leader_in_a_network_namespace() {
    if !can_run() {
        return;
    }
    let bin = PathBuf::from(env!("CARGO_BIN_EXE_cmover"));
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("cluster.key");
    std::fs::write(&secret, format!("{}\n", "5a".repeat(32))).unwrap();

    let name = format!("cmover-elect-{}", std::process::id());
    let mut ns = Namespace::create(&name).unwrap_or_else(|e| panic!("{e}"));
    let (tx, rx) = mpsc::channel::<(u64, String)>();
    for id in 1..=3u64 {
        let config = write_config(dir.path(), id, &secret, 7400);
        let child = ns
            .spawn(&bin, &["agent", "--config", config.to_str().unwrap(), "--log-format", "json"])
            .unwrap_or_else(|e| panic!("{e}"));
        let out = child.stdout.take().unwrap();
        let tx = tx.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send((id, line)).is_err() {
                    break;
                }
            }
        });
    }

    // Each agent's leader, from its structured log events.
    let mut leader: [Option<u64>; 4] = [None; 4];
    let mut joined: Vec<u64> = Vec::new();
    let mut log = Vec::new();
    let start = Instant::now();
    loop {
        let agreed = leader[1].is_some() && leader[1] == leader[2] && leader[2] == leader[3];
        if agreed && joined.len() == 2 {
            break;
        }
        let left = DEADLINE.checked_sub(start.elapsed()).unwrap_or_default();
        let Ok((id, line)) = rx.recv_timeout(left) else {
            panic!(
                "no agreement within {DEADLINE:?}: leaders {leader:?}, joined {joined:?}\n{}",
                log.join("\n")
            );
        };
        log.push(format!("agent {id}: {line}"));
        let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) else {
            continue;
        };
        let f = &v["fields"];
        let num = |k: &str| f[k].as_str().and_then(|s| s.parse::<u64>().ok());
        match f["event"].as_str() {
            Some("leader_elected") => leader[id as usize] = num("leader"),
            Some("leader_lost") => leader[id as usize] = None,
            Some("member_joined") if Some(id) == leader[id as usize] => {
                if let Some(m) = num("member") {
                    if !joined.contains(&m) {
                        joined.push(m);
                    }
                }
            }
            _ => {}
        }
    }
    let l = leader[1].unwrap();
    assert!((1..=3).contains(&l), "leader {l} is not one of the agents");
    // The most preferred agent leads (no loss inside the namespace).
    assert_eq!(l, 3, "{}", log.join("\n"));
    joined.sort();
    assert_eq!(joined, [1, 2]);
    drop(ns);
    assert!(ip(&["netns", "exec", &name, "true"]).is_err(), "namespace {name} left behind");
}
