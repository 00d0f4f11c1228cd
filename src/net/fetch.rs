//! Fetching an assignment file from its holder (the CCM or a group leader)
//! over signed node HTTP: streamed to disk, resumed with `Range` after a
//! broken transfer, SHA-256 checked against the [`AssignmentRef`], fetched
//! again when the copy is wrong. The serving end is
//! [`crate::http::files::serve_assignment`].
//!
//! A download in progress is `<copy>.part` beside the copy and is renamed
//! into place only once its hash is right, so a partial or wrong file is
//! never served or applied.

use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use actix_web::http::header;
use actix_web::http::StatusCode;
use futures_util::StreamExt;
use thiserror::Error;
use tokio::io::{AsyncSeekExt, AsyncWriteExt};

use super::client::NodeClient;
use crate::http::files::assignment_url_path;
use crate::protocol::api::AssignmentRef;
use crate::protocol::ids::AssignmentId;
use crate::storage::assignment_file::hash_copy;

/// How hard [`fetch_assignment`] tries.
#[derive(Debug, Clone)]
pub struct FetchOptions {
    /// A transfer that receives nothing for this long is broken.
    pub idle_timeout: Duration,
    /// Broken transfers resumed before giving up.
    pub retries: u32,
    /// Wrong-hash copies fetched again before giving up.
    pub hash_retries: u32,
    /// Pause before a resumed transfer (doubles each time, up to 10 s).
    pub retry_delay: Duration,
    /// Largest rate, bytes per second (a job's bandwidth limit).
    pub rate_limit: Option<u64>,
    /// Where to keep the bytes of the copy held so far (for progress reports).
    pub progress: Option<std::sync::Arc<std::sync::atomic::AtomicU64>>,
}

impl Default for FetchOptions {
    fn default() -> Self {
        FetchOptions {
            idle_timeout: Duration::from_secs(30),
            retries: 5,
            hash_retries: 3,
            retry_delay: Duration::from_millis(500),
            rate_limit: None,
            progress: None,
        }
    }
}

/// What a successful fetch took.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Fetched {
    /// Bytes received over the network (more than the file when resumed or refetched).
    pub bytes: u64,
    /// Transfers resumed with `Range` after a break.
    pub resumed: u32,
    /// Copies deleted for a wrong hash and fetched again.
    pub refetched: u32,
    /// Wall time, milliseconds.
    pub ms: u64,
}

/// Why a fetch failed. The partial copy is kept after a broken transfer
/// (the next fetch resumes it) and deleted after a wrong hash.
#[derive(Debug, Error)]
pub enum FetchError {
    /// The reference itself is unusable.
    #[error("assignment {id}: sha256 {sha256:?} is not 64 hex digits")]
    BadRef {
        /// The assignment.
        id: AssignmentId,
        /// What was given.
        sha256: String,
    },
    /// Every transfer attempt broke.
    #[error("assignment {id} from {url}: {attempts} transfers failed, the last: {last}")]
    Transfer {
        /// The assignment.
        id: AssignmentId,
        /// Where from.
        url: String,
        /// Attempts made.
        attempts: u32,
        /// The last error.
        last: String,
    },
    /// Every complete copy had the wrong hash.
    #[error(
        "assignment {id} from {url}: {attempts} copies had SHA-256 {actual} ({size} bytes), \
         expected {expected} ({expected_size} bytes); the holder's copy is damaged"
    )]
    HashMismatch {
        /// The assignment.
        id: AssignmentId,
        /// Where from.
        url: String,
        /// Copies fetched.
        attempts: u32,
        /// Expected hash (hex).
        expected: String,
        /// Hash of the last copy (hex).
        actual: String,
        /// Size of the last copy.
        size: u64,
        /// Expected size.
        expected_size: u64,
    },
    /// The local file system failed.
    #[error("assignment {id}: cannot {op} {path}: {source}")]
    Io {
        /// The assignment.
        id: AssignmentId,
        /// What was being done.
        op: &'static str,
        /// On what.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
}

fn part_path(dest: &Path) -> PathBuf {
    let mut name = dest.file_name().unwrap_or_default().to_os_string();
    name.push(".part");
    dest.with_file_name(name)
}

