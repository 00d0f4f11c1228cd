//! Headless Chromium driven through ChromeDriver (WebDriver, `fantoccini`)
//! for the web UI tests: started per test with a fresh profile, a
//! screenshot of each step under `target/ui-screenshots/`, waiting for the
//! page with generous deadlines, and the browser's console read back so a
//! test can assert there was no error.
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use fantoccini::elements::Element;
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{json, Value};

use super::net::free_tcp_port;
use super::ops::require;
use super::proc::Proc;
use super::wait::{wait_every, wait_for};

/// How long a condition on the page may take on a loaded machine.
pub const PAGE: Duration = Duration::from_secs(60);

/// A browser session and the ChromeDriver behind it.
pub struct Browser {
    pub client: Client,
    test: String,
    shots: u32,
    _driver: Proc,
    _profile: tempfile::TempDir,
    _turn: tokio::sync::MutexGuard<'static, ()>,
}

static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// `POST /session/{id}/se/log`: the browser's console since the last call.
#[derive(Debug)]
struct BrowserLog;

impl fantoccini::wd::WebDriverCompatibleCommand for BrowserLog {
    fn endpoint(&self, base: &url::Url, session: Option<&str>) -> Result<url::Url, url::ParseError> {
        base.join(&format!("session/{}/se/log", session.unwrap_or_default()))
    }
    fn method_and_body(&self, _: &url::Url) -> (http::Method, Option<String>) {
        (http::Method::POST, Some(json!({ "type": "browser" }).to_string()))
    }
}

