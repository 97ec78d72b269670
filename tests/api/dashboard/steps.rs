//! The steps of the dashboard scenario, in the order the test runs them in one browser session:
//! each is a named function, so a failure says which part of the page let the admin down.

use std::panic::AssertUnwindSafe;
use std::time::{Duration, Instant};

use fantoccini::Client;
use fantoccini::key::Key;
use futures::FutureExt;
use reqwest::StatusCode;
use serde_json::json;

use super::browser::*;
use crate::forwarder::Forwarder;
use crate::helpers::*;

/// What every step works with: the app, the browser, the relay the browser reaches the app
/// through (which a step cuts), the page's origin through it, and the accounts.
pub(super) struct Scene {
    pub(super) app: TestApp,
    pub(super) c: Client,
    pub(super) link: Forwarder,
    pub(super) origin: String,
    pub(super) accounts: Accounts,
}

/// The scenario's accounts: an admin; a target with two sessions, one from signup and one from a
/// login whose tokens the test holds; a locked account; a plain user.
pub(super) struct Accounts {
    admin_email: String,
    admin_id: String,
    target_email: String,
    target_id: String,
    second_refresh: String,
    second_access: String,
    second_sid: String,
    first_refresh: String,
    locked_email: String,
    plain_email: String,
}

/// Runs one step; a failure inside it is reported with the step's name and its own message.
pub(super) async fn step<T>(name: &str, run: impl Future<Output = T>) -> T {
    match AssertUnwindSafe(run).catch_unwind().await {
        Ok(value) => value,
        Err(panic) => {
            let message = panic
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| panic.downcast_ref::<&str>().copied())
                .unwrap_or("(no message)");
            panic!("dashboard step `{name}` failed: {message}");
        }
    }
}

/// Signs the accounts up through the API, makes the admin one, and locks the locked one.
pub(super) async fn accounts(app: &TestApp) -> Accounts {
    let admin_email = unique_email();
    let admin = app.signed_up(&admin_email).await;
    let admin_id = admin["user"]["id"].as_str().unwrap().to_owned();
    make_admin(app, &admin_email).await;

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

    Accounts {
        admin_email,
        admin_id,
        target_email,
        target_id,
        second_refresh,
        second_access,
        second_sid,
        first_refresh,
        locked_email,
        plain_email,
    }
}

/// The page and its files: our content types and a CSP of 'self' only.
pub(super) async fn page_and_its_files_have_a_strict_csp(s: &Scene) {
    let app = &s.app;
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
}

/// The page opens through the relay; the admin signs in and the feed goes live. Anything the
/// strict CSP blocks from here on (an inline style, a script) is collected.
pub(super) async fn admin_signs_in_and_the_feed_goes_live(s: &Scene) {
    let c = &s.c;
    let origin = &s.origin;
    let admin_email = &s.accounts.admin_email;
    c.goto(&format!("{origin}/admin")).await.unwrap();
    // Anything the strict CSP blocks from here on (an inline style, a script) is collected.
    js(
        c,
        "window.cspViolations = [];
        document.addEventListener('securitypolicyviolation',
            (e) => window.cspViolations.push(`${e.violatedDirective} ${e.blockedURI}`));",
        vec![],
    )
    .await;

    // Sign in as the admin; the feed goes live.
    sign_in(c, admin_email, PASSWORD).await;
    wait_js(
        c,
        "the dashboard shows and the feed is live",
        PATIENCE,
        "return !document.getElementById('dashboard').hidden
            && document.getElementById('feed-status').dataset.state === 'live'",
        vec![],
    )
    .await;
}

