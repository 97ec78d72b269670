//! The browser side of the dashboard test: Chromium and chromedriver found on the PATH,
//! chromedriver on a free loopback port, a headless browser session, and the page conditions
//! the steps wait on.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{Value, json};

use crate::helpers::{eventually, free_port};

/// How long any one page condition may take before the test fails (the page answers in
/// milliseconds; this only bounds a hang).
pub(super) const PATIENCE: Duration = Duration::from_secs(10);

/// `name` on the PATH.
pub(super) fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

/// Chromium and chromedriver, or `None` (announced) outside CI when they are not installed.
pub(super) fn browser_tools() -> Option<(PathBuf, PathBuf)> {
    match (which("chromium"), which("chromedriver")) {
        (Some(browser), Some(driver)) => Some((browser, driver)),
        (browser, driver) => {
            let missing = format!(
                "chromium: {}, chromedriver: {}",
                browser.map_or("missing".into(), |p| p.display().to_string()),
                driver.map_or("missing".into(), |p| p.display().to_string()),
            );
            if std::env::var_os("CI").is_some() {
                panic!(
                    "the dashboard's browser test needs Chromium in CI ({missing}); \
                     .ci/run installs Debian's chromium and chromium-driver"
                );
            }
            eprintln!(
                "!!! SKIPPED: dashboard browser test: {missing}; \
                 run `apt-get update && apt-get install -y chromium chromium-driver`"
            );
            None
        }
    }
}

/// chromedriver on a free loopback port. [`Driver::shutdown`] asks it to quit, which also closes
/// any browser it still runs; dropping it without that only ends chromedriver itself.
pub(super) struct Driver {
    child: Child,
    pub(super) url: String,
}

impl Driver {
    pub(super) async fn start(driver: &Path) -> Driver {
        let port = free_port();
        let child = Command::new(driver)
            .arg(format!("--port={port}"))
            .arg("--allowed-ips=127.0.0.1")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromedriver");
        let url = format!("http://127.0.0.1:{port}");
        let client = reqwest::Client::new();
        eventually(&format!("chromedriver on {url}"), PATIENCE, || async {
            let body: Value = client
                .get(format!("{url}/status"))
                .send()
                .await
                .ok()?
                .json()
                .await
                .ok()?;
            (body["value"]["ready"] == true).then_some(())
        })
        .await;
        Driver { child, url }
    }
}

impl Driver {
    /// chromedriver's own `/shutdown`: it quits its browsers and exits; waited for, bounded.
    pub(super) async fn shutdown(mut self) {
        let _ = reqwest::get(format!("{}/shutdown", self.url)).await;
        let deadline = Instant::now() + PATIENCE;
        while Instant::now() < deadline {
            if !matches!(self.child.try_wait(), Ok(None)) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

pub(super) async fn open_browser(browser: &Path, driver: &Driver, profile: &Path) -> Client {
    let args = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        &format!("--user-data-dir={}", profile.display()),
    ];
    let capabilities: serde_json::Map<String, Value> = serde_json::from_value(json!({
        "browserName": "chrome",
        "goog:chromeOptions": { "binary": browser, "args": args },
    }))
    .unwrap();
    let client = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(capabilities)
        .connect(&driver.url)
        .await
        .expect("a WebDriver session in headless Chromium");
    client.set_window_size(1400, 1700).await.unwrap();
    client
}

/// Runs `script` (a function body; `arguments` are `args`) until it returns something truthy,
/// for at most `within`; returns that value.
pub(super) async fn wait_js(
    c: &Client,
    what: &str,
    within: Duration,
    script: &str,
    args: Vec<Value>,
) -> Value {
    let deadline = Instant::now() + within;
    loop {
        let value = c.execute(script, args.clone()).await.unwrap();
        let truthy = !matches!(&value, Value::Null | Value::Bool(false))
            && value != json!(0)
            && value != json!("");
        if truthy {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: not so within {within:?} (last: {value})"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

pub(super) async fn js(c: &Client, script: &str, args: Vec<Value>) -> Value {
    c.execute(script, args).await.unwrap()
}

pub(super) async fn css(c: &Client, selector: &str) -> fantoccini::elements::Element {
    c.find(Locator::Css(selector)).await.unwrap()
}

pub(super) async fn type_into(c: &Client, id: &str, text: &str) {
    let field = c.find(Locator::Id(id)).await.unwrap();
    field.clear().await.unwrap();
    field.send_keys(text).await.unwrap();
}

pub(super) async fn sign_in(c: &Client, email: &str, password: &str) {
    wait_js(
        c,
        "the sign-in form is shown",
        PATIENCE,
        "return document.getElementById('signin-email').checkVisibility()",
        vec![],
    )
    .await;
    type_into(c, "signin-email", email).await;
    type_into(c, "signin-password", password).await;
    css(c, "#signin-submit").await.click().await.unwrap();
}

/// The feed's rows that the filters leave visible, as `[type, user, severity, ip]`.
pub(super) const VISIBLE_ROWS: &str = "return [...document.querySelectorAll('#feed-list li')]
    .filter((li) => !li.hidden)
    .map((li) => [li.dataset.type, li.dataset.user, li.dataset.severity, li.dataset.ip]);";

pub(super) async fn visible_rows(c: &Client) -> Vec<Vec<String>> {
    serde_json::from_value(js(c, VISIBLE_ROWS, vec![]).await).unwrap()
}

/// Waits for the confirmation dialog and presses its Confirm button.
pub(super) async fn confirm(c: &Client) {
    wait_js(
        c,
        "the confirmation dialog is open",
        PATIENCE,
        "return document.getElementById('confirm').open",
        vec![],
    )
    .await;
    css(c, "#confirm-ok").await.click().await.unwrap();
}

pub(super) fn target_dir() -> PathBuf {
    // CARGO_TARGET_TMPDIR is <target>/tmp, wherever the target folder is.
    Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}
