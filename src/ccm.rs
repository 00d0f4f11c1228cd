//! The controller process (`cmover ccm`): the database, the orchestrating
//! actors and the HTTP server, wired from the configuration.

use std::net::{SocketAddr, TcpListener};

use actix::prelude::*;
use actix_web::{web, App, HttpServer};
use thiserror::Error;

use crate::actors::ccm::{Ccm, ObserveRuns};
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
    /// The web UI's live overview.
    pub live: crate::http::live::LiveTask,
}

impl CcmHandle {
    /// Stops the HTTP server and the orchestrator and flushes the database,
    /// as a process exit would; runs in flight are recovered by the next start.
    pub async fn stop(self) {
        // The live overview first: its end closes the UI's event streams,
        // which a graceful stop would otherwise wait for.
        self.live.stop().await;
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
    first_admin(&config, &db)?;
    let addr = config.ccm.http_bind;
    let listener = TcpListener::bind(addr).map_err(|source| StartError::Bind { addr, source })?;
    let local = listener.local_addr().map_err(|source| StartError::Bind { addr, source })?;
    if config.ccm.advertise_url.is_empty() {
        config.ccm.advertise_url = format!("http://{local}");
    }
    let url = config.ccm.url();
    let auth = web::Data::new(NodeAuth::from_secret(
        &secret,
        crate::protocol::api::CCM_NODE,
        config.ccm.max_clock_skew,
    ));
    crate::metrics::init();
    let observers = crate::ops::start_ccm_observers(&config, &db, &secret)?;
    let ccm = Ccm::new(config.clone(), db.clone(), secret).with_observers(observers).start();
    let scheduler = Scheduler::new(config.clone(), db.clone(), ccm.clone().recipient()).start();
    ccm.do_send(ObserveRuns { ended: scheduler.clone().recipient(), began: scheduler.clone().recipient() });
    let (live, live_task) = crate::http::live::start(db.clone(), ccm.clone().recipient());
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
        live,
        integrations: serde_json::json!({ "lb": config.lb, "cache": config.cache }),
        logins: Default::default(),
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
            .configure(crate::http::ui::config)
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
    Ok(CcmHandle { ccm, db, url, server: handle, egress, scheduler, live: live_task })
}

/// Creates `ccm.first_admin` when no admin account exists yet.
fn first_admin(config: &Config, db: &Db) -> Result<(), StartError> {
    let name = &config.ccm.first_admin;
    let users = db.table::<crate::storage::records::UserRecord>()?;
    if name.is_empty() || !users.is_empty() {
        return Ok(());
    }
    let file = &config.ccm.first_admin_password_file;
    let bad = |problem: String| ConfigError::Invalid {
        key: "ccm.first_admin_password_file".into(),
        problem,
        fix: "put the first admin's password (10 characters or more) in a file only the CCM can read".into(),
    };
    if file.as_os_str().is_empty() {
        return Err(bad(format!("ccm.first_admin is {name:?} but no password file is given")).into());
    }
    let password =
        std::fs::read_to_string(file).map_err(|e| bad(format!("cannot read {}: {e}", file.display())))?;
    let password = password.trim_end_matches(['\r', '\n']);
    if password.chars().count() < 10 {
        return Err(bad(format!("the password in {} is shorter than 10 characters", file.display())).into());
    }
    let user = crate::http::session::new_user(name, password)
        .map_err(|e| bad(format!("cannot hash the password: {e}")))?;
    users.put(&user)?;
    db.flush()?;
    tracing::info!(event = "first_admin_created", user = %name);
    Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::records::UserRecord;

    #[test]
    fn the_first_admin_comes_from_the_config_once() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::temporary().unwrap();
        let mut config = Config::default();
        config.ccm.first_admin = "root".into();
        let err = first_admin(&config, &db).unwrap_err().to_string();
        assert!(err.contains("ccm.first_admin_password_file"), "{err}");
        config.ccm.first_admin_password_file = dir.path().join("pw");
        std::fs::write(&config.ccm.first_admin_password_file, "short\n").unwrap();
        let err = first_admin(&config, &db).unwrap_err().to_string();
        assert!(err.contains("shorter than 10"), "{err}");
        std::fs::write(&config.ccm.first_admin_password_file, "a long enough secret\n").unwrap();
        first_admin(&config, &db).unwrap();
        let users = db.table::<UserRecord>().unwrap();
        let root = users.get(&"root".to_string()).unwrap().unwrap();
        assert!(crate::http::session::check_password(&root, "a long enough secret"));
        // Accounts exist now: a changed file changes nothing.
        std::fs::write(&config.ccm.first_admin_password_file, "another long secret").unwrap();
        first_admin(&config, &db).unwrap();
        let root = users.get(&"root".to_string()).unwrap().unwrap();
        assert!(crate::http::session::check_password(&root, "a long enough secret"));
    }
}
