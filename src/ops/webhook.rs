//! Webhook delivery: a JSON body POSTed with an HMAC-SHA256 signature,
//! retried with exponential backoff.
//!
//! The receiver checks `X-Cmover-Signature: sha256=<hex>` against the
//! HMAC-SHA256 of the exact body bytes under the shared secret
//! (`webhook.secret_file`); [`verify`] is the reference check. A 2xx answer
//! is delivered; a 5xx or a network error is tried again after `backoff`,
//! doubling, up to `attempts` in all; a 4xx is final (the receiver refused).

use std::time::Duration;

use ring::hmac;
use thiserror::Error;

/// The signature header.
pub const SIGNATURE_HEADER: &str = "X-Cmover-Signature";

/// Why a delivery failed.
#[derive(Debug, Error)]
pub enum WebhookError {
    /// Every attempt failed with a 5xx or a network error.
    #[error("gave up on {url} after {attempts} attempts; last: {last}")]
    GaveUp {
        /// The URL.
        url: String,
        /// Attempts made.
        attempts: u32,
        /// The last failure.
        last: String,
    },
    /// The receiver refused the request (4xx): not retried.
    #[error("{url} refused the webhook with {status}: {body}")]
    Refused {
        /// The URL.
        url: String,
        /// The status.
        status: u16,
        /// The start of the answer.
        body: String,
    },
}

/// How to deliver.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// The shared secret.
    pub secret: Vec<u8>,
    /// Attempts in all (≥ 1).
    pub attempts: u32,
    /// Wait before the second attempt; doubles.
    pub backoff: Duration,
    /// Time limit of one attempt.
    pub timeout: Duration,
}

impl Delivery {
    /// From the `[webhook]` section, with the secret already read.
    pub fn new(config: &super::config::WebhookConfig, secret: Vec<u8>) -> Self {
        Delivery {
            secret,
            attempts: config.attempts.max(1),
            backoff: config.backoff,
            timeout: config.timeout,
        }
    }
}

/// The signature header's value for `body`.
pub fn sign(secret: &[u8], body: &[u8]) -> String {
    let key = hmac::Key::new(hmac::HMAC_SHA256, secret);
    format!("sha256={}", hex::encode(hmac::sign(&key, body).as_ref()))
}

/// Whether `header` is the signature of `body` under `secret` (constant time).
pub fn verify(secret: &[u8], body: &[u8], header: &str) -> bool {
    let Some(tag) = header.strip_prefix("sha256=").and_then(|h| hex::decode(h).ok()) else {
        return false;
    };
    let key = hmac::Key::new(hmac::HMAC_SHA256, secret);
    hmac::verify(&key, body, &tag).is_ok()
}

/// POSTs `body` (JSON) to `url`, signed, retrying as described in the
/// module docs. Answers the attempts it took.
pub async fn deliver(url: &str, body: &[u8], how: &Delivery) -> Result<u32, WebhookError> {
    let client = awc::Client::builder().timeout(how.timeout).disable_redirects().finish();
    let signature = sign(&how.secret, body);
    let mut delay = how.backoff;
    let mut last = String::new();
    for attempt in 1..=how.attempts {
        let sent = client
            .post(url)
            .insert_header(("Content-Type", "application/json"))
            .insert_header((SIGNATURE_HEADER, signature.as_str()))
            .send_body(body.to_vec())
            .await;
        match sent {
            Ok(resp) if resp.status().is_success() => {
                metrics::counter!("cmover_webhook_attempts_total", "node" => crate::metrics::CCM, "result" => "ok")
                    .increment(1);
                return Ok(attempt);
            }
            Ok(mut resp) if resp.status().is_client_error() => {
                metrics::counter!("cmover_webhook_attempts_total", "node" => crate::metrics::CCM, "result" => "failed")
                    .increment(1);
                let answer = resp.body().limit(4096).await.unwrap_or_default();
                return Err(WebhookError::Refused {
                    url: url.into(),
                    status: resp.status().as_u16(),
                    body: String::from_utf8_lossy(&answer).chars().take(200).collect(),
                });
            }
            Ok(resp) => last = format!("HTTP {}", resp.status()),
            Err(e) => last = e.to_string(),
        }
        metrics::counter!("cmover_webhook_attempts_total", "node" => crate::metrics::CCM, "result" => "error")
            .increment(1);
        tracing::warn!(event = "webhook_retry", url, attempt, attempts = how.attempts, error = %last);
        if attempt < how.attempts {
            actix::clock::sleep(delay).await;
            delay = delay.saturating_mul(2);
        }
    }
    Err(WebhookError::GaveUp { url: url.into(), attempts: how.attempts, last })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signature_verifies_only_for_its_body_and_secret() {
        let sig = sign(b"secret", b"{\"a\":1}");
        assert!(sig.starts_with("sha256=") && sig.len() == 7 + 64, "{sig}");
        assert!(verify(b"secret", b"{\"a\":1}", &sig));
        assert!(!verify(b"secret", b"{\"a\":2}", &sig));
        assert!(!verify(b"other", b"{\"a\":1}", &sig));
        assert!(!verify(b"secret", b"{\"a\":1}", "sha256=zz"));
        assert!(!verify(b"secret", b"{\"a\":1}", &sig[7..]));
    }
}
