//! The HAProxy driver: HAProxy's runtime API on its admin socket
//! (`stats socket … level admin`), one command per connection:
//! `set server <backend>/<server> state maint|ready`. HAProxy answers an
//! empty line on success and a message otherwise.

use std::time::Duration;

use futures_util::future::LocalBoxFuture;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::lb::{LbAction, LbDriver, LbError, LbRequest};

/// Talks to one HAProxy.
#[derive(Debug, Clone)]
pub struct Haproxy {
    /// A Unix socket path, or `host:port`.
    pub socket: String,
    /// Backend of server names without one.
    pub backend: String,
    /// Time limit of a command.
    pub timeout: Duration,
}

impl Haproxy {
    /// `backend/server` for a load-balancer name that may lack the backend.
    pub fn qualified(&self, name: &str) -> String {
        if name.contains('/') {
            name.to_owned()
        } else {
            format!("{}/{name}", self.backend)
        }
    }

    /// Sends one runtime API command and returns HAProxy's answer.
    pub async fn command(&self, command: &str) -> Result<String, LbError> {
        let io =
            |e: std::io::Error| LbError::Unreachable { target: self.socket.clone(), error: e.to_string() };
        let run = async {
            let line = format!("{command}\n");
            if self.socket.starts_with('/') || !self.socket.contains(':') {
                let s = tokio::net::UnixStream::connect(&self.socket).await.map_err(io)?;
                exchange(s, &line).await.map_err(io)
            } else {
                let s = tokio::net::TcpStream::connect(&self.socket).await.map_err(io)?;
                exchange(s, &line).await.map_err(io)
            }
        };
        match tokio::time::timeout(self.timeout, run).await {
            Ok(r) => r,
            Err(_) => Err(LbError::Unreachable {
                target: self.socket.clone(),
                error: format!("no answer within {:?}", self.timeout),
            }),
        }
    }
}

async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(mut s: S, line: &str) -> std::io::Result<String> {
    s.write_all(line.as_bytes()).await?;
    s.flush().await?;
    let mut out = Vec::new();
    // HAProxy closes the connection after answering a non-interactive command.
    (&mut s).take(1 << 20).read_to_end(&mut out).await?;
    Ok(String::from_utf8_lossy(&out).into_owned())
}

impl LbDriver for Haproxy {
    fn name(&self) -> &'static str {
        "haproxy"
    }

    fn apply(&self, req: &LbRequest) -> LocalBoxFuture<'static, Result<String, LbError>> {
        let me = self.clone();
        let server = self.qualified(&req.lb_server);
        let state = match req.action {
            LbAction::Out => "maint",
            LbAction::In => "ready",
        };
        Box::pin(async move {
            let command = format!("set server {server} state {state}");
            let answer = me.command(&command).await?;
            let answer = answer.trim();
            if answer.is_empty() {
                Ok(format!("haproxy: {command}"))
            } else {
                Err(LbError::Refused { target: me.socket.clone(), answer: format!("{command}: {answer}") })
            }
        })
    }
}
