//! Goodput of MCTP's unicast fan-out to 8 receivers on loopback against a
//! plain TCP fan-out of the same bytes in the same run, and against a TCP
//! fan-out that does the checks MCTP members must do (`TCP+chk`: AES-256-GCM
//! sealed chunks, SHA-256 of the whole at every receiver; see [`tcp_run`]),
//! and the peak heap of the receiving side as the assignment grows.
//!
//! `cargo bench --bench mctp_fanout` (environment: `MCTP_BENCH_SIZES` in MB,
//! default `20,200`; `MCTP_BENCH_FRAMES`, default `1403,8972,65000`;
//! `MCTP_BENCH_RUNS`, default 3; `MCTP_BENCH_DIR`, default /dev/shm when it
//! exists, so the disk does not dominate). Goodput is assignment bytes per
//! second until every receiver holds a verified (MCTP) or complete (TCP)
//! copy. Peak heap counts every allocation of the process during a run
//! (leader, 8 receivers, buffers), so flat numbers across sizes mean nothing
//! is buffered per byte of assignment. (A receiver that got frames out of
//! order reads the rest back through a fixed 256 KiB buffer to check the
//! hash: up to 2 MiB for 8 receivers at once, whatever the size.) Both sides
//! write files and fsync them.
//!
//! Frame sizes: 1403 is the default (`[mctp] frame_size`), one frame per
//! 1500-byte Ethernet MTU. 8972 fills a 9000-byte jumbo frame. 65000 is the
//! largest that fits loopback's 64 KiB MTU unfragmented: the loopback row,
//! not what a 1500-MTU LAN can carry. Every datagram is sealed
//! (AES-256-GCM, see `protocol::wire`) whatever its size, and every receiver
//! checks the SHA-256 of the whole assignment.
//!
//! Loopback settings of the leader: a high initial rate, reports within
//! 20 ms, one announce and 10 ms before the first frame
//! (`announce_interval`, default 100 ms: the time members get to answer
//! "complete"; on loopback they answer in microseconds).
//! `MCTP_BENCH_ANNOUNCE_MS` and `MCTP_BENCH_BURST_MS` override it and the
//! token bucket's depth.
//!
//! Fairness: writing to pages the kernel has to fetch afresh (on the
//! project's VMs, ≈ 200 MB/s) costs several times more than writing to pages
//! just freed (≈ 1.5 GB/s). Run back to back, the second transfer of a pair
//! would reuse the pages the first one freed. So before each timed transfer,
//! MCTP and TCP alike, the bench writes and deletes as many bytes as the
//! transfer will store (`RECEIVERS × size`), untimed: both then write into
//! recently freed pages. `MCTP_BENCH_ONLY=mctp` (or `tcp`) runs one side
//! only, for profiling; `MCTP_BENCH_PERF_CTL` see [`perf_control`];
//! `MCTP_BENCH_LOG=info` prints the actors' events.
//!
//! Columns: goodput (median MB/s), `ratio` of the medians, `pairs` the
//! median of the ratios of each MCTP run to the TCP run right after it
//! (same load on a shared machine), the same two against `TCP+chk`, median
//! passes, the median CPU seconds the process spent in a run (all threads,
//! user + system: what the transfer costs, whatever else the machine does)
//! for MCTP, TCP and `TCP+chk`, and the median peak heap (plain TCP's for
//! TCP). When both sides saturate the CPUs, goodput follows CPU seconds:
//! MCTP's floor is a SHA-256 pass (the assignment's hash) and an AES-GCM
//! pass (opening the datagrams) over every byte at every receiver, which
//! TCP does not do.

// The peak-heap measurement wraps the system allocator (a `GlobalAlloc`).
#![allow(unsafe_code)]

mod common;

use common::median;

use std::alloc::{GlobalAlloc, Layout, System as SystemAlloc};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use actix::prelude::*;
use tokio::sync::mpsc;

#[path = "../tests/common/mctp_cluster.rs"]
mod cluster;
use cluster::write_random_file;

use cmover::actors::multicast_receiver::{AssignmentReceived, MulticastReceiver};
use cmover::actors::multicast_sender::{AssignmentSent, MulticastSender, SendAssignment};
use cmover::net::data_channel::{DataChannel, DataChannelConfig, DataMode};
use cmover::protocol::crypto::{ContentKey, Sha256};
use cmover::protocol::ids::{AssignmentSerial, NodeId};
use cmover::protocol::mctp::{ReceiverConfig, SenderConfig};
use cmover::protocol::reports::CollectorConfig;

