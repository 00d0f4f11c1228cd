//! A client of the CCM's admin REST API (`/api/v1`, bearer token): what
//! the in-process cluster, the demo and the process tests drive the CCM with.

use std::path::Path;
use std::time::{Duration, Instant};

use thiserror::Error;

use crate::storage::records::{Quorum, RunRecord, SegmentRecord};

/// Why a call failed.
#[derive(Debug, Error)]
pub enum AdminError {
    /// The CCM could not be reached or answered garbage.
    #[error("{url}: {message}")]
    Transport {
        /// The URL called.
        url: String,
        /// What went wrong.
        message: String,
    },
    /// The CCM refused the call.
    #[error("{method} {path}: HTTP {status}: {body}")]
    Refused {
        /// The method.
        method: String,
        /// The path.
        path: String,
        /// The HTTP status.
        status: u16,
        /// The JSON answer (it names the bad field).
        body: serde_json::Value,
    },
    /// Something did not happen in time.
    #[error("timed out after {0:?} waiting for {1}")]
    Timeout(Duration, String),
}

/// The admin API of one CCM.
#[derive(Debug, Clone)]
pub struct AdminClient {
    url: String,
    token: String,
    timeout: Duration,
}

impl AdminClient {
    /// A client of the CCM at `url` (e.g. `http://127.0.0.1:7480`) with `token`.
    pub fn new(url: &str, token: &str) -> Self {
        AdminClient {
            url: url.trim_end_matches('/').to_owned(),
            token: token.to_owned(),
            timeout: Duration::from_secs(30),
        }
    }

    /// The CCM's base URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Calls `method path` with an optional JSON body; returns the status and JSON answer.
    pub async fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> Result<(u16, serde_json::Value), AdminError> {
        let url = format!("{}{path}", self.url);
        let transport = |message: String| AdminError::Transport { url: url.clone(), message };
        let method: awc::http::Method =
            method.parse().map_err(|_| transport(format!("{method} is not an HTTP method")))?;
        // A client per call: pooled connections would outlive a CCM restart.
        let client = awc::Client::builder().timeout(self.timeout).finish();
        let req =
            client.request(method, &url).insert_header(("authorization", format!("Bearer {}", self.token)));
        let sent = match body {
            Some(b) => req.send_json(&b).await,
            None => req.send().await,
        };
        let mut resp = sent.map_err(|e| transport(e.to_string()))?;
        let bytes = resp.body().limit(64 << 20).await.map_err(|e| transport(e.to_string()))?;
        Ok((resp.status().as_u16(), serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null)))
    }

    /// Like [`AdminClient::call`], but a status other than 2xx is an error.
    pub async fn ok(
        &self,
        method: &str,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> Result<serde_json::Value, AdminError> {
        let (status, body) = self.call(method, path, body).await?;
        if (200..300).contains(&status) {
            Ok(body)
        } else {
            Err(AdminError::Refused { method: method.into(), path: path.into(), status, body })
        }
    }

    fn parse<T: serde::de::DeserializeOwned>(
        &self,
        path: &str,
        v: serde_json::Value,
    ) -> Result<T, AdminError> {
        serde_json::from_value(v).map_err(|e| AdminError::Transport {
            url: format!("{}{path}", self.url),
            message: format!("unexpected answer: {e}"),
        })
    }

    /// Creates site `name` published from `staging`.
    pub async fn create_site(&self, name: &str, staging: &Path) -> Result<(), AdminError> {
        let body = serde_json::json!({"name": name, "staging": staging});
        self.ok("POST", "/api/v1/sites", Some(body)).await.map(|_| ())
    }

    /// Creates content group `name` of `site` on `servers` with `quorum`.
    pub async fn create_group(
        &self,
        name: &str,
        site: &str,
        servers: &[u64],
        quorum: Quorum,
    ) -> Result<(), AdminError> {
        let body = serde_json::json!({"name": name, "site": site, "servers": servers, "quorum": quorum});
        self.ok("POST", "/api/v1/groups", Some(body)).await.map(|_| ())
    }

    /// Creates a job (`publish`, `synchronize`, `rollback`); returns its id.
    pub async fn create_job(&self, site: &str, group: &str, kind: &str) -> Result<u64, AdminError> {
        let body = serde_json::json!({"site": site, "group": group, "kind": kind});
        let v = self.ok("POST", "/api/v1/jobs", Some(body)).await?;
        v["id"].as_u64().ok_or_else(|| AdminError::Transport {
            url: format!("{}/api/v1/jobs", self.url),
            message: format!("no job id in {v}"),
        })
    }

    /// Runs job `job` now; returns the run id.
    pub async fn run_job(&self, job: u64) -> Result<u64, AdminError> {
        let path = format!("/api/v1/jobs/{job}/run");
        let v = self.ok("POST", &path, Some(serde_json::json!({}))).await?;
        v["run"].as_u64().ok_or_else(|| AdminError::Transport {
            url: format!("{}{path}", self.url),
            message: format!("no run id in {v}"),
        })
    }

    /// Run `run`'s record.
    pub async fn run(&self, run: u64) -> Result<RunRecord, AdminError> {
        let path = format!("/api/v1/runs/{run}");
        let v = self.ok("GET", &path, None).await?;
        self.parse(&path, v)
    }

    /// Waits (polling) until run `run` is over; transport errors are retried
    /// until `limit`, so that a CCM restart in between is survived.
    pub async fn wait_run(&self, run: u64, limit: Duration) -> Result<RunRecord, AdminError> {
        let start = Instant::now();
        loop {
            match self.run(run).await {
                Ok(r) if r.state.is_final() => return Ok(r),
                Err(e @ AdminError::Refused { .. }) => return Err(e),
                _ => {}
            }
            if start.elapsed() > limit {
                return Err(AdminError::Timeout(limit, format!("run {run} to end")));
            }
            actix::clock::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The segments the CCM knows.
    pub async fn segments(&self) -> Result<Vec<SegmentRecord>, AdminError> {
        let v = self.ok("GET", "/api/v1/segments", None).await?;
        self.parse("/api/v1/segments", v)
    }

    /// Waits until the CCM knows segments `want` (name → member ids), each
    /// with exactly those members.
    pub async fn wait_segments(
        &self,
        want: &[(String, Vec<u64>)],
        limit: Duration,
    ) -> Result<Vec<SegmentRecord>, AdminError> {
        let start = Instant::now();
        loop {
            if let Ok(segs) = self.segments().await {
                let complete = want.iter().all(|(name, ids)| {
                    segs.iter().any(|r| {
                        r.name == *name
                            && r.members.len() == ids.len()
                            && ids.iter().all(|id| r.members.iter().any(|m| m.id.0 == *id))
                    })
                });
                if complete {
                    return Ok(segs);
                }
            }
            if start.elapsed() > limit {
                return Err(AdminError::Timeout(limit, format!("segments {want:?} to report")));
            }
            actix::clock::sleep(Duration::from_millis(100)).await;
        }
    }
}
