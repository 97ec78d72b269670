//! The monitoring shipped in `config/`: the Grafana dashboard is a dashboard Grafana imports (its
//! panels, queries and variables), and every flux-auth metric that it and the Prometheus alerting
//! rules query is one the service exposes. (`promtool check rules` checks the rules' syntax in
//! `.ci/run`.)

use std::collections::BTreeSet;

use flux_auth::config::Switch;
use secrecy::SecretString;
use serde_json::Value;

use crate::helpers::*;

const DASHBOARD: &str = include_str!("../../config/grafana/flux-auth.dashboard.json");
const RULES: &str = include_str!("../../config/prometheus/flux-auth.rules.yml");

/// Every `flux_auth_*` name in `query`.
fn metric_names(query: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = query;
    while let Some(at) = rest.find("flux_auth_") {
        let name: String = rest[at..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        rest = &rest[at + name.len()..];
        names.push(name);
    }
    names
}

/// The dashboard's queries, each checked for the shape Grafana needs on the way.
fn dashboard_queries() -> Vec<String> {
    let dashboard: Value = serde_json::from_str(DASHBOARD).expect("the dashboard is JSON");
    assert_eq!(dashboard["uid"], "flux-auth");
    assert!(dashboard["title"].is_string() && dashboard["schemaVersion"].is_u64());
    let variables: Vec<&str> = dashboard["templating"]["list"]
        .as_array()
        .expect("templating.list")
        .iter()
        .map(|v| v["name"].as_str().expect("a variable's name"))
        .collect();
    assert_eq!(variables, ["datasource", "instance"]);
    let panels = dashboard["panels"].as_array().expect("panels");
    assert!(panels.len() >= 8, "a panel for each thing worth watching");
    let mut ids = BTreeSet::new();
    let mut queries = Vec::new();
    for panel in panels {
        let title = panel["title"].as_str().expect("a panel's title");
        assert!(
            ids.insert(panel["id"].as_u64().expect("a panel id")),
            "{title}: id reused"
        );
        assert_eq!(panel["datasource"]["uid"], "${datasource}", "{title}");
        for key in ["x", "y", "w", "h"] {
            assert!(panel["gridPos"][key].is_u64(), "{title}: gridPos.{key}");
        }
        let targets = panel["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "{title}: no query");
        for target in targets {
            assert!(target["refId"].is_string(), "{title}: refId");
            let expr = target["expr"].as_str().expect("expr");
            assert!(
                expr.contains("instance=~\"$instance\""),
                "{title}: {expr} ignores $instance"
            );
            queries.push(expr.to_owned());
        }
    }
    queries
}

fn rule_queries() -> Vec<String> {
    let queries: Vec<String> = RULES
        .lines()
        .filter_map(|line| line.trim().strip_prefix("expr:"))
        .map(|expr| expr.trim().to_owned())
        .collect();
    assert!(queries.len() >= 10, "the alerting rules' expressions");
    queries
}

#[tokio::test]
async fn the_dashboard_and_the_alerting_rules_query_only_metrics_the_service_exposes() {
    if !redis_available().await {
        return;
    }
    let Some(app) = TestApp::builder(Backend::Postgres)
        .settings(|s| {
            s.redis_url = Some(SecretString::from(redis_url()));
            s.rate_limits = Switch::On;
        })
        .try_spawn()
        .await
    else {
        return;
    };
    // An auth outcome, so its family has a series.
    app.signed_up(&unique_email()).await;
    let exposition = app
        .client
        .get(app.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let exposed: BTreeSet<&str> = exposition
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split(['{', ' ']).next())
        .collect();
    let queries = dashboard_queries().into_iter().chain(rule_queries());
    let mut unknown = BTreeSet::new();
    for query in queries {
        for name in metric_names(&query) {
            if !exposed.contains(name.as_str()) {
                unknown.insert(name);
            }
        }
    }
    assert!(unknown.is_empty(), "queried but not exposed: {unknown:?}");
}