/// Fetches assignment `aref` from the holder at `from` (`http://host:port`)
/// into `dest`, verifying its SHA-256 and size. A broken transfer is
/// resumed with `Range` from what is already on disk (also across calls);
/// a complete copy with the wrong hash is deleted and fetched again.
pub async fn fetch_assignment(
    client: &NodeClient,
    from: &str,
    aref: &AssignmentRef,
    dest: &Path,
    opts: &FetchOptions,
) -> Result<Fetched, FetchError> {
    let id = aref.id;
    let expected: [u8; 32] = hex::decode(&aref.sha256)
        .ok()
        .and_then(|v| v.try_into().ok())
        .ok_or_else(|| FetchError::BadRef { id, sha256: aref.sha256.clone() })?;
    let io_err = |op: &'static str, path: &Path| {
        let path = path.to_owned();
        move |source| FetchError::Io { id, op, path, source }
    };
    let part = part_path(dest);
    let url = format!("{}{}", from.trim_end_matches('/'), assignment_url_path(id));
    let started = std::time::Instant::now();
    let mut fetched = Fetched::default();
    let (mut breaks, mut wrong) = (0u32, 0u32);
    loop {
        let have = match tokio::fs::metadata(&part).await {
            Ok(m) if m.len() <= aref.size => m.len(),
            Ok(_) => {
                tokio::fs::remove_file(&part).await.map_err(io_err("remove", &part))?;
                0
            }
            Err(_) => 0,
        };
        if have < aref.size || !part.exists() {
            if have > 0 {
                fetched.resumed += 1;
            }
            let got = transfer(client, from, id, &part, have, aref.size, opts).await.and_then(|n| {
                // A holder that closes early without saying so: resume too.
                let len = std::fs::metadata(&part).map_or(0, |m| m.len());
                if len < aref.size {
                    Err(Broken {
                        received: n,
                        error: format!("the transfer ended at {len} of {} bytes", aref.size),
                    })
                } else {
                    Ok(n)
                }
            });
            match got {
                Ok(n) => fetched.bytes += n,
                Err(Broken { received, error }) => {
                    fetched.bytes += received;
                    breaks += 1;
                    tracing::warn!(event = "fetch_broken", assignment = id.0, %url, received, attempt = breaks, %error);
                    if breaks > opts.retries {
                        return Err(FetchError::Transfer { id, url, attempts: breaks, last: error });
                    }
                    let pause = opts.retry_delay.saturating_mul(1 << (breaks - 1).min(5));
                    tokio::time::sleep(pause.min(Duration::from_secs(10))).await;
                    continue;
                }
            }
        }
        let check = part.clone();
        let (size, actual) = tokio::task::spawn_blocking(move || hash_copy(&check))
            .await
            .map_err(|e| io_err("hash", &part)(io::Error::other(e)))?
            .map_err(io_err("hash", &part))?;
        if size == aref.size && actual == expected {
            let f = std::fs::File::open(&part).map_err(io_err("open", &part))?;
            f.sync_all().map_err(io_err("flush", &part))?;
            std::fs::rename(&part, dest).map_err(io_err("rename into place", dest))?;
            fetched.ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
            return Ok(fetched);
        }
        wrong += 1;
        tracing::warn!(
            event = "fetch_hash_mismatch", assignment = id.0, %url, size, expected_size = aref.size,
            actual = %hex::encode(actual), attempt = wrong,
        );
        tokio::fs::remove_file(&part).await.map_err(io_err("remove", &part))?;
        if wrong > opts.hash_retries {
            return Err(FetchError::HashMismatch {
                id,
                url,
                attempts: wrong,
                expected: aref.sha256.clone(),
                actual: hex::encode(actual),
                size,
                expected_size: aref.size,
            });
        }
        fetched.refetched += 1;
    }
}

/// A transfer that broke, with what it had received.
struct Broken {
    received: u64,
    error: String,
}