struct Counting;

static CURRENT: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { SystemAlloc.alloc(layout) };
        if !p.is_null() {
            let now = CURRENT.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
            PEAK.fetch_max(now, Ordering::Relaxed);
        }
        p
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { SystemAlloc.dealloc(ptr, layout) };
        CURRENT.fetch_sub(layout.size(), Ordering::Relaxed);
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = unsafe { SystemAlloc.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            if new_size > layout.size() {
                let now =
                    CURRENT.fetch_add(new_size - layout.size(), Ordering::Relaxed) + new_size - layout.size();
                PEAK.fetch_max(now, Ordering::Relaxed);
            } else {
                CURRENT.fetch_sub(layout.size() - new_size, Ordering::Relaxed);
            }
        }
        p
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// CPU time of the whole process so far (user + system, all threads), from
/// `/proc/self/stat`: with other work on the machine, CPU seconds per run
/// say more about cost than wall time does.
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name, which is in parentheses.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    // The line's fields 14 and 15 (utime, stime) in clock ticks; the first
    // field after the name is the third of the line.
    let field =
        |n: usize| rest.split_whitespace().nth(n - 3).and_then(|x| x.parse::<f64>().ok()).unwrap_or(0.0);
    let ticks = field(14) + field(15);
    ticks / 100.0
}

/// Tells a `perf record --control fifo:CTL -D -1` started around the bench
/// to sample only the timed part of the MCTP runs (`MCTP_BENCH_PERF_CTL`
/// names the fifo), so that set-up does not blur the profile.
fn perf_control(cmd: &str) {
    if let Some(path) = std::env::var_os("MCTP_BENCH_PERF_CTL") {
        if let Ok(mut f) = std::fs::OpenOptions::new().write(true).open(path) {
            let _ = writeln!(f, "{cmd}");
        }
    }
}

/// Resets the peak; returns the baseline.
fn reset_peak() -> usize {
    let now = CURRENT.load(Ordering::Relaxed);
    PEAK.store(now, Ordering::Relaxed);
    now
}

const SECRET: &[u8] = b"bench secret, not for production";
const RECEIVERS: usize = 8;

