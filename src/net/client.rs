//! Signed node-to-node requests, the client side: the `awc` client that
//! signs each request as one node (the server side, the extractor that
//! checks them, is [`crate::http::signed`]).
//!
//! The signature scheme itself is pure and lives in `protocol::api`; this
//! module only moves headers and bodies.

use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;
use thiserror::Error;

use crate::clock::unix_ms;
use crate::http::signed::MAX_BODY;
use crate::protocol::api;
use crate::protocol::crypto::MacKey;
use crate::protocol::ids::NodeId;

/// Why a node request failed on the client side.
#[derive(Debug, Error)]
pub enum ClientError {
    /// No answer (connection refused, timeout…).
    #[error("{url}: {message}")]
    Send {
        /// The URL.
        url: String,
        /// Why.
        message: String,
    },
    /// An answer other than 2xx.
    #[error("{url}: HTTP {status}: {body}")]
    Status {
        /// The URL.
        url: String,
        /// The status.
        status: u16,
        /// The body (JSON error, usually).
        body: String,
    },
    /// A 2xx answer that is not the expected JSON.
    #[error("{url}: bad answer: {message}")]
    Decode {
        /// The URL.
        url: String,
        /// Why.
        message: String,
    },
}

/// Makes signed requests as one node.
#[derive(Clone)]
pub struct NodeClient {
    key: MacKey,
    node: NodeId,
    client: awc::Client,
    rng: ring::rand::SystemRandom,
}

impl std::fmt::Debug for NodeClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "NodeClient(node {})", self.node)
    }
}

impl NodeClient {
    /// A client signing as `node` with the cluster secret; requests time out after `timeout`.
    pub fn new(secret: &[u8], node: NodeId, timeout: Duration) -> Self {
        let client = awc::Client::builder().timeout(timeout).disable_redirects().finish();
        let rng = ring::rand::SystemRandom::new();
        NodeClient { key: MacKey::derive(secret, api::NODE_KEY_LABEL), node, client, rng }
    }

    /// A signed request builder for `method` on `base` + `path` with
    /// `body`, for any node: servers accept it for a `GET` only.
    pub fn request(
        &self,
        method: awc::http::Method,
        base: &str,
        path: &str,
        body: &[u8],
    ) -> awc::ClientRequest {
        self.request_to(None, method, base, path, body)
    }

    /// A signed request builder for node `to` (`None`: any node).
    pub fn request_to(
        &self,
        to: Option<NodeId>,
        method: awc::http::Method,
        base: &str,
        path: &str,
        body: &[u8],
    ) -> awc::ClientRequest {
        let mut nonce = [0u8; 16];
        // A nonce that is not random is still unique enough for the receiver's
        // cache (time and sender differ); the generator failing is not expected.
        if ring::rand::SecureRandom::fill(&self.rng, &mut nonce).is_err() {
            nonce[..8].copy_from_slice(&crate::clock::unix_us().to_le_bytes());
        }
        let h = api::sign(&self.key, self.node, to, nonce, unix_ms(), method.as_str(), path, body);
        let mut req = self.client.request(method, format!("{}{path}", base.trim_end_matches('/')));
        for (name, value) in h.pairs() {
            req = req.insert_header((name, value.to_owned()));
        }
        req
    }

    /// POSTs `body` as JSON to node `to` at `base` and decodes the JSON answer.
    pub async fn post_json<T: Serialize, R: DeserializeOwned>(
        &self,
        to: NodeId,
        base: &str,
        path: &str,
        body: &T,
    ) -> Result<R, ClientError> {
        let url = format!("{base}{path}");
        let bytes = serde_json::to_vec(body)
            .map_err(|e| ClientError::Decode { url: url.clone(), message: e.to_string() })?;
        let mut resp = self
            .request_to(Some(to), awc::http::Method::POST, base, path, &bytes)
            .content_type("application/json")
            .send_body(bytes)
            .await
            .map_err(|e| ClientError::Send { url: url.clone(), message: e.to_string() })?;
        let status = resp.status();
        let answer = resp
            .body()
            .limit(MAX_BODY)
            .await
            .map_err(|e| ClientError::Send { url: url.clone(), message: e.to_string() })?;
        if !status.is_success() {
            return Err(ClientError::Status {
                url,
                status: status.as_u16(),
                body: String::from_utf8_lossy(&answer).into_owned(),
            });
        }
        let answer: &[u8] = if answer.is_empty() { b"null" } else { &answer };
        serde_json::from_slice(answer).map_err(|e| ClientError::Decode { url, message: e.to_string() })
    }
}
