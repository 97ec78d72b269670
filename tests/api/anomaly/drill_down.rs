//! The anomalies panel's drill-down: a firing's address through the admin event API, on the
//! Postgres sink, whose indexes for it (leading with the address, and with the type) the log
//! creates by itself once its database is ready.

use reqwest::StatusCode;
use serde_json::Value;

use super::{fired, login_from, quiet};
use crate::helpers::*;

#[tokio::test]
async fn a_firing_is_found_by_its_address_and_type_through_indexes_the_log_created() {
    if !redis_available().await {
        return;
    }
    let Some(app) = TestApp::builder(Backend::File)
        .events_in_postgres()
        .settings(|s| {
            quiet(s);
            s.trusted_proxies = vec!["127.0.0.1/32".parse().unwrap()];
            s.anomaly_credential_stuffing_threshold = 2;
            s.anomaly_credential_stuffing_block_secs = 0;
        })
        .try_spawn()
        .await
    else {
        return;
    };
    let db = app.db.as_ref().unwrap().pool().await;
    let names: Vec<&str> = flux_auth::security_log::indexes::INDEXES
        .iter()
        .map(|(name, _)| *name)
        .collect();
    eventually("the security events indexes", MIRROR_PATIENCE, || async {
        let valid: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid \
             WHERE c.relname = ANY($1) AND i.indisvalid",
        )
        .bind(&names)
        .fetch_one(&db)
        .await
        .unwrap();
        (valid == names.len() as i64).then_some(())
    })
    .await;

    let admin_email = unique_email();
    let token = app.signed_up(&admin_email).await["accessToken"]
        .as_str()
        .unwrap()
        .to_owned();
    make_admin(&app, &admin_email).await;
    for (ip, email) in [
        ("198.51.100.20", "x@drill.test"),
        ("198.51.100.20", "y@drill.test"),
        ("198.51.100.21", "x@drill.test"),
    ] {
        let r = login_from(&app, ip, UA, email, "not-this-one").await;
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    }
    let events = fired(&app, "credential_stuffing_suspected").await;
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(
        events[0]["metadata"]["action"], "none",
        "block_secs 0 records only"
    );
    let page: Value = app
        .get_auth(
            "/api/admin/security/events?ip=198.51.100.20&type=credential_stuffing_suspected",
            &token,
        )
        .await
        .json()
        .await
        .unwrap();
    let found = page["events"].as_array().unwrap();
    assert_eq!(found.len(), 1, "{page}");
    assert_eq!(found[0]["metadata"]["key"], "198.51.100.20");
    let by_address: Value = app
        .get_auth("/api/admin/security/events?ip=198.51.100.21", &token)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        by_address["events"].as_array().unwrap().len(),
        1,
        "{by_address}"
    );
}
