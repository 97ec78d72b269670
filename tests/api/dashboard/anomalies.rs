//! The anomalies panel's step of the dashboard scenario: a rule that fires shows up live, through
//! the event stream, with what it counted and did, and the address it blocked is lifted from it.

use reqwest::StatusCode;
use serde_json::json;

use super::browser::*;
use super::steps::Scene;
use crate::helpers::*;

/// The address the step's attacker signs in from (`X-Forwarded-For`, believed from loopback).
const ATTACKER: &str = "203.0.113.9";

async fn login_as(app: &TestApp, email: &str, password: &str) -> StatusCode {
    app.client
        .post(app.url("/api/auth/login"))
        .header("user-agent", UA)
        .header("x-forwarded-for", ATTACKER)
        .json(&json!({ "email": email, "password": password }))
        .send()
        .await
        .unwrap()
        .status()
}

pub(super) async fn an_anomaly_shows_live_and_its_block_is_lifted_from_the_panel(s: &Scene) {
    let (app, c) = (&s.app, &s.c);
    // The rule counts 8 distinct accounts (see `dashboard_app`).
    for i in 0..8 {
        let status = login_as(app, &format!("stuffed-{i}@victims.test"), "guessing-away").await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
    }
    let row =
        "#anomalies-table tr[data-rule='credential_stuffing_suspected'][data-key='203.0.113.9']";
    wait_js(
        c,
        "the firing is in the anomalies panel, live",
        PATIENCE,
        "return document.querySelector(arguments[0]) !== null",
        vec![json!(row)],
    )
    .await;
    let cells = js(
        c,
        "return [...document.querySelector(arguments[0]).cells].map(td => td.textContent)",
        vec![json!(row)],
    )
    .await;
    let cells: Vec<String> = serde_json::from_value(cells).unwrap();
    assert_eq!(cells[0], "credential_stuffing_suspected");
    assert_eq!(cells[1], ATTACKER);
    assert_eq!(cells[2], "8");
    assert!(!cells[3].is_empty() && !cells[4].is_empty(), "{cells:?}");
    assert!(
        cells[5].starts_with("Address's logins blocked"),
        "{cells:?}"
    );
    assert_eq!(
        login_as(app, "stuffed-0@victims.test", "guessing-away").await,
        StatusCode::TOO_MANY_REQUESTS
    );

    css(c, &format!("{row} button.lift"))
        .await
        .click()
        .await
        .unwrap();
    confirm(c).await;
    wait_js(
        c,
        "the lifted block leaves the lockouts list",
        PATIENCE,
        "return document.querySelector(`#lockouts-table tr[data-key='ip:203.0.113.9']`) === null",
        vec![],
    )
    .await;
    assert_eq!(
        login_as(app, "stuffed-0@victims.test", "guessing-away").await,
        StatusCode::UNAUTHORIZED,
        "the address signs in again"
    );
}
