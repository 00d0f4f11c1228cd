//! Signed node-to-node requests, the server side: the actix-web extractor
//! that checks them. The client that makes them is [`crate::net::client`].
//!
//! The signature scheme itself is pure and lives in `protocol::api`; this
//! module only moves headers and bodies.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use actix_web::dev::Payload;
use actix_web::http::StatusCode;
use actix_web::{web, FromRequest, HttpRequest, HttpResponse, ResponseError};
use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use serde::de::DeserializeOwned;
use thiserror::Error;

use crate::clock::unix_ms;
use crate::protocol::api::{self, AuthError, ErrorBody};
use crate::protocol::crypto::MacKey;
use crate::protocol::ids::NodeId;

/// Largest signed request body accepted.
pub const MAX_BODY: usize = 4 << 20;

/// What the server needs to check signatures (`app_data`).
#[derive(Clone, Debug)]
pub struct NodeAuth {
    /// The node API key.
    pub key: MacKey,
    /// Largest clock difference accepted.
    pub max_skew: Duration,
    /// This node: requests signed for another are refused.
    pub me: NodeId,
    /// Nonces accepted within the skew window.
    pub seen: std::sync::Arc<std::sync::Mutex<api::NonceCache>>,
}

impl NodeAuth {
    /// The node API key derived from the cluster secret, for node `me`.
    pub fn from_secret(secret: &[u8], me: NodeId, max_skew: Duration) -> Self {
        NodeAuth { key: MacKey::derive(secret, api::NODE_KEY_LABEL), max_skew, me, seen: Default::default() }
    }
}

