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
        NodeClient { key: MacKey::derive(secret, api::NODE_KEY_LABEL), node, client }
    }

    /// A signed request builder for `method` on `base` + `path` with `body`.
    pub fn request(
        &self,
        method: awc::http::Method,
        base: &str,
        path: &str,
        body: &[u8],
    ) -> awc::ClientRequest {
        let (n, t, s) = api::sign(&self.key, self.node, unix_ms(), method.as_str(), path, body);
        self.client
            .request(method, format!("{}{path}", base.trim_end_matches('/')))
            .insert_header((api::NODE_HEADER, n))
            .insert_header((api::TIME_HEADER, t))
            .insert_header((api::SIGNATURE_HEADER, s))
    }

    /// POSTs `body` as JSON and decodes the JSON answer.
    pub async fn post_json<T: Serialize, R: DeserializeOwned>(
        &self,
        base: &str,
        path: &str,
        body: &T,
    ) -> Result<R, ClientError> {
        let url = format!("{base}{path}");
        let bytes = serde_json::to_vec(body)
            .map_err(|e| ClientError::Decode { url: url.clone(), message: e.to_string() })?;
        let mut resp = self
            .request(awc::http::Method::POST, base, path, &bytes)
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
