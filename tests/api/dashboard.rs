//! The admin security dashboard (issue 8) in a real headless Chromium, driven over WebDriver
//! (chromedriver, started here on a free loopback port): sign-in, the live feed, filters, pause,
//! a user's timeline and sessions, revocation, lockouts, the pipeline panel, charts, and the
//! refusal a non-admin gets. Plus the admin user routes over plain HTTP.
//!
//! Needs Debian's `chromium` and `chromium-driver` (`.ci/run` installs them). Missing: the test
//! fails under `CI`, and elsewhere says loudly that it was skipped.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::key::Key;
use fantoccini::{Client, ClientBuilder, Locator};
use flux_auth::config::Switch;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::forwarder::Forwarder;
use crate::helpers::*;

/// How long any one page condition may take before the test fails (the page answers in
/// milliseconds; this only bounds a hang).
const PATIENCE: Duration = Duration::from_secs(10);

/// `name` on the PATH.
fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

/// Chromium and chromedriver, or `None` (announced) outside CI when they are not installed.
fn browser_tools() -> Option<(PathBuf, PathBuf)> {
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
struct Driver {
    child: Child,
    url: String,
}

impl Driver {
    async fn start(driver: &Path) -> Driver {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new(driver)
            .arg(format!("--port={port}"))
            .arg("--allowed-ips=127.0.0.1")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromedriver");
        let url = format!("http://127.0.0.1:{port}");
        let client = reqwest::Client::new();
        let deadline = Instant::now() + PATIENCE;
        loop {
            let ready = client.get(format!("{url}/status")).send().await;
            if let Ok(response) = ready
                && let Ok(body) = response.json::<Value>().await
                && body["value"]["ready"] == true
            {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "chromedriver did not answer on {url}"
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        Driver { child, url }
    }
}

impl Driver {
    /// chromedriver's own `/shutdown`: it quits its browsers and exits; waited for, bounded.
    async fn shutdown(mut self) {
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

async fn open_browser(browser: &Path, driver: &Driver, profile: &Path) -> Client {
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
async fn wait_js(
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

async fn js(c: &Client, script: &str, args: Vec<Value>) -> Value {
    c.execute(script, args).await.unwrap()
}

async fn css(c: &Client, selector: &str) -> fantoccini::elements::Element {
    c.find(Locator::Css(selector)).await.unwrap()
}

async fn type_into(c: &Client, id: &str, text: &str) {
    let field = c.find(Locator::Id(id)).await.unwrap();
    field.clear().await.unwrap();
    field.send_keys(text).await.unwrap();
}

async fn sign_in(c: &Client, email: &str, password: &str) {
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
const VISIBLE_ROWS: &str = "return [...document.querySelectorAll('#feed-list li')]
    .filter((li) => !li.hidden)
    .map((li) => [li.dataset.type, li.dataset.user, li.dataset.severity, li.dataset.ip]);";

async fn visible_rows(c: &Client) -> Vec<Vec<String>> {
    serde_json::from_value(js(c, VISIBLE_ROWS, vec![]).await).unwrap()
}

/// Waits for the confirmation dialog and presses its Confirm button.
async fn confirm(c: &Client) {
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

fn target_dir() -> PathBuf {
    // CARGO_TARGET_TMPDIR is <target>/tmp, wherever the target folder is.
    Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

async fn dashboard_app() -> TestApp {
    TestApp::builder(Backend::File)
        .settings(|s| {
            // Lockouts on, held in process (no REDIS_URL); generous limits so that only the
            // account lock this test provokes gets in the way.
            s.rate_limits = Switch::On;
            s.lockout_threshold = 3;
            s.signup_limit_per_ip = 100;
            s.login_limit_per_ip = 1000;
            s.login_limit_per_account = 100;
            s.refresh_limit_per_ip = 1000;
            // The shortest lifetime allowed, so the page's refresh comes due during the test.
            s.access_token_ttl_secs = 60;
        })
        .spawn()
        .await
}

#[tokio::test]
async fn admin_watches_and_acts_in_the_dashboard_and_a_non_admin_is_refused() {
    let Some((browser_bin, driver_bin)) = browser_tools() else {
        return;
    };
    let app = dashboard_app().await;
    let driver = Driver::start(&driver_bin).await;
    let profile = tempfile::tempdir().unwrap();
    let client = open_browser(&browser_bin, &driver, profile.path()).await;
    // The scenario runs as a task so that, pass or fail, the browser is closed before the
    // failure (if any) is reported: no Chromium outlives the test.
    // The browser reaches the app through a TCP relay that the test can cut, as a network would.
    let link = Forwarder::start(format!("127.0.0.1:{}", app.port).parse().unwrap()).await;
    let outcome = tokio::spawn(scenario(app, client.clone(), link)).await;
    let _ = client.close().await;
    driver.shutdown().await;
    if let Err(failure) = outcome {
        match failure.try_into_panic() {
            Ok(panic) => std::panic::resume_unwind(panic),
            Err(e) => panic!("the dashboard scenario did not finish: {e}"),
        }
    }
}

async fn scenario(app: TestApp, c: Client, link: Forwarder) {
    let origin = format!("http://{}", link.addr());

    let admin_email = unique_email();
    let admin = app.signed_up(&admin_email).await;
    let admin_id = admin["user"]["id"].as_str().unwrap().to_owned();
    make_admin(&app, &admin_email).await;

    // The target has two sessions: one from signup, one from a login we hold the tokens of.
    let target_email = unique_email();
    let target = app.signed_up(&target_email).await;
    let target_id = target["user"]["id"].as_str().unwrap().to_owned();
    let second = app.logged_in(&target_email).await;
    let second_refresh = second["refreshToken"].as_str().unwrap().to_owned();
    let second_access = second["accessToken"].as_str().unwrap().to_owned();
    let second_sid = session_of(&second_access).to_string();
    let first_refresh = target["refreshToken"].as_str().unwrap().to_owned();

    let locked_email = unique_email();
    app.signed_up(&locked_email).await;
    for _ in 0..3 {
        app.login(&locked_email, "not the password at all").await;
    }
    app.events_of("account_locked").await;

    let plain_email = unique_email();
    app.signed_up(&plain_email).await;

    // The page and its files: our content types and a CSP of 'self' only.
    let page = app.client.get(app.url("/admin")).send().await.unwrap();
    assert_eq!(page.status(), StatusCode::OK);
    assert_eq!(page.headers()["content-type"], "text/html; charset=utf-8");
    let csp = page.headers()["content-security-policy"].to_str().unwrap();
    assert!(csp.contains("default-src 'self'"), "{csp}");
    assert!(
        !csp.contains("unsafe-inline") && !csp.contains("http"),
        "{csp}"
    );
    let script = app
        .client
        .get(app.url("/admin/main.js"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        script.headers()["content-type"],
        "text/javascript; charset=utf-8"
    );
    assert!(
        script.headers()["content-security-policy"]
            .to_str()
            .unwrap()
            .contains("'self'")
    );
    assert_error(
        app.client
            .get(app.url("/admin/nope.js"))
            .send()
            .await
            .unwrap(),
        StatusCode::NOT_FOUND,
        "NOT_FOUND",
    )
    .await;

    c.goto(&format!("{origin}/admin")).await.unwrap();
    // Anything the strict CSP blocks from here on (an inline style, a script) is collected.
    js(
        &c,
        "window.cspViolations = [];
        document.addEventListener('securitypolicyviolation',
            (e) => window.cspViolations.push(`${e.violatedDirective} ${e.blockedURI}`));",
        vec![],
    )
    .await;

    // Sign in as the admin; the feed goes live.
    sign_in(&c, &admin_email, PASSWORD).await;
    wait_js(
        &c,
        "the dashboard shows and the feed is live",
        PATIENCE,
        "return !document.getElementById('dashboard').hidden
            && document.getElementById('feed-status').dataset.state === 'live'",
        vec![],
    )
    .await;

    // A failed login made through the API is in the feed within a second, newest first.
    let failed = app.login(&target_email, "wrong password, again").await;
    assert_eq!(failed.status(), StatusCode::UNAUTHORIZED);
    let recorded = Instant::now();
    wait_js(
        &c,
        "the failed login is in the live feed",
        Duration::from_secs(1),
        "return document.querySelector(
            `#feed-list li[data-type=failed_login_attempt][data-user='${arguments[0]}']`) !== null",
        vec![json!(target_id)],
    )
    .await;
    eprintln!(
        "failed login shown in the feed after {:?}",
        recorded.elapsed()
    );
    let ids: Vec<String> = serde_json::from_value(
        js(
            &c,
            "return [...document.querySelectorAll('#feed-list li')].map((li) => li.dataset.id)",
            vec![],
        )
        .await,
    )
    .unwrap();
    let mut newest_first = ids.clone();
    newest_first.sort_by(|a, b| b.cmp(a));
    assert_eq!(ids, newest_first, "the feed is newest first");
    let unique: std::collections::HashSet<&String> = ids.iter().collect();
    assert_eq!(unique.len(), ids.len(), "no event shown twice");
    let class = css(
        &c,
        &format!("#feed-list li[data-type=failed_login_attempt][data-user='{target_id}']"),
    )
    .await
    .attr("class")
    .await
    .unwrap()
    .unwrap_or_default();
    assert!(
        class.contains("sev-warning"),
        "coloured by severity: {class}"
    );

    // Filters: by type, by severity, by user, by IP; clearing shows everything again.
    let all = visible_rows(&c).await.len();
    css(&c, "#feed-filter-type")
        .await
        .select_by_value("failed_login_attempt")
        .await
        .unwrap();
    let rows = visible_rows(&c).await;
    assert!(rows.len() >= 4 && rows.len() < all, "{rows:?}");
    assert!(
        rows.iter().all(|r| r[0] == "failed_login_attempt"),
        "{rows:?}"
    );
    type_into(&c, "feed-filter-user", &target_id).await;
    let rows = visible_rows(&c).await;
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0][1], target_id);
    css(&c, "#feed-filters button[type=reset]")
        .await
        .click()
        .await
        .unwrap();
    wait_js(
        &c,
        "clearing the filters shows every row",
        PATIENCE,
        "return [...document.querySelectorAll('#feed-list li')].every((li) => !li.hidden)",
        vec![],
    )
    .await;
    css(&c, "#feed-filter-severity")
        .await
        .select_by_value("high")
        .await
        .unwrap();
    let rows = visible_rows(&c).await;
    assert!(rows.iter().any(|r| r[0] == "account_locked"), "{rows:?}");
    assert!(
        rows.iter().all(|r| r[2] == "high" || r[2] == "critical"),
        "{rows:?}"
    );
    css(&c, "#feed-filter-severity")
        .await
        .select_by_value("")
        .await
        .unwrap();
    type_into(&c, "feed-filter-ip", "10.").await;
    assert!(
        visible_rows(&c).await.is_empty(),
        "every event came from 127.0.0.1"
    );
    type_into(&c, "feed-filter-ip", "127.0.0.1").await;
    let rows = visible_rows(&c).await;
    assert!(rows.len() >= 4, "{rows:?}");
    assert!(rows.iter().all(|r| r[3] == "127.0.0.1"), "{rows:?}");
    css(&c, "#feed-filters button[type=reset]")
        .await
        .click()
        .await
        .unwrap();

    // Paused, new events are held back, not lost; resumed, they are shown.
    css(&c, "#feed-pause").await.click().await.unwrap();
    let unknown = unique_email();
    app.login(&unknown, "who am i").await;
    wait_js(
        &c,
        "the paused feed counts the held event",
        PATIENCE,
        "return document.getElementById('feed-pause').textContent.includes('1 new')",
        vec![],
    )
    .await;
    let shown = "return [...document.querySelectorAll('#feed-list li[data-type=login_failed]')]
        .some((li) => li.dataset.email === arguments[0])";
    assert_eq!(js(&c, shown, vec![json!(unknown)]).await, json!(false));
    css(&c, "#feed-pause").await.click().await.unwrap();
    wait_js(
        &c,
        "the held event is shown on resume",
        PATIENCE,
        shown,
        vec![json!(unknown)],
    )
    .await;

    // The connection drops: the feed says so, reconnects by itself with Last-Event-ID, and then
    // shows what happened meanwhile, each event once, in its place.
    link.cut();
    wait_js(
        &c,
        "the feed notices the broken stream",
        PATIENCE,
        "return document.getElementById('feed-status').dataset.state === 'reconnecting'",
        vec![],
    )
    .await;
    let meanwhile: Vec<String> = (0..3).map(|_| unique_email()).collect();
    for email in &meanwhile {
        app.login(email, "nobody has this one").await;
    }
    link.restore();
    wait_js(
        &c,
        "the feed is live again with every event of the outage, once each",
        PATIENCE,
        "const rows = [...document.querySelectorAll('#feed-list li[data-type=login_failed]')];
        return document.getElementById('feed-status').dataset.state === 'live'
            && arguments[0].every((email) => rows.filter((li) => li.dataset.email === email).length === 1)",
        vec![json!(meanwhile)],
    )
    .await;
    let ids: Vec<String> = serde_json::from_value(
        js(
            &c,
            "return [...document.querySelectorAll('#feed-list li')].map((li) => li.dataset.id)",
            vec![],
        )
        .await,
    )
    .unwrap();
    let unique: std::collections::HashSet<&String> = ids.iter().collect();
    assert_eq!(
        unique.len(),
        ids.len(),
        "no event shown twice after the reconnect"
    );
    let mut newest_first = ids.clone();
    newest_first.sort_by(|a, b| b.cmp(a));
    assert_eq!(ids, newest_first, "replayed events are in their place");

    // The user view, opened from the feed: the user, their timeline, their two live sessions.
    css(
        &c,
        &format!(
            "#feed-list li[data-type=failed_login_attempt][data-user='{target_id}'] button.who"
        ),
    )
    .await
    .click()
    .await
    .unwrap();
    wait_js(
        &c,
        "the user view shows the target's timeline and sessions",
        PATIENCE,
        "return document.getElementById('user-card').textContent.includes(arguments[0])
            && document.querySelector('#user-timeline li[data-type=failed_login_attempt]') !== null
            && document.querySelectorAll('#user-sessions tr[data-session]').length === 2",
        vec![json!(target_email)],
    )
    .await;

    // Revoke the second session: asked first, then gone, and its refresh token no longer works.
    css(
        &c,
        &format!("#user-sessions tr[data-session='{second_sid}'] button.revoke-session"),
    )
    .await
    .click()
    .await
    .unwrap();
    confirm(&c).await;
    wait_js(
        &c,
        "the revoked session leaves the list",
        PATIENCE,
        "return document.querySelector(`#user-sessions tr[data-session='${arguments[0]}']`) === null
            && document.querySelectorAll('#user-sessions tr[data-session]').length === 1",
        vec![json!(second_sid)],
    )
    .await;
    assert_error(
        app.refresh(&second_refresh).await,
        StatusCode::UNAUTHORIZED,
        "AUTH_REFRESH_INVALID",
    )
    .await;
    assert_eq!(
        app.me(&second_access).await.status(),
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        app.refresh(&first_refresh).await.status(),
        StatusCode::OK,
        "the other session lives on"
    );
    let revoked = app.events_of("token_revoked").await;
    let by_admin = revoked
        .iter()
        .find(|e| e.metadata.get("by") == Some(&json!("admin")))
        .expect("a token_revoked event by the admin");
    assert_eq!(by_admin.user_id.as_deref(), Some(target_id.as_str()));
    assert_eq!(by_admin.metadata["adminId"], admin_id.as_str());
    assert_eq!(by_admin.metadata["sessionId"], second_sid.as_str());

    // The pipeline panel says what /health says.
    wait_js(
        &c,
        "the pipeline panel is filled in",
        PATIENCE,
        "return document.getElementById('pipe-sink').textContent.startsWith('file')
            && document.getElementById('pipe-redis').textContent === 'not configured'
            && /^\\d+$/.test(document.getElementById('pipe-queued').textContent)",
        vec![],
    )
    .await;

    // Charts, drawn afresh: bars per minute, logins, the top failing IPs and accounts.
    css(&c, "#charts-refresh").await.click().await.unwrap();
    wait_js(
        &c,
        "the charts are drawn",
        PATIENCE,
        "return document.querySelector('#chart-rate svg rect.bar') !== null
            && document.querySelector('#chart-logins svg polyline') !== null
            && document.getElementById('chart-top-ips').textContent.includes('127.0.0.1')
            && document.getElementById('chart-top-accounts').textContent.includes(arguments[0].slice(0, 20))",
        vec![json!(locked_email)],
    )
    .await;

    // The last day, hour by hour from the stats API; then back to the last hour.
    css(&c, "#range-day").await.click().await.unwrap();
    wait_js(
        &c,
        "the day chart is drawn",
        PATIENCE,
        "return document.getElementById('charts-note').textContent.includes('last day')
            && document.querySelector('#chart-rate svg rect.bar') !== null",
        vec![],
    )
    .await;
    css(&c, "#range-hour").await.click().await.unwrap();
    wait_js(
        &c,
        "the hour chart is drawn again",
        PATIENCE,
        "return document.getElementById('charts-note').textContent.includes('last hour')",
        vec![],
    )
    .await;

    // The main view, for review, with a lock listed and the user open.
    let key = format!("account:{locked_email}");
    wait_js(
        &c,
        "the locked account is listed",
        PATIENCE,
        "return document.querySelector(`#lockouts-table tr[data-key='${arguments[0]}']`) !== null",
        vec![json!(key)],
    )
    .await;
    js(&c, "window.scrollTo(0, 0)", vec![]).await;
    let png = c.screenshot().await.unwrap();
    let shot = target_dir().join("dashboard.png");
    std::fs::write(&shot, &png).unwrap();
    eprintln!("screenshot: {}", shot.display());

    // Lift the lockout, from the keyboard only: Enter on Lift, Tab past Cancel, Enter on Lift.
    let lift = css(
        &c,
        &format!("#lockouts-table tr[data-key='{key}'] button.lift"),
    )
    .await;
    js(
        &c,
        "arguments[0].focus()",
        vec![serde_json::to_value(&lift).unwrap()],
    )
    .await;
    c.active_element()
        .await
        .unwrap()
        .send_keys(&Key::Enter)
        .await
        .unwrap();
    wait_js(
        &c,
        "the dialog opens with Cancel focused",
        PATIENCE,
        "return document.getElementById('confirm').open
            && document.activeElement.id === 'confirm-cancel'",
        vec![],
    )
    .await;
    c.active_element()
        .await
        .unwrap()
        .send_keys(&Key::Tab)
        .await
        .unwrap();
    let focused = js(&c, "return document.activeElement.id", vec![]).await;
    assert_eq!(focused, json!("confirm-ok"));
    c.active_element()
        .await
        .unwrap()
        .send_keys(&Key::Enter)
        .await
        .unwrap();
    wait_js(
        &c,
        "the lifted lock leaves the list",
        PATIENCE,
        "return document.querySelector(`#lockouts-table tr[data-key='${arguments[0]}']`) === null",
        vec![json!(key)],
    )
    .await;
    assert_eq!(
        app.login(&locked_email, PASSWORD).await.status(),
        StatusCode::OK
    );
    assert_eq!(app.events_of("lockout_lifted").await.len(), 1);

    // Nothing was blocked by the CSP, and nothing was asked of any other host.
    let violations = js(&c, "return window.cspViolations", vec![]).await;
    assert_eq!(violations, json!([]), "CSP violations");
    let origins: Vec<String> = serde_json::from_value(
        js(
            &c,
            "return performance.getEntriesByType('resource').map((e) => new URL(e.name).origin)",
            vec![],
        )
        .await,
    )
    .unwrap();
    assert!(!origins.is_empty());
    assert!(
        origins.iter().all(|o| *o == origin),
        "requests to other hosts: {origins:?}"
    );

    // The same page at phone width: one column, nothing wider than the screen.
    c.set_window_size(390, 1400).await.unwrap();
    std::fs::write(
        target_dir().join("dashboard-phone.png"),
        c.screenshot().await.unwrap(),
    )
    .unwrap();
    let too_wide = js(
        &c,
        "return [...document.querySelectorAll('#dashboard *')]
            .filter((e) => e.getBoundingClientRect().right > window.innerWidth + 1)
            .map((e) => e.tagName + '#' + e.id + '.' + e.className)
            .slice(0, 5)",
        vec![],
    )
    .await;
    let fits = js(
        &c,
        "return document.documentElement.scrollWidth <= window.innerWidth",
        vec![],
    )
    .await;
    assert_eq!(
        fits,
        json!(true),
        "sideways scrolling on a phone: {too_wide}"
    );
    c.set_window_size(1400, 1700).await.unwrap();

    // The page refreshed its token before it expired (60 s tokens, refreshed a minute early, so
    // within seconds of sign-in), and goes on working with the new one.
    let refreshed = app
        .events_where(|events| {
            events.iter().any(|e| {
                e.event_type.as_str() == "token_refreshed"
                    && e.user_id.as_deref() == Some(admin_id.as_str())
            })
        })
        .await;
    assert!(
        refreshed
            .iter()
            .any(|e| e.event_type.as_str() == "token_refreshed"
                && e.user_id.as_deref() == Some(admin_id.as_str())),
        "the dashboard never refreshed its access token"
    );
    type_into(&c, "user-query", &locked_email).await;
    css(&c, "#user-search-form button[type=submit]")
        .await
        .click()
        .await
        .unwrap();
    wait_js(
        &c,
        "a search after the refresh works",
        PATIENCE,
        "return document.getElementById('user-card').textContent.includes(arguments[0])",
        vec![json!(locked_email)],
    )
    .await;

    // A non-admin signs in and is told plainly, with no dashboard behind it.
    css(&c, "#signout").await.click().await.unwrap();
    sign_in(&c, &plain_email, PASSWORD).await;
    wait_js(
        &c,
        "the non-admin is refused",
        PATIENCE,
        "return !document.getElementById('refusal').hidden
            && document.getElementById('refusal').textContent.includes('not an administrator')
            && document.getElementById('dashboard').hidden",
        vec![],
    )
    .await;
}

#[tokio::test]
async fn admin_user_routes_find_revoke_and_refuse_non_admins() {
    let app = dashboard_app().await;
    let admin_email = unique_email();
    let admin = app.signed_up(&admin_email).await;
    let admin_token = admin["accessToken"].as_str().unwrap().to_owned();
    let user_email = unique_email();
    let user = app.signed_up(&user_email).await;
    let user_id = user["user"]["id"].as_str().unwrap().to_owned();
    let user_token = user["accessToken"].as_str().unwrap().to_owned();
    let search = |token: &str, query: &str| {
        app.client
            .get(app.url("/api/admin/security/users"))
            .query(&[("query", query)])
            .bearer_auth(token.to_owned())
            .send()
    };

    for path in [
        format!("/api/admin/security/users?query={user_id}"),
        format!("/api/admin/security/users/{user_id}/sessions"),
    ] {
        let request = if path.ends_with("/sessions") {
            app.client.delete(app.url(&path))
        } else {
            app.client.get(app.url(&path))
        };
        assert_error(
            request.bearer_auth(&user_token).send().await.unwrap(),
            StatusCode::FORBIDDEN,
            "FORBIDDEN",
        )
        .await;
    }
    make_admin(&app, &admin_email).await;

    // By email (any case) and by id: the same user with their live session.
    for query in [user_email.to_uppercase(), user_id.clone()] {
        let found: Value = search(&admin_token, &query)
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(found["user"]["id"], user_id.as_str(), "{found}");
        let sessions = found["sessions"].as_array().unwrap();
        assert_eq!(sessions.len(), 1);
        assert_eq!(sessions[0]["ipAddress"], "127.0.0.1");
        assert!(found["user"].get("passwordHash").is_none());
    }
    assert_error(
        search(&admin_token, "nobody@example.com").await.unwrap(),
        StatusCode::NOT_FOUND,
        "USER_NOT_FOUND",
    )
    .await;
    assert_error(
        search(&admin_token, "  ").await.unwrap(),
        StatusCode::BAD_REQUEST,
        "VALIDATION_ERROR",
    )
    .await;

    // A session id that is not the user's: 404, nothing revoked.
    let admin_sid = session_of(&admin_token);
    let wrong = app
        .client
        .delete(app.url(&format!(
            "/api/admin/security/users/{user_id}/sessions/{admin_sid}"
        )))
        .bearer_auth(&admin_token)
        .send()
        .await
        .unwrap();
    assert_error(wrong, StatusCode::NOT_FOUND, "SESSION_NOT_FOUND").await;

    // Revoke all: every session and access token of the user dies, recorded with the admin.
    let second = app.logged_in(&user_email).await;
    let all = app
        .client
        .delete(app.url(&format!("/api/admin/security/users/{user_id}/sessions")))
        .bearer_auth(&admin_token)
        .send()
        .await
        .unwrap();
    assert_eq!(all.status(), StatusCode::OK);
    let body: Value = all.json().await.unwrap();
    assert_eq!(body["sessionsRevoked"], 2);
    assert_eq!(app.me(&user_token).await.status(), StatusCode::UNAUTHORIZED);
    let refreshed = app.refresh(second["refreshToken"].as_str().unwrap()).await;
    assert_error(refreshed, StatusCode::UNAUTHORIZED, "AUTH_REFRESH_INVALID").await;
    assert_eq!(app.me(&admin_token).await.status(), StatusCode::OK);
    let mass = app.events_of("mass_token_revocation").await;
    assert_eq!(mass.len(), 1);
    assert_eq!(mass[0].user_id.as_deref(), Some(user_id.as_str()));
    assert_eq!(mass[0].metadata["by"], "admin");
    assert_eq!(mass[0].metadata["adminId"], admin["user"]["id"]);
    assert_eq!(mass[0].metadata["tokensRevoked"], 2);

    let gone = app
        .client
        .delete(app.url("/api/admin/security/users/no-such-user/sessions"))
        .bearer_auth(&admin_token)
        .send()
        .await
        .unwrap();
    assert_error(gone, StatusCode::NOT_FOUND, "USER_NOT_FOUND").await;
}