fn env_list(name: &str, default: &str) -> Vec<u64> {
    std::env::var(name)
        .unwrap_or_else(|_| default.into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect()
}

fn env_ms(name: &str, default: u64) -> Duration {
    Duration::from_millis(env_list(name, "").first().copied().unwrap_or(default))
}

/// One MCTP fan-out: the leader on the system's thread, each receiver on
/// its own arbiter (thread), as if on its own server.
fn mctp_run(
    source: &Path,
    hash: [u8; 32],
    dir: &Path,
    frame_size: u32,
    threads: bool,
) -> (Duration, usize, u32, f64) {
    let sys = System::new();
    sys.block_on(async move {
        let (rtx, mut rrx) = mpsc::unbounded_channel::<AssignmentReceived>();
        let received_to = cluster::Sink(rtx).start().recipient();
        let mut arbiters = Vec::new();
        let mut peers = Vec::new();
        for i in 0..RECEIVERS {
            let node = NodeId(i as u64 + 1);
            let rdir = dir.join(format!("r{i}"));
            std::fs::create_dir_all(&rdir).unwrap();
            let arb = if threads { Some(Arbiter::new()) } else { None };
            let (tx, rx) = std::sync::mpsc::channel();
            let to = received_to.clone();
            let start = move || {
                let (channel, incoming) = DataChannel::open(DataChannelConfig {
                    node,
                    secret: SECRET.to_vec(),
                    bind: "127.0.0.1:0".parse().unwrap(),
                    mode: DataMode::Unicast,
                    peers: Vec::new(),
                    drop_rate: 0.0,
                    drop_seed: 0,
                })
                .unwrap();
                tx.send(channel.local_addr().unwrap()).unwrap();
                MulticastReceiver::new(
                    ReceiverConfig { report_window: Duration::from_millis(20), ..ReceiverConfig::default() },
                    CollectorConfig::default(),
                    i as u64,
                    channel,
                    incoming,
                    rdir,
                    Some(to),
                )
                .start();
            };
            match &arb {
                Some(a) => {
                    a.spawn_fn(start);
                }
                None => start(),
            }
            let addr: SocketAddr = rx.recv().unwrap();
            peers.push((node, addr));
            arbiters.extend(arb);
        }
        let (channel, incoming) = DataChannel::open(DataChannelConfig {
            node: NodeId(100),
            secret: SECRET.to_vec(),
            bind: "127.0.0.1:0".parse().unwrap(),
            mode: DataMode::Unicast,
            peers: peers.clone(),
            drop_rate: 0.0,
            drop_seed: 0,
        })
        .unwrap();
        let (stx, mut srx) = mpsc::unbounded_channel::<AssignmentSent>();
        let leader = MulticastSender::new(
            SenderConfig {
                frame_size,
                rate: 400_000_000,
                rate_min: 10_000_000,
                rate_max: 2_000_000_000,
                rate_increase: 100_000_000,
                announce_count: 1,
                announce_interval: env_ms("MCTP_BENCH_ANNOUNCE_MS", 10),
                burst: env_ms("MCTP_BENCH_BURST_MS", 2),
                report_window: Duration::from_millis(20),
                report_grace: Duration::from_millis(30),
                ..SenderConfig::default()
            },
            1,
            channel,
            incoming,
            Some(cluster::Sink(stx).start().recipient()),
            None,
        )
        .start();
        // Let every actor start before the clock runs.
        tokio::time::sleep(Duration::from_millis(50)).await;
        let base = reset_peak();
        let cpu0 = cpu_seconds();
        perf_control("enable");
        let t0 = Instant::now();
        leader
            .send(SendAssignment {
                assignment: AssignmentSerial(1),
                path: source.to_path_buf(),
                hash,
                targets: peers.iter().map(|(n, _)| *n).collect(),
                progress: None,
            })
            .await
            .unwrap()
            .unwrap();
        for _ in 0..RECEIVERS {
            let r = rrx.recv().await.unwrap();
            assert!(r.result.is_ok(), "{:?}", r.result);
        }
        let elapsed = t0.elapsed();
        perf_control("disable");
        let cpu = cpu_seconds() - cpu0;
        let peak = PEAK.load(Ordering::Relaxed).saturating_sub(base);
        let outcome = srx.recv().await.unwrap().outcome;
        assert!(outcome.completed, "{outcome:?}");
        for a in arbiters {
            a.stop();
            let _ = a.join();
        }
        (elapsed, peak, outcome.passes, cpu)
    })
}

/// What a TCP receiver checks besides receiving.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Checks {
    Plain,
    Hash,
    Full,
}

