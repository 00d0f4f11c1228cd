//! A fake CCM for the agent tests: a small actix-web app implementing the
//! CCM's side of the node API (`segment`, `next-hop`, `report`,
//! `assignments/{id}`) behind the `Signed` extractor, recording what the
//! agents send and answering next hops from a queue the test fills. It can
//! serve a damaged copy of an assignment once, to test the agents' hash
//! check.

#![allow(dead_code)]

use std::collections::{HashMap, HashSet, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};

use cmover::http::files::serve_assignment;
use cmover::http::signed::{NodeAuth, Signed};
use cmover::protocol::api::{
    AssignmentRef, HopTarget, NextHop, NextHopRequest, SegmentReport, SegmentResult,
};
use cmover::protocol::crypto::ContentKey;
use cmover::protocol::ids::{AssignmentId, AssignmentSerial, JobId, NodeId};
use cmover::protocol::paths::SiteName;
use cmover::storage::assignment_file::assignment_path;
use cmover::storage::assignment_file::hash_copy;
use cmover::storage::pack::{pack, PackOptions};
use cmover::storage::tree::TreeFilter;

use crate::common::wait::wait_for_sync;

/// Generous: the machine running the tests may be busy with other builds.
pub const DEADLINE: Duration = Duration::from_secs(60);

/// What the fake CCM has seen and will answer.
#[derive(Default)]
pub struct CcmState {
    /// Where its assignments are (`<id>.cma`).
    pub dir: PathBuf,
    /// The last report of each segment.
    pub segments: HashMap<String, SegmentReport>,
    /// Every segment result, in arrival order.
    pub results: Vec<SegmentResult>,
    /// Next hops to hand out per assignment, in order; then none.
    pub hops: HashMap<AssignmentId, VecDeque<HopTarget>>,
    /// Who asked for a next hop, per assignment.
    pub asked: HashMap<AssignmentId, Vec<NodeId>>,
    /// Assignments to serve damaged on the next GET.
    pub tamper_once: HashSet<AssignmentId>,
    /// GETs per assignment.
    pub gets: HashMap<AssignmentId, u32>,
}

type Ccm = web::Data<Arc<Mutex<CcmState>>>;

async fn segment(signed: Signed, ccm: Ccm) -> HttpResponse {
    let r: SegmentReport = signed.json().unwrap();
    ccm.lock().unwrap().segments.insert(r.segment.clone(), r);
    HttpResponse::Ok().finish()
}

async fn next_hop(signed: Signed, ccm: Ccm) -> HttpResponse {
    let r: NextHopRequest = signed.json().unwrap();
    let mut s = ccm.lock().unwrap();
    s.asked.entry(r.assignment).or_default().push(signed.node);
    let target = s.hops.get_mut(&r.assignment).and_then(|q| q.pop_front());
    HttpResponse::Ok().json(NextHop { target })
}

async fn report(signed: Signed, ccm: Ccm) -> HttpResponse {
    let r: SegmentResult = signed.json().unwrap();
    ccm.lock().unwrap().results.push(r);
    HttpResponse::Ok().finish()
}

async fn assignment(
    _signed: Signed,
    id: web::Path<AssignmentId>,
    req: HttpRequest,
    ccm: Ccm,
) -> HttpResponse {
    let id = id.into_inner();
    let (dir, tamper) = {
        let mut s = ccm.lock().unwrap();
        *s.gets.entry(id).or_default() += 1;
        (s.dir.clone(), s.tamper_once.remove(&id))
    };
    if tamper {
        let mut bytes = std::fs::read(assignment_path(&dir, id)).unwrap();
        let n = bytes.len();
        bytes[n - 1] ^= 0x55;
        return HttpResponse::Ok().body(bytes);
    }
    serve_assignment(&dir, id, &req).await
}

/// A running fake CCM.
pub struct FakeCcm {
    /// Its base URL.
    pub url: String,
    state: Arc<Mutex<CcmState>>,
    handle: actix_web::dev::ServerHandle,
}

