//! The operations sections of the configuration: `[lb]` (load balancer),
//! `[cache]` (invalidation after a commit), `[webhook]` (delivery of both
//! drivers' webhooks) and `[hooks]` (commands on each server around a
//! commit). They are part of [`crate::config::Config`]; each section checks
//! itself here, with errors that name the key, the problem and the fix.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::config::ConfigError;

fn invalid(key: &str, problem: impl Into<String>, fix: impl Into<String>) -> ConfigError {
    ConfigError::Invalid { key: key.into(), problem: problem.into(), fix: fix.into() }
}

/// Which load-balancer driver the CCM uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LbDriverKind {
    /// No load balancer: nothing is taken out of rotation.
    #[default]
    None,
    /// HAProxy's runtime API on its admin socket.
    Haproxy,
    /// A JSON POST per action to `lb.webhook_url`.
    Webhook,
}

/// `[lb]`: taking servers out of the load balancer's rotation while they
/// lag (failed apply, offline, live release behind the site's) and back in
/// once they are in sync.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LbConfig {
    /// `none`, `haproxy` or `webhook`.
    pub driver: LbDriverKind,
    /// HAProxy: the admin socket, a Unix socket path or `host:port`
    /// (`stats socket … level admin` in haproxy.cfg).
    pub haproxy_socket: String,
    /// HAProxy: the backend of servers not mapped to `backend/server` in `servers`.
    pub haproxy_backend: String,
    /// BES id → its name in the load balancer (`"server"` or, HAProxy,
    /// `"backend/server"`). A server not listed goes by its node name.
    pub servers: BTreeMap<String, String>,
    /// Webhook driver: where actions are POSTed.
    pub webhook_url: String,
    /// How often the servers' live releases are compared with the sites'.
    #[serde(with = "crate::config::duration")]
    pub check_interval: Duration,
    /// A server that lags (without a failed run naming it) is taken out only
    /// after lagging this long, so that a report still on its way is no reason.
    #[serde(with = "crate::config::duration")]
    pub lag_grace: Duration,
    /// Time limit of one action (socket or HTTP).
    #[serde(with = "crate::config::duration")]
    pub timeout: Duration,
}

impl Default for LbConfig {
    fn default() -> Self {
        LbConfig {
            driver: LbDriverKind::None,
            haproxy_socket: String::new(),
            haproxy_backend: String::new(),
            servers: BTreeMap::new(),
            webhook_url: String::new(),
            check_interval: Duration::from_secs(2),
            lag_grace: Duration::from_secs(10),
            timeout: Duration::from_secs(5),
        }
    }
}

fn check_http_url(key: &str, url: &str) -> Result<(), ConfigError> {
    let rest = url.strip_prefix("http://").or_else(|| url.strip_prefix("https://"));
    match rest {
        Some(r) if !r.is_empty() && !r.starts_with('/') => Ok(()),
        _ => Err(invalid(
            key,
            format!("{url:?} is not an http:// or https:// URL"),
            "give a URL such as \"http://10.0.0.9:8080/hooks/cmover\"",
        )),
    }
}

impl LbConfig {
    /// Checks the section.
    pub fn validate(&self) -> Result<(), ConfigError> {
        for (id, name) in &self.servers {
            if id.parse::<u64>().map_or(true, |n| n == 0) {
                return Err(invalid(
                    "lb.servers",
                    format!("key {id:?} is not a server id"),
                    "map node ids (1 or more) to load-balancer names, e.g. \"12\" = \"web/web-12\"",
                ));
            }
            if name.trim().is_empty() || name.contains(char::is_whitespace) || name.matches('/').count() > 1 {
                return Err(invalid(
                    "lb.servers",
                    format!("server {id}: {name:?} is not a load-balancer server name"),
                    "give \"server\" or \"backend/server\" without spaces",
                ));
            }
        }
        if self.check_interval < Duration::from_millis(100) {
            return Err(invalid(
                "lb.check_interval",
                format!("{:?} would compare releases continuously", self.check_interval),
                "give 100ms or more (the default is 2s)",
            ));
        }
        if self.timeout.is_zero() {
            return Err(invalid("lb.timeout", "0s allows no time for an action", "give e.g. \"5s\""));
        }
        match self.driver {
            LbDriverKind::None => Ok(()),
            LbDriverKind::Haproxy => {
                if self.haproxy_socket.trim().is_empty() {
                    return Err(invalid(
                        "lb.haproxy_socket",
                        "the haproxy driver needs HAProxy's admin socket",
                        "set it to the path (or host:port) of `stats socket … level admin` in haproxy.cfg",
                    ));
                }
                let unmapped_need_backend = self.haproxy_backend.trim().is_empty()
                    && (self.servers.is_empty() || self.servers.values().any(|n| !n.contains('/')));
                if unmapped_need_backend {
                    return Err(invalid(
                        "lb.haproxy_backend",
                        "empty, and not every server is mapped to \"backend/server\" in lb.servers",
                        "name the HAProxy backend the servers are in, e.g. haproxy_backend = \"web\"",
                    ));
                }
                Ok(())
            }
            LbDriverKind::Webhook => {
                if self.webhook_url.is_empty() {
                    return Err(invalid(
                        "lb.webhook_url",
                        "the webhook driver needs a URL to POST actions to",
                        "set lb.webhook_url (and webhook.secret_file to sign the requests)",
                    ));
                }
                check_http_url("lb.webhook_url", &self.webhook_url)
            }
        }
    }
}