impl Browser {
    /// Starts ChromeDriver and a headless Chromium at 1280×800. `None`
    /// (skipped, loudly) when they are not installed, except under
    /// `CI=true`, where that fails the test; failing to start fails always.
    pub async fn start(test: &str) -> Option<Browser> {
        if !require("chromium", "chromium") || !require("chromedriver", "chromium-driver") {
            return None;
        }
        // One browser test at a time: each runs a cluster and a Chromium,
        // too much at once for a 2-core machine (the lock ends with the test).
        let turn = ONE_AT_A_TIME.lock().await;
        let port = free_tcp_port();
        let logs = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
        let mut cmd = Command::new("chromedriver");
        cmd.arg(format!("--port={port}")).arg("--allowed-ips=127.0.0.1");
        let mut driver =
            Proc::logged("chromedriver", &mut cmd, &logs.join(format!("chromedriver-{test}.log")));
        let profile = tempfile::tempdir().unwrap();
        let caps = json!({
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": "/usr/bin/chromium",
                "args": [
                    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                    "--disable-background-networking", "--disable-component-update", "--disable-sync",
                    "--disable-dev-shm-usage", "--window-size=1280,800",
                    format!("--user-data-dir={}", profile.path().display()),
                ],
            },
            "goog:loggingPrefs": { "browser": "ALL" },
        });
        let caps = match caps {
            Value::Object(m) => m,
            _ => unreachable!(),
        };
        let what = "headless Chromium to start through ChromeDriver";
        let every = Duration::from_millis(200);
        let client = wait_every(what, Duration::from_secs(60), every, async || {
            let connector = hyper_util::client::legacy::connect::HttpConnector::new();
            let mut builder = ClientBuilder::new(connector);
            match builder.capabilities(caps.clone()).connect(&format!("http://127.0.0.1:{port}")).await {
                Ok(c) => Ok(c),
                Err(e) => {
                    driver.assert_running();
                    Err(e.to_string())
                }
            }
        })
        .await;
        client.set_window_size(1280, 800).await.unwrap();
        Some(Browser { client, test: test.into(), shots: 0, _driver: driver, _profile: profile, _turn: turn })
    }

    /// Saves a screenshot as `target/ui-screenshots/<test>-<n>-<step>.png`.
    pub async fn shot(&mut self, step: &str) -> PathBuf {
        self.shots += 1;
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/ui-screenshots");
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(format!("{}-{:02}-{step}.png", self.test, self.shots));
        // Toasts would hide the page; they are not what the step shows.
        let _ = self.client.execute("document.getElementById('toast')?.replaceChildren()", vec![]).await;
        let png = self.client.screenshot().await.unwrap();
        std::fs::write(&path, png).unwrap();
        path
    }

    /// Goes to `url`.
    pub async fn goto(&self, url: &str) {
        self.client.goto(url).await.unwrap();
    }

    /// The first element matching `css`, waiting for it.
    pub async fn find(&self, css: &str) -> Element {
        self.client
            .wait()
            .at_most(PAGE)
            .every(Duration::from_millis(50))
            .for_element(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("no element {css} within {PAGE:?}: {e}"))
    }

    /// Waits until `script` (a JavaScript expression) is truthy; returns its value.
    pub async fn until(&self, what: &str, script: &str) -> Value {
        wait_for(format!("{what} ({script})"), PAGE, async || {
            match self.client.execute(&format!("return ({script});"), vec![]).await {
                Ok(v)
                    if !matches!(v, Value::Null | Value::Bool(false)) && v != json!("") && v != json!(0) =>
                {
                    Ok(v)
                }
                Ok(v) => Err(format!("last: {v}")),
                Err(e) => Err(format!("last: {}", json!(e.to_string()))),
            }
        })
        .await
    }

    /// Runs a JavaScript expression and returns its value.
    pub async fn eval(&self, script: &str) -> Value {
        self.client.execute(&format!("return ({script});"), vec![]).await.unwrap()
    }

    /// Does `act` on the element matching `css`, finding it again when the
    /// page re-rendered it in between (live updates redraw lists).
    pub async fn on<F, Fut>(&self, css: &str, act: F)
    where
        F: Fn(Element) -> Fut,
        Fut: std::future::Future<Output = Result<(), fantoccini::error::CmdError>>,
    {
        let deadline = Instant::now() + PAGE;
        loop {
            match act(self.find(css).await).await {
                Ok(()) => return,
                Err(e) if e.is_stale_element_reference() && Instant::now() < deadline => continue,
                Err(e) => panic!("{css}: {e}"),
            }
        }
    }

    /// Types `text` into the (cleared) field matching `css`.
    pub async fn fill(&self, css: &str, text: &str) {
        self.on(css, |e| async move {
            e.clear().await?;
            e.send_keys(text).await
        })
        .await;
    }

    /// Clicks the element matching `css` (toasts, which could cover it, cleared first).
    pub async fn click(&self, css: &str) {
        let _ = self.client.execute("document.getElementById('toast')?.replaceChildren()", vec![]).await;
        self.on(css, |e| async move { e.click().await }).await;
    }

    /// Chooses `value` in the `<select>` matching `css`.
    pub async fn choose(&self, css: &str, value: &str) {
        self.on(css, |e| async move { e.select_by_value(value).await }).await;
    }

    /// The browser's console messages of level SEVERE since the last call.
    pub async fn console_errors(&self) -> Vec<String> {
        let log = self
            .client
            .issue_cmd(BrowserLog)
            .await
            .unwrap_or_else(|e| panic!("cannot read the console: {e}"));
        log.as_array()
            .into_iter()
            .flatten()
            .filter(|m| m["level"] == "SEVERE")
            .map(|m| m["message"].as_str().unwrap_or_default().to_owned())
            .collect()
    }

    /// Asserts the console shows no error, but those `allowed` (substrings).
    pub async fn assert_no_console_errors(&self, allowed: &[&str]) {
        let errors: Vec<String> = self
            .console_errors()
            .await
            .into_iter()
            .filter(|m| !allowed.iter().any(|a| m.contains(a)))
            .collect();
        assert!(errors.is_empty(), "console errors: {errors:#?}");
    }

    /// Ends the session (the driver is killed on drop).
    pub async fn close(self) {
        let _ = self.client.close().await;
    }
}