/// One GET, appended to `part` from `have` (or written from 0 if the
/// holder ignores the range). Returns the bytes received.
/// Fetches assignment `id` from `from` into `part`, from byte `have` on.
/// Never writes past `size`, the length the reference announced: a holder
/// that sends more is cut off and the part deleted, so it cannot fill the
/// disk.
async fn transfer(
    client: &NodeClient,
    from: &str,
    id: AssignmentId,
    part: &Path,
    have: u64,
    size: u64,
    opts: &FetchOptions,
) -> Result<u64, Broken> {
    let idle = opts.idle_timeout;
    let broken = |received, error: String| Broken { received, error };
    let path = assignment_url_path(id);
    let mut req = client.request(awc::http::Method::GET, from, &path, b"").timeout(idle);
    if have > 0 {
        req = req.insert_header((header::RANGE, format!("bytes={have}-")));
    }
    let mut resp = req.send().await.map_err(|e| broken(0, e.to_string()))?;
    let offset = match resp.status() {
        StatusCode::OK => 0,
        StatusCode::PARTIAL_CONTENT => {
            let starts_at = resp
                .headers()
                .get(header::CONTENT_RANGE)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("bytes "))
                .and_then(|v| v.split('-').next())
                .and_then(|v| v.parse::<u64>().ok());
            if starts_at != Some(have) {
                // Not what was asked: start over.
                let _ = tokio::fs::remove_file(part).await;
                return Err(broken(0, format!("206 for another range ({starts_at:?}, asked {have})")));
            }
            have
        }
        StatusCode::RANGE_NOT_SATISFIABLE => {
            let _ = tokio::fs::remove_file(part).await;
            return Err(broken(0, "416: the holder's copy is shorter than the part held".into()));
        }
        s => {
            let body = resp.body().limit(4096).await.unwrap_or_default();
            return Err(broken(0, format!("HTTP {s}: {}", String::from_utf8_lossy(&body))));
        }
    };
    let announced = resp
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let too_long = |n: u64| {
        format!("the holder sends more than the {size} bytes the assignment has ({n} from byte {offset})")
    };
    if let Some(n) = announced.filter(|n| offset.saturating_add(*n) > size) {
        let _ = tokio::fs::remove_file(part).await;
        return Err(broken(0, too_long(n)));
    }
    let mut file = tokio::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(false)
        .open(part)
        .await
        .map_err(|e| broken(0, format!("cannot open {}: {e}", part.display())))?;
    let setup = async {
        file.set_len(offset).await?;
        file.seek(io::SeekFrom::Start(offset)).await
    };
    setup.await.map_err(|e| broken(0, format!("cannot prepare {}: {e}", part.display())))?;
    let mut received = 0u64;
    let started = tokio::time::Instant::now();
    loop {
        let chunk = match tokio::time::timeout(idle, resp.next()).await {
            Err(_) => Err(format!("no data for {idle:?}")),
            Ok(None) => break,
            Ok(Some(Err(e))) => Err(e.to_string()),
            Ok(Some(Ok(chunk))) => Ok(chunk),
        };
        let chunk = match chunk {
            Ok(c) => c,
            Err(e) => {
                let _ = file.flush().await;
                return Err(broken(received, e));
            }
        };
        let total = received + chunk.len() as u64;
        if offset.saturating_add(total) > size {
            drop(file);
            let _ = tokio::fs::remove_file(part).await;
            return Err(broken(received, too_long(total)));
        }
        file.write_all(&chunk)
            .await
            .map_err(|e| broken(received, format!("cannot write {}: {e}", part.display())))?;
        received += chunk.len() as u64;
        if let Some(p) = &opts.progress {
            p.store(offset + received, std::sync::atomic::Ordering::Relaxed);
        }
        if let Some(rate) = opts.rate_limit.filter(|r| *r > 0) {
            // Bandwidth limit: never ahead of `rate` bytes per second.
            let due = Duration::from_secs_f64(received as f64 / rate as f64);
            let spent = started.elapsed();
            if due > spent {
                tokio::time::sleep(due - spent).await;
            }
        }
    }
    file.flush().await.map_err(|e| broken(received, format!("cannot write {}: {e}", part.display())))?;
    if let Some(expected) = announced.filter(|n| received < *n) {
        return Err(broken(received, format!("the connection closed after {received} of {expected} bytes")));
    }
    Ok(received)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::files::serve_assignment;
    use crate::http::signed::{NodeAuth, Signed};
    use crate::protocol::ids::NodeId;
    use crate::storage::assignment_file::assignment_path;
    use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
    use bytes::Bytes;
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::Arc;

    const SECRET: &[u8] = b"cluster secret for the file tests";

    /// What the test server does with each GET, by request number.
    #[derive(Clone, Copy, PartialEq)]
    enum Serve {
        /// Serve properly.
        Good,
        /// Send the first `n` bytes of the answer, then cut the connection.
        CutAfter(usize),
        /// Serve a copy with one byte flipped.
        Tampered,
        /// Stream ten times the copy's length, without a length.
        Endless,
    }

    struct Holder {
        dir: PathBuf,
        plan: Vec<Serve>,
        calls: AtomicU32,
        ranges: std::sync::Mutex<Vec<Option<String>>>,
    }

    async fn get(
        _signed: Signed,
        path: web::Path<AssignmentId>,
        req: HttpRequest,
        holder: web::Data<Arc<Holder>>,
    ) -> HttpResponse {
        let n = holder.calls.fetch_add(1, Ordering::SeqCst) as usize;
        let range = req.headers().get(header::RANGE).and_then(|v| v.to_str().ok()).map(str::to_owned);
        holder.ranges.lock().unwrap().push(range);
        match holder.plan.get(n).copied().unwrap_or(Serve::Good) {
            Serve::Good => serve_assignment(&holder.dir, *path, &req).await,
            Serve::Tampered => {
                let mut bytes = std::fs::read(assignment_path(&holder.dir, *path)).unwrap();
                bytes[7] ^= 1;
                HttpResponse::Ok().body(bytes)
            }
            Serve::Endless => {
                let bytes = Bytes::from(std::fs::read(assignment_path(&holder.dir, *path)).unwrap());
                let stream =
                    futures_util::stream::iter((0..10).map(move |_| Ok::<Bytes, io::Error>(bytes.clone())));
                HttpResponse::Ok().streaming(stream)
            }
            Serve::CutAfter(cut) => {
                let bytes = std::fs::read(assignment_path(&holder.dir, *path)).unwrap();
                let len = bytes.len() as u64;
                let head = Bytes::copy_from_slice(&bytes[..cut]);
                let stream = futures_util::stream::iter(vec![
                    Ok::<Bytes, io::Error>(head),
                    Err(io::Error::new(io::ErrorKind::ConnectionReset, "cut")),
                ]);
                HttpResponse::Ok().no_chunking(len).streaming(stream)
            }
        }
    }

    async fn start_holder(holder: Arc<Holder>) -> (String, actix_web::dev::ServerHandle) {
        let auth = web::Data::new(NodeAuth::from_secret(SECRET, NodeId(0), Duration::from_secs(30)));
        let data = web::Data::new(holder);
        let server = HttpServer::new(move || {
            App::new()
                .app_data(auth.clone())
                .app_data(data.clone())
                .route("/node/v1/assignments/{id}", web::get().to(get))
        })
        .workers(1)
        .bind("127.0.0.1:0")
        .unwrap();
        let addr = server.addrs()[0];
        let server = server.run();
        let handle = server.handle();
        actix_rt::spawn(server);
        (format!("http://{addr}"), handle)
    }

    fn setup(plan: Vec<Serve>, size: usize) -> (tempfile::TempDir, Arc<Holder>, AssignmentRef) {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src");
        std::fs::create_dir_all(&src).unwrap();
        let bytes: Vec<u8> = (0..size).map(|i| (i * 7 % 251) as u8).collect();
        std::fs::write(assignment_path(&src, AssignmentId(42)), &bytes).unwrap();
        let aref = AssignmentRef {
            id: AssignmentId(42),
            site: "www".into(),
            serial: 1,
            kind: crate::protocol::assignment::Kind::Content,
            size: size as u64,
            sha256: hex::encode(crate::protocol::crypto::sha256(&bytes)),
        };
        let holder =
            Arc::new(Holder { dir: src, plan, calls: AtomicU32::new(0), ranges: Default::default() });
        (dir, holder, aref)
    }

    fn opts() -> FetchOptions {
        FetchOptions {
            idle_timeout: Duration::from_secs(20),
            retries: 3,
            hash_retries: 2,
            retry_delay: Duration::from_millis(10),
            rate_limit: None,
            progress: None,
        }
    }

    #[actix_web::test]
    async fn a_cut_transfer_resumes_with_range() {
        let size = 300_000;
        let (dir, holder, aref) = setup(vec![Serve::CutAfter(100_000)], size);
        let (url, server) = start_holder(holder.clone()).await;
        let client = NodeClient::new(SECRET, NodeId(5), Duration::from_secs(20));
        let dest = assignment_path(dir.path(), AssignmentId(42));
        let got = fetch_assignment(&client, &url, &aref, &dest, &opts()).await.unwrap();
        assert_eq!(got.resumed, 1, "{got:?}");
        assert_eq!(got.refetched, 0);
        assert_eq!(got.bytes, size as u64, "the resumed transfer fetched only the rest: {got:?}");
        assert_eq!(
            std::fs::read(&dest).unwrap(),
            std::fs::read(assignment_path(&holder.dir, AssignmentId(42))).unwrap()
        );
        let ranges = holder.ranges.lock().unwrap().clone();
        assert_eq!(ranges, vec![None, Some("bytes=100000-".to_string())]);
        assert!(!part_path(&dest).exists());
        server.stop(false).await;
    }

    #[actix_web::test]
    async fn a_tampered_copy_is_deleted_and_fetched_again() {
        let (dir, holder, aref) = setup(vec![Serve::Tampered], 50_000);
        let (url, server) = start_holder(holder.clone()).await;
        let client = NodeClient::new(SECRET, NodeId(5), Duration::from_secs(20));
        let dest = assignment_path(dir.path(), AssignmentId(42));
        let got = fetch_assignment(&client, &url, &aref, &dest, &opts()).await.unwrap();
        assert_eq!(got.refetched, 1, "{got:?}");
        assert_eq!(holder.calls.load(Ordering::SeqCst), 2);
        assert_eq!(
            std::fs::read(&dest).unwrap(),
            std::fs::read(assignment_path(&holder.dir, AssignmentId(42))).unwrap()
        );

        // A holder that always serves a damaged copy: a bounded number of tries, then the error.
        let (dir2, holder2, aref2) = setup(vec![Serve::Tampered; 10], 50_000);
        let (url2, server2) = start_holder(holder2.clone()).await;
        let dest2 = assignment_path(dir2.path(), AssignmentId(42));
        let err = fetch_assignment(&client, &url2, &aref2, &dest2, &opts()).await.unwrap_err();
        assert!(matches!(err, FetchError::HashMismatch { attempts: 3, .. }), "{err}");
        assert_eq!(holder2.calls.load(Ordering::SeqCst), 3);
        assert!(!dest2.exists() && !part_path(&dest2).exists());
        server.stop(false).await;
        server2.stop(false).await;
    }

    #[actix_web::test]
    async fn a_holder_that_sends_too_much_is_cut_off_at_the_announced_size() {
        let (dir, holder, aref) = setup(vec![Serve::Endless; 10], 50_000);
        let (url, server) = start_holder(holder.clone()).await;
        let client = NodeClient::new(SECRET, NodeId(5), Duration::from_secs(20));
        let dest = assignment_path(dir.path(), AssignmentId(42));
        let err = fetch_assignment(&client, &url, &aref, &dest, &opts()).await.unwrap_err();
        assert!(err.to_string().contains("more than the 50000 bytes"), "{err}");
        assert!(matches!(err, FetchError::Transfer { attempts: 4, .. }), "{err}");
        assert!(!dest.exists() && !part_path(&dest).exists());
        // The same holder serving properly afterwards is fetched from.
        let (dir2, holder2, aref2) = setup(vec![Serve::Endless], 50_000);
        let (url2, server2) = start_holder(holder2.clone()).await;
        let dest2 = assignment_path(dir2.path(), AssignmentId(42));
        fetch_assignment(&client, &url2, &aref2, &dest2, &opts()).await.unwrap();
        assert_eq!(
            std::fs::read(&dest2).unwrap(),
            std::fs::read(assignment_path(&holder2.dir, AssignmentId(42))).unwrap()
        );
        server.stop(false).await;
        server2.stop(false).await;
    }

    #[actix_web::test]
    async fn unsigned_gets_are_refused_and_missing_copies_are_404() {
        let (dir, holder, mut aref) = setup(vec![], 1000);
        let (url, server) = start_holder(holder.clone()).await;
        let resp = awc::Client::new().get(format!("{url}/node/v1/assignments/42")).send().await.unwrap();
        assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
        let client = NodeClient::new(SECRET, NodeId(5), Duration::from_secs(20));
        aref.id = AssignmentId(43);
        let dest = assignment_path(dir.path(), AssignmentId(43));
        let err = fetch_assignment(&client, &url, &aref, &dest, &opts()).await.unwrap_err();
        assert!(err.to_string().contains("404"), "{err}");
        server.stop(false).await;
    }
}