impl FakeCcm {
    /// Serves on 127.0.0.1 (any port), checking signatures with `secret`,
    /// with assignments in `dir`.
    pub async fn start(secret: &[u8], dir: &Path) -> FakeCcm {
        std::fs::create_dir_all(dir).unwrap();
        let state = Arc::new(Mutex::new(CcmState { dir: dir.to_owned(), ..CcmState::default() }));
        let auth = web::Data::new(NodeAuth::from_secret(
            secret,
            cmover::protocol::api::CCM_NODE,
            Duration::from_secs(30),
        ));
        let data = web::Data::new(state.clone());
        let server = HttpServer::new(move || {
            App::new()
                .app_data(auth.clone())
                .app_data(data.clone())
                .route("/node/v1/segment", web::post().to(segment))
                .route("/node/v1/next-hop", web::post().to(next_hop))
                .route("/node/v1/report", web::post().to(report))
                .route("/node/v1/assignments/{id}", web::get().to(assignment))
        })
        .workers(1)
        .disable_signals()
        .bind("127.0.0.1:0")
        .unwrap();
        let url = format!("http://{}", server.addrs()[0]);
        let server = server.run();
        let handle = server.handle();
        actix_rt::spawn(server);
        FakeCcm { url, state, handle }
    }

    /// What it has seen.
    pub fn state(&self) -> MutexGuard<'_, CcmState> {
        self.state.lock().unwrap()
    }

    /// Waits until `probe` finds what it looks for in the state.
    pub async fn wait_for<T>(&self, what: &str, mut probe: impl FnMut(&CcmState) -> Option<T>) -> T {
        wait_for_sync(what, DEADLINE, || probe(&self.state())).await
    }

    /// Waits for `n` results of assignment `id`.
    pub async fn results_of(&self, id: u64, n: usize) -> Vec<SegmentResult> {
        self.wait_for(&format!("{n} results of assignment {id}"), |s| {
            let r: Vec<SegmentResult> =
                s.results.iter().filter(|r| r.assignment == AssignmentId(id)).cloned().collect();
            (r.len() >= n).then_some(r)
        })
        .await
    }

    /// The reference of assignment `id` in its directory.
    pub fn aref(&self, id: u64, site: &str, kind: &str, serial: u64) -> AssignmentRef {
        let (size, hash) = hash_copy(&assignment_path(&self.state().dir, AssignmentId(id))).unwrap();
        let kind = serde_json::from_value(serde_json::Value::from(kind))
            .expect("content, commit, abort or rollback");
        AssignmentRef {
            id: AssignmentId(id),
            site: site.into(),
            serial,
            kind,
            size,
            sha256: hex::encode(hash),
        }
    }

    /// Packs `tree` as a full release `serial` of `site`, encrypted with the
    /// cluster's content key, into assignment `id`.
    pub fn pack(&self, secret: &[u8], tree: &Path, site: &str, serial: u64, id: u64) {
        let empty = self.state().dir.join("empty");
        std::fs::create_dir_all(&empty).unwrap();
        self.pack_delta(secret, &empty, tree, site, serial, 0, id);
    }

    /// Packs the change from `old` (release `base`; 0 with an empty `old`)
    /// to `new` as release `serial` of `site`, encrypted, into assignment `id`.
    #[allow(clippy::too_many_arguments)]
    pub fn pack_delta(
        &self,
        secret: &[u8],
        old: &Path,
        new: &Path,
        site: &str,
        serial: u64,
        base: u64,
        id: u64,
    ) {
        let dir = self.state().dir.clone();
        let opts = PackOptions {
            site: SiteName::new(site).unwrap(),
            serial: AssignmentSerial(serial),
            base_serial: AssignmentSerial(base),
            job_id: JobId(1),
            created_ms: 0,
            filter: TreeFilter::default(),
            incompressible: Default::default(),
            compression: Default::default(),
            min_compression_gain: 0.05,
            encrypt: Some((ContentKey::from_secret(secret).unwrap(), [7; 32])),
        };
        pack(old, new, &assignment_path(&dir, AssignmentId(id)), &opts).unwrap();
    }

    /// Writes a header-only assignment `id` of `kind` for release `serial` of `site`.
    pub fn control(&self, kind: cmover::protocol::assignment::Kind, site: &str, serial: u64, id: u64) {
        use cmover::protocol::assignment::{encode_control, Header};
        let header =
            Header::control(kind, SiteName::new(site).unwrap(), AssignmentSerial(serial), JobId(1), 0);
        std::fs::write(assignment_path(&self.state().dir, AssignmentId(id)), encode_control(&header))
            .unwrap();
    }

    /// Stops the server.
    pub async fn stop(self) {
        self.handle.stop(false).await;
    }
}
