//! The controller process (`cmover ccm`): the database, the orchestrating
//! actors and the HTTP server, wired from the configuration.

use std::net::{SocketAddr, TcpListener};

use actix::prelude::*;
use actix_web::{web, App, HttpServer};
use thiserror::Error;

use crate::actors::ccm::{Ccm, NotifyRunsTo};
use crate::actors::scheduler::{Scheduler, StopScheduler};
use crate::agent::read_secret;
use crate::config::{Config, ConfigError};
use crate::http::ccm_api::{self, CcmState};
use crate::http::signed::NodeAuth;
use crate::storage::db::{Db, DbError};

/// Why the CCM could not start.
#[derive(Debug, Error)]
pub enum StartError {
    /// Bad configuration.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The database could not be opened.
    #[error(transparent)]
    Db(#[from] DbError),
    /// Signals could not be waited for.
    #[error("cannot wait for Ctrl-C or SIGTERM")]
    Signals(#[source] std::io::Error),
    /// The HTTP address could not be bound.
    #[error("cannot listen on {addr} (choose a free ccm.http_bind; for the demo, --http 127.0.0.1:0)")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
}

/// A running CCM.
pub struct CcmHandle {
    /// The orchestrator.
    pub ccm: Addr<Ccm>,
    /// The database.
    pub db: Db,
    /// The URL agents and clients reach it at.
    pub url: String,
    /// The HTTP server (stop it to shut down).
    pub server: actix_web::dev::ServerHandle,
    /// Bytes of assignment files served so far.
    pub egress: std::sync::Arc<std::sync::atomic::AtomicU64>,
    /// The scheduler.
    pub scheduler: Addr<Scheduler>,
}

impl CcmHandle {
    /// Stops the HTTP server and the orchestrator and flushes the database,
    /// as a process exit would; runs in flight are recovered by the next start.
    pub async fn stop(self) {
        self.server.stop(true).await;
        let _ = self.scheduler.send(StopScheduler).await;
        let _ = self.ccm.send(crate::actors::ccm::Shutdown).await;
        let _ = self.db.flush();
    }
}

/// Starts a CCM inside the current actix system. With `http_bind` port 0 a
/// free port is chosen and the advertised URL follows it.
pub async fn start(mut config: Config) -> Result<CcmHandle, StartError> {
    config.validate()?;
    let secret = read_secret(&config)?;
    let dir = &config.ccm.data_dir;
    std::fs::create_dir_all(dir).map_err(|e| ConfigError::Invalid {
        key: "ccm.data_dir".into(),
        problem: format!("cannot create {}: {e}", dir.display()),
        fix: "choose a directory the CCM may write".into(),
    })?;
    let db = Db::open(&dir.join("db"))?;
    // Every table is created now, so that later accesses cannot fail to open one.
    {
        use crate::storage::records::*;
        db.table::<SiteRecord>()?;
        db.table::<GroupRecord>()?;
        db.table::<SegmentRecord>()?;
        db.table::<ServerRecord>()?;
        db.table::<JobRecord>()?;
        db.table::<RunRecord>()?;
        db.table::<AssignmentRecord>()?;
        db.table::<SnapshotRecord>()?;
        db.table::<HistoryRecord>()?;
        db.table::<UserRecord>()?;
        db.table::<SessionRecord>()?;
        db.table::<SettingRecord>()?;
    }
    let addr = config.ccm.http_bind;
    let listener = TcpListener::bind(addr).map_err(|source| StartError::Bind { addr, source })?;
    let local = listener.local_addr().map_err(|source| StartError::Bind { addr, source })?;
    if config.ccm.advertise_url.is_empty() {
        config.ccm.advertise_url = format!("http://{local}");
    }
    let url = config.ccm.url();
    let auth = web::Data::new(NodeAuth::from_secret(&secret, config.ccm.max_clock_skew));
    crate::metrics::init();
    let observers = crate::ops::start_ccm_observers(&config, &db, &secret)?;
    let ccm = Ccm::new(config.clone(), db.clone(), secret).with_observers(observers).start();
    let scheduler = Scheduler::new(config.clone(), db.clone(), ccm.clone()).start();
    ccm.do_send(NotifyRunsTo(scheduler.clone().recipient(), scheduler.clone().recipient()));
    let state = web::Data::new(CcmState {
        ccm,
        db: db.clone(),
        admin_token: config.ccm.admin_token.clone(),
        egress: Default::default(),
        scheduler: scheduler.clone().recipient(),
        checkpoints: config.ccm.data_dir.join("checkpoints"),
        tree_order: config.ccm.tree_order.clone(),
        time_zone: crate::protocol::schedule::parse_time_zone(&config.ccm.time_zone)
            .unwrap_or(chrono_tz::UTC),
    });
    let egress = state.egress.clone();
    let ccm = state.ccm.clone();
    let refresh: crate::metrics::Refresh = {
        let (db, egress) = (db.clone(), egress.clone());
        std::sync::Arc::new(move || {
            crate::ops::job_gauges(&db);
            let sent = egress.load(std::sync::atomic::Ordering::Relaxed);
            metrics::counter!("cmover_ccm_egress_bytes_total", "node" => crate::metrics::CCM).absolute(sent);
        })
    };
    let server = HttpServer::new(move || {
        App::new()
            .app_data(auth.clone())
            .app_data(state.clone())
            .service(crate::metrics::resource_with(crate::metrics::CCM, Some(refresh.clone())))
            .configure(ccm_api::config)
    })
    .workers(2)
    .disable_signals()
    .listen(listener)
    .map_err(|source| StartError::Bind { addr, source })?
    .run();
    let handle = server.handle();
    actix::spawn(async move {
        if let Err(e) = server.await {
            tracing::error!(error = %e, "the CCM's HTTP server stopped");
        }
    });
    tracing::info!(event = "ccm_started", url = %url, data_dir = %config.ccm.data_dir.display());
    Ok(CcmHandle { ccm, db, url, server: handle, egress, scheduler })
}

/// Runs the CCM until Ctrl-C (or SIGTERM).
pub fn run(config: &Config) -> Result<(), StartError> {
    let system = actix::System::new();
    system.block_on(async {
        let handle = start(config.clone()).await?;
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .map_err(StartError::Signals)?;
        tokio::select! {
            r = tokio::signal::ctrl_c() => r.map_err(StartError::Signals)?,
            _ = term.recv() => {}
        }
        tracing::info!(event = "ccm_stopping");
        handle.stop().await;
        Ok(())
    })
}