/// `[cache]`: invalidating the changed URLs in caches after a commit.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CacheConfig {
    /// Caches that take `PURGE <path>` (Varnish, nginx with the cache purge
    /// module): their base URLs, e.g. `"http://10.0.0.7:6081"`. The `Host`
    /// header is the site's, from `base_urls`.
    pub purge: Vec<String>,
    /// A URL the list of changed URLs is POSTed to (JSON, signed).
    pub webhook_url: String,
    /// Site → base URL its paths are served under, e.g. `www =
    /// "http://www.example.com/"`. Sites not listed are not invalidated.
    pub base_urls: BTreeMap<String, String>,
}

impl CacheConfig {
    /// Checks the section.
    pub fn validate(&self) -> Result<(), ConfigError> {
        for p in &self.purge {
            check_http_url("cache.purge", p)?;
        }
        if !self.webhook_url.is_empty() {
            check_http_url("cache.webhook_url", &self.webhook_url)?;
        }
        for (site, base) in &self.base_urls {
            check_http_url(&format!("cache.base_urls.{site}"), base)?;
        }
        if (!self.purge.is_empty() || !self.webhook_url.is_empty()) && self.base_urls.is_empty() {
            return Err(invalid(
                "cache.base_urls",
                "caches are configured but no site has a base URL, so no path can be mapped to a URL",
                "add e.g. [cache.base_urls] www = \"http://www.example.com/\"",
            ));
        }
        Ok(())
    }
}

/// `[webhook]`: how the CCM delivers webhooks (load-balancer actions and
/// cache invalidations).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WebhookConfig {
    /// File holding the shared secret; each request carries
    /// `X-Cmover-Signature: sha256=<hex HMAC-SHA256 of the body>`.
    pub secret_file: std::path::PathBuf,
    /// Attempts per delivery (a 5xx answer or a network error is retried;
    /// a 4xx is not).
    pub attempts: u32,
    /// Wait before the second attempt; it doubles each time.
    #[serde(with = "crate::config::duration")]
    pub backoff: Duration,
    /// Time limit of one attempt.
    #[serde(with = "crate::config::duration")]
    pub timeout: Duration,
}

impl Default for WebhookConfig {
    fn default() -> Self {
        WebhookConfig {
            secret_file: Default::default(),
            attempts: 5,
            backoff: Duration::from_millis(500),
            timeout: Duration::from_secs(5),
        }
    }
}

impl WebhookConfig {
    /// Checks the section; `used` when some webhook URL is configured.
    pub fn validate(&self, used: bool) -> Result<(), ConfigError> {
        if self.attempts == 0 {
            return Err(invalid("webhook.attempts", "0 never delivers", "give 1 or more (the default is 5)"));
        }
        if self.timeout.is_zero() {
            return Err(invalid("webhook.timeout", "0s allows no time for a request", "give e.g. \"5s\""));
        }
        if used && self.secret_file.as_os_str().is_empty() {
            return Err(invalid(
                "webhook.secret_file",
                "a webhook URL is configured but no secret to sign its requests with",
                "create one (`cmover keygen -o FILE`) and share it with the receiver",
            ));
        }
        Ok(())
    }
}

/// One site's hooks on a server.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SiteHooks {
    /// Run (`sh -c`) when a new release is built, before the server reports
    /// it; failing (non-zero, or past the timeout) votes the server out of the commit.
    pub pre_commit: String,
    /// Run after the release went live; a failure is logged and counted.
    pub post_commit: String,
}

/// `[hooks]`: commands each server runs around a commit, per site.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HooksConfig {
    /// Time limit of one hook; it is killed (and fails) after it.
    #[serde(with = "crate::config::duration")]
    pub timeout: Duration,
    /// Site → its hooks, e.g. `[hooks.sites.www] post_commit = "systemctl reload nginx"`.
    pub sites: BTreeMap<String, SiteHooks>,
}

impl Default for HooksConfig {
    fn default() -> Self {
        HooksConfig { timeout: Duration::from_secs(60), sites: BTreeMap::new() }
    }
}

impl HooksConfig {
    /// Checks the section.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.timeout.is_zero() {
            return Err(invalid("hooks.timeout", "0s kills every hook at once", "give e.g. \"60s\""));
        }
        for (site, h) in &self.sites {
            if h.pre_commit.trim().is_empty() && h.post_commit.trim().is_empty() {
                return Err(invalid(
                    &format!("hooks.sites.{site}"),
                    "neither pre_commit nor post_commit is set",
                    "give a command for at least one of them, or remove the section",
                ));
            }
        }
        Ok(())
    }
}