/// One TCP fan-out: a sending thread per connection, a receiving thread
/// per receiver, each writing its file and fsyncing it.
///
/// [`Checks::Full`] makes TCP do the work the issue asks of every MCTP member
/// on top of the transport: the stream goes as AES-256-GCM sealed chunks of
/// 64 KiB, each sealed once for all eight connections (as the leader seals a
/// frame once) and opened by every receiver, and every receiver computes the
/// SHA-256 of what it wrote and compares it with `hash`. [`Checks::Hash`]
/// (`MCTP_BENCH_TCP_CHECKS=hash`) keeps only the SHA-256: what the hash alone
/// costs. Plain TCP does
/// neither, so the two TCP rows bracket the transport: MCTP against TCP
/// doing the same checks says how good the transport is; against plain TCP,
/// what the checks cost on a machine where the leader and all eight members
/// share two cores.
fn tcp_run(source: &Path, size: u64, hash: [u8; 32], dir: &Path, checks: Checks) -> (Duration, usize, f64) {
    let (seal, checked) = (checks == Checks::Full, checks != Checks::Plain);
    const CHUNK: u64 = 64 * 1024;
    let listeners: Vec<TcpListener> =
        (0..RECEIVERS).map(|_| TcpListener::bind("127.0.0.1:0").unwrap()).collect();
    let addrs: Vec<SocketAddr> = listeners.iter().map(|l| l.local_addr().unwrap()).collect();
    let cipher = Arc::new(ContentKey::from_secret(SECRET).unwrap().cipher(&[7u8; 32]));
    let sealed: Arc<Vec<OnceLock<Vec<u8>>>> =
        Arc::new((0..size.div_ceil(CHUNK)).map(|_| OnceLock::new()).collect());
    let base = reset_peak();
    let cpu0 = cpu_seconds();
    let t0 = Instant::now();
    let receivers: Vec<_> = listeners
        .into_iter()
        .enumerate()
        .map(|(i, l)| {
            let path = dir.join(format!("tcp{i}"));
            let cipher = cipher.clone();
            std::thread::spawn(move || {
                let (mut s, _) = l.accept().unwrap();
                let mut f = std::fs::File::create(&path).unwrap();
                let mut buf = vec![0u8; 256 * 1024];
                let mut got = 0u64;
                if checked {
                    let mut hasher = Sha256::default();
                    while got < size {
                        let mut len = [0u8; 4];
                        s.read_exact(&mut len).unwrap();
                        let len = u32::from_le_bytes(len) as usize;
                        assert!(len <= CHUNK as usize + 16, "chunk of {len} bytes");
                        s.read_exact(&mut buf[..len]).unwrap();
                        let plain = if seal {
                            cipher.open(got, b"tcp", &mut buf[..len]).unwrap()
                        } else {
                            &mut buf[..len]
                        };
                        hasher.update(plain);
                        f.write_all(plain).unwrap();
                        got += plain.len() as u64;
                    }
                    assert_eq!(hasher.finish(), hash, "receiver {i}: SHA-256 mismatch");
                } else {
                    loop {
                        let n = s.read(&mut buf).unwrap();
                        if n == 0 {
                            break;
                        }
                        f.write_all(&buf[..n]).unwrap();
                        got += n as u64;
                    }
                }
                f.sync_all().unwrap();
                assert_eq!(got, size);
            })
        })
        .collect();
    let senders: Vec<_> = addrs
        .into_iter()
        .map(|a| {
            let src = source.to_path_buf();
            let (cipher, sealed) = (cipher.clone(), sealed.clone());
            std::thread::spawn(move || {
                let f = std::fs::File::open(src).unwrap();
                let mut s = TcpStream::connect(a).unwrap();
                let mut buf = vec![0u8; 256 * 1024];
                let mut off = 0u64;
                while off < size {
                    if checked {
                        let n = (size - off).min(CHUNK) as usize;
                        // Whichever connection needs a chunk first seals it for all.
                        let chunk = sealed[(off / CHUNK) as usize].get_or_init(|| {
                            let mut c = vec![0u8; n];
                            f.read_exact_at(&mut c, off).unwrap();
                            if seal {
                                cipher.seal(off, b"tcp", &mut c);
                            }
                            let mut framed = (c.len() as u32).to_le_bytes().to_vec();
                            framed.extend_from_slice(&c);
                            framed
                        });
                        s.write_all(chunk).unwrap();
                        off += n as u64;
                    } else {
                        let n = (size - off).min(buf.len() as u64) as usize;
                        f.read_exact_at(&mut buf[..n], off).unwrap();
                        s.write_all(&buf[..n]).unwrap();
                        off += n as u64;
                    }
                }
            })
        })
        .collect();
    for t in senders.into_iter().chain(receivers) {
        t.join().unwrap();
    }
    let elapsed = t0.elapsed();
    (elapsed, PEAK.load(Ordering::Relaxed).saturating_sub(base), cpu_seconds() - cpu0)
}

/// Writes and deletes `bytes` in `dir` (untimed), so that the next timed
/// transfer writes into recently freed pages, whichever side it is.
fn warm_pages(dir: &Path, bytes: u64) {
    let path = dir.join("warm");
    let mut f = std::fs::File::create(&path).unwrap();
    let buf = vec![0x5au8; 1 << 20];
    let mut left = bytes;
    while left > 0 {
        let n = left.min(buf.len() as u64) as usize;
        f.write_all(&buf[..n]).unwrap();
        left -= n as u64;
    }
    drop(f);
    std::fs::remove_file(&path).unwrap();
}