/// A refused or malformed node request, answered as JSON.
#[derive(Debug, Error)]
pub enum SignedError {
    /// Missing or bad signature: 401.
    #[error("unauthenticated node request: {0}")]
    Auth(#[from] AuthError),
    /// The body could not be read or is too large: 400 / 413.
    #[error("{0}")]
    Body(String),
    /// The body is not the expected JSON: 400.
    #[error("bad request body: {0}")]
    Json(String),
    /// The server was set up without a [`NodeAuth`]: 500.
    #[error("node authentication is not configured")]
    NotConfigured,
}

impl ResponseError for SignedError {
    fn status_code(&self) -> StatusCode {
        match self {
            SignedError::Auth(_) => StatusCode::UNAUTHORIZED,
            SignedError::Body(m) if m.contains("too large") => StatusCode::PAYLOAD_TOO_LARGE,
            SignedError::Body(_) | SignedError::Json(_) => StatusCode::BAD_REQUEST,
            SignedError::NotConfigured => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn error_response(&self) -> HttpResponse {
        HttpResponse::build(self.status_code()).json(ErrorBody { error: self.to_string(), field: None })
    }
}

/// An authenticated request: who sent it and its body.
#[derive(Debug)]
pub struct Signed {
    /// The sender.
    pub node: NodeId,
    /// The raw body.
    pub body: Bytes,
}

impl Signed {
    /// The body as JSON.
    pub fn json<T: DeserializeOwned>(&self) -> Result<T, SignedError> {
        serde_json::from_slice(&self.body).map_err(|e| SignedError::Json(e.to_string()))
    }
}

impl FromRequest for Signed {
    type Error = SignedError;
    type Future = Pin<Box<dyn Future<Output = Result<Signed, SignedError>>>>;

    fn from_request(req: &HttpRequest, payload: &mut Payload) -> Self::Future {
        let req = req.clone();
        let mut payload = payload.take();
        Box::pin(async move {
            let auth = req.app_data::<web::Data<NodeAuth>>().ok_or(SignedError::NotConfigured)?.clone();
            let mut body = BytesMut::new();
            while let Some(chunk) = payload.next().await {
                let chunk = chunk.map_err(|e| SignedError::Body(e.to_string()))?;
                if body.len() + chunk.len() > MAX_BODY {
                    return Err(SignedError::Body(format!("request body too large (over {MAX_BODY} bytes)")));
                }
                body.extend_from_slice(&chunk);
            }
            let header = |name: &str| req.headers().get(name).and_then(|v| v.to_str().ok());
            let path = req.uri().path_and_query().map_or(req.path(), |p| p.as_str());
            let presented = api::Presented {
                node: header(api::NODE_HEADER),
                time: header(api::TIME_HEADER),
                to: header(api::TO_HEADER),
                nonce: header(api::NONCE_HEADER),
                signature: header(api::SIGNATURE_HEADER),
            };
            let (now, skew) = (unix_ms(), u64::try_from(auth.max_skew.as_millis()).unwrap_or(u64::MAX));
            let v =
                api::verify(&auth.key, presented, auth.me, now, skew, req.method().as_str(), path, &body)?;
            auth.seen.lock().unwrap_or_else(std::sync::PoisonError::into_inner).admit(now, skew, &v)?;
            Ok(Signed { node: v.node, body: body.freeze() })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::{test, App};

    async fn echo(signed: Signed) -> Result<HttpResponse, SignedError> {
        let v: serde_json::Value = signed.json()?;
        Ok(HttpResponse::Ok().json(serde_json::json!({ "node": signed.node, "got": v })))
    }

    fn app_auth(secret: &[u8]) -> web::Data<NodeAuth> {
        web::Data::new(NodeAuth::from_secret(secret, NodeId(0), Duration::from_secs(30)))
    }

    fn with(req: test::TestRequest, h: &api::SignedHeaders) -> test::TestRequest {
        h.pairs().into_iter().fold(req, |r, (k, v)| r.insert_header((k, v.to_owned())))
    }

    #[actix_web::test]
    async fn signed_requests_pass_once_and_others_get_401() {
        let secret = b"cluster secret for the http tests";
        let app =
            test::init_service(App::new().app_data(app_auth(secret)).route("/x", web::post().to(echo))).await;
        let key = MacKey::derive(secret, api::NODE_KEY_LABEL);
        let body = br#"{"a":1}"#;
        let h = api::sign(&key, NodeId(3), Some(NodeId(0)), [5; 16], unix_ms(), "POST", "/x", body);
        let signed = || with(test::TestRequest::post().uri("/x"), &h);
        let resp = test::call_service(&app, signed().set_payload(&body[..]).to_request()).await;
        assert_eq!(resp.status(), StatusCode::OK);
        let v: serde_json::Value = test::read_body_json(resp).await;
        assert_eq!(v["node"], 3);
        assert_eq!(v["got"]["a"], 1);
        // Issue 15 item 7: the same request again is a replay.
        let resp = test::call_service(&app, signed().set_payload(&body[..]).to_request()).await;
        assert_eq!(resp.status(), StatusCode::UNAUTHORIZED, "replayed");
        let v: ErrorBody = test::read_body_json(resp).await;
        assert!(v.error.contains("replayed"), "{}", v.error);
        // Signed for node 4: refused here.
        let other = api::sign(&key, NodeId(3), Some(NodeId(4)), [6; 16], unix_ms(), "POST", "/x", body);
        let req = with(test::TestRequest::post().uri("/x"), &other).set_payload(&body[..]).to_request();
        assert_eq!(test::call_service(&app, req).await.status(), StatusCode::UNAUTHORIZED, "another node's");

        let fresh = api::sign(&key, NodeId(3), Some(NodeId(0)), [7; 16], unix_ms(), "POST", "/x", body);
        let req =
            with(test::TestRequest::post().uri("/x"), &fresh).set_payload(&br#"{"a":2}"#[..]).to_request();
        assert_eq!(test::call_service(&app, req).await.status(), StatusCode::UNAUTHORIZED, "tampered body");
        let resp =
            test::call_service(&app, test::TestRequest::post().uri("/x").set_payload(&body[..]).to_request())
                .await;
        assert_eq!(resp.status(), StatusCode::UNAUTHORIZED, "unsigned");
        let old =
            api::sign(&key, NodeId(3), Some(NodeId(0)), [8; 16], unix_ms() - 60_000, "POST", "/x", body);
        let req = with(test::TestRequest::post().uri("/x"), &old).set_payload(&body[..]).to_request();
        let resp = test::call_service(&app, req).await;
        assert_eq!(resp.status(), StatusCode::UNAUTHORIZED, "stale");
        let v: ErrorBody = test::read_body_json(resp).await;
        assert!(v.error.contains("clock"), "{}", v.error);
    }
}