/// A failed login made through the API is in the feed within a second, newest first.
pub(super) async fn a_failed_login_is_in_the_feed_within_a_second(s: &Scene) {
    let app = &s.app;
    let c = &s.c;
    let target_email = &s.accounts.target_email;
    let target_id = &s.accounts.target_id;
    let failed = app.login(target_email, "wrong password, again").await;
    assert_eq!(failed.status(), StatusCode::UNAUTHORIZED);
    let recorded = Instant::now();
    wait_js(
        c,
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
            c,
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
        c,
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
}

/// Filters: by type, by severity, by user, by IP; clearing shows everything again.
pub(super) async fn filters_narrow_the_feed(s: &Scene) {
    let c = &s.c;
    let target_id = &s.accounts.target_id;
    let all = visible_rows(c).await.len();
    css(c, "#feed-filter-type")
        .await
        .select_by_value("failed_login_attempt")
        .await
        .unwrap();
    let rows = visible_rows(c).await;
    assert!(rows.len() >= 4 && rows.len() < all, "{rows:?}");
    assert!(
        rows.iter().all(|r| r[0] == "failed_login_attempt"),
        "{rows:?}"
    );
    type_into(c, "feed-filter-user", target_id).await;
    let rows = visible_rows(c).await;
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(&rows[0][1], target_id);
    css(c, "#feed-filters button[type=reset]")
        .await
        .click()
        .await
        .unwrap();
    wait_js(
        c,
        "clearing the filters shows every row",
        PATIENCE,
        "return [...document.querySelectorAll('#feed-list li')].every((li) => !li.hidden)",
        vec![],
    )
    .await;
    css(c, "#feed-filter-severity")
        .await
        .select_by_value("high")
        .await
        .unwrap();
    let rows = visible_rows(c).await;
    assert!(rows.iter().any(|r| r[0] == "account_locked"), "{rows:?}");
    assert!(
        rows.iter().all(|r| r[2] == "high" || r[2] == "critical"),
        "{rows:?}"
    );
    css(c, "#feed-filter-severity")
        .await
        .select_by_value("")
        .await
        .unwrap();
    type_into(c, "feed-filter-ip", "10.").await;
    assert!(
        visible_rows(c).await.is_empty(),
        "every event came from 127.0.0.1"
    );
    type_into(c, "feed-filter-ip", "127.0.0.1").await;
    let rows = visible_rows(c).await;
    assert!(rows.len() >= 4, "{rows:?}");
    assert!(rows.iter().all(|r| r[3] == "127.0.0.1"), "{rows:?}");
    css(c, "#feed-filters button[type=reset]")
        .await
        .click()
        .await
        .unwrap();
}

/// Paused, new events are held back, not lost; resumed, they are shown.
pub(super) async fn pause_holds_new_events_back(s: &Scene) {
    let app = &s.app;
    let c = &s.c;
    css(c, "#feed-pause").await.click().await.unwrap();
    let unknown = unique_email();
    app.login(&unknown, "who am i").await;
    wait_js(
        c,
        "the paused feed counts the held event",
        PATIENCE,
        "return document.getElementById('feed-pause').textContent.includes('1 new')",
        vec![],
    )
    .await;
    let shown = "return [...document.querySelectorAll('#feed-list li[data-type=login_failed]')]
        .some((li) => li.dataset.email === arguments[0])";
    assert_eq!(js(c, shown, vec![json!(unknown)]).await, json!(false));
    css(c, "#feed-pause").await.click().await.unwrap();
    wait_js(
        c,
        "the held event is shown on resume",
        PATIENCE,
        shown,
        vec![json!(unknown)],
    )
    .await;
}

/// The connection drops: the feed says so, reconnects by itself with Last-Event-ID, and then
/// shows what happened meanwhile, each event once, in its place.
pub(super) async fn the_stream_reconnects_after_a_cut(s: &Scene) {
    let app = &s.app;
    let c = &s.c;
    let link = &s.link;
    link.cut();
    wait_js(
        c,
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
        c,
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
            c,
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
}

/// The user view, opened from the feed: the user, their timeline, their two live sessions.
pub(super) async fn the_user_view_opens_from_the_feed(s: &Scene) {
    let c = &s.c;
    let target_email = &s.accounts.target_email;
    let target_id = &s.accounts.target_id;
    css(
        c,
        &format!(
            "#feed-list li[data-type=failed_login_attempt][data-user='{target_id}'] button.who"
        ),
    )
    .await
    .click()
    .await
    .unwrap();
    wait_js(
        c,
        "the user view shows the target's timeline and sessions",
        PATIENCE,
        "return document.getElementById('user-card').textContent.includes(arguments[0])
            && document.querySelector('#user-timeline li[data-type=failed_login_attempt]') !== null
            && document.querySelectorAll('#user-sessions tr[data-session]').length === 2",
        vec![json!(target_email)],
    )
    .await;
}

/// Revoke the second session: asked first, then gone, and its refresh token no longer works.
pub(super) async fn revoking_a_session_ends_it(s: &Scene) {
    let app = &s.app;
    let c = &s.c;
    let admin_id = &s.accounts.admin_id;
    let target_id = &s.accounts.target_id;
    let second_refresh = &s.accounts.second_refresh;
    let second_access = &s.accounts.second_access;
    let second_sid = &s.accounts.second_sid;
    let first_refresh = &s.accounts.first_refresh;
    css(
        c,
        &format!("#user-sessions tr[data-session='{second_sid}'] button.revoke-session"),
    )
    .await
    .click()
    .await
    .unwrap();
    confirm(c).await;
    wait_js(
        c,
        "the revoked session leaves the list",
        PATIENCE,
        "return document.querySelector(`#user-sessions tr[data-session='${arguments[0]}']`) === null
            && document.querySelectorAll('#user-sessions tr[data-session]').length === 1",
        vec![json!(second_sid)],
    )
    .await;
    assert_error(
        app.refresh(second_refresh).await,
        StatusCode::UNAUTHORIZED,
        "AUTH_REFRESH_INVALID",
    )
    .await;
    assert_eq!(
        app.me(second_access).await.status(),
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        app.refresh(first_refresh).await.status(),
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
}

/// The pipeline panel says what /health says.
pub(super) async fn the_pipeline_panel_says_what_health_says(s: &Scene) {
    let c = &s.c;
    wait_js(
        c,
        "the pipeline panel is filled in",
        PATIENCE,
        "return document.getElementById('pipe-sink').textContent.startsWith('file')
            && document.getElementById('pipe-redis').textContent === 'not configured'
            && /^\\d+$/.test(document.getElementById('pipe-queued').textContent)",
        vec![],
    )
    .await;
}

/// Charts, drawn afresh: bars per minute, logins, the top failing IPs and accounts; then the last
/// day, hour by hour from the stats API, and back to the last hour.
pub(super) async fn charts_are_drawn_by_the_hour_and_the_day(s: &Scene) {
    let c = &s.c;
    let locked_email = &s.accounts.locked_email;
    css(c, "#charts-refresh").await.click().await.unwrap();
    wait_js(
        c,
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
    css(c, "#range-day").await.click().await.unwrap();
    wait_js(
        c,
        "the day chart is drawn",
        PATIENCE,
        "return document.getElementById('charts-note').textContent.includes('last day')
            && document.querySelector('#chart-rate svg rect.bar') !== null",
        vec![],
    )
    .await;
    css(c, "#range-hour").await.click().await.unwrap();
    wait_js(
        c,
        "the hour chart is drawn again",
        PATIENCE,
        "return document.getElementById('charts-note').textContent.includes('last hour')",
        vec![],
    )
    .await;
}

/// The main view, for review (a screenshot), with the lock listed and the user open; then the
/// lockout lifted from the keyboard only: Enter on Lift, Tab past Cancel, Enter on Lift.
pub(super) async fn a_lockout_is_listed_and_lifted_from_the_keyboard(s: &Scene) {
    let app = &s.app;
    let c = &s.c;
    let locked_email = &s.accounts.locked_email;
    let key = format!("account:{locked_email}");
    wait_js(
        c,
        "the locked account is listed",
        PATIENCE,
        "return document.querySelector(`#lockouts-table tr[data-key='${arguments[0]}']`) !== null",
        vec![json!(key)],
    )
    .await;
    js(c, "window.scrollTo(0, 0)", vec![]).await;
    let png = c.screenshot().await.unwrap();
    let shot = target_dir().join("dashboard.png");
    std::fs::write(&shot, &png).unwrap();
    eprintln!("screenshot: {}", shot.display());

    // Lift the lockout, from the keyboard only: Enter on Lift, Tab past Cancel, Enter on Lift.
    let lift = css(
        c,
        &format!("#lockouts-table tr[data-key='{key}'] button.lift"),
    )
    .await;
    js(
        c,
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
        c,
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
    let focused = js(c, "return document.activeElement.id", vec![]).await;
    assert_eq!(focused, json!("confirm-ok"));
    c.active_element()
        .await
        .unwrap()
        .send_keys(&Key::Enter)
        .await
        .unwrap();
    wait_js(
        c,
        "the lifted lock leaves the list",
        PATIENCE,
        "return document.querySelector(`#lockouts-table tr[data-key='${arguments[0]}']`) === null",
        vec![json!(key)],
    )
    .await;
    assert_eq!(
        app.login(locked_email, PASSWORD).await.status(),
        StatusCode::OK
    );
    assert_eq!(app.events_of("lockout_lifted").await.len(), 1);
}

/// Nothing was blocked by the CSP, and nothing was asked of any other host.
pub(super) async fn nothing_was_blocked_or_fetched_elsewhere(s: &Scene) {
    let c = &s.c;
    let origin = &s.origin;
    let violations = js(c, "return window.cspViolations", vec![]).await;
    assert_eq!(violations, json!([]), "CSP violations");
    let origins: Vec<String> = serde_json::from_value(
        js(
            c,
            "return performance.getEntriesByType('resource').map((e) => new URL(e.name).origin)",
            vec![],
        )
        .await,
    )
    .unwrap();
    assert!(!origins.is_empty());
    assert!(
        origins.iter().all(|o| o == origin),
        "requests to other hosts: {origins:?}"
    );
}

/// The same page at phone width: one column, nothing wider than the screen.
pub(super) async fn the_page_fits_a_phone(s: &Scene) {
    let c = &s.c;
    c.set_window_size(390, 1400).await.unwrap();
    std::fs::write(
        target_dir().join("dashboard-phone.png"),
        c.screenshot().await.unwrap(),
    )
    .unwrap();
    let too_wide = js(
        c,
        "return [...document.querySelectorAll('#dashboard *')]
            .filter((e) => e.getBoundingClientRect().right > window.innerWidth + 1)
            .map((e) => e.tagName + '#' + e.id + '.' + e.className)
            .slice(0, 5)",
        vec![],
    )
    .await;
    let fits = js(
        c,
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
}

/// The page refreshed its token before it expired (60 s tokens, refreshed a minute early, so
/// within seconds of sign-in), and goes on working with the new one.
pub(super) async fn the_page_refreshes_its_token_and_keeps_working(s: &Scene) {
    let app = &s.app;
    let c = &s.c;
    let admin_id = &s.accounts.admin_id;
    let locked_email = &s.accounts.locked_email;
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
    type_into(c, "user-query", locked_email).await;
    css(c, "#user-search-form button[type=submit]")
        .await
        .click()
        .await
        .unwrap();
    wait_js(
        c,
        "a search after the refresh works",
        PATIENCE,
        "return document.getElementById('user-card').textContent.includes(arguments[0])",
        vec![json!(locked_email)],
    )
    .await;
}

/// A non-admin signs in and is told plainly, with no dashboard behind it.
pub(super) async fn a_non_admin_is_refused(s: &Scene) {
    let c = &s.c;
    let plain_email = &s.accounts.plain_email;
    css(c, "#signout").await.click().await.unwrap();
    sign_in(c, plain_email, PASSWORD).await;
    wait_js(
        c,
        "the non-admin is refused",
        PATIENCE,
        "return !document.getElementById('refusal').hidden
            && document.getElementById('refusal').textContent.includes('not an administrator')
            && document.getElementById('dashboard').hidden",
        vec![],
    )
    .await;
}