fn main() {
    if let Ok(filter) = std::env::var("MCTP_BENCH_LOG") {
        // For looking into a run: e.g. MCTP_BENCH_LOG=info.
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .with_writer(std::io::stderr)
            .init();
    }
    // `cargo bench` passes --bench; `cargo test --benches` passes nothing useful.
    let sizes = env_list("MCTP_BENCH_SIZES", "20,200");
    let frames = env_list("MCTP_BENCH_FRAMES", "1403,8972,65000");
    let runs = env_list("MCTP_BENCH_RUNS", "3").first().copied().unwrap_or(3).max(1);
    // Receivers on their own threads (as on their own servers), or all on one.
    let threads = std::env::var("MCTP_BENCH_THREADS").map_or(true, |v| v != "1");
    let only = std::env::var("MCTP_BENCH_ONLY").unwrap_or_default();
    let (do_mctp, do_tcp) = (only != "tcp", only != "mctp");
    let tcp_checks = match std::env::var("MCTP_BENCH_TCP_CHECKS").as_deref() {
        Ok("hash") => Checks::Hash,
        _ => Checks::Full,
    };
    let root: PathBuf = std::env::var_os("MCTP_BENCH_DIR").map(PathBuf::from).unwrap_or_else(|| {
        let shm = PathBuf::from("/dev/shm");
        if shm.is_dir() {
            shm
        } else {
            std::env::temp_dir()
        }
    });
    println!(
        "MCTP unicast fan-out vs TCP fan-out, {RECEIVERS} receivers on loopback, median of {runs} runs, files in {}",
        root.display()
    );
    println!(
        "{:>10} {:>6} {:>10} {:>10} {:>6} {:>6} {:>10} {:>6} {:>6} {:>7} {:>7} {:>7} {:>7} {:>14} {:>14}",
        "bytes",
        "frame",
        "MCTP MB/s",
        "TCP MB/s",
        "ratio",
        "pairs",
        "TCP+chk",
        "ratio",
        "pairs",
        "passes",
        "MCTP s",
        "TCP s",
        "chk s",
        "MCTP peak",
        "TCP peak"
    );
    for mb in sizes {
        let size = mb * 1_000_000;
        for &frame in &frames {
            let (mut m, mut t, mut k) = (Vec::new(), Vec::new(), Vec::new());
            let (mut mh, mut th) = (Vec::new(), Vec::new());
            let mut passes = Vec::new();
            let (mut mc, mut tc, mut kc) = (Vec::new(), Vec::new(), Vec::new());
            let goodput = |d: Duration| size as f64 / d.as_secs_f64() / 1e6;
            for _ in 0..runs {
                let dir = tempfile::tempdir_in(&root).unwrap();
                let source = dir.path().join("source");
                let hash = write_random_file(&source, size, size);
                if do_mctp {
                    warm_pages(dir.path(), RECEIVERS as u64 * size);
                    let (d, heap, p, cpu) = mctp_run(&source, hash, dir.path(), frame as u32, threads);
                    m.push(goodput(d));
                    mc.push(cpu);
                    mh.push(heap as f64);
                    passes.push(f64::from(p));
                    for i in 0..RECEIVERS {
                        let _ = std::fs::remove_dir_all(dir.path().join(format!("r{i}")));
                    }
                }
                for (checks, goodputs, cpus) in
                    [(Checks::Plain, &mut t, &mut tc), (tcp_checks, &mut k, &mut kc)]
                {
                    if do_tcp {
                        warm_pages(dir.path(), RECEIVERS as u64 * size);
                        let (d, heap, cpu) = tcp_run(&source, size, hash, dir.path(), checks);
                        goodputs.push(goodput(d));
                        cpus.push(cpu);
                        if checks == Checks::Plain {
                            th.push(heap as f64);
                        }
                        for i in 0..RECEIVERS {
                            let _ = std::fs::remove_file(dir.path().join(format!("tcp{i}")));
                        }
                    }
                }
            }
            // Each MCTP run is paired with the TCP runs right after it, under
            // the same load: the median of the pairs' ratios.
            let pairs = |tcp: &[f64]| median(m.iter().zip(tcp).map(|(a, b)| a / b).collect());
            let (pt, pk) = (pairs(&t), pairs(&k));
            let (mm, tm, km) = (median(m), median(t), median(k));
            println!(
                "{:>10} {:>6} {:>10.1} {:>10.1} {:>6.2} {:>6.2} {:>10.1} {:>6.2} {:>6.2} {:>7} {:>7.2} {:>7.2} {:>7.2} {:>10.1} MiB {:>10.1} MiB",
                size,
                frame,
                mm,
                tm,
                mm / tm,
                pt,
                km,
                mm / km,
                pk,
                median(passes),
                median(mc),
                median(tc),
                median(kc),
                median(mh) / 1048576.0,
                median(th) / 1048576.0
            );
        }
    }
}
